// PITR's pure parts: settings, the files it writes, the commands, the time target.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { loadConfig } from '../../lib/config.ts'
import { archiveSettings, describeArchiving, parseArchiver, parseInfo, parseSettings, settingsToChange, parseTargetTime, pitrCommands, pitrOf, refuseTarget, renderConf, renderSecrets, targetText } from '../../lib/data/pitr.ts'
import { archiveUnreadable, describeCounts, missingWal, pitrRestoreCommands } from '../../lib/data/pitr-restore.ts'
import { pitrScheduleFiles } from '../../lib/data/pitr.ts'
import { stackOf } from '../../lib/stack/stack.ts'

const settings = (extra: Record<string, string>) => stackOf(loadConfig({ envFile: '/dev/null', environ: {
  SSH_HOST: 'vps.example.com', APP_IMAGE: 'registry.example.com/team/app', DB_PASSWORD: 'db-password-1', DB_IMAGE: 'postgres:17',
  BACKUP_DEST: 's3://backups/prod', AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE', AWS_SECRET_ACCESS_KEY: 's3-secret-key', PITR: 'on', PITR_CIPHER_PASS: 'cipher-pass-1', ...extra,
} }))

test('PITR=off: nothing; on: the repository in the bucket, under PREFIX/pitr/APP/ENV', () => {
  assert.is(pitrOf(settings({ PITR: 'off' })), undefined)
  const p = pitrOf(settings({ S3_ENDPOINT: 'https://minio.example.com:9000' }))!
  assert.equal([p.bucket, p.path, p.endpoint, p.port, p.uriStyle, p.maxLag], ['backups', '/prod/pitr/app/default', 'minio.example.com', 9000, 'path', 60])
  assert.is(pitrOf(settings({}))!.endpoint, 's3.us-east-1.amazonaws.com')
  assert.is(pitrOf(settings({}))!.uriStyle, 'host')
})

test('the database service runs its own image with pgbackrest; opsbook.yml says so', async () => {
  const st = settings({})
  assert.match(st.pitr!.image, /^opsbook-pitr\/app-db:[0-9a-f]{12}$/)
  assert.match(st.pitr!.dockerfile, /^FROM postgres:17\n/)
  const { renderOverride } = await import('../../lib/stack/stack.ts')
  assert.match(renderOverride(st), new RegExp(`\n  db:\n    image: ${st.pitr!.image}\n    env_file:\n      - path: pitr/secrets.env\n        required: true\n    volumes:\n      - ./pitr/conf:/etc/pgbackrest:ro\n`))
  assert.is(settings({ PITR: 'off' }).pitr, undefined)
})

test('PITR refuses what cannot work, in one sentence', () => {
  assert.throws(() => pitrOf(settings({ BACKUP_DEST: 'local' })), /needs BACKUP_DEST=s3:\/\/bucket\/prefix/)
  assert.throws(() => pitrOf(settings({ PITR_CIPHER_PASS: '' })), /needs PITR_CIPHER_PASS/)
  assert.throws(() => pitrOf(settings({ S3_ENDPOINT: 'http://127.0.0.1:5000' })), /is not https; .*PITR_S3_ENDPOINT/)
  assert.is(pitrOf(settings({ S3_ENDPOINT: 'http://127.0.0.1:5000', PITR_S3_ENDPOINT: 'https://moto:5443' }))!.endpoint, 'moto')
})

