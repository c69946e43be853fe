/*
 * test_ws_frame.c - frame header parse/encode at every length boundary, every header
 * violation, masking in pieces at odd offsets, close codes and close payloads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rng.h"
#include "simd_levels.h"
#include "ws/utf8.h"
#include "ws/ws_frame.h"

#define PROTO (-WS_CLOSE_PROTOCOL_ERROR)

static const uint8_t key[4] = { 0x37, 0xfa, 0x21, 0x3d };

/* Parse with every strict prefix (must say "need more" or fail the same way) and then
 * in full; returns the full verdict. */
static int parse_all_prefixes(const uint8_t *p, size_t n, bool require_masked,
			      struct ws_frame_header *h)
{
	int full = ws_frame_header_parse(p, n, require_masked, h);
	for (size_t k = 0; k < n; k++) {
		struct ws_frame_header tmp;
		int rc = ws_frame_header_parse(p, k, require_masked, &tmp);
		if (full > 0 && (size_t)full > k && rc != 0)
			fail_msg("prefix %zu of a %d-byte header: %d", k, full, rc);
		if (rc < 0 && rc != full)
			fail_msg("prefix %zu fails with %d, whole with %d", k, rc, full);
	}
	return full;
}

static void test_parse_small_unmasked(void **state)
{
	(void)state;
	struct ws_frame_header h;
	const uint8_t b[] = { 0x81, 0x05, 'H', 'e', 'l', 'l', 'o' };
	assert_int_equal(parse_all_prefixes(b, sizeof(b), false, &h), 2);
	assert_true(h.fin);
	assert_int_equal(h.opcode, WS_OP_TEXT);
	assert_false(h.masked);
	assert_int_equal(h.header_len, 2);
	assert_int_equal(h.payload_len, 5);
}

static void test_parse_rfc_masked_example(void **state)
{
	(void)state;
	/* RFC 6455 §5.7: a single-frame masked text message "Hello". */
	const uint8_t b[] = { 0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58 };
	struct ws_frame_header h;
	assert_int_equal(parse_all_prefixes(b, 6, true, &h), 6);
	assert_true(h.masked);
	assert_memory_equal(h.mask_key, key, 4);
	assert_int_equal(h.payload_len, 5);
	uint8_t p[5];
	memcpy(p, b + 6, 5);
	ws_mask(p, 5, h.mask_key, 0);
	assert_memory_equal(p, "Hello", 5);

	/* The same header is refused where the opposite masking is required. */
	assert_int_equal(ws_frame_header_parse(b, sizeof(b), false, &h), PROTO);
	const uint8_t unmasked[] = { 0x81, 0x05 };
	assert_int_equal(ws_frame_header_parse(unmasked, 2, true, &h), PROTO);
}

struct len_case {
	uint64_t len;
	size_t hdr; /* unmasked header length */
	uint8_t bytes[10];
};

static const struct len_case len_cases[] = {
	{ 0, 2, { 0x82, 0x00 } },
	{ 1, 2, { 0x82, 0x01 } },
	{ 125, 2, { 0x82, 0x7d } },
	{ 126, 4, { 0x82, 0x7e, 0x00, 0x7e } },
	{ 127, 4, { 0x82, 0x7e, 0x00, 0x7f } },
	{ 65535, 4, { 0x82, 0x7e, 0xff, 0xff } },
	{ 65536, 10, { 0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0 } },
	{ 0xFFFFFFFFull, 10, { 0x82, 0x7f, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff } },
	{ 0x7FFFFFFFFFFFFFFFull, 10, { 0x82, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff } },
};

