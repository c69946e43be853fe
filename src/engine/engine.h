/*
 * engine.h - what the engine offers the application above it (src/relay/), and what
 * it asks of it.
 *
 * Contract:
 * - The application sees a WebSocket connection only as a struct conn_ref (pool index
 *   and generation) and acts on it only through the conn_* functions below; it never
 *   reads engine memory. A ref is valid for calls from the hooks' open() call until
 *   end() returns for it; using it after that is a bug (asserted). items_written may
 *   still arrive for a ref after its end (frames queued before the end reaching the
 *   socket while the connection drains); the application's state for it must stay
 *   readable until its slot is reused (the next open() with that index).
 * - The engine calls the application through one struct engine_hooks, given at
 *   worker_create. Every hook runs on the worker's thread, from the loop, never
 *   re-entrantly for the same connection's end: end() is called exactly once per
 *   upgraded connection, after the call that caused it has returned.
 * - The engine knows routes only as the numbers http_route_of gives; what a route
 *   means (binary, phone) is the application's business.
 * - The HTTP phase hands an accepted upgrade over as one struct upgraded: a
 *   self-contained value (no pointer into any worker's memory), so it can move to
 *   another worker or process as it is.
 */
#ifndef PYRELAY_ENGINE_H
#define PYRELAY_ENGINE_H

#include <netinet/in.h>
#include <sys/uio.h>

#include "core/common.h"
#include "engine/bufpool.h"
#include "engine/outq.h"
#include "engine/timer_wheel.h"
#include "http/http_parse.h"
#include "http/http_respond.h"
#include "ws/ws_handshake.h"

struct worker;
struct config;

/* A connection as the application names it. */
struct conn_ref {
	uint32_t idx; /* pool index: the application may index its own per-connection arrays with it */
	uint32_t gen; /* pool slot generation: tells a reused slot from its previous occupant */
};

/* How bytes travel on the connection's socket below the HTTP and WebSocket phases. */
enum transport_kind {
	TRANSPORT_PLAIN = 0, /* the socket carries the bytes as they are */
	TRANSPORT_TLS,       /* user-space TLS: struct upgraded carries its state */
	TRANSPORT_TLS_UNDECIDED, /* user-space TLS so far; the owner may move it into the kernel */
	TRANSPORT_KTLS,      /* kTLS: the kernel holds the keys, the socket carries plaintext */
};

struct tls_conn;
struct ktls_secrets;

/* Peer address as the socket reported it. */
struct peer_addr {
	uint8_t family; /* AF_INET or AF_INET6, 0 if unknown */
	uint8_t bytes[16];
	uint16_t port;
};

/*
 * An accepted WebSocket upgrade, as the HTTP phase hands it to the WebSocket phase.
 * One allocation (upgraded_new): the fixed part, then the copied header values and the
 * bytes that arrived after the request head, in that order, in bytes[]. Owned by
 * whoever holds it; upgraded_free releases it.
 */
struct upgraded {
	int fd;
	uint8_t route;     /* enum http_route: an upgrade route */
	uint8_t transport; /* enum transport_kind */
	struct peer_addr remote;
	uint64_t client_key; /* its --max-connections-per-ip count (worker_client_key), 0: none */
	char accept[WS_ACCEPT_KEY_LEN + 1]; /* Sec-WebSocket-Accept for the 101 */
	uint32_t server_id_len; /* X-Pyrycode-Server */
	uint32_t version_len;   /* X-Pyrycode-Version ("" for phones) */
	uint32_t device_len;    /* X-Pyrycode-Device-Name ("" when absent) */
	uint32_t early_len;     /* bytes after the request head: the first WebSocket frames (plaintext) */
	struct tls_conn *tls;   /* TRANSPORT_TLS: the connection's TLS state, owned by the value */
	struct ktls_secrets *ktls_sec; /* TRANSPORT_KTLS over TLS 1.3: its traffic secrets (KeyUpdate), owned */
	/* A live session a predecessor handed over (ADR 0018): adopted without a 101, the
	 * application told through resume instead of open, under this conn_id suffix. */
	bool resume;
	char conn_hex[8];
	uint8_t bytes[];
};

/* Early bytes an upgrade may carry: a client has no business sending more before the
 * 101 than a message and its head. */
#define UPGRADED_EARLY_BYTES_MAX (512u * 1024u)

/* Copies of the header values of req and of the early bytes (two pieces, either may be
 * empty). NULL when out of memory. */
struct upgraded *upgraded_new(const struct http_request *req, struct span early_a, struct span early_b);
/* The same from the values themselves (a live session from a predecessor relay). */
struct upgraded *upgraded_of(struct span id, struct span version, struct span device, struct span early_a,
			     struct span early_b);
/* More bytes after the head (they arrived while a handoff waited for its receive to
 * stop): appended to the early bytes. False, with *u unchanged, when out of memory or
 * the early bytes would pass UPGRADED_EARLY_BYTES_MAX. */
