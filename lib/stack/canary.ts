// Canary releases: a new version's web containers start in each web service's idle slot,
// as for a rollout, but nginx sends them only a share of the requests, sticky per client
// (routes.ts: a cookie hashed into one of 100 buckets). Each bucket that goes to the
// canary is a file nginx looks at per request, so starting, moving the share, promoting
// and aborting reload nothing:
//   proxy/canary/on              a canary is in progress: its version, share, start, slots
//   proxy/canary/SVC-SLOT-N      bucket N's requests for SVC go to SLOT (the canary's)
// Promote switches each service's live slot to the canary's (the swap of a rollout), then
// replaces the workers and stops the old containers. Abort removes the bucket files (every
// request goes back to the live release at once), then stops the canary's containers.
// Workers and jobs stay on the live release until the promotion: only web traffic is split.
// The share of each version and its errors come from nginx's access log, where every line
// names the upstream (the slot) that answered.
import { HostError, UsageError } from '../errors.ts'
import { fileCommands } from '../host/files.ts'
import { raw, sh } from '../sh.ts'
import type { Step, Target } from '../steps.ts'
import { released, versionOf, webServices, PROXY_SERVICE, type ServiceModel } from './model.ts'
import { releaseRecord } from './record.ts'
import { live, readReleases } from './releases.ts'
import { admit, firstUnhealthy, installProxyFor, retire, running, slotServed, slotStateOf, stackContainers, startBeside, UnhealthyRelease } from './rollout.ts'
import { CANARY_BUCKETS, CANARY_DIR, CANARY_FLAG, canaryBucket, otherSlot, upstreamName, type Slot } from './routes.ts'
import { slotCommands, type SlotState } from './slots.ts'
import { files, owned, renderEnv, type Container, type Stack } from './stack.ts'

export interface Canary {
  version: string
  /** Percent of the requests (buckets) the canary gets, 1-99. */
  share: number
  /** When it started (ISO 8601, UTC): its traffic is counted from there. */
  since: string
  /** Per web service, the slot its canary containers are in. */
  slots: Map<string, Slot>
  /** A promotion is stopping the old release's containers: it can only be finished, or rolled back. */
  retiring?: boolean
}

export interface CanaryState {
  canary?: Canary
  /** The bucket files on the host, by "SERVICE-SLOT": which buckets go there. */
  buckets: Map<string, Set<number>>
}

/** Bucket files without proxy/canary/on: an abort or promotion cut off while clearing. They still route requests. */
const stray = (s: CanaryState) => !s.canary && s.buckets.size > 0

/** "--canary 20%" (or "20"): the share, or a sentence saying what is wrong. */
export function parseShare(text: string): number {
  const m = /^(\d{1,2})%?$/.exec(text.trim())
  const n = m ? Number(m[1]) : NaN
  if (!(n >= 1 && n <= 99)) throw new UsageError(`--canary takes the share of requests for the new version, from 1% to 99% (e.g. --canary 10%); got "${text}".`)
  return n
}

const dirOf = (st: Stack) => `${st.dir}/proxy/${CANARY_DIR}`
const utc = (iso: string) => `${iso.slice(0, 16).replace('T', ' ')} UTC`

/** proxy/canary/on's text: one "key value" per line (slots as "slot SERVICE SLOT"). */
export function renderCanary(c: Canary): string {
  return [`version ${c.version}`, `share ${c.share}`, `since ${c.since}`, ...[...c.slots].map(([s, slot]) => `slot ${s} ${slot}`), ...(c.retiring ? ['retiring'] : [])].join('\n') + '\n'
}

export function parseCanaryState(stdout: string): CanaryState {
  const state: CanaryState = { buckets: new Map() }
  const c: Partial<Canary> & { slots: Map<string, Slot> } = { slots: new Map() }
  let flag = false
  for (const line of stdout.split('\n')) {
    const [kind, a = ''] = line.split(' ')
    if (kind === 'flag') {
      flag = true
      for (const l of Buffer.from(a, 'base64').toString('utf8').split('\n')) {
        const [k, x = '', y = ''] = l.split(' ')
        if (k === 'version') c.version = x
        if (k === 'share') c.share = Number(x)
        if (k === 'since') c.since = x
        if (k === 'slot' && (y === 'a' || y === 'b')) c.slots.set(x, y)
        if (k === 'retiring') c.retiring = true
      }
    }
    const bucket = kind === 'file' && /^(.+-[ab])-(\d+)$/.exec(a)
    if (bucket) state.buckets.set(bucket[1], (state.buckets.get(bucket[1]) ?? new Set()).add(Number(bucket[2])))
  }
  if (flag && c.version && c.share && c.since) state.canary = c as Canary
  return state
}

