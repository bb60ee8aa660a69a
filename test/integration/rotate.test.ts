// Secret rotation on a deployed VPS (two app containers behind nginx, PostgreSQL):
// an app signing key with a grace period, --revert, a value the app refuses (undone by
// itself), the database password under constant load (0 failed requests, the old
// password refused afterwards), an interrupted rotation finished by the next run, a
// terminal run; and everything printed, the audit log, the lock and every process's
// argv on the host searched for the values.
import { createHash } from 'node:crypto'
import { appendFileSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { appImage, nginxImage, postgresImage } from '../images.ts'
import { startLoad } from '../load.ts'
import { ROOT, freshHost, runbook, start, waitFor, type Host, type Run } from './helpers.ts'

let h: Host
let base: string
const DB_PASSWORD = 'db-Seed-Password-4711'
const SECRET_KEY = 'seed-signing-key-0123456789-abcdefghij'
const sha = (v: string) => createHash('sha256').update(v).digest('hex')
const get = async (path: string) => { const r = await fetch(base + path); return { status: r.status, body: await r.json() as any } }
const seen = async (name: string) => (await get(`/secret-sha256?name=${name}`)).body.sha256 as string | null
const secretsEnv = (suffix = '') => h.sh(`cat /opt/app/secrets.env${suffix} 2>/dev/null || true`)
const value = (text: string, key: string) => text.split('\n').find(l => l.startsWith(`${key}=`))?.slice(key.length + 1)
const passwordIn = (text: string) => decodeURIComponent(/:\/\/[^:]+:([^@]+)@/.exec(value(text, 'DATABASE_URL')!)![1])
const dbPassword = () => passwordIn(secretsEnv())
const audit = () => h.sh('cat /var/log/opsbook/audit.log')
const lastAudit = () => JSON.parse(audit().trim().split('\n').pop()!)
/** A password login over TCP inside the db container (the test's back door): exit status and output. */
const sqlAs = (user: string, password: string, sql = 'select 1') =>
  h.vps.exec(`cd /opt/app && printf '%s' '${password}' | docker compose -p app exec -T db sh -c 'PGPASSWORD=$(cat) psql -X -At -h 127.0.0.1 -U ${user} -d app -c "${sql}"'`)
const login = (user: string, password: string) => sqlAs(user, password).status

/**
 * Every process's argv on the host and the lock file, sampled every 100 ms by a loop on
 * the host while `run` lasts (a loop here would stall the load generator).
 */
async function watched(run: Promise<Run>): Promise<Run & { host: string }> {
  h.sh('rm -f /tmp/argv.log /tmp/argv.stop; (while [ ! -e /tmp/argv.stop ]; do ps -eo args; cat /var/lib/opsbook/lock/info 2>/dev/null; sleep 0.1; done >> /tmp/argv.log 2>&1; rm -f /tmp/argv.stop) >/dev/null 2>&1 &')
  const r = await run
  h.sh('touch /tmp/argv.stop; while [ -e /tmp/argv.stop ]; do sleep 0.1; done')
  const host = h.sh('cat /tmp/argv.log')
  assert.match(host, /docker compose -p app up -d --no-deps --no-recreate/, 'the sampler saw the rollout')
  return { ...r, host }
}

function assertHidden(values: string[], texts: Record<string, string>) {
  for (const v of values) for (const [where, text] of Object.entries(texts)) assert.not.ok(text.includes(v), `a secret value appeared in ${where}`)
}

test('setup: a provisioned VPS running v1 (2 containers) with a signing key and the database checked by /health', async () => {
  const [pg, ngx] = [await postgresImage(), await nginxImage()]
  const v1 = await appImage('v1')
  h = await freshHost('rotate', {}, { provisioned: true, images: [pg, ngx, v1] })
  appendFileSync(h.envFile, [
    'APP_IMAGE=opsbook/app', `DB_IMAGE=${pg}`, `PROXY_IMAGE=${ngx}`, `DB_PASSWORD=${DB_PASSWORD}`, 'IMAGE_SOURCE=local',
    'APP_REPLICAS=2', 'HEALTH_TIMEOUT=15', 'DRAIN_SECONDS=1', `APP_ENV_SECRET_KEY=${SECRET_KEY}`, 'APP_ENV_MIN_SECRET_KEY_LENGTH=32',
    'APP_ENV_DB_CHECK=1', 'APP_ENV_LOG_LEVEL=info', '',
  ].join('\n'))
  base = `http://127.0.0.1:${h.vps.httpPort}`
  for (const [rb, args] of [['provision', []], ['deploy', ['--version', 'v1']]] as const) {
    const r = await runbook(rb, ['--config', h.envFile, ...args])
    assert.is(r.code, 0, r.out)
  }
  assert.is(await seen('SECRET_KEY'), sha(SECRET_KEY))
  assert.is((await get('/db')).body.login, 'app')
  assert.is(h.sh("stat -c '%U %a %s' /opt/app/secrets.env").trim(), 'deploy 600 0')
})

test('bad input is refused before anything changes', async () => {
  const before = audit()
  for (const [args, re] of [
    [['--key', 'A;reboot'], /--key "A;reboot" is not a key name/],
    [['--key', 'secret_key'], /is not a key name/],
    [[], /No answer for "Rotate which secret\?": pass --key NAME \(or --revert\)/],
    [['--revert', '--key', 'SECRET_KEY'], /--revert takes no other rotation option/],
    [['--key', 'SECRET_KEY', '--value', 'x'], /Unknown option --value/],
    [['--key', 'SECRET_KEY', '--length', '4'], /--length 4 must be a whole number from 16 to 256/],
    [['--key', 'SECRET_KEY_PREVIOUS'], /rotate that key instead/],
  ] as const) {
    const r = await runbook('rotate-secret', ['--config', h.envFile, '--yes', ...args])
    assert.is(r.code, 2, `${args.join(' ')}: ${r.out}`)
    assert.match(r.stderr, re)
    assert.not.match(r.out, /\n\s+at /, 'no stack trace')
  }
  const unknown = await runbook('rotate-secret', ['--config', h.envFile, '--yes', '--key', 'NO_SUCH_KEY'])
  assert.is(unknown.code, 2, unknown.out)
  assert.match(unknown.stderr, /NO_SUCH_KEY is not in the app's environment on this host \(DB_CHECK, DB_PASSWORD, LOG_LEVEL, MIN_SECRET_KEY_LENGTH, SECRET_KEY\)/)
  const revert = await runbook('rotate-secret', ['--config', h.envFile, '--yes', '--revert'])
  assert.is(revert.code, 2, revert.out)
  assert.match(revert.stderr, /no earlier version of secrets.env/)
  assert.is(secretsEnv(), '')
  assert.is(audit().split('\n').length, before.split('\n').length + 2, 'only the two runs that reached the host (refused) are in the audit log')
})

test('rotate SECRET_KEY --keep-previous: the app sees the new key, old tokens stay valid, the old file is kept, the audit names the key', async () => {
  const token = (await get('/token')).body.token
  const dry = await runbook('rotate-secret', ['--config', h.envFile, '--key', 'SECRET_KEY', '--keep-previous', '--dry-run'])
  assert.is(dry.code, 0, dry.out)
  assert.match(dry.out, /New secrets staged for: rotate SECRET_KEY .* would change/)
  assert.is(secretsEnv(), '', 'a dry run changes nothing')

  const load = startLoad(`${base}/`)
  const r = await watched(runbook('rotate-secret', ['--config', h.envFile, '--key', 'SECRET_KEY', '--keep-previous', '--json']))
  const l = await load.stop()
  assert.is(r.code, 0, r.out)
  assert.is(r.json.result, 'changed')
  assert.is(l.failed, 0, l.errors.join('; '))
  const fresh = value(secretsEnv(), 'SECRET_KEY')!
  assert.match(fresh, /^[A-Za-z0-9]{48}$/)
  assert.is(value(secretsEnv(), 'SECRET_KEY_PREVIOUS'), SECRET_KEY)
  assert.is(await seen('SECRET_KEY'), sha(fresh))
  assert.is(await seen('SECRET_KEY_PREVIOUS'), sha(SECRET_KEY))
  assert.is((await get(`/verify?token=${token}`)).status, 200, 'a token signed with the old key is still accepted')
  assert.is(h.sh("stat -c '%U %a' /opt/app/secrets.env /opt/app/secrets.env.previous").trim(), 'deploy 600\ndeploy 600')
  assert.is(h.sh('ls /opt/app | grep -c "secrets.env.\\(next\\|undo\\)" || true').trim(), '0')
  const a = lastAudit()
  assert.equal([a.runbook, a.what, a.result], ['rotate-secret', 'rotate SECRET_KEY', 'changed'])
  assertHidden([SECRET_KEY, fresh], { output: r.out, audit: audit(), 'argv or lock on the host': r.host })
})

test('--revert puts the previous secrets back; --drop-previous ends the grace period', async () => {
  const rotated = value(secretsEnv(), 'SECRET_KEY')!
  const oldToken = (await get('/token')).body.token
  const r = await runbook('rotate-secret', ['--config', h.envFile, '--revert'])
  assert.is(r.code, 0, r.out)
  assert.is(await seen('SECRET_KEY'), sha(SECRET_KEY), 'back to the key from before the rotation')
  assert.is(await seen('SECRET_KEY_PREVIOUS'), null)
  assert.is(value(secretsEnv('.previous'), 'SECRET_KEY'), rotated, 'the reverted version is kept in turn')
  assert.is(lastAudit().what, 'revert to the previous secrets')

  const again = await runbook('rotate-secret', ['--config', h.envFile, '--key', 'SECRET_KEY', '--keep-previous'])
  assert.is(again.code, 0, again.out)
  const seedToken = (await fetch(`${base}/verify?token=${oldToken}`)).status
  assert.is(seedToken, 401, 'a token of the reverted-from key is not valid')
  const drop = await runbook('rotate-secret', ['--config', h.envFile, '--key', 'SECRET_KEY', '--drop-previous'])
  assert.is(drop.code, 0, drop.out)
  assert.is(await seen('SECRET_KEY_PREVIOUS'), null)
  assert.is(value(secretsEnv(), 'SECRET_KEY_PREVIOUS'), undefined)
  assertHidden([SECRET_KEY, rotated], { revert: r.out, again: again.out, drop: drop.out, audit: audit() })
})

test('a value the app refuses: health fails, the rotation undoes itself, the old containers never stopped serving', async () => {
  const before = secretsEnv()
  const containers = h.sh("docker ps --filter label=com.docker.compose.service=app --format '{{.Names}}' | sort")
  const load = startLoad(`${base}/`)
  const r = await start('rotate-secret', ['--config', h.envFile, '--key', 'SECRET_KEY', '--from-stdin', '--json'], {}, 'too-short-but-valid-9\n').done
  const l = await load.stop()
  assert.is(r.code, 1, r.out)
  assert.match(r.stderr, /rotate SECRET_KEY was undone: v1 did not answer \/health within 15 s .*secrets.env is back as it was and the app kept serving with it/)
  assert.is(l.failed, 0, l.errors.join('; '))
  assert.is(secretsEnv(), before)
  assert.is(h.sh("docker ps --filter label=com.docker.compose.service=app --format '{{.Names}}' | sort"), containers, 'the old containers kept running')
  assert.is(h.sh('ls /opt/app | grep -c "secrets.env.\\(next\\|undo\\)" || true').trim(), '0')
  assert.is(lastAudit().result, 'failed')
  assertHidden(['too-short-but-valid-9'], { output: r.out, audit: audit() })
})

test('DB_PASSWORD under constant load on /db: 0 failed requests, the app moves to the other login, the old password is refused', async () => {
  const load = startLoad(`${base}/db`, { workers: 4 })
  const r1 = await watched(runbook('rotate-secret', ['--config', h.envFile, '--key', 'DB_PASSWORD', '--yes']))
  assert.is(r1.code, 0, r1.out)
  const first = dbPassword()
  const b = (await get('/db')).body
  assert.equal([b.login, b.acting], ['app_clone', 'app'])
  assert.is(login('app', DB_PASSWORD), 2, 'the seed password no longer works')
  assert.is(login('app_clone', first), 0)
  assert.is(sqlAs('app_clone', first, 'create table made_by_clone (x int)').status, 0)
  assert.is(h.sh(`cd /opt/app && docker compose -p app exec -T db psql -X -At -U app -d app -c "select tableowner from pg_tables where tablename = 'made_by_clone'"`).trim(), 'app',
    'objects made through the clone login belong to the owner')
  const r2 = await watched(runbook('rotate-secret', ['--config', h.envFile, '--key', 'DB_PASSWORD', '--yes']))
  const l = await load.stop()
  assert.is(r2.code, 0, r2.out)
  const second = dbPassword()
  assert.is((await get('/db')).body.login, 'app')
  assert.is(login('app_clone', first), 2, 'the first rotated password no longer works')
  assert.is(login('app', second), 0)
  assert.is(l.failed, 0, l.errors.join('; '))
  assert.ok(l.ok > 200, `load ran (${l.ok} requests)`)
  console.log(`    DB_PASSWORD x2 under load: ${l.ok} ok, ${l.failed} failed (strict), p99 ${l.p99ms.toFixed(0)} ms over ${l.seconds.toFixed(1)} s`)
  assertHidden([DB_PASSWORD, first, second], { first: r1.out, second: r2.out, audit: audit(), 'argv or lock on the host': r1.host + r2.host })
})

test('an interrupted DB_PASSWORD rotation is finished by the next run, not rotated again', async () => {
  const load = startLoad(`${base}/db`, { workers: 2 })
  const run = start('rotate-secret', ['--config', h.envFile, '--key', 'DB_PASSWORD', '--yes'])
  // Killed once the switch has begun (the undo file exists): mid-way through the rollout.
  await waitFor('the switch', () => h.vps.exec('test -f /opt/app/secrets.env.undo').status === 0, 120_000)
  run.child.kill('SIGKILL')
  await run.done
  const next = secretsEnv('.next')
  const staged = passwordIn(next || secretsEnv())
  const status = await runbook('status', ['--config', h.envFile])
  assert.match(status.out, /Secrets \(rotate-secret\) \(.*UNFINISHED rotation.*: re-run rotate-secret with the same options to finish it\) \.\.\. ok/, status.out)
  const r = await runbook('rotate-secret', ['--config', h.envFile, '--key', 'DB_PASSWORD', '--yes', '--break-lock'])
  const l = await load.stop()
  assert.is(r.code, 0, r.out)
  assert.match(r.out, /New secrets staged for: rotate DB_PASSWORD .*\((an interrupted switch is finished first|staged by an interrupted run)/)
  assert.is(dbPassword(), staged, 'the value staged by the killed run went live, no second rotation')
  assert.is((await get('/db')).body.login, 'app_clone')
  assert.is(h.sh('ls /opt/app | grep -c "secrets.env.\\(next\\|undo\\)" || true').trim(), '0')
  assert.is(l.failed, 0, l.errors.join('; '))
})

test('on a terminal: the keys are listed (never values), the new value is typed masked', async () => {
  const tmux = (...a: string[]) => spawnSync('tmux', ['-L', 'opsbook-rotate', ...a], { encoding: 'utf8' })
  const screen = () => tmux('capture-pane', '-p', '-J', '-t', 'rs', '-S', '-200').stdout
  const typed = 'Typed-Value-Long-Enough-0123456789-xyz'
  tmux('kill-server')
  tmux('new-session', '-d', '-s', 'rs', '-x', '200', '-y', '50', '-c', ROOT,
    `${join(ROOT, 'node_modules/.bin/tsx')} runbooks/rotate-secret.ts --config ${h.envFile} --from-stdin; echo EXIT=$?; sleep 600`)
  try {
    await waitFor('the key menu', () => /Rotate which secret\?/.test(screen()), 60_000)
    assert.match(screen(), /DB_PASSWORD \(database password: moves to the other login\)/)
    assert.match(screen(), /LOG_LEVEL/)
    for (let i = 0; i < 10 && !/❯ SECRET_KEY/.test(screen()); i++) { tmux('send-keys', '-t', 'rs', 'Down'); await new Promise(r => setTimeout(r, 200)) }
    tmux('send-keys', '-t', 'rs', 'Enter')
    await waitFor('the value prompt', () => /New value \(not shown\)/.test(screen()))
    tmux('send-keys', '-t', 'rs', '-l', typed)
    tmux('send-keys', '-t', 'rs', 'Enter')
    await waitFor('the run to finish', () => /EXIT=\d+/.test(screen()), 120_000)
    const s = screen()
    assert.match(s, /EXIT=0/, s)
    assert.match(s, /App restarted on the new secrets .* changed/)
    assertHidden([typed, SECRET_KEY, DB_PASSWORD], { terminal: s, audit: audit() })
  } finally {
    tmux('kill-server')
  }
  assert.is(await seen('SECRET_KEY'), sha(typed))
  assert.is(lastAudit().what, 'rotate SECRET_KEY')
})

test('deploy keeps the rotated values: secrets.env wins over the settings file and is not rewritten', async () => {
  const before = secretsEnv()
  const r = await runbook('deploy', ['--config', h.envFile, '--version', 'v1', '--json'])
  assert.is(r.code, 0, r.out)
  assert.is(secretsEnv(), before)
  assert.is((await get('/db')).body.login, 'app_clone')
  assert.is(r.json.counts.changed, 0, r.out)
})

test('teardown', () => { h.vps.destroy() })

test.run()
