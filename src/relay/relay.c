/*
 * relay.c - registry shard: claims, phones, grace, conflict probes, and the hooks
 * that hand messages to routing.
 *
 * Reading order: admission, claim/register (on_open), messages (on_message), endings
 * (on_end), timers, shutdown, the hook table. Storage (the server-id table, conn_id
 * templates) is in slots.c, routing (what a message becomes) in route.c. Every decision follows the reference section named next
 * to it.
 */
#include "relay/shard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "core/log.h"
#include "envelope/envelope.h"
#include "engine/session_record.h"
#include "ws/ws_frame.h"

/* ------------------------------------------------------------------ admission */

static enum relay_endpoint endpoint_of(enum http_route route)
{
	return route == HTTP_ROUTE_SERVER ? RELAY_EP_SERVER : RELAY_EP_CLIENT;
}

static void count_reject(struct relay_shard *s, enum relay_endpoint ep, enum relay_outcome o, enum relay_fail_kind k)
{
	STAT_INC(s->stats.upgrade_attempts[ep][o]);
	STAT_INC(s->stats.register_failures[k]);
}

/* §1.7 step 7: the per-IP rate limit (429). The connection cap (step 8) is the
 * engine's. */
static int on_admit(void *app, struct conn_ref c, enum http_route route, const struct http_request *req,
		    uint64_t *client_key)
{
	struct relay_shard *s = app;
	char ip[INET6_ADDRSTRLEN + 8];
	size_t iplen = conn_remote_ip(s->w, c, ip, sizeof ip);
	struct span key = span_make(ip, iplen);
	struct span xff;
	if (s->cfg->trust_x_forwarded_for && http_header_get(req, "X-Forwarded-For", &xff)) {
		struct span left;
		if (ratelimit_key_from_xff(xff, &left))
			key = left;
	}
	if (relay_shared_allow(s->shared, key, worker_now_ms(s->w))) {
		/* --max-connections-per-ip counts the client under the same key */
		*client_key = worker_client_key(s->w, key);
		return -1;
	}
	char quoted[RATE_LIMIT_KEY_QUOTED_BYTES];
	int n = snprintf(quoted, sizeof quoted, "\"%.*s\"", (int)MIN(key.len, (size_t)RATE_LIMIT_KEY_LOGGED_MAX),
			 (const char *)key.ptr);
	LOG_WARN("rate_limited", KV_BYTES("remote", quoted, (size_t)MIN(n, (int)sizeof quoted - 1)));
	count_reject(s, endpoint_of(route), RELAY_OUT_REJECT_RATE_LIMIT, RELAY_FAIL_RATELIMIT);
	return HTTP_CANNED_EMPTY_429;
}

