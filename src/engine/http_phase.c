/*
 * http_phase.c - a connection's HTTP/1.1 phase on the public listener: request heads
 * (http/http_head.h), /healthz, 404, admission (the application's rate limit, then the
 * --max-connections cap), the header gate and the RFC 6455 checks. An accepted upgrade
 * leaves this phase as one struct upgraded, handed to the WebSocket phase.
 */
#include "engine/internal.h"

#include <string.h>

#include "core/log.h"
#include "ws/ws_handshake.h"

#ifndef PYRELAY_VERSION
#define PYRELAY_VERSION "dev"
#endif

/* ------------------------------------------------------------------ responses */

static void respond(struct worker *w, struct conn *c, const char *buf, size_t n, bool close)
{
	if (!send_queue_bytes(w, c, buf, n)) {
		conn_kill(w, c);
		return;
	}
	if (close)
		conn_drain(w, c);
}

/* flags: enum http_resp_flags (HEAD answers carry no body). */
static void respond_canned(struct worker *w, struct conn *c, enum http_canned which, unsigned flags)
{
	char buf[HTTP_RESPONSE_BYTES_MAX];
	respond(w, c, buf, http_write_canned(buf, sizeof buf, which, flags), flags & HTTP_RESP_CLOSE);
}

static void respond_healthz(struct worker *w, struct conn *c, unsigned flags)
{
	struct healthz h = {
		.version = PYRELAY_VERSION,
		.uptime_seconds = (w->now_ms - w->start_ms) / 1000u,
	};
	w->hooks->healthz(w->app, &h);
	char buf[HTTP_RESPONSE_BYTES_MAX];
	respond(w, c, buf, http_write_healthz(buf, sizeof buf, &h, flags), flags & HTTP_RESP_CLOSE);
}

/* ------------------------------------------------------------------ requests */

/* §1.7 step 8: the global connection cap (503), after the application's admission and
 * before the header gate. The slot is held from here until the request is done
 * (§4.7: until the handler returns): for an upgrade, the WebSocket's whole life; for a
 * request answered without one (400, 405, 426), only until its answer is queued
 * (put_cap_slot), so a kept-alive connection between requests holds none. */
static bool take_cap_slot(struct worker *w, struct conn *c, enum http_route route, uint64_t client_key)
{
	ASSERT(!c->counted);
	char ip[INET6_ADDRSTRLEN];
	if (!group_take_cap(w->group)) {
		conn_ip_text(c, ip, sizeof ip);
		LOG_WARN("conn_cap_reached", KV_STR("path", http_route_path(route)), KV_STR("remote", ip));
		return false;
	}
	/* Then the client's share of it (--max-connections-per-ip, ours): 503 too. Its
	 * stripe of the table being full of other clients also refuses (fail closed). */
	if (group_take_ip(w->group, client_key) != IP_TAKE_OK) {
		group_put_cap(w->group);
		STAT_INC(w->stats.ip_cap_rejects);
		conn_ip_text(c, ip, sizeof ip);
		LOG_WARN("conn_ip_cap_reached", KV_STR("path", http_route_path(route)), KV_STR("remote", ip));
		return false;
	}
	c->counted = true;
	c->client_key = client_key;
	return true;
}

/* The request ends without a WebSocket: its slot goes back before the answer is
 * queued (queuing may tear the connection down, which would release it too). */
static void put_cap_slot(struct worker *w, struct conn *c)
{
	conn_put_cap(w, c);
}

/* The RFC 6455 checks; on success *accept is the Sec-WebSocket-Accept value, else the
 * request is answered (and its cap slot given back). */
static bool upgrade_check(struct worker *w, struct conn *c, const struct http_request *req,
			  char accept[WS_ACCEPT_KEY_LEN + 1])
{
	static const enum http_canned refusal[] = {
		[WS_UPGRADE_BAD_METHOD] = HTTP_CANNED_METHOD,
		[WS_UPGRADE_NOT_UPGRADE] = HTTP_CANNED_UPGRADE_REQUIRED,
		[WS_UPGRADE_BAD_VERSION] = HTTP_CANNED_WS_VERSION,
		[WS_UPGRADE_BAD_KEY] = HTTP_CANNED_WS_BAD_KEY,
	};
	struct span key;
	enum ws_upgrade_verdict v = ws_upgrade_check(req, &key);
	if (v != WS_UPGRADE_OK) {
		ASSERT((size_t)v < ARRAY_LEN(refusal));
		put_cap_slot(w, c);
		respond_canned(w, c, refusal[v], http_resp_flags_for(req, true));
		return false;
	}
	bool ok = ws_handshake_accept(key, accept);
	ASSERT(ok);
	return true;
}

/* One complete request head. True when it is an accepted WebSocket upgrade (with
 * *accept and *route filled): the caller hands the connection on. False: answered, or
 * torn down. */
