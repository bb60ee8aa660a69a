// Day-two commands as text: logs, exec, maintenance (no host needed).
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { loadConfig } from '../../lib/config.ts'
import { execCommands, execService, pickContainer } from '../../lib/stack/exec.ts'
import { logCommands, logOptions } from '../../lib/stack/logs.ts'
import { checkMessage, maintenanceCommands, parseMaintenance, renderPage, retryAfter } from '../../lib/stack/maintenance.ts'
import { stackOf } from '../../lib/stack/stack.ts'
import { renderMetrics } from '../../lib/data/metrics.ts'
import { canaryCommands, describeCanary, parseCanaryState, parseShare, renderCanary } from '../../lib/stack/canary.ts'
import { renderRoutes } from '../../lib/stack/routes.ts'
import parsePrometheus from 'parse-prometheus-text-format'

const dir = join(import.meta.dirname, '..', '.tmp', 'daytwo-unit')
mkdirSync(dir, { recursive: true })
const shop = (more: string[] = []) => {
  const p = join(dir, '.env.shop')
  writeFileSync(p, ['SSH_HOST=vps.example.com', `COMPOSE_FILE=${join(import.meta.dirname, '..', '..', 'templates', 'examples', 'shop', 'compose.yml')}`, 'POSTGRES_PASSWORD=x', ...more, ''].join('\n'))
  return stackOf(loadConfig({ envFile: p, environ: {} }))
}

test('logs: services checked (nginx is the proxy), values refused before any host', () => {
  const st = shop()
  assert.equal(logOptions(st, { service: ['backend', 'nginx'] }).services, ['backend', 'proxy'])
  assert.is(logOptions(st, {}).lines, 100)
  assert.is(logOptions(st, { since: '10m' }).lines, undefined, '--since alone: every line since')
  assert.throws(() => logOptions(st, { service: ['backnd'] }), /did you mean backend\?/)
  for (const since of ['yesterday', '10m; rm -rf /', '$(id)']) assert.throws(() => logOptions(st, { since }), /is neither a duration/)
  assert.throws(() => logOptions(st, { lines: '-1' }), /--lines/)
  assert.throws(() => logOptions(st, { grep: 'a\nb' }), /--grep takes one non-empty line/)
})

