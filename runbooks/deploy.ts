// First deploy of the stack (accessories, web services and workers, nginx) onto a provisioned host.
import { deploySteps } from '../lib/stack/release.ts'
import { main } from '../lib/runbook.ts'
import { checkVersion, stackOf } from '../lib/stack/stack.ts'

await main<{ version?: string }>({
  name: 'deploy',
  summary: 'First deploy of the stack (your COMPOSE_FILE, or the built-in app + PostgreSQL) onto a provisioned host: files, images, accessories (PostgreSQL, Redis...), migration, the web services and workers behind nginx, health, release history. Later versions go out with update.ts.',
  fleet: true,
  hooks: { version: a => a.version },
  options: { version: { type: 'string', value: 'TAG', description: 'the app image tag to deploy (required)' } },
  example: { version: 'TAG' },
  action: (c, a) => `Deploy ${c.app.name} ${a.version} to ${c.env}`,
  steps: (c, a) => deploySteps(stackOf(c), checkVersion(a.version)),
})
