/*
 * test_registry.c - the registry shard (src/relay/relay.c) driven through a fake engine.
 *
 * The test defines every engine function the relay calls (conn_ws_send_text,
 * conn_ws_close, conn_abort, conn_ws_ping, conn_heartbeat_start, conn_pause_recv,
 * conn_resume_recv, conn_remote_ip, worker_schedule, worker_cancel_timer), so the static
 * linker takes relay.o's references from here and never pulls worker.o (and its ring)
 * out of libpyrelay.a. The worker is built by hand around the real timer wheel, bufpool
 * and outq, and the fakes keep the engine's bookkeeping the relay reads:
 * - sends really append the WebSocket frame to c->out and mark counted items, so
 *   c->out.bytes and c->items_pending drive the phone budget and the binary's
 *   high-water mark exactly as in the engine; write_bytes() consumes like a completed
 *   send and reports relay_items_written;
 * - conn_ws_close on an open connection moves it to CLOSING and queues its end; pump()
 *   then calls relay_end once per connection, from the "loop", never re-entrantly;
 * - a peer's close or drop is peer_end(): peer_close_code, then relay_end.
 *
 * Covered (reference §2.2, §2.3, §3, §4, §5.7, §6.1): claim, conflict probe (pong,
 * timeout, incumbent or claimant ending), phone registration and its cap, grace
 * (release, reclaim, expiry, stale fire, displaced binaries), routing both ways with
 * exact bytes, close directives, close notices, the phone outbox budget, binary-side
 * back-pressure, admission (rate limit, connection cap), shutdown.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/log.h"
#include "engine/worker.h"
#include "relay/ratelimit.h"
#include "relay/relay.h"
#include "ws/ws_frame.h"

#define NCONNS 2304u
#define T0_MS 1000000u
#define GRACE_MS 30000u
#define PROBE_MS 10000u
#define POOL_BUDGET (UINT64_C(256) * 1024 * 1024)
#define SID "srv-1"

/* ------------------------------------------------------------------ fake engine */

struct frame_rec {
	uint8_t *data;
	size_t len;
	uint64_t seq;
	bool counted;
};

struct conn_rec {
	struct frame_rec *frames;
	size_t nframes;
	size_t frames_cap;
	unsigned ncloses;
	uint16_t close_code;
	char close_reason[128];
	uint64_t close_seq;
	unsigned npings;
	uint8_t ping[WS_CONTROL_PAYLOAD_BYTES_MAX];
	size_t ping_len;
	unsigned naborts;
	unsigned pause_calls;  /* calls that changed the state */
	unsigned resume_calls;
	unsigned hb_starts;
	bool refuse_sends;     /* emulate a refused append (buffer budget) */
	bool end_queued;
	unsigned ends;         /* relay_end calls */
};

struct fixture {
	struct config cfg;
	struct worker *w;
	struct conn_rec recs[NCONNS];
	struct conn *pending[NCONNS];
	size_t npending;
	uint32_t next_conn;
	uint64_t seq;
	bool in_relay_end;
};

static struct fixture *F;

static struct conn_rec *rec(const struct conn *c)
{
	return &F->recs[c->idx];
}

static void queue_end(struct conn *c)
{
	struct conn_rec *r = rec(c);
	if (r->end_queued || r->ends)
		return;
	r->end_queued = true;
	ASSERT(F->npending < NCONNS);
	F->pending[F->npending++] = c;
}

bool conn_ws_send_text(struct worker *w, struct conn *c, const struct iovec *parts, size_t nparts, bool counted)
{
	if (c->state != CONN_WS_OPEN || rec(c)->refuse_sends)
		return false;
	struct iovec iov[8];
	uint8_t hdr[WS_FRAME_HEADER_BYTES_MAX];
	uint64_t len = 0;
	ASSERT(nparts + 1 <= ARRAY_LEN(iov));
	for (size_t i = 0; i < nparts; i++) {
		len += parts[i].iov_len;
		iov[i + 1] = parts[i];
	}
	iov[0].iov_base = hdr;
	iov[0].iov_len = ws_frame_header_encode(hdr, true, WS_OP_TEXT, len, NULL);
	if (!outq_append(&c->out, &w->pool, iov, nparts + 1))
		return false;
	if (counted) {
		outq_mark_item(&c->out);
		c->items_pending++;
	}
	struct conn_rec *r = rec(c);
	if (r->nframes == r->frames_cap) {
		r->frames_cap = r->frames_cap ? 2 * r->frames_cap : 8;
		r->frames = realloc(r->frames, r->frames_cap * sizeof *r->frames);
		ASSERT(r->frames != NULL);
	}
	struct frame_rec *f = &r->frames[r->nframes++];
	f->data = malloc(len ? len : 1);
	ASSERT(f->data != NULL);
	f->len = 0;
	for (size_t i = 0; i < nparts; i++) {
		memcpy(f->data + f->len, parts[i].iov_base, parts[i].iov_len);
		f->len += parts[i].iov_len;
	}
	f->seq = ++F->seq;
	f->counted = counted;
	return true;
}

void conn_ws_close(struct worker *w, struct conn *c, uint16_t code, const char *reason)
{
	if (c->state != CONN_WS_OPEN)
		return; /* first close wins */
	struct conn_rec *r = rec(c);
	r->ncloses++;
	r->close_code = code; /* as the relay asked: the engine's own 1011 fallback is not applied */
	snprintf(r->close_reason, sizeof r->close_reason, "%s", reason ? reason : "");
	r->close_seq = ++F->seq;
	c->state = CONN_WS_CLOSING;
	c->recv_paused = false;
	queue_end(c);
}

void conn_abort(struct worker *w, struct conn *c)
{
	if (c->state == CONN_DEAD || c->state == CONN_FREE)
		return;
	rec(c)->naborts++;
	queue_end(c);
	c->state = CONN_DEAD;
}

bool conn_ws_ping(struct worker *w, struct conn *c, const void *payload, size_t len)
{
	if (c->state != CONN_WS_OPEN || len > WS_CONTROL_PAYLOAD_BYTES_MAX)
		return false;
	struct conn_rec *r = rec(c);
	r->npings++;
	memcpy(r->ping, payload, len);
	r->ping_len = len;
	return true;
}

void conn_heartbeat_start(struct worker *w, struct conn *c)
{
	if (c->state == CONN_WS_OPEN)
		rec(c)->hb_starts++;
}

void conn_pause_recv(struct worker *w, struct conn *c)
{
	if (c->recv_paused || c->state != CONN_WS_OPEN)
		return;
	c->recv_paused = true;
	rec(c)->pause_calls++;
}

void conn_resume_recv(struct worker *w, struct conn *c)
{
	if (!c->recv_paused)
		return;
	c->recv_paused = false;
	rec(c)->resume_calls++;
}

size_t conn_remote_ip(const struct conn *c, char *out, size_t cap)
{
	ASSERT(cap >= INET6_ADDRSTRLEN);
	if (c->remote.family == 0 || inet_ntop(c->remote.family, c->remote.bytes, out, (socklen_t)cap) == NULL) {
		out[0] = '\0';
		return 0;
	}
	return strlen(out);
}

void worker_schedule(struct worker *w, struct tw_node *n, uint64_t deadline_ms)
{
	timer_wheel_schedule(&w->tw, n, deadline_ms);
}

void worker_cancel_timer(struct worker *w, struct tw_node *n)
{
	timer_wheel_cancel(&w->tw, n);
}

/* ------------------------------------------------------------------ the "loop" */

static void pump(void)
{
	/* FIFO; each connection's end reported once, after the call that caused it. */
	for (size_t i = 0; i < F->npending; i++) {
		struct conn *c = F->pending[i];
		struct conn_rec *r = rec(c);
		r->end_queued = false;
		r->ends++;
		c->ended_reported = true;
		assert_false(F->in_relay_end);
		F->in_relay_end = true;
		relay_end(F->w, c);
		F->in_relay_end = false;
	}
	F->npending = 0;
}

