// What every runbook does around its steps: flags and settings, the target host,
// confirmation, the host lock, the audit line, the recap and the exit code. A runbook
// file only names itself and lists its steps.
import { readdirSync } from 'node:fs'
import chalk from 'chalk'
import { auditCommands, auditLine, type Outcome } from './audit.ts'
import { COMMON_OPTIONS, FLEET_OPTIONS, helpText, parseCli, type CommonArgs, type OptionSpec } from './cli.ts'
import { exampleConfig, loadConfig, type Config } from './config.ts'
import { InterruptedError, OpsError, RefusedError, UsageError } from './errors.ts'
import { batches, batchSize, nonNegative } from './stack/fleet.ts'
import { hostLabel, parseHosts } from './values.ts'
import { checkHook, preHook, runHook, type HookRun } from './hooks.ts'
import { acquireLock, behindLock, describeHolder, describeWho, lockHolder, newLockInfo, type Lock } from './lock.ts'
import { choose, confirmNewHost, confirmRun, confirmTakeLock, interactive } from './prompts.ts'
import { connectSsh } from './host/ssh.ts'
import { recap, runSteps, type Step, type Summary, type Target } from './steps.ts'
import { LocalTarget } from './host/target.ts'
import { stackOf } from './stack/stack.ts'

export interface Runbook<A = object> {
  name: string
  summary: string
  details?: string
  options?: Record<string, OptionSpec>
  /** Words the runbook takes besides its options, as --help shows them (e.g. "on|off [options]"); they come as args._. */
  usage?: string
  /** Ask before changing anything, even outside production (a function: only for some options). */
  destructive?: boolean | ((args: A) => boolean)
  /** The environment's name must be typed to confirm, even where PROTECTED is not set (e.g. data thrown away). */
  typeEnvName?(args: A): boolean
  /** What the confirmation prompt says is about to happen. */
  action?: (config: Config, args: A & CommonArgs) => string
  /** Placeholder arguments for listing the steps in --help. */
  example?: Partial<A>
  /** Changes nothing and takes no lock (status). */
  readOnly?: boolean
  /** What the run did in words, for the audit line (e.g. "rotate SECRET_KEY" chosen at a prompt). */
  audit?(args: A): string | undefined
  /** A dead man's switch URL: pinged at start (URL/start), on success (URL) and on failure (URL/fail). */
  ping?: (config: Config) => string | undefined
  /** Takes --hosts / SSH_HOSTS in batches (--batch, --max-fail, --pause). */
  fleet?: boolean
  /** Works with ENGINE=swarm: on every node in turn (provision) or through the first node, a manager (the rest). */
  cluster?: 'every node' | 'first node'
  /**
   * Runs PRE_HOOK / POST_HOOK / FAILURE_HOOK around the run; version names the release that
   * serves once it is done. Without one in the arguments (a canary's --promote), it is read
   * from the host (`t`) before the pre hook runs (one host's runs: a fleet's hooks get the
   * arguments' version only).
   */
  hooks?: { version(args: A, t?: Target, config?: Config): string | undefined | Promise<string | undefined> }
  /**
   * Reads the host to settle what to do before the steps are built, e.g. the rollback
   * target chosen from the release history. May prompt; may set fields of args.
   */
  resolve?(ctx: { target: Target; config: Config; args: A & CommonArgs }): Promise<void>
  /** Checks the flags' values before any host is contacted (resolve runs after connecting). */
  check?(args: A & CommonArgs): void
  /** Another host than the settings name, e.g. restore --to-host (host or host:port). */
  host?(args: A): string | undefined
  steps(config: Config, args: A & CommonArgs): Step[]
  /**
   * Runs once the steps are done, failed ones included, with the connection still open:
   * status turns what its checks found into a report (printed with --json) and writes the
   * metrics file.
   */
  after?(t: Target, args: A & CommonArgs): Promise<Record<string, unknown> | undefined>
  /**
   * Instead of steps: one command wired to this terminal (logs, exec). Built before
   * connecting, so bad input is refused first; no lock is taken; the first Ctrl-C aborts it.
   */
  session?(config: Config, args: A & CommonArgs): Session
}

export interface Session {
  /** An audit line for the run (exec): what it did in words, and the arguments to record (none that may hold a secret). */
  audit?: { what: string; args: string[] }
  /** Resolves with the exit code to end with; `signal` aborts on the first Ctrl-C. */
  run(t: Target, signal: AbortSignal): Promise<number>
}

