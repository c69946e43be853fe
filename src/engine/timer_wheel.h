/*
 * timer_wheel.h - a hashed timing wheel for every deadline of a worker.
 *
 * Contract:
 * - Nodes are intrusive (embedded in the connection or registry slot) so scheduling
 *   never allocates. A node is in at most one slot; rescheduling moves it.
 * - Resolution is TIMER_WHEEL_TICK_MS: a node fires on the first advance that reaches
 *   the tick boundary at or after its deadline (at most one tick late), never before
 *   its deadline. Deadlines beyond one rotation stay in their slot and
 *   are skipped until due (each advance looks only at the slots of elapsed ticks).
 * - The worker waits in io_uring with a timeout of timer_wheel_wait_ms(): one kernel
 *   timeout for all connections, not one timer per connection.
 */
#ifndef PYRELAY_TIMER_WHEEL_H
#define PYRELAY_TIMER_WHEEL_H

#include "core/common.h"

#define TIMER_WHEEL_TICK_MS 10u
#define TIMER_WHEEL_SLOTS 4096u /* 40.96 s per rotation: a 30 s heartbeat fires on its first visit */

/* What a node belongs to, so one fire callback can dispatch. */
enum tw_kind {
	TW_KIND_CONN = 0,
	TW_KIND_ACCEPT_BACKOFF = 1,
	TW_KIND_CERT_POLL = 2, /* handshakes wait for the autocert certificate (conn.c) */
	TW_KIND_APP = 16, /* kinds of the application above the engine are >= this */
};

struct tw_node {
	struct tw_node *next;
	struct tw_node *prev; /* NULL when not scheduled */
	uint64_t deadline_ms;
	uint32_t kind;
};

struct timer_wheel {
	uint64_t tick_done;   /* every tick <= this has been processed */
	uint64_t count;       /* scheduled nodes */
	struct tw_node slots[TIMER_WHEEL_SLOTS]; /* sentinels of circular lists */
};

typedef void (*tw_fire_fn)(struct tw_node *node, void *ctx);

void timer_wheel_init(struct timer_wheel *tw, uint64_t now_ms);
static inline bool tw_node_scheduled(const struct tw_node *n)
{
	return n->prev != NULL;
}
/* Schedule (or move) n to fire at deadline_ms (a deadline in the past fires on the
 * first advance that reaches the next tick boundary). */
void timer_wheel_schedule(struct timer_wheel *tw, struct tw_node *n, uint64_t deadline_ms);
void timer_wheel_cancel(struct timer_wheel *tw, struct tw_node *n);
/* Fire every node whose deadline is <= now_ms. The callback may schedule or cancel
 * any node, including the one fired. Returns how many fired. */
uint32_t timer_wheel_advance(struct timer_wheel *tw, uint64_t now_ms, tw_fire_fn fire, void *ctx);
/* Milliseconds the worker may sleep: -1 when nothing is scheduled, else the time to
 * the next tick boundary. */
int64_t timer_wheel_wait_ms(const struct timer_wheel *tw, uint64_t now_ms);

#endif
