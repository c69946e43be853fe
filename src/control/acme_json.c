/*
 * acme_json.c - ACME resources from JSON replies (contract in acme_json.h).
 *
 * The body is validated whole by json_valid first, so the walkers below only look for
 * structure in a span already known to be well-formed; each still checks every step
 * (a walker never trusts that it was called on valid input).
 */
#include "control/acme_json.h"

#include <string.h>

#include "envelope/json.h"

typedef bool (*element_fn)(void *ctx, struct span value);

/* Each element of the array `in` (a raw value span). */
static bool walk_array(struct span in, element_fn fn, void *ctx)
{
	const uint8_t *p = in.ptr;
	size_t i = json_skip_ws(in, 0);
	if (i >= in.len || p[i] != '[')
		return false;
	i = json_skip_ws(in, i + 1);
	for (bool first = true;; first = false) {
		if (i >= in.len)
			return false;
		if (p[i] == ']')
			return json_skip_ws(in, i + 1) == in.len;
		if (!first) {
			if (p[i] != ',')
				return false;
			i = json_skip_ws(in, i + 1);
		}
		struct span v;
		if (!json_skip_value(in, &i, 1, &v) || !fn(ctx, v))
			return false;
		i = json_skip_ws(in, i);
	}
}

/* A string value into out (printable ASCII, fits with its NUL); null leaves out as it
 * was. False for any other type or content. */
