// Bench (prints, never asserts): constant GET/POST load through nginx (loopback only,
// bounded) during (a) a naive `docker compose up -d` with a new image, (b) update.ts,
// (c) rollback.ts with the old image still on the host. Same VPS, same run.
//   npm run bench:rollout
import { appendFileSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import { appImage, nginxImage, postgresImage } from '../test/images.ts'
import { startLoad, type LoadResult } from '../test/load.ts'
import { ROOT, freshHost, waitFor } from '../test/integration/helpers.ts'

const MIN_REQUESTS = Number(process.env.MIN_REQUESTS ?? 10_000)

function runbook(name: string, args: string[]): number {
  const t0 = Date.now()
  const r = spawnSync(process.execPath, ['--import', 'tsx', `runbooks/${name}.ts`, ...args], { cwd: ROOT, encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`${name} failed:\n${r.stdout}\n${r.stderr}`)
  return (Date.now() - t0) / 1000
}

const [pg, ngx] = [await postgresImage(), await nginxImage()]
await appImage('v1'); await appImage('v2')
const h = await freshHost('bench-rollout')
appendFileSync(h.envFile, ['APP_IMAGE=opsbook/app', `DB_IMAGE=${pg}`, `PROXY_IMAGE=${ngx}`, 'DB_PASSWORD=bench-db-password', 'IMAGE_SOURCE=local', 'APP_REPLICAS=2', 'DRAIN_SECONDS=1', ''].join('\n'))
const url = `http://127.0.0.1:${h.vps.httpPort}/`
const rows: [string, LoadResult, number, string][] = []

/** Load for at least MIN_REQUESTS, with `action` in the middle of it. */
async function underLoad(name: string, action: () => number | Promise<number>, note = '') {
  const load = startLoad(url)
  await waitFor('half the requests', () => load.result().ok + load.result().failed >= MIN_REQUESTS / 2, 60_000)
  const wall = await action()
  // At least MIN_REQUESTS, or 20 s after the action where requests hang (the naive case).
  const after = Date.now()
  await waitFor('the rest of the requests', () => load.result().ok + load.result().failed >= MIN_REQUESTS || Date.now() - after > 20_000, 120_000)
  rows.push([name, await load.stop(), wall, note])
}

try {
  console.error('provision + deploy v1 (not timed)...')
  runbook('provision', ['--config', h.envFile])
  runbook('deploy', ['--config', h.envFile, '--version', 'v1'])
  // Images of both versions on the host first, so every case below measures only the swap.
  runbook('update', ['--config', h.envFile, '--version', 'v2'])
  runbook('rollback', ['--config', h.envFile, '--to', 'v1', '--yes'])

  await underLoad('(a) naive docker compose up -d', () => {
    const t0 = Date.now()
    h.sh("cd /opt/app && sed -i 's/^APP_VERSION=.*/APP_VERSION=v2/' .env && docker compose -p app up -d --no-deps --scale app=2 app >/dev/null 2>&1")
    return (Date.now() - t0) / 1000
  }, 'recreates the containers in place; nginx keeps their old addresses')
  // Repair with our own runbook: the containers (v2) disagree with the live release (v1).
  runbook('update', ['--config', h.envFile, '--version', 'v1'])
  await underLoad('(b) update.ts v1 -> v2', () => runbook('update', ['--config', h.envFile, '--version', 'v2']))
  await underLoad('(c) rollback.ts v2 -> v1', () => runbook('rollback', ['--config', h.envFile, '--to', 'v1', '--yes']), 'image on the host')

  console.log(`Constant load through nginx (4 keep-alive workers, GET and POST alternating, >= ${MIN_REQUESTS} requests per case):`)
  console.log('case'.padEnd(34), 'requests  failed  resent*   p50 ms   p99 ms   wall s')
  for (const [name, l, wall] of rows) {
    console.log(name.padEnd(34), String(l.ok + l.failed).padStart(8), String(l.failed).padStart(7), String(l.resent).padStart(8),
      l.p50ms.toFixed(1).padStart(8), l.p99ms.toFixed(1).padStart(8), wall.toFixed(1).padStart(8))
  }
  console.log('* resent: requests a browser would resend too (idle keep-alive connection closed by nginx as the request went out); not failures.')
  for (const [name, l, , note] of rows) if (l.failed) console.log(`${name}: ${note}; first errors: ${l.errors.slice(0, 3).join(', ')}`)
} finally {
  h.vps.destroy()
}
