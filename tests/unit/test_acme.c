/*
 * test_acme.c - the ACME pieces that need no server (control/acme_json.h, acme.h,
 * autocert.h): the resource parsers (shapes Let's Encrypt and Pebble send, and what
 * they must refuse), base64url, the JWS (verified with the public key it names), the
 * JWK thumbprint, the cache-directory rule of reference §1.3, the renewal time; and the
 * Host gate (http/http_head.h) and --domain check (config.h) of --domain mode.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "config/config.h"
#include "control/acme.h"
#include "control/acme_json.h"
#include "control/autocert.h"
#include "envelope/json.h"
#include "http/http_head.h"
#include "http/http_parse.h"

static struct span S(const char *s)
{
	return span_make(s, strlen(s));
}

static void test_directory(void **state)
{
	(void)state;
	struct acme_directory d;
	const char *le = "{\"keyChange\":\"https://acme/kc\",\"meta\":{\"termsOfService\":\"https://x/tos.pdf\","
			 "\"caaIdentities\":[\"letsencrypt.org\"]},\"newAccount\":\"https://acme/new-acct\","
			 "\"newNonce\":\"https://acme/new-nonce\",\"newOrder\":\"https://acme/new-order\","
			 "\"renewalInfo\":\"https://acme/ri\",\"revokeCert\":\"https://acme/rc\",\"Xq\":\"\"}";
	assert_true(acme_parse_directory(S(le), &d));
	assert_string_equal(d.new_nonce, "https://acme/new-nonce");
	assert_string_equal(d.new_account, "https://acme/new-acct");
	assert_string_equal(d.new_order, "https://acme/new-order");
	/* escapes are decoded; the last duplicate wins */
	assert_true(acme_parse_directory(S("{\"newNonce\":\"a\",\"newNonce\":\"https:\\/\\/n\",\"newAccount\":\"b\",\"newOrder\":\"c\"}"), &d));
	assert_string_equal(d.new_nonce, "https://n");
	static const char *bad[] = {
		"",
		"[]",
		"{\"newNonce\":\"a\",\"newAccount\":\"b\"}",                    /* no newOrder */
		"{\"newNonce\":1,\"newAccount\":\"b\",\"newOrder\":\"c\"}",     /* wrong type */
		"{\"newNonce\":\"a b\",\"newAccount\":\"b\",\"newOrder\":\"c\"}", /* space in a URL */
		"{\"newNonce\":\"a\\u0000\",\"newAccount\":\"b\",\"newOrder\":\"c\"}",
		"{\"newNonce\":\"a\",\"newAccount\":\"b\",\"newOrder\":\"c\"",   /* cut short */
		"{\"newNonce\":\"a\",\"newAccount\":\"b\",\"newOrder\":\"c\"} x",
	};
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		memset(&d, 0x55, sizeof d);
		assert_false(acme_parse_directory(S(bad[i]), &d));
		assert_int_equal(d.new_nonce[0], 0);
	}
	/* a URL one byte too long for its buffer refuses the reply */
	static char big[ACME_URL_BYTES + 128];
	int n = snprintf(big, sizeof big, "{\"newAccount\":\"b\",\"newOrder\":\"c\",\"newNonce\":\"");
	memset(big + n, 'u', ACME_URL_BYTES);
	snprintf(big + n + ACME_URL_BYTES, sizeof big - (size_t)n - ACME_URL_BYTES, "\"}");
	assert_false(acme_parse_directory(S(big), &d));
	big[n + ACME_URL_BYTES - 1] = '"';
	big[n + ACME_URL_BYTES] = '}';
	big[n + ACME_URL_BYTES + 1] = '\0';
	assert_true(acme_parse_directory(S(big), &d));
	assert_int_equal(strlen(d.new_nonce), ACME_URL_BYTES - 1);
}