const say = (line: string) => process.stderr.write(line + '\n')
const isDestructive = (rb: Runbook<any>, args: unknown) => (typeof rb.destructive === 'function' ? rb.destructive(args) : Boolean(rb.destructive))

export async function main<A>(rb: Runbook<A>, argv = process.argv.slice(2)): Promise<never> {
  const interrupt: Interrupt = { requested: false }
  const onSecondSignal = new Set<() => Promise<void>>()
  const onSignal = () => {
    if (!interrupt.requested && interrupt.abort) {
      interrupt.requested = true
      interrupt.abort()
      return
    }
    if (!interrupt.requested) {
      interrupt.requested = true
      say('\nInterrupted: finishing the current step, then stopping (Ctrl-C again stops at once).')
      return
    }
    say('Stopping now; releasing the host lock.')
    Promise.race([Promise.all([...onSecondSignal].map(f => f())), new Promise(r => setTimeout(r, 5000))]).finally(() => process.exit(130))
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)

  let json = argv.includes('--json')
  let code: number
  try {
    code = await execute(rb, argv, interrupt, onSecondSignal)
  } catch (e) {
    code = e instanceof OpsError ? e.exitCode : 1
    const message = e instanceof OpsError ? e.message : `unexpected failure (a bug; please report it): ${(e as Error).stack}`
    say(chalk.red(`error: ${message}`))
    if (json) console.log(JSON.stringify({ runbook: rb.name, result: code === 3 ? 'refused' : 'failed', exitCode: code, error: message }))
  }
  process.exit(code)
}

/** `abort`: set while a session runs (its first Ctrl-C ends it, not a step). */
type Interrupt = { requested: boolean; abort?: () => void }
type ForcedStops = Set<() => Promise<void>>

interface HostRun {
  rb: Runbook<any>
  args: any
  argv: string[]
  config: Config
  interrupt: Interrupt
  forcedStops: ForcedStops
  /** Ask for confirmation on this host (false when the whole fleet was confirmed at once). */
  confirm: boolean
  /** Several hosts at once: plain lines, each step title prefixed with the host. */
  prefix?: string
  /** Run PRE_HOOK after this host's confirmation (single-host runs). */
  hook?: HookRun
  /** Reads the hooks' version from the host, when the arguments do not give it. */
  hookVersion?: (t: Target) => Promise<void>
  /** Print this host's JSON summary (a fleet prints one for all hosts instead). */
  json: boolean
}

interface HostResult { host: string; result: Outcome | 'refused'; exitCode: number; error?: string; summary?: Summary }

