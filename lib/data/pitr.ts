// Point-in-time recovery (PITR=on). pgBackRest, a well-kept Debian package, archives every
// WAL segment of the stack's PostgreSQL into the S3 store and takes the base backups;
// opsbook installs, configures and drives it, and never ships WAL itself.
//
// What it changes in the PostgreSQL service (deploy does it once; --dry-run shows it):
//   - the image: DB_IMAGE with pgbackrest added, built on the host (Dockerfile below);
//   - /etc/pgbackrest from APP_DIR/pitr/conf (the repository, no secret) and the
//     environment from APP_DIR/pitr/secrets.env (S3 keys, the repository passphrase; 0600);
//   - archive_mode, archive_command, archive_timeout (= PITR_MAX_LAG) and wal_level set
//     with ALTER SYSTEM, i.e. in PGDATA's postgresql.auto.conf: one restart, once.
// pgBackRest runs as the postgres user inside that container (archive_command does anyway;
// root would leave lock files the server cannot take).
import { readFileSync } from 'node:fs'
import { HostError, UsageError } from '../errors.ts'
import { fileCommands, wantedState, type FileSpec } from '../host/files.ts'
import type { Step, Target } from '../steps.ts'
import { stackContainers } from '../stack/rollout.ts'
import { sh } from '../sh.ts'
import { PGBACKREST_CONF_DIR } from '../stack/pgbackrest-image.ts'
import { dbOf, owned, stackCommands, type Stack } from '../stack/stack.ts'
import { restoreCommands } from './restore.ts'
import { parseS3Url } from './storage.ts'

export const STANZA = 'main'

export interface Pitr {
  bucket: string
  /** The repository's path in the bucket: PREFIX/pitr/APP/ENV. */
  path: string
  /** Host name (and port) pgBackRest connects to, without scheme. */
  endpoint: string
  port?: number
  region: string
  uriStyle: 'path' | 'host'
  /** A private CA's PEM, sent to the host beside the settings. */
  caFile?: string
  maxLag: number
  keepFull: number
  secrets: { key: string; keySecret: string; cipherPass: string }
}

/** The stack's PITR settings, or undefined with PITR=off; a setting PITR cannot work without is one sentence. */
export function pitrOf(st: Stack): Pitr | undefined {
  const c = st.config
  const p = c.backup.pitr
  if (!p) return undefined
  const where = c.file
  if (!c.backup.dest.startsWith('s3://')) {
    throw new UsageError(`PITR=on in ${where} needs BACKUP_DEST=s3://bucket/prefix: pgBackRest on the host sends WAL to the bucket itself, and the local backups/ folder is on this machine, out of its reach.`)
  }
  if (!p.cipherPass) throw new UsageError(`PITR=on in ${where} needs PITR_CIPHER_PASS, the passphrase the WAL archive is encrypted with (keep a copy off the host).`)
  const s3 = c.backup.s3
  if (!s3.accessKeyId || !s3.secretAccessKey) throw new UsageError(`PITR=on in ${where} needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY set there: pgBackRest on the host uses them (this machine's own AWS credentials do not reach it).`)
  const url = p.endpoint ?? s3.endpoint ?? `https://s3.${s3.region}.amazonaws.com`
  const m = /^(https?):\/\/([^/:]+|\[[^\]]+\])(?::(\d+))?\/?$/.exec(url)
  if (!m || m[1] !== 'https') throw new UsageError(`PITR=on: the S3 endpoint ${url} is not https; pgBackRest speaks only https to S3: set PITR_S3_ENDPOINT in ${where} to the https address the host reaches it at.`)
  dbOf(st)
  const { bucket, prefix } = parseS3Url(c.backup.dest)
  return {
    bucket, path: `/${[prefix, 'pitr', c.app.name, c.env].filter(Boolean).join('/')}`,
    endpoint: m[2], port: m[3] ? Number(m[3]) : undefined, region: s3.region,
    uriStyle: p.endpoint ?? s3.endpoint ? 'path' : 'host', caFile: p.caFile,
    maxLag: p.maxLag, keepFull: p.keepFull,
    secrets: { key: s3.accessKeyId, keySecret: s3.secretAccessKey, cipherPass: p.cipherPass },
  }
}

