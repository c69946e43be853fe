#!/usr/bin/env bash
# Try the scale-out on one machine: N relays on free loopback ports behind HAProxy with
# pyrycode-relay-scaleout.cfg (this directory), in the foreground until SIGTERM or
# SIGINT (Ctrl-C), then everything it started is stopped.
#
#   run-local.sh --relays N --listen HOST:PORT --relay-bin PATH [--log-dir DIR] [-- RELAY ARGS...]
#
#   --relays N       relays to start (1 to 64)
#   --listen H:P     where HAProxy accepts clients (ws://H:P/v1/server, /v1/client)
#   --relay-bin P    the pyrycode-relay binary
#   --log-dir D      keep each relay's log (relay-I.log) and the HAProxy config there;
#                    default: a temporary directory removed at exit
#   RELAY ARGS       passed to every relay after the flags below
#
# Each relay runs as
#   pyrycode-relay --insecure-listen 127.0.0.1:PORT --metrics-listen 127.0.0.1:MPORT \
#                  --trust-x-forwarded-for RELAY ARGS...
# (--trust-x-forwarded-for because the config sets X-Forwarded-For: the pair the
# systemd unit ships). As root each relay runs under a uid of its own that no account
# or process uses (3000000000 and up, like systemd's DynamicUser), with no capability:
# the relay refuses to start with any capability beyond CAP_NET_BIND_SERVICE.
#
# Once everything answers, it prints one line per process and then "ready":
#   relay I pid PID listen 127.0.0.1:PORT metrics 127.0.0.1:MPORT log FILE
#   haproxy pid PID listen HOST:PORT config FILE
#   ready
# A relay that exits is reported ("relay I pid PID exited with code C") and not
# restarted (stopping one is how to watch its server-ids move); if HAProxy exits, the
# script stops everything and exits 1.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cfg_template=$here/pyrycode-relay-scaleout.cfg
RELAYS_MAX=64
READY_TIMEOUT_S=15  # each relay and HAProxy must answer /healthz by then
STOP_TIMEOUT_S=12   # the relay drains in at most 10 s (SIGKILL after this)

usage() {
	sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}
die() { echo "run-local: $*" >&2; exit 2; }

relays="" listen="" relay_bin="" log_dir=""
relay_args=()
while (($#)); do
	case $1 in
	--relays) relays=${2:-}; shift 2 || usage ;;
	--listen) listen=${2:-}; shift 2 || usage ;;
	--relay-bin) relay_bin=${2:-}; shift 2 || usage ;;
	--log-dir) log_dir=${2:-}; shift 2 || usage ;;
	--) shift; relay_args=("$@"); break ;;
	-h | --help) usage ;;
	*) die "unknown argument '$1' (relay flags go after --)" ;;
	esac
done
[[ $relays =~ ^[0-9]+$ ]] && ((relays >= 1 && relays <= RELAYS_MAX)) || die "--relays must be 1 to $RELAYS_MAX"
[[ $listen =~ ^(.+):([0-9]+)$ ]] || die "--listen must be HOST:PORT"
listen_port=${BASH_REMATCH[2]}
[[ -x $relay_bin ]] || die "--relay-bin '$relay_bin' is not an executable"
relay_bin=$(cd "$(dirname "$relay_bin")" && pwd)/$(basename "$relay_bin")
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
[[ -x $haproxy ]] || die "haproxy not found (apt-get install haproxy)"
[[ -f $cfg_template ]] || die "missing $cfg_template"

keep_dir=1
if [[ -z $log_dir ]]; then
	log_dir=$(mktemp -d /tmp/pyrycode-scaleout.XXXXXX)
	keep_dir=0
fi
mkdir -p "$log_dir"
# The relays (as nobody) write their logs through our redirection, not themselves.

# io_uring charges ring memory to the user's locked-memory budget (RLIMIT_MEMLOCK,
# 8 MiB by default), which every process of that uid shares: N relays with several
# workers each, as nobody next to other programs running as nobody, run out
# (io_uring_queue_init: ENOMEM). Lift the limit where we may (root with
# CAP_SYS_RESOURCE; others up to the hard limit), as the unit's LimitMEMLOCK does...
ulimit -l unlimited 2>/dev/null || ulimit -l "$(ulimit -Hl)" 2>/dev/null || true
# ...and as root give each relay a uid of its own, unused by any account or process,
# as systemd's DynamicUser does: no capability, no home, no files, its own budget.
# (tools/run-unprivileged.sh, for `make run`, uses nobody: one relay.)
uid_base=""
if [[ $(id -u) -eq 0 ]]; then
	for _ in $(seq 50); do
		# uids 3000000000..3899999999: far above any account range, below 2^32-1
		cand=$((3000000000 + (RANDOM * 32768 + RANDOM) % 900000000))
		clash=0
		for ((i = 1; i <= relays; i++)); do
			if getent passwd $((cand + i)) >/dev/null || pgrep -U $((cand + i)) >/dev/null 2>&1; then
				clash=1
				break
			fi
		done
		((clash)) || { uid_base=$cand; break; }
	done
	[[ -n $uid_base ]] || die "no unused uid range found for the relays"
fi
unprivileged() { # $1: relay index; the rest: the command
	local i=$1
	shift
	if [[ -n $uid_base ]]; then
		exec setpriv --reuid=$((uid_base + i)) --regid=$((uid_base + i)) --clear-groups --inh-caps=-all -- "$@"
	fi
	exec "$@"
}

