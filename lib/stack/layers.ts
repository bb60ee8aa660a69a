// IMAGE_SHIP=layers: only the image layers a host lacks travel. Debian's docker-registry
// (distribution, the reference registry) runs on this machine for the length of the
// step, bound to 127.0.0.1, keeping its layers in LAYER_CACHE between runs. This
// machine's docker pushes the release into it (a layer the cache holds is neither
// compressed nor copied again), and the host's docker pulls from it through an SSH
// reverse tunnel on the connection opsbook already holds, fetching only the layers it
// has no copy of, gzip-compressed. The pulled image keeps the ID it has here (its config
// blob is the same), so release records, rollback and pruning see no difference.
// Kamal 2 does the same with a registry container on the deploying machine; a plain
// process needs no image of its own (there is no Docker Hub to pull one from here).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { HostError } from '../errors.ts'
import { sh } from '../sh.ts'
import type { Target } from '../steps.ts'

/**
 * Where an image goes in the run's registry: every image under one repository, its ref
 * made a tag. One repository lets a layer pushed for any image count for all of them
 * (docker checks and mounts blobs per repository).
 */
export function registryRef(port: number, ref: string): string {
  const tag = ref.replace(/[^A-Za-z0-9_.-]/g, '_')
  return `127.0.0.1:${port}/opsbook/images:${tag.length <= 128 ? tag : `sha256_${createHash('sha256').update(ref).digest('hex')}`}`
}

/** A registry reference left on the host by this path (a killed run's included). */
const LEFTOVER = String.raw`^127\.0\.0\.1:[0-9]+/opsbook/`
const PULLING = String.raw`^docker pull -q 127\.0\.0\.1:[0-9]+/opsbook/`

export const layerCommands = {
  /** Every layer (diff ID) the host's images hold, one per line. */
  hostLayers: () => `docker image ls -q --no-trunc | sort -u | xargs -r docker image inspect -f '{{range .RootFS.Layers}}{{println .}}{{end}}' | sort -u`,
  /**
   * Pulls through the tunnel, gives the image its own name, then drops every reference to
   * the run's registry (tags and digests): the image stays, known by its own name only.
   *
   * The docker CLI here writes nothing (-q), so a run cut off would leave it pulling, and
   * dockerd retrying the dead tunnel for a minute; a later pull of the same layer joins
   * that doomed download and fails with it. So leftover pulls are stopped first
   * (stopLeftovers, once per run: this run's own pulls go side by side), and this one is
   * watched: a byte goes to the SSH channel every second, and once the channel is gone
   * (EPIPE, SIGPIPE ignored) the pull is stopped, which makes dockerd drop it.
   */
  pull: (remote: string, ref: string) => [
    'trap "" PIPE',
    sh`docker pull -q ${remote} >/dev/null & p=$!`,
    'while kill -0 $p 2>/dev/null; do sleep 1; echo . 2>/dev/null || { kill $p; break; }; done',
    sh`wait $p && docker tag ${remote} ${ref}; rc=$?`,
    // Forgotten whether the pull worked or not (its own tunnel's names only: a sibling pull
    // may be between its pull and its tag); its exit code is the command's.
    layerCommands.forget(Number(/^127\.0\.0\.1:(\d+)\//.exec(remote)?.[1]) || undefined),
    'exit $rc',
  ].join('\n'),
  /** Pulls from a run's registry still going (their run was cut off): stopped, and waited for. */
  stopLeftovers: () => `pkill -f '${PULLING}' 2>/dev/null; for i in 1 2 3 4 5 6 7 8 9 10; do pgrep -f '${PULLING}' >/dev/null || break; sleep 0.5; done`,
  /**
   * Docker skips a layer it has only if it knows which compressed blob it came from, which
   * it records when it pulls, never when it loads (docker load, today's IMAGE_SHIP=save):
   * for the layers the host has, the blob digests this registry serves are written where
   * docker keeps that record (distribution/diffid-by-digest, one file per digest, as its
   * own v2 metadata store writes them). Nothing is written on an engine without that store
   * (containerd's image store), which then just fetches those layers again.
   */
  seed: (pairs: { digest: string; diffId: string }[]) => pairs.length ? [
    `d="$(docker info -f '{{.DockerRootDir}}')/image/$(docker info -f '{{.Driver}}')"`,
    '[ -d "$d/layerdb" ] || exit 0',
    'd="$d/distribution/diffid-by-digest/sha256"; mkdir -p "$d"',
    sh`for p in ${pairs.map(p => `${p.digest.replace(/^sha256:/, '')}=${p.diffId}`)}; do f="$d/\${p%%=*}"; [ -f "$f" ] || { printf %s "\${p#*=}" > "$f.tmp" && mv "$f.tmp" "$f"; }; done`,
  ].join('\n') : 'true',
  /** Every name of one tunnel's registry, or (no port) of any run's: a cut-off run's leftovers. */
  forget: (port?: number) => `docker images --digests --format '{{.Repository}} {{.Tag}} {{.Digest}}' | awk -v re='${port ? String.raw`^127\.0\.0\.1:${port}/opsbook/` : LEFTOVER}' '$1 ~ re { if ($2 != "<none>") print $1 ":" $2; if ($3 != "<none>") print $1 "@" $3 }' | sort -u | xargs -r docker rmi >/dev/null 2>&1; true`,
}

/** Local docker argv: tag into the run's registry, push, drop the tag again. */
export const localCommands = {
  tag: (ref: string, remote: string) => ['tag', ref, remote],
  push: (remote: string) => ['push', remote],
  untag: (remote: string) => ['rmi', remote],
}

/** The layers (diff IDs) of an image in this machine's docker. */
function localDiffIds(ref: string): string[] {
  const r = spawnSync('docker', ['image', 'inspect', '-f', '{{range .RootFS.Layers}}{{println .}}{{end}}', ref], { encoding: 'utf8' })
  return r.status === 0 ? r.stdout.split('\n').filter(Boolean) : []
}

export function registryBinary(): string | undefined {
  const r = spawnSync('sh', ['-c', 'command -v docker-registry'], { encoding: 'utf8' })
  return r.status === 0 ? r.stdout.trim() : undefined
}

export interface Layer { digest: string; size: number; diffId: string }

export interface LocalRegistry {
  port: number
  /** Pushes ref (once per run) and returns its layers, compressed sizes included. */
  push(ref: string): Promise<Layer[]>
}

/**
 * The same port for the same cache where it is free: docker on this machine remembers
 * which layers a registry holds by its host:port, so a stable one lets it skip them.
 */
function portFor(cache: string, attempt: number): Promise<number> {
  const stable = 20000 + (createHash('sha256').update(cache).digest().readUInt16BE(0) % 20000)
  return new Promise<number>((resolve, reject) => {
    const srv = createServer()
    srv.once('error', e => attempt === 1 ? portFor(cache, 2).then(resolve, reject) : reject(e))
    srv.listen(attempt === 1 ? stable : 0, '127.0.0.1', () => { const p = (srv.address() as { port: number }).port; srv.close(() => resolve(p)) })
  })
}

function dockerHere(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn('docker', args, { stdio: ['ignore', 'ignore', 'pipe'] })
    let err = ''
    p.stderr.on('data', c => { err += c })
    p.on('error', e => reject(new HostError(`docker on this machine: ${e.message}.`)))
    p.on('close', code => code === 0 ? resolve() : reject(new HostError(`docker ${args[0]} on this machine failed: ${err.trim().split('\n').pop() || `exit ${code}`}.`)))
  })
}

