/*
 * internal.h - the engine's own view of a worker and its connections, shared by the
 * engine's files and by nothing else (the application uses engine/engine.h).
 *
 * The files, in the order a connection meets them:
 *   loop.c        ring set-up, provided buffers, accept, CQE dispatch, timers, shutdown
 *   conn.c        the connection pool and lifecycle: states, deadlines, teardown
 *   proxy_phase.c --https-proxy-protocol: the PROXY v2 header, before TLS (reference §1.4)
 *   http_phase.c  request heads, /healthz, admission, the upgrade (-> struct upgraded)
 *   handoff.c     an upgrade whose server-id another worker owns goes there (MSG_RING)
 *   ws_phase.c    frames in (reader, control frames, heartbeat) and frames out
 *   send.c        the outbox to send/send_zc, completions, p2b latency
 *   group.c       what the workers share: owners, the cap count, handoff bounds
 *
 * Two seams carry every byte, so a transport (TLS) sits under the phases without
 * touching them: bytes in enter at conn_input (conn.c), which decrypts them for a TLS
 * connection; bytes out leave at send_submit (send.c), which encrypts the outbox for
 * one. The outbox of a TLS connection always holds plaintext.
 *
 * Every connection moves through enum conn_state in one direction only: HTTP ->
 * [HANDOFF ->] WS_OPEN -> WS_CLOSING -> DRAINING -> DEAD -> FREE (any state may jump
 * forward, never back; conn_move asserts it). A connection handed to another worker
 * leaves this one from HANDOFF through DEAD without its fd being closed; the owner
 * adopts the fd in a fresh slot of its own, starting at HTTP.
 */
#ifndef PYRELAY_ENGINE_INTERNAL_H
#define PYRELAY_ENGINE_INTERNAL_H

#include <liburing.h>
#include <netinet/in.h>

#include "core/common.h"
#include "config/config.h"
#include "core/stat.h"
#include "engine/batch.h"
#include "engine/bufpool.h"
#include "engine/engine.h"
#include "engine/group.h"
#include "engine/outq.h"
#include "engine/timer_wheel.h"
#include "engine/uring.h"
#include "engine/worker.h"
#include "http/http_head.h"
#include "http/http_parse.h"
#include "http/http_respond.h"
#include "transport/tls.h"
#include "ws/ws_reader.h"

/* Reference §5.3 / §5.4 and RFC 6455 close handshake bounds (HTTP's are in http_head.h). */
#define WS_MESSAGE_READ_TIMEOUT_MS 30000u
#define WS_WRITE_TIMEOUT_MS 10000u
#define WS_CLOSE_HANDSHAKE_TIMEOUT_MS 5000u
#define SHUTDOWN_DRAIN_TIMEOUT_MS 10000u
/* Reference §1.4 (proxyHeaderTimeout): the PROXY v2 header must be in within this long
 * of the accept; the TLS handshake that follows shares the deadline, as in Go. */
#define PROXY_HEADER_TIMEOUT_MS 5000u

/* SQEs per worker ring (the CQ has 4x as many). Ring memory counts against the
 * user's RLIMIT_MEMLOCK (8 MiB by default): at 1024 a worker's rings take about 130 KiB,
 * so one worker per CPU of a 32-core host fits the default. A fuller SQ is submitted
 * early (uring_get_sqe), a fuller CQ overflows into the kernel's list: both only cost
 * time, and only under bursts larger than a thousand operations per iteration. */
#define RING_ENTRIES 1024u
#define RECV_BUFFER_BYTES (16u * 1024u)
#define RECV_BUFFER_COUNT 1024u /* per worker: 16 MiB of address space, shared by all its connections */
/* Buffers handed to the kernel at start. The ring doubles (to RECV_BUFFER_COUNT) after
 * RECV_STARVED_ITERATIONS_TO_GROW of the last RECV_STARVED_WINDOW_ITERATIONS loop
 * iterations had a receive find it empty, so a quiet relay touches a few
 * hundred KiB of receive memory instead of 16 MiB: the kernel fills provided buffers
 * round-robin, so every buffer in the ring gets used (and backed by RAM) in turn. */
