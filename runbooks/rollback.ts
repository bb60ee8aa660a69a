// Back to an earlier release, guided for an incident responder at 3 a.m.
import chalk from 'chalk'
import { storeOf, type Manifest } from '../lib/data/backup.ts'
import { describeLoss, tableLoss } from '../lib/data/data-loss.ts'
import {
  RESTORE_ROOT, dataRestoreStep, findBackup, identitiesFor, newUndoDir, readLast, recordStep as restoreRecordStep, safetyCopyStep, stageStep, type RestoreRun,
} from '../lib/data/restore.ts'
import { UsageError } from '../lib/errors.ts'
import { deliveryOf, imagesStep } from '../lib/stack/images.ts'
import { builtImages } from '../lib/stack/build.ts'
import { abortStep, readCanary } from '../lib/stack/canary.ts'
import { driftOf } from '../lib/stack/drift.ts'
import { serviceCommands } from '../lib/stack/engine.ts'
import { maintenanceEndStep } from '../lib/stack/maintenance.ts'
import { webServices } from '../lib/stack/model.ts'
import { crossedMigrations, describeMigration, noDownCommand, migrateDownStep, migrationsRestoredStep, readMigrations } from '../lib/stack/migrations.ts'
import { choose, interactive } from '../lib/prompts.ts'
import { defaultRollback, live, readReleases, rollbackTargets, type Release } from '../lib/stack/releases.ts'
import { proxyHealthStep, rolloutStep, stackFilesStep } from '../lib/stack/release.ts'
import { unstuckStep } from '../lib/stack/stuck.ts'
import { main } from '../lib/runbook.ts'
import { checkVersion, releaseImages, stackCommands, stackOf, type Stack } from '../lib/stack/stack.ts'
import type { Config } from '../lib/config.ts'
import type { Target } from '../lib/steps.ts'

const when = (iso: string) => `${iso.slice(0, 16).replace('T', ' ')} UTC`
const describe = (r: Release) => `${r.version}  ${r.result}${r.bad ? ' (bad)' : ''}  ${when(r.at)} by ${r.by}${r.migration ? '  migrated the database' : ''}`
const say = (line: string) => process.stderr.write(line + '\n')

type Mode = 'code' | 'down' | 'restore'
interface Args {
  to?: string; previous?: boolean; repair?: boolean; 'code-only'?: boolean; 'migrate-down'?: boolean; 'restore-data'?: boolean
  /** Settled by resolve: what happens to the database, the newer releases whose migrations are undone, the backup restored. */
  mode?: Mode; newer?: string[]; manifest?: Manifest; identities?: string[]; restored?: boolean
}

