// Bench (prints, never asserts): getting the Deita-shaped stack's images (frontend and
// backend; v2 is v1 plus a new top layer: a ~20 MB build of assets, as a web app's
// release carries, and a new version variable) onto a host with
// IMAGE_SOURCE=local, by IMAGE_SHIP=layers (this machine's registry, an SSH reverse
// tunnel, the host pulls what it lacks) beside IMAGE_SHIP=save (docker save | gzip -1 |
// docker load, the path before), same run, one fresh provisioned VPS each:
//   1. a first delivery onto a host with none of the images (the layer cache cold too),
//   2. the update v1 -> v2.
// Bytes are counted where they arrive: the VPS's eth0 rx counter, SSH's overhead included.
// The images step runs as the runbooks run it, over one SSH connection.
//   npm run bench:ship
import { randomBytes } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connectSsh } from '../lib/host/ssh.ts'
import { imagesStep, type Delivery } from '../lib/stack/images.ts'
import { backendImage, frontendImage } from '../test/images.ts'
import { freshHost, type Host } from '../test/integration/helpers.ts'
import { destroyAll, docker } from '../test/testbed.ts'

const v1 = [await frontendImage('deita', 'v1'), await backendImage('deita', 'v1')]
const MB = Number(process.env.BENCH_TOP_MB ?? 20)
const v2 = v1.map(ref => {
  const ctx = mkdtempSync(join(tmpdir(), 'opsbook-bench-ship-'))
  try {
    // Base64 of random bytes: compresses like minified code and images mixed (gzip ~0.76).
    mkdirSync(join(ctx, 'assets'))
    for (let i = 0; i < MB; i++) writeFileSync(join(ctx, 'assets', `chunk-${i}.js`), randomBytes(786_432).toString('base64'))
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${ref}\nCOPY assets /srv/assets/\nENV APP_VERSION=v2\n`)
    const tag = ref.replace(/^[^/]+\//, 'opsbook-bench/').replace(/:v1$/, ':v2')
    docker(['build', '-q', '-t', tag, ctx])
    return tag
  } finally { rmSync(ctx, { recursive: true, force: true }) }
})
const cache = mkdtempSync(join(tmpdir(), 'opsbook-bench-layers-'))

interface Figure { mb: number; s: number; detail: string }

async function deliver(h: Host, d: Delivery, refs: string[]): Promise<Figure> {
  const t = await connectSsh({ host: '127.0.0.1', port: h.vps.port, user: 'root', key: h.key.privateKey, knownHosts: h.knownHosts, acceptNewHost: false })
  try {
    const step = imagesStep(() => refs, d)
    const rx = () => Number(h.sh('cat /sys/class/net/eth0/statistics/rx_bytes'))
    const before = rx(), t0 = performance.now()
    const ch = await step.check(t)
    const detail = 'plan' in ch && ch.plan ? await step.apply(t, ch.plan, () => {}) || '' : 'nothing to do'
    return { s: (performance.now() - t0) / 1000, mb: (rx() - before) / 1e6, detail }
  } finally { await t.close() }
}

try {
  const rows: [string, Figure, Figure][] = []
  let changed = 0
  const hosts = { layers: await freshHost('bench-ship-layers', {}, { provisioned: true }), save: await freshHost('bench-ship-save', {}, { provisioned: true }) }
  const paths: Record<keyof typeof hosts, Delivery> = {
    layers: { source: 'local', ship: 'layers', layerCache: cache },
    save: { source: 'local', ship: 'save', compression: 'gzip' },
  }
  const first = { layers: await deliver(hosts.layers, paths.layers, v1), save: await deliver(hosts.save, paths.save, v1) }
  rows.push(['first delivery (bare host)', first.layers, first.save])
  const update = { layers: await deliver(hosts.layers, paths.layers, v2), save: await deliver(hosts.save, paths.save, v2) }
  rows.push(['update v1 -> v2', update.layers, update.save])
  // What the changed layers weigh compressed, as the registry holds them (the step says it per image).
  for (const m of update.layers.detail.matchAll(/layers needed \(([\d.]+) MB\)/g)) changed += Number(m[1])

  const pad = (s: string, n: number) => s.padEnd(n)
  console.log(`\n${pad('case', 28)} ${pad('layers: MB sent, s', 20)} ${pad('save: MB sent, s', 20)} sent ratio   time ratio`)
  for (const [name, a, b] of rows) {
    console.log(`${pad(name, 28)} ${pad(`${a.mb.toFixed(1)} MB, ${a.s.toFixed(1)} s`, 20)} ${pad(`${b.mb.toFixed(1)} MB, ${b.s.toFixed(1)} s`, 20)} ${(a.mb / b.mb).toFixed(3)}x      ${(a.s / b.s).toFixed(2)}x`)
  }
  console.log(`\nupdate: changed layers ${changed.toFixed(2)} MB compressed; layers path sent ${update.layers.mb.toFixed(2)} MB = ${(update.layers.mb / Math.max(changed, 0.001)).toFixed(2)}x of that`)
  console.log(`first, layers path said: ${first.layers.detail}`)
  console.log(`layers path said: ${update.layers.detail}`)
  console.log(`save path said:   ${update.save.detail}`)
} finally {
  rmSync(cache, { recursive: true, force: true })
  destroyAll()
}
