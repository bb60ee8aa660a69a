// The files and commands a stack from a compose file turns into, asserted without a host.
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { loadConfig } from '../../lib/config.ts'
import { backupCommands } from '../../lib/data/backup.ts'
import { makeBundle, readBundle } from '../../lib/data/bundle.ts'
import { restoreCommands } from '../../lib/data/restore.ts'
import { UsageError } from '../../lib/errors.ts'
import { renderRoutes, renderUpstream } from '../../lib/stack/routes.ts'
import { duckdbOf, masked, renderEnv, renderOverride, stackCommands, stackOf } from '../../lib/stack/stack.ts'

const examples = join(import.meta.dirname, '..', '..', 'templates', 'examples')
const dir = join(import.meta.dirname, '..', '.tmp', 'stack-unit')
mkdirSync(dir, { recursive: true })
const settings = (name: string, lines: string[]) => {
  const p = join(dir, `.env.${name}`)
  writeFileSync(p, ['SSH_HOST=vps.example.com', ...lines, ''].join('\n'))
  return loadConfig({ envFile: p, environ: {} })
}
const shop = () => stackOf(settings('shop', [`COMPOSE_FILE=${join(examples, 'shop', 'compose.yml')}`, 'POSTGRES_PASSWORD=pw with space', 'BACKUP_VOLUMES=uploads:freeze,redis_data']))

test('nginx: longest prefix first, one upstream per web service', () => {
  const st = shop()
  const routes = renderRoutes(st.model)
  assert.ok(routes.indexOf('location /api/ {') < routes.indexOf('location / {'), routes)
  assert.match(routes, /location \/api\/ \{\n {4}proxy_pass http:\/\/opsbook_backend;/)
  assert.match(routes, /listen 80 default_server;/)
  const backend = st.model.services.find(s => s.name === 'backend')!
  assert.is(renderUpstream(backend, ['app-backend-3']), '# Managed by opsbook: the backend containers in service (rewritten by each rollout).\nupstream opsbook_backend {\n  server app-backend-3:8080 max_fails=0;\n  keepalive 32;\n}\n')
})

test('the compose file\'s variables are settings; .env quotes what compose would read otherwise', () => {
  const st = shop()
  const env = renderEnv(st, 'v3')
  assert.match(env, /^COMPOSE_FILE=compose\.yml:opsbook\.yml$/m)
  assert.match(env, /^APP_VERSION=v3$/m)
  assert.match(env, /^POSTGRES_PASSWORD='pw with space'$/m)
  assert.match(renderOverride(st), /^ {2}proxy:\n {4}image: \$\{PROXY_IMAGE\}/m)
  assert.not.match(renderOverride(st), /networks:/)
  assert.is(st.db?.service, 'postgres')
})

test('a container\'s last log line reaches the operator with secrets masked', () => {
  const st = shop()
  assert.is(masked(st, 'connect postgres://shop:s3cr3t@postgres:5432/shop failed; password pw with space rejected'),
    'connect postgres://shop:***@postgres:5432/shop failed; password *** rejected')
})

test('settings that do not fit the compose file are refused before connecting', () => {
  assert.throws(() => stackOf(settings('vol', [`COMPOSE_FILE=${join(examples, 'shop', 'compose.yml')}`, 'POSTGRES_PASSWORD=x', 'BACKUP_VOLUMES=media'])),
    (e: Error) => e instanceof UsageError && /BACKUP_VOLUMES in .* names media, which is not a named volume of .*compose\.yml \(it has pgdata, uploads, redis_data\)/.test(e.message))
  const deita = stackOf(settings('duck', [`COMPOSE_FILE=${join(examples, 'deita', 'compose.yml')}`, 'POSTGRES_PASSWORD=x', 'DUCKDB_FILE=backend:/app/data/deita.duckdb']))
  assert.equal(duckdbOf(deita), { service: 'backend', volume: 'app_duckdb_data', file: 'deita.duckdb' })
  const outside = stackOf(settings('duck2', [`COMPOSE_FILE=${join(examples, 'deita', 'compose.yml')}`, 'POSTGRES_PASSWORD=x', 'DUCKDB_FILE=backend:/tmp/x.duckdb']))
  assert.throws(() => duckdbOf(outside), /\/tmp\/x\.duckdb is in none of backend's named volumes \(\/app\/data\)/)
})

test('volume backups: Redis saves first, :freeze copies while paused; a restore keeps what it replaces', () => {
  const st = shop()
  const [uploads, redis] = st.backupVolumes
  assert.equal(redis, { name: 'redis_data', volume: 'app_redis_data', mode: 'live', services: ['redis'], redis: 'redis' })
  const r = backupCommands.volumeTar(st, redis, '/snap')
  assert.match(r, /redis-cli BGSAVE/)
  assert.match(r, /until \[ "\$\(docker exec "\$c" redis-cli LASTSAVE\)" -gt "\$t0" \]/)
  assert.ok(r.endsWith('tar -C "$vol" --numeric-owner -cf - .'), r)
  const u = backupCommands.volumeTar(st, uploads, '/snap')
  assert.match(u, /docker pause \$ids/)
  assert.ok(u.indexOf('docker unpause $ids >/dev/null\ntrap - EXIT') < u.indexOf('tar -C /snap'), 'unpaused before the slow part')
  assert.match(restoreCommands.volumeSwap(uploads, '/stage', '/undo'), /tar -C "\$vol" --numeric-owner -cf \/undo\/volumes\/uploads\.tar\.partial \. && mv .*\nfind "\$vol" -mindepth 1 -delete\ntar -C "\$vol" --numeric-owner -xpf \/stage\/volumes\/uploads\.tar$/)
})

test('web health through nginx uses each service\'s path; the stack bundle round-trips', async () => {
  const st = shop()
  assert.is(stackCommands.proxyHealthy(st), 'curl -fsS -m 5 -o /dev/null http://127.0.0.1:80/api/health && curl -fsS -m 5 -o /dev/null http://127.0.0.1:80/')
  const files = { 'compose.yml': st.composeText, 'settings.env': 'A=1\n' }
  const gz = await makeBundle(files)
  assert.equal(await readBundle(gz), files)
  assert.ok((await makeBundle(files)).equals(gz), 'the same files make the same bundle')
})

test.run()
