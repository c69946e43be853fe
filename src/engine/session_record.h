/*
 * session_record.h - one live WebSocket session as it travels from a relay to its
 * successor during a hand-over (ADR 0018, "Live WebSocket sessions across the
 * upgrade"). The socket itself travels beside it (SCM_RIGHTS); the record carries what
 * the successor needs to adopt it without a new handshake: its route, its identity in
 * the registry, its accounting and the bytes already read from it.
 *
 * Wire format, version 1 (integers big-endian, no padding):
 *   u32  total       bytes of the whole record, this field included
 *   u8   version     SESSION_RECORD_VERSION
 *   u8   route       enum session_route
 *   u8   transport   enum session_transport
 *   u8   family      0 (unknown), 4 (IPv4, addr[0..4)) or 6 (IPv6)
 *   u8   addr[16]    the peer's address, unused bytes zero
 *   u16  port
 *   u64  client_key  its --max-connections-per-ip key, 0 for none
 *   u8   conn_hex[8] the suffix of its conn_id (phone) or binary_conn_id, lowercase hex
 *   u16  server_id_len, version_len, device_len
 *   u32  early_len
 *   then server-id, version, device name, early bytes, in that order.
 * A record is exactly `total` bytes; records may follow each other in one buffer.
 *
 * Contract: pure functions over byte spans (no allocation, no global state); every
 * length is bounded by the named maxima below; the parser reads nothing past the span
 * and its results point into it.
 */
#ifndef PYRELAY_SESSION_RECORD_H
#define PYRELAY_SESSION_RECORD_H

#include "core/common.h"
#include "engine/engine.h"

#define SESSION_RECORD_VERSION 1u
#define SESSION_RECORD_FIXED_BYTES 52u
/* A session whose header values are longer stays behind (drained as before). */
#define SESSION_RECORD_TEXT_BYTES_MAX 4096u
/* Bytes read from the socket after its reader stopped: a session with more is drained
 * instead of moved (a record must fit one message of the unix socket, whose default
 * buffer is about 208 KiB). */
#define SESSION_RECORD_EARLY_BYTES_MAX (64u * 1024u)
#define SESSION_RECORD_BYTES_MAX \
	(SESSION_RECORD_FIXED_BYTES + 3u * SESSION_RECORD_TEXT_BYTES_MAX + SESSION_RECORD_EARLY_BYTES_MAX)
#define SESSION_CONN_HEX_LEN 8u

enum session_route { SESSION_ROUTE_BINARY = 0, SESSION_ROUTE_PHONE = 1, SESSION_ROUTE_COUNT };
enum session_transport { SESSION_TRANSPORT_PLAIN = 0, SESSION_TRANSPORT_KTLS = 1, SESSION_TRANSPORT_COUNT };

struct session_record {
	uint8_t route;     /* enum session_route */
	uint8_t transport; /* enum session_transport */
	struct peer_addr remote;
	uint64_t client_key;
	char conn_hex[SESSION_CONN_HEX_LEN]; /* its conn_id suffix */
	struct span server_id;               /* 1..SESSION_RECORD_TEXT_BYTES_MAX bytes */
	struct span version;
	struct span device;
	struct span early;
};

enum session_record_err {
	SESSION_RECORD_OK = 0,
	SESSION_RECORD_NEED_MORE, /* the span ends inside the record */
	SESSION_RECORD_BAD_VERSION,
	SESSION_RECORD_BAD_LENGTH, /* total disagrees with the lengths, or one is over its bound */
	SESSION_RECORD_BAD_FIELD,  /* route, transport, family or conn_hex out of range */
};

/* Bytes r takes on the wire; 0 when r cannot be written (a field out of range). */
size_t session_record_size(const struct session_record *r);
/* Write r to out; returns the bytes written, 0 (out untouched) when r is invalid or
 * does not fit cap. */
size_t session_record_write(const struct session_record *r, uint8_t *out, size_t cap);
/* Parse the record at the start of in. OK: *r points into in, *used is its length. */
enum session_record_err session_record_parse(struct span in, struct session_record *r, size_t *used);

#endif
