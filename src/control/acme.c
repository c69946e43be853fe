/*
 * acme.c - the ACME client of one name, HTTP-01 (contract in acme.h).
 *
 * One flow, top to bottom: acme_obtain. Every request goes through post(), which signs,
 * sends, keeps the reply's nonce and retries a badNonce problem; every wait goes
 * through pause_ms(), which the cancel descriptor cuts short.
 */
#include "control/acme.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "control/http_reply.h"
#include "core/clock.h"
#include "core/url.h"

/* A signed request: protected header (a URL, a nonce, a JWK or an account URL) and
 * the payload (a CSR is the largest, ~ 600 bytes of DER), both base64url. */
#define JWS_BYTES_MAX 16384u
#define PAYLOAD_BYTES_MAX 4096u
#define NONCE_BYTES HTTP_REPLY_NONCE_BYTES
#define CONTENT_TYPE_JOSE "application/jose+json"
#define PROBLEM_BAD_NONCE "urn:ietf:params:acme:error:badNonce"

struct acme_client {
	struct https_client *https;
	EVP_PKEY *account_key;
	int cancel_fd;
	char directory_url[ACME_URL_BYTES];
	struct acme_directory dir;
	bool have_dir;
	char kid[ACME_URL_BYTES]; /* the account URL, "" before newAccount */
	char nonce[NONCE_BYTES];  /* the next request's, "" when none is held */
	char thumbprint[44];
	/* scratch, here rather than on the stack: the JWS and the polled resources */
	char jws[JWS_BYTES_MAX];
	char payload[PAYLOAD_BYTES_MAX];
	struct acme_order order;
	struct acme_authz authz;
	char order_url[ACME_URL_BYTES];
	char location[ACME_URL_BYTES];
	char retry_after[HTTP_REPLY_RETRY_AFTER_BYTES];
};

static const char *const stage_names[ACME_STAGE_COUNT] = {
	[ACME_STAGE_DIRECTORY] = "directory", [ACME_STAGE_NONCE] = "nonce",
	[ACME_STAGE_ACCOUNT] = "account",     [ACME_STAGE_ORDER] = "order",
	[ACME_STAGE_AUTHORIZATION] = "authorization", [ACME_STAGE_CHALLENGE] = "challenge",
	[ACME_STAGE_FINALIZE] = "finalize",   [ACME_STAGE_CERTIFICATE] = "certificate",
	[ACME_STAGE_CACHE] = "cache",         [ACME_STAGE_CANCELLED] = "cancelled",
};

const char *acme_stage_name(enum acme_stage s)
{
	return (size_t)s < ACME_STAGE_COUNT ? stage_names[s] : "unknown";
}

/* ------------------------------------------------------------------ pure pieces */

size_t acme_b64url(char *out, size_t cap, const uint8_t *in, size_t n)
{
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t o = 0;
	ASSERT(cap >= n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0) + 1);
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)in[i + 1] << 8;
		if (i + 2 < n)
			v |= in[i + 2];
		out[o++] = alphabet[v >> 18 & 63];
		out[o++] = alphabet[v >> 12 & 63];
		if (i + 1 < n)
			out[o++] = alphabet[v >> 6 & 63];
		if (i + 2 < n)
			out[o++] = alphabet[v & 63];
	}
	out[o] = '\0';
	return o;
}

EVP_PKEY *acme_key_generate(void)
{
	EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
	EVP_PKEY *k = EVP_PKEY_new();
	if (ec == NULL || k == NULL || !EC_KEY_generate_key(ec) || !EVP_PKEY_assign_EC_KEY(k, ec)) {
		EC_KEY_free(ec);
		EVP_PKEY_free(k);
		ERR_clear_error();
		return NULL;
	}
	return k;
}

/* The public point's x and y, base64url (43 characters each). */
static bool jwk_xy(EVP_PKEY *key, char x[44], char y[44])
{
	const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(key);
	uint8_t pt[65];
	if (ec == NULL || EC_GROUP_get_curve_name(EC_KEY_get0_group(ec)) != NID_X9_62_prime256v1 ||
	    EC_POINT_point2oct(EC_KEY_get0_group(ec), EC_KEY_get0_public_key(ec), POINT_CONVERSION_UNCOMPRESSED, pt,
			       sizeof pt, NULL) != sizeof pt) {
		ERR_clear_error();
		return false;
	}
	acme_b64url(x, 44, pt + 1, 32);
	acme_b64url(y, 44, pt + 33, 32);
	return true;
}

