/*
 * test_ws_reader.c - the incremental reader: every rule it enforces, each input fed
 * whole, byte at a time and in random pieces (fixed seeds) with the same events, the
 * NEED_SPACE growth protocol, and zero copy into the input.
 *
 * Frames are built here with a header writer and masking written independently of
 * ws_frame.c, so a bug there cannot hide a matching bug in the reader.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ws/utf8.h"
#include "ws/ws_reader.h"

#define MAX_EVENTS 512
#define RANDOM_SPLIT_SEEDS 24
#define SMALL_LIMIT 1000u
#define EXACT_GROW_STREAM_MAX (64u * 1024u)

/* ---- stream builder ---------------------------------------------------------------- */

struct sb {
	uint8_t *p;
	size_t len;
	size_t cap;
	uint32_t keyseq; /* varies the mask key per frame, including the all-zero key */
};

static void sb_reserve(struct sb *b, size_t more)
{
	if (b->len + more <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 64;
	while (cap < b->len + more)
		cap *= 2;
	b->p = realloc(b->p, cap);
	assert_non_null(b->p);
	b->cap = cap;
}

static void sb_raw(struct sb *b, const void *bytes, size_t n)
{
	sb_reserve(b, n);
	if (n)
		memcpy(b->p + b->len, bytes, n);
	b->len += n;
}

static void sb_free(struct sb *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* Header only (masked, with key k); returns where the payload will start. */
static size_t sb_header(struct sb *b, uint8_t b0, uint64_t len, const uint8_t k[4])
{
	uint8_t h[14];
	size_t n = 0;
	h[n++] = b0;
	if (len < 126) {
		h[n++] = (uint8_t)(0x80 | len);
	} else if (len < 65536) {
		h[n++] = 0x80 | 126;
		h[n++] = (uint8_t)(len >> 8);
		h[n++] = (uint8_t)len;
	} else {
		h[n++] = 0x80 | 127;
		for (int i = 7; i >= 0; i--)
			h[n++] = (uint8_t)(len >> (8 * i));
	}
	memcpy(h + n, k, 4);
	n += 4;
	sb_raw(b, h, n);
	return b->len;
}

static void next_key(struct sb *b, uint8_t k[4])
{
	uint32_t x = b->keyseq++ * 0x9E3779B1u;
	if (b->keyseq % 7 == 1)
		x = 0; /* a zero key is legal and leaves the payload as is */
	memcpy(k, &x, 4);
}

/* A masked frame with b0 = FIN/opcode byte exactly as given. */
static void sb_frame_b0(struct sb *b, uint8_t b0, const void *payload, size_t len)
{
	uint8_t k[4];
	next_key(b, k);
	size_t at = sb_header(b, b0, len, k);
	sb_raw(b, payload, len);
	for (size_t i = 0; i < len; i++)
		b->p[at + i] ^= k[i % 4];
}

static void sb_frame(struct sb *b, bool fin, uint8_t op, const void *payload, size_t len)
{
	sb_frame_b0(b, (uint8_t)((fin ? 0x80 : 0) | op), payload, len);
}

static void sb_str(struct sb *b, bool fin, uint8_t op, const char *s)
{
	sb_frame(b, fin, op, s, strlen(s));
}

static void sb_close(struct sb *b, uint16_t code, const void *reason, size_t rlen)
{
	uint8_t p[200];
	p[0] = (uint8_t)(code >> 8);
	p[1] = (uint8_t)code;
	memcpy(p + 2, reason, rlen);
	sb_frame(b, true, WS_OP_CLOSE, p, 2 + rlen);
}

/* ---- driver -------------------------------------------------------------------------- */

enum split { SPLIT_WHOLE, SPLIT_BYTES, SPLIT_RANDOM };
enum grow { GROW_EXACT, GROW_DOUBLE };

struct rec {
	enum ws_event_kind kind;
	uint8_t opcode;
	uint16_t code;
	size_t off; /* into run.arena */
	size_t len;
	bool in_input; /* data pointed into the input chunk */
	bool in_asm;   /* data pointed into asm_buf */
};

struct run {
	struct rec ev[MAX_EVENTS];
	size_t n;
	uint8_t *arena;
	size_t arena_len;
	size_t need_space;
	size_t parked; /* times the reader was dropped at rest and restarted */
	size_t payload_bytes; /* the events' payload_bytes and utf8_bytes, summed */
	size_t utf8_bytes;
	bool in_message_after[MAX_EVENTS];
};

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void grow_buffer(struct ws_reader *r, size_t need, enum grow g, uint32_t max)
{
	size_t cap = need;
	if (g == GROW_DOUBLE) {
		cap = r->asm_cap ? 2 * (size_t)r->asm_cap : 16;
		while (cap < need)
			cap *= 2;
		if (cap > max)
			cap = max;
	}
	/* always a fresh allocation, so a stale pointer inside the reader would show */
	uint8_t *p = malloc(cap ? cap : 1);
	assert_non_null(p);
	memset(p, 0xEE, cap);
	if (r->asm_len)
		memcpy(p, r->asm_buf, r->asm_len);
	free(r->asm_buf);
	r->asm_buf = p;
	r->asm_cap = (uint32_t)cap;
}

/*
 * Feed s[0..len) split as asked; each piece is copied into its own exact-size heap
 * buffer, so ASan sees any read or write past the piece the reader was given.
 */
static void run_stream(const uint8_t *s, size_t len, uint32_t max, enum split split,
		       uint64_t seed, enum grow g, struct run *out)
{
	struct ws_reader r;
	ws_reader_init(&r, max);
	memset(out, 0, sizeof(*out));
	out->arena = malloc(len + 1);
	assert_non_null(out->arena);
	uint64_t rng = seed * 0x2545F4914F6CDD1Dull + 1;
	size_t a = 0;
	bool dead = false;
	/* Byte-at-a-time and every third random split drop the reader whenever it is at
	 * rest; the events must not change (ws_reader_at_rest's promise). */
	bool park = split == SPLIT_BYTES || (split == SPLIT_RANDOM && seed % 3 == 0);

	do {
		size_t chunk = len - a;
		if (split == SPLIT_BYTES)
			chunk = MIN(chunk, 1);
		else if (split == SPLIT_RANDOM && chunk) {
			/* mostly tiny pieces, sometimes larger ones */
			size_t most = rng_next(&rng) % 3 ? 9 : 300;
			chunk = 1 + rng_next(&rng) % MIN(chunk, most);
		}
		uint8_t *buf = malloc(chunk ? chunk : 1);
		assert_non_null(buf);
		if (chunk)
			memcpy(buf, s + a, chunk);
		size_t off = 0;
		for (size_t guard = 0;; guard++) {
			if (guard > 4 * chunk + 64)
				fail_msg("no progress at stream offset %zu", a + off);
			size_t c = (size_t)-1;
			struct ws_event ev = ws_reader_next(&r, buf + off, chunk - off, &c);
			assert_true(c <= chunk - off);
			assert_true(ev.payload_bytes <= c);
			assert_true(ev.utf8_bytes <= ev.payload_bytes);
			out->payload_bytes += ev.payload_bytes;
			out->utf8_bytes += ev.utf8_bytes;
			off += c;
			if (dead) {
				assert_int_equal(ev.kind, WS_EV_NEED_MORE);
				assert_int_equal(off, chunk);
			}
			if (ev.kind == WS_EV_NEED_MORE) {
				assert_int_equal(off, chunk);
				if (park && ws_reader_at_rest(&r)) {
					/* what the worker does: drop the reader, start afresh */
					assert_false(ws_reader_buffer_in_use(&r));
					free(r.asm_buf);
					ws_reader_init(&r, max);
					out->parked++;
				}
				break;
			}
			if (ev.kind == WS_EV_NEED_SPACE) {
				assert_true(ev.need > r.asm_cap);
				assert_true(ev.need <= max);
				assert_true(ev.need > r.asm_len);
				out->need_space++;
				grow_buffer(&r, ev.need, g, max);
				continue;
			}
			assert_true(out->n < MAX_EVENTS);
			struct rec *e = &out->ev[out->n];
			e->kind = ev.kind;
			e->opcode = ev.opcode;
			e->code = ev.close_code;
			e->len = ev.data.len;
			e->off = out->arena_len;
			if (ev.data.len) {
				assert_non_null(ev.data.ptr);
				e->in_input = ev.data.ptr >= buf && ev.data.ptr + ev.data.len <= buf + chunk;
				e->in_asm = r.asm_buf && ev.data.ptr >= r.asm_buf &&
					    ev.data.ptr + ev.data.len <= r.asm_buf + r.asm_cap;
				assert_true(out->arena_len + ev.data.len <= len);
				memcpy(out->arena + out->arena_len, ev.data.ptr, ev.data.len);
				out->arena_len += ev.data.len;
			}
			out->in_message_after[out->n] = ws_reader_in_message(&r);
			out->n++;
			if (ev.kind == WS_EV_ERROR || ev.kind == WS_EV_CLOSE) {
				dead = true;
				assert_false(ws_reader_in_message(&r));
				assert_false(ws_reader_buffer_in_use(&r));
			}
			if (ev.kind == WS_EV_MESSAGE)
				assert_false(ws_reader_buffer_in_use(&r));
		}
		free(buf);
		a += chunk;
	} while (a < len);
	free(r.asm_buf);
}

struct exp {
	enum ws_event_kind kind;
	uint8_t opcode;  /* BEGIN, MESSAGE */
	uint16_t code;   /* CLOSE, ERROR */
	const char *data; /* MESSAGE, PING, PONG, CLOSE; NULL = empty */
	size_t len;
};

#define E_BEGIN(op) { WS_EV_MESSAGE_BEGIN, op, 0, NULL, 0 }
#define E_MSG(op, s, n) { WS_EV_MESSAGE, op, 0, s, n }
#define E_TEXT(s) { WS_EV_MESSAGE, WS_OP_TEXT, 0, s, sizeof(s) - 1 }
#define E_PING(s) { WS_EV_PING, 0, 0, s, sizeof(s) - 1 }
#define E_PONG(s) { WS_EV_PONG, 0, 0, s, sizeof(s) - 1 }
#define E_CLOSE(c, s) { WS_EV_CLOSE, 0, c, s, sizeof(s) - 1 }
#define E_ERR(c) { WS_EV_ERROR, 0, c, NULL, 0 }

static const char *mode_name(enum split s)
{
	return s == SPLIT_WHOLE ? "whole" : s == SPLIT_BYTES ? "bytes" : "random";
}

static void compare(const struct run *run, const struct exp *exp, size_t n_exp,
		    enum split split, uint64_t seed)
{
	const char *m = mode_name(split);
	if (run->n != n_exp) {
		for (size_t i = 0; i < run->n; i++)
			print_message("  got event %zu: kind %d code %u len %zu\n", i,
				      run->ev[i].kind, run->ev[i].code, run->ev[i].len);
		fail_msg("%s seed %u: %zu events, expected %zu", m, (unsigned)seed, run->n, n_exp);
	}
	for (size_t i = 0; i < n_exp; i++) {
		const struct rec *e = &run->ev[i];
		const struct exp *x = &exp[i];
		if (e->kind != x->kind)
			fail_msg("%s seed %u event %zu: kind %d, expected %d", m, (unsigned)seed, i,
				 e->kind, x->kind);
		if ((x->kind == WS_EV_MESSAGE || x->kind == WS_EV_MESSAGE_BEGIN) &&
		    e->opcode != x->opcode)
			fail_msg("%s event %zu: opcode %u, expected %u", m, i, e->opcode, x->opcode);
		if ((x->kind == WS_EV_CLOSE || x->kind == WS_EV_ERROR) && e->code != x->code)
			fail_msg("%s seed %u event %zu: code %u, expected %u", m, (unsigned)seed, i,
				 e->code, x->code);
		if (e->len != x->len)
			fail_msg("%s event %zu: len %zu, expected %zu", m, i, e->len, x->len);
		if (x->len && memcmp(run->arena + e->off, x->data, x->len) != 0)
			fail_msg("%s seed %u event %zu: payload differs", m, (unsigned)seed, i);
	}
	/* The pass counters (/metrics): when every message began was delivered and nothing
	 * failed, the one pass saw exactly the messages' bytes, however the stream was cut;
	 * the UTF-8 validator saw only text, and none of it when all text was ASCII. */
	size_t begun = 0, done = 0, msg_bytes = 0, text_bytes = 0;
	bool failed = false, non_ascii = false;
	for (size_t i = 0; i < run->n; i++) {
		const struct rec *e = &run->ev[i];
		begun += e->kind == WS_EV_MESSAGE_BEGIN;
		failed |= e->kind == WS_EV_ERROR;
		if (e->kind != WS_EV_MESSAGE)
			continue;
		done++;
		msg_bytes += e->len;
		if (e->opcode != WS_OP_TEXT)
			continue;
		text_bytes += e->len;
		for (size_t j = 0; j < e->len; j++)
			non_ascii |= run->arena[e->off + j] >= 0x80;
	}
	if (!failed && begun == done) {
		if (run->payload_bytes != msg_bytes)
			fail_msg("%s seed %u: %zu payload bytes counted, %zu delivered", m, (unsigned)seed,
				 run->payload_bytes, msg_bytes);
		assert_true(run->utf8_bytes <= text_bytes);
		if (!non_ascii)
			assert_int_equal(run->utf8_bytes, 0);
	}
}

/* The same events however the stream is cut and however the caller grows asm_buf. */
static void expect_stream(const struct sb *b, uint32_t max, const struct exp *exp, size_t n_exp)
{
	struct run *run = malloc(sizeof(*run));
	assert_non_null(run);

	run_stream(b->p, b->len, max, SPLIT_WHOLE, 0, GROW_EXACT, run);
	compare(run, exp, n_exp, SPLIT_WHOLE, 0);
	free(run->arena);

	run_stream(b->p, b->len, max, SPLIT_BYTES, 0, GROW_DOUBLE, run);
	compare(run, exp, n_exp, SPLIT_BYTES, 0);
	free(run->arena);

	for (uint64_t seed = 1; seed <= RANDOM_SPLIT_SEEDS; seed++) {
		/* exact growth is quadratic: only where the stream is small */
		enum grow g = (seed % 2 && b->len <= EXACT_GROW_STREAM_MAX) ? GROW_EXACT : GROW_DOUBLE;
		run_stream(b->p, b->len, max, SPLIT_RANDOM, seed, g, run);
		compare(run, exp, n_exp, SPLIT_RANDOM, seed);
		free(run->arena);
	}
	free(run);
}

#define EXPECT(b, max, ...)                                                        \
	do {                                                                       \
		const struct exp exp_[] = { __VA_ARGS__ };                          \
		expect_stream(b, max, exp_, sizeof(exp_) / sizeof(exp_[0]));        \
	} while (0)

/* ---- tests --------------------------------------------------------------------------- */

static void test_single_text(void **state)
{
	(void)state;
	struct sb b = { 0 };
	sb_str(&b, true, WS_OP_TEXT, "hello");
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT), E_TEXT("hello"));
	sb_free(&b);
}

