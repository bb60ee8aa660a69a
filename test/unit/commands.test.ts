// The exact shell text each step sends, asserted without a host (as Kamal tests its commands).
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { auditCommands, auditLine, redactArgs } from '../../lib/audit.ts'
import { fileCommands, wantedState } from '../../lib/host/files.ts'
import { spawnSync } from 'node:child_process'
import { hostname } from 'node:os'
import { deadHere, describeHolder, lockCommands, parseHolder } from '../../lib/lock.ts'
import { withLogRotation } from '../../lib/host/provision/logs.ts'
import { appDirCommands } from '../../lib/host/provision/appdir.ts'
import { dockerPlan, parseDockerState } from '../../lib/host/provision/docker.ts'
import { firewallCommands, firewallPlan, parseFirewallState } from '../../lib/host/provision/firewall.ts'
import { packageCommands, parseMissing } from '../../lib/host/provision/packages.ts'
import { swapCommands, sizeMiB } from '../../lib/host/provision/swap.ts'
import { userCommands } from '../../lib/host/provision/user.ts'
import { wrapCommand } from '../../lib/host/target.ts'

test('wrapCommand: sh -c, a remote timeout, sudo -n for non-root', () => {
  assert.is(wrapCommand("echo 'hi'", { sudo: false, timeout: 30 }), `timeout --kill-after=10 30 sh -c 'echo '\\''hi'\\'''`)
  assert.is(wrapCommand('id', { sudo: true, timeout: 5 }), 'sudo -n timeout --kill-after=10 5 sh -c id')
})

test('lock commands', () => {
  assert.is(lockCommands.acquire(),
    'mkdir -p -m 755 /var/lib/opsbook && if mkdir -m 700 /var/lib/opsbook/lock 2>/dev/null; then cat > /var/lib/opsbook/lock/info; else cat > /dev/null; echo HELD; ' +
    'echo $(( $(date +%s) - $(stat -c %Y /var/lib/opsbook/lock/info 2>/dev/null || stat -c %Y /var/lib/opsbook/lock) )); cat /var/lib/opsbook/lock/info 2>/dev/null; fi')
  assert.ok(lockCommands.acquire(true).includes('if [ -d /var/lib/opsbook/lock ]; then echo BROKE; echo $(( $(date +%s) - '))
  assert.ok(lockCommands.acquire(true).includes('echo; echo END; rm -rf /var/lib/opsbook/lock; fi; if mkdir'))
  assert.is(lockCommands.awaitOwn('ab12'), 'end=$(($(date +%s) + 3)); until grep -qsF ab12 /var/lib/opsbook/lock/info; do [ "$(date +%s)" -lt "$end" ] || exit 75; sleep 0.005; done')
  assert.is(lockCommands.release('ab12'), 'if grep -qF ab12 /var/lib/opsbook/lock/info 2>/dev/null; then rm -rf /var/lib/opsbook/lock; fi')
  assert.is(lockCommands.heartbeat('ab12'), 'grep -qF ab12 /var/lib/opsbook/lock/info && touch /var/lib/opsbook/lock/info')
  // Taking over one holder breaks the lock only while that holder still has it.
  assert.ok(lockCommands.acquire('ab12').includes('if grep -qsF ab12 /var/lib/opsbook/lock/info; then echo BROKE;'))
})

test('a holder is dead here only if it ran on this machine and its process is gone', () => {
  const gone = spawnSync('true').pid!
  const h = (from: string, pid: number) => ({ info: { id: 'x', runbook: 'backup', env: 'production', operator: 'ops', from, pid, since: '' }, ageS: 5, stale: false, staleAfterS: 300 })
  assert.ok(deadHere(h(hostname(), gone)))
  assert.not.ok(deadHere(h(hostname(), process.pid)))
  assert.not.ok(deadHere(h('another-machine', gone)))
  assert.match(describeHolder({ ...h('laptop', 1), ageS: 400, stale: true }), /no heartbeat for 400 s.*--break-lock \(unattended runs take it over with --take-stale-lock\)/)
})

