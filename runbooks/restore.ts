// Disaster recovery: a backup back onto this host (with undo), onto a brand-new host
// (--to-host: provision, deploy the backup's app version, restore, RTO/RPO), or a drill
// into throwaway containers that proves the latest backup restores (--drill, for cron).
// With PITR=on, --to-time does the same three from pgBackRest's WAL archive instead.
import { refuseDuringCanary } from '../lib/stack/canary.ts'
import { storeOf, type Manifest } from '../lib/data/backup.ts'
import { UsageError } from '../lib/errors.ts'
import { choose } from '../lib/prompts.ts'
import { provisionSteps } from '../lib/host/provision/index.ts'
import { deploySteps, proxyHealthStep } from '../lib/stack/release.ts'
import { checkBackupId, listBackups, newestFull } from '../lib/data/backup.ts'
import {
  RESTORE_ROOT, alreadyStep, dataRestoreStep, drillStep, findBackup, identitiesFor, newUndoDir, phase, readLast, recordStep, storedStack,
  reportStep, safetyCopyStep, stageStep, type LastRestore, type RestoreRun,
} from '../lib/data/restore.ts'
import { parseTargetTime, pitrArchivingStep, pitrDeploySteps, pitrFilesStep, pitrImageStep, pitrScheduleStep, pitrServiceStep, refuseTarget } from '../lib/data/pitr.ts'
import { pitrDrillStep, pitrNewHostStep, pitrRestoreStep, pitrUndoStep, readPitrInfo, undoVolumeName } from '../lib/data/pitr-restore.ts'
import { main } from '../lib/runbook.ts'
import { beside } from '../lib/steps.ts'
import { checkVersion, stackOf, type StoredStack } from '../lib/stack/stack.ts'

interface Args { 'to-time'?: string; target?: number; version?: string; backup?: string; latest?: boolean; 'to-host'?: string; drill?: boolean; undo?: boolean; jobs?: string
  /** Settled by resolve. */
  manifest?: Manifest; identities?: string[]; last?: LastRestore
  /** --to-host: the compose file stored with the backup (a new host gets the stack that was backed up). */
  stored?: StoredStack }

/** --jobs N, or undefined: one per core of the host (read by the step). */
const JOBS = (a: Args) => {
  if (a.jobs === undefined) return undefined
  const n = Number(a.jobs)
  if (!/^\d+$/.test(a.jobs) || n < 1 || n > 32) throw new UsageError(`--jobs ${JSON.stringify(a.jobs)} must be a whole number of parallel pg_restore jobs from 1 to 32.`)
  return n
}
const describe = (m: Manifest) => `${m.id}  ${m.startedAt.slice(0, 16).replace('T', ' ')}  ${m.host}  app ${m.appVersion ?? '?'}  ` +
  `${(m.objects.reduce((a, o) => a + o.bytes, 0) / 1048576).toFixed(1)} MiB${m.encryption ? '  encrypted' : ''}${m.pinned ? '  pinned' : ''}${m.note ? `  ${m.note}${m.scope ? ` (${m.scope} only)` : ''}` : ''}`

