/*
 * test_batch.c - the batched-wait gate (engine/batch.h): off until whole windows have
 * been seen, on when 1.6 or more messages are expected within the bound in two windows
 * in a row, off again only below 1.2 (hysteresis), never on with a zero bound, a count or clock that goes
 * back restarts the window, no overflow at extreme counts; open-loop traffic stays
 * batched but for the test windows, traffic that batching slows (peers waiting for the
 * relay) turns it off for a back-off that doubles while the test keeps failing, a
 * burst before the turn-on is not taken for the unbatched rate, a probe finds traffic
 * that changed its kind, small counts need a bigger drop, and the
 * bound shrinks to the time a full batch takes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "engine/batch.h"

/* Feed one window of `per_s` completions per second and return the gate's answer. */
static bool window(struct batch_gate *g, uint64_t *now_ms, uint64_t *events, uint64_t per_s, uint32_t wait_us)
{
	*now_ms += BATCH_RATE_WINDOW_MS;
	*events += per_s * BATCH_RATE_WINDOW_MS / 1000u;
	return batch_gate_update(g, *now_ms, *events, wait_us);
}

/* One window whose rate depends on whether the gate batched it: open-loop traffic has
 * one rate either way, traffic that waits for the relay is slower when batched. */
static bool window_traffic_us(struct batch_gate *g, uint64_t *now_ms, uint64_t *events, uint64_t batched_per_s,
			      uint64_t unbatched_per_s, uint32_t wait_us)
{
	return window(g, now_ms, events, g->active ? batched_per_s : unbatched_per_s, wait_us);
}

static bool window_traffic(struct batch_gate *g, uint64_t *now_ms, uint64_t *events, uint64_t batched_per_s,
			   uint64_t unbatched_per_s)
{
	return window_traffic_us(g, now_ms, events, batched_per_s, unbatched_per_s, 250);
}

static void test_off_until_a_window_is_seen(void **state)
{
	(void)state;
	struct batch_gate g = { 0 };
	assert_false(batch_gate_update(&g, 1000, 0, 250));
	/* a burst inside the first window does not decide yet */
	assert_false(batch_gate_update(&g, 1000 + BATCH_RATE_WINDOW_MS - 1, 1000000, 250));
	/* one window at the rate is not enough, the second in a row turns it on */
	assert_false(batch_gate_update(&g, 1000 + BATCH_RATE_WINDOW_MS, 1000000, 250));
	assert_true(batch_gate_update(&g, 1000 + 2 * BATCH_RATE_WINDOW_MS, 2000000, 250));
}

static void test_threshold(void **state)
{
	(void)state;
	/* 250 us bound: 1.6 expected needs 6,400 messages/s */
	struct batch_gate g = { 0 };
	uint64_t now = 5000, ev = 0;
	batch_gate_update(&g, now, ev, 250);
	assert_false(window(&g, &now, &ev, 6380, 250));
	assert_int_equal(g.expected_milli, 1595);
	assert_false(window(&g, &now, &ev, 6400, 250));
	assert_int_equal(g.expected_milli, BATCH_ON_EXPECTED_MILLI);
	assert_false(window(&g, &now, &ev, 6380, 250)); /* not two in a row */
	assert_false(window(&g, &now, &ev, 6400, 250));
	assert_true(window(&g, &now, &ev, 6400, 250));
	assert_true(window(&g, &now, &ev, 6400, 250)); /* the turn-on's test: not slower */
	/* stays on down to 1.2 expected (4,800/s), off below */
	assert_true(window(&g, &now, &ev, 4800, 250));
	assert_int_equal(g.expected_milli, BATCH_OFF_EXPECTED_MILLI);
	assert_false(window(&g, &now, &ev, 4780, 250));
	/* and needs 1.6 again, twice, to come back */
	assert_false(window(&g, &now, &ev, 5600, 250));
	assert_false(window(&g, &now, &ev, 7000, 250));
	assert_true(window(&g, &now, &ev, 7000, 250));
}

