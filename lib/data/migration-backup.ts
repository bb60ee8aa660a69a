// The backup taken just before a migration: backup.ts's own PostgreSQL and manifest steps
// (same store, same manifest format), marked "before migration to VERSION", kept
// MIGRATION_BACKUP_DAYS whatever the retention counts say, and named in migrations.json
// before the migration runs, so a re-run after a failed migration keeps this clean copy.
import type { Config } from '../config.ts'
import { HostError } from '../errors.ts'
import { sh } from '../sh.ts'
import { migrated, readMigrations, withEntry, writeMigrations } from '../stack/migrations.ts'
import { live, readReleases } from '../stack/releases.ts'
import { serviceCommands } from '../stack/engine.ts'
import { dbOf, duckdbOf, stackOf } from '../stack/stack.ts'
import type { Step } from '../steps.ts'
import { manifestStep, newBackupRun, postgresStep, type BackupRun } from './backup.ts'

/** Counts the database's own tables: none means a first deploy, with nothing to back up. */
const tableCount = (c: Config) => {
  const st = stackOf(c)
  return serviceCommands.exec(st, dbOf(st).service, sh`psql -X -At -U ${dbOf(st).user} -d ${dbOf(st).database} -c ${"select count(*) from pg_tables where schemaname not in ('pg_catalog', 'information_schema')"}`)
}

export function migrationBackupStep(c: Config, version: string, opts: { skip?: boolean } = {}): Step<{ run: BackupRun; pg: { version: string; compression: string } }> {
  const st = stackOf(c)
  return {
    title: `PostgreSQL backed up before the migration for ${version}`,
    async check(t) {
      if (!st.migrate) return { skip: st.builtIn ? 'no MIGRATE_COMMAND' : 'no service has opsbook.migrate' }
      if (!st.db) return { skip: 'the stack has no PostgreSQL' }
      const ms = await readMigrations(t, st)
      if (migrated(ms, version)) return { skip: `${version}'s migration already ran` }
      const m = ms.find(x => x.version === version)
      if (m?.backup && m.state !== 'undone') return { done: true, detail: `backup ${m.backup}, taken before the first attempt` }
      if (opts.skip) return { skip: 'not taken: --skip-backup' }
      const r = await t.run(tableCount(c), { allowFail: true, timeout: 60 })
      if (r.code !== 0) {
        if (!live(await readReleases(t, st))) return { skip: 'PostgreSQL is not running yet (first deploy): nothing to back up' }
        throw new HostError(`PostgreSQL does not answer (${r.stderr.trim().split('\n').pop() || `exit ${r.code}`}), so it cannot be backed up before the migration: fix the database, or pass --skip-backup to migrate without a backup.`)
      }
      if (Number(r.stdout.trim()) === 0) return { skip: 'the database has no tables yet: nothing to back up' }
      const run = newBackupRun(c, { note: `before migration to ${version}`, keepDays: c.backup.migrationDays })
      // Only PostgreSQL: the migration changes nothing else, and a restore of this backup must not touch the rest.
      if (duckdbOf(st) || st.backupVolumes.length) run.scope = 'postgres'
      // postgresStep's check always plans a dump (or throws): it reads the server's version and size.
      const pg = await postgresStep(run).check(t) as { change: string; plan: { version: string; compression: string } }
      return { done: false, change: `${pg.change}, kept ${c.backup.migrationDays} days`, plan: { run, pg: pg.plan } }
    },
    async apply(t, { run, pg }, log) {
      const dumped = await postgresStep(run).apply(t, pg, log)
      await manifestStep(run).apply(t, undefined, log)
      await writeMigrations(t, st, withEntry(await readMigrations(t, st), version, m => ({ ...m, state: 'backed-up', backup: run.id, undone: undefined })))
      return `backup ${run.id}: ${dumped}`
    },
  }
}
