// Disposable Debian 13 "VPS" containers (systemd + sshd + room for a nested Docker
// engine), built and started exactly as ../shared/TESTBED.md verified. Used by the
// integration tests, the benchmarks and the sandbox (npm run demo).
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process'
import { createHash } from 'node:crypto'
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeFileSync, chmodSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { quote } from '../lib/sh.ts'

export const CACHE = process.env.OPSBOOK_CACHE ?? join(homedir(), '.cache', 'opsbook')
const PRIVATE_SOCK = join(CACHE, 'docker.sock')

// Everything the VPS image contains; its hash names the image, so a change here
// rebuilds it and an unchanged recipe reuses the cached one.
const PACKAGES = 'systemd,systemd-sysv,dbus,openssh-server,ca-certificates,curl,sudo,iproute2,procps,gnupg,cron'
const SUITE = 'trixie'
// Per-container host keys: the image ships none, a unit makes them on first boot.
const CUSTOMIZE = `
set -e
rm -f /etc/ssh/ssh_host_*
cat > /etc/systemd/system/ssh-hostkeys.service <<'EOF'
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service ssh.socket
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target ssh.service
EOF
mkdir -p /etc/systemd/system/multi-user.target.wants /etc/systemd/system/ssh.service.wants
ln -sf /etc/systemd/system/ssh-hostkeys.service /etc/systemd/system/multi-user.target.wants/
ln -sf /etc/systemd/system/ssh-hostkeys.service /etc/systemd/system/ssh.service.wants/
: > /etc/machine-id
echo 'root:*' | chpasswd -e
apt-get clean
rm -rf /var/lib/apt/lists/*
`

/**
 * Labels for everything a test starts: the runner (test/run.ts) sets OPSBOOK_TEST_FILE per
 * file and afterwards removes, and reports, whatever still carries that file's label.
 */
export function testLabels(): string[] {
  const file = process.env.OPSBOOK_TEST_FILE
  return ['--label', 'opsbook.testbed=1', ...(file ? ['--label', `opsbook.test=${file}`] : [])]
}

function log(msg: string) {
  if (process.env.TESTBED_QUIET !== '1') process.stderr.write(`[testbed] ${msg}\n`)
}

/**
 * One install phase, one line: what it does, its time and the log file that holds the
 * tools' own output (apt's, debootstrap's), printed whole only if the phase fails.
 */
function phase(what: string, logName: string, steps: [string, string[]][]) {
  mkdirSync(join(CACHE, 'logs'), { recursive: true })
  const file = join(CACHE, 'logs', `${logName}.log`)
  const fd = openSync(file, 'w')
  const t0 = Date.now()
  const tty = process.stderr.isTTY && process.env.TESTBED_QUIET !== '1'
  if (tty) process.stderr.write(`[testbed] ${what} ...`)
  try {
    for (const [cmd, args] of steps) {
      const r = spawnSync(cmd, args, { stdio: ['ignore', fd, fd] })
      if (r.status !== 0) {
        if (tty) process.stderr.write(' failed\n')
        process.stderr.write(readFileSync(file, 'utf8'))
        throw new Error(`${what} failed: ${cmd} exited ${r.status ?? r.signal}; its whole output is above and in ${file}`)
      }
    }
  } finally { closeSync(fd) }
  const took = `${((Date.now() - t0) / 1000).toFixed(0)} s (output: ${file})`
  if (tty) process.stderr.write(` done in ${took}\n`)
  else log(`${what}: done in ${took}`)
}

export function docker(args: string[], opts: { input?: string | Buffer; check?: boolean } = {}): SpawnSyncReturns<string> {
  const r = spawnSync('docker', args, { input: opts.input, encoding: 'utf8', maxBuffer: 64 << 20, env: process.env })
  if (opts.check !== false && r.status !== 0) {
    throw new Error(`docker ${args.join(' ')} failed (${r.status}): ${r.stderr || r.stdout}`)
  }
  return r
}

function engineReachable(): boolean {
  return spawnSync('docker', ['version', '--format', '{{.Server.Version}}'], { encoding: 'utf8', timeout: 15_000 }).status === 0
}

