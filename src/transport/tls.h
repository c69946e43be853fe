/*
 * tls.h - TLS termination in user space: BoringSSL driven through memory, no I/O.
 *
 * The engine carries every byte through two seams (ADR 8): received bytes enter the
 * phases at conn_input, bytes leave at send_submit. This module sits under both and
 * never sees a socket: the owner hands it the ciphertext a receive delivered and gets
 * plaintext back (tls_conn_input), hands it plaintext and takes the ciphertext to put
 * on the wire (tls_conn_write, tls_conn_out_take). No function here blocks, sleeps or
 * does I/O, except tls_cert_load, which reads two files and is for boot and SIGHUP,
 * off the worker rings. Nothing here logs: results carry reasons the caller may log,
 * and they never contain key material or bytes a client sent.
 *
 * Objects and ownership:
 *   struct tls_cert    a certificate chain and its private key, checked at load.
 *                      Reference counted (atomically): tls_server_new and
 *                      tls_server_swap_cert take the caller's reference; a connection
 *                      holds one during its handshake only.
 *   struct tls_server  what every worker shares: the BoringSSL context, the current
 *                      certificate, the session-ticket keys. tls_conn_new,
 *                      tls_server_swap_cert and tls_server_rotate_ticket_keys may be
 *                      called from any thread. It must outlive its connections.
 *   struct tls_conn    one connection, used by one thread at a time. It owns its
 *                      BoringSSL state and a ciphertext output buffer that exists only
 *                      while it holds bytes not yet taken.
 *   struct tls_stats   counters of one worker, written by that worker's connections
 *                      only (plain integers; a scrape sums the workers).
 *
 * The protocol, as served: TLS 1.2 and 1.3 only. TLS 1.2 suites are ECDHE with an AEAD
 * (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305; ECDSA or RSA certificates): exactly
 * the ones the kernel can take over (transport/ktls.h). TLS 1.3 suites are BoringSSL's
 * three, which are the same AEADs. ALPN: a client that offers ALPN must offer
 * "http/1.1" (it is selected); a client that offers none is served. Resumption by
 * session ticket only (no server-side session cache: a resumable session costs the
 * server no memory); ticket keys rotate when the owner says (tls_server_rotate_ticket_keys).
 * No 0-RTT, no renegotiation, no client certificates.
 *
 * Limits (every buffer is bounded; units in the names):
 *   - input: none held here. tls_conn_input reads from the caller's span; BoringSSL
 *     keeps at most one partial record (TLS_RECORD_BYTES_MAX) between calls.
 *   - plaintext out: the caller's buffer, any size >= 1; TLS_AGAIN says "call again".
 *   - ciphertext out: at most TLS_OUT_BYTES_MAX waiting to be taken, plus one flight
 *     (a handshake flight is bounded by TLS_CERT_CHAIN_BYTES_MAX); tls_conn_write
 *     accepts only what fits.
 *   - memory of an idle connection: BoringSSL frees its read and write buffers when
 *     they are empty (its SSL_MODE_RELEASE_BUFFERS is always on), the output buffer is
 *     freed when drained, and the handshake configuration (certificate references) is
 *     shed when the handshake ends. What stays is measured in tests/unit/test_tls.c
 *     and recorded in ADR 12.
 */
#ifndef PYRELAY_TRANSPORT_TLS_H
#define PYRELAY_TRANSPORT_TLS_H

#include <sys/uio.h>

#include "core/common.h"

/* The engine closes a connection whose handshake has not completed this long after
 * accept (tls_conn_fail with TLS_ERR_TIMEOUT). Go's net/http uses the smallest of its
 * server timeouts for the handshake; the reference's is the 5 s read-header timeout. */
#define TLS_HANDSHAKE_TIMEOUT_MS 5000u

/* RFC 8446 §5.1/§5.2: a record carries at most 2^14 plaintext bytes; a protected
 * TLS 1.3 record adds at most 256 bytes (type, padding, tag); the header is 5 bytes. */
#define TLS_RECORD_HEADER_BYTES 5u
#define TLS_RECORD_PLAINTEXT_BYTES_MAX 16384u
#define TLS_RECORD_BYTES_MAX (TLS_RECORD_HEADER_BYTES + TLS_RECORD_PLAINTEXT_BYTES_MAX + 256u)

/* Ciphertext waiting to be taken: four full records. The owner takes it right after
 * each write, so this bounds a connection's user-space TLS output, not throughput. */
#define TLS_OUT_BYTES_MAX (4u * TLS_RECORD_BYTES_MAX)

