// Backups of the stack's data: PostgreSQL (pg_dump -Fc and the roles) and the app's DuckDB
// file, each streamed from the host straight into the store, hashed on the way, and a
// manifest written last. Listing and restore find backups only through manifests, so a
// backup that failed half-way is invisible (and its objects are cleaned up).
import { createHash } from 'node:crypto'
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs'
import { mkdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable, Transform, pipeline } from 'node:stream'
import { APP_ENV_PREFIX, SECRET_KEYS, type Config } from '../config.ts'
import { inspectDuckDb } from './duckdb.ts'
import { decryptStream, encryptStream } from './encryption.ts'
import { HostError, UsageError } from '../errors.ts'
import { live, readReleases } from '../stack/releases.ts'
import { applyRetention } from './retention.ts'
import { raw, sh } from '../sh.ts'
import { dbOf, duckdbOf, renderOverride, stackOf, type BackupVolume, type Stack } from '../stack/stack.ts'
import { serviceCommands } from '../stack/engine.ts'
import { renderRoutes } from '../stack/routes.ts'
import { makeBundle, type BundleFiles, type BundleIndex } from './bundle.ts'
import { fields, type Step } from '../steps.ts'
import { LocalStore, S3Store, parseS3Url, type Store } from './storage.ts'
import type { Target } from '../steps.ts'

/** bytes and sha256 are of the stored object (ciphertext when encrypted), so --verify needs no key. */
export interface BackupObject {
  key: string
  kind: 'pg_dump' | 'pg_globals' | 'duckdb' | 'duckdb_wal' | 'volume' | 'stack'
  bytes: number
  sha256: string
  plainBytes?: number
  /** kind volume: the compose file's name for it. */
  volume?: string
}

export interface Manifest {
  format: 'opsbook-backup/1'
  id: string
  app: string
  env: string
  host: string
  appVersion?: string
  startedAt: string
  finishedAt: string
  objects: BackupObject[]
  /** compression: how pg_dump compressed it (absent in backups from before: gzip). */
  postgres?: { version: string; database: string; compression?: string }
  duckdb?: { version: string; file: string; mode: 'freeze' | 'command'; pausedMs?: number; tables: Record<string, number> }
  /** Named volumes stored as tar files (BACKUP_VOLUMES). */
  volumes?: { name: string; mode: 'freeze' | 'live'; redis?: string }[]
  /** The stack's own files (stack.tar.gz): the compose file a new host is rebuilt from. */
  stack?: { files: string[] }
  /** age recipients (public keys) the objects were encrypted to; their keys end in .age. */
  encryption: null | { format: 'age'; recipients: string[] }
  pinned?: boolean
  /** Why it was taken, when not by schedule or hand: e.g. "before migration to v2". */
  note?: string
  /** Retention keeps it at least until then (a pre-migration backup: MIGRATION_BACKUP_DAYS). */
  keepUntil?: string
  /** postgres: only PostgreSQL, of a stack that has more data (DuckDB, volumes); "latest" skips it. */
  scope?: 'postgres'
}

export const MANIFEST = 'manifest.json'

/** 2026-11-22T10:15:00.123Z → 20261122T101500Z: sortable, and safe in every store. */
export const backupId = (d: Date) => d.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')
/** A backup id as given on the command line (restore --backup, backup --verify): refused with its noun otherwise. */
export function checkBackupId(id: string, flag: string): string {
  if (!/^\d{8}T\d{6}Z$/.test(id)) throw new UsageError(`${flag} ${JSON.stringify(id)} is not a backup id (like 20261122T031700Z)${flag === '--verify' ? ' or latest' : ''}; restore.ts lists the backups there are.`)
  return id
}
export const backupPrefix = (app: string, env: string) => `${app}/${env}/`

/**
 * pg_dump's compression for a server of `version` and the BACKUP_COMPRESSION setting:
 * `auto` is zstd level 1 where pg_dump has it (PostgreSQL 16+; 3x faster than gzip and
 * smaller, measured in README), else pg_dump's own gzip. pg_restore reads the method from
 * the dump's header, so backups made either way restore the same.
 */
