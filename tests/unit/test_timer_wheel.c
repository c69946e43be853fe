/*
 * test_timer_wheel.c - the worker's hashed timing wheel: a node never fires before its
 * deadline and fires by the first advance that reaches it (at tick resolution),
 * deadlines beyond one rotation, cancel, reschedule, scheduling and cancelling from
 * inside the fire callback, past deadlines, a stall longer than a rotation (each due
 * node once), timer_wheel_wait_ms, and a randomized run against a reference model.
 *
 * Tick resolution: a deadline between two tick boundaries is due at the next boundary
 * (ceil to TIMER_WHEEL_TICK_MS). These tests accept a fire anywhere in
 * [deadline, first advance at or after that boundary]; see ceil_tick_ms().
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rng.h"

#include "engine/timer_wheel.h"

#define ROTATION_MS ((uint64_t)TIMER_WHEEL_SLOTS * TIMER_WHEEL_TICK_MS)
#define FUZZ_SEED 0x7157ee1c0ffeeull
#define FUZZ_NODES 200
#define FUZZ_ROUNDS 30000

/* One wheel for every test: it is ~128 KiB, too big for a comfortable stack frame. */
static struct timer_wheel wheel;

struct tnode {
	struct tw_node n;
	unsigned id;
	unsigned fires;
	uint64_t fired_at;
	/* model state for the randomized test */
	bool sched;
	uint64_t deadline;
	uint64_t due_by; /* latest `now` of an advance that must have fired it */
};

struct fire_log {
	uint64_t now; /* the now_ms passed to the current advance */
	unsigned calls;
	struct tnode *order[64];
	/* optional actions taken from the callback */
	struct tnode *cancel_other;
	struct tnode *schedule_other;
	uint64_t schedule_other_at;
	bool resched_self;
	uint64_t resched_self_delta;
};

static uint64_t ceil_tick_ms(uint64_t ms)
{
	return (ms + TIMER_WHEEL_TICK_MS - 1) / TIMER_WHEEL_TICK_MS * TIMER_WHEEL_TICK_MS;
}

static void tnode_init(struct tnode *t, unsigned id)
{
	memset(t, 0, sizeof *t);
	t->id = id;
	t->n.kind = TW_KIND_APP;
}

static void on_fire(struct tw_node *n, void *ctx)
{
	struct fire_log *log = ctx;
	struct tnode *t = CONTAINER_OF(n, struct tnode, n);
	/* the node is already unscheduled when its callback runs, and never early */
	assert_false(tw_node_scheduled(n));
	if (n->deadline_ms > log->now)
		fail_msg("node %u fired at %llu before its deadline %llu", t->id,
		         (unsigned long long)log->now, (unsigned long long)n->deadline_ms);
	t->fires++;
	t->fired_at = log->now;
	if (log->calls < ARRAY_LEN(log->order))
		log->order[log->calls] = t;
	log->calls++;
	if (log->cancel_other != NULL && log->cancel_other != t) {
		timer_wheel_cancel(&wheel, &log->cancel_other->n);
		log->cancel_other = NULL;
	}
	if (log->schedule_other != NULL) {
		timer_wheel_schedule(&wheel, &log->schedule_other->n, log->schedule_other_at);
		log->schedule_other = NULL;
	}
	if (log->resched_self)
		timer_wheel_schedule(&wheel, n, log->now + log->resched_self_delta);
}

static uint32_t advance(struct fire_log *log, uint64_t now)
{
	log->now = now;
	unsigned before = log->calls;
	uint32_t fired = timer_wheel_advance(&wheel, now, on_fire, log);
	assert_int_equal(fired, log->calls - before);
	return fired;
}

/* Advance 1 ms at a time from `from` to `to` and return the first now at which t
 * fired (UINT64_MAX if it did not). */
static uint64_t step_until_fired(struct fire_log *log, struct tnode *t, uint64_t from, uint64_t to)
{
	for (uint64_t now = from; now <= to; now++) {
		advance(log, now);
		if (t->fires > 0)
			return now;
	}
	return UINT64_MAX;
}