static void on_fire(struct tw_node *n, void *ctx)
{
	struct worker *w = ctx;
	assert_true(n->kind >= TW_KIND_RELAY); /* the fakes never schedule connection timers */
	relay_timer(w, n);
}

static void advance(uint64_t ms)
{
	F->w->now_ms += ms;
	timer_wheel_advance(&F->w->tw, F->w->now_ms, on_fire, F->w);
	pump();
}

/* n bytes of c's queue reached the socket (as the engine's send completion). */
static void write_bytes(struct conn *c, uint64_t n)
{
	struct worker *w = F->w;
	if (n > c->out.bytes)
		n = c->out.bytes;
	uint32_t items = outq_consume(&c->out, &w->pool, (size_t)n);
	if (items) {
		assert_true(c->items_pending >= items);
		c->items_pending -= items;
		relay_items_written(w, c, items);
	}
	pump();
}

/* The peer closed (code != 0) or dropped (code 0) an open connection. */
static void peer_end(struct conn *c, uint16_t code)
{
	assert_int_equal(c->state, CONN_WS_OPEN);
	c->peer_close_code = code;
	c->state = CONN_WS_CLOSING;
	queue_end(c);
	pump();
}

/* ------------------------------------------------------------------ fixture */

static void default_cfg(struct config *cfg)
{
	memset(cfg, 0, sizeof *cfg);
	cfg->max_connections = 1000;
	cfg->rate_limit_burst = 20;
	cfg->rate_limit_refill_ms = 6000;
	cfg->grace_period_ms = GRACE_MS;
	cfg->heartbeat_interval_ms = 30000;
	cfg->heartbeat_timeout_ms = 30000;
	cfg->conflict_probe_timeout_ms = PROBE_MS;
}

static int devnull_fd = -1;

static void fx_open(const struct config *cfg)
{
	F = calloc(1, sizeof *F);
	ASSERT(F != NULL);
	F->cfg = *cfg;
	struct worker *w = calloc_aligned(sizeof *w);
	ASSERT(w != NULL);
	w->cfg = &F->cfg;
	w->conns = calloc(NCONNS, sizeof *w->conns);
	ASSERT(w->conns != NULL);
	w->conn_cap = NCONNS;
	w->listen_fd = w->wake_fd = -1;
	w->now_ms = w->start_ms = T0_MS;
	timer_wheel_init(&w->tw, w->now_ms);
	bufpool_init(&w->pool, POOL_BUDGET);
	F->w = w;
	w->relay = relay_shard_create(w);
	assert_non_null(w->relay);
}

static void fx_close(void)
{
	struct worker *w = F->w;
	/* Every peer still open drops; every end gets reported. */
	for (uint32_t i = 0; i < F->next_conn; i++) {
		struct conn *c = &w->conns[i];
		if (c->state == CONN_WS_OPEN) {
			c->state = CONN_WS_CLOSING;
			queue_end(c);
		}
	}
	pump();
	for (uint32_t i = 0; i < F->next_conn; i++) {
		struct conn *c = &w->conns[i];
		assert_int_equal(rec(c)->ends, 1); /* exactly once per upgraded connection */
		assert_int_equal(c->relay.role, RELAY_ROLE_NONE);
		assert_null(c->relay.slot);
		outq_clear(&c->out, &w->pool);
		for (size_t k = 0; k < F->recs[i].nframes; k++)
			free(F->recs[i].frames[k].data);
		free(F->recs[i].frames);
	}
	const struct relay_stats *st = relay_stats_of(w->relay);
	assert_int_equal(st->binaries, 0);
	assert_int_equal(st->phones, 0);
	relay_shard_destroy(w->relay);
	/* phone ids and spilled notices all went back to the pool */
	assert_int_equal(w->pool.bytes_in_use, 0);
	bufpool_destroy(&w->pool);
	free(w->conns);
	free(w);
	free(F);
	F = NULL;
}

static int setup(void **state)
{
	struct config cfg;
	default_cfg(&cfg);
	fx_open(&cfg);
	return 0;
}

static int teardown(void **state)
{
	fx_close();
	return 0;
}

static const struct relay_stats *stats(void)
{
	return relay_stats_of(F->w->relay);
}

/* ------------------------------------------------------------------ connections */

static struct conn *new_conn(enum http_route route, uint8_t ip_last)
{
	ASSERT(F->next_conn < NCONNS);
	uint32_t i = F->next_conn++;
	struct conn *c = &F->w->conns[i];
	c->idx = i;
	c->gen = 1;
	c->fd = -1;
	c->state = CONN_WS_OPEN;
	c->route = (uint8_t)route;
	c->remote.family = AF_INET;
	c->remote.bytes[0] = 127;
	c->remote.bytes[3] = ip_last;
	return c;
}

static void parse_req(const char *text, struct http_request *req)
{
	assert_int_equal(http_parse_request((const uint8_t *)text, strlen(text), req), HTTP_PARSE_OK);
}

static struct conn *open_binary(const char *id)
{
	char text[512];
	snprintf(text, sizeof text,
		 "GET /v1/server HTTP/1.1\r\nHost: relay\r\nX-Pyrycode-Server: %s\r\n"
		 "X-Pyrycode-Version: 1.2.3\r\nUser-Agent: test\r\n\r\n",
		 id);
	struct http_request req;
	parse_req(text, &req);
	struct conn *c = new_conn(HTTP_ROUTE_SERVER, 1);
	relay_open(F->w, c, HTTP_ROUTE_SERVER, &req);
	pump();
	return c;
}

static struct conn *open_phone(const char *id)
{
	char text[512];
	snprintf(text, sizeof text,
		 "GET /v1/client HTTP/1.1\r\nHost: relay\r\nX-Pyrycode-Server: %s\r\n"
		 "X-Pyrycode-Token: tok\r\nX-Pyrycode-Device-Name: pixel\r\nUser-Agent: test\r\n\r\n",
		 id);
	struct http_request req;
	parse_req(text, &req);
	struct conn *c = new_conn(HTTP_ROUTE_CLIENT, 2);
	relay_open(F->w, c, HTTP_ROUTE_CLIENT, &req);
	pump();
	return c;
}

static void send_msg(struct conn *c, const char *s)
{
	relay_message(F->w, c, WS_OP_TEXT, span_make(s, strlen(s)));
	pump();
}

static void send_buf(struct conn *c, const void *p, size_t n)
{
	relay_message(F->w, c, WS_OP_TEXT, span_make(p, n));
	pump();
}

static void pong(struct conn *c, const char *payload)
{
	relay_pong(F->w, c, span_make(payload, strlen(payload)));
	pump();
}

static void assert_open(const struct conn *c)
{
	assert_int_equal(c->state, CONN_WS_OPEN);
	assert_int_equal(rec(c)->ncloses, 0);
	assert_int_equal(rec(c)->naborts, 0);
}

static void assert_closed(const struct conn *c, uint16_t code, const char *reason)
{
	assert_int_equal(rec(c)->ncloses, 1);
	assert_int_equal(rec(c)->close_code, code);
	assert_string_equal(rec(c)->close_reason, reason);
	assert_int_equal(rec(c)->ends, 1);
}

static const struct frame_rec *last_frame(const struct conn *c)
{
	assert_true(rec(c)->nframes > 0);
	return &rec(c)->frames[rec(c)->nframes - 1];
}

static void assert_frame(const struct frame_rec *f, const char *expect)
{
	size_t n = strlen(expect);
	if (f->len != n || memcmp(f->data, expect, n) != 0)
		fail_msg("frame \"%.*s\" != expected \"%s\"", (int)f->len, (const char *)f->data, expect);
}

