/*
 * lg.h - loadgen internals shared by its translation units.
 *
 *   lg_main.c     command line, set-up, the threads, progress, merging their
 *                 results, the final report (human + JSON)
 *   lg_loop.c     one thread's io_uring event loop: connects, handshakes, I/O, phases
 *   lg_traffic.c  pure helpers: phone payloads, WebSocket/raw framing, the HTTP
 *                 upgrade request and the 101 check
 *   lg_tls.c      BoringSSL over memory BIOs (the only file that includes it)
 *   hist.c        the latency histogram
 *
 * --threads N runs N loops, each with its own ring and its own share of the
 * server-ids (a binary and all its phones belong to one loop, so per-phone ordering
 * and every check stay inside one thread). A loop shares nothing with the others on
 * the per-frame path: it keeps its own counters and histograms, which the main thread
 * merges after every loop has stopped. The loops meet once, after connecting, to
 * start traffic and the measurement window at the same instant (struct lg_run).
 *
 * Every connection gets its buffers from its loop's slab, reserved at start
 * (MAP_NORESERVE: pages cost memory only once touched), so the hot loop never
 * allocates.
 */
#ifndef LOADGEN_LG_H
#define LOADGEN_LG_H

#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/common.h"
#include "engine/uring.h"
#include "hist.h"

/* ---- limits (units in the names) ---- */
#define LG_BINARIES_MAX 1000000u
#define LG_PHONES_PER_BINARY_MAX 256u        /* the relay caps 16 per server-id */
#define LG_CONNECTIONS_MAX 4000000u
#define LG_SIZE_BYTES_MIN 48u
#define LG_SIZE_BYTES_MAX (255u * 1024u)     /* + envelope stays under the relay's 256 KiB */
#define LG_WINDOW_MAX 65536u
#define LG_SERVER_PREFIX_BYTES_MAX 64u
#define LG_SERVER_ID_BYTES_MAX (LG_SERVER_PREFIX_BYTES_MAX + 16u)
#define LG_HOST_BYTES_MAX 256u
#define LG_HEAD_BYTES_MAX 8192u              /* our 101 response head */
#define LG_REQUEST_BYTES_MAX 1024u           /* our upgrade request */
/* {"conn_id":"client-<sid>-<hex8>","frame":...}: 32 bytes + the server-id, rounded up */
#define LG_ENVELOPE_OVERHEAD_BYTES_MAX (64u + LG_SERVER_ID_BYTES_MAX)
#define LG_WS_HEADER_BYTES_MAX 14u
#define LG_RECV_CHUNK_BYTES (32u * 1024u)    /* receive room beyond one full frame */
#define LG_OUT_HALF_BYTES_MIN (16u * 1024u)
#define LG_BINARY_OUT_HALF_BYTES_MIN (256u * 1024u)
#define LG_PHONE_OUT_FRAMES_MAX 64u          /* frames a phone may batch per send */
/* Open loop: a phone holds back due frames while this many bytes of its frames are
 * unanswered. After a stall (the generator descheduled, a GC-like pause of the host)
 * catching up at once would put more than the relay's 4 MiB per-phone delivery budget
 * in flight and get the phone closed with 1011: a generator artefact, not the relay's
 * behaviour under the offered load. Held frames stay late, and their latency still
 * counts from the intended time. */
#define LG_OPEN_INFLIGHT_BYTES_MAX (1024u * 1024u)
#define LG_CTRL_RESERVE_BYTES 512u           /* room kept for pong/close frames */
#define LG_CONNECT_CONCURRENCY_DEFAULT 256u
#define LG_CONNECT_CONCURRENCY_MAX 65536u
#define LG_THREADS_MAX 64u                   /* --threads: generator loops, one ring each */
/* A loop that has settled its connections looks this often whether the others have
 * too; the traffic start is then put this far ahead, so every loop has seen it before
 * it comes and all of them start traffic (and the window) at the same instant. */
