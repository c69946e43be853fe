/*
 * test_tls.c - the TLS transport (transport/tls.h) against an in-process BoringSSL
 * client over memory BIOs: certificate checks at load (each refusal, its reason and
 * fix), handshakes and data both ways for TLS 1.2 and 1.3 with every suite and both key
 * types, ALPN, server-name policies, refusals classified by reason and counted,
 * plaintext HTTP on the TLS port, resumption by ticket across key rotations,
 * certificate swap under live connections, close_notify, the output and plaintext
 * bounds, byte-at-a-time input, and the memory an idle connection keeps.
 *
 * Keys and certificates are generated here (tls_peer.h), never read from the tree.
 */
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/common.h"
#include "tls_peer.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif
#ifndef UNDER_SANITIZER
#define UNDER_SANITIZER 0
#endif

#define NAME "relay.example"
#define ALPN_H11 "\x08http/1.1"
#define ALPN_H2_H11 "\x02h2\x08http/1.1"
#define ALPN_H2 "\x02h2"
#define T0_MS 1000000u /* a monotonic origin for the ticket-key schedule */
#define MEM_CONNS 200u
#define MEM_BUSY_CONNS 200u
/* An idle established connection must stay under this (ADR 10 records the figure). */
#define IDLE_CONN_BYTES_MAX 6144u
/* After a full-size record each way, what a connection may keep beyond idle. */
#define RELEASED_SLACK_BYTES 64u

static struct fixture {
	EVP_PKEY *ec, *ec2, *rsa;
	struct test_cert ec_good, rsa_good, ec_second, wildcard;
	struct test_cert expired, not_yet, rsa_small, p521, intermediate_expired;
	char dir[64];
} fx;

static int setup_all(void **state)
{
	fx.ec = make_key(KEY_EC_P256);
	fx.ec2 = make_key(KEY_EC_P256);
	fx.rsa = make_key(KEY_RSA_2048);
	test_cert_make(&fx.ec_good, fx.ec, NAME, -DAY_S, 30 * DAY_S);
	test_cert_make(&fx.rsa_good, fx.rsa, NAME, -DAY_S, 30 * DAY_S);
	test_cert_make(&fx.ec_second, fx.ec2, NAME, -DAY_S, 60 * DAY_S);
	test_cert_make(&fx.wildcard, fx.ec, "*.example.com", -DAY_S, 30 * DAY_S);
	test_cert_make(&fx.expired, fx.ec, NAME, -30 * DAY_S, -DAY_S);
	test_cert_make(&fx.not_yet, fx.ec, NAME, DAY_S, 30 * DAY_S);
	EVP_PKEY *small = make_key(KEY_RSA_1024), *p521 = make_key(KEY_EC_P521);
	test_cert_make(&fx.rsa_small, small, NAME, -DAY_S, 30 * DAY_S);
	test_cert_make(&fx.p521, p521, NAME, -DAY_S, 30 * DAY_S);
	EVP_PKEY_free(small);
	EVP_PKEY_free(p521);
	/* A good leaf followed by an expired "intermediate". */
	test_cert_make(&fx.intermediate_expired, fx.ec, NAME, -DAY_S, 30 * DAY_S);
	size_t n;
	char *old = pem_of_cert(fx.expired.x509, &n);
	fx.intermediate_expired.cert_pem = realloc(fx.intermediate_expired.cert_pem,
						   fx.intermediate_expired.cert_len + n + 1);
	memcpy(fx.intermediate_expired.cert_pem + fx.intermediate_expired.cert_len, old, n + 1);
	fx.intermediate_expired.cert_len += n;
	free(old);
	snprintf(fx.dir, sizeof fx.dir, "/tmp/pyrelay-tls-XXXXXX");
	assert_non_null(mkdtemp(fx.dir));
	return 0;
}

static int teardown_all(void **state)
{
	struct test_cert *all[] = { &fx.ec_good, &fx.rsa_good, &fx.ec_second, &fx.wildcard, &fx.expired,
				    &fx.not_yet, &fx.rsa_small, &fx.p521, &fx.intermediate_expired };
	for (size_t i = 0; i < ARRAY_LEN(all); i++)
		test_cert_free(all[i]);
	EVP_PKEY_free(fx.ec);
	EVP_PKEY_free(fx.ec2);
	EVP_PKEY_free(fx.rsa);
	SSL_SESSION_free(client_last_session);
	client_last_session = NULL;
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx.dir);
	return system(cmd) == 0 ? 0 : -1;
}

static struct tls_server *server_with(const struct test_cert *tc, enum tls_sni_policy sni)
{
	struct tls_server *s = tls_server_new(load_test_cert(tc), sni, T0_MS);
	assert_non_null(s);
	return s;
}

static void write_file(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(p, 1, n, f), n);
	assert_int_equal(fclose(f), 0);
}

static char *path_in(const char *name)
{
	static char buf[4][128];
	static int k;
	char *p = buf[k++ % 4];
	snprintf(p, sizeof buf[0], "%s/%s", fx.dir, name);
	return p;
}

/* A refusal: the expected result, a one-line reason that names its subject, a fix,
 * and nothing of the key file in the reason. */
static void expect_refusal(struct tls_cert *c, const struct tls_load_error *err, enum tls_load_result want,
			   const char *reason_part)
{
	assert_null(c);
	if (err->result != want)
		fail_msg("want %s, got %s: %s", tls_load_result_name(want), tls_load_result_name(err->result),
			 err->reason);
	assert_non_null(strstr(err->reason, reason_part));
	assert_null(strchr(err->reason, '\n'));
	assert_true(strlen(err->reason) > 10);
	assert_non_null(err->fix);
	assert_true(strlen(err->fix) > 10);
	assert_null(strstr(err->reason, "-----"));
	assert_null(strstr(err->reason, "PRIVATE"));
}

/* ------------------------------------------------------------------ loading */

static void test_load_good_ec_and_rsa(void **state)
{
	const struct test_cert *good[] = { &fx.ec_good, &fx.rsa_good, &fx.wildcard };
	for (size_t i = 0; i < ARRAY_LEN(good); i++) {
		struct tls_load_error err;
		int64_t now = (int64_t)time(NULL);
		struct tls_cert *c = tls_cert_from_pem(good[i]->cert_pem, good[i]->cert_len, good[i]->key_pem,
						       good[i]->key_len, now, &err);
		assert_non_null(c);
		assert_int_equal(err.result, TLS_LOAD_OK);
		int64_t na = tls_cert_not_after_s(c);
		assert_true(na > now + 29 * DAY_S && na <= now + 30 * DAY_S + 60);
		tls_cert_put(c);
	}
	/* From files, as --tls-cert/--tls-key will. */
	write_file(path_in("cert.pem"), fx.rsa_good.cert_pem, fx.rsa_good.cert_len);
	write_file(path_in("key.pem"), fx.rsa_good.key_pem, fx.rsa_good.key_len);
	struct tls_load_error err;
	struct tls_cert *c = tls_cert_load(path_in("cert.pem"), path_in("key.pem"), (int64_t)time(NULL), &err);
	assert_non_null(c);
	tls_cert_put(c);
	/* Cert and key in one file, key first: PEM blocks of other types are skipped. */
	size_t n = fx.ec_good.key_len + fx.ec_good.cert_len;
	char *both = malloc(n);
	memcpy(both, fx.ec_good.key_pem, fx.ec_good.key_len);
	memcpy(both + fx.ec_good.key_len, fx.ec_good.cert_pem, fx.ec_good.cert_len);
	write_file(path_in("both.pem"), both, n);
	free(both);
	c = tls_cert_load(path_in("both.pem"), path_in("both.pem"), (int64_t)time(NULL), &err);
	assert_non_null(c);
	tls_cert_put(c);
}

