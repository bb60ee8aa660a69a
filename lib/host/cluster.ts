// ENGINE=swarm: the SSH_HOSTS nodes as one Docker Swarm cluster. Which node does what
// follows from the settings alone (pure, unit-tested): the first SWARM_MANAGERS nodes
// manage it; the first node is also the edge (nginx, the public ports) and holds the
// data (an accessory's volume lives on one node). What a node *is* (its address, its
// swarm state) is read from it over SSH, every node before any is changed.
import type { Config } from '../config.ts'
import { HostError } from '../errors.ts'
import { sh } from '../sh.ts'
import { fields, type Target } from '../steps.ts'
import { hostLabel, type HostAddress } from '../values.ts'
import { connectSsh } from './ssh.ts'

export interface ClusterNode {
  address: HostAddress
  /** host or host:port, as SSH_HOSTS names it. */
  label: string
  manager: boolean
  edge: boolean
  data: boolean
}

/** Swarm's ports between nodes: managers (2377), gossip (7946), overlay traffic (4789). */
export const SWARM_PORTS: { port: number; proto: 'tcp' | 'udp' }[] = [
  { port: 2377, proto: 'tcp' }, { port: 7946, proto: 'tcp' }, { port: 7946, proto: 'udp' }, { port: 4789, proto: 'udp' },
]

export const LABELS = { edge: 'opsbook.edge', data: 'opsbook.data' }

/** The nodes in SSH_HOSTS order with their roles; one node (SSH_HOST) is a cluster of one. */
export function clusterNodes(c: Config): ClusterNode[] {
  const managers = c.cluster?.managers ?? 1
  const list = c.hosts ?? [{ host: c.ssh.host, port: c.ssh.port }]
  return list.map((address, i) => ({ address, label: hostLabel(address), manager: i < managers, edge: i === 0, data: i === 0 }))
}

/** The node this run's target is (matched by host and port). */
export function selfOf(c: Config): ClusterNode {
  const nodes = clusterNodes(c)
  // A fleet's own settings (no host of their own) only list and validate the steps.
  if (!c.ssh.host) return nodes[0]
  const me = nodes.find(n => n.address.host === c.ssh.host && (n.address.port ?? c.ssh.port) === c.ssh.port)
  if (!me) throw new HostError(`${hostLabel({ host: c.ssh.host, port: c.ssh.port })} is not one of SSH_HOSTS, the cluster's nodes.`)
  return me
}

export interface SwarmState { state: string; nodeId: string; control: boolean; clusterId: string; managers: string[] }
export interface NodeFacts { node: ClusterNode; addr: string; hostname: string; swarm: SwarmState }

export const clusterCommands = {
  /** The address other nodes reach this one on, its name, its swarm membership. */
  facts: (iface?: string) => [
    iface ? sh`ip -4 -o addr show dev ${iface} | awk '{split($4, a, "/"); print "addr=" a[1]; exit}'`
      : `ip -4 -o route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") print "addr=" $(i + 1)}'`,
    'echo "hostname=$(hostname)"',
    // Fields, not the whole JSON: it holds the CA certificate, whose \n dash's echo would expand.
    `printf 'swarm=%s\\n' "$(docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.NodeID}} {{with .Swarm.Cluster}}{{.ID}}{{end}} {{range .Swarm.RemoteManagers}}{{.Addr}},{{end}}' 2>/dev/null)"`,
  ].join('\n'),
  init: (addr: string) => sh`docker swarm init --advertise-addr ${addr} --listen-addr ${`${addr}:2377`} >/dev/null`,
  /** The token comes back on stdout, to be sent to the joining node's stdin: never argv, never printed. */
  joinToken: (role: 'manager' | 'worker') => sh`docker swarm join-token -q ${role}`,
  /**
   * Through Docker's API, the request (token included) on stdin: `docker swarm join --token`
   * would show it in the process list of the joining node for as long as the join takes.
   */
  join: () => `curl -sS --fail-with-body --unix-socket /var/run/docker.sock -H 'Content-Type: application/json' --data-binary @- http://localhost/swarm/join`,
  /** Role and labels of one node, as the manager sees it. */
  spec: (nodeId: string) => sh`docker node inspect --format '{{json .Spec}}' ${nodeId}`,
  update: (nodeId: string, role: 'manager' | 'worker', labels: string[], drop: string[] = []) => sh`docker node update --role ${role} ${[...labels.flatMap(l => ['--label-add', `${l}=true`]), ...drop.flatMap(l => ['--label-rm', l])]} ${nodeId} >/dev/null`,
  /** One JSON object per node: name, status, availability, manager status, labels, address. */
  nodes: () => `docker node ls -q | xargs docker node inspect --format '{"name":{{json .Description.Hostname}},"state":{{json .Status.State}},"addr":{{json .Status.Addr}},"availability":{{json .Spec.Availability}},"role":{{json .Spec.Role}},"leader":{{if .ManagerStatus}}{{.ManagerStatus.Leader}}{{else}}false{{end}},"labels":{{json .Spec.Labels}}}'`,
  /** Services with replicas running/desired, then every running task with its node. */
  services: () => [
    `docker service ls --format 'svc {{.Name}} {{.Replicas}}'`,
    `docker node ps $(docker node ls -q) --filter desired-state=running --format 'task {{.Name}} {{.Node}} {{.CurrentState}}' 2>/dev/null | sort -u`,
  ].join('\n'),
}

