import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { defaultManagers, loadConfig } from '../../lib/config.ts'
import { UsageError } from '../../lib/errors.ts'
import { clusterCommands, clusterNodes, describeNodes, describeServices, joinRequest, parseFacts, parseNodes, selfOf } from '../../lib/host/cluster.ts'
import { firewallPlan } from '../../lib/host/provision/firewall.ts'
import { swarmFirewallCommands, swarmFirewallPlan } from '../../lib/host/provision/swarm.ts'
import { parse as parseYaml } from 'yaml'
import { stackOf } from '../../lib/stack/stack.ts'
import { renderRoutes } from '../../lib/stack/routes.ts'
import { migrationCommands } from '../../lib/stack/migrations.ts'
import { splitWords, swarmOneOff } from '../../lib/stack/oneoff.ts'
import { checkSwarmStack, parseSwarmState, renderSwarmStack, swarmCommands, swarmVersion } from '../../lib/stack/swarm.ts'
import { serviceCommands } from '../../lib/stack/engine.ts'

const dir = join(import.meta.dirname, '..', '.tmp', 'cluster')
mkdirSync(dir, { recursive: true })
const config = (lines: string[]) => {
  const p = join(dir, '.env.c')
  writeFileSync(p, lines.join('\n') + '\n')
  return loadConfig({ envFile: p, environ: {} })
}
const THREE = ['SSH_HOSTS=n1,n2:2222,n3', 'ENGINE=swarm']

test('managers: a third of the nodes rounded down to odd, at least one', () => {
  assert.equal([1, 2, 3, 5, 6, 9, 12, 15].map(defaultManagers), [1, 1, 1, 1, 1, 3, 3, 5])
})

test('roles: the first SWARM_MANAGERS nodes manage; the first is edge and data', () => {
  const c = config([...THREE, 'SWARM_MANAGERS=3'])
  assert.equal(clusterNodes(c).map(n => [n.label, n.manager, n.edge, n.data]), [['n1', true, true, true], ['n2:2222', true, false, false], ['n3', true, false, false]])
  assert.is(selfOf({ ...c, ssh: { ...c.ssh, host: 'n2', port: 2222 } }).label, 'n2:2222')
  assert.is(clusterNodes(config(THREE)).filter(n => n.manager).length, 1)
  assert.is(config(['SSH_HOSTS=a,b']).cluster, undefined, 'compose is the default engine')
})

test('an even or too large manager count is refused in one sentence', () => {
  for (const [extra, re] of [['SWARM_MANAGERS=2', /SWARM_MANAGERS=2 .* odd number of managers/], ['SWARM_MANAGERS=5', /SWARM_MANAGERS=5 .* names 3 node/], ['SWARM_INTERFACE=eth0;reboot', /SWARM_INTERFACE .* an interface name/]] as const) {
    try { config([...THREE, extra]); assert.unreachable() } catch (e) { assert.instance(e, UsageError); assert.match((e as Error).message, re) }
  }
})

test('facts: address, swarm state of a manager and of a worker', () => {
  const [n] = clusterNodes(config(THREE))
  assert.equal(parseFacts(n, 'addr=10.0.0.2\nhostname=n1\nswarm=active true ID1 CL1 10.0.0.2:2377,\n').swarm, { state: 'active', nodeId: 'ID1', control: true, clusterId: 'CL1', managers: ['10.0.0.2:2377'] })
  assert.equal(parseFacts(n, 'addr=10.0.0.3\nhostname=n2\nswarm=active false ID2  10.0.0.2:2377,\n').swarm, { state: 'active', nodeId: 'ID2', control: false, clusterId: '', managers: ['10.0.0.2:2377'] })
  assert.is(parseFacts(n, 'addr=10.0.0.3\nhostname=n2\nswarm=inactive false   \n').swarm.state, 'inactive')
  assert.throws(() => parseFacts(n, 'hostname=n1\nswarm=\n'), /set SWARM_INTERFACE/)
  assert.match(clusterCommands.facts('eth1'), /ip -4 -o addr show dev eth1/)
})

