// What the release history records of a release that went live or failed: the app
// service's image identity first (what status and rollback show), every other released
// image, and the migration it ran (with the backup taken before it).
import type { Target } from '../steps.ts'
import { imageIdentities } from './images.ts'
import { imageAt } from './model.ts'
import { readMigrations } from './migrations.ts'
import { readReleases, recordFailed, recordLive, writeReleases, type ImageIdentity, type Release } from './releases.ts'
import { releaseImages, type Stack } from './stack.ts'

async function identities(t: Target, st: Stack, version: string): Promise<{ image: ImageIdentity; images?: ImageIdentity[]; migration?: Release['migration'] }> {
  const refs = [imageAt(st.app, version), ...releaseImages(st, version).filter(r => r !== imageAt(st.app, version))]
  const [ids, ms] = await Promise.all([imageIdentities(t, refs), st.migrate ? readMigrations(t, st) : []])
  const m = ms.find(x => x.version === version && x.state === 'done' && x.at)
  return { image: ids[0], ...(ids.length > 1 ? { images: ids } : {}), ...(m ? { migration: { at: m.at!, ...(m.backup ? { backup: m.backup } : {}) } } : {}) }
}

/** Records `version` in the history: live (a rollback's marked so), or failed and marked bad with the reason. */
export const releaseRecord = (st: Stack, version: string, opts: { rollback?: boolean } = {}) => ({
  live: async (t: Target) => writeReleases(t, st, recordLive(await readReleases(t, st), version, { rollback: opts.rollback, ...await identities(t, st, version) })),
  failed: async (t: Target, e: Error) => writeReleases(t, st, recordFailed(await readReleases(t, st), version, e.message, (await identities(t, st, version)).image)),
})
