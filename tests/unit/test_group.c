/*
 * test_group.c - what workers share (engine/group.c) and the upgrade value a handoff
 * carries (engine/upgraded.c): the bounded in-flight count per owner, an owner that
 * stops taking connections, the relay-wide connection cap under contention, owners
 * spread by a keyed hash, and bytes that arrive after the head appended in order.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <cmocka.h>

#include "engine/engine.h"
#include "engine/group.h"

static void test_inflight_bounded_per_owner(void **state)
{
	(void)state;
	struct worker_group *g = worker_group_create(3, 10);
	assert_non_null(g);
	int fd = -1;
	/* no ring yet: nobody takes handoffs */
	assert_int_equal(group_reserve(g, 1, &fd), HANDOFF_OWNER_GONE);
	group_publish(g, 1, 42, true);
	for (uint32_t i = 0; i < HANDOFF_INFLIGHT_MAX; i++) {
		fd = -1;
		assert_int_equal(group_reserve(g, 1, &fd), HANDOFF_OK);
		assert_int_equal(fd, 42);
	}
	assert_int_equal(group_inflight(g, 1), HANDOFF_INFLIGHT_MAX);
	assert_int_equal(group_reserve(g, 1, &fd), HANDOFF_OWNER_FULL);
	assert_int_equal(group_inflight(g, 1), HANDOFF_INFLIGHT_MAX); /* a refusal takes no place */
	/* another owner is not affected by owner 1 being full */
	group_publish(g, 2, 43, true);
	assert_int_equal(group_reserve(g, 2, &fd), HANDOFF_OK);
	assert_int_equal(fd, 43);
	/* the owner takes one: one place frees */
	group_release(g, 1);
	assert_int_equal(group_reserve(g, 1, &fd), HANDOFF_OK);
	assert_int_equal(group_reserve(g, 1, &fd), HANDOFF_OWNER_FULL);
	worker_group_destroy(g);
}

static void test_owner_stopping_or_gone(void **state)
{
	(void)state;
	struct worker_group *g = worker_group_create(2, 10);
	assert_non_null(g);
	int fd;
	group_publish(g, 0, 7, true);
	assert_int_equal(group_reserve(g, 0, &fd), HANDOFF_OK);
	group_stop_accepting(g, 0); /* draining */
	assert_int_equal(group_reserve(g, 0, &fd), HANDOFF_OWNER_GONE);
	assert_int_equal(group_inflight(g, 0), 1); /* the one already sent still counts */
	group_release(g, 0);
	group_publish(g, 0, -1, false); /* its loop ended */
	assert_int_equal(group_reserve(g, 0, &fd), HANDOFF_OWNER_GONE);
	assert_int_equal(group_inflight(g, 0), 0);
	worker_group_destroy(g);
}

#define CAP_THREADS 4
#define CAP_TRIES_PER_THREAD 20000

struct cap_run {
	struct worker_group *g;
	uint32_t taken;
	uint32_t max_seen;
};

static void *cap_worker(void *arg)
{
	struct cap_run *r = arg;
	/* take and return slots as fast as possible; every held count must stay <= cap */
	for (int i = 0; i < CAP_TRIES_PER_THREAD; i++) {
		if (group_take_cap(r->g)) {
			r->taken++;
			uint32_t now = group_counted(r->g);
			if (now > r->max_seen)
				r->max_seen = now;
			group_put_cap(r->g);
		}
	}
	return NULL;
}

