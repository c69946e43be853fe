/*
 * fuzz_tls_cert.c - libFuzzer target for transport/tls_cert.c: the operator's
 * certificate chain and private key files (--tls-cert, --tls-key, and on SIGHUP), read
 * by tls_cert_from_pem. BoringSSL parses the PEM and DER; the relay's own code walks
 * the chain, bounds it, checks the key type, the key match and every certificate's
 * dates, and writes the refusal text an operator sees.
 *
 * Input: byte 0 picks how the two files are made:
 *   bits 0-1 the certificate file: 0 the rest's first part as raw text; 1 that part as
 *            DER in one PEM CERTIFICATE block; 2 a good leaf, then that part as a DER
 *            intermediate (so the date checks run on fuzzed certificates); 3 a good
 *            leaf, then that part as raw text;
 *   bits 2-3 the key file: 0, 1 the good key (PEM); 2 the second part as raw text;
 *            3 the second part as DER in a PEM PRIVATE KEY block;
 *   bits 4-5 the clock: now, 0 (1970), the year 9999, or now plus or minus bytes 3-6
 *            (up to about 68 years).
 * Bytes 1-2: where the rest is cut into the two parts (modulo its length + 1).
 *
 * Oracles: a certificate comes back exactly when the result is OK; a refusal has a
 * result name, a fix, and a reason that is one line of printable ASCII (no file
 * contents: it may only say which file and what is wrong); the same files and clock
 * give the same answer twice; an accepted chain's earliest notAfter is not before now.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/base64.h>
#include <openssl/bio.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "core/common.h"
#include "transport/tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_HEAD_BYTES 7
#define FZ_PEM_BYTES_MAX (64u * 1024u)
#define FZ_YEAR_9999_S 253402300799ll

static char *good_cert_pem, *good_key_pem;
static size_t good_cert_len, good_key_len;

/* One P-256 key and a self-signed certificate valid from an hour ago for a century. */
static void init_once(void)
{
	if (good_cert_pem)
		return;
	EVP_PKEY *key = EVP_PKEY_new();
	EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
	ASSERT(key && ec && EC_KEY_generate_key(ec) && EVP_PKEY_assign_EC_KEY(key, ec));
	X509 *x = X509_new();
	ASSERT(x && X509_set_version(x, X509_VERSION_3));
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	ASSERT(X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
	       X509_gmtime_adj(X509_getm_notAfter(x), 100L * 366 * 86400));
	X509_NAME *n = X509_get_subject_name(x);
	ASSERT(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const uint8_t *)"relay.example", -1, -1, 0));
	ASSERT(X509_set_issuer_name(x, n) && X509_set_pubkey(x, key) && X509_sign(x, key, EVP_sha256()));
	BIO *cb = BIO_new(BIO_s_mem()), *kb = BIO_new(BIO_s_mem());
	ASSERT(PEM_write_bio_X509(cb, x) && PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL));
	const uint8_t *cp, *kp;
	ASSERT(BIO_mem_contents(cb, &cp, &good_cert_len) && BIO_mem_contents(kb, &kp, &good_key_len));
	good_cert_pem = malloc(good_cert_len);
	good_key_pem = malloc(good_key_len);
	ASSERT(good_cert_pem && good_key_pem);
	memcpy(good_cert_pem, cp, good_cert_len);
	memcpy(good_key_pem, kp, good_key_len);
	BIO_free(cb);
	BIO_free(kb);
	X509_free(x);
	EVP_PKEY_free(key);
}

/* Append p[0..n) to out as one PEM block of this label; returns the new length. */
static size_t put_pem(char *out, size_t at, const char *label, const uint8_t *p, size_t n)
{
	at += (size_t)sprintf(out + at, "-----BEGIN %s-----\n", label);
	for (size_t i = 0; i < n; i += 48) {
		size_t k = MIN((size_t)48, n - i);
		at += EVP_EncodeBlock((uint8_t *)out + at, p + i, k);
		out[at++] = '\n';
	}
	at += (size_t)sprintf(out + at, "-----END %s-----\n", label);
	return at;
}

