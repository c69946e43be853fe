/*
 * fuzz_url.c - libFuzzer target for core/url.c, the parser of the https:// URLs the
 * relay calls out to (--fcm-endpoint, the service-account key's token_uri): operator
 * bytes, but a URL that parses wrong sends a bearer token somewhere else.
 *
 * Input: byte 0 bit 0 picks the mode, the rest is its input.
 *   0 raw: the rest is the URL (up to its first NUL, as a C string).
 *   1 built: the rest describes a URL that is valid by construction: byte 1 the host
 *     kind (name, IPv4, IPv6) and the scheme's letter case, bytes 2-3 the port (0: none),
 *     byte 4 the host length, then host bytes (mapped into the name alphabet, or the
 *     address bytes), then the path (mapped into 0x21..0x7E without '#'), then an
 *     optional "#fragment".
 *
 * Oracles:
 * - raw: a refusal leaves *out all zero and its reason is fixed text (printable ASCII,
 *   not a pointer into the input); an acceptance has a host (a name of
 *   [A-Za-z0-9._-], host_is_ip exactly when inet_pton reads it as IPv4; or a bracketed
 *   literal inet_pton reads as IPv6), a port 1..65535, an authority that is the input's
 *   own text between "https://" and the path, and a target that starts with '/' and is
 *   printable ASCII without space or '#'; and the URL rebuilt from the parts, in either
 *   of two spellings ("https://" authority target, and "HTTPS://" host ":" port target),
 *   parses to the same parts;
 * - built: accepted, with exactly the parts it was built from (the default port 443
 *   when none was written, "/" for an empty path, the fragment cut off).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_REASON_BYTES_MAX 80
#define FZ_URL_BYTES_MAX (URL_AUTHORITY_BYTES + URL_TARGET_BYTES + 32)

static const char fz_name_alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_";

static char *fz_cstr(const uint8_t *p, size_t n)
{
	char *s = malloc(n + 1);
	if (!s)
		abort();
	memcpy(s, p, n);
	s[n] = '\0';
	return s;
}

static void check_zeroed(const struct https_url *u)
{
	static const struct https_url zero;
	ASSERT(memcmp(u, &zero, sizeof zero) == 0);
}

static bool is_name(const char *h)
{
	if (*h == '\0')
		return false;
	for (; *h; h++)
		if (!strchr(fz_name_alphabet, *h))
			return false;
	return true;
}

static void check_same(const struct https_url *a, const struct https_url *b, bool same_authority)
{
	ASSERT(strcmp(a->host, b->host) == 0);
	ASSERT(strcmp(a->target, b->target) == 0);
	ASSERT(a->port == b->port && a->host_is_ip == b->host_is_ip);
	if (same_authority)
		ASSERT(strcmp(a->authority, b->authority) == 0);
}

static void reparse(const char *text, const struct https_url *want, bool same_authority)
{
	struct https_url again;
	ASSERT(url_parse_https(text, &again) == NULL);
	check_same(want, &again, same_authority);
}

static void check_accepted(const char *s, const struct https_url *u)
{
	/* the host */
	bool bracketed = u->authority[0] == '[';
	if (bracketed) {
		struct in6_addr v6;
		ASSERT(u->host_is_ip && inet_pton(AF_INET6, u->host, &v6) == 1);
	} else {
		struct in_addr v4;
		ASSERT(is_name(u->host));
		ASSERT(u->host_is_ip == (inet_pton(AF_INET, u->host, &v4) == 1));
	}
	ASSERT(u->port >= 1);

	/* the authority is the input's own text after the scheme, up to the path */
	size_t alen = strlen(u->authority);
	ASSERT(strncasecmp(s, "https://", 8) == 0);
	ASSERT(strncmp(s + 8, u->authority, alen) == 0);
	char after = s[8 + alen];
	ASSERT(after == '\0' || after == '/' || after == '?' || after == '#');
	size_t hlen = strlen(u->host);
	if (bracketed)
		ASSERT(u->authority[hlen + 1] == ']' && strncmp(u->authority + 1, u->host, hlen) == 0);
	else
		ASSERT(strncmp(u->authority, u->host, hlen) == 0);
	const char *rest = u->authority + hlen + (bracketed ? 2 : 0);
	if (*rest == '\0') {
		ASSERT(u->port == URL_HTTPS_PORT_DEFAULT);
	} else {
		ASSERT(*rest == ':');
		unsigned long v = 0;
		for (const char *d = rest + 1; *d; d++) {
			ASSERT(isdigit((unsigned char)*d));
			v = v * 10 + (unsigned long)(*d - '0');
			ASSERT(v <= 65535);
		}
		ASSERT(v == u->port);
	}

	/* the target */
	size_t tlen = strlen(u->target);
	ASSERT(tlen >= 1 && u->target[0] == '/' && tlen < URL_TARGET_BYTES);
	for (size_t i = 0; i < tlen; i++)
		ASSERT(u->target[i] > 0x20 && u->target[i] < 0x7F && u->target[i] != '#');

	/* rebuilt, in two spellings */
	static char text[FZ_URL_BYTES_MAX];
	snprintf(text, sizeof text, "https://%s%s", u->authority, u->target);
	reparse(text, u, true);
	if (bracketed)
		snprintf(text, sizeof text, "HTTPS://[%s]:%u%s#frag", u->host, (unsigned)u->port, u->target);
	else
		snprintf(text, sizeof text, "HtTpS://%s:%u%s", u->host, (unsigned)u->port, u->target);
	reparse(text, u, false);
}

