/*
 * tls_cert.c - certificate chain and private key: read, parse, check, share.
 *
 * Loading happens at boot and on SIGHUP, never on a worker ring, so it may read files
 * and allocate freely. Every refusal says which file and what is wrong in one line,
 * with a fix for the operator; none ever carries key bytes (the key file's contents
 * are wiped from memory as soon as they are parsed).
 */
#include "transport/tls_internal.h"
#include "transport/tls_x509.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bytestring.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/obj.h>
#include <openssl/pem.h>
#include <openssl/pool.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Below this an RSA key is refused: NIST SP 800-131A and every browser. */
#define RSA_KEY_BITS_MIN 2048u

static const char *const result_names[TLS_LOAD_RESULT_COUNT] = {
	[TLS_LOAD_OK] = "ok",
	[TLS_LOAD_UNREADABLE] = "unreadable",
	[TLS_LOAD_BAD_PEM] = "bad_pem",
	[TLS_LOAD_UNSUPPORTED_KEY] = "unsupported_key",
	[TLS_LOAD_KEY_MISMATCH] = "key_mismatch",
	[TLS_LOAD_EXPIRED] = "expired",
	[TLS_LOAD_NOT_YET_VALID] = "not_yet_valid",
	[TLS_LOAD_INTERNAL] = "internal",
};

static const char *const fixes[TLS_LOAD_RESULT_COUNT] = {
	[TLS_LOAD_OK] = "",
	[TLS_LOAD_UNREADABLE] = "check the path, and that the relay's user can read the file "
				"(the relay runs unprivileged: give its group read access, mode 0640)",
	[TLS_LOAD_BAD_PEM] = "pass PEM files: --tls-cert with the certificate first, then its intermediates "
			     "(-----BEGIN CERTIFICATE-----), --tls-key with the unencrypted private key "
			     "(-----BEGIN PRIVATE KEY-----, EC PRIVATE KEY or RSA PRIVATE KEY)",
	[TLS_LOAD_UNSUPPORTED_KEY] = "use an ECDSA P-256 or P-384 key, or an RSA key of 2048 bits or more",
	[TLS_LOAD_KEY_MISMATCH] = "pass the private key the certificate was issued for (compare "
				  "`openssl x509 -noout -pubkey -in CERT` with `openssl pkey -pubout -in KEY`)",
	[TLS_LOAD_EXPIRED] = "renew the certificate and reload (SIGHUP), or check the system clock",
	[TLS_LOAD_NOT_YET_VALID] = "check the system clock, or wait until the certificate's notBefore",
	[TLS_LOAD_INTERNAL] = "retry; if it persists, report it with the log line",
};

const char *tls_load_result_name(enum tls_load_result r)
{
	ASSERT((unsigned)r < TLS_LOAD_RESULT_COUNT);
	return result_names[r];
}

__attribute__((format(printf, 3, 4))) static struct tls_cert *refuse(struct tls_load_error *err,
								      enum tls_load_result r,
								      const char *fmt, ...)
{
	err->result = r;
	err->fix = fixes[r];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->reason, sizeof err->reason, fmt, ap);
	va_end(ap);
	/* One line, whatever a path held. */
	for (char *p = err->reason; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	ERR_clear_error();
	return NULL;
}

/* ------------------------------------------------------------------ reading files */

struct file_bytes {
	uint8_t *p;
	size_t n;
};

/* Read a whole file of at most TLS_PEM_FILE_BYTES_MAX. 0, or an errno (EFBIG: too big). */
static int read_file(const char *path, struct file_bytes *out)
{
	*out = (struct file_bytes){ 0 };
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	struct stat st;
	int rc = 0;
	if (fstat(fd, &st) != 0) {
		rc = errno;
	} else if (S_ISDIR(st.st_mode)) {
		rc = EISDIR;
	} else if (st.st_size > (off_t)TLS_PEM_FILE_BYTES_MAX) {
		rc = EFBIG;
	} else {
		/* +1: read to EOF even if the file grew since fstat. */
		size_t cap = (size_t)st.st_size + 1;
		out->p = malloc(cap);
		if (out->p == NULL) {
			rc = ENOMEM;
		} else {
			for (;;) {
				ssize_t r = read(fd, out->p + out->n, cap - out->n);
				if (r < 0 && errno == EINTR)
					continue;
				if (r < 0) {
					rc = errno;
					break;
				}
				if (r == 0)
					break;
				out->n += (size_t)r;
				if (out->n == cap) {
					rc = EFBIG; /* grew past what fstat said: not a settled file */
					break;
				}
			}
		}
	}
	close(fd);
	if (rc != 0) {
		if (out->p)
			OPENSSL_cleanse(out->p, out->n);
		free(out->p);
		*out = (struct file_bytes){ 0 };
	}
	return rc;
}

static void file_bytes_wipe(struct file_bytes *f)
{
	if (f->p)
		OPENSSL_cleanse(f->p, f->n);
	free(f->p);
	*f = (struct file_bytes){ 0 };
}

