// What runs where: current release, containers, health, history, lock, audit. Changes nothing.
import { auditCommands } from '../lib/audit.ts'
import { listBackups, newestFull, storeOf } from '../lib/data/backup.ts'
import { describeArchiving, parseArchiver, pitrStatusCommand } from '../lib/data/pitr.ts'
import { lastDrill } from '../lib/data/restore.ts'
import { HostError } from '../lib/errors.ts'
import { checkMetricsPath, metricsCommands, renderMetrics, type StatusReport } from '../lib/data/metrics.ts'
import { describeHolder, lockHolder } from '../lib/lock.ts'
import { live, readReleases } from '../lib/stack/releases.ts'
import { describeMaintenance, readMaintenance } from '../lib/stack/maintenance.ts'
import { canaryTraffic, describeCanary, readCanary } from '../lib/stack/canary.ts'
import { stackContainers } from '../lib/stack/rollout.ts'
import { interrupted, rotationState } from '../lib/stack/rotation.ts'
import { main } from '../lib/runbook.ts'
import type { Step } from '../lib/steps.ts'
import { stackCommands, stackOf } from '../lib/stack/stack.ts'
import { daysLeft, parseCertificate, tlsCommands } from '../lib/stack/tls.ts'
import { driftOf } from '../lib/stack/drift.ts'
import { clusterCommands, describeNodes, describeServices, parseNodes } from '../lib/host/cluster.ts'

/** 95 s → "1 min 35 s"; 2 h 5 min; 3 d 4 h. */
const age = (ms: number) => {
  const s = Math.max(0, Math.round(ms / 1000))
  return s < 60 ? `${s} s` : s < 3600 ? `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ''}` : s < 86400 ? `${Math.floor(s / 3600)} h${Math.floor(s % 3600 / 60) ? ` ${Math.floor(s % 3600 / 60)} min` : ''}` : `${Math.floor(s / 86400)} d${Math.floor(s % 86400 / 3600) ? ` ${Math.floor(s % 86400 / 3600)} h` : ''}`
}

// What the checks found, for --json and --metrics-file (one run, one report).
const facts: StatusReport = { env: '', at: Math.round(Date.now() / 1000) }

/** df of / and of Docker's data root (the same file system, often): size units, POSIX columns. */
const diskUse = () => `df -P -h / "$(docker info -f '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)" | tail -n +2`

