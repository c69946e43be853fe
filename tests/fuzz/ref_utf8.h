/*
 * ref_utf8.h - a plain UTF-8 decoder for the fuzz targets' oracles, written to be
 * obviously right rather than fast, and differently from src/ws/utf8.c (which works on
 * byte ranges per lead byte): it decodes each sequence to its code point with
 * arithmetic and then applies RFC 3629's three rules to the number:
 *
 *   - shortest form: a code point needing fewer bytes must use them (no overlongs);
 *   - no surrogates, U+D800..U+DFFF;
 *   - nothing above U+10FFFF.
 *
 * Header-only, static functions: each target that includes it gets its own copy.
 */
#ifndef PYRELAY_FUZZ_REF_UTF8_H
#define PYRELAY_FUZZ_REF_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define REF_UTF8_MAX_CP 0x10FFFFu
#define REF_UTF8_SURR_LO 0xD800u
#define REF_UTF8_SURR_HI 0xDFFFu
#define REF_UTF8_SEQ_MAX 4u

enum ref_utf8 {
	REF_UTF8_OK,        /* a whole, valid sequence */
	REF_UTF8_BAD,       /* can never be valid, whatever follows */
	REF_UTF8_TRUNCATED, /* the input ends inside a sequence whose bytes so far fit */
};

/* Sequence length announced by a lead byte, or 0 when b cannot start a sequence. */
static inline size_t ref_utf8_lead_len(uint8_t b)
{
	if (b <= 0x7F)
		return 1; /* 0xxxxxxx */
	if (b >= 0xC0 && b <= 0xDF)
		return 2; /* 110xxxxx */
	if (b >= 0xE0 && b <= 0xEF)
		return 3; /* 1110xxxx */
	if (b >= 0xF0 && b <= 0xF7)
		return 4; /* 11110xxx */
	return 0;        /* 10xxxxxx (continuation) or 11111xxx */
}

/* The smallest code point that needs len bytes. */
static inline uint32_t ref_utf8_min_cp(size_t len)
{
	return len == 1 ? 0u : len == 2 ? 0x80u : len == 3 ? 0x800u : 0x10000u;
}

static inline bool ref_utf8_scalar_ok(uint32_t cp, size_t len)
{
	if (cp < ref_utf8_min_cp(len))
		return false; /* overlong */
	if (cp >= REF_UTF8_SURR_LO && cp <= REF_UTF8_SURR_HI)
		return false;
	return cp <= REF_UTF8_MAX_CP;
}

/* Decode one whole sequence of exactly len bytes (len from its lead byte). */
static inline bool ref_utf8_decode_seq(const uint8_t *p, size_t len, uint32_t *cp)
{
	static const uint8_t lead_bits[] = { 0, 0x7F, 0x1F, 0x0F, 0x07 };
	uint32_t v = p[0] & lead_bits[len];
	for (size_t k = 1; k < len; k++) {
		if ((p[k] & 0xC0) != 0x80)
			return false;
		v = (v << 6) | (p[k] & 0x3Fu);
	}
	*cp = v;
	return ref_utf8_scalar_ok(v, len);
}

/*
 * A truncated sequence p[0..have) (have < len) fits when some continuation bytes
 * complete it to a valid scalar. Tried by brute force: every continuation value for the
 * first missing byte, and both extremes (0x80, 0xBF) for any later missing byte. (RFC
 * 3629's grammar only ever narrows the first continuation byte, but the search does not
 * rely on that for the first missing byte.)
 */
static inline bool ref_utf8_completable(const uint8_t *p, size_t have, size_t len)
{
	uint8_t seq[REF_UTF8_SEQ_MAX];
	uint32_t cp;
	for (size_t k = 0; k < have; k++)
		seq[k] = p[k];
	for (size_t k = 1; k < have; k++)
		if ((seq[k] & 0xC0) != 0x80)
			return false;
	size_t missing = len - have;
	unsigned later = missing > 1 ? 1u << (missing - 1) : 1u;
	for (unsigned first = 0x80; first <= 0xBF; first++) {
		for (unsigned m = 0; m < later; m++) {
			seq[have] = (uint8_t)first;
			for (size_t k = have + 1; k < len; k++)
				seq[k] = (m >> (k - have - 1)) & 1u ? 0xBF : 0x80;
			if (ref_utf8_decode_seq(seq, len, &cp))
				return true;
		}
	}
	return false;
}

/*
 * Walk p[0..n) sequence by sequence. Returns REF_UTF8_OK when it is all valid and ends
 * on a boundary, REF_UTF8_TRUNCATED when it is valid so far but ends inside a sequence
 * that can still be completed, REF_UTF8_BAD otherwise. *ncp counts the whole code
 * points decoded (may be NULL).
 */
static inline enum ref_utf8 ref_utf8_check(const uint8_t *p, size_t n, size_t *ncp)
{
	size_t i = 0, count = 0;
	enum ref_utf8 r = REF_UTF8_OK;
	while (i < n) {
		size_t len = ref_utf8_lead_len(p[i]);
		uint32_t cp;
		if (len == 0) {
			r = REF_UTF8_BAD;
			break;
		}
		if (n - i < len) {
			r = ref_utf8_completable(p + i, n - i, len) ? REF_UTF8_TRUNCATED : REF_UTF8_BAD;
			break;
		}
		if (!ref_utf8_decode_seq(p + i, len, &cp)) {
			r = REF_UTF8_BAD;
			break;
		}
		count++;
		i += len;
	}
	if (ncp)
		*ncp = count;
	return r;
}

static inline bool ref_utf8_valid(const uint8_t *p, size_t n)
{
	return ref_utf8_check(p, n, NULL) == REF_UTF8_OK;
}

#endif
