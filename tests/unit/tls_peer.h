/*
 * tls_peer.h - test helpers for the TLS transport (test_tls.c, test_ktls.c): keys and
 * certificates made at test time with BoringSSL's X509/EVP APIs, an in-process
 * BoringSSL client over memory BIOs, and the pump that carries bytes between it and a
 * server struct tls_conn exactly as the engine will (ciphertext in, plaintext out,
 * ciphertext taken). Each test binary includes it once (it defines one global
 * function, the CBB_add_u16 interposer below).
 */
#ifndef PYRELAY_TESTS_TLS_PEER_H
#define PYRELAY_TESTS_TLS_PEER_H

#include <dlfcn.h>
#include <openssl/bio.h>
#include <openssl/bytestring.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <time.h>

#include "transport/tls.h"

/* Each test file uses some of these helpers. */
#define TLS_PEER_FN static __attribute__((unused))

/* ------------------------------------------------------------------ TLS 1.3 suites
 *
 * A BoringSSL client cannot be told which TLS 1.3 suites to offer (its list is fixed:
 * AES-128-GCM, AES-256-GCM, ChaCha20, reordered by AES hardware), and a BoringSSL
 * server with AES hardware takes the client's first. To negotiate each suite, the
 * test rewrites the client's offer while the client builds its ClientHello: libssl
 * calls libcrypto's CBB_add_u16 through the PLT, so this definition interposes it.
 * Armed only around the client's first handshake step, it turns every TLS 1.3 suite
 * value (0x1301..0x1303) into the wanted one; the client hashes the bytes it wrote,
 * so the transcript stays consistent and the handshake is genuine.
 */
static _Thread_local uint16_t force_tls13_suite; /* 0: off; per thread, like the client */

int CBB_add_u16(CBB *cbb, uint16_t value)
{
	static int (*real)(CBB *, uint16_t);
	if (real == NULL)
		real = (int (*)(CBB *, uint16_t))dlsym(RTLD_NEXT, "CBB_add_u16");
	if (force_tls13_suite != 0 && value >= 0x1301 && value <= 0x1303)
		value = force_tls13_suite;
	return real(cbb, value);
}

#define SUITE_TLS13_AES_128_GCM 0x1301
#define SUITE_TLS13_AES_256_GCM 0x1302
#define SUITE_TLS13_CHACHA20 0x1303

/* ------------------------------------------------------------------ keys and certificates */

enum key_kind { KEY_EC_P256, KEY_EC_P521, KEY_RSA_2048, KEY_RSA_1024 };

#define DAY_S (24L * 60 * 60)

TLS_PEER_FN EVP_PKEY *make_key(enum key_kind kind)
{
	EVP_PKEY *pkey = EVP_PKEY_new();
	if (kind == KEY_EC_P256 || kind == KEY_EC_P521) {
		EC_KEY *ec = EC_KEY_new_by_curve_name(kind == KEY_EC_P256 ? NID_X9_62_prime256v1 : NID_secp521r1);
		assert_non_null(ec);
		assert_int_equal(EC_KEY_generate_key(ec), 1);
		assert_int_equal(EVP_PKEY_assign_EC_KEY(pkey, ec), 1);
	} else {
		RSA *rsa = RSA_new();
		BIGNUM *e = BN_new();
		BN_set_word(e, RSA_F4);
		assert_int_equal(RSA_generate_key_ex(rsa, kind == KEY_RSA_2048 ? 2048 : 1024, e, NULL), 1);
		BN_free(e);
		assert_int_equal(EVP_PKEY_assign_RSA(pkey, rsa), 1);
	}
	return pkey;
}

/* A self-signed certificate for key, named name (CN and a DNS subjectAltName), valid
 * from now + not_before_s to now + not_after_s. */
