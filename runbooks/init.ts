// Adopt a stack as its owners wrote it: reads the compose files unchanged and writes the
// override that makes them deployable (plus a settings skeleton). Contacts no host.
//   npx tsx runbooks/init.ts --compose compose.yml:compose.prod.yml --route backend=/api/ --route frontend=/
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import chalk from 'chalk'
import { helpText, parseCli, type OptionSpec } from '../lib/cli.ts'
import { OpsError, RefusedError, UsageError } from '../lib/errors.ts'
import { interactive } from '../lib/prompts.ts'
import { planAdoption, renderAdoption, renderSettings, type Answers } from '../lib/stack/adopt.ts'
import { mergedModel } from '../lib/stack/model.ts'

const OPTIONS = {
  compose: { type: 'string', value: 'FILES', description: 'your compose file(s), as written: several separated by ":" (base first), as COMPOSE_FILE takes them' },
  route: { type: 'string', value: 'SERVICE=PATHS', multiple: true, description: 'path prefixes nginx sends to a web service, e.g. backend=/api/ (comma separated; asked on a terminal; default / for a single web service)' },
  host: { type: 'string', value: 'SERVICE=NAMES', multiple: true, description: 'host names nginx sends to a web service, e.g. admin=admin.example.com' },
  out: { type: 'string', value: 'PATH', description: 'the override to write (default: opsbook.override.yml beside the first file)' },
  settings: { type: 'string', value: 'PATH', description: 'the settings skeleton to write (default: .env.example.opsbook beside the override)' },
  'dry-run': { type: 'boolean', description: 'print the override and the skeleton; write nothing' },
  yes: { type: 'boolean', short: 'y', description: 'replace an existing override or skeleton that differs (asked on a terminal)' },
  help: { type: 'boolean', short: 'h', description: 'show this help' },
} satisfies Record<string, OptionSpec>

type Args = { compose?: string; route?: string[]; host?: string[]; out?: string; settings?: string; 'dry-run'?: boolean; yes?: boolean; help?: boolean }

const say = (line: string) => process.stderr.write(line + '\n')

function pairs(list: string[] | undefined, flag: string, check: RegExp, what: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const p of list ?? []) {
    const m = /^([A-Za-z0-9][A-Za-z0-9_.-]*)=(.+)$/.exec(p)
    if (!m || !m[2].split(',').every(v => check.test(v.trim()))) throw new UsageError(`--${flag} ${JSON.stringify(p)} is not SERVICE=${what}.`)
    out[m[1]] = m[2].split(',').map(v => v.trim()).join(',')
  }
  return out
}

async function run(argv: string[]): Promise<number> {
  const args = parseCli<Args>(argv, OPTIONS)
  if (args.help) {
    console.log(helpText({
      name: 'init', options: OPTIONS, stepsHeading: 'What it does (on this machine only; no host is contacted):',
      summary: 'Adopt a stack written for `docker compose up`: read its compose files as they are and write the override that makes them deployable by opsbook (web services routed through its nginx, published ports removed, release tags, health paths), each change with a comment saying why, and a settings skeleton listing every variable the files interpolate.',
      steps: ['Read and merge the compose files as compose does', 'Sort the services: web (publishes a port), worker, accessory (PostgreSQL, Redis...)', 'Ask the routes of the web services (or take --route)', 'Write the override and the settings skeleton; check the files plus the override as deploy will'],
    }))
    return 0
  }
  if (!args.compose) throw new UsageError('No compose file given: pass --compose FILE (several separated by ":", base first).')
  const paths = args.compose.split(':').filter(Boolean).map(p => resolve(p))
  const sources = paths.map(p => {
    const file = relative(process.cwd(), p) || p
    try { return { file, text: readFileSync(p, 'utf8') } } catch { throw new UsageError(`The compose file ${file} cannot be read: check the path.`) }
  })
  const routes = pairs(args.route, 'route', /^\/[A-Za-z0-9._~/-]*$/, '/PATH[,/PATH]')
  const hosts = pairs(args.host, 'host', /^[A-Za-z0-9*.-]+$/, 'HOST[,HOST]')
  const plan = planAdoption(sources)
  const web = plan.services.filter(s => s.role === 'web')
  for (const k of [...Object.keys(routes), ...Object.keys(hosts)]) {
    if (!web.some(s => s.name === k)) throw new UsageError(`--route/--host ${k}: ${sources.map(s => s.file).join(' + ')} has no web service of that name (${web.map(s => s.name).join(', ') || 'none'}).`)
  }
  const answers: Answers = { routes, hosts }
  for (const s of web) {
    if (routes[s.name] || hosts[s.name]) continue
    if (web.length === 1) { routes[s.name] = '/'; continue }
    if (!interactive) throw new UsageError(`Several web services (${web.map(w => w.name).join(', ')}): pass --route ${s.name}=/PATH/ (or --host ${s.name}=NAME) for each; nothing was written.`)
    const { input } = await import('@inquirer/prompts')
    const given = await input({ message: `Path prefixes nginx sends to ${s.name} (port ${s.port}), comma separated:`, default: web.indexOf(s) === 0 ? '/' : `/${s.name}/` })
    Object.assign(routes, pairs([`${s.name}=${given}`], 'route', /^\/[A-Za-z0-9._~/-]*$/, '/PATH[,/PATH]'))
  }

  const out = resolve(args.out ?? join(dirname(paths[0]), 'opsbook.override.yml'))
  const settings = resolve(args.settings ?? join(dirname(out), '.env.example.opsbook'))
  const override = renderAdoption(plan, answers)
  // The files plus the override must pass the checks deploy makes (with placeholder values).
  const vars = Object.fromEntries([...plan.variables.keys()].map(k => [k, 'placeholder']))
  mergedModel([...sources, { file: relative(process.cwd(), out) || out, text: override }], { vars })
  const composeFile = [...paths, out].map(p => relative(dirname(settings), p) || p).join(':')
  const skeleton = renderSettings(plan, composeFile)
  if (args['dry-run']) {
    console.log(`# ${relative(process.cwd(), out)}\n${override}\n# ${relative(process.cwd(), settings)}\n${skeleton}`)
    say('Dry run: nothing was written.')
    return 0
  }
  for (const [path, text] of [[out, override], [settings, skeleton]] as const) {
    const name = relative(process.cwd(), path) || path
    if (existsSync(path) && readFileSync(path, 'utf8') === text) { say(`${chalk.green('✔')} ${name}: already as written (unchanged)`); continue }
    if (existsSync(path) && !args.yes) {
      if (!interactive) throw new RefusedError(`${name} exists and differs: pass --yes to replace it (or --out/--settings for another path); nothing was written.`)
      const { confirm } = await import('@inquirer/prompts')
      if (!await confirm({ message: `${name} exists and differs. Replace it?`, default: false })) throw new RefusedError(`Not replaced: ${name} is as it was.`)
    }
    writeFileSync(path, text)
    say(`${chalk.green('✔')} ${name}: written (changed)`)
  }
  say(`Next: review ${relative(process.cwd(), out)}, fill in ${relative(process.cwd(), settings)} and rename it to .env.production, then run provision.ts and deploy.ts.`)
  return 0
}

try {
  process.exitCode = await run(process.argv.slice(2))
} catch (e) {
  process.exitCode = e instanceof OpsError ? e.exitCode : 1
  if ((e as Error).name === 'ExitPromptError') { say('Cancelled at the prompt; nothing was written.'); process.exitCode = 3 }
  else say(chalk.red(`error: ${e instanceof OpsError ? e.message : `unexpected failure (a bug; please report it): ${(e as Error).stack}`}`))
}
