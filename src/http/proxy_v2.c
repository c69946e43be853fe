/*
 * proxy_v2.c - the PROXY protocol v2 header: see proxy_v2.h for what is accepted.
 * Each byte is judged as soon as it is in, in wire order, so a refusal never waits
 * for bytes that cannot change it.
 */
#include "http/proxy_v2.h"

#include <string.h>

static const uint8_t signature[PROXY_V2_SIGNATURE_BYTES] = {
	0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, /* \r\n\r\n\0\r\nQUIT\n */
};
static const char v1_start[] = "PROXY"; /* what go-proxyproto peeks at to take version 1 */

#define VERSION_2 0x2u
#define CMD_LOCAL 0x0u
#define CMD_PROXY 0x1u
#define FAM_TCP4 0x11u
#define FAM_UDP4 0x12u
#define FAM_TCP6 0x21u
#define FAM_UDP6 0x22u
#define FAM_UNIX_STREAM 0x31u
#define FAM_UNIX_DGRAM 0x32u
#define FAM_UNSPEC 0x00u

static struct proxy_v2_result verdict(enum proxy_v2_status st, enum proxy_v2_reason why, uint32_t bytes)
{
	return (struct proxy_v2_result){ .status = st, .reason = why, .header_bytes = bytes };
}

static struct proxy_v2_result invalid(enum proxy_v2_reason why)
{
	return verdict(PROXY_V2_INVALID, why, 0);
}

/* The first bytes are not the v2 signature: a version 1 header, or no header at all. */
static enum proxy_v2_reason no_signature(const uint8_t *p, size_t n)
{
	size_t k = MIN(n, sizeof v1_start - 1);
	return memcmp(p, v1_start, k) == 0 ? PROXY_V2_V1 : PROXY_V2_NOT_PROXY;
}

static enum proxy_v2_reason family_refusal(uint8_t fam)
{
	switch (fam) {
	case FAM_TCP4:
	case FAM_TCP6:
		return PROXY_V2_REASON_NONE;
	case FAM_UNSPEC:
		return PROXY_V2_UNSPEC;
	case FAM_UDP4:
	case FAM_UDP6:
		return PROXY_V2_UDP;
	case FAM_UNIX_STREAM:
	case FAM_UNIX_DGRAM:
		return PROXY_V2_UNIX;
	default:
		return PROXY_V2_FAMILY;
	}
}

struct proxy_v2_result proxy_v2_parse(const uint8_t *p, size_t n)
{
	ASSERT(p != NULL || n == 0);
	size_t sig = MIN(n, (size_t)PROXY_V2_SIGNATURE_BYTES);
	if (sig > 0 && memcmp(p, signature, sig) != 0)
		return invalid(no_signature(p, n));
	if (n <= PROXY_V2_SIGNATURE_BYTES)
		return verdict(PROXY_V2_NEED_MORE, PROXY_V2_REASON_NONE, PROXY_V2_FIXED_BYTES);

	uint8_t ver_cmd = p[12];
	if ((ver_cmd >> 4) != VERSION_2)
		return invalid(PROXY_V2_VERSION);
	if ((ver_cmd & 0x0Fu) == CMD_LOCAL)
		return invalid(PROXY_V2_LOCAL);
	if ((ver_cmd & 0x0Fu) != CMD_PROXY)
		return invalid(PROXY_V2_VERSION);
	if (n < 14)
		return verdict(PROXY_V2_NEED_MORE, PROXY_V2_REASON_NONE, PROXY_V2_FIXED_BYTES);

	uint8_t fam = p[13];
	enum proxy_v2_reason why = family_refusal(fam);
	if (why != PROXY_V2_REASON_NONE)
		return invalid(why);
	if (n < PROXY_V2_FIXED_BYTES)
		return verdict(PROXY_V2_NEED_MORE, PROXY_V2_REASON_NONE, PROXY_V2_FIXED_BYTES);

	uint32_t len = ((uint32_t)p[14] << 8) | p[15];
	uint32_t block = fam == FAM_TCP4 ? PROXY_V2_IPV4_BLOCK_BYTES : PROXY_V2_IPV6_BLOCK_BYTES;
	if (len < block || len > PROXY_V2_PAYLOAD_BYTES_MAX)
		return invalid(PROXY_V2_LENGTH);
	uint32_t total = PROXY_V2_FIXED_BYTES + len;
	if (n < total)
		return verdict(PROXY_V2_NEED_MORE, PROXY_V2_REASON_NONE, total);

	/* The address block: source address, destination address, source port,
	 * destination port; the rest of the length (TLVs) is skipped. */
	struct proxy_v2_result r = verdict(PROXY_V2_OK, PROXY_V2_REASON_NONE, total);
	const uint8_t *a = p + PROXY_V2_FIXED_BYTES;
	size_t addr_bytes = fam == FAM_TCP4 ? 4 : 16;
	r.src_family = fam == FAM_TCP4 ? PROXY_V2_INET : PROXY_V2_INET6;
	memcpy(r.src_addr, a, addr_bytes);
	const uint8_t *port = a + 2 * addr_bytes;
	r.src_port = (uint16_t)(((unsigned)port[0] << 8) | port[1]);
	return r;
}

const char *proxy_v2_reason_name(enum proxy_v2_reason r)
{
	static const char *const names[PROXY_V2_REASON_COUNT] = {
		[PROXY_V2_REASON_NONE] = "",   [PROXY_V2_NOT_PROXY] = "missing", [PROXY_V2_V1] = "v1",
		[PROXY_V2_VERSION] = "version", [PROXY_V2_LOCAL] = "local",       [PROXY_V2_UNSPEC] = "unspec",
		[PROXY_V2_UDP] = "udp",         [PROXY_V2_UNIX] = "unix",         [PROXY_V2_FAMILY] = "family",
		[PROXY_V2_LENGTH] = "length",
	};
	ASSERT((unsigned)r < PROXY_V2_REASON_COUNT);
	return names[r];
}
