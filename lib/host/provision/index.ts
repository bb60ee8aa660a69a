// The provision checklist, shared by provision.ts and restore.ts --to-host.
import type { Config } from '../../config.ts'
import type { Step } from '../../steps.ts'
import { appDirStep } from './appdir.ts'
import { dockerStep } from './docker.ts'
import { firewallStep } from './firewall.ts'
import { logsStep } from './logs.ts'
import { packagesStep } from './packages.ts'
import { sshdStep } from './sshd.ts'
import { swapStep } from './swap.ts'
import { upgradesStep } from './upgrades.ts'
import { userStep } from './user.ts'

export const provisionSteps = (c: Config): Step[] => [
  packagesStep(),
  dockerStep(),
  logsStep(),
  userStep(c.deploy.user, c.deploy.publicKey),
  sshdStep(),
  firewallStep(c.firewallPorts),
  swapStep(c.swapSize),
  upgradesStep(),
  appDirStep(c.app.dir, c.deploy.user),
]
