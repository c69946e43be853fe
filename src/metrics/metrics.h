/*
 * metrics.h - the relay's metric set, rendered as Prometheus text 0.0.4.
 *
 * Contract:
 * - Pure over its inputs: metrics_render reads the per-worker counter blocks (relaxed
 *   loads, core/stat.h) and the process figures the caller gathered, and writes one
 *   exposition into a prom_out. No I/O, no allocation, no locks: a scrape never stops
 *   a worker and the frame path never waits for a scrape.
 * - Every family has HELP and TYPE; every label combination is written, at 0 when
 *   nothing happened, from the first scrape on (reference §8.2).
 * - Label values are compile-time constants or worker indexes: never request data
 *   (no server-id, conn_id, token or address can reach the body).
 */
#ifndef PYRELAY_METRICS_H
#define PYRELAY_METRICS_H

#include "engine/bufpool.h"
#include "engine/worker.h"
#include "metrics/prom.h"
#include "relay/relay.h"

struct autocert_stats;

/* An exposition of this many workers fits in METRICS_BODY_BYTES_MAX (asserted by the
 * unit test with every counter at its widest). */
#define METRICS_WORKERS_MAX CONFIG_WORKERS_MAX
#define METRICS_BODY_BYTES_MAX (512u * 1024u)

/* One worker's counter blocks. */
struct metrics_source {
	const struct worker_stats *engine;
	const struct relay_stats *relay;
	const struct bufpool *pool;
};

enum metrics_handler_error {
	METRICS_ERR_ENCODING = 0, /* the exposition did not fit or could not be sent */
	METRICS_ERR_GATHERING,    /* a /proc figure could not be read */
	METRICS_ERR_COUNT,
};

struct metrics_process {
	double start_time_seconds; /* since the Unix epoch */
	bool fds_ok;
	uint64_t open_fds;
	uint64_t max_fds;
	bool rss_ok;
	uint64_t resident_bytes;
	uint64_t virtual_bytes;
	double cpu_seconds;
};

struct metrics_input {
	const struct metrics_source *workers;
	uint32_t nworkers;
	const char *version;
	const struct metrics_process *process;
	const uint64_t *handler_errors; /* METRICS_ERR_COUNT entries */
	const int64_t *tls_cert_not_after_s; /* TLS on: the served certificate's expiry; NULL: off */
	/* pyrycode_relay_push_wakes_total by fcm_outcome (FCM_OUTCOME_COUNT entries, read
	 * with relaxed loads); NULL when push is off, and then the family is absent */
	const uint64_t *push_wakes;
	bool proxy_protocol; /* --https-proxy-protocol: pyrycode_relay_proxy_protocol_rejects_total */
	/* --domain mode: the autocert thread's figures (control/autocert.h); NULL: the
	 * pyrycode_relay_acme_* families are absent */
	const struct autocert_stats *acme;
};

/* Write the whole exposition. On overflow o->overflow is set and the body is unusable. */
void metrics_render(struct prom_out *o, const struct metrics_input *in);

#endif