static void test_zero_copy_single_frame(void **state)
{
	(void)state;
	struct sb b = { 0 };
	sb_str(&b, true, WS_OP_TEXT, "zero copy, please");
	sb_frame(&b, true, WS_OP_BINARY, "\x00\x01\x02", 3);
	struct ws_reader r;
	ws_reader_init(&r, SMALL_LIMIT);
	size_t c, off = 0;

	struct ws_event ev = ws_reader_next(&r, b.p, b.len, &c);
	assert_int_equal(ev.kind, WS_EV_MESSAGE_BEGIN);
	assert_int_equal(ev.opcode, WS_OP_TEXT);
	assert_int_equal(c, 6);
	assert_true(ws_reader_in_message(&r));
	off += c;
	ev = ws_reader_next(&r, b.p + off, b.len - off, &c);
	assert_int_equal(ev.kind, WS_EV_MESSAGE);
	assert_int_equal(ev.opcode, WS_OP_TEXT);
	/* the span is the input itself, unmasked in place */
	assert_ptr_equal(ev.data.ptr, b.p + 6);
	assert_int_equal(ev.data.len, 17);
	assert_memory_equal(b.p + 6, "zero copy, please", 17);
	assert_int_equal(c, 17);
	assert_int_equal(ev.payload_bytes, 17); /* one pass, ASCII: no UTF-8 walk */
	assert_int_equal(ev.utf8_bytes, 0);
	assert_false(ws_reader_in_message(&r));
	assert_false(ws_reader_buffer_in_use(&r));
	off += c;

	ev = ws_reader_next(&r, b.p + off, b.len - off, &c);
	assert_int_equal(ev.kind, WS_EV_MESSAGE_BEGIN);
	assert_int_equal(ev.opcode, WS_OP_BINARY);
	off += c;
	ev = ws_reader_next(&r, b.p + off, b.len - off, &c);
	assert_int_equal(ev.kind, WS_EV_MESSAGE);
	assert_ptr_equal(ev.data.ptr, b.p + off);
	assert_memory_equal(ev.data.ptr, "\x00\x01\x02", 3);
	off += c;
	assert_int_equal(off, b.len);
	ev = ws_reader_next(&r, b.p + off, 0, &c);
	assert_int_equal(ev.kind, WS_EV_NEED_MORE);
	assert_int_equal(c, 0);
	assert_null(r.asm_buf); /* never needed */

	/* the generic driver sees the in-input flag too, when fed whole */
	sb_free(&b);
	sb_str(&b, true, WS_OP_TEXT, "abc");
	struct run *run = malloc(sizeof(*run));
	assert_non_null(run);
	run_stream(b.p, b.len, SMALL_LIMIT, SPLIT_WHOLE, 0, GROW_EXACT, run);
	assert_int_equal(run->n, 2);
	assert_true(run->ev[1].in_input);
	assert_int_equal(run->need_space, 0);
	free(run->arena);
	/* split inside the payload: assembled in asm_buf instead */
	run_stream(b.p, b.len, SMALL_LIMIT, SPLIT_BYTES, 0, GROW_EXACT, run);
	assert_int_equal(run->n, 2);
	assert_true(run->ev[1].in_asm);
	assert_false(run->ev[1].in_input);
	assert_true(run->need_space >= 1);
	free(run->arena);
	free(run);
	sb_free(&b);
}

