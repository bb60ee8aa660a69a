import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { homedir } from 'node:os'
import { resolveSettings } from '../../lib/host/ssh.ts'

const CONFIG = `
Host prod
  HostName 203.0.113.7
  User admin
  Port 2222
  IdentityFile ~/.ssh/prod_ed25519

Host *
  User fallback
`

test('~/.ssh/config aliases supply HostName, User, Port and IdentityFile', () => {
  const r = resolveSettings({ host: 'prod', knownHosts: '', acceptNewHost: false }, CONFIG)
  assert.equal(r, { host: '203.0.113.7', port: 2222, user: 'admin', key: `${homedir()}/.ssh/prod_ed25519` })
})

test('explicit settings win over ssh config; unknown hosts get defaults', () => {
  const r = resolveSettings({ host: 'prod', port: 22, user: 'root', key: '/k', knownHosts: '', acceptNewHost: false }, CONFIG)
  assert.equal(r, { host: '203.0.113.7', port: 22, user: 'root', key: '/k' })
  assert.equal(resolveSettings({ host: 'other', knownHosts: '', acceptNewHost: false }, CONFIG), { host: 'other', port: 22, user: 'fallback', key: undefined })
  assert.equal(resolveSettings({ host: 'other', knownHosts: '', acceptNewHost: false }, ''), { host: 'other', port: 22, user: 'root', key: undefined })
})

test.run()
