// Several hosts running the same stack, taken in batches (Ansible's `serial` and
// `max_fail_percentage`, Kamal's boot limit): a batch runs at once, the next starts
// after an optional pause, and once more hosts have failed than --max-fail allows the
// rest are left untouched (they keep serving the old version).
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

/** "2" hosts at a time or "25%" of them (rounded up, at least one). */
export function batchSize(spec: string | undefined, hosts: number): number {
  if (spec === undefined) return 1
  const m = /^(\d{1,4})(%?)$/.exec(spec.trim())
  const n = m ? Number(m[1]) : 0
  if (!m || n < 1 || (m[2] && n > 100)) throw new UsageError(`--batch ${JSON.stringify(spec)}: give a number of hosts (e.g. 2) or a percentage (e.g. 25%).`)
  return Math.min(hosts, m[2] ? Math.max(1, Math.ceil((hosts * n) / 100)) : n)
}

export function batches<T>(items: T[], size: number): T[][] {
  const out: T[][] = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}

export function nonNegative(flag: string, v: string | undefined, fallback: number): number {
  if (v === undefined) return fallback
  if (!/^\d{1,6}$/.test(v.trim())) throw new UsageError(`${flag} ${JSON.stringify(v)}: give a whole number (0 or more).`)
  return Number(v)
}
