#include "http/http_head.h"

#include <string.h>

enum http_head_status http_head_parse(const uint8_t *buf, size_t len, size_t cap_bytes, struct http_request *req,
				      enum http_canned *refusal)
{
	ASSERT(len <= cap_bytes && cap_bytes <= HTTP_HEAD_BYTES_MAX);
	enum http_parse_status st = http_parse_request(buf, len, req);
	if (st == HTTP_PARSE_OK)
		return HTTP_HEAD_REQUEST;
	if (st == HTTP_PARSE_INCOMPLETE) {
		if (len < cap_bytes)
			return HTTP_HEAD_INCOMPLETE;
		st = HTTP_PARSE_TOO_LARGE;
	}
	*refusal = st == HTTP_PARSE_TOO_LARGE     ? HTTP_CANNED_TOO_LARGE
		   : st == HTTP_PARSE_BAD_VERSION ? HTTP_CANNED_BAD_VERSION
						  : HTTP_CANNED_BAD_REQUEST;
	return HTTP_HEAD_REFUSED;
}

bool http_head_closes(const struct http_request *req, uint32_t requests, bool stopping)
{
	/* A body is never read: answering and closing keeps the framing honest. */
	return http_request_wants_close(req) || http_request_has_body(req) || stopping ||
	       requests >= HTTP_KEEPALIVE_REQUESTS_MAX;
}

uint32_t http_head_consume(uint8_t *buf, uint32_t len, uint32_t head_bytes)
{
	ASSERT(head_bytes <= len);
	memmove(buf, buf + head_bytes, len - head_bytes);
	return len - head_bytes;
}

uint64_t http_head_deadline_ms(uint64_t now_ms, uint32_t pending)
{
	return now_ms + (pending ? HTTP_HEADER_READ_TIMEOUT_MS : HTTP_IDLE_TIMEOUT_MS);
}

bool http_host_matches(const struct http_request *req, const char *domain)
{
	struct span h;
	if (!http_header_get(req, "Host", &h))
		return false;
	const uint8_t *colon = memchr(h.ptr, ':', h.len);
	if (h.len > 0 && h.ptr[0] == '[') {
		const uint8_t *close = memchr(h.ptr, ']', h.len);
		size_t end = close ? (size_t)(close - h.ptr) : 0;
		/* "[host]:port" only; "[host]" alone fails SplitHostPort (missing port) */
		if (close && end + 1 < h.len && h.ptr[end + 1] == ':' && !memchr(close + 2, ':', h.len - end - 2) &&
		    !memchr(h.ptr + 1, '[', end - 1))
			h = span_make(h.ptr + 1, end - 1);
	} else if (colon && !memchr(colon + 1, ':', h.len - (size_t)(colon - h.ptr) - 1)) {
		h.len = (size_t)(colon - h.ptr);
	}
	return span_eq_nocase(h, domain);
}
