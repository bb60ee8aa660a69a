// One runbook at a time per host, and Ctrl-C leaves the host usable: the running
// step finishes, the lock is released, and a re-run converges.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { freshHost, runbook, sshAs, start, waitFor, type Host } from './helpers.ts'

let h: Host

test('setup: a fresh VPS', async () => {
  h = await freshHost('lock')
})

test('a second provision while one runs is refused with the holder, exit 3', async () => {
  const first = start('provision', ['--config', h.envFile, '-m', 'first'])
  await waitFor('the first run to start installing', () => /install ufw/.test(first.output()))
  const second = await runbook('provision', ['--config', h.envFile, '--json'])
  assert.is(second.code, 3, second.out)
  assert.match(second.stderr, new RegExp(`held by \\S+@\\S+ \\(provision on test, pid ${first.child.pid}, since [0-9T:.-]+Z, "first"\\); wait for it to finish`))
  assert.is(second.json.result, 'refused')

  // SIGINT: the running step completes, no further step starts, the lock goes.
  first.child.kill('SIGINT')
  const r = await first.done
  assert.is(r.code, 130, r.out)
  assert.match(r.stderr, /Interrupted: finishing the current step/)
  assert.match(r.stdout, /Base packages \(installed ufw, unattended-upgrades\) \.\.\. changed/)
  assert.not.match(r.stdout, /Docker Engine and Compose v2.* \.\.\. changed/)
  assert.is(h.sh('test -e /var/lib/opsbook/lock && echo held || echo free').trim(), 'free')
  const audit = h.sh('cat /var/log/opsbook/audit.log').trim().split('\n').map(l => JSON.parse(l))
  assert.equal(audit.map(a => a.result), ['refused', 'interrupted'])
})

test('after the interrupt a re-run converges, and the next one changes nothing', async () => {
  const r = await runbook('provision', ['--config', h.envFile, '--json'])
  assert.is(r.code, 0, r.out)
  assert.is(r.json.steps[0].state, 'ok', 'the interrupted step had finished')
  assert.ok(r.json.counts.changed >= 5)
  const again = await runbook('provision', ['--config', h.envFile, '--json'])
  assert.is(again.json.counts.changed, 0)
})

test('a lock without heartbeat is reported stale; --break-lock takes it over', async () => {
  h.sh(`mkdir -p /var/lib/opsbook/lock && echo '{"id":"dead","runbook":"provision","env":"default","operator":"ghost","from":"old-laptop","pid":1,"since":"2026-01-01T00:00:00Z"}' > /var/lib/opsbook/lock/info && touch -d '10 minutes ago' /var/lib/opsbook/lock/info`)
  const refused = await runbook('provision', ['--config', h.envFile])
  assert.is(refused.code, 3)
  assert.match(refused.stderr, /held by ghost@old-laptop .* no heartbeat for \d+ s, so that run probably died; if you are sure, re-run with --break-lock \(unattended runs take it over with --take-stale-lock\)\./)
  const r = await runbook('provision', ['--config', h.envFile, '--break-lock'])
  assert.is(r.code, 0, r.out)
  assert.match(r.stderr, /broke the host lock of ghost@old-laptop \(provision\)/)
  assert.is(h.sh('test -e /var/lib/opsbook/lock && echo held || echo free').trim(), 'free')
})

const lastAudit = () => JSON.parse(h.sh('tail -n 1 /var/log/opsbook/audit.log'))
// The docker CLI on the host answers after 8 s: a run holds the lock that long in its checks.
const slowDocker = () => h.sh('[ -e /usr/bin/docker.real ] || mv /usr/bin/docker /usr/bin/docker.real; printf "#!/bin/sh\\nsleep 8\\nexec /usr/bin/docker.real \\"\\$@\\"\\n" > /usr/bin/docker; chmod 755 /usr/bin/docker')
const fastDocker = () => h.sh('if [ -e /usr/bin/docker.real ]; then mv -f /usr/bin/docker.real /usr/bin/docker; fi')
const lockHeld = () => h.sh('test -e /var/lib/opsbook/lock/info && echo held || echo free').trim() === 'held'

