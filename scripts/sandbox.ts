// The local disposable VPS behind `npm run demo`: a Debian 13 systemd container
// reachable over SSH on 127.0.0.1, with .env.sandbox pointing the runbooks at it.
//   npx tsx scripts/sandbox.ts up | demo | down | status
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { appendFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { appImage, nginxImage, postgresImage } from '../test/images.ts'
import { docker, ensureEngine, operatorKey, startVps, writeKnownHosts } from '../test/testbed.ts'

const DIR = resolve('.sandbox')
const ENV_FILE = resolve('.env.sandbox')
const NAME = 'sandbox'

async function up(): Promise<void> {
  const key = operatorKey(DIR)
  const vps = await startVps(NAME, key)
  // The host key is read through `docker exec`, a channel we trust: a real verification,
  // like reading it from a provider's console, not a trust-on-first-use.
  writeKnownHosts(resolve(DIR, 'known_hosts'), vps.knownHosts)
  writeFileSync(ENV_FILE, [
    '# Written by scripts/sandbox.ts for the local disposable VPS; see .env.example.',
    'SSH_HOST=127.0.0.1',
    `SSH_PORT=${vps.port}`,
    'SSH_USER=root',
    `SSH_KEY=${key.privateKey}`,
    `SSH_KNOWN_HOSTS=${resolve(DIR, 'known_hosts')}`,
    'APP_NAME=app',
    '',
  ].join('\n'))
  console.log(`Sandbox VPS ${vps.container} is up: ssh -i ${key.privateKey} -o UserKnownHostsFile=${resolve(DIR, 'known_hosts')} -p ${vps.port} root@127.0.0.1`)
}

async function down(): Promise<void> {
  await ensureEngine()
  docker(['rm', '-f', '-v', `opsbook-${NAME}`], { check: false })
  rmSync(ENV_FILE, { force: true })
  rmSync(resolve(DIR, 'known_hosts'), { force: true })
  console.log('Sandbox removed.')
}

async function demo(): Promise<void> {
  await up()
  const tsx = resolve('node_modules/.bin/tsx')
  const run = (args: string[]) => {
    console.log(`\n$ npx tsx ${args.join(' ')}`)
    return spawnSync(tsx, args, { stdio: 'inherit' }).status
  }
  const first = run(['runbooks/provision.ts', '--env', NAME])
  if (first !== 0) process.exit(first ?? 1)
  console.log('\nRunning it again: every step should now say ok.')
  run(['runbooks/provision.ts', '--env', NAME])

  // The stack: the test suite's demo app, PostgreSQL and nginx images, built here and
  // streamed to the VPS over SSH (no registry), then a backup into ./backups and a drill.
  console.log('\nBuilding the demo stack images (cached after the first run)...')
  const [pg, ngx] = [await postgresImage(), await nginxImage()]
  await appImage('v1')
  appendFileSync(ENV_FILE, ['APP_IMAGE=opsbook/app', `DB_IMAGE=${pg}`, `PROXY_IMAGE=${ngx}`, 'IMAGE_SOURCE=local',
    `DB_PASSWORD=${randomBytes(12).toString('hex')}`, 'BACKUP_DEST=local', 'BACKUP_DIR=./backups', 'APP_ENV_DB_CHECK=1', ''].join('\n'))
  for (const args of [
    ['runbooks/deploy.ts', '--env', NAME, '--version', 'v1'],
    ['runbooks/backup.ts', '--env', NAME, '--yes'],
    ['runbooks/backup.ts', '--env', NAME, '--verify', 'latest'],
    ['runbooks/restore.ts', '--env', NAME, '--drill', '--latest', '--yes'],
    // The app's /health queries PostgreSQL (DB_CHECK=1), so the swap proves the new login works.
    ['runbooks/rotate-secret.ts', '--env', NAME, '--key', 'DB_PASSWORD', '--yes'],
  ]) {
    const code = run(args)
    if (code !== 0) process.exit(code ?? 1)
  }
  console.log([
    '',
    'The sandbox VPS stays up with the stack deployed; backups are in ./backups. Run any',
    'runbook against it with --env sandbox, e.g.',
    '  npx tsx runbooks/status.ts --env sandbox',
    '  npx tsx runbooks/restore.ts --env sandbox      # pick a backup, restore it (undo with --undo)',
    '  npx tsx runbooks/rotate-secret.ts --env sandbox   # pick a key, rotate it with no downtime',
    'Remove it with:',
    '  npm run sandbox:down',
  ].join('\n'))
}

const cmd = process.argv[2] ?? 'demo'
const actions: Record<string, () => Promise<void>> = { up, down, demo, status: async () => {
  await ensureEngine()
  console.log(docker(['ps', '-a', '--filter', `name=opsbook-${NAME}`, '--format', '{{.Names}} {{.Status}} {{.Ports}}']).stdout.trim() || 'no sandbox')
} }
if (!actions[cmd]) {
  console.error(`usage: npx tsx scripts/sandbox.ts ${Object.keys(actions).join('|')}`)
  process.exit(2)
}
mkdirSync(DIR, { recursive: true })
try {
  await actions[cmd]()
} catch (e) {
  console.error(`error: ${(e as Error).message}`)
  process.exit(1)
}
