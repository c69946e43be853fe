/*
 * worker.c - the io_uring event loop of one worker.
 *
 * Reading order: set-up, the loop, completions (accept, recv, send, wake), the HTTP
 * phase, the WebSocket phase, sending, timers, teardown. Every connection moves
 * through enum conn_state in one direction only: HTTP -> WS_OPEN -> WS_CLOSING ->
 * DRAINING -> DEAD -> FREE (any state may jump forward, never back).
 */
#include "engine/worker.h"
#include "engine/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"

/* Newer than liburing 2.3's copy of the kernel header (kernel 6.2 ABI). */
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif
#include "ws/ws_frame.h"
#include "ws/ws_handshake.h"

#ifndef PYRELAY_VERSION
#define PYRELAY_VERSION "dev"
#endif

enum op {
	OP_ACCEPT = 1,
	OP_RECV,
	OP_SEND,
	OP_WAKE,
	OP_IGNORE, /* cancels: their completion needs no action */
};


/* An idle connection must stay cheap (issue goal: <= 512 B of user-space memory). */
/* Every idle connection pays for its slot: the 512 B per idle connection goal (bench
 * relay/idle, ADR 0006) leaves this much for the slot itself. */
#define CONN_SLOT_BYTES_MAX 256u
_Static_assert(sizeof(struct conn) <= CONN_SLOT_BYTES_MAX, "struct conn grew past its budget");

struct send_ctx {
	struct msghdr msg;
	struct iovec iov[OUTQ_IOV_MAX];
	uint32_t alloc_bytes;
};


/* ------------------------------------------------------------------ set-up */

struct worker *worker_create(const struct config *cfg, uint32_t id, const char *listen_addr,
			     uint64_t buffer_budget_bytes, char why[URING_WHY_BYTES])
{
	struct worker *w = calloc_aligned(sizeof *w); /* stats: own cache lines */
	if (w == NULL) {
		snprintf(why, URING_WHY_BYTES, "out of memory");
		return NULL;
	}
	w->cfg = cfg;
	w->id = id;
	w->listen_fd = -1;
	w->wake_fd = -1;
	if (!uring_probe(&w->feat, why))
		goto fail;

	w->bufs = aligned_alloc(4096, (size_t)RECV_BUFFER_COUNT * RECV_BUFFER_BYTES);
	if (w->bufs == NULL) {
		snprintf(why, URING_WHY_BYTES, "out of memory for receive buffers");
		goto fail;
	}
	/* The pool is sized once: upgraded connections (the cap) plus a bounded number
	 * still in their HTTP phase. calloc leaves untouched slots unbacked by RAM. */
	w->conn_cap = cfg->max_connections + HTTP_PHASE_CONNECTIONS_MAX;
	w->conns = calloc(w->conn_cap, sizeof *w->conns);
	w->free_idx = calloc(w->conn_cap, sizeof *w->free_idx);
	if (w->conns == NULL || w->free_idx == NULL) {
		snprintf(why, URING_WHY_BYTES, "out of memory for %u connection slots", w->conn_cap);
		goto fail;
	}
	for (uint32_t i = 0; i < w->conn_cap; i++)
		w->free_idx[i] = w->conn_cap - 1 - i;
	w->free_top = w->conn_cap;

	w->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (w->wake_fd < 0) {
		snprintf(why, URING_WHY_BYTES, "eventfd: %s", strerror(errno));
		goto fail;
	}
	w->listen_fd = net_listen(listen_addr, LISTEN_BACKLOG, true, why);
	if (w->listen_fd < 0)
		goto fail;

	bufpool_init(&w->pool, buffer_budget_bytes);
	w->iter_ns = monotonic_ns();
	w->now_ms = w->start_ms = w->iter_ns / 1000000u;
	timer_wheel_init(&w->tw, w->now_ms);
	w->accept_backoff.kind = TW_KIND_ACCEPT_BACKOFF;
	w->relay = relay_shard_create(w);
	if (w->relay == NULL) {
		snprintf(why, URING_WHY_BYTES, "out of memory for the registry");
		goto fail;
	}
	return w;

fail:
	if (w->listen_fd >= 0)
		close(w->listen_fd);
	if (w->wake_fd >= 0)
		close(w->wake_fd);
	free(w->bufs);
	free(w->conns);
	free(w->free_idx);
	free(w);
	return NULL;
}

static void populate_buffers(struct worker *w, uint32_t count);
static void publish_buffers(struct worker *w);

/* The ring belongs to the thread that drives it: with SINGLE_ISSUER and a registered
 * ring fd, only the creating task may submit, so this runs on the worker thread. */
static bool worker_ring_init(struct worker *w, char why[URING_WHY_BYTES])
{
	if (uring_setup(&w->ring, RING_ENTRIES, &w->feat, why) < 0)
		return false;
	w->br = uring_setup_buf_ring(&w->ring, RECV_BUFFER_COUNT, RECV_BUFFER_GROUP, why);
	if (w->br == NULL) {
		io_uring_queue_exit(&w->ring);
		return false;
	}
	w->br_populated = 0;
	w->br_unadvanced = 0;
	populate_buffers(w, RECV_BUFFER_COUNT_INITIAL);
	publish_buffers(w);
	STAT_SET(w->stats.recv_buffers, w->br_populated);
	w->ring_ready = true;
	return true;
}

void worker_destroy(struct worker *w)
{
	relay_shard_destroy(w->relay);
	if (w->listen_fd >= 0)
		close(w->listen_fd);
	close(w->wake_fd);
	bufpool_destroy(&w->pool);
	free(w->bufs);
	free(w->conns);
	free(w->free_idx);
	free(w);
}

void worker_stop(struct worker *w)
{
	uint64_t one = 1;
	/* eventfd writes of 8 bytes cannot be partial; EAGAIN only if the counter is
	 * saturated, which already means "stop" is pending. */
	(void)!write(w->wake_fd, &one, sizeof one);
}

/* ------------------------------------------------------------------ ring helpers */

static struct io_uring_sqe *get_sqe(struct worker *w)
{
	return uring_get_sqe(&w->ring);
}

static void arm_accept(struct worker *w)
{
	if (w->accept_armed || w->stopping || w->listen_fd < 0 || tw_node_scheduled(&w->accept_backoff))
		return;
	struct io_uring_sqe *sqe = get_sqe(w);
	io_uring_prep_multishot_accept(sqe, w->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, UD(OP_ACCEPT, 0, 0));
	w->accept_armed = true;
}

