// Secret rotation with no downtime: a new value for one key of the app's environment
// (or the database password), the app replaced on it through a health-gated rollout,
// undone by itself if the app does not come up healthy.
import { refuseDuringCanary } from '../lib/stack/canary.ts'
import { UsageError } from '../lib/errors.ts'
import { askSecret, choose, interactive } from '../lib/prompts.ts'
import { DB_KEY, KEY_NAME, describe, rotatableKeys, rotationState, rotationSteps, type Change } from '../lib/stack/rotation.ts'
import { main } from '../lib/runbook.ts'
import { ALPHABETS, checkSecretValue, generateSecret, type Alphabet } from '../lib/stack/secrets.ts'
import { stackOf, withService } from '../lib/stack/stack.ts'

interface Args {
  service?: string
  key?: string; 'from-stdin'?: boolean; length?: string; alphabet?: string; 'keep-previous'?: boolean; 'drop-previous'?: boolean; revert?: boolean
  /** Settled by resolve. */
  change?: Change
}

function changeOf(a: Args, value: () => string): Change {
  const valueFlags = a['from-stdin'] || a.length !== undefined || a.alphabet !== undefined || a['keep-previous']
  if (a.revert) {
    if (a.key || a['drop-previous'] || valueFlags) throw new UsageError('--revert takes no other rotation option: it puts back the whole previous secrets.env.')
    return { kind: 'revert' }
  }
  if (!a.key) throw new UsageError('No key given: pass --key NAME (or --revert).')
  if (!KEY_NAME.test(a.key)) throw new UsageError(`--key ${JSON.stringify(a.key)} is not a key name (a variable name: upper-case letters, digits and _).`)
  if (a['drop-previous']) {
    if (valueFlags) throw new UsageError('--drop-previous takes only --key: it ends the grace period of the old value.')
    return { kind: 'drop-previous', key: a.key }
  }
  if (a.key.endsWith('_PREVIOUS')) throw new UsageError(`${a.key} is set by rotations of ${a.key.slice(0, -9)} (--keep-previous); rotate that key instead.`)
  if (a.key === DB_KEY && a['keep-previous']) throw new UsageError('--keep-previous is for signing keys; the database password moves to the other login instead (see --help).')
  return { kind: 'rotate', key: a.key, value, keepPrevious: Boolean(a['keep-previous']) }
}

function generator(a: Args): () => string {
  const length = Number(a.length ?? 48)
  if (!Number.isInteger(length) || length < 16 || length > 256) throw new UsageError(`--length ${a.length} must be a whole number from 16 to 256.`)
  const alphabet = (a.alphabet ?? 'alnum') as Alphabet
  if (!(alphabet in ALPHABETS)) throw new UsageError(`--alphabet ${a.alphabet} must be one of ${Object.keys(ALPHABETS).join(', ')}.`)
  let value: string | undefined
  return () => (value ??= generateSecret(length, alphabet))
}

async function readStdin(): Promise<string> {
  if (interactive) return checkSecretValue(await askSecret('New value (not shown):'))
  if (process.stdin.isTTY) throw new UsageError('--from-stdin needs the value piped in (e.g. from your password manager), or a terminal to type it.')
  let text = ''
  for await (const chunk of process.stdin) text += chunk
  if (!text) throw new UsageError('--from-stdin got nothing on stdin: pipe the value in.')
  return checkSecretValue(text.replace(/\r?\n$/, ''))
}

await main<Args>({
  name: 'rotate-secret',
  cluster: 'first node',
  summary: 'Give one secret of the app a new value with no downtime. The value comes from a CSPRNG (or stdin, never a flag) and goes into secrets.env on the host (with COMPOSE_FILE: secrets/SERVICE.env for --service, and only that service is replaced) (0600, written atomically; deploy never overwrites it). New app containers start on it beside the old ones and nginx switches only once they are healthy; if they are not, secrets.env is put back and the old containers never stopped. The database password moves between two logins (DB_USER and DB_USER_clone) and the old login loses its password once no container uses it.',
  details: [
    'Examples:',
    '  rotate-secret.ts --env production --key SECRET_KEY --keep-previous   (old tokens stay valid: SECRET_KEY_PREVIOUS)',
    '  rotate-secret.ts --env production --key SECRET_KEY --drop-previous   (the grace period ends)',
    '  pass show prod/api-token | rotate-secret.ts --env production --key API_TOKEN --from-stdin --yes',
    '  rotate-secret.ts --env production --key DB_PASSWORD --yes                    (built-in stack)',
    '  rotate-secret.ts --env production --service backend --key API_TOKEN --yes   (your compose file: one service)',
    '  rotate-secret.ts --env production --revert                           (back to secrets.env before the last rotation)',
    'There is no --value flag on purpose: argv is visible to every user of a machine (ps) and lands in shell history.',
  ].join('\n'),
  options: {
    service: { type: 'string', value: 'NAME', description: 'with COMPOSE_FILE: the web service or worker whose secret changes; only its containers are replaced (default: the first web service)' },
    key: { type: 'string', value: 'NAME', description: 'the variable to rotate (DB_PASSWORD: the database password); asked on a terminal' },
    'from-stdin': { type: 'boolean', description: 'read the new value from stdin (a terminal asks for it, masked) instead of generating it' },
    length: { type: 'string', value: 'N', description: 'length of a generated value (default 48)' },
    alphabet: { type: 'string', value: 'NAME', description: `characters of a generated value: ${Object.keys(ALPHABETS).join(', ')} (default alnum)` },
    'keep-previous': { type: 'boolean', description: 'keep the old value as KEY_PREVIOUS (signing keys: tokens signed with it stay valid)' },
    'drop-previous': { type: 'boolean', description: 'remove KEY_PREVIOUS: the grace period of the old value is over' },
    revert: { type: 'boolean', description: 'put back secrets.env as it was before the last rotation' },
  },
  example: { key: 'KEY' },
  action: (c, a) => `${a.change ? describe(a.change) : 'Rotate a secret'} of ${c.app.name} on ${c.env} (${c.ssh.host}): the app containers are replaced`,
  audit: a => (a.change ? describe(a.change) : undefined),
  check(args) {
    generator(args)
    if (args.key || args.revert) changeOf(args, () => '')
  },
  async resolve({ target, config, args }) {
    const value = generator(args)
    // The app's containers are replaced: a canary's would be taken along with them.
    await refuseDuringCanary(target, stackOf(config), 'rotating a secret')
    if (!args.key && !args.revert) {
      const s = await rotationState(target, withService(stackOf(config), args.service))
      args.key = await choose({ message: 'Rotate which secret?', flag: '--key NAME (or --revert)', choices: rotatableKeys(s.keys).map(k => ({ value: k, name: k === DB_KEY ? `${k} (database password: moves to the other login)` : k })) })
    }
    args.change = changeOf(args, value)
    if (args['from-stdin'] && args.change.kind === 'rotate') {
      const given = await readStdin()
      args.change.value = () => given
    }
  },
  steps: (c, a) => rotationSteps(withService(stackOf(c), a.service), a.change ?? changeOf(a, generator(a))),
})