struct tls_cert *tls_cert_load(const char *cert_path, const char *key_path, int64_t now_s,
			       struct tls_load_error *err)
{
	struct file_bytes cf, kf;
	int rc = read_file(cert_path, &cf);
	if (rc == EFBIG)
		return refuse(err, TLS_LOAD_BAD_PEM, "certificate file %s is larger than %u bytes: not a PEM chain",
			      cert_path, TLS_PEM_FILE_BYTES_MAX);
	if (rc != 0)
		return refuse(err, TLS_LOAD_UNREADABLE, "cannot read certificate file %s: %s", cert_path,
			      strerror(rc));
	rc = read_file(key_path, &kf);
	if (rc != 0) {
		file_bytes_wipe(&cf);
		if (rc == EFBIG)
			return refuse(err, TLS_LOAD_BAD_PEM, "key file %s is larger than %u bytes: not a PEM key",
				      key_path, TLS_PEM_FILE_BYTES_MAX);
		return refuse(err, TLS_LOAD_UNREADABLE, "cannot read key file %s: %s", key_path, strerror(rc));
	}
	struct tls_cert *c = tls_cert_from_pem(cf.p, cf.n, kf.p, kf.n, now_s, err);
	file_bytes_wipe(&cf);
	file_bytes_wipe(&kf);
	return c;
}

/* ------------------------------------------------------------------ checks */

bool tls_asn1_time_posix(const ASN1_TIME *t, int64_t *out)
{
	ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);
	int days = 0, secs = 0;
	bool ok = epoch != NULL && ASN1_TIME_diff(&days, &secs, epoch, t);
	ASN1_TIME_free(epoch);
	if (ok)
		*out = (int64_t)days * 86400 + secs;
	return ok;
}

