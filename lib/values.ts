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
