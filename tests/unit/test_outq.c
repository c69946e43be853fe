/*
 * test_outq.c - a connection's outbound queue over a bufpool: all-or-nothing appends
 * under the budget, multi-segment and many-part appends, outq_iov showing exactly the
 * appended bytes in order, partial and whole consumes with items credited exactly once
 * (never early, all eventually), clear returning every byte to the pool, an empty
 * queue holding no segment, and a randomized run against a reference byte FIFO.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rng.h"

#include "engine/outq.h"

#define BIG_BUDGET (UINT64_C(1) << 40)
#define SEG_HDR (sizeof(struct outq_seg))
#define SEG_CAP ((size_t)OUTQ_SEGMENT_BYTES - SEG_HDR) /* data in a default segment */
#define IOV_ALL 4096
#define FUZZ_SEED 0x0a7c0ffee1234567ull
#define FUZZ_ROUNDS 6000
#define FUZZ_BUDGET (UINT64_C(1024) * 1024)
#define ITEMS_MAX 100000

/* Deterministic content: byte i of the whole stream is a function of i. */
static uint8_t stream_byte(uint64_t i)
{
	return (uint8_t)((i * 2654435761u) >> 13);
}

static void fill_stream(uint8_t *dst, uint64_t from, size_t n)
{
	for (size_t i = 0; i < n; i++)
		dst[i] = stream_byte(from + i);
}

static size_t seg_count(const struct outq *q)
{
	size_t n = 0;
	for (const struct outq_seg *s = q->first; s != NULL; s = s->next)
		n++;
	return n;
}

/* Structure the rest of the file relies on: the list is well formed, every segment
 * holds unsent bytes, q->bytes is their sum, the pool's bytes in use are exactly the
 * segments' allocations, and an empty queue has no segment. */
static void check_queue(const struct outq *q, const struct bufpool *pool, uint64_t pool_other_in_use)
{
	uint64_t bytes = 0, alloc = 0;
	const struct outq_seg *last = NULL;
	for (const struct outq_seg *s = q->first; s != NULL; s = s->next) {
		assert_true(s->head < s->tail);
		assert_true(s->tail <= s->cap);
		assert_true(s->cap + SEG_HDR <= s->alloc_bytes);
		bytes += s->tail - s->head;
		alloc += s->alloc_bytes;
		last = s;
	}
	assert_ptr_equal(q->last, last);
	assert_int_equal(q->bytes, bytes);
	assert_int_equal(outq_empty(q), bytes == 0);
	if (bytes == 0) {
		assert_null(q->first);
		assert_null(q->last);
	}
	assert_int_equal(pool->bytes_in_use, alloc + pool_other_in_use);
}

/* Everything outq_iov reports, concatenated; returns the length. */
static size_t gather(const struct outq *q, uint8_t *out, size_t out_max)
{
	static struct iovec iov[IOV_ALL];
	size_t n = outq_iov(q, iov, IOV_ALL);
	assert_true(n < IOV_ALL);
	size_t len = 0;
	for (size_t i = 0; i < n; i++) {
		assert_non_null(iov[i].iov_base);
		assert_true(iov[i].iov_len > 0);
		assert_true(len + iov[i].iov_len <= out_max);
		memcpy(out + len, iov[i].iov_base, iov[i].iov_len);
		len += iov[i].iov_len;
	}
	return len;
}

static void check_content(const struct outq *q, const uint8_t *expect, size_t len)
{
	uint8_t *got = malloc(len + 1);
	assert_non_null(got);
	size_t n = gather(q, got, len + 1);
	assert_int_equal(n, len);
	assert_memory_equal(got, expect, len);
	free(got);
}

static bool append1(struct outq *q, struct bufpool *pool, const void *p, size_t n)
{
	struct iovec part = { .iov_base = (void *)p, .iov_len = n };
	return outq_append(q, pool, &part, 1);
}

