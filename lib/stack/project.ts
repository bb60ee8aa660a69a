// The operator's project as it travels to the host: the compose files of COMPOSE_FILE and
// the files they name beside them (env_file entries, bind-mounted files and folders under
// the first file's folder, which compose calls the project folder). On the host they sit in
// APP_DIR under the same relative paths, so `./config:/etc/app:ro` means the same files
// there; the compose files become compose.yml, compose-2.yml... in merge order.
import { existsSync, lstatSync, readdirSync, readFileSync, realpathSync } from 'node:fs'
import { dirname, join, relative, resolve, sep } from 'node:path'
import { UsageError } from '../errors.ts'
import type { StackModel } from './model.ts'

export interface ComposeSource {
  /** Its name on the host (compose.yml, compose-2.yml...). */
  name: string
  text: string
  /** As errors name it (the operator's path). */
  file: string
}

export interface ProjectFile {
  /** Relative to the project folder, "/" separated. */
  path: string
  content: Buffer
  mode: string
  /** An env_file entry, or a file under a bind mount. */
  kind: 'env' | 'mount'
}

/** Names opsbook keeps in APP_DIR: a project file may not take one. */
const OURS = /^(\.env|app\.env|secrets\.env|opsbook\.yml|compose(-\d+)?\.yml|releases\.json|migrations\.json|stack\.json|settings\.env|(proxy|secrets|env|tls|acme|undo|backups|pitr)(\/.*)?)$/
/** Where database and cache images keep their data. */
const DATA_PATHS = /^(\/var\/lib\/(postgresql(\/data)?|mysql|mariadb|redis|mongodb|clickhouse|rabbitmq|elasticsearch|influxdb|grafana|valkey)|\/data(\/db)?|\/bitnami(\/.*)?|\/usr\/share\/(elasticsearch|opensearch)\/data|\/var\/opt\/mssql|\/opt\/couchdb\/data|\/qdrant\/storage|\/meili_data)$/
const MAX_FILES = 2000
const MAX_BYTES = 64 * 1024 * 1024

export const composeName = (i: number) => (i === 0 ? 'compose.yml' : `compose-${i + 1}.yml`)

/** COMPOSE_FILE's files, read in order; the first one's folder is the project folder. */
export function readComposeFiles(paths: string[], settings: string): ComposeSource[] {
  return paths.map((p, i) => {
    const file = relative(process.cwd(), p) || p
    try { return { name: composeName(i), text: readFileSync(p, 'utf8'), file } } catch {
      throw new UsageError(`The compose file ${file} (COMPOSE_FILE in ${settings}) cannot be read: check the path, relative to the settings file.`)
    }
  })
}

export interface ProjectPaths {
  files: ProjectFile[]
  /** Bind-mount folders that must exist on the host but are not shipped (data: BACKUP_VOLUMES, or absent here). */
  dirs: string[]
  /** Host paths outside the project, left to the operator. */
  hostPaths: string[]
}

/**
 * What the merged files name beside them: env_file entries (mode 0600: they usually hold
 * secrets) and bind mounts under the project folder. `data` are bind sources listed in
 * BACKUP_VOLUMES: they hold the app's data, so deploy creates them and never overwrites
 * them; so are an accessory's bind mounts (./pgdata is a database, not configuration).
 * `settings` is the settings file: it holds opsbook's own secrets and never travels.
 */
