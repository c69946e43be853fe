/*
 * worker.h - one io_uring event loop: accept, HTTP, WebSocket, sends, timers.
 *
 * Contract:
 * - A worker is one thread owning one ring (single issuer), one listening socket
 *   (SO_REUSEPORT, so N workers each accept their share), one provided-buffer ring,
 *   one connection pool sized at start-up, one timing wheel and one bufpool. Nothing
 *   in it is shared with other workers; workers never lock on the frame path.
 * - Receives: multishot recv with provided buffers; an idle connection holds no
 *   receive buffer. Bytes are parsed in place; only partial messages are copied.
 * - Sends: everything queued for a connection during one loop iteration leaves in one
 *   send; at most one send in flight per connection keeps order.
 * - The relay (src/relay/) sees WebSocket connections only through the hooks at the end
 *   of this header and the conn_* functions; it never touches the ring.
 */
#ifndef PYRELAY_WORKER_H
#define PYRELAY_WORKER_H

#include <liburing.h>
#include <netinet/in.h>

#include "core/common.h"
#include "config/config.h"
#include "core/stat.h"
#include "engine/bufpool.h"
#include "engine/outq.h"
#include "engine/timer_wheel.h"
#include "engine/uring.h"
#include "http/http_parse.h"
#include "http/http_respond.h"
#include "relay/relay_conn.h"
#include "ws/ws_reader.h"

/* Reference §5.1 / §5.3 / §5.4 and RFC 6455 close handshake bounds. */
#define HTTP_HEADER_READ_TIMEOUT_MS 5000u
#define HTTP_IDLE_TIMEOUT_MS 120000u
#define WS_MESSAGE_READ_TIMEOUT_MS 30000u
#define WS_WRITE_TIMEOUT_MS 10000u
#define WS_CLOSE_HANDSHAKE_TIMEOUT_MS 5000u
#define SHUTDOWN_DRAIN_TIMEOUT_MS 10000u

#define RING_ENTRIES 4096u
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
/* Connections still in the HTTP phase (not yet upgraded) are not counted against
 * --max-connections (reference §4.7); they get their own pool slots, bounded too. */
#define HTTP_PHASE_CONNECTIONS_MAX 16384u
#define HTTP_KEEPALIVE_REQUESTS_MAX 1000u
#define HTTP_HEAD_BUF_INITIAL_BYTES 1024u /* first head buffer; grows to HTTP_HEAD_BYTES_MAX */
#define ACCEPT_BACKOFF_MS 100u /* after EMFILE and friends */

enum conn_state {
	CONN_FREE = 0,
	CONN_HTTP,       /* reading requests */
	CONN_WS_OPEN,    /* upgraded, frames flow */
	CONN_WS_CLOSING, /* we sent a close frame, waiting for the peer's (bounded) */
	CONN_DRAINING,   /* flush what is queued, then FIN, discard input until EOF (bounded) */
	CONN_DEAD,       /* waiting for in-flight operations before the fd is closed */
};

struct peer_addr {
	uint8_t family; /* AF_INET or AF_INET6, 0 if unknown */
	uint8_t bytes[16];
	uint16_t port;
};

struct send_ctx;

struct conn {
	struct tw_node timer;
	struct outq out;
	struct ws_reader *ws;    /* NULL at rest (between frames): see ws_input */
	uint8_t *http_buf;
	uint32_t http_cap;
	uint32_t http_len;
	struct send_ctx *send;
	struct conn *dirty_next; /* on the worker's flush list */
	struct conn *ended_next; /* on the worker's "tell the relay" list */

	uint64_t read_deadline_ms;  /* HTTP head, or current WS message */
	uint64_t write_deadline_ms; /* 10 s without send progress */
	uint64_t close_deadline_ms; /* close handshake / drain bound */
	uint64_t ping_at_ms;        /* next heartbeat ping */
	uint64_t pong_deadline_ms;  /* heartbeat pong due */
	uint64_t ping_sent_ms;
	/* Phone frames queued for this binary and not yet submitted: the loop-iteration
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
	uint8_t route;            /* enum http_route of the upgrade */
	bool recv_armed : 1;
	bool send_inflight : 1;
	bool in_dirty : 1;
	bool in_ended : 1;
	bool ended_reported : 1;
	bool recv_paused : 1;
	bool counted : 1;             /* holds a --max-connections slot */
	bool wr_shut : 1;
	bool close_sent : 1;          /* close_code is set */
	bool zc_notif_pending : 1;    /* a send_zc completed; its buffers are held until the notification */
	int32_t zc_res;           /* that send's result, applied when the notification comes */
	struct peer_addr remote;
	struct relay_conn relay;
};

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
	uint64_t cqes;
	uint64_t accepts;
	uint64_t accept_pool_full;
	uint64_t accept_errors;
	uint64_t recv_enobufs; /* multishot recv ended for want of a provided buffer */
	uint64_t recv_buffers; /* gauge: provided receive buffers handed to the ring so far */
	uint64_t bytes_in;
	uint64_t bytes_out;
	uint64_t sends;
	uint64_t zc_sends;  /* sends submitted as send_zc (--zerocopy-min-bytes) */
	uint64_t zc_copied; /* of those, the kernel copied anyway (e.g. loopback) */
	uint64_t connections_open; /* gauge: pool slots in use (HTTP and WebSocket) */
	uint64_t outbox_bytes;     /* gauge: bytes queued in outqs, not yet written */
	uint64_t closes[CLOSE_CLASS_COUNT];
	/* recv of a phone frame -> submission of the send that carries it to the binary */
	struct latency_hist p2b_latency;
} STAT_ALIGNED;