test('the join token travels on stdin (a JSON request to Docker\'s API), never in a command line', () => {
  assert.is(clusterCommands.join(), "curl -sS --fail-with-body --unix-socket /var/run/docker.sock -H 'Content-Type: application/json' --data-binary @- http://localhost/swarm/join")
  assert.equal(JSON.parse(joinRequest('10.0.0.3', '10.0.0.2', 'SWMTKN-1-x')), { ListenAddr: '10.0.0.3:2377', AdvertiseAddr: '10.0.0.3', RemoteAddrs: ['10.0.0.2:2377'], JoinToken: 'SWMTKN-1-x' })
  assert.is(clusterCommands.update('ID1', 'worker', [], ['opsbook.data']), 'docker node update --role worker --label-rm opsbook.data ID1 >/dev/null')
  assert.is(clusterCommands.update('ID2', 'worker', []), 'docker node update --role worker  ID2 >/dev/null')
  assert.is(clusterCommands.update('ID1', 'manager', ['opsbook.edge']), 'docker node update --role manager --label-add opsbook.edge=true ID1 >/dev/null')
})

test('swarm ports: every port from every other node, only what is missing; rules for a former node are closed', () => {
  const tag = 'comment=6f7073626f6f6b2d737761726d'
  const have = `tcp 2377 10.0.0.3 ${tag}\ntcp 7946 10.0.0.3 ${tag}\nudp 7946 10.0.0.3 ${tag}\nudp 4789 10.0.0.3 ${tag}\ntcp 22 0.0.0.0/0 in\ntcp 5432 10.0.0.9 in\n`
  assert.equal(swarmFirewallPlan(have, ['10.0.0.3']), { allow: [], remove: [] })
  assert.equal(swarmFirewallPlan(have, ['10.0.0.3', '10.0.0.4']).allow.map(r => `${r.proto} ${r.port} ${r.from}`), ['tcp 2377 10.0.0.4', 'tcp 7946 10.0.0.4', 'udp 7946 10.0.0.4', 'udp 4789 10.0.0.4'])
  const gone = swarmFirewallPlan(have, ['10.0.0.4'])
  assert.equal(gone.remove.map(r => `${r.proto} ${r.port} ${r.from}`), ['tcp 2377 10.0.0.3', 'tcp 7946 10.0.0.3', 'udp 7946 10.0.0.3', 'udp 4789 10.0.0.3'], 'only opsbook\'s own rules, never the operator\'s (5432 from 10.0.0.9 stays)')
  assert.is(swarmFirewallCommands.allow([{ proto: 'udp', port: 4789, from: '10.0.0.4' }]), 'ufw allow proto udp from 10.0.0.4 to any port 4789 comment opsbook-swarm >/dev/null')
  assert.is(swarmFirewallCommands.remove([{ proto: 'udp', port: 4789, from: '10.0.0.3' }]), 'ufw delete allow proto udp from 10.0.0.3 to any port 4789 >/dev/null')
})

test('a node that is not the edge closes the public ports, never SSH', () => {
  const s = { installed: true, active: true, allowed: [22, 80, 443], sshPorts: [22] }
  assert.equal(firewallPlan(s, [], [80, 443, 22]), { allow: [], enable: false, installed: true, close: [80, 443] })
  assert.equal(firewallPlan(s, [80, 443]), { allow: [], enable: false, installed: true })
})

test('status: services with their replicas and where the running ones are', () => {
  const out = 'svc app_app_a 3/3\nsvc app_db 1/1\ntask app_app_a.1 n1 Running 2 minutes ago\ntask app_app_a.2 n2 Running 2 minutes ago\ntask app_app_a.3 n2 Running 1 minute ago\ntask app_db.1 n1 Running 5 minutes ago\ntask app_app_a.4 n3 Preparing 1 second ago\n'
  assert.is(describeServices(out), 'app_app_a 3/3 (n1 1, n2 2); app_db 1/1 (n1 1)')
})

test('status: nodes with role, leader, opsbook labels; a down node is named', () => {
  const nodes = parseNodes([
    '{"name":"n1","state":"ready","addr":"10.0.0.2","availability":"active","role":"manager","leader":true,"labels":{"opsbook.data":"true","opsbook.edge":"true"}}',
    '{"name":"n2","state":"down","addr":"10.0.0.3","availability":"active","role":"worker","leader":false,"labels":null}',
  ].join('\n'))
  assert.equal(describeNodes(nodes), { text: 'n1 ready manager (leader) data,edge; n2 down worker', down: ['n2'] })
})

const SWARM = [...THREE, 'APP_IMAGE=registry.example.com/app', 'DB_PASSWORD=swarm-secret-1', 'APP_REPLICAS=3']