static void test_empty_messages(void **state)
{
	(void)state;
	struct sb b = { 0 };
	sb_str(&b, true, WS_OP_TEXT, "");
	sb_str(&b, true, WS_OP_BINARY, "");
	/* empty fragments making an empty message */
	sb_str(&b, false, WS_OP_TEXT, "");
	sb_str(&b, false, WS_OP_CONTINUATION, "");
	sb_str(&b, true, WS_OP_CONTINUATION, "");
	sb_str(&b, true, WS_OP_PING, "");
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT), E_MSG(WS_OP_TEXT, NULL, 0),
	       E_BEGIN(WS_OP_BINARY), E_MSG(WS_OP_BINARY, NULL, 0), E_BEGIN(WS_OP_TEXT),
	       E_MSG(WS_OP_TEXT, NULL, 0), E_PING(""));
	/* with a limit of zero, only empty messages fit */
	EXPECT(&b, 0, E_BEGIN(WS_OP_TEXT), E_MSG(WS_OP_TEXT, NULL, 0), E_BEGIN(WS_OP_BINARY),
	       E_MSG(WS_OP_BINARY, NULL, 0), E_BEGIN(WS_OP_TEXT), E_MSG(WS_OP_TEXT, NULL, 0),
	       E_PING(""));
	sb_free(&b);

	/* an empty message's span is never NULL, so memcpy from it is defined */
	uint8_t f[] = { 0x81, 0x80, 1, 2, 3, 4 };
	struct ws_reader r;
	size_t c;
	ws_reader_init(&r, 0);
	struct ws_event ev = ws_reader_next(&r, f, sizeof(f), &c);
	assert_int_equal(ev.kind, WS_EV_MESSAGE_BEGIN);
	/* completes with nothing left to feed */
	ev = ws_reader_next(&r, f + c, sizeof(f) - c, &c);
	assert_int_equal(ev.kind, WS_EV_MESSAGE);
	assert_int_equal(ev.data.len, 0);
	assert_non_null(ev.data.ptr);
}

