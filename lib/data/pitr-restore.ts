// Point-in-time recovery (PITR=on) from pgBackRest's archive, three ways:
//   - same host: pgbackrest restores into a new volume, which then takes the live volume's
//     place by renaming directories (O(1)); the replaced data stays in an undo volume;
//   - drill: the same restore into a throwaway volume and container (off the stack's
//     network, archiving off: a drill never writes into the archive), checked and removed;
//   - new host (DR): restored into the database's volume before PostgreSQL first starts
//     there; it promotes and goes on archiving into the same repository on a new timeline.
// The archive holds the database only: DuckDB files and uploads come from pg_dump backups.
import { HostError, UsageError } from '../errors.ts'
import { sh } from '../sh.ts'
import type { RunResult, Step, Target } from '../steps.ts'
import { maintenanceDuring } from '../stack/maintenance.ts'
import { PGBACKREST_CONF_DIR } from '../stack/pgbackrest-image.ts'
import { dbOf, stackCommands, type Stack } from '../stack/stack.ts'
import { STANZA, parseInfo, pgbackrestError, pgdataCommand, pitrCommands, refuseTarget, requirePitr, targetText, type PitrInfo } from './pitr.ts'
import { drillRecordCommands, restoreCommands, type DrillRecord } from './restore.ts'

/** The named volume holding PGDATA (docker's name), from the compose file's mounts. */
export function pgdataVolume(st: Stack, dataDir: string): string {
  return pgdataMount(st, dataDir).volume
}
function pgdataMount(st: Stack, dataDir: string): { key: string; volume: string } {
  const svc = st.model.services.find(s => s.name === dbOf(st).service)!
  const mount = Object.entries(svc.volumes).filter(([, target]) => dataDir === target.replace(/\/$/, '') || dataDir.startsWith(`${target.replace(/\/$/, '')}/`)).sort((a, b) => b[1].length - a[1].length)[0]
  if (!mount) throw new UsageError(`${dbOf(st).service}'s data directory ${dataDir} is in none of its named volumes (${st.model.file}): a point-in-time restore replaces that volume's content, so PGDATA must live in one.`)
  if (mount[1].replace(/\/$/, '') !== dataDir) throw new UsageError(`${dbOf(st).service}'s data directory ${dataDir} is below its volume's mount point ${mount[1]}; mount the volume at PGDATA itself for a point-in-time restore.`)
  return { key: mount[0], volume: `${st.project}_${mount[0]}` }
}

const mp = `mp() { docker volume inspect -f '{{.Mountpoint}}' "$1"; }`

