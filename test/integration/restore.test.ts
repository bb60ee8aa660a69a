// Restores: onto the same host (then undone), drills in throwaway containers (a good and a
// corrupted backup), refusals that change nothing, and the full disaster: VPS A is backed
// up to S3 (encrypted), destroyed, and rebuilt on a fresh VPS B from nothing but the
// settings file, the S3 bucket and the age key.
import { spawnSync } from 'node:child_process'
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3'
import { generateX25519Identity, identityToRecipient } from 'age-encryption'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { duckAppImage, nginxImage, postgresImage } from '../images.ts'
import { startS3, type S3 } from '../s3.ts'
import { startVps, type Vps } from '../testbed.ts'
import { app, fingerprint, psql, seed } from './data.ts'
import { ROOT, freshHost, runbook, waitFor, type Host } from './helpers.ts'

let h: Host, s3: S3, b: Vps, env: string
const BUCKET = 'opsbook-restore'
const ids = async () => [...new Set((await s3.keys(BUCKET)).map(k => /\/(\d{8}T\d{6}Z)\//.exec(k)?.[1]).filter(Boolean) as string[])].sort()
const leftovers = (on: Host) => on.sh("docker ps -aq --filter label=opsbook.drill=1; docker network ls -q --filter name=opsbook-drill; ls /var/lib/opsbook/restore | grep '^drill-' || true").trim()
const state = () => ({ pg: fingerprint(h, 'app', ['customers', 'orders']), kinds: app(h, '/duckdb/kinds').kinds })

test('setup: VPS A deployed with data, backups to S3 encrypted with age', async () => {
  const [pg, ngx] = [await postgresImage(), await nginxImage()]
  const v1 = await duckAppImage('v1')
  ;[h, s3] = await Promise.all([freshHost('restore', {}, { provisioned: true, images: [pg, ngx, v1] }), startS3()])
  await s3.createBucket(BUCKET)
  const identity = await generateX25519Identity()
  writeFileSync(join(h.dir, 'backup.key'), `${identity}\n`, { mode: 0o600 })
  appendFileSync(h.envFile, ['APP_IMAGE=opsbook/appduck', `DB_IMAGE=${pg}`, `PROXY_IMAGE=${ngx}`, 'DB_PASSWORD=restore-db-password-7', 'IMAGE_SOURCE=local',
    'APP_ENV_DUCKDB_PATH=/data/app.duckdb', 'DUCKDB_FILE=app.duckdb', `BACKUP_DEST=s3://${BUCKET}/prod`, `S3_ENDPOINT=${s3.endpoint}`,
    'AWS_ACCESS_KEY_ID=test', 'AWS_SECRET_ACCESS_KEY=test-secret-key', 'S3_PART_SIZE_MB=5',
    `BACKUP_AGE_RECIPIENTS=${await identityToRecipient(identity)}`, `BACKUP_AGE_IDENTITY_FILE=${join(h.dir, 'backup.key')}`, ''].join('\n'))
  env = h.envFile
  assert.is((await runbook('provision', ['--config', env])).code, 0)
  const d = await runbook('deploy', ['--config', env, '--version', 'v1'])
  assert.is(d.code, 0, d.out)
  seed(h, 200_000)
})

test('same host: restore brings the backup back (nothing after it survives), undo brings the replaced data back', async () => {
  const bk = await runbook('backup', ['--config', env, '--yes'])
  assert.is(bk.code, 0, bk.out)
  const [id] = await ids()
  const atBackup = state()
  // Changes after the backup, in both databases.
  psql(h, "insert into customers values (999999, 'late', 'late@example.com'); create table late (x int)")
  app(h, '/duckdb/mark', 'after-backup')
  const after = state()
  assert.is.not(after.pg, atBackup.pg)
  assert.ok(after.kinds.includes('marker'))

  const r = await runbook('restore', ['--config', env, '--backup', id, '--yes', '--json'])
  assert.is(r.code, 0, r.out)
  assert.equal(state(), atBackup)
  assert.is(psql(h, "select count(*) from pg_tables where tablename = 'late'"), '0', 'a table made after the backup is gone')
  assert.match(r.out, /RTO (\d+ min )?[\d.]+ s .*RPO/, r.out)
  console.log(`      same host: ${/RTO [^;]*/.exec(r.out)?.[0]}`)
  assert.is(h.sh('curl -s -o /dev/null -w "%{http_code}" http://127.0.0.1/health'), '200')
  // Re-running the same restore changes nothing.
  const again = await runbook('restore', ['--config', env, '--backup', id, '--yes', '--json'])
  assert.is(again.code, 0, again.out)
  assert.is(again.json.counts.changed, 0)
  assert.match(again.out, /already restored/)

  const u = await runbook('restore', ['--config', env, '--undo', '--yes'])
  assert.is(u.code, 0, u.out)
  assert.equal(state(), after)
  const u2 = await runbook('restore', ['--config', env, '--undo', '--yes', '--json'])
  assert.is(u2.code, 0, u2.out)
  assert.is(u2.json.counts.changed, 0, 'a second undo changes nothing')
})

test('drill: the latest backup restored into throwaway containers, checked, nothing left behind, live data untouched', async () => {
  const before = state()
  const r = await runbook('restore', ['--config', env, '--drill', '--latest', '--yes', '--json'])
  assert.is(r.code, 0, r.out)
  assert.match(r.out, /PostgreSQL: \d+ tables, \d+ rows, as in the dump; DuckDB: \d+ tables as in the manifest; app v1 healthy on the restored data/)
  assert.ok(/RTO .*download .*restore and checks/.test(r.out), r.out)
  assert.is(leftovers(h), '')
  assert.equal(state().pg, before.pg)
})

test('a corrupted backup: the drill fails, a restore refuses before touching anything', async () => {
  const [id] = await ids()
  const key = (await s3.keys(BUCKET)).find(k => k.includes(id) && k.endsWith('postgres.dump.age'))!
  await s3.client.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: Buffer.from('age-encryption.org/v1\nnot really\n') }))
  const d = await runbook('restore', ['--config', env, '--drill', '--backup', id, '--yes'])
  assert.is(d.code, 1, d.out)
  assert.match(d.stderr, /postgres\.dump\.age does not match its manifest .*the backup is damaged; nothing was restored/)
  assert.is(leftovers(h), '')
  const before = state()
  const r = await runbook('restore', ['--config', env, '--backup', id, '--yes'])
  assert.is(r.code, 1, r.out)
  assert.equal(state(), before)
})

