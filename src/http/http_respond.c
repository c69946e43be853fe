#include "http/http_respond.h"

#include <stdio.h>
#include <string.h>

static const char *const route_paths[] = {
	[HTTP_ROUTE_HEALTHZ] = "/healthz",
	[HTTP_ROUTE_SERVER] = "/v1/server",
	[HTTP_ROUTE_CLIENT] = "/v1/client",
};

enum http_route http_route_of(struct span path)
{
	for (size_t r = 0; r < ARRAY_LEN(route_paths); r++) {
		if (route_paths[r] && span_eq_cstr(path, route_paths[r]))
			return (enum http_route)r;
	}
	return HTTP_ROUTE_NOT_FOUND;
}

const char *http_route_path(enum http_route route)
{
	ASSERT((size_t)route < ARRAY_LEN(route_paths) && route_paths[route] != NULL);
	return route_paths[route];
}

static bool header_nonempty(const struct http_request *req, const char *name)
{
	struct span v;
	return http_header_get(req, name, &v) && v.len > 0;
}

bool http_required_headers_ok(const struct http_request *req, enum http_route route)
{
	ASSERT(route == HTTP_ROUTE_SERVER || route == HTTP_ROUTE_CLIENT);
	if (!header_nonempty(req, "X-Pyrycode-Server") || !header_nonempty(req, "User-Agent"))
		return false;
	if (route == HTTP_ROUTE_SERVER)
		return header_nonempty(req, "X-Pyrycode-Version");
	return header_nonempty(req, "X-Pyrycode-Token");
}

enum ws_upgrade_verdict ws_upgrade_check(const struct http_request *req, struct span *key)
{
	if (!span_eq_cstr(req->method, "GET"))
		return WS_UPGRADE_BAD_METHOD;
	if (req->version_minor < 1 || !http_header_has_token(req, "Connection", "upgrade") ||
	    !http_header_has_token(req, "Upgrade", "websocket"))
		return WS_UPGRADE_NOT_UPGRADE;
	struct span version;
	if (!http_header_get(req, "Sec-WebSocket-Version", &version) || !span_eq_cstr(version, "13") ||
	    http_header_count(req, "Sec-WebSocket-Version") != 1)
		return WS_UPGRADE_BAD_VERSION;
	if (http_header_count(req, "Sec-WebSocket-Key") != 1 || !http_header_get(req, "Sec-WebSocket-Key", key) ||
	    !ws_handshake_key_valid(*key))
		return WS_UPGRADE_BAD_KEY;
	return WS_UPGRADE_OK;
}

bool http_request_wants_close(const struct http_request *req)
{
	if (http_header_has_token(req, "Connection", "close"))
		return true;
	return req->version_minor == 0 && !http_header_has_token(req, "Connection", "keep-alive");
}

bool http_request_has_body(const struct http_request *req)
{
	if (http_header_count(req, "Transfer-Encoding") > 0)
		return true;
	struct span cl;
	if (!http_header_get(req, "Content-Length", &cl))
		return false;
	return !span_eq_cstr(cl, "0");
}

struct canned {
	const char *status;  /* "404 Not Found" */
	const char *headers; /* extra header lines, each ending in \r\n */
	const char *body;
};

#define TEXT_PLAIN "Content-Type: text/plain; charset=utf-8\r\n"
#define NOSNIFF "X-Content-Type-Options: nosniff\r\n"

