/*
 * lg_loop.c - one thread's event loop: its ring drives its share of the connections
 * (with --threads N, N of these run side by side and share nothing per frame).
 *
 * Each iteration: advance the phase machine (start connects, make open-loop frames
 * due), flush every connection that got bytes this iteration (one send in flight per
 * connection, everything queued meanwhile goes out in the next one), wait for
 * completions (bounded by the next deadline), handle them.
 *
 * Receives are single-shot into the connection's own `in` buffer, re-armed only while
 * there is room: that is the back-pressure. A binary whose echo buffer is full stops
 * parsing (`paused`) until its send completes, and its `in` fills up, so TCP pushes
 * back on the relay exactly as a slow real binary would.
 *
 * Phases: CONNECT (binaries, then each binary's phones after its 101; a phone is ready
 * when its probe frame, seq 0, came back through the binary; then the loop waits,
 * still serving its connections, until every loop is there, and all of them start
 * traffic at one common instant, so the windows are the same), WARMUP and MEASURE
 * (traffic; only MEASURE counts), DRAIN (no new frames; wait for the ones in flight,
 * then the missing ones are lost), CLOSE (close frames, bounded wait), DONE.
 *
 * --mode handshakes uses the same phases without the connect phase: every slot (a
 * binary of its own) connects when traffic starts, and each time its connection has
 * ended (the upgrade answered, our close echoed, the relay's end of TCP seen) and its
 * last completion is in, it is parked and started again with a new server-id. The
 * drain waits for the connections in flight; those still unfinished are errors.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lg.h"
#include "engine/uring.h"
#include "rawproto.h"
#include "ws/ws_frame.h"
#include "ws/ws_handshake.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { OP_CONNECT = 1, OP_RECV = 2, OP_SEND = 3 };
#define LG_UD(c, op) ((uint64_t)(c)->idx << 4 | (uint64_t)(op))
#define DRAIN_CHECK_NS (5ull * 1000 * 1000)
#define FIRST_ERRORS_PRINTED_MAX 5u

int lg_stop_requested;

uint64_t lg_clock_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static uint64_t now_rel(struct lg_worker *w)
{
	return lg_clock_ns() - w->t_origin_abs_ns;
}

static uint32_t rng32(struct lg_worker *w)
{
	/* xorshift64*: mask keys only need to be unpredictable to a proxy, not secret */
	uint64_t x = w->rng;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	w->rng = x;
	return (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
}

static bool is_raw(struct lg_worker *w)
{
	return w->cfg->transport == LG_TR_RAW;
}

static bool is_hs(const struct lg_worker *w)
{
	return w->cfg->mode == LG_MODE_HANDSHAKES;
}

static bool in_window(struct lg_worker *w, uint64_t t)
{
	return t >= w->t_measure0_ns && t < w->t_measure1_ns;
}

/* A signal, or another loop that failed: wind down (drain, close, report). */
static bool stop_requested(const struct lg_worker *w)
{
	return __atomic_load_n(&lg_stop_requested, __ATOMIC_RELAXED) ||
	       __atomic_load_n(&w->run->failed, __ATOMIC_RELAXED);
}

static bool errors_print_left(const struct lg_worker *w)
{
	return __atomic_load_n(&w->run->errors_printed, __ATOMIC_RELAXED) < FIRST_ERRORS_PRINTED_MAX;
}

