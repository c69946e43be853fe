/*
 * test_utf8.c - the incremental UTF-8 validator against hand-picked edge cases, an
 * independent reference decoder (exhaustively over short sequences), and every way of
 * splitting the input.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ws/utf8.h"

#define UNICODE_MAX 0x10FFFFu
#define SURROGATE_LO 0xD800u
#define SURROGATE_HI 0xDFFFu

struct vec {
	const char *name;
	const char *bytes;
	size_t len;
	bool valid;
	/* invalid vectors: index of the first byte at which the stream cannot be UTF-8;
	 * == len means every byte is a valid prefix and only the end is wrong */
	size_t fail_at;
};

#define V(name, lit) { name, lit, sizeof(lit) - 1, true, 0 }
#define X(name, lit, at) { name, lit, sizeof(lit) - 1, false, at }

static const struct vec vecs[] = {
	V("empty", ""),
	V("ascii", "hello, world"),
	V("nul", "a\0b"),
	V("del", "\x7f"),
	V("U+0080", "\xC2\x80"),
	V("U+07FF", "\xDF\xBF"),
	V("U+0800", "\xE0\xA0\x80"),
	V("U+D7FF", "\xED\x9F\xBF"),
	V("U+E000", "\xEE\x80\x80"),
	V("U+FFFD", "\xEF\xBF\xBD"),
	V("U+FFFE noncharacter is still valid", "\xEF\xBF\xBE"),
	V("U+FFFF", "\xEF\xBF\xBF"),
	V("U+10000", "\xF0\x90\x80\x80"),
	V("U+10FFFF", "\xF4\x8F\xBF\xBF"),
	V("euro", "\xE2\x82\xAC"),
	V("mixed", "a\xC3\xA9z\xE2\x82\xAC!\xF0\x9F\x98\x80."),
	V("kosme", "\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5"),

	X("stray continuation 80", "\x80", 0),
	X("stray continuation BF", "\xBF", 0),
	X("stray after ascii", "abc\x80", 3),
	X("C0 overlong", "\xC0\x80", 0),
	X("C1 overlong", "\xC1\xBF", 0),
	X("E0 overlong U+0000", "\xE0\x80\x80", 1),
	X("E0 overlong U+07FF", "\xE0\x9F\xBF", 1),
	X("F0 overlong U+0000", "\xF0\x80\x80\x80", 1),
	X("F0 overlong U+FFFF", "\xF0\x8F\xBF\xBF", 1),
	X("surrogate D800", "\xED\xA0\x80", 1),
	X("surrogate DFFF", "\xED\xBF\xBF", 1),
	X("CESU pair", "\xED\xA0\xBD\xED\xB2\xA9", 1),
	X("U+110000", "\xF4\x90\x80\x80", 1),
	X("F4 BF", "\xF4\xBF\xBF\xBF", 1),
	X("F5", "\xF5\x80\x80\x80", 0),
	X("F7", "\xF7\xBF\xBF\xBF", 0),
	X("F8 5-byte form", "\xF8\x88\x80\x80\x80", 0),
	X("FC 6-byte form", "\xFC\x84\x80\x80\x80\x80", 0),
	X("FE", "\xFE", 0),
	X("FF", "\xFF", 0),
	X("truncated 2", "\xC2", 1),
	X("truncated 3 of 1", "\xE2", 1),
	X("truncated 3 of 2", "\xE2\x82", 2),
	X("truncated 4 of 3", "\xF0\x9F\x98", 3),
	X("truncated after text", "abc\xF0\x9F", 5),
	X("lead then ascii", "\xC2\x41", 1),
	X("3-byte cut by ascii", "\xE2\x28\xA1", 1),
	X("4-byte cut by lead", "\xF0\x9F\xC2\x80", 2),
	X("extra continuation", "\xC3\xA9\x80", 2),
	X("valid then FF", "\xE2\x82\xAC\xFF", 3),
};

/* Independent reference: decode each code point fully, then judge it. */
static bool ref_valid(const uint8_t *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		uint8_t b = p[i];
		uint32_t cp;
		size_t len;
		if (b < 0x80) {
			i++;
			continue;
		} else if ((b & 0xE0) == 0xC0) {
			len = 2;
			cp = b & 0x1F;
		} else if ((b & 0xF0) == 0xE0) {
			len = 3;
			cp = b & 0x0F;
		} else if ((b & 0xF8) == 0xF0) {
			len = 4;
			cp = b & 0x07;
		} else {
			return false;
		}
		if (n - i < len)
			return false;
		for (size_t k = 1; k < len; k++) {
			if ((p[i + k] & 0xC0) != 0x80)
				return false;
			cp = (cp << 6) | (p[i + k] & 0x3F);
		}
		uint32_t min = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
		if (cp < min || cp > UNICODE_MAX || (cp >= SURROGATE_LO && cp <= SURROGATE_HI))
			return false;
		i += len;
	}
	return true;
}

