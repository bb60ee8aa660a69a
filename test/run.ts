// Runs the uvu suites and ends with the one line CI reads: "N passed, N failed".
//   node --import tsx test/run.ts [unit|integration|FILE.test.ts ...]
//
// - unit: one uvu process over test/unit.
// - integration: what every file needs and no file should build for itself (the images,
//   the provisioned VPS image, the operator key) is made first, once; then each file runs
//   in its own uvu process, OPSBOOK_TEST_JOBS (default 2) at a time, its output kept and
//   printed whole, in file order. Each file's containers carry its name as a label: what
//   is left after it ends is removed and counted as a failure, as is any volume or network
//   a test made and left behind.
// - a table of each file's wall time, slowest first, comes before the final line.
//
// uvu reports a suite whose hook threw as 0 passed with exit code 0, so failures are
// counted as total - passed - skipped rather than trusted from the exit code alone.
import { spawn } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const args = process.argv.slice(2).length ? process.argv.slice(2) : ['unit', 'integration']
const jobs = Math.max(1, Number(process.env.OPSBOOK_TEST_JOBS ?? 2) || 1)

interface FileRun { name: string; ms: number; passed: number; failed: number; skipped: number; text: string; bad: boolean }

function uvu(dir: string, pattern: string, env: NodeJS.ProcessEnv = {}, echo = false): Promise<{ code: number; text: string }> {
  return new Promise(resolve => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'node_modules/uvu/bin.js', dir, pattern], {
      cwd: root, env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0', ...env }, stdio: ['ignore', 'pipe', 'pipe'],
    })
    let text = ''
    const take = (c: Buffer) => { text += c; if (echo) process.stdout.write(c) }
    child.stdout.on('data', take)
    child.stderr.on('data', take)
    child.on('close', code => resolve({ code: code ?? 1, text }))
  })
}

function counts(name: string, code: number, text: string, ms: number): FileRun {
  const num = (label: string) => Number(new RegExp(`${label}:\\s+(\\d+)`).exec(text)?.[1] ?? NaN)
  const total = num('Total'), ok = num('Passed'), skip = num('Skipped') || 0
  if (Number.isNaN(total) || Number.isNaN(ok)) {
    return { name, ms, passed: 0, failed: 1, skipped: 0, bad: true, text: `${text}\n${name}: no uvu summary (exit ${code}); counted as one failure\n` }
  }
  return { name, ms, passed: ok, failed: Math.max(0, total - ok - skip), skipped: skip, bad: code !== 0, text }
}

/**
 * uvu's FAIL blocks without uvu's own stack frames, each its FAIL line and its last 2500
 * characters (where the assertion's diff and file:line are: a message may hold a whole
 * runbook output); the file's last lines if it has none; what run.ts added after uvu's summary.
 */
