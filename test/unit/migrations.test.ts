import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { duration, exampleConfig } from '../../lib/config.ts'
import { describeLoss, lossCommands } from '../../lib/data/data-loss.ts'
import { applyRetention } from '../../lib/data/retention.ts'
import { crossedMigrations, describeMigration, migrationCommands, withEntry, type Migration } from '../../lib/stack/migrations.ts'
import type { Release } from '../../lib/stack/releases.ts'
import { stackOf } from '../../lib/stack/stack.ts'

const rel = (version: string, at: string, result: Release['result'] = 'replaced'): Release => ({ version, at, by: 'op@here', result })
const rs = [rel('v1', '2026-11-01T10:00:00Z'), rel('v2', '2026-11-02T10:00:00Z'), rel('v3', '2026-11-03T10:00:00Z', 'failed'), rel('v4', '2026-11-04T10:00:00Z', 'live')]
const ms: Migration[] = [
  { version: 'v1', state: 'done', at: '2026-11-01T09:59:00Z' },
  { version: 'v2', state: 'done', at: '2026-11-02T09:59:00Z', backup: '20261102T095800Z' },
  { version: 'v3', state: 'failed', at: '2026-11-03T09:59:00Z', backup: '20261103T095800Z' },
  { version: 'v4', state: 'done', at: '2026-11-04T09:59:00Z' },
]

test('a rollback crosses the migrations in effect that ran after its target first went live, newest first', () => {
  assert.equal(crossedMigrations(ms, rs, 'v1').map(m => m.version), ['v4', 'v2'])
  assert.equal(crossedMigrations(ms, rs, 'v2').map(m => m.version), ['v4'])
  // Once undone (down or restore), a migration is no longer crossed.
  const undone = withEntry(ms, 'v4', m => ({ ...m, state: 'undone' }))
  assert.equal(crossedMigrations(undone, rs, 'v2'), [])
  // Going back to v1 again later (it went live again after v2): still crosses v2's migration.
  assert.equal(crossedMigrations(ms, [...rs, rel('v1', '2026-11-05T10:00:00Z', 'live')], 'v1').map(m => m.version), ['v4', 'v2'])
  // Hosts from before migrations.json: versions without a time are never claimed as crossed.
  assert.equal(crossedMigrations([{ version: 'v2', state: 'done' }], rs, 'v1'), [])
})

test('the operator reads when a release migrated and which backup came before', () => {
  assert.is(describeMigration(ms[1]), 'v2 migrated the database at 2026-11-02 09:59 (backup 20261102T095800Z taken before)')
  assert.is(describeMigration(ms[3]), 'v4 migrated the database at 2026-11-04 09:59 (no backup was taken before it)')
})

test('rows that a restore would lose, per table', () => {
  assert.equal(describeLoss([
    { table: 'public.items', backup: 100, now: 125 }, { table: 'public.same', backup: 5, now: 5 },
    { table: 'public.new', now: 3 }, { table: 'public.old', backup: 7 }, { table: 'public.trimmed', backup: 10, now: 4 },
  ]), [
    'public.items: 125 rows now, 100 in the backup (25 lost)', 'public.new: created since, 3 rows (the table goes)',
    'public.old: dropped since (it comes back with 7 rows)', 'public.trimmed: 4 rows now, 10 in the backup (6 come back)',
  ])
})

test('commands: the migration and its undoing run in a one-off container of the named release, values quoted', () => {
  const c = exampleConfig()
  c.stack.migrate = 'npm run migrate'
  c.stack.migrateDown = 'npm run migrate:down'
  const st = stackOf(c)
  const down = migrationCommands.run(st, 'v2', st.migrate!.down!, { OPSBOOK_ROLLBACK_TO: 'v1' })
  assert.match(down.command, /APP_VERSION=v2 /)
  assert.match(down.command, /run --rm --no-deps -T -e OPSBOOK_ROLLBACK_TO=v1 app sh -c 'npm run migrate:down'/)
  assert.is(down.stdin, undefined)
  assert.match(lossCommands.backupCounts(st), /pg_restore -a -f - \| awk '\/\^COPY \//)
  assert.match(lossCommands.liveCounts(st), /query_to_xml/)
})

test('retention keeps a pre-migration backup until its date even when counts would drop it', () => {
  const now = new Date('2026-11-22T12:00:00Z')
  const bs = Array.from({ length: 10 }, (_, i) => ({ id: `b${i}`, startedAt: new Date(now.getTime() - i * 3600_000).toISOString() }))
  bs[8] = { ...bs[8], keepUntil: '2026-12-01T00:00:00Z' } as typeof bs[number]
  bs[9] = { ...bs[9], keepUntil: '2026-11-22T11:00:00Z' } as typeof bs[number]
  const r = applyRetention(bs, { last: 3, daily: 0, weekly: 0, monthly: 0, minKeep: 0 }, now)
  assert.equal([...r.keep.keys()].map(b => b.id), ['b0', 'b1', 'b2', 'b8'])
  assert.equal(r.keep.get(bs[8]), ['kept-until'])
})

test('durations for BACKUP_RPO and DRILL_MAX_AGE', () => {
  assert.equal(['90s', '30m', '1h', '31d'].map(duration), [90, 1800, 3600, 31 * 86400])
  for (const bad of ['1', 'h', '0h', '1w', '1 h', '-1h']) assert.throws(() => duration(bad), /a duration like/)
})

test.run()
