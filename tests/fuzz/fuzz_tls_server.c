/*
 * fuzz_tls_server.c - a server TLS connection (transport/tls.h) fed a hostile client's
 * first flight.
 *
 * Input layout:
 *   byte 0   bit 0: the server's certificate is RSA-2048 (else ECDSA P-256);
 *            bit 1: server names must match it (TLS_SNI_REQUIRED, else any);
 *            bits 2-3: plaintext buffer of 1, 7, 1000 or 16384 bytes
 *   byte 1   seed for the chunk sizes of the second feeding
 *   rest     what the client sends
 *
 * The bytes are fed to two fresh connections: whole, and in pseudo-random chunks.
 * Checks: no crash or sanitizer report; every call consumes within its input and
 * fills within its buffer; the output waiting never passes its bound; each feeding
 * ends either still needing input (no error, nothing counted) or failed with a
 * classified reason counted exactly once; both feedings end the same way (BoringSSL
 * reads exact records, so where the bytes are cut must not matter); the record tracker
 * never claims more than a record can hold.
 */
#include <openssl/bytestring.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/common.h"
#include "transport/tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CONFIG_BYTES 2u
#define FUZZ_CHUNK_MAX 600u
#define RSA_BITS 2048
/* The tracker reports at most a header's or a body's worth: 16-bit lengths. */
#define RECORD_REMAINING_MAX 65535u

static const size_t plain_caps[4] = { 1, 7, 1000, TLS_RECORD_PLAINTEXT_BYTES_MAX };

static struct tls_server *servers[2][2]; /* [rsa][sni_required] */
static uint8_t plain[TLS_RECORD_PLAINTEXT_BYTES_MAX];
static uint8_t sink[TLS_OUT_BYTES_MAX + TLS_CERT_CHAIN_BYTES_MAX + 16384];

static EVP_PKEY *make_key(bool rsa)
{
	EVP_PKEY *pkey = EVP_PKEY_new();
	ASSERT(pkey != NULL);
	if (rsa) {
		RSA *r = RSA_new();
		BIGNUM *e = BN_new();
		ASSERT(r && e && BN_set_word(e, RSA_F4) && RSA_generate_key_ex(r, RSA_BITS, e, NULL));
		BN_free(e);
		ASSERT(EVP_PKEY_assign_RSA(pkey, r));
	} else {
		EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
		ASSERT(ec && EC_KEY_generate_key(ec) && EVP_PKEY_assign_EC_KEY(pkey, ec));
	}
	return pkey;
}

/* A self-signed certificate for relay.example, as PEM, loaded through tls_cert_from_pem. */
static struct tls_cert *make_cert(bool rsa)
{
	EVP_PKEY *key = make_key(rsa);
	X509 *x = X509_new();
	ASSERT(x && X509_set_version(x, X509_VERSION_3));
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	ASSERT(X509_gmtime_adj(X509_getm_notBefore(x), -3600) && X509_gmtime_adj(X509_getm_notAfter(x), 86400));
	X509_NAME *n = X509_get_subject_name(x);
	ASSERT(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const uint8_t *)"relay.example", -1, -1, 0));
	ASSERT(X509_set_issuer_name(x, n) && X509_set_pubkey(x, key) && X509_sign(x, key, EVP_sha256()));
	BIO *cb = BIO_new(BIO_s_mem()), *kb = BIO_new(BIO_s_mem());
	ASSERT(PEM_write_bio_X509(cb, x) && PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL));
	const uint8_t *cp, *kp;
	size_t cn, kn;
	ASSERT(BIO_mem_contents(cb, &cp, &cn) && BIO_mem_contents(kb, &kp, &kn));
	struct tls_load_error err;
	struct tls_cert *c = tls_cert_from_pem(cp, cn, kp, kn, (int64_t)time(NULL), &err);
	ASSERT(c != NULL);
	BIO_free(cb);
	BIO_free(kb);
	X509_free(x);
	EVP_PKEY_free(key);
	return c;
}

static void init_once(void)
{
	if (servers[0][0] != NULL)
		return;
	for (int rsa = 0; rsa < 2; rsa++) {
		for (int sni = 0; sni < 2; sni++) {
			servers[rsa][sni] = tls_server_new(make_cert(rsa), sni ? TLS_SNI_REQUIRED : TLS_SNI_ANY, 0);
			ASSERT(servers[rsa][sni] != NULL);
		}
	}
}

static uint32_t rng(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

struct outcome {
	enum tls_status status;
	enum tls_error error;
	bool established;
};

/* Feed data in chunks (0: whole) and check every call. */
static struct outcome feed(struct tls_server *srv, const uint8_t *data, size_t size, size_t cap, uint32_t seed)
{
	struct tls_stats st = { 0 };
	struct tls_conn *c = tls_conn_new(srv, &st);
	ASSERT(c != NULL);
	enum tls_status last = TLS_WANT_INPUT;
	size_t off = 0;
	do {
		size_t chunk = size - off;
		if (seed != 0) {
			size_t r = 1 + rng(&seed) % FUZZ_CHUNK_MAX; /* once: MIN evaluates twice */
			chunk = MIN(chunk, r);
		}
		const uint8_t *p = data + off;
		size_t left = chunk;
		for (;;) {
			size_t used = 0, got = 0;
			last = tls_conn_input(c, p, left, &used, plain, cap, &got);
			ASSERT((unsigned)last <= TLS_FAILED);
			ASSERT(used <= left);
			ASSERT(got <= cap);
			ASSERT(last == TLS_AGAIN || used == left);
			p += used;
			left -= used;
			ASSERT(tls_conn_out_pending(c) <= TLS_OUT_BYTES_MAX);
			while (tls_conn_out_take(c, sink, sizeof sink) > 0)
				;
			ASSERT(tls_conn_rx_record_remaining(c) <= RECORD_REMAINING_MAX);
			if (last != TLS_AGAIN)
				break;
		}
		off += chunk;
	} while (off < size);

	struct outcome o = { .status = last, .error = tls_conn_error(c), .established = tls_conn_established(c) };
	uint64_t failed = 0;
	for (int e = 0; e < TLS_ERR_COUNT; e++)
		failed += st.handshake_failed[e] + st.failed_after_handshake[e];
	ASSERT(st.handshake_failed[TLS_ERR_NONE] == 0);
	ASSERT((unsigned)o.error < TLS_ERR_COUNT);
	if (last == TLS_FAILED) {
		ASSERT(o.error != TLS_ERR_NONE); /* a classified failure */
		ASSERT(failed == 1);
	} else {
		/* Still in its handshake, waiting for the rest of a flight (a client's
		 * Finished cannot be forged, so it never completes here). */
		ASSERT(last == TLS_WANT_INPUT);
		ASSERT(o.error == TLS_ERR_NONE && failed == 0);
	}
	ASSERT(st.handshakes <= 1);
	tls_conn_free(c);
	return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < FUZZ_CONFIG_BYTES)
		return 0;
	init_once();
	bool rsa = data[0] & 1, sni = data[0] & 2;
	size_t cap = plain_caps[(data[0] >> 2) & 3];
	uint32_t seed = 0x9e3779b9u ^ data[1];
	struct tls_server *srv = servers[rsa][sni];
	data += FUZZ_CONFIG_BYTES;
	size -= FUZZ_CONFIG_BYTES;

	struct outcome whole = feed(srv, data, size, cap, 0);
	struct outcome pieces = feed(srv, data, size, cap, seed);
	ASSERT(whole.status == pieces.status);
	ASSERT(whole.error == pieces.error);
	ASSERT(whole.established == pieces.established);
	return 0;
}