static void test_empty_queue_holds_nothing(void **state)
{
	(void)state;
	struct bufpool pool;
	bufpool_init(&pool, BIG_BUDGET);
	struct outq q = { 0 };
	assert_true(outq_empty(&q));
	struct iovec iov[OUTQ_IOV_MAX];
	assert_int_equal(outq_iov(&q, iov, OUTQ_IOV_MAX), 0);

	/* empty appends succeed and allocate nothing */
	assert_true(outq_append(&q, &pool, NULL, 0));
	struct iovec empty[3] = { { NULL, 0 }, { (void *)"x", 0 }, { NULL, 0 } };
	assert_true(outq_append(&q, &pool, empty, 3));
	assert_true(outq_empty(&q));
	assert_null(q.first);
	assert_int_equal(pool.bytes_held, 0);
	check_queue(&q, &pool, 0);

	/* fill, drain: back to no segment and nothing in use */
	assert_true(append1(&q, &pool, "hello", 5));
	assert_false(outq_empty(&q));
	assert_int_equal(seg_count(&q), 1);
	assert_int_equal(pool.bytes_in_use, OUTQ_SEGMENT_FIRST_BYTES); /* a quiet queue holds 1 KiB */
	assert_int_equal(outq_consume(&q, &pool, 5), 0);
	assert_true(outq_empty(&q));
	check_queue(&q, &pool, 0);
	assert_int_equal(pool.bytes_in_use, 0);
	/* a zero-byte consume of an empty queue is harmless */
	assert_int_equal(outq_consume(&q, &pool, 0), 0);
	check_queue(&q, &pool, 0);
	outq_clear(&q, &pool);
	check_queue(&q, &pool, 0);
	bufpool_destroy(&pool);
	assert_int_equal(pool.bytes_held, 0);
}

static void test_parts_concatenate(void **state)
{
	(void)state;
	struct bufpool pool;
	bufpool_init(&pool, BIG_BUDGET);
	struct outq q = { 0 };
	struct iovec parts[] = {
		{ (void *)"hello", 5 },
		{ NULL, 0 },
		{ (void *)", ", 2 },
		{ (void *)"world", 5 },
	};
	assert_true(outq_append(&q, &pool, parts, ARRAY_LEN(parts)));
	assert_true(append1(&q, &pool, "!", 1));
	assert_int_equal(q.bytes, 13);
	struct iovec iov[OUTQ_IOV_MAX];
	assert_int_equal(outq_iov(&q, iov, OUTQ_IOV_MAX), 1);
	assert_int_equal(iov[0].iov_len, 13);
	assert_memory_equal(iov[0].iov_base, "hello, world!", 13);
	check_queue(&q, &pool, 0);

	/* partial consume: the iov starts at the first unsent byte */
	assert_int_equal(outq_consume(&q, &pool, 7), 0);
	assert_int_equal(outq_iov(&q, iov, OUTQ_IOV_MAX), 1);
	assert_int_equal(iov[0].iov_len, 6);
	assert_memory_equal(iov[0].iov_base, "world!", 6);
	/* appending after a partial consume continues the same stream */
	assert_true(append1(&q, &pool, "?", 1));
	check_content(&q, (const uint8_t *)"world!?", 7);
	/* max limits the iov count */
	assert_int_equal(outq_iov(&q, iov, 0), 0);
	outq_clear(&q, &pool);
	check_queue(&q, &pool, 0);
	bufpool_destroy(&pool);
}

