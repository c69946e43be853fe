/*
 * tls_internal.h - what the transport's own files share (tls.c, tls_cert.c, ktls.c):
 * the BoringSSL types behind the opaque handles of tls.h. Nothing outside
 * src/transport/ includes it but the transport's own white-box tests.
 */
#ifndef PYRELAY_TRANSPORT_TLS_INTERNAL_H
#define PYRELAY_TRANSPORT_TLS_INTERNAL_H

#include <openssl/base.h>
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