/* The phone's conn_id as the relay stores it; checks the client-<id>-<hex8> shape. */
static const char *conn_id_of(const struct conn *p, const char *id)
{
	static char buf[4][256];
	static unsigned k;
	char *out = buf[k++ % 4];
	assert_int_equal(p->relay.role, RELAY_ROLE_PHONE);
	int n = snprintf(out, 256, "client-%s-%.*s", id, RELAY_CONN_HEX_LEN, p->relay.hex);
	assert_true(n > 0 && n < 256);
	size_t pre = strlen("client-") + strlen(id) + 1;
	assert_int_equal(n, pre + RELAY_CONN_HEX_LEN);
	assert_memory_equal(out, "client-", 7);
	assert_memory_equal(out + 7, id, strlen(id));
	assert_int_equal(out[pre - 1], '-');
	for (size_t i = pre; i < (size_t)n; i++)
		assert_non_null(strchr("0123456789abcdef", out[i]));
	return out;
}

static void wrapped(char *out, size_t cap, const char *cid, const char *frame)
{
	snprintf(out, cap, "{\"conn_id\":\"%s\",\"frame\":%s}", cid, frame);
}

static void notice(char *out, size_t cap, const char *cid, unsigned code)
{
	snprintf(out, cap, "{\"conn_id\":\"%s\",\"close_code\":%u}", cid, code);
}

/* A JSON string value of exactly len bytes: "aaa...". */
static char *json_string_of_len(size_t len)
{
	char *s = malloc(len + 1);
	ASSERT(s != NULL && len >= 2);
	s[0] = '"';
	memset(s + 1, 'a', len - 2);
	s[len - 1] = '"';
	s[len] = '\0';
	return s;
}

/* {"conn_id":"<cid>",["close_code":N,]"frame":<frame>} into a fresh buffer. */
static char *envelope_for(const char *cid, unsigned close_code, const char *frame, size_t *len)
{
	size_t cap = strlen(cid) + strlen(frame) + 64;
	char *s = malloc(cap);
	ASSERT(s != NULL);
	int n = close_code ? snprintf(s, cap, "{\"conn_id\":\"%s\",\"close_code\":%u,\"frame\":%s}", cid, close_code, frame)
			   : snprintf(s, cap, "{\"conn_id\":\"%s\",\"frame\":%s}", cid, frame);
	*len = (size_t)n;
	return s;
}

/* ------------------------------------------------------------------ claims and probes */

static void test_claim_then_conflict_pong_rejects_claimant(void **state)
{
	struct conn *b1 = open_binary(SID);
	assert_open(b1);
	assert_int_equal(rec(b1)->hb_starts, 1);
	assert_int_equal(stats()->binaries, 1);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_ACCEPT], 1);
	assert_int_equal(rec(b1)->npings, 0);

	struct conn *b2 = open_binary(SID);
	assert_open(b2); /* waiting for the probe */
	assert_int_equal(rec(b2)->hb_starts, 0);
	assert_int_equal(rec(b1)->npings, 1);
	assert_int_equal(rec(b1)->ping_len, strlen(RELAY_PROBE_PAYLOAD));
	assert_memory_equal(rec(b1)->ping, RELAY_PROBE_PAYLOAD, strlen(RELAY_PROBE_PAYLOAD));
	assert_int_equal(stats()->binaries, 1);

	/* a claimant's frames are not routed before its claim resolves */
	struct conn *early = open_phone(SID);
	char env[256];
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":1}", conn_id_of(early, SID));
	send_msg(b2, env);
	assert_int_equal(rec(early)->nframes, 0);
	assert_int_equal(stats()->dropped[RELAY_DROP_MALFORMED_ENVELOPE], 0);

	/* a heartbeat pong (other payload) does not answer the probe; neither does the claimant */
	pong(b1, "hb-1");
	pong(b2, RELAY_PROBE_PAYLOAD);
	assert_open(b2);

	pong(b1, RELAY_PROBE_PAYLOAD);
	assert_closed(b2, 4409, "server-id already claimed");
	assert_open(b1);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_REJECT_409], 1);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_SERVER_IN_USE], 1);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_ACCEPT], 1);
	assert_int_equal(stats()->binaries, 1);

	/* the probe timer was cancelled: nothing happens at its deadline */
	advance(PROBE_MS + 100);
	assert_open(b1);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_SERVER_IN_USE], 1);

	/* b1 still holds: a phone registers and routes to it */
	struct conn *p = open_phone(SID);
	assert_open(p);
	send_msg(p, "1");
	char exp[256];
	wrapped(exp, sizeof exp, conn_id_of(p, SID), "1");
	assert_int_equal(rec(b1)->nframes, 1);
	assert_frame(last_frame(b1), exp);
	assert_int_equal(rec(b2)->nframes, 0);
	assert_open(early);
}

static void test_probe_timeout_takes_over(void **state)
{
	struct conn *b1 = open_binary(SID);
	struct conn *p1 = open_phone(SID);
	struct conn *p2 = open_phone(SID);
	assert_int_equal(stats()->phones, 2);
	struct conn *b2 = open_binary(SID);
	assert_int_equal(rec(b1)->npings, 1);

	advance(PROBE_MS - 20);
	assert_open(b1);
	assert_open(b2);
	assert_open(p1);

	advance(40);
	assert_closed(b1, WS_CLOSE_INTERNAL_ERROR, "heartbeat timeout");
	assert_closed(p1, 4404, "binary reclaimed server-id");
	assert_closed(p2, 4404, "binary reclaimed server-id");
	assert_open(b2);
	assert_int_equal(rec(b2)->hb_starts, 1);
	assert_int_equal(stats()->binaries, 1);
	assert_int_equal(stats()->phones, 0);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_ACCEPT], 2);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_REJECT_409], 0);
	/* evicted phones' ends sent no close notice to the new holder */
	assert_int_equal(rec(b2)->nframes, 0);

	/* a late probe pong from the displaced incumbent changes nothing */
	relay_pong(F->w, b1, span_cstr(RELAY_PROBE_PAYLOAD));
	pump();
	assert_open(b2);

	/* the claimant holds: a phone registers and routes to it */
	struct conn *p3 = open_phone(SID);
	assert_open(p3);
	send_msg(p3, "{\"k\":true}");
	char exp[256];
	wrapped(exp, sizeof exp, conn_id_of(p3, SID), "{\"k\":true}");
	assert_int_equal(rec(b2)->nframes, 1);
	assert_frame(last_frame(b2), exp);

	/* the displaced binary's end (already reported) armed no grace for b2 */
	advance(GRACE_MS + 1000);
	assert_int_equal(stats()->grace_expiries, 0);
	assert_open(p3);
	assert_open(b2);

	/* b2's own end does arm grace, and it expires exactly once */
	peer_end(b2, 1000);
	assert_int_equal(stats()->binaries, 0);
	advance(GRACE_MS + 20);
	assert_int_equal(stats()->grace_expiries, 1);
	assert_closed(p3, WS_CLOSE_NORMAL, "");
}

static void test_incumbent_ends_during_probe_takes_over(void **state)
{
	struct conn *b1 = open_binary(SID);
	struct conn *p1 = open_phone(SID);
	struct conn *b2 = open_binary(SID);
	assert_int_equal(rec(b1)->npings, 1);

	peer_end(b1, 0); /* the incumbent dies: that is the probe's answer, at once */
	assert_open(b2);
	assert_int_equal(rec(b2)->hb_starts, 1);
	assert_closed(p1, 4404, "binary reclaimed server-id");
	assert_int_equal(stats()->binaries, 1);
	assert_int_equal(stats()->phones, 0);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_ACCEPT], 2);
	assert_int_equal(rec(b2)->nframes, 0);

	/* neither the old probe deadline nor a grace timer fires later */
	advance(GRACE_MS + PROBE_MS);
	assert_open(b2);
	assert_int_equal(stats()->grace_expiries, 0);
	assert_int_equal(stats()->binaries, 1);

	struct conn *p2 = open_phone(SID);
	assert_open(p2);
	send_msg(p2, "[]");
	assert_int_equal(rec(b2)->nframes, 1);
}