test('lock holder parsing and messages', () => {
  assert.is(parseHolder(''), undefined)
  const info = { id: 'x', runbook: 'provision', env: 'production', operator: 'ana', from: 'laptop', pid: 42, since: '2026-11-22T10:00:00Z', message: 'hotfix' }
  const live = parseHolder(`HELD\n12\n${JSON.stringify(info)}\n`)!
  assert.is(live.stale, false)
  assert.match(describeHolder(live), /held by ana@laptop \(provision on production, pid 42, since 2026-11-22T10:00:00Z, "hotfix"\); wait for it/)
  const dead = parseHolder(`HELD\n600\n${JSON.stringify(info)}\n`)!
  assert.match(describeHolder(dead), /no heartbeat for 600 s, so that run probably died; if you are sure, re-run with --break-lock/)
  assert.match(describeHolder(parseHolder('HELD\n3\n')!), /held by an unknown holder/)
  const broke = `BROKE\n900\n${JSON.stringify(info)}\n\nEND\n`
  assert.is(parseHolder(broke, 'BROKE')!.info!.operator, 'ana')
  assert.is(parseHolder(broke), undefined, 'a broken lock is not a held one')
})

test('audit: append from stdin, masked secret flags, one JSON line', () => {
  assert.is(auditCommands.append(), 'mkdir -p -m 750 /var/log/opsbook && cat >> /var/log/opsbook/audit.log && chmod 640 /var/log/opsbook/audit.log')
  assert.equal(redactArgs(['--env', 'prod', '--password', 'hunter2', '--token=abc', '--yes'], ['--password', '--token']),
    ['--env', 'prod', '--password', '***', '--token=***', '--yes'])
  const line = auditLine({ runbook: 'provision', env: 'prod', args: ['--password', 'hunter2'], result: 'ok' }, ['--password'])
  assert.ok(line.endsWith('}\n') && !line.slice(0, -1).includes('\n'))
  assert.not.ok(line.includes('hunter2'))
  assert.is(JSON.parse(line).result, 'ok')
})

test('managed files: temp file, validate in place, restore on failure', () => {
  const cmd = fileCommands.install({ path: '/etc/ssh/sshd_config.d/00-x.conf', mode: '0644', owner: 'root:root', validate: 'sshd -t' })
  assert.is(cmd, [
    `set -e; tmp=$(mktemp /etc/ssh/sshd_config.d/.opsbook-tmp.XXXXXX); trap 'rm -f "$tmp"' EXIT`,
    'cat > "$tmp"; chmod 0644 "$tmp"; chown root:root "$tmp"',
    'if [ -e /etc/ssh/sshd_config.d/00-x.conf ]; then cp -p /etc/ssh/sshd_config.d/00-x.conf /etc/ssh/sshd_config.d/00-x.conf.opsbook-prev; fi',
    'mv -f "$tmp" /etc/ssh/sshd_config.d/00-x.conf',
    `if ! ( sshd -t ) >&2; then if [ -e /etc/ssh/sshd_config.d/00-x.conf.opsbook-prev ]; then mv -f /etc/ssh/sshd_config.d/00-x.conf.opsbook-prev /etc/ssh/sshd_config.d/00-x.conf; else rm -f /etc/ssh/sshd_config.d/00-x.conf; fi; echo 'sshd -t rejected the new file; the previous one was put back' >&2; exit 1; fi`,
    'rm -f /etc/ssh/sshd_config.d/00-x.conf.opsbook-prev',
  ].join('\n'))
  assert.is(fileCommands.state('/etc/a b'), `if [ -f '/etc/a b' ]; then echo "$(sha256sum < '/etc/a b' | cut -c1-64) $(stat -c '%U:%G %a' '/etc/a b')"; else echo absent; fi`)
  assert.is(wantedState('x', { path: '/p', mode: '0644', owner: 'root:root' }), '2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881 root:root 644')
})

test('packages', () => {
  assert.is(packageCommands.status(['ufw', 'curl']), `dpkg-query -W -f='\${Package} \${Status}\\n' ufw curl 2>/dev/null || true`)
  assert.equal(parseMissing(['ufw', 'curl', 'sudo', 'gnupg'], 'ufw install ok installed\ncurl deinstall ok config-files\nsudo:amd64 install ok installed\n'), ['curl', 'gnupg'])
  assert.is(packageCommands.install(['ufw']),
    'DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold update && ' +
    'DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold install --no-install-recommends ufw')
})