async function execute<A>(rb: Runbook<A>, argv: string[], interrupt: Interrupt, forcedStops: ForcedStops): Promise<number> {
  // A session takes no lock, asks nothing and prints its command's output, not a summary.
  const common = rb.session ? Object.fromEntries(Object.entries(COMMON_OPTIONS).filter(([k]) => ['env', 'config', 'dry-run', 'accept-new-host', 'help'].includes(k))) : COMMON_OPTIONS
  const options = { ...common, ...(rb.fleet ? FLEET_OPTIONS : {}), ...rb.options }
  const args = parseCli<A & CommonArgs & FleetArgs>(argv, options, Boolean(rb.usage))
  if (args.help) {
    console.log(helpText({ name: rb.name, summary: rb.summary, details: rb.details, steps: rb.steps(exampleConfig(), { ...args, ...rb.example }).map(s => s.title), options, usage: rb.usage }))
    return 0
  }
  // A bad value is named before the environment is asked for or a host is contacted.
  rb.check?.(args)
  if (rb.fleet) {
    batchSize(args.batch, 1)
    nonNegative('--max-fail', args['max-fail'], 0)
    nonNegative('--pause', args.pause, 0)
  }
  const other = rb.host?.(args)
  const to = other !== undefined ? parseHosts(other, '--to-host') : undefined
  if (to && to.length !== 1) throw new UsageError('--to-host takes one host.')
  const given = args.hosts !== undefined ? parseHosts(args.hosts) : undefined
  const env = args.config ? args.env : args.env ?? process.env.OPS_ENV ?? await chooseEnv()
  const config = loadConfig({ env, envFile: args.config })
  // Your compose file is read and checked before any host is contacted, whatever the runbook.
  if (config.stack.composeFile) stackOf(config)
  if (config.cluster && !rb.cluster) {
    throw new UsageError(`${rb.name} does not work with ENGINE=swarm yet: provision, deploy, update, rollback, status, backup, restore, rotate-secret, maintenance, logs and exec do (see docs/cluster.md). Use ENGINE=compose for this environment.`)
  }
  // A new cluster (disaster recovery) is its SSH_HOSTS, formed by provision.ts; --to-host names its first node.
  if (config.cluster && config.hosts && to && hostLabel(to[0]) !== hostLabel(config.hosts[0])) {
    throw new UsageError(`--to-host ${hostLabel(to[0])}: with ENGINE=swarm a new cluster's nodes are SSH_HOSTS (provision.ts forms it); name its first node, ${hostLabel(config.hosts[0])}, or list the new nodes in SSH_HOSTS first.`)
  }
  // A cluster is managed through its first node.
  const throughFirst = config.cluster && rb.cluster === 'first node'
  if (throughFirst && config.hosts) {
    if (given) throw new UsageError(`--hosts: with ENGINE=swarm ${rb.name} works on the whole cluster through its first node; leave --hosts out.`)
    config.ssh = { ...config.ssh, host: config.hosts[0].host, port: config.hosts[0].port ?? config.ssh.port }
  }
  if (to) config.ssh = { ...config.ssh, host: to[0].host, port: to[0].port ?? config.ssh.port }
  const hosts = throughFirst ? undefined : given ?? (rb.fleet ? config.hosts : undefined)
  if (!rb.fleet && !config.ssh.host && config.target === 'ssh') {
    throw new UsageError(`${rb.name} works on one host at a time and ${config.file} lists several (SSH_HOSTS): choose one with SSH_HOST=NAME in the environment.`)
  }
  if (rb.session) return runSession(rb, args, config, interrupt)
  const changes = !args['dry-run'] && !rb.readOnly
  const hooks = rb.hooks && changes ? config.hooks : {}
  for (const kind of ['pre', 'post', 'failure'] as const) checkHook(kind, hooks[kind])
  // One for the pre hook and the post or failure hook: a version read from the host serves both.
  const named = rb.hooks?.version(args)
  const hookRun: HookRun = { runbook: rb.name, env: config.env, hosts: hosts ? hosts.map(hostLabel) : [config.ssh.host], version: typeof named === 'string' ? named : undefined }
  const hookVersion = rb.hooks && (hooks.pre || hooks.post || hooks.failure) && hookRun.version === undefined
    ? async (t: Target) => { hookRun.version ??= await Promise.resolve(rb.hooks!.version(args, t, config)).catch(() => undefined) }
    : undefined

  const finish = async (results: HostResult[]) => {
    const failed = results.filter(r => r.exitCode !== 0)
    const path = failed.length ? hooks.failure : hooks.post
    if (path && !results.every(r => r.result === 'refused' && r.exitCode === 3)) {
      const code = await runHook(path, { ...hookRun, result: failed.length ? 'failed' : 'ok', error: failed.map(r => `${r.host}: ${r.error}`).join('; ') || undefined })
      if (code !== 0) say(chalk.yellow(`warning: ${failed.length ? 'FAILURE_HOOK' : 'POST_HOOK'} ${path} exited ${code}.`))
    }
  }

  const pingUrl = changes ? rb.ping?.(config) : undefined
  if (pingUrl) await ping(`${pingUrl}/start`)
  if (!hosts) {
    const r = await runOnHost({ rb, args, argv, config, interrupt, forcedStops, confirm: true, hook: hooks.pre ? hookRun : undefined, hookVersion, json: Boolean(args.json) })
      .catch(async e => {
        // A refusal before anything ran (not confirmed, pre hook, lock) needs no failure hook.
        if (!(e instanceof RefusedError) && !(e instanceof UsageError)) await finish([{ host: config.ssh.host, result: 'failed', exitCode: 1, error: (e as Error).message }])
        if (pingUrl) await ping(`${pingUrl}/fail`)
        throw e
      })
    await finish([r])
    if (pingUrl) await ping(r.exitCode === 0 ? pingUrl : `${pingUrl}/fail`)
    return r.exitCode
  }
  return fleet(rb, args, argv, config, hosts.map(h => ({ ...config, ssh: { ...config.ssh, host: h.host, port: h.port ?? config.ssh.port } })), interrupt, forcedStops, hooks.pre ? hookRun : undefined, finish)
}

