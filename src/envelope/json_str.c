/*
 * json_str.c - decoding a scanned JSON string (json.h): comparing it with expected
 * bytes and unescaping it, as Go's encoding/json decodes (surrogate pairs joined, any
 * other surrogate escape U+FFFD). Split from json.c, which scans and validates.
 */
#include "envelope/json.h"

#include <string.h>

static uint32_t hex4(const uint8_t *p)
{
	uint32_t v = 0;

	for (size_t k = 0; k < 4; k++) {
		int h = hex_digit_value(p[k]);
		ASSERT(h >= 0); /* the string was validated */
		v = (v << 4) | (uint32_t)h;
	}
	return v;
}

static size_t utf8_put(uint8_t out[4], uint32_t cp)
{
	if (cp < 0x80) {
		out[0] = (uint8_t)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (uint8_t)(0xC0 | (cp >> 6));
		out[1] = (uint8_t)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (uint8_t)(0xE0 | (cp >> 12));
		out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
		out[2] = (uint8_t)(0x80 | (cp & 0x3F));
		return 3;
	}
	ASSERT(cp <= 0x10FFFF);
	out[0] = (uint8_t)(0xF0 | (cp >> 18));
	out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
	out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
	out[3] = (uint8_t)(0x80 | (cp & 0x3F));
	return 4;
}

/*
 * Decode the escape at r[*i] == '\\' of a validated string into out; returns the
 * number of bytes (1..4) and advances *i past the escape (or the surrogate pair).
 * Surrogates as Go's unquote: a high escape immediately followed by a low escape is
 * one code point; any other surrogate escape becomes U+FFFD on its own, and the
 * escape after it is decoded independently.
 */
static size_t unescape_one(const uint8_t *r, size_t n, size_t *i, uint8_t out[4])
{
	size_t k = *i;
	uint32_t cp;

	ASSERT(k + 1 < n && r[k] == '\\');
	switch (r[k + 1]) {
	case '"':
	case '\\':
	case '/':
		out[0] = r[k + 1];
		*i = k + 2;
		return 1;
	case 'b':
		out[0] = '\b';
		*i = k + 2;
		return 1;
	case 'f':
		out[0] = '\f';
		*i = k + 2;
		return 1;
	case 'n':
		out[0] = '\n';
		*i = k + 2;
		return 1;
	case 'r':
		out[0] = '\r';
		*i = k + 2;
		return 1;
	case 't':
		out[0] = '\t';
		*i = k + 2;
		return 1;
	default:
		break;
	}
	ASSERT(r[k + 1] == 'u' && k + 6 <= n);
	cp = hex4(r + k + 2);
	k += 6;
	if (cp >= 0xD800 && cp <= 0xDFFF) {
		uint32_t lo;

		if (cp <= 0xDBFF && k + 6 <= n && r[k] == '\\' && r[k + 1] == 'u' &&
		    (lo = hex4(r + k + 2)) >= 0xDC00 && lo <= 0xDFFF) {
			cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
			k += 6;
		} else {
			cp = 0xFFFD;
		}
	}
	*i = k;
	return utf8_put(out, cp);
}

bool json_str_eq(struct json_str s, struct span expected)
{
	const uint8_t *r = s.raw.ptr;
	const size_t n = s.raw.len;
	size_t i = 0, j = 0;

	if (!s.has_escapes)
		return n == expected.len && (n == 0 || memcmp(r, expected.ptr, n) == 0);
	while (i < n) {
		if (r[i] != '\\') {
			if (j >= expected.len || r[i] != expected.ptr[j])
				return false;
			i++;
			j++;
			continue;
		}
		uint8_t buf[4];
		size_t k = unescape_one(r, n, &i, buf);
		if (expected.len - j < k || memcmp(buf, expected.ptr + j, k) != 0)
			return false;
		j += k;
	}
	return j == expected.len;
}

bool json_str_eq_cstr(struct json_str s, const char *lit)
{
	return json_str_eq(s, span_cstr(lit));
}

size_t json_str_unescape(struct json_str s, uint8_t *out, size_t cap)
{
	const uint8_t *r = s.raw.ptr;
	const size_t n = s.raw.len;
	size_t i = 0, j = 0;

	while (i < n) {
		if (r[i] != '\\') {
			if (j >= cap)
				return SIZE_MAX;
			out[j++] = r[i++];
			continue;
		}
		uint8_t buf[4];
		size_t k = unescape_one(r, n, &i, buf);
		if (cap - j < k)
			return SIZE_MAX;
		memcpy(out + j, buf, k);
		j += k;
	}
	return j;
}
