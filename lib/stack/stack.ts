// The deployed stack on a host: files under APP_DIR, compose commands, app containers,
// their health, and the nginx upstream that decides which of them get traffic.
import { need, type Config } from '../config.ts'
import { UsageError } from '../errors.ts'
import { fileCommands, template, type FileSpec } from '../host/files.ts'
import { databaseUrl } from './secrets.ts'
import { sh } from '../sh.ts'

/** Docker tag grammar; anything else (spaces, ;, $(, newlines) is refused before connecting. */
const VERSION = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/

export function checkVersion(v: string | undefined, flag = '--version'): string {
  if (v === undefined || v === '') throw new UsageError(`No version given: pass ${flag} TAG (the image tag to run).`)
  if (!VERSION.test(v)) throw new UsageError(`${flag} ${JSON.stringify(v)} is not a valid image tag: use letters, digits, ".", "_" and "-" (at most 128, not starting with "." or "-").`)
  return v
}

export interface Stack {
  project: string
  dir: string
  owner: string
  image: string
  port: number
  healthPath: string
  replicas: number
  healthTimeout: number
  drainSeconds: number
  migrate?: string
  keepReleases: number
  proxyPort: number
  config: Config
}

export function stackOf(c: Config): Stack {
  const s = c.stack
  return {
    project: c.app.name, dir: c.app.dir, owner: c.deploy.user, image: need(s.image, 'APP_IMAGE', c), port: s.port, healthPath: s.healthPath,
    replicas: s.replicas, healthTimeout: s.healthTimeout, drainSeconds: s.drainSeconds, migrate: s.migrate, keepReleases: s.keepReleases,
    proxyPort: s.proxyPort, config: c,
  }
}

export const files = (st: Stack) => ({
  compose: { path: `${st.dir}/compose.yml`, mode: '0640', owner: `${st.owner}:${st.owner}` } satisfies FileSpec,
  env: { path: `${st.dir}/.env`, mode: '0600', owner: `${st.owner}:${st.owner}` } satisfies FileSpec,
  appEnv: { path: `${st.dir}/app.env`, mode: '0600', owner: `${st.owner}:${st.owner}` } satisfies FileSpec,
  /** Rotated values (rotate-secret.ts); read by compose after app.env, never written by deploy. */
  secrets: { path: `${st.dir}/secrets.env`, mode: '0600', owner: `${st.owner}:${st.owner}` } satisfies FileSpec,
  proxy: { path: `${st.dir}/proxy/default.conf`, mode: '0644', owner: `${st.owner}:${st.owner}` } satisfies FileSpec,
  releases: { path: `${st.dir}/releases.json`, mode: '0640', owner: `${st.owner}:${st.owner}` } satisfies FileSpec,
})

/** Compose's .env: interpolation values, including the database password (mode 0600). */
export function renderEnv(st: Stack, version: string): string {
  const s = st.config.stack
  const vars: Record<string, string | number> = {
    COMPOSE_PROJECT_NAME: st.project, APP_IMAGE: st.image, APP_VERSION: version, APP_PORT: st.port,
    DB_IMAGE: s.dbImage, DB_NAME: s.dbName, DB_USER: s.dbUser, DB_PASSWORD: need(s.dbPassword, 'DB_PASSWORD', st.config),
    PROXY_IMAGE: s.proxyImage, PROXY_PORT: st.proxyPort,
  }
  return '# Managed by opsbook: written by deploy, update and rollback.\n' + Object.entries(vars).map(([k, v]) => `${k}=${v}`).join('\n') + '\n'
}

/** The app's environment file: DATABASE_URL from the settings' DB_* values, then APP_ENV_* (which may override it). */
export function renderAppEnv(st: Stack): string {
  const s = st.config.stack
  const vars = { DATABASE_URL: databaseUrl(s.dbUser, need(s.dbPassword, 'DB_PASSWORD', st.config), s.dbName), ...s.appEnv }
  return Object.entries(vars).map(([k, v]) => `${k}=${v}`).join('\n') + '\n'
}

export function renderProxy(st: Stack, containers: string[]): string {
  return template('proxy.conf').replace('{{SERVERS}}', containers.map(c => `  server ${c}:${st.port} max_fails=0;`).join('\n'))
}

export const composeTemplate = () => template('compose.yml')

/** The names compose gives the first n app containers. */
export const initialContainers = (st: Stack) => Array.from({ length: st.replicas }, (_, i) => `${st.project}-app-${i + 1}`)

export interface AppContainer { name: string; image: string; state: string }

export const stackCommands = {
  /** docker compose in APP_DIR; `version` overrides APP_VERSION from .env for this command only. */
  compose: (st: Stack, args: string, version?: string) => sh`cd ${st.dir} && ` + (version ? sh`APP_VERSION=${version} ` : '') + sh`docker compose -p ${st.project} ` + args,
  /** App containers as "name image state", oldest first. */
  appContainers: (st: Stack) => sh`docker ps -a --filter ${`label=com.docker.compose.project=${st.project}`} --filter label=com.docker.compose.service=app --format '{{.CreatedAt}}\t{{.Names}}\t{{.Image}}\t{{.State}}' | sort | cut -f2-`,
  /** Polls each container's health URL from the host until all answer 2xx or the deadline passes. */
  waitHealthy: (st: Stack, containers: string[], timeout: number) => [
    sh`deadline=$(( $(date +%s) + ${timeout} ))`,
    sh`for c in ${containers}; do`,
    `  until ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$c" | cut -d' ' -f1) && [ -n "$ip" ] && ` +
      sh`curl -fsS -m 2 -o /dev/null "http://$ip:${st.port}${st.healthPath}"; do`,
    `    if [ "$(date +%s)" -ge "$deadline" ]; then echo "unhealthy $c" >&2; exit 1; fi`,
    `    [ "$(docker inspect -f '{{.State.Status}}' "$c")" = running ] || { echo "exited $c" >&2; exit 1; }`,
    '    sleep 0.5',
    '  done',
    'done',
  ].join('\n'),
  /** Health through nginx, as a client sees it. */
  proxyHealthy: (st: Stack) => sh`curl -fsS -m 5 -o /dev/null ${`http://127.0.0.1:${st.proxyPort}${st.healthPath}`}`,
  /** Installs the upstream file, validated by nginx inside the proxy, then reloads nginx gracefully. */
  switchProxy: (st: Stack) => fileCommands.install({ ...files(st).proxy, validate: stackCommands.compose(st, 'exec -T proxy nginx -t -q') }) +
    '\n' + stackCommands.compose(st, 'exec -T proxy nginx -s reload'),
  /** SIGTERM (the app drains), then removal. */
  retire: (containers: string[]) => sh`docker stop -t 30 ${containers} >/dev/null && docker rm ${containers} >/dev/null`,
}

export function parseContainers(stdout: string): AppContainer[] {
  return stdout.split('\n').filter(Boolean).map(l => {
    const [name, image, state] = l.split('\t')
    return { name, image, state }
  })
}
