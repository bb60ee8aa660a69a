// The data the backup and restore tests seed and compare: PostgreSQL tables (> 100k rows)
// with an order-independent checksum each, and the demo app's DuckDB side over HTTP.
import type { Host } from './helpers.ts'

export const TABLES = ['customers', 'orders', 'big']

// docker exec, not compose exec: the same container (project app, service db), without a
// compose process per query (tests poll with this).
export const psql = (h: Host, sql: string, db = 'app') =>
  h.sh(`docker exec "$(docker ps -q --filter label=com.docker.compose.project=app --filter label=com.docker.compose.service=db --filter label=com.docker.compose.oneoff=False | head -n 1)" psql -X -At -U app -d ${db} -c "${sql.replace(/"/g, '\\"')}"`).trim()

/** Row count and checksum per table. */
export const fingerprint = (h: Host, db = 'app', tables = TABLES) =>
  tables.map(t => psql(h, `select '${t}', count(*), md5(coalesce(string_agg(md5(x::text), '' order by md5(x::text)), '')) from ${t} x`, db)).join('\n')

export function seed(h: Host, bigRows = 1_500_000) {
  psql(h, `create table customers (id int primary key, name text, email text);
    insert into customers select g, 'name ' || g, 'c' || g || '@example.com' from generate_series(1, 20000) g;
    create table orders (id bigint primary key, customer int references customers, total numeric(10,2), at timestamptz);
    insert into orders select g, 1 + g % 20000, (g % 997) / 7.0, '2026-01-01'::timestamptz + g * interval '1 minute' from generate_series(1, 120000) g;
    create table big (id int, payload text);
    insert into big select g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) from generate_series(1, ${bigRows}) g;
    create role reporting login password 'reporting-pw-1'`)
}

/** Asks the running app (it alone may open its DuckDB file); POST when a body is given. */
export const app = (h: Host, path: string, body?: string) => JSON.parse(h.sh(`cd /opt/app && docker compose -p app exec -T app node -e "fetch('http://127.0.0.1:8080${path}'${body === undefined ? '' : `, { method: 'POST', body: '${body}' }`}).then(r => r.text()).then(t => process.stdout.write(t))"`))
