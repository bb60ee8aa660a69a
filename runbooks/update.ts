// Rolling update to a new version: health-gated, no failed requests, auto-abort.
import { migrationBackupStep } from '../lib/data/migration-backup.ts'
import { deliveryOf, imagesStep } from '../lib/stack/images.ts'
import { buildSteps, builtImages } from '../lib/stack/build.ts'
import { migrateStep } from '../lib/stack/migrations.ts'
import { proxyHealthStep, pruneStep, rolloutStep, stackFilesStep } from '../lib/stack/release.ts'
import { main } from '../lib/runbook.ts'
import { unstuckStep } from '../lib/stack/stuck.ts'
import { checkVersion, releaseImages, stackOf } from '../lib/stack/stack.ts'

await main<{ version?: string; 'skip-backup'?: boolean }>({
  name: 'update',
  cluster: 'first node',
  summary: 'Roll out a new version with no downtime: PostgreSQL is backed up and the migration runs first if the version has one (a failed migration stops here, the old version still serving), then new containers start beside the old, nginx switches only once they are healthy, the old ones drain and stop. An unhealthy version is removed and marked bad while the old one keeps serving.',
  fleet: true,
  hooks: { version: a => a.version },
  options: {
    version: { type: 'string', value: 'TAG', description: 'the app image tag to roll out (required)' },
    'skip-backup': { type: 'boolean', description: 'run a pending migration without the backup before it (asks for confirmation; the environment name in production)' },
  },
  example: { version: 'TAG' },
  destructive: a => Boolean(a['skip-backup']),
  action: (c, a) => `Update ${c.app.name} on ${c.env} to ${a.version}${a['skip-backup'] ? ', migrating WITHOUT a backup before' : ''}`,
  steps: (c, a) => {
    const st = stackOf(c)
    const v = checkVersion(a.version)
    return [
      stackFilesStep(st),
      // A paused, exited or removed container first: the backup needs the database, the swap its containers.
      unstuckStep(st),
      ...buildSteps(st, v),
      imagesStep(() => releaseImages(st, v), deliveryOf(c), undefined, builtImages(st, v)),
      migrationBackupStep(c, v, { skip: a['skip-backup'] }),
      migrateStep(st, v),
      rolloutStep(st, v),
      proxyHealthStep(st),
      pruneStep(st),
    ]
  },
})
