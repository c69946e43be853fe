/*
 * route.c - the registry shard's routing (reference §3): a phone's frame validated,
 * wrapped and queued for its binary (§3.2), a binary's envelope scanned and its frame
 * queued for the phone it names, a directive, a push wake (§3.3, §3.4), and the
 * binary-side back-pressure that pauses a server-id's phones. Both directions copy the
 * payload into the destination's outbox with the JSON check that validates it where
 * they can (issue #17, ADR 19). Split from relay.c, which holds the rest of the shard.
 */
#include "relay/shard.h"

#include <string.h>

#include "core/log.h"
#include "envelope/envelope.h"
#include "envelope/json.h"
#include "ws/ws_frame.h"

void route_pause_phones(struct relay_shard *s, struct relay_slot *sl, bool pause)
{
	if (sl->phones_paused == pause)
		return;
	sl->phones_paused = pause;
	if (pause)
		STAT_INC(s->stats.phone_pauses);
	for (uint8_t i = 0; i < sl->nphones; i++) {
		struct conn_ref p = slot_phone(s, sl, i);
		struct relay_conn *prc = rc_of(s, p);
		if (pause) {
			prc->flags |= RELAY_F_PAUSED;
			conn_pause_recv(s->w, p);
		} else {
			prc->flags &= (uint8_t)~RELAY_F_PAUSED;
			conn_resume_recv(s->w, p);
		}
	}
}

enum wrap_result {
	WRAP_QUEUED,    /* valid, and queued for the binary */
	WRAP_INVALID,   /* not valid JSON: nothing queued */
	WRAP_TWO_PASS,  /* the binary's outbox could not give the space in one piece */
};

/* The wrapped frame for the binary in parts: the slot's prefix around the phone's
 * conn_id hex, the payload (WRAP_PAYLOAD), the suffix. */
#define WRAP_PARTS 5u
#define WRAP_PAYLOAD 3u
static void wrap_parts(struct relay_conn *rc, struct span data, struct iovec parts[WRAP_PARTS])
{
	struct relay_slot *sl = rc->slot;
	uint8_t *wrap = slot_wrap(sl);
	uint32_t hex_off = slot_wrap_hex_off(sl);
	uint32_t tail = hex_off + RELAY_CONN_HEX_LEN;
	parts[0] = (struct iovec){ .iov_base = wrap, .iov_len = hex_off };
	parts[1] = (struct iovec){ .iov_base = rc->hex, .iov_len = RELAY_CONN_HEX_LEN };
	parts[2] = (struct iovec){ .iov_base = wrap + tail, .iov_len = sl->wrap_len - tail };
	parts[WRAP_PAYLOAD] = (struct iovec){ .iov_base = (void *)data.ptr, .iov_len = data.len };
	parts[4] = (struct iovec){ .iov_base = (void *)ENVELOPE_WRAP_SUFFIX, .iov_len = ENVELOPE_WRAP_SUFFIX_LEN };
}
_Static_assert(WRAP_PARTS <= CONN_SEND_PARTS_MAX, "the wrap takes more parts than a frame carries");

/* The wrapped frame written straight into the binary's outbox, the payload validated
 * and copied by one pass (json_valid_copy; issue #17, ADR 19). */
static enum wrap_result wrap_in_place(struct relay_shard *s, struct relay_conn *rc, struct conn_ref b,
				      struct span data)
{
	struct iovec parts[WRAP_PARTS];
	size_t len = 0;
	wrap_parts(rc, data, parts);
	for (size_t i = 0; i < WRAP_PARTS; i++)
		len += parts[i].iov_len;
	struct conn_text_resv resv;
	uint8_t *out = conn_ws_text_reserve(s->w, b, len, &resv);
	if (out == NULL)
		return WRAP_TWO_PASS;
	for (size_t i = 0; i < WRAP_PARTS; i++) {
		if (i != WRAP_PAYLOAD)
			memcpy(out, parts[i].iov_base, parts[i].iov_len);
		else if (!json_valid_copy(data, out)) {
			conn_ws_text_abort(s->w, &resv);
			return WRAP_INVALID;
		}
		out += parts[i].iov_len;
	}
	conn_ws_text_commit(s->w, b, &resv, RELAY_TO_BINARY);
	STAT_ADD(s->stats.copied_in_scan_bytes, data.len);
	return WRAP_QUEUED;
}

/* The same in two passes: json_valid (already done), then the parts copied. */
static bool wrap_two_pass(struct relay_shard *s, struct relay_conn *rc, struct conn_ref b, struct span data)
{
	struct iovec parts[WRAP_PARTS];
	wrap_parts(rc, data, parts);
	if (!conn_ws_send_text(s->w, b, parts, WRAP_PARTS, RELAY_TO_BINARY))
		return false;
	STAT_ADD(s->stats.copied_apart_bytes, data.len);
	return true;
}