type FleetArgs = { hosts?: string; batch?: string; 'max-fail'?: string; pause?: string }

/** The same runbook on several hosts, batch by batch. */
async function fleet(rb: Runbook<any>, args: CommonArgs & FleetArgs, argv: string[], config: Config, configs: Config[], interrupt: Interrupt,
  forcedStops: ForcedStops, pre: HookRun | undefined, finish: (r: HostResult[]) => Promise<void>): Promise<number> {
  if (rb.resolve) throw new UsageError(`${rb.name} runs on one host at a time: leave out --hosts.`)
  const size = batchSize(args.batch, configs.length)
  const maxFail = nonNegative('--max-fail', args['max-fail'], 0)
  const pause = nonNegative('--pause', args.pause, 0)
  // Bad input fails before any host is contacted.
  for (const s of rb.steps(config, args)) s.prepare?.()
  const names = configs.map(c => hostLabel({ host: c.ssh.host, port: c.ssh.port }))
  const changes = !args['dry-run'] && !rb.readOnly
  if (changes && (isDestructive(rb, args) || config.protected)) {
    await confirmRun({ action: `${rb.action?.(config, args) ?? `Run ${rb.name} on ${config.env}`}: ${configs.length} hosts, ${size} at a time`, env: config.env, protected: config.protected || Boolean(rb.typeEnvName?.(args)), yes: Boolean(args.yes) })
  }
  if (pre) await preHook(config.hooks.pre, pre)
  const groups = batches(configs.map((c, i) => ({ c, name: names[i] })), size)
  const results: HostResult[] = []
  let failures = 0
  for (const [n, group] of groups.entries()) {
    if (interrupt.requested || failures > maxFail) {
      for (const g of group) results.push({ host: g.name, result: 'failed', exitCode: -1, error: 'not run' })
      continue
    }
    say(chalk.bold(`Batch ${n + 1}/${groups.length}: ${group.map(g => g.name).join(', ')}`))
    const done = await Promise.all(group.map(g => runOnHost({
      rb, args, argv, config: g.c, interrupt, forcedStops, confirm: false, prefix: group.length > 1 ? g.name : undefined, json: false,
    }).then(r => ({ ...r, host: g.name }), (e): HostResult => {
      const message = e instanceof OpsError ? e.message : `unexpected failure (a bug; please report it): ${(e as Error).stack}`
      say(chalk.red(`error: ${g.name}: ${message}`))
      return { host: g.name, result: e instanceof RefusedError ? 'refused' : 'failed', exitCode: e instanceof OpsError ? e.exitCode : 1, error: message }
    })))
    results.push(...done)
    failures += done.filter(r => r.exitCode !== 0).length
    if (failures > maxFail && n < groups.length - 1) say(chalk.red(`${failures} host(s) failed (--max-fail ${maxFail}): the remaining hosts are left as they are.`))
    else if (pause && n < groups.length - 1 && !interrupt.requested) {
      say(`Pausing ${pause} s before the next batch.`)
      await new Promise(r => setTimeout(r, pause * 1000))
    }
  }
  const notRun = results.filter(r => r.exitCode === -1)
  const failed = results.filter(r => r.exitCode > 0)
  console.log(`FLEET ${configs.length} hosts  ok=${results.length - failed.length - notRun.length}  failed=${failed.length}  not_run=${notRun.length}`)
  for (const r of results) if (r.exitCode > 0) console.log(`  ${r.host}: ${r.error}`)
  const code = interrupt.requested ? 130 : failed.length || notRun.length ? Math.max(1, ...failed.map(r => r.exitCode)) : 0
  await finish(results.filter(r => r.exitCode !== -1))
  if (args.json) {
    console.log(JSON.stringify({
      runbook: rb.name, env: config.env, result: code === 0 ? 'ok' : 'failed', exitCode: code,
      hosts: results.map(r => ({ host: r.host, result: r.exitCode === -1 ? 'not run' : r.result, exitCode: Math.max(0, r.exitCode), counts: r.summary?.counts, error: r.error })),
    }))
  }
  return code
}

