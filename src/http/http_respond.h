/*
 * http_respond.h - routing decisions and response bytes for the public listener.
 *
 * Contract: pure functions over a parsed request (http_parse.h); responses are written
 * into caller buffers of at least HTTP_RESPONSE_BYTES_MAX bytes. Bodies never echo
 * request data (reference §10: generic, empty or fixed bodies only).
 */
#ifndef PYRELAY_HTTP_RESPOND_H
#define PYRELAY_HTTP_RESPOND_H

#include "http/http_parse.h"
#include "ws/ws_handshake.h"

#define HTTP_RESPONSE_BYTES_MAX 512u

enum http_route {
	HTTP_ROUTE_NOT_FOUND = 0,
	HTTP_ROUTE_HEALTHZ,
	HTTP_ROUTE_SERVER, /* /v1/server: binaries */
	HTTP_ROUTE_CLIENT, /* /v1/client: phones */
};

/* Exact-path routing (reference §1.2): the query string is ignored, nothing else is
 * normalised (no trailing-slash or percent-decoding matches). */
enum http_route http_route_of(struct span path);
/* The path of a route other than HTTP_ROUTE_NOT_FOUND (for logs: never request data). */
const char *http_route_path(enum http_route route);

/* Reference §2.2 / §2.3: every required header present with a non-empty value. */
bool http_required_headers_ok(const struct http_request *req, enum http_route route);

enum ws_upgrade_verdict {
	WS_UPGRADE_OK = 0,
	WS_UPGRADE_BAD_METHOD,   /* 405, Allow: GET */
	WS_UPGRADE_NOT_UPGRADE,  /* 426: HTTP/1.0, or Connection lacks "upgrade", or Upgrade lacks "websocket" */
	WS_UPGRADE_BAD_VERSION,  /* 426 with Sec-WebSocket-Version: 13 */
	WS_UPGRADE_BAD_KEY,      /* 400: Sec-WebSocket-Key missing, repeated, or not 16 bytes of base64 */
};

/* RFC 6455 §4.2.1 checks, in this order: method, HTTP version and upgrade tokens,
 * version, key. On OK, *key is the Sec-WebSocket-Key value. */
enum ws_upgrade_verdict ws_upgrade_check(const struct http_request *req, struct span *key);

/* "Connection: close", or HTTP/1.0 without "Connection: keep-alive". */
bool http_request_wants_close(const struct http_request *req);
/* The request declares a body (Content-Length other than 0, or Transfer-Encoding). */
bool http_request_has_body(const struct http_request *req);

enum http_canned {
	HTTP_CANNED_BAD_REQUEST,      /* 400 "400 Bad Request": unparseable request */
	HTTP_CANNED_EMPTY_400,        /* 400, body "\n" (Go http.Error(w, "", 400)) */
	HTTP_CANNED_NOT_FOUND,        /* 404 "404 page not found\n" */
	HTTP_CANNED_METHOD,           /* 405 */
	HTTP_CANNED_MISDIRECTED,      /* 421, no body, no content type */
	HTTP_CANNED_UPGRADE_REQUIRED, /* 426 + Upgrade: websocket */
	HTTP_CANNED_WS_VERSION,       /* 426 + Sec-WebSocket-Version: 13 */
	HTTP_CANNED_WS_BAD_KEY,       /* 400 */
	HTTP_CANNED_EMPTY_429,        /* 429, body "\n" */
	HTTP_CANNED_TOO_LARGE,        /* 431 */
	HTTP_CANNED_EMPTY_503,        /* 503, body "\n" */
	HTTP_CANNED_BAD_VERSION,      /* 505 */
};

/* How a response is written (bits). */
enum http_resp_flags {
	HTTP_RESP_CLOSE = 1u << 0, /* "Connection: close": the last response on the connection */
	HTTP_RESP_HEAD = 1u << 1,  /* answering HEAD: the headers a GET gets (Content-Length
				    * included), no body */
};

/* The request is a HEAD (its response carries no body, RFC 9110 §9.3.2). */
bool http_request_is_head(const struct http_request *req);
/* HTTP_RESP_CLOSE if close, plus HTTP_RESP_HEAD if req is a HEAD. */
unsigned http_resp_flags_for(const struct http_request *req, bool close);

size_t http_write_canned(char *out, size_t cap, enum http_canned which, unsigned flags);

struct healthz {
	const char *version;
	uint64_t connected_binaries;
	uint64_t connected_phones;
	uint64_t uptime_seconds;
};

/* 200 with the reference §8.1 body and headers (flags: enum http_resp_flags). */
size_t http_write_healthz(char *out, size_t cap, const struct healthz *h, unsigned flags);

/* 101 Switching Protocols for an accepted WebSocket upgrade. */
size_t http_write_switching(char *out, size_t cap, const char accept[WS_ACCEPT_KEY_LEN + 1]);

#endif
