/*
 * lg_traffic.c - pure helpers: the phone payload, masking, the upgrade request, the
 * 101 check and the envelope classification. No I/O, no allocation.
 *
 * Phone payload (exactly `size` bytes of JSON, so the relay accepts it):
 *     {"s":<seq>,"t":<send_ns>,"p":<phone>,"x":"<pad>"}
 * <pad> is a slice of "abcdefghijklmnopqrstuvwxyzabc..." starting at letter seq % 26,
 * so every byte of a returned frame can be checked against (seq, t, phone) alone.
 */
#include <stdio.h>
#include <string.h>

#include "lg.h"

static uint8_t pattern[LG_SIZE_BYTES_MAX + 32];

void lg_pattern_init(void)
{
	for (size_t i = 0; i < sizeof pattern; i++)
		pattern[i] = (uint8_t)('a' + i % 26);
}

static size_t put_u64(uint8_t *out, uint64_t v)
{
	uint8_t tmp[20];
	size_t n = 0;
	do {
		tmp[n++] = (uint8_t)('0' + v % 10);
		v /= 10;
	} while (v);
	for (size_t i = 0; i < n; i++)
		out[i] = tmp[n - 1 - i];
	return n;
}

static size_t put_lit(uint8_t *out, const char *s, size_t n)
{
	memcpy(out, s, n);
	return n;
}

#define LIT(out, s) put_lit((out), (s), sizeof(s) - 1)
#define PAYLOAD_PREFIX_BYTES_MAX 96u

/* {"s":N,"t":N,"p":N,"x":" into out (room PAYLOAD_PREFIX_BYTES_MAX); returns its length */
static size_t prefix_write(uint8_t *out, uint64_t seq, uint64_t t_ns, uint32_t phone)
{
	size_t n = 0;
	n += LIT(out + n, "{\"s\":");
	n += put_u64(out + n, seq);
	n += LIT(out + n, ",\"t\":");
	n += put_u64(out + n, t_ns);
	n += LIT(out + n, ",\"p\":");
	n += put_u64(out + n, phone);
	n += LIT(out + n, ",\"x\":\"");
	ASSERT(n <= PAYLOAD_PREFIX_BYTES_MAX);
	return n;
}

size_t lg_payload_write(uint8_t *out, uint32_t size, uint64_t seq, uint64_t t_ns, uint32_t phone)
{
	uint8_t pre[PAYLOAD_PREFIX_BYTES_MAX];
	size_t n = prefix_write(pre, seq, t_ns, phone);
	if (n + 2 > size)
		return 0;
	size_t pad = size - n - 2;
	memcpy(out, pre, n);
	memcpy(out + n, pattern + seq % 26, pad);
	out[n + pad] = '"';
	out[n + pad + 1] = '}';
	return size;
}

bool lg_payload_parse_seq(const uint8_t *p, size_t n, uint64_t *seq)
{
	if (n < 6 || memcmp(p, "{\"s\":", 5) != 0)
		return false;
	uint64_t v = 0;
	size_t i = 5, digits = 0;
	while (i < n && p[i] >= '0' && p[i] <= '9' && digits < 19) {
		v = v * 10 + (uint64_t)(p[i] - '0');
		i++;
		digits++;
	}
	if (digits == 0 || i >= n || p[i] != ',')
		return false;
	*seq = v;
	return true;
}

bool lg_payload_equal(const uint8_t *p, size_t n, uint32_t size, uint64_t seq, uint64_t t_ns,
		      uint32_t phone)
{
	if (n != size)
		return false;
	uint8_t pre[PAYLOAD_PREFIX_BYTES_MAX];
	size_t k = prefix_write(pre, seq, t_ns, phone);
	if (k + 2 > n)
		return false;
	size_t pad = n - k - 2;
	return memcmp(p, pre, k) == 0 && memcmp(p + k, pattern + seq % 26, pad) == 0 &&
	       p[n - 2] == '"' && p[n - 1] == '}';
}

void lg_mask_copy(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key[4])
{
	uint32_t k4;
	memcpy(&k4, key, 4);
	uint64_t k8 = (uint64_t)k4 << 32 | k4;
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t v;
		memcpy(&v, src + i, 8);
		v ^= k8;
		memcpy(dst + i, &v, 8);
	}
	for (; i < n; i++)
		dst[i] = src[i] ^ key[i & 3];
}

size_t lg_ws_header_len(uint64_t payload_len)
{
	if (payload_len < 126)
		return 2 + 4;
	if (payload_len <= 0xFFFF)
		return 4 + 4;
	return 10 + 4;
}

size_t lg_request_build(char *out, size_t cap, enum lg_role role, const char *host, uint16_t port,
			const char *server_id, const char *ws_key)
{
	int n;
	if (role == LG_ROLE_BINARY)
		n = snprintf(out, cap,
			     "GET /v1/server HTTP/1.1\r\nHost: %s:%u\r\nUpgrade: websocket\r\n"
			     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
			     "X-Pyrycode-Server: %s\r\nX-Pyrycode-Version: loadgen-1\r\n"
			     "User-Agent: pyrycode-loadgen/1\r\n\r\n",
			     host, port, ws_key, server_id);
	else
		n = snprintf(out, cap,
			     "GET /v1/client HTTP/1.1\r\nHost: %s:%u\r\nUpgrade: websocket\r\n"
			     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
			     "X-Pyrycode-Server: %s\r\nX-Pyrycode-Token: loadgen-token\r\n"
			     "User-Agent: pyrycode-loadgen-phone/1\r\n\r\n",
			     host, port, ws_key, server_id);
	ASSERT(n > 0 && (size_t)n < cap);
	return (size_t)n;
}

