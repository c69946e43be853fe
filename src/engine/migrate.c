/*
 * migrate.c - live WebSocket sessions from a relay to its successor (engine/migrate.h,
 * ADR 0018).
 *
 * The predecessor's worker, per session, in the order of the cross-worker handoff
 * (handoff.c), and for the same reasons:
 *   1. migrate_export_begin: an open WebSocket whose reader is at rest (no frame begun),
 *      on plaintext (user-space TLS state cannot move; kTLS is left out too, see the
 *      ADR), is marked exporting and its multishot receive cancelled. Receives that
 *      completed before the cancel still arrive, in order: their bytes are kept raw
 *      (migrate_export_input) and travel as early bytes.
 *   2. migrate_export_progress: once no receive is armed and nothing is queued or in
 *      flight for every such session (or HANDOVER_EXPORT_TIMEOUT_MS passed), the
 *      application is asked which may move, binaries (pass 0) before phones (pass 1);
 *      a binary moves only with all its phones, so the relay can refuse one whose
 *      phones are not ready. Each that moves becomes a record and its socket for the
 *      hand-over thread (migrate_collect); its slot ends with CONN_END_MOVED without
 *      closing the fd (handed_off). The others are closed 1001 as on a drain.
 * The successor: migrate_resume turns each record into a struct upgraded (resume set)
 * and posts it to its server-id's owner like a handoff; adopt (handoff.c) opens it with
 * ws_phase_resume: no 101, the application's resume hook, the early bytes, then the
 * receive. Bytes the client sent meanwhile are still in the socket: nothing is lost or
 * reordered, and frames the relay owed it were written before its socket moved.
 */
#include "engine/migrate.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "engine/internal.h"
#include "engine/session_record.h"

/* Polling interval of the waits below (the hand-over thread and the successor). */
#define MIGRATE_POLL_MS 5

struct export_entry {
	struct conn_ref ref;
	uint8_t *early; /* malloc'd, bytes received after the stop */
	uint32_t early_len;
	bool overflow; /* more than SESSION_RECORD_EARLY_BYTES_MAX: it stays */
	bool moved;
};

struct export_state {
	uint32_t *entry_of; /* [conn idx]: entry index + 1, 0 for none */
	struct export_entry *e;
	uint32_t n;
	uint64_t deadline_ms;
};

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------ collection */

static struct {
	pthread_mutex_t lock;
	struct handover_sessions got;
	uint32_t reported; /* workers that reported */
	bool open;
} collector = { .lock = PTHREAD_MUTEX_INITIALIZER };

bool migrate_collect_open(void)
{
	pthread_mutex_lock(&collector.lock);
	bool open = collector.open;
	pthread_mutex_unlock(&collector.lock);
	return open;
}

void migrate_collect(struct handover_sessions *mine)
{
	pthread_mutex_lock(&collector.lock);
	for (uint32_t i = 0; i < mine->n; i++) {
		struct handover_session *s = &mine->v[i];
		/* closed (late) or out of memory: the fd closes below, the client reconnects */
		if (collector.open && handover_sessions_add(&collector.got, s->fd, s->record, s->len))
			s->fd = -1;
	}
	collector.reported++;
	pthread_mutex_unlock(&collector.lock);
	handover_sessions_free(mine);
}

void migrate_export(struct worker *const *workers, uint32_t n, struct handover_sessions *out)
{
	pthread_mutex_lock(&collector.lock);
	collector.open = true;
	collector.reported = 0;
	pthread_mutex_unlock(&collector.lock);
	for (uint32_t i = 0; i < n; i++)
		worker_export_sessions(workers[i]);
	uint64_t deadline = monotonic_ms() + HANDOVER_EXPORT_TIMEOUT_MS + MIGRATE_COLLECT_SLACK_MS;
	for (;;) {
		pthread_mutex_lock(&collector.lock);
		bool all = collector.reported >= n;
		if (all || monotonic_ms() >= deadline) {
			collector.open = false;
			*out = collector.got;
			collector.got = (struct handover_sessions){ 0 };
			pthread_mutex_unlock(&collector.lock);
			return;
		}
		pthread_mutex_unlock(&collector.lock);
		sleep_ms(MIGRATE_POLL_MS);
	}
}

/* ------------------------------------------------------------------ predecessor's worker */

void worker_export_sessions(struct worker *w)
{
	__atomic_store_n(&w->export_requested, true, __ATOMIC_RELEASE);
	uint64_t one = 1;
	(void)!write(w->wake_fd, &one, sizeof one);
}

static bool movable(const struct conn *c)
{
	/* plaintext, or kTLS (the keys travel in the kernel with the socket); never
	 * user-space TLS (BoringSSL's state cannot move) */
	return c->state == CONN_WS_OPEN && c->ws == NULL && c->tls == NULL && !c->ktls_undecided &&
	       !c->proxy_pending && !c->close_sent;
}

