/*
 * fcm.c - the PYRYCODE_RELAY_FCM_CREDENTIALS check and parse (contract:
 * config_fcm_credentials_parse in config.h), walked with the project's JSON scanner
 * (envelope/json.h), so the key meets the same grammar, depth limit and UTF-8 rule as
 * every other JSON the relay reads. Member names are decoded into a stack buffer to
 * be compared; the string members we keep are decoded into the caller's struct, the
 * private key into a stack buffer that is wiped before returning. The key itself is
 * parsed by BoringSSL, in the order golang.org/x/oauth2 parses it.
 */
#include "config/internal.h"

#include <openssl/bio.h>
#include <openssl/bytestring.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "core/url.h"
#include "envelope/json.h"

/* Member names are unescaped into this to be compared; the longest we look for is
 * "private_key_id", so a name that does not fit cannot match. */
#define FCM_MEMBER_NAME_BYTES_MAX 32

enum fcm_member { FCM_TYPE, FCM_CLIENT_EMAIL, FCM_PRIVATE_KEY, FCM_PRIVATE_KEY_ID, FCM_TOKEN_URI, FCM_MEMBERS };

static const char *const fcm_member_names[FCM_MEMBERS] = {
	[FCM_TYPE] = "type",
	[FCM_CLIENT_EMAIL] = "client_email",
	[FCM_PRIVATE_KEY] = "private_key",
	[FCM_PRIVATE_KEY_ID] = "private_key_id",
	[FCM_TOKEN_URI] = "token_uri",
};

/* Which of the members a name is, or FCM_MEMBERS for any other. encoding/json
 * matches names to struct tags case-insensitively; we fold ASCII only, so a name with
 * a non-ASCII letter (Go would fold the Kelvin sign to k) is just another member. */
static enum fcm_member member_of(struct json_str name)
{
	uint8_t buf[FCM_MEMBER_NAME_BYTES_MAX];
	size_t n = json_str_unescape(name, buf, sizeof buf);

	if (n == SIZE_MAX)
		return FCM_MEMBERS;
	for (int m = 0; m < FCM_MEMBERS; m++) {
		if (span_eq_nocase(span_make(buf, n), fcm_member_names[m]))
			return (enum fcm_member)m;
	}
	return FCM_MEMBERS;
}

/* ---- the private key ---- */

/* DER: PKCS#8 PrivateKeyInfo first; only when that fails to parse, PKCS#1
 * RSAPrivateKey (x/oauth2's order). A PKCS#8 key of another type is refused, not
 * retried as PKCS#1, as there. */
static EVP_PKEY *rsa_from_der(const uint8_t *der, size_t len)
{
	CBS cbs;
	CBS_init(&cbs, der, len);
	EVP_PKEY *pkey = EVP_parse_private_key(&cbs);
	if (pkey != NULL) {
		if (EVP_PKEY_id(pkey) == EVP_PKEY_RSA)
			return pkey;
		EVP_PKEY_free(pkey);
		return NULL;
	}
	CBS_init(&cbs, der, len);
	RSA *rsa = RSA_parse_private_key(&cbs);
	/* Go's ParsePKCS1PrivateKey refuses trailing data */
	if (rsa == NULL || CBS_len(&cbs) != 0) {
		RSA_free(rsa);
		return NULL;
	}
	pkey = EVP_PKEY_new();
	if (pkey == NULL || !EVP_PKEY_assign_RSA(pkey, rsa)) {
		EVP_PKEY_free(pkey);
		RSA_free(rsa);
		return NULL;
	}
	return pkey;
}

EVP_PKEY *config_fcm_parse_rsa_key(const uint8_t *key, size_t len)
{
	EVP_PKEY *pkey = NULL;
	char *name = NULL, *header = NULL;
	uint8_t *data = NULL;
	long data_len = 0;

	if (len > CONFIG_FCM_PRIVATE_KEY_BYTES_MAX)
		return NULL;
	/* pem.Decode: the first PEM block, whatever its label; none: the bytes are DER */
	BIO *bio = BIO_new_mem_buf(key, (int)len);
	if (bio == NULL)
		return NULL;
	if (PEM_read_bio(bio, &name, &header, &data, &data_len) && data_len > 0) {
		pkey = rsa_from_der(data, (size_t)data_len);
		OPENSSL_cleanse(data, (size_t)data_len);
	} else {
		pkey = rsa_from_der(key, len);
	}
	OPENSSL_free(name);
	OPENSSL_free(header);
	OPENSSL_free(data);
	BIO_free(bio);
	/* the parse failures left reasons on this thread's error queue: nobody reads them */
	ERR_clear_error();
	return pkey;
}