/**
 * pgbackrest.conf: the repository in the bucket, encrypted; `dataDir` is PGDATA in the
 * container, `dbUser` the superuser pgbackrest logs in as over the local socket (images
 * made with POSTGRES_USER have no "postgres" role, pgBackRest's default).
 */
export function renderConf(p: Pitr, dataDir: string, dbUser: string): string {
  return [
    '# Managed by opsbook (PITR=on). Secrets come from the environment (pitr/secrets.env).',
    '[global]',
    'repo1-type=s3',
    `repo1-path=${p.path}`,
    `repo1-s3-bucket=${p.bucket}`,
    `repo1-s3-endpoint=${p.endpoint}`,
    ...(p.port ? [`repo1-storage-port=${p.port}`] : []),
    `repo1-s3-region=${p.region}`,
    `repo1-s3-uri-style=${p.uriStyle}`,
    ...(p.caFile ? [`repo1-storage-ca-file=${PGBACKREST_CONF_DIR}/ca.pem`] : []),
    'repo1-cipher-type=aes-256-cbc',
    `repo1-retention-full=${p.keepFull}`,
    'compress-type=zst',
    'start-fast=y',
    'log-level-console=info',
    'log-level-file=off',
    '',
    `[${STANZA}]`,
    `pg1-path=${dataDir}`,
    `pg1-user=${dbUser}`,
    '',
  ].join('\n')
}

/** The container's environment file (0600): the only place the secrets go. */
export const renderSecrets = (p: Pitr) => [
  `PGBACKREST_REPO1_S3_KEY=${p.secrets.key}`,
  `PGBACKREST_REPO1_S3_KEY_SECRET=${p.secrets.keySecret}`,
  `PGBACKREST_REPO1_CIPHER_PASS=${p.secrets.cipherPass}`,
  '',
].join('\n')

/** The server settings archiving needs, as ALTER SYSTEM writes them. */
export const archiveSettings = (p: Pitr): Record<string, string> => ({
  wal_level: 'replica',
  archive_mode: 'on',
  archive_command: `pgbackrest --stanza=${STANZA} archive-push %p`,
  archive_timeout: `${p.maxLag}s`,
})

/** SQL quoting for a literal. */
const lit = (v: string) => `'${v.replace(/'/g, "''")}'`

export const pitrCommands = {
  /** A superuser's psql in the database container, -At output. */
  /** Several statements: one -c each, each its own transaction (ALTER SYSTEM cannot run inside one). */
  psql: (st: Stack, sql: string | string[]) => {
    const db = dbOf(st)
    return stackCommands.compose(st, sh`exec -T ${db.service} psql -X -At -v ON_ERROR_STOP=1 -U ${db.user} -d ${db.database}` + [sql].flat().map(q => sh` -c ${q}`).join(''))
  },
  /** pgbackrest as postgres in the database container. */
  pgbackrest: (st: Stack, args: string) => stackCommands.compose(st, sh`exec -T -u postgres ${dbOf(st).service} pgbackrest ${`--stanza=${STANZA}`} ` + args),
  /** "name|setting|pending_restart" of the settings archiving needs, and PGDATA. */
  settingsQuery: (p: Pitr) => `select name || '|' || setting || '|' || pending_restart from pg_settings where name in (${Object.keys(archiveSettings(p)).map(lit).join(', ')}, 'data_directory') order by name`,
  alterSystem: (p: Pitr) => [...Object.entries(archiveSettings(p)).map(([k, v]) => `alter system set ${k} = ${lit(v)}`), 'select pg_reload_conf()'],
  /**
   * Archiver state: last archived segment and time, failures, now (epoch seconds), and the
   * finished segments still waiting (archive_status/*.ready: the ground truth, which a
   * restart's reset statistics do not hide) with the oldest one's time.
   */
  archiverQuery: () => "select coalesce(last_archived_wal, '') || '|' || coalesce(extract(epoch from last_archived_time)::bigint::text, '') || '|' || failed_count || '|' || coalesce(extract(epoch from last_failed_time)::bigint::text, '') || '|' || extract(epoch from now())::bigint || '|' || (select count(*) || '|' || coalesce(extract(epoch from min(modification))::bigint::text, '') from pg_ls_archive_statusdir() where name like '%.ready') from pg_stat_archiver",
}