static void test_several_messages_in_one_input(void **state)
{
	(void)state;
	struct sb b = { 0 };
	sb_str(&b, true, WS_OP_TEXT, "one");
	sb_str(&b, true, WS_OP_PING, "p1");
	sb_str(&b, true, WS_OP_BINARY, "two");
	sb_str(&b, true, WS_OP_PONG, "p2");
	sb_str(&b, true, WS_OP_TEXT, "three");
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT), E_TEXT("one"), E_PING("p1"),
	       E_BEGIN(WS_OP_BINARY), E_MSG(WS_OP_BINARY, "two", 3), E_PONG("p2"),
	       E_BEGIN(WS_OP_TEXT), E_TEXT("three"));
	sb_free(&b);
}

static void test_length_boundaries(void **state)
{
	(void)state;
	static const size_t lens[] = { 1, 125, 126, 127, 65535, 65536, 70001 };
	uint8_t *payload = malloc(70001);
	assert_non_null(payload);
	for (size_t i = 0; i < 70001; i++)
		payload[i] = (uint8_t)(i * 31 + (i >> 8));
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		struct sb b = { 0 };
		sb_frame(&b, true, WS_OP_BINARY, payload, lens[i]);
		sb_str(&b, true, WS_OP_PING, "after");
		EXPECT(&b, WS_MESSAGE_BYTES_MAX, E_BEGIN(WS_OP_BINARY),
		       E_MSG(WS_OP_BINARY, (const char *)payload, lens[i]), E_PING("after"));
		sb_free(&b);
	}
	free(payload);
}

static void test_message_at_limit_and_over(void **state)
{
	(void)state;
	const size_t max = WS_MESSAGE_BYTES_MAX;
	uint8_t *payload = malloc(max + 1);
	assert_non_null(payload);
	memset(payload, 'a', max + 1);

	struct sb b = { 0 };
	sb_frame(&b, true, WS_OP_TEXT, payload, max);
	EXPECT(&b, (uint32_t)max, E_BEGIN(WS_OP_TEXT), E_MSG(WS_OP_TEXT, (char *)payload, max));
	sb_free(&b);

	/* one byte over: refused from the header alone, no payload sent at all */
	uint8_t k[4] = { 1, 2, 3, 4 };
	sb_header(&b, 0x82, max + 1, k);
	EXPECT(&b, (uint32_t)max, E_ERR(WS_CLOSE_TOO_BIG));
	sb_free(&b);

	/* a 64-bit length far beyond any limit, also from the header */
	sb_header(&b, 0x81, 1ull << 40, k);
	EXPECT(&b, (uint32_t)max, E_ERR(WS_CLOSE_TOO_BIG));
	sb_free(&b);

	/* small limit */
	sb_frame(&b, true, WS_OP_BINARY, payload, 11);
	EXPECT(&b, 10, E_ERR(WS_CLOSE_TOO_BIG));
	sb_free(&b);
	free(payload);
}

static void test_fragments_over_limit(void **state)
{
	(void)state;
	char part[400];
	memset(part, 'f', sizeof(part));
	uint8_t k[4] = { 9, 8, 7, 6 };

	/* 400 + 400 + 200 = exactly the limit: fine */
	struct sb b = { 0 };
	sb_frame(&b, false, WS_OP_BINARY, part, 400);
	sb_frame(&b, false, WS_OP_CONTINUATION, part, 400);
	sb_frame(&b, true, WS_OP_CONTINUATION, part, 200);
	char whole[1000];
	memset(whole, 'f', sizeof(whole));
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_BINARY), E_MSG(WS_OP_BINARY, whole, 1000));
	sb_free(&b);

	/* the third header announces one byte too many: refused before its payload */
	sb_frame(&b, false, WS_OP_BINARY, part, 400);
	sb_frame(&b, false, WS_OP_CONTINUATION, part, 400);
	sb_header(&b, 0x80, 201, k);
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_BINARY), E_ERR(WS_CLOSE_TOO_BIG));
	sb_free(&b);

	/* control frames in between do not count towards the message */
	sb_frame(&b, false, WS_OP_TEXT, part, 400);
	sb_frame(&b, true, WS_OP_PING, part, 125);
	sb_frame(&b, false, WS_OP_CONTINUATION, part, 400);
	sb_frame(&b, true, WS_OP_PONG, part, 125);
	sb_frame(&b, true, WS_OP_CONTINUATION, part, 200);
	const struct exp exp_[] = {
		E_BEGIN(WS_OP_TEXT),
		{ WS_EV_PING, 0, 0, part, 125 },
		{ WS_EV_PONG, 0, 0, part, 125 },
		E_MSG(WS_OP_TEXT, whole, 1000),
	};
	expect_stream(&b, SMALL_LIMIT, exp_, 4);
	sb_free(&b);
}

static void test_fragmented_with_interleaved_control(void **state)
{
	(void)state;
	struct sb b = { 0 };
	sb_str(&b, false, WS_OP_TEXT, "Hel");
	sb_str(&b, true, WS_OP_PING, "are you there");
	sb_str(&b, false, WS_OP_CONTINUATION, "lo, ");
	sb_str(&b, true, WS_OP_PONG, "");
	sb_str(&b, true, WS_OP_PING, "again");
	sb_str(&b, true, WS_OP_CONTINUATION, "world");
	sb_str(&b, false, WS_OP_BINARY, "bin");
	sb_str(&b, true, WS_OP_CONTINUATION, "ary");
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT), E_PING("are you there"), E_PONG(""),
	       E_PING("again"), E_TEXT("Hello, world"), E_BEGIN(WS_OP_BINARY),
	       E_MSG(WS_OP_BINARY, "binary", 6));

	/* in_message spans from BEGIN to MESSAGE, across the control frames */
	struct run *run = malloc(sizeof(*run));
	assert_non_null(run);
	run_stream(b.p, b.len, SMALL_LIMIT, SPLIT_WHOLE, 0, GROW_EXACT, run);
	assert_int_equal(run->n, 7);
	assert_true(run->in_message_after[0]);
	assert_true(run->in_message_after[1]);
	assert_true(run->in_message_after[3]);
	assert_false(run->in_message_after[4]);
	assert_true(run->in_message_after[5]);
	assert_false(run->in_message_after[6]);
	assert_true(run->ev[4].in_asm);
	free(run->arena);
	free(run);
	sb_free(&b);
}

static void test_unmasked_frame_rejected(void **state)
{
	(void)state;
	struct sb b = { 0 };
	sb_raw(&b, "\x81\x02hi", 4);
	EXPECT(&b, SMALL_LIMIT, E_ERR(WS_CLOSE_PROTOCOL_ERROR));
	sb_free(&b);
	/* also a control frame, and also after a valid message */
	sb_str(&b, true, WS_OP_TEXT, "ok");
	sb_raw(&b, "\x89\x00", 2);
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT), E_TEXT("ok"),
	       E_ERR(WS_CLOSE_PROTOCOL_ERROR));
	sb_free(&b);
}