test('the stack file: slots as dnsrr services spread over nodes, PostgreSQL on the data node, nginx on the edge publishing in host mode', () => {
  const st = stackOf(config(SWARM))
  const doc = parseYaml(renderSwarmStack(st, { web: new Map([['app', { a: 'v1', b: 'v2' }]]), workers: 'v2' }))
  assert.equal(Object.keys(doc.services).sort(), ['app_a', 'app_b', 'db', 'proxy'])
  assert.is(doc.services.app_b.image, 'registry.example.com/app:v2')
  assert.equal(doc.services.app_b.deploy, { endpoint_mode: 'dnsrr', replicas: 3, placement: { preferences: [{ spread: 'node.id' }] } })
  // Each slot reads its own copies, taken when it started: a rotated secrets.env never changes a serving slot in place.
  assert.equal(doc.services.app_a.env_file, ['env/app_app_a/app.env', 'env/app_app_a/secrets.env'])
  assert.equal(doc.services.app_b.env_file, ['env/app_app_b/app.env', 'env/app_app_b/secrets.env'])
  assert.not.ok('depends_on' in doc.services.app_a || 'restart' in doc.services.app_a)
  assert.equal(doc.services.db.deploy.placement, { constraints: ['node.labels.opsbook.data==true'] })
  // Interpolated once by opsbook; the $ meant for the container's shell is kept from stack deploy's own interpolation.
  assert.match(doc.services.db.healthcheck.test[1], /-U "\$\$POSTGRES_USER" -d "\$\$POSTGRES_DB"/)
  assert.equal(doc.services.proxy.ports, [{ target: 80, published: 80, protocol: 'tcp', mode: 'host' }])
  assert.equal(doc.services.proxy.deploy.placement, { constraints: ['node.labels.opsbook.edge==true'] })
  assert.equal(doc.networks.default, { name: 'app_cluster', driver: 'overlay', attachable: true })
  const routes = renderRoutes(st.model, undefined, { project: 'app' })
  assert.match(routes, /resolver 127\.0\.0\.11 valid=1s ipv6=off;/)
  assert.match(routes, /set \$opsbook_app app_app_a:8080;\n {2}if \(-f \/etc\/nginx\/conf\.d\/app\.slot-b\) \{\n {4}set \$opsbook_app app_app_b:8080;/)
})

test('the cluster runs a version when the live slot has every replica', () => {
  const st = stackOf(config(SWARM))
  const state = parseSwarmState('svc\tapp_app_a\tregistry.example.com/app:v1@sha256:ab12\t3/3\nsvc\tapp_app_b\tregistry.example.com/app:v2\t3/3\nsvc\tapp_db\tpostgres:17\t1/1\nb\tapp\nproxy\tc0ffee\n')
  assert.is(swarmVersion(st, state), 'v2')
  assert.is(state.proxy, 'c0ffee')
  assert.is(swarmVersion(st, parseSwarmState('svc\tapp_app_a\tregistry.example.com/app:v1\t2/3\nproxy\t\n')), undefined)
})

test('a service with a named volume runs on the data node, both slots and every replica; the others spread', () => {
  const shop = join(import.meta.dirname, '..', '..', 'templates', 'examples', 'shop', 'compose.yml')
  const st = stackOf(config([...THREE, `COMPOSE_FILE=${shop}`, 'POSTGRES_PASSWORD=shop-pw-123']))
  checkSwarmStack(st)
  const doc = parseYaml(renderSwarmStack(st, { web: new Map([['backend', { a: 'v1', b: 'v2' }], ['frontend', { a: 'v1' }]]), workers: 'v1' }))
  for (const slot of ['backend_a', 'backend_b']) {
    assert.equal(doc.services[slot].deploy.placement, { constraints: ['node.labels.opsbook.data==true'] }, slot)
    assert.equal(doc.services[slot].volumes, ['uploads:/app/uploads'], slot)
  }
  assert.equal(doc.services.frontend_a.deploy.placement, { preferences: [{ spread: 'node.id' }] })
  assert.equal(doc.services.worker.deploy.placement, { preferences: [{ spread: 'node.id' }] })
})

test('a migration on a cluster: a one-off container of the release on the data node, in the network of a stack container there (not attached to the overlay); its environment on stdin, never on the command line', () => {
  const st = stackOf(config([...SWARM, 'MIGRATE_COMMAND=npm run migrate', 'MIGRATE_DOWN_COMMAND=npm run down']))
  checkSwarmStack(st)
  const up = migrationCommands.run(st, 'v2', st.migrate!.command)
  assert.is(up.command, "c=$( { docker ps -q --filter label=com.docker.swarm.service.name=app_db; docker ps -q --filter label=com.docker.swarm.service.name=app_proxy; } | head -n 1); set --; set -- \"$@\" --env-file /opt/app/app.env; set -- \"$@\" --env-file /opt/app/secrets.env; docker run ${c:+--network \"container:$c\"} --rm --label opsbook.oneoff=1 \"$@\" --env-file /dev/stdin -v app_app-data:/data registry.example.com/app:v2 sh -c 'npm run migrate'", 'the env files in their order, then the environment, which wins over them')
  assert.not.match(up.command, /swarm-secret-1/)
  assert.is(up.stdin, 'PORT=8080\n')
  const down = migrationCommands.run(st, 'v2', st.migrate!.down!, { OPSBOOK_ROLLBACK_TO: 'v1' })
  assert.is(down.stdin, 'PORT=8080\nOPSBOOK_ROLLBACK_TO=v1\n')
  // An operator's stack: its environment (a password in DATABASE_URL) on stdin, its named volume under the stack's name.
  const shop = join(import.meta.dirname, '..', '..', 'templates', 'examples', 'shop', 'compose.yml')
  const s2 = stackOf(config([...THREE, `COMPOSE_FILE=${shop}`, 'POSTGRES_PASSWORD=shop-pw-123']))
  const o = swarmOneOff(s2, 'backend', 'v3', 'node migrate.js')
  assert.match(o.command, /"\$@" --env-file \/dev\/stdin -v app_uploads:\/app\/uploads ghcr\.io\/acme\/shop-backend:v3 sh -c 'node migrate\.js'$/)
  assert.not.match(o.command, /shop-pw-123/)
  assert.match(o.stdin!, /^DATABASE_URL=postgres:\/\/shop:shop-pw-123@postgres:5432\/shop$/m)
  // Without a command: the service's own; a list entrypoint as docker run's --entrypoint and its first arguments.
  const doc = { services: { job: { image: 'x:${APP_VERSION}', entrypoint: ['/bin/tini', '--'], command: ['migrate', '--all'], user: '1000', working_dir: '/w', environment: ['A=1', 'B'], init: true } } }
  const s3 = { ...s2, composeText: JSON.stringify(doc) }
  const j = swarmOneOff(s3, 'job', 'v1', undefined)
  assert.match(j.command, /"\$@" --env-file \/dev\/stdin --entrypoint \/bin\/tini -u 1000 -w \/w --init x:v1 -- migrate --all$/)
  assert.is(j.stdin, 'A=1\n', 'a name without a value is not passed')
  const one = (svc: Record<string, unknown>) => swarmOneOff({ ...s3, composeText: JSON.stringify({ services: { job: { image: 'x', ...svc } } }) }, 'job', 'v1', undefined)
  assert.throws(() => one({ environment: { K: 'a\nb' } }), /environment K: a value over several lines/)
  // A string is split into words as compose does, with no shell between: an image's own entrypoint gets them as arguments.
  assert.match(one({ command: `-url="jdbc:x y" migrate $$HOME && a\\ b` }).command, / x '-url=jdbc:x y' migrate '\$HOME' '&&' 'a b'$/)
  assert.match(one({ entrypoint: 'flyway -X', command: ['migrate'] }).command, /--entrypoint flyway x -X migrate$/)
  assert.equal(splitWords(` a  'b c'"d"\\ e "f\\"g" ''`), ['a', 'b cd e', 'f"g', ''])
  assert.throws(() => one({ secrets: ['db_password'] }), /service job, secrets: a one-off container of it on a cluster \(a migration, exec\.ts\) would run without it/)
  // An env file that may be absent (required: false) is read only where it exists.
  const model = { ...s3.model, services: [{ ...s3.model.services[0], name: 'job', envFiles: [{ path: 'opt.env', required: false }] }] }
  assert.match(swarmOneOff({ ...s3, model, composeText: JSON.stringify({ services: { job: { image: 'x' } } }) }, 'job', 'v1', 'true').command,
    /set --; \[ ! -f \/opt\/app\/opt\.env \] \|\| set -- "\$@" --env-file \/opt\/app\/opt\.env; docker run/)
})

test('HTTPS on a cluster: nginx on the edge publishes 443 too and mounts the directories lego writes there; routes by DNS name, HTTPS once the certificate exists', () => {
  const st = stackOf(config([...SWARM, 'TLS_DOMAINS=example.com', 'ACME_EMAIL=ops@example.com']))
  checkSwarmStack(st)
  const proxy = parseYaml(renderSwarmStack(st, { web: new Map([['app', { a: 'v1' }]]), workers: 'v1' })).services.proxy
  assert.equal(proxy.ports, [{ target: 80, published: 80, protocol: 'tcp', mode: 'host' }, { target: 443, published: 443, protocol: 'tcp', mode: 'host' }])
  assert.equal(proxy.volumes, ['/opt/app/proxy:/etc/nginx/conf.d:ro', '/opt/app/acme:/var/www/acme:ro', '/opt/app/tls:/etc/nginx/tls:ro'])
  const plain = parseYaml(renderSwarmStack(stackOf(config(SWARM)), { web: new Map([['app', { a: 'v1' }]]), workers: 'v1' })).services.proxy
  assert.equal([plain.ports.length, plain.volumes.length], [1, 1], 'without TLS_DOMAINS nginx is as before')
  assert.ok(parseSwarmState('proxy\tabc\ntls\n').tls)
  assert.not.ok(parseSwarmState('proxy\tabc\n').tls)
})

test('what the cluster does not do yet is refused before a host is contacted', () => {
  // A DuckDB file is backed up through its service, pinned with its volume to the data node.
  checkSwarmStack(stackOf(config([...SWARM, 'DUCKDB_FILE=app.duckdb'])))
  checkSwarmStack(stackOf(config(SWARM)))
})

test('data commands run in the service\'s container on the data node: docker exec there, a clear sentence when it has none', () => {
  const st = stackOf(config(SWARM))
  const exec = serviceCommands.exec(st, 'db', 'pg_dumpall --globals-only -U app', ['-e', 'PGAPPNAME=x y'])
  assert.is(exec, "{ c=$(docker ps -q --filter label=com.docker.swarm.service.name=app_db | head -n 1); [ -n \"$c\" ] || { echo 'app_db has no running container on this node (the data node): see docker service ps app_db' >&2; exit 3; }; docker exec -i -e 'PGAPPNAME=x y' \"$c\" pg_dumpall --globals-only -U app; }")
  const compose = serviceCommands.exec(stackOf(config(['SSH_HOST=n1', 'APP_IMAGE=registry.example.com/app', 'DB_PASSWORD=swarm-secret-1'])), 'db', 'pg_dumpall --globals-only -U app')
  assert.match(compose, /docker compose -p app exec -T db pg_dumpall --globals-only -U app$/)
  // A web service is its two slots; stopping scales them to 0, starting back to the stack's replicas.
  assert.match(serviceCommands.stop(st, ['app']), /app_app_a\|app_app_b\) set -- "\$@" "\$s=0";;/)
  assert.match(serviceCommands.start(st, ['app']), /app_app_a\|app_app_b\) set -- "\$@" "\$s=3";;/)
  assert.match(serviceCommands.start(st, ['db']), /app_db\) set -- "\$@" "\$s=1";;/)
})

