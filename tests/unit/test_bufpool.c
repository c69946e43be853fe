/*
 * test_bufpool.c - the worker's bounded buffer pool: size classes at every boundary,
 * free-list reuse, the budget ceiling (refusal, alloc_failures, releasing cached
 * buffers of other classes to make room), exact bytes_held / bytes_in_use accounting,
 * destroy, and a randomized run against a model of what must succeed or fail.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rng.h"

#include "engine/bufpool.h"

#define BIG_BUDGET (UINT64_C(1) << 40)
#define FUZZ_SEED 0x5eed0b0f5eedull
#define FUZZ_ROUNDS 20000
#define FUZZ_LIVE_MAX 64
#define FUZZ_BUDGET (UINT64_C(3) * 1024 * 1024)

/* The class a request must land in, computed independently of bufpool.c. */
static uint32_t expected_cap(size_t bytes)
{
	uint32_t cap = BUFPOOL_CLASS_MIN_BYTES;
	while (cap < bytes)
		cap *= 2;
	return cap;
}

static unsigned class_index(uint32_t cap)
{
	unsigned i = 0;
	while ((BUFPOOL_CLASS_MIN_BYTES << i) != cap) {
		i++;
		assert_true(i < BUFPOOL_CLASSES);
	}
	return i;
}

static uint64_t cached_bytes(const struct bufpool *p)
{
	uint64_t sum = 0;
	for (unsigned i = 0; i < BUFPOOL_CLASSES; i++) {
		uint32_t n = 0;
		for (const struct bufpool_free *f = p->free[i]; f != NULL; f = f->next)
			n++;
		assert_int_equal(n, p->free_count[i]);
		sum += (uint64_t)p->free_count[i] * ((uint64_t)BUFPOOL_CLASS_MIN_BYTES << i);
	}
	return sum;
}

/* bytes_held is exactly what is in use plus what sits on the free lists. */
static void check_accounting(const struct bufpool *p, uint64_t in_use)
{
	assert_int_equal(p->bytes_in_use, in_use);
	assert_int_equal(p->bytes_held, in_use + cached_bytes(p));
	assert_true(p->bytes_held <= p->budget_bytes_max);
	assert_true(p->bytes_held_peak >= p->bytes_held);
}

static void check_empty_after_destroy(const struct bufpool *p)
{
	assert_int_equal(p->bytes_held, 0);
	assert_int_equal(p->bytes_in_use, 0);
	for (unsigned i = 0; i < BUFPOOL_CLASSES; i++) {
		assert_null(p->free[i]);
		assert_int_equal(p->free_count[i], 0);
	}
}

static void test_class_constants(void **state)
{
	(void)state;
	assert_int_equal(BUFPOOL_CLASS_MIN_BYTES, 256);
	assert_int_equal(BUFPOOL_CLASS_MAX_BYTES, 512 * 1024);
	assert_int_equal(BUFPOOL_CLASSES, 12);
}

static void check_one_size(size_t req)
{
	struct bufpool p;
	bufpool_init(&p, BIG_BUDGET);
	uint32_t cap = 0;
	uint8_t *b = bufpool_get(&p, req, &cap);
	assert_non_null(b);
	uint32_t want = expected_cap(req);
	if (cap != want)
		fail_msg("request %zu: cap %u, expected %u", req, cap, want);
	/* the whole reported capacity is usable (ASan checks the last byte) */
	memset(b, 0xA5, cap);
	assert_int_equal(b[cap - 1], 0xA5);
	check_accounting(&p, cap);
	assert_int_equal(p.bytes_held, cap);
	assert_int_equal(p.bytes_held_peak, cap);

	bufpool_put(&p, b, cap);
	check_accounting(&p, 0);
	assert_int_equal(p.free_count[class_index(cap)], 1);
	assert_int_equal(p.alloc_failures, 0);
	bufpool_destroy(&p);
	check_empty_after_destroy(&p);
}

