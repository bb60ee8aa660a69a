// The steps that put a release on a host: the stack's files, the images, the
// accessories (PostgreSQL, Redis...), a migration, the released services behind nginx,
// health through the proxy, the release history, and pruning old images. deploy,
// update and rollback are lists of these.
import { UsageError } from '../errors.ts'
import { fileCommands, fileStates, installFiles, wantedState } from '../host/files.ts'
import { sh } from '../sh.ts'
import type { Step } from '../steps.ts'
import { deliveryOf, imagesStep } from './images.ts'
import { buildSteps, builtImages } from './build.ts'
import { accessories, released, versionOf, webServices, PROXY_SERVICE } from './model.ts'
import { keptVersions, live, readReleases } from './releases.ts'
import { canaryGuardStep } from './canary.ts'
import { unservedServices } from './drift.ts'
import { addressesOf, enterSlots, firstUnhealthy, rollout, runningVersion, servedFrom, slotStateOf, stackContainers, switchSlots, UnhealthyRelease } from './rollout.ts'
import { networkName, slotCommands } from './slots.ts'
import { tlsStep } from './tls.ts'
import { unstuckStep } from './stuck.ts'
import { swarmAccessoriesStep, swarmRolloutStep, swarmState, versionIn } from './swarm.ts'
import { clusterNodes, onNode } from '../host/cluster.ts'
import { migrateStep } from './migrations.ts'
import { releaseRecord } from './record.ts'
import { files, renderAppEnv, renderEnv, stackCommands, stackFiles, stackImages, type Stack } from './stack.ts'


/**
 * The compose files, opsbook.yml, the project's files (env_file, bind-mounted files), .env
 * (APP_VERSION = `version`, or the live release's) and, for the built-in stack, app.env as
 * rendered; secrets.env created once; opsbook's network (opsbook.yml names it as external).
 * nginx's files belong to the first start and rollouts.
 */
export function stackFilesStep(st: Stack, version?: string, opts: { firstDeploy?: boolean } = {}): Step<{ stale: string[]; version: string }> {
  const f = files(st)
  const rel = (path: string) => path.slice(st.dir.length + 1)
  const wanted = (v: string) => [
    ...stackFiles(st),
    { spec: f.env, content: renderEnv(st, v) },
    ...(st.builtIn ? [{ spec: f.appEnv, content: renderAppEnv(st) }] : []),
  ]
  const names = [...st.composeFiles.map(c => c.name), 'opsbook.yml', '.env', ...(st.builtIn ? ['app.env', 'secrets.env'] : [])]
  const extra = st.projectFiles.length ? `, ${st.projectFiles.length} file(s) beside them` : ''
  const left = st.hostPaths.length ? `; host paths left to you: ${st.hostPaths.join(', ')}` : ''
  return {
    title: `Stack files in ${st.dir} (${names.join(', ')}${extra})${left}`,
    prepare() { wanted(version ?? 'x') },
    async check(t) {
      const cur = live(await readReleases(t, st))?.version
      if (opts.firstDeploy && cur && cur !== version) throw new UsageError(`${st.dir} already runs ${cur}: use update.ts --version ${version} (zero downtime) or rollback.ts.`)
      const v = version ?? cur
      if (!v) throw new UsageError(`Nothing is deployed in ${st.dir} yet: run deploy.ts first.`)
      const want = wanted(v)
      const states = await fileStates(t, [...want.map(w => w.spec.path), f.secrets.path])
      const stale = want.filter((w, i) => states[i] !== wantedState(w.content, w.spec)).map(w => rel(w.spec.path))
      // Created empty once; after that only rotate-secret writes it (its values win over app.env).
      if (st.builtIn && states[want.length] === 'absent') stale.push('secrets.env')
      // nginx's workers (not root) stat the slot files in proxy/ on every request.
      const host = (await t.run(sh`stat -c %a ${`${st.dir}/proxy`} 2>/dev/null || echo absent; docker network inspect ${networkName(st)} >/dev/null 2>&1 && echo net || echo no-net; ` +
        (st.projectDirs.length ? sh`for d in ${st.projectDirs.map(d => `${st.dir}/${d}`)}; do [ -d "$d" ] || echo "missing $d"; done` : 'true'), { timeout: 30 })).stdout.split('\n')
      if (host[0] !== '755') stale.push('proxy/')
      if (host[1] !== 'net' && !st.config.cluster) stale.push(`network ${networkName(st)}`)
      for (const l of host.slice(2)) if (l.startsWith('missing ')) stale.push(`${rel(l.slice(8))}/`)
      // Never name a secret's value: say which file changes, not how.
      return stale.length ? { done: false, change: `write ${stale.length > 8 ? `${stale.slice(0, 8).join(', ')} and ${stale.length - 8} more` : stale.join(', ')}`, plan: { stale, version: v } } : { done: true }
    },
    async apply(t, { stale, version: v }) {
      const todo = wanted(v).filter(w => stale.includes(rel(w.spec.path)))
      const dirs = [...new Set([`${st.dir}/proxy`, ...todo.map(w => w.spec.path.replace(/\/[^/]+$/, ''))])].filter(d => d !== st.dir)
      // Data folders are only created: an app that chowned its uploads keeps them as they are.
      const data = st.projectDirs.map(d => `${st.dir}/${d}`)
      await t.run(sh`install -d -o ${st.owner} -g ${st.owner} -m 750 ${st.dir} && install -d -o ${st.owner} -g ${st.owner} -m 755 ${dirs}` +
        (data.length ? sh` && for d in ${data}; do [ -d "$d" ] || install -d -o ${st.owner} -g ${st.owner} -m 755 "$d" || exit 1; done` : ''), { timeout: 30 })
      // One SSH run per ~100 KB of commands (installFiles), each file through a temp file renamed into place.
      await installFiles(t, todo)
      if (stale.includes(`network ${networkName(st)}`)) await t.run(slotCommands.ensureNetwork(st), { timeout: 60 })
      // Dated 1970: containers already running are not "older than secrets.env" (rotate-secret reads that as an unfinished switch).
      if (stale.includes('secrets.env')) await t.run(fileCommands.install(f.secrets) + '\n' + sh`touch -d @1 ${f.secrets.path}`, { stdin: '', timeout: 30 })
    },
  }
}

