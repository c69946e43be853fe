/*
 * ws_frame.c - RFC 6455 §5.2 frame headers, §5.3 masking, §5.5.1 / §7.4 close payloads.
 */
#include "ws/ws_frame.h"

#include <string.h>

#include "core/common.h"
#include "core/simd.h"
#include "ws/utf8.h"
#if SIMD_HAVE_AVX2
#include <immintrin.h>
#endif

#define WS_B0_FIN 0x80u
#define WS_B0_RSV 0x70u
#define WS_B0_OPCODE 0x0Fu
#define WS_B1_MASK 0x80u
#define WS_B1_LEN 0x7Fu
#define WS_LEN7_MAX 125u        /* largest length carried in the 7-bit field */
#define WS_LEN7_EXT16 126u      /* 7-bit field value: 16-bit length follows */
#define WS_LEN7_EXT64 127u      /* 7-bit field value: 64-bit length follows */
#define WS_LEN16_MAX 0xFFFFu
#define WS_LEN64_MSB 0x80u      /* in the first byte of the 64-bit length */
#define WS_EXT16_BYTES 2u
#define WS_EXT64_BYTES 8u
#define WS_MASK_KEY_BYTES 4u
#define WS_BASE_HEADER_BYTES 2u
#define WS_CLOSE_CODE_BYTES 2u

static bool opcode_is_control(uint8_t op)
{
	return (op & 0x8u) != 0;
}

static bool opcode_is_known(uint8_t op)
{
	return op == WS_OP_CONTINUATION || op == WS_OP_TEXT || op == WS_OP_BINARY ||
	       op == WS_OP_CLOSE || op == WS_OP_PING || op == WS_OP_PONG;
}

/*
 * Checks run as soon as the bytes they look at are present, so a violation is
 * reported even while the rest of the header is still in flight: every check is a
 * predicate on bytes already seen, so the verdict never depends on how the header
 * was split.
 */
int ws_frame_header_parse(const uint8_t *p, size_t n, bool require_masked,
			  struct ws_frame_header *out)
{
	ASSERT(p != NULL || n == 0);
	ASSERT(out != NULL);
	if (n < 1)
		return 0;

	uint8_t b0 = p[0];
	uint8_t op = b0 & WS_B0_OPCODE;
	bool fin = (b0 & WS_B0_FIN) != 0;
	if (b0 & WS_B0_RSV)
		return -WS_CLOSE_PROTOCOL_ERROR;
	if (!opcode_is_known(op))
		return -WS_CLOSE_PROTOCOL_ERROR;
	if (opcode_is_control(op) && !fin) /* §5.5: control frames are never fragmented */
		return -WS_CLOSE_PROTOCOL_ERROR;
	if (n < WS_BASE_HEADER_BYTES)
		return 0;

	uint8_t b1 = p[1];
	bool masked = (b1 & WS_B1_MASK) != 0;
	uint8_t len7 = b1 & WS_B1_LEN;
	if (masked != require_masked) /* §5.1: clients mask, servers never do */
		return -WS_CLOSE_PROTOCOL_ERROR;
	if (opcode_is_control(op) && len7 > WS_CONTROL_PAYLOAD_BYTES_MAX)
		return -WS_CLOSE_PROTOCOL_ERROR;

	size_t pos = WS_BASE_HEADER_BYTES;
	uint64_t len;
	if (len7 <= WS_LEN7_MAX) {
		len = len7;
	} else if (len7 == WS_LEN7_EXT16) {
		if (n < pos + WS_EXT16_BYTES)
			return 0;
		len = ((uint64_t)p[pos] << 8) | p[pos + 1];
		if (len <= WS_LEN7_MAX) /* §5.2: the minimal number of bytes MUST be used */
			return -WS_CLOSE_PROTOCOL_ERROR;
		pos += WS_EXT16_BYTES;
	} else {
		if (n > pos && (p[pos] & WS_LEN64_MSB))
			return -WS_CLOSE_PROTOCOL_ERROR;
		if (n < pos + WS_EXT64_BYTES)
			return 0;
		len = 0;
		for (size_t i = 0; i < WS_EXT64_BYTES; i++)
			len = (len << 8) | p[pos + i];
		if (len <= WS_LEN16_MAX)
			return -WS_CLOSE_PROTOCOL_ERROR;
		pos += WS_EXT64_BYTES;
	}

	if (masked) {
		if (n < pos + WS_MASK_KEY_BYTES)
			return 0;
		memcpy(out->mask_key, p + pos, WS_MASK_KEY_BYTES);
		pos += WS_MASK_KEY_BYTES;
	} else {
		memset(out->mask_key, 0, sizeof(out->mask_key));
	}
	ASSERT(pos <= WS_FRAME_HEADER_BYTES_MAX);

