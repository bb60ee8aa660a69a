// ENGINE=swarm with stacks as their owners wrote them, on one cluster of three provisioned
// VPSes (swarm.test.ts has the built-in stack's life on its own cluster): the shop example
// from a private registry (an API of 3 with its uploads volume, a storefront, a worker on
// a Redis queue) updated under load while jobs arrive, and the Deita example over HTTPS
// (a certificate from Pebble, Let's Encrypt's test CA, issued on the edge node and renewed
// under strict HTTPS load), whose backend keeps a DuckDB file in its volume: pinned with it
// to the data node, updated under load, backed up with the DuckDB file and drilled.
import { spawn } from 'node:child_process'
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs'
import { request as httpRequest, type IncomingMessage } from 'node:http'
import { connect } from 'node:tls'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { backendImage, EXAMPLE_REGISTRY, frontendImage, nginxImage, postgresImage, redisImage, workerImage } from '../images.ts'
import { startLoad, underLoad as loadBoth, type LoadResult } from '../load.ts'
import { startPebble, type Pebble } from '../pebble.ts'
import { startRegistry, type Registry } from '../registry.ts'
import { docker, testLabels } from '../testbed.ts'
import { ROOT, TMP, freshHost, runbook, waitFor, type Host } from './helpers.ts'

const NETWORK = 'opsbook-swarm-stacks-test'
const REGISTRY_PASSWORD = 'swarm-registry-Pass-31'
let nodes: Host[] = []
let reg: Registry | undefined
let pebble: Pebble | undefined
let root: string
const DOMAIN = 'deita.test'
let base: string
let pg: string
let ngx: string
/** The settings lines naming the cluster, shared by both stacks. */
let cluster: string[]
const figure = (what: string, r: LoadResult, wall: number) => console.log(`  [figure] ${what}: ${r.ok + r.failed} requests, ${r.failed} failed, p99 ${r.p99ms.toFixed(0)} ms, ${wall.toFixed(1)} s`)
const where = (service: string) => nodes[0].sh(`docker service ps ${service} --filter desired-state=running --format '{{.Node}}' 2>/dev/null || true`).trim().split('\n').sort()

test('setup: a private registry with the shop images; three provisioned VPSes holding the Deita images form a cluster', async () => {
  [pg, ngx] = [await postgresImage(), await nginxImage()]
  const images = [pg, ngx]
  for (const v of ['v1', 'v2']) images.push(await backendImage('deita', v), await frontendImage('deita', v))
  if (docker(['network', 'inspect', NETWORK], { check: false }).status !== 0) docker(['network', 'create', ...testLabels(), NETWORK])
  // A private registry (TLS, login) on the nodes' network holds the shop example's images.
  reg = await startRegistry(REGISTRY_PASSWORD, 'deployer', NETWORK)
  reg.push(await redisImage(), 'opsbook/redis:7')
  for (const v of ['v1', 'v2']) for (const [local, name] of [[await backendImage('shop', v), 'backend'], [await frontendImage('shop', v), 'frontend'], [await workerImage(v), 'worker']]) reg.push(local, `opsbook-ex/shop-${name}:${v}`)
  // Pebble validates deita.test on the first node (the edge), by that name on this network.
  pebble = await startPebble(NETWORK, join(TMP, 'pebble-swarm'))
  root = await pebble.issuingRoot()
  nodes = await Promise.all([1, 2, 3].map(i => freshHost(`swarms-${i}`, {}, { provisioned: true, network: NETWORK, images, aliases: i === 1 ? [DOMAIN] : [] })))
  for (const n of nodes) reg.attach(n.vps)
  const knownHosts = join(nodes[0].dir, 'known_hosts.all')
  writeFileSync(knownHosts, nodes.map(n => n.vps.knownHosts).join(''))
  cluster = [`SSH_HOSTS=${nodes.map(n => `127.0.0.1:${n.vps.port}`).join(',')}`, 'SSH_USER=root', `SSH_KEY=${nodes[0].key.privateKey}`, `SSH_KNOWN_HOSTS=${knownHosts}`, 'ENGINE=swarm']
  const env = join(nodes[0].dir, '.env.cluster')
  writeFileSync(env, [...cluster, ''].join('\n'))
  const p = await runbook('provision', ['--config', env])
  assert.is(p.code, 0, p.out)
  base = `http://127.0.0.1:${nodes[0].vps.httpPort}`
})

