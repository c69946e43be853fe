/*
 * tls_server.c - the TLS server every worker shares (transport/tls.h): the BoringSSL
 * context and its callbacks (ALPN, server name, certificate selection, session-ticket
 * keys), the certificate in force and its swaps, the ticket-key schedule. The
 * connections that use it are in tls.c.
 */
#include "transport/tls_internal.h"

#include <openssl/cipher.h>
#include <openssl/digest.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* TLS 1.2: forward-secret AEAD suites only, the ones kTLS can take over. Bracketed
 * groups are equal preference: the client picks ChaCha20 over AES when it lacks AES
 * hardware (BoringSSL's recommendation); otherwise our order wins. TLS 1.3 suites are
 * not configurable in BoringSSL; its three are the same AEADs. */
#define TLS12_CIPHERS \
	"[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]:" \
	"[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]:" \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"

/* One ticket per handshake: a phone resumes one connection at a time, and each
 * resumption brings a fresh ticket. BoringSSL's default of two doubles the cost. */
#define TLS13_TICKETS_PER_HANDSHAKE 1u

/* ------------------------------------------------------------------ callbacks */

static int alpn_select(SSL *ssl, const uint8_t **out, uint8_t *out_len, const uint8_t *in, unsigned in_len,
		       void *arg)
{
	/* in: the client's list of length-prefixed protocol names. */
	for (unsigned i = 0; i < in_len;) {
		unsigned n = in[i];
		if (n > in_len - i - 1)
			break;
		if (n == sizeof ALPN_HTTP11 - 1 && memcmp(in + i + 1, ALPN_HTTP11, n) == 0) {
			*out = in + i + 1;
			*out_len = (uint8_t)n;
			return SSL_TLSEXT_ERR_OK;
		}
		i += 1 + n;
	}
	tls_conn_of_ssl(ssl)->refusal = TLS_ERR_ALPN;
	return SSL_TLSEXT_ERR_ALERT_FATAL; /* BoringSSL sends no_application_protocol */
}

static int servername_check(SSL *ssl, int *out_alert, void *arg)
{
	struct tls_conn *c = tls_conn_of_ssl(ssl);
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	bool ok;
	if (c->srv->acme_name != NULL) {
		/* autocert: exactly the domain; no certificate yet: ask for one, fail cleanly */
		/* a trailing dot is the same name (Go's autocert trims it too) */
		size_t n = name ? strlen(name) : 0, want = strlen(c->srv->acme_name);
		if (n == want + 1 && name[want] == '.')
			n--;
		if (name == NULL || n != want || strncasecmp(name, c->srv->acme_name, want) != 0) {
			c->refusal = TLS_ERR_SNI;
			*out_alert = SSL_AD_UNRECOGNIZED_NAME;
			return SSL_TLSEXT_ERR_ALERT_FATAL;
		}
		if (c->cert == NULL)
			c->srv->want_cert(c->srv->want_cert_ctx); /* cert_select waits for it */
		return SSL_TLSEXT_ERR_OK;
	}
	switch (c->srv->sni) {
	case TLS_SNI_ANY:
		ok = true;
		break;
	case TLS_SNI_MATCH_IF_SENT:
	case TLS_SNI_REQUIRED:
		if (name == NULL)
			ok = c->srv->sni == TLS_SNI_MATCH_IF_SENT;
		else
			ok = c->cert != NULL && X509_check_host(c->cert->leaf, name, strlen(name), 0, NULL) == 1;
		break;
	default:
		ok = false;
		break;
	}
	if (ok)
		return SSL_TLSEXT_ERR_OK;
	c->refusal = TLS_ERR_SNI;
	*out_alert = SSL_AD_UNRECOGNIZED_NAME;
	return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/*
 * BoringSSL's certificate callback, after the server-name check. Autocert without a
 * certificate yet: take the server's current one if it has arrived since the
 * connection began, or pause the handshake (SSL_ERROR_WANT_X509_LOOKUP: tls_conn_input
 * returns TLS_WAIT_CERT) until the owner calls tls_conn_input again. The owner's
 * handshake deadline bounds the wait.
 */
static int cert_select(SSL *ssl, void *arg)
{
	(void)arg;
	struct tls_conn *c = tls_conn_of_ssl(ssl);
	if (c->cert != NULL || c->srv->acme_name == NULL)
		return 1; /* chosen at tls_conn_new (none: BoringSSL fails the handshake) */
	pthread_mutex_lock(&c->srv->lock);
	c->cert = c->srv->cert ? tls_cert_get(c->srv->cert) : NULL;
	pthread_mutex_unlock(&c->srv->lock);
	if (c->cert == NULL) {
		c->cert_wait = true;
		return -1;
	}
	c->cert_wait = false;
	return SSL_set_chain_and_key(ssl, c->cert->chain, c->cert->chain_len, c->cert->key, NULL) ? 1 : 0;
}

static void ticket_key_new(struct ticket_key *k)
{
	RAND_bytes((uint8_t *)k, sizeof *k);
}

static int ticket_key_cb(SSL *ssl, uint8_t *key_name, uint8_t *iv, EVP_CIPHER_CTX *cctx, HMAC_CTX *hctx,
			 int encrypt)
{
	struct tls_server *s = tls_conn_of_ssl(ssl)->srv;
	struct ticket_key k;
	int ok = 1; /* decrypt: 1 found (current key), 2 found and renew (previous key), 0 unknown */
	pthread_mutex_lock(&s->lock);
	if (encrypt) {
		k = s->current;
	} else if (memcmp(key_name, s->current.name, TICKET_NAME_BYTES) == 0) {
		k = s->current;
	} else if (s->have_previous && memcmp(key_name, s->previous.name, TICKET_NAME_BYTES) == 0) {
		k = s->previous;
		ok = 2;
	} else {
		ok = 0;
	}
	pthread_mutex_unlock(&s->lock);
	if (ok == 0)
		return 0; /* an unknown or retired key: full handshake */
	const EVP_CIPHER *cipher = EVP_aes_256_cbc();
	int done;
	if (encrypt) {
		memcpy(key_name, k.name, TICKET_NAME_BYTES);
		RAND_bytes(iv, EVP_CIPHER_iv_length(cipher));
		done = EVP_EncryptInit_ex(cctx, cipher, NULL, k.aes, iv);
	} else {
		done = EVP_DecryptInit_ex(cctx, cipher, NULL, k.aes, iv);
	}
	done = done && HMAC_Init_ex(hctx, k.hmac, sizeof k.hmac, EVP_sha256(), NULL);
	OPENSSL_cleanse(&k, sizeof k);
	if (!done)
		return -1;
	return encrypt ? 1 : ok;
}

/* ------------------------------------------------------------------ server */

struct tls_server *tls_server_new(struct tls_cert *cert, enum tls_sni_policy sni, uint64_t now_ms)
{
	struct tls_server *s = calloc(1, sizeof *s);
	if (s == NULL || !tls_bio_ready()) {
		free(s);
		tls_cert_put(cert);
		return NULL;
	}
	pthread_mutex_init(&s->lock, NULL);
	s->cert = cert;
	s->sni = sni;
	s->ctx = SSL_CTX_new(TLS_method());
	SSL_CTX *ctx = s->ctx;
	bool ok = ctx != NULL && SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) &&
		  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) &&
		  SSL_CTX_set_strict_cipher_list(ctx, TLS12_CIPHERS) &&
		  SSL_CTX_set_num_tickets(ctx, TLS13_TICKETS_PER_HANDSHAKE) &&
		  SSL_CTX_set_tlsext_ticket_key_cb(ctx, ticket_key_cb);
	if (!ok) {
		ERR_clear_error();
		tls_server_free(s);
		return NULL;
	}
	SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
	/* Tickets only: a server-side cache would hold every session in memory. */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_timeout(ctx, TLS_TICKET_LIFETIME_S);
	SSL_CTX_set_session_psk_dhe_timeout(ctx, TLS_TICKET_LIFETIME_S);
	SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
	SSL_CTX_set_tlsext_servername_callback(ctx, servername_check);
	SSL_CTX_set_cert_cb(ctx, cert_select, NULL);
	ticket_key_new(&s->current);
	s->keys_at_ms = now_ms;
	return s;
}

