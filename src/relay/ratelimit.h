/*
 * ratelimit.h - per-IP upgrade-attempt token buckets (reference §6.1).
 *
 * Contract:
 * - Pure and single-threaded (one per worker); time is passed in, never read.
 * - Memory is one open-addressing table allocated at init; nothing after.
 * - Algorithm, exactly the reference's: integer tokens, `burst` at most; an unseen key
 *   starts full and pays one; each request credits floor(elapsed / refill) tokens
 *   (capped at burst) and moves the refill anchor by exactly that many whole periods,
 *   keeping the remainder; last-polled is set on every request, allowed or not.
 * - Keys are untrusted (X-Forwarded-For): they are hashed with SipHash and a secret
 *   seed, so an attacker cannot aim collisions.
 * - A full table does not evict live buckets (that would hand an attacker with many
 *   addresses fresh bursts for everyone): after a sweep, a new key is denied.
 */
#ifndef PYRELAY_RATELIMIT_H
#define PYRELAY_RATELIMIT_H

#include "core/common.h"

#define RATELIMIT_KEY_BYTES_MAX 64u
#define RATELIMIT_SWEEP_INTERVAL_MS 300000u /* reference: every 5 min */

struct ratelimit_bucket {
	uint64_t anchor_ms;    /* refill anchor */
	uint64_t polled_ms;    /* last request */
	uint32_t tokens;
	uint8_t key_len;       /* 0 = empty slot */
	uint8_t key[RATELIMIT_KEY_BYTES_MAX];
};

struct ratelimit {
	struct ratelimit_bucket *table;
	uint32_t capacity; /* power of two */
	uint32_t used;
	uint32_t burst;    /* 0 = limiter off */
	uint64_t refill_ms;
	uint64_t seed[2];
	uint64_t full_denies;
};

bool ratelimit_init(struct ratelimit *rl, uint32_t capacity, uint32_t burst, uint64_t refill_ms, uint64_t seed);
void ratelimit_destroy(struct ratelimit *rl);

/* One upgrade attempt from `key` at now_ms: true = allowed. An empty key is denied
 * without touching the table (§6.1); keys longer than RATELIMIT_KEY_BYTES_MAX are
 * truncated (no IP literal is that long). */
bool ratelimit_allow(struct ratelimit *rl, struct span key, uint64_t now_ms);

/* Remove buckets idle for >= burst * refill: they would be full again anyway, so
 * eviction never grants a free burst. Bounded by the table size. */
void ratelimit_sweep(struct ratelimit *rl, uint64_t now_ms);

/* Left-most comma-separated entry of X-Forwarded-For, whitespace-trimmed; false when
 * empty (the caller falls back to the socket address). */
bool ratelimit_key_from_xff(struct span value, struct span *out);

#endif
