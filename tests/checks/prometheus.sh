#!/usr/bin/env bash
# deploy/prometheus/ as Prometheus reads it:
#   - `promtool check config` on prometheus.yml (which loads the rules file);
#   - `promtool check rules` on pyrycode-relay-rules.yml;
#   - `promtool test rules` on pyrycode-relay-rules.test.yml: input series and the
#     alerts they must (and must not) fire, at the minute they must fire;
#   - every alert of the rules file is fired by at least one of those tests, so a new
#     alert cannot ship untested.
# Needs promtool (Debian's prometheus package; tools/deps.sh test installs it).
# Last line: "prometheus: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/../../deploy/prometheus"
pass=0; fail=0
run() {
	local what=$1; shift
	if out=$("$@" 2>&1); then pass=$((pass + 1)); echo "ok: $what"
	else fail=$((fail + 1)); echo "FAILED: $what"; echo "$out"; fi
}
if ! command -v promtool >/dev/null; then
	echo "prometheus: promtool missing (apt-get install prometheus, or tools/deps.sh test)"
	echo "prometheus: 0 passed, 1 failed"
	exit 1
fi
run "promtool check config prometheus.yml" promtool check config prometheus.yml
run "promtool check rules" promtool check rules pyrycode-relay-rules.yml
run "promtool test rules" promtool test rules pyrycode-relay-rules.test.yml
run "every alert has a test that fires it" /usr/bin/python3 - <<'PY'
import sys
import yaml
rules = yaml.safe_load(open("pyrycode-relay-rules.yml"))
tests = yaml.safe_load(open("pyrycode-relay-rules.test.yml"))
alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
fired = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
quiet = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", []) if not t.get("exp_alerts")}
missing = sorted(alerts - fired)
never_quiet = sorted(alerts - quiet)
print(f"{len(alerts)} alerts, {len(fired & alerts)} fired by a test, {len(quiet & alerts)} checked silent")
if missing or never_quiet:
    print("no firing test:", missing, "no silent case:", never_quiet)
    sys.exit(1)
PY
echo "prometheus: $pass passed, $fail failed"
((fail == 0))
