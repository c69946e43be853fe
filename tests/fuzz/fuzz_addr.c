/*
 * fuzz_addr.c - libFuzzer target for core/addr.c, built addresses: the fuzzer picks
 * the parts (an IPv4 or IPv6 address as bytes, a port as a number, a spelling), the
 * target writes the text and knows the one answer the contract in addr.h gives for it.
 * fuzz_config.c feeds addr_parse_listen raw strings (round trip, refusal shape); this
 * target checks that the answers are the right ones.
 *
 * Input: byte 0 the spelling (value % 10, below); byte 1 bit 0: allow_empty_host;
 * bytes 2-4 the port (24 bits, so out-of-range ones occur), byte 5 leading zeros put
 * before it (value % 3); bytes 6-21 the address bytes.
 *   0 "a.b.c.d:port"            OK (ip = the 4 bytes)
 *   1 "[v6]:port"               OK (ip = the 16 bytes; inet_ntop's text)
 *   2 ":port"                   OK when allow_empty_host, else MISSING_HOST
 *   3 "[]:port"                 MISSING_HOST
 *   4 "v6:port" unbracketed     TOO_MANY_COLONS (the text has a ':' before the last)
 *   5 "[a.b.c.d]:port"          HOST_NOT_IPV6
 *   6 "[v6%eth0]:port"          HOST_NOT_IPV6 (zones are refused)
 *   7 "0a.b.c.d:port"           HOST_NOT_IP (a leading zero in an octet)
 *   8 "a.b.c.d:+port"           PORT_SYNTAX
 *   9 "a.b.c.d"                 MISSING_PORT
 * A port of 0 is PORT_ZERO and one above 65535 PORT_RANGE wherever the port is
 * reached (spellings 0-2, 5-7). On OK the struct holds the host text, the bytes and the
 * port, and addr_is_loopback is exactly 127.0.0.0/8 or ::1.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "core/addr.h"
#include "core/common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_INPUT_BYTES 22
#define FZ_TEXT_BYTES 128

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < FZ_INPUT_BYTES)
		return 0;
	unsigned spelling = data[0] % 10;
	bool allow_empty = data[1] & 1;
	uint32_t port = (uint32_t)data[2] << 16 | (uint32_t)data[3] << 8 | data[4];
	unsigned zeros = data[5] % 3;
	const uint8_t *ip = data + 6;

	char v4[INET_ADDRSTRLEN], v6[INET6_ADDRSTRLEN], ptext[16];
	snprintf(v4, sizeof v4, "%u.%u.%u.%u", ip[0], ip[1], ip[2], ip[3]);
	ASSERT(inet_ntop(AF_INET6, ip, v6, sizeof v6) != NULL);
	snprintf(ptext, sizeof ptext, "%.*s%u", (int)zeros, "00", (unsigned)port);

	char text[FZ_TEXT_BYTES];
	const char *host = "";
	enum addr_error want;
	bool port_reached = true;
	switch (spelling) {
	case 0:
		snprintf(text, sizeof text, "%s:%s", v4, ptext);
		host = v4;
		want = ADDR_OK;
		break;
	case 1:
		snprintf(text, sizeof text, "[%s]:%s", v6, ptext);
		host = v6;
		want = ADDR_OK;
		break;
	case 2:
		snprintf(text, sizeof text, ":%s", ptext);
		want = allow_empty ? ADDR_OK : ADDR_ERR_MISSING_HOST;
		break;
	case 3:
		snprintf(text, sizeof text, "[]:%s", ptext);
		want = ADDR_ERR_MISSING_HOST;
		break;
	case 4:
		snprintf(text, sizeof text, "%s:%s", v6, ptext);
		want = ADDR_ERR_TOO_MANY_COLONS;
		port_reached = false;
		break;
	case 5:
		snprintf(text, sizeof text, "[%s]:%s", v4, ptext);
		want = ADDR_ERR_HOST_NOT_IPV6;
		break;
	case 6:
		snprintf(text, sizeof text, "[%s%%eth0]:%s", v6, ptext);
		want = ADDR_ERR_HOST_NOT_IPV6;
		break;
	case 7:
		snprintf(text, sizeof text, "0%s:%s", v4, ptext);
		want = ADDR_ERR_HOST_NOT_IP;
		break;
	case 8:
		snprintf(text, sizeof text, "%s:+%s", v4, ptext);
		want = ADDR_ERR_PORT_SYNTAX;
		port_reached = false;
		break;
	default:
		snprintf(text, sizeof text, "%s", v4);
		want = ADDR_ERR_MISSING_PORT;
		port_reached = false;
		break;
	}
	/* the port is checked before the host (addr.h: Go's split first, then the port) */
	if (port_reached && port == 0)
		want = ADDR_ERR_PORT_ZERO;
	else if (port_reached && port > 65535)
		want = ADDR_ERR_PORT_RANGE;

	struct listen_addr a;
	enum addr_error e = addr_parse_listen(text, allow_empty, &a);
	ASSERT(e == want);
	if (e != ADDR_OK) {
		static const struct listen_addr zero;
		ASSERT(memcmp(&a, &zero, sizeof zero) == 0);
		return 0;
	}
	ASSERT(a.port == port);
	ASSERT(strcmp(a.host, host) == 0);
	ASSERT(a.is_ipv6 == (spelling == 1));
	uint8_t want_ip[ADDR_IP_BYTES] = { 0 };
	if (spelling == 0)
		memcpy(want_ip, ip, 4);
	else if (spelling == 1)
		memcpy(want_ip, ip, 16);
	ASSERT(memcmp(a.ip, want_ip, sizeof want_ip) == 0);

	static const uint8_t v6_loopback[16] = { [15] = 1 };
	bool loop = (spelling == 0 && ip[0] == 127) || (spelling == 1 && memcmp(ip, v6_loopback, 16) == 0);
	ASSERT(addr_is_loopback(&a) == loop);
	return 0;
}
