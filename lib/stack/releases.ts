// The release history on the host (APP_DIR/releases.json): which version is live,
// which came before, which failed or were rolled back (bad: never offered as a
// rollback target by default), who did it and when.
import { userInfo, hostname } from 'node:os'
import { fileCommands } from '../host/files.ts'
import { files, type Stack } from './stack.ts'
import type { Target } from '../steps.ts'

export interface Release {
  version: string
  at: string
  by: string
  /** live: serving now; replaced: served before; failed: never served; rolled-back: served, then withdrawn. */
  result: 'live' | 'replaced' | 'failed' | 'rolled-back'
  /** The app service's image reference, its ID and (pulled from a registry) its digest. */
  image?: string
  id?: string
  digest?: string
  /** Every released service's image, when the stack has more than one. */
  images?: ImageIdentity[]
  bad?: boolean
  note?: string
  /** It migrated the database: when, and the backup taken just before. */
  migration?: { at: string; backup?: string }
}

export const releaseCommands = {
  read: (st: Stack) => fileCommands.read(files(st).releases.path, '[]'),
}

export async function readReleases(t: Target, st: Stack): Promise<Release[]> {
  const out = (await t.run(releaseCommands.read(st), { timeout: 30 })).stdout
  try { return JSON.parse(out) } catch { return [] }
}

export async function writeReleases(t: Target, st: Stack, rs: Release[]): Promise<void> {
  await t.run(fileCommands.install(files(st).releases), { stdin: JSON.stringify(rs, null, 1) + '\n', timeout: 30 })
}

export const live = (rs: Release[]) => [...rs].reverse().find(r => r.result === 'live')

/** Releases a rollback may go to, newest first; the default is the first that is not bad. */
export function rollbackTargets(rs: Release[]): Release[] {
  const cur = live(rs)?.version
  const seen = new Set<string>()
  return [...rs].reverse().filter(r => r.result !== 'failed' && r.version !== cur && !seen.has(r.version) && seen.add(r.version))
}
export const defaultRollback = (rs: Release[]) => rollbackTargets(rs).find(r => !r.bad)

const stamp = (version: string, result: Release['result'], extra: Partial<Release> = {}): Release =>
  ({ version, at: new Date().toISOString(), by: `${userInfo().username}@${hostname()}`, result, ...extra })

/** The new live release; the previous live one becomes replaced (or rolled-back and bad). */
export interface ImageIdentity { image?: string; id?: string; digest?: string }

export function recordLive(rs: Release[], version: string, opts: { rollback?: boolean; note?: string; image?: ImageIdentity; images?: ImageIdentity[]; migration?: Release['migration'] } = {}): Release[] {
  const out = rs.map(r => (r.result === 'live' ? { ...r, result: opts.rollback ? 'rolled-back' as const : 'replaced' as const, bad: r.bad || opts.rollback } : r))
  return [...out, stamp(version, 'live', { ...opts.image, ...(opts.images ? { images: opts.images } : {}), ...(opts.note ? { note: opts.note } : {}), ...(opts.migration ? { migration: opts.migration } : {}) })]
}

export function recordFailed(rs: Release[], version: string, note: string, image?: ImageIdentity): Release[] {
  return [...rs, stamp(version, 'failed', { ...image, bad: true, note })]
}

/** Versions whose images must stay: the live one and the latest `keep` good ones. */
export function keptVersions(rs: Release[], keep: number): string[] {
  const good = [...rs].reverse().filter(r => !r.bad && r.result !== 'failed').map(r => r.version)
  return [...new Set(good)].slice(0, keep)
}
