// Bench (prints, never asserts): what point-in-time recovery costs and gives, one VPS, one
// run, same data. pgbench (TPC-B-like, 4 clients) on the stack's PostgreSQL with archiving
// off, then with PITR=on (every WAL segment to S3 by pgBackRest, archive_timeout 60 s), as
// a ratio; then the same database restored two ways on the same host: restore.ts --latest
// from a pg_dump backup, and restore.ts --to-time latest from the WAL archive (a base
// backup plus the WAL of the pgbench run after it).
//   npm run bench:pitr            (BENCH_SCALE=70 makes a ~1 GB database; default 10, ~160 MB)
import { appendFileSync } from 'node:fs'
import { appImage, nginxImage, postgresImage } from '../test/images.ts'
import { startS3, type S3 } from '../test/s3.ts'
import { freshHost, runbook } from '../test/integration/helpers.ts'

const SCALE = Number(process.env.BENCH_SCALE ?? 10)
const SECONDS = Number(process.env.BENCH_SECONDS ?? 30)
const [pg, ngx, v1] = [await postgresImage(), await nginxImage(), await appImage('v1')]
const [h, s3]: [Awaited<ReturnType<typeof freshHost>>, S3] = await Promise.all([
  freshHost('bench-pitr', { APP_IMAGE: 'opsbook/app', DB_IMAGE: pg, PROXY_IMAGE: ngx, DB_PASSWORD: 'bench-db-password', IMAGE_SOURCE: 'local' }, { provisioned: true, images: [pg, ngx, v1] }),
  startS3({ tls: true }),
])
const onDb = (cmd: string) => `cd /opt/app && docker compose -p app exec -T db ${cmd}`
const psql = (sql: string) => h.sh(onDb(`psql -X -At -U app -d app -c "${sql}"`)).trim()

async function timed(name: string, args: string[]): Promise<{ s: number; out: string }> {
  const t0 = performance.now()
  const r = await runbook(name, args)
  if (r.code !== 0) throw new Error(`${name} ${args.join(' ')} failed:\n${r.out}`)
  return { s: (performance.now() - t0) / 1000, out: r.out }
}
const tps = () => Number(/tps = ([\d.]+)/.exec(h.sh(onDb(`pgbench -U app -c 4 -j 2 -T ${SECONDS} -n app`)))?.[1] ?? NaN)

try {
  await s3.createBucket('bench')
  appendFileSync(h.envFile, ['BACKUP_DEST=s3://bench/prod', `S3_ENDPOINT=${s3.endpoint}`, 'AWS_ACCESS_KEY_ID=test', 'AWS_SECRET_ACCESS_KEY=test-secret-key', ''].join('\n'))
  await timed('deploy', ['--config', h.envFile, '--version', 'v1'])
  console.error(`pgbench -i -s ${SCALE}...`)
  h.sh(onDb(`pgbench -U app -i -q -s ${SCALE} app`) + ' >/dev/null 2>&1')
  const size = psql("select pg_size_pretty(pg_database_size('app'))")
  const off = tps()
  appendFileSync(h.envFile, ['PITR=on', 'PITR_CIPHER_PASS=bench-cipher-pass', `PITR_S3_ENDPOINT=${s3.hostEndpoint}`, `PITR_S3_CA_FILE=${s3.caFile}`, ''].join('\n'))
  const enable = await timed('deploy', ['--config', h.envFile, '--version', 'v1'])
  const on = tps()
  const dump = await timed('backup', ['--config', h.envFile, '--yes'])
  // More writes after the dump and the base backup: the point-in-time restore replays them.
  const on2 = tps()
  psql('select pg_switch_wal()')
  await new Promise(r => setTimeout(r, 5000))
  const viaDump = await timed('restore', ['--config', h.envFile, '--latest', '--yes'])
  const viaPitr = await timed('restore', ['--config', h.envFile, '--to-time', 'latest', '--yes'])
  const pitrParts = /pgbackrest restore [\d.]+ s, WAL replay [\d.]+ s/.exec(viaPitr.out)?.[0] ?? ''
  const dumpParts = /RTO \d[^\n]*?(?= \.\.\. |\n|$)/.exec(viaDump.out)?.[0] ?? ''
  console.log(`PITR, one VPS, database ${size} (pgbench scale ${SCALE}), same run:`)
  console.log('case'.padEnd(58), 'value')
  console.log('pgbench TPS, archiving off'.padEnd(58), off.toFixed(0).padStart(8))
  console.log('pgbench TPS, PITR=on (WAL to S3 over TLS, encrypted)'.padEnd(58), on.toFixed(0).padStart(8), `(again after the dump: ${on2.toFixed(0)})`)
  console.log(`ratio on/off: ${(on / off).toFixed(2)}x`)
  console.log('deploy switching PITR on (image, restart, first full), s'.padEnd(58), enable.s.toFixed(1).padStart(8))
  console.log('backup.ts (pg_dump, zstd, to S3), s'.padEnd(58), dump.s.toFixed(1).padStart(8))
  console.log('restore.ts --latest (pg_dump, same host), s'.padEnd(58), viaDump.s.toFixed(1).padStart(8), dumpParts)
  console.log('restore.ts --to-time latest (WAL archive, same host), s'.padEnd(58), viaPitr.s.toFixed(1).padStart(8), pitrParts)
  console.log(`ratio PITR restore / pg_dump restore: ${(viaPitr.s / viaDump.s).toFixed(2)}x (whole runbooks, Node start and SSH included)`)
} finally {
  h.vps.destroy()
  s3.destroy()
}
