/*
 * test_ratelimit.c - the per-IP upgrade-attempt limiter of reference §6.1: the exact
 * token sequence, last-polled on denies, the sweep, the full table, the off switch,
 * the X-Forwarded-For key, and random traffic against a plain reference model with the
 * table's invariants checked after every step.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "relay/ratelimit.h"

#define BURST RATELIMIT_BURST_DEFAULT
#define REFILL_MS RATELIMIT_REFILL_MS_DEFAULT
#define IDLE_MS (BURST * REFILL_MS) /* 120 s: a bucket this idle is evictable */
#define SEED 0x0123456789abcdefull
#define CAPACITY 1024u
/* Away from 0 so a bug that treats 0 as "never" shows up. */
#define T0 1000000000ull
#define HOUR_MS 3600000ull

static bool allow(struct ratelimit *rl, const char *key, uint64_t now_ms)
{
	return ratelimit_allow(rl, span_cstr(key), now_ms);
}

/* Allowed requests in a row at now_ms before the first deny (bounded). */
static uint32_t drain(struct ratelimit *rl, const char *key, uint64_t now_ms)
{
	uint32_t n = 0;
	while (n <= 10u * BURST && allow(rl, key, now_ms))
		n++;
	return n;
}

/* Found by scanning every slot, independently of the probe logic under test. */
static const struct ratelimit_bucket *find(const struct ratelimit *rl, const char *key)
{
	size_t n = strlen(key);
	for (uint32_t i = 0; i <= rl->mask; i++) {
		const struct ratelimit_bucket *b = &rl->slots[i];
		if (b->key_len == n && memcmp(b->key, key, n) == 0)
			return b;
	}
	return NULL;
}

static void init_default(struct ratelimit *rl)
{
	assert_true(ratelimit_init(rl, CAPACITY, BURST, REFILL_MS, SEED));
}

/* §6.1 step by step: 20 then deny; +1 after 6 s; +2 after 12.5 s with the 0.5 s kept. */
static void test_reference_sequence(void **state)
{
	struct ratelimit rl;
	init_default(&rl);

	assert_true(allow(&rl, "1.2.3.4", T0));
	assert_int_equal(find(&rl, "1.2.3.4")->tokens, BURST - 1);
	assert_int_equal(drain(&rl, "1.2.3.4", T0), BURST - 1);
	assert_false(allow(&rl, "1.2.3.4", T0));

	assert_false(allow(&rl, "1.2.3.4", T0 + REFILL_MS - 1));
	assert_int_equal(drain(&rl, "1.2.3.4", T0 + REFILL_MS), 1);
	assert_int_equal(find(&rl, "1.2.3.4")->anchor_ms, T0 + REFILL_MS);

	uint64_t t = T0 + REFILL_MS + 12500;
	assert_int_equal(drain(&rl, "1.2.3.4", t), 2);
	/* anchor moved by two whole periods, not to now: the 500 ms remainder is kept */
	assert_int_equal(find(&rl, "1.2.3.4")->anchor_ms, T0 + 3 * REFILL_MS);
	assert_int_equal(drain(&rl, "1.2.3.4", T0 + 4 * REFILL_MS - 1), 0);
	assert_int_equal(drain(&rl, "1.2.3.4", T0 + 4 * REFILL_MS), 1);

	ratelimit_destroy(&rl);
}

/* A long idle refills to the cap and no further, and the anchor still moves by every
 * whole period (the cap swallows tokens, not time): the next token comes one period
 * after the last whole period, not immediately. */
static void test_cap_after_long_idle(void **state)
{
	struct ratelimit rl;
	init_default(&rl);

	assert_int_equal(drain(&rl, "::1", T0), BURST);
	uint64_t t = T0 + HOUR_MS + 3000;
	assert_int_equal(drain(&rl, "::1", t), BURST);
	assert_int_equal(find(&rl, "::1")->anchor_ms, T0 + HOUR_MS);
	assert_int_equal(drain(&rl, "::1", T0 + HOUR_MS + REFILL_MS - 1), 0);
	assert_int_equal(drain(&rl, "::1", T0 + HOUR_MS + REFILL_MS), 1);

	/* a bucket idle but never drained also stays at the cap */
	assert_true(allow(&rl, "10.0.0.1", T0));
	assert_int_equal(drain(&rl, "10.0.0.1", T0 + 10 * HOUR_MS), BURST);

	ratelimit_destroy(&rl);
}