static size_t put_raw(char *out, size_t at, const void *p, size_t n)
{
	memcpy(out + at, p, n);
	return at + n;
}

static void check_refusal(const struct tls_load_error *e)
{
	ASSERT(e->result != TLS_LOAD_OK && e->result < TLS_LOAD_RESULT_COUNT);
	ASSERT(tls_load_result_name(e->result) != NULL && e->fix != NULL);
	size_t n = strnlen(e->reason, sizeof e->reason);
	ASSERT(n > 0 && n < sizeof e->reason);
	for (size_t i = 0; i < n; i++)
		ASSERT(e->reason[i] >= 0x20 && e->reason[i] < 0x7F);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < FZ_HEAD_BYTES)
		return 0;
	init_once();
	unsigned cert_mode = data[0] & 3, key_mode = (data[0] >> 2) & 3, clock = (data[0] >> 4) & 3;
	const uint8_t *rest = data + FZ_HEAD_BYTES;
	size_t n = MIN(size - FZ_HEAD_BYTES, (size_t)FZ_PEM_BYTES_MAX);
	size_t cut = ((size_t)data[1] << 8 | data[2]) % (n + 1);
	int32_t delta = (int32_t)((uint32_t)data[3] << 24 | (uint32_t)data[4] << 16 | (uint32_t)data[5] << 8 | data[6]);

	int64_t now = (int64_t)time(NULL);
	if (clock == 1)
		now = 0;
	else if (clock == 2)
		now = FZ_YEAR_9999_S;
	else if (clock == 3)
		now += delta;

	/* base64 grows by 4/3, plus a newline per 64 characters and the armour lines */
	size_t room = good_cert_len + 2 * n + 256;
	char *cert = malloc(room), *key = malloc(good_key_len + 2 * n + 256);
	ASSERT(cert && key);
	size_t cl = 0, kl = 0;
	if (cert_mode >= 2)
		cl = put_raw(cert, cl, good_cert_pem, good_cert_len);
	if (cert_mode == 1 || cert_mode == 2)
		cl = put_pem(cert, cl, "CERTIFICATE", rest, cut);
	else
		cl = put_raw(cert, cl, rest, cut);
	if (key_mode < 2)
		kl = put_raw(key, kl, good_key_pem, good_key_len);
	else if (key_mode == 2)
		kl = put_raw(key, kl, rest + cut, n - cut);
	else
		kl = put_pem(key, kl, "PRIVATE KEY", rest + cut, n - cut);

	/* exactly sized copies: BoringSSL's reads past the end would be ASan reports */
	char *c_exact = malloc(cl ? cl : 1), *k_exact = malloc(kl ? kl : 1);
	ASSERT(c_exact && k_exact);
	memcpy(c_exact, cert, cl);
	memcpy(k_exact, key, kl);

	struct tls_load_error e1, e2;
	struct tls_cert *c1 = tls_cert_from_pem(c_exact, cl, k_exact, kl, now, &e1);
	struct tls_cert *c2 = tls_cert_from_pem(c_exact, cl, k_exact, kl, now, &e2);
	ASSERT((c1 != NULL) == (e1.result == TLS_LOAD_OK));
	ASSERT((c1 != NULL) == (c2 != NULL) && e1.result == e2.result);
	ASSERT(strcmp(e1.reason, e2.reason) == 0);
	if (c1) {
		ASSERT(tls_cert_not_after_s(c1) >= now);
		ASSERT(tls_cert_not_after_s(c1) == tls_cert_not_after_s(c2));
	} else {
		check_refusal(&e1);
	}
	tls_cert_put(c1);
	tls_cert_put(c2);
	free(c_exact);
	free(k_exact);
	free(cert);
	free(key);
	return 0;
}
