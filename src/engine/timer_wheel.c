#include "engine/timer_wheel.h"

void timer_wheel_init(struct timer_wheel *tw, uint64_t now_ms)
{
	tw->tick_done = now_ms / TIMER_WHEEL_TICK_MS;
	tw->count = 0;
	for (uint32_t i = 0; i < TIMER_WHEEL_SLOTS; i++) {
		tw->slots[i].next = &tw->slots[i];
		tw->slots[i].prev = &tw->slots[i];
	}
}

static void unlink_node(struct tw_node *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->next = n->prev = NULL;
}

void timer_wheel_cancel(struct timer_wheel *tw, struct tw_node *n)
{
	if (!tw_node_scheduled(n))
		return;
	unlink_node(n);
	ASSERT(tw->count > 0);
	tw->count--;
}

void timer_wheel_schedule(struct timer_wheel *tw, struct tw_node *n, uint64_t deadline_ms)
{
	timer_wheel_cancel(tw, n);
	uint64_t tick = deadline_ms / TIMER_WHEEL_TICK_MS;
	/* A deadline whose tick is already processed goes into the next tick's slot, so
	 * it fires on the next advance instead of waiting a whole rotation. */
	if (deadline_ms % TIMER_WHEEL_TICK_MS != 0)
		tick++;
	if (tick <= tw->tick_done)
		tick = tw->tick_done + 1;
	struct tw_node *head = &tw->slots[tick % TIMER_WHEEL_SLOTS];
	n->deadline_ms = deadline_ms;
	n->next = head;
	n->prev = head->prev;
	head->prev->next = n;
	head->prev = n;
	tw->count++;
}

uint32_t timer_wheel_advance(struct timer_wheel *tw, uint64_t now_ms, tw_fire_fn fire, void *ctx)
{
	uint64_t now_tick = now_ms / TIMER_WHEEL_TICK_MS;
	uint32_t fired = 0;
	if (now_tick <= tw->tick_done)
		return 0;
	/* Visit each elapsed slot once; after a long stall one full rotation covers all. */
	uint64_t first = tw->tick_done + 1;
	if (now_tick - first >= TIMER_WHEEL_SLOTS)
		first = now_tick - TIMER_WHEEL_SLOTS + 1;
	tw->tick_done = now_tick;
	for (uint64_t t = first; t <= now_tick; t++) {
		struct tw_node *head = &tw->slots[t % TIMER_WHEEL_SLOTS];
		/* Detach the due nodes first: callbacks may reschedule into this very slot
		 * (a node rescheduled now lands in a later tick, which is not this list). */
		struct tw_node due = { .next = &due, .prev = &due };
		struct tw_node *n = head->next;
		while (n != head) {
			struct tw_node *next = n->next;
			if (n->deadline_ms <= now_ms) {
				unlink_node(n);
				n->next = &due;
				n->prev = due.prev;
				due.prev->next = n;
				due.prev = n;
			}
			n = next;
		}
		while (due.next != &due) {
			n = due.next;
			unlink_node(n);
			tw->count--;
			fired++;
			fire(n, ctx);
		}
	}
	return fired;
}

int64_t timer_wheel_wait_ms(const struct timer_wheel *tw, uint64_t now_ms)
{
	if (tw->count == 0)
		return -1;
	uint64_t next_boundary = (now_ms / TIMER_WHEEL_TICK_MS + 1) * TIMER_WHEEL_TICK_MS;
	return (int64_t)(next_boundary - now_ms);
}
