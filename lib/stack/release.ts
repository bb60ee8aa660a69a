// The steps that put a release on a host: the stack's files, the database, a
// migration, the app behind nginx, health through the proxy, the release history,
// and pruning old images. deploy, update and rollback are lists of these.
import { UsageError } from '../errors.ts'
import { deliveryOf, imageIdentity, imagesStep } from './images.ts'
import { fileCommands, wantedState, type FileSpec } from '../host/files.ts'
import { keptVersions, live, readReleases, recordFailed, recordLive, writeReleases } from './releases.ts'
import { appContainers, rollout, runningVersion, UnhealthyRelease } from './rollout.ts'
import { sh } from '../sh.ts'
import { composeTemplate, files, initialContainers, renderAppEnv, renderEnv, renderProxy, stackCommands, type Stack } from './stack.ts'
import { fields, type Step } from '../steps.ts'
import type { Target } from '../steps.ts'

async function fileStates(t: Target, paths: string[]): Promise<string[]> {
  const out = (await t.run(paths.map(p => fileCommands.state(p)).join('\n'), { timeout: 30 })).stdout
  return out.trim().split('\n')
}

/** compose.yml, .env and app.env as rendered; the proxy upstream only if absent (rollouts own it). */
export function stackFilesStep(st: Stack, version: string): Step<string[]> {
  const f = files(st)
  let wanted: { spec: FileSpec; content: string }[] = []
  return {
    title: `Stack files in ${st.dir} (compose.yml, .env, app.env, secrets.env)`,
    prepare() {
      wanted = [
        { spec: f.compose, content: composeTemplate() },
        { spec: f.env, content: renderEnv(st, version) },
        { spec: f.appEnv, content: renderAppEnv(st) },
      ]
    },
    async check(t) {
      const rs = await readReleases(t, st)
      const cur = live(rs)?.version
      if (cur && cur !== version) throw new UsageError(`${st.dir} already runs ${cur}: use update.ts --version ${version} (zero downtime) or rollback.ts.`)
      const states = await fileStates(t, [...wanted.map(w => w.spec.path), f.proxy.path, f.secrets.path])
      const stale = wanted.filter((w, i) => states[i] !== wantedState(w.content, w.spec)).map(w => w.spec.path.split('/').pop()!)
      if (states[3] === 'absent') stale.push('proxy/default.conf')
      // Created empty once; after that only rotate-secret writes it (its values win over app.env).
      if (states[4] === 'absent') stale.push('secrets.env')
      // Never name a secret's value: say which file changes, not how.
      return stale.length ? { done: false, change: `write ${stale.join(', ')}`, plan: stale } : { done: true }
    },
    async apply(t, stale) {
      await t.run(sh`install -d -o ${st.owner} -g ${st.owner} -m 750 ${st.dir} ${`${st.dir}/proxy`}`, { timeout: 30 })
      for (const w of wanted) if (stale.includes(w.spec.path.split('/').pop()!)) await t.run(fileCommands.install(w.spec), { stdin: w.content, timeout: 30 })
      if (stale.includes('proxy/default.conf')) await t.run(fileCommands.install(f.proxy), { stdin: renderProxy(st, initialContainers(st)), timeout: 30 })
      // Dated 1970: containers already running are not "older than secrets.env" (rotate-secret reads that as an unfinished switch).
      if (stale.includes('secrets.env')) await t.run(fileCommands.install(f.secrets) + '\n' + sh`touch -d @1 ${f.secrets.path}`, { stdin: '', timeout: 30 })
    },
  }
}

/** The first deploy of `version`, shared by deploy.ts and restore.ts --to-host. */
export const deploySteps = (st: Stack, version: string): Step[] => [
  stackFilesStep(st, version),
  imagesStep(() => [`${st.image}:${version}`, st.config.stack.dbImage, st.config.stack.proxyImage], deliveryOf(st.config)),
  databaseStep(st),
  migrateStep(st, version),
  appStartStep(st, version),
  proxyHealthStep(st),
  recordStep(st, version),
]

export function databaseStep(st: Stack): Step {
  return {
    title: 'Database running and healthy',
    async check(t) {
      const out = (await t.run(stackCommands.compose(st, `ps db --format '{{.State}} {{.Health}}'`) + ' 2>/dev/null || true', { timeout: 30 })).stdout.trim()
      return out === 'running healthy' ? { done: true } : { done: false, change: out ? `start db (${out})` : 'start db' }
    },
    async apply(t, _, log) {
      await t.run(stackCommands.compose(st, 'up -d --wait --wait-timeout 120 db'), { onOutput: log, timeout: 180 })
    },
  }
}

const MIGRATED = (st: Stack) => `${st.dir}/migrated`

export function migrateStep(st: Stack, version: string): Step {
  return {
    title: `Migration for ${version}`,
    async check(t) {
      if (!st.migrate) return { skip: 'no MIGRATE_COMMAND' }
      const r = await t.run(sh`grep -qxF ${version} ${MIGRATED(st)}`, { allowFail: true, timeout: 30 })
      return r.code === 0 ? { done: true } : { done: false, change: `run MIGRATE_COMMAND in a one-off ${version} container` }
    },
    async apply(t, _, log) {
      await t.run(stackCommands.compose(st, sh`run --rm -T app sh -c ${st.migrate!}`, version), { onOutput: log, timeout: 1800 })
      await t.run(sh`echo ${version} >> ${MIGRATED(st)}`, { timeout: 30 })
    },
  }
}