/**
 * The first deploy of `version`, shared by deploy.ts and restore.ts --to-host;
 * `beforeMigration` is deploy's backup step (a restore has nothing to back up yet);
 * `beforeAccessories` and `after` are what PITR adds (lib/data/pitr.ts: the database's
 * image is built before it starts, archiving is switched on once it runs); `restore`: the
 * release's built images must exist here (a restore never rebuilds an old release from
 * today's checkout).
 */
export const deploySteps = (st: Stack, version: string, extra: { beforeMigration?: Step; beforeAccessories?: Step[]; after?: Step[]; restore?: boolean } = {}): Step[] => st.config.cluster ? [
  // ENGINE=swarm (swarm.ts): accessories, web services, workers and nginx are one Swarm stack.
  stackFilesStep(st, version, { firstDeploy: true }),
  ...buildSteps(st, version, { restore: extra.restore }),
  imagesStep(() => stackImages(st, version), deliveryOf(st.config), 'Images on every node', builtImages(st, version)),
  // The migration, as on one host, once PostgreSQL runs and before the app starts.
  ...(st.migrate ? [swarmAccessoriesStep(st), ...(extra.beforeMigration ? [extra.beforeMigration] : []), migrateStep(st, version)] : []),
  swarmRolloutStep(st, version, releaseRecord(st, version), { first: true }),
  tlsStep(st),
  proxyHealthStep(st),
] : [
  // A re-deploy would count a canary's containers as its own and scale them away.
  canaryGuardStep(st, 'a deploy'),
  stackFilesStep(st, version, { firstDeploy: true }),
  ...buildSteps(st, version, { restore: extra.restore }),
  imagesStep(() => stackImages(st, version), deliveryOf(st.config), undefined, builtImages(st, version)),
  ...(extra.beforeAccessories ?? []),
  unstuckStep(st),
  accessoriesStep(st),
  ...(extra.beforeMigration ? [extra.beforeMigration] : []),
  migrateStep(st, version),
  servicesStartStep(st, version),
  tlsStep(st),
  proxyHealthStep(st),
  recordStep(st, version),
  ...(extra.after ?? []),
]

/**
 * Accessories (PostgreSQL, Redis...) running, and healthy where they have a health check.
 * Only started when they are not: update, rollback and rotation never restart them, and a
 * changed definition in the compose file is not applied behind the operator's back.
 */