export const pitrRestoreCommands = {
  /** pgbackrest as postgres in a throwaway container of the derived image, with the repository's settings (no database needed). */
  once: (st: Stack, mounts: string[] = []) =>
    sh`docker run --rm -u postgres --env-file ${`${st.dir}/pitr/secrets.env`} -v ${`${st.dir}/pitr/conf:${PGBACKREST_CONF_DIR}:ro`}` +
    mounts.map(m => sh` -v ${m}`).join('') + sh` --entrypoint pgbackrest ${st.pitr!.image} ${`--stanza=${STANZA}`}`,
  info: (st: Stack) => `${pitrRestoreCommands.once(st)} info --output=json`,
  /** pgbackrest restore into a new volume `into`, owned by postgres. */
  restoreInto: (st: Stack, into: string, dataDir: string, target: number | undefined, opts: { archiveOff?: boolean } = {}) => [
    'set -e',
    sh`docker volume create ${into} >/dev/null`,
    sh`docker run --rm -v ${`${into}:/d`} --entrypoint sh ${st.pitr!.image} -c 'chown postgres:postgres /d && chmod 700 /d'`,
    `${pitrRestoreCommands.once(st, [`${into}:${dataDir}`])} restore` +
      // No target: PostgreSQL replays the whole archive and promotes by itself (pgBackRest
      // refuses --target-action without a --type).
      (target === undefined ? '' : sh` --type=time ${`--target=${targetText(target)}`} --target-action=promote`) + (opts.archiveOff ? ' --archive-mode=off' : ''),
  ].join('\n'),
  /**
   * `live` takes `fresh`'s content and `undo` (created) takes live's, by renaming the
   * volumes' directories (same file system: no copy); `fresh` is removed.
   */
  swap: (live: string, fresh: string, undo: string) => [
    'set -e',
    sh`docker volume create ${undo} >/dev/null`,
    mp,
    sh`l=$(mp ${live}); f=$(mp ${fresh}); u=$(mp ${undo})`,
    'rmdir "$u" && mv "$l" "$u" && mv "$f" "$l" && mkdir "$f"',
    sh`docker volume rm ${fresh} >/dev/null`,
  ].join('\n'),
  /** Does the volume hold a database cluster (PG_VERSION) that finished recovery (no recovery.signal)? "yes", "recovering" or "no". */
  holdsCluster: (volume: string) => [mp, sh`d=$(mp ${volume} 2>/dev/null) && [ -f "$d/PG_VERSION" ] && { [ -f "$d/recovery.signal" ] && echo recovering || echo yes; } || echo no`].join('\n'),
  /**
   * --undo of a point-in-time restore: the swapped-back cluster recovers once more from the
   * archive on its own timeline and promotes onto a new one, numbered past the abandoned
   * branch. Without this, a later restore to "latest" would follow the newest timeline: the
   * branch --undo threw away.
   */
  newTimeline: (volume: string) => [
    'set -e', mp, sh`d=$(mp ${volume})`,
    sh`printf %s ${`\nrestore_command = 'pgbackrest --stanza=${STANZA} archive-get %f "%p"'\nrecovery_target_timeline = 'current'\n`} >> "$d/postgresql.auto.conf"`,
    'touch "$d/recovery.signal" && chown --reference="$d/PG_VERSION" "$d/recovery.signal"',
  ].join('\n'),
  /** The recovery settings newTimeline added, removed once promoted. */
  resetRecovery: ['alter system reset restore_command', 'alter system reset recovery_target_timeline', 'select pg_reload_conf()'],
  timeline: 'select timeline_id from pg_control_checkpoint()',
  /**
   * A new host: the compose volume `live` created as compose would (its labels: no "not
   * created by Docker Compose" warning later) and `fresh`'s restored content moved into it.
   */
  adopt: (st: Stack, key: string, live: string, fresh: string) => [
    'set -e',
    sh`docker volume inspect ${live} >/dev/null 2>&1 || docker volume create --label ${`com.docker.compose.project=${st.project}`} --label ${`com.docker.compose.volume=${key}`} ${live} >/dev/null`,
    mp,
    sh`l=$(mp ${live}); f=$(mp ${fresh})`,
    'rm -rf "$l" && mv "$f" "$l" && mkdir "$f"',
    sh`docker volume rm ${fresh} >/dev/null`,
  ].join('\n'),
  /** "t|…" while recovering, "f|<last replayed transaction's time>" once promoted. */
  recoverySql: "select case when pg_is_in_recovery() then 't' else 'f' end || '|' || coalesce(pg_last_xact_replay_timestamp()::text, '')",
  recovery: (st: Stack) => pitrCommands.psql(st, pitrRestoreCommands.recoverySql),
  /** Every table's exact row count ("schema.table rows"), in one read-only query. */
  countsSql: "select table_schema || '.' || table_name || ' ' || (xpath('/row/c/text()', query_to_xml(format('select count(*) as c from %I.%I', table_schema, table_name), false, true, '')))[1]::text from information_schema.tables where table_type = 'BASE TABLE' and table_schema not in ('pg_catalog', 'information_schema') order by 1",
  drill: {
    /**
     * The throwaway PostgreSQL on the restored volume, with the repository's settings: its
     * restore_command fetches WAL from the bucket. Docker's default bridge, not the stack's
     * network, and no published port: psql goes through docker exec.
     */
    start: (st: Stack, name: string, volume: string, dataDir: string) =>
      sh`docker run -d --name ${name} --label opsbook.drill=1 -e ${`PGDATA=${dataDir}`} --env-file ${`${st.dir}/pitr/secrets.env`} -v ${`${st.dir}/pitr/conf:${PGBACKREST_CONF_DIR}:ro`} -v ${`${volume}:${dataDir}`} ${st.pitr!.image} >/dev/null`,
    /**
     * Beside the live server: small shared memory, and no hot standby (recovery never pauses
     * on settings lower than the primary's). Written into the restored PGDATA, not given as
     * arguments: the image's own entrypoint and command start it as they start the live one.
     */
    tune: (volume: string) => [
      'set -e', mp, sh`d=$(mp ${volume})`,
      sh`printf %s ${"\nshared_buffers = '128MB'\nhot_standby = 'off'\n"} >> "$d/postgresql.auto.conf"`,
    ].join('\n'),
    psql: (st: Stack, name: string, sql: string) => sh`docker exec ${name} psql -X -At -v ON_ERROR_STOP=1 -U ${dbOf(st).user} -d ${dbOf(st).database} -c ${sql}`,
    state: (name: string) => sh`docker inspect -f '{{.State.Status}}' ${name} 2>/dev/null || echo gone`,
    logs: (name: string) => sh`docker logs --tail 40 ${name} 2>&1`,
    cleanup: (name: string, volume: string) => sh`docker rm -f ${name} >/dev/null 2>&1; docker volume rm -f ${volume} >/dev/null 2>&1; true`,
  },
}

