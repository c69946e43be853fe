/*
 * fuzz_http_respond.c - libFuzzer target for http/http_respond.c: the decisions the
 * public listener takes on a parsed request (route, required headers, the RFC 6455
 * §4.2.1 upgrade checks, keep-alive, body) and the response bytes it writes.
 *
 * Input: byte 0 picks the canned response (value % 12) and, in bit 4, the flag
 * "Connection: close"; bytes 1-8 are numbers for the /healthz body; the rest is a
 * request head, parsed by http_parse_request (the decisions run when it parses).
 *
 * Oracles:
 * - every decision equals a reading written here straight from the header array (its
 *   own case-insensitive name match, comma-list split and OWS trim, first-value and
 *   count rules, and the Sec-WebSocket-Key rule of the reference's library): the route
 *   is an exact path match; required headers are present and non-empty; the upgrade
 *   verdict follows method, version and tokens, version header, key, in that order,
 *   and on OK *key is the one Sec-WebSocket-Key value; a request closes on
 *   "Connection: close" or HTTP/1.0 without keep-alive; it has a body when it declares
 *   Transfer-Encoding or a Content-Length other than "0";
 * - every response is under HTTP_RESPONSE_BYTES_MAX, starts with "HTTP/1.1 ", has one
 *   blank line ending the head, "Connection: close" exactly with that flag, a
 *   Content-Length equal to the GET body's length, and the HEAD form is the GET form
 *   without its body; /healthz's body is valid JSON; a 101 carries the accept value.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "envelope/json.h"
#include "http/http_parse.h"
#include "http/http_respond.h"
#include "ws/ws_handshake.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_HEAD_BYTES 9
#define FZ_CANNED_COUNT 12

/* ------------------------------------------------------------------ reference readings */

static char ref_lower(uint8_t c)
{
	return (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
}

static bool ref_eq_nocase(struct span s, const char *lit)
{
	size_t n = strlen(lit);
	if (s.len != n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (ref_lower(s.ptr[i]) != ref_lower((uint8_t)lit[i]))
			return false;
	return true;
}

static bool ref_eq(struct span s, const char *lit)
{
	return s.len == strlen(lit) && memcmp(s.ptr, lit, s.len) == 0;
}

static uint32_t ref_count(const struct http_request *r, const char *name)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < r->header_count; i++)
		n += ref_eq_nocase(r->headers[i].name, name);
	return n;
}

static bool ref_first(const struct http_request *r, const char *name, struct span *v)
{
	for (uint32_t i = 0; i < r->header_count; i++) {
		if (ref_eq_nocase(r->headers[i].name, name)) {
			*v = r->headers[i].value;
			return true;
		}
	}
	return false;
}

static bool ref_nonempty(const struct http_request *r, const char *name)
{
	struct span v;
	return ref_first(r, name, &v) && v.len > 0;
}

/* Any header of that name holds token as one comma-separated element (OWS trimmed). */
static bool ref_token(const struct http_request *r, const char *name, const char *token)
{
	for (uint32_t i = 0; i < r->header_count; i++) {
		if (!ref_eq_nocase(r->headers[i].name, name))
			continue;
		struct span v = r->headers[i].value;
		size_t a = 0;
		while (a <= v.len) {
			size_t b = a;
			while (b < v.len && v.ptr[b] != ',')
				b++;
			size_t s = a, e = b;
			while (s < e && (v.ptr[s] == ' ' || v.ptr[s] == '\t'))
				s++;
			while (e > s && (v.ptr[e - 1] == ' ' || v.ptr[e - 1] == '\t'))
				e--;
			if (ref_eq_nocase(span_make(v.ptr + s, e - s), token))
				return true;
			a = b + 1;
		}
	}
	return false;
}

