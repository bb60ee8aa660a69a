// The stack as opsbook sees it: the operator's compose file (COMPOSE_FILE), or the built-in
// one (templates/compose.yml), read with a YAML parser that keeps anchors and merge keys,
// interpolated as compose does, and each service classified:
//   web        gets HTTP through opsbook's nginx (labels opsbook.port, opsbook.route,
//              opsbook.host, opsbook.health); replaced by the health-gated swap
//   worker     no route; replaced start-new-then-stop-old, once the new containers are
//              healthy (compose healthcheck) or have stayed up opsbook.settle seconds
//   accessory  PostgreSQL, Redis and the like: started by deploy, never restarted by
//              update, rollback or rotation
//   job        a one-shot container others wait for (depends_on condition
//              service_completed_successfully: a prestart or migrate step): run once per
//              release by deploy and update, before traffic moves
// A service whose image uses ${APP_VERSION} is released with every version (web or
// worker); the others are accessories unless labelled. Pure: no host, no I/O besides
// reading the file, so unit tests cover every refusal.
import { readFileSync } from 'node:fs'
import { UsageError } from '../errors.ts'
import { mergeCompose, parseCompose } from './merge.ts'

export type Role = 'web' | 'worker' | 'accessory' | 'job'

export interface Route { host?: string; path: string }

export interface ServiceModel {
  name: string
  role: Role
  /** The image with ${APP_VERSION} left as VERSION (see imageAt). */
  image: string
  /** The image changes with the release version. */
  versioned: boolean
  /** web: the port the container listens on. */
  port?: number
  routes: Route[]
  /** web: a path answering 2xx when healthy (checked straight at each new container). */
  health?: string
  replicas: number
  /** The compose file gives it a health check (workers: what "healthy" means). */
  healthcheck: boolean
  /** worker without a health check: seconds a new container must stay up to count as healthy. */
  settle?: number
  /** Seconds between SIGTERM and SIGKILL when a container of it is retired (stop_grace_period). */
  stopGrace: number
  /** Named volumes it mounts: volume name (as in the file) -> path in the container. */
  volumes: Record<string, string>
  /** Networks it is attached to ('default' when the file names none). */
  networks: string[]
  environment: Record<string, string>
  /** A command run once per release in a one-off container of this service (opsbook.migrate). */
  migrate?: string
  /** Undoes this release's migration, run in a one-off container of the newer release (opsbook.migrate-down). */
  migrateDown?: string
  /** Bind mounts: a host path (as written: ./config, /srv/data) -> path in the container. */
  binds: { source: string; target: string; readOnly: boolean }[]
  /** env_file entries, as written (relative to the project folder, or absolute). */
  envFiles: { path: string; required: boolean }[]
  /** `build:`: opsbook builds the image on this machine (build.ts) and ships it like any other. */
  build?: { context: string; dockerfile?: string; target?: string; args: Record<string, string> }
}

export interface StackModel {
  /** The file, or files joined by " + ", as errors name them. */
  file: string
  services: ServiceModel[]
  /** Top-level named volumes. */
  volumes: string[]
  /** The PostgreSQL service (an accessory whose image is postgres-like, or labelled opsbook.postgres). */
  postgres?: { service: string; user: string; database: string }
}

/** Placeholder for the release version inside image references. */
export const VERSION = '\u0000VERSION\u0000'
export const PROXY_SERVICE = 'proxy'

export const imageAt = (s: ServiceModel, version: string) => s.image.split(VERSION).join(version)
/** Replaced with each release by the swap (web) or start-then-stop (worker). */
export const released = (m: StackModel) => m.services.filter(s => s.role === 'web' || s.role === 'worker')
/** One-shot containers run once per release before traffic moves. */
export const jobs = (m: StackModel) => m.services.filter(s => s.role === 'job')
export const webServices = (m: StackModel) => m.services.filter(s => s.role === 'web')
export const workers = (m: StackModel) => m.services.filter(s => s.role === 'worker')
export const accessories = (m: StackModel) => m.services.filter(s => s.role === 'accessory')