export function dumpCompression(version: string, setting: string): string {
  const major = Number(/^(\d+)/.exec(version)?.[1] ?? 0)
  if (setting === 'auto') return major >= 16 ? 'zstd:1' : 'gzip'
  if (/^(zstd|lz4)/.test(setting) && major < 16) throw new UsageError(`BACKUP_COMPRESSION=${setting} needs pg_dump 16 or newer; this server runs PostgreSQL ${version}: use auto or gzip.`)
  return setting
}
const compressionArgs = (c: string) => (c === 'gzip' ? '' : c === 'none' ? ' -Z 0' : sh` -Z ${c}`)

export const backupCommands = {
  pgVersion: (st: Stack) => serviceCommands.exec(st, dbOf(st).service, sh`psql -X -At -U ${dbOf(st).user} -d ${dbOf(st).database} -c ${'show server_version'}`),
  // Run inside the database container: its pg_dump matches the server's major version.
  // Tagged with application_name so that pgStop can end it: closing the SSH channel does
  // not reach a process inside the container, which would otherwise run on unread.
  pgDump: (st: Stack, tag: string, compression: string) => serviceCommands.exec(st, dbOf(st).service, sh`pg_dump -Fc${raw(compressionArgs(compression))} -U ${dbOf(st).user} -d ${dbOf(st).database}`, ['-e', `PGAPPNAME=${tag}`]),
  pgStop: (st: Stack, tag: string) => serviceCommands.exec(st, dbOf(st).service, sh`psql -X -At -U ${dbOf(st).user} -d ${dbOf(st).database} -c ${`select count(pg_terminate_backend(pid)) from pg_stat_activity where application_name = '${tag}'`}`),
  pgGlobals: (st: Stack) => serviceCommands.exec(st, dbOf(st).service, sh`pg_dumpall --globals-only -U ${dbOf(st).user}`),
  /**
   * Crash-consistent copy of a DuckDB file the app holds open: the app containers are
   * frozen (cgroup freezer, no signal to the app) only while the file and its WAL are
   * copied on the host's own disk; a trap unfreezes them whatever happens.
   */
  duckFreezeCopy: (st: Stack, file: string, snap: string) => [
    'set -e',
    sh`vol=$(docker volume inspect -f '{{.Mountpoint}}' ${duckdbOf(st)!.volume})`,
    sh`rm -rf ${snap}; mkdir -p -m 700 ${snap}`,
    sh`test -f "$vol"/${file} || { echo "no DuckDB file ${file} in the app-data volume" >&2; exit 3; }`,
    `ids=$(${serviceCommands.containers(st, duckdbOf(st)!.service)})`,
    't0=$(date +%s%N)',
    '[ -z "$ids" ] || docker pause $ids >/dev/null',
    'trap \'[ -z "$ids" ] || docker unpause $ids >/dev/null\' EXIT INT TERM',
    sh`cp "$vol"/${file} ${snap}/db`,
    sh`if [ -f "$vol"/${`${file}.wal`} ]; then cp "$vol"/${`${file}.wal`} ${snap}/wal; fi`,
    '[ -z "$ids" ] || docker unpause $ids >/dev/null',
    'trap - EXIT INT TERM',
    'echo "paused_ms=$(( ($(date +%s%N) - t0) / 1000000 ))"',
  ].join('\n'),
  /** With the app's help: COMMAND (run in an app container) writes a consistent copy to $OPSBOOK_BACKUP_TO. */
  duckCommandCopy: (st: Stack, command: string, snap: string) => [
    'set -e',
    sh`vol=$(docker volume inspect -f '{{.Mountpoint}}' ${duckdbOf(st)!.volume})`,
    sh`rm -rf "$vol"/.opsbook-backup ${snap}; mkdir -p -m 700 ${snap}; mkdir -p "$vol"/.opsbook-backup; chmod 777 "$vol"/.opsbook-backup`,
    `c=$(${serviceCommands.containers(st, duckdbOf(st)!.service)} | head -n 1)`,
    sh`docker exec -e OPSBOOK_BACKUP_TO=/data/.opsbook-backup/db "$c" sh -c ${command}`,
    sh`mv "$vol"/.opsbook-backup/db ${snap}/db; rm -rf "$vol"/.opsbook-backup`,
  ].join('\n'),
  /**
   * A named volume as a tar stream. Redis first writes a fresh snapshot (BGSAVE; the
   * one-second wait makes LASTSAVE tell the new save from an older one). :freeze copies
   * the volume on the host's disk while the services that mount it are paused, then
   * streams the copy; live streams the volume as it is.
   */
  volumeTar: (st: Stack, v: BackupVolume, snap: string) => [
    'set -e',
    mountpoint(v),
    ...(v.redis ? [
      `c=$(${serviceCommands.containers(st, v.redis)})`,
      't0=$(docker exec "$c" redis-cli LASTSAVE); sleep 1',
      'docker exec "$c" redis-cli BGSAVE >/dev/null 2>&1 || true',
      'i=0; until [ "$(docker exec "$c" redis-cli LASTSAVE)" -gt "$t0" ]; do i=$((i+1)); [ $i -lt 3000 ] || { echo "Redis did not finish BGSAVE" >&2; exit 1; }; sleep 0.2; done',
    ] : []),
    ...(v.mode === 'freeze' ? [
      sh`rm -rf ${snap}; mkdir -p -m 700 ${snap}`,
      `ids=$(${v.services.map(s => serviceCommands.containers(st, s)).join('; ')})`,
      '[ -z "$ids" ] || docker pause $ids >/dev/null',
      'trap \'[ -z "$ids" ] || docker unpause $ids >/dev/null\' EXIT INT TERM',
      sh`cp -a "$vol"/. ${snap}/`,
      '[ -z "$ids" ] || docker unpause $ids >/dev/null',
      'trap - EXIT INT TERM',
      sh`tar -C ${snap} --numeric-owner -cf - .`,
    ] : ['tar -C "$vol" --numeric-owner -cf - .']),
  ].join('\n'),
  cat: (path: string) => sh`cat ${path}`,
  exists: (path: string) => sh`test -f ${path}`,
  cleanup: (snap: string) => sh`rm -rf ${snap}`,
}