/** state(): "<status> <restart count>" of the database's container. */
interface Probe { recovery(): Promise<RunResult>; state(): Promise<string>; logs(): Promise<string> }
const composeProbe = (t: Target, st: Stack): Probe => ({
  recovery: () => t.run(pitrRestoreCommands.recovery(st), { allowFail: true, timeout: 30 }),
  state: async () => (await t.run(stackCommands.compose(st, sh`ps -aq ${dbOf(st).service}`) + ` | head -n 1 | xargs -r docker inspect -f '{{.State.Status}} {{.RestartCount}}'`, { allowFail: true, timeout: 30 })).stdout.trim(),
  logs: async () => (await t.run(stackCommands.compose(st, sh`logs --tail 80 ${dbOf(st).service}`), { allowFail: true, timeout: 30 })).stdout,
})

/** Polls until PostgreSQL has finished recovery and promoted; the last replayed transaction's time, or why not. */
async function awaitPromoted(p: Probe, timeoutS: number): Promise<{ replayed?: string; failed?: string }> {
  const until = Date.now() + timeoutS * 1000
  let restarts: string | undefined
  while (Date.now() < until) {
    const r = await p.recovery()
    const [inRecovery, replayed] = r.stdout.trim().split('|')
    if (r.code === 0 && inRecovery === 'f') return { replayed: replayed || undefined }
    const [state, count] = (await p.state()).split(' ')
    restarts ??= count
    // A restart policy brings a failed recovery back up, to fail again: a restart is a failure.
    if ((state && state !== 'running' && state !== 'created') || (count !== undefined && count !== restarts)) {
      const logs = await p.logs()
      const lastLine = logs.trim().split('\n').filter(Boolean).pop()
      return { failed: missingWal(logs) ?? /FATAL: +([^\n]*)/.exec(logs)?.[1] ?? `the database exited (${state})${lastLine ? `: ${lastLine.trim().slice(0, 200)}` : ''}` }
    }
    await new Promise(r => setTimeout(r, 1000))
  }
  return { failed: `recovery did not finish within ${timeoutS} s` }
}

/**
 * A segment the archive lacks, from PostgreSQL's log during recovery: which one, and the
 * last transaction replayed before it (the latest time this archive can reach).
 */