/** The version a container image of `s` carries, if the image is one of its releases. */
export function versionOf(s: ServiceModel, image: string): string | undefined {
  if (!s.versioned) return undefined
  const [before, after] = s.image.split(VERSION)
  if (!image.startsWith(before) || !image.endsWith(after) || image.length <= before.length + after.length) return undefined
  return image.slice(before.length, image.length - after.length)
}

type Vars = Record<string, string | undefined>

/**
 * Compose's interpolation: $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e},
 * ${VAR:+r}, ${VAR+r}, and $$ for a literal $. `where` names the spot for errors.
 */
export function interpolate(value: string, vars: Vars, where: () => string): string {
  let out = ''
  let i = 0
  while (i < value.length) {
    const c = value[i]
    if (c !== '$') { out += c; i++; continue }
    const next = value[i + 1]
    if (next === '$') { out += '$'; i += 2; continue }
    if (next === '{') {
      let depth = 1, j = i + 2
      while (j < value.length && depth) { if (value[j] === '{') depth++; else if (value[j] === '}') depth--; j++ }
      if (depth) throw new UsageError(`${where()}: a \${ has no closing } (the value is not shown: it may be a secret).`)
      out += expand(value.slice(i + 2, j - 1), vars, where)
      i = j
      continue
    }
    const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(value.slice(i + 1))
    if (m) { out += vars[m[0]] ?? ''; i += 1 + m[0].length; continue }
    out += c
    i++
  }
  return out
}

function expand(body: string, vars: Vars, where: () => string): string {
  const m = /^([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?+])([\s\S]*))?$/.exec(body)
  if (!m) throw new UsageError(`${where()}: \${${body}} is not a variable compose can interpolate.`)
  const [, name, colon, op, rest = ''] = m
  const v = vars[name]
  const unset = colon ? v === undefined || v === '' : v === undefined
  if (!op) return v ?? ''
  if (op === '-') return unset ? interpolate(rest, vars, where) : v!
  if (op === '+') return unset ? '' : interpolate(rest, vars, where)
  if (unset) throw new UsageError(`${where()}: ${name} is not set${rest ? ` (${rest})` : ''}; set it in the settings file.`)
  return v!
}

/** Interpolates every string of a service; errors name the key path, e.g. "environment.DB_URL". */
export function interpolateTree(node: unknown, vars: Vars, where: string, path = ''): unknown {
  const at = () => (path ? `${where}, ${path}` : where)
  if (typeof node === 'string') return interpolate(node, vars, at)
  if (Array.isArray(node)) return node.map((n, i) => interpolateTree(n, vars, where, `${path}[${i}]`))
  if (node && typeof node === 'object') {
    return Object.fromEntries(Object.entries(node).map(([k, v]) => [k.includes('$') ? interpolate(k, vars, at) : k, interpolateTree(v, vars, where, path ? `${path}.${k}` : k)]))
  }
  return node
}

export const isMap = (x: unknown): x is Record<string, unknown> => !!x && typeof x === 'object' && !Array.isArray(x)

/** Services others wait for until they exit 0: one-shot jobs (compose's prestart pattern). */
export function oneShots(doc: Record<string, unknown>): Set<string> {
  return new Set(Object.values(isMap(doc.services) ? doc.services : {}).flatMap(svc => {
    const d = isMap(svc) ? svc.depends_on : undefined
    return isMap(d) ? Object.entries(d).filter(([, c]) => isMap(c) && c.condition === 'service_completed_successfully').map(([n]) => n) : []
  }))
}

/** Compose's `KEY=value` lists and maps as one map. */
export function keyValues(x: unknown): Record<string, string> {
  if (Array.isArray(x)) return Object.fromEntries(x.map(String).map(l => { const i = l.indexOf('='); return i < 0 ? [l, ''] : [l.slice(0, i), l.slice(i + 1)] }))
  if (isMap(x)) return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, v === null || v === undefined ? '' : String(v)]))
  return {}
}

