// Several compose files as one, merged by compose's own rules (compose-go's override/merge.go
// and override/uncity.go, read for this): mappings merge key by key, sequences append,
// command/entrypoint/healthcheck.test are replaced, labels/environment/env_file/... become
// KEY=value lists, depends_on and networks become mappings, and the sequences compose keeps
// unique (volumes by target, ports, labels and environment by key...) keep the later entry
// in the earlier one's place. `!reset` removes what the files before set; `!override`
// replaces it whole. Pure: it reads no file, so unit tests pin each rule.
//
// Why by hand and not `docker compose config`: every refusal happens before any host is
// contacted, and the operator's machine need not have Compose v2 (Debian 12 ships v1). The
// host runs compose itself on the same list of files, so what runs is compose's merge; a
// test compares this one with the host's `docker compose config` for the example stacks.
import { parse, YAMLMap, YAMLSeq, YAMLParseError, type CollectionTag, type ScalarTag } from 'yaml'
import { UsageError } from '../errors.ts'

const RESET = Symbol('!reset')
class Override { constructor(readonly value: unknown) {} }

type Tree = Record<string, unknown>
const isMap = (x: unknown): x is Tree => !!x && typeof x === 'object' && !Array.isArray(x) && !(x instanceof Override)

// The tags compose reads: `!reset` (on a value, a list or a map) and `!override`.
class ResetSeq extends YAMLSeq { override toJSON() { return RESET as never } }
class ResetMap extends YAMLMap { override toJSON() { return RESET as never } }
class OverrideSeq extends YAMLSeq { override toJSON(a?: unknown, ctx?: never) { return new Override(super.toJSON(a, ctx)) as never } }
class OverrideMap extends YAMLMap { override toJSON(a?: unknown, ctx?: never) { return new Override(super.toJSON(a, ctx)) as never } }
const TAGS: ScalarTag[] | CollectionTag[] = [
  { tag: '!reset', resolve: () => RESET },
  { tag: '!override', resolve: (s: string) => new Override(scalarOf(s)) },
  { tag: '!reset', collection: 'seq', nodeClass: ResetSeq },
  { tag: '!reset', collection: 'map', nodeClass: ResetMap },
  { tag: '!override', collection: 'seq', nodeClass: OverrideSeq },
  { tag: '!override', collection: 'map', nodeClass: OverrideMap },
] as never

/** One compose file as a plain tree; `!reset` and `!override` are kept as markers for mergeCompose. */
export function parseCompose(text: string, file: string): Tree {
  let doc: unknown
  try {
    doc = parse(text, { merge: true, maxAliasCount: 1000, customTags: TAGS })
  } catch (e) {
    const pos = e instanceof YAMLParseError && e.linePos ? ` (line ${e.linePos[0].line})` : ''
    throw new UsageError(`${file} is not valid YAML${pos}: ${(e as Error).message.split('\n')[0]}.`)
  }
  return isMap(doc) ? doc : {}
}

// A custom-tagged scalar keeps its text; give it the type YAML's core schema would.
function scalarOf(v: string): unknown {
  if (v === '' || v === 'null' || v === '~') return null
  if (v === 'true' || v === 'false') return v === 'true'
  return /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v
}

type Path = string[]
const matches = (p: Path, pattern: string) => {
  const parts = pattern.split('.')
  return parts.length === p.length && parts.every((x, i) => x === '*' || x === p[i])
}

const TO_SEQUENCE = ['networks.*.labels', 'volumes.*.labels', 'services.*.annotations', 'services.*.build.args', 'services.*.build.additional_contexts',
  'services.*.build.labels', 'services.*.deploy.labels', 'services.*.dns', 'services.*.dns_opt', 'services.*.dns_search', 'services.*.env_file',
  'services.*.label_file', 'services.*.environment', 'services.*.labels', 'services.*.volumes.*.volume.labels', 'services.*.sysctls', 'services.*.tmpfs']
const REPLACED = ['services.*.command', 'services.*.entrypoint', 'services.*.healthcheck.test']

function toSequence(v: unknown): unknown[] {
  if (Array.isArray(v)) return v
  if (typeof v === 'string') return [v]
  if (isMap(v)) {
    return Object.entries(v).flatMap(([k, x]) => x === null || x === undefined ? [k] : Array.isArray(x) ? x.map(y => `${k}=${y}`) : [`${k}=${x}`]).sort()
  }
  return []
}
function toMapping(v: unknown, dflt?: Tree): Tree {
  if (isMap(v)) return v
  if (Array.isArray(v)) return Object.fromEntries(v.map(s => [String(s), dflt ? { ...dflt } : null]))
  return {}
}

