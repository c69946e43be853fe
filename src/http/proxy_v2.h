/*
 * proxy_v2.h - the PROXY protocol version 2 header (haproxy.org proxy-protocol.txt,
 * section 2.2) that a TCP proxy sends before anything else, as the relay accepts it
 * under --https-proxy-protocol (reference §1.4).
 *
 * Contract: a pure function over a byte span: no I/O, no allocation, no globals. The
 * caller passes the bytes received so far on the connection, from its first byte (any
 * split: call again with the longer span) and gets one of
 *   NEED_MORE  every byte seen can still begin an accepted header; header_bytes says
 *              how many bytes the header has at least (16 until its length field is
 *              in, then exactly its length), always more than n;
 *   INVALID    it cannot be an accepted header; reason says why (decided at the first
 *              byte that rules it out, so a client that sends something else, such as
 *              a TLS ClientHello or an HTTP request, is refused without waiting);
 *   OK         an accepted header of header_bytes bytes; the stream continues after
 *              them (bytes beyond header_bytes are not looked at); src is the client.
 *
 * Accepted, as the reference (Go, github.com/pires/go-proxyproto with its REQUIRE
 * policy, plus the reference's own refusal of LOCAL): the 12-byte v2 signature,
 * version 2 with command PROXY, address family and protocol TCP over IPv4 (0x11) or
 * TCP over IPv6 (0x21), a length of at least the family's address block (12 or 36
 * bytes) and at most PROXY_V2_PAYLOAD_BYTES_MAX (go-proxyproto's MaxV2HeaderSize).
 * The bytes after the address block (TLVs) are skipped unread, as the reference
 * ignores them: their structure is not checked, only that they lie within the length.
 * Refused: a version 1 (text) header, anything else without the signature, another
 * version or command, LOCAL, UNSPEC, UDP, unix sockets, undefined family bytes, bad
 * lengths. Addresses are not judged (0.0.0.0 and port 0 pass, as in Go).
 */
#ifndef PYRELAY_PROXY_V2_H
#define PYRELAY_PROXY_V2_H

#include "core/common.h"

#define PROXY_V2_SIGNATURE_BYTES 12u
#define PROXY_V2_FIXED_BYTES 16u         /* signature, version/command, family, length */
#define PROXY_V2_PAYLOAD_BYTES_MAX 4096u /* the length field's largest accepted value */
#define PROXY_V2_HEADER_BYTES_MAX (PROXY_V2_FIXED_BYTES + PROXY_V2_PAYLOAD_BYTES_MAX)
#define PROXY_V2_IPV4_BLOCK_BYTES 12u /* source and destination address, then ports */
#define PROXY_V2_IPV6_BLOCK_BYTES 36u

enum proxy_v2_status {
	PROXY_V2_NEED_MORE = 0,
	PROXY_V2_INVALID,
	PROXY_V2_OK,
};

/* Why a header is refused. The label is a guess from the bytes seen when only
 * the signature tells (PROXY_V2_NOT_PROXY vs PROXY_V2_V1); the verdict is not. */
enum proxy_v2_reason {
	PROXY_V2_REASON_NONE = 0,
	PROXY_V2_NOT_PROXY, /* "missing": no PROXY header (e.g. a TLS ClientHello) */
	PROXY_V2_V1,        /* "v1": the text header of version 1 ("PROXY ...") */
	PROXY_V2_VERSION,   /* "version": v2 signature, but not version 2 or an unknown command */
	PROXY_V2_LOCAL,     /* "local": command LOCAL (a proxy's own connection, no client) */
	PROXY_V2_UNSPEC,    /* "unspec": address family UNSPEC */
	PROXY_V2_UDP,       /* "udp": UDP over IPv4 or IPv6 */
	PROXY_V2_UNIX,      /* "unix": unix stream or datagram sockets */
	PROXY_V2_FAMILY,    /* "family": a family/protocol byte the protocol does not define */
	PROXY_V2_LENGTH,    /* "length": shorter than the address block, or too long */
	PROXY_V2_REASON_COUNT,
};

enum proxy_v2_family {
	PROXY_V2_INET = 4,
	PROXY_V2_INET6 = 6,
};

struct proxy_v2_result {
	enum proxy_v2_status status;
	enum proxy_v2_reason reason; /* INVALID; PROXY_V2_REASON_NONE otherwise */
	uint32_t header_bytes;       /* OK: the header's size; NEED_MORE: its least size (> n) */
	/* OK: the client, as the proxy saw it */
	uint8_t src_family;    /* enum proxy_v2_family */
	uint8_t src_addr[16];  /* network byte order; the first 4 bytes for PROXY_V2_INET */
	uint16_t src_port;
};

/* The verdict on the first n bytes of a connection (p may be NULL when n is 0). */
struct proxy_v2_result proxy_v2_parse(const uint8_t *p, size_t n);

/* The reason's label (metrics): a fixed lower-case word, "" for PROXY_V2_REASON_NONE. */
const char *proxy_v2_reason_name(enum proxy_v2_reason r);

#endif
