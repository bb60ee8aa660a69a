// A real S3 API for the tests: moto_server from Debian 13 (python3-moto) in a container,
// published on 127.0.0.1. Unlike s3rver it implements multipart aborts and
// ListMultipartUploads, which the "a failed upload leaves nothing behind" tests need.
import { CreateBucketCommand, ListMultipartUploadsCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3'
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
  client: S3Client
  createBucket(name: string): Promise<void>
  keys(bucket: string): Promise<string[]>
  pendingUploads(bucket: string): Promise<number>
  objects(bucket: string): Promise<{ key: string; size: number; modified: number }[]>
  stop(): void
  start(): void
  destroy(): void
}

export async function startS3(): Promise<S3> {
  const image = await motoImage()
  const container = `opsbook-s3-${process.pid}`
  docker(['rm', '-f', container], { check: false })
  docker(['run', '-d', '--name', container, ...testLabels(), '-p', '127.0.0.1::5000', image])
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
    endpoint, client,
    async createBucket(name) { await client.send(new CreateBucketCommand({ Bucket: name })) },
    async keys(bucket) { return ((await client.send(new ListObjectsV2Command({ Bucket: bucket }))).Contents ?? []).map(o => o.Key!).sort() },
    async objects(bucket) { return ((await client.send(new ListObjectsV2Command({ Bucket: bucket }))).Contents ?? []).map(o => ({ key: o.Key!, size: o.Size ?? 0, modified: o.LastModified?.getTime() ?? 0 })) },
    async pendingUploads(bucket) { return ((await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }))).Uploads ?? []).length },
    stop() { docker(['pause', container]) },
    start() { docker(['unpause', container]) },
    destroy() { docker(['rm', '-f', container], { check: false }) },
  }
}
