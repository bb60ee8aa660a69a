// ENGINE=swarm: the stack as a Docker Swarm stack on the cluster (lib/host/cluster.ts),
// deployed from the first node. The same zero-downtime swap as on one host (rollout.ts):
// every web service has two slots, here two Swarm services NAME_a and NAME_b (dnsrr:
// their DNS name answers with their tasks' addresses, spread over the nodes). A release
// starts in the idle slot; once every task answers its health path, probed from nginx's
// own container over the overlay network (as nginx will reach it), a file flips nginx to
// it (read per request: no reload), the old slot drains, then goes. Workers are one
// Swarm service each, updated start-first. Accessories (PostgreSQL, Redis) run on the
// data node, where their volumes are; nginx on the edge node, publishing its ports there
// only: Swarm's ingress mesh and VIPs need IPVS and drop requests during updates.
import { parse as parseYaml, stringify } from 'yaml'
import { HostError, UsageError } from '../errors.ts'
import { fileCommands } from '../host/files.ts'
import { LABELS } from '../host/cluster.ts'
import { sh } from '../sh.ts'
import type { Step, Target } from '../steps.ts'
import { accessories, interpolateTree, released, versionOf, webServices, workers, PROXY_SERVICE, type ServiceModel } from './model.ts'
import { ACME_ROOT, otherSlot, renderRoutes, slotFlag, slotServiceName, TLS_DIR, type Slot } from './routes.ts'
import { live, readReleases } from './releases.ts'
import { certificatePath, files, owned, type Stack } from './stack.ts'

export class UnhealthySwarmRelease extends HostError {}

/** The stack file docker stack deploy reads (fully rendered: stack deploy reads no .env). */
export const swarmFile = (st: Stack) => owned(st, 'swarm.yml', '0600')
export const clusterNetwork = (st: Stack) => `${st.project}_cluster`

/** What the cluster runs: per web service, the version in each slot; the workers' version. */
/** workers undefined: none rendered (a first start's accessories-first deploy). */
export interface SwarmWant { web: Map<string, Partial<Record<Slot, string>>>; workers?: string }

/** Refusals before any host is contacted: what this engine does not do yet. */
export function checkSwarmStack(st: Stack): void {
  const c = st.config
  if (c.backup.pitr) throw new UsageError(`PITR=on in ${c.file}: point-in-time recovery on a cluster (ENGINE=swarm) is not built yet.`)
  const doc = parseYaml(st.composeText, { merge: true }) as { services: Record<string, Record<string, unknown>> }
  for (const [name, raw] of Object.entries(doc.services)) {
    if (raw.ports !== undefined) throw new UsageError(`${st.model.file}, service ${name}, ports: on a cluster only opsbook's nginx publishes ports (on the edge node); remove them.`)
    for (const v of Array.isArray(raw.volumes) ? raw.volumes : []) {
      const source = typeof v === 'string' ? v.split(':')[0] : String((v as Record<string, unknown>).source ?? '')
      if (/^[./~]/.test(source)) throw new UsageError(`${st.model.file}, service ${name}, volumes: the bind mount ${source} would point at a different directory on each node; use a named volume.`)
    }
  }
}

const DROP = ['restart', 'depends_on', 'container_name', 'build', 'ports', 'networks', 'links']

/**
 * Interpolated once, by opsbook: every $ left (e.g. "$$POSTGRES_USER" became "$POSTGRES_USER",
 * for the container's shell) is written as $$, or docker stack deploy would interpolate it
 * again from its own environment.
 */
function literal(node: unknown): unknown {
  if (typeof node === 'string') return node.replace(/\$/g, '$$$$')
  if (Array.isArray(node)) return node.map(literal)
  if (node && typeof node === 'object') return Object.fromEntries(Object.entries(node).map(([k, v]) => [k.replace(/\$/g, '$$$$'), literal(v)]))
  return node
}

/**
 * A released service with a named volume (an uploads folder, a SQLite or DuckDB file) runs
 * where its volume is: the data node, every task and both slots, so the swap is the one
 * host's (old and new tasks side by side on one volume) and backup finds the volume there.
 * Each node has its own volume of that name: spread, each task would see different files.
 * The built-in app's data volume only matters with a DuckDB file in it.
 */
export const pinnedToData = (st: Stack, s: ServiceModel) => Object.keys(s.volumes).length > 0 && !(st.builtIn && !st.config.backup.duckdbFile)
/** Where the released services' tasks run, in the step's words. */
const where = (st: Stack) => {
  const pinned = released(st.model).filter(s => pinnedToData(st, s)).map(s => s.name)
  return pinned.length ? `${pinned.join(', ')} on the data node with ${pinned.length > 1 ? 'their volumes' : 'its volume'}, the rest spread over the nodes` : 'spread over the nodes'
}
const placement = (st: Stack, s: ServiceModel) => pinnedToData(st, s) ? { constraints: [`node.labels.${LABELS.data}==true`] } : { preferences: [{ spread: 'node.id' }] }

export type ComposeDoc = { services: Record<string, unknown>; volumes?: Record<string, unknown> }

