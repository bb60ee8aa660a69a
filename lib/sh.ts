// POSIX-sh quoting. zx's $ quotes with bash-only $'...' (see ../shared/PITFALLS.md),
// and remote commands run under /bin/sh, so every interpolated value goes through here.

const SAFE = /^[A-Za-z0-9_@%+=:,./-]+$/

/** Quotes one value so /bin/sh reads it back as exactly one word. */
export function quote(value: string | number): string {
  const s = String(value)
  if (s.includes('\0')) throw new Error('a shell argument cannot contain a NUL byte')
  if (s === '') return "''"
  if (SAFE.test(s)) return s
  return `'${s.replace(/'/g, `'\\''`)}'`
}

/** A fragment that is already shell text (a built command), inserted unquoted. */
export class Raw {
  constructor(readonly text: string) {}
  toString() { return this.text }
}
export const raw = (text: string) => new Raw(text)

type Arg = string | number | Raw | readonly (string | number)[]

/** Template tag: literal parts are shell text, every ${value} is quoted (arrays word by word). */
export function sh(parts: TemplateStringsArray, ...values: Arg[]): string {
  let out = parts[0]
  values.forEach((v, i) => {
    const text = v instanceof Raw ? v.text
      : Array.isArray(v) ? v.map(quote).join(' ')
        : quote(v as string | number)
    out += text + parts[i + 1]
  })
  return out
}