static void test_load_unreadable(void **state)
{
	struct tls_load_error err;
	write_file(path_in("cert.pem"), fx.ec_good.cert_pem, fx.ec_good.cert_len);
	write_file(path_in("key.pem"), fx.ec_good.key_pem, fx.ec_good.key_len);
	int64_t now = (int64_t)time(NULL);
	struct tls_cert *c = tls_cert_load(path_in("missing.pem"), path_in("key.pem"), now, &err);
	expect_refusal(c, &err, TLS_LOAD_UNREADABLE, "certificate file");
	assert_non_null(strstr(err.reason, "missing.pem"));
	assert_non_null(strstr(err.reason, strerror(ENOENT)));
	c = tls_cert_load(path_in("cert.pem"), path_in("missing-key.pem"), now, &err);
	expect_refusal(c, &err, TLS_LOAD_UNREADABLE, "key file");
	c = tls_cert_load(fx.dir, path_in("key.pem"), now, &err); /* a directory */
	expect_refusal(c, &err, TLS_LOAD_UNREADABLE, strerror(EISDIR));
	if (geteuid() != 0) { /* root reads anything */
		assert_int_equal(chmod(path_in("key.pem"), 0), 0);
		c = tls_cert_load(path_in("cert.pem"), path_in("key.pem"), now, &err);
		expect_refusal(c, &err, TLS_LOAD_UNREADABLE, strerror(EACCES));
		assert_int_equal(chmod(path_in("key.pem"), 0600), 0);
	}
	/* Line breaks in a path never break the reason's line. */
	c = tls_cert_load("/nonexistent\ndir/cert.pem", path_in("key.pem"), now, &err);
	expect_refusal(c, &err, TLS_LOAD_UNREADABLE, "certificate file");
}

