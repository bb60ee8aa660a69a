// Adoption: compose files as their owners wrote them (for `docker compose up`), read as
// they are, and the override that makes them deployable by opsbook, each change with a
// comment saying why. The upstream files are never edited: the override goes last in
// COMPOSE_FILE. Pure: init.ts reads the files, asks and writes.
import { mergeCompose, parseCompose } from './merge.ts'
import { interpolate, isMap, keyValues, oneShots, PROXY_SERVICE } from './model.ts'
import { UsageError } from '../errors.ts'

type Tree = Record<string, unknown>

/** Images opsbook keeps running across releases (found by name, as backups find PostgreSQL). */
const ACCESSORY = /(^|\/)(postgres|postgis|timescaledb|redis|valkey|keydb|mysql|mariadb|mongo|memcached|rabbitmq|elasticsearch|opensearch|clickhouse|minio|nats|kafka|zookeeper|etcd|mailhog|mailpit|meilisearch|typesense|qdrant)([-_][^/]*)?$/
/** Words of a start command that migrate on every boot. */
const BOOT_MIGRATION = /(prisma migrate deploy|manage\.py migrate|alembic upgrade|migrate deploy|db:migrate|--upgrade|\bmigrate\b)/

export interface ServicePlan {
  name: string
  role: 'web' | 'worker' | 'accessory' | 'job'
  /** web: the container port (the target of its first published port). */
  port?: number
  /** web: the health path read from its healthcheck URL. */
  health?: string
  /** Its start command migrates on every boot. */
  bootMigration?: string
}

export interface Plan {
  files: string[]
  services: ServicePlan[]
  /** Variables the files interpolate: name -> required (${X:?}) and a default when they give one. */
  variables: Map<string, { required: boolean; fallback?: string }>
  doc: Tree
}

export interface Answers {
  /** web service -> path prefixes (comma separated), e.g. /v1/ */
  routes: Record<string, string>
  /** web service -> host names (comma separated) */
  hosts: Record<string, string>
}

const labelsOf = (svc: Tree): Record<string, string> => keyValues(svc.labels)

/** An image reference with each ${VAR:-default} at its default (and ${VAR} empty): what it would be with no settings. */
const asWritten = (v: string) => {
  try { return interpolate(v, new Proxy({}, { get: () => undefined }) as Record<string, string | undefined>, () => '') } catch { return v }
}

/** The image without its tag or digest, in the text as written (variables kept). */
export function imageRepo(image: string): string {
  let depth = 0, cut = image.length
  for (let i = 0; i < image.length; i++) {
    const c = image[i]
    if (c === '$' && image[i + 1] === '{') { depth++; i++; continue }
    if (c === '}' && depth) { depth--; continue }
    if (depth) continue
    if (c === '@') { cut = i; break }
    if (c === '/') cut = image.length
    else if (c === ':') cut = i
  }
  return image.slice(0, cut)
}

/** The container port a "ports:" entry publishes to. */
function targetPort(p: unknown): number | undefined {
  if (isMap(p)) return Number(p.target) || undefined
  const spec = String(p).split('/')[0]
  const n = Number(spec.split(':').pop()!.split('-')[0])
  return Number.isInteger(n) && n > 0 ? n : undefined
}