/* The phone's forwarder ends (its log line is the caller's): counted as a drop of
 * this kind, and the phone is closed 1000 as the reference's forwarder exit does. */
static void end_phone_forwarder(struct relay_shard *s, struct relay_conn *rc, struct conn_ref c,
				enum relay_drop why)
{
	STAT_INC(s->stats.dropped[why]);
	rc->flags |= RELAY_F_FORWARDER_ENDED;
	conn_ws_close(s->w, c, WS_CLOSE_NORMAL, "");
}

/* §3.2: validate, wrap, send to the binary. Back-pressure replaces the reference's
 * drop-after-10 s: above the binary's high-water mark the phones stop being read. */
void route_phone_message(struct relay_shard *s, struct conn_ref c, struct span data)
{
	struct relay_conn *rc = rc_of(s, c);
	struct relay_slot *sl = rc->slot;
	enum wrap_result wrapped = WRAP_TWO_PASS;
	if (sl->binary != RELAY_NO_CONN)
		wrapped = wrap_in_place(s, rc, ref_at(s, sl->binary), data);
	if (wrapped == WRAP_INVALID || (wrapped == WRAP_TWO_PASS && !json_valid(data))) {
		LOG_WARN("phone_forwarder_marshal_err", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("conn_id", phone_conn_id(rc)), KV_STR("err", "phone frame is not valid JSON"));
		end_phone_forwarder(s, rc, c, RELAY_DROP_PHONE_INVALID_JSON);
		return;
	}
	if (sl->binary == RELAY_NO_CONN) {
		LOG_INFO("phone_forwarder_send_failed", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("conn_id", phone_conn_id(rc)), KV_STR("err", "binary connection closed"));
		end_phone_forwarder(s, rc, c, RELAY_DROP_NO_BINARY);
		return;
	}
	struct conn_ref b = ref_at(s, sl->binary);
	if (wrapped == WRAP_TWO_PASS && !wrap_two_pass(s, rc, b, data)) {
		LOG_INFO("phone_forwarder_send_failed", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("conn_id", phone_conn_id(rc)), KV_STR("err", "binary outbox refused the frame"));
		end_phone_forwarder(s, rc, c, RELAY_DROP_BINARY_OUTBOX);
		return;
	}
	STAT_INC(s->stats.frames_phone_to_binary);
	if (conn_queued_bytes(s->w, b) > RELAY_BINARY_OUTBOX_HIGH_WATER_BYTES)
		route_pause_phones(s, sl, true);
}

static bool find_phone(struct relay_shard *s, struct relay_slot *sl, const struct json_str *id,
		       struct conn_ref *out)
{
	/* Linear over <= 16 phones of this server-id only (§3.3 step 4, §4.3). */
	for (uint8_t i = 0; i < sl->nphones; i++) {
		struct conn_ref p = slot_phone(s, sl, i);
		if (envelope_conn_id_eq(id->raw, id->has_escapes, phone_conn_id(rc_of(s, p)))) {
			*out = p;
			return true;
		}
	}
	return false;
}

static uint64_t phone_charge(struct relay_shard *s, struct conn_ref p)
{
	return conn_queued_bytes(s->w, p) + (uint64_t)conn_queued_items(s->w, p) * RELAY_OUTBOX_ITEM_OVERHEAD_BYTES;
}

/* §3.3 step 3, §7.2: a wake for the sender, or a refusal logged here. Never a reply
 * to the binary, never a wait: the sender's admission only queues. */
static void push_wake(struct relay_shard *s, struct relay_conn *rc, struct span value)
{
	const struct relay_push_port *port = relay_shared_push(s->shared);
	struct push_wake pw;
	const char *err = "push is off";
	if (port != NULL) {
		err = envelope_push_wake_parse(value, &pw);
		if (err == NULL)
			err = port->submit(port->ctx, slot_id(rc->slot), pw.token);
	}
	if (err == NULL)
		return;
	char bid[BINARY_CONN_ID_BYTES_MAX];
	STAT_INC(s->stats.dropped[RELAY_DROP_PUSH_WAKE]);
	LOG_WARN("binary_forwarder_push_wake_dropped", KV_SPAN("server_id", slot_id(rc->slot)),
		 KV_SPAN("binary_conn_id", binary_conn_id(rc, bid, sizeof bid)), KV_STR("err", err));
}

/* A routed frame in the form binaries send (envelope_routed_shape): its phone is known
 * before the frame is scanned, so the frame is validated and copied into the phone's
 * outbox by one pass (issue #17, ADR 19). False: nothing was queued or counted, and the
 * caller scans the message (any other form, an unknown or closing phone, a frame over
 * its budget or not valid JSON there: the scan says which and acts on it). */
