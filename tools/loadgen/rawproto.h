/*
 * rawproto.h - the raw forwarding protocol spoken by tools/rawfwd and `loadgen --raw`.
 *
 * Purpose: a byte forwarder with the relay's traffic shape and hop count
 * (phone -> forwarder -> binary -> forwarder -> phone) but no WebSocket framing,
 * masking, UTF-8/JSON validation or envelope work, so a benchmark can state the
 * relay's throughput as a fraction of what the kernel's socket path allows.
 *
 * Wire format (TCP, all integers little-endian):
 *
 *   1. Hello, once, first bytes of every connection:
 *        "B" <server-id> "\n"     a binary claiming <server-id>
 *        "P" <server-id> "\n"     a phone joining <server-id>
 *      <server-id> is 1..RAW_SERVER_ID_BYTES_MAX bytes, none of them '\n' or NUL.
 *      The forwarder answers an accepted hello with one zero-length message whose
 *      phone_index field is the phone's index within its server-id (0 for a binary):
 *        [u32 0][u32 phone_index]
 *      A refused hello (duplicate binary, no binary for the phone, too many phones,
 *      malformed) is answered by closing the connection.
 *
 *   2. Messages, in both directions after the hello:
 *        [u32 length][u32 phone_index][length bytes of payload]
 *      length <= RAW_MESSAGE_BYTES_MAX.
 *      - phone -> forwarder: phone_index is ignored; the forwarder overwrites it with
 *        the sender's index and forwards the whole message to the server-id's binary.
 *      - binary -> forwarder: the forwarder delivers the whole message (header
 *        included) to the phone named by phone_index; unknown indexes are dropped.
 *      The forwarder reads only the 8-byte headers, never payloads.
 *
 *   3. Teardown: when a binary disconnects, the forwarder closes all its phones (no
 *      grace period). A phone's disconnect is not announced to the binary.
 */
#ifndef LOADGEN_RAWPROTO_H
#define LOADGEN_RAWPROTO_H

#include <stdint.h>
#include <string.h>

#define RAW_HEADER_BYTES 8u
#define RAW_MESSAGE_BYTES_MAX (256u * 1024u) /* the relay's inbound message limit */
#define RAW_SERVER_ID_BYTES_MAX 256u
#define RAW_HELLO_BYTES_MAX (1u + RAW_SERVER_ID_BYTES_MAX + 1u)
#define RAW_PHONES_PER_SERVER_MAX 256u

static inline void raw_put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static inline uint32_t raw_get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void raw_header_encode(uint8_t out[RAW_HEADER_BYTES], uint32_t length, uint32_t phone_index)
{
	raw_put_u32(out, length);
	raw_put_u32(out + 4, phone_index);
}

#endif
