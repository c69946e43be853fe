/*
 * send.c - the send path: bytes queued in a connection's outbox leave in one send per
 * connection per loop iteration, with at most one send in flight per connection to
 * keep order. send_submit is the only place bytes leave the engine (the transport
 * seam); large sends may go as send_zc (--zerocopy-min-bytes).
 */
#include "engine/internal.h"

#include <string.h>
#include <sys/socket.h>

#include "core/clock.h"

/* Newer than liburing 2.3's copy of the kernel header (kernel 6.2 ABI). */
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif

/* A sendmsg's header and iovecs, or a TLS connection's ciphertext being sent: they
 * must live until the send completes. Taken from the pool only while needed. */
struct send_ctx {
	struct msghdr msg;
	struct iovec iov[OUTQ_IOV_MAX];
	uint32_t alloc_bytes;
	uint8_t *cipher;      /* TLS: records taken from the TLS state, a pool buffer */
	uint32_t cipher_cap;
	uint32_t cipher_len;
	uint32_t cipher_off;  /* sent so far */
};

static void put_cipher(struct worker *w, struct send_ctx *s)
{
	if (s->cipher) {
		bufpool_put(&w->pool, s->cipher, s->cipher_cap);
		s->cipher = NULL;
		s->cipher_cap = s->cipher_len = s->cipher_off = 0;
	}
}

void send_put_ctx(struct worker *w, struct conn *c)
{
	if (c->send) {
		put_cipher(w, c->send);
		bufpool_put(&w->pool, c->send, c->send->alloc_bytes);
		c->send = NULL;
	}
}

static bool get_ctx(struct worker *w, struct conn *c)
{
	if (c->send)
		return true;
	uint32_t cap;
	c->send = bufpool_get(&w->pool, sizeof *c->send, &cap);
	if (c->send == NULL)
		return false;
	*c->send = (struct send_ctx){ .alloc_bytes = cap };
	return true;
}

void send_mark_dirty(struct worker *w, struct conn *c)
{
	if (c->in_dirty)
		return;
	c->in_dirty = true;
	c->dirty_next = w->dirty_head;
	w->dirty_head = c;
}

bool send_queue(struct worker *w, struct conn *c, const struct iovec *parts, size_t n)
{
	uint64_t before = c->out.bytes;
	if (!outq_append(&c->out, &w->pool, parts, n))
		return false;
	send_queued(w, c, before);
	return true;
}

void send_queued(struct worker *w, struct conn *c, uint64_t before)
{
	STAT_ADD(w->stats.outbox_bytes, c->out.bytes - before);
	if (c->write_deadline_ms == 0) {
		c->write_deadline_ms = w->now_ms + WS_WRITE_TIMEOUT_MS;
		conn_timer_update(w, c);
	}
	send_mark_dirty(w, c);
}

bool send_queue_bytes(struct worker *w, struct conn *c, const void *p, size_t n)
{
	struct iovec iov = { .iov_base = (void *)p, .iov_len = n };
	return send_queue(w, c, &iov, 1);
}

/*
 * Queue-to-send latency of CONN_SEND_LATENCY frames, observed when the send carrying
 * them is submitted. Frames received in one iteration share its timestamp, so a send
 * that carries frames of one iteration (the common case) is recorded exactly; when it
 * carries frames of several (a send was in flight), the oldest and newest are exact
 * and those between are recorded at the midpoint. A send capped at OUTQ_IOV_MAX
 * segments records the frames left for the next send one send early.
 */
static void record_latency(struct worker *w, struct conn *c)
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

/* The outbox bytes the TLS layer took: they leave the outbox now, and the frames among
 * them count as written (their ciphertext is ours to send from here on). */
