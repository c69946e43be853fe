/*
 * relay_conn.h - the relay's per-connection state, embedded in struct conn.
 *
 * Kept small on purpose: it lives in every connection slot, idle or not.
 */
#ifndef PYRELAY_RELAY_CONN_H
#define PYRELAY_RELAY_CONN_H

#include <stdint.h>

struct relay_slot;
struct conn;

enum relay_role {
	RELAY_ROLE_NONE = 0,
	RELAY_ROLE_BINARY,
	RELAY_ROLE_PHONE,
};

#define RELAY_CONN_HEX_LEN 8 /* conn_id suffix: 4 CSPRNG bytes as lowercase hex */

struct relay_conn {
	struct relay_slot *slot;    /* server-id this connection belongs to, NULL if none */
	struct conn *binary_at_register; /* phone: the binary that held the slot when it registered */
	uint64_t probe_deadline_ms; /* binary under a conflict probe */
	uint8_t role;               /* enum relay_role */
	uint8_t phone_index;        /* phone: position in slot->phones */
	uint8_t flags;              /* RELAY_F_* */
	uint8_t pad;
	uint16_t directive_code;    /* phone: close code of a pending close directive */
	char hex[RELAY_CONN_HEX_LEN];
};

#endif
