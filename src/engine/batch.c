/*
 * batch.c - the batched-wait gate (batch.h).
 */
#include "engine/batch.h"

/* a * b / c, saturating at UINT64_MAX / c where the product would overflow. */
static uint64_t scale(uint64_t a, uint64_t b, uint64_t c)
{
	if (b != 0 && a > UINT64_MAX / b)
		return UINT64_MAX / c;
	return a * b / c;
}

/* The first batched window's rate against the unbatched one before it: lower by more
 * than the percentage and, taking the windows' counts as Poisson, by more than
 * BATCH_STARVED_SIGMAS standard deviations of their difference. */
static bool slowed_by_batching(const struct batch_gate *g)
{
	if (scale(g->rate_per_s, 100u, 1u) >= scale(g->off_rate_per_s, BATCH_STARVED_PERCENT, 1u))
		return false;
	uint64_t on = scale(g->rate_per_s, BATCH_RATE_WINDOW_MS, 1000u);
	uint64_t off = scale(g->off_rate_per_s, BATCH_RATE_WINDOW_MS, 1000u);
	if (off <= on)
		return false;
	uint64_t drop = off - on;
	/* drop > k * sqrt(on + off)  <=>  drop^2 > k^2 * (on + off) */
	if (drop > UINT32_MAX)
		return true;
	return drop * drop > (uint64_t)BATCH_STARVED_SIGMAS * BATCH_STARVED_SIGMAS * (on + off);
}

static void turn_off_for_a_while(struct batch_gate *g)
{
	g->active = false;
	g->starved++;
	g->probe_windows = 0; /* after the next pass, test again soon */
	if (g->backoff_windows < BATCH_BACKOFF_MIN_WINDOWS)
		g->backoff_windows = BATCH_BACKOFF_MIN_WINDOWS;
	g->hold_windows = g->backoff_windows;
	g->backoff_windows = g->backoff_windows > BATCH_BACKOFF_MAX_WINDOWS / 2u ? BATCH_BACKOFF_MAX_WINDOWS
										 : 2u * g->backoff_windows;
}

bool batch_gate_update(struct batch_gate *g, uint64_t now_ms, uint64_t events, uint32_t wait_us)
{
	if (wait_us == 0) {
		g->active = false;
		return false;
	}
	if (!g->started || events < g->events_at_start || now_ms < g->window_start_ms) {
		/* first call, or a count or clock that went back (a reset): start a window */
		g->started = true;
		g->window_start_ms = now_ms;
		g->events_at_start = events;
		return g->active;
	}
	uint64_t elapsed_ms = now_ms - g->window_start_ms;
	if (elapsed_ms < BATCH_RATE_WINDOW_MS)
		return g->active;
	uint64_t n = events - g->events_at_start;
	/* messages per bound, in thousandths: (n / elapsed_ms) * (wait_us / 1000) * 1000 */
	g->expected_milli = scale(n, wait_us, elapsed_ms);
	g->rate_per_s = scale(n, 1000u, elapsed_ms);
	g->window_start_ms = now_ms;
	g->events_at_start = events;

	if (g->active) {
		if (g->windows_on == 0 && slowed_by_batching(g)) {
			turn_off_for_a_while(g);
			return false;
		}
		if (g->windows_on == 0) {
			/* the test passed: forget earlier failures, test again later */
			g->backoff_windows = 0;
			g->probe_windows = g->probe_windows < BATCH_PROBE_MIN_WINDOWS ? BATCH_PROBE_MIN_WINDOWS
				: g->probe_windows > BATCH_PROBE_MAX_WINDOWS / 2u ? BATCH_PROBE_MAX_WINDOWS
				: 2u * g->probe_windows;
		}
		g->windows_on++;
		if (g->expected_milli < BATCH_OFF_EXPECTED_MILLI || g->windows_on > g->probe_windows)
			g->active = false; /* too slow to batch, or off a while to test again */
		return g->active;
	}
	if (g->hold_windows > 0) {
		g->hold_windows--;
		g->qualified_windows = 0;
		return false;
	}
	if (g->expected_milli < BATCH_ON_EXPECTED_MILLI) {
		g->qualified_windows = 0;
		return false;
	}
	/* the test's reference is the slower of the qualifying windows, so one burst (the
	 * peers connecting and registering) is not taken for the unbatched rate */
	if (g->qualified_windows == 0 || g->rate_per_s < g->off_rate_per_s)
		g->off_rate_per_s = g->rate_per_s;
	if (++g->qualified_windows >= BATCH_ON_WINDOWS) {
		g->qualified_windows = 0;
		g->active = true;
		g->windows_on = 0;
	}
	return g->active;
}

uint32_t batch_gate_bound_us(const struct batch_gate *g, uint32_t wait_us)
{
	if (g->rate_per_s == 0)
		return wait_us > 0 ? wait_us : 1u;
	uint64_t full_batch_us = scale(BATCH_WAIT_COMPLETIONS, 1000000u, g->rate_per_s);
	uint64_t bound = full_batch_us < wait_us ? full_batch_us : wait_us;
	return bound > 0 ? (uint32_t)bound : 1u;
}
