/*
 * test_registry.c - the registry shard (src/relay/) driven through a fake engine.
 *
 * The relay is the engine's application: it sees a connection only as a struct
 * conn_ref and acts through engine/engine.h; the engine calls it through relay_hooks.
 * This test is that engine. It defines every engine.h function the relay calls
 * (conn_ws_send_text, conn_ws_text_reserve/commit/abort, conn_ws_close, conn_abort, conn_ws_ping, conn_heartbeat_start,
 * conn_pause_recv, conn_resume_recv, conn_ws_is_open, conn_queued_bytes,
 * conn_queued_items, conn_remote_ip, worker_schedule, worker_cancel_timer,
 * worker_now_ms, worker_pool, worker_conn_cap) over its own connection table and its
 * own struct worker, so the static linker takes the references of relay.o and route.o
 * from here and never pulls conn.o, loop.o, ws_phase.o, send.o or http_phase.o (and the
 * ring) out of libpyrelay.a. The fakes keep the engine's bookkeeping the relay reads:
 * - a ref is checked like the engine's conn_at (index, generation), and using it after
 *   end() returned for it fails the test (engine.h's contract);
 * - sends really append the WebSocket frame to the connection's outq through the real
 *   bufpool and mark CONN_SEND_COUNTED items, so the queued bytes and items drive the
 *   phone budget and the binary's high-water mark exactly as in the engine;
 *   write_bytes() consumes like a completed send and reports items_written; a frame
 *   written in place is reserved in the outq for real, and nothing else may be queued
 *   while a reservation is open; two_pass_only refuses every reservation, so the
 *   relay's two-pass path runs;
 * - conn_ws_close on an open connection moves it to CLOSING and queues its end; pump()
 *   then calls relay_hooks.end once per connection, from the "loop", never
 *   re-entrantly (also after each timer the wheel fires, as the engine does);
 * - a peer's close or drop is peer_end(): peer_close_code, then end;
 * - messages and pongs are handed over only on open connections (ws_phase.c);
 * - engine_shutdown() is the engine's: the shutdown hook, then 1001 "shutting down" to
 *   every open WebSocket.
 * The relay's per-connection state is private: a phone's conn_id is learned the way a
 * real binary learns it, from the envelope it receives when the phone sends a frame.
 *
 * Covered (reference §2.2, §2.3, §3, §4, §5.7, §6.1, §7.6): claim, conflict probe
 * (pong, timeout, incumbent or claimant ending), phone registration and its cap, grace
 * (release, reclaim, expiry, stale fire, displaced binaries), routing both ways with
 * exact bytes, close directives, close notices, the phone outbox budget, binary-side
 * back-pressure, admission (rate limit, X-Forwarded-For key), shutdown. The
 * --max-connections cap is the engine's (tests/e2e/test_limits.py, test_metrics.py).
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

#include "config/config.h"
#include "core/log.h"
#include "engine/bufpool.h"
#include "engine/engine.h"
#include "engine/session_record.h"
#include "engine/outq.h"
#include "engine/timer_wheel.h"
#include "relay/ratelimit.h"
#include "relay/relay.h"
#include "ws/ws_frame.h"

#define NCONNS 2304u
#define T0_MS 1000000u
#define GRACE_MS 30000u
#define PROBE_MS 10000u
#define DRAIN_MS 10000u /* the engine's shutdown drain (SHUTDOWN_DRAIN_TIMEOUT_MS) */
#define POOL_BUDGET (UINT64_C(256) * 1024 * 1024)
#define SID "srv-1"
#define CID_MAX 256u

/* ------------------------------------------------------------------ fake engine */

enum fake_state {
	FC_UNUSED = 0,
	FC_HTTP,    /* never upgraded (admission only): no end to report */
	FC_OPEN,
	FC_CLOSING, /* a close frame was sent or received */
	FC_DEAD,    /* aborted */
};

struct frame_rec {
	uint8_t *data; /* NUL-terminated copy of the payload */
	size_t len;
	uint64_t seq;
	unsigned flags; /* enum conn_send_flags */
};

/* One connection as the fake engine holds it: what the engine keeps, then records. */
struct fconn {
	uint32_t idx;
	uint32_t gen;
	uint8_t state; /* enum fake_state */
	uint8_t route; /* enum http_route */
	bool upgraded;
	bool recv_paused;
	struct peer_addr remote;
	uint16_t peer_close_code;
	uint8_t end_cause; /* enum conn_end_cause, first one wins (as the engine) */
	struct outq out;
	uint32_t items_pending;

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
	unsigned pause_calls; /* calls that changed the state */
	unsigned resume_calls;
	unsigned hb_starts;
	bool refuse_sends; /* emulate a refused append (buffer budget) */
	bool export_ready; /* conn_export_ready: stopped reading for a hand-over, outbox written */
	bool end_queued;
	unsigned ends;     /* relay_hooks.end calls */
	char cid[CID_MAX]; /* phone: its conn_id as its binary received it ("" until then) */
};

/* The relay only passes this back to the fakes. */
struct worker {
	struct timer_wheel tw;
	struct bufpool pool;
	uint64_t now_ms;
	struct fconn *conns; /* NCONNS; slots are never reused */
	uint32_t nconns;
	void *app;
	struct relay_shared *shared;
};

struct fixture {
	struct config cfg;
	struct worker *w;
	struct fconn *pending[NCONNS];
	size_t npending;
	uint64_t seq;
	const struct fconn *ending; /* the connection whose end() is running */
	unsigned timer_fires;       /* relay_hooks.timer calls */
	uint64_t timers_after_shutdown; /* scheduled right after the shutdown hook */
	uint64_t last_client_key;       /* what the last admitted request was counted under */
	bool two_pass_only;             /* conn_ws_text_reserve always refuses */
	bool resv_open;                 /* between conn_ws_text_reserve and its commit/abort */
	unsigned reserves, aborts;
};

static struct fixture *F;

static struct conn_ref ref_of(const struct fconn *c)
{
	return (struct conn_ref){ .idx = c->idx, .gen = c->gen };
}

static void *app(void)
{
	return F->w->app;
}

/* The engine's conn_at, plus engine.h's rule: a ref is valid until end() returns. */
static struct fconn *at(struct worker *w, struct conn_ref r)
{
	assert_ptr_equal(w, F->w);
	assert_true(r.idx < w->nconns);
	struct fconn *c = &w->conns[r.idx];
	assert_int_equal(c->gen, r.gen);
	assert_int_not_equal(c->state, FC_UNUSED);
	if (c->ends && c != F->ending)
		fail_msg("the relay used connection %u after its end", r.idx);
	return c;
}

static void note_end(struct fconn *c, enum conn_end_cause why)
{
	if (c->end_cause == CONN_END_UNKNOWN)
		c->end_cause = (uint8_t)why;
}

static void queue_end(struct fconn *c)
{
	if (!c->upgraded || c->end_queued || c->ends)
		return;
	c->end_queued = true;
	ASSERT(F->npending < NCONNS);
	F->pending[F->npending++] = c;
}

/* A text frame joined c's outbox: its item, and a copy of its payload for the test. */
static void record_frame(struct fconn *c, const struct iovec *parts, size_t nparts, uint64_t len, unsigned flags)
{
	if (flags & CONN_SEND_COUNTED) {
		outq_mark_item(&c->out);
		c->items_pending++;
	}
	if (c->nframes == c->frames_cap) {
		c->frames_cap = c->frames_cap ? 2 * c->frames_cap : 8;
		c->frames = realloc(c->frames, c->frames_cap * sizeof *c->frames);
		ASSERT(c->frames != NULL);
	}
	struct frame_rec *f = &c->frames[c->nframes++];
	f->data = malloc(len + 1);
	ASSERT(f->data != NULL);
	f->len = 0;
	for (size_t i = 0; i < nparts; i++) {
		memcpy(f->data + f->len, parts[i].iov_base, parts[i].iov_len);
		f->len += parts[i].iov_len;
	}
	f->data[f->len] = '\0';
	f->seq = ++F->seq;
	f->flags = flags;
}

bool conn_ws_send_text(struct worker *w, struct conn_ref ref, const struct iovec *parts, size_t nparts,
		       unsigned flags)
{
	struct fconn *c = at(w, ref);
	assert_false(F->resv_open);
	assert_true(nparts <= CONN_SEND_PARTS_MAX);
	assert_int_equal(flags & ~(unsigned)(CONN_SEND_COUNTED | CONN_SEND_LATENCY), 0);
	if (c->state != FC_OPEN || c->refuse_sends)
		return false;
	struct iovec iov[CONN_SEND_PARTS_MAX + 1];
	uint8_t hdr[WS_FRAME_HEADER_BYTES_MAX];
	uint64_t len = 0;
	for (size_t i = 0; i < nparts; i++) {
		len += parts[i].iov_len;
		iov[i + 1] = parts[i];
	}
	iov[0].iov_base = hdr;
	iov[0].iov_len = ws_frame_header_encode(hdr, true, WS_OP_TEXT, len, NULL);
	if (!outq_append(&c->out, &w->pool, iov, nparts + 1))
		return false;
	record_frame(c, parts, nparts, len, flags);
	return true;
}