await main<Args>({
  name: 'rollback',
  cluster: 'first node',
  summary: 'Go back to an earlier release with the same zero-downtime swap as update. On a terminal with no options it shows the current version, its health and the recent releases, and offers the previous good one (or, when the live release is not answering, re-rolling it onto the host first). Going back past a release that migrated the database says so and offers: the code only (the default: expand/contract migrations allow it), the code then MIGRATE_DOWN_COMMAND, or the code and a restore of the backup taken before the migration (it shows the rows that would be lost and asks for the environment name). --repair re-rolls the live release: it repairs containers or nginx changed by hand.',
  hooks: { version: a => a.to },
  options: {
    to: { type: 'string', value: 'TAG', description: 'the release to go back to' },
    previous: { type: 'boolean', description: 'go back to the newest earlier release not marked bad' },
    repair: { type: 'boolean', description: 'no rollback: put the live release back onto the host with the same swap (after a hand-run docker compose up; paused containers are unpaused, stopped or crash-looping ones replaced, a stopped or removed database or nginx started)' },
    'code-only': { type: 'boolean', description: 'past a migration: only the code goes back; the database keeps the newer schema (the default without a terminal)' },
    'migrate-down': { type: 'boolean', description: 'past a migration: the code goes back, then MIGRATE_DOWN_COMMAND runs in each newer release' },
    'restore-data': { type: 'boolean', description: 'past a migration: restore the backup taken before it (what was written since is lost), then the code goes back' },
  },
  example: { to: 'TAG' },
  destructive: true,
  typeEnvName: a => a.mode === 'restore',
  action: (c, a) => `Roll back ${c.app.name} on ${c.env} to ${a.to}` + (a.mode === 'down' ? `, undoing the migrations of ${a.newer?.join(', ')}`
    : a.mode === 'restore' ? `, restoring backup ${a.manifest?.id} (everything written since ${a.manifest?.startedAt.slice(0, 16).replace('T', ' ')} is lost)` : ''),
  audit: a => (a.mode === 'down' ? `migrate-down ${a.newer?.join(', ')}` : a.mode === 'restore' ? `restore-data from ${a.manifest?.id}` : undefined),
  check(args) {
    if (args.to) checkVersion(args.to, '--to')
    const modes = (['code-only', 'migrate-down', 'restore-data'] as const).filter(k => args[k])
    if (modes.length > 1) throw new UsageError(`Choose one of --code-only, --migrate-down and --restore-data (got ${modes.map(m => `--${m}`).join(' and ')}).`)
  },
  async resolve({ target, config, args }) {
    const st = stackOf(config)
    const rs = await readReleases(target, st)
    const cur = live(rs)
    if (!cur) throw new UsageError(`Nothing is deployed in ${st.dir} on ${config.env}: there is nothing to roll back.`)
    // During a canary the live release is the one before it: going back means dropping the canary.
    const { canary } = await readCanary(target, st)
    // A canary already recorded live is a promotion cut short at its end: going back goes past it.
    if (canary && canary.version !== cur.version && !args.to && !args.previous && !args.repair) {
      say(`A canary of ${canary.version} takes ${canary.share}% of the requests: rolling back drops it, and ${cur.version} gets every request (--to TAG goes further back).`)
      args.to = cur.version
    }
    if (args.repair) {
      if (args.to && args.to !== cur.version) throw new UsageError(`--repair re-rolls the live release (${cur.version}); --to ${args.to} is a rollback: pass one of them.`)
      args.to = cur.version
    }
    // Re-running a finished rollback is a no-op that reports ok, like every runbook
    // (one with --migrate-down or --restore-data still finishes what is left of it).
    if (args.to !== cur.version) await chooseTarget(target, config.env, st, rs, cur, args)
    await chooseMode(target, config, args, rs)
  },
  steps: (c, a) => {
    const st = stackOf(c)
    const v = checkVersion(a.to, '--to')
    // A canary first: its share of the requests goes back to the live release at once, and
    // its containers would otherwise hold the slot the rollback swaps into.
    const code = [abortStep(st, { rollback: true }), stackFilesStep(st), imagesStep(() => [v, ...(a.mode === 'down' ? a.newer ?? [] : [])].flatMap(x => releaseImages(st, x)), deliveryOf(c), undefined, [v, ...(a.newer ?? [])].flatMap(x => builtImages(st, x)))]
    // A paused, exited or removed container is taken care of before the swap starts from
    // them (with --restore-data after the restore, which stops the app and starts it again).
    const back = [unstuckStep(st), rolloutStep(st, v, { rollback: true })]
    if (a.mode === 'down') return [...code, ...back, migrateDownStep(st, v), proxyHealthStep(st)]
    if (a.mode === 'restore' && a.manifest) {
      const m = a.manifest
      const run: RestoreRun = { config: c, st, manifest: m, store: storeOf(c), identities: a.identities, source: `${RESTORE_ROOT}/stage-${m.id}`, undo: newUndoDir(), phases: {} }
      // The data first, app stopped (nginx shows the maintenance page), then the old code onto it: the
      // newer code may not run on the old schema, the old code did run on this data.
      // The maintenance page stays up until the older code serves: users never see the newer code on the old data.
      const restore = a.restored ? [] : [stageStep(run), safetyCopyStep(run), dataRestoreStep(run, undefined, { keepMaintenance: true }), restoreRecordStep(run, { kind: 'backup', id: m.id, undo: run.undo! })]
      return [...code, ...restore, ...back, proxyHealthStep(st), maintenanceEndStep(st), migrationsRestoredStep(st, v, m.id)]
    }
    return [...code, ...back, proxyHealthStep(st)]
  },
})