static void test_size_classes_at_boundaries(void **state)
{
	(void)state;
	check_one_size(0);
	check_one_size(1);
	for (unsigned shift = 1; shift <= BUFPOOL_CLASS_MAX_SHIFT; shift++) {
		size_t edge = (size_t)1 << shift;
		check_one_size(edge - 1);
		check_one_size(edge);
		if (edge + 1 <= BUFPOOL_CLASS_MAX_BYTES)
			check_one_size(edge + 1);
	}
	/* spot values named in the brief */
	struct {
		size_t req;
		uint32_t cap;
	} spots[] = {
		{ 256, 256 },
		{ 257, 512 },
		{ 511, 512 },
		{ 512, 512 },
		{ 513, 1024 },
		{ 16 * 1024, 16 * 1024 },
		{ 16 * 1024 + 1, 32 * 1024 },
		{ 256 * 1024 + 1, 512 * 1024 },
		{ 512 * 1024 - 1, 512 * 1024 },
		{ 512 * 1024, 512 * 1024 },
	};
	for (size_t i = 0; i < ARRAY_LEN(spots); i++) {
		struct bufpool p;
		bufpool_init(&p, BIG_BUDGET);
		uint32_t cap = 0;
		void *b = bufpool_get(&p, spots[i].req, &cap);
		assert_non_null(b);
		assert_int_equal(cap, spots[i].cap);
		bufpool_put(&p, b, cap);
		bufpool_destroy(&p);
	}
}

static void test_free_list_reuse(void **state)
{
	(void)state;
	struct bufpool p;
	bufpool_init(&p, BIG_BUDGET);
	uint32_t cap = 0, cap2 = 0;

	void *a = bufpool_get(&p, 1000, &cap);
	assert_non_null(a);
	assert_int_equal(cap, 1024);
	bufpool_put(&p, a, cap);
	assert_int_equal(p.bytes_held, 1024);

	/* any request of the same class gets the cached buffer back, no new memory */
	void *b = bufpool_get(&p, 513, &cap2);
	assert_ptr_equal(a, b);
	assert_int_equal(cap2, 1024);
	assert_int_equal(p.bytes_held, 1024);
	assert_int_equal(p.bytes_held_peak, 1024);
	check_accounting(&p, 1024);

	/* another class does not take it */
	uint32_t cap3 = 0;
	void *c = bufpool_get(&p, 2048, &cap3);
	assert_non_null(c);
	assert_ptr_not_equal(c, b);
	assert_int_equal(cap3, 2048);
	assert_int_equal(p.bytes_held, 1024 + 2048);
	check_accounting(&p, 1024 + 2048);
	bufpool_put(&p, b, cap2);
	bufpool_put(&p, c, cap3);

	/* several buffers of one class: each comes back, none twice */
	void *x[5];
	for (int i = 0; i < 5; i++) {
		x[i] = bufpool_get(&p, 300, &cap);
		assert_non_null(x[i]);
		assert_int_equal(cap, 512);
		for (int j = 0; j < i; j++)
			assert_ptr_not_equal(x[i], x[j]);
	}
	uint64_t held = p.bytes_held;
	for (int i = 0; i < 5; i++)
		bufpool_put(&p, x[i], 512);
	assert_int_equal(p.free_count[class_index(512)], 5);
	void *y[5];
	for (int i = 0; i < 5; i++) {
		y[i] = bufpool_get(&p, 512, &cap);
		assert_non_null(y[i]);
		bool found = false;
		for (int j = 0; j < 5; j++)
			found |= (y[i] == x[j]);
		assert_true(found);
		for (int j = 0; j < i; j++)
			assert_ptr_not_equal(y[i], y[j]);
	}
	assert_int_equal(p.bytes_held, held);
	assert_int_equal(p.free_count[class_index(512)], 0);
	for (int i = 0; i < 5; i++)
		bufpool_put(&p, y[i], 512);
	check_accounting(&p, 0);
	assert_int_equal(p.alloc_failures, 0);
	bufpool_destroy(&p);
	check_empty_after_destroy(&p);
}