struct worker {
	struct io_uring ring;
	struct uring_features feat;
	const struct config *cfg;
	uint32_t id;
	int listen_fd;
	bool accept_armed;
	struct tw_node accept_backoff;
	int wake_fd;
	uint64_t wake_value;
	bool wake_armed;
	bool ring_ready;

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
	uint32_t ws_counted;  /* connections holding a --max-connections slot */

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
	struct relay_shard *relay;
	struct timer_wheel tw; /* large: keep last */
};

/* Start-up (control plane). Returns NULL with a reason in why. */
struct worker *worker_create(const struct config *cfg, uint32_t id, const char *listen_addr,
			     uint64_t buffer_budget_bytes, char why[URING_WHY_BYTES]);
enum worker_exit {
	WORKER_EXIT_DRAINED = 0,
	WORKER_EXIT_DRAIN_INCOMPLETE = 1, /* the 10 s drain deadline cut it short */
	WORKER_EXIT_FATAL = 2,            /* ring set-up or wait failed: why says how */
};
/* On the worker's own thread: create the ring, run until worker_stop is observed and
 * every connection has drained (or the drain deadline passed). */
int worker_run(struct worker *w, char why[URING_WHY_BYTES]);
/* Thread-safe: ask the worker to drain and stop (writes its eventfd). */
void worker_stop(struct worker *w);
void worker_destroy(struct worker *w);

/* ---- for the relay: operations on a WebSocket connection ---- */

/* Queue one text frame made of parts. counted: this frame counts as a forwarded
 * frame (relay_items_written reports it once written). False if the connection no
 * longer accepts frames or the buffer budget refused the bytes. */
bool conn_ws_send_text(struct worker *w, struct conn *c, const struct iovec *parts, size_t nparts,
		       bool counted);
/* Start the closing handshake with code and reason (first close wins). */
void conn_ws_close(struct worker *w, struct conn *c, uint16_t code, const char *reason);
/* Drop the TCP connection now, without a close frame. */
void conn_abort(struct worker *w, struct conn *c);
/* Send a ping with this payload (<= 125 bytes). */
bool conn_ws_ping(struct worker *w, struct conn *c, const void *payload, size_t len);
/* Begin the heartbeat: ping every interval, close 1011 "heartbeat timeout" when a pong
 * does not come back within the timeout (reference §5.2). */
void conn_heartbeat_start(struct worker *w, struct conn *c);
/* Stop / resume reading from this connection (back-pressure). */
void conn_pause_recv(struct worker *w, struct conn *c);
void conn_resume_recv(struct worker *w, struct conn *c);
/* Remote IP as text, without port (for logs and the rate limiter). */
size_t conn_remote_ip(const struct conn *c, char *out, size_t cap);

void worker_schedule(struct worker *w, struct tw_node *n, uint64_t deadline_ms);
void worker_cancel_timer(struct worker *w, struct tw_node *n);

/* ---- hooks the engine calls (implemented in src/relay/) ---- */

struct relay_shard *relay_shard_create(struct worker *w);
void relay_shard_destroy(struct relay_shard *s);

/* After the route and before the header gate (§1.7 steps 6-8): rate limit and
 * connection cap. Returns -1 to proceed, or a canned response to send. */
int relay_admit(struct worker *w, struct conn *c, enum http_route route, const struct http_request *req);
/* Header gate failed (400): count it. */
void relay_rejected_headers(struct worker *w, struct conn *c, enum http_route route);
/* The 101 is queued: claim the server-id / register the phone (may close c). */
void relay_open(struct worker *w, struct conn *c, enum http_route route, const struct http_request *req);
/* A complete data message (text or binary). data is valid only during the call. */
void relay_message(struct worker *w, struct conn *c, uint8_t opcode, struct span data);
/* A pong (heartbeat pongs are also handled by the engine). */
void relay_pong(struct worker *w, struct conn *c, struct span payload);
/* n counted frames of c were written to the socket. */
void relay_items_written(struct worker *w, struct conn *c, uint32_t n);
/* The connection stopped being usable (any reason, including the relay's own close):
 * called exactly once per upgraded connection, never re-entrantly. */
void relay_end(struct worker *w, struct conn *c);
/* A relay-owned timer fired (node->kind >= TW_KIND_RELAY). */
void relay_timer(struct worker *w, struct tw_node *n);
/* Graceful shutdown began: close everything 1001 "shutting down". */
void relay_shutdown(struct worker *w);
void relay_counts(struct worker *w, uint64_t *binaries, uint64_t *phones);

#endif
