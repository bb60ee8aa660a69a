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

await main<{ to?: string; previous?: boolean }>({
  name: 'rollback',
  summary: 'Go back to an earlier release with the same zero-downtime swap as update. On a terminal with no options it shows the current version, its health and the recent releases, and offers the previous good one.',
  hooks: { version: a => a.to },
  options: {
    to: { type: 'string', value: 'TAG', description: 'the release to go back to' },
    previous: { type: 'boolean', description: 'go back to the newest earlier release not marked bad' },
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
    // Re-running a finished rollback is a no-op that reports ok, like every runbook.
    if (args.to === cur.version) return
    const targets = rollbackTargets(rs)
    if (!targets.length) throw new UsageError(`${cur.version} is the only release ${config.env} has run: there is nothing earlier to roll back to.`)
    if (args.previous) {
      const prev = defaultRollback(rs)
      if (!prev) throw new UsageError('Every earlier release is marked bad: pick one with --to TAG.')
      args.to = prev.version
    }
    if (!args.to && interactive) {
      const health = await target.run(stackCommands.proxyHealthy(st), { allowFail: true, timeout: 15 })
      console.log(`${config.env}: ${chalk.bold(cur.version)} is live, ${health.code === 0 ? chalk.green('healthy') : chalk.red('NOT answering its health check')}`)
      console.log('Recent releases:')
      for (const r of [...rs].reverse().slice(0, 8)) console.log(`  ${r.bad ? chalk.red(describe(r)) : describe(r)}`)
    }
    args.to = await choose({
      message: 'Roll back to which release?', flag: '--to TAG or --previous', given: args.to,
      choices: targets.map(r => ({ value: r.version, name: describe(r) })), default: defaultRollback(rs)?.version,
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
