// The operator's own compose file: the e-commerce-shaped example (templates/examples/shop),
// an API on /api/, a storefront on /, a worker draining a Redis job queue, PostgreSQL and
// Redis as accessories. Update and rollback under GET+POST load on both routes while jobs
// keep arriving: 0 failed requests, every job done exactly once, and the accessories'
// containers the same ones before and after.
import { appendFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { backendImage, EXAMPLE_REGISTRY, frontendImage, nginxImage, postgresImage, redisImage, workerImage } from '../images.ts'
import { startLoad, type LoadResult } from '../load.ts'
import { ROOT, freshHost, runbook, waitFor, type Host } from './helpers.ts'

let h: Host
let base: string
const accessoryIds = () => h.sh("docker ps -q --no-trunc --filter label=com.docker.compose.service=postgres; docker ps -q --no-trunc --filter label=com.docker.compose.service=redis").trim()
const redis = (cmd: string) => h.sh(`cd /opt/app && docker compose exec -T redis redis-cli --raw ${cmd}`).trim()
const versionOf = async (path: string) => (await (await fetch(base + path)).json()).version
const workerImages = () => h.sh("docker ps --filter label=com.docker.compose.service=worker --format '{{.Image}}'").trim()

/**
 * Jobs pushed onto the queue, five every ~50 ms, by a loop on the host (a loop here would stall
 * the load generator) while `during` runs; then the queue must drain with every job
 * counted once in the hash "done".
 */
async function withJobs<T>(tag: string, during: () => Promise<T>): Promise<{ result: T; jobs: number }> {
  // Five jobs per push, straight to the container: `docker compose exec` alone takes ~0.3 s.
  h.sh(`rm -f /tmp/jobs.stop; (c=$(docker ps -q --filter label=com.docker.compose.service=redis); n=0; while [ ! -e /tmp/jobs.stop ]; do a=''; for k in 1 2 3 4 5; do n=$((n+1)); a="$a ${tag}-$n"; done; docker exec "$c" redis-cli LPUSH jobs $a >/dev/null && echo $n > /tmp/jobs.count; sleep 0.05; done; rm -f /tmp/jobs.stop) >/dev/null 2>&1 &`)
  await waitFor('jobs to flow', () => Number(h.sh('cat /tmp/jobs.count 2>/dev/null || echo 0')) > 5)
  const result = await during()
  h.sh('touch /tmp/jobs.stop; while [ -e /tmp/jobs.stop ]; do sleep 0.1; done')
  const jobs = Number(h.sh('cat /tmp/jobs.count'))
  await waitFor('the queue to drain', () => redis('LLEN jobs') === '0' && redis('EVAL "local n = 0 for _, k in ipairs(redis.call(\'KEYS\', \'processing:*\')) do n = n + redis.call(\'LLEN\', k) end return n" 0') === '0', 180_000)
  return { result, jobs }
}

function assertExactlyOnce(tag: string, jobs: number) {
  const done = redis('HGETALL done').split('\n')
  const counts = new Map<string, number>()
  for (let i = 0; i + 1 < done.length; i += 2) if (done[i].startsWith(`${tag}-`)) counts.set(done[i], Number(done[i + 1]))
  const twice = [...counts].filter(([, n]) => n !== 1)
  assert.equal(twice, [], 'jobs done more than once')
  const missing = Array.from({ length: jobs }, (_, i) => `${tag}-${i + 1}`).filter(j => !counts.has(j))
  assert.equal(missing, [], 'jobs never done')
}

async function underLoad<T>(during: () => Promise<T>): Promise<{ result: T; api: LoadResult; shop: LoadResult }> {
  const api = startLoad(`${base}/api/orders`, { workers: 3 })
  const shop = startLoad(`${base}/`, { workers: 3 })
  await waitFor('load to start', () => api.result().ok > 20 && shop.result().ok > 20)
  const result = await during()
  await new Promise(r => setTimeout(r, 500))
  return { result, api: await api.stop(), shop: await shop.stop() }
}

test('setup: images of v1 and v2, a provisioned VPS, settings naming the compose file', async () => {
  const [pg, ngx, rd] = [await postgresImage(), await nginxImage(), await redisImage()]
  const images = [pg, ngx, rd]
  for (const v of ['v1', 'v2']) images.push(await backendImage('shop', v), await frontendImage('shop', v), await workerImage(v))
  h = await freshHost('stack-shop', {}, { provisioned: true, images })
  appendFileSync(h.envFile, [
    `COMPOSE_FILE=${join(ROOT, 'templates', 'examples', 'shop', 'compose.yml')}`, `REGISTRY=${EXAMPLE_REGISTRY}`,
    `POSTGRES_IMAGE=${pg}`, `REDIS_IMAGE=${rd}`, 'POSTGRES_PASSWORD=shop-Postgres-pw-9187',
    `PROXY_IMAGE=${ngx}`, 'IMAGE_SOURCE=local', 'HEALTH_TIMEOUT=30', 'DRAIN_SECONDS=1', '',
  ].join('\n'))
  base = `http://127.0.0.1:${h.vps.httpPort}`
})

test('deploy v1: accessories, API, storefront and worker; a second run changes nothing; the worker drains the queue', async () => {
  const r = await runbook('deploy', ['--config', h.envFile, '--version', 'v1', '--json'])
  assert.is(r.code, 0, r.out)
  assert.match(r.out, /Accessories running \(postgres, redis\) .* changed/)
  assert.is(await versionOf('/api/orders'), 'v1')
  assert.is(await versionOf('/version.json'), 'v1')
  assert.is(workerImages(), `${EXAMPLE_REGISTRY}/shop-worker:v1`)
  const again = await runbook('deploy', ['--config', h.envFile, '--version', 'v1', '--json'])
  assert.is(again.json.counts.changed, 0, again.out)
  const { jobs } = await withJobs('deploy', () => new Promise(r => setTimeout(r, 1000)))
  assertExactlyOnce('deploy', jobs)
})

test('update to v2 under load with jobs arriving: 0 failed requests, each job done once, accessories untouched', async () => {
  const ids = accessoryIds()
  const { result: { result: r, api, shop }, jobs } = await withJobs('update', () => underLoad(() => runbook('update', ['--config', h.envFile, '--version', 'v2', '--json'])))
  assert.is(r.code, 0, r.out)
  for (const [name, l] of [['/api/', api], ['/', shop]] as const) {
    assert.is(l.failed, 0, `${name}: ${l.failed} failed of ${l.ok + l.failed}: ${l.errors.join(', ')}`)
    assert.ok(l.ok > 100, `${name}: only ${l.ok} requests`)
  }
  assertExactlyOnce('update', jobs)
  console.log(`      update: /api/ ${api.ok} requests, / ${shop.ok} requests, 0 failed; ${jobs} jobs, each done once`)
  assert.is(accessoryIds(), ids, 'PostgreSQL and Redis are the same containers')
  assert.is(workerImages(), `${EXAMPLE_REGISTRY}/shop-worker:v2`)
  assert.is(await versionOf('/api/orders'), 'v2')
  const again = await runbook('update', ['--config', h.envFile, '--version', 'v2', '--json'])
  assert.is(again.json.counts.changed, 0, again.out)
})

test('rollback to v1 under load with jobs arriving: the same guarantees', async () => {
  const ids = accessoryIds()
  const { result: { result: r, api, shop }, jobs } = await withJobs('rollback', () => underLoad(() => runbook('rollback', ['--config', h.envFile, '--to', 'v1', '--yes', '--json'])))
  assert.is(r.code, 0, r.out)
  assert.is(api.failed + shop.failed, 0, [...api.errors, ...shop.errors].join(', '))
  assertExactlyOnce('rollback', jobs)
  assert.is(accessoryIds(), ids)
  assert.is(workerImages(), `${EXAMPLE_REGISTRY}/shop-worker:v1`)
  assert.is(await versionOf('/api/orders'), 'v1')
})

test('teardown', () => { h.vps.destroy() })

test.run()
