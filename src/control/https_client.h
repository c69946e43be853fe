/*
 * https_client.h - a small HTTPS/1.1 client over BoringSSL for the control thread:
 * the relay's only outbound connections (push wake: the OAuth token fetch and the FCM
 * send; next, ACME for autocert). Why it is written here rather than taken from a
 * library: docs/adr/0013-push-wake.md.
 *
 * What a call does: resolve the URL's host (a name with getaddrinfo on a thread of its
 * own, so the wait can be polled and abandoned; an IP literal without a resolver),
 * connect to each address in
 * turn, TLS 1.2+ with SNI (names only) and the server certificate verified against
 * the system bundle HTTPS_CA_BUNDLE_SYSTEM plus the operator's extra bundle (the name,
 * or the IP literal, must match), send one request with Content-Length and
 * "Connection: close", then read one response with http_reply.h: the status and at
 * most reply_body_max body bytes. Redirects are never followed: a 3xx is a response
 * like any other. One connection per call, closed at its end (calls are rare: keeping
 * connections alive is not worth its state).
 *
 * Two ways to drive a call:
 * - non-blocking, for a loop that runs many calls at once (push.c): https_call_start,
 *   then poll https_call_fd for https_call_events until https_call_deadline_ms, and
 *   https_call_step after each wake-up until it returns true;
 * - blocking, for sequential callers (ACME): https_call_run, which polls itself and
 *   gives up early when cancel_fd becomes readable.
 * Either way the whole call, resolve to last byte, is bounded by timeout_ms, and
 * https_call_cancel ends it at once (the cancelled state: the relay's shutdown).
 *
 * Contract:
 * - SIGPIPE must be ignored in the process (main.c does): BoringSSL writes to the
 *   socket with write(2), and a peer that went away would otherwise kill the relay.
 * - A client and its calls belong to one thread at a time; clients are independent. A
 *   lookup abandoned by its call finishes on its own thread and frees itself.
 * - Memory: a call is one allocation sized for its request and reply limits; the
 *   request bytes (which carry secrets: bearer tokens, assertions, device tokens) and
 *   the reply body are wiped when the call is freed.
 * - Results: err is HTTPS_OK when a response head was read (whatever its status; a
 *   body cut short is still OK, as Go's callers ignore body read errors), else the
 *   failure, with `detail` a fixed or library text (strerror, gai_strerror, an X.509
 *   verify reason, the reply parser's) that never holds request or reply bytes.
 */
#ifndef PYRELAY_HTTPS_CLIENT_H
#define PYRELAY_HTTPS_CLIENT_H

#include "core/common.h"
#include "core/url.h"

#define HTTPS_CA_BUNDLE_SYSTEM "/etc/ssl/certs/ca-certificates.crt"
#define HTTPS_HEADERS_MAX 8u
#define HTTPS_WHY_BYTES 256u
#define HTTPS_DETAIL_BYTES 192u

enum https_error {
	HTTPS_OK = 0,
	HTTPS_ERR_NOMEM,     /* the call could not be set up */
	HTTPS_ERR_RESOLVE,   /* the host name did not resolve */
	HTTPS_ERR_CONNECT,   /* no address accepted the TCP connection */
	HTTPS_ERR_TLS,       /* the handshake failed */
	HTTPS_ERR_VERIFY,    /* the server certificate is not trusted or not for this host */
	HTTPS_ERR_IO,        /* the connection failed while sending or reading the head */
	HTTPS_ERR_REPLY,     /* the response head was malformed, too large, or cut short */
	HTTPS_ERR_TIMEOUT,   /* timeout_ms passed */
	HTTPS_ERR_CANCELLED, /* https_call_cancel, or cancel_fd */
};

struct https_client;
struct https_call;

struct https_header {
	const char *name;
	const char *value; /* must not contain CR or LF (asserted) */
};

struct https_request {
	const char *method;              /* "POST", "GET" */
	const struct https_url *url;     /* core/url.h */
	const struct https_header *headers; /* besides Host, Content-Length, Connection */
	size_t nheaders;                 /* <= HTTPS_HEADERS_MAX */
	struct span body;                /* sent as is, with Content-Length (also 0) */
	size_t reply_body_max;           /* reply body bytes kept; the rest is not read */
	uint64_t timeout_ms;             /* the whole call */
};

struct https_result {
	enum https_error err;
	char detail[HTTPS_DETAIL_BYTES]; /* "" when OK */
	int status;                      /* OK: the response status */
	const uint8_t *body;             /* OK: the kept body bytes (owned by the call) */
	size_t body_len;
	/* OK: the Location, Replay-Nonce and Retry-After headers (http_reply.h), "" when
	 * absent; owned by the call */
	const char *location;
	const char *replay_nonce;
	const char *retry_after;
};

/* Trust: the system bundle and, unless "" or NULL, extra_ca_file (PEM). A given extra
 * file that cannot be loaded is an error; a missing system bundle is one only when
 * there is no extra file. NULL with the reason in why. */
struct https_client *https_client_create(const char *extra_ca_file, char why[HTTPS_WHY_BYTES]);
void https_client_destroy(struct https_client *c);

/* Start a call at now_ms; the request is copied (the caller's buffers may go). It
 * returns waiting on its fd, or already finished (e.g. the connection was refused).
 * NULL only when out of memory. */
struct https_call *https_call_start(struct https_client *c, const struct https_request *req, uint64_t now_ms);

/* What the call waits for: a descriptor (the socket, or the resolver's eventfd; -1
 * once finished) and its poll events; and the time it gives up. */
int https_call_fd(const struct https_call *call);
short https_call_events(const struct https_call *call);
uint64_t https_call_deadline_ms(const struct https_call *call);

/* Make progress after a wake-up (revents: what poll reported for the fd, 0 for none).
 * True once the call is finished (then read https_call_result). */
bool https_call_step(struct https_call *call, short revents, uint64_t now_ms);

/* Finish an unfinished call now as HTTPS_ERR_CANCELLED (closes its connection). */
void https_call_cancel(struct https_call *call);

bool https_call_finished(const struct https_call *call);
const struct https_result *https_call_result(const struct https_call *call);
void https_call_free(struct https_call *call);

/* Run a whole call on this thread, blocking in poll; cancel_fd (-1: none) becoming
 * readable cancels it. Returns the finished call (free it), or NULL when out of
 * memory. */
struct https_call *https_call_run(struct https_client *c, const struct https_request *req, int cancel_fd);

#endif