#define LG_RENDEZVOUS_POLL_NS (1000ull * 1000)
#define LG_START_LEAD_NS (5ull * LG_RENDEZVOUS_POLL_NS)
#define LG_PUBLISH_INTERVAL_NS (100ull * 1000 * 1000) /* a loop hands progress figures over */
#define LG_CLOSE_WAIT_NS (1000ull * 1000 * 1000)
#define LG_PROGRESS_INTERVAL_NS (1000ull * 1000 * 1000)
#define LG_WAIT_NS_MAX (50ull * 1000 * 1000) /* the loop wakes at least this often */
#define LG_CQE_BATCH 1024u
#define LG_CQE_BATCHES_PER_ITERATION_MAX 64u
#define LG_RING_ENTRIES_MIN 256u
#define LG_RING_ENTRIES_MAX 8192u
#define LG_CODES_TRACKED 16u                 /* distinct close codes / HTTP statuses kept */
#define LG_TLS_PULLS_PER_INPUT_MAX 64u
/* --mode handshakes: each slot's server-id is <prefix><slot>.<cycle in hex>, a new one
 * per connection (at most 16 hex digits and the dot beyond LG_SERVER_ID_BYTES_MAX). */
#define LG_HS_SERVER_ID_BYTES_MAX (LG_SERVER_ID_BYTES_MAX + 17u)
#define LG_HS_COUNT_MAX 1000000000ull        /* --count: connections started, whole run */
/* How often a loop looks for a connection past its own deadline (--connect-timeout
 * from its connect to its end): a stuck slot is counted and freed for the next one. */
#define LG_HS_SCAN_INTERVAL_NS (100ull * 1000 * 1000)

#define NS_PER_S 1000000000ull

/* LG_MODE_HANDSHAKES: connection churn, not frames. Each of --binaries slots connects,
 * completes TLS (wss) and a /v1/server upgrade with a server-id of its own, sends a
 * close 1000, waits for the relay's echo and its end of the connection, and starts
 * over; the figure is upgrades (101s) per second and their latency. */
enum lg_mode { LG_MODE_CLOSED, LG_MODE_OPEN, LG_MODE_IDLE, LG_MODE_HANDSHAKES };
enum lg_transport { LG_TR_WS, LG_TR_WSS, LG_TR_RAW };
enum lg_role { LG_ROLE_BINARY, LG_ROLE_PHONE };

struct lg_config {
	enum lg_mode mode;
	enum lg_transport transport;
	char url[LG_HOST_BYTES_MAX + 32];
	char host[LG_HOST_BYTES_MAX];      /* as given in the URL (Host header, SNI) */
	uint16_t port;
	struct sockaddr_storage addr;      /* resolved once at start */
	socklen_t addr_len;
	uint32_t binaries;
	uint32_t phones_per_binary;
	uint32_t window;
	uint32_t size_bytes;
	double rate_per_s;                 /* open loop, total over all phones */
	uint64_t warmup_ns;
	uint64_t duration_ns;
	uint64_t connect_timeout_ns;
	uint64_t drain_ns;
	uint32_t src_ips;                  /* 0: let the kernel pick */
	uint32_t connect_concurrency;      /* over all threads */
	uint32_t threads;
	uint64_t hs_count_max;             /* handshakes mode: connections started, 0: no limit */
	char server_prefix[LG_SERVER_PREFIX_BYTES_MAX + 1];
	bool insecure;
	const char *ca_file;
	enum { LG_TLS_ANY = 0, LG_TLS_12, LG_TLS_13 } tls_version;
	const char *tls_cipher; /* TLS 1.2 suite name, NULL: the library's list */
	bool quiet;
};

enum lg_conn_state {
	CS_QUEUED,     /* waiting for a connect slot (or for its binary) */
	CS_CONNECTING,
	CS_TLS,        /* TCP up, TLS handshake running */
	CS_UPGRADE,    /* upgrade request / raw hello sent, waiting for 101 / ack */
	CS_OPEN,
	CS_CLOSING,    /* our close frame is queued; waiting for the peer's */
	CS_DEAD,
};