export const canaryCommands = {
  /** "flag BASE64" (proxy/canary/on's text) if there is one, then "file NAME" per file of proxy/canary/. */
  read: (st: Stack) => sh`d=${dirOf(st)}; [ -d "$d" ] || exit 0; ` +
    `[ -f "$d/${raw(CANARY_FLAG)}" ] && echo "flag $(base64 -w0 "$d/${raw(CANARY_FLAG)}")"; ls -1 "$d" | sed 's/^/file /'`,
  /** proxy/canary/on written (its folder made first): nginx starts handing out the cookie. */
  begin: (st: Stack) => sh`install -d -o ${st.owner} -g ${st.owner} -m 755 ${dirOf(st)} || exit 1` + '\n' + fileCommands.install(owned(st, `proxy/${CANARY_DIR}/${CANARY_FLAG}`, '0644')),
  /** Buckets 0..share-1 of each service go to its canary slot, the others to the live one. */
  share: (st: Stack, slots: Map<string, Slot>, share: number) => {
    const all = [...slots].flatMap(([s, slot]) => Array.from({ length: CANARY_BUCKETS }, (_, i) => ({ file: canaryBucket(s, slot, i), on: i < share })))
    return sh`cd ${dirOf(st)} && touch -- ${all.filter(b => b.on).map(b => b.file)} && rm -f -- ${all.filter(b => !b.on).map(b => b.file)}`
  },
  /** No bucket goes to the canary any more (proxy/canary/on stays: the run is not over). */
  noBuckets: (st: Stack) => sh`cd ${dirOf(st)} 2>/dev/null || exit 0; ` + `find . -maxdepth 1 -type f -name '*-[ab]-[0-9]*' -delete`,
  /** The buckets first, the flag last: bucket files never outlive it (they would route requests unseen). */
  end: (st: Stack) => `${canaryCommands.noBuckets(st)} && ` + sh`rm -f ${CANARY_FLAG} && cd / && rmdir ${dirOf(st)}`,
  /**
   * From nginx's access log since `since`: "UPSTREAM REQUESTS 5XX" per upstream (slot). The
   * request line and user agent have their quotes escaped by nginx, so the status is the
   * first word after the request's closing quote and the upstream the last field.
   */
  traffic: (st: Stack, since: string) =>
    sh`c=$(docker ps -q --filter ${`label=com.docker.compose.project=${st.project}`} --filter ${`label=com.docker.compose.service=${PROXY_SERVICE}`} | head -n 1); ` +
    sh`[ -n "$c" ] || exit 0; docker logs --since ${since} "$c" 2>/dev/null | ` +
    `awk -F'"' 'NF >= 7 && $NF ~ /^ upstream=opsbook_/ { up = substr($NF, 11); split($3, f, " "); n[up]++; if (f[1] >= 500) e[up]++ } END { for (u in n) print u, n[u], e[u] + 0 }'`,
}

/** The canary state of the host (none on a cluster: canaries are refused there). */
export async function readCanary(t: Target, st: Stack): Promise<CanaryState> {
  if (st.config.cluster) return { buckets: new Map() }
  return parseCanaryState((await t.run(canaryCommands.read(st), { timeout: 30 })).stdout)
}

/** The release that serves once --promote (the canary's) or --abort (the live one) is done: the hooks' version. */
export async function servingAfter(t: Target, st: Stack, promote: boolean): Promise<string | undefined> {
  return promote ? (await readCanary(t, st)).canary?.version : live(await readReleases(t, st))?.version
}

const WAYS_OUT = 'promote it (update.ts --promote) or drop it (update.ts --abort, or rollback.ts)'
const inProgress = (s: CanaryState) => (s.canary ? `A canary of ${s.canary.version} takes ${s.canary.share}% of the requests on this host`
  : 'Bucket files of a canary are left in proxy/canary (an abort or a promotion cut short), and nginx still follows them')

