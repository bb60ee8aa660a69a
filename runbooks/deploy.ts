// First deploy of the stack (database, app, nginx) onto a provisioned host.
import { deploySteps } from '../lib/stack/release.ts'
import { main } from '../lib/runbook.ts'
import { checkVersion, stackOf } from '../lib/stack/stack.ts'

await main<{ version?: string }>({
  name: 'deploy',
  summary: 'First deploy of the stack onto a provisioned host: files, images, PostgreSQL, migration, the app behind nginx, health, release history. Later versions go out with update.ts.',
  fleet: true,
  hooks: { version: a => a.version },
  options: { version: { type: 'string', value: 'TAG', description: 'the app image tag to deploy (required)' } },
  example: { version: 'TAG' },
  action: (c, a) => `Deploy ${c.app.name} ${a.version} to ${c.env}`,
  steps: (c, a) => deploySteps(stackOf(c), checkVersion(a.version)),
})
