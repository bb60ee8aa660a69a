// Restores of a backup onto a host: the objects are staged on the host first (decrypted
// here, sha256 checked against the manifest) so nothing is touched until the whole backup
// is known good; the data being replaced is kept as an undo copy; then the app is
// stopped (nginx shows the maintenance page), PostgreSQL is recreated from the dump, the
// DuckDB file swapped in, and the app started and checked through nginx.
// Drills restore the same way into throwaway containers, never the live database.
import { randomBytes } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pipeline, type Readable } from 'node:stream'
import { Digest, backupPrefix, mountpoint, listBackups, newestFull, openObject, readBytes, verifyBackup, type BackupObject, type Manifest } from './backup.ts'
import { readBundle, type BundleIndex } from './bundle.ts'
import type { Config } from '../config.ts'
import { inspectDuckDb } from './duckdb.ts'
import { decryptStream, readIdentities } from './encryption.ts'
import { HostError, InterruptedError, UsageError } from '../errors.ts'
import { maintenanceDuring } from '../stack/maintenance.ts'
import { cloneUser, databaseUrl } from '../stack/secrets.ts'
import { sh } from '../sh.ts'
import { imageAt, released } from '../stack/model.ts'
import { dbOf, duckdbOf, volumeOf, type BackupVolume, type Stack, type StoredStack } from '../stack/stack.ts'
import { serviceCommands } from '../stack/engine.ts'
import type { Step } from '../steps.ts'
import type { Store } from './storage.ts'
import type { Target } from '../steps.ts'

export const RESTORE_ROOT = '/var/lib/opsbook/restore'
const UNDO_ROOT = `${RESTORE_ROOT}/undo`
const KEEP_UNDO = 3

/** Where each kind of object is staged on the host, under the restore's directory. */
const STAGED: Record<Exclude<BackupObject['kind'], 'volume'>, string> = {
  pg_dump: 'postgres.dump', pg_globals: 'roles.sql', duckdb: 'duckdb/db.duckdb', duckdb_wal: 'duckdb/db.duckdb.wal', stack: 'stack.tar.gz',
}
export const stagedPath = (o: BackupObject): string => (o.kind === 'volume' ? `volumes/${o.volume}.tar` : STAGED[o.kind])

/** Picks a backup from the store by id or "latest"; refuses other apps' manifests. */
export async function findBackup(store: Store, c: Config, which: string): Promise<Manifest> {
  const all = await listBackups(store, c.app.name, c.env)
  const m = which === 'latest' ? newestFull(all) : all.find(x => x.id === which)
  if (!m) {
    throw new UsageError(all.length
      ? `No backup ${which} of ${c.app.name}/${c.env} in ${store.where}; the newest are: ${all.slice(0, 5).map(x => x.id).join(', ')}.`
      : `There are no backups of ${c.app.name}/${c.env} in ${store.where}: check BACKUP_DEST and the environment.`)
  }
  if (m.app !== c.app.name || m.env !== c.env || !m.objects.every(o => o.key.startsWith(backupPrefix(c.app.name, c.env)))) {
    throw new UsageError(`Backup ${m.id} in ${store.where} belongs to ${m.app}/${m.env}, not ${c.app.name}/${c.env}: it will not be restored here.`)
  }
  if (!m.objects.some(o => o.kind === 'pg_dump')) throw new UsageError(`Backup ${m.id} has no PostgreSQL dump; there is nothing to restore.`)
  const stored = new Set(await store.list(`${backupPrefix(c.app.name, c.env)}${m.id}/`))
  const missing = m.objects.filter(o => !stored.has(o.key)).map(o => o.key.split(`${m.id}/`).pop())
  if (missing.length) throw new HostError(`Backup ${m.id} is missing ${missing.join(', ')} in ${store.where}: restore another backup (restore.ts lists them).`)
  return m
}

/**
 * The compose files and project files stored with a backup (stack.tar.gz), if it has them;
 * stack.json lists them (a bundle made before it holds compose.yml alone).
 */
export async function storedStack(store: Store, m: Manifest, identities?: string[]): Promise<StoredStack | undefined> {
  const o = m.objects.find(x => x.kind === 'stack')
  if (!o) return undefined
  const b = await readBundle(await readBytes(await openObject(store, m, o, identities)))
  const index = b['stack.json'] ? JSON.parse(b['stack.json'].toString('utf8')) as BundleIndex : { compose: ['compose.yml'], project: [] }
  if (!index.compose.every(n => b[n])) return undefined
  return {
    composeFiles: index.compose.map(name => ({ name, text: b[name].toString('utf8'), file: name })),
    projectFiles: index.project.map(p => ({ path: p.path, mode: p.mode, kind: p.kind ?? 'mount', content: b[`project/${p.path}`] ?? Buffer.alloc(0) })),
  }
}