/** A service's env_file entries as paths relative to APP_DIR (a string, a list, or {path, required} items). */
export function envFilesOf(doc: ComposeDoc, service: string): string[] {
  const e = (doc.services[service] as Record<string, unknown> | undefined)?.env_file
  return (Array.isArray(e) ? e : e === undefined ? [] : [e]).map(x => String(typeof x === 'object' && x ? (x as Record<string, unknown>).path : x))
}
/** Where a slot's own copy of an env file lives: written once, when the slot starts. */
export const slotEnvFile = (slotService: string, path: string) => `env/${slotService}/${path.replace(/^\.?\//, '').replace(/\//g, '_')}`

/**
 * One service of the compose file as a Swarm service: interpolated at `version`, on opsbook's
 * overlay network. A slot (`slot` given) reads its own copies of the env files, taken when
 * it started: stack deploy re-reads env files every time, and a changed one (a rotated
 * secret, a new APP_ENV_ setting) would make Swarm replace the serving slot's tasks in place.
 */
function swarmService(st: Stack, doc: ComposeDoc, s: ServiceModel, version: string | undefined, deploy: Record<string, unknown>, slot?: string): Record<string, unknown> {
  const raw = literal(interpolateTree(doc.services[s.name], { ...st.vars, APP_VERSION: version ?? '' }, `${st.model.file}, service ${s.name}`)) as Record<string, unknown>
  for (const k of DROP) delete raw[k]
  if (slot && raw.env_file !== undefined) raw.env_file = envFilesOf(doc, s.name).map(p => slotEnvFile(slot, p))
  const given = (raw.deploy ?? {}) as Record<string, unknown>
  delete given.replicas
  return { ...raw, deploy: { ...given, endpoint_mode: 'dnsrr', ...deploy } }
}

/** The stack file for `want`: slots absent from it are removed by --prune. */
export function renderSwarmStack(st: Stack, want: SwarmWant): string {
  const doc = parseYaml(st.composeText, { merge: true }) as ComposeDoc
  const services: Record<string, unknown> = {}
  for (const s of accessories(st.model)) {
    // Its volume is on one node: the data node, always.
    services[s.name] = swarmService(st, doc, s, undefined, { replicas: 1, placement: { constraints: [`node.labels.${LABELS.data}==true`] } })
  }
  for (const s of want.workers === undefined ? [] : workers(st.model)) {
    services[s.name] = swarmService(st, doc, s, want.workers, {
      replicas: s.replicas, placement: placement(st, s),
      update_config: { order: 'start-first', parallelism: 1, failure_action: 'rollback', monitor: `${s.settle ?? 5}s` },
    })
  }
  for (const s of webServices(st.model)) {
    for (const [slot, version] of Object.entries(want.web.get(s.name) ?? {})) {
      if (version) services[slotServiceName(s.name, slot as Slot)] = swarmService(st, doc, s, version, { replicas: s.replicas, placement: placement(st, s) }, full(st, slotServiceName(s.name, slot as Slot)))
    }
  }
  // With HTTPS, as on one host: port 443 too, and the directories lego writes on this node
  // (the edge): the HTTP-01 answers, and the certificate nginx reads per handshake.
  services[PROXY_SERVICE] = {
    image: st.proxyImage,
    ports: [{ target: 80, published: st.proxyPort, protocol: 'tcp', mode: 'host' }, ...(st.tls ? [{ target: 443, published: st.tls.port, protocol: 'tcp', mode: 'host' }] : [])],
    volumes: [`${st.dir}/proxy:/etc/nginx/conf.d:ro`, ...(st.tls ? [`${st.dir}/acme:${ACME_ROOT}:ro`, `${st.dir}/tls:${TLS_DIR}:ro`] : [])],
    deploy: { replicas: 1, placement: { constraints: [`node.labels.${LABELS.edge}==true`] } },
  }
  return '# Managed by opsbook (ENGINE=swarm): rendered by deploy, update and rollback.\n' + stringify({
    services,
    ...(doc.volumes ? { volumes: doc.volumes } : {}),
    networks: { default: { name: clusterNetwork(st), driver: 'overlay', attachable: true } },
  })
}

export interface SwarmService { image: string; running: number; desired: number }
/** tls: the certificate exists on the edge node, so nginx serves HTTPS. */
export interface SwarmState { services: Map<string, SwarmService>; bSlots: Set<string>; proxy: string; tls: boolean }

// Probes every task of a slot service through Docker's DNS, from nginx's container:
// curl where the image has it (the official nginx image), else bash's /dev/tcp.
const PROBE = `name=$1 port=$2 path=$3 want=$4 deadline=$(( $(date +%s) + $5 ))
probe() {
  if command -v curl >/dev/null; then curl -fsS -m 2 -o /dev/null "http://$1:$port$path"
  else timeout 3 bash -c 'exec 3<>/dev/tcp/$0/$1 && printf "GET %s HTTP/1.0\\r\\nHost: opsbook\\r\\n\\r\\n" "$2" >&3 && read -r _ code _ <&3 && case $code in 2*) exit 0;; esac; exit 1' "$1" "$port" "$path"; fi
}
while :; do
  ips=$(getent ahostsv4 "$name" | awk '{print $1}' | sort -u)
  n=0; ok=0
  for ip in $ips; do n=$((n+1)); probe "$ip" 2>/dev/null && ok=$((ok+1)); done
  [ "$n" -ge "$want" ] && [ "$ok" -eq "$n" ] && exit 0
  [ "$(date +%s)" -ge "$deadline" ] && { echo "$ok of $want tasks answered $path ($n found)" >&2; exit 1; }
  sleep 0.5
done
`

