// A command in the live release: in a one-off container of a service (docker compose
// run: the live version's image, the service's settings and networks, removed after),
// or in one of its running containers (--running: docker exec). On a terminal it gets
// one (-t); without, plain streams. Its exit code is the runbook's.
import { UsageError } from '../errors.ts'
import { sh } from '../sh.ts'
import { nearest } from '../values.ts'
import { PROXY_SERVICE } from './model.ts'
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

export const execCommands = {
  /**
   * A one-off container of `service` at `version`, removed when the command ends; no
   * dependency started. Named, so a Ctrl-C here can remove it (`stop`).
   */
  oneOff: (st: Stack, service: string, version: string, words: string[], tty: boolean, name: string) =>
    stackCommands.compose(st, sh`run --rm --no-deps --name ${name} ${tty ? [] : ['-T']} ${service} ${words}`, version),
  /** The one-off container gone, whatever its command was doing. */
  stop: (name: string) => sh`docker rm -f ${name} >/dev/null 2>&1 || true`,
  /** The newest running container of `service` (the live slot's after a swap), by name. */
  newest: (st: Stack, service: string) => sh`docker ps --filter ${`label=com.docker.compose.project=${st.project}`} --filter ${`label=com.docker.compose.service=${service}`} --filter label=com.docker.compose.oneoff=False --filter status=running --format '{{.CreatedAt}}\t{{.Names}}' | sort | tail -n 1 | cut -f2`,
  /** In a running container. */
  running: (container: string, words: string[], tty: boolean) => sh`docker exec ${tty ? ['-it'] : ['-i']} ${container} ${words}`,
}

export const isProxy = (service: string) => service === PROXY_SERVICE
