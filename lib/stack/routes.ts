// opsbook's nginx in front of the web services: which path (and host) goes to which
// service, and, per service, the upstream naming exactly the containers in service.
// Rollouts rewrite upstreams and reload nginx gracefully; that is the swap.
//   proxy/default.conf         servers and locations (from the compose file's labels)
//   proxy/upstream-SVC.conf    one upstream per web service (its live containers)
// nginx picks the longest matching prefix among a server's locations, so /v1/ wins
// over / for /v1/health whatever the order.
import type { Route, ServiceModel, StackModel } from './model.ts'
import { webServices } from './model.ts'

/** nginx's name for a service's upstream. */
export const upstreamName = (service: string) => `opsbook_${service.replace(/[^A-Za-z0-9_]/g, '_')}`

const location = (path: string, service: string) => `  location ${path} {
    proxy_pass http://${upstreamName(service)};
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
    ...(byHost.get(host) ?? []).sort((a, b) => b.path.length - a.path.length).map(r => location(r.path, r.service)),
    MAINTENANCE,
    '}',
  ].join('\n')
  const hosts = [...byHost.keys()].filter(Boolean).sort()
  return ['# Managed by opsbook: routes to the web services; their upstreams are in upstream-*.conf.', server(''), ...hosts.map(server)].join('\n') + '\n'
}

export function renderUpstream(s: ServiceModel, containers: string[]): string {
  return [
    `# Managed by opsbook: the ${s.name} containers in service (rewritten by each rollout).`,
    `upstream ${upstreamName(s.name)} {`,
    ...containers.map(c => `  server ${c}:${s.port} max_fails=0;`),
    '  keepalive 32;',
    '}',
  ].join('\n') + '\n'
}

/** Where a client reaches a web service's health path through nginx: Host header (if any) and path. */
export function healthRoute(s: ServiceModel): Route {
  return { host: s.routes[0]?.host, path: s.health ?? '/' }
}
