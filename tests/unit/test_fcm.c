/*
 * test_fcm.c - the pure parts of a push wake (control/fcm.h): the outcome classifier
 * (reference §7.2, table by reply), the token reply, the request bodies, the signed
 * JWT-bearer assertion (verified here with the key's public half), token_fp and Go's
 * duration text.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/evp.h>

#include "config/config.h"
#include "control/fcm.h"
#include "fcm_keys.h"

#define FCM_ERR(status, details) \
	"{\"error\":{\"code\":404,\"message\":\"free text: token abc\",\"status\":" status ",\"details\":" details "}}"
#define DETAIL(code) "{\"@type\":\"" FCM_ERROR_TYPE "\",\"errorCode\":" code "}"

static void classify(int status, const char *body, struct fcm_send_result *out)
{
	fcm_classify_send_reply(status, span_make(body, strlen(body)), out);
}

static void expect(int status, const char *body, enum fcm_outcome outcome, const char *err, const char *id)
{
	struct fcm_send_result r;
	classify(status, body, &r);
	if (r.outcome != outcome || strcmp(r.err, err) != 0 || strcmp(r.message_id, id) != 0)
		fail_msg("status %d body %s: got %s / \"%s\" / \"%s\", want %s / \"%s\" / \"%s\"", status, body,
			 fcm_outcome_names[r.outcome], r.err, r.message_id, fcm_outcome_names[outcome], err, id);
	/* FCM's free text never reaches anything we keep */
	assert_null(strstr(r.err, "free text"));
}

static void test_classify_sent(void **state)
{
	(void)state;
	const char *id = "projects/pyrycode-mobile/messages/0:1700000000%abc_DEF-9";
	expect(200, "{\"name\":\"projects/pyrycode-mobile/messages/0:1700000000%abc_DEF-9\"}", FCM_OUTCOME_SENT, "", id);
	expect(201, " {\"x\":[1,{\"name\":\"no\"}],\"NAME\":\"a\\/b\"} ", FCM_OUTCOME_SENT, "", "a/b");
	expect(299, "{\"name\":\"a\",\"name\":\"b\"}", FCM_OUTCOME_SENT, "", "b");
	expect(200, "{\"name\":\"a\",\"name\":null}", FCM_OUTCOME_SENT, "", "a");
	/* a 2xx is sent whatever its body; the id only when well formed */
	static const char *const no_id[] = {
		"", "not json", "null", "[]", "\"name\"", "{}", "{\"name\":\"\"}", "{\"name\":7}",
		"{\"name\":\"a b\"}", "{\"name\":\"a=b\"}", "{\"name\":\"a\\\"b\"}", "{\"name\":\"a\\nb\"}",
		"{\"name\":\"\xc3\xa9\"}", "{\"name\":\"ok\",\"x\":", "{\"name\":\"ok\"} trailing",
		"{\"n\xff\":1,\"name\":\"ok\"}",
	};
	for (size_t i = 0; i < sizeof no_id / sizeof no_id[0]; i++)
		expect(200, no_id[i], FCM_OUTCOME_SENT, "", "");
	/* 256 bytes of the id alphabet is the longest id kept */
	char body[400], name[300];
	for (int len = 255; len <= 257; len++) {
		memset(name, 'a', (size_t)len);
		name[len] = '\0';
		snprintf(body, sizeof body, "{\"name\":\"%s\"}", name);
		expect(200, body, FCM_OUTCOME_SENT, "", len <= 256 ? name : "");
	}
}

