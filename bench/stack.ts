// Bench (prints, never asserts) for stacks from your own compose file:
//   1. update and rollback of the Deita-shaped example under GET+POST load on both routes
//      (/v1/ -> backend, / -> frontend): requests, failed (strict: nothing resent), p99 and wall per route;
//   2. a no-op re-run of deploy (whole process, node --import tsx) on the shop example
//      (5 services) next to the Deita example (3 services), interleaved, RUNS each.
//   npm run bench:stack            (RUNS=7 by default)
import { spawn, spawnSync } from 'node:child_process'
import { appendFileSync } from 'node:fs'
import { join } from 'node:path'
import { backendImage, EXAMPLE_REGISTRY, frontendImage, nginxImage, postgresImage, redisImage, workerImage } from '../test/images.ts'
import { freshHost, ROOT, type Host } from '../test/integration/helpers.ts'
import { startLoad } from '../test/load.ts'

const RUNS = Number(process.env.RUNS ?? 7)
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

function run(env: string, runbook: string, args: string[]): number {
  const t0 = process.hrtime.bigint()
  const r = spawnSync(process.execPath, ['--import', 'tsx', `runbooks/${runbook}.ts`, '--config', env, ...args], { cwd: ROOT, encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`${runbook} ${args.join(' ')} failed:\n${r.stdout}\n${r.stderr}`)
  return Number(process.hrtime.bigint() - t0) / 1e9
}

/** Like run(), but asynchronous: a blocking spawnSync would stall the load it measures. */
function runAsync(env: string, runbook: string, args: string[]): Promise<number> {
  const t0 = Date.now()
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, ['--import', 'tsx', `runbooks/${runbook}.ts`, '--config', env, ...args], { cwd: ROOT, stdio: 'ignore' })
    c.on('close', code => (code === 0 ? resolve((Date.now() - t0) / 1000) : reject(new Error(`${runbook} exited ${code}`))))
  })
}

const [pg, ngx, rd] = [await postgresImage(), await nginxImage(), await redisImage()]
const deitaImages = [pg, ngx], shopImages = [pg, ngx, rd]
for (const v of ['v1', 'v2']) {
  deitaImages.push(await backendImage('deita', v), await frontendImage('deita', v))
  shopImages.push(await backendImage('shop', v), await frontendImage('shop', v), await workerImage(v))
}
const settings = (h: Host, example: string, extra: string[]) => appendFileSync(h.envFile, [
  `COMPOSE_FILE=${join(ROOT, 'templates', 'examples', example, 'compose.yml')}`, `REGISTRY=${EXAMPLE_REGISTRY}`, `POSTGRES_IMAGE=${pg}`,
  'POSTGRES_PASSWORD=bench-pw-123456', `PROXY_IMAGE=${ngx}`, 'IMAGE_SOURCE=local', 'HEALTH_TIMEOUT=30', 'DRAIN_SECONDS=1', ...extra, '',
].join('\n'))

const [deita, shop] = await Promise.all([
  freshHost('bench-deita', {}, { provisioned: true, images: deitaImages }),
  freshHost('bench-shop', {}, { provisioned: true, images: shopImages }),
])
try {
  settings(deita, 'deita', [])
  settings(shop, 'shop', [`REDIS_IMAGE=${rd}`])
  console.error('deploying both stacks once (not timed)...')
  run(deita.envFile, 'deploy', ['--version', 'v1'])
  run(shop.envFile, 'deploy', ['--version', 'v1'])

  const base = `http://127.0.0.1:${deita.vps.httpPort}`
  console.log('Deita-shaped stack under load (3 GET+POST workers per route), one run each:')
  console.log('case                      route  requests  failed  p99 ms   wall s')
  for (const [name, args] of [['update.ts v1 -> v2', ['update', '--version', 'v2']], ['rollback.ts v2 -> v1', ['rollback', '--to', 'v1', '--yes']]] as const) {
    const api = startLoad(`${base}/v1/items`, { workers: 3 })
    const spa = startLoad(`${base}/`, { workers: 3 })
    await new Promise(r => setTimeout(r, 1000))
    const wall = await runAsync(deita.envFile, args[0], args.slice(1))
    await new Promise(r => setTimeout(r, 500))
    for (const [route, l] of [['/v1/', await api.stop()], ['/', await spa.stop()]] as const) {
      console.log(`${name.padEnd(26)}${route.padEnd(7)}${String(l.ok + l.failed).padStart(8)}${String(l.failed).padStart(8)}${l.p99ms.toFixed(1).padStart(8)}${wall.toFixed(1).padStart(9)}`)
    }
  }

  run(deita.envFile, 'deploy', ['--version', 'v1']); run(shop.envFile, 'deploy', ['--version', 'v1']) // warm-up
  const three: number[] = [], five: number[] = []
  for (let i = 0; i < RUNS; i++) {
    three.push(run(deita.envFile, 'deploy', ['--version', 'v1']))
    five.push(run(shop.envFile, 'deploy', ['--version', 'v1']))
  }
  const row = (n: string, xs: number[]) => `${n.padEnd(40)} median ${median(xs).toFixed(2)} s   min ${Math.min(...xs).toFixed(2)} s   max ${Math.max(...xs).toFixed(2)} s`
  console.log(`\nNo-op deploy re-run (node --import tsx, whole process), ${RUNS} runs each, interleaved:`)
  console.log(row('Deita-shaped, 3 services', three))
  console.log(row('shop-shaped, 5 services', five))
  console.log(`ratio 5/3 services: ${(median(five) / median(three)).toFixed(3)} (goal <= 1.20)`)
} finally {
  deita.vps.destroy()
  shop.vps.destroy()
}
