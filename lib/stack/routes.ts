// opsbook's nginx in front of the web services: which path (and host) goes to which
// service, and, per service, two upstreams ("slots" a and b) naming fixed addresses on
// opsbook's network (slots.ts). A file per service says which slot is live; nginx looks
// at it on every request, so a swap is a rename and nginx is never reloaded for it.
//   proxy/default.conf         servers and locations (from the compose file's labels)
//   proxy/upstream-SVC.conf    the service's two slots, their addresses
//   proxy/SVC.slot-b           present: slot b is live; absent: slot a
// nginx picks the longest matching prefix among a server's locations, so /v1/ wins
// over / for /v1/health whatever the order.
import type { Route, ServiceModel, StackModel } from './model.ts'
import { webServices } from './model.ts'

export type Slot = 'a' | 'b'
export const otherSlot = (s: Slot): Slot => (s === 'a' ? 'b' : 'a')

const ident = (service: string) => service.replace(/[^A-Za-z0-9_]/g, '_')
/** nginx's name for a slot's upstream. */
export const upstreamName = (service: string, slot: Slot) => `opsbook_${ident(service)}_${slot}`
/** The file whose presence makes slot b live, as nginx sees it and as named in proxy/. */
export const slotFlag = (service: string) => `${service}.slot-b`
const CONF_D = '/etc/nginx/conf.d'

// Evaluated per request (a stat of a file in a directory nginx already has open): the
// swap takes effect on the next request in every worker, with no reload. A canary
// (canary.ts) overrides the live slot for the requests whose bucket has a file naming
// the canary's slot.
const liveSlot = (service: string, dns?: (slot: Slot) => string) => {
  const up = (slot: Slot) => (dns ? dns(slot) : upstreamName(service, slot))
  return `  set $opsbook_${ident(service)} ${up('a')};
  if (-f ${CONF_D}/${slotFlag(service)}) {
    set $opsbook_${ident(service)} ${up('b')};
  }` + (dns ? [] : ['a', 'b'] as const).map(slot => `
  if (-f ${CONF_D}/${CANARY_DIR}/${canaryBucket(service, slot, '$opsbook_bucket')}) {
    set $opsbook_${ident(service)} ${up(slot)};
  }`).join('')
}

// Canary releases (canary.ts, one host): a client's bucket (0-99) is a hash of its
// opsbook_canary cookie, or, on its first request, of the request's id, which the cookie
// then carries: the client stays in its bucket, and a share that grows only adds buckets.
// The cookie is set only while proxy/canary/on exists. Every access line ends with the
// upstream (the slot) the request went to, so status can tell each version's requests
// and errors apart; the rest of the line is the official nginx image's "main" format.
export const CANARY_DIR = 'canary'
export const CANARY_FLAG = 'on'
export const CANARY_COOKIE = 'opsbook_canary'
export const CANARY_BUCKETS = 100
/** The file in proxy/canary/ that sends bucket `i`'s requests for `service` to `slot`. */
export const canaryBucket = (service: string, slot: Slot, i: number | string) => `${service}-${slot}-${i}`
const canaryHead = (secure: boolean) => [
  `map $cookie_${CANARY_COOKIE} $opsbook_canary_id {
  "" $request_id;
  default $cookie_${CANARY_COOKIE};
}`,
  `map $cookie_${CANARY_COOKIE} $opsbook_canary_new {
  "" "${CANARY_COOKIE}=$request_id; Path=/; Max-Age=604800; HttpOnly; SameSite=Lax${secure ? '; Secure' : ''}";
  default "";
}`,
  `split_clients "\${opsbook_canary_id}" $opsbook_bucket {
${Array.from({ length: CANARY_BUCKETS - 1 }, (_, i) => `  1% ${i};`).join('\n')}
  * ${CANARY_BUCKETS - 1};
}`,
  `log_format opsbook '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" "$http_x_forwarded_for" upstream=$opsbook_upstream';`,
]
// No warning for requests nginx answers itself (no upstream to log): they are not errors.
const ACCESS_LOG = '  access_log /var/log/nginx/access.log opsbook;\n  uninitialized_variable_warn off;'
// `always`: a client whose first answer is an error still gets its bucket.
const canaryServer = `${ACCESS_LOG}
  set $opsbook_canary_cookie "";
  if (-f ${CONF_D}/${CANARY_DIR}/${CANARY_FLAG}) {
    set $opsbook_canary_cookie $opsbook_canary_new;
  }
  add_header Set-Cookie $opsbook_canary_cookie always;`

