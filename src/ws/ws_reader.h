/*
 * ws_reader.h - incremental server-side RFC 6455 reader: bytes in, events out.
 *
 * Contract: no I/O, no allocation, no globals. The caller feeds whatever the socket
 * delivered (any split, down to one byte at a time) and gets one event per call.
 * Client frames must be masked; the reader unmasks payloads IN PLACE in the input
 * buffer, which must therefore be writable.
 *
 * Zero copy when possible: an unfragmented data message whose whole payload lies in
 * the current input is returned as a span pointing into the input. Anything else
 * (fragmented messages, payloads that span inputs) is assembled in a caller-owned
 * buffer (asm_buf): when the reader needs room it returns WS_EV_NEED_SPACE with the
 * total size needed; the caller provides a buffer of at least that size holding the
 * first asm_len bytes of the old one, and calls again with the same remaining input.
 * Control-frame payloads (<= 125 bytes) are stashed inside the reader.
 * Between frames the reader can be dropped and restarted (ws_reader_at_rest).
 *
 * Enforced: client masking, RSV bits, opcodes, control frame size and FIN, the
 * continuation rules (no continuation without a started message, no new data frame
 * inside a fragmented message, control frames allowed between fragments), the message
 * size limit across fragments (checked from headers, before payload arrives), UTF-8 of
 * text messages (incrementally, fail fast) and of close reasons, close payload rules.
 */
#ifndef PYRELAY_WS_READER_H
#define PYRELAY_WS_READER_H

#include "core/common.h"
#include "ws/ws_frame.h"

/* Reference maxFrameBytes: 256 KiB per inbound message, across all its fragments. */
#define WS_MESSAGE_BYTES_MAX (256u * 1024u)

enum ws_event_kind {
	WS_EV_NEED_MORE = 0, /* all input consumed, no event: feed more bytes */
	WS_EV_MESSAGE_BEGIN, /* first frame header of a new data message (arm the deadline) */
	WS_EV_MESSAGE,       /* complete data message: opcode TEXT or BINARY, data */
	WS_EV_PING,          /* data = ping payload (answer with a pong carrying it) */
	WS_EV_PONG,          /* data = pong payload */
	WS_EV_CLOSE,         /* peer's close: close_code (0 = no status), data = reason */
	WS_EV_NEED_SPACE,    /* grow asm_buf to at least `need` bytes, call again */
	WS_EV_ERROR,         /* protocol violation: close_code is 1002, 1007 or 1009 */
};

struct ws_event {
	enum ws_event_kind kind;
	uint8_t opcode;      /* WS_EV_MESSAGE: WS_OP_TEXT or WS_OP_BINARY */
	uint16_t close_code; /* WS_EV_CLOSE, WS_EV_ERROR */
	struct span data;    /* valid until the next ws_reader_next call or input reuse */
	size_t need;         /* WS_EV_NEED_SPACE */
	/* Any event: data-frame payload bytes this call unmasked, copied where a message
	 * spans receives, and tested for ASCII in one pass (ws_unmask_ascii); of those, the
	 * text bytes the UTF-8 validator walked too (not all ASCII). For /metrics. */
	size_t payload_bytes;
	size_t utf8_bytes;
};

struct ws_reader {
	/* caller-owned message assembly buffer; the caller may free it whenever
	 * ws_reader_buffer_in_use() is false */
	uint8_t *asm_buf;
	uint32_t asm_cap;
	uint32_t asm_len;

	/* everything below is private to ws_reader.c */
	uint32_t max_message_bytes;
	uint32_t utf8_state;

	/* current frame; 32 bits suffice: a data frame longer than max_message_bytes is
	 * refused at its header, a control frame carries at most 125 bytes */
	uint32_t frame_payload_left;
	uint32_t frame_payload_done; /* also the masking offset */
	uint8_t mask_key[4];
	uint8_t frame_opcode;
	bool frame_fin;
	bool in_frame;       /* header parsed, payload pending */

	/* current data message */
	bool in_message;     /* a data message has started and not finished */
	uint8_t msg_opcode;
	bool dead;           /* after WS_EV_CLOSE or WS_EV_ERROR */

	uint8_t hdr_len;
	uint8_t hdr[WS_FRAME_HEADER_BYTES_MAX];
	uint8_t ctrl_len;
	uint8_t ctrl[WS_CONTROL_PAYLOAD_BYTES_MAX];
};

void ws_reader_init(struct ws_reader *r, uint32_t max_message_bytes);

/*
 * Consume bytes from in[0..n) until one event is ready or the input is exhausted.
 * *consumed is set to the number of bytes used; call again with in + *consumed.
 * Only WS_EV_NEED_MORE means the input is used up: after any other event call again,
 * even with nothing left (a 0-byte message completes without further input).
 * WS_EV_NEED_SPACE's `need` is asm_len plus the part of the current frame present in
 * this input (not what the header announces) and never exceeds max_message_bytes; grow
 * geometrically, capped at max_message_bytes, to keep the copying linear.
 * Event data is never a NULL pointer, even when empty.
 * After WS_EV_CLOSE or WS_EV_ERROR the reader is finished: later calls discard their
 * input (*consumed = n) and return WS_EV_NEED_MORE.
 */
struct ws_event ws_reader_next(struct ws_reader *r, uint8_t *in, size_t n, size_t *consumed);

/* True while asm_buf holds bytes of an unfinished message. */
bool ws_reader_buffer_in_use(const struct ws_reader *r);

/* True between a data message's first header and its completion (deadline armed). */
bool ws_reader_in_message(const struct ws_reader *r);

/*
 * True when the reader sits between frames, with no data message under way and not
 * finished by a close or an error. Such a reader behaves exactly like a fresh one from
 * ws_reader_init with the same limit (and holds nothing in asm_buf), so a caller may
 * drop it and start a fresh one with the next input: an idle connection then needs no
 * reader state at all.
 */
bool ws_reader_at_rest(const struct ws_reader *r);

#endif
