/*
 * shard.h - the registry shard's own types, shared by relay.c (decisions), route.c
 * (routing) and slots.c (storage: the server-id table and the conn_id templates), and
 * by nothing else.
 */
#ifndef PYRELAY_RELAY_SHARD_H
#define PYRELAY_RELAY_SHARD_H

#include "config/config.h"
#include "engine/engine.h"
#include "relay/ratelimit.h"
#include "relay/relay.h"

enum relay_timer_kind {
	TW_KIND_GRACE = TW_KIND_APP,
	TW_KIND_PROBE,
	TW_KIND_SWEEP,
};

enum relay_role {
	RELAY_ROLE_NONE = 0,
	RELAY_ROLE_BINARY,   /* holds its slot */
	RELAY_ROLE_CLAIMANT, /* binary waiting for the conflict probe of the incumbent */
	RELAY_ROLE_PHONE,
};

enum relay_flags {
	RELAY_F_CLOSED_BY_BINARY = 1u << 0, /* a close directive was handed to this phone */
	RELAY_F_PAUSED = 1u << 1,           /* receive paused: its binary is backed up */
	RELAY_F_FORWARDER_ENDED = 1u << 2,  /* the relay ended this phone's forwarding (and said why) */
	RELAY_F_DIRECTIVE_FRAME = 1u << 3,  /* the close directive's frame was queued (directive_code) */
	RELAY_F_MOVING = 1u << 4,           /* binary: moving to a successor relay, its phones with it */
};

/*
 * The relay's state of one upgraded connection, at the connection's pool index (kept
 * small: the array has a cell for every pool slot). A phone's conn_id is
 * client-<server-id>-<hex>: its server-id's slot keeps the rest of it (and of the wrap
 * prefix), so the phone itself holds only the 8 hex digits.
 */
struct relay_conn {
	struct relay_slot *slot; /* server-id this connection belongs to, NULL if none */
	uint32_t gen;            /* the connection's ref generation while it is open */
	uint32_t epoch;          /* phone: slot->epoch when it registered (identity of its binary) */
	uint8_t role;            /* enum relay_role */
	uint8_t endpoint;        /* enum relay_endpoint it upgraded on */
	uint8_t phone_index;     /* phone: position in slot->phones */
	uint8_t flags;           /* enum relay_flags */
	char hex[RELAY_CONN_HEX_LEN];
	uint16_t directive_code; /* phone: the close code of the directive it was handed */
};

_Static_assert(sizeof(struct relay_conn) <= 32, "a relay cell per pool slot: keep it small");

#define RELAY_NO_CONN UINT32_MAX

struct relay_slot {
	struct relay_slot *hnext;
	uint64_t hash;
	uint32_t binary;   /* pool index of the live holder; RELAY_NO_CONN while gracing or unclaimed */
	uint32_t claimant; /* binary waiting for the probe of `binary`, or RELAY_NO_CONN */
	struct tw_node grace;  /* armed while the released binary's grace runs */
	struct tw_node probe;  /* armed while a conflict probe waits for a pong */
	/* The claimant's X-Pyrycode-Version while it waits (malloc'd, NULL otherwise), for
	 * its server_claimed line after a takeover: at most LOG_VALUE_BYTES_MAX + 1 bytes,
	 * which the logger cuts exactly as it would cut the whole value. */
	uint8_t *claimant_version;
	uint32_t claimant_version_len;
	uint32_t epoch;        /* bumped at every claim: identity of "the binary" */
	bool gracing;
	bool phones_paused;
	uint8_t nphones;
	uint32_t phones[RELAY_PHONES_PER_SERVER_MAX]; /* [0, nphones): pool indexes */
	uint32_t id_len;
	uint32_t wrap_len;
	/* The phones' conn_id, client-<id>-<hex8> (the server-id is inside it), then its
	 * wrap prefix {"conn_id":"<escaped conn_id>","frame": ; built once per server-id,
	 * so a phone holds only its 8 hex digits (the conn_id's last 8 bytes, never
	 * escaped, so also the 8 bytes before the prefix's tail). */
	uint8_t bytes[];
};

#define PHONE_CID_PREFIX "client-"
#define PHONE_CID_PREFIX_LEN (sizeof PHONE_CID_PREFIX - 1)
#define WRAP_TAIL_LEN (sizeof ENVELOPE_WRAP_PREFIX_TAIL - 1)