/** `vol=` the folder a BACKUP_VOLUMES entry holds on the host: a named volume's mountpoint, or a bind-mounted folder. */
export const mountpoint = (v: BackupVolume) => (v.path ? sh`vol=${v.path}; [ -d "$vol" ] || mkdir -p "$vol"` : sh`vol=$(docker volume inspect -f '{{.Mountpoint}}' ${v.volume})`)

/** Passes bytes through while counting them and hashing them (sha256). */
export class Digest extends Transform {
  bytes = 0
  private hash = createHash('sha256')
  sha256 = ''
  constructor(private onChunk?: (chunk: Buffer, total: number) => void) { super() }
  _transform(chunk: Buffer, _: string, done: (e?: Error | null, data?: Buffer) => void) {
    this.bytes += chunk.length
    this.hash.update(chunk)
    this.onChunk?.(chunk, this.bytes)
    done(null, chunk)
  }
  _flush(done: () => void) { this.sha256 = this.hash.digest('hex'); done() }
}

/**
 * Streams a command's stdout from the host into store/key. The object is completed only
 * when the command exited 0; otherwise the upload is aborted and the command's error
 * (its last stderr line) is thrown. Memory stays flat: the SSH channel is paused while
 * the store cannot keep up. `tee` sees every chunk too (e.g. a local copy to verify).
 */