static void test_load_bad_pem(void **state)
{
	struct tls_load_error err;
	int64_t now = (int64_t)time(NULL);
	const struct test_cert *g = &fx.ec_good;
	static const char garbage[] = "this is not a certificate\n";
	struct tls_cert *c = tls_cert_from_pem(garbage, sizeof garbage - 1, g->key_pem, g->key_len, now, &err);
	expect_refusal(c, &err, TLS_LOAD_BAD_PEM, "no PEM certificate");
	c = tls_cert_from_pem("", 0, g->key_pem, g->key_len, now, &err);
	expect_refusal(c, &err, TLS_LOAD_BAD_PEM, "certificate");
	/* A PEM block whose body is cut short. */
	char *cut = strndup(g->cert_pem, g->cert_len);
	memcpy(cut + g->cert_len / 2, "-----END CERTIFICATE-----\n", 27);
	c = tls_cert_from_pem(cut, g->cert_len / 2 + 26, g->key_pem, g->key_len, now, &err);
	expect_refusal(c, &err, TLS_LOAD_BAD_PEM, "certificate");
	free(cut);
	/* A good leaf followed by a broken block. */
	size_t n = g->cert_len + 64;
	char *two = malloc(n);
	memcpy(two, g->cert_pem, g->cert_len);
	memcpy(two + g->cert_len, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", 59);
	c = tls_cert_from_pem(two, g->cert_len + 58, g->key_pem, g->key_len, now, &err);
	expect_refusal(c, &err, TLS_LOAD_BAD_PEM, "certificate 2 of the chain");
	free(two);
	/* No key, a certificate where the key should be, an encrypted key. */
	c = tls_cert_from_pem(g->cert_pem, g->cert_len, garbage, sizeof garbage - 1, now, &err);
	expect_refusal(c, &err, TLS_LOAD_BAD_PEM, "private key");
	c = tls_cert_from_pem(g->cert_pem, g->cert_len, g->cert_pem, g->cert_len, now, &err);
	expect_refusal(c, &err, TLS_LOAD_BAD_PEM, "private key");
	BIO *b = BIO_new(BIO_s_mem());
	assert_int_equal(PEM_write_bio_PrivateKey(b, fx.ec, EVP_aes_128_cbc(), (uint8_t *)"pw", 2, NULL, NULL), 1);
	size_t elen;
	char *enc = bio_take_string(b, &elen);
	assert_non_null(strstr(enc, "ENCRYPTED"));
	c = tls_cert_from_pem(g->cert_pem, g->cert_len, enc, elen, now, &err);
	expect_refusal(c, &err, TLS_LOAD_BAD_PEM, "unencrypted");
	free(enc);
	/* Larger than any certificate file. */
	size_t big = TLS_PEM_FILE_BYTES_MAX + 1;
	char *huge = calloc(1, big);
	memset(huge, 'A', big);
	write_file(path_in("huge.pem"), huge, big);
	write_file(path_in("key.pem"), g->key_pem, g->key_len);
	free(huge);
	c = tls_cert_load(path_in("huge.pem"), path_in("key.pem"), now, &err);
	expect_refusal(c, &err, TLS_LOAD_BAD_PEM, "larger than");
	/* A chain over the count bound. */
	size_t many_len = g->cert_len * (TLS_CERT_CHAIN_CERTS_MAX + 1);
	char *many = malloc(many_len);
	for (size_t i = 0; i <= TLS_CERT_CHAIN_CERTS_MAX; i++)
		memcpy(many + i * g->cert_len, g->cert_pem, g->cert_len);
	c = tls_cert_from_pem(many, many_len, g->key_pem, g->key_len, now, &err);
	expect_refusal(c, &err, TLS_LOAD_BAD_PEM, "chain longer");
	free(many);
}

static void test_load_unsupported_key(void **state)
{
	struct tls_load_error err;
	int64_t now = (int64_t)time(NULL);
	struct tls_cert *c = tls_cert_from_pem(fx.rsa_small.cert_pem, fx.rsa_small.cert_len, fx.rsa_small.key_pem,
					       fx.rsa_small.key_len, now, &err);
	expect_refusal(c, &err, TLS_LOAD_UNSUPPORTED_KEY, "1024 bits");
	c = tls_cert_from_pem(fx.p521.cert_pem, fx.p521.cert_len, fx.p521.key_pem, fx.p521.key_len, now, &err);
	expect_refusal(c, &err, TLS_LOAD_UNSUPPORTED_KEY, "secp521r1");
}

static void test_load_key_mismatch(void **state)
{
	struct tls_load_error err;
	int64_t now = (int64_t)time(NULL);
	/* Same type, another key. */
	struct tls_cert *c = tls_cert_from_pem(fx.ec_good.cert_pem, fx.ec_good.cert_len, fx.ec_second.key_pem,
					       fx.ec_second.key_len, now, &err);
	expect_refusal(c, &err, TLS_LOAD_KEY_MISMATCH, "does not belong");
	/* Another type altogether. */
	c = tls_cert_from_pem(fx.rsa_good.cert_pem, fx.rsa_good.cert_len, fx.ec_good.key_pem, fx.ec_good.key_len, now,
			      &err);
	expect_refusal(c, &err, TLS_LOAD_KEY_MISMATCH, "does not belong");
	/* The mismatch is found before the dates: an expired cert with the wrong key. */
	c = tls_cert_from_pem(fx.expired.cert_pem, fx.expired.cert_len, fx.ec_second.key_pem, fx.ec_second.key_len,
			      now, &err);
	expect_refusal(c, &err, TLS_LOAD_KEY_MISMATCH, "does not belong");
}

static void test_load_dates(void **state)
{
	struct tls_load_error err;
	int64_t now = (int64_t)time(NULL);
	struct tls_cert *c = tls_cert_from_pem(fx.expired.cert_pem, fx.expired.cert_len, fx.expired.key_pem,
					       fx.expired.key_len, now, &err);
	expect_refusal(c, &err, TLS_LOAD_EXPIRED, "expired at");
	assert_non_null(strstr(err.reason, "the certificate (1 in the chain)"));
	c = tls_cert_from_pem(fx.not_yet.cert_pem, fx.not_yet.cert_len, fx.not_yet.key_pem, fx.not_yet.key_len, now,
			      &err);
	expect_refusal(c, &err, TLS_LOAD_NOT_YET_VALID, "not valid before");
	c = tls_cert_from_pem(fx.intermediate_expired.cert_pem, fx.intermediate_expired.cert_len,
			      fx.intermediate_expired.key_pem, fx.intermediate_expired.key_len, now, &err);
	expect_refusal(c, &err, TLS_LOAD_EXPIRED, "intermediate certificate (2 in the chain)");
	/* The same files at another time: now_s is the caller's clock. */
	c = tls_cert_from_pem(fx.not_yet.cert_pem, fx.not_yet.cert_len, fx.not_yet.key_pem, fx.not_yet.key_len,
			      now + 2 * DAY_S, &err);
	assert_non_null(c);
	tls_cert_put(c);
	c = tls_cert_from_pem(fx.ec_good.cert_pem, fx.ec_good.cert_len, fx.ec_good.key_pem, fx.ec_good.key_len,
			      now + 31 * DAY_S, &err);
	expect_refusal(c, &err, TLS_LOAD_EXPIRED, "expired at");
}

static void test_names(void **state)
{
	for (int r = 0; r < TLS_LOAD_RESULT_COUNT; r++)
		for (int s = r + 1; s < TLS_LOAD_RESULT_COUNT; s++)
			assert_string_not_equal(tls_load_result_name(r), tls_load_result_name(s));
	for (int e = 0; e < TLS_ERR_COUNT; e++) {
		const char *n = tls_error_name(e);
		assert_non_null(n);
		for (const char *p = n; *p; p++) /* a metric label value: [a-z0-9_] */
			assert_true((*p >= 'a' && *p <= 'z') || *p == '_' || (*p >= '0' && *p <= '9'));
		for (int f = e + 1; f < TLS_ERR_COUNT; f++)
			assert_string_not_equal(n, tls_error_name(f));
	}
}

/* ------------------------------------------------------------------ handshakes and data */

struct suite_case {
	const char *name;
	uint16_t version;
	const char *tls12_cipher;
	uint16_t tls13_suite;
	bool rsa;
	uint16_t want_id;
};

static const struct suite_case suites[] = {
	{ "1.3 AES-128-GCM", TLS1_3_VERSION, NULL, SUITE_TLS13_AES_128_GCM, false, 0x1301 },
	{ "1.3 AES-256-GCM", TLS1_3_VERSION, NULL, SUITE_TLS13_AES_256_GCM, false, 0x1302 },
	{ "1.3 CHACHA20", TLS1_3_VERSION, NULL, SUITE_TLS13_CHACHA20, false, 0x1303 },
	{ "1.3 AES-256-GCM RSA", TLS1_3_VERSION, NULL, SUITE_TLS13_AES_256_GCM, true, 0x1302 },
	{ "1.2 ECDHE-ECDSA-AES128-GCM-SHA256", TLS1_2_VERSION, "ECDHE-ECDSA-AES128-GCM-SHA256", 0, false, 0xc02b },
	{ "1.2 ECDHE-ECDSA-AES256-GCM-SHA384", TLS1_2_VERSION, "ECDHE-ECDSA-AES256-GCM-SHA384", 0, false, 0xc02c },
	{ "1.2 ECDHE-ECDSA-CHACHA20-POLY1305", TLS1_2_VERSION, "ECDHE-ECDSA-CHACHA20-POLY1305", 0, false, 0xcca9 },
	{ "1.2 ECDHE-RSA-AES128-GCM-SHA256", TLS1_2_VERSION, "ECDHE-RSA-AES128-GCM-SHA256", 0, true, 0xc02f },
	{ "1.2 ECDHE-RSA-AES256-GCM-SHA384", TLS1_2_VERSION, "ECDHE-RSA-AES256-GCM-SHA384", 0, true, 0xc030 },
	{ "1.2 ECDHE-RSA-CHACHA20-POLY1305", TLS1_2_VERSION, "ECDHE-RSA-CHACHA20-POLY1305", 0, true, 0xcca8 },
};

static struct client_opts opts_for(const struct suite_case *sc)
{
	return (struct client_opts){ .min_version = sc->version,
				     .max_version = sc->version,
				     .ciphers = sc->tls12_cipher,
				     .tls13_suite = sc->tls13_suite,
				     .alpn = ALPN_H11 };
}

/* The server presented exactly this certificate. */
static void expect_peer_cert(SSL *cl, const struct test_cert *tc)
{
	const STACK_OF(CRYPTO_BUFFER) *chain = SSL_get0_peer_certificates(cl);
	assert_non_null(chain);
	const CRYPTO_BUFFER *leaf = sk_CRYPTO_BUFFER_value(chain, 0);
	uint8_t *der = NULL;
	int n = i2d_X509(tc->x509, &der);
	assert_int_equal(CRYPTO_BUFFER_len(leaf), (size_t)n);
	assert_memory_equal(CRYPTO_BUFFER_data(leaf), der, (size_t)n);
	OPENSSL_free(der);
}

static void test_handshake_and_data_every_suite(void **state)
{
	struct tls_server *ec = server_with(&fx.ec_good, TLS_SNI_ANY);
	struct tls_server *rsa = server_with(&fx.rsa_good, TLS_SNI_ANY);
	size_t big = 3 * TLS_RECORD_PLAINTEXT_BYTES_MAX + 123;
	uint8_t *data = malloc(big);
	fill_pattern(data, big, 7);
	for (size_t i = 0; i < ARRAY_LEN(suites); i++) {
		const struct suite_case *sc = &suites[i];
		struct tls_stats st = { 0 };
		struct pair p;
		struct client_opts o = opts_for(sc);
		pair_init(&p, sc->rsa ? rsa : ec, &st, &o, NULL);
		if (!handshake(&p))
			fail_msg("%s: handshake failed: %s", sc->name, tls_error_name(tls_conn_error(p.sv)));
		struct tls_conn_info info = tls_conn_info(p.sv);
		assert_int_equal(info.version, sc->version);
		if (info.cipher_id != sc->want_id)
			fail_msg("%s: negotiated 0x%04x", sc->name, info.cipher_id);
		assert_int_equal(SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(p.cl)), sc->want_id);
		assert_true(info.alpn_http11);
		assert_false(info.resumed);
		expect_peer_cert(p.cl, sc->rsa ? &fx.rsa_good : &fx.ec_good);
		assert_int_equal(st.handshakes, 1);
		assert_int_equal(sc->version == TLS1_3_VERSION ? st.handshakes_tls13 : st.handshakes_tls12, 1);
		/* Both ways: small, exactly one record, several records. */
		size_t sizes[] = { 1, 100, TLS_RECORD_PLAINTEXT_BYTES_MAX, big };
		for (size_t k = 0; k < ARRAY_LEN(sizes); k++) {
			server_send_all(&p, data, sizes[k]);
			client_send_all(&p, data + k, sizes[k]);
		}
		assert_int_equal(tls_conn_error(p.sv), TLS_ERR_NONE);
		pair_free(&p);
	}
	free(data);
	tls_server_free(ec);
	tls_server_free(rsa);
}

/* Gathering: many small pieces become few records, every byte in order. */
static void test_write_gathers_iovecs(void **state)
{
	struct tls_server *s = server_with(&fx.ec_good, TLS_SNI_ANY);
	struct tls_stats st = { 0 };
	struct pair p;
	struct client_opts o = { .alpn = ALPN_H11 };
	pair_init(&p, s, &st, &o, NULL);
	assert_true(handshake(&p));
	enum { PIECES = 300, PIECE = 37 };
	uint8_t data[PIECES * PIECE];
	fill_pattern(data, sizeof data, 3);
	struct iovec iov[PIECES + 1];
	for (int i = 0; i < PIECES; i++)
		iov[i] = (struct iovec){ .iov_base = data + i * PIECE, .iov_len = PIECE };
	iov[PIECES] = (struct iovec){ .iov_base = data, .iov_len = 0 };
	assert_int_equal(tls_conn_write(p.sv, iov, PIECES + 1), sizeof data);
	size_t wire = tls_conn_out_pending(p.sv);
	/* One record of 11,100 bytes: its header and tag, not 300 of them. */
	assert_true(wire < sizeof data + 64);
	to_client(&p);
	uint8_t got[sizeof data];
	assert_int_equal(client_read(&p, got, sizeof got), sizeof data);
	assert_memory_equal(got, data, sizeof data);
	pair_free(&p);
	tls_server_free(s);
}