function healthPath(svc: Tree): string | undefined {
  const hc = isMap(svc.healthcheck) ? svc.healthcheck : undefined
  const test = hc ? (Array.isArray(hc.test) ? hc.test.join(' ') : String(hc.test ?? '')) : ''
  const m = /https?:\/\/(?:localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(?::\d+)?(\/[A-Za-z0-9._~/-]*)/.exec(test)
  return m?.[1]
}

/** A published port bound to 127.0.0.1 instead: "5432:5432", "0.0.0.0:5432:5432" and "5432" all become 127.0.0.1:5432:5432. */
export function loopback(p: unknown): string {
  if (isMap(p)) return `127.0.0.1:${p.published ?? p.target}:${p.target}${p.protocol && p.protocol !== 'tcp' ? `/${p.protocol}` : ''}`
  const [spec, proto] = String(p).split('/')
  const parts = spec.split(':')
  const target = parts.pop()!
  const published = parts.pop() || target
  return `127.0.0.1:${published}:${target}${proto ? `/${proto}` : ''}`
}

const commandText = (v: unknown) => (Array.isArray(v) ? v.join(' ') : typeof v === 'string' ? v : '')

/** Reads the files as written and sorts their services; refuses only what no override can fix. */
export function planAdoption(sources: { file: string; text: string }[]): Plan {
  const docs = sources.map(s => parseCompose(s.text, s.file))
  const doc = mergeCompose(docs)
  const files = sources.map(s => s.file).join(' + ')
  if (!isMap(doc.services) || !Object.keys(doc.services).length) throw new UsageError(`${files} has no services: a compose file lists its containers under "services:".`)
  const services: ServicePlan[] = []
  const waitedFor = oneShots(doc)
  for (const [name, raw] of Object.entries(doc.services)) {
    if (!isMap(raw)) continue
    if (name === PROXY_SERVICE) {
      throw new UsageError(`${files}, service ${name}: "${PROXY_SERVICE}" is the name of opsbook's nginx and an override cannot rename a service; rename it in your copy of the file (and in depends_on), or leave it out of COMPOSE_FILE if it is the stack's own reverse proxy (opsbook's nginx takes its place).`)
    }
    const labels = labelsOf(raw)
    const image = typeof raw.image === 'string' ? asWritten(raw.image) : ''
    const ports = Array.isArray(raw.ports) ? raw.ports : []
    const given = labels['opsbook.role'] as ServicePlan['role'] | undefined
    const accessory = ACCESSORY.test(imageRepo(image))
    const role: ServicePlan['role'] = given ?? (waitedFor.has(name) ? 'job' : labels['opsbook.port'] ? 'web' : accessory && raw.build === undefined ? 'accessory' : ports.length ? 'web' : 'worker')
    const port = role === 'web' ? (Number(labels['opsbook.port']) || ports.map(targetPort).find(Boolean) || (Array.isArray(raw.expose) ? Number(String(raw.expose[0]).split('/')[0]) : undefined)) : undefined
    const boot = BOOT_MIGRATION.exec(`${commandText(raw.entrypoint)} ${commandText(raw.command)}`)?.[1]
    services.push({ name, role, port, health: healthPath(raw), ...(boot && (role === 'web' || role === 'worker') ? { bootMigration: boot } : {}) })
  }
  const variables = new Map<string, { required: boolean; fallback?: string }>()
  for (const s of sources) {
    for (const m of s.text.matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g)) {
      if (s.text[m.index! - 1] === '$') continue
      const name = m[1] ?? m[5]
      if (name === 'APP_VERSION') continue
      const prev = variables.get(name)
      const required = m[3] === '?' || !!prev?.required
      variables.set(name, { required, fallback: prev?.fallback ?? (m[3] === '-' ? m[4] : undefined) })
    }
  }
  return { files: sources.map(s => s.file), services, variables, doc }
}

const SECRET = /(PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|PRIVATE_KEY|_KEY$|CREDENTIALS|DSN)/

/**
 * The override's text. Deterministic: the same files and answers make the same bytes, so a
 * re-run changes nothing. Services already labelled for opsbook keep their labels.
 */
