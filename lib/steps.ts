// The step engine. A step asks the host first (check), changes only what is missing
// (apply) and, where it matters, proves the change took (verify). Each is one listr2
// task whose title ends in ok / changed / skipped / failed / would change.
//
// Speed: all checks are sent at once over the one connection before the first step
// runs; a step uses its prefetched answer until some earlier step has changed the
// host, after which later steps ask again. A no-op re-run is then one round trip.
import { Listr, PRESET_TIMESTAMP } from 'listr2'
import { CommandError, InterruptedError } from './errors.ts'
import { stdoutIsTTY } from './tty.ts'

/** What a check found: nothing to do, something to change (with what apply needs), or not applicable. */
export type Check<P = unknown> =
  | { done: true; detail?: string }
  | { done: false; change: string; plan?: P }
  | { skip: string }

export interface Step<P = any> {
  title: string
  /** Validates local inputs (files, keys) before anything touches the host. */
  prepare?(): void
  check(t: Target): Promise<Check<P>>
  /** Makes the change the check described; may return a more precise description of what it did. */
  apply(t: Target, plan: P, log: (line: string) => void, signal?: AbortSignal): Promise<string | void>
  /** Throws (with an operator-readable message) if the change did not take. */
  verify?(t: Target): Promise<void>
  /**
   * Work this step left running (beside()): stopped and awaited once the run ends, so a
   * failed run does not release the host lock with a transfer still writing.
   */
  settle?(): Promise<void>
}

export type State = 'ok' | 'changed' | 'skipped' | 'failed' | 'would change' | 'not run'
export const STATES: State[] = ['ok', 'changed', 'would change', 'skipped', 'failed', 'not run']

export interface StepResult { title: string; state: State; detail?: string; ms: number }

export interface Summary {
  results: StepResult[]
  counts: Record<State, number>
  ms: number
  error?: Error
}

export interface EngineOptions {
  dryRun: boolean
  /** Steps start only once this resolves (the host lock); its rejection is thrown as is. */
  ready?: Promise<unknown>
  /** Where the up-front checks are sent (a target that waits for the lock on the host). */
  checkVia?: Target
  /** Set by the signal handler: no step starts once it is true. */
  interrupt: { requested: boolean }
  /** Plain timestamped lines even on a terminal (several hosts' steps interleave). */
  plain?: boolean
}

// What steps run against; lib/host/ implements it (over SSH, or on this machine).
export interface RunOptions {
  /** Written to the command's stdin (how file contents and secrets travel: never argv); a stream is piped. */
  stdin?: string | Buffer | NodeJS.ReadableStream
  /** Called with output as it arrives (throttle before rendering). */
  onOutput?: (chunk: string) => void
  /** Seconds before the command is killed on the host. */
  timeout?: number
  /** Resolve with the exit code instead of throwing on non-zero. */
  allowFail?: boolean
  /**
   * Streams stdout here (with backpressure) instead of keeping it; never ended by the
   * run, so the caller decides from the exit code whether the data is complete.
   */
  stdout?: NodeJS.WritableStream
  /** Aborting stops the command (SIGTERM and the channel closed): e.g. when its reader failed. */
  signal?: AbortSignal
}

export interface RunResult { code: number; stdout: string; stderr: string }

export interface Target {
  /** e.g. root@203.0.113.7:22, for messages and the audit log. */
  readonly name: string
  run(command: string, opts?: RunOptions): Promise<RunResult>
  close(): Promise<void>
  /**
   * A port on the host's loopback that leads to localPort on this machine, through the
   * connection already open (ssh -R); a target on this machine has none.
   */
  reverseTunnel?(localPort: number): Promise<Tunnel>
  /**
   * Runs the command on a terminal (a pty) wired to this process's own, as ssh -t does:
   * keys go to it raw (Ctrl-C included), its size follows this terminal's. Resolves with
   * its exit code.
   */
  attach?(command: string): Promise<number>
}

export interface Tunnel {
  /** The port on the host's 127.0.0.1. */
  port: number
  /** Bytes sent to the host through it so far. */
  sent(): number
  close(): Promise<void>
}

const label = (title: string, state: State, detail?: string) => `${title}${detail ? ` (${detail})` : ''} ... ${state}`

