/*
 * conn.c - the connection pool and each connection's lifecycle.
 *
 * Reading order: the pool (alloc, state moves, refs), the input seam, deadlines,
 * endings (report, abort, drain, free), buffers, and the operations the application
 * calls by ref. Slots come from a pool sized at start-up; a slot is freed only when no
 * operation on its fd is in flight and the application has heard of its end.
 */
#include "engine/internal.h"

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ws/ws_frame.h"

/* ------------------------------------------------------------------ the pool */

static void read_peer(int fd, struct peer_addr *out)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) != 0)
		return;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		out->family = AF_INET;
		memcpy(out->bytes, &sin->sin_addr, 4);
		out->port = ntohs(sin->sin_port);
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
		if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
			/* An IPv4 client on the all-address listener (an IPv6 socket with
			 * V6ONLY off) is a.b.c.d, as Go prints it, not ::ffff:a.b.c.d: in the
			 * logs, the rate-limit key and the X-Forwarded-For fallback alike. */
			out->family = AF_INET;
			memcpy(out->bytes, &sin6->sin6_addr.s6_addr[12], 4);
		} else {
			out->family = AF_INET6;
			memcpy(out->bytes, &sin6->sin6_addr, 16);
		}
		out->port = ntohs(sin6->sin6_port);
	}
}

struct conn *conn_alloc(struct worker *w, int fd, const struct peer_addr *remote)
{
	if (w->free_top == 0)
		return NULL;
	uint32_t idx = w->free_idx[--w->free_top];
	struct conn *c = &w->conns[idx];
	ASSERT(c->state == CONN_FREE);
	uint32_t gen = c->gen;
	*c = (struct conn){ .fd = fd, .idx = idx, .gen = gen, .state = CONN_HTTP };
	c->timer.kind = TW_KIND_CONN;
	w->live++;
	STAT_SET(w->stats.connections_open, w->live);

	if (remote) {
		c->remote = *remote; /* a handoff: the first worker set the socket up */
	} else {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		read_peer(fd, &c->remote);
		/* --https-proxy-protocol: the PROXY v2 header first, the TLS state after it */
		c->proxy_pending = proxy_phase_wanted(w);
		if (w->tls_server && !c->proxy_pending && !conn_tls_begin(w, c)) {
			conn_move(c, CONN_DEAD);
			conn_maybe_free(w, c);
			return NULL;
		}
	}
	_Static_assert(PROXY_HEADER_TIMEOUT_MS <= HTTP_HEADER_READ_TIMEOUT_MS, "the header's bound");
	c->read_deadline_ms = w->now_ms + (c->proxy_pending ? PROXY_HEADER_TIMEOUT_MS : HTTP_HEADER_READ_TIMEOUT_MS);
	conn_timer_update(w, c);
	return c;
}

bool conn_tls_begin(struct worker *w, struct conn *c)
{
	/* TLS_HANDSHAKE_TIMEOUT_MS: the read deadline set at the accept bounds the handshake */
	_Static_assert(TLS_HANDSHAKE_TIMEOUT_MS <= HTTP_HEADER_READ_TIMEOUT_MS, "handshake bound");
	(void)tls_server_rotate_ticket_keys(w->tls_server, w->now_ms);
	c->tls = tls_conn_new(w->tls_server, &w->stats.tls);
	if (c->tls == NULL)
		return false;
	c->ktls_undecided = w->ktls_available; /* ktls_phase.c */
	return true;
}

void conn_move(struct conn *c, enum conn_state to)
{
	ASSERT(to > c->state);
	c->state = (uint8_t)to;
}

struct conn *conn_at(struct worker *w, struct conn_ref ref)
{
	ASSERT(ref.idx < w->conn_cap);
	struct conn *c = &w->conns[ref.idx];
	ASSERT(c->gen == ref.gen && c->state != CONN_FREE);
	return c;
}

/* ------------------------------------------------------------------ bytes in */

/* Plaintext for the phase the connection is in. */
static void phase_input(struct worker *w, struct conn *c, uint8_t *p, size_t n)
{
	switch (c->state) {
	case CONN_HTTP:
		http_phase_input(w, c, p, n);
		break;
	case CONN_HANDOFF:
		handoff_input(w, c, p, n);
		break;
	case CONN_WS_OPEN:
	case CONN_WS_CLOSING:
		ws_phase_input(w, c, p, n);
		break;
	default:
		break; /* draining: input is discarded */
	}
}