export async function streamToStore(t: Target, command: string, store: Store, key: string, opts: { timeout: number; progress?: (bytes: number) => void; tee?: (chunk: Buffer) => void; recipients?: string[] }): Promise<{ bytes: number; sha256: string; plainBytes?: number }> {
  // plain counts what the host sent (progress, tee); stored hashes what the store keeps.
  const plain = new Digest((c, total) => { opts.tee?.(c); opts.progress?.(total) })
  let stored = plain
  if (opts.recipients) {
    stored = new Digest()
    pipeline(await encryptStream(opts.recipients, plain), stored, () => {})
  }
  const putting = store.put(key, stored as unknown as Readable)
  // If the store gives up (endpoint down, bucket missing), the remote command must stop
  // too: with nobody reading, backpressure would leave it blocked until its timeout.
  const stop = new AbortController()
  let storeError: Error | undefined
  putting.catch(e => { storeError = e; stop.abort() })
  let r
  try {
    r = await t.run(command, { stdout: plain, allowFail: true, timeout: opts.timeout, signal: stop.signal })
  } catch (e) {
    plain.destroy(e as Error)
    await putting.catch(() => {})
    throw storeError ?? e
  }
  if (storeError) throw storeError
  if (r.code !== 0) {
    const why = r.stderr.trim().split('\n').pop() || `exit ${r.code}`
    const err = new HostError(`${key}: the command on the host failed (${r.code === 124 ? 'timed out' : why}); nothing was stored.`)
    plain.destroy(err)
    await putting.catch(() => {})
    throw err
  }
  plain.end()
  await putting
  return { bytes: stored.bytes, sha256: stored.sha256, ...(opts.recipients ? { plainBytes: plain.bytes } : {}) }
}

/** Manifests under the app/env prefix, newest first (unreadable ones are skipped). */
export async function listBackups(store: Store, app: string, env: string): Promise<Manifest[]> {
  const keys = (await store.list(backupPrefix(app, env))).filter(k => k.endsWith(`/${MANIFEST}`))
  const out: Manifest[] = []
  for (const k of keys) {
    try { out.push(JSON.parse(await readAll(await store.get(k)))) } catch {}
  }
  return out.sort((a, b) => b.id.localeCompare(a.id))
}

export async function readBytes(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const c of r) parts.push(Buffer.from(c))
  return Buffer.concat(parts)
}
export const readAll = async (r: Readable) => (await readBytes(r)).toString('utf8')

/** An object's plaintext, decrypted on this machine when the backup is encrypted. */
export async function openObject(store: Store, m: Manifest, o: BackupObject, identities?: string[]): Promise<Readable> {
  const stored = await store.get(o.key)
  if (!m.encryption) return stored
  if (!identities?.length) {
    stored.destroy()
    throw new UsageError(`Backup ${m.id} is encrypted (age, to ${m.encryption.recipients.join(', ')}): set BACKUP_AGE_IDENTITY_FILE to the matching private key file.`)
  }
  return decryptStream(identities, stored, `${o.key} of backup ${m.id}`)
}

/** Re-reads every object of a backup and compares size and sha256 with the manifest. */
export async function verifyBackup(store: Store, m: Manifest): Promise<string[]> {
  const problems: string[] = []
  for (const o of m.objects) {
    try {
      const hash = createHash('sha256')
      let bytes = 0
      for await (const c of await store.get(o.key)) { hash.update(c); bytes += c.length }
      const sha256 = hash.digest('hex')
      if (bytes !== o.bytes || sha256 !== o.sha256) problems.push(`${o.key}: expected ${o.bytes} bytes sha256 ${o.sha256.slice(0, 12)}…, found ${bytes} bytes sha256 ${sha256.slice(0, 12)}…`)
    } catch (e) {
      problems.push(`${o.key}: ${(e as Error).message}`)
    }
  }
  return problems
}

// ---- The backup runbook's steps ----

