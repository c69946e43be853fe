#!/usr/bin/env bash
# Run each cmocka unit-test binary given as an argument; print one summary line.
set -uo pipefail
pass=0; fail=0; failed=()
for t in "$@"; do
  if "$t"; then pass=$((pass + 1)); else fail=$((fail + 1)); failed+=("$t"); fi
done
echo "unit binaries: $pass passed, $fail failed"
if ((fail)); then printf 'FAILED: %s\n' "${failed[@]}" >&2; exit 1; fi
