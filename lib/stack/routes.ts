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
// swap takes effect on the next request in every worker, with no reload.
const liveSlot = (service: string) => `  set $opsbook_${ident(service)} ${upstreamName(service, 'a')};
  if (-f ${CONF_D}/${slotFlag(service)}) {
    set $opsbook_${ident(service)} ${upstreamName(service, 'b')};
  }`

const location = (path: string, service: string) => `  location ${path} {
    proxy_pass http://$opsbook_${ident(service)};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
  }`

// No container answers (e.g. stopped for a restore): a short maintenance answer that
// clients and monitors understand, rather than a bare 502.
const MAINTENANCE = `  error_page 502 504 = @maintenance;
  location @maintenance {
    add_header Retry-After 30 always;
    default_type text/plain;
    return 503 "maintenance: back shortly\\n";
  }`

export function renderRoutes(m: StackModel): string {
  const byHost = new Map<string, { path: string; service: string }[]>()
  for (const s of webServices(m)) {
    for (const r of s.routes) {
      const key = r.host ?? ''
      byHost.set(key, [...(byHost.get(key) ?? []), { path: r.path, service: s.name }])
    }
  }
  const server = (host: string) => [
    host ? `server {\n  listen 80;\n  server_name ${host};` : 'server {\n  listen 80 default_server;',
    ...[...new Set((byHost.get(host) ?? []).map(r => r.service))].sort().map(liveSlot),
    ...(byHost.get(host) ?? []).sort((a, b) => b.path.length - a.path.length).map(r => location(r.path, r.service)),
    MAINTENANCE,
    '}',
  ].join('\n')
  const hosts = [...byHost.keys()].filter(Boolean).sort()
  return ['# Managed by opsbook: routes to the web services; their upstreams are in upstream-*.conf.', server(''), ...hosts.map(server)].join('\n') + '\n'
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

/** Where a client reaches a web service's health path through nginx: Host header (if any) and path. */
export function healthRoute(s: ServiceModel): Route {
  return { host: s.routes[0]?.host, path: s.health ?? '/' }
}
