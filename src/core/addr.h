/*
 * addr.h - listener addresses: the one parser for "IP:PORT", "[IPv6]:PORT" and ":PORT"
 * (reference §1.5, §1.6), shared by the boot checks (config/) and the code that binds
 * (engine/net.c), so what was checked is exactly what gets bound.
 *
 * Contract:
 * - addr_parse_listen applies Go's net.SplitHostPort rules first (same checks in the
 *   same order, same wording), then the relay's own:
 *     - the port is decimal digits only, 1..65535: no service names ("http"), no sign,
 *       and no 0 (Go's "pick an ephemeral port" would make the listener unfindable);
 *     - the host is an IP literal: a dotted-quad IPv4 address, or an IPv6 address in
 *       brackets without a zone ("%eth0"). Names are never resolved: a name resolved
 *       when it is checked and again when it is bound can change in between (DNS
 *       rebinding), and a resolver has no business in a boot path;
 *     - an empty host (":8080") means every interface, and is accepted only when the
 *       caller says so (allow_empty_host); "[]:80" is never accepted.
 * - Pure: no I/O, no allocation, no globals, no locale. The input is a NUL-terminated
 *   string owned by the caller (NULL is treated as ""); *out is a self-contained copy.
 * - On failure *out is all zero and the result names the first rule broken.
 *   addr_error_text gives its fixed wording: a static string that never contains input
 *   bytes, so it is safe to log.
 * - Limits: the host text is at most ADDR_HOST_BYTES - 1 bytes; a longer host cannot
 *   be an IP literal and is refused as one (ADDR_ERR_HOST_NOT_IP).
 */
#ifndef PYRELAY_ADDR_H
#define PYRELAY_ADDR_H

#include "core/common.h"

/* INET6_ADDRSTRLEN is 46; the rest is slack so any IP literal fits with its NUL. */
#define ADDR_HOST_BYTES 64
#define ADDR_IP_BYTES 16 /* an IPv6 address; an IPv4 one uses the first 4 */

enum addr_error {
	ADDR_OK = 0,
	ADDR_ERR_EMPTY,              /* "" (or NULL) */
	ADDR_ERR_MISSING_PORT,       /* no ':' at all, or text between ']' and ':' */
	ADDR_ERR_MISSING_RBRACKET,   /* "[" without "]" */
	ADDR_ERR_TOO_MANY_COLONS,    /* an unbracketed host with ':' in it, "[::1]:80:90" */
	ADDR_ERR_UNEXPECTED_LBRACKET,
	ADDR_ERR_UNEXPECTED_RBRACKET,
	ADDR_ERR_PORT_SYNTAX,        /* empty, or anything but decimal digits */
	ADDR_ERR_PORT_RANGE,         /* above 65535 */
	ADDR_ERR_PORT_ZERO,
	ADDR_ERR_MISSING_HOST,       /* "" where a host is required, or "[]" */
	ADDR_ERR_HOST_NOT_IP,        /* unbracketed host that is not an IPv4 literal */
	ADDR_ERR_HOST_NOT_IPV6,      /* bracketed host that is not an IPv6 literal */
};

/* A parsed listener address. host[0] == '\0' means every interface. */
struct listen_addr {
	char host[ADDR_HOST_BYTES]; /* the IP literal as written, without brackets, or "" */
	uint8_t ip[ADDR_IP_BYTES];  /* host in network byte order; all zero when host is "" */
	uint16_t port;              /* 1..65535, host byte order */
	bool is_ipv6;               /* the host was bracketed (and so is IPv6) */
};

/* Parse s; see the contract above. */
enum addr_error addr_parse_listen(const char *s, bool allow_empty_host, struct listen_addr *out);

/* Fixed text for e, in Go's wording where Go has one (e.g. "missing port in address"). */
const char *addr_error_text(enum addr_error e);

/* 127.0.0.0/8, or exactly ::1 (IPv4-mapped ::ffff:127.x is not loopback here: one rule,
 * no aliases). False for the every-interface address. */
bool addr_is_loopback(const struct listen_addr *a);

#endif