/* Certificate files: PEM, at most this big each; a chain of at most this many
 * certificates and DER bytes (so the server's handshake flight fits the output bound). */
#define TLS_PEM_FILE_BYTES_MAX (1024u * 1024u)
#define TLS_CERT_CHAIN_CERTS_MAX 8u
#define TLS_CERT_CHAIN_BYTES_MAX (32u * 1024u)

/* Session tickets: a new key every TLS_TICKET_KEY_ROTATE_MS, the previous one kept for
 * decryption only, so a ticket issued just before a rotation still resumes for one
 * more interval. Sessions live as long as one interval (a ticket is never trusted for
 * longer than its key could have been current). */
#define TLS_TICKET_KEY_ROTATE_MS (12u * 60u * 60u * 1000u)
#define TLS_TICKET_LIFETIME_S (TLS_TICKET_KEY_ROTATE_MS / 1000u)

/* Go's stock answer to an HTTP request on a TLS port (reference §1.4), which the engine
 * writes in plaintext before closing when tls_conn_input fails with
 * TLS_ERR_PLAINTEXT_HTTP. */
#define TLS_PLAINTEXT_HTTP_RESPONSE \
	"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"

/* ------------------------------------------------------------------ certificates */

enum tls_load_result {
	TLS_LOAD_OK = 0,
	TLS_LOAD_UNREADABLE,      /* a file cannot be opened or read */
	TLS_LOAD_BAD_PEM,         /* no certificate or key in it, or one that does not parse */
	TLS_LOAD_UNSUPPORTED_KEY, /* not RSA >= 2048 bits, nor ECDSA P-256/P-384 */
	TLS_LOAD_KEY_MISMATCH,    /* the key is not the certificate's */
	TLS_LOAD_EXPIRED,         /* a certificate of the chain is past its notAfter */
	TLS_LOAD_NOT_YET_VALID,   /* a certificate of the chain is before its notBefore */
	TLS_LOAD_INTERNAL,        /* out of memory or a BoringSSL failure */
	TLS_LOAD_RESULT_COUNT
};

#define TLS_LOAD_REASON_BYTES_MAX 256u

struct tls_load_error {
	enum tls_load_result result;
	/* One line, no key material, no file contents: which file, what is wrong and, for
	 * the dates, when. */
	char reason[TLS_LOAD_REASON_BYTES_MAX];
	/* A static hint for the operator (log it as `fix`). */
	const char *fix;
};

/* A short stable name for a result ("expired", ...), for logs and tests. */
const char *tls_load_result_name(enum tls_load_result r);

/*
 * Load and check a certificate chain (PEM, leaf first, then intermediates) and its
 * private key (PEM: PKCS#8, SEC1 or PKCS#1; not encrypted). now_s is wall-clock
 * seconds since the epoch, for the validity checks. Returns a certificate holding one
 * reference, or NULL with *err filled in. Checks, in this order: readable, PEM,
 * chain bounds, key type, key matches the leaf, every certificate within its dates.
 */
struct tls_cert *tls_cert_load(const char *cert_path, const char *key_path, int64_t now_s,
			       struct tls_load_error *err);
/* The same from PEM already in memory (the files' contents). */
struct tls_cert *tls_cert_from_pem(const void *cert_pem, size_t cert_len, const void *key_pem,
				   size_t key_len, int64_t now_s, struct tls_load_error *err);
/* Drop one reference (the last frees it). NULL is ignored. */
void tls_cert_put(struct tls_cert *cert);
/* The earliest notAfter of the chain, seconds since the epoch (an expiry metric). */
int64_t tls_cert_not_after_s(const struct tls_cert *cert);

/* ------------------------------------------------------------------ errors, counters */

/* Why a connection's TLS failed: metric labels (tls_error_name), never client data. */
enum tls_error {
	TLS_ERR_NONE = 0,
	TLS_ERR_PLAINTEXT_HTTP,   /* the first bytes are an HTTP request: answer TLS_PLAINTEXT_HTTP_RESPONSE */
	TLS_ERR_NOT_TLS,          /* the first bytes are not a TLS handshake record */
	TLS_ERR_VERSION,          /* no shared protocol version (a client without TLS 1.2) */
	TLS_ERR_CIPHER,           /* no shared cipher suite, group or signature algorithm */
	TLS_ERR_ALPN,             /* ALPN offered without http/1.1 */
	TLS_ERR_SNI,              /* server name not served by our certificate (tls_sni_policy) */
	TLS_ERR_PEER_ALERT,       /* the peer sent a fatal alert (e.g. it rejected our certificate) */
	TLS_ERR_RECORD_TOO_LARGE, /* a record over the protocol's size limit */
	TLS_ERR_PROTOCOL,         /* anything else malformed or out of order, a bad record MAC */
	TLS_ERR_TIMEOUT,          /* the owner's handshake deadline (tls_conn_fail) */
	TLS_ERR_EOF,              /* the owner saw the peer close TCP mid-handshake (tls_conn_fail) */
	TLS_ERR_KEY_UPDATE,       /* kTLS: the peer sent a KeyUpdate; the kernel's keys cannot follow it
				   * here (transport/ktls.h), so the connection is closed */
	TLS_ERR_INTERNAL,         /* out of memory, output over its bound, a BoringSSL failure */
	TLS_ERR_NO_CERT,          /* autocert: the name is served but no certificate is there yet */
	TLS_ERR_COUNT
};

