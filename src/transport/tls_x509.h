/*
 * tls_x509.h - certificate helpers over BoringSSL's types, for the files outside
 * transport/ that already speak BoringSSL (control/autocert.c reads the validity of the
 * chain it obtained). tls.h stays free of BoringSSL's types; this header is not.
 */
#ifndef PYRELAY_TRANSPORT_TLS_X509_H
#define PYRELAY_TRANSPORT_TLS_X509_H

#include <openssl/base.h>

#include "core/common.h"

/* Seconds since the epoch of an ASN.1 time (a certificate's notBefore or notAfter);
 * false when it does not parse. Pure. */
bool tls_asn1_time_posix(const ASN1_TIME *t, int64_t *out);

#endif
