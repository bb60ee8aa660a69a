// A few typed errors, each carrying the exit code the CLI ends with and a message
// written for the operator (one sentence saying what to do). Anything else that
// escapes is a bug and is shown with its stack.

export class OpsError extends Error {
  readonly exitCode: number = 1
}

/** Bad flags, malformed values, missing settings: nothing was done. Exit 2. */
export class UsageError extends OpsError {
  override readonly exitCode = 2
}

/** The tool refused to go on: lock held, confirmation declined, untrusted host key. Exit 3. */
export class RefusedError extends OpsError {
  override readonly exitCode = 3
}

/** The host could not be reached or a command on it failed. Exit 1. */
export class HostError extends OpsError {}

/** A remote command exited non-zero. */
export class CommandError extends HostError {
  constructor(readonly command: string, readonly code: number, readonly stderr: string) {
    // OpenSSH tools end stderr lines with \r\n; keep the message on one clean line.
    const tail = stderr.replace(/\r/g, '').trim().split('\n').slice(-3).join(' | ')
    super(code === 124 ? 'the command timed out on the host and was stopped'
      : /^sudo: .*(password|terminal) is required/m.test(stderr) ? 'the SSH user needs passwordless sudo (NOPASSWD) on the host; or log in as root'
        : `command exited ${code}${tail ? `: ${tail}` : ''}`)
  }
}

/** The operator pressed Ctrl-C. Exit 130, like a shell. */
export class InterruptedError extends OpsError {
  override readonly exitCode = 130
  constructor(message = 'interrupted by the operator; the host was left as the last finished step made it') { super(message) }
}