uint8_t *conn_ws_text_reserve(struct worker *w, struct conn_ref ref, size_t len, struct conn_text_resv *r)
{
	struct fconn *c = at(w, ref);
	assert_false(F->resv_open);
	F->reserves++;
	if (c->state != FC_OPEN || c->refuse_sends || F->two_pass_only)
		return NULL;
	uint8_t hdr[WS_FRAME_HEADER_BYTES_MAX];
	size_t h = ws_frame_header_encode(hdr, true, WS_OP_TEXT, len, NULL);
	if (!outq_reserve(&c->out, &w->pool, h + len, &r->q))
		return NULL;
	memcpy(r->q.ptr, hdr, h);
	r->bytes = h + len;
	F->resv_open = true;
	return r->q.ptr + h;
}

void conn_ws_text_commit(struct worker *w, struct conn_ref ref, struct conn_text_resv *r, unsigned flags)
{
	struct fconn *c = at(w, ref);
	assert_true(F->resv_open);
	assert_int_equal(c->state, FC_OPEN);
	F->resv_open = false;
	struct ws_frame_header h;
	int hl = ws_frame_header_parse(r->q.ptr, r->bytes, false, &h);
	assert_true(hl > 0 && h.fin && h.opcode == WS_OP_TEXT && (size_t)hl + h.payload_len == r->bytes);
	struct iovec payload = { .iov_base = r->q.ptr + hl, .iov_len = h.payload_len };
	outq_commit(&c->out, &r->q, r->bytes);
	record_frame(c, &payload, 1, h.payload_len, flags);
}

void conn_ws_text_abort(struct worker *w, struct conn_text_resv *r)
{
	assert_true(F->resv_open);
	F->resv_open = false;
	F->aborts++;
	outq_abort(&w->pool, &r->q);
}

void conn_ws_close(struct worker *w, struct conn_ref ref, uint16_t code, const char *reason)
{
	struct fconn *c = at(w, ref);
	if (c->state != FC_OPEN)
		return; /* first close wins */
	note_end(c, CONN_END_CLOSED);
	c->ncloses++;
	c->close_code = code; /* as asked: the engine's own 1011 fallback is not applied */
	snprintf(c->close_reason, sizeof c->close_reason, "%s", reason ? reason : "");
	c->close_seq = ++F->seq;
	c->state = FC_CLOSING;
	c->recv_paused = false;
	queue_end(c);
}

void conn_abort(struct worker *w, struct conn_ref ref)
{
	struct fconn *c = at(w, ref);
	if (c->state == FC_DEAD)
		return;
	c->naborts++;
	note_end(c, CONN_END_CLOSED);
	queue_end(c);
	c->state = FC_DEAD;
}

bool conn_ws_ping(struct worker *w, struct conn_ref ref, const void *payload, size_t len)
{
	struct fconn *c = at(w, ref);
	if (c->state != FC_OPEN || len > WS_CONTROL_PAYLOAD_BYTES_MAX)
		return false;
	c->npings++;
	memcpy(c->ping, payload, len);
	c->ping_len = len;
	return true;
}

void conn_heartbeat_start(struct worker *w, struct conn_ref ref)
{
	struct fconn *c = at(w, ref);
	if (c->state == FC_OPEN)
		c->hb_starts++;
}

void conn_pause_recv(struct worker *w, struct conn_ref ref)
{
	struct fconn *c = at(w, ref);
	if (c->recv_paused || c->state != FC_OPEN)
		return;
	c->recv_paused = true;
	c->pause_calls++;
}

void conn_resume_recv(struct worker *w, struct conn_ref ref)
{
	struct fconn *c = at(w, ref);
	if (!c->recv_paused)
		return;
	c->recv_paused = false;
	c->resume_calls++;
}

bool conn_ws_is_open(struct worker *w, struct conn_ref ref)
{
	return at(w, ref)->state == FC_OPEN;
}

uint64_t conn_queued_bytes(struct worker *w, struct conn_ref ref)
{
	return at(w, ref)->out.bytes;
}

uint32_t conn_queued_items(struct worker *w, struct conn_ref ref)
{
	return at(w, ref)->items_pending;
}

size_t conn_remote_ip(struct worker *w, struct conn_ref ref, char *out, size_t cap)
{
	const struct fconn *c = at(w, ref);
	assert_true(cap >= INET6_ADDRSTRLEN);
	if (c->remote.family == 0 || inet_ntop(c->remote.family, c->remote.bytes, out, (socklen_t)cap) == NULL) {
		out[0] = '\0';
		return 0;
	}
	return strlen(out);
}

void worker_schedule(struct worker *w, struct tw_node *n, uint64_t deadline_ms)
{
	assert_ptr_equal(w, F->w);
	assert_true(n->kind >= TW_KIND_APP);
	timer_wheel_schedule(&w->tw, n, deadline_ms);
}

void worker_cancel_timer(struct worker *w, struct tw_node *n)
{
	assert_ptr_equal(w, F->w);
	timer_wheel_cancel(&w->tw, n);
}

uint64_t worker_now_ms(const struct worker *w)
{
	return w->now_ms;
}

struct bufpool *worker_pool(struct worker *w)
{
	return &w->pool;
}

bool conn_export_ready(struct worker *w, struct conn_ref ref)
{
	return at(w, ref)->export_ready;
}

uint32_t worker_conn_cap(const struct worker *w)
{
	return NCONNS;
}

uint64_t worker_client_key(const struct worker *w, struct span client)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a: any fixed function of the key will do here */
	for (size_t i = 0; i < client.len; i++)
		h = (h ^ client.ptr[i]) * 1099511628211ull;
	return h ? h : 1;
}

uint32_t worker_id(const struct worker *w)
{
	return 0; /* one worker: the shared limiter and counts are this shard's alone */
}

/* ------------------------------------------------------------------ the "loop" */

static void pump(void)
{
	/* FIFO; each connection's end reported once, after the call that caused it. */
	for (size_t i = 0; i < F->npending; i++) {
		struct fconn *c = F->pending[i];
		c->end_queued = false;
		c->ends++;
		assert_null(F->ending); /* never re-entrant */
		F->ending = c;
		relay_hooks.end(app(), ref_of(c), c->peer_close_code, (enum conn_end_cause)c->end_cause);
		F->ending = NULL;
	}
	F->npending = 0;
}

static void on_fire(struct tw_node *n, void *ctx)
{
	assert_true(n->kind >= TW_KIND_APP); /* the fakes never schedule connection timers */
	F->timer_fires++;
	relay_hooks.timer(app(), n);
	pump(); /* as the engine: ends run after each timer */
}

static void advance(uint64_t ms)
{
	struct worker *w = F->w;
	w->now_ms += ms;
	timer_wheel_advance(&w->tw, w->now_ms, on_fire, w);
	pump();
}

/* n bytes of c's queue reached the socket (as the engine's send completion). */
static void write_bytes(struct fconn *c, uint64_t n)
{
	struct worker *w = F->w;
	if (n > c->out.bytes)
		n = c->out.bytes;
	uint32_t items = outq_consume(&c->out, &w->pool, (size_t)n);
	if (items) {
		assert_true(c->items_pending >= items);
		c->items_pending -= items;
		if (c->upgraded)
			relay_hooks.items_written(app(), ref_of(c), items);
	}
	pump();
}

/* The peer closed (code != 0) or dropped (code 0) an open connection. */
static void peer_end(struct fconn *c, uint16_t code)
{
	assert_int_equal(c->state, FC_OPEN);
	c->peer_close_code = code;
	note_end(c, code ? CONN_END_PEER_CLOSE : CONN_END_EOF);
	c->state = FC_CLOSING;
	queue_end(c);
	pump();
}

/* The engine's begin_shutdown: the hook, then 1001 to every open WebSocket (§7.6). */
static void engine_shutdown(void)
{
	struct worker *w = F->w;
	relay_hooks.shutdown(app());
	F->timers_after_shutdown = w->tw.count; /* the fakes schedule none: all the relay's */
	for (uint32_t i = 0; i < w->nconns; i++) {
		struct fconn *c = &w->conns[i];
		if (c->state == FC_OPEN) {
			note_end(c, CONN_END_SHUTDOWN);
			conn_ws_close(w, ref_of(c), WS_CLOSE_GOING_AWAY, "shutting down");
		}
	}
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
	struct worker *w = calloc(1, sizeof *w);
	ASSERT(w != NULL);
	w->conns = calloc(NCONNS, sizeof *w->conns);
	ASSERT(w->conns != NULL);
	w->now_ms = T0_MS;
	timer_wheel_init(&w->tw, w->now_ms);
	bufpool_init(&w->pool, POOL_BUDGET);
	F->w = w;
	w->shared = relay_shared_create(&F->cfg, 1, NULL);
	assert_non_null(w->shared);
	w->app = relay_hooks.create(w, &F->cfg, w->shared);
	assert_non_null(w->app);
}

