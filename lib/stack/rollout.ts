// Zero-downtime replacement of the app containers, as docker-rollout does it but with
// nginx told exactly which containers to use:
//   1. start the new version's containers beside the old ones (compose --scale, --no-recreate)
//   2. wait until each answers its health URL; if one does not in time, remove the new
//      ones: nginx never saw them and the old version keeps serving
//   3. point nginx's upstream at the new containers (nginx -t, then a graceful reload:
//      old workers finish the requests they hold)
//   4. give the old containers DRAIN_SECONDS, then SIGTERM them (the app drains) and remove
//   5. write the new version into .env, so compose's view matches what runs
import { fileCommands } from '../host/files.ts'
import { HostError } from '../errors.ts'
import { sh } from '../sh.ts'
import { files, parseContainers, renderEnv, renderProxy, stackCommands, type AppContainer, type Stack } from './stack.ts'
import type { Target } from '../steps.ts'

export class UnhealthyRelease extends HostError {}

export async function appContainers(t: Target, st: Stack): Promise<AppContainer[]> {
  return parseContainers((await t.run(stackCommands.appContainers(st), { timeout: 30 })).stdout)
}

export async function rollout(t: Target, st: Stack, version: string, log: (l: string) => void): Promise<void> {
  const old = (await appContainers(t, st)).filter(c => c.state === 'running')
  const before = new Set((await appContainers(t, st)).map(c => c.name))
  log(`starting ${st.replicas} container(s) of ${version}`)
  await t.run(stackCommands.compose(st, sh`up -d --no-deps --no-recreate --scale ${`app=${old.length + st.replicas}`} app`, version), { onOutput: log, timeout: 300 })
  const fresh = (await appContainers(t, st)).filter(c => !before.has(c.name)).map(c => c.name)
  if (fresh.length !== st.replicas) throw new HostError(`expected ${st.replicas} new app container(s), compose started ${fresh.length}`)

  log(`waiting for ${fresh.join(', ')} to answer ${st.healthPath}`)
  const health = await t.run(stackCommands.waitHealthy(st, fresh, st.healthTimeout), { allowFail: true, timeout: st.healthTimeout + 60 })
  if (health.code !== 0) {
    await t.run(stackCommands.retire(fresh), { allowFail: true, timeout: 120 })
    const running = [...new Set(old.map(c => c.image.split(':').pop()))].join(', ') || 'nothing'
    throw new UnhealthyRelease(`${version} did not answer ${st.healthPath} within ${st.healthTimeout} s (${health.stderr.trim().split('\n').pop()}); its containers were removed and ${running} keeps serving`)
  }

  log('switching nginx to the new containers')
  await t.run(stackCommands.switchProxy(st), { stdin: renderProxy(st, fresh), timeout: 60 })
  if (old.length) {
    log(`draining ${old.map(c => c.name).join(', ')} for ${st.drainSeconds} s`)
    await new Promise(r => setTimeout(r, st.drainSeconds * 1000))
    await t.run(stackCommands.retire(old.map(c => c.name)), { timeout: 120 })
  }
  await t.run(fileCommands.install(files(st).env), { stdin: renderEnv(st, version), timeout: 30 })
}

/** The version the running app containers have, if they all have the same one. */
export function runningVersion(st: Stack, cs: AppContainer[]): string | undefined {
  const running = cs.filter(c => c.state === 'running')
  const versions = new Set(running.map(c => (c.image.startsWith(`${st.image}:`) ? c.image.slice(st.image.length + 1) : '?')))
  return running.length === st.replicas && versions.size === 1 ? [...versions][0] : undefined
}
