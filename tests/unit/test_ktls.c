/*
 * test_ktls.c - the kernel key handover (transport/ktls.h), proven without kernel TLS.
 *
 * For every suite of TLS 1.2 and 1.3 a session runs between a BoringSSL client and our
 * server connection; after ktls_export, the ciphertext of both directions is recorded
 * and every record is decrypted here, with EVP_AEAD, using exactly the key, IV, salt
 * and sequence numbers of the exported crypto_info structs, then sealed again the way
 * the kernel would seal it (its nonce, its counter) and compared byte for byte. A
 * record sealed that way is also fed to the client, which must accept it: the
 * client cannot tell the "kernel" from BoringSSL. The record layer here (nonces,
 * additional data, TLS 1.3 inner type) is written from RFC 5288, 7905 and 8446, not
 * from ktls.c.
 *
 * Then the traps, each shown failing the naive way and passing ours: TLS 1.3 session
 * tickets sealed at the next write, bytes (whole records, a partial record, a partial
 * header) received after the client's Finished, a KeyUpdate, plaintext not yet handed
 * out. Last, ktls_install on a real loopback TCP connection: where the kernel has no
 * TLS (this build machine) it reports that, and user-space TLS carries on over the same
 * socket; where it has, the kernel carries the records both ways.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/aead.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/common.h"
#include "tls_peer.h"
#include "transport/ktls.h"
#include "transport/tls_internal.h" /* tls_conn_ssl: the test reads sequence numbers */

#define NAME "relay.example"
#define ALPN_H11 "\x08http/1.1"
#define T0_MS 1000u
#define AEAD_TAG_BYTES 16u
#define TLS12_EXPLICIT_NONCE_BYTES 8u
#define CONTENT_ALERT 21u
#define CONTENT_HANDSHAKE 22u
#define CONTENT_APPDATA 23u
#define WIRE_CAP (256u * 1024u)

static const char request[] = "GET /v1/server HTTP/1.1\r\nHost: relay.example\r\nUpgrade: websocket\r\n\r\n";

static struct fixture {
	EVP_PKEY *ec, *rsa;
	struct test_cert ec_cert, rsa_cert;
	struct tls_server *ec_srv, *rsa_srv;
} fx;

static int setup_all(void **state)
{
	fx.ec = make_key(KEY_EC_P256);
	fx.rsa = make_key(KEY_RSA_2048);
	test_cert_make(&fx.ec_cert, fx.ec, NAME, -DAY_S, 30 * DAY_S);
	test_cert_make(&fx.rsa_cert, fx.rsa, NAME, -DAY_S, 30 * DAY_S);
	fx.ec_srv = tls_server_new(load_test_cert(&fx.ec_cert), TLS_SNI_ANY, T0_MS);
	fx.rsa_srv = tls_server_new(load_test_cert(&fx.rsa_cert), TLS_SNI_ANY, T0_MS);
	return fx.ec_srv && fx.rsa_srv ? 0 : -1;
}

static int teardown_all(void **state)
{
	tls_server_free(fx.ec_srv);
	tls_server_free(fx.rsa_srv);
	test_cert_free(&fx.ec_cert);
	test_cert_free(&fx.rsa_cert);
	EVP_PKEY_free(fx.ec);
	EVP_PKEY_free(fx.rsa);
	SSL_SESSION_free(client_last_session);
	client_last_session = NULL;
	return 0;
}

/* ------------------------------------------------------------------ the kernel's record layer */

/* One direction's parameters, read back out of the exported crypto_info. */
struct kparams {
	uint16_t version;
	uint16_t cipher;
	uint8_t key[32];
	size_t key_len;
	uint8_t salt[4]; /* GCM */
	uint8_t iv[12];  /* GCM: 8 bytes (TLS 1.3: static IV tail; TLS 1.2: first explicit nonce); ChaCha: 12 */
	uint64_t seq;    /* of the first record after the export */
};

static uint64_t be64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static struct kparams params_of(const struct ktls_crypto *kc)
{
	struct kparams k = { .version = kc->u.info.version, .cipher = kc->u.info.cipher_type };
	assert_true(k.version == TLS_1_2_VERSION || k.version == TLS_1_3_VERSION);
	switch (k.cipher) {
	case TLS_CIPHER_AES_GCM_128: {
		const struct tls12_crypto_info_aes_gcm_128 *g = &kc->u.aes_gcm_128;
		assert_int_equal(kc->len, sizeof *g);
		k.key_len = sizeof g->key;
		memcpy(k.key, g->key, sizeof g->key);
		memcpy(k.salt, g->salt, sizeof g->salt);
		memcpy(k.iv, g->iv, sizeof g->iv);
		k.seq = be64(g->rec_seq);
		break;
	}
	case TLS_CIPHER_AES_GCM_256: {
		const struct tls12_crypto_info_aes_gcm_256 *g = &kc->u.aes_gcm_256;
		assert_int_equal(kc->len, sizeof *g);
		k.key_len = sizeof g->key;
		memcpy(k.key, g->key, sizeof g->key);
		memcpy(k.salt, g->salt, sizeof g->salt);
		memcpy(k.iv, g->iv, sizeof g->iv);
		k.seq = be64(g->rec_seq);
		break;
	}
	case TLS_CIPHER_CHACHA20_POLY1305: {
		const struct tls12_crypto_info_chacha20_poly1305 *g = &kc->u.chacha20_poly1305;
		assert_int_equal(kc->len, sizeof *g);
		k.key_len = sizeof g->key;
		memcpy(k.key, g->key, sizeof g->key);
		memcpy(k.iv, g->iv, sizeof g->iv);
		k.seq = be64(g->rec_seq);
		break;
	}
	default:
		fail_msg("unexpected cipher_type %u", k.cipher);
	}
	return k;
}

static const EVP_AEAD *aead_of(const struct kparams *k)
{
	switch (k->cipher) {
	case TLS_CIPHER_AES_GCM_128:
		return EVP_aead_aes_128_gcm();
	case TLS_CIPHER_AES_GCM_256:
		return EVP_aead_aes_256_gcm();
	default:
		return EVP_aead_chacha20_poly1305();
	}
}

