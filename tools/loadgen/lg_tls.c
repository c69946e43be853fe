/*
 * lg_tls.c - client TLS in user space with BoringSSL over memory BIOs.
 *
 * The ring moves ciphertext; this file only turns ciphertext into plaintext and back:
 * received bytes go into the read BIO (lgtls_feed), SSL_read yields plaintext
 * (lgtls_read); plaintext goes in with SSL_write and the ciphertext to send is taken
 * from the write BIO (lgtls_out_take). Memory BIOs never block, so no call here waits.
 * The only translation unit of loadgen that includes BoringSSL.
 */
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

#include "lg.h"

static SSL_CTX *ctx;
static bool verify_peer;

static void why_ssl(char *why, size_t cap, const char *what)
{
	char buf[160];
	unsigned long e = ERR_get_error();
	ERR_error_string_n(e, buf, sizeof buf);
	snprintf(why, cap, "%s: %s", what, e ? buf : "unknown error");
	ERR_clear_error();
}

bool lgtls_init(const struct lg_config *cfg, char *why, size_t why_cap)
{
	bool insecure = cfg->insecure;
	const char *ca_file = cfg->ca_file;
	ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL) {
		why_ssl(why, why_cap, "SSL_CTX_new");
		return false;
	}
	SSL_CTX_set_min_proto_version(ctx, cfg->tls_version == LG_TLS_13 ? TLS1_3_VERSION : TLS1_2_VERSION);
	SSL_CTX_set_max_proto_version(ctx, cfg->tls_version == LG_TLS_12 ? TLS1_2_VERSION : TLS1_3_VERSION);
	if (cfg->tls_cipher && !SSL_CTX_set_strict_cipher_list(ctx, cfg->tls_cipher)) {
		why_ssl(why, why_cap, "--tls-cipher");
		return false;
	}
	verify_peer = !insecure;
	if (insecure) {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
		return true;
	}
	int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
			 : SSL_CTX_load_verify_locations(ctx, "/etc/ssl/certs/ca-certificates.crt", NULL);
	if (!ok) {
		why_ssl(why, why_cap, ca_file ? "loading --ca" : "loading /etc/ssl/certs/ca-certificates.crt (use --ca FILE or --insecure)");
		return false;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	return true;
}

void *lgtls_new(const char *host, char *why, size_t why_cap)
{
	SSL *ssl = SSL_new(ctx);
	BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
	if (ssl == NULL || rb == NULL || wb == NULL) {
		why_ssl(why, why_cap, "SSL_new");
		SSL_free(ssl);
		BIO_free(rb);
		BIO_free(wb);
		return NULL;
	}
	SSL_set_bio(ssl, rb, wb);
	SSL_set_connect_state(ssl);
	struct in6_addr a6;
	struct in_addr a4;
	bool is_ip = inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1;
	if (!is_ip)
		SSL_set_tlsext_host_name(ssl, host);
	if (verify_peer) {
		X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
		int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, host)
			       : X509_VERIFY_PARAM_set1_host(param, host, strlen(host));
		if (!ok) {
			why_ssl(why, why_cap, "setting the expected peer name");
			SSL_free(ssl);
			return NULL;
		}
	}
	return ssl;
}

void lgtls_free(void *tls)
{
	SSL_free(tls);
}

int lgtls_handshake(void *tls, char *why, size_t why_cap)
{
	SSL *ssl = tls;
	int rc = SSL_do_handshake(ssl);
	if (rc == 1)
		return 1;
	int e = SSL_get_error(ssl, rc);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		return 0;
	long vr = SSL_get_verify_result(ssl);
	if (vr != X509_V_OK)
		snprintf(why, why_cap, "TLS handshake: certificate verification failed: %s (use --ca FILE or --insecure)",
			 X509_verify_cert_error_string(vr));
	else
		why_ssl(why, why_cap, "TLS handshake");
	return -1;
}

void lgtls_feed(void *tls, const uint8_t *p, size_t n)
{
	BIO *rb = SSL_get_rbio(tls);
	int w = BIO_write(rb, p, (int)n);
	ASSERT(w == (int)n); /* a memory BIO takes everything */
}

long lgtls_read(void *tls, uint8_t *out, size_t cap)
{
	SSL *ssl = tls;
	if (cap > INT32_MAX)
		cap = INT32_MAX;
	int rc = SSL_read(ssl, out, (int)cap);
	if (rc > 0)
		return rc;
	int e = SSL_get_error(ssl, rc);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		return 0;
	ERR_clear_error();
	return e == SSL_ERROR_ZERO_RETURN ? -1 : -2;
}

bool lgtls_write(void *tls, const uint8_t *p, size_t n)
{
	int rc = SSL_write(tls, p, (int)n);
	if (rc == (int)n)
		return true;
	ERR_clear_error();
	return false;
}

size_t lgtls_out_pending(void *tls)
{
	return BIO_ctrl_pending(SSL_get_wbio(tls));
}

size_t lgtls_out_take(void *tls, uint8_t *out, size_t cap)
{
	if (cap > INT32_MAX)
		cap = INT32_MAX;
	int n = BIO_read(SSL_get_wbio(tls), out, (int)cap);
	return n > 0 ? (size_t)n : 0;
}

void lgtls_close_notify(void *tls)
{
	(void)SSL_shutdown(tls);
	ERR_clear_error();
}

bool lgtls_is_tls13(void *tls)
{
	return SSL_version(tls) == TLS1_3_VERSION;
}

bool lgtls_resumed(void *tls)
{
	return SSL_session_reused(tls) != 0;
}
