/*
 * fuzz_ws_reader.c - the reader on hostile streams.
 *
 * Input layout:
 *   byte 0   bit 0: the rest is a frame recipe (build well-masked frames from it) rather
 *            than raw wire bytes; bits 1-2: message size limit (256 KiB, 0, small, 125)
 *   byte 1   the small limit / the seed for the piece sizes
 *   byte 2-3 the split point (big endian, modulo the stream length + 1)
 *   rest     raw stream or recipe
 *
 * The stream is fed whole, in two pieces split at the fuzzer's point, in pseudo-random
 * pieces, and (when short) byte by byte; every feeding must produce the same events.
 * asm_buf grows on NEED_SPACE, never beyond the limit. Invariants are checked on every
 * event: sizes within limits, text and close reasons valid UTF-8 (re-checked with
 * utf8_valid), close codes legal, message begin/end properly paired, nothing after a
 * close or an error, data spans inside the input or asm_buf.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "ws/utf8.h"
#include "ws/ws_frame.h"
#include "ws/ws_reader.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CONFIG_BYTES 4
#define FUZZ_BYTEWISE_MAX 4096     /* byte-at-a-time only below this (speed) */
#define FUZZ_EVENTS_MAX 4096
#define FUZZ_STREAM_MAX (512u * 1024u)
#define FUZZ_BIG_FRAME_BYTES 70000u /* exercises the 64-bit length form */

struct rec {
	enum ws_event_kind kind;
	uint8_t opcode;
	uint16_t code;
	size_t off, len;
};

struct run {
	struct rec ev[FUZZ_EVENTS_MAX];
	size_t n;
	uint8_t *arena; /* copies of event data; never more than the stream length */
	size_t arena_len;
};