bool upgraded_append(struct upgraded **u, struct span more);
/* Frees the value and what it owns (its TLS state; the fd is the holder's to close). */
void upgraded_free(struct upgraded *u);
struct span upgraded_server_id(const struct upgraded *u);
struct span upgraded_version(const struct upgraded *u);
struct span upgraded_device(const struct upgraded *u);
struct span upgraded_early(const struct upgraded *u);

/* Why a WebSocket connection stopped being usable: the first cause wins (a peer's close
 * echo after the relay's own close is still the relay's close). */
enum conn_end_cause {
	CONN_END_UNKNOWN = 0,
	CONN_END_PEER_CLOSE,    /* the peer sent a close frame */
	CONN_END_EOF,           /* the peer closed TCP without a close frame */
	CONN_END_IO_ERROR,      /* a receive or a send failed (reset, broken pipe) */
	CONN_END_PROTOCOL,      /* the peer broke RFC 6455 or a limit (1002, 1007, 1009) */
	CONN_END_READ_TIMEOUT,  /* a message did not arrive whole within 30 s (§5.3) */
	CONN_END_WRITE_TIMEOUT, /* queued frames were not written in time (§5.4) */
	CONN_END_HEARTBEAT,     /* no pong in time (§5.2) */
	CONN_END_CLOSED,        /* the application closed or aborted it */
	CONN_END_SHUTDOWN,      /* the relay is shutting down (§7.6) */
	CONN_END_NO_MEMORY,     /* the buffer pool refused */
	CONN_END_MOVED,         /* handed to a successor relay, still open there (ADR 0018) */
	CONN_END_CAUSES
};

/* A fixed text for a cause (log `err` values): never request data. */
static inline const char *conn_end_cause_text(enum conn_end_cause why)
{
	switch (why) {
	case CONN_END_PEER_CLOSE:
		return "peer sent a close frame";
	case CONN_END_EOF:
		return "EOF";
	case CONN_END_IO_ERROR:
		return "connection reset or write failed";
	case CONN_END_PROTOCOL:
		return "protocol error";
	case CONN_END_READ_TIMEOUT:
		return "message read deadline exceeded";
	case CONN_END_WRITE_TIMEOUT:
		return "write deadline exceeded";
	case CONN_END_HEARTBEAT:
		return "heartbeat timeout";
	case CONN_END_CLOSED:
		return "closed by the relay";
	case CONN_END_SHUTDOWN:
		return "shutting down";
	case CONN_END_NO_MEMORY:
		return "out of buffer memory";
	case CONN_END_MOVED:
		return "moved to the new relay";
	default:
		return "connection closed";
	}
}

/* The application, as the engine calls it. app is what create returned. */
struct engine_hooks {
	/* Start-up (control plane): the application's state for worker w, NULL on failure.
	 * shared: what main gave worker_create, the same for every worker. */
	void *(*create)(struct worker *w, const struct config *cfg, void *shared);
	void (*destroy)(void *app);
	/* An upgrade request passed routing, before the header gate (reference §1.7
	 * steps 6-7): -1 to proceed, or an enum http_canned to answer with. On -1,
	 * *client_key may name the client for --max-connections-per-ip
	 * (worker_client_key); it stays 0 for none. */
	int (*admit)(void *app, struct conn_ref c, enum http_route route, const struct http_request *req,
		     uint64_t *client_key);
	/* The header gate refused an upgrade request (400). */
	void (*rejected_headers)(void *app, enum http_route route);
	/* The 101 is queued and the connection reads frames. u is valid during the call. */
	void (*open)(void *app, struct conn_ref c, const struct upgraded *u);
	/* A complete data message; data is valid only during the call. */
	void (*message)(void *app, struct conn_ref c, uint8_t opcode, struct span data);
	/* A pong (the engine also checks it against its own heartbeat). */
	void (*pong)(void *app, struct conn_ref c, struct span payload);
	/* c is open and the head of its outbox was not written within the write timeout
	 * (10 s, reference §5.4): close it (conn_ws_close: its close frame goes out after
	 * what is queued, within the close handshake's 5 s) or abort it. The engine cuts a
	 * connection the hook leaves open. */
	void (*write_timeout)(void *app, struct conn_ref c);
	/* n frames sent with CONN_SEND_COUNTED reached the socket. */
	void (*items_written)(void *app, struct conn_ref c, uint32_t n);
	/* The connection stopped being usable. peer_close_code: the status of the peer's
	 * close frame, 0 if it sent none; why: the first cause. After a close the relay
	 * started (conn_ws_close, heartbeat, shutdown), it comes once the counted frames
	 * queued before the close are written, or when the connection is cut or the peer
	 * closes first: conn_queued_items then says how many were not written. The ref is
	 * dead when this returns. */
	void (*end)(void *app, struct conn_ref c, uint16_t peer_close_code, enum conn_end_cause why);
	/* A timer the application scheduled fired (node->kind >= TW_KIND_APP). */
	void (*timer)(void *app, struct tw_node *n);
	/* Graceful shutdown began; the engine then closes every open WebSocket with
	 * 1001 "shutting down" (reference §7.6). */
	void (*shutdown)(void *app);
	/* The application's counts for /healthz. */
	void (*healthz)(void *app, struct healthz *h);
	/* Live-session hand-over (ADR 0018). Predecessor: c stopped reading, its outbox is
	 * written, and it may move to the successor; pass 0 asks binaries, pass 1 phones.
	 * True: fill *route (enum session_route), conn_hex and *server_id (valid until c
	 * ends), and c moves (its end comes with CONN_END_MOVED); false: it is drained. */
	bool (*export)(void *app, struct conn_ref c, unsigned pass, uint8_t *route, char conn_hex[8],
		       struct span *server_id);
	/* Successor: u->resume: the session is ours, open, without a 101. The application
	 * registers it (closing it if it cannot). */
	void (*resume)(void *app, struct conn_ref c, const struct upgraded *u);
};