export function renderAdoption(plan: Plan, answers: Answers): string {
  const services = plan.doc.services as Record<string, Tree>
  const out: string[] = [
    `# Written by opsbook's init.ts from ${plan.files.join(' + ')}, which it leaves as they are.`,
    '# List this file last in COMPOSE_FILE. Re-running init.ts on the same files writes the same file;',
    '# edit the answers with its flags (--route, --host) rather than by hand.',
    'services:',
  ]
  const project = (plan.files[0].split('/').slice(-2, -1)[0] ?? 'app').toLowerCase().replace(/[^a-z0-9_.-]/g, '') || 'app'
  const ownRepos = new Set(plan.services.filter(s => s.role === 'web' || s.role === 'worker' || services[s.name].build !== undefined)
    .map(s => services[s.name].image).filter((i): i is string => typeof i === 'string').map(imageRepo))
  for (const s of plan.services) {
    const raw = services[s.name]
    const labels = labelsOf(raw)
    const lines: string[] = []
    const image = typeof raw.image === 'string' ? raw.image : undefined
    // A job on an image of its own (busybox:1.36 fixing permissions) keeps it; one on the app's image follows the release.
    const follows = s.role === 'web' || s.role === 'worker' || (s.role === 'job' && image !== undefined && ownRepos.has(imageRepo(image)))
    if (follows && image !== undefined && !image.includes('${APP_VERSION}')) {
      lines.push(`    # Released with each version: the tag is the release version (${JSON.stringify(image)} names no release to roll back to).`)
      lines.push(`    image: ${JSON.stringify(`${imageRepo(image)}:\${APP_VERSION}`)}`)
    } else if (image === undefined && raw.build !== undefined) {
      lines.push('    # Built on your machine by deploy and update, tagged with the release version, and shipped to the host.')
      lines.push(`    image: ${JSON.stringify(`${project}-${s.name}:\${APP_VERSION}`)}`)
    }
    if (s.role === 'job') {
      lines.push('    # A one-shot job the others wait for (service_completed_successfully): opsbook runs it once per release,')
      lines.push('    # after a backup of PostgreSQL and before traffic moves; if it fails, the update stops with the old version serving.')
    }
    if (raw.container_name !== undefined) {
      lines.push('    # A fixed name stops a second container from starting beside the first during a swap.')
      lines.push('    container_name: !reset null')
    }
    const ports = Array.isArray(raw.ports) ? raw.ports : []
    if ((s.role === 'web' || s.role === 'worker') && ports.length) {
      lines.push(`    # opsbook's nginx is the entry: a published port would bypass it and the firewall (Docker writes its own iptables rules).`)
      lines.push('    ports: !reset []')
    } else if (s.role === 'accessory' && ports.some(p => !(isMap(p) ? p.host_ip === '127.0.0.1' : String(p).startsWith('127.0.0.1:')))) {
      const kept = ports.map(loopback)
      lines.push('    # Bound to the host\'s loopback: reachable from the host (psql, backups), not from the internet.')
      lines.push(`    ports: !override ${JSON.stringify(kept)}`)
    }
    const add: [string, string, string][] = []
    if (s.role === 'web') {
      if (!labels['opsbook.port']) {
        if (!s.port) throw new UsageError(`${plan.files.join(' + ')}, service ${s.name}: it publishes no container port to route to; pass --port ${s.name}=PORT or label it opsbook.role: worker.`)
        add.push(['opsbook.port', String(s.port), 'the port it listens on in its container (from its ports:)'])
      }
      const route = answers.routes[s.name]
      if (route && !labels['opsbook.route']) add.push(['opsbook.route', route, 'the path prefixes nginx sends to it'])
      const host = answers.hosts[s.name]
      if (host && !labels['opsbook.host']) add.push(['opsbook.host', host, 'the host names nginx sends to it'])
      const routes = (labels['opsbook.route'] ?? route ?? '/').split(',').map(r => r.trim())
      if (s.health && !labels['opsbook.health']) {
        if (routes.some(r => s.health!.startsWith(r))) add.push(['opsbook.health', s.health, 'from its healthcheck URL'])
        else lines.push(`    # Its healthcheck asks ${s.health}, which is outside its route(s) ${routes.join(', ')}: opsbook checks ${routes[0]} through nginx instead.`)
      }
    } else if (s.role === 'worker') {
      if (!labels['opsbook.role']) add.push(['opsbook.role', 'worker', 'released with each version, no route'])
      const hc = isMap(raw.healthcheck) && raw.healthcheck.disable !== true
      if (!hc && !labels['opsbook.settle']) add.push(['opsbook.settle', '10', 'no healthcheck: a new container counts as healthy after 10 s up'])
    }
    if (s.bootMigration) {
      lines.push(`    # Its start command migrates on every boot (${s.bootMigration}): during a swap the new version migrates while the old`)
      lines.push('    # one still serves, so each migration must suit both. Or move it into opsbook.migrate (run once, after a backup).')
    }
    if (add.length) {
      lines.push('    labels:')
      for (const [k, v, why] of add) lines.push(`      # ${why}`, `      ${k}: ${JSON.stringify(v)}`)
    }
    // A service named with nothing under it would be null, which compose refuses: comments only go under a commented name.
    if (lines.some(l => !l.trimStart().startsWith('#'))) out.push(`  ${s.name}:`, ...lines)
    else out.push(`  # ${s.name}: ${s.role}, nothing to change.`, ...lines)
  }
  return out.join('\n') + '\n'
}

/** The settings file's skeleton: the files, then every variable they interpolate, secrets marked. */
export function renderSettings(plan: Plan, composeFile: string): string {
  const lines = [
    '# Settings for opsbook (written by init.ts): fill in, then rename to .env.production (or .env.NAME).',
    `COMPOSE_FILE=${composeFile}`,
    'SSH_HOST=',
    '',
    '# The variables your compose files interpolate (opsbook writes them to the host\'s .env, mode 0600).',
  ]
  for (const [name, v] of [...plan.variables].sort((a, b) => a[0].localeCompare(b[0]))) {
    const notes = [SECRET.test(name) ? 'secret: never printed' : '', v.required ? 'required' : '', v.fallback !== undefined ? `default ${JSON.stringify(v.fallback)}` : ''].filter(Boolean)
    lines.push(`${notes.length ? `# ${notes.join('; ')}\n` : ''}${v.fallback !== undefined && !v.required ? '# ' : ''}${name}=${v.fallback !== undefined && !SECRET.test(name) ? v.fallback : ''}`)
  }
  return lines.join('\n') + '\n'
}
