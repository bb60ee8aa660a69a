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
import { admit, firstUnhealthy, installProxyFor, retire, rollout, slotStateOf, stackContainers, startBeside, UnhealthyRelease } from './rollout.ts'
import { CANARY_BUCKETS, CANARY_DIR, CANARY_FLAG, canaryBucket, upstreamName, type Slot } from './routes.ts'
import { slotCommands, type SlotState } from './slots.ts'
import { files, renderEnv, type Container, type Stack } from './stack.ts'

export interface Canary {
  version: string
  /** Percent of the requests (buckets) the canary gets, 1-99. */
  share: number
  /** When it started (ISO 8601, UTC): its traffic is counted from there. */
  since: string
  /** Per web service, the slot its canary containers are in. */
  slots: Map<string, Slot>
}

export interface CanaryState {
  canary?: Canary
  /** The bucket files on the host, by "SERVICE-SLOT": which buckets go there. */
  buckets: Map<string, Set<number>>
}

/** "--canary 20%" (or "20"): the share, or a sentence saying what is wrong. */
export function parseShare(text: string): number {
  const m = /^(\d{1,2})%?$/.exec(text.trim())
  const n = m ? Number(m[1]) : NaN
  if (!(n >= 1 && n <= 99)) throw new UsageError(`--canary takes the share of requests for the new version, from 1% to 99% (e.g. --canary 10%); got "${text}".`)
  return n
}

const dirOf = (st: Stack) => `${st.dir}/proxy/${CANARY_DIR}`

/** proxy/canary/on's text: one "key value" per line (slots as "slot SERVICE SLOT"). */
export function renderCanary(c: Canary): string {
  return [`version ${c.version}`, `share ${c.share}`, `since ${c.since}`, ...[...c.slots].map(([s, slot]) => `slot ${s} ${slot}`)].join('\n') + '\n'
}

export function parseCanaryState(stdout: string): CanaryState {
  const state: CanaryState = { buckets: new Map() }
  const c: Partial<Canary> & { slots: Map<string, Slot> } = { slots: new Map() }
  let flag = false
  for (const line of stdout.split('\n')) {
    const [kind, a = '', b = ''] = line.split(' ')
    if (kind === 'flag') {
      flag = true
      for (const l of Buffer.from(a, 'base64').toString('utf8').split('\n')) {
        const [k, x = '', y = ''] = l.split(' ')
        if (k === 'version') c.version = x
        if (k === 'share') c.share = Number(x)
        if (k === 'since') c.since = x
        if (k === 'slot' && (y === 'a' || y === 'b')) c.slots.set(x, y)
      }
    }
    const bucket = kind === 'file' && /^(.+-[ab])-(\d+)$/.exec(a)
    if (bucket) state.buckets.set(bucket[1], (state.buckets.get(bucket[1]) ?? new Set()).add(Number(bucket[2])))
    void b
  }
  if (flag && c.version && c.share && c.since) state.canary = c as Canary
  return state
}

