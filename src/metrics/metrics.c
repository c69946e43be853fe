#include "metrics/metrics.h"

#include "control/autocert.h"
#include "control/fcm.h"
#include "core/simd.h"

/* A worker index as a label value: "4294967295" and its NUL fit. */
#define WORKER_LABEL_BYTES 12u

#include <stdio.h>

#define NS_PER_SECOND 1e9

/* Label values: constants, indexed by the enums that count them. */
static const char *const endpoint_names[RELAY_EP_COUNT] = { "server", "client" };
static const char *const outcome_names[RELAY_OUT_COUNT] = {
	"accept", "reject_headers", "reject_409", "reject_404", "reject_429", "reject_rate_limit",
};
static const char *const fail_kind_names[RELAY_FAIL_COUNT] = {
	"no_server", "server_in_use", "phones_at_cap", "ratelimit",
};
static const char *const drop_names[RELAY_DROP_COUNT] = {
	"phone_invalid_json", "no_binary",        "binary_outbox", "malformed_envelope",
	"unknown_conn_id",    "push_wake_refused", "phone_closed",  "phone_backlog",
};
static const char *const close_class_names[CLOSE_CLASS_COUNT] = {
	"normal", "going_away", "protocol_error", "internal_error", "application", "no_status", "abnormal",
};
static const char *const handler_error_names[METRICS_ERR_COUNT] = { "encoding", "gathering" };
/* enum handoff_result past HANDOFF_OK */
static const char *const handoff_failure_names[HANDOFF_RESULT_COUNT - 1] = {
	"owner_full", "owner_gone", "send_failed", "owner_pool_full",
};

/* ------------------------------------------------------------------ sums */

struct totals {
	struct relay_stats relay;
	struct worker_stats engine;
	uint64_t pool_in_use;
	uint64_t pool_held;
	uint64_t pool_budget;
	uint64_t pool_refusals;
};

#define SUM(dst, src) ((dst) += STAT_GET(src))

static void sum_relay(struct relay_stats *t, const struct relay_stats *r)
{
	for (int e = 0; e < RELAY_EP_COUNT; e++)
		for (int o = 0; o < RELAY_OUT_COUNT; o++)
			SUM(t->upgrade_attempts[e][o], r->upgrade_attempts[e][o]);
	for (int k = 0; k < RELAY_FAIL_COUNT; k++)
		SUM(t->register_failures[k], r->register_failures[k]);
	for (int d = 0; d < RELAY_DROP_COUNT; d++)
		SUM(t->dropped[d], r->dropped[d]);
	SUM(t->frames_phone_to_binary, r->frames_phone_to_binary);
	SUM(t->frames_binary_to_phone, r->frames_binary_to_phone);
	SUM(t->copied_in_scan_bytes, r->copied_in_scan_bytes);
	SUM(t->copied_apart_bytes, r->copied_apart_bytes);
	SUM(t->grace_expiries, r->grace_expiries);
	SUM(t->binaries, r->binaries);
	SUM(t->phones, r->phones);
	SUM(t->phone_pauses, r->phone_pauses);
}

