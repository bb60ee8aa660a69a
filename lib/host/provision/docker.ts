// Docker Engine + Compose v2: the distribution's packages where they are recent
// enough (Debian 13, Ubuntu 22.04/24.04), Docker's own apt repository otherwise
// (Debian 12 ships only Compose v1). Whatever is already there is kept.
import { sh } from '../../sh.ts'
import { fields, type Step } from '../../steps.ts'
import { APT } from './packages.ts'

export interface DockerState { os: string; codename: string; version: number; engine: string; compose: string; cePackage: boolean; active: string; enabled: string }

export interface DockerPlan { packages: string[]; dockerRepo: boolean; enable: boolean }

export const dockerCommands = {
  // The probes run side by side (each prints one line): the Go binaries take ~100 ms to start.
  state: () => [
    '. /etc/os-release',
    'echo "os=$ID"; echo "codename=$VERSION_CODENAME"; echo "version=${VERSION_ID%%.*}"',
    `echo "engine=$(docker version --format '{{.Server.Version}}' 2>/dev/null)" &`,
    'echo "compose=$(docker compose version --short 2>/dev/null)" &',
    `echo "ce=$(dpkg-query -W -f='\${Status}' docker-ce 2>/dev/null)"`,
    'echo "active=$(systemctl is-active docker 2>/dev/null)"',
    'echo "enabled=$(systemctl is-enabled docker 2>/dev/null)"',
    'wait',
  ].join('\n'),
  /** Docker's apt repository for $ID/$VERSION_CODENAME, signed by its published key. */
  addDockerRepo: () => [
    'set -e; . /etc/os-release',
    'install -m 0755 -d /etc/apt/keyrings',
    'curl -fsSL --retry 3 "https://download.docker.com/linux/$ID/gpg" -o /etc/apt/keyrings/docker.asc',
    'chmod a+r /etc/apt/keyrings/docker.asc',
    'echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/$ID $VERSION_CODENAME stable" > /etc/apt/sources.list.d/docker.list',
  ].join('\n'),
  install: (pkgs: string[]) => `${APT} update && ${APT} install --no-install-recommends ` + sh`${pkgs}`,
  enable: () => 'systemctl enable --now docker',
  verify: () => `docker info --format '{{.ServerVersion}}' && docker compose version --short`,
}

export function parseDockerState(stdout: string): DockerState {
  const f = fields(stdout)
  return {
    os: f.os ?? '', codename: f.codename ?? '', version: Number(f.version) || 0, engine: f.engine ?? '', compose: f.compose ?? '',
    cePackage: /ok installed/.test(f.ce ?? ''), active: f.active ?? '', enabled: f.enabled ?? '',
  }
}

/** What to install for this OS given what is already there. Pure, so it is unit-tested per OS. */
export function dockerPlan(s: DockerState): DockerPlan {
  const distroHasCompose2 = (s.os === 'debian' && s.version >= 13) || (s.os === 'ubuntu' && s.version >= 22)
  const useRepo = s.engine ? s.cePackage : !distroHasCompose2
  const packages: string[] = []
  // Debian 13 moved the client into docker-cli, only a Recommends of docker.io.
  if (!s.engine) packages.push(...(useRepo ? ['docker-ce', 'docker-ce-cli', 'containerd.io', 'docker-buildx-plugin'] : s.os === 'debian' ? ['docker.io', 'docker-cli'] : ['docker.io']))
  if (!s.compose) packages.push(useRepo ? 'docker-compose-plugin' : s.os === 'ubuntu' ? 'docker-compose-v2' : 'docker-compose')
  return { packages, dockerRepo: useRepo && packages.length > 0, enable: s.active !== 'active' || s.enabled !== 'enabled' }
}

export function dockerStep(): Step<DockerPlan> {
  return {
    title: 'Docker Engine and Compose v2',
    async check(t) {
      const s = parseDockerState((await t.run(dockerCommands.state(), { timeout: 60 })).stdout)
      const plan = dockerPlan(s)
      if (!plan.packages.length && !plan.enable) return { done: true, detail: `Engine ${s.engine}, Compose ${s.compose}` }
      const change = [plan.packages.length && `install ${plan.packages.join(', ')}${plan.dockerRepo ? " from Docker's apt repository" : ''}`, plan.enable && 'enable and start docker'].filter(Boolean).join(', ')
      return { done: false, change, plan }
    },
    async apply(t, plan, log) {
      if (plan.dockerRepo) await t.run(dockerCommands.addDockerRepo(), { onOutput: log, timeout: 120 })
      if (plan.packages.length) await t.run(dockerCommands.install(plan.packages), { onOutput: log, timeout: 900 })
      await t.run(dockerCommands.enable(), { timeout: 120 })
    },
    async verify(t) {
      const r = await t.run(dockerCommands.verify(), { allowFail: true, timeout: 60 })
      if (r.code !== 0) throw new Error(`docker was installed but does not answer: ${r.stderr.trim().split('\n').pop()}`)
    },
  }
}
