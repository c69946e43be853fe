/*
 * ratelimit.h - the per-IP upgrade-attempt limiter of reference §6.1.
 *
 * One shared token bucket per client IP string for /v1/server and /v1/client:
 * - integer tokens, burst RATELIMIT_BURST_DEFAULT, one token per refill period
 *   (RATELIMIT_REFILL_MS_DEFAULT);
 * - the first request from an unseen key creates a bucket with `burst` tokens, anchored
 *   at now, and consumes one;
 * - every request credits floor((now - anchor) / refill) tokens, capped at burst, and
 *   moves the anchor forward by exactly that many whole periods, so the fractional
 *   remainder carries over (12.5 s credits 2 tokens and the next one comes 5.5 s later);
 * - the anchor moves by every whole elapsed period even when the cap swallows some of
 *   the credit: a full bucket does not bank time. Were the anchor to move only by the
 *   credited periods, a bucket idle for an hour would keep an hour-old anchor and hand
 *   out a token on every request after its burst, i.e. no limit at all;
 * - "last polled" = now on every request, allowed or denied; allow if tokens > 0
 *   (and take one), else deny.
 *
 * Eviction: ratelimit_sweep, which the caller runs every RATELIMIT_SWEEP_INTERVAL_MS,
 * drops buckets last polled >= burst * refill ago (120 s with the defaults). Such a
 * bucket would have refilled to full anyway, so eviction never hands out a free burst,
 * and a bucket that keeps being hammered is never evicted.
 *
 * Divergences from the Go relay, all fail-closed and invisible to real clients:
 * - Capacity is fixed at init. When the table is full and a new key arrives, idle
 *   buckets are swept first; if none is idle the request is denied (full_denies).
 *   Evicting a live bucket instead would let an attacker who controls many source
 *   addresses (or XFF values) push real users' half-empty buckets out and so hand
 *   them, or itself, fresh bursts. Refusing unseen keys costs only newcomers, and only
 *   while every bucket has been polled within burst * refill. The sweep on a full table
 *   runs only once some bucket can have gone idle, so a flood of new keys against a
 *   full table costs a probe each, not a scan each.
 * - Keys longer than RATELIMIT_KEY_BYTES_MAX are denied (key_denies). The longest IP
 *   literal with a zone id ("ffff:...:255.255.255.255%" + IFNAMSIZ - 1) is 61 bytes, so
 *   only a forged X-Forwarded-For entry can be that long.
 *
 * Keys are hashed with SipHash-2-4 under a per-process random seed: they come from the
 * network (and from X-Forwarded-For), so an attacker must not be able to choose keys
 * that share a probe sequence and turn every lookup into a scan of the table.
 *
 * Contract: single-threaded (one instance per worker); all memory is allocated once by
 * ratelimit_init; time is passed in as monotonic milliseconds and never read here.
 */
#ifndef PYRELAY_RATELIMIT_H
#define PYRELAY_RATELIMIT_H

#include "core/common.h"

#define RATELIMIT_BURST_DEFAULT 20u
#define RATELIMIT_REFILL_MS_DEFAULT 6000u   /* one token per 6 s: 10 attempts/IP/min */
#define RATELIMIT_SWEEP_INTERVAL_MS 300000u /* the caller sweeps every 5 min */
#define RATELIMIT_KEY_BYTES_MAX 64u
/* Upper bound on capacity_buckets: keeps slot indexes and stored hashes in 32 bits. */
#define RATELIMIT_CAPACITY_MAX (1u << 24)

/* One slot of the open-addressing table. */
struct ratelimit_bucket {
	uint64_t anchor_ms; /* tokens are credited for whole periods after this */
	uint64_t last_ms;   /* last poll, allowed or denied: drives eviction */
	uint32_t tokens;
	uint32_t hash;      /* low bits of the keyed hash: home slot without rehashing */
	uint8_t key_len;    /* 0: free slot (an empty key never gets a bucket) */
	char key[RATELIMIT_KEY_BYTES_MAX];
};

/* Fields are private to ratelimit.c except the counters, which the caller may read. */
struct ratelimit {
	struct ratelimit_bucket *slots; /* NULL when the limiter is off */
	uint32_t mask;                  /* slot count - 1 (a power of two) */
	uint32_t capacity;              /* live buckets allowed: at most 3/4 of the slots */
	uint32_t count;                 /* live buckets */
	uint32_t burst;                 /* 0: limiter off */
	uint64_t refill_ms;
	uint64_t idle_ms;               /* burst * refill_ms: evictable after this long */
	uint64_t next_evictable_ms;     /* no bucket is evictable before this (lower bound) */
	uint64_t seed[2];               /* SipHash key */

	uint64_t full_denies; /* unseen key refused because the table was full */
	uint64_t key_denies;  /* empty or over-long key refused */
};

/*
 * Set up a limiter for up to capacity_buckets live keys (1..RATELIMIT_CAPACITY_MAX),
 * allocating its table once (about 96 bytes per slot, 4/3..8/3 slots per bucket).
 * burst 0 turns the limiter off: nothing is allocated and every request is allowed.
 * refill_ms must be > 0 when burst > 0. seed: per-process random bits (getrandom),
 * stretched into the 128-bit SipHash key. False on bad arguments or out of memory.
 */
bool ratelimit_init(struct ratelimit *rl, uint32_t capacity_buckets, uint32_t burst,
		    uint64_t refill_ms, uint64_t seed);
void ratelimit_destroy(struct ratelimit *rl);

/* One upgrade attempt from key at now_ms: true to let it through, false for 429. An
 * empty key is denied without touching the table (when the limiter is on). */
bool ratelimit_allow(struct ratelimit *rl, struct span key, uint64_t now_ms);

/* Drop every bucket last polled >= burst * refill before now_ms. Returns how many. Work
 * is bounded by the table size; removal keeps every other key reachable. */
uint32_t ratelimit_sweep(struct ratelimit *rl, uint64_t now_ms);

static inline uint32_t ratelimit_count(const struct ratelimit *rl)
{
	return rl->count;
}

/*
 * The key under --trust-x-forwarded-for: the left-most comma-separated entry of the
 * X-Forwarded-For value, with ASCII whitespace (Go's TrimSpace set: SP HT LF VT FF CR)
 * trimmed; not canonicalised. *out points into header_value. False when that entry is
 * empty, and then the caller keys on the remote address instead: the Go relay's
 * ClientIP falls back the same way (its test
 * XFF_Enabled_WhitespaceOnlyFirstEntry_FallsBackToRemoteAddr), so an empty left-most
 * entry is not an empty key and is not refused as one.
 */
bool ratelimit_key_from_xff(struct span header_value, struct span *out);

#endif
