// A command in the live release: in a one-off container of a service (docker compose
// run: the live version's image, the service's settings and networks, removed after),
// or in one of its running containers (--running: docker exec). On a terminal it gets
// one (-t); without, plain streams. Its exit code is the runbook's. On a cluster: a
// one-off container on the first node (oneoff.ts), or a task running there.
import { UsageError } from '../errors.ts'
import { sh } from '../sh.ts'
import { nearest } from '../values.ts'
import { PROXY_SERVICE } from './model.ts'
import { serviceCommands } from './engine.ts'
import { swarmOneOff } from './oneoff.ts'
import { stackCommands, type Stack } from './stack.ts'

export function execService(st: Stack, service: string | undefined, words: string[]): string {
  const known = st.model.services.map(s => s.name)
  if (!service) throw new UsageError(`Name the service to run it in: exec.ts --service NAME -- COMMAND (this stack has ${known.join(', ')}).`)
  if (!known.includes(service)) {
    const near = nearest(service, known)
    throw new UsageError(`--service ${JSON.stringify(service)} is not a service of this stack${near ? ` (did you mean ${near}?)` : ''}; it has ${known.join(', ')}.`)
  }
  if (!words.length) throw new UsageError(`Give the command after --: exec.ts --service ${service} -- COMMAND [ARGS...].`)
  return service
}

/** A cluster's one-off container's environment, in a 0600 file for the moment it takes docker to open it. */
const oneOffEnvFile = (st: Stack, name: string) => `${st.dir}/env/${name}.env`

export const execCommands = {
  /**
   * A one-off container of `service` at `version`, removed when the command ends; no
   * dependency started. Named, so a Ctrl-C here can remove it (`stop`). On a cluster
   * `before` writes its environment into a 0600 file first (the command removes it).
   */
  oneOff: (st: Stack, service: string, version: string, words: string[], tty: boolean, name: string): { command: string; before?: { command: string; stdin: string } } => {
    if (!st.config.cluster) return { command: stackCommands.compose(st, sh`run --rm --no-deps --name ${name} ${tty ? [] : ['-T']} ${service} ${words}`, version) }
    const envFile = oneOffEnvFile(st, name)
    const o = swarmOneOff(st, service, version, undefined, {}, { words, tty, name, envFile })
    return { command: o.command, before: { command: sh`mkdir -p ${`${st.dir}/env`} && (umask 077 && cat > ${envFile})`, stdin: o.stdin ?? '' } }
  },
  /** The one-off container gone, whatever its command was doing (and, on a cluster, its environment file). */
  stop: (st: Stack, name: string) => sh`docker rm -f ${name} >/dev/null 2>&1 || true` + (st.config.cluster ? '; ' + execCommands.forget(st, name) : ''),
  /** A cluster's one-off: its environment file gone (its command removes it once open; this covers a run that never started). */
  forget: (st: Stack, name: string) => sh`rm -f ${oneOffEnvFile(st, name)}`,
  /** `service`'s running containers (on a cluster: its tasks on the first node), one per line: created, name, image. */
  candidates: (st: Stack, service: string) => st.config.cluster
    ? `${serviceCommands.containers(st, service)} | xargs -r docker inspect -f '{{.Created}}	{{.Name}}	{{.Config.Image}}' | sed 's,	/,	,'`
    : sh`docker ps --filter ${`label=com.docker.compose.project=${st.project}`} --filter ${`label=com.docker.compose.service=${service}`} --filter label=com.docker.compose.oneoff=False --filter status=running --format '{{.CreatedAt}}\t{{.Names}}\t{{.Image}}'`,
  /** In a running container. */
  running: (container: string, words: string[], tty: boolean) => sh`docker exec ${tty ? ['-it'] : ['-i']} ${container} ${words}`,
}

/**
 * The container --running goes into: the newest running the live release (during a
 * canary the newest may be the canary's), else the newest of any version.
 */
export function pickContainer(lines: string, live: string | undefined): string | undefined {
  const cs = lines.split('\n').filter(Boolean).map(l => l.split('\t')).sort((a, b) => a[0].localeCompare(b[0]))
  const onLive = cs.filter(c => live && (c[2] ?? '').replace(/@sha256:[0-9a-f]+$/, '').endsWith(`:${live}`))
  return (onLive.length ? onLive : cs).at(-1)?.[1]
}

export const isProxy = (service: string) => service === PROXY_SERVICE
