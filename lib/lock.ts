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
/** A holder touches the lock this often; one silent for STALE_AFTER is presumed dead. */
export const HEARTBEAT_MS = 30_000
export const STALE_AFTER_S = 120

export interface LockInfo { id: string; runbook: string; env: string; operator: string; from: string; pid: number; since: string; message?: string }

export const lockCommands = {
  /**
   * Takes the lock (info arrives on stdin) or prints HELD, the heartbeat age and the
   * holder's info. Breaking first prints the broken holder as a BROKE block, in the same
   * round trip (a second one would queue behind checks waiting for this lock).
   */
  acquire: (breakFirst = false) => sh`mkdir -p -m 755 ${STATE_DIR} && ` +
    (breakFirst ? sh`if [ -d ${LOCK_DIR} ]; then echo BROKE; ${raw(AGE)}; cat ${INFO} 2>/dev/null; echo; echo END; rm -rf ${LOCK_DIR}; fi; ` : '') +
    sh`if mkdir -m 700 ${LOCK_DIR} 2>/dev/null; then cat > ${INFO}; else cat > /dev/null; echo HELD; ${raw(AGE)}; cat ${INFO} 2>/dev/null; fi`,
  /**
   * Succeeds once the lock holds our id (exit 75 after ~2 s otherwise). Checks sent in
   * the same round trip as the lock request start with it, so they never read a host
   * that another run is still changing.
   */
  awaitOwn: (id: string) => sh`i=0; until grep -qsF ${id} ${INFO}; do i=$((i+1)); [ $i -lt 400 ] || exit 75; sleep 0.005; done`,
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

export interface Holder { info?: LockInfo; ageS: number; stale: boolean }

/** Reads the HELD (or BROKE) block that acquire and status print. */
export function parseHolder(out: string, marker = 'HELD'): Holder | undefined {
  const start = out.split('\n').indexOf(marker)
  if (start < 0) return undefined
  const rest = out.split('\n').slice(start)
  const end = rest.indexOf('END')
  const lines = end < 0 ? rest : rest.slice(0, end)
  const ageS = Number(lines[1]) || 0
  let info: LockInfo | undefined
  try { info = JSON.parse(lines.slice(2).join('\n').trim()) } catch {}
  return { info, ageS, stale: ageS > STALE_AFTER_S }
}

export function describeHolder(h: Holder): string {
  const who = h.info ? `${h.info.operator}@${h.info.from} (${h.info.runbook} on ${h.info.env}, pid ${h.info.pid}, since ${h.info.since}${h.info.message ? `, "${h.info.message}"` : ''})` : 'an unknown holder'
  return h.stale
    ? `The host lock is held by ${who} but has had no heartbeat for ${h.ageS} s, so that run probably died; if you are sure, re-run with --break-lock.`
    : `The host lock is held by ${who}; wait for it to finish (or, if it is dead, re-run with --break-lock after ${STALE_AFTER_S - h.ageS} s).`
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

export async function acquireLock(target: Target, info: LockInfo, breakLock: boolean): Promise<{ lock: Lock; broke?: Holder }> {
  const out = (await target.run(lockCommands.acquire(breakLock), { stdin: JSON.stringify(info) + '\n', timeout: 30 })).stdout
  const holder = parseHolder(out)
  if (holder) throw new RefusedError(describeHolder(holder))
  return { lock: new Lock(target, info), broke: parseHolder(out, 'BROKE') }
}

/** The target as seen by checks sent alongside the lock request (see awaitOwn). */
export function behindLock(target: Target, id: string): Target {
  return { name: target.name, close: () => target.close(), run: (cmd, opts) => target.run(`${lockCommands.awaitOwn(id)} && {\n${cmd}\n}`, opts) }
}

export async function lockHolder(target: Target): Promise<Holder | undefined> {
  return parseHolder((await target.run(lockCommands.status(), { timeout: 30 })).stdout)
}
