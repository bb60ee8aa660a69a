// The images of the stack the tests deploy, made here (no registry is reachable):
// Debian 13 root file systems for Node.js (the app), nginx and PostgreSQL 17, and app
// releases v1/v2/v3 built on top (v3's health check fails on purpose).
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { docker, ensureRootfsImage } from './testbed.ts'

const ROOT = join(import.meta.dirname, '..')

const PG_ENTRYPOINT = `#!/bin/sh
# Same variables as the official postgres image: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB.
set -e
BIN=/usr/lib/postgresql/17/bin
PGDATA=\${PGDATA:-/var/lib/postgresql/data}
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pw=$(mktemp); printf '%s' "$POSTGRES_PASSWORD" > "$pw"; chown postgres "$pw"
  runuser -u postgres -- "$BIN/initdb" -D "$PGDATA" -U "\${POSTGRES_USER:-postgres}" --pwfile="$pw" -A scram-sha-256 --auth-local=trust >/dev/null
  rm -f "$pw"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ -n "$POSTGRES_DB" ] && [ "$POSTGRES_DB" != postgres ]; then
    runuser -u postgres -- "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    runuser -u postgres -- "$BIN/createdb" -U "\${POSTGRES_USER:-postgres}" "$POSTGRES_DB"
    runuser -u postgres -- "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  fi
fi
# PostgreSQL itself as PID 1, as in the official image (gosu there): runuser stays the parent
# and keeps SIGINT blocked, so compose's stop_signal (SIGINT, a fast shutdown) never reached
# PostgreSQL and every stop waited out its timeout, then killed it.
exec setpriv --reuid=postgres --regid=postgres --init-groups "$BIN/postgres" -D "$PGDATA"
`

/**
 * What the images loaded into every VPS carry for nobody: translations, manuals, docs, and
 * (PostgreSQL) the LLVM JIT, which PostgreSQL skips when llvmjit.so is not there. postgres
 * went from 474 to 245 MB, and every test host loads it.
 */
const TRIM = 'apt-get clean; rm -rf /var/lib/apt/lists/* /usr/share/locale/* /usr/share/doc/* /usr/share/man/* /usr/share/info/*'

export const nodeImage = () => ensureRootfsImage({
  name: 'opsbook/node', packages: 'nodejs,ca-certificates',
  customize: TRIM, changes: ['CMD ["node"]'],
})

export const nginxImage = () => ensureRootfsImage({
  name: 'opsbook/nginx', packages: 'nginx',
  customize: 'rm -f /etc/nginx/sites-enabled/default; ln -sf /dev/stdout /var/log/nginx/access.log; ln -sf /dev/stderr /var/log/nginx/error.log; ' + TRIM,
  changes: ['CMD ["nginx", "-g", "daemon off;"]'],
})

export const postgresImage = () => ensureRootfsImage({
  name: 'opsbook/postgres', packages: 'postgresql-17',
  customize: `cat > /usr/local/bin/pg-entrypoint <<'EOF'\n${PG_ENTRYPOINT}EOF\nchmod 755 /usr/local/bin/pg-entrypoint; rm -rf /var/lib/postgresql/17; rm -rf /usr/lib/postgresql/17/lib/bitcode /usr/lib/postgresql/17/lib/llvmjit* /usr/lib/*-linux-gnu/libLLVM*; ${TRIM}`,
  changes: ['CMD ["/usr/local/bin/pg-entrypoint"]', 'ENV PATH=/usr/lib/postgresql/17/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
})

const APP_DIR = join(import.meta.dirname, 'fixtures', 'app')

/**
 * The same app with DuckDB's Node bindings (this project's own node_modules, ~70 MB), as
 * opsbook/appduck:VERSION: with DUCKDB_PATH set it keeps writing to that file.
 */
export async function duckAppImage(version: string): Promise<string> {
  const base = await nodeImage()
  const tag = `opsbook/appduck:${version}`
  const ctx = mkdtempSync(join(tmpdir(), 'opsbook-appduck-'))
  try {
    for (const f of ['server.js', 'duck.js', 'duck-backup.js']) cpSync(join(APP_DIR, f), join(ctx, f))
    for (const m of ['node-api', 'node-bindings', 'node-bindings-linux-x64']) cpSync(join(ROOT, 'node_modules', '@duckdb', m), join(ctx, 'node_modules', '@duckdb', m), { recursive: true })
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${base}\nCOPY . /app/\nENV APP_VERSION=${version}\nCMD ["node", "/app/server.js"]\n`)
    const r = docker(['build', '-q', '-t', tag, ctx], { check: false })
    if (r.status !== 0) throw new Error(`docker build ${tag} failed: ${r.stderr}`)
    return tag
  } finally {
    rmSync(ctx, { recursive: true, force: true })
  }
}

/** A package and its dependencies from this project's node_modules (flat, as npm installed them). */
export function copyPackage(name: string, ctx: string, seen = new Set<string>()) {
  if (seen.has(name)) return
  seen.add(name)
  const from = join(ROOT, 'node_modules', name)
  if (!existsSync(from)) return // an optional dependency npm did not install
  cpSync(from, join(ctx, 'node_modules', name), { recursive: true })
  const deps = JSON.parse(readFileSync(join(from, 'package.json'), 'utf8')).dependencies ?? {}
  for (const d of Object.keys(deps)) copyPackage(d, ctx, seen)
}

/**
 * App release `version` (e.g. opsbook/app:v2), built FROM the Node image with the `pg`
 * client (the rotation tests' database load) and migrate.js (its migrations, per release);
 * `broken` fails /health.
 */
export async function appImage(version: string, broken = false): Promise<string> {
  const base = await nodeImage()
  const tag = `opsbook/app:${version}`
  const ctx = mkdtempSync(join(tmpdir(), 'opsbook-app-'))
  try {
    for (const f of ['server.js', 'migrate.js']) cpSync(join(APP_DIR, f), join(ctx, f))
    copyPackage('pg', ctx)
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${base}\nCOPY . /app/\nENV APP_VERSION=${version}${broken ? ' BROKEN_HEALTH=1' : ''}\nCMD ["node", "/app/server.js"]\n`)
    const r = docker(['build', '-q', '-t', tag, ctx], { check: false })
    if (r.status !== 0) throw new Error(`docker build ${tag} failed: ${r.stderr}`)
    return tag
  } finally {
    rmSync(ctx, { recursive: true, force: true })
  }
}

