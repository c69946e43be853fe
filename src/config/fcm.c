/*
 * fcm.c - the PYRYCODE_RELAY_FCM_CREDENTIALS check (contract: config_fcm_credentials_usable
 * in config.h), walked with the project's JSON scanner (envelope/json.h), so the key
 * meets the same grammar, depth limit and UTF-8 rule as every other JSON the relay
 * reads. Only member names (to fold their case) and the private key (to check its
 * PEM shape) are decoded into stack buffers; everything else is checked in place.
 */
#include "config/internal.h"

#include "envelope/json.h"

/* Member names are unescaped into this to be compared; the longest we look for is
 * "client_email", so a name that does not fit cannot match. */
#define FCM_MEMBER_NAME_BYTES_MAX 32

enum fcm_member { FCM_TYPE, FCM_CLIENT_EMAIL, FCM_PRIVATE_KEY, FCM_MEMBERS };

static const char *const fcm_member_names[FCM_MEMBERS] = {
	[FCM_TYPE] = "type",
	[FCM_CLIENT_EMAIL] = "client_email",
	[FCM_PRIVATE_KEY] = "private_key",
};

/* Which of the three members a name is, or FCM_MEMBERS for any other. encoding/json
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

static bool is_base64_or_space(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '+' || c == '/' || c == '=' || c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* A PEM block labelled PRIVATE KEY (PKCS#8) or RSA PRIVATE KEY (PKCS#1) with a
 * non-empty base64 body: the shapes Google issues. Decoding the DER and proving it is
 * RSA is the push sender's job when it loads the key. */
static bool pem_private_key(const char *key)
{
	static const char *const labels[] = { "PRIVATE KEY", "RSA PRIVATE KEY" };

	for (size_t i = 0; i < ARRAY_LEN(labels); i++) {
		char begin[48], end_line[48];
		snprintf(begin, sizeof begin, "-----BEGIN %s-----", labels[i]);
		snprintf(end_line, sizeof end_line, "-----END %s-----", labels[i]);

		const char *b = strstr(key, begin);
		if (!b)
			continue;
		const char *body = b + strlen(begin);
		const char *e = strstr(body, end_line);
		if (!e)
			continue;
		bool has_data = false, clean = true;
		for (const char *p = body; p < e; p++) {
			if (!is_base64_or_space(*p))
				clean = false;
			else if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
				has_data = true;
		}
		if (clean && has_data)
			return true;
	}
	return false;
}

bool config_fcm_credentials_usable(const char *value)
{
	const struct span in = span_cstr(value);
	const uint8_t *p = in.ptr;
	struct json_str member[FCM_MEMBERS];
	bool have[FCM_MEMBERS] = { false };
	bool first = true;
	size_t i;

	/* one object, walked member by member; every value is validated by the scanner,
	 * whether we look at it or not, as encoding/json validates before it decodes */
	i = json_skip_ws(in, 0);
	if (i >= in.len || p[i] != '{')
		return false;
	i = json_skip_ws(in, i + 1);
	for (;;) {
		struct json_str name;

		if (i >= in.len)
			return false;
		if (p[i] == '}') {
			i++;
			break;
		}
		if (!first) {
			if (p[i] != ',')
				return false;
			i = json_skip_ws(in, i + 1);
		}
		first = false;
		if (i >= in.len || p[i] != '"' || !json_scan_string(in, &i, &name))
			return false;
		i = json_skip_ws(in, i);
		if (i >= in.len || p[i] != ':')
			return false;
		i = json_skip_ws(in, i + 1);

		enum fcm_member m = member_of(name);
		if (m != FCM_MEMBERS && i < in.len && p[i] == '"') {
			/* the last duplicate wins, as in encoding/json */
			if (!json_scan_string(in, &i, &member[m]))
				return false;
			have[m] = true;
		} else {
			struct span v;

			/* depth 1: the key's object is open around every member value */
			if (!json_skip_value(in, &i, 1, &v))
				return false;
			/* null leaves a Go string field as it was; any other type fails to
			 * unmarshal into it */
			if (m != FCM_MEMBERS && json_type_of(v) != JSON_TYPE_NULL)
				return false;
		}
		i = json_skip_ws(in, i);
	}
	if (json_skip_ws(in, i) != in.len)
		return false;

	if (!have[FCM_TYPE] || !have[FCM_CLIENT_EMAIL] || !have[FCM_PRIVATE_KEY])
		return false;
	if (!json_str_eq_cstr(member[FCM_TYPE], "service_account"))
		return false;
	/* an escape always decodes to at least one byte: raw empty is decoded empty */
	if (member[FCM_CLIENT_EMAIL].raw.len == 0)
		return false;

	char pem[CONFIG_FCM_PRIVATE_KEY_BYTES_MAX];
	size_t n = json_str_unescape(member[FCM_PRIVATE_KEY], (uint8_t *)pem, sizeof pem - 1);
	if (n == SIZE_MAX || memchr(pem, '\0', n))
		return false;
	pem[n] = '\0';
	return pem_private_key(pem);
}