static void plaintext_taken(struct worker *w, struct conn *c, size_t n)
{
	uint64_t before = c->out.bytes;
	uint32_t items = outq_consume(&c->out, &w->pool, n);
	STAT_SUB(w->stats.outbox_bytes, before - c->out.bytes);
	if (items) {
		ASSERT(c->items_pending >= items);
		c->items_pending -= items;
		if (c->upgraded)
			w->hooks->items_written(w->app, conn_ref_of(c), items);
		if (c->items_pending == 0 && c->state == CONN_WS_CLOSING)
			conn_report_end(w, c); /* the frames queued before its close are out */
	}
}

/*
 * The TLS side of the send seam: encrypt what the outbox holds (as much as the TLS
 * state takes), owe a draining connection its close_notify once the outbox is empty,
 * then send the ciphertext waiting, from one pool buffer that lives until it is sent.
 */
static void tls_submit(struct worker *w, struct conn *c)
{
	if (!get_ctx(w, c)) {
		conn_note_end(c, CONN_END_NO_MEMORY);
		conn_kill(w, c);
		return;
	}
	struct send_ctx *s = c->send;
	if (s->cipher_off == s->cipher_len) {
		put_cipher(w, s);
		/* while kTLS waits for this ciphertext to leave, the plaintext waits for kTLS */
		if (!outq_empty(&c->out) && tls_conn_established(c->tls) && !c->tls_closing && !c->ktls_wait_tx) {
			struct iovec iov[OUTQ_IOV_MAX];
			size_t n = outq_iov(&c->out, iov, OUTQ_IOV_MAX);
			size_t took = tls_conn_write(c->tls, iov, n);
			if (took)
				plaintext_taken(w, c, took);
		}
		if (c->state == CONN_DRAINING && outq_empty(&c->out) && !c->tls_closing) {
			if (tls_conn_established(c->tls))
				tls_conn_close_notify(c->tls);
			c->tls_closing = true;
		}
		size_t pending = tls_conn_out_pending(c->tls);
		if (pending == 0)
			return;
		uint32_t cap;
		s->cipher = bufpool_get(&w->pool, pending, &cap);
		if (s->cipher == NULL) {
			conn_note_end(c, CONN_END_NO_MEMORY);
			conn_kill(w, c);
			return;
		}
		s->cipher_cap = cap;
		s->cipher_len = (uint32_t)tls_conn_out_take(c->tls, s->cipher, MIN((size_t)cap, pending));
		s->cipher_off = 0;
	}
	struct io_uring_sqe *sqe = uring_get_sqe(&w->ring);
	io_uring_prep_send(sqe, c->fd, s->cipher + s->cipher_off, s->cipher_len - s->cipher_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, UD(OP_SEND, c->idx, c->gen));
	c->send_inflight = true;
	STAT_INC(w->stats.sends);
	if (c->lat_frames)
		record_latency(w, c);
}

