/*
 * handoff.c - an accepted upgrade whose server-id another worker owns moves there, so
 * every binary and phone of a server-id lives on one worker (DESIGN.md: the sharded
 * registry) and a frame never crosses cores.
 *
 * The sending side, in order:
 *   1. handoff_begin: the HTTP phase built the struct upgraded (with the bytes after the
 *      head); the connection enters HANDOFF and its multishot receive is cancelled.
 *   2. Receives already completed before the cancel still arrive, in order: their
 *      bytes are appended to the upgrade (handoff_input). Responses to earlier
 *      keep-alive requests still being written finish first.
 *   3. handoff_progress: once no receive is armed and nothing is queued or in flight,
 *      one place in the owner's bounded in-flight count is reserved and one
 *      IORING_OP_MSG_RING carries the pointer to the owner's ring. The slot here is
 *      freed without closing the fd (threads share the descriptor table) and its
 *      --max-connections slot travels with the upgrade.
 * The owner's side (OP_HANDOFF): adopt the fd in a slot of its own, answer 101 (or the
 * application's close), feed the early bytes, then arm its receive: bytes the client
 * sent later are still in the socket, so nothing is lost or reordered.
 *
 * Every failure (owner full, draining or gone, the message refused, the owner's pool
 * full) closes the connection with a log line and a count by reason; none waits.
 */
#include "engine/internal.h"

#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"

static const char *const failure_names[HANDOFF_RESULT_COUNT] = {
	[HANDOFF_OK] = "ok",
	[HANDOFF_OWNER_FULL] = "owner_full",
	[HANDOFF_OWNER_GONE] = "owner_gone",
	[HANDOFF_SEND_FAILED] = "send_failed",
	[HANDOFF_OWNER_POOL] = "owner_pool_full",
};

static void count_failure(struct worker *w, enum handoff_result why, uint32_t owner)
{
	ASSERT(why != HANDOFF_OK && why < HANDOFF_RESULT_COUNT);
	STAT_INC(w->stats.handoff_failures[why]);
	LOG_WARN("handoff failed", KV_STR("err", failure_names[why]), KV_UINT("worker", w->id),
		 KV_UINT("owner", owner));
}

/* Close a connection whose upgrade could not be delivered, and return what it held. */
static void drop_upgrade(struct worker *w, struct upgraded *u)
{
	close(u->fd);
	group_put_cap(w->group);
	group_put_ip(w->group, u->client_key);
	upgraded_free(u);
}

void handoff_begin(struct worker *w, struct conn *c, struct upgraded *u, uint32_t owner)
{
	ASSERT(owner != w->id && c->handoff == NULL && c->counted);
	conn_move(c, CONN_HANDOFF);
	c->handoff = u;
	if (c->recv_armed) {
		struct io_uring_sqe *sqe = uring_get_sqe(&w->ring);
		io_uring_prep_cancel64(sqe, UD(OP_RECV, c->idx, c->gen), 0);
		io_uring_sqe_set_data64(sqe, UD(OP_IGNORE, 0, 0));
	}
	handoff_progress(w, c);
}

void handoff_input(struct worker *w, struct conn *c, const uint8_t *p, size_t n)
{
	ASSERT(c->state == CONN_HANDOFF && c->handoff != NULL);
	if (!upgraded_append(&c->handoff, span_make(p, n)))
		conn_kill(w, c);
}

void handoff_drop(struct worker *w, struct conn *c)
{
	if (c->handoff) {
		upgraded_free(c->handoff); /* the fd is the slot's: closed by the caller */
		c->handoff = NULL;
	}
}

