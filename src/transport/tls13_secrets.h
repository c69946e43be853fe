/*
 * tls13_secrets.h - the TLS 1.3 traffic secrets of a BoringSSL connection, for C.
 *
 * This BoringSSL (13.0.0, Debian) declares SSL_get_traffic_secrets only in its C++
 * API (namespace bssl, with bssl::Span), so tls13_secrets.cc wraps it in one C
 * function. Nothing else in the relay is C++.
 */
#ifndef PYRELAY_TRANSPORT_TLS13_SECRETS_H
#define PYRELAY_TRANSPORT_TLS13_SECRETS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ssl_st;

/* Copy the current read and write traffic secrets of an established TLS 1.3
 * connection into read_out and write_out (cap bytes each). Both are as long as the
 * suite's hash (32 or 48 bytes); that length is returned, or 0 when the connection is
 * not TLS 1.3, not established, or the secrets do not fit. Key material: wipe it. */
size_t tls13_traffic_secrets(const struct ssl_st *ssl, uint8_t *read_out, uint8_t *write_out, size_t cap);

#ifdef __cplusplus
}
#endif

#endif