test('the settings file holds no secret; the secrets file holds them all', () => {
  const p = pitrOf(settings({ PITR_S3_CA_FILE: '/tmp/ca.pem' }))!
  const conf = renderConf(p, '/var/lib/postgresql/data', 'app')
  for (const s of ['s3-secret-key', 'cipher-pass-1', 'AKIDEXAMPLE']) assert.not.ok(conf.includes(s), s)
  assert.match(conf, /repo1-cipher-type=aes-256-cbc\n/)
  assert.match(conf, /repo1-storage-ca-file=\/etc\/pgbackrest\/ca.pem\n/)
  assert.match(conf, /\[main\]\npg1-path=\/var\/lib\/postgresql\/data\npg1-user=app\n/)
  assert.is(renderSecrets(p), 'PGBACKREST_REPO1_S3_KEY=AKIDEXAMPLE\nPGBACKREST_REPO1_S3_KEY_SECRET=s3-secret-key\nPGBACKREST_REPO1_CIPHER_PASS=cipher-pass-1\n')
})

test('archiving: ALTER SYSTEM with quoted values; commands run as postgres in the db service', () => {
  const st = settings({ PITR_MAX_LAG: '30s' })
  const p = pitrOf(st)!
  assert.equal(archiveSettings(p).archive_timeout, '30s')
  assert.ok(pitrCommands.alterSystem(p).includes("alter system set archive_command = 'pgbackrest --stanza=main archive-push %p'"))
  assert.match(pitrCommands.psql(st, pitrCommands.alterSystem(p)), /-d app -c 'alter system set wal_level = '\\''replica'\\''' -c /)
  assert.is(pitrCommands.pgbackrest(st, 'info --output=json'), "cd /opt/app && docker compose -p app exec -T -u postgres db pgbackrest --stanza=main info --output=json")
})

test('--to-time: a time with its zone, or latest; refused before the oldest base backup or in the future', () => {
  assert.is(parseTargetTime('latest'), undefined)
  const t = parseTargetTime('2026-11-25 14:02:00+00')!
  assert.is(t, Date.parse('2026-11-25T14:02:00Z'))
  assert.is(parseTargetTime('2026-11-25T15:02:00+01:00'), t)
  assert.is(parseTargetTime('2026-11-25 14:02Z'), t)
  assert.is(targetText(t + 123), '2026-11-25 14:02:00.123+00')
  assert.throws(() => parseTargetTime('2026-11-25 14:02:00'), /is not a time with its zone/)
  assert.throws(() => parseTargetTime('yesterday'), /is not a time with its zone/)
  assert.throws(() => parseTargetTime("2026-11-25 14:02:00+00'; drop"), /is not a time with its zone/)
  const info = parseInfo(JSON.stringify([{ name: 'main', status: { code: 0, message: 'ok' }, backup: [
    { label: '20261125-130000F', type: 'full', timestamp: { start: t / 1000 - 3700, stop: t / 1000 - 3600 } },
  ], archive: [{ min: '000000010000000000000001', max: '000000010000000000000009' }] }]))
  assert.is(info.walMax, '000000010000000000000009')
  assert.is(refuseTarget(t, info, t + 1000), undefined)
  assert.match(refuseTarget(t + 5000, info, t + 1000)!, /is in the future/)
  assert.match(refuseTarget(t - 7200_000, info, t)!, /is before the oldest base backup/)
  assert.match(refuseTarget(t, parseInfo('[]'), t)!, /no base backup/)
})

test('archiving settings: only what differs is set; archive_mode and wal_level need a restart', () => {
  const p = pitrOf(settings({}))!
  const found = parseSettings('archive_command|(disabled)|f\narchive_mode|off|f\narchive_timeout|0|f\ndata_directory|/var/lib/postgresql/data|f\nwal_level|replica|f\n')
  assert.equal(settingsToChange(p, found), { change: ['archive_mode', 'archive_command', 'archive_timeout'], restart: true })
  const done = parseSettings('archive_command|pgbackrest --stanza=main archive-push %p|f\narchive_mode|on|f\narchive_timeout|60|f\nwal_level|replica|f\n')
  assert.equal(settingsToChange(p, done), { change: [], restart: false })
  assert.equal(settingsToChange(p, { ...done, archive_mode: { setting: 'on', pending: true } }), { change: [], restart: true })
})

