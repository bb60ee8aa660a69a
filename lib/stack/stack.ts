// The deployed stack on a host: the compose file (the operator's COMPOSE_FILE or the
// built-in one) and opsbook's override beside it, their .env, compose commands, the
// containers of each service, their health, and nginx's routes and upstreams.
//   APP_DIR/compose.yml     the compose file as given (COMPOSE_FILE's first; the others
//                           compose-2.yml, compose-3.yml... in merge order)
//   APP_DIR/<the rest>      the files they name beside them (env_file, bind mounts), at
//                           the same relative paths (project.ts)
//   APP_DIR/opsbook.yml     opsbook's nginx (service "proxy"), in front of the web services
//   APP_DIR/.env            COMPOSE_FILE=compose.yml:...:opsbook.yml, APP_VERSION and the
//                           variables the compose files interpolate (0600)
//   APP_DIR/proxy/          nginx's routes and one upstream per web service (routes.ts)
import { stringify } from 'yaml'
import { need, type Config, type TlsSettings } from '../config.ts'
import { UsageError } from '../errors.ts'
import { fileCommands, template, type FileSpec } from '../host/files.ts'
import { sh } from '../sh.ts'
import { accessories, imageAt, jobs, mergedModel, released, webServices, PROXY_SERVICE, type ServiceModel, type StackModel } from './model.ts'
import { ACME_ROOT, healthRoute, renderRoutes, renderUpstream, TLS_DIR, type SlotAddresses } from './routes.ts'
import { networkName } from './slots.ts'
import { pitrDockerfile, pitrImageTag, pitrServiceOverride } from './pgbackrest-image.ts'
import { databaseUrl } from './secrets.ts'
import { mergeCompose, parseCompose } from './merge.ts'
import { projectPaths, projectRoot, readComposeFiles, type ComposeSource, type ProjectFile } from './project.ts'

/** Docker tag grammar; anything else (spaces, ;, $(, newlines) is refused before connecting. */
const VERSION = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/

export function checkVersion(v: string | undefined, flag = '--version'): string {
  if (v === undefined || v === '') throw new UsageError(`No version given: pass ${flag} TAG (the image tag to run).`)
  if (!VERSION.test(v)) throw new UsageError(`${flag} ${JSON.stringify(v)} is not a release tag (an image tag of letters, digits, ".", "_" and "-", at most 128, not starting with "." or "-").`)
  return v
}

export interface Stack {
  project: string
  dir: string
  owner: string
  config: Config
  model: StackModel
  /** No COMPOSE_FILE: opsbook's own app + PostgreSQL stack (templates/compose.yml). */
  builtIn: boolean
  /** COMPOSE_FILE's files as they go to the host, in merge order. */
  composeFiles: ComposeSource[]
  /** Them merged as compose merges them (before interpolation), for the engines that render their own file. */
  composeText: string
  /** The files they name beside them (env_file, bind mounts), shipped to APP_DIR under the same paths. */
  projectFiles: ProjectFile[]
  /** Bind-mount folders created on the host, never overwritten (absent beside the compose file). */
  projectDirs: string[]
  /** Bind mounts and env files of host paths outside the project: the operator puts them there. */
  hostPaths: string[]
  /** Interpolation values written to .env (APP_VERSION aside); may hold secrets. */
  vars: Record<string, string>
  /**
   * The service backups, drills and rotation call "the app": the built-in app, else the
   * service holding the DuckDB file, else the first web service.
   */
  app: ServiceModel
  /** The PostgreSQL accessory, its login and database. */
  db?: { service: string; user: string; database: string }
  /** PITR=on: the database service runs `image` (its own image with pgbackrest, built on the host from `dockerfile`). */
  pitr?: { baseImage: string; image: string; dockerfile: string }
  healthTimeout: number
  drainSeconds: number
  keepReleases: number
  proxyPort: number
  proxyImage: string
  /** HTTPS (TLS_DOMAINS set): every name the certificate covers, the routes' hosts included. */
  tls?: TlsSettings
  /**
   * Run once per release in a one-off container of `service` (MIGRATE_COMMAND or
   * opsbook.migrate; no command: a one-shot job's own command).
   */
  migrate?: { service: string; command?: string; down?: string }
  /** BACKUP_VOLUMES, resolved against the compose file. */
  backupVolumes: BackupVolume[]
  /** The app service's port and health path (drills and status). */
  port: number
  healthPath: string
}