export async function runSteps(target: Target, steps: Step[], opts: EngineOptions): Promise<Summary> {
  const t0 = Date.now()
  const results: StepResult[] = steps.map(s => ({ title: s.title, state: 'not run', ms: 0 }))
  const prefetched = steps.map(s => {
    const p = s.check(opts.checkVia ?? target)
    p.catch(() => {}) // awaited (or deliberately dropped) below
    return p
  })
  await opts.ready
  let hostChanged = false

  const list = new Listr(steps.map((step, i) => ({
    title: step.title,
    task: async (_: unknown, task: { title: string; output: string; skip(msg?: string): void }) => {
      if (opts.interrupt.requested) throw new InterruptedError()
      const started = Date.now()
      const r = results[i]
      const done = (state: State, detail?: string) => {
        Object.assign(r, { state, detail, ms: Date.now() - started })
        task.title = label(step.title, state, detail)
      }
      try {
        // A check sent behind the lock gives up (exit 75) when the lock came late (taken
        // over from a dead run, or after a question): the lock is ours now, check again.
        const check = hostChanged ? await step.check(target) : await prefetched[i].catch(e => {
          if (e instanceof CommandError && e.code === 75) return step.check(target)
          throw e
        })
        if ('skip' in check) {
          // The terminal renderer shows the skip message in place of the title; the plain one appends it.
          done('skipped', stdoutIsTTY ? check.skip : undefined)
          task.skip(stdoutIsTTY ? task.title : check.skip)
          r.detail = check.skip
          return
        }
        if (check.done) return done('ok', check.detail)
        if (opts.dryRun) return done('would change', check.change)
        task.output = check.change
        hostChanged = true
        // Plain logs (cron, CI) get a progress line every 10 s, a terminal four a second.
        const did = await step.apply(target, check.plan, throttle(line => { task.output = line }, stdoutIsTTY ? 250 : 10_000))
        if (step.verify) await step.verify(target)
        done('changed', did || check.change)
      } catch (e) {
        done('failed')
        throw e
      }
    },
  })), {
    concurrent: false,
    exitOnError: true,
    // listr2 would process.exit(127) on Ctrl-C; the runbook handles signals itself.
    registerSignalListeners: false,
    renderer: opts.plain ? 'simple' : 'default',
    rendererOptions: opts.plain ? { timestamp: PRESET_TIMESTAMP } : { collapseSubtasks: false, collapseErrors: false },
    fallbackRenderer: 'simple',
    fallbackRendererOptions: { timestamp: PRESET_TIMESTAMP },
  })

  let error: Error | undefined
  try {
    await list.run()
  } catch (e) {
    error = e as Error
  }
  await Promise.all(steps.map(s => s.settle?.()))
  const counts = Object.fromEntries(STATES.map(s => [s, results.filter(r => r.state === s).length])) as Record<State, number>
  return { results, counts, ms: Date.now() - t0, error }
}

/**
 * A step split in two so that it runs beside the steps between them (e.g. a backup
 * downloading while images load): the first starts its apply without waiting, the
 * second waits for it (and throws its error), showing its progress. With nothing to
 * change both say so. If the run stops between the halves, the work is aborted (its
 * apply gets the signal) and awaited before the run ends.
 */
export function beside<P>(step: Step<P>, note: string): [Step<P>, Step<P>] {
  let running: Promise<string | void> | undefined
  const stop = new AbortController()
  let show: (line: string) => void = () => {}
  return [{
    title: `${step.title}: ${note}`,
    prepare: step.prepare,
    check: t => step.check(t),
    async apply(t, plan, log) {
      show = log
      running = step.apply(t, plan, line => show(line), stop.signal)
      running.catch(() => {}) // thrown by the second half, which awaits it
      return 'started'
    },
    async settle() {
      if (!running) return
      stop.abort()
      await running.catch(() => {})
    },
  }, {
    title: step.title,
    async check(t) { return running ? { done: false, change: 'finish what started above' } : step.check(t) },
    async apply(t, plan, log) {
      show = log
      const did = running ? await running : await step.apply(t, plan, log)
      running = undefined
      if (step.verify) await step.verify(t)
      return did
    },
  }]
}

/** Rate-limits progress lines: very frequent listr2 output updates have blown up memory. */
function throttle(fn: (line: string) => void, everyMs: number): (line: string) => void {
  let last = 0
  return chunk => {
    const now = Date.now()
    if (now - last < everyMs) return
    last = now
    const line = chunk.trim().split('\n').pop()
    if (line) fn(line.slice(0, 160))
  }
}

export function recap(target: string, s: Summary, dryRun: boolean): string {
  const shown: State[] = dryRun ? ['ok', 'would change', 'skipped', 'failed'] : ['ok', 'changed', 'skipped', 'failed']
  const parts = shown.map(st => `${st.replace(' ', '_')}=${s.counts[st]}`)
  if (s.counts['not run']) parts.push(`not_run=${s.counts['not run']}`)
  return `RECAP ${target}  ${parts.join('  ')}  (${(s.ms / 1000).toFixed(1)} s)`
}

/** Reads the `key=value` lines that check commands print. */
export function fields(stdout: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const line of stdout.split('\n')) {
    const i = line.indexOf('=')
    if (i > 0) out[line.slice(0, i).trim()] = line.slice(i + 1).trim()
  }
  return out
}
