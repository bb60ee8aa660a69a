// VPSes that start where provision.ts leaves a host, without paying for it each time:
// the real runbook runs once on a bare VPS, the result is committed as an image, and
// later tests start from that image. The image's tag is a hash of everything that
// decides what provisioning does (the runbook, lib/provision/, its templates, the bare
// image and the operator key it authorizes), so a change to any of them rebuilds it.
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { docker, ensureVpsImage, startVps, type OperatorKey } from './testbed.ts'

const ROOT = join(import.meta.dirname, '..')
const SOURCES = [
  'runbooks/provision.ts',
  ...readdirSync(join(ROOT, 'lib/host/provision')).sort().map(f => `lib/host/provision/${f}`),
  'templates/sshd-hardening.conf', 'templates/20auto-upgrades',
]

export async function provisionedImageTag(key: OperatorKey): Promise<string> {
  const h = createHash('sha256').update(await ensureVpsImage()).update(readFileSync(key.publicKey))
  for (const f of SOURCES) h.update(f).update(readFileSync(join(ROOT, f)))
  return `opsbook/vps-provisioned:${h.digest('hex').slice(0, 12)}`
}

/** The provisioned VPS image (built once by running runbooks/provision.ts on a bare VPS). */
export async function ensureProvisionedImage(key: OperatorKey): Promise<string> {
  const tag = await provisionedImageTag(key)
  if (docker(['image', 'inspect', tag], { check: false }).status === 0) return tag
  const t0 = Date.now()
  process.stderr.write(`[testbed] building ${tag}: provision.ts on a bare VPS, then docker commit (once)\n`)
  const vps = await startVps(`provision-image-${process.pid}`, key)
  const dir = join(ROOT, 'test', '.tmp', `provision-image-${process.pid}`)
  try {
    mkdirSync(dir, { recursive: true })
    writeFileSync(join(dir, 'known_hosts'), vps.knownHosts)
    writeFileSync(join(dir, '.env.image'), [
      'SSH_HOST=127.0.0.1', `SSH_PORT=${vps.port}`, 'SSH_USER=root', `SSH_KEY=${key.privateKey}`, `SSH_KNOWN_HOSTS=${join(dir, 'known_hosts')}`, '',
    ].join('\n'))
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'runbooks/provision.ts', '--config', join(dir, '.env.image')], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0' } })
    if (r.status !== 0) throw new Error(`provision.ts failed while building ${tag}:\n${r.stdout}${r.stderr}`)
    // What must not be shared by every VPS started from the image: host keys (a unit makes
    // new ones at boot), the machine id, and this run's audit trail (tests read their own).
    const clean = vps.exec('rm -f /etc/ssh/ssh_host_* /var/log/opsbook/audit.log && : > /etc/machine-id && sync')
    if (clean.status !== 0) throw new Error(`cleaning ${vps.container} failed: ${clean.stderr}`)
    // The nested engine's /var/lib/docker is a volume: not committed, so each VPS starts with an empty one.
    // The builder's labels would be inherited; a neutral one keeps the runner from taking
    // every VPS made from the image for a leftover of whichever file built it.
    docker(['commit', '-c', 'CMD ["/sbin/init"]', '-c', 'LABEL opsbook.test=image', vps.container, tag])
  } finally {
    vps.destroy()
    rmSync(dir, { recursive: true, force: true })
  }
  process.stderr.write(`[testbed] built ${tag} in ${((Date.now() - t0) / 1000).toFixed(0)} s\n`)
  return tag
}
