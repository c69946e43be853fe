/*
 * simd.h - which vector instructions the payload passes use (issue #17, ADR 19).
 *
 * The passes over every received payload byte (the fused unmask + ASCII test in
 * ws_frame.c, the JSON string scan in json.c) have a portable path (8-byte words), an
 * SSE2 one (16 bytes; every x86-64, so the build's baseline there) and an AVX2 one (32
 * bytes), compiled with a per-function target so the binary still runs on any x86-64.
 * Which one runs is chosen once at start-up (simd_select in main, from --payload-isa,
 * before any thread starts) and read by the passes without a lock: nothing writes it
 * after that. Until it is chosen, the build's baseline runs, so tests and fuzz targets
 * need no set-up.
 *
 * AVX-512 is left out on purpose: on many Xeons 512-bit instructions lower the
 * clock of the whole core for milliseconds, which every other connection of the
 * worker would pay for, and a payload of a few KiB gains little from 64 bytes a step
 * over 32.
 */
#ifndef PYRY_CORE_SIMD_H
#define PYRY_CORE_SIMD_H

enum simd_level {
	SIMD_WORD, /* 8-byte words, any CPU */
	SIMD_SSE2, /* 16 bytes: every x86-64 */
	SIMD_AVX2, /* 32 bytes, where the CPU has it */
};

#if defined(__x86_64__) && defined(__SSE2__)
#define SIMD_BASELINE SIMD_SSE2
#define SIMD_HAVE_AVX2 1 /* the build can emit AVX2 functions */
#else
#define SIMD_BASELINE SIMD_WORD
#define SIMD_HAVE_AVX2 0
#endif

/* The AVX2 paths run only over at least this many bytes: below that, the call and the
 * key or constant set-up cost more than the wider steps save. */
#define SIMD_AVX2_MIN_BYTES 64u

/* The level in force; SIMD_BASELINE until simd_select. Read through simd_selected. */
extern enum simd_level simd_level_selected;

static inline enum simd_level simd_selected(void)
{
	return simd_level_selected;
}

/* The widest level this CPU runs and this build has. */
enum simd_level simd_detect(void);

/* Use `level`, or the widest this CPU and build have when it asks for more (never an
 * instruction the CPU lacks). Call before any thread runs a payload pass. Returns the
 * level now in force. */
enum simd_level simd_select(enum simd_level level);

/* "word", "sse2" or "avx2": the /metrics label. */
const char *simd_name(enum simd_level level);

#endif
