// Run a command in the live release: a console, a management command, a one-off script.
import { randomBytes } from 'node:crypto'
import { HostError, UsageError } from '../lib/errors.ts'
import { main } from '../lib/runbook.ts'
import { execCommands, execService, pickContainer } from '../lib/stack/exec.ts'
import { live, readReleases } from '../lib/stack/releases.ts'
import { stackOf } from '../lib/stack/stack.ts'
import { stdoutIsTTY } from '../lib/tty.ts'

type Args = { _?: string[]; service?: string; running?: boolean }

await main<Args>({
  name: 'exec',
  usage: '--service NAME [options] -- COMMAND [ARGS...]',
  summary: 'Run a command in the live release of a service: by default in a one-off container (the live version\'s image and the service\'s settings, removed afterwards; nothing it depends on is started), with --running in its newest running container of the live release. With ENGINE=swarm both happen on the first node (the one-off container there, or a task running there). On a terminal the command gets one (a shell or console works as over ssh -t, Ctrl-C goes to it); without, stdin, stdout and stderr are plain streams. Ends with the command\'s exit code. Audited: who, when, which service and the command\'s first word (its arguments may hold secrets). No lock: a console may stay open during a deploy.',
  details: 'Examples:\n  exec.ts --env production --service backend -- python manage.py shell\n  exec.ts --env production --service app --running -- sh\n  echo "select 1" | exec.ts --env production --service db --running -- psql -U app app',
  options: {
    service: { type: 'string', value: 'NAME', description: 'the service to run the command in (required)' },
    running: { type: 'boolean', description: 'in its newest running container of the live release (docker exec) instead of a one-off one' },
  },
  cluster: 'first node',
  steps: () => [],
  session: (c, a) => {
    const st = stackOf(c)
    const words = a._ ?? []
    const service = execService(st, a.service, words)
    const terminal = Boolean(process.stdin.isTTY) && stdoutIsTTY
    const how = a.running ? 'running container' : 'one-off container'
    const oneOff = `${st.project}-exec-${randomBytes(4).toString('hex')}`
    return {
      audit: a['dry-run'] ? undefined : { what: `exec in ${service} (${how}): ${words[0]}`, args: ['--service', service, ...(a.running ? ['--running'] : [])] },
      async run(t, signal) {
        // A terminal both here and on the way there (TARGET=local has no pty to give).
        const tty = terminal && Boolean(t.attach)
        let cmd: string
        let before: { command: string; stdin: string } | undefined
        if (a.running) {
          const [found, rs] = await Promise.all([t.run(execCommands.candidates(st, service), { timeout: 30 }), readReleases(t, st)])
          const name = pickContainer(found.stdout, live(rs)?.version)
          if (!name) throw new HostError(`${service} has no running container on ${t.name}: run it in a one-off container (leave out --running), or see status.ts.`)
          cmd = execCommands.running(name, words, tty)
        } else {
          const cur = live(await readReleases(t, st))
          if (!cur) throw new HostError(`Nothing is deployed on ${t.name} yet: deploy.ts first.`)
          const o = execCommands.oneOff(st, service, cur.version, words, tty, oneOff)
          cmd = o.command
          before = o.before
        }
        if (a['dry-run']) { console.log(`would run on ${t.name}: ${words[0]} … in ${service}'s ${how}`); return 0 }
        if (signal.aborted) return 130
        const go = (): Promise<number> => {
          if (tty) return t.attach!(cmd)
          // Ctrl-C (no terminal to pass it through): closing the channel does not stop the
          // command, so the one-off container is removed; in a running one it runs on.
          const stopped = new Promise<number>(resolve => signal.addEventListener('abort', () => {
            if (a.running) return resolve(130)
            t.run(execCommands.stop(st, oneOff), { timeout: 60 }).then(() => resolve(130), () => resolve(130))
          }, { once: true }))
          const ran = t.run(cmd, { stdin: process.stdin, stdout: process.stdout, onOutput: chunk => process.stderr.write(chunk), allowFail: true, signal, timeout: 24 * 3600 })
            .then(r => r.code, e => { if (signal.aborted) return stopped; throw e })
          return Promise.race([ran, stopped])
        }
        if (!before) return go()
        // On a cluster: the one-off container's environment, into a file its command removes
        // as soon as it has it open; removed here too, however the run ended (it holds secrets).
        await t.run(before.command, { stdin: before.stdin, timeout: 30 })
        try {
          return await go()
        } finally {
          await t.run(execCommands.forget(st, oneOff), { allowFail: true, timeout: 30 }).catch(() => {})
        }
      },
    }
  },
  check: a => { if ((a._ ?? []).length && !process.argv.includes('--')) throw new UsageError('Put the command after --: exec.ts --service NAME -- COMMAND [ARGS...] (so its own options are not read as exec.ts\'s).') },
})