void migrate_export_begin(struct worker *w)
{
	if (w->export_started)
		return;
	w->export_started = true;
	struct handover_sessions none = { 0 };
	if (w->stopping) {
		migrate_collect(&none);
		return;
	}
	uint32_t count = 0;
	for (uint32_t i = 0; i < w->conn_cap; i++)
		count += movable(&w->conns[i]);
	struct export_state *x = calloc(1, sizeof *x);
	if (x != NULL && count > 0) {
		x->entry_of = calloc(w->conn_cap, sizeof *x->entry_of);
		x->e = calloc(count, sizeof *x->e);
	}
	if (x == NULL || (count > 0 && (x->entry_of == NULL || x->e == NULL))) {
		if (x != NULL) {
			free(x->entry_of);
			free(x->e);
			free(x);
		}
		LOG_WARN("handover aborted", KV_STR("err", "out of memory for the sessions; they are drained"),
			 KV_UINT("worker", w->id));
		migrate_collect(&none);
		return;
	}
	for (uint32_t i = 0; i < w->conn_cap && x->n < count; i++) {
		struct conn *c = &w->conns[i];
		if (!movable(c))
			continue;
		c->exporting = true;
		x->e[x->n] = (struct export_entry){ .ref = conn_ref_of(c) };
		x->entry_of[i] = ++x->n;
		if (c->recv_armed) {
			struct io_uring_sqe *sqe = uring_get_sqe(&w->ring);
			io_uring_prep_cancel64(sqe, UD(OP_RECV, c->idx, c->gen), 0);
			io_uring_sqe_set_data64(sqe, UD(OP_IGNORE, 0, 0));
		}
	}
	x->deadline_ms = w->now_ms + HANDOVER_EXPORT_TIMEOUT_MS;
	w->export = x;
	migrate_export_progress(w, false);
}

static struct export_entry *entry_of(struct worker *w, const struct conn *c)
{
	struct export_state *x = w->export;
	if (x == NULL || x->entry_of == NULL || x->entry_of[c->idx] == 0)
		return NULL;
	struct export_entry *e = &x->e[x->entry_of[c->idx] - 1];
	return e->ref.gen == c->gen ? e : NULL;
}

void migrate_export_input(struct worker *w, struct conn *c, const uint8_t *p, size_t n)
{
	struct export_entry *e = entry_of(w, c);
	ASSERT(e != NULL);
	if (e->overflow || n == 0)
		return;
	if (n > SESSION_RECORD_EARLY_BYTES_MAX - e->early_len) {
		e->overflow = true; /* it stays, and is drained */
		return;
	}
	uint8_t *more = realloc(e->early, e->early_len + n);
	if (more == NULL) {
		e->overflow = true;
		return;
	}
	memcpy(more + e->early_len, p, n);
	e->early = more;
	e->early_len += (uint32_t)n;
}

/* Stopped reading, owes nothing: it can move. */
static bool ready(const struct conn *c, const struct export_entry *e)
{
	return c->exporting && c->state == CONN_WS_OPEN && !e->overflow && !c->recv_armed && !c->send_inflight &&
	       !c->zc_notif_pending && !conn_has_output(c);
}

bool conn_export_ready(struct worker *w, struct conn_ref ref)
{
	struct conn *c = conn_at(w, ref);
	struct export_entry *e = entry_of(w, c);
	return e != NULL && ready(c, e);
}

static struct conn *live(struct worker *w, const struct export_entry *e)
{
	struct conn *c = &w->conns[e->ref.idx];
	return c->state != CONN_FREE && c->gen == e->ref.gen && c->exporting ? c : NULL;
}

/* Ask the application about c; on yes, its record and socket join mine. */
static void try_move(struct worker *w, struct conn *c, struct export_entry *e, unsigned pass,
		     struct handover_sessions *mine)
{
	struct session_record r = { .transport = c->ktls ? SESSION_TRANSPORT_KTLS : SESSION_TRANSPORT_PLAIN,
				    .remote = c->remote, .client_key = c->client_key };
	if (!w->hooks->export(w->app, e->ref, pass, &r.route, r.conn_hex, &r.server_id))
		return;
	r.version = r.device = span_make("", 0);
	r.early = span_make(e->early, e->early_len);
	/* every worker exports at once: a buffer of its own (once per session, at a hand-over) */
	size_t n = session_record_size(&r);
	uint8_t *rec = n > 0 ? malloc(n) : NULL;
	bool ok = rec != NULL && session_record_write(&r, rec, n) == n && handover_sessions_add(mine, c->fd, rec, n);
	free(rec);
	if (ok) {
		e->moved = true;
		c->handed_off = true; /* the fd is the hand-over thread's now */
		return;
	}
	/* Out of memory: it is closed 1001 (the application hears SHUTDOWN, not MOVED). */
	LOG_WARN("handover aborted", KV_STR("err", "a session could not be recorded; its client reconnects"),
		 KV_UINT("worker", w->id));
}