static void test_alpn(void **state)
{
	struct tls_server *s = server_with(&fx.ec_good, TLS_SNI_ANY);
	struct tls_stats st = { 0 };
	const char *offers[] = { ALPN_H2_H11, NULL, ALPN_H2, "\x08http/1.0" };
	for (size_t v = 0; v < 2; v++) {
		for (size_t i = 0; i < ARRAY_LEN(offers); i++) {
			struct pair p;
			struct client_opts o = { .max_version = v ? TLS1_2_VERSION : TLS1_3_VERSION,
						 .alpn = offers[i] };
			pair_init(&p, s, &st, &o, NULL);
			bool ok = handshake(&p);
			if (i < 2) {
				assert_true(ok);
				assert_int_equal(tls_conn_info(p.sv).alpn_http11, i == 0);
				const uint8_t *sel;
				unsigned len;
				SSL_get0_alpn_selected(p.cl, &sel, &len);
				assert_int_equal(len, i == 0 ? 8 : 0);
			} else {
				assert_false(ok);
				assert_int_equal(tls_conn_error(p.sv), TLS_ERR_ALPN);
				assert_false(tls_conn_established(p.sv));
				/* The client was told why: a no_application_protocol alert. */
				assert_int_equal(client_step(&p), -1);
				uint32_t e = ERR_peek_error();
				assert_int_equal(ERR_GET_REASON(e), SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL);
				ERR_clear_error();
			}
			pair_free(&p);
		}
	}
	assert_int_equal(st.handshake_failed[TLS_ERR_ALPN], 4);
	assert_int_equal(st.handshakes, 4);
	tls_server_free(s);
}

static void expect_refused(struct tls_server *s, const struct client_opts *o, enum tls_error want)
{
	struct tls_stats st = { 0 };
	struct pair p;
	pair_init(&p, s, &st, o, NULL);
	assert_false(handshake(&p));
	if (tls_conn_error(p.sv) != want)
		fail_msg("want %s, got %s", tls_error_name(want), tls_error_name(tls_conn_error(p.sv)));
	assert_int_equal(st.handshake_failed[want], 1);
	uint64_t total = 0;
	for (int e = 0; e < TLS_ERR_COUNT; e++)
		total += st.handshake_failed[e] + st.failed_after_handshake[e];
	assert_int_equal(total, 1);
	assert_int_equal(st.handshakes, 0);
	/* Further input is discarded, the status stays. */
	uint8_t junk[10] = { 0x16, 3, 3, 0, 5 }, out[16];
	size_t used, got;
	assert_int_equal(tls_conn_input(p.sv, junk, sizeof junk, &used, out, sizeof out, &got), TLS_FAILED);
	assert_int_equal(used, sizeof junk);
	assert_int_equal(got, 0);
	pair_free(&p);
}

static void test_refusals_classified(void **state)
{
	struct tls_server *ec = server_with(&fx.ec_good, TLS_SNI_ANY);
	struct tls_server *rsa = server_with(&fx.rsa_good, TLS_SNI_ANY);
	/* A client without TLS 1.2 (BoringSSL still speaks 1.1 as a client). */
	struct client_opts old = { .min_version = TLS1_VERSION, .max_version = TLS1_1_VERSION };
	expect_refused(ec, &old, TLS_ERR_VERSION);
	/* CBC suites only, and an RSA suite against an ECDSA certificate. */
	struct client_opts cbc = { .max_version = TLS1_2_VERSION, .ciphers = "ECDHE-ECDSA-AES128-SHA" };
	expect_refused(ec, &cbc, TLS_ERR_CIPHER);
	struct client_opts wrong_auth = { .max_version = TLS1_2_VERSION, .ciphers = "ECDHE-RSA-AES128-GCM-SHA256" };
	expect_refused(ec, &wrong_auth, TLS_ERR_CIPHER);
	struct client_opts rsa_kx = { .max_version = TLS1_2_VERSION, .ciphers = "AES128-GCM-SHA256" };
	expect_refused(rsa, &rsa_kx, TLS_ERR_CIPHER);
	/* The client rejects our (self-signed) certificate: its alert, counted. */
	for (int v = 0; v < 2; v++) {
		struct client_opts verify = { .verify = true, .max_version = v ? TLS1_2_VERSION : TLS1_3_VERSION };
		expect_refused(ec, &verify, TLS_ERR_PEER_ALERT);
	}
	tls_server_free(ec);
	tls_server_free(rsa);
}

static void count_want(void *ctx)
{
	(*(int *)ctx)++;
}

/*
 * Autocert before its first certificate: a hello for the domain asks for one and the
 * handshake waits (TLS_WAIT_CERT) instead of failing; once the certificate is swapped
 * in (the generation moves), an input-less call carries the handshake on to the end.
 * Another name is refused without asking; one waiting handshake fails as the owner
 * says at its deadline (TLS_ERR_NO_CERT).
 */
static void test_autocert_waits_for_the_first_certificate(void **state)
{
	static const uint8_t no_input[1];
	for (int v = 0; v < 2; v++) {
		struct tls_server *s = tls_server_new(NULL, TLS_SNI_REQUIRED, 0);
		assert_non_null(s);
		int wanted = 0;
		tls_server_set_acme(s, NAME, count_want, &wanted);
		uint64_t gen0 = tls_server_cert_generation(s);
		struct tls_stats st = { 0 };

		struct pair other;
		struct client_opts oo = { .sni = "other.example", .max_version = v ? TLS1_2_VERSION : TLS1_3_VERSION };
		pair_init(&other, s, &st, &oo, NULL);
		assert_false(handshake(&other));
		assert_int_equal(tls_conn_error(other.sv), TLS_ERR_SNI);
		assert_int_equal(wanted, 0);
		pair_free(&other);

		struct pair late;
		struct client_opts o = { .sni = "RELAY.example.", .max_version = v ? TLS1_2_VERSION : TLS1_3_VERSION };
		pair_init(&late, s, &st, &o, NULL);
		assert_int_equal(SSL_get_error(late.cl, client_step(&late)), SSL_ERROR_WANT_READ);
		assert_int_equal(to_server(&late), TLS_WAIT_CERT);
		assert_true(tls_conn_waiting_cert(late.sv));
		tls_conn_fail(late.sv, TLS_ERR_NO_CERT); /* its deadline passed */
		assert_false(tls_conn_waiting_cert(late.sv));
		assert_int_equal(tls_conn_error(late.sv), TLS_ERR_NO_CERT);
		pair_free(&late);

		struct pair p;
		pair_init(&p, s, &st, &o, NULL);
		assert_int_equal(SSL_get_error(p.cl, client_step(&p)), SSL_ERROR_WANT_READ);
		assert_int_equal(to_server(&p), TLS_WAIT_CERT);
		assert_int_equal(wanted, 2);
		assert_int_equal(tls_conn_out_pending(p.sv), 0); /* nothing said yet */
		/* still none: it keeps waiting */
		assert_int_equal(server_feed(&p, no_input, 0), TLS_WAIT_CERT);
		tls_server_swap_cert(s, load_test_cert(&fx.ec_good));
		assert_true(tls_server_cert_generation(s) != gen0);
		assert_int_equal(server_feed(&p, no_input, 0), TLS_WANT_INPUT);
		assert_false(tls_conn_waiting_cert(p.sv));
		assert_true(tls_conn_out_pending(p.sv) > 0); /* the server's flight */
		assert_true(handshake(&p));
		assert_true(tls_conn_established(p.sv));
		pair_free(&p);
		tls_server_free(s);
	}
}