static void test_budget_ceiling(void **state)
{
	(void)state;
	struct bufpool p;
	bufpool_init(&p, 4096);
	uint32_t cap = 0;
	void *b[4];
	for (int i = 0; i < 4; i++) {
		b[i] = bufpool_get(&p, 1024, &cap);
		assert_non_null(b[i]);
	}
	/* exactly at the budget is allowed */
	assert_int_equal(p.bytes_held, 4096);
	check_accounting(&p, 4096);

	/* one byte more (the smallest class) is refused and counted; nothing moves */
	cap = 12345;
	assert_null(bufpool_get(&p, 1, &cap));
	assert_int_equal(p.alloc_failures, 1);
	check_accounting(&p, 4096);
	assert_int_equal(p.bytes_held, 4096);
	assert_null(bufpool_get(&p, BUFPOOL_CLASS_MAX_BYTES, &cap));
	assert_int_equal(p.alloc_failures, 2);
	check_accounting(&p, 4096);

	/* a cached buffer of the requested class is reused even at the ceiling */
	bufpool_put(&p, b[3], 1024);
	void *again = bufpool_get(&p, 1024, &cap);
	assert_ptr_equal(again, b[3]);
	assert_int_equal(p.alloc_failures, 2);
	check_accounting(&p, 4096);

	/* a cached buffer of another class is released to make room */
	bufpool_put(&p, again, 1024);
	void *small = bufpool_get(&p, 256, &cap);
	assert_non_null(small);
	assert_int_equal(cap, 256);
	assert_int_equal(p.free_count[class_index(1024)], 0);
	assert_int_equal(p.bytes_held, 3 * 1024 + 256);
	check_accounting(&p, 3 * 1024 + 256);
	assert_int_equal(p.alloc_failures, 2);

	bufpool_put(&p, small, 256);
	for (int i = 0; i < 3; i++)
		bufpool_put(&p, b[i], 1024);
	check_accounting(&p, 0);
	bufpool_destroy(&p);
	check_empty_after_destroy(&p);
}

static void test_budget_releases_only_what_is_needed(void **state)
{
	(void)state;
	struct bufpool p;
	bufpool_init(&p, 8192);
	uint32_t cap = 0;
	void *x = bufpool_get(&p, 2048, &cap);   /* stays in use */
	void *c2k = bufpool_get(&p, 2048, &cap); /* cached below */
	void *c1a = bufpool_get(&p, 1024, &cap);
	void *c1b = bufpool_get(&p, 1024, &cap);
	void *c256 = bufpool_get(&p, 256, &cap);
	assert_non_null(x);
	assert_non_null(c2k);
	assert_non_null(c1a);
	assert_non_null(c1b);
	assert_non_null(c256);
	bufpool_put(&p, c2k, 2048);
	bufpool_put(&p, c1a, 1024);
	bufpool_put(&p, c1b, 1024);
	bufpool_put(&p, c256, 256);
	assert_int_equal(p.bytes_held, 2048 + 2048 + 2048 + 256);
	check_accounting(&p, 2048);

	/* 6400 + 4096 > 8192: 2304 must go. Largest cached first: the 2 KiB (8448, still
	 * over), then one 1 KiB (7424, fits). The other 1 KiB and the 256 B stay. */
	void *big = bufpool_get(&p, 4096, &cap);
	assert_non_null(big);
	assert_int_equal(cap, 4096);
	assert_int_equal(p.alloc_failures, 0);
	assert_int_equal(p.free_count[class_index(2048)], 0);
	assert_int_equal(p.free_count[class_index(1024)], 1);
	assert_int_equal(p.free_count[class_index(256)], 1);
	assert_int_equal(p.bytes_held, 2048 + 4096 + 1024 + 256);
	check_accounting(&p, 2048 + 4096);
	assert_int_equal(p.bytes_held_peak, 2048 + 4096 + 1024 + 256);

	/* no amount of releasing makes 8 KiB fit next to 6 KiB in use: refused */
	assert_null(bufpool_get(&p, 8192, &cap));
	assert_int_equal(p.alloc_failures, 1);
	check_accounting(&p, 2048 + 4096);

	/* but 2 KiB fits once whatever is cached goes */
	void *fit = bufpool_get(&p, 2048, &cap);
	assert_non_null(fit);
	assert_int_equal(p.bytes_held, 8192);
	check_accounting(&p, 8192);
	assert_int_equal(cached_bytes(&p), 0);

	bufpool_put(&p, fit, 2048);
	bufpool_put(&p, big, 4096);
	bufpool_put(&p, x, 2048);
	check_accounting(&p, 0);
	bufpool_destroy(&p);
	check_empty_after_destroy(&p);
}

