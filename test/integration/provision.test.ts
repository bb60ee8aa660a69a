// A fresh Debian 13 VPS: dry run changes nothing, provision converges, a second run
// changes nothing, and the host ends up as promised (deploy user, docker, ufw, sshd).
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { fingerprint, freshHost, runbook, sshAs, stepStates, type Host } from './helpers.ts'

let h: Host
const STEPS = 9

test('setup: a fresh VPS', async () => {
  h = await freshHost('provision')
})

test('--dry-run on a fresh VPS lists what would change and changes nothing', async () => {
  const before = fingerprint(h)
  const r = await runbook('provision', ['--config', h.envFile, '--dry-run', '--json'])
  assert.is(r.code, 0, r.out)
  assert.is(fingerprint(h), before)
  assert.is(h.sh('ls /var/lib/opsbook /var/log/opsbook 2>&1 || true').includes('No such file'), true, 'no lock dir or audit log written')
  assert.is(r.json.result, 'dry-run')
  const would = r.json.steps.filter((s: any) => s.state === 'would change').map((s: any) => s.title)
  for (const t of ['Base packages', 'Docker Engine and Compose v2', 'Deploy user deploy', 'Firewall (ufw: SSH first, then 80, 443)', 'App directory /opt/app']) {
    assert.ok(would.includes(t), `${t} would change: ${would}`)
  }
  assert.match(r.stdout, /Base packages \(install ufw, unattended-upgrades\) \.\.\. would change/)
  assert.match(r.stdout, /RECAP root@127\.0\.0\.1:\d+ {2}ok=\d {2}would_change=\d/)
})

test('provision converges: every step changed, ok or skipped with a reason', async () => {
  const r = await runbook('provision', ['--config', h.envFile, '--json', '-m', 'first provision'])
  assert.is(r.code, 0, r.out)
  assert.is(r.json.result, 'changed')
  const states = r.json.steps.map((s: any) => s.state)
  assert.is(states.length, STEPS)
  assert.ok(states.every((s: string) => ['changed', 'ok', 'skipped'].includes(s)), states.join(','))
  assert.ok(r.json.counts.changed >= 6, JSON.stringify(r.json.counts))
  // The testbed is a container: it shares the machine's kernel swap, so the swap step must say so.
  assert.equal(r.json.steps.find((s: any) => s.title.startsWith('Swap')), { title: 'Swap file (1G)', state: 'skipped', detail: 'a docker container uses its host\'s swap', ms: r.json.steps.find((s: any) => s.title.startsWith('Swap')).ms })
  assert.equal(stepStates(r.stdout), states, 'the checklist shows the same states as the JSON')
  assert.not.ok(r.out.includes('\x1b['), 'no colour or cursor codes without a TTY')
  assert.match(r.stdout, /^✔ \[\d\d:\d\d:\d\d\] Base packages/m, 'plain output is timestamped')
})

test('the deploy user logs in with the operator key and runs docker compose', () => {
  const r = sshAs(h, 'deploy', 'id -nG; docker compose version --short; docker ps -q | wc -l')
  assert.is(r.code, 0, r.out)
  assert.match(r.out, /\bdocker\b/)
  assert.match(r.out, /^2\.\d+/m)
  assert.is(h.sh("stat -c '%U:%G %a' /opt/app").trim(), 'deploy:deploy 750')
  // Container logs rotate: Docker was restarted with the local driver (no container ran yet).
  assert.is(h.sh("docker info -f '{{.LoggingDriver}}'").trim(), 'local')
})

test('sshd refuses passwords; ufw is active with SSH allowed', () => {
  assert.match(h.sh('sshd -T'), /^passwordauthentication no$/m)
  assert.match(h.sh('sshd -T'), /^kbdinteractiveauthentication no$/m)
  const pw = sshAs(h, 'deploy', 'true', ['-o', 'PreferredAuthentications=password,keyboard-interactive', '-o', 'PubkeyAuthentication=no'])
  assert.is(pw.code, 255)
  assert.match(pw.out, /Permission denied \(publickey\)/)
  const ufw = h.sh('ufw status')
  assert.match(ufw, /^Status: active$/m)
  assert.match(ufw, /^22\/tcp\s+ALLOW\s+Anywhere/m)
  assert.match(ufw, /^443\/tcp\s+ALLOW\s+Anywhere/m)
})

test('a second run changes nothing: every step ok, fingerprint identical', async () => {
  const before = fingerprint(h)
  const r = await runbook('provision', ['--config', h.envFile, '--json'])
  assert.is(r.code, 0, r.out)
  assert.is(r.json.result, 'ok')
  assert.is(r.json.counts.changed, 0)
  assert.is(r.json.counts.ok, STEPS - 1)
  assert.is(fingerprint(h), before)
})

test('the audit log has one line per run, the lock is gone', () => {
  const lines = h.sh('cat /var/log/opsbook/audit.log').trim().split('\n').map(l => JSON.parse(l))
  assert.equal(lines.map(l => l.result), ['changed', 'ok'])
  assert.is(lines[0].runbook, 'provision')
  assert.ok(lines[0].args.includes('first provision'))
  assert.is(h.sh('stat -c %a /var/log/opsbook/audit.log').trim(), '640')
  assert.is(h.sh('test -e /var/lib/opsbook/lock && echo held || echo free').trim(), 'free')
})

test('teardown', () => { h.vps.destroy() })

test.run()
