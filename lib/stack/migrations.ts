// Which releases migrated the database, when, and which backup puts it back as it was
// before: APP_DIR/migrations.json, one entry per release. The backup step writes the
// entry first (so a re-run after a failed migration keeps the clean backup instead of
// taking one of a half-migrated database), migrateStep runs the migration, rollback reads
// the entries to say when it crosses a migration and marks them undone after
// MIGRATE_DOWN_COMMAND or a restore. A release whose migration was undone migrates again
// (after a new backup) the next time it is rolled out.
import { HostError, UsageError } from '../errors.ts'
import { fileCommands } from '../host/files.ts'
import { sh } from '../sh.ts'
import type { Step, Target } from '../steps.ts'
import { readReleases, type Release } from './releases.ts'
import { serviceCommands } from './engine.ts'
import { files, type Stack } from './stack.ts'

export interface Migration {
  version: string
  /** backed-up: its backup is taken, the migration has not run; undone: MIGRATE_DOWN_COMMAND or a restore reverted it. */
  state: 'backed-up' | 'running' | 'done' | 'failed' | 'undone'
  /** The backup taken just before (none: skipped, or the database had no tables yet). */
  backup?: string
  startedAt?: string
  /** When it finished (done) or failed. */
  at?: string
  error?: string
  undone?: { how: 'down' | 'restore'; at: string; backup?: string }
}

// Hosts deployed before migrations.json kept a plain list of migrated versions.
const LEGACY = (st: Stack) => `${st.dir}/migrated`

export const migrationCommands = {
  read: (st: Stack) => `${fileCommands.read(files(st).migrations.path, '[]')}; echo '#legacy'; ` + sh`cat ${LEGACY(st)} 2>/dev/null || true`,
  /**
   * The migration (or its undoing) in a one-off container of `version`'s image, without its
   * dependencies (on a cluster: on the data node, in a stack container's network); no command: the
   * service's own (a one-shot job).
   */
  run: (st: Stack, version: string, command: string | undefined, env: Record<string, string> = {}) => serviceCommands.oneOff(st, st.migrate!.service, version, command, env),
}

/** A migration's one-off container, its output streamed to the step's log. */
async function runOnce(t: Target, st: Stack, version: string, command: string | undefined, log: (l: string) => void, env?: Record<string, string>) {
  const o = migrationCommands.run(st, version, command, env)
  return t.run(o.command, { stdin: o.stdin, onOutput: log, allowFail: true, timeout: 1800 })
}

export async function readMigrations(t: Target, st: Stack): Promise<Migration[]> {
  const [json, legacy = ''] = (await t.run(migrationCommands.read(st), { timeout: 30 })).stdout.split('#legacy\n')
  let ms: Migration[] = []
  try { ms = JSON.parse(json) } catch {}
  for (const v of legacy.split('\n').map(l => l.trim()).filter(Boolean)) if (!ms.some(m => m.version === v)) ms.push({ version: v, state: 'done' })
  return ms
}

export async function writeMigrations(t: Target, st: Stack, ms: Migration[]): Promise<void> {
  // The legacy list goes once its versions are in the JSON (they are: readMigrations merged them).
  await t.run(fileCommands.install(files(st).migrations) + '\n' + sh`rm -f ${LEGACY(st)}`, { stdin: JSON.stringify(ms, null, 1) + '\n', timeout: 30 })
}

/** `ms` with `version`'s entry replaced (or added) by `change` applied to it. */
export function withEntry(ms: Migration[], version: string, change: (m: Migration) => Migration): Migration[] {
  const old = ms.find(m => m.version === version) ?? { version, state: 'backed-up' as const }
  return [...ms.filter(m => m.version !== version), change(old)]
}

export const migrated = (ms: Migration[], version: string) => ms.find(m => m.version === version)?.state === 'done'

/**
 * The migrations a rollback to `target` crosses: in effect (done, not undone) and run
 * after `target` first went live, so its code has never seen them. Newest first.
 */
export function crossedMigrations(ms: Migration[], rs: Release[], target: string): Migration[] {
  const first = rs.find(r => r.version === target && r.result !== 'failed')?.at
  return ms.filter(m => m.state === 'done' && m.version !== target && m.at && (!first || m.at > first)).sort((a, b) => b.at!.localeCompare(a.at!))
}

/** crossedMigrations as the host has them now (both files read at once). */
async function crossedOn(t: Target, st: Stack, target: string): Promise<Migration[]> {
  const [ms, rs] = await Promise.all([readMigrations(t, st), readReleases(t, st)])
  return crossedMigrations(ms, rs, target)
}

/** The one sentence for --migrate-down without a down command. */
export const noDownCommand = (st: Stack) => `${st.builtIn ? 'MIGRATE_DOWN_COMMAND is not set' : 'No service has the label opsbook.migrate-down'}: --migrate-down runs it. Set it, or choose --code-only or --restore-data.`