test('a stale lock of another machine: an unattended run with --take-stale-lock takes it over, and the audit line says so', async () => {
  h.sh(`mkdir -p /var/lib/opsbook/lock && echo '{"id":"dead2","runbook":"backup","env":"default","operator":"cron","from":"ops-box","pid":1,"since":"2026-01-01T00:00:00Z"}' > /var/lib/opsbook/lock/info && touch -d '10 minutes ago' /var/lib/opsbook/lock/info`)
  const r = await runbook('provision', ['--config', h.envFile, '--take-stale-lock'])
  assert.is(r.code, 0, r.out)
  assert.match(r.stderr, /took over the host lock of cron@ops-box \(backup\): it had no heartbeat for \d+ s/)
  assert.match(lastAudit().what, /took over the host lock of cron@ops-box/)
  // A fresh heartbeat is not stale: --take-stale-lock leaves a live holder alone.
  h.sh(`mkdir -p /var/lib/opsbook/lock && echo '{"id":"live","runbook":"backup","env":"default","operator":"cron","from":"ops-box","pid":1,"since":"2026-01-01T00:00:00Z"}' > /var/lib/opsbook/lock/info`)
  const refused = await runbook('provision', ['--config', h.envFile, '--take-stale-lock'])
  assert.is(refused.code, 3, refused.out)
  h.sh('rm -rf /var/lib/opsbook/lock')
})

test('kill -9 of a run on this machine: the next run takes its lock over at once', async () => {
  slowDocker()
  try {
    const first = start('provision', ['--config', h.envFile])
    await waitFor('the first run to hold the lock', lockHeld)
    first.child.kill('SIGKILL')
    await first.done
    assert.ok(lockHeld(), 'the killed run left its lock')
    fastDocker()
    const r = await runbook('provision', ['--config', h.envFile])
    assert.is(r.code, 0, r.out)
    assert.match(r.stderr, new RegExp(`took over the host lock of \\S+ \\(provision\\): its process \\(pid ${first.child.pid}\\) on this machine is gone`))
    assert.not.ok(lockHeld())
  } finally { fastDocker() }
})

test('two runs started together: exactly one runs, the other is refused (exit 3)', async () => {
  slowDocker()
  try {
    const [a, b] = [start('provision', ['--config', h.envFile]), start('provision', ['--config', h.envFile])]
    const codes = [(await b.done).code, (await a.done).code].sort()
    assert.equal(codes, [0, 3], a.output() + b.output())
  } finally { fastDocker() }
})

test('a failing step: exit 1 naming it, lock released, audit "failed", sshd keeps serving', async () => {
  // A broken drop-in from someone else makes `sshd -t` fail: ours must be rolled back, sshd not reloaded.
  h.sh('echo "NotAnOption yes" > /etc/ssh/sshd_config.d/99-broken.conf && rm /etc/ssh/sshd_config.d/00-opsbook-hardening.conf')
  const r = await runbook('provision', ['--config', h.envFile])
  assert.is(r.code, 1, r.out)
  assert.match(r.stderr, /error: SSH hardening \(no passwords, root by key only\): .*Bad configuration option: NotAnOption .* sshd -t rejected the new file; the previous one was put back$/m)
  assert.is(h.sh('test -e /var/lib/opsbook/lock && echo held || echo free').trim(), 'free')
  assert.is(JSON.parse(h.sh('tail -n 1 /var/log/opsbook/audit.log')).result, 'failed')
  assert.is(h.sh('ls /etc/ssh/sshd_config.d/').trim(), '99-broken.conf', 'no half-installed drop-in, no temp or backup files left')
  assert.is(sshAs(h, 'deploy', 'true').code, 0, 'sshd still serves')
  h.sh('rm /etc/ssh/sshd_config.d/99-broken.conf')
  const again = await runbook('provision', ['--config', h.envFile, '--json'])
  assert.is(again.code, 0, again.out)
  assert.is(again.json.steps.find((s: any) => s.title.startsWith('SSH')).state, 'changed')
})

test('a non-root SSH user works through sudo -n; one without sudo gets one clear sentence', async () => {
  h.sh(`useradd -m -s /bin/bash ops && install -d -m 700 -o ops -g ops /home/ops/.ssh && cp /root/.ssh/authorized_keys /home/ops/.ssh/ && chown ops:ops /home/ops/.ssh/authorized_keys
        echo 'ops ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/ops && chmod 440 /etc/sudoers.d/ops`)
  const r = await runbook('provision', ['--config', h.envFile, '--json'], { SSH_USER: 'ops' })
  assert.is(r.code, 0, r.out)
  assert.is(r.json.host, `ops@127.0.0.1:${h.vps.port}`)
  assert.is(r.json.counts.changed, 0)
  const audit = JSON.parse(h.sh('tail -n 1 /var/log/opsbook/audit.log'))
  assert.is(audit.result, 'ok', 'the audit line was written through sudo')
  h.sh('rm /etc/sudoers.d/ops')
  const denied = await runbook('provision', ['--config', h.envFile], { SSH_USER: 'ops' })
  assert.is(denied.code, 1, denied.out)
  assert.match(denied.stderr, /needs passwordless sudo \(NOPASSWD\)/)
  assert.not.match(denied.stderr, /\n\s+at /)
})

test('teardown', () => { h.vps.destroy() })

test.run()