/* RFC 7638 §3.2: the required members in lexicographic order, no whitespace. */
static int jwk_json(EVP_PKEY *key, char *out, size_t cap)
{
	char x[44], y[44];
	if (!jwk_xy(key, x, y))
		return -1;
	return snprintf(out, cap, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}", x, y);
}

bool acme_jwk_thumbprint(EVP_PKEY *key, char out[44])
{
	char jwk[160];
	int n = jwk_json(key, jwk, sizeof jwk);
	if (n <= 0 || (size_t)n >= sizeof jwk)
		return false;
	uint8_t digest[SHA256_DIGEST_LENGTH];
	SHA256((const uint8_t *)jwk, (size_t)n, digest);
	acme_b64url(out, 44, digest, sizeof digest);
	return true;
}

/* ES256 (RFC 7518 §3.4): SHA-256, then r and s as 32 big-endian bytes each. */
static bool es256_sign(EVP_PKEY *key, const char *input, size_t n, uint8_t sig[64])
{
	uint8_t digest[SHA256_DIGEST_LENGTH];
	SHA256((const uint8_t *)input, n, digest);
	ECDSA_SIG *s = ECDSA_do_sign(digest, sizeof digest, EVP_PKEY_get0_EC_KEY(key));
	bool ok = s != NULL && BN_bn2bin_padded(sig, 32, s->r) && BN_bn2bin_padded(sig + 32, 32, s->s);
	ECDSA_SIG_free(s);
	ERR_clear_error();
	return ok;
}

size_t acme_jws(char *out, size_t cap, EVP_PKEY *key, const char *kid, const char *nonce, const char *url,
		const char *payload)
{
	char header[ACME_URL_BYTES * 2 + NONCE_BYTES + 256];
	char jwk[160];
	int hn;
	if (kid != NULL) {
		hn = snprintf(header, sizeof header, "{\"alg\":\"ES256\",\"kid\":\"%s\",\"nonce\":\"%s\",\"url\":\"%s\"}",
			      kid, nonce, url);
	} else {
		int jn = jwk_json(key, jwk, sizeof jwk);
		if (jn <= 0 || (size_t)jn >= sizeof jwk)
			return 0;
		hn = snprintf(header, sizeof header, "{\"alg\":\"ES256\",\"jwk\":%s,\"nonce\":\"%s\",\"url\":\"%s\"}",
			      jwk, nonce, url);
	}
	size_t pn = strlen(payload);
	if (hn <= 0 || (size_t)hn >= sizeof header)
		return 0;
	/* {"protected":"H","payload":"P","signature":"S"}, where "H.P" is what is signed */
	size_t hb = ((size_t)hn + 2) / 3 * 4 + 1, pb = (pn + 2) / 3 * 4 + 1;
	if (64 + hb + pb + 88 > cap)
		return 0;
	char *signing = malloc(hb + pb + 1);
	if (signing == NULL)
		return 0;
	size_t h_len = acme_b64url(signing, hb, (const uint8_t *)header, (size_t)hn);
	signing[h_len] = '.';
	size_t p_len = acme_b64url(signing + h_len + 1, pb, (const uint8_t *)payload, pn);
	uint8_t sig[64];
	char sig64[88];
	bool ok = es256_sign(key, signing, h_len + 1 + p_len, sig);
	size_t o = 0;
	if (ok) {
		acme_b64url(sig64, sizeof sig64, sig, sizeof sig);
		signing[h_len] = '\0';
		int n = snprintf(out, cap, "{\"protected\":\"%s\",\"payload\":\"%s\",\"signature\":\"%s\"}", signing,
				 signing + h_len + 1, sig64);
		o = n > 0 && (size_t)n < cap ? (size_t)n : 0;
	}
	free(signing);
	return o;
}

/* ------------------------------------------------------------------ the client */

