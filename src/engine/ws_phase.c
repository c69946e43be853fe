/*
 * ws_phase.c - a connection's WebSocket phase: the start (101, open to the
 * application, early bytes), frames in (ws_reader events: messages to the
 * application, control frames answered here), frames out, the closing handshake and
 * the heartbeat (reference §5.2).
 */
#include "engine/internal.h"

#include <stdio.h>
#include <string.h>

#include "ws/ws_frame.h"

static bool ws_reads(const struct conn *c)
{
	return c->state == CONN_WS_OPEN || c->state == CONN_WS_CLOSING;
}

/* ------------------------------------------------------------------ frames out */

static bool queue_frame(struct worker *w, struct conn *c, uint8_t opcode, const struct iovec *parts, size_t nparts)
{
	struct iovec iov[CONN_SEND_PARTS_MAX + 1];
	uint8_t hdr[WS_FRAME_HEADER_BYTES_MAX];
	uint64_t len = 0;
	ASSERT(nparts <= CONN_SEND_PARTS_MAX);
	for (size_t i = 0; i < nparts; i++) {
		len += parts[i].iov_len;
		iov[i + 1] = parts[i];
	}
	iov[0].iov_base = hdr;
	iov[0].iov_len = ws_frame_header_encode(hdr, true, opcode, len, NULL);
	return send_queue(w, c, iov, nparts + 1);
}

static void queue_close_frame(struct worker *w, struct conn *c, uint16_t code, const char *reason)
{
	uint8_t payload[WS_CONTROL_PAYLOAD_BYTES_MAX];
	size_t n = ws_close_payload_encode(payload, code, reason, reason ? strlen(reason) : 0);
	struct iovec iov = { .iov_base = payload, .iov_len = n };
	if (!queue_frame(w, c, WS_OP_CLOSE, &iov, 1)) {
		conn_note_end(c, CONN_END_NO_MEMORY);
		conn_kill(w, c);
		return;
	}
	if (!c->close_sent) {
		c->close_sent = true;
		c->close_code = code;
	}
}

static void close_frame_first(struct worker *w, struct conn *c, uint16_t code, const char *reason)
{
	if (c->state != CONN_WS_OPEN)
		return; /* first close wins */
	if (!ws_close_code_is_sendable(code))
		code = WS_CLOSE_INTERNAL_ERROR;
	/* The application hears of the end once the counted frames queued before this
	 * close are written (send.c), or the connection is cut, or the peer closes: like
	 * the reference's handler, which returns after its writer delivered or failed, so a
	 * close directive's frame that never reaches the phone is still known to it. */
	if (c->items_pending == 0)
		conn_report_end(w, c);
	conn_move(c, CONN_WS_CLOSING);
	c->ping_at_ms = c->pong_deadline_ms = 0;
	c->close_deadline_ms = w->now_ms + WS_CLOSE_HANDSHAKE_TIMEOUT_MS;
	c->recv_paused = false;
	queue_close_frame(w, c, code, reason);
	if (c->state == CONN_WS_CLOSING) {
		conn_arm_recv(w, c);
		conn_timer_update(w, c);
	}
}

static bool ping(struct worker *w, struct conn *c, const void *payload, size_t len)
{
	if (c->state != CONN_WS_OPEN || len > WS_CONTROL_PAYLOAD_BYTES_MAX)
		return false;
	struct iovec iov = { .iov_base = (void *)payload, .iov_len = len };
	return queue_frame(w, c, WS_OP_PING, &iov, 1);
}

/* A text frame for the application joined c's outbox: count it, time it. */
static void text_queued(struct worker *w, struct conn *c, unsigned flags)
{
	if (flags & CONN_SEND_COUNTED) {
		outq_mark_item(&c->out);
		c->items_pending++;
	}
	if (flags & CONN_SEND_LATENCY) {
		/* received in this iteration: its time is the iteration's */
		if (c->lat_frames == 0)
			c->lat_first_ns = w->iter_ns;
		c->lat_last_ns = w->iter_ns;
		c->lat_frames++;
	}
}