	out->fin = fin;
	out->opcode = op;
	out->masked = masked;
	out->header_len = (uint8_t)pos;
	out->payload_len = len;
	return (int)pos;
}

size_t ws_frame_header_encode(uint8_t *out, bool fin, uint8_t opcode, uint64_t payload_len,
			      const uint8_t *mask_key)
{
	/* Everything here is the relay's own choice, so a bad argument is a bug, not input. */
	ASSERT(out != NULL);
	ASSERT(opcode_is_known(opcode));
	ASSERT(!opcode_is_control(opcode) || (fin && payload_len <= WS_CONTROL_PAYLOAD_BYTES_MAX));
	ASSERT(payload_len < (1ull << 63));

	size_t pos = 0;
	out[pos++] = (uint8_t)((fin ? WS_B0_FIN : 0u) | opcode);
	uint8_t mask_bit = mask_key ? WS_B1_MASK : 0u;
	if (payload_len <= WS_LEN7_MAX) {
		out[pos++] = (uint8_t)(mask_bit | payload_len);
	} else if (payload_len <= WS_LEN16_MAX) {
		out[pos++] = (uint8_t)(mask_bit | WS_LEN7_EXT16);
		out[pos++] = (uint8_t)(payload_len >> 8);
		out[pos++] = (uint8_t)payload_len;
	} else {
		out[pos++] = (uint8_t)(mask_bit | WS_LEN7_EXT64);
		for (int shift = 56; shift >= 0; shift -= 8)
			out[pos++] = (uint8_t)(payload_len >> shift);
	}
	if (mask_key) {
		memcpy(out + pos, mask_key, WS_MASK_KEY_BYTES);
		pos += WS_MASK_KEY_BYTES;
	}
	ASSERT(pos <= WS_FRAME_HEADER_BYTES_MAX);
	return pos;
}

/* Below this many bytes the word loop's setup costs more than it saves. */
#define WS_MASK_WORD_MIN_BYTES 16u

#if SIMD_HAVE_AVX2
/* The key (rotated to src[0]) repeated over n bytes, a multiple of 4: one vector's worth. */
static inline void repeat_key(uint8_t *out, size_t n, const uint8_t key[4])
{
	for (size_t j = 0; j < n; j++)
		out[j] = key[j & 3u];
}

/* 32 bytes at a time while 32 remain: XOR into dst, OR the results into *high's top
 * bits. Returns how many bytes it did (a multiple of 32, so the key stays in phase). */
__attribute__((target("avx2"))) static size_t unmask_avx2(uint8_t *dst, const uint8_t *src, size_t n,
							   const uint8_t key[4], uint64_t *high)
{
	uint8_t k32[32];
	repeat_key(k32, sizeof k32, key);
	__m256i kv = _mm256_loadu_si256((const __m256i *)(const void *)k32);
	__m256i acc = _mm256_setzero_si256();
	size_t i = 0;
	for (; n - i >= 32; i += 32) {
		__m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(const void *)(src + i)), kv);
		_mm256_storeu_si256((__m256i *)(void *)(dst + i), v);
		acc = _mm256_or_si256(acc, v);
	}
	*high |= (uint32_t)_mm256_movemask_epi8(acc);
	return i;
}

/* The same 16 bytes at a time, from i. */
static size_t unmask_sse2(uint8_t *dst, const uint8_t *src, size_t n, size_t i, const uint8_t key[4],
			  uint64_t *high)
{
	uint8_t k16[16];
	repeat_key(k16, sizeof k16, key);
	__m128i kv = _mm_loadu_si128((const __m128i *)(const void *)k16);
	__m128i acc = _mm_setzero_si128();
	for (; n - i >= 16; i += 16) {
		__m128i v = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(const void *)(src + i)), kv);
		_mm_storeu_si128((__m128i *)(void *)(dst + i), v);
		acc = _mm_or_si128(acc, v);
	}
	*high |= (uint64_t)_mm_movemask_epi8(acc);
	return i;
}
#endif