struct acme_client *acme_client_create(const char *directory_url, EVP_PKEY *account_key, const char *extra_ca_file,
				       int cancel_fd, char why[ACME_WHY_BYTES])
{
	struct https_url u;
	const char *bad = url_parse_https(directory_url, &u);
	if (bad != NULL || strlen(directory_url) >= ACME_URL_BYTES) {
		snprintf(why, ACME_WHY_BYTES, "ACME directory URL: %s", bad ? bad : "too long");
		return NULL;
	}
	struct acme_client *c = calloc(1, sizeof *c);
	if (c == NULL) {
		snprintf(why, ACME_WHY_BYTES, "out of memory for the ACME client");
		return NULL;
	}
	char hwhy[HTTPS_WHY_BYTES];
	c->https = https_client_create(extra_ca_file, hwhy);
	if (c->https == NULL) {
		snprintf(why, ACME_WHY_BYTES, "%s", hwhy);
		free(c);
		return NULL;
	}
	if (!acme_jwk_thumbprint(account_key, c->thumbprint)) {
		snprintf(why, ACME_WHY_BYTES, "the ACME account key is not an EC P-256 key");
		https_client_destroy(c->https);
		free(c);
		return NULL;
	}
	EVP_PKEY_up_ref(account_key);
	c->account_key = account_key;
	c->cancel_fd = cancel_fd;
	snprintf(c->directory_url, sizeof c->directory_url, "%s", directory_url);
	return c;
}

void acme_client_destroy(struct acme_client *c)
{
	if (c == NULL)
		return;
	https_client_destroy(c->https);
	EVP_PKEY_free(c->account_key);
	OPENSSL_cleanse(c, sizeof *c);
	free(c);
}

void acme_issued_free(struct acme_issued *out)
{
	if (out->key_pem) {
		OPENSSL_cleanse(out->key_pem, out->key_len);
		free(out->key_pem);
	}
	free(out->chain_pem);
	memset(out, 0, sizeof *out);
}

/* ------------------------------------------------------------------ requests */

/* One failure: the stage and a reason that holds no reply bytes. */
struct fail {
	enum acme_stage stage;
	char *why;
};

#define FAIL(f, st, ...)                                        \
	do {                                                    \
		(f)->stage = (st);                              \
		snprintf((f)->why, ACME_WHY_BYTES, __VA_ARGS__); \
	} while (0)

/* Sleep ms, or less when cancel_fd becomes readable (then false). */
static bool pause_ms(struct acme_client *c, uint64_t ms)
{
	struct pollfd p = { .fd = c->cancel_fd, .events = POLLIN };
	uint64_t end = monotonic_ms() + ms;
	for (uint32_t i = 0; i < 1000; i++) {
		uint64_t now = monotonic_ms();
		if (now >= end)
			return true;
		int r = poll(&p, c->cancel_fd >= 0 ? 1 : 0, (int)MIN(end - now, (uint64_t)INT32_MAX));
		if (r > 0)
			return false;
		if (r < 0 && errno != EINTR)
			return true;
	}
	return true;
}

static bool cancelled(struct acme_client *c)
{
	struct pollfd p = { .fd = c->cancel_fd, .events = POLLIN };
	return c->cancel_fd >= 0 && poll(&p, 1, 0) > 0;
}

/* An HTTPS call of the flow; NULL with f filled when it did not get a response. */
static struct https_call *call(struct acme_client *c, const char *method, const char *url, const char *body,
			       const char *accept, enum acme_stage stage, struct fail *f)
{
	struct https_url u;
	const char *bad = url_parse_https(url, &u);
	if (bad != NULL) {
		FAIL(f, stage, "the server gave a URL the client cannot call: %s", bad);
		return NULL;
	}
	struct https_header h[2];
	size_t nh = 0;
	if (body != NULL)
		h[nh++] = (struct https_header){ "Content-Type", CONTENT_TYPE_JOSE };
	if (accept != NULL)
		h[nh++] = (struct https_header){ "Accept", accept };
	struct https_request req = {
		.method = method,
		.url = &u,
		.headers = h,
		.nheaders = nh,
		.body = body ? span_cstr(body) : span_make("", 0),
		.reply_body_max = ACME_REPLY_BYTES_MAX,
		.timeout_ms = ACME_CALL_TIMEOUT_MS,
	};
	struct https_call *hc = https_call_run(c->https, &req, c->cancel_fd);
	if (hc == NULL) {
		FAIL(f, stage, "out of memory for an HTTPS call");
		return NULL;
	}
	const struct https_result *r = https_call_result(hc);
	if (r->err != HTTPS_OK) {
		if (r->err == HTTPS_ERR_CANCELLED)
			FAIL(f, ACME_STAGE_CANCELLED, "cancelled by shutdown");
		else
			FAIL(f, stage, "%s %.64s: %.160s", method, u.authority, r->detail);
		https_call_free(hc);
		return NULL;
	}
	if (r->replay_nonce[0] != '\0')
		snprintf(c->nonce, sizeof c->nonce, "%s", r->replay_nonce);
	snprintf(c->location, sizeof c->location, "%s", r->location);
	snprintf(c->retry_after, sizeof c->retry_after, "%s", r->retry_after);
	return hc;
}