async function runOnHost(o: HostRun): Promise<HostResult> {
  const { rb, args, argv, config, interrupt } = o
  const dryRun = Boolean(args['dry-run'])
  const changes = !dryRun && !rb.readOnly
  const options = { ...COMMON_OPTIONS, ...rb.options }
  const secretFlags = Object.entries(options).filter(([, opt]) => (opt as OptionSpec).secret).map(([k]) => `--${k}`)
  const build = () => {
    const steps = rb.steps(config, args).map(s => (o.prefix ? { ...s, title: `[${o.prefix}] ${s.title}` } : s))
    for (const s of steps) s.prepare?.()
    return steps
  }
  // Bad input fails here, before connecting, unless the steps depend on the host.
  let steps = rb.resolve ? [] : build()

  const connect = (): Promise<Target> => config.target === 'local' ? Promise.resolve(new LocalTarget()) : connectSsh({
    ...config.ssh,
    acceptNewHost: Boolean(args['accept-new-host']),
    confirmNewHost: interactive && !o.prefix ? confirmNewHost : undefined,
  })
  const target = await connect()
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
      runbook: rb.name, env: config.env, args: argv, what: [rb.audit?.(args), lockNote].filter(Boolean).join('; ') || undefined, result,
      counts: extra.summary?.counts, durationMs: Date.now() - t0, error: extra.error,
    }, secretFlags),
  })
  const writeAudit = (result: Outcome, extra: { error?: string } = {}) => {
    const a = audit(result, extra)
    return target.run(a.cmd, { stdin: a.stdin, allowFail: true, timeout: 30 }).catch(() => {})
  }
  let lock: Lock | undefined
  let lockNote: string | undefined
  // The connection may have died under us (a network blip, sshd restarted): a new one
  // writes the audit line and releases the lock (only if still ours), so the next cron
  // run does not find it held.
  const stillReleased = async (cmd: string, stdin?: string) => {
    if (await target.run(cmd, { stdin, timeout: 15 }).then(() => true, () => false)) return
    await connect().then(async again => {
      try { await again.run(cmd, { stdin, timeout: 15 }) } finally { await again.close() }
      say(chalk.yellow('note: the connection dropped; the audit line and the lock release went over a new one.'))
    }).catch(() => say(chalk.yellow(`note: the host lock could not be released (no connection); the next run takes it over after LOCK_STALE_AFTER (${config.lockStaleAfter} s) with --take-stale-lock.`)))
  }
  let forcedStop: (() => Promise<void>) | undefined
  try {
    if (changes && o.confirm && (isDestructive(rb, args) || config.protected)) {
      await confirmRun({ action: rb.action?.(config, args) ?? `Run ${rb.name} on ${config.env} (${target.name})`, env: config.env, protected: config.protected || Boolean(rb.typeEnvName?.(args)), yes: Boolean(args.yes) })
        .catch(async e => { await writeAudit('refused', { error: e.message }); throw e })
    }
    await o.hookVersion?.(target)
    if (o.hook) await preHook(config.hooks.pre, o.hook).catch(async e => { await writeAudit('refused', { error: e.message }); throw e })
    // The lock request and the (read-only) checks go out together; see lockCommands.awaitOwn.
    const info = newLockInfo(rb.name, config.env, args.message)
    const locking = !changes ? undefined : acquireLock(target, info, {
      breakLock: Boolean(args['break-lock']), takeStale: Boolean(args['take-stale-lock']), staleAfterS: config.lockStaleAfter,
      ask: interactive ? h => confirmTakeLock(describeWho(h), h.ageS) : undefined,
    }).then(taken => {
      lock = taken.lock
      const b = taken.broke
      if (b) say(chalk.yellow(`note: broke the host lock of ${b.info?.operator ?? 'an unknown holder'}@${b.info?.from ?? '?'} (${b.info?.runbook ?? '?'}).`))
      if (taken.taken) { lockNote = taken.taken; say(chalk.yellow(`note: ${taken.taken}.`)) }
      const held = lock
      forcedStop = async () => {
        const a = audit('interrupted')
        await target.run(`${a.cmd}; ${held.releaseCommand()}`, { stdin: a.stdin, allowFail: true, timeout: 10 })
      }
      o.forcedStops.add(forcedStop)
    }, async e => {
      if (e instanceof RefusedError) await writeAudit('refused', { error: e.message })
      throw e
    })
    const holder = !changes ? lockHolder(target, config.lockStaleAfter) : undefined
    const summary = await runSteps(target, steps, { dryRun: !changes, interrupt, ready: locking, checkVia: locking && behindLock(target, info.id), plain: Boolean(o.prefix) })
    const h = await holder
    if (h) say(chalk.yellow(`note: ${describeHolder(h)}`))
    const report = await rb.after?.(target, args).catch(e => { say(chalk.yellow(`warning: ${(e as Error).message}`)); return undefined })
    const interrupted = summary.error instanceof InterruptedError || (interrupt.requested && Boolean(summary.error))
    const result: Outcome = interrupted ? 'interrupted' : summary.error ? 'failed' : dryRun ? 'dry-run' : summary.counts.changed ? 'changed' : 'ok'
    const code = interrupted ? 130 : summary.error ? (summary.error instanceof OpsError ? summary.error.exitCode : 1) : 0
    if (lock) {
      // Audit line and lock release in one round trip.
      const a = audit(result, { summary, error: summary.error?.message })
      await stillReleased(`${a.cmd}; ${lock.releaseCommand()}`, a.stdin)
      lock = undefined
    }
    console.log(recap(target.name, summary, dryRun))
    if (summary.error) {
      const failed = summary.results.find(r => r.state === 'failed')
      say(chalk.red(`error: ${failed ? `${failed.title}: ` : ''}${summary.error.message}`))
      if (!interrupted) say('The host keeps what the finished steps did; fix the cause and re-run: finished steps will report ok.')
    }
    if (o.json) {
      console.log(JSON.stringify({
        runbook: rb.name, env: config.env, host: target.name, dryRun, result, exitCode: code,
        counts: summary.counts, durationMs: summary.ms, steps: summary.results, error: summary.error?.message, ...(report ? { report } : {}),
      }))
    }
    return { host: target.name, result, exitCode: code, summary, error: summary.error?.message }
  } finally {
    if (forcedStop) o.forcedStops.delete(forcedStop)
    if (lock) await stillReleased(lock.releaseCommand())
    await target.close()
  }
}