export const canaryCommands = {
  /** "flag BASE64" (proxy/canary/on's text) if there is one, then "file NAME" per file of proxy/canary/. */
  read: (st: Stack) => sh`d=${dirOf(st)}; [ -d "$d" ] || exit 0; ` +
    `[ -f "$d/${raw(CANARY_FLAG)}" ] && echo "flag $(base64 -w0 "$d/${raw(CANARY_FLAG)}")"; ls -1 "$d" | sed 's/^/file /'`,
  /** proxy/canary/on written (its folder made first): nginx starts handing out the cookie. */
  begin: (st: Stack) => sh`install -d -m 755 ${dirOf(st)} || exit 1` + '\n' + fileCommands.install({ path: `${dirOf(st)}/${CANARY_FLAG}`, mode: '0644', owner: 'root' }),
  /** Buckets 0..share-1 of each service go to its canary slot, the others to the live one. */
  share: (st: Stack, slots: Map<string, Slot>, share: number) => {
    const all = [...slots].flatMap(([s, slot]) => Array.from({ length: CANARY_BUCKETS }, (_, i) => canaryBucket(s, slot, i)))
    const on = all.filter(f => Number(f.slice(f.lastIndexOf('-') + 1)) < share)
    const off = all.filter(f => !on.includes(f))
    return sh`cd ${dirOf(st)} && touch ${on} && rm -f ${off}`
  },
  /** No bucket goes to the canary any more (proxy/canary/on stays: the run is not over). */
  noBuckets: (st: Stack) => sh`cd ${dirOf(st)} 2>/dev/null || exit 0; ` + `find . -maxdepth 1 -type f -name '*-[ab]-[0-9]*' -delete`,
  end: (st: Stack) => sh`rm -rf ${dirOf(st)}`,
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

export async function readCanary(t: Target, st: Stack): Promise<CanaryState> {
  return parseCanaryState((await t.run(canaryCommands.read(st), { timeout: 30 })).stdout)
}

/** The runbooks that swap containers refuse while a canary runs: they would take its slot. */
export async function refuseDuringCanary(t: Target, st: Stack, doing: string): Promise<void> {
  if (st.config.cluster) return
  const { canary: c } = await readCanary(t, st)
  if (c) throw new UsageError(`A canary of ${c.version} takes ${c.share}% of the requests on this host: promote it (update.ts --promote) or drop it (update.ts --abort, or rollback.ts) before ${doing}.`)
}

export interface Traffic { version: string; requests: number; errors: number }

/** Requests and 5xx answers per version since the canary started (the canary first). */
export async function canaryTraffic(t: Target, st: Stack, c: Canary, liveVersion: string): Promise<Traffic[]> {
  const out = (await t.run(canaryCommands.traffic(st, c.since), { allowFail: true, timeout: 120 })).stdout
  const by = new Map<string, Traffic>([[c.version, { version: c.version, requests: 0, errors: 0 }], [liveVersion, { version: liveVersion, requests: 0, errors: 0 }]])
  const slotOf = new Map(webServices(st.model).flatMap(s => (['a', 'b'] as const).map(slot => [upstreamName(s.name, slot), c.slots.get(s.name) === slot ? c.version : liveVersion] as const)))
  for (const line of out.split('\n')) {
    const [up, n, e] = line.split(' ')
    const v = slotOf.get(up)
    if (!v) continue
    by.get(v)!.requests += Number(n)
    by.get(v)!.errors += Number(e)
  }
  return [...by.values()]
}

const pct = (part: number, whole: number) => (whole ? `${(100 * part / whole).toFixed(part && part < whole / 100 ? 2 : 1)}%` : '-')
/** "v2 takes 20% since 2026-12-07 17:10 UTC: v2 1203 requests (19.8%), 2 5xx (0.17%); v1 4871 requests, 0 5xx (0.0%)" */
export function describeCanary(c: Canary, traffic: Traffic[]): string {
  const total = traffic.reduce((n, x) => n + x.requests, 0)
  return `${c.version} takes ${c.share}% of the requests since ${c.since.slice(0, 16).replace('T', ' ')} UTC: ` +
    traffic.map(x => `${x.version} ${x.requests} requests (${pct(x.requests, total)}), ${x.errors} 5xx (${pct(x.errors, x.requests)})`).join('; ')
}

const running = (cs: Container[], s: ServiceModel, version?: string) =>
  cs.filter(c => c.service === s.name && c.state === 'running' && (version === undefined || versionOf(s, c.image) === version))

/** The promotion has begun: nginx's live slot is the canary's for some service. */
const promoting = (c: Canary, slots: SlotState) => [...c.slots].some(([s, slot]) => slots.live.get(s) === slot)

/** Each web service's canary slot is served by running containers of the canary's version. */
function canaryServes(st: Stack, c: Canary, cs: Container[], slots: SlotState): boolean {
  return webServices(st.model).every(s => {
    const want = slots.upstreams.get(s.name)?.[c.slots.get(s.name) ?? 'a'] ?? []
    const have = new Set(running(cs, s, c.version).map(x => slots.attached.get(x.name)))
    return want.length === s.replicas && want.every(ip => have.has(ip))
  })
}

const sameBuckets = (state: CanaryState, c: Canary, share: number) =>
  state.buckets.size === c.slots.size && [...c.slots].every(([s, slot]) => {
    const b = state.buckets.get(`${s}-${slot}`)
    return b?.size === share && [...b].every(i => i < share)
  })

const noCluster = (st: Stack) => {
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
      noCluster(st)
      const [state, rs, cs, slots] = await Promise.all([readCanary(t, st), readReleases(t, st), stackContainers(t, st), slotStateOf(t, st, false)])
      const cur = live(rs)?.version
      if (!cur) throw new UsageError(`Nothing is deployed in ${st.dir} yet: run deploy.ts first.`)
      const c = state.canary
      if (c && c.version !== version) throw new UsageError(`A canary of ${c.version} takes ${c.share}% of the requests: promote it (update.ts --promote) or drop it (update.ts --abort) before a canary of ${version}.`)
      if (!c && cur === version) throw new UsageError(`${version} is the live release already: a canary is for a version that is not live.`)
      if (c && promoting(c, slots)) throw new UsageError(`The promotion of ${c.version} has begun (nginx sends it every request): finish it with update.ts --promote.`)
      if (c && canaryServes(st, c, cs, slots)) {
        if (sameBuckets(state, c, share)) return { done: true, detail: `since ${c.since.slice(0, 16).replace('T', ' ')} UTC` }
        return { done: false, change: `move ${version}'s share from ${c.share}% to ${share}% (no nginx reload)`, plan: 'share' }
      }
      return { done: false, change: `start ${webs.map(s => `${s.replicas} ${s.name}`).join(', ')} of ${version} beside ${cur}'s, then send them ${share}% of the requests${c ? ` (the canary's containers are not all running: started again)` : ''}`, plan: 'start' }
    },
    async apply(t, plan, log) {
      const slotsOf = (state: CanaryState) => state.canary!.slots
      if (plan === 'share') {
        const state = await readCanary(t, st)
        await t.run(canaryCommands.begin(st), { stdin: renderCanary({ ...state.canary!, share }), timeout: 30 })
        await t.run(canaryCommands.share(st, slotsOf(state), share), { timeout: 30 })
        return `${version} takes ${share}% of the requests`
      }
      // Whatever is left of an earlier start (interrupted, or containers that died): no
      // request goes there once the buckets are gone.
      await t.run(canaryCommands.end(st), { timeout: 30 })
      const left = (await stackContainers(t, st)).filter(x => webs.some(s => s.name === x.service && versionOf(s, x.image) === version)).map(x => x.name)
      if (left.length) await t.run(sh`docker rm -f ${left} >/dev/null`, { timeout: 120 })
      const started = await startBeside(t, st, webs, version, log)
      let admitted: Awaited<ReturnType<typeof admit>>
      try {
        admitted = await admit(t, st, webs, version, started, log)
      } catch (e) {
        if (e instanceof UnhealthyRelease) await releaseRecord(st, version).failed(t, e)
        throw e
      }
      const { slots, plan: placed, healthy } = admitted
      const reloaded = await installProxyFor(t, st, slots, placed, log)
      const c: Canary = { version, share, since: new Date().toISOString(), slots: new Map([...placed.services].map(([s, p]) => [s, p.target])) }
      await t.run(canaryCommands.begin(st), { stdin: renderCanary(c), timeout: 30 })
      await t.run(canaryCommands.share(st, c.slots, share), { timeout: 30 })
      return `${healthy}; ${share}% of the requests go to ${version}, ${reloaded ? 'after one nginx reload (its addresses changed)' : 'no nginx reload'}`
    },
  }
}

/**
 * update.ts --promote: every request to the canary (the swap of a rollout), the workers
 * replaced by the canary's version, the old web containers drained and stopped, the
 * release recorded. Re-run after an interruption, it finishes what is left.
 */
export function promoteStep(st: Stack): Step<Canary> {
  const webs = webServices(st.model)
  return {
    title: 'Canary promoted: every request to the new version',
    async check(t) {
      noCluster(st)
      const [{ canary: c }, rs] = await Promise.all([readCanary(t, st), readReleases(t, st)])
      if (!c) return { done: true, detail: `no canary in progress (${live(rs)?.version ?? 'nothing'} is live)` }
      const others = released(st.model).filter(s => s.role !== 'web')
      return { done: false, change: `send every request to ${c.version} (${c.share}% now)${others.length ? `, replace ${others.map(s => s.name).join(', ')}` : ''}, stop ${live(rs)?.version}'s web containers`, plan: c }
    },
    async apply(t, c, log) {
      const [cs, slots] = await Promise.all([stackContainers(t, st), slotStateOf(t, st, false)])
      // Before anything switches: the canary's containers all still answer where nginx reaches them.
      const fresh = new Map(webs.map(s => [s.name, running(cs, s, c.version).map(x => x.name)]))
      const short = webs.find(s => fresh.get(s.name)!.length < s.replicas)
      const ips = new Map([...fresh.values()].flat().map(n => [n, slots.attached.get(n) ?? '']))
      const bad = short ? { service: short, why: `${fresh.get(short.name)!.length} of ${short.replicas} running` } : await firstUnhealthy(t, st, webs, fresh, ips)
      if (bad) throw new HostError(`${c.version}'s ${bad.service.name} is not healthy (${bad.why}): nothing was switched. update.ts --version ${c.version} --canary ${c.share}% starts its containers again, update.ts --abort drops the canary.`)
      log(`sending every request to ${c.version}`)
      await t.run(slotCommands.flip(st, c.slots), { timeout: 30 })
      await t.run(canaryCommands.noBuckets(st), { timeout: 30 })
      await retire(t, st, webs, new Map(webs.map(s => [s.name, cs.filter(x => x.service === s.name && versionOf(s, x.image) !== c.version).map(x => x.name)])), log)
      const others = released(st.model).filter(s => s.role !== 'web')
      const behind = others.filter(s => running(cs, s).length !== s.replicas || running(cs, s, c.version).length !== s.replicas)
      if (behind.length) await rollout(t, st, c.version, log, behind.map(s => s.name))
      else await t.run(fileCommands.install(files(st).env), { stdin: renderEnv(st, c.version), timeout: 30 })
      if (live(await readReleases(t, st))?.version !== c.version) await releaseRecord(st, c.version).live(t)
      await t.run(canaryCommands.end(st), { timeout: 30 })
      return `${c.version} is live${behind.length ? `; ${behind.map(s => s.name).join(', ')} replaced` : ''}`
    },
  }
}

/** update.ts --abort (and rollback.ts): every request back to the live release, the canary's containers drained and stopped. */
export function abortStep(st: Stack): Step<Canary> {
  const webs = webServices(st.model)
  return {
    title: 'No canary: every request to the live release',
    async check(t) {
      if (st.config.cluster) return { skip: 'no canaries on a cluster' }
      const [{ canary: c }, rs, slots] = await Promise.all([readCanary(t, st), readReleases(t, st), slotStateOf(t, st, false)])
      if (!c) return { done: true }
      if (promoting(c, slots)) throw new UsageError(`The promotion of ${c.version} has begun (nginx sends it every request): finish it with update.ts --promote, then roll back with rollback.ts if need be.`)
      return { done: false, change: `send the ${c.share}% of the requests back to ${live(rs)?.version}, stop ${c.version}'s containers (no nginx reload)`, plan: c }
    },
    async apply(t, c, log) {
      await t.run(canaryCommands.noBuckets(st), { timeout: 30 })
      const cs = await stackContainers(t, st)
      await retire(t, st, webs, new Map(webs.map(s => [s.name, cs.filter(x => x.service === s.name && versionOf(s, x.image) === c.version).map(x => x.name)])), log)
      await t.run(canaryCommands.end(st), { timeout: 30 })
      return `${c.version}'s canary dropped`
    },
  }
}
