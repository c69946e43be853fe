/*
 * ws_handshake.c - Sec-WebSocket-Key validation and Sec-WebSocket-Accept (RFC 6455
 * §4.2.1, §4.2.2). SHA-1 and base64 are BoringSSL's: crypto we did not write cannot
 * be crypto we got wrong. Only BoringSSL headers are included here (never OpenSSL's).
 */
#include "ws/ws_handshake.h"

#include <openssl/base64.h>
#include <openssl/sha.h>

/*
 * Compile-time half of "never mix OpenSSL in": these must be BoringSSL's headers.
 * The link-time half is EVP_DecodeBase64, which OpenSSL's libcrypto does not have, so
 * linking against the wrong library fails loudly instead of mixing ABIs.
 */
#ifndef OPENSSL_IS_BORINGSSL
#error "ws_handshake.c must be built against BoringSSL headers (-isystem /usr/include/android)"
#endif

/* The key is a base64-encoded 16-byte nonce (RFC 6455 §4.1, item 7). */
#define WS_KEY_NONCE_BYTES 16u
/* base64 of 16 bytes: 5 full quads plus one "xx==" quad. */
#define WS_KEY_B64_CHARS 24u
/*
 * EVP_DecodeBase64 wants room for the largest possible output of its input, which for
 * 24 characters is 18 bytes, before it looks at the padding.
 */
#define WS_KEY_DECODE_BUF_BYTES 18u

/* RFC 6455 §1.3: appended to the key before hashing. */
static const char ws_accept_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

_Static_assert(WS_ACCEPT_KEY_LEN == 4 * ((SHA_DIGEST_LENGTH + 2) / 3),
	       "accept key is the padded base64 of one SHA-1 digest");

bool ws_handshake_key_valid(struct span key)
{
	uint8_t nonce[WS_KEY_DECODE_BUF_BYTES];
	size_t max_out = 0;
	size_t out_len = 0;
	int length_ok;

	/*
	 * Only a 24-character padded string can decode to exactly 16 bytes; checking the
	 * length first also bounds the decode buffer. Whitespace, unpadded or
	 * URL-safe-alphabet keys are rejected by EVP_DecodeBase64 itself.
	 */
	if (key.len != WS_KEY_B64_CHARS)
		return false;
	ASSERT(key.ptr != NULL);
	/* Our buffer size is derived from the fixed length; BoringSSL must agree. */
	length_ok = EVP_DecodedLength(&max_out, key.len);
	ASSERT(length_ok && max_out <= sizeof(nonce));
	if (!EVP_DecodeBase64(nonce, &out_len, sizeof(nonce), key.ptr, key.len))
		return false;
	return out_len == WS_KEY_NONCE_BYTES;
}

bool ws_handshake_accept(struct span key, char out[WS_ACCEPT_KEY_LEN + 1])
{
	uint8_t digest[SHA_DIGEST_LENGTH];
	SHA_CTX sha;
	size_t n;

	ASSERT(out != NULL);
	if (!ws_handshake_key_valid(key))
		return false;

	/* The key is hashed as the client sent it (its base64 text), not decoded. */
	SHA1_Init(&sha);
	SHA1_Update(&sha, key.ptr, key.len);
	SHA1_Update(&sha, ws_accept_guid, sizeof(ws_accept_guid) - 1);
	SHA1_Final(digest, &sha);

	/* EVP_EncodeBlock writes the padded encoding and a terminating NUL. */
	n = EVP_EncodeBlock((uint8_t *)out, digest, sizeof(digest));
	ASSERT(n == WS_ACCEPT_KEY_LEN);
	ASSERT(out[WS_ACCEPT_KEY_LEN] == '\0');
	return true;
}