static void sum_engine(struct worker_stats *t, const struct worker_stats *e)
{
	SUM(t->accepts, e->accepts);
	SUM(t->accept_pool_full, e->accept_pool_full);
	SUM(t->accept_errors, e->accept_errors);
	SUM(t->ip_cap_rejects, e->ip_cap_rejects);
	for (int k = 0; k < PROXY_REJECT_COUNT; k++)
		SUM(t->proxy_rejects[k], e->proxy_rejects[k]);
	SUM(t->bytes_in, e->bytes_in);
	SUM(t->bytes_out, e->bytes_out);
	SUM(t->payload_bytes, e->payload_bytes);
	SUM(t->utf8_bytes, e->utf8_bytes);
	SUM(t->sends, e->sends);
	SUM(t->zc_sends, e->zc_sends);
	SUM(t->zc_copied, e->zc_copied);
	SUM(t->connections_open, e->connections_open);
	SUM(t->outbox_bytes, e->outbox_bytes);
	for (int k = 0; k < CLOSE_CLASS_COUNT; k++)
		SUM(t->closes[k], e->closes[k]);
	for (int k = 0; k < HANDOFF_RESULT_COUNT; k++)
		SUM(t->handoff_failures[k], e->handoff_failures[k]);
	for (int k = 0; k < TLS_PATH_COUNT; k++)
		SUM(t->tls_paths[k], e->tls_paths[k]);
	SUM(t->tls_key_updates, e->tls_key_updates);
	SUM(t->tls.handshakes, e->tls.handshakes);
	SUM(t->tls.handshakes_resumed, e->tls.handshakes_resumed);
	SUM(t->tls.handshakes_tls12, e->tls.handshakes_tls12);
	SUM(t->tls.handshakes_tls13, e->tls.handshakes_tls13);
	for (int k = 0; k < TLS_ERR_COUNT; k++) {
		SUM(t->tls.handshake_failed[k], e->tls.handshake_failed[k]);
		SUM(t->tls.failed_after_handshake[k], e->tls.failed_after_handshake[k]);
	}
	/* The exposition's _count is the +Inf bucket (the sum of the buckets read), so a
	 * scrape racing an observation still shows a consistent histogram. */
	for (uint32_t b = 0; b <= LATENCY_BOUNDS_COUNT; b++)
		SUM(t->p2b_latency.bucket[b], e->p2b_latency.bucket[b]);
	SUM(t->p2b_latency.sum_ns, e->p2b_latency.sum_ns);
}

static void gather(struct totals *t, const struct metrics_input *in)
{
	*t = (struct totals){ 0 };
	for (uint32_t i = 0; i < in->nworkers; i++) {
		const struct metrics_source *s = &in->workers[i];
		sum_relay(&t->relay, s->relay);
		sum_engine(&t->engine, s->engine);
		SUM(t->pool_in_use, s->pool->bytes_in_use);
		SUM(t->pool_held, s->pool->bytes_held);
		SUM(t->pool_refusals, s->pool->alloc_failures);
		t->pool_budget += s->pool->budget_bytes_max; /* set once at start-up */
	}
}

/* ------------------------------------------------------------------ families */

static void scalar(struct prom_out *o, const char *name, const char *help, enum prom_type type, double v)
{
	prom_family(o, name, help, type);
	prom_sample(o, name, NULL, 0, v);
}

/* One label, values[i] -> counts[i]. */
static void labelled(struct prom_out *o, const char *name, const char *help, enum prom_type type,
		     const char *label, const char *const *values, const uint64_t *counts, size_t n)
{
	prom_family(o, name, help, type);
	for (size_t i = 0; i < n; i++) {
		struct prom_label l = { label, values[i] };
		prom_sample(o, name, &l, 1, (double)counts[i]);
	}
}

/* A per-worker series: one sample per worker, labelled by its index; the counter's
 * value times `scale` (unit conversion to the base unit). */
static void per_worker_scaled(struct prom_out *o, const char *name, const char *help,
			      const struct metrics_input *in, size_t offset, enum prom_type type, double scale)
{
	prom_family(o, name, help, type);
	for (uint32_t i = 0; i < in->nworkers; i++) {
		char id[WORKER_LABEL_BYTES];
		snprintf(id, sizeof id, "%u", i);
		const uint64_t *field = (const uint64_t *)((const char *)in->workers[i].engine + offset);
		struct prom_label l = { "worker", id };
		prom_sample(o, name, &l, 1, (double)STAT_GET(*field) * scale);
	}
}

static void per_worker_typed(struct prom_out *o, const char *name, const char *help,
			     const struct metrics_input *in, size_t offset, enum prom_type type)
{
	per_worker_scaled(o, name, help, in, offset, type, 1.0);
}

static void per_worker(struct prom_out *o, const char *name, const char *help, const struct metrics_input *in,
		       size_t offset)
{
	per_worker_typed(o, name, help, in, offset, PROM_COUNTER);
}

static void per_worker_gauge(struct prom_out *o, const char *name, const char *help,
			     const struct metrics_input *in, size_t offset)
{
	per_worker_typed(o, name, help, in, offset, PROM_GAUGE);
}

