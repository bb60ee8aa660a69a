// Back from any container state, on one provisioned VPS: each case puts the stack in a
// state people find it in (paused, stopped, crash-looping, OOM-killed, removed by hand,
// nginx or the database stopped, Docker restarted), checks that status names the state,
// runs rollback --repair under load, and from then on every request must succeed.
import { appendFileSync } from 'node:fs'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { appImage, nginxImage, postgresImage } from '../images.ts'
import { startLoad } from '../load.ts'
import { freshHost, runbook, waitFor, type Host } from './helpers.ts'

let h: Host
let url: string
const serving = async () => { try { return (await (await fetch(url, { signal: AbortSignal.timeout(2000) })).json()).version } catch { return undefined } }
const state = (c: string) => h.sh(`docker inspect -f '{{.State.Status}}' ${c} 2>/dev/null || echo gone`).trim()

test('setup: v1 deployed with two app replicas', async () => {
  const [pg, ngx, v1] = [await postgresImage(), await nginxImage(), await appImage('v1')]
  h = await freshHost('recover', {}, { provisioned: true, images: [pg, ngx, v1] })
  appendFileSync(h.envFile, [
    'APP_IMAGE=opsbook/app', `DB_IMAGE=${pg}`, `PROXY_IMAGE=${ngx}`, 'DB_PASSWORD=recover-db-password-5', 'IMAGE_SOURCE=local',
    'APP_REPLICAS=2', 'HEALTH_TIMEOUT=15', 'DRAIN_SECONDS=1', 'BACKUP_RPO=off', 'DRILL_MAX_AGE=off', '',
  ].join('\n'))
  url = `http://127.0.0.1:${h.vps.httpPort}/`
  const d = await runbook('deploy', ['--config', h.envFile, '--version', 'v1'])
  assert.is(d.code, 0, d.out)
  assert.is(await serving(), 'v1')
})

/**
 * `breakIt` puts the host in a state; status --check must fail naming it (`named`), then
 * rollback --repair under load must bring v1 back (`did`: what its step says it did), and
 * a strict load after it must see no failure; a second repair changes nothing.
 */
async function recovers(what: string, breakIt: () => void | Promise<void>, named: RegExp, did: RegExp) {
  await breakIt()
  const s = await runbook('status', ['--config', h.envFile, '--check'])
  assert.is(s.code, 1, s.out)
  assert.ok(named.test(s.out), `status --check did not name it as ${named}:\n${s.out}`)
  const load = startLoad(url, { workers: 2 })
  const t0 = Date.now()
  const r = await runbook('rollback', ['--config', h.envFile, '--repair', '--yes'])
  const secs = ((Date.now() - t0) / 1000).toFixed(1)
  const during = await load.stop()
  assert.is(r.code, 0, r.out)
  assert.ok(did.test(r.out), `the repair did not say ${did}:\n${r.out}`)
  const after = startLoad(url), fresh = startLoad(url, { workers: 2, fresh: true })
  await new Promise(res => setTimeout(res, 3000))
  const [a, f] = [await after.stop(), await fresh.stop()]
  assert.is(a.failed + f.failed, 0, [...a.errors, ...f.errors].join(', '))
  assert.ok(a.ok > 50, `only ${a.ok} requests`)
  assert.equal([...a.versions], ['v1'])
  const check = await runbook('status', ['--config', h.envFile, '--check'])
  assert.is(check.code, 0, check.out)
  const again = await runbook('rollback', ['--config', h.envFile, '--repair', '--yes', '--json'])
  assert.is(again.json?.counts.changed, 0, again.out)
  console.log(`      ${what}: repaired in ${secs} s (${during.failed} of ${during.ok + during.failed} requests failed while it ran); after it 0 of ${a.ok + f.ok}`)
}

test('both app containers paused (a hung app): status names them paused; repair unpauses them', async () => {
  await recovers('paused', () => { h.sh('docker pause app-app-1 app-app-2') },
    /app: 0 container\(s\) running nothing \(app-app-1 paused, app-app-2 paused\)/,
    /Containers in a state to swap from \(unpaused app-app-1 \(paused\), unpaused app-app-2 \(paused\)\)/)
})

test('both app containers stopped: named exited; repair removes them and re-rolls v1', async () => {
  await recovers('exited', () => { h.sh('docker stop -t 0 app-app-1 app-app-2 >/dev/null') },
    /app: 0 container\(s\) running nothing \(app-app-\d+ exited \d+, app-app-\d+ exited \d+\)/,
    /removed app-app-\d+ \(exited \d+\), removed app-app-\d+ \(exited \d+\)[\s\S]*Roll back to v1 with no downtime/)
})

