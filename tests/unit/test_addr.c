/*
 * test_addr.c - the listener-address parser shared by the boot checks and net_listen:
 * Go's SplitHostPort rules and wording, then the relay's port and IP-literal rules.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/addr.h"

static void assert_zeroed(const struct listen_addr *a)
{
	static const struct listen_addr zero;

	if (memcmp(a, &zero, sizeof zero) != 0)
		fail_msg("a refused address left data in *out");
}

static void test_parse_ok(void **state)
{
	static const struct {
		const char *s;
		bool allow_empty;
		const char *host;
		uint16_t port;
		bool v6;
		uint8_t ip[ADDR_IP_BYTES];
	} ok[] = {
		{ ":8080", true, "", 8080, false, { 0 } },
		{ "0.0.0.0:80", true, "0.0.0.0", 80, false, { 0 } },
		{ "192.0.2.1:443", false, "192.0.2.1", 443, false, { 192, 0, 2, 1 } },
		{ "[::]:443", true, "::", 443, true, { 0 } },
		{ "[::1]:9090", false, "::1", 9090, true, { [15] = 1 } },
		{ "[2001:db8::1]:1", false, "2001:db8::1", 1, true,
		  { 0x20, 0x01, 0x0d, 0xb8, [15] = 1 } },
		{ "127.0.0.1:65535", false, "127.0.0.1", 65535, false, { 127, 0, 0, 1 } },
		{ ":0080", true, "", 80, false, { 0 } },
		{ "[::ffff:127.0.0.1]:1", false, "::ffff:127.0.0.1", 1, true,
		  { [10] = 0xff, [11] = 0xff, [12] = 127, [15] = 1 } },
	};
	struct listen_addr a;

	(void)state;
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		enum addr_error e = addr_parse_listen(ok[i].s, ok[i].allow_empty, &a);
		if (e != ADDR_OK)
			fail_msg("%s refused: %s", ok[i].s, addr_error_text(e));
		assert_string_equal(a.host, ok[i].host);
		assert_int_equal(a.port, ok[i].port);
		assert_int_equal(a.is_ipv6, ok[i].v6);
		assert_memory_equal(a.ip, ok[i].ip, ADDR_IP_BYTES);
	}
}

static void test_parse_refused(void **state)
{
	static const struct {
		const char *s;
		bool allow_empty;
		enum addr_error e;
		const char *why;
	} bad[] = {
		{ "", true, ADDR_ERR_EMPTY, "listener address is empty" },
		{ "8080", true, ADDR_ERR_MISSING_PORT, "missing port in address" },
		{ "127.0.0.1", true, ADDR_ERR_MISSING_PORT, "missing port in address" },
		{ "::1:80", true, ADDR_ERR_TOO_MANY_COLONS, "too many colons in address" },
		{ "[::1]", true, ADDR_ERR_MISSING_PORT, "missing port in address" },
		{ "[::1:80", true, ADDR_ERR_MISSING_RBRACKET, "missing ']' in address" },
		{ "[::1]x:80", true, ADDR_ERR_MISSING_PORT, "missing port in address" },
		{ "[::1]:80:90", true, ADDR_ERR_TOO_MANY_COLONS, "too many colons in address" },
		{ "[[::1]:80", true, ADDR_ERR_UNEXPECTED_LBRACKET, "unexpected '[' in address" },
		{ "a[b:80", true, ADDR_ERR_UNEXPECTED_LBRACKET, "unexpected '[' in address" },
		{ "a]b:80", true, ADDR_ERR_UNEXPECTED_RBRACKET, "unexpected ']' in address" },
		{ "[::1]:8]0", true, ADDR_ERR_UNEXPECTED_RBRACKET, "unexpected ']' in address" },
		{ ":", true, ADDR_ERR_PORT_SYNTAX, "not a decimal number" },
		{ ":http", true, ADDR_ERR_PORT_SYNTAX, "not a decimal number" },
		{ ":+80", true, ADDR_ERR_PORT_SYNTAX, "not a decimal number" },
		{ ":-1", true, ADDR_ERR_PORT_SYNTAX, "not a decimal number" },
		{ ": 80", true, ADDR_ERR_PORT_SYNTAX, "not a decimal number" },
		{ ":99999x", true, ADDR_ERR_PORT_SYNTAX, "not a decimal number" },
		{ ":0", true, ADDR_ERR_PORT_ZERO, "port 0" },
		{ ":000", true, ADDR_ERR_PORT_ZERO, "port 0" },
		{ ":65536", true, ADDR_ERR_PORT_RANGE, "out of range" },
		{ ":99999999999999999999999", true, ADDR_ERR_PORT_RANGE, "out of range" },
		{ ":8080", false, ADDR_ERR_MISSING_HOST, "missing host" },
		{ "[]:80", true, ADDR_ERR_MISSING_HOST, "missing host" },
		{ "localhost:8080", true, ADDR_ERR_HOST_NOT_IP, "not an IP literal" },
		{ "example.com:443", true, ADDR_ERR_HOST_NOT_IP, "not an IP literal" },
		{ "1.2.3:80", true, ADDR_ERR_HOST_NOT_IP, "not an IP literal" },
		{ "127.1:80", true, ADDR_ERR_HOST_NOT_IP, "not an IP literal" },
		{ "127.0.0.01:80", true, ADDR_ERR_HOST_NOT_IP, "not an IP literal" },
		{ "1.2.3.256:80", true, ADDR_ERR_HOST_NOT_IP, "not an IP literal" },
		{ "[fe80::1%eth0]:80", true, ADDR_ERR_HOST_NOT_IPV6, "not an IPv6 literal" },
		{ "[0.0.0.0]:80", true, ADDR_ERR_HOST_NOT_IPV6, "not an IPv6 literal" },
		{ "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:80", true,
		  ADDR_ERR_HOST_NOT_IP, "not an IP literal" },
	};
	struct listen_addr a;

	(void)state;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		memset(&a, 0xa5, sizeof a);
		enum addr_error e = addr_parse_listen(bad[i].s, bad[i].allow_empty, &a);
		if (e != bad[i].e)
			fail_msg("%s: got %d (%s), want %d", bad[i].s, (int)e, addr_error_text(e),
				 (int)bad[i].e);
		if (!strstr(addr_error_text(e), bad[i].why))
			fail_msg("%s: \"%s\" does not say \"%s\"", bad[i].s, addr_error_text(e), bad[i].why);
		assert_zeroed(&a);
	}
	memset(&a, 0xa5, sizeof a);
	assert_int_equal(addr_parse_listen(NULL, true, &a), ADDR_ERR_EMPTY);
	assert_zeroed(&a);
}

/* The longest literals fit; one byte past the host buffer is refused, not truncated. */
static void test_parse_host_length(void **state)
{
	static const char longest6[] = "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:1";
	char s[ADDR_HOST_BYTES + 8];
	struct listen_addr a;

	(void)state;
	assert_int_equal(addr_parse_listen(longest6, false, &a), ADDR_OK);
	assert_string_equal(a.host, "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255");
	memset(s, '1', ADDR_HOST_BYTES);
	memcpy(s + ADDR_HOST_BYTES, ":80", 4);
	assert_int_equal(addr_parse_listen(s, true, &a), ADDR_ERR_HOST_NOT_IP);
}

