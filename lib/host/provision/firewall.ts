// ufw: allow the SSH port sshd really listens on FIRST, then the app ports, and only
// then enable. Enabling before allowing SSH locks every later connection out.
import { sh } from '../../sh.ts'
import type { Step } from '../../steps.ts'

export interface FirewallState { installed: boolean; active: boolean; allowed: number[]; sshPorts: number[] }
export interface FirewallPlan { allow: number[]; enable: boolean; installed: boolean; close?: number[] }

export const firewallCommands = {
  /**
   * sshd's ports (from `sshd -T`), then what `ufw status` would say, read from the same
   * places it reads (ufw.conf, the user rules, the live chain) without starting Python.
   */
  state: () => [
    `sshd -T 2>/dev/null | awk '$1=="port"{print "sshport=" $2} $1=="listenaddress"{n=split($2,a,":"); print "sshport=" a[n]}'`,
    'command -v ufw >/dev/null || { echo ufw=missing; exit 0; }',
    `if grep -qx 'ENABLED=yes' /etc/ufw/ufw.conf && iptables -S ufw-user-input >/dev/null 2>&1; then echo active=yes; else echo active=no; fi`,
    `awk '$1=="###" && $2=="tuple" && ($4=="allow" || $4=="limit") && ($5=="tcp" || $5=="any") && $7=="0.0.0.0/0" && $NF=="in" {print "allowed=" $6}' /etc/ufw/user.rules 2>/dev/null`,
  ].join('\n'),
  allow: (ports: number[]) => ports.map(p => sh`ufw allow ${`${p}/tcp`}`).join(' && '),
  enable: () => 'ufw --force enable',
  close: (ports: number[]) => ports.map(p => sh`ufw delete allow ${`${p}/tcp`} >/dev/null`).join(' && '),
}

export function parseFirewallState(stdout: string): FirewallState {
  const sshPorts = [...new Set([...stdout.matchAll(/^sshport=(\d+)$/gm)].map(m => Number(m[1])))]
  const allowed = [...new Set([...stdout.matchAll(/^allowed=(\d+)$/gm)].map(m => Number(m[1])))]
  return { installed: !/^ufw=missing$/m.test(stdout), active: /^active=yes$/m.test(stdout), allowed, sshPorts: sshPorts.length ? sshPorts : [22] }
}

/**
 * SSH ports come first so that no ordering of the commands can lock us out. `closed`:
 * ports that must not be open to everyone here (a cluster node that is not the edge),
 * never an SSH port.
 */
export function firewallPlan(s: FirewallState, appPorts: number[], closed: number[] = []): FirewallPlan {
  const wanted = [...new Set([...s.sshPorts, ...appPorts])]
  const close = closed.filter(p => s.allowed.includes(p) && !s.sshPorts.includes(p))
  return { allow: wanted.filter(p => !s.allowed.includes(p)), enable: !s.active, installed: s.installed, ...(close.length ? { close } : {}) }
}

export function firewallStep(appPorts: number[], closed: number[] = []): Step<FirewallPlan> {
  return {
    title: 'Firewall (ufw: SSH first, then ' + (appPorts.length ? appPorts.join(', ') : 'nothing else') + ')',
    async check(t) {
      const s = parseFirewallState((await t.run(firewallCommands.state(), { timeout: 60 })).stdout)
      const plan = firewallPlan(s, appPorts, closed)
      if (!plan.allow.length && !plan.enable && !plan.close) return { done: true, detail: `active, allows ${[...new Set([...s.sshPorts, ...appPorts])].join(', ')}` }
      const change = [plan.allow.length && `allow ${plan.allow.join(', ')}`, plan.close && `close ${plan.close.join(', ')}`, plan.enable && 'enable'].filter(Boolean).join(', then ')
      return { done: false, change: s.installed ? change : `${change} (once ufw is installed)`, plan }
    },
    async apply(t, plan) {
      if (!plan.installed) throw new Error('ufw is not installed (the Base packages step installs it)')
      const cmds = [plan.allow.length && firewallCommands.allow(plan.allow), plan.close && firewallCommands.close(plan.close), plan.enable && firewallCommands.enable()].filter(Boolean)
      await t.run(cmds.join(' && '), { timeout: 120 })
    },
    async verify(t) {
      const s = parseFirewallState((await t.run(firewallCommands.state(), { timeout: 60 })).stdout)
      const open = s.sshPorts.filter(p => !s.allowed.includes(p))
      if (!s.active || open.length) throw new Error(`ufw is ${s.active ? 'active' : 'not active'} and SSH port(s) ${open.join(', ') || 'none'} not allowed`)
    },
  }
}