void migrate_export_progress(struct worker *w, bool abort)
{
	struct export_state *x = w->export;
	if (x == NULL)
		return;
	if (!abort && w->now_ms < x->deadline_ms) {
		for (uint32_t i = 0; i < x->n; i++) {
			struct conn *c = live(w, &x->e[i]);
			if (c != NULL && c->state == CONN_WS_OPEN && !x->e[i].overflow && !ready(c, &x->e[i]))
				return; /* not yet */
		}
	}
	struct handover_sessions mine = { 0 };
	if (!abort && migrate_collect_open()) {
		for (unsigned pass = 0; pass < 2; pass++)
			for (uint32_t i = 0; i < x->n; i++) {
				struct conn *c = live(w, &x->e[i]);
				if (c != NULL && ready(c, &x->e[i]) && !x->e[i].moved)
					try_move(w, c, &x->e[i], pass, &mine);
			}
	}
	/* Everything is decided: the moved ones end here without a close frame, the rest
	 * read again and are closed 1001 as on a drain (the bytes kept for them go: they
	 * are being closed). */
	for (uint32_t i = 0; i < x->n; i++) {
		struct conn *c = live(w, &x->e[i]);
		if (c == NULL)
			continue;
		c->exporting = false;
		if (x->e[i].moved) {
			STAT_INC(w->stats.sessions_exported);
			conn_note_end(c, CONN_END_MOVED);
			conn_kill(w, c);
		} else if (c->state == CONN_WS_OPEN) {
			conn_note_end(c, CONN_END_SHUTDOWN);
			conn_ws_close(w, x->e[i].ref, WS_CLOSE_GOING_AWAY, "shutting down");
		} else {
			conn_arm_recv(w, c);
		}
		free(x->e[i].early);
	}
	free(x->entry_of);
	free(x->e);
	free(x);
	w->export = NULL;
	conn_run_ended(w);
	migrate_collect(&mine);
}

/* ------------------------------------------------------------------ successor */

void migrate_resume_hold(struct worker *w, struct conn *c, struct upgraded *u)
{
	if (w->nheld == w->held_cap) {
		uint32_t cap = w->held_cap ? w->held_cap * 2 : 64;
		struct resume_hold *h = realloc(w->held, (size_t)cap * sizeof *h);
		if (h == NULL) {
			/* read it now: at worst a frame of its binary for a phone not yet in is
			 * dropped as for an unknown conn_id */
			ws_phase_resume_input(w, c, u);
			upgraded_free(u);
			conn_arm_recv(w, c);
			return;
		}
		w->held = h;
		w->held_cap = cap;
	}
	if (w->nheld == 0)
		w->held_deadline_ms = w->now_ms + MIGRATE_RESUME_HOLD_MS;
	w->held[w->nheld++] = (struct resume_hold){ .ref = conn_ref_of(c), .u = u };
}

void migrate_resume_release(struct worker *w)
{
	for (uint32_t i = 0; i < w->nheld; i++) {
		struct conn *c = &w->conns[w->held[i].ref.idx];
		if (c->state != CONN_FREE && c->gen == w->held[i].ref.gen) {
			ws_phase_resume_input(w, c, w->held[i].u);
			if (c->state != CONN_FREE && c->gen == w->held[i].ref.gen)
				conn_arm_recv(w, c); /* after the early bytes: the socket holds what came next */
		}
		upgraded_free(w->held[i].u);
	}
	free(w->held);
	w->held = NULL;
	w->nheld = w->held_cap = 0;
	conn_run_ended(w);
}

