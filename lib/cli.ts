// Flags and --help. Unknown flags are errors (a typo must not silently change what runs).
import './tty.ts'
import { parseArgs } from 'node:util'
import { KEYS } from './config.ts'
import { UsageError } from './errors.ts'
import { nearest } from './values.ts'

export interface OptionSpec {
  type: 'string' | 'boolean'
  short?: string
  /** Placeholder shown in --help for string options. */
  value?: string
  description: string
  /** Its value is masked in the audit log. */
  secret?: boolean
  /** May be given more than once (the values come as a list). */
  multiple?: boolean
}

export const COMMON_OPTIONS = {
  env: { type: 'string', value: 'NAME', description: 'environment: reads .env.NAME (default: $OPS_ENV; asked on a terminal)' },
  config: { type: 'string', value: 'PATH', description: 'read settings from this file instead of .env.NAME' },
  'dry-run': { type: 'boolean', description: 'check the host and print what would change; change nothing' },
  yes: { type: 'boolean', short: 'y', description: 'answer yes to confirmations (needed without a terminal)' },
  json: { type: 'boolean', description: 'print a machine-readable summary as the last line' },
  'accept-new-host': { type: 'boolean', description: 'trust a host key not yet in known_hosts (a changed key is always refused)' },
  'break-lock': { type: 'boolean', description: 'remove a host lock left by a run that died, then take it' },
  'take-stale-lock': { type: 'boolean', description: 'unattended runs (cron, timers): take over a host lock whose holder has had no heartbeat for LOCK_STALE_AFTER seconds' },
  message: { type: 'string', short: 'm', value: 'TEXT', description: 'a note recorded in the lock and the audit log' },
  help: { type: 'boolean', short: 'h', description: 'show this help' },
} satisfies Record<string, OptionSpec>

/** For runbooks that can run on several hosts (provision, deploy, update). */
export const FLEET_OPTIONS = {
  hosts: { type: 'string', value: 'LIST', description: 'run on these hosts (comma separated, host or host:port) instead of SSH_HOST / SSH_HOSTS' },
  batch: { type: 'string', value: 'N|N%', description: 'hosts at a time, as a count or a percentage of them (default: 1)' },
  'max-fail': { type: 'string', value: 'N', description: 'keep going while at most N hosts have failed (default: 0, stop at the first failure)' },
  pause: { type: 'string', value: 'SECONDS', description: 'wait this long between batches (default: 0)' },
} satisfies Record<string, OptionSpec>

export type CommonArgs = {
  env?: string; config?: string; 'dry-run'?: boolean; yes?: boolean; json?: boolean
  'accept-new-host'?: boolean; 'break-lock'?: boolean; 'take-stale-lock'?: boolean; message?: string; help?: boolean
}

/** `positionals`: the runbook takes words besides its options (maintenance.ts on, exec.ts -- CMD); they come as `_`. */
export function parseCli<T>(argv: string[], options: Record<string, OptionSpec>, positionals = false): T {
  try {
    const { values, positionals: words } = parseArgs({
      args: argv,
      options: Object.fromEntries(Object.entries(options).map(([k, o]) => [k, { type: o.type, ...(o.short ? { short: o.short } : {}), ...(o.multiple ? { multiple: true } : {}) }])),
      strict: true,
      allowPositionals: positionals,
    })
    return { ...values, ...(positionals ? { _: words } : {}) } as T
  } catch (e) {
    const m = /Unknown option '([^']+)'/.exec((e as Error).message)
    if (m) {
      const near = m[1].startsWith('--') ? nearest(m[1].slice(2).split('=')[0], Object.keys(options)) : undefined
      throw new UsageError(`Unknown option ${m[1]}${near ? ` (did you mean --${near}?)` : ''}; see --help for the options.`)
    }
    const v = /Option '([^']+)' argument missing/.exec((e as Error).message)
    if (v) throw new UsageError(`Option ${v[1].split(', ').pop()} needs a value; see --help.`)
    const amb = /Option '([^']+)' argument is ambiguous/.exec((e as Error).message)
    if (amb) throw new UsageError(`The value after ${amb[1].split(', ').pop()} starts with "-": if you mean it, write ${amb[1].split(', ').pop()}=VALUE (see --help).`)
    if (/Unexpected argument/.test((e as Error).message)) throw new UsageError(`${(e as Error).message.split('.')[0]}; this runbook takes only --options (see --help).`)
    throw new UsageError(`${(e as Error).message} (see --help).`)
  }
}

export function helpText(o: { name: string; summary: string; details?: string; steps: string[]; options: Record<string, OptionSpec>; stepsHeading?: string; usage?: string }): string {
  const opt = Object.entries(o.options).map(([k, s]) => {
    const head = `${s.short ? `-${s.short}, ` : '    '}--${k}${s.value ? ` ${s.value}` : ''}`
    return `  ${head.padEnd(28)} ${s.description}`
  })
  return [
    `Usage: npx tsx runbooks/${o.name}.ts ${o.usage ?? '[options]'}`,
    '',
    o.summary,
    ...(o.details ? ['', o.details] : []),
    ...(o.steps.length ? [
      '',
      o.stepsHeading ?? 'Steps (each checks the host first and changes only what is missing):',
      ...o.steps.map((s, i) => `  ${String(i + 1).padStart(2)}. ${s}`),
    ] : []),
    '',
    'Options:',
    ...opt,
    '',
    `Settings come from .env.NAME (see .env.example): ${Object.keys(KEYS).join(', ')}.`,
    '',
    'Exit codes: 0 done, 1 a step or the connection failed, 2 bad usage or settings,',
    '            3 refused (host lock held, not confirmed, untrusted host key), 130 interrupted.',
  ].join('\n')
}
