/*
 * http_parse.c - strict RFC 9112 request-head parser (contract in http_parse.h).
 *
 * The parser is restartless: every call scans from byte 0 of what the caller has
 * accumulated so far. That keeps it a pure function with no state to get out of sync,
 * and the head is capped at HTTP_HEAD_BYTES_MAX, so the rescan is bounded.
 *
 * Every step either consumes bytes and returns HTTP_PARSE_OK ("this part is fine, go
 * on"), returns HTTP_PARSE_INCOMPLETE when it runs out of bytes before it can decide,
 * or returns an error the moment the byte in front of it can never start a valid head.
 * Because the decision only ever depends on the bytes already scanned, feeding more
 * bytes can never change a decision that was already made: the status over growing
 * prefixes is INCOMPLETE... then one final answer, which the fuzzer checks.
 *
 * Only the first HTTP_HEAD_BYTES_MAX bytes are ever looked at: a head that has not
 * ended (and not failed) within them is TOO_LARGE once more bytes than that exist.
 */
#include "http/http_parse.h"

/*
 * tchar (RFC 9110 §5.6.2): the bytes of a method and a field name. A table rather than
 * a chain of comparisons because it sits on the per-byte path. The ranges do not
 * overlap, so no designated initializer overrides another (-Woverride-init).
 */
static const bool tchar_table[256] = {
	['0' ... '9'] = true,
	['A' ... 'Z'] = true,
	['a' ... 'z'] = true,
	['!'] = true, ['#'] = true, ['$'] = true, ['%'] = true, ['&'] = true,
	['\''] = true, ['*'] = true, ['+'] = true, ['-'] = true, ['.'] = true,
	['^'] = true, ['_'] = true, ['`'] = true, ['|'] = true, ['~'] = true,
};

static inline bool is_tchar(uint8_t c)
{
	return tchar_table[c];
}

/* VCHAR: visible US-ASCII, the only bytes allowed in the request-target. */
static inline bool is_vchar(uint8_t c)
{
	return c >= 0x21 && c <= 0x7e;
}

/* SP / HTAB: optional whitespace around field values. */
static inline bool is_ows(uint8_t c)
{
	return c == ' ' || c == '\t';
}

/*
 * A byte allowed inside a field value: VCHAR, SP, HTAB and obs-text (0x80-0xFF).
 * Everything else is a CTL (0x00-0x1F minus HTAB, and DEL); CR and LF are handled by
 * the caller as the line ending before this is asked.
 */
