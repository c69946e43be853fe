/*
 * loop.c - one worker's io_uring event loop.
 *
 * Reading order: set-up, the provided-buffer ring, arming (accept, wake), completions
 * (accept, recv, send, wake), timers, shutdown, the loop itself. Everything that
 * happens to a connection after its bytes arrive lives in conn.c and the phase files
 * (engine/internal.h lists them).
 */
#include "engine/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "engine/net.h"
#include "transport/ktls.h"
#include "ws/ws_frame.h"

/* ------------------------------------------------------------------ set-up */

struct worker *worker_create(const struct config *cfg, struct worker_group *group, uint32_t id,
			     const char *listen_addr, struct tls_server *tls, uint64_t buffer_budget_bytes,
			     const struct engine_hooks *hooks, void *app_shared, char why[URING_WHY_BYTES])
{
	ASSERT(id < group->n);
	struct worker *w = calloc_aligned(sizeof *w); /* stats: own cache lines */
	if (w == NULL) {
		snprintf(why, URING_WHY_BYTES, "out of memory");
		return NULL;
	}
	w->cfg = cfg;
	w->hooks = hooks;
	w->group = group;
	w->tls_server = tls;
	int ktls_err;
	w->ktls_available = tls != NULL && ktls_probe(&ktls_err) == KTLS_OK;
	/* no name; room for the record type; the kernel copies this header at each arm */
	w->ktls_msg = (struct msghdr){ .msg_controllen = KTLS_CMSG_BYTES };
	w->id = id;
	for (uint32_t i = 0; i < WORKER_LISTENERS_MAX; i++)
		w->listen_fds[i] = -1;
	w->wake_fd = -1;
	if (!uring_probe(&w->feat, why))
		goto fail;
	/* Batching needs the kernel's minimum wait (6.12); without it a worker wakes at once. */
	w->batch_wait_us = w->feat.min_wait ? cfg->batch_wait_us : 0;
	STAT_SET(w->stats.batch_wait_us, w->batch_wait_us);
	if (group->n > 1 && !w->feat.msg_ring) {
		snprintf(why, URING_WHY_BYTES,
			 "io_uring lacks IORING_OP_MSG_RING (kernel 5.18+), which hands connections between workers; use --workers 1");
		goto fail;
	}

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
	if (w->ktls_available && (w->ktls_sec = calloc(w->conn_cap, sizeof *w->ktls_sec)) == NULL) {
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
	w->listen_fds[0] = net_listen(listen_addr, LISTEN_BACKLOG, true, why);
	if (w->listen_fds[0] < 0)
		goto fail;
	w->nlisten = 1;

	bufpool_init(&w->pool, buffer_budget_bytes);
	w->iter_ns = monotonic_ns();
	w->now_ms = w->start_ms = w->iter_ns / 1000000u;
	timer_wheel_init(&w->tw, w->now_ms);
	w->accept_backoff.kind = TW_KIND_ACCEPT_BACKOFF;
	w->cert_poll.kind = TW_KIND_CERT_POLL;
	if (tls != NULL)
		w->cert_gen_seen = tls_server_cert_generation(tls);
	w->app = hooks->create(w, cfg, app_shared);
	if (w->app == NULL) {
		snprintf(why, URING_WHY_BYTES, "out of memory for the application state");
		goto fail;
	}
	return w;

fail:
	if (w->listen_fds[0] >= 0)
		close(w->listen_fds[0]);
	if (w->wake_fd >= 0)
		close(w->wake_fd);
	free(w->bufs);
	free(w->conns);
	free(w->free_idx);
	free(w->ktls_sec);
	free(w);
	return NULL;
}

/* Close every listener. shutdown() first takes a socket out of LISTEN whoever still
 * holds it (a multishot accept until its cancel completes, a ring torn down after the
 * process exits); but a listener handed over (engine/net.h) is the successor's too, and
 * only our descriptor goes. */
static void close_listeners(struct worker *w)
{
	bool shared = net_handed_over();
	for (uint32_t i = 0; i < w->nlisten; i++) {
		if (w->listen_fds[i] < 0)
			continue;
		if (!shared)
			shutdown(w->listen_fds[i], SHUT_RDWR);
		close(w->listen_fds[i]);
		w->listen_fds[i] = -1;
	}
}

bool worker_add_listener(struct worker *w, int fd)
{
	if (w->nlisten >= WORKER_LISTENERS_MAX)
		return false;
	w->listen_fds[w->nlisten++] = fd;
	return true;
}

void worker_destroy(struct worker *w)
{
	for (uint32_t i = 0; i < w->nheld; i++) /* a loop that never drained (fatal) */
		upgraded_free(w->held[i].u);
	free(w->held);
	w->hooks->destroy(w->app);
	close_listeners(w); /* out of LISTEN even if a dead ring still holds them */
	close(w->wake_fd);
	bufpool_destroy(&w->pool);
	free(w->bufs);
	free(w->conns);
	free(w->free_idx);
	free(w->ktls_sec);
	free(w);
}

void worker_stop(struct worker *w)
{
	__atomic_store_n(&w->stop_requested, true, __ATOMIC_RELEASE);
	uint64_t one = 1;
	/* eventfd writes of 8 bytes cannot be partial; EAGAIN only if the counter is
	 * saturated, which already means "stop" is pending. */
	(void)!write(w->wake_fd, &one, sizeof one);
}

/* ------------------------------------------------------------------ provided buffers */

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

/* The ring belongs to the thread that drives it: with SINGLE_ISSUER and a registered
 * ring fd, only the creating task may submit, so this runs on the worker thread. */
static bool ring_init(struct worker *w, char why[URING_WHY_BYTES])
{
	int rc = uring_setup(&w->ring, RING_ENTRIES, &w->feat, why);
	if (rc < 0)
		return false;
	w->ring_registered = rc == 1;
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

/* ------------------------------------------------------------------ arming */

void worker_stop_accepting(struct worker *w)
{
	__atomic_store_n(&w->accept_off_requested, true, __ATOMIC_RELEASE);
	uint64_t one = 1;
	(void)!write(w->wake_fd, &one, sizeof one);
}

static void cancel_accept(struct worker *w)
{
	for (uint32_t i = 0; i < w->nlisten; i++) {
		if (!w->accept_armed[i])
			continue;
		struct io_uring_sqe *sqe = uring_get_sqe(&w->ring);
		io_uring_prep_cancel64(sqe, UD(OP_ACCEPT, i, 0), 0);
		io_uring_sqe_set_data64(sqe, UD(OP_IGNORE, 0, 0));
	}
}

static void arm_accept(struct worker *w)
{
	if (w->stopping || w->accept_off || tw_node_scheduled(&w->accept_backoff))
		return;
	for (uint32_t i = 0; i < w->nlisten; i++) {
		if (w->accept_armed[i] || w->listen_fds[i] < 0)
			continue;
		struct io_uring_sqe *sqe = uring_get_sqe(&w->ring);
		io_uring_prep_multishot_accept(sqe, w->listen_fds[i], NULL, NULL, SOCK_CLOEXEC);
		io_uring_sqe_set_data64(sqe, UD(OP_ACCEPT, i, 0));
		w->accept_armed[i] = true;
	}
}

/* A successor serves our listeners now: stop taking connections from them, but serve
 * the ones already accepted (a connection the cancelled accept still delivers is
 * served too); the drain follows on worker_stop.
 *
 * A multishot accept waits on the listener as an exclusive waiter: a new connection
 * wakes only the first one queued, and ours was queued before the successor's. A
 * connection that arrives while our accept is being cancelled wakes ours, which then
 * ends without accepting it: it would wait in the queue, the successor never woken,
 * until the next connection arrives (a dial stalled for seconds; ADR 0018). So each
 * listener whose accept was armed keeps its descriptor until that accept has ended,
 * then gets one sweep: a fresh multishot accept takes what is queued at once and is
 * cancelled right away. Queued behind the successor's waiter, it is never the one
 * woken, so its own cancel loses nothing. Then the descriptor closes. */
enum { SWEEP_NONE, SWEEP_AFTER_CANCEL, SWEEP_RUNNING, SWEEP_DONE };

static void stop_accepting(struct worker *w)
{
	if (w->accept_off)
		return;
	w->accept_off = true;
	for (uint32_t i = 0; i < w->nlisten; i++) {
		if (w->listen_fds[i] < 0)
			continue;
		if (w->accept_armed[i]) {
			w->accept_sweep[i] = SWEEP_AFTER_CANCEL;
		} else {
			close(w->listen_fds[i]); /* no waiter of ours: nothing to sweep */
			w->listen_fds[i] = -1;
		}
	}
	cancel_accept(w);
}

/* Listener li's accept ended after the hand-over (see stop_accepting). */
static void sweep_listener(struct worker *w, uint32_t li)
{
	if (w->stopping || w->listen_fds[li] < 0)
		return; /* the drain closed it */
	if (w->accept_sweep[li] == SWEEP_AFTER_CANCEL) {
		w->accept_sweep[li] = SWEEP_RUNNING;
		uring_prep_accept_sweep(&w->ring, w->listen_fds[li], UD(OP_ACCEPT, li, 0), UD(OP_IGNORE, 0, 0), true);
		w->accept_armed[li] = true;
	} else if (w->accept_sweep[li] == SWEEP_RUNNING) {
		w->accept_sweep[li] = SWEEP_DONE;
		close(w->listen_fds[li]);
		w->listen_fds[li] = -1;
		for (uint32_t i = 0; i < w->nlisten; i++)
			if (w->accept_sweep[i] == SWEEP_AFTER_CANCEL || w->accept_sweep[i] == SWEEP_RUNNING)
				return;
		if (w->swept_accepts > 0) /* each would have waited for the next dial */
			LOG_INFO("hand-over sweep took connections the cancelled accepts left queued",
				 KV_UINT("connections", w->swept_accepts));
	}
}

static void arm_wake(struct worker *w)
{
	if (w->wake_armed)
		return;
	struct io_uring_sqe *sqe = uring_get_sqe(&w->ring);
	io_uring_prep_read(sqe, w->wake_fd, &w->wake_value, sizeof w->wake_value, 0);
	io_uring_sqe_set_data64(sqe, UD(OP_WAKE, 0, 0));
	w->wake_armed = true;
}

/* ------------------------------------------------------------------ completions */

static void on_accept(struct worker *w, struct io_uring_cqe *cqe)
{
	uint32_t li = UD_IDX(io_uring_cqe_get_data64(cqe));
	ASSERT(li < w->nlisten);
	if (cqe->res >= 0 && w->accept_sweep[li] == SWEEP_RUNNING)
		w->swept_accepts++;
	if (!(cqe->flags & IORING_CQE_F_MORE)) {
		w->accept_armed[li] = false;
		if (w->accept_off)
			sweep_listener(w, li);
	}
	int fd = cqe->res;
	if (fd < 0) {
		if (fd == -ECANCELED || fd == -EAGAIN || fd == -ECONNABORTED || fd == -EINTR)
			return;
		/* EMFILE/ENFILE/ENOMEM repeat at once if re-armed at once: back off, and log
		 * once per episode (until an accept succeeds again) so a descriptor storm
		 * cannot flood stderr; the counter tells how many failed. */
		STAT_INC(w->stats.accept_errors);
		if (!tw_node_scheduled(&w->accept_backoff)) {
			if (!w->accept_failing)
				LOG_WARN("accept failed", KV_STR("err", strerror(-fd)));
			w->accept_failing = true;
			cancel_accept(w);
			timer_wheel_schedule(&w->tw, &w->accept_backoff, w->now_ms + ACCEPT_BACKOFF_MS);
		}
		return;
	}
	STAT_INC(w->stats.accepts);
	if (w->accept_failing) {
		w->accept_failing = false;
		LOG_INFO("accept recovered");
	}
	struct conn *c = w->stopping ? NULL : conn_alloc(w, fd, NULL);
	if (c == NULL) {
		/* Pool exhausted: refuse at once rather than queue unbounded state. */
		STAT_INC(w->stats.accept_pool_full);
		close(fd);
		return;
	}
	conn_arm_recv(w, c);
}

static void on_recv(struct worker *w, struct conn *c, struct io_uring_cqe *cqe)
{
	if (!(cqe->flags & IORING_CQE_F_MORE))
		c->recv_armed = false;
	int res = cqe->res;
	if (res > 0) {
		ASSERT(cqe->flags & IORING_CQE_F_BUFFER);
		unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
		uint8_t *buf = w->bufs + (size_t)bid * RECV_BUFFER_BYTES;
		if (c->ktls)
			ktls_phase_input(w, c, buf, (size_t)res); /* recvmsg output: header, record type, bytes */
		else
			conn_input(w, c, buf, (size_t)res);
		return_buffer(w, bid);
	} else if (res == 0) {
		/* EOF. A draining connection was waiting for exactly this. */
		if (c->tls != NULL && !tls_conn_established(c->tls))
			tls_conn_fail(c->tls, TLS_ERR_EOF);
		conn_note_end(c, CONN_END_EOF);
		conn_kill(w, c);
	} else if (res == -ENOBUFS) {
		STAT_INC(w->stats.recv_enobufs); /* re-armed below: submitted after this iteration publishes the buffers it returned */
		w->br_starved_hist |= 1u;
	} else if (res == -EKEYEXPIRED && c->ktls && ktls_phase_key_expired(w, c)) {
		/* read before the next key was in: armed again below */
	} else if (res != -ECANCELED) {
		conn_note_end(c, CONN_END_IO_ERROR);
		conn_kill(w, c);
	}
	if (!c->recv_armed && conn_reads(c))
		conn_arm_recv(w, c);
	if (c->state == CONN_HANDOFF)
		handoff_progress(w, c); /* the receive may have just stopped */
	conn_maybe_free(w, c);
}

static void begin_shutdown(struct worker *w);

static struct conn *conn_of(struct worker *w, uint64_t ud)
{
	uint32_t idx = UD_IDX(ud);
	ASSERT(idx < w->conn_cap);
	struct conn *c = &w->conns[idx];
	ASSERT(c->state != CONN_FREE && (c->gen & 0xffffffu) == UD_GEN(ud));
	return c;
}

static void handle_cqe(struct worker *w, struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	switch (UD_OP(ud)) {
	case OP_ACCEPT:
		on_accept(w, cqe);
		break;
	case OP_RECV:
		on_recv(w, conn_of(w, ud), cqe);
		break;
	case OP_SEND:
		send_on_cqe(w, conn_of(w, ud), cqe);
		break;
	case OP_WAKE:
		w->wake_armed = false;
		if (__atomic_load_n(&w->stop_requested, __ATOMIC_ACQUIRE)) {
			begin_shutdown(w);
		} else {
			if (__atomic_load_n(&w->accept_off_requested, __ATOMIC_ACQUIRE))
				stop_accepting(w);
			if (__atomic_load_n(&w->export_requested, __ATOMIC_ACQUIRE))
				migrate_export_begin(w); /* once */
			if (__atomic_load_n(&w->accept_off_requested, __ATOMIC_ACQUIRE) ||
			    __atomic_load_n(&w->export_requested, __ATOMIC_ACQUIRE))
				arm_wake(w);
		}
		break;
	case OP_IGNORE:
		break;
	case OP_HANDOFF:
	case OP_HANDOFF_SENT:
		handoff_on_cqe(w, cqe);
		break;
	case OP_RESUME_GO:
		group_release(w->group, w->id);
		migrate_resume_release(w);
		break;
	default:
		ASSERT(!"unknown completion");
	}
	conn_run_ended(w);
}

/* ------------------------------------------------------------------ timers */

static void on_timer(struct tw_node *n, void *ctx)
{
	struct worker *w = ctx;
	if (n->kind == TW_KIND_CONN)
		conn_timer_fire(w, CONTAINER_OF(n, struct conn, timer));
	else if (n->kind == TW_KIND_ACCEPT_BACKOFF)
		arm_accept(w);
	else if (n->kind == TW_KIND_CERT_POLL)
		conn_cert_poll(w);
	else
		w->hooks->timer(w->app, n);
	conn_run_ended(w);
}

void worker_schedule(struct worker *w, struct tw_node *n, uint64_t deadline_ms)
{
	timer_wheel_schedule(&w->tw, n, deadline_ms);
}

void worker_cancel_timer(struct worker *w, struct tw_node *n)
{
	timer_wheel_cancel(&w->tw, n);
}

/* ------------------------------------------------------------------ shutdown */

static void begin_shutdown(struct worker *w)
{
	if (w->stopping)
		return;
	migrate_export_progress(w, true); /* sessions still on their way out stay and drain */
	migrate_resume_release(w);        /* sessions just in are read (and drained) */
	w->stopping = true;
	if (__atomic_load_n(&w->export_requested, __ATOMIC_ACQUIRE))
		migrate_export_begin(w); /* asked and never acted on: reports none (no-op if acted on) */
	w->drain_deadline_ms = w->now_ms + SHUTDOWN_DRAIN_TIMEOUT_MS;
	group_stop_accepting(w->group, w->id); /* no more handoffs to us */
	/* Stop accepting: closing the socket ends the multishot accept; new dials are
	 * refused by the kernel from here on (unless a successor holds the listeners). */
	cancel_accept(w);
	close_listeners(w);
	w->hooks->shutdown(w->app);
	/* §7.6: every open WebSocket gets 1001. Connections that never upgraded have no
	 * request in progress worth waiting for once their response is queued: close the
	 * idle ones now. */
	for (uint32_t i = 0; i < w->conn_cap; i++) {
		struct conn *c = &w->conns[i];
		if (c->state == CONN_WS_OPEN) {
			conn_note_end(c, CONN_END_SHUTDOWN);
			conn_ws_close(w, conn_ref_of(c), WS_CLOSE_GOING_AWAY, "shutting down");
		}
		else if (c->state == CONN_HTTP)
			conn_drain(w, c);
	}
}

/* The drain deadline passed: whatever is left is cut. */
static void shed_all(struct worker *w)
{
	w->drain_incomplete = true;
	for (uint32_t i = 0; i < w->conn_cap; i++) {
		if (w->conns[i].state != CONN_FREE)
			conn_note_end(&w->conns[i], CONN_END_SHUTDOWN);
		conn_kill(w, &w->conns[i]);
	}
	conn_run_ended(w);
	send_flush(w);
}

/* ------------------------------------------------------------------ the loop */

/*
 * Submit what the iteration queued and wait for completions (ts: the next timer). With
 * --batch-wait-us on a kernel that supports it, and messages arriving often enough
 * that a second one is likely within the bound (engine/batch.h), a worker that has to
 * wait lets the kernel hold it up to that long for BATCH_WAIT_COMPLETIONS completions,
 * then wakes as soon as there is one: one wake-up serves several frames; at high load
 * the batch is there at once and nothing waits. Below that rate it wakes at once (a
 * bound that would batch nothing costs a timer per sleep), and so it does for a while
 * when batching slowed the traffic down (its peers wait for it).
 * No system call at all when completions are already there and nothing is to be
 * submitted.
 */
static int wait_for_completions(struct worker *w, const struct __kernel_timespec *ts)
{
	bool submit = io_uring_sq_ready(&w->ring) > 0;
	bool ready = io_uring_cq_ready(&w->ring) > 0;
	if (ready && !submit && w->feat.ext_arg)
		return 0;
	STAT_INC(w->stats.enters);
	if (!ready)
		STAT_INC(w->stats.waits);
	bool batch = batch_gate_update(&w->batch_gate, w->now_ms, STAT_GET(w->stats.messages_in), w->batch_wait_us);
	/* the gauges follow the gate (written only when they change: this is every loop) */
	if (STAT_GET(w->stats.batching) != batch)
		STAT_SET(w->stats.batching, batch ? 1u : 0u);
	if (STAT_GET(w->stats.batch_backoffs) != w->batch_gate.starved)
		STAT_SET(w->stats.batch_backoffs, w->batch_gate.starved);
	if (batch && !ready) {
		/* Without a timeout the kernel ends the wait when the bound passes even with
		 * nothing there: give it the longest one the loop allows. */
		static const struct __kernel_timespec idle = { .tv_sec = BATCH_IDLE_WAIT_S, .tv_nsec = 0 };
		if (ts == NULL)
			ts = &idle;
		uint32_t bound_us = batch_gate_bound_us(&w->batch_gate, w->batch_wait_us);
		if (ts->tv_sec > 0 || ts->tv_nsec > (long long)bound_us * 1000)
			return uring_submit_and_wait_batch(&w->ring, w->ring_registered, ts, BATCH_WAIT_COMPLETIONS,
							   bound_us);
	}
	struct io_uring_cqe *cqe = NULL;
	return io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, (struct __kernel_timespec *)ts, NULL);
}

static int worker_loop(struct worker *w, char why[URING_WHY_BYTES])
{
	arm_wake(w);
	arm_accept(w);
	for (;;) {
		if (w->export != NULL)
			migrate_export_progress(w, false); /* before the flush: its 1001s go out now */
		if (w->nheld > 0 && w->now_ms >= w->held_deadline_ms)
			migrate_resume_release(w); /* the go never came: read them anyway */
		send_flush(w);
		publish_buffers(w);
		if (!w->stopping)
			arm_accept(w);
		if (w->stopping) {
			if (w->live == 0)
				break;
			if (w->now_ms >= w->drain_deadline_ms) {
				shed_all(w);
				if (w->live == 0)
					break;
			}
		}
		int64_t wait_ms = timer_wheel_wait_ms(&w->tw, w->now_ms);
		if ((w->export != NULL || w->nheld > 0) && (wait_ms < 0 || wait_ms > (int64_t)MIGRATE_EXPORT_POLL_MS))
			wait_ms = MIGRATE_EXPORT_POLL_MS; /* its deadline is not a timer */
		if (w->stopping && (wait_ms < 0 || (uint64_t)wait_ms > w->drain_deadline_ms - w->now_ms))
			wait_ms = w->now_ms < w->drain_deadline_ms ? (int64_t)(w->drain_deadline_ms - w->now_ms) : 0;
		struct __kernel_timespec ts, *tsp = NULL;
		if (wait_ms >= 0) {
			ts.tv_sec = wait_ms / 1000;
			ts.tv_nsec = (wait_ms % 1000) * 1000000;
			tsp = &ts;
		}
		int rc = wait_for_completions(w, tsp);
		STAT_INC(w->stats.loop_iterations);
		if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN) {
			/* Not transient: spinning on it would burn a core and flood the log. */
			snprintf(why, URING_WHY_BYTES, "io_uring_enter: %s", strerror(-rc));
			return WORKER_EXIT_FATAL;
		}
		w->iter_ns = monotonic_ns();
		w->now_ms = w->iter_ns / 1000000u;

		unsigned head, seen = 0;
		struct io_uring_cqe *cqe;
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

int worker_run(struct worker *w, char why[URING_WHY_BYTES])
{
	bool ready = ring_init(w, why);
	if (ready) {
		/* Our accepts wait on the listeners before the group counts us as running:
		 * after a hand-over, the predecessor's sweep (stop_accepting) must queue
		 * behind them. */
		arm_wake(w);
		arm_accept(w);
		io_uring_submit(&w->ring);
		group_publish(w->group, w->id, w->ring.ring_fd, true);
	}
	/* Every worker passes here once, ready or not, so none waits forever; a failed
	 * one ends its thread, which ends the relay (main). */
	pthread_barrier_wait(&w->group->start);
	if (!ready)
		return WORKER_EXIT_FATAL;
	int result = worker_loop(w, why);
	group_publish(w->group, w->id, -1, false);
	uring_free_buf_ring(&w->ring, w->br, RECV_BUFFER_COUNT, RECV_BUFFER_GROUP);
	io_uring_queue_exit(&w->ring);
	w->ring_ready = false;
	return result;
}

/* ------------------------------------------------------------------ accessors */

uint64_t worker_now_ms(const struct worker *w)
{
	return w->now_ms;
}

struct bufpool *worker_pool(struct worker *w)
{
	return &w->pool;
}

uint32_t worker_conn_cap(const struct worker *w)
{
	return w->conn_cap;
}

const struct worker_stats *worker_stats_of(const struct worker *w)
{
	return &w->stats;
}

const struct bufpool *worker_pool_of(const struct worker *w)
{
	return &w->pool;
}

void *worker_app(const struct worker *w)
{
	return w->app;
}

uint64_t worker_client_key(const struct worker *w, struct span client)
{
	return group_ip_key(w->group, client);
}

uint32_t worker_id(const struct worker *w)
{
	return w->id;
}