#define RECV_BUFFER_COUNT_INITIAL 64u
#define RECV_STARVED_ITERATIONS_TO_GROW 2u /* ... within the last RECV_STARVED_WINDOW_ITERATIONS */
#define RECV_STARVED_WINDOW_ITERATIONS 4u
#define RECV_STARVED_WINDOW_MASK ((1u << RECV_STARVED_WINDOW_ITERATIONS) - 1u)
#define RECV_BUFFER_GROUP 1
#define LISTEN_BACKLOG 4096
#define HTTP_HEAD_BUF_INITIAL_BYTES 1024u /* first head buffer; grows to HTTP_HEAD_BYTES_MAX */
#define ACCEPT_BACKOFF_MS 100u /* after EMFILE and friends */
/* --batch-wait-us (engine/batch.h): with no timer due, the timeout of a batched wait
 * (the kernel needs one: without it the bound's end wakes the worker whether or not
 * anything came). */
#define BATCH_IDLE_WAIT_S 3600
/* Autocert: at most this many handshakes per worker wait for the first certificate
 * (more fail at once, TLS_ERR_NO_CERT), polled this often; the handshake deadline
 * (TLS_HANDSHAKE_TIMEOUT_MS from accept) bounds each wait, as the reference's 5 s read
 * deadline bounds its first handshake. */
#define CERT_WAITERS_MAX 256u
#define CERT_POLL_MS 50u
/* Heartbeat ping payloads are a decimal sequence number. */
#define HEARTBEAT_PAYLOAD_BYTES_MAX 16u

/* Every idle connection pays for its slot: the 512 B per idle connection goal (bench
 * relay/idle, ADR 0006) leaves this much for the slot itself. */
#define CONN_SLOT_BYTES_MAX 256u

/* Listeners one worker may hold: a predecessor's workers' share (CONFIG_WORKERS_MAX). */
#define WORKER_LISTENERS_MAX 256u

/* user_data operations of the worker ring. */
enum op {
	OP_ACCEPT = 1,
	OP_RECV,
	OP_SEND,
	OP_WAKE,
	OP_IGNORE, /* cancels: their completion needs no action */
	OP_HANDOFF,      /* another worker's MSG_RING: an upgrade for us (HANDOFF_UD) */
	OP_HANDOFF_SENT, /* our MSG_RING completed (HANDOFF_UD) */
	OP_RESUME_GO,    /* every live session from a predecessor is in: read them (migrate.c) */
};

/* A handoff's user_data carries its struct upgraded: the pointer below the op byte
 * (user-space pointers are below 2^56 on x86-64 and arm64, asserted). */
#define HANDOFF_PTR_MASK ((UINT64_C(1) << 56) - 1)
#define HANDOFF_UD(op, ptr) (((uint64_t)(op) << 56) | (uint64_t)(uintptr_t)(ptr))
#define HANDOFF_PTR(ud) ((struct upgraded *)(uintptr_t)((ud) & HANDOFF_PTR_MASK))

enum conn_state {
	CONN_FREE = 0,
	CONN_HTTP,       /* reading requests */
	CONN_HANDOFF,    /* upgrade accepted for another worker: waiting for our receive and send to stop */
	CONN_WS_OPEN,    /* upgraded, frames flow */
	CONN_WS_CLOSING, /* we sent a close frame, waiting for the peer's (bounded) */
	CONN_DRAINING,   /* flush what is queued, then FIN, discard input until EOF (bounded) */
	CONN_DEAD,       /* waiting for in-flight operations before the fd is closed */
};

struct send_ctx;

/* A live session from a predecessor waiting to be read (migrate.c). */
struct resume_hold {
	struct conn_ref ref;
	struct upgraded *u;
};

struct conn {
	struct tw_node timer;
	struct outq out;
	struct ws_reader *ws;    /* NULL at rest (between frames): see ws_input */
	uint8_t *http_buf;
	uint32_t http_cap;
	uint32_t http_len;
	struct send_ctx *send;
	struct conn *dirty_next; /* on the worker's flush list */
	struct conn *ended_next; /* on the worker's "tell the application" list */
	struct upgraded *handoff; /* HANDOFF: the upgrade, until it is sent to its owner */
	struct tls_conn *tls;     /* user-space TLS state, NULL for plaintext (transport/tls.h) */

