// Local scripts around a release (Kamal's pre-deploy / post-deploy hooks): a pre hook
// can veto the run before anything changes (e.g. "is CI green for this version?"), a
// post hook announces it, a failure hook pages someone. They run on the operator's
// machine with the run described in OPSBOOK_* variables, never with a secret added.
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { userInfo, hostname } from 'node:os'
import { RefusedError, UsageError } from './errors.ts'

export type HookKind = 'pre' | 'post' | 'failure'

export interface HookRun {
  runbook: string
  env: string
  hosts: string[]
  version?: string
  result?: string
  error?: string
}

/** The variables a hook sees besides the runbook's own environment. */
export function hookEnv(r: HookRun): Record<string, string> {
  const e: Record<string, string> = {
    OPSBOOK_RUNBOOK: r.runbook, OPSBOOK_ENV: r.env, OPSBOOK_HOSTS: r.hosts.join(','),
    OPSBOOK_OPERATOR: `${userInfo().username}@${hostname()}`,
  }
  if (r.version) e.OPSBOOK_VERSION = r.version
  if (r.result) e.OPSBOOK_RESULT = r.result
  if (r.error) e.OPSBOOK_ERROR = r.error
  return e
}

export function checkHook(kind: HookKind, path: string | undefined): void {
  if (path && !existsSync(path)) throw new UsageError(`${kind.toUpperCase()}_HOOK ${path} does not exist: fix the path or remove the setting.`)
}

/** Runs the hook (output to stderr, so --json stays one line); resolves to its exit code. */
export function runHook(path: string, run: HookRun, timeoutS = 300): Promise<number> {
  return new Promise(resolve => {
    const child = spawn(path, [], { stdio: ['ignore', process.stderr, process.stderr], env: { ...process.env, ...hookEnv(run) }, timeout: timeoutS * 1000 })
    child.on('error', () => resolve(127))
    child.on('close', code => resolve(code ?? 1))
  })
}

export async function preHook(path: string | undefined, run: HookRun): Promise<void> {
  if (!path) return
  const code = await runHook(path, run)
  if (code !== 0) throw new RefusedError(`PRE_HOOK ${path} exited ${code}: nothing was changed.`)
}