/* ---- the key as a whole ---- */

/* Decode s into out (cap bytes with the NUL): false if it does not fit or holds a NUL. */
static bool str_into(struct json_str s, char *out, size_t cap)
{
	size_t n = json_str_unescape(s, (uint8_t *)out, cap - 1);
	if (n == SIZE_MAX || memchr(out, '\0', n))
		return false;
	out[n] = '\0';
	return true;
}

struct member_scan {
	struct json_str *member;
	bool *have;
};

/* One member: a known one must be a string (the last duplicate wins, as in
 * encoding/json) or null (which leaves a Go string field as it was); any other type
 * fails to unmarshal into it. Unknown members are only validated (by the walker, as
 * encoding/json validates before it decodes). */
static bool scan_member(void *ctx, struct json_str name, struct span v)
{
	struct member_scan *ms = ctx;
	enum fcm_member m = member_of(name);
	if (m == FCM_MEMBERS)
		return true;
	if (json_type_of(v) == JSON_TYPE_NULL)
		return true;
	size_t j = 0;
	if (json_type_of(v) != JSON_TYPE_STRING || !json_scan_string(v, &j, &ms->member[m]))
		return false;
	ms->have[m] = true;
	return true;
}

/* The members, walked once; false if the value is not one JSON object of the shape
 * config.h states. */
static bool scan_members(struct span in, struct json_str member[FCM_MEMBERS], bool have[FCM_MEMBERS])
{
	struct member_scan ms = { member, have };
	return json_walk_object(in, scan_member, &ms);
}

static bool parse_members(const struct json_str member[FCM_MEMBERS], const bool have[FCM_MEMBERS],
			  struct config_fcm_credentials *out)
{
	if (!have[FCM_TYPE] || !have[FCM_CLIENT_EMAIL] || !have[FCM_PRIVATE_KEY])
		return false;
	if (!json_str_eq_cstr(member[FCM_TYPE], "service_account"))
		return false;
	/* an escape always decodes to at least one byte: raw empty is decoded empty */
	if (member[FCM_CLIENT_EMAIL].raw.len == 0 ||
	    !str_into(member[FCM_CLIENT_EMAIL], out->client_email, sizeof out->client_email))
		return false;
	if (have[FCM_PRIVATE_KEY_ID] &&
	    !str_into(member[FCM_PRIVATE_KEY_ID], out->private_key_id, sizeof out->private_key_id))
		return false;
	if (have[FCM_TOKEN_URI] && !str_into(member[FCM_TOKEN_URI], out->token_uri, sizeof out->token_uri))
		return false;
	if (out->token_uri[0] == '\0')
		snprintf(out->token_uri, sizeof out->token_uri, "%s", CONFIG_FCM_TOKEN_URI_DEFAULT);
	struct https_url url;
	if (url_parse_https(out->token_uri, &url) != NULL)
		return false;

	uint8_t pem[CONFIG_FCM_PRIVATE_KEY_BYTES_MAX];
	size_t n = json_str_unescape(member[FCM_PRIVATE_KEY], pem, sizeof pem - 1);
	if (n == SIZE_MAX || memchr(pem, '\0', n)) {
		OPENSSL_cleanse(pem, sizeof pem);
		return false;
	}
	out->pkey = config_fcm_parse_rsa_key(pem, n);
	OPENSSL_cleanse(pem, sizeof pem);
	return out->pkey != NULL;
}

bool config_fcm_credentials_parse(const char *value, struct config_fcm_credentials *out)
{
	struct json_str member[FCM_MEMBERS];
	bool have[FCM_MEMBERS] = { false };

	memset(out, 0, sizeof *out);
	if (!scan_members(span_cstr(value), member, have) || !parse_members(member, have, out)) {
		config_fcm_credentials_free(out);
		return false;
	}
	return true;
}

void config_fcm_credentials_free(struct config_fcm_credentials *c)
{
	EVP_PKEY_free(c->pkey);
	OPENSSL_cleanse(c, sizeof *c);
	c->pkey = NULL;
}

bool config_fcm_credentials_usable(const char *value)
{
	struct config_fcm_credentials c;
	bool ok = config_fcm_credentials_parse(value, &c);
	config_fcm_credentials_free(&c);
	return ok;
}
