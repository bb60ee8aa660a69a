// Parsers of values that settings, flags and several layers share: host lists, age
// public keys, the variables a compose file interpolates. Base layer: config.ts validates settings with them, so they cannot live
// in the modules (fleet, encryption) that use the values.
import { UsageError } from './errors.ts'

export interface HostAddress { host: string; port?: number }

const HOST = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9][A-Za-z0-9._-]*))(?::(\d{1,5}))?$/

/** "a.example.com, b:2222, [2001:db8::1]:22" → addresses; anything else is refused. */
export function parseHosts(list: string, source = '--hosts'): HostAddress[] {
  const items = list.split(',').map(s => s.trim()).filter(Boolean)
  if (!items.length) throw new UsageError(`${source} is empty: give one or more hosts separated by commas (host or host:port).`)
  const seen = new Set<string>()
  return items.map(item => {
    const m = HOST.exec(item)
    const port = m?.[3] ? Number(m[3]) : undefined
    if (!m || (port !== undefined && (port < 1 || port > 65535))) {
      throw new UsageError(`${source}: ${JSON.stringify(item)} is not a host name, IP address or ssh alias (optionally :port).`)
    }
    if (seen.has(item)) throw new UsageError(`${source} names ${item} twice.`)
    seen.add(item)
    return { host: m[1] ?? m[2], port }
  })
}

export const hostLabel = (a: HostAddress) => (a.port ? `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}` : a.host)

/** An age X25519 public key. */
export const RECIPIENT = /^age1[0-9a-z]{20,}$/

/** Names of the variables a compose file interpolates ($VAR, ${VAR...}; $$ is a literal $). */
export function referencedVariables(text: string): string[] {
  const names = new Set<string>()
  for (const m of text.replace(/\$\$/g, '').matchAll(/\$\{?([A-Za-z_][A-Za-z0-9_]*)/g)) names.add(m[1])
  return [...names]
}

/** The closest of `known` to a mistyped name (at most 2 edits away), for "did you mean". */
export function nearest(name: string, known: string[]): string | undefined {
  return known.map(k => ({ k, d: editDistance(k, name) })).filter(x => x.d <= 2).sort((a, b) => a.d - b.d)[0]?.k
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