static bool tls12_gcm(const struct kparams *k)
{
	return k->version == TLS_1_2_VERSION && k->cipher != TLS_CIPHER_CHACHA20_POLY1305;
}

/* The nonce of the i-th record after the export. TLS 1.2 GCM: salt + the explicit
 * part (from the record when opening; the kernel's counter, iv + i, when sealing).
 * Otherwise the 12-byte static IV XOR the sequence number (RFC 7905 §2, 8446 §5.3). */
static void nonce_of(const struct kparams *k, uint64_t i, const uint8_t *explicit_part, uint8_t out[12])
{
	if (tls12_gcm(k)) {
		memcpy(out, k->salt, 4);
		if (explicit_part)
			memcpy(out + 4, explicit_part, 8);
		else
			put64(out + 4, be64(k->iv) + i);
		return;
	}
	if (k->cipher == TLS_CIPHER_CHACHA20_POLY1305) {
		memcpy(out, k->iv, 12);
	} else {
		memcpy(out, k->salt, 4);
		memcpy(out + 4, k->iv, 8);
	}
	uint8_t seq[8];
	put64(seq, k->seq + i);
	for (int b = 0; b < 8; b++)
		out[4 + b] ^= seq[b];
}

/* TLS 1.2 additional data: seq, type, version, plaintext length (RFC 5246 §6.2.3.3). */
static void tls12_ad(uint8_t ad[13], uint64_t seq, uint8_t type, size_t pt_len)
{
	put64(ad, seq);
	ad[8] = type;
	ad[9] = 0x03;
	ad[10] = 0x03;
	ad[11] = (uint8_t)(pt_len >> 8);
	ad[12] = (uint8_t)pt_len;
}

/* Open the i-th record after the export; false when it does not authenticate. */
static bool open_record(const struct kparams *k, uint64_t i, const uint8_t *rec, size_t rec_len, uint8_t *pt,
			size_t *pt_len, uint8_t *type)
{
	EVP_AEAD_CTX ctx;
	assert_int_equal(EVP_AEAD_CTX_init(&ctx, aead_of(k), k->key, k->key_len, AEAD_TAG_BYTES, NULL), 1);
	const uint8_t *body = rec + TLS_RECORD_HEADER_BYTES;
	size_t blen = rec_len - TLS_RECORD_HEADER_BYTES;
	uint8_t nonce[12];
	bool ok;
	if (k->version == TLS_1_3_VERSION) {
		nonce_of(k, i, NULL, nonce);
		size_t n = 0;
		ok = EVP_AEAD_CTX_open(&ctx, pt, &n, blen, nonce, 12, body, blen, rec, TLS_RECORD_HEADER_BYTES);
		while (ok && n > 0 && pt[n - 1] == 0) /* RFC 8446 §5.4 padding */
			n--;
		ok = ok && n > 0;
		if (ok) {
			*type = pt[n - 1];
			*pt_len = n - 1;
		}
	} else {
		size_t explicit_len = tls12_gcm(k) ? TLS12_EXPLICIT_NONCE_BYTES : 0;
		assert_true(blen >= explicit_len + AEAD_TAG_BYTES);
		nonce_of(k, i, explicit_len ? body : NULL, nonce);
		uint8_t ad[13];
		tls12_ad(ad, k->seq + i, rec[0], blen - explicit_len - AEAD_TAG_BYTES);
		size_t n = 0;
		ok = EVP_AEAD_CTX_open(&ctx, pt, &n, blen, nonce, 12, body + explicit_len, blen - explicit_len, ad,
				       sizeof ad);
		*type = rec[0];
		*pt_len = n;
	}
	EVP_AEAD_CTX_cleanup(&ctx);
	ERR_clear_error();
	return ok;
}

/* Seal as the kernel does the i-th record after the export. Returns its length. */
static size_t seal_record(const struct kparams *k, uint64_t i, uint8_t type, const uint8_t *pt, size_t pt_len,
			  uint8_t *out)
{
	EVP_AEAD_CTX ctx;
	assert_int_equal(EVP_AEAD_CTX_init(&ctx, aead_of(k), k->key, k->key_len, AEAD_TAG_BYTES, NULL), 1);
	uint8_t nonce[12];
	nonce_of(k, i, NULL, nonce);
	size_t n = 0, body;
	if (k->version == TLS_1_3_VERSION) {
		uint8_t *inner = malloc(pt_len + 1);
		memcpy(inner, pt, pt_len);
		inner[pt_len] = type;
		body = pt_len + 1 + AEAD_TAG_BYTES;
		uint8_t hdr[5] = { CONTENT_APPDATA, 3, 3, (uint8_t)(body >> 8), (uint8_t)body };
		memcpy(out, hdr, 5);
		assert_int_equal(EVP_AEAD_CTX_seal(&ctx, out + 5, &n, body, nonce, 12, inner, pt_len + 1, hdr, 5), 1);
		free(inner);
	} else {
		size_t explicit_len = tls12_gcm(k) ? TLS12_EXPLICIT_NONCE_BYTES : 0;
		body = explicit_len + pt_len + AEAD_TAG_BYTES;
		uint8_t hdr[5] = { type, 3, 3, (uint8_t)(body >> 8), (uint8_t)body };
		memcpy(out, hdr, 5);
		memcpy(out + 5, nonce + 4, explicit_len);
		uint8_t ad[13];
		tls12_ad(ad, k->seq + i, type, pt_len);
		assert_int_equal(EVP_AEAD_CTX_seal(&ctx, out + 5 + explicit_len, &n, body - explicit_len, nonce, 12, pt,
						   pt_len, ad, sizeof ad),
				 1);
		n += explicit_len;
	}
	assert_int_equal(n, body);
	EVP_AEAD_CTX_cleanup(&ctx);
	return 5 + body;
}

