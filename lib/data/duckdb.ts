// Opens a DuckDB backup on this machine (never on the host, never the live file) to prove
// it is usable: the version that opened it and every table with its row count.
import type { DuckDBInstance } from '@duckdb/node-api'
import { HostError } from '../errors.ts'

export async function inspectDuckDb(path: string): Promise<{ version: string; tables: Record<string, number> }> {
  let instance: DuckDBInstance | undefined
  try {
    // Loaded only when there is a DuckDB file to open: the native library adds ~40 MB.
    const { DuckDBInstance } = await import('@duckdb/node-api')
    instance = await DuckDBInstance.create(path)
    const c = await instance.connect()
    const version = String((await c.runAndReadAll('select version() as v')).getRowObjects()[0].v)
    const names = (await c.runAndReadAll("select schema_name, table_name from duckdb_tables() where not internal order by 1, 2")).getRowObjects()
    const tables: Record<string, number> = {}
    for (const t of names) {
      const id = `"${String(t.schema_name).replace(/"/g, '""')}"."${String(t.table_name).replace(/"/g, '""')}"`
      tables[`${t.schema_name}.${t.table_name}`] = Number((await c.runAndReadAll(`select count(*) as n from ${id}`)).getRowObjects()[0].n)
    }
    c.closeSync()
    return { version, tables }
  } catch (e) {
    throw new HostError(`The DuckDB copy does not open (${(e as Error).message.split('\n')[0]}): the backup is not usable.`)
  } finally {
    instance?.closeSync()
  }
}
