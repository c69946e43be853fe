/*
 * relay.h - the registry shard and routing of one worker (reference §2-§6).
 *
 * Contract:
 * - A shard owns every server-id whose binary and phones live on its worker: claims,
 *   phone registration, grace timers, conflict probes and routing are plain function
 *   calls on worker-local memory (no locks, no atomics).
 * - The engine drives it through relay_hooks (engine/engine.h's struct engine_hooks);
 *   the shard sees a connection only as a struct conn_ref and acts on it only through
 *   the conn_* functions there. Its per-connection state is its own array, indexed by
 *   the ref's pool index.
 * - Counters are plain per-worker integers; the metrics responder sums them.
 * - Slots (one per server-id) are allocated on claim (control plane) and freed when
 *   the last binary, phone, grace timer and probe are gone.
 */
#ifndef PYRELAY_RELAY_H
#define PYRELAY_RELAY_H

#include "core/common.h"
#include "core/stat.h"
#include "engine/engine.h"
#include "envelope/json.h"

/* Reference limits (§4.3, §5.7) and our binary-side back-pressure marks (DESIGN.md:
 * pause a server-id's phones instead of dropping them after a write timeout). */
#define RELAY_PHONES_PER_SERVER_MAX 16u
#define RELAY_PHONE_OUTBOX_BUDGET_BYTES (4u * 1024u * 1024u)
#define RELAY_OUTBOX_ITEM_OVERHEAD_BYTES 64u
#define RELAY_BINARY_OUTBOX_HIGH_WATER_BYTES (4u * 1024u * 1024u)
#define RELAY_BINARY_OUTBOX_LOW_WATER_BYTES (1u * 1024u * 1024u)
#define RELAY_PROBE_PAYLOAD "relay-probe"
#define RELAY_RATELIMIT_BUCKETS_MAX 65536u /* addresses tracked, per worker (shared by all) */
#define RELAY_RATELIMIT_STRIPES 16u        /* the shared limiter's independently locked tables */

/* Application close codes (reference §2.2, §2.3, §4.2). */
#define RELAY_CLOSE_NO_SERVER 4404     /* no such server-id; also: phones of a reclaimed one */
#define RELAY_CLOSE_ID_CONFLICT 4409   /* server-id held by a live binary */
#define RELAY_CLOSE_PHONES_AT_CAP 4429 /* RELAY_PHONES_PER_SERVER_MAX phones already */

/* A phone's conn_id suffix: 4 CSPRNG bytes as lowercase hex. */
#define RELAY_CONN_HEX_LEN 8

enum relay_endpoint { RELAY_EP_SERVER = 0, RELAY_EP_CLIENT, RELAY_EP_COUNT };

enum relay_outcome {
	RELAY_OUT_ACCEPT = 0,
	RELAY_OUT_REJECT_HEADERS,
	RELAY_OUT_REJECT_409,
	RELAY_OUT_REJECT_404,
	RELAY_OUT_REJECT_429,
	RELAY_OUT_REJECT_RATE_LIMIT,
	RELAY_OUT_COUNT,
};

enum relay_fail_kind {
	RELAY_FAIL_NO_SERVER = 0,
	RELAY_FAIL_SERVER_IN_USE,
	RELAY_FAIL_PHONES_AT_CAP,
	RELAY_FAIL_RATELIMIT,
	RELAY_FAIL_COUNT,
};

/* Why a frame was not delivered. Labels of pyrycode_relay_frames_dropped_total. */
enum relay_drop {
	RELAY_DROP_PHONE_INVALID_JSON = 0, /* phone frame is not JSON: phone closed 1000 */
	RELAY_DROP_NO_BINARY,              /* phone frame while its binary is gone (grace) */
	RELAY_DROP_BINARY_OUTBOX,          /* the binary's outbox refused it (buffer budget) */
	RELAY_DROP_MALFORMED_ENVELOPE,     /* binary envelope unparseable or incomplete */
	RELAY_DROP_UNKNOWN_CONN_ID,        /* envelope for a phone this server-id lacks */
	RELAY_DROP_PUSH_WAKE,              /* push wake refused: push off, malformed, rate, cap */
	RELAY_DROP_PHONE_CLOSED,           /* phone already closing */
	RELAY_DROP_PHONE_BACKLOG,          /* phone over its 4 MiB budget: closed 1011 */
	RELAY_DROP_COUNT,
};

/* One worker's registry counters (single writer: the worker; see core/stat.h). */
struct relay_stats {
	uint64_t upgrade_attempts[RELAY_EP_COUNT][RELAY_OUT_COUNT];
	uint64_t register_failures[RELAY_FAIL_COUNT];
	uint64_t frames_phone_to_binary;
	uint64_t frames_binary_to_phone;
	/* Forwarded payload bytes copied into an outbox: by the JSON validation as it
	 * checked them (a phone's frame, written into its binary's outbox in place; a
	 * binary's frame in the routed form binaries send, envelope_routed_shape), or by
	 * a separate copy (any other envelope: its phone is known only once it is
	 * scanned; a frame the outbox could not take in one piece). */
	uint64_t copied_in_scan_bytes;
	uint64_t copied_apart_bytes;
	uint64_t grace_expiries;
	uint64_t binaries;      /* holding a slot, not gracing */
	uint64_t phones;        /* registered */
	uint64_t phone_pauses;  /* times a server-id's phones were paused for its binary */
	uint64_t dropped[RELAY_DROP_COUNT];
} STAT_ALIGNED;

struct relay_shard;
/* app: what relay_hooks.create returned (worker_app). */
const struct relay_stats *relay_stats_of(const struct relay_shard *s);

/* The relay as the engine's application: pass to worker_create, with a relay_shared
 * made for the same worker count as app_shared. */
extern const struct engine_hooks relay_hooks;

/*
 * The push-wake sender as the relay sees it (reference §7.2): main wires the control
 * thread's admission (control/push.h) in when FCM credentials are set. submit runs on
 * the worker for a push_wake that passed envelope_push_wake_parse; it never blocks and
 * returns NULL when the wake was admitted, else the refusal's fixed err text (push
 * off after shutdown began, the per-server-id rate, the in-flight cap). The relay
 * includes nothing of control/: the port is its only view of the sender.
 */
struct relay_push_port {
	void *ctx;
	const char *(*submit)(void *ctx, struct span server_id, struct json_str token);
};

/* What the shards of one relay share (the per-IP rate limiter, exact across workers;
 * /healthz counts; the push port, NULL when push is off). Created before the workers,
 * destroyed after them. */
struct relay_shared;
struct config;
struct relay_shared *relay_shared_create(const struct config *cfg, uint32_t workers,
					 const struct relay_push_port *push);
void relay_shared_destroy(struct relay_shared *sh);

#endif