/*
 * The proof for one direction: every record of wire[0..n) opens with the exported
 * parameters at its position, its content is the next part of plain, it is
 * application data, and sealing that content again gives the same bytes. Returns the
 * number of records.
 */
static uint64_t prove(const struct ktls_crypto *kc, const uint8_t *wire, size_t n, const uint8_t *plain,
		      size_t plain_len)
{
	struct kparams k = params_of(kc);
	uint8_t *pt = malloc(TLS_RECORD_BYTES_MAX), *again = malloc(TLS_RECORD_BYTES_MAX);
	size_t off = 0, done = 0;
	uint64_t i = 0;
	while (off < n) {
		assert_true(n - off >= TLS_RECORD_HEADER_BYTES);
		size_t len = TLS_RECORD_HEADER_BYTES + ((size_t)wire[off + 3] << 8 | wire[off + 4]);
		assert_true(off + len <= n);
		size_t pt_len = 0;
		uint8_t type = 0;
		if (!open_record(&k, i, wire + off, len, pt, &pt_len, &type))
			fail_msg("record %llu (seq %llu) does not open with the exported key", (unsigned long long)i,
				 (unsigned long long)(k.seq + i));
		assert_int_equal(type, CONTENT_APPDATA);
		assert_true(done + pt_len <= plain_len);
		assert_memory_equal(pt, plain + done, pt_len);
		done += pt_len;
		assert_int_equal(seal_record(&k, i, type, pt, pt_len, again), len);
		assert_memory_equal(again, wire + off, len);
		off += len;
		i++;
	}
	assert_int_equal(done, plain_len);
	free(pt);
	free(again);
	return i;
}

/* ------------------------------------------------------------------ sessions */

struct suite_case {
	const char *name;
	uint16_t version;
	const char *tls12_cipher;
	uint16_t tls13_suite;
	bool rsa;
	uint16_t kernel_cipher;
};

static const struct suite_case suites[] = {
	{ "1.3 AES-128-GCM", TLS1_3_VERSION, NULL, SUITE_TLS13_AES_128_GCM, false, TLS_CIPHER_AES_GCM_128 },
	{ "1.3 AES-256-GCM", TLS1_3_VERSION, NULL, SUITE_TLS13_AES_256_GCM, false, TLS_CIPHER_AES_GCM_256 },
	{ "1.3 CHACHA20-POLY1305", TLS1_3_VERSION, NULL, SUITE_TLS13_CHACHA20, false, TLS_CIPHER_CHACHA20_POLY1305 },
	{ "1.3 AES-128-GCM RSA", TLS1_3_VERSION, NULL, SUITE_TLS13_AES_128_GCM, true, TLS_CIPHER_AES_GCM_128 },
	{ "1.2 ECDHE-ECDSA-AES128-GCM-SHA256", TLS1_2_VERSION, "ECDHE-ECDSA-AES128-GCM-SHA256", 0, false,
	  TLS_CIPHER_AES_GCM_128 },
	{ "1.2 ECDHE-ECDSA-AES256-GCM-SHA384", TLS1_2_VERSION, "ECDHE-ECDSA-AES256-GCM-SHA384", 0, false,
	  TLS_CIPHER_AES_GCM_256 },
	{ "1.2 ECDHE-ECDSA-CHACHA20-POLY1305", TLS1_2_VERSION, "ECDHE-ECDSA-CHACHA20-POLY1305", 0, false,
	  TLS_CIPHER_CHACHA20_POLY1305 },
	{ "1.2 ECDHE-RSA-AES128-GCM-SHA256", TLS1_2_VERSION, "ECDHE-RSA-AES128-GCM-SHA256", 0, true,
	  TLS_CIPHER_AES_GCM_128 },
	{ "1.2 ECDHE-RSA-AES256-GCM-SHA384", TLS1_2_VERSION, "ECDHE-RSA-AES256-GCM-SHA384", 0, true,
	  TLS_CIPHER_AES_GCM_256 },
	{ "1.2 ECDHE-RSA-CHACHA20-POLY1305", TLS1_2_VERSION, "ECDHE-RSA-CHACHA20-POLY1305", 0, true,
	  TLS_CIPHER_CHACHA20_POLY1305 },
};

static void start_pair(struct pair *p, const struct suite_case *sc, struct tls_stats *st)
{
	/* TLS 1.2 with False Start, so the client's first data rides with its Finished
	 * there too (it needs ALPN). */
	struct client_opts o = { .min_version = sc->version,
				 .max_version = sc->version,
				 .ciphers = sc->tls12_cipher,
				 .tls13_suite = sc->tls13_suite,
				 .alpn = ALPN_H11,
				 .false_start = true };
	pair_init(p, sc->rsa ? fx.rsa_srv : fx.ec_srv, st, &o, NULL);
}

/* Take the client's pending ciphertext. */
static size_t client_wire(struct pair *p, uint8_t *out, size_t cap)
{
	BIO *w = SSL_get_wbio(p->cl);
	const uint8_t *data;
	size_t n;
	assert_int_equal(BIO_mem_contents(w, &data, &n), 1);
	assert_true(n <= cap);
	memcpy(out, data, n);
	assert_int_equal(BIO_reset(w), 1);
	return n;
}

/*
 * Handshake until the client has sent its Finished and the request right behind it,
 * and hand the server those bytes: the first `feed` of them (all when SIZE_MAX). The
 * server's output is not taken after that, and the rest of the bytes are left in
 * *rest (returned length).
 */
static size_t handshake_until_finished(struct pair *p, size_t feed, uint8_t *rest)
{
	for (int round = 0; round < 8; round++) {
		int rc = client_step(p);
		if (rc == 1) {
			assert_int_equal(SSL_write(p->cl, request, sizeof request - 1), sizeof request - 1);
			uint8_t *fin = malloc(WIRE_CAP);
			size_t n = client_wire(p, fin, WIRE_CAP);
			size_t first = MIN(feed, n);
			server_feed(p, fin, first);
			memcpy(rest, fin + first, n - first);
			free(fin);
			assert_true(tls_conn_established(p->sv));
			return n - first;
		}
		assert_int_equal(SSL_get_error(p->cl, rc), SSL_ERROR_WANT_READ);
		to_server(p);
		to_client(p);
	}
	fail_msg("no Finished");
	return 0;
}