function failureText(text: string): string {
  const [body, ...tail] = text.split(/\n\s+Total:/)
  const blocks = body.split(/\n(?=[ \t]*FAIL\s)/).slice(1)
  const short = (b: string) => {
    const lines = b.split('\n').filter(l => !/node_modules\/uvu\//.test(l))
    const rest = lines.slice(1).join('\n').trim()
    return `${lines[0].trim()}\n${rest.length > 2500 ? `[…]\n${rest.slice(-2500)}` : rest}`
  }
  const after = tail.join('').split('\n').filter(l => /left behind|no uvu summary/.test(l))
  return [...(blocks.length ? blocks.map(short) : [text.split('\n').slice(-15).join('\n')]), ...after].join('\n\n')
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
const results: FileRun[] = []
const leftovers: string[] = []

if (args.includes('unit')) {
  const t0 = Date.now()
  const r = await uvu('test/unit', '\\.test\\.ts$', {}, true)
  results.push(counts('unit (all files)', r.code, r.text, Date.now() - t0))
}
// One prepare and one pool for every integration file asked for.
// The longest files start first: in alphabetical order restore.test (the longest) started
// halfway through and the run ended with one file running on an idle second slot.
const LONGEST = ['swarm', 'pitr', 'swarm-stacks', 'restore', 'rotate', 'recover', 'stack-deita', 'stack-shop', 'migrate', 'backup'].map(n => `${n}.test.ts`)
// swarm.test used to run last, alone: removing its three VPSes deleted their engines' data
// from the disk both files share, and stalled the other file's strict-load case once. With
// the VPSes' Docker storage in memory (OPSBOOK_VPS_DOCKER=tmpfs) a removal frees memory
// only, and the longest file starts first instead of running alone for 11 minutes.
const rank = (f: string) => (LONGEST.includes(f) ? LONGEST.indexOf(f) : LONGEST.length)
const files = args.includes('integration')
  ? readdirSync(`${root}/test/integration`).filter(f => f.endsWith('.test.ts')).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b))
  : args.filter(a => a !== 'unit').map(a => a.replace(/^.*\//, ''))
if (files.length) await integration(files)

async function integration(files: string[]) {
  const { prepare, resources, removeLabelled, removeResources } = await import('./prepare.ts')
  const t0 = Date.now()
  try {
    await prepare()
  } catch (e) {
    console.log(`preparing the testbed failed: ${(e as Error).stack}`)
    results.push({ name: '(prepare)', ms: Date.now() - t0, passed: 0, failed: 1, skipped: 0, bad: true, text: `preparing the testbed failed: ${(e as Error).message}` })
    return
  }
  results.push({ name: '(prepare: images, provisioned VPS)', ms: Date.now() - t0, passed: 0, failed: 0, skipped: 0, bad: false, text: '' })
  const before = resources()

  const done: (FileRun | undefined)[] = files.map(() => undefined)
  let printed = 0
  const flush = () => {
    while (printed < files.length && done[printed]) {
      const r = done[printed++]!
      console.log(`\n── ${r.name} (${(r.ms / 1000).toFixed(0)} s, ${r.passed} passed, ${r.failed} failed) ──`)
      process.stdout.write(r.text)
    }
  }
  let next = 0
  const worker = async () => {
    while (next < files.length) {
      const i = next++
      const name = files[i]
      const started = Date.now()
      // The VPSes' nested Docker storage in memory (testbed.ts, startVps): the suite is bound by
      // one shared disk and 2 cores, not by what a VPS's disk would do.
      const out = await uvu('test/integration', `^${escape(name)}$`, { OPSBOOK_TEST_FILE: name, OPSBOOK_VPS_DOCKER: process.env.OPSBOOK_VPS_DOCKER ?? 'tmpfs' })
      const r = counts(name, out.code, out.text, Date.now() - started)
      const left = removeLabelled(name)
      if (left.length) {
        r.failed += 1
        r.bad = true
        r.text += `\n${name} left behind (now removed): ${left.join(', ')}\n`
        leftovers.push(...left.map(l => `${name}: ${l}`))
      }
      done[i] = r
      results.push(r)
      flush()
    }
  }
  await Promise.all(Array.from({ length: Math.min(jobs, files.length) }, () => worker()))

  const after = resources()
  const extra = [...after].filter(x => !before.has(x))
  if (extra.length) {
    removeResources(extra)
    leftovers.push(...extra)
    results.push({ name: '(leftover volumes and networks)', ms: 0, passed: 0, failed: 1, skipped: 0, bad: true, text: `left behind: ${extra.join(', ')}` })
    console.log(`\nLeft behind by the integration tests: ${extra.join(', ')}`)
  }
}

const passed = results.reduce((n, r) => n + r.passed, 0)
const failed = results.reduce((n, r) => n + r.failed, 0)
const skipped = results.reduce((n, r) => n + r.skipped, 0)
// CI keeps only the end of a long output: each failure is repeated here, short, so the
// reason is next to the summary (the whole file's output is above, in file order).
const failures = results.filter(r => r.failed || r.bad)
if (failures.length && results.length > 1) {
  console.log('\nFailures (each file\'s whole output is above):')
  for (const r of failures) console.log(`── ${r.name}\n${failureText(r.text)}`)
}
if (results.length > 1) {
  console.log('\nWall time per file (slowest first):')
  for (const r of [...results].sort((a, b) => b.ms - a.ms)) {
    console.log(`  ${(r.ms / 1000).toFixed(1).padStart(7)} s  ${r.name}${r.failed ? `  (${r.failed} failed)` : ''}`)
  }
}
const tests = results.flatMap(r => [...r.text.matchAll(/^\[test time\] ([\d.]+) s (.*)$/gm)].map(m => ({ s: Number(m[1]), name: `${r.name.replace(/\.test\.ts$/, '')}: ${m[2]}` })))
if (tests.length > 1) {
  console.log('\nSlowest tests:')
  for (const t of tests.sort((a, b) => b.s - a.s).slice(0, 15)) console.log(`  ${t.s.toFixed(1).padStart(7)} s  ${t.name.slice(0, 110)}`)
}
if (leftovers.length) console.log(`Leftovers: ${leftovers.join(', ')}`)
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`)
process.exit(failed || results.some(r => r.bad) ? 1 : 0)
