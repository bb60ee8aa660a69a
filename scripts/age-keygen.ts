// Makes an age key pair for BACKUP_AGE_RECIPIENTS without installing age (same file format
// as age-keygen): `npx tsx scripts/age-keygen.ts backup.key`. Keep the file off the hosts.
import { writeFileSync } from 'node:fs'
import { generateX25519Identity, identityToRecipient } from 'age-encryption'

const file = process.argv[2]
if (!file || file.startsWith('-')) {
  console.error('Usage: npx tsx scripts/age-keygen.ts FILE   (writes the private key to FILE, mode 0600, and prints the public key)')
  process.exit(2)
}
const identity = await generateX25519Identity()
const recipient = await identityToRecipient(identity)
try {
  writeFileSync(file, `# created: ${new Date().toISOString()}\n# public key: ${recipient}\n${identity}\n`, { mode: 0o600, flag: 'wx' })
} catch (e) {
  console.error(`${file} was not written (${(e as NodeJS.ErrnoException).code}): choose a new file name; an existing key is never overwritten.`)
  process.exit(1)
}
console.log(`BACKUP_AGE_RECIPIENTS=${recipient}`)
console.log(`BACKUP_AGE_IDENTITY_FILE=${file}   # for restores only; keep it off the hosts`)