static void arm_wake(struct worker *w)
{
	if (w->wake_armed)
		return;
	struct io_uring_sqe *sqe = get_sqe(w);
	io_uring_prep_read(sqe, w->wake_fd, &w->wake_value, sizeof w->wake_value, 0);
	io_uring_sqe_set_data64(sqe, UD(OP_WAKE, 0, 0));
	w->wake_armed = true;
}

static bool conn_reads(const struct conn *c)
{
	return c->state != CONN_FREE && c->state != CONN_DEAD && !c->recv_paused;
}

static void arm_recv(struct worker *w, struct conn *c)
{
	if (c->recv_armed || !conn_reads(c))
		return;
	struct io_uring_sqe *sqe = get_sqe(w);
	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = RECV_BUFFER_GROUP;
	io_uring_sqe_set_data64(sqe, UD(OP_RECV, c->idx, c->gen));
	c->recv_armed = true;
}

static void return_buffer(struct worker *w, unsigned bid)
{
	ASSERT(bid < RECV_BUFFER_COUNT);
	io_uring_buf_ring_add(w->br, w->bufs + (size_t)bid * RECV_BUFFER_BYTES, RECV_BUFFER_BYTES,
			      (unsigned short)bid, io_uring_buf_ring_mask(RECV_BUFFER_COUNT),
			      (int)w->br_unadvanced);
	w->br_unadvanced++;
}

/* Hand buffers [br_populated, count) to the ring (published by publish_buffers). */
static void populate_buffers(struct worker *w, uint32_t count)
{
	ASSERT(count <= RECV_BUFFER_COUNT);
	while (w->br_populated < count)
		return_buffer(w, w->br_populated++);
}

static void publish_buffers(struct worker *w)
{
	/* One starved iteration (a burst: many sockets readable at once) only delays some
	 * receives by an iteration; starvation in RECV_STARVED_ITERATIONS_TO_GROW of the
	 * last RECV_STARVED_WINDOW_ITERATIONS is demand (many connections whose data keeps
	 * arriving together: every other iteration starved is as much demand as every
	 * one), and doubles the ring. Bounded: at most log2(COUNT / COUNT_INITIAL)
	 * growth steps per worker. */
	if ((unsigned)__builtin_popcount(w->br_starved_hist & RECV_STARVED_WINDOW_MASK) >= RECV_STARVED_ITERATIONS_TO_GROW &&
	    w->br_populated < RECV_BUFFER_COUNT) {
		w->br_starved_hist = 0;
		populate_buffers(w, MIN(w->br_populated * 2, RECV_BUFFER_COUNT));
		STAT_SET(w->stats.recv_buffers, w->br_populated);
	}
	w->br_starved_hist <<= 1; /* bit 0 is now the iteration about to run */
	if (w->br_unadvanced) {
		io_uring_buf_ring_advance(w->br, (int)w->br_unadvanced);
		w->br_unadvanced = 0;
	}
}

/* ------------------------------------------------------------------ timers */

static void conn_timer_update(struct worker *w, struct conn *c)
{
	uint64_t d[] = { c->read_deadline_ms, c->write_deadline_ms, c->close_deadline_ms, c->ping_at_ms,
			 c->pong_deadline_ms };
	uint64_t next = 0;
	for (size_t i = 0; i < ARRAY_LEN(d); i++) {
		if (d[i] && (next == 0 || d[i] < next))
			next = d[i];
	}
	if (next == 0)
		timer_wheel_cancel(&w->tw, &c->timer);
	else if (!tw_node_scheduled(&c->timer) || c->timer.deadline_ms != next)
		timer_wheel_schedule(&w->tw, &c->timer, next);
}

void worker_schedule(struct worker *w, struct tw_node *n, uint64_t deadline_ms)
{
	timer_wheel_schedule(&w->tw, n, deadline_ms);
}

void worker_cancel_timer(struct worker *w, struct tw_node *n)
{
	timer_wheel_cancel(&w->tw, n);
}

/* ------------------------------------------------------------------ teardown */

static void mark_dirty(struct worker *w, struct conn *c)
{
	if (c->in_dirty)
		return;
	c->in_dirty = true;
	c->dirty_next = w->dirty_head;
	w->dirty_head = c;
}

/* The relay hears of every upgraded connection's end exactly once, from the loop,
 * never from inside one of its own calls. */
static void report_end(struct worker *w, struct conn *c)
{
	if (c->route == HTTP_ROUTE_NOT_FOUND || c->ended_reported || c->in_ended)
		return;
	c->in_ended = true;
	c->ended_next = w->ended_head;
	w->ended_head = c;
}

static void put_http_buf(struct worker *w, struct conn *c)
{
	if (c->http_buf) {
		bufpool_put(&w->pool, c->http_buf, c->http_cap);
		c->http_buf = NULL;
		c->http_cap = c->http_len = 0;
	}
}

static void put_asm_buf(struct worker *w, struct ws_reader *r)
{
	if (r->asm_buf) {
		bufpool_put(&w->pool, r->asm_buf, r->asm_cap);
		r->asm_buf = NULL;
		r->asm_cap = r->asm_len = 0;
	}
}

/* The pool class a held reader comes from (bufpool_put wants it back). */
static uint32_t ws_reader_pool_bytes(void)
{
	return bufpool_class_bytes(sizeof(struct ws_reader));
}

/* The conn's reader (held only while a frame or message spans receives) and its
 * assembly buffer go back to the pool. */
static void put_reader(struct worker *w, struct conn *c)
{
	if (c->ws) {
		put_asm_buf(w, c->ws);
		bufpool_put(&w->pool, c->ws, ws_reader_pool_bytes());
		c->ws = NULL;
	}
}

static void put_send_ctx(struct worker *w, struct conn *c)
{
	if (c->send) {
		bufpool_put(&w->pool, c->send, c->send->alloc_bytes);
		c->send = NULL;
	}
}

static void release_buffers(struct worker *w, struct conn *c)
{
	put_http_buf(w, c);
	put_reader(w, c);
}

static void conn_outq_clear(struct worker *w, struct conn *c)
{
	if (c->zc_notif_pending)
		return; /* the kernel may still read these bytes; cleared when the slot is freed */
	STAT_SUB(w->stats.outbox_bytes, c->out.bytes);
	outq_clear(&c->out, &w->pool);
}

