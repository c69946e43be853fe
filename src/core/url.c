/*
 * url.c - https:// URL parser (contract in url.h).
 */
#include "core/url.h"

#include <arpa/inet.h>
#include <string.h>

#define URL_SCHEME "https://"
#define URL_SCHEME_LEN (sizeof URL_SCHEME - 1)
#define URL_PORT_MAX 65535u

static bool name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
	       c == '-' || c == '_';
}

static bool target_char(char c)
{
	return c > 0x20 && c < 0x7f;
}

static const char *fail(struct https_url *out, const char *why)
{
	memset(out, 0, sizeof *out);
	return why;
}

/* "host" or "[v6]" from [a, b): fills out->host and host_is_ip. */
static const char *parse_host(const char *a, const char *b, struct https_url *out)
{
	size_t n = (size_t)(b - a);
	if (n == 0)
		return "URL has no host";
	if (a[0] == '[') {
		struct in6_addr v6;
		if (n < 3 || b[-1] != ']' || n - 2 >= URL_HOST_BYTES)
			return "URL host is not a bracketed IPv6 literal";
		memcpy(out->host, a + 1, n - 2);
		out->host[n - 2] = '\0';
		if (inet_pton(AF_INET6, out->host, &v6) != 1)
			return "URL host is not a bracketed IPv6 literal";
		out->host_is_ip = true;
		return NULL;
	}
	if (n >= URL_HOST_BYTES)
		return "URL host is too long";
	for (size_t i = 0; i < n; i++) {
		if (!name_char(a[i]))
			return "URL host is not a DNS name or an IP literal";
	}
	memcpy(out->host, a, n);
	out->host[n] = '\0';
	struct in_addr v4;
	out->host_is_ip = inet_pton(AF_INET, out->host, &v4) == 1;
	return NULL;
}

const char *url_parse_https(const char *s, struct https_url *out)
{
	memset(out, 0, sizeof *out);
	if (s == NULL || strncasecmp(s, URL_SCHEME, URL_SCHEME_LEN) != 0)
		return fail(out, "URL is not https://");
	const char *auth = s + URL_SCHEME_LEN;
	size_t auth_len = strcspn(auth, "/?#");
	const char *auth_end = auth + auth_len;
	if (auth_len >= URL_AUTHORITY_BYTES)
		return fail(out, "URL host is too long");
	if (memchr(auth, '@', auth_len))
		return fail(out, "URL carries user information");

	/* the port is after the last ':' outside the brackets of an IPv6 literal */
	const char *host_end = auth_end;
	const char *rb = memchr(auth, ']', auth_len);
	const char *colon = NULL;
	for (const char *p = rb ? rb : auth; p < auth_end; p++)
		if (*p == ':')
			colon = p;
	out->port = URL_HTTPS_PORT_DEFAULT;
	if (colon) {
		uint32_t port = 0;
		if (colon + 1 == auth_end)
			return fail(out, "URL port is empty");
		for (const char *p = colon + 1; p < auth_end; p++) {
			if (*p < '0' || *p > '9')
				return fail(out, "URL port is not a number");
			port = port * 10 + (uint32_t)(*p - '0');
			if (port > URL_PORT_MAX)
				return fail(out, "URL port is out of range");
		}
		if (port == 0)
			return fail(out, "URL port is out of range");
		out->port = (uint16_t)port;
		host_end = colon;
	}
	const char *why = parse_host(auth, host_end, out);
	if (why)
		return fail(out, why);
	memcpy(out->authority, auth, auth_len);
	out->authority[auth_len] = '\0';

	const char *t = auth_end;
	size_t tn = strcspn(t, "#");
	for (size_t i = 0; i < tn; i++) {
		if (!target_char(t[i]))
			return fail(out, "URL path holds a space, control or non-ASCII byte");
	}
	if (tn == 0 || t[0] == '?') {
		/* "https://h" and "https://h?q" request "/" and "/?q", as Go does */
		if (tn + 1 >= URL_TARGET_BYTES)
			return fail(out, "URL path is too long");
		out->target[0] = '/';
		memcpy(out->target + 1, t, tn);
		out->target[tn + 1] = '\0';
		return NULL;
	}
	if (tn >= URL_TARGET_BYTES)
		return fail(out, "URL path is too long");
	memcpy(out->target, t, tn);
	out->target[tn] = '\0';
	return NULL;
}
