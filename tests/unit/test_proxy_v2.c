/*
 * test_proxy_v2.c - the PROXY protocol v2 header parser (http/proxy_v2.h): the headers
 * HAProxy sends, every refusal of reference §1.4 decided at the byte that rules the
 * header out (never later), every prefix of an accepted header, the length bounds,
 * TLVs skipped, and bytes after the header left alone.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http/proxy_v2.h"

#define SIG "\r\n\r\n\0\r\nQUIT\n"
#define SIG_BYTES 12u
#define BUF_BYTES (PROXY_V2_HEADER_BYTES_MAX + 64u)

/* A header: the signature, version/command, family, length (big-endian), then the
 * payload given (address block and TLVs). Returns its size. */
static size_t build(uint8_t *out, uint8_t ver_cmd, uint8_t fam, uint16_t len, const uint8_t *payload, size_t n)
{
	memcpy(out, SIG, SIG_BYTES);
	out[12] = ver_cmd;
	out[13] = fam;
	out[14] = (uint8_t)(len >> 8);
	out[15] = (uint8_t)len;
	if (n)
		memcpy(out + 16, payload, n);
	return 16 + n;
}

/* TCP over IPv4 from 192.0.2.7:51234 to 198.51.100.1:443, as HAProxy's send-proxy-v2
 * sends it (no TLVs). */
static size_t tcp4(uint8_t *out)
{
	static const uint8_t block[12] = { 192, 0, 2, 7, 198, 51, 100, 1, 0xC8, 0x22, 0x01, 0xBB };
	return build(out, 0x21, 0x11, 12, block, sizeof block);
}

/* TCP over IPv6 from [2001:db8::42]:65535 to [2001:db8::1]:8443. */
static size_t tcp6(uint8_t *out)
{
	uint8_t block[36] = { 0x20, 0x01, 0x0d, 0xb8 };
	block[15] = 0x42;
	block[16] = 0x20, block[17] = 0x01, block[18] = 0x0d, block[19] = 0xb8, block[31] = 0x01;
	block[32] = 0xFF, block[33] = 0xFF, block[34] = 0x20, block[35] = 0xFB;
	return build(out, 0x21, 0x21, 36, block, sizeof block);
}

static void expect_tcp4(struct proxy_v2_result r, uint32_t header_bytes)
{
	assert_int_equal(r.status, PROXY_V2_OK);
	assert_int_equal(r.reason, PROXY_V2_REASON_NONE);
	assert_int_equal(r.header_bytes, header_bytes);
	assert_int_equal(r.src_family, PROXY_V2_INET);
	static const uint8_t want[4] = { 192, 0, 2, 7 };
	assert_memory_equal(r.src_addr, want, 4);
	assert_int_equal(r.src_port, 51234);
}

static void test_tcp4_and_tcp6(void **state)
{
	(void)state;
	uint8_t b[BUF_BYTES];
	size_t n = tcp4(b);
	assert_int_equal(n, 28);
	expect_tcp4(proxy_v2_parse(b, n), 28);

	n = tcp6(b);
	assert_int_equal(n, 52);
	struct proxy_v2_result r = proxy_v2_parse(b, n);
	assert_int_equal(r.status, PROXY_V2_OK);
	assert_int_equal(r.header_bytes, 52);
	assert_int_equal(r.src_family, PROXY_V2_INET6);
	static const uint8_t want[16] = { 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42 };
	assert_memory_equal(r.src_addr, want, 16);
	assert_int_equal(r.src_port, 65535);
}

/* Bytes after the header (the TLS ClientHello) are not part of it and not looked at. */
static void test_bytes_after_the_header_are_left_alone(void **state)
{
	(void)state;
	uint8_t b[BUF_BYTES];
	size_t n = tcp4(b);
	static const uint8_t hello[] = { 0x16, 0x03, 0x01, 0x02, 0x00, 0x01 };
	memcpy(b + n, hello, sizeof hello);
	expect_tcp4(proxy_v2_parse(b, n + sizeof hello), 28);
	/* whatever follows, even another signature or garbage */
	for (int v = 0; v < 256; v++) {
		b[n] = (uint8_t)v;
		expect_tcp4(proxy_v2_parse(b, n + 1), 28);
	}
}