static bool string_into(struct span v, char *out, size_t cap)
{
	if (json_type_of(v) == JSON_TYPE_NULL)
		return true;
	if (json_type_of(v) != JSON_TYPE_STRING)
		return false;
	struct json_str s;
	size_t pos = 0;
	if (!json_scan_string(v, &pos, &s) || pos != v.len || s.raw.len >= cap)
		return false;
	size_t n = json_str_unescape(s, (uint8_t *)out, cap - 1);
	if (n == SIZE_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((uint8_t)out[i] < 0x21 || (uint8_t)out[i] > 0x7e)
			return false;
	out[n] = '\0';
	return true;
}

static bool name_is(struct json_str name, const char *lit)
{
	return json_str_eq_cstr(name, lit);
}

/* ------------------------------------------------------------------ statuses */

static const char *const status_names[] = {
	[ACME_STATUS_UNKNOWN] = "unknown",     [ACME_STATUS_PENDING] = "pending",
	[ACME_STATUS_READY] = "ready",         [ACME_STATUS_PROCESSING] = "processing",
	[ACME_STATUS_VALID] = "valid",         [ACME_STATUS_INVALID] = "invalid",
	[ACME_STATUS_EXPIRED] = "expired",     [ACME_STATUS_DEACTIVATED] = "deactivated",
	[ACME_STATUS_REVOKED] = "revoked",
};

enum acme_status acme_status_of(const char *s)
{
	for (size_t i = 1; i < ARRAY_LEN(status_names); i++)
		if (strcmp(s, status_names[i]) == 0)
			return (enum acme_status)i;
	return ACME_STATUS_UNKNOWN;
}

const char *acme_status_name(enum acme_status s)
{
	return (size_t)s < ARRAY_LEN(status_names) ? status_names[s] : "unknown";
}

static bool status_into(struct span v, enum acme_status *out)
{
	char word[ACME_STATUS_BYTES] = "";
	if (!string_into(v, word, sizeof word))
		return false;
	*out = acme_status_of(word);
	return true;
}

/* ------------------------------------------------------------------ directory */

static bool directory_member(void *ctx, struct json_str name, struct span v)
{
	struct acme_directory *d = ctx;
	if (name_is(name, "newNonce"))
		return string_into(v, d->new_nonce, sizeof d->new_nonce);
	if (name_is(name, "newAccount"))
		return string_into(v, d->new_account, sizeof d->new_account);
	if (name_is(name, "newOrder"))
		return string_into(v, d->new_order, sizeof d->new_order);
	return true; /* meta, keyChange, revokeCert, ... */
}

bool acme_parse_directory(struct span in, struct acme_directory *out)
{
	memset(out, 0, sizeof *out);
	if (json_valid(in) && json_walk_object(in, directory_member, out) && out->new_nonce[0] &&
	    out->new_account[0] && out->new_order[0])
		return true;
	memset(out, 0, sizeof *out);
	return false;
}

/* ------------------------------------------------------------------ order */

static bool authz_element(void *ctx, struct span v)
{
	struct acme_order *o = ctx;
	if (o->nauthz >= ACME_AUTHZ_MAX || json_type_of(v) != JSON_TYPE_STRING)
		return false;
	return string_into(v, o->authz[o->nauthz++], ACME_URL_BYTES);
}

static bool order_member(void *ctx, struct json_str name, struct span v)
{
	struct acme_order *o = ctx;
	if (name_is(name, "status"))
		return status_into(v, &o->status);
	if (name_is(name, "finalize"))
		return string_into(v, o->finalize, sizeof o->finalize);
	if (name_is(name, "certificate"))
		return string_into(v, o->certificate, sizeof o->certificate);
	if (name_is(name, "authorizations")) {
		if (json_type_of(v) == JSON_TYPE_NULL)
			return true;
		if (json_type_of(v) != JSON_TYPE_ARRAY)
			return false;
		o->nauthz = 0; /* the last duplicate wins */
		memset(o->authz, 0, sizeof o->authz);
		return walk_array(v, authz_element, o);
	}
	return true;
}

bool acme_parse_order(struct span in, struct acme_order *out)
{
	memset(out, 0, sizeof *out);
	if (json_valid(in) && json_walk_object(in, order_member, out))
		return true;
	memset(out, 0, sizeof *out);
	return false;
}

/* ------------------------------------------------------------------ authorization */

struct challenge {
	enum acme_status status;
	char type[32];
	char url[ACME_URL_BYTES];
	char token[ACME_TOKEN_BYTES];
};

struct authz_walk {
	struct acme_authz *a;
	uint32_t nchallenges;
	struct challenge c; /* the one being read */
};

static bool challenge_member(void *ctx, struct json_str name, struct span v)
{
	struct challenge *c = ctx;
	if (name_is(name, "type")) {
		/* a type the relay does not know may be long: only http-01 must fit */
		if (json_type_of(v) == JSON_TYPE_STRING && v.len > sizeof c->type + 1) {
			c->type[0] = '\0';
			return true;
		}
		return string_into(v, c->type, sizeof c->type);
	}
	if (name_is(name, "status"))
		return status_into(v, &c->status);
	if (name_is(name, "url"))
		return string_into(v, c->url, sizeof c->url);
	if (name_is(name, "token"))
		return string_into(v, c->token, sizeof c->token);
	return true;
}

static bool challenge_element(void *ctx, struct span v)
{
	struct authz_walk *w = ctx;
	if (++w->nchallenges > ACME_CHALLENGES_MAX || json_type_of(v) != JSON_TYPE_OBJECT)
		return false;
	memset(&w->c, 0, sizeof w->c);
	if (!json_walk_object(v, challenge_member, &w->c))
		return false;
	if (strcmp(w->c.type, "http-01") != 0)
		return true;
	/* the first http-01 challenge counts (RFC 8555 §7.1.4: one of each type) */
	if (w->a->have_http01 || w->c.url[0] == '\0' || w->c.token[0] == '\0')
		return true; /* a second one, or one without its URL or token: not usable */
	w->a->have_http01 = true;
	w->a->http01_status = w->c.status;
	memcpy(w->a->http01_url, w->c.url, sizeof w->c.url);
	memcpy(w->a->http01_token, w->c.token, sizeof w->c.token);
	return true;
}

static bool authz_member(void *ctx, struct json_str name, struct span v)
{
	struct authz_walk *w = ctx;
	if (name_is(name, "status"))
		return status_into(v, &w->a->status);
	if (name_is(name, "challenges")) {
		if (json_type_of(v) == JSON_TYPE_NULL)
			return true;
		if (json_type_of(v) != JSON_TYPE_ARRAY)
			return false;
		w->nchallenges = 0;
		w->a->have_http01 = false;
		return walk_array(v, challenge_element, w);
	}
	return true;
}

bool acme_parse_authz(struct span in, struct acme_authz *out)
{
	struct authz_walk w = { .a = out };
	memset(out, 0, sizeof *out);
	if (json_valid(in) && json_walk_object(in, authz_member, &w))
		return true;
	memset(out, 0, sizeof *out);
	return false;
}

/* ------------------------------------------------------------------ problem */

static bool problem_member(void *ctx, struct json_str name, struct span v)
{
	struct acme_problem *p = ctx;
	if (name_is(name, "type"))
		return string_into(v, p->type, sizeof p->type);
	return true; /* detail (free text: never logged), status, subproblems */
}

bool acme_parse_problem(struct span in, struct acme_problem *out)
{
	memset(out, 0, sizeof *out);
	if (json_valid(in) && json_walk_object(in, problem_member, out))
		return true;
	memset(out, 0, sizeof *out);
	return false;
}
