/*
 * push.c - push wake admission and the FCM sender thread (contract in push.h).
 *
 * Reading order: admission (worker threads), the token fetch, the sends, the sender's
 * loop, start/stop. The sender thread owns everything below "sender state"; workers
 * touch only what the mutex guards, the in-flight atomic, the dropped counter and the
 * eventfd.
 */
#include "control/push.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <openssl/mem.h>
#include <openssl/siphash.h>

#include "control/fcm.h"
#include "control/https_client.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/stat.h"
#include "core/url.h"
#include "relay/ratelimit.h"

#define MS_PER_S 1000u
#define USER_AGENT "pyrycode-relay"
#define BEARER_PREFIX "Bearer "
/* pollfds: the eventfd, the token fetch, one per wake */
#define POLL_SLOTS (2u + PUSH_INFLIGHT_MAX)
#define TOKEN_BODY_BYTES_MAX (FCM_JWT_BYTES_MAX + 128u)
#define POLL_RETRY_NS 10000000L /* after a failed poll */

/* One admitted wake: the server-id and the decoded device token, one allocation. */
struct push_req {
	size_t id_len;
	size_t token_len;
	uint8_t bytes[]; /* id, then token */
};

enum job_state { JOB_FREE = 0, JOB_TOKEN_WAIT, JOB_SENDING };

struct push_job {
	enum job_state state;
	struct push_req *req;
	struct https_call *call;
	uint64_t start_ns;
	char fp[FCM_TOKEN_FP_HEX + 1];
};

struct push_sender {
	/* ---- shared with the workers: under lock ---- */
	pthread_mutex_t lock;
	bool closed;
	struct ratelimit limiter;
	uint64_t limiter_now_ms; /* never goes back, whichever thread polls */
	struct push_req *queue[PUSH_INFLIGHT_MAX];
	uint32_t queue_head, queue_len;
	/* ---- shared, lock-free ---- */
	uint32_t inflight;  /* atomic: admitted and not finished; workers add, the sender subtracts */
	bool stopping;      /* atomic: set by push_sender_stop */
	int wake_fd;        /* eventfd: a wake was queued, or stop */
	uint64_t counts[FCM_OUTCOME_COUNT];
	uint64_t id_key[2]; /* SipHash key of the limiter's server-id hash */

	/* ---- sender state (its thread only) ---- */
	pthread_t tid;
	bool started;
	struct https_client *client;
	struct config_fcm_credentials creds;
	struct https_url token_url, send_url;
	const char *send_url_text;
	uint64_t timeout_ms;
	struct push_job jobs[PUSH_INFLIGHT_MAX];
	struct https_call *fetch;  /* the token fetch in flight, or NULL */
	bool have_token;
	uint64_t token_valid_until_ms; /* UINT64_MAX: the reply gave no lifetime */
	char access_token[FCM_ACCESS_TOKEN_BYTES_MAX];
	char bearer[sizeof BEARER_PREFIX + FCM_ACCESS_TOKEN_BYTES_MAX];
	char jwt[FCM_JWT_BYTES_MAX];
	char token_body[TOKEN_BODY_BYTES_MAX];
	uint64_t next_sweep_ms;
};

/* ------------------------------------------------------------------ admission */

static void count_dropped(struct push_sender *p)
{
	__atomic_fetch_add(&p->counts[FCM_OUTCOME_DROPPED], 1, __ATOMIC_RELAXED);
}

/* Under p->lock: the limiter's clock, never earlier than a time it has seen. */
static uint64_t limiter_now(struct push_sender *p)
{
	p->limiter_now_ms = MAX(p->limiter_now_ms, monotonic_ms());
	return p->limiter_now_ms;
}

/* Under p->lock: take an in-flight slot below the cap. Workers only add under the
 * lock; the sender subtracts without it, which only makes room. */
