/*
 * fcm.c - the pure parts of a push wake (contract in fcm.h): the JWT assertion, the
 * request bodies, reading replies into outcomes, the token fingerprint and Go's
 * duration text.
 *
 * Replies are read the way encoding/json decodes them into the Go relay's structs,
 * with the project's scanner (envelope/json.h): validate the whole reply first, then
 * walk only the declared members. A declared member of the wrong type makes Unmarshal
 * return an error, and the Go code then takes nothing from the reply; a null leaves a
 * member as it was.
 */
#include "control/fcm.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/sha.h>

#include "envelope/json.h"

const char *const fcm_outcome_names[FCM_OUTCOME_COUNT] = {
	[FCM_OUTCOME_SENT] = "sent",
	[FCM_OUTCOME_UNREGISTERED] = "unregistered",
	[FCM_OUTCOME_SEND_FAILED] = "send_failed",
	[FCM_OUTCOME_TOKEN_FETCH_FAILED] = "token_fetch_failed",
	[FCM_OUTCOME_DROPPED] = "dropped",
};

/* Longest member name we look for ("access_token"), with room to spare. */
#define MEMBER_NAME_BYTES_MAX 32u
/* RSA signatures up to 16384-bit keys. */
#define RSA_SIG_BYTES_MAX 2048u
#define SHA256_BYTES 32u

/* ------------------------------------------------------------------ JSON walking */

/* Called for each member whose name matched names[index]; false stops the walk and
 * fails it (a type error). Null values are skipped before the call: they leave a Go
 * field as it was. */
typedef bool (*member_fn)(void *ctx, size_t index, struct span value);

/* Walk the members of obj (a value span json.h validated). False if obj is not an
 * object or fn refused a member. Names match after unescaping, ASCII case folded. */
static bool walk_object(struct span obj, const char *const *names, size_t nnames, member_fn fn, void *ctx)
{
	size_t i = 0;
	if (obj.len == 0 || obj.ptr[0] != '{')
		return false;
	i = json_skip_ws(obj, 1);
	if (obj.ptr[i] == '}')
		return true;
	/* the object was validated: every step below succeeds, and the walk ends at '}' */
	for (;;) {
		struct json_str name;
		struct span v;
		uint8_t buf[MEMBER_NAME_BYTES_MAX];
		ASSERT(json_scan_string(obj, &i, &name));
		i = json_skip_ws(obj, json_skip_ws(obj, i) + 1); /* past ':' */
		ASSERT(json_skip_value(obj, &i, 1, &v));
		size_t n = json_str_unescape(name, buf, sizeof buf);
		for (size_t k = 0; n != SIZE_MAX && k < nnames; k++) {
			if (span_eq_nocase(span_make(buf, n), names[k])) {
				if (json_type_of(v) != JSON_TYPE_NULL && !fn(ctx, k, v))
					return false;
				break;
			}
		}
		i = json_skip_ws(obj, i);
		if (obj.ptr[i] == '}')
			return true;
		i = json_skip_ws(obj, i + 1); /* past ',' */
	}
}

static struct json_str str_of(struct span v)
{
	struct json_str s;
	size_t i = 0;
	ASSERT(json_scan_string(v, &i, &s));
	return s;
}

/* Decode a string value into out (cap bytes with the NUL); false if it does not fit. */
static bool decode_into(struct span v, char *out, size_t cap)
{
	size_t n = json_str_unescape(str_of(v), (uint8_t *)out, cap - 1);
	if (n == SIZE_MAX)
		return false;
	out[n] = '\0';
	return true;
}

/* 1..max bytes, each accepted by ok(). */
static bool all_of(const char *s, size_t max, bool (*ok)(char c))
{
	size_t n = strlen(s);
	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!ok(s[i]))
			return false;
	return true;
}

static bool enum_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

static bool message_id_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '/' ||
	       c == ':' || c == '%' || c == '_' || c == '-';
}

static bool token_char(char c)
{
	return c > 0x20 && c < 0x7f;
}

