/*
 * json.c - strict RFC 8259 scanner (see json.h for the contract).
 *
 * One iterative state machine (json_skip_value) with a bit stack for nesting: one bit
 * per open container says whether it is an object or an array, which is all the
 * grammar needs to know to accept the right closing bracket and, after a comma,
 * whether a key or a value comes next.
 */
#include "envelope/json.h"

#include <string.h>

#include "core/simd.h"
#if SIMD_HAVE_AVX2
#include <immintrin.h>
#endif

#define STACK_WORDS ((JSON_DEPTH_MAX + 63u) / 64u)

static inline bool is_ws(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static inline bool is_digit(uint8_t c)
{
	return c >= '0' && c <= '9';
}

/*
 * Length of the valid, complete UTF-8 sequence at p (1..4), or 0 if the bytes there do
 * not start one (RFC 3629 / Unicode Table 3-7: no overlongs, no surrogates, nothing
 * above U+10FFFF, no truncation). Go's utf8.DecodeRune draws the same line, which is
 * why the escaper can use this to decide which bytes become \ufffd.
 */
static size_t utf8_seq_len(const uint8_t *p, size_t avail)
{
	uint8_t c = p[0];
	uint8_t lo = 0x80, hi = 0xBF;
	size_t need;

	if (c < 0x80)
		return 1;
	if (c < 0xC2)
		return 0;
	if (c < 0xE0) {
		need = 2;
	} else if (c < 0xF0) {
		need = 3;
		if (c == 0xE0)
			lo = 0xA0; /* overlong below U+0800 */
		else if (c == 0xED)
			hi = 0x9F; /* U+D800..U+DFFF */
	} else if (c < 0xF5) {
		need = 4;
		if (c == 0xF0)
			lo = 0x90; /* overlong below U+10000 */
		else if (c == 0xF4)
			hi = 0x8F; /* above U+10FFFF */
	} else {
		return 0;
	}
	if (avail < need)
		return 0;
	if (p[1] < lo || p[1] > hi)
		return 0;
	for (size_t k = 2; k < need; k++) {
		if (p[k] < 0x80 || p[k] > 0xBF)
			return 0;
	}
	return need;
}

static inline size_t skip_ws(const uint8_t *p, size_t n, size_t i)
{
	while (i < n && is_ws(p[i]))
		i++;
	return i;
}

size_t json_skip_ws(struct span in, size_t pos)
{
	ASSERT(pos <= in.len);
	return skip_ws(in.ptr, in.len, pos);
}

/*
 * Eight bytes at once: a mask with the high bit set in every byte that needs a closer
 * look inside a string: '"', '\\', a control byte (< 0x20) or non-ASCII (>= 0x80).
 * (x - 0x01..) & ~x & 0x80.. flags the zero bytes of x (with 0x20.. it flags bytes
 * below 0x20). A borrow can also flag bytes *above* a real hit, never below it, so the
 * lowest flagged byte is always a real one, which is all we use. Payloads are mostly
 * long base64 strings (the Noise ciphertext) and keys are short, so finding the first
 * special byte in one step serves both.
 */
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

static inline uint64_t special8(const uint8_t *p)
{
	uint64_t w, q, b;

	memcpy(&w, p, sizeof(w));
	q = w ^ (ONES * '"');
	b = w ^ (ONES * '\\');
	return (((q - ONES) & ~q) | ((b - ONES) & ~b) | ((w - ONES * 0x20u) & ~w) | w) & HIGHS;
}

/* Index (0..7) of the first byte in memory order flagged in a non-zero mask. */
static inline size_t first_flagged(uint64_t m)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return (size_t)__builtin_ctzll(m) >> 3;
#else
	return (size_t)__builtin_clzll(m) >> 3;
#endif
}

/* Validate one \X escape at p[i] == '\\'; returns its length or 0 if invalid. */
static size_t escape_len(const uint8_t *p, size_t n, size_t i)
{
	if (i + 1 >= n)
		return 0;
	switch (p[i + 1]) {
	case '"':
	case '\\':
	case '/':
	case 'b':
	case 'f':
	case 'n':
	case 'r':
	case 't':
		return 2;
	case 'u':
		if (i + 6 > n)
			return 0;
		for (size_t k = 2; k < 6; k++) {
			if (hex_digit_value(p[i + k]) < 0)
				return 0;
		}
		return 6;
	default:
		return 0;
	}
}

