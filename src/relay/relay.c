/*
 * relay.c - registry shard: claims, phones, grace, conflict probes, routing.
 *
 * Reading order: slots and the hash table, admission, claim/register (relay_open),
 * routing (relay_message), endings (relay_end), timers, shutdown. Every decision
 * follows the reference section named next to it.
 */
#include "relay/relay.h"

#include <openssl/siphash.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "core/log.h"
#include "engine/worker.h"
#include "envelope/envelope.h"
#include "envelope/json.h"
#include "relay/ratelimit.h"
#include "ws/ws_frame.h"

enum relay_timer_kind {
	TW_KIND_GRACE = TW_KIND_RELAY,
	TW_KIND_PROBE,
	TW_KIND_SWEEP,
};

struct relay_slot {
	struct relay_slot *hnext;
	uint64_t hash;
	struct conn *binary;   /* live holder; NULL while gracing or unclaimed */
	struct conn *claimant; /* binary waiting for the probe of `binary` */
	struct tw_node grace;  /* armed while the released binary's grace runs */
	struct tw_node probe;  /* armed while a conflict probe waits for a pong */
	uint32_t epoch;        /* bumped at every claim: identity of "the binary" */
	bool gracing;
	bool phones_paused;
	uint8_t nphones;
	uint32_t phones[RELAY_PHONES_PER_SERVER_MAX]; /* [0, nphones): conn pool indexes */
	uint32_t id_len;
	uint32_t wrap_len;
	/* The phones' conn_id, client-<id>-<hex8> (the server-id is inside it), then its
	 * wrap prefix {"conn_id":"<escaped conn_id>","frame": ; built once per server-id,
	 * so a phone holds only its 8 hex digits (the conn_id's last 8 bytes, never
	 * escaped, so also the 8 bytes before the prefix's tail). */
	uint8_t bytes[];
};

#define PHONE_CID_PREFIX "client-"
#define PHONE_CID_PREFIX_LEN (sizeof PHONE_CID_PREFIX - 1)
#define WRAP_TAIL_LEN (sizeof ENVELOPE_WRAP_PREFIX_TAIL - 1)

struct relay_shard {
	struct worker *w;
	struct relay_slot **buckets;
	uint32_t nbuckets; /* power of two */
	uint32_t nslots;
	uint64_t hash_key[2];
	struct ratelimit rl;
	struct tw_node sweep;
	struct relay_stats stats;
};

const struct relay_stats *relay_stats_of(const struct relay_shard *s)
{
	return &s->stats;
}

#define RELAY_BUCKETS_INITIAL 1024u

/* ------------------------------------------------------------------ slots */

static uint64_t id_hash(const struct relay_shard *s, struct span id)
{
	/* Keyed: server-ids are attacker-chosen, so chains must not be forceable. */
	return SIPHASH_24(s->hash_key, id.ptr, id.len);
}

static struct relay_slot *slot_find(struct relay_shard *s, struct span id)
{
	uint64_t h = id_hash(s, id);
	for (struct relay_slot *sl = s->buckets[h & (s->nbuckets - 1)]; sl; sl = sl->hnext) {
		if (sl->hash == h && sl->id_len == id.len && memcmp(sl->bytes + PHONE_CID_PREFIX_LEN, id.ptr, id.len) == 0)
			return sl;
	}
	return NULL;
}

static void table_grow(struct relay_shard *s)
{
	uint32_t n = s->nbuckets * 2;
	struct relay_slot **nb = calloc(n, sizeof *nb);
	if (nb == NULL)
		return; /* keep the longer chains: correct, only slower */
	for (uint32_t i = 0; i < s->nbuckets; i++) {
		struct relay_slot *sl = s->buckets[i];
		while (sl) {
			struct relay_slot *next = sl->hnext;
			sl->hnext = nb[sl->hash & (n - 1)];
			nb[sl->hash & (n - 1)] = sl;
			sl = next;
		}
	}
	free(s->buckets);
	s->buckets = nb;
	s->nbuckets = n;
}

#define SLOT_BUILD_STACK_BYTES 1024u

static size_t cid_len_for(size_t id_len)
{
	return PHONE_CID_PREFIX_LEN + id_len + 1 + RELAY_CONN_HEX_LEN;
}

static uint32_t slot_cid_len(const struct relay_slot *sl)
{
	return (uint32_t)cid_len_for(sl->id_len);
}

static uint8_t *slot_wrap(struct relay_slot *sl)
{
	return sl->bytes + slot_cid_len(sl);
}

/* Where the phone's hex digits go in the wrap prefix. */
static uint32_t slot_wrap_hex_off(const struct relay_slot *sl)
{
	return sl->wrap_len - (uint32_t)WRAP_TAIL_LEN - RELAY_CONN_HEX_LEN;
}

