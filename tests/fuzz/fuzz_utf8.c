/*
 * fuzz_utf8.c - the incremental validator against itself (whole buffer, byte at a
 * time, random pieces) and against an independent reference written differently:
 * the reference decides after each byte whether the bits seen so far can still end
 * as a Unicode scalar value in its shortest form, so it also pins down the exact byte
 * at which a fail-fast validator must stop.
 *
 * Input: byte 0 seeds the piece sizes, the rest is the text.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "ws/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REF_SURROGATE_LO 0xD800u
#define REF_SURROGATE_HI 0xDFFFu
#define REF_UNICODE_MAX 0x10FFFFu

/* Can some code point in [lo, hi] be the value of a sequence of this length? */
static bool ref_range_possible(uint32_t lo, uint32_t hi, size_t len)
{
	static const uint32_t shortest_min[] = { 0, 0, 0x80, 0x800, 0x10000 };
	uint32_t min = shortest_min[len];
	if (lo < min)
		lo = min;
	if (hi > REF_UNICODE_MAX)
		hi = REF_UNICODE_MAX;
	if (lo > hi)
		return false;
	/* [lo, hi] minus the surrogates is empty only if it lies within them */
	return !(lo >= REF_SURROGATE_LO && hi <= REF_SURROGATE_HI);
}

/*
 * Index of the first byte after which the input can no longer be valid UTF-8, or n if
 * every prefix is still a prefix of some valid text. *complete: ends on a boundary.
 */
static size_t ref_first_bad(const uint8_t *p, size_t n, bool *complete)
{
	size_t i = 0;
	*complete = true;
	while (i < n) {
		uint8_t b = p[i];
		size_t len;
		uint32_t bits;
		if (b < 0x80) {
			i++;
			continue;
		}
		if ((b & 0xE0) == 0xC0) {
			len = 2;
			bits = b & 0x1F;
		} else if ((b & 0xF0) == 0xE0) {
			len = 3;
			bits = b & 0x0F;
		} else if ((b & 0xF8) == 0xF0) {
			len = 4;
			bits = b & 0x07;
		} else {
			return i;
		}
		for (size_t k = 1;; k++) {
			unsigned rest = (unsigned)(6 * (len - k));
			uint32_t lo = bits << rest, hi = lo | ((1u << rest) - 1);
			if (!ref_range_possible(lo, hi, len))
				return i + k - 1;
			if (k == len)
				break;
			if (i + k == n) {
				*complete = false;
				return n;
			}
			uint8_t c = p[i + k];
			if ((c & 0xC0) != 0x80)
				return i + k;
			bits = (bits << 6) | (c & 0x3F);
		}
		i += len;
	}
	return n;
}

static uint32_t rng(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint32_t seed = 0x9E3779B9u ^ data[0];
	const uint8_t *p = data + 1;
	size_t n = size - 1;

	bool ref_complete;
	size_t bad = ref_first_bad(p, n, &ref_complete);
	bool ref_ok = bad == n && ref_complete;

	bool whole = utf8_valid(p, n);
	ASSERT(whole == ref_ok);

	/* byte at a time: stops exactly at the reference's first bad byte */
	uint32_t s = UTF8_STATE_INIT;
	size_t at = n;
	for (size_t i = 0; i < n; i++) {
		if (!utf8_feed(&s, p + i, 1)) {
			at = i;
			break;
		}
	}
	ASSERT(at == bad);
	if (at < n) {
		/* poisoned for good */
		ASSERT(!utf8_feed(&s, (const uint8_t *)"a", 1));
		ASSERT(!utf8_is_complete(s));
	} else {
		ASSERT(utf8_is_complete(s) == ref_complete);
	}

	/* random pieces, including empty ones */
	s = UTF8_STATE_INIT;
	bool ok = true;
	size_t i = 0;
	while (i < n) {
		size_t k = rng(&seed) % 19;
		if (k > n - i)
			k = n - i;
		bool r = utf8_feed(&s, p + i, k);
		if (!r) {
			ok = false;
			/* the piece that failed contains the first bad byte */
			ASSERT(bad >= i && bad < i + k);
			break;
		}
		i += k;
	}
	ASSERT((ok && utf8_is_complete(s)) == ref_ok);
	return 0;
}