const char *tls_error_name(enum tls_error e);

struct tls_stats {
	uint64_t handshakes;        /* completed */
	uint64_t handshakes_resumed; /* of which resumed a session (ticket) */
	uint64_t handshakes_tls12;
	uint64_t handshakes_tls13;
	uint64_t handshake_failed[TLS_ERR_COUNT]; /* by reason; [TLS_ERR_NONE] stays 0 */
	uint64_t failed_after_handshake[TLS_ERR_COUNT];
};

/* ------------------------------------------------------------------ server */

/* What the server name (SNI) of a ClientHello must be. Matching uses the certificate's
 * names as a client would (wildcards included). */
enum tls_sni_policy {
	TLS_SNI_ANY = 0,           /* any name, or none */
	TLS_SNI_MATCH_IF_SENT,     /* none, or one the certificate covers */
	TLS_SNI_REQUIRED,          /* one the certificate covers (the reference's autocert) */
};

/* A server with cert (its reference is taken, also on failure). now_ms: the owner's
 * monotonic clock, the origin of the ticket-key schedule. NULL when BoringSSL refuses
 * (out of memory). cert may be NULL only for a server that tls_server_set_acme then
 * configures: its handshakes wait (TLS_WAIT_CERT) until tls_server_swap_cert. */
struct tls_server *tls_server_new(struct tls_cert *cert, enum tls_sni_policy sni, uint64_t now_ms);
/* After every connection of the server is freed. */
void tls_server_free(struct tls_server *s);
/* New handshakes use cert from now on (its reference is taken); connections that
 * already started keep the certificate they began with. For SIGHUP: load and check
 * with tls_cert_load first, and keep the old one when that fails. */
void tls_server_swap_cert(struct tls_server *s, struct tls_cert *cert);
/* Autocert (ACME, before any connection): only `name` is served (the ClientHello's
 * server name must equal it, ASCII case-insensitively, a trailing dot allowed; no name
 * is refused); while no certificate is there, a handshake for it calls want_cert(ctx)
 * on the worker's thread (it must not block: the autocert thread starts the issuance)
 * and pauses (TLS_WAIT_CERT) until the certificate is swapped in or the owner gives up
 * (tls_conn_fail with TLS_ERR_NO_CERT at its handshake deadline). name must outlive
 * the server. */
void tls_server_set_acme(struct tls_server *s, const char *name, void (*want_cert)(void *ctx), void *ctx);

/* Rotate the ticket keys when TLS_TICKET_KEY_ROTATE_MS have passed since the last
 * rotation (or since tls_server_new); true when it rotated. Call it on a timer, with
 * the same clock as tls_server_new; any thread. */
bool tls_server_rotate_ticket_keys(struct tls_server *s, uint64_t now_ms);
/* Moves at every tls_server_swap_cert: a worker whose handshakes wait for a certificate
 * (TLS_WAIT_CERT) polls it. Any thread. */
uint64_t tls_server_cert_generation(const struct tls_server *s);

/* ------------------------------------------------------------------ first bytes */

enum tls_first_bytes {
	TLS_FIRST_NEED_MORE = 0, /* cannot tell yet */
	TLS_FIRST_TLS,           /* a TLS handshake record starts here */
	TLS_FIRST_HTTP,          /* an HTTP request (Go's test: "GET /", "HEAD ", "POST ", "PUT /", "OPTIO") */
	TLS_FIRST_OTHER,         /* neither */
};

/* Classify the first bytes a client sent on a TLS port. Pure. At most 5 bytes decide. */
enum tls_first_bytes tls_first_bytes_kind(const uint8_t *p, size_t n);

/* ------------------------------------------------------------------ connections */

