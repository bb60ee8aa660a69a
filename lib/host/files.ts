// Files the runbooks own on the host. Contents travel on stdin (never argv), land in
// a temp file beside the target and are renamed into place, so a reader sees the old
// file or the new one, never half of one. A validator (e.g. `sshd -t`) runs against
// the new file in place and a failure puts the old one back.
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { raw, sh } from '../sh.ts'
import type { Target } from '../steps.ts'

export interface FileSpec { path: string; mode: string; owner: string; validate?: string }

export const fileCommands = {
  /** Prints the sha256 of the file and its owner:group and mode, or "absent". */
  state: (path: string) => sh`if [ -f ${path} ]; then echo "$(sha256sum < ${path} | cut -c1-64) $(stat -c '%U:%G %a' ${path})"; else echo absent; fi`,
  /** fileCommands.state for each path read from stdin, one per line (no argument grows with the count). */
  states: () => `while IFS= read -r p; do if [ -f "$p" ]; then echo "$(sha256sum < "$p" | cut -c1-64) $(stat -c '%U:%G %a' "$p")"; else echo absent; fi; done`,
  /** The file's content, or `fallback` when it does not exist. */
  read: (path: string, fallback: string) => sh`cat ${path} 2>/dev/null || echo ${fallback}`,
  install: (f: FileSpec) => {
    const dir = f.path.replace(/\/[^/]+$/, '') || '/'
    const prev = `${f.path}.opsbook-prev`
    const restore = sh`if [ -e ${prev} ]; then mv -f ${prev} ${f.path}; else rm -f ${f.path}; fi`
    return [
      sh`set -e; tmp=$(mktemp ${dir + '/.opsbook-tmp.XXXXXX'}); trap 'rm -f "$tmp"' EXIT`,
      sh`cat > "$tmp"; chmod ${f.mode} "$tmp"; chown ${f.owner} "$tmp"`,
      sh`if [ -e ${f.path} ]; then cp -p ${f.path} ${prev}; fi`,
      sh`mv -f "$tmp" ${f.path}`,
      f.validate ? sh`if ! ( ${raw(f.validate)} ) >&2; then ${raw(restore)}; echo ${`${f.validate} rejected the new file; the previous one was put back`} >&2; exit 1; fi` : '',
      sh`rm -f ${prev}`,
    ].filter(Boolean).join('\n')
  },
  /**
   * Several files replaced together, their contents concatenated on stdin in this order
   * (exact byte sizes given); `validate` sees all of them new, and on failure all the old
   * ones come back. For configuration that only makes sense as a whole (nginx's routes
   * and upstreams).
   */
  installMany: (fs: { spec: FileSpec; bytes: number }[], validate?: string) => {
    const lines = [sh`set -e; tmps=''; trap 'rm -f $tmps' EXIT`]
    fs.forEach(({ spec, bytes }, i) => {
      const dir = spec.path.replace(/\/[^/]+$/, '') || '/'
      lines.push(sh`t${raw(String(i))}=$(mktemp ${dir + '/.opsbook-tmp.XXXXXX'}); tmps="$tmps $t${raw(String(i))}"`)
      lines.push(sh`head -c ${String(bytes)} > "$t${raw(String(i))}"; chmod ${spec.mode} "$t${raw(String(i))}"; chown ${spec.owner} "$t${raw(String(i))}"`)
    })
    const restore = fs.map(({ spec }) => sh`if [ -e ${`${spec.path}.opsbook-prev`} ]; then mv -f ${`${spec.path}.opsbook-prev`} ${spec.path}; else rm -f ${spec.path}; fi`).join('; ')
    fs.forEach(({ spec }) => lines.push(sh`rm -f ${`${spec.path}.opsbook-prev`}; if [ -e ${spec.path} ]; then cp -p ${spec.path} ${`${spec.path}.opsbook-prev`}; fi`))
    fs.forEach(({ spec }, i) => lines.push(sh`mv -f "$t${raw(String(i))}" ${spec.path}`))
    if (validate) lines.push(sh`if ! ( ${raw(validate)} ) >&2; then ${raw(restore)}; echo ${`${validate} rejected the new files; the previous ones were put back`} >&2; exit 1; fi`)
    lines.push(fs.map(({ spec }) => sh`rm -f ${`${spec.path}.opsbook-prev`}`).join('; '))
    return lines.join('\n')
  },
}

/** The state line of each path (fileCommands.state), in one round trip whatever their number. */
export async function fileStates(t: Target, paths: string[]): Promise<string[]> {
  const out = (await t.run(fileCommands.states(), { stdin: paths.join('\n') + '\n', timeout: 60 })).stdout
  return out.trim().split('\n')
}

/**
 * Files written through temp files and renamed into place (installMany), in batches: the
 * command names every file, and one argument may not pass 128 KiB.
 */
export async function installFiles(t: Target, fs: { spec: FileSpec; content: string | Buffer }[]): Promise<void> {
  const command = (batch: typeof fs) => fileCommands.installMany(batch.map(w => ({ spec: w.spec, bytes: Buffer.byteLength(w.content) })))
  let batch: typeof fs = []
  const flush = async () => {
    if (!batch.length) return
    await t.run(command(batch), { stdin: Buffer.concat(batch.map(w => (typeof w.content === 'string' ? Buffer.from(w.content) : w.content))), timeout: 120 })
    batch = []
  }
  for (const f of fs) {
    // ~100 KB of script, well under the 128 KiB one argument may have once wrapped (sudo, timeout).
    if (batch.length && Buffer.byteLength(command([...batch, f])) > 100_000) await flush()
    batch.push(f)
  }
  await flush()
}

export const sha256 = (text: string | Buffer) => createHash('sha256').update(text).digest('hex')

/** The state line fileCommands.state prints when the file is as wanted. */
export const wantedState = (content: string | Buffer, f: FileSpec) => `${sha256(content)} ${f.owner} ${f.mode.replace(/^0/, '')}`

export function template(name: string): string {
  return readFileSync(fileURLToPath(new URL(`../../templates/${name}`, import.meta.url)), 'utf8')
}