test('refusals change nothing: wrong key, missing object, another app\'s manifest, bad input', async () => {
  const bk = await runbook('backup', ['--config', env, '--yes'])
  assert.is(bk.code, 0, bk.out)
  const id = (await ids()).pop()!
  const before = state()
  const wrongKey = join(h.dir, 'wrong.key')
  writeFileSync(wrongKey, `${await generateX25519Identity()}\n`)
  const r1 = await runbook('restore', ['--config', env, '--backup', id, '--yes'], { BACKUP_AGE_IDENTITY_FILE: wrongKey })
  assert.is(r1.code, 2, r1.out)
  assert.match(r1.stderr, /cannot be decrypted with the key in BACKUP_AGE_IDENTITY_FILE/)
  const r2 = await runbook('restore', ['--config', env, '--backup', id, '--yes'], { BACKUP_AGE_IDENTITY_FILE: '' })
  assert.is(r2.code, 2, r2.out)
  assert.match(r2.stderr, /is encrypted \(age, to age1.*\): set BACKUP_AGE_IDENTITY_FILE/)

  const roles = (await s3.keys(BUCKET)).find(k => k.includes(id) && k.endsWith('roles.sql.age'))!
  const manifestKey = roles.replace('roles.sql.age', 'manifest.json')
  const manifest = JSON.parse(await (await s3.client.send(new GetObjectCommand({ Bucket: BUCKET, Key: manifestKey }))).Body!.transformToString())
  await s3.client.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: roles }))
  const r3 = await runbook('restore', ['--config', env, '--backup', id, '--yes'])
  assert.is(r3.code, 1, r3.out)
  assert.match(r3.stderr, new RegExp(`Backup ${id} is missing roles\\.sql\\.age in s3://`))

  const other = manifestKey.replace(id, '20200101T000000Z')
  await s3.client.send(new PutObjectCommand({ Bucket: BUCKET, Key: other, Body: JSON.stringify({ ...manifest, id: '20200101T000000Z', app: 'billing' }) }))
  const r4 = await runbook('restore', ['--config', env, '--backup', '20200101T000000Z', '--yes'])
  assert.is(r4.code, 2, r4.out)
  assert.match(r4.stderr, /belongs to billing\/.*not app\//)
  await s3.client.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: other }))

  for (const [args, msg] of [
    [['--backup', 'x;rm -rf /'], /is not a backup id/],
    [['--backup', '20990101T000000Z'], /No backup 20990101T000000Z of app\//],
    [[], /No answer for "Restore which backup\?": pass --backup ID or --latest/],
    [['--undo', '--drill'], /Choose one of --undo, --drill and --to-host/],
  ] as const) {
    const r = await runbook('restore', ['--config', env, '--yes', ...args])
    assert.is(r.code, 2, r.out)
    assert.match(r.stderr, msg)
    assert.not.match(r.out, /\n\s+at /)
  }
  assert.equal(state(), before)
})

