// Backups of a deployed stack with a seeded database (several tables, > 100k rows) and an
// app that writes to its DuckDB file all the time: to backups/ (DuckDB copied while the
// app is frozen) and to a real S3 API (moto; the app makes the DuckDB copy; encrypted with
// age), each restored on the side and compared table by table with the source. A dump
// killed mid-stream leaves nothing; a corrupted object is caught; a wrong key is refused.
import { appendFileSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { DuckDBInstance } from '@duckdb/node-api'
import { generateX25519Identity, identityToRecipient } from 'age-encryption'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { listBackups, openObject, storeOf } from '../../lib/data/backup.ts'
import { loadConfig } from '../../lib/config.ts'
import { readIdentities } from '../../lib/data/encryption.ts'
import { duckAppImage, nginxImage, postgresImage } from '../images.ts'
import { startS3, type S3 } from '../s3.ts'
import { app as appOf, fingerprint as fingerprintOf, psql as psqlOn, seed } from './data.ts'
import { ROOT, freshHost, runbook, start, waitFor, type Host } from './helpers.ts'

let h: Host, s3: S3, backups: string, s3Env: string, recipient: string
const AWS_SECRET = 'test-secret-key'
const DB_PASSWORD = 'backup-db-password-42'
const psql = (sql: string, db = 'app') => psqlOn(h, sql, db)
const fingerprint = (db: string) => fingerprintOf(h, db)
const app = (path: string) => appOf(h, path)
/** A DuckDB copy (file + WAL if any) opened here: its newest event id, and the same fingerprint as the app's /duckdb/fingerprint. */
async function duckCopy(files: { db: Buffer; wal?: Buffer }) {
  const dir = join(h.dir, `duck-${Date.now()}`)
  mkdirSync(dir)
  writeFileSync(join(dir, 'x.duckdb'), files.db)
  if (files.wal) writeFileSync(join(dir, 'x.duckdb.wal'), files.wal)
  const i = await DuckDBInstance.create(join(dir, 'x.duckdb'))
  const c = await i.connect()
  const one = async (sql: string) => (await c.runAndReadAll(sql)).getRowObjects()[0]
  const max = Number((await one('select max(id) as m from events')).m)
  // Same query as test/fixtures/app/duck.js fingerprintSql.
  const f = await one(`select count(*) as n, coalesce(md5(string_agg(md5(id::varchar || kind || payload), '' order by id)), '') as sum from events where id <= ${max}`)
  c.closeSync(); i.closeSync(); rmSync(dir, { recursive: true, force: true })
  return { max, n: Number(f.n), sum: String(f.sum) }
}
const manifests = (dir: string) => readdirSync(dir, { recursive: true }).map(String).filter(f => f.endsWith('manifest.json'))

test('setup: a deployed stack with a seeded database, an S3 API', async () => {
  const [pg, ngx] = [await postgresImage(), await nginxImage()]
  const v1 = await duckAppImage('v1')
  ;[h, s3] = await Promise.all([freshHost('backup', {}, { provisioned: true, images: [pg, ngx, v1] }), startS3()])
  await s3.createBucket('opsbook-backups')
  backups = join(h.dir, 'backups')
  appendFileSync(h.envFile, ['APP_IMAGE=opsbook/appduck', `DB_IMAGE=${pg}`, `PROXY_IMAGE=${ngx}`, `DB_PASSWORD=${DB_PASSWORD}`, 'IMAGE_SOURCE=local',
    'APP_ENV_DUCKDB_PATH=/data/app.duckdb', 'DUCKDB_FILE=app.duckdb', `BACKUP_DIR=${backups}`, ''].join('\n'))
  // The S3 backups are encrypted; the private key stays on this machine (as on an operator's).
  const identity = await generateX25519Identity()
  recipient = await identityToRecipient(identity)
  writeFileSync(join(h.dir, 'backup.key'), `${identity}\n`, { mode: 0o600 })
  s3Env = join(h.dir, '.env.s3')
  writeFileSync(s3Env, readFileSync(h.envFile, 'utf8') + [`BACKUP_DEST=s3://opsbook-backups/nightly`, `S3_ENDPOINT=${s3.endpoint}`,
    'AWS_ACCESS_KEY_ID=test', `AWS_SECRET_ACCESS_KEY=${AWS_SECRET}`, 'S3_PART_SIZE_MB=5', 'DUCKDB_BACKUP_COMMAND=node /app/duck-backup.js',
    `BACKUP_AGE_RECIPIENTS=${recipient}`, `BACKUP_AGE_IDENTITY_FILE=${join(h.dir, 'backup.key')}`, ''].join('\n'))
  assert.is((await runbook('provision', ['--config', h.envFile])).code, 0)
  const d = await runbook('deploy', ['--config', h.envFile, '--version', 'v1'])
  assert.is(d.code, 0, d.out)
  seed(h)
})

test('backup to backups/: complete, manifest last, restores to identical tables; secrets stay out', async () => {
  const before = app('/duckdb/fingerprint')
  const r = await runbook('backup', ['--config', h.envFile, '--yes', '--json'])
  assert.is(r.code, 0, r.out)
  // PostgreSQL, DuckDB, volumes (none named: skipped), the stack's files, manifest, retention.
  assert.equal(r.json.steps.map((s: any) => s.state), ['changed', 'changed', 'skipped', 'changed', 'changed', 'ok'])
  const [m] = manifests(backups)
  const manifest = JSON.parse(readFileSync(join(backups, m), 'utf8'))
  assert.is(manifest.appVersion, 'v1')
  assert.match(manifest.postgres.version, /^17\./)
  assert.is(manifest.postgres.compression, 'zstd:1', 'zstd where pg_dump has it (16+)')
  assert.equal(manifest.objects.map((o: any) => o.kind).slice(0, 3), ['pg_dump', 'pg_globals', 'duckdb'])
  assert.is(manifest.encryption, null)
  // DuckDB, copied while the app was frozen and writing: the copy holds every event up to
  // some id and nothing torn, and matches the live file up to that id.
  assert.is(manifest.duckdb.mode, 'freeze')
  assert.type(manifest.duckdb.pausedMs, 'number')
  const obj = (kind: string) => manifest.objects.find((o: any) => o.kind === kind)
  const copy = await duckCopy({ db: readFileSync(join(backups, obj('duckdb').key)), wal: obj('duckdb_wal') && readFileSync(join(backups, obj('duckdb_wal').key)) })
  assert.ok(copy.max > before.n, `the copy (up to ${copy.max}) is newer than the start (${before.n})`)
  assert.is(copy.n, copy.max, 'no event is missing')
  assert.is(manifest.duckdb.tables['main.events'], copy.n)
  assert.equal(app(`/duckdb/fingerprint?upto=${copy.max}`), { n: copy.n, sum: copy.sum })
  assert.ok(app('/duckdb/fingerprint').n > copy.n, 'the app kept writing')
  assert.ok(manifest.objects[0].bytes > 10_000_000, `dump of ${manifest.objects[0].bytes} bytes`)
  assert.not.ok(r.out.includes(DB_PASSWORD))
  // Restore into a scratch database on the same server and compare.
  psql('create database scratch', 'postgres')
  const dump = join(backups, manifest.objects[0].key)
  h.vps.exec('cd /opt/app && docker compose -p app exec -T db pg_restore --no-owner --no-acl -U app -d scratch', readFileSync(dump) as unknown as string)
  assert.is(fingerprint('scratch'), fingerprint('app'))
  assert.match(readFileSync(join(backups, manifest.objects[1].key), 'utf8'), /CREATE ROLE reporting/)
  const v = await runbook('backup', ['--config', h.envFile, '--verify', 'latest', '--yes'])
  assert.is(v.code, 0, v.out)
})

test('on a terminal: each stream shows its bytes and MB/s as it goes', async () => {
  const tmux = (...args: string[]) => spawnSync('tmux', ['-L', 'opsbook-backup-tty', ...args], { encoding: 'utf8' })
  const screen = () => tmux('capture-pane', '-p', '-J', '-t', 'b', '-S', '-100').stdout
  const cmd = `${join(ROOT, 'node_modules/.bin/tsx')} ${join(ROOT, 'runbooks/backup.ts')} --config ${h.envFile} --yes; echo EXIT=$?; sleep 600`
  assert.is(tmux('new-session', '-d', '-s', 'b', '-x', '200', '-y', '40', '-c', ROOT, cmd).status, 0)
  try {
    const seen = new Set<string>()
    await waitFor('the backup to finish', () => {
      const m = /postgres\.dump: ([\d.]+) MiB in [\d.]+ s \(\d+ MB\/s\)/.exec(screen())
      if (m) seen.add(m[1])
      return /EXIT=\d+/.test(screen())
    }, 180_000)
    assert.match(screen(), /EXIT=0/, screen())
    assert.ok(seen.size >= 2, `progress was redrawn (${[...seen].join(', ')} MiB)`)
    assert.match(screen(), /postgres\.dump [\d.]+ MiB in [\d.]+ s \(\d+ MB\/s\) \(zstd:1\), roles\.sql/)
  } finally {
    tmux('kill-server')
  }
})

/** The dump's file in backups/ while it is being written. */
const partial = () => readdirSync(backups, { recursive: true }).map(String).find(f => f.includes('.partial-'))
/** Until the dump is flowing into its partial file (2 MB in): the moment to break something. */
const dumpFlowing = () => waitFor('the dump to flow', () => { const p = partial(); return Boolean(p && statSync(join(backups, p)).size > 2_000_000) }, 60_000)

test('pg_dump killed mid-stream: exit non-zero, no manifest, no partial file', async () => {
  const before = manifests(backups).length
  const run = start('backup', ['--config', h.envFile, '--yes'])
  await dumpFlowing()
  h.sh('pkill -x pg_dump')
  const r = await run.done
  assert.is(r.code, 1, r.out)
  assert.match(r.stderr, /postgres\.dump: the command on the host failed .*nothing was stored\./)
  assert.is(manifests(backups).length, before)
  assert.is(partial(), undefined, 'the partial file was removed')
})

test('the SSH session of a running backup killed on the host: it fails cleanly; the next unattended backup (cron\'s flags) runs, and the audit log has both', async () => {
  const before = manifests(backups).length
  const run = start('backup', ['--config', h.envFile, '--yes'])
  await dumpFlowing()
  h.sh("pkill -f 'root[@]notty' || true")
  const r = await run.done
  assert.is(r.code, 1, r.out)
  assert.is(manifests(backups).length, before, 'nothing stored')
  // Its lock did not outlive it: released over a new connection (else --take-stale-lock would).
  assert.is(h.sh('test -e /var/lib/opsbook/lock && echo held || echo free').trim(), 'free', r.out)
  const next = await runbook('backup', ['--config', h.envFile, '--yes', '--take-stale-lock', '--json'])
  assert.is(next.code, 0, next.out)
  assert.is(manifests(backups).length, before + 1)
  const audit = h.sh('tail -n 2 /var/log/opsbook/audit.log').trim().split('\n').map(l => JSON.parse(l))
  assert.equal(audit.map(a => `${a.runbook}:${a.result}`), ['backup:failed', 'backup:changed'])
})

test('a corrupted object is caught by --verify', async () => {
  const [m] = manifests(backups)
  const manifest = JSON.parse(readFileSync(join(backups, m), 'utf8'))
  const file = join(backups, manifest.objects[1].key)
  writeFileSync(file, readFileSync(file, 'utf8').replace('reporting', 'rEporting'))
  const r = await runbook('backup', ['--config', h.envFile, '--verify', manifest.id, '--yes'])
  assert.is(r.code, 1, r.out)
  assert.match(r.stderr, new RegExp(`Backup ${manifest.id} is damaged: .*roles\\.sql: expected \\d+ bytes sha256`))
})

test('--dry-run shows what retention would delete, and deletes nothing', async () => {
  const before = manifests(backups).sort()
  assert.ok(before.length >= 2, `${before.length} backups`)
  const tight = { BACKUP_KEEP_LAST: '1', BACKUP_KEEP_DAILY: '1', BACKUP_KEEP_WEEKLY: '1', BACKUP_KEEP_MONTHLY: '1', BACKUP_MIN_KEEP: '1' }
  const r = await runbook('backup', ['--config', h.envFile, '--dry-run'], tight)
  assert.is(r.code, 0, r.out)
  const oldest = before[0].split('/').at(-2)!
  assert.match(r.out, new RegExp(`Retention .*\\(delete [^)]*${oldest}[^)]*\\) \\.\\.\\. would change`))
  assert.equal(manifests(backups).sort(), before)
})

test('backup to S3 (multipart, 5 MiB parts, age-encrypted, DuckDB copy by the app): restores to identical data with the key, verify needs none', async () => {
  const r = await runbook('backup', ['--config', s3Env, '--yes', '--json'])
  assert.is(r.code, 0, r.out)
  const keys = await s3.keys('opsbook-backups')
  assert.equal(keys.map(k => k.replace(/\/\d{8}T\d{6}Z\//, '/ID/')), ['duckdb/db.duckdb.age', 'manifest.json', 'postgres.dump.age', 'roles.sql.age', 'stack.tar.gz.age'].map(k => `nightly/app/${r.json.env}/ID/${k}`))
  assert.is(await s3.pendingUploads('opsbook-backups'), 0)
  // --verify checks the stored (encrypted) bytes: no key needed, none given.
  mkdirSync(join(h.dir, 'nokey'), { recursive: true })
  const noKey = join(h.dir, 'nokey', '.env.s3')
  writeFileSync(noKey, readFileSync(s3Env, 'utf8').replace(/^BACKUP_AGE_IDENTITY_FILE=.*$/m, ''))
  const v = await runbook('backup', ['--config', noKey, '--verify', 'latest', '--yes'])
  assert.is(v.code, 0, v.out)
  for (const out of [r.out, v.out, h.sh('cat /var/log/opsbook/audit.log')]) assert.not.ok(out.includes(AWS_SECRET) || out.includes(DB_PASSWORD))

  const c = loadConfig({ envFile: s3Env })
  const store = storeOf(c)
  const [m] = await listBackups(store, c.app.name, c.env)
  assert.equal(m.encryption, { format: 'age', recipients: [recipient] })
  assert.is(m.duckdb!.mode, 'command')
  const obj = (kind: string) => m.objects.find(o => o.kind === kind)!
  const bytes = async (r: AsyncIterable<Uint8Array>) => { const parts: Buffer[] = []; for await (const x of r) parts.push(Buffer.from(x)); return Buffer.concat(parts) }
  const raw = await bytes(await store.get(obj('pg_dump').key))
  assert.is(raw.subarray(0, 21).toString(), 'age-encryption.org/v1', 'stored as age')
  assert.not.ok(raw.includes('PGDMP') || raw.includes('CREATE TABLE'), 'no plaintext stored')
  const plain = async (kind: string, ids = readIdentities(c.backup.identityFile!)) => bytes(await openObject(store, m, obj(kind), ids))
  const failure = (p: Promise<unknown>) => p.then(() => '', (e: Error) => e.message)
  const dump = await plain('pg_dump')
  assert.is(dump.subarray(0, 5).toString(), 'PGDMP')
  assert.is(dump.length, obj('pg_dump').plainBytes)
  psql('create database scratch_s3', 'postgres')
  h.vps.exec('cd /opt/app && docker compose -p app exec -T db pg_restore --no-owner --no-acl -U app -d scratch_s3', dump as unknown as string)
  assert.is(fingerprint('scratch_s3'), fingerprint('app'))
  assert.match((await plain('pg_globals')).toString(), /CREATE ROLE reporting/)
  const copy = await duckCopy({ db: await plain('duckdb') })
  assert.is(copy.n, copy.max, 'no event is missing')
  assert.equal(app(`/duckdb/fingerprint?upto=${copy.max}`), { n: copy.n, sum: copy.sum })
  // Without the key, or with another one: a clear error before any byte.
  assert.match(await failure(openObject(store, m, obj('pg_dump'))), /encrypted \(age, to age1.*set BACKUP_AGE_IDENTITY_FILE/)
  assert.match(await failure(plain('pg_dump', [await generateX25519Identity()])), /cannot be decrypted with the key in BACKUP_AGE_IDENTITY_FILE/)
})

test('S3: pg_dump killed after parts went up: upload aborted, nothing listed, no pending upload', async () => {
  const before = await s3.keys('opsbook-backups')
  const run = start('backup', ['--config', s3Env, '--yes'])
  let pending = 0
  const t0 = Date.now()
  while (!pending && Date.now() - t0 < 60_000) { pending = await s3.pendingUploads('opsbook-backups'); if (!pending) await new Promise(res => setTimeout(res, 50)) }
  assert.ok(pending, 'a multipart upload was in progress')
  h.sh('pkill -x pg_dump || true')
  const r = await run.done
  assert.is(r.code, 1, r.out)
  assert.equal(await s3.keys('opsbook-backups'), before)
  assert.is(await s3.pendingUploads('opsbook-backups'), 0)
})

test('S3 endpoint down: one clear sentence, exit 1', async () => {
  const down = join(h.dir, '.env.down')
  writeFileSync(down, readFileSync(s3Env, 'utf8').replace(/^S3_ENDPOINT=.*$/m, 'S3_ENDPOINT=http://127.0.0.1:9'))
  const r = await runbook('backup', ['--config', down, '--yes'])
  assert.is(r.code, 1, r.out)
  assert.match(r.stderr, /The S3 endpoint for s3:\/\/opsbook-backups\/nightly\/ cannot be reached .*check S3_ENDPOINT/)
  assert.not.match(r.out, /\n\s+at /, 'no stack trace')
  // The dump it had started inside the database container was ended, not left running.
  await waitFor('no pg_dump left on the host', () => h.vps.exec('pgrep -x pg_dump').status !== 0, 10_000)
})

test('teardown', () => { h.vps.destroy(); s3.destroy(); if (existsSync(backups)) rmSync(backups, { recursive: true, force: true }) })

test.run()
