import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { CommandError } from '../../lib/errors.ts'
import { KEEP_BYTES, LocalTarget } from '../../lib/host/target.ts'

const local = new LocalTarget()

test('stdin reaches the command; stdout and stderr come back', async () => {
  const r = await local.run('tr a-z A-Z; echo err >&2', { stdin: 'secret value' })
  assert.is(r.stdout, 'SECRET VALUE')
  assert.is(r.stderr, 'err\n')
})

test('non-zero exit throws a CommandError unless allowed', async () => {
  try { await local.run('echo boom >&2; exit 7'); assert.unreachable() } catch (e) {
    assert.instance(e, CommandError)
    assert.is((e as CommandError).code, 7)
    assert.match((e as Error).message, /command exited 7: boom/)
  }
  assert.is((await local.run('exit 3', { allowFail: true })).code, 3)
})

test('large output streams through without being kept whole', async () => {
  let streamed = 0
  const r = await local.run('head -c 8000000 /dev/zero | tr "\\0" x', { onOutput: c => { streamed += c.length } })
  assert.is(streamed, 8_000_000)
  assert.ok(r.stdout.length <= KEEP_BYTES + 65536, `kept ${r.stdout.length}`)
})

test('the remote-side timeout stops a command', async () => {
  const t0 = Date.now()
  try { await local.run('sleep 20', { timeout: 1 }); assert.unreachable() } catch (e) {
    assert.match((e as Error).message, /timed out/)
  }
  assert.ok(Date.now() - t0 < 5000)
})

test.run()
