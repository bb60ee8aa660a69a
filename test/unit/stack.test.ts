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
import { parseUpstream, renderRoutes, renderUpstream } from '../../lib/stack/routes.ts'
import { planSlots, slotCommands, type SlotState } from '../../lib/stack/slots.ts'
import { certFiles, daysLeft, parseCertificate } from '../../lib/stack/tls.ts'
import { duckdbOf, masked, releaseImages, renderEnv, renderOverride, stackCommands, stackOf } from '../../lib/stack/stack.ts'
import { buildArgs } from '../../lib/stack/build.ts'
import { migrationCommands } from '../../lib/stack/migrations.ts'

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
  assert.match(routes, /location \/api\/ \{\n {4}if \(-f \/etc\/nginx\/conf\.d\/maintenance\.on\) \{\n {6}return 503;\n {4}\}\n {4}set \$opsbook_upstream \$opsbook_backend;\n {4}proxy_pass http:\/\/\$opsbook_backend;/)
  // In maintenance the health paths still reach the app (exact locations, no flag check).
  for (const s of st.model.services.filter(x => x.health && x.health !== "/")) {
    assert.match(routes, new RegExp(`location = ${s.health!.replace(/[/.]/g, '\\$&')} \\{\\n {4}set \\$opsbook_upstream \\$opsbook_${s.name};\\n {4}proxy_pass`), s.name)
  }
  assert.match(routes, /error_page 502 503 504 =503 \/opsbook-maintenance;/)
  assert.match(routes, /if \(-f \/etc\/nginx\/conf\.d\/maintenance\.retry-300\) \{\n {6}rewrite \^ \/opsbook-maintenance-300 last;/)
  assert.match(routes, /listen 80 default_server;/)
  // The live slot is read per request from a file: a swap needs no reload.
  assert.match(routes, /set \$opsbook_backend opsbook_backend_a;\n {2}if \(-f \/etc\/nginx\/conf\.d\/backend\.slot-b\) \{\n {4}set \$opsbook_backend opsbook_backend_b;\n {2}\}/)
  const backend = st.model.services.find(s => s.name === 'backend')!
  const up = renderUpstream(backend, { a: ['198.18.1.0', '198.18.1.1'], b: [] })
  assert.match(up, /upstream opsbook_backend_a \{\n {2}server 198\.18\.1\.0:8080 max_fails=0;\n {2}server 198\.18\.1\.1:8080 max_fails=0;\n {2}keepalive 32;\n {2}keepalive_timeout 1s;\n\}/)
  assert.match(up, /upstream opsbook_backend_b \{\n {2}server 127\.0\.0\.1:9 down;\n/)
  assert.equal(parseUpstream(up), { a: ['198.18.1.0', '198.18.1.1'], b: [] })
  assert.is(parseUpstream('upstream opsbook_backend {\n  server app-backend-3:8080 max_fails=0;\n}\n'), undefined, 'a file from before slots')
})

const slotState = (over: Partial<SlotState> = {}): SlotState => ({ subnet: '198.18.4.0/22', attached: new Map(), live: new Map(), upstreams: new Map(), files: new Map(), tls: false, ...over })

test('slots: the first start goes to b at the first free addresses after the first /24', () => {
  const web = shop().model.services.find(s => s.name === 'backend')!
  const plan = planSlots(slotState({ attached: new Map([['app-proxy-1', '198.18.4.2']]) }), [web], new Map(), new Map([['backend', ['app-backend-1', 'app-backend-2']]]))
  assert.equal(plan.connect, [{ container: 'app-backend-1', ip: '198.18.5.0' }, { container: 'app-backend-2', ip: '198.18.5.1' }])
  // Slot a gets its addresses now: the first rollout will find them in nginx's files.
  assert.equal(plan.services.get('backend'), { live: 'a', target: 'b', ips: { a: ['198.18.5.2', '198.18.5.3'], b: ['198.18.5.0', '198.18.5.1'] } })
})

test('slots: a rollout reuses the idle slot\'s addresses (nothing for nginx to reload) and moves a leftover out of them', () => {
  const web = shop().model.services.find(s => s.name === 'backend')!
  const state = slotState({
    attached: new Map([['app-backend-3', '198.18.5.0'], ['app-backend-9', '198.18.5.2']]),
    live: new Map([['backend', 'b']]),
    upstreams: new Map([['backend', { a: ['198.18.5.2'], b: ['198.18.5.0'] }]]),
  })
  // backend-9: started by a rollout that died, attached to the idle slot a.
  const plan = planSlots(state, [web], new Map([['backend', ['app-backend-3', 'app-backend-9']]]), new Map([['backend', ['app-backend-10']]]))
  assert.equal(plan.disconnect, ['app-backend-9'])
  assert.equal(plan.connect, [{ container: 'app-backend-10', ip: '198.18.5.2' }])
  assert.equal(plan.services.get('backend')!.ips, { a: ['198.18.5.2'], b: ['198.18.5.0'] })
})

test('slots: containers nginx knows only by name (before slots) are put in the live slot first', () => {
  const web = shop().model.services.find(s => s.name === 'backend')!
  const plan = planSlots(slotState({ upstreams: new Map([['backend', undefined]]) }), [web], new Map([['backend', ['app-backend-1']]]), new Map([['backend', ['app-backend-2']]]))
  assert.equal(plan.connect, [{ container: 'app-backend-1', ip: '198.18.5.0' }, { container: 'app-backend-2', ip: '198.18.5.1' }])
  assert.equal(plan.services.get('backend')!.ips, { a: ['198.18.5.0'], b: ['198.18.5.1'] })
  assert.match(slotCommands.flip({ project: 'app', dir: '/opt/app' }, new Map([['backend', 'b'], ['frontend', 'a']])), /^touch \/opt\/app\/proxy\/backend\.slot-b && rm -f \/opt\/app\/proxy\/frontend\.slot-b$/)
})

test('the compose file\'s variables are settings; .env quotes what compose would read otherwise', () => {
  const st = shop()
  const env = renderEnv(st, 'v3')
  assert.match(env, /^COMPOSE_FILE=compose\.yml:opsbook\.yml$/m)
  assert.match(env, /^APP_VERSION=v3$/m)
  assert.match(env, /^POSTGRES_PASSWORD='pw with space'$/m)
  assert.match(renderOverride(st), /^ {2}proxy:\n {4}image: \$\{PROXY_IMAGE\}/m)
  assert.match(renderOverride(st), /^networks:\n {2}opsbook:\n {4}name: opsbook-app\n {4}external: true$/m)
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
  const back = await readBundle(gz)
  assert.equal(Object.fromEntries(Object.entries(back).map(([k, v]) => [k, v.toString('utf8')])), files)
  assert.ok((await makeBundle(files)).equals(gz), 'the same files make the same bundle')
})


test('HTTPS: until the certificate exists port 80 serves the app and the challenge; then it redirects, and 443 has the intermediate profile and the headers', () => {
  const st = stackOf(settings('tls', [`COMPOSE_FILE=${join(examples, 'shop', 'compose.yml')}`, 'POSTGRES_PASSWORD=x', 'TLS_DOMAINS=shop.example,WWW.shop.example', 'ACME_EMAIL=ops@shop.example',
    'HSTS_MAX_AGE=600', "CONTENT_SECURITY_POLICY=default-src 'self'"]))
  assert.equal(st.tls!.domains, ['shop.example', 'www.shop.example'])
  const before = renderRoutes(st.model, { active: false, port: 443, hstsMaxAge: 600 })
  assert.match(before, /listen 80 default_server;\n {2}location \^~ \/\.well-known\/acme-challenge\/ \{\n {4}root \/var\/www\/acme;/)
  assert.not.match(before, /443|return 301/)
  const after = renderRoutes(st.model, { active: true, port: 8443, hstsMaxAge: 600, csp: "default-src 'self'" })
  assert.match(after, /server \{\n {2}listen 80 default_server;\n {2}access_log \/var\/log\/nginx\/access\.log opsbook;\n {2}uninitialized_variable_warn off;\n {2}location \^~ \/\.well-known\/acme-challenge\/ \{[^}]*\}\n {2}location \/ \{\n {4}return 301 https:\/\/\$host:8443\$request_uri;/)
  assert.match(after, /listen 443 ssl default_server;\n {2}http2 on;\n {2}ssl_certificate \/etc\/nginx\/tls\/\$opsbook_tls\.pem;/)
  assert.match(after, /ssl_protocols TLSv1\.2 TLSv1\.3;/)
  assert.match(after, /add_header Strict-Transport-Security "max-age=600" always;\n {2}add_header Content-Security-Policy "default-src 'self'" always;/)
  assert.match(renderOverride(st), /- "\$\{PROXY_TLS_PORT\}:443"\n/)
  assert.match(renderOverride(st), /- \.\/tls:\/etc\/nginx\/tls:ro/)
})

test('HTTPS settings that nginx or the shell would misread are refused', () => {
  for (const [line, why] of [['TLS_DOMAINS=exa mple.com', /domain names/], ['TLS_DOMAINS=example.com;reboot', /domain names/], ['CONTENT_SECURITY_POLICY=default-src "self"', /without double quotes/],
    ['CONTENT_SECURITY_POLICY=script-src $x', /without double quotes/], ['ACME_DIRECTORY=http://ca.example/dir', /https:\/\/ URL/]] as const) {
    assert.throws(() => settings('bad-tls', [line]), (e: Error) => why.test(e.message), line)
  }
})

test('the renewal script quotes every setting and the certificate line is read back', () => {
  const st = stackOf(settings('tls-script', ['APP_IMAGE=registry.example.com/app', 'DB_PASSWORD=x12345678', 'TLS_DOMAINS=example.com', 'ACME_EMAIL=ops@example.com']))
  const script = certFiles(st)[0].content
  assert.match(script, /--email ops@example\.com --server https:\/\/acme-v02\.api\.letsencrypt\.org\/directory --key-type ec256/)
  assert.match(script, /--http --http\.webroot \/opt\/app\/acme -d example\.com "\$@"/)
  assert.match(script, /mv -f "\$tmp" \/opt\/app\/tls\/opsbook\.pem/)
  const cert = parseCertificate('issuer=CN = Pebble Intermediate-CA 1a2b\nnotAfter=Nov 25 16:00:00 2031 GMT\nX509v3 Subject Alternative Name: \n    DNS:app.test, DNS:www.app.test\n')!
  assert.equal(cert.names, ['app.test', 'www.app.test'])
  assert.is(cert.issuer, 'Pebble Intermediate-CA 1a2b')
  assert.is(daysLeft(cert, Date.parse('2031-11-11T16:00:00Z')), 14)
})

test('a base + override pair from COMPOSE_FILE=a:b: shipped in order, the job is the migration, build: built here and reset on the host', () => {
  const root = join(dir, 'build-stack')
  mkdirSync(join(root, 'api'), { recursive: true })
  writeFileSync(join(root, 'compose.yml'), 'services:\n  api:\n    build: { context: ./api, args: { VERSION: "${APP_VERSION}", BASE: "${BASE}" } }\n    image: shop-api:latest\n    depends_on: { migrate: { condition: service_completed_successfully } }\n  migrate:\n    image: shop-api:latest\n    command: ["node", "migrate.js"]\n  postgres:\n    image: postgres:17\n')
  writeFileSync(join(root, 'ops.yml'), 'services:\n  api:\n    image: shop-api:${APP_VERSION}\n    labels: { opsbook.port: "8080" }\n  migrate:\n    image: shop-api:${APP_VERSION}\n')
  const st = stackOf(settings('build', [`COMPOSE_FILE=${root}/compose.yml:${root}/ops.yml`, 'BASE=node:20']))
  assert.equal(st.composeFiles.map(f => f.name), ['compose.yml', 'compose-2.yml'])
  assert.match(renderEnv(st, 'v1'), /^COMPOSE_FILE=compose\.yml:compose-2\.yml:opsbook\.yml$/m)
  assert.equal(st.model.services.map(s => `${s.name} ${s.role}`), ['api web', 'migrate job', 'postgres accessory'])
  assert.equal(st.migrate, { service: 'migrate', down: undefined })
  assert.match(renderOverride(st), /  api:\n {4}env_file:\n {6}- path: secrets\/api\.env\n {8}required: false\n {4}build: !reset null\n/)
  assert.equal(buildArgs(st, st.model.services[0], 'v2'), ['build', '-t', 'shop-api:v2', '--build-arg', 'VERSION=v2', '--build-arg', 'BASE=node:20', join(root, 'api')])
  assert.is(migrationCommands.run(st, 'v2', st.migrate!.command).command, `cd /opt/app && APP_VERSION=v2 docker compose -p app run --rm --no-deps -T migrate`)
  assert.equal(releaseImages(st, 'v2'), ['shop-api:v2'])
})

test.run()