test('your own stack on the cluster, from a private registry: the shop example (API x3, storefront, a worker on a Redis queue) updated under load on both routes while jobs arrive: 0 failed, every job done once', async () => {
  const dir = nodes[0].dir
  const compose = join(dir, 'shop.yml')
  // The API keeps its uploads volume: it runs on the data node, where the volume is (both slots, every task).
  writeFileSync(compose, readFileSync(join(ROOT, 'templates', 'examples', 'shop', 'compose.yml'), 'utf8')
    .replace('      opsbook.health: /api/health\n', '      opsbook.health: /api/health\n      opsbook.replicas: "3"\n'))
  const shopEnv = join(dir, '.env.shop')
  writeFileSync(shopEnv, [...cluster,
    'APP_NAME=shop', `COMPOSE_FILE=${compose}`, `REGISTRY=${reg!.host}/opsbook-ex`, `POSTGRES_IMAGE=${pg}`, `REDIS_IMAGE=${reg!.host}/opsbook/redis:7`, 'POSTGRES_PASSWORD=shop-Postgres-pw-9187',
    `PROXY_IMAGE=${ngx}`, 'IMAGE_SOURCE=registry', `REGISTRY_USER=${reg!.user}`, `REGISTRY_PASSWORD=${REGISTRY_PASSWORD}`, 'HEALTH_TIMEOUT=30', 'DRAIN_SECONDS=1', ''].join('\n'))
  const d = await runbook('deploy', ['--config', shopEnv, '--version', 'v1'])
  assert.is(d.code, 0, d.out)
  assert.match(d.out, /starting postgres, redis first, on the data node/)
  // Each node logged in and pulled what it lacked; the login also went with the stack (--with-registry-auth).
  assert.match(d.out, /Images on every node .*127\.0\.0\.1:\d+: pulled [^;]*registry\.test:5000\/opsbook-ex\/shop-backend:v1/)
  assert.not.ok(d.out.includes(REGISTRY_PASSWORD), 'the registry password was printed')
  const where = (service: string) => nodes[0].sh(`docker service ps ${service} --filter desired-state=running --format '{{.Node}}' 2>/dev/null || true`).trim().split('\n').sort()
  assert.equal(where('shop_backend_a shop_backend_b'), ['it-swarms-1', 'it-swarms-1', 'it-swarms-1'], 'the API\'s 3 tasks on the data node, with its uploads volume')
  const redis = (cmd: string) => nodes[0].sh(`docker exec $(docker ps -q --filter label=com.docker.swarm.service.name=shop_redis) redis-cli --raw ${cmd}`).trim()
  nodes[0].sh(`rm -f /tmp/jobs.stop; (c=$(docker ps -q --filter label=com.docker.swarm.service.name=shop_redis); n=0; while [ ! -e /tmp/jobs.stop ]; do a=''; for k in 1 2 3 4 5; do n=$((n+1)); a="$a up-$n"; done; docker exec "$c" redis-cli LPUSH jobs $a >/dev/null && echo $n > /tmp/jobs.count; sleep 0.05; done; rm -f /tmp/jobs.stop) >/dev/null 2>&1 &`)
  await waitFor('jobs to flow', () => Number(nodes[0].sh('cat /tmp/jobs.count 2>/dev/null || echo 0')) > 5)
  const t0 = Date.now()
  const { result: up, loads: [api, shop] } = await loadBoth(`${base}/api/orders`, `${base}/`, () => runbook('update', ['--config', shopEnv, '--version', 'v2']))
  const wall = (Date.now() - t0) / 1000
  nodes[0].sh('touch /tmp/jobs.stop; while [ -e /tmp/jobs.stop ]; do sleep 0.1; done')
  assert.is(up.code, 0, up.out)
  const jobs = Number(nodes[0].sh('cat /tmp/jobs.count'))
  await waitFor('the queue to drain', () => redis('LLEN jobs') === '0' && redis('KEYS processing:*') === '', 180_000)
  for (const [name, l] of [['/api/', api], ['/', shop]] as const) {
    figure(`swarm shop update v1 -> v2 under load on ${name}`, l, wall)
    assert.is(l.failed, 0, `${name}: ${l.failed} failed of ${l.ok + l.failed}: ${l.errors.slice(0, 5).join(', ')}`)
  }
  const done = redis('HGETALL done').split('\n')
  const counts = new Map<string, number>()
  for (let i = 0; i + 1 < done.length; i += 2) counts.set(done[i], Number(done[i + 1]))
  assert.equal([...counts].filter(([, n]) => n !== 1), [], 'jobs done more than once')
  assert.equal(Array.from({ length: jobs }, (_, i) => `up-${i + 1}`).filter(j => !counts.has(j)), [], 'jobs never done')
  console.log(`  [figure] swarm shop update: ${jobs} jobs pushed during it, each done once`)
  assert.is(((await (await fetch(`${base}/api/orders`)).json()) as { version: string }).version, 'v2')
  assert.match(nodes[0].sh("docker service ls --filter name=shop_worker --format '{{.Image}}'"), /shop-worker:v2/)
  assert.equal(where('shop_backend_a shop_backend_b'), ['it-swarms-1', 'it-swarms-1', 'it-swarms-1'], 'v2\'s API tasks on the data node too')
  // The API's uploads and Redis's volume are backed up on the data node (Redis after a BGSAVE there), beside PostgreSQL.
  const bk = await runbook('backup', ['--config', shopEnv, '--yes'], { BACKUP_VOLUMES: 'uploads,redis_data', BACKUP_DIR: join(dir, 'backups') })
  assert.is(bk.code, 0, bk.out)
  assert.match(bk.out, /Volumes stored as tar files \(uploads; redis_data, Redis BGSAVE first\) .*changed/)
  assert.match(bk.out, /PostgreSQL shop dumped .*changed/)
})

