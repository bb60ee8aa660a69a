// Rotating a secret on the host with no downtime. The files, all mode 0600 in APP_DIR
// (for a service of your compose file: secrets/SERVICE.env and the same suffixes):
//   secrets.env           what the app runs with (compose reads it after app.env)
//   secrets.env.next      a rotation staged but not yet live
//   secrets.env.undo      the live file's previous version while the switch is under way
//   secrets.env.previous  the version before the last rotation (--revert goes back to it)
// A rotation stages the new file, puts it in place and replaces the app containers
// through the same health-gated rollout as update.ts. If the new containers fail their
// health check they are removed, the old ones never stopped serving, and the undo file
// goes back in place. Each stage is visible on the host, so an interrupted run is
// finished by the next one instead of starting another rotation on top of it.
//
// The database password uses two logins (AWS Secrets Manager's "alternating users"):
// the owner DB_USER and DB_USER_clone, a member acting as the owner (SET role), so
// objects either creates stay the owner's. A rotation gives the login not in use a new
// password, moves the app to it, and once the old containers are gone takes the
// password away from the other login: from then on only the new one works.
import { fileCommands, type FileSpec } from '../host/files.ts'
import { HostError, UsageError } from '../errors.ts'
import { live, readReleases } from './releases.ts'
import { cloneUser, databaseUrl, envKeys, envValue, scramVerifier, stagedHeader, stagedWhat, urlLogin, withHeader, withKey } from './secrets.ts'
import { sh } from '../sh.ts'
import { files, secretsOf, type Stack } from './stack.ts'
import { unstuckStep } from './stuck.ts'
import { serviceCommands } from './engine.ts'
import { fields, type Step } from '../steps.ts'
import type { Target } from '../steps.ts'

/** The key name operators use for the database password (the app sees it inside DATABASE_URL). */
export const DB_KEY = 'DB_PASSWORD'
export const KEY_NAME = /^[A-Z_][A-Z0-9_]{0,63}$/

export type Change =
  | { kind: 'rotate'; key: string; value: () => string; keepPrevious: boolean }
  | { kind: 'drop-previous'; key: string }
  | { kind: 'revert' }

export const describe = (c: Change) => c.kind === 'revert' ? 'revert to the previous secrets' : c.kind === 'drop-previous' ? `drop ${c.key}_PREVIOUS` : `rotate ${c.key}`

export const secretFiles = (st: Stack) => {
  const live = secretsOf(st)
  const beside = (suffix: string): FileSpec => ({ ...live, path: live.path + suffix })
  return { live, next: beside('.next'), undo: beside('.undo'), previous: beside('.previous') }
}

const q = (name: string) => `"${name}"`

