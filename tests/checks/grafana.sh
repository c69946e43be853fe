#!/usr/bin/env bash
# deploy/grafana/pyrycode-relay.json checked against promtool and a real relay:
#   - well-formed JSON, a dashboard Grafana imports: unique panel ids, every panel on
#     the 24-column grid, every target with an expression and a Prometheus datasource
#     through the ${datasource} variable;
#   - every expression is valid PromQL: written as recording rules ($__rate_interval
#     as 1m, $instance as .*) and read by `promtool check rules`;
#   - every metric name an expression uses is served by a real relay's /metrics (a
#     relay in certificate-files mode, so the TLS families are there too), and every
#     {{label}} of a legend is a label of one of its target's metrics there. With
#     --https-proxy-protocol, so the family only that mode serves is there too (the
#     check only scrapes; no client needs to speak PROXY).
# The dashboard rendered from a real run: tools/render-dashboard.py (docs/img/dashboard.png).
# Needs promtool and openssl (tools/deps.sh test). Last line: "grafana: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
dash=deploy/grafana/pyrycode-relay.json
bin=${RELAY_BIN:-build/gcc/pyrycode-relay}
pass=0; fail=0
ok() { pass=$((pass + 1)); echo "ok: $*"; }
bad() { fail=$((fail + 1)); echo "FAILED: $*"; }
finish() { echo "grafana: $pass passed, $fail failed"; ((fail == 0)); exit $?; }
tmp=$(mktemp -d /tmp/pyrelay-grafana.XXXXXX)
relay_pid=""
cleanup() { [[ -n $relay_pid ]] && kill "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

if out=$(/usr/bin/python3 - "$dash" "$tmp/rules.yml" 2>&1 <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ids, rules = set(), []
assert d.get("uid") and d.get("title"), "dashboard uid and title"
names = [v["name"] for v in d["templating"]["list"]]
assert names[:2] == ["datasource", "instance"], names
for p in d["panels"]:
    assert p["id"] not in ids, f"duplicate panel id {p['id']}"
    ids.add(p["id"])
    g = p["gridPos"]
    assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, f"panel {p['title']}: gridPos {g}"
    assert p["targets"], f"panel {p['title']}: no targets"
    for t in p["targets"]:
        assert t["datasource"]["uid"] == "${datasource}", f"panel {p['title']}: datasource"
        assert t["expr"].strip(), f"panel {p['title']}: empty expr"
        expr = t["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
        rules.append(f"      - record: panel_{p['id']}_{t['refId']}\n        expr: {json.dumps(expr)}\n")
open(sys.argv[2], "w").write("groups:\n  - name: dashboard\n    rules:\n" + "".join(rules))
print(f"{len(ids)} panels, {len(rules)} expressions")
PY
); then ok "dashboard JSON: $out"; else echo "$out"; bad "dashboard JSON"; finish; fi

if out=$(promtool check rules "$tmp/rules.yml" 2>&1); then ok "promtool parses every expression"
else echo "$out"; bad "promtool check rules on the dashboard's expressions"; fi

# A real relay's exposition, in certificate-files mode (every family is there).
if ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
	-keyout "$tmp/key.pem" -out "$tmp/cert.pem" >/dev/null 2>&1; then
	bad "openssl could not make a test certificate"; finish
fi
chmod 0755 "$tmp"; chmod 0644 "$tmp/key.pem"
port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p=$(port); m=$(port)
tools/run-unprivileged.sh "$bin" --https-listen "127.0.0.1:$p" --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem" \
	--https-proxy-protocol --metrics-listen "127.0.0.1:$m" --workers 2 2>"$tmp/relay.log" &
relay_pid=$!
for _ in $(seq 100); do
	/usr/bin/python3 - "$m" >"$tmp/metrics.txt" 2>/dev/null <<'PY' && break
import sys, urllib.request
print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=2).read().decode())
PY
	sleep 0.1
done
if out=$(/usr/bin/python3 - "$dash" "$tmp/metrics.txt" 2>&1 <<'PY'
import json, re, sys
d = json.load(open(sys.argv[1]))
labels = {}  # series name -> label names seen
for line in open(sys.argv[2]):
    m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? ", line)
    if m:
        labels.setdefault(m.group(1), set()).update(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
assert labels, "empty /metrics"
problems, used = [], set()
for p in d["panels"]:
    for t in p["targets"]:
        names = set(re.findall(r"\bpyrycode_relay_[a-z0-9_]+", t["expr"]))
        used |= names
        for n in sorted(names - set(labels)):
            problems.append(f"panel {p['title']!r}: {n} is not in a relay's /metrics")
        have = set().union(*(labels.get(n, set()) for n in names)) | {"instance", "job"}
        for l in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
            if l not in have:
                problems.append(f"panel {p['title']!r}: legend label {l} is on none of {sorted(names)}")
if problems:
    print("\n".join(problems)); sys.exit(1)
print(f"{len(used)} metric names, all served")
PY
); then ok "every metric and legend label is in a real /metrics: $out"; else echo "$out"; bad "names"; fi
finish