static void test_empty_wheel(void **state)
{
	(void)state;
	struct fire_log log = { 0 };
	timer_wheel_init(&wheel, 12345);
	assert_int_equal(wheel.count, 0);
	assert_int_equal(timer_wheel_wait_ms(&wheel, 12345), -1);
	assert_int_equal(advance(&log, 12345), 0);
	assert_int_equal(advance(&log, 99999), 0);
	assert_int_equal(advance(&log, 99999 + 10 * ROTATION_MS), 0);
	assert_int_equal(timer_wheel_wait_ms(&wheel, 99999), -1);
}

static void test_never_early_aligned(void **state)
{
	(void)state;
	struct fire_log log = { 0 };
	struct tnode t;
	tnode_init(&t, 1);
	timer_wheel_init(&wheel, 0);
	assert_false(tw_node_scheduled(&t.n));
	timer_wheel_schedule(&wheel, &t.n, 1000);
	assert_true(tw_node_scheduled(&t.n));
	assert_int_equal(t.n.deadline_ms, 1000);
	assert_int_equal(wheel.count, 1);
	/* a deadline on a tick boundary fires exactly at the first advance at it */
	assert_int_equal(step_until_fired(&log, &t, 1, 2000), 1000);
	assert_int_equal(t.fires, 1);
	assert_false(tw_node_scheduled(&t.n));
	assert_int_equal(wheel.count, 0);
	assert_int_equal(advance(&log, 5000), 0);
	assert_int_equal(t.fires, 1);
}

/* Every sub-tick offset: never before the deadline, and by the first advance at or
 * after the deadline's tick boundary, for 1 ms steps and for coarse steps. */
static void test_fires_by_first_advance_after_deadline(void **state)
{
	(void)state;
	for (uint64_t d = 1000; d <= 1020; d++) {
		struct fire_log log = { 0 };
		struct tnode t;
		tnode_init(&t, 1);
		timer_wheel_init(&wheel, 0);
		timer_wheel_schedule(&wheel, &t.n, d);
		uint64_t at = step_until_fired(&log, &t, 1, 3000);
		if (at < d || at > ceil_tick_ms(d))
			fail_msg("deadline %llu fired at %llu", (unsigned long long)d, (unsigned long long)at);
		assert_int_equal(t.fires, 1);

		/* coarse steps: one advance from before to well after fires it once */
		for (uint64_t step = 3; step <= 997; step += 7) {
			tnode_init(&t, 2);
			log = (struct fire_log){ 0 };
			timer_wheel_init(&wheel, 0);
			timer_wheel_schedule(&wheel, &t.n, d);
			uint64_t now = 0, fired_at = UINT64_MAX;
			while (now < 5000 && fired_at == UINT64_MAX) {
				now += step;
				advance(&log, now);
				if (t.fires)
					fired_at = now;
			}
			assert_int_equal(t.fires, 1);
			assert_true(fired_at >= d);
			/* the previous advance was before the tick boundary */
			assert_true(fired_at - step < ceil_tick_ms(d));
		}
	}
}

static void test_wait_ms(void **state)
{
	(void)state;
	struct fire_log log = { 0 };
	struct tnode t;
	tnode_init(&t, 1);
	timer_wheel_init(&wheel, 1000);
	assert_int_equal(timer_wheel_wait_ms(&wheel, 1000), -1);
	timer_wheel_schedule(&wheel, &t.n, 1000 + 30000);
	/* time to the next tick boundary, in (0, tick] */
	assert_int_equal(timer_wheel_wait_ms(&wheel, 1000), TIMER_WHEEL_TICK_MS);
	assert_int_equal(timer_wheel_wait_ms(&wheel, 1001), 9);
	assert_int_equal(timer_wheel_wait_ms(&wheel, 1009), 1);
	assert_int_equal(timer_wheel_wait_ms(&wheel, 1010), TIMER_WHEEL_TICK_MS);
	for (uint64_t now = 1000; now < 1100; now++) {
		int64_t w = timer_wheel_wait_ms(&wheel, now);
		assert_true(w >= 1 && w <= TIMER_WHEEL_TICK_MS);
		assert_int_equal((now + (uint64_t)w) % TIMER_WHEEL_TICK_MS, 0);
	}
	timer_wheel_cancel(&wheel, &t.n);
	assert_int_equal(timer_wheel_wait_ms(&wheel, 1000), -1);
	timer_wheel_schedule(&wheel, &t.n, 1200);
	assert_true(timer_wheel_wait_ms(&wheel, 1100) > 0);
	advance(&log, 1200);
	assert_int_equal(t.fires, 1);
	assert_int_equal(timer_wheel_wait_ms(&wheel, 1200), -1);
}

