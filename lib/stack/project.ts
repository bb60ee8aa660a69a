// The operator's project as it travels to the host: the compose files of COMPOSE_FILE and
// the files they name beside them (env_file entries, bind-mounted files and folders under
// the first file's folder, which compose calls the project folder). On the host they sit in
// APP_DIR under the same relative paths, so `./config:/etc/app:ro` means the same files
// there; the compose files become compose.yml, compose-2.yml... in merge order.
import { existsSync, lstatSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
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
 * BACKUP_VOLUMES: they hold the app's data, so deploy creates them and never overwrites them.
 */
export function projectPaths(model: StackModel, root: string, data: string[]): ProjectPaths {
  const out: ProjectPaths = { files: [], dirs: [], hostPaths: [] }
  const seen = new Set<string>()
  let bytes = 0
  const inside = (source: string, where: string): string | undefined => {
    if (source.startsWith('/') || source.startsWith('~')) return undefined
    const rel = relative(root, resolve(root, source)).split('\\').join('/')
    if (rel === '' || rel.startsWith('..')) throw new UsageError(`${where}: ${source} is outside the project folder ${root}; keep it beside the compose file, or use an absolute host path you put there yourself.`)
    if (OURS.test(rel)) throw new UsageError(`${where}: ${source} is a name opsbook keeps in APP_DIR on the host (${rel}); rename it, in an override file if the compose file is not yours (e.g. env_file: !override [backend.env]).`)
    return rel
  }
  const add = (rel: string, kind: ProjectFile['kind'], mode?: string) => {
    if (seen.has(rel)) return
    seen.add(rel)
    const abs = join(root, rel)
    const st = statSync(abs)
    if (st.isDirectory()) {
      for (const e of readdirSync(abs).sort()) add(`${rel}/${e}`, kind)
      return
    }
    if (lstatSync(abs).isSymbolicLink() && !resolve(abs).startsWith(root)) return
    if (!st.isFile()) return
    bytes += st.size
    if (out.files.length >= MAX_FILES || bytes > MAX_BYTES) throw new UsageError(`The files beside ${root}'s compose file that the stack mounts are over ${MAX_FILES} files or ${MAX_BYTES >> 20} MiB (at ${rel}); mount data as a named volume or list it in BACKUP_VOLUMES.`)
    out.files.push({ path: rel, content: readFileSync(abs), mode: mode ?? (st.mode & 0o111 ? '0755' : '0644'), kind })
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
      if (data.includes(rel) || !existsSync(join(root, rel))) { if (!out.dirs.includes(rel)) out.dirs.push(rel); continue }
      add(rel, 'mount')
    }
  }
  out.hostPaths = [...new Set(out.hostPaths)]
  return out
}

/** The project folder of COMPOSE_FILE: the first file's folder, as for compose. */
export const projectRoot = (composeFiles: string[]) => dirname(composeFiles[0])