/* Hand the server's waiting output to the client and let it finish and read. */
static void client_catch_up(struct pair *p)
{
	to_client(p);
	if (SSL_in_init(p->cl))
		assert_int_equal(client_step(p), 1);
	uint8_t buf[64];
	client_read(p, buf, sizeof buf);
}

static enum ktls_result export_settled(struct pair *p, struct ktls_keys *k)
{
	enum ktls_result r = ktls_export(p->sv, k);
	if (r == KTLS_TX_PENDING) {
		client_catch_up(p);
		r = ktls_export(p->sv, k);
	}
	return r;
}

/* Record n bytes the server sends (in the given write sizes) and check the client gets them. */
static size_t record_server(struct pair *p, const uint8_t *data, const size_t *sizes, size_t count, uint8_t *wire)
{
	size_t off = 0, wlen = 0;
	for (size_t i = 0; i < count; i++) {
		struct iovec iov = { .iov_base = (void *)(data + off), .iov_len = sizes[i] };
		assert_int_equal(tls_conn_write(p->sv, &iov, 1), sizes[i]);
		off += sizes[i];
		size_t n = tls_conn_out_pending(p->sv);
		assert_true(wlen + n <= WIRE_CAP);
		assert_int_equal(tls_conn_out_take(p->sv, wire + wlen, n), n);
		assert_int_equal(BIO_write(SSL_get_rbio(p->cl), wire + wlen, (int)n), (int)n);
		wlen += n;
	}
	uint8_t *got = malloc(off + 1);
	assert_int_equal(client_read(p, got, off + 1), off);
	assert_memory_equal(got, data, off);
	free(got);
	return wlen;
}

/* Record the client's writes and check the server delivers them. */
static size_t record_client(struct pair *p, const uint8_t *data, const size_t *sizes, size_t count, uint8_t *wire)
{
	size_t off = 0;
	for (size_t i = 0; i < count; i++) {
		assert_int_equal(SSL_write(p->cl, data + off, (int)sizes[i]), (int)sizes[i]);
		off += sizes[i];
	}
	size_t wlen = client_wire(p, wire, WIRE_CAP);
	size_t before = p->sv_plain_len;
	assert_int_equal(server_feed(p, wire, wlen), TLS_WANT_INPUT);
	assert_int_equal(p->sv_plain_len - before, off);
	assert_memory_equal(p->sv_plain + before, data, off);
	return wlen;
}

/* ------------------------------------------------------------------ the proof */

static void test_export_proof_every_suite(void **state)
{
	static const size_t s_sizes[] = { 1, 129, TLS_RECORD_PLAINTEXT_BYTES_MAX, 3 * TLS_RECORD_PLAINTEXT_BYTES_MAX + 5 };
	static const size_t c_sizes[] = { 4, TLS_RECORD_PLAINTEXT_BYTES_MAX, 20000, 1 };
	size_t total = 0;
	for (size_t i = 0; i < ARRAY_LEN(s_sizes); i++)
		total += s_sizes[i] + c_sizes[i];
	uint8_t *data = malloc(total), *s2c = malloc(WIRE_CAP), *c2s = malloc(WIRE_CAP), *rest = malloc(WIRE_CAP);
	fill_pattern(data, total, 42);
	size_t s_total = 0;
	for (size_t i = 0; i < ARRAY_LEN(s_sizes); i++)
		s_total += s_sizes[i];

	for (size_t c = 0; c < ARRAY_LEN(suites); c++) {
		const struct suite_case *sc = &suites[c];
		struct tls_stats st = { 0 };
		struct pair p;
		start_pair(&p, sc, &st);
		assert_int_equal(handshake_until_finished(&p, SIZE_MAX, rest), 0);
		/* Bytes past Finished: the request was decrypted in user space. */
		assert_int_equal(p.sv_plain_len, sizeof request - 1);
		assert_memory_equal(p.sv_plain, request, sizeof request - 1);
		struct tls_conn_info info = tls_conn_info(p.sv);
		assert_int_equal(info.version, sc->version);

		/* The server still owes the client its last flight (TLS 1.2) or a ticket. */
		struct ktls_keys k;
		assert_int_equal(ktls_export(p.sv, &k), KTLS_TX_PENDING);
		client_catch_up(&p);
		if (ktls_export(p.sv, &k) != KTLS_OK)
			fail_msg("%s: export refused", sc->name);
		assert_int_equal(k.tx.u.info.cipher_type, sc->kernel_cipher);
		assert_int_equal(k.rx.u.info.cipher_type, sc->kernel_cipher);
		assert_int_equal(k.tx.u.info.version, sc->version == TLS1_3_VERSION ? TLS_1_3_VERSION : TLS_1_2_VERSION);
		struct kparams tx = params_of(&k.tx), rx = params_of(&k.rx);
		assert_int_equal(tx.seq, SSL_get_read_sequence(p.cl));
		assert_int_equal(rx.seq, SSL_get_write_sequence(p.cl));
		assert_memory_not_equal(tx.key, rx.key, tx.key_len);

		size_t s_wire = record_server(&p, data, s_sizes, ARRAY_LEN(s_sizes), s2c);
		size_t c_wire = record_client(&p, data + s_total, c_sizes, ARRAY_LEN(c_sizes), c2s);
		uint64_t s_recs = prove(&k.tx, s2c, s_wire, data, s_total);
		uint64_t c_recs = prove(&k.rx, c2s, c_wire, data + s_total, total - s_total);
		assert_true(s_recs >= 6 && c_recs >= 4);

		/* The "kernel" sends the next record: the client reads it as its own. */
		uint8_t rec[64];
		size_t n = seal_record(&tx, s_recs, CONTENT_APPDATA, (const uint8_t *)"from the kernel", 15, rec);
		assert_int_equal(BIO_write(SSL_get_rbio(p.cl), rec, (int)n), (int)n);
		uint8_t got[32];
		assert_int_equal(client_read(&p, got, sizeof got), 15);
		assert_memory_equal(got, "from the kernel", 15);
		ktls_keys_wipe(&k);
		pair_free(&p);
	}
	free(data);
	free(s2c);
	free(c2s);
	free(rest);
}