static bool forward_in_place(struct relay_shard *s, struct relay_slot *sl, struct span data)
{
	struct json_str id;
	struct span frame;
	struct conn_ref p;
	if (!envelope_routed_shape(data, &id, &frame) || !find_phone(s, sl, &id, &p) || !conn_ws_is_open(s->w, p))
		return false;
	if (phone_charge(s, p) + frame.len + RELAY_OUTBOX_ITEM_OVERHEAD_BYTES > RELAY_PHONE_OUTBOX_BUDGET_BYTES)
		return false;
	struct conn_text_resv resv;
	uint8_t *out = conn_ws_text_reserve(s->w, p, frame.len, &resv);
	if (out == NULL)
		return false;
	if (!json_value_copy(frame, 1, out)) {
		conn_ws_text_abort(s->w, &resv);
		return false;
	}
	conn_ws_text_commit(s->w, p, &resv, CONN_SEND_COUNTED);
	STAT_ADD(s->stats.copied_in_scan_bytes, frame.len);
	return true;
}

void route_binary_message(struct relay_shard *s, struct conn_ref c, struct span data)
{
	struct relay_conn *rc = rc_of(s, c);
	struct relay_slot *sl = rc->slot;
	if (forward_in_place(s, sl, data))
		return;
	char bid[BINARY_CONN_ID_BYTES_MAX];
	struct envelope env;
	switch (envelope_scan(data, &env)) {
	case ENVELOPE_MALFORMED:
	case ENVELOPE_MISSING_CONN_ID:
	case ENVELOPE_MISSING_FRAME:
		STAT_INC(s->stats.dropped[RELAY_DROP_MALFORMED_ENVELOPE]);
		LOG_WARN("binary_forwarder_unmarshal_err", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("binary_conn_id", binary_conn_id(rc, bid, sizeof bid)), KV_STR("err", env.err));
		return;
	case ENVELOPE_PUSH_WAKE:
		push_wake(s, rc, env.push_wake);
		return;
	case ENVELOPE_DIRECTIVE:
	case ENVELOPE_ROUTED:
		break;
	}
	struct conn_ref p;
	if (!find_phone(s, sl, &env.conn_id, &p)) {
		STAT_INC(s->stats.dropped[RELAY_DROP_UNKNOWN_CONN_ID]);
		LOG_WARN("binary_forwarder_unknown_conn_id", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("conn_id", env.conn_id.raw));
		return;
	}
	struct relay_conn *prc = rc_of(s, p);
	bool directive = env.kind == ENVELOPE_DIRECTIVE;
	if (!conn_ws_is_open(s->w, p)) {
		STAT_INC(s->stats.dropped[RELAY_DROP_PHONE_CLOSED]);
		LOG_INFO("binary_forwarder_phone_enqueue_failed", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("conn_id", phone_conn_id(prc)), KV_STR("err", "phone outbox closed"));
		return;
	}
	uint16_t code = env.close_code;
	if (directive) {
		prc->flags |= RELAY_F_CLOSED_BY_BINARY;
		/* An illegal wire code would make the phone's library fail the close: 1011. */
		if (!ws_close_code_is_sendable(code))
			code = WS_CLOSE_INTERNAL_ERROR;
	}
	if (env.has_frame) {
		/* §5.7: budget len + 64 per item, 4 MiB per phone; the item being written
		 * stays charged until its write completes. */
		/* The buffer pool refusing the bytes is the same overflow, one level up. */
		bool over = phone_charge(s, p) + env.frame.len + RELAY_OUTBOX_ITEM_OVERHEAD_BYTES >
			    RELAY_PHONE_OUTBOX_BUDGET_BYTES;
		struct iovec part = { .iov_base = (void *)env.frame.ptr, .iov_len = env.frame.len };
		if (over || !conn_ws_send_text(s->w, p, &part, 1, CONN_SEND_COUNTED)) {
			STAT_INC(s->stats.dropped[RELAY_DROP_PHONE_BACKLOG]);
			LOG_INFO("binary_forwarder_phone_enqueue_failed", KV_SPAN("server_id", slot_id(sl)),
				 KV_SPAN("conn_id", phone_conn_id(prc)), KV_STR("err", "phone delivery backlog full"));
			conn_ws_close(s->w, p, directive ? code : WS_CLOSE_INTERNAL_ERROR, "phone backlog full");
			return;
		}
		STAT_ADD(s->stats.copied_apart_bytes, env.frame.len);
	}
	if (directive) {
		prc->directive_code = code;
		if (env.has_frame)
			prc->flags |= RELAY_F_DIRECTIVE_FRAME;
		/* Queued after the frame: FIFO makes it take effect after every earlier frame. */
		conn_ws_close(s->w, p, code, "");
		LOG_INFO("binary_forwarder_phone_closed", KV_SPAN("server_id", slot_id(sl)),
			 KV_SPAN("conn_id", phone_conn_id(prc)), KV_UINT("close_code", code));
	}
}
