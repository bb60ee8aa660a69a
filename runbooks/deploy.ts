// First deploy of the stack (accessories, web services and workers, nginx) onto a provisioned host.
import { migrationBackupStep } from '../lib/data/migration-backup.ts'
import { pitrDeploySteps } from '../lib/data/pitr.ts'
import { deploySteps } from '../lib/stack/release.ts'
import { main } from '../lib/runbook.ts'
import { checkVersion, stackOf } from '../lib/stack/stack.ts'

await main<{ version?: string; 'skip-backup'?: boolean }>({
  name: 'deploy',
  cluster: 'first node',
  summary: 'First deploy of the stack (your COMPOSE_FILE, or the built-in app + PostgreSQL) onto a provisioned host: files, images, accessories (PostgreSQL, Redis...), a backup if the database already holds tables, migration, the web services and workers behind nginx, health, release history. Later versions go out with update.ts.',
  fleet: true,
  hooks: { version: a => a.version },
  options: {
    version: { type: 'string', value: 'TAG', description: 'the app image tag to deploy (required)' },
    'skip-backup': { type: 'boolean', description: 'run the migration without a backup before it, should the database already hold tables' },
  },
  example: { version: 'TAG' },
  destructive: a => Boolean(a['skip-backup']),
  action: (c, a) => `Deploy ${c.app.name} ${a.version} to ${c.env}${a['skip-backup'] ? ', migrating WITHOUT a backup before' : ''}`,
  steps: (c, a) => {
    const v = checkVersion(a.version)
    const st = stackOf(c)
    return deploySteps(st, v, { beforeMigration: migrationBackupStep(c, v, { skip: a['skip-backup'] }), ...pitrDeploySteps(st) })
  },
})