/**
 * Starts the registry: a plain process under a shell that stops it when its stdin
 * closes, i.e. when this process ends however it ends (a SIGKILL included).
 */
async function start(bin: string, cache: string): Promise<{ port: number; proc: ChildProcess; dir: string }> {
  mkdirSync(cache, { recursive: true, mode: 0o700 })
  for (let attempt = 1; ; attempt++) {
    const port = await portFor(cache, attempt)
    // Its config beside the layers: the process is then known by its cache (a test looks for it there).
    const dir = mkdtempSync(join(cache, '.run-'))
    const config = join(dir, 'config.yml')
    writeFileSync(config, [
      'version: 0.1',
      'log: { level: error, accesslog: { disabled: true } }',
      `storage: { filesystem: { rootdirectory: ${JSON.stringify(cache)} }, delete: { enabled: true } }`,
      `http: { addr: "127.0.0.1:${port}" }`,
      '',
    ].join('\n'))
    const proc = spawn('sh', ['-c', '"$0" serve "$1" </dev/null & p=$!; read _; kill $p 2>/dev/null; wait $p', bin, config], { stdio: ['pipe', 'ignore', 'pipe'] })
    let err = ''
    proc.stderr!.on('data', c => { err += c })
    let exited = false
    proc.on('close', () => { exited = true })
    for (let i = 0; i < 100 && !exited; i++) {
      const ok = await fetch(`http://127.0.0.1:${port}/v2/`).then(r => r.ok, () => false)
      if (ok) return { port, proc, dir }
      await new Promise(r => setTimeout(r, 100))
    }
    proc.stdin!.end()
    rmSync(dir, { recursive: true, force: true })
    if (attempt >= 3) throw new HostError(`docker-registry did not start on this machine (${err.trim().split('\n').pop() || 'no answer in 10 s'}): fix it, or set IMAGE_SHIP=save.`)
  }
}

async function layersOf(port: number, remote: string): Promise<Layer[]> {
  const [, path] = remote.split(`127.0.0.1:${port}/`)
  const at = path.lastIndexOf(':')
  const [repo, tag] = [path.slice(0, at), path.slice(at + 1)]
  const base = `http://127.0.0.1:${port}/v2/${repo}`
  const m = await (await fetch(`${base}/manifests/${tag}`, { headers: { Accept: 'application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json' } })).json() as
    { config: { digest: string }; layers: { digest: string; size: number }[] }
  const cfg = await (await fetch(`${base}/blobs/${m.config.digest}`)).json() as { rootfs: { diff_ids: string[] } }
  return m.layers.map((l, i) => ({ digest: l.digest, size: l.size, diffId: cfg.rootfs.diff_ids[i] }))
}