static void on_rejected_headers(void *app, enum http_route route)
{
	struct relay_shard *s = app;
	STAT_INC(s->stats.upgrade_attempts[endpoint_of(route)][RELAY_OUT_REJECT_HEADERS]);
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

static void detach(struct relay_conn *rc)
{
	rc->slot = NULL;
	rc->role = RELAY_ROLE_NONE;
}

static void evict_phones(struct relay_shard *s, struct relay_slot *sl, uint16_t code, const char *reason)
{
	/* Closing reports each phone's end later, from the loop; detach them now so the
	 * slot belongs to its new state at once (§4.2: removed from the registry, closed
	 * outside the lock). */
	for (uint8_t i = 0; i < sl->nphones; i++) {
		struct conn_ref p = slot_phone(s, sl, i);
		struct relay_conn *prc = rc_of(s, p);
		detach(prc);
		STAT_DEC(s->stats.phones);
		if (prc->flags & RELAY_F_PAUSED) {
			prc->flags &= (uint8_t)~RELAY_F_PAUSED;
			conn_resume_recv(s->w, p);
		}
		conn_ws_close(s->w, p, code, reason);
	}
	sl->nphones = 0;
	sl->phones_paused = false;
}

static void log_claimed(struct relay_shard *s, struct conn_ref c, struct relay_slot *sl, struct span version)
{
	char ip[INET6_ADDRSTRLEN];
	conn_remote_ip(s->w, c, ip, sizeof ip);
	LOG_INFO("server_claimed", KV_SPAN("server_id", slot_id(sl)), KV_SPAN("binary_version", version),
		 KV_STR("remote", ip));
}

/* The slot now belongs to c: the replace-and-evict routine shared by reclaim and
 * takeover (§4.2). */
static void install_binary(struct relay_shard *s, struct relay_slot *sl, struct conn_ref c)
{
	if (sl->gracing) {
		worker_cancel_timer(s->w, &sl->grace);
		sl->gracing = false;
	}
	evict_phones(s, sl, RELAY_CLOSE_NO_SERVER, "binary reclaimed server-id");
	sl->binary = c.idx;
	sl->epoch++;
	struct relay_conn *rc = rc_of(s, c);
	rc->slot = sl;
	rc->role = RELAY_ROLE_BINARY;
	STAT_INC(s->stats.binaries);
	conn_heartbeat_start(s->w, c);
}

/* c waits for the probe of sl's incumbent (§2.2); its version is kept for the
 * server_claimed line a takeover logs (on no memory, that line's version is empty). */
static void claimant_set(struct relay_shard *s, struct relay_slot *sl, struct conn_ref c, struct span version)
{
	ASSERT(sl->claimant == RELAY_NO_CONN && sl->claimant_version == NULL);
	sl->claimant = c.idx;
	rc_of(s, c)->role = RELAY_ROLE_CLAIMANT;
	size_t n = MIN(version.len, (size_t)LOG_VALUE_BYTES_MAX + 1);
	sl->claimant_version = n ? malloc(n) : NULL;
	if (sl->claimant_version != NULL) {
		memcpy(sl->claimant_version, version.ptr, n);
		sl->claimant_version_len = (uint32_t)n;
	}
	worker_schedule(s->w, &sl->probe, worker_now_ms(s->w) + s->cfg->conflict_probe_timeout_ms);
}

/* The probe is over (takeover, live incumbent, or the claimant left). */
static void claimant_clear(struct relay_shard *s, struct relay_slot *sl)
{
	sl->claimant = RELAY_NO_CONN;
	worker_cancel_timer(s->w, &sl->probe);
	free(sl->claimant_version);
	sl->claimant_version = NULL;
	sl->claimant_version_len = 0;
}

static void open_binary(struct relay_shard *s, struct conn_ref c, const struct upgraded *u)
{
	struct relay_conn *rc = rc_of(s, c);
	struct span id = upgraded_server_id(u);
	if (!random_hex(rc->hex)) {
		conn_abort(s->w, c); /* reference: an RNG failure drops the request */
		return;
	}
	struct relay_slot *sl = slot_find(s, id);
	if (sl == NULL)
		sl = slot_create(s, id);
	if (sl == NULL) {
		conn_ws_close(s->w, c, WS_CLOSE_INTERNAL_ERROR, "");
		return;
	}
	rc->slot = sl;
	if (sl->binary == RELAY_NO_CONN) {
		/* Free, or gracing: a reclaim evicts the phones (§4.2). */
		install_binary(s, sl, c);
		STAT_INC(s->stats.upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_ACCEPT]);
		log_claimed(s, c, sl, upgraded_version(u));
		return;
	}
	/* Held: probe the incumbent (§2.2). One probe at a time per server-id; a claimant
	 * arriving while one runs is refused like a live-incumbent conflict. */
	if (sl->claimant != RELAY_NO_CONN ||
	    !conn_ws_ping(s->w, ref_at(s, sl->binary), RELAY_PROBE_PAYLOAD, sizeof RELAY_PROBE_PAYLOAD - 1)) {
		char ip[INET6_ADDRSTRLEN];
		conn_remote_ip(s->w, c, ip, sizeof ip);
		rc->slot = NULL;
		count_reject(s, RELAY_EP_SERVER, RELAY_OUT_REJECT_409, RELAY_FAIL_SERVER_IN_USE);
		LOG_INFO("server_id_conflict", KV_SPAN("server_id", id), KV_STR("remote", ip));
		conn_ws_close(s->w, c, RELAY_CLOSE_ID_CONFLICT, "server-id already claimed");
		return;
	}
	claimant_set(s, sl, c, upgraded_version(u));
}

