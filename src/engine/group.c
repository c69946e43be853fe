#include "engine/group.h"

#include <openssl/siphash.h>
#include <stdlib.h>
#include <sys/random.h>

#include "core/stat.h"

struct worker_group *worker_group_create(uint32_t n, uint32_t max_connections)
{
	ASSERT(n > 0);
	struct worker_group *g = calloc_aligned(sizeof *g + n * sizeof g->member[0]);
	if (g == NULL)
		return NULL;
	g->n = n;
	g->max_connections = max_connections;
	if (getrandom(g->owner_key, sizeof g->owner_key, 0) != (ssize_t)sizeof g->owner_key ||
	    getrandom(g->ip_hash_key, sizeof g->ip_hash_key, 0) != (ssize_t)sizeof g->ip_hash_key ||
	    pthread_barrier_init(&g->start, NULL, n) != 0) {
		free(g);
		return NULL;
	}
	for (uint32_t i = 0; i < n; i++)
		g->member[i].ring_fd = -1;
	return g;
}

void worker_group_destroy(struct worker_group *g)
{
	if (g == NULL)
		return;
	pthread_barrier_destroy(&g->start);
	if (g->ip) {
		for (uint32_t i = 0; i < GROUP_IP_STRIPES; i++) {
			free(g->ip[i].slots);
			pthread_mutex_destroy(&g->ip[i].lock);
		}
		free(g->ip);
	}
	free(g);
}

uint32_t group_owner(const struct worker_group *g, struct span key)
{
	if (g->n == 1)
		return 0;
	return (uint32_t)(SIPHASH_24(g->owner_key, key.ptr, key.len) % g->n);
}

void group_publish(struct worker_group *g, uint32_t id, int ring_fd, bool accepting)
{
	ASSERT(id < g->n);
	__atomic_store_n(&g->member[id].ring_fd, ring_fd, __ATOMIC_RELEASE);
	__atomic_store_n(&g->member[id].accepting, accepting, __ATOMIC_RELEASE);
}

void group_stop_accepting(struct worker_group *g, uint32_t id)
{
	ASSERT(id < g->n);
	__atomic_store_n(&g->member[id].accepting, false, __ATOMIC_RELEASE);
}

bool group_all_running(const struct worker_group *g)
{
	for (uint32_t i = 0; i < g->n; i++)
		if (__atomic_load_n(&g->member[i].ring_fd, __ATOMIC_ACQUIRE) < 0)
			return false;
	return true;
}

enum handoff_result group_reserve(struct worker_group *g, uint32_t owner, int *ring_fd)
{
	ASSERT(owner < g->n);
	struct group_member *m = &g->member[owner];
	if (!__atomic_load_n(&m->accepting, __ATOMIC_ACQUIRE))
		return HANDOFF_OWNER_GONE;
	uint32_t cur = __atomic_load_n(&m->inflight, __ATOMIC_RELAXED);
	do {
		if (cur >= HANDOFF_INFLIGHT_MAX)
			return HANDOFF_OWNER_FULL;
	} while (!__atomic_compare_exchange_n(&m->inflight, &cur, cur + 1, true, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED));
	*ring_fd = __atomic_load_n(&m->ring_fd, __ATOMIC_ACQUIRE);
	if (*ring_fd < 0) {
		group_release(g, owner);
		return HANDOFF_OWNER_GONE;
	}
	return HANDOFF_OK;
}

void group_release(struct worker_group *g, uint32_t owner)
{
	ASSERT(owner < g->n);
	uint32_t before = __atomic_fetch_sub(&g->member[owner].inflight, 1, __ATOMIC_ACQ_REL);
	ASSERT(before > 0);
	(void)before;
}

uint32_t group_inflight(const struct worker_group *g, uint32_t owner)
{
	ASSERT(owner < g->n);
	return __atomic_load_n(&g->member[owner].inflight, __ATOMIC_RELAXED);
}

bool group_take_cap(struct worker_group *g)
{
	uint32_t cur = __atomic_load_n(&g->counted, __ATOMIC_RELAXED);
	do {
		if (cur >= g->max_connections)
			return false;
	} while (!__atomic_compare_exchange_n(&g->counted, &cur, cur + 1, true, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED));
	return true;
}

void group_put_cap(struct worker_group *g)
{
	uint32_t before = __atomic_fetch_sub(&g->counted, 1, __ATOMIC_ACQ_REL);
	ASSERT(before > 0);
	(void)before;
}

