// The stack's own files travel with each backup as one small tar.gz (archiver writes it,
// tar-stream reads it back), so a disaster restore rebuilds the stack that was backed up.
import { gunzipSync } from 'node:zlib'
import { extract } from 'tar-stream'

/** stack.json in stack.tar.gz: which of its files are the compose files, which the project's (under project/). */
export interface BundleIndex { compose: string[]; project: { path: string; mode: string; kind: 'env' | 'mount' }[] }

/** name -> content, or content and mode (default 0600). */
export type BundleFiles = Record<string, string | Buffer | { content: Buffer; mode: number }>

export async function makeBundle(files: BundleFiles): Promise<Buffer> {
  const { TarArchive } = await import('archiver') // loaded by the runs that back up only
  const archive = new TarArchive({ gzip: true })
  const chunks: Buffer[] = []
  archive.on('data', (c: Buffer) => chunks.push(c))
  const ended = new Promise<void>((resolve, reject) => { archive.on('end', () => resolve()); archive.on('error', reject) })
  // A fixed date: the same files make the same bundle.
  for (const [name, f] of Object.entries(files)) {
    const [content, mode] = typeof f === 'string' || Buffer.isBuffer(f) ? [f, 0o600] : [f.content, f.mode]
    archive.append(content, { name, mode, date: new Date(0) })
  }
  await archive.finalize()
  await ended
  return Buffer.concat(chunks)
}

export async function readBundle(gz: Buffer): Promise<Record<string, Buffer>> {
  const out: Record<string, Buffer> = {}
  const ex = extract()
  const done = new Promise<void>((resolve, reject) => { ex.on('finish', () => resolve()); ex.on('error', reject) })
  ex.on('entry', (header, stream, next) => {
    const parts: Buffer[] = []
    stream.on('data', c => parts.push(c as Buffer))
    stream.on('end', () => { out[header.name] = Buffer.concat(parts); next() })
    stream.resume()
  })
  ex.end(gunzipSync(gz))
  await done
  return out
}