test('a slot\'s env copies: made fresh for a slot about to start, only when missing for a live one', () => {
  const st = stackOf(config(SWARM))
  const fresh = swarmCommands.slotEnv(st, [{ slot: 'app_app_b', files: ['secrets.env'] }], true)
  assert.match(fresh, /cat \/opt\/app\/secrets.env; fi; } \| install -m 600 -o deploy -g deploy \/dev\/stdin \/opt\/app\/env\/app_app_b\/secrets.env$/)
  const kept = swarmCommands.slotEnv(st, [{ slot: 'app_app_a', files: ['secrets.env'] }], false)
  assert.match(kept, /\[ -f \/opt\/app\/env\/app_app_a\/secrets.env \] \|\| \{ /)
  assert.match(swarmCommands.staleOn(st, 'app', '/opt/app/secrets.env'), /cmp -s "\$c" \/opt\/app\/secrets.env \|\| n=1/)
})

test('from a registry, stack deploy sends the login along (--with-registry-auth); shipped images need none', () => {
  assert.match(swarmCommands.deploy(stackOf(config([...SWARM, 'IMAGE_SOURCE=registry'])), false), /docker stack deploy --prune --detach=true --with-registry-auth -c swarm.yml app 2>&1$/)
  assert.match(swarmCommands.deploy(stackOf(config([...SWARM, 'IMAGE_SOURCE=local'])), true), /docker stack deploy --prune --detach=false -c swarm.yml app 2>&1$/)
})

test.run()