export function accessoriesStep(st: Stack): Step<string[]> {
  const names = accessories(st.model).map(s => s.name)
  return {
    title: `Accessories running (${names.join(', ') || 'none'})`,
    async check(t) {
      if (!names.length) return { skip: 'the compose file has none' }
      const cs = await stackContainers(t, st)
      const down = accessories(st.model).filter(s => !cs.some(c => c.service === s.name && c.state === 'running' && (!s.healthcheck || c.health === 'healthy')))
      if (!down.length) return { done: true }
      const say = down.map(s => { const c = cs.find(x => x.service === s.name); return c ? `${s.name} (${c.state}${c.health ? ` ${c.health}` : ''})` : s.name })
      return { done: false, change: `start ${say.join(', ')}`, plan: down.map(s => s.name) }
    },
    async apply(t, down, log) {
      await t.run(stackCommands.compose(st, sh`up -d --no-recreate --wait --wait-timeout 120 ${down}`), { onOutput: log, timeout: 180 })
    },
  }
}

/**
 * First start of the released services (web and worker), their web containers in a slot
 * of opsbook's network, and nginx; later changes go through rollouts.
 */
export function servicesStartStep(st: Stack, version: string): Step {
  const services = released(st.model)
  const count = services.map(s => `${s.replicas} ${s.name}`).join(', ')
  return {
    title: `${version} running (${count}) behind nginx`,
    async check(t) {
      const cs = await stackContainers(t, st)
      const up = runningVersion(st, cs) === version
      const nginx = cs.some(c => c.service === PROXY_SERVICE && c.state === 'running')
      return up && nginx ? { done: true } : { done: false, change: [!up && `start ${count}`, !nginx && 'start nginx'].filter(Boolean).join(', ') }
    },
    async apply(t, _, log) {
      const scale = services.map(s => sh`--scale ${`${s.name}=${s.replicas}`}`).join(' ')
      await t.run(stackCommands.compose(st, `up -d --no-deps ${scale} ` + sh`${services.map(s => s.name)}`), { onOutput: log, timeout: 300 })
      const cs = await stackContainers(t, st)
      const running = new Map(services.map(s => [s.name, cs.filter(c => c.service === s.name && c.state === 'running').map(c => c.name)]))
      // Re-run after a start that died: what nginx already serves from stays; the rest is new.
      const slots = await slotStateOf(t, st)
      const serving = servedFrom(slots, running)
      const fresh = new Map([...running].map(([s, names]) => [s, names.filter(c => !serving.get(s)?.includes(c))]))
      const plan = await enterSlots(t, st, slots, services.filter(s => s.role === 'web'), serving, fresh)
      const bad = await firstUnhealthy(t, st, services, running, addressesOf(plan))
      if (bad) throw new UnhealthyRelease(`${version}'s ${bad.service.name} did not become healthy within ${st.healthTimeout} s (${bad.why})`)
      const nginx = cs.some(c => c.service === PROXY_SERVICE && c.state === 'running')
      await switchSlots(t, st, slots, plan, log, nginx)
      if (!nginx) await t.run(stackCommands.compose(st, sh`up -d --no-deps ${PROXY_SERVICE}`), { onOutput: log, timeout: 120 })
    },
  }
}

export function proxyHealthStep(st: Stack): Step {
  const paths = webServices(st.model).map(s => `${s.routes[0].host ?? ''}${s.health}`).join(', ')
  return {
    title: `Healthy through nginx (:${st.proxyPort} ${paths})`,
    async check(t) {
      const r = await t.run(stackCommands.proxyHealthy(st), { allowFail: true, timeout: 30 })
      return r.code === 0 ? { done: true } : { done: false, change: 'wait for nginx to answer' }
    },
    async apply(t) {
      const r = await t.run(stackCommands.awaitProxyHealthy(st, st.healthTimeout), { allowFail: true, timeout: st.healthTimeout + 30 })
      if (r.code !== 0) throw new UnhealthyRelease(`nginx on :${st.proxyPort} does not answer ${paths} within ${st.healthTimeout} s`)
    },
  }
}

export function recordStep(st: Stack, version: string): Step {
  return {
    title: `Release ${version} recorded`,
    async check(t) {
      return live(await readReleases(t, st))?.version === version ? { done: true } : { done: false, change: `record ${version} as live` }
    },
    async apply(t) {
      await releaseRecord(st, version).live(t)
    },
  }
}

