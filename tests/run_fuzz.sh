#!/usr/bin/env bash
# Run every libFuzzer target for a bounded time over its checked-in corpus.
#   tests/run_fuzz.sh SECONDS BIN...
# Every checked-in input runs first (the regression part), then the fuzzer mutates for
# the rest of SECONDS. New inputs go to a scratch directory, never into the checked-in
# corpus; a crash fails the run and leaves the reproducer in build/fuzz/artifacts/.
# A crash found this way is kept: the reproducer goes into tests/fuzz/corpus/<target>/,
# the fix into src/, and a unit test for it into tests/unit/.
set -uo pipefail
secs=$1; shift
pass=0; fail=0
mkdir -p build/fuzz/artifacts
for bin in "$@"; do
  name=$(basename "$bin"); name=${name#fuzz_}
  corpus=tests/fuzz/corpus/$name
  scratch=$(mktemp -d)
  t0=$SECONDS
  mkdir -p "$corpus"
  if "$bin" -max_total_time="$secs" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 \
       -artifact_prefix=build/fuzz/artifacts/"$name"- "$scratch" "$corpus" \
       >build/fuzz/"$name".log 2>&1; then
    pass=$((pass + 1))
    echo "fuzz $name: ok ($(grep -o 'stat::number_of_executed_units: [0-9]*' build/fuzz/"$name".log | awk '{print $2}') runs, $((SECONDS - t0)) s)" || true
  else
    fail=$((fail + 1)); echo "fuzz $name: FAILED, see build/fuzz/$name.log" >&2
    tail -n 30 build/fuzz/"$name".log >&2
  fi
  rm -rf "$scratch"
done
echo "fuzz targets: $pass passed, $fail failed"
((fail == 0))