bool conn_ws_send_text(struct worker *w, struct conn_ref ref, const struct iovec *parts, size_t nparts,
		       unsigned flags)
{
	struct conn *c = conn_at(w, ref);
	if (c->state != CONN_WS_OPEN)
		return false;
	if (!queue_frame(w, c, WS_OP_TEXT, parts, nparts))
		return false;
	text_queued(w, c, flags);
	return true;
}

uint8_t *conn_ws_text_reserve(struct worker *w, struct conn_ref ref, size_t len, struct conn_text_resv *r)
{
	struct conn *c = conn_at(w, ref);
	if (c->state != CONN_WS_OPEN)
		return NULL;
	uint8_t hdr[WS_FRAME_HEADER_BYTES_MAX];
	size_t h = ws_frame_header_encode(hdr, true, WS_OP_TEXT, len, NULL);
	if (!outq_reserve(&c->out, &w->pool, h + len, &r->q))
		return NULL;
	memcpy(r->q.ptr, hdr, h);
	r->bytes = h + len;
	return r->q.ptr + h;
}

void conn_ws_text_commit(struct worker *w, struct conn_ref ref, struct conn_text_resv *r, unsigned flags)
{
	struct conn *c = conn_at(w, ref);
	ASSERT(c->state == CONN_WS_OPEN);
	uint64_t before = c->out.bytes;
	outq_commit(&c->out, &r->q, r->bytes);
	send_queued(w, c, before);
	text_queued(w, c, flags);
}

void conn_ws_text_abort(struct worker *w, struct conn_text_resv *r)
{
	outq_abort(&w->pool, &r->q);
}

bool conn_ws_ping(struct worker *w, struct conn_ref ref, const void *payload, size_t len)
{
	return ping(w, conn_at(w, ref), payload, len);
}

void conn_ws_close(struct worker *w, struct conn_ref ref, uint16_t code, const char *reason)
{
	struct conn *c = conn_at(w, ref);
	if (c->state == CONN_WS_OPEN)
		conn_note_end(c, CONN_END_CLOSED);
	close_frame_first(w, c, code, reason);
}

/* ------------------------------------------------------------------ heartbeat */

void conn_heartbeat_start(struct worker *w, struct conn_ref ref)
{
	struct conn *c = conn_at(w, ref);
	if (c->state != CONN_WS_OPEN)
		return;
	if (c->recv_paused) {
		c->hb_suspended = true; /* starts when reading resumes */
		c->hb_awaiting = false;
		return;
	}
	c->ping_at_ms = w->now_ms + w->cfg->heartbeat_interval_ms;
	conn_timer_update(w, c);
}

/* A connection whose reading is paused (its binary is backed up) cannot have its pong
 * read: it is not pinged, and a ping it was sent waits with its deadline. */
void ws_phase_heartbeat_suspend(struct worker *w, struct conn *c)
{
	if (c->ping_at_ms == 0 && c->pong_deadline_ms == 0)
		return; /* no heartbeat running */
	c->hb_suspended = true;
	c->hb_awaiting = c->pong_deadline_ms != 0;
	c->ping_at_ms = c->pong_deadline_ms = 0;
	conn_timer_update(w, c);
}

/* Reading resumes: an unanswered ping gets a whole timeout from now (its pong is read
 * now, behind what waited in the socket); otherwise the next ping is an interval away. */
void ws_phase_heartbeat_resume(struct worker *w, struct conn *c)
{
	if (!c->hb_suspended)
		return;
	c->hb_suspended = false;
	if (c->state != CONN_WS_OPEN)
		return;
	if (c->hb_awaiting)
		c->pong_deadline_ms = w->now_ms + w->cfg->heartbeat_timeout_ms;
	else
		c->ping_at_ms = w->now_ms + w->cfg->heartbeat_interval_ms;
	c->hb_awaiting = false;
	conn_timer_update(w, c);
}

