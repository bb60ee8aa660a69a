// A real private image registry for the tests: Debian's docker-registry (distribution
// 2.8) in a container, with TLS from its own CA and htpasswd (bcrypt) logins, as a small
// team would run one. VPS containers reach it as registry.test:5000 on a shared
// network and trust its CA through /etc/docker/certs.d, exactly as a real host would;
// this machine pushes to it through a port published on 127.0.0.1.
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { docker, ensureRootfsImage, sleep, testLabels, type Vps } from './testbed.ts'

const CONFIG = `version: 0.1
log: { level: warn }
storage: { filesystem: { rootdirectory: /var/lib/docker-registry }, delete: { enabled: true } }
http:
  addr: :5000
  tls: { certificate: /certs/registry.crt, key: /certs/registry.key }
auth:
  htpasswd: { realm: opsbook-test, path: /certs/htpasswd }
`

// Certificates and the login are made when the container starts, so each registry has
// its own CA; the password comes in through the environment of the test's container.
const START = `#!/bin/sh
set -e
mkdir -p /certs && cd /certs
if [ ! -f registry.crt ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=opsbook-test-ca -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=registry.test -keyout registry.key -out registry.csr 2>/dev/null
  printf 'subjectAltName=DNS:registry.test,DNS:localhost,IP:127.0.0.1\\n' > san.ext
  openssl x509 -req -in registry.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out registry.crt 2>/dev/null
  htpasswd -Bbn "$REGISTRY_USER" "$REGISTRY_PASSWORD" > htpasswd
fi
exec docker-registry serve /etc/docker/registry/config.yml
`

export const registryImage = () => ensureRootfsImage({
  name: 'opsbook/registry', packages: 'docker-registry,apache2-utils,openssl,ca-certificates',
  customize: `mkdir -p /etc/docker/registry; cat > /etc/docker/registry/config.yml <<'EOF'\n${CONFIG}EOF\ncat > /usr/local/bin/registry-start <<'EOF'\n${START}EOF\nchmod 755 /usr/local/bin/registry-start; apt-get clean; rm -rf /var/lib/apt/lists/*`,
  changes: ['CMD ["/usr/local/bin/registry-start"]'],
})

export interface Registry {
  /** The name hosts use: registry.test:5000 */
  host: string
  /**
   * Its docker network. Start a VPS on it rather than attaching it later: a running engine
   * (Go's resolver) re-reads resolv.conf at most every 5 s, so a pull right after an attach
   * could not resolve registry.test (seen once, with the provisioned image's engine up at boot).
   */
  network: string
  user: string
  password: string
  ca: string
  /** Tags a local image as host/repo:tag and pushes it; returns that reference. */
  push(local: string, repoTag: string): string
  /** Joins a VPS to the registry's network and makes its docker trust the registry's CA. */
  attach(vps: Vps): void
  destroy(): void
}

const NETWORK = 'opsbook-registry'

/** `network`: an existing network of the caller's to start it on (destroy leaves that network). */
export async function startRegistry(password: string, user = 'deployer', network?: string): Promise<Registry> {
  const image = await registryImage()
  const container = 'opsbook-registry'
  const net = network ?? NETWORK
  docker(['rm', '-f', '-v', container], { check: false })
  if (!network && docker(['network', 'inspect', NETWORK], { check: false }).status !== 0) docker(['network', 'create', ...testLabels(), NETWORK])
  docker(['run', '-d', '--name', container, ...testLabels(), '--network', net, '--network-alias', 'registry.test',
    '-e', `REGISTRY_USER=${user}`, '-e', `REGISTRY_PASSWORD=${password}`, '-p', '127.0.0.1::5000', image])
  let ca = ''
  for (let i = 0; i < 120 && !ca; i++) {
    const r = docker(['exec', container, 'sh', '-c', 'test -f /certs/htpasswd && cat /certs/ca.crt'], { check: false })
    if (r.status === 0) ca = r.stdout
    else await sleep(250)
  }
  if (!ca) throw new Error('the test registry did not start')
  const port = Number(docker(['port', container, '5000/tcp']).stdout.trim().split(':').pop())
  // This machine's docker treats 127.0.0.1 registries as insecure (no CA needed); its
  // login goes into a throwaway client config, not the user's.
  const dockerConfig = mkdtempSync(join(tmpdir(), 'opsbook-docker-config-'))
  const cli = (args: string[], input?: string) => {
    const r = spawnSync('docker', args, { input, encoding: 'utf8', env: { ...process.env, DOCKER_CONFIG: dockerConfig, DOCKER_HOST: process.env.DOCKER_HOST } })
    if (r.status !== 0) throw new Error(`docker ${args.join(' ')}: ${r.stderr}`)
    return r.stdout
  }
  const local = `127.0.0.1:${port}`
  for (let i = 0; ; i++) {
    try { cli(['login', local, '-u', user, '--password-stdin'], password); break } catch (e) { if (i > 40) throw e; await sleep(250) }
  }
  return {
    host: 'registry.test:5000', network: net, user, password, ca,
    push(src, repoTag) {
      cli(['tag', src, `${local}/${repoTag}`])
      cli(['push', '-q', `${local}/${repoTag}`])
      cli(['image', 'rm', `${local}/${repoTag}`])
      return `registry.test:5000/${repoTag}`
    },
    attach(vps) {
      docker(['network', 'connect', net, vps.container], { check: false }) // already on it when started there
      const r = vps.exec('mkdir -p /etc/docker/certs.d/registry.test:5000 && cat > /etc/docker/certs.d/registry.test:5000/ca.crt', ca)
      if (r.status !== 0) throw new Error(`could not install the registry CA: ${r.stderr}`)
    },
    destroy() {
      docker(['rm', '-f', '-v', container], { check: false })
      // Last: the network can go only once no VPS is attached to it any more.
      if (!network) docker(['network', 'rm', NETWORK], { check: false })
      rmSync(dockerConfig, { recursive: true, force: true })
    },
  }
}