static void fx_close(void)
{
	struct worker *w = F->w;
	/* Every peer still open drops; every end gets reported. */
	for (uint32_t i = 0; i < w->nconns; i++) {
		struct fconn *c = &w->conns[i];
		if (c->state == FC_OPEN) {
			c->state = FC_CLOSING;
			queue_end(c);
		}
	}
	pump();
	for (uint32_t i = 0; i < w->nconns; i++) {
		struct fconn *c = &w->conns[i];
		/* exactly once per upgraded connection, never for one that was not */
		assert_int_equal(c->ends, c->upgraded ? 1 : 0);
		for (size_t k = 0; k < c->nframes; k++) {
			unsigned fl = c->frames[k].flags;
			/* every counted frame to a binary has its queueing latency observed;
			 * frames to phones never do */
			if (c->route == HTTP_ROUTE_SERVER && (fl & CONN_SEND_COUNTED))
				assert_true(fl & CONN_SEND_LATENCY);
			if (c->route == HTTP_ROUTE_CLIENT)
				assert_false(fl & CONN_SEND_LATENCY);
			free(c->frames[k].data);
		}
		free(c->frames);
		outq_clear(&c->out, &w->pool);
	}
	/* no role left: every binary released and every phone unregistered */
	const struct relay_stats *st = relay_stats_of(w->app);
	assert_int_equal(st->binaries, 0);
	assert_int_equal(st->phones, 0);
	relay_hooks.destroy(w->app);
	relay_shared_destroy(w->shared);
	/* close notices spilled to the pool all went back */
	assert_int_equal(worker_pool(w)->bytes_in_use, 0);
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
	return relay_stats_of(app());
}

/* ------------------------------------------------------------------ connections */

static struct fconn *new_conn(enum http_route route, uint8_t ip_last, enum fake_state st)
{
	struct worker *w = F->w;
	ASSERT(w->nconns < NCONNS);
	uint32_t i = w->nconns++;
	struct fconn *c = &w->conns[i];
	c->idx = i;
	c->gen = (i + 1) * 2654435761u; /* not 0, and unlike its index */
	c->state = (uint8_t)st;
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

/* The HTTP phase accepted the upgrade in text: hand it over as the engine does. */
static struct fconn *upgrade(enum http_route route, uint8_t ip_last, const char *text)
{
	struct http_request req;
	parse_req(text, &req);
	struct fconn *c = new_conn(route, ip_last, FC_OPEN);
	c->upgraded = true;
	struct upgraded *u = upgraded_new(&req, span_make("", 0), span_make("", 0));
	assert_non_null(u);
	u->route = (uint8_t)route;
	u->fd = -1;
	u->remote = c->remote;
	relay_hooks.open(app(), ref_of(c), u);
	upgraded_free(u);
	pump();
	return c;
}

static struct fconn *open_binary(const char *id)
{
	char text[512];
	snprintf(text, sizeof text,
		 "GET /v1/server HTTP/1.1\r\nHost: relay\r\nX-Pyrycode-Server: %s\r\n"
		 "X-Pyrycode-Version: 1.2.3\r\nUser-Agent: test\r\n\r\n",
		 id);
	return upgrade(HTTP_ROUTE_SERVER, 1, text);
}

static struct fconn *open_phone(const char *id)
{
	char text[512];
	snprintf(text, sizeof text,
		 "GET /v1/client HTTP/1.1\r\nHost: relay\r\nX-Pyrycode-Server: %s\r\n"
		 "X-Pyrycode-Token: tok\r\nX-Pyrycode-Device-Name: pixel\r\nUser-Agent: test\r\n\r\n",
		 id);
	return upgrade(HTTP_ROUTE_CLIENT, 2, text);
}

/* A data message from c's peer (the engine hands messages over on open connections). */
static void message(struct fconn *c, uint8_t opcode, const void *p, size_t n)
{
	assert_int_equal(c->state, FC_OPEN);
	relay_hooks.message(app(), ref_of(c), opcode, span_make(p, n));
}

static void send_msg(struct fconn *c, const char *s)
{
	message(c, WS_OP_TEXT, s, strlen(s));
	pump();
}

static void send_buf(struct fconn *c, const void *p, size_t n)
{
	message(c, WS_OP_TEXT, p, n);
	pump();
}

static void pong(struct fconn *c, const char *payload)
{
	assert_int_equal(c->state, FC_OPEN);
	relay_hooks.pong(app(), ref_of(c), span_make(payload, strlen(payload)));
	pump();
}

static void assert_open(const struct fconn *c)
{
	assert_int_equal(c->state, FC_OPEN);
	assert_int_equal(c->ncloses, 0);
	assert_int_equal(c->naborts, 0);
}

static void assert_closed(const struct fconn *c, uint16_t code, const char *reason)
{
	assert_int_equal(c->ncloses, 1);
	assert_int_equal(c->close_code, code);
	assert_string_equal(c->close_reason, reason);
	assert_int_equal(c->ends, 1);
}

static const struct frame_rec *last_frame(const struct fconn *c)
{
	assert_true(c->nframes > 0);
	return &c->frames[c->nframes - 1];
}

static void assert_frame(const struct frame_rec *f, const char *expect)
{
	size_t n = strlen(expect);
	if (f->len != n || memcmp(f->data, expect, n) != 0)
		fail_msg("frame \"%.*s\" != expected \"%s\"", (int)f->len, (const char *)f->data, expect);
}

/* ------------------------------------------------------------------ conn_ids, as a binary sees them */

/*
 * Phone p's conn_id from a frame its binary received because of p (its wrapped frame
 * or its close notice), {"conn_id":"<cid>",...}: checks the client-<id>-<hex8> shape,
 * and that it is the id p was seen with before, if any; p remembers it.
 */
static const char *phone_cid_in(struct fconn *p, const struct frame_rec *f, const char *id)
{
	static const char pre[] = "{\"conn_id\":\"";
	size_t plen = sizeof pre - 1;
	if (f->len <= plen || memcmp(f->data, pre, plen) != 0)
		fail_msg("frame \"%s\" does not start with a conn_id", (const char *)f->data);
	const char *v = (const char *)f->data + plen;
	const char *q = strchr(v, '"');
	assert_non_null(q);
	size_t n = (size_t)(q - v);
	size_t pre_len = strlen("client-") + strlen(id) + 1;
	assert_int_equal(n, pre_len + RELAY_CONN_HEX_LEN);
	assert_memory_equal(v, "client-", 7);
	assert_memory_equal(v + 7, id, strlen(id));
	assert_int_equal(v[pre_len - 1], '-');
	for (size_t i = pre_len; i < n; i++)
		assert_non_null(strchr("0123456789abcdef", v[i]));
	assert_true(n < CID_MAX);
	if (p->cid[0] != '\0') {
		assert_int_equal(strlen(p->cid), n);
		assert_memory_equal(p->cid, v, n);
	} else {
		memcpy(p->cid, v, n);
		p->cid[n] = '\0';
	}
	return p->cid;
}

/* Learn p's conn_id as its binary b does: p sends a frame (0) and b receives exactly
 * {"conn_id":"<cid>","frame":0}. Adds one frame to b and one to frames_phone_to_binary. */
static const char *learn_cid(struct fconn *p, const struct fconn *b, const char *id)
{
	size_t before = b->nframes;
	send_msg(p, "0");
	assert_open(p);
	assert_int_equal(b->nframes, before + 1);
	const char *cid = phone_cid_in(p, last_frame(b), id);
	char exp[CID_MAX + 32];
	snprintf(exp, sizeof exp, "{\"conn_id\":\"%s\",\"frame\":0}", cid);
	assert_frame(last_frame(b), exp);
	return cid;
}

/* The conn_id learned for phone p (one of the above ran for it). */
static const char *conn_id_of(const struct fconn *p, const char *id)
{
	if (p->cid[0] == '\0')
		fail_msg("phone %u: conn_id not learned yet", p->idx);
	size_t pre = strlen("client-") + strlen(id) + 1;
	assert_int_equal(strlen(p->cid), pre + RELAY_CONN_HEX_LEN);
	assert_memory_equal(p->cid + 7, id, strlen(id));
	return p->cid;
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
	struct fconn *b1 = open_binary(SID);
	assert_open(b1);
	assert_int_equal(b1->hb_starts, 1);
	assert_int_equal(stats()->binaries, 1);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_ACCEPT], 1);
	assert_int_equal(b1->npings, 0);

	struct fconn *b2 = open_binary(SID);
	assert_open(b2); /* waiting for the probe */
	assert_int_equal(b2->hb_starts, 0);
	assert_int_equal(b1->npings, 1);
	assert_int_equal(b1->ping_len, strlen(RELAY_PROBE_PAYLOAD));
	assert_memory_equal(b1->ping, RELAY_PROBE_PAYLOAD, strlen(RELAY_PROBE_PAYLOAD));
	assert_int_equal(stats()->binaries, 1);

	/* a claimant's frames are not routed before its claim resolves (the phone's
	 * conn_id is learned from the frame its binary, b1, receives from it) */
	struct fconn *early = open_phone(SID);
	learn_cid(early, b1, SID);
	char env[256];
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":1}", conn_id_of(early, SID));
	send_msg(b2, env);
	assert_int_equal(early->nframes, 0);
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
	struct fconn *p = open_phone(SID);
	assert_open(p);
	send_msg(p, "1");
	char exp[256];
	wrapped(exp, sizeof exp, phone_cid_in(p, last_frame(b1), SID), "1");
	assert_int_equal(b1->nframes, 2); /* early's frame, then p's */
	assert_frame(last_frame(b1), exp);
	assert_int_equal(b2->nframes, 0);
	assert_open(early);
}

