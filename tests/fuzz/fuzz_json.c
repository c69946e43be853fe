/*
 * fuzz_json.c - libFuzzer target for src/envelope/json.c.
 *
 * Oracles:
 * - json_valid agrees with a second, independently written validator below (plain
 *   recursive descent, code points decoded arithmetically instead of by range tables),
 *   for inputs that nest less deeply than its recursion cap, and with itself at every
 *   level of instructions the CPU has (core/simd.h: AVX2, SSE2, words);
 * - json_valid_copy gives json_valid's verdict at every level and, when valid, a byte-
 *   for-byte copy, into a block of exactly the input's size (ASan: never past it);
 * - a valid document's top-level value skips to a span that is itself valid and is
 *   followed only by whitespace;
 * - every string at the top level of a valid object/array decodes to at most its raw
 *   length and compares equal to its own decoding;
 * - escaping any bytes (json_escape) gives exactly json_escaped_len bytes, at most
 *   JSON_ESCAPED_LEN_MAX, a valid JSON string once quoted, and decodes back to the
 *   input whenever the input was valid UTF-8 (and never otherwise).
 */
#include <stdlib.h>
#include <string.h>

#include "core/simd.h"
#include "envelope/json.h"

#include "../oracles/one_pass.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- reference validator ---- */

#define REF_DEPTH_CAP 2000

struct ref {
	const uint8_t *p;
	size_t n, i;
	int depth;
	bool too_deep;
};

static bool ref_value(struct ref *r);

static int ref_peek(const struct ref *r)
{
	return r->i < r->n ? r->p[r->i] : -1;
}

static void ref_ws(struct ref *r)
{
	for (;;) {
		int c = ref_peek(r);
		if (c != 0x20 && c != 0x09 && c != 0x0A && c != 0x0D)
			return;
		r->i++;
	}
}

static bool ref_lit(struct ref *r, const char *w)
{
	size_t k = strlen(w);

	if (r->n - r->i < k || memcmp(r->p + r->i, w, k) != 0)
		return false;
	r->i += k;
	return true;
}

/* Decode one UTF-8 code point arithmetically and check it is the shortest form. */
static bool ref_utf8(struct ref *r)
{
	uint8_t c = r->p[r->i];
	int extra;
	uint32_t cp, min;

	if ((c & 0xE0) == 0xC0) {
		extra = 1, cp = c & 0x1F, min = 0x80;
	} else if ((c & 0xF0) == 0xE0) {
		extra = 2, cp = c & 0x0F, min = 0x800;
	} else if ((c & 0xF8) == 0xF0) {
		extra = 3, cp = c & 0x07, min = 0x10000;
	} else {
		return false;
	}
	if (r->n - r->i <= (size_t)extra)
		return false;
	for (int k = 1; k <= extra; k++) {
		uint8_t d = r->p[r->i + (size_t)k];
		if ((d & 0xC0) != 0x80)
			return false;
		cp = (cp << 6) | (d & 0x3F);
	}
	if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
		return false;
	r->i += (size_t)extra + 1;
	return true;
}

static bool ref_string(struct ref *r)
{
	if (ref_peek(r) != '"')
		return false;
	r->i++;
	for (;;) {
		int c = ref_peek(r);
		if (c < 0)
			return false;
		if (c == '"') {
			r->i++;
			return true;
		}
		if (c == '\\') {
			r->i++;
			c = ref_peek(r);
			if (c < 0 || !strchr("\"\\/bfnrtu", c) || c == 0)
				return false;
			r->i++;
			if (c == 'u') {
				for (int k = 0; k < 4; k++) {
					c = ref_peek(r);
					if (c < 0 || !strchr("0123456789abcdefABCDEF", c) || c == 0)
						return false;
					r->i++;
				}
			}
		} else if (c < 0x20) {
			return false;
		} else if (c < 0x80) {
			r->i++;
		} else if (!ref_utf8(r)) {
			return false;
		}
	}
}

static size_t ref_digits(struct ref *r)
{
	size_t k = 0;

	while (ref_peek(r) >= '0' && ref_peek(r) <= '9')
		r->i++, k++;
	return k;
}

static bool ref_number(struct ref *r)
{
	if (ref_peek(r) == '-')
		r->i++;
	if (ref_peek(r) == '0')
		r->i++;
	else if (ref_digits(r) == 0)
		return false;
	if (ref_peek(r) == '.') {
		r->i++;
		if (ref_digits(r) == 0)
			return false;
	}
	if (ref_peek(r) == 'e' || ref_peek(r) == 'E') {
		r->i++;
		if (ref_peek(r) == '+' || ref_peek(r) == '-')
			r->i++;
		if (ref_digits(r) == 0)
			return false;
	}
	return true;
}

static bool ref_container(struct ref *r, bool object)
{
	if (++r->depth > REF_DEPTH_CAP) {
		r->too_deep = true;
		return false;
	}
	r->i++;
	ref_ws(r);
	if (ref_peek(r) == (object ? '}' : ']')) {
		r->i++;
		r->depth--;
		return true;
	}
	for (;;) {
		if (object) {
			if (!ref_string(r))
				return false;
			ref_ws(r);
			if (ref_peek(r) != ':')
				return false;
			r->i++;
			ref_ws(r);
		}
		if (!ref_value(r))
			return false;
		ref_ws(r);
		int c = ref_peek(r);
		r->i++;
		if (c == ',') {
			ref_ws(r);
			continue;
		}
		if (c == (object ? '}' : ']')) {
			r->depth--;
			return true;
		}
		return false;
	}
}