enum close_class close_class_of(uint16_t code)
{
	if (code == 0 || code == WS_CLOSE_NO_STATUS)
		return CLOSE_CLASS_NO_STATUS;
	if (code == WS_CLOSE_NORMAL)
		return CLOSE_CLASS_NORMAL;
	if (code == WS_CLOSE_GOING_AWAY)
		return CLOSE_CLASS_GOING_AWAY;
	if ((code >= 1002 && code <= 1003) || (code >= 1007 && code <= 1010))
		return CLOSE_CLASS_PROTOCOL;
	if (code >= 3000 && code <= 4999)
		return CLOSE_CLASS_APPLICATION;
	return CLOSE_CLASS_INTERNAL;
}

/* Once per upgraded connection, when its slot is freed. */
static void count_close(struct worker *w, const struct conn *c)
{
	if (c->route == HTTP_ROUTE_NOT_FOUND)
		return;
	enum close_class k = c->close_sent ? close_class_of(c->close_code) : CLOSE_CLASS_ABNORMAL;
	STAT_INC(w->stats.closes[k]);
}

static void conn_maybe_free(struct worker *w, struct conn *c)
{
	if (c->state != CONN_DEAD || c->recv_armed || c->send_inflight || c->in_ended || c->in_dirty)
		return;
	if (c->route != HTTP_ROUTE_NOT_FOUND && !c->ended_reported)
		return;
	timer_wheel_cancel(&w->tw, &c->timer);
	conn_outq_clear(w, c);
	release_buffers(w, c);
	put_send_ctx(w, c);
	count_close(w, c);
	close(c->fd);
	if (c->counted) {
		ASSERT(w->ws_counted > 0);
		w->ws_counted--;
	}
	c->state = CONN_FREE;
	c->gen++;
	ASSERT(w->live > 0);
	w->live--;
	STAT_SET(w->stats.connections_open, w->live);
	w->free_idx[w->free_top++] = c->idx;
}

void conn_abort(struct worker *w, struct conn *c)
{
	if (c->state == CONN_DEAD || c->state == CONN_FREE)
		return;
	report_end(w, c);
	c->state = CONN_DEAD;
	c->read_deadline_ms = c->write_deadline_ms = c->close_deadline_ms = 0;
	c->ping_at_ms = c->pong_deadline_ms = 0;
	timer_wheel_cancel(&w->tw, &c->timer);
	/* Wakes the multishot recv (it completes with 0) and fails an in-flight send, so
	 * the slot can be freed once both completions are in. */
	shutdown(c->fd, SHUT_RDWR);
	conn_outq_clear(w, c);
	conn_maybe_free(w, c);
}

/* Flush what is queued, then FIN; discard input until the peer's EOF (bounded). */
static void conn_drain(struct worker *w, struct conn *c)
{
	if (c->state == CONN_DEAD || c->state == CONN_DRAINING)
		return;
	if (c->state == CONN_WS_OPEN || c->state == CONN_WS_CLOSING)
		report_end(w, c);
	c->state = CONN_DRAINING;
	c->read_deadline_ms = 0;
	c->ping_at_ms = c->pong_deadline_ms = 0;
	c->close_deadline_ms = w->now_ms + WS_CLOSE_HANDSHAKE_TIMEOUT_MS;
	c->recv_paused = false;
	release_buffers(w, c);
	if (outq_empty(&c->out) && !c->send_inflight) {
		shutdown(c->fd, SHUT_WR);
		c->wr_shut = true;
	}
	arm_recv(w, c);
	conn_timer_update(w, c);
}

/* ------------------------------------------------------------------ sending */

static bool conn_queue(struct worker *w, struct conn *c, const struct iovec *parts, size_t n)
{
	uint64_t before = c->out.bytes;
	if (!outq_append(&c->out, &w->pool, parts, n))
		return false;
	STAT_ADD(w->stats.outbox_bytes, c->out.bytes - before);
	if (c->write_deadline_ms == 0) {
		c->write_deadline_ms = w->now_ms + WS_WRITE_TIMEOUT_MS;
		conn_timer_update(w, c);
	}
	mark_dirty(w, c);
	return true;
}

static bool conn_queue_bytes(struct worker *w, struct conn *c, const void *p, size_t n)
{
	struct iovec iov = { .iov_base = (void *)p, .iov_len = n };
	return conn_queue(w, c, &iov, 1);
}

static bool queue_ws_frame(struct worker *w, struct conn *c, uint8_t opcode, const struct iovec *parts,
			   size_t nparts)
{
	struct iovec iov[8];
	uint8_t hdr[WS_FRAME_HEADER_BYTES_MAX];
	uint64_t len = 0;
	ASSERT(nparts + 1 <= ARRAY_LEN(iov));
	for (size_t i = 0; i < nparts; i++) {
		len += parts[i].iov_len;
		iov[i + 1] = parts[i];
	}
	iov[0].iov_base = hdr;
	iov[0].iov_len = ws_frame_header_encode(hdr, true, opcode, len, NULL);
	return conn_queue(w, c, iov, nparts + 1);
}

bool conn_ws_send_text(struct worker *w, struct conn *c, const struct iovec *parts, size_t nparts, bool counted)
{
	if (c->state != CONN_WS_OPEN)
		return false;
	if (!queue_ws_frame(w, c, WS_OP_TEXT, parts, nparts))
		return false;
	if (counted) {
		outq_mark_item(&c->out);
		c->items_pending++;
		if (c->route == HTTP_ROUTE_SERVER) {
			/* a phone frame for this binary, received in this iteration */
			if (c->lat_frames == 0)
				c->lat_first_ns = w->iter_ns;
			c->lat_last_ns = w->iter_ns;
			c->lat_frames++;
		}
	}
	return true;
}

bool conn_ws_ping(struct worker *w, struct conn *c, const void *payload, size_t len)
{
	if (c->state != CONN_WS_OPEN || len > WS_CONTROL_PAYLOAD_BYTES_MAX)
		return false;
	struct iovec iov = { .iov_base = (void *)payload, .iov_len = len };
	return queue_ws_frame(w, c, WS_OP_PING, &iov, 1);
}

static void queue_close_frame(struct worker *w, struct conn *c, uint16_t code, const char *reason)
{
	uint8_t payload[WS_CONTROL_PAYLOAD_BYTES_MAX];
	size_t n = ws_close_payload_encode(payload, code, reason, reason ? strlen(reason) : 0);
	struct iovec iov = { .iov_base = payload, .iov_len = n };
	if (!queue_ws_frame(w, c, WS_OP_CLOSE, &iov, 1)) {
		conn_abort(w, c);
		return;
	}
	if (!c->close_sent) {
		c->close_sent = true;
		c->close_code = code;
	}
}

