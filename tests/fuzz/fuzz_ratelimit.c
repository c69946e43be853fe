/*
 * fuzz_ratelimit.c - the limiter's open-addressing table under arbitrary traffic,
 * against a plain model of reference §6.1 (linear search, sweep-then-deny when full),
 * with the table invariants checked after every step; and ratelimit_key_from_xff
 * against a direct reading of its rule.
 *
 * Input: byte 0 bit 0 picks the target. Limiter: bytes 1-3 set capacity, burst and
 * refill, then each 3-byte record is one step (op + key, time gap, gap scale). XFF:
 * the rest is the header value.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "relay/ratelimit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_KEYS 32u
#define FZ_CAPACITY_MAX 24u
#define FZ_T0 1000000ull
#define FZ_SEED 0x5eed5eed5eed5eedull

struct fz_bucket {
	bool live;
	uint32_t tokens;
	uint64_t anchor_ms, last_ms;
};

struct fz_model {
	uint32_t capacity, burst, count;
	uint64_t refill_ms, full_denies;
	struct fz_bucket b[FZ_KEYS];
};

static void fz_sweep(struct fz_model *m, uint64_t now)
{
	for (uint32_t k = 0; k < FZ_KEYS; k++) {
		struct fz_bucket *b = &m->b[k];
		if (b->live && now >= b->last_ms && now - b->last_ms >= (uint64_t)m->burst * m->refill_ms) {
			b->live = false;
			m->count--;
		}
	}
}

static bool fz_allow(struct fz_model *m, uint32_t k, uint64_t now)
{
	struct fz_bucket *b = &m->b[k];
	if (m->burst == 0)
		return true;
	if (!b->live) {
		if (m->count == m->capacity)
			fz_sweep(m, now);
		if (m->count == m->capacity) {
			m->full_denies++;
			return false;
		}
		*b = (struct fz_bucket){ .live = true, .tokens = m->burst, .anchor_ms = now };
		m->count++;
	} else if (now > b->anchor_ms) {
		uint64_t periods = (now - b->anchor_ms) / m->refill_ms;
		b->tokens = (uint32_t)MIN((uint64_t)m->burst, b->tokens + periods);
		b->anchor_ms += periods * m->refill_ms;
	}
	b->last_ms = now;
	if (b->tokens == 0)
		return false;
	b->tokens--;
	return true;
}

/* Keys that share prefixes and lengths up to the maximum. */
static size_t fz_key(uint32_t k, char *buf)
{
	size_t n = 1 + (k * 7) % RATELIMIT_KEY_BYTES_MAX;
	memset(buf, 'a' + (int)(k % 3), n);
	buf[0] = (char)('A' + k);
	return n;
}

static void fz_check(const struct ratelimit *rl, const struct fz_model *m, char keys[][RATELIMIT_KEY_BYTES_MAX],
		     const size_t *lens)
{
	uint32_t live = 0;
	for (uint32_t i = 0; i <= rl->mask; i++) {
		const struct ratelimit_bucket *b = &rl->slots[i];
		if (b->key_len == 0)
			continue;
		live++;
		/* reachable from home without crossing a free slot, and stored once */
		for (uint32_t j = b->hash & rl->mask; j != i; j = (j + 1) & rl->mask) {
			ASSERT(rl->slots[j].key_len != 0);
			ASSERT(!(rl->slots[j].key_len == b->key_len &&
				 memcmp(rl->slots[j].key, b->key, b->key_len) == 0));
		}
		bool known = false;
		for (uint32_t k = 0; k < FZ_KEYS; k++) {
			if (lens[k] != b->key_len || memcmp(keys[k], b->key, b->key_len) != 0)
				continue;
			known = true;
			ASSERT(m->b[k].live);
			ASSERT(b->tokens == m->b[k].tokens);
			ASSERT(b->anchor_ms == m->b[k].anchor_ms);
			ASSERT(b->last_ms == m->b[k].last_ms);
		}
		ASSERT(known);
	}
	ASSERT(live == rl->count && live == m->count);
	ASSERT(rl->full_denies == m->full_denies);
}

static void fuzz_limiter(const uint8_t *p, size_t n)
{
	if (n < 3)
		return;
	struct fz_model m = { .capacity = 1u + p[0] % FZ_CAPACITY_MAX, .burst = p[1] % 6u,
			      .refill_ms = 1u + p[2] * 8u };
	struct ratelimit rl;
	char keys[FZ_KEYS][RATELIMIT_KEY_BYTES_MAX];
	size_t lens[FZ_KEYS];
	uint64_t now = FZ_T0;

	ASSERT(ratelimit_init(&rl, m.capacity, m.burst, m.refill_ms, FZ_SEED));
	for (uint32_t k = 0; k < FZ_KEYS; k++)
		lens[k] = fz_key(k, keys[k]);

	for (size_t i = 3; i + 3 <= n; i += 3) {
		uint8_t op = p[i];
		/* gap: 0..255 units of 1 ms, refill/16 or a whole refill */
		uint64_t unit = (p[i + 2] & 3) == 0 ? 1 : (p[i + 2] & 3) == 1 ? 1 + m.refill_ms / 16 : m.refill_ms;
		now += (uint64_t)p[i + 1] * unit;
		if (op >= 0xF0) {
			uint32_t before = m.count;
			if (m.burst)
				fz_sweep(&m, now);
			ASSERT(ratelimit_sweep(&rl, now) == before - m.count);
		} else {
			uint32_t k = op % FZ_KEYS;
			bool want = fz_allow(&m, k, now);
			ASSERT(ratelimit_allow(&rl, span_make(keys[k], lens[k]), now) == want);
		}
		if (m.burst)
			fz_check(&rl, &m, keys, lens);
	}
	ratelimit_destroy(&rl);
}

static bool fz_space(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static void fuzz_xff(const uint8_t *p, size_t n)
{
	struct span out;
	bool ok = ratelimit_key_from_xff(span_make(p, n), &out);
	const uint8_t *comma = memchr(p, ',', n);
	size_t first = comma ? (size_t)(comma - p) : n;
	size_t non_space = 0;
	for (size_t i = 0; i < first; i++)
		non_space += !fz_space(p[i]);
	ASSERT(ok == (non_space > 0));
	if (!ok)
		return;
	/* inside the first entry, trimmed exactly: ends on non-space, no comma, and every
	 * byte around it within the entry is whitespace */
	ASSERT(out.ptr >= p && out.ptr + out.len <= p + first && out.len > 0);
	ASSERT(!fz_space(out.ptr[0]) && !fz_space(out.ptr[out.len - 1]));
	for (const uint8_t *q = p; q < out.ptr; q++)
		ASSERT(fz_space(*q));
	for (const uint8_t *q = out.ptr + out.len; q < p + first; q++)
		ASSERT(fz_space(*q));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (data[0] & 1)
		fuzz_xff(data + 1, size - 1);
	else
		fuzz_limiter(data + 1, size - 1);
	return 0;
}