/* A TLS connection's failure: an HTTP request on the TLS port gets the reference's
 * plaintext answer (§1.4), anything else the alert BoringSSL queued; then close. */
static void tls_failed(struct worker *w, struct conn *c)
{
	if (tls_conn_error(c->tls) == TLS_ERR_PLAINTEXT_HTTP) {
		/* the connection speaks plaintext from here on: no TLS state, one answer */
		tls_conn_free(c->tls);
		c->tls = NULL;
		static const char answer[] = TLS_PLAINTEXT_HTTP_RESPONSE;
		if (!send_queue_bytes(w, c, answer, sizeof answer - 1)) {
			conn_kill(w, c);
			return;
		}
	}
	c->tls_closing = true; /* nothing more will be encrypted */
	conn_drain(w, c);
}

/* The handshake of c waits for autocert's first certificate: remember it (bounded)
 * and poll for the certificate. */
static void cert_wait(struct worker *w, struct conn *c)
{
	for (uint32_t i = 0; i < w->n_cert_waiters; i++) {
		if (w->cert_waiters[i].idx == c->idx && w->cert_waiters[i].gen == c->gen)
			return;
	}
	if (w->n_cert_waiters == CERT_WAITERS_MAX) {
		tls_conn_fail(c->tls, TLS_ERR_NO_CERT);
		tls_failed(w, c);
		return;
	}
	w->cert_waiters[w->n_cert_waiters++] = conn_ref_of(c);
	if (!tw_node_scheduled(&w->cert_poll))
		timer_wheel_schedule(&w->tw, &w->cert_poll, w->now_ms + CERT_POLL_MS);
}

static void tls_input(struct worker *w, struct conn *c, const uint8_t *p, size_t n);

void conn_cert_poll(struct worker *w)
{
	uint64_t gen = tls_server_cert_generation(w->tls_server);
	if (gen == w->cert_gen_seen) {
		if (w->n_cert_waiters)
			timer_wheel_schedule(&w->tw, &w->cert_poll, w->now_ms + CERT_POLL_MS);
		return;
	}
	w->cert_gen_seen = gen;
	struct conn_ref waiting[CERT_WAITERS_MAX];
	uint32_t n = w->n_cert_waiters;
	memcpy(waiting, w->cert_waiters, n * sizeof waiting[0]);
	w->n_cert_waiters = 0;
	for (uint32_t i = 0; i < n; i++) {
		struct conn *c = &w->conns[waiting[i].idx];
		if (c->gen != waiting[i].gen || c->state != CONN_HTTP || c->tls == NULL || !tls_conn_waiting_cert(c->tls))
			continue; /* gone, or no longer waiting */
		static const uint8_t no_input[1];
		tls_input(w, c, no_input, 0); /* the handshake goes on with the certificate */
		conn_maybe_free(w, c);
	}
}

/* Ciphertext in: decrypt into a buffer on the stack and hand the plaintext on, a
 * record's worth at a time. Bounded: every pass consumes input or drains the
 * plaintext buffer. */
static void tls_input(struct worker *w, struct conn *c, const uint8_t *p, size_t n)
{
	uint8_t plain[TLS_RECORD_PLAINTEXT_BYTES_MAX];
	for (;;) {
		size_t used = 0, out = 0;
		enum tls_status st = tls_conn_input(c->tls, p, n, &used, plain, sizeof plain, &out);
		ASSERT(used <= n);
		p += used;
		n -= used;
		if (out)
			phase_input(w, c, plain, out); /* the reader unmasks in place: plain is ours */
		if (c->state == CONN_DEAD || c->state == CONN_FREE || c->tls == NULL)
			return;
		if (tls_conn_out_pending(c->tls))
			send_mark_dirty(w, c); /* handshake flights, tickets, alerts */
		if (!c->counted_tls_path && !c->ktls_undecided && tls_conn_established(c->tls)) {
			c->counted_tls_path = true;
			STAT_INC(w->stats.tls_paths[TLS_PATH_USER_NO_KERNEL_TLS]);
		}
		switch (st) {
		case TLS_AGAIN:
			continue;
		case TLS_WANT_INPUT:
			/* every byte received is consumed: the moment kTLS can take over */
			if (c->ktls_undecided && tls_conn_established(c->tls))
				ktls_phase_try(w, c);
			return;
		case TLS_PEER_CLOSED:
			conn_kill(w, c); /* close_notify: the peer is gone, as at EOF */
			return;
		case TLS_WAIT_CERT:
			cert_wait(w, c);
			return;
		case TLS_FAILED:
			tls_failed(w, c);
			return;
		}
	}
}

