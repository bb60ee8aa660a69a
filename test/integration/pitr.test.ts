// Point-in-time recovery against real parts: pgBackRest (Debian's package, in an image
// derived on the VPS from the stack's PostgreSQL image) archiving WAL into a real S3 API
// (moto behind a TLS front: pgBackRest speaks only https to S3). One VPS for every case.
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs'
import { appImage, nginxImage, postgresImage } from '../images.ts'
import { startS3, type S3 } from '../s3.ts'
import { ensureProvisionedImage } from '../provisioned.ts'
import { loadImages, startVps, type Vps } from '../testbed.ts'
import { freshHost, runbook, waitFor, type Host } from './helpers.ts'
import { psql } from './data.ts'

const CIPHER = 'pitr-cipher-pass-7f3a'
let h: Host, s3: S3, b: Vps | undefined
const rows = () => Number(psql(h, 'select count(*) from ticks'))
const auditCount = () => Number(h.sh('wc -l < /var/log/opsbook/audit.log').trim())
const archived = () => psql(h, "select coalesce(last_archived_wal, '') from pg_stat_archiver")
const dbContainer = () => h.sh('docker ps -q --filter label=com.docker.compose.service=db').trim()

/** A row with its commit time every 100 ms, in one psql session on the host, until stopWriter(). */
function startWriter() {
  psql(h, 'create table if not exists ticks (n serial primary key, at timestamptz not null default clock_timestamp()); create table if not exists stop_writer (x int); delete from stop_writer')
  h.sh(`nohup docker exec ${dbContainer()} psql -X -U app -d app -c "do \\$\\$ begin loop insert into ticks default values; commit; exit when exists (select 1 from stop_writer); perform pg_sleep(0.1); end loop; end \\$\\$" >/dev/null 2>&1 &`)
}
const stopWriter = async () => { psql(h, 'insert into stop_writer values (1)'); await new Promise(r => setTimeout(r, 500)) }

/**
 * Ends the current WAL segment and returns its name: the segment holding a record written
 * first, which our switch or archive_timeout's ends, whichever comes first. Naming what
 * pg_switch_wal returns instead was wrong when archive_timeout had switched just before
 * it: it did nothing and named the segment just begun, which an idle database finishes
 * only at its next checkpoint. That, not the product, was the store-down case's 270-280 s
 * wait (three runs running: the log showed the awaited segment's push begin 4.5 min later).
 */
function switchWal(on: Host): string {
  const seg = psql(on, "select pg_walfile_name(pg_logical_emit_message(false, 'opsbook-test', 'switch'))")
  psql(on, 'select pg_switch_wal()')
  return seg
}

/**
 * Switches WAL and waits until that segment is in the bucket. Right after the store was
 * down, PostgreSQL's archiver may be in its back-off (three failures, then it waits up to
 * 60 s), and a pgBackRest push begun in the outage may still be in its own retries: more time.
 */
async function archiveNow(ms = 120_000) {
  const seg = switchWal(h)
  const t0 = Date.now()
  await waitFor(`WAL ${seg} archived`, () => archived() >= seg, ms).catch(e => { throw new Error(`${(e as Error).message}: ${archiverState()}`) })
  // Once the store-down case's one took 280 s after the catch-up itself took 0.6 s: say why when it happens.
  if (Date.now() - t0 > 60_000) console.log(`      WAL ${seg} archived after ${((Date.now() - t0) / 1000).toFixed(0)} s: ${archiverState().replace(/\s+/g, ' ').slice(0, 1500)}`)
}

/** What PostgreSQL's archiver last did, and its log's archive lines: for a timed-out wait. */
const archiverState = () => `${psql(h, 'select last_archived_wal, last_archived_time, last_failed_wal, failed_count, last_failed_time, now() from pg_stat_archiver')}\n` +
  // pgBackRest's option list is long and says nothing here: cut, so 1500 characters hold the last pushes' times.
  h.sh(`docker logs --tail 400 ${dbContainer()} 2>&1 | grep -iE 'archiv|pgbackrest|ERROR' | sed -E 's/ --[a-z0-9-]+=[^ ]*//g' | tail -n 15 || true`)

