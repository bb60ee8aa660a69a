// What every runbook does around its steps: flags and settings, the target host,
// confirmation, the host lock, the audit line, the recap and the exit code. A runbook
// file only names itself and lists its steps.
import { readdirSync } from 'node:fs'
import chalk from 'chalk'
import { auditCommands, auditLine, type Outcome } from './audit.ts'
import { COMMON_OPTIONS, helpText, parseCli, type CommonArgs, type OptionSpec } from './cli.ts'
import { exampleConfig, loadConfig, type Config } from './config.ts'
import { InterruptedError, OpsError, RefusedError } from './errors.ts'
import { acquireLock, behindLock, describeHolder, lockHolder, newLockInfo, type Lock } from './lock.ts'
import { choose, confirmNewHost, confirmRun, interactive } from './prompts.ts'
import { connectSsh } from './ssh.ts'
import { recap, runSteps, type Step, type Summary } from './steps.ts'
import { LocalTarget, type Target } from './target.ts'

export interface Runbook<A = object> {
  name: string
  summary: string
  details?: string
  options?: Record<string, OptionSpec>
  /** Ask before changing anything, even outside production. */
  destructive?: boolean
  /** What the confirmation prompt says is about to happen. */
  action?: (config: Config, args: A & CommonArgs) => string
  /** Placeholder arguments for listing the steps in --help. */
  example?: Partial<A>
  /** Changes nothing and takes no lock (status). */
  readOnly?: boolean
  /**
   * Reads the host to settle what to do before the steps are built, e.g. the rollback
   * target chosen from the release history. May prompt; may set fields of args.
   */
  resolve?(ctx: { target: Target; config: Config; args: A & CommonArgs }): Promise<void>
  steps(config: Config, args: A & CommonArgs): Step[]
}

const say = (line: string) => process.stderr.write(line + '\n')

export async function main<A>(rb: Runbook<A>, argv = process.argv.slice(2)): Promise<never> {
  const interrupt = { requested: false }
  let onSecondSignal: (() => Promise<void>) | undefined
  const onSignal = () => {
    if (!interrupt.requested) {
      interrupt.requested = true
      say('\nInterrupted: finishing the current step, then stopping (Ctrl-C again stops at once).')
      return
    }
    say('Stopping now; releasing the host lock.')
    Promise.race([onSecondSignal?.(), new Promise(r => setTimeout(r, 5000))]).finally(() => process.exit(130))
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)

  let json = argv.includes('--json')
  let code: number
  try {
    code = await execute(rb, argv, interrupt, fn => { onSecondSignal = fn })
  } catch (e) {
    code = e instanceof OpsError ? e.exitCode : 1
    const message = e instanceof OpsError ? e.message : `unexpected failure (a bug; please report it): ${(e as Error).stack}`
    say(chalk.red(`error: ${message}`))
    if (json) console.log(JSON.stringify({ runbook: rb.name, result: code === 3 ? 'refused' : 'failed', exitCode: code, error: message }))
  }
  process.exit(code)
}