static void test_claimant_ends_during_probe(void **state)
{
	struct conn *b1 = open_binary(SID);
	struct conn *p1 = open_phone(SID);
	struct conn *b2 = open_binary(SID);
	peer_end(b2, 0);
	assert_open(b1);
	assert_open(p1);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_REJECT_409], 0);

	/* its probe deadline passes without a takeover */
	advance(PROBE_MS + 100);
	assert_open(b1);
	assert_open(p1);
	assert_int_equal(stats()->binaries, 1);

	/* and a later claimant is probed afresh */
	struct conn *b3 = open_binary(SID);
	assert_open(b3);
	assert_int_equal(rec(b1)->npings, 2);
	pong(b1, RELAY_PROBE_PAYLOAD);
	assert_closed(b3, 4409, "server-id already claimed");
}

static void test_second_claimant_during_probe_is_refused(void **state)
{
	struct conn *b1 = open_binary(SID);
	struct conn *b2 = open_binary(SID);
	struct conn *b3 = open_binary(SID);
	assert_open(b2);
	assert_closed(b3, 4409, "server-id already claimed");
	assert_int_equal(rec(b1)->npings, 1);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_SERVER_IN_USE], 1);
	/* the first claimant's probe still resolves normally */
	advance(PROBE_MS + 20);
	assert_open(b2);
	assert_closed(b1, WS_CLOSE_INTERNAL_ERROR, "heartbeat timeout");
}

static void test_claims_of_other_ids_are_independent(void **state)
{
	struct conn *a = open_binary("alpha");
	struct conn *b = open_binary("beta");
	assert_open(a);
	assert_open(b);
	assert_int_equal(rec(a)->npings, 0);
	assert_int_equal(stats()->binaries, 2);
	uint64_t nb = 0, np = 0;
	relay_counts(F->w, &nb, &np);
	assert_int_equal(nb, 2);
	assert_int_equal(np, 0);
}

static void test_many_ids_survive_table_growth(void **state)
{
	/* more live server-ids than the initial bucket count: every one still resolves */
	enum { N = 1100 };
	static struct conn *bins[N];
	char id[32];
	for (unsigned i = 0; i < N; i++) {
		snprintf(id, sizeof id, "id-%u", i);
		bins[i] = open_binary(id);
		assert_open(bins[i]);
	}
	assert_int_equal(stats()->binaries, N);
	for (unsigned i = 0; i < N; i++) {
		snprintf(id, sizeof id, "id-%u", i);
		struct conn *p = open_phone(id);
		assert_open(p);
		send_msg(p, "0");
		assert_int_equal(rec(bins[i])->nframes, 1);
		char exp[128];
		wrapped(exp, sizeof exp, conn_id_of(p, id), "0");
		assert_frame(last_frame(bins[i]), exp);
	}
	/* and a second claim of an old id still finds the incumbent */
	struct conn *again = open_binary("id-7");
	assert_int_equal(rec(bins[7])->npings, 1);
	pong(bins[7], RELAY_PROBE_PAYLOAD);
	assert_closed(again, 4409, "server-id already claimed");
}

/* ------------------------------------------------------------------ phone registration */

static void test_phone_no_server(void **state)
{
	struct conn *p = open_phone("nobody");
	assert_closed(p, 4404, "no server with that id");
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_CLIENT][RELAY_OUT_REJECT_404], 1);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_NO_SERVER], 1);
	assert_int_equal(stats()->phones, 0);
	assert_int_equal(rec(p)->hb_starts, 0);
	/* a slot whose grace expired is no server either */
	struct conn *b = open_binary(SID);
	peer_end(b, 1000);
	advance(GRACE_MS + 20); /* grace over, slot gone */
	struct conn *p2 = open_phone(SID);
	assert_closed(p2, 4404, "no server with that id");
	assert_int_equal(stats()->register_failures[RELAY_FAIL_NO_SERVER], 2);
}

static void test_phone_cap_16(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *ph[RELAY_PHONES_PER_SERVER_MAX];
	for (unsigned i = 0; i < RELAY_PHONES_PER_SERVER_MAX; i++) {
		ph[i] = open_phone(SID);
		assert_open(ph[i]);
		assert_int_equal(rec(ph[i])->hb_starts, 1);
	}
	assert_int_equal(stats()->phones, 16);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_CLIENT][RELAY_OUT_ACCEPT], 16);
	struct conn *p17 = open_phone(SID);
	assert_closed(p17, 4429, "too many phones for server-id");
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_CLIENT][RELAY_OUT_REJECT_429], 1);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_PHONES_AT_CAP], 1);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_NO_SERVER], 0);
	assert_int_equal(stats()->phones, 16);

	/* one leaves (swap-with-last in the middle), one more fits; all still route */
	peer_end(ph[3], 1000);
	struct conn *p18 = open_phone(SID);
	assert_open(p18);
	ph[3] = p18;
	for (unsigned i = 0; i < RELAY_PHONES_PER_SERVER_MAX; i++) {
		size_t before = rec(b)->nframes;
		send_msg(ph[i], "0");
		assert_int_equal(rec(b)->nframes, before + 1);
		char exp[256];
		wrapped(exp, sizeof exp, conn_id_of(ph[i], SID), "0");
		assert_frame(last_frame(b), exp);
	}

	/* a gracing binary counts as present: still the cap, not "no server" */
	peer_end(b, 1000);
	struct conn *p19 = open_phone(SID);
	assert_closed(p19, 4429, "too many phones for server-id");
	assert_int_equal(stats()->register_failures[RELAY_FAIL_PHONES_AT_CAP], 2);

	/* after expiry the no-server check comes first */
	advance(GRACE_MS + 20);
	for (unsigned i = 0; i < RELAY_PHONES_PER_SERVER_MAX; i++)
		assert_closed(ph[i], WS_CLOSE_NORMAL, "");
	struct conn *p20 = open_phone(SID);
	assert_closed(p20, 4404, "no server with that id");
	assert_int_equal(stats()->register_failures[RELAY_FAIL_PHONES_AT_CAP], 2);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_NO_SERVER], 1);
}

/* ------------------------------------------------------------------ grace */

static void test_grace_keeps_phones(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p1 = open_phone(SID);
	struct conn *p2 = open_phone(SID);
	peer_end(b, 1000);
	assert_int_equal(stats()->binaries, 0);
	assert_int_equal(stats()->phones, 2);
	assert_open(p1);
	assert_open(p2);

	/* phones may still register during grace */
	struct conn *p3 = open_phone(SID);
	assert_open(p3);
	assert_int_equal(stats()->phones, 3);

	/* a phone that sends during grace is dropped with 1000 */
	send_msg(p1, "{}");
	assert_closed(p1, WS_CLOSE_NORMAL, "");
	assert_int_equal(stats()->frames_phone_to_binary, 0);
	assert_int_equal(stats()->phones, 2);
	assert_open(p2);

	advance(GRACE_MS - 20);
	assert_open(p2);
	assert_int_equal(stats()->grace_expiries, 0);
}