static bool ref_value(struct ref *r)
{
	switch (ref_peek(r)) {
	case '{':
		return ref_container(r, true);
	case '[':
		return ref_container(r, false);
	case '"':
		return ref_string(r);
	case 't':
		return ref_lit(r, "true");
	case 'f':
		return ref_lit(r, "false");
	case 'n':
		return ref_lit(r, "null");
	default:
		return ref_number(r);
	}
}

/* 1 valid, 0 invalid, -1 too deep to judge */
static int ref_valid(const uint8_t *p, size_t n)
{
	struct ref r = { .p = p, .n = n };

	ref_ws(&r);
	bool ok = ref_value(&r);
	if (r.too_deep)
		return -1;
	ref_ws(&r);
	return ok && r.i == n;
}

static bool ref_utf8_valid(const uint8_t *p, size_t n)
{
	struct ref r = { .p = p, .n = n };

	while (r.i < n) {
		if (p[r.i] < 0x80)
			r.i++;
		else if (!ref_utf8(&r))
			return false;
	}
	return true;
}

/* ---- checks ---- */

static void check_strings_of(struct span in, struct span value)
{
	size_t i = 1;

	/* walk the first level of an object or array and check each string found there */
	if (value.len < 2 || (value.ptr[0] != '{' && value.ptr[0] != '['))
		return;
	while (i < value.len) {
		i = json_skip_ws(value, i);
		if (i >= value.len || value.ptr[i] == ']' || value.ptr[i] == '}')
			return;
		if (value.ptr[i] == ',' || value.ptr[i] == ':') {
			i++;
			continue;
		}
		size_t start = i;
		struct span raw;
		if (!json_skip_value(value, &i, 1, &raw))
			__builtin_trap(); /* it was part of a valid document */
		if (raw.ptr[0] != '"')
			continue;
		struct json_str s;
		size_t k = start;
		if (!json_scan_string(value, &k, &s) || k != i)
			__builtin_trap();
		uint8_t *dec = malloc(s.raw.len + 1);
		if (!dec)
			return;
		size_t n = json_str_unescape(s, dec, s.raw.len);
		if (n == SIZE_MAX || n > s.raw.len)
			__builtin_trap();
		if (!json_str_eq(s, span_make(dec, n)))
			__builtin_trap();
		if (s.has_escapes != (memchr(s.raw.ptr, '\\', s.raw.len) != NULL))
			__builtin_trap();
		/* decoded strings are always valid UTF-8 (lone surrogates became U+FFFD) */
		if (!ref_utf8_valid(dec, n))
			__builtin_trap();
		free(dec);
	}
	(void)in;
}

static void check_escape(const uint8_t *data, size_t size)
{
	struct span in = span_make(data, size);
	size_t want = json_escaped_len(in);

	if (want > JSON_ESCAPED_LEN_MAX(size))
		__builtin_trap();
	uint8_t *q = malloc(want + 2);
	if (!q)
		return;
	q[0] = '"';
	if (json_escape(q + 1, want, in) != want)
		__builtin_trap();
	if (want > 0 && json_escape(q + 1, want - 1, in) != SIZE_MAX)
		__builtin_trap();
	q[want + 1] = '"';
	struct span quoted = span_make(q, want + 2);
	if (!json_valid(quoted))
		__builtin_trap();
	/* no raw control bytes, <, >, & or U+2028/9 survive escaping */
	for (size_t k = 1; k <= want; k++) {
		if (q[k] < 0x20 || q[k] == '<' || q[k] == '>' || q[k] == '&')
			__builtin_trap();
		if (k + 2 <= want && q[k] == 0xE2 && q[k + 1] == 0x80 && (q[k + 2] == 0xA8 || q[k + 2] == 0xA9))
			__builtin_trap();
	}
	size_t pos = 0;
	struct json_str s;
	if (!json_scan_string(quoted, &pos, &s) || pos != quoted.len)
		__builtin_trap();
	if (json_str_eq(s, in) != ref_utf8_valid(data, size))
		__builtin_trap();
	free(q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct span in = span_make(data, size);
	bool ok = json_valid(in);
	int ref = ref_valid(data, size);

	if (ref >= 0 && ok != (ref == 1))
		__builtin_trap();
	/* every narrower level of instructions this CPU has gives the same answer */
	enum simd_level most = simd_detect();
	for (enum simd_level l = SIMD_WORD; l < most; l++) {
		simd_select(l);
		bool at_l = json_valid(in);
		if (!one_pass_copy_holds(in, ok))
			__builtin_trap();
		simd_select(most);
		if (at_l != ok)
			__builtin_trap();
	}
	if (!one_pass_copy_holds(in, ok))
		__builtin_trap();
	if (ok) {
		size_t pos = json_skip_ws(in, 0);
		struct span raw;
		if (!json_skip_value(in, &pos, 0, &raw))
			__builtin_trap();
		if (json_skip_ws(in, pos) != size || !json_valid(raw))
			__builtin_trap();
		if (raw.ptr < data || raw.ptr + raw.len > data + size || raw.len == 0)
			__builtin_trap();
		(void)json_type_of(raw);
		check_strings_of(in, raw);
	}
	check_escape(data, size);
	return 0;
}
