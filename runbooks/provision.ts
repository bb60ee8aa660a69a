// Brings a fresh Debian 12/13 or Ubuntu 22.04/24.04 host to a ready state.
import { main } from '../lib/runbook.ts'
import { appDirStep } from '../lib/provision/appdir.ts'
import { dockerStep } from '../lib/provision/docker.ts'
import { firewallStep } from '../lib/provision/firewall.ts'
import { packagesStep } from '../lib/provision/packages.ts'
import { sshdStep } from '../lib/provision/sshd.ts'
import { swapStep } from '../lib/provision/swap.ts'
import { upgradesStep } from '../lib/provision/upgrades.ts'
import { userStep } from '../lib/provision/user.ts'

await main({
  name: 'provision',
  summary: 'Bring a fresh Debian 12/13 or Ubuntu 22.04/24.04 VPS to a ready state: packages, Docker, a deploy user, SSH hardening, firewall, swap, security upgrades, the app directory.',
  fleet: true,
  action: c => `Provision ${c.env} (${c.ssh.host})`,
  steps: c => [
    packagesStep(),
    dockerStep(),
    userStep(c.deploy.user, c.deploy.publicKey),
    sshdStep(),
    firewallStep(c.firewallPorts),
    swapStep(c.swapSize),
    upgradesStep(),
    appDirStep(c.app.dir, c.deploy.user),
  ],
})
