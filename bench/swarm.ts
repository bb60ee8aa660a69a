// Bench (prints, never asserts): the cluster (ENGINE=swarm, 3 nodes) beside one compose
// host (the reference), same images, same run, the same constant GET+POST load through
// nginx (strict: nothing resent):
//   provision: one host vs 3 nodes, first run and no-op re-run
//   update v1 -> v2 and rollback v2 -> v1: one host (compose slots) vs the cluster (slot services)
//   Swarm's own rolling update (docker service update --update-order start-first) of the
//     live slot service, the alternative opsbook did not choose
//   a node lost: failed requests and seconds until the app has 3 running tasks again
//   npm run bench:swarm
import { appendFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { appImage, nginxImage, postgresImage } from '../test/images.ts'
import { startLoad, type LoadResult } from '../test/load.ts'
import { docker, testLabels } from '../test/testbed.ts'
import { freshHost, runbook as run, waitFor, type Host } from '../test/integration/helpers.ts'

const MIN_REQUESTS = Number(process.env.MIN_REQUESTS ?? 10_000)
const NETWORK = 'opsbook-bench-swarm'

async function runbook(name: string, args: string[], env?: NodeJS.ProcessEnv): Promise<number> {
  const t0 = Date.now()
  const r = await run(name, args, env)
  if (r.code !== 0) throw new Error(`${name} failed:\n${r.out}`)
  return (Date.now() - t0) / 1000
}

/** A command on a VPS without blocking the event loop (the load keeps going). */
const onHost = (h: Host, script: string) => new Promise<void>((resolve, reject) => {
  import('node:child_process').then(({ spawn }) => spawn('docker', ['exec', h.vps.container, 'sh', '-c', script], { stdio: 'ignore' })
    .on('close', code => (code === 0 ? resolve() : reject(new Error(`${script}: exit ${code}`)))))
})

const rows: [string, LoadResult, number, string][] = []
async function underLoad(url: string, name: string, action: () => Promise<number>, note = '') {
  const load = startLoad(url)
  try {
    await waitFor('half the requests', () => load.result().ok + load.result().failed >= MIN_REQUESTS / 2, 60_000)
    const wall = await action()
    const after = Date.now()
    await waitFor('the rest of the requests', () => load.result().ok + load.result().failed >= MIN_REQUESTS || Date.now() - after > 20_000, 120_000)
    rows.push([name, await load.stop(), wall, note])
  } finally { await load.stop() }
}

const images = [await postgresImage(), await nginxImage(), await appImage('v1'), await appImage('v2')]
const settings = ['APP_IMAGE=opsbook/app', `DB_IMAGE=${images[0]}`, `PROXY_IMAGE=${images[1]}`, 'IMAGE_SOURCE=local', 'DB_PASSWORD=bench-db-Password-1', 'APP_REPLICAS=3', 'HEALTH_TIMEOUT=30', 'DRAIN_SECONDS=2', 'APP_ENV_DB_CHECK=1']
if (docker(['network', 'inspect', NETWORK], { check: false }).status !== 0) docker(['network', 'create', ...testLabels(), NETWORK])
const hosts: Host[] = []
try {
  console.error('starting one host and three nodes, images loaded into each (not timed)...')
  hosts.push(...await Promise.all(['bench-one', 'bench-n1', 'bench-n2', 'bench-n3'].map(n => freshHost(n, {}, { provisioned: true, network: NETWORK, images }))))
  const [one, ...nodes] = hosts
  appendFileSync(one.envFile, settings.join('\n') + '\n')
  const cluster = join(nodes[0].dir, '.env.cluster')
  writeFileSync(join(nodes[0].dir, 'known_hosts.all'), nodes.map(n => n.vps.knownHosts).join(''))
  writeFileSync(cluster, [`SSH_HOSTS=${nodes.map(n => `127.0.0.1:${n.vps.port}`).join(',')}`, 'SSH_USER=root', `SSH_KEY=${nodes[0].key.privateKey}`,
    `SSH_KNOWN_HOSTS=${join(nodes[0].dir, 'known_hosts.all')}`, 'ENGINE=swarm', ...settings, ''].join('\n'))
  const times: [string, number, number][] = [
    ['provision, first run', await runbook('provision', ['--config', one.envFile]), await runbook('provision', ['--config', cluster])],
    ['provision, no-op re-run', await runbook('provision', ['--config', one.envFile]), await runbook('provision', ['--config', cluster])],
    ['deploy v1', await runbook('deploy', ['--config', one.envFile, '--version', 'v1']), await runbook('deploy', ['--config', cluster, '--version', 'v1'])],
  ]
  const oneUrl = `http://127.0.0.1:${one.vps.httpPort}/`, clusterUrl = `http://127.0.0.1:${nodes[0].vps.httpPort}/`
  await underLoad(oneUrl, 'one host: update v1 -> v2', () => runbook('update', ['--config', one.envFile, '--version', 'v2']))
  await underLoad(clusterUrl, 'cluster: update v1 -> v2', () => runbook('update', ['--config', cluster, '--version', 'v2']))
  await underLoad(oneUrl, 'one host: rollback v2 -> v1', () => runbook('rollback', ['--config', one.envFile, '--to', 'v1', '--yes']))
  await underLoad(clusterUrl, 'cluster: rollback v2 -> v1', () => runbook('rollback', ['--config', cluster, '--to', 'v1', '--yes']))
  const slot = nodes[0].sh("docker service ls --filter name=app_app_ --format '{{.Name}}'").trim()
  await underLoad(clusterUrl, 'cluster: Swarm start-first update', async () => {
    const t0 = Date.now()
    await onHost(nodes[0], `docker service update --quiet --detach=false --image opsbook/app:v2 --update-order start-first --update-parallelism 1 --update-monitor 2s ${slot}`)
    return (Date.now() - t0) / 1000
  }, 'one task at a time, old ones stopped as new ones start; DNS mixes versions meanwhile')
  let back = 0
  await underLoad(clusterUrl, 'cluster: node 3 lost', async () => {
    const t0 = Date.now()
    docker(['stop', '-t', '0', nodes[2].vps.container])
    await waitFor('3 tasks on the other nodes', () => nodes[0].sh(`docker service ps ${slot} --filter desired-state=running --format '{{.Node}} {{.CurrentState}}'`).split('\n').filter(l => /Running/.test(l) && !l.startsWith('it-bench-n3')).length === 3, 180_000)
    back = (Date.now() - t0) / 1000
    return back
  }, 'wall = seconds until 3 tasks run again')

  console.log('Wall time, one compose host vs a 3-node cluster (ENGINE=swarm), same run:')
  console.log('what'.padEnd(26), 'one host s  cluster s   ratio')
  for (const [what, a, b] of times) console.log(what.padEnd(26), a.toFixed(1).padStart(10), b.toFixed(1).padStart(10), `${(b / a).toFixed(2)}x`.padStart(7))
  console.log(`\nConstant load through nginx (4 keep-alive workers, GET and POST alternating, >= ${MIN_REQUESTS} requests per case; strict, nothing resent):`)
  console.log('case'.padEnd(36), 'requests  failed   p50 ms   p99 ms   wall s')
  for (const [name, l, wall] of rows) console.log(name.padEnd(36), String(l.ok + l.failed).padStart(8), String(l.failed).padStart(7), l.p50ms.toFixed(1).padStart(8), l.p99ms.toFixed(1).padStart(8), wall.toFixed(1).padStart(8))
  for (const [name, l, , note] of rows) if (note || l.failed) console.log(`${name}: ${note}${l.failed ? `; first errors: ${l.errors.slice(0, 3).join(', ')}` : ''}`)
} finally {
  for (const h of hosts) h.vps.destroy()
  docker(['network', 'rm', NETWORK], { check: false })
}