static void test_the_bound_scales_the_rate(void **state)
{
	(void)state;
	/* the 4 KiB open-loop point: 2,000 wake-ups/s. 250 us: half a completion
	 * per bound (off); 1000 us: two (on) */
	struct batch_gate a = { 0 }, b = { 0 };
	uint64_t na = 0, ea = 0, nb = 0, eb = 0;
	batch_gate_update(&a, na, ea, 250);
	batch_gate_update(&b, nb, eb, 1000);
	assert_false(window(&a, &na, &ea, 2000, 250));
	assert_false(window(&a, &na, &ea, 2000, 250));
	assert_false(window(&b, &nb, &eb, 2000, 1000));
	assert_true(window(&b, &nb, &eb, 2000, 1000));
}

static void test_zero_bound_is_off(void **state)
{
	(void)state;
	struct batch_gate g = { 0 };
	uint64_t now = 0, ev = 0;
	batch_gate_update(&g, now, ev, 250);
	window(&g, &now, &ev, 1000000, 250);
	assert_true(window(&g, &now, &ev, 1000000, 250));
	assert_false(window(&g, &now, &ev, 1000000, 0));
	assert_false(g.active);
}

static void test_going_back_restarts(void **state)
{
	(void)state;
	struct batch_gate g = { 0 };
	uint64_t now = 10000, ev = 500000;
	batch_gate_update(&g, now, ev, 250);
	window(&g, &now, &ev, 100000, 250);
	assert_true(window(&g, &now, &ev, 100000, 250));
	/* a count that went back: no decision from a negative difference, the state holds */
	assert_true(batch_gate_update(&g, now + BATCH_RATE_WINDOW_MS, 3, 250));
	assert_int_equal(g.events_at_start, 3);
	/* a clock that went back likewise */
	assert_true(batch_gate_update(&g, 1, 10, 250));
	assert_int_equal(g.window_start_ms, 1);
}

static void test_no_overflow(void **state)
{
	(void)state;
	struct batch_gate g = { 0 };
	batch_gate_update(&g, 0, 0, 1000);
	assert_false(batch_gate_update(&g, BATCH_RATE_WINDOW_MS, UINT64_MAX / 2, 1000));
	assert_true(g.expected_milli >= BATCH_ON_EXPECTED_MILLI);
	assert_true(batch_gate_update(&g, 2 * BATCH_RATE_WINDOW_MS, UINT64_MAX - 1, 1000));
	assert_true(g.expected_milli >= BATCH_ON_EXPECTED_MILLI);
	/* a long quiet stretch: a huge elapsed time, few completions */
	assert_false(batch_gate_update(&g, UINT64_MAX / 2, UINT64_MAX - 1, 1000));
	assert_int_equal(g.expected_milli, 0);
}

static void test_open_loop_stays_on(void **state)
{
	(void)state;
	/* 10,000 messages/s whatever the relay does: 2.5 per 250 us bound. Batched all the
	 * time but the test windows, spent unbatched: soon after the turn-on, then at
	 * doubling intervals up to BATCH_ON_WINDOWS in BATCH_PROBE_MAX_WINDOWS + BATCH_ON_WINDOWS */
	struct batch_gate g = { 0 };
	uint64_t now = 0, ev = 0;
	batch_gate_update(&g, now, ev, 250);
	uint32_t on = 0, total = 20 * (BATCH_PROBE_MAX_WINDOWS + 1);
	for (uint32_t i = 0; i < total; i++)
		on += window_traffic(&g, &now, &ev, 10000, 10000);
	assert_int_equal(g.starved, 0);
	/* some 25 tests of BATCH_ON_WINDOWS unbatched windows each */
	assert_true(total - on >= 20 * BATCH_ON_WINDOWS && total - on <= 30 * BATCH_ON_WINDOWS);
	assert_int_equal(g.probe_windows, BATCH_PROBE_MAX_WINDOWS);
	/* +-5% of noise between windows passes the test too */
	for (uint32_t i = 0; i < total; i++)
		window_traffic(&g, &now, &ev, i % 2 ? 9500 : 10500, i % 2 ? 10500 : 9500);
	assert_int_equal(g.starved, 0);
}