	uint64_t read_deadline_ms;  /* HTTP head, or current WS message */
	uint64_t write_deadline_ms; /* the outbox's head segment must be written by then (§5.4) */
	uint64_t close_deadline_ms; /* close handshake / drain bound */
	uint64_t ping_at_ms;        /* next heartbeat ping */
	uint64_t pong_deadline_ms;  /* heartbeat pong due */
	uint64_t ping_sent_ms;
	/* CONN_SEND_LATENCY frames queued and not yet submitted: the loop-iteration
	 * times at which the oldest and newest were received (p2b_latency). */
	uint64_t lat_first_ns;
	uint64_t lat_last_ns;
	uint32_t lat_frames;

	int fd;
	uint32_t idx;
	uint32_t gen;
	uint32_t hb_seq;          /* payload of the outstanding heartbeat ping */
	uint32_t items_pending;   /* counted items queued, not yet written */
	uint16_t requests;        /* keep-alive requests served */
	uint16_t peer_close_code; /* status of the peer's close frame, 0 if none */
	uint16_t close_code;      /* first close frame we queued (ours or the echo) */
	/* flags: one bit each, a connection slot is paid for by every idle connection */
	uint8_t state;            /* enum conn_state */
	bool upgraded : 1;        /* reached the WebSocket phase: the application hears of its end */
	bool recv_armed : 1;
	bool send_inflight : 1;
	bool in_dirty : 1;
	bool in_ended : 1;
	bool ended_reported : 1;
	bool recv_paused : 1;
	bool counted : 1;             /* holds a --max-connections slot */
	bool handed_off : 1;          /* the fd went to another worker: never closed here */
	bool tls_closing : 1;         /* our close_notify is queued: nothing more to encrypt */
	bool counted_tls_path : 1;    /* its TLS path (worker_stats.tls_paths) is counted */
	bool wr_shut : 1;
	bool close_sent : 1;          /* close_code is set */
	bool zc_notif_pending : 1;    /* a send_zc completed; its buffers are held until the notification */
	bool hb_suspended : 1;        /* heartbeat on hold while reading is paused (conn_pause_recv) */
	bool hb_awaiting : 1;         /* ... with the ping hb_seq still unanswered */
	bool ktls : 1;                /* kTLS installed: the socket carries plaintext (ktls_phase.c) */
	bool ktls_undecided : 1;      /* TLS, the kernel has kTLS, the keys are not yet installed or refused */
	bool ktls_wait_tx : 1;        /* ... waiting for user space's ciphertext to leave first */
	bool ktls_rekeyed : 1;        /* a KeyUpdate was followed: the receive's EKEYEXPIRED is expected */
	bool proxy_pending : 1;       /* its PROXY v2 header is still to come (proxy_phase.c) */
	bool exporting : 1;           /* moving to a successor relay: not read, bytes kept raw (migrate.c) */
	uint8_t end_cause;        /* enum conn_end_cause: the first one noted */
	uint64_t client_key;      /* counted: its --max-connections-per-ip key, 0 for none */
	int32_t zc_res;           /* that send's result, applied when the notification comes */
	struct peer_addr remote;
};

