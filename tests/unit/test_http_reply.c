/*
 * test_http_reply.c - the outbound client's response parser (control/http_reply.h):
 * framing (Content-Length, chunked, until close, none), 1xx, the body cap, the head
 * limit, malformed heads, and that any split of the input into pieces parses the same
 * as the whole; plus the https:// URL parser (core/url.h) the client connects with.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "control/http_reply.h"
#include "core/url.h"

#define BODY_CAP 64u

struct parsed {
	enum http_reply_state state;
	int status;
	const char *err;
	char body[BODY_CAP + 1];
	size_t body_len;
	bool capped, cut;
	size_t used;
};

static struct http_reply reply; /* 16 KiB: not on the stack */
static uint8_t body_buf[BODY_CAP];

static void result(struct parsed *p)
{
	p->state = reply.state;
	p->status = reply.status;
	p->err = reply.err;
	memcpy(p->body, reply.body, reply.body_len);
	p->body[reply.body_len] = '\0';
	p->body_len = reply.body_len;
	p->capped = reply.body_capped;
	p->cut = reply.body_cut;
}

/* Feed in pieces of `step` bytes (0: all at once), then EOF if asked. */
static struct parsed run(const char *in, size_t len, size_t cap, size_t step, bool eof)
{
	struct parsed p = { 0 };
	http_reply_init(&reply, body_buf, cap);
	size_t off = 0;
	while (off < len && (reply.state == HTTP_REPLY_HEAD || reply.state == HTTP_REPLY_BODY)) {
		size_t n = step ? (len - off < step ? len - off : step) : len - off;
		size_t used = http_reply_feed(&reply, (const uint8_t *)in + off, n);
		assert_true(used <= n);
		p.used += used;
		if (used < n) {
			/* only a finished parse leaves bytes unused */
			assert_true(reply.state == HTTP_REPLY_DONE || reply.state == HTTP_REPLY_ERROR);
			break;
		}
		off += n;
	}
	if (eof)
		http_reply_eof(&reply);
	result(&p);
	return p;
}

/* Whole, byte by byte and in 3-byte pieces: the same result every way. */
static struct parsed parse(const char *in, size_t cap, bool eof)
{
	size_t len = strlen(in);
	struct parsed whole = run(in, len, cap, 0, eof);
	for (size_t step = 1; step <= 3; step += 2) {
		struct parsed p = run(in, len, cap, step, eof);
		assert_int_equal(p.state, whole.state);
		assert_int_equal(p.status, whole.status);
		assert_int_equal(p.body_len, whole.body_len);
		assert_memory_equal(p.body, whole.body, whole.body_len);
		assert_int_equal(p.capped, whole.capped);
		assert_int_equal(p.cut, whole.cut);
	}
	return whole;
}

static void expect_body(const char *in, bool eof, int status, const char *body)
{
	struct parsed p = parse(in, BODY_CAP, eof);
	if (p.state != HTTP_REPLY_DONE)
		fail_msg("not done (%d, %s): %s", p.state, p.err ? p.err : "-", in);
	assert_int_equal(p.status, status);
	assert_string_equal(p.body, body);
}

static void expect_error(const char *in, bool eof, const char *err)
{
	struct parsed p = parse(in, BODY_CAP, eof);
	if (p.state != HTTP_REPLY_ERROR)
		fail_msg("not an error (%d): %s", p.state, in);
	assert_string_equal(p.err, err);
}

