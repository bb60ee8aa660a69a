// The documentation's shape: a short README that names every runbook and links every
// docs/*.md, and no relative link (or #anchor) in README.md or docs/ that leads nowhere.
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'

const root = join(import.meta.dirname, '..', '..')
const readme = join(root, 'README.md')
const docsDir = join(root, 'docs')
const docs = readdirSync(docsDir).filter(f => f.endsWith('.md')).sort()
const pages = [readme, ...docs.map(f => join(docsDir, f))]
const read = (p: string) => readFileSync(p, 'utf8')

/** The lines of a page with those inside fenced code blocks blanked. */
function outsideFences(text: string): string[] {
  let fence = false
  return text.split('\n').map(line => {
    if (/^\s*(```|~~~)/.test(line)) { fence = !fence; return '' }
    return fence ? '' : line
  })
}

/** The text outside code blocks and inline code spans, where links live. */
const prose = (text: string) => outsideFences(text).map(l => l.replace(/(`+)(?:(?!\1).)*?\1/g, '')).join('\n')

/** GitHub's heading anchor: lowercase, punctuation other than - and _ removed, spaces to -. */
export function slug(heading: string): string {
  return heading.trim().toLowerCase().replace(/[^\p{L}\p{N}\p{M}_\- ]/gu, '').replace(/ /g, '-')
}

/** Every anchor a page offers, with GitHub's -1, -2 suffixes for repeated headings. */
function anchors(file: string): Set<string> {
  const seen = new Map<string, number>()
  const out = new Set<string>()
  for (const line of outsideFences(read(file))) {
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line)
    if (!m) continue
    const base = slug(m[1])
    const n = seen.get(base) ?? 0
    seen.set(base, n + 1)
    out.add(n ? `${base}-${n}` : base)
  }
  return out
}

/** Relative link targets of a page: [text](target) and [text](target "title"), external ones left out. */
function links(file: string): string[] {
  const out: string[] = []
  for (const m of prose(read(file)).matchAll(/\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) {
    const target = m[1]
    if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue // https:, mailto:
    out.push(target)
  }
  return out
}

test('README.md is under 200 lines', () => {
  const lines = read(readme).replace(/\n$/, '').split('\n').length
  assert.ok(lines < 200, `README.md has ${lines} lines; move detail into docs/`)
})

test('every docs file starts with a # title and a one-line summary', () => {
  for (const f of docs) {
    const [title, blank, summary] = read(join(docsDir, f)).split('\n')
    assert.match(title, /^# \S/, `docs/${f} starts with a # title`)
    assert.is(blank, '', `docs/${f}: a blank line after the title`)
    assert.ok(summary && !summary.startsWith('#'), `docs/${f}: a one-line summary under the title`)
  }
})

test('every relative link in README.md and docs/ points at a file that exists', () => {
  const bad: string[] = []
  for (const page of pages) {
    for (const target of links(page)) {
      const path = decodeURIComponent(target.split('#')[0])
      if (!path) continue
      const to = resolve(dirname(page), path)
      if (!existsSync(to)) bad.push(`${relative(root, page)}: ${target}`)
    }
  }
  assert.equal(bad, [], `links to missing files:\n${bad.join('\n')}`)
})

test('every #anchor into a markdown file matches one of its headings', () => {
  const bad: string[] = []
  for (const page of pages) {
    for (const target of links(page)) {
      const hash = target.indexOf('#')
      if (hash < 0) continue
      const path = target.slice(0, hash)
      const anchor = decodeURIComponent(target.slice(hash + 1))
      const to = path ? resolve(dirname(page), decodeURIComponent(path)) : page
      if (!to.endsWith('.md') || !existsSync(to) || !statSync(to).isFile()) continue
      if (!anchors(to).has(anchor)) bad.push(`${relative(root, page)}: ${target} (no such heading in ${relative(root, to)})`)
    }
  }
  assert.equal(bad, [], `anchors without a heading:\n${bad.join('\n')}`)
})

test('every runbook is named in README.md', () => {
  const text = read(readme)
  const missing = readdirSync(join(root, 'runbooks')).filter(f => f.endsWith('.ts'))
    .filter(f => !text.includes(`runbooks/${f}`))
  assert.equal(missing, [], `README.md does not name ${missing.map(f => `runbooks/${f}`).join(', ')}`)
})

test('every docs/*.md is linked from README.md', () => {
  const linked = new Set(links(readme).map(t => resolve(root, decodeURIComponent(t.split('#')[0]))))
  const missing = docs.filter(f => !linked.has(join(docsDir, f)))
  assert.equal(missing, [], `README.md does not link docs/${missing.join(', docs/')}`)
})

test('the slug is GitHub\'s', () => {
  assert.is(slug('Roll back production (for the responder)'), 'roll-back-production-for-the-responder')
  assert.is(slug('A cluster: ENGINE=swarm'), 'a-cluster-engineswarm')
  assert.is(slug('Point-in-time recovery (PITR=on)'), 'point-in-time-recovery-pitron')
  assert.is(slug('Options every runbook has'), 'options-every-runbook-has')
})

test.run()