/* 100 s is almost 2.5 rotations of 40.96 s: the slot is visited twice before it is
 * due and must not fire early on either visit, whatever the advance pattern. */
static void test_beyond_one_rotation(void **state)
{
	(void)state;
	assert_int_equal(ROTATION_MS, 40960);
	const uint64_t t0 = 777;
	const uint64_t deadline = t0 + 100000;

	/* tick by tick */
	struct fire_log log = { 0 };
	struct tnode t;
	tnode_init(&t, 1);
	timer_wheel_init(&wheel, t0);
	timer_wheel_schedule(&wheel, &t.n, deadline);
	for (uint64_t now = t0 + TIMER_WHEEL_TICK_MS; now < deadline; now += TIMER_WHEEL_TICK_MS)
		assert_int_equal(advance(&log, now), 0);
	assert_true(tw_node_scheduled(&t.n));
	advance(&log, ceil_tick_ms(deadline));
	assert_int_equal(t.fires, 1);
	assert_true(t.fired_at >= deadline);

	/* stalls longer than a rotation that stop short of the deadline */
	tnode_init(&t, 2);
	log = (struct fire_log){ 0 };
	timer_wheel_init(&wheel, t0);
	timer_wheel_schedule(&wheel, &t.n, deadline);
	assert_int_equal(advance(&log, t0 + 50000), 0);
	assert_int_equal(advance(&log, t0 + 50000 + ROTATION_MS + 10), 0);
	assert_int_equal(advance(&log, deadline - 1), 0);
	assert_int_equal(wheel.count, 1);
	assert_int_equal(advance(&log, deadline + 5 * ROTATION_MS), 1);
	assert_int_equal(t.fires, 1);

	/* exactly one rotation and exactly two rotations ahead (same slot as "now") */
	for (uint64_t k = 1; k <= 2; k++) {
		tnode_init(&t, 3);
		log = (struct fire_log){ 0 };
		timer_wheel_init(&wheel, 0);
		timer_wheel_schedule(&wheel, &t.n, k * ROTATION_MS);
		for (uint64_t now = 10; now < k * ROTATION_MS; now += 10)
			assert_int_equal(advance(&log, now), 0);
		assert_int_equal(advance(&log, k * ROTATION_MS), 1);
	}
}

static void test_cancel(void **state)
{
	(void)state;
	struct fire_log log = { 0 };
	struct tnode a, b, c;
	tnode_init(&a, 1);
	tnode_init(&b, 2);
	tnode_init(&c, 3);
	timer_wheel_init(&wheel, 0);
	/* cancelling a node that was never scheduled is a no-op */
	timer_wheel_cancel(&wheel, &a.n);
	assert_int_equal(wheel.count, 0);
	timer_wheel_schedule(&wheel, &a.n, 500);
	timer_wheel_schedule(&wheel, &b.n, 500); /* same slot */
	timer_wheel_schedule(&wheel, &c.n, 500 + ROTATION_MS);
	assert_int_equal(wheel.count, 3);
	timer_wheel_cancel(&wheel, &a.n);
	assert_false(tw_node_scheduled(&a.n));
	assert_int_equal(wheel.count, 2);
	timer_wheel_cancel(&wheel, &a.n); /* twice: still a no-op */
	assert_int_equal(wheel.count, 2);
	assert_int_equal(advance(&log, 1000), 1);
	assert_int_equal(a.fires, 0);
	assert_int_equal(b.fires, 1);
	assert_int_equal(c.fires, 0);
	timer_wheel_cancel(&wheel, &c.n);
	assert_int_equal(wheel.count, 0);
	assert_int_equal(advance(&log, 1000 + 3 * ROTATION_MS), 0);
	assert_int_equal(c.fires, 0);
	/* a cancelled node can be scheduled again */
	timer_wheel_schedule(&wheel, &a.n, 1000 + 3 * ROTATION_MS + 100);
	assert_int_equal(advance(&log, 1000 + 3 * ROTATION_MS + 100), 1);
	assert_int_equal(a.fires, 1);
}

