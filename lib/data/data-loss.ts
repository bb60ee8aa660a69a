// What restoring a backup would throw away, told before the operator confirms: the rows
// of every table in the backup's dump against the live database's rows now. The dump is
// streamed from the store into pg_restore in the live database container (it only prints
// a script: nothing is written on the host or in the database).
import { sh } from '../sh.ts'
import { HostError } from '../errors.ts'
import { dbOf, type Stack } from '../stack/stack.ts'
import { serviceCommands } from '../stack/engine.ts'
import type { Target } from '../steps.ts'
import { openObject, type Manifest } from './backup.ts'
import { COPY_COUNTS } from './restore.ts'
import type { Store } from './storage.ts'

export interface TableLoss { table: string; backup?: number; now?: number }

// Exact counts of every user table in one statement (query_to_xml runs a count per table).
const COUNT_ALL = "select format('%I.%I', schemaname, relname), (xpath('/row/c/text()', query_to_xml(format('select count(*) as c from %I.%I', schemaname, relname), false, true, '')))[1]::text from pg_stat_user_tables order by 1"

export const lossCommands = {
  backupCounts: (st: Stack) => serviceCommands.exec(st, dbOf(st).service, `pg_restore -a -f - | ${COPY_COUNTS}`),
  liveCounts: (st: Stack) => serviceCommands.exec(st, dbOf(st).service, sh`psql -X -At -F ' ' -U ${dbOf(st).user} -d ${dbOf(st).database} -c ${COUNT_ALL}`),
}

const parse = (out: string) => new Map(out.trim().split('\n').filter(Boolean).map(l => { const i = l.lastIndexOf(' '); return [l.slice(0, i), Number(l.slice(i + 1))] as const }))

export async function tableLoss(t: Target, st: Stack, store: Store, m: Manifest, identities?: string[]): Promise<TableLoss[]> {
  const o = m.objects.find(x => x.kind === 'pg_dump')
  if (!o) throw new HostError(`Backup ${m.id} has no PostgreSQL dump.`)
  const [fromBackup, now] = await Promise.all([
    t.run(lossCommands.backupCounts(st), { stdin: await openObject(store, m, o, identities), allowFail: true, timeout: 3600 }),
    t.run(lossCommands.liveCounts(st), { allowFail: true, timeout: 3600 }),
  ])
  if (fromBackup.code !== 0) throw new HostError(`Backup ${m.id}'s dump could not be read (${fromBackup.stderr.trim().split('\n').pop() || `exit ${fromBackup.code}`}): it may be damaged; backup.ts --verify ${m.id} checks it.`)
  if (now.code !== 0) throw new HostError(`The live database does not answer (${now.stderr.trim().split('\n').pop() || `exit ${now.code}`}).`)
  const [b, n] = [parse(fromBackup.stdout), parse(now.stdout)]
  return [...new Set([...b.keys(), ...n.keys()])].sort().map(table => ({ table, backup: b.get(table), now: n.get(table) }))
}

/** One line per table that differs: "public.events: 1200 rows now, 1000 in the backup (200 lost)". */
export function describeLoss(ls: TableLoss[]): string[] {
  return ls.filter(l => l.backup !== l.now).map(l =>
    l.backup === undefined ? `${l.table}: created since, ${l.now} rows (the table goes)`
      : l.now === undefined ? `${l.table}: dropped since (it comes back with ${l.backup} rows)`
        : `${l.table}: ${l.now} rows now, ${l.backup} in the backup (${l.now > l.backup ? `${l.now - l.backup} lost` : `${l.backup - l.now} come back`})`)
}
