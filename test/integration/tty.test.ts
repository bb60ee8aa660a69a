// The interactive paths, driven in a real terminal (tmux send-keys / capture-pane):
// choosing the environment, trusting an unknown host key by its fingerprint, and
// typing the environment's name before a protected environment is changed.
import { spawnSync } from 'node:child_process'
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { ROOT, freshHost, waitFor, type Host } from './helpers.ts'

const SOCKET = 'opsbook-tty-test'
const tmux = (...args: string[]) => spawnSync('tmux', ['-L', SOCKET, ...args], { encoding: 'utf8' })
const screen = (s: string) => tmux('capture-pane', '-p', '-J', '-t', s, '-S', '-100').stdout
const keys = (s: string, ...k: string[]) => tmux('send-keys', '-t', s, ...k)

/** Runs a runbook in a fresh tmux window from `cwd`; the pane shows EXIT=<code> at the end. */
function open(name: string, cwd: string, args: string[]) {
  const cmd = `${join(ROOT, 'node_modules/.bin/tsx')} ${join(ROOT, 'runbooks/provision.ts')} ${args.join(' ')}; echo EXIT=$?; sleep 600`
  const r = tmux('new-session', '-d', '-s', name, '-x', '220', '-y', '50', '-c', cwd, cmd)
  assert.is(r.status, 0, r.stderr)
}
// A hang guard, not a speed check (a whole provision once took over 3 minutes on a busy CI machine).
const exitCode = async (s: string) => {
  await waitFor(`${s} to finish`, () => /EXIT=\d+/.test(screen(s)), 480_000)
  return Number(/EXIT=(\d+)/.exec(screen(s))![1])
}

let h: Host

test('setup: a VPS and two environments in a working directory', async () => {
  // A provisioned VPS with its app directory removed: provision has one thing to change, so
  // the terminal paths are tested without a whole apt run (provision.test covers that).
  h = await freshHost('tty', {}, { provisioned: true })
  h.sh('rm -rf /opt/app')
  copyFileSync(h.envFile, join(h.dir, '.env.staging'))
  writeFileSync(join(h.dir, '.env.production'), readFileSync(h.envFile, 'utf8'))
  tmux('kill-server')
})

test('no --env: a menu of the .env.* files; an unknown host key: its fingerprint, then trusted on "y"', async () => {
  writeFileSync(h.knownHosts, '')
  open('pick', h.dir, ['--dry-run'])
  await waitFor('the environment menu', () => /Which environment\?/.test(screen('pick')))
  assert.match(screen('pick'), /production/)
  assert.match(screen('pick'), /staging/)
  keys('pick', 'Down') // production, staging: pick staging
  keys('pick', 'Enter')
  await waitFor('the host key question', () => /is not in known_hosts/.test(screen('pick')))
  const fp = /fingerprint is (SHA256:[A-Za-z0-9+/]{43})/.exec(screen('pick'))
  assert.ok(fp, screen('pick'))
  const expected = spawnSync('sh', ['-c', `printf '%s' '${h.vps.knownHosts.split('\n').find(l => l.includes('ed25519'))!.split(' ').slice(1).join(' ')}' | ssh-keygen -lf - -E sha256`], { encoding: 'utf8' }).stdout
  assert.ok(expected.includes(fp![1]), `shown ${fp![1]}, the VPS's key is ${expected}`)
  keys('pick', 'y')
  keys('pick', 'Enter')
  assert.is(await exitCode('pick'), 0, screen('pick'))
  assert.match(screen('pick'), /would change/)
  assert.match(readFileSync(h.knownHosts, 'utf8'), /^\[127\.0\.0\.1\]:\d+ ssh-ed25519 /)
})

test('production: the wrong name typed changes nothing (exit 3); the right one goes on', async () => {
  open('wrong', h.dir, ['--env', 'production'])
  await waitFor('the confirmation', () => /This is production: type its name/.test(screen('wrong')))
  keys('wrong', 'staging', 'Enter')
  assert.is(await exitCode('wrong'), 3, screen('wrong'))
  assert.match(screen('wrong'), /You typed "staging", not "production"; nothing was changed\./)
  assert.is(h.sh('test -e /opt/app && echo yes || echo no').trim(), 'no')
  assert.is(JSON.parse(h.sh('tail -n 1 /var/log/opsbook/audit.log')).result, 'refused')

  open('right', h.dir, ['--env', 'production'])
  await waitFor('the confirmation', () => /This is production: type its name/.test(screen('right')))
  keys('right', 'production', 'Enter')
  assert.is(await exitCode('right'), 0, screen('right'))
  assert.match(screen('right'), /RECAP .* changed=[1-9]/)
  assert.match(screen('right'), /App directory \/opt\/app.* changed/)
})

test('teardown', () => {
  tmux('kill-server')
  h.vps.destroy()
})

test.run()