/* TLVs (here HAProxy's unique-id and a NOOP, then bytes that are no TLV at all) are
 * skipped within the length: their content is never judged. */
static void test_tlvs_skipped(void **state)
{
	(void)state;
	uint8_t payload[12 + 40];
	static const uint8_t block[12] = { 10, 1, 2, 3, 10, 0, 0, 1, 0x30, 0x39, 0x01, 0xBB };
	memcpy(payload, block, 12);
	uint8_t *t = payload + 12;
	t[0] = 0x05, t[1] = 0, t[2] = 8; /* PP2_TYPE_UNIQUE_ID, 8 bytes */
	memset(t + 3, 'u', 8);
	t[11] = 0x04, t[12] = 0, t[13] = 2, t[14] = 0, t[15] = 0; /* PP2_TYPE_NOOP */
	memset(t + 16, 0xEE, 24);                                  /* a TLV claiming 0xEEEE bytes: not checked */
	uint8_t b[BUF_BYTES];
	size_t n = build(b, 0x21, 0x11, sizeof payload, payload, sizeof payload);
	struct proxy_v2_result r = proxy_v2_parse(b, n);
	assert_int_equal(r.status, PROXY_V2_OK);
	assert_int_equal(r.header_bytes, 16 + sizeof payload);
	static const uint8_t want[4] = { 10, 1, 2, 3 };
	assert_memory_equal(r.src_addr, want, 4);
	assert_int_equal(r.src_port, 12345);
	/* one byte short of the length: still waiting for exactly that byte */
	r = proxy_v2_parse(b, n - 1);
	assert_int_equal(r.status, PROXY_V2_NEED_MORE);
	assert_int_equal(r.header_bytes, n);
}

/* Every prefix of an accepted header waits, and says how much it needs: 16 until the
 * length is in, then the whole header. */
static void test_every_prefix_needs_more(void **state)
{
	(void)state;
	uint8_t b[BUF_BYTES];
	size_t (*makers[])(uint8_t *) = { tcp4, tcp6 };
	for (size_t m = 0; m < ARRAY_LEN(makers); m++) {
		size_t n = makers[m](b);
		for (size_t k = 0; k < n; k++) {
			struct proxy_v2_result r = proxy_v2_parse(k ? b : NULL, k);
			assert_int_equal(r.status, PROXY_V2_NEED_MORE);
			assert_true(r.header_bytes > k);
			assert_int_equal(r.header_bytes, k < 16 ? 16 : n);
		}
		assert_int_equal(proxy_v2_parse(b, n).status, PROXY_V2_OK);
	}
}

/* The length's bounds: the family's address block at least, 4096 at most. */
static void test_length_bounds(void **state)
{
	(void)state;
	static uint8_t payload[PROXY_V2_PAYLOAD_BYTES_MAX + 1];
	uint8_t b[BUF_BYTES];
	struct {
		uint8_t fam;
		uint16_t len;
		bool ok;
	} cases[] = {
		{ 0x11, 0, false },    { 0x11, 11, false },   { 0x11, 12, true },  { 0x11, 13, true },
		{ 0x21, 12, false },   { 0x21, 35, false },   { 0x21, 36, true },  { 0x11, 4096, true },
		{ 0x21, 4096, true },  { 0x11, 4097, false }, { 0x21, 4097, false }, { 0x11, 0xFFFF, false },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		size_t have = MIN((size_t)cases[i].len, sizeof payload);
		size_t n = build(b, 0x21, cases[i].fam, cases[i].len, payload, have);
		struct proxy_v2_result r = proxy_v2_parse(b, n);
		if (cases[i].ok) {
			assert_int_equal(r.status, PROXY_V2_OK);
			assert_int_equal(r.header_bytes, 16u + cases[i].len);
		} else {
			assert_int_equal(r.status, PROXY_V2_INVALID);
			assert_int_equal(r.reason, PROXY_V2_LENGTH);
			/* decided by the length field alone */
			assert_int_equal(proxy_v2_parse(b, 16).status, PROXY_V2_INVALID);
		}
	}
}

struct refusal {
	const char *name;
	const uint8_t *bytes;
	size_t len;
	enum proxy_v2_reason reason;
	size_t decided_at; /* the prefix length at which the verdict is first INVALID */
};