uint32_t group_counted(const struct worker_group *g)
{
	return __atomic_load_n(&g->counted, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ per-IP cap */

/* Open addressing with linear probing, at most 3/4 full, backward-shift deletion (no
 * tombstones): the layout of relay/ratelimit.c. The stripe is the key's top bits, the
 * home slot its low bits. */
#define IP_LOAD_NUM 3u
#define IP_LOAD_DEN 4u
#define IP_STRIPE_SPARE 64u /* keys per stripe beyond its even share, for the hash's unevenness */

bool group_set_ip_cap(struct worker_group *g, uint32_t max_per_ip)
{
	ASSERT(g->ip == NULL);
	if (max_per_ip == 0)
		return true;
	/* Distinct clients holding connections <= max_connections: each stripe is sized
	 * for its share and half again, so an even hash never fills one. */
	uint64_t share = g->max_connections / GROUP_IP_STRIPES;
	uint64_t capacity = share + share / 2 + IP_STRIPE_SPARE;
	uint64_t nslots = 2;
	while (capacity * IP_LOAD_DEN > nslots * IP_LOAD_NUM)
		nslots <<= 1;
	g->ip = calloc_aligned(GROUP_IP_STRIPES * sizeof *g->ip);
	if (g->ip == NULL)
		return false;
	for (uint32_t i = 0; i < GROUP_IP_STRIPES; i++) {
		struct ip_stripe *st = &g->ip[i];
		st->slots = calloc(nslots, sizeof *st->slots); /* pages are backed as keys arrive */
		pthread_mutex_init(&st->lock, NULL);
		st->mask = (uint32_t)(nslots - 1);
		st->capacity = (uint32_t)capacity;
		if (st->slots == NULL) {
			for (uint32_t k = 0; k <= i; k++) {
				free(g->ip[k].slots);
				pthread_mutex_destroy(&g->ip[k].lock);
			}
			free(g->ip);
			g->ip = NULL;
			return false;
		}
	}
	g->max_per_ip = max_per_ip;
	return true;
}

uint64_t group_ip_key(const struct worker_group *g, struct span client)
{
	uint64_t h = SIPHASH_24(g->ip_hash_key, client.ptr, client.len);
	return h ? h : 1;
}

static struct ip_stripe *ip_stripe_of(struct worker_group *g, uint64_t key)
{
	return &g->ip[key >> 58]; /* 64 stripes: the top six bits */
}

/* Under st->lock: the slot holding key, or the free slot where it would go. */
static struct ip_slot *ip_find(struct ip_stripe *st, uint64_t key)
{
	/* Bounded: the table is never full, so a probe reaches a free slot. */
	for (uint32_t i = (uint32_t)key & st->mask;; i = (i + 1) & st->mask) {
		struct ip_slot *s = &st->slots[i];
		if (s->key == key || s->key == 0)
			return s;
	}
}

/* Under st->lock: empty slot i, shifting back the keys that probed past it. */
static void ip_remove(struct ip_stripe *st, uint32_t i)
{
	for (uint32_t j = (i + 1) & st->mask;; j = (j + 1) & st->mask) {
		struct ip_slot *s = &st->slots[j];
		if (s->key == 0)
			break;
		uint32_t home = (uint32_t)s->key & st->mask;
		/* s may move to i if its home is not in (i, j] (cyclically) */
		bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
		if (!stays) {
			st->slots[i] = *s;
			i = j;
		}
	}
	st->slots[i] = (struct ip_slot){ 0 };
	st->used--;
}

enum ip_take group_take_ip(struct worker_group *g, uint64_t key)
{
	if (g->ip == NULL || key == 0)
		return IP_TAKE_OK;
	struct ip_stripe *st = ip_stripe_of(g, key);
	enum ip_take r = IP_TAKE_OK;
	pthread_mutex_lock(&st->lock);
	struct ip_slot *s = ip_find(st, key);
	if (s->key == key) {
		if (s->count >= g->max_per_ip)
			r = IP_TAKE_FULL;
		else
			s->count++;
	} else if (st->used >= st->capacity) {
		r = IP_TAKE_TABLE_FULL;
	} else {
		*s = (struct ip_slot){ .key = key, .count = 1 };
		st->used++;
	}
	pthread_mutex_unlock(&st->lock);
	return r;
}

void group_put_ip(struct worker_group *g, uint64_t key)
{
	if (g->ip == NULL || key == 0)
		return;
	struct ip_stripe *st = ip_stripe_of(g, key);
	pthread_mutex_lock(&st->lock);
	struct ip_slot *s = ip_find(st, key);
	ASSERT(s->key == key && s->count > 0);
	if (--s->count == 0)
		ip_remove(st, (uint32_t)(s - st->slots));
	pthread_mutex_unlock(&st->lock);
}

uint32_t group_ip_count(struct worker_group *g, uint64_t key)
{
	if (g->ip == NULL || key == 0)
		return 0;
	struct ip_stripe *st = ip_stripe_of(g, key);
	pthread_mutex_lock(&st->lock);
	struct ip_slot *s = ip_find(st, key);
	uint32_t n = s->key == key ? s->count : 0;
	pthread_mutex_unlock(&st->lock);
	return n;
}