static struct relay_slot *slot_create(struct relay_shard *s, struct span id)
{
	/* The phones' conn_id with placeholder hex, and its wrap prefix (escaping makes
	 * its length known only once written: build, then copy into the slot). */
	size_t cid_len = cid_len_for(id.len);
	size_t wrap_max = ENVELOPE_WRAP_PREFIX_LEN_MAX(cid_len);
	uint8_t stack[SLOT_BUILD_STACK_BYTES];
	uint8_t *tmp = cid_len + wrap_max <= sizeof stack ? stack : malloc(cid_len + wrap_max);
	if (tmp == NULL)
		return NULL;
	memcpy(tmp, PHONE_CID_PREFIX, PHONE_CID_PREFIX_LEN);
	memcpy(tmp + PHONE_CID_PREFIX_LEN, id.ptr, id.len);
	tmp[PHONE_CID_PREFIX_LEN + id.len] = '-';
	memset(tmp + PHONE_CID_PREFIX_LEN + id.len + 1, '0', RELAY_CONN_HEX_LEN);
	size_t wrap_len = envelope_write_wrap_prefix(tmp + cid_len, wrap_max, span_make(tmp, cid_len));
	ASSERT(wrap_len > WRAP_TAIL_LEN + RELAY_CONN_HEX_LEN);
	struct relay_slot *sl = calloc(1, sizeof *sl + cid_len + wrap_len);
	if (sl == NULL) {
		if (tmp != stack)
			free(tmp);
		return NULL;
	}
	sl->hash = id_hash(s, id);
	sl->id_len = (uint32_t)id.len;
	sl->wrap_len = (uint32_t)wrap_len;
	memcpy(sl->bytes, tmp, cid_len + wrap_len);
	ASSERT(memcmp(slot_wrap(sl) + slot_wrap_hex_off(sl), "00000000", RELAY_CONN_HEX_LEN) == 0);
	if (tmp != stack)
		free(tmp);
	sl->grace.kind = TW_KIND_GRACE;
	sl->probe.kind = TW_KIND_PROBE;
	if (s->nslots >= s->nbuckets)
		table_grow(s);
	uint32_t b = (uint32_t)(sl->hash & (s->nbuckets - 1));
	sl->hnext = s->buckets[b];
	s->buckets[b] = sl;
	s->nslots++;
	return sl;
}

static void slot_maybe_free(struct relay_shard *s, struct relay_slot *sl)
{
	if (sl->binary || sl->claimant || sl->gracing || sl->nphones || tw_node_scheduled(&sl->grace) ||
	    tw_node_scheduled(&sl->probe))
		return;
	struct relay_slot **pp = &s->buckets[sl->hash & (s->nbuckets - 1)];
	while (*pp != sl)
		pp = &(*pp)->hnext;
	*pp = sl->hnext;
	s->nslots--;
	free(sl);
}

static struct conn *slot_phone(struct worker *w, const struct relay_slot *sl, uint8_t i)
{
	ASSERT(i < sl->nphones);
	return &w->conns[sl->phones[i]];
}

static struct span slot_id(const struct relay_slot *sl)
{
	return span_make(sl->bytes + PHONE_CID_PREFIX_LEN, sl->id_len);
}

/* The phone's conn_id, written into its slot's conn_id template: valid until the next
 * phone_conn_id of a phone of the same server-id (single-threaded shard; every caller
 * uses it at once). */
static struct span phone_conn_id(const struct conn *c)
{
	struct relay_slot *sl = c->relay.slot;
	uint32_t n = slot_cid_len(sl);
	memcpy(sl->bytes + n - RELAY_CONN_HEX_LEN, c->relay.hex, RELAY_CONN_HEX_LEN);
	return span_make(sl->bytes, n);
}

static struct span binary_conn_id(const struct conn *c, char *buf, size_t cap)
{
	struct span id = slot_id(c->relay.slot);
	int n = snprintf(buf, cap, "server-%.*s-%.8s", (int)MIN(id.len, (size_t)200), (const char *)id.ptr,
			 c->relay.hex);
	return span_make(buf, (size_t)MIN((size_t)n, cap - 1));
}

/* ------------------------------------------------------------------ set-up */