static void test_length_boundaries(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(len_cases) / sizeof(len_cases[0]); i++) {
		const struct len_case *c = &len_cases[i];
		uint8_t out[WS_FRAME_HEADER_BYTES_MAX];
		struct ws_frame_header h;

		/* encode gives exactly the reference bytes (minimal encoding) */
		size_t n = ws_frame_header_encode(out, true, WS_OP_BINARY, c->len, NULL);
		assert_int_equal(n, c->hdr);
		assert_memory_equal(out, c->bytes, n);

		assert_int_equal(parse_all_prefixes(c->bytes, c->hdr, false, &h), (int)c->hdr);
		assert_int_equal(h.payload_len, c->len);
		assert_int_equal(h.header_len, c->hdr);

		/* masked: the key follows the length */
		n = ws_frame_header_encode(out, true, WS_OP_BINARY, c->len, key);
		assert_int_equal(n, c->hdr + 4);
		assert_int_equal(out[1] & 0x80, 0x80);
		assert_memory_equal(out + c->hdr, key, 4);
		assert_int_equal(parse_all_prefixes(out, n, true, &h), (int)n);
		assert_int_equal(h.payload_len, c->len);
		assert_memory_equal(h.mask_key, key, 4);
	}
}

static void test_non_minimal_lengths_rejected(void **state)
{
	(void)state;
	struct ws_frame_header h;
	const uint8_t l16_0[] = { 0x82, 0x7e, 0x00, 0x00 };
	const uint8_t l16_125[] = { 0x82, 0x7e, 0x00, 0x7d };
	const uint8_t l64_0[] = { 0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0 };
	const uint8_t l64_125[] = { 0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0x7d };
	const uint8_t l64_126[] = { 0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0x7e };
	const uint8_t l64_65535[] = { 0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	assert_int_equal(parse_all_prefixes(l16_0, sizeof(l16_0), false, &h), PROTO);
	assert_int_equal(parse_all_prefixes(l16_125, sizeof(l16_125), false, &h), PROTO);
	assert_int_equal(parse_all_prefixes(l64_0, sizeof(l64_0), false, &h), PROTO);
	assert_int_equal(parse_all_prefixes(l64_125, sizeof(l64_125), false, &h), PROTO);
	assert_int_equal(parse_all_prefixes(l64_126, sizeof(l64_126), false, &h), PROTO);
	assert_int_equal(parse_all_prefixes(l64_65535, sizeof(l64_65535), false, &h), PROTO);
	/* rejected before the mask key arrives, too */
	const uint8_t masked16[] = { 0x82, 0xfe, 0x00, 0x10 };
	assert_int_equal(ws_frame_header_parse(masked16, sizeof(masked16), true, &h), PROTO);
}

static void test_64bit_msb_rejected_early(void **state)
{
	(void)state;
	struct ws_frame_header h;
	const uint8_t b[] = { 0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4 };
	assert_int_equal(parse_all_prefixes(b, sizeof(b), true, &h), PROTO);
	/* three bytes are enough to know */
	assert_int_equal(ws_frame_header_parse(b, 3, true, &h), PROTO);
	assert_int_equal(ws_frame_header_parse(b, 2, true, &h), 0);
	const uint8_t all[] = { 0x82, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	assert_int_equal(ws_frame_header_parse(all, sizeof(all), false, &h), PROTO);
}

static void test_rsv_bits_rejected(void **state)
{
	(void)state;
	struct ws_frame_header h;
	for (unsigned rsv = 0x10; rsv <= 0x70; rsv += 0x10) {
		uint8_t b[] = { (uint8_t)(0x81 | rsv), 0x80, 1, 2, 3, 4 };
		assert_int_equal(parse_all_prefixes(b, sizeof(b), true, &h), PROTO);
		assert_int_equal(ws_frame_header_parse(b, 1, true, &h), PROTO);
	}
}

static void test_opcodes(void **state)
{
	(void)state;
	struct ws_frame_header h;
	for (unsigned op = 0; op < 16; op++) {
		uint8_t b[] = { (uint8_t)(0x80 | op), 0x80, 1, 2, 3, 4 };
		bool known = op <= 2 || (op >= 8 && op <= 10);
		int rc = parse_all_prefixes(b, sizeof(b), true, &h);
		if (known) {
			assert_int_equal(rc, 6);
			assert_int_equal(h.opcode, op);
		} else {
			assert_int_equal(rc, PROTO);
			assert_int_equal(ws_frame_header_parse(b, 1, true, &h), PROTO);
		}
	}
}

static void test_control_frame_rules(void **state)
{
	(void)state;
	struct ws_frame_header h;
	static const uint8_t ctl[] = { WS_OP_CLOSE, WS_OP_PING, WS_OP_PONG };
	for (size_t i = 0; i < sizeof(ctl); i++) {
		uint8_t ok125[] = { (uint8_t)(0x80 | ctl[i]), 0x80 | 125, 1, 2, 3, 4 };
		assert_int_equal(parse_all_prefixes(ok125, sizeof(ok125), true, &h), 6);
		assert_int_equal(h.payload_len, 125);

		uint8_t nofin[] = { ctl[i], 0x80, 1, 2, 3, 4 };
		assert_int_equal(parse_all_prefixes(nofin, sizeof(nofin), true, &h), PROTO);

		uint8_t len126[] = { (uint8_t)(0x80 | ctl[i]), 0x80 | 126, 0, 126, 1, 2, 3, 4 };
		assert_int_equal(parse_all_prefixes(len126, sizeof(len126), true, &h), PROTO);
		assert_int_equal(ws_frame_header_parse(len126, 2, true, &h), PROTO);

		uint8_t len127[] = { (uint8_t)(0x80 | ctl[i]), 0x80 | 127, 0, 0, 0, 0, 0, 1, 0, 0,
				     1, 2, 3, 4 };
		assert_int_equal(parse_all_prefixes(len127, sizeof(len127), true, &h), PROTO);
	}
	/* data frames may be unfinished */
	uint8_t text_nofin[] = { WS_OP_TEXT, 0x80, 1, 2, 3, 4 };
	assert_int_equal(parse_all_prefixes(text_nofin, sizeof(text_nofin), true, &h), 6);
	assert_false(h.fin);
	uint8_t cont[] = { WS_OP_CONTINUATION, 0x80 | 3, 1, 2, 3, 4 };
	assert_int_equal(parse_all_prefixes(cont, sizeof(cont), true, &h), 6);
	assert_int_equal(h.opcode, WS_OP_CONTINUATION);
}

static void test_empty_input(void **state)
{
	(void)state;
	struct ws_frame_header h;
	assert_int_equal(ws_frame_header_parse(NULL, 0, true, &h), 0);
}

static void test_encode_parse_round_trip(void **state)
{
	(void)state;
	static const uint64_t lens[] = { 0, 1, 124, 125, 126, 127, 1000, 65534, 65535, 65536,
					 65537, 1ull << 32, (1ull << 63) - 1 };
	static const uint8_t ops[] = { WS_OP_CONTINUATION, WS_OP_TEXT, WS_OP_BINARY,
				       WS_OP_CLOSE, WS_OP_PING, WS_OP_PONG };
	for (size_t o = 0; o < sizeof(ops); o++) {
		for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
			for (int fin = 0; fin <= 1; fin++) {
				for (int masked = 0; masked <= 1; masked++) {
					bool control = ops[o] >= 8;
					if (control && (!fin || lens[l] > 125))
						continue;
					uint8_t out[WS_FRAME_HEADER_BYTES_MAX];
					struct ws_frame_header h;
					size_t n = ws_frame_header_encode(out, fin, ops[o], lens[l],
									  masked ? key : NULL);
					assert_int_equal(ws_frame_header_parse(out, n, masked, &h),
							 (int)n);
					assert_int_equal(h.fin, fin);
					assert_int_equal(h.opcode, ops[o]);
					assert_int_equal(h.masked, masked);
					assert_int_equal(h.payload_len, lens[l]);
					assert_int_equal(h.header_len, n);
					if (masked)
						assert_memory_equal(h.mask_key, key, 4);
				}
			}
		}
	}
}

static void naive_mask(uint8_t *p, size_t n, const uint8_t k[4], uint64_t offset)
{
	for (size_t i = 0; i < n; i++)
		p[i] ^= k[(offset + i) % 4];
}

static void test_mask_matches_naive_at_every_offset(void **state)
{
	(void)state;
	uint8_t src[96], a[104], b[104];
	for (size_t i = 0; i < sizeof(src); i++)
		src[i] = (uint8_t)(i * 7 + 3);
	for (size_t align = 0; align < 8; align++) {
		for (uint64_t off = 0; off < 9; off++) {
			for (size_t n = 0; n <= sizeof(src); n++) {
				memcpy(a + align, src, n);
				memcpy(b + align, src, n);
				ws_mask(a + align, n, key, off);
				naive_mask(b + align, n, key, off);
				if (memcmp(a + align, b + align, n) != 0)
					fail_msg("align %zu offset %u n %zu", align, (unsigned)off, n);
			}
		}
	}
	/* offsets beyond 32 bits keep their phase */
	memcpy(a, src, 40);
	memcpy(b, src, 40);
	ws_mask(a, 40, key, (1ull << 40) + 3);
	naive_mask(b, 40, key, 3);
	assert_memory_equal(a, b, 40);
}

static void test_mask_in_pieces_equals_whole(void **state)
{
	(void)state;
	uint8_t whole[300], pieces[300];
	for (size_t i = 0; i < sizeof(whole); i++)
		whole[i] = (uint8_t)(i ^ 0x5a);
	memcpy(pieces, whole, sizeof(whole));
	ws_mask(whole, sizeof(whole), key, 0);
	static const size_t cuts[] = { 1, 3, 2, 17, 5, 64, 7, 1, 100, 11, 89 };
	size_t off = 0;
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		ws_mask(pieces + off, cuts[i], key, off);
		off += cuts[i];
	}
	assert_int_equal(off, sizeof(pieces));
	assert_memory_equal(whole, pieces, sizeof(whole));
	/* masking is its own inverse */
	ws_mask(whole, sizeof(whole), key, 0);
	for (size_t i = 0; i < sizeof(whole); i++)
		assert_int_equal(whole[i], (uint8_t)(i ^ 0x5a));
}

