/*
 * test_http_parse.c - the HTTP/1.x request-head parser and its header helpers.
 *
 * Every parse runs over an exactly-sized heap copy of the input, so a read past the
 * span is an ASan report under `make SAN=asan unit` rather than a silent look at a
 * string literal's NUL.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "http/http_parse.h"

/* A string literal with its exact length, so cases may contain NUL bytes. */
struct lit {
	const char *s;
	size_t len;
};
#define LIT(x) { (x), sizeof(x) - 1 }

/* An input under test: owns its exactly-sized buffer and the parse result. */
struct parsed {
	uint8_t *buf;
	size_t len;
	struct http_request req;
	enum http_parse_status st;
};

static uint8_t *dup_exact(const void *p, size_t n)
{
	/* malloc(0) may return NULL; the parser is never handed a NULL with len > 0. */
	uint8_t *b = malloc(n ? n : 1);

	assert_non_null(b);
	if (n)
		memcpy(b, p, n);
	return b;
}

static struct parsed *parse_mem(const void *p, size_t n)
{
	struct parsed *r = calloc(1, sizeof(*r));

	assert_non_null(r);
	r->buf = dup_exact(p, n);
	r->len = n;
	r->st = http_parse_request(r->buf, n, &r->req);
	return r;
}

static struct parsed *parse_str(const char *s)
{
	return parse_mem(s, strlen(s));
}

static void parsed_free(struct parsed *r)
{
	free(r->buf);
	free(r);
}

/* Status only, for the long tables of bad inputs. */
static enum http_parse_status status_of(const void *p, size_t n)
{
	struct parsed *r = parse_mem(p, n);
	enum http_parse_status st = r->st;

	parsed_free(r);
	return st;
}

static void assert_span(struct span s, const char *want)
{
	size_t n = strlen(want);

	if (s.len != n || (n && memcmp(s.ptr, want, n) != 0)) {
		fail_msg("span \"%.*s\" (len %zu) != \"%s\"", (int)s.len, s.ptr ? (const char *)s.ptr : "",
			 s.len, want);
	}
}

/* Assert that every span of an OK result lies inside buf[0..head_bytes). */
static void assert_spans_inside(const struct parsed *r)
{
	const uint8_t *lo = r->buf, *hi = r->buf + r->req.head_bytes;
	const struct span *all[3] = { &r->req.method, &r->req.target, &r->req.path };

	assert_true(r->req.head_bytes <= r->len);
	for (size_t i = 0; i < ARRAY_LEN(all); i++)
		assert_true(all[i]->ptr >= lo && all[i]->ptr + all[i]->len <= hi);
	for (uint32_t i = 0; i < r->req.header_count; i++) {
		const struct http_header *h = &r->req.headers[i];

		assert_true(h->name.ptr >= lo && h->name.ptr + h->name.len <= hi);
		assert_true(h->value.ptr >= lo && h->value.ptr + h->value.len <= hi);
	}
}

static const char upgrade_req[] =
	"GET /v1/server HTTP/1.1\r\n"
	"Host: relay.pyrycode.example:443\r\n"
	"Upgrade: websocket\r\n"
	"Connection: Upgrade\r\n"
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	"Sec-WebSocket-Version: 13\r\n"
	"X-Pyrycode-Server: 0f5e2c1a-7d1b-4c39-9a51-2b9e3f0d8c11\r\n"
	"X-Pyrycode-Token: tok_5dbb1c0e9b7a4f53a0b9\r\n"
	"User-Agent: pyrycode/1.4 (Linux; x86_64)\r\n"
	"Accept-Encoding: gzip, deflate\r\n"
	"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
	"\r\n";

/* ---------------------------------------------------------------- valid heads */