static uint8_t lower(uint8_t c)
{
	return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
}

static bool name_is(const uint8_t *p, size_t n, const char *lit)
{
	size_t k = strlen(lit);
	if (n != k)
		return false;
	for (size_t i = 0; i < n; i++)
		if (lower(p[i]) != (uint8_t)lit[i])
			return false;
	return true;
}

/* True if the comma-separated value contains `token` (lowercase literal). */
static bool has_token(const uint8_t *p, size_t n, const char *token)
{
	size_t i = 0;
	while (i < n) {
		while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == ','))
			i++;
		size_t s = i;
		while (i < n && p[i] != ',')
			i++;
		size_t e = i;
		while (e > s && (p[e - 1] == ' ' || p[e - 1] == '\t'))
			e--;
		if (name_is(p + s, e - s, token))
			return true;
	}
	return false;
}

int lg_response_check(const uint8_t *p, size_t n, const char *accept, size_t *head_len, int *status)
{
	*status = 0;
	size_t end = 0;
	for (size_t i = 3; i < n; i++) {
		if (p[i] == '\n' && p[i - 1] == '\r' && p[i - 2] == '\n' && p[i - 3] == '\r') {
			end = i + 1;
			break;
		}
	}
	if (end == 0)
		return n >= LG_HEAD_BYTES_MAX ? -1 : 0;
	if (end < 13 || memcmp(p, "HTTP/1.1 ", 9) != 0)
		return -1;
	for (int i = 9; i < 12; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		*status = *status * 10 + (p[i] - '0');
	}
	if (*status != 101)
		return -1;
	bool up = false, conn = false, acc = false, extra = false;
	size_t i = 0;
	while (i < end && p[i] != '\n')
		i++;
	i++;
	while (i + 2 <= end) {
		size_t ls = i;
		while (i < end && p[i] != '\n')
			i++;
		size_t le = i; /* at '\n' */
		i++;
		if (le > ls && p[le - 1] == '\r')
			le--;
		if (le == ls)
			break; /* the blank line */
		size_t c = ls;
		while (c < le && p[c] != ':')
			c++;
		if (c == le)
			return -1;
		size_t vs = c + 1;
		while (vs < le && (p[vs] == ' ' || p[vs] == '\t'))
			vs++;
		size_t ve = le;
		while (ve > vs && (p[ve - 1] == ' ' || p[ve - 1] == '\t'))
			ve--;
		const uint8_t *name = p + ls, *val = p + vs;
		size_t nl = c - ls, vl = ve - vs;
		if (name_is(name, nl, "upgrade"))
			up = has_token(val, vl, "websocket");
		else if (name_is(name, nl, "connection"))
			conn = has_token(val, vl, "upgrade");
		else if (name_is(name, nl, "sec-websocket-accept"))
			acc = vl == strlen(accept) && memcmp(val, accept, vl) == 0;
		else if (name_is(name, nl, "sec-websocket-extensions") ||
			 name_is(name, nl, "sec-websocket-protocol"))
			extra = true;
	}
	if (!up || !conn || !acc || extra)
		return -1;
	*head_len = end;
	return 1;
}

void lg_base64_16(const uint8_t in[16], char out[25])
{
	static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0;
	for (size_t i = 0; i < 15; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		out[o++] = tab[v >> 18 & 63];
		out[o++] = tab[v >> 12 & 63];
		out[o++] = tab[v >> 6 & 63];
		out[o++] = tab[v & 63];
	}
	uint32_t v = (uint32_t)in[15] << 16;
	out[o++] = tab[v >> 18 & 63];
	out[o++] = tab[v >> 12 & 63];
	out[o++] = '=';
	out[o++] = '=';
	out[o] = '\0';
}

enum lg_envelope lg_envelope_kind(const uint8_t *p, size_t n)
{
	static const char head[] = "{\"conn_id\":\"";
	size_t hl = sizeof head - 1;
	if (n < hl + 2 || memcmp(p, head, hl) != 0 || p[n - 1] != '}')
		return LG_ENV_BAD;
	size_t i = hl;
	while (i < n && p[i] != '"') {
		if (p[i] == '\\')
			i++;
		i++;
	}
	if (i >= n)
		return LG_ENV_BAD;
	i++;
	static const char fr[] = ",\"frame\":";
	static const char cc[] = ",\"close_code\":";
	if (n - i > sizeof fr - 1 && memcmp(p + i, fr, sizeof fr - 1) == 0)
		return LG_ENV_FRAME;
	if (n - i > sizeof cc - 1 && memcmp(p + i, cc, sizeof cc - 1) == 0)
		return LG_ENV_CLOSE_NOTICE;
	return LG_ENV_BAD;
}