/* Both endpoints share one bucket per key; keys are compared byte for byte. */
static void test_keys_are_separate_and_exact(void **state)
{
	struct ratelimit rl;
	init_default(&rl);

	assert_int_equal(drain(&rl, "127.0.0.1", T0), BURST);
	assert_int_equal(drain(&rl, "::1", T0), BURST);
	/* no canonicalisation: case and zone ids are different keys */
	assert_int_equal(drain(&rl, "fe80::A", T0), BURST);
	assert_int_equal(drain(&rl, "fe80::a", T0), BURST);
	assert_int_equal(drain(&rl, "fe80::a%eth0", T0), BURST);
	assert_int_equal(drain(&rl, "127.0.0.10", T0), BURST);
	assert_int_equal(ratelimit_count(&rl), 6);

	ratelimit_destroy(&rl);
}

static void test_last_polled_updated_on_deny(void **state)
{
	struct ratelimit rl;
	init_default(&rl);

	assert_int_equal(drain(&rl, "1.2.3.4", T0), BURST);
	uint64_t t = T0 + REFILL_MS - 1;
	assert_false(allow(&rl, "1.2.3.4", t));
	assert_int_equal(find(&rl, "1.2.3.4")->last_ms, t);

	/* idle is measured from the deny, not from the last allowed request */
	assert_int_equal(ratelimit_sweep(&rl, t + IDLE_MS - 1), 0);
	assert_non_null(find(&rl, "1.2.3.4"));
	assert_int_equal(ratelimit_sweep(&rl, t + IDLE_MS), 1);
	assert_null(find(&rl, "1.2.3.4"));

	ratelimit_destroy(&rl);
}

static void test_sweep_removes_only_idle(void **state)
{
	struct ratelimit rl;
	init_default(&rl);

	assert_true(allow(&rl, "a", T0));
	assert_true(allow(&rl, "b", T0 + 60000));
	assert_true(allow(&rl, "c", T0 + IDLE_MS - 1));
	assert_int_equal(ratelimit_sweep(&rl, T0 + IDLE_MS - 1), 0);
	assert_int_equal(ratelimit_count(&rl), 3);

	assert_int_equal(ratelimit_sweep(&rl, T0 + IDLE_MS), 1);
	assert_null(find(&rl, "a"));
	assert_non_null(find(&rl, "b"));
	assert_non_null(find(&rl, "c"));
	assert_int_equal(ratelimit_count(&rl), 2);

	/* a clock behind a bucket's last poll never makes it idle */
	assert_int_equal(ratelimit_sweep(&rl, T0), 0);

	/* an evicted key starts over, full: it would have been full anyway */
	assert_true(allow(&rl, "a", T0 + IDLE_MS));
	assert_int_equal(find(&rl, "a")->tokens, BURST - 1);
	assert_int_equal(ratelimit_count(&rl), 3);

	assert_int_equal(ratelimit_sweep(&rl, T0 + 10 * HOUR_MS), 3);
	assert_int_equal(ratelimit_count(&rl), 0);

	ratelimit_destroy(&rl);
}

/* One request every 5 s for an hour with the 5-minute sweep (and more): the bucket is
 * never evicted, so the attacker never gets a second burst. */
static void test_hammered_bucket_never_evicted(void **state)
{
	struct ratelimit rl;
	init_default(&rl);
	const uint64_t step_ms = 5000, end = T0 + HOUR_MS;
	uint64_t allowed = drain(&rl, "6.6.6.6", T0);
	assert_int_equal(allowed, BURST);

	uint64_t next_sweep = T0 + RATELIMIT_SWEEP_INTERVAL_MS;
	for (uint64_t t = T0 + step_ms; t <= end; t += step_ms) {
		allowed += allow(&rl, "6.6.6.6", t);
		if (t >= next_sweep) {
			assert_int_equal(ratelimit_sweep(&rl, t), 0);
			next_sweep += RATELIMIT_SWEEP_INTERVAL_MS;
		}
		assert_int_equal(ratelimit_sweep(&rl, t + IDLE_MS - 1), 0);
	}
	/* the burst plus one token per whole refill period, nothing more */
	assert_int_equal(allowed, BURST + HOUR_MS / REFILL_MS);
	assert_int_equal(ratelimit_count(&rl), 1);

	ratelimit_destroy(&rl);
}

