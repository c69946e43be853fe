#!/usr/bin/env bash
# Install what building, running and testing the relay needs, when it is missing.
# Idempotent and quiet when everything is present. Debian 12 (bookworm), as root.
#
#   tools/deps.sh          build + run dependencies (gcc, g++, liburing, BoringSSL)
#   tools/deps.sh test     also the test tools (cmocka, clang + sanitizer runtimes,
#                          Python websockets/pytest/yaml, Python cryptography for the
#                          push wake tests' fake Google endpoints, Node + npm's ws; for
#                          the deploy/ checks: HAProxy + openssl (scale-out and the
#                          unit's HAProxy pair), promtool (prometheus), systemd-analyze
#                          and systemd-nspawn (the unit verified and run), man-db +
#                          groff (the man page), iproute2's ss (run-local.sh), procps'
#                          sysctl, pebble + pebble-challtestsrv: the ACME server the
#                          --domain tests issue certificates from)
#   tools/deps.sh docs     what tools/render-dashboard.py uses (make dashboard-png:
#                          matplotlib, a real Prometheus, openssl for the relay's
#                          throwaway certificate); not needed by make test
#   tools/deps.sh bench    also what `make bench` uses (HAProxy for the TLS scenarios,
#                          openssl for their throwaway certificate, matplotlib for the
#                          charts, taskset from util-linux, perf for bench/profile.py)
set -euo pipefail

# g++: src/transport/tls13_secrets.cc, the one C++ file (BoringSSL's traffic-secret API
# is C++ only); clang++-14 comes with clang-14 and uses g++'s libstdc++ headers.
want=(make gcc g++ liburing-dev android-libboringssl-dev util-linux)
if [[ "${1:-}" == "test" ]]; then
  want+=(clang-14 libclang-rt-14-dev libcmocka-dev python3 python3-websockets
         python3-pytest python3-yaml python3-cryptography prometheus haproxy openssl systemd
         systemd-container man-db groff-base iproute2 procps pebble)
  command -v node >/dev/null 2>&1 || want+=(nodejs)
  command -v npm >/dev/null 2>&1 || want+=(npm)
fi
if [[ "${1:-}" == "docs" ]]; then
  want+=(python3 python3-matplotlib prometheus openssl)
fi
if [[ "${1:-}" == "bench" ]]; then
  want+=(python3 python3-matplotlib haproxy openssl linux-perf)
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
