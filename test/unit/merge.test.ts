// Compose's merge of several files (lib/stack/merge.ts) rule by rule, the model read from a
// base + override pair, the project files they ship, and init.ts's override (lib/stack/adopt.ts).
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { mergeCompose, parseCompose, portKey } from '../../lib/stack/merge.ts'
import { mergedModel } from '../../lib/stack/model.ts'
import { projectPaths } from '../../lib/stack/project.ts'
import { installFiles } from '../../lib/host/files.ts'
import { imageRepo, loopback, planAdoption, renderAdoption, renderSettings } from '../../lib/stack/adopt.ts'

const merge = (...texts: string[]) => mergeCompose(texts.map((t, i) => parseCompose(t, `f${i}.yml`))) as any

test('mappings merge key by key, scalars and the shell commands are replaced, other lists append', () => {
  const m = merge(
    'services:\n  a:\n    image: x:1\n    command: ["a", "b"]\n    healthcheck: { test: ["CMD", "a"], interval: 5s }\n    cap_add: [NET_ADMIN]\n    restart: "no"\n',
    'services:\n  a:\n    image: x:2\n    command: ["c"]\n    healthcheck: { test: ["CMD", "b"] }\n    cap_add: [SYS_TIME]\n',
  )
  assert.equal(m.services.a, { image: 'x:2', command: ['c'], healthcheck: { test: ['CMD', 'b'], interval: '5s' }, cap_add: ['NET_ADMIN', 'SYS_TIME'], restart: 'no' })
})

test('environment and labels become KEY=value lists, the later value in the earlier place; env_file and volumes unique by path and target', () => {
  const m = merge(
    'services:\n  a:\n    environment: { A: "1", B: "2" }\n    labels: ["x=1"]\n    env_file: a.env\n    volumes: ["./c:/etc/c:ro", "data:/data"]\n',
    'services:\n  a:\n    environment: ["B=3", "C"]\n    labels: { y: "2" }\n    env_file: [a.env, b.env]\n    volumes: ["./d:/etc/c"]\n',
  )
  assert.equal(m.services.a.environment, ['A=1', 'B=3', 'C'])
  assert.equal(m.services.a.labels, ['x=1', 'y=2'])
  assert.equal(m.services.a.env_file, ['a.env', 'b.env'])
  assert.equal(m.services.a.volumes, ['./d:/etc/c', 'data:/data'])
})

test('ports are unique in their canonical form; !reset removes, !override replaces, both on new keys too', () => {
  assert.is(portKey('8000:8000'), portKey({ target: 8000, published: '8000' }))
  assert.is(portKey('127.0.0.1:5432:5432'), '127.0.0.1:5432:5432/tcp')
  const m = merge(
    'services:\n  a:\n    ports: ["8000:8000"]\n    container_name: a\n  db:\n    ports: ["5432:5432"]\n    networks: [front]\n',
    'services:\n  a:\n    ports: !reset []\n    container_name: !reset null\n    build: !reset\n  db:\n    ports: !override ["127.0.0.1:5432:5432"]\n    networks: { back: { aliases: [pg] } }\n',
  )
  assert.equal(m.services.a, {})
  assert.equal(m.services.db, { ports: ['127.0.0.1:5432:5432'], networks: { front: null, back: { aliases: ['pg'] } } })
})

test('!reset inside environment and labels maps, logging drivers, ulimits; each file interpolated before the merge', () => {
  const m = merge('services:\n  a:\n    environment: { FOO: "1", BAR: "2" }\n    labels: [x=1, y=2]\n    logging: { driver: json-file, options: { max-size: 1m } }\n    ulimits: { nofile: { soft: 1, hard: 2 } }\n',
    'services:\n  a:\n    environment: { FOO: !reset }\n    labels: { x: !reset , z: "3" }\n    logging: { driver: syslog }\n    ulimits: { nofile: 1024 }\n')
  assert.equal(m.services.a, { environment: ['BAR=2'], labels: ['y=2', 'z=3'], logging: { driver: 'syslog' }, ulimits: { nofile: 1024 } })
  const base = 'services:\n  api:\n    image: acme/api:${TAG:?set TAG}\n    labels: { opsbook.port: "80" }\n'
  assert.throws(() => mergedModel([{ file: 'c.yml', text: base }, { file: 'o.yml', text: 'services:\n  api:\n    image: acme/api:${APP_VERSION}\n' }], { vars: {} }), /^c\.yml, service api, image: TAG is not set \(set TAG\)/)
})

test('depends_on lists and maps merge as maps; build strings become contexts; anchors and <<: keys are read', () => {
  const m = merge(
    'x-r: &r\n  restart: always\nservices:\n  a:\n    <<: *r\n    depends_on: [db]\n    build: ./a\n',
    'services:\n  a:\n    depends_on: { cache: { condition: service_healthy } }\n    build: { args: [X=1] }\n',
  )
  assert.equal(m.services.a, {
    restart: 'always', build: { context: './a', args: ['X=1'] },
    depends_on: { db: { condition: 'service_started', required: true }, cache: { condition: 'service_healthy' } },
  })
})