export const swarmCommands = {
  state: (st: Stack) => [
    sh`docker service ls --filter ${`label=com.docker.stack.namespace=${st.project}`} --format 'svc\t{{.Name}}\t{{.Image}}\t{{.Replicas}}'`,
    ...webServices(st.model).map(s => sh`if [ -f ${`${st.dir}/proxy/${slotFlag(s.name)}`} ]; then printf 'b\t%s\n' ${s.name}; fi`),
    sh`printf 'proxy\t%s\n' "$(docker ps -q --filter ${`label=com.docker.swarm.service.name=${st.project}_${PROXY_SERVICE}`} | head -n 1)"`,
    sh`if [ -s ${certificatePath(st)} ]; then echo tls; fi`,
  ].join('\n'),
  /**
   * From a registry, the manager's login goes with the stack (--with-registry-auth): a task
   * Swarm moves to a node that lacks the image (a node added later) can pull it there.
   */
  deploy: (st: Stack, wait: boolean) => sh`cd ${st.dir} && docker stack deploy --prune --detach=${wait ? 'false' : 'true'} ` +
    (st.config.stack.imageSource === 'registry' ? '--with-registry-auth ' : '') + sh`-c swarm.yml ${st.project} 2>&1`,
  flip: (st: Stack, flips: Map<string, Slot>) => [...flips].map(([s, slot]) => (slot === 'b' ? sh`touch ${`${st.dir}/proxy/${slotFlag(s)}`}` : sh`rm -f ${`${st.dir}/proxy/${slotFlag(s)}`}`)).join(' && '),
  /** Exits 0 once every task of the slot service answers (script on stdin). */
  probe: (proxy: string, name: string, s: ServiceModel, timeout: number) => sh`docker exec -i ${proxy} sh -s -- ${name} ${s.port!} ${s.health!} ${s.replicas} ${timeout}`,
  reload: (proxy: string) => sh`docker exec ${proxy} nginx -t -q && docker exec ${proxy} nginx -s reload`,
  /** Each service's last update: "NAME STATE STARTED" (empty state: never updated). */
  updates: (names: string[]) => sh`for s in ${names}; do printf '%s %s\n' "$s" "$(docker service inspect -f '{{if .UpdateStatus}}{{.UpdateStatus.State}} {{.UpdateStatus.StartedAt}}{{end}}' "$s" 2>/dev/null)"; done`,
  /** Containers of the one-host (compose) stack, on a host moving to the cluster. */
  composeRunning: (st: Stack) => sh`docker ps -q --filter ${`label=com.docker.compose.project=${st.project}`} | wc -l`,
  proxyId: (st: Stack) => sh`docker ps -q --filter ${`label=com.docker.swarm.service.name=${st.project}_${PROXY_SERVICE}`} | head -n 1`,
  /** Exits 0 when nginx's running container mounts the certificate's directory. */
  proxyMounted: (st: Stack) => `id=$(${swarmCommands.proxyId(st)}); [ -n "$id" ] && docker inspect -f '{{range .Mounts}}{{.Destination}} {{end}}' "$id" | grep -q ` + sh`${TLS_DIR}`,
  /**
   * A slot's copies of its env files: `fresh` replaces them (a slot about to start), else
   * only missing ones are made (a live slot started before slots had copies).
   */
  slotEnv: (st: Stack, copies: { slot: string; files: string[] }[], fresh: boolean) => ['set -e', ...copies.flatMap(({ slot, files }) => [
    sh`install -d -o ${st.owner} -g ${st.owner} -m 700 ${`${st.dir}/env`} ${`${st.dir}/env/${slot}`}`,
    ...files.map(f => {
      const to = `${st.dir}/${slotEnvFile(slot, f)}`
      const from = f.startsWith('/') ? f : `${st.dir}/${f}`
      // A file that is not there (an optional env_file) is an empty copy, as compose reads none.
      const copy = sh`{ if [ -f ${from} ]; then cat ${from}; fi; } | install -m 600 -o ${st.owner} -g ${st.owner} /dev/stdin ${to}`
      return fresh ? copy : sh`[ -f ${to} ] || ` + `{ ${copy}; }`
    }),
  ])].join('\n'),
  /**
   * Exits 0 once every accessory's task on this node (the data node) runs, healthy where it
   * has a health check; else, after `timeout` s, names those that are not.
   */
  accessoriesReady: (st: Stack, timeout: number) => [
    sh`deadline=$(( $(date +%s) + ${timeout} ))`,
    'while :; do',
    '  down=""',
    ...accessories(st.model).map(s => sh`  docker ps --filter ${`label=com.docker.swarm.service.name=${full(st, s.name)}`} --format '{{.Status}}' | grep -q ${s.healthcheck ? '(healthy)' : '^Up'} || down="$down ${full(st, s.name)}"`),
    '  [ -z "$down" ] && exit 0',
    '  [ "$(date +%s)" -ge "$deadline" ] && { echo "not ready:$down" >&2; exit 1; }',
    '  sleep 0.5',
    'done',
  ].join('\n'),
  /** stale=1 when the live slot's own copy of `file` (APP_DIR/…) differs from it; running=1 when it runs. */
  staleOn: (st: Stack, service: string, file: string) => {
    const slot = (x: Slot) => full(st, slotServiceName(service, x))
    const copy = (x: Slot) => `${st.dir}/${slotEnvFile(slot(x), file.slice(st.dir.length + 1))}`
    return [
      sh`if [ -f ${`${st.dir}/proxy/${slotFlag(service)}`} ]; then s=${slot('b')}; c=${copy('b')}; else s=${slot('a')}; c=${copy('a')}; fi`,
      'n=0; total=0',
      sh`if docker service inspect "$s" >/dev/null 2>&1; then total=1; cmp -s "$c" ${file} || n=1; fi`,
      'echo "stale=$n"; echo "running=$total"',
    ].join('\n')
  },
  /** The IDs of a service's running containers on this node (a web service: both slots). */
  containers: (st: Stack, service: string) => {
    const each = swarmNames(st, service).map(n => sh`docker ps -q --filter ${`label=com.docker.swarm.service.name=${n}`}`)
    return each.length > 1 ? `{ ${each.join('; ')}; }` : each[0]
  },
  /** `args` run by docker exec in the service's first container on this node (one group: pipes and redirections apply to it). */
  exec: (st: Stack, service: string, args: string, flags: string[]) =>
    `{ c=$(${swarmCommands.containers(st, service)} | head -n 1); ` + sh`[ -n "$c" ] || { echo ${`${st.project}_${service} has no running container on this node (the data node): see docker service ps ${st.project}_${service}`} >&2; exit 3; }; ` +
    'docker exec -i ' + (flags.length ? sh`${flags} ` : '') + '"$c" ' + args + '; }',
  /**
   * Every Swarm service of these (a web service's slots too) scaled to `replicas`, or back
   * to what the stack file says, waiting until their tasks have stopped or started.
   */
  scale: (st: Stack, services: string[], replicas?: number) => [
    'set --',
    sh`names=$(docker service ls --filter ${`label=com.docker.stack.namespace=${st.project}`} --format '{{.Name}}') || exit 1`,
    'for s in $names; do case "$s" in',
    ...services.map(name => {
      const s = st.model.services.find(x => x.name === name)
      const n = replicas ?? (s && released(st.model).includes(s) ? s.replicas : 1)
      return `  ${swarmNames(st, name).map(x => sh`${x}`).join('|')}) set -- "$@" "$s=${n}";;`
    }),
    'esac; done',
    '[ $# -eq 0 ] || docker service scale --detach=false "$@" >/dev/null',
  ].join('\n'),
}