export const rotationCommands = {
  /**
   * One round trip describing where a rotation stands: which files exist, what is staged,
   * how many running app containers were created before secrets.env was last written
   * (they run an older version of it), and whether compose.yml reads the file at all.
   */
  state: (st: Stack) => {
    const f = secretFiles(st)
    return [
      sh`cd ${st.dir} 2>/dev/null || { echo compose=no; exit 0; }`,
      st.builtIn ? sh`grep -q secrets.env compose.yml 2>/dev/null && echo compose=yes || echo compose=no`
        : sh`grep -qF ${`secrets/${st.app.name}.env`} opsbook.yml 2>/dev/null && echo compose=yes || echo compose=no`,
      sh`[ -f ${f.live.path} ] && echo live=yes || echo live=no`,
      sh`echo "next=$(head -n1 ${f.next.path} 2>/dev/null || echo absent)"`,
      sh`[ -f ${f.undo.path} ] && echo undo=yes || echo undo=no`,
      sh`[ -f ${f.previous.path} ] && echo previous=yes || echo previous=no`,
      serviceCommands.staleOn(st, st.app.name, f.live.path),
      // Key names and the login's name only: values never leave the host for a listing.
      sh`names() { sed -n 's/^\\([A-Za-z_][A-Za-z0-9_]*\\)=.*/\\1/p' "$@" 2>/dev/null | sort -u | tr '\\n' ' '; }`,
      st.builtIn ? sh`echo "keys=$(names app.env ${f.live.path})"; echo "rotated=$(names ${f.live.path})"` : sh`echo "keys=$(names ${f.live.path})"; echo "rotated=$(names ${f.live.path})"`,
      sh`echo "login=$(cat app.env ${f.live.path} 2>/dev/null | sed -n 's#^DATABASE_URL=postgres[a-z]*://\\([^:@/]*\\):.*#\\1#p' | tail -n1)"`,
    ].join('\n')
  },
  /** app.env, then a separator line, then secrets.env (values stay in this process's memory). */
  read: (st: Stack, which: 'live' | 'next' | 'previous' = 'live') =>
    (st.builtIn ? sh`cat ${files(st).appEnv.path} 2>/dev/null; ` : '') + sh`echo ${SEP}; cat ${secretFiles(st)[which].path} 2>/dev/null || true`,
  /** The staged file becomes live; the live one is kept as the undo file (a hard link: no copy, same mtime). */
  switch: (st: Stack) => {
    const f = secretFiles(st)
    return [
      sh`set -e; cd ${st.dir}`,
      sh`if [ -f ${f.next.path} ]; then`,
      // No live file yet: an empty one dated 1970 stands for "nothing rotated" in the undo.
      sh`  [ -f ${f.live.path} ] || { install -m 600 -o ${st.owner} -g ${st.owner} /dev/null ${f.live.path}; touch -d @1 ${f.live.path}; }`,
      sh`  [ -f ${f.undo.path} ] || ln -f ${f.live.path} ${f.undo.path}`,
      sh`  mv -f ${f.next.path} ${f.live.path}`,
      'fi',
    ].join('\n')
  },
  /** The switch held: the undo file becomes the version --revert goes back to. */
  settle: (st: Stack) => sh`if [ -f ${secretFiles(st).undo.path} ]; then mv -f ${secretFiles(st).undo.path} ${secretFiles(st).previous.path}; fi`,
  /** The switch failed: the previous live file goes back (its old mtime says the running app has it). */
  undo: (st: Stack) => sh`if [ -f ${secretFiles(st).undo.path} ]; then mv -f ${secretFiles(st).undo.path} ${secretFiles(st).live.path}; fi`,
  /** SQL on stdin as the owner over the container's socket (trust), so no password is involved. */
  psql: (st: Stack) => serviceCommands.exec(st, 'db', sh`psql -X -q -At -v ON_ERROR_STOP=1 -U ${st.config.stack.dbUser} -d ${st.config.stack.dbName}`),
  /** Logs in over TCP with the password read from stdin; exit 0 if PostgreSQL accepts it. */
  tryLogin: (st: Stack, user: string) => serviceCommands.exec(st, 'db', sh`sh -c ${'IFS= read -r PGPASSWORD; export PGPASSWORD; exec psql -X -At -w -h 127.0.0.1 -U "$0" -d "$1" -c "select 1"'} ${user} ${st.config.stack.dbName}`) + ' >/dev/null 2>&1',
}
const SEP = '--- opsbook:secrets.env ---'

export const rotationSql = {
  /** The clone login: created once, a member of the owner, acting as the owner. */
  clone: (owner: string, clone: string) => [
    `DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${clone}') THEN CREATE ROLE ${q(clone)} LOGIN; END IF; END $$;`,
    `GRANT ${q(owner)} TO ${q(clone)};`,
    `ALTER ROLE ${q(clone)} LOGIN;`,
    `ALTER ROLE ${q(clone)} SET role = '${owner}';`,
  ].join('\n'),
  /** A SCRAM verifier, never the password itself. */
  password: (user: string, verifier: string) => `ALTER ROLE ${q(user)} PASSWORD '${verifier}';`,
  /** Logins other than the live one: the password goes, and so do their TCP sessions (none once the old containers are gone). */
  disable: (users: string[]) => users.map(u => `ALTER ROLE ${q(u)} PASSWORD NULL;\n` +
    `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '${u}' AND client_addr IS NOT NULL;`).join('\n'),
  withPassword: (users: string[]) => `SELECT rolname FROM pg_authid WHERE rolname IN (${users.map(u => `'${u}'`).join(', ')}) AND rolpassword IS NOT NULL ORDER BY 1;`,
}

export interface RotationState {
  compose: boolean
  live: boolean
  /** The staged rotation's description, if one is staged. */
  next?: string
  undo: boolean
  previous: boolean
  /** Running app containers older than secrets.env. */
  stale: number
  running: number
  keys: string[]
  /** Keys whose value lives in secrets.env (rotated at least once). */
  rotated: string[]
  /** The database login in the live DATABASE_URL. */
  login?: string
}

