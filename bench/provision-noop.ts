// Bench (prints, never asserts): a no-op provision re-run, timed as a user runs it
// (`npx tsx runbooks/provision.ts`, whole process), next to an equivalent Ansible
// playbook (bench/ansible/provision.yml) against the same freshly provisioned VPS.
//   npm run bench            (RUNS=7 by default)
import { spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { freshHost, ROOT } from '../test/integration/helpers.ts'

const RUNS = Number(process.env.RUNS ?? 7)

function time(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): number {
  const t0 = process.hrtime.bigint()
  const r = spawnSync(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, encoding: 'utf8' })
  const s = Number(process.hrtime.bigint() - t0) / 1e9
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed:\n${r.stdout}\n${r.stderr}`)
  return s
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

if (spawnSync('sh', ['-c', 'command -v ansible-playbook']).status !== 0) {
  console.error('bench needs ansible-playbook: apt-get install -y ansible-core')
  process.exit(2)
}
const h = await freshHost('bench')
try {
  console.error('provisioning the bench VPS once (not timed)...')
  time('node', ['--import', 'tsx', 'runbooks/provision.ts', '--config', h.envFile])
  const inventory = join(h.dir, 'inventory.ini')
  writeFileSync(inventory, `vps ansible_host=127.0.0.1 ansible_port=${h.vps.port} ansible_user=root ansible_ssh_private_key_file=${h.key.privateKey} ` +
    `ansible_python_interpreter=/usr/bin/python3 ansible_ssh_common_args='-o UserKnownHostsFile=${h.knownHosts} -o StrictHostKeyChecking=yes'\n`)
  const ansibleEnv = { ANSIBLE_PIPELINING: 'True', ANSIBLE_HOST_KEY_CHECKING: 'True', ANSIBLE_NOCOLOR: '1', ANSIBLE_STDOUT_CALLBACK: 'default' }
  const ansibleArgs = ['-i', inventory, 'bench/ansible/provision.yml', '-e', `deploy_key_file=${h.key.publicKey}`]
  // Warm-up (first Ansible run settles its own facts and files; neither is timed).
  time('ansible-playbook', ansibleArgs, ansibleEnv)
  time('npx', ['tsx', 'runbooks/provision.ts', '--config', h.envFile])

  const ours: number[] = [], ansible: number[] = []
  for (let i = 0; i < RUNS; i++) {
    ours.push(time('npx', ['tsx', 'runbooks/provision.ts', '--config', h.envFile]))
    ansible.push(time('ansible-playbook', ansibleArgs, ansibleEnv))
  }
  const tsxDirect: number[] = []
  for (let i = 0; i < RUNS; i++) tsxDirect.push(time('node', ['--import', 'tsx', 'runbooks/provision.ts', '--config', h.envFile]))

  const row = (name: string, xs: number[]) => `${name.padEnd(44)} median ${median(xs).toFixed(2)} s   min ${Math.min(...xs).toFixed(2)} s   max ${Math.max(...xs).toFixed(2)} s`
  console.log(`No-op provision re-run, ${RUNS} runs each, same VPS, interleaved:`)
  console.log(row('npx tsx runbooks/provision.ts', ours))
  console.log(row('node --import tsx runbooks/provision.ts', tsxDirect))
  console.log(row('ansible-playbook (pipelining on, facts on)', ansible))
  console.log(`ratio ours/ansible: ${(median(ours) / median(ansible)).toFixed(3)} with npx, ${(median(tsxDirect) / median(ansible)).toFixed(3)} with node --import tsx (goal <= 0.15)`)
} finally {
  h.vps.destroy()
}