static void test_error_text(void **state)
{
	(void)state;
	/* every code has its own fixed text */
	for (int e = ADDR_ERR_EMPTY; e <= ADDR_ERR_HOST_NOT_IPV6; e++) {
		const char *t = addr_error_text((enum addr_error)e);
		assert_non_null(t);
		assert_true(t[0] != '\0');
		for (int f = ADDR_ERR_EMPTY; f < e; f++)
			assert_true(strcmp(t, addr_error_text((enum addr_error)f)) != 0);
	}
}

static void test_loopback(void **state)
{
	static const struct {
		const char *s;
		bool loopback;
	} cases[] = {
		{ "127.0.0.1:1", true },        { "127.255.255.255:1", true }, { "127.1.2.3:1", true },
		{ "[::1]:1", true },            { "[0:0:0:0:0:0:0:1]:1", true },
		{ "128.0.0.1:1", false },       { "126.255.255.255:1", false }, { "0.0.0.0:1", false },
		{ "10.0.0.1:1", false },        { "[::]:1", false },            { "[::2]:1", false },
		{ "[::ffff:127.0.0.1]:1", false }, { ":1", false },
	};
	struct listen_addr a;

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		assert_int_equal(addr_parse_listen(cases[i].s, true, &a), ADDR_OK);
		if (addr_is_loopback(&a) != cases[i].loopback)
			fail_msg("%s: loopback should be %d", cases[i].s, cases[i].loopback);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_ok),
		cmocka_unit_test(test_parse_refused),
		cmocka_unit_test(test_parse_host_length),
		cmocka_unit_test(test_error_text),
		cmocka_unit_test(test_loopback),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