export const identitiesFor = (c: Config, m: Manifest) => (m.encryption
  ? c.backup.identityFile ? readIdentities(c.backup.identityFile)
    : (() => { throw new UsageError(`Backup ${m.id} is encrypted (age, to ${m.encryption!.recipients.join(', ')}): set BACKUP_AGE_IDENTITY_FILE to the matching private key file.`) })()
  : undefined)

const psql = (st: Stack, db: string, sql: string) => serviceCommands.exec(st, dbOf(st).service, sh`psql -X -q -v ON_ERROR_STOP=1 -U ${dbOf(st).user} -d ${db} -c ${sql}`)
const ident = (s: string) => `"${s.replace(/"/g, '""')}"`

// The undo dump as backups make it (dumpCompression's auto): zstd level 1 where pg_dump
// is 16 or newer, its own gzip before; decided inside the container, by its pg_dump.
const ZSTD_IF_16 = 'if [ "$(pg_dump -V | sed -E \'s/[^0-9]*([0-9]+).*/\\1/\')" -ge 16 ]; then exec pg_dump -Fc -Z zstd:1 "$@"; else exec pg_dump -Fc "$@"; fi'

export const restoreCommands = {
  /** Receives one object into a .partial file; promoted by `promote` only once its sha256 matched. */
  receive: (path: string) => sh`set -e; mkdir -p -m 700 "$(dirname ${path})"; cat > ${`${path}.partial`}`,
  promote: (path: string) => sh`mv -f ${`${path}.partial`} ${path}`,
  staged: (dir: string) => sh`cd ${dir} 2>/dev/null && find . -type f ! -name '*.partial' | sort`,
  discard: (dir: string) => sh`rm -rf ${dir}`,
  undoDirs: () => sh`ls -1 ${UNDO_ROOT} 2>/dev/null | sort`,
  /** The database as it is now, into undo/…/postgres.dump (plus the DuckDB file, moved later). */
  safetyDump: (st: Stack, dir: string) => [
    'set -e', sh`mkdir -p -m 700 ${dir}`,
    serviceCommands.exec(st, dbOf(st).service, sh`sh -c ${ZSTD_IF_16} pg_dump -U ${dbOf(st).user} -d ${dbOf(st).database}`) + sh` > ${`${dir}/postgres.dump.partial`}`,
    sh`mv ${`${dir}/postgres.dump.partial`} ${`${dir}/postgres.dump`}`,
  ].join('\n'),
  pruneUndo: (keep: number) => sh`cd ${UNDO_ROOT} 2>/dev/null && ls -1 | sort | head -n -${keep} | xargs -r rm -rf`,
  /** Every released service (web and worker) stops: nothing writes while the data is replaced. */
  stopApp: (st: Stack) => serviceCommands.stop(st, released(st.model).map(s => s.name)),
  /** A clean database: objects created after the backup must not survive the restore. */
  recreateDb: (st: Stack) => [
    psql(st, 'postgres', `drop database if exists ${ident(dbOf(st).database)} with (force)`),
    psql(st, 'postgres', `create database ${ident(dbOf(st).database)} owner ${ident(dbOf(st).user)}`),
  ].join(' && '),
  /** pg_restore with parallel jobs from a file copied into the database container. */
  pgRestore: (st: Stack, file: string, container: string, jobs: number, db = dbOf(st).database) => [
    `c=${container}`,
    sh`docker cp ${file} "$c":/tmp/opsbook-restore.dump`,
    sh`docker exec "$c" pg_restore --clean --if-exists --no-owner --no-acl -j ${String(jobs)} -U ${dbOf(st).user} -d ${db} /tmp/opsbook-restore.dump; rc=$?`,
    'docker exec "$c" rm -f /tmp/opsbook-restore.dump',
    'exit $rc',
  ].join('\n'),
  dbContainer: (st: Stack) => `"$(${serviceCommands.containers(st, dbOf(st).service)} | head -n 1)"`,
  /**
   * Roles from pg_dumpall (stdin). "already exists" is expected for roles the host has;
   * any other ERROR line is printed (only that line: statements may hold password hashes).
   */
  roles: (st: Stack, container: string) => `docker exec -i ${container} ` + sh`psql -X -q -U ${dbOf(st).user} -d postgres 2>&1 >/dev/null | grep 'ERROR:' | grep -v 'already exists' || true`,
  /** Moves the live DuckDB file (and WAL) to undo/, puts the staged copy in its place. */
  duckSwap: (st: Stack, file: string, from: string, undo: string | undefined) => [
    'set -e',
    sh`vol=$(docker volume inspect -f '{{.Mountpoint}}' ${duckdbOf(st)!.volume})`,
    sh`f="$vol"/${file}`,
    'owner=$(stat -c %u:%g "$f" 2>/dev/null || stat -c %u:%g "$vol")',
    undo ? sh`mkdir -p -m 700 ${`${undo}/duckdb`}; if [ -f "$f" ]; then mv "$f" ${`${undo}/duckdb/db.duckdb`}; fi; if [ -f "$f.wal" ]; then mv "$f.wal" ${`${undo}/duckdb/db.duckdb.wal`}; fi`
      : 'rm -f "$f" "$f.wal"',
    'mkdir -p "$(dirname "$f")"',
    sh`cp ${`${from}/duckdb/db.duckdb`} "$f.opsbook-new" && mv "$f.opsbook-new" "$f"`,
    sh`if [ -f ${`${from}/duckdb/db.duckdb.wal`} ]; then cp ${`${from}/duckdb/db.duckdb.wal`} "$f.wal"; fi`,
    'chown "$owner" "$f"; [ ! -f "$f.wal" ] || chown "$owner" "$f.wal"',
  ].join('\n'),
  /**
   * A named volume's content replaced by the staged tar (the services that mount it are
   * stopped); what it held goes to undo/volumes/NAME.tar first.
   */
  volumeSwap: (v: BackupVolume, from: string, undo: string | undefined) => [
    'set -e',
    mountpoint(v),
    undo ? sh`mkdir -p -m 700 ${`${undo}/volumes`}; tar -C "$vol" --numeric-owner -cf ${`${undo}/volumes/${v.name}.tar.partial`} . && mv ${`${undo}/volumes/${v.name}.tar.partial`} ${`${undo}/volumes/${v.name}.tar`}` : ':',
    'find "$vol" -mindepth 1 -delete',
    sh`tar -C "$vol" --numeric-owner -xpf ${`${from}/volumes/${v.name}.tar`}`,
  ].join('\n'),
  /** Starts the stopped app containers; nginx re-resolves them (their addresses may change). */
  // Restarted containers keep their addresses on opsbook's network: nginx needs nothing.
  startApp: (st: Stack) => serviceCommands.start(st, released(st.model).map(s => s.name)),
}