static void test_close_codes(void **state)
{
	(void)state;
	for (uint32_t c = 0; c < 70000; c++) {
		bool want = (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) ||
			    (c >= 3000 && c <= 4999);
		if (ws_close_code_is_valid_received(c) != want)
			fail_msg("received code %u", c);
		if (ws_close_code_is_sendable(c) != want)
			fail_msg("sendable code %u", c);
	}
	assert_false(ws_close_code_is_valid_received(999));
	assert_false(ws_close_code_is_valid_received(1004));
	assert_false(ws_close_code_is_valid_received(1005));
	assert_false(ws_close_code_is_valid_received(1006));
	assert_false(ws_close_code_is_valid_received(1015));
	assert_false(ws_close_code_is_valid_received(1016));
	assert_false(ws_close_code_is_valid_received(2999));
	assert_false(ws_close_code_is_valid_received(5000));
	assert_true(ws_close_code_is_valid_received(1000));
	assert_true(ws_close_code_is_valid_received(1014));
	assert_true(ws_close_code_is_valid_received(3000));
	assert_true(ws_close_code_is_valid_received(4999));
	assert_false(ws_close_code_is_valid_received(0x100000000ull - 1));
}

static int close_parse(const void *p, size_t n, uint16_t *code, const uint8_t **reason,
		       size_t *reason_len)
{
	return ws_close_payload_parse(p, n, code, reason, reason_len);
}

