// Maintenance mode: nginx answers web routes with a 503 page until it is turned off.
import { UsageError } from '../lib/errors.ts'
import { main } from '../lib/runbook.ts'
import { checkMessage, maintenanceOffStep, maintenanceOnSteps, retryAfter } from '../lib/stack/maintenance.ts'
import { stackOf } from '../lib/stack/stack.ts'

type Args = { _?: string[]; message?: string; 'retry-after'?: string }
const mode = (a: Args) => {
  const w = a._ ?? []
  if (w.length !== 1 || !['on', 'off'].includes(w[0])) throw new UsageError(`Say on or off: maintenance.ts on [--message TEXT] [--retry-after S], or maintenance.ts off${w.length ? ` (got ${JSON.stringify(w.join(' '))})` : ''}.`)
  if (w[0] === 'off' && a['retry-after'] !== undefined) throw new UsageError('--retry-after goes with on, not off.')
  return w[0] as 'on' | 'off'
}

await main<Args>({
  name: 'maintenance',
  usage: 'on|off [options]',
  cluster: 'first node',
  summary: 'Put the site into maintenance (on) or take it out (off). In maintenance nginx answers every web route with 503, a Retry-After header and a small page carrying your message; each web service\'s health path still reaches the app, so monitors keep watching it. Switching is a file nginx looks at per request: no reload, no request dropped at the switch. status shows it.',
  details: 'Retry-After is one of 30 s, 1, 2, 5, 10, 30 min, 1, 2 or 6 h (what nginx can send without a reload); --retry-after rounds up to the next.',
  options: {
    message: { type: 'string', short: 'm', value: 'TEXT', description: 'with on: the page\'s text, one line (default: "We are doing some maintenance and will be back shortly."); also noted in the lock and the audit log' },
    'retry-after': { type: 'string', value: 'SECONDS', description: 'with on: how long clients should wait before trying again (default 30; rounded up, see above)' },
  },
  example: { _: ['on'] },
  check: a => { mode(a); checkMessage(a.message); retryAfter(a['retry-after']) },
  action: (c, a) => `Turn maintenance ${mode(a)} for ${c.app.name} on ${c.env}`,
  audit: a => `maintenance ${mode(a)}`,
  steps: (c, a) => {
    const st = stackOf(c)
    return mode(a) === 'on' ? maintenanceOnSteps(st, checkMessage(a.message), retryAfter(a['retry-after'])) : [maintenanceOffStep(st)]
  },
})
