/*
 * http_parse.h - HTTP/1.x request head parser: a pure function over a byte span.
 *
 * Contract: no I/O, no allocation, no globals, never reads past the span. The caller
 * accumulates bytes (a request may arrive split across many TCP segments) and calls
 * http_parse_request on everything received so far; INCOMPLETE means call again with
 * more. On OK, req->head_bytes tells where the head ended: bytes after it (pipelined
 * requests, or the first WebSocket frames after an upgrade request) belong to the next
 * layer and are left untouched.
 *
 * Grammar (RFC 9112), strict:
 *   request-line = method SP request-target SP HTTP-version CRLF
 *   method       = 1*tchar
 *   target       = 1*(VCHAR), must start with '/' (origin-form); '*' and absolute-form
 *                  are rejected as BAD
 *   version      = "HTTP/1.0" / "HTTP/1.1" (other HTTP/x.y -> BAD_VERSION)
 *   header-field = field-name ":" OWS field-value OWS CRLF
 *   field-name   = 1*tchar (whitespace before ':' -> BAD)
 *   field-value  = bytes other than CTLs (HTAB allowed, obs-text 0x80-0xFF allowed);
 *                  obs-fold (a line starting with SP/HTAB) -> BAD
 * Bare LF line endings are accepted (RFC 9112 §2.2 allows it); a bare CR is BAD.
 * Leading empty lines before the request line are skipped (RFC 9112 §2.2) but count
 * towards the size limit.
 */
#ifndef PYRELAY_HTTP_PARSE_H
#define PYRELAY_HTTP_PARSE_H

#include "core/common.h"

/* Whole request head (request line + headers + blank line). Above this: 431. */
#define HTTP_HEAD_BYTES_MAX (16u * 1024u)
/* Number of header fields. Above this: 431. */
#define HTTP_HEADERS_COUNT_MAX 64u

enum http_parse_status {
	HTTP_PARSE_INCOMPLETE = 0, /* no error so far, head not finished */
	HTTP_PARSE_OK = 1,
	HTTP_PARSE_BAD = -1,         /* malformed: answer 400 and close */
	HTTP_PARSE_TOO_LARGE = -2,   /* head or header count over the limit: 431 and close */
	HTTP_PARSE_BAD_VERSION = -3, /* HTTP/2.0, HTTP/0.9, HTTP/1.2...: 505 and close */
};

struct http_header {
	struct span name;  /* as received (case preserved) */
	struct span value; /* leading/trailing OWS removed */
};

struct http_request {
	struct span method;
	struct span target; /* full request-target, e.g. "/healthz?x=1" */
	struct span path;   /* target up to (not including) '?' */
	uint8_t version_minor; /* 0 or 1 */
	uint32_t head_bytes;   /* bytes of the head including the final blank line */
	uint32_t header_count;
	struct http_header headers[HTTP_HEADERS_COUNT_MAX];
};

/*
 * Parse the request head at the start of buf[0..len). All spans in *req point into buf.
 * TOO_LARGE is returned as soon as len exceeds HTTP_HEAD_BYTES_MAX without a complete
 * head, or the header count would exceed HTTP_HEADERS_COUNT_MAX; BAD as soon as a
 * byte is seen that can never become a valid head (fail fast, no need to wait).
 */
enum http_parse_status http_parse_request(const uint8_t *buf, size_t len, struct http_request *req);

/*
 * First header named `name` (ASCII case-insensitive). Returns false when absent.
 * Reference §2.1: "if a header is repeated, the first value is used".
 */
bool http_header_get(const struct http_request *req, const char *name, struct span *value);

/*
 * True if any header named `name` contains `token` as one element of its
 * comma-separated list (ASCII case-insensitive, OWS around elements ignored), across
 * all occurrences of the header. Used for "Connection: keep-alive, Upgrade".
 */
bool http_header_has_token(const struct http_request *req, const char *name, const char *token);

/* Number of headers named `name` (case-insensitive). */
uint32_t http_header_count(const struct http_request *req, const char *name);

#endif
