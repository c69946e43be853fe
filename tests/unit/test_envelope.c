/*
 * test_envelope.c - the binary -> relay envelope classification (reference §3.4), the
 * frame span, conn_id comparison, push_wake parsing and the relay -> binary writers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "envelope/envelope.h"
#include "../oracles/one_pass.h"

#define S(lit) span_make((lit), sizeof(lit) - 1)

/*
 * Scan a copy of the message in an exact-size heap block (ASan sees any over-read)
 * and check the kind. Spans in *env are rebased onto the literal so callers can
 * compare offsets; the copy is freed before returning.
 */
/* The relay's one-pass route holds to the scan (one_pass.h); true when it would take
 * the message. */
static bool shape_agrees(struct span msg, const struct envelope *env)
{
	bool taken;
	if (!one_pass_route_holds(msg, env, &taken)) {
		print_error("%.*s: the one-pass route disagrees with envelope_scan (%s)\n", (int)msg.len,
			    (const char *)msg.ptr, envelope_kind_name(env->kind));
		fail();
	}
	return taken;
}

static enum envelope_kind scan_as(const char *msg, size_t n, struct envelope *env)
{
	uint8_t *b = malloc(n ? n : 1);

	assert_non_null(b);
	memcpy(b, msg, n);
	enum envelope_kind k = envelope_scan(span_make(b, n), env);
	assert_int_equal(k, env->kind);
	shape_agrees(span_make(b, n), env);
#define REBASE(sp) \
	do { \
		if ((sp).ptr) { \
			assert_true((sp).ptr >= b && (sp).ptr + (sp).len <= b + n); \
			(sp).ptr = (const uint8_t *)msg + ((sp).ptr - b); \
		} \
	} while (0)
	REBASE(env->conn_id.raw);
	REBASE(env->frame);
	REBASE(env->push_wake);
#undef REBASE
	free(b);
	return k;
}

static void expect_kind(const char *msg, size_t n, enum envelope_kind want, struct envelope *env)
{
	enum envelope_kind got = scan_as(msg, n, env);

	if (got != want) {
		print_error("%.*s: got %s, want %s\n", (int)n, msg, envelope_kind_name(got),
			    envelope_kind_name(want));
		fail();
	}
	if (want == ENVELOPE_MALFORMED || want == ENVELOPE_MISSING_CONN_ID || want == ENVELOPE_MISSING_FRAME)
		assert_non_null(env->err);
	else
		assert_null(env->err);
}

#define KIND(lit, k) \
	do { \
		struct envelope env_; \
		expect_kind((lit), sizeof(lit) - 1, (k), &env_); \
	} while (0)

#define SCAN(lit, k, envp) expect_kind((lit), sizeof(lit) - 1, (k), (envp))

static void assert_span_str(struct span sp, const char *want)
{
	if (sp.len != strlen(want) || (sp.len && memcmp(sp.ptr, want, sp.len) != 0)) {
		print_error("span \"%.*s\" != \"%s\"\n", (int)sp.len, sp.ptr ? (const char *)sp.ptr : "",
			    want);
		fail();
	}
}

/* ---- §3.4, one row at a time ---- */

static void test_table_malformed(void **state)
{
	struct envelope env;

	(void)state;
	/* not valid JSON */
	SCAN("", ENVELOPE_MALFORMED, &env);
	assert_string_equal(env.err, "envelope is not valid JSON");
	KIND("   ", ENVELOPE_MALFORMED);
	KIND("{", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"frame\":1", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"frame\":}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"frame\":1,}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\" \"frame\":1}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\" \"a\",\"frame\":1}", ENVELOPE_MALFORMED);
	KIND("{conn_id:\"a\",\"frame\":1}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"frame\":1}}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"frame\":1}x", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"frame\":1}{}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"frame\":NaN}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":'a',\"frame\":1}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"frame\":\"\xff\"}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"\xc0\xaf\",\"frame\":1}", ENVELOPE_MALFORMED);
	KIND("{\"\xed\xa0\x80\":1,\"conn_id\":\"a\",\"frame\":1}", ENVELOPE_MALFORMED);
	KIND("\xef\xbb\xbf{\"conn_id\":\"a\",\"frame\":1}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"frame\":1}\0", ENVELOPE_MALFORMED);
	/* valid JSON, not an object */
	SCAN("[]", ENVELOPE_MALFORMED, &env);
	assert_string_equal(env.err, "envelope is not a JSON object");
	KIND("[{\"conn_id\":\"a\",\"frame\":1}]", ENVELOPE_MALFORMED);
	KIND("\"{\\\"conn_id\\\":\\\"a\\\",\\\"frame\\\":1}\"", ENVELOPE_MALFORMED);
	KIND("1", ENVELOPE_MALFORMED);
	KIND("true", ENVELOPE_MALFORMED);
	/* Go would call this "missing conn_id"; both are dropped with a warning */
	KIND("null", ENVELOPE_MALFORMED);
	KIND(" null ", ENVELOPE_MALFORMED);
	/* nothing is kept from a malformed envelope */
	SCAN("{\"conn_id\":\"a\",\"close_code\":5,\"frame\":1,\"x\":[}", ENVELOPE_MALFORMED, &env);
	assert_int_equal(env.conn_id.raw.len, 0);
	assert_int_equal(env.close_code, 0);
	assert_false(env.has_frame);
}

