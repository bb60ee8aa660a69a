// Back to an earlier release, guided for an incident responder at 3 a.m.
import chalk from 'chalk'
import { UsageError } from '../lib/errors.ts'
import { deliveryOf, imagesStep } from '../lib/stack/images.ts'
import { choose, interactive } from '../lib/prompts.ts'
import { defaultRollback, live, readReleases, rollbackTargets, type Release } from '../lib/stack/releases.ts'
import { proxyHealthStep, rolloutStep, stackFilesStep } from '../lib/stack/release.ts'
import { main } from '../lib/runbook.ts'
import { checkVersion, releaseImages, stackCommands, stackOf } from '../lib/stack/stack.ts'

const describe = (r: Release) => `${r.version}  ${r.result}${r.bad ? ' (bad)' : ''}  ${r.at.slice(0, 16).replace('T', ' ')} by ${r.by}`

await main<{ to?: string; previous?: boolean; repair?: boolean }>({
  name: 'rollback',
  summary: 'Go back to an earlier release with the same zero-downtime swap as update. On a terminal with no options it shows the current version, its health and the recent releases, and offers the previous good one (or, when the live release is not answering, re-rolling it onto the host first). --repair re-rolls the live release: it repairs containers or nginx changed by hand.',
  hooks: { version: a => a.to },
  options: {
    to: { type: 'string', value: 'TAG', description: 'the release to go back to' },
    previous: { type: 'boolean', description: 'go back to the newest earlier release not marked bad' },
    repair: { type: 'boolean', description: 'no rollback: put the live release back onto the host with the same swap (after a hand-run docker compose up, say)' },
  },
  example: { to: 'TAG' },
  destructive: true,
  action: (c, a) => `Roll back ${c.app.name} on ${c.env} to ${a.to}`,
  async resolve({ target, config, args }) {
    const st = stackOf(config)
    if (args.to) checkVersion(args.to, '--to')
    const rs = await readReleases(target, st)
    const cur = live(rs)
    if (!cur) throw new UsageError(`Nothing is deployed in ${st.dir} on ${config.env}: there is nothing to roll back.`)
    if (args.repair) {
      if (args.to && args.to !== cur.version) throw new UsageError(`--repair re-rolls the live release (${cur.version}); --to ${args.to} is a rollback: pass one of them.`)
      args.to = cur.version
    }
    // Re-running a finished rollback is a no-op that reports ok, like every runbook.
    if (args.to === cur.version) return
    const targets = rollbackTargets(rs)
    if (!targets.length) throw new UsageError(`${cur.version} is the only release ${config.env} has run: there is nothing earlier to roll back to.`)
    if (args.previous) {
      const prev = defaultRollback(rs)
      if (!prev) throw new UsageError('Every earlier release is marked bad: pick one with --to TAG.')
      args.to = prev.version
    }
    let healthy = true
    if (!args.to && interactive) {
      healthy = (await target.run(stackCommands.proxyHealthy(st), { allowFail: true, timeout: 15 })).code === 0
      console.log(`${config.env}: ${chalk.bold(cur.version)} is live, ${healthy ? chalk.green('healthy') : chalk.red('NOT answering its health check')}`)
      console.log('Recent releases:')
      for (const r of [...rs].reverse().slice(0, 8)) console.log(`  ${r.bad ? chalk.red(describe(r)) : describe(r)}`)
      if (!defaultRollback(rs)) console.log(chalk.yellow('Every earlier release is marked bad: the one offered first is bad too.'))
    }
    // The live release not answering is often the host changed by hand, not the code: re-rolling it comes first.
    const reroll = { value: cur.version, name: `re-roll ${cur.version}, the live release, onto the host (repairs containers or nginx changed by hand)` }
    args.to = await choose({
      message: 'Roll back to which release?', flag: '--to TAG, --previous or --repair', given: args.to,
      choices: [...(healthy ? [] : [reroll]), ...targets.map(r => ({ value: r.version, name: describe(r) }))],
      default: healthy ? defaultRollback(rs)?.version ?? targets[0].version : cur.version,
    }).catch(e => {
      if (e instanceof UsageError && args.to) throw new UsageError(`${args.to} is not a release ${config.env} can roll back to; choose one of: ${targets.map(r => r.version).join(', ')}.`)
      throw e
    })
  },
  steps: (c, a) => {
    const st = stackOf(c)
    const v = checkVersion(a.to, '--to')
    return [stackFilesStep(st), imagesStep(() => releaseImages(st, v), deliveryOf(c)), rolloutStep(st, v, { rollback: true }), proxyHealthStep(st)]
  },
})
