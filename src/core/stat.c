#include "core/stat.h"

#include <stdlib.h>
#include <string.h>

const uint64_t latency_bounds_ns[LATENCY_BOUNDS_COUNT] = {
	1000ull,      2500ull,      5000ull,      /* 1 us .. */
	10000ull,     25000ull,     50000ull,     /* 10 us .. */
	100000ull,    250000ull,    500000ull,    /* 100 us .. */
	1000000ull,   2500000ull,   5000000ull,   /* 1 ms .. */
	10000000ull,  25000000ull,  50000000ull,  /* 10 ms .. */
	100000000ull, 250000000ull, 500000000ull, /* 100 ms .. */
	1000000000ull,                            /* 1 s */
};

uint32_t latency_bucket_of(uint64_t ns)
{
	/* Binary search over 19 bounds: at most 5 comparisons. */
	uint32_t lo = 0, hi = LATENCY_BOUNDS_COUNT;
	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;
		if (latency_bounds_ns[mid] < ns)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

void *calloc_aligned(size_t bytes)
{
	size_t rounded = (bytes + CACHE_LINE_BYTES - 1) / CACHE_LINE_BYTES * CACHE_LINE_BYTES;
	void *p = aligned_alloc(CACHE_LINE_BYTES, rounded ? rounded : CACHE_LINE_BYTES);
	if (p != NULL)
		memset(p, 0, rounded);
	return p;
}
