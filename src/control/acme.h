/*
 * acme.h - an ACME client (RFC 8555) for one DNS name with the HTTP-01 challenge, over
 * the control thread's HTTPS client (control/https_client.h). Why it is written here
 * rather than delegated to a packaged tool: docs/adr/0014-autocert-acme-client.md.
 *
 * What acme_obtain does, in order (each step one or more HTTPS calls):
 *   directory -> newNonce (when no nonce is held) -> newAccount (the account key signs
 *   with "jwk"; an existing account answers 200 with its URL, so this also finds it)
 *   -> newOrder for the one identifier -> each authorization: publish the key
 *   authorization for its http-01 token (the caller's challenge listener serves it),
 *   tell the server to validate, poll until valid -> finalize with a CSR for the name
 *   (key: a fresh ECDSA P-256 key) -> poll the order until valid -> download the chain
 *   (POST-as-GET) -> unpublish.
 * Requests are JWS (RFC 7515) flattened JSON, ES256 with a P-256 account key; every
 * request carries a fresh nonce (from the previous reply's Replay-Nonce, else newNonce).
 * A badNonce problem is retried with the nonce it carries, at most ACME_BADNONCE_RETRIES
 * times per request (Let's Encrypt and Pebble send them on purpose).
 *
 * Bounds (every loop has one):
 *   - each HTTPS call: ACME_CALL_TIMEOUT_MS, replies of at most ACME_REPLY_BYTES_MAX;
 *   - polling an authorization or an order: at most ACME_POLLS_MAX polls,
 *     ACME_POLL_INTERVAL_MS apart (a Retry-After of the server up to
 *     ACME_POLL_INTERVAL_MAX_MS is honoured);
 *   - ACME_AUTHZ_MAX authorizations per order (acme_json.h).
 * Blocking: acme_obtain blocks its thread (the autocert thread, never a worker) in poll
 * and gives up at once, with ACME_STAGE_CANCELLED, when cancel_fd becomes readable.
 *
 * Secrets: the account key and the certificate key never leave the process except into
 * the cache directory (mode 0600, by the caller); nothing here logs, and failure texts
 * name the stage, the HTTP status and the ACME problem type only (never bodies, nonces,
 * tokens or keys).
 */
#ifndef PYRELAY_ACME_H
#define PYRELAY_ACME_H

#include "control/acme_json.h"
#include "control/https_client.h"

#define ACME_CALL_TIMEOUT_MS 30000u
#define ACME_REPLY_BYTES_MAX (64u * 1024u)
#define ACME_BADNONCE_RETRIES 8u
#define ACME_POLLS_MAX 60u
#define ACME_POLL_INTERVAL_MS 1000u
#define ACME_POLL_INTERVAL_MAX_MS 10000u
#define ACME_WHY_BYTES 256u
/* The key authorization: token "." base64url(SHA-256 thumbprint) */
#define ACME_KEY_AUTH_BYTES (ACME_TOKEN_BYTES + 1u + 43u + 1u)

/* Where an attempt failed: the label of pyrycode_relay_acme_failures_total{stage}. */
enum acme_stage {
	ACME_STAGE_DIRECTORY = 0, /* fetching or reading the directory */
	ACME_STAGE_NONCE,
	ACME_STAGE_ACCOUNT,       /* the account key, or newAccount */
	ACME_STAGE_ORDER,
	ACME_STAGE_AUTHORIZATION, /* reading an authorization, or it became invalid */
	ACME_STAGE_CHALLENGE,     /* answering the challenge */
	ACME_STAGE_FINALIZE,      /* the CSR, finalize, polling the order */
	ACME_STAGE_CERTIFICATE,   /* downloading or checking the chain */
	ACME_STAGE_CACHE,         /* writing the cache (the caller's stage) */
	ACME_STAGE_CANCELLED,     /* shutdown */
	ACME_STAGE_COUNT
};

const char *acme_stage_name(enum acme_stage s);

/* The challenge listener's view: publish(token, key_authorization) before the server
 * is told to validate, unpublish(token) once the authorization is done. */
struct acme_challenge_port {
	void *ctx;
	void (*publish)(void *ctx, const char *token, const char *key_auth);
	void (*unpublish)(void *ctx, const char *token);
};

struct acme_client;
struct evp_pkey_st;

/* directory_url: an https:// URL core/url.h accepts; account_key: an EC P-256 private
 * key (its reference is taken). extra_ca_file as https_client_create. NULL with why. */
struct acme_client *acme_client_create(const char *directory_url, struct evp_pkey_st *account_key,
				       const char *extra_ca_file, int cancel_fd, char why[ACME_WHY_BYTES]);
void acme_client_destroy(struct acme_client *c);

struct acme_issued {
	char *key_pem;   /* the new certificate's private key, PEM (SEC1 "EC PRIVATE KEY") */
	size_t key_len;
	char *chain_pem; /* the chain as the server sent it (leaf first) */
	size_t chain_len;
};
/* Wipe and free both. */
void acme_issued_free(struct acme_issued *out);

/* Obtain a certificate for domain (see above). True with *out filled; false with the
 * stage that failed and why. */
bool acme_obtain(struct acme_client *c, const char *domain, const struct acme_challenge_port *port,
		 struct acme_issued *out, enum acme_stage *stage, char why[ACME_WHY_BYTES]);

/* ---- pure pieces, for tests ---- */

/* RFC 4648 §5 base64url without padding; returns the length written (cap must hold
 * that length + 1: 4 * floor(n / 3) + (n % 3 ? n % 3 + 1 : 0) + 1 bytes, asserted; the
 * output is NUL-terminated). */
size_t acme_b64url(char *out, size_t cap, const uint8_t *in, size_t n);

/* A new EC P-256 key, or NULL. */
struct evp_pkey_st *acme_key_generate(void);
/* The RFC 7638 thumbprint of key's public part, base64url (43 characters + NUL). */
bool acme_jwk_thumbprint(struct evp_pkey_st *key, char out[44]);
/* JWS flattened JSON of payload (may be "" for POST-as-GET) signed by key, for url
 * with nonce; kid (the account URL) or, when NULL, the public key as "jwk". Returns
 * the length, or 0 when it does not fit cap. */
size_t acme_jws(char *out, size_t cap, struct evp_pkey_st *key, const char *kid, const char *nonce,
		const char *url, const char *payload);

#endif