static void process_families(struct prom_out *o, const struct metrics_process *p)
{
	prom_family(o, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
		    PROM_COUNTER);
	if (p->rss_ok)
		prom_sample(o, "process_cpu_seconds_total", NULL, 0, p->cpu_seconds);
	prom_family(o, "process_max_fds", "Maximum number of open file descriptors.", PROM_GAUGE);
	if (p->fds_ok)
		prom_sample(o, "process_max_fds", NULL, 0, (double)p->max_fds);
	prom_family(o, "process_open_fds", "Number of open file descriptors.", PROM_GAUGE);
	if (p->fds_ok)
		prom_sample(o, "process_open_fds", NULL, 0, (double)p->open_fds);
	prom_family(o, "process_resident_memory_bytes", "Resident memory size in bytes.", PROM_GAUGE);
	if (p->rss_ok)
		prom_sample(o, "process_resident_memory_bytes", NULL, 0, (double)p->resident_bytes);
	scalar(o, "process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
	       PROM_GAUGE, p->start_time_seconds);
	prom_family(o, "process_virtual_memory_bytes", "Virtual memory size in bytes.", PROM_GAUGE);
	if (p->rss_ok)
		prom_sample(o, "process_virtual_memory_bytes", NULL, 0, (double)p->virtual_bytes);
}

static void reference_families(struct prom_out *o, const struct totals *t, const struct metrics_input *in)
{
	const struct relay_stats *r = &t->relay;
	scalar(o, "pyrycode_relay_connected_binaries",
	       "Binaries currently holding a server-id (binaries in their grace period excluded).", PROM_GAUGE,
	       (double)r->binaries);
	scalar(o, "pyrycode_relay_connected_phones", "Phones currently registered across all server-ids.",
	       PROM_GAUGE, (double)r->phones);

	static const char *const directions[] = { "phone_to_binary", "binary_to_phone" };
	const uint64_t frames[] = { r->frames_phone_to_binary, r->frames_binary_to_phone };
	labelled(o, "pyrycode_relay_frames_forwarded_total",
		 "Frames forwarded, by direction: wrapped sends to a binary, and frames written to a phone.",
		 PROM_COUNTER, "direction", directions, frames, ARRAY_LEN(frames));

	scalar(o, "pyrycode_relay_grace_expiries_total",
	       "Grace periods that expired and released a server-id (stale timers never count).", PROM_COUNTER,
	       (double)r->grace_expiries);

	if (in->push_wakes != NULL) {
		uint64_t wakes[FCM_OUTCOME_COUNT];
		for (int k = 0; k < FCM_OUTCOME_COUNT; k++)
			wakes[k] = STAT_GET(in->push_wakes[k]);
		labelled(o, "pyrycode_relay_push_wakes_total",
			 "Push wakes by outcome: sent, unregistered, send_failed and token_fetch_failed once per "
			 "admitted wake when its send ends; dropped when the per-server-id rate or the in-flight "
			 "cap refused one.",
			 PROM_COUNTER, "outcome", fcm_outcome_names, wakes, FCM_OUTCOME_COUNT);
	}

	labelled(o, "pyrycode_relay_register_failures_total",
		 "Registration failures on the WebSocket endpoints, by kind.", PROM_COUNTER, "kind",
		 fail_kind_names, r->register_failures, RELAY_FAIL_COUNT);

	const char *name = "pyrycode_relay_ws_upgrade_attempts_total";
	prom_family(o, name, "WebSocket upgrade attempts by endpoint and terminal outcome.", PROM_COUNTER);
	for (int e = 0; e < RELAY_EP_COUNT; e++) {
		for (int k = 0; k < RELAY_OUT_COUNT; k++) {
			struct prom_label l[2] = { { "endpoint", endpoint_names[e] }, { "outcome", outcome_names[k] } };
			prom_sample(o, name, l, 2, (double)r->upgrade_attempts[e][k]);
		}
	}
}