export async function rotationState(t: Target, st: Stack): Promise<RotationState> {
  const f = fields((await t.run(rotationCommands.state(st), { timeout: 60 })).stdout)
  const next = f.next && f.next !== 'absent' ? (stagedWhat(f.next) ?? 'an unknown change') : undefined
  return {
    compose: f.compose === 'yes', live: f.live === 'yes', next, undo: f.undo === 'yes', previous: f.previous === 'yes',
    stale: Number(f.stale ?? 0), running: Number(f.running ?? 0), keys: (f.keys ?? '').split(' ').filter(Boolean),
    rotated: (f.rotated ?? '').split(' ').filter(Boolean), login: f.login || undefined,
  }
}

/** What an operator may choose: the app's keys (DATABASE_URL stands as DB_PASSWORD), never values. */
export const rotatableKeys = (keys: string[]) =>
  [...new Set(keys.filter(k => k !== 'DATABASE_URL' && !k.endsWith('_PREVIOUS')).concat(DB_KEY))].sort()

/** A switch that did not finish: the next run completes it rather than starting another rotation. */
export const interrupted = (s: RotationState) => s.undo || (s.live && s.stale > 0)

async function readEnv(t: Target, st: Stack, which: 'live' | 'next' | 'previous' = 'live'): Promise<{ app: string; secrets: string }> {
  const out = (await t.run(rotationCommands.read(st, which), { timeout: 30 })).stdout
  const i = out.indexOf(SEP + '\n')
  return { app: i < 0 ? out : out.slice(0, i), secrets: i < 0 ? '' : out.slice(i + SEP.length + 1) }
}

/** The database login the app uses with these files, and its password. */
const loginOf = (env: { app: string; secrets: string }) => urlLogin(envValue(env.secrets, 'DATABASE_URL') ?? envValue(env.app, 'DATABASE_URL'))

/** The text of secrets.env after the change (pure, given what the host holds now). */
export function nextSecrets(st: Stack, c: Change, env: { app: string; secrets: string }, previous?: string): string {
  // secrets.env cannot remove a key app.env sets, only override it: with an empty value.
  const unset = (text: string, key: string) => withKey(text, key, envValue(env.app, key) === undefined ? undefined : '')
  if (c.kind === 'revert') return previous ?? ''
  if (c.kind === 'drop-previous') return unset(env.secrets, `${c.key}_PREVIOUS`)
  if (c.key === DB_KEY) {
    const { dbUser, dbName } = st.config.stack
    const from = loginOf(env)?.user ?? dbUser
    const to = from === dbUser ? cloneUser(dbUser) : dbUser
    return withKey(env.secrets, 'DATABASE_URL', databaseUrl(to, c.value(), dbName))
  }
  const old = envValue(env.secrets, c.key) ?? envValue(env.app, c.key)
  const text = withKey(env.secrets, c.key, c.value())
  // Without --keep-previous no earlier key stays valid, not even one kept by an older rotation.
  return c.keepPrevious && old !== undefined ? withKey(text, `${c.key}_PREVIOUS`, old) : unset(text, `${c.key}_PREVIOUS`)
}

function checkChange(st: Stack, c: Change, s: RotationState) {
  if (!st.builtIn && c.kind !== 'revert') {
    if (c.key === DB_KEY) throw new UsageError(`DB_PASSWORD rotation (two alternating logins) works on the built-in stack; your compose file sets the database password itself (${st.model.file}).`)
    // compose: a service's own `environment:` wins over every env_file, so a rotated value there would never be seen.
    if (c.kind === 'rotate' && c.key in st.app.environment) throw new UsageError(`${c.key} is set under environment: of ${st.app.name} in ${st.model.file}, which wins over the rotated value; remove it there (rotate-secret then provides it) and run update.ts first.`)
    if (c.kind === 'drop-previous' && !s.keys.includes(`${c.key}_PREVIOUS`)) throw new UsageError(`${c.key}_PREVIOUS is not set for ${st.app.name}: there is nothing to drop.`)
    return
  }
  if (c.kind === 'revert') {
    if (!s.previous) throw new UsageError('There is no earlier version of secrets.env on the host to revert to (no rotation has finished there yet).')
    return
  }
  if (c.kind === 'rotate' && c.key === DB_KEY) return
  const name = c.kind === 'drop-previous' ? `${c.key}_PREVIOUS` : c.key
  if (!s.keys.includes(name)) {
    throw new UsageError(`${name} is not in the app's environment on this host (${rotatableKeys(s.keys).join(', ')}): add it as APP_ENV_${name} and deploy first.`)
  }
}

