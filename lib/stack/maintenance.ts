// Maintenance mode: while proxy/maintenance.on exists, nginx answers every web route with
// 503, Retry-After and proxy/maintenance.html (routes.ts renders the locations); each web
// service's health path still reaches it, so monitors watch the app, not the page. nginx
// looks at these files on every request, as it does at the slot flags: switching is a
// file created or removed, with no reload and no request dropped at the switch.
//   proxy/maintenance.on          present: in maintenance
//   proxy/maintenance.html        the page (templates/maintenance.html, the message in it)
//   proxy/maintenance.retry-N     Retry-After N (absent: 30 s)
//   proxy/maintenance.by-restore  a restore put the site in maintenance: it takes it out
import { HostError, UsageError } from '../errors.ts'
import { fileCommands, sha256, template } from '../host/files.ts'
import { sh } from '../sh.ts'
import type { Step, Target } from '../steps.ts'
import { healthBypassesMaintenance, MAINTENANCE_FLAG, MAINTENANCE_PAGE, RETRY_AFTER, retryAfterFlag } from './routes.ts'
import { webServices } from './model.ts'
import { owned, stackCommands, throughNginx, type Stack } from './stack.ts'

export const DEFAULT_MESSAGE = 'We are doing some maintenance and will be back shortly.'
const BY_RESTORE = 'maintenance.by-restore'

export interface MaintenanceState {
  on: boolean
  /** When the flag was created (ISO). */
  since?: string
  retryAfter: number
  /** sha256 of the page on the host. */
  page?: string
  byRestore: boolean
  /** The host's nginx routes know the flag (they were rendered by this version). */
  routesReady: boolean
}

/** The Retry-After nginx will send for `s` seconds: the next value it can send without a reload. */
export function retryAfter(value: string | undefined): number {
  if (value === undefined) return RETRY_AFTER[0]
  const n = /^\d{1,6}$/.test(value) ? Number(value) : NaN
  if (!(n >= 1 && n <= RETRY_AFTER[RETRY_AFTER.length - 1])) throw new UsageError(`--retry-after ${JSON.stringify(value)} is not a number of seconds from 1 to ${RETRY_AFTER[RETRY_AFTER.length - 1]}.`)
  return RETRY_AFTER.find(r => r >= n)!
}

/** The message as it goes into the page: plain text, one line, at most 500 characters. */
export function checkMessage(text: string | undefined): string {
  if (text === undefined) return DEFAULT_MESSAGE
  const t = text.trim()
  if (!t || t.length > 500 || /[\u0000-\u001f\u007f]/.test(t)) throw new UsageError('--message is the page\'s text: one line of 1 to 500 characters.')
  return t
}

const escape = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')
const label = (s: number) => (s < 60 ? `${s} seconds` : s < 3600 ? `${s / 60} minute${s === 60 ? '' : 's'}` : `${s / 3600} hour${s === 3600 ? '' : 's'}`)

export function renderPage(message: string, retry: number): string {
  return template('maintenance.html').replace('{{MESSAGE}}', escape(message)).replace('{{RETRY_AFTER}}', String(retry)).replace('{{RETRY_LABEL}}', label(retry))
}

const proxyDir = (st: Stack) => `${st.dir}/proxy`
const pageSpec = (st: Stack) => owned(st, `proxy/${MAINTENANCE_PAGE}`, '0644')