/** The Swarm services that run a service of the compose file: a web service's are its two slots. */
const swarmNames = (st: Stack, service: string) => (webServices(st.model).some(s => s.name === service)
  ? (['a', 'b'] as Slot[]).map(slot => `${st.project}_${slotServiceName(service, slot)}`)
  : [`${st.project}_${service}`])

export function parseSwarmState(stdout: string): SwarmState {
  const services = new Map<string, SwarmService>()
  const bSlots = new Set<string>()
  let proxy = ''
  let tls = false
  for (const line of stdout.split('\n')) {
    const f = line.split('\t')
    if (f[0] === 'svc' && f.length >= 4) {
      const m = /^(\d+)\/(\d+)/.exec(f[3])
      services.set(f[1], { image: f[2].replace(/@sha256:[0-9a-f]+$/, ''), running: m ? Number(m[1]) : 0, desired: m ? Number(m[2]) : 0 })
    } else if (f[0] === 'b') bSlots.add(f[1])
    else if (f[0] === 'proxy') proxy = f[1] ?? ''
    else if (f[0] === 'tls') tls = true
  }
  return { services, bSlots, proxy, tls }
}

export async function swarmState(t: Target, st: Stack): Promise<SwarmState> {
  return parseSwarmState((await t.run(swarmCommands.state(st), { timeout: 30 })).stdout)
}

const full = (st: Stack, name: string) => `${st.project}_${name}`
/** Docker Hub's long and short names are the same image (the service shows the one it was given). */
const short = (image: string) => image.replace(/^(docker\.io\/)?(library\/)?/, '')
export const versionIn = (s: ServiceModel, image: string) => versionOf(s, image) ?? versionOf({ ...s, image: short(s.image) }, short(image))
const liveSlotOf = (state: SwarmState, s: string): Slot => (state.bSlots.has(s) ? 'b' : 'a')

/** The version a service of the stack runs, if it runs one with all its replicas. */
function runs(st: Stack, state: SwarmState, s: ServiceModel, name: string): string | undefined {
  const x = state.services.get(full(st, name))
  return x && x.desired === s.replicas && x.running === s.replicas ? versionIn(s, x.image) : undefined
}

