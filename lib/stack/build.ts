// Images of `build:` services: built on this machine with its docker, from the context,
// Dockerfile, args and target the compose file gives, for the host's platform, and tagged
// with the release version; images.ts then ships them like any other image. A version
// tag that is already built here is not built again (release tags name one build, as
// Kamal's do): a changed build goes out under a new version.
import { spawn, spawnSync } from 'node:child_process'
import { resolve } from 'node:path'
import { HostError, UsageError } from '../errors.ts'
import type { Step } from '../steps.ts'
import { imageCommands, localIds, parseIds } from './images.ts'
import { imageAt, VERSION, type ServiceModel } from './model.ts'
import { projectRoot } from './project.ts'
import { masked, type Stack } from './stack.ts'

export const built = (st: Stack) => st.model.services.filter(s => s.build)
/** The images buildStep makes for `version`. */
export const builtImages = (st: Stack, version: string) => built(st).map(s => imageAt(s, version))

/** `docker build` arguments for `s` at `version` (no shell: each value is one argument). */
export function buildArgs(st: Stack, s: ServiceModel, version: string, platform?: string): string[] {
  const b = s.build!
  const root = st.config.stack.composeFiles.length ? projectRoot(st.config.stack.composeFiles) : process.cwd()
  const at = (v: string) => v.split(VERSION).join(version)
  return [
    'build', '-t', imageAt(s, version),
    ...(b.dockerfile ? ['-f', resolve(root, at(b.context), at(b.dockerfile))] : []),
    ...(b.target ? ['--target', b.target] : []),
    ...(platform ? ['--platform', platform] : []),
    ...Object.entries(b.args).flatMap(([k, v]) => ['--build-arg', `${k}=${at(v)}`]),
    resolve(root, at(b.context)),
  ]
}

const localArch = () => spawnSync('docker', ['version', '-f', '{{.Server.Arch}}'], { encoding: 'utf8' }).stdout.trim()
const imageArch = (ref: string) => spawnSync('docker', ['image', 'inspect', '-f', '{{.Architecture}}', ref], { encoding: 'utf8' }).stdout.trim()

/**
 * The build step, for a stack that has build: services (none otherwise: nothing to show).
 * `restore`: the images must already be here; an old release is never rebuilt from
 * today's checkout under its tag.
 */
export const buildSteps = (st: Stack, version: string, opts: { restore?: boolean } = {}): Step[] => (built(st).length ? [buildStep(st, version, !!opts.restore) as Step] : [])

function buildStep(st: Stack, version: string, restore: boolean): Step<{ todo: ServiceModel[]; platform?: string }> {
  const services = built(st)
  return {
    title: `Images of build: services built here for ${version} (${services.map(s => s.name).join(', ')})`,
    async check(t) {
      // Empty when the host has no docker yet (a dry run before provision): unknown, not different.
      const host = (await t.run(`docker version -f '{{.Server.Arch}}' 2>/dev/null`, { allowFail: true, timeout: 30 })).stdout.trim()
      const refs = services.map(s => imageAt(s, version))
      const have = localIds(refs)
      // A tag built for another platform (an arm64 staging host) is built again for this one.
      let todo = services.filter(s => !have.has(imageAt(s, version)) || (host && imageArch(imageAt(s, version)) !== host))
      if (restore && todo.length) {
        // A host that already has the image (a restore run again) needs nothing from here.
        const there = parseIds((await t.run(imageCommands.ids(todo.map(s => imageAt(s, version))), { allowFail: true, timeout: 60 })).stdout)
        todo = todo.filter(s => !there.has(imageAt(s, version)))
      }
      if (!todo.length) return { done: true, detail: `already built: ${refs.join(', ')}` }
      if (restore) throw new UsageError(`${todo.map(s => imageAt(s, version)).join(', ')} (built from ${todo.map(s => s.name).join(', ')}'s build:) is neither on this machine${host ? ` for ${host}` : ''} nor on the host: a restore does not rebuild release ${version} from today's files; load that image here first (docker load).`)
      const platform = host && host !== localArch() ? `linux/${host}` : undefined
      return { done: false, change: `build ${todo.map(s => imageAt(s, version)).join(', ')}${platform ? ` for ${platform}` : ''}`, plan: { todo, platform } }
    },
    async apply(_t, { todo, platform }, log) {
      for (const s of todo) {
        const t0 = Date.now()
        const out: string[] = []
        const code = await new Promise<number>(done => {
          const p = spawn('docker', buildArgs(st, s, version, platform), { stdio: ['ignore', 'pipe', 'pipe'] })
          const take = (c: Buffer) => { for (const l of String(c).split('\n').filter(Boolean)) { out.push(l); log(`${s.name}: ${masked(st, l).slice(0, 160)}`) } }
          p.stdout.on('data', take)
          p.stderr.on('data', take)
          p.on('error', () => done(127))
          p.on('close', c => done(c ?? 1))
        })
        if (code !== 0) throw new HostError(`docker build of ${s.name} failed on this machine (exit ${code}): ${masked(st, out.slice(-2).join(' | ')) || 'no output'}; the host was not changed.`)
        log(`${imageAt(s, version)} built in ${((Date.now() - t0) / 1000).toFixed(1)} s`)
      }
      return `built ${todo.map(s => imageAt(s, version)).join(', ')}`
    },
  }
}
