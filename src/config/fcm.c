/*
 * fcm.c - the PYRYCODE_RELAY_FCM_CREDENTIALS check (contract: config_fcm_credentials_usable
 * in config.h), moved here unchanged from core/config.c with its own JSON reader.
 */
#include "config/internal.h"

#define JSON_DEPTH_MAX 64

/* A strict RFC 8259 reader, enough to walk a service-account key without copying it.
 * It validates everything (encoding/json refuses malformed input outright) but keeps
 * only the raw spans of the three string members the check needs. */
struct json {
	const char *p;
	const char *end;
	unsigned depth;
};

static void json_ws(struct json *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
		j->p++;
}

static bool json_lit(struct json *j, const char *lit)
{
	size_t n = strlen(lit);

	if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0)
		return false;
	j->p += n;
	return true;
}

static bool is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* On success *raw spans the still-escaped contents between the quotes. */
static bool json_string(struct json *j, struct span *raw)
{
	if (j->p >= j->end || *j->p != '"')
		return false;
	const char *start = ++j->p;
	while (j->p < j->end) {
		uint8_t c = (uint8_t)*j->p;
		if (c == '"') {
			*raw = span_make(start, (size_t)(j->p - start));
			j->p++;
			return true;
		}
		if (c < 0x20)
			return false;
		if (c == '\\') {
			j->p++;
			if (j->p >= j->end)
				return false;
			switch (*j->p) {
			case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
				j->p++;
				break;
			case 'u':
				if (j->end - j->p < 5 || !is_hex(j->p[1]) || !is_hex(j->p[2]) ||
				    !is_hex(j->p[3]) || !is_hex(j->p[4]))
					return false;
				j->p += 5;
				break;
			default:
				return false;
			}
			continue;
		}
		j->p++;
	}
	return false;
}

static bool json_digits(struct json *j)
{
	const char *start = j->p;

	while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
		j->p++;
	return j->p > start;
}

static bool json_number(struct json *j)
{
	if (j->p < j->end && *j->p == '-')
		j->p++;
	if (j->p < j->end && *j->p == '0')
		j->p++;
	else if (!json_digits(j))
		return false;
	if (j->p < j->end && *j->p == '.') {
		j->p++;
		if (!json_digits(j))
			return false;
	}
	if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
		j->p++;
		if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
			j->p++;
		if (!json_digits(j))
			return false;
	}
	return true;
}

static bool json_value(struct json *j);

static bool json_container(struct json *j, char close, bool object)
{
	struct span ignored;

	if (++j->depth > JSON_DEPTH_MAX)
		return false;
	j->p++;
	json_ws(j);
	if (j->p < j->end && *j->p == close) {
		j->p++;
		j->depth--;
		return true;
	}
	for (;;) {
		if (object) {
			if (!json_string(j, &ignored))
				return false;
			json_ws(j);
			if (j->p >= j->end || *j->p != ':')
				return false;
			j->p++;
			json_ws(j);
		}
		if (!json_value(j))
			return false;
		json_ws(j);
		if (j->p >= j->end)
			return false;
		if (*j->p == close) {
			j->p++;
			j->depth--;
			return true;
		}
		if (*j->p != ',')
			return false;
		j->p++;
		json_ws(j);
	}
}

static bool json_value(struct json *j)
{
	struct span ignored;

	if (j->p >= j->end)
		return false;
	switch (*j->p) {
	case '{':
		return json_container(j, '}', true);
	case '[':
		return json_container(j, ']', false);
	case '"':
		return json_string(j, &ignored);
	case 't':
		return json_lit(j, "true");
	case 'f':
		return json_lit(j, "false");
	case 'n':
		return json_lit(j, "null");
	default:
		return json_number(j);
	}
}

static unsigned hex_val(char c)
{
	if (c >= '0' && c <= '9')
		return (unsigned)(c - '0');
	return (unsigned)((c | 0x20) - 'a' + 10);
}

/* Unescape a validated JSON string into out. Code points outside ASCII become one
 * 0xff byte each: the checks below only ever compare ASCII. False when out is full. */
static bool json_unescape(struct span raw, char *out, size_t cap, size_t *len)
{
	const char *p = (const char *)raw.ptr, *end = p + raw.len;
	size_t n = 0;

	while (p < end) {
		char c = *p++;
		if (c == '\\') {
			c = *p++;
			switch (c) {
			case 'b': c = '\b'; break;
			case 'f': c = '\f'; break;
			case 'n': c = '\n'; break;
			case 'r': c = '\r'; break;
			case 't': c = '\t'; break;
			case 'u': {
				unsigned cp = hex_val(p[0]) << 12 | hex_val(p[1]) << 8 |
					      hex_val(p[2]) << 4 | hex_val(p[3]);
				p += 4;
				c = cp < 0x80 ? (char)cp : (char)0xff;
				break;
			}
			default: /* '"', '\\', '/' stand for themselves */
				break;
			}
		}
		if (n + 1 >= cap)
			return false;
		out[n++] = c;
	}
	out[n] = '\0';
	*len = n;
	return true;
}

static bool json_key_is(struct span raw, const char *name)
{
	char key[32];
	size_t n;

	/* encoding/json matches struct tags case-insensitively */
	return json_unescape(raw, key, sizeof key, &n) && span_eq_nocase(span_make(key, n), name);
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
	struct json j = { .p = value, .end = value + strlen(value), .depth = 1 };
	struct span type = { 0 }, email = { 0 }, key = { 0 };
	bool have_type = false, have_email = false, have_key = false;

	json_ws(&j);
	if (j.p >= j.end || *j.p != '{')
		return false;
	j.p++;
	json_ws(&j);
	if (j.p < j.end && *j.p == '}') {
		j.p++;
	} else {
		for (;;) {
			struct span name, str;

			if (!json_string(&j, &name))
				return false;
			json_ws(&j);
			if (j.p >= j.end || *j.p != ':')
				return false;
			j.p++;
			json_ws(&j);

			struct span *slot = NULL;
			bool *have = NULL;
			if (json_key_is(name, "type")) {
				slot = &type;
				have = &have_type;
			} else if (json_key_is(name, "client_email")) {
				slot = &email;
				have = &have_email;
			} else if (json_key_is(name, "private_key")) {
				slot = &key;
				have = &have_key;
			}
			if (slot && j.p < j.end && *j.p == '"') {
				if (!json_string(&j, &str))
					return false;
				*slot = str; /* the last duplicate wins, as in encoding/json */
				*have = true;
			} else if (slot && !json_lit(&j, "null")) {
				/* null leaves a Go string field alone; anything else fails
				 * to unmarshal into it */
				return false;
			} else if (!slot && !json_value(&j)) {
				return false;
			}
			json_ws(&j);
			if (j.p >= j.end)
				return false;
			if (*j.p == '}') {
				j.p++;
				break;
			}
			if (*j.p != ',')
				return false;
			j.p++;
			json_ws(&j);
		}
	}
	json_ws(&j);
	if (j.p != j.end)
		return false;
	if (!have_type || !have_email || !have_key || email.len == 0)
		return false;

	char small[32];
	size_t n;
	if (!json_unescape(type, small, sizeof small, &n) || strcmp(small, "service_account") != 0 ||
	    n != strlen("service_account"))
		return false;

	char pem[CONFIG_FCM_PRIVATE_KEY_BYTES_MAX];
	if (!json_unescape(key, pem, sizeof pem, &n) || memchr(pem, '\0', n))
		return false;
	return pem_private_key(pem);
}