export interface BackupVolume {
  /** As named in the compose file (a bind-mounted folder: its path, "/" as "_"), and as docker names it (project_name). */
  name: string
  volume: string
  /** A bind-mounted folder beside the compose file: its absolute path on the host (APP_DIR/...), instead of a volume. */
  path?: string
  mode: 'freeze' | 'live'
  /** Services that mount it (paused for :freeze, stopped while a restore replaces it). */
  services: string[]
  /** A Redis service that mounts it: BGSAVE runs there first, so the copy holds a fresh snapshot. */
  redis?: string
}

const REDIS = /(^|\/)(redis|valkey|keydb)[^/]*$/

/** The services that mount a volume or folder, and the Redis among them (BGSAVE before a copy). */
function mountedBy(users: ServiceModel[]): Pick<BackupVolume, 'services' | 'redis'> {
  const redis = users.find(x => REDIS.test(x.image.replace(/:[^:/]*$/, '')))
  return { services: users.map(x => x.name), ...(redis ? { redis: redis.name } : {}) }
}

export function volumeOf(model: StackModel, project: string, name: string, mode: BackupVolume['mode'] = 'live'): BackupVolume {
  return { name, volume: `${project}_${name}`, mode, ...mountedBy(model.services.filter(x => name in x.volumes)) }
}