export interface BackupRun {
  config: Config
  st: Stack
  store: Store
  id: string
  /** app/env/id/ — every object of this backup lives under it. */
  prefix: string
  startedAt: Date
  pinned: boolean
  objects: BackupObject[]
  postgres?: Manifest['postgres']
  duckdb?: Manifest['duckdb']
  volumes?: Manifest['volumes']
  stack?: Manifest['stack']
  note?: string
  keepUntil?: string
  scope?: Manifest['scope']
  /** This machine's scratch directory for the DuckDB copy being verified. */
  scratch: string
}

export function storeOf(c: Config): Store {
  if (c.backup.dest === 'local') return new LocalStore(c.backup.dir)
  return new S3Store({ ...parseS3Url(c.backup.dest), ...c.backup.s3 })
}

export function newBackupRun(c: Config, opts: { pinned?: boolean; now?: Date; note?: string; keepDays?: number } = {}): BackupRun {
  const startedAt = opts.now ?? new Date()
  const id = backupId(startedAt)
  return {
    config: c, st: stackOf(c), store: storeOf(c), id, prefix: `${backupPrefix(c.app.name, c.env)}${id}/`, startedAt,
    pinned: Boolean(opts.pinned), objects: [], scratch: join(tmpdir(), `opsbook-backup-${process.pid}-${id}`),
    ...(opts.note ? { note: opts.note } : {}),
    ...(opts.keepDays ? { keepUntil: new Date(startedAt.getTime() + opts.keepDays * 86400_000).toISOString() } : {}),
  }
}

/** The newest backup that holds all the stack's data (a pre-migration one may hold only PostgreSQL). */
export const newestFull = (ms: Manifest[]) => ms.find(m => !m.scope)

const SNAPSHOT = '/var/lib/opsbook/duckdb-snapshot'
const STEP_TIMEOUT = 6 * 3600

const rate = (bytes: number, ms: number) => `${(bytes / 1048576).toFixed(1)} MiB in ${(ms / 1000).toFixed(1)} s (${(bytes / 1e6 / Math.max(ms / 1000, 0.001)).toFixed(0)} MB/s)`

/** Stores one stream as part of this backup; on any failure the backup's objects so far go too. */
async function put(run: BackupRun, t: Target, command: string, name: string, kind: BackupObject['kind'], log: (l: string) => void, opts: { tee?: (c: Buffer) => void; stop?: string } = {}) {
  const recipients = run.config.backup.recipients
  const key = `${run.prefix}${name}${recipients ? '.age' : ''}`
  const t0 = Date.now()
  try {
    const r = await streamToStore(t, command, run.store, key, { timeout: STEP_TIMEOUT, tee: opts.tee, recipients, progress: n => log(`${name}: ${rate(n, Date.now() - t0)}`) })
    run.objects.push({ key, kind, ...r })
    return { bytes: r.plainBytes ?? r.bytes, ms: Date.now() - t0 }
  } catch (e) {
    if (opts.stop) await t.run(opts.stop, { allowFail: true, timeout: 30 }).catch(() => {})
    await run.store.remove(run.objects.map(o => o.key)).catch(() => {})
    run.objects = []
    throw e
  }
}

export function postgresStep(run: BackupRun): Step<{ version: string; compression: string }> {
  const db = dbOf(run.st).database
  return {
    title: `PostgreSQL ${db} dumped to ${run.store.where} (pg_dump -Fc, roles)`,
    async check(t) {
      const r = await t.run(serviceCommands.exec(run.st, dbOf(run.st).service, sh`psql -X -At -F '|' -U ${dbOf(run.st).user} -d ${db} -c ${"select current_setting('server_version'), pg_database_size(current_database())"}`), { allowFail: true, timeout: 60 })
      if (r.code !== 0) throw new HostError(`The database container of ${run.st.dir} does not answer (${r.stderr.trim().split('\n').pop() || `exit ${r.code}`}): is the stack deployed and running?`)
      const [version, size] = r.stdout.trim().split('|')
      const compression = dumpCompression(version, run.config.backup.compression)
      return { done: false, change: `dump ${db} (${(Number(size) / 1048576).toFixed(1)} MiB on disk, PostgreSQL ${version}, ${compression}) as ${run.id}`, plan: { version, compression } }
    },
    async apply(t, plan, log) {
      const tag = `opsbook-backup-${run.id}`
      const dump = await put(run, t, backupCommands.pgDump(run.st, tag, plan.compression), 'postgres.dump', 'pg_dump', log, { stop: backupCommands.pgStop(run.st, tag) })
      await put(run, t, backupCommands.pgGlobals(run.st), 'roles.sql', 'pg_globals', log)
      run.postgres = { version: plan.version, database: db, compression: plan.compression }
      return `postgres.dump ${rate(dump.bytes, dump.ms)} (${plan.compression}), roles.sql`
    },
  }
}