static void test_closed_loop_backs_off(void **state)
{
	(void)state;
	/* a closed loop: 200,000 messages/s unbatched, a third of that batched (each sleep
	 * holds back the answers the peers wait for) */
	struct batch_gate g = { 0 };
	uint64_t now = 0, ev = 0;
	batch_gate_update(&g, now, ev, 250);
	assert_false(window_traffic(&g, &now, &ev, 66000, 200000));
	assert_true(window_traffic(&g, &now, &ev, 66000, 200000));   /* on: rate says so */
	assert_false(window_traffic(&g, &now, &ev, 66000, 200000));  /* slower: off */
	assert_int_equal(g.starved, 1);
	/* off for BATCH_BACKOFF_MIN_WINDOWS, then tested again, then twice as long */
	for (uint32_t i = 0; i < BATCH_BACKOFF_MIN_WINDOWS; i++)
		assert_false(window_traffic(&g, &now, &ev, 66000, 200000));
	assert_false(window_traffic(&g, &now, &ev, 66000, 200000));
	assert_true(window_traffic(&g, &now, &ev, 66000, 200000));
	assert_false(window_traffic(&g, &now, &ev, 66000, 200000));
	assert_int_equal(g.starved, 2);
	assert_int_equal(g.hold_windows, 2 * BATCH_BACKOFF_MIN_WINDOWS);
	/* over minutes the tests cost little: batched a few windows, the back-off capped
	 * at BATCH_BACKOFF_MAX_WINDOWS */
	uint32_t on = 0, total = 4 * BATCH_BACKOFF_MAX_WINDOWS;
	for (uint32_t i = 0; i < total; i++)
		on += window_traffic(&g, &now, &ev, 66000, 200000);
	assert_true(on <= 10);
	assert_int_equal(g.backoff_windows, BATCH_BACKOFF_MAX_WINDOWS);
	/* the traffic turns open-loop: the next test passes and the back-off is forgotten */
	uint32_t starved = g.starved;
	for (uint32_t i = 0; i <= BATCH_BACKOFF_MAX_WINDOWS + 1; i++)
		window_traffic(&g, &now, &ev, 200000, 200000);
	assert_int_equal(g.starved, starved);
	assert_int_equal(g.backoff_windows, 0);
	assert_true(g.windows_on > 0);
}

static void test_a_burst_is_not_the_reference(void **state)
{
	(void)state;
	/* 400 peers connect and register, then send 10,000 messages/s open-loop: the window
	 * that holds the registrations is above the steady rate by more than the test's
	 * margin. Held to it, the first batched window would look starved. */
	struct batch_gate g = { 0 };
	uint64_t now = 0, ev = 0;
	batch_gate_update(&g, now, ev, 250);
	assert_false(window_traffic(&g, &now, &ev, 10000, 0));
	assert_false(window_traffic(&g, &now, &ev, 10000, 16000));
	assert_true(window_traffic(&g, &now, &ev, 10000, 10000));
	assert_int_equal(g.off_rate_per_s, 10000);
	assert_true(window_traffic(&g, &now, &ev, 10000, 10000));
	assert_int_equal(g.starved, 0);
	/* a closed loop is still caught at its first test when its two windows agree */
	struct batch_gate c = { 0 };
	uint64_t nc = 0, ec = 0;
	batch_gate_update(&c, nc, ec, 250);
	window_traffic(&c, &nc, &ec, 66000, 1000); /* connecting: below the threshold */
	window_traffic(&c, &nc, &ec, 66000, 200000);
	assert_true(window_traffic(&c, &nc, &ec, 66000, 200000));
	assert_false(window_traffic(&c, &nc, &ec, 66000, 200000));
	assert_int_equal(c.starved, 1);
}

