// The SSH target: one verified connection reused for the whole runbook.
// ssh2 auto-accepts host keys and node-ssh never sets a verifier, ssh2 does not
// read ~/.ssh/config, and node-ssh drops its error listener after connect — each
// handled here (see ../shared/PITFALLS.md).
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs'
import { connect, type Socket } from 'node:net'
import { constants } from 'node:os'
import { dirname } from 'node:path'
import { NodeSSH } from 'node-ssh'
import SSHConfig from 'ssh-config'
import type { Client, ClientChannel } from 'ssh2'
import { expandHome } from '../config.ts'
import { HostError, RefusedError } from '../errors.ts'
import { checkHostKey, describeKey, hostId, knownHostsLine, knownKeyTypes, type HostKeyStatus } from './knownhosts.ts'
import type { RunOptions, RunResult, Target, Tunnel } from '../steps.ts'
import { Collector, DEFAULT_TIMEOUT, feed, finish, wrapCommand } from './target.ts'

export interface SshSettings {
  host: string
  port?: number
  user?: string
  key?: string
  knownHosts: string
  /** Trust a host that known_hosts does not list yet (ssh's StrictHostKeyChecking=accept-new). */
  acceptNewHost: boolean
  /** Asks the operator about an unknown host key; absent without a TTY. */
  confirmNewHost?: (host: string, type: string, fingerprint: string) => Promise<boolean>
}

/**
 * sshd's default MaxSessions is 10: stay under it when steps run checks side by side.
 * sshd frees a closed session a little after the client sees it close, so a quick
 * succession of short commands can briefly count more than are open: keep a margin,
 * and retry an open that sshd refused with "no more sessions".
 */
const MAX_CHANNELS = 6
class ChannelRefused extends HostError {}

const HOST_KEY_ALGORITHMS: Record<string, string[]> = {
  'ssh-rsa': ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'],
}

/** Host, port, user and identity as ssh would resolve them from ~/.ssh/config. */
export function resolveSettings(s: SshSettings, configText?: string) {
  let computed: Record<string, string | string[]> = {}
  const text = configText ?? (existsSync(expandHome('~/.ssh/config')) ? readFileSync(expandHome('~/.ssh/config'), 'utf8') : '')
  if (text) computed = SSHConfig.parse(text).compute(s.host)
  const first = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v)
  const identity = first(computed.IdentityFile)
  return {
    host: first(computed.HostName) ?? s.host,
    port: s.port ?? (computed.Port ? Number(first(computed.Port)) : 22),
    user: s.user ?? first(computed.User) ?? 'root',
    key: s.key ?? (identity ? expandHome(identity) : undefined),
  }
}

function authMethods(user: string, key: string | undefined): object[] {
  const methods: object[] = []
  const keyFiles = key ? [key] : ['~/.ssh/id_ed25519', '~/.ssh/id_ecdsa', '~/.ssh/id_rsa'].map(expandHome).filter(existsSync)
  if (key && !existsSync(key)) throw new HostError(`The SSH key file ${key} does not exist: fix SSH_KEY or ~/.ssh/config.`)
  if (key) methods.push({ type: 'publickey', username: user, key: readFileSync(key) })
  if (process.env.SSH_AUTH_SOCK) methods.push({ type: 'agent', username: user, agent: process.env.SSH_AUTH_SOCK })
  if (!key) for (const f of keyFiles) methods.push({ type: 'publickey', username: user, key: readFileSync(f) })
  if (!methods.length) throw new HostError('No SSH key to log in with: set SSH_KEY, run an ssh-agent, or create ~/.ssh/id_ed25519.')
  return methods
}

export class SshTarget implements Target {
  private inUse = 0
  private waiting: (() => void)[] = []
  private lost?: Error
  private sudo: boolean

  constructor(readonly name: string, private conn: Client, user: string) {
    this.sudo = user !== 'root'
    // A keepalive timeout or reset after connect would otherwise crash the process.
    conn.on('error', e => { this.lost = e })
    conn.on('close', () => { this.lost ??= new Error('connection closed') })
  }

  async run(command: string, opts: RunOptions = {}): Promise<RunResult> {
    await this.acquire()
    try {
      return await this.exec(command, opts)
    } finally {
      this.release()
    }
  }

