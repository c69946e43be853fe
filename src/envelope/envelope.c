/*
 * envelope.c - routing envelope scanner and writers (see envelope.h for the contract).
 */
#include "envelope/envelope.h"

#include <string.h>

/* Fixed reasons: logged as `err`, so they must never carry input bytes. */
#define ERR_NOT_JSON "envelope is not valid JSON"
#define ERR_NOT_OBJECT "envelope is not a JSON object"
#define ERR_CONN_ID_TYPE "conn_id is not a string"
#define ERR_CLOSE_CODE_TYPE "close_code is not an integer in 0..65535"
#define ERR_MISSING_CONN_ID "missing conn_id"
#define ERR_MISSING_FRAME "missing frame"

#define PW_ERR_NOT_JSON "push_wake is not valid JSON"
#define PW_ERR_NOT_OBJECT "push_wake is not a JSON object"
#define PW_ERR_PLATFORM_TYPE "push_wake platform is not a string"
#define PW_ERR_TOKEN_TYPE "push_wake token is not a string"
#define PW_ERR_PLATFORM "push_wake platform is not fcm"
#define PW_ERR_TOKEN_EMPTY "push_wake token is empty"

/*
 * Walks the members of one top-level object, validating as it goes: each member's
 * value is skipped with json_skip_value (so unknown values are validated too, at
 * depth 1), and after the closing brace only whitespace may follow.
 */
struct obj_walk {
	struct span in;
	size_t pos;
	bool first;
};

/* False if the first non-whitespace byte is not '{' (the input may still be JSON). */
static bool obj_open(struct obj_walk *w, struct span in)
{
	w->in = in;
	w->pos = json_skip_ws(in, 0);
	w->first = true;
	if (w->pos >= in.len || in.ptr[w->pos] != '{')
		return false;
	w->pos = json_skip_ws(in, w->pos + 1);
	return true;
}

/* 1: one member in *key / *value; 0: end of a valid document; -1: invalid JSON. */
static int obj_next(struct obj_walk *w, struct json_str *key, struct span *value)
{
	const uint8_t *p = w->in.ptr;
	const size_t n = w->in.len;
	size_t i = w->pos;

	if (i >= n)
		return -1;
	if (p[i] == '}') {
		i++;
		return json_skip_ws(w->in, i) == n ? 0 : -1;
	}
	if (!w->first) {
		if (p[i] != ',')
			return -1;
		i = json_skip_ws(w->in, i + 1);
	}
	if (i >= n || p[i] != '"')
		return -1;
	if (!json_scan_string(w->in, &i, key))
		return -1;
	i = json_skip_ws(w->in, i);
	if (i >= n || p[i] != ':')
		return -1;
	i = json_skip_ws(w->in, i + 1);
	if (!json_skip_value(w->in, &i, 1, value))
		return -1;
	w->pos = json_skip_ws(w->in, i);
	w->first = false;
	return 1;
}

/* A string value's span (quotes included) as a json_str. */
static struct json_str str_of_value(struct span v)
{
	struct json_str s;

	ASSERT(v.len >= 2 && v.ptr[0] == '"' && v.ptr[v.len - 1] == '"');
	s.raw = span_make(v.ptr + 1, v.len - 2);
	s.has_escapes = s.raw.len != 0 && memchr(s.raw.ptr, '\\', s.raw.len) != NULL;
	return s;
}

/* close_code: a JSON number that is a plain non-negative integer <= 65535, as Go's
 * strconv.ParseUint + uint16 overflow check: no sign, fraction or exponent. */
static bool parse_close_code(struct span v, uint16_t *code)
{
	uint32_t x = 0;

	for (size_t k = 0; k < v.len; k++) {
		uint8_t c = v.ptr[k];
		if (c < '0' || c > '9')
			return false;
		x = x * 10u + (uint32_t)(c - '0');
		if (x > 65535u)
			return false;
	}
	*code = (uint16_t)x;
	return v.len > 0;
}

enum field { F_OTHER, F_CONN_ID, F_CLOSE_CODE, F_FRAME, F_PUSH_WAKE };

static inline bool raw_is(struct json_str key, const char *lit, size_t n)
{
	return key.raw.len == n && memcmp(key.raw.ptr, lit, n) == 0;
}