/** "1m30s", "10s", "500ms" (compose durations) in seconds. */
function seconds(d: unknown): number | undefined {
  if (typeof d === 'number') return d
  if (typeof d !== 'string') return undefined
  let total = 0
  const re = /(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)/g
  let m, seen = ''
  while ((m = re.exec(d))) { seen += m[0]; total += Number(m[1]) * ({ h: 3600, m: 60, s: 1, ms: 0.001, us: 1e-6, ns: 1e-9 } as Record<string, number>)[m[2]] }
  return seen === d ? total : undefined
}

const LABEL = 'opsbook.'
const KNOWN_LABELS = ['role', 'route', 'host', 'port', 'health', 'replicas', 'settle', 'migrate', 'migrate-down', 'postgres']
const PATH = /^\/[A-Za-z0-9._~/-]*$/
/** nginx's own locations (the maintenance page): a route or health path there would be shadowed. */
const RESERVED = '/opsbook-'
const HOSTNAME = /^(?=.{1,253}$)([A-Za-z0-9*]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/

export interface ModelOptions {
  /** Interpolation values: the settings, the process environment, and APP_VERSION. */
  vars: Vars
  /** Replicas for services that do not say (the built-in app's APP_REPLICAS). */
  defaultReplicas?: number
}

/** Reads and checks compose files (a list is merged in order). */
export function loadModel(file: string | string[], opts: ModelOptions): StackModel {
  const files = [file].flat()
  return mergedModel(files.map(f => {
    try { return { file: f, text: readFileSync(f, 'utf8') } } catch { throw new UsageError(`The compose file ${f} (COMPOSE_FILE) cannot be read: check the path, relative to the settings file.`) }
  }), opts)
}

/** One compose file's text, checked; see mergedModel for several. */
export function parseModel(text: string, file: string, opts: ModelOptions): StackModel {
  return mergedModel([{ file, text }], opts)
}

/**
 * The files merged as compose merges `-f a -f b` (merge.ts), then checked; every refusal is
 * one sentence naming the file(s), service and key.
 */
export function mergedModel(sources: { file: string; text: string }[], opts: ModelOptions): StackModel {
  const docs = sources.map(s => parseCompose(s.text, s.file))
  docs.forEach((d, i) => {
    for (const key of ['include']) if (key in d) throw new UsageError(`${sources[i].file}: "${key}" is not supported; list the files in COMPOSE_FILE instead (separated by ":").`)
    for (const [name, svc] of Object.entries(isMap(d.services) ? d.services : {})) {
      if (isMap(svc) && 'extends' in svc) throw new UsageError(`${sources[i].file}, service ${name}, extends: not supported; put the shared settings in a YAML anchor or an override file listed in COMPOSE_FILE.`)
    }
  })
  // Compose interpolates each file before merging: a ${X:?} an override replaces still fails there.
  const all = { ...opts.vars, APP_VERSION: VERSION }
  docs.forEach((d, i) => {
    for (const [k, v] of Object.entries(d)) {
      if (k === 'services' && isMap(v)) for (const [name, svc] of Object.entries(v)) interpolateTree(svc, all, `${sources[i].file}, service ${name}`)
      else interpolateTree(v, all, sources[i].file, k)
    }
  })
  const file = sources.map(s => s.file).join(' + ')
  return modelOf(mergeCompose(docs), file, opts)
}

export function modelOf(doc: Record<string, unknown>, file: string, opts: ModelOptions): StackModel {
  if (!isMap(doc) || !isMap(doc.services) || !Object.keys(doc.services).length) throw new UsageError(`${file} has no services: a compose file lists its containers under "services:".`)
  const vars: Vars = { ...opts.vars, APP_VERSION: VERSION }
  const waitedFor = oneShots(doc)
  const topVolumes = isMap(doc.volumes) ? Object.keys(doc.volumes) : []
  const services: ServiceModel[] = []

  for (const [name, raw0] of Object.entries(doc.services)) {
    const at = (key?: string) => `${file}, service ${name}${key ? `, ${key}` : ''}`
    if (!isMap(raw0)) throw new UsageError(`${at()}: the service is not a mapping of settings.`)
    if (name === PROXY_SERVICE) throw new UsageError(`${at()}: the name "${PROXY_SERVICE}" is opsbook's nginx; rename the service (opsbook routes to your web services itself).`)
    const raw = interpolateTree(raw0, vars, at()) as Record<string, unknown>
    if (typeof raw.image !== 'string' || !raw.image) {
      throw new UsageError(raw.build !== undefined
        ? `${at('image')}: opsbook builds the image of build: on this machine and needs its name and tag; add image: ${name}:\${APP_VERSION} beside build: (runbooks/init.ts writes it in an override).`
        : `${at('image')}: the service has no image; opsbook deploys images (build and push it, e.g. image: registry.example.com/team/${name}:\${APP_VERSION}).`)
    }
    if (raw.container_name !== undefined) throw new UsageError(`${at('container_name')}: a fixed container name stops a new container from starting beside the old one; remove it, or reset it in an override file (container_name: !reset null; runbooks/init.ts writes one).`)
    const labels = keyValues(raw.labels)
    for (const k of Object.keys(labels)) {
      if (k.startsWith(LABEL) && !KNOWN_LABELS.includes(k.slice(LABEL.length))) {
        throw new UsageError(`${at(`label ${k}`)}: unknown opsbook label; the known ones are ${KNOWN_LABELS.map(l => LABEL + l).join(', ')}.`)
      }
    }
    const label = (k: string) => labels[LABEL + k]
    const versioned = raw.image.includes(VERSION)
    const given = label('role')
    if (given !== undefined && !['web', 'worker', 'accessory', 'job'].includes(given)) throw new UsageError(`${at('label opsbook.role')}: "${given}" is not web, worker, accessory or job.`)
    const role: Role = (given as Role | undefined) ?? (waitedFor.has(name) ? 'job' : label('port') || label('route') || label('host') ? 'web' : versioned ? 'worker' : 'accessory')
    if ((role === 'web' || role === 'worker') && !versioned) throw new UsageError(`${at('image')}: a ${role} service is released with each version, so its image must use \${APP_VERSION} (e.g. ${raw.image.replace(/:[^:/]*$/, '')}:\${APP_VERSION}, in an override file if the compose file is not yours: runbooks/init.ts writes one).`)
    if (role === 'accessory' && versioned) throw new UsageError(`${at('image')}: an accessory keeps running across releases, so its image cannot use \${APP_VERSION}; label it opsbook.role: web or worker.`)

    const ports = Array.isArray(raw.ports) ? raw.ports : raw.ports === undefined ? [] : [raw.ports]
    // Every ports entry publishes (a bare "8000" on a random host port); `expose` does not.
    for (const p of ports) {
      const loopback = isMap(p) ? p.host_ip === '127.0.0.1' : String(p).startsWith('127.0.0.1:')
      if (role !== 'accessory' && role !== 'job' || !loopback) {
        throw new UsageError(`${at('ports')}: publishing ${isMap(p) ? JSON.stringify(p) : p} on the host bypasses the firewall (Docker writes its own iptables rules)${role === 'web' ? '; opsbook\'s nginx routes to the service, remove ports' : '; remove it, or bind an accessory to 127.0.0.1'} (runbooks/init.ts --compose FILE writes an override file that does it, leaving yours as it is).`)
      }
    }

    const num = (key: string, v: string | undefined, min: number, max: number) => {
      if (v === undefined) return undefined
      const n = Number(v)
      if (!/^\d+$/.test(v) || n < min || n > max) throw new UsageError(`${at(`label opsbook.${key}`)}: "${v}" is not a whole number from ${min} to ${max}.`)
      return n
    }
    const port = num('port', label('port'), 1, 65535)
    const deploy = isMap(raw.deploy) ? raw.deploy : {}
    const replicas = num('replicas', label('replicas') ?? (deploy.replicas !== undefined ? String(deploy.replicas) : undefined), 1, 64) ?? opts.defaultReplicas ?? 1
    const settle = num('settle', label('settle'), 1, 600)
    const hc = isMap(raw.healthcheck) ? raw.healthcheck : undefined
    const healthcheck = !!hc && hc.disable !== true && hc.test !== undefined && !(Array.isArray(hc.test) && hc.test[0] === 'NONE')

    const routes: Route[] = []
    if (role === 'web') {
      if (port === undefined) throw new UsageError(`${at('labels')}: a web service needs opsbook.port, the port it listens on inside its container.`)
      const hosts = (label('host') ?? '').split(',').map(h => h.trim()).filter(Boolean)
      for (const h of hosts) if (!HOSTNAME.test(h)) throw new UsageError(`${at('label opsbook.host')}: "${h}" is not a host name.`)
      const paths = (label('route') ?? '/').split(',').map(p => p.trim()).filter(Boolean)
      for (const p of paths) if (!PATH.test(p)) throw new UsageError(`${at('label opsbook.route')}: "${p}" is not a path prefix like /v1/ (letters, digits, ".", "_", "~", "-", "/").`)
      for (const p of paths) if (p.startsWith(RESERVED)) throw new UsageError(`${at('label opsbook.route')}: paths under ${RESERVED} are opsbook's nginx's own (the maintenance page); choose another path.`)
      for (const path of paths) for (const host of hosts.length ? hosts : [undefined]) routes.push({ host, path })
    } else if (label('route') || label('host') || label('port') || label('health')) {
      throw new UsageError(`${at('labels')}: only web services take opsbook.route, opsbook.host, opsbook.port and opsbook.health.`)
    }
    const health = role === 'web' ? label('health') ?? routes[0].path : undefined
    if (health !== undefined && !PATH.test(health)) throw new UsageError(`${at('label opsbook.health')}: "${health}" is not a URL path like /health.`)
    if (health?.startsWith(RESERVED)) throw new UsageError(`${at('label opsbook.health')}: paths under ${RESERVED} are opsbook's nginx's own (the maintenance page); choose another path.`)
    if (role === 'worker' && !healthcheck && settle === undefined) {
      throw new UsageError(`${at('healthcheck')}: opsbook cannot tell when a new worker is healthy; give it a healthcheck, or label opsbook.settle: SECONDS it must stay up.`)
    }

    const volumes: Record<string, string> = {}
    const binds: ServiceModel['binds'] = []
    for (const v of Array.isArray(raw.volumes) ? raw.volumes : []) {
      const [source, target] = typeof v === 'string' ? v.split(':') : isMap(v) ? [String(v.source ?? ''), String(v.target ?? '')] : ['', '']
      const bind = isMap(v) ? v.type === 'bind' : /^[.~/]/.test(source)
      const readOnly = isMap(v) ? v.read_only === true : (String(v).split(':')[2] ?? '').split(',').includes('ro')
      if (source && target && bind) binds.push({ source, target, readOnly })
      else if (source && target && (!isMap(v) || v.type === undefined || v.type === 'volume')) {
        if (!topVolumes.includes(source)) throw new UsageError(`${at('volumes')}: the volume ${source} is not declared under the top-level "volumes:".`)
        volumes[source] = target
      }
    }
    const envFiles = (raw.env_file === undefined ? [] : Array.isArray(raw.env_file) ? raw.env_file : [raw.env_file])
      .map(e => (isMap(e) ? { path: String(e.path), required: e.required !== false } : { path: String(e), required: true }))
    const networks = Array.isArray(raw.networks) ? raw.networks.map(String) : isMap(raw.networks) ? Object.keys(raw.networks) : ['default']
    const grace = raw.stop_grace_period === undefined ? 10 : seconds(raw.stop_grace_period)
    if (grace === undefined) throw new UsageError(`${at('stop_grace_period')}: "${raw.stop_grace_period}" is not a duration like 30s or 1m30s.`)
    const migrate = label('migrate')
    if (migrate !== undefined && role !== 'web' && role !== 'worker') throw new UsageError(`${at('label opsbook.migrate')}: migrations run in a released service (web or worker), not in ${role === 'job' ? 'a one-shot job (it is the migration: drop the label)' : 'an accessory'}.`)
    const migrateDown = label('migrate-down')
    if (migrateDown !== undefined && !migrate && role !== 'job') throw new UsageError(`${at('label opsbook.migrate-down')}: it undoes opsbook.migrate, which this service does not have.`)
    services.push({
      name, role, image: raw.image, versioned, port, routes, health, replicas, healthcheck, settle, stopGrace: Math.ceil(grace), volumes, networks,
      environment: keyValues(raw.environment), migrate: migrate || undefined, migrateDown: migrateDown || undefined, binds, envFiles,
      ...(raw.build !== undefined ? { build: buildOf(raw.build, at('build')) } : {}),
    })
  }

  if (!services.some(s => s.role === 'web')) throw new UsageError(`${file} has no web service: label the service that answers HTTP with opsbook.port (and opsbook.route if it is not /).`)
  const seen = new Map<string, string>()
  for (const s of services) {
    for (const r of s.routes) {
      const key = `${r.host ?? '*'} ${r.path}`
      const other = seen.get(key)
      if (other) throw new UsageError(`${file}, service ${s.name}, label opsbook.route: ${r.host ?? 'any host'} ${r.path} is already routed to ${other}; each route goes to one service.`)
      seen.set(key, s.name)
    }
  }
  // A web service's health path must reach it through nginx (longest prefix wins there too).
  for (const s of services.filter(x => x.role === 'web')) {
    const host = s.routes[0].host
    const owner = services.flatMap(o => o.routes.filter(r => r.host === host && s.health!.startsWith(r.path)).map(r => ({ o: o.name, len: r.path.length })))
      .sort((a, b) => b.len - a.len)[0]
    if (owner?.o !== s.name) throw new UsageError(`${file}, service ${s.name}, label opsbook.health: ${s.health} ${owner ? `is routed to ${owner.o}` : 'is under none of its routes'}; use a path under ${s.routes.map(r => r.path).join(' or ')}.`)
  }
  // A one-shot job is the release's migration (run once per release, after a backup).
  const migrations = services.filter(s => s.migrate || s.role === 'job')
  if (migrations.length > 1) throw new UsageError(`${file}: ${migrations.map(s => (s.migrate ? `${s.name} (opsbook.migrate)` : `${s.name} (a one-shot job others wait for)`)).join(' and ')} would each migrate; one service runs the migration per release (make the others' work part of it).`)

  const pg = services.filter(s => s.role === 'accessory' && (/(^|\/)(postgres|postgis|timescaledb)[^/]*$/.test(s.image.replace(/:[^:/]*$/, '')) || labelled(doc, s.name, 'postgres')))
  const db = pg.find(s => labelled(doc, s.name, 'postgres')) ?? pg[0]
  const postgres = db ? { service: db.name, user: db.environment.POSTGRES_USER || 'postgres', database: db.environment.POSTGRES_DB || db.environment.POSTGRES_USER || 'postgres' } : undefined
  return { file, services, volumes: topVolumes, postgres }
}

function buildOf(b: unknown, where: string): NonNullable<ServiceModel['build']> {
  const m = typeof b === 'string' ? { context: b } : isMap(b) ? b : undefined
  if (!m) throw new UsageError(`${where}: build: is a folder or a mapping with context:, dockerfile:, args:.`)
  for (const k of Object.keys(m)) {
    if (!['context', 'dockerfile', 'args', 'target'].includes(k)) throw new UsageError(`${where}: build.${k} is not supported by opsbook's build (context, dockerfile, args, target are); build and push the image yourself and drop build:.`)
  }
  return {
    context: String(m.context ?? '.'), ...(m.dockerfile !== undefined ? { dockerfile: String(m.dockerfile) } : {}),
    ...(m.target !== undefined ? { target: String(m.target) } : {}), args: keyValues(m.args),
  }
}

function labelled(doc: Record<string, unknown>, service: string, key: string): boolean {
  const raw = (doc.services as Record<string, Record<string, unknown>>)[service]
  return keyValues(raw.labels)[LABEL + key] === 'true'
}