/** A session runbook on its one host: no lock, no steps; an audit line if it asks for one. */
async function runSession<A>(rb: Runbook<A>, args: A & CommonArgs, config: Config, interrupt: Interrupt): Promise<number> {
  const s = rb.session!(config, args)
  // Ctrl-C while connecting ends the run too (nothing has run yet), not only once the command has started.
  const abort = new AbortController()
  interrupt.abort = () => abort.abort()
  const connecting = config.target === 'local' ? Promise.resolve<Target>(new LocalTarget()) : connectSsh({
    ...config.ssh, acceptNewHost: Boolean(args['accept-new-host']), confirmNewHost: interactive ? confirmNewHost : undefined,
  })
  const stopped = new Promise<never>((_, reject) => abort.signal.addEventListener('abort', () => reject(new InterruptedError('Interrupted while connecting: nothing ran on the host.')), { once: true }))
  const target = await Promise.race([connecting, stopped]).catch(e => {
    interrupt.abort = undefined
    connecting.then(t => t.close(), () => {})
    throw e
  })
  const t0 = Date.now()
  let code = 1
  let error: string | undefined
  try {
    code = await s.run(target, abort.signal)
    return code
  } catch (e) {
    error = (e as Error).message
    throw e
  } finally {
    interrupt.abort = undefined
    if (s.audit) {
      const result: Outcome = abort.signal.aborted ? 'interrupted' : code === 0 && !error ? 'ok' : 'failed'
      const line = auditLine({ runbook: rb.name, env: config.env, args: s.audit.args, what: s.audit.what, result, durationMs: Date.now() - t0, error: error ?? (code ? `exit ${code}` : undefined) })
      await target.run(auditCommands.append(), { stdin: line, allowFail: true, timeout: 30 }).catch(() => {})
    }
    await target.close()
  }
}

/** Best effort: a monitoring service that is down must not fail the backup it watches. */
async function ping(url: string): Promise<void> {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(10_000) })
    if (!r.ok) say(chalk.yellow(`warning: ping ${new URL(url).host} answered HTTP ${r.status}.`))
  } catch (e) {
    say(chalk.yellow(`warning: could not ping ${new URL(url).host} (${(e as Error).message}).`))
  }
}

/** On a terminal without --env: pick one of the .env.* files here. */
async function chooseEnv(): Promise<string> {
  const envs = readdirSync('.').map(f => /^\.env\.([a-z0-9][a-z0-9_-]*)$/.exec(f)?.[1]).filter((e): e is string => !!e && e !== 'example')
  return choose({ message: 'Which environment?', flag: '--env NAME', env: 'OPS_ENV', choices: envs.map(e => ({ value: e })) })
}