/** No web service has a second slot running beside its live one. */
const onlyServing = (st: Stack, state: SwarmState) => webServices(st.model).every(s => !state.services.has(full(st, slotServiceName(s.name, otherSlot(liveSlotOf(state, s.name))))))

/** The version serving on every web service's live slot and run by every worker, if one. */
export function swarmVersion(st: Stack, state: SwarmState): string | undefined {
  const vs = new Set([
    ...webServices(st.model).map(s => runs(st, state, s, slotServiceName(s.name, liveSlotOf(state, s.name)))),
    ...workers(st.model).map(s => runs(st, state, s, s.name)),
  ])
  return vs.size === 1 ? [...vs][0] : undefined
}

/** The stack file the cluster was last deployed from ('' before the first deploy). */
const readDeployed = async (t: Target, st: Stack) => (await t.run(fileCommands.read(swarmFile(st).path, ''), { timeout: 30 })).stdout

async function writeStack(t: Target, st: Stack, want: SwarmWant) {
  // Swarm refuses a task whose bind-mount source is missing (compose would make it).
  if (st.tls) await t.run(sh`install -d -o ${st.owner} -g ${st.owner} -m 755 ${`${st.dir}/acme`} ${`${st.dir}/tls`}`, { timeout: 30 })
  await t.run(fileCommands.install(swarmFile(st)), { stdin: renderSwarmStack(st, want), timeout: 30 })
}

/** nginx's routes as they should be (HTTPS once the certificate exists); nginx reloaded only if they changed and it runs. */
async function syncRoutes(t: Target, st: Stack, state: SwarmState, log: (l: string) => void): Promise<boolean> {
  const content = renderRoutes(st.model, st.tls && { active: state.tls, port: st.tls.port, hstsMaxAge: st.tls.hstsMaxAge, csp: st.tls.csp }, { project: st.project })
  const cur = await t.run(fileCommands.read(files(st).routes.path, ''), { timeout: 30 })
  if (cur.stdout === content) return false
  await t.run(sh`install -d -o ${st.owner} -g ${st.owner} -m 755 ${`${st.dir}/proxy`}`, { timeout: 30 })
  await t.run(fileCommands.install(files(st).routes), { stdin: content, timeout: 30 })
  // The one-host engine's upstream files (a host moved to the cluster): nothing routes to them now.
  await t.run(sh`rm -f ${st.dir}/proxy/upstream-*.conf`, { timeout: 30 })
  if (!state.proxy) return false
  log('nginx routes changed: one graceful reload')
  await t.run(swarmCommands.reload(state.proxy), { timeout: 30 })
  return true
}

/** tls.ts on a cluster: nginx's routes as they should be now; true when nginx reloaded. */
export async function swarmSyncProxy(t: Target, st: Stack, log: (l: string) => void): Promise<boolean> {
  return syncRoutes(t, st, await swarmState(t, st), log)
}

/**
 * tls.ts on a cluster, once: nginx started again as the stack file now describes it (port
 * 443, the certificate's directories), everything else as it runs. Swarm replaces its one
 * task, so port 80 is closed for the moment it takes (as compose's recreate is on one host).
 */
export async function swarmRecreateProxy(t: Target, st: Stack, log: (l: string) => void): Promise<void> {
  const state = await swarmState(t, st)
  const now = runningWant(st, state)
  const deployed = await readDeployed(t, st)
  // Only nginx may change here: any other service whose settings differ would be replaced in place, with no swap.
  if (deployed && withoutProxy(deployed) !== withoutProxy(renderSwarmStack(st, now))) {
    throw new UsageError(`the settings here differ from what the cluster runs (${swarmFile(st).path}) in more than nginx: run update.ts --version ${swarmVersion(st, state) ?? 'LIVE'} first (it applies them without downtime), then deploy again for HTTPS`)
  }
  await writeStack(t, st, now)
  await t.run(swarmCommands.deploy(st, false), { onOutput: log, timeout: 300 })
  // Done once nginx runs with the certificate's directory (a task that was only restarting keeps its ID).
  for (let i = 0; i < 240; i++) {
    if ((await t.run(swarmCommands.proxyMounted(st), { allowFail: true, timeout: 30 })).code === 0) return
    await new Promise(r => setTimeout(r, 500))
  }
  throw new HostError(`nginx (${st.project}_${PROXY_SERVICE}) did not start again with HTTPS on the edge node within 120 s: see docker service ps ${st.project}_${PROXY_SERVICE} on it.`)
}

/** nginx's service in a stack file, as text: when it changes, Swarm replaces nginx's task. */
const proxyOf = (text: string) => JSON.stringify((parseYaml(text) as ComposeDoc | null)?.services?.[PROXY_SERVICE] ?? null)
/** A stack file without nginx's service, as text. */
const withoutProxy = (text: string) => { const d = (parseYaml(text) ?? {}) as ComposeDoc; delete d.services?.[PROXY_SERVICE]; return JSON.stringify(d) }

