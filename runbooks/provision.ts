// Brings a fresh Debian 12/13 or Ubuntu 22.04/24.04 host to a ready state.
import { provisionSteps } from '../lib/host/provision/index.ts'
import { main } from '../lib/runbook.ts'

await main({
  name: 'provision',
  summary: 'Bring a fresh Debian 12/13 or Ubuntu 22.04/24.04 VPS to a ready state: packages, Docker, a deploy user, SSH hardening, firewall, swap, security upgrades, the app directory. With ENGINE=swarm the SSH_HOSTS nodes also form one Docker Swarm cluster: Swarm\'s ports open to the other nodes only, the first node initialises it, the others join (the public ports open on the first node only).',
  fleet: true,
  cluster: 'every node',
  action: c => `Provision ${c.env} (${c.ssh.host})`,
  steps: provisionSteps,
})