export const maintenanceCommands = {
  /** Flag, its age, Retry-After, the page's hash, whether a restore set it, whether the routes know it. */
  state: (st: Stack) => [
    sh`cd ${proxyDir(st)} 2>/dev/null || exit 0`,
    sh`if [ -e ${MAINTENANCE_FLAG} ]; then echo "on $(date -u -d @$(stat -c %Y ${MAINTENANCE_FLAG}) +%FT%TZ)"; fi`,
    'for f in maintenance.retry-*; do [ -e "$f" ] && echo "retry ${f#maintenance.retry-}"; done',
    sh`if [ -f ${MAINTENANCE_PAGE} ]; then echo "page $(sha256sum < ${MAINTENANCE_PAGE} | cut -c1-64)"; fi`,
    sh`if [ -e ${BY_RESTORE} ]; then echo by-restore; fi`,
    sh`if grep -qF ${MAINTENANCE_FLAG} default.conf 2>/dev/null; then echo routes; fi`,
  ].join('\n'),
  /** The page (on stdin) and its Retry-After; with `flag`, then the flag: the first 503 already has both. */
  on: (st: Stack, retry: number, o: { flag: boolean; byRestore?: boolean }) => [
    fileCommands.install(pageSpec(st)),
    sh`cd ${proxyDir(st)} && rm -f maintenance.retry-*`,
    retry === RETRY_AFTER[0] ? '' : sh`touch ${retryAfterFlag(retry)}`,
    // The operator's own: a marker left by an interrupted restore must not let the next restore end it.
    o.byRestore ? sh`touch ${BY_RESTORE}` : sh`rm -f ${BY_RESTORE}`,
    o.flag ? sh`touch ${MAINTENANCE_FLAG}` : '',
  ].filter(Boolean).join('\n'),
  /** The flag first: the next request reaches the app; then what went with it. */
  off: (st: Stack) => sh`cd ${proxyDir(st)} && rm -f ${MAINTENANCE_FLAG} && rm -f ${MAINTENANCE_PAGE} ${BY_RESTORE} maintenance.retry-*`,
  /** The HTTP status nginx gives a web route now, as a client reaches it (000: nginx does not answer). */
  probe: (st: Stack, path: string, host?: string) => `{ ${throughNginx(st, [{ path, host }], ['-s', '-w', '%{http_code}'])}; } || true`,
}

export function parseMaintenance(stdout: string): MaintenanceState {
  const s: MaintenanceState = { on: false, retryAfter: RETRY_AFTER[0], byRestore: false, routesReady: false }
  for (const line of stdout.split('\n')) {
    const [k, v] = line.split(' ')
    if (k === 'on') { s.on = true; s.since = v }
    if (k === 'retry' && RETRY_AFTER.includes(Number(v))) s.retryAfter = Number(v)
    if (k === 'page') s.page = v
    if (k === 'by-restore') s.byRestore = true
    if (k === 'routes') s.routesReady = true
  }
  return s
}

export const readMaintenance = async (t: Target, st: Stack) => parseMaintenance((await t.run(maintenanceCommands.state(st), { timeout: 30 })).stdout)

/** Whether the host already shows this page with this Retry-After. */
export const pageMatches = (s: MaintenanceState, message: string, retry: number) => s.page === sha256(renderPage(message, retry)) && s.retryAfter === retry


/**
 * For a restore that stops the app: maintenance on unless the operator already put the
 * site in it (then it is theirs to end). Returns the undoing, a no-op in that case.
 */
export async function maintenanceDuring(t: Target, st: Stack, why: string): Promise<() => Promise<void>> {
  const s = await readMaintenance(t, st)
  if (!s.routesReady || (s.on && !s.byRestore)) return async () => {}
  await t.run(maintenanceCommands.on(st, RETRY_AFTER[1], { flag: true, byRestore: true }), { stdin: renderPage(why, RETRY_AFTER[1]), timeout: 30 })
  return async () => {
    await endOnceServing(t, st).catch(() => {})
  }
}

/** The health paths bypass the page: once they answer, clients get the app, not a 502; then off. */
async function endOnceServing(t: Target, st: Stack): Promise<void> {
  if (healthBypassesMaintenance(st.model)) await t.run(stackCommands.awaitProxyHealthy(st, 120), { allowFail: true, timeout: 150 })
  await t.run(maintenanceCommands.off(st), { timeout: 30 })
}