static void test_classify_failed(void **state)
{
	(void)state;
	const char *unreg = FCM_ERR("\"NOT_FOUND\"", "[" DETAIL("\"UNREGISTERED\"") "]");
	expect(404, unreg, FCM_OUTCOME_UNREGISTERED, "fcm send failed: status 404 (NOT_FOUND, UNREGISTERED)", "");
	/* 3xx is a failure: redirects are never followed */
	expect(302, "", FCM_OUTCOME_SEND_FAILED, "fcm send failed: status 302", "");
	expect(500, "<html>oops</html>", FCM_OUTCOME_SEND_FAILED, "fcm send failed: status 500", "");
	expect(503, "{\"error\":{\"status\":\"UNAVAILABLE\"}}", FCM_OUTCOME_SEND_FAILED,
	       "fcm send failed: status 503 (UNAVAILABLE)", "");
	/* the code alone; another code is send_failed */
	expect(400, "{\"error\":{\"details\":[" DETAIL("\"INVALID_ARGUMENT\"") "]}}", FCM_OUTCOME_SEND_FAILED,
	       "fcm send failed: status 400 (INVALID_ARGUMENT)", "");
	expect(404, "{\"error\":{\"details\":[" DETAIL("\"UNREGISTERED\"") "]}}", FCM_OUTCOME_UNREGISTERED,
	       "fcm send failed: status 404 (UNREGISTERED)", "");
	/* the first FcmError entry with a valid code counts; other @types are skipped */
	expect(404,
	       FCM_ERR("\"NOT_FOUND\"", "[{\"@type\":\"type.googleapis.com/google.rpc.BadRequest\",\"errorCode\":\"X\"},"
					"{\"@type\":\"" FCM_ERROR_TYPE "\",\"errorCode\":\"bad code\"},"
					DETAIL("\"UNREGISTERED\"") "," DETAIL("\"QUOTA_EXCEEDED\"") "]"),
	       FCM_OUTCOME_UNREGISTERED, "fcm send failed: status 404 (NOT_FOUND, UNREGISTERED)", "");
	/* values that are not enum-shaped are dropped, and only they */
	expect(404, FCM_ERR("\"not found\"", "[" DETAIL("\"UNREGISTERED\"") "]"), FCM_OUTCOME_UNREGISTERED,
	       "fcm send failed: status 404 (UNREGISTERED)", "");
	expect(404, FCM_ERR("\"NOT_FOUND\"", "[" DETAIL("\"unregistered\"") "]"), FCM_OUTCOME_SEND_FAILED,
	       "fcm send failed: status 404 (NOT_FOUND)", "");
	char body[512], code[80];
	for (int len = 64; len <= 65; len++) {
		memset(code, 'A', (size_t)len);
		code[len] = '\0';
		snprintf(body, sizeof body, "{\"error\":{\"status\":\"%s\"}}", code);
		struct fcm_send_result r;
		classify(429, body, &r);
		assert_int_equal(r.outcome, FCM_OUTCOME_SEND_FAILED);
		assert_int_equal(strstr(r.err, code) != NULL, len == 64);
	}
	/* a declared member of the wrong type voids the whole reply (Unmarshal's error) */
	static const char *const voided[] = {
		FCM_ERR("7", "[" DETAIL("\"UNREGISTERED\"") "]"),
		FCM_ERR("\"NOT_FOUND\"", "{}"),
		FCM_ERR("\"NOT_FOUND\"", "[1]"),
		FCM_ERR("\"NOT_FOUND\"", "[" DETAIL("\"UNREGISTERED\"") ",{\"errorCode\":5}]"),
		FCM_ERR("\"NOT_FOUND\"", "[{\"@type\":[]}]"),
		"{\"error\":\"NOT_FOUND\"}",
		"[{\"error\":{\"status\":\"NOT_FOUND\"}}]",
		"{\"error\":{\"status\":\"NOT_FOUND\"}} x",
		"{\"error\":{\"status\":\"NOT_FOUND\"},\"error\":1}",
	};
	for (size_t i = 0; i < sizeof voided / sizeof voided[0]; i++)
		expect(404, voided[i], FCM_OUTCOME_SEND_FAILED, "fcm send failed: status 404", "");
	/* null leaves a member as it was; names fold ASCII case; the last one wins */
	expect(404, "{\"ERROR\":{\"Status\":\"NOT_FOUND\",\"status\":null,\"DETAILS\":null}}", FCM_OUTCOME_SEND_FAILED,
	       "fcm send failed: status 404 (NOT_FOUND)", "");
	expect(404, "{\"error\":{\"status\":\"A\"},\"error\":{\"status\":\"B\"}}", FCM_OUTCOME_SEND_FAILED,
	       "fcm send failed: status 404 (B)", "");
	expect(404, "null", FCM_OUTCOME_SEND_FAILED, "fcm send failed: status 404", "");
	/* a reply cut at the read limit is not JSON: status only */
	expect(404, "{\"pad\":\"xxxx\",\"error\":{\"status\":\"NOT_FOUND\",\"details\":[" DETAIL("\"UNREG"),
	       FCM_OUTCOME_SEND_FAILED, "fcm send failed: status 404", "");
	/* the "message" member is never read, whatever it holds */
	expect(404, "{\"error\":{\"message\":{\"deep\":[1,2]},\"status\":\"NOT_FOUND\"}}", FCM_OUTCOME_SEND_FAILED,
	       "fcm send failed: status 404 (NOT_FOUND)", "");
}

