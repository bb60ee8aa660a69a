import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { parseCli } from '../../lib/cli.ts'
import { UsageError } from '../../lib/errors.ts'
import { beside, recap, runSteps, type Step } from '../../lib/steps.ts'
import type { RunResult, Target } from '../../lib/steps.ts'

const target: Target = { name: 'fake', run: async (): Promise<RunResult> => ({ code: 0, stdout: '', stderr: '' }), close: async () => {} }

/** A step over a flag in memory, recording the order of calls. */
function flag(name: string, host: Record<string, boolean>, calls: string[], needs?: string): Step {
  return {
    title: name,
    async check() {
      calls.push(`check ${name}`)
      if (needs && !host[needs]) return { done: false, change: `set ${name} (after ${needs})` }
      return host[name] ? { done: true } : { done: false, change: `set ${name}` }
    },
    async apply() { calls.push(`apply ${name}`); host[name] = true },
  }
}
const quiet = async <T>(fn: () => Promise<T>) => {
  const [out, err] = [process.stdout.write, process.stderr.write]
  process.stdout.write = process.stderr.write = (() => true) as never
  try { return await fn() } finally { process.stdout.write = out; process.stderr.write = err }
}

test('checks are all sent before the first apply; later steps re-check after a change', async () => {
  const host = { a: true, b: false, c: false }, calls: string[] = []
  const s = await quiet(() => runSteps(target, [flag('a', host, calls), flag('b', host, calls), flag('c', host, calls)], { dryRun: false, interrupt: { requested: false } }))
  assert.equal(calls.slice(0, 3), ['check a', 'check b', 'check c'])
  assert.equal(calls.slice(3), ['apply b', 'check c', 'apply c'])
  assert.equal(s.results.map(r => r.state), ['ok', 'changed', 'changed'])
  assert.is(s.counts.changed, 2)
  assert.is(s.error, undefined)
})

test('a no-op run asks each check once and applies nothing', async () => {
  const host = { a: true, b: true }, calls: string[] = []
  const s = await quiet(() => runSteps(target, [flag('a', host, calls), flag('b', host, calls)], { dryRun: false, interrupt: { requested: false } }))
  assert.equal(calls, ['check a', 'check b'])
  assert.is(s.counts.ok, 2)
})

test('dry run reports and never applies', async () => {
  const host = { a: false, b: true }, calls: string[] = []
  const s = await quiet(() => runSteps(target, [flag('a', host, calls), flag('b', host, calls)], { dryRun: true, interrupt: { requested: false } }))
  assert.not.ok(calls.some(c => c.startsWith('apply')))
  assert.equal(s.results.map(r => [r.state, r.detail]), [['would change', 'set a'], ['ok', undefined]])
  assert.match(recap('h', s, true), /^RECAP h {2}ok=1 {2}would_change=1 {2}skipped=0 {2}failed=0/)
})

test('beside: a step runs while the steps between its halves do, and its error surfaces at the second half', async () => {
  const order: string[] = []
  let release!: () => void
  const slow: Step = {
    title: 'download', async check() { return { done: false, change: 'fetch' } },
    async apply() { order.push('download started'); await new Promise<void>(r => { release = r }); order.push('download done'); return 'fetched' },
  }
  const middle: Step = { title: 'deploy', async check() { return { done: false, change: 'x' } }, async apply() { order.push('deploy'); release() } }
  const [start, wait] = beside(slow, 'beside the deploy')
  const s = await quiet(() => runSteps(target, [start, middle, wait], { dryRun: false, interrupt: { requested: false } }))
  assert.equal(order, ['download started', 'deploy', 'download done'])
  assert.equal(s.results.map(r => [r.state, r.detail]), [['changed', 'started'], ['changed', 'x'], ['changed', 'fetched']])
  const failing: Step = { ...slow, async apply() { throw new Error('damaged') } }
  const [f1, f2] = beside(failing, 'beside')
  const f = await quiet(() => runSteps(target, [f1, middle, f2], { dryRun: false, interrupt: { requested: false } }))
  assert.equal(f.results.map(r => r.state), ['changed', 'changed', 'failed'])
  assert.is(f.error?.message, 'damaged')
})

test('beside: when a step between the halves fails, the work is aborted and awaited before the run ends', async () => {
  const order: string[] = []
  const endless: Step = {
    title: 'download', async check() { return { done: false, change: 'fetch' } },
    async apply(_t, _p, _log, signal) {
      order.push('download started')
      await new Promise<void>(r => signal!.addEventListener('abort', () => r()))
      await new Promise(r => setTimeout(r, 20))
      order.push('download stopped')
    },
  }
  const broken: Step = { title: 'deploy', async check() { return { done: false, change: 'x' } }, async apply() { order.push('deploy failed'); throw new Error('deploy failed') } }
  const [start, wait] = beside(endless, 'beside the deploy')
  const s = await quiet(() => runSteps(target, [start, broken, wait], { dryRun: false, interrupt: { requested: false } }))
  assert.equal(order, ['download started', 'deploy failed', 'download stopped'])
  assert.equal(s.results.map(r => r.state), ['changed', 'failed', 'not run'])
})

test('a failing step stops the run and the rest are not run; verify failures count', async () => {
  const host = { a: false, b: false }, calls: string[] = []
  const broken: Step = { ...flag('a', host, calls), verify: async () => { throw new Error('did not take') } }
  const s = await quiet(() => runSteps(target, [broken, flag('b', host, calls)], { dryRun: false, interrupt: { requested: false } }))
  assert.equal(s.results.map(r => r.state), ['failed', 'not run'])
  assert.is(s.error?.message, 'did not take')
  assert.match(recap('h', s, false), /failed=1 {2}not_run=1/)
})

test('skips carry their reason; an interrupt stops before the next step', async () => {
  const interrupt = { requested: false }, calls: string[] = []
  const skip: Step = { title: 's', check: async () => ({ skip: 'not here' }), apply: async () => {} }
  const stopper: Step = { title: 'x', check: async () => ({ done: false, change: 'x' }), apply: async () => { interrupt.requested = true } }
  const s = await quiet(() => runSteps(target, [skip, stopper, flag('c', {}, calls)], { dryRun: false, interrupt }))
  assert.equal(s.results.map(r => r.state), ['skipped', 'changed', 'not run'])
  assert.is(s.results[0].detail, 'not here')
  assert.is(s.error?.name, 'Error')
  assert.match(s.error!.message, /interrupted/)
})

test('unknown flags and missing values are usage errors', () => {
  const opts = { env: { type: 'string' as const, description: '' }, yes: { type: 'boolean' as const, short: 'y', description: '' } }
  assert.equal(parseCli(['--env', 'prod', '-y'], opts), { env: 'prod', yes: true })
  assert.throws(() => parseCli(['--evn', 'prod'], opts), (e: Error) => e instanceof UsageError && /Unknown option --evn/.test(e.message))
  assert.throws(() => parseCli(['--env'], opts), /--env <value> needs a value/)
  assert.throws(() => parseCli(['stray'], opts), /takes only --options/)
})

test.run()