/** Runbooks that replace the app's containers refuse while a canary runs: they would take its slot. */
export async function refuseDuringCanary(t: Target, st: Stack, doing: string): Promise<void> {
  const s = await readCanary(t, st)
  if (s.canary || stray(s)) throw new UsageError(`${inProgress(s)}: ${WAYS_OUT} before ${doing}.`)
}

/**
 * The first step of update and deploy: no canary in the way, refused before anything
 * changes (a migration included). `canary`: update.ts --canary of this version, which a
 * canary of the same version does not stand in the way of.
 */
export function canaryGuardStep(st: Stack, doing: string, canary?: string): Step {
  return {
    title: 'No other canary in progress',
    async check(t) {
      if (canary) noCluster(st)
      // The release history only for a canary (is it live already?): one round trip for an update.
      const [s, rs] = await Promise.all([readCanary(t, st), canary ? readReleases(t, st) : []])
      if (canary && s.canary?.version === canary) return { done: true, detail: `the canary is ${canary}` }
      if (s.canary || stray(s)) throw new UsageError(`${inProgress(s)}: ${WAYS_OUT} before ${doing}.`)
      if (canary && live(rs)?.version === canary) throw new UsageError(`${canary} is the live release already: a canary is for a version that is not live.`)
      return { done: true }
    },
    async apply() {},
  }
}

export interface Traffic { version: string; requests: number; errors: number }

/** Requests and 5xx answers per version since the canary started (the canary first). */
export async function canaryTraffic(t: Target, st: Stack, c: Canary, liveVersion: string): Promise<Traffic[]> {
  const out = (await t.run(canaryCommands.traffic(st, c.since), { allowFail: true, timeout: 120 })).stdout
  const by = new Map<string, Traffic>([[c.version, { version: c.version, requests: 0, errors: 0 }], [liveVersion, { version: liveVersion, requests: 0, errors: 0 }]])
  const versionAt = new Map(webServices(st.model).flatMap(s => (['a', 'b'] as const).map(slot => [upstreamName(s.name, slot), c.slots.get(s.name) === slot ? c.version : liveVersion] as const)))
  for (const line of out.split('\n')) {
    const [up, n, e] = line.split(' ')
    const v = versionAt.get(up)
    if (!v) continue
    by.get(v)!.requests += Number(n)
    by.get(v)!.errors += Number(e)
  }
  return [...by.values()]
}

const pct = (part: number, whole: number) => (whole ? `${(100 * part / whole).toFixed(part && part < whole / 100 ? 2 : 1)}%` : '-')
/** "v2 takes 20% of the requests since 2026-12-07 17:10 UTC: v2 1203 requests (19.8%), 2 5xx (0.17%); v1 4871 requests (80.2%), 0 5xx (0.0%)" */
export function describeCanary(c: Canary, traffic: Traffic[]): string {
  const total = traffic.reduce((n, x) => n + x.requests, 0)
  return `${c.version} takes ${c.share}% of the requests since ${utc(c.since)}: ` +
    traffic.map(x => `${x.version} ${x.requests} requests (${pct(x.requests, total)}), ${x.errors} 5xx (${pct(x.errors, x.requests)})`).join('; ')
}

/** The promotion has begun: nginx's live slot is the canary's for some service. */
const promoting = (c: Canary, slots: SlotState) => [...c.slots].some(([s, slot]) => slots.live.get(s) === slot)

/** Each web service's canary slot is held by running containers of the canary's version. */
const canaryServes = (st: Stack, c: Canary, cs: Container[], slots: SlotState) =>
  webServices(st.model).every(s => slotServed(slots, cs, s, c.slots.get(s.name) ?? 'a', c.version))

/** The first web service whose running containers of `version` in its `slot` do not answer there, as nginx reaches them. */
async function slotUnhealthy(t: Target, st: Stack, cs: Container[], slots: SlotState, slot: (s: ServiceModel) => Slot, version: string) {
  const webs = webServices(st.model)
  const held = new Map(webs.map(s => [s.name, running(cs, s, version).filter(x => (slots.upstreams.get(s.name)?.[slot(s)] ?? []).includes(slots.attached.get(x.name) ?? '')).map(x => x.name)]))
  return firstUnhealthy(t, st, webs, held, new Map([...held.values()].flat().map(n => [n, slots.attached.get(n)!])))
}