/** 1. The new secrets.env written beside the live one, not yet used. */
export function stageStep(st: Stack, c: Change): Step {
  const what = describe(c)
  return {
    title: `New secrets staged for: ${what} (${secretFiles(st).next.path.slice(st.dir.length + 1)}, 0600)`,
    async check(t) {
      const s = await rotationState(t, st)
      if (!s.compose) throw new UsageError(st.builtIn
        ? `${st.dir}/compose.yml does not read secrets.env (deployed by an older opsbook): run deploy.ts --version <live version> once to update the stack files.`
        : `${st.dir}/opsbook.yml does not make ${st.app.name} read secrets/${st.app.name}.env (written by an older opsbook): run update.ts --version <live version> once to update the stack files.`)
      if (s.next) {
        if (s.next !== what) throw new UsageError(`An interrupted run staged "${s.next}" on this host: finish it by re-running with the same options (or remove ${secretFiles(st).next.path}).`)
        return { done: true, detail: 'staged by an interrupted run; finishing it' }
      }
      if (interrupted(s)) return { done: true, detail: 'an interrupted switch is finished first; re-run afterwards to rotate again' }
      checkChange(st, c, s)
      return { done: false, change: `write secrets.env.next (${what})` }
    },
    async apply(t) {
      const env = await readEnv(t, st)
      const previous = c.kind === 'revert' ? (await readEnv(t, st, 'previous')).secrets : undefined
      const text = withHeader(nextSecrets(st, c, env, previous), stagedHeader(what))
      if (!st.builtIn) await t.run(sh`install -d -o ${st.owner} -g ${st.owner} -m 700 ${`${st.dir}/secrets`}`, { timeout: 30 })
      await t.run(fileCommands.install(secretFiles(st).next), { stdin: text, timeout: 30 })
    },
  }
}

/** 2. The database login named in the staged file accepts the staged password. */
export function loginStep(st: Stack, c: Change): Step<{ user: string; password: string }> {
  const { dbUser } = st.config.stack
  return {
    title: 'Database login in the staged DATABASE_URL accepts its password',
    async check(t) {
      const s = await rotationState(t, st)
      if (!s.next) {
        if (c.kind === 'rotate' && c.key === DB_KEY && !interrupted(s)) return { done: false, change: `give the login not in use (${dbUser} or ${cloneUser(dbUser)}) a new password` }
        return { skip: 'no database login staged' }
      }
      const login = loginOf(await readEnv(t, st, 'next'))
      if (!login) return { skip: 'no database login staged' }
      const r = await t.run(rotationCommands.tryLogin(st, login.user), { stdin: login.password + '\n', allowFail: true, timeout: 60 })
      return r.code === 0 ? { done: true, detail: login.user } : { done: false, change: `set the password of ${login.user}`, plan: login }
    },
    async apply(t, login) {
      if (!login) throw new HostError('nothing staged for the database login (a dry-run plan cannot be applied)')
      const sql = (login.user === dbUser ? '' : rotationSql.clone(dbUser, login.user) + '\n') + rotationSql.password(login.user, scramVerifier(login.password))
      await psql(t, st, sql, `set the password of ${login.user}`)
      return `${login.user} has a new password`
    },
    async verify(t) {
      const login = loginOf(await readEnv(t, st, 'next'))
      const r = login && await t.run(rotationCommands.tryLogin(st, login.user), { stdin: login.password + '\n', allowFail: true, timeout: 60 })
      if (r && r.code !== 0) throw new HostError(`PostgreSQL does not accept the new password of ${login!.user}; nothing is switched yet.`)
    },
  }
}

/** What this run has done so far, for checks that must tell "not yet" from "already". */
export interface Progress { switched: boolean }

