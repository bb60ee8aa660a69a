// Zero-downtime replacement of every released service (web and worker) by a version, as
// docker-rollout does it but with nginx told exactly which containers to use:
//   1. start the new version's containers beside the old ones (compose --scale, --no-recreate),
//      every released service in one compose command; accessories are never touched
//   2. connect the new web containers to their service's idle slot (slots.ts): fixed
//      addresses nginx already has, that no request goes to yet
//   3. wait until each is healthy: web containers answer their health path at that
//      address, workers pass their compose health check or stay up opsbook.settle
//      seconds; if one does not in time, remove all the new ones: no request reached
//      them and the old version keeps serving (and working the queue)
//   4. swap: rename each replaced service's slot file; nginx reads it per request, so the
//      next request goes to the new slot while requests in flight finish on the old one.
//      No reload (it would close idle keep-alive connections), unless an address changed
//   5. give the old web containers DRAIN_SECONDS; then SIGTERM every old container with
//      its stop_grace_period (a worker finishes the job it holds) and remove them
//   6. write the new version into .env, so compose's view matches what runs
import { HostError } from '../errors.ts'
import { fileCommands } from '../host/files.ts'
import { sh } from '../sh.ts'
import type { Target } from '../steps.ts'
import { released, versionOf, webServices, PROXY_SERVICE, type ServiceModel } from './model.ts'
import type { Slot } from './routes.ts'
import { planSlots, readSlots, slotCommands, type SlotPlan, type SlotState } from './slots.ts'
import { files, masked, parseContainers, proxyFiles, renderEnv, stackCommands, type Container, type Stack } from './stack.ts'

export class UnhealthyRelease extends HostError {}

export async function stackContainers(t: Target, st: Stack): Promise<Container[]> {
  return parseContainers((await t.run(stackCommands.containers(st), { timeout: 30 })).stdout)
}

/** The containers of the service backups and rotation call "the app". */
export async function appContainers(t: Target, st: Stack): Promise<Container[]> {
  return (await stackContainers(t, st)).filter(c => c.service === st.app.name)
}

/** The service's running containers; `version`: only those of that release. */
export const running = (cs: Container[], s: ServiceModel, version?: string) =>
  cs.filter(c => c.service === s.name && c.state === 'running' && (version === undefined || versionOf(s, c.image) === version))

/** Each web service: whether its `slot` is served by running containers (of `version`, if given) holding all its addresses. */
export function slotServed(slots: SlotState, cs: Container[], s: ServiceModel, slot: Slot, version?: string): boolean {
  const want = slots.upstreams.get(s.name)?.[slot] ?? []
  const have = new Set(running(cs, s, version).map(c => slots.attached.get(c.name)))
  return want.length > 0 && want.every(ip => have.has(ip))
}

/**
 * `only`: replace just these services (rotate-secret replaces the one whose secrets
 * changed). Returns what the swap took, for the step's line: health wait, how nginx switched.
 */
export async function rollout(t: Target, st: Stack, version: string, log: (l: string) => void, only?: string[]): Promise<string> {
  const services = released(st.model).filter(s => !only || only.includes(s.name))
  const started = await startBeside(t, st, services, version, log)
  const { slots, plan, healthy } = await admit(t, st, services, version, started, log)
  log(`${healthy}; switching nginx to the new containers`)
  const reloaded = await switchSlots(t, st, slots, plan, log)
  await retire(t, st, services, started.old, log)
  await t.run(fileCommands.install(files(st).env), { stdin: renderEnv(st, version), timeout: 30 })
  const webs = services.filter(s => s.role === 'web')
  return `${healthy}, ${webs.length ? (reloaded ? 'nginx reloaded once (its addresses changed), then swapped' : 'swapped without reloading nginx') : 'workers replaced'}`
}

/** What startBeside found and started: the containers before, the running old ones and the new ones per service. */
export interface Started { before: Container[]; old: Map<string, string[]>; fresh: Map<string, string[]> }

/**
 * Starts `version`'s containers of `services` beside the running ones (compose --scale,
 * --no-recreate, one command). If compose started another count than the model's, the
 * new ones are removed and the run fails: nothing reached them.
 */
export async function startBeside(t: Target, st: Stack, services: ServiceModel[], version: string, log: (l: string) => void): Promise<Started> {
  const before = await stackContainers(t, st)
  const old = new Map(services.map(s => [s.name, running(before, s).map(c => c.name)]))
  const known = new Set(before.map(c => c.name))
  log(`starting ${services.map(s => `${s.replicas} ${s.name}`).join(', ')} container(s) of ${version}`)
  const scale = services.map(s => sh`--scale ${`${s.name}=${old.get(s.name)!.length + s.replicas}`}`).join(' ')
  await t.run(stackCommands.compose(st, `up -d --no-deps --no-recreate ${scale} ` + sh`${services.map(s => s.name)}`, version), { onOutput: log, timeout: 300 })
  const after = await stackContainers(t, st)
  const fresh = new Map(services.map(s => [s.name, after.filter(c => c.service === s.name && !known.has(c.name)).map(c => c.name)]))
  const short = services.find(s => fresh.get(s.name)!.length !== s.replicas)
  if (short) {
    await t.run(stackCommands.retire([...fresh.values()].flat()), { allowFail: true, timeout: 120 })
    throw new HostError(`expected ${short.replicas} new ${short.name} container(s), compose started ${fresh.get(short.name)!.length}; the new containers were removed`)
  }
  return { before, old, fresh }
}

