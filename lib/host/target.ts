// Where commands run: over SSH (lib/ssh.ts) or on this machine (below). Both take a
// command string built by a pure function (see lib/sh.ts) and wrap it the same way:
// `sh -c` so the login shell does not matter, sudo -n for non-root users, and a
// remote `timeout` because closing an SSH channel does not stop the process.
import { spawn } from 'node:child_process'
import { userInfo } from 'node:os'
import { CommandError } from '../errors.ts'
import { quote } from '../sh.ts'
import type { RunOptions, RunResult, Target } from '../steps.ts'

/** Output kept per stream for the caller; anything past it is streamed but not kept. */
export const KEEP_BYTES = 1 << 20
export const DEFAULT_TIMEOUT = 900

/** The exact command line sent to the host for `command`. */
export function wrapCommand(command: string, opts: { sudo: boolean; timeout: number; foreground?: boolean }): string {
  const inner = `sh -c ${quote(command)}`
  // timeout runs the command in its own process group, which a terminal then stops when
  // it reads (SIGTTIN): a command on a pty stays in the terminal's (its children untimed).
  const bounded = `timeout ${opts.foreground ? '--foreground ' : ''}--kill-after=10 ${opts.timeout} ${inner}`
  return opts.sudo ? `sudo -n ${bounded}` : bounded
}

/** Collects a stream's text up to KEEP_BYTES while passing every chunk on. */
export class Collector {
  private parts: string[] = []
  private size = 0
  truncated = false
  constructor(private onOutput?: (chunk: string) => void) {}
  push(chunk: Buffer | string) {
    const s = chunk.toString()
    this.onOutput?.(s)
    if (this.size >= KEEP_BYTES) { this.truncated = true; return }
    this.parts.push(s)
    this.size += s.length
  }
  text() { return this.parts.join('') }
}

export function finish(command: string, code: number, out: Collector, err: Collector, opts: RunOptions): RunResult {
  const result = { code, stdout: out.text(), stderr: err.text() }
  if (code !== 0 && !opts.allowFail) throw new CommandError(command, code, result.stderr || result.stdout)
  return result
}

/** Sends stdin: a string or buffer at once, a stream piped with backpressure. */
export function feed(to: NodeJS.WritableStream, input: RunOptions['stdin']) {
  if (input && typeof input === 'object' && 'pipe' in input) input.pipe(to)
  else to.end(input ?? '')
}

/** Runs commands on this machine, for runbooks started on the VPS itself (cron). */
export class LocalTarget implements Target {
  readonly name: string
  private sudo: boolean
  constructor() {
    const me = userInfo().username
    this.name = `${me}@local`
    this.sudo = process.getuid?.() !== 0
  }

  run(command: string, opts: RunOptions = {}): Promise<RunResult> {
    const line = wrapCommand(command, { sudo: this.sudo, timeout: opts.timeout ?? DEFAULT_TIMEOUT })
    return new Promise((resolve, reject) => {
      const child = spawn('sh', ['-c', line], { stdio: ['pipe', 'pipe', 'pipe'] })
      const out = new Collector(opts.onOutput)
      const err = new Collector(opts.onOutput)
      if (opts.stdout) child.stdout.pipe(opts.stdout, { end: false })
      else child.stdout.on('data', c => out.push(c))
      child.stderr.on('data', c => err.push(c))
      child.on('error', reject)
      opts.signal?.addEventListener('abort', () => { child.stdout.unpipe(); child.stdout.resume(); child.kill('SIGTERM') }, { once: true })
      child.on('close', code => {
        try { resolve(finish(command, code ?? 255, out, err, opts)) } catch (e) { reject(e) }
      })
      child.stdin.on('error', () => {}) // the command may exit without reading its input
      feed(child.stdin, opts.stdin)
    })
  }

  async close() {}
}