TLS_PEER_FN X509 *make_cert(EVP_PKEY *key, const char *name, long not_before_s, long not_after_s)
{
	static long serial = 1;
	X509 *x = X509_new();
	assert_int_equal(X509_set_version(x, X509_VERSION_3), 1);
	ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
	assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), not_before_s));
	assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), not_after_s));
	X509_NAME *n = X509_get_subject_name(x);
	assert_int_equal(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const uint8_t *)name, -1, -1, 0), 1);
	assert_int_equal(X509_set_issuer_name(x, n), 1);
	assert_int_equal(X509_set_pubkey(x, key), 1);
	GENERAL_NAMES *sans = GENERAL_NAMES_new();
	GENERAL_NAME *dns = GENERAL_NAME_new();
	ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
	assert_int_equal(ASN1_STRING_set(ia5, name, (int)strlen(name)), 1);
	GENERAL_NAME_set0_value(dns, GEN_DNS, ia5);
	assert_true(sk_GENERAL_NAME_push(sans, dns) > 0);
	assert_int_equal(X509_add1_ext_i2d(x, NID_subject_alt_name, sans, 0, 0), 1);
	GENERAL_NAMES_free(sans);
	assert_true(X509_sign(x, key, EVP_sha256()) > 0);
	return x;
}

TLS_PEER_FN char *bio_take_string(BIO *b, size_t *len)
{
	const uint8_t *p;
	size_t n;
	assert_int_equal(BIO_mem_contents(b, &p, &n), 1);
	char *s = malloc(n + 1);
	memcpy(s, p, n);
	s[n] = '\0';
	*len = n;
	BIO_free(b);
	return s;
}

TLS_PEER_FN char *pem_of_cert(X509 *x, size_t *len)
{
	BIO *b = BIO_new(BIO_s_mem());
	assert_int_equal(PEM_write_bio_X509(b, x), 1);
	return bio_take_string(b, len);
}

TLS_PEER_FN char *pem_of_key(EVP_PKEY *k, size_t *len)
{
	BIO *b = BIO_new(BIO_s_mem());
	assert_int_equal(PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL), 1);
	return bio_take_string(b, len);
}

/* A certificate and its key, as objects and as PEM. */
struct test_cert {
	EVP_PKEY *key;
	X509 *x509;
	char *cert_pem;
	size_t cert_len;
	char *key_pem;
	size_t key_len;
};

TLS_PEER_FN void test_cert_make(struct test_cert *tc, EVP_PKEY *key, const char *name, long nb_s, long na_s)
{
	tc->key = key;
	EVP_PKEY_up_ref(key);
	tc->x509 = make_cert(key, name, nb_s, na_s);
	tc->cert_pem = pem_of_cert(tc->x509, &tc->cert_len);
	tc->key_pem = pem_of_key(key, &tc->key_len);
}

TLS_PEER_FN void test_cert_free(struct test_cert *tc)
{
	EVP_PKEY_free(tc->key);
	X509_free(tc->x509);
	free(tc->cert_pem);
	free(tc->key_pem);
	memset(tc, 0, sizeof *tc);
}

TLS_PEER_FN struct tls_cert *load_test_cert(const struct test_cert *tc)
{
	struct tls_load_error err;
	struct tls_cert *c = tls_cert_from_pem(tc->cert_pem, tc->cert_len, tc->key_pem, tc->key_len,
					       (int64_t)time(NULL), &err);
	if (c == NULL)
		fail_msg("loading a test certificate: %s: %s", tls_load_result_name(err.result), err.reason);
	return c;
}

/* ------------------------------------------------------------------ the client */

struct client_opts {
	uint16_t min_version; /* 0: TLS 1.2 */
	uint16_t max_version; /* 0: TLS 1.3 */
	const char *ciphers;  /* TLS 1.2 suites (BoringSSL names), NULL: default */
	uint16_t tls13_suite; /* 0: BoringSSL's choice */
	const char *alpn;     /* wire form ("\x08http/1.1"), NULL: none offered */
	const char *sni;      /* NULL: none */
	bool false_start;     /* TLS 1.2: send data before the server's Finished (needs ALPN) */
	bool verify;          /* verify the server's certificate against an empty store */
};

/* The session the client saw last (its new-session callback), for resumption; per
 * thread, so concurrent clients do not share it. */
static _Thread_local SSL_SESSION *client_last_session;

TLS_PEER_FN int client_new_session(SSL *ssl, SSL_SESSION *sess)
{
	SSL_SESSION_free(client_last_session);
	client_last_session = sess; /* we keep the reference */
	return 1;
}

