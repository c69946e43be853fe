/*
 * fuzz_http_head.c - libFuzzer target for the request-head rules (http/http_head.h)
 * and struct upgraded (engine/upgraded.c), driven as a listener drives them.
 *
 * The first byte picks the buffer's capacity; the rest is a byte stream fed in chunks
 * (sizes from the stream itself) into a buffer of exactly that capacity, parsed after
 * each chunk, answered heads consumed, as the public listener and the metrics
 * responder do. Checks, each able to fail on its own:
 *  1. A request's head_bytes lies within what is buffered, and consuming it keeps the
 *     pipelined bytes after it, in order (compared with a copy).
 *  2. A refusal happens only with a complete answer code, and INCOMPLETE never with a
 *     full buffer (a full buffer is always decided).
 *  3. Every request's struct upgraded carries exactly the first header values the
 *     parser reports and the early bytes, and is independent of the buffer (built,
 *     then the buffer is overwritten, then compared against copies).
 */
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "http/http_head.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Capacities the first byte chooses among: tiny, the metrics responder's, the maximum. */
static const size_t caps[] = { 16, 64, 300, 8192, HTTP_HEAD_BYTES_MAX };

static uint8_t buf[HTTP_HEAD_BYTES_MAX];
static uint8_t shadow[HTTP_HEAD_BYTES_MAX];
static struct http_request req;

static void check_value(struct span got, const char *name)
{
	struct span want;
	if (!http_header_get(&req, name, &want))
		want = span_make("", 0);
	ASSERT(got.len == want.len);
	ASSERT(got.len == 0 || memcmp(got.ptr, want.ptr, got.len) == 0);
}

static void check_upgraded(uint32_t len)
{
	struct span early = span_make(buf + req.head_bytes, len - req.head_bytes);
	struct upgraded *u = upgraded_new(&req, early, span_make("", 0));
	if (u == NULL)
		return;
	/* compare against the header values while the buffer still holds them */
	check_value(upgraded_server_id(u), "X-Pyrycode-Server");
	check_value(upgraded_version(u), "X-Pyrycode-Version");
	check_value(upgraded_device(u), "X-Pyrycode-Device-Name");
	struct span e = upgraded_early(u);
	ASSERT(e.len == early.len && (e.len == 0 || memcmp(e.ptr, early.ptr, e.len) == 0));
	/* then wipe the buffer: the value must not change */
	size_t n = upgraded_server_id(u).len + upgraded_version(u).len + upgraded_device(u).len + e.len;
	uint8_t *copy = malloc(n ? n : 1);
	ASSERT(copy != NULL);
	memcpy(copy, upgraded_server_id(u).ptr, n); /* the four pieces are contiguous */
	memset(buf, 0xA5, len);
	ASSERT(memcmp(copy, upgraded_server_id(u).ptr, n) == 0);
	free(copy);
	memcpy(buf, shadow, len);
	upgraded_free(u);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	size_t cap = caps[data[0] % (sizeof caps / sizeof caps[0])];
	const uint8_t *p = data + 1;
	size_t n = size - 1;
	uint32_t len = 0;
	uint32_t requests = 0;
	/* Bounded: every pass consumes input or a head, or stops. */
	while (n > 0 || len > 0) {
		size_t chunk = n ? MIN(n, (size_t)(p[0] % 61) + 1) : 0;
		chunk = MIN(chunk, cap - len);
		memcpy(buf + len, p, chunk);
		len += (uint32_t)chunk;
		p += chunk;
		n -= chunk;
		memcpy(shadow, buf, len);
		enum http_canned refusal = (enum http_canned)-1;
		enum http_head_status st = http_head_parse(buf, len, cap, &req, &refusal);
		if (st == HTTP_HEAD_INCOMPLETE) {
			ASSERT(len < cap);
			if (n == 0)
				break;
			continue;
		}
		if (st == HTTP_HEAD_REFUSED) {
			ASSERT(refusal == HTTP_CANNED_TOO_LARGE || refusal == HTTP_CANNED_BAD_VERSION ||
			       refusal == HTTP_CANNED_BAD_REQUEST);
			break; /* the listener answers and closes */
		}
		ASSERT(req.head_bytes > 0 && req.head_bytes <= len);
		check_upgraded(len);
		(void)http_head_closes(&req, ++requests, false);
		uint32_t rest = http_head_consume(buf, len, req.head_bytes);
		ASSERT(rest == len - req.head_bytes);
		ASSERT(memcmp(buf, shadow + req.head_bytes, rest) == 0);
		len = rest;
	}
	return 0;
}