/* Full table: existing keys keep working, unseen keys are refused (never by evicting a
 * live bucket), idle buckets make room, and no sweep runs before one can be idle. */
static void test_table_full(void **state)
{
	struct ratelimit rl;
	assert_true(ratelimit_init(&rl, 4, BURST, REFILL_MS, SEED));

	static const char *const keys[] = { "k0", "k1", "k2", "k3" };
	for (size_t i = 0; i < ARRAY_LEN(keys); i++)
		assert_true(allow(&rl, keys[i], T0));
	assert_int_equal(ratelimit_count(&rl), 4);

	assert_false(allow(&rl, "new1", T0 + 1));
	assert_false(allow(&rl, "new2", T0 + 2));
	assert_int_equal(rl.full_denies, 2);
	assert_null(find(&rl, "new1"));
	/* the existing keys keep their own buckets */
	assert_int_equal(drain(&rl, "k0", T0 + 3), BURST - 1);
	for (size_t i = 1; i < ARRAY_LEN(keys); i++)
		assert_int_equal(find(&rl, keys[i])->tokens, BURST - 1);

	/* k1..k3 stay busy; k0 was last polled at T0 + 3 */
	for (size_t i = 1; i < ARRAY_LEN(keys); i++)
		assert_true(allow(&rl, keys[i], T0 + 60000));
	assert_false(allow(&rl, "new1", T0 + 3 + IDLE_MS - 1));
	assert_int_equal(rl.full_denies, 3);
	assert_non_null(find(&rl, "k0"));

	/* k0 is idle now: the full table sweeps it and takes the newcomer */
	assert_true(allow(&rl, "new1", T0 + 3 + IDLE_MS));
	assert_null(find(&rl, "k0"));
	assert_int_equal(find(&rl, "new1")->tokens, BURST - 1);
	assert_int_equal(ratelimit_count(&rl), 4);

	/* nothing else can be idle before T0 + 60000 + IDLE_MS: refused without a sweep,
	 * which is what keeps a flood of new keys at one probe each */
	uint64_t t = T0 + 60000 + IDLE_MS - 1;
	assert_true(rl.next_evictable_ms > t);
	assert_false(allow(&rl, "new2", t));
	assert_int_equal(rl.full_denies, 4);
	assert_int_equal(ratelimit_count(&rl), 4);

	ratelimit_destroy(&rl);
}

/* A capacity of one: the smallest table still works and still fails closed. */
static void test_capacity_one(void **state)
{
	struct ratelimit rl;
	assert_true(ratelimit_init(&rl, 1, 2, REFILL_MS, SEED));
	assert_true(allow(&rl, "a", T0));
	assert_false(allow(&rl, "b", T0));
	assert_true(allow(&rl, "a", T0));
	assert_false(allow(&rl, "a", T0));
	assert_true(allow(&rl, "b", T0 + 2 * REFILL_MS));
	assert_null(find(&rl, "a"));
	assert_int_equal(rl.full_denies, 1);
	ratelimit_destroy(&rl);
}

static void test_burst_zero_is_off(void **state)
{
	struct ratelimit rl;
	assert_true(ratelimit_init(&rl, CAPACITY, 0, REFILL_MS, SEED));
	assert_null(rl.slots);
	for (int i = 0; i < 1000; i++)
		assert_true(allow(&rl, "1.2.3.4", T0));
	assert_true(ratelimit_allow(&rl, span_make("", 0), T0));
	assert_int_equal(ratelimit_sweep(&rl, T0 + HOUR_MS), 0);
	assert_int_equal(ratelimit_count(&rl), 0);
	ratelimit_destroy(&rl);
	ratelimit_destroy(&rl); /* idempotent */
}