/** nginx's running container on the edge; `not`: one other than that (Swarm replaces it when its definition changed). */
async function proxyContainer(t: Target, st: Stack, timeoutS: number, not?: string): Promise<string> {
  for (let i = 0; i < timeoutS * 2; i++) {
    const id = (await t.run(swarmCommands.proxyId(st), { timeout: 30 })).stdout.trim()
    if (id && id !== not) return id
    await new Promise(r => setTimeout(r, 500))
  }
  throw new HostError(`nginx (${st.project}_${PROXY_SERVICE}) did not start on the edge node within ${timeoutS} s: see docker service ps ${st.project}_${PROXY_SERVICE} on it.`)
}

/** What runs now: each web service's live slot at its version; the workers' version (undefined: none runs). */
function runningWant(st: Stack, state: SwarmState): SwarmWant {
  return {
    web: new Map(webServices(st.model).map(s => {
      const slot = liveSlotOf(state, s.name)
      const v = versionIn(s, state.services.get(full(st, slotServiceName(s.name, slot)))?.image ?? '')
      return [s.name, v ? { [slot]: v } : {}]
    })),
    workers: workers(st.model).map(s => versionIn(s, state.services.get(full(st, s.name))?.image ?? '')).find(Boolean),
  }
}

const accessoriesReady = async (t: Target, st: Stack) => !accessories(st.model).length || (await t.run(swarmCommands.accessoriesReady(st, 0), { allowFail: true, timeout: 30 })).code === 0

/**
 * The accessories started on the data node, beside what runs now (workers that do not run
 * yet wait too: they need the accessories as much as the app), and waited for; `then` says
 * what did not happen when they do not come up.
 */
async function startAccessories(t: Target, st: Stack, state: SwarmState, log: (l: string) => void, then: string) {
  log(`starting ${accessories(st.model).map(s => s.name).join(', ')} first, on the data node`)
  await writeStack(t, st, runningWant(st, state))
  await t.run(swarmCommands.deploy(st, false), { onOutput: log, timeout: 300 })
  const r = await t.run(swarmCommands.accessoriesReady(st, 120), { allowFail: true, timeout: 180 })
  if (r.code !== 0) throw new HostError(`${r.stderr.trim().replace(/^not ready: ?/, '')} did not start healthy on the data node within 120 s: see docker service ps and docker service logs there; ${then}.`)
}

/** A host moving to the cluster: its compose stack holds port 80 and the volumes' files (a second PostgreSQL on them would ruin them). */
async function refuseComposeRunning(t: Target, st: Stack) {
  if (Number((await t.run(swarmCommands.composeRunning(st), { timeout: 30 })).stdout.trim()) > 0) {
    throw new HostError(`the one-host stack ${st.project} still runs on ${t.name}: stop it there with "cd ${st.dir} && docker compose down" (without -v: its volumes stay, and the cluster's services use them), then run this again.`)
  }
}

/**
 * A cluster's accessories running before what needs them first: the migration, in a
 * one-off container on the stack's network. (The rollout starts them too, when a deploy has
 * no migration.) Only started when they are not, as on one host, and never by a stack
 * deploy that would change a serving slot in place.
 */
export function swarmAccessoriesStep(st: Stack): Step {
  const names = accessories(st.model).map(s => s.name)
  return {
    title: `Accessories running on the data node (${names.join(', ') || 'none'})`,
    async check(t) {
      if (!names.length) return { skip: 'the compose file has none' }
      if (await accessoriesReady(t, st)) return { done: true }
      // A compose stack's own PostgreSQL may hold the volume even where a cluster's nginx runs.
      await refuseComposeRunning(t, st)
      const state = await swarmState(t, st)
      const want = renderSwarmStack(st, runningWant(st, state))
      const deployed = await readDeployed(t, st)
      if (deployed && deployed !== want && [...state.services.keys()].some(n => n !== full(st, PROXY_SERVICE) && !accessories(st.model).some(a => full(st, a.name) === n))) {
        throw new HostError(`${names.join(', ')} ${names.length > 1 ? 'are' : 'is'} not running on the data node, and the settings here differ from what the cluster runs (${swarmFile(st).path}): starting ${names.length > 1 ? 'them' : 'it'} with these settings would change the serving services in place. See docker service ps there, or run update.ts, which applies new settings without downtime.`)
      }
      return { done: false, change: `start ${names.join(', ')}` }
    },
    async apply(t, _, log) {
      const state = await swarmState(t, st)
      // nginx starts with them: its routes first, as the rollout has them.
      await syncRoutes(t, st, state, log)
      await startAccessories(t, st, state, log, 'nothing else was started')
    },
  }
}

/**
 * Puts `version` on the cluster: into the idle slot of every web service (the live one on
 * a first deploy), health-gated, then nginx flipped, the old slot drained and removed, and
 * the workers updated start-first. An unhealthy version is removed; the old one serves on.
 */