static void test_rsv_and_reserved_opcodes(void **state)
{
	(void)state;
	for (unsigned rsv = 0x10; rsv <= 0x70; rsv += 0x10) {
		struct sb b = { 0 };
		sb_frame_b0(&b, (uint8_t)(0x80 | rsv | WS_OP_TEXT), "x", 1);
		EXPECT(&b, SMALL_LIMIT, E_ERR(WS_CLOSE_PROTOCOL_ERROR));
		sb_free(&b);
	}
	static const uint8_t reserved[] = { 3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF };
	for (size_t i = 0; i < sizeof(reserved); i++) {
		struct sb b = { 0 };
		sb_frame_b0(&b, (uint8_t)(0x80 | reserved[i]), "x", 1);
		EXPECT(&b, SMALL_LIMIT, E_ERR(WS_CLOSE_PROTOCOL_ERROR));
		sb_free(&b);
	}
	/* RSV on a continuation inside a message */
	struct sb b = { 0 };
	sb_str(&b, false, WS_OP_TEXT, "a");
	sb_frame_b0(&b, 0x80 | 0x40 | WS_OP_CONTINUATION, "b", 1);
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT), E_ERR(WS_CLOSE_PROTOCOL_ERROR));
	sb_free(&b);
}

static void test_control_frame_rules(void **state)
{
	(void)state;
	char big[126];
	memset(big, 'p', sizeof(big));
	static const uint8_t ops[] = { WS_OP_PING, WS_OP_PONG, WS_OP_CLOSE };
	for (size_t i = 0; i < sizeof(ops); i++) {
		struct sb b = { 0 };
		sb_frame(&b, true, ops[i], big, 126); /* 16-bit length form */
		EXPECT(&b, WS_MESSAGE_BYTES_MAX, E_ERR(WS_CLOSE_PROTOCOL_ERROR));
		sb_free(&b);

		sb_frame(&b, false, ops[i], "", 0); /* fragmented control frame */
		EXPECT(&b, WS_MESSAGE_BYTES_MAX, E_ERR(WS_CLOSE_PROTOCOL_ERROR));
		sb_free(&b);
	}
	/* 125 bytes is the most a control frame carries */
	struct sb b = { 0 };
	sb_frame(&b, true, WS_OP_PING, big, 125);
	sb_frame(&b, true, WS_OP_PONG, big, 125);
	const struct exp exp_[] = { { WS_EV_PING, 0, 0, big, 125 }, { WS_EV_PONG, 0, 0, big, 125 } };
	expect_stream(&b, SMALL_LIMIT, exp_, 2);
	sb_free(&b);
}

static void test_continuation_rules(void **state)
{
	(void)state;
	struct sb b = { 0 };
	sb_str(&b, true, WS_OP_CONTINUATION, "orphan");
	EXPECT(&b, SMALL_LIMIT, E_ERR(WS_CLOSE_PROTOCOL_ERROR));
	sb_free(&b);

	/* also after a completed message */
	sb_str(&b, false, WS_OP_TEXT, "a");
	sb_str(&b, true, WS_OP_CONTINUATION, "b");
	sb_str(&b, false, WS_OP_CONTINUATION, "c");
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT), E_TEXT("ab"),
	       E_ERR(WS_CLOSE_PROTOCOL_ERROR));
	sb_free(&b);

	/* a new data frame inside a fragmented message */
	static const uint8_t second[] = { WS_OP_TEXT, WS_OP_BINARY };
	for (size_t i = 0; i < 2; i++) {
		for (int fin = 0; fin <= 1; fin++) {
			sb_str(&b, false, WS_OP_BINARY, "first");
			sb_str(&b, true, WS_OP_PING, "");
			sb_str(&b, fin, second[i], "second");
			EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_BINARY), E_PING(""),
			       E_ERR(WS_CLOSE_PROTOCOL_ERROR));
			sb_free(&b);
		}
	}
}

static void test_bad_length_encodings(void **state)
{
	(void)state;
	static const char *const bad[] = {
		"\x82\xfe\x00\x7d\x01\x02\x03\x04",             /* 125 in 16 bits */
		"\x82\xfe\x00\x00\x01\x02\x03\x04",             /* 0 in 16 bits */
		"\x82\xff\x00\x00\x00\x00\x00\x00\xff\xff\x01\x02\x03\x04", /* 65535 in 64 */
		"\x82\xff\x00\x00\x00\x00\x00\x00\x00\x05\x01\x02\x03\x04", /* 5 in 64 */
		"\x82\xff\x80\x00\x00\x00\x00\x00\x00\x00\x01\x02\x03\x04", /* MSB set */
		"\x82\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x02\x03\x04", /* MSB set */
	};
	static const size_t lens[] = { 8, 8, 14, 14, 14, 14 };
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		struct sb b = { 0 };
		sb_raw(&b, bad[i], lens[i]);
		EXPECT(&b, WS_MESSAGE_BYTES_MAX, E_ERR(WS_CLOSE_PROTOCOL_ERROR));
		sb_free(&b);
	}
}

static void test_utf8_valid_across_fragments(void **state)
{
	(void)state;
	struct sb b = { 0 };
	/* U+20AC and U+1F600 each cut across fragment boundaries, pings in between */
	sb_str(&b, false, WS_OP_TEXT, "a\xE2");
	sb_str(&b, true, WS_OP_PING, "x");
	sb_str(&b, false, WS_OP_CONTINUATION, "\x82");
	sb_str(&b, false, WS_OP_CONTINUATION, "\xAC\xF0\x9F");
	sb_str(&b, true, WS_OP_PONG, "y");
	sb_str(&b, true, WS_OP_CONTINUATION, "\x98\x80z");
	/* binary messages are not UTF-8 checked */
	sb_frame(&b, true, WS_OP_BINARY, "\xff\xfe\xc0", 3);
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT), E_PING("x"), E_PONG("y"),
	       E_TEXT("a\xE2\x82\xAC\xF0\x9F\x98\x80z"), E_BEGIN(WS_OP_BINARY),
	       E_MSG(WS_OP_BINARY, "\xff\xfe\xc0", 3));
	sb_free(&b);
}

static void test_utf8_invalid(void **state)
{
	(void)state;
	static const char *const bad[] = {
		"\xff", "abc\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe0\x80\x80",
		"\x80", "\xf5\x80\x80\x80",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct sb b = { 0 };
		sb_str(&b, true, WS_OP_TEXT, bad[i]);
		EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT), E_ERR(WS_CLOSE_INVALID_DATA));
		sb_free(&b);

		sb_str(&b, false, WS_OP_TEXT, "ok ");
		sb_str(&b, true, WS_OP_PING, "");
		sb_str(&b, true, WS_OP_CONTINUATION, bad[i]);
		EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT), E_PING(""),
		       E_ERR(WS_CLOSE_INVALID_DATA));
		sb_free(&b);
	}
}

static void test_utf8_ends_mid_code_point(void **state)
{
	(void)state;
	struct sb b = { 0 };
	sb_str(&b, true, WS_OP_TEXT, "abc\xE2\x82");
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT), E_ERR(WS_CLOSE_INVALID_DATA));
	sb_free(&b);

	sb_str(&b, false, WS_OP_TEXT, "abc\xF0");
	sb_str(&b, true, WS_OP_CONTINUATION, "\x9F\x98");
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT), E_ERR(WS_CLOSE_INVALID_DATA));
	sb_free(&b);

	/* the final fragment is empty and the message is left mid code point */
	sb_str(&b, false, WS_OP_TEXT, "\xC3");
	sb_str(&b, true, WS_OP_CONTINUATION, "");
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT), E_ERR(WS_CLOSE_INVALID_DATA));
	sb_free(&b);
}