/** Which release to go back to: a flag, or on a terminal a menu showing what is live and how it is. */
async function chooseTarget(target: Target, env: string, st: Stack, rs: Release[], cur: Release, args: Args) {
  const targets = rollbackTargets(rs)
  if (!targets.length) throw new UsageError(`${cur.version} is the only release ${env} has run: there is nothing earlier to roll back to.`)
  if (args.previous) {
    const prev = defaultRollback(rs)
    if (!prev) throw new UsageError('Every earlier release is marked bad: pick one with --to TAG.')
    args.to = prev.version
  }
  let healthy = true
  let drift: string[] = []
  if (!args.to && interactive) {
    healthy = (await target.run(stackCommands.proxyHealthy(st), { allowFail: true, timeout: 15 })).code === 0
    if (!healthy) drift = await driftOf(target, st)
    console.log(`${env}: ${chalk.bold(cur.version)} is live (deployed ${when(cur.at)} by ${cur.by}), ${healthy ? chalk.green('healthy') : chalk.red('NOT answering its health check')}${drift.length ? chalk.red(`; the host differs from it: ${drift[0]}`) : ''}`)
    console.log('Recent releases:')
    for (const r of [...rs].reverse().slice(0, 8)) console.log(`  ${r.bad ? chalk.red(describe(r)) : describe(r)}`)
    if (!healthy) {
      // What the responder would look at first: the web services' last words.
      const webs = webServices(st.model).map(s => s.name)
      const r = await target.run(serviceCommands.logs(st, { services: webs, lines: 10, follow: false }), { allowFail: true, timeout: 30 })
      const lines = r.stdout.trim().split('\n').filter(Boolean).slice(-12)
      if (lines.length) {
        console.log(`Last log lines of ${webs.join(', ')} (logs.ts --service NAME --since 10m shows more):`)
        for (const l of lines) console.log(chalk.dim(`  ${l.length > 200 ? `${l.slice(0, 200)}…` : l}`))
      }
    }
  }
  // Not answering with the host as deployed: the code (or its data) is the likely cause, go
  // back. Not answering with the host changed by hand (drift): re-rolling the live release
  // repairs it, and comes first.
  const reroll = { value: cur.version, name: `re-roll ${cur.version}, the live release, onto the host (repairs containers or nginx changed by hand)` }
  const previous = defaultRollback(rs)?.version ?? targets[0].version
  const pick = !healthy && drift.length ? cur.version : previous
  if (!args.to && interactive) {
    const why = pick === cur.version ? `the host no longer matches ${cur.version}, so re-rolling it is the likely fix`
      : defaultRollback(rs) ? `the newest earlier release not marked bad${healthy ? '' : `; ${cur.version} runs as deployed, so its code or data is the likely cause`}`
        : 'every earlier release is marked bad; this is the newest of them'
    console.log(`Enter takes ${chalk.bold(pick === cur.version ? `re-roll ${cur.version}` : pick)}: ${why}.`)
  }
  args.to = await choose({
    message: 'Roll back to which release?', flag: '--to TAG, --previous or --repair', given: args.to,
    choices: [...(healthy ? [] : [reroll]), ...targets.map(r => ({ value: r.version, name: describe(r) }))],
    default: pick,
  }).catch(e => {
    if (e instanceof UsageError && args.to) throw new UsageError(`${args.to} is not a release ${env} can roll back to; choose one of: ${targets.map(r => r.version).join(', ')}.`)
    throw e
  })
}

/**
 * Going back past a migration: say so, then the code only (default), the code then the
 * down migrations, or the data restored from the backup taken before the oldest of them,
 * with the rows that would be lost shown before the confirmation.
 */
async function chooseMode(target: Target, config: Config, args: Args, rs: Release[]) {
  const st = stackOf(config)
  const crossed = st.migrate ? crossedMigrations(await readMigrations(target, st), rs, args.to!) : []
  const given: Mode | undefined = args['code-only'] ? 'code' : args['migrate-down'] ? 'down' : args['restore-data'] ? 'restore' : undefined
  if (!crossed.length) {
    args.mode = 'code'
    return
  }
  const oldest = crossed[crossed.length - 1]
  args.newer = crossed.map(m => m.version)
  say(chalk.yellow(`${crossed.map(describeMigration).join('; ')}: ${args.to}'s code would run on ${crossed[0].version}'s schema.`))
  if (given === 'down' && !st.migrate!.down) throw new UsageError(noDownCommand(st))
  if (given === 'restore' && !oldest.backup) throw new UsageError(`${oldest.version}'s migration ran without a backup before it, so --restore-data has nothing to restore: choose --code-only${st.migrate!.down ? ' or --migrate-down' : ''}, or restore.ts --backup an older backup.`)
  const s = crossed.length > 1 ? 's' : ''
  const choices = [
    { value: 'code' as Mode, name: `code only: ${args.to} runs on the newer schema (what expand/contract migrations allow); the data stays` },
    ...(st.migrate!.down ? [{ value: 'down' as Mode, name: `code, then undo the migration${s} (MIGRATE_DOWN_COMMAND in ${args.newer.join(', then ')})` }] : []),
    ...(oldest.backup ? [{ value: 'restore' as Mode, name: `code and data: restore backup ${oldest.backup}, taken before ${oldest.version}'s migration (what was written since is lost)` }] : []),
  ]
  if (!given && !interactive) say(`note: rolling back the code only; --migrate-down or --restore-data would undo the migration${s} too.`)
  args.mode = given ?? (interactive ? await choose<Mode>({ message: 'And the database?', flag: '--code-only, --migrate-down or --restore-data', choices, default: 'code' }) : 'code')
  if (args.mode !== 'restore') return
  const store = storeOf(config)
  const m = await findBackup(store, config, oldest.backup!)
  args.manifest = m
  args.identities = identitiesFor(config, m)
  const last = await readLast(target)
  args.restored = last?.kind === 'backup' && last.id === m.id
  if (args.restored) { say(`Backup ${m.id} is already restored on this host; what is left is the code.`); return }
  const lost = describeLoss(await tableLoss(target, st, store, m, args.identities))
  const age = Math.round((Date.now() - Date.parse(m.startedAt)) / 60_000)
  say(chalk.yellow(`Restoring ${m.id} throws away everything written since ${m.startedAt.slice(0, 19).replace('T', ' ')} UTC (${age} min ago)${lost.length ? `: ${lost.join('; ')}` : '; the row counts are the same (updates to existing rows are not counted)'}. restore.ts --undo brings today's data back.`))
}
