/*
 * ws_reader.c - incremental server-side RFC 6455 reader.
 *
 * One pass over the input per call: header bytes (stashed in r->hdr while a header is
 * split across inputs), then payload bytes, which go to one of three places:
 *   - control frames: copied into r->ctrl, unmasked there;
 *   - an unfragmented data message whose whole payload is in this input: unmasked in
 *     place and returned as a span into the input (the common case, no copy);
 *   - anything else: copied into asm_buf as it arrives, unmasked there.
 *
 * Every byte is looked at once: UTF-8 of text messages is checked on the bytes just
 * unmasked, so an invalid byte fails the connection in the call that delivered it.
 *
 * Memory: asm_buf is asked to grow only by the bytes actually at hand (NEED_SPACE's
 * `need` is asm_len plus what this input holds of the frame), never by what a header
 * merely announces, so a peer that promises 256 KiB and trickles costs what it sent.
 */
#include "ws/ws_reader.h"

#include <string.h>

#include "ws/utf8.h"

static bool opcode_is_control(uint8_t op)
{
	return (op & 0x8u) != 0;
}

/* A pointer for empty spans that is never NULL, so callers may memcpy from it. */
static const uint8_t *empty_ptr(const struct ws_reader *r)
{
	return r->ctrl;
}

static void finish(struct ws_reader *r)
{
	r->dead = true;
	r->in_message = false;
	r->in_frame = false;
	r->asm_len = 0;
}

static struct ws_event fail(struct ws_reader *r, int close_code)
{
	ASSERT(close_code == WS_CLOSE_PROTOCOL_ERROR || close_code == WS_CLOSE_INVALID_DATA ||
	       close_code == WS_CLOSE_TOO_BIG);
	finish(r);
	return (struct ws_event){ .kind = WS_EV_ERROR, .close_code = (uint16_t)close_code };
}

void ws_reader_init(struct ws_reader *r, uint32_t max_message_bytes)
{
	ASSERT(r != NULL);
	memset(r, 0, sizeof(*r));
	r->max_message_bytes = max_message_bytes;
	r->utf8_state = UTF8_STATE_INIT;
}

bool ws_reader_buffer_in_use(const struct ws_reader *r)
{
	return r->in_message && r->asm_len > 0;
}

bool ws_reader_in_message(const struct ws_reader *r)
{
	return r->in_message;
}

bool ws_reader_at_rest(const struct ws_reader *r)
{
	/* Everything else (frame fields, ctrl_len, utf8_state, msg_opcode) is written
	 * before it is next read: by the next header, or the next message's first frame. */
	return !r->dead && !r->in_frame && !r->in_message && r->hdr_len == 0;
}

/*
 * Read (the rest of) a frame header from p[0..n). Returns like ws_frame_header_parse;
 * *used is how many of the n bytes belong to the header (all of them when the header
 * is still incomplete: they wait in r->hdr).
 */
static int read_header(struct ws_reader *r, const uint8_t *p, size_t n, size_t *used,
		       struct ws_frame_header *h)
{
	int rc;
	ASSERT(n > 0);
	if (r->hdr_len == 0) {
		rc = ws_frame_header_parse(p, n, true, h);
		if (rc > 0) {
			*used = (size_t)rc;
		} else if (rc == 0) {
			ASSERT(n < sizeof(r->hdr));
			memcpy(r->hdr, p, n);
			r->hdr_len = (uint8_t)n;
			*used = n;
		} else {
			*used = 0;
		}
		return rc;
	}

	size_t old = r->hdr_len;
	size_t take = MIN(n, sizeof(r->hdr) - old);
	memcpy(r->hdr + old, p, take);
	rc = ws_frame_header_parse(r->hdr, old + take, true, h);
	if (rc > 0) {
		/* The stash held a strict prefix of the header, the rest came from p. */
		ASSERT((size_t)rc > old && (size_t)rc <= old + take);
		*used = (size_t)rc - old;
		r->hdr_len = 0;
	} else if (rc == 0) {
		ASSERT(old + take < sizeof(r->hdr));
		r->hdr_len = (uint8_t)(old + take);
		*used = take;
	} else {
		*used = take;
	}
	return rc;
}