static bool http_request(struct worker *w, struct conn *c, const struct http_request *req,
			 char accept[WS_ACCEPT_KEY_LEN + 1], enum http_route *routep)
{
	unsigned flags = http_resp_flags_for(req, http_head_closes(req, ++c->requests, w->stopping));
	enum http_route route = *routep = http_route_of(req->path);
	/* §1.3: in --domain mode, before anything else (also /healthz), the Host gate */
	if (c->tls && w->cfg->domain[0] != '\0' && config_mode(w->cfg) == CONFIG_MODE_AUTOCERT &&
	    !http_host_matches(req, w->cfg->domain)) {
		respond_canned(w, c, HTTP_CANNED_MISDIRECTED, flags);
		return false;
	}
	switch (route) {
	case HTTP_ROUTE_HEALTHZ:
		respond_healthz(w, c, flags);
		return false;
	case HTTP_ROUTE_NOT_FOUND:
		respond_canned(w, c, HTTP_CANNED_NOT_FOUND, flags);
		return false;
	case HTTP_ROUTE_SERVER:
	case HTTP_ROUTE_CLIENT:
		break;
	}
	uint64_t client_key = 0;
	int verdict = w->hooks->admit(w->app, conn_ref_of(c), route, req, &client_key);
	if (verdict >= 0) {
		respond_canned(w, c, (enum http_canned)verdict, flags);
		return false;
	}
	if (!take_cap_slot(w, c, route, client_key)) {
		respond_canned(w, c, HTTP_CANNED_EMPTY_503, flags);
		return false;
	}
	if (!http_required_headers_ok(req, route)) {
		put_cap_slot(w, c);
		w->hooks->rejected_headers(w->app, route);
		respond_canned(w, c, HTTP_CANNED_EMPTY_400, flags);
		return false;
	}
	return upgrade_check(w, c, req, accept);
}

/* The accepted upgrade leaves the HTTP phase: everything the WebSocket phase needs is
 * copied into one struct upgraded (the head buffer goes back to the pool), including
 * the bytes after the head: those in the head buffer, then `rest` of this receive. It
 * starts here, or goes to the worker that owns its server-id (handoff.c). */
static void hand_on(struct worker *w, struct conn *c, const struct http_request *req, enum http_route route,
		    const char accept[WS_ACCEPT_KEY_LEN + 1], struct span rest)
{
	uint32_t head = req->head_bytes;
	struct upgraded *u = upgraded_new(req, span_make(c->http_buf + head, c->http_len - head), rest);
	conn_put_http_buf(w, c); /* req pointed into it: not used from here on */
	if (u == NULL) {
		conn_kill(w, c);
		return;
	}
	u->fd = c->fd;
	u->route = (uint8_t)route;
	u->transport = c->ktls ? TRANSPORT_KTLS : c->tls ? TRANSPORT_TLS : TRANSPORT_PLAIN; /* handoff.c refines it */
	u->remote = c->remote;
	u->client_key = c->client_key;
	memcpy(u->accept, accept, sizeof u->accept);
	uint32_t owner = group_owner(w->group, upgraded_server_id(u));
	if (owner != w->id) {
		handoff_begin(w, c, u, owner);
		return;
	}
	ws_phase_start(w, c, u);
	upgraded_free(u);
}

/* Make room for `need` head bytes: the buffer starts at HTTP_HEAD_BUF_INITIAL_BYTES
 * (an upgrade request is a few hundred bytes) and doubles up to HTTP_HEAD_BYTES_MAX, so
 * the handshakes in flight hold kilobytes, not 16 KiB each. */
static bool grow_http_buf(struct worker *w, struct conn *c, size_t need)
{
	ASSERT(need <= HTTP_HEAD_BYTES_MAX);
	size_t want = MAX(MAX(need, (size_t)c->http_cap * 2), (size_t)HTTP_HEAD_BUF_INITIAL_BYTES);
	want = MIN(want, (size_t)HTTP_HEAD_BYTES_MAX);
	return conn_pool_regrow(w, &c->http_buf, &c->http_cap, c->http_len, want);
}

void http_phase_input(struct worker *w, struct conn *c, uint8_t *p, size_t n)
{
	/* Bounded: each pass either consumes input, answers a request, or stops. */
	while (c->state == CONN_HTTP) {
		if (c->http_len == 0 && n > 0)
			c->read_deadline_ms = w->now_ms + HTTP_HEADER_READ_TIMEOUT_MS;
		size_t take = MIN(n, HTTP_HEAD_BYTES_MAX - c->http_len);
		if (c->http_len + take > c->http_cap && !grow_http_buf(w, c, c->http_len + take)) {
			conn_kill(w, c);
			return;
		}
		if (take)
			memcpy(c->http_buf + c->http_len, p, take);
		c->http_len += (uint32_t)take;
		p += take;
		n -= take;
		if (c->http_len == 0)
			break;

		struct http_request req;
		enum http_canned refusal;
		enum http_head_status st = http_head_parse(c->http_buf, c->http_len, HTTP_HEAD_BYTES_MAX, &req, &refusal);
		if (st == HTTP_HEAD_INCOMPLETE)
			break; /* wait for more */
		if (st == HTTP_HEAD_REFUSED) {
			respond_canned(w, c, refusal, HTTP_RESP_CLOSE);
			return;
		}
		char accept[WS_ACCEPT_KEY_LEN + 1];
		enum http_route route;
		if (http_request(w, c, &req, accept, &route)) {
			hand_on(w, c, &req, route, accept, span_make(p, n));
			return;
		}
		if (c->state != CONN_HTTP)
			return;
		/* Keep-alive: the next pipelined request starts right after this head. */
		c->http_len = http_head_consume(c->http_buf, c->http_len, req.head_bytes);
		c->read_deadline_ms = http_head_deadline_ms(w->now_ms, c->http_len);
		conn_timer_update(w, c);
	}
	if (c->state == CONN_HTTP && c->http_len == 0)
		conn_put_http_buf(w, c); /* between keep-alive requests an idle connection holds nothing */
	if (c->state == CONN_HTTP)
		conn_timer_update(w, c);
}