#if SIMD_HAVE_AVX2
/* Bit k set when byte k of the 16 at p is '"', '\\', a control byte or non-ASCII. */
static inline uint32_t special16(const uint8_t *p)
{
	__m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
	__m128i ctl_max = _mm_set1_epi8(0x1f);
	__m128i q = _mm_cmpeq_epi8(v, _mm_set1_epi8('"'));
	__m128i b = _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'));
	__m128i c = _mm_cmpeq_epi8(_mm_max_epu8(v, ctl_max), ctl_max); /* unsigned v <= 0x1f */
	return (uint32_t)_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(q, b), c)) |
	       (uint32_t)_mm_movemask_epi8(v); /* the top bit: >= 0x80 */
}

/* The same over 32 bytes at a time from i while 32 remain (AVX2): the index of the first
 * flagged byte, or where fewer than 32 remain. With dst, each 32 bytes loaded are also
 * stored at the same offset of dst (the copy of json_valid_copy, in the same pass). */
__attribute__((target("avx2"))) static size_t skip_plain_avx2(const uint8_t *p, size_t n, size_t i, uint8_t *dst)
{
	const __m256i ctl_max = _mm256_set1_epi8(0x1f);
	const __m256i quote = _mm256_set1_epi8('"');
	const __m256i bslash = _mm256_set1_epi8('\\');
	for (; i + 32 <= n; i += 32) {
		__m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(p + i));
		if (dst != NULL)
			_mm256_storeu_si256((__m256i *)(void *)(dst + i), v);
		__m256i q = _mm256_cmpeq_epi8(v, quote);
		__m256i b = _mm256_cmpeq_epi8(v, bslash);
		__m256i c = _mm256_cmpeq_epi8(_mm256_max_epu8(v, ctl_max), ctl_max);
		uint32_t m = (uint32_t)_mm256_movemask_epi8(_mm256_or_si256(_mm256_or_si256(q, b), c)) |
			     (uint32_t)_mm256_movemask_epi8(v);
		if (m)
			return i + (size_t)__builtin_ctz(m);
	}
	return i;
}
#endif

/* From i, skip plain string content 32 (AVX2), 16 (SSE2) or 8 bytes at a time, as chosen
 * at start-up (core/simd.h); returns the index of the first byte that needs a look (or
 * where fewer than 8 bytes remain). With dst (a constant NULL for the plain scan, so
 * the stores compile away there), every step's bytes are stored at the same offset of
 * dst too: [i, returned index) is copied, and at most one step's bytes past it. */
static inline __attribute__((always_inline)) size_t skip_plain_steps(const uint8_t *p, size_t n, size_t i,
								  uint8_t *dst)
{
#if SIMD_HAVE_AVX2
	enum simd_level level = simd_selected();
	if (level >= SIMD_AVX2 && n - i >= SIMD_AVX2_MIN_BYTES) {
		i = skip_plain_avx2(p, n, i, dst);
		if (i + 32 <= n)
			return i; /* a flagged byte */
	}
	while (level >= SIMD_SSE2 && i + 16 <= n) {
		if (dst != NULL)
			_mm_storeu_si128((__m128i *)(void *)(dst + i), _mm_loadu_si128((const __m128i *)(const void *)(p + i)));
		uint32_t m = special16(p + i);
		if (m)
			return i + (size_t)__builtin_ctz(m);
		i += 16;
	}
#endif
	while (i + 8 <= n) {
		if (dst != NULL)
			memcpy(dst + i, p + i, 8);
		uint64_t m = special8(p + i);
		if (m)
			return i + first_flagged(m);
		i += 8;
	}
	return i;
}

/*
 * json_valid_copy's copy: dst receives the input's bytes, and [0, done) of it is
 * written. The scan stores what it loads only inside a long plain run of a string
 * (JSON_COPY_FUSE_AFTER_BYTES plain bytes seen): there the bytes since `done` go in
 * one memcpy first and the rest of the run is stored step by step as it is checked.
 * Short strings, structure, numbers and escapes are copied in those memcpys and in
 * the last one, so a document of many small strings costs no more calls than one
 * copy per long run.
 */
