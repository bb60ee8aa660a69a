// Constant, bounded load against a URL on 127.0.0.1: GET and POST alternately from a
// few keep-alive workers until stopped (or maxSeconds), counting every failure.
import { Agent, request } from 'node:http'

export interface LoadResult {
  ok: number
  failed: number
  /**
   * Requests resent because the proxy closed an idle keep-alive connection just as the
   * request went out on it (nginx does this to idle connections on a graceful reload).
   * Browsers resend in that case, on a new connection, and Node's docs recommend it
   * (request.reusedSocket); counted and reported, never hidden. Every other error, and
   * a resend that fails, is a failure.
   */
  resent: number
  /** Of those, requests on a connection opened for them (nginx closed it before reading the request). */
  resentFresh: number
  errors: string[]; versions: Set<string>; p99ms: number; p50ms: number; seconds: number }

export function startLoad(url: string, opts: { workers?: number; maxSeconds?: number; maxRequests?: number } = {}) {
  const { workers = 4, maxSeconds = 180, maxRequests = 1_000_000 } = opts
  const target = new URL(url)
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(target.hostname)) throw new Error('load goes to loopback only')
  const agent = new Agent({ keepAlive: true, maxSockets: workers })
  const res: LoadResult = { ok: 0, failed: 0, resent: 0, resentFresh: 0, errors: [], versions: new Set(), p99ms: 0, p50ms: 0, seconds: 0 }
  const lat: number[] = []
  let stop = false
  const t0 = Date.now()
  const at = () => new Date().toISOString().slice(11, 23)
  const one = (i: number, retry = false): Promise<void> => new Promise<void>(resolve => {
    const post = i % 2 === 1
    const body = post ? JSON.stringify({ n: i, pad: 'x'.repeat(64) }) : undefined
    const started = performance.now()
    // The resend opens its own connection: the pool's other idle ones may be closing too.
    const req = request({ host: target.hostname, port: target.port, path: target.pathname, method: post ? 'POST' : 'GET', agent: retry ? false : agent, timeout: 10_000,
      headers: post ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body!) } : {} }, r => {
      let text = ''
      r.on('data', c => { text += c })
      r.on('end', () => {
        lat.push(performance.now() - started)
        if (r.statusCode === 200) {
          res.ok++
          try { res.versions.add(JSON.parse(text).version) } catch {}
        } else { res.failed++; if (res.errors.length < 10) res.errors.push(`HTTP ${r.statusCode} at ${at()}`) }
        resolve()
      })
    })
    let answered = false
    req.on('response', () => { answered = true })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', (e: NodeJS.ErrnoException) => {
      // Also a GET whose new connection closed before any answer: nginx's reload closes
      // connections it accepted but has not read a request from yet, and RFC 9110 §9.2.2
      // lets a client retry an idempotent request. A POST in that case stays a failure.
      if (!retry && !answered && e.code === 'ECONNRESET' && (req.reusedSocket || !post)) {
        res.resent++
        if (!req.reusedSocket) res.resentFresh++
        one(i, true).then(resolve)
        return
      }
      res.failed++
      if (res.errors.length < 10) res.errors.push(`${e.message}${retry ? ' (on the resend)' : req.reusedSocket ? ' (reused connection)' : ''} at ${at()}`)
      resolve()
    })
    req.end(body)
  })
  let n = 0
  const loops = Array.from({ length: workers }, async () => {
    while (!stop && Date.now() - t0 < maxSeconds * 1000 && n < maxRequests) await one(n++)
  })
  return {
    result: () => res,
    async stop(): Promise<LoadResult> {
      stop = true
      await Promise.all(loops)
      agent.destroy()
      lat.sort((a, b) => a - b)
      res.p99ms = lat[Math.floor(lat.length * 0.99)] ?? 0
      res.p50ms = lat[Math.floor(lat.length * 0.5)] ?? 0
      res.seconds = (Date.now() - t0) / 1000
      return res
    },
  }
}

/**
 * GET+POST load on two routes at once (3 workers each) while `during` runs, plus half a
 * second after it: what the example stacks' update, rollback and rotation tests measure.
 */
export async function underLoad<T>(first: string, second: string, during: () => Promise<T>): Promise<{ result: T; loads: [LoadResult, LoadResult] }> {
  const a = startLoad(first, { workers: 3 })
  const b = startLoad(second, { workers: 3 })
  for (let t0 = Date.now(); a.result().ok <= 20 || b.result().ok <= 20; await new Promise(r => setTimeout(r, 100))) {
    if (Date.now() - t0 > 60_000) throw new Error(`no load got through to ${first} and ${second} within 60 s`)
  }
  const result = await during()
  await new Promise(r => setTimeout(r, 500))
  return { result, loads: [await a.stop(), await b.stop()] }
}
