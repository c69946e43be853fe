/*
 * tls_internal.h - what the transport's own files share (tls.c, tls_server.c,
 * tls_cert.c, ktls.c):
 * the BoringSSL types behind the opaque handles of tls.h. Nothing outside
 * src/transport/ includes it but the transport's own white-box tests.
 */
#ifndef PYRELAY_TRANSPORT_TLS_INTERNAL_H
#define PYRELAY_TRANSPORT_TLS_INTERNAL_H

#include <openssl/base.h>
#include <pthread.h>
#include <stdatomic.h>

#include "transport/tls.h"

struct tls_cert {
	atomic_uint refs;
	uint32_t chain_len;
	CRYPTO_BUFFER *chain[TLS_CERT_CHAIN_CERTS_MAX]; /* DER, leaf first */
	X509 *leaf;                                     /* parsed, for server-name checks */
	EVP_PKEY *key;
	int64_t not_after_s;
};

#define ALPN_HTTP11 "http/1.1"

/* Ticket protection, RFC 5077's recommended layout: a 16-byte key name, AES-256-CBC and
 * HMAC-SHA256 (BoringSSL's ticket callback form). */
#define TICKET_NAME_BYTES 16u
#define TICKET_AES_KEY_BYTES 32u
#define TICKET_HMAC_KEY_BYTES 32u

struct ticket_key {
	uint8_t name[TICKET_NAME_BYTES];
	uint8_t aes[TICKET_AES_KEY_BYTES];
	uint8_t hmac[TICKET_HMAC_KEY_BYTES];
};

struct tls_server {
	SSL_CTX *ctx;
	enum tls_sni_policy sni;
	/* autocert (tls_server_set_acme): the one name, and who to tell it has no certificate */
	const char *acme_name;
	void (*want_cert)(void *ctx);
	void *want_cert_ctx;
	/* Guards cert and the ticket keys: taken once per new connection and twice per
	 * handshake that issues or reads a ticket, never on the data path. */
	pthread_mutex_t lock;
	struct tls_cert *cert;
	uint64_t cert_gen; /* bumped by every tls_server_swap_cert (read without the lock too) */
	struct ticket_key current;
	struct ticket_key previous; /* decrypts (and renews) only */
	bool have_previous;
	uint64_t keys_at_ms;
};

struct tls_conn {
	SSL *ssl;
	struct tls_server *srv;
	struct tls_stats *stats;
	struct tls_cert *cert; /* during the handshake: what the server-name check matches */

	/* The span the current tls_conn_input reads (the BIO's read side). */
	const uint8_t *in;
	size_t in_len;
	size_t in_off;

	/* Ciphertext not yet taken: out[out_off, out_len). NULL when empty. */
	uint8_t *out;
	uint32_t out_off;
	uint32_t out_len;
	uint32_t out_cap;

	/* Where BoringSSL's reads stand in the record stream: a header being read
	 * (rec_hdr_have of 5 bytes), or rec_body_left bytes of a body. */
	uint32_t rec_body_left;
	uint8_t rec_hdr[TLS_RECORD_HEADER_BYTES];
	uint8_t rec_hdr_have;

	/* First bytes that are not a handshake record, kept until they say HTTP or not. */
	uint8_t first[TLS_RECORD_HEADER_BYTES];
	uint8_t first_have;

	uint8_t error;   /* enum tls_error: the first reason this connection failed */
	uint8_t refusal; /* enum tls_error: set by our callbacks when they refuse a hello */
	bool first_checked : 1;
	bool established : 1;
	bool peer_closed : 1;
	bool close_sent : 1;
	bool drained : 1;
	bool cert_wait : 1; /* autocert: the handshake waits for the first certificate */
};

/* The connection a BoringSSL object belongs to (its BIO's data). */
struct tls_conn *tls_conn_of_ssl(const SSL *ssl);
/* The process's span BIO method is ready (made once); false when BoringSSL refused it. */
bool tls_bio_ready(void);

/* Take one more reference. */
struct tls_cert *tls_cert_get(struct tls_cert *cert);

/* The connection's BoringSSL object (ktls.c reads keys and sequence numbers from it). */
SSL *tls_conn_ssl(const struct tls_conn *c);
/* True when the last tls_conn_input consumed all its input and decrypted everything
 * BoringSSL holds (it returned TLS_WANT_INPUT). */
bool tls_conn_rx_drained(const struct tls_conn *c);
/* Send anything BoringSSL queued without writing it (TLS 1.3 session tickets and
 * KeyUpdate answers wait for the next write) into the output. */
void tls_conn_flush(struct tls_conn *c);

#endif
