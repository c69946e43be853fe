/*
 * relay_conn.h - the relay's per-connection state, embedded in struct conn.
 *
 * Kept small on purpose: it lives in every connection slot, idle or not. A phone's
 * conn_id is client-<server-id>-<hex>: its server-id's slot keeps the rest of it (and
 * of the wrap prefix), so the phone itself holds only the 8 hex digits.
 */
#ifndef PYRELAY_RELAY_CONN_H
#define PYRELAY_RELAY_CONN_H

#include <stdint.h>

struct relay_slot;

enum relay_role {
	RELAY_ROLE_NONE = 0,
	RELAY_ROLE_BINARY,   /* holds its slot */
	RELAY_ROLE_CLAIMANT, /* binary waiting for the conflict probe of the incumbent */
	RELAY_ROLE_PHONE,
};

enum relay_flags {
	RELAY_F_CLOSED_BY_BINARY = 1u << 0, /* a close directive was handed to this phone */
	RELAY_F_PAUSED = 1u << 1,           /* receive paused: its binary is backed up */
};

#define RELAY_CONN_HEX_LEN 8 /* conn_id suffix: 4 CSPRNG bytes as lowercase hex */

struct relay_conn {
	struct relay_slot *slot; /* server-id this connection belongs to, NULL if none */
	uint32_t epoch;          /* phone: slot->epoch when it registered (identity of its binary) */
	uint8_t role;            /* enum relay_role */
	uint8_t phone_index;     /* phone: position in slot->phones */
	uint8_t flags;           /* enum relay_flags */
	char hex[RELAY_CONN_HEX_LEN];
};

#endif