test('setup: deploy with PITR=on derives the image, archives WAL to S3 over TLS and takes a full base backup; a re-run changes nothing', async () => {
  const [pg, ngx, v1] = [await postgresImage(), await nginxImage(), await appImage('v1')]
  ;[h, s3] = await Promise.all([freshHost('pitr', {}, { provisioned: true, images: [pg, ngx, v1] }), startS3({ tls: true })])
  await s3.createBucket('pitr')
  appendFileSync(h.envFile, [
    'APP_IMAGE=opsbook/app', `DB_IMAGE=${pg}`, `PROXY_IMAGE=${ngx}`, 'DB_PASSWORD=pitr-db-password-3', 'IMAGE_SOURCE=local',
    'BACKUP_DEST=s3://pitr/prod', `S3_ENDPOINT=${s3.endpoint}`, 'AWS_ACCESS_KEY_ID=test', 'AWS_SECRET_ACCESS_KEY=test-secret-key',
    'PITR=on', 'PITR_MAX_LAG=10s', `PITR_CIPHER_PASS=${CIPHER}`, `PITR_S3_ENDPOINT=${s3.hostEndpoint}`, `PITR_S3_CA_FILE=${s3.caFile}`,
    'BACKUP_RPO=off', 'DRILL_MAX_AGE=off', '',
  ].join('\n'))
  const d = await runbook('deploy', ['--config', h.envFile, '--version', 'v1', '--json'])
  assert.is(d.code, 0, d.out)
  const state = (prefix: string) => d.json.steps.find((s: { title: string }) => s.title.startsWith(prefix))?.state
  for (const s of ['PITR settings', 'PostgreSQL image with pgbackrest', 'WAL archived to the bucket', 'A full base backup']) assert.is(state(s), 'changed', s)
  for (const secret of [CIPHER, 'test-secret-key', 'pitr-db-password-3']) assert.not.ok(d.out.includes(secret), 'no secret printed')
  assert.is(h.sh("stat -c '%a' /opt/app/pitr/secrets.env").trim(), '600')
  assert.ok((await s3.keys('pitr')).some(k => k.startsWith('prod/pitr/app/test/archive/main/')), 'WAL in the bucket')
  assert.is(state('Base backups scheduled'), 'changed')
  assert.is(h.sh('systemctl is-enabled opsbook-pitr-app-full.timer opsbook-pitr-app-diff.timer').trim(), 'enabled\nenabled')
  const again = await runbook('deploy', ['--config', h.envFile, '--version', 'v1', '--json'])
  assert.is(again.code, 0, again.out)
  assert.is(again.json.counts.changed, 0, again.out)
})

test('the daily timer\'s service takes a differential base backup', async () => {
  h.sh('systemctl start opsbook-pitr-app@diff.service')
  const info = JSON.parse(h.sh('cd /opt/app && docker compose -p app exec -T -u postgres db pgbackrest --stanza=main info --output=json'))
  assert.equal(info[0].backup.map((x: { type: string }) => x.type), ['full', 'diff'])
})

test('status: archiving is current; --check exits 0', async () => {
  const s = await runbook('status', ['--config', h.envFile, '--check'])
  assert.is(s.code, 0, s.out)
  // A segment may be on its way right after the diff backup's WAL switch: --check (exit 0) is the verdict.
  assert.match(s.out, /PITR: WAL archiving .*last WAL [0-9A-F]{24}\S* archived \d+ s ago; (none waiting|\d+ segment)/, s.out)
})