enum tls_status {
	TLS_WANT_INPUT = 0, /* all input consumed and decrypted: receive more */
	TLS_AGAIN,          /* the plaintext buffer filled: consume it, call again with the rest */
	TLS_PEER_CLOSED,    /* the peer sent close_notify: no more plaintext will come */
	TLS_WAIT_CERT,      /* autocert: the handshake waits for the server's first certificate;
			     * call tls_conn_input again (no input needed) once
			     * tls_server_cert_generation moves, or fail it (TLS_ERR_NO_CERT) at the
			     * handshake deadline */
	TLS_FAILED,         /* tls_conn_error says why; send what tls_conn_out_take gives (an
			     * alert), then close (TLS_ERR_PLAINTEXT_HTTP: see its comment) */
};

/* A server connection of s, counting into stats (the owner's worker counters). NULL when
 * out of memory. */
struct tls_conn *tls_conn_new(struct tls_server *s, struct tls_stats *stats);
void tls_conn_free(struct tls_conn *c);
/* Count into another worker's stats from now on: a connection handed to another worker
 * (ADR 9) travels with its tls_conn and must stop writing the old worker's counters. */
void tls_conn_set_stats(struct tls_conn *c, struct tls_stats *stats);

/*
 * Feed ciphertext in[0..in_len) and get plaintext in out[0..out_cap) (out_cap >= 1).
 * Runs the handshake while it is incomplete, then decrypts. *in_used: how much input
 * was consumed (all of it unless TLS_AGAIN); *out_len: plaintext bytes written. Input
 * is read in place, never kept: bytes of a partial record are copied into BoringSSL's
 * own buffer. After any call, ciphertext may be waiting (handshake flights, alerts,
 * session tickets, a KeyUpdate answer): check tls_conn_out_pending.
 * After TLS_PEER_CLOSED or TLS_FAILED, further input is discarded.
 */
enum tls_status tls_conn_input(struct tls_conn *c, const uint8_t *in, size_t in_len, size_t *in_used,
			       uint8_t *out, size_t out_cap, size_t *out_len);

/* The handshake is paused for a certificate (TLS_WAIT_CERT). */
bool tls_conn_waiting_cert(const struct tls_conn *c);
/* The handshake completed (and the connection has not failed). */
bool tls_conn_established(const struct tls_conn *c);

struct tls_conn_info {
	uint16_t version;      /* 0x0303 (TLS 1.2) or 0x0304 (TLS 1.3); 0 before the handshake */
	uint16_t cipher_id;    /* IANA cipher suite number, e.g. 0x1301 */
	bool resumed;          /* a session ticket was accepted */
	bool alpn_http11;      /* ALPN negotiated http/1.1 (false: the client offered none) */
};
struct tls_conn_info tls_conn_info(const struct tls_conn *c);

/*
 * Encrypt plaintext from iov[0..iovcnt) (gathered into records of up to
 * TLS_RECORD_PLAINTEXT_BYTES_MAX). Returns how many plaintext bytes were accepted:
 * all of them, or fewer when the ciphertext waiting would pass TLS_OUT_BYTES_MAX (take
 * it and write the rest). Only once established; 0 after a failure or close_notify.
 */
size_t tls_conn_write(struct tls_conn *c, const struct iovec *iov, size_t iovcnt);

/* Ciphertext waiting to be sent, in bytes. */
size_t tls_conn_out_pending(const struct tls_conn *c);
/* Copy up to cap bytes of it, in order, into dst, and forget them. Returns the count.
 * The output buffer is freed when it drains, so an idle connection holds none. */
size_t tls_conn_out_take(struct tls_conn *c, uint8_t *dst, size_t cap);

/* Queue our close_notify (then send what is pending and close, or wait for the
 * peer's). Later writes are refused. */
void tls_conn_close_notify(struct tls_conn *c);

/* The owner's reasons to give up (TLS_ERR_TIMEOUT, TLS_ERR_EOF): recorded and counted
 * like the module's own; a connection that already failed keeps its first reason. */
void tls_conn_fail(struct tls_conn *c, enum tls_error why);
enum tls_error tls_conn_error(const struct tls_conn *c);

/*
 * Bytes still to receive before the input consumed so far ends on a record boundary
 * (0: it does). kTLS needs that boundary: the kernel decrypts from the next record on,
 * so a record begun in user space must be finished in user space. When this is not 0,
 * receive exactly this many bytes (no more), feed them, and ask again (a partial
 * header is completed first, then the body it announces).
 */
size_t tls_conn_rx_record_remaining(const struct tls_conn *c);

#endif
