#include "engine/outq.h"

#include <string.h>

/* The next segment's size: what the data needs, and at least double the segment
 * before it (OUTQ_SEGMENT_FIRST_BYTES for the first, capped at OUTQ_SEGMENT_BYTES). */
static struct outq_seg *seg_new(struct bufpool *pool, const struct outq_seg *prev, size_t want_bytes)
{
	size_t step = prev ? MIN((size_t)prev->alloc_bytes * 2, (size_t)OUTQ_SEGMENT_BYTES) : OUTQ_SEGMENT_FIRST_BYTES;
	size_t bytes = MAX(sizeof(struct outq_seg) + want_bytes, step);
	if (bytes > BUFPOOL_CLASS_MAX_BYTES)
		bytes = BUFPOOL_CLASS_MAX_BYTES;
	uint32_t cap;
	struct outq_seg *s = bufpool_get(pool, bytes, &cap);
	if (s == NULL)
		return NULL;
	*s = (struct outq_seg){ .cap = cap - (uint32_t)sizeof(struct outq_seg), .alloc_bytes = cap };
	return s;
}

static void seg_free(struct bufpool *pool, struct outq_seg *s)
{
	bufpool_put(pool, s, s->alloc_bytes);
}

/*
 * Invariant: every segment in the list holds at least one unsent byte
 * (head < tail), and data is in order, so the end of queued data is always in
 * q->last and a fully written segment is freed at once.
 */
bool outq_append(struct outq *q, struct bufpool *pool, const struct iovec *parts, size_t nparts)
{
	size_t total = 0;
	for (size_t i = 0; i < nparts; i++)
		total += parts[i].iov_len;
	if (total == 0)
		return true;

	/* Reserve first: a refused append must leave the queue unchanged. Each segment
	 * added here receives at least one byte, which keeps the invariant. */
	struct outq_seg *start = (q->last != NULL && q->last->tail < q->last->cap) ? q->last : NULL;
	size_t room = start ? start->cap - start->tail : 0;
	struct outq_seg *added_first = NULL, *added_last = NULL;
	while (room < total) {
		struct outq_seg *s = seg_new(pool, added_last ? added_last : q->last, total - room);
		if (s == NULL) {
			while (added_first != NULL) {
				struct outq_seg *n = added_first->next;
				seg_free(pool, added_first);
				added_first = n;
			}
			return false;
		}
		if (added_last)
			added_last->next = s;
		else
			added_first = s;
		added_last = s;
		room += s->cap;
	}
	if (added_first != NULL) {
		if (q->last)
			q->last->next = added_first;
		else
			q->first = added_first;
		q->last = added_last;
	}

	struct outq_seg *s = start ? start : added_first;
	for (size_t i = 0; i < nparts; i++) {
		const uint8_t *p = parts[i].iov_base;
		size_t n = parts[i].iov_len;
		while (n > 0) {
			if (s->tail == s->cap) {
				s = s->next;
				ASSERT(s != NULL);
			}
			size_t chunk = MIN(n, (size_t)(s->cap - s->tail));
			memcpy(s->data + s->tail, p, chunk);
			s->tail += (uint32_t)chunk;
			p += chunk;
			n -= chunk;
		}
	}
	ASSERT(s == q->last);
	q->bytes += total;
	return true;
}

bool outq_reserve(struct outq *q, struct bufpool *pool, size_t n, struct outq_resv *r)
{
	ASSERT(n > 0);
	if (n > BUFPOOL_CLASS_MAX_BYTES - sizeof(struct outq_seg))
		return false;
	if (q->last != NULL && q->last->cap - q->last->tail >= n) {
		*r = (struct outq_resv){ .seg = q->last, .ptr = q->last->data + q->last->tail };
		return true;
	}
	struct outq_seg *s = seg_new(pool, q->last, n);
	if (s == NULL)
		return false;
	ASSERT(s->cap >= n);
	*r = (struct outq_resv){ .seg = s, .ptr = s->data, .fresh = true };
	return true;
}

/* Linked only now, so the invariant (no segment without an unsent byte) holds. */
void outq_commit(struct outq *q, struct outq_resv *r, size_t m)
{
	struct outq_seg *s = r->seg;
	ASSERT(m > 0 && r->ptr == s->data + s->tail && m <= (size_t)(s->cap - s->tail));
	if (r->fresh) {
		if (q->last)
			q->last->next = s;
		else
			q->first = s;
		q->last = s;
	}
	ASSERT(s == q->last);
	s->tail += (uint32_t)m;
	q->bytes += m;
	r->seg = NULL;
}

void outq_abort(struct bufpool *pool, struct outq_resv *r)
{
	if (r->fresh)
		seg_free(pool, r->seg);
	r->seg = NULL;
}

void outq_mark_item(struct outq *q)
{
	ASSERT(q->last != NULL);
	q->last->items++;
}

size_t outq_iov(const struct outq *q, struct iovec *iov, size_t max)
{
	size_t n = 0;
	for (const struct outq_seg *s = q->first; s != NULL && n < max; s = s->next) {
		iov[n].iov_base = (void *)(s->data + s->head);
		iov[n].iov_len = s->tail - s->head;
		n++;
	}
	return n;
}

/* Items ending inside a partially written segment are credited when the segment
 * finishes: at most one segment late, never early. */
uint32_t outq_consume(struct outq *q, struct bufpool *pool, size_t n)
{
	ASSERT(n <= q->bytes);
	uint32_t items = 0;
	q->bytes -= n;
	while (n > 0) {
		struct outq_seg *s = q->first;
		ASSERT(s != NULL && s->head < s->tail);
		size_t step = MIN(n, (size_t)(s->tail - s->head));
		s->head += (uint32_t)step;
		n -= step;
		if (s->head == s->tail) {
			items += s->items;
			q->first = s->next;
			if (q->first == NULL)
				q->last = NULL;
			seg_free(pool, s);
		}
	}
	return items;
}

void outq_clear(struct outq *q, struct bufpool *pool)
{
	while (q->first != NULL) {
		struct outq_seg *s = q->first;
		q->first = s->next;
		seg_free(pool, s);
	}
	q->last = NULL;
	q->bytes = 0;
}
