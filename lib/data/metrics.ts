// What status found, as one object with stable keys (status.ts --json prints it as
// "report") and as a Prometheus text file that node_exporter's textfile collector reads
// (status.ts --metrics-file, run by templates/opsbook-metrics.timer). Values are numbers
// a rule can compare: ages in seconds, ratios, 0/1; none is a secret.
import { UsageError } from '../errors.ts'
import { fileCommands } from '../host/files.ts'

export interface StatusReport {
  env: string
  /** Seconds since the epoch when status ran. */
  at: number
  /** The app answers its health check through nginx. */
  healthy?: boolean
  live?: { version: string; since: string; by: string } | null
  maintenance?: { on: boolean; since?: string; retryAfterSeconds: number }
  /** A canary in progress (null: none), with each version's requests and 5xx answers through nginx since it started. */
  canary?: { version: string; sharePercent: number; since: string; traffic: { version: string; requests: number; errors5xx: number }[] } | null
  /** What differs from the live release; null: not checked (a cluster). */
  drift?: string[] | null
  disk?: { mount: string; usedPercent: number }[]
  certificate?: { names: string[]; issuer: string; daysLeft: number } | null
  backup?: { id: string; ageSeconds: number; rpoSeconds: number } | null
  drill?: { backup: string; ageSeconds: number; maxAgeSeconds: number } | null
  walArchive?: { lastArchivedAgeSeconds: number | null; waitingSegments: number; oldestWaitingSeconds: number; failing: boolean; maxLagSeconds: number } | null
  lock?: { holder: string } | null
  /** The settings the ages are held against (0: off). */
  limits?: { backupRpoSeconds: number; drillMaxAgeSeconds: number; pitrMaxLagSeconds: number }
  /** Per runbook, its newest audit line. */
  lastRuns?: Record<string, { result: string; at: string }>
}

const escape = (v: string) => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')
const labels = (l: Record<string, string>) => `{${Object.entries(l).map(([k, v]) => `${k}="${escape(v)}"`).join(',')}}`

/** The report in Prometheus' text exposition format; what status could not read is left out. */
export function renderMetrics(r: StatusReport): string {
  const out: string[] = []
  const env = { env: r.env }
  const metric = (name: string, help: string, samples: [Record<string, string>, number][]) => {
    if (!samples.length) return
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} gauge`, ...samples.map(([l, v]) => `${name}${labels({ ...env, ...l })} ${Number.isFinite(v) ? v : v === Infinity ? '+Inf' : 'NaN'}`))
  }
  const one = (v: number | undefined | null | false) => (v === undefined || v === null || v === false ? [] : [[{}, v as number] as [Record<string, string>, number]])
  const bool = (v: boolean | undefined) => (v === undefined ? [] : [[{}, v ? 1 : 0] as [Record<string, string>, number]])
  metric('opsbook_status_timestamp_seconds', 'When status last read the host.', [[{}, r.at]])
  metric('opsbook_up', '1 when the app answers its health check through nginx.', bool(r.healthy))
  metric('opsbook_release_info', 'The live release (its version in the label).', r.live ? [[{ version: r.live.version }, 1]] : [])
  metric('opsbook_release_timestamp_seconds', 'When the live release went live.', r.live ? [[{}, Date.parse(r.live.since) / 1000]] : [])
  metric('opsbook_maintenance', '1 while maintenance mode is on.', bool(r.maintenance?.on))
  const c = r.canary
  metric('opsbook_canary_share_ratio', 'Share of the requests a canary in progress is given (0: no canary).', c === undefined ? [] : [[c ? { version: c.version } : {}, c ? c.sharePercent / 100 : 0]])
  metric('opsbook_canary_requests', 'Requests nginx passed to each version since the canary started.', (c?.traffic ?? []).map(x => [{ version: x.version }, x.requests]))
  metric('opsbook_canary_errors', '5xx answers of each version since the canary started.', (c?.traffic ?? []).map(x => [{ version: x.version }, x.errors5xx]))
  metric('opsbook_drift', '1 when the host no longer matches the live release.', r.drift ? [[{}, r.drift.length ? 1 : 0]] : [])
  metric('opsbook_disk_used_ratio', 'Used share of the file system (/ and Docker\'s data root).', (r.disk ?? []).map(d => [{ mount: d.mount }, d.usedPercent / 100]))
  metric('opsbook_certificate_expiry_days', 'Days until the HTTPS certificate expires.', one(r.certificate?.daysLeft))
  // None at all is the oldest backup there is: +Inf, so "age > RPO" fires for it too.
  metric('opsbook_backup_age_seconds', 'Age of the newest full backup (+Inf: none).', r.backup === null ? [[{}, Infinity]] : one(r.backup?.ageSeconds))
  metric('opsbook_backup_rpo_seconds', 'BACKUP_RPO: the age a backup may reach.', one(r.limits?.backupRpoSeconds || undefined))
  metric('opsbook_drill_age_seconds', 'Age of the newest successful restore drill (+Inf: none).', r.drill === null ? [[{}, Infinity]] : one(r.drill?.ageSeconds))
  metric('opsbook_drill_max_age_seconds', 'DRILL_MAX_AGE.', one(r.limits?.drillMaxAgeSeconds || undefined))
  const w = r.walArchive
  metric('opsbook_wal_archive_lag_seconds', 'How long the oldest finished WAL segment has waited to be archived (0: none waiting).', one(w?.oldestWaitingSeconds))
  metric('opsbook_wal_archive_failing', '1 while WAL archiving fails.', bool(w?.failing))
  metric('opsbook_wal_archive_max_lag_seconds', 'PITR_MAX_LAG.', one(r.limits?.pitrMaxLagSeconds || undefined))
  const runs = Object.entries(r.lastRuns ?? {}).sort(([a], [b]) => a.localeCompare(b))
  metric('opsbook_last_run_success', 'Whether the newest run of each runbook ended well (ok or changed).', runs.map(([rb, x]) => [{ runbook: rb }, ['ok', 'changed', 'dry-run'].includes(x.result) ? 1 : 0]))
  metric('opsbook_last_run_timestamp_seconds', 'When the newest run of each runbook ended.', runs.map(([rb, x]) => [{ runbook: rb }, Date.parse(x.at) / 1000]))
  return out.join('\n') + '\n'
}

/** An absolute path of plain characters, ending in .prom (node_exporter reads only those). */
export function checkMetricsPath(p: string | undefined): string | undefined {
  if (p === undefined) return undefined
  if (!/^\/[A-Za-z0-9._/-]+\.prom$/.test(p) || p.includes('..')) throw new UsageError(`--metrics-file ${JSON.stringify(p)} is not an absolute path ending in .prom (e.g. /var/lib/prometheus/node-exporter/opsbook.prom).`)
  return p
}

/** Written whole through a temp file and a rename: node_exporter never reads half of it. */
export const metricsCommands = {
  write: (path: string) => fileCommands.install({ path, mode: '0644', owner: 'root:root' }),
}
