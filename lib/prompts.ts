// Questions for the operator. @inquirer/prompts never checks for a TTY (an open pipe
// hangs, EOF throws), so every question here first asks: is there someone to answer?
// If not, the answer must come from a flag or the environment, and the error says which.
import { RefusedError, UsageError } from './errors.ts'
import { interactive } from './tty.ts'

export { interactive }

// Loaded on first use: most runs (cron, CI, --yes) never prompt, and it costs ~140 ms to import.
const inquirer = () => import('@inquirer/prompts')

async function ask<T>(prompt: (q: Awaited<ReturnType<typeof inquirer>>) => Promise<T>): Promise<T> {
  try {
    return await prompt(await inquirer())
  } catch (e) {
    if ((e as Error).name === 'ExitPromptError') throw new RefusedError('Cancelled at the prompt; nothing was changed.')
    throw e
  }
}

export interface Choice<T extends string> { value: T; name?: string; description?: string }

/** A value from its flag if given, else a menu on a TTY, else an error naming the flag. */
export async function choose<T extends string>(o: {
  message: string; flag: string; env?: string; given?: string; choices: Choice<T>[]; default?: T
}): Promise<T> {
  if (o.given !== undefined) {
    const hit = o.choices.find(c => c.value === o.given)
    if (!hit) throw new UsageError(`${o.flag} ${o.given} is not one of: ${o.choices.map(c => c.value).join(', ')}.`)
    return hit.value
  }
  if (!interactive) throw new UsageError(`No answer for "${o.message}": pass ${o.flag}${o.env ? ` or set ${o.env}` : ''}.`)
  if (!o.choices.length) throw new UsageError(`Nothing to choose for "${o.message}".`)
  return ask(q => q.select({ message: o.message, choices: o.choices, default: o.default }))
}

/**
 * Confirms a run that will change a host. Protected environments (production) need
 * their name typed, the way GitHub asks before deleting a repository.
 */
export async function confirmRun(o: { action: string; env: string; protected: boolean; yes: boolean }): Promise<void> {
  if (o.yes) return
  if (!interactive) throw new RefusedError(`${o.action} needs confirmation: pass --yes to run without a terminal.`)
  if (o.protected) {
    const typed = await ask(q => q.input({ message: `${o.action}. This is ${o.env}: type its name to go on:` }))
    if (typed.trim() !== o.env) throw new RefusedError(`You typed "${typed.trim()}", not "${o.env}"; nothing was changed.`)
    return
  }
  if (!await ask(q => q.confirm({ message: `${o.action}. Go on?`, default: false }))) {
    throw new RefusedError('Not confirmed; nothing was changed.')
  }
}

/** A stale host lock: the operator decides whether its holder is really gone. */
export function confirmTakeLock(holder: string, ageS: number): Promise<boolean> {
  return ask(q => q.confirm({
    message: `The host lock is held by ${holder}, with no heartbeat for ${ageS} s. Take it over (only if that run is really gone)?`,
    default: false,
  }))
}

/** ssh's "authenticity of host can't be established" question. */
export function confirmNewHost(id: string, type: string, fingerprint: string): Promise<boolean> {
  return ask(q => q.confirm({
    message: `The host ${id} is not in known_hosts. Its ${type} key fingerprint is ${fingerprint}. Check it against the provider's console: trust it and continue?`,
    default: false,
  }))
}

/** A secret typed by the operator: masked, never echoed, never kept in shell history. */
export function askSecret(message: string): Promise<string> {
  return ask(q => q.password({ message, mask: '*' }))
}