struct relay_shard *relay_shard_create(struct worker *w)
{
	struct relay_shard *s = calloc_aligned(sizeof *s); /* stats: own cache lines */
	if (s == NULL)
		return NULL;
	s->w = w;
	s->nbuckets = RELAY_BUCKETS_INITIAL;
	s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
	uint64_t seed[3];
	if (s->buckets == NULL || getrandom(seed, sizeof seed, 0) != sizeof seed ||
	    !ratelimit_init(&s->rl, RELAY_RATELIMIT_BUCKETS_MAX, w->cfg->rate_limit_burst,
			    w->cfg->rate_limit_refill_ms, seed[2])) {
		free(s->buckets);
		free(s);
		return NULL;
	}
	s->hash_key[0] = seed[0];
	s->hash_key[1] = seed[1];
	s->sweep.kind = TW_KIND_SWEEP;
	worker_schedule(w, &s->sweep, w->now_ms + RATELIMIT_SWEEP_INTERVAL_MS);
	return s;
}

void relay_shard_destroy(struct relay_shard *s)
{
	for (uint32_t i = 0; i < s->nbuckets; i++) {
		struct relay_slot *sl = s->buckets[i];
		while (sl) {
			struct relay_slot *next = sl->hnext;
			free(sl);
			sl = next;
		}
	}
	ratelimit_destroy(&s->rl);
	free(s->buckets);
	free(s);
}

/* ------------------------------------------------------------------ admission */

static enum relay_endpoint endpoint_of(enum http_route route)
{
	return route == HTTP_ROUTE_SERVER ? RELAY_EP_SERVER : RELAY_EP_CLIENT;
}

static void count_reject(struct relay_shard *s, enum http_route route, enum relay_outcome o,
			 enum relay_fail_kind k)
{
	STAT_INC(s->stats.upgrade_attempts[endpoint_of(route)][o]);
	STAT_INC(s->stats.register_failures[k]);
}

/* §1.7 steps 7-8: per-IP rate limit (429), then the global connection cap (503). */
int relay_admit(struct worker *w, struct conn *c, enum http_route route, const struct http_request *req)
{
	struct relay_shard *s = w->relay;
	char ip[INET6_ADDRSTRLEN + 8];
	size_t iplen = conn_remote_ip(c, ip, sizeof ip);
	struct span key = span_make(ip, iplen);
	struct span xff;
	if (w->cfg->trust_x_forwarded_for && http_header_get(req, "X-Forwarded-For", &xff)) {
		struct span left;
		if (ratelimit_key_from_xff(xff, &left))
			key = left;
	}
	if (!ratelimit_allow(&s->rl, key, w->now_ms)) {
		char quoted[160];
		int n = snprintf(quoted, sizeof quoted, "\"%.*s\"", (int)MIN(key.len, (size_t)140),
				 (const char *)key.ptr);
		LOG_WARN("rate_limited", KV_BYTES("remote", quoted, (size_t)MIN(n, (int)sizeof quoted - 1)));
		count_reject(s, route, RELAY_OUT_REJECT_RATE_LIMIT, RELAY_FAIL_RATELIMIT);
		return HTTP_CANNED_EMPTY_429;
	}
	if (c->counted)
		return -1; /* keep-alive: this connection already holds its slot */
	if (w->ws_counted >= w->cfg->max_connections) {
		LOG_WARN("conn_cap_reached", KV_STR("path", route == HTTP_ROUTE_SERVER ? "/v1/server" : "/v1/client"),
			 KV_STR("remote", ip));
		return HTTP_CANNED_EMPTY_503;
	}
	c->counted = true;
	w->ws_counted++;
	return -1;
}

void relay_rejected_headers(struct worker *w, struct conn *c, enum http_route route)
{
	STAT_INC(w->relay->stats.upgrade_attempts[endpoint_of(route)][RELAY_OUT_REJECT_HEADERS]);
}

/* ------------------------------------------------------------------ claim / register */

static bool random_hex(char out[RELAY_CONN_HEX_LEN])
{
	static const char hex[] = "0123456789abcdef";
	uint8_t b[RELAY_CONN_HEX_LEN / 2];
	if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b)
		return false;
	for (size_t i = 0; i < sizeof b; i++) {
		out[2 * i] = hex[b[i] >> 4];
		out[2 * i + 1] = hex[b[i] & 15];
	}
	return true;
}

static void evict_phones(struct worker *w, struct relay_slot *sl, uint16_t code, const char *reason)
{
	/* Closing reports each phone's end later, from the loop; detach them now so the
	 * slot belongs to its new state at once (§4.2: removed from the registry, closed
	 * outside the lock). */
	for (uint8_t i = 0; i < sl->nphones; i++) {
		struct conn *p = slot_phone(w, sl, i);
		p->relay.slot = NULL;
		p->relay.role = RELAY_ROLE_NONE;
		STAT_DEC(w->relay->stats.phones);
		if (p->relay.flags & RELAY_F_PAUSED) {
			p->relay.flags &= (uint8_t)~RELAY_F_PAUSED;
			conn_resume_recv(w, p);
		}
		conn_ws_close(w, p, code, reason);
	}
	sl->nphones = 0;
	sl->phones_paused = false;
}

