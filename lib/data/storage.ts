// Where backups go: the local backups/ folder (the embedded default) or any S3-compatible
// bucket. Both promise the same thing: an object is either complete or absent. Locally a
// file is written under a temporary name and renamed when complete; on S3 a multipart
// upload is completed only when its body ended cleanly and is aborted otherwise.
import { createReadStream, createWriteStream, existsSync } from 'node:fs'
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises'
import { dirname, join, relative, resolve, sep } from 'node:path'
import { pipeline } from 'node:stream/promises'
import type { Readable } from 'node:stream'
import type { S3Client } from '@aws-sdk/client-s3'
import { HostError, UsageError } from '../errors.ts'

export interface Store {
  /** For messages and manifests: backups/ or s3://bucket/prefix */
  readonly where: string
  /** Stores the whole body under key, or nothing (the body's error is rethrown). */
  put(key: string, body: Readable): Promise<void>
  get(key: string): Promise<Readable>
  /** Keys under prefix (recursively), sorted. */
  list(prefix: string): Promise<string[]>
  remove(keys: string[]): Promise<void>
}

export interface S3Settings {
  bucket: string
  prefix: string
  endpoint?: string
  region: string
  accessKeyId?: string
  secretAccessKey?: string
  /** Part size for multipart uploads, MiB: 10,000 parts cap the largest object at 10,000 × this. */
  partMiB: number
}

/** s3://bucket/some/prefix → bucket and prefix (without slashes at either end). */
export function parseS3Url(url: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(url)
  if (!m) throw new UsageError(`BACKUP_DEST ${JSON.stringify(url)} is not local or s3://bucket/prefix.`)
  return { bucket: m[1], prefix: (m[2] ?? '').replace(/^\/+|\/+$/g, '') }
}

export class LocalStore implements Store {
  readonly where: string
  constructor(private root: string) { this.where = `${relative(process.cwd(), root) || '.'}/` }

  private path(key: string) {
    const p = resolve(this.root, key)
    if (!p.startsWith(resolve(this.root) + sep)) throw new UsageError(`The object key ${key} leaves ${this.root}.`)
    return p
  }

  async put(key: string, body: Readable) {
    const p = this.path(key)
    await mkdir(dirname(p), { recursive: true })
    const partial = `${p}.partial-${process.pid}`
    try {
      await pipeline(body, createWriteStream(partial, { mode: 0o600 }))
      await rename(partial, p)
    } catch (e) {
      await rm(partial, { force: true })
      throw e
    }
  }

  async get(key: string) {
    const p = this.path(key)
    if (!existsSync(p)) throw new HostError(`${this.where}${key} does not exist.`)
    return createReadStream(p)
  }

  async list(prefix: string) {
    const base = this.path(prefix || '.') === resolve(this.root) ? this.root : this.path(prefix)
    const out: string[] = []
    const walk = async (dir: string) => {
      const entries = await readdir(dir, { withFileTypes: true }).catch(() => [])
      for (const e of entries) {
        const p = join(dir, e.name)
        if (e.isDirectory()) await walk(p)
        else if (!e.name.includes('.partial-')) out.push(relative(this.root, p).split(sep).join('/'))
      }
    }
    if (existsSync(base) && (await stat(base)).isDirectory()) await walk(base)
    return out.sort()
  }

  async remove(keys: string[]) {
    for (const k of keys) await rm(this.path(k), { force: true })
  }
}

export class S3Store implements Store {
  readonly where: string
  private sdk?: Promise<{ client: S3Client; s3: typeof import('@aws-sdk/client-s3') }>
  constructor(private s: S3Settings) {
    this.where = `s3://${s.bucket}/${s.prefix ? `${s.prefix}/` : ''}`
  }