static enum field match_key(struct json_str key)
{
	/* The common case: an unescaped key, told apart by its length. */
	if (!key.has_escapes) {
		switch (key.raw.len) {
		case 5:
			return raw_is(key, "frame", 5) ? F_FRAME : F_OTHER;
		case 7:
			return raw_is(key, "conn_id", 7) ? F_CONN_ID : F_OTHER;
		case 9:
			return raw_is(key, "push_wake", 9) ? F_PUSH_WAKE : F_OTHER;
		case 10:
			return raw_is(key, "close_code", 10) ? F_CLOSE_CODE : F_OTHER;
		default:
			return F_OTHER;
		}
	}
	/* Escaped: compare decoded. A decoded byte takes at most 6 raw bytes (\u00XX),
	 * so a key longer than 6x the longest name cannot match. */
	if (key.raw.len > 6 * sizeof("close_code"))
		return F_OTHER;
	if (json_str_eq_cstr(key, "conn_id"))
		return F_CONN_ID;
	if (json_str_eq_cstr(key, "frame"))
		return F_FRAME;
	if (json_str_eq_cstr(key, "close_code"))
		return F_CLOSE_CODE;
	if (json_str_eq_cstr(key, "push_wake"))
		return F_PUSH_WAKE;
	return F_OTHER;
}

static enum envelope_kind finish(struct envelope *env, enum envelope_kind kind, const char *err)
{
	env->kind = kind;
	env->err = err;
	if (kind != ENVELOPE_ROUTED && kind != ENVELOPE_DIRECTIVE) {
		env->has_frame = false;
		env->frame = span_make(NULL, 0);
	}
	if (kind != ENVELOPE_PUSH_WAKE)
		env->push_wake = span_make(NULL, 0);
	if (kind == ENVELOPE_MALFORMED) {
		env->conn_id.raw = span_make(NULL, 0);
		env->conn_id.has_escapes = false;
		env->close_code = 0;
	}
	return kind;
}

enum envelope_kind envelope_scan(struct span msg, struct envelope *env)
{
	struct obj_walk w;
	struct json_str key;
	struct span v;
	const char *type_err = NULL;
	bool has_push = false;
	int r;

	ASSERT(msg.ptr != NULL || msg.len == 0);
	memset(env, 0, sizeof(*env));
	if (!obj_open(&w, msg))
		return finish(env, ENVELOPE_MALFORMED, json_valid(msg) ? ERR_NOT_OBJECT : ERR_NOT_JSON);

	while ((r = obj_next(&w, &key, &v)) == 1) {
		enum json_type t = json_type_of(v);

		switch (match_key(key)) {
		case F_CONN_ID:
			/* null: Go leaves the field as an earlier duplicate set it */
			if (t == JSON_TYPE_STRING)
				env->conn_id = str_of_value(v);
			else if (t != JSON_TYPE_NULL && !type_err)
				type_err = ERR_CONN_ID_TYPE;
			break;
		case F_CLOSE_CODE:
			if (t == JSON_TYPE_NUMBER) {
				if (!parse_close_code(v, &env->close_code) && !type_err)
					type_err = ERR_CLOSE_CODE_TYPE;
			} else if (t != JSON_TYPE_NULL && !type_err) {
				type_err = ERR_CLOSE_CODE_TYPE;
			}
			break;
		case F_FRAME:
			/* json.RawMessage keeps "null"; the relay treats it as no frame */
			env->has_frame = t != JSON_TYPE_NULL;
			env->frame = env->has_frame ? v : span_make(NULL, 0);
			break;
		case F_PUSH_WAKE:
			has_push = t != JSON_TYPE_NULL;
			env->push_wake = has_push ? v : span_make(NULL, 0);
			break;
		case F_OTHER:
			break;
		}
	}
	if (r < 0)
		return finish(env, ENVELOPE_MALFORMED, ERR_NOT_JSON);
	if (type_err)
		return finish(env, ENVELOPE_MALFORMED, type_err);

	if (env->conn_id.raw.len == 0) {
		if (has_push)
			return finish(env, ENVELOPE_PUSH_WAKE, NULL);
		return finish(env, ENVELOPE_MISSING_CONN_ID, ERR_MISSING_CONN_ID);
	}
	if (env->close_code != 0)
		return finish(env, ENVELOPE_DIRECTIVE, NULL);
	if (env->has_frame)
		return finish(env, ENVELOPE_ROUTED, NULL);
	return finish(env, ENVELOPE_MISSING_FRAME, ERR_MISSING_FRAME);
}