static const struct canned canned[] = {
	[HTTP_CANNED_BAD_REQUEST] = { "400 Bad Request", TEXT_PLAIN, "400 Bad Request" },
	[HTTP_CANNED_EMPTY_400] = { "400 Bad Request", TEXT_PLAIN NOSNIFF, "\n" },
	[HTTP_CANNED_NOT_FOUND] = { "404 Not Found", TEXT_PLAIN NOSNIFF, "404 page not found\n" },
	[HTTP_CANNED_METHOD] = { "405 Method Not Allowed", "Allow: GET\r\n" TEXT_PLAIN NOSNIFF,
				 "method not allowed: WebSocket upgrades use GET\n" },
	[HTTP_CANNED_MISDIRECTED] = { "421 Misdirected Request", "", NULL },
	[HTTP_CANNED_UPGRADE_REQUIRED] = { "426 Upgrade Required",
					   "Connection: Upgrade\r\nUpgrade: websocket\r\n" TEXT_PLAIN NOSNIFF,
					   "WebSocket upgrade required\n" },
	[HTTP_CANNED_WS_VERSION] = { "426 Upgrade Required",
				     "Sec-WebSocket-Version: 13\r\n" TEXT_PLAIN NOSNIFF,
				     "unsupported WebSocket version: only 13 is supported\n" },
	[HTTP_CANNED_WS_BAD_KEY] = { "400 Bad Request", TEXT_PLAIN NOSNIFF,
				     "invalid Sec-WebSocket-Key\n" },
	[HTTP_CANNED_EMPTY_429] = { "429 Too Many Requests", TEXT_PLAIN NOSNIFF, "\n" },
	[HTTP_CANNED_TOO_LARGE] = { "431 Request Header Fields Too Large", TEXT_PLAIN,
				    "431 Request Header Fields Too Large" },
	[HTTP_CANNED_EMPTY_503] = { "503 Service Unavailable", TEXT_PLAIN NOSNIFF, "\n" },
	[HTTP_CANNED_BAD_VERSION] = { "505 HTTP Version Not Supported", TEXT_PLAIN,
				      "505 HTTP Version Not Supported" },
};

bool http_request_is_head(const struct http_request *req)
{
	return span_eq_cstr(req->method, "HEAD");
}

unsigned http_resp_flags_for(const struct http_request *req, bool close)
{
	return (close ? HTTP_RESP_CLOSE : 0u) | (http_request_is_head(req) ? HTTP_RESP_HEAD : 0u);
}

size_t http_write_canned(char *out, size_t cap, enum http_canned which, unsigned flags)
{
	ASSERT((size_t)which < ARRAY_LEN(canned));
	const struct canned *c = &canned[which];
	const char *body = c->body ? c->body : "";
	/* HEAD: Content-Length as for GET (Go's server does the same), no body. */
	int n = snprintf(out, cap, "HTTP/1.1 %s\r\n%s%sContent-Length: %zu\r\n\r\n%s", c->status, c->headers,
			 (flags & HTTP_RESP_CLOSE) ? "Connection: close\r\n" : "", strlen(body),
			 (flags & HTTP_RESP_HEAD) ? "" : body);
	ASSERT(n > 0 && (size_t)n < cap);
	return (size_t)n;
}

size_t http_write_healthz(char *out, size_t cap, const struct healthz *h, unsigned flags)
{
	char body[256];
	/* The version is a build-time constant of safe characters, never request data. */
	int blen = snprintf(body, sizeof body,
			    "{\"status\":\"ok\",\"version\":\"%s\",\"connected_binaries\":%llu,"
			    "\"connected_phones\":%llu,\"uptime_seconds\":%llu}",
			    h->version, (unsigned long long)h->connected_binaries,
			    (unsigned long long)h->connected_phones, (unsigned long long)h->uptime_seconds);
	ASSERT(blen > 0 && (size_t)blen < sizeof body);
	int n = snprintf(out, cap,
			 "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n"
			 "Content-Type: application/json; charset=utf-8\r\n%sContent-Length: %d\r\n\r\n%s",
			 (flags & HTTP_RESP_CLOSE) ? "Connection: close\r\n" : "", blen,
			 (flags & HTTP_RESP_HEAD) ? "" : body);
	ASSERT(n > 0 && (size_t)n < cap);
	return (size_t)n;
}

size_t http_write_switching(char *out, size_t cap, const char accept[WS_ACCEPT_KEY_LEN + 1])
{
	int n = snprintf(out, cap,
			 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
			 "Sec-WebSocket-Accept: %s\r\n\r\n",
			 accept);
	ASSERT(n > 0 && (size_t)n < cap);
	return (size_t)n;
}