static void test_cap_exact_under_contention(void **state)
{
	(void)state;
	struct worker_group *g = worker_group_create(CAP_THREADS, 3);
	assert_non_null(g);
	for (int i = 0; i < 3; i++)
		assert_true(group_take_cap(g));
	assert_false(group_take_cap(g));
	assert_int_equal(group_counted(g), 3);
	group_put_cap(g);
	group_put_cap(g);
	group_put_cap(g);
	assert_int_equal(group_counted(g), 0);

	pthread_t t[CAP_THREADS];
	struct cap_run runs[CAP_THREADS];
	for (int i = 0; i < CAP_THREADS; i++) {
		runs[i] = (struct cap_run){ .g = g };
		assert_int_equal(pthread_create(&t[i], NULL, cap_worker, &runs[i]), 0);
	}
	uint32_t taken = 0;
	for (int i = 0; i < CAP_THREADS; i++) {
		pthread_join(t[i], NULL);
		assert_true(runs[i].max_seen <= 3);
		taken += runs[i].taken;
	}
	assert_true(taken > 0);
	assert_int_equal(group_counted(g), 0);
	worker_group_destroy(g);
}

static void test_owner_stable_and_spread(void **state)
{
	(void)state;
	struct worker_group *g = worker_group_create(4, 10);
	assert_non_null(g);
	uint32_t count[4] = { 0 };
	char id[32];
	for (int i = 0; i < 4000; i++) {
		int n = snprintf(id, sizeof id, "srv-%d", i);
		uint32_t o = group_owner(g, span_make(id, (size_t)n));
		assert_true(o < 4);
		assert_int_equal(o, group_owner(g, span_make(id, (size_t)n))); /* same id, same owner */
		count[o]++;
	}
	for (int w = 0; w < 4; w++)
		assert_true(count[w] > 800 && count[w] < 1200); /* about 1000 each */
	worker_group_destroy(g);

	/* one worker owns everything, without hashing */
	g = worker_group_create(1, 10);
	assert_non_null(g);
	assert_int_equal(group_owner(g, span_make("anything", 8)), 0);
	worker_group_destroy(g);
}

static void test_bytes_after_the_head_appended_in_order(void **state)
{
	(void)state;
	struct http_request req;
	static const char head[] = "GET /v1/client HTTP/1.1\r\nX-Pyrycode-Server: s1\r\nX-Pyrycode-Token: t\r\n\r\n";
	assert_int_equal(http_parse_request((const uint8_t *)head, sizeof head - 1, &req), HTTP_PARSE_OK);
	struct upgraded *u = upgraded_new(&req, span_make("ab", 2), span_make("cd", 2));
	assert_non_null(u);
	/* what still arrives while the receive is being stopped, in order */
	assert_true(upgraded_append(&u, span_make("ef", 2)));
	assert_true(upgraded_append(&u, span_make("", 0)));
	assert_true(upgraded_append(&u, span_make("ghij", 4)));
	struct span e = upgraded_early(u);
	assert_int_equal(e.len, 10);
	assert_memory_equal(e.ptr, "abcdefghij", 10);
	struct span id = upgraded_server_id(u);
	assert_int_equal(id.len, 2);
	assert_memory_equal(id.ptr, "s1", 2); /* the header copies survive the moves */

	/* bounded: past UPGRADED_EARLY_BYTES_MAX the append is refused, the value intact */
	size_t big = UPGRADED_EARLY_BYTES_MAX - 10;
	uint8_t *fill = malloc(big + 1);
	assert_non_null(fill);
	memset(fill, 'x', big + 1);
	assert_false(upgraded_append(&u, span_make(fill, big + 1)));
	assert_int_equal(upgraded_early(u).len, 10);
	assert_true(upgraded_append(&u, span_make(fill, big)));
	assert_int_equal(upgraded_early(u).len, UPGRADED_EARLY_BYTES_MAX);
	assert_false(upgraded_append(&u, span_make("y", 1)));
	free(fill);
	upgraded_free(u);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_inflight_bounded_per_owner),
		cmocka_unit_test(test_owner_stopping_or_gone),
		cmocka_unit_test(test_cap_exact_under_contention),
		cmocka_unit_test(test_owner_stable_and_spread),
		cmocka_unit_test(test_bytes_after_the_head_appended_in_order),
	};
	return cmocka_run_group_tests_name("group", tests, NULL, NULL);
}
