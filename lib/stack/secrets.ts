// Secret values and the env-file text that holds them. Pure functions: no host, no I/O.
//
// Where secrets live: the operator's settings file seeds them (APP_ENV_*, DB_PASSWORD)
// and deploy renders app.env from it. Once a key is rotated its value lives only on
// the host, in secrets.env beside app.env; compose reads that file after app.env, so
// it wins, and deploy never writes it. A rotation is therefore never undone by the
// next deploy, and the operator's laptop never needs the rotated value.
import { createHash, createHmac, pbkdf2Sync, randomBytes, randomInt } from 'node:crypto'
import { UsageError } from '../errors.ts'

export const ALPHABETS = {
  alnum: 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789',
  hex: '0123456789abcdef',
  base64url: 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_',
} as const
export type Alphabet = keyof typeof ALPHABETS

/** A value from the OS CSPRNG, each character drawn uniformly (randomInt has no modulo bias). */
export function generateSecret(length: number, alphabet: Alphabet): string {
  const chars = ALPHABETS[alphabet]
  return Array.from({ length }, () => chars[randomInt(chars.length)]).join('')
}

/**
 * A value given on stdin. Env files and compose read $, quotes, backslashes, # and spaces
 * specially, so those are refused rather than written in a form the app would misread.
 * The message never repeats the value.
 */
export function checkSecretValue(v: string): string {
  if (/[\r\n]/.test(v)) throw new UsageError('The value on stdin has more than one line: give exactly one line.')
  if (v.length < 8) throw new UsageError('The value on stdin is shorter than 8 characters: give a longer one, or leave out --from-stdin to generate one.')
  if (!/^[\x21-\x7e]+$/.test(v) || /['"\\$`#]/.test(v)) throw new UsageError('The value on stdin may hold only printable ASCII without spaces, quotes, backslash, $, # or backtick (env files read those specially).')
  return v
}

/** KEY=value lines; comments and blank lines are kept, so a rewrite changes only one line. */
export function envKeys(text: string): string[] {
  return text.split('\n').map(l => /^([A-Za-z_][A-Za-z0-9_]*)=/.exec(l)?.[1]).filter((k): k is string => !!k)
}

export function envValue(text: string, key: string): string | undefined {
  const line = text.split('\n').find(l => l.startsWith(`${key}=`))
  return line?.slice(key.length + 1)
}

/** The text with KEY set to value (replaced in place, else appended); undefined removes it. */
export function withKey(text: string, key: string, value: string | undefined): string {
  const lines = text.split('\n').filter((l, i, all) => !(l === '' && i === all.length - 1))
  const i = lines.findIndex(l => l.startsWith(`${key}=`))
  if (value === undefined) { if (i >= 0) lines.splice(i, 1) } else if (i >= 0) lines[i] = `${key}=${value}`
  else lines.push(`${key}=${value}`)
  return lines.length ? lines.join('\n') + '\n' : ''
}

/** The first line of a staged file names the rotation, so a resumed run knows what it finishes. */
export const stagedHeader = (what: string, at = new Date()) => `# opsbook rotate-secret: ${what} staged at ${at.toISOString()}`
export const stagedWhat = (text: string) => /^# opsbook rotate-secret: (.*) staged at /.exec(text)?.[1]

export const withHeader = (text: string, header: string) => [header, ...text.split('\n').filter(l => !l.startsWith('# opsbook rotate-secret:'))].join('\n')

// --- the database password: two logins, alternately live (AWS Secrets Manager's "alternating users") ---

/** The second login of the stack's database: member of the owner and acting as it. */
export const cloneUser = (dbUser: string) => `${dbUser}_clone`

export const databaseUrl = (user: string, password: string, dbName: string) =>
  `postgres://${user}:${encodeURIComponent(password)}@db:5432/${dbName}`

export function urlLogin(url: string | undefined): { user: string; password: string } | undefined {
  const m = url && /^postgres(?:ql)?:\/\/([^:@/]+):([^@/]*)@/.exec(url)
  return m ? { user: decodeURIComponent(m[1]), password: decodeURIComponent(m[2]) } : undefined
}

/**
 * PostgreSQL's stored form of a password (RFC 5802/7677, as libpq's PQencryptPasswordConn
 * makes it). Sent instead of the password, the server stores it as is: the plain value
 * never reaches PostgreSQL, its statement log or its error messages.
 */
export function scramVerifier(password: string, salt = randomBytes(16), iterations = 4096): string {
  const salted = pbkdf2Sync(password.normalize('NFKC'), salt, iterations, 32, 'sha256')
  const clientKey = createHmac('sha256', salted).update('Client Key').digest()
  const storedKey = createHash('sha256').update(clientKey).digest()
  const serverKey = createHmac('sha256', salted).update('Server Key').digest()
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`
}
