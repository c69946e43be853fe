/*
 * fuzz_session_record.c - the hand-over record of one live session
 * (engine/session_record.h) over arbitrary bytes. Checks, each able to fail on its own:
 *  1. A record is parsed the same from an allocation of exactly its bytes (ASan sees
 *     any read past the span) as from the input.
 *  2. An accepted record is exactly `used` bytes, within SESSION_RECORD_BYTES_MAX, its
 *     spans inside the input, and written back it gives the same bytes (the format has
 *     one spelling per record).
 *  3. Every proper prefix of an accepted record is NEED_MORE (nothing is decided, and
 *     nothing refused, before the whole record is in).
 */
#include <stdlib.h>
#include <string.h>

#include "engine/session_record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t out[SESSION_RECORD_BYTES_MAX];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *copy = malloc(size ? size : 1);
	if (copy == NULL)
		return 0;
	if (size)
		memcpy(copy, data, size);
	struct session_record r, again;
	size_t used = 0, used2 = 0;
	enum session_record_err e = session_record_parse(span_make(copy, size), &r, &used);
	enum session_record_err e2 = session_record_parse(span_make(data, size), &again, &used2);
	ASSERT(e == e2 && used == used2);
	if (e == SESSION_RECORD_OK) {
		ASSERT(used >= SESSION_RECORD_FIXED_BYTES && used <= size && used <= SESSION_RECORD_BYTES_MAX);
		const struct span parts[] = { r.server_id, r.version, r.device, r.early };
		for (size_t i = 0; i < ARRAY_LEN(parts); i++)
			ASSERT(parts[i].ptr >= copy && parts[i].ptr + parts[i].len <= copy + used);
		ASSERT(session_record_size(&r) == used);
		ASSERT(session_record_write(&r, out, sizeof out) == used && memcmp(out, copy, used) == 0);
		for (size_t k = 0; k < used; k++) {
			struct session_record p;
			size_t u = 0;
			ASSERT(session_record_parse(span_make(copy, k), &p, &u) == SESSION_RECORD_NEED_MORE);
		}
	}
	free(copy);
	return 0;
}