/** First start of the app containers and nginx (later changes go through rollouts). */
export function appStartStep(st: Stack, version: string): Step {
  return {
    title: `App ${version} (${st.replicas} container${st.replicas > 1 ? 's' : ''}) and nginx running`,
    async check(t) {
      const [cs, proxy] = await Promise.all([
        appContainers(t, st),
        t.run(stackCommands.compose(st, `ps proxy --format '{{.State}}'`) + ' 2>/dev/null || true', { timeout: 30 }),
      ])
      const app = runningVersion(st, cs) === version
      const nginx = proxy.stdout.trim() === 'running'
      return app && nginx ? { done: true } : { done: false, change: [!app && `start ${st.replicas} app container(s)`, !nginx && 'start nginx'].filter(Boolean).join(', ') }
    },
    async apply(t, _, log) {
      await t.run(stackCommands.compose(st, sh`up -d --no-deps --scale ${`app=${st.replicas}`} app`), { onOutput: log, timeout: 300 })
      const health = await t.run(stackCommands.waitHealthy(st, initialContainers(st), st.healthTimeout), { allowFail: true, timeout: st.healthTimeout + 60 })
      if (health.code !== 0) throw new UnhealthyRelease(`${version} did not answer ${st.healthPath} within ${st.healthTimeout} s (${health.stderr.trim().split('\n').pop()})`)
      await t.run(stackCommands.compose(st, 'up -d --no-deps proxy'), { onOutput: log, timeout: 120 })
    },
  }
}

export function proxyHealthStep(st: Stack): Step {
  return {
    title: `Healthy through nginx (:${st.proxyPort}${st.healthPath})`,
    async check(t) {
      const r = await t.run(stackCommands.proxyHealthy(st), { allowFail: true, timeout: 30 })
      return r.code === 0 ? { done: true } : { done: false, change: 'wait for nginx to answer' }
    },
    async apply(t) {
      const r = await t.run(`i=0; until ${stackCommands.proxyHealthy(st)}; do i=$((i+1)); [ $i -lt ${st.healthTimeout * 2} ] || exit 1; sleep 0.5; done`, { allowFail: true, timeout: st.healthTimeout + 30 })
      if (r.code !== 0) throw new UnhealthyRelease(`nginx on :${st.proxyPort} does not answer ${st.healthPath} within ${st.healthTimeout} s`)
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
      await writeReleases(t, st, recordLive(await readReleases(t, st), version, { image: await imageIdentity(t, `${st.image}:${version}`) }))
    },
  }
}

/** update and rollback: the health-gated swap, recorded in the history either way. */
export function rolloutStep(st: Stack, version: string, opts: { rollback?: boolean } = {}): Step {
  return {
    title: `${opts.rollback ? 'Roll back to' : 'Roll out'} ${version} with no downtime`,
    async check(t) {
      const [rs, cs] = await Promise.all([readReleases(t, st), appContainers(t, st)])
      const cur = live(rs)?.version
      if (!cur) throw new UsageError(`Nothing is deployed in ${st.dir} yet: run deploy.ts first.`)
      if (cur === version && runningVersion(st, cs) === version) return { done: true, detail: `${version} is live` }
      return { done: false, change: `replace ${cur} by ${version}` }
    },
    async apply(t, _, log) {
      try {
        await rollout(t, st, version, log)
      } catch (e) {
        if (e instanceof UnhealthyRelease) await writeReleases(t, st, recordFailed(await readReleases(t, st), version, e.message, await imageIdentity(t, `${st.image}:${version}`)))
        throw e
      }
      await writeReleases(t, st, recordLive(await readReleases(t, st), version, { rollback: opts.rollback, image: await imageIdentity(t, `${st.image}:${version}`) }))
    },
  }
}

/** Old app images go, except those of the last KEEP_RELEASES good releases (rollback needs them). */
export function pruneStep(st: Stack): Step<string[]> {
  return {
    title: `Old images pruned (keeping ${st.keepReleases} good releases)`,
    async check(t) {
      const [rs, out, cs] = await Promise.all([
        readReleases(t, st),
        t.run(sh`docker image ls --format '{{.Tag}}' ${st.image}`, { timeout: 30 }),
        appContainers(t, st),
      ])
      const keep = new Set([...keptVersions(rs, st.keepReleases), ...cs.map(c => c.image.split(':').pop()!)])
      const drop = out.stdout.split('\n').filter(tag => tag && tag !== '<none>' && !keep.has(tag))
      return drop.length ? { done: false, change: `remove ${drop.map(v => `${st.image}:${v}`).join(', ')}`, plan: drop } : { done: true }
    },
    async apply(t, drop) {
      await t.run(sh`docker image rm ${drop.map(v => `${st.image}:${v}`)} >/dev/null`, { timeout: 120 })
    },
  }
}