struct worker {
	struct io_uring ring;
	struct uring_features feat;
	const struct config *cfg;
	const struct engine_hooks *hooks;
	void *app;
	struct worker_group *group;
	struct tls_server *tls_server; /* NULL: the listener is plaintext */
	bool ktls_available;           /* the kernel has kTLS (ktls_probe at start) */
	uint32_t id;
	/* Its listeners: one bound at start, or more when a predecessor with more workers
	 * handed its listeners over (engine/net.h); -1 once closed. */
	int listen_fds[WORKER_LISTENERS_MAX];
	bool accept_armed[WORKER_LISTENERS_MAX];
	/* After a hand-over, per listener: our accept is being cancelled, then one sweep
	 * takes what arrived meanwhile, then the descriptor closes (loop.c, stop_accepting). */
	uint8_t accept_sweep[WORKER_LISTENERS_MAX];
	uint32_t swept_accepts; /* by those sweeps: logged when the last ends */
	uint32_t nlisten;
	bool stop_requested;  /* atomic: worker_stop */
	bool accept_off_requested; /* atomic: worker_stop_accepting (a successor took the listeners) */
	bool accept_off;           /* the worker acted on it */
	bool export_requested;     /* atomic: worker_export_sessions */
	bool export_started;       /* the worker acted on it (once per process) */
	struct export_state *export; /* sessions on their way out, NULL otherwise (migrate.c) */
	/* Live sessions from a predecessor, open but not yet read until all of them are in
	 * (a binary's early bytes may address phones still on their way): migrate.c. */
	struct resume_hold *held;
	uint32_t nheld, held_cap;
	uint64_t held_deadline_ms;
	struct tw_node accept_backoff;
	/* Handshakes paused for autocert's first certificate (TLS_WAIT_CERT): re-driven
	 * when the server's certificate generation moves, polled every CERT_POLL_MS. */
	struct conn_ref cert_waiters[CERT_WAITERS_MAX];
	uint32_t n_cert_waiters;
	uint64_t cert_gen_seen;
	struct tw_node cert_poll;
	bool accept_failing; /* "accept failed" is logged; "accept recovered" at the next accept */
	int wake_fd;
	uint64_t wake_value;
	bool wake_armed;
	bool ring_ready;
	bool ring_registered;    /* the ring fd is registered: enter with IORING_ENTER_REGISTERED_RING */
	uint32_t batch_wait_us;  /* --batch-wait-us when the kernel supports it, else 0 */
	struct batch_gate batch_gate; /* whether messages come often enough to batch */
	struct msghdr ktls_msg;  /* the header of every kTLS receive: room for the record type */
	/* [conn idx]: a TLS 1.3 kTLS connection's traffic secrets, to follow a KeyUpdate
	 * (ktls_phase.c); only when ktls_available. A slot has no room for the pointer. */
	struct ktls_secrets **ktls_sec;

	struct io_uring_buf_ring *br;
	uint8_t *bufs;
	uint32_t br_unadvanced;
	uint32_t br_populated; /* buffers [0, br_populated) are in use by the ring */
	uint32_t br_starved_hist; /* bit i: a receive hit ENOBUFS in the iteration i back (0: this one) */

	struct conn *conns;
	uint32_t conn_cap;
	uint32_t *free_idx;
	uint32_t free_top;
	uint32_t live;        /* pool slots in use */

	struct conn *dirty_head;
	struct conn *ended_head;

	uint64_t now_ms;
	uint64_t iter_ns;  /* CLOCK_MONOTONIC when this iteration's completions were reaped */
	uint64_t flush_ns; /* when the current flush began, 0 until needed */
	uint64_t start_ms;
	bool stopping;
	uint64_t drain_deadline_ms;
	bool drain_incomplete;

	struct bufpool pool;
	struct worker_stats stats;
	struct timer_wheel tw; /* large: keep last */
};

/* ---- conn.c: pool and lifecycle ---- */

/* Note why c is ending, unless a cause is noted already (the first one wins). */
static inline void conn_note_end(struct conn *c, enum conn_end_cause why)
{
	if (c->end_cause == CONN_END_UNKNOWN)
		c->end_cause = (uint8_t)why;
}

/* A pool slot for fd in the HTTP phase, NULL when the pool is exhausted. remote: the
 * peer address when known (a handoff), else NULL to ask the socket. The receive is
 * armed by the caller (conn_arm_recv). */
struct conn *conn_alloc(struct worker *w, int fd, const struct peer_addr *remote);
/* Move forward through enum conn_state (asserted). */
void conn_move(struct conn *c, enum conn_state to);
/* The slot of a ref the application holds (asserted live). */
struct conn *conn_at(struct worker *w, struct conn_ref ref);
static inline struct conn_ref conn_ref_of(const struct conn *c)
{
	return (struct conn_ref){ .idx = c->idx, .gen = c->gen };
}
/* The certificate poll timer fired: re-drive waiting handshakes if it arrived. */
void conn_cert_poll(struct worker *w);
/* The one entrance of received bytes into the phases (the transport seam). */
void conn_input(struct worker *w, struct conn *c, uint8_t *p, size_t n);
bool conn_reads(const struct conn *c);
/* Bytes still to leave for the socket: the outbox, and for TLS the ciphertext and the
 * close_notify a draining connection still owes. */
