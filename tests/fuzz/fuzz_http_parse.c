/*
 * fuzz_http_parse.c - libFuzzer target for the request-head parser.
 *
 * Per input it checks three things, each able to fail on its own:
 *  1. Structure: on OK every span lies inside the head, names are tokens, values are
 *     trimmed and CTL-free, the path is the target up to '?', the header helpers agree
 *     with the header array.
 *  2. Incremental consistency: the status over growing prefixes of the input is
 *     INCOMPLETE... and then one final answer that never changes, equal to the
 *     one-shot answer, with an identical request on OK (every prefix of small inputs,
 *     a binary search plus samples for large ones). Prefixes are parsed from
 *     exactly-sized copies, so reading past the span is an ASan report.
 *  3. A differential oracle: a deliberately different, line-splitting reference parser
 *     that only judges inputs whose deciding line is complete. Whenever it decides,
 *     it must agree with the real parser on the status and, on OK, on every span.
 */
#include "http/http_parse.h"
#include "http/http_head.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Inputs up to this many bytes get every prefix checked; larger ones are sampled. */
#define EXHAUSTIVE_PREFIX_BYTES 128u
/* Prefix lengths sampled per large input, on top of the binary search. */
#define SAMPLED_PREFIXES 8u
/* Longest header name or list element copied out (NUL-terminated) to query the helpers. */
#define NAME_COPY_BYTES 256u

/* 2 KiB each: static rather than on the stack; libFuzzer runs the target serially. */
static struct http_request req_full, req_prefix, req_ref;

/* ------------------------------------------------------------------ helpers */