static void test_probe_timeout_takes_over(void **state)
{
	struct fconn *b1 = open_binary(SID);
	struct fconn *p1 = open_phone(SID);
	struct fconn *p2 = open_phone(SID);
	assert_int_equal(stats()->phones, 2);
	struct fconn *b2 = open_binary(SID);
	assert_int_equal(b1->npings, 1);

	advance(PROBE_MS - 20);
	assert_open(b1);
	assert_open(b2);
	assert_open(p1);

	advance(40);
	assert_closed(b1, WS_CLOSE_INTERNAL_ERROR, "heartbeat timeout");
	assert_closed(p1, 4404, "binary reclaimed server-id");
	assert_closed(p2, 4404, "binary reclaimed server-id");
	assert_open(b2);
	assert_int_equal(b2->hb_starts, 1);
	assert_int_equal(stats()->binaries, 1);
	assert_int_equal(stats()->phones, 0);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_ACCEPT], 2);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_REJECT_409], 0);
	/* evicted phones' ends sent no close notice to the new holder */
	assert_int_equal(b2->nframes, 0);

	/* a late probe pong from the displaced incumbent never reaches the relay: b1 is
	 * closing and its end was reported (the engine hands pongs over only on open
	 * connections). A probe pong from the new holder, with no probe running, changes
	 * nothing. */
	assert_int_equal(b1->state, FC_CLOSING);
	pong(b2, RELAY_PROBE_PAYLOAD);
	assert_open(b2);
	assert_int_equal(stats()->binaries, 1);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_REJECT_409], 0);

	/* the claimant holds: a phone registers and routes to it */
	struct fconn *p3 = open_phone(SID);
	assert_open(p3);
	send_msg(p3, "{\"k\":true}");
	char exp[256];
	wrapped(exp, sizeof exp, phone_cid_in(p3, last_frame(b2), SID), "{\"k\":true}");
	assert_int_equal(b2->nframes, 1);
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
	struct fconn *b1 = open_binary(SID);
	struct fconn *p1 = open_phone(SID);
	struct fconn *b2 = open_binary(SID);
	assert_int_equal(b1->npings, 1);

	peer_end(b1, 0); /* the incumbent dies: that is the probe's answer, at once */
	assert_open(b2);
	assert_int_equal(b2->hb_starts, 1);
	assert_closed(p1, 4404, "binary reclaimed server-id");
	assert_int_equal(stats()->binaries, 1);
	assert_int_equal(stats()->phones, 0);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_ACCEPT], 2);
	assert_int_equal(b2->nframes, 0);

	/* neither the old probe deadline nor a grace timer fires later */
	advance(GRACE_MS + PROBE_MS);
	assert_open(b2);
	assert_int_equal(stats()->grace_expiries, 0);
	assert_int_equal(stats()->binaries, 1);

	struct fconn *p2 = open_phone(SID);
	assert_open(p2);
	send_msg(p2, "[]");
	assert_int_equal(b2->nframes, 1);
}

static void test_claimant_ends_during_probe(void **state)
{
	struct fconn *b1 = open_binary(SID);
	struct fconn *p1 = open_phone(SID);
	struct fconn *b2 = open_binary(SID);
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
	struct fconn *b3 = open_binary(SID);
	assert_open(b3);
	assert_int_equal(b1->npings, 2);
	pong(b1, RELAY_PROBE_PAYLOAD);
	assert_closed(b3, 4409, "server-id already claimed");
}

static void test_second_claimant_during_probe_is_refused(void **state)
{
	struct fconn *b1 = open_binary(SID);
	struct fconn *b2 = open_binary(SID);
	struct fconn *b3 = open_binary(SID);
	assert_open(b2);
	assert_closed(b3, 4409, "server-id already claimed");
	assert_int_equal(b1->npings, 1);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_SERVER_IN_USE], 1);
	/* the first claimant's probe still resolves normally */
	advance(PROBE_MS + 20);
	assert_open(b2);
	assert_closed(b1, WS_CLOSE_INTERNAL_ERROR, "heartbeat timeout");
}

static void test_claims_of_other_ids_are_independent(void **state)
{
	struct fconn *a = open_binary("alpha");
	struct fconn *b = open_binary("beta");
	assert_open(a);
	assert_open(b);
	assert_int_equal(a->npings, 0);
	assert_int_equal(stats()->binaries, 2);
	struct healthz h = { 0 };
	relay_hooks.healthz(app(), &h);
	assert_int_equal(h.connected_binaries, 2);
	assert_int_equal(h.connected_phones, 0);
}

static void test_many_ids_survive_table_growth(void **state)
{
	/* more live server-ids than the initial bucket count: every one still resolves */
	enum { N = 1100 };
	static struct fconn *bins[N];
	char id[32];
	for (unsigned i = 0; i < N; i++) {
		snprintf(id, sizeof id, "id-%u", i);
		bins[i] = open_binary(id);
		assert_open(bins[i]);
	}
	assert_int_equal(stats()->binaries, N);
	for (unsigned i = 0; i < N; i++) {
		snprintf(id, sizeof id, "id-%u", i);
		struct fconn *p = open_phone(id);
		assert_open(p);
		send_msg(p, "0");
		assert_int_equal(bins[i]->nframes, 1);
		char exp[128];
		wrapped(exp, sizeof exp, phone_cid_in(p, last_frame(bins[i]), id), "0");
		assert_frame(last_frame(bins[i]), exp);
	}
	/* and a second claim of an old id still finds the incumbent */
	struct fconn *again = open_binary("id-7");
	assert_int_equal(bins[7]->npings, 1);
	pong(bins[7], RELAY_PROBE_PAYLOAD);
	assert_closed(again, 4409, "server-id already claimed");
}

/* ------------------------------------------------------------------ phone registration */

static void test_phone_no_server(void **state)
{
	struct fconn *p = open_phone("nobody");
	assert_closed(p, 4404, "no server with that id");
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_CLIENT][RELAY_OUT_REJECT_404], 1);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_NO_SERVER], 1);
	assert_int_equal(stats()->phones, 0);
	assert_int_equal(p->hb_starts, 0);
	/* a slot whose grace expired is no server either */
	struct fconn *b = open_binary(SID);
	peer_end(b, 1000);
	advance(GRACE_MS + 20); /* grace over, slot gone */
	struct fconn *p2 = open_phone(SID);
	assert_closed(p2, 4404, "no server with that id");
	assert_int_equal(stats()->register_failures[RELAY_FAIL_NO_SERVER], 2);
}

static void test_phone_cap_16(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *ph[RELAY_PHONES_PER_SERVER_MAX];
	for (unsigned i = 0; i < RELAY_PHONES_PER_SERVER_MAX; i++) {
		ph[i] = open_phone(SID);
		assert_open(ph[i]);
		assert_int_equal(ph[i]->hb_starts, 1);
	}
	assert_int_equal(stats()->phones, 16);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_CLIENT][RELAY_OUT_ACCEPT], 16);
	struct fconn *p17 = open_phone(SID);
	assert_closed(p17, 4429, "too many phones for server-id");
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_CLIENT][RELAY_OUT_REJECT_429], 1);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_PHONES_AT_CAP], 1);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_NO_SERVER], 0);
	assert_int_equal(stats()->phones, 16);

	/* one leaves (swap-with-last in the middle), one more fits; all still route */
	peer_end(ph[3], 1000);
	struct fconn *p18 = open_phone(SID);
	assert_open(p18);
	ph[3] = p18;
	for (unsigned i = 0; i < RELAY_PHONES_PER_SERVER_MAX; i++) {
		size_t before = b->nframes;
		send_msg(ph[i], "0");
		assert_int_equal(b->nframes, before + 1);
		char exp[256];
		wrapped(exp, sizeof exp, phone_cid_in(ph[i], last_frame(b), SID), "0");
		assert_frame(last_frame(b), exp);
	}
	/* each phone has its own conn_id */
	for (unsigned i = 0; i < RELAY_PHONES_PER_SERVER_MAX; i++)
		for (unsigned j = i + 1; j < RELAY_PHONES_PER_SERVER_MAX; j++)
			assert_string_not_equal(conn_id_of(ph[i], SID), conn_id_of(ph[j], SID));

	/* a gracing binary counts as present: still the cap, not "no server" */
	peer_end(b, 1000);
	struct fconn *p19 = open_phone(SID);
	assert_closed(p19, 4429, "too many phones for server-id");
	assert_int_equal(stats()->register_failures[RELAY_FAIL_PHONES_AT_CAP], 2);

	/* after expiry the no-server check comes first */
	advance(GRACE_MS + 20);
	for (unsigned i = 0; i < RELAY_PHONES_PER_SERVER_MAX; i++)
		assert_closed(ph[i], WS_CLOSE_NORMAL, "");
	struct fconn *p20 = open_phone(SID);
	assert_closed(p20, 4404, "no server with that id");
	assert_int_equal(stats()->register_failures[RELAY_FAIL_PHONES_AT_CAP], 2);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_NO_SERVER], 1);
}

