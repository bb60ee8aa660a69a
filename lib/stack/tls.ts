// HTTPS for the stack (TLS_DOMAINS): one certificate for every name nginx serves, from an
// ACME CA (Let's Encrypt by default), obtained and renewed on the host by lego, Debian's
// package (one static binary, no Python stack; HTTP-01 through the running nginx). On a
// cluster all of it happens on the edge node, the first, where nginx runs.
//   /usr/local/sbin/opsbook-certs-APP         issue | renew (templates/opsbook-certs.sh)
//   opsbook-certs-APP.timer                   daily renew, under 30 days left
//   /var/lib/opsbook/lego/APP                 lego's account and certificates
//   APP_DIR/acme/                             HTTP-01 answers, served by nginx on port 80
//   APP_DIR/tls/opsbook.pem                   chain + key in one file, read per handshake
// nginx keeps serving HTTP until the certificate exists; then its routes switch to HTTPS
// with one reload. Renewals need none (routes.ts: a variable in the certificate path).
import { readFileSync } from 'node:fs'
import { need } from '../config.ts'
import { HostError, UsageError } from '../errors.ts'
import { fileCommands, template, wantedState, type FileSpec } from '../host/files.ts'
import { sh } from '../sh.ts'
import type { Step, Target } from '../steps.ts'
import { PROXY_SERVICE } from './model.ts'
import { serviceCommands } from './engine.ts'
import { TLS_DIR } from './routes.ts'
import { certificatePath, type Stack } from './stack.ts'

const RENEW_DAYS = 30
const unit = (st: Stack) => `opsbook-certs-${st.project}`
const paths = (st: Stack) => ({
  script: `/usr/local/sbin/${unit(st)}`,
  state: `/var/lib/opsbook/lego/${st.project}`,
  ca: `/etc/opsbook/${st.project}-acme-ca.pem`,
  service: `/etc/systemd/system/${unit(st)}.service`,
  timer: `/etc/systemd/system/${unit(st)}.timer`,
})
const root = (path: string, mode: string): FileSpec => ({ path, owner: 'root:root', mode })

/** The renewal script, its units and the private CA bundle, as they should be on the host. */
export function certFiles(st: Stack): { spec: FileSpec; content: string }[] {
  const tls = st.tls!
  const p = paths(st)
  const ca = tls.caBundle ? readCaBundle(st) : undefined
  const script = template('opsbook-certs.sh')
    .replaceAll('{{APP}}', st.project)
    .replaceAll('{{CA_ENV}}', ca ? sh`export LEGO_CA_CERTIFICATES=${p.ca}` : '# The CA\'s API is checked against the host\'s own trusted roots.')
    .replaceAll('{{STATE}}', sh`${p.state}`)
    .replaceAll('{{EMAIL}}', sh`${need(tls.email, 'ACME_EMAIL', st.config)}`)
    .replaceAll('{{SERVER}}', sh`${tls.directory}`)
    .replaceAll('{{DIR}}', sh`${st.dir}`)
    .replaceAll('{{DOMAINS}}', tls.domains.map(d => sh`-d ${d}`).join(' '))
    .replaceAll('{{NAME}}', sh`${tls.domains[0]}`)
  const service = [
    '# Managed by opsbook: renews the HTTPS certificate when it has under 30 days left.',
    '[Unit]', `Description=Renew the HTTPS certificate of ${st.project} (opsbook)`, 'Wants=network-online.target', 'After=network-online.target',
    '[Service]', 'Type=oneshot', `ExecStart=${p.script} renew`,
  ].join('\n') + '\n'
  const timer = [
    '# Managed by opsbook.',
    '[Unit]', `Description=Daily renewal check of the HTTPS certificate of ${st.project}`,
    '[Timer]', 'OnCalendar=daily', 'RandomizedDelaySec=1h', 'Persistent=true',
    '[Install]', 'WantedBy=timers.target',
  ].join('\n') + '\n'
  return [
    { spec: root(p.script, '0755'), content: script },
    ...(ca ? [{ spec: root(p.ca, '0644'), content: ca }] : []),
    { spec: root(p.service, '0644'), content: service },
    { spec: root(p.timer, '0644'), content: timer },
  ]
}

function readCaBundle(st: Stack): string {
  try {
    const pem = readFileSync(st.tls!.caBundle!, 'utf8')
    if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new Error('not PEM')
    return pem
  } catch {
    throw new UsageError(`ACME_CA_BUNDLE in ${st.config.file} (${st.tls!.caBundle}) is not a readable PEM certificate file.`)
  }
}

export interface Certificate { names: string[]; issuer: string; notAfter: Date }

