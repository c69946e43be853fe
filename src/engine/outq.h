/*
 * outq.h - a connection's outbound byte queue, in segments from the worker's bufpool.
 *
 * Contract:
 * - Frames queued during one loop iteration are appended here and leave in one send
 *   (send or sendmsg over up to OUTQ_IOV_MAX segments): the number of sends, not of
 *   copies, decides throughput (DESIGN.md).
 * - Append is all-or-nothing: the space is reserved before a byte is copied, so a
 *   refused append (budget exhausted) leaves the queue as it was.
 * - Items: the caller marks the end of each counted item (a forwarded frame);
 *   outq_consume reports how many marked items have been written completely, so
 *   "frames actually written" counts exactly.
 * - An empty queue holds no segment: an idle connection costs nothing here.
 */
#ifndef PYRELAY_OUTQ_H
#define PYRELAY_OUTQ_H

#include <sys/uio.h>

#include "core/common.h"
#include "engine/bufpool.h"

/* A queue's first segment is small (a handshake response, a heartbeat, one envelope);
 * each further one doubles up to OUTQ_SEGMENT_BYTES, so a busy queue still batches
 * into a few large segments while a quiet connection holds about 1 KiB. A single
 * append larger than that gets a segment of its size (up to the pool's largest). */
#define OUTQ_SEGMENT_FIRST_BYTES 1024u
#define OUTQ_SEGMENT_BYTES (16u * 1024u)
#define OUTQ_IOV_MAX 16u

struct outq_seg {
	struct outq_seg *next;
	uint32_t cap;        /* data bytes this segment can hold */
	uint32_t alloc_bytes; /* bufpool class size */
	uint32_t head;       /* first unsent byte */
	uint32_t tail;       /* end of queued bytes */
	uint32_t items;      /* marked items whose last byte is in this segment */
	uint32_t pad;
	uint8_t data[];
};

struct outq {
	struct outq_seg *first;
	struct outq_seg *last;
	uint64_t bytes; /* queued, not yet written */
};

static inline bool outq_empty(const struct outq *q)
{
	return q->bytes == 0;
}

/* Append parts (concatenated) or nothing at all. False when the pool refused memory. */
bool outq_append(struct outq *q, struct bufpool *pool, const struct iovec *parts, size_t nparts);
/*
 * Or write in place (issue #17: a payload validated and copied in one pass): reserve n
 * contiguous bytes at the queue's end, write them, then commit the first m <= n of
 * them (m > 0) or abort. Until then nothing else may touch the queue. The stretch is
 * the free end of the last segment when it is long enough, else a new segment (the
 * last one's free end then stays unused); false when that would be larger than the
 * pool's largest buffer or the pool refused it (the queue is unchanged).
 */
struct outq_resv {
	struct outq_seg *seg;
	uint8_t *ptr; /* where the n bytes go */
	bool fresh;   /* seg is new: linked on commit, returned on abort */
};
bool outq_reserve(struct outq *q, struct bufpool *pool, size_t n, struct outq_resv *r);
void outq_commit(struct outq *q, struct outq_resv *r, size_t m);
void outq_abort(struct bufpool *pool, struct outq_resv *r);
/* Mark the last appended byte as the end of a counted item. */
void outq_mark_item(struct outq *q);
/* Fill up to max iovecs with the unsent bytes, oldest first. Returns the count. */
size_t outq_iov(const struct outq *q, struct iovec *iov, size_t max);
/* n bytes were written: advance, free finished segments, return completed items. */
uint32_t outq_consume(struct outq *q, struct bufpool *pool, size_t n);
/* Unsent bytes of the first segment: a write of at least this many finishes it. */
static inline size_t outq_head_bytes(const struct outq *q)
{
	return q->first ? (size_t)(q->first->tail - q->first->head) : 0;
}
/* Drop everything queued (connection teardown). */
void outq_clear(struct outq *q, struct bufpool *pool);

#endif