bool conn_has_output(const struct conn *c);
/* The peer's IP as text (conn_remote_ip for the engine's own logs). */
size_t conn_ip_text(const struct conn *c, char *out, size_t cap);
void conn_arm_recv(struct worker *w, struct conn *c);
void conn_timer_update(struct worker *w, struct conn *c);
void conn_timer_fire(struct worker *w, struct conn *c);
void conn_report_end(struct worker *w, struct conn *c);
void conn_run_ended(struct worker *w);
void conn_maybe_free(struct worker *w, struct conn *c);
/* The TLS state of a connection on the TLS listener (at the accept, or after its
 * PROXY v2 header). False when out of memory. */
bool conn_tls_begin(struct worker *w, struct conn *c);
/* Give back c's --max-connections slot and its per-IP share, if it holds them. */
void conn_put_cap(struct worker *w, struct conn *c);
void conn_kill(struct worker *w, struct conn *c);
void conn_drain(struct worker *w, struct conn *c);
void conn_outq_clear(struct worker *w, struct conn *c);
void conn_put_http_buf(struct worker *w, struct conn *c);
void conn_put_reader(struct worker *w, struct conn *c);
void conn_put_asm_buf(struct worker *w, struct ws_reader *r);
uint32_t conn_reader_pool_bytes(void);
/* Replace *buf (NULL or a pool buffer of *cap bytes whose first `keep` bytes matter)
 * with a pool buffer of at least `want` bytes holding those bytes. False, with *buf
 * untouched, when the pool refuses. */
bool conn_pool_regrow(struct worker *w, uint8_t **buf, uint32_t *cap, uint32_t keep, size_t want);

/* ---- send.c: the outbox ---- */

bool send_queue(struct worker *w, struct conn *c, const struct iovec *parts, size_t n);
/* Bytes were added to c's outbox (it held `before`): count them, start the write
 * deadline, and have the loop send them. */
void send_queued(struct worker *w, struct conn *c, uint64_t before);
bool send_queue_bytes(struct worker *w, struct conn *c, const void *p, size_t n);
/* Submit a send for every connection queued to during this iteration (the transport
 * seam's other side: send_submit is the only place bytes leave). */
void send_flush(struct worker *w);
void send_on_cqe(struct worker *w, struct conn *c, const struct io_uring_cqe *cqe);
void send_put_ctx(struct worker *w, struct conn *c);
void send_mark_dirty(struct worker *w, struct conn *c);

/* ---- http_phase.c ---- */

void http_phase_input(struct worker *w, struct conn *c, uint8_t *p, size_t n);

/* ---- ktls_phase.c: records move into the kernel ---- */

/* c's handshake is complete and it has consumed all its input (or it was just adopted
 * from another worker): install its keys in the kernel once nothing of user space's is
 * in flight, or settle for user space and count why. Safe to call again. */
void ktls_phase_try(struct worker *w, struct conn *c);
/* c's ciphertext in flight has been sent: try again if it was waiting for that. */
void ktls_phase_tx_done(struct worker *w, struct conn *c);
/* Arm c's receive (conn_arm_recv): kTLS connections receive with recvmsg and a control
 * buffer; undecided ones one receive at a time, and no further than the record begun. */
void ktls_phase_arm_recv(struct worker *w, struct conn *c, struct io_uring_sqe *sqe);
/* A kTLS receive completed with n bytes of recvmsg output in buf. */
void ktls_phase_input(struct worker *w, struct conn *c, uint8_t *buf, size_t n);
/* A receive of a kTLS connection failed with EKEYEXPIRED: true when that was expected
 * (a KeyUpdate was just followed) and the receive should simply be armed again. */
bool ktls_phase_key_expired(struct worker *w, struct conn *c);
/* Release c's secrets (its slot is freed), or move them into / out of a handoff. */
void ktls_phase_release(struct worker *w, struct conn *c);
struct ktls_secrets *ktls_phase_take_secrets(struct worker *w, struct conn *c);
void ktls_phase_adopt_secrets(struct worker *w, struct conn *c, struct ktls_secrets *s);
/* Shut our sending side: a kTLS connection sends its close_notify first. */
void conn_shut_wr(struct worker *w, struct conn *c);

