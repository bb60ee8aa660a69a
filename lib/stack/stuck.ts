// Containers in a state the swap cannot start from: paused (a hung app, or `docker pause`
// by mistake), exited or OOM-killed with no restart policy, restarting in a loop, created
// but never started, an accessory or nginx stopped or removed by hand. compose cannot
// start a paused container, and `up --scale` counts stopped containers as existing ones
// (and would start the old version's), so each needs its own handling before a rollout:
//   paused                              -> unpause (it comes back as it was)
//   web or worker, not running          -> remove: the rollout starts fresh ones
//   accessory or nginx, stopped/missing -> start it (compose up, its volume kept)
//   accessory or nginx restarting       -> left to docker, named (its own fault to read)
// Swarm keeps its tasks in the wanted state itself: on a cluster this step has nothing to do.
import { sh } from '../sh.ts'
import type { Step, Target } from '../steps.ts'
import { accessories, released, PROXY_SERVICE } from './model.ts'
import { live, readReleases } from './releases.ts'
import { parseContainers, stackCommands, type Container, type Stack } from './stack.ts'

export interface Detail { exitCode: number; oomKilled: boolean; restarts: number; startedAt: number }

/**
 * A crash loop shows as "running" for the instant between restarts: a container docker
 * restarted LOOP_RESTARTS times or more that came up under LOOP_SECONDS ago counts as
 * restarting. One restart is not a loop: a replica that crashed once and serves again stays.
 */
const LOOP_SECONDS = 10
const LOOP_RESTARTS = 3
/** `docker compose run` containers (project-service-run-id) carry the service's label but are not the service. */
const ONE_OFF = /-run-[0-9a-f]{12}$/
export type Action = 'unpause' | 'remove' | 'start' | 'leave'
export interface Stuck { service: string; container?: string; state: string; action: Action }

export const stuckCommands = {
  /**
   * In one round trip: the stack's containers (stackCommands.containers), a "--" line, the
   * host's clock (epoch seconds), then "name|exit code|OOM-killed|restart count|started at"
   * per container.
   */
  states: (st: Stack) => `${stackCommands.containers(st)}; echo --; date +%s; ` +
    sh`ids=$(docker ps -aq --filter ${`label=com.docker.compose.project=${st.project}`}); ` +
    `[ -z "$ids" ] || docker inspect -f '{{.Name}}|{{.State.ExitCode}}|{{.State.OOMKilled}}|{{.RestartCount}}|{{.State.StartedAt}}' $ids`,
  unpause: (names: string[]) => sh`docker unpause ${names} >/dev/null`,
  remove: (names: string[]) => sh`docker rm -f ${names} >/dev/null`,
}

