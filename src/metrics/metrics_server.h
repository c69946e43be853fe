/*
 * metrics_server.h - the loopback /metrics responder: one small thread, one ring.
 *
 * Contract:
 * - Serves GET/HEAD (any method, as the reference's handler does) on exactly
 *   "/metrics" (query ignored) with Prometheus text 0.0.4; every other path is 404
 *   "404 page not found". HTTP/1.1 keep-alive and pipelining; a request head is at
 *   most METRICS_REQUEST_BYTES_MAX (else 431 and close); a request with a body is
 *   answered and the connection closed (nothing here reads bodies).
 * - Bounded: at most METRICS_CONNECTIONS_MAX connections (more are closed at accept),
 *   reference §5.1 timeouts (5 s to a complete head, 60 s to write a response, 120 s
 *   idle keep-alive), one response buffer per connection only while it is sent.
 * - Its own thread and ring, apart from the workers: a scrape (including the /proc
 *   reads, which grow with the fd count) never delays the frame path, and the workers
 *   never wait on it. It reads their counters with relaxed loads (core/stat.h).
 * - The address is validated by config (loopback literal only); this module binds it
 *   without SO_REUSEPORT so a second relay on the same port fails loudly.
 */
#ifndef PYRELAY_METRICS_SERVER_H
#define PYRELAY_METRICS_SERVER_H

#include "engine/uring.h"
#include "metrics/metrics.h"

#define METRICS_CONNECTIONS_MAX 16u
#define METRICS_REQUEST_BYTES_MAX (8u * 1024u)
#define METRICS_WRITE_TIMEOUT_MS 60000u
#define METRICS_TICK_MS 250u
#define METRICS_STOP_DRAIN_MS 1000u

struct metrics_server;

/* Bind and listen (boot, main thread). NULL with the cause in why. workers is
 * copied; the blocks it points to must outlive the server. */
struct metrics_server *metrics_server_create(const char *addr, const struct metrics_source *workers,
					     uint32_t nworkers, const char *version, double start_time_seconds,
					     char why[URING_WHY_BYTES]);
/* TLS is on (before metrics_server_run): the TLS families are rendered, with the
 * certificate expiry read from *cert_not_after_s (an atomic the caller updates). */
void metrics_server_set_tls(struct metrics_server *m, const int64_t *cert_not_after_s);
/* --https-proxy-protocol is on (before run): its rejections are rendered. */
void metrics_server_set_proxy_protocol(struct metrics_server *m);
/* Before run (boot, main thread): expose pyrycode_relay_push_wakes_total from these
 * FCM_OUTCOME_COUNT counters (control/push.h), which must outlive the server. Without
 * it the family is absent: push is off (reference §8.2). */
void metrics_server_set_push(struct metrics_server *m, const uint64_t *push_wakes);
/* Before run: expose the pyrycode_relay_acme_* families (--domain mode). */
void metrics_server_set_acme(struct metrics_server *m, const struct autocert_stats *acme);

/*
 * The ACME HTTP-01 listener (--http-listen, reference §1.3): the same responder on its
 * own thread, serving only GET/HEAD /.well-known/acme-challenge/<token> with the key
 * authorization lookup() finds (200, text/plain), 404 for an unknown token and for every
 * other path (never a redirect). Binds addr (any address: config checked it), no
 * SO_REUSEPORT. lookup runs on the responder's thread.
 */
typedef bool (*metrics_challenge_lookup)(void *ctx, struct span token, char *out, size_t cap);
struct metrics_server *metrics_server_create_challenge(const char *addr, metrics_challenge_lookup lookup, void *ctx,
						       char why[URING_WHY_BYTES]);

/* On the server's own thread: serve until metrics_server_stop. False (why filled) if
 * the ring could not be set up or failed. */
bool metrics_server_run(struct metrics_server *m, char why[URING_WHY_BYTES]);
/* Thread-safe: close the listener and every connection, then return from run. */
void metrics_server_stop(struct metrics_server *m);
/* Any thread: a successor serves the listener now (engine/handover.h). Stop accepting
 * from it and keep serving the connections already accepted until the stop. */
void metrics_server_stop_accepting(struct metrics_server *m);
void metrics_server_destroy(struct metrics_server *m);

/* Gather process figures from /proc (also used by tests). Never fails as a whole:
 * figures it cannot read are marked missing and counted as a gathering error. */
void metrics_read_process(struct metrics_process *p, uint64_t *gathering_errors);

#endif
