/*
 * test_prom.c - the Prometheus text writer: numbers written exactly as Go's
 * FormatFloat(v, 'g', -1, 64) writes them (the reference's exposition), and always
 * round-tripping; HELP and label-value escaping; histogram _bucket (cumulative, +Inf),
 * _sum and _count; a buffer too small sets overflow and never writes past cap.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics/prom.h"

#define RANDOM_DOUBLES 200000
#define OUT_BYTES 4096

static void expect_num(double v, const char *want)
{
	char got[PROM_DOUBLE_CHARS_MAX];
	size_t n = prom_format_double(got, v);
	if (strcmp(got, want) != 0)
		fail_msg("format(%.17g): got \"%s\", want \"%s\"", v, got, want);
	assert_int_equal(n, strlen(want));
}

static void test_go_formatting(void **state)
{
	(void)state;
	expect_num(0, "0");
	expect_num(-0.0, "0");
	expect_num(1, "1");
	expect_num(-1, "-1");
	expect_num(12, "12");
	expect_num(100, "100");
	expect_num(100000, "100000");
	expect_num(999999, "999999");
	expect_num(1e6, "1e+06");
	expect_num(1234567, "1.234567e+06");
	expect_num(123456789, "1.23456789e+08");
	expect_num(100000.5, "100000.5");
	expect_num(123456.789, "123456.789");
	expect_num(0.25, "0.25");
	expect_num(-2.5, "-2.5");
	expect_num(0.1, "0.1");
	expect_num(1.0 / 3.0, "0.3333333333333333");
	expect_num(0.0001, "0.0001");
	expect_num(0.00001, "1e-05");
	expect_num(2.5e-06, "2.5e-06");
	expect_num(0.00025, "0.00025");
	expect_num(1e21, "1e+21");
	expect_num(1e100, "1e+100");
	expect_num(5e-324, "5e-324");
	expect_num(1.7976931348623157e308, "1.7976931348623157e+308");
	expect_num(9007199254740991.0, "9.007199254740991e+15");
	expect_num(18446744073709551615.0, "1.8446744073709552e+19");
	expect_num(1.7954385673277297e9, "1.7954385673277297e+09");
	expect_num(NAN, "NaN");
	expect_num(INFINITY, "+Inf");
	expect_num(-INFINITY, "-Inf");
}

static uint64_t rng = 0x1234567887654321ull;
static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* Every finite double comes back exactly, in at most 17 significant digits. */
static void test_round_trip(void **state)
{
	(void)state;
	char got[PROM_DOUBLE_CHARS_MAX];
	for (int i = 0; i < RANDOM_DOUBLES; i++) {
		uint64_t bits = next();
		double v;
		memcpy(&v, &bits, sizeof v);
		if (i % 4 == 0)
			v = (double)(next() >> (next() % 64)); /* integers of every width */
		else if (i % 4 == 1)
			v = (double)(next() % 1000000) / 1000.0; /* short decimals */
		if (!isfinite(v))
			continue;
		prom_format_double(got, v);
		double back = strtod(got, NULL);
		if (back != v && !(v == 0 && back == 0))
			fail_msg("round trip %.17g -> %s -> %.17g", v, got, back);
		/* at most 17 digits, sign, point and "e-308" */
		assert_true(strlen(got) <= 24);
	}
}

static void test_family_and_escaping(void **state)
{
	(void)state;
	char buf[OUT_BYTES];
	struct prom_out o;
	prom_out_init(&o, buf, sizeof buf);
	prom_family(&o, "m_total", "a\\b\nc \"quoted\"", PROM_COUNTER);
	struct prom_label l[2] = { { "k", "x\"y\\z\nw" }, { "e", "" } };
	prom_sample(&o, "m_total", l, 2, 3);
	prom_family(&o, "g", "gauge", PROM_GAUGE);
	prom_sample(&o, "g", NULL, 0, 0.5);
	assert_false(o.overflow);
	const char *want = "# HELP m_total a\\\\b\\nc \"quoted\"\n"
			   "# TYPE m_total counter\n"
			   "m_total{k=\"x\\\"y\\\\z\\nw\",e=\"\"} 3\n"
			   "# HELP g gauge\n"
			   "# TYPE g gauge\n"
			   "g 0.5\n";
	assert_int_equal(o.len, strlen(want));
	assert_memory_equal(buf, want, o.len);
}

static void test_histogram(void **state)
{
	(void)state;
	char buf[OUT_BYTES];
	struct prom_out o;
	prom_out_init(&o, buf, sizeof buf);
	const double bounds[] = { 0.001, 0.1, 1 };
	const uint64_t counts[] = { 2, 0, 3, 1 }; /* per bucket; the last is above 1 */
	struct prom_label l = { "worker", "0" };
	prom_family(&o, "lat_seconds", "latency", PROM_HISTOGRAM);
	prom_histogram(&o, "lat_seconds", &l, 1, bounds, 3, counts, 4.5);
	assert_false(o.overflow);
	const char *want = "# HELP lat_seconds latency\n"
			   "# TYPE lat_seconds histogram\n"
			   "lat_seconds_bucket{worker=\"0\",le=\"0.001\"} 2\n"
			   "lat_seconds_bucket{worker=\"0\",le=\"0.1\"} 2\n"
			   "lat_seconds_bucket{worker=\"0\",le=\"1\"} 5\n"
			   "lat_seconds_bucket{worker=\"0\",le=\"+Inf\"} 6\n"
			   "lat_seconds_sum{worker=\"0\"} 4.5\n"
			   "lat_seconds_count{worker=\"0\"} 6\n";
	assert_int_equal(o.len, strlen(want));
	assert_memory_equal(buf, want, o.len);

	/* without labels: le is the only label */
	prom_out_init(&o, buf, sizeof buf);
	const uint64_t none[] = { 0, 0, 0, 0 };
	prom_histogram(&o, "h", NULL, 0, bounds, 3, none, 0);
	const char *want2 = "h_bucket{le=\"0.001\"} 0\nh_bucket{le=\"0.1\"} 0\nh_bucket{le=\"1\"} 0\n"
			    "h_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n";
	assert_int_equal(o.len, strlen(want2));
	assert_memory_equal(buf, want2, o.len);
}

static void test_overflow(void **state)
{
	(void)state;
	char buf[OUT_BYTES];
	for (size_t cap = 0; cap < 64; cap++) {
		memset(buf, 'Z', sizeof buf);
		struct prom_out o;
		prom_out_init(&o, buf, cap);
		prom_family(&o, "some_metric_total", "help text", PROM_COUNTER);
		prom_sample(&o, "some_metric_total", NULL, 0, 12345);
		assert_true(o.len <= cap);
		assert_true(o.overflow);
		for (size_t i = cap; i < sizeof buf; i++)
			assert_int_equal(buf[i], 'Z');
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_go_formatting),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_family_and_escaping),
		cmocka_unit_test(test_histogram),
		cmocka_unit_test(test_overflow),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
