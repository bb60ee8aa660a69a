// Several hosts running the same stack, taken in batches (Ansible's `serial` and
// `max_fail_percentage`, Kamal's boot limit): a batch runs at once, the next starts
// after an optional pause, and once more hosts have failed than --max-fail allows the
// rest are left untouched (they keep serving the old version).
import { UsageError } from '../errors.ts'
import type { HostAddress } from '../values.ts'

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
