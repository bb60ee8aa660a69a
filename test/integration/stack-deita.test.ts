// The operator's own compose file: the Deita-shaped example (templates/examples/deita),
// a backend on /v1/ writing PostgreSQL rows and a DuckDB file all the time, a frontend on
// /, PostgreSQL as an accessory. Bad compose files refused before any connection; deploy
// and a no-op re-run; update and rollback under GET+POST load on both routes with 0
// failed requests and PostgreSQL's container untouched; a backend secret rotated; a backup
// with rows in both, restored onto a fresh host.
import { createHash } from 'node:crypto'
import { appendFileSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { backendImage, EXAMPLE_REGISTRY, frontendImage, nginxImage, postgresImage } from '../images.ts'
import { underLoad, type LoadResult } from '../load.ts'
import type { Vps } from '../testbed.ts'
import { ROOT, freshHost, restoreOnFreshHost, runbook, waitFor, type Host } from './helpers.ts'

let h: Host
let base: string
let b: Vps | undefined
let images: string[]
const PASSWORD = 'deita-Postgres-pw-5521'
const COMPOSE = join(ROOT, 'templates', 'examples', 'deita', 'compose.yml')
const auditCount = () => Number(h.sh('wc -l < /var/log/opsbook/audit.log 2>/dev/null || echo 0').trim())
const pgId = () => h.sh("docker ps -q --no-trunc --filter label=com.docker.compose.service=postgres").trim()
const versionOf = async (path: string) => (await (await fetch(base + path)).json()).version
const psql = (sql: string) => h.sh(`cd /opt/app && docker compose exec -T postgres psql -X -At -U deita -d deita -c "${sql}"`).trim()

/** GET+POST load on the backend and the frontend at once, while `during` runs. */
async function withLoad<T>(during: () => Promise<T>): Promise<{ result: T; api: LoadResult; spa: LoadResult }> {
  const { result, loads: [api, spa] } = await underLoad(`${base}/v1/items`, `${base}/`, during)
  return { result, api, spa }
}

test('setup: images of v1 and v2, a provisioned VPS, settings naming the compose file', async () => {
  const [pg, ngx] = [await postgresImage(), await nginxImage()]
  images = [pg, ngx]
  for (const v of ['v1', 'v2']) images.push(await backendImage('deita', v), await frontendImage('deita', v))
  h = await freshHost('stack-deita', {}, { provisioned: true, images })
  appendFileSync(h.envFile, [
    `COMPOSE_FILE=${COMPOSE}`, `REGISTRY=${EXAMPLE_REGISTRY}`, `POSTGRES_IMAGE=${pg}`, `POSTGRES_PASSWORD=${PASSWORD}`,
    `PROXY_IMAGE=${ngx}`, 'IMAGE_SOURCE=local', 'HEALTH_TIMEOUT=30', 'DRAIN_SECONDS=1',
    'DUCKDB_FILE=backend:/app/data/deita.duckdb', `BACKUP_DIR=${join(h.dir, 'backups')}`, '',
  ].join('\n'))
  base = `http://127.0.0.1:${h.vps.httpPort}`
})

test('bad compose files: exit 2, one sentence naming file, service and key, nothing sent to the host', async () => {
  const dir = join(h.dir, 'bad')
  mkdirSync(dir, { recursive: true })
  const good = readFileSync(COMPOSE, 'utf8')
  const cases: [string, string, RegExp][] = [
    ['yaml', good.replace('  frontend:\n', '  frontend: [oops\n'), /bad\/yaml\.yml is not valid YAML \(line \d+\)/],
    ['clash', good.replace('opsbook.route: /\n', 'opsbook.route: /v1/\n').replace('opsbook.health: /\n', 'opsbook.health: /v1/\n'), /service frontend, label opsbook\.route: any host \/v1\/ is already routed to backend/],
    ['noport', good.replace('      opsbook.port: "8000"\n', ''), /service backend, labels: a web service needs opsbook\.port/],
    ['published', good.replace('    labels:\n      opsbook.port: "80"', '    ports: ["8080:80"]\n    labels:\n      opsbook.port: "80"'), /service frontend, ports: publishing 8080:80 on the host bypasses the firewall/],
    ['noimage', good.replace(/ {4}image: \$\{REGISTRY:-ghcr\.io\/acme\}\/deita-frontend:\$\{APP_VERSION\}\n/, '    build: ./frontend\n'), /service frontend, image: opsbook builds the image of build: on this machine and needs its name and tag/],
  ]
  const before = auditCount()
  for (const [name, text, re] of cases) {
    writeFileSync(join(dir, `${name}.yml`), text)
    const env = join(h.dir, `.env.${name}`)
    writeFileSync(env, readFileSync(h.envFile, 'utf8').replace(`COMPOSE_FILE=${COMPOSE}`, `COMPOSE_FILE=bad/${name}.yml`))
    // Any runbook: provision does not need the stack, and still refuses a broken one.
    for (const args of [['deploy', '--version', 'v1'], ['provision']]) {
      const [rb, ...rest] = args
      const r = await runbook(rb, ['--config', env, ...rest, '--yes'])
      assert.is(r.code, 2, `${name} ${rb}: ${r.out}`)
      assert.match(r.stderr.trim(), re)
      assert.is(r.stderr.trim().split('\n').length, 1, r.stderr)
    }
  }
  assert.is(auditCount(), before, 'no runbook reached the host')
})

test('deploy v1: PostgreSQL, backend and frontend behind nginx by path; a second run changes nothing', async () => {
  const r = await runbook('deploy', ['--config', h.envFile, '--version', 'v1', '--json'])
  assert.is(r.code, 0, r.out)
  assert.is(await versionOf('/v1/items'), 'v1')
  assert.is(await versionOf('/version.json'), 'v1')
  assert.match(await (await fetch(`${base}/some/spa/route`)).text(), /<meta name="version" content="v1">/)
  assert.is((await fetch(`${base}/v1/health`)).status, 200)
  const again = await runbook('deploy', ['--config', h.envFile, '--version', 'v1', '--json'])
  assert.is(again.code, 0, again.out)
  assert.is(again.json.counts.changed, 0, again.out)
  assert.not.ok(r.out.includes(PASSWORD) || again.out.includes(PASSWORD), 'the database password was printed')
  assert.is(h.sh("stat -c '%U %a' /opt/app/.env").trim(), 'deploy 600')
  await waitFor('the backend to write rows', () => Number(psql('select count(*) from events')) > 10, 30_000)
})

test('update to v2 under load on both routes: 0 failed requests, PostgreSQL untouched, re-run all ok', async () => {
  const db = pgId()
  const { result: r, api, spa } = await withLoad(() => runbook('update', ['--config', h.envFile, '--version', 'v2', '--json']))
  assert.is(r.code, 0, r.out)
  for (const [name, l] of [['/v1/', api], ['/', spa]] as const) {
    assert.is(l.failed, 0, `${name}: ${l.failed} failed of ${l.ok + l.failed}: ${l.errors.join(', ')}`)
    assert.ok(l.ok > 100, `${name}: only ${l.ok} requests`)
  }
  assert.ok(api.versions.has('v1') && api.versions.has('v2'), [...api.versions].join(','))
  console.log(`      update: /v1/ ${api.ok} requests (p99 ${api.p99ms.toFixed(1)} ms), / ${spa.ok} requests (p99 ${spa.p99ms.toFixed(1)} ms), 0 failed (strict: nothing resent)`)
  assert.is(pgId(), db, 'the PostgreSQL container is the same')
  assert.is(await versionOf('/v1/items'), 'v2')
  assert.is(await versionOf('/version.json'), 'v2')
  const again = await runbook('update', ['--config', h.envFile, '--version', 'v2', '--json'])
  assert.is(again.json.counts.changed, 0, again.out)
  const live = JSON.parse(h.sh('cat /opt/app/releases.json')).at(-1)
  assert.equal(live.images.map((i: { image: string }) => i.image), [`${EXAMPLE_REGISTRY}/deita-backend:v2`, `${EXAMPLE_REGISTRY}/deita-frontend:v2`])
})

test('rollback to v1 under load: 0 failed requests, PostgreSQL untouched', async () => {
  const db = pgId()
  const { result: r, api, spa } = await withLoad(() => runbook('rollback', ['--config', h.envFile, '--to', 'v1', '--yes', '--json']))
  assert.is(r.code, 0, r.out)
  assert.is(api.failed + spa.failed, 0, [...api.errors, ...spa.errors].join(', '))
  assert.is(pgId(), db)
  assert.is(await versionOf('/v1/items'), 'v1')
  assert.is(await versionOf('/version.json'), 'v1')
})

test('rotate a secret of the backend only, under load: 0 failed, frontend and PostgreSQL untouched, the value never printed', async () => {
  const ids = (svc: string) => h.sh(`docker ps -q --no-trunc --filter label=com.docker.compose.service=${svc}`).trim()
  const [frontend, db, backend] = [ids('frontend'), pgId(), ids('backend')]
  const { result: r, api, spa } = await withLoad(() => runbook('rotate-secret', ['--config', h.envFile, '--service', 'backend', '--key', 'API_TOKEN', '--yes', '--json']))
  assert.is(r.code, 0, r.out)
  assert.is(api.failed + spa.failed, 0, [...api.errors, ...spa.errors].join(', '))
  assert.is(ids('frontend'), frontend, 'the frontend kept its containers')
  assert.is(pgId(), db)
  assert.is.not(ids('backend'), backend, 'the backend was replaced')
  const file = h.sh('cat /opt/app/secrets/backend.env')
  const value = /^API_TOKEN=(.+)$/m.exec(file)![1]
  const seen = (await (await fetch(`${base}/v1/secret-sha256?name=API_TOKEN`)).json()).sha256
  assert.is(seen, createHash('sha256').update(value).digest('hex'), 'the backend runs with the rotated value')
  assert.is((await (await fetch(`${base}/v1/secret-sha256?name=POSTGRES_PASSWORD`)).json()).sha256, null)
  assert.not.ok(r.out.includes(value) || h.sh('cat /var/log/opsbook/audit.log').includes(value), 'the value was printed or logged')
  assert.is(h.sh("stat -c '%U %a' /opt/app/secrets/backend.env").trim(), 'deploy 600')
  const refused = await runbook('rotate-secret', ['--config', h.envFile, '--service', 'backend', '--key', 'DATABASE_URL', '--yes'])
  assert.is(refused.code, 2, refused.out)
  assert.match(refused.stderr, /DATABASE_URL is set under environment: of backend in .*, which wins over the rotated value/)
})

const orders = (on: (s: string) => string) => on(`cd /opt/app && docker compose exec -T postgres psql -X -At -U deita -d deita -c "select count(*), md5(string_agg(md5(o::text), '' order by o.id)) from orders o"`).trim()
/** The backend's DuckDB marker rows, asked through nginx (only the backend may open the file). */
const kinds = async (url: string) => (await (await fetch(`${url}/v1/duckdb/kinds`)).json()).kinds as string[]
let atBackup: { pg: string; kinds: string[] }

test('backup: PostgreSQL rows and the DuckDB file of the backend, verified', async () => {
  h.sh(`cd /opt/app && docker compose exec -T postgres psql -X -q -U deita -d deita -c "create table orders (id int primary key, total numeric); insert into orders select g, g * 2.5 from generate_series(1, 40000) g"`)
  await fetch(`${base}/v1/duckdb/mark`, { method: 'POST', body: 'before-backup' })
  atBackup = { pg: orders(h.sh), kinds: await kinds(base) }
  assert.ok(atBackup.kinds.includes('marker'), atBackup.kinds.join(','))
  const r = await runbook('backup', ['--config', h.envFile, '--yes', '--json'])
  assert.is(r.code, 0, r.out)
  const dir = join(h.dir, 'backups')
  const manifest = readdirSync(dir, { recursive: true }).map(String).find(f => f.endsWith('manifest.json'))!
  const m = JSON.parse(readFileSync(join(dir, manifest), 'utf8'))
  assert.is(m.appVersion, 'v1')
  assert.is(m.postgres.database, 'deita')
  assert.ok(Object.values(m.duckdb.tables as Record<string, number>).some(n => n > 0), JSON.stringify(m.duckdb))
  const v = await runbook('backup', ['--config', h.envFile, '--verify', 'latest'])
  assert.is(v.code, 0, v.out)
})

test('disaster: a fresh host rebuilt from the backup has the PostgreSQL rows and the DuckDB file of backup time', async () => {
  const { vps, r, sh: onB } = await restoreOnFreshHost(h, 'stack-deita-b', images)
  b = vps
  assert.is(r.code, 0, r.out)
  console.log(`      ${r.json.steps.at(-1).detail}`)
  assert.is(orders(onB), atBackup.pg)
  assert.equal(await kinds(`http://127.0.0.1:${b.httpPort}`), atBackup.kinds)
  assert.is((await fetch(`http://127.0.0.1:${b.httpPort}/v1/health`)).status, 200)
})

test('teardown', () => { h.vps.destroy(); b?.destroy() })

test.run()