export function missingWal(logs: string): string | undefined {
  const end = logs.indexOf('recovery ended before configured recovery target was reached')
  if (end < 0) return undefined
  // archive-get says so for every segment past the archive's end: the last one before the FATAL is the gap.
  const seg = [...logs.slice(0, end).matchAll(/unable to find ([0-9A-F]{24}) in the archive/g)].at(-1)?.[1]
  if (!seg) return undefined
  const last = /last completed transaction was at log time ([^\n]+)/.exec(logs)?.[1]
  return `WAL segment ${seg} is missing from the archive${last ? `; the latest time reachable is ${last.trim()} (restore.ts --to-time with that time, or earlier)` : ''}`
}

/** Whatever failed (the swap, a start), the database and the app come back up on what the volume holds. */
async function upAgain(t: Target, st: Stack, log: (line: string) => void): Promise<void> {
  await t.run(stackCommands.compose(st, sh`start ${dbOf(st).service}`), { allowFail: true, onOutput: log, timeout: 180 })
  await t.run(restoreCommands.startApp(st), { allowFail: true, onOutput: log, timeout: 300 })
}

const secs = (t0: number) => `${((Date.now() - t0) / 1000).toFixed(1)} s`
const toText = (target: number | undefined) => target === undefined ? 'the latest archived transaction' : targetText(target)

/**
 * The database put back as it was at `target` (undefined: the latest archived transaction):
 * app stopped (nginx shows the maintenance page), pgbackrest restores into a new volume, the volumes swap
 * (the replaced data stays in `undoVolume`), PostgreSQL replays WAL to the target and
 * promotes, the app starts. If recovery fails the swap is undone: the live data is as before.
 */
export function pitrRestoreStep(st: Stack, target: number | undefined, undoVolume: string): Step<string> {
  const to = toText(target)
  return {
    title: `Database restored to ${to} from the PITR archive (app stopped meanwhile; nginx shows the maintenance page)`,
    async check(t) {
      requirePitr(st)
      const dataDir = (await t.run(pgdataCommand(st), { timeout: 30 })).stdout.trim()
      const live = pgdataVolume(st, dataDir)
      return { done: false, change: `pgbackrest restore into a new volume; it replaces ${live}'s content, which moves to ${undoVolume}`, plan: dataDir }
    },
    async apply(t, dataDir, log) {
      const live = pgdataVolume(st, dataDir)
      const fresh = `${st.project}_pitr-restoring`
      const db = dbOf(st).service
      const compose = (args: string) => t.run(stackCommands.compose(st, args), { onOutput: log, timeout: 180 })
      await t.run(sh`docker volume rm -f ${fresh} >/dev/null`, { timeout: 60 })
      let endMaintenance = async () => {}
      try {
        // Inside the try: a stop that fails half-way still ends with everything started and the page gone.
        endMaintenance = await maintenanceDuring(t, st, 'We are restoring data and will be back shortly.')
        await t.run(restoreCommands.stopApp(st), { onOutput: log, timeout: 120 })
        let t0 = Date.now()
        const r = await t.run(pitrRestoreCommands.restoreInto(st, fresh, dataDir, target), { allowFail: true, onOutput: log, timeout: 6 * 3600 })
        if (r.code !== 0) {
          await t.run(sh`docker volume rm -f ${fresh} >/dev/null`, { allowFail: true, timeout: 60 })
          throw new HostError(`pgbackrest restore failed (${pgbackrestError(r.stdout + r.stderr)}); the live database was not touched.`)
        }
        const restored = secs(t0)
        await compose(sh`stop -t 60 ${db}`)
        await t.run(pitrRestoreCommands.swap(live, fresh, undoVolume), { timeout: 120 })
        t0 = Date.now()
        await compose(sh`start ${db}`)
        const done = await awaitPromoted(composeProbe(t, st), 3600)
        if (done.failed) {
          // Put the live data back as it was.
          await compose(sh`stop -t 60 ${db}`)
          await t.run(pitrRestoreCommands.swap(live, undoVolume, `${st.project}_pitr-failed-${Date.now()}`), { timeout: 120 })
          await compose(sh`up -d --wait --wait-timeout 120 ${db}`)
          throw new HostError(`PostgreSQL did not reach ${to}: ${done.failed}. The live database was put back as it was.`)
        }
        return `reached ${to}: last transaction replayed ${done.replayed ?? '(none after the base backup)'}; pgbackrest restore ${restored}, WAL replay ${secs(t0)}; the data it replaced is in volume ${undoVolume}`
      } finally {
        await upAgain(t, st, log)
        await endMaintenance()
      }
    },
  }
}

