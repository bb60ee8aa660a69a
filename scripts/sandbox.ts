// The local disposable VPS behind `npm run demo`: a Debian 13 systemd container
// reachable over SSH on 127.0.0.1, with .env.sandbox pointing the runbooks at it.
//   npx tsx scripts/sandbox.ts up | demo | down | status
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { appendFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { backendImage, EXAMPLE_REGISTRY, frontendImage, nginxImage, postgresImage } from '../test/images.ts'
import { docker, ensureEngine, operatorKey, startVps, writeKnownHosts, type Vps } from '../test/testbed.ts'

const DIR = resolve('.sandbox')
const ENV_FILE = resolve('.env.sandbox')
const NAME = 'sandbox'

async function up(): Promise<Vps> {
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
  return vps
}

async function down(): Promise<void> {
  await ensureEngine()
  docker(['rm', '-f', '-v', `opsbook-${NAME}`], { check: false })
  rmSync(ENV_FILE, { force: true })
  rmSync(resolve(DIR, 'known_hosts'), { force: true })
  console.log('Sandbox removed.')
}

async function demo(): Promise<void> {
  const vps = await up()
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
  // streamed to the VPS over SSH (no registry). The stack is the Deita-shaped example: a
  // backend on /v1/ writing PostgreSQL rows and a DuckDB file, a SPA frontend on /, PostgreSQL.
  console.log('\nBuilding the demo stack images (cached after the first run)...')
  const [pg, ngx] = [await postgresImage(), await nginxImage()]
  for (const v of ['v1', 'v2']) { await backendImage('deita', v); await frontendImage('deita', v) }
  appendFileSync(ENV_FILE, ['COMPOSE_FILE=templates/examples/deita/compose.yml', `REGISTRY=${EXAMPLE_REGISTRY}`, `POSTGRES_IMAGE=${pg}`,
    `POSTGRES_PASSWORD=${randomBytes(12).toString('hex')}`, `PROXY_IMAGE=${ngx}`, 'IMAGE_SOURCE=local',
    'DUCKDB_FILE=backend:/app/data/deita.duckdb', 'BACKUP_DEST=local', 'BACKUP_DIR=./backups', ''].join('\n'))
  for (const args of [
    ['runbooks/deploy.ts', '--env', NAME, '--version', 'v1'],
    ['runbooks/update.ts', '--env', NAME, '--version', 'v2'],
    ['runbooks/rollback.ts', '--env', NAME, '--to', 'v1', '--yes'],
    ['runbooks/backup.ts', '--env', NAME, '--yes'],
    ['runbooks/backup.ts', '--env', NAME, '--verify', 'latest'],
    ['runbooks/restore.ts', '--env', NAME, '--drill', '--latest', '--yes'],
    // Only the backend's containers are replaced; the frontend and PostgreSQL keep running.
    ['runbooks/rotate-secret.ts', '--env', NAME, '--service', 'backend', '--key', 'API_TOKEN', '--yes'],
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
    '  npx tsx runbooks/rotate-secret.ts --env sandbox --service backend   # rotate a key with no downtime',
    `  curl -s http://127.0.0.1:${vps.httpPort}/v1/items     # the backend, through the sandbox's nginx`,
    'Remove it with:',
    '  npm run sandbox:down',
  ].join('\n'))
}

const cmd = process.argv[2] ?? 'demo'
const actions: Record<string, () => Promise<unknown>> = { up, down, demo, status: async () => {
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
