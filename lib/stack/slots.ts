// Where nginx finds each web service's containers: fixed addresses on opsbook's own
// network, in two slots per service (routes.ts renders them, a flag file names the
// live one). A rollout connects the new containers to the idle slot's addresses, checks
// them there, and renames the flag: nginx keeps its workers and its client connections,
// and the next request goes to the new slot. A reload (which closes every idle
// keep-alive connection, see README "Why swaps do not reload nginx") happens only when an
// address itself changes: the first rollout after an upgrade, or a new replica count.
//   network opsbook-PROJECT    a /22 in 198.18.0.0/15 (RFC 2544, never routed): the first
//                              /24 for Docker's own allocations (nginx), the rest for slots
import { HostError } from '../errors.ts'
import { raw, sh } from '../sh.ts'
import type { Target } from '../steps.ts'
import type { ServiceModel } from './model.ts'
import { otherSlot, parseUpstream, slotFlag, type Slot, type SlotAddresses } from './routes.ts'

/** What slots need to know of a stack (a Stack fits). */
export interface SlotStack { project: string; dir: string }

export const networkName = (st: SlotStack) => `opsbook-${st.project}`

export interface SlotState {
  subnet?: string
  /** Container name -> its address on opsbook's network. */
  attached: Map<string, string>
  live: Map<string, Slot>
  /** What each service's upstream file on the host names, if it is one with slots. */
  upstreams: Map<string, SlotAddresses | undefined>
  /** The upstream and routes files as they are on the host (to install only what differs). */
  files: Map<string, string>
  /** The HTTPS certificate file exists (nginx's routes then serve HTTPS). */
  tls: boolean
}

export const slotCommands = {
  /** Creates opsbook's network once, in the first free /22 of 198.18.0.0/15. */
  ensureNetwork: (st: SlotStack) => [
    sh`if ! docker network inspect ${networkName(st)} >/dev/null 2>&1; then`,
    '  for i in $(seq 0 127); do',
    '    b=$((18 + i / 64)); c=$(( (i % 64) * 4 ))',
    sh`    docker network create --driver bridge --subnet "198.$b.$c.0/22" --ip-range "198.$b.$c.0/24" --label ${`opsbook.project=${st.project}`} ${networkName(st)} >/dev/null 2>&1 && break`,
    '  done',
    sh`  docker network inspect ${networkName(st)} >/dev/null 2>&1 || { echo ${'no /22 of 198.18.0.0/15 is free for opsbook\'s network'} >&2; exit 1; }`,
    'fi',
  ].join('\n'),
  /** Subnet, attached containers, live slots and the proxy files, in one round trip. */
  state: (st: SlotStack, services: string[], files: string[]) => [
    sh`if [ -s ${`${st.dir}/tls/opsbook.pem`} ]; then echo tls; fi`,
    sh`echo "subnet $(docker network inspect ${networkName(st)} -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' 2>/dev/null)"`,
    sh`docker network inspect ${networkName(st)} -f '{{range .Containers}}attached {{.Name}} {{.IPv4Address}}{{"\\n"}}{{end}}' 2>/dev/null || true`,
    ...services.map(s => sh`if [ -e ${`${st.dir}/proxy/${slotFlag(s)}`} ]; then echo ${`live ${s} b`}; else echo ${`live ${s} a`}; fi`),
    ...files.map(f => sh`echo "file ${raw(f)} $(base64 -w0 ${`${st.dir}/proxy/${f}`} 2>/dev/null)"`),
  ].join('\n'),
  connect: (st: SlotStack, container: string, ip: string) => sh`docker network connect --ip ${ip} ${networkName(st)} ${container}`,
  /** Whatever is attached without serving (a container left by a run that died). */
  disconnect: (st: SlotStack, container: string) => sh`docker network disconnect -f ${networkName(st)} ${container}`,
  /** nginx on opsbook's network (a proxy started before slots existed is not). */
  attachProxy: (st: SlotStack, container: string) => sh`docker network connect ${networkName(st)} ${container}`,
  /** The swap itself: one file per service, created or removed (each an atomic change). */
  flip: (st: SlotStack, to: Map<string, Slot>) => [...to].map(([s, slot]) =>
    slot === 'b' ? sh`touch ${`${st.dir}/proxy/${slotFlag(s)}`}` : sh`rm -f ${`${st.dir}/proxy/${slotFlag(s)}`}`).join(' && '),
}

export function parseSlotState(stdout: string): SlotState {
  const st: SlotState = { attached: new Map(), live: new Map(), upstreams: new Map(), files: new Map(), tls: false }
  for (const line of stdout.split('\n')) {
    const [kind, a = '', b = ''] = line.split(' ')
    if (kind === 'tls') st.tls = true
    if (kind === 'subnet' && a) st.subnet = a
    if (kind === 'attached' && a && b) st.attached.set(a, b.replace(/\/\d+$/, ''))
    if (kind === 'live') st.live.set(a, b === 'b' ? 'b' : 'a')
    if (kind === 'file') st.files.set(a, Buffer.from(b, 'base64').toString('utf8'))
  }
  for (const [f, text] of st.files) {
    const m = /^upstream-(.+)\.conf$/.exec(f)
    if (m) st.upstreams.set(m[1], text ? parseUpstream(text) : undefined)
  }
  return st
}