let T = '', atT = 0, total = 0
test('restore --to-time T on the same host: every row up to T, none after; --undo brings the rest back', async () => {
  startWriter()
  await waitFor('rows', () => rows() > 20, 60_000)
  await new Promise(r => setTimeout(r, 1500))
  // T halfway between two rows (one every 100 ms): recovery compares commit times, and a
  // row's "at" is taken just before its commit, so a T right at a row could fall between.
  T = psql(h, "select to_char((max(at) + interval '50 milliseconds') at time zone 'utc', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' from ticks")
  await new Promise(r => setTimeout(r, 2000))
  await stopWriter()
  atT = Number(psql(h, `select count(*) from ticks where at <= '${T}'`))
  total = rows()
  assert.ok(total > atT && atT > 0, `${atT} rows by T, ${total} in all`)
  await archiveNow()
  // The drill first: the archive to T in a throwaway container; the live data is untouched.
  const drill = await runbook('restore', ['--config', h.envFile, '--drill', '--to-time', T, '--yes', '--json'])
  assert.is(drill.code, 0, drill.out)
  const found = drill.json.steps[0].detail as string
  assert.match(found, /reached .*last transaction replayed 20\d\d-.*; \d+ tables, \d+ rows .*removed$/)
  assert.is(Number(/public\.ticks (\d+)/.exec(found)?.[1]), atT, found)
  console.log(`      drill: ${/last transaction replayed .*WAL replay [\d.]+ s/.exec(found)?.[0]}`)
  assert.is(rows(), total)
  assert.is(h.sh('docker ps -aq --filter name=app-pitr-drill; docker volume ls -q --filter name=app_pitr-drill').trim(), '')
  const before = auditCount()
  const r = await runbook('restore', ['--config', h.envFile, '--to-time', T, '--yes', '--json'])
  assert.is(r.code, 0, r.out)
  assert.match(r.out, /reached .*last transaction replayed 20\d\d-/)
  console.log(`      ${/last transaction replayed [^;]*; pgbackrest restore [\d.]+ s, WAL replay [\d.]+ s/.exec(r.out)?.[0]}`)
  assert.is(Number(psql(h, `select count(*) from ticks where at <= '${T}'`)), atT)
  assert.is(Number(psql(h, `select count(*) from ticks where at > '${T}'`)), 0)
  assert.is(h.sh('curl -s -o /dev/null -w "%{http_code}" http://127.0.0.1/health'), '200')
  assert.is(auditCount(), before + 1)
  const tu = Date.now()
  const u = await runbook('restore', ['--config', h.envFile, '--undo', '--yes'])
  console.log(`      undo ${((Date.now() - tu) / 1000).toFixed(1)} s`)
  assert.is(u.code, 0, u.out)
  assert.match(u.out, /the data from before the restore is live again, on timeline \d+ \(past the restore's/)
  assert.is(rows(), total)
  console.log(`      step times: ${[['drill', drill], ['restore', r]].map(([n, x]) => `${n}: ${(x as typeof r).json.steps.map((s: { title: string; ms: number }) => `${s.title.slice(0, 40)} ${(s.ms / 1000).toFixed(1)} s`).join(', ')}`).join('; ')}`)
  const u2 = await runbook('restore', ['--config', h.envFile, '--undo', '--yes', '--json'])
  assert.is(u2.json.counts.changed, 0, 'a second undo changes nothing')
})

test('refused before anything changes: a time in the future, before the oldest base backup, without a zone', async () => {
  const before = rows()
  for (const [t, re] of [
    ['2999-01-01 00:00:00+00', /is in the future/],
    ['2001-01-01 00:00:00+00', /is before the oldest base backup/],
    ['2026-11-25 14:02:00', /is not a time with its zone/],
  ] as const) {
    const r = await runbook('restore', ['--config', h.envFile, '--to-time', t, '--yes'])
    assert.is(r.code, 2, r.out)
    assert.match(r.stderr, re)
  }
  for (const [args, re] of [
    [['--to-time', 'latest', '--latest'], /--to-time restores from the WAL archive, not from a pg_dump backup/],
    [['--to-time', 'latest', '--version', 'v1'], /--version goes with --to-host and --to-time/],
  ] as const) {
    const r = await runbook('restore', ['--config', h.envFile, ...args, '--yes'])
    assert.is(r.code, 2, r.out)
    assert.match(r.stderr, re)
  }
  assert.is(rows(), before)
})

test('the store down for a while: status warns and --check fails; back up, the archive catches up with no gap', async () => {
  s3.stop()
  let paused = true
  try {
    psql(h, 'insert into ticks default values')
    const waiting = psql(h, 'select pg_walfile_name(pg_switch_wal())')
    psql(h, 'insert into ticks default values; select pg_switch_wal()')
    await new Promise(r => setTimeout(r, 15_000))
    const s = await runbook('status', ['--config', h.envFile, '--check'])
    assert.is(s.code, 1, s.out)
    assert.match(s.out, /archiving (behind: \d+ segment\(s\) \(\d+ MiB\) wait in pg_wal|FAILING)/)
    s3.start()
    paused = false
    // The database is written to while it catches up, as a live one is: archive_timeout then
    // ends a segment every 10 s, and each new segment wakes PostgreSQL's archiver from the
    // minute it waits after three failed pushes. (The idle test database's catch-up took 25 s
    // in one run and 280 s in the next; a slow one prints the archiver's state to say why.)
    const back = Date.now()
    let wrote = 0
    await waitFor(`${waiting} archived after the store came back`, () => {
      if (Date.now() - wrote > 1000) { psql(h, 'insert into ticks default values'); wrote = Date.now() }
      return archived() >= waiting
    }, 300_000).catch(e => {
      throw new Error(`${(e as Error).message}: ${archiverState()}`)
    })
    const took = (Date.now() - back) / 1000
    console.log(`      archived ${took.toFixed(1)} s after the store came back${took > 60 ? `: ${archiverState().replace(/\s+/g, ' ').slice(0, 1500)}` : ''}`)
  } finally {
    if (paused) s3.start()
  }
  await archiveNow(300_000)
  const check = h.sh('cd /opt/app && docker compose -p app exec -T -u postgres db pgbackrest --stanza=main verify 2>&1; echo rc=$?')
  assert.match(check, /rc=0/, check)
  const s = await runbook('status', ['--config', h.envFile, '--check'])
  assert.is(s.code, 0, s.out)
})

test('a WAL segment missing from the archive: the drill names it and the latest time reachable; the live data is untouched', async () => {
  // r1 in segment S1, r2 in S2, r3 in S3; T after r3; S2 taken out of the bucket.
  const inserted = () => psql(h, 'insert into ticks default values returning at').split('\n')[0]
  const r1 = inserted(); switchWal(h)
  inserted(); const gap = switchWal(h)
  inserted()
  const T = psql(h, "select to_char((clock_timestamp() + interval '50 milliseconds') at time zone 'utc', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
  await archiveNow()
  const key = (await s3.keys('pitr')).find(k => k.includes(`/${gap}-`))
  assert.ok(key, `${gap} in the bucket`)
  const body = await (await s3.client.send(new GetObjectCommand({ Bucket: 'pitr', Key: key }))).Body!.transformToByteArray()
  await s3.client.send(new DeleteObjectCommand({ Bucket: 'pitr', Key: key }))
  const before = rows()
  try {
    const d = await runbook('restore', ['--config', h.envFile, '--drill', '--to-time', T, '--yes'])
    assert.is(d.code, 1, d.out)
    const reach = new RegExp(`WAL segment ${gap} is missing from the archive; the latest time reachable is (\\S+ [\\d:.]+\\+00)`).exec(d.out)?.[1]
    assert.ok(reach, d.out)
    // r1's commit or a later one before the gap (autovacuum's, say): not past T.
    const at = (x: string) => Date.parse(x.replace(' ', 'T').replace(/\+00$/, 'Z'))
    assert.ok(at(reach) >= at(r1) - 1 && at(reach) < at(T), `${reach} between ${r1} and ${T}`)
    console.log(`      ${/WAL segment [^\n]*?reachable is [^(]*/.exec(d.out)?.[0]}`)
    assert.is(rows(), before)
    assert.is(h.sh('docker ps -aq --filter name=app-pitr-drill; docker volume ls -q --filter name=app_pitr-drill').trim(), '', 'the drill cleaned up')
  } finally {
    // Put back for the disaster case, which replays through it.
    await s3.client.send(new PutObjectCommand({ Bucket: 'pitr', Key: key, Body: body }))
  }
})

test('disaster: A is destroyed while written to; B is rebuilt with --to-time latest (a wrong passphrase first: refused); rows lost are the last seconds only', async () => {
  // B starts while A is written to. It comes provisioned with the stack's images (the bare
  // host's provisioning in a disaster is restore.test's); pgBackRest's image is derived there.
  const bReady = ensureProvisionedImage(h.key).then(image => startVps('it-pitr-b', h.key, { image }))
    .then(async v => { b = v; await loadImages(v, [await postgresImage(), await nginxImage(), await appImage('v1')]); return v })
  bReady.catch(() => {})
  startWriter()
  await waitFor('rows', () => rows() > total + 50, 60_000)
  await new Promise(r => setTimeout(r, 12_000))
  const onA = rows()
  const destroyedAt = Date.now()
  h.vps.destroy()
  b = await bReady
  appendFileSync(h.knownHosts, b.knownHosts)
  const to = ['--to-host', `127.0.0.1:${b.port}`, '--to-time', 'latest', '--version', 'v1', '--yes', '--json']
  const wrong = `${h.envFile}.wrong`
  writeFileSync(wrong, readFileSync(h.envFile, 'utf8').replace(CIPHER, 'not-the-passphrase'))
  const bad = await runbook('restore', ['--config', wrong, ...to])
  assert.is(bad.code, 1, bad.out)
  // pgBackRest 2.55 reports a wrong passphrase as garbage (FormatError) on one host and as a missing stanza path on a new one.
  assert.match(bad.out, /PITR_CIPHER_PASS does not open the PITR archive|pgbackrest cannot read the PITR archive .*PITR_CIPHER_PASS/, bad.out)
  const r = await runbook('restore', ['--config', h.envFile, ...to])
  assert.is(r.code, 0, r.out + b.exec('journalctl --no-pager | tail -40').stdout)
  const report = r.json.steps.at(-1).detail as string
  console.log(`      ${report}`)
  const onB: Host = { ...h, vps: b, sh: s => { const x = b!.exec(s); if (x.status !== 0) throw new Error(x.stderr); return x.stdout } }
  const last = Number(psql(onB, 'select (extract(epoch from max(at)) * 1000)::bigint from ticks'))
  const onB_ = Number(psql(onB, 'select count(*) from ticks'))
  const rpo = (destroyedAt - last) / 1000
  console.log(`      DR RPO ${rpo.toFixed(1)} s (PITR_MAX_LAG 10 s): ${onA - onB_} of about ${onA} rows lost (counted on A just before it went)`)
  assert.ok(onB_ > total, `${onB_} rows on B, ${total} before the writer started again: B followed the live timeline`)
  assert.ok(last <= destroyedAt, 'nothing on B is newer than A')
  assert.ok(rpo < 40, `RPO ${rpo} s: archive_timeout is 10 s`)
  assert.is(onB.sh('curl -s http://127.0.0.1/health').trim(), 'ok')
  // B archives into the same repository (a new timeline) and a re-run changes nothing.
  const seg = switchWal(onB)
  await waitFor(`${seg} archived from B`, () => psql(onB, "select coalesce(last_archived_wal, '') from pg_stat_archiver") >= seg, 120_000)
  const again = await runbook('restore', ['--config', h.envFile, ...to])
  assert.is(again.code, 0, again.out)
  assert.match(again.out, /already holds a database; nothing restored over it/)
})

test('teardown', () => { h.vps.destroy(); b?.destroy(); s3.destroy() })

test.run()
