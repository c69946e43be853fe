/*
 * fuzz_ws_handshake.c - libFuzzer target for ws/ws_handshake.c: the Sec-WebSocket-Key
 * check and the Sec-WebSocket-Accept computation, on any header value a client sends.
 *
 * Input: the whole input is the key (OWS already trimmed, as http_parse delivers it).
 * The first bytes are also used to build a key that is valid by construction: 16 bytes
 * encoded with the reference encoder below.
 *
 * Oracles, against a reference written here (RFC 4648 §4 by hand, SHA-1 from
 * BoringSSL's one-shot SHA1()):
 * - ws_handshake_key_valid says yes exactly when the key is the reference's idea of a
 *   16-byte nonce in padded standard base64, as the reference relay's library checks
 *   it (Go's base64.StdEncoding.DecodeString, then len == 16): 22 alphabet characters
 *   then "==", the unused low bits of the last character not required to be zero;
 * - ws_handshake_accept succeeds exactly when the key is valid and then writes the
 *   reference's base64(SHA-1(key || GUID)), 28 characters and a NUL;
 * - any 16 bytes, encoded by the reference, are a valid key.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "core/common.h"
#include "ws/ws_handshake.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_NONCE_BYTES 16
#define FZ_KEY_CHARS 24
#define FZ_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

static const char fz_b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static bool ref_b64_char(uint8_t c)
{
	return c != '\0' && memchr(fz_b64, c, sizeof fz_b64 - 1) != NULL;
}

static bool ref_key_valid(const uint8_t *k, size_t n)
{
	if (n != FZ_KEY_CHARS)
		return false;
	for (size_t i = 0; i < FZ_KEY_CHARS - 2; i++)
		if (!ref_b64_char(k[i]))
			return false;
	return k[22] == '=' && k[23] == '=';
}

/* RFC 4648 §4, padded; returns the length written (out has room for it and a NUL). */
static size_t ref_b64_encode(const uint8_t *in, size_t n, char *out)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)in[i + 1] << 8;
		if (i + 2 < n)
			v |= in[i + 2];
		out[o++] = fz_b64[(v >> 18) & 63];
		out[o++] = fz_b64[(v >> 12) & 63];
		out[o++] = i + 1 < n ? fz_b64[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < n ? fz_b64[v & 63] : '=';
	}
	out[o] = '\0';
	return o;
}

static void check_key(const uint8_t *k, size_t n)
{
	uint8_t *copy = malloc(n ? n : 1); /* exactly sized: a read past the key is a report */
	if (!copy)
		abort();
	if (n)
		memcpy(copy, k, n);
	struct span key = span_make(copy, n);
	bool want = ref_key_valid(k, n);
	ASSERT(ws_handshake_key_valid(key) == want);

	char out[WS_ACCEPT_KEY_LEN + 1];
	memset(out, 'x', sizeof out);
	ASSERT(ws_handshake_accept(key, out) == want);
	if (want) {
		uint8_t msg[FZ_KEY_CHARS + sizeof FZ_GUID - 1];
		uint8_t digest[SHA_DIGEST_LENGTH];
		char expect[WS_ACCEPT_KEY_LEN + 1];
		memcpy(msg, k, FZ_KEY_CHARS);
		memcpy(msg + FZ_KEY_CHARS, FZ_GUID, sizeof FZ_GUID - 1);
		SHA1(msg, sizeof msg, digest);
		ASSERT(ref_b64_encode(digest, sizeof digest, expect) == WS_ACCEPT_KEY_LEN);
		ASSERT(memcmp(out, expect, sizeof out) == 0);
	}
	free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_key(data, size);

	uint8_t nonce[FZ_NONCE_BYTES] = { 0 };
	memcpy(nonce, data, MIN(size, sizeof nonce));
	char key[FZ_KEY_CHARS + 1];
	ASSERT(ref_b64_encode(nonce, sizeof nonce, key) == FZ_KEY_CHARS);
	ASSERT(ref_key_valid((const uint8_t *)key, FZ_KEY_CHARS));
	check_key((const uint8_t *)key, FZ_KEY_CHARS);
	return 0;
}