static void test_websocket_upgrade(void **state)
{
	struct parsed *r = parse_str(upgrade_req);
	struct span v;

	(void)state;
	assert_int_equal(r->st, HTTP_PARSE_OK);
	assert_int_equal(r->req.head_bytes, strlen(upgrade_req));
	assert_span(r->req.method, "GET");
	assert_span(r->req.target, "/v1/server");
	assert_span(r->req.path, "/v1/server");
	assert_int_equal(r->req.version_minor, 1);
	assert_int_equal(r->req.header_count, 10);
	assert_span(r->req.headers[0].name, "Host");
	assert_span(r->req.headers[0].value, "relay.pyrycode.example:443");
	assert_span(r->req.headers[3].name, "Sec-WebSocket-Key");
	assert_span(r->req.headers[3].value, "dGhlIHNhbXBsZSBub25jZQ==");
	assert_span(r->req.headers[5].name, "X-Pyrycode-Server");
	assert_span(r->req.headers[5].value, "0f5e2c1a-7d1b-4c39-9a51-2b9e3f0d8c11");
	assert_span(r->req.headers[9].name, "Sec-WebSocket-Extensions");
	assert_span(r->req.headers[9].value, "permessage-deflate; client_max_window_bits");
	assert_spans_inside(r);

	assert_true(http_header_get(&r->req, "x-pyrycode-token", &v));
	assert_span(v, "tok_5dbb1c0e9b7a4f53a0b9");
	assert_true(http_header_get(&r->req, "SEC-WEBSOCKET-VERSION", &v));
	assert_span(v, "13");
	assert_true(http_header_has_token(&r->req, "Upgrade", "websocket"));
	assert_true(http_header_has_token(&r->req, "Connection", "upgrade"));
	assert_true(http_header_has_token(&r->req, "accept-encoding", "DEFLATE"));
	assert_false(http_header_get(&r->req, "Origin", &v));
	assert_int_equal(http_header_count(&r->req, "Origin"), 0);
	assert_int_equal(http_header_count(&r->req, "host"), 1);
	parsed_free(r);
}

static void test_http10(void **state)
{
	struct parsed *r = parse_str("GET /healthz HTTP/1.0\r\n\r\n");

	(void)state;
	assert_int_equal(r->st, HTTP_PARSE_OK);
	assert_int_equal(r->req.version_minor, 0);
	assert_int_equal(r->req.header_count, 0);
	assert_int_equal(r->req.head_bytes, r->len);
	assert_span(r->req.path, "/healthz");
	parsed_free(r);
}

static void test_methods_are_tokens(void **state)
{
	static const char *const ok[] = {
		"POST / HTTP/1.1\r\n\r\n",
		"M-SEARCH / HTTP/1.1\r\n\r\n",
		"get / HTTP/1.1\r\n\r\n", /* case is the router's business */
		"!#$%&'*+-.^_`|~09azAZ / HTTP/1.1\r\n\r\n",
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(ok); i++) {
		struct parsed *r = parse_str(ok[i]);

		assert_int_equal(r->st, HTTP_PARSE_OK);
		assert_int_equal(r->req.method.len, strcspn(ok[i], " "));
		parsed_free(r);
	}
}

static void test_query_string(void **state)
{
	static const struct {
		const char *target, *path;
	} cases[] = {
		{ "/v1/client?server=abc&x=1", "/v1/client" },
		{ "/?", "/" },
		{ "/", "/" },
		{ "/a?b?c", "/a" },
		{ "/healthz?", "/healthz" },
		{ "//double/slash", "//double/slash" },
		{ "/%7Euser/a%20b?q=%41", "/%7Euser/a%20b" },
		{ "/a#frag", "/a#frag" }, /* VCHAR, and not our place to interpret */
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		char buf[128];
		struct parsed *r;

		snprintf(buf, sizeof(buf), "GET %s HTTP/1.1\r\nHost: h\r\n\r\n", cases[i].target);
		r = parse_str(buf);
		assert_int_equal(r->st, HTTP_PARSE_OK);
		assert_span(r->req.target, cases[i].target);
		assert_span(r->req.path, cases[i].path);
		parsed_free(r);
	}
}

static void test_values_trimmed(void **state)
{
	struct parsed *r = parse_str("GET / HTTP/1.1\r\n"
				     "A:  \t value with  inner\tspace \t \r\n"
				     "B:\r\n"
				     "C: \t \r\n"
				     "D:x\r\n"
				     "E: caf\xc3\xa9 \x80\xff\r\n"
				     "F: a:b:c\r\n"
				     "\r\n");

	(void)state;
	assert_int_equal(r->st, HTTP_PARSE_OK);
	assert_int_equal(r->req.header_count, 6);
	assert_span(r->req.headers[0].value, "value with  inner\tspace");
	assert_span(r->req.headers[1].value, "");
	assert_span(r->req.headers[2].value, "");
	assert_span(r->req.headers[3].value, "x");
	assert_span(r->req.headers[4].value, "caf\xc3\xa9 \x80\xff");
	assert_span(r->req.headers[5].name, "F");
	assert_span(r->req.headers[5].value, "a:b:c");
	assert_spans_inside(r);
	parsed_free(r);
}