/* Go's base64.StdEncoding.DecodeString(key) gives 16 bytes: 22 symbols, then "==". */
static bool ref_ws_key(struct span k)
{
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	if (k.len != 24 || k.ptr[22] != '=' || k.ptr[23] != '=')
		return false;
	for (size_t i = 0; i < 22; i++)
		if (k.ptr[i] == '\0' || !memchr(b64, k.ptr[i], sizeof b64 - 1))
			return false;
	return true;
}

static enum ws_upgrade_verdict ref_upgrade(const struct http_request *r, struct span *key)
{
	struct span v;
	if (!ref_eq(r->method, "GET"))
		return WS_UPGRADE_BAD_METHOD;
	if (r->version_minor != 1 || !ref_token(r, "Connection", "upgrade") || !ref_token(r, "Upgrade", "websocket"))
		return WS_UPGRADE_NOT_UPGRADE;
	if (ref_count(r, "Sec-WebSocket-Version") != 1 || !ref_first(r, "Sec-WebSocket-Version", &v) ||
	    !ref_eq(v, "13"))
		return WS_UPGRADE_BAD_VERSION;
	if (ref_count(r, "Sec-WebSocket-Key") != 1 || !ref_first(r, "Sec-WebSocket-Key", key) || !ref_ws_key(*key))
		return WS_UPGRADE_BAD_KEY;
	return WS_UPGRADE_OK;
}

/* ------------------------------------------------------------------ responses */

/* Splits a response at its blank line; checks the shape common to every response. */
static void check_response(const char *out, size_t n, unsigned flags, size_t *head_len, long *content_length)
{
	ASSERT(n > 0 && n < HTTP_RESPONSE_BYTES_MAX);
	ASSERT(strlen(out) == n);
	ASSERT(strncmp(out, "HTTP/1.1 ", 9) == 0);
	const char *end = strstr(out, "\r\n\r\n");
	ASSERT(end != NULL);
	*head_len = (size_t)(end - out) + 4;
	char head[HTTP_RESPONSE_BYTES_MAX];
	memcpy(head, out, *head_len);
	head[*head_len] = '\0';
	ASSERT((strstr(head, "\r\nConnection: close\r\n") != NULL) == ((flags & HTTP_RESP_CLOSE) != 0));
	const char *cl = strstr(head, "\r\nContent-Length: ");
	*content_length = -1;
	if (cl)
		*content_length = strtol(cl + 18, NULL, 10);
}

static void check_get_and_head(const char *get, size_t gn, const char *head, size_t hn, unsigned flags)
{
	size_t gh, hh;
	long gcl, hcl;
	check_response(get, gn, flags, &gh, &gcl);
	check_response(head, hn, flags | HTTP_RESP_HEAD, &hh, &hcl);
	ASSERT(gcl >= 0 && (size_t)gcl == gn - gh); /* Content-Length is the body's length */
	ASSERT(hcl == gcl && hh == hn);               /* HEAD: same headers, no body */
	ASSERT(gh == hh && memcmp(get, head, gh) == 0);
}

static void fuzz_writers(const uint8_t *sel, const uint8_t *num, const char *accept)
{
	enum http_canned which = (enum http_canned)(sel[0] % FZ_CANNED_COUNT);
	unsigned flags = (sel[0] >> 4) & HTTP_RESP_CLOSE;
	char get[HTTP_RESPONSE_BYTES_MAX], head[HTTP_RESPONSE_BYTES_MAX];

	size_t gn = http_write_canned(get, sizeof get, which, flags);
	size_t hn = http_write_canned(head, sizeof head, which, flags | HTTP_RESP_HEAD);
	check_get_and_head(get, gn, head, hn, flags);

	struct healthz h = {
		.version = "dev",
		.connected_binaries = (uint64_t)num[0] << 56 | (uint64_t)num[1] << 8 | num[2],
		.connected_phones = (uint64_t)num[3] << 40 | num[4],
		.uptime_seconds = (uint64_t)num[5] << 60 | (uint64_t)num[6] << 16 | num[7],
	};
	gn = http_write_healthz(get, sizeof get, &h, flags);
	hn = http_write_healthz(head, sizeof head, &h, flags | HTTP_RESP_HEAD);
	check_get_and_head(get, gn, head, hn, flags);
	const char *body = strstr(get, "\r\n\r\n") + 4;
	ASSERT(json_valid(span_make(body, strlen(body))));

	if (accept) {
		size_t sh;
		long scl;
		gn = http_write_switching(get, sizeof get, accept);
		check_response(get, gn, 0, &sh, &scl);
		ASSERT(sh == gn && scl == -1); /* no body, no length: the stream is WebSocket now */
		ASSERT(strncmp(get, "HTTP/1.1 101 ", 13) == 0);
		char line[64];
		snprintf(line, sizeof line, "\r\nSec-WebSocket-Accept: %s\r\n", accept);
		ASSERT(strstr(get, line) != NULL);
	}
}

