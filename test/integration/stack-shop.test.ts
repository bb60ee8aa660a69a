// The operator's own compose file: the e-commerce-shaped example (templates/examples/shop),
// an API on /api/, a storefront on /, a worker draining a Redis job queue, PostgreSQL and
// Redis as accessories. Update (as a canary, then promoted) and rollback under GET+POST
// load on both routes while jobs keep arriving: 0 failed requests, every job done exactly once, and the accessories'
// containers the same ones before and after. Then a backup (PostgreSQL, the uploads and
// Redis volumes, the stack's files), the local compose file changed, and the whole stack
// rebuilt on a fresh host from the backup: the data and the stack as they were.
import { appendFileSync, copyFileSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { backendImage, EXAMPLE_REGISTRY, frontendImage, nginxImage, postgresImage, redisImage, workerImage } from '../images.ts'
import { underLoad, type LoadResult } from '../load.ts'
import type { Vps } from '../testbed.ts'
import { ROOT, freshHost, restoreOnFreshHost, runbook, waitFor, type Host } from './helpers.ts'

let h: Host
let base: string
let b: Vps | undefined
let images: string[]
let compose: string
let atBackup: ReturnType<typeof state>
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

async function withLoad<T>(during: () => Promise<T>): Promise<{ result: T; api: LoadResult; shop: LoadResult }> {
  const { result, loads: [api, shop] } = await underLoad(`${base}/api/orders`, `${base}/`, during)
  return { result, api, shop }
}

test('setup: images of v1 and v2, a provisioned VPS, settings naming the compose file', async () => {
  const [pg, ngx, rd] = [await postgresImage(), await nginxImage(), await redisImage()]
  images = [pg, ngx, rd]
  for (const v of ['v1', 'v2']) images.push(await backendImage('shop', v), await frontendImage('shop', v), await workerImage(v))
  h = await freshHost('stack-shop', {}, { provisioned: true, images })
  // The operator's checkout: a copy of the example, changed later to prove a restore uses the backed-up one.
  compose = join(h.dir, 'compose.yml')
  copyFileSync(join(ROOT, 'templates', 'examples', 'shop', 'compose.yml'), compose)
  appendFileSync(h.envFile, [
    'COMPOSE_FILE=compose.yml', `REGISTRY=${EXAMPLE_REGISTRY}`,
    `POSTGRES_IMAGE=${pg}`, `REDIS_IMAGE=${rd}`, 'POSTGRES_PASSWORD=shop-Postgres-pw-9187',
    `PROXY_IMAGE=${ngx}`, 'IMAGE_SOURCE=local', 'HEALTH_TIMEOUT=30', 'DRAIN_SECONDS=1',
    'BACKUP_VOLUMES=uploads:freeze,redis_data', `BACKUP_DIR=${join(h.dir, 'backups')}`, '',
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

test('update to v2 as a canary (30%), then promoted, under load with jobs arriving: 0 failed requests, the worker replaced only at the promotion, each job done once, accessories untouched', async () => {
  const ids = accessoryIds()
  const canary = await withLoad(() => runbook('update', ['--config', h.envFile, '--version', 'v2', '--canary', '30%', '--json']))
  assert.is(canary.result.code, 0, canary.result.out)
  assert.is(canary.api.failed + canary.shop.failed, 0, [...canary.api.errors, ...canary.shop.errors].join(', '))
  assert.is(workerImages(), `${EXAMPLE_REGISTRY}/shop-worker:v1`, 'the worker stays on the live release during a canary')
  // No cookie: each request draws a bucket; 30% of them go to v2's three API containers.
  const seen = await Promise.all(Array.from({ length: 60 }, () => versionOf('/api/orders')))
  assert.ok(seen.includes('v1') && seen.includes('v2'), seen.join(' '))
  // Promoted: the v2 worker starts health-gated beside the v1 one, then every request goes to v2.
  const { result: { result: r, api, shop }, jobs } = await withJobs('update', () => withLoad(() => runbook('update', ['--config', h.envFile, '--promote', '--json'])))
  assert.is(r.code, 0, r.out)
  for (const [name, l] of [['/api/', api], ['/', shop]] as const) {
    assert.is(l.failed, 0, `${name}: ${l.failed} failed of ${l.ok + l.failed}: ${l.errors.join(', ')}`)
    assert.ok(l.ok > 100, `${name}: only ${l.ok} requests`)
  }
  assertExactlyOnce('update', jobs)
  console.log(`      canary 30%: ${seen.filter(v => v === 'v2').length} of 60 API requests on v2; promote: /api/ ${api.ok} requests, / ${shop.ok} requests, 0 failed; ${jobs} jobs, each done once`)
  assert.is(accessoryIds(), ids, 'PostgreSQL and Redis are the same containers')
  assert.is(workerImages(), `${EXAMPLE_REGISTRY}/shop-worker:v2`)
  assert.is(await versionOf('/api/orders'), 'v2')
  const again = await runbook('update', ['--config', h.envFile, '--version', 'v2', '--json'])
  assert.is(again.json.counts.changed, 0, again.out)
})

test('rollback to v1 under load with jobs arriving: the same guarantees', async () => {
  const ids = accessoryIds()
  const { result: { result: r, api, shop }, jobs } = await withJobs('rollback', () => withLoad(() => runbook('rollback', ['--config', h.envFile, '--to', 'v1', '--yes', '--json'])))
  assert.is(r.code, 0, r.out)
  assert.is(api.failed + shop.failed, 0, [...api.errors, ...shop.errors].join(', '))
  assertExactlyOnce('rollback', jobs)
  assert.is(accessoryIds(), ids)
  assert.is(workerImages(), `${EXAMPLE_REGISTRY}/shop-worker:v1`)
  assert.is(await versionOf('/api/orders'), 'v1')
})

/** What a restore must bring back: PostgreSQL rows, the uploads volume's files, Redis's keys. */
function state(on: (script: string) => string) {
  const q = (sql: string) => on(`cd /opt/app && docker compose exec -T postgres psql -X -At -U shop -d shop -c "${sql}"`).trim()
  return {
    pg: q("select count(*), md5(string_agg(md5(o::text), '' order by o.id)) from orders o"),
    uploads: on('cd /var/lib/docker/volumes/app_uploads/_data && find . -type f | sort | xargs sha256sum').trim(),
    redis: on("cd /opt/app && docker compose exec -T redis sh -c 'redis-cli --raw KEYS \"*\" | sort; redis-cli HLEN done; redis-cli GET greeting'").trim(),
  }
}

test('backup: PostgreSQL, the uploads volume (frozen), Redis after a BGSAVE, the stack files', async () => {
  h.sh(`cd /opt/app && docker compose exec -T postgres psql -X -q -U shop -d shop -c "create table orders (id int primary key, total numeric); insert into orders select g, g * 1.5 from generate_series(1, 50000) g"`)
  h.sh("cd /opt/app && docker compose exec -T backend sh -c 'mkdir -p /app/uploads/2026/11 && echo invoice > /app/uploads/2026/11/a.pdf && head -c 300000 /dev/urandom > /app/uploads/photo.jpg'")
  redis('SET greeting hello')
  const before = state(h.sh)
  const r = await runbook('backup', ['--config', h.envFile, '--yes', '--json'])
  assert.is(r.code, 0, r.out)
  assert.match(r.out, /Volumes stored as tar files \(uploads, frozen; redis_data, Redis BGSAVE first\) .*changed/)
  assert.match(r.out, /Stack files stored .*changed/)
  assert.not.ok(r.out.includes('shop-Postgres-pw-9187'), 'the password was printed')
  assert.equal(state(h.sh), before, 'the backup changed nothing')
  // The local compose file changes after the backup (the worker is gone): the restore must not use it.
  writeFileSync(compose, readFileSync(compose, 'utf8').replace(/\n {2}worker:\n[\s\S]*?\n\n/, '\n\n'))
  assert.not.match(readFileSync(compose, 'utf8'), /shop-worker/)
  atBackup = before
})

test('disaster: a fresh host rebuilt from the backup: the stack that was backed up, the same data', async () => {
  const { vps, r, sh: onB } = await restoreOnFreshHost(h, 'stack-shop-b', images)
  b = vps
  assert.is(r.code, 0, r.out)
  console.log(`      ${r.json.steps.at(-1).detail}`)
  assert.equal(state(onB), atBackup)
  assert.match(onB("docker ps --format '{{.Image}}'"), /shop-worker:v1/, 'the worker of the backed-up compose file runs')
  assert.is(onB('curl -fsS http://127.0.0.1/api/health').trim(), 'ok')
})

test('teardown', () => { h.vps.destroy(); b?.destroy() })

test.run()