# A loopback port nothing listens on now (ss lists the listeners). A relay that loses
# the race to another program fails to bind and is started again on another port.
taken_ports=" "
port=""
free_port() { # sets $port
	local used p
	used=$(ss -Htln 2>/dev/null | awk '{n = split($4, a, ":"); print a[n]}' | tr '\n' ' ')
	for _ in $(seq 200); do
		p=$((20000 + RANDOM % 40000))
		[[ " $used $taken_ports " == *" $p "* ]] && continue
		taken_ports+="$p "
		port=$p
		return 0
	done
	die "no free port found"
}

# GET /healthz on host $1 port $2 (bash's /dev/tcp: no client program needed). A
# subshell, because a failed redirection of `exec` ends the shell that runs it.
healthy() (
	exec 9<>"/dev/tcp/$1/$2" || exit 1
	printf 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&9 || exit 1
	IFS= read -r -t 2 line <&9 || exit 1
	[[ $line == "HTTP/1.1 200"* ]]
) 2>/dev/null

pids=() ports=() mports=() hap_pid=""
stopping=0
stop_all() {
	((stopping)) && return 0
	stopping=1
	local all=("${pids[@]}")
	[[ -n $hap_pid ]] && all+=("$hap_pid")
	for p in "${all[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	local deadline=$((SECONDS + STOP_TIMEOUT_S))
	for p in "${all[@]}"; do
		while kill -0 "$p" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	((keep_dir)) || rm -rf "$log_dir"
}
trap 'stop_all; exit 0' TERM INT
trap 'stop_all' EXIT

start_relay() { # $1: index (1-based)
	local i=$1 rport mport rc
	for _attempt in 1 2 3 4 5; do
		free_port; rport=$port
		free_port; mport=$port
		(unprivileged "$i" "$relay_bin" --insecure-listen "127.0.0.1:$rport" \
			--metrics-listen "127.0.0.1:$mport" --trust-x-forwarded-for "${relay_args[@]}") \
			</dev/null >>"$log_dir/relay-$i.log" 2>&1 &
		local pid=$!
		local deadline=$((SECONDS + READY_TIMEOUT_S))
		while ((SECONDS < deadline)); do
			if ! kill -0 "$pid" 2>/dev/null; then
				wait "$pid" && rc=0 || rc=$?
				# exit 1 with a bind error: the port was taken since; anything else is fatal
				if ((rc == 1)) && grep -q -i 'in use' "$log_dir/relay-$i.log"; then
					continue 2
				fi
				tail -5 "$log_dir/relay-$i.log" >&2
				die "relay $i exited with code $rc before it was ready"
			fi
			if healthy 127.0.0.1 "$rport"; then
				pids[i]=$pid ports[i]=$rport mports[i]=$mport
				return 0
			fi
			sleep 0.05
		done
		die "relay $i not ready within ${READY_TIMEOUT_S}s (log: $log_dir/relay-$i.log)"
	done
	die "relay $i: no port could be bound"
}

for ((i = 1; i <= relays; i++)); do
	start_relay "$i"
done

# The shipped config with its example server lines replaced by these relays.
cfg=$log_dir/haproxy.cfg
{
	sed -n '1,/# BEGIN relays/p' "$cfg_template"
	for ((i = 1; i <= relays; i++)); do
		echo "    server relay$i 127.0.0.1:${ports[i]}"
	done
	sed -n '/# END relays/,$p' "$cfg_template"
} >"$cfg"
"$haproxy" -c -q -f "$cfg" || die "HAProxy refused $cfg"
# HAProxy needs two descriptors per client (client side, relay side) and refuses to
# start when maxconn does not fit the hard limit: size it from that limit here, unless
# the caller chose PYRY_HAPROXY_MAXCONN.
hard=$(ulimit -Hn)
[[ $hard == unlimited ]] && hard=1048576
ulimit -n "$hard" 2>/dev/null || true
maxconn=${PYRY_HAPROXY_MAXCONN:-$(( (hard - 100) / 2 < 100000 ? (hard - 100) / 2 : 100000 ))}
PYRY_BIND=$listen PYRY_HAPROXY_MAXCONN=$maxconn "$haproxy" -db -f "$cfg" </dev/null 2>>"$log_dir/haproxy.log" &
hap_pid=$!
deadline=$((SECONDS + READY_TIMEOUT_S))
listen_host=${listen%:*}
listen_host=${listen_host#[}
listen_host=${listen_host%]}
[[ $listen_host == "" || $listen_host == "*" || $listen_host == 0.0.0.0 ]] && listen_host=127.0.0.1
until healthy "$listen_host" "$listen_port"; do
	kill -0 "$hap_pid" 2>/dev/null || { cat "$log_dir/haproxy.log" >&2; die "haproxy exited"; }
	((SECONDS < deadline)) || die "haproxy not answering on $listen within ${READY_TIMEOUT_S}s"
	sleep 0.05
done

for ((i = 1; i <= relays; i++)); do
	echo "relay $i pid ${pids[i]} listen 127.0.0.1:${ports[i]} metrics 127.0.0.1:${mports[i]} log $log_dir/relay-$i.log"
done
echo "haproxy pid $hap_pid listen $listen config $cfg"
echo "ready"

# Foreground until a signal (the trap stops everything) or HAProxy's exit.
while :; do
	done_pid=""
	rc=0
	wait -n -p done_pid || rc=$?
	((stopping)) && break
	[[ -z $done_pid ]] && continue
	if [[ $done_pid == "$hap_pid" ]]; then
		echo "run-local: haproxy exited with code $rc; stopping the relays" >&2
		tail -5 "$log_dir/haproxy.log" >&2
		hap_pid=""
		stop_all
		trap - EXIT
		exit 1
	fi
	for ((i = 1; i <= relays; i++)); do
		if [[ ${pids[i]:-} == "$done_pid" ]]; then
			echo "relay $i pid $done_pid exited with code $rc"
			unset 'pids[i]'
		fi
	done
done