  private async exec(command: string, opts: RunOptions): Promise<RunResult> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.execOnce(command, opts)
      } catch (e) {
        if (!(e instanceof ChannelRefused) || attempt >= 5) throw e
        await new Promise(r => setTimeout(r, 50 * attempt))
      }
    }
  }

  private execOnce(command: string, opts: RunOptions): Promise<RunResult> {
    if (this.lost) return Promise.reject(new HostError(`The SSH connection to ${this.name} was lost (${this.lost.message}); re-run the runbook.`))
    const line = wrapCommand(command, { sudo: this.sudo, timeout: opts.timeout ?? DEFAULT_TIMEOUT })
    return new Promise((resolve, reject) => {
      this.conn.exec(line, (err: Error | undefined, stream: ClientChannel) => {
        if (err) return reject(/Channel open failure/.test(err.message) ? new ChannelRefused(`Could not start a command on ${this.name}: ${err.message}.`) : new HostError(`Could not start a command on ${this.name}: ${err.message}.`))
        const out = new Collector(opts.onOutput)
        const errOut = new Collector(opts.onOutput)
        // Both streams must be read or 'close' never fires.
        if (opts.stdout) stream.pipe(opts.stdout, { end: false })
        else stream.on('data', (c: Buffer) => out.push(c))
        stream.stderr.on('data', (c: Buffer) => errOut.push(c))
        stream.on('close', (code: number | null | undefined) => {
          if (code === undefined || code === null) {
            return reject(new HostError(`The SSH connection to ${this.name} dropped while a command ran; the command may still be running there. Re-run the runbook to converge.`))
          }
          try { resolve(finish(command, code, out, errOut, opts)) } catch (e) { reject(e) }
        })
        // Without a pty, closing the channel is what stops the remote command: its next
        // write fails (SIGPIPE); the signal request covers a command that is not writing.
        // The output is then dropped: a paused channel never emits 'close'.
        opts.signal?.addEventListener('abort', () => { stream.unpipe(); stream.resume(); stream.signal('TERM'); stream.close() }, { once: true })
        feed(stream, opts.stdin)
      })
    })
  }

  private acquire(): Promise<void> {
    if (this.inUse < MAX_CHANNELS) { this.inUse++; return Promise.resolve() }
    return new Promise(r => this.waiting.push(r))
  }

  private release() {
    const next = this.waiting.shift()
    if (next) next()
    else this.inUse--
  }

  /**
   * sshd listens on a free port of the host's 127.0.0.1 (so nothing outside the host
   * reaches it) and each connection to it is piped to 127.0.0.1:localPort here. sshd
   * drops the listener when the connection ends, a killed run included.
   */
  reverseTunnel(localPort: number): Promise<Tunnel> {
    return new Promise((resolve, reject) => {
      this.conn.forwardIn('127.0.0.1', 0, (err, port) => {
        if (err) return reject(new HostError(`sshd on ${this.name} refused a port forward (${err.message}): allow AllowTcpForwarding for this user, or set IMAGE_SHIP=save.`))
        let sent = 0
        const open = new Set<Socket>()
        const onConnection = (info: { destPort: number }, accept: () => ClientChannel) => {
          if (info.destPort !== port) return // another tunnel's
          const channel = accept()
          const local = connect(localPort, '127.0.0.1')
          open.add(local)
          local.on('data', (c: Buffer) => { sent += c.length })
          local.on('error', () => channel.destroy())
          channel.on('error', () => local.destroy())
          local.on('close', () => { open.delete(local); channel.destroy() })
          channel.on('close', () => local.destroy())
          local.pipe(channel).pipe(local)
        }
        this.conn.on('tcp connection', onConnection as never)
        resolve({
          port,
          sent: () => sent,
          close: () => new Promise<void>(done => {
            this.conn.off('tcp connection', onConnection as never)
            for (const s of open) s.destroy()
            if (this.lost) return done()
            this.conn.unforwardIn('127.0.0.1', port, () => done())
          }),
        })
      })
    })
  }

  attach(command: string): Promise<number> {
    if (this.lost) return Promise.reject(new HostError(`The SSH connection to ${this.name} was lost (${this.lost.message}); re-run the runbook.`))
    const line = wrapCommand(command, { sudo: this.sudo, timeout: 24 * 3600, foreground: true })
    const out = process.stdout
    const pty = { term: process.env.TERM || 'xterm-256color', rows: out.rows || 24, cols: out.columns || 80 }
    return new Promise((resolve, reject) => {
      this.conn.exec(line, { pty }, (err: Error | undefined, stream: ClientChannel) => {
        if (err) return reject(new HostError(`Could not start a command on ${this.name}: ${err.message}.`))
        const input = process.stdin
        const resize = () => stream.setWindow(out.rows || 24, out.columns || 80, 0, 0)
        input.setRawMode?.(true)
        input.resume()
        input.pipe(stream)
        stream.pipe(out, { end: false })
        stream.stderr.pipe(process.stderr, { end: false })
        out.on('resize', resize)
        stream.on('close', (code: number | null | undefined, signal?: string) => {
          out.off('resize', resize)
          input.unpipe(stream)
          input.setRawMode?.(false)
          input.pause()
          // Killed by a signal: 128 + its number, as a shell reports it.
          if ((code === undefined || code === null) && signal) return resolve(128 + (constants.signals[`SIG${signal}` as keyof typeof constants.signals] ?? 0))
          if (code === undefined || code === null) return reject(new HostError(`The SSH connection to ${this.name} dropped during the session.`))
          resolve(code)
        })
      })
    })
  }

  async close() { this.conn.end() }
}