/** update and rollback: the health-gated swap, recorded in the history either way. */
export function rolloutStep(st: Stack, version: string, opts: { rollback?: boolean } = {}): Step {
  if (st.config.cluster) return swarmRolloutStep(st, version, releaseRecord(st, version, opts), opts)
  return {
    title: `${opts.rollback ? 'Roll back to' : 'Roll out'} ${version} with no downtime`,
    async check(t) {
      const [rs, cs, slots] = await Promise.all([readReleases(t, st), stackContainers(t, st), slotStateOf(t, st, false)])
      const cur = live(rs)?.version
      if (!cur) throw new UsageError(`Nothing is deployed in ${st.dir} yet: run deploy.ts first.`)
      // The live release, but nginx's live slot no longer matches the containers (drift): re-roll it.
      const unserved = unservedServices(st, slots, cs)
      if (cur === version && runningVersion(st, cs) === version && !unserved.length) return { done: true, detail: `${version} is live` }
      return { done: false, change: cur === version ? `re-roll ${version} onto the host (${unserved.length ? `nginx's live slot of ${unserved.join(', ')} matches no container` : 'its containers differ'})` : `replace ${cur} by ${version}` }
    },
    async apply(t, _, log) {
      let how: string
      try {
        how = await rollout(t, st, version, log)
      } catch (e) {
        if (e instanceof UnhealthyRelease) await releaseRecord(st, version).failed(t, e)
        throw e
      }
      await releaseRecord(st, version, opts).live(t)
      return `replaced by ${version}: ${how}`
    },
  }
}

/** Old release images go, except those of the last KEEP_RELEASES good releases (rollback needs them). */
/** Images of released services whose version is neither kept nor running (refs as `docker image ls` lists them). */
function toDrop(st: Stack, refs: string[], keep: Set<string>): string[] {
  return refs.filter(ref => {
    const v = released(st.model).map(s => versionOf(s, ref)).find(Boolean)
    return v !== undefined && !keep.has(v)
  })
}
const IMAGE_LS = `docker image ls --format '{{.Repository}}:{{.Tag}}'`

export function pruneStep(st: Stack): Step<string[]> {
  if (st.config.cluster) return clusterPruneStep(st)
  const services = released(st.model)
  return {
    title: `Old images pruned (keeping ${st.keepReleases} good releases)`,
    async check(t) {
      const [rs, out, cs] = await Promise.all([
        readReleases(t, st),
        t.run(IMAGE_LS, { timeout: 30 }),
        stackContainers(t, st),
      ])
      const keep = new Set(keptVersions(rs, st.keepReleases))
      for (const c of cs) for (const s of services) { const v = versionOf(s, c.image); if (v) keep.add(v) }
      const drop = toDrop(st, out.stdout.split('\n'), keep)
      return drop.length ? { done: false, change: `remove ${drop.join(', ')}`, plan: drop } : { done: true }
    },
    async apply(t, drop) {
      await t.run(sh`docker image rm ${drop} >/dev/null`, { timeout: 120 })
    },
  }
}

/**
 * ENGINE=swarm: the same on every node; what any Swarm service runs is kept too. An image
 * still held by a task that is shutting down stays until the next run.
 */
function clusterPruneStep(st: Stack): Step<string[]> {
  const nodes = clusterNodes(st.config)
  const plans = new Map<string, string[]>()
  return {
    title: `Old images pruned on every node (keeping ${st.keepReleases} good releases)`,
    async check(t) {
      const [rs, state] = await Promise.all([readReleases(t, st), swarmState(t, st)])
      const keep = new Set(keptVersions(rs, st.keepReleases))
      for (const x of state.services.values()) for (const s of released(st.model)) { const v = versionIn(s, x.image); if (v) keep.add(v) }
      // A node that does not answer is left as it is: the release is live, pruning can wait.
      const lists = await Promise.all(nodes.map(n => onNode(st.config, n, {}, async nt => toDrop(st, (await nt.run(IMAGE_LS, { timeout: 30 })).stdout.split('\n'), keep)).catch(() => undefined)))
      plans.clear()
      nodes.forEach((n, i) => { if (lists[i]?.length) plans.set(n.label, lists[i]!) })
      const away = nodes.filter((_, i) => !lists[i]).map(n => n.label)
      const note = away.length ? `; ${away.join(', ')} not reached, pruned next time` : ''
      if (!plans.size) return { done: true, ...(note ? { detail: note.slice(2) } : {}) }
      return { done: false, change: [...plans].map(([n, d]) => `${n}: remove ${d.join(', ')}`).join('; ') + note, plan: [...plans.keys()] }
    },
    async apply(_t, labels) {
      const kept = await Promise.all(nodes.filter(n => labels.includes(n.label)).map(n => onNode(st.config, n, {}, async nt =>
        (await nt.run(sh`for i in ${plans.get(n.label)!}; do docker image rm "$i" >/dev/null 2>&1 || echo "$i"; done`, { timeout: 120 })).stdout.trim().split('\n').filter(Boolean))))
      const left = kept.flat()
      return left.length ? `still in use, kept until the next run: ${[...new Set(left)].join(', ')}` : undefined
    },
  }
}

