/*
 * http_reply.c - incremental HTTP/1.x response parser (contract in http_reply.h).
 *
 * Bytes arrive in arbitrary pieces, so the head, chunk-size lines and trailers are
 * gathered a line at a time into r->line (bounded); body bytes are copied straight
 * into the caller's buffer up to its capacity and never gathered.
 */
#include "control/http_reply.h"

#include <string.h>

#define ERR_HEAD_TOO_LARGE "response head too large"
#define ERR_STATUS_LINE "malformed HTTP status line"
#define ERR_HEADER_LINE "malformed HTTP response header line"
#define ERR_CONTENT_LENGTH "bad Content-Length in the response"
#define ERR_TRANSFER_ENCODING "unsupported Transfer-Encoding in the response"
#define ERR_TOO_MANY_1XX "too many 1xx informational responses"
#define ERR_EOF_IN_HEAD "connection closed before the response head was complete"

/* Content-Length above this does not fit Go's ParseUint(s, 10, 63) either. */
#define CONTENT_LENGTH_MAX ((uint64_t)INT64_MAX)
/* Chunk sizes are at most 16 hex digits (Go's parseHexUint). */
#define CHUNK_SIZE_DIGITS_MAX 16u

void http_reply_init(struct http_reply *r, uint8_t *body, size_t body_cap)
{
	/* the line buffer needs no clearing: line_len says how much of it is valid */
	memset(r, 0, offsetof(struct http_reply, line));
	r->state = HTTP_REPLY_HEAD;
	r->body = body;
	r->body_cap = body_cap;
}

static void fail(struct http_reply *r, const char *why)
{
	r->state = HTTP_REPLY_ERROR;
	r->err = why;
}

static void done(struct http_reply *r)
{
	r->state = HTTP_REPLY_DONE;
}

/* The body ends early: what was kept is the body (the caller drops Go's error). */
static void cut(struct http_reply *r)
{
	r->body_cut = true;
	done(r);
}