/** Installs what the testbed needs on a Debian machine (root only), like .ci/run does. */
export function ensureTools() {
  // docker-registry: images ship layer by layer (IMAGE_SHIP=layers), as the tests assert.
  const missing = ['dockerd', 'debootstrap', 'docker-registry'].filter(b => spawnSync('sh', ['-c', `command -v ${b}`]).status !== 0)
  if (!missing.length) return
  const pkgs = missing.map(b => (b === 'dockerd' ? 'docker.io' : b))
  if (process.getuid?.() !== 0 || spawnSync('sh', ['-c', 'command -v apt-get']).status !== 0) {
    throw new Error(`The testbed needs ${pkgs.join(', ')}: install them (apt-get install -y ${pkgs.join(' ')}) and retry.`)
  }
  phase(`installing ${pkgs.join(', ')} with apt-get`, 'apt-install', [['sh', ['-c', `apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${pkgs.join(' ')}`]]])
}

/** Points DOCKER_HOST at a reachable engine, starting a project-private dockerd if none is. */
export async function ensureEngine(): Promise<string> {
  if (process.env.DOCKER_HOST && engineReachable()) return process.env.DOCKER_HOST
  const sockUrl = `unix://${PRIVATE_SOCK}`
  process.env.DOCKER_HOST = sockUrl
  if (engineReachable()) return sockUrl
  ensureTools()
  mkdirSync(CACHE, { recursive: true })
  log(`starting a private dockerd on ${PRIVATE_SOCK}`)
  const out = openSync(join(CACHE, 'dockerd.log'), 'a')
  // exec-root lives in /tmp: containerd's socket paths must stay under 108 bytes.
  const child = spawn('dockerd', ['--host', sockUrl, '--data-root', join(CACHE, 'docker-data'),
    '--exec-root', '/tmp/opsbook-docker-exec', '--pidfile', join(CACHE, 'dockerd.pid')],
  { detached: true, stdio: ['ignore', out, out] })
  child.unref()
  for (let i = 0; i < 120; i++) {
    if (engineReachable()) return sockUrl
    await sleep(500)
  }
  throw new Error(`dockerd did not start; see ${join(CACHE, 'dockerd.log')}`)
}

function debianMirror(): string {
  try {
    const m = /^URIs:\s*(\S+\/debian)\s*$/m.exec(readFileSync('/etc/apt/sources.list.d/debian.sources', 'utf8'))
    if (m) return m[1]
  } catch {}
  return 'http://deb.debian.org/debian'
}

export interface RootfsRecipe {
  /** Image repository, e.g. opsbook/vps; the tag is SUITE-<recipe hash>. */
  name: string
  packages: string
  /** Shell script run in the chroot after debootstrap. */
  customize: string
  /** docker import -c changes, e.g. 'CMD ["/sbin/init"]'. */
  changes: string[]
}

export function imageTag(r: RootfsRecipe): string {
  return `${r.name}:${SUITE}-${createHash('sha256').update(JSON.stringify(r)).digest('hex').slice(0, 12)}`
}

/** Builds a Debian 13 root file system into an image (once; cached by recipe hash). */
export async function ensureRootfsImage(r: RootfsRecipe): Promise<string> {
  await ensureEngine()
  const tag = imageTag(r)
  if (docker(['image', 'inspect', tag], { check: false }).status === 0) return tag
  ensureTools()
  const root = join(CACHE, `rootfs-${tag.replace(/[/:]/g, '-')}`)
  rmSync(root, { recursive: true, force: true })
  const changes = r.changes.flatMap(c => ['-c', c])
  // The images share most of their packages: kept once, each build downloads only what the
  // folder lacks (a minbase download alone took 26 s of a 40-70 s build). A build running
  // beside another gets a folder of its own (OPSBOOK_DEB_CACHE, see prepare.ts).
  const debs = process.env.OPSBOOK_DEB_CACHE ?? join(CACHE, 'debs')
  mkdirSync(debs, { recursive: true })
  phase(`building ${tag} with debootstrap (about a minute, once)`, `build-${r.name.replace(/\W/g, '-')}`, [
    ['debootstrap', ['--variant=minbase', `--cache-dir=${debs}`, `--include=${r.packages}`, SUITE, root, debianMirror()]],
    ['chroot', [root, 'sh', '-c', r.customize]],
    ['bash', ['-c', `set -o pipefail; tar -C ${quote(root)} -c . | docker import ${changes.map(quote).join(' ')} - ${tag}`]],
  ])
  rmSync(root, { recursive: true, force: true })
  return tag
}

