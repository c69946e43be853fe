/*
 * batch.c - the batched-wait gate (batch.h).
 */
#include "engine/batch.h"

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
	/* completions per bound, in thousandths: (events / elapsed_ms) * (wait_us / 1000) * 1000 */
	uint64_t n = events - g->events_at_start;
	uint64_t per_ms_limit = UINT64_MAX / wait_us; /* no overflow for any count */
	g->expected_milli = n > per_ms_limit ? UINT64_MAX / elapsed_ms : n * wait_us / elapsed_ms;
	if (g->active)
		g->active = g->expected_milli >= BATCH_OFF_EXPECTED_MILLI;
	else
		g->active = g->expected_milli >= BATCH_ON_EXPECTED_MILLI;
	g->window_start_ms = now_ms;
	g->events_at_start = events;
	return g->active;
}