static void test_release_all_cached_for_max_class(void **state)
{
	(void)state;
	struct bufpool p;
	bufpool_init(&p, BUFPOOL_CLASS_MAX_BYTES);
	uint32_t cap = 0;
	/* fill the cache with one buffer of every class below the max */
	void *bufs[BUFPOOL_CLASSES];
	uint64_t sum = 0;
	for (unsigned i = 0; i + 1 < BUFPOOL_CLASSES; i++) {
		bufs[i] = bufpool_get(&p, (size_t)BUFPOOL_CLASS_MIN_BYTES << i, &cap);
		assert_non_null(bufs[i]);
		sum += cap;
	}
	assert_int_equal(sum, BUFPOOL_CLASS_MAX_BYTES - BUFPOOL_CLASS_MIN_BYTES);
	for (unsigned i = 0; i + 1 < BUFPOOL_CLASSES; i++)
		bufpool_put(&p, bufs[i], BUFPOOL_CLASS_MIN_BYTES << i);
	check_accounting(&p, 0);
	void *max = bufpool_get(&p, BUFPOOL_CLASS_MAX_BYTES, &cap);
	assert_non_null(max);
	assert_int_equal(cap, BUFPOOL_CLASS_MAX_BYTES);
	assert_int_equal(cached_bytes(&p), 0);
	check_accounting(&p, BUFPOOL_CLASS_MAX_BYTES);
	assert_int_equal(p.alloc_failures, 0);
	bufpool_put(&p, max, cap);
	bufpool_destroy(&p);
	check_empty_after_destroy(&p);
}

static void test_zero_budget_refuses_everything(void **state)
{
	(void)state;
	struct bufpool p;
	bufpool_init(&p, 0);
	uint32_t cap = 0;
	assert_null(bufpool_get(&p, 0, &cap));
	assert_null(bufpool_get(&p, 1, &cap));
	assert_null(bufpool_get(&p, BUFPOOL_CLASS_MAX_BYTES, &cap));
	assert_int_equal(p.alloc_failures, 3);
	check_accounting(&p, 0);
	bufpool_destroy(&p);
	check_empty_after_destroy(&p);
}

static void test_destroy_releases_cache(void **state)
{
	(void)state;
	struct bufpool p;
	bufpool_init(&p, BIG_BUDGET);
	void *b[3 * BUFPOOL_CLASSES];
	uint32_t caps[3 * BUFPOOL_CLASSES];
	uint64_t total = 0;
	for (unsigned i = 0; i < ARRAY_LEN(b); i++) {
		b[i] = bufpool_get(&p, ((size_t)BUFPOOL_CLASS_MIN_BYTES << (i % BUFPOOL_CLASSES)) - 3, &caps[i]);
		assert_non_null(b[i]);
		total += caps[i];
	}
	check_accounting(&p, total);
	for (unsigned i = 0; i < ARRAY_LEN(b); i++)
		bufpool_put(&p, b[i], caps[i]);
	check_accounting(&p, 0);
	assert_int_equal(p.bytes_held, total);
	assert_int_equal(p.bytes_held_peak, total);
	for (unsigned i = 0; i < BUFPOOL_CLASSES; i++)
		assert_int_equal(p.free_count[i], 3);
	/* destroy gives every cached buffer back (LeakSanitizer checks the memory) */
	bufpool_destroy(&p);
	check_empty_after_destroy(&p);
	/* an idle, destroyed pool holds nothing; destroying an empty one is harmless */
	bufpool_destroy(&p);
	check_empty_after_destroy(&p);
}

struct live {
	uint8_t *buf;
	uint32_t cap;
	uint8_t tag;
};