/**
 * The new web containers into their service's idle slot, then every new container
 * healthy; if one is not in time, all the new ones are removed (no request reached them,
 * the old version keeps serving) and UnhealthyRelease names it. Nothing is switched yet.
 */
/**
 * `enter: false`: workers only, whose nginx files are not rewritten after (a canary's
 * promotion): opsbook's network is left as it is, even a web service from before slots.
 */
export async function admit(t: Target, st: Stack, services: ServiceModel[], version: string, { before, fresh }: Started, log: (l: string) => void, opts: { enter?: boolean } = {}): Promise<{ slots: SlotState; plan: SlotPlan; healthy: string }> {
  const all = [...fresh.values()].flat()
  const slots = await slotStateOf(t, st)
  let plan: SlotPlan = { services: new Map(), connect: [], disconnect: [] }
  try {
    if (opts.enter ?? true) plan = await enterSlots(t, st, slots, services.filter(s => s.role === 'web'), new Map(webServices(st.model).map(s => [s.name, running(before, s).map(c => c.name)])), fresh)
  } catch (e) {
    await t.run(stackCommands.retire(all), { allowFail: true, timeout: 120 })
    throw e
  }
  log(`waiting for ${all.join(', ')} to be healthy`)
  const t0 = Date.now()
  const unhealthy = await firstUnhealthy(t, st, services, fresh, addressesOf(plan))
  if (unhealthy) {
    await t.run(stackCommands.retire(all), { allowFail: true, timeout: 120 })
    const { service: s, why } = unhealthy
    const serving = [...new Set(before.filter(c => c.state === 'running').map(c => services.map(x => versionOf(x, c.image)).find(Boolean)).filter(Boolean))].join(', ') || 'nothing'
    const what = s.role === 'web' ? `answer ${s.health}` : s.healthcheck ? 'pass its health check' : `stay up ${s.settle} s`
    const who = services.length > 1 ? `${version}'s ${s.name}` : version
    throw new UnhealthyRelease(`${who} did not ${what} within ${st.healthTimeout} s (${why}); its containers were removed and ${serving} keeps serving`)
  }
  return { slots, plan, healthy: `healthy in ${((Date.now() - t0) / 1000).toFixed(1)} s` }
}

/**
 * The old containers of `services` stopped and removed: web ones after DRAIN_SECONDS
 * (requests in flight finish) and with at least 30 s to stop, workers with their
 * stop_grace_period (a worker finishes the job it holds).
 */
export async function retire(t: Target, st: Stack, services: ServiceModel[], old: Map<string, string[]>, log: (l: string) => void): Promise<void> {
  const retiring = services.filter(s => old.get(s.name)?.length)
  if (!retiring.length) return
  if (retiring.some(s => s.role === 'web')) {
    log(`draining the old web containers for ${st.drainSeconds} s`)
    await new Promise(r => setTimeout(r, st.drainSeconds * 1000))
  }
  log(`stopping ${retiring.flatMap(s => old.get(s.name)!).join(', ')}`)
  await Promise.all(retiring.map(s => t.run(stackCommands.retire(old.get(s.name)!, s.role === 'web' ? Math.max(30, s.stopGrace) : s.stopGrace), { timeout: s.stopGrace + 150 })))
}

/**
 * Waits until the given containers of each service are healthy: web ones answer their
 * health path, workers pass their health check or stay up opsbook.settle seconds. One
 * shell per service, side by side (the slowest decides, not the sum). Returns the first
 * service that was not, with the reason (the container's last log line, secrets masked).
 */
export async function firstUnhealthy(t: Target, st: Stack, services: ServiceModel[], containers: Map<string, string[]>, ips?: Map<string, string>): Promise<{ service: ServiceModel; why: string } | undefined> {
  const health = await Promise.all(services.map(s => t.run(s.role === 'web'
    ? stackCommands.waitHealthy(s, containers.get(s.name)!, st.healthTimeout, ips)
    : stackCommands.waitWorkers(s, containers.get(s.name)!, st.healthTimeout), { allowFail: true, timeout: st.healthTimeout + 60 })))
  const bad = health.findIndex(h => h.code !== 0)
  return bad < 0 ? undefined : { service: services[bad], why: masked(st, health[bad].stderr.trim().split('\n').pop() ?? '') }
}

