/*
 * test_ws_handshake.c - Sec-WebSocket-Key validation and Sec-WebSocket-Accept.
 *
 * Expected accept values other than the RFC's own example were computed independently
 * (Python hashlib + base64), so a mistake in how we drive BoringSSL cannot hide in both
 * the code and the expectation.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ws/ws_handshake.h"

/*
 * Keys are handed over in an exactly-sized heap copy so that ASan catches any read
 * past the span (a string literal would have its NUL and neighbours after it).
 */
static bool key_valid_mem(const void *p, size_t n)
{
	uint8_t *copy = malloc(n ? n : 1);
	bool ok;

	assert_non_null(copy);
	memcpy(copy, p, n);
	ok = ws_handshake_key_valid(span_make(copy, n));
	free(copy);
	return ok;
}

static bool key_valid(const char *s)
{
	return key_valid_mem(s, strlen(s));
}

static void assert_accept(const char *key, const char *want)
{
	char out[WS_ACCEPT_KEY_LEN + 1];
	size_t n = strlen(key);
	uint8_t *copy = malloc(n);

	assert_non_null(copy);
	memcpy(copy, key, n);
	memset(out, 'x', sizeof(out));
	assert_true(ws_handshake_accept(span_make(copy, n), out));
	free(copy);
	assert_int_equal(strlen(out), WS_ACCEPT_KEY_LEN);
	assert_string_equal(out, want);
}

static void assert_no_accept(const char *key)
{
	char out[WS_ACCEPT_KEY_LEN + 1];

	assert_false(ws_handshake_accept(span_cstr(key), out));
}

/* RFC 6455 §1.3: the worked example from the specification itself. */
static void test_rfc6455_example(void **state)
{
	(void)state;
	assert_true(key_valid("dGhlIHNhbXBsZSBub25jZQ=="));
	assert_accept("dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static void test_more_vectors(void **state)
{
	(void)state;
	assert_accept("AAECAwQFBgcICQoLDA0ODw==", "Bz3qJYTGdOe8gUSpLosEdiLKDrk=");
	assert_accept("/////////////////////w==", "XXpj4jYzLM2yUE0C7TIgMwTQh2g=");
	assert_accept("AAAAAAAAAAAAAAAAAAAAAA==", "ICX+Yqv66kxgM0FcWaLWlFLwTAI=");
	/* '+' and '/' are part of the standard alphabet. */
	assert_accept("++++6/vvvuv7777r++++6w==", "3jYpGVKJQScgQU1PVpqOGN0iytU=");
}

/* The key is hashed as text: a different spelling is a different accept value. */
static void test_key_hashed_verbatim(void **state)
{
	char a[WS_ACCEPT_KEY_LEN + 1], b[WS_ACCEPT_KEY_LEN + 1];

	(void)state;
	assert_true(ws_handshake_accept(span_cstr("dGhlIHNhbXBsZSBub25jZQ=="), a));
	assert_true(ws_handshake_accept(span_cstr("dGhlIHNhbXBsZSBub25jZg=="), b));
	assert_string_not_equal(a, b);
}

static void test_wrong_decoded_length(void **state)
{
	(void)state;
	/* 15 bytes: 20 characters, no padding */
	assert_false(key_valid("AAECAwQFBgcICQoLDA0O"));
	/* 17 bytes: 24 characters with one '=' */
	assert_false(key_valid("AAECAwQFBgcICQoLDA0ODxA="));
	/* 18 bytes: 24 characters, no padding */
	assert_false(key_valid("AAECAwQFBgcICQoLDA0ODxAR"));
	/* 32 bytes */
	assert_false(key_valid("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="));
	assert_false(key_valid(""));
	assert_false(key_valid("===="));
	assert_false(key_valid("========================"));
	assert_no_accept("AAECAwQFBgcICQoLDA0O");
	assert_no_accept("AAECAwQFBgcICQoLDA0ODxA=");
	assert_no_accept("");
}

static void test_bad_alphabet(void **state)
{
	(void)state;
	/* URL-safe alphabet ('-', '_') is not the standard one RFC 6455 uses. */
	assert_false(key_valid("-----6_vvuv7777r----6w=="));
	assert_false(key_valid("dGhlIHNhbXBsZSBub25jZ_=="));
	assert_false(key_valid("dGhlIHNhbXBsZSBub25jZ-=="));
	assert_false(key_valid("dGhlIHNhbXBs*SBub25jZQ=="));
	assert_false(key_valid("dGhlIHNhbXBs.SBub25jZQ=="));
	assert_false(key_valid("dGhlIHNhbXBs\xc3\xa9SBub25jZQ="));
	assert_false(key_valid_mem("dGhlIHNhbXBs\0SBub25jZQ==", 24));
	/* '=' is only padding at the very end. */
	assert_false(key_valid("dGhl=HNhbXBsZSBub25jZQ=="));
	assert_false(key_valid("dGhlIHNhbXBsZSBub25jZQ=A"));
	assert_false(key_valid("dGhlIHNhbXBsZSBub25j=Q=="));
	assert_no_accept("dGhlIHNhbXBsZSBub25jZ_==");
}

static void test_missing_padding(void **state)
{
	(void)state;
	assert_false(key_valid("dGhlIHNhbXBsZSBub25jZQ"));
	assert_false(key_valid("dGhlIHNhbXBsZSBub25jZQ="));
	assert_false(key_valid("dGhlIHNhbXBsZSBub25jZQ==="));
	assert_no_accept("dGhlIHNhbXBsZSBub25jZQ");
}

/* The caller trims OWS; anything left is not base64. */
static void test_whitespace(void **state)
{
	(void)state;
	assert_false(key_valid(" dGhlIHNhbXBsZSBub25jZQ=="));
	assert_false(key_valid("dGhlIHNhbXBsZSBub25jZQ== "));
	assert_false(key_valid("dGhlIHNhbXBs ZSBub25jZQ=="));
	assert_false(key_valid("dGhlIHNhbXBsZSBub25jZQ==\t"));
	assert_false(key_valid("dGhlIHNhbXBs\r\nZSBub25jZQ=="));
	/* 24 characters, whitespace replacing a data character */
	assert_false(key_valid("dGhlIHNhbXBs ZSBub25jZQ="));
	assert_false(key_valid("dGhlIHNhbXBsZSBub25jZ\n=="));
	assert_no_accept(" dGhlIHNhbXBsZSBub25jZQ==");
}

/*
 * Unused low bits in the last quad ("ZR==" instead of "ZQ==") still decode to 16
 * bytes, and BoringSSL does not insist on canonical encodings. We accept them: the
 * contract is "decodes to exactly 16 bytes", the accept value is computed over the
 * text the client sent, so there is nothing to confuse, and a stricter check would
 * only add ways for odd-but-harmless clients to fail.
 */
static void test_noncanonical_tail_accepted(void **state)
{
	(void)state;
	assert_true(key_valid("dGhlIHNhbXBsZSBub25jZR=="));
	assert_true(key_valid("AAAAAAAAAAAAAAAAAAAAAB=="));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rfc6455_example),
		cmocka_unit_test(test_more_vectors),
		cmocka_unit_test(test_key_hashed_verbatim),
		cmocka_unit_test(test_wrong_decoded_length),
		cmocka_unit_test(test_bad_alphabet),
		cmocka_unit_test(test_missing_padding),
		cmocka_unit_test(test_whitespace),
		cmocka_unit_test(test_noncanonical_tail_accepted),
	};

	return cmocka_run_group_tests_name("ws_handshake", tests, NULL, NULL);
}
