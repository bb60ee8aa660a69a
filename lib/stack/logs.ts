// The logs of a stack's containers as one stream: every replica, both slots during a swap,
// nginx's access log as the service "nginx", and on a cluster every node's tasks (Swarm
// gathers them on the manager). Each line: timestamp, container (or task@node), release
// version, then the line as the app wrote it. Read-only.
import { UsageError } from '../errors.ts'
import { quote, sh } from '../sh.ts'
import { nearest } from '../values.ts'
import { PROXY_SERVICE } from './model.ts'
import type { Stack } from './stack.ts'

export interface LogOptions {
  /** Stack service names (nginx is PROXY_SERVICE); empty: all. */
  services: string[]
  /** docker's --since: 10m, 2h, 2026-12-07T14:00:00Z. */
  since?: string
  /** Lines per container (default 100 without --since). */
  lines?: number
  /** An extended regular expression (grep -E) a line must match. */
  grep?: string
  follow: boolean
}

const SINCE = /^(\d{1,6}[smh]|\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?)?)$/

/** Service names as the operator gives them ("nginx" for opsbook's proxy), checked against the stack. */
export function logServices(st: Stack, given: string[]): string[] {
  const known = [...st.model.services.map(s => s.name), 'nginx']
  return given.map(g => {
    if (!known.includes(g)) {
      const near = nearest(g, known)
      throw new UsageError(`--service ${JSON.stringify(g)} is not a service of this stack${near ? ` (did you mean ${near}?)` : ''}; it has ${known.join(', ')}.`)
    }
    return g === 'nginx' ? PROXY_SERVICE : g
  })
}

export function logOptions(st: Stack, a: { service?: string[]; since?: string; lines?: string; grep?: string; follow?: boolean }): LogOptions {
  if (a.since !== undefined && !SINCE.test(a.since)) throw new UsageError(`--since ${JSON.stringify(a.since)} is neither a duration (30s, 10m, 2h) nor a date (2026-12-07 or 2026-12-07T14:00:00Z).`)
  if (a.lines !== undefined && !/^\d{1,6}$/.test(a.lines)) throw new UsageError(`--lines ${JSON.stringify(a.lines)} is not a count of lines (0 to 999999).`)
  if (a.grep !== undefined && (!a.grep || /[\n\0]/.test(a.grep))) throw new UsageError('--grep takes one non-empty line (an extended regular expression, as grep -E).')
  return {
    services: logServices(st, a.service ?? []),
    since: a.since,
    lines: a.lines !== undefined ? Number(a.lines) : a.since ? undefined : 100,
    grep: a.grep,
    follow: Boolean(a.follow),
  }
}

// docker's timestamps drop trailing zeros (…:00.12Z): padded to milliseconds, they sort
// as text. sed -u reads line by line (mawk would hold a followed stream in its buffer).
const STAMP = [
  's/^\\([^ .]*\\)Z /\\1.000Z /',
  's/^\\([^ ]*\\.[0-9]*\\)Z /\\1000Z /',
  's/^\\([^ ]*\\.[0-9][0-9][0-9]\\)[0-9]*Z /\\1Z /',
]
/** sed: `first`, the padding, then `last` (shell text in double quotes: it names the container and version). */
const stamped = (last: string, first: string[] = []) => `sed -u ${[...first, ...STAMP].map(e => sh`-e ${e}`).join(' ')} -e "${last}"`

/** What follows the per-container streams: in time order (unless followed), filtered. */
function tail(o: LogOptions): string {
  return [
    o.follow ? '' : ' | sort -s -k1,1',
    o.grep ? sh` | { grep --line-buffered -E -e ${o.grep} || [ $? -eq 1 ]; }` : '',
  ].join('')
}

const dockerFlags = (o: LogOptions) => [
  '--timestamps',
  ...(o.since ? ['--since', o.since] : []),
  ...(o.lines !== undefined ? ['--tail', String(o.lines)] : []),
  ...(o.follow ? ['--follow'] : []),
]

/**
 * Followed logs run with stdin left open: when the channel closes (Ctrl-C here), `cat`
 * returns and the whole group of `docker logs` processes is killed, as closing a channel
 * alone does not stop a remote command (one that is not writing never sees SIGPIPE).
 */
