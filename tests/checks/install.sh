#!/usr/bin/env bash
# `make install` into a temporary DESTDIR, then every installed piece checked as an
# operator would use it:
#   - the installed binary runs (--version) and the installed man page renders (man -l,
#     groff warnings are failures) and names every flag --help lists;
#   - the installed systemd unit passes `systemd-analyze verify` (its ExecStart binary
#     and man page resolved inside the DESTDIR) and `systemd-analyze security --offline`
#     under a fixed exposure threshold, and its ExecStart flags pass the installed
#     binary's --check;
#   - the installed units run for real: systemd booted in a container (systemd-nspawn,
#     --volatile=yes: the host's /usr read-only, everything else a tmpfs, its own
#     network namespace) with the DESTDIR's /usr/local bound in. The relay must reach
#     READY (Type=notify), answer /healthz and a WebSocket upgrade under the unit's
#     SystemCallFilter and sandbox, keep a 2 s watchdog fed, go through a binary
#     upgrade (pyrycode-relay-upgrade: SIGUSR2, MAINPID moves, no client dial fails,
#     no restart counted) and stop with exit 0. Then the certificate-files unit: READY,
#     /healthz over TLS on :443, `systemctl reload` with a new certificate (served
#     after) and with a broken one (the reload fails, the old certificate stays),
#     stop with exit 0. Skipped (said so) when this machine cannot boot a container.
# Last line: "install: N passed, N failed[, N skipped]".
set -uo pipefail
cd "$(dirname "$0")/../.."
export LC_ALL=C.UTF-8

pass=0; fail=0; skip=0
ok() { pass=$((pass + 1)); echo "ok: $*"; }
bad() { fail=$((fail + 1)); echo "FAILED: $*"; }
finish() {
	local s=""
	((skip)) && s=", $skip skipped"
	echo "install: $pass passed, $fail failed$s"
	((fail == 0))
	exit $?
}