/* ------------------------------------------------------------------ trap 1: tickets */

static void test_trap_tls13_tickets_move_the_write_sequence(void **state)
{
	/* What BoringSSL does: a TLS 1.3 server that completed its handshake has sealed
	 * nothing yet; its ticket is sealed, counted and emitted at the next write. */
	SSL_CTX *sctx = SSL_CTX_new(TLS_method());
	assert_int_equal(SSL_CTX_use_PrivateKey(sctx, fx.ec), 1);
	assert_int_equal(SSL_CTX_use_certificate(sctx, fx.ec_cert.x509), 1);
	SSL *raw = SSL_new(sctx);
	SSL_CTX_free(sctx);
	SSL_set_bio(raw, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
	SSL_set_accept_state(raw);
	struct client_opts o = { .min_version = TLS1_3_VERSION };
	SSL *cl = client_new(&o, NULL);
	for (int i = 0; i < 4 && (SSL_in_init(raw) || SSL_in_init(cl)); i++) {
		SSL_do_handshake(cl);
		const uint8_t *d;
		size_t n;
		BIO_mem_contents(SSL_get_wbio(cl), &d, &n);
		BIO_write(SSL_get_rbio(raw), d, (int)n);
		BIO_reset(SSL_get_wbio(cl));
		SSL_do_handshake(raw);
		BIO_mem_contents(SSL_get_wbio(raw), &d, &n);
		BIO_write(SSL_get_rbio(cl), d, (int)n);
		BIO_reset(SSL_get_wbio(raw));
	}
	ERR_clear_error();
	assert_false(SSL_in_init(raw));
	assert_int_equal(SSL_get_write_sequence(raw), 0);
	assert_int_equal(BIO_ctrl_pending(SSL_get_wbio(raw)), 0);
	SSL_write(raw, NULL, 0);
	ERR_clear_error();
	assert_int_equal(SSL_get_write_sequence(raw), 1);        /* the ticket's record */
	assert_true(BIO_ctrl_pending(SSL_get_wbio(raw)) > 100); /* and its bytes */
	SSL_free(raw);
	SSL_free(cl);

	/* Ours: the ticket is sealed with the handshake's end and export waits for it.
	 * Twice: the kernel's first record at the exported sequence, which the client
	 * reads, and at the sequence a naive export reads before the ticket is sealed,
	 * which the client refuses (the ticket's nonce again: bad record MAC). */
	for (int naive = 0; naive < 2; naive++) {
		struct tls_stats st = { 0 };
		struct pair p;
		start_pair(&p, &suites[0], &st);
		uint8_t rest[16];
		handshake_until_finished(&p, SIZE_MAX, rest);
		assert_int_equal(SSL_get_write_sequence(tls_conn_ssl(p.sv)), 1);
		struct ktls_keys k;
		assert_int_equal(ktls_export(p.sv, &k), KTLS_TX_PENDING);
		assert_int_equal(ktls_export(p.sv, &k), KTLS_TX_PENDING); /* until it is taken */
		size_t ticket_bytes = to_client(&p);
		assert_true(ticket_bytes > 100);
		assert_int_equal(ktls_export(p.sv, &k), KTLS_OK);
		struct kparams tx = params_of(&k.tx);
		assert_int_equal(tx.seq, 1);
		if (naive)
			tx.seq = 0;
		uint8_t rec[64], got[16];
		size_t n = seal_record(&tx, 0, CONTENT_APPDATA, (const uint8_t *)"ok", 2, rec);
		assert_int_equal(BIO_write(SSL_get_rbio(p.cl), rec, (int)n), (int)n);
		int rc = SSL_read(p.cl, got, sizeof got);
		if (!naive) {
			assert_int_equal(rc, 2);
			assert_memory_equal(got, "ok", 2);
		} else {
			assert_true(rc <= 0);
			assert_int_equal(ERR_GET_REASON(ERR_peek_last_error()), SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC);
			ERR_clear_error();
		}
		ktls_keys_wipe(&k);
		pair_free(&p);
	}
}

/* ------------------------------------------------------------------ trap 2: bytes past Finished */

static void test_trap_bytes_past_finished(void **state)
{
	for (size_t c = 0; c < ARRAY_LEN(suites); c++) {
		const struct suite_case *sc = &suites[c];
		/* cut: how much of the record after Finished reaches the server with it.
		 * 0: none (the boundary), 3: part of its header, 5: exactly its header,
		 * 12: part of its body. */
		static const size_t cuts[] = { 0, 3, 5, 12 };
		for (size_t k_cut = 0; k_cut < ARRAY_LEN(cuts); k_cut++) {
			struct tls_stats st = { 0 };
			struct pair p;
			start_pair(&p, sc, &st);
			/* Find where the request's record starts: run to Finished without it. */
			uint8_t *rest = malloc(WIRE_CAP);
			size_t full = 0;
			{
				/* Build the client's last flight + request, then split it. */
				for (int round = 0; round < 8; round++) {
					int rc = client_step(&p);
					if (rc == 1)
						break;
					to_server(&p);
					to_client(&p);
				}
				size_t fin_len = client_wire(&p, rest, WIRE_CAP);
				assert_int_equal(SSL_write(p.cl, request, sizeof request - 1), sizeof request - 1);
				full = fin_len + client_wire(&p, rest + fin_len, WIRE_CAP - fin_len);
				size_t rec_len = full - fin_len;
				size_t first = fin_len + cuts[k_cut];
				server_feed(&p, rest, first);
				assert_true(tls_conn_established(p.sv));
				client_catch_up(&p); /* tickets / last flight out of the way */
				struct ktls_keys k;
				enum ktls_result r = ktls_export(p.sv, &k);
				if (cuts[k_cut] == 0) {
					/* On the boundary: export now; the request is for the kernel. */
					assert_int_equal(r, KTLS_OK);
					struct kparams rx = params_of(&k.rx);
					uint8_t pt[256], type;
					size_t pt_len;
					assert_true(open_record(&rx, 0, rest + fin_len, rec_len, pt, &pt_len, &type));
					assert_int_equal(pt_len, sizeof request - 1);
				} else {
					assert_int_equal(r, KTLS_RX_PARTIAL_RECORD);
					size_t off = first;
					/* Exactly what tls_conn_rx_record_remaining says, never more. */
					while (tls_conn_rx_record_remaining(p.sv) > 0) {
						size_t want = tls_conn_rx_record_remaining(p.sv);
						assert_true(off + want <= full);
						assert_int_equal(server_feed(&p, rest + off, want), TLS_WANT_INPUT);
						off += want;
					}
					assert_int_equal(off, full);
					assert_int_equal(p.sv_plain_len, sizeof request - 1);
					assert_int_equal(ktls_export(p.sv, &k), KTLS_OK);
				}
				/* Either way the next record the client sends opens at the exported
				 * sequence, and the one the naive export (at the handshake's end)
				 * would have given does not. */
				struct kparams rx = params_of(&k.rx);
				assert_int_equal(rx.seq, SSL_get_write_sequence(p.cl) - (cuts[k_cut] == 0 ? 1 : 0));
				uint8_t wire[256];
				assert_int_equal(SSL_write(p.cl, "next", 4), 4);
				size_t n = client_wire(&p, wire, sizeof wire);
				uint8_t pt[64], type;
				size_t pt_len;
				uint64_t at = cuts[k_cut] == 0 ? 1 : 0; /* the request was the kernel's record 0 */
				assert_true(open_record(&rx, at, wire, n, pt, &pt_len, &type));
				assert_int_equal(pt_len, 4);
				if (cuts[k_cut] != 0) {
					struct kparams naive = rx;
					naive.seq -= 1; /* what SSL_get_read_sequence said before the request */
					assert_false(open_record(&naive, 0, wire, n, pt, &pt_len, &type));
				}
				ktls_keys_wipe(&k);
			}
			free(rest);
			pair_free(&p);
		}
	}
}

/* Plaintext not yet handed out (TLS_AGAIN) must be taken before the export. */
static void test_rx_pending_until_drained(void **state)
{
	struct tls_stats st = { 0 };
	struct pair p;
	start_pair(&p, &suites[1], &st);
	uint8_t rest[16];
	handshake_until_finished(&p, SIZE_MAX, rest);
	client_catch_up(&p);
	struct ktls_keys k;
	assert_int_equal(ktls_export(p.sv, &k), KTLS_OK);
	uint8_t msg[1000], wire[2000], out[10];
	fill_pattern(msg, sizeof msg, 8);
	assert_int_equal(SSL_write(p.cl, msg, sizeof msg), sizeof msg);
	size_t n = client_wire(&p, wire, sizeof wire), used, got;
	assert_int_equal(tls_conn_input(p.sv, wire, n, &used, out, sizeof out, &got), TLS_AGAIN);
	assert_int_equal(got, sizeof out);
	assert_int_equal(ktls_export(p.sv, &k), KTLS_RX_PENDING);
	size_t total = got, off = used;
	enum tls_status r;
	do {
		r = tls_conn_input(p.sv, wire + off, n - off, &used, out, sizeof out, &got);
		off += used;
		total += got;
	} while (r == TLS_AGAIN);
	assert_int_equal(off, n);
	assert_int_equal(r, TLS_WANT_INPUT);
	assert_int_equal(total, sizeof msg);
	assert_int_equal(ktls_export(p.sv, &k), KTLS_OK);
	assert_int_equal(params_of(&k.rx).seq, 2);
	ktls_keys_wipe(&k);
	pair_free(&p);
}

/* A KeyUpdate read in user space: the answer is flushed, the export has the new keys. */
static void test_key_update_before_export(void **state)
{
	for (size_t c = 0; c < 3; c++) { /* the TLS 1.3 suites */
		struct tls_stats st = { 0 };
		struct pair p;
		start_pair(&p, &suites[c], &st);
		uint8_t rest[16];
		handshake_until_finished(&p, SIZE_MAX, rest);
		struct ktls_keys before, after;
		assert_int_equal(export_settled(&p, &before), KTLS_OK);
		assert_int_equal(SSL_key_update(p.cl, SSL_KEY_UPDATE_REQUESTED), 1);
		assert_int_equal(SSL_write(p.cl, "x", 1), 1);
		assert_int_equal(to_server(&p), TLS_WANT_INPUT);
		/* Our KeyUpdate answer waits in the output: the export says so. */
		assert_true(tls_conn_out_pending(p.sv) > 0);
		assert_int_equal(ktls_export(p.sv, &after), KTLS_TX_PENDING);
		client_catch_up(&p);
		assert_int_equal(ktls_export(p.sv, &after), KTLS_OK);
		struct kparams tx0 = params_of(&before.tx), tx1 = params_of(&after.tx);
		struct kparams rx0 = params_of(&before.rx), rx1 = params_of(&after.rx);
		assert_memory_not_equal(tx0.key, tx1.key, tx0.key_len);
		assert_memory_not_equal(rx0.key, rx1.key, rx0.key_len);
		assert_int_equal(tx1.seq, 0); /* a new key starts a new count */
		assert_int_equal(rx1.seq, 1); /* "x" was its first record */
		uint8_t s2c[4096], c2s[4096], data[600];
		fill_pattern(data, sizeof data, 4);
		size_t sizes[] = { 300 };
		size_t sw = record_server(&p, data, sizes, 1, s2c);
		size_t cw = record_client(&p, data + 300, sizes, 1, c2s);
		prove(&after.tx, s2c, sw, data, 300);
		prove(&after.rx, c2s, cw, data + 300, 300);
		ktls_keys_wipe(&before);
		ktls_keys_wipe(&after);
		pair_free(&p);
	}
}

/*
 * After the keys are in the kernel, a KeyUpdate is followed with ktls_next_generation
 * alone (BoringSSL's state is gone then). Receive: the client's KeyUpdate opens under
 * the installed key as a handshake record with update_requested, and its next records
 * open under the next generation from sequence 0. Send: our KeyUpdate sealed under the
 * installed key, then data sealed under the next generation, and BoringSSL's client
 * reads that data.
 */
static void test_key_update_after_install(void **state)
{
	for (size_t c = 0; c < 3; c++) { /* the TLS 1.3 suites */
		struct tls_stats st = { 0 };
		struct pair p;
		start_pair(&p, &suites[c], &st);
		uint8_t rest[16];
		handshake_until_finished(&p, SIZE_MAX, rest);
		struct ktls_keys k;
		struct ktls_secrets sec;
		assert_int_equal(export_settled(&p, &k), KTLS_OK);
		assert_true(ktls_export_secrets(p.sv, &sec));
		struct kparams rx0 = params_of(&k.rx), tx0 = params_of(&k.tx);

		/* the client's KeyUpdate, then data under its next key */
		uint8_t data[512], wire[4096], pt[TLS_RECORD_BYTES_MAX];
		fill_pattern(data, sizeof data, 9);
		assert_int_equal(SSL_key_update(p.cl, SSL_KEY_UPDATE_REQUESTED), 1);
		assert_int_equal(SSL_write(p.cl, data, 200), 200);
		size_t n = client_wire(&p, wire, sizeof wire);
		size_t len = TLS_RECORD_HEADER_BYTES + ((size_t)wire[3] << 8 | wire[4]), pt_len = 0;
		uint8_t type = 0;
		assert_true(open_record(&rx0, 0, wire, len, pt, &pt_len, &type));
		assert_int_equal(type, KTLS_RECORD_HANDSHAKE);
		assert_int_equal(ktls_key_update_request(pt, pt_len), 1);
		struct ktls_crypto rx1;
		assert_true(ktls_next_generation(&sec, false, &rx1));
		assert_int_equal(params_of(&rx1).seq, 0);
		assert_int_equal(prove(&rx1, wire + len, n - len, data, 200), 1);

		/* our answer under the installed send key, then data under the next one */
		static const uint8_t ku[] = { 24, 0, 0, 1, 0 };
		size_t w = seal_record(&tx0, 0, KTLS_RECORD_HANDSHAKE, ku, sizeof ku, wire);
		struct ktls_crypto tx1;
		assert_true(ktls_next_generation(&sec, true, &tx1));
		struct kparams tx1p = params_of(&tx1);
		w += seal_record(&tx1p, 0, CONTENT_APPDATA, data + 200, 300, wire + w);
		assert_int_equal(BIO_write(SSL_get_rbio(p.cl), wire, (int)w), (int)w);
		uint8_t got[301];
		assert_int_equal(client_read(&p, got, sizeof got), 300);
		assert_memory_equal(got, data + 200, 300);

		/* a second generation follows from the first */
		struct ktls_crypto rx2;
		assert_true(ktls_next_generation(&sec, false, &rx2));
		assert_memory_not_equal(params_of(&rx2).key, params_of(&rx1).key, rx0.key_len);
		assert_int_equal(ktls_key_update_request(ku, sizeof ku), 0);
		assert_int_equal(ktls_key_update_request(ku, 4), -1);
		ktls_secrets_wipe(&sec);
		ktls_keys_wipe(&k);
		pair_free(&p);
	}
}

/* The record-type reader stays inside the control bytes it is given: a first header
 * claiming more than there is ends the walk (found by fuzz_ktls), and a well-formed
 * record type is read. */
static void test_record_type_reader_bounds(void **state)
{
	union {
		uint8_t b[64];
		struct cmsghdr align;
	} u;
	memset(&u, 0, sizeof u);
	struct cmsghdr h = { .cmsg_len = CMSG_LEN(1), .cmsg_level = SOL_TLS, .cmsg_type = TLS_GET_RECORD_TYPE };
	memcpy(u.b, &h, sizeof h);
	u.b[CMSG_LEN(0)] = KTLS_RECORD_ALERT;
	assert_int_equal(ktls_record_type(u.b, CMSG_SPACE(1)), KTLS_RECORD_ALERT);
	/* the type byte would be just past the bytes given */
	uint8_t *tight = malloc(CMSG_LEN(0));
	memcpy(tight, u.b, CMSG_LEN(0));
	assert_int_equal(ktls_record_type(tight, CMSG_LEN(0)), KTLS_RECORD_APPLICATION_DATA);
	free(tight);
	/* nothing, or less than a header */
	assert_int_equal(ktls_record_type(u.b, 0), KTLS_RECORD_APPLICATION_DATA);
	assert_int_equal(ktls_record_type(u.b, sizeof h - 1), KTLS_RECORD_APPLICATION_DATA);
}

static void test_not_established(void **state)
{
	struct tls_stats st = { 0 };
	struct pair p;
	start_pair(&p, &suites[0], &st);
	struct ktls_keys k;
	memset(&k, 0xaa, sizeof k);
	assert_int_equal(ktls_export(p.sv, &k), KTLS_NOT_ESTABLISHED);
	static const struct ktls_keys zero;
	assert_memory_equal(&k, &zero, sizeof k); /* nothing half-filled */
	client_step(&p);
	to_server(&p);
	assert_int_equal(ktls_export(p.sv, &k), KTLS_NOT_ESTABLISHED);
	tls_conn_fail(p.sv, TLS_ERR_TIMEOUT);
	assert_int_equal(ktls_export(p.sv, &k), KTLS_NOT_ESTABLISHED);
	pair_free(&p);
	for (int r = 0; r < KTLS_RESULT_COUNT; r++)
		for (int s = r + 1; s < KTLS_RESULT_COUNT; s++)
			assert_string_not_equal(ktls_result_name(r), ktls_result_name(s));
}

/* ------------------------------------------------------------------ a real socket */

static void tcp_pair(int *client, int *server)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof a;
	int ls = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(ls >= 0);
	assert_int_equal(bind(ls, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(listen(ls, 1), 0);
	assert_int_equal(getsockname(ls, (struct sockaddr *)&a, &alen), 0);
	*client = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(connect(*client, (struct sockaddr *)&a, sizeof a), 0);
	*server = accept(ls, NULL, NULL);
	assert_true(*server >= 0);
	close(ls);
}

static void send_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		assert_true(w > 0);
		p += w;
		n -= (size_t)w;
	}
}