static void test_framing(void **state)
{
	(void)state;
	expect_body("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA", false, 200, "hello");
	expect_body("HTTP/1.0 404 Not Found\nContent-Length: 2\n\n{}", false, 404, "{}");
	expect_body("HTTP/1.1 200\r\ncontent-length:  3 \r\nContent-Length: 3\r\n\r\nabc", false, 200, "abc");
	expect_body("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, 200, "");
	/* chunked: extensions, trailers, Content-Length ignored, any case */
	expect_body("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nContent-Length: 99\r\n\r\n"
		    "3;ext=1\r\nabc\r\n0A \r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\nNEXT",
		    false, 200, "abc0123456789");
	expect_body("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\n\n", false, 200, "x");
	/* until close */
	expect_body("HTTP/1.0 200 OK\r\n\r\nall of it", true, 200, "all of it");
	struct parsed p = parse("HTTP/1.0 200 OK\r\n\r\nall of it", BODY_CAP, false);
	assert_int_equal(p.state, HTTP_REPLY_BODY); /* more may come */
	/* no body: 204, 304, 101 */
	expect_body("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", false, 204, "");
	expect_body("HTTP/1.1 304 Not Modified\r\n\r\n", false, 304, "");
	expect_body("HTTP/1.1 101 Switching\r\n\r\n", false, 101, "");
	/* 1xx before the response */
	expect_body("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\n"
		    "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
		    false, 201, "ok");
	expect_error("HTTP/1.1 100 A\r\n\r\nHTTP/1.1 100 A\r\n\r\nHTTP/1.1 100 A\r\n\r\nHTTP/1.1 100 A\r\n\r\n"
		     "HTTP/1.1 100 A\r\n\r\nHTTP/1.1 100 A\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
		     false, "too many 1xx informational responses");
	/* a 3xx is a response like any other: nothing follows Location */
	expect_body("HTTP/1.1 302 Found\r\nLocation: https://elsewhere/\r\nContent-Length: 0\r\n\r\n", false, 302, "");
}

static void test_body_end(void **state)
{
	(void)state;
	/* the cap: stop reading once kept */
	struct parsed p = parse("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
				"0123456789abcdefghij0123456789abcdefghij0123456789abcdefghij0123456789",
				BODY_CAP, false);
	assert_int_equal(p.state, HTTP_REPLY_DONE);
	assert_true(p.capped);
	assert_int_equal(p.body_len, BODY_CAP);
	p = parse("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", 0, false);
	assert_int_equal(p.state, HTTP_REPLY_DONE);
	assert_int_equal(p.body_len, 0);
	assert_true(p.capped);
	/* the peer closes early, or a chunk is malformed: the bytes so far (Go drops the
	 * read error) */
	p = parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", BODY_CAP, true);
	assert_int_equal(p.state, HTTP_REPLY_DONE);
	assert_true(p.cut);
	assert_string_equal(p.body, "abc");
	static const char *const cut[] = {
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n12345678901234567\r\n",
	};
	for (size_t i = 0; i < sizeof cut / sizeof cut[0]; i++) {
		p = parse(cut[i], BODY_CAP, false);
		if (p.state != HTTP_REPLY_DONE || !p.cut || strcmp(p.body, "abc") != 0)
			fail_msg("case %zu: state %d cut %d body %s", i, p.state, p.cut, p.body);
	}
	p = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", BODY_CAP, true);
	assert_true(p.cut && p.state == HTTP_REPLY_DONE);
}

static void test_head_errors(void **state)
{
	(void)state;
	static const char *const status_lines[] = {
		"HTTP/2.0 200 OK\r\n\r\n", "HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 2000 OK\r\n\r\n",
		"HTTP/1.1 099 Low\r\n\r\n", "HTTP/1.1  200 OK\r\n\r\n", "http/1.1 200 OK\r\n\r\n",
		"HTTP/1.1 2x0 OK\r\n\r\n", "\r\n", "garbage\r\n\r\n",
	};
	for (size_t i = 0; i < sizeof status_lines / sizeof status_lines[0]; i++)
		expect_error(status_lines[i], false, "malformed HTTP status line");
	static const char *const header_lines[] = {
		"HTTP/1.1 200 OK\r\nNo colon\r\n\r\n", "HTTP/1.1 200 OK\r\n: empty\r\n\r\n",
		"HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n", "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
		"HTTP/1.1 200 OK\r\nBad\x01: x\r\n\r\n",
	};
	for (size_t i = 0; i < sizeof header_lines / sizeof header_lines[0]; i++)
		expect_error(header_lines[i], false, "malformed HTTP response header line");
	static const char *const lengths[] = {
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808\r\n\r\n",
	};
	for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++)
		expect_error(lengths[i], false, "bad Content-Length in the response");
	expect_body("HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775807\r\n\r\nab", true, 200, "ab");
	static const char *const te[] = {
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
	};
	for (size_t i = 0; i < sizeof te / sizeof te[0]; i++)
		expect_error(te[i], false, "unsupported Transfer-Encoding in the response");
	expect_error("HTTP/1.1 200 OK\r\nA: b\r\n", true, "connection closed before the response head was complete");
	expect_error("", true, "connection closed before the response head was complete");

	/* the head limit, counted over every line */
	static char big[HTTP_REPLY_HEAD_BYTES_MAX + 128];
	for (size_t extra = 0; extra <= 1; extra++) {
		const char *start = "HTTP/1.1 200 OK\r\nX: ";
		size_t n = strlen(start), tail = strlen("\r\nContent-Length: 0\r\n\r\n");
		size_t fill = HTTP_REPLY_HEAD_BYTES_MAX - n - tail + extra;
		memcpy(big, start, n);
		memset(big + n, 'v', fill);
		strcpy(big + n + fill, "\r\nContent-Length: 0\r\n\r\n");
		struct parsed p = run(big, strlen(big), BODY_CAP, 0, false);
		assert_int_equal(p.state, extra ? HTTP_REPLY_ERROR : HTTP_REPLY_DONE);
		if (extra)
			assert_string_equal(p.err, "response head too large");
	}
}

