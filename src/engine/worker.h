/*
 * worker.h - one worker: a thread owning one io_uring event loop, as main and the
 * metrics responder see it.
 *
 * Contract:
 * - A worker owns one ring (single issuer), one listening socket (SO_REUSEPORT, so N
 *   workers each accept their share; more after a hand-over from a relay that had more
 *   workers, engine/handover.h), one provided-buffer ring, one connection pool
 *   sized at start-up, one timing wheel, one bufpool and the application state its
 *   hooks created (engine/engine.h). Nothing in it is shared with other workers.
 * - worker_create and worker_destroy run on the control thread; worker_run on the
 *   worker's own thread; worker_stop from any thread.
 * - The counter blocks (worker_stats_of, worker_pool_of, worker_app) may be read from
 *   another thread with relaxed loads (core/stat.h); the worker is their only writer.
 */
#ifndef PYRELAY_WORKER_H
#define PYRELAY_WORKER_H

#include "core/common.h"
#include "config/config.h"
#include "core/stat.h"
#include "engine/bufpool.h"
#include "engine/engine.h"
#include "engine/group.h"
#include "engine/uring.h"
#include "http/proxy_v2.h"
#include "transport/tls.h"

/* Which path a TLS connection's records took after its handshake, and why. Labels of
 * pyrycode_relay_tls_connections_total. */
enum tls_path {
	TLS_PATH_KTLS = 0,             /* keys installed in the kernel (TCP_ULP tls) */
	TLS_PATH_USER_NO_KERNEL_TLS,   /* user space: the kernel has no kTLS (TCP_ULP: ENOENT) */
	TLS_PATH_USER_UNSUPPORTED,     /* user space: a version or cipher the kernel cannot take */
	TLS_PATH_USER_REFUSED,         /* user space: the kernel refused the ULP or the send keys */
	TLS_PATH_USER_ENDED,           /* user space: the connection ended before the keys could move */
	TLS_PATH_CLOSED_RX_REFUSED,    /* closed: the kernel took the send keys and refused the receive keys */
	TLS_PATH_COUNT,
};

/* Why a connection on the TLS listener was closed unserved under --https-proxy-protocol
 * (engine/proxy_phase.c). Labels of pyrycode_relay_proxy_protocol_rejects_total: the
 * parser's reasons (enum proxy_v2_reason, the same values: "missing", "v1", "local",
 * ...), then the engine's own. */
enum proxy_reject {
	PROXY_REJECT_TIMEOUT = PROXY_V2_REASON_COUNT, /* no whole header within 5 s of the accept */
	PROXY_REJECT_EOF,                              /* the peer closed or reset before a whole header */
	PROXY_REJECT_COUNT,
};

/* Connections still in the HTTP phase (not yet upgraded) are not counted against
 * --max-connections (reference §4.7); they get their own pool slots, bounded too. A
 * worker's pool holds max_connections + this many. */
#define HTTP_PHASE_CONNECTIONS_MAX 16384u

/* How a WebSocket connection ended, by the first close frame exchanged (ours, or the
 * peer's that we echoed). Labels of pyrycode_relay_connections_closed_total. */
enum close_class {
	CLOSE_CLASS_NORMAL = 0,  /* 1000 */
	CLOSE_CLASS_GOING_AWAY,  /* 1001: shutdown, peer going away */
	CLOSE_CLASS_PROTOCOL,    /* 1002, 1003, 1007, 1008, 1009, 1010: a peer broke the rules */
	CLOSE_CLASS_INTERNAL,    /* 1011 and the other 1xxx codes a server sends */
	CLOSE_CLASS_APPLICATION, /* 3000-4999: 4404, 4409, 4429, binary directives */
	CLOSE_CLASS_NO_STATUS,   /* a close frame without a status code */
	CLOSE_CLASS_ABNORMAL,    /* no close frame at all: reset, EOF, timeout, shed */
	CLOSE_CLASS_COUNT,
};
enum close_class close_class_of(uint16_t code);

