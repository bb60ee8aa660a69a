import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { UsageError } from '../../lib/errors.ts'
import { imageAt, interpolate, loadModel, parseModel, versionOf, type StackModel } from '../../lib/stack/model.ts'
import { referencedVariables } from '../../lib/values.ts'

const examples = join(import.meta.dirname, '..', '..', 'templates', 'examples')
const vars = { POSTGRES_PASSWORD: 'pw-123456789', APP_PORT: '8080' }
const parse = (yaml: string) => parseModel(yaml, 'deploy/compose.yml', { vars })
const refused = (yaml: string, re: RegExp) => {
  try { parse(yaml); assert.unreachable('should have been refused') } catch (e) {
    assert.instance(e, UsageError)
    const msg = (e as Error).message
    assert.match(msg, re)
    assert.match(msg, /^deploy\/compose\.yml/, 'names the file first')
    assert.not.match(msg, /\n/, 'one line')
  }
}
const svc = (m: StackModel, name: string) => m.services.find(s => s.name === name)!

test('the Deita-shaped example: two web services routed by path, PostgreSQL as an accessory', () => {
  const m = loadModel(join(examples, 'deita', 'compose.yml'), { vars })
  assert.equal(m.services.map(s => `${s.name}:${s.role}`), ['backend:web', 'frontend:web', 'postgres:accessory'])
  const b = svc(m, 'backend')
  assert.equal(b.routes, [{ host: undefined, path: '/v1/' }])
  assert.is(b.port, 8000)
  assert.is(b.health, '/v1/health')
  assert.is(imageAt(b, 'v7'), 'ghcr.io/acme/deita-backend:v7')
  assert.is(versionOf(b, 'ghcr.io/acme/deita-backend:v7'), 'v7')
  assert.is(versionOf(b, 'ghcr.io/acme/deita-frontend:v7'), undefined)
  assert.equal(b.volumes, { duckdb_data: '/app/data' })
  assert.is(svc(m, 'backend').environment.DATABASE_URL, 'postgres://deita:pw-123456789@postgres:5432/deita')
  assert.is(svc(m, 'postgres').image, 'postgres:17')
  assert.equal(m.postgres, { service: 'postgres', user: 'deita', database: 'deita' })
  assert.is(svc(m, 'backend').stopGrace, 10)
})

test('the shop example: a worker with a health check and a grace period, Redis as an accessory', () => {
  const m = loadModel(join(examples, 'shop', 'compose.yml'), { vars: { ...vars, REGISTRY: 'localhost:5000/shop' } })
  assert.equal(m.services.map(s => `${s.name}:${s.role}`), ['backend:web', 'frontend:web', 'worker:worker', 'postgres:accessory', 'redis:accessory'])
  const w = svc(m, 'worker')
  assert.ok(w.healthcheck)
  assert.is(w.stopGrace, 30)
  assert.is(imageAt(w, 'v2'), 'localhost:5000/shop/shop-worker:v2')
  assert.equal(svc(m, 'frontend').routes, [{ host: undefined, path: '/' }])
  assert.equal(m.volumes, ['pgdata', 'uploads', 'redis_data'])
})

test('the built-in stack is a compose file like any other', () => {
  const m = loadModel(join(examples, '..', 'compose.yml'), {
    vars: { APP_IMAGE: 'registry.example.com/app', APP_PORT: '8080', APP_HEALTH_PATH: '/health', DB_IMAGE: 'postgres:17', DB_USER: 'app', DB_PASSWORD: 'x', DB_NAME: 'app' },
    defaultReplicas: 2,
  })
  assert.equal(m.services.map(s => `${s.name}:${s.role}`), ['db:accessory', 'app:web'])
  assert.is(svc(m, 'app').replicas, 2)
  assert.is(svc(m, 'app').health, '/health')
  assert.equal(m.postgres, { service: 'db', user: 'app', database: 'app' })
})

test('interpolation as compose does it', () => {
  const v = { A: 'a', E: '' }
  const at = () => 'here'
  assert.is(interpolate('x${A}y$A-$$A', v, at), 'xay a-$A'.replace(' ', ''))
  assert.is(interpolate('${E:-d}|${E-d}|${U-d}|${A:+r}|${E+r}|${U:-${A}}', v, at), 'd||d|r|r|a')
  assert.throws(() => interpolate('${U:?needs U}', v, at), /here: U is not set \(needs U\)/)
  assert.throws(() => interpolate('${A', v, at), /closing/)
  assert.equal(referencedVariables('image: ${REG:-x}/a:${APP_VERSION}\ncmd: $$HOME $PORT'), ['REG', 'APP_VERSION', 'PORT'])
})