static void own_families(struct prom_out *o, const struct totals *t, const struct metrics_input *in)
{
	const struct worker_stats *e = &t->engine;
	scalar(o, "pyrycode_relay_accept_errors_total",
	       "accept() failures (descriptor or memory exhaustion); accepting backs off after each.",
	       PROM_COUNTER, (double)e->accept_errors);
	scalar(o, "pyrycode_relay_accepted_connections_total", "TCP connections accepted on the public listener.",
	       PROM_COUNTER, (double)e->accepts);
	scalar(o, "pyrycode_relay_accepts_shed_total",
	       "Accepted connections closed at once because the connection pool was full or the relay draining.",
	       PROM_COUNTER, (double)e->accept_pool_full);

	prom_family(o, "pyrycode_relay_build_info", "Build information; the value is always 1.", PROM_GAUGE);
	struct prom_label v = { "version", in->version };
	prom_sample(o, "pyrycode_relay_build_info", &v, 1, 1);

	scalar(o, "pyrycode_relay_buffer_pool_budget_bytes",
	       "Ceiling on message and queue buffer bytes held from the system (a limit, not a reservation).",
	       PROM_GAUGE, (double)t->pool_budget);
	static const char *const pool_states[] = { "in_use", "cached" };
	const uint64_t pool[] = { t->pool_in_use, t->pool_held - MIN(t->pool_held, t->pool_in_use) };
	labelled(o, "pyrycode_relay_buffer_pool_bytes",
		 "Message and queue buffer bytes held from the system: in use, or cached for reuse.", PROM_GAUGE,
		 "state", pool_states, pool, ARRAY_LEN(pool));
	scalar(o, "pyrycode_relay_buffer_pool_refusals_total",
	       "Buffer requests refused because the pool budget was exhausted (the asking connection is shed).",
	       PROM_COUNTER, (double)t->pool_refusals);

	scalar(o, "pyrycode_relay_bytes_received_total", "Bytes read from client sockets.", PROM_COUNTER,
	       (double)e->bytes_in);
	scalar(o, "pyrycode_relay_bytes_sent_total", "Bytes written to client sockets.", PROM_COUNTER,
	       (double)e->bytes_out);

	labelled(o, "pyrycode_relay_connections_closed_total",
		 "Upgraded connections closed, by the class of the first close code exchanged (abnormal: none).",
		 PROM_COUNTER, "class", close_class_names, e->closes, CLOSE_CLASS_COUNT);
	scalar(o, "pyrycode_relay_connections_open",
	       "Open client connections, HTTP and WebSocket (pool slots in use).", PROM_GAUGE,
	       (double)e->connections_open);

	labelled(o, "pyrycode_relay_frames_dropped_total", "Frames not delivered, by reason.", PROM_COUNTER, "reason",
		 drop_names, t->relay.dropped, RELAY_DROP_COUNT);

	labelled(o, "pyrycode_relay_handoff_failures_total",
		 "Upgrades that could not be handed to their server-id's worker (the connection was closed), by reason.",
		 PROM_COUNTER, "reason", handoff_failure_names, e->handoff_failures + 1, HANDOFF_RESULT_COUNT - 1);

	scalar(o, "pyrycode_relay_ip_cap_rejects_total",
	       "Upgrades refused 503 because their client IP held --max-connections-per-ip WebSocket connections.",
	       PROM_COUNTER, (double)e->ip_cap_rejects);

	scalar(o, "pyrycode_relay_outbox_bytes", "Bytes queued for sending on client sockets, not yet written.",
	       PROM_GAUGE, (double)e->outbox_bytes);
	static const char *const pass_names[] = { "unmask_ascii", "utf8" };
	const uint64_t pass_bytes[] = { e->payload_bytes, e->utf8_bytes };
	labelled(o, "pyrycode_relay_payload_bytes_total",
		 "WebSocket data payload bytes walked in user space, by pass: unmask_ascii (every byte: unmask, copy "
		 "and ASCII test in one pass), utf8 (text bytes that were not all ASCII, validated again).",
		 PROM_COUNTER, "pass", pass_names, pass_bytes, ARRAY_LEN(pass_bytes));
	const char *const isa_names[] = { simd_name(simd_selected()) };
	const uint64_t one[] = { 1 };
	labelled(o, "pyrycode_relay_payload_pass_info",
		 "Always 1; isa is the widest instructions the payload passes use, chosen at start-up (avx2, sse2, "
		 "else word).",
		 PROM_GAUGE, "isa", isa_names, one, 1);
	static const char *const copies[] = { "in_scan", "separate" };
	const uint64_t copied[] = { t->relay.copied_in_scan_bytes, t->relay.copied_apart_bytes };
	labelled(o, "pyrycode_relay_payload_copy_bytes_total",
		 "Forwarded payload bytes copied into an outbox, by how: in_scan (copied by the JSON validation as it "
		 "checked them: a phone's frame, and a binary's in the form {\"conn_id\":..,\"frame\":..}), separate "
		 "(other envelopes, copied once scanned, and frames the outbox could not take in one piece).",
		 PROM_COUNTER, "copy", copies, copied, ARRAY_LEN(copied));
	scalar(o, "pyrycode_relay_phone_pauses_total",
	       "Times a server-id's phones stopped being read because its binary's outbox crossed the high-water mark.",
	       PROM_COUNTER, (double)t->relay.phone_pauses);

	const char *lat = "pyrycode_relay_phone_to_binary_latency_seconds";
	prom_family(o, lat, "Time from receiving a phone frame to submitting the send that carries it to the binary.",
		    PROM_HISTOGRAM);
	double bounds[LATENCY_BOUNDS_COUNT];
	for (uint32_t i = 0; i < LATENCY_BOUNDS_COUNT; i++)
		bounds[i] = (double)latency_bounds_ns[i] / NS_PER_SECOND;
	prom_histogram(o, lat, NULL, 0, bounds, LATENCY_BOUNDS_COUNT, e->p2b_latency.bucket,
		       (double)e->p2b_latency.sum_ns / NS_PER_SECOND);

	scalar(o, "pyrycode_relay_sends_total", "Send operations submitted to the kernel (each may carry many frames).",
	       PROM_COUNTER, (double)e->sends);

	scalar(o, "pyrycode_relay_zerocopy_copied_total",
	       "Zero-copy sends the kernel completed by copying after all (loopback always does).", PROM_COUNTER,
	       (double)e->zc_copied);
	scalar(o, "pyrycode_relay_zerocopy_sends_total",
	       "Sends submitted as io_uring send_zc (those of at least --zerocopy-min-bytes).", PROM_COUNTER,
	       (double)e->zc_sends);

	per_worker(o, "pyrycode_relay_worker_accepts_total", "TCP connections accepted, per worker.", in,
		   offsetof(struct worker_stats, accepts));
	per_worker_scaled(o, "pyrycode_relay_worker_batch_wait_seconds",
			  "How long a waiting worker lets the kernel hold it for a batch of completions "
			  "(--batch-wait-us; 0: off, or the kernel cannot).",
			  in, offsetof(struct worker_stats, batch_wait_us), PROM_GAUGE, 1e-6);
	per_worker_gauge(o, "pyrycode_relay_worker_batching",
			 "1 while messages reach the worker often enough that its waits are batched "
			 "(1.6 or more messages expected within --batch-wait-us, and batching does not slow the traffic), else 0.",
			 in, offsetof(struct worker_stats, batching));
	per_worker(o, "pyrycode_relay_worker_batch_backoffs_total",
		   "Times batched waits were turned off for a while because they slowed the traffic down "
		   "(peers that wait for the relay's answers, e.g. request/response; ADR 19).",
		   in, offsetof(struct worker_stats, batch_backoffs));
	per_worker(o, "pyrycode_relay_worker_cqes_total", "io_uring completions handled, per worker.", in,
		   offsetof(struct worker_stats, cqes));
	per_worker(o, "pyrycode_relay_worker_handoffs_received_total",
		   "Upgrades taken from other workers (their server-id is this worker's), per worker.", in,
		   offsetof(struct worker_stats, handoffs_received));
	per_worker(o, "pyrycode_relay_worker_handoffs_sent_total",
		   "Upgrades sent to the worker that owns their server-id: the only messages between workers, "
		   "one per handed-off connection and none per frame.",
		   in, offsetof(struct worker_stats, handoffs_sent));
	per_worker(o, "pyrycode_relay_worker_sessions_exported_total",
		   "Open WebSockets handed to a successor relay at an upgrade (ADR 0018), per worker.", in,
		   offsetof(struct worker_stats, sessions_exported));
	per_worker(o, "pyrycode_relay_worker_sessions_resumed_total",
		   "Open WebSockets taken from a predecessor relay at an upgrade, without a new handshake (ADR 0018), "
		   "per worker.",
		   in, offsetof(struct worker_stats, sessions_resumed));
	per_worker(o, "pyrycode_relay_worker_io_uring_enters_total",
		   "io_uring_enter system calls, per worker (CQEs per enter: divide).", in,
		   offsetof(struct worker_stats, enters));
	per_worker(o, "pyrycode_relay_worker_loop_iterations_total", "Event-loop iterations, per worker.", in,
		   offsetof(struct worker_stats, loop_iterations));
	per_worker(o, "pyrycode_relay_worker_recv_buffer_exhausted_total",
		   "Multishot receives ended because the provided-buffer ring was empty (-ENOBUFS), per worker.", in,
		   offsetof(struct worker_stats, recv_enobufs));
	per_worker(o, "pyrycode_relay_worker_waits_total",
		   "Times the worker had no completion ready and slept in the kernel (frames per wake-up: "
		   "frames relayed / this).",
		   in, offsetof(struct worker_stats, waits));
	per_worker_gauge(o, "pyrycode_relay_worker_recv_buffers",
			 "Provided receive buffers in the worker's ring (it starts small and doubles when a receive finds it empty).",
			 in, offsetof(struct worker_stats, recv_buffers));
}