static bool tchar(uint8_t c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static struct span trim_ows(struct span s)
{
	while (s.len && (s.ptr[0] == ' ' || s.ptr[0] == '\t')) {
		s.ptr++;
		s.len--;
	}
	while (s.len && (s.ptr[s.len - 1] == ' ' || s.ptr[s.len - 1] == '\t'))
		s.len--;
	return s;
}

/* ------------------------------------------------------------------ the head */

static void status_line(struct http_reply *r, struct span l)
{
	/* "HTTP/1.x NNN[ reason]" */
	if (l.len < 12 || memcmp(l.ptr, "HTTP/1.", 7) != 0 || (l.ptr[7] != '0' && l.ptr[7] != '1') ||
	    l.ptr[8] != ' ') {
		fail(r, ERR_STATUS_LINE);
		return;
	}
	int code = 0;
	for (size_t i = 9; i < 12; i++) {
		if (l.ptr[i] < '0' || l.ptr[i] > '9') {
			fail(r, ERR_STATUS_LINE);
			return;
		}
		code = code * 10 + (l.ptr[i] - '0');
	}
	if (code < 100 || (l.len > 12 && l.ptr[12] != ' ')) {
		fail(r, ERR_STATUS_LINE);
		return;
	}
	r->status = code;
	r->status_seen = true;
}

static void content_length(struct http_reply *r, struct span v)
{
	uint64_t n = 0;
	if (v.len == 0) {
		fail(r, ERR_CONTENT_LENGTH);
		return;
	}
	for (size_t i = 0; i < v.len; i++) {
		uint8_t c = v.ptr[i];
		if (c < '0' || c > '9' || n > (CONTENT_LENGTH_MAX - (uint64_t)(c - '0')) / 10) {
			fail(r, ERR_CONTENT_LENGTH);
			return;
		}
		n = n * 10 + (uint64_t)(c - '0');
	}
	if (r->have_length && n != r->content_length) {
		fail(r, ERR_CONTENT_LENGTH);
		return;
	}
	r->have_length = true;
	r->content_length = n;
}

/* Keep v in out when it fits and is printable ASCII, else "" (see http_reply.h). */
static void keep_value(char *out, size_t cap, struct span v)
{
	out[0] = '\0';
	if (v.len >= cap)
		return;
	for (size_t i = 0; i < v.len; i++)
		if (v.ptr[i] < 0x20 || v.ptr[i] > 0x7e)
			return;
	memcpy(out, v.ptr, v.len);
	out[v.len] = '\0';
}

static void header_line(struct http_reply *r, struct span l)
{
	const uint8_t *colon = memchr(l.ptr, ':', l.len);
	if (l.ptr[0] == ' ' || l.ptr[0] == '\t' || colon == NULL || colon == l.ptr) {
		fail(r, ERR_HEADER_LINE);
		return;
	}
	struct span name = span_make(l.ptr, (size_t)(colon - l.ptr));
	for (size_t i = 0; i < name.len; i++) {
		if (!tchar(name.ptr[i])) {
			fail(r, ERR_HEADER_LINE);
			return;
		}
	}
	struct span value = trim_ows(span_make(colon + 1, l.len - name.len - 1));
	if (span_eq_nocase(name, "Content-Length")) {
		content_length(r, value);
	} else if (span_eq_nocase(name, "Transfer-Encoding")) {
		/* exactly one, exactly "chunked" */
		if (r->chunked || !span_eq_nocase(value, "chunked"))
			fail(r, ERR_TRANSFER_ENCODING);
		else
			r->chunked = true;
	} else if (span_eq_nocase(name, "Location")) {
		keep_value(r->location, sizeof r->location, value);
	} else if (span_eq_nocase(name, "Replay-Nonce")) {
		keep_value(r->replay_nonce, sizeof r->replay_nonce, value);
	} else if (span_eq_nocase(name, "Retry-After")) {
		keep_value(r->retry_after, sizeof r->retry_after, value);
	}
}

static void end_of_head(struct http_reply *r)
{
	if (r->status >= 100 && r->status <= 199 && r->status != 101) {
		/* informational: the real response follows */
		if (++r->informational > HTTP_REPLY_1XX_MAX) {
			fail(r, ERR_TOO_MANY_1XX);
			return;
		}
		r->status = 0;
		r->status_seen = false;
		r->have_length = false;
		r->chunked = false;
		r->location[0] = r->replay_nonce[0] = r->retry_after[0] = '\0';
		return;
	}
	r->state = HTTP_REPLY_BODY;
	if (r->status == 101 || r->status == 204 || r->status == 304) {
		r->framing = HTTP_REPLY_NO_BODY;
		done(r);
	} else if (r->chunked) {
		r->framing = HTTP_REPLY_CHUNKED;
		r->chunk = CHUNK_SIZE;
	} else if (r->have_length) {
		r->framing = HTTP_REPLY_LENGTH;
		r->remaining = r->content_length;
		if (r->remaining == 0)
			done(r);
	} else {
		r->framing = HTTP_REPLY_UNTIL_CLOSE;
	}
	if (r->state == HTTP_REPLY_BODY && r->body_cap == 0) {
		r->body_capped = true;
		done(r);
	}
}

static void head_line(struct http_reply *r, struct span l)
{
	if (!r->status_seen)
		status_line(r, l);
	else if (l.len == 0)
		end_of_head(r);
	else
		header_line(r, l);
}

/* ------------------------------------------------------------------ the body */

/* Keep up to k body bytes from p; returns how many were taken. */
static size_t keep(struct http_reply *r, const uint8_t *p, size_t k)
{
	size_t take = MIN(k, r->body_cap - r->body_len);
	memcpy(r->body + r->body_len, p, take);
	r->body_len += take;
	if (r->body_len == r->body_cap) {
		r->body_capped = true;
		done(r);
	}
	return take;
}

static void chunk_size_line(struct http_reply *r, struct span l)
{
	uint64_t n = 0;
	size_t digits = 0;
	/* trailing whitespace and a ";extension" are ignored, as Go's chunked reader */
	const uint8_t *semi = memchr(l.ptr, ';', l.len);
	if (semi)
		l.len = (size_t)(semi - l.ptr);
	l = trim_ows(l);
	for (size_t i = 0; i < l.len; i++) {
		int d = hex_digit_value(l.ptr[i]);
		if (d < 0 || ++digits > CHUNK_SIZE_DIGITS_MAX) {
			cut(r);
			return;
		}
		n = n << 4 | (uint64_t)d;
	}
	if (digits == 0) {
		cut(r);
		return;
	}
	if (n == 0) {
		r->chunk = CHUNK_TRAILER;
		return;
	}
	r->chunk = CHUNK_DATA;
	r->remaining = n;
}

static void body_line(struct http_reply *r, struct span l)
{
	if (r->chunk == CHUNK_SIZE)
		chunk_size_line(r, l);
	else if (l.len == 0) /* CHUNK_TRAILER: the blank line ends the message */
		done(r);
}

/* ------------------------------------------------------------------ driving */

static bool in_line_mode(const struct http_reply *r)
{
	return r->state == HTTP_REPLY_HEAD ||
	       (r->framing == HTTP_REPLY_CHUNKED && (r->chunk == CHUNK_SIZE || r->chunk == CHUNK_TRAILER));
}

/* Gather bytes of one line (up to and including LF); when it is complete, process
 * it without its line ending. Returns bytes used. */
static size_t line_step(struct http_reply *r, const uint8_t *p, size_t n)
{
	bool head = r->state == HTTP_REPLY_HEAD || r->chunk == CHUNK_TRAILER;
	size_t limit = head ? HTTP_REPLY_HEAD_BYTES_MAX : HTTP_REPLY_CHUNK_LINE_BYTES_MAX;
	const uint8_t *lf = memchr(p, '\n', n);
	size_t take = lf ? (size_t)(lf - p) + 1 : n;

	if (r->line_len + take > limit || (head && r->head_bytes + take > HTTP_REPLY_HEAD_BYTES_MAX)) {
		if (r->state == HTTP_REPLY_HEAD)
			fail(r, ERR_HEAD_TOO_LARGE);
		else
			cut(r);
		return take;
	}
	memcpy(r->line + r->line_len, p, take);
	r->line_len += take;
	if (head)
		r->head_bytes += take;
	if (!lf)
		return take;

	struct span l = span_make(r->line, r->line_len - 1);
	if (l.len && l.ptr[l.len - 1] == '\r')
		l.len--;
	r->line_len = 0;
	if (r->state == HTTP_REPLY_HEAD)
		head_line(r, l);
	else
		body_line(r, l);
	return take;
}

static size_t body_step(struct http_reply *r, const uint8_t *p, size_t n)
{
	switch (r->framing) {
	case HTTP_REPLY_UNTIL_CLOSE:
		return keep(r, p, n);
	case HTTP_REPLY_LENGTH: {
		size_t k = keep(r, p, (size_t)MIN((uint64_t)n, r->remaining));
		r->remaining -= k;
		if (r->remaining == 0)
			done(r);
		return k;
	}
	case HTTP_REPLY_CHUNKED:
		if (r->chunk == CHUNK_DATA) {
			size_t k = keep(r, p, (size_t)MIN((uint64_t)n, r->remaining));
			r->remaining -= k;
			if (r->remaining == 0 && r->state == HTTP_REPLY_BODY) {
				r->chunk = CHUNK_DATA_END;
				r->remaining = 2; /* exactly "\r\n", as Go checks */
			}
			return k;
		}
		ASSERT(r->chunk == CHUNK_DATA_END);
		if (p[0] != (r->remaining == 2 ? '\r' : '\n')) {
			cut(r);
			return 1;
		}
		if (--r->remaining == 0)
			r->chunk = CHUNK_SIZE;
		return 1;
	case HTTP_REPLY_NO_BODY:
		break;
	}
	ASSERT(!"no body to read");
	return n;
}

size_t http_reply_feed(struct http_reply *r, const uint8_t *p, size_t n)
{
	size_t used = 0;
	/* every step uses at least one byte or ends the parse: at most n + 1 rounds */
	while (used < n && (r->state == HTTP_REPLY_HEAD || r->state == HTTP_REPLY_BODY)) {
		size_t k = in_line_mode(r) ? line_step(r, p + used, n - used) : body_step(r, p + used, n - used);
		if (k == 0)
			break; /* a body kept nothing: capped (state is DONE) */
		used += k;
	}
	return used;
}

void http_reply_eof(struct http_reply *r)
{
	if (r->state == HTTP_REPLY_HEAD)
		fail(r, ERR_EOF_IN_HEAD);
	else if (r->state == HTTP_REPLY_BODY && r->framing == HTTP_REPLY_UNTIL_CLOSE)
		done(r);
	else if (r->state == HTTP_REPLY_BODY)
		cut(r);
}
