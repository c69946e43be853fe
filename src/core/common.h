/*
 * common.h - small conventions shared by every module.
 *
 * ASSERT is always on, in release builds too: an invariant that does not hold means
 * memory is already wrong, and crashing loudly beats routing a frame to the wrong
 * phone. Tests and fuzzers rely on it to turn silent corruption into a crash.
 */
#ifndef PYRELAY_COMMON_H
#define PYRELAY_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define CACHE_LINE_BYTES 64

void assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn, cold));

#define ASSERT(expr) \
	do { \
		if (UNLIKELY(!(expr))) \
			assert_fail(#expr, __FILE__, __LINE__); \
	} while (0)

#define CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* A read-only byte span. Parsers take and return these; they never own memory. */
struct span {
	const uint8_t *ptr;
	size_t len;
};

static inline struct span span_make(const void *p, size_t n)
{
	return (struct span){ .ptr = (const uint8_t *)p, .len = n };
}

static inline struct span span_cstr(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return span_make(s, n);
}

/* The value of one hexadecimal digit (either case), -1 if c is not one. */
static inline int hex_digit_value(uint8_t c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Byte-exact equality of a span with a NUL-terminated literal. */
bool span_eq_cstr(struct span s, const char *lit);
/* ASCII case-insensitive equality of a span with a NUL-terminated literal. */
bool span_eq_nocase(struct span s, const char *lit);

#endif