/** --undo after a point-in-time restore: the volumes swap back (what is there now goes to `undoVolume`). */
export function pitrUndoStep(st: Stack, from: string, undoVolume: string): Step<string> {
  return {
    title: `Database put back from volume ${from} (app stopped meanwhile; nginx shows the maintenance page)`,
    async check(t) {
      requirePitr(st)
      const dataDir = (await t.run(pgdataCommand(st), { timeout: 30 })).stdout.trim()
      pgdataVolume(st, dataDir)
      const has = await t.run(sh`docker volume inspect ${from} >/dev/null 2>&1`, { allowFail: true, timeout: 30 })
      if (has.code !== 0) throw new UsageError(`The volume ${from} with the data the restore replaced is gone: there is nothing to undo.`)
      return { done: false, change: `swap ${from} back in; what is there now moves to ${undoVolume}`, plan: dataDir }
    },
    async apply(t, dataDir, log) {
      const live = pgdataVolume(st, dataDir)
      const db = dbOf(st).service
      let endMaintenance = async () => {}
      try {
        // Inside the try: a stop that fails half-way still ends with everything started and the page gone.
        endMaintenance = await maintenanceDuring(t, st, 'We are restoring data and will be back shortly.')
        await t.run(restoreCommands.stopApp(st), { onOutput: log, timeout: 120 })
        await t.run(stackCommands.compose(st, sh`stop -t 60 ${db}`), { onOutput: log, timeout: 180 })
        await t.run(pitrRestoreCommands.swap(live, from, undoVolume), { timeout: 120 })
        await t.run(pitrRestoreCommands.newTimeline(live), { timeout: 60 })
        await t.run(stackCommands.compose(st, sh`start ${db}`), { onOutput: log, timeout: 180 })
        const done = await awaitPromoted(composeProbe(t, st), 3600)
        if (done.failed) throw new HostError(`PostgreSQL did not come back on the data from ${from}: ${done.failed}.`)
        await t.run(pitrCommands.psql(st, pitrRestoreCommands.resetRecovery), { timeout: 60 })
        const tl = (await t.run(pitrCommands.psql(st, pitrRestoreCommands.timeline), { allowFail: true, timeout: 30 })).stdout.trim()
        return `the data from before the restore is live again, on timeline ${tl || '?'} (past the restore's, so later restores follow this one)`
      } finally {
        await upAgain(t, st, log)
        await endMaintenance()
      }
    },
  }
}

/** "2 tables, 153 rows (public.ticks 152, public.stop_writer 1)": what a drill found. */
export function describeCounts(out: string): string {
  const rows = out.trim().split('\n').filter(Boolean).map(l => { const i = l.lastIndexOf(' '); return [l.slice(0, i), Number(l.slice(i + 1))] as const })
  const total = rows.reduce((a, [, n]) => a + n, 0)
  const shown = [...rows].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([k, n]) => `${k} ${n}`)
  return `${rows.length} tables, ${total} rows${rows.length ? ` (${shown.join(', ')}${rows.length > 8 ? ', …' : ''})` : ''}`
}

/**
 * Drill: the archive restored to `target` in a throwaway volume and container (archiving
 * off, off the stack's network), recovery to the target checked, every table counted, all removed.
 * The live database is not touched; the drill is recorded for status's drill age.
 */