static void test_close_payload_parse(void **state)
{
	(void)state;
	uint16_t code = 77;
	const uint8_t *reason;
	size_t rlen = 77;

	assert_int_equal(close_parse("", 0, &code, &reason, &rlen), 0);
	assert_int_equal(code, 0);
	assert_int_equal(rlen, 0);

	assert_int_equal(close_parse("\x03", 1, &code, &reason, &rlen), WS_CLOSE_PROTOCOL_ERROR);

	const char *p = "\x03\xe8";
	assert_int_equal(close_parse(p, 2, &code, &reason, &rlen), 0);
	assert_int_equal(code, 1000);
	assert_int_equal(rlen, 0);

	p = "\x0f\xa0see you \xe2\x82\xac";
	assert_int_equal(close_parse(p, 2 + 11, &code, &reason, &rlen), 0);
	assert_int_equal(code, 4000);
	assert_int_equal(rlen, 11);
	assert_ptr_equal(reason, (const uint8_t *)p + 2);
	assert_memory_equal(reason, "see you \xe2\x82\xac", 11);

	/* reason cut mid code point, or plain invalid */
	assert_int_equal(close_parse(p, 2 + 10, &code, &reason, &rlen), WS_CLOSE_INVALID_DATA);
	assert_int_equal(close_parse("\x03\xe8\xff", 3, &code, &reason, &rlen),
			 WS_CLOSE_INVALID_DATA);
	assert_int_equal(close_parse("\x03\xe8\xed\xa0\x80", 5, &code, &reason, &rlen),
			 WS_CLOSE_INVALID_DATA);

	static const uint16_t bad[] = { 0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999,
					5000, 65535 };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint8_t b[4] = { (uint8_t)(bad[i] >> 8), (uint8_t)bad[i], 'o', 'k' };
		assert_int_equal(close_parse(b, 4, &code, &reason, &rlen), WS_CLOSE_PROTOCOL_ERROR);
		assert_int_equal(close_parse(b, 2, &code, &reason, &rlen), WS_CLOSE_PROTOCOL_ERROR);
	}
	/* a bad code wins over a bad reason: the code is read first */
	assert_int_equal(close_parse("\x03\xed\xff", 3, &code, &reason, &rlen),
			 WS_CLOSE_PROTOCOL_ERROR);

	uint8_t big[126];
	memset(big, 'x', sizeof(big));
	big[0] = 0x03;
	big[1] = 0xe9;
	assert_int_equal(close_parse(big, 125, &code, &reason, &rlen), 0);
	assert_int_equal(code, 1001);
	assert_int_equal(rlen, 123);
	assert_int_equal(close_parse(big, 126, &code, &reason, &rlen), WS_CLOSE_PROTOCOL_ERROR);
}