static void test_token_reply(void **state)
{
	(void)state;
	char tok[FCM_ACCESS_TOKEN_BYTES_MAX];
	int64_t exp;
#define TOKEN(body) fcm_parse_token_reply(span_make(body, strlen(body)), tok, sizeof tok, &exp)
	assert_true(TOKEN("{\"access_token\":\"ya29.a0-B_c\",\"expires_in\":3599,\"token_type\":\"Bearer\"}"));
	assert_string_equal(tok, "ya29.a0-B_c");
	assert_int_equal(exp, 3599);
	assert_true(TOKEN("{\"ACCESS_TOKEN\":\"t\",\"id_token\":null,\"expires_in\":null,\"x\":{\"y\":[]}}"));
	assert_string_equal(tok, "t");
	assert_int_equal(exp, 0); /* no lifetime: x/oauth2 treats the token as never expiring */
	assert_true(TOKEN("{\"access_token\":\"t\",\"expires_in\":-5}"));
	assert_int_equal(exp, -5);
	assert_true(TOKEN("{\"access_token\":\"t\",\"expires_in\":9223372036854775807}"));
	assert_true(exp == INT64_MAX);
	static const char *const bad[] = {
		"", "x", "[]", "null", "{}", "{\"access_token\":\"\"}", "{\"access_token\":null}",
		"{\"access_token\":7}",
		"{\"access_token\":\"t\",\"expires_in\":\"3599\"}",
		"{\"access_token\":\"t\",\"expires_in\":3599.0}",
		"{\"access_token\":\"t\",\"expires_in\":3.6e3}",
		"{\"access_token\":\"t\",\"expires_in\":9223372036854775808}",
		"{\"access_token\":\"t\",\"token_type\":1}",
		"{\"access_token\":\"t\",\"id_token\":{}}",
		/* it goes into a header line: printable ASCII only */
		"{\"access_token\":\"a b\"}", "{\"access_token\":\"a\\r\\nX-Injected: 1\"}",
		"{\"access_token\":\"\xc3\xa9\"}",
		"{\"access_token\":\"t\"",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (TOKEN(bad[i]))
			fail_msg("token reply accepted: %s", bad[i]);
		assert_string_equal(tok, "");
	}
	/* a token longer than the buffer is refused, not cut */
	static char big[FCM_ACCESS_TOKEN_BYTES_MAX + 64];
	for (size_t len = FCM_ACCESS_TOKEN_BYTES_MAX - 1; len <= FCM_ACCESS_TOKEN_BYTES_MAX; len++) {
		size_t n = (size_t)snprintf(big, sizeof big, "{\"access_token\":\"");
		memset(big + n, 'k', len);
		snprintf(big + n + len, sizeof big - n - len, "\"}");
		assert_int_equal(TOKEN(big), len < FCM_ACCESS_TOKEN_BYTES_MAX);
	}
#undef TOKEN
}

static void test_bodies(void **state)
{
	(void)state;
	char out[256];
	const char *tok = "dEvIcE:tok\"\\<&>\n\xe2\x80\xa8";
	size_t n = fcm_send_body(out, sizeof out, span_cstr(tok));
	assert_true(n > 0);
	/* escaped as Go's json.Marshal */
	assert_string_equal(out, "{\"message\":{\"token\":\"dEvIcE:tok\\\"\\\\\\u003c\\u0026\\u003e\\n\\u2028\","
				 "\"android\":{\"priority\":\"HIGH\"}}}");
	assert_int_equal(n, strlen(out));
	assert_true(n <= FCM_SEND_BODY_LEN_MAX(strlen(tok)));
	assert_int_equal(fcm_send_body(out, n, span_cstr(tok)), 0); /* no room for the NUL */

	n = fcm_token_request_body(out, sizeof out, "aa.bb.cc");
	assert_string_equal(out, "assertion=aa.bb.cc&grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer");
	assert_int_equal(n, strlen(out));
	assert_int_equal(fcm_token_request_body(out, 20, "aa.bb.cc"), 0);
}

