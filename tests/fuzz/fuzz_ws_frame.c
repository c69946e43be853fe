/*
 * fuzz_ws_frame.c - libFuzzer target for src/ws/ws_frame.c on its own: the frame
 * header parser, the fused unmask + ASCII pass and the close payload, each against a
 * plain reference written here (fuzz_ws_reader.c drives them only through the reader).
 *
 * Input: byte 0 picks the target (value % 3); bit 2 is require_masked for the header
 * target. The rest:
 *   0 header: raw header bytes.
 *   1 unmask: bytes 1-4 the key, 5-12 the payload offset (little endian), 13-14 the
 *     split point (modulo length + 1), 15 the source and destination alignments (low
 *     and high nibble), the rest the payload.
 *   2 close: the rest is a received close payload; it also drives the encoder (bytes
 *     1-2 a code, the rest a reason) and the close-code predicates (bytes 1-4).
 *
 * Oracles:
 * - header: over every prefix of the input (exactly sized copies, so a read past the
 *   span is an ASan report) the answer is "need more" until it becomes one final
 *   answer that never changes; once the whole header is there (its length read from
 *   bytes 1 and 2 by the reference), the answer equals the reference's verdict from
 *   RFC 6455 §5.2 (RSV, opcode, control FIN and length, mask bit, 64-bit MSB, minimal
 *   length) and its fields; an early refusal on a partial header stays a refusal
 *   however the header is completed (0x00 or 0xFF filling); an accepted header
 *   re-encodes (ws_frame_header_encode) to exactly its own bytes;
 * - unmask: ws_unmask_ascii, at every level of instructions the CPU has (core/simd.h:
 *   AVX2, SSE2, words), equals the one-line XOR with key[(offset + i) % 4], to a
 *   separate buffer and in place, at every alignment, whole and split in two at the
 *   fuzzer's point (the second part at offset + split); its verdict is true exactly
 *   when no output byte has the high bit set; ws_mask twice is the identity;
 * - close: ws_close_payload_parse equals the reference (empty: no code; 1 byte or over
 *   125: 1002; a code outside RFC 6455 §7.4.1's receivable set: 1002; a reason that
 *   is not UTF-8 by ref_utf8.h: 1007); the code predicates equal the reference's list;
 *   ws_close_payload_encode writes the code and a prefix of the reason of at most 123
 *   bytes, all of it when it fits, and a valid reason stays valid after the cut.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/simd.h"
#include "ref_utf8.h"
#include "ws/ws_frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_CLOSE_OK 0
#define FZ_PROTO (-WS_CLOSE_PROTOCOL_ERROR)
#define FZ_UNMASK_HEAD_BYTES 15
#define FZ_ALIGN_MASK 0x0Fu

/* An exactly sized heap copy (at least one byte allocated), so ASan sees overreads. */
static uint8_t *fz_dup(const uint8_t *p, size_t n)
{
	uint8_t *q = malloc(n ? n : 1);
	if (!q)
		abort();
	if (n)
		memcpy(q, p, n);
	return q;
}

/* ------------------------------------------------------------------ header */

struct ref_header {
	int verdict; /* header length, or FZ_PROTO */
	bool fin, masked;
	uint8_t opcode;
	uint8_t key[4];
	uint64_t len;
};

/* The header's length as bytes 0..1 announce it (n >= 2). */
static size_t ref_header_len(const uint8_t *p)
{
	size_t len7 = p[1] & 0x7Fu;
	size_t ext = len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
	return 2 + ext + ((p[1] & 0x80u) ? 4 : 0);
}

/* RFC 6455 §5.2 read literally, on a whole header (n >= ref_header_len(p)). */
static struct ref_header ref_header(const uint8_t *p, bool require_masked)
{
	struct ref_header h = { 0 };
	h.fin = (p[0] >> 7) & 1;
	unsigned rsv = (p[0] >> 4) & 7;
	h.opcode = p[0] & 0x0F;
	h.masked = (p[1] >> 7) & 1;
	unsigned len7 = p[1] & 0x7F;
	size_t pos = 2;
	bool bad = false;

	if (len7 < 126) {
		h.len = len7;
	} else if (len7 == 126) {
		h.len = (uint64_t)p[2] * 256 + p[3];
		pos = 4;
		bad |= h.len < 126; /* not the minimal encoding */
	} else {
		h.len = 0;
		for (size_t i = 0; i < 8; i++)
			h.len = h.len * 256 + p[2 + i];
		pos = 10;
		bad |= (p[2] & 0x80) != 0; /* the most significant bit must be 0 */
		bad |= h.len < 65536;      /* not the minimal encoding */
	}
	if (h.masked) {
		memcpy(h.key, p + pos, 4);
		pos += 4;
	}
	bool known = h.opcode == 0 || h.opcode == 1 || h.opcode == 2 || h.opcode == 8 || h.opcode == 9 ||
		     h.opcode == 10;
	bool control = h.opcode >= 8;
	bad |= rsv != 0;
	bad |= !known;
	bad |= control && !h.fin;
	bad |= control && h.len > 125;
	bad |= h.masked != require_masked;
	h.verdict = bad ? FZ_PROTO : (int)pos;
	return h;
}