/* The error comes with the first impossible byte, before the frame has ended. */
static void test_utf8_fails_fast(void **state)
{
	(void)state;
	char payload[100];
	memset(payload, 'a', sizeof(payload));
	payload[10] = (char)0xFF;
	struct sb b = { 0 };
	sb_frame(&b, true, WS_OP_TEXT, payload, sizeof(payload));
	/* cut the stream right after the bad byte: header 2 + 4, payload 11 bytes */
	b.len = 6 + 11;
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT), E_ERR(WS_CLOSE_INVALID_DATA));
	/* one byte earlier, nothing is wrong yet */
	b.len = 6 + 10;
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT));
	sb_free(&b);

	/* same inside a continuation, the bad byte being a surrogate's second byte */
	sb_str(&b, false, WS_OP_TEXT, "start");
	size_t at = b.len;
	memcpy(payload, "xyz\xED\xA0", 5);
	sb_frame(&b, false, WS_OP_CONTINUATION, payload, 50);
	b.len = at + 6 + 5;
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT), E_ERR(WS_CLOSE_INVALID_DATA));
	b.len = at + 6 + 4;
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT));
	sb_free(&b);
}

/* What the one pass and the UTF-8 validator each walked, per call (the /metrics pass
 * counters): non-ASCII text is walked twice, ASCII text and binary once. */
static void test_pass_counters(void **state)
{
	(void)state;
	struct sb b = { 0 };
	sb_str(&b, true, WS_OP_TEXT, "h\xC3\xA9llo");
	sb_frame(&b, true, WS_OP_BINARY, "\xff\xfe", 2);
	sb_str(&b, true, WS_OP_TEXT, "plain");
	struct ws_reader r;
	ws_reader_init(&r, SMALL_LIMIT);
	size_t c, off = 0;
	const size_t want_payload[] = { 6, 2, 5 }, want_utf8[] = { 6, 0, 0 };
	for (size_t i = 0; i < 3; i++) {
		struct ws_event ev = ws_reader_next(&r, b.p + off, b.len - off, &c);
		assert_int_equal(ev.kind, WS_EV_MESSAGE_BEGIN);
		assert_int_equal(ev.payload_bytes, 0);
		off += c;
		ev = ws_reader_next(&r, b.p + off, b.len - off, &c);
		assert_int_equal(ev.kind, WS_EV_MESSAGE);
		assert_int_equal(ev.payload_bytes, want_payload[i]);
		assert_int_equal(ev.utf8_bytes, want_utf8[i]);
		off += c;
	}
	assert_int_equal(off, b.len);
	sb_free(&b);
}

static void test_close_frames(void **state)
{
	(void)state;
	struct sb b = { 0 };
	sb_str(&b, true, WS_OP_CLOSE, "");
	sb_str(&b, true, WS_OP_TEXT, "ignored after close");
	EXPECT(&b, SMALL_LIMIT, E_CLOSE(0, ""));
	sb_free(&b);

	sb_close(&b, 1000, "bye \xE2\x82\xAC", 7);
	EXPECT(&b, SMALL_LIMIT, E_CLOSE(1000, "bye \xE2\x82\xAC"));
	sb_free(&b);

	static const uint16_t ok[] = { 1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999 };
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		sb_close(&b, ok[i], "", 0);
		const struct exp exp_[] = { { WS_EV_CLOSE, 0, ok[i], NULL, 0 } };
		expect_stream(&b, SMALL_LIMIT, exp_, 1);
		sb_free(&b);
	}
	static const uint16_t bad[] = { 0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535 };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		sb_close(&b, bad[i], "r", 1);
		EXPECT(&b, SMALL_LIMIT, E_ERR(WS_CLOSE_PROTOCOL_ERROR));
		sb_free(&b);
	}

	sb_frame(&b, true, WS_OP_CLOSE, "\x03", 1);
	EXPECT(&b, SMALL_LIMIT, E_ERR(WS_CLOSE_PROTOCOL_ERROR));
	sb_free(&b);

	sb_close(&b, 1000, "\xC0\xAF", 2);
	EXPECT(&b, SMALL_LIMIT, E_ERR(WS_CLOSE_INVALID_DATA));
	sb_free(&b);

	sb_close(&b, 4000, "cut \xE2\x82", 6);
	EXPECT(&b, SMALL_LIMIT, E_ERR(WS_CLOSE_INVALID_DATA));
	sb_free(&b);

	/* a close in the middle of a fragmented message ends it */
	sb_str(&b, false, WS_OP_TEXT, "part");
	sb_close(&b, 1001, "going", 5);
	sb_str(&b, true, WS_OP_CONTINUATION, "never seen");
	EXPECT(&b, SMALL_LIMIT, E_BEGIN(WS_OP_TEXT), E_CLOSE(1001, "going"));
	sb_free(&b);

	/* 123-byte reason: the largest */
	char reason[123];
	memset(reason, 'r', sizeof(reason));
	sb_close(&b, 1000, reason, sizeof(reason));
	const struct exp exp_[] = { { WS_EV_CLOSE, 0, 1000, reason, 123 } };
	expect_stream(&b, SMALL_LIMIT, exp_, 1);
	sb_free(&b);
}

static void test_dead_after_error_discards_input(void **state)
{
	(void)state;
	struct ws_reader r;
	size_t c;
	ws_reader_init(&r, SMALL_LIMIT);
	uint8_t bad[] = { 0x83, 0x80, 0, 0, 0, 0 };
	struct ws_event ev = ws_reader_next(&r, bad, sizeof(bad), &c);
	assert_int_equal(ev.kind, WS_EV_ERROR);
	assert_int_equal(ev.close_code, WS_CLOSE_PROTOCOL_ERROR);

	struct sb b = { 0 };
	sb_str(&b, true, WS_OP_TEXT, "valid");
	ev = ws_reader_next(&r, b.p, b.len, &c);
	assert_int_equal(ev.kind, WS_EV_NEED_MORE);
	assert_int_equal(c, b.len);
	ev = ws_reader_next(&r, NULL, 0, &c);
	assert_int_equal(ev.kind, WS_EV_NEED_MORE);
	assert_int_equal(c, 0);
	sb_free(&b);
}

