/*
 * ratelimit.c - per-IP upgrade-attempt token buckets (see ratelimit.h for the contract).
 *
 * The table is open addressing with linear probing over a power-of-two slot array that
 * is never more than 3/4 full, so a probe always ends at a free slot. Removal is
 * backward-shift deletion (no tombstones), so lookups never slow down as buckets come
 * and go and the sweep needs no rebuild.
 */
#include "relay/ratelimit.h"

#include <openssl/siphash.h>
#include <stdlib.h>
#include <string.h>

/* Live buckets per slot at most LOAD_NUM / LOAD_DEN: linear probing stays short. */
#define LOAD_NUM 3u
#define LOAD_DEN 4u

/* splitmix64: spreads the caller's 64 random bits over the 128-bit SipHash key. */
static uint64_t splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

bool ratelimit_init(struct ratelimit *rl, uint32_t capacity_buckets, uint32_t burst,
		    uint64_t refill_ms, uint64_t seed)
{
	*rl = (struct ratelimit){ .burst = burst, .refill_ms = refill_ms };
	rl->seed[0] = splitmix64(&seed);
	rl->seed[1] = splitmix64(&seed);
	if (burst == 0)
		return true; /* off: no table at all, every request passes */
	if (refill_ms == 0 || capacity_buckets == 0 || capacity_buckets > RATELIMIT_CAPACITY_MAX)
		return false;

	uint64_t nslots = 2;
	while ((uint64_t)capacity_buckets * LOAD_DEN > nslots * LOAD_NUM)
		nslots <<= 1;
	rl->slots = calloc(nslots, sizeof *rl->slots);
	if (rl->slots == NULL)
		return false;
	rl->mask = (uint32_t)(nslots - 1);
	rl->capacity = capacity_buckets;
	/* Saturate: a huge --rate-limit-refill just means "never idle". */
	rl->idle_ms = refill_ms > UINT64_MAX / burst ? UINT64_MAX : (uint64_t)burst * refill_ms;
	rl->next_evictable_ms = UINT64_MAX;
	return true;
}