struct copy_cursor {
	uint8_t *dst;
	size_t done;
};

/* A plain run this long makes the scan store what it loads from then on (above, the
 * one memcpy it costs is paid back by the bytes it no longer copies separately). It is
 * a multiple of 32, so each level's steps reach it exactly. */
#define JSON_COPY_FUSE_AFTER_BYTES 128u

static inline __attribute__((always_inline)) size_t skip_plain(const uint8_t *p, size_t n, size_t i,
							    struct copy_cursor *cc)
{
	if (cc == NULL || n - i < JSON_COPY_FUSE_AFTER_BYTES + SIMD_AVX2_MIN_BYTES)
		return skip_plain_steps(p, n, i, NULL);
	size_t probe_end = i + JSON_COPY_FUSE_AFTER_BYTES;
	size_t j = skip_plain_steps(p, probe_end, i, NULL);
	if (j < probe_end)
		return j; /* a flagged byte: a short run, copied later with what surrounds it */
	ASSERT(cc->done <= probe_end);
	memcpy(cc->dst + cc->done, p + cc->done, probe_end - cc->done);
	j = skip_plain_steps(p, n, probe_end, cc->dst);
	cc->done = j;
	return j;
}

static inline __attribute__((always_inline)) bool scan_string(const uint8_t *p, size_t n, size_t *pos,
							      struct json_str *out, struct copy_cursor *cc)
{
	size_t i = *pos;
	size_t start;
	bool esc = false;

	ASSERT(i < n && p[i] == '"');
	start = ++i;
	for (;;) {
		/* jump to the next byte that is not plain ASCII string content */
		i = skip_plain(p, n, i, cc);
		if (i >= n)
			return false; /* unterminated */
		uint8_t c = p[i];
		if (c == '"')
			break;
		if (c == '\\') {
			size_t k = escape_len(p, n, i);
			if (k == 0)
				return false;
			esc = true;
			i += k;
		} else if (c < 0x20) {
			return false;
		} else if (c < 0x80) {
			i++;
		} else {
			size_t k = utf8_seq_len(p + i, n - i);
			if (k == 0)
				return false;
			i += k;
		}
	}
	out->raw = span_make(p + start, i - start);
	out->has_escapes = esc;
	*pos = i + 1;
	return true;
}

bool json_scan_string(struct span in, size_t *pos, struct json_str *out)
{
	ASSERT(*pos < in.len && in.ptr[*pos] == '"');
	return scan_string(in.ptr, in.len, pos, out, NULL);
}

static bool scan_number(const uint8_t *p, size_t n, size_t *pos)
{
	size_t i = *pos;

	if (p[i] == '-')
		i++;
	if (i >= n)
		return false;
	if (p[i] == '0') {
		i++;
	} else if (p[i] >= '1' && p[i] <= '9') {
		while (i < n && is_digit(p[i]))
			i++;
	} else {
		return false;
	}
	if (i < n && p[i] == '.') {
		i++;
		if (i >= n || !is_digit(p[i]))
			return false;
		while (i < n && is_digit(p[i]))
			i++;
	}
	if (i < n && (p[i] == 'e' || p[i] == 'E')) {
		i++;
		if (i < n && (p[i] == '+' || p[i] == '-'))
			i++;
		if (i >= n || !is_digit(p[i]))
			return false;
		while (i < n && is_digit(p[i]))
			i++;
	}
	/* What may follow (",]}" or whitespace or the end) is the caller's check: "01"
	 * fails there, as "0" followed by a stray "1". */
	*pos = i;
	return true;
}

static bool scan_literal(const uint8_t *p, size_t n, size_t *pos, const char *lit, size_t len)
{
	if (n - *pos < len || memcmp(p + *pos, lit, len) != 0)
		return false;
	*pos += len;
	return true;
}

static inline void stack_set(uint64_t *stack, uint32_t level, bool is_object)
{
	uint64_t bit = 1ull << (level & 63u);

	if (is_object)
		stack[level >> 6] |= bit;
	else
		stack[level >> 6] &= ~bit;
}

static inline bool stack_is_object(const uint64_t *stack, uint32_t level)
{
	return (stack[level >> 6] >> (level & 63u)) & 1u;
}

