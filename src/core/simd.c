/*
 * simd.c - choosing the payload passes' instructions at start-up (simd.h).
 */
#include "core/simd.h"

enum simd_level simd_level_selected = SIMD_BASELINE;

enum simd_level simd_detect(void)
{
#if SIMD_HAVE_AVX2
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx2"))
		return SIMD_AVX2;
#endif
	return SIMD_BASELINE;
}

enum simd_level simd_select(enum simd_level level)
{
	enum simd_level most = simd_detect();

	simd_level_selected = level > most ? most : level;
	return simd_level_selected;
}

const char *simd_name(enum simd_level level)
{
	switch (level) {
	case SIMD_AVX2:
		return "avx2";
	case SIMD_SSE2:
		return "sse2";
	case SIMD_WORD:
		break;
	}
	return "word";
}