/* ------------------------------------------------------------------ grace */

static void test_grace_keeps_phones(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *p1 = open_phone(SID);
	struct fconn *p2 = open_phone(SID);
	peer_end(b, 1000);
	assert_int_equal(stats()->binaries, 0);
	assert_int_equal(stats()->phones, 2);
	assert_open(p1);
	assert_open(p2);

	/* phones may still register during grace */
	struct fconn *p3 = open_phone(SID);
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
	struct fconn *b1 = open_binary(SID);
	struct fconn *p1 = open_phone(SID);
	struct fconn *p2 = open_phone(SID);
	peer_end(b1, 1000);
	advance(GRACE_MS / 2);

	struct fconn *b2 = open_binary(SID);
	assert_open(b2);
	assert_int_equal(b2->hb_starts, 1);
	assert_int_equal(b1->npings, 0); /* no probe against a gracing slot */
	assert_closed(p1, 4404, "binary reclaimed server-id");
	assert_closed(p2, 4404, "binary reclaimed server-id");
	assert_int_equal(stats()->binaries, 1);
	assert_int_equal(stats()->phones, 0);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_ACCEPT], 2);
	/* no close notice for phones that registered with the previous binary */
	assert_int_equal(b2->nframes, 0);

	/* stale fire: past the old deadline, nothing expires */
	struct fconn *p3 = open_phone(SID);
	advance(GRACE_MS);
	assert_int_equal(stats()->grace_expiries, 0);
	assert_open(p3);
	assert_open(b2);
	send_msg(p3, "true");
	assert_int_equal(b2->nframes, 1);
}

static void test_grace_expiry_closes_phones(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *p1 = open_phone(SID);
	struct fconn *p2 = open_phone(SID);
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
	struct fconn *b2 = open_binary(SID);
	assert_open(b2);
	assert_int_equal(stats()->binaries, 1);
	advance(GRACE_MS * 2);
	assert_int_equal(stats()->grace_expiries, 1);
}

static void test_grace_without_phones_frees_slot(void **state)
{
	struct fconn *b = open_binary(SID);
	peer_end(b, 1000);
	advance(GRACE_MS + 20);
	assert_int_equal(stats()->grace_expiries, 1);
	struct fconn *p = open_phone(SID);
	assert_closed(p, 4404, "no server with that id");
}

/* ------------------------------------------------------------------ routing */

static void test_phone_to_binary_wraps_exactly(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *p = open_phone(SID);
	const char *msg = "{\"t\": 1, \"x\": [1, 2, \"<&>\"]}";
	send_msg(p, msg);
	assert_int_equal(b->nframes, 1);
	const char *cid = phone_cid_in(p, last_frame(b), SID);
	char exp[512];
	wrapped(exp, sizeof exp, cid, msg);
	assert_frame(last_frame(b), exp);
	assert_true(last_frame(b)->flags & CONN_SEND_COUNTED);
	assert_true(last_frame(b)->flags & CONN_SEND_LATENCY); /* pyrycode_relay_p2b_latency */
	assert_int_equal(b->items_pending, 1);
	assert_int_equal(stats()->frames_phone_to_binary, 1);
	/* written in place: validated and copied by one pass */
	assert_int_equal(F->reserves, 1);
	assert_int_equal(stats()->copied_in_scan_bytes, strlen(msg));
	assert_int_equal(stats()->copied_apart_bytes, 0);

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

	/* binary opcode and JSON scalars pass too, under the same conn_id */
	message(p, WS_OP_BINARY, "\"s\"", 3);
	pump();
	wrapped(exp, sizeof exp, cid, "\"s\"");
	assert_frame(last_frame(b), exp);
	assert_int_equal(stats()->frames_phone_to_binary, 2);
	assert_open(p);

	/* the conn_id the binary received is p's own: an envelope for it reaches p */
	char env[256];
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":7}", cid);
	send_msg(b, env);
	assert_int_equal(p->nframes, 1);
	assert_frame(last_frame(p), "7");
}

/* The one-pass path (the payload copied into the binary's outbox by the JSON check)
 * and the two-pass one (when the outbox cannot give the space in one piece) put the
 * same bytes on the wire; invalid JSON found by the one-pass check leaves the binary's
 * outbox and the buffer pool as they were. */
static void test_phone_to_binary_one_pass_equals_two_pass(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *p = open_phone(SID);
	struct fconn *q = open_phone(SID);
	static char msg[2048], exp[2400];
	int n = snprintf(msg, sizeof msg, "{\"type\":\"frame\",\"payload\":\"");
	for (int k = 0; k < 1500; k++)
		msg[n++] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[k % 64];
	snprintf(msg + n, sizeof msg - (size_t)n, "\\u00e9\xc3\xa9\",\"seq\":[1,2.5e3,true,null]}");

	send_msg(p, msg);
	assert_int_equal(b->nframes, 1);
	const char *cid = phone_cid_in(p, last_frame(b), SID);
	wrapped(exp, sizeof exp, cid, msg);
	assert_frame(last_frame(b), exp);
	assert_int_equal(stats()->copied_in_scan_bytes, strlen(msg));
	assert_int_equal(stats()->copied_apart_bytes, 0);

	F->two_pass_only = true;
	send_msg(p, msg);
	assert_int_equal(b->nframes, 2);
	assert_frame(last_frame(b), exp);
	assert_int_equal(stats()->copied_in_scan_bytes, strlen(msg));
	assert_int_equal(stats()->copied_apart_bytes, strlen(msg));
	assert_int_equal(stats()->frames_phone_to_binary, 2);
	assert_true(last_frame(b)->flags & CONN_SEND_COUNTED);
	assert_int_equal(b->items_pending, 2);

	/* a long payload made invalid past the stored runs: refused, nothing left behind */
	F->two_pass_only = false;
	uint64_t queued = b->out.bytes, in_use = F->w->pool.bytes_in_use;
	unsigned aborts_before = F->aborts;
	msg[strlen(msg) - 1] = ',';
	send_msg(q, msg);
	assert_int_equal(F->aborts, aborts_before + 1);
	assert_closed(q, WS_CLOSE_NORMAL, "");
	assert_int_equal(stats()->frames_phone_to_binary, 2);
	/* only q's close notice was queued to b after the refusal */
	assert_int_equal(b->nframes, 3);
	assert_true(b->out.bytes > queued && b->out.bytes - queued < 200);
	assert_true(F->w->pool.bytes_in_use >= in_use);
	assert_int_equal(stats()->dropped[RELAY_DROP_PHONE_INVALID_JSON], 1);

	/* a binary's frame in the form binaries send: its phone is known before the frame
	 * is scanned, so it is copied by its check too; any other form is scanned first and
	 * copied apart; the phone gets the same bytes either way */
	uint64_t in_scan = stats()->copied_in_scan_bytes, apart = stats()->copied_apart_bytes;
	static char env[2600];
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":[12345]}", cid);
	send_msg(b, env);
	assert_frame(last_frame(p), "[12345]");
	assert_int_equal(stats()->copied_in_scan_bytes, in_scan + 7);
	msg[strlen(msg) - 1] = '}';
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":%s}", cid, msg);
	send_msg(b, env);
	assert_frame(last_frame(p), msg);
	assert_int_equal(stats()->copied_in_scan_bytes, in_scan + 7 + strlen(msg));
	assert_int_equal(stats()->copied_apart_bytes, apart);
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\", \"frame\":%s}", cid, msg);
	send_msg(b, env);
	assert_frame(last_frame(p), msg);
	assert_int_equal(stats()->copied_apart_bytes, apart + strlen(msg));
	/* the shape with a frame that is not one value: scanned, and routed by the scan */
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":[1],\"x\":{}}", cid);
	send_msg(b, env);
	assert_frame(last_frame(p), "[1]");
	assert_int_equal(stats()->copied_apart_bytes, apart + strlen(msg) + 3);
	assert_int_equal(p->nframes, 4);
	assert_int_equal(stats()->dropped[RELAY_DROP_MALFORMED_ENVELOPE], 0);
	/* the shape with invalid JSON in the frame: nothing reaches the phone, dropped as malformed */
	unsigned aborts = F->aborts;
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":[1,]}", cid);
	send_msg(b, env);
	assert_int_equal(F->aborts, aborts + 1);
	assert_int_equal(p->nframes, 4);
	assert_int_equal(stats()->dropped[RELAY_DROP_MALFORMED_ENVELOPE], 1);
	assert_open(p);
}

static void test_phone_invalid_json_closes_1000(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *p = open_phone(SID);
	struct fconn *q = open_phone(SID);
	const char *cid = learn_cid(p, b, SID); /* b: frame 1; frames_phone_to_binary 1 */
	send_msg(p, "{\"a\":");
	assert_closed(p, WS_CLOSE_NORMAL, "");
	assert_int_equal(stats()->frames_phone_to_binary, 1);
	/* its end: the close notice carries 1001 (no close frame from the phone) */
	char exp[256];
	notice(exp, sizeof exp, cid, 1001);
	assert_int_equal(b->nframes, 2);
	assert_frame(last_frame(b), exp);

	/* an empty message is not JSON either */
	send_buf(q, "", 0);
	assert_closed(q, WS_CLOSE_NORMAL, "");
	assert_int_equal(stats()->frames_phone_to_binary, 1);
	assert_open(b);
}