static inline __attribute__((always_inline)) bool skip_value(struct span in, size_t *pos, uint32_t depth,
							     struct span *raw, struct copy_cursor *cc)
{
	const uint8_t *p = in.ptr;
	const size_t n = in.len;
	const size_t start = *pos;
	size_t i = start;
	uint64_t stack[STACK_WORDS]; /* bit `level` set: that container is an object */
	uint32_t top = 0;            /* containers opened by this call and still open */
	struct json_str key;

	ASSERT(depth <= JSON_DEPTH_MAX);
	ASSERT(start <= n);

value:
	if (i >= n)
		return false;
	switch (p[i]) {
	case '{':
	case '[':
		if (depth + top >= JSON_DEPTH_MAX)
			return false;
		stack_set(stack, top, p[i] == '{');
		top++;
		i = skip_ws(p, n, i + 1);
		if (i < n && p[i] == (stack_is_object(stack, top - 1) ? '}' : ']')) {
			i++;
			top--;
			goto after;
		}
		if (stack_is_object(stack, top - 1))
			goto member;
		goto value;
	case '"':
		if (!scan_string(p, n, &i, &key, cc))
			return false;
		goto after;
	case 't':
		if (!scan_literal(p, n, &i, "true", 4))
			return false;
		goto after;
	case 'f':
		if (!scan_literal(p, n, &i, "false", 5))
			return false;
		goto after;
	case 'n':
		if (!scan_literal(p, n, &i, "null", 4))
			return false;
		goto after;
	default:
		if (p[i] != '-' && !is_digit(p[i]))
			return false;
		if (!scan_number(p, n, &i))
			return false;
		goto after;
	}

member: /* inside an object, where a key must start */
	if (i >= n || p[i] != '"')
		return false;
	if (!scan_string(p, n, &i, &key, cc))
		return false;
	i = skip_ws(p, n, i);
	if (i >= n || p[i] != ':')
		return false;
	i = skip_ws(p, n, i + 1);
	goto value;

after: /* a complete value ends just before p[i] */
	if (top == 0) {
		*pos = i;
		if (raw)
			*raw = span_make(p + start, i - start);
		return true;
	}
	i = skip_ws(p, n, i);
	if (i >= n)
		return false;
	if (p[i] == ',') {
		i = skip_ws(p, n, i + 1);
		if (stack_is_object(stack, top - 1))
			goto member;
		goto value;
	}
	if (p[i] == (stack_is_object(stack, top - 1) ? '}' : ']')) {
		i++;
		top--;
		goto after;
	}
	return false;
}

bool json_skip_value(struct span in, size_t *pos, uint32_t depth, struct span *raw)
{
	return skip_value(in, pos, depth, raw, NULL);
}

bool json_valid(struct span in)
{
	size_t i = json_skip_ws(in, 0);

	if (!json_skip_value(in, &i, 0, NULL))
		return false;
	return json_skip_ws(in, i) == in.len;
}

bool json_valid_copy(struct span in, uint8_t *dst)
{
	struct copy_cursor cc = { .dst = dst, .done = 0 };
	size_t i = json_skip_ws(in, 0);

	if (!skip_value(in, &i, 0, NULL, &cc) || json_skip_ws(in, i) != in.len)
		return false;
	ASSERT(cc.done <= in.len);
	memcpy(dst + cc.done, in.ptr + cc.done, in.len - cc.done);
	return true;
}

bool json_value_copy(struct span in, uint32_t depth, uint8_t *dst)
{
	struct copy_cursor cc = { .dst = dst, .done = 0 };
	size_t i = 0;

	ASSERT(depth <= JSON_DEPTH_MAX);
	if (!skip_value(in, &i, depth, NULL, &cc) || i != in.len)
		return false;
	ASSERT(cc.done <= in.len);
	memcpy(dst + cc.done, in.ptr + cc.done, in.len - cc.done);
	return true;
}

enum json_type json_type_of(struct span raw_value)
{
	ASSERT(raw_value.len > 0);
	switch (raw_value.ptr[0]) {
	case '{':
		return JSON_TYPE_OBJECT;
	case '[':
		return JSON_TYPE_ARRAY;
	case '"':
		return JSON_TYPE_STRING;
	case 't':
		return JSON_TYPE_TRUE;
	case 'f':
		return JSON_TYPE_FALSE;
	case 'n':
		return JSON_TYPE_NULL;
	default:
		ASSERT(raw_value.ptr[0] == '-' || is_digit(raw_value.ptr[0]));
		return JSON_TYPE_NUMBER;
	}
}