let shared: { users: number; ready: Promise<{ reg: LocalRegistry; stop: () => void }> } | undefined

/**
 * The run's registry, shared by the nodes a step serves at once; stopped (and its
 * config removed) when the last user lets go. The layers stay in `cache`.
 */
export async function withRegistry<T>(bin: string, cache: string, fn: (reg: LocalRegistry) => Promise<T>): Promise<T> {
  if (!shared) {
    const ready = start(bin, cache).then(({ port, proc, dir }) => {
      const pushed = new Map<string, Promise<Layer[]>>()
      const reg: LocalRegistry = {
        port,
        push(ref) {
          let p = pushed.get(ref)
          if (!p) {
            const remote = registryRef(port, ref)
            p = (async () => {
              await dockerHere(localCommands.tag(ref, remote))
              try { await dockerHere(localCommands.push(remote)) } finally { await dockerHere(localCommands.untag(remote)).catch(() => {}) }
              return layersOf(port, remote)
            })()
            pushed.set(ref, p)
          }
          return p
        },
      }
      return { reg, stop: () => { proc.stdin!.end(); rmSync(dir, { recursive: true, force: true }) } }
    })
    shared = { users: 0, ready }
    ready.catch(() => { shared = undefined })
  }
  const s = shared
  s.users++
  try {
    return await fn((await s.ready).reg)
  } finally {
    if (--s.users === 0) {
      if (shared === s) shared = undefined
      await s.ready.then(r => r.stop(), () => {})
    }
  }
}

const mb = (n: number) => `${(n / 1e6).toFixed(n < 1e7 ? 1 : 0)} MB`

/**
 * Gets refs onto one host through the registry, all at once, each image through its own
 * tunnel so that its line says what it needed and what was sent for it (a layer two images
 * share is counted for the first in refs; docker fetches it once). localIds: the IDs the
 * images have here, which the host's copies must have too.
 */
export async function pullThroughTunnel(t: Target, reg: LocalRegistry, refs: string[], localIds: Map<string, string>, log: (l: string) => void): Promise<string[]> {
  await t.run(`${layerCommands.stopLeftovers()}; ${layerCommands.forget()}`, { timeout: 60 })
  const have = new Set((await t.run(layerCommands.hostLayers(), { timeout: 60 })).stdout.split('\n').filter(Boolean))
  // Every push starts now; each pull starts once its own image is in the registry.
  const pushes = refs.map(r => reg.push(r))
  pushes.forEach(p => p.catch(() => {}))
  // Which image counts which missing layer is settled up front, from this machine's docker.
  const counted = new Set(have)
  const mine = refs.map(r => { const own = localDiffIds(r).filter(d => !counted.has(d)); own.forEach(d => counted.add(d)); return new Set(own) })
  const lines = await Promise.all(refs.map(async (ref, i) => {
    const layers = await pushes[i]
    const needed = layers.filter(l => mine[i].has(l.diffId))
    const neededBytes = needed.reduce((n, l) => n + l.size, 0)
    const known = layers.filter(l => have.has(l.diffId) && /^sha256:[0-9a-f]{64}$/.test(l.digest) && /^sha256:[0-9a-f]{64}$/.test(l.diffId))
    if (known.length) await t.run(layerCommands.seed(known), { timeout: 60 })
    const tunnel = await t.reverseTunnel!(reg.port)
    const t0 = Date.now()
    const timer = setInterval(() => log(`${ref}: ${mb(tunnel.sent())} of ${mb(neededBytes)} sent`), 1000)
    try {
      await t.run(layerCommands.pull(registryRef(tunnel.port, ref), ref), { timeout: 1800 })
    } finally { clearInterval(timer); await tunnel.close() }
    const sent = tunnel.sent(), secs = Math.max(0.001, (Date.now() - t0) / 1000)
    return `${ref} ${needed.length}/${layers.length} layers needed (${mb(neededBytes)}), ${mb(sent)} sent in ${secs.toFixed(1)} s (${(sent / 1e6 / secs).toFixed(1)} MB/s)`
  }))
  const ids = new Map((await t.run(sh`docker image inspect -f '{{.Id}}' ${refs}`, { timeout: 30 })).stdout.trim().split('\n').map((id, i) => [refs[i], id.trim()]))
  const odd = refs.filter(r => localIds.get(r) && ids.get(r) !== localIds.get(r))
  if (odd.length) throw new HostError(`the host's docker gave ${odd.join(', ')} another image ID than this machine's (a containerd image store?): set IMAGE_SHIP=save for this host.`)
  return lines
}
