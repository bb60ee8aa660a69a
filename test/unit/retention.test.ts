import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { applyRetention } from '../../lib/data/retention.ts'

// One backup a day at 02:00 UTC for 100 days up to 2026-11-22 (a fixed clock).
const daily = Array.from({ length: 100 }, (_, i) => {
  const d = new Date(Date.UTC(2026, 10, 22, 2) - i * 86400000)
  return { id: d.toISOString().slice(0, 10), startedAt: d.toISOString() }
})
const ids = (xs: { id: string }[]) => xs.map(x => x.id)

test('last N only', () => {
  const r = applyRetention(daily, { last: 3, daily: 0, weekly: 0, monthly: 0, minKeep: 0 })
  assert.equal(ids([...r.keep.keys()]), ['2026-11-22', '2026-11-21', '2026-11-20'])
  assert.is(r.drop.length, 97)
})

test('daily, weekly and monthly windows keep the newest of each period', () => {
  const r = applyRetention(daily, { last: 0, daily: 2, weekly: 3, monthly: 3, minKeep: 0 })
  const kept = new Map([...r.keep].map(([b, why]) => [b.id, why.join('+')]))
  assert.equal(Object.fromEntries(kept), {
    '2026-11-22': 'daily+weekly+monthly', // Sunday: the newest of week 47 and of November
    '2026-11-21': 'daily',
    '2026-11-15': 'weekly', // Sunday of week 46
    '2026-11-08': 'weekly',
    '2026-10-31': 'monthly',
    '2026-09-30': 'monthly',
  })
})

test('a pinned backup is never dropped; the floor keeps the newest when rules keep too few', () => {
  const withPin = daily.map(b => (b.id === '2026-09-01' ? { ...b, pinned: true } : b))
  const r = applyRetention(withPin, { last: 1, daily: 0, weekly: 0, monthly: 0, minKeep: 3 })
  assert.equal(ids([...r.keep.keys()]).sort(), ['2026-09-01', '2026-11-21', '2026-11-22'])
  assert.equal(r.keep.get(withPin.find(b => b.id === '2026-11-21')!), ['floor'])
})

test('order of input does not matter; nothing to drop when few backups exist', () => {
  const shuffled = [...daily].reverse()
  assert.equal(ids(applyRetention(shuffled, { last: 5, daily: 0, weekly: 0, monthly: 0, minKeep: 0 }).drop).length, 95)
  assert.is(applyRetention(daily.slice(0, 2), { last: 7, daily: 7, weekly: 4, monthly: 6, minKeep: 3 }).drop.length, 0)
})

test.run()