/**
 * ENGINE=swarm: a slot is a Swarm service (dnsrr), reached by its DNS name, which Docker's
 * resolver answers with every running task's address; nginx asks again each second, so
 * tasks that Swarm moves are followed without a reload. A task on a lost node does not
 * answer: nginx gives up connecting after 2 s and tries another address.
 */
export interface DnsSlots { project: string }
export const slotServiceName = (service: string, slot: Slot) => `${service}_${slot}`
const dnsHead = 'resolver 127.0.0.11 valid=1s ipv6=off;\nproxy_connect_timeout 2s;'

// `exempt`: an exact health path, which answers even in maintenance (monitors watch the app, not the page).
// `canary`: the upstream (slot) is kept for the access log in a variable of its own, which
// an error_page redirect keeps ($proxy_host is gone by then: a canary's 502s would not count).
const location = (path: string, service: string, exempt = false, canary = false) => `  location ${exempt ? '= ' : ''}${path} {${exempt ? '' : `
    if (-f ${CONF_D}/${MAINTENANCE_FLAG}) {
      return 503;
    }`}${canary ? `
    set $opsbook_upstream $opsbook_${ident(service)};` : ''}
    proxy_pass http://$opsbook_${ident(service)};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
  }`

// Maintenance mode (maintenance.ts) and no container answering (stopped for a restore):
// a 503 with Retry-After that clients and monitors understand, rather than a bare 502.
// The page is proxy/maintenance.html while maintenance.ts has written one, else one line
// of text. Flag, page and Retry-After are files nginx looks at per request: no reload.
export const MAINTENANCE_FLAG = 'maintenance.on'
export const MAINTENANCE_PAGE = 'maintenance.html'
/** Retry-After values nginx can send without a reload: maintenance.ts rounds up to one. */
export const RETRY_AFTER = [30, 60, 120, 300, 600, 1800, 3600, 7200, 21600]
export const retryAfterFlag = (s: number) => `maintenance.retry-${s}`
// Each Retry-After value is its own internal location: nginx's `if` may only redirect
// ("if is evil" otherwise: a matched `if` drops try_files), so the flag file sends the
// page request to the location that sends its value.
// A location with add_header of its own inherits none of the server's: the page repeats
// the security headers HTTPS sends (`headers`).
const maintenancePage = (headers: string[]) => (s: number, i: number) => {
  const add = [`add_header Retry-After ${s} always;`, 'add_header Cache-Control no-store always;', ...headers].map(h => `\n    ${h}`).join('')
  return `  location = /opsbook-maintenance${i ? `-${s}` : ''} {
    internal;${i ? '' : RETRY_AFTER.slice(1).map(n => `
    if (-f ${CONF_D}/${retryAfterFlag(n)}) {
      rewrite ^ /opsbook-maintenance-${n} last;
    }`).join('')}
    root ${CONF_D};${add}
    try_files /${MAINTENANCE_PAGE} @opsbook_maintenance_text_${s};
  }
  location @opsbook_maintenance_text_${s} {${add}
    default_type text/plain;
    return 503 "maintenance: back shortly\\n";
  }`
}
const maintenance = (headers: string[]) => [`  error_page 502 503 504 =503 /opsbook-maintenance;`, ...RETRY_AFTER.map(maintenancePage(headers))].join('\n')

/** HTTPS as nginx renders it: `active` once the certificate file exists on the host. */
export interface TlsRoutes { active: boolean; port: number; hstsMaxAge: number; csp?: string }