void tls_server_free(struct tls_server *s)
{
	if (s == NULL)
		return;
	SSL_CTX_free(s->ctx);
	tls_cert_put(s->cert);
	OPENSSL_cleanse(&s->current, sizeof s->current);
	OPENSSL_cleanse(&s->previous, sizeof s->previous);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

void tls_server_set_acme(struct tls_server *s, const char *name, void (*want_cert)(void *ctx), void *ctx)
{
	ASSERT(name != NULL && want_cert != NULL);
	s->acme_name = name;
	s->want_cert = want_cert;
	s->want_cert_ctx = ctx;
}

void tls_server_swap_cert(struct tls_server *s, struct tls_cert *cert)
{
	ASSERT(cert != NULL);
	pthread_mutex_lock(&s->lock);
	struct tls_cert *old = s->cert;
	s->cert = cert;
	__atomic_add_fetch(&s->cert_gen, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&s->lock);
	/* Connections in their handshake hold their own reference to the old one. */
	tls_cert_put(old);
}

uint64_t tls_server_cert_generation(const struct tls_server *s)
{
	return __atomic_load_n(&s->cert_gen, __ATOMIC_ACQUIRE);
}

bool tls_server_rotate_ticket_keys(struct tls_server *s, uint64_t now_ms)
{
	bool rotate;
	pthread_mutex_lock(&s->lock);
	rotate = now_ms >= s->keys_at_ms && now_ms - s->keys_at_ms >= TLS_TICKET_KEY_ROTATE_MS;
	if (rotate) {
		s->previous = s->current;
		s->have_previous = true;
		ticket_key_new(&s->current);
		s->keys_at_ms = now_ms;
	}
	pthread_mutex_unlock(&s->lock);
	return rotate;
}