static void test_order(void **state)
{
	(void)state;
	struct acme_order o;
	assert_true(acme_parse_order(S("{\"status\":\"pending\",\"expires\":\"2026-12-14T00:00:00Z\","
				       "\"identifiers\":[{\"type\":\"dns\",\"value\":\"relay.example.com\"}],"
				       "\"authorizations\":[\"https://acme/authz/1\",\"https://acme/authz/2\"],"
				       "\"finalize\":\"https://acme/finalize/9\",\"certificate\":null}"),
				     &o));
	assert_int_equal(o.status, ACME_STATUS_PENDING);
	assert_int_equal(o.nauthz, 2);
	assert_string_equal(o.authz[1], "https://acme/authz/2");
	assert_string_equal(o.finalize, "https://acme/finalize/9");
	assert_string_equal(o.certificate, "");
	assert_true(acme_parse_order(S("{\"status\":\"valid\",\"certificate\":\"https://acme/cert/1\"}"), &o));
	assert_int_equal(o.status, ACME_STATUS_VALID);
	assert_string_equal(o.certificate, "https://acme/cert/1");
	assert_true(acme_parse_order(S("{\"status\":\"something-new\"}"), &o));
	assert_int_equal(o.status, ACME_STATUS_UNKNOWN);
	assert_false(acme_parse_order(S("{\"authorizations\":[1]}"), &o));
	assert_false(acme_parse_order(S("{\"authorizations\":\"https://a\"}"), &o));
	assert_false(acme_parse_order(S("{\"status\":true}"), &o));
	char many[1024];
	int n = snprintf(many, sizeof many, "{\"authorizations\":[");
	for (unsigned i = 0; i <= ACME_AUTHZ_MAX; i++)
		n += snprintf(many + n, sizeof many - (size_t)n, "%s\"https://a/%u\"", i ? "," : "", i);
	snprintf(many + n, sizeof many - (size_t)n, "]}");
	assert_false(acme_parse_order(S(many), &o)); /* one more than ACME_AUTHZ_MAX */
}

static void test_authz(void **state)
{
	(void)state;
	struct acme_authz a;
	assert_true(acme_parse_authz(S("{\"identifier\":{\"type\":\"dns\",\"value\":\"r.example\"},\"status\":\"pending\","
				       "\"challenges\":[{\"type\":\"dns-01\",\"url\":\"https://a/c/1\",\"token\":\"t1\",\"status\":\"pending\"},"
				       "{\"type\":\"tls-alpn-01-but-a-much-longer-type-name-than-any\",\"url\":\"https://a/c/x\",\"token\":\"tx\"},"
				       "{\"type\":\"http-01\",\"url\":\"https://a/c/2\",\"token\":\"tok_EN-2\",\"status\":\"pending\"},"
				       "{\"type\":\"http-01\",\"url\":\"https://a/c/3\",\"token\":\"second\"}]}"),
				     &a));
	assert_int_equal(a.status, ACME_STATUS_PENDING);
	assert_true(a.have_http01);
	assert_string_equal(a.http01_url, "https://a/c/2"); /* the first http-01 */
	assert_string_equal(a.http01_token, "tok_EN-2");
	assert_int_equal(a.http01_status, ACME_STATUS_PENDING);
	assert_true(acme_parse_authz(S("{\"status\":\"valid\",\"challenges\":[{\"type\":\"dns-01\",\"url\":\"u\",\"token\":\"t\"}]}"), &a));
	assert_int_equal(a.status, ACME_STATUS_VALID);
	assert_false(a.have_http01);
	assert_false(acme_parse_authz(S("{\"challenges\":[\"x\"]}"), &a));
	assert_false(acme_parse_authz(S("{\"challenges\":[{\"type\":\"http-01\",\"token\":\"a/../b c\"}]}"), &a));
}

static void test_problem(void **state)
{
	(void)state;
	struct acme_problem p;
	assert_true(acme_parse_problem(S("{\"type\":\"urn:ietf:params:acme:error:badNonce\",\"detail\":\"JWS has an invalid anti-replay nonce\",\"status\":400}"), &p));
	assert_string_equal(p.type, "urn:ietf:params:acme:error:badNonce");
	assert_false(acme_parse_problem(S("not json"), &p));
	assert_string_equal(p.type, "");
	assert_int_equal(acme_status_of("ready"), ACME_STATUS_READY);
	assert_string_equal(acme_status_name(ACME_STATUS_PROCESSING), "processing");
}

static void test_b64url(void **state)
{
	(void)state;
	/* RFC 4648 §10 vectors, URL alphabet, no padding */
	static const char *const in[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar" };
	static const char *const out[] = { "", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy" };
	char buf[16];
	for (size_t i = 0; i < ARRAY_LEN(in); i++) {
		size_t n = acme_b64url(buf, sizeof buf, (const uint8_t *)in[i], strlen(in[i]));
		assert_string_equal(buf, out[i]);
		assert_int_equal(n, strlen(out[i]));
	}
	const uint8_t hi[] = { 0xfb, 0xff, 0xfe };
	acme_b64url(buf, sizeof buf, hi, sizeof hi);
	assert_string_equal(buf, "-__-");
}

/* base64url back to bytes (test only). */
static size_t unb64url(const char *s, size_t n, uint8_t *out)
{
	static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	uint32_t acc = 0;
	int bits = 0;
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		const char *p = strchr(a, s[i]);
		assert_non_null(p);
		acc = acc << 6 | (uint32_t)(p - a);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (uint8_t)(acc >> bits);
		}
	}
	return o;
}