static void test_probe_finds_a_change(void **state)
{
	(void)state;
	/* open loop first, batched; then the peers start waiting for the relay: the next
	 * probe (one window unbatched) shows it, and batching stops */
	struct batch_gate g = { 0 };
	uint64_t now = 0, ev = 0;
	batch_gate_update(&g, now, ev, 250);
	for (uint32_t i = 0; i < 10 * BATCH_PROBE_MAX_WINDOWS; i++)
		window_traffic(&g, &now, &ev, 50000, 50000);
	assert_int_equal(g.probe_windows, BATCH_PROBE_MAX_WINDOWS);
	uint32_t starved_at = 0;
	for (uint32_t i = 1; i <= BATCH_PROBE_MAX_WINDOWS + BATCH_ON_WINDOWS + 2 && !starved_at; i++) {
		window_traffic(&g, &now, &ev, 50000, 150000);
		if (g.starved)
			starved_at = i;
	}
	assert_true(starved_at > 0);
	assert_false(g.active);
	assert_true(g.hold_windows > 0);
}

static void test_small_counts_need_a_bigger_drop(void **state)
{
	(void)state;
	/* 20% slower batched: with 250 messages a window that is within three standard
	 * deviations of Poisson noise (not taken for a closed loop); with 2,500 it is not */
	struct batch_gate a = { 0 }, b = { 0 };
	uint64_t na = 0, ea = 0, nb = 0, eb = 0;
	batch_gate_update(&a, na, ea, 1000);
	batch_gate_update(&b, nb, eb, 250);
	assert_false(window_traffic_us(&a, &na, &ea, 4000, 5000, 1000));
	assert_true(window_traffic_us(&a, &na, &ea, 4000, 5000, 1000));
	assert_true(window_traffic_us(&a, &na, &ea, 4000, 5000, 1000));
	assert_int_equal(a.starved, 0);
	assert_false(window_traffic(&b, &nb, &eb, 40000, 50000));
	assert_true(window_traffic(&b, &nb, &eb, 40000, 50000));
	assert_false(window_traffic(&b, &nb, &eb, 40000, 50000));
	assert_int_equal(b.starved, 1);
	/* within 10% is never a closed loop, however many messages */
	struct batch_gate c = { 0 };
	uint64_t nc = 0, ec = 0;
	batch_gate_update(&c, nc, ec, 250);
	assert_false(window_traffic(&c, &nc, &ec, 910000, 1000000));
	assert_true(window_traffic(&c, &nc, &ec, 910000, 1000000));
	assert_true(window_traffic(&c, &nc, &ec, 910000, 1000000));
	assert_int_equal(c.starved, 0);
}

static void test_bound_shrinks_at_high_rates(void **state)
{
	(void)state;
	struct batch_gate g = { 0 };
	/* no rate seen yet: the configured bound */
	assert_int_equal(batch_gate_bound_us(&g, 250), 250);
	/* 10,000 messages/s: a full batch takes 1.6 ms, longer than the bound */
	g.rate_per_s = 10000;
	assert_int_equal(batch_gate_bound_us(&g, 250), 250);
	/* 200,000/s: a full batch is there in 80 us */
	g.rate_per_s = 200000;
	assert_int_equal(batch_gate_bound_us(&g, 250), 80);
	/* never 0 (the kernel would not batch at all) */
	g.rate_per_s = UINT64_MAX;
	assert_int_equal(batch_gate_bound_us(&g, 250), 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_off_until_a_window_is_seen),
		cmocka_unit_test(test_threshold),
		cmocka_unit_test(test_the_bound_scales_the_rate),
		cmocka_unit_test(test_zero_bound_is_off),
		cmocka_unit_test(test_going_back_restarts),
		cmocka_unit_test(test_no_overflow),
		cmocka_unit_test(test_open_loop_stays_on),
		cmocka_unit_test(test_closed_loop_backs_off),
		cmocka_unit_test(test_a_burst_is_not_the_reference),
		cmocka_unit_test(test_probe_finds_a_change),
		cmocka_unit_test(test_small_counts_need_a_bigger_drop),
		cmocka_unit_test(test_bound_shrinks_at_high_rates),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