/* One worker's engine counters (single writer: the worker; see core/stat.h). */
struct worker_stats {
	uint64_t loop_iterations;
	uint64_t enters; /* io_uring_enter system calls (to submit and/or wait) */
	uint64_t waits;  /* of those, the ones made with no completion ready: the worker slept */
	uint64_t batch_wait_us; /* gauge: the --batch-wait-us in force (0: off or unsupported) */
	uint64_t batching;      /* gauge: 1 while completions come often enough that waits are batched */
	uint64_t batch_backoffs; /* batching turned off for a while: it slowed the traffic (batch_gate.starved) */
	uint64_t messages_in;    /* WebSocket data messages received (what the batching gate counts) */
	uint64_t cqes;
	uint64_t accepts;
	uint64_t handoffs_sent;     /* upgrades sent to their server-id's owner (cross-worker messages) */
	uint64_t handoffs_received; /* upgrades taken from other workers */
	uint64_t handoff_failures[HANDOFF_RESULT_COUNT]; /* [HANDOFF_OK] unused */
	uint64_t sessions_exported; /* live WebSockets handed to a successor relay (ADR 0018) */
	uint64_t sessions_resumed;  /* live WebSockets taken from a predecessor relay */
	uint64_t tls_paths[TLS_PATH_COUNT];
	uint64_t tls_key_updates; /* peer KeyUpdates followed on kTLS connections (kernel rekey) */
	struct tls_stats tls; /* written by this worker's TLS connections (transport/tls.h) */
	uint64_t accept_pool_full;
	uint64_t accept_errors;
	uint64_t ip_cap_rejects; /* upgrades refused 503 by --max-connections-per-ip */
	uint64_t proxy_rejects[PROXY_REJECT_COUNT]; /* enum proxy_reject; [0] unused */
	uint64_t recv_enobufs; /* multishot recv ended for want of a provided buffer */
	uint64_t recv_buffers; /* gauge: provided receive buffers handed to the ring so far */
	uint64_t bytes_in;
	uint64_t bytes_out;
	uint64_t payload_bytes; /* data payload bytes through the one unmask+copy+ASCII pass */
	uint64_t utf8_bytes;    /* of those, text bytes the UTF-8 validator walked as well */
	uint64_t sends;
	uint64_t zc_sends;  /* sends submitted as send_zc (--zerocopy-min-bytes) */
	uint64_t zc_copied; /* of those, the kernel copied anyway (e.g. loopback) */
	uint64_t connections_open; /* gauge: pool slots in use (HTTP and WebSocket) */
	uint64_t outbox_bytes;     /* gauge: bytes queued in outqs, not yet written */
	uint64_t closes[CLOSE_CLASS_COUNT];
	/* frames queued with CONN_SEND_LATENCY (the relay: phone frames for a binary):
	 * iteration that received them -> submission of the send that carries them */
	struct latency_hist p2b_latency;
} STAT_ALIGNED;

/* Start-up (control plane). group: the workers of this relay (engine/group.h), id <
 * group->n; tls: the TLS server every worker shares (NULL: a plaintext listener);
 * hooks: the application (engine/engine.h), app_shared passed to its create.
 * Returns NULL with a reason in why. */
struct worker *worker_create(const struct config *cfg, struct worker_group *group, uint32_t id,
			     const char *listen_addr, struct tls_server *tls, uint64_t buffer_budget_bytes,
			     const struct engine_hooks *hooks, void *app_shared, char why[URING_WHY_BYTES]);
enum worker_exit {
	WORKER_EXIT_DRAINED = 0,
	WORKER_EXIT_DRAIN_INCOMPLETE = 1, /* the 10 s drain deadline cut it short */
	WORKER_EXIT_FATAL = 2,            /* ring set-up or wait failed: why says how */
};
/* On the worker's own thread: create the ring, wait until every worker of the group
 * has one, run until worker_stop is observed and every connection has drained (or the
 * drain deadline passed). Every worker of a group must run (the start is a barrier). */
int worker_run(struct worker *w, char why[URING_WHY_BYTES]);
/* Thread-safe: ask the worker to drain and stop (writes its eventfd). */
void worker_stop(struct worker *w);
/* Thread-safe: a successor took the listeners over (engine/handover.h): stop accepting
 * and close our descriptors of them (never shutdown: they are shared), keep serving
 * what was accepted until worker_stop. */
void worker_stop_accepting(struct worker *w);
/* Thread-safe: a successor takes live sessions (ADR 0018). The worker stops reading its
 * movable WebSockets, writes what they are owed (at most HANDOVER_EXPORT_TIMEOUT_MS),
 * gives each one's record and socket to migrate_collect (engine/migrate.h) and closes
 * the rest 1001. */
void worker_export_sessions(struct worker *w);
/* Control thread, before worker_run: one more listener to accept from (one a
 * predecessor with more workers handed over). False when the worker holds
 * WORKER_LISTENERS_MAX. */
bool worker_add_listener(struct worker *w, int fd);
void worker_destroy(struct worker *w);

const struct worker_stats *worker_stats_of(const struct worker *w);
const struct bufpool *worker_pool_of(const struct worker *w);
/* What the application's create hook returned for this worker. */
void *worker_app(const struct worker *w);

#endif