/*
 * Apply a complete header. Returns 0 to go on, > 0 if a MESSAGE_BEGIN event is due,
 * < 0 as -(close code).
 */
static int start_frame(struct ws_reader *r, const struct ws_frame_header *h)
{
	bool begins = false;
	ASSERT(h->masked);

	if (opcode_is_control(h->opcode)) {
		ASSERT(h->fin && h->payload_len <= WS_CONTROL_PAYLOAD_BYTES_MAX);
		r->ctrl_len = 0;
	} else if (h->opcode == WS_OP_CONTINUATION) {
		if (!r->in_message) /* §5.4: nothing to continue */
			return -WS_CLOSE_PROTOCOL_ERROR;
		ASSERT(r->asm_len <= r->max_message_bytes);
		if (h->payload_len > r->max_message_bytes - r->asm_len)
			return -WS_CLOSE_TOO_BIG;
	} else {
		if (r->in_message) /* §5.4: fragments of two messages never interleave */
			return -WS_CLOSE_PROTOCOL_ERROR;
		if (h->payload_len > r->max_message_bytes)
			return -WS_CLOSE_TOO_BIG;
		r->in_message = true;
		r->msg_opcode = h->opcode;
		r->utf8_state = UTF8_STATE_INIT;
		r->asm_len = 0;
		begins = true;
	}

	r->in_frame = true;
	r->frame_opcode = h->opcode;
	r->frame_fin = h->fin;
	r->frame_payload_left = (uint32_t)h->payload_len;
	r->frame_payload_done = 0;
	memcpy(r->mask_key, h->mask_key, sizeof(r->mask_key));
	return begins ? 1 : 0;
}

static struct ws_event control_done(struct ws_reader *r)
{
	struct ws_event ev = { .kind = WS_EV_NEED_MORE };
	struct span payload = span_make(r->ctrl, r->ctrl_len);

	r->in_frame = false;
	switch (r->frame_opcode) {
	case WS_OP_PING:
		ev.kind = WS_EV_PING;
		ev.data = payload;
		break;
	case WS_OP_PONG:
		ev.kind = WS_EV_PONG;
		ev.data = payload;
		break;
	case WS_OP_CLOSE: {
		uint16_t code;
		const uint8_t *reason;
		size_t reason_len;
		int rc = ws_close_payload_parse(payload.ptr, payload.len, &code, &reason,
						&reason_len);
		if (rc != 0)
			return fail(r, rc);
		finish(r);
		ev.kind = WS_EV_CLOSE;
		ev.close_code = code;
		ev.data = span_make(reason_len ? reason : empty_ptr(r), reason_len);
		break;
	}
	default:
		ASSERT(!"unknown control opcode");
	}
	return ev;
}

/* The last payload byte of a data frame has been consumed. */
static bool data_frame_done(struct ws_reader *r, struct ws_event *ev)
{
	r->in_frame = false;
	if (!r->frame_fin)
		return false;
	if (r->msg_opcode == WS_OP_TEXT && !utf8_is_complete(r->utf8_state)) {
		*ev = fail(r, WS_CLOSE_INVALID_DATA);
		return true;
	}
	ev->kind = WS_EV_MESSAGE;
	ev->opcode = r->msg_opcode;
	ev->data = span_make(r->asm_len ? r->asm_buf : empty_ptr(r), r->asm_len);
	r->in_message = false;
	r->asm_len = 0; /* the bytes stay in asm_buf until the next call */
	return true;
}

struct ws_event ws_reader_next(struct ws_reader *r, uint8_t *in, size_t n, size_t *consumed)
{
	struct ws_event ev = { .kind = WS_EV_NEED_MORE };
	size_t pos = 0;
	size_t payload_bytes = 0, utf8_bytes = 0;

	ASSERT(r != NULL && consumed != NULL);
	ASSERT(in != NULL || n == 0);
	ASSERT(r->asm_len <= r->asm_cap && (r->asm_buf != NULL || r->asm_cap == 0));
	ASSERT(r->asm_len <= r->max_message_bytes);

