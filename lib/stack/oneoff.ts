// A one-off container of a service on a cluster (ENGINE=swarm), what compose's
// `run --rm --no-deps` is on one host: the service's image at a version, reaching the
// stack's services by name, with what its definition gives it (env files, environment,
// named volumes, entrypoint, user, working directory), removed after. It runs on the node
// the command runs on, the first node, which is the data node: its named volumes are there.
//
// It joins the network namespace of a stack container already running there (an
// accessory, else nginx), which sits on the overlay network and resolves its names, rather
// than attaching itself to the overlay: a standalone container on an attachable overlay
// takes an address from the same pool as Swarm's tasks, and its release races their
// allocation ("Address already in use", moby#32634, #41576). swarm.test saw it: after two
// migrations so attached, a new slot's third task never came up.
//
// The environment (secrets among it: DATABASE_URL) is read from stdin as an env file, so
// it is never on a command line (ps on the host) nor in an error message.
import { parse as parseYaml } from 'yaml'
import { UsageError } from '../errors.ts'
import { sh } from '../sh.ts'
import { accessories, interpolateTree, isMap, PROXY_SERVICE } from './model.ts'
import type { ComposeDoc } from './swarm.ts'
import type { Stack } from './stack.ts'

export interface OneOff { command: string; stdin?: string }

/**
 * exec.ts's one-off container: the operator's words as its command, stdin (and a terminal)
 * passed through, a name to remove it by; its environment then comes from `envFile`, a
 * 0600 file the caller writes first (stdin is the operator's), removed as soon as the
 * command has it open.
 */
export interface Session { words: string[]; tty: boolean; name: string; envFile: string }

/** compose's list or map form of `environment`, as NAME=VALUE lines; a name without a value takes none (none is passed). */
function envLines(where: string, environment: unknown, extra: Record<string, string>): string[] {
  const pairs: [string, string][] = Array.isArray(environment)
    ? environment.map(String).filter(l => l.includes('=')).map(l => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)])
    : isMap(environment) ? Object.entries(environment).filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => [k, String(v)]) : []
  return [...pairs, ...Object.entries(extra)].map(([k, v]) => {
    // An env file has one line per variable: a value over several lines cannot be passed this way.
    if (/[\r\n]/.test(v)) throw new UsageError(`${where}, environment ${k}: a value over several lines cannot be given to a one-off container on a cluster; put it in a file the image reads.`)
    return `${k}=${v}`
  })
}

/** Named volumes as docker run's -v, under the names docker stack deploy gave them (PROJECT_NAME unless the file names them). */
function volumeArgs(st: Stack, doc: ComposeDoc, volumes: unknown): string[] {
  const top = interpolateTree(doc.volumes ?? {}, st.vars, `${st.model.file}, volumes`) as Record<string, unknown>
  const named = (source: string) => {
    const t = isMap(top[source]) ? top[source] as Record<string, unknown> : {}
    if (typeof t.name === 'string') return t.name
    // The old form, external: {name: X}.
    if (isMap(t.external) && typeof t.external.name === 'string') return t.external.name
    return t.external ? source : `${st.project}_${source}`
  }
  return (Array.isArray(volumes) ? volumes : []).flatMap(v => {
    if (typeof v === 'string') {
      const [source, target, mode] = v.split(':')
      return target && !/^[./~]/.test(source) ? ['-v', [named(source), target, ...(mode ? [mode] : [])].join(':')] : []
    }
    if (!isMap(v) || (v.type ?? 'volume') !== 'volume' || typeof v.source !== 'string') return []
    return ['-v', `${named(v.source)}:${v.target}${v.read_only ? ':ro' : ''}`]
  })
}

/**
 * A command or entrypoint string split into words as compose does (Go's shlex: quotes and
 * backslashes, no shell, no expansion). Written here: the npm splitters (shell-quote) also
 * expand $VARS and read && as an operator, which compose passes on as they are.
 */