/* A string member: keep the last one; a non-string is a type error. */
static bool string_member(struct span v, char *out, size_t cap, bool *fits)
{
	if (json_type_of(v) != JSON_TYPE_STRING)
		return false;
	*fits = decode_into(v, out, cap);
	if (!*fits)
		out[0] = '\0';
	return true;
}

/* ------------------------------------------------------------------ send reply */

struct send_ok {
	char name[FCM_MESSAGE_ID_BYTES_MAX + 2];
	bool fits;
};

static bool send_ok_member(void *ctx, size_t index, struct span v)
{
	struct send_ok *s = ctx;
	(void)index;
	return string_member(v, s->name, sizeof s->name, &s->fits);
}

/* A 2xx reply's message id, or "" (fcmMessageID). */
static void message_id(struct span body, char out[FCM_MESSAGE_ID_BYTES_MAX + 1])
{
	static const char *const names[] = { "name" };
	struct send_ok s = { .fits = true };
	out[0] = '\0';
	if (!json_valid(body))
		return;
	size_t start = json_skip_ws(body, 0);
	if (!walk_object(span_make(body.ptr + start, body.len - start), names, 1, send_ok_member, &s))
		return; /* not an object (null included: nothing to take), or a type error */
	if (s.fits && all_of(s.name, FCM_MESSAGE_ID_BYTES_MAX, message_id_char))
		memcpy(out, s.name, strlen(s.name) + 1);
}

struct fcm_error {
	char status[FCM_ENUM_BYTES_MAX + 2];
	bool status_fits;
	struct span details; /* the last non-null details array */
};

struct fcm_detail {
	char type[sizeof FCM_ERROR_TYPE + 1];
	char code[FCM_ENUM_BYTES_MAX + 2];
	bool type_fits, code_fits;
};

static bool detail_member(void *ctx, size_t index, struct span v)
{
	struct fcm_detail *d = ctx;
	if (index == 0)
		return string_member(v, d->type, sizeof d->type, &d->type_fits);
	return string_member(v, d->code, sizeof d->code, &d->code_fits);
}

/* Each element of a details array: an object (or null) whose @type and errorCode are
 * strings. With pick, the first FcmError entry with a valid code is copied to code
 * (fcmErrorReason); without, only the types are checked. */
static bool walk_details(struct span arr, char *code, size_t cap, bool pick)
{
	static const char *const names[] = { "@type", "errorCode" };
	size_t i = json_skip_ws(arr, 1);
	if (arr.ptr[i] == ']')
		return true;
	for (;;) {
		struct span el;
		ASSERT(json_skip_value(arr, &i, 1, &el));
		enum json_type t = json_type_of(el);
		if (t != JSON_TYPE_NULL) {
			struct fcm_detail d = { .type_fits = true, .code_fits = true };
			if (t != JSON_TYPE_OBJECT || !walk_object(el, names, ARRAY_LEN(names), detail_member, &d))
				return false;
			if (pick && d.type_fits && d.code_fits && strcmp(d.type, FCM_ERROR_TYPE) == 0 &&
			    all_of(d.code, FCM_ENUM_BYTES_MAX, enum_char)) {
				snprintf(code, cap, "%s", d.code);
				return true;
			}
		}
		i = json_skip_ws(arr, i);
		if (arr.ptr[i] == ']')
			return true;
		i = json_skip_ws(arr, i + 1);
	}
}

static bool error_member(void *ctx, size_t index, struct span v)
{
	struct fcm_error *e = ctx;
	if (index == 0)
		return string_member(v, e->status, sizeof e->status, &e->status_fits);
	/* details: an array of objects; a later one replaces an earlier one */
	if (json_type_of(v) != JSON_TYPE_ARRAY || !walk_details(v, NULL, 0, false))
		return false;
	e->details = v;
	return true;
}

static bool top_error_member(void *ctx, size_t index, struct span v)
{
	static const char *const names[] = { "status", "details" };
	(void)index;
	/* a second "error" object decodes into the same struct: its members overwrite */
	return json_type_of(v) == JSON_TYPE_OBJECT && walk_object(v, names, ARRAY_LEN(names), error_member, ctx);
}

/* A non-2xx reply's reason: error.status and the FcmError errorCode, each "" unless
 * valid (fcmErrorReason). */