await main<Args>({
  name: 'restore',
  cluster: 'first node',
  summary: 'Restore a backup. Same host: stages and checks the backup, keeps the data it replaces (--undo brings it back), stops the app (nginx shows the maintenance page), recreates the database, swaps the DuckDB file, starts the app, checks health. --to-host NEW: provisions a fresh host, deploys the backup\'s app version, restores, prints RTO and RPO. --drill: restores into throwaway containers, checks row counts and health, removes everything. --to-time TIME (PITR=on): the database as it was at TIME from the WAL archive, the same three ways (here with undo, --drill, --to-host).',
  details: 'Nightly drill from cron: node --import tsx runbooks/restore.ts --env production --drill --latest --yes --json\n' +
    'Point in time: restore.ts --env production --to-time "2026-11-25 14:02:00+00" (or latest); a new host: add --to-host NEW --version TAG',
  // A drill only reads the archive or a backup: nothing to confirm (it runs from cron).
  destructive: a => !a.drill,
  options: {
    backup: { type: 'string', value: 'ID', description: 'the backup to restore (as listed by its manifest)' },
    latest: { type: 'boolean', description: 'the newest backup' },
    'to-host': { type: 'string', value: 'HOST[:PORT]', description: 'restore onto this fresh host instead (provision + deploy + restore)' },
    drill: { type: 'boolean', description: 'restore into throwaway containers and check; the live data is not touched' },
    undo: { type: 'boolean', description: 'bring back the data the last restore on this host replaced' },
    jobs: { type: 'string', value: 'N', description: 'parallel pg_restore jobs (default: one per core of the host, at most 8)' },
    'to-time': { type: 'string', value: 'TIME', description: 'PITR=on: the database as it was at TIME ("2026-11-25 14:02:00+00", with its zone) or latest, from the WAL archive; here, with --drill, or with --to-host' },
    version: { type: 'string', value: 'TAG', description: 'with --to-host --to-time: the release to deploy on the new host (default: the newest pg_dump backup\'s)' },
  },
  example: { backup: 'ID' },
  host: a => a['to-host'],
  action: (c, a) => a['to-time'] !== undefined && a.drill ? `Drill: restore the PITR archive of ${c.app.name} on ${c.env} to ${a['to-time']} in a throwaway container on ${c.ssh.host}`
    : a['to-time'] !== undefined && a['to-host'] !== undefined ? `Rebuild ${c.app.name}/${c.env} on ${c.ssh.host}: provision, deploy ${a.version}, its database from the WAL archive as of ${a['to-time']}`
    : a['to-time'] !== undefined ? `Restore the database of ${c.app.name} on ${c.env} (${c.ssh.host}) to ${a['to-time']} from the WAL archive, replacing its data`
    : a.undo ? `Undo the last restore on ${c.env} (${c.ssh.host})`
    : a.drill ? `Drill: restore backup ${a.manifest?.id ?? a.backup} of ${c.env} into throwaway containers on ${c.ssh.host}`
      : `Restore ${c.app.name} on ${c.env} (${c.ssh.host}) from backup ${a.manifest?.id ?? a.backup}, replacing its data`,
  ping: c => c.backup.drillPingUrl,
  check(args) {
    if ([args.undo, args.drill, args['to-host'] !== undefined].filter(Boolean).length > 1) throw new UsageError('Choose one of --undo, --drill and --to-host.')
    if (args.undo && (args.backup !== undefined || args.latest)) throw new UsageError('--undo takes no backup: it brings back what the last restore replaced.')
    if (args.backup !== undefined && args.latest) throw new UsageError('Choose one of --backup ID and --latest.')
    if (args.backup !== undefined) checkBackupId(args.backup, '--backup')
    JOBS(args)
    if (args['to-time'] !== undefined) {
      if (args.backup !== undefined || args.latest || args.undo) throw new UsageError('--to-time restores from the WAL archive, not from a pg_dump backup: leave out --backup, --latest and --undo.')
      args.target = parseTargetTime(args['to-time'])
    }
    if (args.version !== undefined) {
      if (args['to-time'] === undefined || args['to-host'] === undefined) throw new UsageError('--version goes with --to-host and --to-time: a pg_dump backup names its own release.')
      checkVersion(args.version)
    }
  },
  async resolve({ target, config, args }) {
    // The app is stopped and started around the data: a canary's containers would come back on data from before its migration.
    if (args['to-host'] === undefined && !args.drill) await refuseDuringCanary(target, stackOf(config), 'a restore onto this host')
    args.last = await readLast(target)
    if (args.undo) return
    if (args['to-time'] !== undefined) {
      if (config.cluster) throw new UsageError('--to-time: point-in-time recovery on a cluster (ENGINE=swarm) is not built yet; restore.ts --backup ID or --latest restores a pg_dump backup there.')
      const st = stackOf(config)
      if (!st.pitr) throw new UsageError(`--to-time needs PITR=on in ${config.file} (and a deploy with it): point-in-time recovery replays the WAL archive pgBackRest keeps.`)
      // A new host has no pgbackrest yet: the target is checked there once the image is built.
      if (args['to-host'] !== undefined) {
        if (args.version === undefined) {
          const newest = (await listBackups(storeOf(config), config.app.name, config.env).catch(() => [])).find(m => m.appVersion)
          if (!newest?.appVersion) throw new UsageError('Pass --version TAG: the release to deploy on the new host (the WAL archive holds the database only, and no pg_dump backup names a release).')
          args.version = newest.appVersion
        }
        return
      }
      const why = refuseTarget(args.target ?? Date.now(), await readPitrInfo(target, st), Date.now())
      if (why && !(args.target === undefined && /in the future/.test(why))) throw new UsageError(`${why} Nothing was changed.`)
      return
    }
    const store = storeOf(config)
    if (args.backup === undefined && !args.latest) {
      const all = await listBackups(store, config.app.name, config.env)
      if (!all.length) throw new UsageError(`There are no backups of ${config.app.name}/${config.env} in ${store.where}: check BACKUP_DEST and the environment.`)
      args.backup = await choose({ message: 'Restore which backup?', flag: '--backup ID or --latest', choices: all.slice(0, 30).map(m => ({ value: m.id, name: describe(m) })), default: (newestFull(all) ?? all[0]).id })
    }
    if (args.backup !== undefined) checkBackupId(args.backup, '--backup')
    args.manifest = await findBackup(store, config, args.latest ? 'latest' : args.backup!)
    args.identities = identitiesFor(config, args.manifest)
    if (args['to-host'] !== undefined) args.stored = await storedStack(store, args.manifest, args.identities)
  },
  steps: (c, a) => {
    const st = stackOf(c, { stored: a.stored })
    const m = a.manifest
    const run: RestoreRun = { config: c, st, manifest: m, store: m ? storeOf(c) : undefined, identities: a.identities, source: '', phases: {} }
    if (a['to-time'] !== undefined && a.drill) return [pitrDrillStep(st, a.target)]
    if (a['to-time'] !== undefined && a['to-host'] !== undefined) {
      // The database comes from the archive before PostgreSQL first starts on the new host;
      // then it archives there (a new timeline of the same repository).
      const pitr = [pitrFilesStep(st), pitrImageStep(st), pitrNewHostStep(st, a.target)]
      return [
        ...phase(run, 'provision', provisionSteps(c)),
        ...phase(run, 'deploy and PITR restore', deploySteps(st, checkVersion(a.version ?? 'latest'), { beforeAccessories: pitr, restore: true })),
        ...phase(run, 'archiving', [pitrServiceStep(st), pitrArchivingStep(st), pitrScheduleStep(st)]),
        reportStep(run),
      ]
    }
    if (a['to-time'] !== undefined) {
      const undo = undoVolumeName(st)
      return [pitrRestoreStep(st, a.target, undo), proxyHealthStep(st), recordStep(run, { kind: 'pitr', undo, toTime: a.target === undefined ? 'latest' : new Date(a.target).toISOString() })]
    }
    if (a.undo && a.last?.kind === 'pitr-undo') return [alreadyStep(`The last restore was already undone (${a.last.at})`)]
    if (a.undo && a.last?.kind === 'pitr') {
      const undo = undoVolumeName(st)
      return [pitrUndoStep(st, a.last.undo, undo), proxyHealthStep(st), recordStep(run, { kind: 'pitr-undo', undo })]
    }
    if (a.undo) {
      const l = a.last
      if (l?.kind === 'undo') return [alreadyStep(`The last restore was already undone (${l.at})`)]
      if (!l) throw new UsageError('There is no restore to undo on this host.')
      run.source = l.undo
      run.undo = newUndoDir()
      return [safetyCopyStep(run), dataRestoreStep(run, JOBS(a)), proxyHealthStep(st), recordStep(run, { kind: 'undo', id: l.id, undo: run.undo })]
    }
    if (!m) {
      // --help: the same-host checklist, with placeholders.
      const example = { ...run, manifest: { id: 'ID', objects: [] } as unknown as Manifest, source: `${RESTORE_ROOT}/stage-ID`, undo: `${RESTORE_ROOT}/undo/TIME` }
      return [stageStep(example), safetyCopyStep(example), dataRestoreStep(example), proxyHealthStep(st), recordStep(example, { kind: 'backup', undo: '' }), reportStep(example)]
    }
    if (a.drill) {
      run.source = `${RESTORE_ROOT}/drill-${m.id}`
      return [...phase(run, 'download', [stageStep(run)]), ...phase(run, 'restore and checks', [drillStep(run, JOBS(a))]), reportStep(run)]
    }
    if (a.last?.kind === 'backup' && a.last.id === m.id) return [alreadyStep(`Backup ${m.id} was already restored here (${a.last.at}); restore.ts --undo brings back what it replaced`)]
    run.source = `${RESTORE_ROOT}/stage-${m.id}`
    run.undo = newUndoDir()
    const restore = [stageStep(run), safetyCopyStep(run), dataRestoreStep(run, JOBS(a)), proxyHealthStep(st)]
    if (a['to-host'] === undefined) return [...phase(run, 'restore', restore), recordStep(run, { kind: 'backup', id: m.id, undo: run.undo }), reportStep(run)]
    if (!m.appVersion) throw new UsageError(`Backup ${m.id} does not record the app version, so a new host cannot be deployed from it: deploy one with deploy.ts, then restore.ts --backup ${m.id}.`)
    // The backup downloads onto the new host from the start, while it is provisioned and
    // the release's images arrive: the download needs only SSH and a disk, and all three
    // wait mostly on the network. (On a cluster, once every node has answered.)
    const [download, downloaded] = beside(restore[0], 'downloading beside provision and deploy')
    const provision = provisionSteps(c)
    const first = c.cluster ? 1 : 0
    return [
      ...phase(run, 'provision (backup downloading beside it)', [...provision.slice(0, first), download, ...provision.slice(first)]),
      ...phase(run, 'deploy', deploySteps(st, checkVersion(m.appVersion), { beforeAccessories: pitrDeploySteps(st).beforeAccessories, restore: true })),
      ...phase(run, 'restore', [downloaded, ...restore.slice(1)]),
      recordStep(run, { kind: 'backup', id: m.id, undo: run.undo }),
      reportStep(run),
    ]
  },
})