bool envelope_routed_shape(struct span msg, struct json_str *conn_id, struct span *frame)
{
	static const char head[] = "{\"conn_id\":\"";
	static const char mid[] = "\",\"frame\":";
	const size_t head_len = sizeof head - 1, mid_len = sizeof mid - 1;
	const uint8_t *p = msg.ptr;
	size_t n = msg.len;

	if (n < head_len + 1 + mid_len + 2 || memcmp(p, head, head_len) != 0 || p[n - 1] != '}')
		return false;
	size_t i = head_len;
	while (i < n && p[i] >= 0x20 && p[i] <= 0x7e && p[i] != '"' && p[i] != '\\')
		i++;
	if (i == head_len || n - i < mid_len + 2 || memcmp(p + i, mid, mid_len) != 0)
		return false;
	struct span v = span_make(p + i + mid_len, n - 1 - (i + mid_len));
	if (v.len == 0 || json_skip_ws(v, 0) != 0 || json_skip_ws(span_make(v.ptr + v.len - 1, 1), 0) != 0 ||
	    (v.len == 4 && memcmp(v.ptr, "null", 4) == 0))
		return false;
	conn_id->raw = span_make(p + head_len, i - head_len);
	conn_id->has_escapes = false;
	*frame = v;
	return true;
}

const char *envelope_kind_name(enum envelope_kind kind)
{
	switch (kind) {
	case ENVELOPE_MALFORMED:
		return "malformed";
	case ENVELOPE_PUSH_WAKE:
		return "push_wake";
	case ENVELOPE_MISSING_CONN_ID:
		return "missing_conn_id";
	case ENVELOPE_MISSING_FRAME:
		return "missing_frame";
	case ENVELOPE_DIRECTIVE:
		return "directive";
	case ENVELOPE_ROUTED:
		return "routed";
	}
	return "unknown";
}

bool envelope_conn_id_eq(struct span raw_escaped, bool has_escapes, struct span expected)
{
	struct json_str s = { .raw = raw_escaped, .has_escapes = has_escapes };

	ASSERT(raw_escaped.ptr != NULL || raw_escaped.len == 0);
	return json_str_eq(s, expected);
}

const char *envelope_push_wake_parse(struct span value, struct push_wake *out)
{
	struct obj_walk w;
	struct json_str key;
	struct span v;
	const char *type_err = NULL;
	int r;

	memset(out, 0, sizeof(*out));
	if (!obj_open(&w, value))
		return json_valid(value) ? PW_ERR_NOT_OBJECT : PW_ERR_NOT_JSON;
	while ((r = obj_next(&w, &key, &v)) == 1) {
		enum json_type t = json_type_of(v);
		struct json_str *dst = NULL;
		const char *err = NULL;

		if (json_str_eq_cstr(key, "platform")) {
			dst = &out->platform;
			err = PW_ERR_PLATFORM_TYPE;
		} else if (json_str_eq_cstr(key, "token")) {
			dst = &out->token;
			err = PW_ERR_TOKEN_TYPE;
		} else {
			continue;
		}
		if (t == JSON_TYPE_STRING)
			*dst = str_of_value(v);
		else if (t != JSON_TYPE_NULL && !type_err)
			type_err = err;
	}
	if (r < 0)
		return PW_ERR_NOT_JSON;
	if (type_err)
		return type_err;
	if (!json_str_eq_cstr(out->platform, "fcm"))
		return PW_ERR_PLATFORM;
	if (out->token.raw.len == 0)
		return PW_ERR_TOKEN_EMPTY;
	return NULL;
}

/* ---- writers ---- */

static bool put(uint8_t *out, size_t cap, size_t *j, const char *s, size_t n)
{
	if (cap - *j < n)
		return false;
	memcpy(out + *j, s, n);
	*j += n;
	return true;
}

static bool put_conn_id(uint8_t *out, size_t cap, size_t *j, struct span conn_id)
{
	size_t k = json_escape(out + *j, cap - *j, conn_id);

	if (k == SIZE_MAX)
		return false;
	*j += k;
	return true;
}

#define PUT_LIT(lit) put(out, cap, &j, (lit), sizeof(lit) - 1)

size_t envelope_write_wrap_prefix(uint8_t *out, size_t cap, struct span conn_id)
{
	size_t j = 0;

	ASSERT(out != NULL);
	if (!PUT_LIT(ENVELOPE_WRAP_PREFIX_HEAD) || !put_conn_id(out, cap, &j, conn_id) ||
	    !PUT_LIT(ENVELOPE_WRAP_PREFIX_TAIL))
		return 0;
	return j;
}

size_t envelope_write_close_notice(uint8_t *out, size_t cap, struct span conn_id,
				   uint16_t close_code)
{
	char digits[5];
	size_t nd = 0, j = 0;
	uint32_t x = close_code;

	ASSERT(out != NULL);
	do {
		digits[sizeof(digits) - 1 - nd++] = (char)('0' + x % 10u);
		x /= 10u;
	} while (x != 0);
	if (!PUT_LIT("{\"conn_id\":\"") || !put_conn_id(out, cap, &j, conn_id) ||
	    !PUT_LIT("\",\"close_code\":") ||
	    !put(out, cap, &j, digits + sizeof(digits) - nd, nd) || !PUT_LIT("}"))
		return 0;
	return j;
}
