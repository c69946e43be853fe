/*
 * ws_frame.h - RFC 6455 frame headers, masking and close payloads: pure functions.
 *
 * Contract: no I/O, no allocation, no globals. Inputs are untrusted byte spans.
 * Errors are returned as the WebSocket close code the server must send
 * (1002 protocol error, 1007 invalid data, 1009 too big), never by aborting.
 */
#ifndef PYRELAY_WS_FRAME_H
#define PYRELAY_WS_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WS_FRAME_HEADER_BYTES_MAX 14 /* 2 + 8 (64-bit length) + 4 (mask) */
#define WS_CONTROL_PAYLOAD_BYTES_MAX 125
#define WS_CLOSE_REASON_BYTES_MAX (WS_CONTROL_PAYLOAD_BYTES_MAX - 2)

enum ws_opcode {
	WS_OP_CONTINUATION = 0x0,
	WS_OP_TEXT = 0x1,
	WS_OP_BINARY = 0x2,
	WS_OP_CLOSE = 0x8,
	WS_OP_PING = 0x9,
	WS_OP_PONG = 0xA,
};

/* Close codes the relay sends or checks (RFC 6455 §7.4.1 and the reference §2.4). */
enum ws_close_code {
	WS_CLOSE_NORMAL = 1000,
	WS_CLOSE_GOING_AWAY = 1001,
	WS_CLOSE_PROTOCOL_ERROR = 1002,
	WS_CLOSE_NO_STATUS = 1005, /* never on the wire */
	WS_CLOSE_ABNORMAL = 1006,  /* never on the wire */
	WS_CLOSE_INVALID_DATA = 1007,
	WS_CLOSE_TOO_BIG = 1009,
	WS_CLOSE_INTERNAL_ERROR = 1011,
};

struct ws_frame_header {
	bool fin;
	uint8_t opcode;      /* enum ws_opcode */
	bool masked;
	uint8_t mask_key[4]; /* valid when masked */
	uint8_t header_len;  /* bytes the header occupied, 2..14 */
	uint64_t payload_len;
};

/*
 * Parse one frame header from the start of p[0..n).
 * Returns: > 0  the header length (2..14), *out filled;
 *            0  need more bytes (n is shorter than the header);
 *          < 0  -(close code): the header is a protocol violation:
 *               - any RSV bit set (we negotiate no extension)          -> -1002
 *               - reserved opcode (3-7, 0xB-0xF)                       -> -1002
 *               - control frame with FIN clear or payload_len > 125    -> -1002
 *               - require_masked and MASK bit clear (client frames)    -> -1002
 *               - !require_masked and MASK bit set (server frames)     -> -1002
 *               - 64-bit length with the most significant bit set      -> -1002
 *               - length not minimally encoded (126 form for < 126,
 *                 127 form for <= 0xFFFF)                              -> -1002
 * Never reads past p[n-1].
 */
int ws_frame_header_parse(const uint8_t *p, size_t n, bool require_masked,
			  struct ws_frame_header *out);

/*
 * Write a frame header into out (room for WS_FRAME_HEADER_BYTES_MAX bytes) with the
 * minimal length encoding. mask_key NULL means unmasked (server to client).
 * Returns the header length.
 */
size_t ws_frame_header_encode(uint8_t *out, bool fin, uint8_t opcode, uint64_t payload_len,
			      const uint8_t *mask_key);

/*
 * XOR p[0..n) in place with mask_key, where p[0] is payload byte number `offset` of
 * the frame (so a payload can be unmasked in pieces as it arrives).
 */
void ws_mask(uint8_t *p, size_t n, const uint8_t mask_key[4], uint64_t offset);

/*
 * The same XOR from src into dst (dst == src: in place; else the two must not
 * overlap), in one pass that also says whether every byte written is ASCII (< 0x80):
 * the reader then skips the UTF-8 check of ASCII text, the common case for JSON.
 * 32 (AVX2), 16 (SSE2) or 8 bytes a step, as chosen at start-up (core/simd.h).
 */
bool ws_unmask_ascii(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t mask_key[4], uint64_t offset);

/* True if a peer may send this code in a close frame: 1000-1003, 1007-1014, 3000-4999. */
bool ws_close_code_is_valid_received(uint32_t code);

/* True if the relay may put this code on the wire itself: the same set as above. */
bool ws_close_code_is_sendable(uint32_t code);

/*
 * Validate a received close frame payload (already unmasked).
 * Returns 0 and sets *code (0 when the payload is empty: no status given) and
 * *reason / *reason_len; or a close code to fail with:
 *   payload of exactly 1 byte                 -> 1002
 *   status code not valid when received       -> 1002
 *   reason that is not valid UTF-8            -> 1007
 */
int ws_close_payload_parse(const uint8_t *p, size_t n, uint16_t *code,
			   const uint8_t **reason, size_t *reason_len);

/*
 * Build a close frame payload: 2-byte code + reason (truncated to
 * WS_CLOSE_REASON_BYTES_MAX). code 0 means an empty payload. Returns the length.
 */
size_t ws_close_payload_encode(uint8_t *out, uint16_t code, const char *reason, size_t reason_len);

#endif