static void test_close_payload_encode(void **state)
{
	(void)state;
	uint8_t out[WS_CONTROL_PAYLOAD_BYTES_MAX];
	uint16_t code;
	const uint8_t *reason;
	size_t rlen;

	assert_int_equal(ws_close_payload_encode(out, 0, "ignored", 7), 0);

	size_t n = ws_close_payload_encode(out, 1001, NULL, 0);
	assert_int_equal(n, 2);
	assert_memory_equal(out, "\x03\xe9", 2);

	n = ws_close_payload_encode(out, 4409, "replaced", 8);
	assert_int_equal(n, 10);
	assert_memory_equal(out, "\x11\x39replaced", 10);
	assert_int_equal(ws_close_payload_parse(out, n, &code, &reason, &rlen), 0);
	assert_int_equal(code, 4409);
	assert_int_equal(rlen, 8);

	/* long ASCII reason: truncated to 123 bytes */
	char longr[200];
	memset(longr, 'r', sizeof(longr));
	n = ws_close_payload_encode(out, 1011, longr, sizeof(longr));
	assert_int_equal(n, WS_CONTROL_PAYLOAD_BYTES_MAX);
	assert_int_equal(ws_close_payload_parse(out, n, &code, &reason, &rlen), 0);
	assert_int_equal(rlen, WS_CLOSE_REASON_BYTES_MAX);

	/* a 3-byte character straddling byte 123 is dropped whole, never split */
	for (size_t at = 118; at <= 123; at++) {
		memset(longr, 'r', sizeof(longr));
		memcpy(longr + at, "\xe2\x82\xac", 3);
		n = ws_close_payload_encode(out, 1000, longr, sizeof(longr));
		size_t want = at + 3 <= WS_CLOSE_REASON_BYTES_MAX ? WS_CLOSE_REASON_BYTES_MAX : at;
		assert_int_equal(n, 2 + want);
		assert_true(utf8_valid(out + 2, n - 2));
		assert_int_equal(ws_close_payload_parse(out, n, &code, &reason, &rlen), 0);
	}
	/* exactly 123 bytes is not truncated */
	n = ws_close_payload_encode(out, 1000, longr, WS_CLOSE_REASON_BYTES_MAX);
	assert_int_equal(n, WS_CONTROL_PAYLOAD_BYTES_MAX);
}