export async function swarmRollout(t: Target, st: Stack, version: string, log: (l: string) => void): Promise<string> {
  const [state, deployed] = await Promise.all([swarmState(t, st), readDeployed(t, st)])
  const webs = webServices(st.model)
  const plan = new Map(webs.map(s => {
    const liveSlot = liveSlotOf(state, s.name)
    const live = state.services.get(full(st, slotServiceName(s.name, liveSlot)))
    const cur = live && versionIn(s, live.image)
    // Never replace the serving slot in place: a live slot whose version is unknown is refused.
    if (live && cur === undefined) throw new HostError(`${full(st, slotServiceName(s.name, liveSlot))} runs ${live.image}, which is not a release of ${s.name} (${s.image.replace(/\u0000VERSION\u0000/, 'VERSION')}): remove it with docker service rm on the first node, or fix the image in the settings, then run again.`)
    return [s.name, { liveSlot, cur, target: live ? otherSlot(liveSlot) : liveSlot }]
  }))
  const workerNow = workers(st.model).map(s => versionIn(s, state.services.get(full(st, s.name))?.image ?? '')).find(Boolean)
  const keep = (s: string) => { const p = plan.get(s)!; return p.cur !== undefined ? { [p.liveSlot]: p.cur } : {} }
  const onlyLive: SwarmWant = { web: new Map(webs.map(s => [s.name, keep(s.name)])), workers: workerNow ?? version }
  const doc = parseYaml(st.composeText, { merge: true }) as ComposeDoc
  const envOf = (s: ServiceModel, slot: Slot) => ({ slot: full(st, slotServiceName(s.name, slot)), files: envFilesOf(doc, s.name) })
  await t.run(swarmCommands.slotEnv(st, webs.filter(s => plan.get(s.name)!.cur !== undefined).map(s => envOf(s, plan.get(s.name)!.liveSlot)), false), { timeout: 30 })
  await syncRoutes(t, st, state, log)
  // An idle slot left by a stopped run goes first: its old tasks must not pass the probe for the new version.
  const stale = webs.filter(s => state.services.has(full(st, slotServiceName(s.name, plan.get(s.name)!.target))) && plan.get(s.name)!.target !== plan.get(s.name)!.liveSlot)
  if (stale.length) {
    log(`removing ${stale.map(s => full(st, slotServiceName(s.name, plan.get(s.name)!.target))).join(', ')}, left by an earlier run`)
    await writeStack(t, st, onlyLive)
    await t.run(swarmCommands.deploy(st, false), { onOutput: log, timeout: 300 })
    await t.run(sh`for s in ${stale.map(s => full(st, slotServiceName(s.name, plan.get(s.name)!.target)))}; do while docker ps -q --filter "label=com.docker.swarm.service.name=$s" | grep -q .; do sleep 0.5; done; done`, { timeout: 120 })
  }
  // As compose's depends_on (service_healthy) on one host: the app starts once PostgreSQL and
  // the other accessories answer. An app whose first connection fails may never recover.
  if (!(await accessoriesReady(t, st))) await startAccessories(t, st, state, log, `${version} was not started`)
  // The new slot reads the env files as they are now (a rotated secret included), and keeps that copy.
  await t.run(swarmCommands.slotEnv(st, webs.map(s => envOf(s, plan.get(s.name)!.target)), true), { timeout: 30 })
  const want: SwarmWant = { web: new Map(webs.map(s => [s.name, { ...keep(s.name), [plan.get(s.name)!.target]: version }])), workers: workerNow ?? version }
  await writeStack(t, st, want)
  log(`starting ${webs.map(s => `${s.replicas} ${s.name} in slot ${plan.get(s.name)!.target}`).join(', ')} (${version})`)
  await t.run(swarmCommands.deploy(st, false), { onOutput: log, timeout: 300 })
  // Looked up after the deploy: a changed nginx service (image, port, HTTPS) gets a new
  // container, and the old one, about to stop, must not be the one the probes run in.
  const proxy = await proxyContainer(t, st, 120, proxyOf(deployed) !== proxyOf(renderSwarmStack(st, want)) ? state.proxy : undefined)
  const t0 = Date.now()
  // A first start also waits for the accessories the app needs (nginx may run already: the migration's accessories step starts it).
  const timeout = st.healthTimeout + ([...plan.values()].some(p => p.cur !== undefined) ? 0 : 120)
  const probes = await Promise.all(webs.map(s => t.run(swarmCommands.probe(proxy, full(st, slotServiceName(s.name, plan.get(s.name)!.target)), s, timeout), { stdin: PROBE, allowFail: true, timeout: timeout + 60 })))
  const bad = probes.findIndex(p => p.code !== 0)
  if (bad >= 0) {
    await writeStack(t, st, onlyLive)
    await t.run(swarmCommands.deploy(st, false), { allowFail: true, timeout: 300 })
    // The copies it was started with (a staged secret among them) go with it.
    await t.run(sh`rm -rf ${webs.map(s => `${st.dir}/env/${full(st, slotServiceName(s.name, plan.get(s.name)!.target))}`)}`, { allowFail: true, timeout: 30 })
    const serving = [...new Set([...plan.values()].map(p => p.cur).filter(Boolean))].join(', ') || 'nothing'
    throw new UnhealthySwarmRelease(`${version}'s ${webs[bad].name} did not answer ${webs[bad].health} within ${timeout} s (${probes[bad].stderr.trim().split('\n').pop()}); its service was removed and ${serving} keeps serving`)
  }
  const healthy = `healthy in ${((Date.now() - t0) / 1000).toFixed(1)} s`
  const flips = new Map([...plan].filter(([, p]) => p.target !== p.liveSlot).map(([s, p]) => [s, p.target]))
  if (flips.size) {
    log(`${healthy}; switching nginx to slot ${[...flips.values()].join(', ')}`)
    await t.run(swarmCommands.flip(st, flips), { timeout: 30 })
    log(`draining the old slot for ${st.drainSeconds} s`)
    await new Promise(r => setTimeout(r, st.drainSeconds * 1000))
  }
  const hasWorkers = workers(st.model).length > 0
  if (flips.size || hasWorkers) log([flips.size ? 'removing the old slot' : '', hasWorkers ? `${flips.size ? 'updating' : 'starting'} the workers${flips.size ? ' start-first' : ''}` : ''].filter(Boolean).join(', '))
  const workerNames = workers(st.model).map(s => full(st, s.name))
  const updates = async () => (workerNames.length ? (await t.run(swarmCommands.updates(workerNames), { timeout: 30 })).stdout.split('\n') : [])
  const before = new Set(await updates())
  await writeStack(t, st, { web: new Map(webs.map(s => [s.name, { [plan.get(s.name)!.target]: version }])), workers: version })
  // Waiting for convergence is for the workers' start-first update; removing a slot needs no wait.
  const last = await t.run(swarmCommands.deploy(st, workerNames.length > 0), { onOutput: log, allowFail: true, timeout: 600 })
  // Only an update this run started counts: Swarm keeps a past rollback's state until the next update.
  const back = (await updates()).filter(l => !before.has(l) && / rollback_completed /.test(l)).map(l => l.split(' ')[0])
  if (back.length) throw new UnhealthySwarmRelease(`Swarm rolled back the update of ${back.join(', ')} to ${version} (its new tasks did not stay up); the web services serve ${version}: run update again once fixed, or rollback.ts`)
  if (last.code !== 0) throw new HostError(`docker stack deploy failed: ${last.stdout.trim().split('\n').slice(-2).join(' | ')}`)
  // The old slots' copies of the env files (secrets among them): their services are gone.
  const old = webs.filter(s => flips.has(s.name)).map(s => `${st.dir}/env/${full(st, slotServiceName(s.name, plan.get(s.name)!.liveSlot))}`)
  if (old.length) await t.run(sh`rm -rf ${old}`, { timeout: 30 })
  return `${healthy}, ${flips.size ? 'nginx switched slots without a reload' : 'first start'}, ${where(st)}`
}

