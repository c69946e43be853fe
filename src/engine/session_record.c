/*
 * session_record.c - the hand-over record of one live session (session_record.h).
 */
#include "engine/session_record.h"

#include <string.h>
#include <sys/socket.h>

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint64_t get64(const uint8_t *p)
{
	return ((uint64_t)get32(p) << 32) | get32(p + 4);
}

static bool hex_ok(const char *h)
{
	for (size_t i = 0; i < SESSION_CONN_HEX_LEN; i++)
		if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f')))
			return false;
	return true;
}

static bool zeros(const void *p, size_t n)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++)
		if (b[i] != 0)
			return false;
	return true;
}


/* The address as the wire spells its family; false for one we cannot carry. */
static bool family_to_wire(const struct peer_addr *a, uint8_t *wire)
{
	size_t used;
	switch (a->family) {
	case 0:
		*wire = 0, used = 0;
		break;
	case AF_INET:
		*wire = 4, used = 4;
		break;
	case AF_INET6:
		*wire = 6, used = 16;
		break;
	default:
		return false;
	}
	return zeros(a->bytes + used, sizeof a->bytes - used) && (used > 0 || a->port == 0);
}

size_t session_record_size(const struct session_record *r)
{
	uint8_t fam;
	if (r->route >= SESSION_ROUTE_COUNT || r->transport >= SESSION_TRANSPORT_COUNT ||
	    !family_to_wire(&r->remote, &fam) || !hex_ok(r->conn_hex) || r->server_id.len == 0 ||
	    r->server_id.len > SESSION_RECORD_TEXT_BYTES_MAX || r->version.len > SESSION_RECORD_TEXT_BYTES_MAX ||
	    r->device.len > SESSION_RECORD_TEXT_BYTES_MAX || r->early.len > SESSION_RECORD_EARLY_BYTES_MAX)
		return 0;
	return SESSION_RECORD_FIXED_BYTES + r->server_id.len + r->version.len + r->device.len + r->early.len;
}

size_t session_record_write(const struct session_record *r, uint8_t *out, size_t cap)
{
	size_t n = session_record_size(r);
	uint8_t fam = 0;
	if (n == 0 || n > cap || !family_to_wire(&r->remote, &fam))
		return 0;
	uint8_t *p = out;
	put32(p, (uint32_t)n);
	p[4] = SESSION_RECORD_VERSION;
	p[5] = r->route;
	p[6] = r->transport;
	p[7] = fam;
	memcpy(p + 8, r->remote.bytes, 16);
	put16(p + 24, r->remote.port);
	put64(p + 26, r->client_key);
	memcpy(p + 34, r->conn_hex, SESSION_CONN_HEX_LEN);
	put16(p + 42, (uint16_t)r->server_id.len);
	put16(p + 44, (uint16_t)r->version.len);
	put16(p + 46, (uint16_t)r->device.len);
	put32(p + 48, (uint32_t)r->early.len);
	p += SESSION_RECORD_FIXED_BYTES;
	const struct span parts[] = { r->server_id, r->version, r->device, r->early };
	for (size_t i = 0; i < ARRAY_LEN(parts); i++) {
		if (parts[i].len)
			memcpy(p, parts[i].ptr, parts[i].len);
		p += parts[i].len;
	}
	return n;
}

enum session_record_err session_record_parse(struct span in, struct session_record *r, size_t *used)
{
	if (in.len < SESSION_RECORD_FIXED_BYTES)
		return in.len >= 5 && in.ptr[4] != SESSION_RECORD_VERSION ? SESSION_RECORD_BAD_VERSION
									    : SESSION_RECORD_NEED_MORE;
	const uint8_t *p = in.ptr;
	if (p[4] != SESSION_RECORD_VERSION)
		return SESSION_RECORD_BAD_VERSION;
	uint32_t total = get32(p);
	uint32_t id_len = get16(p + 42), ver_len = get16(p + 44), dev_len = get16(p + 46), early_len = get32(p + 48);
	if (id_len == 0 || id_len > SESSION_RECORD_TEXT_BYTES_MAX || ver_len > SESSION_RECORD_TEXT_BYTES_MAX ||
	    dev_len > SESSION_RECORD_TEXT_BYTES_MAX || early_len > SESSION_RECORD_EARLY_BYTES_MAX ||
	    (uint64_t)total != (uint64_t)SESSION_RECORD_FIXED_BYTES + id_len + ver_len + dev_len + early_len)
		return SESSION_RECORD_BAD_LENGTH;
	struct session_record out = { .route = p[5], .transport = p[6] };
	switch (p[7]) {
	case 0:
		out.remote.family = 0;
		break;
	case 4:
		out.remote.family = AF_INET;
		break;
	case 6:
		out.remote.family = AF_INET6;
		break;
	default:
		return SESSION_RECORD_BAD_FIELD;
	}
	memcpy(out.remote.bytes, p + 8, 16);
	out.remote.port = get16(p + 24);
	out.client_key = get64(p + 26);
	memcpy(out.conn_hex, p + 34, SESSION_CONN_HEX_LEN);
	uint8_t fam;
	if (out.route >= SESSION_ROUTE_COUNT || out.transport >= SESSION_TRANSPORT_COUNT ||
	    !family_to_wire(&out.remote, &fam) || !hex_ok(out.conn_hex))
		return SESSION_RECORD_BAD_FIELD;
	if (in.len < total)
		return SESSION_RECORD_NEED_MORE;
	const uint8_t *q = p + SESSION_RECORD_FIXED_BYTES;
	out.server_id = span_make(q, id_len);
	q += id_len;
	out.version = span_make(q, ver_len);
	q += ver_len;
	out.device = span_make(q, dev_len);
	q += dev_len;
	out.early = span_make(q, early_len);
	*r = out;
	*used = total;
	return SESSION_RECORD_OK;
}