void conn_ws_close(struct worker *w, struct conn *c, uint16_t code, const char *reason)
{
	if (c->state != CONN_WS_OPEN)
		return; /* first close wins */
	if (!ws_close_code_is_sendable(code))
		code = WS_CLOSE_INTERNAL_ERROR;
	report_end(w, c);
	c->state = CONN_WS_CLOSING;
	c->ping_at_ms = c->pong_deadline_ms = 0;
	c->close_deadline_ms = w->now_ms + WS_CLOSE_HANDSHAKE_TIMEOUT_MS;
	c->recv_paused = false;
	queue_close_frame(w, c, code, reason);
	if (c->state == CONN_WS_CLOSING) {
		arm_recv(w, c);
		conn_timer_update(w, c);
	}
}

/*
 * Phone frame -> binary latency, observed when the send carrying the frames is
 * submitted. Frames received in one iteration share its timestamp, so a send that
 * carries frames of one iteration (the common case) is recorded exactly; when it
 * carries frames of several (a send was in flight), the oldest and newest are exact
 * and those between are recorded at the midpoint. A send capped at OUTQ_IOV_MAX
 * segments records the frames left for the next send one send early.
 */
static void record_p2b_latency(struct worker *w, struct conn *c)
{
	if (w->flush_ns == 0)
		w->flush_ns = monotonic_ns();
	uint64_t now = w->flush_ns;
	uint64_t oldest = now > c->lat_first_ns ? now - c->lat_first_ns : 0;
	uint64_t newest = now > c->lat_last_ns ? now - c->lat_last_ns : 0;
	struct latency_hist *h = &w->stats.p2b_latency;
	latency_observe(h, oldest, 1);
	if (c->lat_frames > 1)
		latency_observe(h, newest, 1);
	if (c->lat_frames > 2)
		latency_observe(h, (oldest + newest) / 2, c->lat_frames - 2);
	c->lat_frames = 0;
}

