// Bench (prints, never asserts): pg_dump's compression on one VPS, same run, same data
// (a generated table of ~BENCH_ROWS rows of numbers, timestamps and text, which compresses
// like a real one): the raw `pg_dump -Fc | wc -c` on the host with gzip (pg_dump's
// default) and with zstd level 1, beside backup.ts with BACKUP_COMPRESSION=gzip (the path
// before) and auto (zstd:1 on PostgreSQL 17), then restore.ts --latest on the same host
// and restore.ts --to-host onto a fresh VPS (the disaster: RTO with each phase's time).
//   npm run bench:dump            (BENCH_ROWS=8000000 makes a ~1 GB database)
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs'
import { appImage, nginxImage, postgresImage } from '../test/images.ts'
import { freshHost, runbook } from '../test/integration/helpers.ts'
import { startVps, type Vps } from '../test/testbed.ts'

const ROWS = Number(process.env.BENCH_ROWS ?? 2_500_000)
const [pg, ngx, v1] = [await postgresImage(), await nginxImage(), await appImage('v1')]
const h = await freshHost('bench-dump', { APP_IMAGE: 'opsbook/app', DB_IMAGE: pg, PROXY_IMAGE: ngx, DB_PASSWORD: 'bench-db-password', IMAGE_SOURCE: 'local', BACKUP_DIR: `${process.cwd()}/test/.tmp/bench-dump-backups` },
  { provisioned: true, images: [pg, ngx, v1] })
const variant = (name: string, line: string) => { const f = `${h.envFile}.${name}`; writeFileSync(f, readFileSync(h.envFile, 'utf8') + line + '\n'); return f }
const onDb = (cmd: string) => `cd /opt/app && docker compose -p app exec -T db ${cmd}`

function raw(args: string): { s: number; mb: number } {
  const t0 = performance.now()
  const bytes = Number(h.sh(`${onDb(`pg_dump -Fc ${args} -U app -d app`)} | wc -c`).trim())
  return { s: (performance.now() - t0) / 1000, mb: bytes / 1e6 }
}

async function timedRunbook(name: string, args: string[]): Promise<{ s: number; out: string }> {
  const t0 = performance.now()
  const r = await runbook(name, args)
  if (r.code !== 0) throw new Error(`${name} failed:\n${r.out}`)
  return { s: (performance.now() - t0) / 1000, out: r.out }
}

let fresh: Vps | undefined
try {
  const d = await runbook('deploy', ['--config', h.envFile, '--version', 'v1'])
  if (d.code !== 0) throw new Error(d.out)
  console.error(`generating ${ROWS} rows...`)
  h.sh(onDb(`psql -X -q -U app -d app -c "create table orders as select i as id, now() - i * interval '1 second' as at, (i % 977) * 1.25 as amount, md5(i::text) as ref, 'customer-' || (i % 50000) as customer, repeat('note ', 1 + i % 7) as note from generate_series(1, ${ROWS}) i"`))
  const size = h.sh(onDb(`psql -X -At -U app -d app -c "select pg_size_pretty(pg_database_size('app'))"`)).trim()
  const gz = raw(''), zs = raw('-Z zstd:1')
  const oldPath = await timedRunbook('backup', ['--config', variant('gzip', 'BACKUP_COMPRESSION=gzip'), '--yes'])
  const newPath = await timedRunbook('backup', ['--config', h.envFile, '--yes'])
  const restore = await timedRunbook('restore', ['--config', h.envFile, '--latest', '--yes'])
  // The report step's line, without listr's " ... changed".
  const rtoOf = (out: string) => /RTO \d.*?(?= \.\.\. |\n|$)/.exec(out)?.[0]?.replace(/\)$/, '') ?? ''
  const rto = rtoOf(restore.out)
  const restoredIn = /app stopped [^)]*/.exec(restore.out)?.[0] ?? ''
  fresh = await startVps('bench-dump-dr', h.key)
  appendFileSync(h.knownHosts, fresh.knownHosts)
  const dr = await timedRunbook('restore', ['--config', h.envFile, '--to-host', `127.0.0.1:${fresh.port}`, '--latest', '--yes'])
  const drRto = rtoOf(dr.out)
  console.log(`pg_dump compression, one VPS, database ${size} (${ROWS} generated rows), same run:`)
  console.log('case'.padEnd(46), 'wall s     MB')
  console.log('raw pg_dump -Fc | wc -c (gzip, the default)'.padEnd(46), gz.s.toFixed(1).padStart(6), gz.mb.toFixed(1).padStart(7))
  console.log('raw pg_dump -Fc -Z zstd:1 | wc -c'.padEnd(46), zs.s.toFixed(1).padStart(6), zs.mb.toFixed(1).padStart(7))
  console.log('backup.ts, BACKUP_COMPRESSION=gzip (before)'.padEnd(46), oldPath.s.toFixed(1).padStart(6))
  console.log('backup.ts, auto (zstd:1)'.padEnd(46), newPath.s.toFixed(1).padStart(6))
  console.log('restore.ts --latest (same host, undo dump too)'.padEnd(46), restore.s.toFixed(1).padStart(6))
  console.log(`ratios: backup.ts auto / raw zstd:1 = ${(newPath.s / zs.s).toFixed(2)}x (goal <= 1.3); backup.ts auto / backup.ts gzip = ${(newPath.s / oldPath.s).toFixed(2)}x (goal <= 0.4)`)
  console.log('restore.ts --to-host (fresh VPS: provision, deploy, restore)'.padEnd(46), dr.s.toFixed(1).padStart(6))
  console.log('backup.ts wall is the whole process (Node start, SSH, roles, manifest, local store); same host: ' + rto + ` (${restoredIn})`)
  console.log(`new host: ${drRto}`)
} finally {
  h.vps.destroy()
  fresh?.destroy()
}
