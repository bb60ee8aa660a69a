import { spawnSync } from 'node:child_process'
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { checkHostKey, describeKey, hostFieldMatches, hostId, knownKeyTypes } from '../../lib/host/knownhosts.ts'

const dir = join(import.meta.dirname, '..', '.tmp', 'knownhosts')
rmSync(dir, { recursive: true, force: true })
mkdirSync(dir, { recursive: true })
spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'a')])
spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'b')])
const [type, A] = readFileSync(join(dir, 'a.pub'), 'utf8').split(' ')
const B = readFileSync(join(dir, 'b.pub'), 'utf8').split(' ')[1]

test('host ids follow OpenSSH: bare on port 22, [host]:port otherwise', () => {
  assert.is(hostId('vps', 22), 'vps')
  assert.is(hostId('127.0.0.1', 2201), '[127.0.0.1]:2201')
})

test('plain fields: lists, wildcards, negation, ports', () => {
  assert.ok(hostFieldMatches('vps,10.0.0.5', 'vps', 22))
  assert.ok(hostFieldMatches('10.0.0.5,vps', '10.0.0.5', 22))
  assert.not.ok(hostFieldMatches('vps', 'vps', 2222))
  assert.ok(hostFieldMatches('[vps]:2222', 'vps', 2222))
  assert.ok(hostFieldMatches('*.example.com', 'a.example.com', 22))
  assert.ok(hostFieldMatches('web?', 'web1', 22))
  assert.not.ok(hostFieldMatches('*.example.com,!bad.example.com', 'bad.example.com', 22))
  assert.not.ok(hostFieldMatches('a.example.co', 'a.example.com', 22))
})

test('hashed entries made by ssh-keygen -H match, for port 22 and other ports', () => {
  const f = join(dir, 'hashed')
  writeFileSync(f, `vps ${type} ${A}\n[127.0.0.1]:2201 ${type} ${A}\n`)
  const r = spawnSync('ssh-keygen', ['-H', '-f', f], { encoding: 'utf8' })
  assert.is(r.status, 0, r.stderr)
  const text = readFileSync(f, 'utf8')
  assert.ok(text.startsWith('|1|'), 'file is hashed')
  assert.is(checkHostKey(text, 'vps', 22, type, A), 'known')
  assert.is(checkHostKey(text, '127.0.0.1', 2201, type, A), 'known')
  assert.is(checkHostKey(text, '127.0.0.1', 2202, type, A), 'unknown')
  assert.is(checkHostKey(text, 'vps', 22, type, B), 'changed')
})

test('unknown, known, changed and revoked', () => {
  const text = `# comment\n\n[h]:2201 ${type} ${A}\n@cert-authority *.example.com ${type} ${B}\n`
  assert.is(checkHostKey(text, 'h', 2201, type, A), 'known')
  assert.is(checkHostKey(text, 'h', 2201, type, B), 'changed')
  assert.is(checkHostKey(text, 'other', 22, type, A), 'unknown')
  assert.is(checkHostKey(text, 'x.example.com', 22, type, B), 'unknown', 'CA lines are not host keys')
  assert.is(checkHostKey(`${text}@revoked * ${type} ${A}\n`, 'h', 2201, type, A), 'revoked')
  assert.equal(knownKeyTypes(text, 'h', 2201), [type])
})

test('fingerprints equal ssh-keygen -l', () => {
  const expected = spawnSync('ssh-keygen', ['-l', '-E', 'sha256', '-f', join(dir, 'a.pub')], { encoding: 'utf8' }).stdout.split(' ')[1]
  const k = describeKey(Buffer.from(A, 'base64'))
  assert.is(k.type, type)
  assert.is(k.key, A)
  assert.is(k.fingerprint, expected)
})

test.run()