static void log_claimed(struct worker *w, struct conn *c, struct span version)
{
	char ip[INET6_ADDRSTRLEN];
	conn_remote_ip(c, ip, sizeof ip);
	LOG_INFO("server_claimed", KV_SPAN("server_id", slot_id(c->relay.slot)), KV_SPAN("binary_version", version),
		 KV_STR("remote", ip));
}

/* The slot now belongs to c: the replace-and-evict routine shared by reclaim and
 * takeover (§4.2). */
static void install_binary(struct worker *w, struct relay_slot *sl, struct conn *c)
{
	struct relay_shard *s = w->relay;
	if (sl->gracing) {
		worker_cancel_timer(w, &sl->grace);
		sl->gracing = false;
	}
	evict_phones(w, sl, 4404, "binary reclaimed server-id");
	sl->binary = c;
	sl->epoch++;
	c->relay.slot = sl;
	c->relay.role = RELAY_ROLE_BINARY;
	STAT_INC(s->stats.binaries);
	STAT_INC(s->stats.upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_ACCEPT]);
	conn_heartbeat_start(w, c);
}

static void open_binary(struct worker *w, struct conn *c, const struct http_request *req)
{
	struct relay_shard *s = w->relay;
	struct span id, version;
	http_header_get(req, "X-Pyrycode-Server", &id);
	http_header_get(req, "X-Pyrycode-Version", &version);
	if (!random_hex(c->relay.hex)) {
		conn_abort(w, c); /* reference: an RNG failure drops the request */
		return;
	}
	struct relay_slot *sl = slot_find(s, id);
	if (sl == NULL)
		sl = slot_create(s, id);
	if (sl == NULL) {
		conn_ws_close(w, c, WS_CLOSE_INTERNAL_ERROR, "");
		return;
	}
	c->relay.slot = sl;
	if (sl->binary == NULL) {
		/* Free, or gracing: a reclaim evicts the phones (§4.2). */
		install_binary(w, sl, c);
		log_claimed(w, c, version);
		return;
	}
	char ip[INET6_ADDRSTRLEN];
	conn_remote_ip(c, ip, sizeof ip);
	/* Held: probe the incumbent (§2.2). One probe at a time per server-id; a claimant
	 * arriving while one runs is refused like a live-incumbent conflict. */
	if (sl->claimant != NULL ||
	    !conn_ws_ping(w, sl->binary, RELAY_PROBE_PAYLOAD, sizeof RELAY_PROBE_PAYLOAD - 1)) {
		c->relay.slot = NULL;
		count_reject(s, HTTP_ROUTE_SERVER, RELAY_OUT_REJECT_409, RELAY_FAIL_SERVER_IN_USE);
		LOG_INFO("server_id_conflict", KV_SPAN("server_id", id), KV_STR("remote", ip));
		conn_ws_close(w, c, 4409, "server-id already claimed");
		return;
	}
	sl->claimant = c;
	c->relay.role = RELAY_ROLE_CLAIMANT;
	worker_schedule(w, &sl->probe, w->now_ms + w->cfg->conflict_probe_timeout_ms);
}

static void takeover(struct worker *w, struct relay_slot *sl)
{
	struct conn *c = sl->claimant, *old = sl->binary;
	ASSERT(c != NULL);
	sl->claimant = NULL;
	worker_cancel_timer(w, &sl->probe);
	if (old) {
		old->relay.role = RELAY_ROLE_NONE;
		old->relay.slot = NULL;
		sl->binary = NULL;
		STAT_DEC(w->relay->stats.binaries);
		conn_ws_close(w, old, WS_CLOSE_INTERNAL_ERROR, "heartbeat timeout");
	}
	install_binary(w, sl, c);
	char ip[INET6_ADDRSTRLEN];
	conn_remote_ip(c, ip, sizeof ip);
	LOG_INFO("server_id_takeover", KV_SPAN("server_id", slot_id(sl)), KV_STR("remote", ip));
	LOG_INFO("server_claimed", KV_SPAN("server_id", slot_id(sl)), KV_STR("binary_version", ""),
		 KV_STR("remote", ip));
}

