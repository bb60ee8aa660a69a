// PITR=on changes one thing in how the PostgreSQL service runs: its image is the
// operator's with pgbackrest added (built on the host), its environment gains the
// repository's secrets and /etc/pgbackrest holds the repository's settings. This file says
// what the service becomes; lib/data/pitr.ts drives pgBackRest itself.
import { createHash } from 'node:crypto'

/** Where the repository settings are mounted in the database container. */
export const PGBACKREST_CONF_DIR = '/etc/pgbackrest'

/**
 * The operator's PostgreSQL image with pgbackrest from its own apt sources (the official
 * postgres images are Debian with PostgreSQL's apt repository). An image without apt
 * (alpine) fails the build with apt's own message.
 */
export function pitrDockerfile(baseImage: string): string {
  return [
    `FROM ${baseImage}`,
    'USER root',
    'RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pgbackrest ca-certificates \\',
    ' && rm -rf /var/lib/apt/lists/* \\',
    ' && install -d -o postgres -g postgres -m 750 /var/log/pgbackrest /var/lib/pgbackrest /tmp/pgbackrest',
    '',
  ].join('\n')
}

/** The derived image's tag: changes when the base image's name or the recipe does. */
export const pitrImageTag = (project: string, service: string, dockerfile: string) =>
  `opsbook-pitr/${project}-${service}:${createHash('sha256').update(dockerfile).digest('hex').slice(0, 12)}`

/** opsbook.yml's lines for the database service (under services:). */
export const pitrServiceOverride = (service: string, image: string) => [
  `  ${service}:`,
  `    image: ${image}`,
  '    env_file:',
  '      - path: pitr/secrets.env',
  '        required: true',
  '    volumes:',
  `      - ./pitr/conf:${PGBACKREST_CONF_DIR}:ro`,
]