void handoff_progress(struct worker *w, struct conn *c)
{
	if (c->state != CONN_HANDOFF || c->recv_armed || c->send_inflight || conn_has_output(c))
		return;
	struct upgraded *u = c->handoff;
	/* Every write to the upgrade (its TLS state included) comes before the reservation:
	 * the owner's release of that place is what orders them before its reads. */
	u->tls = c->tls;
	c->tls = NULL;
	u->ktls_sec = ktls_phase_take_secrets(w, c);
	u->transport = c->ktls ? TRANSPORT_KTLS
		       : u->tls == NULL ? TRANSPORT_PLAIN
		       : c->ktls_undecided ? TRANSPORT_TLS_UNDECIDED
					   : TRANSPORT_TLS;
	uint32_t owner = group_owner(w->group, upgraded_server_id(u));
	int ring_fd = -1;
	enum handoff_result r = group_reserve(w->group, owner, &ring_fd);
	if (r != HANDOFF_OK) {
		count_failure(w, r, owner);
		conn_kill(w, c); /* frees u, returns the cap slot, closes the fd */
		return;
	}
	ASSERT(((uintptr_t)u & ~HANDOFF_PTR_MASK) == 0);
	struct io_uring_sqe *sqe = uring_get_sqe(&w->ring);
	io_uring_prep_msg_ring(sqe, ring_fd, owner, HANDOFF_UD(OP_HANDOFF, u), 0);
	io_uring_sqe_set_data64(sqe, HANDOFF_UD(OP_HANDOFF_SENT, u));
	STAT_INC(w->stats.handoffs_sent);
	/* The upgrade, the fd, its TLS state and the cap slot are the message's now. */
	c->handoff = NULL;
	c->counted = false;
	c->client_key = 0;
	c->handed_off = true;
	conn_kill(w, c);
}

/* The owner's side: the upgrade becomes one of our connections. */
static void adopt(struct worker *w, struct upgraded *u)
{
	group_release(w->group, w->id);
	if (u->resume) /* counted taken, whatever comes of it: migrate_resume waits for the binaries */
		__atomic_fetch_add(&w->group->resumed, 1, __ATOMIC_RELEASE);
	if (w->stopping) {
		count_failure(w, HANDOFF_OWNER_GONE, w->id);
		drop_upgrade(w, u);
		return;
	}
	struct conn *c = conn_alloc(w, u->fd, &u->remote);
	if (c == NULL) {
		count_failure(w, HANDOFF_OWNER_POOL, w->id);
		drop_upgrade(w, u);
		return;
	}
	STAT_INC(w->stats.handoffs_received);
	c->counted = true;
	if (u->tls != NULL) {
		c->tls = u->tls; /* established: the first worker ran the handshake */
		u->tls = NULL;
		tls_conn_set_stats(c->tls, &w->stats.tls);
		/* counted where the handshake completed, unless the decision is ours */
		c->ktls_undecided = u->transport == TRANSPORT_TLS_UNDECIDED && w->ktls_available;
		c->counted_tls_path = !c->ktls_undecided;
		if (u->transport == TRANSPORT_TLS_UNDECIDED && !w->ktls_available) {
			c->counted_tls_path = true;
			STAT_INC(w->stats.tls_paths[TLS_PATH_USER_NO_KERNEL_TLS]);
		}
	}
	c->ktls = u->transport == TRANSPORT_KTLS;
	ktls_phase_adopt_secrets(w, c, u->ktls_sec);
	u->ktls_sec = NULL;
	c->counted_tls_path |= c->ktls;
	c->client_key = u->client_key;
	if (u->resume) {
		/* a live session from our predecessor: read once all are in (migrate.c) */
		ws_phase_resume(w, c, u);
		migrate_resume_hold(w, c, u);
		return;
	}
	ws_phase_start(w, c, u);
	upgraded_free(u);
	ktls_phase_try(w, c); /* nothing of ours is in flight yet: the moment for the keys */
	conn_arm_recv(w, c); /* after the early bytes: the socket holds what came next */
}

void handoff_on_cqe(struct worker *w, const struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	struct upgraded *u = HANDOFF_PTR(ud);
	if (UD_OP(ud) == OP_HANDOFF) {
		adopt(w, u);
		return;
	}
	ASSERT(UD_OP(ud) == OP_HANDOFF_SENT);
	if (cqe->res >= 0)
		return; /* delivered: the owner has it */
	/* Never posted to the owner: the upgrade is ours again, and so is its place. */
	uint32_t owner = group_owner(w->group, upgraded_server_id(u));
	group_release(w->group, owner);
	count_failure(w, HANDOFF_SEND_FAILED, owner);
	drop_upgrade(w, u);
}