void conn_input(struct worker *w, struct conn *c, uint8_t *p, size_t n)
{
	STAT_ADD(w->stats.bytes_in, n);
	if (c->exporting && c->state == CONN_WS_OPEN) {
		migrate_export_input(w, c, p, n); /* plaintext, raw: the successor reads it */
		return;
	}
	if (c->proxy_pending && !proxy_phase_input(w, c, &p, &n))
		return; /* the PROXY v2 header is incomplete or refused, or nothing follows it */
	if (c->tls != NULL && c->state != CONN_DRAINING)
		tls_input(w, c, p, n);
	else
		phase_input(w, c, p, n);
}

bool conn_has_output(const struct conn *c)
{
	if (!outq_empty(&c->out))
		return true;
	if (c->tls == NULL)
		return false;
	return tls_conn_out_pending(c->tls) > 0 || (c->state == CONN_DRAINING && !c->tls_closing);
}

bool conn_reads(const struct conn *c)
{
	return c->state != CONN_FREE && c->state != CONN_HANDOFF && c->state != CONN_DEAD && !c->recv_paused &&
	       !c->ktls_wait_tx && !(c->exporting && c->state == CONN_WS_OPEN);
}

void conn_arm_recv(struct worker *w, struct conn *c)
{
	if (c->recv_armed || !conn_reads(c))
		return;
	struct io_uring_sqe *sqe = uring_get_sqe(&w->ring);
	if (c->ktls || c->ktls_undecided)
		ktls_phase_arm_recv(w, c, sqe);
	else if (c->proxy_pending && w->ktls_available)
		io_uring_prep_recv(sqe, c->fd, NULL, 0, 0); /* TLS with kTLS follows: no multishot in flight then */
	else
		io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = RECV_BUFFER_GROUP;
	io_uring_sqe_set_data64(sqe, UD(OP_RECV, c->idx, c->gen));
	c->recv_armed = true;
}

/* ------------------------------------------------------------------ deadlines */

void conn_timer_update(struct worker *w, struct conn *c)
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

void conn_timer_fire(struct worker *w, struct conn *c)
{
	uint64_t now = w->now_ms;
	if (c->close_deadline_ms && now >= c->close_deadline_ms) {
		conn_kill(w, c); /* close handshake or drain took too long */
		return;
	}
	if (c->write_deadline_ms && now >= c->write_deadline_ms) {
		/* Reference §5.4: the outbox's head segment was not written within 10 s. An
		 * open WebSocket goes to the application, which closes it (a close frame may
		 * still get out, bounded by the close handshake's deadline) or aborts it;
		 * anything else, or what the application leaves open, is cut. */
		conn_note_end(c, CONN_END_WRITE_TIMEOUT);
		bool was_open = c->state == CONN_WS_OPEN;
		if (was_open)
			w->hooks->write_timeout(w->app, conn_ref_of(c));
		if (!was_open || c->state != CONN_WS_CLOSING) {
			conn_kill(w, c);
			return;
		}
		c->write_deadline_ms = 0; /* the close handshake's deadline bounds it now */
	}
	if (c->read_deadline_ms && now >= c->read_deadline_ms) {
		/* TLS handshake, HTTP header/idle timeout, or a WebSocket message that did not
		 * finish within 30 s of its first header (§5.3): torn down without a close frame. */
		if (c->tls != NULL && !tls_conn_established(c->tls))
			tls_conn_fail(c->tls, tls_conn_waiting_cert(c->tls) ? TLS_ERR_NO_CERT : TLS_ERR_TIMEOUT);
		conn_note_end(c, CONN_END_READ_TIMEOUT);
		conn_kill(w, c);
		return;
	}
	if ((c->pong_deadline_ms && now >= c->pong_deadline_ms) || (c->ping_at_ms && now >= c->ping_at_ms)) {
		ws_phase_heartbeat_due(w, c);
		if (c->state != CONN_WS_OPEN)
			return;
	}
	conn_timer_update(w, c);
}

