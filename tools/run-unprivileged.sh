#!/usr/bin/env bash
# Start a program without root's capabilities. The relay, like the reference, refuses
# to start with any effective capability beyond CAP_NET_BIND_SERVICE, so as root we
# drop to nobody (65534) instead of weakening that check. As a normal user: run as is.
set -euo pipefail
if [[ $(id -u) -eq 0 ]]; then
  exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all -- "$@"
fi
exec "$@"
