// ENGINE=swarm: three provisioned VPSes on one network, the first of them a single compose
// host serving v1, become one Docker Swarm cluster (provision twice: the second run
// changes nothing), bad input changes nothing, the compose host's data carries over, the
// built-in stack is deployed with its app spread over the nodes, updated and rolled back
// under GET+POST load with 0 failed requests, a broken version is refused while the old
// one serves, and a node is lost under load (figures printed, replicas back to 3/3).
import { appendFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { appImage, nginxImage, postgresImage } from '../images.ts'
import { startLoad, type LoadResult } from '../load.ts'
import { docker, testLabels } from '../testbed.ts'
import { freshHost, runbook, waitFor, type Host } from './helpers.ts'

const NETWORK = 'opsbook-swarm-test'
let nodes: Host[]
let envFile: string
let base: string
let images: string[]
let rowsBefore = 0
const addr = (h: Host) => h.sh("ip -4 -o route get 1.1.1.1 | awk '{for (i = 1; i < NF; i++) if ($i == \"src\") print $(i + 1)}'").trim()
const serving = async () => (await (await fetch(`${base}/`)).json()).version
const taskNodes = (service: string) => nodes[0].sh(`docker service ps ${service} --filter desired-state=running --format '{{.Node}} {{.CurrentState}}' 2>/dev/null || true`).trim().split('\n').filter(l => /Running/.test(l)).map(l => l.split(' ')[0])
/** The app's slot service that exists (the live one between runs): app_app_a or app_app_b. */
const appSlot = () => nodes[0].sh("docker service ls --filter name=app_app_ --format '{{.Name}}'").trim()
const swarmState = (h: Host) => h.sh("docker info --format '{{.Swarm.LocalNodeState}}'").trim()
const figure = (what: string, r: LoadResult, wall: number) => console.log(`  [figure] ${what}: ${r.ok + r.failed} requests, ${r.failed} failed, p99 ${r.p99ms.toFixed(0)} ms, ${wall.toFixed(1)} s`)

async function underLoad<T>(during: () => Promise<T>): Promise<{ result: T; load: LoadResult; wall: number }> {
  const load = startLoad(`${base}/`, { workers: 4 })
  await new Promise(r => setTimeout(r, 1000))
  const t0 = Date.now()
  try {
    const result = await during()
    const wall = (Date.now() - t0) / 1000
    await new Promise(r => setTimeout(r, 1000))
    return { result, load: await load.stop(), wall }
  } finally {
    await load.stop()
  }
}

test('setup: three provisioned VPSes on one network, holding the stack images; settings naming them as a cluster', async () => {
  images = [await postgresImage(), await nginxImage(), await appImage('v1'), await appImage('v2'), await appImage('v3', true)]
  if (docker(['network', 'inspect', NETWORK], { check: false }).status !== 0) docker(['network', 'create', ...testLabels(), NETWORK])
  nodes = await Promise.all([1, 2, 3].map(i => freshHost(`swarm-${i}`, {}, { provisioned: true, network: NETWORK, images })))
  const knownHosts = join(nodes[0].dir, 'known_hosts.all')
  writeFileSync(knownHosts, nodes.map(n => n.vps.knownHosts).join(''))
  envFile = join(nodes[0].dir, '.env.cluster')
  writeFileSync(envFile, [
    `SSH_HOSTS=${nodes.map(n => `127.0.0.1:${n.vps.port}`).join(',')}`, 'SSH_USER=root', `SSH_KEY=${nodes[0].key.privateKey}`, `SSH_KNOWN_HOSTS=${knownHosts}`,
    'ENGINE=swarm', 'APP_IMAGE=opsbook/app', `DB_IMAGE=${images[0]}`, `PROXY_IMAGE=${images[1]}`, 'IMAGE_SOURCE=local',
    'DB_PASSWORD=swarm-db-Password-77', 'APP_REPLICAS=3', 'HEALTH_TIMEOUT=20', 'DRAIN_SECONDS=2', 'APP_ENV_DB_WRITER=1', '',
  ].join('\n'))
  base = `http://127.0.0.1:${nodes[0].vps.httpPort}`
})

// PostgreSQL on the first node, whichever engine runs it.
const pg = (sql: string) => nodes[0].sh(`c=$( { docker ps -q --filter label=com.docker.swarm.service.name=app_db; docker ps -q --filter label=com.docker.compose.service=db; } | head -n 1); docker exec "$c" psql -X -At -U app -d app -c "${sql}"`).trim()

test('today: the first node is a single compose host serving v1, its database filling', async () => {
  appendFileSync(nodes[0].envFile, ['APP_IMAGE=opsbook/app', `DB_IMAGE=${images[0]}`, `PROXY_IMAGE=${images[1]}`, 'IMAGE_SOURCE=local', 'DB_PASSWORD=swarm-db-Password-77', 'HEALTH_TIMEOUT=20', 'APP_ENV_DB_WRITER=1', ''].join('\n'))
  const r = await runbook('deploy', ['--config', nodes[0].envFile, '--version', 'v1'])
  assert.is(r.code, 0, r.out)
  assert.is(await serving(), 'v1')
  await waitFor('rows in PostgreSQL', () => Number(pg('select count(*) from events')) >= 20, 60_000)
})

test('bad input exits 2 or 1 with one sentence and changes nothing on any node', async () => {
  const even = await runbook('provision', ['--config', envFile], { SWARM_MANAGERS: '2' })
  assert.is(even.code, 2, even.out)
  assert.match(even.stderr, /SWARM_MANAGERS=2 .* odd number of managers/)
  const unbuilt = await runbook('backup', ['--config', envFile])
  assert.is(unbuilt.code, 2, unbuilt.out)
  assert.match(unbuilt.stderr, /backup does not work with ENGINE=swarm yet/)
  const hosts = nodes.map(n => `127.0.0.1:${n.vps.port}`).join(',')
  const lost = await runbook('provision', ['--config', envFile], { SSH_HOSTS: `${hosts},127.0.0.1:1` })
  assert.is(lost.code, 1, lost.out)
  assert.match(lost.stderr, /cluster node 127\.0\.0\.1:1 cannot be reached .* nothing was changed on any node/)
  for (const n of nodes) {
    assert.is(swarmState(n), 'inactive')
    assert.not.match(n.sh('ufw status'), /2377/)
  }
  assert.not.match(lost.out, /Batch 2\/4/, 'the other nodes were not run')
})

test('provision --dry-run names the swarm steps and changes nothing', async () => {
  const r = await runbook('provision', ['--config', envFile, '--dry-run'])
  assert.is(r.code, 0, r.out)
  assert.match(r.out, /Swarm membership \(manager, edge, data\) \(initialise the swarm, advertising [\d.]+\) \.\.\. would change/)
  assert.match(r.out, /Swarm membership \(worker\) \(join the swarm of 127\.0\.0\.1:\d+ \([\d.]+\) as a worker\) \.\.\. would change/)
  for (const n of nodes) assert.is(swarmState(n), 'inactive')
})

test('provision forms the cluster: one manager (edge, data), two workers; Swarm ports open to the other nodes only; the join token never shown', async () => {
  const t0 = Date.now()
  const r = await runbook('provision', ['--config', envFile, '--json'])
  console.log(`  [figure] provision of 3 nodes (provisioned image, swarm formed): ${((Date.now() - t0) / 1000).toFixed(1)} s`)
  assert.is(r.code, 0, r.out)
  assert.equal(r.json.hosts.map((h: any) => h.result), ['changed', 'changed', 'changed'])
  const ls = nodes[0].sh("docker node ls --format '{{.Hostname}} {{.Status}} {{.ManagerStatus}}'")
  assert.is(ls.trim().split('\n').filter(l => / Ready/.test(l)).length, 3, ls)
  assert.match(ls, /it-swarm-1 Ready Leader/)
  assert.is(nodes[0].sh("docker node inspect it-swarm-1 --format '{{index .Spec.Labels \"opsbook.edge\"}} {{index .Spec.Labels \"opsbook.data\"}}'").trim(), 'true true')
  const [a1, a2, a3] = nodes.map(addr)
  const ufw2 = nodes[1].sh('ufw status')
  for (const from of [a1, a3]) for (const rule of ['2377/tcp', '7946/tcp', '7946/udp', '4789/udp']) assert.match(ufw2, new RegExp(`^${rule.replace('/', '\\/')}\\s+ALLOW\\s+${from.replace(/\./g, '\\.')}\\s`, 'm'), `${rule} from ${from}: ${ufw2}`)
  assert.not.match(ufw2, /2377\/tcp\s+ALLOW\s+Anywhere/)
  assert.not.match(ufw2, /^80\/tcp/m, 'the public ports are only open on the edge node')
  assert.match(nodes[0].sh('ufw status'), /^80\/tcp\s+ALLOW\s+Anywhere/m)
  assert.not.match(nodes[0].sh('ufw status'), new RegExp(`ALLOW\\s+${a1.replace(/\./g, '\\.')}\\s`), 'no rule for its own address')
  for (const role of ['worker', 'manager']) {
    const token = nodes[0].sh(`docker swarm join-token -q ${role}`).trim()
    assert.not.ok(r.out.includes(token), `the ${role} token is not printed`)
    for (const n of nodes) assert.not.ok(n.sh('cat /var/log/opsbook/audit.log').includes(token), 'nor in the audit log')
  }
})

test('provision again changes nothing on any node', async () => {
  const t0 = Date.now()
  const r = await runbook('provision', ['--config', envFile, '--json'])
  console.log(`  [figure] provision of 3 nodes, no-op re-run: ${((Date.now() - t0) / 1000).toFixed(1)} s`)
  assert.is(r.code, 0, r.out)
  assert.equal(r.json.hosts.map((h: any) => [h.result, h.counts.changed]), [['ok', 0], ['ok', 0], ['ok', 0]])
})

test('one node is allowed, with a warning', async () => {
  const r = await runbook('provision', ['--config', envFile, '--dry-run'], { SSH_HOSTS: `127.0.0.1:${nodes[0].vps.port}` })
  assert.is(r.code, 0, r.out)
  assert.match(r.stderr, /warning: ENGINE=swarm with one node: it works, but nothing takes over when that node is lost/)
})

test('moving to the cluster: deploy refuses while the compose stack runs; stopped (volumes kept), its data is the cluster\'s', async () => {
  const r = await runbook('deploy', ['--config', envFile, '--version', 'v1'])
  assert.is(r.code, 1, r.out)
  assert.match(r.stderr, /the one-host stack app still runs on root@127\.0\.0\.1:\d+: stop it there with "cd \/opt\/app && docker compose down" \(without -v/)
  rowsBefore = Number(pg('select count(*) from events'))
  nodes[0].sh('cd /opt/app && docker compose down 2>&1')
})

test('deploy v1: the app runs 3 tasks, one on each node, behind nginx on the edge; again: nothing to do', async () => {
  const r = await runbook('deploy', ['--config', envFile, '--version', 'v1'])
  assert.is(r.code, 0, r.out)
  assert.is(await serving(), 'v1')
  assert.match(appSlot(), /^app_app_[ab]$/)
  assert.equal(taskNodes(appSlot()).sort(), ['it-swarm-1', 'it-swarm-2', 'it-swarm-3'])
  assert.equal(taskNodes('app_db'), ['it-swarm-1'], 'PostgreSQL on the data node')
  assert.equal(taskNodes('app_proxy'), ['it-swarm-1'], 'nginx on the edge node')
  const [first, count] = pg('select min(id), count(*) from events').split('|').map(Number)
  assert.ok(first === 1 && count >= rowsBefore, `the compose host's rows (${rowsBefore}) are in the cluster's PostgreSQL: min id ${first}, ${count} rows`)
  const again = await runbook('deploy', ['--config', envFile, '--version', 'v1', '--json'])
  assert.is(again.code, 0, again.out)
  assert.is(again.json.counts.changed, 0, again.out)
  const s = await runbook('status', ['--config', envFile])
  assert.is(s.code, 0, s.out)
  assert.match(s.out, /Cluster nodes \(ENGINE=swarm\) \(it-swarm-1 ready manager \(leader\) data,edge; it-swarm-2 ready worker; it-swarm-3 ready worker\)/)
  assert.match(s.out, /app_app_[ab] 3\/3 \(it-swarm-1 1, it-swarm-2 1, it-swarm-3 1\); app_db 1\/1 \(it-swarm-1 1\); app_proxy 1\/1 \(it-swarm-1 1\)/)
  assert.match(s.out, /Live release \(v1,/)
})

test('update to v2, then rollback to v1, under GET+POST load: 0 failed requests', async () => {
  const before = appSlot()
  const up = await underLoad(() => runbook('update', ['--config', envFile, '--version', 'v2']))
  assert.is(up.result.code, 0, up.result.out)
  figure('swarm update v1 -> v2 under load', up.load, up.wall)
  assert.is(up.load.failed, 0, up.load.errors.slice(0, 5).join('\n'))
  assert.is(await serving(), 'v2')
  const after = appSlot()
  assert.ok(/^app_app_[ab]$/.test(after) && after !== before, `v2 runs in the other slot (${before} -> ${after}), the old one is gone`)
  assert.equal(taskNodes(after).sort(), ['it-swarm-1', 'it-swarm-2', 'it-swarm-3'])
  const back = await underLoad(() => runbook('rollback', ['--config', envFile, '--to', 'v1', '--yes']))
  assert.is(back.result.code, 0, back.result.out)
  figure('swarm rollback v2 -> v1 under load', back.load, back.wall)
  assert.is(back.load.failed, 0, back.load.errors.slice(0, 5).join('\n'))
  assert.is(await serving(), 'v1')
})

test('a version that fails its health check is removed and marked failed; v1 keeps serving', async () => {
  const r = await runbook('update', ['--config', envFile, '--version', 'v3'])
  assert.is(r.code, 1, r.out)
  assert.match(r.stderr, /v3's app did not answer \/health within 20 s .* its service was removed and v1 keeps serving/)
  assert.is(await serving(), 'v1')
  assert.is(appSlot().split('\n').length, 1, 'only the live slot remains')
  const rs = JSON.parse(nodes[0].sh('cat /opt/app/releases.json'))
  assert.equal([rs.at(-1).version, rs.at(-1).result, rs.at(-1).bad], ['v3', 'failed', true])
})

test('a worker node is lost under load: Swarm moves its task, nginx follows; figures, replicas back to 3/3', async () => {
  const third = nodes[2]
  const { result: back, load, wall } = await underLoad(async () => {
    const t0 = Date.now()
    docker(['stop', '-t', '0', third.vps.container])
    const slot = appSlot()
    await waitFor('3 app tasks running on the other nodes', () => taskNodes(slot).filter(n => n !== 'it-swarm-3').length === 3, 180_000)
    return (Date.now() - t0) / 1000
  })
  console.log(`  [figure] node it-swarm-3 lost under load: ${load.ok + load.failed} requests, ${load.failed} failed, p99 ${load.p99ms.toFixed(0)} ms, 3/3 replicas again after ${back.toFixed(1)} s (${wall.toFixed(1)} s under load)`)
  assert.is(await serving(), 'v1')
  const s = await runbook('status', ['--config', envFile, '--check'])
  assert.is(s.code, 1, s.out)
  assert.match(s.out, /it-swarm-3 not ready/)
})

test('cleanup: the nodes and their network', () => {
  for (const n of nodes ?? []) n.vps.destroy()
  docker(['network', 'rm', NETWORK], { check: false })
})

test.run()
