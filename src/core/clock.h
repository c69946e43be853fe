/*
 * clock.h - the one monotonic clock the loops read (CLOCK_MONOTONIC, vDSO: no system
 * call). Contract: never goes backwards, unaffected by wall-clock changes; nanoseconds
 * since an arbitrary origin (boot), 64 bits (584 years).
 */
#ifndef PYRELAY_CLOCK_H
#define PYRELAY_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t monotonic_ms(void)
{
	return monotonic_ns() / 1000000u;
}

#endif
