/*
 * fcm.h - the pieces of an FCM HTTP v1 push wake that are pure functions (reference
 * §7.2): the OAuth2 JWT-bearer assertion, the two request bodies, the reading of the
 * token endpoint's and FCM's replies into an outcome, the token fingerprint and the
 * duration text of the log lines. push.c does the I/O around them.
 *
 * The behaviour is the Go relay's (internal/relay/push.go over golang.org/x/oauth2/jwt):
 * - assertion: header {"alg":"RS256","typ":"JWT"[,"kid":<private_key_id>]}, claims
 *   {"iss":<client_email>,"scope":FCM_SCOPE,"aud":<token URL>,"exp":iat+3600,"iat":iat}
 *   with iat = now - 10 s (x/oauth2's allowance for clock skew), each part base64url
 *   without padding, signed RSASSA-PKCS1-v1_5 with SHA-256;
 * - token request: application/x-www-form-urlencoded
 *   "assertion=<jwt>&grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
 *   (url.Values.Encode sorts the keys);
 * - token reply (2xx): a JSON object whose access_token, token_type and id_token are
 *   strings or null and expires_in an integer or null (encoding/json into x/oauth2's
 *   struct: any other type fails the fetch); the access token must be non-empty
 *   printable ASCII (it goes into a header line), at most FCM_ACCESS_TOKEN_BYTES_MAX;
 * - send body: exactly {"message":{"token":"<device token>","android":{"priority":
 *   "HIGH"}}}, the token escaped as Go's json.Marshal escapes it;
 * - send reply: 2xx is sent, with the message id when the reply's "name" is 1..256
 *   bytes of [A-Za-z0-9/:%_-] (a bad or missing id never fails a send). Otherwise the
 *   reason is error.status and the errorCode of the first error.details[] entry whose
 *   "@type" is FCM_ERROR_TYPE and whose errorCode passes, each kept only if it is 1..64
 *   bytes of [A-Z0-9_]; the error text is "fcm send failed: status N" with the kept
 *   ones in parentheses ("(NOT_FOUND, UNREGISTERED)", "(INTERNAL)"); errorCode
 *   UNREGISTERED is the unregistered outcome, anything else send_failed. FCM's free
 *   text (error.message) is never read into anything.
 * JSON replies are read with envelope/json.h: the whole reply must be valid JSON
 * (else nothing is taken from it, as Unmarshal validates first), member names match
 * ASCII case-insensitively, the last duplicate wins, unknown members are ignored, and
 * a declared member of the wrong type voids the whole reply, as in encoding/json.
 *
 * Contract: pure except fcm_jwt_sign (BoringSSL signing) - no I/O, no globals; outputs
 * are written into caller buffers with capacities. Texts never contain reply bytes
 * other than the validated message id and enum codes.
 */
#ifndef PYRELAY_FCM_H
#define PYRELAY_FCM_H

#include "core/common.h"

#define FCM_SCOPE "https://www.googleapis.com/auth/firebase.messaging"
#define FCM_ERROR_TYPE "type.googleapis.com/google.firebase.fcm.v1.FcmError"
#define FCM_GRANT_TYPE_ENCODED "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
#define FCM_JWT_LIFETIME_S 3600
#define FCM_JWT_IAT_SKEW_S 10
/* An access token is cached until this long before it expires (x/oauth2's expiryDelta). */
#define FCM_TOKEN_EXPIRY_DELTA_S 10

#define FCM_REPLY_BYTES_MAX 4096u        /* of an FCM reply, read (reference §7.2) */
#define FCM_TOKEN_REPLY_BYTES_MAX 16384u /* of a token endpoint reply, read */
#define FCM_ACCESS_TOKEN_BYTES_MAX 8192u
#define FCM_MESSAGE_ID_BYTES_MAX 256u
#define FCM_ENUM_BYTES_MAX 64u
#define FCM_ERR_BYTES 192u
/* The signed assertion: base64 of header and claims (with escaped email, key id and
 * token URL at their limits) and of the largest signature. */
#define FCM_JWT_BYTES_MAX 32768u
#define FCM_TOKEN_FP_HEX 8u

/* Outcomes of a wake; labels of pyrycode_relay_push_wakes_total, in this order. */
enum fcm_outcome {
	FCM_OUTCOME_SENT = 0,
	FCM_OUTCOME_UNREGISTERED,
	FCM_OUTCOME_SEND_FAILED,
	FCM_OUTCOME_TOKEN_FETCH_FAILED,
	FCM_OUTCOME_DROPPED,
	FCM_OUTCOME_COUNT,
};
extern const char *const fcm_outcome_names[FCM_OUTCOME_COUNT];

/* ---- the OAuth2 JWT-bearer grant ---- */

struct evp_pkey_st;

/* The signed assertion for these credentials at iat_s (Unix seconds, already minus
 * the skew), NUL-terminated in out. Returns its length, or 0 if it does not fit or
 * signing failed. */
size_t fcm_jwt_sign(char *out, size_t cap, struct evp_pkey_st *key, const char *client_email,
		    const char *private_key_id, const char *token_url, int64_t iat_s);

/* "assertion=<jwt>&grant_type=..." into out; returns its length or 0 if it does not fit. */
size_t fcm_token_request_body(char *out, size_t cap, const char *jwt);

/*
 * Read a 2xx token reply. True with the access token (NUL-terminated) in out and its
 * lifetime in *expires_in_s (<= 0: the reply gave none, and x/oauth2 then treats the
 * token as never expiring); false when the reply is unusable.
 */
bool fcm_parse_token_reply(struct span body, char *out, size_t cap, int64_t *expires_in_s);

/* ---- the send ---- */

/* The FCM body for a device token (the decoded bytes); returns its length, or 0 if it
 * does not fit. FCM_SEND_BODY_LEN_MAX(n) bytes always suffice. */
#define FCM_SEND_BODY_HEAD "{\"message\":{\"token\":\""
#define FCM_SEND_BODY_TAIL "\",\"android\":{\"priority\":\"HIGH\"}}}"
#define FCM_SEND_BODY_LEN_MAX(n) (sizeof FCM_SEND_BODY_HEAD - 1 + (size_t)(n) * 6u + sizeof FCM_SEND_BODY_TAIL - 1)
size_t fcm_send_body(char *out, size_t cap, struct span device_token);

struct fcm_send_result {
	enum fcm_outcome outcome; /* SENT, UNREGISTERED or SEND_FAILED */
	char message_id[FCM_MESSAGE_ID_BYTES_MAX + 1]; /* "" when none (SENT only) */
	char err[FCM_ERR_BYTES];                        /* "" when SENT */
};

/* Classify an FCM reply: its HTTP status and the first FCM_REPLY_BYTES_MAX bytes of
 * its body (any bytes; cut short is fine). */
void fcm_classify_send_reply(int status, struct span body, struct fcm_send_result *out);

/* ---- log values ---- */

/* token_fp: the first 8 hex digits of SHA-256 of the device token, NUL-terminated. */
void fcm_token_fp(struct span device_token, char out[FCM_TOKEN_FP_HEX + 1]);

/* Go's time.Duration.String of ns: "0s", "850ns", "1.5µs", "152.3ms", "1.2s",
 * "1m30s", "1h0m0s". At most 32 bytes with the NUL. */
#define FCM_DURATION_BYTES 32u
void fcm_format_duration(char *out, size_t cap, uint64_t ns);

#endif
