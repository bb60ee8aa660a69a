// One runbook at a time per host: an atomic mkdir on the host, with who/when/what
// inside and a heartbeat (the info file's mtime) so a lock left by a crashed
// operator machine can be told from one that is really held.
import { randomBytes } from 'node:crypto'
import { hostname, userInfo } from 'node:os'
import { RefusedError } from './errors.ts'
import { raw, sh } from './sh.ts'
import type { Target } from './steps.ts'

export const STATE_DIR = '/var/lib/opsbook'
export const LOCK_DIR = `${STATE_DIR}/lock`
const INFO = `${LOCK_DIR}/info`
/** Seconds since the holder's last heartbeat (the info file's mtime). */
const AGE = sh`echo $(( $(date +%s) - $(stat -c %Y ${INFO} 2>/dev/null || stat -c %Y ${LOCK_DIR}) ))`
/** A holder touches the lock this often; one silent for LOCK_STALE_AFTER is presumed dead. */
export const HEARTBEAT_MS = 30_000

export interface LockInfo { id: string; runbook: string; env: string; operator: string; from: string; pid: number; since: string; message?: string }

export const lockCommands = {
  /**
   * Takes the lock (info arrives on stdin) or prints HELD, the heartbeat age and the
   * holder's info. Breaking first prints the broken holder as a BROKE block, in the same
   * round trip (a second one would queue behind checks waiting for this lock).
   */
  /**
   * `breakFirst`: true breaks whatever holds it (--break-lock); a holder id breaks it only
   * if that holder still has it, so two runs taking over the same dead one cannot both
   * win (the second finds the first's id, breaks nothing and is refused).
   */
  acquire: (breakFirst: boolean | string = false) => sh`mkdir -p -m 755 ${STATE_DIR} && ` +
    (breakFirst ? (typeof breakFirst === 'string' ? sh`if grep -qsF ${breakFirst} ${INFO}; then ` : sh`if [ -d ${LOCK_DIR} ]; then `) +
      sh`echo BROKE; ${raw(AGE)}; cat ${INFO} 2>/dev/null; echo; echo END; rm -rf ${LOCK_DIR}; fi; ` : '') +
    sh`if mkdir -m 700 ${LOCK_DIR} 2>/dev/null; then cat > ${INFO}; else cat > /dev/null; echo HELD; ${raw(AGE)}; cat ${INFO} 2>/dev/null; fi`,
  /**
   * Succeeds once the lock holds our id (exit 75 after 2-3 s otherwise). Checks sent in
   * the same round trip as the lock request start with it, so they never read a host
   * that another run is still changing. Bounded by the clock, not a count: on a loaded
   * host 400 rounds of grep and sleep took over 30 s, and the check's own timeout (exit
   * 124, a failure) came before exit 75.
   */
  awaitOwn: (id: string) => sh`end=$(($(date +%s) + 3)); until grep -qsF ${id} ${INFO}; do [ "$(date +%s)" -lt "$end" ] || exit 75; sleep 0.005; done`,
  heartbeat: (id: string) => sh`grep -qF ${id} ${INFO} && touch ${INFO}`,
  /** Removes the lock only if it is still ours. */
  release: (id: string) => sh`if grep -qF ${id} ${INFO} 2>/dev/null; then rm -rf ${LOCK_DIR}; fi`,
  status: () => sh`if [ -d ${LOCK_DIR} ]; then echo HELD; ${raw(AGE)}; cat ${INFO} 2>/dev/null; fi`,
}

export function newLockInfo(runbook: string, env: string, message?: string): LockInfo {
  return {
    id: randomBytes(8).toString('hex'), runbook, env, operator: userInfo().username, from: hostname(),
    pid: process.pid, since: new Date().toISOString(), ...(message ? { message } : {}),
  }
}

export interface Holder { info?: LockInfo; ageS: number; stale: boolean; staleAfterS: number }

/** Reads the HELD (or BROKE) block that acquire and status print. */
export function parseHolder(out: string, marker = 'HELD', staleAfterS = 300): Holder | undefined {
  const start = out.split('\n').indexOf(marker)
  if (start < 0) return undefined
  const rest = out.split('\n').slice(start)
  const end = rest.indexOf('END')
  const lines = end < 0 ? rest : rest.slice(0, end)
  const ageS = Number(lines[1]) || 0
  let info: LockInfo | undefined
  try { info = JSON.parse(lines.slice(2).join('\n').trim()) } catch {}
  return { info, ageS, stale: ageS > staleAfterS, staleAfterS }
}