/* Written independently of the parser's table on purpose. */
static bool ref_tchar(uint8_t c)
{
	if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')
		return true;
	if (c >= '0' && c <= '9')
		return true;
	return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool in_range(struct span s, const uint8_t *lo, const uint8_t *hi)
{
	return s.ptr != NULL && s.ptr >= lo && s.len <= (size_t)(hi - s.ptr);
}

static uint8_t *copy_exact(const uint8_t *data, size_t n)
{
	uint8_t *b = malloc(n ? n : 1);

	ASSERT(b != NULL);
	if (n)
		memcpy(b, data, n);
	return b;
}

static size_t off(struct span s, const uint8_t *base)
{
	return (size_t)(s.ptr - base);
}

/* Two OK results over (copies of) the same bytes describe the same request. */
static void assert_same(const struct http_request *a, const uint8_t *abuf,
			const struct http_request *b, const uint8_t *bbuf)
{
#define SAME(x, y) ASSERT(off((x), abuf) == off((y), bbuf) && (x).len == (y).len)
	ASSERT(a->head_bytes == b->head_bytes);
	ASSERT(a->version_minor == b->version_minor);
	ASSERT(a->header_count == b->header_count);
	SAME(a->method, b->method);
	SAME(a->target, b->target);
	SAME(a->path, b->path);
	for (uint32_t i = 0; i < a->header_count; i++) {
		SAME(a->headers[i].name, b->headers[i].name);
		SAME(a->headers[i].value, b->headers[i].value);
	}
#undef SAME
}

/* ------------------------------------------------------------------ 1. structure */

/* The element el[0..n) of a header's list, OWS trimmed, must be found as a token. */
static void check_list_element(const struct http_request *req, const char *name,
			       const uint8_t *el, size_t n)
{
	char tok[NAME_COPY_BYTES];

	while (n > 0 && (el[0] == ' ' || el[0] == '\t')) {
		el++;
		n--;
	}
	while (n > 0 && (el[n - 1] == ' ' || el[n - 1] == '\t'))
		n--;
	if (n == 0 || n >= sizeof(tok))
		return;
	memcpy(tok, el, n);
	tok[n] = '\0';
	ASSERT(http_header_has_token(req, name, tok));
}

static void check_host_gate(const struct http_request *req);

static void check_ok_structure(const uint8_t *buf, size_t len, const struct http_request *req)
{
	const uint8_t *head_end;
	const uint8_t *prev_end;

	ASSERT(req->head_bytes > 0 && req->head_bytes <= len);
	ASSERT(req->head_bytes <= HTTP_HEAD_BYTES_MAX);
	ASSERT(req->header_count <= HTTP_HEADERS_COUNT_MAX);
	ASSERT(req->version_minor <= 1);
	head_end = buf + req->head_bytes;
	/* the head ends with an empty line */
	ASSERT(head_end[-1] == '\n');
	ASSERT(req->head_bytes >= 2 && (head_end[-2] == '\n' ||
					(head_end[-2] == '\r' && req->head_bytes >= 3 &&
					 head_end[-3] == '\n')));

	ASSERT(in_range(req->method, buf, head_end) && req->method.len > 0);
	for (size_t i = 0; i < req->method.len; i++)
		ASSERT(ref_tchar(req->method.ptr[i]));
	ASSERT(req->method.ptr[req->method.len] == ' ');

	ASSERT(in_range(req->target, buf, head_end) && req->target.len > 0);
	ASSERT(req->target.ptr == req->method.ptr + req->method.len + 1);
	ASSERT(req->target.ptr[0] == '/');
	for (size_t i = 0; i < req->target.len; i++)
		ASSERT(req->target.ptr[i] > 0x20 && req->target.ptr[i] < 0x7f);
	ASSERT(req->path.ptr == req->target.ptr && req->path.len <= req->target.len);
	ASSERT(memchr(req->path.ptr, '?', req->path.len) == NULL);
	ASSERT(req->path.len == req->target.len || req->target.ptr[req->path.len] == '?');

	prev_end = req->target.ptr + req->target.len;
	for (uint32_t i = 0; i < req->header_count; i++) {
		const struct http_header *h = &req->headers[i];
		const uint8_t *comma, *last;
		char name[NAME_COPY_BYTES];
		struct span v;

		ASSERT(in_range(h->name, buf, head_end) && h->name.len > 0);
		ASSERT(in_range(h->value, buf, head_end));
		/* fields are in order and do not overlap */
		ASSERT(h->name.ptr > prev_end);
		ASSERT(h->value.ptr > h->name.ptr + h->name.len);
		prev_end = h->value.ptr + h->value.len;
		for (size_t j = 0; j < h->name.len; j++)
			ASSERT(ref_tchar(h->name.ptr[j]));
		ASSERT(h->name.ptr[h->name.len] == ':');
		for (size_t j = 0; j < h->value.len; j++) {
			uint8_t c = h->value.ptr[j];

			ASSERT(c == '\t' || (c >= 0x20 && c != 0x7f));
		}
		if (h->value.len > 0) {
			ASSERT(h->value.ptr[0] != ' ' && h->value.ptr[0] != '\t');
			ASSERT(h->value.ptr[h->value.len - 1] != ' ' &&
			       h->value.ptr[h->value.len - 1] != '\t');
		}

		/* the helpers agree with the array: first occurrence wins */
		if (h->name.len >= sizeof(name))
			continue;
		memcpy(name, h->name.ptr, h->name.len);
		name[h->name.len] = '\0';
		ASSERT(http_header_get(req, name, &v));
		ASSERT(v.ptr <= h->value.ptr);
		ASSERT(http_header_count(req, name) >= 1);
		/* the first and the last element of the value's comma list are its tokens */
		comma = memchr(h->value.ptr, ',', h->value.len);
		last = h->value.ptr + h->value.len;
		check_list_element(req, name, h->value.ptr,
				   comma ? (size_t)(comma - h->value.ptr) : h->value.len);
		while (last > h->value.ptr && last[-1] != ',')
			last--;
		check_list_element(req, name, last,
				   (size_t)(h->value.ptr + h->value.len - last));
	}
	ASSERT(prev_end < head_end);
	check_host_gate(req);
}

/* ------------------------------------------------------------------ 1b. the Host gate */

/* http_host_matches (the --domain Host gate): against the first Host value itself when
 * it has no ':' or '[' (must match, in any case mix of the domain), and against a fixed
 * domain (a match means the value is that domain, bracketed or not, with at most a
 * ":port" after it). */
static void check_host_gate(const struct http_request *req)
{
	static const char domain[] = "relay.example.com";
	const size_t dn = sizeof domain - 1;
	struct span v;
	if (!http_header_get(req, "Host", &v)) {
		ASSERT(!http_host_matches(req, domain));
		return;
	}
	if (http_host_matches(req, domain)) {
		size_t off = v.len > 0 && v.ptr[0] == '[' ? 1 : 0;
		ASSERT(v.len >= off + dn && strncasecmp((const char *)v.ptr + off, domain, dn) == 0);
		size_t rest = off + dn + (off ? 1 : 0);
		ASSERT(!off || v.ptr[off + dn] == ']');
		ASSERT(v.len == rest || (v.ptr[rest] == ':' && !memchr(v.ptr + rest + 1, ':', v.len - rest - 1)));
	}
	char own[256];
	if (v.len > 0 && v.len < sizeof own && !memchr(v.ptr, ':', v.len) && !memchr(v.ptr, '[', v.len) &&
	    !memchr(v.ptr, '\0', v.len)) {
		for (size_t i = 0; i < v.len; i++)
			own[i] = (char)((v.ptr[i] >= 'a' && v.ptr[i] <= 'z') ? v.ptr[i] - 32 : v.ptr[i]);
		own[v.len] = '\0';
		ASSERT(http_host_matches(req, own));
	}
}

/* ------------------------------------------------------------------ 2. prefixes */

static enum http_parse_status parse_prefix(const uint8_t *data, size_t k, uint8_t **copy)
{
	*copy = copy_exact(data, k);
	return http_parse_request(*copy, k, &req_prefix);
}

/* The status of prefix k must be INCOMPLETE before the decision point, `full` after. */
static void check_prefix(const uint8_t *data, size_t k, size_t decided_at,
			 enum http_parse_status full)
{
	uint8_t *copy;
	enum http_parse_status st = parse_prefix(data, k, &copy);

	if (k < decided_at) {
		ASSERT(st == HTTP_PARSE_INCOMPLETE);
	} else {
		ASSERT(st == full);
		if (st == HTTP_PARSE_OK)
			assert_same(&req_prefix, copy, &req_full, data);
	}
	free(copy);
}

static void check_prefixes(const uint8_t *data, size_t size, enum http_parse_status full)
{
	uint32_t h = 2166136261u; /* FNV-1a offset basis */
	size_t decided_at;

	if (full == HTTP_PARSE_INCOMPLETE) {
		decided_at = size + 1; /* never */
	} else if (full == HTTP_PARSE_OK) {
		decided_at = req_full.head_bytes;
	} else {
		/*
		 * Smallest prefix with a decision, found assuming the statuses are monotone;
		 * the checks below then verify the assumption around it and elsewhere.
		 */
		size_t lo = 0, hi = size;

		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;
			uint8_t *copy;
			enum http_parse_status st = parse_prefix(data, mid, &copy);

			free(copy);
			if (st == HTTP_PARSE_INCOMPLETE)
				lo = mid + 1;
			else
				hi = mid;
		}
		decided_at = lo;
		ASSERT(decided_at >= 1);
	}

	if (size <= EXHAUSTIVE_PREFIX_BYTES) {
		for (size_t k = 0; k <= size; k++)
			check_prefix(data, k, decided_at, full);
		return;
	}

	if (decided_at <= size) {
		check_prefix(data, decided_at - 1, decided_at, full);
		check_prefix(data, decided_at, decided_at, full);
	}
	/* Sample positions from the input itself, so they move as it mutates. */
	for (size_t i = 0; i < size; i += 1 + size / 64)
		h = (h ^ data[i]) * 16777619u;
	for (unsigned i = 0; i < SAMPLED_PREFIXES; i++) {
		h = h * 1103515245u + 12345u;
		check_prefix(data, (size_t)h % (size + 1), decided_at, full);
	}
}