/* RFC 9112 §2.2: a bare LF is an acceptable line terminator, mixed or not. */
static void test_bare_lf(void **state)
{
	struct parsed *r = parse_str("GET /x HTTP/1.1\nHost: h\r\nA: 1 \n\n");

	(void)state;
	assert_int_equal(r->st, HTTP_PARSE_OK);
	assert_int_equal(r->req.head_bytes, r->len);
	assert_int_equal(r->req.header_count, 2);
	assert_span(r->req.headers[0].value, "h");
	assert_span(r->req.headers[1].value, "1");
	parsed_free(r);

	r = parse_str("GET / HTTP/1.0\n\r\n");
	assert_int_equal(r->st, HTTP_PARSE_OK);
	assert_int_equal(r->req.head_bytes, r->len);
	parsed_free(r);
}

static void test_leading_empty_lines(void **state)
{
	struct parsed *r = parse_str("\r\n\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n");

	(void)state;
	assert_int_equal(r->st, HTTP_PARSE_OK);
	assert_int_equal(r->req.head_bytes, r->len);
	assert_span(r->req.method, "GET");
	assert_true(r->req.method.ptr == r->buf + 5);
	parsed_free(r);
}

/* ---------------------------------------------------------------- errors */

static const struct lit bad_cases[] = {
	/* method */
	LIT("GE@T / HTTP/1.1\r\n\r\n"),
	LIT("GET(/ HTTP/1.1\r\n\r\n"),
	LIT("G\"ET / HTTP/1.1\r\n\r\n"),
	LIT("GET\x80 / HTTP/1.1\r\n\r\n"),
	LIT(" GET / HTTP/1.1\r\n\r\n"),
	LIT("\tGET / HTTP/1.1\r\n\r\n"),
	LIT("GET\r\n\r\n"),
	LIT("GET\n\n"),
	/* separators: exactly one SP each */
	LIT("GET/ HTTP/1.1\r\n\r\n"),
	LIT("GET\t/ HTTP/1.1\r\n\r\n"),
	LIT("GET  / HTTP/1.1\r\n\r\n"),
	LIT("GET /  HTTP/1.1\r\n\r\n"),
	LIT("GET /HTTP/1.1\r\n\r\n"),
	LIT("GET /\tHTTP/1.1\r\n\r\n"),
	LIT("GET / HTTP/1.1 \r\n\r\n"),
	LIT("GET /\r\n\r\n"),
	LIT("GET / \r\n\r\n"),
	/* target: origin-form only, VCHAR only */
	LIT("GET index.html HTTP/1.1\r\n\r\n"),
	LIT("GET http://example.com/ HTTP/1.1\r\n\r\n"),
	LIT("OPTIONS * HTTP/1.1\r\n\r\n"),
	LIT("CONNECT relay.example:443 HTTP/1.1\r\n\r\n"),
	LIT("GET ?x=1 HTTP/1.1\r\n\r\n"),
	LIT("GET /a\x7f HTTP/1.1\r\n\r\n"),
	LIT("GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n"),
	LIT("GET /a\x01 HTTP/1.1\r\n\r\n"),
	/* version: "HTTP/" DIGIT "." DIGIT, case-sensitive, then the line end */
	LIT("GET / http/1.1\r\n\r\n"),
	LIT("GET / Http/1.1\r\n\r\n"),
	LIT("GET / HTTPS/1.1\r\n\r\n"),
	LIT("GET / HTTP 1.1\r\n\r\n"),
	LIT("GET / HTTP/ 1.1\r\n\r\n"),
	LIT("GET / HTTP/1\r\n\r\n"),
	LIT("GET / HTTP/1.\r\n\r\n"),
	LIT("GET / HTTP/1.x\r\n\r\n"),
	LIT("GET / HTTP/1,1\r\n\r\n"),
	LIT("GET / HTTP/11.1\r\n\r\n"),
	LIT("GET / HTTP/1.1x\r\n\r\n"),
	LIT("GET / HTTP/1.10\r\n\r\n"),
	LIT("GET / HTTP/x.1\r\n\r\n"),
	LIT("GET / HTTP/\r\n\r\n"),
	LIT("GET / 1.1\r\n\r\n"),
	/* field names */
	LIT("GET / HTTP/1.1\r\nHost : h\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nHost\t: h\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\n: h\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nHo st: h\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nHost h\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nHost\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nHo(st: h\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nH\x01st: h\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nH\xc3\xa9: h\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nHost: h\r\n@: x\r\n\r\n"),
	/* CTLs in values (HTAB alone is allowed) */
	LIT("GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nX: \x1b[31mred\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nX: a\x0b\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nX: a\x0c\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nX: \x1f\r\n\r\n"),
	/* obs-fold, and whitespace between the request line and the first field */
	LIT("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\n Host: h\r\n\r\n"),
	LIT("GET / HTTP/1.1\n\tHost: h\n\n"),
	/* bare CR: anywhere a line could end */
	LIT("\rGET / HTTP/1.1\r\n\r\n"),
	LIT("\r\rGET / HTTP/1.1\r\n\r\n"),
	LIT("GET / HTTP/1.1\rHost: h\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nX: a\r\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nX: a\r\n\r\r\n"),
	LIT("GET / HTTP/1.1\r\nX: a\r\n\rX"),
	LIT("GET /a\rb HTTP/1.1\r\n\r\n"),
	/* NUL bytes */
	LIT("\0GET / HTTP/1.1\r\n\r\n"),
	LIT("GET\0/ HTTP/1.1\r\n\r\n"),
	LIT("G\0ET / HTTP/1.1\r\n\r\n"),
	LIT("GET /\0 HTTP/1.1\r\n\r\n"),
	LIT("GET / HTTP/1.1\0\r\n\r\n"),
	LIT("GET / HTTP/1\0.1\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nHo\0st: h\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nX: \0\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nX: a\0b\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\n\0\r\n\r\n"),
	/* whatever else */
	LIT("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), /* a TLS ClientHello */
	LIT("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
};

static void test_bad(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(bad_cases); i++) {
		enum http_parse_status st = status_of(bad_cases[i].s, bad_cases[i].len);

		if (st != HTTP_PARSE_BAD)
			fail_msg("bad case %zu: got %d, want BAD", i, st);
	}
}

/*
 * Fail fast: each input below is already hopeless at its last byte, so the parser must
 * say BAD without waiting for a line end or the blank line.
 */
static void test_bad_fails_fast(void **state)
{
	static const struct lit cases[] = {
		LIT("G@"),
		LIT(" "),
		LIT("\r\r"),
		LIT("\rG"),
		LIT("GET  "),
		LIT("GET *"),
		LIT("GET h"),
		LIT("GET /x\x01"),
		LIT("GET / h"),
		LIT("GET / HTTP/1.1 "),
		LIT("GET / HTTP/1.1\rX"),
		LIT("GET / HTTP/1.1\r\n "),
		LIT("GET / HTTP/1.1\r\n:"),
		LIT("GET / HTTP/1.1\r\nHost "),
		LIT("GET / HTTP/1.1\r\nX: a\x01"),
		LIT("GET / HTTP/1.1\r\nX: a\r\n\t"),
		LIT("GET / HTTP/1.1\r\nX: a\r\n\r "),
		LIT("\0"),
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		enum http_parse_status st = status_of(cases[i].s, cases[i].len);

		if (st != HTTP_PARSE_BAD)
			fail_msg("fail-fast case %zu: got %d, want BAD", i, st);
		/* and one byte earlier it was not yet decided */
		st = status_of(cases[i].s, cases[i].len - 1);
		if (st != HTTP_PARSE_INCOMPLETE)
			fail_msg("fail-fast case %zu minus one byte: got %d, want INCOMPLETE", i, st);
	}
}

static void test_bad_version(void **state)
{
	static const char *const versions[] = {
		"HTTP/2.0", "HTTP/0.9", "HTTP/1.2", "HTTP/3.0", "HTTP/0.0", "HTTP/9.9", "HTTP/1.9",
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(versions); i++) {
		char buf[64];
		int n;

		n = snprintf(buf, sizeof(buf), "GET / %s\r\nHost: h\r\n\r\n", versions[i]);
		assert_int_equal(status_of(buf, (size_t)n), HTTP_PARSE_BAD_VERSION);
		/* decided at the minor digit, before the line ends */
		n = snprintf(buf, sizeof(buf), "GET / %s", versions[i]);
		assert_int_equal(status_of(buf, (size_t)n), HTTP_PARSE_BAD_VERSION);
		assert_int_equal(status_of(buf, (size_t)n - 1), HTTP_PARSE_INCOMPLETE);
	}
}

/* ---------------------------------------------------------------- limits */

/*
 * A head of exactly `total` bytes: "GET / HTTP/1.1\r\nX: aaaa...\r\n\r\n" (or with bare
 * LFs), padded through the single header value.
 */
static uint8_t *head_of_size(size_t total, bool bare_lf)
{
	const char *start = bare_lf ? "GET / HTTP/1.1\nX: " : "GET / HTTP/1.1\r\nX: ";
	const char *end = bare_lf ? "\n\n" : "\r\n\r\n";
	size_t a = strlen(start), z = strlen(end);
	uint8_t *b = malloc(total);

	assert_true(total > a + z);
	assert_non_null(b);
	memcpy(b, start, a);
	memset(b + a, 'a', total - a - z);
	memcpy(b + total - z, end, z);
	return b;
}

static void test_head_size_boundary(void **state)
{
	(void)state;
	for (int lf = 0; lf <= 1; lf++) {
		uint8_t *b = head_of_size(HTTP_HEAD_BYTES_MAX, lf);
		struct parsed *r = parse_mem(b, HTTP_HEAD_BYTES_MAX);

		assert_int_equal(r->st, HTTP_PARSE_OK);
		assert_int_equal(r->req.head_bytes, HTTP_HEAD_BYTES_MAX);
		assert_int_equal(r->req.headers[0].value.len,
				 HTTP_HEAD_BYTES_MAX - (lf ? 18 + 2 : 19 + 4));
		parsed_free(r);
		/* one byte short of the blank line: still waiting */
		assert_int_equal(status_of(b, HTTP_HEAD_BYTES_MAX - 1), HTTP_PARSE_INCOMPLETE);
		free(b);

		b = head_of_size(HTTP_HEAD_BYTES_MAX + 1, lf);
		assert_int_equal(status_of(b, HTTP_HEAD_BYTES_MAX + 1), HTTP_PARSE_TOO_LARGE);
		/* the first 16384 bytes alone are a head that has not ended yet */
		assert_int_equal(status_of(b, HTTP_HEAD_BYTES_MAX), HTTP_PARSE_INCOMPLETE);
		free(b);
	}
}

/* The limit is on the head: bytes after a 16 KiB head are the next layer's. */
static void test_max_head_then_more_bytes(void **state)
{
	size_t total = HTTP_HEAD_BYTES_MAX + 100;
	uint8_t *b = malloc(total);
	uint8_t *h = head_of_size(HTTP_HEAD_BYTES_MAX, false);
	struct parsed *r;

	(void)state;
	assert_non_null(b);
	memcpy(b, h, HTTP_HEAD_BYTES_MAX);
	memset(b + HTTP_HEAD_BYTES_MAX, '\r', total - HTTP_HEAD_BYTES_MAX);
	r = parse_mem(b, total);
	assert_int_equal(r->st, HTTP_PARSE_OK);
	assert_int_equal(r->req.head_bytes, HTTP_HEAD_BYTES_MAX);
	parsed_free(r);
	free(h);
	free(b);
}

/* Leading empty lines count towards the limit: an endless stream of CRLFs is cut off. */
static void test_leading_empty_lines_count(void **state)
{
	uint8_t *b = malloc(HTTP_HEAD_BYTES_MAX + 2);

	(void)state;
	assert_non_null(b);
	for (size_t i = 0; i < HTTP_HEAD_BYTES_MAX + 2; i += 2)
		memcpy(b + i, "\r\n", 2);
	assert_int_equal(status_of(b, HTTP_HEAD_BYTES_MAX), HTTP_PARSE_INCOMPLETE);
	assert_int_equal(status_of(b, HTTP_HEAD_BYTES_MAX + 1), HTTP_PARSE_TOO_LARGE);
	memset(b, '\n', HTTP_HEAD_BYTES_MAX + 2);
	assert_int_equal(status_of(b, HTTP_HEAD_BYTES_MAX), HTTP_PARSE_INCOMPLETE);
	assert_int_equal(status_of(b, HTTP_HEAD_BYTES_MAX + 2), HTTP_PARSE_TOO_LARGE);
	free(b);
}

/* A request line followed by `n` headers "H<i>: v<i>", then `tail`. */
static size_t build_n_headers(char *buf, size_t cap, unsigned n, const char *tail)
{
	size_t off = (size_t)snprintf(buf, cap, "GET /many HTTP/1.1\r\n");

	for (unsigned i = 0; i < n; i++) {
		off += (size_t)snprintf(buf + off, cap - off, "H%u: v%u\r\n", i, i);
		assert_true(off < cap);
	}
	off += (size_t)snprintf(buf + off, cap - off, "%s", tail);
	assert_true(off < cap);
	return off;
}

static void test_header_count_boundary(void **state)
{
	static char buf[4096];
	struct parsed *r;
	struct span v;
	size_t n;

	(void)state;
	n = build_n_headers(buf, sizeof(buf), HTTP_HEADERS_COUNT_MAX, "\r\n");
	r = parse_mem(buf, n);
	assert_int_equal(r->st, HTTP_PARSE_OK);
	assert_int_equal(r->req.header_count, HTTP_HEADERS_COUNT_MAX);
	assert_span(r->req.headers[HTTP_HEADERS_COUNT_MAX - 1].name, "H63");
	assert_true(http_header_get(&r->req, "h63", &v));
	assert_span(v, "v63");
	assert_spans_inside(r);
	parsed_free(r);

	n = build_n_headers(buf, sizeof(buf), HTTP_HEADERS_COUNT_MAX + 1, "\r\n");
	assert_int_equal(status_of(buf, n), HTTP_PARSE_TOO_LARGE);

	/* fail fast: the first byte of a valid 65th field name is enough */
	n = build_n_headers(buf, sizeof(buf), HTTP_HEADERS_COUNT_MAX, "X");
	assert_int_equal(status_of(buf, n), HTTP_PARSE_TOO_LARGE);
	assert_int_equal(status_of(buf, n - 1), HTTP_PARSE_INCOMPLETE);
	/* a byte that cannot start any field line is BAD, whatever the count */
	n = build_n_headers(buf, sizeof(buf), HTTP_HEADERS_COUNT_MAX, " ");
	assert_int_equal(status_of(buf, n), HTTP_PARSE_BAD);
}

/* ---------------------------------------------------------------- incremental */

static const struct lit valid_cases[] = {
	LIT(upgrade_req),
	LIT("GET /healthz HTTP/1.0\r\n\r\n"),
	LIT("GET /x HTTP/1.1\nHost: h\nA:\n\n"),
	LIT("\r\n\nGET /v1/client?server=a%20b HTTP/1.1\r\nHost: h\r\nX:  v \t\r\n\r\n"),
	LIT("GET / HTTP/1.1\r\nE:\r\n\r\n"),
};

/* Every proper prefix of a valid head is INCOMPLETE: never BAD, never OK early. */
static void test_every_prefix_incomplete(void **state)
{
	(void)state;
	for (size_t c = 0; c < ARRAY_LEN(valid_cases); c++) {
		const struct lit *v = &valid_cases[c];

		for (size_t k = 0; k < v->len; k++) {
			enum http_parse_status st = status_of(v->s, k);

			if (st != HTTP_PARSE_INCOMPLETE)
				fail_msg("case %zu prefix %zu/%zu: got %d", c, k, v->len, st);
		}
		assert_int_equal(status_of(v->s, v->len), HTTP_PARSE_OK);
	}
}

static void assert_same_request(const struct parsed *a, const struct parsed *b)
{
#define SAME_SPAN(x, y) \
	do { \
		assert_int_equal((x).ptr - a->buf, (y).ptr - b->buf); \
		assert_int_equal((x).len, (y).len); \
	} while (0)
	assert_int_equal(a->req.head_bytes, b->req.head_bytes);
	assert_int_equal(a->req.version_minor, b->req.version_minor);
	assert_int_equal(a->req.header_count, b->req.header_count);
	SAME_SPAN(a->req.method, b->req.method);
	SAME_SPAN(a->req.target, b->req.target);
	SAME_SPAN(a->req.path, b->req.path);
	for (uint32_t i = 0; i < a->req.header_count; i++) {
		SAME_SPAN(a->req.headers[i].name, b->req.headers[i].name);
		SAME_SPAN(a->req.headers[i].value, b->req.headers[i].value);
	}
#undef SAME_SPAN
}

/*
 * Simulate a connection that receives one byte per read and re-parses its accumulated
 * buffer each time (in a fresh allocation, as a growing buffer may move). The status
 * must stay INCOMPLETE until the deciding byte, then equal the one-shot answer and
 * never change again; OK must describe the same request as a one-shot parse.
 */
static void feed_bytewise(const void *input, size_t len)
{
	struct parsed *whole = parse_mem(input, len);
	size_t decided_at = 0;
	enum http_parse_status first = HTTP_PARSE_INCOMPLETE;

	for (size_t k = 0; k <= len; k++) {
		struct parsed *r = parse_mem(input, k);

		if (first == HTTP_PARSE_INCOMPLETE && r->st != HTTP_PARSE_INCOMPLETE) {
			first = r->st;
			decided_at = k;
		}
		if (first != HTTP_PARSE_INCOMPLETE) {
			if (r->st != first)
				fail_msg("status changed from %d to %d at %zu", first, r->st, k);
			if (r->st == HTTP_PARSE_OK)
				assert_same_request(r, whole);
		}
		parsed_free(r);
	}
	assert_int_equal(first, whole->st);
	if (whole->st == HTTP_PARSE_OK)
		assert_int_equal(decided_at, whole->req.head_bytes);
	parsed_free(whole);
}

static void test_bytewise_feeding(void **state)
{
	static const char pipelined[] = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
					"GET /b HTTP/1.1\r\nHost: h\r\n\r\n";

	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(valid_cases); i++)
		feed_bytewise(valid_cases[i].s, valid_cases[i].len);
	for (size_t i = 0; i < ARRAY_LEN(bad_cases); i++)
		feed_bytewise(bad_cases[i].s, bad_cases[i].len);
	feed_bytewise(pipelined, sizeof(pipelined) - 1);
	feed_bytewise("GET / HTTP/2.0\r\n\r\n", 18);
}

