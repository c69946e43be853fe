/*
 * autocert.h - --domain mode (reference §1.3): the certificate cache directory, the
 * certificate served on the TLS listener, its issuance and renewal over ACME
 * (control/acme.h) on a thread of its own, and the HTTP-01 challenge answers the
 * --http-listen listener serves.
 *
 * Lifecycle (main.c): autocert_cache_prepare at boot (refusal: exit 1 "autocert setup
 * failed"), autocert_create (loads the cached certificate, if any), the TLS server is
 * built with autocert_cert_take, autocert_start, ..., autocert_stop, autocert_destroy.
 *
 * The cache directory holds the files of Go's autocert.DirCache, so an operator can
 * keep the Go relay's cache: "acme_account+key" (the account key, SEC1 PEM) and
 * "<domain>" (the certificate's private key PEM, then the chain PEM, leaf first). Files
 * are written 0600 through a temporary file and rename.
 *
 * Issuance: the first handshake for the domain after a fresh start (no usable cached
 * certificate) fails cleanly (TLS_ERR_NO_CERT) and wakes the thread, which obtains the
 * certificate; the client's next handshake gets it. Handshakes for other names never
 * start an issuance. Renewal: at two thirds of the certificate's lifetime; a failed
 * attempt is retried after AUTOCERT_BACKOFF_MIN_MS, doubling up to
 * AUTOCERT_BACKOFF_MAX_MS. A new certificate is swapped into the TLS server: live
 * connections keep theirs.
 */
#ifndef PYRELAY_AUTOCERT_H
#define PYRELAY_AUTOCERT_H

#include "control/acme.h"
#include "transport/tls.h"

#define AUTOCERT_BACKOFF_MIN_MS 5000u
#define AUTOCERT_BACKOFF_MAX_MS (60u * 60u * 1000u)
#define AUTOCERT_CHALLENGES_MAX ACME_AUTHZ_MAX
#define AUTOCERT_ACCOUNT_KEY_FILE "acme_account+key"
#define AUTOCERT_WHY_BYTES 512u
#define AUTOCERT_DOMAIN_BYTES 254u

/* ---- the cache directory (§1.3) ---- */

enum autocert_cache_verdict {
	AUTOCERT_CACHE_OK = 0,          /* a directory without group/other bits */
	AUTOCERT_CACHE_CREATE,          /* missing: create it 0700 (with its parents) */
	AUTOCERT_CACHE_TIGHTEN,         /* ours, with group/other bits: chmod 0700, log */
	AUTOCERT_CACHE_REFUSE_NOT_DIR,  /* exists, not a directory */
	AUTOCERT_CACHE_REFUSE_INSECURE, /* group/other bits and not ours */
};

/* The rule, pure: exists? then its mode (st_mode), owner and our effective uid. */
enum autocert_cache_verdict autocert_cache_verdict(bool exists, uint32_t mode, uint32_t owner, uint32_t euid);

struct autocert_cache_result {
	bool tightened;   /* log "tightened cert cache dir perms" */
	uint32_t from_mode; /* the permission bits before (e.g. 0755) */
};

/* Apply the rule to path (stat, mkdir, chmod). False with why (exit 1). */
bool autocert_cache_prepare(const char *path, uint32_t euid, struct autocert_cache_result *res,
			    char why[AUTOCERT_WHY_BYTES]);

/* ---- the manager ---- */

/* Metrics (read by the metrics thread with relaxed loads). */
struct autocert_stats {
	int64_t last_success_s;                 /* wall clock of the last issuance, 0: none */
	uint64_t issued;                        /* certificates obtained */
	uint64_t failures[ACME_STAGE_COUNT];    /* attempts that failed, by stage */
};

struct autocert_config {
	const char *domain;         /* checked with config_domain_valid */
	const char *cache_dir;      /* prepared with autocert_cache_prepare */
	const char *directory_url;  /* --acme-directory */
	const char *outbound_ca_file;
	int64_t *cert_not_after_s;  /* updated (atomically) whenever the served certificate changes */
};

struct autocert;

/* Read (or create) the account key and read the cached certificate. NULL with why
 * (exit 1). */
struct autocert *autocert_create(const struct autocert_config *cfg, char why[AUTOCERT_WHY_BYTES]);
/* The cached certificate for the TLS server (one reference, the caller's), or NULL. */
struct tls_cert *autocert_cert_take(struct autocert *a);
/* For tls_server_set_acme: the lowercase domain, and the want-cert hook. */
const char *autocert_domain(const struct autocert *a);
void autocert_want_cert(void *autocert);
/* Start the thread serving tls (swapping certificates into it). */
bool autocert_start(struct autocert *a, struct tls_server *tls);
/* Cancel any issuance in progress and join the thread. */
void autocert_stop(struct autocert *a);
void autocert_destroy(struct autocert *a);
const struct autocert_stats *autocert_stats_of(const struct autocert *a);

/* The challenge listener: the key authorization of an http-01 token (any thread).
 * True with it copied into out (NUL-terminated). */
bool autocert_challenge_lookup(void *autocert, struct span token, char *out, size_t cap);

/* When a certificate valid from not_before_s to not_after_s is renewed: two thirds of
 * the way. Pure. */
int64_t autocert_renew_at_s(int64_t not_before_s, int64_t not_after_s);

#endif
