/*
 * fuzz_utf8_ref.c - differential target: every UTF-8 check in the relay against the
 * plain decoder in ref_utf8.h (decode to a code point, then RFC 3629's rules on the
 * number). fuzz_utf8.c already checks ws/utf8.c against a range-based reference; this
 * one uses the most literal reading of the RFC, splits the stream where the fuzzer
 * says, moves it to every alignment the vector paths care about, and covers the other
 * places that decide "is this text?":
 *
 *   - utf8_valid (whole buffer, SSE2 / 64-bit ASCII skips included);
 *   - utf8_feed / utf8_is_complete over pieces cut at fuzzer-chosen points: a feed
 *     fails exactly in the piece where the prefix stops being completable, a poisoned
 *     state stays poisoned, and the end state is complete exactly for valid text;
 *   - for short inputs, byte by byte: the failing byte is the first one after which
 *     the reference calls the prefix hopeless;
 *   - ws_unmask_ascii's ASCII verdict (the WebSocket reader skips the UTF-8 check when
 *     it is true) with an all-zero key: output unchanged, verdict true exactly when no
 *     byte has its high bit set, and an ASCII verdict is always valid text;
 *   - json_valid on the text as a JSON string (envelope/json.c has its own UTF-8
 *     reader): bytes JSON forbids unescaped in a string are replaced first.
 *
 * Input: byte 0 low 4 bits: alignment of the text in its buffer (0..15); bytes 1-4:
 * four cut points, each as a fraction (b/256) of the text length; the rest is the text.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "envelope/json.h"
#include "ref_utf8.h"
#include "ws/utf8.h"
#include "ws/ws_frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_HEAD_BYTES 5
#define FZ_CUTS 4
#define FZ_ALIGN_MASK 0x0Fu
/* Inputs up to this long are also fed byte by byte against every prefix's verdict. */
#define FZ_BYTEWISE_MAX 256

static int cmp_size(const void *a, const void *b)
{
	size_t x = *(const size_t *)a, y = *(const size_t *)b;
	return x < y ? -1 : x > y;
}

static void check_pieces(const uint8_t *p, size_t n, const uint8_t cut_frac[FZ_CUTS], enum ref_utf8 whole)
{
	size_t cuts[FZ_CUTS + 2];
	cuts[0] = 0;
	for (size_t k = 0; k < FZ_CUTS; k++)
		cuts[k + 1] = (size_t)(((uint64_t)cut_frac[k] * (n + 1)) >> 8);
	cuts[FZ_CUTS + 1] = n;
	qsort(cuts + 1, FZ_CUTS, sizeof cuts[0], cmp_size);

	uint32_t s = UTF8_STATE_INIT;
	bool failed = false;
	for (size_t k = 0; k + 1 < ARRAY_LEN(cuts); k++) {
		size_t a = cuts[k], b = cuts[k + 1];
		bool ok = utf8_feed(&s, p + a, b - a);
		if (failed) {
			ASSERT(!ok); /* poisoned for good, even by an empty piece */
			continue;
		}
		if (!ok) {
			failed = true;
			/* not too late: everything before this piece could still become text */
			ASSERT(ref_utf8_check(p, a, NULL) != REF_UTF8_BAD);
			/* not too early: with this piece it cannot */
			ASSERT(ref_utf8_check(p, b, NULL) == REF_UTF8_BAD);
		}
	}
	if (failed) {
		ASSERT(whole == REF_UTF8_BAD);
		ASSERT(!utf8_feed(&s, (const uint8_t *)"a", 1));
	} else {
		ASSERT(whole != REF_UTF8_BAD);
		ASSERT(utf8_is_complete(s) == (whole == REF_UTF8_OK));
	}
}

static void check_bytewise(const uint8_t *p, size_t n)
{
	uint32_t s = UTF8_STATE_INIT;
	for (size_t i = 0; i < n; i++) {
		bool ok = utf8_feed(&s, p + i, 1);
		bool hopeless = ref_utf8_check(p, i + 1, NULL) == REF_UTF8_BAD;
		ASSERT(ok == !hopeless);
		if (!ok)
			return;
		ASSERT(utf8_is_complete(s) == (ref_utf8_check(p, i + 1, NULL) == REF_UTF8_OK));
	}
}

static void check_ascii_verdict(const uint8_t *p, size_t n, enum ref_utf8 whole)
{
	static const uint8_t zero_key[4];
	uint8_t *out = malloc(n ? n : 1);
	if (!out)
		abort();
	bool high = false;
	for (size_t i = 0; i < n; i++)
		high |= (p[i] & 0x80) != 0;
	bool ascii = ws_unmask_ascii(out, p, n, zero_key, 0);
	ASSERT(memcmp(out, p, n) == 0);
	ASSERT(ascii == !high);
	if (ascii)
		ASSERT(whole == REF_UTF8_OK);
	free(out);
}

static void check_json_string(const uint8_t *p, size_t n)
{
	uint8_t *q = malloc(n + 2);
	if (!q)
		abort();
	q[0] = '"';
	for (size_t i = 0; i < n; i++) {
		uint8_t c = p[i];
		q[i + 1] = (c < 0x20 || c == '"' || c == '\\') ? 'a' : c;
	}
	q[n + 1] = '"';
	ASSERT(json_valid(span_make(q, n + 2)) == ref_utf8_valid(q + 1, n));
	free(q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < FZ_HEAD_BYTES)
		return 0;
	size_t align = data[0] & FZ_ALIGN_MASK;
	const uint8_t *cut_frac = data + 1;
	size_t n = size - FZ_HEAD_BYTES;

	/* exactly sized, so a read past the end is an ASan report at any alignment */
	uint8_t *buf = malloc(align + n ? align + n : 1);
	if (!buf)
		abort();
	uint8_t *p = buf + align;
	memcpy(p, data + FZ_HEAD_BYTES, n);

	enum ref_utf8 whole = ref_utf8_check(p, n, NULL);
	ASSERT(utf8_valid(p, n) == (whole == REF_UTF8_OK));
	check_pieces(p, n, cut_frac, whole);
	if (n <= FZ_BYTEWISE_MAX)
		check_bytewise(p, n);
	check_ascii_verdict(p, n, whole);
	check_json_string(p, n);
	free(buf);
	return 0;
}
