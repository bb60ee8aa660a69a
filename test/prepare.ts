// What the integration files share, made once before they run side by side (test/run.ts):
// two files must not both debootstrap the same image into the same folder. Each file still
// asks for what it needs (cached, so instant here), and so also runs on its own.
import { spawn } from 'node:child_process'
import { cpSync, existsSync, readdirSync, rmSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { appImage, duckAppImage, nginxImage, postgresImage, redisImage, workerImage } from './images.ts'
import { pebbleImage } from './pebble.ts'
import { ensureProvisionedImage } from './provisioned.ts'
import { registryImage } from './registry.ts'
import { motoImage } from './s3.ts'
import { CACHE, docker, ensureEngine, ensureVpsImage, testOperatorKey } from './testbed.ts'

export async function prepare(): Promise<void> {
  await ensureEngine()
  pruneSavedImages()
  await ensureVpsImage() // first and alone: it fills the package cache the other builds start from
  // Two lanes: the builds are half waiting on the mirror and on dpkg, and every step here
  // blocks its process (spawnSync), so the second lane is a process of its own with its
  // own copy of the package cache (two debootstraps must not write one file).
  const lane = laneB()
  try {
    await ensureProvisionedImage(testOperatorKey())
    for (const image of [postgresImage, nginxImage]) await image()
    await appImage('v1'); await appImage('v2'); await appImage('v3', true); await duckAppImage('v1')
  } finally {
    const code = await lane
    if (code !== 0) throw new Error(`the second lane of image builds failed (exit ${code}); its output is above`)
  }
}

/** Saved image sets (testbed.ts, savedImages) not used for three days, and any half-written one. */
function pruneSavedImages() {
  const dir = join(CACHE, 'saved')
  if (!existsSync(dir)) return
  for (const f of readdirSync(dir)) {
    const p = join(dir, f)
    if (!f.endsWith('.tar') || Date.now() - statSync(p).atimeMs > 3 * 86400_000) rmSync(p, { force: true })
  }
}

/** The images nothing in the first lane needs, built by `node test/prepare.ts lane-b`. */
async function buildLaneB() {
  for (const image of [motoImage, registryImage, redisImage, pebbleImage]) await image()
  await workerImage('v1')
}

function laneB(): Promise<number> {
  const debs = join(CACHE, 'debs-b')
  // The VPS image may come from the cache, with no packages downloaded this time.
  if (!existsSync(debs) && existsSync(join(CACHE, 'debs'))) cpSync(join(CACHE, 'debs'), debs, { recursive: true })
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), 'lane-b'], {
    stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, OPSBOOK_DEB_CACHE: debs },
  })
  return new Promise(resolve => child.on('close', code => resolve(code ?? 1)))
}

if (process.argv[2] === 'lane-b' && process.argv[1] === fileURLToPath(import.meta.url)) {
  try { await buildLaneB() } catch (e) { console.error((e as Error).message); process.exit(1) }
}

/** Volumes and networks on the test engine, by name. */
export function resources(): Set<string> {
  const names = (args: string[]) => docker(args, { check: false }).stdout.split('\n').filter(Boolean)
  return new Set([
    ...names(['volume', 'ls', '-q']).map(v => `volume ${v}`),
    ...names(['network', 'ls', '--format', '{{.Name}}']).map(n => `network ${n}`),
  ])
}

/** Removes the containers and networks labelled with this test file's name; returns what it found. */
export function removeLabelled(file: string): string[] {
  const filter = ['--filter', `label=opsbook.test=${file}`]
  const containers = docker(['ps', '-a', ...filter, '--format', '{{.Names}}'], { check: false }).stdout.split('\n').filter(Boolean)
  if (containers.length) docker(['rm', '-f', '-v', ...containers], { check: false })
  const networks = docker(['network', 'ls', ...filter, '--format', '{{.Name}}'], { check: false }).stdout.split('\n').filter(Boolean)
  if (networks.length) docker(['network', 'rm', ...networks], { check: false })
  return [...containers.map(c => `container ${c}`), ...networks.map(n => `network ${n}`)]
}

/** Removes what resources() named ("volume X" / "network Y"). */
export function removeResources(list: string[]) {
  for (const r of list) {
    const [kind, name] = r.split(' ')
    docker([kind, 'rm', name], { check: false })
  }
}