static void error_reason(struct span body, char status[FCM_ENUM_BYTES_MAX + 1], char code[FCM_ENUM_BYTES_MAX + 1])
{
	static const char *const names[] = { "error" };
	struct fcm_error e = { .status_fits = true };
	status[0] = code[0] = '\0';
	if (!json_valid(body))
		return;
	size_t start = json_skip_ws(body, 0);
	struct span top = span_make(body.ptr + start, body.len - start);
	if (json_type_of(top) == JSON_TYPE_NULL)
		return;
	if (!walk_object(top, names, 1, top_error_member, &e))
		return;
	if (e.status_fits && all_of(e.status, FCM_ENUM_BYTES_MAX, enum_char))
		memcpy(status, e.status, strlen(e.status) + 1);
	if (e.details.len)
		walk_details(e.details, code, FCM_ENUM_BYTES_MAX + 1, true);
}

void fcm_classify_send_reply(int status, struct span body, struct fcm_send_result *out)
{
	memset(out, 0, sizeof *out);
	if (status >= 200 && status <= 299) {
		out->outcome = FCM_OUTCOME_SENT;
		message_id(body, out->message_id);
		return;
	}
	char st[FCM_ENUM_BYTES_MAX + 1], code[FCM_ENUM_BYTES_MAX + 1];
	error_reason(body, st, code);
	out->outcome = strcmp(code, "UNREGISTERED") == 0 ? FCM_OUTCOME_UNREGISTERED : FCM_OUTCOME_SEND_FAILED;
	if (st[0] && code[0])
		snprintf(out->err, sizeof out->err, "fcm send failed: status %d (%s, %s)", status, st, code);
	else if (st[0] || code[0])
		snprintf(out->err, sizeof out->err, "fcm send failed: status %d (%s)", status, st[0] ? st : code);
	else
		snprintf(out->err, sizeof out->err, "fcm send failed: status %d", status);
}

/* ------------------------------------------------------------------ token reply */

struct token_reply {
	char *access_token;
	size_t cap;
	bool fits;
	int64_t expires_in;
};

/* A JSON number that is an int64 literal (strconv.ParseInt's syntax, as encoding/json
 * decodes into an int64: no fraction, no exponent, in range). */
static bool int64_of(struct span v, int64_t *out)
{
	size_t i = 0;
	bool neg = v.len && v.ptr[0] == '-';
	uint64_t n = 0, limit = neg ? (uint64_t)INT64_MAX + 1u : (uint64_t)INT64_MAX;
	i = neg ? 1 : 0;
	if (i == v.len)
		return false;
	for (; i < v.len; i++) {
		if (v.ptr[i] < '0' || v.ptr[i] > '9')
			return false;
		uint64_t d = (uint64_t)(v.ptr[i] - '0');
		if (n > (limit - d) / 10)
			return false;
		n = n * 10 + d;
	}
	*out = neg ? (int64_t)(0 - n) : (int64_t)n;
	return true;
}

static bool token_member(void *ctx, size_t index, struct span v)
{
	struct token_reply *t = ctx;
	char ignored[2];
	bool fits;
	switch (index) {
	case 0:
		return string_member(v, t->access_token, t->cap, &t->fits);
	case 1:
	case 2: /* token_type, id_token: must be strings, not used */
		return string_member(v, ignored, sizeof ignored, &fits);
	default:
		return json_type_of(v) == JSON_TYPE_NUMBER && int64_of(v, &t->expires_in);
	}
}

bool fcm_parse_token_reply(struct span body, char *out, size_t cap, int64_t *expires_in_s)
{
	static const char *const names[] = { "access_token", "token_type", "id_token", "expires_in" };
	struct token_reply t = { .access_token = out, .cap = cap, .fits = true };
	ASSERT(cap > 1);
	out[0] = '\0';
	*expires_in_s = 0;
	if (!json_valid(body))
		return false;
	size_t start = json_skip_ws(body, 0);
	struct span top = span_make(body.ptr + start, body.len - start);
	if (!walk_object(top, names, ARRAY_LEN(names), token_member, &t) || !t.fits ||
	    !all_of(out, cap - 1, token_char)) {
		OPENSSL_cleanse(out, cap);
		out[0] = '\0';
		return false;
	}
	*expires_in_s = t.expires_in;
	return true;
}

