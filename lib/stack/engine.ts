// Running something in a service's containers, whichever engine runs the stack: docker
// compose on one host, or Swarm (swarm.ts), whose data services (PostgreSQL, Redis) run
// on the data node, the first node, which backup, restore and rotate-secret work through.
// The data code asks here; it never branches on the engine itself.
import { sh } from '../sh.ts'
import type { Target } from '../steps.ts'
import { logCommands, type LogOptions } from './logs.ts'
import { swarmOneOff, type OneOff } from './oneoff.ts'
import { PROXY_SERVICE } from './model.ts'
import { rollout, syncProxy } from './rollout.ts'
import { swarmCommands, swarmRecreateProxy, swarmRestart, swarmSyncProxy } from './swarm.ts'
import { stackCommands, type Stack } from './stack.ts'

export const serviceCommands = {
  /**
   * `args` (shell text) run in `service`'s first container on this host, stdin passed
   * through; `flags` are docker exec's own (-e NAME=VALUE, -u USER).
   */
  exec: (st: Stack, service: string, args: string, flags: string[] = []) => st.config.cluster
    ? swarmCommands.exec(st, service, args, flags)
    : stackCommands.compose(st, 'exec -T ' + (flags.length ? sh`${flags} ` : '') + sh`${service} ` + args),
  /**
   * A one-off container of `service` at `version`, removed after, no dependency started:
   * `command` (run by sh -c) or, without one, the service's own; `env` added to its
   * environment. Run with `stdin` as the command's input (on a cluster: its environment).
   */
  oneOff: (st: Stack, service: string, version: string, command: string | undefined, env: Record<string, string> = {}): OneOff => st.config.cluster
    ? swarmOneOff(st, service, version, command, env)
    : { command: stackCommands.compose(st, 'run --rm --no-deps -T ' + Object.entries(env).map(([k, v]) => sh`-e ${`${k}=${v}`} `).join('') + sh`${service}` + (command === undefined ? '' : sh` sh -c ${command}`), version) },
  /** The chosen services' logs as one stream (logs.ts): this host's containers, or every node's tasks. */
  logs: (st: Stack, o: LogOptions) => st.config.cluster ? logCommands.swarm(st, o) : logCommands.compose(st, o),
  /** The IDs of `service`'s running containers on this host, one per line. */
  containers: (st: Stack, service: string) => st.config.cluster
    ? swarmCommands.containers(st, service)
    : stackCommands.compose(st, sh`ps -q ${service}`),
  /** The services stop (all their containers, on every node), their definitions kept. */
  stop: (st: Stack, services: string[]) => st.config.cluster
    ? swarmCommands.scale(st, services, 0)
    : stackCommands.compose(st, sh`stop -t 30 ${services}`),
  /** The stopped services start again, as many containers as the stack says. */
  start: (st: Stack, services: string[]) => st.config.cluster
    ? swarmCommands.scale(st, services)
    : stackCommands.compose(st, sh`start ${services}`),
  /**
   * Prints stale=N and running=N: how many of the service's running containers were made
   * before `file` was last written, so run an older version of it. On a cluster: the
   * live slot, if its own copy of the file differs.
   */
  staleOn: (st: Stack, service: string, file: string) => st.config.cluster
    ? swarmCommands.staleOn(st, service, file)
    : [
      sh`m=$(stat -c %.9Y ${file} 2>/dev/null || echo 0); n=0; total=0`,
      sh`for c in $(docker ps -q --filter ${`label=com.docker.compose.project=${st.project}`} --filter ${`label=com.docker.compose.service=${service}`}); do`,
      `  total=$((total+1)); created=$(date -d "$(docker inspect -f '{{.Created}}' "$c")" +%s.%N)`,
      `  if awk -v a="$created" -v b="$m" 'BEGIN { exit !(a < b) }'; then n=$((n+1)); fi`,
      'done',
      'echo "stale=$n"; echo "running=$total"',
    ].join('\n'),
  /** nginx's files as they should be (its HTTPS routes once the certificate exists); true when nginx reloaded. */
  syncProxy: (t: Target, st: Stack, log: (l: string) => void) => st.config.cluster ? swarmSyncProxy(t, st, log) : syncProxy(t, st, log),
  /** nginx started again as its definition now is (port 443, the certificate's directories). */
  recreateProxy: async (t: Target, st: Stack, log: (l: string) => void) => {
    if (st.config.cluster) return swarmRecreateProxy(t, st, log)
    await t.run(stackCommands.compose(st, sh`up -d --no-deps ${PROXY_SERVICE}`), { onOutput: log, timeout: 120 })
  },
  /** The services' containers replaced at `version` (the same one: new settings), health-gated, no downtime. */
  replace: (t: Target, st: Stack, version: string, log: (l: string) => void, services: string[]) => st.config.cluster
    ? swarmRestart(t, st, version, log)
    : rollout(t, st, version, log, services),
}
