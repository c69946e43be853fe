/*
 * test_handover.c - the one parser of the listener hand-over (engine/handover.h): the
 * counts "LISTENERS n" and "FDS k" a successor reads from its predecessor. The
 * exchange itself (SCM_RIGHTS, the drain) runs for real in tests/e2e/test_restart.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "engine/handover.h"

static bool parse(const char *s, uint32_t max, uint32_t *n)
{
	return handover_parse_count(span_make(s, strlen(s)), "FDS", max, n);
}

static void test_counts_accepted(void **state)
{
	(void)state;
	uint32_t n = 0;
	assert_true(parse("FDS 1", 240, &n));
	assert_int_equal(n, 1);
	assert_true(parse("FDS 240", 240, &n));
	assert_int_equal(n, 240);
	assert_true(handover_parse_count(span_make("LISTENERS 512", 13), "LISTENERS", 512, &n));
	assert_int_equal(n, 512);
	assert_true(parse("FDS 4294967295", UINT32_MAX, &n));
	assert_int_equal(n, UINT32_MAX);
}

static void test_counts_refused(void **state)
{
	(void)state;
	static const char *const bad[] = {
		"", "FDS", "FDS ", "FDS 0", "FDS 01", "FDS 241", "FDS -1", "FDS +1", "FDS 1 ", " FDS 1",
		"FDS  1", "FDS 1x", "FDSX 1", "fds 1", "LISTENERS 1", "FDS 4294967296", "FDS 99999999999",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		uint32_t n = 77;
		assert_false(parse(bad[i], i == 15 ? UINT32_MAX : 240, &n));
		assert_int_equal(n, 77); /* untouched */
	}
	/* a NUL inside is a byte like any other, not an end */
	uint32_t n = 0;
	assert_false(handover_parse_count(span_make("FDS 1\0" "2", 7), "FDS", 240, &n));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_counts_accepted),
		cmocka_unit_test(test_counts_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