test('logs: one pass in time order, the pattern quoted; --follow rescans and runs in its own session', () => {
  const st = shop()
  const once = logCommands.compose(st, logOptions(st, { service: ['backend'], grep: "it's $(bad)" }))
  assert.match(once, /docker logs --timestamps --tail 100 "\$name"/)
  assert.match(once, / \| sort -s -k1,1 \| \{ grep --line-buffered -E -e 'it'\\''s \$\(bad\)' \|\| \[ \$\? -eq 1 \]; \}$/)
  assert.match(once, /\n {2}break\n/)
  assert.not.match(once, /setsid/)
  const follow = logCommands.compose(st, logOptions(st, { follow: true }))
  assert.match(follow, /^exec 3<&0\nsetsid sh -c /)
  assert.match(follow, /cat <&3 >\/dev\/null; kill -TERM -\$p/)
  assert.match(follow, /first=0; sleep 2/)
  assert.not.match(follow, /sort -s/)
  assert.match(logCommands.swarm(st, logOptions(st, {})), /docker service logs --no-trunc --timestamps --tail 100 "\$name"/)
})

test('exec: the service and the command are required; words are quoted, -T without a terminal', () => {
  const st = shop()
  assert.throws(() => execService(st, undefined, ['ls']), /Name the service to run it in/)
  assert.throws(() => execService(st, 'backnd', ['ls']), /did you mean backend\?/)
  assert.throws(() => execService(st, 'backend', []), /Give the command after --/)
  assert.ok(execCommands.oneOff(st, 'backend', 'v2', ['python', '-c', 'print("a b")'], false, 'app-exec-1').command.endsWith(`APP_VERSION=v2 docker compose -p app run --rm --no-deps --name app-exec-1 -T backend python -c 'print("a b")'`))
  assert.ok(execCommands.oneOff(st, 'backend', 'v2', ['sh'], true, 'app-exec-1').command.endsWith('run --rm --no-deps --name app-exec-1  backend sh'))
  assert.is(execCommands.running('app-backend-2', ['sh', '-c', 'echo $X'], true), `docker exec -it app-backend-2 sh -c 'echo $X'`)
  // On a cluster: docker run on the first node; the environment (a password in DATABASE_URL) written to a 0600 file first, never on the command line.
  const cl = shop(['SSH_HOSTS=n1,n2', 'ENGINE=swarm'])
  const o = execCommands.oneOff(cl, 'backend', 'v2', ['python', 'manage.py', 'shell'], true, 'app-exec-1')
  // The file is opened, then removed at once: docker reads it through the descriptor, and nothing is left if the connection drops.
  assert.match(o.command, /^exec 3<\/opt\/app\/env\/app-exec-1\.env && rm -f \/opt\/app\/env\/app-exec-1\.env \|\| exit 1; c=/)
  assert.match(o.command, /docker run \$\{c:\+--network "container:\$c"\} --rm --label opsbook\.oneoff=1 --name app-exec-1 -it "\$@" --env-file \/dev\/fd\/3 -v app_uploads:\/app\/uploads ghcr\.io\/acme\/shop-backend:v2 python manage\.py shell$/)
  assert.is(execCommands.stop(cl, 'app-exec-1'), 'docker rm -f app-exec-1 >/dev/null 2>&1 || true; rm -f /opt/app/env/app-exec-1.env')
  assert.not.match(o.command, /postgres:\/\//)
  assert.is(o.before!.command, "mkdir -p /opt/app/env && (umask 077 && cat > /opt/app/env/app-exec-1.env)")
  assert.match(o.before!.stdin, /^DATABASE_URL=postgres:\/\/shop:x@postgres:5432\/shop$/m)
  assert.match(execCommands.candidates(cl, 'backend'), /label=com\.docker\.swarm\.service\.name=app_backend_a.*app_backend_b.*xargs -r docker inspect/)
  // --running: the newest container of the live release, not a canary's newer one.
  const lines = ['2026-12-07 10:00:00 +0000 UTC\tapp-backend-1\tshop-backend:v1', '2026-12-07 11:00:00 +0000 UTC\tapp-backend-3\tshop-backend:v2', '2026-12-07 10:30:00 +0000 UTC\tapp-backend-2\tshop-backend:v1'].join('\n')
  assert.is(pickContainer(lines, 'v1'), 'app-backend-2')
  assert.is(pickContainer(lines, 'v9'), 'app-backend-3', 'none on the live release: the newest')
  assert.is(pickContainer('2026-12-07T10:00:00Z\tx.1.abc\treg/app:v1@sha256:0123abcd', 'v1'), 'x.1.abc')
  assert.is(pickContainer('', 'v1'), undefined)
})

test('maintenance: Retry-After rounds up to what nginx sends without a reload; the message is escaped; the flag goes last on, first off', () => {
  assert.is(retryAfter(undefined), 30)
  assert.is(retryAfter('100'), 120)
  assert.is(retryAfter('21600'), 21600)
  for (const v of ['0', '21601', '1h', '-5']) assert.throws(() => retryAfter(v), /--retry-after/)
  assert.throws(() => checkMessage('two\nlines'), /one line/)
  const page = renderPage('Back at <b>2</b> & "soon"', 300)
  assert.match(page, /<p>Back at &lt;b&gt;2&lt;\/b&gt; &amp; &quot;soon&quot;<\/p>/)
  assert.match(page, /content="300"/)
  const st = shop()
  const on = maintenanceCommands.on(st, 300, { flag: true })
  assert.ok(on.indexOf('touch maintenance.retry-300') < on.indexOf('touch maintenance.on'), on)
  assert.ok(on.trimEnd().endsWith('touch maintenance.on'))
  assert.not.match(maintenanceCommands.on(st, 30, { flag: false }), /maintenance\.on|retry-30\b/)
  assert.match(maintenanceCommands.off(st), /rm -f maintenance\.on && rm -f maintenance\.html/)
  assert.equal(parseMaintenance('on 2026-12-07T14:02:00Z\nretry 1800\npage abc\nroutes\n'), { on: true, since: '2026-12-07T14:02:00Z', retryAfter: 1800, page: 'abc', byRestore: false, routesReady: true })
})

test('metrics: the report in Prometheus text format, read back by a Prometheus parser; what was not read is left out', () => {
  const text = renderMetrics({
    env: 'prod"uction', at: 1796650000, healthy: true, live: { version: 'v2', since: '2026-12-07T14:00:00.000Z', by: 'a@b' },
    maintenance: { on: false, retryAfterSeconds: 30 }, drift: [], disk: [{ mount: '/', usedPercent: 41 }],
    certificate: null, backup: { id: 'x', ageSeconds: 600, rpoSeconds: 3600 }, drill: null, walArchive: null,
    limits: { backupRpoSeconds: 3600, drillMaxAgeSeconds: 0, pitrMaxLagSeconds: 0 },
    lastRuns: { update: { result: 'changed', at: '2026-12-07T14:00:00.000Z' }, backup: { result: 'failed', at: '2026-12-07T13:17:00.000Z' } },
  })
  const families = new Map(parsePrometheus(text).map(f => [f.name, f]))
  const value = (name: string, label?: [string, string]) => families.get(name)?.metrics.find(m => !label || m.labels?.[label[0]] === label[1])?.value
  assert.is(value('opsbook_up'), '1')
  assert.is(families.get('opsbook_release_info')?.metrics[0].labels?.version, 'v2')
  assert.is(families.get('opsbook_up')?.metrics[0].labels?.env, 'prod"uction', 'label values escaped')
  assert.is(value('opsbook_disk_used_ratio', ['mount', '/']), '0.41')
  assert.is(value('opsbook_backup_age_seconds'), '600')
  assert.is(value('opsbook_last_run_success', ['runbook', 'backup']), '0')
  assert.is(value('opsbook_last_run_success', ['runbook', 'update']), '1')
  assert.is(families.get('opsbook_up')?.type, 'GAUGE')
  assert.is(value('opsbook_backup_rpo_seconds'), '3600')
  assert.is(value('opsbook_drill_age_seconds'), '+Inf', 'read and none found: older than any limit')
  for (const absent of ['opsbook_certificate_expiry_days', 'opsbook_wal_archive_lag_seconds', 'opsbook_drill_max_age_seconds', 'opsbook_canary_share_ratio']) assert.not.ok(families.has(absent), absent)
  const none = new Map(parsePrometheus(renderMetrics({ env: 'p', at: 1, canary: null })).map(f => [f.name, f]))
  assert.is(none.get('opsbook_canary_share_ratio')?.metrics[0].value, '0', 'read, no canary: share 0')
  const canary = new Map(parsePrometheus(renderMetrics({ env: 'p', at: 1, canary: { version: 'v3', sharePercent: 20, since: 'x', traffic: [{ version: 'v3', requests: 10, errors5xx: 1 }, { version: 'v2', requests: 40, errors5xx: 0 }] } })).map(f => [f.name, f]))
  assert.is(canary.get('opsbook_canary_share_ratio')?.metrics[0].value, '0.2')
  assert.is(canary.get('opsbook_canary_errors')?.metrics.find(m => m.labels?.version === 'v3')?.value, '1')
  assert.is(canary.get('opsbook_canary_requests')?.metrics.find(m => m.labels?.version === 'v2')?.value, '40')
})

test('canary: a share from 1% to 99%, refused otherwise before any host', () => {
  assert.is(parseShare('20%'), 20)
  assert.is(parseShare('5'), 5)
  for (const bad of ['0%', '100%', '100', '-5%', '12.5%', 'ten', '', '20%;id']) assert.throws(() => parseShare(bad), /--canary takes the share of requests for the new version, from 1% to 99%/, bad)
})

test('canary: nginx picks a bucket per client, a bucket file per service sends it to the canary slot, the cookie only while a canary runs', () => {
  const st = shop()
  const plain = renderRoutes(st.model)
  assert.match(plain, /map \$cookie_opsbook_canary \$opsbook_canary_id \{\n {2}"" \$request_id;/)
  assert.match(plain, /split_clients "\$\{opsbook_canary_id\}" \$opsbook_bucket \{\n {2}1% 0;\n/)
  assert.is((plain.match(/^ {2}1% \d+;$/gm) ?? []).length, 99)
  assert.match(plain, / {2}\* 99;\n\}/)
  // The canary's override comes after the live slot's (the last set wins).
  assert.match(plain, /if \(-f \/etc\/nginx\/conf\.d\/backend\.slot-b\) \{\n {4}set \$opsbook_backend opsbook_backend_b;\n {2}\}\n {2}if \(-f \/etc\/nginx\/conf\.d\/canary\/backend-a-\$opsbook_bucket\) \{\n {4}set \$opsbook_backend opsbook_backend_a;/)
  assert.match(plain, /if \(-f \/etc\/nginx\/conf\.d\/canary\/on\) \{\n {4}set \$opsbook_canary_cookie \$opsbook_canary_new;\n {2}\}\n {2}add_header Set-Cookie \$opsbook_canary_cookie always;/)
  // The slot a request went to is logged from a variable of its own: an error_page redirect (a 502 shown as the 503 page) keeps it.
  assert.match(plain, /"\$http_x_forwarded_for" upstream=\$opsbook_upstream';/)
  assert.match(plain, /location \/api\/ \{\n {4}if \(-f \/etc\/nginx\/conf\.d\/maintenance\.on\) \{\n {6}return 503;\n {4}\}\n {4}set \$opsbook_upstream \$opsbook_backend;\n {4}proxy_pass http:\/\/\$opsbook_backend;/)
  const cluster = renderRoutes(st.model, undefined, { project: 'app' })
  assert.not.match(cluster, /canary|opsbook_upstream|access_log/, 'a cluster\'s routes have no canary')
  assert.not.match(plain, /Secure/)
  assert.match(renderRoutes(st.model, { active: true, port: 443, hstsMaxAge: 0 }), /SameSite=Lax; Secure";/, 'over HTTPS the cookie is Secure')
})

test('maintenance over HTTPS: the page carries the security headers too (a location with add_header inherits none)', () => {
  const st = shop()
  const https = renderRoutes(st.model, { active: true, port: 443, hstsMaxAge: 600, csp: "default-src 'self'" })
  for (const loc of ['location = /opsbook-maintenance-60 {', 'location @opsbook_maintenance_text_60 {']) {
    const block = https.slice(https.indexOf(loc), https.indexOf(loc) + 600)
    assert.match(block, /add_header Retry-After 60 always;\n {4}add_header Cache-Control no-store always;\n {4}add_header X-Frame-Options SAMEORIGIN always;\n {4}add_header X-Content-Type-Options nosniff always;\n {4}add_header Referrer-Policy strict-origin-when-cross-origin always;\n {4}add_header Strict-Transport-Security "max-age=600" always;\n {4}add_header Content-Security-Policy "default-src 'self'" always;/, loc)
  }
  assert.not.match(renderRoutes(st.model), /location @opsbook_maintenance_text_60 \{\n {4}add_header Retry-After 60 always;\n {4}add_header Cache-Control no-store always;\n {4}add_header X-Frame/, 'none over HTTP')
})

test('canary: state written and read back; buckets set and cleared by name; traffic counted per upstream', () => {
  const st = shop()
  const c = { version: 'v3', share: 20, since: '2026-12-07T17:00:00.000Z', slots: new Map([['backend', 'b' as const], ['frontend', 'a' as const]]) }
  const files = ['on', 'backend-b-0', 'backend-b-1', 'frontend-a-0', 'frontend-a-1', 'frontend-a-17'].map(f => `file ${f}`)
  const state = parseCanaryState([`flag ${Buffer.from(renderCanary(c)).toString('base64')}`, ...files].join('\n'))
  assert.equal(state.canary, c)
  assert.equal([...state.buckets.get('frontend-a')!].sort((a, b) => a - b), [0, 1, 17])
  assert.is(parseCanaryState('').canary, undefined)
  assert.is(parseCanaryState(files.join('\n')).canary, undefined, 'buckets without the flag: no canary (an abort cut short)')
  const share = canaryCommands.share(st, c.slots, 3)
  assert.match(share, /^cd \/opt\/app\/proxy\/canary && touch -- backend-b-0 backend-b-1 backend-b-2 frontend-a-0 frontend-a-1 frontend-a-2 && rm -f -- backend-b-3 /)
  assert.match(share, / frontend-a-99$/)
  assert.match(canaryCommands.noBuckets(st), /-name '\*-\[ab\]-\[0-9\]\*' -delete/)
  assert.match(canaryCommands.end(st), /-delete && rm -f on && cd \/ && rmdir \/opt\/app\/proxy\/canary$/, 'the buckets go before the flag: none outlives it')
  assert.match(canaryCommands.traffic(st, c.since), /docker logs --since 2026-12-07T17:00:00\.000Z "\$c" 2>\/dev\/null \| awk -F'"'/)
  assert.is(describeCanary(c, [{ version: 'v3', requests: 200, errors: 1 }, { version: 'v2', requests: 800, errors: 0 }]),
    'v3 takes 20% of the requests since 2026-12-07 17:00 UTC: v3 200 requests (20.0%), 1 5xx (0.50%); v2 800 requests (80.0%), 0 5xx (0.0%)')
})

test.run()