/* The value of "name":"..." in a flat JSON text (test only). */
static void member(const char *json, const char *name, char *out, size_t cap)
{
	char key[64];
	snprintf(key, sizeof key, "\"%s\":\"", name);
	const char *p = strstr(json, key);
	assert_non_null(p);
	p += strlen(key);
	const char *e = strchr(p, '"');
	assert_non_null(e);
	assert_true((size_t)(e - p) < cap);
	memcpy(out, p, (size_t)(e - p));
	out[e - p] = '\0';
}

static void test_jws(void **state)
{
	(void)state;
	EVP_PKEY *k = acme_key_generate();
	assert_non_null(k);
	static char jws[8192];
	for (int with_kid = 0; with_kid <= 1; with_kid++) {
		size_t n = acme_jws(jws, sizeof jws, k, with_kid ? "https://acme/acct/7" : NULL, "NONCE_1-x",
				    "https://acme/new-order", with_kid ? "{\"a\":1}" : "");
		assert_true(n > 0 && n == strlen(jws));
		assert_true(json_valid(span_make(jws, n)));
		static char prot[4096], payload[2048], sig[256];
		member(jws, "protected", prot, sizeof prot);
		member(jws, "payload", payload, sizeof payload);
		member(jws, "signature", sig, sizeof sig);
		uint8_t hdr[2048];
		size_t hn = unb64url(prot, strlen(prot), hdr);
		hdr[hn] = '\0';
		assert_true(json_valid(span_make(hdr, hn)));
		assert_non_null(strstr((char *)hdr, "\"alg\":\"ES256\""));
		assert_non_null(strstr((char *)hdr, "\"nonce\":\"NONCE_1-x\""));
		assert_non_null(strstr((char *)hdr, "\"url\":\"https://acme/new-order\""));
		assert_true((strstr((char *)hdr, "\"kid\":\"https://acme/acct/7\"") != NULL) == with_kid);
		assert_true((strstr((char *)hdr, "\"jwk\":{\"crv\":\"P-256\",\"kty\":\"EC\"") != NULL) == !with_kid);
		uint8_t pl[64];
		size_t pn = unb64url(payload, strlen(payload), pl);
		assert_int_equal(pn, with_kid ? 7 : 0);
		/* the signature verifies over "protected.payload" with the account key */
		uint8_t s[64];
		assert_int_equal(unb64url(sig, strlen(sig), s), 64);
		static char signing[8192];
		snprintf(signing, sizeof signing, "%s.%s", prot, payload);
		uint8_t digest[SHA256_DIGEST_LENGTH];
		SHA256((const uint8_t *)signing, strlen(signing), digest);
		ECDSA_SIG *es = ECDSA_SIG_new();
		BN_bin2bn(s, 32, es->r);
		BN_bin2bn(s + 32, 32, es->s);
		assert_int_equal(ECDSA_do_verify(digest, sizeof digest, es, EVP_PKEY_get0_EC_KEY(k)), 1);
		s[10] ^= 1;
		BN_bin2bn(s, 32, es->r);
		assert_int_not_equal(ECDSA_do_verify(digest, sizeof digest, es, EVP_PKEY_get0_EC_KEY(k)), 1);
		ECDSA_SIG_free(es);
	}
	/* too small a buffer: 0, never a cut JWS */
	assert_int_equal(acme_jws(jws, 100, k, NULL, "n", "https://a/", "{}"), 0);

	/* the thumbprint: SHA-256 of the canonical JWK (RFC 7638 §3.2), which the jwk in
	 * the JWS header carries member for member */
	char tp[44], tp2[44];
	assert_true(acme_jwk_thumbprint(k, tp));
	assert_int_equal(strlen(tp), 43);
	size_t n = acme_jws(jws, sizeof jws, k, NULL, "n", "https://a/", "");
	assert_true(n > 0);
	char prot[4096];
	member(jws, "protected", prot, sizeof prot);
	uint8_t hdr[2048];
	size_t hn = unb64url(prot, strlen(prot), hdr);
	hdr[hn] = '\0';
	char *j = strstr((char *)hdr, "{\"crv\"");
	char *e = strchr(j, '}');
	uint8_t digest[SHA256_DIGEST_LENGTH];
	SHA256((const uint8_t *)j, (size_t)(e - j + 1), digest);
	acme_b64url(tp2, sizeof tp2, digest, sizeof digest);
	assert_string_equal(tp, tp2);
	EVP_PKEY_free(k);
}