/* The fused copy + unmask + ASCII test against the simple byte loop, at every level of
 * instructions this CPU has (core/simd.h): random lengths (every AVX2/SSE2/word/tail
 * split), alignments, key offsets, in place and copying, with all-ASCII payloads and
 * payloads with one high byte anywhere. */
static void unmask_ascii_matches_simple_path(void)
{
	enum { MAX = 300, ROUNDS = 20000 };
	static uint8_t src[MAX + 16], dst[MAX + 16], want[MAX];
	rng_state = 0x5eed0017;
	for (int round = 0; round < ROUNDS; round++) {
		size_t n = (size_t)rng_below(MAX + 1);
		size_t sa = (size_t)rng_below(16), da = (size_t)rng_below(16);
		uint8_t mkey[4];
		for (int k = 0; k < 4; k++)
			mkey[k] = (uint8_t)rng_next();
		uint64_t off = rng_next() >> (rng_below(64));
		/* the plaintext: ASCII, with a high byte at a random place half the time */
		bool want_ascii = true;
		for (size_t j = 0; j < n; j++)
			want[j] = (uint8_t)rng_below(0x80);
		if (n && (round & 1)) {
			want[rng_below(n)] |= 0x80;
			want_ascii = false;
		}
		for (size_t j = 0; j < n; j++)
			src[sa + j] = want[j] ^ mkey[(off + j) & 3u];
		bool in_place = round % 3 == 0;
		uint8_t *out = in_place ? src + sa : dst + da;
		bool ascii = ws_unmask_ascii(out, src + sa, n, mkey, off);
		assert_int_equal(ascii, want_ascii);
		if (n)
			assert_memory_equal(out, want, n);
	}
}

static void test_unmask_ascii_matches_simple_path(void **state)
{
	(void)state;
	at_every_simd_level("unmask", unmask_ascii_matches_simple_path);
	/* asking for more than the CPU has gives what it has */
	assert_int_equal(simd_select(SIMD_AVX2), simd_detect());
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_small_unmasked),
		cmocka_unit_test(test_parse_rfc_masked_example),
		cmocka_unit_test(test_length_boundaries),
		cmocka_unit_test(test_non_minimal_lengths_rejected),
		cmocka_unit_test(test_64bit_msb_rejected_early),
		cmocka_unit_test(test_rsv_bits_rejected),
		cmocka_unit_test(test_opcodes),
		cmocka_unit_test(test_control_frame_rules),
		cmocka_unit_test(test_empty_input),
		cmocka_unit_test(test_encode_parse_round_trip),
		cmocka_unit_test(test_mask_matches_naive_at_every_offset),
		cmocka_unit_test(test_mask_in_pieces_equals_whole),
		cmocka_unit_test(test_unmask_ascii_matches_simple_path),
		cmocka_unit_test(test_close_codes),
		cmocka_unit_test(test_close_payload_parse),
		cmocka_unit_test(test_close_payload_encode),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
