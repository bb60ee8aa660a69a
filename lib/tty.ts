// Imported first by lib/cli.ts so it runs before listr2 and chalk pick their colours:
// without a TTY (cron, CI) output is plain unless FORCE_COLOR asks otherwise.
// colorette (listr2's) turns colour on whenever CI is set, hence NO_COLOR here.
export const stdoutIsTTY = Boolean(process.stdout.isTTY)
export const interactive = Boolean(process.stdin.isTTY && process.stdout.isTTY)

if (!stdoutIsTTY && process.env.FORCE_COLOR === undefined) process.env.NO_COLOR = '1'
