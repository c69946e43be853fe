/*
 * fuzz_envelope.c - libFuzzer target for src/envelope/envelope.c.
 *
 * Invariants checked on every input:
 * - anything that is not valid JSON is MALFORMED; anything else agrees with json_valid;
 * - the frame / push_wake / conn_id spans lie inside the input; frame and push_wake
 *   are themselves valid JSON with no surrounding whitespace; each field is set only
 *   for the kinds that carry it (§3.4);
 * - ROUTED and DIRECTIVE have a non-empty conn_id; ROUTED has a frame and close_code
 *   0; DIRECTIVE has close_code != 0; PUSH_WAKE has no conn_id;
 * - an accepted push_wake has platform "fcm" and a non-empty token;
 * - the conn_id decodes to at most its raw length and compares equal to its decoding;
 * - the routed shape (envelope_routed_shape): when the input has it and its frame is one
 *   valid value at depth 1 (json_value_copy, which must then copy it byte for byte into
 *   a block of exactly its size), envelope_scan says ROUTED with that very conn_id and
 *   frame; a frame json_value_copy refuses is refused by json_skip_value at depth 1 too;
 * - writers round-trip: the wrap prefix + frame + suffix and the close notice, written
 *   for the decoded conn_id (and for raw input bytes as a conn_id), scan back to the
 *   expected kind, code and frame bytes, and envelope_conn_id_eq matches the conn_id
 *   exactly when it is valid UTF-8 (invalid bytes went out as \ufffd, as in Go).
 */
#include <stdlib.h>
#include <string.h>

#include "envelope/envelope.h"

#include "../oracles/one_pass.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) \
	do { \
		if (!(x)) \
			__builtin_trap(); \
	} while (0)

static bool inside(struct span whole, struct span part)
{
	return part.ptr >= whole.ptr && part.ptr + part.len <= whole.ptr + whole.len;
}

