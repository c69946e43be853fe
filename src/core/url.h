/*
 * url.h - the one parser for the https:// URLs the relay calls out to: the FCM send
 * endpoint (--fcm-endpoint), the OAuth token URL (the service-account key's token_uri)
 * and, later, the ACME directory. Shared by the boot checks (config/), which refuse a
 * URL the client cannot use, and the outbound client (control/), which connects to
 * exactly what was checked.
 *
 * Contract:
 * - Accepted: "https://" (scheme in any case, as Go's url.Parse) then an authority
 *   host[:port], then an optional path and query ("/v1/x?a=b"); a "#fragment" is cut
 *   off, as an HTTP client never sends it.
 *     - host: a DNS name ([A-Za-z0-9._-], at most URL_HOST_BYTES - 1 bytes), a dotted-
 *       quad IPv4 literal, or an IPv6 literal in brackets without a zone;
 *     - port: decimal 1..65535, default 443;
 *     - no userinfo ("user:pass@"): credentials in a URL would travel in logs and in
 *       the Host header's neighbourhood; the outbound client never sends them;
 *     - path and query: printable ASCII without space (0x21..0x7E), at most
 *       URL_TARGET_BYTES - 1 bytes; an empty path is "/".
 *   Anything else (http://, no host, a control byte, a non-ASCII byte) is refused.
 * - Pure: no I/O, no allocation, no globals, no resolver. *out is a self-contained
 *   copy; on failure it is all zero and the result is a fixed text that never holds
 *   input bytes (safe to log).
 */
#ifndef PYRELAY_URL_H
#define PYRELAY_URL_H

#include "core/common.h"

#define URL_HOST_BYTES 256    /* a DNS name is at most 253 bytes */
#define URL_AUTHORITY_BYTES 272 /* "[" host "]:" port */
#define URL_TARGET_BYTES 2048
#define URL_HTTPS_PORT_DEFAULT 443u

struct https_url {
	char host[URL_HOST_BYTES];           /* name or IP literal, without brackets */
	char authority[URL_AUTHORITY_BYTES]; /* host[:port] as the Host header carries it */
	char target[URL_TARGET_BYTES];       /* path and query, "/" at least */
	uint16_t port;
	bool host_is_ip; /* an IP literal: no SNI, and the certificate must name the IP */
};

/* Parse s (NUL-terminated; NULL is ""). Returns NULL on success, else why not. */
const char *url_parse_https(const char *s, struct https_url *out);

#endif
