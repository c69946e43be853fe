/*
 * stat.h - per-worker counters that another thread reads without stopping the writer.
 *
 * Contract:
 * - Every counter has exactly one writer: the worker thread that owns it. The writer
 *   updates with STAT_ADD/STAT_SUB, a relaxed atomic load and store: on x86-64 and
 *   arm64 that compiles to a plain load, add and store (no lock prefix, no fence), so
 *   the frame path pays nothing for being observable.
 * - Readers (the metrics responder) use STAT_GET, a relaxed load: each value is a real
 *   value the counter had, never torn; values read from different counters in one
 *   scrape may be a few events apart, as with any live scrape.
 * - Blocks of counters are aligned to a cache line so one worker's writes never share
 *   a line with another worker's (false sharing would make every increment a miss).
 */
#ifndef PYRELAY_STAT_H
#define PYRELAY_STAT_H

#include "core/common.h"

#define STAT_GET(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)
#define STAT_SET(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)
#define STAT_ADD(field, n) STAT_SET(field, STAT_GET(field) + (n))
#define STAT_SUB(field, n) STAT_SET(field, STAT_GET(field) - (n))
#define STAT_INC(field) STAT_ADD(field, 1)
#define STAT_DEC(field) STAT_SUB(field, 1)

#define STAT_ALIGNED __attribute__((aligned(CACHE_LINE_BYTES)))

/*
 * A latency histogram with fixed log buckets (1-2.5-5 per decade, 1 us to 1 s, then
 * +Inf). Bucket counts are not cumulative here; the exposition makes them so.
 */
#define LATENCY_BOUNDS_COUNT 19u
extern const uint64_t latency_bounds_ns[LATENCY_BOUNDS_COUNT];

struct latency_hist {
	uint64_t bucket[LATENCY_BOUNDS_COUNT + 1]; /* last: above the largest bound */
	uint64_t count;
	uint64_t sum_ns;
};

/* Index of the bucket that holds ns: the first bound >= ns, or the +Inf bucket. */
uint32_t latency_bucket_of(uint64_t ns);

/* Record n observations of ns each (single writer). */
static inline void latency_observe(struct latency_hist *h, uint64_t ns, uint64_t n)
{
	uint32_t b = latency_bucket_of(ns);
	STAT_ADD(h->bucket[b], n);
	STAT_ADD(h->count, n);
	STAT_ADD(h->sum_ns, ns * n);
}

/* Zeroed memory aligned to a cache line (for blocks holding STAT_ALIGNED members);
 * free with free(). NULL when out of memory. */
void *calloc_aligned(size_t bytes);

#endif