static void test_url(void **state)
{
	(void)state;
	struct https_url u;
	assert_null(url_parse_https("https://fcm.googleapis.com/v1/projects/pyrycode-mobile/messages:send", &u));
	assert_string_equal(u.host, "fcm.googleapis.com");
	assert_string_equal(u.authority, "fcm.googleapis.com");
	assert_string_equal(u.target, "/v1/projects/pyrycode-mobile/messages:send");
	assert_int_equal(u.port, 443);
	assert_false(u.host_is_ip);
	assert_null(url_parse_https("HTTPS://127.0.0.1:8443/token?x=1#frag", &u));
	assert_string_equal(u.host, "127.0.0.1");
	assert_string_equal(u.authority, "127.0.0.1:8443");
	assert_string_equal(u.target, "/token?x=1");
	assert_int_equal(u.port, 8443);
	assert_true(u.host_is_ip);
	assert_null(url_parse_https("https://[::1]:9/", &u));
	assert_string_equal(u.host, "::1");
	assert_string_equal(u.authority, "[::1]:9");
	assert_true(u.host_is_ip);
	assert_null(url_parse_https("https://h", &u));
	assert_string_equal(u.target, "/");
	assert_null(url_parse_https("https://h?q", &u));
	assert_string_equal(u.target, "/?q");
	static const char *const bad[] = {
		NULL, "", "http://h/", "https:/h", "https://", "https:///x", "https://:443/", "https://h:/",
		"https://h:0/", "https://h:65536/", "https://h:8x/", "https://u:p@h/", "https://[::1/", "https://[zz]/",
		"https://[fe80::1%eth0]/", "https://h h/", "https://h/a b", "https://h/\x7f", "https://h/\xc3\xa9",
		"https://h\xc3\xa9/", "ftp://h/",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		memset(&u, 0x5a, sizeof u);
		if (url_parse_https(bad[i], &u) == NULL)
			fail_msg("URL accepted: %s", bad[i] ? bad[i] : "(null)");
		assert_int_equal(u.host[0], 0);
		assert_int_equal(u.port, 0);
	}
	static char long_url[URL_TARGET_BYTES + 32];
	for (size_t extra = 0; extra <= 1; extra++) {
		size_t n = (size_t)snprintf(long_url, sizeof long_url, "https://h/");
		memset(long_url + n, 'p', URL_TARGET_BYTES - 2 + extra);
		long_url[n + URL_TARGET_BYTES - 2 + extra] = '\0';
		assert_int_equal(url_parse_https(long_url, &u) == NULL, extra == 0);
	}
}

/* The ACME headers: last occurrence of the final head wins, a 1xx head's are dropped,
 * a value that does not fit or is not printable ASCII is "" (never cut). */
static void test_kept_headers(void **state)
{
	(void)state;
	static const char in[] = "HTTP/1.1 100 Continue\r\nLocation: /early\r\n\r\n"
				 "HTTP/1.1 201 Created\r\nreplay-nonce: n1\r\nReplay-Nonce:  abc_DEF-1 \r\n"
				 "LOCATION: https://acme/order/1\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n";
	for (size_t step = 0; step <= 7; step++) {
		struct parsed p = run(in, sizeof in - 1, BODY_CAP, step, false);
		assert_int_equal(p.state, HTTP_REPLY_DONE);
		assert_int_equal(p.status, 201);
		assert_string_equal(reply.replay_nonce, "abc_DEF-1");
		assert_string_equal(reply.location, "https://acme/order/1");
		assert_string_equal(reply.retry_after, "3");
	}
	static char big[HTTP_REPLY_NONCE_BYTES + 128];
	int n = snprintf(big, sizeof big, "HTTP/1.1 200 OK\r\nReplay-Nonce: ");
	memset(big + n, 'a', HTTP_REPLY_NONCE_BYTES);
	n += (int)HTTP_REPLY_NONCE_BYTES;
	n += snprintf(big + n, sizeof big - (size_t)n, "\r\nLocation: a\x01b\r\nContent-Length: 0\r\n\r\n");
	struct parsed p = run(big, (size_t)n, BODY_CAP, 0, false);
	assert_int_equal(p.state, HTTP_REPLY_DONE);
	assert_string_equal(reply.replay_nonce, "");
	assert_string_equal(reply.location, "");
	/* exactly one byte under the limit is kept */
	n = snprintf(big, sizeof big, "HTTP/1.1 200 OK\r\nReplay-Nonce: ");
	memset(big + n, 'b', HTTP_REPLY_NONCE_BYTES - 1);
	n += (int)HTTP_REPLY_NONCE_BYTES - 1;
	n += snprintf(big + n, sizeof big - (size_t)n, "\r\n\r\n");
	p = run(big, (size_t)n, BODY_CAP, 0, true);
	assert_int_equal(strlen(reply.replay_nonce), HTTP_REPLY_NONCE_BYTES - 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_framing),
		cmocka_unit_test(test_body_end),
		cmocka_unit_test(test_head_errors),
		cmocka_unit_test(test_url),
		cmocka_unit_test(test_kept_headers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