/* The first few errors (of all loops together) are printed, the rest only counted. */
static void say_error(struct lg_worker *w, const struct conn *c, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void say_error(struct lg_worker *w, const struct conn *c, const char *fmt, ...)
{
	if (!errors_print_left(w))
		return;
	uint32_t printed = __atomic_add_fetch(&w->run->errors_printed, 1, __ATOMIC_RELAXED);
	if (printed > FIRST_ERRORS_PRINTED_MAX)
		return;
	char msg[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (c)
		fprintf(stderr, "loadgen: %s %u: %s\n", c->role == LG_ROLE_BINARY ? "binary" : "phone",
			c->role == LG_ROLE_BINARY ? c->binary : c->phone, msg);
	else
		fprintf(stderr, "loadgen: %s\n", msg);
	if (printed == FIRST_ERRORS_PRINTED_MAX)
		fprintf(stderr, "loadgen: (further errors are only counted)\n");
}

void lg_code_add(struct lg_code_count *t, uint32_t code, uint64_t n)
{
	for (uint32_t i = 0; i < LG_CODES_TRACKED; i++) {
		if (t[i].count == 0 || t[i].code == code) {
			t[i].code = code;
			t[i].count += n;
			return;
		}
	}
	t[LG_CODES_TRACKED - 1].count += n; /* table full: lumped into the last entry */
}

static void count_code(struct lg_code_count *t, uint32_t code)
{
	lg_code_add(t, code, 1);
}

static struct io_uring_sqe *get_sqe(struct lg_worker *w)
{
	return uring_get_sqe(&w->ring);
}

/* The loop's phone number `phone` (0 .. phones_n-1; not the global number). */
static struct conn *phone_conn(struct lg_worker *w, uint32_t phone)
{
	return &w->conns[w->binaries_n + phone];
}

/* The loop's number of the first phone of binary c. */
static uint32_t first_phone_of(const struct lg_worker *w, const struct conn *c)
{
	return (c->binary - w->binary0) * w->cfg->phones_per_binary;
}

static void server_id(struct lg_worker *w, char *out, size_t cap, const struct conn *c)
{
	int n;
	if (is_hs(w)) /* a server-id of its own for every connection of the slot */
		n = snprintf(out, cap, "%s%u.%llx", w->cfg->server_prefix, c->binary,
			     (unsigned long long)c->hs_cycle);
	else
		n = snprintf(out, cap, "%s%u", w->cfg->server_prefix, c->binary);
	ASSERT(n > 0 && (size_t)n < cap);
}

static void mark_dirty(struct lg_worker *w, struct conn *c)
{
	if (c->dirty || c->state == CS_DEAD)
		return;
	ASSERT(w->dirty_n < w->conns_n);
	c->dirty = true;
	w->dirty[w->dirty_n++] = c->idx;
}

static uint32_t fill_room(const struct conn *c)
{
	return c->half_cap - c->fill_len;
}

static uint8_t *fill_ptr(struct conn *c)
{
	return c->half[c->fill_idx] + c->fill_len;
}

/* ---- connection life cycle ---- */

static void settle(struct lg_worker *w, struct conn *c, bool ok)
{
	if (c->settled)
		return;
	c->settled = true;
	w->settled_n++;
	if (ok) {
		if (c->role == LG_ROLE_BINARY)
			w->ready_binaries++;
		else
			w->ready_phones++;
	}
}

/* Handshakes mode: a slot whose connection is dead and has no operation left in the
 * ring goes on the list of slots to start again (phase_step does). Waiting for the
 * completions first means a late one can never be taken for the next connection's. */
static void hs_maybe_park(struct lg_worker *w, struct conn *c)
{
	if (!is_hs(w) || c->state != CS_DEAD || c->parked || c->recv_armed || c->send_inflight ||
	    c->connect_inflight)
		return;
	ASSERT(w->hs_parked_n < w->conns_n);
	c->parked = true;
	w->hs_parked[w->hs_parked_n++] = c->idx;
}

/* Tear a connection down. Callers count the error, if any, before. */
static void conn_kill(struct lg_worker *w, struct conn *c)
{
	if (c->state == CS_DEAD)
		return;
	if (c->handshaking) {
		c->handshaking = false;
		w->handshakes_inflight--;
	}
	if (c->state == CS_OPEN || c->state == CS_CLOSING)
		w->open_n--;
	settle(w, c, false);
	if (c->fd >= 0) {
		/* shutdown first: it completes our pending recv, which otherwise holds
		 * the socket open after close() */
		(void)shutdown(c->fd, SHUT_RDWR);
		(void)close(c->fd);
		c->fd = -1;
	}
	if (c->tls) {
		lgtls_free(c->tls);
		c->tls = NULL;
	}
	c->state = CS_DEAD;
	hs_maybe_park(w, c);
	if (c->role == LG_ROLE_BINARY && w->phase == PH_CONNECT) {
		/* phones that never started cannot reach this binary any more */
		for (uint32_t j = 0; j < w->cfg->phones_per_binary; j++) {
			struct conn *p = phone_conn(w, first_phone_of(w, c) + j);
			if (p->state == CS_QUEUED) {
				w->st.errors_connect++;
				settle(w, p, false);
				p->state = CS_DEAD;
			}
		}
	}
}

static void conn_error(struct lg_worker *w, struct conn *c, uint64_t *counter, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void conn_error(struct lg_worker *w, struct conn *c, uint64_t *counter, const char *fmt, ...)
{
	(*counter)++;
	if (errors_print_left(w)) {
		char msg[256];
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(msg, sizeof msg, fmt, ap);
		va_end(ap);
		say_error(w, c, "%s", msg);
	}
	conn_kill(w, c);
}

static void enqueue(struct lg_worker *w, struct conn *c)
{
	ASSERT(w->queue_tail < w->conns_n);
	w->queue[w->queue_tail++] = c->idx;
}

static void conn_start(struct lg_worker *w, struct conn *c)
{
	ASSERT(c->state == CS_QUEUED);
	int fd = socket(w->cfg->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		count_code(w->st.errnos, (uint32_t)errno);
		conn_error(w, c, &w->st.errors_connect, "socket(): %s", strerror(errno));
		return;
	}
	int one = 1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (w->cfg->src_ips > 0) {
		/* 127.0.0.k: a different source address per connection, so the ephemeral
		 * port range is per address; the port is picked at connect() time */
		(void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
		struct sockaddr_in src = { .sin_family = AF_INET };
		src.sin_addr.s_addr = htonl(0x7F000001u + c->idx % w->cfg->src_ips);
		if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
			int e = errno;
			close(fd);
			count_code(w->st.errnos, (uint32_t)e);
			conn_error(w, c, &w->st.errors_connect, "bind(127.0.0.%u): %s", 1 + c->idx % w->cfg->src_ips, strerror(e));
			return;
		}
	}
	c->fd = fd;
	c->state = CS_CONNECTING;
	c->handshaking = true;
	c->connect_inflight = true;
	w->handshakes_inflight++;
	struct io_uring_sqe *sqe = get_sqe(w);
	io_uring_prep_connect(sqe, fd, (struct sockaddr *)&w->cfg->addr, w->cfg->addr_len);
	io_uring_sqe_set_data64(sqe, LG_UD(c, OP_CONNECT));
}

static void arm_recv(struct lg_worker *w, struct conn *c)
{
	if (c->recv_armed || c->fd < 0 || c->state == CS_DEAD || c->state == CS_QUEUED ||
	    c->state == CS_CONNECTING)
		return;
	if (c->in_len >= c->in_cap)
		return;
	struct io_uring_sqe *sqe = get_sqe(w);
	if (c->tls)
		io_uring_prep_recv(sqe, c->fd, c->rx, LG_RECV_CHUNK_BYTES, 0);
	else
		io_uring_prep_recv(sqe, c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
	io_uring_sqe_set_data64(sqe, LG_UD(c, OP_RECV));
	c->recv_armed = true;
}

static void submit_send(struct lg_worker *w, struct conn *c)
{
	ASSERT(c->wire_off < c->wire_len);
	struct io_uring_sqe *sqe = get_sqe(w);
	io_uring_prep_send(sqe, c->fd, c->wire + c->wire_off, c->wire_len - c->wire_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, LG_UD(c, OP_SEND));
	c->send_inflight = true;
}

/* Hand what was queued this iteration to the kernel: one send per connection. */
static void conn_flush(struct lg_worker *w, struct conn *c)
{
	if (c->send_inflight || c->fd < 0 || c->state == CS_DEAD)
		return;
	const uint8_t *buf;
	size_t len;
	if (c->tls) {
		if (c->fill_len > 0 && lgtls_out_pending(c->tls) == 0 && c->state != CS_TLS) {
			if (!lgtls_write(c->tls, c->half[0], c->fill_len)) {
				conn_error(w, c, &w->st.errors_protocol, "TLS write failed");
				return;
			}
			c->fill_len = 0;
		}
		buf = c->half[1];
		len = lgtls_out_take(c->tls, c->half[1], c->half_cap);
	} else {
		if (c->fill_len == 0)
			return;
		buf = c->half[c->fill_idx];
		len = c->fill_len;
		c->fill_idx ^= 1;
		c->fill_len = 0;
	}
	if (len == 0)
		return;
	c->wire = buf;
	c->wire_len = (uint32_t)len;
	c->wire_off = 0;
	submit_send(w, c);
}

static bool put_ws_frame(struct lg_worker *w, struct conn *c, uint8_t opcode, const uint8_t *payload, size_t len,
			 uint32_t keep_free)
{
	size_t need = lg_ws_header_len(len) + len;
	if (need + keep_free > fill_room(c))
		return false;
	uint32_t k = rng32(w);
	uint8_t key[4];
	memcpy(key, &k, 4);
	uint8_t *o = fill_ptr(c);
	size_t hl = ws_frame_header_encode(o, true, opcode, len, key);
	lg_mask_copy(o + hl, payload, len, key);
	c->fill_len += (uint32_t)(hl + len);
	mark_dirty(w, c);
	return true;
}

static void put_close(struct lg_worker *w, struct conn *c, uint16_t code)
{
	uint8_t pl[2] = { (uint8_t)(code >> 8), (uint8_t)code };
	(void)put_ws_frame(w, c, WS_OP_CLOSE, pl, code ? 2 : 0, 0);
}

/* ---- phones ---- */

/* Open loop, per loop: its frame k (phone k mod phones_n) is intended at
 * traffic start + k / its share of the rate, so every phone sends --rate / phones
 * frames per second whichever loop drives it. */
static uint64_t open_intended_ns(struct lg_worker *w, uint64_t k)
{
	return w->t_traffic0_ns + (uint64_t)((long double)k * (long double)NS_PER_S / (long double)w->rate_per_s);
}

static uint64_t open_k(struct lg_worker *w, const struct conn *c, uint64_t seq)
{
	return (seq - 1) * w->phones_n + (c->phone - w->phone0);
}

static bool expected_t(struct lg_worker *w, const struct conn *c, uint64_t s, uint64_t *t)
{
	if (s == 0) {
		*t = c->probe_ns;
		return true;
	}
	if (s >= c->next_seq)
		return false;
	if (w->cfg->mode == LG_MODE_OPEN) {
		*t = open_intended_ns(w, open_k(w, c, s));
		return true;
	}
	if (c->t_ring == NULL || c->next_seq - s > (uint64_t)c->t_ring_mask + 1)
		return false;
	*t = c->t_ring[s & c->t_ring_mask];
	return true;
}

static bool phone_emit(struct lg_worker *w, struct conn *c, uint64_t t_ns)
{
	uint32_t size = w->cfg->size_bytes;
	size_t hl = is_raw(w) ? RAW_HEADER_BYTES : lg_ws_header_len(size);
	if (hl + size + LG_CTRL_RESERVE_BYTES > fill_room(c))
		return false;
	uint8_t *o = fill_ptr(c);
	if (lg_payload_write(o + hl, size, c->next_seq, t_ns, c->phone) != size) {
		conn_error(w, c, &w->st.errors_protocol,
			   "--size %u is too small for this frame's sequence number and timestamp", size);
		return false;
	}
	if (is_raw(w)) {
		raw_header_encode(o, size, 0);
	} else {
		uint32_t k = rng32(w);
		uint8_t key[4];
		memcpy(key, &k, 4);
		size_t h = ws_frame_header_encode(o, true, WS_OP_TEXT, size, key);
		ASSERT(h == hl);
		lg_mask_copy(o + hl, o + hl, size, key);
	}
	c->fill_len += (uint32_t)(hl + size);
	if (c->next_seq == 0)
		c->probe_ns = t_ns;
	else if (c->t_ring)
		c->t_ring[c->next_seq & c->t_ring_mask] = t_ns;
	c->next_seq++;
	w->st.sent_total++;
	if (in_window(w, t_ns)) {
		w->st.sent++;
		w->st.sent_bytes += size;
		if (w->now_ns > t_ns && w->now_ns - t_ns > w->st.send_lag_max_ns)
			w->st.send_lag_max_ns = w->now_ns - t_ns;
	}
	mark_dirty(w, c);
	return true;
}

static void phone_pump(struct lg_worker *w, struct conn *c)
{
	if (c->state != CS_OPEN || !c->ready)
		return;
	if (w->phase != PH_WARMUP && w->phase != PH_MEASURE)
		return;
	if (w->cfg->mode == LG_MODE_CLOSED) {
		while (c->next_seq - c->expect_seq < w->cfg->window && c->state == CS_OPEN)
			if (!phone_emit(w, c, w->now_ns))
				break;
	} else if (w->cfg->mode == LG_MODE_OPEN) {
		uint64_t inflight_max = MAX(1u, LG_OPEN_INFLIGHT_BYTES_MAX / w->cfg->size_bytes);
		while (c->next_seq < c->due_seq && c->state == CS_OPEN) {
			if (c->next_seq - c->expect_seq >= inflight_max) {
				w->st.open_held++;
				break;
			}
			if (!phone_emit(w, c, open_intended_ns(w, open_k(w, c, c->next_seq))))
				break;
		}
		if (c->due_seq > c->next_seq && c->due_seq - c->next_seq > w->st.open_behind_max_frames)
			w->st.open_behind_max_frames = c->due_seq - c->next_seq;
	}
}

/* A phone payload came back: check it byte for byte against what was sent. */
static void phone_frame(struct lg_worker *w, struct conn *c, const uint8_t *p, size_t n)
{
	w->st.b2p_total++;
	if (in_window(w, w->now_ns)) {
		w->st.b2p++;
	}
	w->st.iv_b2p++;
	uint64_t s, t;
	if (!lg_payload_parse_seq(p, n, &s) || s >= c->next_seq) {
		w->st.corrupted++;
		return;
	}
	if (s < c->expect_seq) {
		/* counted lost when a later seq overtook it; it was late, not lost */
		w->st.reordered++;
		if (w->st.lost)
			w->st.lost--;
		if (!expected_t(w, c, s, &t) || !lg_payload_equal(p, n, w->cfg->size_bytes, s, t, c->phone))
			w->st.corrupted++;
		return;
	}
	if (s > c->expect_seq)
		w->st.lost += s - c->expect_seq;
	c->expect_seq = s + 1;
	if (!expected_t(w, c, s, &t) || !lg_payload_equal(p, n, w->cfg->size_bytes, s, t, c->phone)) {
		w->st.corrupted++;
		return;
	}
	if (s == 0) {
		c->ready = true;
		settle(w, c, true);
		return;
	}
	uint64_t rtt = w->now_ns > t ? w->now_ns - t : 0;
	if (in_window(w, t))
		hist_record(&w->st.lat, rtt);
	if (in_window(w, w->now_ns))
		w->st.round_trips++;
	w->st.iv_round_trips++;
	hist_record(&w->st.iv_lat, rtt);
}

/* ---- binaries ---- */

/* Echo one phone frame back. False when there is no room: the caller pauses. */
static bool binary_frame(struct lg_worker *w, struct conn *c, const uint8_t *p, size_t n)
{
	if (is_raw(w)) {
		if (RAW_HEADER_BYTES + n + LG_CTRL_RESERVE_BYTES > fill_room(c))
			return false;
		uint8_t *o = fill_ptr(c);
		memcpy(o, p - RAW_HEADER_BYTES, RAW_HEADER_BYTES + n); /* header with the phone index */
		c->fill_len += (uint32_t)(RAW_HEADER_BYTES + n);
		mark_dirty(w, c);
	} else {
		switch (lg_envelope_kind(p, n)) {
		case LG_ENV_CLOSE_NOTICE:
			w->st.close_notices++;
			return true;
		case LG_ENV_BAD:
			w->st.errors_protocol++;
			say_error(w, c, "received a frame that is not a routing envelope");
			return true;
		case LG_ENV_FRAME:
			break;
		}
		/* the relay's envelope is exactly what a binary sends back */
		if (!put_ws_frame(w, c, WS_OP_TEXT, p, n, LG_CTRL_RESERVE_BYTES))
			return false;
	}
	w->st.p2b_total++;
	if (in_window(w, w->now_ns))
		w->st.p2b++;
	w->st.iv_p2b++;
	return true;
}

/* ---- input ---- */

/* Handshakes mode: the 101 is in. Count and time it, then close (1000) at once. */
static void hs_opened(struct lg_worker *w, struct conn *c)
{
	struct lg_stats *st = &w->st;
	uint64_t lat = w->now_ns > c->hs_start_ns ? w->now_ns - c->hs_start_ns : 0;
	if (!c->ready) { /* `connections`: slots that completed at least one */
		c->ready = true;
		w->ready_binaries++;
	}
	st->hs_completed++;
	st->iv_handshakes++;
	hist_record(&st->iv_lat, lat);
	if (in_window(w, w->now_ns)) {
		st->hs_window++;
		hist_record(&st->hs_lat, lat);
	}
	if (c->tls) {
		if (lgtls_is_tls13(c->tls))
			st->hs_tls13++;
		if (lgtls_resumed(c->tls))
			st->hs_resumed++;
	}
	put_close(w, c, 1000);
	c->state = CS_CLOSING;
}

static void conn_opened(struct lg_worker *w, struct conn *c)
{
	c->state = CS_OPEN;
	w->open_n++;
	if (c->handshaking) {
		c->handshaking = false;
		w->handshakes_inflight--;
	}
	if (is_hs(w)) {
		hs_opened(w, c);
		return;
	}
	if (c->role == LG_ROLE_BINARY) {
		c->ready = true;
		settle(w, c, true);
		for (uint32_t j = 0; j < w->cfg->phones_per_binary; j++)
			enqueue(w, phone_conn(w, first_phone_of(w, c) + j));
	} else {
		(void)phone_emit(w, c, w->now_ns); /* the registration probe, seq 0 */
	}
}

static void closed_by_peer(struct lg_worker *w, struct conn *c, uint32_t code)
{
	if (c->state == CS_CLOSING && is_hs(w)) {
		/* our close was answered; the relay ends TCP next (after its close_notify
		 * with TLS): wait for that, so we never close with its bytes unread (a RST) */
		w->st.hs_closed++;
		return;
	}
	if (c->state == CS_CLOSING) {
		conn_kill(w, c); /* our close was answered: a clean end */
		return;
	}
	count_code(w->st.close_codes, code);
	conn_error(w, c, &w->st.errors_closed, "closed by the peer (close code %u)", code);
}

static void ws_frames(struct lg_worker *w, struct conn *c)
{
	size_t off = 0;
	while (off < c->in_len && c->state != CS_DEAD) {
		struct ws_frame_header h;
		int hl = ws_frame_header_parse(c->in + off, c->in_len - off, false, &h);
		if (hl == 0)
			break;
		if (hl < 0) {
			conn_error(w, c, &w->st.errors_protocol, "bad frame from the peer (would close %d)", -hl);
			return;
		}
		if ((uint64_t)hl + h.payload_len > c->in_cap) {
			conn_error(w, c, &w->st.errors_protocol, "frame of %llu bytes is bigger than expected",
				   (unsigned long long)h.payload_len);
			return;
		}
		if (c->in_len - off < hl + h.payload_len)
			break;
		const uint8_t *pl = c->in + off + hl;
		size_t n = (size_t)h.payload_len;
		if (!h.fin || h.opcode == WS_OP_CONTINUATION || h.opcode == WS_OP_BINARY) {
			/* the relay sends whole text messages only */
			conn_error(w, c, &w->st.errors_protocol, "unexpected fragment or binary frame (opcode %u)",
				   h.opcode);
			return;
		}
		if (h.opcode == WS_OP_TEXT && c->state == CS_OPEN) {
			if (c->role == LG_ROLE_PHONE) {
				phone_frame(w, c, pl, n);
			} else if (!binary_frame(w, c, pl, n)) {
				c->paused = true;
				break;
			}
		} else if (h.opcode == WS_OP_PING) {
			if (put_ws_frame(w, c, WS_OP_PONG, pl, n, 0))
				w->st.pings_answered++;
		} else if (h.opcode == WS_OP_CLOSE) {
			uint32_t code = n >= 2 ? (uint32_t)pl[0] << 8 | pl[1] : 1005;
			off += hl + n;
			closed_by_peer(w, c, code);
			if (c->state == CS_DEAD)
				return;
			c->in_len = 0; /* nothing after a close frame is read */
			return;
		}
		off += hl + n;
	}
	if (c->state == CS_DEAD)
		return;
	if (off) {
		memmove(c->in, c->in + off, c->in_len - off);
		c->in_len -= (uint32_t)off;
	}
}

static void raw_messages(struct lg_worker *w, struct conn *c)
{
	size_t off = 0;
	while (c->in_len - off >= RAW_HEADER_BYTES && c->state != CS_DEAD) {
		uint32_t len = raw_get_u32(c->in + off);
		uint32_t idx = raw_get_u32(c->in + off + 4);
		if (len > RAW_MESSAGE_BYTES_MAX || RAW_HEADER_BYTES + (size_t)len > c->in_cap) {
			conn_error(w, c, &w->st.errors_protocol, "raw message of %u bytes is too big", len);
			return;
		}
		if (c->in_len - off < RAW_HEADER_BYTES + len)
			break;
		const uint8_t *pl = c->in + off + RAW_HEADER_BYTES;
		if (c->state == CS_OPEN) {
			if (c->role == LG_ROLE_PHONE) {
				if (idx != c->raw_index)
					w->st.corrupted++;
				else
					phone_frame(w, c, pl, len);
			} else if (!binary_frame(w, c, pl, len)) {
				c->paused = true;
				break;
			}
		}
		off += RAW_HEADER_BYTES + len;
	}
	if (c->state == CS_DEAD)
		return;
	if (off) {
		memmove(c->in, c->in + off, c->in_len - off);
		c->in_len -= (uint32_t)off;
	}
}

/* Everything in `in`, by state. */
static void conn_input(struct lg_worker *w, struct conn *c)
{
	if (c->state == CS_UPGRADE) {
		if (is_raw(w)) {
			if (c->in_len < RAW_HEADER_BYTES)
				return;
			if (raw_get_u32(c->in) != 0) {
				conn_error(w, c, &w->st.errors_handshake, "bad hello answer from the forwarder");
				return;
			}
			c->raw_index = raw_get_u32(c->in + 4);
			memmove(c->in, c->in + RAW_HEADER_BYTES, c->in_len - RAW_HEADER_BYTES);
			c->in_len -= RAW_HEADER_BYTES;
		} else {
			size_t head = 0;
			int status = 0;
			int rc = lg_response_check(c->in, c->in_len, c->accept, &head, &status);
			if (rc == 0)
				return;
			if (rc < 0) {
				count_code(w->st.http_statuses, (uint32_t)status);
				conn_error(w, c, &w->st.errors_handshake,
					   "upgrade refused or invalid (HTTP status %d)", status);
				return;
			}
			memmove(c->in, c->in + head, c->in_len - head);
			c->in_len -= (uint32_t)head;
		}
		conn_opened(w, c);
	}
	if (c->state != CS_OPEN && c->state != CS_CLOSING)
		return;
	if (is_raw(w))
		raw_messages(w, c);
	else
		ws_frames(w, c);
	if (c->role == LG_ROLE_PHONE)
		phone_pump(w, c);
}

static void send_hello(struct lg_worker *w, struct conn *c)
{
	char sid[LG_HS_SERVER_ID_BYTES_MAX + 1];
	server_id(w, sid, sizeof sid, c);
	char *o = (char *)fill_ptr(c);
	size_t n;
	if (is_raw(w)) {
		n = (size_t)snprintf(o, fill_room(c), "%c%s\n", c->role == LG_ROLE_BINARY ? 'B' : 'P', sid);
	} else {
		uint8_t raw_key[16];
		for (int i = 0; i < 4; i++) {
			uint32_t r = rng32(w);
			memcpy(raw_key + 4 * i, &r, 4);
		}
		char key[25];
		lg_base64_16(raw_key, key);
		bool ok = ws_handshake_accept(span_cstr(key), c->accept);
		ASSERT(ok);
		n = lg_request_build(o, fill_room(c), (enum lg_role)c->role, w->cfg->host, w->cfg->port, sid, key);
	}
	c->fill_len += (uint32_t)n;
	c->state = CS_UPGRADE;
	mark_dirty(w, c);
}

static void tls_step(struct lg_worker *w, struct conn *c)
{
	char why[256];
	int rc = lgtls_handshake(c->tls, why, sizeof why);
	mark_dirty(w, c); /* the handshake may have produced records to send */
	if (rc < 0) {
		w->st.errors_handshake++;
		say_error(w, c, "%s", why);
		conn_kill(w, c);
	} else if (rc == 1) {
		send_hello(w, c);
	}
}

/* TLS: move plaintext out of BoringSSL into `in` and process it, while it fits. */
static void tls_input(struct lg_worker *w, struct conn *c)
{
	if (c->state == CS_TLS) {
		tls_step(w, c);
		if (c->state != CS_UPGRADE)
			return;
	}
	for (uint32_t i = 0; i < LG_TLS_PULLS_PER_INPUT_MAX && c->state != CS_DEAD; i++) {
		bool filled = false;
		while (c->in_len < c->in_cap) {
			long r = lgtls_read(c->tls, c->in + c->in_len, c->in_cap - c->in_len);
			if (r > 0) {
				c->in_len += (uint32_t)r;
				continue;
			}
			if (r == 0)
				break;
			if (c->state == CS_CLOSING && is_hs(w) && c->in_len > 0) {
				/* the peer's close frame and its close_notify came together:
				 * count the echo before ending the connection */
				conn_input(w, c);
				if (c->state == CS_DEAD)
					return;
			}
			if (c->state == CS_CLOSING) {
				conn_kill(w, c);
			} else {
				count_code(w->st.close_codes, 1006);
				conn_error(w, c, &w->st.errors_closed, "TLS connection ended (%s)", r == -1 ? "close_notify" : "error");
			}
			return;
		}
		filled = c->in_len >= c->in_cap;
		conn_input(w, c);
		mark_dirty(w, c); /* SSL_read may have queued records (alerts, key updates) */
		if (!filled || c->paused)
			break;
	}
}

static void input(struct lg_worker *w, struct conn *c)
{
	if (c->tls)
		tls_input(w, c);
	else
		conn_input(w, c);
}

/* ---- completions ---- */

static void on_connect(struct lg_worker *w, struct conn *c, int res)
{
	c->connect_inflight = false;
	if (c->state != CS_CONNECTING) {
		hs_maybe_park(w, c);
		return;
	}
	if (res < 0) {
		count_code(w->st.errnos, (uint32_t)-res);
		conn_error(w, c, &w->st.errors_connect, "connect: %s", strerror(-res));
		return;
	}
	if (w->cfg->transport == LG_TR_WSS) {
		char why[256];
		c->tls = lgtls_new(w->cfg->host, why, sizeof why);
		if (c->tls == NULL) {
			conn_error(w, c, &w->st.errors_handshake, "%s", why);
			return;
		}
		c->state = CS_TLS;
		tls_step(w, c);
	} else {
		send_hello(w, c);
	}
	arm_recv(w, c);
}

static void on_recv(struct lg_worker *w, struct conn *c, int res)
{
	c->recv_armed = false;
	if (c->state == CS_DEAD) {
		hs_maybe_park(w, c);
		return;
	}
	if (res <= 0) {
		if (c->state == CS_CLOSING) {
			conn_kill(w, c);
			return;
		}
		if (res < 0)
			count_code(w->st.errnos, (uint32_t)-res);
		if (c->state == CS_UPGRADE || c->state == CS_TLS) {
			conn_error(w, c, &w->st.errors_handshake, "connection closed before the %s answer",
				   is_raw(w) ? "hello" : "upgrade");
			return;
		}
		count_code(w->st.close_codes, 1006);
		conn_error(w, c, &w->st.errors_closed, "connection lost without a close frame (%s)", res ? strerror(-res) : "EOF");
		return;
	}
	if (c->tls)
		lgtls_feed(c->tls, c->rx, (size_t)res);
	else
		c->in_len += (uint32_t)res;
	input(w, c);
	arm_recv(w, c);
}

static void on_send(struct lg_worker *w, struct conn *c, int res)
{
	c->send_inflight = false;
	if (c->state == CS_DEAD) {
		hs_maybe_park(w, c);
		return;
	}
	if (res < 0) {
		if (c->state == CS_CLOSING) {
			conn_kill(w, c);
			return;
		}
		count_code(w->st.errnos, (uint32_t)-res);
		conn_error(w, c, &w->st.errors_closed, "send failed: %s", strerror(-res));
		return;
	}
	c->wire_off += (uint32_t)res;
	if (c->wire_off < c->wire_len) {
		submit_send(w, c);
		return;
	}
	if (c->paused) {
		/* room again: send what is queued, then carry on parsing */
		c->paused = false;
		conn_flush(w, c);
		input(w, c);
		arm_recv(w, c);
	} else if (c->role == LG_ROLE_PHONE) {
		phone_pump(w, c);
	}
	mark_dirty(w, c);
}

/* ---- handshakes mode: the slots ---- */

/* Start every parked slot again with a fresh connection, while the budget lasts. */
static void hs_restart(struct lg_worker *w)
{
	while (w->hs_parked_n > 0 && w->st.hs_started < w->hs_budget && !stop_requested(w)) {
		struct conn *c = &w->conns[w->hs_parked[--w->hs_parked_n]];
		ASSERT(c->parked && c->state == CS_DEAD && !c->recv_armed && !c->send_inflight &&
		       !c->connect_inflight);
		c->parked = false;
		c->state = CS_QUEUED;
		c->in_len = 0;
		c->fill_len = 0;
		c->fill_idx = 0;
		c->wire = NULL;
		c->wire_len = c->wire_off = 0;
		c->paused = false;
		c->hs_cycle++;
		c->hs_start_ns = w->now_ns;
		c->hs_deadline_ns = w->now_ns + w->cfg->connect_timeout_ns;
		w->st.hs_started++;
		conn_start(w, c); /* a failure here kills and parks it again: counted, not retried this round */
		if (c->state == CS_DEAD)
			break;
	}
}

/* A connection past its own deadline (--connect-timeout from its connect) is counted
 * and ended, so a slot the relay never answers does not sit out the rest of the run. */
static void hs_scan_deadlines(struct lg_worker *w)
{
	if (w->now_ns < w->next_hs_scan_ns)
		return;
	w->next_hs_scan_ns = w->now_ns + LG_HS_SCAN_INTERVAL_NS;
	for (uint32_t i = 0; i < w->conns_n; i++) {
		struct conn *c = &w->conns[i];
		if (c->state == CS_DEAD || w->now_ns < c->hs_deadline_ns)
			continue;
		if (c->state == CS_CLOSING)
			conn_error(w, c, &w->st.errors_closed, "close not answered within --connect-timeout");
		else
			conn_error(w, c, &w->st.errors_handshake, "handshake not done within --connect-timeout");
	}
}

/* ---- phases ---- */

static void begin_drain(struct lg_worker *w);

/* The common start has come (every loop's connections have settled): traffic, and
 * the warm-up and measurement windows, begin at the same instant in every loop. */
static void start_traffic(struct lg_worker *w, uint64_t t0_ns)
{
	/* written by the last loop in before it published t0 (release), read after */
	w->t_connect_end_ns = w->run->t_connected_ns;
	w->t_traffic0_ns = t0_ns;
	w->t_measure0_ns = t0_ns + w->cfg->warmup_ns;
	w->t_measure1_ns = w->t_measure0_ns + w->cfg->duration_ns;
	w->phase = PH_WARMUP;
	if (w->run->nothing_to_measure) {
		w->t_measure1_ns = w->t_measure0_ns = w->now_ns;
		begin_drain(w);
		return;
	}
	if (is_hs(w)) {
		hs_restart(w);
	} else if (w->cfg->mode == LG_MODE_OPEN) {
		long double end = (long double)(w->t_measure1_ns - w->t_traffic0_ns) * (long double)w->rate_per_s /
				  (long double)NS_PER_S;
		w->open_end_k = (uint64_t)end;
		w->open_next_k = 0;
	} else if (w->cfg->mode == LG_MODE_CLOSED) {
		for (uint32_t p = 0; p < w->phones_n; p++)
			phone_pump(w, phone_conn(w, p));
	}
}

/* Every connection of this loop has settled (or --connect-timeout passed): count the
 * loop in. The last one in sees every loop's figures, says what the run got, and
 * fixes the common traffic start, a little ahead when there are other loops so that
 * each of them (looking every LG_RENDEZVOUS_POLL_NS) has seen it before it comes. */
static void arrive(struct lg_worker *w)
{
	struct lg_run *r = w->run;
	const struct lg_config *cfg = w->cfg;
	w->arrived = true;
	__atomic_add_fetch(&r->ready_binaries, w->ready_binaries, __ATOMIC_RELAXED);
	__atomic_add_fetch(&r->ready_phones, w->ready_phones, __ATOMIC_RELAXED);
	/* acq_rel: the last loop in sees every other loop's sums above */
	if (__atomic_add_fetch(&r->arrived, 1, __ATOMIC_ACQ_REL) < r->threads)
		return;
	uint32_t rb = __atomic_load_n(&r->ready_binaries, __ATOMIC_RELAXED);
	uint32_t rp = __atomic_load_n(&r->ready_phones, __ATOMIC_RELAXED);
	uint32_t not_ready = __atomic_load_n(&r->not_ready, __ATOMIC_RELAXED);
	uint32_t target = cfg->binaries * (1u + cfg->phones_per_binary);
	if (!cfg->quiet && not_ready)
		fprintf(stderr, "loadgen: --connect-timeout passed: %u connections not ready (counted as errors)\n",
			not_ready);
	r->t_connected_ns = w->now_ns;
	if (cfg->mode == LG_MODE_HANDSHAKES) {
		/* nothing connects before traffic: the slots start with it */
		if (!cfg->quiet)
			fprintf(stderr, "loadgen: %u connections at a time, each a new connection and upgrade; starting\n",
				cfg->binaries);
		__atomic_store_n(&r->t_traffic0_ns, w->now_ns + (r->threads > 1 ? LG_START_LEAD_NS : 0),
				 __ATOMIC_RELEASE);
		return;
	}
	r->nothing_to_measure = rb == 0 || (cfg->mode != LG_MODE_IDLE && rp == 0);
	if (r->nothing_to_measure)
		fprintf(stderr, "loadgen: nothing to measure: %u binaries and %u phones ready\n", rb, rp);
	else if (!cfg->quiet)
		fprintf(stderr, "loadgen: %u/%u connections ready in %.2f s; %s\n", rb + rp, target,
			(double)w->now_ns / 1e9, cfg->mode == LG_MODE_IDLE ? "holding them idle" : "traffic starts");
	uint64_t t0 = w->now_ns + (r->threads > 1 ? LG_START_LEAD_NS : 0);
	__atomic_store_n(&r->t_traffic0_ns, t0, __ATOMIC_RELEASE);
}

static void connect_deadline_passed(struct lg_worker *w)
{
	uint32_t stuck = 0;
	for (uint32_t i = 0; i < w->conns_n; i++) {
		struct conn *c = &w->conns[i];
		if (c->settled)
			continue;
		stuck++;
		if (c->state == CS_OPEN)
			w->st.errors_register++; /* upgraded, but the probe never came back */
		else
			w->st.errors_connect++;
		if (c->state != CS_DEAD) {
			conn_kill(w, c);
		} else {
			settle(w, c, false);
		}
	}
	/* the last loop to arrive reports the total */
	__atomic_add_fetch(&w->run->not_ready, stuck, __ATOMIC_RELAXED);
}

static void open_advance(struct lg_worker *w)
{
	long double el = (long double)(w->now_ns - w->t_traffic0_ns) * (long double)w->rate_per_s /
			 (long double)NS_PER_S;
	uint64_t count = (uint64_t)el + 1;
	if (count > w->open_end_k)
		count = w->open_end_k;
	if (count <= w->open_next_k)
		return;
	uint64_t n = w->phones_n;
	uint64_t from = w->open_next_k;
	uint64_t visits = count - from >= n ? n : count - from;
	for (uint64_t v = 0; v < visits; v++) {
		uint32_t p = (uint32_t)((from + v) % n);
		struct conn *c = phone_conn(w, p);
		c->due_seq = 1 + (count > p ? (count - p - 1) / n + 1 : 0);
		phone_pump(w, c);
	}
	w->open_next_k = count;
}

static void begin_drain(struct lg_worker *w)
{
	w->measured_ns = (w->now_ns > w->t_measure0_ns ? w->now_ns : w->t_measure0_ns) - w->t_measure0_ns;
	if (w->now_ns < w->t_measure1_ns)
		w->t_measure1_ns = w->now_ns; /* stopped early (signal): the window ends now; each
						 loop notices within one iteration, and the report
						 takes the longest window */
	w->phase = PH_DRAIN;
	w->t_phase_deadline_ns = w->now_ns + w->cfg->drain_ns;
	w->next_drain_check_ns = 0;
}

static bool drained(struct lg_worker *w)
{
	if (is_hs(w))
		return w->handshakes_inflight == 0 && w->open_n == 0;
	for (uint32_t p = 0; p < w->phones_n; p++) {
		const struct conn *c = phone_conn(w, p);
		if (c->state == CS_OPEN && c->next_seq > c->expect_seq)
			return false;
	}
	return true;
}

static void begin_close(struct lg_worker *w)
{
	for (uint32_t p = 0; p < w->phones_n; p++) {
		struct conn *c = phone_conn(w, p);
		if (c->ready && c->next_seq > c->expect_seq) {
			w->st.lost += c->next_seq - c->expect_seq;
			c->expect_seq = c->next_seq;
		}
	}
	w->phase = PH_CLOSE;
	w->t_phase_deadline_ns = w->now_ns + LG_CLOSE_WAIT_NS;
	for (uint32_t i = 0; i < w->conns_n; i++) {
		struct conn *c = &w->conns[i];
		if (c->state == CS_OPEN) {
			if (is_raw(w)) {
				conn_kill(w, c);
			} else {
				put_close(w, c, 1000);
				c->state = CS_CLOSING;
			}
		} else if (c->state != CS_DEAD && c->state != CS_CLOSING) {
			if (is_hs(w)) /* the drain was its time to finish */
				conn_error(w, c, &w->st.errors_handshake, "handshake not done by the end of --drain");
			else
				conn_kill(w, c);
		}
	}
}

static void finish(struct lg_worker *w)
{
	for (uint32_t i = 0; i < w->conns_n; i++)
		conn_kill(w, &w->conns[i]);
	w->phase = PH_DONE;
}

/* Handshakes mode, warm-up and window: end what overran, start the parked slots; once
 * --count connections have started and every slot has ended, the window ends. */
static void hs_step(struct lg_worker *w)
{
	hs_scan_deadlines(w);
	hs_restart(w);
	if (w->st.hs_started >= w->hs_budget && w->hs_parked_n == w->conns_n)
		begin_drain(w);
}

static void phase_step(struct lg_worker *w)
{
	if (stop_requested(w) && w->phase <= PH_MEASURE) {
		if (w->phase == PH_CONNECT)
			w->t_measure0_ns = w->t_measure1_ns = w->now_ns;
		begin_drain(w);
	}
	switch (w->phase) {
	case PH_CONNECT:
		for (uint32_t i = 0; i < w->connect_concurrency && w->queue_head < w->queue_tail &&
				     w->handshakes_inflight < w->connect_concurrency;
		     i++) {
			struct conn *c = &w->conns[w->queue[w->queue_head++]];
			if (c->state == CS_QUEUED)
				conn_start(w, c);
		}
		if (!w->arrived) {
			if (w->settled_n == w->conns_n || is_hs(w)) {
				arrive(w);
			} else if (w->now_ns >= w->t_phase_deadline_ns) {
				connect_deadline_passed(w);
				arrive(w);
			}
		}
		if (w->arrived) {
			uint64_t t0 = __atomic_load_n(&w->run->t_traffic0_ns, __ATOMIC_ACQUIRE);
			if (t0 != LG_TIME_UNSET && w->now_ns >= t0)
				start_traffic(w, t0);
		}
		break;
	case PH_WARMUP:
		if (w->now_ns >= w->t_measure0_ns)
			w->phase = PH_MEASURE;
		if (w->cfg->mode == LG_MODE_OPEN)
			open_advance(w);
		if (is_hs(w))
			hs_step(w);
		break;
	case PH_MEASURE:
		if (is_hs(w) && w->now_ns < w->t_measure1_ns)
			hs_step(w);
		if (w->phase != PH_MEASURE)
			break; /* --count reached: hs_step ended the window */
		if (w->now_ns >= w->t_measure1_ns) {
			if (w->cfg->mode == LG_MODE_OPEN)
				open_advance(w); /* the last frames intended inside the window */
			begin_drain(w);
		} else if (w->cfg->mode == LG_MODE_OPEN) {
			open_advance(w);
		}
		break;
	case PH_DRAIN:
		if (is_hs(w))
			hs_scan_deadlines(w);
		if (w->now_ns >= w->t_phase_deadline_ns) {
			begin_close(w);
		} else if (w->now_ns >= w->next_drain_check_ns) {
			w->next_drain_check_ns = w->now_ns + DRAIN_CHECK_NS;
			if (drained(w))
				begin_close(w);
		}
		break;
	case PH_CLOSE:
		if (w->open_n == 0 || w->now_ns >= w->t_phase_deadline_ns)
			finish(w);
		break;
	case PH_DONE:
		break;
	}
}

static uint64_t wait_ns(struct lg_worker *w)
{
	uint64_t wake = w->now_ns + LG_WAIT_NS_MAX;
	if (!w->cfg->quiet)
		wake = MIN(wake, w->next_publish_ns);
	switch (w->phase) {
	case PH_CONNECT:
		wake = MIN(wake, w->t_phase_deadline_ns);
		if (w->queue_head < w->queue_tail && w->handshakes_inflight < w->connect_concurrency)
			wake = w->now_ns;
		if (w->arrived) {
			/* waiting for the other loops, then for the common start */
			uint64_t t0 = __atomic_load_n(&w->run->t_traffic0_ns, __ATOMIC_ACQUIRE);
			wake = MIN(wake, t0 != LG_TIME_UNSET ? t0 : w->now_ns + LG_RENDEZVOUS_POLL_NS);
		}
		break;
	case PH_WARMUP:
	case PH_MEASURE:
		wake = MIN(wake, w->phase == PH_WARMUP ? w->t_measure0_ns : w->t_measure1_ns);
		if (w->cfg->mode == LG_MODE_OPEN && w->open_next_k < w->open_end_k)
			wake = MIN(wake, open_intended_ns(w, w->open_next_k));
		break;
	case PH_DRAIN:
		wake = MIN(wake, MIN(w->t_phase_deadline_ns, w->now_ns + DRAIN_CHECK_NS));
		break;
	case PH_CLOSE:
		wake = MIN(wake, w->t_phase_deadline_ns);
		break;
	case PH_DONE:
		wake = w->now_ns;
		break;
	}
	return wake > w->now_ns ? wake - w->now_ns : 0;
}

uint64_t lg_errors_total(const struct lg_stats *st)
{
	return st->errors_connect + st->errors_handshake + st->errors_register + st->errors_closed +
	       st->errors_protocol;
}

/* Hand this loop's progress figures to the main thread, which prints one line for all
 * loops once a second. The interval counters move over (and restart here), so the
 * main thread's sum covers every frame exactly once whatever the timing. */
static void publish(struct lg_worker *w)
{
	struct lg_progress *p = &w->pub;
	pthread_mutex_lock(&w->pub_lock);
	p->phase = w->phase;
	p->ready = w->ready_binaries + w->ready_phones;
	p->handshaking = w->handshakes_inflight;
	p->open_n = w->open_n;
	p->errors = lg_errors_total(&w->st);
	p->lost = w->st.lost;
	p->corrupted = w->st.corrupted;
	p->iv_round_trips += w->st.iv_round_trips;
	p->iv_p2b += w->st.iv_p2b;
	p->iv_b2p += w->st.iv_b2p;
	p->iv_handshakes += w->st.iv_handshakes;
	hist_merge(&p->iv_lat, &w->st.iv_lat);
	pthread_mutex_unlock(&w->pub_lock);
	w->st.iv_round_trips = w->st.iv_p2b = w->st.iv_b2p = w->st.iv_handshakes = 0;
	hist_reset(&w->st.iv_lat);
}

struct cqe_copy {
	uint64_t ud;
	int32_t res;
};

static void reap(struct lg_worker *w)
{
	struct cqe_copy batch[LG_CQE_BATCH]; /* 16 KiB of stack: per thread by construction */
	for (uint32_t round = 0; round < LG_CQE_BATCHES_PER_ITERATION_MAX; round++) {
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;
		io_uring_for_each_cqe(&w->ring, head, cqe)
		{
			batch[n].ud = cqe->user_data;
			batch[n].res = cqe->res;
			if (++n == LG_CQE_BATCH)
				break;
		}
		if (n == 0)
			return;
		io_uring_cq_advance(&w->ring, n);
		for (unsigned i = 0; i < n; i++) {
			uint64_t idx = batch[i].ud >> 4;
			ASSERT(idx < w->conns_n);
			struct conn *c = &w->conns[idx];
			switch (batch[i].ud & 15) {
			case OP_CONNECT:
				on_connect(w, c, batch[i].res);
				break;
			case OP_RECV:
				on_recv(w, c, batch[i].res);
				break;
			case OP_SEND:
				on_send(w, c, batch[i].res);
				break;
			default:
				ASSERT(!"unknown completion");
			}
		}
		if (n < LG_CQE_BATCH)
			return;
	}
}

static void flush_dirty(struct lg_worker *w)
{
	/* conn_flush never marks anything dirty, so the list cannot grow under us */
	uint32_t n = w->dirty_n;
	for (uint32_t i = 0; i < n; i++) {
		struct conn *c = &w->conns[w->dirty[i]];
		c->dirty = false;
		conn_flush(w, c);
	}
	ASSERT(w->dirty_n == n);
	w->dirty_n = 0;
}

static uint64_t pow2_at_least(uint64_t v)
{
	uint64_t p = 1;
	while (p < v)
		p <<= 1;
	return p;
}

/* The ring is made by the thread that uses it: IORING_SETUP_SINGLE_ISSUER ties it to
 * its creator, and a registered ring fd is only valid in the thread that registered it. */
static bool setup_ring(struct lg_worker *w)
{
	char why[URING_WHY_BYTES];
	unsigned entries = (unsigned)pow2_at_least(MIN(MAX(w->conns_n, LG_RING_ENTRIES_MIN), LG_RING_ENTRIES_MAX));
	if (uring_setup(&w->ring, entries, &w->run->features, why) < 0) {
		fprintf(stderr, "loadgen: %s\n", why);
		return false;
	}
	return true;
}

static void fail_run(struct lg_worker *w)
{
	__atomic_store_n(&w->run->failed, true, __ATOMIC_RELAXED);
}

int lg_run(struct lg_worker *w)
{
	struct lg_run *r = w->run;
	bool ring_up = setup_ring(w);
	if (!ring_up)
		fail_run(w);
	/* Nobody connects before every loop has its ring: a loop that could not start must
	 * not leave the others waiting for it at the traffic start. */
	pthread_barrier_wait(&r->rings_ready);
	if (__atomic_load_n(&r->failed, __ATOMIC_RELAXED)) {
		if (ring_up)
			io_uring_queue_exit(&w->ring);
		return -1;
	}
	w->t_origin_abs_ns = r->t_origin_abs_ns;
	w->rng = w->t_origin_abs_ns ^ ((uint64_t)getpid() << 32) ^ 0x9E3779B97F4A7C15ull ^
		 ((uint64_t)w->index * 0xD1B54A32D192ED03ull);
	w->t_measure0_ns = w->t_measure1_ns = UINT64_MAX;
	w->phase = PH_CONNECT;
	w->now_ns = now_rel(w);
	/* from the common origin: every loop gives up on its connects at the same time */
	w->t_phase_deadline_ns = w->cfg->connect_timeout_ns;
	w->next_publish_ns = w->now_ns + LG_PUBLISH_INTERVAL_NS;
	hist_reset(&w->st.lat);
	hist_reset(&w->st.iv_lat);
	hist_reset(&w->st.hs_lat);
	if (is_hs(w)) {
		/* every slot waits for the traffic start, then connects (hs_restart) */
		for (uint32_t i = 0; i < w->conns_n; i++) {
			w->conns[i].state = CS_DEAD; /* no connection yet: nothing in the ring */
			w->conns[i].parked = true;
			w->hs_parked[w->hs_parked_n++] = i;
		}
	} else {
		for (uint32_t b = 0; b < w->binaries_n; b++)
			enqueue(w, &w->conns[b]);
	}
	/* Every phase has a deadline; this is the backstop if one were ever missed. */
	uint64_t hard_stop_ns = w->cfg->connect_timeout_ns + LG_START_LEAD_NS + w->cfg->warmup_ns +
				w->cfg->duration_ns + w->cfg->drain_ns + LG_CLOSE_WAIT_NS + 10 * NS_PER_S;

	while (w->phase != PH_DONE) {
		w->now_ns = now_rel(w);
		if (w->now_ns > hard_stop_ns) {
			fprintf(stderr, "loadgen: internal: the run overran every deadline; stopping\n");
			if (w->phase < PH_CLOSE)
				begin_close(w);
			finish(w);
			break;
		}
		phase_step(w);
		if (w->phase == PH_DONE)
			break;
		flush_dirty(w);
		/* how long our own work took since the last wake-up: a stall here delays
		 * every frame, which the figure makes visible */
		uint64_t busy_end_ns = now_rel(w);
		if (in_window(w, busy_end_ns) && busy_end_ns - w->now_ns > w->st.loop_max_ns)
			w->st.loop_max_ns = busy_end_ns - w->now_ns;
		uint64_t t = wait_ns(w);
		int rc;
		if (t == 0) {
			rc = io_uring_submit_and_get_events(&w->ring);
		} else {
			struct __kernel_timespec ts = { .tv_sec = (long long)(t / NS_PER_S),
							.tv_nsec = (long long)(t % NS_PER_S) };
			struct io_uring_cqe *cqe;
			rc = io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, &ts, NULL);
		}
		if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
			fprintf(stderr, "loadgen: io_uring_enter: %s\n", strerror(-rc));
			fail_run(w); /* the other loops wind down and the run exits 1 */
			return -1;
		}
		w->now_ns = now_rel(w);
		reap(w);
		if (!w->cfg->quiet && w->now_ns >= w->next_publish_ns) {
			publish(w);
			w->next_publish_ns = w->now_ns + LG_PUBLISH_INTERVAL_NS;
		}
	}
	if (!w->cfg->quiet)
		publish(w);
	io_uring_queue_exit(&w->ring);
	return 0;
}