test('an app container crash-looping (its code gone): named restarting in a loop; repair replaces it', async () => {
  const c = h.sh("docker ps --filter label=com.docker.compose.service=app --format '{{.Names}}' | head -n 1").trim()
  await recovers('restarting in a loop', async () => {
    // Killed from outside (not `docker stop`): the restart policy restarts it, into a missing file.
    h.sh(`docker exec ${c} mv /app/server.js /app/server.off && kill -KILL $(docker inspect -f '{{.State.Pid}}' ${c})`)
    // Three restarts make a loop (one is a crash a replica came back from).
    await waitFor(`${c} restarting`, () => state(c) === 'restarting' && Number(h.sh(`docker inspect -f '{{.RestartCount}}' ${c}`)) >= 3, 60_000)
  }, new RegExp(`app: 1 container\\(s\\) running v1 \\(${c} restarting in a loop \\(\\d+ restarts\\)\\)`),
  new RegExp(`removed ${c} \\(restarting in a loop`))
})

test('an app container OOM-killed (no restart policy, as many compose files have): named exited 137, OOM-killed; repair replaces it', async () => {
  const c = h.sh("docker ps --filter label=com.docker.compose.service=app --format '{{.Names}}' | head -n 1").trim()
  await recovers('OOM-killed', async () => {
    // A 64 MB limit and a process in the container that fills it; the app's own process is
    // made the kernel's first choice, as the biggest process of a leaking app would be.
    h.sh(`docker update --restart no --memory 64m --memory-swap 64m ${c} >/dev/null && echo 1000 > /proc/$(docker inspect -f '{{.State.Pid}}' ${c})/oom_score_adj`)
    h.sh(`docker exec -d ${c} node -e 'const a = []; setInterval(() => a.push(Buffer.alloc(4e6, 1)), 20)'`)
    await waitFor(`${c} OOM-killed`, () => h.sh(`docker inspect -f '{{.State.Status}} {{.State.OOMKilled}}' ${c}`).trim() === 'exited true', 60_000)
  }, new RegExp(`${c} exited 137, OOM-killed`), new RegExp(`removed ${c} \\(exited 137, OOM-killed\\)`))
})

test('nginx stopped, then the database stopped: each named; repair starts it', async () => {
  await recovers('nginx stopped', () => { h.sh('docker stop app-proxy-1 >/dev/null') },
    /nginx: not running \(app-proxy-1 exited \d+\): rollback\.ts --repair starts it/, /started app-proxy-1 \(exited \d+\)/)
  await recovers('database stopped', () => { h.sh('docker stop app-db-1 >/dev/null') },
    /db: not running \(app-db-1 exited \d+\): rollback\.ts --repair starts it/, /started app-db-1 \(exited \d+\)/)
  assert.is((await fetch(`${url}db`)).status, 200, 'the app reaches its database again')
})

test('the app and nginx removed by hand: named removed; repair starts nginx and re-rolls v1', async () => {
  await recovers('removed by hand', () => { h.sh("docker rm -f $(docker ps -aq --filter label=com.docker.compose.service=app) app-proxy-1 >/dev/null") },
    /nginx: not running \(proxy removed\)/, /started proxy \(removed\)[\s\S]*Roll back to v1 with no downtime/)
})

test('Docker restarted: the stack comes back by itself; status and a repair find nothing to do', async () => {
  h.sh('systemctl restart docker')
  await waitFor('v1 serving after docker restarted', () => h.sh(`curl -s -m 2 ${'http://127.0.0.1:80/'} || true`).includes('v1'), 120_000)
  const load = startLoad(url), fresh = startLoad(url, { workers: 2, fresh: true })
  await new Promise(res => setTimeout(res, 3000))
  const [a, f] = [await load.stop(), await fresh.stop()]
  assert.is(a.failed + f.failed, 0, [...a.errors, ...f.errors].join(', '))
  const check = await runbook('status', ['--config', h.envFile, '--check'])
  assert.is(check.code, 0, check.out)
  const r = await runbook('rollback', ['--config', h.envFile, '--repair', '--yes', '--json'])
  assert.is(r.json?.counts.changed, 0, r.out)
})

test('teardown', () => { h.vps.destroy() })

test.run()
