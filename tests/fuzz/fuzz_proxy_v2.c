/*
 * fuzz_proxy_v2.c - the PROXY v2 header parser (http/proxy_v2.h) over every prefix of
 * the input, against the contract and an acceptance rule written out separately:
 * - a verdict never goes back: once INVALID every longer prefix is INVALID (same reason,
 *   except the v1/missing guess), once OK every longer prefix is the same OK;
 * - NEED_MORE asks for more than it has; once the length is in, it asks for exactly the
 *   header and nothing is decided before that many bytes;
 * - OK comes exactly at header_bytes, which is 16 + the length field, with the source
 *   read from its fixed offsets, and only for the accepted combination of bytes;
 * - bytes after the header change nothing.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "http/proxy_v2.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define INPUT_BYTES_MAX (PROXY_V2_HEADER_BYTES_MAX + 64u)

static const uint8_t sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

/* Would a complete header of these bytes be accepted (reference §1.4)? n >= 16. */
static bool ref_accepts(const uint8_t *p, size_t n, size_t *total)
{
	if (memcmp(p, sig, sizeof sig) != 0 || p[12] != 0x21)
		return false;
	size_t need;
	if (p[13] == 0x11)
		need = 12;
	else if (p[13] == 0x21)
		need = 36;
	else
		return false;
	size_t len = (size_t)p[14] * 256 + p[15];
	*total = 16 + len;
	return len >= need && len <= 4096 && n >= *total;
}

static bool same_ok(const struct proxy_v2_result *a, const struct proxy_v2_result *b)
{
	return a->status == PROXY_V2_OK && b->status == PROXY_V2_OK && a->header_bytes == b->header_bytes &&
	       a->src_family == b->src_family && a->src_port == b->src_port &&
	       memcmp(a->src_addr, b->src_addr, a->src_family == PROXY_V2_INET ? 4 : 16) == 0;
}

static bool guessed(enum proxy_v2_reason r)
{
	return r == PROXY_V2_V1 || r == PROXY_V2_NOT_PROXY;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > INPUT_BYTES_MAX)
		return 0;
	/* a heap copy of exactly the input, so ASan sees any read past what was given */
	uint8_t *p = malloc(size ? size : 1);
	ASSERT(p != NULL);
	memcpy(p, data, size);

	struct proxy_v2_result prev = proxy_v2_parse(NULL, 0);
	ASSERT(prev.status == PROXY_V2_NEED_MORE && prev.header_bytes == PROXY_V2_FIXED_BYTES);
	for (size_t k = 1; k <= size; k++) {
		struct proxy_v2_result r = proxy_v2_parse(p, k);
		switch (prev.status) {
		case PROXY_V2_INVALID:
			ASSERT(r.status == PROXY_V2_INVALID);
			ASSERT(r.reason == prev.reason || (guessed(r.reason) && guessed(prev.reason)));
			break;
		case PROXY_V2_OK:
			ASSERT(same_ok(&r, &prev));
			break;
		case PROXY_V2_NEED_MORE:
			ASSERT(prev.header_bytes > k - 1);
			if (prev.header_bytes > PROXY_V2_FIXED_BYTES && k < prev.header_bytes)
				ASSERT(r.status == PROXY_V2_NEED_MORE && r.header_bytes == prev.header_bytes);
			if (r.status == PROXY_V2_OK)
				ASSERT(r.header_bytes == k); /* decided by its last byte, not later */
			break;
		}
		if (r.status == PROXY_V2_NEED_MORE) {
			ASSERT(r.header_bytes > k && r.header_bytes <= PROXY_V2_HEADER_BYTES_MAX);
			ASSERT(r.reason == PROXY_V2_REASON_NONE);
		} else if (r.status == PROXY_V2_INVALID) {
			ASSERT(r.reason > PROXY_V2_REASON_NONE && r.reason < PROXY_V2_REASON_COUNT);
			ASSERT(proxy_v2_reason_name(r.reason)[0] != '\0');
		}
		size_t total = 0;
		bool acc = k >= PROXY_V2_FIXED_BYTES && ref_accepts(p, k, &total);
		ASSERT(acc == (r.status == PROXY_V2_OK));
		if (acc) {
			ASSERT(r.header_bytes == total);
			size_t alen = p[13] == 0x11 ? 4 : 16;
			ASSERT(r.src_family == (alen == 4 ? PROXY_V2_INET : PROXY_V2_INET6));
			ASSERT(memcmp(r.src_addr, p + 16, alen) == 0);
			ASSERT(r.src_port == (uint16_t)((p[16 + 2 * alen] << 8) | p[17 + 2 * alen]));
		}
		prev = r;
	}
	/* the bytes after an accepted header do not matter */
	if (prev.status == PROXY_V2_OK && prev.header_bytes < size) {
		for (size_t i = prev.header_bytes; i < size; i++)
			p[i] = (uint8_t)~p[i];
		struct proxy_v2_result again = proxy_v2_parse(p, size);
		ASSERT(same_ok(&again, &prev));
	}
	free(p);
	return 0;
}