/* ------------------------------------------------------------------ requests */

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* base64url without padding (Go's RawURLEncoding) of p[0..n) at out[*j]; false if it
 * does not fit. */
static bool put_b64url(char *out, size_t cap, size_t *j, const uint8_t *p, size_t n)
{
	size_t need = n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
	if (cap - *j < need + 1)
		return false;
	size_t i = 0;
	for (; i + 3 <= n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
		out[(*j)++] = b64url[v >> 18 & 63];
		out[(*j)++] = b64url[v >> 12 & 63];
		out[(*j)++] = b64url[v >> 6 & 63];
		out[(*j)++] = b64url[v & 63];
	}
	if (n - i == 1) {
		uint32_t v = (uint32_t)p[i] << 16;
		out[(*j)++] = b64url[v >> 18 & 63];
		out[(*j)++] = b64url[v >> 12 & 63];
	} else if (n - i == 2) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
		out[(*j)++] = b64url[v >> 18 & 63];
		out[(*j)++] = b64url[v >> 12 & 63];
		out[(*j)++] = b64url[v >> 6 & 63];
	}
	out[*j] = '\0';
	return true;
}

static bool put_str(char *out, size_t cap, size_t *j, const char *s)
{
	size_t n = strlen(s);
	if (cap - *j < n + 1)
		return false;
	memcpy(out + *j, s, n);
	*j += n;
	out[*j] = '\0';
	return true;
}

/* A JSON string (quotes included) of s, escaped as Go's json.Marshal. */
static bool put_json_str(char *out, size_t cap, size_t *j, const char *s)
{
	if (!put_str(out, cap, j, "\""))
		return false;
	size_t k = json_escape((uint8_t *)out + *j, cap - *j, span_cstr(s));
	if (k == SIZE_MAX)
		return false;
	*j += k;
	return put_str(out, cap, j, "\"");
}

/* Header and claims JSON (encoding/json of x/oauth2's jws.Header and jws.ClaimSet). */
#define JWT_PART_BYTES_MAX 16384u

size_t fcm_jwt_sign(char *out, size_t cap, struct evp_pkey_st *key, const char *client_email,
		    const char *private_key_id, const char *token_url, int64_t iat_s)
{
	char part[JWT_PART_BYTES_MAX];
	size_t j = 0, pj = 0;
	char num[48];

	/* header */
	bool ok = put_str(part, sizeof part, &pj, "{\"alg\":\"RS256\",\"typ\":\"JWT\"");
	if (ok && private_key_id[0])
		ok = put_str(part, sizeof part, &pj, ",\"kid\":") && put_json_str(part, sizeof part, &pj, private_key_id);
	ok = ok && put_str(part, sizeof part, &pj, "}") &&
	     put_b64url(out, cap, &j, (const uint8_t *)part, pj) && put_str(out, cap, &j, ".");
	/* claims */
	pj = 0;
	snprintf(num, sizeof num, ",\"exp\":%" PRId64 ",\"iat\":%" PRId64 "}", iat_s + FCM_JWT_LIFETIME_S, iat_s);
	ok = ok && put_str(part, sizeof part, &pj, "{\"iss\":") &&
	     put_json_str(part, sizeof part, &pj, client_email) && put_str(part, sizeof part, &pj, ",\"scope\":") &&
	     put_json_str(part, sizeof part, &pj, FCM_SCOPE) && put_str(part, sizeof part, &pj, ",\"aud\":") &&
	     put_json_str(part, sizeof part, &pj, token_url) && put_str(part, sizeof part, &pj, num) &&
	     put_b64url(out, cap, &j, (const uint8_t *)part, pj);
	if (!ok)
		return 0;

	/* RS256 over "header.claims" */
	uint8_t sig[RSA_SIG_BYTES_MAX];
	size_t sig_len = sizeof sig;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	ok = ctx != NULL && EVP_PKEY_size(key) <= (int)sizeof sig &&
	     EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key) == 1 &&
	     EVP_DigestSign(ctx, sig, &sig_len, (const uint8_t *)out, j) == 1;
	EVP_MD_CTX_free(ctx);
	if (!ok || !put_str(out, cap, &j, ".") || !put_b64url(out, cap, &j, sig, sig_len))
		return 0;
	return j;
}