export function duckdbStep(run: BackupRun): Step {
  const file = duckdbOf(run.st)?.file
  const command = run.config.backup.duckdbCommand
  return {
    title: `DuckDB file copied, verified and stored${file ? ` (${file}, ${command ? 'app command' : 'brief freeze'})` : ''}`,
    async check(t) {
      if (!file) return { skip: 'no DUCKDB_FILE' }
      return { done: false, change: `copy ${file} ${command ? 'with DUCKDB_BACKUP_COMMAND' : 'while the app containers are frozen'}` }
    },
    async apply(t, _, log) {
      const copied = await t.run(command ? backupCommands.duckCommandCopy(run.st, command, SNAPSHOT) : backupCommands.duckFreezeCopy(run.st, file!, SNAPSHOT), { allowFail: true, timeout: 3600 })
      try {
        if (copied.code !== 0) throw new HostError(`Copying ${file} failed: ${copied.stderr.trim().split('\n').pop() || `exit ${copied.code}`}.`)
        const pausedMs = command ? undefined : Number(fields(copied.stdout).paused_ms)
        await mkdir(run.scratch, { recursive: true, mode: 0o700 })
        const local = join(run.scratch, 'copy.duckdb')
        const sink = (path: string) => { const fd = openSync(path, 'w', 0o600); return { tee: (c: Buffer) => writeSync(fd, c), close: () => closeSync(fd) } }
        const db = sink(local)
        const main = await put(run, t, backupCommands.cat(`${SNAPSHOT}/db`), 'duckdb/db.duckdb', 'duckdb', log, { tee: db.tee }).finally(db.close)
        let walNote = ''
        if ((await t.run(backupCommands.exists(`${SNAPSHOT}/wal`), { allowFail: true, timeout: 30 })).code === 0) {
          const wal = sink(`${local}.wal`)
          const w = await put(run, t, backupCommands.cat(`${SNAPSHOT}/wal`), 'duckdb/db.duckdb.wal', 'duckdb_wal', log, { tee: wal.tee }).finally(wal.close)
          walNote = ` + WAL ${(w.bytes / 1048576).toFixed(1)} MiB`
        }
        let inspected
        try {
          inspected = await inspectDuckDb(local)
        } catch (e) {
          await run.store.remove(run.objects.map(o => o.key)).catch(() => {})
          run.objects = []
          throw e
        }
        run.duckdb = { version: inspected.version, file: file!, mode: command ? 'command' : 'freeze', pausedMs, tables: inspected.tables }
        const rows = Object.values(inspected.tables).reduce((a, b) => a + b, 0)
        return `${rate(main.bytes, main.ms)}${walNote}; opens in DuckDB ${inspected.version}: ${Object.keys(inspected.tables).length} tables, ${rows} rows${pausedMs !== undefined ? `; app frozen ${pausedMs} ms` : ''}`
      } finally {
        await t.run(backupCommands.cleanup(SNAPSHOT), { allowFail: true, timeout: 60 })
        await rm(run.scratch, { recursive: true, force: true })
      }
    },
  }
}