test('docker plan per distribution', () => {
  const base = { engine: '', compose: '', cePackage: false, active: 'inactive', enabled: 'disabled', codename: '' }
  assert.equal(dockerPlan({ ...base, os: 'debian', version: 13 }), { packages: ['docker.io', 'docker-cli', 'docker-compose'], dockerRepo: false, enable: true })
  assert.equal(dockerPlan({ ...base, os: 'ubuntu', version: 24 }), { packages: ['docker.io', 'docker-compose-v2'], dockerRepo: false, enable: true })
  assert.equal(dockerPlan({ ...base, os: 'ubuntu', version: 22 }).packages, ['docker.io', 'docker-compose-v2'])
  assert.equal(dockerPlan({ ...base, os: 'debian', version: 12 }), { packages: ['docker-ce', 'docker-ce-cli', 'containerd.io', 'docker-buildx-plugin', 'docker-compose-plugin'], dockerRepo: true, enable: true })
  // An engine already there is kept; only Compose is added, from where the engine came.
  assert.equal(dockerPlan({ ...base, os: 'debian', version: 12, engine: '20.10.24', active: 'active', enabled: 'enabled' }), { packages: ['docker-compose'], dockerRepo: false, enable: false })
  assert.equal(dockerPlan({ ...base, os: 'debian', version: 12, engine: '27.0', cePackage: true, active: 'active', enabled: 'enabled' }), { packages: ['docker-compose-plugin'], dockerRepo: true, enable: false })
  assert.equal(dockerPlan({ ...base, os: 'debian', version: 13, engine: '26.1', compose: '2.26.1', active: 'active', enabled: 'enabled' }), { packages: [], dockerRepo: false, enable: false })
  const s = parseDockerState('os=debian\ncodename=trixie\nversion=13\nengine=26.1.5\ncompose=2.26.1\nce=\nactive=active\nenabled=enabled\n')
  assert.equal(s, { os: 'debian', codename: 'trixie', version: 13, engine: '26.1.5', compose: '2.26.1', cePackage: false, active: 'active', enabled: 'enabled' })
})

test('firewall: parse ufw status, SSH port first, enable last', () => {
  const inactive = parseFirewallState('sshport=22\nsshport=2222\nactive=no\n')
  assert.equal(inactive, { installed: true, active: false, allowed: [], sshPorts: [22, 2222] })
  assert.equal(firewallPlan(inactive, [80, 443]), { allow: [22, 2222, 80, 443], enable: true, installed: true })
  const active = parseFirewallState(['sshport=22', 'active=yes', 'allowed=22', 'allowed=80', 'allowed=22'].join('\n'))
  assert.equal(active.allowed, [22, 80])
  assert.equal(firewallPlan(active, [80, 443]), { allow: [443], enable: false, installed: true })
  assert.equal(parseFirewallState('sshport=22\nufw=missing\n').installed, false)
  assert.is(firewallCommands.allow([22, 80]), 'ufw allow 22/tcp && ufw allow 80/tcp')
})

test('deploy user, app dir and swap commands', () => {
  const key = 'ssh-ed25519 AAAAC3Nza'
  assert.ok(userCommands.ensure('deploy', key).includes(`grep -qF 'ssh-ed25519 AAAAC3Nza' "$home/.ssh/authorized_keys" || printf '%s\\n' 'ssh-ed25519 AAAAC3Nza' >> "$home/.ssh/authorized_keys"`))
  assert.ok(userCommands.ensure('deploy', key).includes('useradd --create-home --shell /bin/bash --user-group deploy'))
  assert.is(appDirCommands.ensure('/opt/app', 'deploy'), 'install -d -o deploy -g deploy -m 750 /opt/app && chown deploy:deploy /opt/app && chmod 750 /opt/app')
  assert.ok(swapCommands.create('1G').includes('fallocate -l 1G /swapfile || dd if=/dev/zero of=/swapfile bs=1M count=1024'))
  assert.is(sizeMiB('512M'), 512)
})

test('log rotation is merged into daemon.json, and a log setting already there is kept', () => {
  assert.equal(JSON.parse(withLogRotation('{"registry-mirrors": ["https://m.example"]}')!), { 'registry-mirrors': ['https://m.example'], 'log-driver': 'local', 'log-opts': { 'max-size': '20m', 'max-file': '5' } })
  assert.equal(JSON.parse(withLogRotation('')!)['log-driver'], 'local')
  assert.is(withLogRotation('{"log-driver": "journald"}'), undefined)
  assert.throws(() => withLogRotation('{oops'), /not valid JSON/)
})

test.run()