static void takeover(struct relay_shard *s, struct relay_slot *sl)
{
	ASSERT(sl->claimant != RELAY_NO_CONN);
	struct conn_ref c = ref_at(s, sl->claimant);
	uint8_t *version = sl->claimant_version;
	uint32_t version_len = sl->claimant_version_len;
	sl->claimant_version = NULL; /* ours until logged */
	claimant_clear(s, sl);
	if (sl->binary != RELAY_NO_CONN) {
		struct conn_ref old = ref_at(s, sl->binary);
		detach(rc_of(s, old));
		sl->binary = RELAY_NO_CONN;
		STAT_DEC(s->stats.binaries);
		conn_ws_close(s->w, old, WS_CLOSE_INTERNAL_ERROR, "heartbeat timeout");
	}
	install_binary(s, sl, c);
	STAT_INC(s->stats.upgrade_attempts[RELAY_EP_SERVER][RELAY_OUT_ACCEPT]);
	char ip[INET6_ADDRSTRLEN];
	conn_remote_ip(s->w, c, ip, sizeof ip);
	LOG_INFO("server_id_takeover", KV_SPAN("server_id", slot_id(sl)), KV_STR("remote", ip));
	/* §2.2 step 5: the claimant's own version, as on an uncontested claim */
	log_claimed(s, c, sl, span_make(version, version ? version_len : 0));
	free(version);
}

static void register_phone(struct relay_shard *s, struct conn_ref c, struct relay_slot *sl);

static void open_phone(struct relay_shard *s, struct conn_ref c, const struct upgraded *u)
{
	struct relay_conn *rc = rc_of(s, c);
	struct span id = upgraded_server_id(u);
	char ip[INET6_ADDRSTRLEN];
	conn_remote_ip(s->w, c, ip, sizeof ip);

	struct relay_slot *sl = slot_find(s, id);
	if (sl == NULL || (sl->binary == RELAY_NO_CONN && !sl->gracing)) {
		count_reject(s, RELAY_EP_CLIENT, RELAY_OUT_REJECT_404, RELAY_FAIL_NO_SERVER);
		LOG_INFO("phone_register_no_server", KV_SPAN("server_id", id), KV_STR("remote", ip));
		conn_ws_close(s->w, c, RELAY_CLOSE_NO_SERVER, "no server with that id");
		return;
	}
	if (sl->nphones >= RELAY_PHONES_PER_SERVER_MAX) {
		count_reject(s, RELAY_EP_CLIENT, RELAY_OUT_REJECT_429, RELAY_FAIL_PHONES_AT_CAP);
		LOG_INFO("phone_register_at_cap", KV_SPAN("server_id", id), KV_STR("remote", ip));
		conn_ws_close(s->w, c, RELAY_CLOSE_PHONES_AT_CAP, "too many phones for server-id");
		return;
	}
	if (!random_hex(rc->hex)) {
		conn_abort(s->w, c);
		return;
	}
	register_phone(s, c, sl);
	STAT_INC(s->stats.upgrade_attempts[RELAY_EP_CLIENT][RELAY_OUT_ACCEPT]);
	LOG_INFO("phone_registered", KV_SPAN("server_id", id), KV_SPAN("conn_id", phone_conn_id(rc)),
		 KV_SPAN("device_name", upgraded_device(u)), KV_STR("remote", ip));
}

/* c, whose rc->hex is set, joins sl's phones (which have room). */
static void register_phone(struct relay_shard *s, struct conn_ref c, struct relay_slot *sl)
{
	struct relay_conn *rc = rc_of(s, c);
	/* conn_id = client-<id>-<hex8>: the slot holds all but the hex (phone_conn_id). */
	rc->slot = sl;
	rc->role = RELAY_ROLE_PHONE;
	rc->epoch = sl->epoch;
	rc->phone_index = sl->nphones;
	sl->phones[sl->nphones++] = c.idx;
	STAT_INC(s->stats.phones);
	if (sl->phones_paused) {
		rc->flags |= RELAY_F_PAUSED;
		conn_pause_recv(s->w, c);
	}
	conn_heartbeat_start(s->w, c);
}