export interface PitrBackup { label: string; type: 'full' | 'diff' | 'incr'; start: number; stop: number }
export interface PitrInfo { status: string; backups: PitrBackup[]; walMin?: string; walMax?: string
  /** The stanza or a repository could not be read (pgbackrest info still exits 0): its message. */
  error?: string }

/** `pgbackrest info --output=json` for the stanza. */
export function parseInfo(json: string): PitrInfo {
  type Status = { code: number; message: string }
  const all = JSON.parse(json) as { name: string; status: Status; repo?: { status: Status }[]; backup?: { label: string; type: PitrBackup['type']; timestamp: { start: number; stop: number } }[]; archive?: { min?: string; max?: string }[] }[]
  const s = all.find(x => x.name === STANZA)
  if (!s) return { status: 'missing stanza', backups: [] }
  // 0 ok, 2 no valid backups: readable; anything else is not.
  const readable = [0, 2].includes(s.status.code)
  const repoErrors = (s.repo ?? []).map(r => r.status).filter(r => r.code !== 0 && r.code !== 2).map(r => printable(r.message))
  return {
    status: s.status.message,
    backups: (s.backup ?? []).map(b => ({ label: b.label, type: b.type, start: b.timestamp.start, stop: b.timestamp.stop })),
    walMin: s.archive?.[0]?.min ?? undefined, walMax: s.archive?.[0]?.max ?? undefined,
    error: readable ? undefined : [s.status.message, ...repoErrors].join(': '),
  }
}

/**
 * --to-time: "latest", or a date and time with its zone ("2026-11-25 14:02:00+00",
 * ISO 8601 with Z or ±HH:MM). Returns epoch ms (undefined for latest). A time without a
 * zone is refused: on a host in UTC and a laptop in CET the same words are an hour apart.
 */
export function parseTargetTime(v: string): number | undefined {
  if (v === 'latest') return undefined
  const m = /^(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d(?::\d\d(?:\.\d{1,6})?)?)\s*(Z|[+-]\d\d(?::?\d\d)?)$/i.exec(v.trim())
  if (!m) throw new UsageError(`--to-time ${JSON.stringify(v)} is not a time with its zone, like "2026-11-25 14:02:00+00" or 2026-11-25T14:02:00Z (or latest).`)
  const zone = m[3].toUpperCase() === 'Z' ? 'Z' : m[3].length === 3 ? `${m[3]}:00` : m[3].includes(':') ? m[3] : `${m[3].slice(0, 3)}:${m[3].slice(3)}`
  const ms = Date.parse(`${m[1]}T${m[2].length === 5 ? `${m[2]}:00` : m[2]}${zone}`)
  if (Number.isNaN(ms)) throw new UsageError(`--to-time ${JSON.stringify(v)} is not a real date and time.`)
  return ms
}

/** pgBackRest's --target: UTC, with microseconds and the zone, as PostgreSQL reads it. */
export const targetText = (ms: number) => new Date(ms).toISOString().replace('T', ' ').replace('Z', '+00')

/** Why a target cannot be reached, before anything changes; undefined when it can. */
export function refuseTarget(ms: number, info: PitrInfo, now: number): string | undefined {
  if (ms > now) return `${targetText(ms)} is in the future (now is ${targetText(now)}): use --to-time latest for everything archived.`
  const oldest = info.backups.filter(b => b.type === 'full').map(b => b.stop * 1000).sort((a, b) => a - b)[0]
  if (oldest === undefined) return 'There is no base backup in the PITR archive yet: deploy takes the first one (backup.ts --pitr-full takes one now).'
  if (ms < oldest) return `${targetText(ms)} is before the oldest base backup (it ended ${targetText(oldest)}): the archive cannot go back that far; restore.ts --backup restores an older pg_dump backup.`
  return undefined
}

