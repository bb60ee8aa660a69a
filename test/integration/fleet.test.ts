// Two hosts pulling from a real private registry (TLS + login): provision and deploy
// them as a fleet, update in batches, stop at --max-fail, and the pre/post/failure hooks.
import { chmodSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { appImage, nginxImage, postgresImage } from '../images.ts'
import { startRegistry, type Registry } from '../registry.ts'
import { freshHost, runbook, type Host } from './helpers.ts'

let a: Host, b: Host, reg: Registry, envFile: string, hosts: string
const REGISTRY_PASSWORD = 'registry-Pass-2718-281'
const hookLog = () => join(a.dir, 'hooks.log')

const serving = async (h: Host) => (await (await fetch(`http://127.0.0.1:${h.vps.httpPort}/`)).json()).version
const releases = (h: Host) => JSON.parse(h.sh('cat /opt/app/releases.json')) as { version: string; result: string; image?: string; id?: string; digest?: string }[]
const auditCount = (h: Host) => Number(h.sh('wc -l < /var/log/opsbook/audit.log').trim())

test('setup: a registry holding the stack images, two VPSes that trust it, hooks', async () => {
  reg = await startRegistry(REGISTRY_PASSWORD)
  const [pg, ngx] = [await postgresImage(), await nginxImage()]
  const images = {
    db: reg.push(pg, 'opsbook/postgres:17'), proxy: reg.push(ngx, 'opsbook/nginx:1'),
    v1: reg.push(await appImage('v1'), 'opsbook/app:v1'), v2: reg.push(await appImage('v2'), 'opsbook/app:v2'),
    v3: reg.push(await appImage('v3', true), 'opsbook/app:v3'),
  }
  ;[a, b] = await Promise.all([freshHost('fleet-a', {}, { provisioned: true, network: reg.network }), freshHost('fleet-b', {}, { provisioned: true, network: reg.network })])
  reg.attach(a.vps); reg.attach(b.vps)
  writeFileSync(a.knownHosts, a.vps.knownHosts + b.vps.knownHosts)
  const hook = (name: string, body: string) => {
    const p = join(a.dir, name)
    writeFileSync(p, `#!/bin/sh\n${body}\n`)
    chmodSync(p, 0o755)
    return p
  }
  hosts = `127.0.0.1:${a.vps.port},127.0.0.1:${b.vps.port}`
  envFile = join(a.dir, '.env.fleet')
  writeFileSync(envFile, [
    `SSH_HOSTS=${hosts}`, 'SSH_USER=root', `SSH_KEY=${a.key.privateKey}`, `SSH_KNOWN_HOSTS=${a.knownHosts}`,
    'APP_IMAGE=registry.test:5000/opsbook/app', `DB_IMAGE=${images.db}`, `PROXY_IMAGE=${images.proxy}`,
    'IMAGE_SOURCE=registry', `REGISTRY_USER=${reg.user}`, `REGISTRY_PASSWORD=${REGISTRY_PASSWORD}`,
    'DB_PASSWORD=fleet-db-password-1', 'HEALTH_TIMEOUT=10', 'DRAIN_SECONDS=1',
    `PRE_HOOK=${hook('pre', `echo "pre $OPSBOOK_RUNBOOK $OPSBOOK_VERSION $OPSBOOK_HOSTS" >> ${hookLog()}`)}`,
    `POST_HOOK=${hook('post', `echo "post $OPSBOOK_RUNBOOK $OPSBOOK_VERSION $OPSBOOK_RESULT" >> ${hookLog()}`)}`,
    `FAILURE_HOOK=${hook('failure', `echo "failure $OPSBOOK_RUNBOOK $OPSBOOK_VERSION $OPSBOOK_ERROR" >> ${hookLog()}`)}`,
    '',
  ].join('\n'))
  writeFileSync(hookLog(), '')
  const r = await runbook('provision', ['--config', envFile, '--batch', '100%', '--json'])
  assert.is(r.code, 0, r.out)
  // Both hosts come from the provisioned image (test/provisioned.ts): the fleet run finds them ready.
  assert.equal(r.json.hosts.map((h: any) => h.result), ['ok', 'ok'])
  assert.is(readFileSync(hookLog(), 'utf8'), '', 'provision runs no release hooks')
})

test('bad fleet options are refused before any host is contacted', async () => {
  for (const [args, msg] of [
    [['--hosts', 'web1;reboot'], /--hosts: "web1;reboot" is not a host name/],
    [['--batch', '0'], /--batch "0": give a number of hosts/],
    [['--batch', '150%'], /--batch "150%"/],
    [['--max-fail', '-1'], /--max-fail|starts with "-"/],
  ] as const) {
    const r = await runbook('update', ['--config', envFile, '--version', 'v2', ...args])
    assert.is(r.code, 2, r.out)
    assert.match(r.stderr, msg)
  }
  const r = await runbook('status', ['--config', envFile])
  assert.is(r.code, 2, r.out)
  assert.match(r.stderr, /status works on one host at a time .* SSH_HOST=NAME/)
})

test('deploy v1 to both hosts one at a time, pulling from the registry with a login; again: all ok', async () => {
  const r = await runbook('deploy', ['--config', envFile, '--version', 'v1', '--json'])
  assert.is(r.code, 0, r.out)
  assert.match(r.out, /Batch 1\/2: 127\.0\.0\.1:\d+[\s\S]*Batch 2\/2/)
  assert.match(r.out, /pulled registry\.test:5000\/opsbook\/app:v1/)
  assert.equal(r.json.hosts.map((h: any) => h.result), ['changed', 'changed'])
  assert.is(await serving(a), 'v1')
  assert.is(await serving(b), 'v1')
  for (const h of [a, b]) {
    const live = releases(h).at(-1)!
    assert.is(live.image, 'registry.test:5000/opsbook/app:v1')
    assert.match(live.digest ?? '', /^sha256:[0-9a-f]{64}$/, 'the registry digest is recorded')
    assert.not.ok(h.sh('cat /var/log/opsbook/audit.log').includes(REGISTRY_PASSWORD))
  }
  assert.not.ok(r.out.includes(REGISTRY_PASSWORD), 'the registry password was printed')
  assert.is(releases(a).at(-1)!.digest, releases(b).at(-1)!.digest)
  const again = await runbook('deploy', ['--config', envFile, '--version', 'v1', '--json'])
  assert.is(again.code, 0, again.out)
  assert.equal(again.json.hosts.map((h: any) => h.counts.changed), [0, 0])
  assert.equal(readFileSync(hookLog(), 'utf8').trim().split('\n'), [
    `pre deploy v1 ${hosts}`, 'post deploy v1 ok', `pre deploy v1 ${hosts}`, 'post deploy v1 ok',
  ])
})

test('a pre hook that fails stops the run before any host changes', async () => {
  const before = [auditCount(a), auditCount(b)]
  const r = await runbook('update', ['--config', envFile, '--version', 'v2', '--yes'], { PRE_HOOK: '/bin/false' })
  assert.is(r.code, 3, r.out)
  assert.match(r.stderr, /PRE_HOOK \/bin\/false exited 1: nothing was changed\./)
  assert.equal([auditCount(a), auditCount(b)], before)
  assert.is(await serving(a), 'v1')
})

test('a broken v3 fails on the first host; --max-fail 0 leaves the second untouched; the failure hook runs', async () => {
  writeFileSync(hookLog(), '')
  const before = auditCount(b)
  const r = await runbook('update', ['--config', envFile, '--version', 'v3', '--json'])
  assert.is(r.code, 1, r.out)
  assert.equal(r.json.hosts.map((h: any) => h.result), ['failed', 'not run'])
  assert.match(r.out, /FLEET 2 hosts {2}ok=0 {2}failed=1 {2}not_run=1/)
  assert.is(await serving(a), 'v1')
  assert.is(await serving(b), 'v1')
  assert.is(auditCount(b), before, 'the second host was not touched')
  assert.match(readFileSync(hookLog(), 'utf8'), /^pre update v3 .*\nfailure update v3 127\.0\.0\.1:\d+: v3 did not answer \/health/)
})

test('update to v2 in batches of 50% with a pause: one host after the other, both serve v2', async () => {
  const r = await runbook('update', ['--config', envFile, '--version', 'v2', '--batch', '50%', '--pause', '1', '--max-fail', '1', '--json'])
  assert.is(r.code, 0, r.out)
  assert.match(r.out, /Batch 1\/2[\s\S]*Pausing 1 s before the next batch\.[\s\S]*Batch 2\/2/)
  assert.is(await serving(a), 'v2')
  assert.is(await serving(b), 'v2')
  assert.match(releases(b).at(-1)!.digest ?? '', /^sha256:/)
})

test('teardown', () => { a.vps.destroy(); b.vps.destroy(); reg.destroy() })

test.run()