static int parse_copy(const uint8_t *p, size_t n, bool require_masked, struct ws_frame_header *out)
{
	uint8_t *q = fz_dup(p, n);
	int r = ws_frame_header_parse(q, n, require_masked, out);
	free(q);
	return r;
}

static void check_against_ref(const uint8_t *p, int r, const struct ws_frame_header *h, bool require_masked)
{
	struct ref_header ref = ref_header(p, require_masked);
	ASSERT(r == ref.verdict);
	if (r > 0) {
		ASSERT(h->header_len == (uint8_t)r);
		ASSERT(h->fin == ref.fin && h->opcode == ref.opcode && h->masked == ref.masked);
		ASSERT(h->payload_len == ref.len);
		if (ref.masked)
			ASSERT(memcmp(h->mask_key, ref.key, 4) == 0);
	}
}

static void fuzz_header(bool require_masked, const uint8_t *p, size_t n)
{
	struct ws_frame_header h;
	int final = 0;
	size_t decided_at = 0;
	size_t upto = MIN(n, (size_t)WS_FRAME_HEADER_BYTES_MAX + 2);

	for (size_t k = 0; k <= upto; k++) {
		int r = parse_copy(p, k, require_masked, &h);
		ASSERT(r == 0 || r == FZ_PROTO || (r >= 2 && r <= WS_FRAME_HEADER_BYTES_MAX));
		if (final != 0) {
			ASSERT(r == final); /* once decided, more bytes change nothing */
			continue;
		}
		if (r != 0) {
			final = r;
			decided_at = k;
			if (r > 0)
				ASSERT((size_t)r == k); /* accepted exactly when the last byte arrived */
		}
	}
	ASSERT(upto < 2 || final != 0 || upto < ref_header_len(p));

	int r = parse_copy(p, n, require_masked, &h);
	ASSERT(r == final);
	bool whole = n >= 2 && n >= ref_header_len(p);
	if (whole)
		check_against_ref(p, r, &h, require_masked);

	if (r == FZ_PROTO && !(decided_at >= 2 && decided_at >= ref_header_len(p))) {
		/* refused on a partial header: every completion is refused too */
		static const uint8_t fills[] = { 0x00, 0xFF };
		for (size_t f = 0; f < ARRAY_LEN(fills); f++) {
			uint8_t full[WS_FRAME_HEADER_BYTES_MAX];
			memset(full, fills[f], sizeof full);
			memcpy(full, p, decided_at);
			ASSERT(ref_header(full, require_masked).verdict == FZ_PROTO);
			ASSERT(parse_copy(full, sizeof full, require_masked, &h) == FZ_PROTO);
		}
	}

	if (r > 0) {
		/* the minimal encoding is the only one accepted, so re-encoding gives it back */
		uint8_t enc[WS_FRAME_HEADER_BYTES_MAX];
		size_t m = ws_frame_header_encode(enc, h.fin, h.opcode, h.payload_len, h.masked ? h.mask_key : NULL);
		ASSERT(m == (size_t)r && memcmp(enc, p, m) == 0);
	}
}

/* ------------------------------------------------------------------ unmask */

static uint64_t le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (size_t i = 8; i-- > 0;)
		v = (v << 8) | p[i];
	return v;
}

static void fuzz_unmask(const uint8_t *p, size_t n)
{
	if (n < FZ_UNMASK_HEAD_BYTES)
		return;
	const uint8_t *key = p;
	uint64_t offset = le64(p + 4);
	size_t split_raw = (size_t)p[12] << 8 | p[13];
	size_t src_align = p[14] & FZ_ALIGN_MASK, dst_align = p[14] >> 4;
	const uint8_t *payload = p + FZ_UNMASK_HEAD_BYTES;
	size_t len = n - FZ_UNMASK_HEAD_BYTES;
	size_t split = split_raw % (len + 1);

	/* the simple path */
	uint8_t *want = fz_dup(payload, len);
	bool want_ascii = true;
	for (size_t i = 0; i < len; i++) {
		want[i] = payload[i] ^ key[(offset + i) % 4];
		if (want[i] >= 0x80)
			want_ascii = false;
	}

	uint8_t *sbuf = malloc(src_align + len + 1), *dbuf = malloc(dst_align + len + 1);
	if (!sbuf || !dbuf)
		abort();
	uint8_t *src = sbuf + src_align, *dst = dbuf + dst_align;

	/* to a separate buffer: the source is left alone */
	memcpy(src, payload, len);
	ASSERT(ws_unmask_ascii(dst, src, len, key, offset) == want_ascii);
	ASSERT(memcmp(dst, want, len) == 0);
	ASSERT(memcmp(src, payload, len) == 0);

	/* in place */
	ASSERT(ws_unmask_ascii(src, src, len, key, offset) == want_ascii);
	ASSERT(memcmp(src, want, len) == 0);

	/* in two pieces, the second at its own offset, as payloads arrive */
	memcpy(src, payload, len);
	bool a1 = ws_unmask_ascii(dst, src, split, key, offset);
	bool a2 = ws_unmask_ascii(dst + split, src + split, len - split, key, offset + split);
	ASSERT((a1 && a2) == want_ascii);
	ASSERT(memcmp(dst, want, len) == 0);

	/* masking is its own inverse */
	ws_mask(dst, len, key, offset);
	ASSERT(memcmp(dst, payload, len) == 0);

	free(sbuf);
	free(dbuf);
	free(want);
}