/* ---- proxy_phase.c ---- */

/* Does a connection accepted now start with the PROXY v2 phase? (--https-proxy-protocol,
 * on the TLS listener.) */
static inline bool proxy_phase_wanted(const struct worker *w)
{
	return w->tls_server != NULL && w->cfg->https_proxy_protocol;
}
/* Received bytes of c while c->proxy_pending (conn_input). True when the header is
 * accepted and bytes follow it: *p, *n are then those bytes, for TLS. False: nothing
 * more to do (the header is incomplete, or c was refused and is torn down). */
bool proxy_phase_input(struct worker *w, struct conn *c, uint8_t **p, size_t *n);
/* c is torn down while its header is still to come (conn_kill): counts why. */
void proxy_phase_abandoned(struct worker *w, struct conn *c);

/* ---- handoff.c ---- */

/* The upgrade u of c belongs to worker `owner`: stop reading, flush, then send. */
void handoff_begin(struct worker *w, struct conn *c, struct upgraded *u, uint32_t owner);
/* c's receive or send stopped: send the handoff once both have. */
void handoff_progress(struct worker *w, struct conn *c);
/* Received bytes of a connection in HANDOFF go with the upgrade. */
void handoff_input(struct worker *w, struct conn *c, const uint8_t *p, size_t n);
void handoff_on_cqe(struct worker *w, const struct io_uring_cqe *cqe);
/* Release what a connection that dies in HANDOFF still holds. */
void handoff_drop(struct worker *w, struct conn *c);

/* ---- migrate.c: live sessions to / from another relay (ADR 0018) ---- */

/* While sessions are on their way out, the loop checks them at least this often. */
#define MIGRATE_EXPORT_POLL_MS 10
/* Stop reading every movable WebSocket (worker_export_sessions arrived). */
void migrate_export_begin(struct worker *w);
/* Each iteration while w->export: finish once every session is ready or the deadline
 * passed. abort: the worker drains now (no session moves). */
void migrate_export_progress(struct worker *w, bool abort);
/* Bytes received by an exporting connection: kept raw, they travel as early bytes. */
void migrate_export_input(struct worker *w, struct conn *c, const uint8_t *p, size_t n);
/* Successor: c was opened from u (ws_phase_resume); its early bytes and its receive
 * wait for migrate_resume_release (OP_RESUME_GO, or MIGRATE_RESUME_HOLD_MS). Takes u. */
void migrate_resume_hold(struct worker *w, struct conn *c, struct upgraded *u);
void migrate_resume_release(struct worker *w);
/* The longest a resumed session waits for the others before it is read anyway. */
#define MIGRATE_RESUME_HOLD_MS 3000

/* ---- ws_phase.c ---- */

/* The upgrade is accepted: queue the 101, open the connection to the application, then
 * feed it the early bytes. c is in the HTTP phase on entry. */
void ws_phase_start(struct worker *w, struct conn *c, struct upgraded *u);
/* A live session from a predecessor relay (u->resume): open without a 101, the
 * application told through its resume hook, then the early bytes. */
void ws_phase_resume(struct worker *w, struct conn *c, struct upgraded *u);
/* ... and later its early bytes (migrate_resume_release). */
void ws_phase_resume_input(struct worker *w, struct conn *c, struct upgraded *u);
void ws_phase_input(struct worker *w, struct conn *c, uint8_t *p, size_t n);
/* A heartbeat deadline of c passed (conn_timer_fire). */
void ws_phase_heartbeat_due(struct worker *w, struct conn *c);
/* Reading c pauses / resumes: its pongs cannot be read while paused, so its heartbeat
 * waits (conn_pause_recv, conn_resume_recv). */
void ws_phase_heartbeat_suspend(struct worker *w, struct conn *c);
void ws_phase_heartbeat_resume(struct worker *w, struct conn *c);

_Static_assert(sizeof(struct conn) <= CONN_SLOT_BYTES_MAX, "struct conn grew past its budget");

#endif