/** Where the ACME client writes HTTP-01 answers (mounted read-only into nginx). */
export const ACME_ROOT = '/var/www/acme'
/** The certificate chain and its key in one file, swapped by one rename (tls.ts). */
export const TLS_DIR = '/etc/nginx/tls'

const CHALLENGE = `  location ^~ /.well-known/acme-challenge/ {
    root ${ACME_ROOT};
    default_type text/plain;
  }`

// Mozilla's "intermediate" profile (TLS 1.2 and 1.3, ECDHE with AEAD ciphers only, so no
// dhparam file). The certificate path has a variable, so nginx reads the file at each
// handshake: a renewed certificate is served at once, with no reload.
const tlsServer = (t: TlsRoutes) => [
  '  http2 on;',
  '  ssl_certificate ' + TLS_DIR + '/$opsbook_tls.pem;',
  '  ssl_certificate_key ' + TLS_DIR + '/$opsbook_tls.pem;',
  '  ssl_protocols TLSv1.2 TLSv1.3;',
  '  ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;',
  '  ssl_prefer_server_ciphers off;',
  '  ssl_session_cache shared:opsbook_tls:10m;',
  '  ssl_session_timeout 1d;',
  '  ssl_session_tickets off;',
  ...securityHeaders(t).map(h => `  ${h}`),
]
const securityHeaders = (t: TlsRoutes) => [
  'add_header X-Frame-Options SAMEORIGIN always;',
  'add_header X-Content-Type-Options nosniff always;',
  'add_header Referrer-Policy strict-origin-when-cross-origin always;',
  ...(t.hstsMaxAge ? [`add_header Strict-Transport-Security "max-age=${t.hstsMaxAge}" always;`] : []),
  ...(t.csp ? [`add_header Content-Security-Policy "${t.csp}" always;`] : []),
]

export function renderRoutes(m: StackModel, tls?: TlsRoutes, dns?: DnsSlots): string {
  const ports = new Map(webServices(m).map(s => [s.name, s.port]))
  const named = (service: string) => dns && ((slot: Slot) => `${dns.project}_${slotServiceName(service, slot)}:${ports.get(service)}`)
  const byHost = routesByHost(m)
  const https = tls?.active ? tls : undefined
  // A cluster's nginx has no canaries (canary.ts refuses them there): its routes stay as they were.
  const canary = !dns
  const listen = https ? 'listen 443 ssl' : 'listen 80'
  const server = (host: string) => [
    host ? `server {\n  ${listen};\n  server_name ${host};` : `server {\n  ${listen} default_server;`,
    ...(https ? tlsServer(https) : tls ? [CHALLENGE] : []),
    ...(canary ? [canaryServer] : []),
    ...[...new Set((byHost.get(host) ?? []).map(r => r.service))].sort().map(x => liveSlot(x, named(x))),
    ...(byHost.get(host) ?? []).sort((a, b) => b.path.length - a.path.length).map(r => location(r.path, r.service, false, canary)),
    ...healthPaths(byHost.get(host) ?? [], m).map(r => location(r.path, r.service, true, canary)),
    maintenance(https ? securityHeaders(https) : []),
    '}',
  ].join('\n')
  const hosts = [...byHost.keys()].filter(Boolean).sort()
  // With HTTPS, port 80 answers ACME challenges and sends everything else to HTTPS.
  const redirect = https && [
    'map $ssl_server_name $opsbook_tls {\n  default opsbook;\n}',
    `server {\n  listen 80 default_server;\n${canary ? `${ACCESS_LOG}\n` : ''}${CHALLENGE}\n  location / {\n    return 301 https://$host${https.port === 443 ? '' : `:${https.port}`}$request_uri;\n  }\n}`,
  ]
  const head = dns ? ['# Managed by opsbook: routes to the web services, by the DNS names of their Swarm services.', dnsHead]
    : ['# Managed by opsbook: routes to the web services; their upstreams are in upstream-*.conf.',
      // A container on this host connects at once; one that died leaves an address nobody
      // answers, and nginx's default (60 s) would hold each request that long. 10 s still
      // covers a full listen backlog's SYN retries (1, 3, 7 s): a busy app is waited for.
      'proxy_connect_timeout 10s;']
  return [...head, ...(canary ? canaryHead(Boolean(https)) : []), ...(redirect || []), server(''), ...hosts.map(server)].join('\n') + '\n'
}