/** 3. secrets.env replaced and the app containers with it, health-gated; undone by itself on failure. */
export function switchStep(st: Stack, c: Change, progress: Progress): Step {
  return {
    title: `${st.builtIn ? 'App' : st.app.name} restarted on the new secrets (health-gated, no downtime; undone if unhealthy)`,
    async check(t) {
      const [s, rs] = await Promise.all([rotationState(t, st), readReleases(t, st)])
      const version = live(rs)?.version
      if (!version) throw new UsageError(`Nothing is deployed in ${st.dir} yet: run deploy.ts first.`)
      if (interrupted(s) && !s.next) return { done: false, change: `finish the interrupted switch: replace the app containers (${version}) on the current secrets.env` }
      return { done: false, change: `move secrets.env.next into place and replace the app containers (${version})` }
    },
    async apply(t, _, log) {
      const version = live(await readReleases(t, st))!.version
      await t.run(rotationCommands.switch(st), { timeout: 30 })
      const now = loginOf(await readEnv(t, st))
      let how: string
      try {
        how = await serviceCommands.replace(t, st, version, log, [st.app.name])
      } catch (e) {
        await t.run(rotationCommands.undo(st), { timeout: 30 })
        const back = loginOf(await readEnv(t, st))
        // A staged login that never went live keeps no working password.
        if (now && now.user !== back?.user) await psql(t, st, rotationSql.disable([now.user]), `disable ${now.user}`).catch(() => {})
        throw new HostError(`${describe(c)} was undone: ${(e as Error).message}. secrets.env is back as it was and the app kept serving with it.`)
      }
      await t.run(rotationCommands.settle(st), { timeout: 30 })
      progress.switched = true
      return `${st.app.name} ${version} runs on the new secrets (${how})`
    },
  }
}

/** 4. Only the login the app uses has a password; the other one stops working. */
export function oldLoginStep(st: Stack, c: Change, progress: Progress): Step<string[]> {
  const { dbUser } = st.config.stack
  const clone = cloneUser(dbUser)
  return {
    title: `Only the database login in use has a password (${dbUser} / ${clone})`,
    async check(t) {
      const s = await rotationState(t, st)
      if (c.kind === 'rotate' && c.key === DB_KEY && !progress.switched && !s.next && !interrupted(s)) return { done: false, change: 'take the password away from the login now in use, once the app has moved off it' }
      const using = loginOf(await readEnv(t, st))?.user ?? dbUser
      const others = [dbUser, clone].filter(u => u !== using)
      const out = await psql(t, st, rotationSql.withPassword(others), 'list logins with a password')
      const left = out.split('\n').filter(Boolean)
      return left.length ? { done: false, change: `remove the password of ${left.join(', ')} (the app uses ${using})`, plan: left } : { done: true, detail: `the app uses ${using}` }
    },
    async apply(t, users) {
      await psql(t, st, rotationSql.disable(users), `disable ${users.join(', ')}`)
    },
  }
}

export function rotationSteps(st: Stack, c: Change): Step[] {
  // On a cluster a slot's env files are its own copies of APP_DIR's (swarm.ts): the built-in app's secrets.env.
  if (st.config.cluster && !st.builtIn) throw new UsageError(`rotate-secret on a cluster (ENGINE=swarm) works on the built-in stack's app; ${st.model.file}'s services get their environment from it: change it there and run update.ts.`)
  const progress: Progress = { switched: false }
  // The two alternating database logins are the built-in stack's; your compose file sets its own.
  // First, containers the switch cannot start from: a killed run's created-but-never-started ones.
  return st.builtIn ? [unstuckStep(st, [st.app.name]), stageStep(st, c), loginStep(st, c), switchStep(st, c, progress), oldLoginStep(st, c, progress)] : [unstuckStep(st, [st.app.name]), stageStep(st, c), switchStep(st, c, progress)]
}

/**
 * Runs SQL as the owner. PostgreSQL quotes the failing statement in its errors, and
 * a statement here may hold a SCRAM verifier, so only the error's first line, with
 * quoted literals removed, reaches the operator.
 */
async function psql(t: Target, st: Stack, sql: string, what: string): Promise<string> {
  const r = await t.run(rotationCommands.psql(st), { stdin: sql + '\n', allowFail: true, timeout: 120 })
  if (r.code !== 0) {
    const first = r.stderr.split('\n').find(l => /ERROR|FATAL|error/.test(l)) ?? `exit ${r.code}`
    throw new HostError(`could not ${what}: ${first.replace(/'[^']*'/g, "'…'").trim()}`)
  }
  return r.stdout
}