/** The details, and the host's clock in ms (its own: this machine's may be off). */
export function parseDetails(stdout: string): { now: number; details: Map<string, Detail> } {
  const [clock, ...lines] = stdout.split('\n').filter(Boolean)
  return {
    now: Number(clock) * 1000,
    details: new Map(lines.map(l => {
      const [name, code, oom, restarts, started = ''] = l.split('|')
      return [name.replace(/^\//, ''), { exitCode: Number(code), oomKilled: oom === 'true', restarts: Number(restarts), startedAt: Date.parse(started) || 0 }]
    })),
  }
}

/** The containers as they are: one in a crash loop shows restarting even in its instant of running. */
export function settled(cs: Container[], { now, details }: ReturnType<typeof parseDetails>): Container[] {
  return cs.map(c => {
    const d = details.get(c.name)
    return c.state === 'running' && d && d.restarts >= LOOP_RESTARTS && now - d.startedAt < LOOP_SECONDS * 1000 ? { ...c, state: 'restarting' } : c
  })
}

/** The stack's containers with crash loops shown as such, and each one's details. */
export async function containerStates(t: Target, st: Stack): Promise<{ cs: Container[]; details: Map<string, Detail> }> {
  const out = (await t.run(stuckCommands.states(st), { timeout: 30 })).stdout
  const cut = out.indexOf('\n--\n')
  const raw = parseContainers(cut < 0 ? out : out.slice(0, cut))
  const parsed = parseDetails(cut < 0 ? '' : out.slice(cut + 4))
  return { cs: settled(raw, parsed), details: parsed.details }
}

/** A container's state as an operator reads it: "paused", "exited 137, OOM-killed", "restarting (4 restarts)". */
export function stateOf(c: Container, d?: Detail): string {
  if (c.state === 'exited' || c.state === 'dead') return `${c.state}${d ? ` ${d.exitCode}${d.oomKilled ? ', OOM-killed' : ''}` : ''}`
  if (c.state === 'restarting') return `restarting in a loop${d ? ` (${d.restarts} restarts${d.oomKilled ? ', OOM-killed' : ''})` : ''}`
  return c.state
}

/**
 * What stands between the stack and a rollout, given its containers; `deployed`: a release
 * is live, so an accessory or nginx with no container at all was removed and is started;
 * `only`: the services the run replaces (rotate-secret's one), the others' containers are
 * named but left.
 */
export function stuckOf(st: Stack, all: Container[], details: Map<string, Detail>, deployed: boolean, only?: string[]): Stuck[] {
  const out: Stuck[] = []
  const cs = all.filter(c => !ONE_OFF.test(c.name))
  const swapped = new Set(released(st.model).map(s => s.name).filter(s => !only || only.includes(s)))
  const kept = [...accessories(st.model).map(s => s.name), PROXY_SERVICE]
  for (const c of cs) {
    if (c.state === 'running') continue
    const state = stateOf(c, details.get(c.name))
    if (c.state === 'paused') out.push({ service: c.service, container: c.name, state, action: 'unpause' })
    else if (swapped.has(c.service)) out.push({ service: c.service, container: c.name, state, action: 'remove' })
    else if (kept.includes(c.service)) out.push({ service: c.service, container: c.name, state, action: c.state === 'restarting' ? 'leave' : 'start' })
    else out.push({ service: c.service, container: c.name, state, action: 'leave' })
  }
  if (deployed) {
    for (const s of kept) if (!cs.some(c => c.service === s)) out.push({ service: s, state: 'removed', action: 'start' })
  }
  return out
}

const VERB: Record<Action, [string, string]> = { unpause: ['unpause', 'unpaused'], remove: ['remove', 'removed'], start: ['start', 'started'], leave: ['leave to docker', 'left to docker'] }
export const describeStuck = (s: Stuck) => `${s.container ?? s.service} ${s.state}`

/** "unpause app-app-1 (paused), remove app-app-2 (exited 137, OOM-killed), start db (removed)"; `done`: in the past tense. */
export const planText = (ss: Stuck[], done = false) => ss.map(s => `${VERB[s.action][done ? 1 : 0]} ${s.container ?? s.service} (${s.state})`).join(', ')

export async function stuckContainers(t: Target, st: Stack, only?: string[]): Promise<Stuck[]> {
  const [{ cs, details }, rs] = await Promise.all([containerStates(t, st), readReleases(t, st)])
  return stuckOf(st, cs, details, Boolean(live(rs)), only)
}

/** `only`: the services the run replaces (rotate-secret); by default every web and worker service. */
export function unstuckStep(st: Stack, only?: string[]): Step<Stuck[]> {
  return {
    title: 'Containers in a state to swap from',
    async check(t) {
      if (st.config.cluster) return { skip: 'Swarm keeps its tasks running itself' }
      const stuck = await stuckContainers(t, st, only)
      const todo = stuck.filter(s => s.action !== 'leave')
      const left = stuck.filter(s => s.action === 'leave').map(describeStuck)
      if (!todo.length) return left.length ? { done: true, detail: `left as they are: ${left.join(', ')}` } : { done: true }
      return { done: false, change: planText(todo), plan: todo }
    },
    async apply(t, todo, log) {
      const names = (a: Action) => todo.filter(s => s.action === a && s.container).map(s => s.container!)
      // allowFail: one unpaused meanwhile is what was wanted; the swap names any that stays stuck.
      if (names('unpause').length) await t.run(stuckCommands.unpause(names('unpause')), { allowFail: true, timeout: 60 })
      if (names('remove').length) await t.run(stuckCommands.remove(names('remove')), { timeout: 120 })
      // Accessories first and healthy (the app needs its database), then nginx.
      const start = [...new Set(todo.filter(s => s.action === 'start').map(s => s.service))]
      const acc = start.filter(s => s !== PROXY_SERVICE)
      if (acc.length) await t.run(stackCommands.compose(st, sh`up -d --no-deps --no-recreate --wait --wait-timeout 120 ${acc}`), { onOutput: log, timeout: 180 })
      if (start.includes(PROXY_SERVICE)) await t.run(stackCommands.compose(st, sh`up -d --no-deps --no-recreate ${PROXY_SERVICE}`), { onOutput: log, timeout: 120 })
      return planText(todo, true)
    },
  }
}
