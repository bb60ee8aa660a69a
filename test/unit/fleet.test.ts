import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { UsageError } from '../../lib/errors.ts'
import { batchSize, batches, nonNegative } from '../../lib/stack/fleet.ts'
import { hostLabel, parseHosts } from '../../lib/values.ts'
import { hookEnv } from '../../lib/hooks.ts'

const refused = (fn: () => unknown, re: RegExp) => {
  try { fn(); assert.unreachable('should have failed') } catch (e) {
    assert.instance(e, UsageError)
    assert.match((e as Error).message, re)
  }
}

test('hosts: names, IPs, ports, IPv6 in brackets; labels round-trip', () => {
  const hs = parseHosts(' web1.example.com, 10.0.0.2:2222 ,[2001:db8::1]:22,alias_1 ')
  assert.equal(hs, [{ host: 'web1.example.com', port: undefined }, { host: '10.0.0.2', port: 2222 }, { host: '2001:db8::1', port: 22 }, { host: 'alias_1', port: undefined }])
  assert.equal(hs.map(hostLabel), ['web1.example.com', '10.0.0.2:2222', '[2001:db8::1]:22', 'alias_1'])
})

test('hosts: metacharacters, empty lists, bad ports and duplicates are refused', () => {
  for (const bad of ['web1;reboot', '$(id)', 'a b', '-oProxyCommand=x', 'web:0', 'web:99999', 'web1\nweb2']) refused(() => parseHosts(bad), /is not a host name/)
  refused(() => parseHosts(' , '), /is empty/)
  refused(() => parseHosts('a,b,a'), /names a twice/)
})

test('batch size: count, percentage rounded up, capped at the number of hosts', () => {
  assert.is(batchSize(undefined, 5), 1)
  assert.is(batchSize('2', 5), 2)
  assert.is(batchSize('9', 5), 5)
  assert.is(batchSize('25%', 5), 2)
  assert.is(batchSize('1%', 5), 1)
  assert.is(batchSize('100%', 5), 5)
  for (const bad of ['0', '0%', '101%', '-1', '2x', '']) refused(() => batchSize(bad, 5), /--batch/)
  assert.equal(batches([1, 2, 3, 4, 5], 2), [[1, 2], [3, 4], [5]])
})

test('--max-fail and --pause take whole numbers', () => {
  assert.is(nonNegative('--pause', undefined, 0), 0)
  assert.is(nonNegative('--pause', '30', 0), 30)
  refused(() => nonNegative('--max-fail', '1.5', 0), /--max-fail "1.5": give a whole number/)
})

test('hook environment describes the run and nothing secret', () => {
  const e = hookEnv({ runbook: 'update', env: 'production', hosts: ['a', 'b:2222'], version: 'v2', result: 'failed', error: 'a: boom' })
  assert.equal({ ...e, OPSBOOK_OPERATOR: 'x' }, {
    OPSBOOK_RUNBOOK: 'update', OPSBOOK_ENV: 'production', OPSBOOK_HOSTS: 'a,b:2222', OPSBOOK_OPERATOR: 'x',
    OPSBOOK_VERSION: 'v2', OPSBOOK_RESULT: 'failed', OPSBOOK_ERROR: 'a: boom',
  })
})

test.run()
