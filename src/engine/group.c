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