/** Streams `src` into a command's stdin; a failure of the stream stops the command. */
async function streamToHost(t: Target, src: Readable, command: string, timeout: number, cancel?: AbortSignal): Promise<void> {
  const stop = new AbortController()
  let failure: Error | undefined
  src.on('error', e => { failure ??= e; stop.abort() })
  cancel?.addEventListener('abort', () => { failure ??= new InterruptedError(); stop.abort(); src.destroy() }, { once: true })
  const r = await t.run(command, { stdin: src, allowFail: true, timeout, signal: stop.signal }).catch(e => { if (!failure) throw e })
  if (failure) throw failure
  if (r && r.code !== 0) throw new HostError(`writing on the host failed: ${r.stderr.trim().split('\n').pop() || `exit ${r.code}`}`)
}

/** Everything a restore (or drill) of one backup needs. */
export interface RestoreRun {
  config: Config
  st: Stack
  /** The backup being restored; absent for --undo. */
  manifest?: Manifest
  store?: Store
  identities?: string[]
  /** Host directory holding postgres.dump, roles.sql, duckdb/… to restore from. */
  source: string
  /** Host directory the replaced data goes to (undo); absent on a drill. */
  undo?: string
  /** For the RTO report: when each phase's last step ended (ms since the epoch), in checklist order. */
  phases: Record<string, number>
  /** When the first step was checked: the RTO's start. */
  started?: number
}