async function execute<A>(rb: Runbook<A>, argv: string[], interrupt: { requested: boolean }, onForcedStop: (fn: () => Promise<void>) => void): Promise<number> {
  const options = { ...COMMON_OPTIONS, ...rb.options }
  const args = parseCli<A & CommonArgs>(argv, options)
  if (args.help) {
    console.log(helpText({ name: rb.name, summary: rb.summary, details: rb.details, steps: rb.steps(exampleConfig(), { ...args, ...rb.example }).map(s => s.title), options }))
    return 0
  }
  const dryRun = Boolean(args['dry-run'])
  const changes = !dryRun && !rb.readOnly
  const secretFlags = Object.entries(options).filter(([, o]) => (o as OptionSpec).secret).map(([k]) => `--${k}`)
  const env = args.config ? args.env : args.env ?? process.env.OPS_ENV ?? await chooseEnv()
  const config = loadConfig({ env, envFile: args.config })
  const build = () => {
    const steps = rb.steps(config, args)
    for (const s of steps) s.prepare?.()
    return steps
  }
  // Bad input fails here, before connecting, unless the steps depend on the host.
  let steps = rb.resolve ? [] : build()

  const target: Target = config.target === 'local' ? new LocalTarget() : await connectSsh({
    ...config.ssh,
    acceptNewHost: Boolean(args['accept-new-host']),
    confirmNewHost: interactive ? confirmNewHost : undefined,
  })
  if (rb.resolve) {
    try {
      await rb.resolve({ target, config, args })
      steps = build()
    } catch (e) {
      await target.close()
      throw e
    }
  }
  const t0 = Date.now()
  const audit = (result: Outcome, extra: { summary?: Summary; error?: string } = {}) => ({
    cmd: auditCommands.append(),
    stdin: auditLine({
      runbook: rb.name, env: config.env, args: argv, result,
      counts: extra.summary?.counts, durationMs: Date.now() - t0, error: extra.error,
    }, secretFlags),
  })
  const writeAudit = (result: Outcome, extra: { error?: string } = {}) => {
    const a = audit(result, extra)
    return target.run(a.cmd, { stdin: a.stdin, allowFail: true, timeout: 30 }).catch(() => {})
  }
  let lock: Lock | undefined
  try {
    if (changes && (rb.destructive || config.protected)) {
      await confirmRun({ action: rb.action?.(config, args) ?? `Run ${rb.name} on ${config.env} (${target.name})`, env: config.env, protected: config.protected, yes: Boolean(args.yes) })
        .catch(async e => { await writeAudit('refused', { error: e.message }); throw e })
    }
    // The lock request and the (read-only) checks go out together; see lockCommands.awaitOwn.
    const info = newLockInfo(rb.name, config.env, args.message)
    const locking = !changes ? undefined : acquireLock(target, info, Boolean(args['break-lock'])).then(taken => {
      lock = taken.lock
      const b = taken.broke
      if (b) say(chalk.yellow(`note: broke the host lock of ${b.info?.operator ?? 'an unknown holder'}@${b.info?.from ?? '?'} (${b.info?.runbook ?? '?'}).`))
      const held = lock
      onForcedStop(async () => {
        const a = audit('interrupted')
        await target.run(`${a.cmd}; ${held.releaseCommand()}`, { stdin: a.stdin, allowFail: true, timeout: 10 })
      })
    }, async e => {
      if (e instanceof RefusedError) await writeAudit('refused', { error: e.message })
      throw e
    })
    const holder = !changes ? lockHolder(target) : undefined
    const summary = await runSteps(target, steps, { dryRun: !changes, interrupt, ready: locking, checkVia: locking && behindLock(target, info.id) })
    const h = await holder
    if (h) say(chalk.yellow(`note: ${describeHolder(h)}`))
    const interrupted = summary.error instanceof InterruptedError || (interrupt.requested && Boolean(summary.error))
    const result: Outcome = interrupted ? 'interrupted' : summary.error ? 'failed' : dryRun ? 'dry-run' : summary.counts.changed ? 'changed' : 'ok'
    const code = interrupted ? 130 : summary.error ? (summary.error instanceof OpsError ? summary.error.exitCode : 1) : 0
    if (lock) {
      // Audit line and lock release in one round trip.
      const a = audit(result, { summary, error: summary.error?.message })
      await target.run(`${a.cmd}; ${lock.releaseCommand()}`, { stdin: a.stdin, timeout: 30 })
      lock = undefined
    }
    console.log(recap(target.name, summary, dryRun))
    if (summary.error) {
      const failed = summary.results.find(r => r.state === 'failed')
      say(chalk.red(`error: ${failed ? `${failed.title}: ` : ''}${summary.error.message}`))
      if (!interrupted) say('The host keeps what the finished steps did; fix the cause and re-run: finished steps will report ok.')
    }
    if (args.json) {
      console.log(JSON.stringify({
        runbook: rb.name, env: config.env, host: target.name, dryRun, result, exitCode: code,
        counts: summary.counts, durationMs: summary.ms, steps: summary.results, error: summary.error?.message,
      }))
    }
    return code
  } finally {
    if (lock) await target.run(lock.releaseCommand(), { allowFail: true, timeout: 10 }).catch(() => {})
    await target.close()
  }
}

/** On a terminal without --env: pick one of the .env.* files here. */
async function chooseEnv(): Promise<string> {
  const envs = readdirSync('.').map(f => /^\.env\.([a-z0-9][a-z0-9_-]*)$/.exec(f)?.[1]).filter((e): e is string => !!e && e !== 'example')
  return choose({ message: 'Which environment?', flag: '--env NAME', env: 'OPS_ENV', choices: envs.map(e => ({ value: e })) })
}