/* One session to its owner; false (everything released) when it could not be sent. */
static bool post(struct worker_group *g, struct io_uring *ring, const struct session_record *r, int fd)
{
	struct upgraded *u = upgraded_of(r->server_id, r->version, r->device, r->early, span_make("", 0));
	if (u == NULL)
		return false;
	u->fd = fd;
	u->resume = true;
	u->route = r->route == SESSION_ROUTE_BINARY ? HTTP_ROUTE_SERVER : HTTP_ROUTE_CLIENT;
	/* kTLS: the socket still holds its keys; the TLS 1.3 traffic secrets stay behind, so
	 * a later KeyUpdate ends the session (ADR 0018) */
	u->transport = r->transport == SESSION_TRANSPORT_KTLS ? TRANSPORT_KTLS : TRANSPORT_PLAIN;
	u->remote = r->remote;
	memcpy(u->conn_hex, r->conn_hex, sizeof u->conn_hex);
	/* Its --max-connections slot, and its per-IP share under our own key (the keys are
	 * per process); a client over a cap it was already under is kept, uncounted. */
	if (!group_take_cap(g)) {
		upgraded_free(u);
		return false;
	}
	char ip[INET6_ADDRSTRLEN] = "";
	if (r->client_key != 0 && r->remote.family != 0 &&
	    inet_ntop(r->remote.family, r->remote.bytes, ip, sizeof ip) != NULL) {
		uint64_t key = group_ip_key(g, span_cstr(ip));
		if (key != 0 && group_take_ip(g, key) == IP_TAKE_OK)
			u->client_key = key;
	}
	uint32_t owner = group_owner(g, r->server_id);
	int ring_fd = -1;
	bool sent = false;
	if (group_reserve(g, owner, &ring_fd) == HANDOFF_OK) {
		ASSERT(((uintptr_t)u & ~HANDOFF_PTR_MASK) == 0);
		struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
		io_uring_prep_msg_ring(sqe, ring_fd, owner, HANDOFF_UD(OP_HANDOFF, u), 0);
		io_uring_sqe_set_data64(sqe, 0);
		struct io_uring_cqe *cqe = NULL;
		if (io_uring_submit_and_wait(ring, 1) >= 1 && io_uring_wait_cqe(ring, &cqe) == 0) {
			sent = cqe->res >= 0;
			io_uring_cqe_seen(ring, cqe);
		}
		if (!sent)
			group_release(g, owner);
	}
	if (sent)
		return true; /* the owner has it: fd, cap slot and per-IP share included */
	group_put_cap(g);
	group_put_ip(g, u->client_key);
	u->fd = -1; /* the caller closes it */
	upgraded_free(u);
	return false;
}

uint32_t migrate_resume(struct worker_group *g, struct handover_sessions *s)
{
	struct io_uring ring;
	uint32_t sent = 0;
	int rc = io_uring_queue_init(MIGRATE_RING_ENTRIES, &ring, 0);
	if (rc < 0) {
		LOG_WARN("handover aborted", KV_STR("err", "cannot create a ring to pass the sessions on"),
			 KV_STR("fix", "raise RLIMIT_MEMLOCK; the sessions' clients reconnect"));
		handover_sessions_free(s);
		return 0;
	}
	uint32_t before = __atomic_load_n(&g->resumed, __ATOMIC_ACQUIRE), binaries = 0;
	for (unsigned pass = 0; pass < 2; pass++) {
		if (pass == 1) {
			/* the phones register with their binary: it must be in first */
			uint64_t deadline = monotonic_ms() + MIGRATE_BINARIES_WAIT_MS;
			while (__atomic_load_n(&g->resumed, __ATOMIC_ACQUIRE) - before < binaries &&
			       monotonic_ms() < deadline)
				sleep_ms(1);
		}
		for (uint32_t i = 0; i < s->n; i++) {
			struct session_record r;
			size_t used;
			if (s->v[i].fd < 0 || session_record_parse(span_make(s->v[i].record, s->v[i].len), &r, &used) !=
						      SESSION_RECORD_OK)
				continue; /* parsed once already (handover.c): cannot fail */
			if ((r.route == SESSION_ROUTE_BINARY) != (pass == 0))
				continue;
			if (post(g, &ring, &r, s->v[i].fd)) {
				s->v[i].fd = -1;
				sent++;
				binaries += pass == 0;
			}
		}
	}
	/* Every session registered (or given up on): each worker reads its own now. */
	uint64_t deadline = monotonic_ms() + MIGRATE_BINARIES_WAIT_MS;
	while (__atomic_load_n(&g->resumed, __ATOMIC_ACQUIRE) - before < sent && monotonic_ms() < deadline)
		sleep_ms(1);
	for (uint32_t i = 0; i < g->n; i++) {
		int ring_fd = -1;
		if (group_reserve(g, i, &ring_fd) != HANDOFF_OK)
			continue; /* gone or draining: its own deadline releases them */
		struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
		io_uring_prep_msg_ring(sqe, ring_fd, 0, UD(OP_RESUME_GO, 0, 0), 0);
		io_uring_sqe_set_data64(sqe, 0);
		struct io_uring_cqe *cqe = NULL;
		bool ok = false;
		if (io_uring_submit_and_wait(&ring, 1) >= 1 && io_uring_wait_cqe(&ring, &cqe) == 0) {
			ok = cqe->res >= 0;
			io_uring_cqe_seen(&ring, cqe);
		}
		if (!ok)
			group_release(g, i);
	}
	io_uring_queue_exit(&ring);
	if (sent < s->n)
		LOG_WARN("handover aborted", KV_STR("err", "some sessions could not be passed to a worker; their clients reconnect"),
			 KV_UINT("sessions", s->n - sent));
	handover_sessions_free(s); /* closes what was not sent */
	return sent;
}
