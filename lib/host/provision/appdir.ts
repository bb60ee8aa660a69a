import { sh } from '../../sh.ts'
import type { Step } from '../../steps.ts'

export const appDirCommands = {
  state: (dir: string) => sh`stat -c '%U:%G %a' ${dir} 2>/dev/null || echo absent`,
  ensure: (dir: string, user: string) => sh`install -d -o ${user} -g ${user} -m 750 ${dir} && chown ${`${user}:${user}`} ${dir} && chmod 750 ${dir}`,
}

export function appDirStep(dir: string, user: string): Step {
  return {
    title: `App directory ${dir}`,
    async check(t) {
      const state = (await t.run(appDirCommands.state(dir), { timeout: 30 })).stdout.trim()
      if (state === `${user}:${user} 750`) return { done: true }
      return { done: false, change: state === 'absent' ? `create, owned by ${user}, mode 750` : `set owner ${user} and mode 750 (was ${state})` }
    },
    async apply(t) {
      await t.run(appDirCommands.ensure(dir, user), { timeout: 30 })
    },
  }
}