static void test_grace_reclaim_evicts_and_disarms(void **state)
{
	struct conn *b1 = open_binary(SID);
	struct conn *p1 = open_phone(SID);
	struct conn *p2 = open_phone(SID);
	peer_end(b1, 1000);
	advance(GRACE_MS / 2);

	struct conn *b2 = open_binary(SID);
	assert_open(b2);
	assert_int_equal(rec(b2)->hb_starts, 1);
	assert_int_equal(rec(b1)->npings, 0); /* no probe against a gracing slot */
	assert_closed(p1, 4404, "binary reclaimed server-id");
	assert_closed(p2, 4404, "binary reclaimed server-id");
	assert_int_equal(stats()->binaries, 1);
	assert_int_equal(stats()->phones, 0);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_ACCEPT], 2);
	/* no close notice for phones that registered with the previous binary */
	assert_int_equal(rec(b2)->nframes, 0);

	/* stale fire: past the old deadline, nothing expires */
	struct conn *p3 = open_phone(SID);
	advance(GRACE_MS);
	assert_int_equal(stats()->grace_expiries, 0);
	assert_open(p3);
	assert_open(b2);
	send_msg(p3, "true");
	assert_int_equal(rec(b2)->nframes, 1);
}

static void test_grace_expiry_closes_phones(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p1 = open_phone(SID);
	struct conn *p2 = open_phone(SID);
	peer_end(b, 0);
	advance(GRACE_MS - 20);
	assert_open(p1);
	assert_open(p2);
	advance(40);
	assert_closed(p1, WS_CLOSE_NORMAL, "");
	assert_closed(p2, WS_CLOSE_NORMAL, "");
	assert_int_equal(stats()->grace_expiries, 1);
	assert_int_equal(stats()->phones, 0);

	/* the id is free again: a claim is a plain claim, no probe, no eviction */
	struct conn *b2 = open_binary(SID);
	assert_open(b2);
	assert_int_equal(stats()->binaries, 1);
	advance(GRACE_MS * 2);
	assert_int_equal(stats()->grace_expiries, 1);
}

static void test_grace_without_phones_frees_slot(void **state)
{
	struct conn *b = open_binary(SID);
	peer_end(b, 1000);
	advance(GRACE_MS + 20);
	assert_int_equal(stats()->grace_expiries, 1);
	struct conn *p = open_phone(SID);
	assert_closed(p, 4404, "no server with that id");
}

/* ------------------------------------------------------------------ routing */

static void test_phone_to_binary_wraps_exactly(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p = open_phone(SID);
	const char *cid = conn_id_of(p, SID);
	assert_memory_equal(cid + strlen("client-" SID "-"), p->relay.hex, RELAY_CONN_HEX_LEN);

	const char *msg = "{\"t\": 1, \"x\": [1, 2, \"<&>\"]}";
	send_msg(p, msg);
	char exp[512];
	wrapped(exp, sizeof exp, cid, msg);
	assert_int_equal(rec(b)->nframes, 1);
	assert_frame(last_frame(b), exp);
	assert_true(last_frame(b)->counted);
	assert_int_equal(b->items_pending, 1);
	assert_int_equal(stats()->frames_phone_to_binary, 1);

	/* the queued bytes are one unmasked FIN text frame carrying exactly that */
	uint8_t wire[600];
	struct iovec iov[OUTQ_IOV_MAX];
	size_t n = outq_iov(&b->out, iov, OUTQ_IOV_MAX), off = 0;
	for (size_t i = 0; i < n; i++) {
		assert_true(off + iov[i].iov_len <= sizeof wire);
		memcpy(wire + off, iov[i].iov_base, iov[i].iov_len);
		off += iov[i].iov_len;
	}
	struct ws_frame_header h;
	int hl = ws_frame_header_parse(wire, off, false, &h);
	assert_true(hl > 0);
	assert_true(h.fin);
	assert_int_equal(h.opcode, WS_OP_TEXT);
	assert_int_equal(h.payload_len, strlen(exp));
	assert_int_equal(off, (size_t)hl + strlen(exp));
	assert_memory_equal(wire + hl, exp, strlen(exp));

	/* binary opcode and JSON scalars pass too */
	relay_message(F->w, p, WS_OP_BINARY, span_cstr("\"s\""));
	pump();
	wrapped(exp, sizeof exp, cid, "\"s\"");
	assert_frame(last_frame(b), exp);
	assert_int_equal(stats()->frames_phone_to_binary, 2);
	assert_open(p);
}

static void test_phone_invalid_json_closes_1000(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p = open_phone(SID);
	struct conn *q = open_phone(SID);
	const char *cid = conn_id_of(p, SID);
	send_msg(p, "{\"a\":");
	assert_closed(p, WS_CLOSE_NORMAL, "");
	assert_int_equal(stats()->frames_phone_to_binary, 0);
	/* its end: the close notice carries 1001 (no close frame from the phone) */
	char exp[256];
	notice(exp, sizeof exp, cid, 1001);
	assert_int_equal(rec(b)->nframes, 1);
	assert_frame(last_frame(b), exp);

	/* an empty message is not JSON either */
	send_buf(q, "", 0);
	assert_closed(q, WS_CLOSE_NORMAL, "");
	assert_int_equal(stats()->frames_phone_to_binary, 0);
	assert_open(b);
}

static void test_binary_outbox_refusal_drops_phone(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p = open_phone(SID);
	rec(b)->refuse_sends = true;
	send_msg(p, "1");
	assert_closed(p, WS_CLOSE_NORMAL, "");
	assert_int_equal(stats()->frames_phone_to_binary, 0);
	assert_open(b);
}

static void test_binary_to_phone_routed(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p = open_phone(SID);
	struct conn *q = open_phone(SID);
	const char *cid = conn_id_of(p, SID);
	char env[512];
	const char *frame = "{\"hello\": \"w\\u00f6rld\", \"n\": [1.5e3]}";
	snprintf(env, sizeof env, "{\"other\":1,\"conn_id\":\"%s\",\"frame\":%s}", cid, frame);
	send_msg(b, env);
	assert_int_equal(rec(p)->nframes, 1);
	assert_frame(last_frame(p), frame);
	assert_true(last_frame(p)->counted);
	assert_int_equal(rec(q)->nframes, 0);
	assert_open(p);
	assert_open(b);

	/* on the wire: one unmasked FIN text frame of exactly those bytes */
	uint8_t wire[256];
	struct iovec iov[OUTQ_IOV_MAX];
	size_t n = outq_iov(&p->out, iov, OUTQ_IOV_MAX), off = 0;
	for (size_t i = 0; i < n; i++) {
		memcpy(wire + off, iov[i].iov_base, iov[i].iov_len);
		off += iov[i].iov_len;
	}
	struct ws_frame_header h;
	int hl = ws_frame_header_parse(wire, off, false, &h);
	assert_true(hl > 0);
	assert_true(h.fin);
	assert_false(h.masked);
	assert_int_equal(h.opcode, WS_OP_TEXT);
	assert_int_equal(h.payload_len, strlen(frame));
	assert_int_equal(off, (size_t)hl + strlen(frame));
	assert_memory_equal(wire + hl, frame, strlen(frame));

	/* binary_to_phone counts when written, not when queued */
	assert_int_equal(stats()->frames_binary_to_phone, 0);
	write_bytes(p, p->out.bytes);
	assert_int_equal(stats()->frames_binary_to_phone, 1);
	assert_int_equal(p->items_pending, 0);
}

static void test_binary_directive_frame_then_close(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p = open_phone(SID);
	char env[256];
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"close_code\":4401,\"frame\":\"bye\"}", conn_id_of(p, SID));
	send_msg(b, env);
	assert_int_equal(rec(p)->nframes, 1);
	assert_frame(last_frame(p), "\"bye\"");
	assert_closed(p, 4401, "");
	assert_true(last_frame(p)->seq < rec(p)->close_seq); /* frame first, then the close */
	/* closed by the binary: no close notice */
	assert_int_equal(rec(b)->nframes, 0);
	assert_open(b);
}