// ---- Steps (deploy): the files, the image, the service on it, archiving on, a first base backup.

export const pitrFiles = (st: Stack) => ({
  conf: owned(st, 'pitr/conf/pgbackrest.conf', '0644'),
  ca: owned(st, 'pitr/conf/ca.pem', '0644'),
  secrets: owned(st, 'pitr/secrets.env', '0600'),
})

/** PGDATA in the database container: the service's own PGDATA, else its image's, else the official images' default. */
export const pgdataCommand = (st: Stack) => {
  const set = st.model.services.find(s => s.name === dbOf(st).service)?.environment.PGDATA
  return set ? sh`echo ${set}` : sh`d=$(docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' ${st.pitr!.baseImage} 2>/dev/null | sed -n 's/^PGDATA=//p'); echo "\${d:-/var/lib/postgresql/data}"`
}

export function requirePitr(st: Stack): Pitr {
  const p = pitrOf(st)
  if (!p || !st.pitr) throw new UsageError(`PITR is off in ${st.config.file}.`)
  return p
}

/** pgbackrest.conf (no secret), the CA if any, and secrets.env (0600) in APP_DIR/pitr. */
export function pitrFilesStep(st: Stack): Step<{ spec: FileSpec; content: string }[]> {
  const f = pitrFiles(st)
  const wanted = async (t: Target) => {
    const p = requirePitr(st)
    const dataDir = (await t.run(pgdataCommand(st), { timeout: 30 })).stdout.trim()
    return [
      { spec: f.conf, content: renderConf(p, dataDir, dbOf(st).user) },
      ...(p.caFile ? [{ spec: f.ca, content: readFileSync(p.caFile, 'utf8') }] : []),
      { spec: f.secrets, content: renderSecrets(p) },
    ]
  }
  return {
    title: `PITR settings in ${st.dir}/pitr (pgbackrest.conf; secrets.env, 0600)`,
    prepare() {
      const p = requirePitr(st)
      if (p.caFile && !/-----BEGIN CERTIFICATE-----/.test(readFileSync(p.caFile, 'utf8'))) throw new UsageError(`PITR_S3_CA_FILE ${p.caFile} is not a PEM certificate.`)
    },
    async check(t) {
      const want = await wanted(t)
      const states = (await t.run(want.map(w => fileCommands.state(w.spec.path)).join('\n'), { timeout: 30 })).stdout.trim().split('\n')
      const stale = want.filter((w, i) => states[i] !== wantedState(w.content, w.spec))
      // Names the files, never what changes in them (secrets.env).
      return stale.length ? { done: false, change: `write ${stale.map(w => w.spec.path.slice(st.dir.length + 1)).join(', ')}`, plan: stale } : { done: true }
    },
    async apply(t, stale) {
      await t.run(sh`install -d -o ${st.owner} -g ${st.owner} -m 755 ${`${st.dir}/pitr`} ${`${st.dir}/pitr/conf`}`, { timeout: 30 })
      for (const w of stale) await t.run(fileCommands.install(w.spec), { stdin: w.content, timeout: 30 })
    },
  }
}

export const imageCommands = {
  /** The derived image's label naming the base image ID it was built on, and the base's ID now ("|" between). */
  state: (st: Stack) => sh`echo "$(docker image inspect -f '{{index .Config.Labels "opsbook.base-id"}}' ${st.pitr!.image} 2>/dev/null)|$(docker image inspect -f '{{.Id}}' ${st.pitr!.baseImage} 2>/dev/null)"`,
  /** Built from the Dockerfile on stdin with no context (nothing from APP_DIR goes into it). */
  build: (st: Stack) => sh`docker build -q --label "opsbook.base-id=$(docker image inspect -f '{{.Id}}' ${st.pitr!.baseImage})" -t ${st.pitr!.image} -`,
}

