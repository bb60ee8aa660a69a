// The raw reference for bench/backup-throughput.ts: stdin straight into one S3 multipart
// upload with the same SDK, part size and queue as the backup runbook, nothing else.
//   ssh host 'pg_dump …' | node --import tsx bench/s3-upload.ts BUCKET KEY
import { S3Client } from '@aws-sdk/client-s3'
import { Upload } from '@aws-sdk/lib-storage'

const [bucket, key] = process.argv.slice(2)
const client = new S3Client({
  endpoint: process.env.S3_ENDPOINT, region: 'us-east-1', forcePathStyle: true,
  credentials: { accessKeyId: process.env.AWS_ACCESS_KEY_ID!, secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY! },
  requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED',
})
await new Upload({ client, params: { Bucket: bucket, Key: key, Body: process.stdin }, queueSize: 2, partSize: Number(process.env.S3_PART_SIZE_MB ?? 64) * 1048576 }).done()
