// ENGINE=swarm: the provision steps that make the SSH_HOSTS nodes one Swarm cluster.
// Each node's run first reads every node (an unreachable one stops the run before any
// change), opens Swarm's ports to the other nodes' addresses only, then joins: the
// first node initialises the swarm, the others join it with a token fetched from it and
// sent on stdin (never argv, never printed), and the first node records each node's role
// and labels. A re-run finds all of it in place and changes nothing.
import type { Config } from '../../config.ts'
import { HostError } from '../../errors.ts'
import { sh } from '../../sh.ts'
import type { Step, Target } from '../../steps.ts'
import { clusterCommands, clusterNodes, discover, joinRequest, factsOf, LABELS, onNode, selfOf, SWARM_PORTS, type ConnectOptions, type NodeFacts } from '../cluster.ts'

const say = (line: string) => process.stderr.write(line + '\n')

/** Reads every node; refuses a set of nodes that belong to different swarms. */
export function clusterStep(c: Config, o: ConnectOptions): Step {
  const nodes = clusterNodes(c)
  return {
    title: `Cluster nodes (ENGINE=swarm: ${nodes.length} node${nodes.length > 1 ? 's' : ''}, ${nodes.filter(n => n.manager).length} manager${nodes.filter(n => n.manager).length > 1 ? 's' : ''})`,
    async check() {
      const facts = await discover(c, o)
      const [first, ...rest] = facts
      if (first.swarm.state === 'active' && !first.swarm.control) throw new HostError(`the first node ${first.node.label} is a worker of another swarm: it must be a manager (leave that swarm with docker swarm leave, or list a manager of it first in SSH_HOSTS).`)
      for (const f of facts) {
        if (!['inactive', 'active'].includes(f.swarm.state)) throw new HostError(`${f.node.label} is "${f.swarm.state}" in a swarm (not inactive or active): see docker info and journalctl -u docker on it, or run docker swarm leave --force there, then provision again.`)
      }
      for (const f of rest) {
        if (f.swarm.state !== 'active') continue
        if (first.swarm.state !== 'active') throw new HostError(`${f.node.label} is in a swarm but the first node ${first.node.label} is not: list a manager of that swarm first in SSH_HOSTS, or run docker swarm leave on ${f.node.label}.`)
        const joined = f.swarm.control ? f.swarm.clusterId === first.swarm.clusterId : f.swarm.managers.some(m => m.startsWith(`${first.addr}:`))
        if (!joined) throw new HostError(`${f.node.label} belongs to another swarm than the first node ${first.node.label}: run docker swarm leave on it, then provision again.`)
      }
      if (facts.length === 1) say(`warning: ENGINE=swarm with one node: it works, but nothing takes over when that node is lost.`)
      return { done: true, detail: facts.map(f => `${f.hostname} ${f.addr} ${f.node.manager ? 'manager' : 'worker'}${f.swarm.state === 'active' ? '' : ' (not joined yet)'}`).join(', ') + (facts.length === 1 ? '; WARNING: one node, no failover' : '') }
    },
    async apply() {},
  }
}

interface Rule { proto: string; port: number; from: string }
interface FirewallPlan { allow: Rule[]; remove: Rule[] }

/** ufw keeps a rule's comment as hex in user.rules. */
const TAG = Buffer.from('opsbook-swarm').toString('hex')

export const swarmFirewallCommands = {
  /** The allow rules with a source address, as ufw stores them ("### tuple ### allow udp 4789 0.0.0.0/0 any 10.0.0.2 in comment=HEX"). */
  state: () => `awk '$1=="###" && $2=="tuple" && $4=="allow" && $7=="0.0.0.0/0" {print $5, $6, $9, $NF}' /etc/ufw/user.rules 2>/dev/null; command -v ufw >/dev/null || echo ufw=missing`,
  allow: (rules: Rule[]) => rules.map(r => sh`ufw allow proto ${r.proto} from ${r.from} to any port ${r.port} comment opsbook-swarm >/dev/null`).join(' && '),
  remove: (rules: Rule[]) => rules.map(r => sh`ufw delete allow proto ${r.proto} from ${r.from} to any port ${r.port} >/dev/null`).join(' && '),
}

/**
 * What is missing (every Swarm port from every other node's address) and what is left over:
 * opsbook's rules for an address that is no longer a node (its next owner would reach the overlay).
 */
export function swarmFirewallPlan(stdout: string, others: string[]): FirewallPlan {
  const lines = stdout.split('\n').map(l => l.trim().split(' ')).filter(f => f.length >= 3)
  const have = new Set(lines.map(f => `${f[0]} ${f[1]} ${f[2]}`))
  const allow = others.flatMap(from => SWARM_PORTS.map(p => ({ proto: p.proto, port: p.port, from }))).filter(r => !have.has(`${r.proto} ${r.port} ${r.from}`))
  const remove = lines.filter(f => f[3] === `comment=${TAG}` && !others.includes(f[2])).map(f => ({ proto: f[0], port: Number(f[1]), from: f[2] }))
  return { allow, remove }
}