test('hosts and several paths make several routes; a clash is refused', () => {
  const m = parse(`services:
  api: { image: "a/api:\${APP_VERSION}", labels: { opsbook.port: "8000", opsbook.host: "api.example.com, api2.example.com", opsbook.route: "/, /v2/" } }
  web: { image: "a/web:\${APP_VERSION}", labels: { opsbook.port: "80" } }
`)
  assert.is(svc(m, 'api').routes.length, 4)
  assert.is(svc(m, 'api').health, '/')
  refused(`services:
  api: { image: "a/api:\${APP_VERSION}", labels: { opsbook.port: "8000", opsbook.route: /v1/ } }
  web: { image: "a/web:\${APP_VERSION}", labels: { opsbook.port: "80", opsbook.route: "/, /v1/" } }
`, /service web, label opsbook\.route: any host \/v1\/ is already routed to api/)
})

test('bad compose files are refused with one sentence naming the file, service and key', () => {
  refused('services: [a', /is not valid YAML \(line \d+\)/)
  refused('version: "3"\n', /has no services/)
  refused('services:\n  api:\n    build: .\n    labels: { opsbook.port: "80" }\n', /service api, image: opsbook builds the image of build: on this machine and needs its name and tag; add image: api:\$\{APP_VERSION\} beside build:/)
  refused('services:\n  api:\n    image: a/api:${APP_VERSION}\n    labels: { opsbook.route: /v1/ }\n', /service api, labels: a web service needs opsbook\.port/)
  refused('services:\n  api:\n    image: a/api:${APP_VERSION}\n    ports: ["80:8000"]\n    labels: { opsbook.port: "8000" }\n', /service api, ports: publishing 80:8000 on the host bypasses the firewall/)
  refused('services:\n  api: { image: "a/api:${APP_VERSION}", labels: { opsbook.port: "8000" } }\n  w: { image: "a/w:${APP_VERSION}" }\n', /service w, healthcheck: opsbook cannot tell when a new worker is healthy/)
  refused('services:\n  api: { image: "a/api:${APP_VERSION}", labels: { opsbook.port: "8000" } }\n  db: { image: "postgres:17", ports: ["5432:5432"] }\n', /service db, ports: .*bind an accessory to 127\.0\.0\.1/)
  refused('services:\n  api: { image: "a/api:${APP_VERSION}", labels: { opsbook.port: "8000" }, volumes: ["uploads:/u"] }\n', /service api, volumes: the volume uploads is not declared/)
  refused('services:\n  api: { image: "a/api:${APP_VERSION}", container_name: api, labels: { opsbook.port: "8000" } }\n', /container_name: a fixed container name/)
  refused('services:\n  api: { image: "a/api:latest", labels: { opsbook.port: "8000" } }\n', /service api, image: a web service .* must use \$\{APP_VERSION\}/)
  refused('services:\n  api: { image: "a/api:${APP_VERSION}", labels: { opsbook.port: "80000" } }\n', /label opsbook\.port: "80000" is not a whole number/)
  refused('services:\n  api: { image: "a/api:${APP_VERSION}", labels: { opsbook.port: "80", opsbook.rout: /x/ } }\n', /label opsbook\.rout: unknown opsbook label/)
  refused('services:\n  proxy: { image: "nginx:1" }\n', /service proxy: the name "proxy" is opsbook's nginx/)
  refused('services:\n  db: { image: "postgres:17", environment: { P: "${PW:?set PW}" } }\n', /service db, environment\.P: PW is not set \(set PW\)/)
  refused('services:\n  db: { image: "redis:7" }\n', /has no web service/)
  refused('services:\n  api: { image: "a/api:${APP_VERSION}", labels: { opsbook.port: "80", opsbook.route: /v1/, opsbook.health: /health } }\n', /service api, label opsbook\.health: \/health is under none of its routes; use a path under \/v1\//)
  refused('services:\n  api: { image: "a/api:${APP_VERSION}", labels: { opsbook.port: "80", opsbook.health: /opsbook-maintenance } }\n', /service api, label opsbook\.health: paths under \/opsbook- are opsbook's nginx's own \(the maintenance page\)/)
  refused('services:\n  api: { image: "a/api:${APP_VERSION}", labels: { opsbook.port: "80", opsbook.route: /opsbook-x/ } }\n', /service api, label opsbook\.route: paths under \/opsbook- are opsbook's nginx's own/)
})

test('an accessory bound to 127.0.0.1 may publish; YAML anchors and merge keys work', () => {
  const m = parse(`x-common: &common
  restart: unless-stopped
  labels: { opsbook.port: "8000" }
services:
  api: { <<: *common, image: "a/api:\${APP_VERSION}" }
  db: { image: "postgres:17", ports: ["127.0.0.1:5432:5432"] }
`)
  assert.is(svc(m, 'api').port, 8000)
  assert.is(svc(m, 'db').role, 'accessory')
})

test.run()