test('the model of a base + override pair: labels from the override, published ports reset, bind mounts and env files', () => {
  const base = 'services:\n  web:\n    image: r/web:latest\n    ports: ["8000:8000"]\n    env_file: web.env\n    volumes: ["./conf:/etc/web:ro", "/var/run/docker.sock:/s"]\n  db:\n    image: postgres:17\n    environment: { POSTGRES_USER: u }\n'
  const over = 'services:\n  web:\n    image: r/web:${APP_VERSION}\n    ports: !reset []\n    labels: { opsbook.port: "8000" }\n'
  const m = mergedModel([{ file: 'compose.yml', text: base }, { file: 'ops.yml', text: over }], { vars: {} })
  assert.is(m.file, 'compose.yml + ops.yml')
  const web = m.services.find(s => s.name === 'web')!
  assert.is(web.role, 'web')
  assert.equal(web.binds, [{ source: './conf', target: '/etc/web', readOnly: true }, { source: '/var/run/docker.sock', target: '/s', readOnly: false }])
  assert.equal(web.envFiles, [{ path: 'web.env', required: true }])
  assert.throws(() => mergedModel([{ file: 'compose.yml', text: base }], { vars: {} }), /^compose\.yml, service web, ports: publishing 8000:8000 on the host bypasses the firewall/)
  assert.throws(() => mergedModel([{ file: 'compose.yml', text: 'services:\n  a:\n    extends: { service: b }\n    image: x\n' }], { vars: {} }), /compose\.yml, service a, extends: not supported/)

  const root = mkdtempSync(join(tmpdir(), 'opsbook-project-'))
  mkdirSync(join(root, 'conf', 'sub'), { recursive: true })
  writeFileSync(join(root, 'conf', 'a.conf'), 'a')
  writeFileSync(join(root, 'conf', 'sub', 'run.sh'), '#!/bin/sh\n', { mode: 0o755 })
  writeFileSync(join(root, 'web.env'), 'K=v\n')
  const p = projectPaths(m, root, [])
  assert.equal(p.files.map(f => `${f.path} ${f.mode}`), ['web.env 0600', 'conf/a.conf 0644', 'conf/sub/run.sh 0755'])
  assert.equal(p.hostPaths, ['/var/run/docker.sock (web)'])
  const data = projectPaths(m, root, ['conf'])
  assert.equal([data.files.map(f => f.path), data.dirs], [['web.env'], ['conf']], 'a data folder (BACKUP_VOLUMES=./conf) is created on the host, never shipped')
  const outside = mergedModel([{ file: 'c.yml', text: base.replace('./conf:', '../conf:') }, { file: 'o.yml', text: over }], { vars: {} })
  assert.throws(() => projectPaths(outside, root, []), /c\.yml \+ o\.yml, service web, volumes: \.\.\/conf is outside the project folder/)
  // A link out of the project, the settings file itself, and an accessory's database folder never travel.
  symlinkSync('/etc', join(root, 'conf', 'etc'))
  assert.throws(() => projectPaths(m, root, []), /conf\/etc beside the compose file is a link to \/etc, outside the project folder/)
  rmSync(join(root, 'conf', 'etc'))
  writeFileSync(join(root, '.env.production'), 'AWS_SECRET_ACCESS_KEY=x\n')
  const settingsAsEnv = mergedModel([{ file: 'c.yml', text: base.replace('env_file: web.env', 'env_file: .env.production') }, { file: 'o.yml', text: over }], { vars: {} })
  assert.throws(() => projectPaths(settingsAsEnv, root, [], join(root, '.env.production')), /env_file: \.env\.production is opsbook's settings file/)
  mkdirSync(join(root, 'pgdata'))
  writeFileSync(join(root, 'pgdata', 'PG_VERSION'), '17\n')
  const db = mergedModel([{ file: 'c.yml', text: base + '    volumes: ["./pgdata:/var/lib/postgresql/data"]\n' }, { file: 'o.yml', text: over }], { vars: {} })
  const pd = projectPaths(db, root, [])
  assert.ok(pd.dirs.includes('pgdata') && !pd.files.some(f => f.path.startsWith('pgdata/')), 'an accessory\'s folder at its data path is data')
  mkdirSync(join(root, 'initdb'))
  writeFileSync(join(root, 'initdb', 'schema.sql'), 'create table t (id int);\n')
  const init = mergedModel([{ file: 'c.yml', text: base + '    volumes: ["./initdb:/docker-entrypoint-initdb.d"]\n' }, { file: 'o.yml', text: over }], { vars: {} })
  assert.ok(projectPaths(init, root, []).files.some(f => f.path === 'initdb/schema.sql'), 'an accessory\'s init scripts travel')
  symlinkSync(join(root, '.env.production'), join(root, 'linked.env'))
  const linked = mergedModel([{ file: 'c.yml', text: base.replace('env_file: web.env', 'env_file: linked.env') }, { file: 'o.yml', text: over }], { vars: {} })
  assert.throws(() => projectPaths(linked, root, [], join(root, '.env.production')), /linked\.env beside the compose file is opsbook's settings file \(or a link to it\)/)
  const ours = mergedModel([{ file: 'c.yml', text: base.replace('env_file: web.env', 'env_file: .env') }, { file: 'o.yml', text: over }], { vars: {} })
  assert.throws(() => projectPaths(ours, root, []), /env_file: \.env is a name opsbook keeps in APP_DIR on the host/)
})

test('init: images to the release tag, published ports reset, accessories on loopback, health from the healthcheck URL; the same bytes twice', () => {
  assert.is(imageRepo('${REGISTRY:-ghcr.io/acme}/web:latest'), '${REGISTRY:-ghcr.io/acme}/web')
  assert.is(imageRepo('localhost:5000/web'), 'localhost:5000/web')
  assert.is(imageRepo('web@sha256:abc'), 'web')
  assert.is(loopback('5432:5432'), '127.0.0.1:5432:5432')
  assert.is(loopback('0.0.0.0:6379:6379'), '127.0.0.1:6379:6379')
  assert.is(loopback('9000'), '127.0.0.1:9000:9000')
  const text = 'services:\n  api:\n    image: acme/api\n    container_name: api\n    ports: ["8000:8000"]\n    command: sh -c "manage.py migrate && gunicorn"\n    healthcheck: { test: ["CMD", "curl", "-f", "http://localhost:8000/api/health"] }\n' +
    '  worker:\n    image: acme/api:1.2\n  redis:\n    image: redis:7\n    ports: ["6379:6379"]\n  db:\n    image: postgres:17\n    environment: { POSTGRES_PASSWORD: "${DB_PASSWORD:?}", TZ: "${TZ:-UTC}" }\n'
  const plan = planAdoption([{ file: 'compose.yml', text }])
  assert.equal(plan.services.map(s => `${s.name} ${s.role}`), ['api web', 'worker worker', 'redis accessory', 'db accessory'])
  const out = renderAdoption(plan, { routes: { api: '/api/' }, hosts: {} })
  assert.is(out, renderAdoption(planAdoption([{ file: 'compose.yml', text }]), { routes: { api: '/api/' }, hosts: {} }))
  assert.match(out, /api:\n {4}# Released.*\n {4}image: "acme\/api:\$\{APP_VERSION\}"\n {4}# A fixed name.*\n {4}container_name: !reset null\n {4}# opsbook's nginx is the entry.*\n {4}ports: !reset \[\]/)
  assert.match(out, /# Its start command migrates on every boot \(manage\.py migrate\)/)
  assert.match(out, /opsbook\.health: "\/api\/health"/)
  assert.match(out, /worker:\n.*\n {4}image: "acme\/api:\$\{APP_VERSION\}"\n {4}labels:\n.*\n {6}opsbook\.role: "worker"\n.*\n {6}opsbook\.settle: "10"/)
  assert.match(out, /redis:\n.*\n {4}ports: !override \["127\.0\.0\.1:6379:6379"\]/)
  assert.match(out, / {2}# db: accessory, nothing to change\./)
  // What init writes passes the checks deploy makes.
  const m = mergedModel([{ file: 'compose.yml', text }, { file: 'opsbook.override.yml', text: out }], { vars: { DB_PASSWORD: 'x' } })
  assert.equal(m.services.map(s => `${s.name} ${s.role}`), ['api web', 'worker worker', 'redis accessory', 'db accessory'])
  const settings = renderSettings(plan, 'compose.yml:opsbook.override.yml')
  assert.match(settings, /# secret: never printed; required\nDB_PASSWORD=\n/)
  assert.match(settings, /# default "UTC"\n# TZ=UTC\n/)
  assert.throws(() => planAdoption([{ file: 'c.yml', text: 'services:\n  proxy:\n    image: traefik\n' }]), /c\.yml, service proxy: "proxy" is the name of opsbook's nginx/)
})

test('many files are written in batches whose command stays under 100 KB (one argument may not pass 128 KiB)', async () => {
  const runs: { command: string; bytes: number }[] = []
  const t = { name: 'fake', run: async (command: string, o: { stdin?: Buffer }) => { runs.push({ command, bytes: o.stdin?.length ?? 0 }); return { code: 0, stdout: '', stderr: '' } } } as never
  const fs = Array.from({ length: 900 }, (_, i) => ({ spec: { path: `/opt/app/config/a-rather-long-folder-name/and-a-longer-file-name-number-${i}.conf`, mode: '0644', owner: 'deploy:deploy' }, content: `x${i}\n` }))
  await installFiles(t, fs)
  assert.ok(runs.length > 1 && runs.every(r => Buffer.byteLength(r.command) <= 100_000), runs.map(r => r.command.length).join(','))
  assert.is(runs.reduce((n, r) => n + (r.command.match(/mktemp/g) ?? []).length, 0), 900)
  assert.is(runs.reduce((n, r) => n + r.bytes, 0), fs.reduce((n, f) => n + f.content.length, 0))
})

test.run()
