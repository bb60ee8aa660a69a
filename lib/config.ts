// Settings: one dotenv file per environment (`--env production` reads .env.production),
// every key declared once below with its parser and its line of documentation
// (.env.example is checked against this table by a unit test). Values from the
// process environment win over the file, so cron and CI can override one key.
import { existsSync, readFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import dotenv from 'dotenv'
import { UsageError } from './errors.ts'
import { nearest, parseHosts, RECIPIENT, referencedVariables, type HostAddress } from './values.ts'

type Parse<T> = (value: string) => T

interface KeySpec<T> {
  doc: string
  parse: Parse<T>
  default?: string
}

const fail = (what: string) => { throw new Error(what) }

const pattern = (re: RegExp, what: string): Parse<string> => v => (re.test(v) ? v : fail(what))
const host = pattern(/^[A-Za-z0-9][A-Za-z0-9._:-]*$/, 'a host name, IP address or ~/.ssh/config alias')
const user = pattern(/^[a-z_][a-z0-9_-]{0,31}$/, 'a Unix user name (lower case letters, digits, - and _)')
const remotePath = pattern(/^\/[A-Za-z0-9._/-]*$/, 'an absolute path of letters, digits, ".", "_", "-" and "/"')
const appName = pattern(/^[a-z][a-z0-9-]{0,30}$/, 'a short lower-case name (letters, digits and -)')
const size = pattern(/^(0|[1-9][0-9]{0,5}[MG])$/, 'a size like 512M or 2G, or 0 for none')
const port: Parse<number> = v => {
  const n = Number(v)
  return /^[0-9]+$/.test(v) && n >= 1 && n <= 65535 ? n : fail('a port number from 1 to 65535')
}
const ports: Parse<number[]> = v => (v.trim() === '' ? [] : v.split(',').map(p => port(p.trim())))
const localPath: Parse<string> = v => (v.includes('\n') ? fail('a file path') : expandHome(v))
const image = pattern(/^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$/, 'an image name without tag, like registry.example.com/team/app')
const imageRef = pattern(/^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/, 'an image reference with tag, like postgres:17')
const urlPath = pattern(/^\/[A-Za-z0-9._~/-]*$/, 'a URL path like /health')
const count = (max: number): Parse<number> => v => (/^[0-9]+$/.test(v) && Number(v) >= 1 && Number(v) <= max ? Number(v) : fail(`a whole number from 1 to ${max}`))
const secret: Parse<string> = v => (/^[\x21-\x7e]{8,}$/.test(v) && !/['"\\$`]/.test(v) ? v : fail('at least 8 printable characters without quotes, backslash, $ or backtick'))
const shellCommand: Parse<string> = v => (v.includes('\n') ? fail('a one-line command') : v)
const recipients: Parse<string[]> = v => { const l = v.split(',').map(r => r.trim()).filter(Boolean); return l.length && l.every(r => RECIPIENT.test(r)) ? l : fail('age public keys (age1…) separated by commas') }
const hostList: Parse<HostAddress[]> = v => { try { return parseHosts(v) } catch { return fail('host names separated by commas (host or host:port)') } }
const domains: Parse<string[]> = v => {
  const l = v.split(',').map(d => d.trim().toLowerCase()).filter(Boolean)
  return l.length && l.every(d => /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$/.test(d)) ? l : fail('domain names separated by commas, like example.com,www.example.com')
}
const email = pattern(/^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$/, 'an e-mail address')
const httpsUrl = pattern(/^https:\/\/[A-Za-z0-9.-]+(:[0-9]+)?(\/[A-Za-z0-9._~/-]*)?$/, 'an https:// URL')
// Goes into nginx's config inside double quotes: nothing that would end or interpolate it.
const headerValue = pattern(/^[\x20-\x7e]+$/, 'one line of printable characters')
const cspValue: Parse<string> = v => (/["\\$]/.test(v) ? fail('a policy without double quotes, backslashes or $') : headerValue(v))
const seconds = (max: number): Parse<number> => v => (/^[0-9]+$/.test(v) && Number(v) <= max ? Number(v) : fail(`a number of seconds from 0 to ${max}`))
/** 90s, 30m, 1h, 31d → seconds. */
export const duration: Parse<number> = v => {
  const m = /^([1-9][0-9]{0,5})(s|m|h|d)$/.exec(v)
  return m ? Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[m[2] as 's']! : fail('a duration like 90s, 30m, 1h or 31d')
}
const oneOf = <T extends string>(...values: T[]): Parse<T> => v =>
  (values.includes(v as T) ? (v as T) : fail(`one of ${values.join(', ')}`))

export function expandHome(p: string): string {
  return p === '~' ? homedir() : p.startsWith('~/') ? join(homedir(), p.slice(2)) : p
}

export const KEYS = {
  TARGET: { doc: 'ssh (default) runs steps over SSH; local runs them on this machine (cron on the VPS itself)', parse: oneOf('ssh', 'local'), default: 'ssh' },
  SSH_HOST: { doc: 'Host name, IP address or ~/.ssh/config alias of the VPS', parse: host },
  SSH_PORT: { doc: 'SSH port (default: from ~/.ssh/config, else 22)', parse: port },
  SSH_USER: { doc: 'User to log in as; not root means commands run through sudo -n (default: from ~/.ssh/config, else root)', parse: user },
  SSH_KEY: { doc: 'Private key file (default: ~/.ssh/config IdentityFile, the ssh-agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa)', parse: localPath },
  SSH_HOSTS: { doc: 'Several hosts running this same stack (comma separated, host or host:port): provision, deploy and update take them in batches (--hosts overrides; SSH_HOST is then unused)', parse: hostList },
  ENGINE: { doc: 'compose (default): each host runs the whole stack with Docker Compose; swarm: the SSH_HOSTS nodes form one Docker Swarm cluster (provision and status so far; see README)', parse: oneOf('compose', 'swarm'), default: 'compose' },
  SWARM_MANAGERS: { doc: 'ENGINE=swarm: how many of the first SSH_HOSTS nodes are managers, an odd number (default: a third of the nodes, at least 1); the first node is also the edge (nginx, FIREWALL_PORTS) and holds the data', parse: count(7) },
  SWARM_INTERFACE: { doc: 'ENGINE=swarm: network interface whose IPv4 address the nodes reach each other on, e.g. a private network\'s eth1 (default: the interface of the default route)', parse: pattern(/^[A-Za-z0-9_.@-]{1,15}$/, 'an interface name like eth1') },
  SSH_KNOWN_HOSTS: { doc: 'known_hosts file the host key is checked against', parse: localPath, default: '~/.ssh/known_hosts' },
  APP_NAME: { doc: 'Name of the application, used for directories and compose project', parse: appName, default: 'app' },
  APP_DIR: { doc: 'Directory on the host holding the release (default: /opt/APP_NAME)', parse: remotePath },
  DEPLOY_USER: { doc: 'Unprivileged user that owns the app and runs docker', parse: user, default: 'deploy' },
  DEPLOY_PUBLIC_KEY: { doc: 'Public key file allowed to log in as DEPLOY_USER (default: SSH_KEY.pub, else ~/.ssh/id_ed25519.pub)', parse: localPath },
  FIREWALL_PORTS: { doc: 'TCP ports opened in ufw besides SSH (comma separated; empty for none)', parse: ports, default: '80,443' },
  SWAP_SIZE: { doc: 'Swap file created when the host has no swap (0 for none)', parse: size, default: '1G' },
  COMPOSE_FILE: { doc: 'Your compose file, or several separated by ":" merged as `docker compose -f a -f b` merges them (e.g. compose.yml:compose.prod.yml:opsbook.override.yml), relative to this settings file (unset: the built-in app + PostgreSQL stack). Services are web, worker or accessory (labels opsbook.*; see docs/your-stack.md); the variables they interpolate are read from this file too', parse: localPath },
  APP_IMAGE: { doc: 'Image of the app, without tag (the version is the tag): e.g. registry.example.com/team/app', parse: image },
  APP_PORT: { doc: 'Port the app listens on inside its container', parse: port, default: '8080' },
  APP_HEALTH_PATH: { doc: 'Path that answers 2xx when the app is healthy', parse: urlPath, default: '/health' },
  APP_REPLICAS: { doc: 'Number of app containers behind nginx', parse: count(16), default: '1' },
  HEALTH_TIMEOUT: { doc: 'Seconds a new release has to become healthy before it is stopped and marked bad', parse: count(3600), default: '60' },
  DRAIN_SECONDS: { doc: 'Seconds old containers keep finishing requests after nginx stops sending them new ones', parse: count(600), default: '2' },
  MIGRATE_COMMAND: { doc: 'Command run once per release in a one-off app container before it starts (e.g. npm run migrate); a backup of PostgreSQL is taken first (update.ts --skip-backup to not)', parse: shellCommand },
  MIGRATE_DOWN_COMMAND: { doc: 'Command that undoes a release\'s migration (e.g. alembic downgrade -1), run by rollback.ts --migrate-down in a one-off container of the release being left', parse: shellCommand },
  MIGRATION_BACKUP_DAYS: { doc: 'Days the backup taken before a migration is kept, whatever the retention counts say', parse: count(3650), default: '30' },
  KEEP_RELEASES: { doc: 'Images of this many latest good releases are kept on the host for fast rollback', parse: count(100), default: '5' },
  PROXY_IMAGE: { doc: 'nginx image of the proxy', parse: imageRef, default: 'nginx:1.27' },
  PROXY_PORT: { doc: 'Host port nginx publishes', parse: port, default: '80' },
  LOCK_STALE_AFTER: { doc: 'Seconds without a heartbeat (sent every 30) after which a host lock\'s holder is presumed dead: --take-stale-lock (cron) then takes it over, a terminal asks', parse: count(86400), default: '300' },
  TLS_DOMAINS: { doc: 'HTTPS: the names nginx serves, in one certificate from the ACME CA (comma separated; the compose file\'s opsbook.host names are added). Port 80 then only answers ACME challenges and redirects. Unset: HTTP only', parse: domains },
  ACME_EMAIL: { doc: 'Contact e-mail of the ACME account (the CA writes about expiring certificates)', parse: email },
  ACME_DIRECTORY: { doc: 'ACME directory URL of the CA', parse: httpsUrl, default: 'https://acme-v02.api.letsencrypt.org/directory' },
  ACME_STAGING: { doc: '1: use Let\'s Encrypt\'s staging CA instead (untrusted certificates, generous rate limits) for trying things out', parse: oneOf('0', '1'), default: '0' },
  ACME_CA_BUNDLE: { doc: 'PEM file of a private CA the host trusts for the ACME API only (e.g. Pebble\'s in tests)', parse: localPath },
  PROXY_TLS_PORT: { doc: 'Host port nginx publishes for HTTPS', parse: port, default: '443' },
  HSTS_MAX_AGE: { doc: 'Seconds for Strict-Transport-Security (0: no header; browsers then keep accepting HTTP)', parse: seconds(63072000), default: '0' },
  CONTENT_SECURITY_POLICY: { doc: 'Content-Security-Policy header nginx adds to HTTPS answers (unset: none; the app may send its own)', parse: cspValue },
  DB_IMAGE: { doc: 'PostgreSQL image (POSTGRES_USER/PASSWORD/DB variables, like the official one)', parse: imageRef, default: 'postgres:17' },
  DB_NAME: { doc: 'Database name (default: APP_NAME)', parse: user },
  DB_USER: { doc: 'Database user (default: APP_NAME)', parse: user },
  DB_PASSWORD: { doc: 'Database password (secret: never printed or logged)', parse: secret },
  IMAGE_SOURCE: { doc: 'registry: the host pulls images; local: images are streamed from this machine\'s docker over SSH (no registry)', parse: oneOf('registry', 'local'), default: 'registry' },
  IMAGE_SHIP: { doc: 'IMAGE_SOURCE=local: layers sends only the image layers a host lacks (through a registry on this machine, reached over the SSH connection); save streams whole images (docker save)', parse: oneOf('layers', 'save'), default: 'layers' },
  LAYER_CACHE: { doc: 'IMAGE_SHIP=layers: where this machine\'s registry keeps layers between runs (safe to delete; the next run pushes them again locally)', parse: localPath, default: '~/.cache/opsbook/layers' },
  IMAGE_SHIP_COMPRESSION: { doc: 'IMAGE_SOURCE=local: gzip (level 1, what docker load reads) sends about a third of the bytes; none is for a fast LAN where the CPU is the limit', parse: oneOf('gzip', 'none'), default: 'gzip' },
  REGISTRY_USER: { doc: 'User for docker login to the registry named in APP_IMAGE', parse: user },
  REGISTRY_PASSWORD: { doc: 'Password or token for that login (secret; sent on stdin, never in argv)', parse: secret },
  PRE_HOOK: { doc: 'Local script run before deploy, update or rollback changes anything; a non-zero exit stops the run (OPSBOOK_* variables describe it)', parse: localPath },
  POST_HOOK: { doc: 'Local script run after deploy, update or rollback succeeded on every host (a failure is reported, not undone)', parse: localPath },
  FAILURE_HOOK: { doc: 'Local script run when deploy, update or rollback failed on a host (OPSBOOK_ERROR says why)', parse: localPath },
  BACKUP_DEST: { doc: 'Where backups go: local (the BACKUP_DIR folder on this machine) or s3://bucket/prefix', parse: pattern(/^(local|s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](\/[A-Za-z0-9._\/-]*)?)$/, 'local or s3://bucket/prefix'), default: 'local' },
  BACKUP_DIR: { doc: 'Folder for BACKUP_DEST=local', parse: localPath, default: './backups' },
  S3_ENDPOINT: { doc: 'S3-compatible endpoint URL (leave unset for AWS)', parse: pattern(/^https?:\/\/[A-Za-z0-9.:[\]-]+\/?$/, 'an http(s) URL like https://s3.example.com') },
  S3_REGION: { doc: 'S3 region', parse: pattern(/^[a-z0-9-]{2,32}$/, 'a region like eu-central-1'), default: 'us-east-1' },
  AWS_ACCESS_KEY_ID: { doc: 'S3 access key (default: the AWS SDK\'s own lookup: environment, ~/.aws, instance role)', parse: pattern(/^[A-Za-z0-9_-]{3,128}$/, 'an access key id') },
  AWS_SECRET_ACCESS_KEY: { doc: 'S3 secret key (secret)', parse: secret },
  // 8 MiB kept backup.ts's peak RSS flat at ~160 MiB for 100 MB and 1 GB dumps (bench:backup);
  // 64 MiB parts peaked at 377 MiB. Raise it only for dumps over ~75 GiB.
  BACKUP_COMPRESSION: { doc: 'pg_dump\'s compression: auto (zstd level 1 on PostgreSQL 16+, gzip before), gzip, zstd:LEVEL (1-19), lz4 or none', parse: v => (/^(auto|gzip|lz4|none|zstd(:([1-9]|1[0-9]))?)$/.test(v) ? v : fail('auto, gzip, zstd:1 to zstd:19, lz4 or none')), default: 'auto' },
  S3_PART_SIZE_MB: { doc: 'Multipart part size in MiB (at least 5); 10,000 parts cap one object at 10,000 × this (8: 78 GiB), memory is about 4 × this', parse: v => (count(5120)(v) >= 5 ? Number(v) : fail('a whole number from 5 (S3\'s smallest part) to 5120')), default: '8' },
  DUCKDB_FILE: { doc: 'The app\'s DuckDB file: with COMPOSE_FILE, SERVICE:/path/in/its/container (in a named volume), e.g. backend:/app/data/app.duckdb; built-in stack: a path inside the app-data volume (/data), e.g. app.duckdb', parse: pattern(/^(?:[A-Za-z0-9][A-Za-z0-9_.-]*:\/[A-Za-z0-9._/-]+|[A-Za-z0-9._-][A-Za-z0-9._/-]*)$/, 'a path of letters, digits, ".", "_", "-" and "/", or SERVICE:/path') },
  BACKUP_VOLUMES: { doc: 'Named volumes of COMPOSE_FILE backed up as tar files (comma separated), e.g. uploads,redis_data, or a bind-mounted folder beside the compose file holding data, e.g. ./uploads (created on the host, never shipped over); NAME:freeze pauses the services that mount it while it is copied (default: copied live; a Redis volume after a BGSAVE)', parse: pattern(/^(\.\/[A-Za-z0-9_.-][A-Za-z0-9_./-]*|[A-Za-z0-9][A-Za-z0-9_.-]*)(:(freeze|live))?(\s*,\s*(\.\/[A-Za-z0-9_.-][A-Za-z0-9_./-]*|[A-Za-z0-9][A-Za-z0-9_.-]*)(:(freeze|live))?)*$/, 'volume names or ./folders separated by commas, each optionally :freeze or :live') },
  DUCKDB_BACKUP_COMMAND: { doc: 'Command run in an app container that writes a consistent copy of the DuckDB database to $OPSBOOK_BACKUP_TO (unset: freeze the app containers while the file is copied)', parse: shellCommand },
  BACKUP_AGE_RECIPIENTS: { doc: 'Encrypt backups (age format, on this machine) to these public keys (age1…, comma separated); unset: not encrypted', parse: recipients },
  BACKUP_AGE_IDENTITY_FILE: { doc: 'age private key file (from age-keygen) used to restore encrypted backups; never needed to take them, never sent to a host', parse: localPath },
  BACKUP_KEEP_LAST: { doc: 'Retention: keep the newest N backups', parse: count(10000), default: '7' },
  BACKUP_KEEP_DAILY: { doc: 'Retention: and the newest of each of the last N days', parse: count(10000), default: '7' },
  BACKUP_KEEP_WEEKLY: { doc: 'Retention: and of each of the last N weeks', parse: count(10000), default: '4' },
  BACKUP_KEEP_MONTHLY: { doc: 'Retention: and of each of the last N months', parse: count(10000), default: '6' },
  BACKUP_MIN_KEEP: { doc: 'Retention: never fewer than N backups (pinned ones are never deleted)', parse: count(10000), default: '3' },
  BACKUP_RPO: { doc: 'Recovery point objective: status.ts warns (and --check fails) when the newest full backup is older than this (e.g. 1h, 30m, 1d; off: this environment is not backed up)', parse: v => (v === 'off' ? 0 : duration(v)), default: '1h' },
  DRILL_MAX_AGE: { doc: 'status.ts warns (and --check fails) when the newest successful restore drill is older than this (off: not checked)', parse: v => (v === 'off' ? 0 : duration(v)), default: '31d' },
  PITR: { doc: 'on: point-in-time recovery with pgBackRest (needs BACKUP_DEST=s3://…): deploy adds pgbackrest to the PostgreSQL image, archives every WAL segment to the bucket and takes base backups; restore.ts --to-time then goes back to any second (see README)', parse: oneOf('on', 'off'), default: 'off' },
  PITR_MAX_LAG: { doc: 'PITR: the most data a lost host may take with it: PostgreSQL switches WAL segments at least this often (archive_timeout) and status.ts warns (--check fails) when archiving falls further behind', parse: duration, default: '60s' },
  PITR_CIPHER_PASS: { doc: 'PITR: passphrase of the pgBackRest repository (aes-256-cbc; secret). Keep a copy apart from the host, like the age key: without it the archive cannot be read', parse: secret },
  PITR_S3_ENDPOINT: { doc: 'PITR: the S3 endpoint as the host reaches it, when that differs from S3_ENDPOINT (a private network); https only', parse: pattern(/^https:\/\/[A-Za-z0-9.:[\]-]+\/?$/, 'an https URL like https://s3.example.com') },
  PITR_S3_CA_FILE: { doc: 'PITR: PEM file of a private CA that signed the S3 endpoint\'s certificate (sent to the host for pgBackRest)', parse: localPath },
  PITR_KEEP_FULL: { doc: 'PITR: full base backups kept (with every WAL segment since the oldest); a full backup runs weekly and a differential daily', parse: count(100), default: '2' },
  BACKUP_PING_URL: { doc: 'Dead man\'s switch (healthchecks.io style): GET URL/start, URL on success, URL/fail on failure', parse: pattern(/^https?:\/\/[^\s'"\\`$]+$/, 'an http(s) URL') },
  RESTORE_DRILL_PING_URL: { doc: 'Dead man\'s switch for restore.ts --drill (same pings as BACKUP_PING_URL)', parse: pattern(/^https?:\/\/[^\s'"\\`$]+$/, 'an http(s) URL') },
  PROTECTED: { doc: 'yes marks this environment as production: destructive steps need its name typed (default: yes for "production")', parse: oneOf('yes', 'no') },
} satisfies Record<string, KeySpec<unknown>>

export type Key = keyof typeof KEYS

/** Keys whose values never appear in output, logs or the audit trail. */
export const SECRET_KEYS: Key[] = ['DB_PASSWORD', 'REGISTRY_PASSWORD', 'AWS_SECRET_ACCESS_KEY', 'PITR_CIPHER_PASS']
/** APP_ENV_X=value in the settings file becomes X=value in the app's environment on the host. */
export const APP_ENV_PREFIX = 'APP_ENV_'
type Values = { [K in Key]: ReturnType<(typeof KEYS)[K]['parse']> }

export interface TlsSettings {
  domains: string[]; email?: string; directory: string; caBundle?: string; port: number; hstsMaxAge: number; csp?: string
}

export interface Config {
  env: string
  file: string
  protected: boolean
  target: 'ssh' | 'local'
  ssh: { host: string; port?: number; user?: string; key?: string; knownHosts: string }
  /** SSH_HOSTS: the same stack on several hosts (ENGINE=compose) or the cluster's nodes (ENGINE=swarm). */
  hosts?: HostAddress[]
  /** ENGINE=swarm: the first `managers` nodes manage the cluster (lib/host/cluster.ts). */
  cluster?: { managers: number; iface?: string }
  hooks: { pre?: string; post?: string; failure?: string }
  backup: {
    dest: string; dir: string; s3: { endpoint?: string; region: string; accessKeyId?: string; secretAccessKey?: string; partMiB: number }
    compression: string
    duckdbFile?: string; duckdbCommand?: string
    /** BACKUP_VOLUMES as given: name and copy mode. */
    volumes: { name: string; mode: 'freeze' | 'live' }[]
    pingUrl?: string; drillPingUrl?: string
    /** age public keys: set means every object is encrypted. */
    recipients?: string[]; identityFile?: string
    retention: { last: number; daily: number; weekly: number; monthly: number; minKeep: number }
    /** Seconds: BACKUP_RPO and DRILL_MAX_AGE (0: off). */
    rpo: number; drillMaxAge: number
    /** Days a pre-migration backup is kept. */
    migrationDays: number
    /** PITR=on: pgBackRest archives WAL into the S3 store (lib/data/pitr.ts). */
    pitr?: { maxLag: number; cipherPass?: string; endpoint?: string; caFile?: string; keepFull: number }
  }
  app: { name: string; dir: string }
  deploy: { user: string; publicKey: string }
  firewallPorts: number[]
  swapSize: string
  lockStaleAfter: number
  stack: {
    image?: string; port: number; healthPath: string; replicas: number; healthTimeout: number; drainSeconds: number
    migrate?: string; migrateDown?: string; keepReleases: number; proxyImage: string; proxyPort: number
    tls?: TlsSettings
    dbImage: string; dbName: string; dbUser: string; dbPassword?: string
    imageSource: 'registry' | 'local'; ship: 'layers' | 'save'; layerCache: string; shipCompression: 'gzip' | 'none'; registryUser?: string; registryPassword?: string
    /** The app's own variables (APP_ENV_ prefix removed). */
    appEnv: Record<string, string>
    /** COMPOSE_FILE's first file, absolute: its folder is the project folder, as for compose. */
    composeFile?: string
    /** Every file of COMPOSE_FILE, absolute, in merge order. */
    composeFiles: string[]
    /** Values of the variables COMPOSE_FILE interpolates (from the environment or this file); never printed. */
    composeVars: Record<string, string>
  }
}

/** Fails with one sentence when a runbook needs a setting the file does not have. */
export function need<T>(value: T | undefined, key: Key, config: Config): T {
  if (value === undefined || value === '') throw new UsageError(`${key} is not set in ${config.file}: this runbook needs it (see .env.example).`)
  return value
}

const ENV_NAME = /^[a-z0-9][a-z0-9_-]{0,30}$/

export function envFileFor(env: string, dir = process.cwd()): string {
  if (!ENV_NAME.test(env)) throw new UsageError(`The environment name "${env}" is not valid: use lower-case letters, digits, - and _.`)
  return resolve(dir, `.env.${env}`)
}

/** Reads and validates the env file; every problem is one sentence naming the key and the file. */
export function loadConfig(opts: { env?: string; envFile?: string; environ?: NodeJS.ProcessEnv }): Config {
  const environ = opts.environ ?? process.env
  const file = opts.envFile ? resolve(opts.envFile) : opts.env ? envFileFor(opts.env) : undefined
  if (!file) throw new UsageError('No environment chosen: pass --env NAME (reads .env.NAME) or set OPS_ENV.')
  if (!existsSync(file)) throw new UsageError(`The settings file ${file} does not exist: copy .env.example to it and fill it in.`)
  const env = opts.env ?? (/\.env\.([^/]+)$/.exec(file)?.[1] ?? 'default')
  const fromFile = dotenv.parse(readFileSync(file))

  // The operator's compose file interpolates its own variables (${POSTGRES_PASSWORD}):
  // they are settings too, so a key it names is not an unknown key.
  const composeRel = environ.COMPOSE_FILE ?? fromFile.COMPOSE_FILE
  // Docker's own COMPOSE_FILE convention: a list separated by ":".
  const composeFiles = (composeRel ?? '').split(':').map(f => f.trim()).filter(Boolean).map(f => resolve(dirname(file), expandHome(f)))
  const composeFile = composeFiles[0]
  const referenced = new Set(composeFiles.flatMap(f => (existsSync(f) ? referencedVariables(readFileSync(f, 'utf8')) : [])))
  const composeVars: Record<string, string> = {}
  for (const name of referenced) {
    if (name in KEYS || name === 'APP_VERSION') continue
    const v = environ[name] ?? fromFile[name]
    if (v === undefined) continue
    if (/['\n\r]/.test(v)) throw new UsageError(`${name} in ${environ[name] !== undefined ? 'the environment' : file} (used by ${composeFiles.join(', ')}) must be one line without single quotes.`)
    composeVars[name] = v
  }
  const appEnv: Record<string, string> = {}
  for (const [key, value] of Object.entries(fromFile)) {
    if (key.startsWith(APP_ENV_PREFIX)) {
      const name = key.slice(APP_ENV_PREFIX.length)
      if (!/^[A-Z_][A-Z0-9_]*$/.test(name) || value.includes('\n')) throw new UsageError(`${key} in ${file} must be APP_ENV_ followed by an upper-case variable name, with a one-line value.`)
      appEnv[name] = value
      continue
    }
    if (!(key in KEYS) && !referenced.has(key)) {
      const near = nearest(key, Object.keys(KEYS))
      throw new UsageError(`Unknown setting ${key} in ${file}${near ? ` (did you mean ${near}?)` : ''}; the known ones are documented in .env.example.`)
    }
  }
  const raw: Partial<Record<Key, string>> = {}
  for (const key of Object.keys(KEYS) as Key[]) {
    const v = environ[key] ?? fromFile[key] ?? (KEYS[key] as KeySpec<unknown>).default
    if (v !== undefined && v !== '' || key === 'FIREWALL_PORTS' && v === '') raw[key] = v
  }
  const values = {} as Values
  for (const key of Object.keys(raw) as Key[]) {
    try {
      (values as Record<string, unknown>)[key] = (KEYS[key].parse as Parse<unknown>)(raw[key]!)
    } catch (e) {
      const where = environ[key] !== undefined ? 'the environment' : file
      const got = SECRET_KEYS.includes(key) ? '' : ` (got ${JSON.stringify(raw[key])})`
      throw new UsageError(`${key} in ${where} must be ${(e as Error).message}${got}.`)
    }
  }
  if (values.TARGET !== 'local' && !values.SSH_HOST && !values.SSH_HOSTS) {
    throw new UsageError(`SSH_HOST is not set in ${file}: set it to the VPS's address (or TARGET=local to run on this machine).`)
  }
  let cluster: Config['cluster']
  if (values.ENGINE === 'swarm') {
    const nodes = values.SSH_HOSTS?.length ?? 1
    const managers = values.SWARM_MANAGERS ?? defaultManagers(nodes)
    if (managers % 2 === 0) throw new UsageError(`SWARM_MANAGERS=${managers} in ${file}: a swarm needs an odd number of managers (1, 3 or 5), so that a majority remains when one is lost.`)
    if (managers > nodes) throw new UsageError(`SWARM_MANAGERS=${managers} in ${file}, but SSH_HOSTS names ${nodes} node(s): name more nodes or fewer managers.`)
    cluster = { managers, iface: values.SWARM_INTERFACE }
  }
  const key = values.SSH_KEY
  const publicKey = values.DEPLOY_PUBLIC_KEY ?? (key ? `${key}.pub` : expandHome('~/.ssh/id_ed25519.pub'))
  return {
    env,
    file,
    protected: values.PROTECTED ? values.PROTECTED === 'yes' : env === 'production',
    target: values.TARGET,
    ssh: { host: values.SSH_HOST ?? (values.SSH_HOSTS ? '' : 'localhost'), port: values.SSH_PORT, user: values.SSH_USER, key, knownHosts: values.SSH_KNOWN_HOSTS },
    hosts: values.SSH_HOSTS,
    cluster,
    hooks: { pre: values.PRE_HOOK, post: values.POST_HOOK, failure: values.FAILURE_HOOK },
    backup: {
      dest: values.BACKUP_DEST, dir: resolve(values.BACKUP_DIR), compression: values.BACKUP_COMPRESSION,
      s3: { endpoint: values.S3_ENDPOINT, region: values.S3_REGION, accessKeyId: values.AWS_ACCESS_KEY_ID, secretAccessKey: values.AWS_SECRET_ACCESS_KEY, partMiB: values.S3_PART_SIZE_MB },
      duckdbFile: values.DUCKDB_FILE, duckdbCommand: values.DUCKDB_BACKUP_COMMAND,
      volumes: (values.BACKUP_VOLUMES ?? '').split(',').map(v => v.trim()).filter(Boolean).map(v => { const [name, mode] = v.split(':'); return { name, mode: mode === 'freeze' ? 'freeze' as const : 'live' as const } }), pingUrl: values.BACKUP_PING_URL, drillPingUrl: values.RESTORE_DRILL_PING_URL,
      recipients: values.BACKUP_AGE_RECIPIENTS, identityFile: values.BACKUP_AGE_IDENTITY_FILE,
      retention: { last: values.BACKUP_KEEP_LAST, daily: values.BACKUP_KEEP_DAILY, weekly: values.BACKUP_KEEP_WEEKLY, monthly: values.BACKUP_KEEP_MONTHLY, minKeep: values.BACKUP_MIN_KEEP },
      rpo: values.BACKUP_RPO, drillMaxAge: values.DRILL_MAX_AGE, migrationDays: values.MIGRATION_BACKUP_DAYS,
      pitr: values.PITR === 'on' ? { maxLag: values.PITR_MAX_LAG, cipherPass: values.PITR_CIPHER_PASS, endpoint: values.PITR_S3_ENDPOINT, caFile: values.PITR_S3_CA_FILE, keepFull: values.PITR_KEEP_FULL } : undefined,
    },
    app: { name: values.APP_NAME, dir: values.APP_DIR ?? `/opt/${values.APP_NAME}` },
    deploy: { user: values.DEPLOY_USER, publicKey },
    firewallPorts: values.FIREWALL_PORTS,
    swapSize: values.SWAP_SIZE,
    lockStaleAfter: values.LOCK_STALE_AFTER,
    stack: {
      image: values.APP_IMAGE, port: values.APP_PORT, healthPath: values.APP_HEALTH_PATH, replicas: values.APP_REPLICAS,
      healthTimeout: values.HEALTH_TIMEOUT, drainSeconds: values.DRAIN_SECONDS, migrate: values.MIGRATE_COMMAND, migrateDown: values.MIGRATE_DOWN_COMMAND,
      keepReleases: values.KEEP_RELEASES, proxyImage: values.PROXY_IMAGE, proxyPort: values.PROXY_PORT,
      tls: values.TLS_DOMAINS && {
        domains: values.TLS_DOMAINS, email: values.ACME_EMAIL, port: values.PROXY_TLS_PORT, hstsMaxAge: values.HSTS_MAX_AGE, csp: values.CONTENT_SECURITY_POLICY,
        directory: values.ACME_STAGING === '1' ? 'https://acme-staging-v02.api.letsencrypt.org/directory' : values.ACME_DIRECTORY,
        caBundle: values.ACME_CA_BUNDLE,
      },
      dbImage: values.DB_IMAGE, dbName: values.DB_NAME ?? values.APP_NAME.replace(/-/g, '_'), dbUser: values.DB_USER ?? values.APP_NAME.replace(/-/g, '_'),
      dbPassword: values.DB_PASSWORD, imageSource: values.IMAGE_SOURCE, ship: values.IMAGE_SHIP, layerCache: values.LAYER_CACHE, shipCompression: values.IMAGE_SHIP_COMPRESSION, registryUser: values.REGISTRY_USER, registryPassword: values.REGISTRY_PASSWORD,
      appEnv, composeFile, composeFiles, composeVars,
    },
  }
}

/** A third of the nodes manage the cluster, rounded down to an odd number, at least one. */
export function defaultManagers(nodes: number): number {
  const third = Math.max(1, Math.floor(nodes / 3))
  return third % 2 ? third : third - 1
}

/** Settings with every default and a placeholder host, for --help and tests. */
export function exampleConfig(): Config {
  return loadConfig({ envFile: '/dev/null', environ: { SSH_HOST: 'vps.example.com', APP_IMAGE: 'registry.example.com/team/app' } })
}