/** A bind-mounted folder of data (BACKUP_VOLUMES=./uploads): `rel` relative to the project folder, `dir` APP_DIR. */
export function bindVolumeOf(model: StackModel, dir: string, rel: string, mode: BackupVolume['mode'] = 'live'): BackupVolume {
  const norm = (p: string) => p.replace(/^\.\//, '').replace(/\/+$/, '')
  return { name: rel.replace(/\//g, '_'), volume: '', path: `${dir}/${rel}`, mode, ...mountedBy(model.services.filter(x => x.binds.some(b => norm(b.source) === rel))) }
}

const cache = new WeakMap<Config, Stack>()

/** What a backup stored of the stack: its compose files and project files (stack.tar.gz). */
export interface StoredStack { composeFiles: ComposeSource[]; projectFiles: ProjectFile[] }

/**
 * The stack the settings describe; the compose files are read and checked once (UsageError
 * on any fault). `stored` replaces them and the files beside them: a restore onto a new host
 * rebuilds the stack from what was stored with the backup.
 */
export function stackOf(c: Config, opts: { stored?: StoredStack } = {}): Stack {
  const hit = opts.stored === undefined ? cache.get(c) : undefined
  if (hit) return hit
  const s = c.stack
  const builtIn = !s.composeFile
  const composeFiles: ComposeSource[] = opts.stored
    ? opts.stored.composeFiles.map(f => ({ ...f, file: `the ${f.name} stored with the backup` }))
    : builtIn ? [{ name: 'compose.yml', text: template('compose.yml'), file: 'templates/compose.yml' }] : readComposeFiles(s.composeFiles, c.file)
  const vars: Record<string, string> = builtIn
    ? {
      APP_IMAGE: need(s.image, 'APP_IMAGE', c), APP_PORT: String(s.port), APP_HEALTH_PATH: s.healthPath,
      DB_IMAGE: s.dbImage, DB_NAME: s.dbName, DB_USER: s.dbUser, DB_PASSWORD: s.dbPassword ?? '',
    }
    : s.composeVars
  const model = mergedModel(composeFiles, { vars, defaultReplicas: builtIn ? s.replicas : undefined })
  const file = model.file
  const composeText = composeFiles.length === 1 ? composeFiles[0].text : stringify(mergeCompose(composeFiles.map(f => parseCompose(f.text, f.file))))
  const duck = c.backup.duckdbFile?.split(':')
  const app = builtIn ? model.services.find(x => x.name === 'app')!
    : (duck?.length === 2 ? model.services.find(x => x.name === duck[0]) : undefined) ?? webServices(model)[0]
  if (duck?.length === 2 && app.name !== duck[0]) throw new UsageError(`DUCKDB_FILE in ${c.file} names the service ${duck[0]}, which ${file} does not have.`)
  const migrateService = model.services.find(x => x.migrate)
  const job = jobs(model)[0]
  const backupVolumes = c.backup.volumes.map(({ name, mode }) => {
    if (name.startsWith('./')) {
      const v = bindVolumeOf(model, c.app.dir, name.slice(2).replace(/\/+$/, ''), mode)
      if (!v.services.length) throw new UsageError(`BACKUP_VOLUMES in ${c.file} names ${name}, which no service of ${file} bind-mounts (as ${name}:/path in its volumes).`)
      if (model.volumes.includes(v.name)) throw new UsageError(`BACKUP_VOLUMES in ${c.file}: ${name} and the named volume ${v.name} would be stored under the same name; rename one.`)
      return v
    }
    if (!model.volumes.includes(name)) throw new UsageError(`BACKUP_VOLUMES in ${c.file} names ${name}, which is not a named volume of ${file} (it has ${model.volumes.join(', ') || 'none'}).`)
    return volumeOf(model, c.app.name, name, mode)
  })
  // Data folders (BACKUP_VOLUMES=./uploads) are created on the host and never shipped over.
  const data = backupVolumes.filter(v => v.path).map(v => v.path!.slice(c.app.dir.length + 1))
  const project = opts.stored ? { files: opts.stored.projectFiles, dirs: data, hostPaths: [] }
    : builtIn ? { files: [], dirs: [], hostPaths: [] } : projectPaths(model, projectRoot(s.composeFiles), data, c.file)
  const st: Stack = {
    project: c.app.name, dir: c.app.dir, owner: c.deploy.user, config: c, model, builtIn, composeFiles, composeText, vars, app,
    projectFiles: project.files, projectDirs: project.dirs, hostPaths: project.hostPaths,
    db: model.postgres && (builtIn ? { service: model.postgres.service, user: s.dbUser, database: s.dbName } : model.postgres),
    healthTimeout: s.healthTimeout, drainSeconds: s.drainSeconds, keepReleases: s.keepReleases,
    proxyPort: s.proxyPort, proxyImage: s.proxyImage,
    tls: s.tls && { ...s.tls, domains: [...new Set([...s.tls.domains, ...webServices(model).flatMap(w => w.routes.map(r => r.host)).filter((h): h is string => !!h)])] },
    migrate: migrateService ? { service: migrateService.name, command: migrateService.migrate!, down: migrateService.migrateDown }
      : job ? { service: job.name, down: job.migrateDown }
      : builtIn && s.migrate ? { service: 'app', command: s.migrate, down: s.migrateDown } : undefined,
    port: app.port ?? s.port, healthPath: app.health ?? s.healthPath, backupVolumes,
  }
  const dbService = st.db && c.backup.pitr ? model.services.find(x => x.name === st.db!.service) : undefined
  if (dbService) {
    const dockerfile = pitrDockerfile(dbService.image)
    st.pitr = { baseImage: dbService.image, image: pitrImageTag(st.project, dbService.name, dockerfile), dockerfile }
  }
  if (opts.stored === undefined) cache.set(c, st)
  return st
}

/**
 * Text from the host (a container's last log line) with every secret this stack knows
 * replaced by ***: the values the compose file interpolates, DB_PASSWORD, and any URL's
 * password. It goes to the operator's terminal and the audit trail, which never hold one.
 */
export function masked(st: Stack, text: string): string {
  const secrets = [...Object.values(st.config.stack.composeVars), st.config.stack.dbPassword ?? ''].filter(v => v.length >= 4)
  let out = text.replace(/(\b[a-z][a-z0-9+.-]*:\/\/[^:/@\s]*):[^@\s]+@/gi, '$1:***@')
  for (const v of secrets.sort((a, b) => b.length - a.length)) out = out.split(v).join('***')
  return out
}

/** The PostgreSQL accessory, or a clear refusal for runbooks that need one. */
export function dbOf(st: Stack): NonNullable<Stack['db']> {
  if (!st.db) throw new UsageError(`${st.model.file} has no PostgreSQL service: opsbook finds it by its image (postgres, postgis, timescaledb) or the label opsbook.postgres: "true".`)
  return st.db
}

/**
 * The DuckDB file (DUCKDB_FILE): which service holds it open, the volume it lives in (as
 * docker names it) and its path inside that volume. Built-in stack: a path in app-data;
 * your compose file: SERVICE:/absolute/path, inside one of that service's named volumes.
 */
export function duckdbOf(st: Stack): { service: string; volume: string; file: string } | undefined {
  const v = st.config.backup.duckdbFile
  if (!v) return undefined
  if (st.builtIn) {
    if (v.includes(':')) throw new UsageError(`DUCKDB_FILE in ${st.config.file} is a path inside the app's data volume for the built-in stack (e.g. app.duckdb), not ${v}.`)
    return { service: 'app', volume: `${st.project}_app-data`, file: v }
  }
  const m = /^([^:]+):(\/.+)$/.exec(v)
  if (!m) throw new UsageError(`DUCKDB_FILE in ${st.config.file} must name the service and the file's path in it, e.g. backend:/app/data/app.duckdb.`)
  const svc = st.model.services.find(x => x.name === m[1])!
  const mount = Object.entries(svc.volumes).filter(([, target]) => m[2].startsWith(`${target.replace(/\/$/, '')}/`)).sort((a, b) => b[1].length - a[1].length)[0]
  if (!mount) throw new UsageError(`DUCKDB_FILE in ${st.config.file}: ${m[2]} is in none of ${svc.name}'s named volumes (${Object.values(svc.volumes).join(', ') || 'it has none'}); keep the file in a volume so it survives the container.`)
  return { service: svc.name, volume: `${st.project}_${mount[0]}`, file: m[2].slice(mount[1].replace(/\/$/, '').length + 1) }
}

/** A file APP_DIR/path owned by the deploy user. */
export const owned = (st: Stack, path: string, mode: string): FileSpec => ({ path: `${st.dir}/${path}`, mode, owner: `${st.owner}:${st.owner}` })

export const files = (st: Stack) => ({
  compose: (name: string) => owned(st, name, '0640'),
  override: owned(st, 'opsbook.yml', '0640'),
  env: owned(st, '.env', '0600'),
  appEnv: owned(st, 'app.env', '0600'),
  /** Rotated values (rotate-secret.ts); read by compose after app.env, never written by deploy. */
  secrets: owned(st, 'secrets.env', '0600'),
  /** Your compose file: a service's rotated values (opsbook.yml makes compose read them). */
  serviceSecrets: (service: string) => owned(st, `secrets/${service}.env`, '0600'),
  routes: owned(st, 'proxy/default.conf', '0644'),
  upstream: (service: string) => owned(st, `proxy/upstream-${service}.conf`, '0644'),
  releases: owned(st, 'releases.json', '0640'),
  /** Which releases migrated the database, when, and the backup taken before (migrations.ts). */
  migrations: owned(st, 'migrations.json', '0640'),
})

/**
 * The files the stack is made of on the host, as deploy writes them: the compose files,
 * opsbook's override and the project's files (not .env and app.env: they hold secrets and
 * come from the settings; stackFilesStep adds them).
 */
export function stackFiles(st: Stack): { spec: FileSpec; content: string | Buffer }[] {
  return [
    ...st.composeFiles.map(f => ({ spec: files(st).compose(f.name), content: f.text })),
    { spec: files(st).override, content: renderOverride(st) },
    ...st.projectFiles.map(f => ({ spec: owned(st, f.path, f.mode), content: f.content })),
  ]
}

/** Compose's .env: which files make the stack, the version, and every interpolated value (mode 0600). */
export function renderEnv(st: Stack, version: string): string {
  const vars: Record<string, string | number> = {
    COMPOSE_PROJECT_NAME: st.project, COMPOSE_FILE: [...st.composeFiles.map(f => f.name), 'opsbook.yml'].join(':'), APP_VERSION: version,
    PROXY_IMAGE: st.proxyImage, PROXY_PORT: st.proxyPort, ...(st.tls ? { PROXY_TLS_PORT: st.tls.port } : {}),
    ...st.vars,
    ...(st.builtIn ? { DB_PASSWORD: need(st.config.stack.dbPassword, 'DB_PASSWORD', st.config) } : {}),
  }
  // Single quotes: compose reads the value literally (no interpolation, no escapes).
  const line = (k: string, v: string | number) => `${k}=${/^[A-Za-z0-9_./:@%+,=-]*$/.test(String(v)) ? v : `'${v}'`}`
  return '# Managed by opsbook: written by deploy, update and rollback.\n' + Object.entries(vars).map(([k, v]) => line(k, v)).join('\n') + '\n'
}

/** The built-in app's environment file: DATABASE_URL from the settings' DB_* values, then APP_ENV_* (which may override it). */
export function renderAppEnv(st: Stack): string {
  const s = st.config.stack
  const vars = { DATABASE_URL: databaseUrl(s.dbUser, need(s.dbPassword, 'DB_PASSWORD', st.config), s.dbName), ...s.appEnv }
  return Object.entries(vars).map(([k, v]) => `${k}=${v}`).join('\n') + '\n'
}

/** Where rotate-secret keeps the rotated values of "the app" (see withService). */
export const secretsOf = (st: Stack) => (st.builtIn ? files(st).secrets : files(st).serviceSecrets(st.app.name))

/** The stack with `service` as "the app": what rotate-secret rotates and restarts. */
export function withService(st: Stack, service: string | undefined): Stack {
  if (service === undefined || st.builtIn && service === 'app') return st
  const s = released(st.model).find(x => x.name === service)
  if (!s || st.builtIn) throw new UsageError(`--service ${service}: ${st.model.file} has no web service or worker of that name (${released(st.model).map(x => x.name).join(', ')}).`)
  return { ...st, app: s }
}

/**
 * opsbook's additions to the compose file: its nginx, on opsbook's network (slots.ts; the
 * web services join it per container, at fixed addresses); and, for your compose file,
 * each released service also reads secrets/SERVICE.env (values rotate-secret put there;
 * absent until then), and a service opsbook builds is not built again on the host.
 */
export function renderOverride(st: Stack): string {
  // Per service, one entry: what rotate-secret writes (secrets/SERVICE.env, absent until
  // then), and for an image built on the operator's machine (build.ts) no build on the host
  // (its context is not there).
  const perService = st.builtIn ? [] : st.model.services.flatMap(s => {
    const lines = [
      ...(released(st.model).includes(s) ? ['    env_file:', `      - path: secrets/${s.name}.env`, '        required: false'] : []),
      ...(s.build ? ['    build: !reset null'] : []),
    ]
    return lines.length ? [`  ${s.name}:`, ...lines] : []
  })
  return [
    '# Managed by opsbook: its nginx in front of the web services (routes in proxy/).',
    'services:',
    `  ${PROXY_SERVICE}:`,
    '    image: ${PROXY_IMAGE}',
    '    restart: unless-stopped',
    '    ports:',
    '      - "${PROXY_PORT}:80"',
    ...(st.tls ? ['      - "${PROXY_TLS_PORT}:443"'] : []),
    '    volumes:',
    '      # Directories, not files: an atomic rename of a file must be seen inside.',
    '      - ./proxy:/etc/nginx/conf.d:ro',
    ...(st.tls ? [`      - ./acme:${ACME_ROOT}:ro`, `      - ./tls:${TLS_DIR}:ro`] : []),
    '    networks:',
    '      - opsbook',
    ...perService,
    ...(st.pitr && st.db ? pitrServiceOverride(st.db.service, st.pitr.image) : []),
    'networks:',
    '  opsbook:',
    `    name: ${networkName(st)}`,
    '    external: true',
  ].join('\n') + '\n'
}

/**
 * The routes file and every web service's upstream file, for its slots' addresses;
 * `tlsActive`: the certificate exists on the host, so nginx serves HTTPS.
 */
export function proxyFiles(st: Stack, ips: Map<string, SlotAddresses>, tlsActive = false): { spec: FileSpec; content: string }[] {
  const f = files(st)
  return [
    ...webServices(st.model).map(s => ({ spec: f.upstream(s.name), content: renderUpstream(s, ips.get(s.name) ?? { a: [], b: [] }) })),
    { spec: f.routes, content: renderRoutes(st.model, st.tls && { active: tlsActive, port: st.tls.port, hstsMaxAge: st.tls.hstsMaxAge, csp: st.tls.csp }) },
  ]
}

/** The certificate file nginx serves (tls.ts installs it). */
export const certificatePath = (st: Stack) => `${st.dir}/tls/opsbook.pem`

/** Every image a first deploy needs: the released services at `version`, accessories, nginx. */
export const stackImages = (st: Stack, version: string) =>
  [...new Set([...releaseImages(st, version), ...accessories(st.model).map(s => s.image), st.proxyImage])]
export const releaseImages = (st: Stack, version: string) => [...new Set([...released(st.model), ...jobs(st.model)].map(s => imageAt(s, version)))]

export interface Container { name: string; image: string; state: string; service: string; health: string }

/**
 * curl with `flags` on each route through nginx as a client reaches it, all joined by &&:
 * over HTTPS once the certificate exists (port 80 then only redirects), its name given by SNI.
 */
export function throughNginx(st: Stack, routes: { host?: string; path: string }[], flags: string[]): string {
  const http = routes.map(r => sh`curl ${flags} -m 5 -o /dev/null ` + (r.host ? sh`-H ${`Host: ${r.host}`} ` : '') + sh`${`http://127.0.0.1:${st.proxyPort}${r.path}`}`).join(' && ')
  if (!st.tls) return http
  const https = routes.map(r => {
    const name = r.host ?? st.tls!.domains[0]
    // -k: this checks the route, not the certificate (status.ts reports that).
    return sh`curl ${flags} -k -m 5 -o /dev/null --resolve ${`${name}:${st.tls!.port}:127.0.0.1`} ${`https://${name}:${st.tls!.port}${r.path}`}`
  }).join(' && ')
  return sh`if [ -s ${certificatePath(st)} ]; then ` + `${https}; else ${http}; fi`
}

export const stackCommands = {
  /** docker compose in APP_DIR (its .env names the files); `version` overrides APP_VERSION for this command only. */
  compose: (st: Stack, args: string, version?: string) => sh`cd ${st.dir} && ` + (version ? sh`APP_VERSION=${version} ` : '') + sh`docker compose -p ${st.project} ` + args,
  /** The stack's containers as "name image state service health", oldest first. */
  // Not one-off containers (exec.ts's consoles, compose run): they are no release's, and a deploy must not count or stop them.
  containers: (st: Stack) => sh`docker ps -a --filter ${`label=com.docker.compose.project=${st.project}`} --filter label=com.docker.compose.oneoff=False --format '{{.CreatedAt}}\t{{.Names}}\t{{.Image}}\t{{.State}}\t{{.Label "com.docker.compose.service"}}\t{{.Status}}' | sort | cut -f2-`,
  /**
   * Polls each container's health URL from the host until all answer 2xx or the deadline
   * passes: at its address on opsbook's network (as nginx will reach it) when given.
   */
  waitHealthy: (s: ServiceModel, containers: string[], timeout: number, ips: Map<string, string> = new Map()) => [
    sh`deadline=$(( $(date +%s) + ${timeout} ))`,
    sh`for c in ${containers.map(c => `${c}=${ips.get(c) ?? ''}`)}; do`,
    '  ip=${c#*=}; c=${c%%=*}',
    `  until { [ -n "$ip" ] || ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$c" | cut -d' ' -f1); } && [ -n "$ip" ] && ` +
      sh`curl -fsS -m 2 -o /dev/null "http://$ip:${String(s.port)}${s.health!}"; do`,
    `    if [ "$(date +%s)" -ge "$deadline" ]; then echo "unhealthy $c" >&2; exit 1; fi`,
    `    [ "$(docker inspect -f '{{.State.Status}}' "$c")" = running ] || { echo "exited $c: $(docker logs --tail 1 "$c" 2>&1 | cut -c1-200)" >&2; exit 1; }`,
    '    sleep 0.5',
    '  done',
    'done',
  ].join('\n'),
  /**
   * Workers: each container's own health check says healthy, or (without one) it has been
   * running `settle` seconds without a restart.
   */
  waitWorkers: (s: ServiceModel, containers: string[], timeout: number) => [
    sh`deadline=$(( $(date +%s) + ${timeout} ))`,
    sh`for c in ${containers}; do`,
    s.healthcheck
      ? `  until [ "$(docker inspect -f '{{.State.Health.Status}}' "$c")" = healthy ]; do`
      : sh`  until [ $(( $(date +%s) - $(date -d "$(docker inspect -f '{{.State.StartedAt}}' "$c")" +%s) )) -ge ${String(s.settle)} ]; do`,
    `    if [ "$(date +%s)" -ge "$deadline" ]; then echo "unhealthy $c" >&2; exit 1; fi`,
    `    [ "$(docker inspect -f '{{.State.Status}} {{.RestartCount}}' "$c")" = "running 0" ] || { echo "exited $c: $(docker logs --tail 1 "$c" 2>&1 | cut -c1-200)" >&2; exit 1; }`,
    '    sleep 0.5',
    '  done',
    'done',
  ].join('\n'),
  /**
   * Each web service's health path through nginx, as a client sees it: over HTTPS once
   * the certificate exists (port 80 then only redirects), its name given by SNI.
   */
  proxyHealthy: (st: Stack) => throughNginx(st, webServices(st.model).map(healthRoute), ['-fsS']),
  /** Until every web service answers its health path through nginx, or `seconds` pass. */
  awaitProxyHealthy: (st: Stack, seconds: number) =>
    `i=0; until ${stackCommands.proxyHealthy(st)}; do i=$((i+1)); [ $i -lt ${seconds * 2} ] || exit 1; sleep 0.5; done`,
  /**
   * Installs routes and upstreams together, validated by nginx inside the proxy, then
   * reloads nginx gracefully: only when an address or a route changed (a reload closes
   * idle keep-alive connections; a swap does not need one).
   */
  installProxy: (st: Stack, fs: { spec: FileSpec; content: string }[]) =>
    fileCommands.installMany(fs.map(f => ({ spec: f.spec, bytes: Buffer.byteLength(f.content) })), stackCommands.compose(st, sh`exec -T ${PROXY_SERVICE} nginx -t -q`)) +
    '\n' + stackCommands.compose(st, sh`exec -T ${PROXY_SERVICE} nginx -s reload`),
  /** SIGTERM (the service drains or finishes its job), then removal after `grace` seconds at most. */
  retire: (containers: string[], grace = 30) => sh`docker stop -t ${String(grace)} ${containers} >/dev/null && docker rm ${containers} >/dev/null`,
}

export function parseContainers(stdout: string): Container[] {
  return stdout.split('\n').filter(Boolean).map(l => {
    const [name, image, state, service, status = ''] = l.split('\t')
    return { name, image, state, service, health: /\((healthy|unhealthy|health: starting)\)/.exec(status)?.[1] ?? '' }
  })
}
