// Pebble, Let's Encrypt's own ACME test server (Debian's package), on a test network
// beside the VPSes: its ACME API at https://pebble.test:14000/dir, its HTTP-01 checks
// go to port 80 of the names it is asked for (Docker's DNS on that network answers them),
// its management API (the issuing root) published on 127.0.0.1 only.
import { spawnSync } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { request } from 'node:https'
import { join } from 'node:path'
import { docker, ensureRootfsImage, sleep, testLabels } from './testbed.ts'

export const pebbleImage = () => ensureRootfsImage({
  name: 'opsbook/pebble', packages: 'pebble',
  customize: 'apt-get clean; rm -rf /var/lib/apt/lists/*', changes: ['CMD ["pebble", "-config", "/etc/pebble/config.json"]'],
})

export const PEBBLE_NAME = 'pebble.test'

export interface Pebble {
  container: string
  directory: string
  /** The certificate of Pebble's ACME API (what the VPS must trust, ACME_CA_BUNDLE). */
  apiCertFile: string
  /** The root that signs the certificates Pebble issues (what a client of the site trusts). */
  issuingRoot(): Promise<string>
  destroy(): void
}

function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    request(url, { rejectUnauthorized: false, timeout: 5000 }, r => {
      let body = ''
      r.on('data', c => { body += c })
      r.on('end', () => resolve({ status: r.statusCode ?? 0, body }))
    }).on('error', reject).end()
  })
}

export async function startPebble(network: string, dir: string): Promise<Pebble> {
  const image = await pebbleImage()
  mkdirSync(dir, { recursive: true })
  const cert = join(dir, 'api.pem'), key = join(dir, 'api.key')
  const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '7',
    '-subj', `/CN=${PEBBLE_NAME}`, '-addext', `subjectAltName=DNS:${PEBBLE_NAME}`, '-keyout', key, '-out', cert], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`openssl: ${r.stderr}`)
  writeFileSync(join(dir, 'config.json'), JSON.stringify({
    pebble: {
      listenAddress: '0.0.0.0:14000', managementListenAddress: '0.0.0.0:15000',
      certificate: '/etc/pebble/api.pem', privateKey: '/etc/pebble/api.key',
      httpPort: 80, tlsPort: 443, ocspResponderURL: '', externalAccountBindingRequired: false,
    },
  }))
  // One per test network: two files may each run their own at once.
  const container = `opsbook-pebble-${network}`
  docker(['rm', '-f', container], { check: false })
  docker(['run', '-d', '--name', container, ...testLabels(), '--network', network, '--network-alias', PEBBLE_NAME,
    // No random sleeps before validations, no rejected nonces: the tests time real runs.
    '-e', 'PEBBLE_VA_NOSLEEP=1', '-e', 'PEBBLE_WFE_NONCEREJECT=0',
    '-v', `${dir}:/etc/pebble:ro`, '-p', '127.0.0.1::15000', image])
  const port = Number(docker(['port', container, '15000/tcp']).stdout.trim().split(':').pop())
  const issuingRoot = async () => {
    const res = await get(`https://127.0.0.1:${port}/roots/0`)
    if (res.status !== 200) throw new Error(`pebble /roots/0: HTTP ${res.status}`)
    return res.body
  }
  for (let i = 0; ; i++) {
    try { await issuingRoot(); break } catch (e) {
      if (i > 80) throw new Error(`pebble did not start: ${docker(['logs', container], { check: false }).stderr.slice(-1000)} ${(e as Error).message}`)
      await sleep(250)
    }
  }
  return { container, directory: `https://${PEBBLE_NAME}:14000/dir`, apiCertFile: cert, issuingRoot, destroy: () => { docker(['rm', '-f', container], { check: false }) } }
}