/**
 * rotate-secret on a cluster: the web services started again at the live `version` (new
 * slots, so they read the env files as they are now), nothing else. Refused when the
 * settings here would change more than that (an image, replicas): update.ts applies those.
 */
export async function swarmRestart(t: Target, st: Stack, version: string, log: (l: string) => void): Promise<string> {
  const state = await swarmState(t, st)
  const now = runningWant(st, state)
  const deployed = await readDeployed(t, st)
  if (deployed !== renderSwarmStack(st, now)) {
    throw new UsageError(`the settings here differ from what the cluster runs (${swarmFile(st).path}): run update.ts --version ${version} first (it applies them without downtime), then rotate again`)
  }
  return swarmRollout(t, st, version, log)
}

/** update and rollback on a cluster: done when every live slot and worker runs `version`. */
export function swarmRolloutStep(st: Stack, version: string, record: { live(t: Target, how: string): Promise<void>; failed(t: Target, e: Error): Promise<void> }, opts: { rollback?: boolean; first?: boolean } = {}): Step<{ record: boolean }> {
  return {
    title: `${opts.first ? 'Start' : opts.rollback ? 'Roll back to' : 'Roll out'} ${version} on the cluster (${released(st.model).map(s => `${s.replicas} ${s.name}`).join(', ')}, ${where(st)}) behind nginx`,
    prepare: () => checkSwarmStack(st),
    async check(t) {
      const [rs, state] = await Promise.all([readReleases(t, st), swarmState(t, st)])
      const cur = live(rs)?.version
      if (!opts.first && !cur) throw new UsageError(`Nothing is deployed in ${st.dir} yet: run deploy.ts first.`)
      if (opts.first && cur && cur !== version) throw new UsageError(`${st.dir} already runs ${cur}: use update.ts --version ${version} (zero downtime) or rollback.ts.`)
      const now = swarmVersion(st, state)
      if (now === version && state.proxy && cur === version) return { done: true, detail: `${version} is live` }
      // Running, but the history does not say so (a run stopped before recording it).
      if (now === version && state.proxy && onlyServing(st, state)) return { done: false, change: `record ${version} (it runs already)`, plan: { record: true } }
      if (!state.proxy) await refuseComposeRunning(t, st)
      return { done: false, change: now === undefined && !cur ? `start ${version} on the cluster` : `replace ${now ?? cur} by ${version}`, plan: { record: false } }
    },
    async apply(t, plan, log) {
      if (plan.record) { await record.live(t, 'already running'); return `${version} recorded as live (it was running already)` }
      let how: string
      try {
        how = await swarmRollout(t, st, version, log)
      } catch (e) {
        if (e instanceof UnhealthySwarmRelease) await record.failed(t, e)
        throw e
      }
      await record.live(t, how)
      return `${version} live: ${how}`
    },
  }
}
