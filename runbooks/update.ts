// Rolling update to a new version: health-gated, no failed requests, auto-abort.
import { deliveryOf, imagesStep } from '../lib/stack/images.ts'
import { migrateStep, proxyHealthStep, pruneStep, rolloutStep, stackFilesStep } from '../lib/stack/release.ts'
import { main } from '../lib/runbook.ts'
import { checkVersion, releaseImages, stackOf } from '../lib/stack/stack.ts'

await main<{ version?: string }>({
  name: 'update',
  summary: 'Roll out a new version with no downtime: new containers start beside the old, nginx switches only once they are healthy, the old ones drain and stop. An unhealthy version is removed and marked bad while the old one keeps serving.',
  fleet: true,
  hooks: { version: a => a.version },
  options: { version: { type: 'string', value: 'TAG', description: 'the app image tag to roll out (required)' } },
  example: { version: 'TAG' },
  action: (c, a) => `Update ${c.app.name} on ${c.env} to ${a.version}`,
  steps: (c, a) => {
    const st = stackOf(c)
    const v = checkVersion(a.version)
    return [
      stackFilesStep(st),
      imagesStep(() => releaseImages(st, v), deliveryOf(c)),
      migrateStep(st, v),
      rolloutStep(st, v),
      proxyHealthStep(st),
      pruneStep(st),
    ]
  },
})