/** The containers of `services` whose version is (`of` true) or is not `version`, per service. */
const byVersion = (cs: Container[], services: ServiceModel[], version: string, of: boolean) =>
  new Map(services.map(s => [s.name, cs.filter(x => x.service === s.name && (versionOf(s, x.image) === version) === of).map(x => x.name)]))

const sameBuckets = (state: CanaryState, c: Canary, share: number) =>
  state.buckets.size === c.slots.size && [...c.slots].every(([s, slot]) => {
    const b = state.buckets.get(`${s}-${slot}`)
    return b?.size === share && [...b].every(i => i < share)
  })

function noCluster(st: Stack) {
  if (st.config.cluster) throw new UsageError('Canary releases work with ENGINE=compose only for now: on a cluster, update.ts --version TAG swaps every task with no failed request.')
}

/**
 * update.ts --version V --canary N%: V's web containers start beside the live ones and
 * get N% of the requests; a re-run with another share only moves the share.
 */
export function canaryStep(st: Stack, version: string, share: number): Step<'start' | 'share'> {
  const webs = webServices(st.model)
  return {
    title: `Canary: ${version} takes ${share}% of the requests (sticky per client)`,
    async check(t) {
      const [state, rs, cs, slots] = await Promise.all([readCanary(t, st), readReleases(t, st), stackContainers(t, st), slotStateOf(t, st, false)])
      const cur = live(rs)?.version
      if (!cur) throw new UsageError(`Nothing is deployed in ${st.dir} yet: run deploy.ts first.`)
      const c = state.canary
      if (c && promoting(c, slots)) throw new UsageError(`The promotion of ${c.version} has begun (nginx sends it every request): finish it with update.ts --promote.`)
      if (c && canaryServes(st, c, cs, slots)) {
        if (sameBuckets(state, c, share)) return { done: true, detail: `since ${utc(c.since)}` }
        return { done: false, change: `move ${version}'s share from ${c.share}% to ${share}% (no nginx reload)`, plan: 'share' }
      }
      return { done: false, change: `start ${webs.map(s => `${s.replicas} ${s.name}`).join(', ')} of ${version} beside ${cur}'s, then send them ${share}% of the requests${c ? ' (the canary\'s containers are not all running: started again)' : ''}`, plan: 'start' }
    },
    async apply(t, plan, log) {
      if (plan === 'share') {
        const { canary: c } = await readCanary(t, st)
        await t.run(canaryCommands.begin(st), { stdin: renderCanary({ ...c!, share }), timeout: 30 })
        await t.run(canaryCommands.share(st, c!.slots, share), { timeout: 30 })
        return `${version} takes ${share}% of the requests`
      }
      // What an earlier start left (cut off, or containers that died) gets no request once
      // the buckets are gone; it drains, then goes. Never a container of the live slot.
      await t.run(canaryCommands.end(st), { timeout: 30 })
      const [cs, slots] = await Promise.all([stackContainers(t, st), slotStateOf(t, st, false)])
      const liveIps = (s: ServiceModel) => slots.upstreams.get(s.name)?.[slots.live.get(s.name) ?? 'a'] ?? []
      const left = byVersion(cs.filter(x => !webs.some(s => s.name === x.service && liveIps(s).includes(slots.attached.get(x.name) ?? ''))), released(st.model), version, true)
      // Workers of this version too (a promotion cut short started them): they stay on the live release during a canary.
      await retire(t, st, released(st.model), left, log)
      const started = await startBeside(t, st, webs, version, log)
      let admitted: Awaited<ReturnType<typeof admit>>
      try {
        admitted = await admit(t, st, webs, version, started, log)
      } catch (e) {
        if (e instanceof UnhealthyRelease) await releaseRecord(st, version).failed(t, e)
        throw e
      }
      const { slots: placed, plan: at, healthy } = admitted
      const reloaded = await installProxyFor(t, st, placed, at, log)
      const c: Canary = { version, share, since: new Date().toISOString(), slots: new Map([...at.services].map(([s, p]) => [s, p.target])) }
      await t.run(canaryCommands.begin(st), { stdin: renderCanary(c), timeout: 30 })
      await t.run(canaryCommands.share(st, c.slots, share), { timeout: 30 })
      return `${healthy}; ${share}% of the requests go to ${version}, ${reloaded ? 'after one nginx reload (its addresses changed)' : 'no nginx reload'}`
    },
  }
}