static void test_binary_directive_without_frame(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p = open_phone(SID);
	struct conn *q = open_phone(SID);
	char env[256];
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"close_code\":4421}", conn_id_of(p, SID));
	send_msg(b, env);
	assert_int_equal(rec(p)->nframes, 0);
	assert_closed(p, 4421, "");
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":null,\"close_code\":4408}", conn_id_of(q, SID));
	send_msg(b, env);
	assert_int_equal(rec(q)->nframes, 0);
	assert_closed(q, 4408, "");
	assert_int_equal(rec(b)->nframes, 0);
}

static void test_binary_directive_illegal_code_1011(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p = open_phone(SID);
	struct conn *q = open_phone(SID);
	char env[256];
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"close_code\":1005,\"frame\":1}", conn_id_of(p, SID));
	send_msg(b, env);
	assert_frame(last_frame(p), "1");
	assert_closed(p, WS_CLOSE_INTERNAL_ERROR, "");
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"close_code\":999}", conn_id_of(q, SID));
	send_msg(b, env);
	assert_closed(q, WS_CLOSE_INTERNAL_ERROR, "");
	assert_int_equal(rec(b)->nframes, 0);
}

static void test_binary_unknown_conn_id_dropped(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p = open_phone(SID);
	const char *cid = conn_id_of(p, SID);
	char env[256], wrong[128];
	snprintf(wrong, sizeof wrong, "%s", cid);
	wrong[strlen(wrong) - 1] = wrong[strlen(wrong) - 1] == '0' ? '1' : '0';
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":{}}", wrong);
	send_msg(b, env);
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"close_code\":4401}", wrong);
	send_msg(b, env);
	assert_int_equal(rec(p)->nframes, 0);
	assert_open(p);
	assert_open(b);
	assert_int_equal(stats()->dropped[RELAY_DROP_UNKNOWN_CONN_ID], 2);

	/* malformed / frameless envelopes are dropped, the binary stays */
	send_msg(b, "not json");
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\"}", cid);
	send_msg(b, env);
	send_msg(b, "{\"push_wake\":{\"platform\":\"fcm\",\"token\":\"t\"}}");
	assert_int_equal(stats()->dropped[RELAY_DROP_UNKNOWN_CONN_ID], 2);
	assert_int_equal(stats()->dropped[RELAY_DROP_MALFORMED_ENVELOPE], 2);
	assert_int_equal(stats()->dropped[RELAY_DROP_PUSH_WAKE], 1);
	assert_int_equal(rec(p)->nframes, 0);
	assert_open(b);
	assert_open(p);

	/* the right id still works */
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":{}}", cid);
	send_msg(b, env);
	assert_frame(last_frame(p), "{}");
}

static void test_other_server_phone_unreachable(void **state)
{
	struct conn *ba = open_binary("alpha");
	struct conn *bb = open_binary("beta");
	struct conn *pa = open_phone("alpha");
	struct conn *pb = open_phone("beta");
	char env[256];
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":\"x\"}", conn_id_of(pb, "beta"));
	send_msg(ba, env);
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"close_code\":4401}", conn_id_of(pb, "beta"));
	send_msg(ba, env);
	assert_int_equal(rec(pb)->nframes, 0);
	assert_open(pb);
	assert_int_equal(rec(pa)->nframes, 0);
	assert_int_equal(stats()->dropped[RELAY_DROP_UNKNOWN_CONN_ID], 2);
	/* its own binary reaches it */
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":\"x\"}", conn_id_of(pb, "beta"));
	send_msg(bb, env);
	assert_frame(last_frame(pb), "\"x\"");
	/* and phone frames go only to their own binary */
	send_msg(pa, "2");
	assert_int_equal(rec(ba)->nframes, 1);
	assert_int_equal(rec(bb)->nframes, 0);
}

static void test_frame_to_closing_phone_dropped(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p = open_phone(SID);
	const char *cid = conn_id_of(p, SID);
	char env[256];
	/* the relay closed it (invalid JSON) but its end is not reported yet */
	relay_message(F->w, p, WS_OP_TEXT, span_cstr("x"));
	assert_int_equal(p->state, CONN_WS_CLOSING);
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":1}", cid);
	relay_message(F->w, b, WS_OP_TEXT, span_make(env, strlen(env)));
	assert_int_equal(rec(p)->nframes, 0);
	pump();
	assert_closed(p, WS_CLOSE_NORMAL, "");
}

/* ------------------------------------------------------------------ close notices */

static void test_close_notice_codes(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p1 = open_phone(SID);
	struct conn *p2 = open_phone(SID);
	const char *c1 = conn_id_of(p1, SID);
	const char *c2 = conn_id_of(p2, SID);
	char exp[256];

	send_msg(p1, "{\"last\":1}");
	peer_end(p1, 4000);
	assert_int_equal(rec(b)->nframes, 2);
	wrapped(exp, sizeof exp, c1, "{\"last\":1}");
	assert_frame(&rec(b)->frames[0], exp); /* the notice follows the phone's frames */
	notice(exp, sizeof exp, c1, 4000);
	assert_frame(&rec(b)->frames[1], exp);
	assert_int_equal(stats()->frames_phone_to_binary, 1); /* notices are not counted */

	peer_end(p2, 0); /* abrupt drop */
	assert_int_equal(rec(b)->nframes, 3);
	notice(exp, sizeof exp, c2, 1001);
	assert_frame(last_frame(b), exp);
	assert_int_equal(stats()->phones, 0);
	assert_open(b);
}

static void test_close_notice_long_server_id(void **state)
{
	/* a conn_id longer than the on-stack notice buffer takes the pool path */
	char id[200];
	memset(id, 'z', sizeof id - 1);
	id[sizeof id - 1] = '\0';
	struct conn *b = open_binary(id);
	struct conn *p = open_phone(id);
	const char *cid = conn_id_of(p, id);
	peer_end(p, 4001);
	char exp[512];
	notice(exp, sizeof exp, cid, 4001);
	assert_int_equal(rec(b)->nframes, 1);
	assert_frame(last_frame(b), exp);
}

static void test_no_close_notice_after_directive(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p = open_phone(SID);
	char env[256];
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"close_code\":4401,\"frame\":1}", conn_id_of(p, SID));
	relay_message(F->w, b, WS_OP_TEXT, span_make(env, strlen(env)));
	p->peer_close_code = 4401; /* the phone answered the close before its end is reported */
	pump();
	assert_closed(p, 4401, "");
	assert_int_equal(rec(b)->nframes, 0);
}

static void test_no_close_notice_to_reclaimer(void **state)
{
	struct conn *b1 = open_binary(SID);
	struct conn *p = open_phone(SID);
	struct conn *q = open_phone(SID);
	peer_end(b1, 1000);
	/* during grace a phone leaving has nobody to notify */
	peer_end(q, 4000);
	assert_int_equal(rec(b1)->nframes, 0);
	struct conn *b2 = open_binary(SID);
	assert_closed(p, 4404, "binary reclaimed server-id");
	assert_int_equal(rec(b2)->nframes, 0);
	assert_int_equal(rec(b1)->nframes, 0);
}

/* ------------------------------------------------------------------ phone outbox budget */

/* Charged len + 64 (+ the 10-byte frame header ADR 0004 adds): 41 fit in 4 MiB and the
 * 42nd overflows; without the 64-byte item overhead 42 would fit. */
#define BIG_FRAME 99830u

static void fill_phone(struct conn *b, struct conn *p, const char *cid, unsigned count)
{
	char *frame = json_string_of_len(BIG_FRAME);
	size_t len;
	char *env = envelope_for(cid, 0, frame, &len);
	for (unsigned i = 0; i < count; i++)
		send_buf(b, env, len);
	free(env);
	free(frame);
}