static void test_reschedule(void **state)
{
	(void)state;
	struct fire_log log = { 0 };
	struct tnode t;
	tnode_init(&t, 1);
	timer_wheel_init(&wheel, 0);
	/* later: nothing at the old deadline, one fire at the new one, count stays 1 */
	timer_wheel_schedule(&wheel, &t.n, 1000);
	timer_wheel_schedule(&wheel, &t.n, 2000);
	assert_int_equal(wheel.count, 1);
	assert_int_equal(t.n.deadline_ms, 2000);
	assert_int_equal(advance(&log, 1500), 0);
	assert_int_equal(advance(&log, 1990), 0);
	assert_int_equal(advance(&log, 2000), 1);
	assert_int_equal(wheel.count, 0);
	/* earlier */
	timer_wheel_schedule(&wheel, &t.n, 9000);
	timer_wheel_schedule(&wheel, &t.n, 2500);
	assert_int_equal(wheel.count, 1);
	assert_int_equal(advance(&log, 2500), 1);
	assert_int_equal(t.fires, 2);
	assert_int_equal(advance(&log, 9000), 0);
	/* to the same slot one rotation later and back */
	timer_wheel_schedule(&wheel, &t.n, 10000);
	timer_wheel_schedule(&wheel, &t.n, 10000 + ROTATION_MS);
	assert_int_equal(advance(&log, 10000), 0);
	timer_wheel_schedule(&wheel, &t.n, 10000 + 2 * ROTATION_MS);
	assert_int_equal(advance(&log, 10000 + ROTATION_MS), 0);
	assert_int_equal(advance(&log, 10000 + 2 * ROTATION_MS), 1);
	assert_int_equal(t.fires, 3);
	/* many reschedules of one node never duplicate it */
	for (unsigned i = 0; i < 1000; i++)
		timer_wheel_schedule(&wheel, &t.n, 100000 + (i * 37) % 5000);
	assert_int_equal(wheel.count, 1);
	assert_int_equal(advance(&log, 200000), 1);
	assert_int_equal(t.fires, 4);
	assert_int_equal(wheel.count, 0);
}

static void test_callback_reschedules_itself(void **state)
{
	(void)state;
	struct fire_log log = { .resched_self = true, .resched_self_delta = 300 };
	struct tnode t;
	tnode_init(&t, 1);
	timer_wheel_init(&wheel, 0);
	timer_wheel_schedule(&wheel, &t.n, 300);
	/* a periodic timer: one fire per 300 ms, one per advance */
	for (uint64_t now = 10; now <= 30000; now += 10) {
		uint32_t f = advance(&log, now);
		assert_int_equal(f, now % 300 == 0 ? 1 : 0);
		assert_int_equal(wheel.count, 1);
	}
	assert_int_equal(t.fires, 100);
	/* one big advance fires it once, not once per missed period */
	assert_int_equal(advance(&log, 100000), 1);
	assert_int_equal(t.fires, 101);
	assert_int_equal(t.n.deadline_ms, 100300);

	/* rescheduled into the past from its own callback: no loop inside one advance;
	 * it fires again on the next advance of a later tick */
	log.resched_self_delta = 0;
	assert_int_equal(advance(&log, 100300), 1);
	assert_true(tw_node_scheduled(&t.n));
	assert_int_equal(advance(&log, 100310), 1);
	assert_int_equal(advance(&log, 100320), 1);
	log.resched_self = false;
	assert_int_equal(advance(&log, 100330), 1);
	assert_int_equal(advance(&log, 100340), 0);
	assert_int_equal(wheel.count, 0);
}