test('on a terminal: the backups are listed newest first (encrypted marked) and one is picked', async () => {
  assert.is((await runbook('backup', ['--config', env, '--yes'])).code, 0)
  const tmux = (...args: string[]) => spawnSync('tmux', ['-L', 'opsbook-restore-tty', ...args], { encoding: 'utf8' })
  const screen = () => tmux('capture-pane', '-p', '-J', '-t', 'r', '-S', '-100').stdout
  const cmd = `${join(ROOT, 'node_modules/.bin/tsx')} ${join(ROOT, 'runbooks/restore.ts')} --config ${env} --dry-run; echo EXIT=$?; sleep 600`
  assert.is(tmux('new-session', '-d', '-s', 'r', '-x', '200', '-y', '40', '-c', ROOT, cmd).status, 0)
  try {
    await waitFor('the backup list', () => /Restore which backup\?/.test(screen()), 60_000)
    const newest = (await ids()).pop()!
    assert.match(screen(), new RegExp(`${newest} .* app v1 .* MiB  encrypted`))
    tmux('send-keys', '-t', 'r', 'Enter')
    await waitFor('the dry run', () => /EXIT=\d+/.test(screen()), 120_000)
    assert.match(screen(), /EXIT=0/, screen())
    // listr2 cuts long titles at the terminal's width; the recap line is whole.
    assert.match(screen(), new RegExp(`Backup ${newest} staged`))
    assert.match(screen(), /RECAP .* would_change=[1-9]/)
  } finally {
    tmux('kill-server')
  }
})

test('disaster: A is destroyed; B is rebuilt from the settings file, the bucket and the key', async () => {
  const bk = await runbook('backup', ['--config', env, '--yes', '--json'])
  assert.is(bk.code, 0, bk.out)
  const atBackup = fingerprint(h, 'app')
  const duckAtBackup = app(h, '/duckdb/kinds').kinds
  h.vps.destroy()
  b = await startVps('it-restore-b', h.key)
  appendFileSync(h.knownHosts, b.knownHosts)
  const r = await runbook('restore', ['--config', env, '--to-host', `127.0.0.1:${b.port}`, '--latest', '--yes', '--json'])
  assert.is(r.code, 0, r.out + b.exec('journalctl --no-pager | tail -40').stdout)
  const report = r.json.steps.at(-1).detail as string
  assert.match(report, /^RTO .*provision .*deploy .*restore .*; RPO /)
  console.log(`      ${report}`)
  const slowest = [...(r.json.steps as { title: string; ms: number }[])].sort((x: { ms: number }, y: { ms: number }) => y.ms - x.ms).slice(0, 5)
  console.log(`      slowest steps: ${slowest.map(x => `${x.title.slice(0, 60)} ${(x.ms / 1000).toFixed(1)} s`).join('; ')}`)
  const onB: Host = { ...h, vps: b, sh: s => { const x = b.exec(s); if (x.status !== 0) throw new Error(x.stderr); return x.stdout } }
  assert.is(fingerprint(onB, 'app'), atBackup)
  assert.equal(app(onB, '/duckdb/kinds').kinds, duckAtBackup)
  assert.is(onB.sh(`curl -s http://127.0.0.1/health`).trim(), 'ok')
})

test('teardown', () => { h.vps.destroy(); b?.destroy(); s3.destroy() })

test.run()