struct conn {
	int fd;
	uint32_t idx;         /* in g.conns */
	uint8_t role;         /* enum lg_role */
	uint8_t state;        /* enum lg_conn_state */
	bool recv_armed;
	bool send_inflight;
	bool dirty;           /* on the flush list */
	bool paused;          /* binary: echo room ran out, input left in `in` */
	bool settled;         /* counted as ready or failed during connect */
	bool ready;           /* binary: 101 seen; phone: probe round trip done */
	bool handshaking;     /* holds a connect-concurrency slot */
	bool connect_inflight; /* our connect SQE has not completed yet */
	bool parked;          /* handshakes mode: on the loop's list of slots to start again */
	uint32_t binary;      /* index of the binary (phones: theirs; binaries: own) */
	uint32_t phone;       /* global phone number (phones) */
	uint32_t raw_index;   /* raw: the phone index the forwarder gave us */

	uint8_t *in;          /* received plaintext, parsed from the start */
	uint32_t in_len;
	uint32_t in_cap;
	uint8_t *half[2];     /* plaintext: double buffer (fill one, send the other);
				 TLS: half[0] plaintext fill, half[1] ciphertext out */
	uint32_t half_cap;
	uint8_t fill_idx;
	uint32_t fill_len;
	const uint8_t *wire;  /* the send in flight */
	uint32_t wire_len;
	uint32_t wire_off;
	uint8_t *rx;          /* TLS: ciphertext receive buffer (LG_RECV_CHUNK_BYTES) */
	void *tls;            /* SSL * */
	char accept[32];      /* the Sec-WebSocket-Accept we expect */

	/* phones */
	uint64_t next_seq;    /* next seq to send (0 is the registration probe) */
	uint64_t expect_seq;  /* next seq expected back */
	uint64_t due_seq;     /* open loop: seqs below this are due */
	uint64_t probe_ns;
	uint64_t *t_ring;     /* closed loop: send time of seq s at [s & t_ring_mask] */
	uint32_t t_ring_mask;

	/* handshakes mode: this slot's current connection */
	uint64_t hs_start_ns;    /* when its connect was submitted */
	uint64_t hs_deadline_ns; /* hs_start_ns + --connect-timeout: done by then or counted */
	uint64_t hs_cycle;       /* connections this slot has started (its server-id suffix) */
};

struct lg_code_count {
	uint32_t code;
	uint64_t count;
};

/* One loop's counters. The report merges the loops' copies field by field
 * (merge_stats in lg_main.c): a new field needs its rule there. */
struct lg_stats {
	/* inside the measurement window */
	uint64_t sent;           /* frames whose (intended) send time is in the window */
	uint64_t p2b;            /* phone frames received by binaries */
	uint64_t b2p;            /* frames received back by phones, verified or not */
	uint64_t round_trips;    /* verified in-order returns */
	uint64_t sent_bytes;
	/* whole run */
	uint64_t sent_total;
	uint64_t p2b_total;
	uint64_t b2p_total;
	uint64_t errors_connect;
	uint64_t errors_handshake;
	uint64_t errors_register;
	uint64_t errors_closed;
	uint64_t errors_protocol;
	uint64_t lost;
	uint64_t reordered;
	uint64_t corrupted;
	uint64_t pings_answered;
	uint64_t close_notices;
	uint64_t open_behind_max_frames; /* open loop: worst backlog of due frames seen */
	uint64_t open_held;              /* open loop: times a phone held due frames (in-flight cap) */
	uint64_t send_lag_max_ns;        /* open loop: worst (queued - intended) in the window */
	uint64_t loop_max_ns;            /* longest loop iteration (our own work) in the window */
	/* handshakes mode */
	uint64_t hs_started;     /* connects submitted, whole run */
	uint64_t hs_completed;   /* 101s received, whole run */
	uint64_t hs_window;      /* 101s received inside the window */
	uint64_t hs_closed;      /* our close 1000 echoed by the peer */
	uint64_t hs_tls13;       /* completed over TLS 1.3 */
	uint64_t hs_resumed;     /* completed with a resumed TLS session (we never offer one) */
	struct hist hs_lat;      /* connect submitted -> 101 received, of the window's 101s */
	struct lg_code_count close_codes[LG_CODES_TRACKED];
	struct lg_code_count http_statuses[LG_CODES_TRACKED];
	struct lg_code_count errnos[LG_CODES_TRACKED];
	struct hist lat;         /* round trips of frames sent inside the window */
	struct hist iv_lat;      /* the current progress interval */
	uint64_t iv_round_trips;
	uint64_t iv_p2b;
	uint64_t iv_b2p;
	uint64_t iv_handshakes;  /* handshakes mode: 101s (iv_lat holds their latency) */
};