static void test_multi_segment_appends(void **state)
{
	(void)state;
	struct bufpool pool;
	bufpool_init(&pool, BIG_BUDGET);
	struct outq q = { 0 };
	const size_t total = 3 * 1024 * 1024 + 12345; /* > several max-class segments */
	uint8_t *src = malloc(total);
	assert_non_null(src);
	fill_stream(src, 0, total);

	/* one part much larger than a segment, and larger than the largest class */
	assert_true(append1(&q, &pool, src, total));
	assert_int_equal(q.bytes, total);
	assert_true(seg_count(&q) >= total / (BUFPOOL_CLASS_MAX_BYTES - SEG_HDR));
	check_queue(&q, &pool, 0);
	check_content(&q, src, total);

	/* outq_iov returns the oldest segments first, limited to max */
	struct iovec iov[OUTQ_IOV_MAX];
	size_t n = outq_iov(&q, iov, 2);
	assert_int_equal(n, 2);
	assert_ptr_equal(iov[0].iov_base, q.first->data + q.first->head);
	assert_memory_equal(iov[0].iov_base, src, iov[0].iov_len);
	assert_memory_equal(iov[1].iov_base, src + iov[0].iov_len, iov[1].iov_len);
	outq_clear(&q, &pool);
	check_queue(&q, &pool, 0);

	/* many parts in one append, behind a partly filled segment and crossing several
	 * segment boundaries */
	enum { NPARTS = 4000 };
	static struct iovec parts[NPARTS];
	assert_true(append1(&q, &pool, src, 100));
	size_t off = 100;
	for (size_t i = 0; i < NPARTS; i++) {
		size_t len = (i * 37) % 997; /* includes empty parts */
		parts[i] = (struct iovec){ src + off, len };
		off += len;
	}
	assert_true(off <= total);
	assert_true(off > 3 * (size_t)BUFPOOL_CLASS_MAX_BYTES);
	assert_true(outq_append(&q, &pool, parts, NPARTS));
	assert_int_equal(q.bytes, off);
	assert_true(seg_count(&q) >= 5);
	check_queue(&q, &pool, 0);
	check_content(&q, src, off);

	/* appends that exactly fill the last segment, then spill by one byte */
	outq_clear(&q, &pool);
	assert_true(append1(&q, &pool, src, 100));
	const size_t first_cap = OUTQ_SEGMENT_FIRST_BYTES - SEG_HDR;
	assert_int_equal(q.first->cap, first_cap);
	assert_true(append1(&q, &pool, src + 100, first_cap - 100));
	assert_int_equal(seg_count(&q), 1);
	assert_int_equal(q.last->tail, q.last->cap);
	assert_true(append1(&q, &pool, src + first_cap, 1));
	assert_int_equal(seg_count(&q), 2);
	assert_int_equal(q.last->alloc_bytes, 2 * OUTQ_SEGMENT_FIRST_BYTES); /* doubles */
	check_queue(&q, &pool, 0);
	check_content(&q, src, first_cap + 1);

	/* a part that fills the rest of the last segment and continues into new ones */
	struct iovec two[2] = { { src + first_cap + 1, 10 }, { src + first_cap + 11, 2 * SEG_CAP } };
	assert_true(outq_append(&q, &pool, two, 2));
	check_queue(&q, &pool, 0);
	check_content(&q, src, first_cap + 11 + 2 * SEG_CAP);

	outq_clear(&q, &pool);
	check_queue(&q, &pool, 0);
	assert_int_equal(pool.bytes_in_use, 0);
	free(src);
	bufpool_destroy(&pool);
	assert_int_equal(pool.bytes_held, 0);
}

/* Small appends: segments double from OUTQ_SEGMENT_FIRST_BYTES to OUTQ_SEGMENT_BYTES and
 * stay there; a large append gets one segment of its own size. */
static void test_segment_growth(void **state)
{
	(void)state;
	struct bufpool pool;
	bufpool_init(&pool, 64u * 1024 * 1024);
	struct outq q = { 0 };
	uint8_t *src = malloc(1024 * 1024);
	assert_non_null(src);
	fill_stream(src, 0, 1024 * 1024);
	size_t off = 0;
	while (seg_count(&q) < 8) {
		assert_true(append1(&q, &pool, src + off, 64));
		off += 64;
	}
	uint32_t want = OUTQ_SEGMENT_FIRST_BYTES;
	size_t i = 0;
	for (const struct outq_seg *sg = q.first; sg != NULL; sg = sg->next, i++) {
		assert_int_equal(sg->alloc_bytes, want);
		want = want * 2 > OUTQ_SEGMENT_BYTES ? OUTQ_SEGMENT_BYTES : want * 2;
	}
	assert_int_equal(i, 8);
	/* 100 KiB in one append: one segment that fits it, not many small ones */
	size_t segs = seg_count(&q);
	size_t big = (q.last->cap - q.last->tail) + 100 * 1024;
	assert_true(append1(&q, &pool, src + off, big));
	off += big;
	assert_true(q.last->alloc_bytes >= 100 * 1024);
	assert_true(seg_count(&q) <= segs + 1);
	check_queue(&q, &pool, 0);
	check_content(&q, src, off);
	outq_clear(&q, &pool);
	free(src);
	bufpool_destroy(&pool);
}

/* A refused append leaves the queue exactly as it was (same segments, same bytes)
 * and hands back everything it had reserved. */
