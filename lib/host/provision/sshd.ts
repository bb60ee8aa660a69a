// SSH hardening as a drop-in file, validated with `sshd -t` before sshd reloads
// (a broken sshd config is how a VPS gets lost), and verified with `sshd -T`, which
// shows what sshd will actually do rather than what the file says.
import { fileCommands, template, wantedState, type FileSpec } from '../files.ts'
import { fields, type Step } from '../../steps.ts'

export const SSHD_DROPIN: FileSpec = { path: '/etc/ssh/sshd_config.d/00-opsbook-hardening.conf', mode: '0644', owner: 'root:root', validate: 'sshd -t' }

/** Settings sshd -T must report once the drop-in is in effect. */
export const SSHD_WANTED = { passwordauthentication: 'no', kbdinteractiveauthentication: 'no', permitrootlogin: 'without-password', permitemptypasswords: 'no' }

export const sshdCommands = {
  state: () => `echo "file=$(${fileCommands.state(SSHD_DROPIN.path)})"; sshd -T 2>/dev/null | grep -E '^(${Object.keys(SSHD_WANTED).join('|')}) ' | sed 's/ /=/'`,
  reload: () => 'systemctl reload ssh 2>/dev/null || systemctl reload sshd',
}

export function sshdStep(): Step {
  const content = template('sshd-hardening.conf')
  return {
    title: 'SSH hardening (no passwords, root by key only)',
    async check(t) {
      const f = fields((await t.run(sshdCommands.state(), { timeout: 60 })).stdout)
      const wrong = Object.entries(SSHD_WANTED).filter(([k, v]) => f[k] !== v).map(([k]) => k)
      if (f.file === wantedState(content, SSHD_DROPIN) && !wrong.length) return { done: true }
      return { done: false, change: f.file === 'absent' ? `add ${SSHD_DROPIN.path}` : f.file !== wantedState(content, SSHD_DROPIN) ? `update ${SSHD_DROPIN.path}` : `reload sshd (${wrong.join(', ')} not in effect)` }
    },
    async apply(t) {
      await t.run(`${fileCommands.install(SSHD_DROPIN)}\n${sshdCommands.reload()}`, { stdin: content, timeout: 60 })
    },
    async verify(t) {
      const f = fields((await t.run(sshdCommands.state(), { timeout: 60 })).stdout)
      const wrong = Object.entries(SSHD_WANTED).filter(([k, v]) => f[k] !== v)
      if (wrong.length) {
        throw new Error(`sshd still reports ${wrong.map(([k]) => `${k} ${f[k] ?? '?'}`).join(', ')}: does /etc/ssh/sshd_config Include sshd_config.d/*.conf before its own settings?`)
      }
    },
  }
}
