/*
 * rng.h - the unit tests' reproducible generator (splitmix64): seed rng_state, then
 * draw. Same sequence on every run, compiler and libc; no rand() state shared with the
 * code under test. Header-only: one copy per test binary.
 */
#ifndef PYRELAY_TEST_RNG_H
#define PYRELAY_TEST_RNG_H

#include <stdint.h>

static uint64_t rng_state;

static inline uint64_t rng_next(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform enough for tests in [0, n), n > 0 (modulo bias is irrelevant here). */
static inline uint64_t rng_below(uint64_t n)
{
	return rng_next() % n;
}

#endif