static void test_append_all_or_nothing(void **state)
{
	(void)state;
	struct bufpool pool;
	bufpool_init(&pool, 32 * 1024);
	struct outq q = { 0 };
	uint8_t *src = malloc(4 * 1024 * 1024);
	assert_non_null(src);
	fill_stream(src, 0, 4 * 1024 * 1024);

	assert_true(append1(&q, &pool, src, 10000));
	check_queue(&q, &pool, 0);
	struct outq_seg *first = q.first;
	uint32_t tail = first->tail;

	/* needs a 32 KiB segment next to the 16 KiB one: over the 32 KiB budget */
	assert_false(append1(&q, &pool, src + 10000, 30000));
	assert_int_equal(pool.alloc_failures, 1);
	assert_ptr_equal(q.first, first);
	assert_ptr_equal(q.last, first);
	assert_null(first->next);
	assert_int_equal(first->tail, tail);
	assert_int_equal(q.bytes, 10000);
	check_queue(&q, &pool, 0);
	check_content(&q, src, 10000);

	/* what still fits in the segment's room goes in, no new memory */
	assert_true(append1(&q, &pool, src + 10000, SEG_CAP - 10000));
	assert_int_equal(seg_count(&q), 1);
	check_content(&q, src, SEG_CAP);
	/* one more 16 KiB segment fits the budget exactly */
	assert_true(append1(&q, &pool, src + SEG_CAP, SEG_CAP));
	assert_int_equal(pool.bytes_in_use, 32 * 1024);
	/* and then not a byte more */
	assert_false(append1(&q, &pool, src + 2 * SEG_CAP, 1));
	assert_int_equal(pool.alloc_failures, 2);
	check_queue(&q, &pool, 0);
	check_content(&q, src, 2 * SEG_CAP);
	outq_clear(&q, &pool);
	check_queue(&q, &pool, 0);
	bufpool_destroy(&pool);

	/* a multi-segment append refused part-way: the segments already reserved go back */
	bufpool_init(&pool, 1024 * 1024);
	assert_true(append1(&q, &pool, src, 5));
	assert_false(append1(&q, &pool, src + 5, 1200 * 1024));
	assert_int_equal(pool.alloc_failures, 1);
	assert_int_equal(seg_count(&q), 1);
	assert_int_equal(q.bytes, 5);
	check_queue(&q, &pool, 0);
	check_content(&q, src, 5);
	/* the same with parts: nothing of the first parts stays */
	struct iovec parts[3] = { { src + 5, 1000 }, { src + 1005, 600 * 1024 }, { src, 600 * 1024 } };
	assert_false(outq_append(&q, &pool, parts, 3));
	assert_int_equal(q.bytes, 5);
	assert_int_equal(q.first->tail, 5);
	check_queue(&q, &pool, 0);
	check_content(&q, src, 5);
	/* and a later append that fits still works (16 KiB + 512 KiB + 128 KiB) */
	assert_true(append1(&q, &pool, src + 5, 600 * 1024));
	check_queue(&q, &pool, 0);
	check_content(&q, src, 5 + 600 * 1024);
	outq_clear(&q, &pool);
	check_queue(&q, &pool, 0);
	assert_int_equal(pool.bytes_in_use, 0);
	bufpool_destroy(&pool);
	free(src);
}

/* Item end offsets (exclusive) and the credit rule: an item may be credited only
 * once its last byte is written, and must be once the segment holding it is done. */