static void submit_send(struct worker *w, struct conn *c)
{
	struct iovec iov[OUTQ_IOV_MAX];
	size_t n = outq_iov(&c->out, iov, OUTQ_IOV_MAX);
	ASSERT(n > 0);
	size_t total = 0;
	for (size_t i = 0; i < n; i++)
		total += iov[i].iov_len;
	bool zc = w->cfg->zerocopy_min_bytes && w->feat.send_zc && total >= w->cfg->zerocopy_min_bytes;
	struct io_uring_sqe *sqe;
	if (n == 1) {
		sqe = get_sqe(w);
		if (zc)
			io_uring_prep_send_zc(sqe, c->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL,
					      IORING_SEND_ZC_REPORT_USAGE);
		else
			io_uring_prep_send(sqe, c->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
	} else {
		if (c->send == NULL) {
			uint32_t cap;
			c->send = bufpool_get(&w->pool, sizeof *c->send, &cap);
			if (c->send == NULL) {
				conn_abort(w, c);
				return;
			}
			c->send->alloc_bytes = cap;
		}
		memcpy(c->send->iov, iov, n * sizeof iov[0]);
		c->send->msg = (struct msghdr){ .msg_iov = c->send->iov, .msg_iovlen = n };
		sqe = get_sqe(w);
		if (zc) {
			io_uring_prep_sendmsg_zc(sqe, c->fd, &c->send->msg, MSG_NOSIGNAL);
			sqe->ioprio |= IORING_SEND_ZC_REPORT_USAGE;
		} else {
			io_uring_prep_sendmsg(sqe, c->fd, &c->send->msg, MSG_NOSIGNAL);
		}
	}
	if (zc)
		STAT_INC(w->stats.zc_sends);
	io_uring_sqe_set_data64(sqe, UD(OP_SEND, c->idx, c->gen));
	c->send_inflight = true;
	STAT_INC(w->stats.sends);
	if (c->lat_frames)
		record_p2b_latency(w, c);
}

static void flush_dirty(struct worker *w)
{
	w->flush_ns = 0;
	/* Bounded: each connection is on the list at most once. */
	while (w->dirty_head != NULL) {
		struct conn *c = w->dirty_head;
		w->dirty_head = c->dirty_next;
		c->in_dirty = false;
		if (c->state != CONN_DEAD && c->state != CONN_FREE && !c->send_inflight && !outq_empty(&c->out))
			submit_send(w, c);
		conn_maybe_free(w, c);
	}
}

static void on_send(struct worker *w, struct conn *c, int res)
{
	c->send_inflight = false;
	if (c->state == CONN_DEAD) {
		conn_maybe_free(w, c);
		return;
	}
	if (res <= 0) {
		conn_abort(w, c);
		return;
	}
	STAT_ADD(w->stats.bytes_out, (uint64_t)res);
	uint64_t before = c->out.bytes;
	uint32_t items = outq_consume(&c->out, &w->pool, (size_t)res);
	STAT_SUB(w->stats.outbox_bytes, before - c->out.bytes);
	if (items) {
		ASSERT(c->items_pending >= items);
		c->items_pending -= items;
		if (c->route != HTTP_ROUTE_NOT_FOUND)
			relay_items_written(w, c, items);
	}
	if (outq_empty(&c->out)) {
		c->write_deadline_ms = 0;
		put_send_ctx(w, c);
		if (c->state == CONN_DRAINING && !c->wr_shut) {
			shutdown(c->fd, SHUT_WR);
			c->wr_shut = true;
		}
	} else {
		c->write_deadline_ms = w->now_ms + WS_WRITE_TIMEOUT_MS;
		mark_dirty(w, c);
	}
	conn_timer_update(w, c);
}

/*
 * A send_zc completes twice: the result (IORING_CQE_F_MORE set), then a notification
 * (IORING_CQE_F_NOTIF) once the kernel no longer references the bytes. The outbox
 * segments are released, and the next send submitted, only after the notification:
 * until then retransmissions may read them.
 */
static void on_send_cqe(struct worker *w, struct conn *c, const struct io_uring_cqe *cqe)
{
	if (cqe->flags & IORING_CQE_F_NOTIF) {
		ASSERT(c->zc_notif_pending);
		c->zc_notif_pending = false;
		if ((uint32_t)cqe->res & IORING_NOTIF_USAGE_ZC_COPIED)
			STAT_INC(w->stats.zc_copied);
		on_send(w, c, c->zc_res);
		return;
	}
	if (cqe->flags & IORING_CQE_F_MORE) {
		c->zc_notif_pending = true;
		c->zc_res = cqe->res;
		return; /* send_inflight stays set: the buffers are still the kernel's */
	}
	on_send(w, c, cqe->res);
}

/* ------------------------------------------------------------------ HTTP phase */

static void respond(struct worker *w, struct conn *c, const char *buf, size_t n, bool close)
{
	if (!conn_queue_bytes(w, c, buf, n)) {
		conn_abort(w, c);
		return;
	}
	if (close)
		conn_drain(w, c);
}

static void respond_canned(struct worker *w, struct conn *c, enum http_canned which, bool close)
{
	char buf[HTTP_RESPONSE_BYTES_MAX];
	respond(w, c, buf, http_write_canned(buf, sizeof buf, which, close), close);
}

static void respond_healthz(struct worker *w, struct conn *c, bool close)
{
	uint64_t binaries = 0, phones = 0;
	relay_counts(w, &binaries, &phones);
	struct healthz h = {
		.version = PYRELAY_VERSION,
		.connected_binaries = binaries,
		.connected_phones = phones,
		.uptime_seconds = (w->now_ms - w->start_ms) / 1000u,
	};
	char buf[HTTP_RESPONSE_BYTES_MAX];
	respond(w, c, buf, http_write_healthz(buf, sizeof buf, &h, close), close);
}

static void ws_input(struct worker *w, struct conn *c, uint8_t *p, size_t n);

/* One complete request head. Returns true when the connection switched to WebSocket. */
static bool http_request(struct worker *w, struct conn *c, const struct http_request *req)
{
	bool close = http_request_wants_close(req) || http_request_has_body(req) || w->stopping ||
		     ++c->requests >= HTTP_KEEPALIVE_REQUESTS_MAX;
	enum http_route route = http_route_of(req->path);
	switch (route) {
	case HTTP_ROUTE_HEALTHZ:
		respond_healthz(w, c, close);
		return false;
	case HTTP_ROUTE_NOT_FOUND:
		respond_canned(w, c, HTTP_CANNED_NOT_FOUND, close);
		return false;
	case HTTP_ROUTE_SERVER:
	case HTTP_ROUTE_CLIENT:
		break;
	}
	int verdict = relay_admit(w, c, route, req);
	if (verdict >= 0) {
		respond_canned(w, c, (enum http_canned)verdict, close);
		return false;
	}
	if (!http_required_headers_ok(req, route)) {
		relay_rejected_headers(w, c, route);
		respond_canned(w, c, HTTP_CANNED_EMPTY_400, close);
		return false;
	}
	struct span key;
	switch (ws_upgrade_check(req, &key)) {
	case WS_UPGRADE_OK:
		break;
	case WS_UPGRADE_BAD_METHOD:
		respond_canned(w, c, HTTP_CANNED_METHOD, true);
		return false;
	case WS_UPGRADE_NOT_UPGRADE:
		respond_canned(w, c, HTTP_CANNED_UPGRADE_REQUIRED, true);
		return false;
	case WS_UPGRADE_BAD_VERSION:
		respond_canned(w, c, HTTP_CANNED_WS_VERSION, true);
		return false;
	case WS_UPGRADE_BAD_KEY:
		respond_canned(w, c, HTTP_CANNED_WS_BAD_KEY, true);
		return false;
	}
	char accept[WS_ACCEPT_KEY_LEN + 1];
	bool ok = ws_handshake_accept(key, accept);
	ASSERT(ok);
	char buf[HTTP_RESPONSE_BYTES_MAX];
	size_t n = http_write_switching(buf, sizeof buf, accept);
	if (!conn_queue_bytes(w, c, buf, n)) {
		conn_abort(w, c);
		return false;
	}
	c->state = CONN_WS_OPEN;
	c->route = (uint8_t)route;
	c->read_deadline_ms = 0;
	ASSERT(c->ws == NULL); /* a fresh reader starts with the first input (ws_input) */
	conn_timer_update(w, c);
	relay_open(w, c, route, req);
	return true;
}

/* Replace *buf (NULL or a pool buffer of *cap bytes whose first `keep` bytes matter)
 * with a pool buffer of at least `want` bytes holding those bytes. False, with *buf
 * untouched, when the pool refuses. */
static bool pool_regrow(struct worker *w, uint8_t **buf, uint32_t *cap, uint32_t keep, size_t want)
{
	uint32_t ncap;
	uint8_t *nb = bufpool_get(&w->pool, want, &ncap);
	if (nb == NULL)
		return false;
	if (*buf) {
		memcpy(nb, *buf, keep);
		bufpool_put(&w->pool, *buf, *cap);
	}
	*buf = nb;
	*cap = ncap;
	return true;
}

/* Make room for `need` head bytes: the buffer starts at HTTP_HEAD_BUF_INITIAL_BYTES
 * (an upgrade request is a few hundred bytes) and doubles up to HTTP_HEAD_BYTES_MAX, so
 * the handshakes in flight hold kilobytes, not 16 KiB each. */
static bool grow_http_buf(struct worker *w, struct conn *c, size_t need)
{
	ASSERT(need <= HTTP_HEAD_BYTES_MAX);
	size_t want = MAX(MAX(need, (size_t)c->http_cap * 2), (size_t)HTTP_HEAD_BUF_INITIAL_BYTES);
	want = MIN(want, (size_t)HTTP_HEAD_BYTES_MAX);
	return pool_regrow(w, &c->http_buf, &c->http_cap, c->http_len, want);
}

static void http_input(struct worker *w, struct conn *c, uint8_t *p, size_t n)
{
	/* Bounded: each pass either consumes input, answers a request, or stops. */
	while (c->state == CONN_HTTP) {
		if (c->http_len == 0 && n > 0)
			c->read_deadline_ms = w->now_ms + HTTP_HEADER_READ_TIMEOUT_MS;
		size_t room = HTTP_HEAD_BYTES_MAX - c->http_len;
		size_t take = MIN(n, room);
		if (c->http_len + take > c->http_cap && !grow_http_buf(w, c, c->http_len + take)) {
			conn_abort(w, c);
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
		enum http_parse_status st = http_parse_request(c->http_buf, c->http_len, &req);
		if (st == HTTP_PARSE_INCOMPLETE) {
			if (c->http_len < HTTP_HEAD_BYTES_MAX)
				break; /* wait for more */
			st = HTTP_PARSE_TOO_LARGE;
		}
		if (st != HTTP_PARSE_OK) {
			respond_canned(w, c,
				       st == HTTP_PARSE_TOO_LARGE   ? HTTP_CANNED_TOO_LARGE
				       : st == HTTP_PARSE_BAD_VERSION ? HTTP_CANNED_BAD_VERSION
								      : HTTP_CANNED_BAD_REQUEST,
				       true);
			return;
		}
		uint32_t head = req.head_bytes;
		bool upgraded = http_request(w, c, &req);
		if (upgraded) {
			/* Bytes after the upgrade request are the first WebSocket frames. The
			 * reader unmasks in place; http_buf is ours, so that is fine. */
			uint8_t *buf = c->http_buf;
			uint32_t cap = c->http_cap, len = c->http_len;
			c->http_buf = NULL;
			c->http_cap = c->http_len = 0;
			if (len > head && c->state == CONN_WS_OPEN)
				ws_input(w, c, buf + head, len - head);
			bufpool_put(&w->pool, buf, cap);
			if (n > 0 && (c->state == CONN_WS_OPEN || c->state == CONN_WS_CLOSING))
				ws_input(w, c, p, n);
			return;
		}
		if (c->state != CONN_HTTP)
			return;
		/* Keep-alive: the next pipelined request starts right after this head. */
		memmove(c->http_buf, c->http_buf + head, c->http_len - head);
		c->http_len -= head;
		c->read_deadline_ms = c->http_len ? w->now_ms + HTTP_HEADER_READ_TIMEOUT_MS
						  : w->now_ms + HTTP_IDLE_TIMEOUT_MS;
		conn_timer_update(w, c);
	}
	if (c->state == CONN_HTTP && c->http_len == 0)
		put_http_buf(w, c); /* between keep-alive requests an idle connection holds nothing */
	if (c->state == CONN_HTTP)
		conn_timer_update(w, c);
}

/* ------------------------------------------------------------------ WebSocket phase */

static bool grow_asm(struct worker *w, struct ws_reader *r, size_t need)
{
	/* Geometric growth keeps assembling a message linear in its size. */
	size_t want = MAX(need, (size_t)r->asm_cap * 2);
	want = MIN(want, (size_t)WS_MESSAGE_BYTES_MAX);
	want = MAX(want, need);
	if (want > BUFPOOL_CLASS_MAX_BYTES)
		return false;
	return pool_regrow(w, &r->asm_buf, &r->asm_cap, r->asm_len, want);
}

static void release_asm_if_idle(struct worker *w, struct ws_reader *r)
{
	if (!ws_reader_buffer_in_use(r))
		put_asm_buf(w, r);
}

static void heartbeat_pong(struct worker *w, struct conn *c, struct span payload)
{
	if (c->pong_deadline_ms == 0)
		return;
	char expect[16];
	int n = snprintf(expect, sizeof expect, "%u", c->hb_seq);
	if (payload.len != (size_t)n || memcmp(payload.ptr, expect, (size_t)n) != 0)
		return;
	c->pong_deadline_ms = 0;
	uint64_t next = c->ping_sent_ms + w->cfg->heartbeat_interval_ms;
	c->ping_at_ms = next > w->now_ms ? next : w->now_ms + 1;
	conn_timer_update(w, c);
}

static bool ws_reads(const struct conn *c)
{
	return c->state == CONN_WS_OPEN || c->state == CONN_WS_CLOSING;
}

static void ws_consume(struct worker *w, struct conn *c, struct ws_reader *r, uint8_t *p, size_t n)
{
	/* Bounded: every iteration consumes input or yields one event; events that
	 * consume nothing (NEED_SPACE) are followed by progress or a teardown. */
	for (;;) {
		if (!ws_reads(c))
			return;
		size_t used = 0;
		struct ws_event ev = ws_reader_next(r, p, n, &used);
		ASSERT(used <= n);
		p += used;
		n -= used;
		switch (ev.kind) {
		case WS_EV_NEED_MORE:
			release_asm_if_idle(w, r);
			return;
		case WS_EV_MESSAGE_BEGIN:
			c->read_deadline_ms = w->now_ms + WS_MESSAGE_READ_TIMEOUT_MS;
			conn_timer_update(w, c);
			break;
		case WS_EV_MESSAGE:
			c->read_deadline_ms = 0;
			conn_timer_update(w, c);
			if (c->state == CONN_WS_OPEN)
				relay_message(w, c, ev.opcode, ev.data);
			break;
		case WS_EV_NEED_SPACE:
			if (!grow_asm(w, r, ev.need)) {
				conn_ws_close(w, c, WS_CLOSE_INTERNAL_ERROR, "");
				conn_drain(w, c);
				return;
			}
			break;
		case WS_EV_PING:
			if (c->state == CONN_WS_OPEN) {
				struct iovec iov = { .iov_base = (void *)ev.data.ptr, .iov_len = ev.data.len };
				if (!queue_ws_frame(w, c, WS_OP_PONG, &iov, 1))
					conn_abort(w, c);
			}
			break;
		case WS_EV_PONG:
			heartbeat_pong(w, c, ev.data);
			if (c->state == CONN_WS_OPEN)
				relay_pong(w, c, ev.data);
			break;
		case WS_EV_CLOSE:
			if (c->state == CONN_WS_OPEN) {
				/* Peer-initiated: echo its status, then the server closes TCP. */
				c->peer_close_code = ev.close_code;
				report_end(w, c);
				queue_close_frame(w, c, ev.close_code, "");
			}
			conn_drain(w, c);
			return;
		case WS_EV_ERROR:
			if (c->state == CONN_WS_OPEN) {
				report_end(w, c);
				queue_close_frame(w, c, ev.close_code, "");
			}
			conn_drain(w, c);
			return;
		}
	}
}

/*
 * Reader state costs memory only while a frame or a message spans receives: a
 * connection at a frame boundary (ws_reader_at_rest, the idle case and the common one)
 * holds none and starts from a fresh reader on the stack; otherwise the reader moves
 * into a pool buffer until it is at rest again.
 */
static void ws_input(struct worker *w, struct conn *c, uint8_t *p, size_t n)
{
	struct ws_reader fresh;
	struct ws_reader *r = c->ws;
	if (r == NULL) {
		ws_reader_init(&fresh, WS_MESSAGE_BYTES_MAX);
		r = &fresh;
	}
	ws_consume(w, c, r, p, n);
	/* Not reading any more: a torn-down connection may be freed already (its
	 * buffers, c->ws included, returned), so r is looked at only while it reads. */
	bool keep = ws_reads(c) && !ws_reader_at_rest(r);
	if (!keep) {
		if (r == &fresh)
			put_asm_buf(w, r);
		else
			put_reader(w, c); /* no-op if the teardown returned it */
		return;
	}
	if (r != &fresh)
		return;
	uint32_t cap;
	struct ws_reader *held = bufpool_get(&w->pool, sizeof *held, &cap);
	if (held == NULL) {
		put_asm_buf(w, r);
		conn_abort(w, c);
		return;
	}
	ASSERT(cap == ws_reader_pool_bytes());
	*held = fresh;
	c->ws = held;
}

/* ------------------------------------------------------------------ completions */

static void on_accept(struct worker *w, struct io_uring_cqe *cqe)
{
	if (!(cqe->flags & IORING_CQE_F_MORE))
		w->accept_armed = false;
	int fd = cqe->res;
	if (fd < 0) {
		if (fd == -ECANCELED || fd == -EAGAIN || fd == -ECONNABORTED || fd == -EINTR)
			return;
		/* EMFILE/ENFILE/ENOMEM repeat at once if re-armed at once: back off, and log
		 * at most once per back-off so a descriptor storm cannot flood stderr. */
		STAT_INC(w->stats.accept_errors);
		if (!tw_node_scheduled(&w->accept_backoff)) {
			LOG_WARN("accept failed", KV_STR("err", strerror(-fd)));
			if (w->accept_armed) {
				struct io_uring_sqe *sqe = get_sqe(w);
				io_uring_prep_cancel64(sqe, UD(OP_ACCEPT, 0, 0), 0);
				io_uring_sqe_set_data64(sqe, UD(OP_IGNORE, 0, 0));
			}
			timer_wheel_schedule(&w->tw, &w->accept_backoff, w->now_ms + ACCEPT_BACKOFF_MS);
		}
		return;
	}
	STAT_INC(w->stats.accepts);
	if (w->free_top == 0 || w->stopping) {
		/* Pool exhausted: refuse at once rather than queue unbounded state. */
		STAT_INC(w->stats.accept_pool_full);
		close(fd);
		return;
	}
	uint32_t idx = w->free_idx[--w->free_top];
	struct conn *c = &w->conns[idx];
	uint32_t gen = c->gen;
	*c = (struct conn){ .fd = fd, .idx = idx, .gen = gen, .state = CONN_HTTP };
	c->timer.kind = TW_KIND_CONN;
	w->live++;
	STAT_SET(w->stats.connections_open, w->live);

	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET) {
			struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
			c->remote.family = AF_INET;
			memcpy(c->remote.bytes, &sin->sin_addr, 4);
			c->remote.port = ntohs(sin->sin_port);
		} else if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
			c->remote.family = AF_INET6;
			memcpy(c->remote.bytes, &sin6->sin6_addr, 16);
			c->remote.port = ntohs(sin6->sin6_port);
		}
	}
	c->read_deadline_ms = w->now_ms + HTTP_HEADER_READ_TIMEOUT_MS;
	conn_timer_update(w, c);
	arm_recv(w, c);
}