test('archiving status: a finished segment waiting longer than the lag warns; failures say when; a reset archiver is not "behind"', () => {
  const now = 1_800_000_000
  const a = parseArchiver(`000000010000000000000007|${now - 30}|0||${now}|0|`)!
  assert.equal(describeArchiving(a, 60), { warn: false, text: 'last WAL 000000010000000000000007 archived 30 s ago; none waiting' })
  const behind = parseArchiver(`000000010000000000000007|${now - 300}|0||${now}|10|${now - 290}`)!
  assert.equal(describeArchiving(behind, 60), { warn: true, text: 'archiving behind: 10 segment(s) (160 MiB) wait in pg_wal, the oldest since 290 s ago (PITR_MAX_LAG 60 s); last WAL 000000010000000000000007 archived 300 s ago' })
  assert.not.ok(describeArchiving(parseArchiver(`|||0|${now}|1|${now - 5}`)!, 60).warn, 'one segment for 5 s: on its way')
  const failing = parseArchiver(`000000010000000000000007|${now - 300}|12|${now - 5}|${now}|2|${now - 100}`)!
  assert.match(describeArchiving(failing, 60).text, /^archiving FAILING \(12 failed attempts, the last 5 s ago; 2 segment\(s\) \(32 MiB\) wait in pg_wal, the oldest since 100 s ago\)/)
  assert.is(parseArchiver(''), undefined)
  // df's line for PGDATA: the disk's fill is shown, and warns past 85% whatever archiving does.
  const df = (pct: number) => `000000010000000000000007|${now - 30}|0||${now}|0|\n/dev/sda1 40000000 30000000 ${40000000 - 30000000} ${pct}% /var/lib/postgresql/data`
  assert.equal(describeArchiving(parseArchiver(df(75))!, 60), { warn: false, text: 'last WAL 000000010000000000000007 archived 30 s ago; none waiting; the disk is 75% full (9.5 GiB left)' })
  assert.match(describeArchiving(parseArchiver(df(91))!, 60).text, /^disk 91% full \(9\.5 GiB left\) under PGDATA: PostgreSQL stops when it fills; free space\. last WAL/)
  assert.ok(describeArchiving(parseArchiver(df(91))!, 60).warn)
})

test('base backups on timers: a script (full | diff) run by a service template, a weekly and a daily timer', () => {
  const files = pitrScheduleFiles(settings({}))
  assert.equal(files.map(f => `${f.spec.path} ${f.spec.mode}`), [
    '/usr/local/sbin/opsbook-pitr-app 0755', '/etc/systemd/system/opsbook-pitr-app@.service 0644',
    '/etc/systemd/system/opsbook-pitr-app-full.timer 0644', '/etc/systemd/system/opsbook-pitr-app-diff.timer 0644',
  ])
  assert.match(files[0].content, /case "\$1" in full\|diff\) ;;/)
  assert.match(files[0].content, /\ncd \/opt\/app && docker compose -p app exec -T -u postgres db pgbackrest --stanza=main backup --type="\$1"\n/)
  assert.match(files[1].content, /ExecStart=\/usr\/local\/sbin\/opsbook-pitr-app %i\n/)
  assert.match(files[2].content, /OnCalendar=Sun \*-\*-\* 01:30:00\n.*\nPersistent=true\nUnit=opsbook-pitr-app@full\.service/)
  assert.match(files[3].content, /OnCalendar=Mon\.\.Sat \*-\*-\* 01:30:00/)
  for (const f of files) assert.not.ok(/cipher-pass-1|s3-secret-key/.test(f.content), 'no secret in a unit')
})