enum lg_phase { PH_CONNECT, PH_WARMUP, PH_MEASURE, PH_DRAIN, PH_CLOSE, PH_DONE };

#define LG_TIME_UNSET UINT64_MAX

/* What the loops share. The plain fields are written before the threads start and
 * only read after; the rest is touched with __atomic builtins, at most once per
 * connection set-up, error or phase change, never per frame. */
struct lg_run {
	const struct lg_config *cfg;
	struct uring_features features;  /* probed once; every loop sets its ring up alike */
	uint64_t t_origin_abs_ns;        /* CLOCK_MONOTONIC at start: payload times count from it */
	uint32_t threads;
	pthread_barrier_t rings_ready;   /* every loop has its ring (or has failed) */
	/* the meeting after connecting */
	uint32_t arrived;                /* loops whose connections have all settled */
	uint32_t ready_binaries;         /* summed as the loops arrive */
	uint32_t ready_phones;
	uint32_t not_ready;              /* left unsettled at --connect-timeout */
	uint64_t t_connected_ns;         /* when the last loop arrived */
	bool nothing_to_measure;         /* no binary (or, with traffic, no phone) ready anywhere */
	uint64_t t_traffic0_ns;          /* LG_TIME_UNSET until the last loop arrives (release) */
	/* every loop stops on these */
	bool failed;                     /* a loop could not go on (ring set-up, io_uring_enter) */
	uint32_t errors_printed;         /* the first few errors of all loops are printed */
};

/* Progress figures a loop hands to the main thread every LG_PUBLISH_INTERVAL_NS
 * (under its own mutex, which only the main thread's once-a-second read contends). */
struct lg_progress {
	enum lg_phase phase;
	uint32_t ready;
	uint32_t handshaking;
	uint32_t open_n;
	uint64_t errors;
	uint64_t lost;
	uint64_t corrupted;
	/* accumulated until the main thread takes them */
	uint64_t iv_round_trips;
	uint64_t iv_p2b;
	uint64_t iv_b2p;
	uint64_t iv_handshakes;
	struct hist iv_lat;
};

/* One generator loop's state: its ring, its connections, its counters. Passed to
 * every function of lg_loop.c instead of living in a global; each thread owns one,
 * and nothing in it is shared on the per-frame path. */
struct lg_worker {
	const struct lg_config *cfg;
	struct lg_run *run;
	uint32_t index;           /* thread number, 0 .. threads-1 */
	pthread_t tid;
	/* this loop's share: binaries [binary0, binary0 + binaries_n) and their phones */
	uint32_t binary0;
	uint32_t binaries_n;
	uint32_t phone0;          /* global number of the first phone */
	uint32_t connect_concurrency;
	double rate_per_s;        /* open loop: --rate times its share of the phones */
	struct io_uring ring;
	struct conn *conns;       /* its binaries first, then their phones */
	uint32_t conns_n;
	uint32_t phones_n;
	enum lg_phase phase;
	bool arrived;             /* counted in run->arrived: waiting for traffic to start */
	uint64_t now_ns;          /* CLOCK_MONOTONIC relative to t_origin, per iteration */
	uint64_t t_origin_abs_ns;
	uint64_t t_connect_end_ns; /* when every connection (of every loop) was settled */
	uint64_t t_traffic0_ns;
	uint64_t t_measure0_ns;
	uint64_t t_measure1_ns;
	uint64_t t_phase_deadline_ns;
	uint64_t measured_ns;
	/* connect scheduling */
	uint32_t *queue;          /* conn indexes waiting to connect (FIFO) */
	uint32_t queue_head;
	uint32_t queue_tail;
	uint32_t handshakes_inflight;
	uint32_t settled_n;
	uint32_t ready_binaries;
	uint32_t ready_phones;
	uint32_t open_n;          /* conns in CS_OPEN or CS_CLOSING */
	/* flush list */
	uint32_t *dirty;
	uint32_t dirty_n;
	uint64_t next_drain_check_ns;
	/* open loop */
	uint64_t open_next_k;     /* this loop's frames [0, open_next_k) have been made due */
	uint64_t open_end_k;      /* frames from here are intended after the window */
	uint64_t rng;
	/* handshakes mode: slots whose connection has ended and whose every operation has
	 * completed (so no stale completion can reach the next one), ready to start again */
	uint32_t *hs_parked;
	uint32_t hs_parked_n;
	uint64_t hs_budget;       /* this loop's share of --count (UINT64_MAX: no limit) */
	uint64_t next_hs_scan_ns;
	struct lg_stats st;
	int result;               /* lg_run's: 0, or -1 when the loop failed */
	uint64_t next_publish_ns;
	pthread_mutex_t pub_lock;
	struct lg_progress pub;
};