static void test_sni_policies(void **state)
{
	struct {
		enum tls_sni_policy policy;
		const struct test_cert *cert;
		const char *sni;
		bool ok;
	} cases[] = {
		{ TLS_SNI_ANY, &fx.ec_good, "other.example", true },
		{ TLS_SNI_ANY, &fx.ec_good, NULL, true },
		{ TLS_SNI_MATCH_IF_SENT, &fx.ec_good, NAME, true },
		{ TLS_SNI_MATCH_IF_SENT, &fx.ec_good, "RELAY.Example", true },
		{ TLS_SNI_MATCH_IF_SENT, &fx.ec_good, NULL, true },
		{ TLS_SNI_MATCH_IF_SENT, &fx.ec_good, "other.example", false },
		{ TLS_SNI_MATCH_IF_SENT, &fx.ec_good, "sub." NAME, false },
		{ TLS_SNI_REQUIRED, &fx.ec_good, NAME, true },
		{ TLS_SNI_REQUIRED, &fx.ec_good, NULL, false },
		{ TLS_SNI_REQUIRED, &fx.wildcard, "a.example.com", true },
		{ TLS_SNI_REQUIRED, &fx.wildcard, "a.b.example.com", false },
		{ TLS_SNI_REQUIRED, &fx.wildcard, "example.com", false },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct tls_server *s = server_with(cases[i].cert, cases[i].policy);
		for (int v = 0; v < 2; v++) {
			struct tls_stats st = { 0 };
			struct pair p;
			struct client_opts o = { .sni = cases[i].sni, .max_version = v ? TLS1_2_VERSION : TLS1_3_VERSION };
			pair_init(&p, s, &st, &o, NULL);
			bool ok = handshake(&p);
			if (ok != cases[i].ok)
				fail_msg("case %zu (sni %s): %s", i, cases[i].sni ? cases[i].sni : "none",
					 tls_error_name(tls_conn_error(p.sv)));
			if (!ok) {
				assert_int_equal(tls_conn_error(p.sv), TLS_ERR_SNI);
				assert_int_equal(st.handshake_failed[TLS_ERR_SNI], 1);
				assert_int_equal(client_step(&p), -1); /* told: unrecognized_name */
				assert_int_equal(ERR_GET_REASON(ERR_peek_error()), SSL_R_TLSV1_ALERT_UNRECOGNIZED_NAME);
				ERR_clear_error();
			}
			pair_free(&p);
		}
		tls_server_free(s);
	}
}

/* ------------------------------------------------------------------ not TLS */

static void test_first_bytes_kind(void **state)
{
	struct {
		const char *p;
		size_t n;
		enum tls_first_bytes want;
	} cases[] = {
		{ "", 0, TLS_FIRST_NEED_MORE },
		{ "\x16", 1, TLS_FIRST_TLS },
		{ "\x16\x03\x01", 3, TLS_FIRST_TLS },
		{ "G", 1, TLS_FIRST_NEED_MORE },
		{ "GET ", 4, TLS_FIRST_NEED_MORE },
		{ "GET /", 5, TLS_FIRST_HTTP },
		{ "GET /v1/server HTTP/1.1", 23, TLS_FIRST_HTTP },
		{ "HEAD /", 6, TLS_FIRST_HTTP },
		{ "POST /x", 7, TLS_FIRST_HTTP },
		{ "PUT /x", 6, TLS_FIRST_HTTP },
		{ "OPTIONS * HTTP/1.1", 18, TLS_FIRST_HTTP },
		{ "P", 1, TLS_FIRST_NEED_MORE },
		{ "PRI * HTTP/2.0", 14, TLS_FIRST_OTHER }, /* Go does not answer these */
		{ "GET x", 5, TLS_FIRST_OTHER },
		{ "DELETE /", 8, TLS_FIRST_OTHER },
		{ "get /", 5, TLS_FIRST_OTHER },
		{ "\x15\x03\x03\x00\x02", 5, TLS_FIRST_OTHER },
		{ "\x80\x2e\x01", 3, TLS_FIRST_OTHER }, /* an SSLv2-style hello */
		{ "X", 1, TLS_FIRST_OTHER },
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++)
		if (tls_first_bytes_kind((const uint8_t *)cases[i].p, cases[i].n) != cases[i].want)
			fail_msg("case %zu (%s)", i, cases[i].p);
}

static void test_plaintext_http_on_tls_port(void **state)
{
	struct tls_server *s = server_with(&fx.ec_good, TLS_SNI_ANY);
	static const char req[] = "GET /healthz HTTP/1.1\r\nHost: relay.example\r\n\r\n";
	/* Whole, then split after 1, 2 .. 4 bytes (decided at the fifth). */
	for (size_t split = 0; split < 5; split++) {
		struct tls_stats st = { 0 };
		struct tls_conn *c = tls_conn_new(s, &st);
		uint8_t out[64];
		size_t used, got;
		enum tls_status r;
		if (split > 0) {
			r = tls_conn_input(c, (const uint8_t *)req, split, &used, out, sizeof out, &got);
			assert_int_equal(r, TLS_WANT_INPUT);
			assert_int_equal(used, split);
		}
		r = tls_conn_input(c, (const uint8_t *)req + split, sizeof req - 1 - split, &used, out, sizeof out, &got);
		assert_int_equal(r, TLS_FAILED);
		assert_int_equal(used, sizeof req - 1 - split);
		assert_int_equal(got, 0);
		assert_int_equal(tls_conn_error(c), TLS_ERR_PLAINTEXT_HTTP);
		assert_int_equal(st.handshake_failed[TLS_ERR_PLAINTEXT_HTTP], 1);
		/* Nothing of TLS goes back: the engine answers in plaintext. */
		assert_int_equal(tls_conn_out_pending(c), 0);
		tls_conn_free(c);
	}
	assert_string_equal(TLS_PLAINTEXT_HTTP_RESPONSE,
			    "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n");
	/* Other bytes: not TLS, closed without an answer. */
	static const uint8_t ssh[] = "SSH-2.0-OpenSSH_9.2\r\n";
	struct tls_stats st = { 0 };
	struct tls_conn *c = tls_conn_new(s, &st);
	uint8_t out[16];
	size_t used, got;
	assert_int_equal(tls_conn_input(c, ssh, sizeof ssh - 1, &used, out, sizeof out, &got), TLS_FAILED);
	assert_int_equal(tls_conn_error(c), TLS_ERR_NOT_TLS);
	assert_int_equal(st.handshake_failed[TLS_ERR_NOT_TLS], 1);
	assert_int_equal(tls_conn_out_pending(c), 0);
	tls_conn_free(c);
	tls_server_free(s);
}