  // The SDK is loaded on first use: it was a quarter of every runbook's start-up, also
  // for runs (and --help) that never reach the bucket.
  private connect() {
    return this.sdk ??= import('@aws-sdk/client-s3').then(s3 => {
      // The SDK warns on Node < 22 (its versions after January 2027 will need it); the pinned
      // version runs on Node 20, and the warning would land in every cron log.
      process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true'
      const client = new s3.S3Client({
        region: this.s.region, endpoint: this.s.endpoint, forcePathStyle: Boolean(this.s.endpoint),
        credentials: this.s.accessKeyId && this.s.secretAccessKey ? { accessKeyId: this.s.accessKeyId, secretAccessKey: this.s.secretAccessKey } : undefined,
        // Other S3 implementations reject the newer default checksums; sha256 is ours anyway.
        requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED',
        maxAttempts: 3,
      })
      return { client, s3 }
    })
  }

  private key(k: string) { return this.s.prefix ? `${this.s.prefix}/${k}` : k }

  async put(key: string, body: Readable) {
    let failed: Error | undefined
    body.once('error', e => { failed = e })
    // queueSize × partSize is the memory ceiling, whatever the object's size.
    const [{ client }, { Upload }] = await Promise.all([this.connect(), import('@aws-sdk/lib-storage')])
    const up = new Upload({ client, params: { Bucket: this.s.bucket, Key: this.key(key), Body: body }, partSize: this.s.partMiB << 20, queueSize: 2, leavePartsOnError: false })
    try {
      await up.done()
    } catch (e) {
      throw failed ?? s3Error(e, this.where)
    }
  }

  async get(key: string) {
    const { client, s3 } = await this.connect()
    try {
      const r = await client.send(new s3.GetObjectCommand({ Bucket: this.s.bucket, Key: this.key(key) }))
      return r.Body as Readable
    } catch (e) { throw s3Error(e, `${this.where}${key}`) }
  }

  async list(prefix: string) {
    const out: string[] = []
    let token: string | undefined
    const { client, s3 } = await this.connect()
    try {
      do {
        const r = await client.send(new s3.ListObjectsV2Command({ Bucket: this.s.bucket, Prefix: this.key(prefix), ContinuationToken: token }))
        for (const o of r.Contents ?? []) if (o.Key) out.push(this.s.prefix ? o.Key.slice(this.s.prefix.length + 1) : o.Key)
        token = r.IsTruncated ? r.NextContinuationToken : undefined
      } while (token)
    } catch (e) { throw s3Error(e, this.where) }
    return out.sort()
  }

  async remove(keys: string[]) {
    const { client, s3 } = await this.connect()
    for (let i = 0; i < keys.length; i += 1000) {
      try {
        await client.send(new s3.DeleteObjectsCommand({ Bucket: this.s.bucket, Delete: { Objects: keys.slice(i, i + 1000).map(k => ({ Key: this.key(k) })), Quiet: true } }))
      } catch (e) { throw s3Error(e, this.where) }
    }
  }
}

/** S3 failures as one sentence: unreachable endpoint, missing bucket, refused credentials. */
export function s3Error(e: unknown, where: string): HostError {
  const err = e as Error & { code?: string; $fault?: string; $metadata?: { httpStatusCode?: number } }
  if (['ECONNREFUSED', 'ENOTFOUND', 'ETIMEDOUT', 'EHOSTUNREACH'].includes(err.code ?? '') || /ECONNREFUSED|getaddrinfo|socket hang up/.test(err.message)) {
    return new HostError(`The S3 endpoint for ${where} cannot be reached (${err.code ?? err.message}): check S3_ENDPOINT and the network.`)
  }
  // An S3ServiceException, told by its fields: the SDK's class is not loaded up front.
  if (err.$fault && err.$metadata) {
    if (err.name === 'NoSuchBucket') return new HostError(`The bucket of ${where} does not exist: create it or fix BACKUP_DEST.`)
    if (err.name === 'NoSuchKey') return new HostError(`${where} does not exist.`)
    if (['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch'].includes(err.name)) return new HostError(`S3 refused access to ${where} (${err.name}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.`)
    return new HostError(`S3 failed on ${where}: ${err.name} (HTTP ${err.$metadata.httpStatusCode ?? '?'}).`)
  }
  return new HostError(`Storing to ${where} failed: ${err.message}`)
}