void ratelimit_destroy(struct ratelimit *rl)
{
	free(rl->slots);
	rl->slots = NULL;
	rl->count = 0;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static bool bucket_idle(const struct ratelimit *rl, const struct ratelimit_bucket *b, uint64_t now_ms)
{
	return now_ms >= b->last_ms && now_ms - b->last_ms >= rl->idle_ms;
}

/* Record a poll; keep next_evictable_ms a lower bound on every bucket's idle moment,
 * even if the caller's clock were to step back. */
static void touch(struct ratelimit *rl, struct ratelimit_bucket *b, uint64_t now_ms)
{
	b->last_ms = now_ms;
	rl->next_evictable_ms = MIN(rl->next_evictable_ms, sat_add(now_ms, rl->idle_ms));
}

/* Credit whole refill periods since the anchor and move the anchor by all of them,
 * including those the cap swallows (see ratelimit.h: a full bucket banks no time). */
static void credit(const struct ratelimit *rl, struct ratelimit_bucket *b, uint64_t now_ms)
{
	if (now_ms <= b->anchor_ms)
		return;
	uint64_t periods = (now_ms - b->anchor_ms) / rl->refill_ms;
	b->anchor_ms += periods * rl->refill_ms; /* <= now: cannot overflow */
	if (periods >= rl->burst - b->tokens)
		b->tokens = rl->burst;
	else
		b->tokens += (uint32_t)periods;
}

/* Backward-shift deletion: walk the cluster after the hole and pull back every bucket
 * whose home slot is not in the cyclic range (hole, j], so each remaining key is still
 * found by probing from its home without crossing a free slot. */
static void remove_at(struct ratelimit *rl, uint32_t hole)
{
	const uint32_t mask = rl->mask;
	struct ratelimit_bucket *t = rl->slots;

	ASSERT(t[hole].key_len != 0 && rl->count > 0);
	for (uint32_t j = (hole + 1) & mask; t[j].key_len != 0; j = (j + 1) & mask) {
		uint32_t home = t[j].hash & mask;
		/* distance home->j >= distance hole->j: the hole lies on j's probe path */
		if (((j - home) & mask) >= ((j - hole) & mask)) {
			t[hole] = t[j];
			hole = j;
		}
	}
	t[hole].key_len = 0;
	rl->count--;
}

uint32_t ratelimit_sweep(struct ratelimit *rl, uint64_t now_ms)
{
	if (rl->slots == NULL)
		return 0;
	const uint32_t mask = rl->mask;
	struct ratelimit_bucket *t = rl->slots;
	uint32_t removed = 0;
	uint64_t next = UINT64_MAX;

	/* Start just after a free slot (there is one: the table is at most 3/4 full). No
	 * cluster then wraps past the start, and a deletion only pulls buckets back from
	 * later in its own cluster, into slots not yet passed: every bucket is looked at
	 * exactly once, and a slot that received a bucket is looked at again. */
	uint32_t start = 0;
	while (t[start].key_len != 0)
		start = (start + 1) & mask;
	for (uint32_t k = 1; k <= mask + 1u; k++) {
		uint32_t i = (start + k) & mask;
		while (t[i].key_len != 0 && bucket_idle(rl, &t[i], now_ms)) {
			remove_at(rl, i);
			removed++;
		}
		if (t[i].key_len != 0)
			next = MIN(next, sat_add(t[i].last_ms, rl->idle_ms));
	}
	rl->next_evictable_ms = next;
	return removed;
}

bool ratelimit_allow(struct ratelimit *rl, struct span key, uint64_t now_ms)
{
	if (rl->burst == 0)
		return true;
	if (key.len == 0 || key.len > RATELIMIT_KEY_BYTES_MAX) {
		rl->key_denies++;
		return false;
	}

	const uint32_t mask = rl->mask;
	struct ratelimit_bucket *t = rl->slots;
	uint32_t hash = (uint32_t)SIPHASH_24(rl->seed, key.ptr, key.len);
	uint32_t i = hash & mask;

	/* Ends: the table always has a free slot. */
	for (; t[i].key_len != 0; i = (i + 1) & mask) {
		struct ratelimit_bucket *b = &t[i];
		if (b->hash != hash || b->key_len != key.len || memcmp(b->key, key.ptr, key.len) != 0)
			continue;
		credit(rl, b, now_ms);
		touch(rl, b, now_ms);
		if (b->tokens == 0)
			return false;
		b->tokens--;
		return true;
	}

	if (rl->count >= rl->capacity) {
		/* Sweep only when some bucket can be idle by now; never evict a live one. */
		if (now_ms < rl->next_evictable_ms || ratelimit_sweep(rl, now_ms) == 0) {
			rl->full_denies++;
			return false;
		}
		/* Buckets moved: find the free slot on this key's path again. */
		for (i = hash & mask; t[i].key_len != 0; i = (i + 1) & mask)
			;
	}

	struct ratelimit_bucket *b = &t[i];
	*b = (struct ratelimit_bucket){ .anchor_ms = now_ms, .tokens = rl->burst - 1, .hash = hash,
					.key_len = (uint8_t)key.len };
	memcpy(b->key, key.ptr, key.len);
	touch(rl, b, now_ms);
	rl->count++;
	return true;
}

/* Go's strings.TrimSpace, ASCII part (a header value holds no other whitespace that an
 * IP literal could be wrapped in). */
static bool is_space(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

bool ratelimit_key_from_xff(struct span header_value, struct span *out)
{
	const uint8_t *p = header_value.ptr;
	size_t end = 0;
	while (end < header_value.len && p[end] != ',')
		end++;
	size_t a = 0, b = end;
	while (a < b && is_space(p[a]))
		a++;
	while (b > a && is_space(p[b - 1]))
		b--;
	if (a == b)
		return false;
	*out = span_make(p + a, b - a);
	return true;
}