static void open_phone(struct worker *w, struct conn *c, const struct http_request *req)
{
	struct relay_shard *s = w->relay;
	struct span id, device = span_make("", 0);
	http_header_get(req, "X-Pyrycode-Server", &id);
	http_header_get(req, "X-Pyrycode-Device-Name", &device);
	char ip[INET6_ADDRSTRLEN];
	conn_remote_ip(c, ip, sizeof ip);

	struct relay_slot *sl = slot_find(s, id);
	if (sl == NULL || (sl->binary == NULL && !sl->gracing)) {
		count_reject(s, HTTP_ROUTE_CLIENT, RELAY_OUT_REJECT_404, RELAY_FAIL_NO_SERVER);
		LOG_INFO("phone_register_no_server", KV_SPAN("server_id", id), KV_STR("remote", ip));
		conn_ws_close(w, c, 4404, "no server with that id");
		return;
	}
	if (sl->nphones >= RELAY_PHONES_PER_SERVER_MAX) {
		count_reject(s, HTTP_ROUTE_CLIENT, RELAY_OUT_REJECT_429, RELAY_FAIL_PHONES_AT_CAP);
		LOG_INFO("phone_register_at_cap", KV_SPAN("server_id", id), KV_STR("remote", ip));
		conn_ws_close(w, c, 4429, "too many phones for server-id");
		return;
	}
	if (!random_hex(c->relay.hex)) {
		conn_abort(w, c);
		return;
	}
	/* conn_id = client-<id>-<hex8>: the slot holds all but the hex (phone_conn_id). */
	c->relay.slot = sl;
	c->relay.role = RELAY_ROLE_PHONE;
	c->relay.epoch = sl->epoch;
	c->relay.phone_index = sl->nphones;
	sl->phones[sl->nphones++] = c->idx;
	STAT_INC(s->stats.phones);
	STAT_INC(s->stats.upgrade_attempts[RELAY_EP_CLIENT][RELAY_OUT_ACCEPT]);
	if (sl->phones_paused) {
		c->relay.flags |= RELAY_F_PAUSED;
		conn_pause_recv(w, c);
	}
	LOG_INFO("phone_registered", KV_SPAN("server_id", id), KV_SPAN("conn_id", phone_conn_id(c)),
		 KV_SPAN("device_name", device), KV_STR("remote", ip));
	conn_heartbeat_start(w, c);
}

void relay_open(struct worker *w, struct conn *c, enum http_route route, const struct http_request *req)
{
	if (route == HTTP_ROUTE_SERVER)
		open_binary(w, c, req);
	else
		open_phone(w, c, req);
}

/* ------------------------------------------------------------------ routing */

static void pause_phones(struct worker *w, struct relay_slot *sl, bool pause)
{
	if (sl->phones_paused == pause)
		return;
	sl->phones_paused = pause;
	if (pause)
		STAT_INC(w->relay->stats.phone_pauses);
	for (uint8_t i = 0; i < sl->nphones; i++) {
		struct conn *p = slot_phone(w, sl, i);
		if (pause) {
			p->relay.flags |= RELAY_F_PAUSED;
			conn_pause_recv(w, p);
		} else {
			p->relay.flags &= (uint8_t)~RELAY_F_PAUSED;
			conn_resume_recv(w, p);
		}
	}
}

/* §3.2: validate, wrap, send to the binary. Back-pressure replaces the reference's
 * drop-after-10 s: above the binary's high-water mark the phones stop being read. */
static void phone_message(struct worker *w, struct conn *c, struct span data)
{
	struct relay_shard *s = w->relay;
	struct relay_slot *sl = c->relay.slot;
	if (!json_valid(data)) {
		STAT_INC(s->stats.dropped[RELAY_DROP_PHONE_INVALID_JSON]);
		LOG_WARN("phone_forwarder_marshal_err", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("conn_id", phone_conn_id(c)), KV_STR("err", "phone frame is not valid JSON"));
		conn_ws_close(w, c, WS_CLOSE_NORMAL, "");
		return;
	}
	struct conn *b = sl->binary;
	if (b == NULL) {
		STAT_INC(s->stats.dropped[RELAY_DROP_NO_BINARY]);
		LOG_INFO("phone_forwarder_send_failed", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("conn_id", phone_conn_id(c)), KV_STR("err", "binary connection closed"));
		conn_ws_close(w, c, WS_CLOSE_NORMAL, "");
		return;
	}
	uint8_t *wrap = slot_wrap(sl);
	uint32_t hex_off = slot_wrap_hex_off(sl);
	uint32_t tail = hex_off + RELAY_CONN_HEX_LEN;
	struct iovec parts[5] = {
		{ .iov_base = wrap, .iov_len = hex_off },
		{ .iov_base = c->relay.hex, .iov_len = RELAY_CONN_HEX_LEN },
		{ .iov_base = wrap + tail, .iov_len = sl->wrap_len - tail },
		{ .iov_base = (void *)data.ptr, .iov_len = data.len },
		{ .iov_base = (void *)ENVELOPE_WRAP_SUFFIX, .iov_len = ENVELOPE_WRAP_SUFFIX_LEN },
	};
	if (!conn_ws_send_text(w, b, parts, ARRAY_LEN(parts), true)) {
		STAT_INC(s->stats.dropped[RELAY_DROP_BINARY_OUTBOX]);
		LOG_INFO("phone_forwarder_send_failed", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("conn_id", phone_conn_id(c)), KV_STR("err", "binary outbox refused the frame"));
		conn_ws_close(w, c, WS_CLOSE_NORMAL, "");
		return;
	}
	STAT_INC(s->stats.frames_phone_to_binary);
	if (b->out.bytes > RELAY_BINARY_OUTBOX_HIGH_WATER_BYTES)
		pause_phones(w, sl, true);
}