/* ------------------------------------------------------------------ 3. oracle */

static enum http_parse_status ref_request_line(const uint8_t *l, size_t n,
					       struct http_request *req)
{
	size_t i = 0, t0;
	const uint8_t *q;

	while (i < n && ref_tchar(l[i]))
		i++;
	if (i == 0 || i == n || l[i] != ' ')
		return HTTP_PARSE_BAD;
	req->method = span_make(l, i);
	t0 = ++i;
	if (i == n || l[i] != '/')
		return HTTP_PARSE_BAD;
	while (i < n && l[i] > 0x20 && l[i] < 0x7f)
		i++;
	if (i == n || l[i] != ' ')
		return HTTP_PARSE_BAD;
	req->target = span_make(l + t0, i - t0);
	q = memchr(l + t0, '?', i - t0);
	req->path = span_make(l + t0, q ? (size_t)(q - (l + t0)) : i - t0);
	i++;
	if (n - i < 8 || memcmp(l + i, "HTTP/", 5) != 0 || l[i + 5] < '0' || l[i + 5] > '9' ||
	    l[i + 6] != '.' || l[i + 7] < '0' || l[i + 7] > '9')
		return HTTP_PARSE_BAD;
	if (l[i + 5] != '1' || (l[i + 7] != '0' && l[i + 7] != '1'))
		return HTTP_PARSE_BAD_VERSION;
	if (i + 8 != n)
		return HTTP_PARSE_BAD;
	req->version_minor = (uint8_t)(l[i + 7] - '0');
	return HTTP_PARSE_OK;
}