struct relay_shard {
	struct worker *w;
	const struct config *cfg;
	struct relay_shared *shared;
	uint32_t id;           /* the worker's */
	struct relay_conn *rc; /* one per pool slot of w */
	struct relay_slot **buckets;
	uint32_t nbuckets; /* power of two */
	uint32_t nslots;
	uint64_t hash_key[2];
	struct tw_node sweep;
	struct relay_stats stats;
};

#define RELAY_BUCKETS_INITIAL 1024u
/* Scratch sizes for log values: a binary's conn_id, and a rate-limit key in quotes. */
#define BINARY_CONN_ID_BYTES_MAX 256u
#define BINARY_CONN_ID_SERVER_ID_LOGGED_MAX 200
#define RATE_LIMIT_KEY_LOGGED_MAX 140
#define RATE_LIMIT_KEY_QUOTED_BYTES (RATE_LIMIT_KEY_LOGGED_MAX + 20u)
/* Close notices of conn_ids up to this long are built on the stack, longer ones in the pool. */
#define CLOSE_NOTICE_STACK_CONN_ID_MAX 64u

/* ------------------------------------------------------------------ connections */

static inline struct relay_conn *rc_of(struct relay_shard *s, struct conn_ref c)
{
	return &s->rc[c.idx];
}

/* The ref of a connection the relay holds (binary, claimant or phone of a slot). */
static inline struct conn_ref ref_at(const struct relay_shard *s, uint32_t idx)
{
	ASSERT(idx != RELAY_NO_CONN);
	return (struct conn_ref){ .idx = idx, .gen = s->rc[idx].gen };
}

static inline bool is_conn(uint32_t idx, struct conn_ref c)
{
	return idx == c.idx;
}

/* ---- shared.c ---- */

void relay_shared_register(struct relay_shared *sh, uint32_t worker, struct relay_shard *s);
/* One upgrade attempt from key (§6.1) at the worker's now_ms: true to let it through. */
bool relay_shared_allow(struct relay_shared *sh, struct span key, uint64_t now_ms);
/* Sweep the limiter stripes this worker looks after. */
void relay_shared_sweep(struct relay_shared *sh, uint32_t worker, uint64_t now_ms);
void relay_shared_counts(const struct relay_shared *sh, uint64_t *binaries, uint64_t *phones);
/* The push sender's port, or NULL when push is off. */
const struct relay_push_port *relay_shared_push(const struct relay_shared *sh);

/* ---- route.c ---- */

/* Frames for a binary: counted when written, and their queueing latency observed. */
#define RELAY_TO_BINARY (CONN_SEND_COUNTED | CONN_SEND_LATENCY)
/* §3.2: a phone's message, validated, wrapped and queued for its binary. */
void route_phone_message(struct relay_shard *s, struct conn_ref c, struct span data);
/* §3.3, §3.4: a binary's envelope, routed, acted on or dropped. */
void route_binary_message(struct relay_shard *s, struct conn_ref c, struct span data);
/* Stop (or resume) reading sl's phones: its binary's outbox crossed the high-water mark
 * (or fell below the low one). */
void route_pause_phones(struct relay_shard *s, struct relay_slot *sl, bool pause);

/* ---- slots.c ---- */

void *shard_create(struct worker *w, const struct config *cfg, void *shared);
void shard_destroy(void *app);
struct relay_slot *slot_find(struct relay_shard *s, struct span id);
/* A new slot for id with no binary, claimant or phone; NULL when out of memory. */
struct relay_slot *slot_create(struct relay_shard *s, struct span id);
/* Free sl once nothing refers to it (no binary, claimant, phone, grace or probe). */
void slot_maybe_free(struct relay_shard *s, struct relay_slot *sl);
uint32_t slot_cid_len(const struct relay_slot *sl);
uint8_t *slot_wrap(struct relay_slot *sl);
uint32_t slot_wrap_hex_off(const struct relay_slot *sl);
struct conn_ref slot_phone(const struct relay_shard *s, const struct relay_slot *sl, uint8_t i);
struct span slot_id(const struct relay_slot *sl);
struct span phone_conn_id(const struct relay_conn *rc);
struct span binary_conn_id(const struct relay_conn *rc, char *buf, size_t cap);

#endif