await main<{ check?: boolean; 'metrics-file'?: string }>({
  name: 'status',
  options: {
    check: { type: 'boolean', description: 'for monitoring: exit 1 with one line on drift (the host no longer matches the live release), a disk at 90 % or more, the newest full backup older than BACKUP_RPO or the newest drill older than DRILL_MAX_AGE' },
    'metrics-file': { type: 'string', value: 'PATH', description: 'also write what status found as Prometheus metrics to PATH on the host (a .prom file in node_exporter\'s textfile directory; templates/opsbook-metrics.timer runs this every 5 min); --json prints the same as "report"' },
  },
  check: a => { checkMetricsPath(a['metrics-file']) },
  after: async (t, a) => {
    const path = checkMetricsPath(a['metrics-file'])
    if (path) await t.run(metricsCommands.write(path), { stdin: renderMetrics(facts), timeout: 30 }).catch(e => { throw new HostError(`could not write the metrics file ${path} (${(e as Error).message}): does its directory exist?`) })
    return facts as unknown as Record<string, unknown>
  },
  summary: 'Show (with ENGINE=swarm: the cluster\'s nodes and services, then) the live release, maintenance mode, a canary in progress (its share, and each version\'s requests and 5xx answers since it started), the app containers, health through nginx, drift from the live release (with the command that repairs it), disk use (warns at 80 %), the HTTPS certificate (warns under 14 days left), the newest backup\'s age against BACKUP_RPO and the newest drill\'s against DRILL_MAX_AGE, recent releases, the host lock and the last audit lines. Read-only: no lock, no audit line. Exits 1 if the app does not answer its health check.',
  readOnly: true,
  cluster: 'first node',
  steps: (c, a) => {
    const st = stackOf(c)
    Object.assign(facts, { env: c.env, limits: { backupRpoSeconds: c.backup.rpo ?? 0, drillMaxAgeSeconds: c.backup.drillMaxAge ?? 0, pitrMaxLagSeconds: c.backup.pitr?.maxLag ?? 0 } })
    // --check turns a warning into a failed line (exit 1); without it status only reports.
    const warn = (what: string, fail: boolean) => { if (a.check && fail) throw new HostError(what); return { done: true as const, detail: `WARNING: ${what}` } }
    return [
      ...(c.cluster ? [{ title: 'Cluster nodes (ENGINE=swarm)', async check(t) {
        const r = await t.run(clusterCommands.nodes(), { allowFail: true, timeout: 30 })
        if (r.code !== 0) return warn(`the first node does not manage a swarm (${r.stderr.trim().split('\n').pop()}): run provision.ts`, true)
        const d = describeNodes(parseNodes(r.stdout))
        return d.down.length ? warn(`${d.down.join(', ')} not ready: ${d.text}`, true) : { done: true, detail: d.text }
      }, apply: async () => {} }, { title: 'Cluster services (replicas running/desired, by node)', async check(t) {
        const text = describeServices((await t.run(clusterCommands.services(), { allowFail: true, timeout: 30 })).stdout)
        return text ? { done: true, detail: text } : { skip: 'none' }
      }, apply: async () => {} }] as Step[] : []),
      { title: 'Live release', async check(t) {
        const cur = live(await readReleases(t, st))
        facts.live = cur ? { version: cur.version, since: cur.at, by: cur.by } : null
        return cur ? { done: true, detail: `${cur.version}, since ${cur.at.slice(0, 16).replace('T', ' ')} by ${cur.by}` } : { skip: 'nothing deployed' }
      }, apply: async () => {} },
      { title: 'Maintenance', async check(t) {
        const m = await readMaintenance(t, st)
        facts.maintenance = { on: m.on, since: m.since, retryAfterSeconds: m.retryAfter }
        return { done: true, detail: describeMaintenance(m) }
      }, apply: async () => {} },
      { title: 'Canary', async check(t) {
        if (c.cluster) return { skip: 'no canaries on a cluster' }
        const [{ canary }, rs] = await Promise.all([readCanary(t, st), readReleases(t, st)])
        facts.canary = null
        if (!canary) return { done: true, detail: 'none' }
        const traffic = await canaryTraffic(t, st, canary, live(rs)?.version ?? '?')
        facts.canary = { version: canary.version, sharePercent: canary.share, since: canary.since, traffic: traffic.map(x => ({ version: x.version, requests: x.requests, errors5xx: x.errors })) }
        return { done: true, detail: describeCanary(canary, traffic) }
      }, apply: async () => {} },
      { title: 'Containers', async check(t) {
        if (c.cluster) return { skip: 'a cluster: see Cluster services' }
        const cs = await stackContainers(t, st)
        return cs.length ? { done: true, detail: cs.map(x => `${x.name} ${x.image.split(':').pop()} ${x.state}${x.health ? ` (${x.health})` : ''}`).join('; ') } : { skip: 'none' }
      }, apply: async () => {} },
      { title: 'Drift (host against the live release)', async check(t) {
        if (c.cluster) return { skip: 'not checked on a cluster yet' }
        const lines = await driftOf(t, st)
        facts.drift = lines
        return lines.length ? warn(lines.join(' | '), true) : { done: true, detail: 'none' }
      }, apply: async () => {} },
      { title: 'Disk (/ and Docker\'s data)', async check(t) {
        const out = (await t.run(diskUse(), { timeout: 15 })).stdout.trim().split('\n')
        const use = out.map(l => l.split(/\s+/)).filter(f => f.length >= 6).map(f => ({ mount: f[5], pct: Number(f[4].replace('%', '')), free: f[3] }))
        const seen = [...new Map(use.map(u => [u.mount, u])).values()]
        const text = seen.map(u => `${u.mount} ${u.pct} % used, ${u.free} free`).join('; ')
        const worst = Math.max(...seen.map(u => u.pct))
        facts.disk = seen.map(u => ({ mount: u.mount, usedPercent: u.pct }))
        return worst >= 80 ? warn(`${text} (container logs rotate since provision; docker system prune removes unused images)`, worst >= 90) : { done: true, detail: text }
      }, apply: async () => {} },
      { title: 'Certificate', async check(t) {
        if (!st.tls) return { skip: 'HTTP only (TLS_DOMAINS not set)' }
        const cert = parseCertificate((await t.run(tlsCommands.certificate(st), { timeout: 15 })).stdout)
        facts.certificate = null
        if (!cert) return { skip: 'none issued yet: run deploy.ts' }
        const days = daysLeft(cert)
        facts.certificate = { names: cert.names, issuer: cert.issuer, daysLeft: days }
        // Renewal starts at 30 days left; under 14 means it has failed for two weeks.
        const warn = days < 14 ? `WARNING: expires in ${days} days; the renewal timer (opsbook-certs-${st.project}) is failing, see journalctl -u opsbook-certs-${st.project}` : `${days} days left`
        return { done: true, detail: `${cert.names.join(', ')} from ${cert.issuer}, ${warn}` }
      }, apply: async () => {} },
      { title: `Backups (newest full one; BACKUP_RPO ${c.backup.rpo ? age(c.backup.rpo * 1000) : 'off'})`, async check() {
        if (!c.backup.rpo) return { skip: 'BACKUP_RPO=off' }
        const all = await listBackups(storeOf(c), c.app.name, c.env).catch(e => { throw new HostError(`cannot list the backups in ${storeOf(c).where}: ${(e as Error).message}`) })
        const m = newestFull(all)
        facts.backup = null
        if (!m) return warn(`no backup of ${c.app.name}/${c.env} in ${storeOf(c).where}: run backup.ts (templates/backup.cron runs it hourly)`, true)
        const ms = Date.now() - Date.parse(m.startedAt)
        facts.backup = { id: m.id, ageSeconds: Math.round(ms / 1000), rpoSeconds: c.backup.rpo }
        const what = `${m.id}, ${age(ms)} old, in ${storeOf(c).where}${all[0] !== m ? `; newer: ${all[0].id} (${all[0].note ?? 'partial'})` : ''}`
        return ms > c.backup.rpo * 1000 ? warn(`${what}: older than BACKUP_RPO (${age(c.backup.rpo * 1000)}); is the backup timer running?`, true) : { done: true, detail: what }
      }, apply: async () => {} },
      { title: `PITR: WAL archiving (PITR_MAX_LAG ${c.backup.pitr ? `${c.backup.pitr.maxLag} s` : 'PITR off'})`, async check(t) {
        if (!st.pitr) return { skip: 'PITR=off' }
        const a = parseArchiver((await t.run(pitrStatusCommand(st), { allowFail: true, timeout: 30 })).stdout)
        if (!a) return warn('the database does not answer: archiving state unknown', true)
        facts.walArchive = {
          lastArchivedAgeSeconds: a.lastAt ? Math.round((a.now - a.lastAt) / 1000) : null, waitingSegments: a.waiting,
          oldestWaitingSeconds: a.waiting && a.waitingSince ? Math.round((a.now - a.waitingSince) / 1000) : 0,
          failing: Boolean(a.lastFailedAt && (!a.lastAt || a.lastFailedAt > a.lastAt)), maxLagSeconds: c.backup.pitr!.maxLag,
        }
        const d = describeArchiving(a, c.backup.pitr!.maxLag)
        return d.warn ? warn(d.text, true) : { done: true, detail: d.text }
      }, apply: async () => {} },
      { title: `Restore drill (newest successful one; DRILL_MAX_AGE ${c.backup.drillMaxAge ? age(c.backup.drillMaxAge * 1000) : 'off'})`, async check(t) {
        if (!c.backup.drillMaxAge) return { skip: 'DRILL_MAX_AGE=off' }
        const d = await lastDrill(t)
        facts.drill = null
        if (!d) return warn('no successful drill recorded on this host: restore.ts --drill --latest proves the backups restore', true)
        const ms = Date.now() - Date.parse(d.at)
        facts.drill = { backup: d.backup, ageSeconds: Math.round(ms / 1000), maxAgeSeconds: c.backup.drillMaxAge }
        const what = `${age(ms)} ago, of backup ${d.backup}`
        return ms > c.backup.drillMaxAge * 1000 ? warn(`${what}: older than DRILL_MAX_AGE (${age(c.backup.drillMaxAge * 1000)})`, true) : { done: true, detail: what }
      }, apply: async () => {} },
      { title: 'Secrets (rotate-secret)', async check(t) {
        const s = await rotationState(t, st)
        if (!s.compose) return { skip: 'stack files from before rotation existed' }
        const parts = [s.rotated.length ? `rotated on the host: ${s.rotated.join(', ')}` : 'none rotated yet', s.login && `database login ${s.login}`]
        if (s.next || interrupted(s)) parts.push(`UNFINISHED rotation${s.next ? ` (${s.next})` : ''}: re-run rotate-secret with the same options to finish it`)
        return { done: true, detail: parts.filter(Boolean).join('; ') }
      }, apply: async () => {} },
      { title: 'Recent releases', async check(t) {
        const rs = (await readReleases(t, st)).slice(-6).reverse()
        return rs.length ? { done: true, detail: rs.map(r => `${r.version} ${r.result}${r.bad ? ' (bad)' : ''}${r.migration ? ' (migrated)' : ''}`).join(', ') } : { skip: 'none' }
      }, apply: async () => {} },
      { title: 'Host lock', async check(t) {
        const h = await lockHolder(t, c.lockStaleAfter)
        facts.lock = h ? { holder: describeHolder(h) } : null
        return { done: true, detail: h ? describeHolder(h) : 'free' }
      }, apply: async () => {} },
      { title: 'Last runbook runs', async check(t) {
        // The newest line per runbook for the report; the last 3 for the screen.
        const all = (await t.run(auditCommands.tail(500), { timeout: 15 })).stdout.trim().split('\n').filter(Boolean).map(l => JSON.parse(l))
        facts.lastRuns = Object.fromEntries(all.map(l => [l.runbook, { result: l.result, at: l.ts }]))
        const lines = all.slice(-3)
        return lines.length ? { done: true, detail: lines.reverse().map(a => `${a.ts.slice(0, 16).replace('T', ' ')} ${a.runbook}${a.what ? ` (${a.what})` : ''} ${a.result} by ${a.operator}`).join('; ') } : { skip: 'none yet' }
      }, apply: async () => {} },
      // Last: a host that does not answer still gets every line above (what differs, the lock, the last runs).
      { title: `Health through nginx (:${st.proxyPort}${st.healthPath})`, async check(t) {
        const r = await t.run(stackCommands.proxyHealthy(st), { allowFail: true, timeout: 15 })
        facts.healthy = r.code === 0
        if (r.code !== 0) throw new HostError(`not answering (${r.stderr.trim() || `curl exit ${r.code}`})`)
        return { done: true, detail: 'answering' }
      }, apply: async () => {} },
    ]
  },
})
