/*
 * batch.h - when a worker's wait should be a batched one (--batch-wait-us, ADR 0019).
 *
 * A batched wait asks the kernel to hold the sleeping worker up to the bound for a few
 * completions (IORING_ENTER_EXT_ARG min_wait_usec). It pays only when messages arrive
 * often enough that a second one is likely within the bound; otherwise it adds a timer
 * to every sleep and serves no more frames per wake-up. The gate estimates, once per
 * BATCH_RATE_WINDOW_MS, how many messages arrive within one bound, and turns batching
 * on at BATCH_ON_EXPECTED_MILLI thousandths of a message, off below
 * BATCH_OFF_EXPECTED_MILLI (hysteresis, so a rate near the threshold does not flap).
 *
 * That alone is wrong when the peers wait for the relay (request and response, or a
 * sender with a small window in flight): there the relay's latency sets the rate, and a
 * batched sleep holds back the very traffic it waits for. Open-loop traffic arrives
 * at its own rate whatever the relay does, so the gate tests which it is: batching
 * turns on after BATCH_ON_WINDOWS unbatched windows in a row at the on-threshold, the
 * first batched window is compared with the slower of them (one burst, such as the
 * peers connecting and registering, is not the rate to hold it to), and a rate that
 * fell below BATCH_STARVED_PERCENT of it, by more than BATCH_STARVED_SIGMAS standard
 * deviations of the counts (so that a few hundred messages' noise is not taken for
 * it), means batching slowed the traffic. Batching then stays off for a back-off that
 * doubles (BATCH_BACKOFF_MIN_WINDOWS up to BATCH_BACKOFF_MAX_WINDOWS) while the test
 * keeps failing. A test can pass by luck (a load still ramping up), and traffic can
 * change its nature while batched, so after BATCH_PROBE_MIN_WINDOWS batched windows
 * BATCH_ON_WINDOWS are spent unbatched to test again, the interval doubling with each
 * pass up to BATCH_PROBE_MAX_WINDOWS. Each test costs one window at the slower rate
 * where batching hurts, and BATCH_ON_WINDOWS unbatched windows where it helps.
 *
 * A batched sleep never waits longer than a full batch takes to arrive at the measured
 * rate (batch_gate_bound_us): at high rates the bound shrinks, so a sleep that the
 * kernel ends by the clock, not by the count (few sockets, each completion carrying
 * many messages), adds that much latency, not the whole bound. Pure: the caller
 * supplies the clock and a running count.
 */
#ifndef PYRY_ENGINE_BATCH_H
#define PYRY_ENGINE_BATCH_H

#include <stdbool.h>
#include <stdint.h>

#define BATCH_RATE_WINDOW_MS 50u
#define BATCH_ON_EXPECTED_MILLI 1600u  /* 1.6 messages expected within one bound: batch */
#define BATCH_OFF_EXPECTED_MILLI 1200u /* fewer than 1.2: wake at once */
#define BATCH_ON_WINDOWS 2u            /* unbatched windows in a row at the threshold to turn on */
#define BATCH_WAIT_COMPLETIONS 16u     /* a batched sleep ends early once this many are there */
#define BATCH_STARVED_PERCENT 90u      /* batched rate below this share of the unbatched one */
#define BATCH_STARVED_SIGMAS 3u        /* ... by more than this many standard deviations */
#define BATCH_BACKOFF_MIN_WINDOWS (2000u / BATCH_RATE_WINDOW_MS)  /* 2 s off after a failed test */
#define BATCH_BACKOFF_MAX_WINDOWS (60000u / BATCH_RATE_WINDOW_MS) /* at most 60 s */
#define BATCH_PROBE_MIN_WINDOWS 2u                                /* the first test again soon */
#define BATCH_PROBE_MAX_WINDOWS (5000u / BATCH_RATE_WINDOW_MS)    /* at least every 5 s */

struct batch_gate {
	uint64_t window_start_ms;
	uint64_t events_at_start; /* the running count when the window began */
	uint64_t expected_milli;  /* the last window's estimate (thousandths of a message per bound) */
	uint64_t rate_per_s;      /* the last window's rate */
	uint64_t off_rate_per_s;  /* the slowest of the unbatched windows that turned it on */
	uint32_t qualified_windows; /* unbatched windows in a row at the on-threshold */
	uint32_t windows_on;      /* windows batched since the last turn-on */
	uint32_t probe_windows;   /* batched windows before the next unbatched test window */
	uint32_t hold_windows;    /* windows left before batching may turn on again */
	uint32_t backoff_windows; /* the next hold after a failed test (0: none failed lately) */
	uint32_t starved;         /* times the test found batching slowing the traffic */
	bool started;
	bool active;
};

/* events: a running (never decreasing) count of messages received; wait_us: the bound
 * in force (0: batching off). Call before each wait; returns whether to batch it. */
bool batch_gate_update(struct batch_gate *g, uint64_t now_ms, uint64_t events, uint32_t wait_us);

/* The bound for a batched wait: wait_us, or less where BATCH_WAIT_COMPLETIONS messages
 * arrive sooner at the last window's rate; at least 1. */
uint32_t batch_gate_bound_us(const struct batch_gate *g, uint32_t wait_us);

#endif