export function swarmFirewallStep(c: Config, o: ConnectOptions): Step<FirewallPlan> {
  return {
    title: 'Swarm ports (2377, 7946, 4789) from the other nodes only',
    async check(t) {
      const me = selfOf(c)
      const others = (await discover(c, o)).filter(f => f.node.label !== me.label).map(f => f.addr)
      const out = (await t.run(swarmFirewallCommands.state(), { timeout: 30 })).stdout
      const plan = swarmFirewallPlan(out, others)
      if (!plan.allow.length && !plan.remove.length) return others.length ? { done: true, detail: `from ${others.join(', ')}` } : { skip: 'one node: nothing to open' }
      const from = (rs: Rule[]) => [...new Set(rs.map(r => r.from))].join(', ')
      return { done: false, change: [plan.allow.length && `allow ${from(plan.allow)}`, plan.remove.length && `close to ${from(plan.remove)} (no longer a node)`].filter(Boolean).join(', '), plan }
    },
    async apply(t, plan) {
      await t.run([plan.allow.length && swarmFirewallCommands.allow(plan.allow), plan.remove.length && swarmFirewallCommands.remove(plan.remove)].filter(Boolean).join(' && '), { timeout: 120 })
    },
  }
}

interface MemberPlan { init?: string; join?: { addr: string; manager: NodeFacts }; nodeId?: string; drop?: string[] }

/** Role and labels that the first node is to record for a node. */
const wanted = (c: Config) => {
  const me = selfOf(c)
  return { role: me.manager ? 'manager' as const : 'worker' as const, labels: [me.edge && LABELS.edge, me.data && LABELS.data].filter((l): l is string => Boolean(l)) }
}

export function swarmMemberStep(c: Config, o: ConnectOptions): Step<MemberPlan> {
  const me = selfOf(c)
  const first = clusterNodes(c)[0]
  const isFirst = first.label === me.label
  /** On the first node: the target itself, or a connection of its own. */
  const onFirst = <T>(t: Target, fn: (m: Target) => Promise<T>) => (isFirst ? fn(t) : onNode(c, first, o, fn))
  const specOf = async (m: Target, nodeId: string) => {
    const s = JSON.parse((await m.run(clusterCommands.spec(nodeId), { timeout: 30 })).stdout || '{}')
    return { role: String(s.Role ?? ''), labels: Object.keys(s.Labels ?? {}) }
  }
  const w = wanted(c)
  const what = `${w.role}${w.labels.length ? `, ${w.labels.map(l => l.replace('opsbook.', '')).join(', ')}` : ''}`
  return {
    title: `Swarm membership (${what})`,
    async check(t) {
      const f = await factsOf(t, c, me)
      if (f.swarm.state !== 'active') {
        if (isFirst) return { done: false, change: `initialise the swarm, advertising ${f.addr}`, plan: { init: f.addr } }
        const manager = (await discover(c, o))[0]
        return { done: false, change: `join the swarm of ${first.label} (${manager.addr}) as a ${w.role}`, plan: { join: { addr: f.addr, manager } } }
      }
      const s = await onFirst(t, m => specOf(m, f.swarm.nodeId))
      const missing = w.labels.filter(l => !s.labels.includes(l))
      // SSH_HOSTS reordered: the node that was first no longer holds the edge or the data.
      const extra = s.labels.filter(l => Object.values(LABELS).includes(l) && !w.labels.includes(l))
      if (s.role === w.role && !missing.length && !extra.length) return { done: true, detail: `${f.hostname} ${s.role}${w.labels.length ? `, labels ${w.labels.join(', ')}` : ''}` }
      return { done: false, change: `make it a ${w.role}${missing.length ? `, label ${missing.join(', ')}` : ''}${extra.length ? `, remove label ${extra.join(', ')}` : ''}`, plan: { nodeId: f.swarm.nodeId, drop: extra } }
    },
    async apply(t, plan, log) {
      if (plan.init) await t.run(clusterCommands.init(plan.init), { timeout: 120 })
      if (plan.join) {
        const { addr, manager } = plan.join
        // With --batch over several nodes the first one may still be initialising.
        const token = await onFirst(t, async m => {
          for (let i = 0; ; i++) {
            const r = await m.run(clusterCommands.joinToken(w.role), { allowFail: true, timeout: 30 })
            if (r.code === 0) return r.stdout.trim()
            if (i >= 60) throw new HostError(`the first node ${first.label} has no swarm to join: provision it first.`)
            if (i === 0) log(`waiting for ${first.label} to initialise the swarm`)
            await new Promise(res => setTimeout(res, 2000))
          }
        })
        await t.run(clusterCommands.join(), { stdin: joinRequest(addr, manager.addr, token), timeout: 180 })
      }
      const nodeId = plan.nodeId ?? (await factsOf(t, c, me)).swarm.nodeId
      await onFirst(t, m => m.run(clusterCommands.update(nodeId, w.role, w.labels, plan.drop), { timeout: 60 }))
      return plan.init ? `initialised, ${what}` : plan.join ? `joined as ${what}` : `now ${what}`
    },
    async verify(t) {
      const f = await factsOf(t, c, me)
      if (f.swarm.state !== 'active') throw new HostError(`the node is ${f.swarm.state} in the swarm, not active: see journalctl -u docker on it.`)
    },
  }
}