static void test_cache_rule(void **state)
{
	(void)state;
	const uint32_t dir = S_IFDIR, file = S_IFREG;
	assert_int_equal(autocert_cache_verdict(false, 0, 0, 1000), AUTOCERT_CACHE_CREATE);
	assert_int_equal(autocert_cache_verdict(true, dir | 0700, 1000, 1000), AUTOCERT_CACHE_OK);
	assert_int_equal(autocert_cache_verdict(true, dir | 0500, 0, 1000), AUTOCERT_CACHE_OK); /* no g/o bits */
	assert_int_equal(autocert_cache_verdict(true, dir | 0755, 1000, 1000), AUTOCERT_CACHE_TIGHTEN);
	assert_int_equal(autocert_cache_verdict(true, dir | 0701, 1000, 1000), AUTOCERT_CACHE_TIGHTEN);
	assert_int_equal(autocert_cache_verdict(true, dir | 0710, 0, 1000), AUTOCERT_CACHE_REFUSE_INSECURE);
	assert_int_equal(autocert_cache_verdict(true, file | 0600, 1000, 1000), AUTOCERT_CACHE_REFUSE_NOT_DIR);
	assert_int_equal(autocert_renew_at_s(0, 90 * 86400), 60 * 86400);
	assert_int_equal(autocert_renew_at_s(1000, 1030), 1020);
	assert_int_equal(autocert_renew_at_s(1000, 900), 1000);
}

static bool host_ok(const char *host_line, const char *domain)
{
	char req[512];
	struct http_request r;
	int n = snprintf(req, sizeof req, "GET /healthz HTTP/1.1\r\n%s\r\n\r\n", host_line);
	assert_int_equal(http_parse_request((const uint8_t *)req, (size_t)n, &r), HTTP_PARSE_OK);
	return http_host_matches(&r, domain);
}

static void test_host_gate(void **state)
{
	(void)state;
	assert_true(host_ok("Host: relay.example.com", "relay.example.com"));
	assert_true(host_ok("Host: RELAY.Example.COM:443", "relay.example.com"));
	assert_true(host_ok("Host: relay.example.com:", "relay.example.com"));
	assert_false(host_ok("Host: relay.example.com.", "relay.example.com"));
	assert_false(host_ok("Host: other.example.com", "relay.example.com"));
	assert_false(host_ok("Host: relay.example.com:1:2", "relay.example.com"));
	assert_false(host_ok("X-Host: relay.example.com", "relay.example.com"));
	assert_true(host_ok("Host: [::1]:8443", "::1"));
	assert_false(host_ok("Host: [::1]", "::1"));
	assert_true(host_ok("Host: [::1]", "[::1]"));
	/* the first Host counts (http_header_get) */
	assert_true(host_ok("Host: relay.example.com\r\nHost: x", "relay.example.com"));
}

static void test_domain(void **state)
{
	(void)state;
	assert_true(config_domain_valid("relay.example.com"));
	assert_true(config_domain_valid("a"));
	assert_true(config_domain_valid("xn--bcher-kva.example"));
	static const char *const bad[] = { "", ".", "a..b", "a.", ".a", "-a.b", "a-.b", "a/b", "a b", "a:443",
					   "*.example.com", "relay_1.example" };
	for (size_t i = 0; i < ARRAY_LEN(bad); i++)
		assert_false(config_domain_valid(bad[i]));
	char label[80];
	memset(label, 'a', 64);
	label[64] = '\0';
	assert_false(config_domain_valid(label));
	label[63] = '\0';
	assert_true(config_domain_valid(label));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_directory), cmocka_unit_test(test_order),      cmocka_unit_test(test_authz),
		cmocka_unit_test(test_problem),   cmocka_unit_test(test_b64url),     cmocka_unit_test(test_jws),
		cmocka_unit_test(test_cache_rule), cmocka_unit_test(test_host_gate), cmocka_unit_test(test_domain),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
