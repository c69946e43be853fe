/*
 * batch.h - when a worker's wait should be a batched one (--batch-wait-us, ADR 0019).
 *
 * A batched wait asks the kernel to hold the sleeping worker up to the bound for a few
 * completions (IORING_ENTER_EXT_ARG min_wait_usec). It pays only when completions
 * arrive often enough that a second one is likely within the bound; otherwise it adds
 * a timer to every sleep and serves no more frames per wake-up. The gate estimates,
 * once per BATCH_RATE_WINDOW_MS, how many wake-causing completions arrive within one
 * bound, and turns batching on at BATCH_ON_EXPECTED_MILLI thousandths of a completion,
 * off below BATCH_OFF_EXPECTED_MILLI (hysteresis, so a rate near the threshold does
 * not flap). Pure: the caller supplies the clock and a running count of completions.
 */
#ifndef PYRY_ENGINE_BATCH_H
#define PYRY_ENGINE_BATCH_H

#include <stdbool.h>
#include <stdint.h>

#define BATCH_RATE_WINDOW_MS 100u
#define BATCH_ON_EXPECTED_MILLI 2000u  /* two completions expected within one bound: batch */
#define BATCH_OFF_EXPECTED_MILLI 1500u /* fewer than one and a half: wake at once */

struct batch_gate {
	uint64_t window_start_ms;
	uint64_t events_at_start; /* the running count when the window began */
	uint64_t expected_milli;  /* the last window's estimate (thousandths of a completion per bound) */
	bool started;
	bool active;
};

/* events: a running (never decreasing) count of completions that would wake a sleeping
 * worker; wait_us: the bound in force (0: batching off). Returns whether the next wait
 * should be batched. */
bool batch_gate_update(struct batch_gate *g, uint64_t now_ms, uint64_t events, uint32_t wait_us);

#endif