static void on_open(void *app, struct conn_ref c, const struct upgraded *u)
{
	struct relay_shard *s = app;
	enum relay_endpoint ep = endpoint_of((enum http_route)u->route);
	*rc_of(s, c) = (struct relay_conn){ .gen = c.gen, .endpoint = (uint8_t)ep };
	if (ep == RELAY_EP_SERVER)
		open_binary(s, c, u);
	else
		open_phone(s, c, u);
}

/* ------------------------------------------------------------------ live sessions (ADR 0018) */

/* Predecessor: may c move to our successor? A binary that holds its server-id (no
 * probe running) moves with all its phones, or not at all; a phone only with its
 * binary (one in grace has none: the phone is drained). The successor's registry
 * starts empty, so its binaries claim without conflict and its phones register again
 * under their own conn_ids: envelopes the binary addresses to them still route. */
static bool on_export(void *app, struct conn_ref c, unsigned pass, uint8_t *route, char conn_hex[8],
		      struct span *server_id)
{
	struct relay_shard *s = app;
	struct relay_conn *rc = rc_of(s, c);
	struct relay_slot *sl = rc->slot;
	if (sl == NULL || slot_id(sl).len > SESSION_RECORD_TEXT_BYTES_MAX)
		return false;
	if (pass == 0) {
		if (rc->role != RELAY_ROLE_BINARY || !is_conn(sl->binary, c) || sl->claimant != RELAY_NO_CONN)
			return false;
		for (uint8_t i = 0; i < sl->nphones; i++)
			if (!conn_export_ready(s->w, slot_phone(s, sl, i)))
				return false;
		rc->flags |= RELAY_F_MOVING;
		*route = SESSION_ROUTE_BINARY;
	} else {
		if (rc->role != RELAY_ROLE_PHONE || sl->binary == RELAY_NO_CONN || rc->epoch != sl->epoch ||
		    !(s->rc[sl->binary].flags & RELAY_F_MOVING))
			return false;
		*route = SESSION_ROUTE_PHONE;
	}
	memcpy(conn_hex, rc->hex, RELAY_CONN_HEX_LEN);
	*server_id = slot_id(sl);
	return true;
}

/* Successor: a live session of our predecessor, under its own conn_id. */
static void on_resume(void *app, struct conn_ref c, const struct upgraded *u)
{
	struct relay_shard *s = app;
	enum relay_endpoint ep = endpoint_of((enum http_route)u->route);
	struct relay_conn *rc = rc_of(s, c);
	*rc = (struct relay_conn){ .gen = c.gen, .endpoint = (uint8_t)ep };
	memcpy(rc->hex, u->conn_hex, RELAY_CONN_HEX_LEN);
	struct span id = upgraded_server_id(u);
	struct relay_slot *sl = slot_find(s, id);
	char ip[INET6_ADDRSTRLEN];
	conn_remote_ip(s->w, c, ip, sizeof ip);
	if (ep == RELAY_EP_SERVER) {
		if (sl == NULL)
			sl = slot_create(s, id);
		/* a binary of that server-id connected to us meanwhile: this one reconnects */
		if (sl == NULL || sl->binary != RELAY_NO_CONN || sl->claimant != RELAY_NO_CONN) {
			if (sl != NULL)
				slot_maybe_free(s, sl);
			conn_ws_close(s->w, c, WS_CLOSE_GOING_AWAY, "shutting down");
			return;
		}
		install_binary(s, sl, c);
		char bid[BINARY_CONN_ID_BYTES_MAX];
		LOG_INFO("session_resumed", KV_SPAN("server_id", id),
			 KV_SPAN("binary_conn_id", binary_conn_id(rc, bid, sizeof bid)), KV_STR("remote", ip));
		return;
	}
	/* its binary came first (migrate_resume); without it the phone reconnects */
	if (sl == NULL || sl->binary == RELAY_NO_CONN || sl->nphones >= RELAY_PHONES_PER_SERVER_MAX) {
		conn_ws_close(s->w, c, WS_CLOSE_GOING_AWAY, "shutting down");
		return;
	}
	register_phone(s, c, sl);
	LOG_INFO("session_resumed", KV_SPAN("server_id", id), KV_SPAN("conn_id", phone_conn_id(rc)),
		 KV_STR("remote", ip));
}