/** The database service's image with pgbackrest, built on the host; rebuilt when the base image changed. */
export function pitrImageStep(st: Stack): Step {
  return {
    title: `PostgreSQL image with pgbackrest (${st.pitr?.image ?? 'PITR=on'})`,
    async check(t) {
      requirePitr(st)
      const [built, base] = (await t.run(imageCommands.state(st), { timeout: 30 })).stdout.trim().split('|')
      if (!base) return { done: false, change: `build it once ${st.pitr!.baseImage} is on the host` }
      if (built === base) return { done: true }
      return { done: false, change: built ? `rebuild on ${st.pitr!.baseImage}'s new image` : `build from ${st.pitr!.baseImage} (apt-get install pgbackrest)` }
    },
    async apply(t, _p, log) {
      const r = await t.run(imageCommands.build(st), { stdin: st.pitr!.dockerfile, allowFail: true, onOutput: log, timeout: 900 })
      if (r.code !== 0) throw new HostError(`Building ${st.pitr!.image} from ${st.pitr!.baseImage} failed (${r.stderr.trim().split('\n').slice(-2).join(' ')}): PITR needs a Debian-based PostgreSQL image (the official postgres:NN is; the alpine ones have no apt).`)
    },
  }
}

/** The database container runs the image with pgbackrest (recreated once: PostgreSQL restarts). */
export function pitrServiceStep(st: Stack): Step {
  return {
    title: 'PostgreSQL runs the image with pgbackrest',
    async check(t) {
      requirePitr(st)
      const cs = await stackContainers(t, st)
      const db = cs.find(c => c.service === dbOf(st).service && c.state === 'running')
      if (db && db.image === st.pitr!.image) return { done: true }
      return { done: false, change: db ? `recreate ${db.name} on it (PostgreSQL restarts once: a few seconds without the database)` : `start ${dbOf(st).service} on it` }
    },
    async apply(t, _p, log) {
      await t.run(stackCommands.compose(st, sh`up -d --wait --wait-timeout 120 ${dbOf(st).service}`), { onOutput: log, timeout: 180 })
    },
  }
}

/** Reads settingsQuery's lines: name → { setting, pending }. */
export function parseSettings(out: string): Record<string, { setting: string; pending: boolean }> {
  return Object.fromEntries(out.trim().split('\n').filter(Boolean).map(l => { const [k, v, p] = l.split('|'); return [k, { setting: v, pending: p === 't' }] }))
}

/** Which archiving settings differ from what PITR needs (their names), and whether a restart is pending. */
export function settingsToChange(p: Pitr, found: Record<string, { setting: string; pending: boolean }>): { change: string[]; restart: boolean } {
  const want = archiveSettings(p)
  const norm = (k: string, v: string) => (k === 'archive_timeout' ? String(parseInt(v, 10)) : v)
  const change = Object.keys(want).filter(k => norm(k, found[k]?.setting ?? '') !== norm(k, want[k]))
  return { change, restart: Object.values(found).some(f => f.pending) || change.some(k => k === 'archive_mode' || k === 'wal_level') }
}

/**
 * PostgreSQL archives every WAL segment with pgbackrest: the settings (ALTER SYSTEM; a
 * restart when archive_mode or wal_level change), the stanza, and `pgbackrest check`,
 * which switches WAL and waits until the segment is in the bucket.
 */