/* ------------------------------------------------------------------ endings */

/* The application hears of every upgraded connection's end exactly once, from the
 * loop, never from inside one of its own calls. */
void conn_report_end(struct worker *w, struct conn *c)
{
	if (!c->upgraded || c->ended_reported || c->in_ended)
		return;
	c->in_ended = true;
	c->ended_next = w->ended_head;
	w->ended_head = c;
}

void conn_run_ended(struct worker *w)
{
	/* Bounded by the number of connections: each is reported once. */
	while (w->ended_head != NULL) {
		struct conn *c = w->ended_head;
		w->ended_head = c->ended_next;
		c->in_ended = false;
		c->ended_reported = true;
		w->hooks->end(w->app, conn_ref_of(c), c->peer_close_code, (enum conn_end_cause)c->end_cause);
		/* §4.7: the cap slot is held until the handler returns, i.e. until the
		 * WebSocket ended, not until the TCP drain that follows finishes. */
		conn_put_cap(w, c);
		conn_maybe_free(w, c);
	}
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
	if (!c->upgraded)
		return;
	enum close_class k = c->close_sent ? close_class_of(c->close_code) : CLOSE_CLASS_ABNORMAL;
	STAT_INC(w->stats.closes[k]);
}

static void release_buffers(struct worker *w, struct conn *c)
{
	conn_put_http_buf(w, c);
	conn_put_reader(w, c);
}

void conn_maybe_free(struct worker *w, struct conn *c)
{
	if (c->state != CONN_DEAD || c->recv_armed || c->send_inflight || c->in_ended || c->in_dirty)
		return;
	if (c->upgraded && !c->ended_reported)
		return;
	timer_wheel_cancel(&w->tw, &c->timer);
	conn_outq_clear(w, c);
	release_buffers(w, c);
	send_put_ctx(w, c);
	handoff_drop(w, c);
	ktls_phase_release(w, c);
	tls_conn_free(c->tls);
	c->tls = NULL;
	count_close(w, c);
	if (!c->handed_off)
		close(c->fd);
	conn_put_cap(w, c);
	c->state = CONN_FREE; /* the one move back: the slot starts a new life */
	c->gen++;
	ASSERT(w->live > 0);
	w->live--;
	STAT_SET(w->stats.connections_open, w->live);
	w->free_idx[w->free_top++] = c->idx;
}

void conn_put_cap(struct worker *w, struct conn *c)
{
	if (!c->counted)
		return;
	c->counted = false;
	group_put_cap(w->group);
	group_put_ip(w->group, c->client_key);
	c->client_key = 0;
}

void conn_kill(struct worker *w, struct conn *c)
{
	if (c->state == CONN_DEAD || c->state == CONN_FREE)
		return;
	if (c->proxy_pending)
		proxy_phase_abandoned(w, c);
	conn_report_end(w, c);
	conn_move(c, CONN_DEAD);
	c->read_deadline_ms = c->write_deadline_ms = c->close_deadline_ms = 0;
	c->ping_at_ms = c->pong_deadline_ms = 0;
	timer_wheel_cancel(&w->tw, &c->timer);
	/* Wakes the multishot recv (it completes with 0) and fails an in-flight send, so
	 * the slot can be freed once both completions are in. A socket handed to another
	 * worker is that worker's: nothing is in flight on it here. */
	if (!c->handed_off)
		shutdown(c->fd, SHUT_RDWR);
	conn_outq_clear(w, c);
	conn_maybe_free(w, c);
}

/* Flush what is queued, then FIN; discard input until the peer's EOF (bounded). */
void conn_drain(struct worker *w, struct conn *c)
{
	if (c->state == CONN_DEAD || c->state == CONN_DRAINING)
		return;
	if (c->state == CONN_WS_OPEN || c->state == CONN_WS_CLOSING)
		conn_report_end(w, c);
	conn_move(c, CONN_DRAINING);
	c->read_deadline_ms = 0;
	c->ping_at_ms = c->pong_deadline_ms = 0;
	c->close_deadline_ms = w->now_ms + WS_CLOSE_HANDSHAKE_TIMEOUT_MS;
	c->recv_paused = false;
	release_buffers(w, c);
	if (c->ktls_undecided)
		ktls_phase_try(w, c); /* settles it: user space sends what is left */
	if (!conn_has_output(c) && !c->send_inflight) {
		conn_shut_wr(w, c);
	} else if (c->tls != NULL) {
		send_mark_dirty(w, c); /* the close_notify goes out after what is queued */
	}
	conn_arm_recv(w, c);
	conn_timer_update(w, c);
}

