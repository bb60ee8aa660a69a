// The release cycle on a provisioned VPS, under constant load through nginx:
// deploy v1 -> update v2 -> update to a broken v3 (aborted, v2 keeps serving) ->
// guided rollback on a terminal (v1) -> --previous refused -> explicit --to.
import { randomBytes } from 'node:crypto'
import { appendFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { appImage, nginxImage, postgresImage } from '../images.ts'
import { startLoad } from '../load.ts'
import parsePrometheus from 'parse-prometheus-text-format'
import { ROOT, freshHost, runbook, start, waitFor, type Host } from './helpers.ts'

let h: Host
let url: string
// A console left open in a one-off container (exec.ts) while the later updates and rollbacks run.
let openConsole: ReturnType<typeof start> | undefined
const oneOffs = () => h.sh('docker ps -q --filter label=com.docker.compose.oneoff=True | wc -l').trim()
const DB_PASSWORD = 'db-Secret-4711-value'
const APP_SECRET = 'app-secret-value-0815'

const releases = () => JSON.parse(h.sh('cat /opt/app/releases.json')) as { version: string; result: string; bad?: boolean }[]
const serving = async () => (await (await fetch(url)).json()).version
const auditCount = () => Number(h.sh('wc -l < /var/log/opsbook/audit.log').trim())

test('setup: images, a provisioned VPS, stack settings', async () => {
  const [pg, ngx] = [await postgresImage(), await nginxImage()]
  const [v1, v2] = [await appImage('v1'), await appImage('v2')]
  await appImage('v3', true)
  // v3 is not preloaded: update.ts ships it over SSH (IMAGE_SOURCE=local) in the broken-release case.
  h = await freshHost('release', {}, { provisioned: true, images: [pg, ngx, v1, v2] })
  appendFileSync(h.envFile, [
    'APP_IMAGE=opsbook/app', `DB_IMAGE=${pg}`, `PROXY_IMAGE=${ngx}`, `DB_PASSWORD=${DB_PASSWORD}`, 'IMAGE_SOURCE=local',
    'APP_REPLICAS=2', 'HEALTH_TIMEOUT=15', 'DRAIN_SECONDS=1', `APP_ENV_SECRET_KEY=${APP_SECRET}`,
    // No backups in this environment: status --check is about drift here.
    'BACKUP_RPO=off', 'DRILL_MAX_AGE=off', '',
  ].join('\n'))
  url = `http://127.0.0.1:${h.vps.httpPort}/`
  // The host comes from the provisioned image: provision.ts finds nothing to do.
  const r = await runbook('provision', ['--config', h.envFile, '--json'])
  assert.is(r.code, 0, r.out)
  assert.is(r.json.counts.changed, 0, r.out)
})

test('malformed versions are refused before anything reaches the host', async () => {
  const before = auditCount()
  for (const v of ['v1;reboot', '$(id)', 'a b', 'v1\nx', '-rf', '.hidden', '']) {
    const r = await runbook('update', ['--config', h.envFile, '--version', v])
    assert.is(r.code, 2, `${JSON.stringify(v)}: ${r.out}`)
    assert.match(r.stderr, /^error: (--version ".*" is not a release tag|No version given|The value after --version starts with "-")/)
  }
  const r = await runbook('rollback', ['--config', h.envFile, '--to', 'v1`id`', '--yes'])
  assert.is(r.code, 2, r.out)
  assert.is(auditCount(), before, 'no runbook ran on the host')
})

test('deploy v1: the stack comes up; a second run is all ok; secrets stay out of output and files are 0600', async () => {
  const r = await runbook('deploy', ['--config', h.envFile, '--version', 'v1', '--json'])
  assert.is(r.code, 0, r.out)
  assert.is(r.json.result, 'changed')
  assert.is(await serving(), 'v1')
  const again = await runbook('deploy', ['--config', h.envFile, '--version', 'v1', '--json'])
  assert.is(again.json.counts.changed, 0, again.out)
  assert.is(h.sh("stat -c '%U %a' /opt/app/.env /opt/app/app.env").trim(), 'deploy 600\ndeploy 600')
  for (const out of [r.out, again.out, h.sh('cat /var/log/opsbook/audit.log')]) {
    assert.not.ok(out.includes(DB_PASSWORD) || out.includes(APP_SECRET), 'a secret was printed or logged')
  }
})

test('update to v2 under load (keep-alive and new connections, nothing resent): no failed request, nginx not reloaded, a second run is all ok', async () => {
  const workers = nginxWorkers()
  // Someone watches the app's logs through the swap: the new slot's containers join the stream.
  const follow = start('logs', ['--config', h.envFile, '--service', 'app', '--follow'])
  await waitFor('the followed logs to start', () => /v1 listening/.test(follow.output()), 30_000)
  const load = startLoad(url), fresh = startLoad(url, { workers: 2, fresh: true })
  await waitFor('load to start', () => load.result().ok > 20 && fresh.result().ok > 20)
  const r = await runbook('update', ['--config', h.envFile, '--version', 'v2', '--json'])
  await new Promise(res => setTimeout(res, 500))
  const [l, f] = [await load.stop(), await fresh.stop()]
  // A container that started during the follow joins it at the next scan (every 2 s).
  await waitFor('both v2 containers\' start and v1\'s drain in the followed logs', () => (follow.output().match(/v2 listening/g) ?? []).length >= 2 && /v1 draining/.test(follow.output()), 15_000).catch(() => {})
  const sigint = Date.now()
  follow.child.kill('SIGINT')
  const fl = await follow.done
  const stopMs = Date.now() - sigint
  assert.is(fl.code, 0, fl.out)
  assert.ok(stopMs < 1000, `--follow took ${stopMs} ms to end after SIGINT`)
  const who = (re: RegExp) => new Set(fl.stdout.split('\n').filter(x => re.test(x)).map(x => x.split(' ')[1]))
  assert.is(who(/ v1 \| v1 listening/).size, 2, fl.stdout)
  assert.is(who(/ v2 \| v2 listening/).size, 2, fl.stdout)
  assert.ok(who(/ v1 \| v1 draining/).size >= 1, fl.stdout)
  assert.match(fl.stdout, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z app-app-\d+ v1 \| v1 listening on :8080$/m)
  await waitFor('no docker logs left on the host', () => h.sh("ps -eo args | grep -c '^docker logs' || true").trim() === '0', 5_000)
  assert.is(r.code, 0, r.out)
  assert.is(l.failed, 0, `${l.failed} failed of ${l.ok + l.failed}: ${l.errors.join(', ')}`)
  assert.is(f.failed, 0, `new connections: ${f.failed} failed of ${f.ok + f.failed}: ${f.errors.join(', ')}`)
  // The swap is a slot file, not a reload: the same nginx workers served before and after.
  assert.is(nginxWorkers(), workers)
  assert.ok(l.ok > 200, `only ${l.ok} requests`)
  assert.ok(l.versions.has('v1') && l.versions.has('v2'), [...l.versions].join(','))
  assert.is(await serving(), 'v2')
  const again = await runbook('update', ['--config', h.envFile, '--version', 'v2', '--json'])
  assert.is(again.json.counts.changed, 0, again.out)
})

test('logs: --grep finds one request among the replicas, with its container and version; nginx\'s access log is a service; bad input is refused before connecting', async () => {
  const needle = `needle-${randomBytes(4).toString('hex')}`
  await fetch(`${url}?log=${needle}`)
  const r = await runbook('logs', ['--config', h.envFile, '--service', 'app', '--grep', needle])
  assert.is(r.code, 0, r.out)
  const lines = r.stdout.trim().split('\n')
  assert.is(lines.length, 1, r.stdout)
  assert.match(lines[0], new RegExp(`^\\S+Z app-app-\\d+ v2 \\| v2 GET ${needle}$`))
  const ngx = await runbook('logs', ['--config', h.envFile, '--service', 'nginx', '--grep', needle, '--since', '5m'])
  assert.is(ngx.code, 0, ngx.out)
  assert.match(ngx.stdout, new RegExp(`app-proxy-1 nginx \\| .*"GET /\\?log=${needle} HTTP/1.1" 200`))
  const none = await runbook('logs', ['--config', h.envFile, '--grep', 'no-such-line-anywhere'])
  assert.is(none.code, 0, none.out)
  assert.is(none.stdout.trim(), '')
  for (const [args, msg] of [
    [['--service', 'ap'], /--service "ap" is not a service of this stack \(did you mean app\?\); it has db, app, nginx\./],
    [['--since', 'yesterday'], /--since "yesterday" is neither a duration/],
    [['--lines', '-5'], /--lines/],
  ] as const) {
    const bad = await runbook('logs', ['--config', h.envFile, ...args])
    assert.is(bad.code, 2, bad.out)
    assert.match(bad.stderr, msg)
  }
})

test('maintenance on/off under strict load: every request gets the app or the 503 page with Retry-After, none fails or drops at either switch; health still answers; nginx not reloaded', async () => {
  const workers = nginxWorkers()
  const bad = await runbook('maintenance', ['--config', h.envFile, 'sideways'])
  assert.is(bad.code, 2, bad.out)
  assert.match(bad.stderr, /Say on or off/)
  const dry = await runbook('maintenance', ['--config', h.envFile, 'on', '--dry-run'])
  assert.is(dry.code, 0, dry.out)
  assert.match(dry.stdout, /would change/)
  assert.is(h.sh('test -e /opt/app/proxy/maintenance.on && echo on || echo off').trim(), 'off')

  const load = startLoad(url, { maintenance: true }), fresh = startLoad(url, { workers: 2, fresh: true, maintenance: true })
  await waitFor('load to start', () => load.result().ok > 20 && fresh.result().ok > 20)
  const on = await runbook('maintenance', ['--config', h.envFile, 'on', '--message', 'Upgrading the <database>', '--retry-after', '100', '--json'])
  assert.is(on.code, 0, on.out)
  await waitFor('the maintenance page under load', () => load.result().maintenance > 50 && fresh.result().maintenance > 20, 30_000)
  const page = spawnSync('curl', ['-s', '-i', url], { encoding: 'utf8' }).stdout
  assert.match(page, /^HTTP\/1.1 503/)
  assert.match(page, /Retry-After: 120\r\n/, 'rounded up to what nginx can send without a reload')
  assert.match(page, /Upgrading the &lt;database&gt;/)
  assert.is(spawnSync('curl', ['-fsS', '-o', '/dev/null', `${url}health`]).status, 0, 'the health path still reaches the app')
  const status = await runbook('status', ['--config', h.envFile])
  assert.match(status.stdout, /Maintenance \(ON since \d{4}-\d\d-\d\d \d\d:\d\d UTC \(nginx answers 503 with Retry-After 120 s\): maintenance\.ts off ends it\) \.\.\. ok/)
  const again = await runbook('maintenance', ['--config', h.envFile, 'on', '--message', 'Upgrading the <database>', '--retry-after', '100', '--json'])
  assert.is(again.json.counts.changed, 0, again.out)
  const okBefore = load.result().ok
  const off = await runbook('maintenance', ['--config', h.envFile, 'off'])
  assert.is(off.code, 0, off.out)
  await waitFor('the app again under load', () => load.result().ok > okBefore + 50, 30_000)
  const [l, f] = [await load.stop(), await fresh.stop()]
  assert.is(l.failed, 0, `${l.failed} failed of ${l.ok + l.failed + l.maintenance}: ${l.errors.join(', ')}`)
  assert.is(f.failed, 0, `new connections: ${f.failed} failed: ${f.errors.join(', ')}`)
  assert.is(nginxWorkers(), workers, 'no reload')
  assert.is(await serving(), 'v2')
  assert.is(h.sh('ls /opt/app/proxy | grep -c maintenance || true').trim(), '0', 'nothing of maintenance left')
  const audit = h.sh('tail -n 3 /var/log/opsbook/audit.log').trim().split('\n').map(x => JSON.parse(x))
  assert.equal(audit.map(a => a.what), ['maintenance on', 'maintenance on', 'maintenance off'])
  console.log(`      maintenance under load: ${l.ok + f.ok} app answers, ${l.maintenance + f.maintenance} maintenance pages, 0 failed`)
})

test('exec: a one-off container and a running one, exit codes passed through, audited without arguments; on a terminal a prompt is answered', async () => {
  const one = await runbook('exec', ['--config', h.envFile, '--service', 'app', '--', 'node', '-e', 'console.log("in", process.env.APP_VERSION, process.env.HOSTNAME); process.exit(3)'])
  assert.is(one.code, 3, one.out)
  assert.match(one.stdout, /^in v2 \S+$/m)
  assert.is(h.sh("docker ps -a --filter label=com.docker.compose.oneoff=True -q | wc -l").trim(), '0', 'the one-off container was removed')
  const running = await runbook('exec', ['--config', h.envFile, '--service', 'app', '--running', '--', 'sh', '-c', 'echo "$APP_VERSION secret-arg-4711"'])
  assert.is(running.code, 0, running.out)
  assert.match(running.stdout, /^v2 secret-arg-4711$/m)
  const audit = h.sh('tail -n 2 /var/log/opsbook/audit.log').trim().split('\n').map(x => JSON.parse(x))
  assert.equal(audit.map(a => [a.runbook, a.what, a.result, a.args]), [
    ['exec', 'exec in app (one-off container): node', 'failed', ['--service', 'app']],
    ['exec', 'exec in app (running container): sh', 'ok', ['--service', 'app', '--running']],
  ])
  assert.not.ok(h.sh('cat /var/log/opsbook/audit.log').includes('secret-arg-4711'), 'arguments are not audited')
  for (const [args, msg] of [
    [['--', 'ls'], /Name the service to run it in/],
    [['--service', 'nope', '--', 'ls'], /--service "nope" is not a service of this stack/],
    [['--service', 'app'], /Give the command after --/],
  ] as const) {
    const bad = await runbook('exec', ['--config', h.envFile, ...args])
    assert.is(bad.code, 2, bad.out)
    assert.match(bad.stderr, msg)
  }
  // A terminal: the command gets one (it sees a tty), reads a line typed, and its exit code comes back.
  const tmux = (...a: string[]) => spawnSync('tmux', ['-L', 'opsbook-exec', ...a], { encoding: 'utf8' })
  const screen = () => tmux('capture-pane', '-p', '-J', '-t', 'ex').stdout
  tmux('kill-server')
  try {
    tmux('new-session', '-d', '-s', 'ex', '-x', '120', '-y', '20', '-c', ROOT,
      `${join(ROOT, 'node_modules/.bin/tsx')} runbooks/exec.ts --config ${h.envFile} --service app --running -- sh -c 'if [ -t 0 ]; then echo on-a-tty; fi; printf "name? "; read n; echo "hello $n"; exit 7'; echo EXIT=$?; sleep 60`)
    await waitFor('the prompt', () => /name\? *$/m.test(screen()), 60_000)
    tmux('send-keys', '-t', 'ex', 'bob', 'Enter')
    await waitFor('the exit', () => /EXIT=\d+/.test(screen()), 30_000)
    assert.match(screen(), /on-a-tty/)
    assert.match(screen(), /hello bob/)
    assert.match(screen(), /EXIT=7/)
  } finally {
    tmux('kill-server')
  }
  openConsole = start('exec', ['--config', h.envFile, '--service', 'app', '--', 'sleep', '600'])
  await waitFor('the console\'s one-off container', () => oneOffs() === '1', 60_000)
})

test('update to a broken v3: aborted, v2 keeps serving without a failed request, v3 recorded bad', async () => {
  const load = startLoad(url)
  await waitFor('load to start', () => load.result().ok > 20)
  const r = await runbook('update', ['--config', h.envFile, '--version', 'v3'])
  const l = await load.stop()
  assert.is(r.code, 1, r.out)
  assert.match(r.stderr, /error: Roll out v3 with no downtime: v3 did not answer \/health within 15 s .*its containers were removed and v2 keeps serving/)
  assert.is(l.failed, 0, l.errors.join(', '))
  assert.equal([...l.versions], ['v2'])
  assert.is(await serving(), 'v2')
  assert.equal(releases().map(x => [x.version, x.result, Boolean(x.bad)]), [['v1', 'replaced', false], ['v2', 'live', false], ['v3', 'failed', true]])
  assert.is(h.sh("docker ps --format '{{.Image}}' | grep -c 'opsbook/app:v3' || true").trim(), '0')
  // v1 and v2 were side-loaded (docker load): v3 still needs only its own top layer.
  assert.match(r.out, /layers the host lacked only: opsbook\/app:v3 1\/2 layers needed \(0\.\d MB\), 0\.\d MB sent/)
})

test('the 3 a.m. test: v2 stops answering; a responder runs rollback.ts --env production with no flags, presses what the screen invites, and v1 serves', async () => {
  // v2 was healthy at deploy and is not now; the host is as deployed (no drift).
  h.sh("for c in $(docker ps -q --filter label=com.docker.compose.service=app); do docker exec $c touch /tmp/unhealthy; done")
  await waitFor('v2 to fail its health check', () => spawnSync('curl', ['-fsS', '-o', '/dev/null', `${url}health`]).status !== 0, 30_000)
  // What a responder has: a checkout with .env.production (PROTECTED by its name) and a terminal.
  writeFileSync(join(h.dir, '.env.production'), readFileSync(h.envFile))
  const tmux = (...a: string[]) => spawnSync('tmux', ['-L', 'opsbook-rollback', ...a], { encoding: 'utf8' })
  const screen = () => tmux('capture-pane', '-p', '-J', '-t', 'rb', '-S', '-100').stdout
  tmux('kill-server')
  const t0 = Date.now()
  tmux('new-session', '-d', '-s', 'rb', '-x', '200', '-y', '50', '-c', h.dir,
    `${join(ROOT, 'node_modules/.bin/tsx')} ${join(ROOT, 'runbooks/rollback.ts')} --env production; echo EXIT=$?; sleep 600`)
  let keys = 0, answers = 0, healthyAt = 0, menuAt = 0
  try {
    await waitFor('the release menu', () => /Roll back to which release\?/.test(screen()), 60_000)
    menuAt = Date.now()
    const s = screen()
    // Before the first answer: what is live, since when and by whom, its health, the history, the default and why.
    assert.match(s, /production: v2 is live \(deployed \d{4}-\d\d-\d\d \d\d:\d\d UTC by \S+@\S+\), NOT answering its health check/)
    assert.match(s, /v3 {2}failed \(bad\)/)
    assert.match(s, /Enter takes v1: the newest earlier release not marked bad; v2 runs as deployed, so its code or data is the likely cause\./)
    assert.match(s, /❯ v1 {2}replaced/, 'the previous good release is preselected')
    // The failing service's last words come before the first question.
    assert.match(s, /Last log lines of app \(logs\.ts --service NAME --since 10m shows more\):\n(.*\n)*\s+\S+Z app-app-\d+ v2 \| v2 /)
    tmux('send-keys', '-t', 'rb', 'Enter'); keys += 1; answers += 1
    await waitFor('the confirmation', () => /Roll back app on production to v1\. This is production: type its name to go on:/.test(screen()))
    tmux('send-keys', '-t', 'rb', 'production', 'Enter'); keys += 'production'.length + 1; answers += 1
    // Healthy is when nginx serves v1; the run goes on to stop v2's containers after that.
    for (const stop = Date.now() + 120_000; !healthyAt && Date.now() < stop; await new Promise(r => setTimeout(r, 200))) {
      if (await serving().catch(() => undefined) === 'v1') healthyAt = Date.now()
    }
    await waitFor('the rollback to finish', () => /EXIT=\d+/.test(screen()), 120_000)
    assert.match(screen(), /EXIT=0/, screen())
    assert.match(screen(), /Roll back to v1 with no downtime .* changed/)
  } finally {
    tmux('kill-server')
  }
  const took = (Date.now() - t0) / 1000
  assert.ok(healthyAt, 'v1 served through nginx')
  assert.is(await serving(), 'v1')
  assert.is(spawnSync('curl', ['-fsS', '-o', '/dev/null', `${url}health`]).status, 0, 'healthy through nginx')
  const rs = releases()
  assert.equal(rs.at(-1), { ...rs.at(-1)!, version: 'v1', result: 'live' })
  assert.ok(rs.find(x => x.version === 'v2' && x.result === 'rolled-back' && x.bad), 'v2 marked bad after the rollback')
  const sec = (ms: number) => `${(ms / 1000).toFixed(1)} s`
  console.log(`      3 a.m. rollback: ${answers} answers (${keys} keystrokes); from start: menu ${sec(menuAt - t0)}, v1 serving ${sec(healthyAt - t0)}, run done ${took.toFixed(1)} s (v2's containers stopped)`)
})

test('rollback --to v1 again is all ok; --previous with only bad releases left is refused', async () => {
  const again = await runbook('rollback', ['--config', h.envFile, '--to', 'v1', '--yes', '--json'])
  assert.is(again.code, 0, again.out)
  assert.is(again.json.counts.changed, 0)
  const prev = await runbook('rollback', ['--config', h.envFile, '--previous', '--yes'])
  assert.is(prev.code, 2, prev.out)
  assert.match(prev.stderr, /Every earlier release is marked bad: pick one with --to TAG\./)
  const noTty = await runbook('rollback', ['--config', h.envFile, '--yes'])
  assert.is(noTty.code, 2)
  assert.match(noTty.stderr, /pass --to TAG, --previous or --repair/)
})

test('rollback --to v2 under load (image still on the host): no failed request', async () => {
  const load = startLoad(url)
  await waitFor('load to start', () => load.result().ok > 20)
  const t0 = Date.now()
  const r = await runbook('rollback', ['--config', h.envFile, '--to', 'v2', '--yes', '--json'])
  const took = Date.now() - t0
  const l = await load.stop()
  assert.is(r.code, 0, r.out)
  assert.is(r.json.steps.find((s: { title: string }) => s.title.startsWith('Images'))?.state, 'ok', 'no image transfer needed')
  assert.is(l.failed, 0, l.errors.join(', '))
  assert.is(await serving(), 'v2')
  // Speed is reported, not asserted: a slow CI machine is not a failed rollback.
  console.log(`      rollback --to v2 under load: ${(took / 1000).toFixed(1)} s, ${l.ok} requests, 0 failed`)
  // The console opened after the exec test lived through an update, three rollbacks and their swaps untouched.
  assert.is(oneOffs(), '1', 'the open console is neither counted nor stopped by a rollout')
  openConsole!.child.kill('SIGINT')
  const c = await openConsole!.done
  assert.is(c.code, 130, c.out)
  assert.is(oneOffs(), '0', 'Ctrl-C removed the console\'s one-off container')
})

test('history and audit match what happened; status shows it', async () => {
  const audit = h.sh('cat /var/log/opsbook/audit.log').trim().split('\n').map(l => JSON.parse(l))
  assert.equal(audit.map(a => `${a.runbook}:${a.result}`), [
    'provision:ok', 'deploy:changed', 'deploy:ok', 'update:changed', 'update:ok',
    // logs is read-only (no line); maintenance and exec are audited.
    'maintenance:changed', 'maintenance:ok', 'maintenance:changed', 'exec:failed', 'exec:ok', 'exec:failed',
    'update:failed', 'rollback:changed', 'rollback:ok', 'rollback:changed', 'exec:interrupted',
  ])
  h.sh('mkdir -p /var/lib/prometheus/node-exporter')
  const prom = '/var/lib/prometheus/node-exporter/opsbook.prom'
  const s = await runbook('status', ['--config', h.envFile, '--json', '--metrics-file', prom])
  assert.is(s.code, 0, s.out)
  assert.match(s.stdout, /Live release \(v2, since/)
  assert.match(s.stdout, /Recent releases \(v2 live, v1 rolled-back \(bad\), v3 failed \(bad\)/)
  assert.is(auditCountAfter(), audit.length, 'status writes no audit line')
  // --json's report and the metrics file say the same, read back by a Prometheus parser.
  const r = s.json.report
  assert.equal(Object.keys(r).sort(), ['at', 'canary', 'disk', 'drift', 'env', 'healthy', 'lastRuns', 'limits', 'live', 'lock', 'maintenance'])
  assert.equal([r.live.version, r.healthy, r.maintenance.on, r.drift, r.lock, r.canary], ['v2', true, false, [], null, null])
  const families = new Map(parsePrometheus(h.sh(`cat ${prom}`)).map(f => [f.name, f]))
  const value = (name: string, label?: [string, string]) => Number(families.get(name)?.metrics.find(m => !label || m.labels?.[label[0]] === label[1])?.value)
  assert.is(families.get('opsbook_release_info')?.metrics[0].labels?.version, r.live.version)
  assert.is(value('opsbook_up'), 1)
  assert.is(value('opsbook_maintenance'), 0)
  assert.is(value('opsbook_canary_share_ratio'), 0)
  assert.is(value('opsbook_drift'), 0)
  assert.is(value('opsbook_release_timestamp_seconds'), Date.parse(r.live.since) / 1000)
  for (const d of r.disk) assert.is(value('opsbook_disk_used_ratio', ['mount', d.mount]), d.usedPercent / 100)
  assert.is(value('opsbook_last_run_success', ['runbook', 'rollback']), 1)
  assert.is(value('opsbook_last_run_success', ['runbook', 'exec']), 0, 'the last exec exited 7')
  assert.is(value('opsbook_last_run_timestamp_seconds', ['runbook', 'update']), Date.parse(r.lastRuns.update.at) / 1000)
  assert.is(h.sh(`stat -c '%a %U' ${prom}`).trim(), '644 root')
})
const auditCountAfter = () => auditCount()

test('drift: a hand-run compose up with another image is named by status --check (exit 1) and repaired by rollback --repair under load', async () => {
  // What people do at 3 a.m.: recreate the app by hand with another image; nginx's addresses are gone.
  h.sh('cd /opt/app && APP_VERSION=v1 docker compose -p app up -d --no-deps app >/dev/null 2>&1')
  const plainStatus = await runbook('status', ['--config', h.envFile])
  assert.match(plainStatus.stdout, /Drift .*WARNING: app: \d container\(s\) running v1, the live release is v2 with 2: rollback\.ts --repair/, plainStatus.out)
  const s = await runbook('status', ['--config', h.envFile, '--check'])
  assert.is(s.code, 1, s.out)
  assert.match(s.out, /nginx: app's live slot names addresses no running app container has .*: rollback\.ts --repair \(re-rolls v2 onto the host\)/)
  // On a terminal, with the live release not answering, re-rolling it is the first choice.
  const tmux = (...a: string[]) => spawnSync('tmux', ['-L', 'opsbook-repair', ...a], { encoding: 'utf8' })
  const screen = () => tmux('capture-pane', '-p', '-J', '-t', 'rp', '-S', '-100').stdout
  tmux('kill-server')
  tmux('new-session', '-d', '-s', 'rp', '-x', '200', '-y', '50', '-c', ROOT, `${join(ROOT, 'node_modules/.bin/tsx')} runbooks/rollback.ts --config ${h.envFile}; sleep 600`)
  try {
    await waitFor('the release menu', () => /Roll back to which release\?/.test(screen()), 60_000)
    assert.match(screen(), /test: v2 is live \(deployed .* UTC by .*\), NOT answering its health check; the host differs from it: /)
    assert.match(screen(), /Enter takes re-roll v2: the host no longer matches v2, so re-rolling it is the likely fix\./)
    assert.match(screen(), /❯ re-roll v2, the live release, onto the host/)
  } finally { tmux('kill-server') }
  const load = startLoad(url), fresh = startLoad(url, { workers: 2, fresh: true })
  const r = await runbook('rollback', ['--config', h.envFile, '--repair', '--yes', '--json'])
  assert.is(r.code, 0, r.out)
  assert.match(r.out, /re-roll v2 onto the host/)
  const [during, duringFresh] = [await load.stop(), await fresh.stop()]
  // From the repair on, nothing fails: constant load, strict.
  const after = startLoad(url), afterFresh = startLoad(url, { workers: 2, fresh: true })
  await new Promise(res => setTimeout(res, 3000))
  const [a, af] = [await after.stop(), await afterFresh.stop()]
  assert.is(a.failed + af.failed, 0, [...a.errors, ...af.errors].join(', '))
  assert.is(await serving(), 'v2')
  const check = await runbook('status', ['--config', h.envFile, '--check'])
  assert.is(check.code, 0, check.out)
  assert.match(check.stdout, /Drift \(host against the live release\) \(none\)/)
  console.log(`      repair: ${during.failed + duringFresh.failed} of ${during.ok + during.failed + duringFresh.ok + duringFresh.failed} requests failed while it ran (the site was down before it); after it: 0 of ${a.ok + af.ok}`)
})

const nginxWorkers = () => h.sh("docker top app-proxy-1 -o pid,args | grep 'worker process' | awk '{print $1}' | sort | tr '\\n' ' '")

test('an update cut off mid-layer (the runbook killed, SSH gone): the host keeps serving with its old images, nothing of the tunnel or registry stays, a re-run sends the missing layer once', async () => {
  // v4 is v2 plus a 48 MB layer of random bytes: long enough on the wire to be cut.
  const ctx = join(h.dir, 'v4')
  mkdirSync(ctx, { recursive: true })
  writeFileSync(join(ctx, 'blob'), randomBytes(48e6))
  writeFileSync(join(ctx, 'Dockerfile'), 'FROM opsbook/app:v2\nCOPY blob /blob\nENV APP_VERSION=v4\n')
  assert.is(spawnSync('docker', ['build', '-q', '-t', 'opsbook/app:v4', ctx], { encoding: 'utf8' }).status, 0)
  const cache = join(h.dir, 'layers')
  const env = { LAYER_CACHE: cache }
  const rx = () => Number(h.sh('cat /sys/class/net/eth0/statistics/rx_bytes'))
  const load = startLoad(url)
  const before = rx()
  const run = start('update', ['--config', h.envFile, '--version', 'v4'], env)
  await waitFor('the layer to be on the wire', () => rx() - before > 12e6, 120_000)
  run.child.kill('SIGKILL')
  await run.done
  const l = await load.stop()
  assert.is(l.failed, 0, l.errors.join(', '))
  assert.equal([...l.versions], ['v2'])
  assert.is(await serving(), 'v2')
  assert.ok(rx() - before < 48e6, 'the cut came mid-layer')
  assert.is(h.sh("docker image inspect opsbook/app:v4 >/dev/null 2>&1 && echo yes || echo no").trim(), 'no')
  await waitFor('sshd to drop the forwarded port', () => !/sshd/.test(h.sh('ss -ltnp | grep -v ":22 " || true')), 20_000)
  await waitFor('the registry to stop', () => spawnSync('pgrep', ['-f', cache]).status !== 0, 20_000)
  await waitFor('the host to stop pulling', () => h.sh("pgrep -f '^docker pull' || true").trim() === '', 20_000)
  const mid = rx()
  const r = await runbook('update', ['--config', h.envFile, '--version', 'v4', '--json'], env)
  assert.is(r.code, 0, r.out)
  // The goal: what is sent is at most 1.2x the layers needed (HTTP, manifest and config included).
  const [, needed, sent] = /opsbook\/app:v4 1\/3 layers needed \((\d+) MB\), ([\d.]+) MB sent/.exec(r.out) ?? [, NaN, NaN]
  assert.is(Number(needed), 48, r.out)
  assert.ok(Number(sent) >= 48 && Number(sent) <= 48 * 1.2, r.out)
  assert.ok(rx() - mid < 48e6 * 1.2, `${((rx() - mid) / 1e6).toFixed(1)} MB arrived for a 48 MB layer`)
  const local = spawnSync('docker', ['image', 'inspect', '-f', '{{.Id}}', 'opsbook/app:v4'], { encoding: 'utf8' }).stdout.trim()
  assert.is(h.sh("docker image inspect -f '{{.Id}}' opsbook/app:v4").trim(), local, 'the host has the image under the ID it has here')
  assert.is(h.sh("docker images --format '{{.Repository}}' | grep -c '^127.0.0.1:' || true").trim(), '0', 'no reference to the run\'s registry is left')
  assert.is(spawnSync('pgrep', ['-f', cache]).status, 1, 'the registry stopped with the run')
  assert.is(await serving(), 'v4')
})

test('teardown', () => { h.vps.destroy() })

test.run()