static size_t heartbeat_payload(uint32_t seq, char out[HEARTBEAT_PAYLOAD_BYTES_MAX])
{
	int n = snprintf(out, HEARTBEAT_PAYLOAD_BYTES_MAX, "%u", seq);
	ASSERT(n > 0 && (size_t)n < HEARTBEAT_PAYLOAD_BYTES_MAX);
	return (size_t)n;
}

void ws_phase_heartbeat_due(struct worker *w, struct conn *c)
{
	uint64_t now = w->now_ms;
	if (c->pong_deadline_ms && now >= c->pong_deadline_ms) {
		c->pong_deadline_ms = 0;
		conn_note_end(c, CONN_END_HEARTBEAT);
		close_frame_first(w, c, WS_CLOSE_INTERNAL_ERROR, "heartbeat timeout");
		return;
	}
	ASSERT(c->ping_at_ms && now >= c->ping_at_ms);
	char payload[HEARTBEAT_PAYLOAD_BYTES_MAX];
	c->hb_seq++;
	size_t n = heartbeat_payload(c->hb_seq, payload);
	c->ping_at_ms = 0;
	if (ping(w, c, payload, n)) {
		c->ping_sent_ms = now;
		c->pong_deadline_ms = now + w->cfg->heartbeat_timeout_ms;
	} else {
		conn_note_end(c, CONN_END_HEARTBEAT);
		close_frame_first(w, c, WS_CLOSE_INTERNAL_ERROR, "heartbeat timeout");
	}
}

static void heartbeat_pong(struct worker *w, struct conn *c, struct span payload)
{
	if (c->pong_deadline_ms == 0)
		return;
	char expect[HEARTBEAT_PAYLOAD_BYTES_MAX];
	size_t n = heartbeat_payload(c->hb_seq, expect);
	if (payload.len != n || memcmp(payload.ptr, expect, n) != 0)
		return;
	c->pong_deadline_ms = 0;
	uint64_t next = c->ping_sent_ms + w->cfg->heartbeat_interval_ms;
	/* after a pause the ping may be old: the next one an interval after its pong at most */
	next = MIN(next, w->now_ms + w->cfg->heartbeat_interval_ms);
	c->ping_at_ms = next > w->now_ms ? next : w->now_ms + 1;
	conn_timer_update(w, c);
}

/* ------------------------------------------------------------------ frames in */

static bool grow_asm(struct worker *w, struct ws_reader *r, size_t need)
{
	/* Geometric growth keeps assembling a message linear in its size. */
	size_t want = MAX(need, (size_t)r->asm_cap * 2);
	want = MIN(want, (size_t)WS_MESSAGE_BYTES_MAX);
	want = MAX(want, need);
	if (want > BUFPOOL_CLASS_MAX_BYTES)
		return false;
	return conn_pool_regrow(w, &r->asm_buf, &r->asm_cap, r->asm_len, want);
}

static void release_asm_if_idle(struct worker *w, struct ws_reader *r)
{
	if (!ws_reader_buffer_in_use(r))
		conn_put_asm_buf(w, r);
}

/* The peer's close (echo its status, then the server closes TCP) or a protocol error
 * (close with the reader's code). */
