/*
 * fuzz_acme_json.c - libFuzzer target for the ACME replies the autocert client reads
 * from the network (control/acme_json.c).
 *
 * Input: byte 0 picks the parser (value % 4: directory, order, authorization,
 * problem); the rest is the reply body.
 *
 * Oracles: a parse that succeeds was given valid JSON (json_valid agrees); every string
 * it kept is NUL-terminated inside its buffer and holds only printable ASCII without
 * space; counts stay within their bounds; a failed parse leaves its output zeroed; the
 * same input parses the same way twice (pure).
 */
#include <string.h>

#include "control/acme_json.h"
#include "envelope/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) \
	do { \
		if (!(x)) \
			__builtin_trap(); \
	} while (0)

static void check_str(const char *s, size_t cap)
{
	size_t n = strnlen(s, cap);
	CHECK(n < cap);
	for (size_t i = 0; i < n; i++)
		CHECK((unsigned char)s[i] > 0x20 && (unsigned char)s[i] < 0x7f);
}

static bool zeroed(const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		if (b[i])
			return false;
	return true;
}

static union {
	struct acme_directory d;
	struct acme_order o;
	struct acme_authz a;
	struct acme_problem p;
} out, again;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	struct span in = span_make(data + 1, size - 1);
	bool ok = false;
	size_t n = 0;
	switch (data[0] % 4) {
	case 0:
		ok = acme_parse_directory(in, &out.d);
		CHECK(ok == acme_parse_directory(in, &again.d));
		n = sizeof out.d;
		if (ok) {
			check_str(out.d.new_nonce, ACME_URL_BYTES);
			check_str(out.d.new_account, ACME_URL_BYTES);
			check_str(out.d.new_order, ACME_URL_BYTES);
			CHECK(out.d.new_nonce[0] && out.d.new_account[0] && out.d.new_order[0]);
		}
		break;
	case 1:
		ok = acme_parse_order(in, &out.o);
		CHECK(ok == acme_parse_order(in, &again.o));
		n = sizeof out.o;
		if (ok) {
			CHECK(out.o.nauthz <= ACME_AUTHZ_MAX);
			for (uint32_t i = 0; i < out.o.nauthz; i++)
				check_str(out.o.authz[i], ACME_URL_BYTES);
			check_str(out.o.finalize, ACME_URL_BYTES);
			check_str(out.o.certificate, ACME_URL_BYTES);
		}
		break;
	case 2:
		ok = acme_parse_authz(in, &out.a);
		CHECK(ok == acme_parse_authz(in, &again.a));
		n = sizeof out.a;
		if (ok && out.a.have_http01) {
			check_str(out.a.http01_url, ACME_URL_BYTES);
			check_str(out.a.http01_token, ACME_TOKEN_BYTES);
			CHECK(out.a.http01_url[0] && out.a.http01_token[0]);
		}
		break;
	default:
		ok = acme_parse_problem(in, &out.p);
		CHECK(ok == acme_parse_problem(in, &again.p));
		n = sizeof out.p;
		if (ok)
			check_str(out.p.type, ACME_PROBLEM_TYPE_BYTES);
		break;
	}
	if (ok)
		CHECK(json_valid(in));
	else
		CHECK(zeroed(&out, n));
	CHECK(memcmp(&out, &again, n) == 0);
	return 0;
}