/* ------------------------------------------------------------------ routing (route.c) */

static void on_message(void *app, struct conn_ref c, uint8_t opcode, struct span data)
{
	struct relay_shard *s = app;
	uint8_t role = rc_of(s, c)->role;
	if (role == RELAY_ROLE_PHONE)
		route_phone_message(s, c, data);
	else if (role == RELAY_ROLE_BINARY)
		route_binary_message(s, c, data);
	/* a claimant's frames before its claim resolves are dropped, like the reference
	 * which does not read them until the probe ends */
}

static void on_pong(void *app, struct conn_ref c, struct span payload)
{
	struct relay_shard *s = app;
	struct relay_conn *rc = rc_of(s, c);
	struct relay_slot *sl = rc->slot;
	if (rc->role != RELAY_ROLE_BINARY || sl == NULL || sl->claimant == RELAY_NO_CONN || !is_conn(sl->binary, c) ||
	    !span_eq_cstr(payload, RELAY_PROBE_PAYLOAD))
		return;
	/* The incumbent is alive: the claimant loses (§2.2). */
	struct conn_ref claimant = ref_at(s, sl->claimant);
	claimant_clear(s, sl);
	detach(rc_of(s, claimant));
	char ip[INET6_ADDRSTRLEN];
	conn_remote_ip(s->w, claimant, ip, sizeof ip);
	count_reject(s, RELAY_EP_SERVER, RELAY_OUT_REJECT_409, RELAY_FAIL_SERVER_IN_USE);
	LOG_INFO("server_id_conflict", KV_SPAN("server_id", slot_id(sl)), KV_STR("remote", ip));
	conn_ws_close(s->w, claimant, RELAY_CLOSE_ID_CONFLICT, "server-id already claimed");
}

/* §5.7: a write to a phone that fails (here: the head of its outbox was not written
 * within 10 s, §5.4) closes it 1011 "phone write failed"; that close frame goes out
 * after what is already queued if the phone takes it within the close handshake's
 * 5 s. Any other connection is cut, as the reference's WebSocket library cuts a
 * connection whose write timed out (a binary then gets its grace period). */
static void on_write_timeout(void *app, struct conn_ref c)
{
	struct relay_shard *s = app;
	struct relay_conn *rc = rc_of(s, c);
	if (rc->role != RELAY_ROLE_PHONE) {
		conn_abort(s->w, c);
		return;
	}
	LOG_INFO("binary_forwarder_phone_send_failed", KV_SPAN("server_id", slot_id(rc->slot)),
		 KV_SPAN("conn_id", phone_conn_id(rc)), KV_STR("err", conn_end_cause_text(CONN_END_WRITE_TIMEOUT)));
	conn_ws_close(s->w, c, WS_CLOSE_INTERNAL_ERROR, "phone write failed");
}

static void on_items_written(void *app, struct conn_ref c, uint32_t n)
{
	struct relay_shard *s = app;
	struct relay_conn *rc = rc_of(s, c);
	/* By endpoint, not role: a directive's frame is written after the phone's end
	 * cleared its role, and still counts (§8.2: "incl. a frame carried by a close
	 * directive"). Only frames routed to phones are counted items on /v1/client. */
	if (rc->endpoint == RELAY_EP_CLIENT) {
		STAT_ADD(s->stats.frames_binary_to_phone, n);
	} else if (rc->role == RELAY_ROLE_BINARY && rc->slot && rc->slot->phones_paused &&
		   conn_queued_bytes(s->w, c) < RELAY_BINARY_OUTBOX_LOW_WATER_BYTES) {
		route_pause_phones(s, rc->slot, false);
	}
}

/* ------------------------------------------------------------------ endings */

