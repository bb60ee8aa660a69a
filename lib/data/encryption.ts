// Client-side backup encryption in the age format (age-encryption.org/v1), streamed in
// 64 KiB authenticated chunks. Backups are encrypted where the runbook runs, to public
// recipients only: the private key is needed to restore and never goes near the host.
import { readFileSync } from 'node:fs'
import { Readable } from 'node:stream'
import { ReadableStream } from 'node:stream/web'
import { UsageError } from '../errors.ts'

// X25519 (age1…) and post-quantum hybrid (age1pq1…) keys, bech32 encoded.
const IDENTITY = /^AGE-SECRET-KEY-(PQ-)?1[0-9A-Z]{20,}$/

/** An encrypted copy of `plain`, as a Node stream; backpressure flows through. */
export async function encryptStream(recipients: string[], plain: Readable): Promise<Readable> {
  const { Encrypter } = await import('age-encryption') // loaded only when encrypting
  const e = new Encrypter()
  for (const r of recipients) e.addRecipient(r)
  const web = await e.encrypt(Readable.toWeb(plain) as unknown as globalThis.ReadableStream<Uint8Array>)
  return Readable.fromWeb(web as unknown as ReadableStream<Uint8Array>)
}

/**
 * The plaintext of an age stream. A wrong key fails before any byte comes out; a
 * tampered or truncated stream fails as it is read (every chunk is authenticated).
 */
export async function decryptStream(identities: string[], sealed: Readable, what: string): Promise<Readable> {
  const { Decrypter } = await import('age-encryption')
  const d = new Decrypter()
  for (const i of identities) d.addIdentity(i)
  let web
  try {
    web = await d.decrypt(Readable.toWeb(sealed) as unknown as globalThis.ReadableStream<Uint8Array>)
  } catch (e) {
    throw new UsageError(`${what} cannot be decrypted with the key in BACKUP_AGE_IDENTITY_FILE (${(e as Error).message}): is it the key for the recipient in the manifest?`)
  }
  return Readable.fromWeb(web as unknown as ReadableStream<Uint8Array>)
}

/** age identity files: one AGE-SECRET-KEY-1… per line, # comments allowed. */
export function readIdentities(file: string): string[] {
  let text: string
  try { text = readFileSync(file, 'utf8') } catch (e) {
    throw new UsageError(`BACKUP_AGE_IDENTITY_FILE ${file} cannot be read (${(e as NodeJS.ErrnoException).code}): point it at the age key file made with age-keygen.`)
  }
  const keys = text.split('\n').map(l => l.trim()).filter(l => l && !l.startsWith('#'))
  if (!keys.length || keys.some(k => !IDENTITY.test(k))) throw new UsageError(`BACKUP_AGE_IDENTITY_FILE ${file} must hold age secret keys (AGE-SECRET-KEY-1…), one per line.`)
  return keys
}