TLS_PEER_FN SSL *client_new(const struct client_opts *o, SSL_SESSION *resume)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	assert_non_null(ctx);
	assert_int_equal(SSL_CTX_set_min_proto_version(ctx, o->min_version ? o->min_version : TLS1_2_VERSION), 1);
	assert_int_equal(SSL_CTX_set_max_proto_version(ctx, o->max_version ? o->max_version : TLS1_3_VERSION), 1);
	if (o->ciphers)
		assert_int_equal(SSL_CTX_set_strict_cipher_list(ctx, o->ciphers), 1);
	SSL_CTX_set_verify(ctx, o->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
	SSL_CTX_sess_set_new_cb(ctx, client_new_session);
	if (o->false_start)
		SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_FALSE_START);
	SSL *ssl = SSL_new(ctx);
	SSL_CTX_free(ctx); /* the SSL holds its reference */
	assert_non_null(ssl);
	SSL_set_bio(ssl, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
	SSL_set_connect_state(ssl);
	if (o->alpn)
		assert_int_equal(SSL_set_alpn_protos(ssl, (const uint8_t *)o->alpn, strlen(o->alpn)), 0);
	if (o->sni)
		assert_int_equal(SSL_set_tlsext_host_name(ssl, o->sni), 1);
	if (resume)
		assert_int_equal(SSL_set_session(ssl, resume), 1);
	return ssl;
}

/* ------------------------------------------------------------------ the pump */

#define PLAIN_CAP (1024u * 1024u)

struct pair {
	SSL *cl;
	struct tls_conn *sv;
	struct client_opts opts;
	uint8_t *sv_plain; /* plaintext the server connection delivered, in order */
	size_t sv_plain_len;
	size_t sv_chunk;   /* plaintext buffer size per tls_conn_input call */
	enum tls_status last;
	bool cl_started;
	uint64_t ciphertext_to_server; /* bytes */
};

TLS_PEER_FN void pair_init(struct pair *p, struct tls_server *srv, struct tls_stats *st, const struct client_opts *o,
		      SSL_SESSION *resume)
{
	memset(p, 0, sizeof *p);
	p->opts = *o;
	p->cl = client_new(o, resume);
	p->sv = tls_conn_new(srv, st);
	assert_non_null(p->sv);
	p->sv_plain = malloc(PLAIN_CAP);
	p->sv_chunk = TLS_RECORD_PLAINTEXT_BYTES_MAX;
}

TLS_PEER_FN void pair_free(struct pair *p)
{
	SSL_free(p->cl);
	tls_conn_free(p->sv);
	free(p->sv_plain);
	memset(p, 0, sizeof *p);
}

/* Feed n ciphertext bytes to the server as the engine will: loop while TLS_AGAIN. */
TLS_PEER_FN enum tls_status server_feed(struct pair *p, const uint8_t *in, size_t n)
{
	uint8_t chunk[TLS_RECORD_PLAINTEXT_BYTES_MAX];
	size_t cap = MIN(p->sv_chunk, sizeof chunk);
	p->ciphertext_to_server += n;
	for (;;) {
		size_t used = 0, got = 0;
		enum tls_status st = tls_conn_input(p->sv, in, n, &used, chunk, cap, &got);
		assert_true(used <= n);
		assert_true(got <= cap);
		assert_true(p->sv_plain_len + got <= PLAIN_CAP);
		memcpy(p->sv_plain + p->sv_plain_len, chunk, got);
		p->sv_plain_len += got;
		in += used;
		n -= used;
		p->last = st;
		if (st != TLS_AGAIN)
			return st;
	}
}

/* Client's pending ciphertext -> server. */
TLS_PEER_FN enum tls_status to_server(struct pair *p)
{
	BIO *w = SSL_get_wbio(p->cl);
	const uint8_t *data;
	size_t n;
	assert_int_equal(BIO_mem_contents(w, &data, &n), 1);
	if (n == 0)
		return p->last;
	uint8_t *copy = malloc(n);
	memcpy(copy, data, n);
	assert_int_equal(BIO_reset(w), 1);
	enum tls_status st = server_feed(p, copy, n);
	free(copy);
	return st;
}

/* Server's pending ciphertext -> client (taken in odd-sized pieces). Returns bytes. */
TLS_PEER_FN size_t to_client(struct pair *p)
{
	uint8_t buf[3001];
	size_t total = 0, n;
	while ((n = tls_conn_out_take(p->sv, buf, sizeof buf)) > 0) {
		assert_int_equal(BIO_write(SSL_get_rbio(p->cl), buf, (int)n), (int)n);
		total += n;
	}
	assert_int_equal(tls_conn_out_pending(p->sv), 0);
	return total;
}

