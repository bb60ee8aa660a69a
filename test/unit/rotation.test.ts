// Secret values, env-file edits, the alternating database logins and the rotation
// commands' text, without a host.
import { createHash, createHmac, pbkdf2Sync } from 'node:crypto'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { exampleConfig } from '../../lib/config.ts'
import { UsageError } from '../../lib/errors.ts'
import { rolesToApply } from '../../lib/data/restore.ts'
import { DB_KEY, nextSecrets, rotatableKeys, rotationCommands, rotationSql, type Change } from '../../lib/stack/rotation.ts'
import {
  checkSecretValue, cloneUser, databaseUrl, envKeys, envValue, generateSecret, scramVerifier, stagedHeader, stagedWhat, urlLogin, withHeader, withKey,
} from '../../lib/stack/secrets.ts'
import { renderAppEnv, stackOf } from '../../lib/stack/stack.ts'

const config = exampleConfig()
config.stack.dbPassword = 'seed-password'
const st = stackOf(config)

test('generated values: requested length and alphabet, different every time', () => {
  const a = generateSecret(48, 'alnum'), b = generateSecret(48, 'alnum')
  assert.match(a, /^[A-Za-z0-9]{48}$/)
  assert.is.not(a, b)
  assert.match(generateSecret(64, 'hex'), /^[0-9a-f]{64}$/)
  assert.match(generateSecret(20, 'base64url'), /^[A-Za-z0-9_-]{20}$/)
  // Every character of the alphabet turns up: no truncated range.
  assert.is(new Set(generateSecret(4000, 'hex')).size, 16)
})

test('values from stdin: one line of printable ASCII that env files read literally; errors never repeat the value', () => {
  assert.is(checkSecretValue('Good-Value_123!'), 'Good-Value_123!')
  for (const bad of ['x1y2z', 'two\nlines', 'with space here', 'dollar$sign123', "quote'inside1", 'hash#inside123', 'back`tick12345', 'ünïcödé-value']) {
    try {
      checkSecretValue(bad)
      assert.unreachable(bad)
    } catch (e) {
      assert.instance(e, UsageError)
      assert.not.ok((e as Error).message.includes(bad), 'the message repeats the value')
    }
  }
})