/* Set by the SIGINT/SIGTERM handler, read by every loop; __atomic access only. */
extern int lg_stop_requested;

/* lg_loop.c */
/* One thread's loop, from its ring set-up to the close of its connections. */
int lg_run(struct lg_worker *w);
uint64_t lg_clock_ns(void);
/* Add n to code's entry of a close-code / status / errno table. */
void lg_code_add(struct lg_code_count *t, uint32_t code, uint64_t n);
uint64_t lg_errors_total(const struct lg_stats *st);

/* lg_traffic.c: pure */
/* Max length of the JSON header before the pad: {"s":N,"t":N,"p":N,"x":" */
size_t lg_payload_write(uint8_t *out, uint32_t size, uint64_t seq, uint64_t t_ns, uint32_t phone);
bool lg_payload_parse_seq(const uint8_t *p, size_t n, uint64_t *seq);
bool lg_payload_equal(const uint8_t *p, size_t n, uint32_t size, uint64_t seq, uint64_t t_ns,
		      uint32_t phone);
void lg_pattern_init(void);
/* Copy src to dst XOR-ing with the 4-byte key, as a payload starting at offset 0. */
void lg_mask_copy(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key[4]);
size_t lg_ws_header_len(uint64_t payload_len);
size_t lg_request_build(char *out, size_t cap, enum lg_role role, const char *host, uint16_t port,
			const char *server_id, const char *ws_key);
/* 0: incomplete; 1: a valid 101 (head_len set); -1: anything else (*status set to the
 * HTTP status when one could be read, else 0). */
int lg_response_check(const uint8_t *p, size_t n, const char *accept, size_t *head_len, int *status);
void lg_base64_16(const uint8_t in[16], char out[25]);
/* Envelope checks for a frame the relay sent a binary. */
enum lg_envelope { LG_ENV_FRAME, LG_ENV_CLOSE_NOTICE, LG_ENV_BAD };
enum lg_envelope lg_envelope_kind(const uint8_t *p, size_t n);

/* lg_tls.c */
bool lgtls_init(const struct lg_config *cfg, char *why, size_t why_cap);
void *lgtls_new(const char *host, char *why, size_t why_cap);
void lgtls_free(void *tls);
/* 1: done; 0: needs more input; -1: failed (why filled) */
int lgtls_handshake(void *tls, char *why, size_t why_cap);
void lgtls_feed(void *tls, const uint8_t *p, size_t n);
/* > 0: bytes; 0: needs more input; -1: peer closed (close_notify); -2: error */
long lgtls_read(void *tls, uint8_t *out, size_t cap);
bool lgtls_write(void *tls, const uint8_t *p, size_t n);
size_t lgtls_out_pending(void *tls);
size_t lgtls_out_take(void *tls, uint8_t *out, size_t cap);
void lgtls_close_notify(void *tls);
/* After the handshake: the version negotiated was TLS 1.3; the session was resumed. */
bool lgtls_is_tls13(void *tls);
bool lgtls_resumed(void *tls);

#endif
