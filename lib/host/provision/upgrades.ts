// Unattended security upgrades: the package comes with Base packages; this turns
// the daily run on explicitly rather than trusting an image's defaults.
import { fileCommands, template, wantedState, type FileSpec } from '../files.ts'
import type { Step } from '../../steps.ts'

export const AUTO_UPGRADES: FileSpec = { path: '/etc/apt/apt.conf.d/20auto-upgrades', mode: '0644', owner: 'root:root' }

export function upgradesStep(): Step {
  const content = template('20auto-upgrades')
  return {
    title: 'Unattended security upgrades',
    async check(t) {
      const state = (await t.run(fileCommands.state(AUTO_UPGRADES.path), { timeout: 30 })).stdout.trim()
      return state === wantedState(content, AUTO_UPGRADES) ? { done: true } : { done: false, change: `${state === 'absent' ? 'write' : 'update'} ${AUTO_UPGRADES.path}` }
    },
    async apply(t) {
      await t.run(fileCommands.install(AUTO_UPGRADES), { stdin: content, timeout: 30 })
    },
  }
}