/** Opens the connection, verifying the host key against known_hosts first. */
export async function connectSsh(settings: SshSettings): Promise<SshTarget> {
  const r = resolveSettings(settings)
  const id = hostId(r.host, r.port)
  const name = `${r.user}@${r.host}:${r.port}`
  const known = existsSync(settings.knownHosts) ? readFileSync(settings.knownHosts, 'utf8') : ''
  const types = knownKeyTypes(known, r.host, r.port)
  let seen: { status: HostKeyStatus; type: string; key: string; fingerprint: string } | undefined

  const attempt = async (trusted?: string) => {
    const ssh = new NodeSSH()
    try {
      await ssh.connect({
        host: r.host,
        port: r.port,
        username: r.user,
        authHandler: authMethods(r.user, r.key) as never,
        readyTimeout: 20_000,
        keepaliveInterval: 15_000,
        keepaliveCountMax: 4,
        // Ask for a key type known_hosts has, so a host with several keys is not "changed".
        algorithms: types.length ? { serverHostKey: types.flatMap(t => HOST_KEY_ALGORITHMS[t] ?? [t]) as never } : undefined,
        hostVerifier: (blob: Buffer) => {
          const k = describeKey(blob)
          const status = trusted === k.key ? 'known' : checkHostKey(known, r.host, r.port, k.type, k.key)
          seen = { status, ...k }
          return status === 'known' || (status === 'unknown' && settings.acceptNewHost)
        },
      } as never)
      return new SshTarget(name, ssh.connection!, r.user)
    } catch (e) {
      ssh.dispose()
      throw e
    }
  }

  try {
    const target = await attempt()
    if (seen?.status === 'unknown') remember(settings.knownHosts, r.host, r.port, seen.type, seen.key)
    return target
  } catch (e) {
    if (seen?.status === 'changed') {
      throw new RefusedError(`The host key of ${id} has CHANGED (now ${seen.type} ${seen.fingerprint}): this could be an attack or a reinstalled host; only if you know it was reinstalled, remove the old key with ssh-keygen -R '${id}' -f ${settings.knownHosts} and run again.`)
    }
    if (seen?.status === 'revoked') throw new RefusedError(`The host key of ${id} (${seen.fingerprint}) is marked @revoked in ${settings.knownHosts}; refusing to connect.`)
    if (seen?.status === 'unknown' && !settings.acceptNewHost) {
      const s = seen
      if (settings.confirmNewHost && await settings.confirmNewHost(id, s.type, s.fingerprint)) {
        const target = await attempt(s.key).catch(err => { throw connectError(err, name) })
        remember(settings.knownHosts, r.host, r.port, s.type, s.key)
        return target
      }
      throw new RefusedError(`The host key of ${id} is not in ${settings.knownHosts} (${s.type} ${s.fingerprint}): check it out of band and add it, run once on a terminal to confirm it, or pass --accept-new-host.`)
    }
    throw connectError(e, name)
  }
}

function remember(file: string, host: string, port: number, type: string, key: string) {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 })
  appendFileSync(file, knownHostsLine(host, port, type, key), { mode: 0o600 })
}

function connectError(e: unknown, name: string): Error {
  if (e instanceof HostError || e instanceof RefusedError) return e
  const err = e as NodeJS.ErrnoException & { level?: string }
  const host = name.split('@')[1]
  if (err.code === 'ECONNREFUSED') return new HostError(`Cannot reach ${host}: connection refused. Check SSH_HOST and SSH_PORT, and that sshd is running.`)
  if (err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') return new HostError(`Cannot resolve the host name in ${host}: check SSH_HOST.`)
  if (err.code === 'ETIMEDOUT' || /timed out/i.test(err.message)) return new HostError(`No SSH answer from ${host} within 20 s: check the address, firewall and that the host is up.`)
  if (err.code === 'ECONNRESET' || err.code === 'EHOSTUNREACH' || err.code === 'ENETUNREACH') return new HostError(`Cannot reach ${host} (${err.code}): check the address and the network.`)
  if (err.level === 'client-authentication') return new HostError(`SSH login as ${name} was refused: none of the offered keys was accepted. Check SSH_USER and SSH_KEY.`)
  if (err.level === 'client-socket' || err.level === 'protocol') return new HostError(`SSH to ${host} failed: ${err.message}.`)
  return err
}