static void test_phone_budget_overflow_1011(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p = open_phone(SID);
	const char *cid = conn_id_of(p, SID);
	unsigned fit = RELAY_PHONE_OUTBOX_BUDGET_BYTES / (BIG_FRAME + RELAY_OUTBOX_ITEM_OVERHEAD_BYTES);
	assert_int_equal(fit, 41);
	assert_true((fit + 1) * (BIG_FRAME + 10) <= RELAY_PHONE_OUTBOX_BUDGET_BYTES);
	fill_phone(b, p, cid, fit);
	assert_open(p);
	assert_int_equal(rec(p)->nframes, fit);
	assert_int_equal(p->items_pending, fit);
	assert_int_equal(stats()->dropped[RELAY_DROP_PHONE_BACKLOG], 0);

	fill_phone(b, p, cid, 1);
	assert_closed(p, WS_CLOSE_INTERNAL_ERROR, "phone backlog full");
	assert_int_equal(rec(p)->nframes, fit);
	assert_int_equal(stats()->dropped[RELAY_DROP_PHONE_BACKLOG], 1);
	assert_open(b);

	/* later frames for it go nowhere */
	fill_phone(b, p, cid, 1);
	assert_int_equal(rec(p)->nframes, fit);
}

static void test_phone_budget_released_by_writes(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p = open_phone(SID);
	const char *cid = conn_id_of(p, SID);
	fill_phone(b, p, cid, 41);
	/* the first item's bytes (header + frame) reach the socket: room for one more.
	 * (outq reports an item once the segment holding its last byte is freed, so
	 * items_pending may lag; the queued bytes are released at once.) */
	write_bytes(p, BIG_FRAME + 10);
	assert_true(p->items_pending >= 40);
	fill_phone(b, p, cid, 1);
	assert_open(p);
	assert_int_equal(rec(p)->nframes, 42);
	fill_phone(b, p, cid, 1);
	assert_closed(p, WS_CLOSE_INTERNAL_ERROR, "phone backlog full");
}

static void test_phone_frames_counted_when_written(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p = open_phone(SID);
	const char *cid = conn_id_of(p, SID);
	fill_phone(b, p, cid, 3);
	assert_int_equal(stats()->frames_binary_to_phone, 0);
	uint64_t total = p->out.bytes;
	write_bytes(p, total / 2);
	assert_true(stats()->frames_binary_to_phone <= 1);
	write_bytes(p, p->out.bytes);
	assert_int_equal(stats()->frames_binary_to_phone, 3);
	assert_int_equal(p->items_pending, 0);
	assert_open(p);
}

static void test_phone_budget_overflow_directive_code(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p = open_phone(SID);
	const char *cid = conn_id_of(p, SID);
	fill_phone(b, p, cid, 41);
	char *frame = json_string_of_len(BIG_FRAME);
	size_t len;
	char *env = envelope_for(cid, 4408, frame, &len);
	send_buf(b, env, len);
	free(env);
	free(frame);
	assert_closed(p, 4408, "phone backlog full");
	assert_int_equal(rec(p)->nframes, 41);
	assert_int_equal(stats()->dropped[RELAY_DROP_PHONE_BACKLOG], 1);
	/* the directive marked it closed-by-binary even though it overflowed */
	assert_int_equal(rec(b)->nframes, 0);
}

/* ------------------------------------------------------------------ binary back-pressure */

#define PHONE_MSG 200000u

static void test_binary_backpressure_pauses_phones(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p1 = open_phone(SID);
	struct conn *p2 = open_phone(SID);
	char *msg = json_string_of_len(PHONE_MSG);
	unsigned sent = 0;
	while (b->out.bytes <= RELAY_BINARY_OUTBOX_HIGH_WATER_BYTES) {
		assert_false(p1->recv_paused);
		assert_false(p2->recv_paused);
		send_buf(p1, msg, PHONE_MSG);
		sent++;
		assert_true(sent < 100);
	}
	assert_int_equal(stats()->frames_phone_to_binary, sent);
	assert_true(p1->recv_paused);
	assert_true(p2->recv_paused);
	assert_int_equal(rec(p1)->pause_calls, 1);
	assert_int_equal(rec(p2)->pause_calls, 1);
	assert_int_equal(stats()->phone_pauses, 1);
	assert_open(p1);
	assert_open(p2);

	/* a phone registering while its binary is backed up starts paused */
	struct conn *p3 = open_phone(SID);
	assert_open(p3);
	assert_true(p3->recv_paused);

	/* more data while paused does not pause again */
	send_buf(p2, msg, PHONE_MSG);
	assert_int_equal(stats()->phone_pauses, 1);
	assert_int_equal(rec(p2)->pause_calls, 1);

	/* draining to just above low water: still paused (hysteresis) */
	uint64_t item = PHONE_MSG + 128; /* upper bound of one wrapped item's wire size */
	while (b->out.bytes >= RELAY_BINARY_OUTBOX_LOW_WATER_BYTES + 2 * item)
		write_bytes(b, item);
	assert_true(b->out.bytes >= RELAY_BINARY_OUTBOX_LOW_WATER_BYTES);
	assert_true(p1->recv_paused);
	assert_true(p3->recv_paused);

	/* below low water: all resumed, once each */
	while (b->out.bytes >= RELAY_BINARY_OUTBOX_LOW_WATER_BYTES)
		write_bytes(b, item);
	assert_false(p1->recv_paused);
	assert_false(p2->recv_paused);
	assert_false(p3->recv_paused);
	assert_int_equal(rec(p1)->resume_calls, 1);
	assert_int_equal(rec(p2)->resume_calls, 1);
	assert_int_equal(rec(p3)->resume_calls, 1);
	write_bytes(b, b->out.bytes);
	assert_int_equal(rec(p1)->resume_calls, 1);
	assert_int_equal(b->items_pending, 0);
	free(msg);
}

static void test_backpressure_released_when_binary_ends(void **state)
{
	struct conn *b = open_binary(SID);
	struct conn *p1 = open_phone(SID);
	char *msg = json_string_of_len(PHONE_MSG);
	while (b->out.bytes <= RELAY_BINARY_OUTBOX_HIGH_WATER_BYTES)
		send_buf(p1, msg, PHONE_MSG);
	free(msg);
	assert_true(p1->recv_paused);
	peer_end(b, 0);
	/* gracing: the phone may read again (and is dropped if it sends) */
	assert_false(p1->recv_paused);
	assert_open(p1);
	/* a new phone during grace is not paused; a reclaimer starts unpaused */
	struct conn *p2 = open_phone(SID);
	assert_false(p2->recv_paused);
	struct conn *b2 = open_binary(SID);
	assert_open(b2);
	struct conn *p3 = open_phone(SID);
	assert_false(p3->recv_paused);
	assert_closed(p1, 4404, "binary reclaimed server-id");
	assert_closed(p2, 4404, "binary reclaimed server-id");
}

/* ------------------------------------------------------------------ admission */

static int admit_from(uint8_t ip_last, enum http_route route)
{
	struct http_request req;
	parse_req(route == HTTP_ROUTE_SERVER ? "GET /v1/server HTTP/1.1\r\nHost: r\r\n\r\n"
					     : "GET /v1/client HTTP/1.1\r\nHost: r\r\n\r\n",
		  &req);
	struct conn *c = new_conn(route, ip_last);
	c->route = HTTP_ROUTE_NOT_FOUND; /* never upgraded here: no end to report */
	c->state = CONN_HTTP;
	rec(c)->ends = 1;
	int r = relay_admit(F->w, c, route, &req);
	assert_int_equal(c->counted, r == -1);
	return r;
}

