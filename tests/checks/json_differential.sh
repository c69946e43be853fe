#!/usr/bin/env bash
# Differential test of the JSON scanner and the routing envelope (src/envelope/)
# against Python's json module: validity verdicts, §3.4 classification, conn_id,
# close_code and the exact frame / push_wake byte spans. The generator, the model and
# the documented exceptions (where Python is laxer than RFC 8259) are in
# tests/diff/json_differential.py; the C driver is tests/diff/json_verdict.c.
# Last line: "json differential: N passed, N failed". Non-zero exit on any mismatch.
set -uo pipefail
cd "$(dirname "$0")/../.."

out=build/diff
mkdir -p "$out"
# ASan+UBSan when gcc has them, so an over-read on a generated input fails loudly too.
san="-fsanitize=address,undefined -fno-sanitize-recover=all"
echo 'int main(void){return 0;}' | gcc -x c $san -o "$out/.santest" - 2>/dev/null || san=""
rm -f "$out/.santest"
if ! gcc -std=gnu17 -D_GNU_SOURCE -Isrc -O1 -g $san \
	-Wall -Wextra -Werror -Wshadow -Wformat=2 -Wvla -Wmissing-prototypes -Wstrict-prototypes \
	tests/diff/json_verdict.c src/envelope/*.c src/core/common.c src/core/simd.c -o "$out/json_verdict"; then
	echo "json differential: 0 passed, 1 failed (driver did not build)"
	exit 1
fi
rm -rf "$out/failures"
ASAN_OPTIONS=detect_leaks=1 exec /usr/bin/python3 tests/diff/json_differential.py "$out/json_verdict"