static void test_binary_outbox_refusal_drops_phone(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *p = open_phone(SID);
	b->refuse_sends = true;
	send_msg(p, "1");
	assert_closed(p, WS_CLOSE_NORMAL, "");
	assert_int_equal(stats()->frames_phone_to_binary, 0);
	assert_open(b);
}

static void test_binary_to_phone_routed(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *p = open_phone(SID);
	struct fconn *q = open_phone(SID);
	const char *cid = learn_cid(p, b, SID);
	char env[512];
	const char *frame = "{\"hello\": \"w\\u00f6rld\", \"n\": [1.5e3]}";
	snprintf(env, sizeof env, "{\"other\":1,\"conn_id\":\"%s\",\"frame\":%s}", cid, frame);
	send_msg(b, env);
	assert_int_equal(p->nframes, 1);
	assert_frame(last_frame(p), frame);
	assert_true(last_frame(p)->flags & CONN_SEND_COUNTED);
	assert_int_equal(q->nframes, 0);
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
	struct fconn *b = open_binary(SID);
	struct fconn *p = open_phone(SID);
	learn_cid(p, b, SID);
	char env[256];
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"close_code\":4401,\"frame\":\"bye\"}", conn_id_of(p, SID));
	send_msg(b, env);
	assert_int_equal(p->nframes, 1);
	assert_frame(last_frame(p), "\"bye\"");
	assert_closed(p, 4401, "");
	assert_true(last_frame(p)->seq < p->close_seq); /* frame first, then the close */
	/* closed by the binary: no close notice (b's one frame is p's, from learn_cid) */
	assert_int_equal(b->nframes, 1);
	assert_open(b);
}

static void test_binary_directive_without_frame(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *p = open_phone(SID);
	struct fconn *q = open_phone(SID);
	learn_cid(p, b, SID);
	learn_cid(q, b, SID);
	char env[256];
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"close_code\":4421}", conn_id_of(p, SID));
	send_msg(b, env);
	assert_int_equal(p->nframes, 0);
	assert_closed(p, 4421, "");
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":null,\"close_code\":4408}", conn_id_of(q, SID));
	send_msg(b, env);
	assert_int_equal(q->nframes, 0);
	assert_closed(q, 4408, "");
	assert_int_equal(b->nframes, 2); /* p's and q's, from learn_cid: no close notice */
}

static void test_binary_directive_illegal_code_1011(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *p = open_phone(SID);
	struct fconn *q = open_phone(SID);
	learn_cid(p, b, SID);
	learn_cid(q, b, SID);
	char env[256];
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"close_code\":1005,\"frame\":1}", conn_id_of(p, SID));
	send_msg(b, env);
	assert_frame(last_frame(p), "1");
	assert_closed(p, WS_CLOSE_INTERNAL_ERROR, "");
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"close_code\":999}", conn_id_of(q, SID));
	send_msg(b, env);
	assert_closed(q, WS_CLOSE_INTERNAL_ERROR, "");
	assert_int_equal(b->nframes, 2); /* p's and q's, from learn_cid: no close notice */
}

/* ------------------------------------------------------------------ live sessions (ADR 0018) */

static bool export_of(struct fconn *c, unsigned pass, uint8_t *route, char hex[8], struct span *id)
{
	return relay_hooks.export(app(), ref_of(c), pass, route, hex, id);
}

/* The engine ends a session that moved: CONN_END_MOVED, no close frame. */
static void moved(struct fconn *c)
{
	note_end(c, CONN_END_MOVED);
	c->state = FC_DEAD;
	queue_end(c);
}

static void test_export_binary_only_with_all_its_phones(void **state)
{
	(void)state;
	struct fconn *b = open_binary(SID);
	struct fconn *p = open_phone(SID);
	struct fconn *q = open_phone(SID);
	const char *cid = learn_cid(p, b, SID);
	uint8_t route = 99;
	char hex[8];
	struct span id;
	b->export_ready = p->export_ready = true; /* q not ready: the binary stays, and p with it */
	assert_false(export_of(b, 0, &route, hex, &id));
	assert_false(export_of(p, 1, &route, hex, &id));
	q->export_ready = true;
	assert_false(export_of(p, 0, &route, hex, &id)); /* phones in pass 1 only */
	assert_true(export_of(b, 0, &route, hex, &id));
	assert_int_equal(route, SESSION_ROUTE_BINARY);
	assert_true(span_eq_cstr(id, SID));
	assert_false(export_of(b, 1, &route, hex, &id));
	assert_true(export_of(p, 1, &route, hex, &id));
	assert_int_equal(route, SESSION_ROUTE_PHONE);
	assert_memory_equal(hex, cid + strlen(cid) - RELAY_CONN_HEX_LEN, RELAY_CONN_HEX_LEN);
	assert_true(export_of(q, 1, &route, hex, &id));
	/* They end here as moved: silently (no close notice to the binary, no grace). */
	size_t frames = b->nframes;
	moved(p);
	moved(b);
	moved(q);
	pump();
	assert_int_equal(b->nframes, frames);
	assert_int_equal(stats()->binaries, 0);
	assert_int_equal(stats()->phones, 0);
	assert_int_equal(stats()->grace_expiries, 0);
	assert_int_equal(F->w->tw.count, 1); /* the rate limiter's sweep only: no grace armed */
}

static void test_export_refuses_phone_in_grace_and_claimant(void **state)
{
	(void)state;
	struct fconn *b = open_binary(SID);
	struct fconn *p = open_phone(SID);
	p->export_ready = b->export_ready = true;
	uint8_t route;
	char hex[8];
	struct span id;
	peer_end(b, 0); /* grace: the phone has no binary to move with */
	assert_false(export_of(p, 1, &route, hex, &id));
	struct fconn *b2 = open_binary("srv-2");
	struct fconn *c2 = open_binary("srv-2"); /* a claimant: a probe runs */
	b2->export_ready = c2->export_ready = true;
	assert_false(export_of(b2, 0, &route, hex, &id));
	assert_false(export_of(c2, 0, &route, hex, &id));
}

static struct fconn *resume_conn(enum http_route route, const char *id, const char *hex)
{
	struct fconn *c = new_conn(route, 3, FC_OPEN);
	c->upgraded = true;
	struct upgraded *u = upgraded_of(span_cstr(id), span_make("", 0), span_make("", 0), span_make("", 0),
					 span_make("", 0));
	assert_non_null(u);
	u->fd = -1;
	u->resume = true;
	u->route = (uint8_t)route;
	u->remote = c->remote;
	memcpy(u->conn_hex, hex, 8);
	relay_hooks.resume(app(), ref_of(c), u);
	upgraded_free(u);
	pump();
	return c;
}

static void test_resume_keeps_conn_ids_and_routes(void **state)
{
	(void)state;
	struct fconn *orphan = resume_conn(HTTP_ROUTE_CLIENT, SID, "00000000"); /* before its binary */
	assert_closed(orphan, 1001, "shutting down");
	struct fconn *b = resume_conn(HTTP_ROUTE_SERVER, SID, "0123abcd");
	struct fconn *p = resume_conn(HTTP_ROUTE_CLIENT, SID, "89abcdef");
	assert_open(b);
	assert_open(p);
	assert_int_equal(stats()->binaries, 1);
	assert_int_equal(stats()->phones, 1);
	send_msg(p, "{\"n\":1}");
	assert_frame(last_frame(b), "{\"conn_id\":\"client-" SID "-89abcdef\",\"frame\":{\"n\":1}}");
	char env[256];
	wrapped(env, sizeof env, "client-" SID "-89abcdef", "{\"down\":2}");
	send_msg(b, env);
	assert_frame(last_frame(p), "{\"down\":2}");
	/* a binary of that server-id is there already: the moved one reconnects */
	struct fconn *dup = resume_conn(HTTP_ROUTE_SERVER, SID, "ffffffff");
	assert_closed(dup, 1001, "shutting down");
	assert_open(b);
}

static void test_binary_unknown_conn_id_dropped(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *p = open_phone(SID);
	const char *cid = learn_cid(p, b, SID);
	char env[256], wrong[128];
	snprintf(wrong, sizeof wrong, "%s", cid);
	wrong[strlen(wrong) - 1] = wrong[strlen(wrong) - 1] == '0' ? '1' : '0';
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":{}}", wrong);
	send_msg(b, env);
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"close_code\":4401}", wrong);
	send_msg(b, env);
	assert_int_equal(p->nframes, 0);
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
	assert_int_equal(p->nframes, 0);
	assert_open(b);
	assert_open(p);

	/* the right id still works */
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":{}}", cid);
	send_msg(b, env);
	assert_frame(last_frame(p), "{}");
}

