// Container logs that cannot fill the disk: Docker's default json-file driver keeps every
// line nginx and the app write, forever. The `local` driver rotates (and compresses) them;
// `docker logs` keeps working. Set in daemon.json, merged with what is there; a log
// setting the operator made is kept. Docker reads it at start: restarted here only while
// no container runs (a fresh host), otherwise at its next restart (a reboot).
import { fileCommands, type FileSpec } from '../files.ts'
import type { Step } from '../../steps.ts'

export const DAEMON_JSON: FileSpec = { path: '/etc/docker/daemon.json', owner: 'root:root', mode: '0644' }
export const LOG_SETTINGS = { 'log-driver': 'local', 'log-opts': { 'max-size': '20m', 'max-file': '5' } }

export const logCommands = {
  state: () => [
    fileCommands.read(DAEMON_JSON.path, '{}'),
    'echo "#driver=$(docker info -f \'{{.LoggingDriver}}\' 2>/dev/null)"',
    'echo "#running=$(docker ps -q 2>/dev/null | wc -l)"',
  ].join('\n'),
  restart: () => 'systemctl restart docker',
}

/** daemon.json with log rotation added, or undefined when it already has a log setting. */
export function withLogRotation(current: string): string | undefined {
  let json: Record<string, unknown>
  try { json = JSON.parse(current.trim() || '{}') } catch { throw new Error(`${DAEMON_JSON.path} is not valid JSON; fix it by hand (Docker will not start with it either)`) }
  if ('log-driver' in json || 'log-opts' in json) return undefined
  return JSON.stringify({ ...json, ...LOG_SETTINGS }, null, 2) + '\n'
}

export function logsStep(): Step<{ content: string; restart: boolean }> {
  return {
    title: 'Container logs rotated (Docker\'s local log driver, 5 x 20 MB per container)',
    async check(t) {
      const out = (await t.run(logCommands.state(), { timeout: 30 })).stdout
      const json = out.split('\n').filter(l => !l.startsWith('#')).join('\n')
      const driver = /#driver=(.*)/.exec(out)?.[1] ?? ''
      const running = Number(/#running=(\d+)/.exec(out)?.[1] ?? '0')
      const content = withLogRotation(json)
      if (!content) return { done: true, detail: driver && driver !== JSON.parse(json)['log-driver'] ? `set; Docker uses it after its next restart (now ${driver})` : `driver ${driver}` }
      return { done: false, change: `add log rotation to ${DAEMON_JSON.path}${running ? ' (Docker picks it up at its next restart: containers are running)' : ', restart docker'}`, plan: { content, restart: running === 0 } }
    },
    async apply(t, plan) {
      await t.run(fileCommands.install(DAEMON_JSON), { stdin: plan.content, timeout: 30 })
      if (plan.restart) await t.run(logCommands.restart(), { timeout: 120 })
    },
  }
}
