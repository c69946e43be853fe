/*
 * test_session_record.c - the hand-over record of one live session
 * (engine/session_record.h): round trips of both routes and every address family,
 * records back to back, truncation, and each bound and field refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "engine/session_record.h"

static uint8_t buf[SESSION_RECORD_BYTES_MAX + 64];

static struct session_record phone(void)
{
	struct session_record r = {
		.route = SESSION_ROUTE_PHONE,
		.transport = SESSION_TRANSPORT_KTLS,
		.remote = { .family = AF_INET6, .port = 54321 },
		.client_key = 0x0123456789abcdefULL,
		.server_id = span_cstr("srv-1"),
		.version = span_cstr(""),
		.device = span_cstr("Pixel 9"),
		.early = span_make("\x81\x85\x01\x02\x03\x04hello", 11),
	};
	memcpy(r.conn_hex, "0a1b2c3d", 8);
	for (int i = 0; i < 16; i++)
		r.remote.bytes[i] = (uint8_t)(0xf0 + i);
	return r;
}

static void assert_span(struct span a, struct span b)
{
	assert_int_equal(a.len, b.len);
	if (a.len)
		assert_memory_equal(a.ptr, b.ptr, a.len);
}

static void assert_same(const struct session_record *a, const struct session_record *b)
{
	assert_int_equal(a->route, b->route);
	assert_int_equal(a->transport, b->transport);
	assert_memory_equal(&a->remote, &b->remote, sizeof a->remote);
	assert_true(a->client_key == b->client_key);
	assert_memory_equal(a->conn_hex, b->conn_hex, 8);
	assert_span(a->server_id, b->server_id);
	assert_span(a->version, b->version);
	assert_span(a->device, b->device);
	assert_span(a->early, b->early);
}

static void test_round_trip(void **state)
{
	(void)state;
	struct session_record bin = {
		.route = SESSION_ROUTE_BINARY,
		.remote = { .family = AF_INET, .bytes = { 127, 0, 0, 1 }, .port = 8080 },
		.server_id = span_cstr("srv-1"),
		.version = span_cstr("1.2.3"),
		.device = span_cstr(""),
		.early = span_make("", 0),
	};
	memcpy(bin.conn_hex, "ffff0000", 8);
	struct session_record ph = phone(), unknown = phone();
	unknown.remote = (struct peer_addr){ 0 };
	size_t a = session_record_write(&bin, buf, sizeof buf);
	assert_int_equal(a, SESSION_RECORD_FIXED_BYTES + 5 + 5);
	size_t b = session_record_write(&ph, buf + a, sizeof buf - a);
	assert_int_equal(b, session_record_size(&ph));
	size_t c = session_record_write(&unknown, buf + a + b, sizeof buf - a - b);
	assert_true(c > 0);
	struct session_record out;
	size_t used = 0;
	assert_int_equal(session_record_parse(span_make(buf, a + b + c), &out, &used), SESSION_RECORD_OK);
	assert_int_equal(used, a);
	assert_same(&out, &bin);
	assert_int_equal(session_record_parse(span_make(buf + a, b + c), &out, &used), SESSION_RECORD_OK);
	assert_int_equal(used, b);
	assert_same(&out, &ph);
	assert_int_equal(session_record_parse(span_make(buf + a + b, c), &out, &used), SESSION_RECORD_OK);
	assert_same(&out, &unknown);
}

static void test_bounds(void **state)
{
	(void)state;
	static uint8_t big[SESSION_RECORD_EARLY_BYTES_MAX + 1];
	struct session_record r = phone();
	r.early = span_make(big, SESSION_RECORD_EARLY_BYTES_MAX);
	r.server_id = span_make(big, SESSION_RECORD_TEXT_BYTES_MAX);
	r.version = r.device = r.server_id;
	size_t n = session_record_write(&r, buf, sizeof buf);
	assert_int_equal(n, SESSION_RECORD_BYTES_MAX);
	struct session_record out;
	size_t used;
	assert_int_equal(session_record_parse(span_make(buf, n), &out, &used), SESSION_RECORD_OK);
	assert_int_equal(session_record_write(&r, buf, n - 1), 0); /* does not fit */
	r.early.len++;
	assert_int_equal(session_record_size(&r), 0);
	r = phone();
	r.server_id.len = 0;
	assert_int_equal(session_record_size(&r), 0);
	r = phone();
	r.conn_hex[3] = 'A'; /* uppercase is not a conn_id of ours */
	assert_int_equal(session_record_size(&r), 0);
	r = phone();
	r.transport = SESSION_TRANSPORT_COUNT;
	assert_int_equal(session_record_size(&r), 0);
	r = phone();
	r.remote.family = AF_INET; /* bytes past the IPv4 address */
	assert_int_equal(session_record_size(&r), 0);
	r = phone();
	r.remote.family = AF_UNIX;
	assert_int_equal(session_record_size(&r), 0);
}

static void test_refused(void **state)
{
	(void)state;
	struct session_record r = phone(), out;
	size_t n = session_record_write(&r, buf, sizeof buf), used = 99;
	for (size_t k = 0; k < n; k++)
		assert_int_equal(session_record_parse(span_make(buf, k), &out, &used), SESSION_RECORD_NEED_MORE);
	assert_int_equal(used, 99);
	buf[4] = 2;
	assert_int_equal(session_record_parse(span_make(buf, n), &out, &used), SESSION_RECORD_BAD_VERSION);
	assert_int_equal(session_record_parse(span_make(buf, 5), &out, &used), SESSION_RECORD_BAD_VERSION);
	buf[4] = SESSION_RECORD_VERSION;
	buf[3]++; /* total one more than the fields */
	assert_int_equal(session_record_parse(span_make(buf, n + 1), &out, &used), SESSION_RECORD_BAD_LENGTH);
	buf[3]--;
	buf[7] = 5; /* family */
	assert_int_equal(session_record_parse(span_make(buf, n), &out, &used), SESSION_RECORD_BAD_FIELD);
	buf[7] = 6;
	buf[5] = 2; /* route */
	assert_int_equal(session_record_parse(span_make(buf, n), &out, &used), SESSION_RECORD_BAD_FIELD);
	buf[5] = SESSION_ROUTE_PHONE;
	buf[34] = 'g'; /* conn_hex */
	assert_int_equal(session_record_parse(span_make(buf, n), &out, &used), SESSION_RECORD_BAD_FIELD);
	buf[34] = '0';
	buf[42] = buf[43] = 0; /* empty server-id */
	assert_int_equal(session_record_parse(span_make(buf, n), &out, &used), SESSION_RECORD_BAD_LENGTH);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
