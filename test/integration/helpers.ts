// Runs runbooks as an operator would (a separate process, no TTY) against testbed VPSes.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { appendFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import { ensureProvisionedImage } from '../provisioned.ts'
import { loadImages, startVps, testOperatorKey, type OperatorKey, type Vps } from '../testbed.ts'

export const ROOT = join(import.meta.dirname, '..', '..')

// Each test's wall time, one "[test time]" line per test when the file ends: run.ts lists
// the slowest of the whole suite, which is where the suite's budget is won or lost.
const times: [string, number][] = []
test.before.each(s => { (s as { t0?: number }).t0 = Date.now() })
test.after.each(s => { times.push([s.__test__, Date.now() - ((s as { t0?: number }).t0 ?? Date.now())]) })
// (A new line first: uvu's dots for the tests are on the current one.)
test.after(() => { console.log(['', ...times.map(([name, ms]) => `[test time] ${(ms / 1000).toFixed(1)} s ${name}`)].join('\n')) })
export const TMP = join(ROOT, 'test', '.tmp')

export interface Host {
  vps: Vps
  key: OperatorKey
  dir: string
  envFile: string
  knownHosts: string
  /** Runs a command on the VPS as root through `docker exec` (the test's own back door). */
  sh(script: string): string
}

export interface HostOptions {
  /** Start from the image provision.ts already ran on (test/provisioned.ts) instead of a bare VPS. */
  provisioned?: boolean
  /** Images put into the VPS's engine before the test (loadImages), so deploys do not ship them. */
  images?: string[]
  /** A docker network to start on (resolv.conf then points at its DNS from boot). */
  network?: string
  /** Names the VPS has on that network (e.g. the domains a test CA validates). */
  aliases?: string[]
}

export async function freshHost(name: string, settings: Record<string, string> = {}, opts: HostOptions = {}): Promise<Host> {
  const dir = join(TMP, name)
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(dir, { recursive: true })
  const key = testOperatorKey()
  const vps = await startVps(`it-${name}`, key, { image: opts.provisioned ? await ensureProvisionedImage(key) : undefined, network: opts.network, aliases: opts.aliases })
  if (opts.images?.length) await loadImages(vps, opts.images)
  const knownHosts = join(dir, 'known_hosts')
  writeFileSync(knownHosts, vps.knownHosts)
  const envFile = join(dir, '.env.test')
  writeFileSync(envFile, Object.entries({
    SSH_HOST: '127.0.0.1', SSH_PORT: String(vps.port), SSH_USER: 'root', SSH_KEY: key.privateKey, SSH_KNOWN_HOSTS: knownHosts, ...settings,
  }).map(([k, v]) => `${k}=${v}`).join('\n') + '\n')
  return {
    vps, key, dir, envFile, knownHosts,
    sh: script => {
      const r = vps.exec(script)
      if (r.status !== 0) throw new Error(`on ${vps.container}: ${script}: ${r.stderr}`)
      return r.stdout
    },
  }
}

export interface Run { code: number; stdout: string; stderr: string; out: string; json?: any }

export interface Running { child: ChildProcess; output(): string; done: Promise<Run> }

/** Starts `runbooks/<name>.ts` with no TTY, like cron or CI would; `input` is piped to its stdin. */
export function start(runbook: string, args: string[], env: NodeJS.ProcessEnv = {}, input?: string): Running {
  const child = spawn(process.execPath, ['--import', 'tsx', `runbooks/${runbook}.ts`, ...args], {
    cwd: ROOT, env: { ...process.env, ...env, FORCE_COLOR: undefined, OPS_ENV: undefined }, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  })
  if (input !== undefined) child.stdin!.end(input)
  let stdout = '', stderr = '', out = ''
  child.stdout!.on('data', c => { stdout += c; out += c })
  child.stderr!.on('data', c => { stderr += c; out += c })
  const done = new Promise<Run>(resolve => child.on('close', code => {
    const last = stdout.trim().split('\n').pop() ?? ''
    let json: any
    try { json = last.startsWith('{') ? JSON.parse(last) : undefined } catch {}
    resolve({ code: code ?? -1, stdout, stderr, out, json })
  }))
  return { child, output: () => out, done }
}

export const runbook = (name: string, args: string[], env?: NodeJS.ProcessEnv) => start(name, args, env).done

export async function waitFor(what: string, cond: () => boolean, timeoutMs = 120_000) {
  const t0 = Date.now()
  while (!cond()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`)
    await new Promise(r => setTimeout(r, 100))
  }
}

/** Everything provision manages, as text: two equal fingerprints mean nothing changed. */
export function fingerprint(h: Host): string {
  return h.sh(`
    dpkg-query -W -f='\${Package} \${Version} \${Status}\\n' ca-certificates curl gnupg sudo ufw unattended-upgrades docker.io docker-cli docker-compose 2>&1
    for f in /etc/ssh/sshd_config.d/* /etc/apt/apt.conf.d/20auto-upgrades /etc/ufw/ufw.conf /etc/ufw/user.rules /etc/ufw/user6.rules /etc/passwd /etc/group /etc/fstab /home/deploy/.ssh/authorized_keys /etc/apt/sources.list.d/*; do
      [ -e "$f" ] && sha256sum "$f" || true
    done
    stat -c '%n %U:%G %a' /opt/app /home/deploy /home/deploy/.ssh /var/lib/opsbook 2>&1
    swapon --show --noheadings
    ufw status verbose 2>&1
    systemctl is-enabled docker 2>&1; systemctl is-active docker 2>&1
    sshd -T 2>/dev/null | grep -E '^(passwordauthentication|permitrootlogin|kbdinteractiveauthentication) '
  `)
}

/** ssh(1) as a user of the VPS with the operator key; returns its exit code and output. */
export function sshAs(h: Host, user: string, command: string, extra: string[] = []) {
  const r = spawnSync('ssh', ['-i', h.key.privateKey, '-o', `UserKnownHostsFile=${h.knownHosts}`, '-o', 'StrictHostKeyChecking=yes',
    '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10', '-p', String(h.vps.port), ...extra, `${user}@127.0.0.1`, command], { encoding: 'utf8' })
  return { code: r.status, out: r.stdout + r.stderr }
}

/** Step lines of the plain renderer that finished: "<title> ... <state>". */
export function stepStates(out: string): string[] {
  return [...out.matchAll(/^[✔✖↓] \[[\d:]+\] (.*) \.\.\. (ok|changed|skipped|failed|would change)\b/gm)].map(m => `${m[2]}`)
}

/**
 * The disaster: restore.ts --to-host (the latest backup) onto a fresh provisioned VPS that
 * holds `images`. Returns that VPS (the test removes it) and a back door to it.
 */
export async function restoreOnFreshHost(h: Host, name: string, images: string[]): Promise<{ vps: Vps; r: Run; sh: (script: string) => string }> {
  const vps = await startVps(`it-${name}`, h.key, { image: await ensureProvisionedImage(h.key) })
  await loadImages(vps, images)
  appendFileSync(h.knownHosts, vps.knownHosts)
  const r = await runbook('restore', ['--config', h.envFile, '--to-host', `127.0.0.1:${vps.port}`, '--latest', '--yes', '--json'])
  const sh = (script: string) => { const x = vps.exec(script); if (x.status !== 0) throw new Error(x.stderr); return x.stdout }
  return { vps, r, sh }
}