/* §4.6: tell the binary that held the slot when this phone registered. */
static void send_close_notice(struct relay_shard *s, struct relay_conn *rc, uint16_t code)
{
	struct relay_slot *sl = rc->slot;
	uint8_t notice[ENVELOPE_CLOSE_NOTICE_LEN_MAX(CLOSE_NOTICE_STACK_CONN_ID_MAX)];
	uint8_t *buf = notice;
	uint32_t cap = 0;
	struct bufpool *pool = worker_pool(s->w);
	size_t need = ENVELOPE_CLOSE_NOTICE_LEN_MAX((size_t)slot_cid_len(sl));
	if (need > sizeof notice)
		buf = need <= BUFPOOL_CLASS_MAX_BYTES ? bufpool_get(pool, need, &cap) : NULL;
	size_t n = buf ? envelope_write_close_notice(buf, buf == notice ? sizeof notice : cap, phone_conn_id(rc), code) : 0;
	struct iovec part = { .iov_base = buf, .iov_len = n };
	if (sl->binary == RELAY_NO_CONN || n == 0 ||
	    !conn_ws_send_text(s->w, ref_at(s, sl->binary), &part, 1, RELAY_TO_BINARY)) {
		LOG_INFO("phone_close_notice_send_failed", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("conn_id", phone_conn_id(rc)), KV_UINT("close_code", code),
			 KV_STR("err", "binary connection closed"));
	}
	if (buf != notice && buf != NULL)
		bufpool_put(pool, buf, cap);
}

static void phone_end(struct relay_shard *s, struct conn_ref c, uint16_t peer_close_code, enum conn_end_cause why)
{
	struct relay_conn *rc = rc_of(s, c);
	struct relay_slot *sl = rc->slot;
	bool moved = why == CONN_END_MOVED; /* open in our successor: nothing ended for anyone */
	/* §3.2 step 1: the phone's reading ended, unless the forwarder ended it itself
	 * (invalid JSON, no binary to send to) and logged that instead. */
	/* §5.7: the directive's frame never reached the phone (it did not take what was
	 * queued before the connection ended): the writer's failure line. */
	if (!moved && (rc->flags & RELAY_F_DIRECTIVE_FRAME) && conn_queued_items(s->w, c) > 0)
		LOG_INFO("binary_forwarder_close_frame_send_failed", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("conn_id", phone_conn_id(rc)), KV_UINT("close_code", rc->directive_code),
			 KV_STR("err", "connection ended before the frame was written"));
	if (!moved && !(rc->flags & RELAY_F_FORWARDER_ENDED))
		LOG_INFO("phone_forwarder_read_end", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("conn_id", phone_conn_id(rc)), KV_STR("err", conn_end_cause_text(why)));
	/* Unless the binary itself asked for this close; the notice carries the phone's
	 * own close status, or 1001 when it sent none. */
	if (!moved && !(rc->flags & RELAY_F_CLOSED_BY_BINARY) && sl->epoch == rc->epoch)
		send_close_notice(s, rc, peer_close_code ? peer_close_code : WS_CLOSE_GOING_AWAY);
	/* unregister: swap with the last (§4.3) */
	uint8_t i = rc->phone_index;
	ASSERT(i < sl->nphones && sl->phones[i] == c.idx);
	sl->phones[i] = sl->phones[--sl->nphones];
	if (i < sl->nphones)
		s->rc[sl->phones[i]].phone_index = i;
	STAT_DEC(s->stats.phones);
	if (!moved)
		LOG_INFO("phone_unregistered", KV_SPAN("server_id", slot_id(sl)), KV_SPAN("conn_id", phone_conn_id(rc)));
	detach(rc);
	slot_maybe_free(s, sl);
}

static void binary_end(struct relay_shard *s, struct conn_ref c, enum conn_end_cause why)
{
	struct relay_conn *rc = rc_of(s, c);
	struct relay_slot *sl = rc->slot;
	char bid[BINARY_CONN_ID_BYTES_MAX];
	if (why == CONN_END_MOVED) {
		/* open in our successor with its phones: no grace, no release, no line */
		ASSERT(is_conn(sl->binary, c) && sl->claimant == RELAY_NO_CONN);
		detach(rc);
		sl->binary = RELAY_NO_CONN;
		STAT_DEC(s->stats.binaries);
		slot_maybe_free(s, sl);
		return;
	}
	/* §3.3 step 1, before the release (§2.2 step 8) */
	LOG_INFO("binary_forwarder_read_end", KV_SPAN("server_id", slot_id(sl)),
		 KV_SPAN("binary_conn_id", binary_conn_id(rc, bid, sizeof bid)), KV_STR("err", conn_end_cause_text(why)));
	detach(rc);
	if (!is_conn(sl->binary, c)) {
		slot_maybe_free(s, sl);
		return;
	}
	sl->binary = RELAY_NO_CONN;
	STAT_DEC(s->stats.binaries);
	if (sl->claimant != RELAY_NO_CONN) {
		/* The probed incumbent died: that is the probe's answer (§2.2). */
		takeover(s, sl);
		return;
	}
	/* §4.4: only the holder arms the grace timer; its phones may read again so a
	 * phone that sends during grace is dropped rather than stalled. */
	route_pause_phones(s, sl, false);
	sl->gracing = true;
	worker_schedule(s->w, &sl->grace, worker_now_ms(s->w) + s->cfg->grace_period_ms);
	LOG_INFO("server_released", KV_SPAN("server_id", slot_id(sl)));
}

