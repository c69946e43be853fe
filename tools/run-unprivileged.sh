#!/usr/bin/env bash
# Start a program without root's capabilities. The relay, like the reference, refuses
# to start with any effective capability beyond CAP_NET_BIND_SERVICE, so as root we
# drop to nobody (65534) instead of weakening that check. As a normal user: run as is.
# RELAY_RUN_UID picks another uid: io_uring's locked memory (RLIMIT_MEMLOCK) is counted
# per uid, so test runs that go on side by side each take their own.
set -euo pipefail
uid=${RELAY_RUN_UID:-65534}
[[ $uid =~ ^[0-9]+$ ]] || { echo "run-unprivileged: RELAY_RUN_UID must be a number" >&2; exit 2; }
if [[ $(id -u) -eq 0 ]]; then
  exec setpriv --reuid="$uid" --regid="$uid" --clear-groups --inh-caps=-all -- "$@"
fi
exec "$@"
