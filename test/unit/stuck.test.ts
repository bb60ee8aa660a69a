// What a rollout cannot start from (paused, exited, restarting, removed containers), and
// what is done about each, decided from `docker ps` without a host.
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { loadConfig } from '../../lib/config.ts'
import { parseContainers, stackOf } from '../../lib/stack/stack.ts'
import { parseDetails, planText, settled, stuckCommands, stuckOf } from '../../lib/stack/stuck.ts'

const dir = join(import.meta.dirname, '..', '.tmp', 'stuck-unit')
mkdirSync(dir, { recursive: true })
writeFileSync(join(dir, '.env'), 'SSH_HOST=vps.example.com\nDB_PASSWORD=stuck-unit-pw\nAPP_REPLICAS=2\nAPP_IMAGE=opsbook/app\n')
const st = stackOf(loadConfig({ envFile: join(dir, '.env'), environ: {} }))
const ps = (rows: string[][]) => parseContainers(rows.map(r => r.join('\t')).join('\n'))

test('paused: unpaused; an exited or looping app container: removed; a stopped or removed accessory or nginx: started', () => {
  const cs = ps([
    ['app-db-1', 'postgres:16', 'exited', 'db', 'Exited (0) 3 s ago'],
    ['app-app-1', 'opsbook/app:v2', 'paused', 'app', 'Up 5 minutes (Paused)'],
    ['app-app-2', 'opsbook/app:v2', 'exited', 'app', 'Exited (137) 2 s ago'],
    ['app-app-3', 'opsbook/app:v2', 'restarting', 'app', 'Restarting (1) 1 s ago'],
  ])
  const { details } = parseDetails('1796353160\n/app-app-2|137|true|0|2026-12-04T02:58:00Z\n/app-app-3|1|false|4|2026-12-04T02:59:19.5Z\n/app-db-1|0|false|0|2026-12-04T02:00:00Z\n')
  const stuck = stuckOf(st, cs, details, true)
  assert.is(planText(stuck), 'start app-db-1 (exited 0), unpause app-app-1 (paused), remove app-app-2 (exited 137, OOM-killed), remove app-app-3 (restarting in a loop (4 restarts)), start proxy (removed)')
  assert.is(planText(stuck, true).split(', ')[0], 'started app-db-1 (exited 0)')
})

test('all running: nothing; before the first deploy a missing accessory is not "removed"', () => {
  const up = ps([['app-db-1', 'postgres:16', 'running', 'db', 'Up'], ['app-app-1', 'opsbook/app:v1', 'running', 'app', 'Up'], ['app-proxy-1', 'nginx', 'running', 'proxy', 'Up']])
  assert.equal(stuckOf(st, up, new Map(), true), [])
  assert.equal(stuckOf(st, [], new Map(), false), [])
})

test('a crash loop caught in its instant of running counts as restarting; a container restarted long ago as running', () => {
  const cs = ps([['app-app-1', 'opsbook/app:v1', 'running', 'app', 'Up Less than a second'], ['app-app-2', 'opsbook/app:v1', 'running', 'app', 'Up 2 hours']])
  const parsed = parseDetails('1796353160\n/app-app-1|1|false|6|2026-12-04T02:59:19.700000000Z\n/app-app-2|137|true|1|2026-12-04T01:00:00Z\n')
  assert.equal(settled(cs, parsed).map(c => c.state), ['restarting', 'running'])
  assert.is(planText(stuckOf(st, settled(cs, parsed), parsed.details, false)), 'remove app-app-1 (restarting in a loop (6 restarts))')
})

test('one restart is not a loop; a one-off `compose run` container is not the service; `only` leaves the other services as they are', () => {
  const cs = ps([['app-app-1', 'opsbook/app:v1', 'running', 'app', 'Up 2 seconds'], ['app-app-run-0123456789ab', 'opsbook/app:v1', 'exited', 'app', 'Exited (0)']])
  const parsed = parseDetails('1796353160\n/app-app-1|137|false|1|2026-12-04T02:59:18Z\n')
  assert.equal(settled(cs, parsed).map(c => c.state), ['running', 'exited'])
  assert.equal(stuckOf(st, settled(cs, parsed), parsed.details, false), [])
  const stopped = ps([['app-app-1', 'opsbook/app:v1', 'exited', 'app', 'Exited (1)']])
  assert.equal(stuckOf(st, stopped, new Map(), false, ['other']).map(s => s.action), ['leave'])
  assert.equal(stuckOf(st, stopped, new Map(), false, ['app']).map(s => s.action), ['remove'])
})

test('a restarting database is left to docker, named', () => {
  const cs = ps([['app-db-1', 'postgres:16', 'restarting', 'db', 'Restarting (1)'], ['app-proxy-1', 'nginx', 'running', 'proxy', 'Up']])
  assert.equal(stuckOf(st, cs, new Map(), true).map(s => s.action), ['leave'])
})

test('commands quote every name', () => {
  assert.is(stuckCommands.remove(['app-app-1', "x'y"]), `docker rm -f app-app-1 'x'\\''y' >/dev/null`)
  // One round trip: the containers, "--", the host's clock, each container's details.
  const states = stuckCommands.states(st)
  assert.ok(states.startsWith(`docker ps -a --filter label=com.docker.compose.project=${st.project} `), states)
  assert.match(states, /; echo --; date \+%s; ids=\$\(docker ps -aq --filter label=com\.docker\.compose\.project=\S+\); \[ -z "\$ids" \] \|\| docker inspect -f '\{\{\.Name\}\}\|\{\{\.State\.ExitCode\}\}\|\{\{\.State\.OOMKilled\}\}\|\{\{\.RestartCount\}\}\|\{\{\.State\.StartedAt\}\}' \$ids$/)
})

test.run()
