/*
 * test_group.c - what workers share (engine/group.c) and the upgrade value a handoff
 * carries (engine/upgraded.c): the bounded in-flight count per owner, an owner that
 * stops taking connections, the relay-wide connection cap under contention, owners
 * spread by a keyed hash, bytes that arrive after the head appended in order, and the
 * per-IP connection count (--max-connections-per-ip): exact, against a plain model
 * under churn, and under contention.
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

/* ---- per-IP connection count -------------------------------------------------------- */

static uint64_t key_of(struct worker_group *g, unsigned i)
{
	char ip[32];
	int n = snprintf(ip, sizeof ip, "198.51.%u.%u", i / 256, i % 256);
	return group_ip_key(g, span_make(ip, (size_t)n));
}

static void test_ip_cap_off_counts_nothing(void **state)
{
	(void)state;
	struct worker_group *g = worker_group_create(2, 10);
	assert_non_null(g);
	assert_true(group_set_ip_cap(g, 0));
	uint64_t k = key_of(g, 1);
	for (int i = 0; i < 50; i++)
		assert_int_equal(group_take_ip(g, k), IP_TAKE_OK);
	assert_int_equal(group_ip_count(g, k), 0);
	group_put_ip(g, k); /* a no-op, like the take */
	worker_group_destroy(g);
}

static void test_ip_cap_per_client(void **state)
{
	(void)state;
	struct worker_group *g = worker_group_create(2, 100);
	assert_non_null(g);
	assert_true(group_set_ip_cap(g, 3));
	uint64_t a = key_of(g, 1), b = key_of(g, 2);
	assert_true(a != 0 && b != 0 && a != b);
	assert_int_equal(a, key_of(g, 1)); /* the same client, the same key */
	for (int i = 0; i < 3; i++)
		assert_int_equal(group_take_ip(g, a), IP_TAKE_OK);
	assert_int_equal(group_take_ip(g, a), IP_TAKE_FULL);
	assert_int_equal(group_ip_count(g, a), 3);
	assert_int_equal(group_take_ip(g, b), IP_TAKE_OK); /* another client: its own count */
	group_put_ip(g, a);
	assert_int_equal(group_take_ip(g, a), IP_TAKE_OK);
	for (int i = 0; i < 3; i++)
		group_put_ip(g, a);
	group_put_ip(g, b);
	assert_int_equal(group_ip_count(g, a), 0);
	assert_int_equal(group_ip_count(g, b), 0);
	assert_int_equal(group_take_ip(g, 0), IP_TAKE_OK); /* key 0: no client, not counted */
	worker_group_destroy(g);
}

/* Random takes and puts over many clients against a plain array: counts exact, and the
 * table's removals (backward shift) never lose a client still holding connections. */
static void test_ip_cap_matches_model_under_churn(void **state)
{
	(void)state;
	enum { CLIENTS = 3000, STEPS = 200000, CAP = 4 };
	struct worker_group *g = worker_group_create(1, 4000);
	assert_non_null(g);
	assert_true(group_set_ip_cap(g, CAP));
	static uint32_t model[CLIENTS];
	static uint64_t keys[CLIENTS];
	memset(model, 0, sizeof model);
	for (unsigned i = 0; i < CLIENTS; i++)
		keys[i] = key_of(g, i);
	uint64_t x = 88172645463325252ull;
	for (int step = 0; step < STEPS; step++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		unsigned i = (unsigned)(x % CLIENTS);
		if ((x >> 32) & 1) {
			enum ip_take r = group_take_ip(g, keys[i]);
			if (model[i] < CAP) {
				assert_int_equal(r, IP_TAKE_OK);
				model[i]++;
			} else {
				assert_int_equal(r, IP_TAKE_FULL);
			}
		} else if (model[i] > 0) {
			group_put_ip(g, keys[i]);
			model[i]--;
		}
		if (step % 20000 == 0) {
			for (unsigned k = 0; k < CLIENTS; k++)
				assert_int_equal(group_ip_count(g, keys[k]), model[k]);
		}
	}
	for (unsigned k = 0; k < CLIENTS; k++) {
		assert_int_equal(group_ip_count(g, keys[k]), model[k]);
		while (model[k]--)
			group_put_ip(g, keys[k]);
	}
	uint32_t used = 0;
	for (uint32_t s = 0; s < GROUP_IP_STRIPES; s++)
		used += g->ip[s].used;
	assert_int_equal(used, 0); /* every client gone from the table */
	worker_group_destroy(g);
}

struct ip_run {
	struct worker_group *g;
	uint64_t key;
	uint32_t over; /* counts seen above the cap */
};

static void *ip_worker(void *arg)
{
	struct ip_run *r = arg;
	for (int i = 0; i < CAP_TRIES_PER_THREAD; i++) {
		if (group_take_ip(r->g, r->key) == IP_TAKE_OK) {
			if (group_ip_count(r->g, r->key) > 2)
				r->over++;
			group_put_ip(r->g, r->key);
		}
	}
	return NULL;
}

static void test_ip_cap_exact_under_contention(void **state)
{
	(void)state;
	struct worker_group *g = worker_group_create(CAP_THREADS, 100);
	assert_non_null(g);
	assert_true(group_set_ip_cap(g, 2));
	uint64_t k = key_of(g, 7);
	pthread_t t[CAP_THREADS];
	struct ip_run runs[CAP_THREADS];
	for (int i = 0; i < CAP_THREADS; i++) {
		runs[i] = (struct ip_run){ .g = g, .key = k };
		assert_int_equal(pthread_create(&t[i], NULL, ip_worker, &runs[i]), 0);
	}
	for (int i = 0; i < CAP_THREADS; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(runs[i].over, 0);
	}
	assert_int_equal(group_ip_count(g, k), 0);
	worker_group_destroy(g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_inflight_bounded_per_owner),
		cmocka_unit_test(test_owner_stopping_or_gone),
		cmocka_unit_test(test_cap_exact_under_contention),
		cmocka_unit_test(test_owner_stable_and_spread),
		cmocka_unit_test(test_bytes_after_the_head_appended_in_order),
		cmocka_unit_test(test_ip_cap_off_counts_nothing),
		cmocka_unit_test(test_ip_cap_per_client),
		cmocka_unit_test(test_ip_cap_matches_model_under_churn),
		cmocka_unit_test(test_ip_cap_exact_under_contention),
	};
	return cmocka_run_group_tests_name("group", tests, NULL, NULL);
}