static size_t encode(uint32_t cp, uint8_t *out)
{
	if (cp < 0x80) {
		out[0] = (uint8_t)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (uint8_t)(0xC0 | (cp >> 6));
		out[1] = (uint8_t)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (uint8_t)(0xE0 | (cp >> 12));
		out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
		out[2] = (uint8_t)(0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (uint8_t)(0xF0 | (cp >> 18));
	out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
	out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
	out[3] = (uint8_t)(0x80 | (cp & 0x3F));
	return 4;
}

/* Encode cp with exactly len bytes, even when that is longer than needed. */
static void encode_overlong(uint32_t cp, size_t len, uint8_t *out)
{
	static const uint8_t lead[] = { 0, 0, 0xC0, 0xE0, 0xF0 };
	for (size_t k = len - 1; k > 0; k--) {
		out[k] = (uint8_t)(0x80 | (cp & 0x3F));
		cp >>= 6;
	}
	out[0] = (uint8_t)(lead[len] | cp);
}

static void test_vectors_whole(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(vecs) / sizeof(vecs[0]); i++) {
		const struct vec *v = &vecs[i];
		const uint8_t *p = (const uint8_t *)v->bytes;
		if (utf8_valid(p, v->len) != v->valid)
			fail_msg("utf8_valid(%s) != %d", v->name, v->valid);
		if (ref_valid(p, v->len) != v->valid)
			fail_msg("reference disagrees on %s", v->name);
	}
}

/* Byte at a time: the first false return is exactly at the first impossible byte. */
static void test_vectors_fail_fast(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(vecs) / sizeof(vecs[0]); i++) {
		const struct vec *v = &vecs[i];
		const uint8_t *p = (const uint8_t *)v->bytes;
		uint32_t s = UTF8_STATE_INIT;
		size_t failed = v->len;
		for (size_t k = 0; k < v->len; k++) {
			if (!utf8_feed(&s, p + k, 1)) {
				failed = k;
				break;
			}
		}
		if (v->valid) {
			if (failed != v->len || !utf8_is_complete(s))
				fail_msg("%s: valid input rejected at %zu", v->name, failed);
			continue;
		}
		if (failed != v->fail_at)
			fail_msg("%s: failed at %zu, expected %zu", v->name, failed, v->fail_at);
		if (failed == v->len && utf8_is_complete(s))
			fail_msg("%s: truncated input reported complete", v->name);
	}
}

/* Every two-piece split of every vector gives the whole-buffer verdict. */
static void test_vectors_every_split(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(vecs) / sizeof(vecs[0]); i++) {
		const struct vec *v = &vecs[i];
		const uint8_t *p = (const uint8_t *)v->bytes;
		for (size_t cut = 0; cut <= v->len; cut++) {
			uint32_t s = UTF8_STATE_INIT;
			bool ok = utf8_feed(&s, p, cut);
			ok = ok && utf8_feed(&s, p + cut, v->len - cut);
			ok = ok && utf8_is_complete(s);
			if (ok != v->valid)
				fail_msg("%s split at %zu: %d", v->name, cut, ok);
		}
	}
}

static void test_poisoned_state_stays_poisoned(void **state)
{
	(void)state;
	uint32_t s = UTF8_STATE_INIT;
	assert_false(utf8_feed(&s, (const uint8_t *)"\xFF", 1));
	assert_false(utf8_feed(&s, (const uint8_t *)"abc", 3));
	assert_false(utf8_feed(&s, (const uint8_t *)"", 0));
	assert_false(utf8_is_complete(s));
}

static void test_incomplete_then_completed(void **state)
{
	(void)state;
	uint32_t s = UTF8_STATE_INIT;
	assert_true(utf8_is_complete(s));
	assert_true(utf8_feed(&s, (const uint8_t *)"\xF0\x9F", 2));
	assert_false(utf8_is_complete(s));
	assert_true(utf8_feed(&s, (const uint8_t *)"", 0));
	assert_false(utf8_is_complete(s));
	assert_true(utf8_feed(&s, (const uint8_t *)"\x98", 1));
	assert_false(utf8_is_complete(s));
	assert_true(utf8_feed(&s, (const uint8_t *)"\x80", 1));
	assert_true(utf8_is_complete(s));
	/* The narrowed range applies to the first continuation byte only. */
	s = UTF8_STATE_INIT;
	assert_true(utf8_feed(&s, (const uint8_t *)"\xED\x9F", 2));
	assert_true(utf8_feed(&s, (const uint8_t *)"\xBF", 1));
	assert_true(utf8_is_complete(s));
}

