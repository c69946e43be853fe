#include "hist.h"

#include <string.h>

#include "core/common.h"

void hist_reset(struct hist *h)
{
	memset(h, 0, sizeof *h);
	h->min_ns = UINT64_MAX;
}

static uint32_t bucket_of(uint64_t v)
{
	if (v < HIST_LINEAR_MAX)
		return (uint32_t)v;
	uint32_t e = 63u - (uint32_t)__builtin_clzll(v); /* 8..HIST_TOP_BIT */
	uint32_t sub = (uint32_t)(v >> (e - 7u));         /* 128..255 */
	return HIST_LINEAR_MAX + (e - 8u) * HIST_SUB_BUCKETS + (sub - HIST_SUB_BUCKETS);
}

/* Highest value that falls into bucket b. */
static uint64_t bucket_top(uint32_t b)
{
	if (b < HIST_LINEAR_MAX)
		return b;
	uint32_t k = b - HIST_LINEAR_MAX;
	uint32_t e = 8u + k / HIST_SUB_BUCKETS;
	uint64_t sub = HIST_SUB_BUCKETS + k % HIST_SUB_BUCKETS;
	return ((sub + 1u) << (e - 7u)) - 1u;
}

void hist_record(struct hist *h, uint64_t v)
{
	if (v > HIST_VALUE_NS_MAX) {
		v = HIST_VALUE_NS_MAX;
		h->clamped++;
	}
	uint32_t b = bucket_of(v);
	ASSERT(b < HIST_BUCKETS);
	h->buckets[b]++;
	h->count++;
	h->sum_ns += (long double)v;
	if (v < h->min_ns)
		h->min_ns = v;
	if (v > h->max_ns)
		h->max_ns = v;
}

void hist_merge(struct hist *into, const struct hist *from)
{
	for (uint32_t b = 0; b < HIST_BUCKETS; b++)
		into->buckets[b] += from->buckets[b];
	into->count += from->count;
	into->clamped += from->clamped;
	into->sum_ns += from->sum_ns;
	if (from->count) {
		into->min_ns = MIN(into->min_ns, from->min_ns);
		into->max_ns = MAX(into->max_ns, from->max_ns);
	}
}

uint64_t hist_quantile_ns(const struct hist *h, double q)
{
	if (h->count == 0)
		return 0;
	if (q < 0)
		q = 0;
	if (q > 1)
		q = 1;
	uint64_t rank = (uint64_t)(q * (double)h->count + 0.999999);
	if (rank < 1)
		rank = 1;
	uint64_t seen = 0;
	for (uint32_t b = 0; b < HIST_BUCKETS; b++) {
		seen += h->buckets[b];
		if (seen >= rank) {
			uint64_t top = bucket_top(b);
			return top > h->max_ns ? h->max_ns : top;
		}
	}
	return h->max_ns;
}

double hist_mean_ns(const struct hist *h)
{
	return h->count ? (double)(h->sum_ns / (long double)h->count) : 0.0;
}
