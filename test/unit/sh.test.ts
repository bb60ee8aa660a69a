import { spawnSync } from 'node:child_process'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { quote, raw, sh } from '../../lib/sh.ts'

const nasty = ["it's", '$HOME', '`id`', '$(id)', 'a\nb', 'semi;colon', 'pipe|amp&', '"dq"', '\\back', ' lead', 'tab\tx', "''", '*', '~', '-n', 'ünï', '!bang']

test('quote leaves plain words alone and quotes everything else', () => {
  assert.is(quote('abc-1.2_/x@y:z,w+v=%'), 'abc-1.2_/x@y:z,w+v=%')
  assert.is(quote(''), "''")
  assert.is(quote(8080), '8080')
  assert.is(quote("it's"), `'it'\\''s'`)
  assert.is(quote('$HOME'), `'$HOME'`)
  assert.is(quote('`id`'), "'`id`'")
  assert.is(quote('a\nb'), "'a\nb'")
})

test('every quoted value reads back unchanged through a real /bin/sh', () => {
  for (const v of nasty) {
    const r = spawnSync('/bin/sh', ['-c', `printf '%s' ${quote(v)}`], { encoding: 'utf8' })
    assert.is(r.stdout, v, `round trip of ${JSON.stringify(v)}`)
  }
})

test('quote refuses NUL bytes', () => {
  assert.throws(() => quote('a\0b'), /NUL/)
})

test('sh tag quotes values, spreads arrays word by word, inserts raw text as is', () => {
  assert.is(sh`rm -f ${'a b'} ${['x', "y'z"]} ${raw('&& echo done')}`, `rm -f 'a b' x 'y'\\''z' && echo done`)
  const r = spawnSync('/bin/sh', ['-c', sh`for w in ${nasty}; do printf '[%s]' "$w"; done`], { encoding: 'utf8' })
  assert.is(r.stdout, nasty.map(v => `[${v}]`).join(''))
})

test.run()