/* ---------------------------------------------------------------- pipelining */

static void test_pipelined_bytes_untouched(void **state)
{
	static const char head[] = "GET /v1/client HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n";
	/* a masked WebSocket text frame, then bytes that would be BAD as HTTP */
	static const uint8_t tail[] = { 0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f,
					0x4d, 0x51, 0x58, '\r', 'X', 0x00, ' ', '\n' };
	uint8_t input[sizeof(head) - 1 + sizeof(tail)];
	struct parsed *r;

	(void)state;
	memcpy(input, head, sizeof(head) - 1);
	memcpy(input + sizeof(head) - 1, tail, sizeof(tail));
	r = parse_mem(input, sizeof(input));
	assert_int_equal(r->st, HTTP_PARSE_OK);
	assert_int_equal(r->req.head_bytes, sizeof(head) - 1);
	assert_memory_equal(r->buf, input, sizeof(input));
	assert_spans_inside(r);
	parsed_free(r);

	/* and every split of the tail gives the same head */
	for (size_t k = sizeof(head) - 1; k <= sizeof(input); k++) {
		r = parse_mem(input, k);
		assert_int_equal(r->st, HTTP_PARSE_OK);
		assert_int_equal(r->req.head_bytes, sizeof(head) - 1);
		parsed_free(r);
	}

	r = parse_str("GET /a HTTP/1.1\nA: 1\n\nGET /b HTTP/1.1\n\n");
	assert_int_equal(r->st, HTTP_PARSE_OK);
	assert_int_equal(r->req.head_bytes, 22);
	assert_int_equal(r->req.header_count, 1);
	assert_span(r->req.target, "/a");
	parsed_free(r);
}

