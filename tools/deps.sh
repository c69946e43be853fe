#!/usr/bin/env bash
# Install what building, running and testing the relay needs, when it is missing.
# Idempotent and quiet when everything is present. Debian 12 (bookworm), as root.
#
#   tools/deps.sh          build + run dependencies
#   tools/deps.sh test     also the test tools (cmocka, clang + sanitizer runtimes,
#                          Python websockets/pytest, Python cryptography for the push
#                          wake tests' fake Google endpoints, Node + npm's ws)
#   tools/deps.sh bench    also what `make bench` uses (HAProxy for the TLS scenarios,
#                          openssl for their throwaway certificate, matplotlib for the
#                          charts, taskset from util-linux)
set -euo pipefail

want=(make gcc liburing-dev android-libboringssl-dev util-linux)
if [[ "${1:-}" == "test" ]]; then
  want+=(clang-14 libclang-rt-14-dev libcmocka-dev python3 python3-websockets
         python3-pytest python3-cryptography prometheus)
  command -v node >/dev/null 2>&1 || want+=(nodejs)
  command -v npm >/dev/null 2>&1 || want+=(npm)
fi
if [[ "${1:-}" == "bench" ]]; then
  want+=(python3 python3-matplotlib haproxy openssl)
fi

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "deps: missing Debian packages: ${missing[*]}" >&2
    echo "deps: fix: run as root, or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ "${1:-}" == "test" ]]; then
  here=$(cd "$(dirname "$0")/.." && pwd)
  if [[ ! -f "$here/tests/e2e/node_modules/ws/package.json" ]]; then
    echo "deps: installing npm ws for the e2e tests" >&2
    (cd "$here/tests/e2e" && npm ci --no-audit --no-fund --silent >/dev/null)
  fi
fi
