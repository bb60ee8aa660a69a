// Bench (prints, never asserts): 10 consecutive swaps on one VPS, update.ts and
// rollback.ts alternating, each under constant strict load through nginx (GET and POST;
// 4 keep-alive workers and 2 opening a new connection per request; nothing resent), next
// to the same load at rest and to the naive `docker compose up -d` with a new image.
//   npm run bench:swaps
import { spawn } from 'node:child_process'
import { appImage, nginxImage, postgresImage } from '../test/images.ts'
import { startLoad, type LoadResult } from '../test/load.ts'
import { freshHost, runbook } from '../test/integration/helpers.ts'

const SWAPS = Number(process.env.SWAPS ?? 10)
const DRAIN = 1
const [pg, ngx, v1, v2] = [await postgresImage(), await nginxImage(), await appImage('v1'), await appImage('v2')]
const h = await freshHost('bench-swaps', { APP_IMAGE: 'opsbook/app', DB_IMAGE: pg, PROXY_IMAGE: ngx, DB_PASSWORD: 'bench-db-password', IMAGE_SOURCE: 'local', APP_REPLICAS: '2', DRAIN_SECONDS: String(DRAIN) },
  { provisioned: true, images: [pg, ngx, v1, v2] })
const url = `http://127.0.0.1:${h.vps.httpPort}/`

interface Row { name: string; keep: LoadResult; fresh: LoadResult; wall: number; healthy?: number; step?: number }
const rows: Row[] = []

/** Strict load from just before `action` until half a second after it. */
async function measure(name: string, action: () => Promise<{ wall: number; healthy?: number; step?: number }>): Promise<void> {
  const keep = startLoad(url, { workers: 4 }), fresh = startLoad(url, { workers: 2, fresh: true })
  await new Promise(r => setTimeout(r, 300))
  const { wall, healthy, step } = await action()
  await new Promise(r => setTimeout(r, 500))
  rows.push({ name, keep: await keep.stop(), fresh: await fresh.stop(), wall, healthy, step })
}

async function swap(name: string, args: string[]): Promise<{ wall: number; healthy?: number; step?: number }> {
  const t0 = Date.now()
  const r = await runbook(name, ['--config', h.envFile, ...args, '--json'])
  if (r.code !== 0) throw new Error(`${name} failed:\n${r.out}`)
  const rollout = r.json?.steps?.find((s: { title: string }) => /^Roll (out|back)/.test(s.title))
  const healthy = /healthy in ([\d.]+) s/.exec(rollout?.detail ?? '')?.[1]
  return { wall: (Date.now() - t0) / 1000, healthy: healthy ? Number(healthy) : undefined, step: rollout ? rollout.ms / 1000 : undefined }
}

const onHost = (script: string) => new Promise<void>((resolve, reject) => spawn('docker', ['exec', h.vps.container, 'sh', '-c', script], { stdio: 'ignore' })
  .on('close', code => (code === 0 ? resolve() : reject(new Error(`${script}: exit ${code}`)))))

try {
  console.error('deploy v1, update to v2 and back (not timed)...')
  for (const [rb, args] of [['deploy', ['--version', 'v1']], ['update', ['--version', 'v2']], ['rollback', ['--to', 'v1', '--yes']]] as const) await swap(rb, [...args])
  await measure('at rest (no swap)', async () => { await new Promise(r => setTimeout(r, 6000)); return { wall: 6 } })
  for (let i = 1; i <= SWAPS; i++) {
    await measure(i % 2 ? `${i}. update.ts v1 -> v2` : `${i}. rollback.ts v2 -> v1`, () => i % 2 ? swap('update', ['--version', 'v2']) : swap('rollback', ['--to', 'v1', '--yes']))
  }
  await measure('naive docker compose up -d', async () => {
    const t0 = Date.now()
    const v = SWAPS % 2 ? 'v1' : 'v2'
    await onHost(`cd /opt/app && sed -i 's/^APP_VERSION=.*/APP_VERSION=${v}/' .env && docker compose -p app up -d --no-deps --scale app=2 app >/dev/null 2>&1`)
    return { wall: (Date.now() - t0) / 1000 }
  })

  const rest = rows[0]
  const p99 = (r: Row) => Math.max(r.keep.p99ms, r.fresh.p99ms)
  console.log(`${SWAPS} swaps under strict load through nginx (4 keep-alive + 2 new-connection workers, GET and POST alternating, nothing resent), DRAIN_SECONDS=${DRAIN}, one VPS:`)
  console.log('case'.padEnd(30), 'requests  failed   p50 ms   p99 ms  p99/rest   wall s   swap s  healthy s  budget s')
  for (const r of rows) {
    const n = r.keep.ok + r.keep.failed + r.fresh.ok + r.fresh.failed
    const budget = r.healthy === undefined ? '' : (r.healthy + DRAIN + 3).toFixed(1)
    console.log(r.name.padEnd(30), String(n).padStart(8), String(r.keep.failed + r.fresh.failed).padStart(7), r.keep.p50ms.toFixed(1).padStart(8), p99(r).toFixed(1).padStart(8),
      (p99(r) / p99(rest)).toFixed(2).padStart(9), r.wall.toFixed(1).padStart(8), (r.step?.toFixed(1) ?? '').padStart(8), (r.healthy?.toFixed(1) ?? '').padStart(10), budget.padStart(9))
  }
  const swaps = rows.slice(1, 1 + SWAPS)
  const failed = swaps.reduce((n, r) => n + r.keep.failed + r.fresh.failed, 0)
  console.log(`swaps: ${failed} failed of ${swaps.reduce((n, r) => n + r.keep.ok + r.keep.failed + r.fresh.ok + r.fresh.failed, 0)} requests; worst p99 ${Math.max(...swaps.map(p99)).toFixed(1)} ms (${(Math.max(...swaps.map(p99)) / p99(rest)).toFixed(2)}x rest)`)
  console.log('swap: the rollout step (start, health, switch, drain, stop the old); budget: healthy + DRAIN_SECONDS + 3 s; wall: the whole runbook (Node, SSH, lock, checks, release record).')
  const naive = rows.at(-1)!
  console.log(`naive: ${naive.keep.failed + naive.fresh.failed} failed; first errors: ${[...naive.keep.errors, ...naive.fresh.errors].slice(0, 2).join(', ')}`)
} finally {
  h.vps.destroy()
}