static void test_wrong_types(void **state)
{
	struct envelope env;

	(void)state;
	/* conn_id must be a string (or null) */
	SCAN("{\"conn_id\":1,\"frame\":1}", ENVELOPE_MALFORMED, &env);
	assert_string_equal(env.err, "conn_id is not a string");
	KIND("{\"conn_id\":0,\"frame\":1}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":true,\"frame\":1}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":false,\"frame\":1}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":[\"a\"],\"frame\":1}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":{\"a\":1},\"frame\":1}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":[],\"push_wake\":{}}", ENVELOPE_MALFORMED);
	/* close_code must be an integer 0..65535 (or null) */
	SCAN("{\"conn_id\":\"a\",\"close_code\":-1,\"frame\":1}", ENVELOPE_MALFORMED, &env);
	assert_string_equal(env.err, "close_code is not an integer in 0..65535");
	KIND("{\"conn_id\":\"a\",\"close_code\":-0,\"frame\":1}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"close_code\":-4000}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"close_code\":1000.0}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"close_code\":0.0,\"frame\":1}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"close_code\":1.5}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"close_code\":1e3}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"close_code\":1E3}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"close_code\":0e0,\"frame\":1}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"close_code\":65536}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"close_code\":100000}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"close_code\":4294967296}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"close_code\":18446744073709551617}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"close_code\":99999999999999999999999999999999999}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"close_code\":\"1000\"}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"close_code\":true}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"close_code\":[1000]}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"a\",\"close_code\":{}}", ENVELOPE_MALFORMED);
	/* a wrong type is fatal even where the field would not matter */
	KIND("{\"close_code\":\"x\",\"push_wake\":{}}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":5,\"conn_id\":\"a\",\"frame\":1}", ENVELOPE_MALFORMED);
	/* frame and push_wake may be any JSON value; unknown keys too */
	KIND("{\"conn_id\":\"a\",\"frame\":\"s\"}", ENVELOPE_ROUTED);
	KIND("{\"conn_id\":\"a\",\"frame\":false}", ENVELOPE_ROUTED);
	KIND("{\"conn_id\":\"a\",\"frame\":0}", ENVELOPE_ROUTED);
	KIND("{\"conn_id\":\"a\",\"frame\":[]}", ENVELOPE_ROUTED);
	KIND("{\"push_wake\":7}", ENVELOPE_PUSH_WAKE);
	KIND("{\"conn_id\":\"a\",\"frame\":1,\"token\":5,\"x\":[{}]}", ENVELOPE_ROUTED);
	/* a syntax error wins over an earlier type error, as Go validates first */
	SCAN("{\"conn_id\":1,\"frame\":[}", ENVELOPE_MALFORMED, &env);
	assert_string_equal(env.err, "envelope is not valid JSON");
}

static void test_close_code_values(void **state)
{
	struct envelope env;

	(void)state;
	SCAN("{\"conn_id\":\"a\",\"close_code\":65535}", ENVELOPE_DIRECTIVE, &env);
	assert_int_equal(env.close_code, 65535);
	SCAN("{\"conn_id\":\"a\",\"close_code\":1}", ENVELOPE_DIRECTIVE, &env);
	assert_int_equal(env.close_code, 1);
	SCAN("{\"conn_id\":\"a\",\"close_code\":4000}", ENVELOPE_DIRECTIVE, &env);
	assert_int_equal(env.close_code, 4000);
	/* 0 and null mean "no close": a routed frame or a missing frame */
	SCAN("{\"conn_id\":\"a\",\"close_code\":0,\"frame\":1}", ENVELOPE_ROUTED, &env);
	assert_int_equal(env.close_code, 0);
	KIND("{\"conn_id\":\"a\",\"close_code\":0}", ENVELOPE_MISSING_FRAME);
	SCAN("{\"conn_id\":\"a\",\"close_code\":null,\"frame\":1}", ENVELOPE_ROUTED, &env);
	assert_int_equal(env.close_code, 0);
	KIND("{\"conn_id\":\"a\",\"close_code\":null}", ENVELOPE_MISSING_FRAME);
	/* codes that are illegal on the wire pass through: the caller validates (§3.4) */
	SCAN("{\"conn_id\":\"a\",\"close_code\":1005}", ENVELOPE_DIRECTIVE, &env);
	assert_int_equal(env.close_code, 1005);
	SCAN("{\"conn_id\":\"a\",\"close_code\":999}", ENVELOPE_DIRECTIVE, &env);
	assert_int_equal(env.close_code, 999);
}

static void test_table_push_wake(void **state)
{
	struct envelope env;

	(void)state;
	/* conn_id absent / "" / null, push_wake present and not null */
	SCAN("{\"push_wake\":{\"platform\":\"fcm\",\"token\":\"t\"}}", ENVELOPE_PUSH_WAKE, &env);
	assert_span_str(env.push_wake, "{\"platform\":\"fcm\",\"token\":\"t\"}");
	assert_int_equal(env.conn_id.raw.len, 0);
	assert_false(env.has_frame);
	SCAN("{\"conn_id\":\"\",\"push_wake\":{\"platform\":\"fcm\"}}", ENVELOPE_PUSH_WAKE, &env);
	assert_span_str(env.push_wake, "{\"platform\":\"fcm\"}");
	SCAN("{\"conn_id\":null,\"push_wake\":[1, 2]}", ENVELOPE_PUSH_WAKE, &env);
	assert_span_str(env.push_wake, "[1, 2]");
	/* "whatever else the envelope carries" */
	SCAN("{\"frame\":{\"a\":1},\"close_code\":4000,\"push_wake\":\"x\"}", ENVELOPE_PUSH_WAKE, &env);
	assert_span_str(env.push_wake, "\"x\"");
	assert_false(env.has_frame);
	assert_int_equal(env.frame.len, 0);
	KIND("{\"push_wake\":false}", ENVELOPE_PUSH_WAKE);
	KIND("{\"push_wake\":{}}", ENVELOPE_PUSH_WAKE);
	/* a conn_id makes it a routed frame; push_wake is ignored */
	SCAN("{\"conn_id\":\"a\",\"push_wake\":{\"platform\":\"fcm\",\"token\":\"t\"},\"frame\":1}",
	     ENVELOPE_ROUTED, &env);
	assert_int_equal(env.push_wake.len, 0);
	KIND("{\"conn_id\":\"a\",\"push_wake\":{\"platform\":\"fcm\",\"token\":\"t\"}}",
	     ENVELOPE_MISSING_FRAME);
	KIND("{\"conn_id\":\"a\",\"close_code\":4000,\"push_wake\":{}}", ENVELOPE_DIRECTIVE);
}

static void test_table_missing_conn_id(void **state)
{
	struct envelope env;

	(void)state;
	SCAN("{}", ENVELOPE_MISSING_CONN_ID, &env);
	assert_string_equal(env.err, "missing conn_id");
	KIND("{\"frame\":1}", ENVELOPE_MISSING_CONN_ID);
	KIND("{\"conn_id\":\"\",\"frame\":1}", ENVELOPE_MISSING_CONN_ID);
	KIND("{\"conn_id\":null,\"frame\":1}", ENVELOPE_MISSING_CONN_ID);
	KIND("{\"conn_id\":\"\",\"close_code\":4000,\"frame\":1}", ENVELOPE_MISSING_CONN_ID);
	KIND("{\"push_wake\":null}", ENVELOPE_MISSING_CONN_ID);
	KIND("{\"conn_id\":\"\",\"push_wake\":null,\"frame\":1}", ENVELOPE_MISSING_CONN_ID);
	KIND("{\"token\":\"legacy\",\"frame\":1}", ENVELOPE_MISSING_CONN_ID);
}

static void test_table_missing_frame(void **state)
{
	struct envelope env;

	(void)state;
	SCAN("{\"conn_id\":\"a\"}", ENVELOPE_MISSING_FRAME, &env);
	assert_string_equal(env.err, "missing frame");
	assert_span_str(env.conn_id.raw, "a");
	KIND("{\"conn_id\":\"a\",\"frame\":null}", ENVELOPE_MISSING_FRAME);
	KIND("{\"conn_id\":\"a\",\"close_code\":0,\"frame\":null}", ENVELOPE_MISSING_FRAME);
	KIND("{\"conn_id\":\"a\",\"close_code\":0}", ENVELOPE_MISSING_FRAME);
	/* a "frame" key nested inside another value is not the envelope's frame */
	KIND("{\"conn_id\":\"a\",\"x\":{\"frame\":1}}", ENVELOPE_MISSING_FRAME);
	KIND("{\"conn_id\":\"a\",\"x\":\"\\\"frame\\\":1\"}", ENVELOPE_MISSING_FRAME);
	KIND("{\"conn_id\":\"a\",\"x\":[\"frame\",1]}", ENVELOPE_MISSING_FRAME);
}

static void test_table_directive(void **state)
{
	struct envelope env;

	(void)state;
	SCAN("{\"conn_id\":\"c1\",\"close_code\":4001}", ENVELOPE_DIRECTIVE, &env);
	assert_span_str(env.conn_id.raw, "c1");
	assert_int_equal(env.close_code, 4001);
	assert_false(env.has_frame);
	SCAN("{\"conn_id\":\"c1\",\"close_code\":4001,\"frame\":null}", ENVELOPE_DIRECTIVE, &env);
	assert_false(env.has_frame);
	SCAN("{\"conn_id\":\"c1\",\"close_code\":1000,\"frame\":{\"bye\":true}}", ENVELOPE_DIRECTIVE, &env);
	assert_true(env.has_frame);
	assert_span_str(env.frame, "{\"bye\":true}");
	assert_int_equal(env.close_code, 1000);
	/* key order does not matter */
	SCAN("{\"frame\":[1],\"close_code\":1000,\"conn_id\":\"c1\"}", ENVELOPE_DIRECTIVE, &env);
	assert_span_str(env.frame, "[1]");
	assert_span_str(env.conn_id.raw, "c1");
}

static void test_table_routed(void **state)
{
	struct envelope env;

	(void)state;
	SCAN("{\"conn_id\":\"client-srv-0123abcd\",\"frame\":{\"type\":\"msg\",\"n\":1}}", ENVELOPE_ROUTED,
	     &env);
	assert_span_str(env.conn_id.raw, "client-srv-0123abcd");
	assert_false(env.conn_id.has_escapes);
	assert_true(env.has_frame);
	assert_span_str(env.frame, "{\"type\":\"msg\",\"n\":1}");
	assert_int_equal(env.close_code, 0);
	assert_true(envelope_conn_id_eq(env.conn_id.raw, env.conn_id.has_escapes, S("client-srv-0123abcd")));
	/* any conn_id content is fine (format is not validated) */
	KIND("{\"conn_id\":\" \",\"frame\":1}", ENVELOPE_ROUTED);
	KIND("{\"conn_id\":\"\\u0000\",\"frame\":1}", ENVELOPE_ROUTED);
	/* the legacy token field is ignored */
	KIND("{\"conn_id\":\"a\",\"token\":\"legacy\",\"frame\":\"x\"}", ENVELOPE_ROUTED);
}

static void test_whitespace_everywhere(void **state)
{
	struct envelope env;

	(void)state;
	SCAN(" \t\r\n{ \t\r\n\"conn_id\" \t\r\n: \t\r\n\"c\" \t\r\n, \t\r\n\"frame\" \t\r\n: \t\r\n"
	     "[ 1 , { \"a\" : 2 } ] \t\r\n, \t\r\n\"close_code\" \t\r\n: \t\r\n0 \t\r\n} \t\r\n",
	     ENVELOPE_ROUTED, &env);
	/* the span is the value itself, inner whitespace kept, outer whitespace not */
	assert_span_str(env.frame, "[ 1 , { \"a\" : 2 } ]");
	assert_span_str(env.conn_id.raw, "c");
	SCAN("{\"conn_id\":\"c\",\"frame\":7 }", ENVELOPE_ROUTED, &env);
	assert_span_str(env.frame, "7");
	SCAN("{\"conn_id\":\"c\",\"frame\":-7.5e+3}", ENVELOPE_ROUTED, &env);
	assert_span_str(env.frame, "-7.5e+3");
	SCAN("{\"conn_id\":\"c\",\"frame\":true\n}", ENVELOPE_ROUTED, &env);
	assert_span_str(env.frame, "true");
	/* not RFC 8259 whitespace */
	KIND("{\"conn_id\":\"c\",\f\"frame\":1}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"c\",\"frame\":1}\xc2\xa0", ENVELOPE_MALFORMED);
	KIND("\v{\"conn_id\":\"c\",\"frame\":1}", ENVELOPE_MALFORMED);
}

static void test_frame_span_tricky(void **state)
{
	struct envelope env;
	static const char msg[] =
		"{\"conn_id\":\"c\",\"x\":\"}\\\"frame\\\":{\\\"a\\\"\",\"frame\":{\"s\":\"}\\\"frame\\\":1}\","
		"\"frame\":[\"]\",\"\\\\\",{\"}\":\"{\"}],\"conn_id\":\"not me\"},\"y\":\"\\\"}\"}";

	(void)state;
	SCAN(msg, ENVELOPE_ROUTED, &env);
	assert_span_str(env.frame, "{\"s\":\"}\\\"frame\\\":1}\",\"frame\":[\"]\",\"\\\\\",{\"}\":\"{\"}],"
				   "\"conn_id\":\"not me\"}");
	assert_span_str(env.conn_id.raw, "c");
	assert_true(json_valid(env.frame));

	/* frame is a string full of envelope look-alikes */
	SCAN("{\"frame\":\"{\\\"conn_id\\\":\\\"evil\\\",\\\"frame\\\":1}\",\"conn_id\":\"good\"}",
	     ENVELOPE_ROUTED, &env);
	assert_span_str(env.frame, "\"{\\\"conn_id\\\":\\\"evil\\\",\\\"frame\\\":1}\"");
	assert_span_str(env.conn_id.raw, "good");

	/* deep frame: the envelope is one level, so the frame may use JSON_DEPTH_MAX - 1 */
	for (int extra = 0; extra <= 1; extra++) {
		size_t levels = JSON_DEPTH_MAX - 1 + (size_t)extra;
		size_t cap = levels * 2 + 64, n = 0;
		char *b = malloc(cap);
		assert_non_null(b);
		n += (size_t)sprintf(b, "{\"conn_id\":\"c\",\"frame\":");
		memset(b + n, '[', levels);
		n += levels;
		memset(b + n, ']', levels);
		n += levels;
		b[n++] = '}';
		expect_kind(b, n, extra ? ENVELOPE_MALFORMED : ENVELOPE_ROUTED, &env);
		if (!extra)
			assert_int_equal(env.frame.len, levels * 2);
		/* same depth in an unknown key counts too */
		memcpy(b + 15, "\"x\"    ", 7);
		expect_kind(b, n, extra ? ENVELOPE_MALFORMED : ENVELOPE_MISSING_FRAME, &env);
		free(b);
	}

	/* big numbers in the frame are opaque bytes */
	SCAN("{\"conn_id\":\"c\",\"frame\":123456789012345678901234567890e-99999}", ENVELOPE_ROUTED, &env);
	assert_span_str(env.frame, "123456789012345678901234567890e-99999");
}

static void test_conn_id_escapes(void **state)
{
	struct envelope env;

	(void)state;
	SCAN("{\"conn_id\":\"client-\\u0041\\n\\\"x\\\\\",\"frame\":1}", ENVELOPE_ROUTED, &env);
	assert_true(env.conn_id.has_escapes);
	assert_span_str(env.conn_id.raw, "client-\\u0041\\n\\\"x\\\\");
	assert_true(envelope_conn_id_eq(env.conn_id.raw, true, S("client-A\n\"x\\")));
	assert_false(envelope_conn_id_eq(env.conn_id.raw, true, S("client-A\n\"x")));
	assert_false(envelope_conn_id_eq(env.conn_id.raw, true, S("client-A\n\"x\\\\")));
	assert_false(envelope_conn_id_eq(env.conn_id.raw, true, S("client-\\u0041\\n\\\"x\\\\")));

	uint8_t dec[64];
	size_t n = json_str_unescape(env.conn_id, dec, sizeof(dec));
	assert_int_equal(n, 12);
	assert_memory_equal(dec, "client-A\n\"x\\", 12);

	/* Go's encoder output for <, >, & and U+2028 comes back equal */
	SCAN("{\"conn_id\":\"a\\u003cb\\u003e\\u0026\\u2028\\ufffd\",\"frame\":1}", ENVELOPE_ROUTED, &env);
	assert_true(envelope_conn_id_eq(env.conn_id.raw, true, S("a<b>&\xe2\x80\xa8\xef\xbf\xbd")));
	/* a lone surrogate escape decodes to U+FFFD, as in Go */
	SCAN("{\"conn_id\":\"x\\udead\",\"frame\":1}", ENVELOPE_ROUTED, &env);
	assert_true(envelope_conn_id_eq(env.conn_id.raw, true, S("x\xef\xbf\xbd")));
	SCAN("{\"conn_id\":\"\\ud83d\\ude00\",\"frame\":1}", ENVELOPE_ROUTED, &env);
	assert_true(envelope_conn_id_eq(env.conn_id.raw, true, S("\xf0\x9f\x98\x80")));
	/* raw UTF-8 */
	SCAN("{\"conn_id\":\"\xc3\xa4\",\"frame\":1}", ENVELOPE_ROUTED, &env);
	assert_false(env.conn_id.has_escapes);
	assert_true(envelope_conn_id_eq(env.conn_id.raw, false, S("\xc3\xa4")));
	assert_true(envelope_conn_id_eq(env.conn_id.raw, false, S("\xc3\xa4")));
	assert_false(envelope_conn_id_eq(env.conn_id.raw, false, S("\xc3")));
	/* an escaped empty string does not exist; "" is empty */
	assert_true(envelope_conn_id_eq(span_make(NULL, 0), false, span_make(NULL, 0)));
	assert_false(envelope_conn_id_eq(span_make(NULL, 0), false, S("a")));
}

static void test_keys(void **state)
{
	struct envelope env;

	(void)state;
	/* escaped keys are compared decoded */
	SCAN("{\"conn\\u005fid\":\"c\",\"\\u0066rame\":1}", ENVELOPE_ROUTED, &env);
	assert_span_str(env.conn_id.raw, "c");
	SCAN("{\"conn_id\":\"c\",\"close\\u005Fcode\":7}", ENVELOPE_DIRECTIVE, &env);
	assert_int_equal(env.close_code, 7);
	KIND("{\"\\u0070\\u0075\\u0073\\u0068\\u005f\\u0077\\u0061\\u006b\\u0065\":1}", ENVELOPE_PUSH_WAKE);
	KIND("{\"conn\\/id\":\"c\",\"frame\":1}", ENVELOPE_MISSING_CONN_ID);
	/* exact, case-sensitive matching (Go would accept these; we deliberately don't) */
	KIND("{\"Conn_ID\":\"c\",\"frame\":1}", ENVELOPE_MISSING_CONN_ID);
	KIND("{\"CONN_ID\":\"c\",\"FRAME\":1}", ENVELOPE_MISSING_CONN_ID);
	KIND("{\"conn_id\":\"c\",\"Frame\":1}", ENVELOPE_MISSING_FRAME);
	KIND("{\"conn_id\":\"c\",\"Close_Code\":4000}", ENVELOPE_MISSING_FRAME);
	KIND("{\"Push_Wake\":{}}", ENVELOPE_MISSING_CONN_ID);
	KIND("{\"conn_id\":\"c\",\"clo\\u017fe_code\":4000}", ENVELOPE_MISSING_FRAME);
	KIND("{\"conn_id\":\"c\",\"clo\xc5\xbf" "e_code\":4000}", ENVELOPE_MISSING_FRAME);
	/* near misses are unknown keys */
	KIND("{\"conn_id \":\"c\",\"frame\":1}", ENVELOPE_MISSING_CONN_ID);
	KIND("{\"conn_i\":\"c\",\"frame\":1}", ENVELOPE_MISSING_CONN_ID);
	KIND("{\"conn_idd\":\"c\",\"frame\":1}", ENVELOPE_MISSING_CONN_ID);
	KIND("{\"conn_id\\u0000\":\"c\",\"frame\":1}", ENVELOPE_MISSING_CONN_ID);
	KIND("{\"\":\"c\",\"frame\":1}", ENVELOPE_MISSING_CONN_ID);
	/* unknown keys' values are validated */
	KIND("{\"conn_id\":\"c\",\"frame\":1,\"zz\":[1,2,}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"c\",\"frame\":1,\"zz\":\"\x80\"}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"c\",\"frame\":1,\"zz\":01}", ENVELOPE_MALFORMED);
	KIND("{\"conn_id\":\"c\",\"frame\":1,\"zz\":{\"a\":1,\"a\":[true,null,-0.5e1]}}", ENVELOPE_ROUTED);
}

static void test_duplicates(void **state)
{
	struct envelope env;

	(void)state;
	SCAN("{\"conn_id\":\"a\",\"conn_id\":\"b\",\"frame\":1}", ENVELOPE_ROUTED, &env);
	assert_span_str(env.conn_id.raw, "b");
	SCAN("{\"conn_id\":\"a\",\"frame\":1,\"frame\":[2]}", ENVELOPE_ROUTED, &env);
	assert_span_str(env.frame, "[2]");
	SCAN("{\"conn_id\":\"a\",\"close_code\":4000,\"close_code\":4001}", ENVELOPE_DIRECTIVE, &env);
	assert_int_equal(env.close_code, 4001);
	KIND("{\"conn_id\":\"a\",\"close_code\":4000,\"close_code\":0,\"frame\":1}", ENVELOPE_ROUTED);
	KIND("{\"conn_id\":\"a\",\"conn_id\":\"\",\"frame\":1}", ENVELOPE_MISSING_CONN_ID);
	KIND("{\"conn_id\":\"\",\"conn_id\":\"a\",\"frame\":1}", ENVELOPE_ROUTED);
	/* a null frame / push_wake replaces an earlier one */
	KIND("{\"conn_id\":\"a\",\"frame\":1,\"frame\":null}", ENVELOPE_MISSING_FRAME);
	SCAN("{\"conn_id\":\"a\",\"frame\":null,\"frame\":\"x\"}", ENVELOPE_ROUTED, &env);
	assert_span_str(env.frame, "\"x\"");
	KIND("{\"push_wake\":{},\"push_wake\":null}", ENVELOPE_MISSING_CONN_ID);
	/* a null conn_id / close_code leaves the earlier value (Go's decoder does so) */
	SCAN("{\"conn_id\":\"a\",\"conn_id\":null,\"frame\":1}", ENVELOPE_ROUTED, &env);
	assert_span_str(env.conn_id.raw, "a");
	SCAN("{\"conn_id\":\"a\",\"close_code\":4000,\"close_code\":null}", ENVELOPE_DIRECTIVE, &env);
	assert_int_equal(env.close_code, 4000);
	/* duplicates via escaped keys */
	SCAN("{\"conn_id\":\"a\",\"conn\\u005fid\":\"b\",\"frame\":1}", ENVELOPE_ROUTED, &env);
	assert_span_str(env.conn_id.raw, "b");
}

/* ---- push_wake ---- */

static const char *pw(const char *lit, size_t n, struct push_wake *out)
{
	uint8_t *b = malloc(n ? n : 1);
	assert_non_null(b);
	memcpy(b, lit, n);
	const char *err = envelope_push_wake_parse(span_make(b, n), out);
	if (!err) {
		out->platform.raw.ptr = (const uint8_t *)lit + (out->platform.raw.ptr - b);
		out->token.raw.ptr = (const uint8_t *)lit + (out->token.raw.ptr - b);
	}
	free(b);
	return err;
}

#define PW(lit, out) pw((lit), sizeof(lit) - 1, (out))

static void expect_pw_refused(const char *lit, size_t n, const char *reason)
{
	struct push_wake out;
	const char *err = pw(lit, n, &out);

	if (!err || strcmp(err, reason) != 0) {
		print_error("%.*s: got \"%s\", want \"%s\"\n", (int)n, lit, err ? err : "(ok)", reason);
		fail();
	}
}

#define PW_REFUSED(lit, reason) expect_pw_refused((lit), sizeof(lit) - 1, (reason))

static void test_push_wake_parse(void **state)
{
	struct push_wake out;
	struct envelope env;

	(void)state;
	assert_null(PW("{\"platform\":\"fcm\",\"token\":\"dEvIcE:tok_en-1\"}", &out));
	assert_span_str(out.token.raw, "dEvIcE:tok_en-1");
	assert_false(out.token.has_escapes);
	assert_span_str(out.platform.raw, "fcm");
	/* order, whitespace, unknown keys, escapes */
	assert_null(PW(" { \"token\" : \"a\\/b\" , \"x\" : [1] , \"platform\" : \"\\u0066cm\" } ", &out));
	assert_span_str(out.token.raw, "a\\/b");
	assert_true(out.token.has_escapes);
	uint8_t dec[16];
	assert_int_equal(json_str_unescape(out.token, dec, sizeof(dec)), 3);
	assert_memory_equal(dec, "a/b", 3);
	/* duplicates: last wins, null leaves the earlier value */
	assert_null(PW("{\"platform\":\"apns\",\"platform\":\"fcm\",\"token\":\"x\",\"token\":\"y\"}", &out));
	assert_span_str(out.token.raw, "y");
	assert_null(PW("{\"platform\":\"fcm\",\"platform\":null,\"token\":\"x\",\"token\":null}", &out));
	assert_span_str(out.token.raw, "x");

	/* end to end from an envelope */
	SCAN("{\"push_wake\":{\"platform\":\"fcm\",\"token\":\"T\"}}", ENVELOPE_PUSH_WAKE, &env);
	assert_null(envelope_push_wake_parse(env.push_wake, &out));
	assert_span_str(out.token.raw, "T");

	/* refusals, with fixed reasons */
	PW_REFUSED("{\"platform\":\"apns\",\"token\":\"t\"}", "push_wake platform is not fcm");
	PW_REFUSED("{\"platform\":\"FCM\",\"token\":\"t\"}", "push_wake platform is not fcm");
	PW_REFUSED("{\"platform\":\"fcm \",\"token\":\"t\"}", "push_wake platform is not fcm");
	PW_REFUSED("{\"platform\":\"\",\"token\":\"t\"}", "push_wake platform is not fcm");
	PW_REFUSED("{\"token\":\"t\"}", "push_wake platform is not fcm");
	PW_REFUSED("{\"platform\":null,\"token\":\"t\"}", "push_wake platform is not fcm");
	PW_REFUSED("{\"Platform\":\"fcm\",\"token\":\"t\"}", "push_wake platform is not fcm");
	PW_REFUSED("{\"platform\":\"fcm\"}", "push_wake token is empty");
	PW_REFUSED("{\"platform\":\"fcm\",\"token\":\"\"}", "push_wake token is empty");
	PW_REFUSED("{\"platform\":\"fcm\",\"token\":null}", "push_wake token is empty");
	PW_REFUSED("{\"platform\":1,\"token\":\"t\"}", "push_wake platform is not a string");
	PW_REFUSED("{\"platform\":[\"fcm\"],\"token\":\"t\"}", "push_wake platform is not a string");
	PW_REFUSED("{\"platform\":\"fcm\",\"token\":5}", "push_wake token is not a string");
	PW_REFUSED("{\"platform\":\"fcm\",\"token\":{\"t\":1}}", "push_wake token is not a string");
	PW_REFUSED("{\"platform\":\"fcm\",\"token\":true}", "push_wake token is not a string");
	PW_REFUSED("[\"fcm\",\"t\"]", "push_wake is not a JSON object");
	PW_REFUSED("\"fcm\"", "push_wake is not a JSON object");
	PW_REFUSED("7", "push_wake is not a JSON object");
	PW_REFUSED("null", "push_wake is not a JSON object");
	PW_REFUSED("", "push_wake is not valid JSON");
	PW_REFUSED("{\"platform\":\"fcm\",\"token\":\"t\"", "push_wake is not valid JSON");
	PW_REFUSED("{\"platform\":\"fcm\",\"token\":\"t\"} x", "push_wake is not valid JSON");
	PW_REFUSED("{\"platform\":\"fcm\",\"token\":\"\xff\"}", "push_wake is not valid JSON");
}

/* ---- writers ---- */

static void expect_prefix(struct span conn_id, const char *want)
{
	uint8_t out[512];
	size_t wl = strlen(want);
	size_t n = envelope_write_wrap_prefix(out, sizeof(out), conn_id);

	if (n != wl || memcmp(out, want, n) != 0) {
		print_error("prefix: got \"%.*s\" want \"%s\"\n", (int)n, out, want);
		fail();
	}
	assert_true(n <= ENVELOPE_WRAP_PREFIX_LEN_MAX(conn_id.len));
	assert_int_equal(envelope_write_wrap_prefix(out, wl, conn_id), wl);
	assert_int_equal(envelope_write_wrap_prefix(out, wl - 1, conn_id), 0);
	assert_int_equal(envelope_write_wrap_prefix(out, 0, conn_id), 0);
	assert_int_equal(envelope_write_wrap_prefix(out, 5, conn_id), 0);
}

static void test_wrap_prefix(void **state)
{
	(void)state;
	expect_prefix(S("client-abc-0123abcd"), "{\"conn_id\":\"client-abc-0123abcd\",\"frame\":");
	expect_prefix(S(""), "{\"conn_id\":\"\",\"frame\":");
	expect_prefix(S("a\"b\\c"), "{\"conn_id\":\"a\\\"b\\\\c\",\"frame\":");
	expect_prefix(S("<&>"), "{\"conn_id\":\"\\u003c\\u0026\\u003e\",\"frame\":");
	expect_prefix(S("\x01\n\r\t\b\f"), "{\"conn_id\":\"\\u0001\\n\\r\\t\\b\\f\",\"frame\":");
	expect_prefix(S("x\xe2\x80\xa8y\xe2\x80\xa9"), "{\"conn_id\":\"x\\u2028y\\u2029\",\"frame\":");
	expect_prefix(S("client-\xff\xc3\xa4-1"), "{\"conn_id\":\"client-\\ufffd\xc3\xa4-1\",\"frame\":");
	expect_prefix(S("\xed\xa0\x80"), "{\"conn_id\":\"\\ufffd\\ufffd\\ufffd\",\"frame\":");
	assert_int_equal(ENVELOPE_WRAP_PREFIX_LEN_MAX(0), 22);
	assert_int_equal(ENVELOPE_WRAP_PREFIX_LEN_MAX(3), 40);
}

static void expect_notice(struct span conn_id, uint16_t code, const char *want)
{
	uint8_t out[512];
	size_t wl = strlen(want);
	size_t n = envelope_write_close_notice(out, sizeof(out), conn_id, code);

	if (n != wl || memcmp(out, want, n) != 0) {
		print_error("notice: got \"%.*s\" want \"%s\"\n", (int)n, out, want);
		fail();
	}
	assert_true(n <= ENVELOPE_CLOSE_NOTICE_LEN_MAX(conn_id.len));
	assert_int_equal(envelope_write_close_notice(out, wl, conn_id, code), wl);
	assert_int_equal(envelope_write_close_notice(out, wl - 1, conn_id, code), 0);
	assert_int_equal(envelope_write_close_notice(out, 0, conn_id, code), 0);
}

static void test_close_notice(void **state)
{
	(void)state;
	expect_notice(S("client-s-0000ffff"), 1001, "{\"conn_id\":\"client-s-0000ffff\",\"close_code\":1001}");
	expect_notice(S("c"), 0, "{\"conn_id\":\"c\",\"close_code\":0}");
	expect_notice(S("c"), 7, "{\"conn_id\":\"c\",\"close_code\":7}");
	expect_notice(S("c"), 10, "{\"conn_id\":\"c\",\"close_code\":10}");
	expect_notice(S("c"), 4000, "{\"conn_id\":\"c\",\"close_code\":4000}");
	expect_notice(S("c"), 65535, "{\"conn_id\":\"c\",\"close_code\":65535}");
	expect_notice(S("\"<\xff"), 1000, "{\"conn_id\":\"\\\"\\u003c\\ufffd\",\"close_code\":1000}");
	assert_int_equal(ENVELOPE_CLOSE_NOTICE_LEN_MAX(1), 12 + 6 + 21);
}

/* What we write, we (and so the binary) read back: same conn_id, same code, same frame. */
static void test_writer_round_trip(void **state)
{
	static const char *ids[] = {
		"client-srv-0123abcd", "a", "quote\"back\\slash", "<script>&", "\x01\x1f\x7f",
		"\xc3\xa4\xe2\x82\xac\xf0\x9f\x98\x80", "line\xe2\x80\xa8sep", "nul\0byte",
	};
	static const char frame[] = "{\"k\":[1,\"}\",null]}";
	uint8_t buf[1024];
	struct envelope env;

	(void)state;
	for (size_t k = 0; k < ARRAY_LEN(ids); k++) {
		struct span id = k == ARRAY_LEN(ids) - 1 ? S("nul\0byte") : span_cstr(ids[k]);
		size_t n = envelope_write_wrap_prefix(buf, sizeof(buf), id);
		assert_int_not_equal(n, 0);
		memcpy(buf + n, frame, sizeof(frame) - 1);
		n += sizeof(frame) - 1;
		memcpy(buf + n, ENVELOPE_WRAP_SUFFIX, ENVELOPE_WRAP_SUFFIX_LEN);
		n += ENVELOPE_WRAP_SUFFIX_LEN;
		assert_true(json_valid(span_make(buf, n)));
		assert_int_equal(envelope_scan(span_make(buf, n), &env), ENVELOPE_ROUTED);
		assert_true(envelope_conn_id_eq(env.conn_id.raw, env.conn_id.has_escapes, id));
		assert_int_equal(env.frame.len, sizeof(frame) - 1);
		assert_memory_equal(env.frame.ptr, frame, env.frame.len);

		n = envelope_write_close_notice(buf, sizeof(buf), id, 4321);
		assert_int_equal(envelope_scan(span_make(buf, n), &env), ENVELOPE_DIRECTIVE);
		assert_int_equal(env.close_code, 4321);
		assert_false(env.has_frame);
		assert_true(envelope_conn_id_eq(env.conn_id.raw, env.conn_id.has_escapes, id));
	}
	/* invalid UTF-8 in a stored conn_id cannot come back equal (Go behaves the same) */
	struct span bad = S("client-\xff");
	size_t n = envelope_write_close_notice(buf, sizeof(buf), bad, 1001);
	assert_int_equal(envelope_scan(span_make(buf, n), &env), ENVELOPE_DIRECTIVE);
	assert_false(envelope_conn_id_eq(env.conn_id.raw, env.conn_id.has_escapes, bad));
	assert_true(envelope_conn_id_eq(env.conn_id.raw, env.conn_id.has_escapes, S("client-\xef\xbf\xbd")));
}

static void test_kind_names(void **state)
{
	(void)state;
	assert_string_equal(envelope_kind_name(ENVELOPE_MALFORMED), "malformed");
	assert_string_equal(envelope_kind_name(ENVELOPE_PUSH_WAKE), "push_wake");
	assert_string_equal(envelope_kind_name(ENVELOPE_MISSING_CONN_ID), "missing_conn_id");
	assert_string_equal(envelope_kind_name(ENVELOPE_MISSING_FRAME), "missing_frame");
	assert_string_equal(envelope_kind_name(ENVELOPE_DIRECTIVE), "directive");
	assert_string_equal(envelope_kind_name(ENVELOPE_ROUTED), "routed");
}

/* A large routed frame made of long strings: the span covers it exactly. */
/* Which messages take the one-pass route (the shape, and a frame that is one value). */
static bool one_pass(const char *msg)
{
	struct envelope env;
	size_t n = strlen(msg);
	envelope_scan(span_make(msg, n), &env);
	return shape_agrees(span_make(msg, n), &env);
}

static void test_routed_shape(void **state)
{
	(void)state;
	/* the form binaries send, any frame value */
	assert_true(one_pass("{\"conn_id\":\"client-s-0a1b2c3d\",\"frame\":{\"t\":\"x\"}}"));
	assert_true(one_pass("{\"conn_id\":\"a\",\"frame\":1}"));
	assert_true(one_pass("{\"conn_id\":\"a b~\",\"frame\":\"\\u00e9\xc3\xa9\"}"));
	assert_true(one_pass("{\"conn_id\":\"a\",\"frame\":[ 1 , {} ]}"));
	/* anything else is scanned: whitespace outside the frame, other key orders or keys,
	 * an escaped or empty or non-ASCII conn_id, a null frame */
	assert_false(one_pass("{\"conn_id\":\"a\",\"frame\": 1}"));
	assert_false(one_pass("{\"conn_id\":\"a\",\"frame\":1 }"));
	assert_false(one_pass("{\"conn_id\":\"a\", \"frame\":1}"));
	assert_false(one_pass(" {\"conn_id\":\"a\",\"frame\":1}"));
	assert_false(one_pass("{\"conn_id\":\"a\",\"frame\":1} "));
	assert_false(one_pass("{\"frame\":1,\"conn_id\":\"a\"}"));
	assert_false(one_pass("{\"conn_id\":\"a\",\"close_code\":4000,\"frame\":1}"));
	assert_false(one_pass("{\"conn_id\":\"a\\u0062\",\"frame\":1}"));
	assert_false(one_pass("{\"conn_id\":\"\",\"frame\":1}"));
	assert_false(one_pass("{\"conn_id\":\"\xc3\xa9\",\"frame\":1}"));
	assert_false(one_pass("{\"conn_id\":\"a\",\"frame\":null}"));
	assert_false(one_pass("{\"conn_id\":\"a\",\"frame\":}"));
	/* the shape, but the frame is not one value: the scan decides (here: routed, and
	 * malformed) */
	struct envelope env;
	struct json_str id;
	struct span v;
	static const char two[] = "{\"conn_id\":\"a\",\"frame\":1,\"frame\":2}";
	assert_true(envelope_routed_shape(span_make(two, sizeof two - 1), &id, &v));
	assert_false(one_pass(two));
	SCAN(two, ENVELOPE_ROUTED, &env);
	assert_span_str(env.frame, "2");
	assert_false(one_pass("{\"conn_id\":\"a\",\"frame\":[1,]}"));
	KIND("{\"conn_id\":\"a\",\"frame\":[1,]}", ENVELOPE_MALFORMED);
	/* nesting counts the envelope: 9999 arrays inside it are the limit */
	size_t deep = JSON_DEPTH_MAX - 1;
	char *msg = malloc(2 * deep + 64);
	assert_non_null(msg);
	for (size_t extra = 0; extra <= 1; extra++) {
		size_t n = (size_t)sprintf(msg, "{\"conn_id\":\"a\",\"frame\":");
		memset(msg + n, '[', deep + extra);
		n += deep + extra;
		memset(msg + n, ']', deep + extra);
		n += deep + extra;
		msg[n++] = '}';
		msg[n] = '\0';
		assert_int_equal(one_pass(msg), extra == 0);
		enum envelope_kind k = scan_as(msg, n, &env);
		assert_int_equal(k, extra == 0 ? ENVELOPE_ROUTED : ENVELOPE_MALFORMED);
	}
	free(msg);
}

static void test_large_frame(void **state)
{
	size_t body = 256 * 1024, n = 0;
	char *b = malloc(body + 128);
	struct envelope env;

	(void)state;
	assert_non_null(b);
	n += (size_t)sprintf(b, "{\"conn_id\":\"c\",\"frame\":[\"");
	size_t fstart = n - 2;
	for (size_t k = 0; k < body; k++)
		b[n++] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[k % 64];
	n += (size_t)sprintf(b + n, "\",1]}");
	expect_kind(b, n, ENVELOPE_ROUTED, &env);
	assert_ptr_equal(env.frame.ptr, (const uint8_t *)b + fstart);
	assert_int_equal(env.frame.len, n - 1 - fstart);
	/* one control byte in the middle makes it malformed */
	b[fstart + 2 + body / 2] = '\x1f';
	expect_kind(b, n, ENVELOPE_MALFORMED, &env);
	free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table_malformed),
		cmocka_unit_test(test_wrong_types),
		cmocka_unit_test(test_close_code_values),
		cmocka_unit_test(test_table_push_wake),
		cmocka_unit_test(test_table_missing_conn_id),
		cmocka_unit_test(test_table_missing_frame),
		cmocka_unit_test(test_table_directive),
		cmocka_unit_test(test_table_routed),
		cmocka_unit_test(test_whitespace_everywhere),
		cmocka_unit_test(test_frame_span_tricky),
		cmocka_unit_test(test_conn_id_escapes),
		cmocka_unit_test(test_keys),
		cmocka_unit_test(test_duplicates),
		cmocka_unit_test(test_push_wake_parse),
		cmocka_unit_test(test_wrap_prefix),
		cmocka_unit_test(test_close_notice),
		cmocka_unit_test(test_writer_round_trip),
		cmocka_unit_test(test_kind_names),
		cmocka_unit_test(test_routed_shape),
		cmocka_unit_test(test_large_frame),
	};
	return cmocka_run_group_tests_name("envelope", tests, NULL, NULL);
}