type Finish = { kind: 'clean' } | { kind: 'promote' | 'abort' | 'back' | 'forget'; c: Canary; live: string }
const CLEAN = { done: false as const, change: 'remove the bucket files left in proxy/canary (an abort or a promotion cut short)', plan: { kind: 'clean' as const } }

/**
 * update.ts --promote: the canary's workers start beside the old ones and must be healthy
 * (nothing has switched if they are not), then every request goes to the canary (the swap
 * of a rollout), the old release's containers drain and stop, the release is recorded.
 * Re-run after an interruption, it finishes what is left.
 */
export function promoteStep(st: Stack): Step<Finish> {
  const webs = webServices(st.model)
  const others = released(st.model).filter(s => s.role !== 'web')
  return {
    title: 'Canary promoted: every request to the new version',
    async check(t) {
      noCluster(st)
      const [state, rs] = await Promise.all([readCanary(t, st), readReleases(t, st)])
      const cur = live(rs)?.version ?? 'nothing'
      if (stray(state)) return CLEAN
      const c = state.canary
      if (!c) return { done: true, detail: `no canary in progress (${cur} is live)` }
      return { done: false, change: `send every request to ${c.version} (${c.share}% now)${others.length ? `, replace ${others.map(s => s.name).join(', ')}` : ''}, stop ${cur}'s containers`, plan: { kind: 'promote', c, live: cur } }
    },
    async apply(t, plan, log) {
      if (plan.kind === 'clean') return void await t.run(canaryCommands.end(st), { timeout: 30 })
      const { c, live: was } = plan as Extract<Finish, { c: Canary }>
      const [cs, slots] = await Promise.all([stackContainers(t, st), slotStateOf(t, st, false)])
      const begun = promoting(c, slots)
      // Every request may only go where the canary's containers still hold its slots and answer.
      const stale = webs.find(s => !slotServed(slots, cs, s, c.slots.get(s.name) ?? 'a', c.version))
      if (stale) {
        throw new HostError(begun
          ? `${c.version}'s ${stale.name} containers no longer hold the slot nginx sends every request to: rollback.ts puts ${was} back.`
          : `${c.version}'s ${stale.name} containers no longer hold the canary's slot (stopped or recreated): nothing was switched. update.ts --version ${c.version} --canary ${c.share}% starts them again; update.ts --abort drops the canary.`)
      }
      if (!begun) {
        const bad = await slotUnhealthy(t, st, cs, slots, s => c.slots.get(s.name) ?? 'a', c.version)
        if (bad) throw new HostError(`${c.version}'s ${bad.service.name} does not answer (${bad.why}): nothing was switched; update.ts --abort drops the canary.`)
      }
      // The workers, health-gated beside the old ones before anything switches.
      const behind = others.filter(s => running(cs, s, c.version).length !== s.replicas)
      if (behind.length) {
        // Some of the canary's version left by a promotion cut short: stopped with their grace, then all started again.
        await retire(t, st, behind, byVersion(cs, behind, c.version, true), log)
        await admit(t, st, behind, c.version, await startBeside(t, st, behind, c.version, log), log, { enter: false })
      } else if (!begun && others.length) {
        // All there, started by a run cut short before its gate ended: they pass it now.
        const bad = await firstUnhealthy(t, st, others, new Map(others.map(s => [s.name, running(cs, s, c.version).map(x => x.name)])))
        if (bad) throw new HostError(`${c.version}'s ${bad.service.name} is not healthy (${bad.why}): nothing was switched; update.ts --abort drops the canary.`)
      }
      // Every service, even when a run cut short flipped some: the flip is idempotent.
      if (!begun) log(`sending every request to ${c.version}`)
      await t.run(slotCommands.flip(st, c.slots), { timeout: 30 })
      await t.run(canaryCommands.noBuckets(st), { timeout: 30 })
      // From here the old release's containers stop: --abort can no longer switch back to them.
      if (!c.retiring) await t.run(canaryCommands.begin(st), { stdin: renderCanary({ ...c, retiring: true }), timeout: 30 })
      await retire(t, st, released(st.model), byVersion(await stackContainers(t, st), released(st.model), c.version, false), log)
      await t.run(fileCommands.install(files(st).env), { stdin: renderEnv(st, c.version), timeout: 30 })
      if (live(await readReleases(t, st))?.version !== c.version) await releaseRecord(st, c.version).live(t)
      await t.run(canaryCommands.end(st), { timeout: 30 })
      return `${c.version} is live${behind.length ? `; ${behind.map(s => s.name).join(', ')} replaced` : ''}`
    },
  }
}