#define B(lit) (const uint8_t *)(lit), sizeof(lit) - 1

/* Without the signature, which of the two labels applies may take a few bytes to tell
 * (the verdict does not). */
static bool label_guessed(enum proxy_v2_reason r)
{
	return r == PROXY_V2_V1 || r == PROXY_V2_NOT_PROXY;
}

static void check_refusal(const struct refusal *v)
{
	for (size_t k = 0; k <= v->len; k++) {
		struct proxy_v2_result r = proxy_v2_parse(k ? v->bytes : NULL, k);
		if (k < v->decided_at) {
			if (r.status != PROXY_V2_NEED_MORE)
				fail_msg("%s: prefix %zu: status %d, want NEED_MORE", v->name, k, r.status);
		} else if (r.status != PROXY_V2_INVALID || (r.reason != v->reason && (k == v->len || !label_guessed(v->reason)))) {
			fail_msg("%s: prefix %zu: status %d reason %s, want INVALID %s", v->name, k, r.status,
				 proxy_v2_reason_name(r.reason), proxy_v2_reason_name(v->reason));
		}
	}
}

/* Every refusal, decided at the first byte that rules the header out. */
static void test_refusals_fail_fast(void **state)
{
	(void)state;
	static const uint8_t ipv4_block[12] = { 127, 0, 0, 9, 127, 0, 0, 1, 0x30, 0x39, 0x01, 0xBB };
	uint8_t local[64], unspec[64], udp4[64], udp6[64], ustream[300], udgram[300], v1nib[64], v3nib[64], cmd2[64],
		fam13[64], fam01[64], fam10[64], fam41[64];
	uint8_t zeros[216] = { 0 };
	size_t n_local = build(local, 0x20, 0x11, 12, ipv4_block, 12);
	size_t n_unspec = build(unspec, 0x21, 0x00, 0, NULL, 0);
	size_t n_udp4 = build(udp4, 0x21, 0x12, 12, ipv4_block, 12);
	size_t n_udp6 = build(udp6, 0x21, 0x22, 36, zeros, 36);
	size_t n_ustream = build(ustream, 0x21, 0x31, 216, zeros, 216);
	size_t n_udgram = build(udgram, 0x21, 0x32, 216, zeros, 216);
	size_t n_v1nib = build(v1nib, 0x11, 0x11, 12, ipv4_block, 12);
	size_t n_v3nib = build(v3nib, 0x31, 0x11, 12, ipv4_block, 12);
	size_t n_cmd2 = build(cmd2, 0x22, 0x11, 12, ipv4_block, 12);
	size_t n_fam13 = build(fam13, 0x21, 0x13, 12, ipv4_block, 12);
	size_t n_fam01 = build(fam01, 0x21, 0x01, 12, ipv4_block, 12);
	size_t n_fam10 = build(fam10, 0x21, 0x10, 12, ipv4_block, 12);
	size_t n_fam41 = build(fam41, 0x21, 0x41, 12, ipv4_block, 12);
	static const uint8_t client_hello[] = { 0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03 };
	static const uint8_t half_sig[] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0B };
	const struct refusal vecs[] = {
		{ "v1 tcp4", B("PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n"), PROXY_V2_V1, 1 },
		{ "v1 unknown", B("PROXY UNKNOWN\r\n"), PROXY_V2_V1, 1 },
		{ "tls client hello", client_hello, sizeof client_hello, PROXY_V2_NOT_PROXY, 1 },
		{ "http request", B("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), PROXY_V2_NOT_PROXY, 1 },
		{ "http post", B("POST / HTTP/1.1\r\n\r\n"), PROXY_V2_NOT_PROXY, 1 },
		{ "empty line", B("\r\n\r\nGET"), PROXY_V2_NOT_PROXY, 5 },
		{ "signature off by one bit", half_sig, sizeof half_sig, PROXY_V2_NOT_PROXY, 12 },
		{ "local", local, n_local, PROXY_V2_LOCAL, 13 },
		{ "version 1 nibble", v1nib, n_v1nib, PROXY_V2_VERSION, 13 },
		{ "version 3 nibble", v3nib, n_v3nib, PROXY_V2_VERSION, 13 },
		{ "command 2", cmd2, n_cmd2, PROXY_V2_VERSION, 13 },
		{ "unspec", unspec, n_unspec, PROXY_V2_UNSPEC, 14 },
		{ "udp4", udp4, n_udp4, PROXY_V2_UDP, 14 },
		{ "udp6", udp6, n_udp6, PROXY_V2_UDP, 14 },
		{ "unix stream", ustream, n_ustream, PROXY_V2_UNIX, 14 },
		{ "unix datagram", udgram, n_udgram, PROXY_V2_UNIX, 14 },
		{ "family 0x13", fam13, n_fam13, PROXY_V2_FAMILY, 14 },
		{ "family 0x01", fam01, n_fam01, PROXY_V2_FAMILY, 14 },
		{ "family 0x10", fam10, n_fam10, PROXY_V2_FAMILY, 14 },
		{ "family 0x41", fam41, n_fam41, PROXY_V2_FAMILY, 14 },
	};
	for (size_t i = 0; i < ARRAY_LEN(vecs); i++)
		check_refusal(&vecs[i]);
}

/* "P" alone could be a v1 header or "POST": refused at once either way (only the
 * label is a guess). */
static void test_v1_label_is_a_guess_the_verdict_is_not(void **state)
{
	(void)state;
	assert_int_equal(proxy_v2_parse((const uint8_t *)"P", 1).reason, PROXY_V2_V1);
	assert_int_equal(proxy_v2_parse((const uint8_t *)"PO", 2).reason, PROXY_V2_NOT_PROXY);
	assert_int_equal(proxy_v2_parse((const uint8_t *)"PROXZ", 5).reason, PROXY_V2_NOT_PROXY);
	assert_int_equal(proxy_v2_parse((const uint8_t *)"\0", 1).reason, PROXY_V2_NOT_PROXY);
}

/* Every byte value at every position of the fixed part: the verdict is a function of
 * the bytes (no state), and a one-byte change of the signature always refuses. */
static void test_single_byte_changes(void **state)
{
	(void)state;
	uint8_t b[BUF_BYTES];
	size_t n = tcp4(b);
	for (size_t pos = 0; pos < 16; pos++) {
		uint8_t orig = b[pos];
		for (int v = 0; v < 256; v++) {
			b[pos] = (uint8_t)v;
			struct proxy_v2_result r = proxy_v2_parse(b, n);
			if (v == orig) {
				expect_tcp4(r, 28);
				continue;
			}
			if (pos <= 13) /* signature, version/command, family (0x21 wants 36 bytes, has 12) */
				assert_int_equal(r.status, PROXY_V2_INVALID);
			else if (pos == 14) /* length v * 256 + 12: within 4096 it waits for the rest */
				assert_int_equal(r.status, v <= 15 ? PROXY_V2_NEED_MORE : PROXY_V2_INVALID);
			else /* pos 15: 12 is the only complete length; more waits, less refuses */
				assert_int_equal(r.status, v < 12 ? PROXY_V2_INVALID : PROXY_V2_NEED_MORE);
		}
		b[pos] = orig;
	}
}

static void test_reason_names(void **state)
{
	(void)state;
	assert_string_equal(proxy_v2_reason_name(PROXY_V2_REASON_NONE), "");
	for (int i = 1; i < PROXY_V2_REASON_COUNT; i++) {
		const char *a = proxy_v2_reason_name((enum proxy_v2_reason)i);
		assert_non_null(a);
		assert_true(a[0] >= 'a' && a[0] <= 'z');
		for (int j = 1; j < i; j++)
			assert_string_not_equal(a, proxy_v2_reason_name((enum proxy_v2_reason)j));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tcp4_and_tcp6),
		cmocka_unit_test(test_bytes_after_the_header_are_left_alone),
		cmocka_unit_test(test_tlvs_skipped),
		cmocka_unit_test(test_every_prefix_needs_more),
		cmocka_unit_test(test_length_bounds),
		cmocka_unit_test(test_refusals_fail_fast),
		cmocka_unit_test(test_v1_label_is_a_guess_the_verdict_is_not),
		cmocka_unit_test(test_single_byte_changes),
		cmocka_unit_test(test_reason_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