static void on_end(void *app, struct conn_ref c, uint16_t peer_close_code, enum conn_end_cause why)
{
	struct relay_shard *s = app;
	struct relay_conn *rc = rc_of(s, c);
	ASSERT(rc->gen == c.gen);
	switch (rc->role) {
	case RELAY_ROLE_PHONE:
		phone_end(s, c, peer_close_code, why);
		break;
	case RELAY_ROLE_BINARY:
		binary_end(s, c, why);
		break;
	case RELAY_ROLE_CLAIMANT: {
		struct relay_slot *sl = rc->slot;
		claimant_clear(s, sl);
		detach(rc);
		slot_maybe_free(s, sl);
		break;
	}
	default:
		break;
	}
}

/* ------------------------------------------------------------------ timers */

static void grace_expired(struct relay_shard *s, struct relay_slot *sl)
{
	if (!sl->gracing)
		return; /* stale: a reclaim cancelled it (a cancelled node never fires) */
	sl->gracing = false;
	evict_phones(s, sl, WS_CLOSE_NORMAL, "");
	STAT_INC(s->stats.grace_expiries);
	slot_maybe_free(s, sl);
}

static void on_timer(void *app, struct tw_node *n)
{
	struct relay_shard *s = app;
	switch (n->kind) {
	case TW_KIND_GRACE:
		grace_expired(s, CONTAINER_OF(n, struct relay_slot, grace));
		break;
	case TW_KIND_PROBE: {
		struct relay_slot *sl = CONTAINER_OF(n, struct relay_slot, probe);
		if (sl->claimant != RELAY_NO_CONN)
			takeover(s, sl); /* no pong within the probe timeout */
		break;
	}
	case TW_KIND_SWEEP:
		relay_shared_sweep(s->shared, s->id, worker_now_ms(s->w));
		worker_schedule(s->w, n, worker_now_ms(s->w) + RATELIMIT_SWEEP_INTERVAL_MS);
		break;
	default:
		ASSERT(!"unknown relay timer");
	}
}

/* ------------------------------------------------------------------ shutdown, counts */

static void on_shutdown(void *app)
{
	struct relay_shard *s = app;
	/* §7.6: the engine closes every connection 1001 next; no timer of ours may fire
	 * during the drain. */
	worker_cancel_timer(s->w, &s->sweep);
	for (uint32_t b = 0; b < s->nbuckets; b++) {
		for (struct relay_slot *sl = s->buckets[b]; sl; sl = sl->hnext) {
			worker_cancel_timer(s->w, &sl->grace);
			worker_cancel_timer(s->w, &sl->probe);
		}
	}
}

static void on_healthz(void *app, struct healthz *h)
{
	struct relay_shard *s = app;
	/* every worker's shard: the relay's totals, whichever worker answers */
	relay_shared_counts(s->shared, &h->connected_binaries, &h->connected_phones);
}

const struct engine_hooks relay_hooks = {
	.create = shard_create,
	.destroy = shard_destroy,
	.admit = on_admit,
	.rejected_headers = on_rejected_headers,
	.open = on_open,
	.message = on_message,
	.pong = on_pong,
	.write_timeout = on_write_timeout,
	.items_written = on_items_written,
	.end = on_end,
	.timer = on_timer,
	.shutdown = on_shutdown,
	.healthz = on_healthz,
	.export = on_export,
	.resume = on_resume,
};
