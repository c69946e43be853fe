/*
 * fuzz_handover.c - libFuzzer target for the hand-over's count parser
 * (engine/handover.h, handover_parse_count), over arbitrary bytes as the predecessor's
 * message. Checks, each able to fail on its own:
 *  1. An accepted message is in range (1..max) and is exactly the canonical text of
 *     its value ("FDS " and the decimal without leading zero): nothing else parses.
 *  2. A refused message leaves the output untouched.
 *  3. The verdict does not depend on bytes past the message (parsed again from a copy
 *     in an allocation of exactly its length, so ASan sees any read beyond).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/handover.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint32_t max = data[0] < 128 ? 240u : UINT32_MAX; /* the per-message bound, or none */
	data++;
	size--;
	uint8_t *copy = malloc(size ? size : 1);
	if (copy == NULL)
		return 0;
	if (size)
		memcpy(copy, data, size);
	uint32_t n = 12345, m = 12345;
	bool ok = handover_parse_count(span_make(copy, size), "FDS", max, &n);
	bool again = handover_parse_count(span_make(data, size), "FDS", max, &m);
	ASSERT(ok == again && n == m);
	if (ok) {
		ASSERT(n >= 1 && n <= max);
		char canon[32];
		int len = snprintf(canon, sizeof canon, "FDS %u", n);
		ASSERT(len > 0 && (size_t)len == size && memcmp(canon, copy, size) == 0);
	} else {
		ASSERT(n == 12345);
	}
	free(copy);
	return 0;
}