/** BACKUP_VOLUMES, each a tar object (Redis volumes after a BGSAVE; :freeze ones copied while paused). */
export function volumesStep(run: BackupRun): Step {
  const vs = run.st.backupVolumes
  return {
    title: `Volumes stored as tar files${vs.length ? ` (${vs.map(v => `${v.name}${v.redis ? ', Redis BGSAVE first' : v.mode === 'freeze' ? ', frozen' : ''}`).join('; ')})` : ''}`,
    async check() {
      if (!vs.length) return { skip: 'no BACKUP_VOLUMES' }
      return { done: false, change: `tar ${vs.map(v => v.name).join(', ')}` }
    },
    async apply(t, _, log) {
      const done: string[] = []
      try {
        for (const v of vs) {
          const r = await put(run, t, backupCommands.volumeTar(run.st, v, SNAPSHOT), `volumes/${v.name}.tar`, 'volume', log)
          run.objects[run.objects.length - 1].volume = v.name
          done.push(`${v.name} ${rate(r.bytes, r.ms)}`)
        }
      } finally {
        await t.run(backupCommands.cleanup(SNAPSHOT), { allowFail: true, timeout: 60 })
      }
      run.volumes = vs.map(v => ({ name: v.name, mode: v.mode, ...(v.redis ? { redis: v.redis } : {}) }))
      return done.join('; ')
    },
  }
}

/**
 * The stack's own files as deployed (compose file, opsbook's override, nginx routes, the
 * settings without secrets), so that a new host is rebuilt from the stack that was backed
 * up, not from whatever the operator's checkout holds by then.
 */
export function bundleStep(run: BackupRun): Step {
  return {
    title: 'Stack files stored (stack.tar.gz: the compose files and the files beside them, opsbook.yml, nginx routes, settings without secrets)',
    async check() { return { done: false, change: `store ${run.prefix}stack.tar.gz` } },
    async apply() {
      const st = run.st
      const index: BundleIndex = { compose: st.composeFiles.map(f => f.name), project: st.projectFiles.map(f => ({ path: f.path, mode: f.mode, kind: f.kind })) }
      const content: BundleFiles = {
        ...Object.fromEntries(st.composeFiles.map(f => [f.name, f.text])), 'opsbook.yml': renderOverride(st), 'proxy/default.conf': renderRoutes(st.model),
        'settings.env': publicSettings(run.config), 'stack.json': JSON.stringify(index),
        ...Object.fromEntries(st.projectFiles.map(f => [`project/${f.path}`, f.content])),
      }
      const gz = await makeBundle(content)
      const recipients = run.config.backup.recipients
      const key = `${run.prefix}stack.tar.gz${recipients ? '.age' : ''}`
      const stored = new Digest()
      const source = recipients ? await encryptStream(recipients, Readable.from([gz])) : Readable.from([gz])
      pipeline(source, stored, () => {})
      await run.store.put(key, stored as unknown as Readable)
      run.objects.push({ key, kind: 'stack', bytes: stored.bytes, sha256: stored.sha256, ...(recipients ? { plainBytes: gz.length } : {}) })
      run.stack = { files: Object.keys(content) }
      return `${Object.keys(content).length} files, ${gz.length} bytes`
    },
  }
}

/** The settings file's keys a restore may need, without any value that could be secret. */
function publicSettings(c: Config): string {
  const hidden = new Set<string>([...SECRET_KEYS, ...Object.keys(c.stack.composeVars)])
  const lines = readFileSync(c.file, 'utf8').split('\n').filter(l => /^[A-Z_][A-Z0-9_]*=/.test(l))
  return lines.map(l => { const k = l.slice(0, l.indexOf('=')); return hidden.has(k) || k.startsWith(APP_ENV_PREFIX) ? `${k}=<not stored: secret>` : l }).join('\n') + '\n'
}