const when = (iso?: string) => (iso ? iso.slice(0, 16).replace('T', ' ') : 'at an unknown time')

/** "v2 migrated the database at 2026-11-28 14:02 (backup 20261128T140150Z taken before)". */
export const describeMigration = (m: Migration) => `${m.version} migrated the database at ${when(m.at)}${m.backup ? ` (backup ${m.backup} taken before)` : ' (no backup was taken before it)'}`

export function migrateStep(st: Stack, version: string): Step {
  return {
    title: `Migration for ${version}`,
    async check(t) {
      if (!st.migrate) return { skip: st.builtIn ? 'no MIGRATE_COMMAND' : 'no service has opsbook.migrate' }
      const m = (await readMigrations(t, st)).find(x => x.version === version)
      if (m?.state === 'done') return { done: true }
      const again = m?.state === 'undone' ? ' again (its migration was undone)' : m?.state === 'failed' ? ' again (it failed before)' : ''
      return { done: false, change: `run the migration${again} in a one-off ${st.migrate.service} ${version} container` }
    },
    async apply(t, _, log) {
      const startedAt = new Date().toISOString()
      // The host lock keeps anyone else from writing the file meanwhile: one read serves both writes.
      const ms = withEntry(await readMigrations(t, st), version, m => ({ ...m, state: 'running', startedAt, at: undefined, error: undefined, undone: undefined }))
      await writeMigrations(t, st, ms)
      const r = await runOnce(t, st, version, st.migrate!.command, log)
      const backup = ms.find(m => m.version === version)?.backup
      if (r.code !== 0) {
        const why = r.stderr.trim().split('\n').pop() || `exit ${r.code}`
        await writeMigrations(t, st, withEntry(ms, version, m => ({ ...m, state: 'failed', at: new Date().toISOString(), error: why })))
        throw new HostError(`The migration for ${version} failed (${why}). Nothing was switched: the live release keeps serving. ` + (backup
          ? `If the migration was not one transaction, part of it is applied: restore.ts --backup ${backup} puts the database back as it was just before.`
          : 'No backup was taken just before it; restore.ts lists the backups there are.'))
      }
      await writeMigrations(t, st, withEntry(ms, version, m => ({ ...m, state: 'done', at: new Date().toISOString() })))
      return backup ? `backup ${backup} taken before` : undefined
    },
  }
}

/**
 * rollback --migrate-down: MIGRATE_DOWN_COMMAND (or opsbook.migrate-down) in a one-off
 * container of each crossed release, newest first, after the code went back: the older
 * code already runs on the newer schema (expand/contract), and the down migration needs
 * the newer release's migration scripts. OPSBOOK_ROLLBACK_TO names the release gone back to.
 */
export function migrateDownStep(st: Stack, target: string): Step<Migration[]> {
  return {
    title: `Migrations newer than ${target} undone (MIGRATE_DOWN_COMMAND in each newer release)`,
    prepare() {
      if (!st.migrate?.down) throw new UsageError(noDownCommand(st))
    },
    async check(t) {
      const crossed = await crossedOn(t, st, target)
      if (!crossed.length) return { done: true, detail: `no migration newer than ${target} is in effect` }
      return { done: false, change: crossed.map(m => `undo ${m.version}'s migration in a one-off ${m.version} container`).join(', then '), plan: crossed }
    },
    async apply(t, crossed, log) {
      for (const m of crossed) {
        const r = await runOnce(t, st, m.version, st.migrate!.down!, log, { OPSBOOK_ROLLBACK_TO: target })
        if (r.code !== 0) throw new HostError(`Undoing ${m.version}'s migration failed (${r.stderr.trim().split('\n').pop() || `exit ${r.code}`}); ${target}'s code is live on the newer schema. Re-run to retry, or roll back with --restore-data.`)
        await writeMigrations(t, st, withEntry(await readMigrations(t, st), m.version, x => ({ ...x, state: 'undone', undone: { how: 'down', at: new Date().toISOString() } })))
      }
      return `undid ${crossed.map(m => m.version).join(', ')}`
    },
  }
}

/** rollback --restore-data: after the restore, the crossed migrations are no longer in effect. */
export function migrationsRestoredStep(st: Stack, target: string, backup: string): Step<Migration[]> {
  return {
    title: `Migrations newer than ${target} recorded as undone (database restored from ${backup})`,
    async check(t) {
      const crossed = await crossedOn(t, st, target)
      return crossed.length ? { done: false, change: `mark ${crossed.map(m => m.version).join(', ')} undone`, plan: crossed } : { done: true }
    },
    async apply(t, crossed) {
      let ms = await readMigrations(t, st)
      for (const m of crossed) ms = withEntry(ms, m.version, x => ({ ...x, state: 'undone', undone: { how: 'restore', at: new Date().toISOString(), backup } }))
      await writeMigrations(t, st, ms)
    },
  }
}
