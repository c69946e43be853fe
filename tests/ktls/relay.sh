#!/usr/bin/env bash
# The relay's kTLS path, end to end, in the test VM (tests/ktls/run.sh boots Debian's
# 6.1 kernel, which has kTLS; this machine's kernel has none). What `make test-ktls-relay`
# and the "kTLS VM" stage of `make test` run.
#
#   tests/ktls/relay.sh --build build/gcc [run.sh options, e.g. --timeout 300]
#
# In the VM, two relays (an ECDSA and an RSA certificate, 2 workers each, so upgrades
# also cross workers) terminate TLS and must move every connection's records into the
# kernel after its handshake:
#   - loadgen routes frames (20,000 B: each spans two records) between binaries and
#     phones over TLS 1.2 with each AEAD (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305;
#     ECDSA and RSA) and over TLS 1.3, checking every byte, order and loss;
#   - ktls_client drives the hand-over's traps: application data coalesced with the
#     client's Finished (decrypted in user space first), a record split across the
#     hand-over (its rest received exactly before the kernel takes over), each on TLS
#     1.2 and 1.3; and a client KeyUpdate (update_requested), which the relay follows
#     where the kernel can take new keys (6.14+: the answer arrives under the next
#     keys both ways) and closes on where it cannot (6.1);
#   - a third relay with --https-proxy-protocol: ktls_client sends a PROXY v2 header in
#     the ClientHello's write, each hand-over case on TLS 1.2 and 1.3 (the PROXY phase
#     must leave no multishot receive armed when the keys move);
#   - the metrics must then say: every TLS connection took the kTLS path, none user
#     space; the KeyUpdate was followed or closed as the kernel allows; no PROXY header
#     was refused; the relays are still serving.
#   - live kTLS sessions move to a successor relay (--handover-socket, a binary upgrade):
#     loadgen's 6 connections keep routing, byte-checked, across it;
#   Default kernel: Debian 12's 6.1; `--kernel-suite trixie-backports` boots the newest
#   kernel there (7.x: rekey).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

build=""
pass=()
while (($#)); do
  case $1 in
    --build) build=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) pass+=("$1"); shift ;;
  esac
