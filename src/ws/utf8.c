/*
 * utf8.c - incremental, fail-fast UTF-8 validation (RFC 3629 §4 grammar).
 *
 * The state is a packed description of what the next byte must be:
 *
 *   bits 0..1    continuation bytes still expected (0 = on a code point boundary)
 *   bits 8..15   lowest byte value accepted as the next continuation byte
 *   bits 16..23  highest byte value accepted as the next continuation byte
 *
 * Only the first continuation byte after a lead byte ever has a range narrower than
 * 0x80..0xBF; narrowing it is what rejects overlongs (E0, F0), surrogates (ED) and
 * code points above U+10FFFF (F4). The poisoned state has bits set above bit 23, so
 * it can never be mistaken for a packed one.
 */
#include "ws/utf8.h"

#include <string.h>

#include "core/common.h"
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define UTF8_CONT_LO 0x80u
#define UTF8_CONT_HI 0xBFu
#define UTF8_REJECT 0xFFFFFFFFu
#define UTF8_NEED_MASK 0x3u
#define UTF8_LO_SHIFT 8
#define UTF8_HI_SHIFT 16
#define UTF8_ASCII_WORD_MASK 0x8080808080808080ull

static inline uint32_t pack(uint32_t need, uint32_t lo, uint32_t hi)
{
	return need | (lo << UTF8_LO_SHIFT) | (hi << UTF8_HI_SHIFT);
}

/* A state the caller hands back must be one this file produced. */
static bool state_well_formed(uint32_t s)
{
	if (s == UTF8_STATE_INIT || s == UTF8_REJECT)
		return true;
	uint32_t need = s & UTF8_NEED_MASK;
	uint32_t lo = (s >> UTF8_LO_SHIFT) & 0xFFu;
	uint32_t hi = (s >> UTF8_HI_SHIFT) & 0xFFu;
	return need != 0 && (s & 0xFF0000FCu) == 0 && lo >= UTF8_CONT_LO && hi <= UTF8_CONT_HI &&
	       lo <= hi;
}

/* Lead byte on a code point boundary: how many continuation bytes follow, and the
 * range allowed for the first of them (RFC 3629 §4, UTF8-2 .. UTF8-4). */
static uint32_t step_lead(uint8_t b)
{
	if (b < 0x80)
		return UTF8_STATE_INIT;
	if (b < 0xC2) /* stray continuation byte, or C0/C1 (overlong 2-byte forms) */
		return UTF8_REJECT;
	if (b < 0xE0)
		return pack(1, UTF8_CONT_LO, UTF8_CONT_HI);
	if (b == 0xE0) /* E0 80..9F would be overlong */
		return pack(2, 0xA0, UTF8_CONT_HI);
	if (b == 0xED) /* ED A0..BF would be a surrogate, U+D800..U+DFFF */
		return pack(2, UTF8_CONT_LO, 0x9F);
	if (b < 0xF0)
		return pack(2, UTF8_CONT_LO, UTF8_CONT_HI);
	if (b == 0xF0) /* F0 80..8F would be overlong */
		return pack(3, 0x90, UTF8_CONT_HI);
	if (b < 0xF4)
		return pack(3, UTF8_CONT_LO, UTF8_CONT_HI);
	if (b == 0xF4) /* F4 90..BF would be above U+10FFFF */
		return pack(3, UTF8_CONT_LO, 0x8F);
	return UTF8_REJECT; /* F5..FF: above U+10FFFF or never valid */
}

static uint32_t step(uint32_t s, uint8_t b)
{
	uint32_t need = s & UTF8_NEED_MASK;
	if (need == 0)
		return step_lead(b);
	uint32_t lo = (s >> UTF8_LO_SHIFT) & 0xFFu;
	uint32_t hi = (s >> UTF8_HI_SHIFT) & 0xFFu;
	if (b < lo || b > hi)
		return UTF8_REJECT;
	if (need == 1)
		return UTF8_STATE_INIT;
	return pack(need - 1, UTF8_CONT_LO, UTF8_CONT_HI);
}

bool utf8_feed(uint32_t *state, const uint8_t *p, size_t n)
{
	uint32_t s = *state;
	ASSERT(state_well_formed(s));
	ASSERT(p != NULL || n == 0);
	if (s == UTF8_REJECT)
		return false;

	size_t i = 0;
	while (i < n) {
		if (s == UTF8_STATE_INIT) {
			/* Text is mostly ASCII: skip whole vectors / words of it between code points. */
#if defined(__SSE2__)
			while (n - i >= 16) {
				__m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
				if (_mm_movemask_epi8(v))
					break;
				i += 16;
			}
#endif
			while (n - i >= sizeof(uint64_t)) {
				uint64_t w;
				memcpy(&w, p + i, sizeof(w));
				if (w & UTF8_ASCII_WORD_MASK)
					break;
				i += sizeof(w);
			}
			while (i < n && p[i] < 0x80)
				i++;
			if (i == n)
				break;
		}
		s = step(s, p[i++]);
		if (s == UTF8_REJECT)
			break;
	}
	*state = s;
	return s != UTF8_REJECT;
}

bool utf8_is_complete(uint32_t state)
{
	ASSERT(state_well_formed(state));
	return state == UTF8_STATE_INIT;
}

bool utf8_valid(const uint8_t *p, size_t n)
{
	uint32_t s = UTF8_STATE_INIT;
	return utf8_feed(&s, p, n) && utf8_is_complete(s);
}