/** `create`: make opsbook's network first if absent (apply only; checks just read). */
export async function readSlots(t: Target, st: SlotStack, services: ServiceModel[], files: string[], create: boolean): Promise<SlotState> {
  return parseSlotState((await t.run((create ? slotCommands.ensureNetwork(st) + '\n' : '') + slotCommands.state(st, services.map(s => s.name), files), { timeout: 30 })).stdout)
}

const toInt = (ip: string) => ip.split('.').reduce((n, o) => n * 256 + Number(o), 0)
const toIp = (n: number) => [24, 16, 8, 0].map(s => (n >>> s) & 255).join('.')

/** The slot addresses of a /22: all but its first /24 (Docker's), its last address (broadcast). */
export function slotRange(subnet: string): string[] {
  const [base, bits] = subnet.split('/')
  if (Number(bits) !== 22) throw new HostError(`opsbook's network has subnet ${subnet}, not the /22 opsbook made; remove the network (docker network rm) and re-run.`)
  const start = toInt(base)
  return Array.from({ length: 1024 - 256 - 1 }, (_, i) => toIp(start + 256 + i))
}

export interface SlotPlan {
  /** Per web service: its live slot now, the slot the new containers go to, both slots' addresses after. */
  services: Map<string, { live: Slot; target: Slot; ips: SlotAddresses }>
  connect: { container: string; ip: string }[]
  disconnect: string[]
}

/**
 * Addresses for the new containers of each web service in its idle slot, reusing the
 * ones nginx already has for that slot when the count matches (then nothing is reloaded).
 * `serving`: each service's running containers now; those in the live slot stay there.
 * If none is (a proxy from before slots, or containers recreated by hand), the running
 * ones are connected to the live slot first, so nginx has a live slot to swap from.
 */
export function planSlots(state: SlotState, services: ServiceModel[], serving: Map<string, string[]>, fresh: Map<string, string[]>): SlotPlan {
  if (!state.subnet) throw new HostError('opsbook\'s network has no subnet')
  const range = slotRange(state.subnet)
  const plan: SlotPlan = { services: new Map(), connect: [], disconnect: [] }
  const taken = new Set<string>([...state.attached.values()])
  for (const ips of state.upstreams.values()) for (const ip of [...(ips?.a ?? []), ...(ips?.b ?? [])]) taken.add(ip)
  const allocate = (n: number) => {
    const got = range.filter(ip => !taken.has(ip)).slice(0, n)
    if (got.length < n) throw new HostError(`opsbook's network has no ${n} free addresses left for new containers`)
    got.forEach(ip => taken.add(ip))
    return got
  }
  for (const s of services) {
    const live = state.live.get(s.name) ?? 'a'
    const target = otherSlot(live)
    const conf = state.upstreams.get(s.name)
    const running = serving.get(s.name) ?? []
    const runningIps = new Set(running.map(c => state.attached.get(c)))
    let liveIps = (conf?.[live] ?? []).filter(ip => runningIps.has(ip))
    // Attached but not live: not serving, and may hold an address the new ones need.
    for (const [c, ip] of state.attached) {
      if (running.includes(c) && !liveIps.includes(ip)) { plan.disconnect.push(c); taken.delete(ip) }
    }
    if (!liveIps.length && running.length) {
      liveIps = allocate(running.length)
      running.forEach((c, i) => plan.connect.push({ container: c, ip: liveIps[i] }))
    }
    const news = fresh.get(s.name) ?? []
    // A new container already attached (a first start re-run) is not serving: move it.
    for (const c of news) if (state.attached.has(c)) { plan.disconnect.push(c); taken.delete(state.attached.get(c)!) }
    const held = new Set([...state.attached].filter(([c]) => !plan.disconnect.includes(c)).map(([, ip]) => ip))
    const reuse = !news.length || conf?.[target].length === news.length && conf[target].every(ip => !held.has(ip))
    // No new containers: the idle slot stays as nginx has it, and is not switched to.
    const targetIps = reuse ? conf?.[target] ?? [] : allocate(news.length)
    news.forEach((c, i) => plan.connect.push({ container: c, ip: targetIps[i] }))
    // A first start: the slot it leaves idle gets addresses now, so the first rollout
    // finds them in nginx's files and needs no reload either.
    const idleIps = !liveIps.length && news.length ? (conf?.[live].length === news.length ? conf[live] : allocate(news.length)) : liveIps
    plan.services.set(s.name, { live, target, ips: { [live]: idleIps, [target]: targetIps } as SlotAddresses })
  }
  return plan
}