static struct conn *find_phone(struct worker *w, struct relay_slot *sl, const struct json_str *id)
{
	/* Linear over <= 16 phones of this server-id only (§3.3 step 4, §4.3). */
	for (uint8_t i = 0; i < sl->nphones; i++) {
		struct conn *p = slot_phone(w, sl, i);
		if (envelope_conn_id_eq(id->raw, id->has_escapes, phone_conn_id(p)))
			return p;
	}
	return NULL;
}

static uint64_t phone_charge(const struct conn *p)
{
	return p->out.bytes + (uint64_t)p->items_pending * RELAY_OUTBOX_ITEM_OVERHEAD_BYTES;
}

static void binary_message(struct worker *w, struct conn *c, struct span data)
{
	struct relay_shard *s = w->relay;
	struct relay_slot *sl = c->relay.slot;
	char bid[256];
	struct envelope env;
	switch (envelope_scan(data, &env)) {
	case ENVELOPE_MALFORMED:
	case ENVELOPE_MISSING_CONN_ID:
	case ENVELOPE_MISSING_FRAME:
		STAT_INC(s->stats.dropped[RELAY_DROP_MALFORMED_ENVELOPE]);
		LOG_WARN("binary_forwarder_unmarshal_err", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("binary_conn_id", binary_conn_id(c, bid, sizeof bid)), KV_STR("err", env.err));
		return;
	case ENVELOPE_PUSH_WAKE:
		/* Push wake needs FCM credentials; this build has no outbound sender, which is
		 * the reference's "push off" state: every wake is refused (§7.2 step 1). */
		STAT_INC(s->stats.dropped[RELAY_DROP_PUSH_WAKE]);
		LOG_WARN("binary_forwarder_push_wake_dropped", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("binary_conn_id", binary_conn_id(c, bid, sizeof bid)), KV_STR("err", "push is off"));
		return;
	case ENVELOPE_DIRECTIVE:
	case ENVELOPE_ROUTED:
		break;
	}
	struct conn *p = find_phone(w, sl, &env.conn_id);
	if (p == NULL) {
		STAT_INC(s->stats.dropped[RELAY_DROP_UNKNOWN_CONN_ID]);
		LOG_WARN("binary_forwarder_unknown_conn_id", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("conn_id", env.conn_id.raw));
		return;
	}
	bool directive = env.kind == ENVELOPE_DIRECTIVE;
	if (p->state != CONN_WS_OPEN) {
		STAT_INC(s->stats.dropped[RELAY_DROP_PHONE_CLOSED]);
		LOG_INFO("binary_forwarder_phone_enqueue_failed", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("conn_id", phone_conn_id(p)), KV_STR("err", "phone outbox closed"));
		return;
	}
	uint16_t code = env.close_code;
	if (directive) {
		p->relay.flags |= RELAY_F_CLOSED_BY_BINARY;
		/* An illegal wire code would make the phone's library fail the close: 1011. */
		if (!ws_close_code_is_sendable(code))
			code = WS_CLOSE_INTERNAL_ERROR;
	}
	if (env.has_frame) {
		/* §5.7: budget len + 64 per item, 4 MiB per phone; the item being written
		 * stays charged until its write completes. */
		/* The buffer pool refusing the bytes is the same overflow, one level up. */
		bool over = phone_charge(p) + env.frame.len + RELAY_OUTBOX_ITEM_OVERHEAD_BYTES >
			    RELAY_PHONE_OUTBOX_BUDGET_BYTES;
		struct iovec part = { .iov_base = (void *)env.frame.ptr, .iov_len = env.frame.len };
		if (over || !conn_ws_send_text(w, p, &part, 1, true)) {
			STAT_INC(s->stats.dropped[RELAY_DROP_PHONE_BACKLOG]);
			LOG_INFO("binary_forwarder_phone_enqueue_failed", KV_SPAN("server_id", slot_id(sl)),
				 KV_SPAN("conn_id", phone_conn_id(p)), KV_STR("err", "phone delivery backlog full"));
			conn_ws_close(w, p, directive ? code : WS_CLOSE_INTERNAL_ERROR, "phone backlog full");
			return;
		}
	}
	if (directive) {
		/* Queued after the frame: FIFO makes it take effect after every earlier frame. */
		conn_ws_close(w, p, code, "");
		LOG_INFO("binary_forwarder_phone_closed", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("conn_id", phone_conn_id(p)), KV_UINT("close_code", code));
	}
}