/* ---------------------------------------------------------------- header helpers */

static void test_first_value_wins(void **state)
{
	struct parsed *r = parse_str("GET / HTTP/1.1\r\n"
				     "Host: first\r\n"
				     "X-Pyrycode-Token: t1\r\n"
				     "HOST: second\r\n"
				     "host: third\r\n"
				     "x-pyrycode-token: t2\r\n"
				     "\r\n");
	struct span v;

	(void)state;
	assert_int_equal(r->st, HTTP_PARSE_OK);
	assert_true(http_header_get(&r->req, "Host", &v));
	assert_span(v, "first");
	assert_true(http_header_get(&r->req, "hOsT", &v));
	assert_span(v, "first");
	assert_true(http_header_get(&r->req, "X-PYRYCODE-TOKEN", &v));
	assert_span(v, "t1");
	assert_int_equal(http_header_count(&r->req, "host"), 3);
	assert_int_equal(http_header_count(&r->req, "X-Pyrycode-Token"), 2);
	/* names are matched whole, not by prefix */
	assert_false(http_header_get(&r->req, "Hos", &v));
	assert_false(http_header_get(&r->req, "Hostx", &v));
	assert_false(http_header_get(&r->req, "X-Pyrycode-Token-2", &v));
	assert_int_equal(http_header_count(&r->req, "X-Pyrycode"), 0);
	/* names keep the case they were sent in */
	assert_span(r->req.headers[2].name, "HOST");
	parsed_free(r);
}