export function pitrArchivingStep(st: Stack): Step<{ change: string[]; restart: boolean }> {
  return {
    title: 'WAL archived to the bucket by pgbackrest (archive_mode, archive_command, archive_timeout)',
    async check(t) {
      const p = requirePitr(st)
      const found = parseSettings((await t.run(pitrCommands.psql(st, pitrCommands.settingsQuery(p)), { allowFail: true, timeout: 30 })).stdout)
      const todo = settingsToChange(p, found)
      const info = await t.run(pitrCommands.pgbackrest(st, 'info --output=json'), { allowFail: true, timeout: 120 })
      const stanza = info.code === 0 ? parseInfo(info.stdout).status : 'unreadable'
      const missing = !/^ok|no valid backups/.test(stanza)
      if (!todo.change.length && !todo.restart && !missing) return { done: true, detail: `every ${p.maxLag} s at least` }
      const what = [...(todo.change.length ? [`set ${todo.change.join(', ')}`] : []), ...(todo.restart ? ['restart PostgreSQL (a few seconds)'] : []), ...(missing ? ['create the stanza'] : [])]
      return { done: false, change: `${what.join(', ')}, then pgbackrest check`, plan: todo }
    },
    async apply(t, todo, log) {
      const p = requirePitr(st)
      if (todo.change.length) await t.run(pitrCommands.psql(st, pitrCommands.alterSystem(p)), { timeout: 60 })
      if (todo.restart) await t.run(stackCommands.compose(st, sh`restart ${dbOf(st).service}`) + ' && ' + stackCommands.compose(st, sh`up -d --wait --wait-timeout 120 ${dbOf(st).service}`), { onOutput: log, timeout: 240 })
      const run = async (args: string) => {
        const r = await t.run(pitrCommands.pgbackrest(st, args), { allowFail: true, onOutput: log, timeout: 600 })
        if (r.code !== 0) throw new HostError(`pgbackrest ${args} failed: ${pgbackrestError(r.stdout + r.stderr)}`)
      }
      await run('stanza-create')
      await run('check')
    },
  }
}

/** pgBackRest's ERROR line, e.g. "[039]: ... HostConnectError ...", or its last line. */
export function pgbackrestError(out: string): string {
  const err = /ERROR: \[\d+\]: [^\n]*/.exec(out)?.[0]
  return printable(err ?? out.trim().split('\n').pop() ?? '')
}

/** One line of text, no control bytes: a file decrypted with the wrong key quotes its garbage. */
const printable = (s: string) => s.split('\n')[0].replace(/[^\x20-\x7e]+/g, '?').replace(/\s+/g, ' ').slice(0, 300)

/** A full base backup, if the archive has none (later ones come from the timers). */
export function pitrBaseBackupStep(st: Stack): Step {
  return {
    title: 'A full base backup in the PITR archive',
    async check(t) {
      requirePitr(st)
      const r = await t.run(pitrCommands.pgbackrest(st, 'info --output=json'), { allowFail: true, timeout: 120 })
      const full = r.code === 0 ? parseInfo(r.stdout).backups.filter(b => b.type === 'full').at(-1) : undefined
      if (full) return { done: true, detail: `${full.label}, ${new Date(full.stop * 1000).toISOString().slice(0, 16).replace('T', ' ')} UTC` }
      return { done: false, change: 'pgbackrest backup --type=full (the database is read while it serves)' }
    },
    async apply(t, _p, log) {
      const r = await t.run(pitrCommands.pgbackrest(st, 'backup --type=full'), { allowFail: true, onOutput: log, timeout: 6 * 3600 })
      if (r.code !== 0) throw new HostError(`pgbackrest backup failed: ${pgbackrestError(r.stdout + r.stderr)}`)
    },
  }
}

// ---- Base backups on a schedule: systemd timers on the host (they run with the host, not
// with the machine that deployed), one template service for both kinds.

const unitName = (st: Stack) => `opsbook-pitr-${st.project}`
/** Full weekly (Sunday), differential the other days; both at 01:30 host time, spread by up to 30 min. */
export const PITR_SCHEDULE = { full: 'Sun *-*-* 01:30:00', diff: 'Mon..Sat *-*-* 01:30:00' } as const

