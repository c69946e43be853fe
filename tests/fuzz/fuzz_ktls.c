/*
 * fuzz_ktls.c - libFuzzer target for the two readers in transport/ktls.c that see
 * bytes after kTLS took over the socket:
 *   - ktls_key_update_request: the body of a TLS 1.3 handshake record a client sent
 *     (decrypted by the kernel), which the relay accepts only as one KeyUpdate
 *     (RFC 8446 §4.6.3: type 24, length 1, request_update 0 or 1);
 *   - ktls_record_type: the control messages of a kTLS recvmsg (written by the
 *     kernel: trusted, but the reader must stay inside the length it is given).
 *
 * Input: byte 0 bit 0 picks the reader; the rest is its bytes. For the control
 * messages the rest is copied into an exactly sized buffer; inputs with a header whose
 * cmsg_len is shorter than a header or points past that length are skipped (the
 * kernel never writes one; CMSG_FIRSTHDR does not check the first one's length).
 *
 * Oracles: the KeyUpdate answer equals the RFC's rule read directly; the record type
 * equals a walk written here (headers at CMSG_ALIGN'ed offsets while a whole header
 * fits, the first SOL_TLS / TLS_GET_RECORD_TYPE one with a data byte wins, application
 * data when none).
 */
#include <linux/tls.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/common.h"
#include "transport/ktls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

#define FZ_TLS_KEY_UPDATE 24u

static int ref_key_update(const uint8_t *p, size_t n)
{
	/* HandshakeType key_update(24), uint24 length 1, KeyUpdateRequest 0 or 1 */
	if (n != 5 || p[0] != FZ_TLS_KEY_UPDATE)
		return -1;
	if (p[1] != 0 || p[2] != 0 || p[3] != 1)
		return -1;
	return p[4] <= 1 ? p[4] : -1;
}

/* Every header that fits is at least a header long and ends inside the buffer: what
 * the kernel writes (put_cmsg). Others are skipped: glibc versions differ on how far
 * CMSG_NXTHDR trusts a length, and the kernel is not an attacker here. */
static uint8_t ref_record_type(const uint8_t *c, size_t n)
{
	size_t off = 0;
	while (off + sizeof(struct cmsghdr) <= n) {
		struct cmsghdr h;
		memcpy(&h, c + off, sizeof h);
		if (h.cmsg_len < sizeof h || h.cmsg_len > n - off)
			break; /* the contract: a header longer than what is left ends the walk */
		if (h.cmsg_level == SOL_TLS && h.cmsg_type == TLS_GET_RECORD_TYPE && h.cmsg_len >= CMSG_LEN(1))
			return c[off + CMSG_LEN(0)];
		if (CMSG_ALIGN(h.cmsg_len) > n - off)
			break;
		off += CMSG_ALIGN(h.cmsg_len);
	}
	return KTLS_RECORD_APPLICATION_DATA;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	const uint8_t *p = data + 1;
	size_t n = size - 1;
	uint8_t *buf = malloc(n ? n : 1);
	if (!buf)
		abort();
	if (n)
		memcpy(buf, p, n);

	if ((data[0] & 1) == 0) {
		ASSERT(ktls_key_update_request(buf, n) == ref_key_update(p, n));
	} else {
		/* any bytes: the walk must stay inside them (ASan) and agree with the reference */
		ASSERT(ktls_record_type(buf, n) == ref_record_type(p, n));
	}
	free(buf);
	return 0;
}