size_t fcm_token_request_body(char *out, size_t cap, const char *jwt)
{
	size_t j = 0;
	if (!put_str(out, cap, &j, "assertion=") || !put_str(out, cap, &j, jwt) ||
	    !put_str(out, cap, &j, "&grant_type=" FCM_GRANT_TYPE_ENCODED))
		return 0;
	return j;
}

size_t fcm_send_body(char *out, size_t cap, struct span device_token)
{
	size_t j = 0;
	if (!put_str(out, cap, &j, FCM_SEND_BODY_HEAD))
		return 0;
	size_t k = json_escape((uint8_t *)out + j, cap - j, device_token);
	if (k == SIZE_MAX)
		return 0;
	j += k;
	if (!put_str(out, cap, &j, FCM_SEND_BODY_TAIL))
		return 0;
	return j;
}

/* ------------------------------------------------------------------ log values */

void fcm_token_fp(struct span device_token, char out[FCM_TOKEN_FP_HEX + 1])
{
	static const char hex[] = "0123456789abcdef";
	uint8_t d[SHA256_BYTES];
	SHA256(device_token.ptr, device_token.len, d);
	for (size_t i = 0; i < FCM_TOKEN_FP_HEX / 2; i++) {
		out[2 * i] = hex[d[i] >> 4];
		out[2 * i + 1] = hex[d[i] & 15];
	}
	out[FCM_TOKEN_FP_HEX] = '\0';
}

/* v / 10^prec "." v % 10^prec with trailing zeros (and a bare '.') dropped: Go's fmtFrac
 * and fmtInt together. */
static int put_frac(char *out, size_t cap, uint64_t v, unsigned prec)
{
	uint64_t scale = 1;
	for (unsigned i = 0; i < prec; i++)
		scale *= 10;
	uint64_t whole = v / scale, frac = v % scale;
	if (frac == 0)
		return snprintf(out, cap, "%" PRIu64, whole);
	char digits[24];
	snprintf(digits, sizeof digits, "%0*" PRIu64, (int)prec, frac);
	for (size_t n = strlen(digits); n > 0 && digits[n - 1] == '0'; n--)
		digits[n - 1] = '\0';
	return snprintf(out, cap, "%" PRIu64 ".%s", whole, digits);
}

#define NS_PER_US UINT64_C(1000)
#define NS_PER_MS UINT64_C(1000000)
#define NS_PER_S UINT64_C(1000000000)
#define S_PER_MIN UINT64_C(60)
#define S_PER_HOUR UINT64_C(3600)

void fcm_format_duration(char *out, size_t cap, uint64_t ns)
{
	char num[FCM_DURATION_BYTES];
	if (ns == 0) {
		snprintf(out, cap, "0s");
	} else if (ns < NS_PER_US) {
		snprintf(out, cap, "%" PRIu64 "ns", ns);
	} else if (ns < NS_PER_MS) {
		put_frac(num, sizeof num, ns, 3);
		snprintf(out, cap, "%s\xc2\xb5s", num); /* U+00B5, as Go writes it */
	} else if (ns < NS_PER_S) {
		put_frac(num, sizeof num, ns, 6);
		snprintf(out, cap, "%sms", num);
	} else {
		uint64_t s = ns / NS_PER_S;
		put_frac(num, sizeof num, (s % S_PER_MIN) * NS_PER_S + ns % NS_PER_S, 9);
		if (s >= S_PER_HOUR)
			snprintf(out, cap, "%" PRIu64 "h%" PRIu64 "m%ss", s / S_PER_HOUR, s % S_PER_HOUR / S_PER_MIN, num);
		else if (s >= S_PER_MIN)
			snprintf(out, cap, "%" PRIu64 "m%ss", s / S_PER_MIN, num);
		else
			snprintf(out, cap, "%ss", num);
	}
}