/* ------------------------------------------------------------------ buffers */

void conn_outq_clear(struct worker *w, struct conn *c)
{
	if (c->zc_notif_pending)
		return; /* the kernel may still read these bytes; cleared when the slot is freed */
	STAT_SUB(w->stats.outbox_bytes, c->out.bytes);
	outq_clear(&c->out, &w->pool);
}

void conn_put_http_buf(struct worker *w, struct conn *c)
{
	if (c->http_buf) {
		bufpool_put(&w->pool, c->http_buf, c->http_cap);
		c->http_buf = NULL;
		c->http_cap = c->http_len = 0;
	}
}

void conn_put_asm_buf(struct worker *w, struct ws_reader *r)
{
	if (r->asm_buf) {
		bufpool_put(&w->pool, r->asm_buf, r->asm_cap);
		r->asm_buf = NULL;
		r->asm_cap = r->asm_len = 0;
	}
}

uint32_t conn_reader_pool_bytes(void)
{
	return bufpool_class_bytes(sizeof(struct ws_reader));
}

/* The conn's reader (held only while a frame or message spans receives) and its
 * assembly buffer go back to the pool. */
void conn_put_reader(struct worker *w, struct conn *c)
{
	if (c->ws) {
		conn_put_asm_buf(w, c->ws);
		bufpool_put(&w->pool, c->ws, conn_reader_pool_bytes());
		c->ws = NULL;
	}
}

bool conn_pool_regrow(struct worker *w, uint8_t **buf, uint32_t *cap, uint32_t keep, size_t want)
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

/* ------------------------------------------------------------------ by ref (engine.h) */

void conn_abort(struct worker *w, struct conn_ref ref)
{
	struct conn *c = conn_at(w, ref);
	conn_note_end(c, CONN_END_CLOSED);
	conn_kill(w, c);
}

void conn_pause_recv(struct worker *w, struct conn_ref ref)
{
	struct conn *c = conn_at(w, ref);
	if (c->recv_paused || c->state != CONN_WS_OPEN)
		return;
	c->recv_paused = true;
	ws_phase_heartbeat_suspend(w, c);
	if (c->recv_armed) {
		struct io_uring_sqe *sqe = uring_get_sqe(&w->ring);
		io_uring_prep_cancel64(sqe, UD(OP_RECV, c->idx, c->gen), 0);
		io_uring_sqe_set_data64(sqe, UD(OP_IGNORE, 0, 0));
	}
}

void conn_resume_recv(struct worker *w, struct conn_ref ref)
{
	struct conn *c = conn_at(w, ref);
	if (!c->recv_paused)
		return;
	c->recv_paused = false;
	ws_phase_heartbeat_resume(w, c);
	conn_arm_recv(w, c);
}

bool conn_ws_is_open(struct worker *w, struct conn_ref ref)
{
	return conn_at(w, ref)->state == CONN_WS_OPEN;
}

uint64_t conn_queued_bytes(struct worker *w, struct conn_ref ref)
{
	return conn_at(w, ref)->out.bytes;
}

uint32_t conn_queued_items(struct worker *w, struct conn_ref ref)
{
	return conn_at(w, ref)->items_pending;
}

size_t conn_ip_text(const struct conn *c, char *out, size_t cap)
{
	ASSERT(cap >= INET6_ADDRSTRLEN);
	if (c->remote.family == 0 || inet_ntop(c->remote.family, c->remote.bytes, out, (socklen_t)cap) == NULL) {
		out[0] = '\0';
		return 0;
	}
	return strlen(out);
}

size_t conn_remote_ip(struct worker *w, struct conn_ref ref, char *out, size_t cap)
{
	return conn_ip_text(conn_at(w, ref), out, cap);
}