done
[[ -n $build ]] || { echo "relay.sh: --build DIR is required (e.g. build/gcc)" >&2; exit 2; }
for b in pyrycode-relay loadgen ktls_client; do
  [[ -x $build/$b ]] || { echo "relay.sh: $build/$b is missing (make test-ktls-relay builds it)" >&2; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
san="subjectAltName=IP:127.0.0.1"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=relay.test \
  -addext "$san" -keyout "$tmp/ec.key" -out "$tmp/ec.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=relay.test \
  -addext "$san" -keyout "$tmp/rsa.key" -out "$tmp/rsa.pem" 2>/dev/null
chmod 644 "$tmp"/*.key # the relay runs as nobody in the VM

cat >"$tmp/check.sh" <<'EOF'
# Runs in the VM (busybox sh). Every step is bounded: loadgen by its own timers, the
# client by its socket timeouts, the VM by run.sh's --timeout.
set -u
fail() { echo "RELAY-KTLS: FAIL: $*"; cat /tmp/relay-*.log; exit 1; }
metric() { # $1 port, $2 series (exact text before the value): its value, or 0
  wget -q -O - "http://127.0.0.1:$1/metrics" | awk -v k="$2 " 'index($0, k) == 1 {print $NF; exit}'
}
start() { # $1 name, $2 port, $3 metrics port, then more flags
  name=$1 port=$2 mport=$3; shift 3
  unprivileged pyrycode-relay --https-listen 127.0.0.1:$port --tls-cert /etc/relay/$name.pem \
    --tls-key /etc/relay/$name.key --metrics-listen 127.0.0.1:$mport --workers 2 \
    --rate-limit-burst 0 --max-connections 256 "$@" 2>/tmp/relay-$name-$port.log &
  i=0
  until wget -q -O /dev/null "http://127.0.0.1:$mport/metrics" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 100 ] || fail "relay $name on $port did not start"; sleep 0.1
  done
}
lg() { # $1 port, $2 CA, then loadgen's TLS options
  port=$1; ca=$2; shift 2
  unprivileged loadgen --url wss://127.0.0.1:$port --ca /etc/relay/$ca.pem --binaries 2 --phones 2 \
    --size 20000 --warmup 0.2 --duration 1 --drain 3 --connect-timeout 20 --quiet "$@" >/tmp/lg.json ||
    fail "loadgen $* on $port: $(cat /tmp/lg.json)"
  echo "RELAY-KTLS: loadgen $* on $port: ok"
}
start ec 8443 9443
start rsa 8444 9444
start ec 8445 9445 --https-proxy-protocol
lg 8443 ec --tls-version 1.2 --tls-cipher ECDHE-ECDSA-AES128-GCM-SHA256
lg 8443 ec --tls-version 1.2 --tls-cipher ECDHE-ECDSA-AES256-GCM-SHA384
lg 8443 ec --tls-version 1.2 --tls-cipher ECDHE-ECDSA-CHACHA20-POLY1305
lg 8443 ec --tls-version 1.3
lg 8444 rsa --tls-version 1.2 --tls-cipher ECDHE-RSA-AES128-GCM-SHA256
lg 8444 rsa --tls-version 1.2 --tls-cipher ECDHE-RSA-CHACHA20-POLY1305
lg 8444 rsa --tls-version 1.3
for first in separate coalesce split; do
  for v in --tls12 --tls13; do
    ktls_client --port 8443 --ca /etc/relay/ec.pem --first $first $v || fail "ktls_client --first $first $v"
  done
done
# a KeyUpdate: followed where the kernel can take new keys (6.14+), closed where not
kv=$(uname -r); major=${kv%%.*}; rest=${kv#*.}; minor=${rest%%.*}
if [ "$major" -gt 6 ] || { [ "$major" -eq 6 ] && [ "$minor" -ge 14 ]; }; then ku=answered; else ku=closed; fi
echo "RELAY-KTLS: kernel $kv: a KeyUpdate must be $ku"
ktls_client --port 8443 --ca /etc/relay/ec.pem --tls13 --key-update $ku || fail "ktls_client --key-update $ku"
ktls_client --port 8443 --ca /etc/relay/ec.pem --tls13 || fail "the relay stopped serving after a KeyUpdate"
for first in separate coalesce split; do
  for v in --tls12 --tls13; do
    ktls_client --port 8445 --ca /etc/relay/ec.pem --first $first $v --proxy-v2 ||
      fail "ktls_client --proxy-v2 --first $first $v"
  done
done
pr=$(wget -q -O - "http://127.0.0.1:9445/metrics" | grep -E '^pyrycode_relay_proxy_protocol_rejects_total' | grep -v ' 0$')
[ -z "$pr" ] || fail "PROXY headers refused: $pr"
for p in 9443 9444 9445; do
  k=$(metric $p 'pyrycode_relay_tls_connections_total{path="ktls",reason="installed"}')
  hs=$(metric $p 'pyrycode_relay_tls_handshakes_total{version="1.2"}')
  hs3=$(metric $p 'pyrycode_relay_tls_handshakes_total{version="1.3"}')
  echo "RELAY-KTLS: metrics :$p: kTLS installed $k, handshakes 1.2 $hs, 1.3 $hs3"
  wget -q -O - "http://127.0.0.1:$p/metrics" | grep -E '^pyrycode_relay_tls_connections_total' | grep -v ' 0$'
  [ "${k:-0}" -gt 0 ] && [ "$k" -eq $((hs + hs3)) ] || fail "not every TLS connection took the kTLS path on :$p"
  wget -q -O - "http://127.0.0.1:$p/metrics" | grep -E '^pyrycode_relay_tls_connections_total\{path="(userspace|closed)"' |
    grep -vq ' 0$' && fail "a connection stayed in user space on :$p"
done
closes=$(metric 9443 'pyrycode_relay_tls_errors_after_handshake_total{reason="key_update"}')
followed=$(metric 9443 'pyrycode_relay_tls_key_updates_total')
echo "RELAY-KTLS: KeyUpdates followed ${followed:-none}, closed ${closes:-none}"
if [ $ku = answered ]; then want_f=1; want_c=0; else want_f=0; want_c=1; fi
[ "${followed:-0}" -eq $want_f ] && [ "${closes:-0}" -eq $want_c ] ||
  fail "KeyUpdates followed ${followed:-none} (want $want_f), closed ${closes:-none} (want $want_c)"
# live kTLS sessions across a binary upgrade (ADR 0018): a successor takes the listener and
# the sessions over --handover-socket while loadgen's connections keep routing; a session
# that were closed instead (1001) would fail loadgen (it never reconnects)
start ec 8446 9446 --handover-socket /tmp/handover.sock
pid_old=$(pidof pyrycode-relay | tr ' ' '\n' | sort -n | tail -n1)
unprivileged loadgen --url wss://127.0.0.1:8446 --ca /etc/relay/ec.pem --binaries 2 --phones 2 --size 2000 \
  --warmup 0.2 --duration 7 --drain 3 --connect-timeout 20 --quiet >/tmp/lg-ho.json &
lg_pid=$!
sleep 2
unprivileged pyrycode-relay --https-listen 127.0.0.1:8446 --tls-cert /etc/relay/ec.pem --tls-key /etc/relay/ec.key \
  --metrics-listen 127.0.0.1:9446 --workers 1 --rate-limit-burst 0 --max-connections 256 \
  --handover-socket /tmp/handover.sock 2>/tmp/relay-ec-8446-new.log &
wait $lg_pid || fail "loadgen across the upgrade: $(cat /tmp/lg-ho.json)"
i=0
while kill -0 "$pid_old" 2>/dev/null; do
  i=$((i + 1)); [ $i -lt 100 ] || fail "the old relay did not exit after the hand-over"; sleep 0.1
done
moved=$(wget -q -O - "http://127.0.0.1:9446/metrics" | awk '/^pyrycode_relay_worker_sessions_resumed_total/ {n += $NF} END {print n + 0}')
echo "RELAY-KTLS: kTLS sessions moved to the new relay: $moved"
[ "$moved" -eq 6 ] || fail "kTLS sessions moved: $moved, want 6 (2 binaries, 4 phones)"
grep -q 'level=ERROR' /tmp/relay-*.log && fail "the relays logged an error"
echo "RELAY-KTLS: ok"
EOF

rc=0
"$here/run.sh" --bin "$build/pyrycode-relay" --bin "$build/loadgen" --bin "$build/ktls_client" \
  --file "$tmp/ec.pem:/etc/relay/ec.pem" --file "$tmp/ec.key:/etc/relay/ec.key" \
  --file "$tmp/rsa.pem:/etc/relay/rsa.pem" --file "$tmp/rsa.key:/etc/relay/rsa.key" \
  --file "$tmp/check.sh:/etc/relay/check.sh" --mem 1G --timeout 300 "${pass[@]}" -- sh /etc/relay/check.sh || rc=$?
exit $rc
