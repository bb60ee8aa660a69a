// Which backups to keep: the newest N, the newest of each of the last D days, W weeks and
// M months (restic's and borg's keep-* rules, in UTC), never fewer than a floor, never a
// pinned one, nor one whose keep-until date (pre-migration backups) is still ahead. Pure,
// so the rules are tested with a fixed clock.
export interface Retention { last: number; daily: number; weekly: number; monthly: number; minKeep: number }

export interface Dated { id: string; startedAt: string; pinned?: boolean; keepUntil?: string }

const day = (d: Date) => d.toISOString().slice(0, 10)
const month = (d: Date) => d.toISOString().slice(0, 7)
/** ISO week, e.g. 2026-W47. */
function week(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()))
  const dow = t.getUTCDay() || 7
  t.setUTCDate(t.getUTCDate() + 4 - dow)
  const y0 = new Date(Date.UTC(t.getUTCFullYear(), 0, 1))
  return `${t.getUTCFullYear()}-W${String(Math.ceil(((t.getTime() - y0.getTime()) / 86400000 + 1) / 7)).padStart(2, '0')}`
}

/** Splits backups into kept (with the reasons) and deleted; input in any order. */
export function applyRetention<T extends Dated>(backups: T[], r: Retention, now = new Date()): { keep: Map<T, string[]>; drop: T[] } {
  const newest = [...backups].sort((a, b) => b.startedAt.localeCompare(a.startedAt))
  const keep = new Map<T, string[]>()
  const mark = (b: T, why: string) => keep.set(b, [...(keep.get(b) ?? []), why])
  newest.slice(0, r.last).forEach(b => mark(b, 'last'))
  for (const [n, bucket, name] of [[r.daily, day, 'daily'], [r.weekly, week, 'weekly'], [r.monthly, month, 'monthly']] as const) {
    const seen = new Set<string>()
    for (const b of newest) {
      if (seen.size >= n) break
      const k = bucket(new Date(b.startedAt))
      if (!seen.has(k)) { seen.add(k); mark(b, name) }
    }
  }
  for (const b of newest) if (b.pinned) mark(b, 'pinned')
  // A pre-migration backup stays its set time even when newer backups push it out of the counts.
  for (const b of newest) if (b.keepUntil && b.keepUntil > now.toISOString()) mark(b, 'kept-until')
  for (const b of newest) {
    if (keep.size >= r.minKeep) break
    if (!keep.has(b)) mark(b, 'floor')
  }
  return { keep, drop: newest.filter(b => !keep.has(b)) }
}
