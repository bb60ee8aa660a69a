// Runs the uvu suites and ends with the one line CI reads: "N passed, N failed".
// uvu reports a suite whose hook threw as 0 passed with exit code 0, so failures are
// counted as total - passed - skipped rather than trusted from the exit code alone.
//   node --import tsx test/run.ts [unit|integration ...]
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const dirs = process.argv.slice(2).length ? process.argv.slice(2) : ['unit', 'integration']
let passed = 0, failed = 0, skipped = 0, bad = false

for (const dir of dirs) {
  const out = await new Promise<{ code: number; text: string }>(resolve => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'node_modules/uvu/bin.js', `test/${dir}`, '\\.test\\.ts$'], {
      cwd: root, env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' }, stdio: ['ignore', 'pipe', 'inherit'],
    })
    let text = ''
    child.stdout.on('data', c => { text += c; process.stdout.write(c) })
    child.on('close', code => resolve({ code: code ?? 1, text }))
  })
  const num = (label: string) => Number(new RegExp(`${label}:\\s+(\\d+)`).exec(out.text)?.[1] ?? NaN)
  const total = num('Total'), ok = num('Passed'), skip = num('Skipped')
  if (Number.isNaN(total) || Number.isNaN(ok)) {
    console.log(`test/${dir}: no uvu summary (exit ${out.code}); counted as one failure`)
    failed += 1
    bad = true
    continue
  }
  passed += ok
  skipped += skip || 0
  failed += Math.max(0, total - ok - (skip || 0))
  if (out.code !== 0) bad = true
}
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`)
process.exit(failed || bad ? 1 : 0)