/* ------------------------------------------------------------------ close */

static bool ref_code_receivable(uint32_t c)
{
	/* RFC 6455 §7.4.1 and the IANA registry: 1000-1003, 1007-1014; 3000-4999. 1004,
	 * 1005, 1006 and 1015 never arrive in a close frame; 1016-2999 are unassigned. */
	static const uint16_t defined[] = { 1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014 };
	for (size_t i = 0; i < ARRAY_LEN(defined); i++)
		if (c == defined[i])
			return true;
	return c >= 3000 && c <= 4999;
}

static void fuzz_close(const uint8_t *p, size_t n)
{
	uint8_t *q = fz_dup(p, n);
	uint16_t code = 0xFFFF;
	const uint8_t *reason = NULL;
	size_t reason_len = 99;
	int r = ws_close_payload_parse(q, n, &code, &reason, &reason_len);

	int want;
	if (n == 0)
		want = FZ_CLOSE_OK;
	else if (n == 1 || n > WS_CONTROL_PAYLOAD_BYTES_MAX)
		want = WS_CLOSE_PROTOCOL_ERROR;
	else if (!ref_code_receivable((uint32_t)p[0] << 8 | p[1]))
		want = WS_CLOSE_PROTOCOL_ERROR;
	else if (!ref_utf8_valid(p + 2, n - 2))
		want = WS_CLOSE_INVALID_DATA;
	else
		want = FZ_CLOSE_OK;
	ASSERT(r == want);
	if (r == FZ_CLOSE_OK && n > 0) {
		ASSERT(code == ((uint32_t)p[0] << 8 | p[1]));
		ASSERT(reason == q + 2 && reason_len == n - 2);
	} else {
		ASSERT(code == 0 && reason_len == 0);
	}
	free(q);

	if (n >= 4) {
		uint32_t c32 = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
		uint32_t c16 = (uint32_t)p[0] << 8 | p[1];
		ASSERT(ws_close_code_is_valid_received(c32) == ref_code_receivable(c32));
		ASSERT(ws_close_code_is_valid_received(c16) == ref_code_receivable(c16));
		ASSERT(ws_close_code_is_sendable(c16) == ref_code_receivable(c16));
	}

	/* the encoder, for a code the relay may send and the rest as the reason */
	if (n >= 2) {
		uint16_t c = (uint16_t)(p[0] << 8 | p[1]);
		if (!ref_code_receivable(c))
			c = WS_CLOSE_NORMAL + (uint16_t)(c % 4); /* 1000..1003 */
		const uint8_t *why = p + 2;
		size_t wn = n - 2;
		uint8_t *out = malloc(WS_CONTROL_PAYLOAD_BYTES_MAX);
		if (!out)
			abort();
		size_t m = ws_close_payload_encode(out, c, (const char *)why, wn);
		ASSERT(m >= 2 && m <= WS_CONTROL_PAYLOAD_BYTES_MAX);
		ASSERT(out[0] == (uint8_t)(c >> 8) && out[1] == (uint8_t)c);
		size_t kept = m - 2;
		ASSERT(memcmp(out + 2, why, kept) == 0);
		if (wn <= WS_CLOSE_REASON_BYTES_MAX)
			ASSERT(kept == wn);
		else
			ASSERT(kept <= WS_CLOSE_REASON_BYTES_MAX);
		if (ref_utf8_valid(why, wn)) {
			/* a character cut in two is dropped whole: at most 3 of its bytes */
			ASSERT(kept + 3 >= MIN(wn, (size_t)WS_CLOSE_REASON_BYTES_MAX));
			uint16_t back;
			const uint8_t *rs;
			size_t rl;
			ASSERT(ws_close_payload_parse(out, m, &back, &rs, &rl) == FZ_CLOSE_OK);
			ASSERT(back == c && rl == kept);
		}
		free(out);
		uint8_t none[2];
		ASSERT(ws_close_payload_encode(none, 0, NULL, 0) == 0); /* code 0: no payload */
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	switch (data[0] % 3) {
	case 0:
		fuzz_header((data[0] & 0x4) != 0, data + 1, size - 1);
		break;
	case 1:
		/* at every level of instructions this CPU has, the widest last (as it stays) */
		for (enum simd_level l = SIMD_WORD, most = simd_detect(); l <= most; l++) {
			simd_select(l);
			fuzz_unmask(data + 1, size - 1);
		}
		break;
	default:
		fuzz_close(data + 1, size - 1);
		break;
	}
	return 0;
}