static void close_and_drain(struct worker *w, struct conn *c, uint16_t code, bool peer)
{
	if (c->state == CONN_WS_OPEN) {
		if (peer)
			c->peer_close_code = code;
		conn_report_end(w, c);
		queue_close_frame(w, c, code, "");
	}
	conn_drain(w, c);
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
		if (ev.payload_bytes) {
			STAT_ADD(w->stats.payload_bytes, ev.payload_bytes);
			STAT_ADD(w->stats.utf8_bytes, ev.utf8_bytes);
		}
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
			STAT_INC(w->stats.messages_in);
			c->read_deadline_ms = 0;
			conn_timer_update(w, c);
			if (c->state == CONN_WS_OPEN)
				w->hooks->message(w->app, conn_ref_of(c), ev.opcode, ev.data);
			break;
		case WS_EV_NEED_SPACE:
			if (!grow_asm(w, r, ev.need)) {
				conn_note_end(c, CONN_END_NO_MEMORY);
				close_frame_first(w, c, WS_CLOSE_INTERNAL_ERROR, "");
				conn_drain(w, c);
				return;
			}
			break;
		case WS_EV_PING:
			if (c->state == CONN_WS_OPEN) {
				struct iovec iov = { .iov_base = (void *)ev.data.ptr, .iov_len = ev.data.len };
				if (!queue_frame(w, c, WS_OP_PONG, &iov, 1)) {
					conn_note_end(c, CONN_END_NO_MEMORY);
					conn_kill(w, c);
				}
			}
			break;
		case WS_EV_PONG:
			heartbeat_pong(w, c, ev.data);
			if (c->state == CONN_WS_OPEN)
				w->hooks->pong(w->app, conn_ref_of(c), ev.data);
			break;
		case WS_EV_CLOSE:
			conn_note_end(c, CONN_END_PEER_CLOSE);
			close_and_drain(w, c, ev.close_code, true);
			return;
		case WS_EV_ERROR:
			conn_note_end(c, CONN_END_PROTOCOL);
			close_and_drain(w, c, ev.close_code, false);
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
void ws_phase_input(struct worker *w, struct conn *c, uint8_t *p, size_t n)
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
			conn_put_asm_buf(w, r);
		else
			conn_put_reader(w, c); /* no-op if the teardown returned it */
		return;
	}
	if (r != &fresh)
		return;
	uint32_t cap;
	struct ws_reader *held = bufpool_get(&w->pool, sizeof *held, &cap);
	if (held == NULL) {
		conn_put_asm_buf(w, r);
		conn_note_end(c, CONN_END_NO_MEMORY);
		conn_kill(w, c);
		return;
	}
	ASSERT(cap == conn_reader_pool_bytes());
	*held = fresh;
	c->ws = held;
}

/* ------------------------------------------------------------------ the start */

void ws_phase_start(struct worker *w, struct conn *c, struct upgraded *u)
{
	ASSERT(c->state == CONN_HTTP && c->fd == u->fd && c->http_buf == NULL && c->ws == NULL);
	char buf[HTTP_RESPONSE_BYTES_MAX];
	size_t n = http_write_switching(buf, sizeof buf, u->accept);
	if (!send_queue_bytes(w, c, buf, n)) {
		conn_note_end(c, CONN_END_NO_MEMORY);
		conn_kill(w, c);
		return;
	}
	conn_move(c, CONN_WS_OPEN);
	c->upgraded = true;
	c->read_deadline_ms = 0;
	conn_timer_update(w, c);
	w->hooks->open(w->app, conn_ref_of(c), u);
	/* Bytes after the upgrade request are the first WebSocket frames (the application
	 * may have closed already: a close frame among them still counts). u is ours, so
	 * the reader may unmask them in place. */
	struct span early = upgraded_early(u);
	if (early.len && ws_reads(c))
		ws_phase_input(w, c, (uint8_t *)early.ptr, early.len);
}

void ws_phase_resume(struct worker *w, struct conn *c, struct upgraded *u)
{
	ASSERT(c->state == CONN_HTTP && c->fd == u->fd && c->http_buf == NULL && c->ws == NULL);
	/* The client upgraded with our predecessor; its reader was at rest there, so the
	 * early bytes begin at a frame. */
	conn_move(c, CONN_WS_OPEN);
	c->upgraded = true;
	c->read_deadline_ms = 0;
	conn_timer_update(w, c);
	STAT_INC(w->stats.sessions_resumed);
	w->hooks->resume(w->app, conn_ref_of(c), u);
	/* its early bytes: migrate_resume_release, once every session is registered */
}

void ws_phase_resume_input(struct worker *w, struct conn *c, struct upgraded *u)
{
	struct span early = upgraded_early(u);
	if (early.len && ws_reads(c))
		ws_phase_input(w, c, (uint8_t *)early.ptr, early.len);
}