static void format_time(int64_t s, char *out, size_t cap)
{
	time_t t = (time_t)s;
	struct tm tm;
	if (gmtime_r(&t, &tm) == NULL || strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(out, cap, "@%lld", (long long)s);
}

/* NULL, or why the key type is refused. */
static const char *key_refusal(const EVP_PKEY *key, char *buf, size_t cap)
{
	switch (EVP_PKEY_id(key)) {
	case EVP_PKEY_RSA: {
		int bits = EVP_PKEY_bits(key);
		if (bits >= (int)RSA_KEY_BITS_MIN)
			return NULL;
		snprintf(buf, cap, "an RSA key of %d bits (at least %u required)", bits, RSA_KEY_BITS_MIN);
		return buf;
	}
	case EVP_PKEY_EC: {
		const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(key);
		int nid = ec ? EC_GROUP_get_curve_name(EC_KEY_get0_group(ec)) : NID_undef;
		if (nid == NID_X9_62_prime256v1 || nid == NID_secp384r1)
			return NULL;
		snprintf(buf, cap, "an EC key on curve %s", nid == NID_undef ? "(unnamed)" : OBJ_nid2sn(nid));
		return buf;
	}
	default:
		snprintf(buf, cap, "a key of type %d", EVP_PKEY_id(key));
		return buf;
	}
}

static int no_password(char *buf, int size, int rwflag, void *u)
{
	return 0; /* encrypted keys are refused: the relay has nowhere to get a passphrase */
}

static void cert_free(struct tls_cert *c)
{
	for (uint32_t i = 0; i < c->chain_len; i++)
		CRYPTO_BUFFER_free(c->chain[i]);
	X509_free(c->leaf);
	EVP_PKEY_free(c->key);
	free(c);
}

/* Parse the chain into c; false with *err filled in when refused. */
static bool parse_chain(struct tls_cert *c, const void *pem, size_t len, struct tls_load_error *err)
{
	BIO *bio = BIO_new_mem_buf(pem, (int)len);
	if (bio == NULL) {
		refuse(err, TLS_LOAD_INTERNAL, "out of memory reading the certificate");
		return false;
	}
	size_t der_total = 0;
	bool ok = true;
	for (;;) {
		X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
		if (x == NULL) {
			uint32_t e = ERR_peek_last_error();
			bool at_end = ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
			if (c->chain_len == 0) {
				refuse(err, TLS_LOAD_BAD_PEM, "certificate file holds no %sPEM certificate",
				       at_end ? "" : "readable ");
				ok = false;
			} else if (!at_end) {
				refuse(err, TLS_LOAD_BAD_PEM, "certificate %u of the chain does not parse",
				       c->chain_len + 1);
				ok = false;
			}
			ERR_clear_error();
			break;
		}
		uint8_t *der = NULL;
		int der_len = i2d_X509(x, &der);
		if (der_len <= 0) {
			refuse(err, TLS_LOAD_INTERNAL, "cannot encode certificate %u", c->chain_len + 1);
			ok = false;
		} else if (c->chain_len == TLS_CERT_CHAIN_CERTS_MAX ||
			   der_total + (size_t)der_len > TLS_CERT_CHAIN_BYTES_MAX) {
			refuse(err, TLS_LOAD_BAD_PEM, "certificate chain longer than %u certificates or %u bytes",
			       TLS_CERT_CHAIN_CERTS_MAX, TLS_CERT_CHAIN_BYTES_MAX);
			ok = false;
		} else {
			der_total += (size_t)der_len;
			c->chain[c->chain_len] = CRYPTO_BUFFER_new(der, (size_t)der_len, NULL);
			if (c->chain[c->chain_len] == NULL) {
				refuse(err, TLS_LOAD_INTERNAL, "out of memory holding the chain");
				ok = false;
			} else {
				c->chain_len++;
			}
		}
		OPENSSL_free(der);
		if (ok && c->leaf == NULL)
			c->leaf = x;
		else
			X509_free(x);
		if (!ok)
			break;
	}
	BIO_free(bio);
	return ok;
}

/* Every certificate of the chain within its dates at now_s; sets c->not_after_s. */
static bool check_dates(struct tls_cert *c, int64_t now_s, struct tls_load_error *err)
{
	c->not_after_s = INT64_MAX;
	for (uint32_t i = 0; i < c->chain_len; i++) {
		X509 *x = X509_parse_from_buffer(c->chain[i]);
		int64_t nb = 0, na = 0;
		bool ok = x != NULL && tls_asn1_time_posix(X509_get0_notBefore(x), &nb) &&
			  tls_asn1_time_posix(X509_get0_notAfter(x), &na);
		X509_free(x);
		const char *which = i == 0 ? "the certificate" : "an intermediate certificate";
		char when[32], now[32];
		format_time(now_s, now, sizeof now);
		if (!ok) {
			refuse(err, TLS_LOAD_BAD_PEM, "%s (%u in the chain) has unreadable validity dates", which, i + 1);
			return false;
		}
		if (now_s > na) {
			format_time(na, when, sizeof when);
			refuse(err, TLS_LOAD_EXPIRED, "%s (%u in the chain) expired at %s (now %s)", which, i + 1,
			       when, now);
			return false;
		}
		if (now_s < nb) {
			format_time(nb, when, sizeof when);
			refuse(err, TLS_LOAD_NOT_YET_VALID, "%s (%u in the chain) is not valid before %s (now %s)",
			       which, i + 1, when, now);
			return false;
		}
		c->not_after_s = MIN(c->not_after_s, na);
	}
	return true;
}

struct tls_cert *tls_cert_from_pem(const void *cert_pem, size_t cert_len, const void *key_pem,
				   size_t key_len, int64_t now_s, struct tls_load_error *err)
{
	*err = (struct tls_load_error){ .result = TLS_LOAD_OK, .fix = fixes[TLS_LOAD_OK] };
	if (cert_len > TLS_PEM_FILE_BYTES_MAX || key_len > TLS_PEM_FILE_BYTES_MAX)
		return refuse(err, TLS_LOAD_BAD_PEM, "a PEM file is larger than %u bytes", TLS_PEM_FILE_BYTES_MAX);
	struct tls_cert *c = calloc(1, sizeof *c);
	if (c == NULL)
		return refuse(err, TLS_LOAD_INTERNAL, "out of memory");
	atomic_init(&c->refs, 1);
	if (!parse_chain(c, cert_pem, cert_len, err))
		goto fail;

	BIO *kb = BIO_new_mem_buf(key_pem, (int)key_len);
	if (kb == NULL) {
		refuse(err, TLS_LOAD_INTERNAL, "out of memory reading the key");
		goto fail;
	}
	c->key = PEM_read_bio_PrivateKey(kb, NULL, no_password, NULL);
	BIO_free(kb);
	if (c->key == NULL) {
		refuse(err, TLS_LOAD_BAD_PEM, "key file holds no readable, unencrypted PEM private key");
		goto fail;
	}
	char why[96];
	if (key_refusal(c->key, why, sizeof why) != NULL) {
		refuse(err, TLS_LOAD_UNSUPPORTED_KEY, "the private key is %s", why);
		goto fail;
	}
	if (!X509_check_private_key(c->leaf, c->key)) {
		refuse(err, TLS_LOAD_KEY_MISMATCH, "the private key does not belong to the certificate "
						   "(the first one in the certificate file)");
		goto fail;
	}
	if (!check_dates(c, now_s, err))
		goto fail;
	ERR_clear_error();
	return c;
fail:
	cert_free(c);
	return NULL;
}

struct tls_cert *tls_cert_get(struct tls_cert *cert)
{
	unsigned before = atomic_fetch_add_explicit(&cert->refs, 1, memory_order_relaxed);
	ASSERT(before > 0);
	return cert;
}

void tls_cert_put(struct tls_cert *cert)
{
	if (cert == NULL)
		return;
	/* acq_rel: the last owner's writes happen before the free. */
	unsigned before = atomic_fetch_sub_explicit(&cert->refs, 1, memory_order_acq_rel);
	ASSERT(before > 0);
	if (before == 1)
		cert_free(cert);
}

int64_t tls_cert_not_after_s(const struct tls_cert *cert)
{
	return cert->not_after_s;
}
