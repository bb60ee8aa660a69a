// Constant, bounded load against a URL on 127.0.0.1: GET and POST alternately from a
// few keep-alive workers until stopped (or maxSeconds), counting every failure.
import { Agent, request } from 'node:http'
import { Agent as TlsAgent, request as tlsRequest } from 'node:https'

export interface LoadResult {
  ok: number
  /**
   * Every request that got no 200: an HTTP error, a reset or closed connection, a timeout.
   * Strict: nothing is resent, not even a GET on a keep-alive connection the proxy closed
   * as the request went out (a browser would resend that one; an API client may not).
   */
  failed: number
  /** Of the failures, those on a connection opened for the request (the rest reused one). */
  failedFresh: number
  /** With `maintenance`: 503s that carried the maintenance page (not counted as failed). */
  maintenance: number
  errors: string[]; versions: Set<string>
  /** 200s per version the app named (a canary's share). */
  byVersion: Record<string, number>
  p99ms: number; p50ms: number; seconds: number }

/**
 * `fresh`: a new connection for every request (Connection: close) instead of keep-alive.
 * `tls`: for an https:// URL on loopback, the name to ask for (SNI and Host) and the CA to trust.
 */
export function startLoad(url: string, opts: { workers?: number; maxSeconds?: number; maxRequests?: number; fresh?: boolean; tls?: { servername: string; ca: string }; maintenance?: boolean } = {}) {
  const { workers = 4, maxSeconds = 180, maxRequests = 1_000_000, fresh = false, tls, maintenance = false } = opts
  const target = new URL(url)
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(target.hostname)) throw new Error('load goes to loopback only')
  const agent = tls ? new TlsAgent({ keepAlive: true, maxSockets: workers, ca: tls.ca, servername: tls.servername }) : new Agent({ keepAlive: true, maxSockets: workers })
  const send = tls ? tlsRequest : request
  const res: LoadResult = { ok: 0, failed: 0, failedFresh: 0, maintenance: 0, errors: [], versions: new Set(), byVersion: {}, p99ms: 0, p50ms: 0, seconds: 0 }
  const lat: number[] = []
  let stop = false
  const t0 = Date.now()
  const at = () => new Date().toISOString().slice(11, 23)
  const one = (i: number): Promise<void> => new Promise<void>(resolve => {
    const post = i % 2 === 1
    const body = post ? JSON.stringify({ n: i, pad: 'x'.repeat(64) }) : undefined
    const started = performance.now()
    const req = send({ host: target.hostname, port: target.port, path: target.pathname, method: post ? 'POST' : 'GET', agent: fresh ? false : agent, timeout: 10_000,
      ...(tls ? { ca: tls.ca, servername: tls.servername } : {}),
      headers: { ...(tls ? { host: tls.servername } : {}), ...(fresh ? { connection: 'close' } : {}), ...(post ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body!) } : {}) } }, r => {
      let text = ''
      r.on('data', c => { text += c })
      r.on('end', () => {
        lat.push(performance.now() - started)
        if (r.statusCode === 200) {
          res.ok++
          try {
            const v = JSON.parse(text).version
            res.versions.add(v)
            res.byVersion[v] = (res.byVersion[v] ?? 0) + 1
          } catch {}
        } else if (maintenance && r.statusCode === 503 && /Down for maintenance/.test(text) && r.headers['retry-after']) {
          res.maintenance++
        } else { res.failed++; if (res.errors.length < 10) res.errors.push(`HTTP ${r.statusCode} at ${at()}`) }
        resolve()
      })
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', (e: NodeJS.ErrnoException) => {
      res.failed++
      if (!req.reusedSocket) res.failedFresh++
      if (res.errors.length < 10) res.errors.push(`${post ? 'POST' : 'GET'} ${e.message} (${req.reusedSocket ? 'reused' : 'new'} connection) at ${at()}`)
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
export async function underLoad<T>(first: string, second: string, during: () => Promise<T>, tls?: { servername: string; ca: string }): Promise<{ result: T; loads: [LoadResult, LoadResult] }> {
  const a = startLoad(first, { workers: 3, tls })
  const b = startLoad(second, { workers: 3, tls })
  for (let t0 = Date.now(); a.result().ok <= 20 || b.result().ok <= 20; await new Promise(r => setTimeout(r, 100))) {
    if (Date.now() - t0 > 60_000) throw new Error(`no load got through to ${first} and ${second} within 60 s`)
  }
  const result = await during()
  await new Promise(r => setTimeout(r, 500))
  return { result, loads: [await a.stop(), await b.stop()] }
}
