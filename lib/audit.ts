// An append-only log on the host, one JSON line per runbook run: who, when, what,
// with which arguments (secret ones masked) and how it ended.
import { hostname, userInfo } from 'node:os'
import { sh } from './sh.ts'

export const AUDIT_DIR = '/var/log/opsbook'
export const AUDIT_LOG = `${AUDIT_DIR}/audit.log`

export type Outcome = 'ok' | 'changed' | 'dry-run' | 'failed' | 'refused' | 'interrupted'

export interface AuditEntry {
  ts: string
  runbook: string
  env: string
  operator: string
  from: string
  args: string[]
  /** The runbook's own words for what it did, e.g. "rotate SECRET_KEY" (never a value). */
  what?: string
  result: Outcome
  counts?: Record<string, number>
  durationMs?: number
  error?: string
}

export const auditCommands = {
  /** Appends stdin (one line) to the log; O_APPEND keeps concurrent writers' lines whole. */
  append: () => sh`mkdir -p -m 750 ${AUDIT_DIR} && cat >> ${AUDIT_LOG} && chmod 640 ${AUDIT_LOG}`,
  tail: (n: number) => sh`tail -n ${n} ${AUDIT_LOG} 2>/dev/null || true`,
}

/** The argument list with the values of the given flags masked. */
export function redactArgs(argv: string[], secretFlags: string[] = []): string[] {
  const out: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s)
    if (!secretFlags.includes(flag)) out.push(argv[i])
    else if (inline !== undefined) out.push(`${flag}=***`)
    else { out.push(flag, '***'); i++ }
  }
  return out
}

export function auditLine(e: Omit<AuditEntry, 'ts' | 'operator' | 'from'>, secretFlags: string[] = []): string {
  const entry: AuditEntry = { ts: new Date().toISOString(), operator: userInfo().username, from: hostname(), ...e, args: redactArgs(e.args, secretFlags) }
  return JSON.stringify(entry) + '\n'
}