static inline bool is_field_byte(uint8_t c)
{
	return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* The part of the buffer the parser may look at: [p, end). */
struct cursor {
	const uint8_t *p;
	const uint8_t *end;
};

static inline bool at_end(const struct cursor *c)
{
	return c->p == c->end;
}

/*
 * Consume a line ending starting at c->p, which the caller has seen to be CR or LF.
 * CRLF and bare LF (RFC 9112 §2.2) end a line; a CR followed by anything else is a
 * bare CR, which must be rejected (request smuggling relies on parsers disagreeing
 * about where lines end).
 */
static enum http_parse_status eat_eol(struct cursor *c)
{
	ASSERT(!at_end(c) && (*c->p == '\r' || *c->p == '\n'));
	if (*c->p == '\n') {
		c->p++;
		return HTTP_PARSE_OK;
	}
	if (c->end - c->p < 2)
		return HTTP_PARSE_INCOMPLETE;
	if (c->p[1] != '\n')
		return HTTP_PARSE_BAD;
	c->p += 2;
	return HTTP_PARSE_OK;
}

/* Consume one expected literal byte. */
static enum http_parse_status expect_byte(struct cursor *c, uint8_t want)
{
	if (at_end(c))
		return HTTP_PARSE_INCOMPLETE;
	if (*c->p != want)
		return HTTP_PARSE_BAD;
	c->p++;
	return HTTP_PARSE_OK;
}

/* Consume one DIGIT into *out. */
static enum http_parse_status expect_digit(struct cursor *c, uint8_t *out)
{
	if (at_end(c))
		return HTTP_PARSE_INCOMPLETE;
	if (*c->p < '0' || *c->p > '9')
		return HTTP_PARSE_BAD;
	*out = (uint8_t)(*c->p - '0');
	c->p++;
	return HTTP_PARSE_OK;
}

/*
 * HTTP-version = "HTTP/" DIGIT "." DIGIT, then the line ending. "HTTP" is
 * case-sensitive (RFC 9112 §2.3). A well-formed version other than 1.0/1.1 is
 * BAD_VERSION (505) as soon as its last digit is read: no continuation can make the
 * head acceptable, and the client learns the more useful answer.
 */
static enum http_parse_status parse_version(struct cursor *c, struct http_request *req)
{
	static const char prefix[] = "HTTP/";
	enum http_parse_status st;
	uint8_t major, minor;

	for (size_t i = 0; i < sizeof(prefix) - 1; i++) {
		st = expect_byte(c, (uint8_t)prefix[i]);
		if (st != HTTP_PARSE_OK)
			return st;
	}
	st = expect_digit(c, &major);
	if (st != HTTP_PARSE_OK)
		return st;
	st = expect_byte(c, '.');
	if (st != HTTP_PARSE_OK)
		return st;
	st = expect_digit(c, &minor);
	if (st != HTTP_PARSE_OK)
		return st;
	if (major != 1 || minor > 1)
		return HTTP_PARSE_BAD_VERSION;
	req->version_minor = minor;

	if (at_end(c))
		return HTTP_PARSE_INCOMPLETE;
	if (*c->p != '\r' && *c->p != '\n')
		return HTTP_PARSE_BAD; /* "HTTP/1.10", "HTTP/1.1 " */
	return eat_eol(c);
}

/* request-line = method SP request-target SP HTTP-version CRLF */
static enum http_parse_status parse_request_line(struct cursor *c, struct http_request *req)
{
	const uint8_t *start = c->p;
	const uint8_t *query = NULL;

	/* method = 1*tchar. Exactly one SP after it: no lenient whitespace runs. */
	while (!at_end(c) && is_tchar(*c->p))
		c->p++;
	if (at_end(c))
		return HTTP_PARSE_INCOMPLETE;
	if (*c->p != ' ' || c->p == start)
		return HTTP_PARSE_BAD;
	req->method = span_make(start, (size_t)(c->p - start));
	c->p++;

	/*
	 * request-target: origin-form only, so the first byte must be '/'. That rejects
	 * '*' (asterisk-form), "http://..." (absolute-form) and "host:port"
	 * (authority-form) at their first byte.
	 */
	start = c->p;
	if (at_end(c))
		return HTTP_PARSE_INCOMPLETE;
	if (*c->p != '/')
		return HTTP_PARSE_BAD;
	while (!at_end(c) && is_vchar(*c->p)) {
		if (*c->p == '?' && query == NULL)
			query = c->p;
		c->p++;
	}
	if (at_end(c))
		return HTTP_PARSE_INCOMPLETE;
	if (*c->p != ' ')
		return HTTP_PARSE_BAD;
	req->target = span_make(start, (size_t)(c->p - start));
	req->path = span_make(start, (size_t)((query ? query : c->p) - start));
	c->p++;

	return parse_version(c, req);
}

/*
 * field-line = field-name ":" OWS field-value OWS CRLF. The caller has checked that
 * the first byte is a tchar, so the name is not empty.
 */
static enum http_parse_status parse_field_line(struct cursor *c, struct http_header *h)
{
	const uint8_t *start = c->p;
	const uint8_t *value_end;

	ASSERT(!at_end(c) && is_tchar(*c->p));
	while (!at_end(c) && is_tchar(*c->p))
		c->p++;
	if (at_end(c))
		return HTTP_PARSE_INCOMPLETE;
	/*
	 * Anything but ':' here is BAD: whitespace before the colon (RFC 9112 §5.1 "MUST
	 * reject", another smuggling vector), a line without a colon, or a non-tchar.
	 */
	if (*c->p != ':')
		return HTTP_PARSE_BAD;
	h->name = span_make(start, (size_t)(c->p - start));
	c->p++;

	while (!at_end(c) && is_ows(*c->p))
		c->p++;
	start = c->p;
	value_end = c->p; /* one past the last non-OWS byte: trailing OWS is trimmed */
	while (!at_end(c) && *c->p != '\r' && *c->p != '\n') {
		uint8_t b = *c->p;

		if (!is_field_byte(b))
			return HTTP_PARSE_BAD;
		c->p++;
		if (!is_ows(b))
			value_end = c->p;
	}
	if (at_end(c))
		return HTTP_PARSE_INCOMPLETE;
	h->value = span_make(start, (size_t)(value_end - start));
	return eat_eol(c);
}

static enum http_parse_status parse_head(struct cursor *c, const uint8_t *buf,
					 struct http_request *req)
{
	enum http_parse_status st;

	/* RFC 9112 §2.2: ignore at least one empty line before the request line. */
	for (;;) {
		if (at_end(c))
			return HTTP_PARSE_INCOMPLETE;
		if (*c->p != '\r' && *c->p != '\n')
			break;
		st = eat_eol(c);
		if (st != HTTP_PARSE_OK)
			return st;
	}

	st = parse_request_line(c, req);
	if (st != HTTP_PARSE_OK)
		return st;

	for (;;) {
		uint8_t b;

		if (at_end(c))
			return HTTP_PARSE_INCOMPLETE;
		b = *c->p;
		if (b == '\r' || b == '\n') {
			/* The empty line that ends the head. */
			st = eat_eol(c);
			if (st != HTTP_PARSE_OK)
				return st;
			req->head_bytes = (uint32_t)(c->p - buf);
			return HTTP_PARSE_OK;
		}
		/*
		 * A line starting with whitespace is obs-fold (or, right after the request
		 * line, the whitespace RFC 9112 §2.2 says to reject); ':' is an empty name.
		 * Both are caught by the tchar test.
		 */
		if (!is_tchar(b))
			return HTTP_PARSE_BAD;
		/* A valid field line is starting and there is no room for it. */
		if (req->header_count == HTTP_HEADERS_COUNT_MAX)
			return HTTP_PARSE_TOO_LARGE;
		st = parse_field_line(c, &req->headers[req->header_count]);
		if (st != HTTP_PARSE_OK)
			return st;
		req->header_count++;
	}
}

enum http_parse_status http_parse_request(const uint8_t *buf, size_t len, struct http_request *req)
{
	struct cursor c;
	enum http_parse_status st;

	ASSERT(req != NULL);
	ASSERT(buf != NULL || len == 0);

	req->method = span_make(NULL, 0);
	req->target = span_make(NULL, 0);
	req->path = span_make(NULL, 0);
	req->version_minor = 0;
	req->head_bytes = 0;
	req->header_count = 0;
	if (len == 0)
		return HTTP_PARSE_INCOMPLETE;

	c.p = buf;
	c.end = buf + MIN(len, (size_t)HTTP_HEAD_BYTES_MAX);
	st = parse_head(&c, buf, req);

	if (st == HTTP_PARSE_OK) {
		ASSERT(req->head_bytes > 0 && req->head_bytes <= HTTP_HEAD_BYTES_MAX);
		ASSERT(req->head_bytes <= len);
		ASSERT(req->header_count <= HTTP_HEADERS_COUNT_MAX);
		ASSERT(req->version_minor <= 1);
	}
	/* Ran out of the bytes we may look at while more were there: over the limit. */
	if (st == HTTP_PARSE_INCOMPLETE && len > HTTP_HEAD_BYTES_MAX)
		return HTTP_PARSE_TOO_LARGE;
	return st;
}

bool http_header_get(const struct http_request *req, const char *name, struct span *value)
{
	ASSERT(req != NULL && name != NULL && value != NULL);
	ASSERT(req->header_count <= HTTP_HEADERS_COUNT_MAX);

	for (uint32_t i = 0; i < req->header_count; i++) {
		if (span_eq_nocase(req->headers[i].name, name)) {
			*value = req->headers[i].value;
			return true;
		}
	}
	return false;
}

static struct span trim_ows(struct span s)
{
	while (s.len > 0 && is_ows(s.ptr[0])) {
		s.ptr++;
		s.len--;
	}
	while (s.len > 0 && is_ows(s.ptr[s.len - 1]))
		s.len--;
	return s;
}

/* True if the comma-separated `list` has an element equal (nocase) to `token`. */
static bool list_has_token(struct span list, const char *token)
{
	size_t i = 0;

	for (;;) {
		size_t start = i;

		while (i < list.len && list.ptr[i] != ',')
			i++;
		if (span_eq_nocase(trim_ows(span_make(list.ptr + start, i - start)), token))
			return true;
		if (i == list.len)
			return false;
		i++; /* the comma */
	}
}

bool http_header_has_token(const struct http_request *req, const char *name, const char *token)
{
	ASSERT(req != NULL && name != NULL && token != NULL);
	/* An empty token would match the empty elements of "a,,b": never what is meant. */
	ASSERT(token[0] != '\0');
	ASSERT(req->header_count <= HTTP_HEADERS_COUNT_MAX);

	for (uint32_t i = 0; i < req->header_count; i++) {
		if (span_eq_nocase(req->headers[i].name, name) &&
		    list_has_token(req->headers[i].value, token))
			return true;
	}
	return false;
}

uint32_t http_header_count(const struct http_request *req, const char *name)
{
	uint32_t n = 0;

	ASSERT(req != NULL && name != NULL);
	ASSERT(req->header_count <= HTTP_HEADERS_COUNT_MAX);

	for (uint32_t i = 0; i < req->header_count; i++) {
		if (span_eq_nocase(req->headers[i].name, name))
			n++;
	}
	return n;
}
