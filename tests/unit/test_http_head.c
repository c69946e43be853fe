/*
 * test_http_head.c - the request-head rules both listeners share (http/http_head.h):
 * completeness against a buffer's capacity, the answer to a broken head, when a
 * connection closes after a request, pipelined bytes kept in order, read deadlines;
 * and struct upgraded (engine/upgraded.c), the value the HTTP phase hands on.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "engine/engine.h"
#include "http/http_head.h"

static enum http_head_status parse(const char *text, size_t cap, struct http_request *req, enum http_canned *refusal)
{
	return http_head_parse((const uint8_t *)text, strlen(text), cap, req, refusal);
}

static void test_complete_and_incomplete(void **state)
{
	(void)state;
	struct http_request req;
	enum http_canned refusal = HTTP_CANNED_NOT_FOUND;
	assert_int_equal(parse("GET /healthz HTTP/1.1\r\nHost: x\r\n", 1024, &req, &refusal), HTTP_HEAD_INCOMPLETE);
	assert_int_equal(parse("", 1024, &req, &refusal), HTTP_HEAD_INCOMPLETE);
	assert_int_equal(refusal, HTTP_CANNED_NOT_FOUND); /* untouched unless refused */
	const char *full = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /next";
	assert_int_equal(parse(full, 1024, &req, &refusal), HTTP_HEAD_REQUEST);
	assert_int_equal(req.head_bytes, strlen("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
}

static void test_full_buffer_without_head_is_431(void **state)
{
	(void)state;
	char text[64];
	memset(text, 'a', sizeof text - 1);
	memcpy(text, "GET /", 5);
	text[sizeof text - 1] = '\0';
	struct http_request req;
	enum http_canned refusal;
	/* one byte short of the capacity: still waiting */
	assert_int_equal(parse(text, sizeof text, &req, &refusal), HTTP_HEAD_INCOMPLETE);
	/* the buffer is full and the head is not done: 431 */
	assert_int_equal(parse(text, sizeof text - 1, &req, &refusal), HTTP_HEAD_REFUSED);
	assert_int_equal(refusal, HTTP_CANNED_TOO_LARGE);
}

static void test_refusals(void **state)
{
	(void)state;
	struct http_request req;
	enum http_canned refusal;
	assert_int_equal(parse("GET / HTTP/2.0\r\n\r\n", 1024, &req, &refusal), HTTP_HEAD_REFUSED);
	assert_int_equal(refusal, HTTP_CANNED_BAD_VERSION);
	assert_int_equal(parse("GET\x01/ HTTP/1.1\r\n\r\n", 1024, &req, &refusal), HTTP_HEAD_REFUSED);
	assert_int_equal(refusal, HTTP_CANNED_BAD_REQUEST);
}

static bool closes(const char *text, uint32_t requests, bool stopping)
{
	struct http_request req;
	enum http_canned refusal;
	assert_int_equal(parse(text, HTTP_HEAD_BYTES_MAX, &req, &refusal), HTTP_HEAD_REQUEST);
	return http_head_closes(&req, requests, stopping);
}

static void test_close_decision(void **state)
{
	(void)state;
	const char *plain = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
	assert_false(closes(plain, 1, false));
	assert_true(closes(plain, 1, true)); /* draining */
	assert_false(closes(plain, HTTP_KEEPALIVE_REQUESTS_MAX - 1, false));
	assert_true(closes(plain, HTTP_KEEPALIVE_REQUESTS_MAX, false));
	assert_true(closes("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 1, false));
	assert_true(closes("GET / HTTP/1.0\r\n\r\n", 1, false));
	assert_false(closes("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 1, false));
	assert_true(closes("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 1, false));
	assert_false(closes("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 1, false));
}

static void test_consume_keeps_pipelined_bytes(void **state)
{
	(void)state;
	uint8_t buf[64];
	const char *two = "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
	memcpy(buf, two, strlen(two));
	uint32_t len = (uint32_t)strlen(two);
	uint32_t head = (uint32_t)strlen("GET /a HTTP/1.1\r\n\r\n");
	len = http_head_consume(buf, len, head);
	assert_int_equal(len, strlen("GET /b HTTP/1.1\r\n\r\n"));
	assert_memory_equal(buf, "GET /b HTTP/1.1\r\n\r\n", len);
	assert_int_equal(http_head_consume(buf, len, len), 0);
}

static void test_deadlines(void **state)
{
	(void)state;
	assert_int_equal(http_head_deadline_ms(1000, 0), 1000 + HTTP_IDLE_TIMEOUT_MS);
	assert_int_equal(http_head_deadline_ms(1000, 1), 1000 + HTTP_HEADER_READ_TIMEOUT_MS);
	assert_true(HTTP_HEADER_READ_TIMEOUT_MS < HTTP_IDLE_TIMEOUT_MS);
}

static void assert_span(struct span s, const char *want)
{
	assert_int_equal(s.len, strlen(want));
	if (s.len)
		assert_memory_equal(s.ptr, want, s.len);
}

static void test_upgraded_is_self_contained(void **state)
{
	(void)state;
	/* The request lives in a buffer that is wiped after the value is built: nothing in
	 * the value may point into it. */
	char *text = strdup("GET /v1/client HTTP/1.1\r\nX-Pyrycode-Server: srv-9\r\nX-Pyrycode-Token: t\r\n"
			    "X-Pyrycode-Device-Name: pixel 8\r\nUser-Agent: ua\r\n\r\n\x81\x85");
	assert_non_null(text);
	struct http_request req;
	enum http_canned refusal;
	assert_int_equal(parse(text, HTTP_HEAD_BYTES_MAX, &req, &refusal), HTTP_HEAD_REQUEST);
	const char *tail = "more";
	struct upgraded *u = upgraded_new(&req, span_make(text + req.head_bytes, strlen(text) - req.head_bytes),
					  span_make(tail, strlen(tail)));
	assert_non_null(u);
	memset(text, 'X', strlen(text));
	free(text);
	assert_span(upgraded_server_id(u), "srv-9");
	assert_span(upgraded_version(u), ""); /* a phone sends none */
	assert_span(upgraded_device(u), "pixel 8");
	assert_span(upgraded_early(u), "\x81\x85more");
	assert_int_equal(u->fd, -1);
	upgraded_free(u);

	/* no early bytes, no optional headers */
	const char *bin = "GET /v1/server HTTP/1.1\r\nX-Pyrycode-Server: s\r\nX-Pyrycode-Version: 1.2\r\n\r\n";
	assert_int_equal(parse(bin, HTTP_HEAD_BYTES_MAX, &req, &refusal), HTTP_HEAD_REQUEST);
	u = upgraded_new(&req, span_make("", 0), span_make("", 0));
	assert_non_null(u);
	assert_span(upgraded_server_id(u), "s");
	assert_span(upgraded_version(u), "1.2");
	assert_span(upgraded_device(u), "");
	assert_int_equal(upgraded_early(u).len, 0);
	upgraded_free(u);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_complete_and_incomplete),
		cmocka_unit_test(test_full_buffer_without_head_is_431),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_close_decision),
		cmocka_unit_test(test_consume_keeps_pipelined_bytes),
		cmocka_unit_test(test_deadlines),
		cmocka_unit_test(test_upgraded_is_self_contained),
	};
	return cmocka_run_group_tests_name("http_head", tests, NULL, NULL);
}