/** The version every released service runs, if they all run the same one with their full count. */
export function runningVersion(st: Stack, cs: Container[]): string | undefined {
  const versions = new Set<string | undefined>()
  for (const s of released(st.model)) {
    const rs = running(cs, s)
    if (rs.length !== s.replicas) return undefined
    for (const c of rs) versions.add(versionOf(s, c.image))
  }
  return versions.size === 1 ? [...versions][0] : undefined
}

const fileName = (path: string) => path.slice(path.lastIndexOf('/') + 1)
/**
 * nginx's files as they should be for the addresses it has now (after HTTPS is switched
 * on or its certificate first issued): installed and reloaded only if they differ.
 */
export async function syncProxy(t: Target, st: Stack, log: (l: string) => void): Promise<boolean> {
  const slots = await slotStateOf(t, st)
  return switchSlots(t, st, slots, { services: new Map(), connect: [], disconnect: [] }, log)
}

export const addressesOf = (plan: SlotPlan) => new Map(plan.connect.map(c => [c.container, c.ip]))

/** The slot state of the stack's web services; `create`: opsbook's network made first, if absent. */
export const slotStateOf = (t: Target, st: Stack, create = true) => readSlots(t, st, webServices(st.model), proxyFiles(st, new Map()).map(f => fileName(f.spec.path)), create)

/** Each web service's running containers that nginx serves from (in its live slot). */
export function servedFrom(slots: SlotState, running: Map<string, string[]>): Map<string, string[]> {
  return new Map([...running].map(([s, names]) => {
    const live = slots.upstreams.get(s)?.[slots.live.get(s) ?? 'a'] ?? []
    return [s, names.filter(c => live.includes(slots.attached.get(c) ?? ''))]
  }))
}

/**
 * Connects `fresh` web containers to their service's idle slot (and, if nginx has no live
 * slot yet, the `serving` ones to the live slot).
 */
export async function enterSlots(t: Target, st: Stack, slots: SlotState, webs: ServiceModel[], serving: Map<string, string[]>, fresh: Map<string, string[]>): Promise<SlotPlan> {
  // A web service this run does not replace but whose nginx file predates slots joins too.
  const adopt = webServices(st.model).filter(s => !webs.includes(s) && !slots.upstreams.get(s.name))
  const plan = planSlots(slots, [...webs, ...adopt], serving, fresh)
  const cmds = [...plan.disconnect.map(c => slotCommands.disconnect(st, c)), ...plan.connect.map(c => slotCommands.connect(st, c.container, c.ip))]
  if (cmds.length) await t.run(cmds.join(' && '), { timeout: 60 })
  return plan
}

/**
 * nginx's files for the planned addresses (installed, and nginx reloaded, only if they
 * differ from the host's), then the swap: each service with new containers goes to its
 * target slot. `proxyUp`: false on a first start, where nginx is not running yet.
 */
/** Returns whether nginx was reloaded. */
export async function switchSlots(t: Target, st: Stack, slots: SlotState, plan: SlotPlan, log: (l: string) => void, proxyUp = true): Promise<boolean> {
  const reloaded = await installProxyFor(t, st, slots, plan, log, proxyUp)
  const flips = new Map([...plan.services].filter(([, p]) => p.ips[p.target].length).map(([s, p]) => [s, p.target]))
  if (flips.size) await t.run(slotCommands.flip(st, flips), { timeout: 30 })
  return reloaded
}

/**
 * nginx's files for the planned addresses, installed (and nginx reloaded) only where they
 * differ from the host's; no slot is switched. Returns whether nginx was reloaded.
 */
export async function installProxyFor(t: Target, st: Stack, slots: SlotState, plan: SlotPlan, log: (l: string) => void, proxyUp = true): Promise<boolean> {
  const addresses = new Map(webServices(st.model).map(s => [s.name, plan.services.get(s.name)?.ips ?? slots.upstreams.get(s.name) ?? { a: [], b: [] }]))
  const proxy = proxyFiles(st, addresses, slots.tls)
  const changed = proxy.filter(f => slots.files.get(fileName(f.spec.path)) !== f.content)
  if (changed.length && proxyUp) {
    log(`nginx's ${changed.map(f => fileName(f.spec.path)).join(', ')} changed: installing, one graceful reload`)
    const nginx = (await stackContainers(t, st)).find(c => c.service === PROXY_SERVICE && c.state === 'running')
    if (nginx && !slots.attached.has(nginx.name)) await t.run(slotCommands.attachProxy(st, nginx.name), { timeout: 30 })
    await t.run(stackCommands.installProxy(st, proxy), { stdin: proxy.map(f => f.content).join(''), timeout: 60 })
  } else if (changed.length) {
    for (const f of proxy) await t.run(fileCommands.install(f.spec), { stdin: f.content, timeout: 30 })
  }
  return changed.length > 0 && proxyUp
}