/* TLS termination (certificate-files mode): handshakes, failures by reason, the path
 * records took, the served certificate's expiry. Only when TLS is on. */
static void tls_families(struct prom_out *o, const struct totals *t, const struct metrics_input *in)
{
	const struct worker_stats *e = &t->engine;
	static const char *const paths[TLS_PATH_COUNT][2] = {
		[TLS_PATH_KTLS] = { "ktls", "installed" },
		[TLS_PATH_USER_NO_KERNEL_TLS] = { "userspace", "no_kernel_tls" },
		[TLS_PATH_USER_UNSUPPORTED] = { "userspace", "unsupported_cipher" },
		[TLS_PATH_USER_REFUSED] = { "userspace", "kernel_refused" },
		[TLS_PATH_USER_ENDED] = { "userspace", "ended_before_install" },
		[TLS_PATH_CLOSED_RX_REFUSED] = { "closed", "rx_keys_refused" },
	};
	const char *name = "pyrycode_relay_tls_connections_total";
	prom_family(o, name, "TLS connections past their handshake, by where their records are encrypted and why.",
		    PROM_COUNTER);
	for (int k = 0; k < TLS_PATH_COUNT; k++) {
		struct prom_label l[2] = { { "path", paths[k][0] }, { "reason", paths[k][1] } };
		prom_sample(o, name, l, 2, (double)e->tls_paths[k]);
	}
	scalar(o, "pyrycode_relay_tls_certificate_expiry_timestamp_seconds",
	       "notAfter of the served certificate chain (the earliest), seconds since the epoch.", PROM_GAUGE,
	       (double)__atomic_load_n(in->tls_cert_not_after_s, __ATOMIC_RELAXED));
	const char *errs[TLS_ERR_COUNT - 1];
	for (int k = 1; k < TLS_ERR_COUNT; k++)
		errs[k - 1] = tls_error_name((enum tls_error)k);
	labelled(o, "pyrycode_relay_tls_errors_after_handshake_total",
		 "TLS connections failed after their handshake, by reason.", PROM_COUNTER, "reason", errs,
		 e->tls.failed_after_handshake + 1, TLS_ERR_COUNT - 1);
	labelled(o, "pyrycode_relay_tls_handshake_failures_total", "TLS handshakes that failed, by reason.",
		 PROM_COUNTER, "reason", errs, e->tls.handshake_failed + 1, TLS_ERR_COUNT - 1);
	static const char *const versions[] = { "1.2", "1.3" };
	const uint64_t by_version[] = { e->tls.handshakes_tls12, e->tls.handshakes_tls13 };
	labelled(o, "pyrycode_relay_tls_handshakes_total", "Completed TLS handshakes, by protocol version.",
		 PROM_COUNTER, "version", versions, by_version, ARRAY_LEN(by_version));
	scalar(o, "pyrycode_relay_tls_key_updates_total",
	       "Peer TLS 1.3 KeyUpdates followed on kTLS connections (the kernel took the next keys; 6.14+).",
	       PROM_COUNTER, (double)e->tls_key_updates);
	scalar(o, "pyrycode_relay_tls_resumptions_total", "Completed TLS handshakes that resumed a session (ticket).",
	       PROM_COUNTER, (double)e->tls.handshakes_resumed);
}