test('restore from the archive: pgbackrest in a throwaway container; a drill archives nothing; a new host adopts the volume as compose would', () => {
  const st = settings({})
  const into = pitrRestoreCommands.restoreInto(st, 'app_pitr-drill', '/var/lib/postgresql/data', Date.parse('2026-11-25T14:02:00Z'), { archiveOff: true })
  assert.match(into, /--env-file \/opt\/app\/pitr\/secrets\.env -v \/opt\/app\/pitr\/conf:\/etc\/pgbackrest:ro -v app_pitr-drill:\/var\/lib\/postgresql\/data --entrypoint pgbackrest .* --stanza=main restore --type=time '--target=2026-11-25 14:02:00\.000\+00' --target-action=promote --archive-mode=off$/)
  assert.match(pitrRestoreCommands.restoreInto(st, 'v', '/d', undefined), / --stanza=main restore$/, 'latest: no --target-action (pgBackRest refuses it without --type)')
  assert.not.match(pitrRestoreCommands.drill.start(st, 'app-pitr-drill', 'app_pitr-drill', '/d'), /--network|-p /, 'off the stack\'s network, no port')
  assert.match(pitrRestoreCommands.adopt(st, 'dbdata', 'app_dbdata', 'app_pitr-restoring'), /docker volume create --label com\.docker\.compose\.project=app --label com\.docker\.compose\.volume=dbdata app_dbdata/)
})

test('a drill names what it found; a missing WAL segment names the latest time reachable; a wrong passphrase is said so', () => {
  assert.is(describeCounts('public.stop_writer 1\npublic.ticks 152\n'), '2 tables, 153 rows (public.ticks 152, public.stop_writer 1)')
  assert.is(describeCounts(''), '0 tables, 0 rows')
  const log = [
    'LOG:  starting point-in-time recovery to 2026-11-25 14:02:00+00',
    'LOG:  restored log file "000000010000000000000004" from archive',
    'ERROR: [104]: archive-get command encountered error(s): unable to find 000000010000000000000005 in the archive',
    'LOG:  last completed transaction was at log time 2026-11-25 13:58:41.12345+00',
    'FATAL:  recovery ended before configured recovery target was reached',
  ].join('\n')
  assert.is(missingWal(log), 'WAL segment 000000010000000000000005 is missing from the archive; the latest time reachable is 2026-11-25 13:58:41.12345+00 (restore.ts --to-time with that time, or earlier)')
  assert.is(missingWal('LOG: redo done\n'), undefined)
  assert.match(archiveUnreadable("ERROR: [095]: unable to load info file '/prod/archive/main/archive.info': CryptoError: cipher header invalid", 'x'), /^PITR_CIPHER_PASS does not open the PITR archive/)
  // pgbackrest info exits 0 when the stanza cannot be read: its status says so.
  const info = parseInfo(JSON.stringify([{ name: 'main', status: { code: 99, message: 'other' }, repo: [{ key: 1, status: { code: 99, message: '[CryptoError] cipher header invalid' } }] }]))
  assert.is(info.error, 'other: [CryptoError] cipher header invalid')
  // What pgBackRest 2.55 says, measured: the wrong passphrase decrypts backup.info to garbage.
  const garbage = parseInfo(JSON.stringify([{ name: 'main', status: { code: 99, message: 'other' }, repo: [{ key: 1, status: { code: 99, message: "[FormatError] unable to load info file '/p/backup.info' or '/p/backup.info.copy':\nFormatError: key/value found outside of section at line 1: 1\u0001\u00ffH" } }] }]))
  assert.is(garbage.error, "other: [FormatError] unable to load info file '/p/backup.info' or '/p/backup.info.copy':")
  assert.match(archiveUnreadable(garbage.error!, 'x'), /^PITR_CIPHER_PASS does not open the PITR archive/)
  assert.is(parseInfo(JSON.stringify([{ name: 'main', status: { code: 2, message: 'no valid backups' } }])).error, undefined)
  assert.match(archiveUnreadable('ERROR: [039]: HostConnectError: unable to connect', 'check it.'), /^pgbackrest cannot read the PITR archive \(ERROR: \[039\]: HostConnectError: unable to connect\): check it\.$/)
})

test.run()
