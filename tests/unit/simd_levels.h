/*
 * simd_levels.h - run a test body at every level of instructions this CPU has
 * (core/simd.h), narrowest first, and leave the widest selected. Include after
 * cmocka.h.
 */
#ifndef PYRY_TEST_SIMD_LEVELS_H
#define PYRY_TEST_SIMD_LEVELS_H

#include "core/simd.h"

static inline void at_every_simd_level(const char *what, void (*body)(void))
{
	enum simd_level most = simd_detect();
	for (enum simd_level l = SIMD_WORD; l <= most; l++) {
		assert_int_equal(simd_select(l), l);
		print_message("%s at %s\n", what, simd_name(l));
		body();
	}
}

#endif
