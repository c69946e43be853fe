/*
 * acme_json.h - the ACME (RFC 8555) resources the relay reads, parsed from the
 * server's JSON replies: pure functions over a byte span, on the project's JSON scanner
 * (envelope/json.h).
 *
 * Contract:
 * - Input: one reply body, any bytes. The whole body must be one valid JSON object
 *   (RFC 8259 strictly, json.h's rules); anything else is refused (false).
 * - Members the relay does not use are validated and skipped; members it uses must have
 *   the type RFC 8555 gives them (a string where a string is due, an array of strings for
 *   "authorizations"); null counts as absent. The last duplicate of a member wins.
 * - Strings are unescaped into fixed buffers of the struct; one that does not fit (with
 *   its NUL), or holds a NUL or a byte outside printable ASCII, refuses the whole reply
 *   (URLs, tokens and statuses are ASCII: RFC 8555 §8.1 token is base64url).
 * - Arrays are bounded: at most ACME_AUTHZ_MAX authorizations (the relay orders one
 *   identifier), ACME_CHALLENGES_MAX challenges; more refuses the reply.
 * - No I/O, no allocation, no globals; out is fully written on success and zeroed on
 *   failure.
 */
#ifndef PYRELAY_ACME_JSON_H
#define PYRELAY_ACME_JSON_H

#include "core/common.h"

#define ACME_URL_BYTES 2304u     /* "https://" + authority + target of core/url.h */
#define ACME_TOKEN_BYTES 256u    /* RFC 8555 §8.1: >= 128 bits base64url; LE's are 43 */
#define ACME_STATUS_BYTES 32u
#define ACME_PROBLEM_TYPE_BYTES 128u
#define ACME_AUTHZ_MAX 8u
#define ACME_CHALLENGES_MAX 16u

/* RFC 8555 §7.1.6 statuses of the objects the relay reads. */
enum acme_status {
	ACME_STATUS_UNKNOWN = 0, /* absent or not one of these */
	ACME_STATUS_PENDING,
	ACME_STATUS_READY,
	ACME_STATUS_PROCESSING,
	ACME_STATUS_VALID,
	ACME_STATUS_INVALID,
	ACME_STATUS_EXPIRED,
	ACME_STATUS_DEACTIVATED,
	ACME_STATUS_REVOKED,
};

struct acme_directory { /* §7.1.1 */
	char new_nonce[ACME_URL_BYTES];
	char new_account[ACME_URL_BYTES];
	char new_order[ACME_URL_BYTES];
};

struct acme_order { /* §7.1.3 */
	enum acme_status status;
	uint32_t nauthz;
	char authz[ACME_AUTHZ_MAX][ACME_URL_BYTES];
	char finalize[ACME_URL_BYTES];
	char certificate[ACME_URL_BYTES]; /* "" until valid */
};

struct acme_authz { /* §7.1.4, with its http-01 challenge (§8.3) */
	enum acme_status status;
	bool have_http01;
	enum acme_status http01_status;
	char http01_url[ACME_URL_BYTES];
	char http01_token[ACME_TOKEN_BYTES];
};

struct acme_problem { /* RFC 7807 as §6.7 uses it */
	char type[ACME_PROBLEM_TYPE_BYTES]; /* e.g. "urn:ietf:params:acme:error:badNonce" */
};

bool acme_parse_directory(struct span in, struct acme_directory *out);
bool acme_parse_order(struct span in, struct acme_order *out);
bool acme_parse_authz(struct span in, struct acme_authz *out);
bool acme_parse_problem(struct span in, struct acme_problem *out);

/* The status word, or ACME_STATUS_UNKNOWN. */
enum acme_status acme_status_of(const char *s);
const char *acme_status_name(enum acme_status s);

#endif