/** Downloads every object of the backup into `run.source` on the host, checking sha256 first. */
export function stageStep(run: RestoreRun): Step<BackupObject[]> {
  const m = run.manifest!
  return {
    title: `Backup ${m.id} staged on the host and checked (sha256 of every object${m.encryption ? ', decrypted here' : ''})`,
    async check(t) {
      const have = (await t.run(restoreCommands.staged(run.source), { allowFail: true, timeout: 30 })).stdout.split('\n').map(l => l.replace(/^\.\//, ''))
      const missing = m.objects.filter(o => !have.includes(stagedPath(o)))
      if (!missing.length) return { done: true, detail: `in ${run.source}` }
      const mib = missing.reduce((a, o) => a + o.bytes, 0) / 1048576
      return { done: false, change: `download ${missing.length} object(s), ${mib.toFixed(1)} MiB, into ${run.source}`, plan: missing }
    },
    async apply(t, missing, log, signal) {
      for (const o of missing) {
        if (signal?.aborted) throw new InterruptedError()
        const path = `${run.source}/${stagedPath(o)}`
        const stored = new Digest((_, n) => log(`${stagedPath(o)}: ${(n / 1048576).toFixed(1)} MiB`))
        pipeline(await run.store!.get(o.key), stored, () => {})
        const damaged = (bytes: number, sha256: string) => new HostError(`${o.key} does not match its manifest (expected ${o.bytes} bytes sha256 ${o.sha256.slice(0, 12)}…, got ${bytes} bytes sha256 ${sha256.slice(0, 12)}…): the backup is damaged; nothing was restored.`)
        try {
          const plain = m.encryption ? await decryptStream(run.identities!, stored, `${o.key} of backup ${m.id}`) : stored
          await streamToHost(t, plain, restoreCommands.receive(path), 6 * 3600, signal)
        } catch (e) {
          await t.run(sh`rm -f ${`${path}.partial`}`, { allowFail: true, timeout: 30 })
          if (signal?.aborted) { stored.destroy(); throw e }
          // A decryption error may be a wrong key or a damaged object: the hash tells which.
          const [problem] = await verifyBackup(run.store!, { ...m, objects: [o] })
          if (problem) { const got = /found (\d+) bytes sha256 (\w+)/.exec(problem); throw damaged(Number(got?.[1] ?? 0), got?.[2] ?? '?') }
          throw e
        }
        if (stored.bytes !== o.bytes || stored.sha256 !== o.sha256) {
          await t.run(sh`rm -f ${`${path}.partial`}`, { allowFail: true, timeout: 30 })
          throw damaged(stored.bytes, stored.sha256)
        }
        await t.run(restoreCommands.promote(path), { timeout: 30 })
      }
    },
  }
}

/** The data about to be replaced, kept on the host so that `restore.ts --undo` brings it back. */
export function safetyCopyStep(run: RestoreRun): Step {
  return {
    title: `Current data kept for undo (${run.undo})`,
    async check(t) {
      const r = await t.run(sh`test -f ${`${run.undo}/postgres.dump`}`, { allowFail: true, timeout: 30 })
      return r.code === 0 ? { done: true } : { done: false, change: `pg_dump the live database into ${run.undo} (the DuckDB file is moved there when swapped)` }
    },
    async apply(t) {
      await t.run(restoreCommands.safetyDump(run.st, run.undo!), { timeout: 6 * 3600 })
      await t.run(restoreCommands.pruneUndo(KEEP_UNDO), { allowFail: true, timeout: 60 })
    },
  }
}

/** pg_restore's jobs: --jobs, else one per core of the host (pg_restore's own advice), at most 8. */
async function jobsOn(t: Target, jobs: number | undefined): Promise<number> {
  if (jobs) return jobs
  const n = Number((await t.run('nproc', { allowFail: true, timeout: 15 })).stdout.trim())
  return Number.isInteger(n) && n > 0 ? Math.min(n, 8) : 2
}

/** "pg_restore 3.1 s, start 1.2 s": where a restore's time went, for the RTO. */
function timer() {
  const parts: string[] = []
  return {
    async time<T>(name: string, f: () => Promise<T>): Promise<T> {
      const t0 = Date.now()
      try { return await f() } finally { parts.push(`${name} ${((Date.now() - t0) / 1000).toFixed(1)} s`) }
    },
    text: () => parts.join(', '),
  }
}

/** App stopped, database recreated from the dump, roles, DuckDB swapped, app started; each timed. */
/**
 * `keepMaintenance`: the site stays in maintenance after the data is back (rollback
 * --restore-data: the older code goes live first; maintenanceEndStep ends it).
 */
export function dataRestoreStep(run: RestoreRun, jobs?: number, opts: { keepMaintenance?: boolean } = {}): Step<number> {
  const st = run.st
  const duck = duckdbOf(run.st)?.file
  return {
    title: `Data restored from ${run.manifest ? `backup ${run.manifest.id}` : run.source} (app stopped meanwhile; nginx shows the maintenance page)`,
    async check(t) {
      const j = await jobsOn(t, jobs)
      return { done: false, change: `recreate ${dbOf(st).database} from ${run.source}/postgres.dump (pg_restore -j ${j}${jobs ? '' : ', one per core'})${duck ? `, swap in ${duck}` : ''}`, plan: j }
    },
    async apply(t, j, log) {
      const has = (await t.run(restoreCommands.staged(run.source), { timeout: 30 })).stdout
      let warning: string | undefined
      const restored: string[] = []
      const clock = timer()
      let endMaintenance = async () => {}
      try {
        // Unless the operator already put the site in maintenance (then it stays so after).
        endMaintenance = await maintenanceDuring(t, st, 'We are restoring data and will be back shortly.')
        // Inside the try: a stop that fails half-way (a service scaled to 0, another not) still ends with everything started.
        await clock.time('app stopped', () => t.run(restoreCommands.stopApp(st), { onOutput: log, timeout: 120 }))
        await clock.time('database recreated', () => t.run(restoreCommands.recreateDb(st), { timeout: 300 }))
        const db = restoreCommands.dbContainer(st)
        if (has.includes('./roles.sql')) warning = await clock.time('roles', () => applyRoles(t, run, db, log))
        const r = await clock.time(`pg_restore -j ${j}`, () => t.run(restoreCommands.pgRestore(st, `${run.source}/postgres.dump`, db, j), { allowFail: true, timeout: 6 * 3600 }))
        if (r.code !== 0) throw new HostError(`pg_restore failed: ${r.stderr.trim().split('\n').slice(-2).join(' ')}`)
        if (duck && has.includes('./duckdb/db.duckdb')) await clock.time('DuckDB swapped', () => t.run(restoreCommands.duckSwap(st, duck, run.source, run.undo), { timeout: 3600 }))
        for (const v of stagedVolumes(st, has)) {
          // Accessories that mount it (Redis) stop too; the released services already have.
          const also = v.services.filter(s => !released(st.model).some(r => r.name === s))
          try {
            if (also.length) await t.run(serviceCommands.stop(st, also), { timeout: 120 })
            await clock.time(`volume ${v.name}`, () => t.run(restoreCommands.volumeSwap(v, run.source, run.undo), { timeout: 6 * 3600 }))
          } finally {
            if (also.length) await t.run(serviceCommands.start(st, also), { allowFail: true, timeout: 120 })
          }
          restored.push(v.name)
        }
      } finally {
        // Whatever happened, the app comes back (on the restored data, or on what is left).
        await clock.time('app started', () => t.run(restoreCommands.startApp(st), { allowFail: true, onOutput: log, timeout: 300 }))
        if (!opts.keepMaintenance) await endMaintenance()
      }
      return `from ${run.source} (${clock.text()})${restored.length ? `; volumes ${restored.join(', ')}` : ''}${warning ? `; WARNING ${warning}` : ''}`
    },
  }
}

/** The named volumes of the compose file, and the data folders of BACKUP_VOLUMES, that have a staged tar in `has` (a `find` listing). */
function stagedVolumes(st: Stack, has: string): BackupVolume[] {
  const all = [...st.model.volumes.map(n => volumeOf(st.model, st.project, n)), ...st.backupVolumes.filter(v => v.path)]
  return all.filter(v => has.split('\n').includes(`./volumes/${v.name}.tar`))
}

/**
 * Applies the backup's roles. The data does not depend on them (pg_restore runs with
 * --no-owner --no-acl), so a role statement the server refuses is reported, not fatal.
 */
async function applyRoles(t: Target, run: RestoreRun, container: string, log: (l: string) => void): Promise<string | undefined> {
  const roles = await t.run(sh`cat ${`${run.source}/roles.sql`}`, { timeout: 60 })
  const errors = (await t.run(restoreCommands.roles(run.st, container), { stdin: rolesToApply(roles.stdout, dbOf(run.st).user), timeout: 300 })).stdout.trim().split('\n').filter(Boolean)
  if (!errors.length) return undefined
  const warning = `${errors.length} role statement(s) from the backup failed, first: ${errors[0].replace(/^psql:[^ ]* /, '')}`
  log(warning)
  return warning
}

/**
 * Role statements from pg_dumpall, without those for the stack's own logins (the owner
 * and its rotation clone): their passwords are the ones the app uses now, not those of
 * backup time, and the clone is made by rotate-secret when it is needed.
 */
export function rolesToApply(sql: string, dbUser: string): string {
  const name = dbUser.replace(/[^a-z0-9_]/g, '')
  const own = new RegExp(`\\bROLE "?${name}"?( |;|$)|"?\\b${cloneUser(name)}\\b"?`)
  return sql.split('\n').filter(l => !own.test(l)).join('\n')
}

export function undoSource(dirs: string[]): string {
  const last = dirs.filter(Boolean).pop()
  if (!last) throw new UsageError(`There is no earlier restore to undo on this host (${UNDO_ROOT} is empty).`)
  return `${UNDO_ROOT}/${last}`
}
export const newUndoDir = (now = new Date()) => `${UNDO_ROOT}/${now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}`

/**
 * Marks a list of steps as one phase of the RTO report. A phase lasts from the end of the
 * phase before it to the end of its own last step: checks are all sent at once before
 * the first step runs, so adding up each step's own time would count them several times.
 */
export function phase(run: RestoreRun, name: string, steps: Step[]): Step[] {
  run.phases[name] ??= 0 // report phases in checklist order
  const mark = () => { run.phases[name] = Math.max(run.phases[name], Date.now()) }
  return steps.map(s => ({
    ...s,
    // The clock starts with the first check, after the confirmation (a person typing is not recovery time).
    async check(t) { run.started ??= Date.now(); try { return await s.check(t) } finally { mark() } },
    async apply(t, plan, log) { try { return await s.apply(t, plan, log) } finally { mark() } },
  }))
}

/** Each phase's duration: from the end of the one before (or the start) to its own end. */
export function phaseTimes(phases: Record<string, number>, started: number): [string, number][] {
  let last = started
  return Object.entries(phases).map(([k, end]) => {
    const d = Math.max(0, end - last)
    last = Math.max(last, end)
    return [k, d]
  })
}

const dur = (ms: number) => (ms >= 60_000 ? `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s` : `${(ms / 1000).toFixed(1)} s`)

/** The last step of a restore: what recovery took (RTO) and how old the data is (RPO). */
export function reportStep(run: RestoreRun): Step {
  return {
    title: 'Recovery time and data age (RTO, RPO)',
    async check() { return { done: false, change: 'report' } },
    async apply() {
      const started = run.started ?? Date.now()
      const parts = phaseTimes(run.phases, started).map(([k, v]) => `${k} ${dur(v)}`).join(', ')
      const rpo = run.manifest ? `; RPO ${dur(Date.now() - Date.parse(run.manifest.startedAt))} (backup ${run.manifest.id} started ${run.manifest.startedAt})` : ''
      return `RTO ${dur(Date.now() - started)} (${parts})${rpo}`
    },
  }
}

/** Reads pg_restore's script of a dump's data: "schema.table rows" per COPY block. */
export const COPY_COUNTS = "awk '/^COPY /{t=$2; n=0; inside=1; next} /^\\\\\\.$/{ if (inside) print t, n; inside=0; next} inside{n++}'"

export const drillCommands = {
  /**
   * A private network and a PostgreSQL container of the stack's PostgreSQL image, ready for connections.
   * Its settings (a throwaway password) arrive on stdin into a 0600 env file, not argv.
   */
  startDb: (st: Stack, name: string, envFile: string) => [
    'set -e',
    sh`(umask 077; cat > ${envFile})`,
    sh`docker network create ${name} >/dev/null`,
    sh`docker run -d --name ${`${name}-db`} --network ${name} --label opsbook.drill=1 --env-file ${envFile} ${st.model.services.find(s => s.name === dbOf(st).service)!.image} >/dev/null`,
    sh`i=0; until docker exec ${`${name}-db`} pg_isready -q -h 127.0.0.1 -U ${dbOf(st).user} -d ${dbOf(st).database}; do i=$((i+1)); [ $i -lt 240 ] || { echo 'the drill database did not start' >&2; exit 1; }; sleep 0.5; done`,
  ].join('\n'),
  dbEnv: (st: Stack, password: string) => `POSTGRES_USER=${dbOf(st).user}\nPOSTGRES_PASSWORD=${password}\nPOSTGRES_DB=${dbOf(st).database}\n`,
  /** Rows per table in the dump itself (COPY blocks of pg_restore's script output). */
  dumpCounts: (st: Stack, name: string, file: string) => sh`docker exec -i ${`${name}-db`} pg_restore -a -f - < ${file} | ` + COPY_COUNTS,
  tableCount: (st: Stack, name: string, table: string) => sh`docker exec ${`${name}-db`} psql -X -At -U ${dbOf(st).user} -d ${dbOf(st).database} -c ${`select count(*) from ${table}`}`,
  /**
   * The app (the backup's version) on the restored data, checked from the host. Its
   * environment is the live app's (app.env, then secrets.env: the last value of a key
   * wins, as in compose) with DATABASE_URL and PORT from stdin pointing at the drill.
   */
  appHealth: (st: Stack, name: string, image: string, data: string, envFile: string) => [
    'set -e',
    sh`docker image inspect ${image} >/dev/null 2>&1 || { echo ${`skipped: ${image} is not on this host`}; exit 0; }`,
    sh`(umask 077; cat ${`${st.dir}/app.env`} ${`${st.dir}/secrets.env`} 2>/dev/null | awk -F= '/^[A-Za-z_][A-Za-z0-9_]*=/ && $1 != "DATABASE_URL" && $1 != "PORT" { if (!($1 in v)) k[++n] = $1; v[$1] = $0 } END { for (i = 1; i <= n; i++) print v[k[i]] }' > ${envFile}; cat >> ${envFile})`,
    sh`docker run -d --name ${`${name}-app`} --network ${name} --label opsbook.drill=1 --env-file ${envFile} -v ${`${data}:/data`} ${image} >/dev/null`,
    sh`i=0; until ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' ${`${name}-app`}) && [ -n "$ip" ] && curl -fsS -m 2 -o /dev/null "http://$ip:${String(st.port)}${st.healthPath}"; do i=$((i+1)); [ $i -lt ${String(st.healthTimeout * 2)} ] || { echo 'the app did not answer its health check on the restored data' >&2; exit 1; }; sleep 0.5; done`,
    'echo healthy',
  ].join('\n'),
  appEnv: (st: Stack, name: string, password: string) => `DATABASE_URL=${databaseUrl(dbOf(st).user, password, dbOf(st).database).replace('@db:', `@${name}-db:`)}\nPORT=${st.port}\n`,
  /** Everything the drill made: containers (with their volumes), network, files. */
  cleanup: (name: string, dir: string) => sh`docker rm -f -v ${`${name}-app`} ${`${name}-db`} >/dev/null 2>&1; docker network rm ${name} >/dev/null 2>&1; rm -rf ${dir}; true`,
  leftovers: (name: string, dir: string) => sh`docker ps -aq --filter ${`name=${name}`}; docker network ls -q --filter ${`name=${name}`}; test -e ${dir} && echo ${dir}; true`,
}

/** Copies a staged DuckDB file (and WAL) from the host to here and opens it. */
async function fetchDuck(t: Target, dir: string) {
  const local = await mkdtemp(join(tmpdir(), 'opsbook-drill-'))
  try {
    for (const f of ['db.duckdb', 'db.duckdb.wal']) {
      if ((await t.run(sh`test -f ${`${dir}/${f}`}`, { allowFail: true, timeout: 30 })).code !== 0) continue
      const out = createWriteStream(join(local, f), { mode: 0o600 })
      await t.run(sh`cat ${`${dir}/${f}`}`, { stdout: out, timeout: 3600 })
      await new Promise<void>((res, rej) => out.end((e?: Error | null) => (e ? rej(e) : res())))
    }
    return await inspectDuckDb(join(local, 'db.duckdb'))
  } finally {
    await rm(local, { recursive: true, force: true })
  }
}

/** One line per successful drill: status.ts reads the newest against DRILL_MAX_AGE. */
const DRILLS = `${RESTORE_ROOT}/drills.log`
export interface DrillRecord { at: string; backup: string; backupStartedAt: string }
export const drillRecordCommands = {
  append: () => sh`mkdir -p -m 700 ${RESTORE_ROOT} && cat >> ${DRILLS}`,
  last: () => sh`tail -n 1 ${DRILLS} 2>/dev/null || true`,
}
export async function lastDrill(t: Target): Promise<DrillRecord | undefined> {
  const out = (await t.run(drillRecordCommands.last(), { timeout: 15 })).stdout.trim()
  try { return out ? JSON.parse(out) : undefined } catch { return undefined }
}

/** What the last restore did; `undo` is the folder (kind backup/undo) or the volume (kind pitr, pitr-undo) holding what it replaced. */
export interface LastRestore { kind: 'backup' | 'undo' | 'pitr' | 'pitr-undo'; id?: string; undo: string; at: string; toTime?: string }
const LAST = `${RESTORE_ROOT}/last.json`
export async function readLast(t: Target): Promise<LastRestore | undefined> {
  const r = await t.run(sh`cat ${LAST} 2>/dev/null || true`, { timeout: 30 })
  try { return r.stdout.trim() ? JSON.parse(r.stdout) : undefined } catch { return undefined }
}

/** Records what was restored and where the replaced data went, for --undo and re-runs. */
export function recordStep(run: RestoreRun, last: Omit<LastRestore, 'at'>): Step {
  return {
    title: 'Restore recorded (restore.ts --undo brings back the data it replaced)',
    async check() { return { done: false, change: `record ${last.kind === 'backup' ? `backup ${last.id}` : last.kind === 'pitr' ? `the restore to ${last.toTime}` : 'the undo'}` } },
    async apply(t) {
      await t.run(sh`mkdir -p -m 700 ${RESTORE_ROOT} && cat > ${`${LAST}.tmp`} && mv ${`${LAST}.tmp`} ${LAST}` + (run.manifest ? ' && ' + restoreCommands.discard(run.source) : ''),
        { stdin: JSON.stringify({ ...last, at: new Date().toISOString() }) + '\n', timeout: 30 })
    },
  }
}

/** A re-run of a finished restore: nothing to do, said plainly. */
export const alreadyStep = (what: string): Step => ({ title: what, async check() { return { done: true } }, async apply() {} })

/**
 * The whole drill after staging: throwaway PostgreSQL (never the live one), pg_restore,
 * row counts against the dump, DuckDB opened here against the manifest, the app's health
 * on the restored data; everything removed afterwards, whatever happened.
 */
export function drillStep(run: RestoreRun, jobs?: number): Step<number> {
  const st = run.st
  const m = run.manifest!
  const name = `opsbook-drill-${m.id.toLowerCase()}`
  return {
    title: `Drill: backup ${m.id} restored into throwaway containers and checked`,
    async check(t) { const j = await jobsOn(t, jobs); return { done: false, change: `restore into ${name}-db with pg_restore -j ${j} (the live database is not touched), check, remove`, plan: j } },
    async apply(t, j, log) {
      const password = randomBytes(18).toString('hex')
      const notes: string[] = []
      try {
        await t.run(drillCommands.startDb(st, name, `${run.source}/drill-db.env`), { stdin: drillCommands.dbEnv(st, password), timeout: 180 })
        const has = (await t.run(restoreCommands.staged(run.source), { timeout: 30 })).stdout
        if (has.includes('./roles.sql')) await applyRoles(t, run, `${name}-db`, log)
        const r = await t.run(restoreCommands.pgRestore(st, `${run.source}/postgres.dump`, `${name}-db`, j), { allowFail: true, timeout: 6 * 3600 })
        if (r.code !== 0) throw new HostError(`pg_restore into the drill database failed: ${r.stderr.trim().split('\n').slice(-2).join(' ')}`)
        const expected = (await t.run(drillCommands.dumpCounts(st, name, `${run.source}/postgres.dump`), { timeout: 6 * 3600 })).stdout.trim().split('\n').filter(Boolean)
        const wrong: string[] = []
        let rows = 0
        for (const line of expected) {
          const [table, n] = line.split(' ')
          const got = Number((await t.run(drillCommands.tableCount(st, name, table), { timeout: 3600 })).stdout.trim())
          rows += got
          if (got !== Number(n)) wrong.push(`${table}: ${got} rows restored, ${n} in the dump`)
        }
        if (wrong.length) throw new HostError(`The restored database differs from the dump: ${wrong.join('; ')}.`)
        notes.push(`PostgreSQL: ${expected.length} tables, ${rows} rows, as in the dump`)
        log(notes[0])
        if (has.includes('./duckdb/db.duckdb') && m.duckdb) {
          const got = await fetchDuck(t, `${run.source}/duckdb`)
          const diff = Object.entries(m.duckdb.tables).filter(([k, v]) => got.tables[k] !== v).map(([k, v]) => `${k}: ${got.tables[k] ?? 'missing'} rows, ${v} in the manifest`)
          if (diff.length) throw new HostError(`The DuckDB copy differs from its manifest: ${diff.join('; ')}.`)
          notes.push(`DuckDB: ${Object.keys(got.tables).length} tables as in the manifest`)
          await t.run(sh`mkdir -p ${`${run.source}/data`} && cp ${`${run.source}/duckdb/db.duckdb`} ${`${run.source}/data/${duckdbOf(run.st)?.file ?? 'app.duckdb'}`} && chmod -R a+rwX ${`${run.source}/data`}` +
            sh` && { [ ! -f ${`${run.source}/duckdb/db.duckdb.wal`} ] || cp ${`${run.source}/duckdb/db.duckdb.wal`} ${`${run.source}/data/${duckdbOf(run.st)?.file ?? 'app.duckdb'}.wal`}; }`, { timeout: 600 })
        }
        if (m.appVersion && !st.builtIn) {
          // The drill starts one container with the live app's env files: that is how the
          // built-in app gets its settings. Your compose file's services get theirs from it.
          notes.push(`app check skipped: drills start the app only for the built-in stack`)
        } else if (m.appVersion) {
          const app = await t.run(drillCommands.appHealth(st, name, imageAt(st.app, m.appVersion), `${run.source}/data`, `${run.source}/drill-app.env`),
            { stdin: drillCommands.appEnv(st, name, password), allowFail: true, timeout: st.healthTimeout + 120 })
          if (app.code !== 0) throw new HostError(`${m.appVersion} ${app.stderr.trim().split('\n').pop() || 'failed on the restored data'}.`)
          notes.push(app.stdout.includes('skipped') ? app.stdout.trim() : `app ${m.appVersion} healthy on the restored data`)
        }
      } finally {
        await t.run(drillCommands.cleanup(name, run.source), { allowFail: true, timeout: 120 })
      }
      const record: DrillRecord = { at: new Date().toISOString(), backup: m.id, backupStartedAt: m.startedAt }
      await t.run(drillRecordCommands.append(), { stdin: JSON.stringify(record) + '\n', timeout: 30 })
      return notes.join('; ')
    },
  }
}