export function splitWords(text: string): string[] {
  const out: string[] = []
  let word: string | undefined
  let quote: '"' | "'" | undefined
  for (let i = 0; i < text.length; i++) {
    const c = text[i]
    if (quote === "'") { if (c === "'") quote = undefined; else word += c; continue }
    if (quote === '"') {
      if (c === '"') quote = undefined
      else if (c === '\\' && i + 1 < text.length && '"\\$`'.includes(text[i + 1])) word += text[++i]
      else word += c
      continue
    }
    if (/\s/.test(c)) { if (word !== undefined) out.push(word); word = undefined; continue }
    word ??= ''
    if (c === "'" || c === '"') quote = c
    else if (c === '\\' && i + 1 < text.length) word += text[++i]
    else word += c
  }
  if (word !== undefined) out.push(word)
  return out
}

const words = (x: unknown): string[] | undefined => (Array.isArray(x) ? x.map(String) : typeof x === 'string' ? splitWords(x) : undefined)

/** What Swarm would give the service's tasks and a plain container cannot be given here. */
const UNSUPPORTED = ['secrets', 'configs', 'extra_hosts']

/**
 * `service` at `version`, running `command` (a shell command, sh -c) or, without one,
 * the service's own command; `env` added to its environment (OPSBOOK_ROLLBACK_TO). With
 * `session`: exec.ts's, its environment in a file (stdin returns what goes into it).
 */
export function swarmOneOff(st: Stack, service: string, version: string, command: string | undefined, env: Record<string, string> = {}, session?: Session): OneOff {
  const doc = parseYaml(st.composeText, { merge: true }) as ComposeDoc
  const where = `${st.model.file}, service ${service}`
  const raw = interpolateTree(doc.services[service], { ...st.vars, APP_VERSION: version }, where) as Record<string, unknown>
  const odd = UNSUPPORTED.filter(k => raw[k] !== undefined)
  if (odd.length) throw new UsageError(`${where}, ${odd.join(', ')}: a one-off container of it on a cluster (a migration, exec.ts) would run without ${odd.length > 1 ? 'them' : 'it'}; give it what it needs through environment or env_file, or use ENGINE=compose.`)
  const cmd = session ? session.words : command === undefined ? words(raw.command) ?? [] : ['sh', '-c', command]
  const [exe, ...before] = words(raw.entrypoint) ?? []
  const envFiles = (st.model.services.find(s => s.name === service)?.envFiles ?? []).map(f => ({ ...f, path: f.path.startsWith('/') ? f.path : `${st.dir}/${f.path.replace(/^\.\//, '')}` }))
  const flags = [
    // The env files come before this, in the file's order ("$@" below); then the environment, which wins over them as in compose.
    '--env-file', session ? '/dev/fd/3' : '/dev/stdin',
    ...volumeArgs(st, doc, raw.volumes),
    ...(exe ? ['--entrypoint', exe] : []),
    ...(typeof raw.user === 'string' || typeof raw.user === 'number' ? ['-u', String(raw.user)] : []),
    ...(typeof raw.working_dir === 'string' ? ['-w', raw.working_dir] : []),
    ...(raw.init === true ? ['--init'] : []),
    ...(raw.read_only === true ? ['--read-only'] : []),
    ...[raw.tmpfs ?? []].flat().flatMap(x => ['--tmpfs', String(x)]),
  ]
  return {
    // No such container (a first deploy of a stack without accessories): nothing on the network to reach yet.
    // exec.ts: the file is opened, then removed at once; docker reads it through the open descriptor.
    command: (session ? sh`exec 3<${session.envFile} && rm -f ${session.envFile} || exit 1; ` : '') + `c=$( { ${[...accessories(st.model).map(a => a.name), PROXY_SERVICE].map(n => sh`docker ps -q --filter ${`label=com.docker.swarm.service.name=${st.project}_${n}`}`).join('; ')}; } | head -n 1); set --; ` +
      // An env file marked required: false is read only where it exists (compose skips it too).
      envFiles.map(f => (f.required ? sh`set -- "$@" --env-file ${f.path}; ` : sh`[ ! -f ${f.path} ] || set -- "$@" --env-file ${f.path}; `)).join('') +
      sh`docker run \${c:+--network "container:$c"} ${['--rm', '--label', 'opsbook.oneoff=1', ...(session ? ['--name', session.name, session.tty ? '-it' : '-i'] : [])]} "$@" ${flags} ${String(raw.image)} ${[...before, ...cmd]}`,
    stdin: envLines(where, raw.environment, env).map(l => l + '\n').join(''),
  }
}
