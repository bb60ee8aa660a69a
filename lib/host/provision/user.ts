// The deploy user: owns the app, runs docker (docker group) and logs in with the
// operator's key. No sudo: the docker group is already root-equivalent, and the
// runbooks that need root log in as the SSH user configured for them.
import { readFileSync } from 'node:fs'
import { UsageError } from '../../errors.ts'
import { sh } from '../../sh.ts'
import { fields, type Step } from '../../steps.ts'

const PUBLIC_KEY = /^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-\S+@openssh\.com) [A-Za-z0-9+/]+=*( .*)?$/

/** The "type base64" part of the public key in file, which authorized_keys must contain. */
export function readPublicKey(file: string, key = 'DEPLOY_PUBLIC_KEY'): string {
  let text: string
  try { text = readFileSync(file, 'utf8').trim() } catch {
    throw new UsageError(`The public key file ${file} cannot be read: set ${key} to the .pub file of the key the deploy user should accept.`)
  }
  if (!PUBLIC_KEY.test(text)) throw new UsageError(`${file} is not an OpenSSH public key (set ${key} to a .pub file).`)
  return text.split(/\s+/).slice(0, 2).join(' ')
}

export const userCommands = {
  state: (user: string, key: string) => [
    sh`if ! id -u ${user} >/dev/null 2>&1; then echo user=missing; exit 0; fi`,
    sh`home=$(getent passwd ${user} | cut -d: -f6); echo user=ok`,
    sh`if id -nG ${user} | tr ' ' '\\n' | grep -qx docker; then echo group=ok; else echo group=missing; fi`,
    sh`if grep -qF ${key} "$home/.ssh/authorized_keys" 2>/dev/null; then echo key=ok; else echo key=missing; fi`,
    sh`echo "perms=$(stat -c '%U:%a' "$home/.ssh" "$home/.ssh/authorized_keys" 2>/dev/null | tr '\\n' ' ')"`,
  ].join('\n'),
  ensure: (user: string, key: string) => [
    'set -e',
    'getent group docker >/dev/null || groupadd --system docker',
    sh`id -u ${user} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --user-group ${user}`,
    sh`usermod -aG docker ${user}`,
    sh`home=$(getent passwd ${user} | cut -d: -f6)`,
    sh`install -d -m 700 -o ${user} -g ${user} "$home/.ssh"`,
    sh`touch "$home/.ssh/authorized_keys"`,
    sh`grep -qF ${key} "$home/.ssh/authorized_keys" || printf '%s\\n' ${key} >> "$home/.ssh/authorized_keys"`,
    sh`chown ${user}:${user} "$home/.ssh/authorized_keys"; chmod 600 "$home/.ssh/authorized_keys"`,
  ].join('\n'),
}

export function userStep(user: string, publicKeyFile: string): Step {
  let key = ''
  return {
    title: `Deploy user ${user}`,
    prepare() { key = readPublicKey(publicKeyFile) },
    async check(t) {
      const f = fields((await t.run(userCommands.state(user, key), { timeout: 60 })).stdout)
      const todo = [
        f.user === 'missing' && `create ${user}`,
        f.group !== 'ok' && 'add to the docker group',
        f.key !== 'ok' && 'authorize the operator key',
        f.user === 'ok' && f.perms !== `${user}:700 ${user}:600` && f.key === 'ok' && 'fix ~/.ssh ownership and modes',
      ].filter(Boolean)
      return todo.length ? { done: false, change: todo.join(', ') } : { done: true }
    },
    async apply(t) {
      await t.run(userCommands.ensure(user, key), { timeout: 60 })
    },
  }
}
