// A stack that builds its image and migrates in a one-shot service
// (test/fixtures/stacks/shop-build), adopted unedited with init.ts's override: deploy builds
// the image on this machine for the release (build args from the file), ships it and runs
// the migrate service once per release before traffic moves; an update under strict load
// has 0 failed requests; a release whose migration fails stops with the old one serving;
// a backup restored onto a fresh host gets the image shipped and the data back.
import { appendFileSync, cpSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { copyPackage, nginxImage, nodeImage, postgresImage } from '../images.ts'
import { underLoad } from '../load.ts'
import type { Vps } from '../testbed.ts'
import { ROOT, freshHost, restoreOnFreshHost, runbook, type Host } from './helpers.ts'

let h: Host
let base: string
let b: Vps | undefined
let images: string[]
let up: string
const PASSWORD = 'build-Postgres-pw-4410'
const versionOf = async (at = base) => (await (await fetch(`${at}/items`)).json()).version
const migrated = (on: (s: string) => string) => on(`cd /opt/app && docker compose exec -T postgres psql -X -At -U shop -d shop -c "select string_agg(version, ',' order by version) from schema_migrations where done_at is not null"`).trim()
const dropBuilt = () => spawnSync('docker', ['image', 'rm', '-f', 'shop-api:v1', 'shop-api:v2', 'shop-api:v4'], { encoding: 'utf8' })

test('setup: a provisioned VPS with PostgreSQL and nginx only (the API is built by the runbook), the files as written', async () => {
  images = [await postgresImage(), await nginxImage()]
  h = await freshHost('stack-build', {}, { provisioned: true, images })
  up = join(h.dir, 'shop-build')
  cpSync(join(ROOT, 'test', 'fixtures', 'stacks', 'shop-build'), up, { recursive: true })
  // The build context: the test app and its database client.
  for (const f of ['server.js', 'migrate.js']) cpSync(join(ROOT, 'test', 'fixtures', 'app', f), join(up, 'api', f))
  copyPackage('pg', join(up, 'api'))
  dropBuilt()
  const init = await runbook('init', ['--compose', `${up}/compose.yml`])
  assert.is(init.code, 0, init.out)
  const override = readFileSync(join(up, 'opsbook.override.yml'), 'utf8')
  assert.match(override, /migrate:\n {4}# Released.*\n {4}image: "shop-api:\$\{APP_VERSION\}"\n {4}# A one-shot job the others wait for/)
  const settings = [
    `COMPOSE_FILE=${up}/compose.yml:${up}/opsbook.override.yml`, `NODE_IMAGE=${await nodeImage()}`, `POSTGRES_IMAGE=${images[0]}`,
    `POSTGRES_PASSWORD=${PASSWORD}`, `PROXY_IMAGE=${images[1]}`, 'IMAGE_SOURCE=local', 'HEALTH_TIMEOUT=30', 'DRAIN_SECONDS=1', `BACKUP_DIR=${join(h.dir, 'backups')}`, '',
  ]
  appendFileSync(h.envFile, settings.join('\n'))
  base = `http://127.0.0.1:${h.vps.httpPort}`
})

test('deploy v1: the image built here with the file\'s build args, shipped, the migrate service run once before the API starts; a re-run changes nothing', async () => {
  const r = await runbook('deploy', ['--config', h.envFile, '--version', 'v1', '--json'])
  assert.is(r.code, 0, r.out)
  assert.match(r.out, /Images of build: services built here for v1 \(api\) \(built shop-api:v1\) \.\.\. changed/)
  assert.match(r.out, /Migration for v1.* \.\.\. changed/)
  assert.is(await versionOf(), 'v1')
  assert.is(migrated(h.sh), 'v1')
  assert.is(h.sh('docker ps -a --format "{{.Names}}" | grep -c migrate || true').trim(), '0', 'the one-shot container is removed')
  const again = await runbook('deploy', ['--config', h.envFile, '--version', 'v1', '--json'])
  assert.is(again.code, 0, again.out)
  assert.is(again.json.counts.changed, 0, again.out)
  assert.match(again.out, /already built: shop-api:v1/)
  assert.not.ok(r.out.includes(PASSWORD), 'the database password was printed')
})

test('update to v2 under strict load: built, migrated once, 0 failed requests', async () => {
  const { result: r, loads: [a, b2] } = await underLoad(`${base}/items`, `${base}/health`, () => runbook('update', ['--config', h.envFile, '--version', 'v2', '--json']))
  assert.is(r.code, 0, r.out)
  for (const l of [a, b2]) assert.is(l.failed, 0, `${l.failed} failed of ${l.ok + l.failed}: ${l.errors.join(', ')}`)
  assert.ok(a.ok > 100, `only ${a.ok} requests`)
  console.log(`      [figure] built stack update: ${a.ok + b2.ok} requests (p99 ${Math.max(a.p99ms, b2.p99ms).toFixed(1)} ms), 0 failed`)
  assert.is(await versionOf(), 'v2')
  assert.is(migrated(h.sh), 'v1,v2')
})

test('a release whose one-shot migration fails: the update stops, v2 keeps serving, nothing half-switched', async () => {
  const r = await runbook('update', ['--config', h.envFile, '--version', 'v4', '--json'])
  assert.is(r.code, 1, r.out)
  assert.match(r.out, /migration v4 failed at "select \* from no_such_table"/)
  assert.is(await versionOf(), 'v2')
  assert.is(migrated(h.sh), 'v1,v2')
})

test('backup, then a fresh host rebuilt from it: the built image shipped there, the migrations of backup time', async () => {
  const r = await runbook('backup', ['--config', h.envFile, '--yes', '--json'])
  assert.is(r.code, 0, r.out)
  const { vps, r: rr, sh: onB } = await restoreOnFreshHost(h, 'stack-build-b', images)
  b = vps
  assert.is(rr.code, 0, rr.out)
  assert.match(rr.out, /layers the host lacked only: shop-api:v2 \d\/\d layers needed/)
  assert.is(await versionOf(`http://127.0.0.1:${b.httpPort}`), 'v2')
  assert.is(migrated(onB), 'v1,v2')
})

test('teardown', () => { h.vps.destroy(); b?.destroy(); dropBuilt() })

test.run()