/** The Debian 13 systemd VPS image. */
export function ensureVpsImage(): Promise<string> {
  return ensureRootfsImage({ name: 'opsbook/vps', packages: PACKAGES, customize: CUSTOMIZE, changes: ['CMD ["/sbin/init"]'] })
}

export interface Vps {
  name: string
  container: string
  port: number
  /** The VPS's port 80 (where nginx publishes), reachable on 127.0.0.1 of this machine. */
  httpPort: number
  /** The VPS's port 443, likewise. */
  httpsPort: number
  /** `[127.0.0.1]:port keytype key` lines for a known_hosts file. */
  knownHosts: string
  exec(script: string, input?: string): SpawnSyncReturns<string>
  destroy(): void
}

export interface OperatorKey { privateKey: string; publicKey: string }

/**
 * The tests' operator key lives with the image cache: the provisioned VPS image authorizes
 * it, so a key made anew by each checkout would rebuild that image every run.
 */
export const testOperatorKey = () => operatorKey(join(CACHE, 'operator'))

/** An ed25519 key pair in dir, made once. */
export function operatorKey(dir: string): OperatorKey {
  mkdirSync(dir, { recursive: true })
  const privateKey = join(dir, 'id_ed25519')
  if (!existsSync(privateKey)) {
    const r = spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'opsbook-operator', '-f', privateKey])
    if (r.status !== 0) throw new Error(`ssh-keygen failed: ${r.stderr}`)
  }
  chmodSync(privateKey, 0o600)
  return { privateKey, publicKey: `${privateKey}.pub` }
}

/**
 * Starts a fresh VPS container that accepts `key` for root over SSH on a loopback port;
 * `image` is the bare Debian 13 VPS unless given (e.g. one that provision.ts already ran on).
 */
export async function startVps(name: string, key: OperatorKey, opts: { image?: string; network?: string; aliases?: string[] } = {}): Promise<Vps> {
  const image = opts.image ?? await ensureVpsImage()
  const container = `opsbook-${name}`
  docker(['rm', '-f', '-v', container], { check: false })
  // The nested engine's storage: a volume on this machine's disk (what a VPS has), or, for
  // the test suite (test/run.ts sets OPSBOOK_VPS_DOCKER=tmpfs), memory. Measured on 2 cores:
  // loading the stack's images wrote them three times to the one disk two files share, and
  // removing a VPS deleted a gigabyte of small files under the other file's strict load.
  // Benchmarks and the sandbox keep the disk: their figures are about disks.
  const storage = process.env.OPSBOOK_VPS_DOCKER === 'tmpfs' ? ['--tmpfs', '/var/lib/docker:exec,dev,suid,size=8g'] : ['-v', '/var/lib/docker']
  docker(['run', '-d', '--name', container, '--hostname', name, ...testLabels(), ...(opts.network ? ['--network', opts.network, ...(opts.aliases ?? []).flatMap(a => ['--network-alias', a])] : []),
    '--cap-add', 'ALL', '--cap-drop', 'SYS_RESOURCE',
    '--security-opt', 'seccomp=unconfined', '--security-opt', 'apparmor=unconfined',
    '--security-opt', 'systempaths=unconfined', '--cgroupns', 'host',
    '-v', '/sys/fs/cgroup:/sys/fs/cgroup:rw', '--tmpfs', '/run', '--tmpfs', '/run/lock',
    '--stop-signal', 'SIGRTMIN+3', ...storage, '-p', '127.0.0.1::22', '-p', '127.0.0.1::80', '-p', '127.0.0.1::443', image])
  const exec = (script: string, input?: string) =>
    docker(['exec', '-i', container, 'sh', '-c', script], { input, check: false })
  exec('mkdir -p -m 700 /root/.ssh && cat > /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys',
    readFileSync(key.publicKey, 'utf8'))
  let hostKeys = ''
  for (let i = 0; i < 120 && !hostKeys; i++) {
    const r = exec('systemctl is-active ssh >/dev/null && cat /etc/ssh/ssh_host_*_key.pub')
    if (r.status === 0) hostKeys = r.stdout
    else await sleep(250)
  }
  if (!hostKeys) throw new Error(`${container}: sshd did not come up`)
  const port = Number(docker(['port', container, '22/tcp']).stdout.trim().split(':').pop())
  const httpPort = Number(docker(['port', container, '80/tcp']).stdout.trim().split(':').pop())
  const httpsPort = Number(docker(['port', container, '443/tcp']).stdout.trim().split(':').pop())
  const knownHosts = hostKeys.trim().split('\n')
    .map(l => l.trim().split(/\s+/).slice(0, 2).join(' '))
    .map(k => `[127.0.0.1]:${port} ${k}`).join('\n') + '\n'
  return { name, container, port, httpPort, httpsPort, knownHosts, exec, destroy: () => { docker(['rm', '-f', '-v', container], { check: false }) } }
}

