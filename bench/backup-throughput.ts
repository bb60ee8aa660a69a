// Bench (prints, never asserts): a large pg_dump into S3 (moto) through backup.ts, next to
// the raw pipeline `ssh host 'docker compose exec db pg_dump -Fc' | S3 upload` in the same
// run, backup.ts's peak RSS at ~100 MB and ~1 GB for several part sizes, and the RTO of
// restore.ts --to-host (a fresh VPS) from the encrypted ~1 GB backup. The data is random
// bytea, so the dump is about as large as the table (compression cannot shrink it).
//   npm run bench:backup            (BENCH_GB=1, BENCH_ROUNDS=1, BENCH_PARTS=8,16,64 MiB)
//   BENCH_ONLY=restore npm run bench:backup   (one encrypted backup, then the new-host restore only)
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs'
import { spawn } from 'node:child_process'
import { generateX25519Identity, identityToRecipient } from 'age-encryption'
import { nginxImage, postgresImage, appImage } from '../test/images.ts'
import { startS3 } from '../test/s3.ts'
import { startVps } from '../test/testbed.ts'
import { ROOT, freshHost } from '../test/integration/helpers.ts'

const GB = Number(process.env.BENCH_GB ?? 1)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 1)
const PARTS = (process.env.BENCH_PARTS ?? '8,16,64').split(',').map(Number)
const MiB = 1048576
const ONLY_RESTORE = process.env.BENCH_ONLY === 'restore'

const [pg, ngx] = [await postgresImage(), await nginxImage()]
await appImage('v1')
const [h, s3] = await Promise.all([freshHost('bench-backup'), startS3()])
await s3.createBucket('bench')
const secret = 'bench-secret-key'
appendFileSync(h.envFile, ['APP_IMAGE=opsbook/app', `DB_IMAGE=${pg}`, `PROXY_IMAGE=${ngx}`, 'DB_PASSWORD=bench-db-password', 'IMAGE_SOURCE=local',
  'BACKUP_DEST=s3://bench/b', `S3_ENDPOINT=${s3.endpoint}`, 'AWS_ACCESS_KEY_ID=test', `AWS_SECRET_ACCESS_KEY=${secret}`, ''].join('\n'))
const env = { S3_ENDPOINT: s3.endpoint, AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: secret, S3_PART_SIZE_MB: String(PARTS[0]) }
/** The settings file with one more line (dotenv: the later line wins). */
const variant = (name: string, lines: string) => { const f = `${h.envFile}.${name}`; writeFileSync(f, readFileSync(h.envFile, 'utf8') + lines); return f }
const psql = (sql: string) => h.sh(`cd /opt/app && docker compose -p app exec -T db psql -X -At -U app -d app -c "${sql}"`).trim()

interface Run { wall: number; bytes: number; rssMiB?: number }

/** Runs a command, sampling its peak RSS (VmHWM) from /proc while it lives. */
function timed(cmd: string, args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<{ wall: number; rssMiB: number; out: string }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now()
    const child = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = '', peak = 0
    child.stdout.on('data', c => { out += c })
    child.stderr.on('data', c => { out += c })
    const sample = setInterval(() => {
      try { peak = Math.max(peak, Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))?.[1] ?? 0)) } catch {}
    }, 50)
    child.on('close', code => {
      clearInterval(sample)
      if (code !== 0) reject(new Error(`${cmd} ${args.join(' ')} failed (${code}):\n${out}`))
      else resolve({ wall: (performance.now() - t0) / 1000, rssMiB: peak / 1024, out })
    })
  })
}

async function viaBackup(envFile = h.envFile): Promise<Run> {
  const r = await timed(process.execPath, ['--import', 'tsx', 'runbooks/backup.ts', '--config', envFile, '--yes', '--json'])
  const json = JSON.parse(r.out.trim().split('\n').pop()!)
  const dump = json.steps[0]
  const bytes = (await s3.objects('bench')).filter(o => o.key.startsWith('b/') && o.key.includes('postgres.dump')).sort((a, b) => b.key.localeCompare(a.key))[0].size
  return { wall: dump.ms / 1000, bytes, rssMiB: r.rssMiB }
}

async function viaRaw(i: number): Promise<Run> {
  const ssh = `ssh -i ${h.key.privateKey} -p ${h.vps.port} -o UserKnownHostsFile=${h.knownHosts} -o BatchMode=yes root@127.0.0.1`
  const key = `raw/${i}.dump`
  const r = await timed('bash', ['-o', 'pipefail', '-c', `${ssh} 'cd /opt/app && docker compose -p app exec -T db pg_dump -Fc -U app -d app' | ${process.execPath} --import tsx bench/s3-upload.ts bench ${key}`], env)
  const bytes = (await s3.objects('bench')).find(o => o.key === key)!.size
  return { wall: r.wall, bytes }
}

const grow = (toMiB: number) => {
  const have = Number(psql("select coalesce(pg_total_relation_size('blobs'), 0)")) / MiB
  const rows = Math.max(0, Math.ceil((toMiB - have) * 1024 / 1.05))
  for (let done = 0; done < rows; done += 100_000) {
    psql(`insert into blobs select gen_random_bytes(1024) from generate_series(1, ${Math.min(100_000, rows - done)})`)
  }
}

