#include "core/common.h"

#include <stdio.h>
#include <stdlib.h>

void assert_fail(const char *expr, const char *file, int line)
{
	fprintf(stderr, "assertion failed: %s (%s:%d)\n", expr, file, line);
	abort();
}

bool span_eq_cstr(struct span s, const char *lit)
{
	size_t i = 0;
	for (; i < s.len; i++) {
		if (lit[i] == '\0' || (uint8_t)lit[i] != s.ptr[i])
			return false;
	}
	return lit[i] == '\0';
}

static inline uint8_t ascii_lower(uint8_t c)
{
	return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
}

bool span_eq_nocase(struct span s, const char *lit)
{
	size_t i = 0;
	for (; i < s.len; i++) {
		if (lit[i] == '\0' || ascii_lower((uint8_t)lit[i]) != ascii_lower(s.ptr[i]))
			return false;
	}
	return lit[i] == '\0';
}