/** A holder that ran on this machine and whose process is gone (kill -9, a crash). */
export function deadHere(h: Holder, here = hostname()): boolean {
  if (!h.info || h.info.from !== here) return false
  try { process.kill(h.info.pid, 0); return false } catch (e) { return (e as NodeJS.ErrnoException).code === 'ESRCH' }
}

export const describeWho = (h: Holder) => h.info ? `${h.info.operator}@${h.info.from} (${h.info.runbook} on ${h.info.env}, pid ${h.info.pid}, since ${h.info.since}${h.info.message ? `, "${h.info.message}"` : ''})` : 'an unknown holder'

export function describeHolder(h: Holder): string {
  const who = describeWho(h)
  return h.stale
    ? `The host lock is held by ${who} but has had no heartbeat for ${h.ageS} s, so that run probably died; if you are sure, re-run with --break-lock (unattended runs take it over with --take-stale-lock).`
    : `The host lock is held by ${who}; wait for it to finish (or, if it is dead, re-run with --break-lock after ${h.staleAfterS - h.ageS} s).`
}

export class Lock {
  private timer: NodeJS.Timeout
  constructor(private target: Target, readonly info: LockInfo) {
    this.timer = setInterval(() => { target.run(lockCommands.heartbeat(info.id), { allowFail: true, timeout: 20 }).catch(() => {}) }, HEARTBEAT_MS)
    this.timer.unref()
  }
  /** The command that releases it, for combining with the audit append in one round trip. */
  releaseCommand() { clearInterval(this.timer); return lockCommands.release(this.info.id) }
}

export interface LockOptions {
  /** --break-lock: whatever holds it. */
  breakLock: boolean
  /** --take-stale-lock (cron, timers): a holder silent for staleAfterS. */
  takeStale: boolean
  staleAfterS: number
  /** On a terminal: asked before taking over a stale holder. */
  ask?: (h: Holder) => Promise<boolean>
}

/**
 * Takes the host lock. A holder on this machine whose process is gone is taken over at
 * once; a stale one elsewhere only with --take-stale-lock or the operator's yes. `taken`
 * says why, for the run's output and its audit line.
 */
export async function acquireLock(target: Target, info: LockInfo, o: LockOptions): Promise<{ lock: Lock; broke?: Holder; taken?: string }> {
  const attempt = async (breakFirst: boolean | string) => {
    const out = (await target.run(lockCommands.acquire(breakFirst), { stdin: JSON.stringify(info) + '\n', timeout: 30 })).stdout
    return { held: parseHolder(out, 'HELD', o.staleAfterS), broke: parseHolder(out, 'BROKE', o.staleAfterS) }
  }
  let { held, broke } = await attempt(o.breakLock)
  let taken: string | undefined
  if (held?.info) {
    const why = deadHere(held) ? `its process (pid ${held.info.pid}) on this machine is gone`
      : held.stale && (o.takeStale || await o.ask?.(held)) ? `it had no heartbeat for ${held.ageS} s` : undefined
    if (why) {
      taken = `took over the host lock of ${held.info.operator}@${held.info.from} (${held.info.runbook}): ${why}`
      ;({ held, broke } = await attempt(held.info.id))
    }
  }
  if (held) throw new RefusedError(describeHolder(held))
  return { lock: new Lock(target, info), broke: taken ? undefined : broke, taken }
}

/** The target as seen by checks sent alongside the lock request (see awaitOwn). */
export function behindLock(target: Target, id: string): Target {
  return { name: target.name, close: () => target.close(), run: (cmd, opts) => target.run(`${lockCommands.awaitOwn(id)} && {\n${cmd}\n}`, opts) }
}

export async function lockHolder(target: Target, staleAfterS = 300): Promise<Holder | undefined> {
  return parseHolder((await target.run(lockCommands.status(), { timeout: 30 })).stdout, 'HELD', staleAfterS)
}