function streamed(body: string, follow: boolean): string {
  if (!follow) return body
  // Its own session, so one kill reaches every reader. Two ways it ends: sshd passes the
  // client's TERM to `timeout`, which signals this shell's group (the trap), or the channel
  // just closes (`cat` on it returns; fd 3, as a background list's own stdin is /dev/null;
  // TERM ignored, so the group's signal does not end it before it has killed the readers).
  return [
    'exec 3<&0',
    sh`setsid sh -c ${body} &`,
    'p=$!',
    "trap 'kill -TERM -$p 2>/dev/null; exit 143' TERM HUP INT",
    "( trap '' TERM HUP INT; cat <&3 >/dev/null; kill -TERM -$p 2>/dev/null ) &",
    'w=$!',
    'wait $p; s=$?',
    'kill $w 2>/dev/null',
    'exit $s',
  ].join('\n')
}

/**
 * Each container (or Swarm service) the listing prints as "name,image,service,state". With
 * --follow the listing repeats every 2 s: a container that appears later (the new slot of
 * a swap) joins from its first line, and one whose reader ended (it stopped, or was only
 * created when first seen) is read again from its latest start once it runs.
 */
function eachSource(list: string, o: LogOptions, reader: (flags: string) => string): string {
  return [
    'd=$(mktemp -d); trap \'rm -rf "$d"\' EXIT; trap \'exit 143\' TERM; first=1',
    'while :; do',
    `  for x in $(${list}); do`,
    '    name=${x%%,*}; rest=${x#*,}; image=${rest%%,*}; rest=${rest#*,}; service=${rest%%,*}; state=${rest#*,}',
    o.services.length ? `    case "$service" in ${o.services.map(x => quote(x)).join('|')}) ;; *) continue ;; esac` : '',
    // The tag of an image (registry:port/name:tag@digest); "latest" when it has none; nginx for the proxy.
    `    v=\${image%%@*}; case \${v##*/} in *:*) v=\${v##*:} ;; *) v=latest ;; esac; [ "$service" = ${PROXY_SERVICE} ] && v=nginx`,
    // Created, not started: `docker logs -f` would wait on it and never print; read once it runs.
    '    [ "$state" = created ] && continue',
    '    if [ -f "$d/$name" ]; then',
    '      read -r pid started < "$d/$name"',
    '      kill -0 "$pid" 2>/dev/null && continue',
    `      now=$(docker inspect -f '{{.State.StartedAt}}' "$name" 2>/dev/null) || continue`,
    '      [ "$state" = running ] && [ "$now" != "$started" ] || continue',
    `      ${reader('--timestamps --follow --since "$now"')}`,
    `    elif [ $first = 1 ]; then ${reader(sh`${dockerFlags(o)}`)}`,
    `    else ${reader('--timestamps --follow')}`,
    '    fi',
    `    echo "$! $(docker inspect -f '{{.State.StartedAt}}' "$name" 2>/dev/null)" > "$d/$name"`,
    '  done',
    o.follow ? '  first=0; sleep 2' : '  break',
    'done',
    'wait',
  ].filter(Boolean).join('\n')
}

export const logCommands = {
  /** One host: each container of the chosen services (both slots, stopped ones too, for a crash's last lines); no one-off (exec) containers. */
  compose: (st: Stack, o: LogOptions) => streamed(`{ ${eachSource(
    sh`docker ps -a --filter ${`label=com.docker.compose.project=${st.project}`} --filter label=com.docker.compose.oneoff=False --format '{{.Names}},{{.Image}},{{.Label "com.docker.compose.service"}},{{.State}}'`, o,
    flags => `docker logs ${flags} "$name" 2>&1 | ${stamped('s#^\\([^ ]*Z\\) #\\1 '+'$name $v | #')} &`,
  )}; }${tail(o)}`, o.follow),
  /** A cluster, from a manager: each Swarm service's tasks on every node (docker service logs). */
  swarm: (st: Stack, o: LogOptions) => streamed(`{ ${eachSource(
    sh`docker service ls --filter ${`label=com.docker.stack.namespace=${st.project}`} --format '{{.Name}} {{.Image}}' | awk -v p=${`${st.project}_`} ${'{ s = $1; sub("^" p, "", s); sub(/_[ab]$/, "", s); print $1 "," $2 "," s ",running" }'}`, o,
    // "TIME task.1.id@node    | line": the task as task.1@node.
    flags => `docker service logs --no-trunc ${flags} "$name" 2>&1 | ${stamped('s#^\\([^ ]*Z\\) \\([^ ]*\\) #\\1 \\2 '+'$v | #', ['s/^\\([^ ]*\\) \\([^ ]*\\)\\.[a-z0-9]\\{25\\}\\(@[^ ]*\\) *| /\\1 \\2\\3 /'])} &`,
  )}; }${tail(o)}`, o.follow),
}