static void test_items_counted_exactly_once(void **state)
{
	(void)state;
	struct bufpool pool;
	bufpool_init(&pool, BIG_BUDGET);
	struct outq q = { 0 };
	uint8_t *src = malloc(200000);
	assert_non_null(src);
	fill_stream(src, 0, 200000);

	/* A: 100 B, B: 200 B, C: 20000 B (spans two segments), D: 1 B */
	assert_true(append1(&q, &pool, src, 100));
	outq_mark_item(&q);
	assert_true(append1(&q, &pool, src + 100, 200));
	outq_mark_item(&q);
	assert_true(append1(&q, &pool, src + 300, 20000));
	outq_mark_item(&q);
	assert_true(append1(&q, &pool, src + 20300, 1));
	outq_mark_item(&q);
	assert_int_equal(seg_count(&q), 2);
	check_queue(&q, &pool, 0);

	uint32_t credited = 0;
	/* half of A: nothing */
	credited += outq_consume(&q, &pool, 50);
	assert_int_equal(credited, 0);
	/* through B: at most A and B (they are done, their segment is not) */
	credited += outq_consume(&q, &pool, 250);
	assert_true(credited <= 2);
	/* to the end of the first segment: A and B are due now, C is not finished */
	struct iovec iov[OUTQ_IOV_MAX];
	assert_int_equal(outq_iov(&q, iov, OUTQ_IOV_MAX), 2);
	credited += outq_consume(&q, &pool, iov[0].iov_len);
	assert_int_equal(credited, 2);
	assert_int_equal(seg_count(&q), 1);
	check_queue(&q, &pool, 0);
	/* all but the last byte: C is done (at most C more), D is not */
	credited += outq_consume(&q, &pool, (size_t)q.bytes - 1);
	assert_true(credited <= 3);
	credited += outq_consume(&q, &pool, 1);
	assert_int_equal(credited, 4);
	assert_true(outq_empty(&q));
	check_queue(&q, &pool, 0);

	/* several items in one segment, consumed in one go */
	for (int i = 0; i < 10; i++) {
		assert_true(append1(&q, &pool, src, 10));
		outq_mark_item(&q);
	}
	assert_int_equal(outq_consume(&q, &pool, 100), 10);

	/* an item larger than everything: credited exactly when its last byte is out */
	assert_true(append1(&q, &pool, src, 150000));
	outq_mark_item(&q);
	credited = 0;
	while (q.bytes > 0) {
		size_t step = MIN((size_t)q.bytes, (size_t)7001);
		bool last = step == q.bytes;
		uint32_t got = outq_consume(&q, &pool, step);
		assert_int_equal(got, last ? 1 : 0);
		credited += got;
	}
	assert_int_equal(credited, 1);

	/* marks without bytes in between count separately, on the same last byte */
	assert_true(append1(&q, &pool, src, 3));
	outq_mark_item(&q);
	outq_mark_item(&q);
	assert_int_equal(outq_consume(&q, &pool, 3), 2);
	check_queue(&q, &pool, 0);
	assert_int_equal(pool.bytes_in_use, 0);
	free(src);
	bufpool_destroy(&pool);
}

static void test_clear_returns_memory(void **state)
{
	(void)state;
	struct bufpool pool;
	bufpool_init(&pool, BIG_BUDGET);
	struct outq q = { 0 };
	uint8_t *src = malloc(2 * 1024 * 1024);
	assert_non_null(src);
	fill_stream(src, 0, 2 * 1024 * 1024);
	for (int i = 0; i < 50; i++) {
		assert_true(append1(&q, &pool, src, (size_t)(i * 997 + 1)));
		outq_mark_item(&q);
	}
	assert_true(append1(&q, &pool, src, 2 * 1024 * 1024));
	assert_true(seg_count(&q) > 4);
	(void)outq_consume(&q, &pool, 30000);
	check_queue(&q, &pool, 0);
	assert_true(pool.bytes_in_use > 0);
	outq_clear(&q, &pool);
	assert_true(outq_empty(&q));
	assert_null(q.first);
	assert_null(q.last);
	assert_int_equal(q.bytes, 0);
	assert_int_equal(pool.bytes_in_use, 0);
	check_queue(&q, &pool, 0);
	/* the queue is usable again after a clear */
	assert_true(append1(&q, &pool, "abc", 3));
	check_content(&q, (const uint8_t *)"abc", 3);
	outq_clear(&q, &pool);
	assert_int_equal(pool.bytes_in_use, 0);
	bufpool_destroy(&pool);
	assert_int_equal(pool.bytes_held, 0);
	free(src);
}

/* ---- randomized run against a reference byte FIFO ---- */

struct ref {
	uint8_t *buf;  /* queued bytes are buf[off, off + len) */
	size_t off, len, cap;
	uint64_t base; /* stream offset of the first unsent byte */
	uint64_t end;  /* stream offset after the last appended byte */
	uint64_t items[ITEMS_MAX]; /* end offsets of marked items, in order */
	size_t nitems, items_done; /* items_done: credited so far */
};

static const uint8_t *ref_data(const struct ref *r)
{
	static const uint8_t none[1];
	return r->buf != NULL ? r->buf + r->off : none;
}

static void ref_push(struct ref *r, const uint8_t *p, size_t n)
{
	if (r->off > 0 && r->off + r->len + n > r->cap) {
		memmove(r->buf, r->buf + r->off, r->len);
		r->off = 0;
	}
	if (r->len + n > r->cap) {
		r->cap = (r->len + n) * 2;
		r->buf = realloc(r->buf, r->cap);
		assert_non_null(r->buf);
	}
	if (n > 0)
		memcpy(r->buf + r->off + r->len, p, n);
	r->len += n;
	r->end += n;
}

static void ref_pop(struct ref *r, size_t n)
{
	assert_true(n <= r->len);
	r->off += n;
	r->len -= n;
	r->base += n;
}