static void test_empty_and_long_keys(void **state)
{
	struct ratelimit rl;
	init_default(&rl);
	char key[RATELIMIT_KEY_BYTES_MAX + 2];

	/* no IP -> deny without a bucket, every time */
	for (int i = 0; i < 3; i++)
		assert_false(ratelimit_allow(&rl, span_make("", 0), T0 + (uint64_t)i * HOUR_MS));
	assert_int_equal(ratelimit_count(&rl), 0);

	memset(key, 'x', sizeof key);
	key[RATELIMIT_KEY_BYTES_MAX] = '\0';
	assert_int_equal(drain(&rl, key, T0), BURST);
	key[RATELIMIT_KEY_BYTES_MAX] = 'x';
	key[RATELIMIT_KEY_BYTES_MAX + 1] = '\0';
	assert_false(allow(&rl, key, T0 + HOUR_MS));
	assert_int_equal(ratelimit_count(&rl), 1);
	assert_int_equal(rl.key_denies, 4);
	assert_int_equal(rl.full_denies, 0);

	/* the longest IP literal with a zone id fits */
	assert_true(allow(&rl, "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%abcdefghijklmno", T0));

	ratelimit_destroy(&rl);
}

static void test_init_arguments(void **state)
{
	struct ratelimit rl;
	assert_false(ratelimit_init(&rl, 0, BURST, REFILL_MS, SEED));
	assert_false(ratelimit_init(&rl, RATELIMIT_CAPACITY_MAX + 1, BURST, REFILL_MS, SEED));
	assert_false(ratelimit_init(&rl, CAPACITY, BURST, 0, SEED));

	/* at most 3/4 of the slots are ever used: probes always end */
	static const uint32_t caps[] = { 1, 2, 3, 4, 5, 6, 7, 12, 13, 1000, 65536 };
	for (size_t i = 0; i < ARRAY_LEN(caps); i++) {
		assert_true(ratelimit_init(&rl, caps[i], BURST, REFILL_MS, SEED));
		uint64_t nslots = (uint64_t)rl.mask + 1;
		assert_true((nslots & rl.mask) == 0);
		assert_true(caps[i] * 4ull <= nslots * 3);
		assert_true(nslots <= 2 || caps[i] * 4ull > (nslots / 2) * 3);
		ratelimit_destroy(&rl);
	}

	/* a refill so long that burst * refill overflows: never idle, still counts */
	assert_true(ratelimit_init(&rl, 4, UINT32_MAX, UINT64_MAX / 2, SEED));
	assert_true(allow(&rl, "a", T0));
	assert_int_equal(ratelimit_sweep(&rl, UINT64_MAX - 1), 0);
	ratelimit_destroy(&rl);
}

/* The hash is keyed: the same key lands on unrelated hashes under two seeds. */
static void test_hash_is_seeded(void **state)
{
	struct ratelimit a, b;
	assert_true(ratelimit_init(&a, CAPACITY, BURST, REFILL_MS, 1));
	assert_true(ratelimit_init(&b, CAPACITY, BURST, REFILL_MS, 2));
	int same = 0;
	for (int i = 0; i < 16; i++) {
		char key[16];
		snprintf(key, sizeof key, "10.0.0.%d", i);
		assert_true(allow(&a, key, T0));
		assert_true(allow(&b, key, T0));
		same += find(&a, key)->hash == find(&b, key)->hash;
	}
	assert_int_equal(same, 0);
	ratelimit_destroy(&a);
	ratelimit_destroy(&b);
}

static void expect_xff(const char *value, const char *want)
{
	struct span out = span_make("untouched", 9);
	bool ok = ratelimit_key_from_xff(span_cstr(value), &out);
	if (want == NULL) {
		if (ok)
			fail_msg("\"%s\": got \"%.*s\", want no key", value, (int)out.len, (const char *)out.ptr);
		return;
	}
	if (!ok || !span_eq_cstr(out, want))
		fail_msg("\"%s\": want \"%s\"", value, want);
	/* the key points into the header value: nothing is copied */
	assert_true(out.ptr >= (const uint8_t *)value && out.ptr + out.len <= (const uint8_t *)value + strlen(value));
}

