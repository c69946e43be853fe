#!/usr/bin/env bash
# deploy/sysctl/pyrycode-relay.conf as the kernel and an operator see it:
#   - every setting has its reason: the line above it is a comment;
#   - every key exists under /proc/sys (a "-"-prefixed key may be missing: systemd-sysctl
#     skips it on kernels without it), and `sysctl -p --dry-run` takes the file;
#   - every value has the shape of the kernel's current one (as many integer fields),
#     and the ordered ones are ordered (tcp_mem, tcp_rmem, tcp_wmem, the port range);
#   - the per-network-namespace keys (net.*) are really written and read back in a
#     throwaway network namespace (unshare -n), so the kernel accepts each value; the
#     host's own settings are never touched;
#   - the shipped files agree: the unit's LimitNOFILE covers --max-connections + 16448
#     (src/main.c) and does not exceed fs.nr_open (systemd could not apply it).
# Last line: "sysctl: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
conf=deploy/sysctl/pyrycode-relay.conf
unit=deploy/systemd/pyrycode-relay.service
pass=0; fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAILED: $*"; }

declare -A value
prev=""
netkeys=()
while IFS= read -r line || [[ -n $line ]]; do
	if [[ $line =~ ^(-?)([a-z0-9_.-]+)[[:space:]]*=[[:space:]]*(.*)$ ]]; then
		optional=${BASH_REMATCH[1]} key=${BASH_REMATCH[2]} val=${BASH_REMATCH[3]}
		value[$key]=$val
		[[ $prev == \#* ]] && ok || bad "$key has no comment above it saying why"
		path=/proc/sys/${key//./\/}
		if [[ ! -e $path ]]; then
			[[ -n $optional ]] && { ok; echo "note: $key absent on this kernel (optional)"; continue; }
			bad "$key: no $path"; continue
		fi
		ok
		read -ra cur <"$path"
		read -ra want <<<"$val"
		((${#cur[@]} == ${#want[@]})) && ok || bad "$key: ${#want[@]} fields, the kernel has ${#cur[@]} (${cur[*]})"
		for v in "${want[@]}"; do [[ $v =~ ^[0-9]+$ ]] || bad "$key: '$v' is not a non-negative integer"; done
		case $key in
		net.ipv4.tcp_mem | net.ipv4.tcp_rmem | net.ipv4.tcp_wmem)
			((want[0] <= want[1] && want[1] <= want[2])) && ok || bad "$key: not ascending: $val" ;;
		net.ipv4.ip_local_port_range)
			((want[0] >= 1024 && want[0] < want[1] && want[1] <= 65535)) && ok || bad "$key: bad range $val" ;;
		esac
		[[ $key == net.* ]] && netkeys+=("$key")
	elif [[ -n ${line//[[:space:]]/} && $line != \#* ]]; then
		bad "unparsed line: $line"
	fi
	[[ -n ${line//[[:space:]]/} ]] && prev=$line
done <"$conf"

if out=$(sysctl -p "$conf" --dry-run 2>&1); then ok; else bad "sysctl -p --dry-run: $out"; fi

# Written for real, but only in a new network namespace and only net.* keys: those the
# new namespace shows are its own copies (global ones such as tcp_mem are not shown
# there, so they cannot be written by accident).
applied=0
if unshare -n true 2>/dev/null; then
	script=""
	for key in "${netkeys[@]}"; do
		script+="p=/proc/sys/${key//./\/}; if [ -w \$p ]; then sysctl -q -w '$key=${value[$key]}' && "
		script+="[ \"\$(sysctl -n '$key' | tr -s '\t ' '  ')\" = '${value[$key]}' ] && echo 'applied $key' || echo 'FAILED $key'; fi;"
	done
	res=$(unshare -n sh -c "$script" 2>&1)
	applied=$(grep -c '^applied' <<<"$res")
	if grep -q FAILED <<<"$res"; then bad "in a fresh network namespace: $res"; else ok; fi
	((applied > 0)) && ok || bad "no net.* key could be written in a fresh network namespace"
else
	echo "note: unshare -n not permitted here: values checked by shape only"
fi

# The unit and this file agree.
nofile=$(sed -n 's/^LimitNOFILE=\([0-9]*\)$/\1/p' "$unit")
flags=$(sed -n 's/^Environment="RELAY_FLAGS=\(.*\)"$/\1/p' "$unit")
maxconn=$(sed -n 's/.*--max-connections[ =]\([0-9]*\).*/\1/p' <<<"$flags")
maxconn=${maxconn:-100000} # the relay's default (src/config/config.h)
need=$((maxconn + 16384 + 64)) # HTTP_PHASE_CONNECTIONS_MAX + FD_RESERVE (src/main.c)
[[ -n $nofile ]] && ((nofile >= need)) && ok || bad "LimitNOFILE=$nofile below --max-connections $maxconn + 16448 = $need"
((nofile <= ${value[fs.nr_open]})) && ok || bad "LimitNOFILE=$nofile above fs.nr_open=${value[fs.nr_open]}"

echo "sysctl: ${#value[@]} settings, $applied applied in a network namespace"
echo "sysctl: $pass passed, $fail failed"
((fail == 0))