static bool get_directory(struct acme_client *c, struct fail *f)
{
	if (c->have_dir)
		return true;
	struct https_call *hc = call(c, "GET", c->directory_url, NULL, NULL, ACME_STAGE_DIRECTORY, f);
	if (hc == NULL)
		return false;
	const struct https_result *r = https_call_result(hc);
	bool ok = r->status == 200 && acme_parse_directory(span_make(r->body, r->body_len), &c->dir);
	if (!ok)
		FAIL(f, ACME_STAGE_DIRECTORY, "directory: status %d%s", r->status,
		     r->status == 200 ? ", not an ACME directory" : "");
	https_call_free(hc);
	c->have_dir = ok;
	return ok;
}

static bool get_nonce(struct acme_client *c, struct fail *f)
{
	if (c->nonce[0] != '\0')
		return true;
	/* GET, not HEAD: the reply parser reads a body framed by Content-Length */
	struct https_call *hc = call(c, "GET", c->dir.new_nonce, NULL, NULL, ACME_STAGE_NONCE, f);
	if (hc == NULL)
		return false;
	int status = https_call_result(hc)->status;
	https_call_free(hc);
	if (c->nonce[0] == '\0') {
		FAIL(f, ACME_STAGE_NONCE, "newNonce: status %d without a Replay-Nonce", status);
		return false;
	}
	return true;
}

/* The problem type of an error reply, "" when it has none. */
static void problem_type(const struct https_result *r, char out[ACME_PROBLEM_TYPE_BYTES])
{
	struct acme_problem p;
	out[0] = '\0';
	if (acme_parse_problem(span_make(r->body, r->body_len), &p))
		memcpy(out, p.type, sizeof p.type);
}

/*
 * A signed POST of payload ("" for POST-as-GET) to url, with the account's kid (or its
 * jwk when use_jwk). Retries badNonce. Returns the call with a 2xx status, or NULL
 * with f filled (the status and problem type of the last reply).
 */
static struct https_call *post(struct acme_client *c, const char *url, const char *payload, bool use_jwk,
			       const char *accept, enum acme_stage stage, struct fail *f)
{
	for (uint32_t attempt = 0; attempt <= ACME_BADNONCE_RETRIES; attempt++) {
		if (!get_nonce(c, f))
			return NULL;
		size_t n = acme_jws(c->jws, sizeof c->jws, c->account_key, use_jwk ? NULL : c->kid, c->nonce, url, payload);
		c->nonce[0] = '\0'; /* used: the reply brings the next */
		if (n == 0) {
			FAIL(f, stage, "cannot sign the request");
			return NULL;
		}
		struct https_call *hc = call(c, "POST", url, c->jws, accept, stage, f);
		if (hc == NULL)
			return NULL;
		const struct https_result *r = https_call_result(hc);
		if (r->status >= 200 && r->status <= 299)
			return hc;
		char type[ACME_PROBLEM_TYPE_BYTES];
		problem_type(r, type);
		int status = r->status;
		https_call_free(hc);
		if (strcmp(type, PROBLEM_BAD_NONCE) == 0)
			continue; /* the error carried a fresh nonce, or get_nonce fetches one */
		FAIL(f, stage, "status %d%s%s", status, type[0] ? " " : "", type);
		return NULL;
	}
	FAIL(f, stage, "badNonce %u times in a row", ACME_BADNONCE_RETRIES + 1);
	return NULL;
}

/* The pause before the next poll: the server's Retry-After (delta-seconds) when it
 * gave one, within bounds, else the default. */
static uint64_t poll_interval_ms(const struct acme_client *c)
{
	const char *s = c->retry_after;
	uint64_t v = 0;
	size_t i = 0;
	for (; s[i] >= '0' && s[i] <= '9' && i < 6; i++)
		v = v * 10 + (uint64_t)(s[i] - '0');
	if (i == 0 || s[i] != '\0')
		return ACME_POLL_INTERVAL_MS;
	return MAX(MIN(v * 1000u, (uint64_t)ACME_POLL_INTERVAL_MAX_MS), (uint64_t)ACME_POLL_INTERVAL_MS);
}

