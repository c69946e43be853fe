/*
 * group.h - what the workers of one relay share: the owner of each server-id, the
 * global --max-connections count, and the bounded handoff of upgrades between
 * workers. Everything here is on the cold path (an upgrade, not a frame).
 *
 * Contract:
 * - Created by main before the workers, destroyed after they are joined. Every field
 *   a worker writes at run time is an atomic; the rest is set at creation.
 * - group_owner is a keyed hash (SipHash-2-4, random key per process) of the shard key
 *   (the server-id) modulo the worker count: clients cannot aim many ids at one worker.
 * - Handoffs to one owner in flight (sent, not yet taken) are bounded by
 *   HANDOFF_INFLIGHT_MAX; group_reserve refuses past it, or when the owner no longer
 *   takes connections (draining, or its loop ended).
 * - The cap count is exact across workers: group_take_cap never lets more than
 *   max_connections slots be held at once.
 * - So is the per-IP count (group_set_ip_cap): one table of (client key, connections)
 *   split into GROUP_IP_STRIPES stripes, each behind a mutex; a key always lands in the
 *   same stripe, so every decision about one client is made under one lock. Keys are
 *   64-bit keyed hashes of the client's address (group_ip_key): clients cannot aim
 *   many addresses at one stripe or one probe sequence.
 */
#ifndef PYRELAY_ENGINE_GROUP_H
#define PYRELAY_ENGINE_GROUP_H

#include <pthread.h>

#include "core/common.h"

/* Per owner worker: upgrades sent to it and not yet taken from its completion queue. */
#define HANDOFF_INFLIGHT_MAX 1024u

enum handoff_result {
	HANDOFF_OK = 0,
	HANDOFF_OWNER_FULL,   /* HANDOFF_INFLIGHT_MAX in flight to the owner */
	HANDOFF_OWNER_GONE,   /* the owner is draining or its loop ended */
	HANDOFF_SEND_FAILED,  /* the kernel refused the cross-ring message */
	HANDOFF_OWNER_POOL,   /* the owner's connection pool was full */
	HANDOFF_RESULT_COUNT,
};

struct group_member {
	int ring_fd;          /* atomic; -1 until the worker's ring exists and after it is gone */
	bool accepting;       /* atomic; false once the worker drains or its loop ended */
	uint32_t inflight;    /* atomic; handoffs sent to it and not yet taken */
} __attribute__((aligned(CACHE_LINE_BYTES)));

#define GROUP_IP_STRIPES 64u

struct ip_slot {
	uint64_t key; /* 0: free */
	uint32_t count;
	uint32_t pad;
};

struct ip_stripe {
	pthread_mutex_t lock;
	struct ip_slot *slots;
	uint32_t mask;     /* slot count - 1 */
	uint32_t used;     /* keys held */
	uint32_t capacity; /* keys allowed: at most 3/4 of the slots */
} __attribute__((aligned(CACHE_LINE_BYTES)));

enum ip_take {
	IP_TAKE_OK = 0,
	IP_TAKE_FULL,       /* the client holds max_per_ip connections */
	IP_TAKE_TABLE_FULL, /* its stripe holds as many clients as it can (fail closed) */
};

struct worker_group {
	uint32_t n;
	uint32_t max_connections;
	uint32_t max_per_ip;       /* 0: no per-IP cap */
	uint64_t ip_hash_key[2];
	struct ip_stripe *ip;      /* GROUP_IP_STRIPES, NULL when off */
	uint64_t owner_key[2];
	uint32_t counted __attribute__((aligned(CACHE_LINE_BYTES))); /* atomic: cap slots held */
	pthread_barrier_t start; /* every worker's ring exists before any loop runs */
	uint32_t resumed; /* atomic: live sessions from a predecessor its workers took (migrate.c) */
	struct group_member member[];
};

/* NULL when out of memory or the random source fails. */
struct worker_group *worker_group_create(uint32_t n, uint32_t max_connections);
void worker_group_destroy(struct worker_group *g);

uint32_t group_owner(const struct worker_group *g, struct span key);

/* A worker's ring is ready (fd) or gone (-1); whether it takes connections. */
void group_publish(struct worker_group *g, uint32_t id, int ring_fd, bool accepting);
void group_stop_accepting(struct worker_group *g, uint32_t id);
/* Every worker has its ring and its loop has not ended (for readiness and the service
 * manager's watchdog: the listeners were bound before the rings, so this is "serving"). */
bool group_all_running(const struct worker_group *g);
/* The owner's ring fd for a handoff, with one in-flight place reserved (*ring_fd), or
 * why not. */
enum handoff_result group_reserve(struct worker_group *g, uint32_t owner, int *ring_fd);
/* A reserved place is free again: the owner took the handoff, or it was never sent. */
void group_release(struct worker_group *g, uint32_t owner);
uint32_t group_inflight(const struct worker_group *g, uint32_t owner);

/* One --max-connections slot, if the relay-wide count allows; group_put_cap returns it. */
bool group_take_cap(struct worker_group *g);
void group_put_cap(struct worker_group *g);
uint32_t group_counted(const struct worker_group *g);

/* Turn the per-IP cap on (max_per_ip > 0), for a relay of max_connections: every
 * stripe gets room for its share of max_connections clients, and then some. Before
 * the workers start. False when out of memory. */
bool group_set_ip_cap(struct worker_group *g, uint32_t max_per_ip);
/* The table key of a client (its rate-limit key: address or X-Forwarded-For entry);
 * never 0. */
uint64_t group_ip_key(const struct worker_group *g, struct span client);
/* One of the client's max_per_ip connections (always OK when the cap is off, or for
 * key 0); group_put_ip gives it back. */
enum ip_take group_take_ip(struct worker_group *g, uint64_t key);
void group_put_ip(struct worker_group *g, uint64_t key);
/* The client's connections now (0 when the cap is off): for tests. */
uint32_t group_ip_count(struct worker_group *g, uint64_t key);

#endif
