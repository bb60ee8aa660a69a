// Host keys and bad input: every refusal is one sentence, exits non-zero, and the host
// is untouched (nothing ran: no audit log, no lock, identical fingerprint).
import { spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { createServer, type AddressInfo } from 'node:net'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { fingerprint, freshHost, runbook, start, waitFor, type Host } from './helpers.ts'

let h: Host
let pristine: string
const untouched = () => {
  assert.is(fingerprint(h), pristine, 'host fingerprint unchanged')
  assert.is(h.sh('test -e /var/log/opsbook/audit.log && echo logged || echo nothing').trim(), 'nothing', 'no command ran')
}
/** One readable sentence on stderr: no stack trace. */
const oneSentence = (stderr: string) => {
  const lines = stderr.trim().split('\n')
  assert.is(lines.length, 1, stderr)
  assert.match(lines[0], /^error: [A-Z].*[.)]$/)
  assert.not.match(stderr, /\n\s+at /)
}

test('setup: a fresh VPS', async () => {
  h = await freshHost('safety')
  pristine = fingerprint(h)
})

test('unknown host key without a TTY: refused (exit 3) with its fingerprint, nothing run', async () => {
  writeFileSync(h.knownHosts, '')
  const r = await runbook('provision', ['--config', h.envFile, '--yes'])
  assert.is(r.code, 3, r.out)
  oneSentence(r.stderr)
  assert.match(r.stderr, /host key of \[127\.0\.0\.1\]:\d+ is not in .*known_hosts \(\S+ SHA256:[A-Za-z0-9+/]{43}\).*--accept-new-host/)
  untouched()
})

test('--accept-new-host records the key; the next run needs no flag; hashed files work', async () => {
  const r = await runbook('provision', ['--config', h.envFile, '--dry-run', '--accept-new-host'])
  assert.is(r.code, 0, r.out)
  const line = readFileSync(h.knownHosts, 'utf8')
  assert.match(line, new RegExp(`^\\[127\\.0\\.0\\.1\\]:${h.vps.port} \\S+ \\S+\\n$`))
  assert.ok(h.vps.knownHosts.includes(line.trim()), 'the recorded key is the one the VPS really has')
  assert.is(spawnSync('ssh-keygen', ['-H', '-f', h.knownHosts]).status, 0)
  assert.ok(readFileSync(h.knownHosts, 'utf8').startsWith('|1|'))
  const again = await runbook('provision', ['--config', h.envFile, '--dry-run'])
  assert.is(again.code, 0, again.out)
})

test('a changed host key is refused even with --accept-new-host', async () => {
  spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(h.dir, 'impostor')])
  const [type, key] = readFileSync(join(h.dir, 'impostor.pub'), 'utf8').split(' ')
  writeFileSync(h.knownHosts, `[127.0.0.1]:${h.vps.port} ${type} ${key}\n`)
  const r = await runbook('provision', ['--config', h.envFile, '--yes', '--accept-new-host'])
  assert.is(r.code, 3, r.out)
  oneSentence(r.stderr)
  assert.match(r.stderr, /has CHANGED .* ssh-keygen -R '\[127\.0\.0\.1\]:\d+'/)
  untouched()
  writeFileSync(h.knownHosts, h.vps.knownHosts)
})

test('bad input is refused before anything reaches the host', async () => {
  const cases: [string, RegExp][] = [
    ['APP_DIR=/opt/app;reboot', /APP_DIR in .* must be an absolute path/],
    ['DEPLOY_USER=$(reboot)', /DEPLOY_USER in .* must be a Unix user name/],
    ['SSH_PORT=22 22', /SSH_PORT in .* must be a port number/],
    ['SWAP_SIZE=`reboot`', /SWAP_SIZE in .* must be a size/],
    ['DEPLOY_PUBLIC_KEY=/nonexistent.pub', /public key file \/nonexistent\.pub cannot be read/],
  ]
  const base = readFileSync(h.envFile, 'utf8')
  for (const [line, re] of cases) {
    const f = join(h.dir, '.env.bad')
    writeFileSync(f, base + line + '\n')
    const r = await runbook('provision', ['--config', f, '--yes'])
    assert.is(r.code, 2, `${line}: ${r.out}`)
    oneSentence(r.stderr)
    assert.match(r.stderr, re)
  }
  for (const args of [['--bogus'], ['--env', 'a;b'], ['--config', join(h.dir, 'missing')]]) {
    const r = await runbook('provision', args)
    assert.is(r.code, 2, r.out)
    oneSentence(r.stderr)
  }
  untouched()
})

test('without a TTY, a missing environment is an error, not a prompt', async () => {
  const r = await runbook('provision', [])
  assert.is(r.code, 2)
  assert.match(r.stderr, /pass --env NAME or set OPS_ENV/)
})

test('a protected environment needs --yes without a TTY', async () => {
  const f = join(h.dir, '.env.prot')
  writeFileSync(f, readFileSync(h.envFile, 'utf8') + 'PROTECTED=yes\n')
  const r = await runbook('provision', ['--config', f])
  assert.is(r.code, 3, r.out)
  assert.match(r.stderr, /needs confirmation: pass --yes/)
  assert.not.match(r.stderr, /\n\s+at /)
})

test('an unreachable host is one sentence and exit 1', async () => {
  const f = join(h.dir, '.env.down')
  writeFileSync(f, readFileSync(h.envFile, 'utf8').replace(/SSH_PORT=\d+/, 'SSH_PORT=1'))
  const r = await runbook('provision', ['--config', f, '--yes'])
  assert.is(r.code, 1, r.out)
  oneSentence(r.stderr)
  assert.match(r.stderr, /Cannot reach 127\.0\.0\.1:1: connection refused/)
})

test('Ctrl-C while a session (logs.ts) is still connecting ends it at once: exit 130, one sentence', async () => {
  // A port that accepts and never says a word: the SSH handshake waits.
  let reached = false
  const silent = createServer(() => { reached = true }).listen(0, '127.0.0.1')
  await once(silent, 'listening')
  const f = join(h.dir, '.env.silent')
  writeFileSync(f, readFileSync(h.envFile, 'utf8').replace(/SSH_PORT=\d+/, `SSH_PORT=${(silent.address() as AddressInfo).port}`) + 'APP_IMAGE=opsbook/app\n')
  const run = start('logs', ['--config', f])
  // Signalled once it is connecting, not after a fixed wait: a slow machine (CI) may still be
  // loading the runbook's modules after 1.5 s, when Ctrl-C ends node before any handler exists.
  await waitFor('logs.ts to connect', () => reached, 30_000)
  const t0 = Date.now()
  run.child.kill('SIGINT')
  const r = await run.done
  silent.close()
  assert.is(r.code, 130, r.out)
  assert.ok(Date.now() - t0 < 2000, `${Date.now() - t0} ms`)
  oneSentence(r.stderr)
  assert.match(r.stderr, /Interrupted while connecting: nothing ran on the host\./)
})

test('teardown', () => { h.vps.destroy() })

test.run()