// The example stacks (templates/examples/): REGISTRY=opsbook-ex in the tests' settings
// makes their images opsbook-ex/deita-backend:VERSION and so on, built here.
export const EXAMPLE_REGISTRY = 'opsbook-ex'

export const redisImage = () => ensureRootfsImage({
  name: 'opsbook/redis', packages: 'redis-server',
  customize: `mkdir -p /data; ${TRIM}`,
  changes: ['CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data", "--appendonly", "yes"]'],
})

const redisToolsImage = () => ensureRootfsImage({
  name: 'opsbook/redis-tools', packages: 'redis-tools',
  customize: 'apt-get clean; rm -rf /var/lib/apt/lists/*', changes: ['CMD ["sh"]'],
})

function build(tag: string, files: Record<string, string>, dockerfile: string): string {
  const ctx = mkdtempSync(join(tmpdir(), 'opsbook-ex-'))
  try {
    for (const [name, from] of Object.entries(files)) cpSync(from, join(ctx, name), { recursive: true })
    writeFileSync(join(ctx, 'Dockerfile'), dockerfile)
    const r = docker(['build', '-q', '-t', tag, ctx], { check: false })
    if (r.status !== 0) throw new Error(`docker build ${tag} failed: ${r.stderr}`)
    return tag
  } finally {
    rmSync(ctx, { recursive: true, force: true })
  }
}

/** A SPA-like frontend: nginx serving index.html (and /version.json) for every path; POSTs get the page too. */
export async function frontendImage(app: 'deita' | 'shop', version: string): Promise<string> {
  const ctx = mkdtempSync(join(tmpdir(), 'opsbook-fe-'))
  try {
    writeFileSync(join(ctx, 'index.html'), `<!doctype html><title>${app}</title><meta name="version" content="${version}"><div id="root"></div>\n`)
    writeFileSync(join(ctx, 'version.json'), JSON.stringify({ version }) + '\n')
    writeFileSync(join(ctx, 'site.conf'), 'server {\n  listen 80 default_server;\n  root /srv;\n  location / { try_files $uri /index.html; }\n  error_page 405 =200 $uri;\n}\n')
    return build(`${EXAMPLE_REGISTRY}/${app}-frontend:${version}`, { 'index.html': join(ctx, 'index.html'), 'version.json': join(ctx, 'version.json'), 'site.conf': join(ctx, 'site.conf') },
      `FROM ${await nginxImage()}\nCOPY index.html version.json /srv/\nCOPY site.conf /etc/nginx/conf.d/\nSTOPSIGNAL SIGQUIT\n`)
  } finally {
    rmSync(ctx, { recursive: true, force: true })
  }
}

/** The backend of the example stacks: the test app with pg (and DuckDB for Deita). */
export async function backendImage(app: 'deita' | 'shop', version: string): Promise<string> {
  const ctx = mkdtempSync(join(tmpdir(), 'opsbook-be-'))
  try {
    for (const f of ['server.js', 'duck.js', 'duck-backup.js']) cpSync(join(APP_DIR, f), join(ctx, f))
    copyPackage('pg', ctx)
    if (app === 'deita') for (const m of ['node-api', 'node-bindings', 'node-bindings-linux-x64']) cpSync(join(ROOT, 'node_modules', '@duckdb', m), join(ctx, 'node_modules', '@duckdb', m), { recursive: true })
    return build(`${EXAMPLE_REGISTRY}/${app}-backend:${version}`, { app: ctx }, `FROM ${await nodeImage()}\nCOPY app /app/\nENV APP_VERSION=${version}\nCMD ["node", "/app/server.js"]\n`)
  } finally {
    rmSync(ctx, { recursive: true, force: true })
  }
}

export async function workerImage(version: string): Promise<string> {
  return build(`${EXAMPLE_REGISTRY}/shop-worker:${version}`, { 'worker.sh': join(APP_DIR, 'worker.sh') },
    `FROM ${await redisToolsImage()}\nCOPY worker.sh /usr/local/bin/worker\nENV APP_VERSION=${version}\nCMD ["/usr/local/bin/worker"]\n`)
}