static void send_submit(struct worker *w, struct conn *c)
{
	struct iovec iov[OUTQ_IOV_MAX];
	size_t n = outq_iov(&c->out, iov, OUTQ_IOV_MAX);
	ASSERT(n > 0);
	size_t total = 0;
	for (size_t i = 0; i < n; i++)
		total += iov[i].iov_len;
	/* kTLS sockets cannot send_zc (the TLS ULP refuses it with EOPNOTSUPP) */
	bool zc = w->cfg->zerocopy_min_bytes && w->feat.send_zc && total >= w->cfg->zerocopy_min_bytes && !c->ktls;
	struct io_uring_sqe *sqe;
	if (n == 1) {
		sqe = uring_get_sqe(&w->ring);
		if (zc)
			io_uring_prep_send_zc(sqe, c->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL,
					      IORING_SEND_ZC_REPORT_USAGE);
		else
			io_uring_prep_send(sqe, c->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
	} else {
		if (!get_ctx(w, c)) {
			conn_note_end(c, CONN_END_NO_MEMORY);
			conn_kill(w, c);
			return;
		}
		memcpy(c->send->iov, iov, n * sizeof iov[0]);
		c->send->msg = (struct msghdr){ .msg_iov = c->send->iov, .msg_iovlen = n };
		sqe = uring_get_sqe(&w->ring);
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
		record_latency(w, c);
}

void send_flush(struct worker *w)
{
	w->flush_ns = 0;
	/* Bounded: each connection is on the list at most once. */
	while (w->dirty_head != NULL) {
		struct conn *c = w->dirty_head;
		w->dirty_head = c->dirty_next;
		c->in_dirty = false;
		if (c->state != CONN_DEAD && c->state != CONN_FREE && !c->send_inflight && conn_has_output(c)) {
			if (c->tls)
				tls_submit(w, c);
			else
				send_submit(w, c);
		}
		conn_maybe_free(w, c);
	}
}

static void on_sent(struct worker *w, struct conn *c, int res)
{
	c->send_inflight = false;
	if (c->state == CONN_DEAD) {
		conn_maybe_free(w, c);
		return;
	}
	if (res <= 0) {
		conn_note_end(c, CONN_END_IO_ERROR);
		conn_kill(w, c);
		return;
	}
	STAT_ADD(w->stats.bytes_out, (uint64_t)res);
	bool head_done;
	if (c->tls) {
		/* ciphertext: the outbox gave its bytes up when they were encrypted; the batch
		 * in flight is the head of the queue the write deadline bounds */
		struct send_ctx *s = c->send;
		ASSERT(s != NULL && s->cipher_off + (uint32_t)res <= s->cipher_len);
		s->cipher_off += (uint32_t)res;
		head_done = s->cipher_off == s->cipher_len;
		if (head_done && c->ktls_wait_tx) {
			put_cipher(w, s);
			ktls_phase_tx_done(w, c); /* may install kTLS: c->tls is NULL then */
			if (c->state == CONN_DEAD) {
				conn_maybe_free(w, c);
				return;
			}
		}
	} else {
		head_done = (size_t)res >= outq_head_bytes(&c->out);
		plaintext_taken(w, c, (size_t)res);
	}
	if (!conn_has_output(c) && (c->send == NULL || c->send->cipher_off == c->send->cipher_len)) {
		c->write_deadline_ms = 0;
		send_put_ctx(w, c);
		if (c->state == CONN_DRAINING)
			conn_shut_wr(w, c);
		if (c->state == CONN_HANDOFF) {
			handoff_progress(w, c); /* frees the slot when it sends */
			return;
		}
	} else {
		/* Reference §5.4 bounds each write to 10 s. The outbox is written in
		 * segments (16 KiB of frames, or one larger message): each gets 10 s from
		 * reaching the head of the queue. Progress inside the head segment does not
		 * move its deadline, so a peer that reads a byte a second is cut off. */
		if (head_done)
			c->write_deadline_ms = w->now_ms + WS_WRITE_TIMEOUT_MS;
		send_mark_dirty(w, c);
	}
	conn_timer_update(w, c);
}

/*
 * A send_zc completes twice: the result (IORING_CQE_F_MORE set), then a notification
 * (IORING_CQE_F_NOTIF) once the kernel no longer references the bytes. The outbox
 * segments are released, and the next send submitted, only after the notification:
 * until then retransmissions may read them.
 */
void send_on_cqe(struct worker *w, struct conn *c, const struct io_uring_cqe *cqe)
{
	if (cqe->flags & IORING_CQE_F_NOTIF) {
		ASSERT(c->zc_notif_pending);
		c->zc_notif_pending = false;
		if ((uint32_t)cqe->res & IORING_NOTIF_USAGE_ZC_COPIED)
			STAT_INC(w->stats.zc_copied);
		on_sent(w, c, c->zc_res);
		return;
	}
	if (cqe->flags & IORING_CQE_F_MORE) {
		c->zc_notif_pending = true;
		c->zc_res = cqe->res;
		return; /* send_inflight stays set: the buffers are still the kernel's */
	}
	on_sent(w, c, cqe->res);
}