export type SlotAddresses = Record<Slot, string[]>

/**
 * The service's two slots. An empty slot still needs a server for nginx to load it:
 * one marked down, never tried (nothing routes to an empty slot).
 */
export function renderUpstream(s: ServiceModel, ips: SlotAddresses): string {
  return [
    `# Managed by opsbook: the ${s.name} containers of slot a and of slot b, by address on opsbook's network;`,
    `# proxy/${slotFlag(s.name)} present means b is live. Rewritten (and nginx reloaded) only when an address changes.`,
    ...(['a', 'b'] as const).flatMap(slot => [
      `upstream ${upstreamName(s.name, slot)} {`,
      ...(ips[slot].length ? ips[slot].map(ip => `  server ${ip}:${s.port} max_fails=0;`) : ['  server 127.0.0.1:9 down;']),
      '  keepalive 32;',
      // nginx closes an idle connection before the app can (Node and uvicorn at 5 s, gunicorn
      // at 2 s): a POST sent on a connection the app is closing that instant is not resent
      // by nginx (not idempotent) and would fail; nginx's own close cannot race.
      '  keepalive_timeout 1s;',
      '}',
    ]),
  ].join('\n') + '\n'
}

/** The addresses an upstream file names per slot (what parseUpstream reads back from the host). */
export function parseUpstream(text: string): SlotAddresses | undefined {
  const ips: SlotAddresses = { a: [], b: [] }
  let slot: Slot | undefined
  let seen = 0
  for (const line of text.split('\n')) {
    const up = /^upstream opsbook_\w+_([ab]) \{$/.exec(line)
    if (up) { slot = up[1] as Slot; seen++; continue }
    const server = /^ {2}server (\d+\.\d+\.\d+\.\d+):\d+ max_fails=0;$/.exec(line)
    if (server && slot) ips[slot].push(server[1])
  }
  // An upstream file from before slots (container names, one upstream): not ours to reuse.
  return seen === 2 ? ips : undefined
}

/** Each server's (by host name; '' the default one) routes. */
function routesByHost(m: StackModel): Map<string, { path: string; service: string }[]> {
  const byHost = new Map<string, { path: string; service: string }[]>()
  for (const s of webServices(m)) {
    for (const r of s.routes) {
      const key = r.host ?? ''
      byHost.set(key, [...(byHost.get(key) ?? []), { path: r.path, service: s.name }])
    }
  }
  return byHost
}

/** Every web service's health path reaches it in maintenance: it tells, behind the page, when the app is back. */
export function healthBypassesMaintenance(m: StackModel): boolean {
  const exempt = new Set([...routesByHost(m).values()].flatMap(rs => healthPaths(rs, m).map(p => p.path)))
  return webServices(m).every(s => s.health !== undefined && exempt.has(s.health))
}

/**
 * The exact health paths a server answers in maintenance: each web service's, where its
 * routes reach it; the service is the one nginx's longest prefix gives the path to.
 */
function healthPaths(routes: { path: string; service: string }[], m: StackModel): { path: string; service: string }[] {
  // A health path that is itself a route's root ("/" most often) is a page people use: it goes into maintenance too.
  const paths = new Set(webServices(m).filter(s => s.health && routes.some(r => r.service === s.name) && !routes.some(r => r.path === s.health)).map(s => s.health!))
  return [...paths].sort().flatMap(path => {
    const owner = routes.filter(r => path.startsWith(r.path)).sort((a, b) => b.path.length - a.path.length)[0]
    return owner ? [{ path, service: owner.service }] : []
  })
}

/** Where a client reaches a web service's health path through nginx: Host header (if any) and path. */
export function healthRoute(s: ServiceModel): Route {
  return { host: s.routes[0]?.host, path: s.health ?? '/' }
}