static bool take_inflight(struct push_sender *p)
{
	uint32_t n = __atomic_load_n(&p->inflight, __ATOMIC_ACQUIRE);
	while (n < PUSH_INFLIGHT_MAX) {
		if (__atomic_compare_exchange_n(&p->inflight, &n, n + 1, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
			return true;
	}
	return false;
}

static struct push_req *req_make(struct span server_id, struct json_str token)
{
	/* decoding never grows a string: raw length bounds the token */
	struct push_req *r = malloc(sizeof *r + server_id.len + token.raw.len);
	if (r == NULL)
		return NULL;
	r->id_len = server_id.len;
	memcpy(r->bytes, server_id.ptr, server_id.len);
	r->token_len = json_str_unescape(token, r->bytes + server_id.len, token.raw.len);
	ASSERT(r->token_len != SIZE_MAX);
	return r;
}

static void req_free(struct push_req *r)
{
	if (r == NULL)
		return;
	OPENSSL_cleanse(r->bytes, r->id_len + r->token_len);
	free(r);
}

static struct span req_id(const struct push_req *r)
{
	return span_make(r->bytes, r->id_len);
}

static struct span req_token(const struct push_req *r)
{
	return span_make(r->bytes + r->id_len, r->token_len);
}

const char *push_submit(struct push_sender *p, struct span server_id, struct json_str token)
{
	uint64_t h = SIPHASH_24(p->id_key, server_id.ptr, server_id.len);
	const char *err = NULL;
	bool dropped = true;

	pthread_mutex_lock(&p->lock);
	if (p->closed) {
		err = PUSH_ERR_OFF;
		dropped = false; /* push off counts nothing (§8.2) */
	} else if (!ratelimit_allow(&p->limiter, span_make(&h, sizeof h), limiter_now(p))) {
		err = PUSH_ERR_RATE_LIMITED;
	} else if (!take_inflight(p)) {
		err = PUSH_ERR_INFLIGHT_CAP;
	} else {
		struct push_req *r = p->queue_len < PUSH_INFLIGHT_MAX ? req_make(server_id, token) : NULL;
		if (r == NULL) {
			__atomic_fetch_sub(&p->inflight, 1, __ATOMIC_ACQ_REL);
			err = PUSH_ERR_NO_ROOM;
		} else {
			p->queue[(p->queue_head + p->queue_len++) % PUSH_INFLIGHT_MAX] = r;
		}
	}
	pthread_mutex_unlock(&p->lock);
	if (err == NULL) {
		uint64_t one = 1;
		/* a counter far below its limit: the write cannot block or fail for room */
		(void)!write(p->wake_fd, &one, sizeof one);
	} else if (dropped) {
		count_dropped(p);
	}
	return err;
}

/* ------------------------------------------------------------------ outcomes */

static void job_end(struct push_sender *p, struct push_job *j, enum fcm_outcome outcome, const char *err,
		    const char *message_id)
{
	char duration[FCM_DURATION_BYTES];
	fcm_format_duration(duration, sizeof duration, monotonic_ns() - j->start_ns);
	/* counted before it is logged: whoever sees the line sees the count */
	STAT_INC(p->counts[outcome]);
	if (outcome == FCM_OUTCOME_SENT && message_id[0]) {
		LOG_INFO("push_wake_sent", KV_SPAN("server_id", req_id(j->req)), KV_STR("token_fp", j->fp),
			 KV_STR("duration", duration), KV_STR("fcm_message_id", message_id));
	} else if (outcome == FCM_OUTCOME_SENT) {
		LOG_INFO("push_wake_sent", KV_SPAN("server_id", req_id(j->req)), KV_STR("token_fp", j->fp),
			 KV_STR("duration", duration));
	} else {
		LOG_WARN("push_wake_send_failed", KV_SPAN("server_id", req_id(j->req)), KV_STR("token_fp", j->fp),
			 KV_STR("duration", duration), KV_STR("err", err));
	}
	https_call_free(j->call);
	req_free(j->req);
	*j = (struct push_job){ .state = JOB_FREE };
	__atomic_fetch_sub(&p->inflight, 1, __ATOMIC_ACQ_REL);
}

static void job_fail_transport(struct push_sender *p, struct push_job *j, const char *detail)
{
	char err[FCM_ERR_BYTES + HTTPS_DETAIL_BYTES];
	snprintf(err, sizeof err, "fcm send failed: Post \"%s\": %s", p->send_url_text, detail);
	job_end(p, j, FCM_OUTCOME_SEND_FAILED, err, "");
}

/* ------------------------------------------------------------------ the token */

static bool token_valid(const struct push_sender *p, uint64_t now_ms)
{
	return p->have_token && now_ms < p->token_valid_until_ms;
}

/* x/oauth2: a token is valid until expiryDelta before its Expiry; a reply without a
 * lifetime gives a token that never expires. Saturating: a lifetime too long to add
 * is forever, one shorter than the delta is already stale. */
static uint64_t token_valid_until(uint64_t now_ms, int64_t expires_in_s)
{
	if (expires_in_s <= 0 || (uint64_t)expires_in_s > (UINT64_MAX - now_ms) / MS_PER_S)
		return UINT64_MAX;
	uint64_t expiry = now_ms + (uint64_t)expires_in_s * MS_PER_S;
	uint64_t delta = (uint64_t)FCM_TOKEN_EXPIRY_DELTA_S * MS_PER_S;
	return expiry > delta ? expiry - delta : 0;
}

static void start_fetch(struct push_sender *p)
{
	struct timespec wall;
	clock_gettime(CLOCK_REALTIME, &wall);
	size_t jwt_len = fcm_jwt_sign(p->jwt, sizeof p->jwt, p->creds.pkey, p->creds.client_email,
				      p->creds.private_key_id, p->creds.token_uri,
				      (int64_t)wall.tv_sec - FCM_JWT_IAT_SKEW_S);
	size_t body_len = jwt_len ? fcm_token_request_body(p->token_body, sizeof p->token_body, p->jwt) : 0;
	const struct https_header headers[] = {
		{ "User-Agent", USER_AGENT },
		{ "Content-Type", "application/x-www-form-urlencoded" },
	};
	struct https_request req = {
		.method = "POST",
		.url = &p->token_url,
		.headers = headers,
		.nheaders = ARRAY_LEN(headers),
		.body = span_make(p->token_body, body_len),
		.reply_body_max = FCM_TOKEN_REPLY_BYTES_MAX,
		.timeout_ms = p->timeout_ms,
	};
	/* a signing failure leaves body_len 0: the call is not made and the fetch fails */
	p->fetch = body_len ? https_call_start(p->client, &req, monotonic_ms()) : NULL;
	OPENSSL_cleanse(p->jwt, sizeof p->jwt);
	OPENSSL_cleanse(p->token_body, sizeof p->token_body);
}

static void start_send(struct push_sender *p, struct push_job *j);

/* The fetch ended (call NULL: it could not start): cache the token or fail every
 * wake waiting for it, with only the HTTP status kept (the body may be free text). */
static void fetch_done(struct push_sender *p, const struct https_result *res)
{
	char err[FCM_ERR_BYTES];
	snprintf(err, sizeof err, "fcm access-token fetch failed");
	if (res && res->err == HTTPS_OK && res->status >= 200 && res->status <= 299) {
		int64_t expires_in = 0;
		if (fcm_parse_token_reply(span_make(res->body, res->body_len), p->access_token,
					  sizeof p->access_token, &expires_in)) {
			p->have_token = true;
			p->token_valid_until_ms = token_valid_until(monotonic_ms(), expires_in);
			snprintf(p->bearer, sizeof p->bearer, "%s%s", BEARER_PREFIX, p->access_token);
		}
	} else if (res && res->err == HTTPS_OK) {
		snprintf(err, sizeof err, "fcm access-token fetch failed: status %d", res->status);
	}
	for (uint32_t i = 0; i < PUSH_INFLIGHT_MAX; i++) {
		struct push_job *j = &p->jobs[i];
		if (j->state != JOB_TOKEN_WAIT)
			continue;
		if (p->have_token)
			start_send(p, j);
		else
			job_end(p, j, FCM_OUTCOME_TOKEN_FETCH_FAILED, err, "");
	}
}

/* ------------------------------------------------------------------ a wake */

static void start_send(struct push_sender *p, struct push_job *j)
{
	struct span token = req_token(j->req);
	size_t cap = FCM_SEND_BODY_LEN_MAX(token.len);
	char *body = malloc(cap);
	size_t n = body ? fcm_send_body(body, cap, token) : 0;
	const struct https_header headers[] = {
		{ "User-Agent", USER_AGENT },
		{ "Authorization", p->bearer },
		{ "Content-Type", "application/json" },
	};
	struct https_request req = {
		.method = "POST",
		.url = &p->send_url,
		.headers = headers,
		.nheaders = ARRAY_LEN(headers),
		.body = span_make(body, n),
		.reply_body_max = FCM_REPLY_BYTES_MAX,
		.timeout_ms = p->timeout_ms,
	};
	j->call = n ? https_call_start(p->client, &req, monotonic_ms()) : NULL;
	if (body) {
		OPENSSL_cleanse(body, cap);
		free(body);
	}
	if (j->call == NULL) {
		job_fail_transport(p, j, "out of memory");
		return;
	}
	j->state = JOB_SENDING;
}

/* A job for a taken wake; with go, its send (or the token fetch it waits for) starts. */
static void start_job(struct push_sender *p, struct push_req *r, bool go)
{
	struct push_job *j = NULL;
	for (uint32_t i = 0; i < PUSH_INFLIGHT_MAX && j == NULL; i++)
		if (p->jobs[i].state == JOB_FREE)
			j = &p->jobs[i];
	/* every queued wake holds an in-flight slot, and every unfinished job one: there
	 * are never more than PUSH_INFLIGHT_MAX of both together */
	ASSERT(j != NULL);
	*j = (struct push_job){ .state = JOB_TOKEN_WAIT, .req = r, .start_ns = monotonic_ns() };
	fcm_token_fp(req_token(r), j->fp);
	if (!go)
		return;
	if (token_valid(p, monotonic_ms())) {
		start_send(p, j);
		return;
	}
	p->have_token = false;
	if (p->fetch == NULL) {
		start_fetch(p);
		if (p->fetch == NULL)
			fetch_done(p, NULL);
	}
}

static void send_done(struct push_sender *p, struct push_job *j)
{
	const struct https_result *res = https_call_result(j->call);
	if (res->err != HTTPS_OK) {
		job_fail_transport(p, j, res->detail);
		return;
	}
	struct fcm_send_result out;
	fcm_classify_send_reply(res->status, span_make(res->body, res->body_len), &out);
	job_end(p, j, out.outcome, out.err, out.message_id);
}

/* ------------------------------------------------------------------ the loop */

static void take_queued(struct push_sender *p, bool go)
{
	struct push_req *taken[PUSH_INFLIGHT_MAX];
	uint32_t n = 0;
	pthread_mutex_lock(&p->lock);
	while (p->queue_len > 0) {
		taken[n++] = p->queue[p->queue_head];
		p->queue_head = (p->queue_head + 1) % PUSH_INFLIGHT_MAX;
		p->queue_len--;
	}
	pthread_mutex_unlock(&p->lock);
	for (uint32_t i = 0; i < n; i++)
		start_job(p, taken[i], go);
}

static void sweep_limiter(struct push_sender *p, uint64_t now_ms)
{
	if (now_ms < p->next_sweep_ms)
		return;
	pthread_mutex_lock(&p->lock);
	ratelimit_sweep(&p->limiter, limiter_now(p));
	pthread_mutex_unlock(&p->lock);
	p->next_sweep_ms = now_ms + PUSH_SWEEP_INTERVAL_MS;
}

/* Add a call's wait to the poll set; returns the milliseconds it may sleep at most (0
 * for a call that finished as it started: it is stepped, and ended, right after). */
static uint64_t watch(struct pollfd *pfd, const struct https_call *call, uint64_t now_ms)
{
	*pfd = (struct pollfd){ .fd = https_call_fd(call), .events = https_call_events(call) };
	if (https_call_finished(call))
		return 0;
	uint64_t deadline = https_call_deadline_ms(call);
	return deadline > now_ms ? deadline - now_ms : 0;
}

/* Shutdown: every unfinished wake ends now, as the Go waker's cancelled context. */
static void cancel_all(struct push_sender *p)
{
	take_queued(p, false);
	if (p->fetch) {
		https_call_free(p->fetch);
		p->fetch = NULL;
	}
	for (uint32_t i = 0; i < PUSH_INFLIGHT_MAX; i++) {
		struct push_job *j = &p->jobs[i];
		if (j->state != JOB_FREE)
			job_fail_transport(p, j, "context canceled");
	}
}

static void *sender_thread(void *arg)
{
	struct push_sender *p = arg;
	struct pollfd pfd[POLL_SLOTS];
	struct push_job *polled[POLL_SLOTS];

	p->next_sweep_ms = monotonic_ms() + PUSH_SWEEP_INTERVAL_MS;
	while (!__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE)) {
		uint64_t now = monotonic_ms();
		uint64_t wait = p->next_sweep_ms > now ? p->next_sweep_ms - now : 0;
		uint32_t n = 0;
		pfd[n] = (struct pollfd){ .fd = p->wake_fd, .events = POLLIN };
		polled[n++] = NULL;
		if (p->fetch) {
			wait = MIN(wait, watch(&pfd[n], p->fetch, now));
			polled[n++] = NULL;
		}
		for (uint32_t i = 0; i < PUSH_INFLIGHT_MAX; i++) {
			if (p->jobs[i].state != JOB_SENDING)
				continue;
			wait = MIN(wait, watch(&pfd[n], p->jobs[i].call, now));
			polled[n++] = &p->jobs[i];
		}
		if (poll(pfd, n, (int)MIN(wait, (uint64_t)INT32_MAX)) < 0 && errno != EINTR) {
			/* ENOMEM and the like: never give up the wakes in flight (their
			 * deadlines still run), but do not spin on the failure either */
			struct timespec pause = { .tv_nsec = POLL_RETRY_NS };
			nanosleep(&pause, NULL);
		}
		if (__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE))
			break;
		if (pfd[0].revents & POLLIN) {
			uint64_t v;
			(void)!read(p->wake_fd, &v, sizeof v);
		}
		now = monotonic_ms();
		/* every call steps each round (its revents, or 0): deadlines are checked there */
		uint32_t k = 1;
		if (p->fetch) {
			if (https_call_step(p->fetch, pfd[k].revents, now)) {
				struct https_call *f = p->fetch;
				p->fetch = NULL;
				fetch_done(p, https_call_result(f));
				https_call_free(f);
			}
			k++;
		}
		for (; k < n; k++) {
			struct push_job *j = polled[k];
			if (j->state == JOB_SENDING && https_call_step(j->call, pfd[k].revents, now))
				send_done(p, j);
		}
		take_queued(p, true);
		sweep_limiter(p, now);
	}
	cancel_all(p);
	return NULL;
}