static bool new_account(struct acme_client *c, struct fail *f)
{
	if (c->kid[0] != '\0')
		return true;
	struct https_call *hc = post(c, c->dir.new_account, "{\"termsOfServiceAgreed\":true}", true, NULL,
				     ACME_STAGE_ACCOUNT, f);
	if (hc == NULL)
		return false;
	https_call_free(hc);
	if (c->location[0] == '\0') {
		FAIL(f, ACME_STAGE_ACCOUNT, "newAccount: no account URL (Location)");
		return false;
	}
	snprintf(c->kid, sizeof c->kid, "%s", c->location);
	return true;
}

/* POST-as-GET of an order into c->order. */
static bool read_order(struct acme_client *c, struct https_call *hc, enum acme_stage stage, struct fail *f)
{
	const struct https_result *r = https_call_result(hc);
	if (!acme_parse_order(span_make(r->body, r->body_len), &c->order)) {
		FAIL(f, stage, "the order is not an ACME order object");
		return false;
	}
	return true;
}

static bool poll_order(struct acme_client *c, enum acme_status want, struct fail *f)
{
	for (uint32_t i = 0; i < ACME_POLLS_MAX; i++) {
		if (c->order.status == want)
			return true;
		if (c->order.status == ACME_STATUS_INVALID || c->order.status == ACME_STATUS_EXPIRED) {
			FAIL(f, ACME_STAGE_FINALIZE, "the order became %s", acme_status_name(c->order.status));
			return false;
		}
		if (!pause_ms(c, poll_interval_ms(c))) {
			FAIL(f, ACME_STAGE_CANCELLED, "cancelled by shutdown");
			return false;
		}
		struct https_call *hc = post(c, c->order_url, "", false, NULL, ACME_STAGE_FINALIZE, f);
		if (hc == NULL)
			return false;
		bool ok = read_order(c, hc, ACME_STAGE_FINALIZE, f);
		https_call_free(hc);
		if (!ok)
			return false;
	}
	FAIL(f, ACME_STAGE_FINALIZE, "the order is still %s after %u polls", acme_status_name(c->order.status),
	     ACME_POLLS_MAX);
	return false;
}

static bool read_authz(struct acme_client *c, const char *url, struct fail *f)
{
	struct https_call *hc = post(c, url, "", false, NULL, ACME_STAGE_AUTHORIZATION, f);
	if (hc == NULL)
		return false;
	const struct https_result *r = https_call_result(hc);
	bool ok = acme_parse_authz(span_make(r->body, r->body_len), &c->authz);
	https_call_free(hc);
	if (!ok)
		FAIL(f, ACME_STAGE_AUTHORIZATION, "not an ACME authorization object");
	return ok;
}

/* One authorization to valid: publish, answer, poll, unpublish. */
static bool authorize(struct acme_client *c, const char *url, const struct acme_challenge_port *port, struct fail *f)
{
	if (!read_authz(c, url, f))
		return false;
	if (c->authz.status == ACME_STATUS_VALID)
		return true; /* reused (the server remembers a recent validation) */
	if (c->authz.status != ACME_STATUS_PENDING) {
		FAIL(f, ACME_STAGE_AUTHORIZATION, "the authorization is %s", acme_status_name(c->authz.status));
		return false;
	}
	if (!c->authz.have_http01) {
		FAIL(f, ACME_STAGE_AUTHORIZATION, "the server offers no http-01 challenge");
		return false;
	}
	char token[ACME_TOKEN_BYTES], key_auth[ACME_KEY_AUTH_BYTES], chall_url[ACME_URL_BYTES];
	memcpy(token, c->authz.http01_token, sizeof token);
	memcpy(chall_url, c->authz.http01_url, sizeof chall_url);
	snprintf(key_auth, sizeof key_auth, "%s.%s", token, c->thumbprint);
	port->publish(port->ctx, token, key_auth);
	bool ok = false;
	struct https_call *hc = post(c, chall_url, "{}", false, NULL, ACME_STAGE_CHALLENGE, f);
	if (hc == NULL)
		goto out;
	https_call_free(hc);
	for (uint32_t i = 0; i < ACME_POLLS_MAX; i++) {
		if (!pause_ms(c, poll_interval_ms(c))) {
			FAIL(f, ACME_STAGE_CANCELLED, "cancelled by shutdown");
			goto out;
		}
		if (!read_authz(c, url, f))
			goto out;
		if (c->authz.status == ACME_STATUS_VALID) {
			ok = true;
			goto out;
		}
		if (c->authz.status != ACME_STATUS_PENDING) {
			FAIL(f, ACME_STAGE_CHALLENGE, "the authorization became %s (http-01 validation failed: is "
			     "--http-listen reachable on port 80 of the domain?)", acme_status_name(c->authz.status));
			goto out;
		}
	}
	FAIL(f, ACME_STAGE_CHALLENGE, "the authorization is still pending after %u polls", ACME_POLLS_MAX);
out:
	port->unpublish(port->ctx, token);
	return ok;
}

