// A stack as its owners wrote it (test/fixtures/stacks/deita-upstream): a base compose file
// and a production override, published ports, :latest tags, a container_name, healthchecks,
// an env_file and a bind-mounted folder. init.ts writes opsbook's override beside them, and
// the three files deploy, update under strict load, drift, back up and restore onto a new
// host with the upstream files never edited. The merge opsbook reads is checked against
// the host's own `docker compose config`.
import { createHash } from 'node:crypto'
import { appendFileSync, cpSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { backendImage, EXAMPLE_REGISTRY, frontendImage, nginxImage, postgresImage } from '../images.ts'
import { underLoad } from '../load.ts'
import type { Vps } from '../testbed.ts'
import { ROOT, freshHost, restoreOnFreshHost, runbook, type Host } from './helpers.ts'

let h: Host
let base: string
let b: Vps | undefined
let images: string[]
let up: string
const PASSWORD = 'adopt-Postgres-pw-7731'
const MOTD = 'served from ./frontend/static, shipped with the stack\n'
const hashes = () => Object.fromEntries(readdirSync(up, { recursive: true }).map(String).filter(f => /\.(yml|env|txt)$/.test(f) && !f.startsWith('opsbook.'))
  .map(f => [f, createHash('sha256').update(readFileSync(join(up, f))).digest('hex')]))
const versionOf = async (path: string, at = base) => (await (await fetch(at + path)).json()).version
const init = (...extra: string[]) => runbook('init', ['--compose', `${up}/compose.yml:${up}/compose.prod.yml`, '--route', 'backend=/v1/', '--route', 'frontend=/', ...extra])
let upstream: Record<string, string>

test('setup: images of v1 and v2, a provisioned VPS, the upstream files copied as they are', async () => {
  const [pg, ngx] = [await postgresImage(), await nginxImage()]
  images = [pg, ngx]
  for (const v of ['v1', 'v2']) images.push(await backendImage('deita', v), await frontendImage('deita', v))
  h = await freshHost('stack-adopt', {}, { provisioned: true, images })
  up = join(h.dir, 'upstream')
  cpSync(join(ROOT, 'test', 'fixtures', 'stacks', 'deita-upstream'), up, { recursive: true })
  upstream = hashes()
  base = `http://127.0.0.1:${h.vps.httpPort}`
})

test('init.ts: the override and the settings skeleton, each change with its reason; the same bytes again; bad input exits 2', async () => {
  const r = await init()
  assert.is(r.code, 0, r.out)
  const override = readFileSync(join(up, 'opsbook.override.yml'), 'utf8')
  for (const want of [/backend:\n {4}# Released with each version.*\n {4}image: "\$\{REGISTRY:-ghcr\.io\/acme\}\/deita-backend:\$\{APP_VERSION\}"/,
    /ports: !reset \[\]/, /container_name: !reset null/, /opsbook\.port: "8000"/, /opsbook\.port: "80"/, /opsbook\.route: "\/v1\/"/, /opsbook\.health: "\/v1\/health"/,
    /postgres:\n {4}# Bound to the host's loopback.*\n {4}ports: !override \["127\.0\.0\.1:5432:5432"\]/]) assert.match(override, want)
  const skeleton = readFileSync(join(up, '.env.example.opsbook'), 'utf8')
  assert.match(skeleton, /^COMPOSE_FILE=compose\.yml:compose\.prod\.yml:opsbook\.override\.yml$/m)
  assert.match(skeleton, /# secret: never printed; required\nPOSTGRES_PASSWORD=\n/)
  const again = await init()
  assert.is(again.code, 0, again.out)
  assert.match(again.stderr, /opsbook\.override\.yml: already as written \(unchanged\)/)
  assert.is(readFileSync(join(up, 'opsbook.override.yml'), 'utf8'), override, 'a re-run writes the same override')
  for (const [args, re] of [
    [['--compose', `${up}/missing.yml`], /^error: The compose file .*missing\.yml cannot be read: check the path\.$/],
    [['--compose', `${up}/compose.yml`], /^error: Several web services \(backend, frontend\): pass --route backend=\/PATH\/ .*nothing was written\.$/],
    [['--compose', `${up}/compose.yml`, '--route', 'backend=v1;rm'], /^error: --route "backend=v1;rm" is not SERVICE=\/PATH\[,\/PATH\]\.$/],
  ] as [string[], RegExp][]) {
    const bad = await runbook('init', args)
    assert.is(bad.code, 2, bad.out)
    assert.match(bad.stderr.trim(), re)
  }
  assert.equal(hashes(), upstream, 'the upstream files are as they were')
})

test('deploy v1 from the three files: routed through nginx, the env_file and the bind-mounted folder on the host; a second run changes nothing', async () => {
  appendFileSync(h.envFile, [
    `COMPOSE_FILE=${up}/compose.yml:${up}/compose.prod.yml:${up}/opsbook.override.yml`, `REGISTRY=${EXAMPLE_REGISTRY}`, `POSTGRES_IMAGE=${images[0]}`,
    `POSTGRES_PASSWORD=${PASSWORD}`, `PROXY_IMAGE=${images[1]}`, 'IMAGE_SOURCE=local', 'HEALTH_TIMEOUT=30', 'DRAIN_SECONDS=1',
    'DUCKDB_FILE=backend:/app/data/deita.duckdb', `BACKUP_DIR=${join(h.dir, 'backups')}`, 'BACKUP_VOLUMES=./uploads', '',
  ].join('\n'))
  const r = await runbook('deploy', ['--config', h.envFile, '--version', 'v1', '--json'])
  assert.is(r.code, 0, r.out)
  assert.match(r.out, /compose\.yml, compose-2\.yml, compose-3\.yml, opsbook\.yml, \.env, 2 file\(s\) beside them/)
  assert.is(await versionOf('/v1/items'), 'v1')
  assert.is(await versionOf('/version.json'), 'v1')
  assert.is(await (await fetch(`${base}/static/motd.txt`)).text(), MOTD)
  const greeting = (await (await fetch(`${base}/v1/secret-sha256?name=GREETING`)).json()).sha256
  assert.is(greeting, createHash('sha256').update('hello-from-backend.env').digest('hex'), 'the backend reads its env_file')
  assert.is(h.sh("stat -c '%U %a' /opt/app/backend.env /opt/app/frontend/static/motd.txt").trim(), 'deploy 600\ndeploy 644')
  assert.is(h.sh('grep ^COMPOSE_FILE= /opt/app/.env').trim(), 'COMPOSE_FILE=compose.yml:compose-2.yml:compose-3.yml:opsbook.yml')
  // ./uploads holds data (BACKUP_VOLUMES): created on the host, mounted, never shipped or overwritten.
  h.sh('echo a-photo > /opt/app/uploads/photo.txt')
  assert.is(h.sh("docker exec $(docker ps -q --filter label=com.docker.compose.service=backend | head -n 1) cat /app/uploads/photo.txt").trim(), 'a-photo')
  // Nothing published but nginx, and PostgreSQL on the host's loopback only.
  const published = h.sh("docker ps --format '{{.Names}} {{.Ports}}' | grep -- '->' | sort").trim().split('\n')
  assert.equal(published.map(l => l.replace(/^app-([a-z]+)-.*? /, '$1 ').replace(/, \[::\].*$/, '')), ['postgres 127.0.0.1:5432->5432/tcp', 'proxy 0.0.0.0:80->80/tcp'])
  const again = await runbook('deploy', ['--config', h.envFile, '--version', 'v1', '--json'])
  assert.is(again.code, 0, again.out)
  assert.is(again.json.counts.changed, 0, again.out)
  assert.is(h.sh('cat /opt/app/uploads/photo.txt').trim(), 'a-photo')
  assert.not.ok(r.out.includes(PASSWORD) || again.out.includes(PASSWORD), 'the database password was printed')
})

test('the merge opsbook read is the one compose runs: docker compose config on the host agrees', () => {
  const cfg = JSON.parse(h.sh('cd /opt/app && sudo -u deploy docker compose config --format json'))
  const s = cfg.services
  assert.equal(Object.keys(s).sort(), ['backend', 'frontend', 'postgres', 'proxy'])
  assert.is(s.backend.image, `${EXAMPLE_REGISTRY}/deita-backend:v1`)
  assert.is(s.backend.labels['opsbook.health'], '/v1/health')
  assert.is(s.backend.environment.LOG_LEVEL, 'info', 'compose.prod.yml merged')
  assert.is(s.backend.environment.GREETING, 'hello-from-backend.env')
  assert.is(s.backend.ports, undefined)
  assert.is(s.frontend.container_name, undefined)
  assert.is(s.frontend.restart, 'always')
  assert.equal(s.postgres.ports.map((p: { host_ip: string; published: string; target: number }) => `${p.host_ip}:${p.published}:${p.target}`), ['127.0.0.1:5432:5432'])
  assert.equal(s.frontend.volumes.map((v: { type: string; source: string; target: string }) => `${v.type} ${v.source} ${v.target}`), ['bind /opt/app/frontend/static /srv/static'])
  assert.equal(s.backend.volumes.map((v: { type: string; source: string; target: string }) => `${v.type} ${v.source} ${v.target}`), ['volume duckdb_data /app/data', 'bind /opt/app/uploads /app/uploads'])
})

test('update to v2 under strict load on both routes: 0 failed; a re-run changes nothing', async () => {
  const { result: r, loads: [api, spa] } = await underLoad(`${base}/v1/items`, `${base}/`, () => runbook('update', ['--config', h.envFile, '--version', 'v2', '--json']))
  assert.is(r.code, 0, r.out)
  for (const [name, l] of [['/v1/', api], ['/', spa]] as const) {
    assert.is(l.failed, 0, `${name}: ${l.failed} failed of ${l.ok + l.failed}: ${l.errors.join(', ')}`)
    assert.ok(l.ok > 100, `${name}: only ${l.ok} requests`)
  }
  console.log(`      [figure] adopted stack update: /v1/ ${api.ok} requests (p99 ${api.p99ms.toFixed(1)} ms), / ${spa.ok} requests (p99 ${spa.p99ms.toFixed(1)} ms), 0 failed`)
  assert.is(await versionOf('/v1/items'), 'v2')
  assert.is(await versionOf('/version.json'), 'v2')
  const again = await runbook('update', ['--config', h.envFile, '--version', 'v2', '--json'])
  assert.is(again.json.counts.changed, 0, again.out)
})

test('a shipped file edited on the host is drift in status; update puts it back', async () => {
  h.sh('echo edited >> /opt/app/frontend/static/motd.txt')
  const s = await runbook('status', ['--config', h.envFile, '--check'])
  assert.is(s.code, 1, s.out)
  assert.match(s.out, /\/opt\/app\/frontend\/static\/motd\.txt: differs from what deploy wrote/)
  const r = await runbook('update', ['--config', h.envFile, '--version', 'v2', '--json'])
  assert.is(r.code, 0, r.out)
  assert.is(await (await fetch(`${base}/static/motd.txt`)).text(), MOTD)
})

test('backup, then a fresh host rebuilt from it serves the stack with its files, the upstream files unchanged', async () => {
  await fetch(`${base}/v1/duckdb/mark`, { method: 'POST', body: 'before-backup' })
  const r = await runbook('backup', ['--config', h.envFile, '--yes', '--json'])
  assert.is(r.code, 0, r.out)
  assert.match(r.out, /Volumes stored as tar files \(uploads\)/)
  // The operator's checkout moves on: the new host must get what was backed up.
  writeFileSync(join(up, 'frontend', 'static', 'motd.txt'), 'changed after the backup\n')
  const { vps, r: rr, sh: onB } = await restoreOnFreshHost(h, 'stack-adopt-b', images)
  b = vps
  assert.is(rr.code, 0, rr.out)
  const at = `http://127.0.0.1:${b.httpPort}`
  assert.is(await (await fetch(`${at}/static/motd.txt`)).text(), MOTD)
  assert.is(await versionOf('/v1/items', at), 'v2')
  assert.ok(((await (await fetch(`${at}/v1/duckdb/kinds`)).json()).kinds as string[]).includes('marker'))
  assert.is(onB('cat /opt/app/uploads/photo.txt').trim(), 'a-photo', 'the bind-mounted data folder came back')
  assert.is(onB('grep ^COMPOSE_FILE= /opt/app/.env').trim(), 'COMPOSE_FILE=compose.yml:compose-2.yml:compose-3.yml:opsbook.yml')
  writeFileSync(join(up, 'frontend', 'static', 'motd.txt'), MOTD)
  assert.equal(hashes(), upstream, 'the upstream files are as they were')
})

test('teardown', () => { h.vps.destroy(); b?.destroy() })

test.run()