function merge(base: unknown, over: unknown, p: Path): unknown {
  if (over instanceof Override) return over.value
  const key = p.join('.')
  if (REPLACED.some(x => matches(p, x))) return over
  if (TO_SEQUENCE.some(x => matches(p, x))) {
    // environment: { FOO: !reset } takes FOO out of what the files before set.
    const resets = isMap(over) ? Object.keys(over).filter(k => over[k] === RESET) : []
    const kept = isMap(over) ? Object.fromEntries(Object.entries(over).filter(([, x]) => x !== RESET)) : Array.isArray(over) ? over.filter(x => x !== RESET) : over
    return [...toSequence(base).filter(e => !resets.includes(keyValue(e))), ...toSequence(kept)]
  }
  // Another logging driver replaces the options; the same one (or none named) merges them.
  if (matches(p, 'services.*.logging') && isMap(base) && isMap(over)) return over.driver !== undefined && base.driver !== undefined && over.driver !== base.driver ? over : mergeMaps(base, over, p)
  if (matches(p, 'services.*.ulimits.*')) return over
  if (matches(p, 'services.*.depends_on')) {
    const d = { condition: 'service_started', required: true }
    return mergeMaps(toMapping(base, d), toMapping(over, d), p)
  }
  if (matches(p, 'services.*.networks')) return mergeMaps(toMapping(base), toMapping(over), p)
  if (matches(p, 'services.*.build')) {
    const b = (x: unknown) => (typeof x === 'string' ? { context: x } : toMapping(x))
    return mergeMaps(b(base), b(over), p)
  }
  if (matches(p, 'services.*.extra_hosts')) {
    const a = toSequence(base)
    return [...a, ...toSequence(over).filter(x => !a.includes(x))]
  }
  if (over === null || over === undefined) return base
  if (isMap(base)) {
    if (!isMap(over)) throw new UsageError(`${key} is a mapping in one compose file and not in another; compose cannot merge them.`)
    return mergeMaps(base, over, p)
  }
  if (Array.isArray(base)) {
    if (!Array.isArray(over)) throw new UsageError(`${key} is a list in one compose file and not in another; compose cannot merge them.`)
    return [...base, ...over]
  }
  return over
}

function mergeMaps(base: Tree, over: Tree, p: Path): Tree {
  const out: Tree = { ...base }
  for (const [k, v] of Object.entries(over)) {
    if (v === RESET) { delete out[k]; continue }
    out[k] = k in out ? merge(out[k], v, [...p, k]) : strip(v)
  }
  return out
}

/** A value new to the merge: its markers become plain values (a !reset inside a new key sets nothing). */
function strip(v: unknown): unknown {
  if (v instanceof Override) return strip(v.value)
  if (Array.isArray(v)) return v.filter(x => x !== RESET).map(strip)
  if (isMap(v)) return Object.fromEntries(Object.entries(v).filter(([, x]) => x !== RESET).map(([k, x]) => [k, strip(x)]))
  return v
}

// The sequences compose keeps unique, and the key that tells two entries apart.
const keyValue = (v: unknown) => String(v).split('=')[0]
const mountTarget = (dflt: string) => (v: unknown) => (isMap(v) ? String(v.target ?? `${dflt}/${v.source}`) : `${dflt}/${v}`)
const UNIQUE: [string, (v: unknown) => string][] = [
  ...['services.*.annotations', 'services.*.build.args', 'services.*.build.labels', 'services.*.cap_add', 'services.*.cap_drop', 'services.*.deploy.labels',
    'services.*.dns', 'services.*.dns_opt', 'services.*.dns_search', 'services.*.environment', 'services.*.labels', 'services.*.links', 'services.*.profiles',
    'services.*.sysctls', 'services.*.tmpfs', 'networks.*.labels'].map(p => [p, keyValue] as [string, (v: unknown) => string]),
  ['services.*.volumes', v => (isMap(v) ? String(v.target) : volumeTarget(String(v)))],
  ['services.*.env_file', v => (isMap(v) ? String(v.path) : String(v))],
  ['services.*.expose', v => String(v)],
  ['services.*.ports', v => portKey(v)],
  ['services.*.secrets', mountTarget('/run/secrets')],
  ['services.*.configs', mountTarget('')],
]

/** A short-syntax volume's container path: "src:/target:ro" or "/target". */
export function volumeTarget(v: string): string {
  const parts = v.split(':')
  if (parts.length === 1) return parts[0]
  // A Windows drive letter ("C:\x:/t") is not expected on a Linux host; the target is the second field.
  return parts[1]
}

/** The canonical key of a published port, so "8000:8000" and its long form are one entry. */
export function portKey(v: unknown): string {
  if (isMap(v)) return `${v.host_ip ?? '0.0.0.0'}:${v.published ?? ''}:${v.target}/${v.protocol ?? 'tcp'}`
  const s = String(v)
  const [spec, proto = 'tcp'] = s.split('/')
  const parts = spec.split(':')
  const target = parts.pop()!
  const published = parts.pop() ?? ''
  const host = parts.join(':') || '0.0.0.0'
  return `${host}:${published}:${target}/${proto}`
}

function unique(node: unknown, p: Path): unknown {
  if (isMap(node)) return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, unique(v, [...p, k])]))
  if (!Array.isArray(node)) return node
  const rule = UNIQUE.find(([pattern]) => matches(p, pattern))
  if (!rule) return node
  const out: unknown[] = []
  const at = new Map<string, number>()
  for (const entry of node) {
    if (entry === RESET) continue
    const k = rule[1](entry)
    const i = at.get(k)
    if (i === undefined) { at.set(k, out.length); out.push(entry) } else out[i] = entry
  }
  return out
}

/** The files in order, as compose merges `-f a -f b -f c`. */
export function mergeCompose(docs: Tree[]): Tree {
  let out: Tree = {}
  for (const d of docs) out = unique(mergeMaps(out, d, []), []) as Tree
  return strip(out) as Tree
}