/* ---- operations on a WebSocket connection ---- */

enum conn_send_flags {
	CONN_SEND_COUNTED = 1u << 0, /* report the frame to items_written once written */
	CONN_SEND_LATENCY = 1u << 1, /* observe queue-to-send latency (pyrycode_relay_p2b_latency) */
};

/* The most parts conn_ws_send_text takes (the frame header takes one more iovec). */
#define CONN_SEND_PARTS_MAX 7u

/* Queue one text frame made of parts (flags: enum conn_send_flags). False if the
 * connection no longer accepts frames or the buffer budget refused the bytes. */
bool conn_ws_send_text(struct worker *w, struct conn_ref c, const struct iovec *parts, size_t nparts,
		       unsigned flags);
/*
 * Or write the payload in place (issue #17: validated and copied in one pass): reserve
 * a text frame of len payload bytes and get where they go (contiguous, in the outbox),
 * then exactly one of commit (flags as above) or abort, with nothing else queued to any
 * connection in between. NULL when the connection no longer accepts frames or the
 * outbox cannot give len contiguous bytes (longer than a segment can be, or the buffer
 * budget refused): conn_ws_send_text then says which.
 */
struct conn_text_resv {
	struct outq_resv q;
	size_t bytes; /* header + payload */
};
uint8_t *conn_ws_text_reserve(struct worker *w, struct conn_ref c, size_t len, struct conn_text_resv *r);
void conn_ws_text_commit(struct worker *w, struct conn_ref c, struct conn_text_resv *r, unsigned flags);
void conn_ws_text_abort(struct worker *w, struct conn_text_resv *r);
/* Start the closing handshake with code and reason (first close wins; a code that may
 * not appear on the wire becomes 1011). */
void conn_ws_close(struct worker *w, struct conn_ref c, uint16_t code, const char *reason);
/* Drop the TCP connection now, without a close frame. */
void conn_abort(struct worker *w, struct conn_ref c);
/* Send a ping with this payload (<= 125 bytes). False if it could not be queued. */
bool conn_ws_ping(struct worker *w, struct conn_ref c, const void *payload, size_t len);
/* Begin the heartbeat: ping every interval, close 1011 "heartbeat timeout" when a pong
 * does not come back within the timeout (reference §5.2). */
void conn_heartbeat_start(struct worker *w, struct conn_ref c);
/* Stop / resume reading from this connection (back-pressure). */
void conn_pause_recv(struct worker *w, struct conn_ref c);
void conn_resume_recv(struct worker *w, struct conn_ref c);
/* Live-session hand-over: c stopped reading for it and has written its outbox. */
bool conn_export_ready(struct worker *w, struct conn_ref c);
/* Open: frames may still be queued (no close frame sent or received). */
bool conn_ws_is_open(struct worker *w, struct conn_ref c);
/* Bytes queued for the socket and not yet written, and how many of them belong to
 * CONN_SEND_COUNTED frames. */
uint64_t conn_queued_bytes(struct worker *w, struct conn_ref c);
uint32_t conn_queued_items(struct worker *w, struct conn_ref c);
/* Remote IP as text, without port (for logs and the rate limiter); cap >=
 * INET6_ADDRSTRLEN. Returns the length, 0 if unknown. */
size_t conn_remote_ip(struct worker *w, struct conn_ref c, char *out, size_t cap);

/* ---- the worker's services ---- */

void worker_schedule(struct worker *w, struct tw_node *n, uint64_t deadline_ms);
void worker_cancel_timer(struct worker *w, struct tw_node *n);
/* The loop iteration's clock (CLOCK_MONOTONIC, ms). */
uint64_t worker_now_ms(const struct worker *w);
/* The worker's buffer pool (scratch bytes for the application, returned at once). */
struct bufpool *worker_pool(struct worker *w);
/* The key under which --max-connections-per-ip counts a client (its rate-limit key:
 * address text or X-Forwarded-For entry); the same on every worker, never 0. */
uint64_t worker_client_key(const struct worker *w, struct span client);
/* The worker's index in its group, 0 .. workers - 1. */
uint32_t worker_id(const struct worker *w);
/* Connection pool size: conn_ref.idx < this. */
uint32_t worker_conn_cap(const struct worker *w);

#endif
