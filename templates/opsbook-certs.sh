#!/bin/sh
# Managed by opsbook (deploy.ts writes it; edit the settings, not this file).
# The HTTPS certificate of {{APP}}: `issue` asks the ACME CA for it, `renew` renews it when
# fewer than RENEW_DAYS (default 30) days are left (the systemd timer runs this daily).
# lego answers the HTTP-01 challenge by writing a file nginx serves from {{DIR}}/acme.
# The chain and its key are installed as one file with one rename: nginx reads it at
# each TLS handshake, so the next handshake gets the new certificate, with no reload.
set -eu
{{CA_ENV}}
run_lego() {
  lego --accept-tos --path {{STATE}} --email {{EMAIL}} --server {{SERVER}} --key-type ec256 \
    --http --http.webroot {{DIR}}/acme {{DOMAINS}} "$@"
}
case "${1:-renew}" in
  issue) run_lego run ;;
  # The timer already spreads renewals (RandomizedDelaySec): no second random sleep.
  # --reuse-key: nginx opens the file twice per handshake (certificate, then key); with the
  # same key in the old and the new file, a rename between the two reads still pairs.
  renew) run_lego renew --days "${RENEW_DAYS:-30}" --no-random-sleep --reuse-key ;;
  *) echo "usage: $0 issue|renew" >&2; exit 2 ;;
esac
tmp=$(mktemp {{DIR}}/tls/.opsbook.pem.XXXXXX)
trap 'rm -f "$tmp"' EXIT
cat {{STATE}}/certificates/{{NAME}}.crt {{STATE}}/certificates/{{NAME}}.key > "$tmp"
# Readable by nginx's workers (they load it per handshake); {{DIR}} itself is 0750.
chmod 0644 "$tmp"
mv -f "$tmp" {{DIR}}/tls/opsbook.pem