/* The growth protocol step by step, with the caller growing to exactly `need`. */
static void test_need_space_protocol(void **state)
{
	(void)state;
	uint8_t payload[1000];
	for (size_t i = 0; i < sizeof(payload); i++)
		payload[i] = (uint8_t)(i * 13);
	struct sb b = { 0 };
	sb_frame(&b, false, WS_OP_BINARY, payload, 600);
	sb_frame(&b, true, WS_OP_CONTINUATION, payload + 600, 400);
	ASSERT(b.len == 4 + 600 + 4 + 400 + 4 * 2);

	struct ws_reader r;
	size_t c;
	ws_reader_init(&r, SMALL_LIMIT);

	/* header of the first fragment plus 100 payload bytes */
	uint8_t in1[108];
	memcpy(in1, b.p, sizeof(in1));
	struct ws_event ev = ws_reader_next(&r, in1, sizeof(in1), &c);
	assert_int_equal(ev.kind, WS_EV_MESSAGE_BEGIN);
	assert_int_equal(c, 8);
	size_t off = c;
	ev = ws_reader_next(&r, in1 + off, sizeof(in1) - off, &c);
	assert_int_equal(ev.kind, WS_EV_NEED_SPACE);
	assert_int_equal(ev.need, 100); /* what is at hand, not the 600 announced */
	assert_int_equal(c, 0);
	assert_false(ws_reader_buffer_in_use(&r));
	/* calling again without growing changes nothing */
	ev = ws_reader_next(&r, in1 + off, sizeof(in1) - off, &c);
	assert_int_equal(ev.kind, WS_EV_NEED_SPACE);
	assert_int_equal(ev.need, 100);
	assert_int_equal(c, 0);

	uint8_t *buf = malloc(100);
	assert_non_null(buf);
	r.asm_buf = buf;
	r.asm_cap = 100;
	ev = ws_reader_next(&r, in1 + off, sizeof(in1) - off, &c);
	assert_int_equal(ev.kind, WS_EV_NEED_MORE);
	assert_int_equal(c, 100);
	assert_int_equal(r.asm_len, 100);
	assert_memory_equal(buf, payload, 100);
	assert_true(ws_reader_buffer_in_use(&r));
	assert_true(ws_reader_in_message(&r));

	/* the rest of the stream: growth to 600 (first fragment), then 1000 */
	uint8_t *rest = malloc(b.len - sizeof(in1));
	assert_non_null(rest);
	memcpy(rest, b.p + sizeof(in1), b.len - sizeof(in1));
	size_t rn = b.len - sizeof(in1);
	off = 0;
	ev = ws_reader_next(&r, rest, rn, &c);
	assert_int_equal(ev.kind, WS_EV_NEED_SPACE);
	assert_int_equal(ev.need, 600);
	off += c;
	/* move the buffer, keeping the first asm_len bytes */
	uint8_t *nb = malloc(600);
	assert_non_null(nb);
	memcpy(nb, r.asm_buf, r.asm_len);
	free(r.asm_buf);
	r.asm_buf = nb;
	r.asm_cap = 600;
	ev = ws_reader_next(&r, rest + off, rn - off, &c);
	assert_int_equal(ev.kind, WS_EV_NEED_SPACE);
	assert_int_equal(ev.need, 1000);
	assert_int_equal(r.asm_len, 600);
	off += c;
	nb = realloc(r.asm_buf, 1000);
	assert_non_null(nb);
	r.asm_buf = nb;
	r.asm_cap = 1000;
	ev = ws_reader_next(&r, rest + off, rn - off, &c);
	assert_int_equal(ev.kind, WS_EV_MESSAGE);
	assert_int_equal(ev.opcode, WS_OP_BINARY);
	assert_ptr_equal(ev.data.ptr, r.asm_buf);
	assert_int_equal(ev.data.len, 1000);
	assert_memory_equal(ev.data.ptr, payload, 1000);
	off += c;
	assert_int_equal(off, rn);
	assert_false(ws_reader_buffer_in_use(&r));
	assert_false(ws_reader_in_message(&r));
	assert_int_equal(r.asm_len, 0);

	/* the next assembled message reuses the buffer without asking */
	sb_free(&b);
	sb_frame(&b, false, WS_OP_BINARY, payload, 10);
	sb_frame(&b, true, WS_OP_CONTINUATION, payload + 10, 10);
	off = 0;
	ev = ws_reader_next(&r, b.p, b.len, &c);
	assert_int_equal(ev.kind, WS_EV_MESSAGE_BEGIN);
	off += c;
	ev = ws_reader_next(&r, b.p + off, b.len - off, &c);
	assert_int_equal(ev.kind, WS_EV_MESSAGE);
	assert_int_equal(ev.data.len, 20);
	assert_ptr_equal(ev.data.ptr, r.asm_buf);
	assert_memory_equal(ev.data.ptr, payload, 20);

	free(r.asm_buf);
	free(rest);
	sb_free(&b);
}

/* A mixed conversation, fed every which way, with many seeds. */
static void test_long_conversation_all_splits(void **state)
{
	(void)state;
	struct sb b = { 0 };
	static char big[70000];
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (char)('a' + i % 26);
	static char expect_frag[3 * 1000 + 8];
	size_t ef = 0;

	sb_str(&b, true, WS_OP_TEXT, "\xF0\x9F\x98\x80 hi");
	sb_frame(&b, true, WS_OP_BINARY, big, sizeof(big));
	for (int i = 0; i < 3; i++) {
		sb_frame(&b, false, i == 0 ? WS_OP_TEXT : WS_OP_CONTINUATION, big + i, 1000);
		memcpy(expect_frag + ef, big + i, 1000);
		ef += 1000;
		sb_str(&b, true, WS_OP_PING, "tick");
	}
	sb_str(&b, true, WS_OP_CONTINUATION, "\xC3\xA9");
	memcpy(expect_frag + ef, "\xC3\xA9", 2);
	ef += 2;
	sb_str(&b, true, WS_OP_TEXT, "");
	sb_close(&b, 1000, "done", 4);

	const struct exp exp_[] = {
		E_BEGIN(WS_OP_TEXT),
		E_TEXT("\xF0\x9F\x98\x80 hi"),
		E_BEGIN(WS_OP_BINARY),
		E_MSG(WS_OP_BINARY, big, sizeof(big)),
		E_BEGIN(WS_OP_TEXT),
		E_PING("tick"),
		E_PING("tick"),
		E_PING("tick"),
		E_MSG(WS_OP_TEXT, expect_frag, ef),
		E_BEGIN(WS_OP_TEXT),
		E_MSG(WS_OP_TEXT, NULL, 0),
		E_CLOSE(1000, "done"),
	};
	expect_stream(&b, WS_MESSAGE_BYTES_MAX, exp_, sizeof(exp_) / sizeof(exp_[0]));
	sb_free(&b);
}

/*
 * Every prefix of a stream ending in each kind of violation: the events seen are a
 * prefix of the whole run's, whatever the cut (nothing is reported early or twice).
 */