bool ws_unmask_ascii(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t mask_key[4], uint64_t offset)
{
	ASSERT((dst != NULL && src != NULL) || n == 0);
	ASSERT(mask_key != NULL);
	ASSERT(dst == src || dst + n <= src || src + n <= dst); /* in place, or apart */

	/* Rotate the key so that key[0] applies to src[0]. */
	uint8_t key[WS_MASK_KEY_BYTES];
	for (size_t i = 0; i < WS_MASK_KEY_BYTES; i++)
		key[i] = mask_key[(offset + i) & 3u];

	/* High bits of every output byte, ORed: zero iff all of it is ASCII. */
	uint64_t high = 0;
	size_t i = 0;
#if SIMD_HAVE_AVX2
	/* the widest chosen at start-up (core/simd.h), the narrower ones for what is left */
	enum simd_level level = simd_selected();
	if (level >= SIMD_AVX2 && n >= SIMD_AVX2_MIN_BYTES)
		i = unmask_avx2(dst, src, n, key, &high);
	if (level >= SIMD_SSE2 && n - i >= 16)
		i = unmask_sse2(dst, src, n, i, key, &high);
#endif
	if (n - i >= WS_MASK_WORD_MIN_BYTES) {
		/* The key repeated twice in memory order, whatever the host's byte order. */
		uint64_t k64;
		memcpy(&k64, key, WS_MASK_KEY_BYTES);
		memcpy((uint8_t *)&k64 + WS_MASK_KEY_BYTES, key, WS_MASK_KEY_BYTES);
		uint64_t acc = 0;
		for (; n - i >= sizeof(k64); i += sizeof(k64)) {
			uint64_t w;
			memcpy(&w, src + i, sizeof(w));
			w ^= k64;
			memcpy(dst + i, &w, sizeof(w));
			acc |= w;
		}
		high |= acc & UINT64_C(0x8080808080808080);
	}
	/* i is a multiple of 8 here (of 16 or 32 after a vector loop), so key[i & 3] stays in phase. */
	for (; i < n; i++) {
		dst[i] = src[i] ^ key[i & 3u];
		high |= dst[i] & 0x80u;
	}
	return high == 0;
}

void ws_mask(uint8_t *p, size_t n, const uint8_t mask_key[4], uint64_t offset)
{
	(void)ws_unmask_ascii(p, p, n, mask_key, offset);
}

bool ws_close_code_is_valid_received(uint32_t code)
{
	/* §7.4.1: 1004 reserved, 1005/1006 never on the wire, 1015 TLS-only; 1012-1014 are
	 * registered with IANA; 1016-2999 unassigned; 3000-4999 libraries and apps. */
	if (code >= 1000 && code <= 1003)
		return true;
	if (code >= 1007 && code <= 1014)
		return true;
	return code >= 3000 && code <= 4999;
}

bool ws_close_code_is_sendable(uint32_t code)
{
	return ws_close_code_is_valid_received(code);
}

int ws_close_payload_parse(const uint8_t *p, size_t n, uint16_t *code,
			   const uint8_t **reason, size_t *reason_len)
{
	ASSERT(p != NULL || n == 0);
	ASSERT(code != NULL && reason != NULL && reason_len != NULL);
	*code = 0;
	*reason = p;
	*reason_len = 0;
	if (n == 0) /* §5.5.1: the body is optional; no status code was given */
		return 0;
	/* A close frame never carries more than a control frame can; 1 byte cannot hold a
	 * status code (§5.5.1: the body, if any, starts with a 2-byte code). */
	if (n < WS_CLOSE_CODE_BYTES || n > WS_CONTROL_PAYLOAD_BYTES_MAX)
		return WS_CLOSE_PROTOCOL_ERROR;
	uint16_t c = (uint16_t)((p[0] << 8) | p[1]);
	if (!ws_close_code_is_valid_received(c))
		return WS_CLOSE_PROTOCOL_ERROR;
	if (!utf8_valid(p + WS_CLOSE_CODE_BYTES, n - WS_CLOSE_CODE_BYTES))
		return WS_CLOSE_INVALID_DATA;
	*code = c;
	*reason = p + WS_CLOSE_CODE_BYTES;
	*reason_len = n - WS_CLOSE_CODE_BYTES;
	return 0;
}

static bool utf8_is_continuation(uint8_t b)
{
	return (b & 0xC0u) == 0x80u;
}

size_t ws_close_payload_encode(uint8_t *out, uint16_t code, const char *reason, size_t reason_len)
{
	ASSERT(out != NULL);
	ASSERT(reason != NULL || reason_len == 0);
	if (code == 0)
		return 0;
	ASSERT(ws_close_code_is_sendable(code));

	const uint8_t *r = (const uint8_t *)reason;
	if (reason_len > WS_CLOSE_REASON_BYTES_MAX) {
		/* Cut on a code point boundary: a reason chopped mid character is invalid
		 * UTF-8, and a strict peer would answer our close with 1007. */
		reason_len = WS_CLOSE_REASON_BYTES_MAX;
		while (reason_len > 0 && utf8_is_continuation(r[reason_len]))
			reason_len--;
	}
	out[0] = (uint8_t)(code >> 8);
	out[1] = (uint8_t)code;
	if (reason_len)
		memcpy(out + WS_CLOSE_CODE_BYTES, r, reason_len);
	return WS_CLOSE_CODE_BYTES + reason_len;
}