static void conn_input(struct worker *w, struct conn *c, uint8_t *p, size_t n)
{
	STAT_ADD(w->stats.bytes_in, n);
	switch (c->state) {
	case CONN_HTTP:
		http_input(w, c, p, n);
		break;
	case CONN_WS_OPEN:
	case CONN_WS_CLOSING:
		ws_input(w, c, p, n);
		break;
	default:
		break; /* draining: input is discarded */
	}
}

static void on_recv(struct worker *w, struct conn *c, struct io_uring_cqe *cqe)
{
	if (!(cqe->flags & IORING_CQE_F_MORE))
		c->recv_armed = false;
	int res = cqe->res;
	if (res > 0) {
		ASSERT(cqe->flags & IORING_CQE_F_BUFFER);
		unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
		conn_input(w, c, w->bufs + (size_t)bid * RECV_BUFFER_BYTES, (size_t)res);
		return_buffer(w, bid);
	} else if (res == 0) {
		/* EOF. A draining connection was waiting for exactly this. */
		conn_abort(w, c);
	} else if (res == -ENOBUFS) {
		STAT_INC(w->stats.recv_enobufs); /* re-armed below once buffers are back */
		w->br_starved_hist |= 1u;
	} else if (res != -ECANCELED) {
		conn_abort(w, c);
	}
	if (!c->recv_armed && conn_reads(c))
		arm_recv(w, c);
	conn_maybe_free(w, c);
}