/* Random gets and puts under a small budget. A get must succeed exactly when the
 * class has a cached buffer or when the new buffer fits next to what is in use (every
 * cached buffer of other classes can be released); buffers never overlap. */
static void test_randomized_against_model(void **state)
{
	(void)state;
	rng_state = FUZZ_SEED;
	struct bufpool p;
	bufpool_init(&p, FUZZ_BUDGET);
	struct live live[FUZZ_LIVE_MAX];
	size_t nlive = 0;
	uint64_t in_use = 0, failures = 0, peak = 0;
	unsigned gets_ok = 0, gets_refused = 0, reuses = 0;

	for (unsigned round = 0; round < FUZZ_ROUNDS; round++) {
		bool do_get = nlive == 0 || (nlive < FUZZ_LIVE_MAX && rng_below(100) < 55);
		if (do_get) {
			size_t req;
			switch (rng_below(4)) {
			case 0:
				req = (size_t)rng_below(BUFPOOL_CLASS_MAX_BYTES + 1);
				break;
			case 1:
				req = (size_t)1 << rng_below(BUFPOOL_CLASS_MAX_SHIFT + 1);
				break;
			default:
				req = (size_t)rng_below(20000);
				break;
			}
			uint32_t want = expected_cap(req);
			unsigned cls = class_index(want);
			bool cached = p.free_count[cls] > 0;
			bool must_succeed = cached || in_use + want <= FUZZ_BUDGET;
			void *expect_ptr = p.free[cls];
			uint32_t cap = 0;
			uint8_t *b = bufpool_get(&p, req, &cap);
			if (must_succeed) {
				if (b == NULL)
					fail_msg("round %u: get %zu refused with %llu in use", round, req,
					         (unsigned long long)in_use);
				assert_int_equal(cap, want);
				if (cached) {
					assert_ptr_equal(b, expect_ptr);
					reuses++;
				}
				/* no overlap with any live buffer: their tags must be intact */
				for (size_t i = 0; i < nlive; i++) {
					assert_true(b + cap <= live[i].buf || live[i].buf + live[i].cap <= b);
					assert_int_equal(live[i].buf[0], live[i].tag);
					assert_int_equal(live[i].buf[live[i].cap - 1], live[i].tag);
				}
				uint8_t tag = (uint8_t)rng_next();
				b[0] = tag;
				b[cap - 1] = tag;
				live[nlive++] = (struct live){ b, cap, tag };
				in_use += cap;
				gets_ok++;
			} else {
				assert_null(b);
				failures++;
				gets_refused++;
			}
		} else {
			size_t i = (size_t)rng_below(nlive);
			assert_int_equal(live[i].buf[0], live[i].tag);
			assert_int_equal(live[i].buf[live[i].cap - 1], live[i].tag);
			bufpool_put(&p, live[i].buf, live[i].cap);
			in_use -= live[i].cap;
			live[i] = live[--nlive];
		}
		assert_int_equal(p.alloc_failures, failures);
		check_accounting(&p, in_use);
		if (p.bytes_held > peak)
			peak = p.bytes_held;
		assert_int_equal(p.bytes_held_peak, peak);
	}
	/* the run exercised every path */
	assert_true(gets_ok > 1000);
	assert_true(gets_refused > 100);
	assert_true(reuses > 500);

	while (nlive > 0) {
		nlive--;
		bufpool_put(&p, live[nlive].buf, live[nlive].cap);
	}
	check_accounting(&p, 0);
	bufpool_destroy(&p);
	check_empty_after_destroy(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_class_constants),
		cmocka_unit_test(test_size_classes_at_boundaries),
		cmocka_unit_test(test_free_list_reuse),
		cmocka_unit_test(test_budget_ceiling),
		cmocka_unit_test(test_budget_releases_only_what_is_needed),
		cmocka_unit_test(test_release_all_cached_for_max_class),
		cmocka_unit_test(test_zero_budget_refuses_everything),
		cmocka_unit_test(test_destroy_releases_cache),
		cmocka_unit_test(test_randomized_against_model),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