/* A CSR for domain with key, DER, base64url into out. */
static bool make_csr(EVP_PKEY *key, const char *domain, char *out, size_t cap)
{
	X509_REQ *req = X509_REQ_new();
	X509_NAME *name = X509_NAME_new();
	STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
	GENERAL_NAMES *sans = GENERAL_NAMES_new();
	GENERAL_NAME *san = GENERAL_NAME_new();
	ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
	X509_EXTENSION *ext = NULL;
	uint8_t *der = NULL;
	bool ok = false;
	if (!req || !name || !exts || !sans || !san || !ia5)
		goto done;
	if (!ASN1_STRING_set(ia5, domain, (int)strlen(domain)))
		goto done;
	GENERAL_NAME_set0_value(san, GEN_DNS, ia5);
	ia5 = NULL;
	if (!sk_GENERAL_NAME_push(sans, san))
		goto done;
	san = NULL;
	ext = X509V3_EXT_i2d(NID_subject_alt_name, 0, sans);
	if (ext == NULL || !sk_X509_EXTENSION_push(exts, ext))
		goto done;
	ext = NULL;
	if (!X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const uint8_t *)domain, -1, -1, 0) ||
	    !X509_REQ_set_version(req, 0) || !X509_REQ_set_subject_name(req, name) || !X509_REQ_set_pubkey(req, key) ||
	    !X509_REQ_add_extensions(req, exts) || !X509_REQ_sign(req, key, EVP_sha256()))
		goto done;
	int n = i2d_X509_REQ(req, &der);
	if (n <= 0 || ((size_t)n + 2) / 3 * 4 + 1 > cap)
		goto done;
	acme_b64url(out, cap, der, (size_t)n);
	ok = true;
done:
	OPENSSL_free(der);
	X509_EXTENSION_free(ext);
	ASN1_IA5STRING_free(ia5);
	GENERAL_NAME_free(san);
	GENERAL_NAMES_free(sans);
	sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
	X509_NAME_free(name);
	X509_REQ_free(req);
	ERR_clear_error();
	return ok;
}

static char *key_to_pem(EVP_PKEY *key, size_t *len)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *out = NULL;
	const uint8_t *p;
	size_t n;
	if (b != NULL && PEM_write_bio_ECPrivateKey(b, EVP_PKEY_get0_EC_KEY(key), NULL, NULL, 0, NULL, NULL) &&
	    BIO_mem_contents(b, &p, &n) && (out = malloc(n + 1)) != NULL) {
		memcpy(out, p, n);
		out[n] = '\0';
		*len = n;
		OPENSSL_cleanse((void *)p, n); /* the BIO frees its buffer without wiping it */
	}
	BIO_free(b);
	ERR_clear_error();
	return out;
}

bool acme_obtain(struct acme_client *c, const char *domain, const struct acme_challenge_port *port,
		 struct acme_issued *out, enum acme_stage *stage, char why[ACME_WHY_BYTES])
{
	struct fail f = { .stage = ACME_STAGE_ORDER, .why = why };
	EVP_PKEY *key = NULL;
	memset(out, 0, sizeof *out);
	why[0] = '\0';
	if (!get_directory(c, &f) || !new_account(c, &f))
		goto fail;

