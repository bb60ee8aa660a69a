import { sh } from '../../sh.ts'
import type { Step } from '../../steps.ts'
import type { Target } from '../../steps.ts'

export const BASE_PACKAGES = ['ca-certificates', 'curl', 'gnupg', 'sudo', 'ufw', 'unattended-upgrades']

// Waits for the dpkg lock (unattended-upgrades may hold it on a fresh VPS) instead of failing.
export const APT = 'DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold'

export const packageCommands = {
  /** Prints the names of the packages that are not installed, one a line. */
  /** Prints "<package> <status>" for each package dpkg knows (one dpkg-query for all). */
  status: (pkgs: string[]) => sh`dpkg-query -W -f='\${Package} \${Status}\\n' ${pkgs} 2>/dev/null || true`,
  install: (pkgs: string[]) => `${APT} update && ${APT} install --no-install-recommends ` + sh`${pkgs}`,
}

export function parseMissing(pkgs: string[], stdout: string): string[] {
  const installed = new Set(stdout.split('\n').filter(l => / ok installed$/.test(l)).map(l => l.split(' ')[0].split(':')[0]))
  return pkgs.filter(p => !installed.has(p))
}

export async function missingPackages(t: Target, pkgs: string[]): Promise<string[]> {
  return parseMissing(pkgs, (await t.run(packageCommands.status(pkgs), { timeout: 60 })).stdout)
}

export function packagesStep(pkgs = BASE_PACKAGES): Step<string[]> {
  return {
    title: 'Base packages',
    async check(t) {
      const missing = await missingPackages(t, pkgs)
      return missing.length ? { done: false, change: `install ${missing.join(', ')}`, plan: missing } : { done: true }
    },
    async apply(t, missing, log) {
      await t.run(packageCommands.install(missing), { onOutput: log, timeout: 900 })
      return `installed ${missing.join(', ')}`
    },
  }
}