static void test_callback_cancels_other(void **state)
{
	(void)state;
	struct tnode a, b;
	/* same slot: whichever fires first cancels the other, so exactly one fires */
	{
		struct fire_log log = { 0 };
		tnode_init(&a, 1);
		tnode_init(&b, 2);
		timer_wheel_init(&wheel, 0);
		timer_wheel_schedule(&wheel, &a.n, 100);
		timer_wheel_schedule(&wheel, &b.n, 100);
		log.cancel_other = &b;
		uint32_t f = advance(&log, 100);
		/* if b fired first it left cancel_other set and a then cancelled b (a no-op) */
		if (b.fires == 0) {
			assert_int_equal(f, 1);
			assert_int_equal(a.fires, 1);
			assert_false(tw_node_scheduled(&b.n));
		} else {
			assert_int_equal(f, 2);
		}
		assert_int_equal(wheel.count, 0);
	}
	/* a due node in a later slot of the same advance */
	{
		struct fire_log log = { 0 };
		tnode_init(&a, 1);
		tnode_init(&b, 2);
		timer_wheel_init(&wheel, 0);
		timer_wheel_schedule(&wheel, &a.n, 100);
		timer_wheel_schedule(&wheel, &b.n, 200);
		log.cancel_other = &b;
		assert_int_equal(advance(&log, 300), 1);
		assert_int_equal(a.fires, 1);
		assert_int_equal(b.fires, 0);
		assert_int_equal(wheel.count, 0);
		assert_int_equal(advance(&log, 1000), 0);
	}
	/* the node fired after a cancelled one in the same slot still fires */
	{
		struct fire_log log = { 0 };
		struct tnode c;
		tnode_init(&a, 1);
		tnode_init(&b, 2);
		tnode_init(&c, 3);
		timer_wheel_init(&wheel, 0);
		timer_wheel_schedule(&wheel, &a.n, 100);
		timer_wheel_schedule(&wheel, &b.n, 100);
		timer_wheel_schedule(&wheel, &c.n, 100);
		log.cancel_other = &b;
		uint32_t f = advance(&log, 100);
		assert_int_equal(c.fires, 1);
		assert_int_equal(a.fires, 1);
		assert_int_equal(f, 2 + b.fires);
		assert_int_equal(wheel.count, 0);
	}
}

static void test_callback_schedules_other(void **state)
{
	(void)state;
	struct fire_log log = { 0 };
	struct tnode a, b;
	tnode_init(&a, 1);
	tnode_init(&b, 2);
	timer_wheel_init(&wheel, 0);

	/* in the future, in a slot this advance has yet to visit: waits for its deadline */
	timer_wheel_schedule(&wheel, &a.n, 100);
	log.schedule_other = &b;
	log.schedule_other_at = 1200;
	assert_int_equal(advance(&log, 1000), 1);
	assert_true(tw_node_scheduled(&b.n));
	assert_int_equal(advance(&log, 1190), 0);
	assert_int_equal(advance(&log, 1200), 1);
	assert_int_equal(b.fires, 1);

	/* already due: not in the same advance, but on the next advance of a later tick */
	timer_wheel_schedule(&wheel, &a.n, 1300);
	log.schedule_other = &b;
	log.schedule_other_at = 1250;
	assert_int_equal(advance(&log, 1300), 1);
	assert_int_equal(b.fires, 1);
	assert_true(tw_node_scheduled(&b.n));
	assert_int_equal(advance(&log, 1310), 1);
	assert_int_equal(b.fires, 2);

	/* moving a node that is due in this very advance (same slot) out of it */
	tnode_init(&a, 1);
	tnode_init(&b, 2);
	log = (struct fire_log){ 0 };
	timer_wheel_init(&wheel, 0);
	timer_wheel_schedule(&wheel, &a.n, 100);
	timer_wheel_schedule(&wheel, &b.n, 100);
	log.schedule_other = &b;
	log.schedule_other_at = 5000;
	uint32_t f = advance(&log, 100);
	if (b.fires == 0) { /* a fired first and moved b */
		assert_int_equal(f, 1);
		assert_true(tw_node_scheduled(&b.n));
		assert_int_equal(advance(&log, 4990), 0);
		assert_int_equal(advance(&log, 5000), 1);
	} else { /* b fired first, then a's callback scheduled the already-fired b */
		assert_int_equal(f, 2);
	}
	assert_int_equal(wheel.count, 0);
}