static void test_record_too_large(void **state)
{
	struct tls_server *s = server_with(&fx.ec_good, TLS_SNI_ANY);
	/* A first record announcing more than any TLS record may carry. */
	struct tls_stats st = { 0 };
	struct tls_conn *c = tls_conn_new(s, &st);
	uint8_t rec[5 + 64] = { 0x16, 0x03, 0x01, 0x48, 0x01 }; /* 18433 bytes */
	uint8_t out[16];
	size_t used, got;
	enum tls_status r = tls_conn_input(c, rec, sizeof rec, &used, out, sizeof out, &got);
	assert_int_equal(r, TLS_FAILED);
	assert_int_equal(tls_conn_error(c), TLS_ERR_RECORD_TOO_LARGE);
	assert_int_equal(st.handshake_failed[TLS_ERR_RECORD_TOO_LARGE], 1);
	tls_conn_free(c);
	/* After the handshake, an application record over the limit. */
	for (int v = 0; v < 2; v++) {
		struct tls_stats st2 = { 0 };
		struct pair p;
		struct client_opts o = { .max_version = v ? TLS1_2_VERSION : TLS1_3_VERSION };
		pair_init(&p, s, &st2, &o, NULL);
		assert_true(handshake(&p));
		uint8_t hdr[5] = { 0x17, 0x03, 0x03, 0x48, 0x01 };
		assert_int_equal(server_feed(&p, hdr, sizeof hdr), TLS_FAILED);
		assert_int_equal(tls_conn_error(p.sv), TLS_ERR_RECORD_TOO_LARGE);
		assert_int_equal(st2.failed_after_handshake[TLS_ERR_RECORD_TOO_LARGE], 1);
		assert_int_equal(st2.handshake_failed[TLS_ERR_RECORD_TOO_LARGE], 0);
		assert_false(tls_conn_established(p.sv));
		pair_free(&p);
	}
	tls_server_free(s);
}

static void test_garbage_after_handshake_is_protocol_error(void **state)
{
	struct tls_server *s = server_with(&fx.ec_good, TLS_SNI_ANY);
	struct tls_stats st = { 0 };
	struct pair p;
	struct client_opts o = { 0 };
	pair_init(&p, s, &st, &o, NULL);
	assert_true(handshake(&p));
	/* Handed to another worker after the handshake: its counters from now on. */
	struct tls_stats other = { 0 };
	tls_conn_set_stats(p.sv, &other);
	/* A well-framed record that does not authenticate. */
	uint8_t rec[5 + 40] = { 0x17, 0x03, 0x03, 0x00, 40 };
	fill_pattern(rec + 5, 40, 9);
	assert_int_equal(server_feed(&p, rec, sizeof rec), TLS_FAILED);
	assert_int_equal(tls_conn_error(p.sv), TLS_ERR_PROTOCOL);
	assert_int_equal(other.failed_after_handshake[TLS_ERR_PROTOCOL], 1);
	assert_int_equal(st.failed_after_handshake[TLS_ERR_PROTOCOL], 0);
	assert_int_equal(st.handshakes, 1);
	/* The server tells the client (bad_record_mac). */
	assert_true(tls_conn_out_pending(p.sv) > 0);
	pair_free(&p);
	tls_server_free(s);
}

/* ------------------------------------------------------------------ timeouts */

static void test_owner_failures(void **state)
{
	struct tls_server *s = server_with(&fx.ec_good, TLS_SNI_ANY);
	struct tls_stats st = { 0 };
	struct pair p;
	struct client_opts o = { 0 };
	pair_init(&p, s, &st, &o, NULL);
	client_step(&p);
	assert_int_equal(to_server(&p), TLS_WANT_INPUT); /* ClientHello in, flight out */
	tls_conn_fail(p.sv, TLS_ERR_TIMEOUT);
	tls_conn_fail(p.sv, TLS_ERR_EOF); /* the first reason stays */
	assert_int_equal(tls_conn_error(p.sv), TLS_ERR_TIMEOUT);
	assert_int_equal(st.handshake_failed[TLS_ERR_TIMEOUT], 1);
	assert_int_equal(st.handshake_failed[TLS_ERR_EOF], 0);
	struct iovec iov = { .iov_base = "x", .iov_len = 1 };
	assert_int_equal(tls_conn_write(p.sv, &iov, 1), 0);
	pair_free(&p);
	tls_server_free(s);
	assert_true(TLS_HANDSHAKE_TIMEOUT_MS >= 1000 && TLS_HANDSHAKE_TIMEOUT_MS <= 30000);
}

/* ------------------------------------------------------------------ resumption */

/* A full handshake that leaves client_last_session holding a ticket. */
static void get_ticket(struct tls_server *s, uint16_t version)
{
	SSL_SESSION_free(client_last_session);
	client_last_session = NULL;
	struct tls_stats st = { 0 };
	struct pair p;
	struct client_opts o = { .min_version = version, .max_version = version, .alpn = ALPN_H11 };
	pair_init(&p, s, &st, &o, NULL);
	assert_true(handshake(&p));
	uint8_t buf[16];
	client_read(&p, buf, sizeof buf); /* TLS 1.3: the NewSessionTicket */
	assert_non_null(client_last_session);
	assert_true(SSL_SESSION_is_resumable(client_last_session));
	pair_free(&p);
}

/* Try to resume with client_last_session; returns whether it did. */
static bool try_resume(struct tls_server *s, uint16_t version, struct tls_stats *st)
{
	SSL_SESSION *sess = client_last_session;
	client_last_session = NULL;
	struct pair p;
	struct client_opts o = { .min_version = version, .max_version = version, .alpn = ALPN_H11 };
	pair_init(&p, s, st, &o, sess);
	SSL_SESSION_free(sess);
	assert_true(handshake(&p));
	bool resumed = tls_conn_info(p.sv).resumed;
	assert_int_equal(resumed, SSL_session_reused(p.cl) == 1);
	uint8_t buf[16];
	client_read(&p, buf, sizeof buf); /* a fresh ticket */
	client_send_all(&p, (const uint8_t *)"after", 5);
	server_send_all(&p, (const uint8_t *)"resumed", 7);
	pair_free(&p);
	return resumed;
}

static void test_resumption_and_ticket_rotation(void **state)
{
	uint16_t versions[] = { TLS1_3_VERSION, TLS1_2_VERSION };
	for (size_t v = 0; v < ARRAY_LEN(versions); v++) {
		struct tls_server *s = server_with(&fx.ec_good, TLS_SNI_ANY);
		struct tls_stats st = { 0 };
		get_ticket(s, versions[v]);
		assert_true(try_resume(s, versions[v], &st));
		assert_int_equal(st.handshakes_resumed, 1);
		/* Not yet time: no rotation. */
		assert_false(tls_server_rotate_ticket_keys(s, T0_MS + TLS_TICKET_KEY_ROTATE_MS - 1));
		/* One rotation: a ticket under the previous key still resumes. */
		get_ticket(s, versions[v]);
		assert_true(tls_server_rotate_ticket_keys(s, T0_MS + TLS_TICKET_KEY_ROTATE_MS));
		assert_true(try_resume(s, versions[v], &st));
		/* Two rotations: that key is gone, a full handshake follows. */
		get_ticket(s, versions[v]);
		assert_true(tls_server_rotate_ticket_keys(s, T0_MS + 2 * TLS_TICKET_KEY_ROTATE_MS));
		assert_true(tls_server_rotate_ticket_keys(s, T0_MS + 3 * TLS_TICKET_KEY_ROTATE_MS));
		assert_false(try_resume(s, versions[v], &st));
		assert_int_equal(st.handshakes_resumed, 2);
		assert_int_equal(st.handshakes, 3);
		/* A ticket from another server (other keys) is ignored, not fatal. */
		struct tls_server *other = server_with(&fx.ec_good, TLS_SNI_ANY);
		get_ticket(other, versions[v]);
		assert_false(try_resume(s, versions[v], &st));
		tls_server_free(other);
		tls_server_free(s);
	}
	SSL_SESSION_free(client_last_session);
	client_last_session = NULL;
}

/* ------------------------------------------------------------------ certificate swap */

