// known_hosts matching as OpenSSH does it: plain and hashed (|1|salt|hmac) host
// fields, comma lists, * and ? wildcards, !negation, [host]:port for non-22 ports,
// and @revoked lines. ssh2 accepts any host key unless told otherwise, so this is
// what stands between a runbook and a man in the middle.
import { createHash, createHmac } from 'node:crypto'

export type HostKeyStatus = 'known' | 'unknown' | 'changed' | 'revoked'

interface Entry { marker?: string; hosts: string; type: string; key: string }

/** The name known_hosts stores for a host: `host`, or `[host]:port` off port 22. */
export function hostId(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`
}

function parse(text: string): Entry[] {
  const out: Entry[] = []
  for (const line of text.split('\n')) {
    const t = line.trim()
    if (!t || t.startsWith('#')) continue
    const f = t.split(/\s+/)
    const marker = f[0].startsWith('@') ? f.shift() : undefined
    if (f.length < 3) continue
    out.push({ marker, hosts: f[0], type: f[1], key: f[2] })
  }
  return out
}

function wildcard(pattern: string, s: string): boolean {
  const re = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')
  return new RegExp(`^${re}$`, 'i').test(s)
}

/** Whether a known_hosts host field matches the host as OpenSSH would. */
export function hostFieldMatches(field: string, host: string, port: number): boolean {
  const id = hostId(host, port)
  if (field.startsWith('|1|')) {
    const [, , salt, hash] = field.split('|')
    if (!salt || !hash) return false
    const mac = createHmac('sha1', Buffer.from(salt, 'base64')).update(id).digest('base64')
    return mac === hash
  }
  let matched = false
  for (const p of field.split(',')) {
    const negated = p.startsWith('!')
    if (wildcard(negated ? p.slice(1) : p, id)) {
      if (negated) return false
      matched = true
    }
  }
  return matched
}

/** The key types known_hosts holds for the host (to ask the server for one of those). */
export function knownKeyTypes(text: string, host: string, port: number): string[] {
  return [...new Set(parse(text)
    .filter(e => !e.marker && hostFieldMatches(e.hosts, host, port))
    .map(e => e.type))]
}

/** Compares the key a server presented with what known_hosts says about that host. */
export function checkHostKey(text: string, host: string, port: number, type: string, key: string): HostKeyStatus {
  const entries = parse(text).filter(e => hostFieldMatches(e.hosts, host, port) || e.marker === '@revoked')
  if (entries.some(e => e.marker === '@revoked' && e.key === key)) return 'revoked'
  const plain = entries.filter(e => !e.marker)
  if (plain.some(e => e.type === type && e.key === key)) return 'known'
  return plain.length ? 'changed' : 'unknown'
}

/** Splits an SSH wire-format public key blob into its type and base64 form. */
export function describeKey(blob: Buffer): { type: string; key: string; fingerprint: string } {
  const len = blob.readUInt32BE(0)
  return {
    type: blob.subarray(4, 4 + len).toString('ascii'),
    key: blob.toString('base64'),
    fingerprint: `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`,
  }
}

export function knownHostsLine(host: string, port: number, type: string, key: string): string {
  return `${hostId(host, port)} ${type} ${key}\n`
}