static bool is_ws(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool utf8_ok(const uint8_t *p, size_t n)
{
	/* a UTF-8 string is exactly what survives a JSON string round trip unchanged */
	size_t i = 0;

	while (i < n) {
		uint8_t c = p[i];
		size_t k;
		uint32_t cp;
		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xC2 && c <= 0xDF)
			k = 1, cp = c & 0x1F;
		else if (c >= 0xE0 && c <= 0xEF)
			k = 2, cp = c & 0x0F;
		else if (c >= 0xF0 && c <= 0xF4)
			k = 3, cp = c & 0x07;
		else
			return false;
		if (n - i <= k)
			return false;
		for (size_t m = 1; m <= k; m++) {
			if ((p[i + m] & 0xC0) != 0x80)
				return false;
			cp = cp << 6 | (p[i + m] & 0x3F);
		}
		if ((k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10FFFF ||
		    (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		i += k + 1;
	}
	return true;
}

static void check_value_span(struct span whole, struct span v)
{
	CHECK(v.ptr != NULL && v.len > 0);
	CHECK(inside(whole, v));
	CHECK(json_valid(v));
	CHECK(!is_ws(v.ptr[0]) && !is_ws(v.ptr[v.len - 1]));
}

/* Write both envelopes for conn_id `id` and scan them back. */
static void round_trip(struct span id, struct span frame)
{
	size_t cap = ENVELOPE_WRAP_PREFIX_LEN_MAX(id.len) + frame.len + ENVELOPE_WRAP_SUFFIX_LEN;
	uint8_t *buf = malloc(MAX(cap, ENVELOPE_CLOSE_NOTICE_LEN_MAX(id.len)));
	struct envelope env;
	bool utf8 = utf8_ok(id.ptr, id.len);

	if (!buf)
		return;
	size_t n = envelope_write_wrap_prefix(buf, cap, id);
	CHECK(n > 0 && n <= ENVELOPE_WRAP_PREFIX_LEN_MAX(id.len));
	CHECK(envelope_write_wrap_prefix(buf, n - 1, id) == 0);
	memcpy(buf + n, frame.ptr, frame.len);
	memcpy(buf + n + frame.len, ENVELOPE_WRAP_SUFFIX, ENVELOPE_WRAP_SUFFIX_LEN);
	struct span msg = span_make(buf, n + frame.len + ENVELOPE_WRAP_SUFFIX_LEN);
	CHECK(json_valid(msg));
	enum envelope_kind kind = envelope_scan(msg, &env);
	if (id.len == 0) {
		CHECK(kind == ENVELOPE_MISSING_CONN_ID);
	} else {
		CHECK(kind == ENVELOPE_ROUTED);
		CHECK(env.frame.len == frame.len && memcmp(env.frame.ptr, frame.ptr, frame.len) == 0);
		CHECK(env.frame.ptr == buf + n);
		CHECK(envelope_conn_id_eq(env.conn_id.raw, env.conn_id.has_escapes, id) == utf8);
	}

	uint16_t code = id.len ? (uint16_t)(id.ptr[0] | id.ptr[id.len - 1] << 8) : 1001;
	cap = ENVELOPE_CLOSE_NOTICE_LEN_MAX(id.len);
	n = envelope_write_close_notice(buf, cap, id, code);
	CHECK(n > 0 && n <= cap);
	CHECK(envelope_write_close_notice(buf, n - 1, id, code) == 0);
	kind = envelope_scan(span_make(buf, n), &env);
	if (id.len == 0)
		CHECK(kind == ENVELOPE_MISSING_CONN_ID);
	else if (code == 0)
		CHECK(kind == ENVELOPE_MISSING_FRAME);
	else
		CHECK(kind == ENVELOPE_DIRECTIVE && env.close_code == code && !env.has_frame);
	if (id.len)
		CHECK(envelope_conn_id_eq(env.conn_id.raw, env.conn_id.has_escapes, id) == utf8);
	free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct span in = span_make(data, size);
	struct envelope env;
	enum envelope_kind kind = envelope_scan(in, &env);
	bool valid = json_valid(in);

	CHECK(kind == env.kind);
	CHECK(valid || kind == ENVELOPE_MALFORMED);
	CHECK((env.err == NULL) == (kind == ENVELOPE_ROUTED || kind == ENVELOPE_DIRECTIVE ||
				    kind == ENVELOPE_PUSH_WAKE));

	switch (kind) {
	case ENVELOPE_MALFORMED:
		CHECK(env.conn_id.raw.len == 0 && !env.has_frame && env.push_wake.len == 0);
		break;
	case ENVELOPE_PUSH_WAKE:
		CHECK(env.conn_id.raw.len == 0 && !env.has_frame);
		check_value_span(in, env.push_wake);
		break;
	case ENVELOPE_MISSING_CONN_ID:
		CHECK(env.conn_id.raw.len == 0 && !env.has_frame && env.push_wake.len == 0);
		break;
	case ENVELOPE_MISSING_FRAME:
		CHECK(env.conn_id.raw.len > 0 && env.close_code == 0 && !env.has_frame);
		break;
	case ENVELOPE_DIRECTIVE:
		CHECK(env.conn_id.raw.len > 0 && env.close_code != 0 && env.push_wake.len == 0);
		break;
	case ENVELOPE_ROUTED:
		CHECK(env.conn_id.raw.len > 0 && env.close_code == 0 && env.has_frame);
		CHECK(env.push_wake.len == 0);
		break;
	default:
		CHECK(0);
	}
	if (env.has_frame) {
		check_value_span(in, env.frame);
		CHECK(env.frame.len != 4 || memcmp(env.frame.ptr, "null", 4) != 0);
	}
	CHECK(one_pass_route_holds(in, &env, NULL)); /* the relay's one-pass route holds to the scan */

	if (kind == ENVELOPE_PUSH_WAKE) {
		struct push_wake pw;
		const char *err = envelope_push_wake_parse(env.push_wake, &pw);
		if (!err) {
			CHECK(json_str_eq_cstr(pw.platform, "fcm"));
			CHECK(pw.token.raw.len > 0 && inside(env.push_wake, pw.token.raw));
		} else {
			CHECK(strlen(err) < 64);
		}
	}

	/* conn_id decodes in place and compares equal to its own decoding */
	uint8_t *dec = NULL;
	size_t dn = 0;
	if (env.conn_id.raw.len) {
		CHECK(inside(in, env.conn_id.raw));
		dec = malloc(env.conn_id.raw.len);
		if (!dec)
			return 0;
		dn = json_str_unescape(env.conn_id, dec, env.conn_id.raw.len);
		CHECK(dn != SIZE_MAX && dn > 0);
		CHECK(envelope_conn_id_eq(env.conn_id.raw, env.conn_id.has_escapes, span_make(dec, dn)));
		CHECK(!envelope_conn_id_eq(env.conn_id.raw, env.conn_id.has_escapes, span_make(dec, dn - 1)));
		CHECK(utf8_ok(dec, dn));
	}

	/* writers: for the decoded conn_id with the frame we found, and for raw bytes */
	static const uint8_t zero[] = "0";
	struct span frame = env.has_frame ? env.frame : span_make(zero, 1);
	if (dec)
		round_trip(span_make(dec, dn), frame);
	round_trip(span_make(data, MIN(size, 48)), frame);
	free(dec);
	return 0;
}