static void test_other_server_phone_unreachable(void **state)
{
	struct fconn *ba = open_binary("alpha");
	struct fconn *bb = open_binary("beta");
	struct fconn *pa = open_phone("alpha");
	struct fconn *pb = open_phone("beta");
	learn_cid(pb, bb, "beta");
	char env[256];
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":\"x\"}", conn_id_of(pb, "beta"));
	send_msg(ba, env);
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"close_code\":4401}", conn_id_of(pb, "beta"));
	send_msg(ba, env);
	assert_int_equal(pb->nframes, 0);
	assert_open(pb);
	assert_int_equal(pa->nframes, 0);
	assert_int_equal(stats()->dropped[RELAY_DROP_UNKNOWN_CONN_ID], 2);
	/* its own binary reaches it */
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":\"x\"}", conn_id_of(pb, "beta"));
	send_msg(bb, env);
	assert_frame(last_frame(pb), "\"x\"");
	/* and phone frames go only to their own binary */
	send_msg(pa, "2");
	assert_int_equal(ba->nframes, 1);
	assert_int_equal(bb->nframes, 1); /* pb's, from learn_cid */
}

static void test_frame_to_closing_phone_dropped(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *p = open_phone(SID);
	const char *cid = learn_cid(p, b, SID);
	char env[256];
	/* the relay closed it (invalid JSON) but its end is not reported yet */
	message(p, WS_OP_TEXT, "x", 1);
	assert_int_equal(p->state, FC_CLOSING);
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"frame\":1}", cid);
	message(b, WS_OP_TEXT, env, strlen(env));
	assert_int_equal(p->nframes, 0);
	pump();
	assert_closed(p, WS_CLOSE_NORMAL, "");
}

/* ------------------------------------------------------------------ close notices */

static void test_close_notice_codes(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *p1 = open_phone(SID);
	struct fconn *p2 = open_phone(SID);
	char exp[256];

	send_msg(p1, "{\"last\":1}");
	const char *c1 = phone_cid_in(p1, last_frame(b), SID);
	peer_end(p1, 4000);
	assert_int_equal(b->nframes, 2);
	wrapped(exp, sizeof exp, c1, "{\"last\":1}");
	assert_frame(&b->frames[0], exp); /* the notice follows the phone's frames */
	notice(exp, sizeof exp, c1, 4000);
	assert_frame(&b->frames[1], exp);
	assert_int_equal(stats()->frames_phone_to_binary, 1); /* notices are not counted */

	const char *c2 = learn_cid(p2, b, SID); /* b: frame 3 */
	assert_string_not_equal(c1, c2);
	peer_end(p2, 0); /* abrupt drop */
	assert_int_equal(b->nframes, 4);
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
	struct fconn *b = open_binary(id);
	struct fconn *p = open_phone(id);
	const char *cid = learn_cid(p, b, id);
	peer_end(p, 4001);
	char exp[512];
	notice(exp, sizeof exp, cid, 4001);
	assert_int_equal(b->nframes, 2); /* p's, from learn_cid, then the notice */
	assert_frame(last_frame(b), exp);
}

static void test_no_close_notice_after_directive(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *p = open_phone(SID);
	learn_cid(p, b, SID);
	char env[256];
	snprintf(env, sizeof env, "{\"conn_id\":\"%s\",\"close_code\":4401,\"frame\":1}", conn_id_of(p, SID));
	message(b, WS_OP_TEXT, env, strlen(env));
	p->peer_close_code = 4401; /* the phone answered the close before its end is reported */
	pump();
	assert_closed(p, 4401, "");
	assert_int_equal(b->nframes, 1); /* p's, from learn_cid: no notice */
}

static void test_no_close_notice_to_reclaimer(void **state)
{
	struct fconn *b1 = open_binary(SID);
	struct fconn *p = open_phone(SID);
	struct fconn *q = open_phone(SID);
	peer_end(b1, 1000);
	/* during grace a phone leaving has nobody to notify */
	peer_end(q, 4000);
	assert_int_equal(b1->nframes, 0);
	struct fconn *b2 = open_binary(SID);
	assert_closed(p, 4404, "binary reclaimed server-id");
	assert_int_equal(b2->nframes, 0);
	assert_int_equal(b1->nframes, 0);
}

/* ------------------------------------------------------------------ phone outbox budget */

/* Charged len + 64 (+ the 10-byte frame header ADR 0004 adds): 41 fit in 4 MiB and the
 * 42nd overflows; without the 64-byte item overhead 42 would fit. */
#define BIG_FRAME 99830u

static void fill_phone(struct fconn *b, struct fconn *p, const char *cid, unsigned count)
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
	struct fconn *b = open_binary(SID);
	struct fconn *p = open_phone(SID);
	const char *cid = learn_cid(p, b, SID);
	unsigned fit = RELAY_PHONE_OUTBOX_BUDGET_BYTES / (BIG_FRAME + RELAY_OUTBOX_ITEM_OVERHEAD_BYTES);
	assert_int_equal(fit, 41);
	assert_true((fit + 1) * (BIG_FRAME + 10) <= RELAY_PHONE_OUTBOX_BUDGET_BYTES);
	fill_phone(b, p, cid, fit);
	assert_open(p);
	assert_int_equal(p->nframes, fit);
	assert_int_equal(p->items_pending, fit);
	assert_int_equal(stats()->dropped[RELAY_DROP_PHONE_BACKLOG], 0);

	fill_phone(b, p, cid, 1);
	assert_closed(p, WS_CLOSE_INTERNAL_ERROR, "phone backlog full");
	assert_int_equal(p->nframes, fit);
	assert_int_equal(stats()->dropped[RELAY_DROP_PHONE_BACKLOG], 1);
	assert_open(b);

	/* later frames for it go nowhere */
	fill_phone(b, p, cid, 1);
	assert_int_equal(p->nframes, fit);
}

static void test_phone_budget_released_by_writes(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *p = open_phone(SID);
	const char *cid = learn_cid(p, b, SID);
	fill_phone(b, p, cid, 41);
	/* the first item's bytes (header + frame) reach the socket: room for one more.
	 * (outq reports an item once the segment holding its last byte is freed, so
	 * items_pending may lag; the queued bytes are released at once.) */
	write_bytes(p, BIG_FRAME + 10);
	assert_true(p->items_pending >= 40);
	fill_phone(b, p, cid, 1);
	assert_open(p);
	assert_int_equal(p->nframes, 42);
	fill_phone(b, p, cid, 1);
	assert_closed(p, WS_CLOSE_INTERNAL_ERROR, "phone backlog full");
}

static void test_phone_frames_counted_when_written(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *p = open_phone(SID);
	const char *cid = learn_cid(p, b, SID);
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
	struct fconn *b = open_binary(SID);
	struct fconn *p = open_phone(SID);
	const char *cid = learn_cid(p, b, SID);
	fill_phone(b, p, cid, 41);
	char *frame = json_string_of_len(BIG_FRAME);
	size_t len;
	char *env = envelope_for(cid, 4408, frame, &len);
	send_buf(b, env, len);
	free(env);
	free(frame);
	assert_closed(p, 4408, "phone backlog full");
	assert_int_equal(p->nframes, 41);
	assert_int_equal(stats()->dropped[RELAY_DROP_PHONE_BACKLOG], 1);
	/* the directive marked it closed-by-binary even though it overflowed: no notice
	 * (b's one frame is p's, from learn_cid) */
	assert_int_equal(b->nframes, 1);
}

/* ------------------------------------------------------------------ binary back-pressure */

#define PHONE_MSG 200000u

static void test_binary_backpressure_pauses_phones(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *p1 = open_phone(SID);
	struct fconn *p2 = open_phone(SID);
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
	assert_int_equal(p1->pause_calls, 1);
	assert_int_equal(p2->pause_calls, 1);
	assert_int_equal(stats()->phone_pauses, 1);
	assert_open(p1);
	assert_open(p2);

	/* a phone registering while its binary is backed up starts paused */
	struct fconn *p3 = open_phone(SID);
	assert_open(p3);
	assert_true(p3->recv_paused);

	/* more data while paused does not pause again */
	send_buf(p2, msg, PHONE_MSG);
	assert_int_equal(stats()->phone_pauses, 1);
	assert_int_equal(p2->pause_calls, 1);

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
	assert_int_equal(p1->resume_calls, 1);
	assert_int_equal(p2->resume_calls, 1);
	assert_int_equal(p3->resume_calls, 1);
	write_bytes(b, b->out.bytes);
	assert_int_equal(p1->resume_calls, 1);
	assert_int_equal(b->items_pending, 0);
	free(msg);
}

static void test_backpressure_released_when_binary_ends(void **state)
{
	struct fconn *b = open_binary(SID);
	struct fconn *p1 = open_phone(SID);
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
	struct fconn *p2 = open_phone(SID);
	assert_false(p2->recv_paused);
	struct fconn *b2 = open_binary(SID);
	assert_open(b2);
	struct fconn *p3 = open_phone(SID);
	assert_false(p3->recv_paused);
	assert_closed(p1, 4404, "binary reclaimed server-id");
	assert_closed(p2, 4404, "binary reclaimed server-id");
}

/* ------------------------------------------------------------------ admission */