static uint32_t rng(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

static void grow(struct ws_reader *r, size_t need, uint32_t limit)
{
	ASSERT(need <= limit);
	ASSERT(need > r->asm_cap);
	size_t cap = r->asm_cap ? 2 * (size_t)r->asm_cap : 64;
	while (cap < need)
		cap *= 2;
	if (cap > limit)
		cap = limit;
	uint8_t *p = malloc(cap);
	ASSERT(p != NULL);
	if (r->asm_len)
		memcpy(p, r->asm_buf, r->asm_len);
	free(r->asm_buf);
	r->asm_buf = p;
	r->asm_cap = (uint32_t)cap;
}

static bool within(const uint8_t *p, size_t n, const uint8_t *base, size_t cap)
{
	return base && p >= base && p + n <= base + cap;
}

/* piece sizes: 0 = whole, 1 = byte by byte, 2 = split at `cut`, 3 = pseudo-random */
static void run_stream(const uint8_t *s, size_t len, uint32_t limit, int how, size_t cut,
		       uint32_t seed, struct run *out)
{
	struct ws_reader r;
	ws_reader_init(&r, limit);
	out->n = 0;
	out->arena_len = 0;
	bool dead = false, in_msg = false, first = true;
	size_t a = 0;

	do {
		size_t chunk = len - a;
		if (how == 1)
			chunk = MIN(chunk, 1);
		else if (how == 2 && first)
			chunk = cut; /* may be 0: an empty first input */
		else if (how == 3 && chunk) {
			size_t most = rng(&seed) & 0x100 ? 700 : 13;
			chunk = 1 + rng(&seed) % MIN(chunk, most);
		}
		/* each piece in its own exact-size allocation: ASan sees any overrun */
		uint8_t *buf = malloc(chunk ? chunk : 1);
		ASSERT(buf != NULL);
		if (chunk)
			memcpy(buf, s + a, chunk);
		size_t off = 0;
		for (size_t guard = 0;; guard++) {
			ASSERT(guard <= 3 * chunk + 16); /* every call consumes or reports */
			size_t c = (size_t)-1;
			struct ws_event ev = ws_reader_next(&r, buf + off, chunk - off, &c);
			ASSERT(c <= chunk - off);
			off += c;
			ASSERT(r.asm_len <= r.asm_cap && r.asm_len <= limit);
			if (ev.kind == WS_EV_NEED_MORE) {
				ASSERT(off == chunk);
				break;
			}
			ASSERT(!dead);
			if (ev.kind == WS_EV_NEED_SPACE) {
				ASSERT(in_msg);
				grow(&r, ev.need, limit);
				continue;
			}
			const struct span d = ev.data;
			if (d.len)
				ASSERT(within(d.ptr, d.len, buf, chunk) ||
				       within(d.ptr, d.len, r.asm_buf, r.asm_cap) ||
				       within(d.ptr, d.len, r.ctrl, sizeof(r.ctrl)));
			switch (ev.kind) {
			case WS_EV_MESSAGE_BEGIN:
				ASSERT(!in_msg);
				ASSERT(ev.opcode == WS_OP_TEXT || ev.opcode == WS_OP_BINARY);
				in_msg = true;
				break;
			case WS_EV_MESSAGE:
				ASSERT(in_msg);
				ASSERT(ev.opcode == WS_OP_TEXT || ev.opcode == WS_OP_BINARY);
				ASSERT(d.ptr != NULL);
				ASSERT(d.len <= limit);
				if (ev.opcode == WS_OP_TEXT)
					ASSERT(utf8_valid(d.ptr, d.len));
				ASSERT(!ws_reader_buffer_in_use(&r));
				in_msg = false;
				break;
			case WS_EV_PING:
			case WS_EV_PONG:
				ASSERT(d.len <= WS_CONTROL_PAYLOAD_BYTES_MAX);
				ASSERT(d.ptr != NULL);
				break;
			case WS_EV_CLOSE:
				ASSERT(ev.close_code == 0 ||
				       ws_close_code_is_valid_received(ev.close_code));
				ASSERT(ev.close_code != 0 || d.len == 0);
				ASSERT(d.len <= WS_CLOSE_REASON_BYTES_MAX);
				ASSERT(utf8_valid(d.ptr, d.len));
				dead = true;
				in_msg = false;
				break;
			case WS_EV_ERROR:
				ASSERT(ev.close_code == WS_CLOSE_PROTOCOL_ERROR ||
				       ev.close_code == WS_CLOSE_INVALID_DATA ||
				       ev.close_code == WS_CLOSE_TOO_BIG);
				dead = true;
				in_msg = false;
				break;
			default:
				ASSERT(!"unexpected event");
			}
			ASSERT(ws_reader_in_message(&r) == in_msg);
			ASSERT(out->n < FUZZ_EVENTS_MAX);
			ASSERT(out->arena_len + d.len <= len);
			struct rec *e = &out->ev[out->n++];
			e->kind = ev.kind;
			e->opcode = ev.opcode;
			e->code = ev.close_code;
			e->off = out->arena_len;
			e->len = d.len;
			if (d.len)
				memcpy(out->arena + out->arena_len, d.ptr, d.len);
			out->arena_len += d.len;
		}
		free(buf);
		a += chunk;
		first = false;
	} while (a < len);
	free(r.asm_buf);
}

static void same_events(const struct run *x, const struct run *y)
{
	ASSERT(x->n == y->n);
	for (size_t i = 0; i < x->n; i++) {
		const struct rec *a = &x->ev[i], *b = &y->ev[i];
		ASSERT(a->kind == b->kind && a->opcode == b->opcode && a->code == b->code);
		ASSERT(a->len == b->len);
		ASSERT(memcmp(x->arena + a->off, y->arena + b->off, a->len) == 0);
	}
}

/*
 * Recipe: per frame, b0 (FIN/RSV/opcode, used as is so invalid ones occur too), a
 * length byte (top bit: make a long frame to reach the 16/64-bit forms), a key byte;
 * the payload is taken from the recipe. Frames are always masked and minimally encoded.
 */
static size_t build(const uint8_t *p, size_t n, uint8_t *out, size_t cap)
{
	size_t o = 0, i = 0;
	while (n - i >= 3) {
		uint8_t b0 = p[i], lb = p[i + 1], kb = p[i + 2];
		i += 3;
		size_t len = lb & 0x7F;
		if (lb & 0x80)
			len = (lb & 1) ? FUZZ_BIG_FRAME_BYTES + (lb & 0x7E) : 126 + (size_t)lb * 300;
		if (o + WS_FRAME_HEADER_BYTES_MAX + len > cap)
			break;
		uint8_t key[4] = { kb, (uint8_t)(kb * 3), (uint8_t)(kb ^ 0x5A), (uint8_t)(kb + 1) };
		/* header by hand: b0 may carry bits ws_frame_header_encode refuses */
		out[o++] = b0;
		if (len <= 125) {
			out[o++] = (uint8_t)(0x80 | len);
		} else if (len <= 0xFFFF) {
			out[o++] = 0x80 | 126;
			out[o++] = (uint8_t)(len >> 8);
			out[o++] = (uint8_t)len;
		} else {
			out[o++] = 0x80 | 127;
			for (int sh = 56; sh >= 0; sh -= 8)
				out[o++] = (uint8_t)((uint64_t)len >> sh);
		}
		memcpy(out + o, key, 4);
		o += 4;
		/* payload: recipe bytes, repeated when the frame is longer than what is left */
		size_t avail = n - i;
		size_t take = MIN(avail, len);
		for (size_t k = 0; k < len; k++)
			out[o + k] = take ? p[i + k % take] : (uint8_t)'x';
		ws_mask(out + o, len, key, 0);
		o += len;
		i += take;
	}
	return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < FUZZ_CONFIG_BYTES)
		return 0;
	uint8_t cfg = data[0];
	uint32_t limit;
	switch ((cfg >> 1) & 3) {
	case 0: limit = WS_MESSAGE_BYTES_MAX; break;
	case 1: limit = 0; break;
	case 2: limit = 1u + data[1] * 4u; break;
	default: limit = WS_CONTROL_PAYLOAD_BYTES_MAX; break;
	}
	const uint8_t *body = data + FUZZ_CONFIG_BYTES;
	size_t body_len = size - FUZZ_CONFIG_BYTES;

	uint8_t *stream;
	size_t len;
	if (cfg & 1) {
		stream = malloc(FUZZ_STREAM_MAX);
		ASSERT(stream != NULL);
		len = build(body, body_len, stream, FUZZ_STREAM_MAX);
	} else {
		stream = malloc(body_len ? body_len : 1);
		ASSERT(stream != NULL);
		memcpy(stream, body, body_len);
		len = body_len;
	}
	size_t cut = (((size_t)data[2] << 8) | data[3]) % (len + 1);

	struct run *whole = malloc(sizeof(*whole));
	struct run *other = malloc(sizeof(*other));
	ASSERT(whole && other);
	whole->arena = malloc(len + 1);
	other->arena = malloc(len + 1);
	ASSERT(whole->arena && other->arena);

	run_stream(stream, len, limit, 0, 0, 0, whole);
	run_stream(stream, len, limit, 2, cut, 0, other);
	same_events(whole, other);
	run_stream(stream, len, limit, 3, 0, 0x12345u ^ data[1] ^ ((uint32_t)data[2] << 9), other);
	same_events(whole, other);
	if (len <= FUZZ_BYTEWISE_MAX) {
		run_stream(stream, len, limit, 1, 0, 0, other);
		same_events(whole, other);
	}

	free(whole->arena);
	free(other->arena);
	free(whole);
	free(other);
	free(stream);
	return 0;
}