export const tlsCommands = {
  /** The certificate nginx serves: its names, issuer and end date (nothing if absent). */
  certificate: (st: Stack) => sh`openssl x509 -in ${certificatePath(st)} -noout -issuer -enddate -ext subjectAltName 2>/dev/null || true`,
  state: (st: Stack, files: FileSpec[]) => [
    'command -v lego >/dev/null && echo lego || echo no-lego',
    sh`systemctl is-enabled ${`${unit(st)}.timer`} 2>/dev/null || true`,
    serviceCommands.containers(st, PROXY_SERVICE) + ` | head -n 1 | xargs -r docker inspect -f '{{range .Mounts}}{{.Destination}} {{end}}' | grep -q ${TLS_DIR} && echo mounted || echo not-mounted`,
    ...files.map(f => fileCommands.state(f.path)),
    tlsCommands.certificate(st),
  ].join('\n'),
  installLego: () => 'DEBIAN_FRONTEND=noninteractive apt-get install -y -q lego >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q lego >/dev/null; }',
  dirs: (st: Stack) => sh`install -d -o ${st.owner} -g ${st.owner} -m 755 ${`${st.dir}/acme`} ${`${st.dir}/tls`} && install -d -m 700 ${paths(st).state} && install -d -m 755 /etc/opsbook`,
  enableTimer: (st: Stack) => sh`systemctl daemon-reload && systemctl enable --now ${`${unit(st)}.timer`} >/dev/null 2>&1`,
  run: (st: Stack, what: 'issue' | 'renew') => sh`${paths(st).script} ${what} 2>&1`,
}

export function parseCertificate(out: string): Certificate | undefined {
  const end = /notAfter=(.+)/.exec(out)?.[1]
  if (!end) return undefined
  const names = [...out.matchAll(/DNS:([^,\s]+)/g)].map(m => m[1].toLowerCase())
  const issuer = /issuer=\s*(.+)/.exec(out)?.[1].trim() ?? ''
  return { names, issuer: issuer.replace(/^.*CN\s*=\s*/, ''), notAfter: new Date(end) }
}

export const daysLeft = (c: Certificate, now = Date.now()) => Math.floor((c.notAfter.getTime() - now) / 86_400_000)

/** What the CA said, in one line: lego's own error, not its INFO log. */
function acmeError(out: string): string {
  const lines = out.split('\n').map(l => l.trim()).filter(Boolean)
  const why = lines.filter(l => /acme: error|error:|Could not obtain|connection refused|no such host|timeout/i.test(l)).pop() ?? lines.pop() ?? 'no output'
  return why.replace(/^\d{4}\/\d\d\/\d\d \d\d:\d\d:\d\d /, '').slice(0, 400)
}

interface TlsPlan { lego: boolean; files: boolean; remount: boolean; issue: 'issue' | 'renew' | undefined }

export function tlsStep(st: Stack): Step<TlsPlan> {
  const host = () => new URL(st.tls!.directory).host
  return {
    title: st.tls ? `HTTPS certificate for ${st.tls.domains.join(', ')} (ACME: ${host()})` : 'HTTPS certificate',
    prepare() { if (st.tls) certFiles(st) },
    async check(t) {
      if (!st.tls) return { skip: 'TLS_DOMAINS not set: HTTP only' }
      const files = certFiles(st)
      const out = (await t.run(tlsCommands.state(st, files.map(f => f.spec)), { timeout: 30 })).stdout.split('\n')
      const [lego, timer, mounted] = out
      const cert = parseCertificate(out.slice(3 + files.length).join('\n'))
      const plan: TlsPlan = {
        lego: lego !== 'lego',
        files: timer !== 'enabled' || files.some((f, i) => out[3 + i] !== wantedState(f.content, f.spec)),
        remount: mounted !== 'mounted',
        issue: !cert || st.tls.domains.some(d => !cert.names.includes(d)) ? 'issue' : daysLeft(cert) < RENEW_DAYS ? 'renew' : undefined,
      }
      const change = [
        plan.lego && 'install lego',
        plan.files && 'write the renewal script and its daily timer',
        plan.remount && 'recreate nginx with port 443 and the certificate directories',
        plan.issue === 'issue' && `issue a certificate for ${st.tls.domains.join(', ')} from ${host()}`,
        plan.issue === 'renew' && `renew the certificate (${daysLeft(cert!)} days left)`,
      ].filter(Boolean)
      if (!change.length) return { done: true, detail: `valid ${daysLeft(cert!)} more days, from ${cert!.issuer}` }
      return { done: false, change: change.join(', '), plan }
    },
    async apply(t, plan, log) {
      if (plan.lego) { log('installing lego'); await t.run(tlsCommands.installLego(), { timeout: 300 }) }
      await t.run(tlsCommands.dirs(st), { timeout: 30 })
      if (plan.files) {
        for (const f of certFiles(st)) await t.run(fileCommands.install(f.spec), { stdin: f.content, timeout: 30 })
        await t.run(tlsCommands.enableTimer(st), { timeout: 60 })
      }
      // nginx answers the challenge first (port 80 keeps serving the app meanwhile).
      await serviceCommands.syncProxy(t, st, log)
      if (plan.remount) await serviceCommands.recreateProxy(t, st, log)
      if (plan.issue) {
        log(`asking ${host()} for a certificate`)
        const r = await t.run(tlsCommands.run(st, plan.issue), { allowFail: true, timeout: 600 })
        if (r.code !== 0) throw new HostError(`${host()} did not ${plan.issue} the certificate for ${st.tls!.domains.join(', ')}: ${acmeError(r.stdout + r.stderr)}. nginx serves as before.`)
      }
      const reloaded = await serviceCommands.syncProxy(t, st, log)
      const cert = parseCertificate((await t.run(tlsCommands.certificate(st), { timeout: 30 })).stdout)
      return `${cert ? `valid ${daysLeft(cert)} days, from ${cert.issuer}` : 'no certificate'}${reloaded ? '; nginx now serves HTTPS' : ''}`
    },
  }
}