export function manifestStep(run: BackupRun): Step {
  return {
    title: 'Manifest written last (sizes, sha256, versions)',
    async check() { return { done: false, change: `write ${run.prefix}${MANIFEST}` } },
    async apply(t) {
      if (!run.objects.length) throw new HostError('Nothing was backed up, so no manifest was written.')
      const appVersion = live(await readReleases(t, run.st))?.version
      const m: Manifest = {
        format: 'opsbook-backup/1', id: run.id, app: run.config.app.name, env: run.config.env, host: t.name, appVersion,
        startedAt: run.startedAt.toISOString(), finishedAt: new Date().toISOString(), objects: run.objects,
        postgres: run.postgres, duckdb: run.duckdb, volumes: run.volumes, stack: run.stack,
        encryption: run.config.backup.recipients ? { format: 'age', recipients: run.config.backup.recipients } : null, ...(run.pinned ? { pinned: true } : {}),
        ...(run.note ? { note: run.note } : {}), ...(run.keepUntil ? { keepUntil: run.keepUntil } : {}), ...(run.scope ? { scope: run.scope } : {}),
      }
      try {
        await run.store.put(`${run.prefix}${MANIFEST}`, Readable.from([JSON.stringify(m, null, 1) + '\n']))
      } catch (e) {
        await run.store.remove(run.objects.map(o => o.key)).catch(() => {})
        throw e
      }
      const total = run.objects.reduce((a, o) => a + o.bytes, 0)
      return `${run.id}: ${run.objects.length} objects, ${(total / 1048576).toFixed(1)} MiB`
    },
  }
}

/** Old backups beyond the retention rules go; so do leftovers of runs that died (no manifest, over a day old). */
export function retentionStep(run: BackupRun): Step<string[]> {
  const r = run.config.backup.retention
  return {
    title: `Retention (last ${r.last}, ${r.daily} daily, ${r.weekly} weekly, ${r.monthly} monthly, at least ${r.minKeep}; pinned kept)`,
    async check() {
      const base = backupPrefix(run.config.app.name, run.config.env)
      const keys = await run.store.list(base)
      const ids = new Map<string, string[]>()
      for (const k of keys) {
        const id = k.slice(base.length).split('/')[0]
        ids.set(id, [...(ids.get(id) ?? []), k])
      }
      const manifests = (await listBackups(run.store, run.config.app.name, run.config.env))
      const { drop } = applyRetention(manifests, r)
      const dayAgo = backupId(new Date(Date.now() - 86400000))
      const orphans = [...ids.keys()].filter(id => id !== run.id && !manifests.some(m => m.id === id) && id < dayAgo)
      const gone = [...drop.map(m => m.id), ...orphans]
      if (!gone.length) return { done: true, detail: `${manifests.length} kept` }
      return { done: false, change: `delete ${drop.length ? drop.map(m => m.id).join(', ') : ''}${orphans.length ? `${drop.length ? '; ' : ''}incomplete ${orphans.join(', ')}` : ''}`, plan: gone.flatMap(id => ids.get(id) ?? []) }
    },
    async apply(_, keys) {
      // Manifests first: a backup half-deleted by an interrupted run is then already invisible.
      await run.store.remove(keys.filter(k => k.endsWith(`/${MANIFEST}`)))
      await run.store.remove(keys.filter(k => !k.endsWith(`/${MANIFEST}`)))
    },
  }
}

/** Re-reads a stored backup and compares every object with its manifest (size and sha256). */
export function verifyStep(c: Config, which: string): Step {
  const store = storeOf(c)
  return {
    title: `Backup ${which} in ${store.where} matches its manifest (size, sha256)`,
    async check() {
      const all = await listBackups(store, c.app.name, c.env)
      const m = which === 'latest' ? newestFull(all) : all.find(x => x.id === which)
      if (!m) throw new UsageError(all.length ? `No backup ${which} for ${c.app.name}/${c.env} in ${store.where}; the newest are: ${all.slice(0, 5).map(x => x.id).join(', ')}.` : `There are no backups of ${c.app.name}/${c.env} in ${store.where}.`)
      const problems = await verifyBackup(store, m)
      if (problems.length) throw new HostError(`Backup ${m.id} is damaged: ${problems.join('; ')}.`)
      return { done: true, detail: `${m.id}: ${m.objects.length} objects verified` }
    },
    async apply() {},
  }
}