static void test_past_deadline(void **state)
{
	(void)state;
	struct fire_log log = { 0 };
	struct tnode t;
	tnode_init(&t, 1);
	timer_wheel_init(&wheel, 50000);
	/* long past (more than a rotation): the next advance, not a rotation later */
	timer_wheel_schedule(&wheel, &t.n, 5);
	assert_int_equal(wheel.count, 1);
	assert_int_equal(advance(&log, 50010), 1);
	/* zero */
	timer_wheel_schedule(&wheel, &t.n, 0);
	assert_int_equal(advance(&log, 50020), 1);
	/* just past, in the tick already processed */
	timer_wheel_schedule(&wheel, &t.n, 50019);
	assert_int_equal(advance(&log, 50030), 1);
	/* equal to now */
	timer_wheel_schedule(&wheel, &t.n, 50030);
	assert_int_equal(advance(&log, 50040), 1);
	assert_int_equal(t.fires, 4);
	assert_int_equal(wheel.count, 0);
	/* an advance that goes backwards in time does nothing */
	timer_wheel_schedule(&wheel, &t.n, 60000);
	assert_int_equal(advance(&log, 1000), 0);
	assert_int_equal(advance(&log, 60000), 1);
}

/* A stall of several rotations: every due node fires exactly once, nodes not yet due
 * (including ones that share a visited slot) stay, and none fires again later. */
static void test_long_stall(void **state)
{
	(void)state;
	enum { N = 3000 };
	static struct tnode nodes[N];
	struct fire_log log = { 0 };
	rng_state = FUZZ_SEED ^ 1;
	timer_wheel_init(&wheel, 0);
	const uint64_t stall_to = 200000; /* ~4.9 rotations */
	unsigned due = 0;
	for (unsigned i = 0; i < N; i++) {
		tnode_init(&nodes[i], i);
		uint64_t d = rng_below(2 * stall_to);
		if (i % 10 == 0)
			d = stall_to; /* exactly at the end of the stall */
		if (i % 10 == 1)
			d = stall_to + 1;
		if (i % 10 == 2)
			d = stall_to + ROTATION_MS; /* same slot as the end of the stall */
		timer_wheel_schedule(&wheel, &nodes[i].n, d);
		nodes[i].deadline = d;
		due += d <= stall_to;
	}
	assert_int_equal(wheel.count, N);
	assert_int_equal(advance(&log, stall_to), due);
	for (unsigned i = 0; i < N; i++) {
		assert_int_equal(nodes[i].fires, nodes[i].deadline <= stall_to ? 1 : 0);
		assert_int_equal(tw_node_scheduled(&nodes[i].n), nodes[i].deadline > stall_to);
	}
	assert_int_equal(wheel.count, N - due);
	/* the rest fire by their deadlines, once each */
	assert_int_equal(advance(&log, 3 * stall_to), N - due);
	for (unsigned i = 0; i < N; i++)
		assert_int_equal(nodes[i].fires, 1);
	assert_int_equal(wheel.count, 0);
	assert_int_equal(advance(&log, 10 * stall_to), 0);
}

/* Reference model: each scheduled node has a deadline and a "due by" time, the first
 * tick boundary at or after max(deadline, the tick after the last processed one). A
 * fire is checked in the callback (never early, node scheduled in the model); after
 * each advance no model node whose due-by time has passed may still be scheduled. */
static struct tnode fz[FUZZ_NODES];
static uint64_t fz_tick_done_ms;

static void model_schedule(struct tnode *t, uint64_t deadline)
{
	timer_wheel_schedule(&wheel, &t->n, deadline);
	t->sched = true;
	t->deadline = deadline;
	uint64_t floor_ms = fz_tick_done_ms + TIMER_WHEEL_TICK_MS;
	t->due_by = MAX(ceil_tick_ms(deadline), floor_ms);
}

static void model_cancel(struct tnode *t)
{
	timer_wheel_cancel(&wheel, &t->n);
	t->sched = false;
}

static uint64_t fz_now;
static unsigned fz_fires;

static uint64_t random_deadline(uint64_t now)
{
	switch (rng_below(6)) {
	case 0:
		return now > 500 ? now - rng_below(500) : 0; /* past */
	case 1:
		return now + rng_below(30); /* within a few ticks */
	case 2:
		return now + ROTATION_MS * (1 + rng_below(3)) + rng_below(20) - 10; /* aliasing */
	case 3:
		return now + rng_below(3 * ROTATION_MS);
	default:
		return now + rng_below(2000);
	}
}