void relay_message(struct worker *w, struct conn *c, uint8_t opcode, struct span data)
{
	if (c->relay.role == RELAY_ROLE_PHONE)
		phone_message(w, c, data);
	else if (c->relay.role == RELAY_ROLE_BINARY)
		binary_message(w, c, data);
	/* a claimant's frames before its claim resolves are dropped, like the reference
	 * which does not read them until the probe ends */
}

void relay_pong(struct worker *w, struct conn *c, struct span payload)
{
	struct relay_slot *sl = c->relay.slot;
	if (c->relay.role != RELAY_ROLE_BINARY || sl == NULL || sl->claimant == NULL || sl->binary != c ||
	    !span_eq_cstr(payload, RELAY_PROBE_PAYLOAD))
		return;
	/* The incumbent is alive: the claimant loses (§2.2). */
	struct conn *claimant = sl->claimant;
	sl->claimant = NULL;
	worker_cancel_timer(w, &sl->probe);
	claimant->relay.role = RELAY_ROLE_NONE;
	claimant->relay.slot = NULL;
	char ip[INET6_ADDRSTRLEN];
	conn_remote_ip(claimant, ip, sizeof ip);
	count_reject(w->relay, HTTP_ROUTE_SERVER, RELAY_OUT_REJECT_409, RELAY_FAIL_SERVER_IN_USE);
	LOG_INFO("server_id_conflict", KV_SPAN("server_id", slot_id(sl)), KV_STR("remote", ip));
	conn_ws_close(w, claimant, 4409, "server-id already claimed");
}

void relay_items_written(struct worker *w, struct conn *c, uint32_t n)
{
	/* By endpoint, not role: a directive's frame is written after the phone's end
	 * cleared its role, and still counts (§8.2: "incl. a frame carried by a close
	 * directive"). Only frames routed to phones are counted items on /v1/client. */
	if (c->route == HTTP_ROUTE_CLIENT) {
		STAT_ADD(w->relay->stats.frames_binary_to_phone, n);
	} else if (c->relay.role == RELAY_ROLE_BINARY && c->relay.slot && c->relay.slot->phones_paused &&
		   c->out.bytes < RELAY_BINARY_OUTBOX_LOW_WATER_BYTES) {
		pause_phones(w, c->relay.slot, false);
	}
}

/* ------------------------------------------------------------------ endings */

static void phone_end(struct worker *w, struct conn *c)
{
	struct relay_shard *s = w->relay;
	struct relay_slot *sl = c->relay.slot;
	/* §4.6: tell the binary that held the slot when this phone registered, unless the
	 * binary itself asked for this close. */
	if (!(c->relay.flags & RELAY_F_CLOSED_BY_BINARY) && sl->epoch == c->relay.epoch) {
		uint16_t code = c->peer_close_code ? c->peer_close_code : WS_CLOSE_GOING_AWAY;
		uint8_t notice[ENVELOPE_CLOSE_NOTICE_LEN_MAX(64)];
		uint8_t *buf = notice;
		uint32_t cap = 0;
		size_t need = ENVELOPE_CLOSE_NOTICE_LEN_MAX((size_t)slot_cid_len(sl));
		if (need > sizeof notice)
			buf = need <= BUFPOOL_CLASS_MAX_BYTES ? bufpool_get(&w->pool, need, &cap) : NULL;
		size_t n = buf ? envelope_write_close_notice(buf, buf == notice ? sizeof notice : cap, phone_conn_id(c), code) : 0;
		struct iovec part = { .iov_base = buf, .iov_len = n };
		if (sl->binary == NULL || n == 0 || !conn_ws_send_text(w, sl->binary, &part, 1, true)) {
			LOG_INFO("phone_close_notice_send_failed", KV_SPAN("server_id", slot_id(sl)),
				 KV_SPAN("conn_id", phone_conn_id(c)), KV_UINT("close_code", code),
				 KV_STR("err", "binary connection closed"));
		}
		if (buf != notice && buf != NULL)
			bufpool_put(&w->pool, buf, cap);
	}
	/* unregister: swap with the last (§4.3) */
	uint8_t i = c->relay.phone_index;
	ASSERT(i < sl->nphones && sl->phones[i] == c->idx);
	sl->phones[i] = sl->phones[--sl->nphones];
	if (i < sl->nphones)
		slot_phone(w, sl, i)->relay.phone_index = i;
	STAT_DEC(s->stats.phones);
	LOG_INFO("phone_unregistered", KV_SPAN("server_id", slot_id(sl)), KV_SPAN("conn_id", phone_conn_id(c)));
	c->relay.slot = NULL;
	c->relay.role = RELAY_ROLE_NONE;
	slot_maybe_free(s, sl);
}