/* --https-proxy-protocol (ours): connections on the TLS listener closed unserved, by
 * why their PROXY v2 header was not accepted. Only when the flag is on. */
static void proxy_family(struct prom_out *o, const struct totals *t)
{
	const char *reasons[PROXY_REJECT_COUNT - 1];
	for (unsigned k = 1; k < PROXY_V2_REASON_COUNT; k++)
		reasons[k - 1] = proxy_v2_reason_name((enum proxy_v2_reason)k);
	reasons[PROXY_REJECT_TIMEOUT - 1] = "timeout";
	reasons[PROXY_REJECT_EOF - 1] = "eof";
	labelled(o, "pyrycode_relay_proxy_protocol_rejects_total",
		 "TLS-listener connections closed unserved (zero bytes written) for want of an accepted "
		 "PROXY protocol v2 header, by reason.",
		 PROM_COUNTER, "reason", reasons, t->engine.proxy_rejects + 1, PROXY_REJECT_COUNT - 1);
}

/* --domain mode (ours): issuance and renewal outcomes of the autocert thread. The
 * served certificate's expiry is pyrycode_relay_tls_certificate_expiry_timestamp_seconds. */
static void acme_families(struct prom_out *o, const struct autocert_stats *a)
{
	const char *stages[ACME_STAGE_COUNT - 1];
	uint64_t failures[ACME_STAGE_COUNT - 1];
	for (int k = 0; k < ACME_STAGE_COUNT - 1; k++) { /* "cancelled" is not a failure */
		stages[k] = acme_stage_name((enum acme_stage)k);
		failures[k] = __atomic_load_n(&a->failures[k], __ATOMIC_RELAXED);
	}
	_Static_assert(ACME_STAGE_CANCELLED == ACME_STAGE_COUNT - 1, "cancelled is the last stage");
	labelled(o, "pyrycode_relay_acme_failures_total",
		 "ACME certificate requests (issuance or renewal) that failed, by the stage that failed.",
		 PROM_COUNTER, "stage", stages, failures, ACME_STAGE_COUNT - 1);
	scalar(o, "pyrycode_relay_acme_issued_total", "Certificates obtained over ACME (issuance and renewal).",
	       PROM_COUNTER, (double)__atomic_load_n(&a->issued, __ATOMIC_RELAXED));
	scalar(o, "pyrycode_relay_acme_last_success_timestamp_seconds",
	       "When the last certificate was obtained over ACME, seconds since the epoch; 0: none since start.",
	       PROM_GAUGE, (double)__atomic_load_n(&a->last_success_s, __ATOMIC_RELAXED));
}

void metrics_render(struct prom_out *o, const struct metrics_input *in)
{
	ASSERT(in->nworkers <= METRICS_WORKERS_MAX);
	struct totals t;
	gather(&t, in);
	/* Process figures, the handler's own errors, ours, then the reference's series. */
	process_families(o, in->process);
	labelled(o, "promhttp_metric_handler_errors_total",
		 "Total number of internal errors encountered by the metrics handler.", PROM_COUNTER, "cause",
		 handler_error_names, in->handler_errors, METRICS_ERR_COUNT);
	if (in->acme != NULL)
		acme_families(o, in->acme);
	own_families(o, &t, in);
	if (in->tls_cert_not_after_s != NULL)
		tls_families(o, &t, in);
	if (in->proxy_protocol)
		proxy_family(o, &t);
	reference_families(o, &t, in);
}
