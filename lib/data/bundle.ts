// The stack's own files travel with each backup as one small tar.gz (archiver writes it,
// tar-stream reads it back), so a disaster restore rebuilds the stack that was backed up.
import { gunzipSync } from 'node:zlib'
import { TarArchive } from 'archiver'
import { extract } from 'tar-stream'

export async function makeBundle(files: Record<string, string>): Promise<Buffer> {
  const archive = new TarArchive({ gzip: true })
  const chunks: Buffer[] = []
  archive.on('data', (c: Buffer) => chunks.push(c))
  const ended = new Promise<void>((resolve, reject) => { archive.on('end', () => resolve()); archive.on('error', reject) })
  // A fixed date: the same files make the same bundle.
  for (const [name, content] of Object.entries(files)) archive.append(content, { name, mode: 0o600, date: new Date(0) })
  await archive.finalize()
  await ended
  return Buffer.concat(chunks)
}

export async function readBundle(gz: Buffer): Promise<Record<string, string>> {
  const out: Record<string, string> = {}
  const ex = extract()
  const done = new Promise<void>((resolve, reject) => { ex.on('finish', () => resolve()); ex.on('error', reject) })
  ex.on('entry', (header, stream, next) => {
    const parts: Buffer[] = []
    stream.on('data', c => parts.push(c as Buffer))
    stream.on('end', () => { out[header.name] = Buffer.concat(parts).toString('utf8'); next() })
    stream.resume()
  })
  ex.end(gunzipSync(gz))
  await done
  return out
}