export function projectPaths(model: StackModel, root: string, data: string[], settings?: string): ProjectPaths {
  const out: ProjectPaths = { files: [], dirs: [], hostPaths: [] }
  const seen = new Set<string>()
  let bytes = 0
  const inside = (source: string, where: string): string | undefined => {
    if (source.startsWith('/') || source.startsWith('~')) return undefined
    const rel = relative(root, resolve(root, source)).split('\\').join('/')
    if (rel === '' || rel.startsWith('..')) throw new UsageError(`${where}: ${source} is outside the project folder ${root}; keep it beside the compose file, or use an absolute host path you put there yourself.`)
    if (settings && resolve(root, rel) === resolve(settings)) throw new UsageError(`${where}: ${source} is opsbook's settings file, which holds its own secrets (S3 keys, passwords) and never goes to the host; put the service's variables in a file of their own.`)
    if (OURS.test(rel)) throw new UsageError(`${where}: ${source} is a name opsbook keeps in APP_DIR on the host (${rel}); rename it, in an override file if the compose file is not yours (e.g. env_file: !override [backend.env]).`)
    return rel
  }
  const real = realpathSync(root)
  const add = (rel: string, kind: ProjectFile['kind'], mode?: string) => {
    if (seen.has(rel)) return
    if (/[\x00-\x1f]/.test(rel)) throw new UsageError(`${model.file}: a file beside the compose file has a control character in its name (${JSON.stringify(rel)}); rename it.`)
    seen.add(rel)
    const abs = join(root, rel)
    // A link may point anywhere (~/.ssh/id_rsa, /etc): only what stays in the project travels.
    const to = realpathSync(abs)
    if (settings && to === realpathSync(settings)) throw new UsageError(`${model.file}: ${rel} beside the compose file is opsbook's settings file (or a link to it), which holds its own secrets and never goes to the host; put the service's variables in a file of their own.`)
    if (to !== real && !to.startsWith(real + sep)) throw new UsageError(`${model.file}: ${rel} beside the compose file is a link to ${to}, outside the project folder; copy the file in, or mount the host path itself.`)
    const st = lstatSync(to)
    if (st.isDirectory()) {
      for (const e of readdirSync(abs).sort()) add(`${rel}/${e}`, kind)
      return
    }
    if (!st.isFile()) return
    bytes += st.size
    if (out.files.length >= MAX_FILES || bytes > MAX_BYTES) throw new UsageError(`The files beside ${root}'s compose file that the stack mounts are over ${MAX_FILES} files or ${MAX_BYTES >> 20} MiB (at ${rel}); mount data as a named volume or list it in BACKUP_VOLUMES.`)
    let content: Buffer
    try { content = readFileSync(abs) } catch { throw new UsageError(`${model.file}: ${rel} beside the compose file cannot be read here (its mode or owner); if it is data a container wrote, list its folder in BACKUP_VOLUMES instead of shipping it.`) }
    out.files.push({ path: rel, content, mode: mode ?? (st.mode & 0o111 ? '0755' : '0644'), kind })
  }
  for (const s of model.services) {
    for (const e of s.envFiles) {
      const where = `${model.file}, service ${s.name}, env_file`
      const rel = inside(e.path, where)
      if (rel === undefined) { out.hostPaths.push(`${e.path} (${s.name})`); continue }
      if (!existsSync(join(root, rel))) {
        if (e.required) throw new UsageError(`${where}: ${e.path} does not exist beside the compose file; create it, or mark it required: false.`)
        continue
      }
      add(rel, 'env', '0600')
    }
    for (const b of s.binds) {
      const rel = inside(b.source, `${model.file}, service ${s.name}, volumes`)
      if (rel === undefined) { out.hostPaths.push(`${b.source} (${s.name})`); continue }
      // An accessory's folder mounted where its image keeps data (./pgdata) is data, not
      // configuration: created, never shipped. Others (./initdb, ./prometheus) travel.
      const written = s.role === 'accessory' && !b.readOnly && DATA_PATHS.test(b.target.replace(/\/+$/, ''))
      if (data.includes(rel) || written || !existsSync(join(root, rel))) { if (!out.dirs.includes(rel)) out.dirs.push(rel); continue }
      add(rel, 'mount')
    }
  }
  out.hostPaths = [...new Set(out.hostPaths)]
  return out
}

/** The project folder of COMPOSE_FILE: the first file's folder, as for compose. */
export const projectRoot = (composeFiles: string[]) => dirname(composeFiles[0])