static enum http_parse_status ref_field_line(const uint8_t *l, size_t n, struct http_request *req)
{
	struct http_header *h;
	size_t i = 0, v0, v1;

	if (!ref_tchar(l[0]))
		return HTTP_PARSE_BAD;
	if (req->header_count == HTTP_HEADERS_COUNT_MAX)
		return HTTP_PARSE_TOO_LARGE;
	while (i < n && ref_tchar(l[i]))
		i++;
	if (i == n || l[i] != ':')
		return HTTP_PARSE_BAD;
	h = &req->headers[req->header_count++];
	h->name = span_make(l, i);
	for (size_t j = i + 1; j < n; j++) {
		if (l[j] != '\t' && (l[j] < 0x20 || l[j] == 0x7f))
			return HTTP_PARSE_BAD;
	}
	v0 = i + 1;
	v1 = n;
	while (v0 < v1 && (l[v0] == ' ' || l[v0] == '\t'))
		v0++;
	while (v1 > v0 && (l[v1 - 1] == ' ' || l[v1 - 1] == '\t'))
		v1--;
	h->value = span_make(l + v0, v1 - v0);
	return HTTP_PARSE_OK;
}

/*
 * Split the first HTTP_HEAD_BYTES_MAX bytes into LF-terminated lines (one CR before the
 * LF belongs to the terminator, any other CR is just an invalid byte) and judge them in
 * order. Returns false when no complete line decides the outcome.
 */
static bool ref_parse(const uint8_t *buf, size_t len, struct http_request *req,
		      enum http_parse_status *st)
{
	size_t lim = MIN(len, (size_t)HTTP_HEAD_BYTES_MAX);
	size_t pos = 0;
	bool have_request_line = false;

	memset(req, 0, sizeof(*req));
	for (;;) {
		const uint8_t *lf = pos < lim ? memchr(buf + pos, '\n', lim - pos) : NULL;
		size_t next, n;

		if (lf == NULL)
			return false;
		next = (size_t)(lf - buf) + 1;
		n = (size_t)(lf - buf) - pos;
		if (n > 0 && buf[pos + n - 1] == '\r')
			n--;
		if (!have_request_line) {
			if (n > 0) {
				*st = ref_request_line(buf + pos, n, req);
				if (*st != HTTP_PARSE_OK)
					return true;
				have_request_line = true;
			}
		} else if (n == 0) {
			req->head_bytes = (uint32_t)next;
			*st = HTTP_PARSE_OK;
			return true;
		} else {
			*st = ref_field_line(buf + pos, n, req);
			if (*st != HTTP_PARSE_OK)
				return true;
		}
		pos = next;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	enum http_parse_status full, ref_st;

	full = http_parse_request(size ? data : NULL, size, &req_full);
	ASSERT(full == HTTP_PARSE_INCOMPLETE || full == HTTP_PARSE_OK || full == HTTP_PARSE_BAD ||
	       full == HTTP_PARSE_TOO_LARGE || full == HTTP_PARSE_BAD_VERSION);
	ASSERT(req_full.header_count <= HTTP_HEADERS_COUNT_MAX);
	/* INCOMPLETE is only possible while within the size limit */
	ASSERT(full != HTTP_PARSE_INCOMPLETE || size <= HTTP_HEAD_BYTES_MAX);
	if (full == HTTP_PARSE_OK)
		check_ok_structure(data, size, &req_full);

	if (size > 0)
		check_prefixes(data, size, full);

	if (size > 0 && ref_parse(data, size, &req_ref, &ref_st)) {
		ASSERT(ref_st == full);
		if (full == HTTP_PARSE_OK)
			assert_same(&req_ref, data, &req_full, data);
	}
	return 0;
}