/** The script (full | diff), its service template (%i) and two timers, as they should be on the host. */
export function pitrScheduleFiles(st: Stack): { spec: FileSpec; content: string }[] {
  const u = unitName(st)
  const root = (path: string, mode = '0644'): FileSpec => ({ path, owner: 'root:root', mode })
  // A script rather than the command in ExecStart: systemd would read its quotes, $ and % itself.
  const script = [
    '#!/bin/sh',
    `# Managed by opsbook (PITR=on): a pgBackRest base backup of ${st.project}: full | diff.`,
    'set -e',
    'case "$1" in full|diff) ;; *) echo "usage: $0 full|diff" >&2; exit 2 ;; esac',
    pitrCommands.pgbackrest(st, 'backup --type="$1"'),
    '',
  ].join('\n')
  const service = [
    `# Managed by opsbook (PITR=on): WAL is archived continuously; this adds a base backup.`,
    '[Unit]', `Description=pgBackRest %i backup of ${st.project} (opsbook)`, 'Wants=network-online.target', 'After=network-online.target docker.service',
    '[Service]', 'Type=oneshot', `ExecStart=/usr/local/sbin/${u} %i`, 'TimeoutStartSec=8h',
  ].join('\n') + '\n'
  const timer = (kind: keyof typeof PITR_SCHEDULE) => [
    '# Managed by opsbook.',
    '[Unit]', `Description=${kind === 'full' ? 'Weekly full' : 'Daily differential'} pgBackRest backup of ${st.project}`,
    '[Timer]', `OnCalendar=${PITR_SCHEDULE[kind]}`, 'RandomizedDelaySec=30m', 'Persistent=true', `Unit=${u}@${kind}.service`,
    '[Install]', 'WantedBy=timers.target',
  ].join('\n') + '\n'
  return [
    { spec: root(`/usr/local/sbin/${u}`, '0755'), content: script },
    { spec: root(`/etc/systemd/system/${u}@.service`), content: service },
    { spec: root(`/etc/systemd/system/${u}-full.timer`), content: timer('full') },
    { spec: root(`/etc/systemd/system/${u}-diff.timer`), content: timer('diff') },
  ]
}

export const scheduleCommands = {
  timers: (st: Stack) => [`${unitName(st)}-full.timer`, `${unitName(st)}-diff.timer`],
  state: (st: Stack, files: FileSpec[]) => [
    ...files.map(f => fileCommands.state(f.path)),
    ...scheduleCommands.timers(st).map(tm => sh`systemctl is-enabled ${tm} 2>/dev/null | grep . || echo absent`),
  ].join('\n'),
  // restart, not only enable --now: a changed OnCalendar takes effect at once.
  enable: (st: Stack) => sh`systemctl daemon-reload && systemctl enable --quiet ${scheduleCommands.timers(st)} && systemctl restart ${scheduleCommands.timers(st)}`,
}

/** The base-backup timers installed and enabled (the first full backup is deploy's own step). */
export function pitrScheduleStep(st: Stack): Step<{ spec: FileSpec; content: string }[]> {
  return {
    title: `Base backups scheduled on the host (full weekly, differential daily: ${unitName(st)}-*.timer)`,
    async check(t) {
      requirePitr(st)
      const files = pitrScheduleFiles(st)
      const out = (await t.run(scheduleCommands.state(st, files.map(f => f.spec)), { timeout: 30 })).stdout.trim().split('\n')
      const stale = files.filter((f, i) => out[i] !== wantedState(f.content, f.spec))
      const off = out.slice(files.length).some(x => x !== 'enabled')
      if (!stale.length && !off) return { done: true }
      return { done: false, change: stale.length ? `write ${stale.map(f => f.spec.path.replace(/^.*\//, '')).join(', ')} and enable the timers` : 'enable the timers', plan: stale }
    },
    async apply(t, stale) {
      for (const f of stale) await t.run(fileCommands.install(f.spec), { stdin: f.content, timeout: 30 })
      await t.run(scheduleCommands.enable(st), { timeout: 60 })
    },
  }
}

/** What deploy adds with PITR=on: before the accessories start, and after. */
export const pitrDeploySteps = (st: Stack) => ({
  beforeAccessories: st.pitr ? [pitrFilesStep(st), pitrImageStep(st)] : [],
  after: st.pitr ? [pitrServiceStep(st), pitrArchivingStep(st), pitrBaseBackupStep(st), pitrScheduleStep(st)] : [],
})