/* items whose last byte is written */
static size_t ref_items_written(const struct ref *r)
{
	size_t k = 0;
	while (k < r->nitems && r->items[k] <= r->base)
		k++;
	return k;
}

/* Writing in place: the last segment's free end when it is long enough, else a new
 * segment linked only on commit; abort leaves the queue and the pool as they were;
 * too large for any segment, or refused by the pool, is refused with nothing changed. */
static void test_reserve_commit_abort(void **state)
{
	(void)state;
	struct bufpool pool;
	bufpool_init(&pool, BIG_BUDGET);
	struct outq q = { 0 };
	struct outq_resv r;

	/* empty queue: a fresh segment, invisible until committed */
	assert_true(outq_reserve(&q, &pool, 100, &r));
	assert_true(r.fresh);
	assert_null(q.first);
	memcpy(r.ptr, "hello", 5);
	outq_commit(&q, &r, 5);
	check_queue(&q, &pool, 0);
	check_content(&q, (const uint8_t *)"hello", 5);

	/* room left in the last segment: written there */
	assert_true(outq_reserve(&q, &pool, 10, &r));
	assert_false(r.fresh);
	assert_ptr_equal(r.ptr, q.last->data + 5);
	memcpy(r.ptr, " world!!!!", 10);
	outq_commit(&q, &r, 6);
	check_queue(&q, &pool, 0);
	check_content(&q, (const uint8_t *)"hello world", 11);
	outq_mark_item(&q);

	/* an abort in place changes nothing */
	uint64_t in_use = pool.bytes_in_use;
	assert_true(outq_reserve(&q, &pool, 20, &r));
	memset(r.ptr, 'x', 20);
	outq_abort(&pool, &r);
	check_queue(&q, &pool, 0);
	check_content(&q, (const uint8_t *)"hello world", 11);

	/* longer than the last segment's free end: a new segment; aborted, it goes back */
	size_t big = q.last->cap - q.last->tail + 1;
	assert_true(outq_reserve(&q, &pool, big, &r));
	assert_true(r.fresh);
	assert_true(pool.bytes_in_use > in_use);
	outq_abort(&pool, &r);
	assert_int_equal(pool.bytes_in_use, in_use);
	check_queue(&q, &pool, 0);

	/* committed, it follows the first segment */
	assert_true(outq_reserve(&q, &pool, big, &r));
	memset(r.ptr, 'y', big);
	outq_commit(&q, &r, big);
	check_queue(&q, &pool, 0);
	assert_int_equal(seg_count(&q), 2);
	assert_int_equal(q.bytes, 11 + big);
	/* the item marked before is credited with the first segment */
	assert_int_equal(outq_consume(&q, &pool, 11), 1);
	check_queue(&q, &pool, 0);

	/* larger than the pool's largest buffer: refused, nothing changed */
	assert_false(outq_reserve(&q, &pool, BUFPOOL_CLASS_MAX_BYTES, &r));
	check_queue(&q, &pool, 0);
	outq_clear(&q, &pool);
	bufpool_destroy(&pool);

	/* the pool refuses: refused, nothing changed */
	bufpool_init(&pool, 4096);
	assert_false(outq_reserve(&q, &pool, 8000, &r));
	assert_int_equal(pool.bytes_in_use, 0);
	assert_true(outq_empty(&q));
	bufpool_destroy(&pool);
}

