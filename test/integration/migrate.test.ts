// Migrations that can be undone, on one provisioned VPS with the built-in stack and the
// test app's migrations (test/fixtures/app/migrate.js, one list per release, each
// statement committed on its own): v1 creates items, v2 adds and backfills a column, v4
// fails half-way. Updates back PostgreSQL up first; rollbacks past v2 go code only,
// down, or restore; status says how old the newest backup and drill are.
import { appendFileSync, readFileSync, renameSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { appImage, nginxImage, postgresImage } from '../images.ts'
import { startLoad } from '../load.ts'
import { docker } from '../testbed.ts'
import { psql as psqlOn } from './data.ts'
import { freshHost, runbook, waitFor, type Host } from './helpers.ts'

let h: Host, url: string, backups: string
const DB_PASSWORD = 'migrate-db-password-7'
const psql = (sql: string) => psqlOn(h, sql)
const serving = async () => (await (await fetch(url)).json()).version
const columns = () => psql("select string_agg(column_name, ',' order by ordinal_position) from information_schema.columns where table_name = 'items'")
const itemsSum = () => psql("select count(*) || ' ' || md5(string_agg(x::text, '' order by id)) from items x")
const migrations = () => JSON.parse(h.sh('cat /opt/app/migrations.json')) as { version: string; state: string; backup?: string; at?: string }[]
const manifest = (id: string) => JSON.parse(readFileSync(join(backups, 'app', 'test', id, 'manifest.json'), 'utf8'))
const auditCount = () => Number(h.sh('wc -l < /var/log/opsbook/audit.log').trim())
/** The backup id a text names ("backup 20261128T101500Z"). */
const backupNamed = (out: string) => /backup (\d{8}T\d{6}Z)/.exec(out)?.[1]
/** A step of a --json run, by its title: state and detail. */
const step = (r: { json?: any; out: string }, title: RegExp): { state: string; detail?: string } => {
  const s = r.json?.steps?.find((x: { title: string }) => title.test(x.title))
  if (!s) throw new Error(`no step ${title} in: ${r.out}`)
  return s
}

test('setup: a provisioned VPS, images v1, v2 and v4 (failing migration), MIGRATE_COMMAND', async () => {
  const [pg, ngx] = [await postgresImage(), await nginxImage()]
  const images = [await appImage('v1'), await appImage('v2'), await appImage('v4')]
  h = await freshHost('migrate', {}, { provisioned: true, images: [pg, ngx, ...images] })
  backups = join(h.dir, 'backups')
  appendFileSync(h.envFile, [
    'APP_IMAGE=opsbook/app', `DB_IMAGE=${pg}`, `PROXY_IMAGE=${ngx}`, `DB_PASSWORD=${DB_PASSWORD}`, 'IMAGE_SOURCE=local',
    'HEALTH_TIMEOUT=15', 'DRAIN_SECONDS=1', 'MIGRATE_COMMAND=node /app/migrate.js', 'MIGRATE_DOWN_COMMAND=node /app/migrate.js down', `BACKUP_DIR=${backups}`, '',
  ].join('\n'))
  url = `http://127.0.0.1:${h.vps.httpPort}/`
})

test('deploy v1: its migration runs with no backup before it (the database has no tables yet)', async () => {
  const r = await runbook('deploy', ['--config', h.envFile, '--version', 'v1', '--json'])
  assert.is(r.code, 0, r.out)
  assert.equal(step(r, /backed up before the migration for v1/), { ...step(r, /backed up before the migration for v1/), state: 'skipped', detail: 'the database has no tables yet: nothing to back up' })
  assert.is(columns(), 'id,name')
  assert.equal(migrations().map(m => `${m.version}:${m.state}:${m.backup ?? '-'}`), ['v1:done:-'])
})

let v2Backup: string
test('update to v2 under load: PostgreSQL is backed up before the migration runs; 0 failed requests', async () => {
  const load = startLoad(url), fresh = startLoad(url, { workers: 2, fresh: true })
  await waitFor('load to start', () => load.result().ok > 20 && fresh.result().ok > 20)
  const r = await runbook('update', ['--config', h.envFile, '--version', 'v2', '--json'])
  await new Promise(res => setTimeout(res, 300))
  const [l, f] = [await load.stop(), await fresh.stop()]
  assert.is(r.code, 0, r.out)
  assert.is(l.failed + f.failed, 0, `${l.failed + f.failed} failed of ${l.ok + f.ok}: ${[...l.errors, ...f.errors].join(', ')}`)
  assert.is(await serving(), 'v2')
  const backedUp = step(r, /backed up before the migration for v2/)
  assert.is(backedUp.state, 'changed')
  v2Backup = backupNamed(backedUp.detail ?? '')!
  assert.ok(v2Backup, `the run names the backup: ${r.out}`)
  const m = manifest(v2Backup)
  assert.is(m.note, 'before migration to v2')
  assert.ok(Date.parse(m.keepUntil) - Date.now() > 29 * 86400_000, 'kept MIGRATION_BACKUP_DAYS (30)')
  // The backup was complete before the migration's first statement began.
  const started = psql("select to_char(started_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') from schema_migrations where version = 'v2'")
  assert.ok(m.finishedAt < started, `backup finished ${m.finishedAt}, migration started ${started}`)
  // The dump itself has the table without the new column.
  docker(['cp', join(backups, 'app', 'test', v2Backup, 'postgres.dump'), `${h.vps.container}:/root/pre.dump`])
  const schema = h.sh('docker exec -i app-db-1 pg_restore -s -t items -f - < /root/pre.dump')
  assert.match(schema, /CREATE TABLE public\.items/)
  assert.not.match(schema, /price/)
  assert.is(columns(), 'id,name,price')
  const rel = JSON.parse(h.sh('cat /opt/app/releases.json')).pop()
  assert.equal([rel.version, rel.migration?.backup], ['v2', v2Backup])
  console.log(`      update v2 with its migration: 0 failed of ${l.ok + f.ok} requests; backup ${v2Backup} before it`)
})

test('a migration that fails half-way stops the update: v2 keeps serving, the message names the backup, restoring it brings the schema back', async () => {
  const before = itemsSum()
  const r = await runbook('update', ['--config', h.envFile, '--version', 'v4'])
  assert.is(r.code, 1, r.out)
  const id = backupNamed(r.stderr)!
  assert.match(r.stderr, /The migration for v4 failed \(.*no_such_table.*\)\. Nothing was switched: the live release keeps serving\. If the migration was not one transaction, part of it is applied: restore\.ts --backup \d{8}T\d{6}Z puts the database back/)
  assert.is(await serving(), 'v2')
  assert.is(columns(), 'id,name,price,color', 'the first statement took')
  // A re-run keeps the backup taken before the first attempt (not one of the half-migrated database).
  const dry = await runbook('update', ['--config', h.envFile, '--version', 'v4', '--dry-run', '--json'])
  assert.equal(step(dry, /backed up before the migration for v4/).detail, `backup ${id}, taken before the first attempt`)
  const restore = await runbook('restore', ['--config', h.envFile, '--backup', id, '--yes'])
  assert.is(restore.code, 0, restore.out)
  assert.is(columns(), 'id,name,price')
  assert.is(itemsSum(), before)
  assert.is(await serving(), 'v2')
})

test('rollback v2 -> v1 without a terminal: it says v2 migrated the database and goes back in code only', async () => {
  const r = await runbook('rollback', ['--config', h.envFile, '--to', 'v1', '--yes'])
  assert.is(r.code, 0, r.out)
  assert.match(r.stderr, new RegExp(`v2 migrated the database at \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d \\(backup ${v2Backup} taken before\\): v1's code would run on v2's schema`))
  assert.match(r.stderr, /note: rolling back the code only; --migrate-down or --restore-data would undo the migration too/)
  assert.is(await serving(), 'v1')
  assert.is(columns(), 'id,name,price', 'code only: the schema stays')
  // Forward again: v2's migration is in effect, so nothing runs before the swap.
  const up = await runbook('update', ['--config', h.envFile, '--version', 'v2', '--json'])
  assert.is(up.code, 0, up.out)
  assert.equal([step(up, /backed up before the migration/).state, step(up, /backed up before the migration/).detail], ['skipped', "v2's migration already ran"])
  assert.is(step(up, /^Migration for v2/).state, 'ok')
})

test('bad input changes nothing: --migrate-down without MIGRATE_DOWN_COMMAND, two modes, a deleted pre-migration backup', async () => {
  const skip = await runbook('update', ['--config', h.envFile, '--version', 'v4', '--skip-backup'])
  assert.is(skip.code, 3, skip.out)
  assert.match(skip.stderr, /Update app on test to v4, migrating WITHOUT a backup before needs confirmation: pass --yes/)
  // The refusal above is audited (as every refused run is); the mistakes below never reach the host.
  const before = auditCount()
  const noDown = await runbook('rollback', ['--config', h.envFile, '--to', 'v1', '--migrate-down', '--yes'], { MIGRATE_DOWN_COMMAND: '' })
  assert.is(noDown.code, 2, noDown.out)
  assert.match(noDown.stderr, /error: MIGRATE_DOWN_COMMAND is not set: --migrate-down runs it\. Set it, or choose --code-only or --restore-data\./)
  const two = await runbook('rollback', ['--config', h.envFile, '--to', 'v1', '--migrate-down', '--restore-data', '--yes'])
  assert.is(two.code, 2, two.out)
  assert.match(two.stderr, /Choose one of --code-only, --migrate-down and --restore-data/)
  const dir = join(backups, 'app', 'test', v2Backup), away = join(h.dir, 'away')
  renameSync(dir, away)
  try {
    const gone = await runbook('rollback', ['--config', h.envFile, '--to', 'v1', '--restore-data', '--yes'])
    assert.is(gone.code, 2, gone.out)
    assert.match(gone.stderr, new RegExp(`error: No backup ${v2Backup} of app/test in `))
  } finally { renameSync(away, dir) }
  assert.is(auditCount(), before, 'no runbook ran on the host')
  assert.is(await serving(), 'v2')
  assert.is(columns(), 'id,name,price')
})

let redoBackup: string, beforeRedo: string
test('rollback --migrate-down: v1 goes live, then v2\'s down migration runs in a v2 container; updating to v2 migrates again', async () => {
  const r = await runbook('rollback', ['--config', h.envFile, '--to', 'v1', '--migrate-down', '--yes', '--json'])
  assert.is(r.code, 0, r.out)
  assert.equal([step(r, /Migrations newer than v1 undone/).state, step(r, /Migrations newer than v1 undone/).detail], ['changed', 'undid v2'])
  assert.is(await serving(), 'v1')
  assert.is(columns(), 'id,name')
  assert.equal(migrations().find(m => m.version === 'v2')?.state, 'undone')
  const again = await runbook('rollback', ['--config', h.envFile, '--to', 'v1', '--migrate-down', '--yes', '--json'])
  assert.is(again.json.counts.changed, 0, again.out)
  beforeRedo = itemsSum()
  const up = await runbook('update', ['--config', h.envFile, '--version', 'v2', '--json'])
  assert.is(up.code, 0, up.out)
  redoBackup = backupNamed(step(up, /backed up before the migration for v2/).detail ?? '')!
  assert.ok(redoBackup && redoBackup !== v2Backup, up.out)
  assert.is(columns(), 'id,name,price')
})

test('rollback --restore-data: it reports the rows that would be lost, needs confirmation, and leaves the data equal to the pre-migration backup', async () => {
  psql("insert into items (name, price) select 'late ' || g, g from generate_series(1, 25) g")
  const refused = await runbook('rollback', ['--config', h.envFile, '--to', 'v1', '--restore-data'])
  assert.is(refused.code, 3, refused.out)
  assert.match(refused.stderr, /public\.items: 125 rows now, 100 in the backup \(25 lost\)/)
  assert.is(columns(), 'id,name,price', 'refused: nothing changed')
  const load = startLoad(url, { workers: 2, maintenance: true })
  const r = await runbook('rollback', ['--config', h.envFile, '--to', 'v1', '--restore-data', '--yes'])
  const l = await load.stop()
  // While the data is restored, every request gets the app or the maintenance page, nothing else.
  assert.is(l.failed, 0, `${l.failed} failed: ${l.errors.join(', ')}`)
  assert.ok(l.maintenance > 0, 'the maintenance page was served')
  assert.is(h.sh('ls /opt/app/proxy | grep -c maintenance || true').trim(), '0', 'maintenance ended with the restore')
  assert.is(r.code, 0, r.out)
  assert.match(r.stderr, new RegExp(`Restoring ${redoBackup} throws away everything written since .*public\\.items: 125 rows now, 100 in the backup \\(25 lost\\)`))
  assert.is(await serving(), 'v1')
  assert.is(columns(), 'id,name')
  assert.is(itemsSum(), beforeRedo, 'the data equals the pre-migration backup')
  assert.equal(migrations().find(m => m.version === 'v2')?.state, 'undone')
  console.log(`      rollback --restore-data: ${l.maintenance} of ${l.ok + l.maintenance} requests got the maintenance page while the data was restored, 0 failed`)
  const again = await runbook('rollback', ['--config', h.envFile, '--to', 'v1', '--restore-data', '--yes', '--json'])
  assert.is(again.code, 0, again.out)
  assert.is(again.json.counts.changed, 0, again.out)
})

test('status: the newest backup and drill against BACKUP_RPO and DRILL_MAX_AGE; --check fails with one line when either is too old', async () => {
  const noDrill = await runbook('status', ['--config', h.envFile, '--check'])
  assert.is(noDrill.code, 1, noDrill.out)
  assert.match(noDrill.out, /no successful drill recorded on this host: restore\.ts --drill --latest proves the backups restore/)
  const drill = await runbook('restore', ['--config', h.envFile, '--drill', '--latest', '--yes'])
  assert.is(drill.code, 0, drill.out)
  const ok = await runbook('status', ['--config', h.envFile, '--check', '--json'])
  assert.is(ok.code, 0, ok.out)
  assert.match(step(ok, /^Backups \(newest full one; BACKUP_RPO 1 h\)$/).detail!, new RegExp(`^${redoBackup}, \\d+ (s|min).* old, in `))
  assert.match(step(ok, /^Restore drill \(newest successful one; DRILL_MAX_AGE 31 d\)$/).detail!, /^\d+ s ago, of backup \d{8}T\d{6}Z$/)
  await new Promise(res => setTimeout(res, 2100))
  const late = await runbook('status', ['--config', h.envFile, '--check'], { BACKUP_RPO: '2s' })
  assert.is(late.code, 1, late.out)
  assert.match(late.stderr, new RegExp(`error: Backups .*: ${redoBackup}, \\d+ (s|min).* old, in .*: older than BACKUP_RPO \\(2 s\\); is the backup timer running\\?`))
  const plain = await runbook('status', ['--config', h.envFile], { BACKUP_RPO: '2s', DRILL_MAX_AGE: '1s' })
  assert.match(plain.stdout, /WARNING: .*older than BACKUP_RPO/)
  assert.match(plain.stdout, /WARNING: .*older than DRILL_MAX_AGE \(1 s\)/)
})

test('teardown', () => { h.vps.destroy() })

test.run()