static void recv_exact(int fd, uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t r = recv(fd, p, n, 0);
		assert_true(r > 0);
		p += r;
		n -= (size_t)r;
	}
}

/* Client ciphertext -> socket -> server connection; server ciphertext -> socket -> client. */
static void socket_round(struct pair *p, int cfd, int sfd, uint8_t *buf)
{
	size_t n = client_wire(p, buf, WIRE_CAP);
	if (n > 0) {
		send_all(cfd, buf, n);
		recv_exact(sfd, buf, n);
		server_feed(p, buf, n);
	}
	n = tls_conn_out_take(p->sv, buf, WIRE_CAP);
	if (n > 0) {
		send_all(sfd, buf, n);
		recv_exact(cfd, buf, n);
		assert_int_equal(BIO_write(SSL_get_rbio(p->cl), buf, (int)n), (int)n);
	}
}

static void test_install_on_loopback(void **state)
{
	int err = 0;
	enum ktls_result probe = ktls_probe(&err);
	assert_true(probe == KTLS_OK || probe == KTLS_NO_KERNEL_TLS);
	if (probe == KTLS_NO_KERNEL_TLS)
		assert_int_equal(err, ENOENT);
	print_message("kernel TLS on this machine: %s (%s)\n", ktls_result_name(probe),
		      probe == KTLS_OK ? "the kernel carries the records below" : strerror(err));

	int cfd, sfd;
	tcp_pair(&cfd, &sfd);
	struct tls_stats st = { 0 };
	struct pair p;
	start_pair(&p, &suites[0], &st);
	uint8_t *buf = malloc(WIRE_CAP);
	bool sent = false;
	for (int round = 0; round < 8 && !(sent && tls_conn_established(p.sv) && !SSL_in_init(p.cl)); round++) {
		int rc = client_step(&p);
		if (rc == 1 && !sent) {
			assert_int_equal(SSL_write(p.cl, request, sizeof request - 1), sizeof request - 1);
			sent = true;
		}
		socket_round(&p, cfd, sfd, buf);
	}
	assert_true(tls_conn_established(p.sv));
	assert_int_equal(p.sv_plain_len, sizeof request - 1);
	uint8_t scratch[64];
	client_read(&p, scratch, sizeof scratch);

	struct ktls_keys k;
	assert_int_equal(ktls_export(p.sv, &k), KTLS_OK);
	enum ktls_result r = ktls_install(sfd, &k, &err);
	ktls_keys_wipe(&k);
	assert_int_equal(r, probe);
	static const char reply[] = "HTTP/1.1 101 Switching Protocols\r\n\r\n";
	uint8_t got[128];
	if (r == KTLS_OK) {
		assert_int_equal(err, 0);
		/* The kernel encrypts what we send and decrypts what we receive. */
		send_all(sfd, (const uint8_t *)reply, sizeof reply - 1);
		ssize_t n = recv(cfd, buf, WIRE_CAP, 0);
		assert_true(n > 0);
		BIO_write(SSL_get_rbio(p.cl), buf, (int)n);
		assert_int_equal(client_read(&p, got, sizeof got), sizeof reply - 1);
		assert_memory_equal(got, reply, sizeof reply - 1);
		assert_int_equal(SSL_write(p.cl, "ping", 4), 4);
		size_t w = client_wire(&p, buf, WIRE_CAP);
		send_all(cfd, buf, w);
		recv_exact(sfd, got, 4);
		assert_memory_equal(got, "ping", 4);
	} else {
		/* Nothing changed on the socket: user-space TLS carries on over it. */
		assert_int_equal(r, KTLS_NO_KERNEL_TLS);
		assert_int_equal(err, ENOENT);
		struct iovec iov = { .iov_base = (void *)reply, .iov_len = sizeof reply - 1 };
		assert_int_equal(tls_conn_write(p.sv, &iov, 1), sizeof reply - 1);
		socket_round(&p, cfd, sfd, buf);
		assert_int_equal(client_read(&p, got, sizeof got), sizeof reply - 1);
		assert_memory_equal(got, reply, sizeof reply - 1);
		assert_int_equal(SSL_write(p.cl, "ping", 4), 4);
		socket_round(&p, cfd, sfd, buf);
		assert_int_equal(p.sv_plain_len, sizeof request - 1 + 4);
	}

	/* Not a TCP socket: refused with the errno, nothing crashes. */
	int u = socket(AF_INET, SOCK_DGRAM, 0), pipefd[2];
	assert_int_equal(pipe(pipefd), 0);
	assert_int_equal(ktls_install(u, &k, &err), KTLS_ULP_REFUSED);
	assert_true(err != 0);
	assert_int_equal(ktls_install(pipefd[0], &k, &err), KTLS_ULP_REFUSED);
	assert_int_equal(err, ENOTSOCK);
	close(u);
	close(pipefd[0]);
	close(pipefd[1]);
	close(cfd);
	close(sfd);
	free(buf);
	pair_free(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_export_proof_every_suite),
		cmocka_unit_test(test_trap_tls13_tickets_move_the_write_sequence),
		cmocka_unit_test(test_trap_bytes_past_finished),
		cmocka_unit_test(test_rx_pending_until_drained),
		cmocka_unit_test(test_key_update_before_export),
		cmocka_unit_test(test_key_update_after_install),
		cmocka_unit_test(test_record_type_reader_bounds),
		cmocka_unit_test(test_not_established),
		cmocka_unit_test(test_install_on_loopback),
	};
	return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
