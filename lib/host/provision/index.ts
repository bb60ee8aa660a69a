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
import { clusterStep, swarmFirewallStep, swarmMemberStep } from './swarm.ts'
import { selfOf } from '../cluster.ts'
import { upgradesStep } from './upgrades.ts'
import { userStep } from './user.ts'

/**
 * ENGINE=swarm adds the cluster: every node is read first (one that does not answer stops
 * the run before any change), the public ports open only on the edge node, and the node
 * joins the swarm last, once Docker and the firewall are in place.
 */
export const provisionSteps = (c: Config, a: { 'accept-new-host'?: boolean } = {}): Step[] => {
  const o = { acceptNewHost: a['accept-new-host'] }
  const edge = c.cluster ? selfOf(c).edge : true
  return [
    ...(c.cluster ? [clusterStep(c, o)] : []),
    packagesStep(),
    dockerStep(),
    logsStep(),
    userStep(c.deploy.user, c.deploy.publicKey),
    sshdStep(),
    firewallStep(edge ? c.firewallPorts : [], edge ? [] : c.firewallPorts),
    ...(c.cluster ? [swarmFirewallStep(c, o)] : []),
    swapStep(c.swapSize),
    upgradesStep(),
    appDirStep(c.app.dir, c.deploy.user),
    ...(c.cluster ? [swarmMemberStep(c, o)] : []),
  ]
}