/* One step of the client's handshake, with the TLS 1.3 suite override on its first. */
TLS_PEER_FN int client_step(struct pair *p)
{
	if (!p->cl_started)
		force_tls13_suite = p->opts.tls13_suite;
	int rc = SSL_do_handshake(p->cl);
	force_tls13_suite = 0;
	p->cl_started = true;
	return rc;
}

/*
 * Run the handshake. request (may be NULL): plaintext the client writes as soon as it
 * may (TLS 1.3: with its Finished; TLS 1.2 with false_start: with its Finished), so it
 * reaches the server in the same input as the last handshake bytes. Returns true when
 * both sides completed; false when the server failed (see tls_conn_error).
 */
TLS_PEER_FN bool handshake_with(struct pair *p, const void *request, size_t request_len)
{
	bool sent = request == NULL;
	for (int round = 0; round < 16; round++) {
		int rc = client_step(p);
		/* Ask why now: SSL_get_error reads the BIO's retry flags, which the next
		 * BIO_write into the client clears. */
		int why = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(p->cl, rc);
		if (rc == 1 && !sent) {
			assert_int_equal(SSL_write(p->cl, request, (int)request_len), (int)request_len);
			sent = true;
		}
		enum tls_status st = to_server(p);
		to_client(p);
		if (st == TLS_FAILED)
			return false;
		if (rc == 1 && sent && tls_conn_established(p->sv) && !SSL_in_init(p->cl))
			return true;
		if (rc != 1) {
			if (why != SSL_ERROR_WANT_READ) {
				ERR_clear_error();
				/* the client gave up: let the server read its alert */
				to_server(p);
				return false;
			}
		}
	}
	fail_msg("handshake did not finish in 16 rounds");
	return false;
}

TLS_PEER_FN bool handshake(struct pair *p)
{
	return handshake_with(p, NULL, 0);
}

/* Let the client read what the server sent (tickets, data): returns plaintext bytes. */
TLS_PEER_FN size_t client_read(struct pair *p, uint8_t *out, size_t cap)
{
	size_t total = 0;
	for (;;) {
		int rc = SSL_read(p->cl, out + total, (int)MIN(cap - total, (size_t)INT32_MAX));
		if (rc <= 0) {
			int e = SSL_get_error(p->cl, rc);
			assert_true(e == SSL_ERROR_WANT_READ || e == SSL_ERROR_ZERO_RETURN);
			ERR_clear_error();
			return total;
		}
		total += (size_t)rc;
		if (total == cap)
			return total;
	}
}

/* Server writes all of p..n (taking output when the bound stops it), client reads it. */
TLS_PEER_FN void server_send_all(struct pair *p, const uint8_t *data, size_t n)
{
	uint8_t *got = malloc(n + 1);
	size_t off = 0, have = 0;
	while (off < n) {
		struct iovec iov = { .iov_base = (void *)(data + off), .iov_len = n - off };
		size_t w = tls_conn_write(p->sv, &iov, 1);
		assert_true(tls_conn_out_pending(p->sv) <= TLS_OUT_BYTES_MAX);
		off += w;
		to_client(p);
		have += client_read(p, got + have, n + 1 - have);
		assert_true(w > 0 || off == n);
	}
	have += client_read(p, got + have, n + 1 - have);
	assert_int_equal(have, n);
	assert_memory_equal(got, data, n);
	free(got);
}

/* Client writes data, server delivers it. */
TLS_PEER_FN void client_send_all(struct pair *p, const uint8_t *data, size_t n)
{
	size_t before = p->sv_plain_len;
	assert_int_equal(SSL_write(p->cl, data, (int)n), (int)n);
	assert_int_equal(to_server(p), TLS_WANT_INPUT);
	assert_int_equal(p->sv_plain_len - before, n);
	assert_memory_equal(p->sv_plain + before, data, n);
}

TLS_PEER_FN void fill_pattern(uint8_t *p, size_t n, uint32_t seed)
{
	for (size_t i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345u;
		p[i] = (uint8_t)(seed >> 16);
	}
}

#endif