/* ------------------------------------------------------------------ lifecycle */

struct push_sender *push_sender_create(const struct config *cfg, struct config_fcm_credentials *creds,
				       char why[PUSH_WHY_BYTES])
{
	struct push_sender *p = calloc(1, sizeof *p);
	uint64_t seed[3];
	if (p == NULL) {
		snprintf(why, PUSH_WHY_BYTES, "out of memory for the push sender");
		return NULL;
	}
	p->wake_fd = -1;
	p->creds = *creds;
	OPENSSL_cleanse(creds, sizeof *creds);
	creds->pkey = NULL;
	p->timeout_ms = cfg->fcm_timeout_ms;
	p->send_url_text = cfg->fcm_endpoint;
	pthread_mutex_init(&p->lock, NULL);
	char hwhy[HTTPS_WHY_BYTES];
	const char *uwhy;
	if ((uwhy = url_parse_https(cfg->fcm_endpoint, &p->send_url)) != NULL ||
	    (uwhy = url_parse_https(p->creds.token_uri, &p->token_url)) != NULL) {
		/* both were checked at boot: only a programming error gets here */
		snprintf(why, PUSH_WHY_BYTES, "%s", uwhy);
	} else if (getrandom(seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
		snprintf(why, PUSH_WHY_BYTES, "getrandom failed: %s", strerror(errno));
	} else if (!ratelimit_init(&p->limiter, MIN(cfg->max_connections, PUSH_RATE_BUCKETS_MAX), PUSH_RATE_BURST,
				   PUSH_RATE_REFILL_MS, seed[2])) {
		snprintf(why, PUSH_WHY_BYTES, "out of memory for the push rate limiter");
	} else if ((p->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
		snprintf(why, PUSH_WHY_BYTES, "eventfd: %s", strerror(errno));
	} else if ((p->client = https_client_create(cfg->outbound_ca_file, hwhy)) == NULL) {
		snprintf(why, PUSH_WHY_BYTES, "%s", hwhy);
	} else {
		p->id_key[0] = seed[0];
		p->id_key[1] = seed[1];
		return p;
	}
	push_sender_destroy(p);
	return NULL;
}

bool push_sender_start(struct push_sender *p)
{
	ASSERT(!p->started);
	p->started = pthread_create(&p->tid, NULL, sender_thread, p) == 0;
	return p->started;
}

void push_sender_stop(struct push_sender *p)
{
	pthread_mutex_lock(&p->lock);
	p->closed = true;
	pthread_mutex_unlock(&p->lock);
	if (!p->started)
		return;
	__atomic_store_n(&p->stopping, true, __ATOMIC_RELEASE);
	uint64_t one = 1;
	(void)!write(p->wake_fd, &one, sizeof one);
	pthread_join(p->tid, NULL);
	p->started = false;
}

void push_sender_destroy(struct push_sender *p)
{
	if (p == NULL)
		return;
	push_sender_stop(p);
	for (uint32_t i = 0; i < p->queue_len; i++)
		req_free(p->queue[(p->queue_head + i) % PUSH_INFLIGHT_MAX]);
	https_client_destroy(p->client);
	ratelimit_destroy(&p->limiter);
	if (p->wake_fd >= 0)
		close(p->wake_fd);
	pthread_mutex_destroy(&p->lock);
	config_fcm_credentials_free(&p->creds);
	OPENSSL_cleanse(p, sizeof *p);
	free(p);
}

const uint64_t *push_sender_counts(const struct push_sender *p)
{
	return p->counts;
}