static void begin_shutdown(struct worker *w)
{
	if (w->stopping)
		return;
	w->stopping = true;
	w->drain_deadline_ms = w->now_ms + SHUTDOWN_DRAIN_TIMEOUT_MS;
	/* Stop accepting: closing the socket ends the multishot accept; new dials are
	 * refused by the kernel from here on. */
	if (w->listen_fd >= 0) {
		struct io_uring_sqe *sqe = get_sqe(w);
		io_uring_prep_cancel64(sqe, UD(OP_ACCEPT, 0, 0), 0);
		io_uring_sqe_set_data64(sqe, UD(OP_IGNORE, 0, 0));
		close(w->listen_fd);
		w->listen_fd = -1;
	}
	relay_shutdown(w);
	/* Connections that never upgraded have no request in progress worth waiting for
	 * once their response is queued: close the idle ones now. */
	for (uint32_t i = 0; i < w->conn_cap; i++) {
		struct conn *c = &w->conns[i];
		if (c->state == CONN_HTTP)
			conn_drain(w, c);
	}
}

static struct conn *conn_of(struct worker *w, uint64_t ud)
{
	uint32_t idx = UD_IDX(ud);
	ASSERT(idx < w->conn_cap);
	struct conn *c = &w->conns[idx];
	ASSERT(c->state != CONN_FREE && (c->gen & 0xffffffu) == UD_GEN(ud));
	return c;
}

static void run_ended(struct worker *w)
{
	/* Bounded by the number of connections: each is reported once. */
	while (w->ended_head != NULL) {
		struct conn *c = w->ended_head;
		w->ended_head = c->ended_next;
		c->in_ended = false;
		c->ended_reported = true;
		relay_end(w, c);
		/* §4.7: the cap slot is held until the handler returns, i.e. until the
		 * WebSocket ended, not until the TCP drain that follows finishes. */
		if (c->counted) {
			c->counted = false;
			ASSERT(w->ws_counted > 0);
			w->ws_counted--;
		}
		conn_maybe_free(w, c);
	}
}

