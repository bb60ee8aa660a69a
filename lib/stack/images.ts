// Getting release images onto the host: pulled from a registry (logging in with the
// password on stdin), or, without a registry, from this machine's docker: only the
// layers the host lacks (layers.ts), or whole images (`docker save` piped into
// `docker load` over the SSH channel, never a temp file) where that path is not there.
// Either way an image the host already has is skipped.
import { spawn, spawnSync } from 'node:child_process'
import { createGzip } from 'node:zlib'
import type { Config } from '../config.ts'
import { HostError } from '../errors.ts'
import { sh } from '../sh.ts'
import type { Step } from '../steps.ts'
import type { Target } from '../steps.ts'
import { clusterNodes, onNode } from '../host/cluster.ts'
import { pullThroughTunnel, registryBinary, withRegistry } from './layers.ts'

/** The registry host in an image name, if it names one (docker's own rule). */
export function registryOf(image: string): string | undefined {
  const first = image.split('/')[0]
  return image.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost') ? first : undefined
}

export const imageCommands = {
  /** "ref id" per image the host has (nothing for a missing one). */
  ids: (refs: string[]) => sh`for r in ${refs}; do id=$(docker image inspect -f '{{.Id}}' "$r" 2>/dev/null) && echo "$r $id"; done; true`,
  login: (registry: string, user: string) => sh`docker login ${registry} -u ${user} --password-stdin >/dev/null`,
  pull: (ref: string) => sh`docker pull -q ${ref}`,
  load: () => 'docker load -q',
  /** "ID REPO@DIGEST..." per image, one line each in the order given: what a release record pins. */
  identity: (refs: string[]) => sh`docker image inspect -f '{{.Id}}{{range .RepoDigests}} {{.}}{{end}}' ${refs}`,
}

/** Each image's ID and, when it came from a registry, its repository digest (one round trip for all). */
export async function imageIdentities(t: Target, refs: string[]): Promise<{ image: string; id: string; digest?: string }[]> {
  const lines = (await t.run(imageCommands.identity(refs), { timeout: 30 })).stdout.trim().split('\n')
  return refs.map((ref, i) => {
    const [id, ...digests] = (lines[i] ?? '').trim().split(' ')
    const repo = ref.replace(/:[^:/]+$/, '')
    const digest = digests.find(d => d.startsWith(`${repo}@`))?.split('@')[1]
    return { image: ref, id, ...(digest ? { digest } : {}) }
  })
}

export function parseIds(stdout: string): Map<string, string> {
  return new Map(stdout.split('\n').filter(Boolean).map(l => l.split(' ') as [string, string]))
}

export interface Delivery {
  /** ENGINE=swarm: every node of the cluster needs the images (each checked, each given what it lacks). */
  cluster?: Config
  source: 'registry' | 'local'
  /** How images from this machine travel: only missing layers, or whole (docker save). */
  ship?: 'layers' | 'save'
  layerCache?: string
  compression?: 'gzip' | 'none'
  registryUser?: string
  registryPassword?: string
}

export function deliveryOf(c: Config): Delivery {
  return { ...(c.cluster ? { cluster: c } : {}), source: c.stack.imageSource, ship: c.stack.ship, layerCache: c.stack.layerCache, compression: c.stack.shipCompression, registryUser: c.stack.registryUser, registryPassword: c.stack.registryPassword }
}

/** Image IDs in this machine's docker (for IMAGE_SOURCE=local). */
export function localIds(refs: string[]): Map<string, string> {
  const ids = new Map<string, string>()
  for (const r of refs) {
    const out = spawnSync('docker', ['image', 'inspect', '-f', '{{.Id}}', r], { encoding: 'utf8' })
    if (out.status === 0) ids.set(r, out.stdout.trim())
  }
  return ids
}

/**
 * Streams one image from this machine's docker into the host's, gzip level 1 on the way
 * unless turned off (docker load reads it as is; zlib runs off the main thread). Returns
 * bytes read from docker save and bytes sent.
 */
async function shipImage(t: Target, ref: string, log: (l: string) => void, compression: 'gzip' | 'none' = 'gzip'): Promise<{ raw: number; sent: number }> {
  const save = spawn('docker', ['save', ref], { stdio: ['ignore', 'pipe', 'pipe'] })
  let err = ''
  save.stderr.on('data', c => { err += c })
  const saved = new Promise<number>(r => save.on('close', code => r(code ?? 1)))
  let raw = 0, sent = 0
  save.stdout.on('data', (c: Buffer) => { raw += c.length })
  const out = compression === 'gzip' ? save.stdout.pipe(createGzip({ level: 1 })) : save.stdout
  out.on('data', (c: Buffer) => { sent += c.length; log(`${ref}: ${(raw / 1048576).toFixed(0)} MiB read, ${(sent / 1048576).toFixed(0)} MiB sent`) })
  const loaded = t.run(imageCommands.load(), { stdin: out, timeout: 1800 })
  const code = await saved
  if (code !== 0) {
    await loaded.catch(() => {})
    throw new HostError(`docker save ${ref} failed on this machine: ${err.trim() || `exit ${code}`}.`)
  }
  await loaded
  return { raw, sent }
}