const https = () => `https://127.0.0.1:${nodes[0].vps.httpsPort}`
const tls = () => ({ servername: DOMAIN, ca: root })
/** What nginx on the edge answers over HTTPS for deita.test (HTTP/1.0: a body without chunks). */
function get(path: string, method = 'GET', body = ''): Promise<{ status: number; body: string; hsts?: string }> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port: nodes[0].vps.httpsPort, servername: DOMAIN, ca: root }, () => {
      s.write(`${method} ${path} HTTP/1.0\r\nHost: ${DOMAIN}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
    })
    let text = ''
    s.on('data', c => { text += c }).on('end', () => {
      const [head, body = ''] = text.split('\r\n\r\n')
      resolve({ status: Number(head.split(' ')[1]), body, hsts: /strict-transport-security: ([^\r]+)/i.exec(head)?.[1] })
    }).on('error', reject)
  })
}
const serial = () => new Promise<string>((resolve, reject) => {
  const s = connect({ host: '127.0.0.1', port: nodes[0].vps.httpsPort, servername: DOMAIN, ca: root }, () => { resolve(s.getPeerCertificate().serialNumber); s.end() }).on('error', reject)
})

test('the Deita example on the cluster over HTTPS: a certificate from Pebble on the edge; the backend with its DuckDB volume on the data node, updated under HTTPS load on both routes (0 failed); renewed under load (0 failed); backed up with the DuckDB file, drilled', async () => {
  nodes[0].sh('docker stack rm shop >/dev/null; for i in $(seq 60); do [ -z "$(docker ps -aq --filter label=com.docker.stack.namespace=shop)" ] && break; sleep 1; done')
  const env = join(nodes[0].dir, '.env.deita')
  writeFileSync(env, [...cluster, 'APP_NAME=deita', `COMPOSE_FILE=${join(ROOT, 'templates', 'examples', 'deita', 'compose.yml')}`, `REGISTRY=${EXAMPLE_REGISTRY}`,
    `POSTGRES_IMAGE=${pg}`, 'POSTGRES_PASSWORD=deita-Postgres-pw-5521', `PROXY_IMAGE=${ngx}`, 'IMAGE_SOURCE=local', 'HEALTH_TIMEOUT=30', 'DRAIN_SECONDS=1',
    'DUCKDB_FILE=backend:/app/data/deita.duckdb', `BACKUP_DIR=${join(nodes[0].dir, 'backups')}`,
    ''].join('\n'))
  // First over HTTP; then TLS_DOMAINS is added and deploy runs again: nginx is started again with 443 and the certificate's directories.
  const d = await runbook('deploy', ['--config', env, '--version', 'v1', '--json'])
  assert.is(d.code, 0, d.out)
  assert.match(d.out, /backend on the data node with its volume/)
  assert.is((await fetch(`${base}/v1/items`)).status, 200)
  appendFileSync(env, [`TLS_DOMAINS=${DOMAIN}`, `ACME_EMAIL=ops@${DOMAIN}`, `ACME_DIRECTORY=${pebble!.directory}`, `ACME_CA_BUNDLE=${pebble!.apiCertFile}`, 'HSTS_MAX_AGE=31536000', ''].join('\n'))
  const dry = await runbook('deploy', ['--config', env, '--version', 'v1', '--dry-run', '--json'])
  assert.is(dry.code, 0, dry.out)
  assert.match(dry.json.steps.find((x: { title: string }) => x.title.startsWith('HTTPS certificate')).detail, /recreate nginx with port 443 and the certificate directories, issue a certificate for deita\.test/)
  const tlsOn = await runbook('deploy', ['--config', env, '--version', 'v1', '--json'])
  assert.is(tlsOn.code, 0, tlsOn.out)
  const cert = tlsOn.json.steps.find((x: { title: string }) => x.title.startsWith('HTTPS certificate'))
  assert.is(cert.state, 'changed', tlsOn.out)
  console.log(`  [figure] swarm: first certificate on the edge, nginx started again with 443: ${(cert.ms / 1000).toFixed(1)} s (${cert.detail})`)
  const res = await get('/v1/items')
  assert.is(res.status, 200, res.body)
  assert.is(res.hsts, 'max-age=31536000')
  const redirect = await new Promise<IncomingMessage>((resolve, reject) => httpRequest(`${base}/v1/items`, { headers: { host: DOMAIN } }, resolve).on('error', reject).end())
  redirect.resume()
  assert.is(redirect.statusCode, 301)
  assert.is(redirect.headers.location, `https://${DOMAIN}/v1/items`)
  assert.equal(where('deita_backend_a deita_backend_b'), ['it-swarms-1'], 'the backend on the data node, with its DuckDB volume')
  const again = await runbook('deploy', ['--config', env, '--version', 'v1', '--json'])
  assert.is(again.code, 0, again.out)
  assert.is(again.json.counts.changed, 0, again.out)
  const t0 = Date.now()
  const { result: up, loads: [api, spa] } = await loadBoth(`${https()}/v1/items`, `${https()}/`, () => runbook('update', ['--config', env, '--version', 'v2']), tls())
  const wall = (Date.now() - t0) / 1000
  assert.is(up.code, 0, up.out)
  for (const [name, l] of [['/v1/', api], ['/', spa]] as const) {
    figure(`swarm Deita update v1 -> v2 under HTTPS load on ${name}`, l, wall)
    assert.is(l.failed, 0, `${name}: ${l.failed} failed of ${l.ok + l.failed}: ${l.errors.slice(0, 5).join(', ')}`)
  }
  assert.is(JSON.parse((await get('/v1/items')).body).version, 'v2')
  assert.equal(where('deita_backend_a deita_backend_b'), ['it-swarms-1'], "v2's backend on the data node too")
  // A renewal forced on the edge while HTTPS requests keep coming, on kept and new connections.
  const before = await serial()
  const keep = startLoad(`${https()}/v1/items`, { tls: tls() }), fresh = startLoad(`${https()}/v1/items`, { workers: 2, fresh: true, tls: tls() })
  await waitFor('load to start', () => keep.result().ok > 20 && fresh.result().ok > 20)
  const renewed = await new Promise(r => spawn('docker', ['exec', nodes[0].vps.container, 'sh', '-c', 'RENEW_DAYS=100000 /usr/local/sbin/opsbook-certs-deita renew'], { stdio: 'ignore' }).on('close', r))
  assert.is(renewed, 0, 'the renewal script')
  await new Promise(r => setTimeout(r, 1000))
  const [k, f] = [await keep.stop(), await fresh.stop()]
  assert.is(k.failed + f.failed, 0, [...k.errors, ...f.errors].join(', '))
  assert.is.not(await serial(), before, 'the renewed certificate is served')
  console.log(`  [figure] swarm: renewal under HTTPS load: ${k.ok + f.ok} requests (${f.ok} on new connections), 0 failed`)
  const s = await runbook('status', ['--config', env])
  assert.match(s.out, /Certificate \(deita\.test from Pebble.*, \d+ days left\)/)
  assert.is((await get('/v1/duckdb/mark', 'POST', 'before-backup')).status, 200)
  const marked = await get('/v1/duckdb/kinds')
  assert.ok(JSON.parse(marked.body).kinds.includes('marker'), marked.body)
  const bk = await runbook('backup', ['--config', env, '--yes', '--json'])
  assert.is(bk.code, 0, bk.out)
  assert.match(bk.out, /DuckDB file copied, verified and stored \(deita\.duckdb, brief freeze\) .*changed/)
  const drill = await runbook('restore', ['--config', env, '--drill', '--latest', '--yes'])
  assert.is(drill.code, 0, drill.out)
  assert.match(drill.out, /DuckDB: \d+ tables as in the manifest/)
  assert.is(nodes[0].sh('docker ps -aq --filter label=opsbook.drill=1').trim(), '', 'the drill left nothing behind')
})

test('cleanup: the nodes, the registry and their network', () => {
  for (const n of nodes) n.vps.destroy()
  reg?.destroy()
  pebble?.destroy()
  docker(['network', 'rm', NETWORK], { check: false })
})

test.run()
