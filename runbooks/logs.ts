// Read the stack's logs: every replica, both slots, nginx's access log, every node.
import { PassThrough } from 'node:stream'
import { main } from '../lib/runbook.ts'
import { serviceCommands } from '../lib/stack/engine.ts'
import { logOptions } from '../lib/stack/logs.ts'
import { stackOf } from '../lib/stack/stack.ts'

type Args = { service?: string[]; since?: string; lines?: string; grep?: string; follow?: boolean }

await main<Args>({
  name: 'logs',
  cluster: 'first node',
  readOnly: true,
  summary: 'Print the logs of one service or all as one stream: every replica, both slots during a swap, stopped containers too (a crash\'s last lines), nginx\'s access log as the service "nginx", and with ENGINE=swarm every node\'s tasks. Each line starts with its time (UTC), the container (task@node on a cluster) and its release version. Read-only: no lock, no audit line.',
  details: 'Examples:\n  logs.ts --env production --service backend --since 10m\n  logs.ts --env production --grep \'ERROR|Traceback\' --lines 500\n  logs.ts --env production --service nginx --follow        (Ctrl-C ends it)',
  options: {
    service: { type: 'string', multiple: true, value: 'NAME', description: 'only this service (repeat for several; "nginx" is the proxy\'s access and error log); default: all' },
    since: { type: 'string', value: 'WHEN', description: 'only lines since a duration ago (30s, 10m, 2h) or a date (2026-12-07, 2026-12-07T14:00:00Z)' },
    lines: { type: 'string', value: 'N', description: 'the last N lines of each container (default 100, or all with --since)' },
    grep: { type: 'string', value: 'REGEX', description: 'only lines matching this extended regular expression (grep -E, case-sensitive)' },
    follow: { type: 'boolean', short: 'f', description: 'keep printing new lines as they come, until Ctrl-C' },
  },
  steps: () => [],
  session: (c, a) => {
    const st = stackOf(c)
    const cmd = serviceCommands.logs(st, logOptions(st, a))
    return {
      async run(t, signal) {
        // Left open while following: the host's side stops its readers when this closes (logs.ts streamed()).
        const stdin = a.follow ? new PassThrough() : ''
        const stop = new AbortController()
        signal.addEventListener('abort', () => stop.abort(), { once: true })
        // A reader that went away (| head) ends the stream, as it would end a local command.
        process.stdout.on('error', () => stop.abort())
        const r = await t.run(cmd, { stdin, stdout: process.stdout, onOutput: chunk => process.stderr.write(chunk), allowFail: true, signal: stop.signal, timeout: a.follow ? 7 * 24 * 3600 : 600 })
          .catch(e => { if (stop.signal.aborted) return { code: 0 }; throw e })
        return stop.signal.aborted ? 0 : r.code
      },
    }
  },
})