static void fz_fire(struct tw_node *n, void *ctx)
{
	(void)ctx;
	struct tnode *t = CONTAINER_OF(n, struct tnode, n);
	assert_true(t->sched);
	assert_false(tw_node_scheduled(n));
	if (t->deadline > fz_now)
		fail_msg("node %u fired early: deadline %llu now %llu", t->id,
		         (unsigned long long)t->deadline, (unsigned long long)fz_now);
	t->sched = false;
	t->fires++;
	fz_fires++;
	/* from the callback: reschedule self, cancel or schedule another */
	switch (rng_below(8)) {
	case 0:
	case 1:
		model_schedule(t, random_deadline(fz_now));
		break;
	case 2:
		model_cancel(&fz[rng_below(FUZZ_NODES)]);
		break;
	case 3:
		model_schedule(&fz[rng_below(FUZZ_NODES)], random_deadline(fz_now));
		break;
	default:
		break;
	}
}

static void test_randomized_against_model(void **state)
{
	(void)state;
	rng_state = FUZZ_SEED;
	fz_now = 1000000 + rng_below(100000);
	timer_wheel_init(&wheel, fz_now);
	fz_tick_done_ms = fz_now / TIMER_WHEEL_TICK_MS * TIMER_WHEEL_TICK_MS;
	for (unsigned i = 0; i < FUZZ_NODES; i++)
		tnode_init(&fz[i], i);
	fz_fires = 0;
	unsigned stalls = 0;

	for (unsigned round = 0; round < FUZZ_ROUNDS; round++) {
		unsigned op = (unsigned)rng_below(100);
		if (op < 35) {
			model_schedule(&fz[rng_below(FUZZ_NODES)], random_deadline(fz_now));
		} else if (op < 45) {
			model_cancel(&fz[rng_below(FUZZ_NODES)]);
		} else {
			uint64_t step;
			unsigned k = (unsigned)rng_below(100);
			if (k < 60)
				step = rng_below(25);
			else if (k < 97)
				step = rng_below(3000);
			else {
				step = ROTATION_MS + rng_below(3 * ROTATION_MS);
				stalls++;
			}
			fz_now += step;
			/* the advance counts the elapsed ticks as processed before any callback
			 * runs: a node a callback schedules as due goes to the next advance */
			uint64_t tick_ms = fz_now / TIMER_WHEEL_TICK_MS * TIMER_WHEEL_TICK_MS;
			if (tick_ms > fz_tick_done_ms)
				fz_tick_done_ms = tick_ms;
			unsigned before = fz_fires;
			uint32_t fired = timer_wheel_advance(&wheel, fz_now, fz_fire, NULL);
			assert_int_equal(fired, fz_fires - before);
			for (unsigned i = 0; i < FUZZ_NODES; i++) {
				const struct tnode *t = &fz[i];
				if (t->sched && t->due_by <= fz_now)
					fail_msg("round %u: node %u (deadline %llu, due by %llu) not fired at %llu",
					         round, i, (unsigned long long)t->deadline,
					         (unsigned long long)t->due_by, (unsigned long long)fz_now);
			}
		}
		unsigned sched = 0;
		for (unsigned i = 0; i < FUZZ_NODES; i++) {
			assert_int_equal(tw_node_scheduled(&fz[i].n), fz[i].sched);
			if (fz[i].sched)
				assert_int_equal(fz[i].n.deadline_ms, fz[i].deadline);
			sched += fz[i].sched;
		}
		assert_int_equal(wheel.count, sched);
		assert_int_equal(timer_wheel_wait_ms(&wheel, fz_now) < 0, sched == 0);
	}
	assert_true(fz_fires > 5000);
	assert_true(stalls > 50);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_empty_wheel),
		cmocka_unit_test(test_never_early_aligned),
		cmocka_unit_test(test_fires_by_first_advance_after_deadline),
		cmocka_unit_test(test_wait_ms),
		cmocka_unit_test(test_beyond_one_rotation),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test(test_reschedule),
		cmocka_unit_test(test_callback_reschedules_itself),
		cmocka_unit_test(test_callback_cancels_other),
		cmocka_unit_test(test_callback_schedules_other),
		cmocka_unit_test(test_past_deadline),
		cmocka_unit_test(test_long_stall),
		cmocka_unit_test(test_randomized_against_model),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