/** After a restore that kept the site in maintenance (rollback --restore-data): once the app answers, off. */
export function maintenanceEndStep(st: Stack): Step {
  return {
    title: 'Maintenance set by the restore ended (once the app answers behind it)',
    async check(t) {
      const s = await readMaintenance(t, st)
      return s.on && s.byRestore ? { done: false, change: 'wait for the health paths, then remove the flag and the page' } : { done: true, detail: s.on ? 'on, but yours: maintenance.ts off ends it' : 'not in maintenance' }
    },
    async apply(t) { await endOnceServing(t, st) },
  }
}

export function describeMaintenance(s: MaintenanceState): string {
  return s.on ? `ON since ${s.since?.slice(0, 16).replace('T', ' ')} UTC (nginx answers 503 with Retry-After ${s.retryAfter} s${s.byRestore ? ', set by a restore' : ''}): maintenance.ts off ends it` : 'off'
}

/**
 * A web route nginx answers 503 on in maintenance: the first route's own path (never an
 * exempt health path: routes.ts exempts none that is a route's path).
 */
function probeRoute(st: Stack): { path: string; host?: string } | undefined {
  const r = webServices(st.model)[0]?.routes[0]
  return r && { path: r.path, host: r.host }
}

/** maintenance.ts on: the page and Retry-After as asked, then the flag; verified through nginx. */
export function maintenanceOnSteps(st: Stack, message: string, retry: number): Step[] {
  const ready = (s: MaintenanceState) => { if (!s.routesReady) throw new HostError('nginx\'s routes on the host predate maintenance mode: run update.ts (or deploy.ts) once with this version of opsbook, then again.') }
  return [{
    title: `Maintenance page (Retry-After ${retry} s)`,
    async check(t) {
      const s = await readMaintenance(t, st)
      ready(s)
      return pageMatches(s, message, retry) ? { done: true, detail: s.on ? 'as asked' : 'in place' } : { done: false, change: s.on ? 'replace the page shown' : 'write the page' }
    },
    async apply(t) {
      // The flag is the next step's.
      await t.run(maintenanceCommands.on(st, retry, { flag: false }), { stdin: renderPage(message, retry), timeout: 30 })
    },
  }, {
    title: 'Maintenance on (nginx answers 503 on web routes; health paths still reach the app)',
    async check(t) {
      const s = await readMaintenance(t, st)
      return s.on ? { done: true, detail: `since ${s.since?.slice(0, 16).replace('T', ' ')} UTC` } : { done: false, change: `create proxy/${MAINTENANCE_FLAG} (no nginx reload)` }
    },
    async apply(t) { await t.run(sh`touch ${`${proxyDir(st)}/${MAINTENANCE_FLAG}`}`, { timeout: 30 }) },
    async verify(t) {
      const r = probeRoute(st)
      if (!r) return
      const code = (await t.run(maintenanceCommands.probe(st, r.path, r.host), { timeout: 15 })).stdout.trim()
      if (code !== '503') throw new HostError(`nginx answered ${code} on ${r.path}, not 503: is its proxy/ the one in ${st.dir}?`)
    },
  }]
}

/** maintenance.ts off: the flag removed (the next request reaches the app), then the page. */
export function maintenanceOffStep(st: Stack): Step {
  return {
    title: 'Maintenance off (web routes reach the app again)',
    async check(t) {
      const s = await readMaintenance(t, st)
      return s.on || s.page ? { done: false, change: `remove proxy/${MAINTENANCE_FLAG} and the page (no nginx reload)` } : { done: true, detail: 'not in maintenance' }
    },
    async apply(t) { await t.run(maintenanceCommands.off(st), { timeout: 30 }) },
    async verify(t) {
      const r = probeRoute(st)
      if (!r) return
      const code = (await t.run(maintenanceCommands.probe(st, r.path, r.host), { timeout: 15 })).stdout.trim()
      if (code === '503' || code === '000') throw new HostError(`maintenance is off, but nginx answers ${code === '000' ? 'nothing' : '503'} on ${r.path}: the app is not answering; see status.ts and logs.ts.`)
    },
  }
}
