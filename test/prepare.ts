// What the integration files share, made once before they run side by side (test/run.ts):
// two files must not both debootstrap the same image into the same folder. Each file still
// asks for what it needs (cached, so instant here), and so also runs on its own.
import { appImage, duckAppImage, nginxImage, postgresImage, redisImage, workerImage } from './images.ts'
import { pebbleImage } from './pebble.ts'
import { ensureProvisionedImage } from './provisioned.ts'
import { registryImage } from './registry.ts'
import { motoImage } from './s3.ts'
import { docker, ensureEngine, ensureVpsImage, testOperatorKey } from './testbed.ts'

export async function prepare(): Promise<void> {
  await ensureEngine()
  await ensureVpsImage()
  for (const image of [postgresImage, nginxImage, motoImage, registryImage, redisImage, pebbleImage]) await image()
  await appImage('v1'); await appImage('v2'); await appImage('v3', true); await duckAppImage('v1'); await workerImage('v1')
  await ensureProvisionedImage(testOperatorKey())
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