static void test_key_from_xff(void **state)
{
	expect_xff("1.2.3.4", "1.2.3.4");
	expect_xff(" 1.2.3.4 , 5.6.7.8", "1.2.3.4");
	expect_xff("1.2.3.4,5.6.7.8,9.9.9.9", "1.2.3.4");
	expect_xff("\t2001:db8::1\t, 10.0.0.1", "2001:db8::1");
	expect_xff("1.2.3.4,", "1.2.3.4");
	expect_xff("fe80::1%eth0", "fe80::1%eth0");
	expect_xff("not an ip , 1.2.3.4", "not an ip"); /* not validated: trust is all-or-nothing */
	expect_xff(",x", NULL);
	expect_xff(" ,1.2.3.4", NULL);
	expect_xff("", NULL);
	expect_xff("  ", NULL);
	expect_xff(",", NULL);
	expect_xff("\t \t", NULL);

	/* a header value is a span, not a C string */
	struct span out;
	assert_true(ratelimit_key_from_xff(span_make("9.9.9.9, x", 7), &out));
	assert_true(span_eq_cstr(out, "9.9.9.9"));
	assert_false(ratelimit_key_from_xff(span_make(NULL, 0), &out));
}

/* ---- random traffic against a plain reference model --------------------------------- */

#define MODEL_KEYS 40u
#define MODEL_STEPS 60000u

struct model_bucket {
	bool live;
	uint32_t tokens;
	uint64_t anchor_ms, last_ms;
};

struct model {
	uint32_t capacity, burst, count;
	uint64_t refill_ms;
	uint64_t full_denies;
	struct model_bucket b[MODEL_KEYS]; /* indexed by key number */
};

static void model_sweep(struct model *m, uint64_t now_ms)
{
	for (uint32_t k = 0; k < MODEL_KEYS; k++) {
		struct model_bucket *b = &m->b[k];
		if (b->live && now_ms >= b->last_ms && now_ms - b->last_ms >= (uint64_t)m->burst * m->refill_ms) {
			b->live = false;
			m->count--;
		}
	}
}

/* §6.1 written the obvious way, with the full-table rule: sweep, then deny. */
static bool model_allow(struct model *m, uint32_t k, uint64_t now_ms)
{
	struct model_bucket *b = &m->b[k];
	if (!b->live) {
		if (m->count == m->capacity)
			model_sweep(m, now_ms);
		if (m->count == m->capacity) {
			m->full_denies++;
			return false;
		}
		*b = (struct model_bucket){ .live = true, .tokens = m->burst, .anchor_ms = now_ms };
		m->count++;
	} else if (now_ms > b->anchor_ms) {
		uint64_t periods = (now_ms - b->anchor_ms) / m->refill_ms;
		b->tokens = (uint32_t)MIN((uint64_t)m->burst, b->tokens + periods);
		b->anchor_ms += periods * m->refill_ms;
	}
	b->last_ms = now_ms;
	if (b->tokens == 0)
		return false;
	b->tokens--;
	return true;
}

static void model_key(uint32_t k, char *buf, size_t cap)
{
	/* mixed lengths, shared prefixes, up to the maximum */
	if (k % 7 == 6) {
		memset(buf, 'a' + (int)(k % 26), RATELIMIT_KEY_BYTES_MAX);
		buf[RATELIMIT_KEY_BYTES_MAX] = '\0';
		buf[0] = (char)('0' + k / 10);
		buf[1] = (char)('0' + k % 10);
	} else if (k % 2) {
		snprintf(buf, cap, "10.0.%u.%u", k / 3, k);
	} else {
		snprintf(buf, cap, "2001:db8::%x", k);
	}
}

/* Every live bucket is reachable from its home slot without crossing a free slot,
 * no key is stored twice, and the counts agree. */
