// Rolling update to a new version: health-gated, no failed requests, auto-abort; or a
// canary of it taking a share of the requests, then promoted or aborted.
import { migrationBackupStep } from '../lib/data/migration-backup.ts'
import { UsageError } from '../lib/errors.ts'
import { deliveryOf, imagesStep } from '../lib/stack/images.ts'
import { buildSteps, builtImages } from '../lib/stack/build.ts'
import { abortStep, canaryGuardStep, canaryStep, parseShare, promoteStep, servingAfter } from '../lib/stack/canary.ts'
import { migrateStep } from '../lib/stack/migrations.ts'
import { proxyHealthStep, pruneStep, rolloutStep, stackFilesStep } from '../lib/stack/release.ts'
import { main } from '../lib/runbook.ts'
import { unstuckStep } from '../lib/stack/stuck.ts'
import { checkVersion, releaseImages, stackOf } from '../lib/stack/stack.ts'

interface Args { version?: string; 'skip-backup'?: boolean; canary?: string; promote?: boolean; abort?: boolean }

await main<Args>({
  name: 'update',
  cluster: 'first node',
  summary: 'Roll out a new version with no downtime: PostgreSQL is backed up and the migration runs first if the version has one (a failed migration stops here, the old version still serving), then new containers start beside the old, nginx switches only once they are healthy, the old ones drain and stop. An unhealthy version is removed and marked bad while the old one keeps serving. With --canary N% the new version\'s web containers get only that share of the requests (sticky per client, by a cookie) until --promote sends them every request or --abort drops them; status shows each version\'s requests and 5xx answers meanwhile.',
  fleet: true,
  hooks: { version: (a, t, c) => (a.promote || a.abort ? t && c && servingAfter(t, stackOf(c), Boolean(a.promote)) : a.version) },
  options: {
    version: { type: 'string', value: 'TAG', description: 'the app image tag to roll out (required, except with --promote and --abort)' },
    'skip-backup': { type: 'boolean', description: 'run a pending migration without the backup before it (asks for confirmation; the environment name in production)' },
    canary: { type: 'string', value: 'N%', description: 'start the version as a canary: its web containers get N% (1-99) of the requests, the same clients each time; workers stay on the live release. Again with another share moves it' },
    promote: { type: 'boolean', description: 'send every request to the canary, replace the workers, stop the old containers: the canary becomes the live release' },
    abort: { type: 'boolean', description: 'drop the canary: every request back to the live release, the canary\'s containers stopped' },
  },
  example: { version: 'TAG' },
  check(a) {
    const modes = (['promote', 'abort'] as const).filter(k => a[k])
    if (modes.length > 1) throw new UsageError('Choose one of --promote and --abort.')
    if (modes.length && (a.version || a.canary)) throw new UsageError(`--${modes[0]} acts on the canary in progress: leave out --version and --canary.`)
    if (a.canary !== undefined) parseShare(a.canary)
    if (!modes.length) checkVersion(a.version)
  },
  destructive: a => Boolean(a['skip-backup']),
  action: (c, a) => a.promote ? `Promote the canary on ${c.env}: every request to it`
    : a.abort ? `Drop the canary on ${c.env}: every request back to the live release`
      : `Update ${c.app.name} on ${c.env} to ${a.version}${a.canary ? ` as a canary taking ${parseShare(a.canary)}% of the requests` : ''}${a['skip-backup'] ? ', migrating WITHOUT a backup before' : ''}`,
  audit: a => (a.promote ? 'promote the canary' : a.abort ? 'abort the canary' : a.canary ? `canary ${parseShare(a.canary)}%` : undefined),
  steps: (c, a) => {
    const st = stackOf(c)
    if (a.promote) return [promoteStep(st), proxyHealthStep(st), pruneStep(st)]
    if (a.abort) return [abortStep(st), proxyHealthStep(st)]
    const v = checkVersion(a.version)
    const share = a.canary ? parseShare(a.canary) : undefined
    return [
      // Before anything changes (the migration included): a canary in progress stands in the way of another release.
      canaryGuardStep(st, share ? `a canary of ${v}` : `an update to ${v}`, share ? v : undefined),
      stackFilesStep(st),
      // A paused, exited or removed container first: the backup needs the database, the swap its containers.
      unstuckStep(st),
      ...buildSteps(st, v),
      imagesStep(() => releaseImages(st, v), deliveryOf(c), undefined, builtImages(st, v)),
      migrationBackupStep(c, v, { skip: a['skip-backup'] }),
      migrateStep(st, v),
      ...(share ? [canaryStep(st, v, share), proxyHealthStep(st)]
        : [rolloutStep(st, v), proxyHealthStep(st), pruneStep(st)]),
    ]
  },
})