export function pitrDrillStep(st: Stack, target: number | undefined): Step<string> {
  const to = toText(target)
  const name = `${st.project}-pitr-drill`, volume = `${st.project}_pitr-drill`
  return {
    title: `Drill: the PITR archive restored to ${to} in a throwaway container and checked`,
    async check(t) {
      requirePitr(st)
      const dataDir = (await t.run(pgdataCommand(st), { timeout: 30 })).stdout.trim()
      return { done: false, change: `pgbackrest restore into ${volume} (archiving off), start ${name} on it, count rows, remove both; the live database is not touched`, plan: dataDir }
    },
    async apply(t, dataDir, log) {
      const d = pitrRestoreCommands.drill
      await t.run(d.cleanup(name, volume), { timeout: 120 })
      try {
        let t0 = Date.now()
        const r = await t.run(pitrRestoreCommands.restoreInto(st, volume, dataDir, target, { archiveOff: true }), { allowFail: true, onOutput: log, timeout: 6 * 3600 })
        if (r.code !== 0) throw new HostError(`The drill's restore failed: ${archiveUnreadable(pgbackrestError(r.stdout + r.stderr), 'check the bucket and pgbackrest\'s settings on the host.')}`)
        const restored = secs(t0)
        t0 = Date.now()
        await t.run(d.tune(volume), { timeout: 60 })
        await t.run(d.start(st, name, volume, dataDir), { timeout: 120 })
        const done = await awaitPromoted({
          recovery: () => t.run(d.psql(st, name, pitrRestoreCommands.recoverySql), { allowFail: true, timeout: 30 }),
          state: async () => (await t.run(d.state(name), { timeout: 30 })).stdout.trim(),
          logs: async () => (await t.run(d.logs(name), { allowFail: true, timeout: 30 })).stdout,
        }, 3600)
        if (done.failed) throw new HostError(`The drill did not reach ${to}: ${done.failed}.`)
        const replay = secs(t0)
        const counts = await t.run(d.psql(st, name, pitrRestoreCommands.countsSql), { allowFail: true, timeout: 3600 })
        if (counts.code !== 0) throw new HostError(`Counting the drill's rows failed: ${counts.stderr.trim().split('\n').pop()}.`)
        const info = await t.run(pitrRestoreCommands.info(st), { allowFail: true, timeout: 120 })
        // The base backup pgBackRest chose: the newest that ended before the target.
        const base = info.code === 0 ? parseInfo(info.stdout).backups.filter(b => target === undefined || b.stop * 1000 <= target).at(-1) : undefined
        const record: DrillRecord = { at: new Date().toISOString(), backup: `pitr ${base?.label ?? '?'} to ${target === undefined ? 'latest' : new Date(target).toISOString()}`, backupStartedAt: new Date((base?.start ?? 0) * 1000).toISOString() }
        await t.run(drillRecordCommands.append(), { stdin: JSON.stringify(record) + '\n', timeout: 30 })
        return `reached ${to}: last transaction replayed ${done.replayed ?? '(none after the base backup)'}; ${describeCounts(counts.stdout)}; pgbackrest restore ${restored}, WAL replay ${replay}; removed`
      } finally {
        await t.run(d.cleanup(name, volume), { allowFail: true, timeout: 120 })
      }
    },
  }
}

/**
 * A new host (restore.ts --to-host --to-time): the database's volume filled from the
 * archive before PostgreSQL ever starts there (an initdb'd cluster could not archive into
 * this repository: its system id differs); PostgreSQL then replays to the target and
 * promotes. A volume that already holds a cluster is left alone (a re-run).
 */