const rate = (r: Run) => r.bytes / MiB / r.wall
const fmt = (name: string, r: Run) => `${name.padEnd(40)} ${(r.bytes / MiB).toFixed(0).padStart(7)} ${r.wall.toFixed(1).padStart(7)} ${rate(r).toFixed(0).padStart(7)} ${r.rssMiB ? r.rssMiB.toFixed(0).padStart(8) : '       -'}`

try {
  console.error('provision + deploy (not timed)...')
  for (const rb of [['provision'], ['deploy', '--version', 'v1']]) await timed(process.execPath, ['--import', 'tsx', `runbooks/${rb[0]}.ts`, '--config', h.envFile, ...rb.slice(1)])
  psql('create extension if not exists pgcrypto; create table blobs (b bytea)')
  const rows: string[] = []

  console.error('~100 MiB...')
  grow(100)
  for (const p of ONLY_RESTORE ? [] : PARTS) rows.push(fmt(`backup.ts, ~100 MiB, ${p} MiB parts`, await viaBackup(variant(`p${p}`, `S3_PART_SIZE_MB=${p}\n`))))

  console.error(`~${GB} GiB...`)
  grow(GB * 1024)
  const identity = await generateX25519Identity()
  writeFileSync(`${h.dir}/bench.key`, `${identity}\n`, { mode: 0o600 })
  const encEnv = variant('age', `S3_PART_SIZE_MB=${PARTS[0]}\nBACKUP_AGE_RECIPIENTS=${await identityToRecipient(identity)}\nBACKUP_AGE_IDENTITY_FILE=${h.dir}/bench.key\n`)
  const raw: Run[] = [], ours: Run[] = [], enc: Run[] = [], parts: [number, Run][] = []
  for (let i = 0; i < ROUNDS; i++) {
    if (!ONLY_RESTORE) raw.push(await viaRaw(i))
    if (!ONLY_RESTORE) ours.push(await viaBackup(variant(`p${PARTS[0]}`, `S3_PART_SIZE_MB=${PARTS[0]}\n`)))
    enc.push(await viaBackup(encEnv))
  }
  const best = (runs: Run[]) => runs.reduce((a, b) => (rate(b) > rate(a) ? b : a))
  rows.push(...raw.map((r, i) => fmt(`raw ssh | upload, round ${i + 1}`, r)))
  rows.push(...ours.map((r, i) => fmt(`backup.ts, ${PARTS[0]} MiB parts, round ${i + 1}`, r)))
  rows.push(...enc.map((r, i) => fmt(`backup.ts + age, ${PARTS[0]} MiB parts, round ${i + 1}`, r)))

  // The disaster: a fresh VPS, provisioned, deployed and restored from the encrypted backup.
  console.error('restore.ts --to-host a fresh VPS from the encrypted backup...')
  const b = await startVps('bench-restore-b', h.key)
  appendFileSync(h.knownHosts, b.knownHosts)
  let rto = ''
  try {
    const r = await timed(process.execPath, ['--import', 'tsx', 'runbooks/restore.ts', '--config', encEnv, '--to-host', `127.0.0.1:${b.port}`, '--latest', '--yes', '--json'])
    const steps = JSON.parse(r.out.trim().split('\n').pop()!).steps as { title: string; ms: number; detail?: string }[]
    rto = steps.at(-1)!.detail ?? ''
    console.error(steps.map(s => `  ${(s.ms / 1000).toFixed(1).padStart(6)} s  ${s.title}${s.detail ? ` (${s.detail})` : ''}`).join('\n'))
  } catch (e) { rto = `failed: ${(e as Error).message.slice(-2000)}` } finally { b.destroy() }
  for (const p of ONLY_RESTORE ? [] : PARTS.slice(1)) parts.push([p, await viaBackup(variant(`p${p}`, `S3_PART_SIZE_MB=${p}\n`))])
  rows.push(...parts.map(([p, r]) => fmt(`backup.ts, ${p} MiB parts`, r)))
  console.log(`pg_dump -Fc of random bytea into S3 (moto on loopback); the raw pipeline uses ${PARTS[0]} MiB parts too:`)
  console.log('case'.padEnd(40), '    MiB  wall s   MiB/s  peak RSS MiB')
  for (const r of rows) console.log(r)
  if (!ONLY_RESTORE) console.log(`ratio backup.ts / raw (best of ${ROUNDS} each): ${(rate(best(ours)) / rate(best(raw))).toFixed(2)}x; encrypted / raw: ${(rate(best(enc)) / rate(best(raw))).toFixed(2)}x`)
  console.log('wall s of backup.ts is its dump step as reported in --json (the whole run adds start-up, roles and the manifest).')
  console.log(`New-host restore of the ~${GB} GiB encrypted backup: ${rto}`)
} finally {
  h.vps.destroy(); s3.destroy()
}