/**
 * Makes sure the host (with ENGINE=swarm: every node) has every image in refs; `built` are
 * made on this machine by an earlier step (build.ts), so they need not exist here yet.
 */
export function imagesStep(refs: () => string[], d: Delivery, title = 'Images on the host', built: string[] = []): Step<string[]> {
  const one = hostImagesStep(refs, d, title, built)
  if (!d.cluster) return one
  const c = d.cluster
  const nodes = clusterNodes(c)
  return {
    title: title === 'Images on the host' ? 'Images on every node' : title,
    prepare: one.prepare,
    async check() {
      const checks = await Promise.all(nodes.map(n => onNode(c, n, {}, t => one.check(t))))
      const todo = nodes.map((n, i) => ({ n, ch: checks[i] })).filter(x => 'change' in x.ch)
      if (!todo.length) return { done: true, detail: `${refs().join(', ')} on ${nodes.length} node(s)` }
      return { done: false, change: todo.map(x => `${x.n.label}: ${(x.ch as { change: string }).change}`).join('; '), plan: [] }
    },
    async apply(_t, _p, log) {
      // Each node pulls or receives what it lacks, all at once.
      const did = await Promise.all(nodes.map(n => onNode(c, n, {}, async t => {
        const ch = await one.check(t)
        return 'plan' in ch && ch.plan ? `${n.label}: ${await one.apply(t, ch.plan, log) || 'done'}` : undefined
      })))
      return did.filter(Boolean).join('; ')
    },
  }
}

function hostImagesStep(refs: () => string[], d: Delivery, title: string, built: string[]): Step<string[]> {
  // Images built on this machine (build.ts) travel over SSH whatever IMAGE_SOURCE says: no registry has them.
  const viaSsh = (r: string) => d.source === 'local' || built.includes(r)
  return {
    title,
    prepare() {
      const wanted = refs().filter(r => d.source === 'local' && !built.includes(r))
      const have = localIds(wanted)
      const missing = wanted.filter(r => !have.has(r))
      if (missing.length) throw new HostError(`IMAGE_SOURCE=local but this machine's docker has no ${missing.join(', ')}: build or pull it here first.`)
    },
    async check(t) {
      const remote = parseIds((await t.run(imageCommands.ids(refs()), { timeout: 60 })).stdout)
      const local = localIds(refs().filter(viaSsh))
      const missing = refs().filter(r => !remote.has(r) || (viaSsh(r) && local.get(r) !== remote.get(r)))
      if (!missing.length) return { done: true, detail: refs().join(', ') }
      const [ship, pull] = [missing.filter(viaSsh), missing.filter(r => !viaSsh(r))]
      return { done: false, change: [ship.length ? `ship ${ship.join(', ')}` : '', pull.length ? `pull ${pull.join(', ')}` : ''].filter(Boolean).join('; '), plan: missing }
    },
    async apply(t, missing, log) {
      const done: string[] = []
      const ship = missing.filter(viaSsh)
      if (ship.length) {
        const bin = d.ship !== 'save' && d.layerCache ? registryBinary() : undefined
        if (bin && t.reverseTunnel) {
          const lines = await withRegistry(bin, d.layerCache!, reg => pullThroughTunnel(t, reg, ship, localIds(ship), log))
          done.push(`sent over SSH, layers the host lacked only: ${lines.join('; ')}`)
        } else {
          const t0 = Date.now()
          let raw = 0, sent = 0
          for (const r of ship) { const s = await shipImage(t, r, log, d.compression); raw += s.raw; sent += s.sent }
          const secs = Math.max(0.001, (Date.now() - t0) / 1000)
          const why = d.ship === 'save' ? '' : t.reverseTunnel ? ' (whole images: install docker-registry here to send only the layers a host lacks)' : ''
          done.push(`shipped ${ship.join(', ')} over SSH: ${(raw / 1e6).toFixed(0)} MB${d.compression === 'none' ? '' : ` as ${(sent / 1e6).toFixed(0)} MB gzip`} in ${secs.toFixed(1)} s (${(sent / 1e6 / secs).toFixed(0)} MB/s sent)${why}`)
        }
      }
      const pull = missing.filter(r => !viaSsh(r))
      if (pull.length) {
        const registries = [...new Set(pull.map(registryOf).filter((r): r is string => !!r))]
        if (d.registryUser && d.registryPassword) {
          for (const reg of registries) await t.run(imageCommands.login(reg, d.registryUser), { stdin: d.registryPassword, timeout: 60 })
        }
        for (const r of pull) await t.run(imageCommands.pull(r), { onOutput: log, timeout: 1800 })
        done.push(`pulled ${pull.join(', ')}`)
      }
      return done.join('; ')
    },
  }
}