/* ---- encoding (Go's encoding/json, HTML-safe) ---- */

static const char hex_lower[] = "0123456789abcdef";

/*
 * Escape form of an ASCII byte: 0 = copy as is, otherwise the escape's second
 * character ('u' meaning \u00xx). Go's htmlSafeSet plus its short escapes.
 */
static uint8_t ascii_escape(uint8_t b)
{
	switch (b) {
	case '"':
	case '\\':
		return b;
	case '\b':
		return 'b';
	case '\f':
		return 'f';
	case '\n':
		return 'n';
	case '\r':
		return 'r';
	case '\t':
		return 't';
	case '<':
	case '>':
	case '&':
		return 'u';
	default:
		return b < 0x20 ? 'u' : 0;
	}
}

/* One implementation for counting (out == NULL) and writing, so they cannot drift. */
static size_t escape_impl(uint8_t *out, size_t cap, struct span s)
{
	const uint8_t *p = s.ptr;
	const size_t n = s.len;
	size_t i = 0, j = 0;

#define EMIT(b) \
	do { \
		if (out) { \
			if (j >= cap) \
				return SIZE_MAX; \
			out[j] = (uint8_t)(b); \
		} \
		j++; \
	} while (0)
#define EMIT_U(cp) \
	do { \
		EMIT('\\'); \
		EMIT('u'); \
		EMIT(hex_lower[((cp) >> 12) & 0xF]); \
		EMIT(hex_lower[((cp) >> 8) & 0xF]); \
		EMIT(hex_lower[((cp) >> 4) & 0xF]); \
		EMIT(hex_lower[(cp) & 0xF]); \
	} while (0)

	while (i < n) {
		uint8_t b = p[i];
		if (b < 0x80) {
			uint8_t e = ascii_escape(b);
			if (e == 0) {
				EMIT(b);
			} else if (e == 'u') {
				EMIT_U(b);
			} else {
				EMIT('\\');
				EMIT(e);
			}
			i++;
			continue;
		}
		size_t k = utf8_seq_len(p + i, n - i);
		if (k == 0) {
			EMIT_U(0xFFFDu);
			i++;
		} else if (k == 3 && b == 0xE2 && p[i + 1] == 0x80 && (p[i + 2] & ~1u) == 0xA8) {
			EMIT_U(p[i + 2] == 0xA8 ? 0x2028u : 0x2029u);
			i += 3;
		} else {
			for (size_t m = 0; m < k; m++)
				EMIT(p[i + m]);
			i += k;
		}
	}
#undef EMIT_U
#undef EMIT
	return j;
}

size_t json_escaped_len(struct span s)
{
	size_t n = escape_impl(NULL, 0, s);

	ASSERT(n <= JSON_ESCAPED_LEN_MAX(s.len));
	return n;
}

size_t json_escape(uint8_t *out, size_t cap, struct span s)
{
	ASSERT(out != NULL || cap == 0);
	if (out == NULL)
		return s.len == 0 ? 0 : SIZE_MAX;
	return escape_impl(out, cap, s);
}

/* One level of an object, member by member (json.h). */
bool json_walk_object(struct span in, json_member_fn fn, void *ctx)
{
	const uint8_t *p = in.ptr;
	size_t i = json_skip_ws(in, 0);
	if (i >= in.len || p[i] != '{')
		return false;
	i = json_skip_ws(in, i + 1);
	for (bool first = true;; first = false) {
		if (i >= in.len)
			return false;
		if (p[i] == '}')
			return json_skip_ws(in, i + 1) == in.len;
		if (!first) {
			if (p[i] != ',')
				return false;
			i = json_skip_ws(in, i + 1);
		}
		struct json_str name;
		struct span v;
		if (i >= in.len || p[i] != '"' || !json_scan_string(in, &i, &name))
			return false;
		i = json_skip_ws(in, i);
		if (i >= in.len || p[i] != ':')
			return false;
		i = json_skip_ws(in, i + 1);
		if (!json_skip_value(in, &i, 1, &v) || !fn(ctx, name, v))
			return false;
		i = json_skip_ws(in, i);
	}
}
