// A swap file when the host has none, so a memory spike slows the app instead of
// waking the OOM killer. Containers (LXC/OpenVZ VPSes, the testbed) share the host
// kernel's swap and cannot add their own: the step is skipped there, saying why.
import { sh } from '../../sh.ts'
import { fields, type Step } from '../../steps.ts'

export const SWAPFILE = '/swapfile'

export const swapCommands = {
  state: () => 'echo "active=$(swapon --show=NAME --noheadings 2>/dev/null | tr \'\\n\' \' \')"; echo "container=$(systemd-detect-virt --container 2>/dev/null || echo none)"',
  create: (size: string) => [
    'set -e',
    // A file left by an interrupted run is recreated rather than trusted.
    sh`if ! swapon --show=NAME --noheadings | grep -qx ${SWAPFILE}; then rm -f ${SWAPFILE}; fallocate -l ${size} ${SWAPFILE} || dd if=/dev/zero of=${SWAPFILE} bs=1M count=${sizeMiB(size)}; chmod 600 ${SWAPFILE}; mkswap ${SWAPFILE} >/dev/null; swapon ${SWAPFILE}; fi`,
    sh`grep -q ${`^${SWAPFILE} `} /etc/fstab || echo ${`${SWAPFILE} none swap sw 0 0`} >> /etc/fstab`,
  ].join('\n'),
}

export function sizeMiB(size: string): number {
  const n = Number(size.slice(0, -1))
  return size.endsWith('G') ? n * 1024 : n
}

export function swapStep(size: string): Step {
  return {
    title: `Swap file (${size === '0' ? 'none wanted' : size})`,
    async check(t) {
      const f = fields((await t.run(swapCommands.state(), { timeout: 30 })).stdout)
      if (size === '0') return { skip: 'SWAP_SIZE=0' }
      if (f.active) return { done: true, detail: `swap on ${f.active}` }
      if (f.container && f.container !== 'none') return { skip: `a ${f.container} container uses its host's swap` }
      return { done: false, change: `create ${SWAPFILE} of ${size}` }
    },
    async apply(t) {
      await t.run(swapCommands.create(size), { timeout: 300 })
    },
  }
}