// ---- Status: how far behind archiving is (the RPO a lost host would cost now).

export interface Archiver {
  lastWal: string; lastAt?: number; failed: number; lastFailedAt?: number; now: number; waiting: number; waitingSince?: number
  /** The file system holding PGDATA (and pg_wal): percent used and bytes left, when df could say. */
  disk?: { usedPct: number; availBytes: number }
}

/** WAL segments wait in pg_wal until archived; past this much of the disk used, status warns before PostgreSQL stops on a full disk. */
export const DISK_WARN_PCT = 85

/** The archiver line, then df's line for PGDATA's file system. */
export function parseArchiver(out: string): Archiver | undefined {
  const [line, dfLine] = out.trim().split('\n')
  const f = (line ?? '').split('|')
  if (f.length < 7) return undefined
  const n = (v: string | undefined) => (!v ? undefined : Number(v) * 1000)
  const df = /^\S+\s+\d+\s+\d+\s+(\d+)\s+(\d+)%/.exec(dfLine?.trim() ?? '')
  return {
    lastWal: f[0], lastAt: n(f[1]), failed: Number(f[2]), lastFailedAt: n(f[3]), now: Number(f[4]) * 1000, waiting: Number(f[5]), waitingSince: n(f[6]),
    disk: df ? { usedPct: Number(df[2]), availBytes: Number(df[1]) * 1024 } : undefined,
  }
}

/**
 * One line for status, and whether it is a warning: archiving failing (the newest failure
 * after the newest success), or a finished segment waiting longer than PITR_MAX_LAG. The
 * segment being written is not behind: archive_timeout closes it within PITR_MAX_LAG once
 * something was written.
 */
export function describeArchiving(a: Archiver, maxLag: number): { text: string; warn: boolean } {
  const ago = (ms: number) => `${Math.max(0, Math.round((a.now - ms) / 1000))} s ago`
  const last = a.lastWal ? `last WAL ${a.lastWal} archived ${a.lastAt ? ago(a.lastAt) : '?'}` : 'nothing archived since PostgreSQL started'
  const waiting = `${a.waiting} segment(s) (${a.waiting * 16} MiB) wait in pg_wal${a.waitingSince ? `, the oldest since ${ago(a.waitingSince)}` : ''}`
  const disk = a.disk ? `; the disk is ${a.disk.usedPct}% full (${(a.disk.availBytes / 2 ** 30).toFixed(1)} GiB left)` : ''
  if (a.disk && a.disk.usedPct >= DISK_WARN_PCT) {
    return { warn: true, text: `disk ${a.disk.usedPct}% full (${(a.disk.availBytes / 2 ** 30).toFixed(1)} GiB left) under PGDATA${a.waiting ? `, and ${waiting}` : ''}: PostgreSQL stops when it fills; free space${a.waiting ? ' or fix archiving' : ''}. ${last}` }
  }
  if (a.lastFailedAt && (!a.lastAt || a.lastFailedAt > a.lastAt)) {
    return { warn: true, text: `archiving FAILING (${a.failed} failed attempts, the last ${ago(a.lastFailedAt)}; ${waiting}${disk}): ${last}; check the bucket and pgbackrest's log (docker compose logs db)` }
  }
  if (a.waiting && a.waitingSince && a.now - a.waitingSince > maxLag * 1000) return { warn: true, text: `archiving behind: ${waiting} (PITR_MAX_LAG ${maxLag} s)${disk}; ${last}` }
  return { warn: false, text: `${last}; ${a.waiting ? waiting : 'none waiting'}${disk}` }
}

export const pitrStatusCommand = (st: Stack) =>
  `${pitrCommands.psql(st, pitrCommands.archiverQuery())}; ` + stackCommands.compose(st, sh`exec -T ${dbOf(st).service} sh -c 'df -P "\${PGDATA:-/var/lib/postgresql/data}" | tail -n 1'`)
