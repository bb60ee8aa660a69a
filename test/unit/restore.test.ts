// Restore and backup command text and the pure parts of restore, without a host.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { backupCommands, dumpCompression } from '../../lib/data/backup.ts'
import { exampleConfig } from '../../lib/config.ts'
import { RECIPIENT } from '../../lib/values.ts'
import { drillCommands, newUndoDir, phaseTimes, restoreCommands, rolesToApply } from '../../lib/data/restore.ts'
import { stackOf } from '../../lib/stack/stack.ts'

const st = stackOf(exampleConfig())

test('roles: the stack\'s own user is left alone (its password is DB_PASSWORD now)', () => {
  const sql = ['CREATE ROLE app;', 'ALTER ROLE app WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN PASSWORD \'x\';', 'CREATE ROLE reporting;',
    'ALTER ROLE reporting WITH LOGIN PASSWORD \'y\';', 'CREATE ROLE "application";'].join('\n')
  assert.is(rolesToApply(sql, 'app'), ['CREATE ROLE reporting;', 'ALTER ROLE reporting WITH LOGIN PASSWORD \'y\';', 'CREATE ROLE "application";'].join('\n'))
})

test('restore commands: staged files are promoted only after their sha256 matched; the database is recreated', () => {
  assert.is(restoreCommands.receive('/var/lib/opsbook/restore/stage-1/duckdb/db.duckdb'),
    'set -e; mkdir -p -m 700 "$(dirname /var/lib/opsbook/restore/stage-1/duckdb/db.duckdb)"; cat > /var/lib/opsbook/restore/stage-1/duckdb/db.duckdb.partial')
  assert.is(restoreCommands.promote('/r/x'), 'mv -f /r/x.partial /r/x')
  assert.match(restoreCommands.recreateDb(st), /psql -X -q -v ON_ERROR_STOP=1 -U app -d postgres -c 'drop database if exists "app" with \(force\)' && .* -c 'create database "app" owner "app"'/)
  assert.match(restoreCommands.pgRestore(st, '/r/postgres.dump', 'c1', 3), /docker exec "\$c" pg_restore --clean --if-exists --no-owner --no-acl -j 3 -U app -d app \/tmp\/opsbook-restore\.dump; rc=\$\?/)
  assert.match(newUndoDir(new Date('2026-11-23T01:02:03.456Z')), /^\/var\/lib\/opsbook\/restore\/undo\/20261123T010203Z$/)
})

test('drill commands: their own network and labelled containers, all removed at the end', () => {
  assert.match(drillCommands.startDb(st, 'opsbook-drill-x', '/r/db.env'), /\(umask 077; cat > \/r\/db\.env\)\n.*\ndocker run -d --name opsbook-drill-x-db --network opsbook-drill-x --label opsbook.drill=1 --env-file \/r\/db\.env /)
  assert.not.match(drillCommands.startDb(st, 'opsbook-drill-x', '/r/db.env') + drillCommands.appHealth(st, 'opsbook-drill-x', 'img:v1', '/r/data', '/r/app.env'), /PASSWORD|DATABASE_URL=/, 'no password in argv')
  assert.is(drillCommands.appEnv(st, 'opsbook-drill-x', 'pw'), 'DATABASE_URL=postgres://app:pw@opsbook-drill-x-db:5432/app\nPORT=8080\n')
  assert.is(drillCommands.cleanup('opsbook-drill-x', '/r/drill-x'),
    'docker rm -f -v opsbook-drill-x-app opsbook-drill-x-db >/dev/null 2>&1; docker network rm opsbook-drill-x >/dev/null 2>&1; rm -rf /r/drill-x; true')
  assert.match(drillCommands.dumpCounts(st, 'd', '/r/postgres.dump'), /pg_restore -a -f - < \/r\/postgres\.dump \| awk '\/\^COPY \/\{t=\$2; n=0; inside=1; next\} \/\^\\\\\\\.\$\//)
})

test('backup: pg_dump is tagged so that a failed store can end it inside the container', () => {
  assert.match(backupCommands.pgDump(st, 'opsbook-backup-1', 'gzip'), /exec -T -e PGAPPNAME=opsbook-backup-1 db pg_dump -Fc -U app -d app$/)
  assert.match(backupCommands.pgDump(st, 'opsbook-backup-1', 'zstd:1'), /db pg_dump -Fc -Z zstd:1 -U app -d app$/)
})

test('backup: zstd where pg_dump has it (16+), gzip before; a method the server lacks is refused', () => {
  assert.is(dumpCompression('17.6 (Debian 17.6-0+deb13u1)', 'auto'), 'zstd:1')
  assert.is(dumpCompression('15.14', 'auto'), 'gzip')
  assert.is(dumpCompression('15.14', 'gzip'), 'gzip')
  assert.throws(() => dumpCompression('15.14', 'zstd:3'), /needs pg_dump 16 or newer; this server runs PostgreSQL 15\.14/)
  assert.match(backupCommands.pgStop(st, 'opsbook-backup-1'), /where application_name = '\\''opsbook-backup-1'\\'''$/)
})

test('age recipients: X25519 and post-quantum keys; nothing a shell could misread', () => {
  assert.ok(RECIPIENT.test('age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p'))
  assert.ok(RECIPIENT.test('age1pq1' + 'q'.repeat(60)))
  for (const bad of ['age1', 'AGE1QL3Z7HJY54PW3HYWW5AYYFG7ZQGVC7', 'age1ql3z7hjy54pw3hyww5ayyfg7zq;rm', 'ssh-ed25519 AAAA']) assert.not.ok(RECIPIENT.test(bad), bad)
})

test('RTO phases run from the end of the phase before; checks sent early do not count twice', () => {
  // provision ended at 30 s, deploy at 70 s; restore's early check ended at 2 s, its last step at 95 s.
  assert.equal(phaseTimes({ provision: 30_000, deploy: 70_000, restore: 95_000 }, 0), [['provision', 30_000], ['deploy', 40_000], ['restore', 25_000]])
  // A phase whose steps were all answered by the early checks took no time in the sequence.
  assert.equal(phaseTimes({ provision: 30_000, deploy: 2_000, restore: 50_000 }, 0), [['provision', 30_000], ['deploy', 0], ['restore', 20_000]])
})

test.run()