	/* newOrder */
	int n = snprintf(c->payload, sizeof c->payload, "{\"identifiers\":[{\"type\":\"dns\",\"value\":\"%s\"}]}", domain);
	if (n <= 0 || (size_t)n >= sizeof c->payload) {
		FAIL(&f, ACME_STAGE_ORDER, "the domain is too long");
		goto fail;
	}
	struct https_call *hc = post(c, c->dir.new_order, c->payload, false, NULL, ACME_STAGE_ORDER, &f);
	if (hc == NULL)
		goto fail;
	bool ok = read_order(c, hc, ACME_STAGE_ORDER, &f);
	https_call_free(hc);
	if (!ok)
		goto fail;
	if (c->location[0] == '\0' || c->order.finalize[0] == '\0' || c->order.nauthz == 0) {
		FAIL(&f, ACME_STAGE_ORDER, "newOrder: no order URL, finalize URL or authorization");
		goto fail;
	}
	memcpy(c->order_url, c->location, sizeof c->order_url);
	/* the order is re-read while polling: keep what authorize needs */
	char finalize[ACME_URL_BYTES];
	memcpy(finalize, c->order.finalize, sizeof finalize);
	uint32_t nauthz = c->order.nauthz;
	for (uint32_t i = 0; i < nauthz; i++) {
		char url[ACME_URL_BYTES];
		memcpy(url, c->order.authz[i], sizeof url);
		if (!authorize(c, url, port, &f))
			goto fail;
	}

	/* the order is ready once its authorizations are valid */
	struct https_call *oc = post(c, c->order_url, "", false, NULL, ACME_STAGE_FINALIZE, &f);
	if (oc == NULL)
		goto fail;
	ok = read_order(c, oc, ACME_STAGE_FINALIZE, &f);
	https_call_free(oc);
	if (!ok || (c->order.status != ACME_STATUS_VALID && !poll_order(c, ACME_STATUS_READY, &f)))
		goto fail;

	/* finalize with a CSR for a fresh key */
	if (c->order.status != ACME_STATUS_VALID) {
		key = acme_key_generate();
		char csr[2048];
		if (key == NULL || !make_csr(key, domain, csr, sizeof csr)) {
			FAIL(&f, ACME_STAGE_FINALIZE, "cannot make the certificate key or its CSR");
			goto fail;
		}
		snprintf(c->payload, sizeof c->payload, "{\"csr\":\"%s\"}", csr);
		hc = post(c, finalize, c->payload, false, NULL, ACME_STAGE_FINALIZE, &f);
		if (hc == NULL)
			goto fail;
		ok = read_order(c, hc, ACME_STAGE_FINALIZE, &f);
		https_call_free(hc);
		if (!ok || !poll_order(c, ACME_STATUS_VALID, &f))
			goto fail;
	} else {
		FAIL(&f, ACME_STAGE_FINALIZE, "the order was already valid: its key is unknown here");
		goto fail;
	}
	if (c->order.certificate[0] == '\0') {
		FAIL(&f, ACME_STAGE_CERTIFICATE, "the valid order names no certificate URL");
		goto fail;
	}

	/* download the chain */
	char cert_url[ACME_URL_BYTES];
	memcpy(cert_url, c->order.certificate, sizeof cert_url);
	hc = post(c, cert_url, "", false, "application/pem-certificate-chain", ACME_STAGE_CERTIFICATE, &f);
	if (hc == NULL)
		goto fail;
	const struct https_result *r = https_call_result(hc);
	if (r->body_len == 0 || r->body_len >= ACME_REPLY_BYTES_MAX || (out->chain_pem = malloc(r->body_len + 1)) == NULL) {
		FAIL(&f, ACME_STAGE_CERTIFICATE, "the certificate chain is empty or too large (%zu bytes)", r->body_len);
		https_call_free(hc);
		goto fail;
	}
	memcpy(out->chain_pem, r->body, r->body_len);
	out->chain_pem[r->body_len] = '\0';
	out->chain_len = r->body_len;
	https_call_free(hc);
	out->key_pem = key_to_pem(key, &out->key_len);
	if (out->key_pem == NULL) {
		FAIL(&f, ACME_STAGE_CERTIFICATE, "cannot encode the certificate key");
		goto fail;
	}
	EVP_PKEY_free(key);
	return true;
fail:
	if (cancelled(c))
		f.stage = ACME_STAGE_CANCELLED;
	EVP_PKEY_free(key);
	acme_issued_free(out);
	*stage = f.stage;
	/* a later attempt starts from a fresh directory and nonce */
	c->have_dir = false;
	c->nonce[0] = '\0';
	return false;
}
