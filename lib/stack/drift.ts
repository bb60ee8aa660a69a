// Drift: the host no longer matches what opsbook recorded, typically after a hand-run
// `docker compose up -d` at 3 a.m. Each difference is one line naming what differs and
// the command that repairs it (status.ts prints them, rollback --repair fixes them).
import { fileStates, wantedState } from '../host/files.ts'
import type { Target } from '../steps.ts'
import { accessories, released, versionOf, webServices, PROXY_SERVICE } from './model.ts'
import { live, readReleases } from './releases.ts'
import { readCanary } from './canary.ts'
import { slotServed, slotStateOf } from './rollout.ts'
import type { SlotState } from './slots.ts'
import { stackFiles, type Container, type Stack } from './stack.ts'
import { containerStates, describeStuck, stuckOf } from './stuck.ts'

/** Web services whose live slot names an address no running container of theirs has. */
export function unservedServices(st: Stack, slots: SlotState, cs: Container[]): string[] {
  return webServices(st.model).filter(s => !slotServed(slots, cs, s, slots.live.get(s.name) ?? 'a')).map(s => s.name)
}

export async function driftOf(t: Target, st: Stack): Promise<string[]> {
  const [rs, { cs, details }, slots, { canary, buckets }] = await Promise.all([readReleases(t, st), containerStates(t, st), slotStateOf(t, st, false), readCanary(t, st)])
  const cur = live(rs)
  if (!cur) return []
  const repair = `rollback.ts --repair (re-rolls ${cur.version} onto the host)`
  const stuck = stuckOf(st, cs, details, true)
  const statesOf = (service: string) => { const x = stuck.filter(s => s.service === service).map(describeStuck); return x.length ? ` (${x.join(', ')})` : '' }
  const lines: string[] = []
  for (const s of released(st.model)) {
    const all = cs.filter(c => c.service === s.name && c.state === 'running')
    // A canary's web containers run beside the live release's: they are counted on their own.
    const ofCanary = canary && s.role === 'web' ? all.filter(c => versionOf(s, c.image) === canary.version) : []
    const running = all.filter(c => !ofCanary.includes(c))
    if (canary && s.role === 'web' && ofCanary.length !== s.replicas) {
      lines.push(`${s.name}: ${ofCanary.length} container(s) of the canary ${canary.version} running, not ${s.replicas}: update.ts --version ${canary.version} --canary ${canary.share}% starts them again, update.ts --abort drops the canary`)
    }
    const versions = [...new Set(running.map(c => versionOf(s, c.image) ?? c.image))]
    if (versions.some(v => v !== cur.version) || running.length !== s.replicas) {
      lines.push(`${s.name}: ${running.length} container(s) running ${versions.join(', ') || 'nothing'}${statesOf(s.name)}, the live release is ${cur.version} with ${s.replicas}: ${repair}`)
    }
  }
  if (!canary && buckets.size) lines.push(`nginx: bucket files of a canary are left in proxy/canary (an abort or a promotion cut short) and still send requests to another slot: update.ts --abort removes them`)
  for (const name of unservedServices(st, slots, cs)) {
    lines.push(`nginx: ${name}'s live slot names addresses no running ${name} container has (containers recreated by hand?): ${repair}`)
  }
  for (const name of [...accessories(st.model).map(s => s.name), PROXY_SERVICE]) {
    if (cs.some(c => c.service === name && c.state === 'running')) continue
    const looping = stuck.some(s => s.service === name && s.action === 'leave')
    lines.push(`${name === PROXY_SERVICE ? 'nginx' : name}: not running${statesOf(name)}: ${looping ? 'docker keeps restarting it; its log (docker logs) says why it exits' : 'rollback.ts --repair starts it'}`)
  }
  const wanted = stackFiles(st)
  const states = await fileStates(t, wanted.map(w => w.spec.path))
  wanted.forEach((w, i) => {
    if (states[i] !== wantedState(w.content, w.spec)) lines.push(`${w.spec.path}: differs from what deploy wrote (edited on the host, or your settings changed): update.ts --version ${cur.version} rewrites it`)
  })
  return lines
}