static void test_cert_swap_keeps_live_connections(void **state)
{
	struct tls_server *s = server_with(&fx.ec_good, TLS_SNI_ANY);
	struct tls_stats st = { 0 };
	struct client_opts o = { .alpn = ALPN_H11 };
	struct pair live, started, fresh;
	pair_init(&live, s, &st, &o, NULL);
	assert_true(handshake(&live));
	expect_peer_cert(live.cl, &fx.ec_good);
	/* A connection accepted before the swap, whose hello arrives after it. */
	pair_init(&started, s, &st, &o, NULL);

	tls_server_swap_cert(s, load_test_cert(&fx.ec_second));

	pair_init(&fresh, s, &st, &o, NULL);
	assert_true(handshake(&fresh));
	expect_peer_cert(fresh.cl, &fx.ec_second);
	assert_true(handshake(&started));
	expect_peer_cert(started.cl, &fx.ec_good);
	/* The live one works both ways, as before. */
	client_send_all(&live, (const uint8_t *)"still here", 10);
	server_send_all(&live, (const uint8_t *)"and so am I", 11);
	pair_free(&live);
	pair_free(&started);
	pair_free(&fresh);
	/* And back again, with an RSA certificate this time. */
	tls_server_swap_cert(s, load_test_cert(&fx.rsa_good));
	pair_init(&fresh, s, &st, &o, NULL);
	assert_true(handshake(&fresh));
	expect_peer_cert(fresh.cl, &fx.rsa_good);
	pair_free(&fresh);
	tls_server_free(s);
}

/* ------------------------------------------------------------------ close, bounds */

static void test_close_notify_both_ways(void **state)
{
	struct tls_server *s = server_with(&fx.ec_good, TLS_SNI_ANY);
	for (int v = 0; v < 2; v++) {
		struct tls_stats st = { 0 };
		struct client_opts o = { .max_version = v ? TLS1_2_VERSION : TLS1_3_VERSION };
		struct pair p;
		pair_init(&p, s, &st, &o, NULL);
		assert_true(handshake(&p));
		/* Ours: the client reads a clean end. */
		tls_conn_close_notify(p.sv);
		tls_conn_close_notify(p.sv); /* once */
		to_client(&p);
		uint8_t buf[8];
		int rc = SSL_read(p.cl, buf, sizeof buf);
		assert_int_equal(rc, 0);
		assert_int_equal(SSL_get_error(p.cl, rc), SSL_ERROR_ZERO_RETURN);
		struct iovec iov = { .iov_base = "late", .iov_len = 4 };
		assert_int_equal(tls_conn_write(p.sv, &iov, 1), 0);
		/* Theirs: data, then close_notify in the same input. */
		assert_int_equal(SSL_write(p.cl, "bye", 3), 3);
		SSL_shutdown(p.cl);
		assert_int_equal(to_server(&p), TLS_PEER_CLOSED);
		assert_int_equal(p.sv_plain_len, 3);
		assert_int_equal(tls_conn_error(p.sv), TLS_ERR_NONE);
		uint8_t more[5] = { 0x17, 3, 3, 0, 0 }, out[8];
		size_t used, got;
		assert_int_equal(tls_conn_input(p.sv, more, sizeof more, &used, out, sizeof out, &got), TLS_PEER_CLOSED);
		assert_int_equal(used, sizeof more);
		pair_free(&p);
	}
	tls_server_free(s);
}

static void test_output_bound(void **state)
{
	struct tls_server *s = server_with(&fx.ec_good, TLS_SNI_ANY);
	struct tls_stats st = { 0 };
	struct client_opts o = { 0 };
	struct pair p;
	pair_init(&p, s, &st, &o, NULL);
	assert_true(handshake(&p));
	size_t n = 1024 * 1024;
	uint8_t *data = malloc(n);
	fill_pattern(data, n, 11);
	struct iovec iov = { .iov_base = data, .iov_len = n };
	size_t w = tls_conn_write(p.sv, &iov, 1);
	assert_true(w > 0 && w < n);
	assert_true(tls_conn_out_pending(p.sv) <= TLS_OUT_BYTES_MAX);
	assert_true(tls_conn_out_pending(p.sv) > TLS_OUT_BYTES_MAX - TLS_RECORD_BYTES_MAX);
	/* Full: nothing more until it is taken. */
	struct iovec rest = { .iov_base = data + w, .iov_len = n - w };
	assert_int_equal(tls_conn_write(p.sv, &rest, 1), 0);
	assert_int_equal(tls_conn_write(p.sv, &rest, 0), 0);
	to_client(&p);
	uint8_t *got = malloc(n);
	assert_int_equal(client_read(&p, got, n), w);
	assert_memory_equal(got, data, w);
	/* The rest goes out in bounded steps. */
	server_send_all(&p, data + w, n - w);
	free(got);
	free(data);
	pair_free(&p);
	tls_server_free(s);
}

static void test_small_plaintext_buffer(void **state)
{
	struct tls_server *s = server_with(&fx.ec_good, TLS_SNI_ANY);
	size_t caps[] = { 1, 7, 1000 };
	for (size_t i = 0; i < ARRAY_LEN(caps); i++) {
		struct tls_stats st = { 0 };
		struct client_opts o = { 0 };
		struct pair p;
		pair_init(&p, s, &st, &o, NULL);
		p.sv_chunk = caps[i];
		uint8_t req[5000];
		fill_pattern(req, sizeof req, 5);
		/* TLS 1.3: the request rides with the client's Finished. */
		assert_true(handshake_with(&p, req, sizeof req));
		assert_int_equal(p.sv_plain_len, sizeof req);
		assert_memory_equal(p.sv_plain, req, sizeof req);
		client_send_all(&p, req, 3000);
		pair_free(&p);
	}
	tls_server_free(s);
}

/* Every byte of the client's flights in its own tls_conn_input call. */
static void test_byte_at_a_time(void **state)
{
	struct tls_server *s = server_with(&fx.rsa_good, TLS_SNI_ANY);
	for (int v = 0; v < 2; v++) {
		struct tls_stats st = { 0 };
		struct client_opts o = { .max_version = v ? TLS1_2_VERSION : TLS1_3_VERSION, .alpn = ALPN_H11 };
		struct pair p;
		pair_init(&p, s, &st, &o, NULL);
		for (int round = 0; round < 8 && !(tls_conn_established(p.sv) && !SSL_in_init(p.cl)); round++) {
			client_step(&p);
			BIO *w = SSL_get_wbio(p.cl);
			const uint8_t *data;
			size_t n;
			assert_int_equal(BIO_mem_contents(w, &data, &n), 1);
			uint8_t *copy = malloc(n + 1);
			memcpy(copy, data, n);
			BIO_reset(w);
			for (size_t i = 0; i < n; i++) {
				enum tls_status r = server_feed(&p, copy + i, 1);
				assert_true(r == TLS_WANT_INPUT);
				/* At every byte the tracker knows how far the record goes. */
				if (i + 1 < n)
					assert_true(tls_conn_rx_record_remaining(p.sv) > 0 ||
						    (copy[i + 1] >= 0x14 && copy[i + 1] <= 0x17));
			}
			assert_int_equal(tls_conn_rx_record_remaining(p.sv), 0);
			free(copy);
			to_client(&p);
		}
		assert_true(tls_conn_established(p.sv));
		uint8_t msg[300];
		fill_pattern(msg, sizeof msg, 1);
		assert_int_equal(SSL_write(p.cl, msg, sizeof msg), sizeof msg);
		BIO *w = SSL_get_wbio(p.cl);
		const uint8_t *data;
		size_t n;
		BIO_mem_contents(w, &data, &n);
		uint8_t *copy = malloc(n);
		memcpy(copy, data, n);
		BIO_reset(w);
		for (size_t i = 0; i < n; i++)
			assert_int_equal(server_feed(&p, copy + i, 1), TLS_WANT_INPUT);
		free(copy);
		assert_int_equal(p.sv_plain_len, sizeof msg);
		assert_memory_equal(p.sv_plain, msg, sizeof msg);
		pair_free(&p);
	}
	tls_server_free(s);
}

/* ------------------------------------------------------------------ threads */

#define THREAD_WORKERS 3
#define THREAD_CONNS 12

struct worker_arg {
	struct tls_server *s;
	struct tls_stats st; /* one per worker, as in the engine */
	int id;
};