static void check_table(const struct ratelimit *rl)
{
	uint32_t live = 0;
	for (uint32_t i = 0; i <= rl->mask; i++) {
		const struct ratelimit_bucket *b = &rl->slots[i];
		if (b->key_len == 0)
			continue;
		live++;
		assert_true(b->tokens <= rl->burst);
		for (uint32_t j = b->hash & rl->mask; j != i; j = (j + 1) & rl->mask) {
			const struct ratelimit_bucket *o = &rl->slots[j];
			assert_true(o->key_len != 0);
			assert_false(o->key_len == b->key_len && memcmp(o->key, b->key, b->key_len) == 0);
		}
	}
	assert_int_equal(live, rl->count);
	assert_true(live <= rl->capacity);
}

static uint64_t xorshift64(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void run_model(uint32_t capacity, uint32_t burst, uint64_t refill_ms, uint64_t rng)
{
	struct ratelimit rl;
	struct model m = { .capacity = capacity, .burst = burst, .refill_ms = refill_ms };
	char keys[MODEL_KEYS][RATELIMIT_KEY_BYTES_MAX + 1];
	uint64_t now = T0;

	assert_true(ratelimit_init(&rl, capacity, burst, refill_ms, rng));
	for (uint32_t k = 0; k < MODEL_KEYS; k++)
		model_key(k, keys[k], sizeof keys[k]);

	for (uint32_t step = 0; step < MODEL_STEPS; step++) {
		uint64_t r = xorshift64(&rng);
		/* mostly short gaps, sometimes none, now and then a long idle */
		switch (r % 16) {
		case 0:
			now += r % (4 * (uint64_t)burst * refill_ms);
			break;
		case 1: case 2: case 3:
			break;
		default:
			now += (r >> 8) % (refill_ms + refill_ms / 2);
		}
		r = xorshift64(&rng);
		if (r % 64 == 0) {
			uint32_t before = m.count;
			model_sweep(&m, now);
			assert_int_equal(ratelimit_sweep(&rl, now), before - m.count);
		} else {
			/* a hot set of keys and a long tail, so buckets both live and die */
			uint32_t k = (r >> 8) % 4 == 0 ? (uint32_t)((r >> 16) % MODEL_KEYS) : (uint32_t)((r >> 16) % 6);
			bool want = model_allow(&m, k, now);
			bool got = allow(&rl, keys[k], now);
			if (got != want)
				fail_msg("step %u key %s at %llu: got %d want %d", step, keys[k],
					 (unsigned long long)now, got, want);
		}
		assert_int_equal(ratelimit_count(&rl), m.count);
		assert_int_equal(rl.full_denies, m.full_denies);
		check_table(&rl);
		for (uint32_t k = 0; k < MODEL_KEYS; k++) {
			const struct ratelimit_bucket *b = find(&rl, keys[k]);
			assert_int_equal(b != NULL, m.b[k].live);
			if (b == NULL)
				continue;
			assert_int_equal(b->tokens, m.b[k].tokens);
			assert_int_equal(b->anchor_ms, m.b[k].anchor_ms);
			assert_int_equal(b->last_ms, m.b[k].last_ms);
		}
	}
	ratelimit_destroy(&rl);
}

static void test_random_against_model(void **state)
{
	/* tiny tables: long clusters, wrap-around, deletions in the middle of clusters */
	run_model(1, 3, 1000, 0x1234567ull);
	run_model(3, 3, 1000, 0x2345678ull);
	run_model(6, 2, 700, 0x3456789ull);
	run_model(12, 4, 1000, 0x456789aull);
	run_model(MODEL_KEYS, BURST, REFILL_MS, 0x56789abull);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reference_sequence),
		cmocka_unit_test(test_cap_after_long_idle),
		cmocka_unit_test(test_keys_are_separate_and_exact),
		cmocka_unit_test(test_last_polled_updated_on_deny),
		cmocka_unit_test(test_sweep_removes_only_idle),
		cmocka_unit_test(test_hammered_bucket_never_evicted),
		cmocka_unit_test(test_table_full),
		cmocka_unit_test(test_capacity_one),
		cmocka_unit_test(test_burst_zero_is_off),
		cmocka_unit_test(test_empty_and_long_keys),
		cmocka_unit_test(test_init_arguments),
		cmocka_unit_test(test_hash_is_seeded),
		cmocka_unit_test(test_key_from_xff),
		cmocka_unit_test(test_random_against_model),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