/** Removes every testbed container (the sandbox's included). */
export function destroyAll() {
  const ids = docker(['ps', '-aq', '--filter', 'label=opsbook.testbed=1'], { check: false }).stdout.trim()
  if (ids) docker(['rm', '-f', '-v', ...ids.split('\n')], { check: false })
}

export function writeKnownHosts(path: string, content: string) {
  writeFileSync(path, content, { mode: 0o600 })
}

export const sleep = (ms: number) => new Promise(r => setTimeout(r, ms))

/**
 * Puts images of this machine's docker into a VPS's engine straight through `docker exec`
 * (no SSH, no registry): what a test needs on the host before the runbook under test
 * runs, so that the runbook's image step finds them there (same image IDs) and skips.
 */
export async function loadImages(vps: Vps, refs: string[]): Promise<void> {
  const tar = savedImages(refs)
  for (let i = 0; vps.exec('docker info >/dev/null 2>&1').status !== 0; i++) {
    if (i > 240) throw new Error(`${vps.container}: its docker engine did not start`)
    await sleep(250)
  }
  // Not spawnSync: the VPSes of one test (a cluster's three nodes) load side by side.
  const fd = openSync(tar, 'r')
  const child = spawn('docker', ['exec', '-i', vps.container, 'docker', 'load', '-q'], { stdio: [fd, 'ignore', 'pipe'], env: process.env })
  closeSync(fd) // the child has its own copy
  let err = ''
  child.stderr!.on('data', c => { err += c })
  const code = await new Promise<number>(r => child.on('close', c => r(c ?? 1)))
  if (code !== 0) throw new Error(`loading ${refs.join(', ')} into ${vps.container} failed: ${err}`)
}

/**
 * `docker save` of refs, made once per set of image IDs and kept in the cache: every file
 * loads the same few sets, and saving one took a third of a load.
 */
function savedImages(refs: string[]): string {
  const ids = docker(['image', 'inspect', '-f', '{{.Id}}', ...refs]).stdout.trim()
  const dir = join(CACHE, 'saved')
  const tar = join(dir, `${createHash('sha256').update(ids).update(refs.join(' ')).digest('hex').slice(0, 16)}.tar`)
  if (existsSync(tar)) return tar
  mkdirSync(dir, { recursive: true })
  // Written under a name of its own, then renamed: two files may save the same set at once.
  const part = `${tar}.${process.pid}`
  const r = spawnSync('docker', ['save', '-o', part, ...refs], { encoding: 'utf8', env: process.env })
  if (r.status !== 0) { rmSync(part, { force: true }); throw new Error(`docker save ${refs.join(' ')} failed: ${r.stderr}`) }
  renameSync(part, tar)
  return tar
}
