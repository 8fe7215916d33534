#!/usr/bin/env bash
# Writes a throw-away CA and a server certificate signed by it into DIR:
#   ca.pem ca.key server.pem server.key
# The server certificate names localhost and 127.0.0.1 (subjectAltName), so
# `wshub-bench --tls --cacert DIR/ca.pem` verifies it by IP address and
# `--sni localhost` by name. For benchmarks and tests only.
#
#   bench/gen-cert.sh DIR [OPENSSL]
set -eu
dir=$1
openssl=${2:-openssl}
mkdir -p "$dir"
cd "$dir"
"$openssl" req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout ca.key -out ca.pem -days 2 -subj "/CN=wshub throw-away test CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
    2>/dev/null
"$openssl" req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
"$openssl" x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out server.pem -days 2 -extfile server.ext 2>/dev/null
rm -f server.csr server.ext ca.srl