static void fuzz_raw(const uint8_t *p, size_t n)
{
	char *s = fz_cstr(p, n);
	struct https_url u;
	const char *why = url_parse_https(s, &u);
	if (why) {
		check_zeroed(&u);
		ASSERT(!(why >= s && why <= s + n));
		size_t wl = strnlen(why, FZ_REASON_BYTES_MAX);
		ASSERT(wl > 0 && wl < FZ_REASON_BYTES_MAX);
		for (size_t i = 0; i < wl; i++)
			ASSERT(why[i] >= 0x20 && why[i] < 0x7F);
	} else {
		check_accepted(s, &u);
	}
	free(s);
}

static void fuzz_built(const uint8_t *p, size_t n)
{
	if (n < 4)
		return;
	unsigned kind = p[0] % 3;
	bool upper_scheme = (p[0] & 0x80) != 0;
	unsigned port = (unsigned)p[1] << 8 | p[2];
	size_t hl = p[3];
	p += 4;
	n -= 4;

	char host[URL_HOST_BYTES];
	bool is_ip = false;
	if (kind == 0) {
		hl = MIN(hl % (URL_HOST_BYTES - 8), n);
		if (hl == 0)
			return;
		for (size_t i = 0; i < hl; i++)
			host[i] = fz_name_alphabet[p[i] % (sizeof fz_name_alphabet - 1)];
		host[hl] = '\0';
		struct in_addr v4;
		is_ip = inet_pton(AF_INET, host, &v4) == 1;
	} else {
		hl = kind == 1 ? 4 : 16;
		if (n < hl)
			return;
		if (!inet_ntop(kind == 1 ? AF_INET : AF_INET6, p, host, sizeof host))
			abort();
		is_ip = true;
	}
	p += hl;
	n -= hl;

	static char path[URL_TARGET_BYTES];
	size_t pl = MIN(n, (size_t)URL_TARGET_BYTES - 2);
	size_t frag = pl;
	for (size_t i = 0; i < pl; i++) {
		char c = (char)(0x21 + p[i] % (0x7F - 0x21));
		if (c == '#' && frag == pl)
			frag = i; /* everything from here is the fragment */
		path[i] = c;
	}
	path[pl] = '\0';
	/* a path must start with '/' or '?', else it would continue the authority */
	if (pl > 0 && path[0] != '/' && path[0] != '?' && path[0] != '#')
		path[0] = '/';

	static char text[FZ_URL_BYTES_MAX];
	const char *scheme = upper_scheme ? "hTTpS://" : "https://";
	if (kind == 2)
		snprintf(text, sizeof text, "%s[%s]", scheme, host);
	else
		snprintf(text, sizeof text, "%s%s", scheme, host);
	if (port != 0)
		snprintf(text + strlen(text), sizeof text - strlen(text), ":%u", port);
	size_t auth_len = strlen(text) - 8;
	snprintf(text + strlen(text), sizeof text - strlen(text), "%s", path);

	struct https_url u;
	const char *why = url_parse_https(text, &u);
	ASSERT(why == NULL);
	ASSERT(strcmp(u.host, host) == 0 && u.host_is_ip == is_ip);
	ASSERT(u.port == (port ? port : URL_HTTPS_PORT_DEFAULT));
	ASSERT(strlen(u.authority) == auth_len && memcmp(u.authority, text + 8, auth_len) == 0);
	/* the target: up to the fragment, "/" in front of a bare query or nothing */
	char want[URL_TARGET_BYTES + 1];
	size_t wl = 0;
	if (frag == 0 || path[0] == '?')
		want[wl++] = '/';
	memcpy(want + wl, path, frag);
	want[wl + frag] = '\0';
	ASSERT(strcmp(u.target, want) == 0);
	check_accepted(text, &u);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (data[0] & 1)
		fuzz_built(data + 1, size - 1);
	else
		fuzz_raw(data + 1, size - 1);
	return 0;
}