/* An upgrade request from 127.0.0.<ip_last> (with X-Forwarded-For: xff unless NULL)
 * passed routing: the relay's admission verdict. Never upgraded: no end to report. */
static int admit_req(uint8_t ip_last, enum http_route route, const char *xff)
{
	char text[256];
	snprintf(text, sizeof text, "GET %s HTTP/1.1\r\nHost: r\r\n%s%s%s\r\n",
		 route == HTTP_ROUTE_SERVER ? "/v1/server" : "/v1/client", xff ? "X-Forwarded-For: " : "",
		 xff ? xff : "", xff ? "\r\n" : "");
	struct http_request req;
	parse_req(text, &req);
	struct fconn *c = new_conn(route, ip_last, FC_HTTP);
	uint64_t key = 0;
	int r = relay_hooks.admit(app(), ref_of(c), route, &req, &key);
	assert_true(r == -1 || r == HTTP_CANNED_EMPTY_429);
	/* admitted: the client is named for --max-connections-per-ip; refused: it is not */
	assert_true(r == -1 ? key != 0 : key == 0);
	F->last_client_key = key;
	return r;
}

static int admit_from(uint8_t ip_last, enum http_route route)
{
	return admit_req(ip_last, route, NULL);
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
	assert_int_equal(admit_from(1, HTTP_ROUTE_CLIENT), HTTP_CANNED_EMPTY_429);
	assert_int_equal(admit_from(1, HTTP_ROUTE_SERVER), HTTP_CANNED_EMPTY_429);
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
	unsigned fired = F->timer_fires;
	advance(RATELIMIT_SWEEP_INTERVAL_MS + 100);
	advance(RATELIMIT_SWEEP_INTERVAL_MS + 100);
	assert_int_equal(F->timer_fires, fired + 2);
	for (int i = 0; i < 3; i++)
		assert_int_equal(admit_from(1, HTTP_ROUTE_SERVER), -1);
	assert_int_equal(admit_from(1, HTTP_ROUTE_SERVER), HTTP_CANNED_EMPTY_429);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_RATELIMIT], 4);
	fx_close();
}

static void test_admit_xff_key(void **state)
{
	struct config cfg;
	default_cfg(&cfg);
	cfg.rate_limit_burst = 1;
	cfg.trust_x_forwarded_for = true;
	fx_open(&cfg);
	/* trusted: the left-most entry, trimmed, is the key, whatever the socket address */
	assert_int_equal(admit_req(1, HTTP_ROUTE_CLIENT, " 203.0.113.7 , 10.0.0.1"), -1);
	assert_int_equal(admit_req(2, HTTP_ROUTE_SERVER, "203.0.113.7"), HTTP_CANNED_EMPTY_429);
	assert_int_equal(admit_req(1, HTTP_ROUTE_CLIENT, "203.0.113.8, 203.0.113.7"), -1);
	/* no header, or an empty left-most entry: the socket address is the key */
	assert_int_equal(admit_req(1, HTTP_ROUTE_CLIENT, NULL), -1);
	assert_int_equal(admit_req(1, HTTP_ROUTE_CLIENT, " , 203.0.113.9"), HTTP_CANNED_EMPTY_429);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_REJECT_RATE_LIMIT], 1);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_CLIENT][RELAY_OUT_REJECT_RATE_LIMIT], 1);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_RATELIMIT], 2);
	fx_close();

	/* not trusted: the header is ignored */
	cfg.trust_x_forwarded_for = false;
	fx_open(&cfg);
	assert_int_equal(admit_req(1, HTTP_ROUTE_CLIENT, "203.0.113.7"), -1);
	assert_int_equal(admit_req(1, HTTP_ROUTE_CLIENT, "203.0.113.8"), HTTP_CANNED_EMPTY_429);
	assert_int_equal(admit_req(2, HTTP_ROUTE_CLIENT, "203.0.113.7"), -1);
	assert_int_equal(stats()->register_failures[RELAY_FAIL_RATELIMIT], 1);
	fx_close();
}

/* --max-connections-per-ip counts an admitted request under the rate limiter's key: the
 * socket address, or the left-most X-Forwarded-For entry when trusted. */
static void test_admit_names_the_client_by_its_rate_limit_key(void **state)
{
	struct config cfg;
	default_cfg(&cfg);
	cfg.rate_limit_burst = 0;
	cfg.trust_x_forwarded_for = true;
	fx_open(&cfg);
	assert_int_equal(admit_req(1, HTTP_ROUTE_CLIENT, NULL), -1);
	uint64_t sock1 = F->last_client_key;
	assert_int_equal(admit_req(2, HTTP_ROUTE_SERVER, NULL), -1);
	uint64_t sock2 = F->last_client_key;
	assert_true(sock1 != sock2);
	assert_int_equal(admit_req(1, HTTP_ROUTE_CLIENT, "203.0.113.7, 10.0.0.1"), -1);
	uint64_t fwd = F->last_client_key;
	assert_true(fwd != sock1);
	assert_int_equal(admit_req(2, HTTP_ROUTE_SERVER, " 203.0.113.7"), -1);
	assert_true(F->last_client_key == fwd); /* another socket, the same client */
	assert_int_equal(admit_req(2, HTTP_ROUTE_SERVER, " , 203.0.113.7"), -1);
	assert_true(F->last_client_key == sock2); /* no left-most entry: the socket */
	fx_close();

	cfg.trust_x_forwarded_for = false;
	fx_open(&cfg);
	assert_int_equal(admit_req(1, HTTP_ROUTE_CLIENT, "203.0.113.7"), -1);
	assert_true(F->last_client_key == sock1);
	fx_close();
}

static void test_admit_burst_zero_never_429(void **state)
{
	struct config cfg;
	default_cfg(&cfg);
	cfg.rate_limit_burst = 0;
	fx_open(&cfg);
	for (int i = 0; i < 50; i++) {
		assert_int_equal(admit_from(1, HTTP_ROUTE_CLIENT), -1);
	}
	assert_int_equal(stats()->register_failures[RELAY_FAIL_RATELIMIT], 0);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_CLIENT][RELAY_OUT_REJECT_RATE_LIMIT], 0);
	fx_close();
}

static void test_rejected_headers_counted(void **state)
{
	relay_hooks.rejected_headers(app(), HTTP_ROUTE_CLIENT);
	relay_hooks.rejected_headers(app(), HTTP_ROUTE_SERVER);
	relay_hooks.rejected_headers(app(), HTTP_ROUTE_SERVER);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_CLIENT][RELAY_OUT_REJECT_HEADERS], 1);
	assert_int_equal(stats()->upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_REJECT_HEADERS], 2);
}

/* ------------------------------------------------------------------ shutdown */

static void test_shutdown_closes_all_1001(void **state)
{
	struct fconn *b1 = open_binary(SID);
	struct fconn *p1 = open_phone(SID);
	struct fconn *b2 = open_binary("other");
	struct fconn *p2 = open_phone("other");
	struct fconn *claimant = open_binary("other");
	peer_end(b2, 1000); /* incumbent gone mid-probe: the claimant holds, p2 evicted */
	assert_closed(p2, 4404, "binary reclaimed server-id");
	struct fconn *b3 = open_binary("third");
	struct fconn *p3 = open_phone("third");
	peer_end(b3, 1000); /* gracing with a phone */
	advance(GRACE_MS - DRAIN_MS / 2);
	unsigned fired = F->timer_fires;
	/* the shutdown hook, then the engine's 1001 to every open WebSocket; the relay
	 * hears every end once */
	engine_shutdown();
	assert_int_equal(F->timers_after_shutdown, 0); /* grace, probe and sweep cancelled */
	assert_closed(b1, WS_CLOSE_GOING_AWAY, "shutting down");
	assert_closed(p1, WS_CLOSE_GOING_AWAY, "shutting down");
	assert_closed(claimant, WS_CLOSE_GOING_AWAY, "shutting down");
	assert_closed(p3, WS_CLOSE_GOING_AWAY, "shutting down");
	assert_int_equal(stats()->binaries, 0);
	assert_int_equal(stats()->phones, 0);
	/* the pending grace timer is cancelled: no expiry while the worker drains; nor
	 * does any other relay timer fire (the sweep is cancelled, and the graces the
	 * binaries' ends armed lie beyond the drain) */
	advance(DRAIN_MS);
	assert_int_equal(stats()->grace_expiries, 0);
	assert_int_equal(F->timer_fires, fired);
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
		T(test_phone_to_binary_one_pass_equals_two_pass),
		T(test_phone_invalid_json_closes_1000),
		T(test_binary_outbox_refusal_drops_phone),
		T(test_binary_to_phone_routed),
		T(test_binary_directive_frame_then_close),
		T(test_binary_directive_without_frame),
		T(test_binary_directive_illegal_code_1011),
		T(test_binary_unknown_conn_id_dropped),
		T(test_export_binary_only_with_all_its_phones),
		T(test_export_refuses_phone_in_grace_and_claimant),
		T(test_resume_keeps_conn_ids_and_routes),
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
		cmocka_unit_test(test_admit_xff_key),
		cmocka_unit_test(test_admit_names_the_client_by_its_rate_limit_key),
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
