// Bench (prints, never asserts): constant GET/POST load through nginx (loopback only,
// bounded) during (a) a naive `docker compose up -d` with a new image, (b) update.ts,
// (c) rollback.ts with the old image still on the host; then, with every request
// querying PostgreSQL, (d) a database password changed by hand the usual way (ALTER ROLE,
// edit the env file, then update.ts's zero-downtime swap), (e) rotate-secret.ts --key DB_PASSWORD, and
// (f) rotate-secret.ts --key SECRET_KEY. Same VPS, same run.
//   npm run bench:rollout
import { spawn } from 'node:child_process'
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs'
import { appImage, nginxImage, postgresImage } from '../test/images.ts'
import { startLoad, type LoadResult } from '../test/load.ts'
import { freshHost, runbook as run, waitFor } from '../test/integration/helpers.ts'

const MIN_REQUESTS = Number(process.env.MIN_REQUESTS ?? 10_000)

/** A shell script on the VPS, without blocking the event loop (the load must keep going). */
function onHost(script: string): Promise<void> {
  return new Promise((resolve, reject) => spawn('docker', ['exec', h.vps.container, 'sh', '-c', script], { stdio: 'ignore' })
    .on('close', code => (code === 0 ? resolve() : reject(new Error(`${script}: exit ${code}`)))))
}

/** Runs a runbook as its own process; async, so the load generator keeps sending meanwhile. */
async function runbook(name: string, args: string[]): Promise<number> {
  const t0 = Date.now()
  const r = await run(name, args)
  if (r.code !== 0) throw new Error(`${name} failed:\n${r.out}`)
  return (Date.now() - t0) / 1000
}

const [pg, ngx] = [await postgresImage(), await nginxImage()]
await appImage('v1'); await appImage('v2')
const h = await freshHost('bench-rollout')
appendFileSync(h.envFile, ['APP_IMAGE=opsbook/app', `DB_IMAGE=${pg}`, `PROXY_IMAGE=${ngx}`, 'DB_PASSWORD=bench-db-password', 'IMAGE_SOURCE=local', 'APP_REPLICAS=2', 'DRAIN_SECONDS=1',
  'APP_ENV_DB_CHECK=1', 'APP_ENV_SECRET_KEY=bench-signing-key-0123456789abcdef', ''].join('\n'))
const url = `http://127.0.0.1:${h.vps.httpPort}/`
const rows: [string, LoadResult, number, string][] = []

/** Load for at least MIN_REQUESTS, with `action` in the middle of it. */
async function underLoad(name: string, action: () => number | Promise<number>, note = '', path = '/') {
  const load = startLoad(new URL(path, url).href)
  await waitFor('half the requests', () => load.result().ok + load.result().failed >= MIN_REQUESTS / 2, 60_000)
  const wall = await action()
  // At least MIN_REQUESTS, or 20 s after the action where requests hang (the naive case).
  const after = Date.now()
  await waitFor('the rest of the requests', () => load.result().ok + load.result().failed >= MIN_REQUESTS || Date.now() - after > 20_000, 120_000)
  rows.push([name, await load.stop(), wall, note])
}

try {
  console.error('provision + deploy v1 (not timed)...')
  await runbook('provision', ['--config', h.envFile])
  await runbook('deploy', ['--config', h.envFile, '--version', 'v1'])
  // Images of both versions on the host first, so every case below measures only the swap.
  await runbook('update', ['--config', h.envFile, '--version', 'v2'])
  await runbook('rollback', ['--config', h.envFile, '--to', 'v1', '--yes'])

  await underLoad('(a) naive docker compose up -d', async () => {
    const t0 = Date.now()
    await onHost("cd /opt/app && sed -i 's/^APP_VERSION=.*/APP_VERSION=v2/' .env && docker compose -p app up -d --no-deps --scale app=2 app >/dev/null 2>&1")
    return (Date.now() - t0) / 1000
  }, 'recreates the containers in place; nginx keeps their old addresses')
  // Repair with our own runbook: the containers (v2) disagree with the live release (v1).
  await runbook('update', ['--config', h.envFile, '--version', 'v1'])
  await underLoad('(b) update.ts v1 -> v2', () => runbook('update', ['--config', h.envFile, '--version', 'v2']))
  await underLoad('(c) rollback.ts v2 -> v1', () => runbook('rollback', ['--config', h.envFile, '--to', 'v1', '--yes']), 'image on the host')
  await underLoad('(d) DB password by hand, /db', async () => {
    const t0 = Date.now()
    // The usual manual way, even with a zero-downtime restart: change it, edit the settings, swap the containers.
    await onHost(`cd /opt/app && docker compose -p app exec -T db psql -q -U app -d app -c "ALTER ROLE app PASSWORD 'by-hand-password-1'"`)
    writeFileSync(h.envFile, readFileSync(h.envFile, 'utf8').replace(/^DB_PASSWORD=.*$/m, 'DB_PASSWORD=by-hand-password-1'))
    await runbook('update', ['--config', h.envFile, '--version', 'v2'])
    return (Date.now() - t0) / 1000
  }, 'until the swap, the old containers open new connections with a password that no longer exists', '/db')
  await underLoad('(e) rotate-secret DB_PASSWORD, /db', () => runbook('rotate-secret', ['--config', h.envFile, '--key', 'DB_PASSWORD', '--yes']), '', '/db')
  await underLoad('(f) rotate-secret SECRET_KEY', () => runbook('rotate-secret', ['--config', h.envFile, '--key', 'SECRET_KEY', '--keep-previous', '--yes']))

  console.log(`Constant load through nginx (4 keep-alive workers, GET and POST alternating, >= ${MIN_REQUESTS} requests per case; /db: each request queries PostgreSQL):`)
  console.log('case'.padEnd(34), 'requests  failed  on new conn   p50 ms   p99 ms   wall s')
  for (const [name, l, wall] of rows) {
    console.log(name.padEnd(34), String(l.ok + l.failed).padStart(8), String(l.failed).padStart(7), String(l.failedFresh).padStart(12),
      l.p50ms.toFixed(1).padStart(8), l.p99ms.toFixed(1).padStart(8), wall.toFixed(1).padStart(8))
  }
  console.log('Strict: no request is resent; a request on a keep-alive connection the proxy closed counts as failed.')
  for (const [name, l, , note] of rows) if (l.failed) console.log(`${name}: ${note}; first errors: ${l.errors.slice(0, 3).join(', ')}`)
} finally {
  h.vps.destroy()
}