/**
 * update.ts --abort, and rollback.ts (`rollback`): every request back to the live release,
 * the canary's containers drained and stopped. A promotion already switched goes back too
 * while the live release's containers still run; once they are stopped only a rollback
 * can bring them back (`rollback`: the canary is forgotten and the rollback re-rolls).
 */
export function abortStep(st: Stack, opts: { rollback?: boolean } = {}): Step<Finish> {
  const webs = webServices(st.model)
  return {
    title: 'No canary: every request to the live release',
    async check(t) {
      const state = await readCanary(t, st)
      if (stray(state)) return CLEAN
      const c = state.canary
      if (!c) return { done: true }
      const [rs, cs, slots] = await Promise.all([readReleases(t, st), stackContainers(t, st), slotStateOf(t, st, false)])
      const cur = live(rs)?.version ?? 'nothing'
      if (!promoting(c, slots)) return { done: false, change: `send the ${c.share}% of the requests back to ${cur}, stop ${c.version}'s containers (no nginx reload)`, plan: { kind: 'abort', c, live: cur } }
      const oldRuns = !c.retiring && webs.every(s => slotServed(slots, cs, s, otherSlot(c.slots.get(s.name) ?? 'a'), cur)) &&
        released(st.model).filter(s => s.role !== 'web').every(s => running(cs, s, cur).length === s.replicas)
      if (oldRuns) {
        return { done: false, change: `switch nginx back to ${cur} (its containers still run; the promotion of ${c.version} was cut short), stop ${c.version}'s containers`, plan: { kind: 'back', c, live: cur } }
      }
      if (opts.rollback) return { done: false, change: `forget the canary of ${c.version} (its promotion stopped ${cur}'s containers): the rollback starts ${cur} again`, plan: { kind: 'forget', c, live: cur } }
      throw new UsageError(`The promotion of ${c.version} has begun and ${cur}'s containers are ${c.retiring ? 'being ' : ''}stopped: finish it with update.ts --promote, or go back with rollback.ts.`)
    },
    async apply(t, plan, log) {
      if (plan.kind === 'clean' || plan.kind === 'forget') return void await t.run(canaryCommands.end(st), { timeout: 30 })
      const { c } = plan as Extract<Finish, { c: Canary }>
      if (plan.kind === 'back') {
        // Only to containers that still answer where nginx reaches them.
        const [cs, slots] = await Promise.all([stackContainers(t, st), slotStateOf(t, st, false)])
        const bad = await slotUnhealthy(t, st, cs, slots, s => otherSlot(c.slots.get(s.name) ?? 'a'), plan.live)
        if (bad) throw new HostError(`${plan.live}'s ${bad.service.name} does not answer (${bad.why}): nginx was not switched back; rollback.ts starts ${plan.live} again.`)
        await t.run(slotCommands.flip(st, new Map([...c.slots].map(([s, slot]) => [s, otherSlot(slot)]))), { timeout: 30 })
      }
      await t.run(canaryCommands.noBuckets(st), { timeout: 30 })
      // Web containers drain; workers a promotion may have started finish their jobs.
      await retire(t, st, released(st.model), byVersion(await stackContainers(t, st), released(st.model), c.version, true), log)
      await t.run(canaryCommands.end(st), { timeout: 30 })
      return `${c.version}'s canary dropped`
    },
  }
}
