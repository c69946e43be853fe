/*
 * addr.c - the listener-address parser (see addr.h for the contract).
 */
#include "core/addr.h"

#include <arpa/inet.h>
#include <string.h>

#define PORT_MAX 65535u
#define IPV4_LOOPBACK_FIRST_OCTET 127

const char *addr_error_text(enum addr_error e)
{
	switch (e) {
	case ADDR_OK:
		return "ok";
	case ADDR_ERR_EMPTY:
		return "listener address is empty";
	case ADDR_ERR_MISSING_PORT:
		return "missing port in address";
	case ADDR_ERR_MISSING_RBRACKET:
		return "missing ']' in address";
	case ADDR_ERR_TOO_MANY_COLONS:
		return "too many colons in address";
	case ADDR_ERR_UNEXPECTED_LBRACKET:
		return "unexpected '[' in address";
	case ADDR_ERR_UNEXPECTED_RBRACKET:
		return "unexpected ']' in address";
	case ADDR_ERR_PORT_SYNTAX:
		return "port is not a decimal number";
	case ADDR_ERR_PORT_RANGE:
		return "port out of range (1-65535)";
	case ADDR_ERR_PORT_ZERO:
		return "port 0 is not permitted (ephemeral-port placeholder)";
	case ADDR_ERR_MISSING_HOST:
		return "missing host: an IP literal is required";
	case ADDR_ERR_HOST_NOT_IP:
		return "host is not an IP literal (hostnames are not resolved)";
	case ADDR_ERR_HOST_NOT_IPV6:
		return "host in brackets is not an IPv6 literal (zones are not supported)";
	}
	return "invalid listener address";
}

/* Decimal digits only. A non-digit anywhere is a syntax error even after the value has
 * overflowed: ":99999x" is "not a decimal number", not "out of range". */
static enum addr_error parse_port(const char *s, uint16_t *out)
{
	uint32_t v = 0;
	bool range = false;

	if (*s == '\0')
		return ADDR_ERR_PORT_SYNTAX;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return ADDR_ERR_PORT_SYNTAX;
		if (range)
			continue;
		v = v * 10 + (uint32_t)(*s - '0');
		range = v > PORT_MAX;
	}
	if (range)
		return ADDR_ERR_PORT_RANGE;
	if (v == 0)
		return ADDR_ERR_PORT_ZERO;
	*out = (uint16_t)v;
	return ADDR_OK;
}

static enum addr_error fail(struct listen_addr *out, enum addr_error e)
{
	memset(out, 0, sizeof *out);
	return e;
}

enum addr_error addr_parse_listen(const char *s, bool allow_empty_host, struct listen_addr *out)
{
	const char *colon, *host, *host_end, *rest_open, *rest_close;
	bool bracketed = false;
	uint16_t port = 0;
	enum addr_error e;

	memset(out, 0, sizeof *out);
	if (!s || s[0] == '\0')
		return ADDR_ERR_EMPTY;

	/* net.SplitHostPort: the port follows the last colon */
	colon = strrchr(s, ':');
	if (!colon)
		return ADDR_ERR_MISSING_PORT;
	if (s[0] == '[') {
		const char *rb = strchr(s, ']');
		if (!rb)
			return ADDR_ERR_MISSING_RBRACKET;
		if (rb + 1 != colon)
			return rb[1] == ':' ? ADDR_ERR_TOO_MANY_COLONS : ADDR_ERR_MISSING_PORT;
		host = s + 1;
		host_end = rb;
		bracketed = true;
		rest_open = s + 1;
		rest_close = rb + 1;
	} else {
		host = s;
		host_end = colon;
		if (memchr(s, ':', (size_t)(colon - s)))
			return ADDR_ERR_TOO_MANY_COLONS;
		rest_open = s;
		rest_close = s;
	}
	if (strchr(rest_open, '['))
		return ADDR_ERR_UNEXPECTED_LBRACKET;
	if (strchr(rest_close, ']'))
		return ADDR_ERR_UNEXPECTED_RBRACKET;

	/* the relay's rules */
	e = parse_port(colon + 1, &port);
	if (e != ADDR_OK)
		return e;

	size_t host_len = (size_t)(host_end - host);
	if (host_len == 0) {
		if (bracketed || !allow_empty_host)
			return ADDR_ERR_MISSING_HOST;
		out->port = port;
		return ADDR_OK;
	}
	if (host_len >= sizeof out->host)
		return fail(out, ADDR_ERR_HOST_NOT_IP);
	memcpy(out->host, host, host_len);
	out->host[host_len] = '\0';
	/* inet_pton takes exactly dotted-quad IPv4 ("127.1" and "127.0.0.01" are refused)
	 * and zone-less IPv6 */
	if (inet_pton(bracketed ? AF_INET6 : AF_INET, out->host, out->ip) != 1)
		return fail(out, bracketed ? ADDR_ERR_HOST_NOT_IPV6 : ADDR_ERR_HOST_NOT_IP);
	out->is_ipv6 = bracketed;
	out->port = port;
	return ADDR_OK;
}

bool addr_is_loopback(const struct listen_addr *a)
{
	static const uint8_t loopback6[ADDR_IP_BYTES] = { [ADDR_IP_BYTES - 1] = 1 };

	if (a->host[0] == '\0')
		return false;
	if (a->is_ipv6)
		return memcmp(a->ip, loopback6, sizeof loopback6) == 0;
	return a->ip[0] == IPV4_LOOPBACK_FIRST_OCTET;
}