/** What the join request sends on stdin (Docker's POST /swarm/join body). */
export const joinRequest = (addr: string, manager: string, token: string) =>
  JSON.stringify({ ListenAddr: `${addr}:2377`, AdvertiseAddr: addr, RemoteAddrs: [`${manager}:2377`], JoinToken: token })

export function parseFacts(node: ClusterNode, stdout: string): NodeFacts {
  const f = fields(stdout)
  // "active true NODEID CLUSTERID 10.0.0.1:2377," (a worker has no cluster ID: two spaces).
  const [state = 'inactive', control = 'false', nodeId = '', clusterId = '', managers = ''] = (f.swarm ?? '').split(' ')
  if (!f.addr) throw new HostError(`cannot tell which address the other nodes reach ${node.label} on: set SWARM_INTERFACE to the interface of the network the nodes share.`)
  return {
    node, addr: f.addr, hostname: f.hostname ?? '',
    swarm: { state: state || 'inactive', nodeId, control: control === 'true', clusterId, managers: managers.split(',').filter(Boolean) },
  }
}

export interface NodeInfo { name: string; state: string; addr: string; availability: string; role: string; leader: boolean; labels: Record<string, string> | null }

export const parseNodes = (stdout: string): NodeInfo[] => stdout.trim().split('\n').filter(Boolean).map(l => JSON.parse(l))

/** "sw-1 ready manager (leader) edge,data; sw-2 down worker": what status shows. */
export function describeNodes(nodes: NodeInfo[]): { text: string; down: string[] } {
  const text = nodes.map(n => {
    const labels = Object.keys(n.labels ?? {}).filter(k => k.startsWith('opsbook.')).map(k => k.slice(8))
    return `${n.name} ${n.state}${n.availability !== 'active' ? ` (${n.availability})` : ''} ${n.role}${n.leader ? ' (leader)' : ''}${labels.length ? ` ${labels.join(',')}` : ''}`
  }).join('; ')
  return { text, down: nodes.filter(n => n.state !== 'ready').map(n => n.name) }
}

/** "app_app_a 3/3 (n1 1, n2 1, n3 1); app_db 1/1 (n1 1)": replicas, and where they run. */
export function describeServices(stdout: string): string {
  const lines = stdout.split('\n').map(l => l.trim().split(/\s+/))
  const where = new Map<string, Map<string, number>>()
  for (const [kind, task, node, state] of lines) {
    if (kind !== 'task' || state !== 'Running') continue
    const svc = task.replace(/\.\d+$/, '')
    const m = where.get(svc) ?? new Map<string, number>()
    m.set(node, (m.get(node) ?? 0) + 1)
    where.set(svc, m)
  }
  return lines.filter(l => l[0] === 'svc').map(([, name, replicas]) => {
    const m = where.get(name)
    return `${name} ${replicas}${m ? ` (${[...m].sort().map(([n, k]) => `${n} ${k}`).join(', ')})` : ''}`
  }).join('; ')
}

export interface ConnectOptions { acceptNewHost?: boolean }

/** Runs fn on one node over its own connection (closed afterwards). */
export async function onNode<T>(c: Config, node: ClusterNode, o: ConnectOptions, fn: (t: Target) => Promise<T>): Promise<T> {
  const t = await connectSsh({ ...c.ssh, host: node.address.host, port: node.address.port ?? c.ssh.port, acceptNewHost: Boolean(o.acceptNewHost) })
    .catch(e => { throw new HostError(`cluster node ${node.label} cannot be reached (${(e as Error).message.replace(/\.$/, '')}): bring it back or take it out of SSH_HOSTS; nothing was changed on any node.`) })
  try { return await fn(t) } finally { await t.close() }
}

const discovered = new Map<string, Promise<NodeFacts[]>>()

/** Every node's facts, read once per host's run (all nodes at once): an unreachable node fails here, before any change. */
export function discover(c: Config, o: ConnectOptions = {}): Promise<NodeFacts[]> {
  const nodes = clusterNodes(c)
  // Once per host's run: a later host of the same fleet run sees the nodes joined since.
  const key = `${c.ssh.host}:${c.ssh.port} ${nodes.map(n => n.label).join(',')}`
  let p = discovered.get(key)
  if (!p) {
    p = Promise.all(nodes.map(n => onNode(c, n, o, async t => parseFacts(n, (await t.run(clusterCommands.facts(c.cluster?.iface), { timeout: 30 })).stdout))))
    discovered.set(key, p)
    p.catch(() => discovered.delete(key))
  }
  return p
}

/** Reads this node's facts again (after a change, the cached discovery is out of date). */
export async function factsOf(t: Target, c: Config, node: ClusterNode): Promise<NodeFacts> {
  return parseFacts(node, (await t.run(clusterCommands.facts(c.cluster?.iface), { timeout: 30 })).stdout)
}
