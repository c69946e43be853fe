/*
 * push.h - push wake (reference §7.2, §6.2): admission on the worker threads, the FCM
 * sends on the sender's own control thread.
 *
 * Admission (push_submit, called by a worker for a binary's push_wake envelope that
 * already passed the structural check, envelope_push_wake_parse):
 *   1. sender stopped (shutdown)            -> "push is off"
 *   2. per-server-id token bucket, burst 6, one per 10 s (idle buckets dropped after
 *      60 s, swept every 5 min)            -> "push_wake rate-limited for server-id"
 *   3. relay-wide in-flight cap, 32 wakes admitted and not finished (queued or
 *      sending), an atomic across workers -> "push_wake in-flight cap reached"
 *   4. queued for the control thread; never waits: the queue holds as many wakes as
 *      the cap admits, so it cannot be full while the cap holds (a full queue, or no
 *      memory for the wake, would be refused as dropped too).
 * Refusals 2-4 count as `dropped`; nothing refused is queued or retried. The limiter
 * and the queue share one mutex (wakes are human-paced: a cold path), held for a
 * bucket update and a pointer push, never across I/O; the worker then writes one
 * eventfd. The limiter keys buckets by a keyed 64-bit SipHash of the server-id, so
 * ids of any length fit a fixed-size bucket (two live ids sharing a hash, chance
 * ~n^2/2^65 under a per-process secret key, would share a bucket).
 *
 * The sender (push_sender_start's thread) runs up to 32 wakes at once, each two HTTPS
 * calls (https_client.h) bounded by --fcm-timeout: the OAuth2 JWT-bearer token fetch,
 * only when the cached access token is missing or within 10 s of expiry (one fetch
 * serves every wake waiting for it, success or failure), then the FCM POST. Each
 * admitted wake ends in exactly one outcome - counted first, then logged once as
 * push_wake_sent or push_wake_send_failed (server_id, token_fp, duration, and
 * fcm_message_id or err) - and leaves the in-flight count. A wake keeps going when its
 * binary disconnects; push_sender_stop cancels every unfinished one at once (outcome
 * send_failed, "context canceled") and joins the thread.
 *
 * Counters (push_sender_counts): FCM_OUTCOME_COUNT cells in fcm_outcome order; each has
 * one writer (the sender thread; `dropped` is an atomic add from any worker), readers
 * use relaxed loads (core/stat.h).
 */
#ifndef PYRELAY_PUSH_H
#define PYRELAY_PUSH_H

#include "config/config.h"
#include "core/common.h"
#include "envelope/json.h"

#define PUSH_INFLIGHT_MAX 32u
#define PUSH_RATE_BURST 6u
#define PUSH_RATE_REFILL_MS 10000u
#define PUSH_RATE_BUCKETS_MAX 65536u /* server-ids with a live bucket; fewer with a lower --max-connections */
#define PUSH_SWEEP_INTERVAL_MS 300000u
#define PUSH_WHY_BYTES 256u

#define PUSH_ERR_OFF "push is off"
#define PUSH_ERR_RATE_LIMITED "push_wake rate-limited for server-id"
#define PUSH_ERR_INFLIGHT_CAP "push_wake in-flight cap reached"
#define PUSH_ERR_NO_ROOM "push_wake dropped: no room to queue it"

struct push_sender;

/* Boot (main thread): take the credentials (moved: *creds is left zeroed), parse the
 * URLs, load the trust anchors. NULL with the reason in why (never any of the key). */
struct push_sender *push_sender_create(const struct config *cfg, struct config_fcm_credentials *creds,
				       char why[PUSH_WHY_BYTES]);
/* Start the sender thread (signals must be blocked in the caller, as they are in main). */
bool push_sender_start(struct push_sender *p);
/* Any worker thread: admission; NULL when the wake was queued, else the refusal's
 * fixed err text. token is the push_wake's token as scanned (escaped). */
const char *push_submit(struct push_sender *p, struct span server_id, struct json_str token);
/* Refuse new wakes, cancel the unfinished ones (each still logs its outcome), join
 * the thread. Idempotent; prompt (no call is waited for). */
void push_sender_stop(struct push_sender *p);
void push_sender_destroy(struct push_sender *p);
/* The outcome counters, FCM_OUTCOME_COUNT cells (control/fcm.h). */
const uint64_t *push_sender_counts(const struct push_sender *p);

#endif