static void test_admit_rate_limit(void **state)
{
	struct config cfg;
	default_cfg(&cfg);
	cfg.rate_limit_burst = 3;
	fx_open(&cfg);
	assert_int_equal(admit_from(1, HTTP_ROUTE_SERVER), -1);
	assert_int_equal(admit_from(1, HTTP_ROUTE_CLIENT), -1);
	assert_int_equal(admit_from(1, HTTP_ROUTE_CLIENT), -1);
	assert_int_equal(F->w->ws_counted, 3);
	assert_int_equal(admit_from(1, HTTP_ROUTE_CLIENT), HTTP_CANNED_EMPTY_429);
	assert_int_equal(admit_from(1, HTTP_ROUTE_SERVER), HTTP_CANNED_EMPTY_429);
	assert_int_equal(F->w->ws_counted, 3);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_CLIENT][RELAY_OUT_REJECT_RATE_LIMIT], 1);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_REJECT_RATE_LIMIT], 1);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_RATELIMIT], 2);
	/* another IP has its own bucket */
	assert_int_equal(admit_from(9, HTTP_ROUTE_CLIENT), -1);
	/* one refill period later, one more token */
	advance(6000);
	assert_int_equal(admit_from(1, HTTP_ROUTE_CLIENT), -1);
	assert_int_equal(admit_from(1, HTTP_ROUTE_CLIENT), HTTP_CANNED_EMPTY_429);
	/* the relay's periodic sweep runs (and re-arms) on the wheel; a bucket idle that
	 * long is gone and a fresh burst is allowed, but never more than the burst */
	advance(RATELIMIT_SWEEP_INTERVAL_MS + 100);
	advance(RATELIMIT_SWEEP_INTERVAL_MS + 100);
	for (int i = 0; i < 3; i++)
		assert_int_equal(admit_from(1, HTTP_ROUTE_SERVER), -1);
	assert_int_equal(admit_from(1, HTTP_ROUTE_SERVER), HTTP_CANNED_EMPTY_429);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_RATELIMIT], 4);
	fx_close();
}

static void test_admit_connection_cap(void **state)
{
	struct config cfg;
	default_cfg(&cfg);
	cfg.max_connections = 2;
	cfg.rate_limit_burst = 100;
	fx_open(&cfg);
	assert_int_equal(admit_from(1, HTTP_ROUTE_SERVER), -1);
	assert_int_equal(admit_from(2, HTTP_ROUTE_CLIENT), -1);
	assert_int_equal(admit_from(3, HTTP_ROUTE_CLIENT), HTTP_CANNED_EMPTY_503);
	assert_int_equal(admit_from(3, HTTP_ROUTE_SERVER), HTTP_CANNED_EMPTY_503);
	assert_int_equal(F->w->ws_counted, 2);
	/* 503 is not an upgrade outcome (reference metrics: cap rejects not counted) */
	for (int e = 0; e < RELAY_EP_COUNT; e++)
		for (int o = 0; o < RELAY_OUT_COUNT; o++)
			assert_int_equal(stats()->upgrade_attempts[e][o], 0);
	/* a slot freed by the engine is usable again */
	F->w->ws_counted--;
	assert_int_equal(admit_from(3, HTTP_ROUTE_CLIENT), -1);
	fx_close();
}

static void test_admit_burst_zero_never_429(void **state)
{
	struct config cfg;
	default_cfg(&cfg);
	cfg.rate_limit_burst = 0;
	cfg.max_connections = 1000;
	fx_open(&cfg);
	for (int i = 0; i < 50; i++) {
		assert_int_equal(admit_from(1, HTTP_ROUTE_CLIENT), -1);
	}
	assert_int_equal(F->w->ws_counted, 50);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_RATELIMIT], 0);
	fx_close();
}

static void test_rejected_headers_counted(void **state)
{
	struct conn *c = new_conn(HTTP_ROUTE_CLIENT, 1);
	relay_rejected_headers(F->w, c, HTTP_ROUTE_CLIENT);
	relay_rejected_headers(F->w, c, HTTP_ROUTE_SERVER);
	relay_rejected_headers(F->w, c, HTTP_ROUTE_SERVER);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_CLIENT][RELAY_OUT_REJECT_HEADERS], 1);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_REJECT_HEADERS], 2);
	c->state = CONN_HTTP; /* never upgraded */
	c->route = HTTP_ROUTE_NOT_FOUND;
	rec(c)->ends = 1;
}

/* ------------------------------------------------------------------ shutdown */

static void test_shutdown_closes_all_1001(void **state)
{
	struct conn *b1 = open_binary(SID);
	struct conn *p1 = open_phone(SID);
	struct conn *b2 = open_binary("other");
	struct conn *p2 = open_phone("other");
	struct conn *claimant = open_binary("other");
	peer_end(b2, 1000); /* incumbent gone mid-probe: the claimant holds, p2 evicted */
	assert_closed(p2, 4404, "binary reclaimed server-id");
	struct conn *b3 = open_binary("third");
	struct conn *p3 = open_phone("third");
	peer_end(b3, 1000); /* gracing with a phone */
	advance(GRACE_MS - SHUTDOWN_DRAIN_TIMEOUT_MS / 2);
	relay_shutdown(F->w);
	pump();
	assert_closed(b1, WS_CLOSE_GOING_AWAY, "shutting down");
	assert_closed(p1, WS_CLOSE_GOING_AWAY, "shutting down");
	assert_closed(claimant, WS_CLOSE_GOING_AWAY, "shutting down");
	assert_closed(p3, WS_CLOSE_GOING_AWAY, "shutting down");
	/* the pending grace timer is cancelled: no expiry while the worker drains */
	advance(SHUTDOWN_DRAIN_TIMEOUT_MS);
	assert_int_equal(stats()->grace_expiries, 0);
}

int main(void)
{
	devnull_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (devnull_fd >= 0)
		log_set_fd(devnull_fd);
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_claim_then_conflict_pong_rejects_claimant),
		T(test_probe_timeout_takes_over),
		T(test_incumbent_ends_during_probe_takes_over),
		T(test_claimant_ends_during_probe),
		T(test_second_claimant_during_probe_is_refused),
		T(test_claims_of_other_ids_are_independent),
		T(test_many_ids_survive_table_growth),
		T(test_phone_no_server),
		T(test_phone_cap_16),
		T(test_grace_keeps_phones),
		T(test_grace_reclaim_evicts_and_disarms),
		T(test_grace_expiry_closes_phones),
		T(test_grace_without_phones_frees_slot),
		T(test_phone_to_binary_wraps_exactly),
		T(test_phone_invalid_json_closes_1000),
		T(test_binary_outbox_refusal_drops_phone),
		T(test_binary_to_phone_routed),
		T(test_binary_directive_frame_then_close),
		T(test_binary_directive_without_frame),
		T(test_binary_directive_illegal_code_1011),
		T(test_binary_unknown_conn_id_dropped),
		T(test_other_server_phone_unreachable),
		T(test_frame_to_closing_phone_dropped),
		T(test_close_notice_codes),
		T(test_close_notice_long_server_id),
		T(test_no_close_notice_after_directive),
		T(test_no_close_notice_to_reclaimer),
		T(test_phone_budget_overflow_1011),
		T(test_phone_budget_released_by_writes),
		T(test_phone_frames_counted_when_written),
		T(test_phone_budget_overflow_directive_code),
		T(test_binary_backpressure_pauses_phones),
		T(test_backpressure_released_when_binary_ends),
		cmocka_unit_test(test_admit_rate_limit),
		cmocka_unit_test(test_admit_connection_cap),
		cmocka_unit_test(test_admit_burst_zero_never_429),
		T(test_rejected_headers_counted),
		T(test_shutdown_closes_all_1001),
	};
#undef T
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	log_set_fd(-1);
	if (devnull_fd >= 0)
		close(devnull_fd);
	return rc;
}