static void handle_cqe(struct worker *w, struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	switch (UD_OP(ud)) {
	case OP_ACCEPT:
		on_accept(w, cqe);
		break;
	case OP_RECV: {
		struct conn *c = conn_of(w, ud);
		on_recv(w, c, cqe);
		break;
	}
	case OP_SEND:
		on_send_cqe(w, conn_of(w, ud), cqe);
		break;
	case OP_WAKE:
		w->wake_armed = false;
		begin_shutdown(w);
		break;
	case OP_IGNORE:
		break;
	default:
		ASSERT(!"unknown completion");
	}
	run_ended(w);
}

static void conn_timer_fire(struct worker *w, struct conn *c)
{
	uint64_t now = w->now_ms;
	if (c->close_deadline_ms && now >= c->close_deadline_ms) {
		conn_abort(w, c); /* close handshake or drain took too long */
		return;
	}
	if (c->write_deadline_ms && now >= c->write_deadline_ms) {
		conn_abort(w, c); /* reference §5.4: no write progress for 10 s */
		return;
	}
	if (c->read_deadline_ms && now >= c->read_deadline_ms) {
		/* HTTP header/idle timeout, or a WebSocket message that did not finish within
		 * 30 s of its first header (§5.3): torn down without a close frame. */
		conn_abort(w, c);
		return;
	}
	if (c->pong_deadline_ms && now >= c->pong_deadline_ms) {
		c->pong_deadline_ms = 0;
		conn_ws_close(w, c, WS_CLOSE_INTERNAL_ERROR, "heartbeat timeout");
		return;
	}
	if (c->ping_at_ms && now >= c->ping_at_ms) {
		char payload[16];
		c->hb_seq++;
		int n = snprintf(payload, sizeof payload, "%u", c->hb_seq);
		c->ping_at_ms = 0;
		if (conn_ws_ping(w, c, payload, (size_t)n)) {
			c->ping_sent_ms = now;
			c->pong_deadline_ms = now + w->cfg->heartbeat_timeout_ms;
		} else {
			conn_ws_close(w, c, WS_CLOSE_INTERNAL_ERROR, "heartbeat timeout");
			return;
		}
	}
	conn_timer_update(w, c);
}

static void on_timer(struct tw_node *n, void *ctx)
{
	struct worker *w = ctx;
	if (n->kind == TW_KIND_CONN)
		conn_timer_fire(w, CONTAINER_OF(n, struct conn, timer));
	else if (n->kind == TW_KIND_ACCEPT_BACKOFF)
		arm_accept(w);
	else
		relay_timer(w, n);
	run_ended(w);
}

void conn_heartbeat_start(struct worker *w, struct conn *c)
{
	if (c->state != CONN_WS_OPEN)
		return;
	c->ping_at_ms = w->now_ms + w->cfg->heartbeat_interval_ms;
	conn_timer_update(w, c);
}

void conn_pause_recv(struct worker *w, struct conn *c)
{
	if (c->recv_paused || c->state != CONN_WS_OPEN)
		return;
	c->recv_paused = true;
	if (c->recv_armed) {
		struct io_uring_sqe *sqe = get_sqe(w);
		io_uring_prep_cancel64(sqe, UD(OP_RECV, c->idx, c->gen), 0);
		io_uring_sqe_set_data64(sqe, UD(OP_IGNORE, 0, 0));
	}
}

void conn_resume_recv(struct worker *w, struct conn *c)
{
	if (!c->recv_paused)
		return;
	c->recv_paused = false;
	arm_recv(w, c);
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

/* ------------------------------------------------------------------ the loop */

static int worker_loop(struct worker *w, char why[URING_WHY_BYTES]);

int worker_run(struct worker *w, char why[URING_WHY_BYTES])
{
	if (!worker_ring_init(w, why))
		return WORKER_EXIT_FATAL;
	int result = worker_loop(w, why);
	uring_free_buf_ring(&w->ring, w->br, RECV_BUFFER_COUNT, RECV_BUFFER_GROUP);
	io_uring_queue_exit(&w->ring);
	w->ring_ready = false;
	return result;
}

static int worker_loop(struct worker *w, char why[URING_WHY_BYTES])
{
	arm_wake(w);
	arm_accept(w);
	for (;;) {
		flush_dirty(w);
		publish_buffers(w);
		if (!w->stopping)
			arm_accept(w);
		if (w->stopping) {
			if (w->live == 0)
				break;
			if (w->now_ms >= w->drain_deadline_ms) {
				w->drain_incomplete = true;
				for (uint32_t i = 0; i < w->conn_cap; i++)
					conn_abort(w, &w->conns[i]);
				run_ended(w);
				flush_dirty(w);
				if (w->live == 0)
					break;
			}
		}
		int64_t wait_ms = timer_wheel_wait_ms(&w->tw, w->now_ms);
		if (w->stopping && (wait_ms < 0 || (uint64_t)wait_ms > w->drain_deadline_ms - w->now_ms))
			wait_ms = w->now_ms < w->drain_deadline_ms ? (int64_t)(w->drain_deadline_ms - w->now_ms) : 0;
		struct __kernel_timespec ts, *tsp = NULL;
		if (wait_ms >= 0) {
			ts.tv_sec = wait_ms / 1000;
			ts.tv_nsec = (wait_ms % 1000) * 1000000;
			tsp = &ts;
		}
		/* liburing enters the kernel only to submit, or to wait when no completion is
		 * ready yet (and always without EXT_ARG: the timeout is then an SQE). */
		bool enters = !w->feat.ext_arg || io_uring_sq_ready(&w->ring) > 0 || io_uring_cq_ready(&w->ring) == 0;
		struct io_uring_cqe *cqe = NULL;
		int rc = io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, tsp, NULL);
		if (enters)
			STAT_INC(w->stats.enters);
		STAT_INC(w->stats.loop_iterations);
		if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN) {
			/* Not transient: spinning on it would burn a core and flood the log. */
			snprintf(why, URING_WHY_BYTES, "io_uring_enter: %s", strerror(-rc));
			return WORKER_EXIT_FATAL;
		}
		w->iter_ns = monotonic_ns();
		w->now_ms = w->iter_ns / 1000000u;

		unsigned head, seen = 0;
		io_uring_for_each_cqe(&w->ring, head, cqe)
		{
			handle_cqe(w, cqe);
			seen++;
		}
		io_uring_cq_advance(&w->ring, seen);
		STAT_ADD(w->stats.cqes, seen);
		timer_wheel_advance(&w->tw, w->now_ms, on_timer, w);
	}
	return w->drain_incomplete ? WORKER_EXIT_DRAIN_INCOMPLETE : WORKER_EXIT_DRAINED;
}
