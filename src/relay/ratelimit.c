#include "relay/ratelimit.h"

#include <openssl/siphash.h>
#include <stdlib.h>
#include <string.h>

bool ratelimit_init(struct ratelimit *rl, uint32_t capacity, uint32_t burst, uint64_t refill_ms, uint64_t seed)
{
	ASSERT(capacity > 0 && (capacity & (capacity - 1)) == 0);
	*rl = (struct ratelimit){ .capacity = capacity, .burst = burst, .refill_ms = refill_ms ? refill_ms : 1 };
	rl->seed[0] = seed;
	rl->seed[1] = seed * 0x9e3779b97f4a7c15ull + 1;
	if (burst == 0)
		return true; /* off: no table at all */
	rl->table = calloc(capacity, sizeof *rl->table);
	return rl->table != NULL;
}

void ratelimit_destroy(struct ratelimit *rl)
{
	free(rl->table);
	rl->table = NULL;
}

static uint32_t home_of(const struct ratelimit *rl, const uint8_t *k, size_t n)
{
	return (uint32_t)SIPHASH_24(rl->seed, k, n) & (rl->capacity - 1);
}

static void credit(const struct ratelimit *rl, struct ratelimit_bucket *b, uint64_t now_ms)
{
	if (now_ms <= b->anchor_ms)
		return;
	uint64_t periods = (now_ms - b->anchor_ms) / rl->refill_ms;
	if (periods == 0)
		return;
	b->anchor_ms += periods * rl->refill_ms; /* the fractional remainder is kept */
	uint64_t t = b->tokens + periods;
	b->tokens = (uint32_t)(t > rl->burst ? rl->burst : t);
}

bool ratelimit_allow(struct ratelimit *rl, struct span key, uint64_t now_ms)
{
	if (rl->burst == 0)
		return true;
	if (key.len == 0)
		return false;
	size_t n = MIN(key.len, (size_t)RATELIMIT_KEY_BYTES_MAX);
	uint32_t i = home_of(rl, key.ptr, n);
	/* Bounded probe: at most capacity slots; the table is never allowed to be full
	 * and probing stops at the first empty slot. */
	for (uint32_t step = 0; step < rl->capacity; step++, i = (i + 1) & (rl->capacity - 1)) {
		struct ratelimit_bucket *b = &rl->table[i];
		if (b->key_len == 0) {
			if (rl->used + 1 >= rl->capacity) {
				ratelimit_sweep(rl, now_ms);
				if (rl->used + 1 >= rl->capacity) {
					rl->full_denies++;
					return false;
				}
				return ratelimit_allow(rl, key, now_ms); /* slots moved: once more */
			}
			*b = (struct ratelimit_bucket){ .anchor_ms = now_ms, .polled_ms = now_ms,
							.tokens = rl->burst - 1, .key_len = (uint8_t)n };
			memcpy(b->key, key.ptr, n);
			rl->used++;
			return true;
		}
		if (b->key_len == n && memcmp(b->key, key.ptr, n) == 0) {
			credit(rl, b, now_ms);
			b->polled_ms = now_ms;
			if (b->tokens == 0)
				return false;
			b->tokens--;
			return true;
		}
	}
	rl->full_denies++;
	return false;
}

/* Backward-shift deletion keeps every remaining key reachable from its home slot. */
static void remove_at(struct ratelimit *rl, uint32_t i)
{
	uint32_t mask = rl->capacity - 1;
	uint32_t hole = i;
	rl->table[hole].key_len = 0;
	rl->used--;
	for (uint32_t j = (hole + 1) & mask; rl->table[j].key_len != 0; j = (j + 1) & mask) {
		uint32_t home = home_of(rl, rl->table[j].key, rl->table[j].key_len);
		/* move j into the hole if its home is not in the cyclic range (hole, j] */
		bool in_range = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
		if (!in_range) {
			rl->table[hole] = rl->table[j];
			rl->table[j].key_len = 0;
			hole = j;
		}
	}
}

void ratelimit_sweep(struct ratelimit *rl, uint64_t now_ms)
{
	if (rl->table == NULL)
		return;
	uint64_t idle_ms = (uint64_t)rl->burst * rl->refill_ms;
	for (uint32_t i = 0; i < rl->capacity; i++) {
		/* A shifted-in bucket lands at i: look at i again until it stays. Bounded:
		 * each removal empties one of the used slots. */
		while (rl->table[i].key_len != 0 && now_ms >= rl->table[i].polled_ms &&
		       now_ms - rl->table[i].polled_ms >= idle_ms)
			remove_at(rl, i);
	}
}

static bool is_ows(uint8_t c)
{
	return c == ' ' || c == '\t';
}

bool ratelimit_key_from_xff(struct span value, struct span *out)
{
	size_t end = 0;
	while (end < value.len && value.ptr[end] != ',')
		end++;
	size_t a = 0, b = end;
	while (a < b && is_ows(value.ptr[a]))
		a++;
	while (b > a && is_ows(value.ptr[b - 1]))
		b--;
	if (a == b)
		return false;
	*out = span_make(value.ptr + a, b - a);
	return true;
}
