/*
 * ws_handshake.h - the server side of the RFC 6455 opening handshake (§4.2).
 *
 * Contract: pure functions. SHA-1 and base64 come from BoringSSL (no hand-written
 * crypto or base64). This is the only ws/ translation unit that includes BoringSSL.
 */
#ifndef PYRELAY_WS_HANDSHAKE_H
#define PYRELAY_WS_HANDSHAKE_H

#include "core/common.h"

/* base64 of a 20-byte SHA-1 digest */
#define WS_ACCEPT_KEY_LEN 28

/*
 * True if `key` (the Sec-WebSocket-Key value, OWS already trimmed) is base64 (standard
 * alphabet, padded) that decodes to exactly 16 bytes.
 */
bool ws_handshake_key_valid(struct span key);

/*
 * Compute Sec-WebSocket-Accept = base64(SHA-1(key || "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
 * into out (WS_ACCEPT_KEY_LEN chars + NUL). Returns false if the key is not valid.
 */
bool ws_handshake_accept(struct span key, char out[WS_ACCEPT_KEY_LEN + 1]);

#endif
