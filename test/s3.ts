// A real S3 API for the tests: moto_server from Debian 13 (python3-moto) in a container,
// published on 127.0.0.1. Unlike s3rver it implements multipart aborts and
// ListMultipartUploads, which the "a failed upload leaves nothing behind" tests need.
import { CreateBucketCommand, ListMultipartUploadsCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { nginxImage } from './images.ts'
import { docker, ensureRootfsImage, sleep, testLabels } from './testbed.ts'

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true'

export const motoImage = () => ensureRootfsImage({
  // debootstrap's resolver gives up on moto's dependencies; apt in the new root does not.
  name: 'opsbook/moto', packages: 'ca-certificates',
  customize: 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-moto python3-flask python3-flask-cors python3-openssl >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*',
  changes: ['CMD ["moto_server", "-H", "0.0.0.0", "-p", "5000"]'],
})

export interface S3 {
  endpoint: string
  /** startS3({ tls: true }): https://IP of a TLS front (nginx) for hosts (pgBackRest speaks only https to S3), and its CA's PEM file. */
  hostEndpoint?: string
  caFile?: string
  client: S3Client
  createBucket(name: string): Promise<void>
  keys(bucket: string): Promise<string[]>
  pendingUploads(bucket: string): Promise<number>
  objects(bucket: string): Promise<{ key: string; size: number; modified: number }[]>
  stop(): void
  start(): void
  destroy(): void
}

export async function startS3(opts: { tls?: boolean } = {}): Promise<S3> {
  const image = await motoImage()
  const container = `opsbook-s3-${process.pid}`
  docker(['rm', '-f', container], { check: false })
  docker(['run', '-d', '--name', container, ...testLabels(), '-p', '127.0.0.1::5000', image])
  const front = opts.tls ? await startTlsFront(container) : undefined
  const port = Number(docker(['port', container, '5000/tcp']).stdout.trim().split(':').pop())
  const endpoint = `http://127.0.0.1:${port}`
  const client = new S3Client({ endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: 'test', secretAccessKey: 'test-secret-key' } })
  // Not a fetch loop: a request that docker-proxy accepts before moto listens can hang
  // without keeping the event loop alive.
  for (let i = 0; !/Running on/.test(docker(['logs', container], { check: false }).stderr + docker(['logs', container], { check: false }).stdout); i++) {
    if (i > 240) throw new Error('moto did not start')
    await sleep(250)
  }
  return {
    endpoint, client, hostEndpoint: front?.endpoint, caFile: front?.caFile,
    async createBucket(name) { await client.send(new CreateBucketCommand({ Bucket: name })) },
    async keys(bucket) { return ((await client.send(new ListObjectsV2Command({ Bucket: bucket }))).Contents ?? []).map(o => o.Key!).sort() },
    async objects(bucket) { return ((await client.send(new ListObjectsV2Command({ Bucket: bucket }))).Contents ?? []).map(o => ({ key: o.Key!, size: o.Size ?? 0, modified: o.LastModified?.getTime() ?? 0 })) },
    async pendingUploads(bucket) { return ((await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }))).Uploads ?? []).length },
    stop() { docker(['pause', container]) },
    start() { docker(['unpause', container]) },
    destroy() { docker(['rm', '-f', container, ...(front ? [front.container] : [])], { check: false }) },
  }
}

/**
 * nginx terminating TLS in front of moto, on docker's bridge (VPS containers, and the
 * containers inside them, reach it by IP). Its certificate names that IP and is signed by
 * a CA made here; moto sees the Host header the client signed.
 */
async function startTlsFront(moto: string): Promise<{ container: string; endpoint: string; caFile: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'opsbook-s3tls-'))
  const container = `${moto}-tls`
  const motoIp = docker(['inspect', '-f', '{{.NetworkSettings.IPAddress}}', moto]).stdout.trim()
  writeFileSync(join(dir, 's3.conf'), [
    'server {',
    '  listen 443 ssl; ssl_certificate /c/cert.pem; ssl_certificate_key /c/key.pem;',
    '  client_max_body_size 0; proxy_request_buffering off; proxy_buffering off;',
    `  location / { proxy_pass http://${motoIp}:5000; proxy_set_header Host $http_host; proxy_http_version 1.1; }`,
    '}', '',
  ].join('\n'))
  const ossl = (...a: string[]) => execFileSync('openssl', a, { cwd: dir, stdio: 'pipe' })
  ossl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=opsbook test S3 CA')
  // The IP is known once the container runs: start it on a throwaway certificate, then reload.
  ossl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'key.pem', '-out', 'cert.pem', '-days', '2', '-subj', '/CN=placeholder')
  docker(['rm', '-f', container], { check: false })
  docker(['run', '-d', '--name', container, ...testLabels(), '-v', `${dir}:/c:ro`, '-v', `${join(dir, 's3.conf')}:/etc/nginx/conf.d/s3.conf:ro`, await nginxImage()])
  const ip = docker(['inspect', '-f', '{{.NetworkSettings.IPAddress}}', container]).stdout.trim()
  writeFileSync(join(dir, 'ext.cnf'), `subjectAltName=IP:${ip}\n`)
  ossl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'key.pem', '-out', 'req.csr', '-subj', `/CN=${ip}`)
  ossl('x509', '-req', '-in', 'req.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'cert.pem', '-days', '2', '-extfile', 'ext.cnf')
  docker(['exec', container, 'nginx', '-s', 'reload'])
  await sleep(500)
  return { container, endpoint: `https://${ip}`, caFile: join(dir, 'ca.pem') }
}
