// A base + override pair as its owners publish it (test/fixtures/stacks/shop-upstream):
// images on ${TAG:-latest}, list-form environments, a worker without a healthcheck, and an
// override publishing every port (80, 8080, Redis, PostgreSQL) for `docker compose up`.
// init.ts's override goes third; deploy, an update under strict load on both routes
// (0 failed, the worker replaced), a backup with the Redis volume, and a fresh host rebuilt
// from it, with the upstream files never edited.
import { createHash } from 'node:crypto'
import { appendFileSync, cpSync, readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { backendImage, EXAMPLE_REGISTRY, frontendImage, nginxImage, postgresImage, redisImage, workerImage } from '../images.ts'
import { underLoad } from '../load.ts'
import type { Vps } from '../testbed.ts'
import { ROOT, freshHost, restoreOnFreshHost, runbook, type Host } from './helpers.ts'

let h: Host
let base: string
let b: Vps | undefined
let images: string[]
let up: string
let upstream: Record<string, string>
const hashes = () => Object.fromEntries(readdirSync(up).filter(f => f.startsWith('compose')).map(f => [f, createHash('sha256').update(readFileSync(join(up, f))).digest('hex')]))
const versionOf = async (path: string, at = base) => (await (await fetch(at + path)).json()).version
const workerImage_ = (on: (s: string) => string) => on("docker ps --filter label=com.docker.compose.service=worker --format '{{.Image}}'").trim()

test('setup: images of v1 and v2, a provisioned VPS, the pair copied as it is, init.ts\'s override beside it', async () => {
  const [pg, ngx, rd] = [await postgresImage(), await nginxImage(), await redisImage()]
  images = [pg, ngx, rd]
  for (const v of ['v1', 'v2']) images.push(await backendImage('shop', v), await frontendImage('shop', v), await workerImage(v))
  h = await freshHost('stack-pair', {}, { provisioned: true, images })
  up = join(h.dir, 'shop')
  cpSync(join(ROOT, 'test', 'fixtures', 'stacks', 'shop-upstream'), up, { recursive: true })
  upstream = hashes()
  const r = await runbook('init', ['--compose', `${up}/compose.yml:${up}/compose.override.yml`, '--route', 'api=/api/', '--route', 'storefront=/'])
  assert.is(r.code, 0, r.out)
  assert.match(readFileSync(join(up, 'opsbook.override.yml'), 'utf8'), /worker:\n.*\n {4}image: "\$\{REGISTRY:-ghcr\.io\/acme\}\/shop-worker:\$\{APP_VERSION\}"\n {4}labels:\n.*\n {6}opsbook\.role: "worker"\n.*\n {6}opsbook\.settle: "10"/)
  appendFileSync(h.envFile, [
    `COMPOSE_FILE=${up}/compose.yml:${up}/compose.override.yml:${up}/opsbook.override.yml`, `REGISTRY=${EXAMPLE_REGISTRY}`, `POSTGRES_IMAGE=${pg}`, `REDIS_IMAGE=${rd}`,
    'POSTGRES_PASSWORD=pair-Postgres-pw-0193', `PROXY_IMAGE=${ngx}`, 'IMAGE_SOURCE=local', 'HEALTH_TIMEOUT=30', 'DRAIN_SECONDS=1',
    'BACKUP_VOLUMES=redis_data', `BACKUP_DIR=${join(h.dir, 'backups')}`, '',
  ].join('\n'))
  base = `http://127.0.0.1:${h.vps.httpPort}`
})

test('deploy v1: both routes through nginx, Redis and PostgreSQL on the host\'s loopback only; a re-run changes nothing', async () => {
  const r = await runbook('deploy', ['--config', h.envFile, '--version', 'v1', '--json'])
  assert.is(r.code, 0, r.out)
  assert.is(await versionOf('/api/items'), 'v1')
  assert.is(await versionOf('/version.json'), 'v1')
  assert.is(workerImage_(h.sh), `${EXAMPLE_REGISTRY}/shop-worker:v1`)
  const published = h.sh("docker ps --format '{{.Names}} {{.Ports}}' | grep -- '->' | sort").trim().split('\n')
  assert.equal(published.map(l => l.replace(/^app-([a-z]+)-.*? /, '$1 ').replace(/, \[::\].*$/, '')), ['postgres 127.0.0.1:5432->5432/tcp', 'proxy 0.0.0.0:80->80/tcp', 'redis 127.0.0.1:6379->6379/tcp'])
  const again = await runbook('deploy', ['--config', h.envFile, '--version', 'v1', '--json'])
  assert.is(again.json.counts.changed, 0, again.out)
})

test('update to v2 under strict load on both routes: 0 failed, the worker replaced after it stayed up', async () => {
  const { result: r, loads: [api, shop] } = await underLoad(`${base}/api/items`, `${base}/`, () => runbook('update', ['--config', h.envFile, '--version', 'v2', '--json']))
  assert.is(r.code, 0, r.out)
  for (const [name, l] of [['/api/', api], ['/', shop]] as const) {
    assert.is(l.failed, 0, `${name}: ${l.failed} failed of ${l.ok + l.failed}: ${l.errors.join(', ')}`)
    assert.ok(l.ok > 100, `${name}: only ${l.ok} requests`)
  }
  console.log(`      [figure] adopted pair update: /api/ ${api.ok} requests (p99 ${api.p99ms.toFixed(1)} ms), / ${shop.ok} requests (p99 ${shop.p99ms.toFixed(1)} ms), 0 failed`)
  assert.is(await versionOf('/api/items'), 'v2')
  assert.is(workerImage_(h.sh), `${EXAMPLE_REGISTRY}/shop-worker:v2`)
})

test('backup with the Redis volume, then a fresh host rebuilt from it: the same data, the upstream pair untouched', async () => {
  h.sh('cd /opt/app && docker compose exec -T redis redis-cli SET marker before-backup >/dev/null')
  const r = await runbook('backup', ['--config', h.envFile, '--yes', '--json'])
  assert.is(r.code, 0, r.out)
  const { vps, r: rr, sh: onB } = await restoreOnFreshHost(h, 'stack-pair-b', images)
  b = vps
  assert.is(rr.code, 0, rr.out)
  assert.is(await versionOf('/api/items', `http://127.0.0.1:${b.httpPort}`), 'v2')
  assert.is(onB('cd /opt/app && docker compose exec -T redis redis-cli --raw GET marker').trim(), 'before-backup')
  assert.is(workerImage_(onB), `${EXAMPLE_REGISTRY}/shop-worker:v2`)
  assert.equal(hashes(), upstream, 'the upstream files are as they were')
})

test('teardown', () => { h.vps.destroy(); b?.destroy() })

test.run()
