/*
 * shared.c - what the registry shards of one relay share: the per-IP rate limiter
 * (reference §6.1), exact across workers, and the shards' counts for /healthz.
 *
 * Upgrade attempts are the cold path, so the limiter may lock: it is split into
 * RELAY_RATELIMIT_STRIPES tables, each behind its own mutex, and a key always lands in
 * the same stripe (keyed SipHash), so every decision about one address is made under
 * one lock with every earlier decision about it in view. Each worker passes its loop
 * clock (CLOCK_MONOTONIC read once per iteration, so the workers' clocks differ by up
 * to an iteration); a stripe never lets its time go back, so the limiter's anchors
 * only move forward. Each worker sweeps the stripes whose index is its id modulo the
 * worker count.
 */
#include "relay/shard.h"

#include <openssl/siphash.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/random.h>


struct rl_stripe {
	pthread_mutex_t lock;
	uint64_t now_ms; /* the latest time any worker passed in */
	struct ratelimit rl;
} __attribute__((aligned(CACHE_LINE_BYTES)));

struct relay_shared {
	uint32_t n;
	bool push_on;
	struct relay_push_port push;
	uint64_t stripe_key[2];
	struct relay_shard *shards[CONFIG_WORKERS_MAX]; /* set by each shard's create */
	struct rl_stripe stripe[RELAY_RATELIMIT_STRIPES];
};

/* Buckets per stripe: the relay-wide capacity spread evenly, plus a quarter for the
 * unevenness of the hash, so a stripe does not fill long before the whole would. */
static uint32_t stripe_capacity(uint32_t workers)
{
	uint64_t total = (uint64_t)RELAY_RATELIMIT_BUCKETS_MAX * workers;
	uint64_t per = total / RELAY_RATELIMIT_STRIPES;
	return (uint32_t)MIN(per + per / 4, (uint64_t)RATELIMIT_CAPACITY_MAX);
}

struct relay_shared *relay_shared_create(const struct config *cfg, uint32_t workers,
					 const struct relay_push_port *push)
{
	ASSERT(workers > 0 && workers <= CONFIG_WORKERS_MAX);
	struct relay_shared *sh = calloc_aligned(sizeof *sh);
	uint64_t seed[RELAY_RATELIMIT_STRIPES + 2];
	if (sh == NULL)
		return NULL;
	sh->n = workers;
	if (push != NULL) {
		sh->push_on = true;
		sh->push = *push;
	}
	if (getrandom(seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
		free(sh);
		return NULL;
	}
	sh->stripe_key[0] = seed[0];
	sh->stripe_key[1] = seed[1];
	for (uint32_t i = 0; i < RELAY_RATELIMIT_STRIPES; i++) {
		struct rl_stripe *st = &sh->stripe[i];
		if (!ratelimit_init(&st->rl, stripe_capacity(workers), cfg->rate_limit_burst, cfg->rate_limit_refill_ms,
				    seed[2 + i])) {
			for (uint32_t k = 0; k < i; k++) {
				ratelimit_destroy(&sh->stripe[k].rl);
				pthread_mutex_destroy(&sh->stripe[k].lock);
			}
			free(sh);
			return NULL;
		}
		pthread_mutex_init(&st->lock, NULL);
	}
	return sh;
}

void relay_shared_destroy(struct relay_shared *sh)
{
	if (sh == NULL)
		return;
	for (uint32_t i = 0; i < RELAY_RATELIMIT_STRIPES; i++) {
		ratelimit_destroy(&sh->stripe[i].rl);
		pthread_mutex_destroy(&sh->stripe[i].lock);
	}
	free(sh);
}

void relay_shared_register(struct relay_shared *sh, uint32_t worker, struct relay_shard *s)
{
	ASSERT(worker < sh->n && sh->shards[worker] == NULL);
	sh->shards[worker] = s;
}

/* Under st->lock: now_ms, never earlier than a time this stripe has seen. */
static uint64_t stripe_now(struct rl_stripe *st, uint64_t now_ms)
{
	st->now_ms = MAX(st->now_ms, now_ms);
	return st->now_ms;
}

bool relay_shared_allow(struct relay_shared *sh, struct span key, uint64_t now_ms)
{
	uint32_t i = (uint32_t)(SIPHASH_24(sh->stripe_key, key.ptr, key.len) % RELAY_RATELIMIT_STRIPES);
	struct rl_stripe *st = &sh->stripe[i];
	pthread_mutex_lock(&st->lock);
	bool ok = ratelimit_allow(&st->rl, key, stripe_now(st, now_ms));
	pthread_mutex_unlock(&st->lock);
	return ok;
}

void relay_shared_sweep(struct relay_shared *sh, uint32_t worker, uint64_t now_ms)
{
	for (uint32_t i = worker; i < RELAY_RATELIMIT_STRIPES; i += sh->n) {
		struct rl_stripe *st = &sh->stripe[i];
		pthread_mutex_lock(&st->lock);
		ratelimit_sweep(&st->rl, stripe_now(st, now_ms));
		pthread_mutex_unlock(&st->lock);
	}
}

void relay_shared_counts(const struct relay_shared *sh, uint64_t *binaries, uint64_t *phones)
{
	*binaries = *phones = 0;
	for (uint32_t i = 0; i < sh->n; i++) {
		const struct relay_stats *st = relay_stats_of(sh->shards[i]);
		*binaries += STAT_GET(st->binaries);
		*phones += STAT_GET(st->phones);
	}
}

const struct relay_push_port *relay_shared_push(const struct relay_shared *sh)
{
	return sh->push_on ? &sh->push : NULL;
}