static void test_randomized_against_fifo(void **state)
{
	(void)state;
	rng_state = FUZZ_SEED;
	struct bufpool pool;
	bufpool_init(&pool, FUZZ_BUDGET);
	struct outq q = { 0 };
	struct ref *r = calloc(1, sizeof *r);
	assert_non_null(r);
	uint8_t *scratch = malloc(FUZZ_BUDGET + 1);
	assert_non_null(scratch);
	unsigned refused = 0, boundary_checks = 0, appends = 0, full_checks = 0, multi_seg = 0;
	unsigned reserves = 0, fresh_reserves = 0, reserve_refused = 0;

	for (unsigned round = 0; round < FUZZ_ROUNDS; round++) {
		unsigned op = (unsigned)rng_below(100);
		if (op < 50) {
			/* append 0..8 parts of assorted sizes, one stream-continuous payload */
			struct iovec parts[8];
			size_t nparts = (size_t)rng_below(9), total = 0;
			size_t lens[8];
			for (size_t i = 0; i < nparts; i++) {
				switch (rng_below(6)) {
				case 0:
					lens[i] = 0;
					break;
				case 1:
				case 2:
					lens[i] = (size_t)rng_below(200);
					break;
				case 3:
					lens[i] = (size_t)rng_below(2 * SEG_CAP);
					break;
				case 4:
					lens[i] = SEG_CAP - (size_t)rng_below(3);
					break;
				default:
					lens[i] = (size_t)rng_below(64 * 1024);
					break;
				}
				if (rng_below(50) == 0)
					lens[i] = 300 * 1024 + (size_t)rng_below(400 * 1024);
				total += lens[i];
			}
			uint8_t *payload = malloc(total + 1);
			assert_non_null(payload);
			fill_stream(payload, r->end, total);
			size_t off = 0;
			for (size_t i = 0; i < nparts; i++) {
				parts[i] = (struct iovec){ payload + off, lens[i] };
				off += lens[i];
			}
			uint64_t bytes_before = q.bytes;
			struct outq_seg *first_before = q.first, *last_before = q.last;
			uint32_t last_tail_before = q.last ? q.last->tail : 0;
			size_t segs_before = seg_count(&q);
			uint64_t failures_before = pool.alloc_failures;
			bool ok = outq_append(&q, &pool, parts, nparts);
			if (ok) {
				ref_push(r, payload, total);
				appends++;
				assert_int_equal(pool.alloc_failures, failures_before);
				if (total > 0 && rng_below(3) != 0) {
					outq_mark_item(&q);
					assert_true(r->nitems < ITEMS_MAX);
					r->items[r->nitems++] = r->end;
				}
			} else {
				/* only the budget can refuse, and then nothing changed */
				assert_true(total > 0);
				assert_int_equal(pool.alloc_failures, failures_before + 1);
				assert_int_equal(q.bytes, bytes_before);
				assert_ptr_equal(q.first, first_before);
				assert_ptr_equal(q.last, last_before);
				if (q.last)
					assert_int_equal(q.last->tail, last_tail_before);
				assert_int_equal(seg_count(&q), segs_before);
				refused++;
			}
			free(payload);
		} else if (op < 85 && r->len > 0) {
			/* consume: partial segment, exactly the first segment, or everything */
			size_t n;
			bool at_boundary = false;
			struct iovec iov[OUTQ_IOV_MAX];
			size_t niov = outq_iov(&q, iov, OUTQ_IOV_MAX);
			assert_true(niov > 0 && niov <= OUTQ_IOV_MAX);
			unsigned kind = (unsigned)rng_below(10);
			if (kind < 3) {
				n = iov[0].iov_len;
				at_boundary = true;
			} else if (kind < 4) {
				n = r->len;
				at_boundary = true;
			} else if (kind < 7) {
				/* what one sendmsg over the iov could write */
				size_t sum = 0;
				for (size_t i = 0; i < niov; i++)
					sum += iov[i].iov_len;
				n = 1 + (size_t)rng_below(sum);
				at_boundary = n == sum;
			} else {
				n = 1 + (size_t)rng_below(MIN(r->len, (size_t)3000));
			}
			uint32_t got = outq_consume(&q, &pool, n);
			ref_pop(r, n);
			r->items_done += got;
			size_t written = ref_items_written(r);
			/* never early */
			if (r->items_done > written)
				fail_msg("round %u: %zu items credited, only %zu written", round, r->items_done,
				         written);
			/* the segment holding their last byte is done: credited now */
			if (at_boundary) {
				assert_int_equal(r->items_done, written);
				boundary_checks++;
			}
		} else if (op < 96) {
			/* write in place: reserve, fill, then commit a prefix or abort */
			size_t n = 1 + (size_t)(rng_below(4) == 0 ? rng_below(2 * SEG_CAP) : rng_below(5000));
			uint64_t bytes_before = q.bytes, in_use_before = pool.bytes_in_use;
			struct outq_seg *last_before = q.last;
			uint32_t last_tail_before = q.last ? q.last->tail : 0;
			size_t segs_before = seg_count(&q);
			struct outq_resv resv;
			if (outq_reserve(&q, &pool, n, &resv)) {
				reserves++;
				/* nothing visible until the commit */
				assert_int_equal(q.bytes, bytes_before);
				assert_int_equal(seg_count(&q), segs_before);
				if (resv.fresh)
					fresh_reserves++;
				else
					assert_ptr_equal(resv.ptr, q.last->data + q.last->tail);
				size_t m = rng_below(3) == 0 ? 1 + (size_t)rng_below(n) : n;
				fill_stream(resv.ptr, r->end, n);
				if (rng_below(4) == 0) {
					outq_abort(&pool, &resv);
					assert_int_equal(pool.bytes_in_use, in_use_before);
					assert_ptr_equal(q.last, last_before);
					if (q.last)
						assert_int_equal(q.last->tail, last_tail_before);
				} else {
					outq_commit(&q, &resv, m);
					ref_push(r, resv.ptr, m);
					if (rng_below(2) == 0) {
						outq_mark_item(&q);
						assert_true(r->nitems < ITEMS_MAX);
						r->items[r->nitems++] = r->end;
					}
				}
			} else {
				assert_int_equal(q.bytes, bytes_before);
				assert_int_equal(pool.bytes_in_use, in_use_before);
				reserve_refused++;
			}
		} else if (op < 98) {
			outq_clear(&q, &pool);
			ref_pop(r, r->len);
			/* a cleared queue's items are dropped, not credited */
			r->nitems = 0;
			r->items_done = 0;
		}
		/* compare against the reference after every operation */
		check_queue(&q, &pool, 0);
		assert_int_equal(q.bytes, r->len);
		if (seg_count(&q) >= 3)
			multi_seg++;
		assert_true(pool.bytes_held <= FUZZ_BUDGET);
		if (r->len > 0) {
			/* outq_iov with the send limit: a prefix of the reference (each entry's
			 * ends here; the whole content below, every few rounds) */
			struct iovec iov[OUTQ_IOV_MAX];
			size_t niov = outq_iov(&q, iov, OUTQ_IOV_MAX);
			size_t off = 0;
			for (size_t i = 0; i < niov; i++) {
				size_t len = iov[i].iov_len, edge = MIN(len, (size_t)256);
				const uint8_t *b = iov[i].iov_base;
				assert_true(off + len <= r->len);
				assert_memory_equal(b, ref_data(r) + off, edge);
				assert_memory_equal(b + len - edge, ref_data(r) + off + len - edge, edge);
				off += len;
			}
			if (niov < OUTQ_IOV_MAX)
				assert_int_equal(off, r->len);
		}
		if ((round & 31) == 0) {
			size_t n = gather(&q, scratch, FUZZ_BUDGET + 1);
			assert_int_equal(n, r->len);
			assert_memory_equal(scratch, ref_data(r), n);
			full_checks++;
		}
		/* compact the item list */
		if (r->items_done > 0 && r->items_done == r->nitems) {
			r->nitems = 0;
			r->items_done = 0;
		}
	}
	/* drain: every marked item is credited in the end */
	if (r->len > 0) {
		r->items_done += outq_consume(&q, &pool, r->len);
		ref_pop(r, r->len);
	}
	assert_int_equal(r->items_done, r->nitems);
	assert_true(outq_empty(&q));
	check_queue(&q, &pool, 0);
	assert_int_equal(pool.bytes_in_use, 0);

	/* the run exercised what it is meant to */
	assert_true(appends > 1000);
	assert_true(refused > 10);
	assert_true(boundary_checks > 500);
	assert_true(full_checks > 100);
	assert_true(multi_seg > 1000);
	assert_true(reserves > 200 && fresh_reserves > 20 && reserves - fresh_reserves > 20);
	assert_true(reserve_refused > 0);
	printf("outq fuzz: %u appends, %u refused for the budget, %u consumes checked at a segment boundary, %u rounds with 3+ segments, %u reserves (%u in a new segment, %u refused)\n",
	       appends, refused, boundary_checks, multi_seg, reserves, fresh_reserves, reserve_refused);

	bufpool_destroy(&pool);
	assert_int_equal(pool.bytes_held, 0);
	free(scratch);
	free(r->buf);
	free(r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_empty_queue_holds_nothing),
		cmocka_unit_test(test_parts_concatenate),
		cmocka_unit_test(test_multi_segment_appends),
		cmocka_unit_test(test_append_all_or_nothing),
		cmocka_unit_test(test_segment_growth),
		cmocka_unit_test(test_items_counted_exactly_once),
		cmocka_unit_test(test_clear_returns_memory),
		cmocka_unit_test(test_reserve_commit_abort),
		cmocka_unit_test(test_randomized_against_fifo),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