/* Every scalar value is accepted; every surrogate encoded as 3 bytes is rejected. */
static void test_all_code_points(void **state)
{
	(void)state;
	uint8_t buf[4];
	for (uint32_t cp = 0; cp <= UNICODE_MAX; cp++) {
		size_t n = encode(cp, buf);
		bool want = cp < SURROGATE_LO || cp > SURROGATE_HI;
		if (utf8_valid(buf, n) != want)
			fail_msg("U+%04X: expected %d", cp, want);
	}
	/* Beyond U+10FFFF, in 4-byte form. */
	for (uint32_t cp = UNICODE_MAX + 1; cp <= 0x1FFFFF; cp += 0x111) {
		encode_overlong(cp, 4, buf);
		if (utf8_valid(buf, 4))
			fail_msg("U+%X beyond Unicode accepted", cp);
	}
}

/* Every overlong form of every code point that fits in a shorter one. */
static void test_all_overlongs(void **state)
{
	(void)state;
	uint8_t buf[4];
	static const uint32_t shorter_limit[] = { 0, 0, 0x80, 0x800, 0x10000 };
	for (size_t len = 2; len <= 4; len++) {
		for (uint32_t cp = 0; cp < shorter_limit[len]; cp++) {
			encode_overlong(cp, len, buf);
			if (utf8_valid(buf, len))
				fail_msg("overlong U+%04X in %zu bytes accepted", cp, len);
		}
	}
}

/* All 1- and 2-byte inputs, and all 3-byte inputs with a non-ASCII lead. */
static void test_exhaustive_short_against_reference(void **state)
{
	(void)state;
	uint8_t b[3];
	for (unsigned x = 0; x < 256; x++) {
		b[0] = (uint8_t)x;
		assert_int_equal(utf8_valid(b, 1), ref_valid(b, 1));
		for (unsigned y = 0; y < 256; y++) {
			b[1] = (uint8_t)y;
			if (utf8_valid(b, 2) != ref_valid(b, 2))
				fail_msg("%02X %02X", x, y);
		}
	}
	for (unsigned x = 0xC0; x < 256; x++) {
		for (unsigned y = 0x70; y < 0xD0; y++) {
			for (unsigned z = 0x70; z < 0xD0; z++) {
				b[0] = (uint8_t)x;
				b[1] = (uint8_t)y;
				b[2] = (uint8_t)z;
				if (utf8_valid(b, 3) != ref_valid(b, 3))
					fail_msg("%02X %02X %02X", x, y, z);
			}
		}
	}
}

/* The ASCII word skip must not jump over a non-ASCII byte at any alignment. */
static void test_ascii_fast_path_alignment(void **state)
{
	(void)state;
	uint8_t buf[80];
	for (size_t bad = 0; bad < 64; bad++) {
		for (size_t start = 0; start < 8; start++) {
			memset(buf, 'a', sizeof(buf));
			buf[start + bad] = 0x80;
			assert_false(utf8_valid(buf + start, 64));
			/* A valid 2-byte character there instead passes... */
			buf[start + bad] = 0xC3;
			buf[start + bad + 1] = 0xA9;
			assert_true(utf8_valid(buf + start, 66));
			/* ...and cut before its end does not. */
			assert_false(utf8_valid(buf + start, bad + 1));
		}
	}
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Random mostly-valid text, fed in random pieces, matches the reference. */
static void test_random_against_reference(void **state)
{
	(void)state;
	uint64_t rng = 0x9E3779B97F4A7C15ull;
	uint8_t buf[256];
	for (int iter = 0; iter < 20000; iter++) {
		size_t n = 0;
		size_t want = rng_next(&rng) % 200;
		while (n + 4 <= want) {
			uint64_t r = rng_next(&rng);
			uint32_t cp;
			switch (r % 4) {
			case 0: cp = (uint32_t)(r >> 8) % 0x80; break;
			case 1: cp = (uint32_t)(r >> 8) % 0x800; break;
			case 2: cp = (uint32_t)(r >> 8) % 0x10000; break;
			default: cp = (uint32_t)(r >> 8) % 0x110000; break;
			}
			n += encode(cp, buf + n);
		}
		if (n && rng_next(&rng) % 3 == 0) /* corrupt one byte */
			buf[rng_next(&rng) % n] = (uint8_t)rng_next(&rng);
		bool whole = utf8_valid(buf, n);
		assert_int_equal(whole, ref_valid(buf, n));

		uint32_t s = UTF8_STATE_INIT;
		bool ok = true;
		size_t i = 0;
		while (ok && i < n) {
			size_t k = 1 + rng_next(&rng) % 17;
			if (k > n - i)
				k = n - i;
			ok = utf8_feed(&s, buf + i, k);
			i += k;
		}
		assert_int_equal(ok && utf8_is_complete(s), whole);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_vectors_whole),
		cmocka_unit_test(test_vectors_fail_fast),
		cmocka_unit_test(test_vectors_every_split),
		cmocka_unit_test(test_poisoned_state_stays_poisoned),
		cmocka_unit_test(test_incomplete_then_completed),
		cmocka_unit_test(test_all_code_points),
		cmocka_unit_test(test_all_overlongs),
		cmocka_unit_test(test_exhaustive_short_against_reference),
		cmocka_unit_test(test_ascii_fast_path_alignment),
		cmocka_unit_test(test_random_against_reference),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
