/*
 * bufpool.h - a worker's bounded pool of message and queue buffers.
 *
 * Contract:
 * - Buffers come in power-of-two size classes from BUFPOOL_CLASS_MIN_BYTES to
 *   BUFPOOL_CLASS_MAX_BYTES. A freed buffer goes back to its class's free list and is
 *   reused, so after warm-up the frame path does not call malloc.
 * - budget_bytes_max is a ceiling on bytes held from the system (in use + cached), never
 *   a reservation: an idle relay holds nothing. When a request would cross it, cached
 *   buffers of other classes are released first; if that is not enough, the request
 *   fails (NULL) and the caller sheds the connection that asked.
 * - One pool per worker: single-threaded, no locks. bytes_held, bytes_in_use and
 *   alloc_failures are single-writer stats (core/stat.h) the metrics responder reads.
 */
#ifndef PYRELAY_BUFPOOL_H
#define PYRELAY_BUFPOOL_H

#include "core/common.h"

#define BUFPOOL_CLASS_MIN_SHIFT 8  /* 256 B */
#define BUFPOOL_CLASS_MAX_SHIFT 19 /* 512 KiB: a max-size message plus its envelope */
#define BUFPOOL_CLASS_MIN_BYTES (1u << BUFPOOL_CLASS_MIN_SHIFT)
#define BUFPOOL_CLASS_MAX_BYTES (1u << BUFPOOL_CLASS_MAX_SHIFT)
#define BUFPOOL_CLASSES (BUFPOOL_CLASS_MAX_SHIFT - BUFPOOL_CLASS_MIN_SHIFT + 1)

struct bufpool_free {
	struct bufpool_free *next;
};

struct bufpool {
	uint64_t budget_bytes_max;
	uint64_t bytes_held;   /* from the system: in use + cached */
	uint64_t bytes_in_use; /* handed out */
	uint64_t bytes_held_peak;
	uint64_t alloc_failures; /* requests refused for the budget */
	struct bufpool_free *free[BUFPOOL_CLASSES];
	uint32_t free_count[BUFPOOL_CLASSES];
};

void bufpool_init(struct bufpool *p, uint64_t budget_bytes_max);
/* Release every cached buffer (buffers still in use are the caller's bug: asserted). */
void bufpool_destroy(struct bufpool *p);

/* A buffer of at least `bytes` (<= BUFPOOL_CLASS_MAX_BYTES); *cap_bytes gets its real
 * size. NULL when the budget is exhausted. */
void *bufpool_get(struct bufpool *p, size_t bytes, uint32_t *cap_bytes);
/* The size of the class bufpool_get(bytes) takes from: what it reports as cap_bytes. */
uint32_t bufpool_class_bytes(size_t bytes);
/* Return a buffer; cap_bytes must be what bufpool_get reported. */
void bufpool_put(struct bufpool *p, void *buf, uint32_t cap_bytes);

#endif
