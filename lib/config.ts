// Settings: one dotenv file per environment (`--env production` reads .env.production),
// every key declared once below with its parser and its line of documentation
// (.env.example is checked against this table by a unit test). Values from the
// process environment win over the file, so cron and CI can override one key.
import { existsSync, readFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { join, resolve } from 'node:path'
import dotenv from 'dotenv'
import { UsageError } from './errors.ts'

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
  SSH_KNOWN_HOSTS: { doc: 'known_hosts file the host key is checked against', parse: localPath, default: '~/.ssh/known_hosts' },
  APP_NAME: { doc: 'Name of the application, used for directories and compose project', parse: appName, default: 'app' },
  APP_DIR: { doc: 'Directory on the host holding the release (default: /opt/APP_NAME)', parse: remotePath },
  DEPLOY_USER: { doc: 'Unprivileged user that owns the app and runs docker', parse: user, default: 'deploy' },
  DEPLOY_PUBLIC_KEY: { doc: 'Public key file allowed to log in as DEPLOY_USER (default: SSH_KEY.pub, else ~/.ssh/id_ed25519.pub)', parse: localPath },
  FIREWALL_PORTS: { doc: 'TCP ports opened in ufw besides SSH (comma separated; empty for none)', parse: ports, default: '80,443' },
  SWAP_SIZE: { doc: 'Swap file created when the host has no swap (0 for none)', parse: size, default: '1G' },
  PROTECTED: { doc: 'yes marks this environment as production: destructive steps need its name typed (default: yes for "production")', parse: oneOf('yes', 'no') },
} satisfies Record<string, KeySpec<unknown>>

export type Key = keyof typeof KEYS
type Values = { [K in Key]: ReturnType<(typeof KEYS)[K]['parse']> }

export interface Config {
  env: string
  file: string
  protected: boolean
  target: 'ssh' | 'local'
  ssh: { host: string; port?: number; user?: string; key?: string; knownHosts: string }
  app: { name: string; dir: string }
  deploy: { user: string; publicKey: string }
  firewallPorts: number[]
  swapSize: string
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

  for (const key of Object.keys(fromFile)) {
    if (!(key in KEYS)) {
      const near = Object.keys(KEYS).find(k => editDistance(k, key) <= 2)
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
      throw new UsageError(`${key} in ${where} must be ${(e as Error).message} (got ${JSON.stringify(raw[key])}).`)
    }
  }
  if (values.TARGET !== 'local' && !values.SSH_HOST) {
    throw new UsageError(`SSH_HOST is not set in ${file}: set it to the VPS's address (or TARGET=local to run on this machine).`)
  }
  const key = values.SSH_KEY
  const publicKey = values.DEPLOY_PUBLIC_KEY ?? (key ? `${key}.pub` : expandHome('~/.ssh/id_ed25519.pub'))
  return {
    env,
    file,
    protected: values.PROTECTED ? values.PROTECTED === 'yes' : env === 'production',
    target: values.TARGET,
    ssh: { host: values.SSH_HOST ?? 'localhost', port: values.SSH_PORT, user: values.SSH_USER, key, knownHosts: values.SSH_KNOWN_HOSTS },
    app: { name: values.APP_NAME, dir: values.APP_DIR ?? `/opt/${values.APP_NAME}` },
    deploy: { user: values.DEPLOY_USER, publicKey },
    firewallPorts: values.FIREWALL_PORTS,
    swapSize: values.SWAP_SIZE,
  }
}

/** Settings with every default and a placeholder host, for --help and tests. */
export function exampleConfig(): Config {
  return loadConfig({ envFile: '/dev/null', environ: { SSH_HOST: 'vps.example.com' } })
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)])
  for (let j = 1; j <= b.length; j++) d[0][j] = j
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
  }
  return d[a.length][b.length]
}
