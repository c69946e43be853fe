/*
 * one_pass.h - the oracles of issue #17's one-pass copies, shared by the unit tests
 * (test_json.c, test_envelope.c), the fuzz targets (fuzz_json.c, fuzz_envelope.c) and
 * the JSON differential driver (tests/diff/json_verdict.c); each reports a false its
 * own way. Include after envelope/envelope.h.
 */
#ifndef PYRY_TEST_ONE_PASS_H
#define PYRY_TEST_ONE_PASS_H

#include <stdlib.h>
#include <string.h>

#include "envelope/envelope.h"

/* Bytes after json_valid_copy's destination that it must never write. */
#define ONE_PASS_GUARD_BYTES 64u
#define ONE_PASS_POISON 0xA5u

static inline void *one_pass_alloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (p == NULL)
		abort();
	return p;
}

/* json_valid_copy gives json_valid's verdict `valid`, a byte-exact copy when valid, and
 * writes nothing past in.len (checked with guard bytes in every build, not only ASan). */
static inline bool one_pass_copy_holds(struct span in, bool valid)
{
	uint8_t *dst = one_pass_alloc(in.len + ONE_PASS_GUARD_BYTES);
	memset(dst, ONE_PASS_POISON, in.len + ONE_PASS_GUARD_BYTES);
	bool got = json_valid_copy(in, dst);
	bool holds = got == valid && (!got || memcmp(dst, in.ptr, in.len) == 0);
	for (size_t k = 0; k < ONE_PASS_GUARD_BYTES; k++)
		holds = holds && dst[in.len + k] == ONE_PASS_POISON;
	free(dst);
	return holds;
}

/*
 * The relay's one-pass route (route.c forward_in_place) against envelope_scan's *env
 * for the same message: when the message has the routed shape and json_value_copy
 * accepts its frame (*taken, if not NULL, says so), the copy is exact and the scan
 * says ROUTED with that very conn_id and frame; json_value_copy's verdict is always
 * json_skip_value's at depth 1 ending at the frame's end.
 */
static inline bool one_pass_route_holds(struct span in, const struct envelope *env, bool *taken)
{
	struct json_str id;
	struct span v;
	if (taken)
		*taken = false;
	if (!envelope_routed_shape(in, &id, &v))
		return true;
	if (id.raw.len == 0 || id.has_escapes || v.len == 0 || id.raw.ptr < in.ptr || v.ptr + v.len > in.ptr + in.len)
		return false;
	uint8_t *dst = one_pass_alloc(v.len);
	bool ok = json_value_copy(v, 1, dst);
	size_t pos = 0;
	bool holds = ok == (json_skip_value(v, &pos, 1, NULL) && pos == v.len);
	if (ok)
		holds = holds && memcmp(dst, v.ptr, v.len) == 0 && env->kind == ENVELOPE_ROUTED &&
			env->conn_id.raw.ptr == id.raw.ptr && env->conn_id.raw.len == id.raw.len &&
			!env->conn_id.has_escapes && env->frame.ptr == v.ptr && env->frame.len == v.len;
	free(dst);
	if (taken)
		*taken = ok;
	return holds;
}

#endif
