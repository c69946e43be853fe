/*
 * test_json.c - the strict RFC 8259 scanner, string decoding and Go-compatible escaping.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "envelope/json.h"
#include "../oracles/one_pass.h"
#include "simd_levels.h"

/* A span over a string literal, embedded NULs included. */
#define S(lit) span_make((lit), sizeof(lit) - 1)

/* json_valid_copy must agree with json_valid (want) and copy exactly (one_pass.h). */
static bool valid_copy_agrees(const uint8_t *b, size_t n, bool want)
{
	if (!one_pass_copy_holds(span_make(b, n), want)) {
		print_error("%s: json_valid_copy disagrees with json_valid (%d) or its copy (%zu bytes)\n",
			    simd_name(simd_selected()), want, n);
		fail();
	}
	return want;
}

static bool valid_lit(const char *s, size_t n)
{
	/* Copy into an exact-size heap block so ASan catches any read past the end. */
	uint8_t *b = malloc(n ? n : 1);
	assert_non_null(b);
	memcpy(b, s, n);
	bool ok = json_valid(span_make(b, n));
	valid_copy_agrees(b, n, ok);
	free(b);
	return ok;
}


static void expect_valid(const char *s, size_t n)
{
	if (!valid_lit(s, n)) {
		print_error("expected valid: \"%.*s\" (%zu bytes)\n", (int)n, s, n);
		fail();
	}
}

static void expect_invalid(const char *s, size_t n)
{
	if (valid_lit(s, n)) {
		print_error("expected invalid: \"%.*s\" (%zu bytes)\n", (int)n, s, n);
		fail();
	}
}

#define OK(lit) expect_valid((lit), sizeof(lit) - 1)
#define BAD(lit) expect_invalid((lit), sizeof(lit) - 1)

static void test_scalars(void **state)
{
	(void)state;
	OK("true");
	OK("false");
	OK("null");
	OK("0");
	OK("-0");
	OK("1");
	OK("-1");
	OK("123456789");
	OK("0.5");
	OK("-0.0");
	OK("1e5");
	OK("1E5");
	OK("1e+5");
	OK("1e-5");
	OK("1.25E-10");
	OK("0e0");
	OK("-0.0E+0");
	OK("\"\"");
	OK("\"abc\"");
	OK("{}");
	OK("[]");
	OK("[1,2,3]");
	OK("{\"a\":1,\"b\":[true,false,null],\"c\":{\"d\":\"e\"}}");
	/* DEL is not a control character in RFC 8259 */
	OK("\"\x7f\"");
}

static void test_invalid_syntax(void **state)
{
	(void)state;
	BAD("");
	BAD(" ");
	BAD(" \t\r\n ");
	BAD("tru");
	BAD("nul");
	BAD("nulll");
	BAD("True");
	BAD("NULL");
	BAD("NaN");
	BAD("-NaN");
	BAD("Infinity");
	BAD("-Infinity");
	BAD("+1");
	BAD("01");
	BAD("-01");
	BAD("00");
	BAD(".5");
	BAD("5.");
	BAD("5.e3");
	BAD("-");
	BAD("--1");
	BAD("1e");
	BAD("1e+");
	BAD("1e-");
	BAD("1.5e");
	BAD("0x10");
	BAD("1_000");
	BAD("'a'");
	BAD("\"abc");
	BAD("\"abc\\\"");
	BAD("[");
	BAD("]");
	BAD("{");
	BAD("}");
	BAD("[}");
	BAD("{]");
	BAD("[{]}");
	BAD("[1,]");
	BAD("[,1]");
	BAD("[,]");
	BAD("[1 2]");
	BAD("{,}");
	BAD("{\"a\"}");
	BAD("{\"a\":}");
	BAD("{\"a\" 1}");
	BAD("{\"a\":1,}");
	BAD("{\"a\":1 \"b\":2}");
	BAD("{1:2}");
	BAD("{a:1}");
	BAD("{'a':1}");
	BAD("{\"a\"::1}");
	BAD("[1]]");
	BAD("{}}");
	BAD("1 2");
	BAD("1,2");
	BAD("[] []");
	BAD("// c\n1");
	BAD("/* c */1");
	BAD("1 // c");
	BAD("\"a\" x");
	BAD("[1]\0");
	BAD("\0");
	BAD("[1e5.5]");
	BAD("[truefalse]");
	BAD("[true false]");
	BAD("{\"a\":1}{\"b\":2}");
	BAD("\xef\xbb\xbf{}"); /* BOM */
}