export function pitrNewHostStep(st: Stack, target: number | undefined): Step<string> {
  const to = toText(target)
  return {
    title: `Database restored to ${to} from the PITR archive before its first start`,
    async check(t) {
      requirePitr(st)
      const dataDir = (await t.run(pgdataCommand(st), { timeout: 30 })).stdout.trim()
      const live = pgdataVolume(st, dataDir)
      const holds = (await t.run(pitrRestoreCommands.holdsCluster(live), { timeout: 30 })).stdout.trim()
      if (holds === 'yes') return { done: true, detail: `${live} already holds a database; nothing restored over it` }
      return { done: false, change: `${holds === 'recovering' ? `${live} holds an unfinished recovery (an earlier run): ` : ''}pgbackrest restore into ${live}, then PostgreSQL replays WAL and promotes (it archives on a new timeline after that)`, plan: dataDir }
    },
    async apply(t, dataDir, log) {
      const { key, volume: live } = pgdataMount(st, dataDir)
      const fresh = `${st.project}_pitr-restoring`
      const info = await t.run(pitrRestoreCommands.info(st), { allowFail: true, timeout: 120 })
      if (info.code !== 0) throw new HostError(archiveUnreadable(pgbackrestError(info.stdout + info.stderr), 'check PITR_S3_ENDPOINT and the S3 keys.'))
      const archive = parseInfo(info.stdout)
      if (archive.error) throw new HostError(archiveUnreadable(archive.error, 'check PITR_S3_ENDPOINT, the S3 keys and PITR_CIPHER_PASS.'))
      // latest is "now" measured by the same clock: only a missing base backup refuses it.
      const now = Date.now()
      const why = refuseTarget(target ?? now, archive, now)
      if (why) throw new UsageError(`${why} Nothing was restored.`)
      await t.run(sh`docker volume rm -f ${fresh} >/dev/null`, { timeout: 60 })
      let t0 = Date.now()
      const r = await t.run(pitrRestoreCommands.restoreInto(st, fresh, dataDir, target), { allowFail: true, onOutput: log, timeout: 6 * 3600 })
      if (r.code !== 0) {
        await t.run(sh`docker volume rm -f ${fresh} >/dev/null`, { allowFail: true, timeout: 60 })
        throw new HostError(`pgbackrest restore failed (${pgbackrestError(r.stdout + r.stderr)}).`)
      }
      const restored = secs(t0)
      // An earlier run's database (still recovering, or failed) goes: nothing on this host serves yet.
      await t.run(stackCommands.compose(st, sh`rm -sf ${dbOf(st).service}`), { allowFail: true, onOutput: log, timeout: 180 })
      await t.run(pitrRestoreCommands.adopt(st, key, live, fresh), { timeout: 120 })
      t0 = Date.now()
      await t.run(stackCommands.compose(st, sh`up -d --no-deps ${dbOf(st).service}`), { onOutput: log, timeout: 180 })
      const done = await awaitPromoted(composeProbe(t, st), 3600)
      if (done.failed) throw new HostError(`PostgreSQL did not reach ${to}: ${done.failed}.`)
      return `reached ${to}: last transaction replayed ${done.replayed ?? '(none after the base backup)'}; pgbackrest restore ${restored}, WAL replay ${secs(t0)}`
    },
  }
}

/** Why pgbackrest could not read the archive (its error), for an operator: a wrong PITR_CIPHER_PASS said as such. */
export function archiveUnreadable(err: string, hint: string): string {
  // An encrypted info file opened with the wrong passphrase fails to decrypt (CryptoError) or decrypts to garbage (FormatError).
  if (/CryptoError|cipher|decrypt|FormatError/i.test(err)) return `PITR_CIPHER_PASS does not open the PITR archive (${err}): set the passphrase the archive was made with.`
  return `pgbackrest cannot read the PITR archive (${err}): ${hint}`
}

/** A volume name for the data a restore replaces: PROJECT_pitr-undo-20261125T140200Z. */
export const undoVolumeName = (st: Stack, now = new Date()) => `${st.project}_pitr-undo-${now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}`

/** The archive's state (base backups, WAL range), read on the host; one sentence when it cannot be read. */
export async function readPitrInfo(t: Target, st: Stack): Promise<PitrInfo> {
  const r = await t.run(pitrCommands.pgbackrest(st, 'info --output=json'), { allowFail: true, timeout: 120 })
  if (r.code !== 0) throw new HostError(archiveUnreadable(pgbackrestError(r.stdout + r.stderr), 'is the stack deployed with PITR=on?'))
  const info = parseInfo(r.stdout)
  if (info.error) throw new HostError(archiveUnreadable(info.error, 'is the stack deployed with PITR=on?'))
  return info
}
