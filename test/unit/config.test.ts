import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { KEYS, exampleConfig, loadConfig } from '../../lib/config.ts'
import { UsageError } from '../../lib/errors.ts'
import { COMMON_OPTIONS, parseCli } from '../../lib/cli.ts'

const dir = join(import.meta.dirname, '..', '.tmp', 'config')
mkdirSync(dir, { recursive: true })
const file = (name: string, text: string) => { const p = join(dir, name); writeFileSync(p, text); return p }
const fails = (text: string, re: RegExp, environ: NodeJS.ProcessEnv = {}) => {
  const p = file('.env.t', text)
  try { loadConfig({ envFile: p, environ }); assert.unreachable('should have failed') } catch (e) {
    assert.instance(e, UsageError)
    assert.match((e as Error).message, re)
    assert.ok((e as Error).message.includes(p) || Object.keys(environ).length, 'names the file')
  }
}

test('defaults fill what the file leaves out', () => {
  const c = loadConfig({ envFile: file('.env.min', 'SSH_HOST=vps.example.com\n'), environ: {} })
  assert.is(c.ssh.host, 'vps.example.com')
  assert.is(c.ssh.port, undefined)
  assert.is(c.app.dir, '/opt/app')
  assert.is(c.deploy.user, 'deploy')
  assert.equal(c.firewallPorts, [80, 443])
  assert.is(c.swapSize, '1G')
  assert.is(c.protected, false)
  assert.is(exampleConfig().ssh.host, 'vps.example.com')
})

test('production is protected by its name, others by PROTECTED=yes', () => {
  const p = file('.env.production', 'SSH_HOST=h\n')
  assert.is(loadConfig({ env: 'production', envFile: p, environ: {} }).protected, true)
  assert.is(loadConfig({ envFile: file('.env.staging', 'SSH_HOST=h\nPROTECTED=yes\n'), environ: {} }).protected, true)
})

test('each malformed value is one sentence naming the key and the file', () => {
  fails('SSH_HOST=h\nSSH_PORT=abc\n', /^SSH_PORT in .* must be a port number from 1 to 65535 \(got "abc"\)\.$/)
  fails('SSH_HOST=h\nSSH_PORT=70000\n', /SSH_PORT/)
  fails('SSH_HOST=h; rm -rf /\n', /SSH_HOST .* must be a host name/)
  fails('SSH_HOST=h\nDEPLOY_USER=$(id)\n', /DEPLOY_USER .* Unix user name/)
  fails('SSH_HOST=h\nAPP_DIR=/opt/a b\n', /APP_DIR .* absolute path/)
  fails('SSH_HOST=h\nAPP_DIR=relative\n', /APP_DIR/)
  fails('SSH_HOST=h\nSWAP_SIZE=lots\n', /SWAP_SIZE .* size like 512M/)
  fails('SSH_HOST=h\nFIREWALL_PORTS=80,http\n', /FIREWALL_PORTS/)
  fails('SSH_PORT=22\n', /^SSH_HOST is not set in .*: set it/)
  fails('SSH_HOST=h\nS3_PART_SIZE_MB=4\n', /S3_PART_SIZE_MB .* from 5 \(S3's smallest part\)/)
  fails('SSH_HOST=h\nBACKUP_AGE_RECIPIENTS=age1x;rm -rf /\n', /BACKUP_AGE_RECIPIENTS .* age public keys/)
  fails('SSH_HOST=h\nSSH_PROT=22\n', /Unknown setting SSH_PROT .* \(did you mean SSH_PORT\?\)/)
})

test('secrets are validated without echoing them; APP_ENV_ keys pass through to the app', () => {
  fails('SSH_HOST=h\nDB_PASSWORD=short$1\n', /^DB_PASSWORD in .* must be at least 8 printable characters[^"]*\.$/)
  const c = loadConfig({ envFile: file('.env.app', 'SSH_HOST=h\nAPP_ENV_SECRET_KEY=abc def\nAPP_ENV_LOG_LEVEL=info\n'), environ: {} })
  assert.equal(c.stack.appEnv, { SECRET_KEY: 'abc def', LOG_LEVEL: 'info' })
  fails('SSH_HOST=h\nAPP_ENV_lower=x\n', /APP_ENV_lower in .* must be APP_ENV_ followed by an upper-case variable name/)
})

test('the environment overrides the file, and its errors say so', () => {
  const p = file('.env.o', 'SSH_HOST=h\nSSH_PORT=22\n')
  assert.is(loadConfig({ envFile: p, environ: { SSH_PORT: '2222' } }).ssh.port, 2222)
  fails('SSH_HOST=h\n', /SSH_PORT in the environment must be/, { SSH_PORT: 'x' })
})

test('missing file and bad environment names are clear', () => {
  assert.throws(() => loadConfig({ envFile: join(dir, 'nope'), environ: {} }), /does not exist: copy .env.example/)
  assert.throws(() => loadConfig({ env: 'a;b', environ: {} }), /environment name "a;b" is not valid/)
  assert.throws(() => loadConfig({ environ: {} }), /pass --env NAME/)
})

test('.env.example documents exactly the known keys', () => {
  const example = readFileSync(join(import.meta.dirname, '..', '..', '.env.example'), 'utf8')
  const documented = [...example.matchAll(/^#?\s*([A-Z][A-Z0-9_]+)=/gm)].map(m => m[1]).filter(k => !k.startsWith('APP_ENV_'))
  assert.equal([...documented].sort(), Object.keys(KEYS).sort())
})

test('a mistyped option names the nearest one', () => {
  const options = { ...COMMON_OPTIONS, version: { type: 'string' as const, description: '' }, 'skip-backup': { type: 'boolean' as const, description: '' } }
  const err = (argv: string[]) => { try { parseCli(argv, options); return '' } catch (e) { return (e as Error).message } }
  assert.is(err(['--verison', 'v2']), 'Unknown option --verison (did you mean --version?); see --help for the options.')
  assert.is(err(['--skip-backpu']), 'Unknown option --skip-backpu (did you mean --skip-backup?); see --help for the options.')
  assert.is(err(['--dryrun']), 'Unknown option --dryrun (did you mean --dry-run?); see --help for the options.')
  assert.is(err(['--frobnicate']), 'Unknown option --frobnicate; see --help for the options.')
})

test.run()