static void *worker_run(void *argp)
{
	struct worker_arg *a = argp;
	for (int i = 0; i < THREAD_CONNS; i++) {
		struct client_opts o = { .max_version = (i + a->id) % 2 ? TLS1_2_VERSION : TLS1_3_VERSION,
					 .alpn = ALPN_H11 };
		struct pair p;
		pair_init(&p, a->s, &a->st, &o, client_last_session);
		SSL_SESSION_free(client_last_session);
		client_last_session = NULL;
		assert_true(handshake(&p));
		uint8_t b[16];
		client_read(&p, b, sizeof b);
		client_send_all(&p, (const uint8_t *)"ping", 4);
		server_send_all(&p, (const uint8_t *)"pong", 4);
		pair_free(&p);
	}
	SSL_SESSION_free(client_last_session);
	client_last_session = NULL;
	return NULL;
}

/* Workers share one server while another thread swaps certificates and rotates
 * ticket keys, as SIGHUP and the rotation timer will (TSan watches this one). */
static void test_threads_share_a_server(void **state)
{
	struct tls_server *s = server_with(&fx.ec_good, TLS_SNI_ANY);
	struct worker_arg args[THREAD_WORKERS];
	pthread_t th[THREAD_WORKERS];
	for (int i = 0; i < THREAD_WORKERS; i++) {
		args[i] = (struct worker_arg){ .s = s, .id = i };
		assert_int_equal(pthread_create(&th[i], NULL, worker_run, &args[i]), 0);
	}
	for (int k = 0; k < 20; k++) {
		tls_server_swap_cert(s, load_test_cert(k % 2 ? &fx.ec_good : &fx.ec_second));
		tls_server_rotate_ticket_keys(s, T0_MS + (uint64_t)(k + 1) * TLS_TICKET_KEY_ROTATE_MS);
		usleep(1000);
	}
	uint64_t done = 0;
	for (int i = 0; i < THREAD_WORKERS; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		done += args[i].st.handshakes;
	}
	assert_int_equal(done, THREAD_WORKERS * THREAD_CONNS);
	tls_server_free(s);
}

/* ------------------------------------------------------------------ memory */

static size_t heap_in_use(void)
{
	struct mallinfo2 mi = mallinfo2();
	return mi.uordblks + mi.hblkhd;
}

static void test_idle_connection_memory(void **state)
{
	if (UNDER_SANITIZER) {
		print_message("idle memory: not measured under a sanitizer (its allocator)\n");
		skip();
	}
	struct tls_server *s = server_with(&fx.ec_good, TLS_SNI_ANY);
	struct tls_stats st = { 0 };
	struct client_opts o = { .alpn = ALPN_H11 };
	const uint16_t versions[] = { TLS1_3_VERSION, TLS1_2_VERSION };
	struct pair *p = calloc(MEM_CONNS, sizeof *p);
	for (size_t v = 0; v < ARRAY_LEN(versions); v++) {
		o.min_version = o.max_version = versions[v];
		/* Warm up: BoringSSL's per-thread and per-process state, our BIO method. */
		pair_init(&p[0], s, &st, &o, NULL);
		assert_true(handshake(&p[0]));
		pair_free(&p[0]);

		size_t before = heap_in_use();
		for (size_t i = 0; i < MEM_CONNS; i++) {
			pair_init(&p[i], s, &st, &o, NULL);
			assert_true(handshake_with(&p[i], "GET / HTTP/1.1\r\n\r\n", 18));
			server_send_all(&p[i], (const uint8_t *)"HTTP/1.1 101\r\n\r\n", 17);
			/* Keep only the server side: the client and the test's buffers go. */
			SSL_free(p[i].cl);
			p[i].cl = NULL;
			free(p[i].sv_plain);
			p[i].sv_plain = NULL;
		}
		size_t after = heap_in_use();
		size_t per_conn = (after - before) / MEM_CONNS;
		print_message("idle TLS %s connection: %zu bytes of heap each (over %u connections)\n",
			      versions[v] == TLS1_3_VERSION ? "1.3" : "1.2", per_conn, MEM_CONNS);
		assert_true(per_conn <= IDLE_CONN_BYTES_MAX);
		for (size_t i = 0; i < MEM_CONNS; i++)
			tls_conn_free(p[i].sv);
	}

	/* Buffers come back: a full record each way, then idle again. */
	o.min_version = o.max_version = TLS1_3_VERSION;
	for (size_t i = 0; i < MEM_BUSY_CONNS; i++) {
		pair_init(&p[i], s, &st, &o, NULL);
		assert_true(handshake(&p[i]));
		uint8_t b[8];
		client_read(&p[i], b, sizeof b);
	}
	uint8_t *rec = malloc(TLS_RECORD_PLAINTEXT_BYTES_MAX);
	fill_pattern(rec, TLS_RECORD_PLAINTEXT_BYTES_MAX, 2);
	/* One exchange first, so malloc's own caches (glibc counts its per-thread cache
	 * as in use) are in the state the busy round leaves them in. */
	server_send_all(&p[0], rec, TLS_RECORD_PLAINTEXT_BYTES_MAX);
	client_send_all(&p[0], rec, TLS_RECORD_PLAINTEXT_BYTES_MAX);
	/* The client's memory BIOs keep their largest size; fresh ones before each
	 * measure leave only what the connections themselves hold. */
	for (size_t i = 0; i < MEM_BUSY_CONNS; i++)
		SSL_set_bio(p[i].cl, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
	size_t idle = heap_in_use();
	for (size_t i = 0; i < MEM_BUSY_CONNS; i++) {
		p[i].sv_plain_len = 0;
		server_send_all(&p[i], rec, TLS_RECORD_PLAINTEXT_BYTES_MAX);
		client_send_all(&p[i], rec, TLS_RECORD_PLAINTEXT_BYTES_MAX);
	}
	for (size_t i = 0; i < MEM_BUSY_CONNS; i++)
		SSL_set_bio(p[i].cl, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
	size_t busy_then_idle = heap_in_use();
	long kept = ((long)busy_then_idle - (long)idle) / (long)MEM_BUSY_CONNS;
	print_message("after a 16 KiB record each way: %ld bytes per connection beyond idle\n", kept);
	assert_true(kept <= (long)RELEASED_SLACK_BYTES);
	free(rec);
	for (size_t i = 0; i < MEM_BUSY_CONNS; i++)
		pair_free(&p[i]);
	free(p);
	tls_server_free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_load_good_ec_and_rsa),
		cmocka_unit_test(test_load_unreadable),
		cmocka_unit_test(test_load_bad_pem),
		cmocka_unit_test(test_load_unsupported_key),
		cmocka_unit_test(test_load_key_mismatch),
		cmocka_unit_test(test_load_dates),
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_handshake_and_data_every_suite),
		cmocka_unit_test(test_write_gathers_iovecs),
		cmocka_unit_test(test_alpn),
		cmocka_unit_test(test_refusals_classified),
		cmocka_unit_test(test_sni_policies),
		cmocka_unit_test(test_autocert_waits_for_the_first_certificate),
		cmocka_unit_test(test_first_bytes_kind),
		cmocka_unit_test(test_plaintext_http_on_tls_port),
		cmocka_unit_test(test_record_too_large),
		cmocka_unit_test(test_garbage_after_handshake_is_protocol_error),
		cmocka_unit_test(test_owner_failures),
		cmocka_unit_test(test_resumption_and_ticket_rotation),
		cmocka_unit_test(test_cert_swap_keeps_live_connections),
		cmocka_unit_test(test_close_notify_both_ways),
		cmocka_unit_test(test_output_bound),
		cmocka_unit_test(test_small_plaintext_buffer),
		cmocka_unit_test(test_byte_at_a_time),
		cmocka_unit_test(test_threads_share_a_server),
		cmocka_unit_test(test_idle_connection_memory),
	};
	return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
