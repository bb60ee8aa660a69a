// Nightly (or on demand) backup of the stack's data to backups/ or S3: PostgreSQL and
// its roles streamed from the host, the app's DuckDB file copied consistently and
// verified, a manifest written last, then retention.
import { bundleStep, checkBackupId, duckdbStep, manifestStep, newBackupRun, postgresStep, retentionStep, verifyStep, volumesStep } from '../lib/data/backup.ts'
import { main } from '../lib/runbook.ts'

await main<{ pin?: boolean; verify?: string }>({
  name: 'backup',
  cluster: 'first node',
  summary: 'Back up PostgreSQL (pg_dump -Fc + roles), the app\'s DuckDB file, the BACKUP_VOLUMES (tar; Redis after a BGSAVE) and the stack\'s own files to BACKUP_DEST (backups/ or s3://), each streamed and hashed on the way; the manifest is written last, so a backup is complete or invisible. Then old backups are pruned by the retention rules. Made for cron: --yes, plain timestamped output without a terminal, --json, BACKUP_PING_URL.',
  details: 'Cron: 17 3 * * * cd /srv/ops && node --import tsx runbooks/backup.ts --env production --yes --json >> /var/log/opsbook-backup.log 2>&1\n(templates/backup.cron and templates/opsbook-backup.{service,timer} are ready to install.)',
  options: {
    pin: { type: 'boolean', description: 'never delete this backup by retention (e.g. before a risky migration)' },
    verify: { type: 'string', value: 'ID|latest', description: 'back up nothing: re-read a stored backup and check every object against its manifest' },
  },
  action: c => `Back up ${c.app.name} on ${c.env} to ${c.backup.dest === 'local' ? c.backup.dir : c.backup.dest}`,
  ping: c => c.backup.pingUrl,
  steps: (c, a) => {
    if (a.verify !== undefined) return [verifyStep(c, a.verify === 'latest' ? 'latest' : checkBackupId(a.verify, '--verify'))]
    const run = newBackupRun(c, { pinned: a.pin })
    return [postgresStep(run), duckdbStep(run), volumesStep(run), bundleStep(run), manifestStep(run), retentionStep(run)]
  },
})