	if (r->dead) {
		*consumed = n;
		return ev;
	}

	for (;;) {
		if (!r->in_frame) {
			struct ws_frame_header h;
			size_t used;
			if (pos == n)
				break;
			int rc = read_header(r, in + pos, n - pos, &used, &h);
			pos += used;
			if (rc == 0) {
				ASSERT(pos == n);
				break;
			}
			if (rc < 0) {
				ev = fail(r, -rc);
				break;
			}
			rc = start_frame(r, &h);
			if (rc < 0) {
				ev = fail(r, -rc);
				break;
			}
			if (rc > 0) {
				ev.kind = WS_EV_MESSAGE_BEGIN;
				ev.opcode = r->msg_opcode;
				break;
			}
			continue;
		}

		size_t avail = n - pos;
		uint32_t left = r->frame_payload_left;

		if (opcode_is_control(r->frame_opcode)) {
			uint32_t k = (uint32_t)MIN((size_t)left, avail);
			ASSERT(r->ctrl_len + k <= sizeof(r->ctrl));
			if (k) {
				memcpy(r->ctrl + r->ctrl_len, in + pos, k);
				ws_mask(r->ctrl + r->ctrl_len, k, r->mask_key, r->frame_payload_done);
			}
			r->ctrl_len = (uint8_t)(r->ctrl_len + k);
			r->frame_payload_left -= k;
			r->frame_payload_done += k;
			pos += k;
			if (r->frame_payload_left > 0)
				break;
			ev = control_done(r);
			break;
		}

		bool text = r->msg_opcode == WS_OP_TEXT;
		if (r->frame_payload_done == 0 && r->frame_fin &&
		    r->frame_opcode != WS_OP_CONTINUATION && avail >= left) {
			/* Unfragmented, and all of it is here: hand out the input itself. */
			ASSERT(r->asm_len == 0);
			uint8_t *p = left ? in + pos : r->ctrl;
			bool ascii = ws_unmask_ascii(p, p, left, r->mask_key, 0);
			payload_bytes += left;
			utf8_bytes += text && !ascii ? left : 0;
			pos += left;
			r->frame_payload_left = 0;
			r->frame_payload_done = left;
			r->in_frame = false;
			if (text && !ascii && !utf8_valid(p, left)) {
				ev = fail(r, WS_CLOSE_INVALID_DATA);
				break;
			}
			r->in_message = false;
			ev.kind = WS_EV_MESSAGE;
			ev.opcode = r->msg_opcode;
			ev.data = span_make(p, left);
			break;
		}

		uint32_t k = (uint32_t)MIN((size_t)left, avail);
		if (left > 0 && k == 0)
			break; /* payload still in flight */
		if (k > r->asm_cap - r->asm_len) {
			ev.kind = WS_EV_NEED_SPACE;
			ev.need = (size_t)r->asm_len + k;
			break;
		}
		if (k) {
			uint8_t *dst = r->asm_buf + r->asm_len;
			/* copy, unmask and the ASCII test in one pass over the payload */
			bool ascii = ws_unmask_ascii(dst, in + pos, k, r->mask_key, r->frame_payload_done);
			payload_bytes += k;
			pos += k;
			r->asm_len += k;
			r->frame_payload_left -= k;
			r->frame_payload_done += k;
			/* ASCII after a complete code point leaves the UTF-8 state as it is */
			bool feed = !ascii || r->utf8_state != UTF8_STATE_INIT;
			utf8_bytes += text && feed ? k : 0;
			if (text && feed && !utf8_feed(&r->utf8_state, dst, k)) {
				ev = fail(r, WS_CLOSE_INVALID_DATA);
				break;
			}
		}
		if (r->frame_payload_left > 0)
			break;
		if (data_frame_done(r, &ev))
			break;
	}

	ASSERT(pos <= n);
	*consumed = pos;
	ev.payload_bytes = payload_bytes;
	ev.utf8_bytes = utf8_bytes;
	return ev;
}