static void test_whitespace(void **state)
{
	(void)state;
	OK(" \t\r\n{ \t\r\n\"a\" \t\r\n: \t\r\n[ \t\r\n1 \t\r\n, \t\r\n2 \t\r\n] \t\r\n} \t\r\n");
	OK("\n1\n");
	OK("\r\"x\"\t");
	/* Only SP, HTAB, LF, CR are whitespace in RFC 8259. */
	BAD("\f1");
	BAD("1\f");
	BAD("\v1");
	BAD("[1,\v2]");
	BAD("\xc2\xa0" "1");        /* NBSP */
	BAD("1\xe2\x80\xa8");       /* U+2028 */
	BAD("[1,\xe3\x80\x80" "2]"); /* ideographic space */
	BAD("\x1c" "1");
	/* inside strings any of them is just content, except control bytes */
	OK("\"\xc2\xa0\xe2\x80\xa8\"");
	BAD("\"\t\"");
	BAD("\"\n\"");
	BAD("\"\r\"");
	BAD("\"\f\"");
}

static void test_escapes(void **state)
{
	(void)state;
	OK("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"");
	OK("\"\\u0000\\u001f\\u0041\\u00e9\\u00E9\\uFFFF\\uabcd\\uABCD\"");
	OK("\"\\ud83d\\ude00\"");
	/* lone surrogates: syntactically valid escapes (RFC 8259 ABNF), accepted as Go does */
	OK("\"\\ud800\"");
	OK("\"\\udc00\"");
	OK("\"\\udbff\\u0041\"");
	OK("\"\\ude00\\ud83d\"");
	BAD("\"\\x41\"");
	BAD("\"\\U0041\"");
	BAD("\"\\u004\"");
	BAD("\"\\u00g1\"");
	BAD("\"\\u\"");
	BAD("\"\\a\"");
	BAD("\"\\0\"");
	BAD("\"\\'\"");
	BAD("\"\\");
	BAD("\"\\u00");
	BAD("\"\\ \"");
	BAD("\"\\\xc3\xa9\"");
}

static void test_utf8(void **state)
{
	(void)state;
	/* boundaries of each sequence length */
	OK("\"\xc2\x80\"");             /* U+0080 */
	OK("\"\xdf\xbf\"");             /* U+07FF */
	OK("\"\xe0\xa0\x80\"");         /* U+0800 */
	OK("\"\xed\x9f\xbf\"");         /* U+D7FF */
	OK("\"\xee\x80\x80\"");         /* U+E000 */
	OK("\"\xef\xbf\xbd\"");         /* U+FFFD */
	OK("\"\xef\xbf\xbf\"");         /* U+FFFF */
	OK("\"\xf0\x90\x80\x80\"");     /* U+10000 */
	OK("\"\xf4\x8f\xbf\xbf\"");     /* U+10FFFF */
	OK("\"\xf0\x9f\x98\x80 smile\"");
	OK("{\"\xc3\xa4\":\"\xc3\xb6\"}");
	/* invalid */
	BAD("\"\x80\"");                 /* lone continuation */
	BAD("\"\xbf\"");
	BAD("\"\xc0\x80\"");             /* overlong NUL */
	BAD("\"\xc1\xbf\"");             /* overlong */
	BAD("\"\xc2\"");                 /* truncated before the quote */
	BAD("\"\xc2\x41\"");
	BAD("\"\xe0\x80\x80\"");         /* overlong 3-byte */
	BAD("\"\xe0\x9f\xbf\"");
	BAD("\"\xed\xa0\x80\"");         /* encoded surrogate U+D800 */
	BAD("\"\xed\xbf\xbf\"");         /* encoded surrogate U+DFFF */
	BAD("\"\xed\xa0\xbd\xed\xb8\x80\""); /* CESU-8 pair */
	BAD("\"\xe2\x82\"");
	BAD("\"\xe2\x82\xc0\"");
	BAD("\"\xf0\x80\x80\x80\"");     /* overlong 4-byte */
	BAD("\"\xf0\x8f\xbf\xbf\"");
	BAD("\"\xf4\x90\x80\x80\"");     /* above U+10FFFF */
	BAD("\"\xf5\x80\x80\x80\"");
	BAD("\"\xf8\x88\x80\x80\x80\"");
	BAD("\"\xfe\"");
	BAD("\"\xff\"");
	BAD("\"\xf0\x9f\x98\"");
	BAD("\"\xf0\x9f\x98");           /* truncated at end of input */
	BAD("\"\xc3");
	/* outside strings, non-ASCII is never valid */
	BAD("\xc3\xa4");
	BAD("[1,\xc3\xa4]");
	BAD("{\"a\":1}\xc3\xa4");
	BAD("\xff");
	/* invalid bytes in keys too */
	BAD("{\"\xff\":1}");
}

/* Write "<at plain bytes><ins><len - at plain bytes>" (quotes included) at out; returns
 * its length (len + ins_len + 2). */
static size_t string_with(char *out, size_t at, size_t len, const char *ins, size_t ins_len)
{
	size_t n = 0;
	out[n++] = '"';
	for (size_t k = 0; k < at; k++)
		out[n++] = 'a' + (char)(k % 26);
	memcpy(out + n, ins, ins_len);
	n += ins_len;
	for (size_t k = at; k < len; k++)
		out[n++] = 'A' + (char)(k % 26);
	out[n++] = '"';
	return n;
}

/*
 * The string loop skips 32 (AVX2), 16 (SSE2) or eight plain bytes at a time; put every
 * special byte at every offset of strings of several lengths so every fast path and the
 * slow one see it, at every level of instructions this CPU has (core/simd.h).
 */
static void string_fast_path_offsets(void)
{
	static const struct {
		const char *ins;
		size_t len;
		bool ok;
	} cases[] = {
		{ "\x01", 1, false }, { "\x1f", 1, false }, { "\"", 1, false },
		{ "\\", 1, false },   { "\x80", 1, false }, { "\xff", 1, false },
		{ "\\\"", 2, true },  { "\\\\", 2, true },  { "\xc3\xa9", 2, true },
		{ " ", 1, true },     { "\x7f", 1, true },  { "\xe2\x82\xac", 3, true },
		{ "\xf0\x9f\x98\x80", 4, true }, { "\\u0041", 6, true }, { "!", 1, true },
		{ "#", 1, true },     { "[", 1, true },     { "]", 1, true },
	};
	char buf[160];

	for (size_t c = 0; c < ARRAY_LEN(cases); c++) {
		for (size_t len = 0; len <= 140; len++) { /* past the 64 bytes the AVX2 path needs, and more */
			for (size_t at = 0; at <= len; at++) {
				size_t n = string_with(buf, at, len, cases[c].ins, cases[c].len);
				bool got = valid_lit(buf, n);
				if (got != cases[c].ok) {
					print_error("%s: case %zu len %zu at %zu: got %d\n", simd_name(simd_selected()), c,
						    len, at, got);
					fail();
				}
			}
		}
	}
}

static void test_string_fast_path_offsets(void **state)
{
	(void)state;
	at_every_simd_level("string scan", string_fast_path_offsets);
}

/*
 * json_valid_copy stores what it checks only inside plain runs of at least
 * JSON_COPY_FUSE_AFTER_BYTES (128), and only when 192 bytes remain: strings of up to
 * 700 bytes, with every special byte at every offset, put the end of a stored run (and
 * a refusal) at every position of every step of every level.
 */
static void copy_run_offsets(void)
{
	static const struct {
		const char *ins;
		size_t len;
	} cases[] = {
		{ "\x01", 1 }, { "\"", 1 }, { "\\", 1 }, { "\xff", 1 }, { "\\n", 2 },
		{ "\xc3\xa9", 2 }, { "\xe2\x82\xac", 3 }, { "\\u00e9", 6 }, { "\xf0\x9f\x98\x80", 4 },
	};
	static char buf[800];
	for (size_t c = 0; c < ARRAY_LEN(cases); c++) {
		for (size_t len = 120; len <= 700; len += 97) {
			for (size_t at = 0; at <= len; at++) {
				size_t n = 0;
				buf[n++] = '[';
				n += string_with(buf + n, at, len, cases[c].ins, cases[c].len);
				memcpy(buf + n, ",1]", 3);
				n += 3;
				uint8_t *b = malloc(n);
				assert_non_null(b);
				memcpy(b, buf, n);
				valid_copy_agrees(b, n, json_valid(span_make(b, n)));
				free(b);
			}
		}
	}
}

static void test_valid_copy_run_offsets(void **state)
{
	(void)state;
	at_every_simd_level("valid+copy runs", copy_run_offsets);
}

/* A random document: containers, keys, numbers, literals, and strings of long plain
 * runs with escapes, non-ASCII and now and then a byte that makes it invalid. */
static uint64_t rng_state;

static uint32_t rnd(uint32_t below)
{
	rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
	return (uint32_t)(rng_state >> 33) % below;
}

static void put(uint8_t *b, size_t cap, size_t *n, const char *s, size_t len)
{
	for (size_t k = 0; k < len && *n < cap; k++)
		b[(*n)++] = (uint8_t)s[k];
}

static void random_string(uint8_t *b, size_t cap, size_t *n)
{
	static const char *const bits[] = { "\\n", "\\\"", "\\u00e9", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", " ", "~" };
	static const char *const bad[] = { "\x01", "\xff", "\\x", "\xc3", "\xed\xa0\x80" };
	put(b, cap, n, "\"", 1);
	for (uint32_t pieces = rnd(4); pieces-- > 0;) {
		size_t run = rnd(8) == 0 ? rnd(900) : rnd(40);
		static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";
		for (size_t k = 0; k < run && *n < cap; k++)
			b[(*n)++] = (uint8_t)b64[rnd(sizeof b64 - 1)]; /* the Noise ciphertext's alphabet */
		const char *x = rnd(50) == 0 ? bad[rnd(ARRAY_LEN(bad))] : bits[rnd(ARRAY_LEN(bits))];
		put(b, cap, n, x, strlen(x));
	}
	put(b, cap, n, "\"", 1);
}

static void random_value(uint8_t *b, size_t cap, size_t *n, unsigned depth)
{
	switch (depth > 4 ? 2 + rnd(3) : rnd(5)) {
	case 0:
	case 1: {
		bool obj = rnd(2);
		put(b, cap, n, obj ? "{" : "[", 1);
		for (uint32_t k = rnd(5); k-- > 0;) {
			if (obj) {
				random_string(b, cap, n);
				put(b, cap, n, " : ", 1 + rnd(3));
			}
			random_value(b, cap, n, depth + 1);
			if (k)
				put(b, cap, n, ",\n", 1 + rnd(2));
		}
		put(b, cap, n, obj ? "}" : "]", 1);
		break;
	}
	case 2:
	case 3:
		random_string(b, cap, n);
		break;
	default: {
		static const char *const lits[] = { "0", "-12.5e+3", "true", "false", "null", "01", "1.", "nul" };
		const char *l = lits[rnd(rnd(10) == 0 ? ARRAY_LEN(lits) : 5)];
		put(b, cap, n, l, strlen(l));
		break;
	}
	}
}

static void copy_random(void)
{
	static uint8_t doc[16384];
	unsigned valid = 0, rounds = 3000;
	rng_state = 0x17u;
	for (unsigned r = 0; r < rounds; r++) {
		size_t n = 0;
		random_value(doc, sizeof doc, &n, 0);
		uint8_t *b = malloc(n ? n : 1);
		assert_non_null(b);
		memcpy(b, doc, n);
		valid += valid_copy_agrees(b, n, json_valid(span_make(b, n)));
		free(b);
	}
	/* both verdicts were exercised */
	assert_true(valid > rounds / 10 && valid < rounds - rounds / 10);
}

static void test_valid_copy_random(void **state)
{
	(void)state;
	at_every_simd_level("valid+copy random", copy_random);
}

/* json_value_copy: one value, nothing around it, nested inside `depth` containers. */
static void test_value_copy(void **state)
{
	(void)state;
	uint8_t dst[64];
	assert_true(json_value_copy(S("[1,{\"a\":\"\xc3\xa9\"}]"), 1, dst));
	assert_memory_equal(dst, "[1,{\"a\":\"\xc3\xa9\"}]", 15);
	assert_true(json_value_copy(S("-0.5e3"), 0, dst));
	assert_false(json_value_copy(S(" 1"), 0, dst));
	assert_false(json_value_copy(S("1 "), 0, dst));
	assert_false(json_value_copy(S("1,2"), 1, dst));
	assert_false(json_value_copy(S(""), 1, dst));
	/* the depth counts: a container at JSON_DEPTH_MAX - 1 is the deepest allowed */
	assert_true(json_value_copy(S("[]"), JSON_DEPTH_MAX - 1, dst));
	assert_false(json_value_copy(S("[]"), JSON_DEPTH_MAX, dst));
	assert_true(json_value_copy(S("7"), JSON_DEPTH_MAX, dst));
}

static void test_numbers_big(void **state)
{
	char buf[5000];
	size_t n;

	(void)state;
	/* no limit on length: the grammar has none, and Go accepts them (as float64) */
	n = 0;
	buf[n++] = '-';
	buf[n++] = '9';
	for (; n < 4000; n++)
		buf[n] = (char)('0' + n % 10);
	expect_valid(buf, n);
	memcpy(buf + n, ".5e-999999999", 13);
	expect_valid(buf, n + 13);
	OK("1e999999999999999999999");
	OK("[1.7976931348623157e309,-1e-400]");
	OK("18446744073709551616");
	OK("123456789012345678901234567890");
}

static void expect_depth(uint32_t containers, bool objects, bool ok)
{
	/* {"a":{"a":...}} or [[...]] with `containers` levels */
	size_t n = 0, cap = (size_t)containers * 6 + 16;
	char *b = malloc(cap);

	assert_non_null(b);
	for (uint32_t k = 0; k < containers; k++) {
		if (objects) {
			memcpy(b + n, "{\"a\":", 5);
			n += 5;
		} else {
			b[n++] = '[';
		}
	}
	b[n++] = '1';
	for (uint32_t k = 0; k < containers; k++)
		b[n++] = objects ? '}' : ']';
	assert_int_equal(json_valid(span_make(b, n)), ok);
	free(b);
}

static void test_depth_limit(void **state)
{
	(void)state;
	expect_depth(1, false, true);
	expect_depth(64, false, true);
	expect_depth(65, true, true);
	expect_depth(JSON_DEPTH_MAX - 1, false, true);
	expect_depth(JSON_DEPTH_MAX, false, true);
	expect_depth(JSON_DEPTH_MAX + 1, false, false);
	expect_depth(JSON_DEPTH_MAX, true, true);
	expect_depth(JSON_DEPTH_MAX + 1, true, false);
	expect_depth(3 * JSON_DEPTH_MAX, false, false);

	/* unbalanced deep input is invalid, not a crash */
	size_t n = 100000;
	char *b = malloc(n);
	assert_non_null(b);
	memset(b, '[', n);
	assert_false(json_valid(span_make(b, n)));
	memset(b, ']', n);
	assert_false(json_valid(span_make(b, n)));
	free(b);

	/* mixed object/array levels each close with their own bracket */
	OK("[{\"a\":[{\"b\":[[{}]]}]}]");
	BAD("[{\"a\":[{\"b\":[[{}]]}]]}");
	/* siblings do not accumulate depth */
	OK("[[[]],[[]],[[[]]],{},{\"a\":{}}]");
}

static void test_skip_value_depth_param(void **state)
{
	struct span in = S("[[1]]");
	size_t pos = 0;
	struct span raw;

	(void)state;
	assert_true(json_skip_value(in, &pos, 0, &raw));
	assert_true(json_skip_value(in, &(size_t){ 0 }, JSON_DEPTH_MAX - 2, &raw));
	assert_false(json_skip_value(in, &(size_t){ 0 }, JSON_DEPTH_MAX - 1, &raw));
	/* a scalar needs no depth */
	assert_true(json_skip_value(S("1"), &(size_t){ 0 }, JSON_DEPTH_MAX, &raw));
	assert_false(json_skip_value(S("[]"), &(size_t){ 0 }, JSON_DEPTH_MAX, &raw));
}

static void test_skip_value_spans(void **state)
{
	struct span in = S("  {\"a\" : [1, \"]}\" , {}] }  ,  -1.5e3 ,\"x\\\"y\" ");
	size_t pos = json_skip_ws(in, 0);
	struct span raw;

	(void)state;
	assert_int_equal(pos, 2);
	assert_true(json_skip_value(in, &pos, 0, &raw));
	assert_int_equal(raw.len, strlen("{\"a\" : [1, \"]}\" , {}] }"));
	assert_memory_equal(raw.ptr, "{\"a\" : [1, \"]}\" , {}] }", raw.len);
	assert_int_equal(json_type_of(raw), JSON_TYPE_OBJECT);
	pos = json_skip_ws(in, pos);
	assert_int_equal(in.ptr[pos], ',');
	pos = json_skip_ws(in, pos + 1);
	assert_true(json_skip_value(in, &pos, 0, &raw));
	assert_int_equal(raw.len, 6);
	assert_memory_equal(raw.ptr, "-1.5e3", 6);
	assert_int_equal(json_type_of(raw), JSON_TYPE_NUMBER);
	pos = json_skip_ws(in, pos);
	pos++;
	assert_true(json_skip_value(in, &pos, 0, &raw));
	assert_memory_equal(raw.ptr, "\"x\\\"y\"", raw.len);
	assert_int_equal(json_type_of(raw), JSON_TYPE_STRING);
	assert_int_equal(json_skip_ws(in, pos), in.len);

	/* value ends at the end of input: numbers and literals have no terminator */
	pos = 0;
	assert_true(json_skip_value(S("12"), &pos, 0, &raw));
	assert_int_equal(pos, 2);
	pos = 0;
	assert_true(json_skip_value(S("null"), &pos, 0, &raw));
	assert_int_equal(json_type_of(raw), JSON_TYPE_NULL);
	pos = 0;
	assert_true(json_skip_value(S("true]"), &pos, 0, &raw));
	assert_int_equal(pos, 4);
	assert_int_equal(json_type_of(raw), JSON_TYPE_TRUE);
	pos = 0;
	assert_true(json_skip_value(S("false"), &pos, 0, &raw));
	assert_int_equal(json_type_of(raw), JSON_TYPE_FALSE);
	pos = 0;
	assert_true(json_skip_value(S("[]"), &pos, 0, &raw));
	assert_int_equal(json_type_of(raw), JSON_TYPE_ARRAY);
	/* leading whitespace is the caller's job */
	pos = 0;
	assert_false(json_skip_value(S(" 1"), &pos, 0, &raw));
	pos = 0;
	assert_false(json_skip_value(S(""), &pos, 0, &raw));
}

static void test_scan_string(void **state)
{
	struct span in = S("\"ab\\ncd\" \"plain\" \"\"");
	size_t pos = 0;
	struct json_str s;

	(void)state;
	assert_true(json_scan_string(in, &pos, &s));
	assert_int_equal(pos, 8);
	assert_int_equal(s.raw.len, 6);
	assert_memory_equal(s.raw.ptr, "ab\\ncd", 6);
	assert_true(s.has_escapes);
	pos = 9;
	assert_true(json_scan_string(in, &pos, &s));
	assert_memory_equal(s.raw.ptr, "plain", 5);
	assert_false(s.has_escapes);
	pos = 17;
	assert_true(json_scan_string(in, &pos, &s));
	assert_int_equal(s.raw.len, 0);
	assert_int_equal(pos, in.len);
	pos = 0;
	assert_false(json_scan_string(S("\"abc"), &pos, &s));
}

static struct json_str str_of(struct span quoted)
{
	size_t pos = 0;
	struct json_str s;

	assert_true(json_scan_string(quoted, &pos, &s));
	assert_int_equal(pos, quoted.len);
	return s;
}

static void expect_decoded(struct span quoted, struct span want)
{
	struct json_str s = str_of(quoted);
	uint8_t out[256];
	size_t n = json_str_unescape(s, out, sizeof(out));

	assert_int_not_equal(n, SIZE_MAX);
	assert_true(n <= s.raw.len);
	assert_int_equal(n, want.len);
	assert_memory_equal(out, want.ptr, n);
	assert_true(json_str_eq(s, want));
	/* exact-size output works, one byte less does not */
	if (n > 0) {
		assert_int_equal(json_str_unescape(s, out, n), n);
		assert_int_equal(json_str_unescape(s, out, n - 1), SIZE_MAX);
	}
	/* one byte more, one byte less, one byte different: not equal */
	uint8_t w[260];
	memcpy(w, want.ptr, want.len);
	w[want.len] = 'x';
	assert_false(json_str_eq(s, span_make(w, want.len + 1)));
	if (want.len > 0) {
		assert_false(json_str_eq(s, span_make(w, want.len - 1)));
		w[want.len - 1] ^= 1;
		assert_false(json_str_eq(s, span_make(w, want.len)));
	}
}

static void test_decode(void **state)
{
	(void)state;
	expect_decoded(S("\"\""), S(""));
	expect_decoded(S("\"abc\""), S("abc"));
	expect_decoded(S("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\""), S("\"\\/\b\f\n\r\t"));
	expect_decoded(S("\"\\u0041\\u00e9\\u00E9\\u20ac\""), S("A\xc3\xa9\xc3\xa9\xe2\x82\xac"));
	expect_decoded(S("\"\\u0000\""), S("\0"));
	expect_decoded(S("\"\\ud83d\\ude00\""), S("\xf0\x9f\x98\x80"));
	expect_decoded(S("\"\\uD83D\\uDE00\""), S("\xf0\x9f\x98\x80"));
	expect_decoded(S("\"\\udbff\\udfff\""), S("\xf4\x8f\xbf\xbf"));
	expect_decoded(S("\"\\ud800\\udc00\""), S("\xf0\x90\x80\x80"));
	/* Go's unquote: lone or misordered surrogates become U+FFFD, one per escape */
	expect_decoded(S("\"\\ud800\""), S("\xef\xbf\xbd"));
	expect_decoded(S("\"\\udc00\""), S("\xef\xbf\xbd"));
	expect_decoded(S("\"\\ud800x\""), S("\xef\xbf\xbdx"));
	expect_decoded(S("\"\\ud800\\u0041\""), S("\xef\xbf\xbd" "A"));
	expect_decoded(S("\"\\udc00\\ud800\""), S("\xef\xbf\xbd\xef\xbf\xbd"));
	expect_decoded(S("\"\\ud800\\ud800\\udc00\""), S("\xef\xbf\xbd\xf0\x90\x80\x80"));
	expect_decoded(S("\"\\ud800\\n\""), S("\xef\xbf\xbd\n"));
	expect_decoded(S("\"\\ud800\\\\udc00\""), S("\xef\xbf\xbd\\udc00"));
	/* raw UTF-8 passes through */
	expect_decoded(S("\"\xc3\xa4\\n\xf0\x9f\x98\x80\""), S("\xc3\xa4\n\xf0\x9f\x98\x80"));
	/* without escapes: plain comparison */
	struct json_str s = str_of(S("\"abc\""));
	assert_false(s.has_escapes);
	assert_true(json_str_eq_cstr(s, "abc"));
	assert_false(json_str_eq_cstr(s, "ab"));
	assert_false(json_str_eq_cstr(s, "abcd"));
	assert_true(json_str_eq_cstr(str_of(S("\"conn\\u005fid\"")), "conn_id"));
	assert_true(json_str_eq_cstr(str_of(S("\"\"")), ""));
	assert_true(json_str_eq(str_of(S("\"\"")), span_make(NULL, 0)));
}

static void expect_escape(struct span in, struct span want)
{
	uint8_t out[512];
	size_t n;

	assert_int_equal(json_escaped_len(in), want.len);
	assert_true(want.len <= JSON_ESCAPED_LEN_MAX(in.len));
	n = json_escape(out, sizeof(out), in);
	if (n != want.len || memcmp(out, want.ptr, n) != 0) {
		print_error("escape: got \"%.*s\" want \"%.*s\"\n", (int)(n == SIZE_MAX ? 0 : n), out,
			    (int)want.len, want.ptr);
		fail();
	}
	assert_int_equal(json_escape(out, want.len, in), want.len);
	if (want.len > 0)
		assert_int_equal(json_escape(out, want.len - 1, in), SIZE_MAX);
	/* the result, quoted, is valid JSON and decodes back (for valid UTF-8 input) */
	uint8_t q[520];
	q[0] = '"';
	memcpy(q + 1, want.ptr, want.len);
	q[want.len + 1] = '"';
	assert_true(json_valid(span_make(q, want.len + 2)));
}

static void test_escape_go(void **state)
{
	(void)state;
	expect_escape(S(""), S(""));
	expect_escape(S("client-abc-0123abcd"), S("client-abc-0123abcd"));
	expect_escape(S("a\"b\\c/d"), S("a\\\"b\\\\c/d"));
	expect_escape(S("\n\r\t"), S("\\n\\r\\t"));
	/* Go >= 1.22 writes \b and \f short */
	expect_escape(S("\b\f"), S("\\b\\f"));
	expect_escape(S("\0\x01\x1f\x0b\x1b"), S("\\u0000\\u0001\\u001f\\u000b\\u001b"));
	expect_escape(S("<script>&amp;"), S("\\u003cscript\\u003e\\u0026amp;"));
	expect_escape(S("\x7f ~'"), S("\x7f ~'"));
	expect_escape(S("\xe2\x80\xa8\xe2\x80\xa9\xe2\x80\xaa"), S("\\u2028\\u2029\xe2\x80\xaa"));
	expect_escape(S("\xc3\xa4\xe2\x82\xac\xf0\x9f\x98\x80"), S("\xc3\xa4\xe2\x82\xac\xf0\x9f\x98\x80"));
	/* a genuine U+FFFD is copied (Go: RuneError with size 3 is not an error) */
	expect_escape(S("\xef\xbf\xbd"), S("\xef\xbf\xbd"));
	/* every byte that does not start a valid sequence is one \ufffd */
	expect_escape(S("\xff"), S("\\ufffd"));
	expect_escape(S("a\x80z"), S("a\\ufffdz"));
	expect_escape(S("\xc0\x80"), S("\\ufffd\\ufffd"));
	expect_escape(S("\xed\xa0\x80"), S("\\ufffd\\ufffd\\ufffd"));
	expect_escape(S("\xe2\x82"), S("\\ufffd\\ufffd"));
	expect_escape(S("\xe2\x82x"), S("\\ufffd\\ufffdx"));
	expect_escape(S("\xf4\x90\x80\x80"), S("\\ufffd\\ufffd\\ufffd\\ufffd"));
	expect_escape(S("\xf0\x9f\x98"), S("\\ufffd\\ufffd\\ufffd"));
	expect_escape(S("\xe2\x80"), S("\\ufffd\\ufffd"));
	expect_escape(S("\xc3\xa4\xc3"), S("\xc3\xa4\\ufffd"));
}

/* Every single byte value against the table Go's encoder uses. */
static void test_escape_all_bytes(void **state)
{
	(void)state;
	for (unsigned b = 0; b < 256; b++) {
		uint8_t in = (uint8_t)b;
		char want[8];
		size_t wl;

		if (b == '"' || b == '\\') {
			want[0] = '\\';
			want[1] = (char)b;
			wl = 2;
		} else if (b == '\b' || b == '\f' || b == '\n' || b == '\r' || b == '\t') {
			want[0] = '\\';
			want[1] = b == '\b' ? 'b' : b == '\f' ? 'f' : b == '\n' ? 'n' : b == '\r' ? 'r' : 't';
			wl = 2;
		} else if (b < 0x20 || b == '<' || b == '>' || b == '&') {
			wl = (size_t)snprintf(want, sizeof(want), "\\u00%02x", b);
		} else if (b < 0x80) {
			want[0] = (char)b;
			wl = 1;
		} else {
			memcpy(want, "\\ufffd", 6);
			wl = 6;
		}
		expect_escape(span_make(&in, 1), span_make(want, wl));
	}
}

static void test_escape_worst_case(void **state)
{
	uint8_t in[100], out[600];

	(void)state;
	memset(in, 0x01, sizeof(in));
	assert_int_equal(json_escaped_len(span_make(in, sizeof(in))), JSON_ESCAPED_LEN_MAX(sizeof(in)));
	assert_int_equal(json_escape(out, sizeof(out), span_make(in, sizeof(in))), 600);
	memset(in, 0xff, sizeof(in));
	assert_int_equal(json_escaped_len(span_make(in, sizeof(in))), JSON_ESCAPED_LEN_MAX(sizeof(in)));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scalars),
		cmocka_unit_test(test_invalid_syntax),
		cmocka_unit_test(test_whitespace),
		cmocka_unit_test(test_escapes),
		cmocka_unit_test(test_utf8),
		cmocka_unit_test(test_string_fast_path_offsets),
		cmocka_unit_test(test_valid_copy_run_offsets),
		cmocka_unit_test(test_valid_copy_random),
		cmocka_unit_test(test_value_copy),
		cmocka_unit_test(test_numbers_big),
		cmocka_unit_test(test_depth_limit),
		cmocka_unit_test(test_skip_value_depth_param),
		cmocka_unit_test(test_skip_value_spans),
		cmocka_unit_test(test_scan_string),
		cmocka_unit_test(test_decode),
		cmocka_unit_test(test_escape_go),
		cmocka_unit_test(test_escape_all_bytes),
		cmocka_unit_test(test_escape_worst_case),
	};
	return cmocka_run_group_tests_name("json", tests, NULL, NULL);
}