static bool has_token(const char *headers, const char *name, const char *token)
{
	char buf[512];
	struct parsed *r;
	bool found;
	int n;

	n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\n%s\r\n", headers);
	assert_true(n > 0 && (size_t)n < sizeof(buf));
	r = parse_mem(buf, (size_t)n);
	assert_int_equal(r->st, HTTP_PARSE_OK);
	found = http_header_has_token(&r->req, name, token);
	parsed_free(r);
	return found;
}

static void test_token_matching(void **state)
{
	(void)state;
	assert_true(has_token("Connection: keep-alive, Upgrade\r\n", "Connection", "upgrade"));
	assert_true(has_token("Connection: keep-alive, Upgrade\r\n", "Connection", "keep-alive"));
	assert_false(has_token("Connection: keep-alive, Upgrade\r\n", "Connection", "close"));
	assert_true(has_token("Connection: upgrade\r\n", "Connection", "Upgrade"));
	assert_true(has_token("connection: UPGRADE\r\n", "CONNECTION", "upgrade"));
	assert_true(has_token("Connection: keep-alive\r\nConnection: Upgrade\r\n",
			      "Connection", "Upgrade"));
	assert_true(has_token("Connection: keep-alive\r\nHost: h\r\nconnection: close, upgrade\r\n",
			      "Connection", "Upgrade"));
	assert_true(has_token("Connection: ,, upgrade ,,\r\n", "Connection", "upgrade"));
	assert_true(has_token("Connection:\tkeep-alive\t,\tUpgrade\t\r\n", "Connection", "upgrade"));
	assert_true(has_token("Connection: keep-alive,Upgrade\r\n", "Connection", "upgrade"));
	assert_true(has_token("Upgrade: websocket\r\n", "upgrade", "WebSocket"));

	/* words that merely contain the token are not the token */
	assert_false(has_token("Connection: Upgraded\r\n", "Connection", "Upgrade"));
	assert_false(has_token("Connection: NoUpgrade\r\n", "Connection", "Upgrade"));
	assert_false(has_token("Connection: Upgrade-Insecure\r\n", "Connection", "Upgrade"));
	assert_false(has_token("Connection: keep-alive,Upgradex\r\n", "Connection", "Upgrade"));
	assert_false(has_token("Connection: keep-alive upgrade\r\n", "Connection", "upgrade"));
	assert_false(has_token("Connection: \"upgrade\"\r\n", "Connection", "upgrade"));
	assert_false(has_token("Connection: upgrad\r\n", "Connection", "upgrade"));
	assert_false(has_token("Connection:\r\n", "Connection", "upgrade"));
	assert_false(has_token("Upgrade: websocket, h2c\r\n", "Upgrade", "websock"));
	/* the token has to be in the named header, not elsewhere */
	assert_false(has_token("Upgrade: websocket\r\nX-Connection: upgrade\r\n",
			       "Connection", "upgrade"));
	assert_false(has_token("Connection-Extra: upgrade\r\n", "Connection", "upgrade"));
	assert_false(has_token("Host: h\r\n", "Connection", "upgrade"));
	assert_false(has_token("", "Connection", "upgrade"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_websocket_upgrade),
		cmocka_unit_test(test_http10),
		cmocka_unit_test(test_methods_are_tokens),
		cmocka_unit_test(test_query_string),
		cmocka_unit_test(test_values_trimmed),
		cmocka_unit_test(test_bare_lf),
		cmocka_unit_test(test_leading_empty_lines),
		cmocka_unit_test(test_bad),
		cmocka_unit_test(test_bad_fails_fast),
		cmocka_unit_test(test_bad_version),
		cmocka_unit_test(test_head_size_boundary),
		cmocka_unit_test(test_max_head_then_more_bytes),
		cmocka_unit_test(test_leading_empty_lines_count),
		cmocka_unit_test(test_header_count_boundary),
		cmocka_unit_test(test_every_prefix_incomplete),
		cmocka_unit_test(test_bytewise_feeding),
		cmocka_unit_test(test_pipelined_bytes_untouched),
		cmocka_unit_test(test_first_value_wins),
		cmocka_unit_test(test_token_matching),
	};

	return cmocka_run_group_tests_name("http_parse", tests, NULL, NULL);
}