CC=${CC:-gcc}
tmp=$(mktemp -d /tmp/pyrelay-install.XXXXXX)
nspawn_pid=""
cleanup() {
	if [[ -n $nspawn_pid ]] && kill -0 "$nspawn_pid" 2>/dev/null; then
		kill -TERM "$nspawn_pid" 2>/dev/null
		for _ in $(seq 50); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$nspawn_pid" 2>/dev/null
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

root=$tmp/root
if make --no-print-directory -s CC="$CC" install DESTDIR="$root" SYSTEMD_UNIT_DIR=/etc/systemd/system \
	>"$tmp/install.log" 2>&1; then
	ok "make install DESTDIR=$root"
else
	cat "$tmp/install.log"; bad "make install"; finish
fi
bin=$root/usr/local/bin/pyrycode-relay
man8=$root/usr/local/share/man/man8/pyrycode-relay.8
share=$root/usr/local/share/pyrycode-relay
unit=$share/systemd/pyrycode-relay.service
unit_files=$share/systemd/pyrycode-relay-certfiles.service
unit_acme=$share/systemd/pyrycode-relay-autocert.service

# ---- the binary
ver=$("$bin" --version 2>&1) && [[ -n $ver ]] && ok "installed --version: $ver" || bad "installed --version: $ver"
for f in systemd/pyrycode-relay.service systemd/pyrycode-relay-certfiles.service \
	systemd/pyrycode-relay-autocert.service grafana/pyrycode-relay.json \
	sysctl/pyrycode-relay.conf prometheus/prometheus.yml \
	prometheus/pyrycode-relay-rules.yml haproxy/pyrycode-relay-tls.cfg haproxy/pyrycode-relay-scaleout.cfg; do
	[[ -f $share/$f ]] && ok "installed $f" || bad "missing $share/$f"
done
[[ -x $share/haproxy/run-local.sh ]] && ok "run-local.sh installed executable" || bad "run-local.sh not executable"
[[ -x $share/systemd/pyrycode-relay-upgrade ]] && ok "pyrycode-relay-upgrade installed executable" \
	|| bad "pyrycode-relay-upgrade not executable"
[[ -f $root/etc/systemd/system/pyrycode-relay.service ]] && ok "SYSTEMD_UNIT_DIR copy" || bad "no unit in SYSTEMD_UNIT_DIR"
for u in "$unit" "$unit_files" "$unit_acme"; do
	grep -q "^ExecStart=/usr/local/bin/pyrycode-relay " "$u" && ok "$(basename "$u") names the installed binary" \
		|| bad "$(basename "$u") ExecStart does not name /usr/local/bin/pyrycode-relay"
done

# ---- the man page
if MANWIDTH=100 man -l "$man8" >"$tmp/man.txt" 2>"$tmp/man.err" && [[ ! -s $tmp/man.err ]] &&
	grep -q "pyrycode-relay $ver" "$tmp/man.txt"; then
	ok "man -l renders pyrycode-relay(8) for version $ver"
else
	cat "$tmp/man.err"; bad "man -l"
fi
if groff -man -Tutf8 -ww -z "$man8" 2>"$tmp/groff.err" && [[ ! -s $tmp/groff.err ]]; then
	ok "groff -man -ww: no warnings"
else
	cat "$tmp/groff.err"; bad "groff warnings"
fi
missing=()
while read -r flag; do
	grep -q -- "$flag" "$tmp/man.txt" || missing+=("$flag")
done < <("$bin" --help | sed -n 's/^  \(--[a-z-]*\).*/\1/p')
((${#missing[@]} == 0)) && ok "man page names every --help flag" || bad "man page lacks ${missing[*]}"
for s in SYNOPSIS OPTIONS ENVIRONMENT SIGNALS "EXIT STATUS"; do
	grep -q "^$s" "$tmp/man.txt" || bad "man page has no $s section"
done

# ---- the units, statically
# verify resolves ExecStart= and Documentation=man: on this host, so check a copy whose
# /usr/local/ points into the DESTDIR, with MANPATH there too.
mkdir -p "$tmp/verify" "$tmp/tls"
# A throwaway certificate for the certificate-files unit (--check loads it; the
# container serves it). Replaced by a second one to test reload.
mkcert() { # $1: directory, $2: common name
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$2" \
		-addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
		-keyout "$1/privkey.pem" -out "$1/fullchain.pem" >/dev/null 2>&1 && chmod 0644 "$1/privkey.pem"
}
mkcert "$tmp/tls" pyrelay-install-1 || bad "openssl could not make a test certificate"
chmod 0755 "$tmp" "$tmp/tls"
# The --domain unit's cache (/var/lib is the service manager's): one the relay may create
mkdir -p "$tmp/state" && chown "${RELAY_RUN_UID:-65534}" "$tmp/state" && chmod 0700 "$tmp/state"
for u in "$unit" "$unit_files" "$unit_acme"; do
	name=$(basename "$u")
	sed "s|/usr/local/|$root/usr/local/|g" "$u" >"$tmp/verify/$name"
	if (cd "$tmp" && MANPATH=$root/usr/local/share/man systemd-analyze verify "$tmp/verify/$name") \
		>"$tmp/verify.log" 2>&1; then
		ok "systemd-analyze verify (installed $name)"
	else
		cat "$tmp/verify.log"; bad "systemd-analyze verify $name"
	fi
	# 20 = exposure 2.0 of 10: the shipped hardening scores 1.8 (proxy) and 1.9 (its
	# one capability); a weakened edit fails here.
	if systemd-analyze security --offline=yes --threshold=20 "$tmp/verify/$name" >"$tmp/sec.log" 2>&1; then
		ok "systemd-analyze security $name: $(grep -o 'exposure level.*' "$tmp/sec.log")"
	else
		tail -3 "$tmp/sec.log"; bad "systemd-analyze security $name over threshold 2.0"
	fi
	flags=$(sed -n 's/^Environment="RELAY_FLAGS=\(.*\)"$/\1/p' "$u")
	env=()
	grep -q '^Environment=PYRYCODE_RELAY_PRODUCTION=1$' "$u" && env=(PYRYCODE_RELAY_PRODUCTION=1)
	# As nobody (no capability): :443 becomes :8443, the certificate the test one.
	flags=$(echo "$flags" | sed "s|:443 |:8443 |; s|/etc/pyrycode-relay/tls|$tmp/tls|g; s|/var/lib/pyrycode-relay/certs|$tmp/state/certs|g")
	# shellcheck disable=SC2086 # word splitting as systemd splits $RELAY_FLAGS
	if env "${env[@]}" tools/run-unprivileged.sh "$bin" --check $flags >"$tmp/check.out" 2>&1; then
		ok "$name flags pass --check: $flags"
	else
		cat "$tmp/check.out"; bad "$name flags refused by --check"
	fi
done
grep -q '^Environment=PYRYCODE_RELAY_PRODUCTION=1$' "$unit_acme" &&
	grep -q '^AmbientCapabilities=CAP_NET_BIND_SERVICE$' "$unit_acme" &&
	grep -q '^StateDirectory=pyrycode-relay$' "$unit_acme" &&
	ok "--domain unit: production mode, CAP_NET_BIND_SERVICE alone, the cache in StateDirectory" ||
	bad "--domain unit lacks production mode, the capability or the state directory"
grep -q '^ExecReload=/usr/local/bin/pyrycode-relay --check $RELAY_FLAGS$' "$unit_files" &&
	grep -q '^ExecReload=/bin/kill -HUP $MAINPID$' "$unit_files" &&
	ok "certificate-files unit: reload runs --check, then SIGHUP" || bad "certificate-files unit ExecReload"

# ---- the unit, run by systemd in a container
if ! command -v systemd-nspawn >/dev/null || ! command -v nsenter >/dev/null; then
	skip=$((skip + 1)); echo "skipped: systemd-nspawn not installed (tools/deps.sh test installs it)"; finish
fi
target=pyrelay-install-check-$$.target
printf '[Unit]\nDescription=pyrycode-relay install check\nRequires=pyrycode-relay.service\nAfter=pyrycode-relay.service\n' \
	>"$tmp/$target"
# A 2 s watchdog instead of 30 s, so the check sees several intervals pass.
printf '[Service]\nWatchdogSec=2s\n' >"$tmp/watchdog.conf"
# The container's /etc (a tmpfs) has no ssl-cert group: the test key is 0644 instead.
printf '[Service]\nSupplementaryGroups=\n' >"$tmp/nogroup.conf"
# Only the relay and what it needs: no network-online wait (no network here), no
# first-boot questions.
timeout 180 systemd-nspawn --quiet --register=no --keep-unit -D / --volatile=yes --private-network \
	--bind-ro="$root/usr/local:/usr/local" \
	--bind-ro="$root/etc/systemd/system/pyrycode-relay.service:/etc/systemd/system/pyrycode-relay.service" \
	--bind-ro="$tmp/watchdog.conf:/etc/systemd/system/pyrycode-relay.service.d/watchdog.conf" \
	--bind-ro="$root/etc/systemd/system/pyrycode-relay-certfiles.service:/etc/systemd/system/pyrycode-relay-certfiles.service" \
	--bind-ro="$tmp/nogroup.conf:/etc/systemd/system/pyrycode-relay-certfiles.service.d/nogroup.conf" \
	--bind-ro="$tmp/tls:/etc/pyrycode-relay/tls" \
	--bind-ro="$tmp/$target:/etc/systemd/system/$target" \
	--bind-ro=/dev/null:/etc/systemd/system/systemd-networkd-wait-online.service \
	-b -- "systemd.unit=$target" systemd.firstboot=off systemd.show_status=false \
	>"$tmp/nspawn.log" 2>&1 </dev/null &
nspawn_pid=$!
init=""
for _ in $(seq 100); do
	init=$(pgrep -f "systemd.unit=$target" -x -n 2>/dev/null || pgrep -f "^/usr/lib/systemd/systemd systemd.unit=$target" | head -1)
	[[ -n $init ]] && break
	kill -0 "$nspawn_pid" 2>/dev/null || break
	sleep 0.1
done
inside() { nsenter -t "$init" -a "$@"; }
state=""
if [[ -n $init ]]; then
	for _ in $(seq 300); do
		state=$(inside systemctl is-active pyrycode-relay.service 2>/dev/null)
		[[ $state == active || $state == failed ]] && break
		sleep 0.1
	done
fi
if [[ -z $init || -z $state ]]; then
	tail -5 "$tmp/nspawn.log"
	skip=$((skip + 1)); echo "skipped: systemd could not be booted in a container on this machine"; finish
fi
if [[ $state == active ]]; then
	ok "systemd started the installed unit: ExecStartPre --check, then READY=1 (Type=notify)"
else
	inside journalctl -u pyrycode-relay --no-pager | tail -20; bad "unit state: $state"; finish
fi
probe='
import socket, sys
def ask(req):
    s = socket.create_connection(("127.0.0.1", 8080), timeout=5)
    s.sendall(req)
    data = s.recv(4096)
    s.close()
    return data.split(b"\r\n", 1)[0].decode()
h = ask(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
u = ask(b"GET /v1/server HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"X-Pyrycode-Server: install-check\r\nX-Pyrycode-Version: 1\r\nUser-Agent: install-check\r\n\r\n")
print(h); print(u)
sys.exit(0 if h.endswith("200 OK") and u.startswith("HTTP/1.1 101") else 1)
'
if inside /usr/bin/python3 -c "$probe" >"$tmp/probe.log" 2>&1; then
	ok "under the unit's sandbox and SystemCallFilter: /healthz 200, WebSocket upgrade 101"
else
	cat "$tmp/probe.log"; bad "the relay does not serve under the unit"
fi
sleep 5 # 2.5 watchdog intervals
restarts=$(inside systemctl show -P NRestarts pyrycode-relay.service)
wd=$(inside systemctl show -P WatchdogUSec pyrycode-relay.service)
[[ $(inside systemctl is-active pyrycode-relay.service) == active && $restarts == 0 && $wd == 2s ]] \
	&& ok "watchdog ($wd) fed: still active after 5 s, $restarts restarts" \
	|| bad "watchdog: WatchdogUSec=$wd, NRestarts=$restarts"
# A binary upgrade (ADR 0018) while a client dials /healthz in a loop: the same binary
# here, the mechanism is what is checked (SIGUSR2, the hand-over, MAINPID moving).
loop='
import socket, sys, time
ok = bad = 0
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        s = socket.create_connection(("127.0.0.1", 8080), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        line = s.recv(4096).split(b"\r\n", 1)[0]
        s.close()
        if line.endswith(b"200 OK"):
            ok += 1
        else:
            bad += 1
    except OSError as e:
        bad += 1
        print("dial failed:", e)
print("ok", ok, "failed", bad)
sys.exit(0 if bad == 0 and ok > 0 else 1)
'
old_pid=$(inside systemctl show -P MainPID pyrycode-relay.service)
inside /usr/bin/python3 -c "$loop" 8 >"$tmp/loop.log" 2>&1 &
loop_pid=$!
sleep 1
if inside /usr/local/share/pyrycode-relay/systemd/pyrycode-relay-upgrade pyrycode-relay.service 30 >"$tmp/upgrade.log" 2>&1; then
	ok "pyrycode-relay-upgrade: $(tail -1 "$tmp/upgrade.log")"
else
	cat "$tmp/upgrade.log"; inside journalctl -u pyrycode-relay --no-pager | tail -15; bad "pyrycode-relay-upgrade"
fi
wait "$loop_pid" && ok "no dial failed during the upgrade: $(tail -1 "$tmp/loop.log")" \
	|| { cat "$tmp/loop.log"; bad "dials failed during the upgrade"; }
new_pid=$(inside systemctl show -P MainPID pyrycode-relay.service)
restarts=$(inside systemctl show -P NRestarts pyrycode-relay.service)
if [[ $new_pid != "$old_pid" && $restarts == 0 && $(inside systemctl is-active pyrycode-relay.service) == active ]] &&
	inside journalctl -u pyrycode-relay --no-pager | grep -q 'listeners handed over; draining' &&
	! inside journalctl -u pyrycode-relay --no-pager | grep -q 'which is not our child'; then
	ok "after the upgrade: main pid $old_pid -> $new_pid (systemd's own child), active, $restarts restarts"
else
	inside journalctl -u pyrycode-relay --no-pager | tail -15; bad "upgrade: MainPID $old_pid -> $new_pid, NRestarts=$restarts"
fi
inside ps -eLo pid,tid,ppid,stat,cmd | grep [p]yrycode > "$tmp/ps.log"
inside systemctl stop pyrycode-relay.service
result=$(inside systemctl show -P Result pyrycode-relay.service)
status=$(inside systemctl show -P ExecMainStatus pyrycode-relay.service)
if [[ $result == success && $status == 0 ]] && inside journalctl -u pyrycode-relay --no-pager | grep -q 'shutdown complete'; then
	ok "systemctl stop: drained, exit 0"
else
	cat "$tmp/ps.log"; inside journalctl -u pyrycode-relay --no-pager | tail -40; bad "stop: Result=$result ExecMainStatus=$status"
fi

# ---- the certificate-files unit in the same container
tls_probe='
import hashlib, socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 443), timeout=5))
der = s.getpeercert(binary_form=True)
s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
line = s.recv(4096).split(b"\r\n", 1)[0].decode()
s.close()
print(hashlib.sha256(der).hexdigest(), line)
sys.exit(0 if line.endswith("200 OK") else 1)
'
fp() { openssl x509 -in "$1" -outform der | sha256sum | cut -d" " -f1; }
if inside systemctl start pyrycode-relay-certfiles.service && sleep 0.5 &&
	inside /usr/bin/python3 -c "$tls_probe" >"$tmp/tls1.log" 2>&1 && grep -q "^$(fp "$tmp/tls/fullchain.pem") " "$tmp/tls1.log"; then
	ok "certificate-files unit: READY, /healthz 200 over TLS on :443 with the installed certificate"
else
	cat "$tmp/tls1.log"; inside journalctl -u pyrycode-relay-certfiles --no-pager | tail -15; bad "certificate-files unit start"
fi
mkdir -p "$tmp/tls2" && mkcert "$tmp/tls2" pyrelay-install-2 && cp "$tmp/tls2/"*.pem "$tmp/tls/"
if inside systemctl reload pyrycode-relay-certfiles.service && sleep 0.3 &&
	inside /usr/bin/python3 -c "$tls_probe" >"$tmp/tls2.log" 2>&1 && grep -q "^$(fp "$tmp/tls2/fullchain.pem") " "$tmp/tls2.log"; then
	ok "systemctl reload: the new certificate is served"
else
	cat "$tmp/tls2.log"; inside journalctl -u pyrycode-relay-certfiles --no-pager | tail -10; bad "reload with a new certificate"
fi
echo "not a key" >"$tmp/tls/privkey.pem"
if ! inside systemctl reload pyrycode-relay-certfiles.service 2>/dev/null &&
	[[ $(inside systemctl is-active pyrycode-relay-certfiles.service) == active ]] &&
	inside /usr/bin/python3 -c "$tls_probe" >"$tmp/tls3.log" 2>&1 && grep -q "^$(fp "$tmp/tls2/fullchain.pem") " "$tmp/tls3.log"; then
	ok "systemctl reload with a broken key fails; the relay keeps serving the previous certificate"
else
	cat "$tmp/tls3.log"; bad "reload with a broken key"
fi
# An upgrade the new binary's --check refuses (the key is still broken) changes nothing.
pid_before=$(inside systemctl show -P MainPID pyrycode-relay-certfiles.service)
if ! inside /usr/local/share/pyrycode-relay/systemd/pyrycode-relay-upgrade pyrycode-relay-certfiles.service 30 \
	>"$tmp/upgrade1.log" 2>&1 && grep -q "refuses the unit's flags" "$tmp/upgrade1.log" &&
	[[ $(inside systemctl show -P MainPID pyrycode-relay-certfiles.service) == "$pid_before" ]]; then
	ok "pyrycode-relay-upgrade refuses when --check fails (broken key); the relay is untouched"
else
	cat "$tmp/upgrade1.log"; bad "upgrade with a broken key"
fi
# The upgrade of a TLS listener: the new relay serves the same certificate files.
cp "$tmp/tls2/privkey.pem" "$tmp/tls/privkey.pem"
if inside /usr/local/share/pyrycode-relay/systemd/pyrycode-relay-upgrade pyrycode-relay-certfiles.service 30 \
	>"$tmp/upgrade2.log" 2>&1 && inside /usr/bin/python3 -c "$tls_probe" >"$tmp/tls4.log" 2>&1 &&
	[[ $(inside systemctl show -P NRestarts pyrycode-relay-certfiles.service) == 0 ]]; then
	ok "certificate-files unit: $(tail -1 "$tmp/upgrade2.log"), TLS /healthz 200 after it"
else
	cat "$tmp/upgrade2.log" "$tmp/tls4.log"; bad "certificate-files unit upgrade"
fi
inside systemctl stop pyrycode-relay-certfiles.service
result=$(inside systemctl show -P Result pyrycode-relay-certfiles.service)
status=$(inside systemctl show -P ExecMainStatus pyrycode-relay-certfiles.service)
[[ $result == success && $status == 0 ]] && ok "certificate-files unit: systemctl stop, exit 0" \
	|| bad "certificate-files stop: Result=$result ExecMainStatus=$status"
finish