test('env-file edits change one line and keep the rest', () => {
  const text = '# comment\nA=1\nB=2\n'
  assert.equal(envKeys(text), ['A', 'B'])
  assert.is(envValue(text, 'B'), '2')
  assert.is(envValue(text, 'C'), undefined)
  assert.is(withKey(text, 'A', 'x=y'), '# comment\nA=x=y\nB=2\n')
  assert.is(withKey(text, 'C', '3'), '# comment\nA=1\nB=2\nC=3\n')
  assert.is(withKey(text, 'A', undefined), '# comment\nB=2\n')
  assert.is(withKey('', 'A', '1'), 'A=1\n')
  assert.is(withKey('A=1\n', 'A', undefined), '')
  const staged = withHeader('A=1\n', stagedHeader('rotate A', new Date('2026-11-23T00:00:00Z')))
  assert.is(staged, '# opsbook rotate-secret: rotate A staged at 2026-11-23T00:00:00.000Z\nA=1\n')
  assert.is(stagedWhat(staged), 'rotate A')
  assert.is(withHeader(staged, stagedHeader('rotate B')).match(/# opsbook/g)!.length, 1, 'one header only')
})

test('DATABASE_URL: the password is URL-encoded and read back whole', () => {
  const url = databaseUrl('app_clone', 'p@ss:w/rd%', 'app')
  assert.is(url, 'postgres://app_clone:p%40ss%3Aw%2Frd%25@db:5432/app')
  assert.equal(urlLogin(url), { user: 'app_clone', password: 'p@ss:w/rd%' })
  assert.is(urlLogin('mysql://x'), undefined)
  assert.match(renderAppEnv(st), /^DATABASE_URL=postgres:\/\/app:seed-password@db:5432\/app\n/)
})

test('SCRAM verifier: the form PostgreSQL stores, computed as RFC 5802 says', () => {
  const salt = Buffer.from('0123456789abcdef')
  const v = scramVerifier('pencil', salt, 4096)
  const [, iter, saltB64, stored, server] = /^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$/.exec(v)!
  assert.is(iter, '4096')
  assert.is(Buffer.from(saltB64, 'base64').toString(), '0123456789abcdef')
  const salted = pbkdf2Sync('pencil', salt, 4096, 32, 'sha256')
  assert.is(stored, createHash('sha256').update(createHmac('sha256', salted).update('Client Key').digest()).digest('base64'))
  assert.is(server, createHmac('sha256', salted).update('Server Key').digest('base64'))
  assert.is.not(scramVerifier('pencil'), scramVerifier('pencil'), 'a fresh salt each time')
})

test('the database password alternates between the owner and its clone; app keys keep a previous value on request', () => {
  const rotate = (key: string, value: string, keepPrevious = false): Change => ({ kind: 'rotate', key, value: () => value, keepPrevious })
  const app = renderAppEnv(st) + 'SECRET_KEY=old-key\n'
  const first = nextSecrets(st, rotate(DB_KEY, 'pw1'), { app, secrets: '' })
  assert.is(first, 'DATABASE_URL=postgres://app_clone:pw1@db:5432/app\n')
  const second = nextSecrets(st, rotate(DB_KEY, 'pw2'), { app, secrets: first })
  assert.is(second, 'DATABASE_URL=postgres://app:pw2@db:5432/app\n')
  assert.is(cloneUser('app'), 'app_clone')

  const key = nextSecrets(st, rotate('SECRET_KEY', 'new-key', true), { app, secrets: second })
  assert.is(key, `${second}SECRET_KEY=new-key\nSECRET_KEY_PREVIOUS=old-key\n`)
  assert.is(nextSecrets(st, rotate('SECRET_KEY', 'newer', true), { app, secrets: key }), `${second}SECRET_KEY=newer\nSECRET_KEY_PREVIOUS=new-key\n`)
  assert.is(nextSecrets(st, { kind: 'drop-previous', key: 'SECRET_KEY' }, { app, secrets: key }), `${second}SECRET_KEY=new-key\n`)
  assert.is(nextSecrets(st, { kind: 'revert' }, { app, secrets: key }, second), second)
  assert.is(nextSecrets(st, rotate('SECRET_KEY', 'plain'), { app, secrets: key }), `${second}SECRET_KEY=plain\n`, 'no stale previous key survives a rotation without --keep-previous')
  const seeded = app + 'SECRET_KEY_PREVIOUS=from-settings\n'
  assert.is(nextSecrets(st, { kind: 'drop-previous', key: 'SECRET_KEY' }, { app: seeded, secrets: '' }), 'SECRET_KEY_PREVIOUS=\n', 'a key app.env sets is overridden empty')
  assert.equal(rotatableKeys(['DATABASE_URL', 'SECRET_KEY', 'SECRET_KEY_PREVIOUS', 'LOG_LEVEL']), ['DB_PASSWORD', 'LOG_LEVEL', 'SECRET_KEY'])
})

test('rotation commands: values only on stdin, files 0600 in APP_DIR, the old login loses its password', () => {
  assert.match(rotationCommands.tryLogin(st, 'app_clone'), /IFS= read -r PGPASSWORD; export PGPASSWORD; exec psql .* -h 127\.0\.0\.1 -U "\$0" -d "\$1" .* app_clone app >\/dev\/null 2>&1$/)
  assert.match(rotationCommands.switch(st), /ln -f \/opt\/app\/secrets\.env \/opt\/app\/secrets\.env\.undo\n {2}mv -f \/opt\/app\/secrets\.env\.next \/opt\/app\/secrets\.env/)
  assert.is(rotationCommands.undo(st), 'if [ -f /opt/app/secrets.env.undo ]; then mv -f /opt/app/secrets.env.undo /opt/app/secrets.env; fi')
  assert.is(rotationCommands.settle(st), 'if [ -f /opt/app/secrets.env.undo ]; then mv -f /opt/app/secrets.env.undo /opt/app/secrets.env.previous; fi')
  const v = scramVerifier('the-password')
  assert.is(rotationSql.password('app_clone', v), `ALTER ROLE "app_clone" PASSWORD '${v}';`)
  assert.match(rotationSql.clone('app', 'app_clone'), /GRANT "app" TO "app_clone";\nALTER ROLE "app_clone" LOGIN;\nALTER ROLE "app_clone" SET role = 'app';/)
  assert.match(rotationSql.disable(['app']), /ALTER ROLE "app" PASSWORD NULL;\nSELECT count\(pg_terminate_backend\(pid\)\) FROM pg_stat_activity WHERE usename = 'app' AND client_addr IS NOT NULL;/)
})

test('restore leaves both of the stack\'s logins alone', () => {
  const sql = ['CREATE ROLE app_clone;', 'ALTER ROLE app_clone WITH LOGIN PASSWORD \'x\';', 'ALTER ROLE app_clone SET role TO \'app\';',
    'GRANT app TO app_clone GRANTED BY app;', 'CREATE ROLE reporting;'].join('\n')
  assert.is(rolesToApply(sql, 'app'), 'CREATE ROLE reporting;')
})

test.run()
