#!/usr/bin/env bash
# Installs the Debian packages wshub builds and tests with, and the npm
# packages of the Node test clients. Idempotent: does nothing when all are
# present. Uses sudo when not root.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(
  build-essential cmake pkg-config clang lld libclang-rt-14-dev
  libssl-dev zlib1g-dev libcmocka-dev libjansson-dev libjwt-dev liburing-dev
  python3 python3-websockets python3-pytest python3-jwt
  nodejs npm curl procps chromium openssl valgrind haproxy nginx
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# nodejs may come from elsewhere than Debian; accept any working node + npm.
if command -v node >/dev/null && command -v npm >/dev/null; then
  tmp=()
  for p in "${missing[@]:-}"; do
    [ -z "$p" ] && continue
    [ "$p" = nodejs ] || [ "$p" = npm ] || tmp+=("$p")
  done
  missing=("${tmp[@]:-}")
fi
if [ -n "${missing[*]:-}" ]; then
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Node test clients (ws) from the npm registry, pinned by package-lock.json.
for d in bench/node; do
  if [ -f "$d/package.json" ] && [ ! -d "$d/node_modules" ]; then
    (cd "$d" && npm ci --silent --no-audit --no-fund >/dev/null)
  fi
done