/* ------------------------------------------------------------------ entry */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < FZ_HEAD_BYTES)
		return 0;
	const uint8_t *p = data + FZ_HEAD_BYTES;
	size_t n = size - FZ_HEAD_BYTES;
	uint8_t *buf = malloc(n ? n : 1); /* exactly sized: spans past it are ASan reports */
	if (!buf)
		abort();
	memcpy(buf, p, n);

	static struct http_request req;
	char accept[WS_ACCEPT_KEY_LEN + 1];
	bool have_accept = false;
	if (http_parse_request(buf, n, &req) == HTTP_PARSE_OK) {
		enum http_route route = http_route_of(req.path);
		enum http_route want_route = ref_eq(req.path, "/healthz")     ? HTTP_ROUTE_HEALTHZ
					     : ref_eq(req.path, "/v1/server") ? HTTP_ROUTE_SERVER
					     : ref_eq(req.path, "/v1/client") ? HTTP_ROUTE_CLIENT
									      : HTTP_ROUTE_NOT_FOUND;
		ASSERT(route == want_route);
		if (route != HTTP_ROUTE_NOT_FOUND)
			ASSERT(ref_eq(req.path, http_route_path(route)));
		if (route == HTTP_ROUTE_SERVER || route == HTTP_ROUTE_CLIENT) {
			bool want = ref_nonempty(&req, "X-Pyrycode-Server") && ref_nonempty(&req, "User-Agent") &&
				    ref_nonempty(&req, route == HTTP_ROUTE_SERVER ? "X-Pyrycode-Version"
										 : "X-Pyrycode-Token");
			ASSERT(http_required_headers_ok(&req, route) == want);
		}

		struct span key = { 0 }, want_key = { 0 };
		enum ws_upgrade_verdict v = ws_upgrade_check(&req, &key);
		ASSERT(v == ref_upgrade(&req, &want_key));
		if (v == WS_UPGRADE_OK) {
			ASSERT(key.ptr == want_key.ptr && key.len == want_key.len);
			ASSERT(key.ptr >= buf && key.ptr + key.len <= buf + n);
			ASSERT(ws_handshake_accept(key, accept));
			have_accept = true;
		}

		bool close = ref_token(&req, "Connection", "close") ||
			     (req.version_minor == 0 && !ref_token(&req, "Connection", "keep-alive"));
		ASSERT(http_request_wants_close(&req) == close);
		struct span cl;
		bool body = ref_count(&req, "Transfer-Encoding") > 0 ||
			    (ref_first(&req, "Content-Length", &cl) && !ref_eq(cl, "0"));
		ASSERT(http_request_has_body(&req) == body);
		bool is_head = ref_eq(req.method, "HEAD");
		ASSERT(http_request_is_head(&req) == is_head);
		ASSERT(http_resp_flags_for(&req, close) ==
		       ((close ? HTTP_RESP_CLOSE : 0u) | (is_head ? HTTP_RESP_HEAD : 0u)));
	}
	fuzz_writers(data, data + 1, have_accept ? accept : NULL);
	free(buf);
	return 0;
}