static void binary_end(struct worker *w, struct conn *c)
{
	struct relay_shard *s = w->relay;
	struct relay_slot *sl = c->relay.slot;
	c->relay.slot = NULL;
	c->relay.role = RELAY_ROLE_NONE;
	if (sl->binary != c) {
		slot_maybe_free(s, sl);
		return;
	}
	sl->binary = NULL;
	STAT_DEC(s->stats.binaries);
	if (sl->claimant != NULL) {
		/* The probed incumbent died: that is the probe's answer (§2.2). */
		takeover(w, sl);
		return;
	}
	/* §4.4: only the holder arms the grace timer; its phones may read again so a
	 * phone that sends during grace is dropped rather than stalled. */
	pause_phones(w, sl, false);
	sl->gracing = true;
	worker_schedule(w, &sl->grace, w->now_ms + w->cfg->grace_period_ms);
	LOG_INFO("server_released", KV_SPAN("server_id", slot_id(sl)));
}

void relay_end(struct worker *w, struct conn *c)
{
	switch (c->relay.role) {
	case RELAY_ROLE_PHONE:
		phone_end(w, c);
		break;
	case RELAY_ROLE_BINARY:
		binary_end(w, c);
		break;
	case RELAY_ROLE_CLAIMANT: {
		struct relay_slot *sl = c->relay.slot;
		sl->claimant = NULL;
		worker_cancel_timer(w, &sl->probe);
		c->relay.slot = NULL;
		c->relay.role = RELAY_ROLE_NONE;
		slot_maybe_free(w->relay, sl);
		break;
	}
	default:
		break;
	}
}

/* ------------------------------------------------------------------ timers */

static void grace_expired(struct worker *w, struct relay_slot *sl)
{
	if (!sl->gracing)
		return; /* stale: a reclaim cancelled it (a cancelled node never fires) */
	sl->gracing = false;
	evict_phones(w, sl, WS_CLOSE_NORMAL, "");
	STAT_INC(w->relay->stats.grace_expiries);
	slot_maybe_free(w->relay, sl);
}

void relay_timer(struct worker *w, struct tw_node *n)
{
	switch (n->kind) {
	case TW_KIND_GRACE:
		grace_expired(w, CONTAINER_OF(n, struct relay_slot, grace));
		break;
	case TW_KIND_PROBE: {
		struct relay_slot *sl = CONTAINER_OF(n, struct relay_slot, probe);
		if (sl->claimant)
			takeover(w, sl); /* no pong within the probe timeout */
		break;
	}
	case TW_KIND_SWEEP:
		ratelimit_sweep(&w->relay->rl, w->now_ms);
		worker_schedule(w, n, w->now_ms + RATELIMIT_SWEEP_INTERVAL_MS);
		break;
	default:
		ASSERT(!"unknown relay timer");
	}
}

/* ------------------------------------------------------------------ shutdown, counts */

void relay_shutdown(struct worker *w)
{
	struct relay_shard *s = w->relay;
	worker_cancel_timer(w, &s->sweep);
	/* §7.6: every registered connection (binaries, phones, claimants) gets 1001. */
	for (uint32_t i = 0; i < w->conn_cap; i++) {
		struct conn *c = &w->conns[i];
		if (c->state == CONN_WS_OPEN)
			conn_ws_close(w, c, WS_CLOSE_GOING_AWAY, "shutting down");
	}
	for (uint32_t b = 0; b < s->nbuckets; b++) {
		for (struct relay_slot *sl = s->buckets[b]; sl; sl = sl->hnext) {
			worker_cancel_timer(w, &sl->grace);
			worker_cancel_timer(w, &sl->probe);
		}
	}
}

void relay_counts(struct worker *w, uint64_t *binaries, uint64_t *phones)
{
	*binaries = STAT_GET(w->relay->stats.binaries);
	*phones = STAT_GET(w->relay->stats.phones);
}