static void test_prefixes_are_consistent(void **state)
{
	(void)state;
	struct sb b = { 0 };
	sb_str(&b, false, WS_OP_TEXT, "ab\xE2");
	sb_str(&b, true, WS_OP_PING, "pp");
	sb_str(&b, true, WS_OP_CONTINUATION, "\x82\xAC");
	sb_str(&b, true, WS_OP_BINARY, "xyz");
	sb_str(&b, false, WS_OP_BINARY, "12");
	sb_str(&b, false, WS_OP_TEXT, "bad"); /* 1002 */
	struct run *full = malloc(sizeof(*full));
	struct run *part = malloc(sizeof(*part));
	assert_non_null(full);
	assert_non_null(part);
	run_stream(b.p, b.len, SMALL_LIMIT, SPLIT_WHOLE, 0, GROW_EXACT, full);
	assert_int_equal(full->n, 7);
	assert_int_equal(full->ev[6].kind, WS_EV_ERROR);
	for (size_t cut = 0; cut <= b.len; cut++) {
		for (int mode = 0; mode < 3; mode++) {
			run_stream(b.p, cut, SMALL_LIMIT, (enum split)mode, cut, GROW_DOUBLE, part);
			assert_true(part->n <= full->n);
			for (size_t i = 0; i < part->n; i++) {
				assert_int_equal(part->ev[i].kind, full->ev[i].kind);
				assert_int_equal(part->ev[i].len, full->ev[i].len);
				assert_memory_equal(part->arena + part->ev[i].off,
						    full->arena + full->ev[i].off, part->ev[i].len);
			}
			free(part->arena);
		}
	}
	free(full->arena);
	free(full);
	free(part);
	sb_free(&b);
}

/* At rest exactly at frame boundaries outside a message, and never once finished. */
static void test_at_rest(void **state)
{
	(void)state;
	struct sb b = { 0 };
	sb_str(&b, true, WS_OP_TEXT, "one");                 /* [0, f1) */
	size_t f1 = b.len;
	sb_str(&b, false, WS_OP_TEXT, "frag");               /* [f1, f2) */
	size_t f2 = b.len;
	sb_str(&b, true, WS_OP_PING, "p");                   /* [f2, f3): inside the message */
	size_t f3 = b.len;
	sb_str(&b, true, WS_OP_CONTINUATION, "ment");        /* [f3, f4) */
	size_t f4 = b.len;
	sb_str(&b, true, WS_OP_PING, "q");                   /* [f4, f5): between messages */
	size_t f5 = b.len;
	sb_close(&b, 1000, "", 0);

	struct ws_reader r;
	ws_reader_init(&r, SMALL_LIMIT);
	assert_true(ws_reader_at_rest(&r));
	uint8_t *buf = malloc(b.len);
	assert_non_null(buf);
	memcpy(buf, b.p, b.len);
	/* Feed one byte at a time; record at which offsets the reader is at rest. */
	bool rest_at[512] = { 0 };
	assert_true(b.len < sizeof rest_at);
	for (size_t off = 0; off < b.len; off++) {
		for (size_t used = 0;;) {
			size_t c = 0;
			struct ws_event ev = ws_reader_next(&r, buf + off + used, 1 - used, &c);
			used += c;
			if (ev.kind == WS_EV_NEED_SPACE) {
				grow_buffer(&r, ev.need, GROW_DOUBLE, SMALL_LIMIT);
				continue;
			}
			if (ev.kind == WS_EV_NEED_MORE)
				break;
		}
		rest_at[off + 1] = ws_reader_at_rest(&r);
	}
	for (size_t off = 1; off <= b.len; off++) {
		bool want = off == f1 || off == f4 || off == f5; /* not f2, f3: mid-message; not the end: closed */
		if (rest_at[off] != want)
			fail_msg("offset %zu: at rest %d, expected %d (f1 %zu f2 %zu f3 %zu f4 %zu f5 %zu)", off,
				 rest_at[off], want, f1, f2, f3, f4, f5);
	}
	free(r.asm_buf);
	free(buf);
	sb_free(&b);
}

/* Dropping the reader whenever it is at rest changes nothing, in a long conversation
 * fed byte by byte (run_stream parks in that mode). */
static void test_parking_changes_nothing(void **state)
{
	(void)state;
	struct sb b = { 0 };
	for (int i = 0; i < 20; i++) {
		sb_str(&b, true, WS_OP_TEXT, "{\"s\":1}");
		sb_str(&b, false, WS_OP_BINARY, "ab");
		sb_str(&b, true, WS_OP_PONG, "7");
		sb_str(&b, true, WS_OP_CONTINUATION, "cd");
	}
	struct run *whole = malloc(sizeof(*whole));
	struct run *bytes = malloc(sizeof(*bytes));
	assert_non_null(whole);
	assert_non_null(bytes);
	run_stream(b.p, b.len, SMALL_LIMIT, SPLIT_WHOLE, 0, GROW_DOUBLE, whole);
	run_stream(b.p, b.len, SMALL_LIMIT, SPLIT_BYTES, 0, GROW_DOUBLE, bytes);
	assert_int_equal(whole->parked, 0);
	assert_true(bytes->parked >= 40); /* after each text message and each binary one */
	assert_int_equal(bytes->n, whole->n);
	for (size_t i = 0; i < whole->n; i++) {
		assert_int_equal(bytes->ev[i].kind, whole->ev[i].kind);
		assert_int_equal(bytes->ev[i].len, whole->ev[i].len);
		assert_memory_equal(bytes->arena + bytes->ev[i].off, whole->arena + whole->ev[i].off,
				    whole->ev[i].len);
	}
	free(whole->arena);
	free(bytes->arena);
	free(whole);
	free(bytes);
	sb_free(&b);
}

/* The reader is small enough to live in every connection. */
static void test_reader_size(void **state)
{
	(void)state;
	assert_true(sizeof(struct ws_reader) <= 4 * 64);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_single_text),
		cmocka_unit_test(test_zero_copy_single_frame),
		cmocka_unit_test(test_empty_messages),
		cmocka_unit_test(test_several_messages_in_one_input),
		cmocka_unit_test(test_length_boundaries),
		cmocka_unit_test(test_message_at_limit_and_over),
		cmocka_unit_test(test_fragments_over_limit),
		cmocka_unit_test(test_fragmented_with_interleaved_control),
		cmocka_unit_test(test_unmasked_frame_rejected),
		cmocka_unit_test(test_rsv_and_reserved_opcodes),
		cmocka_unit_test(test_control_frame_rules),
		cmocka_unit_test(test_continuation_rules),
		cmocka_unit_test(test_bad_length_encodings),
		cmocka_unit_test(test_utf8_valid_across_fragments),
		cmocka_unit_test(test_utf8_invalid),
		cmocka_unit_test(test_utf8_ends_mid_code_point),
		cmocka_unit_test(test_utf8_fails_fast),
		cmocka_unit_test(test_pass_counters),
		cmocka_unit_test(test_close_frames),
		cmocka_unit_test(test_dead_after_error_discards_input),
		cmocka_unit_test(test_need_space_protocol),
		cmocka_unit_test(test_long_conversation_all_splits),
		cmocka_unit_test(test_prefixes_are_consistent),
		cmocka_unit_test(test_reader_size),
		cmocka_unit_test(test_at_rest),
		cmocka_unit_test(test_parking_changes_nothing),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
