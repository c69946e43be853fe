/*
 * hist.h - a fixed-memory log-linear latency histogram (HdrHistogram-like).
 *
 * Values are nanoseconds from 0 to HIST_VALUE_NS_MAX (60 s; larger values are clamped
 * and counted in `clamped`). Below 256 ns every value has its own bucket; above, each
 * power of two is split into 128 linear sub-buckets, so a reported percentile is
 * within 1/128 (< 0.8 %) of the true value: two significant decimal digits.
 * No allocation: the counters live in the struct (about 30 KiB).
 */
#ifndef LOADGEN_HIST_H
#define LOADGEN_HIST_H

#include <stdint.h>

#define HIST_VALUE_NS_MAX (60ull * 1000 * 1000 * 1000)
#define HIST_SUB_BUCKETS 128u                   /* per power of two above HIST_LINEAR_MAX */
#define HIST_LINEAR_MAX (2u * HIST_SUB_BUCKETS) /* values below this are exact */
#define HIST_TOP_BIT 36u                        /* 2^36 ns > 60 s */
#define HIST_BUCKETS (HIST_LINEAR_MAX + (HIST_TOP_BIT - 8u + 1u) * HIST_SUB_BUCKETS)

struct hist {
	uint64_t count;
	uint64_t clamped;
	uint64_t min_ns;
	uint64_t max_ns;
	long double sum_ns;
	uint64_t buckets[HIST_BUCKETS];
};

void hist_reset(struct hist *h);
void hist_record(struct hist *h, uint64_t value_ns);
/* Add every count of `from` into `into`. */
void hist_merge(struct hist *into, const struct hist *from);
/* Value at quantile q (0..1): the highest value equivalent to the bucket holding the
 * ceil(q * count)-th smallest sample, never above max_ns. 0 when empty. */
uint64_t hist_quantile_ns(const struct hist *h, double q);
double hist_mean_ns(const struct hist *h);

#endif