static size_t b64url_decode(const char *in, size_t n, uint8_t *out)
{
	size_t j = 0;
	uint32_t acc = 0;
	int bits = 0;
	for (size_t i = 0; i < n; i++) {
		const char *a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
		const char *p = strchr(a, in[i]);
		assert_non_null(p);
		acc = acc << 6 | (uint32_t)(p - a);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[j++] = (uint8_t)(acc >> bits);
		}
	}
	return j;
}

static void test_jwt(void **state)
{
	(void)state;
	struct config_fcm_credentials c;
	assert_true(config_fcm_credentials_parse("{\"type\":\"service_account\",\"client_email\":\"a<b>@x\","
						 "\"private_key\":\"" TK_RSA_PKCS8_JSON "\",\"private_key_id\":\"k1\","
						 "\"token_uri\":\"https://127.0.0.1:9/token\"}",
						 &c));
	static char jwt[FCM_JWT_BYTES_MAX];
	size_t n = fcm_jwt_sign(jwt, sizeof jwt, c.pkey, c.client_email, c.private_key_id, c.token_uri, 1700000000);
	assert_true(n > 0 && n == strlen(jwt));
	const char *d1 = strchr(jwt, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
	assert_non_null(d2);
	uint8_t part[1024];
	size_t pn = b64url_decode(jwt, (size_t)(d1 - jwt), part);
	assert_memory_equal(part, "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"k1\"}", pn);
	pn = b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), part);
	static const char claims[] = "{\"iss\":\"a\\u003cb\\u003e@x\",\"scope\":\"" FCM_SCOPE "\","
				     "\"aud\":\"https://127.0.0.1:9/token\",\"exp\":1700003600,\"iat\":1700000000}";
	assert_int_equal(pn, strlen(claims));
	assert_memory_equal(part, claims, pn);
	assert_null(strchr(jwt, '='));
	/* the signature verifies with the public half over "header.claims" */
	uint8_t sig[512];
	size_t sn = b64url_decode(d2 + 1, strlen(d2 + 1), sig);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	assert_int_equal(EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, c.pkey), 1);
	assert_int_equal(EVP_DigestVerify(ctx, sig, sn, (const uint8_t *)jwt, (size_t)(d2 - jwt)), 1);
	EVP_MD_CTX_free(ctx);
	/* no key id: no kid */
	n = fcm_jwt_sign(jwt, sizeof jwt, c.pkey, c.client_email, "", c.token_uri, 1);
	pn = b64url_decode(jwt, (size_t)(strchr(jwt, '.') - jwt), part);
	assert_memory_equal(part, "{\"alg\":\"RS256\",\"typ\":\"JWT\"}", pn);
	/* too small a buffer: 0, never a cut assertion */
	assert_int_equal(fcm_jwt_sign(jwt, 64, c.pkey, c.client_email, "", c.token_uri, 1), 0);
	config_fcm_credentials_free(&c);
}

static void test_token_fp_and_duration(void **state)
{
	(void)state;
	char fp[FCM_TOKEN_FP_HEX + 1];
	fcm_token_fp(span_cstr("abc"), fp); /* SHA-256("abc") = ba7816bf... */
	assert_string_equal(fp, "ba7816bf");
	fcm_token_fp(span_cstr(""), fp); /* e3b0c442... */
	assert_string_equal(fp, "e3b0c442");

	static const struct {
		uint64_t ns;
		const char *text;
	} d[] = {
		{ 0, "0s" },
		{ 1, "1ns" },
		{ 999, "999ns" },
		{ 1000, "1\xc2\xb5s" },
		{ 1500, "1.5\xc2\xb5s" },
		{ 152300000, "152.3ms" },
		{ 55094542, "55.094542ms" },
		{ 1000000000, "1s" },
		{ 1200000001, "1.200000001s" },
		{ 90000000000ull, "1m30s" },
		{ 3600000000000ull, "1h0m0s" },
		{ 3723500000000ull, "1h2m3.5s" },
	};
	char out[FCM_DURATION_BYTES];
	for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) {
		fcm_format_duration(out, sizeof out, d[i].ns);
		assert_string_equal(out, d[i].text);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_classify_sent),
		cmocka_unit_test(test_classify_failed),
		cmocka_unit_test(test_token_reply),
		cmocka_unit_test(test_bodies),
		cmocka_unit_test(test_jwt),
		cmocka_unit_test(test_token_fp_and_duration),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
