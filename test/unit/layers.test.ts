// The layer path's command text, run where it can be: seed and forget go through a real
// /bin/sh with a stand-in `docker` on PATH, so the shell they build is what is tested.
import { spawn, spawnSync } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { layerCommands, localCommands, registryRef } from '../../lib/stack/layers.ts'

/** A directory with a fake docker answering `info` from root/driver and `images` from a listing; rmi args are logged. */
function fakeDocker(opts: { root: string; driver?: string; images?: string }) {
  const bin = mkdtempSync(join(tmpdir(), 'fake-docker-'))
  writeFileSync(join(bin, 'images.txt'), opts.images ?? '')
  writeFileSync(join(bin, 'docker'), [
    '#!/bin/sh',
    'case "$1" in',
    `  info) case "$3" in *DockerRootDir*) echo ${opts.root} ;; *) echo ${opts.driver ?? 'overlay2'} ;; esac ;;`,
    `  images) cat ${bin}/images.txt ;;`,
    `  rmi) shift; for a in "$@"; do echo "$a" >> ${bin}/rmi.log; done ;;`,
    'esac',
  ].join('\n'))
  chmodSync(join(bin, 'docker'), 0o755)
  const run = (script: string) => spawnSync('/bin/sh', ['-c', script], { encoding: 'utf8', env: { ...process.env, PATH: `${bin}:${process.env.PATH}` } })
  const removed = () => existsSync(join(bin, 'rmi.log')) ? readFileSync(join(bin, 'rmi.log'), 'utf8').trim().split('\n') : []
  return { run, removed, bin }
}

const alive = (pid: number) => { try { process.kill(pid, 0); return true } catch { return false } }

test('registryRef puts every image under one repository, its ref made a tag', () => {
  assert.is(registryRef(25000, 'opsbook/app:v2'), '127.0.0.1:25000/opsbook/images:opsbook_app_v2')
  assert.is(registryRef(25000, 'ghcr.io/acme/web@sha256:ab'), '127.0.0.1:25000/opsbook/images:ghcr.io_acme_web_sha256_ab')
  const long = registryRef(1, `x/${'a'.repeat(200)}:v1`)
  assert.match(long, /^127\.0\.0\.1:1\/opsbook\/images:sha256_[0-9a-f]{64}$/)
  assert.is.not(long, registryRef(1, `x/${'a'.repeat(200)}:v2`))
})

test('pull names the image by its own ref, then forgets the registry', () => {
  const cmd = layerCommands.pull('127.0.0.1:25000/opsbook/images:a_b', "weird'ref:v1")
  assert.match(cmd, /\ndocker pull -q 127\.0\.0\.1:25000\/opsbook\/images:a_b >\/dev\/null & p=\$!\n/)
  assert.match(cmd, /awk -v re='\^127\\\.0\\\.0\\\.1:25000\/opsbook\/'/)
  assert.match(cmd, /\nwait \$p && docker tag 127\.0\.0\.1:25000\/opsbook\/images:a_b 'weird'\\''ref:v1'; rc=\$\?\ndocker images.*\nexit \$rc$/)
  // A failed pull is the command's failure, though the registry's names are forgotten after it.
  const d = fakeDocker({ root: '/x' })
  assert.is(d.run(cmd.replace('docker pull -q 127.0.0.1:', 'false ')).status, 1)
  assert.is(d.run(cmd).status, 0)
  assert.equal(localCommands.tag('a:v1', 'r'), ['tag', 'a:v1', 'r'])
  assert.equal(localCommands.push('r'), ['push', 'r'])
  assert.equal(localCommands.untag('r'), ['rmi', 'r'])
})

test('a pull whose SSH channel is gone is stopped, not left pulling', async () => {
  const d = fakeDocker({ root: '/x' })
  const pidFile = join(tmpdir(), `pull-${process.pid}`)
  // A pull that would take a minute, with its pid written down.
  const cmd = layerCommands.pull('127.0.0.1:1/opsbook/images:x', 'x:v1').replace('docker pull -q 127.0.0.1:', () => `sh -c 'echo $$ > ${pidFile}; exec sleep 60' pull `)
  const child = spawn('/bin/sh', ['-c', cmd], { stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, PATH: `${d.bin}:${process.env.PATH}` } })
  const exited = new Promise<number | null>(r => child.on('close', r))
  await new Promise(r => setTimeout(r, 1500))
  const pid = Number(readFileSync(pidFile, 'utf8'))
  assert.ok(alive(pid), 'the pull runs while the channel is open')
  child.stdout!.destroy()
  assert.is.not(await exited, 0)
  assert.not.ok(alive(pid), 'the pull was stopped once the channel closed')
})

test('seed records blob digests for the layers the host has, once, only where docker keeps that record', () => {
  const root = mkdtempSync(join(tmpdir(), 'docker-root-'))
  const d = fakeDocker({ root })
  const pairs = [{ digest: `sha256:${'a'.repeat(64)}`, diffId: `sha256:${'1'.repeat(64)}` }, { digest: `sha256:${'b'.repeat(64)}`, diffId: `sha256:${'2'.repeat(64)}` }]
  // No layerdb: an engine without docker's own image store gets nothing written.
  assert.is(d.run(layerCommands.seed(pairs)).status, 0)
  assert.not.ok(existsSync(join(root, 'image')))
  mkdirSync(join(root, 'image/overlay2/layerdb'), { recursive: true })
  const dir = join(root, 'image/overlay2/distribution/diffid-by-digest/sha256')
  assert.is(d.run(layerCommands.seed(pairs)).status, 0)
  assert.equal(readdirSync(dir).sort(), ['a'.repeat(64), 'b'.repeat(64)])
  assert.is(readFileSync(join(dir, 'a'.repeat(64)), 'utf8'), `sha256:${'1'.repeat(64)}`)
  // A record docker wrote itself is left as it is.
  writeFileSync(join(dir, 'b'.repeat(64)), 'sha256:theirs')
  assert.is(d.run(layerCommands.seed(pairs)).status, 0)
  assert.is(readFileSync(join(dir, 'b'.repeat(64)), 'utf8'), 'sha256:theirs')
  assert.is(layerCommands.seed([]), 'true')
})

test('forget removes every tag and digest of the run\'s registry, nothing else', () => {
  const d = fakeDocker({ root: '/x', images: [
    '127.0.0.1:25000/opsbook/images opsbook_app_v2 sha256:aa',
    '127.0.0.1:31000/opsbook/images <none> sha256:bb',
    'opsbook/app v2 <none>',
    'registry.example.com/opsbook/images v1 sha256:cc',
    '127.0.0.1:25000/other x <none>',
  ].join('\n') })
  assert.is(d.run(layerCommands.forget(25000)).status, 0)
  assert.equal(d.removed().sort(), ['127.0.0.1:25000/opsbook/images:opsbook_app_v2', '127.0.0.1:25000/opsbook/images@sha256:aa'], 'one tunnel\'s names')
  assert.is(d.run(layerCommands.forget()).status, 0)
  assert.equal([...new Set(d.removed())].sort(), ['127.0.0.1:25000/opsbook/images:opsbook_app_v2', '127.0.0.1:25000/opsbook/images@sha256:aa', '127.0.0.1:31000/opsbook/images@sha256:bb'])
})

test.run()
