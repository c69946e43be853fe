/*
 * https_client.c - the outbound HTTPS/1.1 client (contract in https_client.h).
 *
 * A call is a state machine, resolve -> connect -> handshake -> write -> read -> done,
 * over a non-blocking socket and BoringSSL on that socket. Every state either makes
 * progress or says what it waits for (a descriptor and poll events, or the resolver),
 * so one thread can run many calls, and a blocking caller is just a poll loop around
 * one call. Nothing here sleeps or blocks.
 */
#include "control/https_client.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/mem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "control/http_reply.h"
#include "core/clock.h"

#define READ_CHUNK_BYTES 16384u
#define PORT_TEXT_BYTES 8u
#define CRLF "\r\n"
/* What the state machine may do in one step before it must be waiting or done: every
 * state change is forward, so a handful of rounds always suffice. */
#define STEP_ROUNDS_MAX 16

/*
 * A name lookup runs getaddrinfo on a thread of its own (detached), so a call never
 * blocks on the resolver and can be abandoned at any time; the thread writes an
 * eventfd when it is done, which is what the call polls meanwhile. The request is
 * shared by the call and the thread: whichever lets go last frees it. (Not
 * getaddrinfo_a: its helper threads are glibc's own, which ThreadSanitizer cannot
 * follow.)
 */
struct dns_req {
	uint32_t refs;          /* atomic: the call's and the thread's */
	bool done;              /* atomic: set by the thread before it writes efd */
	int efd;
	int gai_err;            /* getaddrinfo's answer, valid once done */
	struct addrinfo *result;
	char name[URL_HOST_BYTES];
	char service[PORT_TEXT_BYTES];
};

struct https_client {
	SSL_CTX *ctx;
};

enum call_state { ST_RESOLVE, ST_CONNECT, ST_HANDSHAKE, ST_WRITE, ST_READ, ST_DONE };

struct https_call {
	struct https_client *client;
	enum call_state state;
	uint64_t deadline_ms;
	struct https_url url;
	struct dns_req *dns;    /* ST_RESOLVE with a host name */
	struct addrinfo *addrs; /* the resolved addresses (freeaddrinfo) */
	struct addrinfo *next_addr;
	int fd;
	short events;
	int connect_errno; /* of the last address tried */
	SSL *ssl;
	uint8_t *req;
	size_t req_len, req_off;
	struct https_result result;
	struct http_reply reply;
	uint8_t read_buf[READ_CHUNK_BYTES];
	size_t body_cap;
	uint8_t bytes[]; /* the request, then the reply body */
};

/* ------------------------------------------------------------------ the client */

struct https_client *https_client_create(const char *extra_ca_file, char why[HTTPS_WHY_BYTES])
{
	struct https_client *c = calloc(1, sizeof *c);
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	if (c == NULL || ctx == NULL) {
		snprintf(why, HTTPS_WHY_BYTES, "out of memory for the outbound TLS context");
		goto fail;
	}
	/* TLS 1.2 and 1.3 only; the server's certificate must verify (and, per call, name
	 * the host) */
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE);
	bool system_ok = SSL_CTX_load_verify_locations(ctx, HTTPS_CA_BUNDLE_SYSTEM, NULL) == 1;
	ERR_clear_error();
	if (extra_ca_file != NULL && extra_ca_file[0] != '\0') {
		/* access() first: the library's error for a missing file is "system library" */
		if (access(extra_ca_file, R_OK) != 0) {
			snprintf(why, HTTPS_WHY_BYTES, "cannot read --outbound-ca-file %s: %s", extra_ca_file,
				 strerror(errno));
			goto fail;
		}
		if (SSL_CTX_load_verify_locations(ctx, extra_ca_file, NULL) != 1) {
			snprintf(why, HTTPS_WHY_BYTES, "cannot load --outbound-ca-file %s: not a PEM certificate bundle",
				 extra_ca_file);
			ERR_clear_error();
			goto fail;
		}
	} else if (!system_ok) {
		snprintf(why, HTTPS_WHY_BYTES, "cannot load the system CA bundle %s", HTTPS_CA_BUNDLE_SYSTEM);
		goto fail;
	}
	c->ctx = ctx;
	return c;
fail:
	SSL_CTX_free(ctx);
	free(c);
	return NULL;
}

static void dns_unref(struct dns_req *d)
{
	if (__atomic_sub_fetch(&d->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	if (d->result)
		freeaddrinfo(d->result);
	close(d->efd);
	free(d);
}

static void *dns_thread(void *arg)
{
	struct dns_req *d = arg;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_protocol = IPPROTO_TCP,
				  .ai_flags = AI_ADDRCONFIG | AI_NUMERICSERV };
	d->gai_err = getaddrinfo(d->name, d->service, &hints, &d->result);
	__atomic_store_n(&d->done, true, __ATOMIC_RELEASE);
	uint64_t one = 1;
	(void)!write(d->efd, &one, sizeof one);
	dns_unref(d);
	return NULL;
}

void https_client_destroy(struct https_client *c)
{
	if (c == NULL)
		return;
	SSL_CTX_free(c->ctx);
	free(c);
}

/* ------------------------------------------------------------------ finishing */

static void close_conn(struct https_call *call)
{
	if (call->ssl) {
		SSL_free(call->ssl);
		call->ssl = NULL;
	}
	if (call->fd >= 0) {
		close(call->fd);
		call->fd = -1;
	}
	if (call->addrs) {
		freeaddrinfo(call->addrs);
		call->addrs = NULL;
	}
	if (call->dns) {
		/* still resolving: the lookup thread frees the request when it returns */
		dns_unref(call->dns);
		call->dns = NULL;
	}
	ERR_clear_error();
}

static void finish(struct https_call *call, enum https_error err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void finish(struct https_call *call, enum https_error err, const char *fmt, ...)
{
	close_conn(call);
	call->state = ST_DONE;
	call->events = 0;
	call->result.err = err;
	if (err == HTTPS_OK) {
		call->result.status = call->reply.status;
		call->result.body = call->reply.body;
		call->result.body_len = call->reply.body_len;
		call->result.location = call->reply.location;
		call->result.replay_nonce = call->reply.replay_nonce;
		call->result.retry_after = call->reply.retry_after;
		return;
	}
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(call->result.detail, sizeof call->result.detail, fmt, ap);
	va_end(ap);
}

/* ------------------------------------------------------------------ states */

static void start_tls(struct https_call *call)
{
	int one = 1;
	setsockopt(call->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	SSL *ssl = SSL_new(call->client->ctx);
	if (ssl == NULL || !SSL_set_fd(ssl, call->fd)) {
		SSL_free(ssl);
		finish(call, HTTPS_ERR_NOMEM, "out of memory for a TLS connection");
		return;
	}
	call->ssl = ssl;
	SSL_set_connect_state(ssl);
	bool ok;
	if (call->url.host_is_ip) {
		/* no SNI for an IP literal (RFC 6066); the certificate must carry the IP */
		ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), call->url.host) == 1;
	} else {
		ok = SSL_set_tlsext_host_name(ssl, call->url.host) == 1 && SSL_set1_host(ssl, call->url.host) == 1;
	}
	if (!ok) {
		finish(call, HTTPS_ERR_NOMEM, "cannot set the TLS server name");
		return;
	}
	call->state = ST_HANDSHAKE;
}

/* Resolver answer in? False while it is pending. */
static bool resolve_step(struct https_call *call)
{
	struct dns_req *d = call->dns;
	if (!__atomic_load_n(&d->done, __ATOMIC_ACQUIRE)) {
		call->events = POLLIN;
		return false;
	}
	if (d->gai_err != 0) {
		finish(call, HTTPS_ERR_RESOLVE, "dial tcp: lookup %s: %s", call->url.host, gai_strerror(d->gai_err));
		return true;
	}
	call->addrs = d->result;
	d->result = NULL;
	call->dns = NULL;
	dns_unref(d);
	call->next_addr = call->addrs;
	call->state = ST_CONNECT;
	return true;
}

/* Connect to the next address; false while a connect is in flight. */
static bool connect_step(struct https_call *call, short *revents)
{
	if (call->fd >= 0) {
		if (!(*revents & (POLLOUT | POLLERR | POLLHUP)))
			return false;
		*revents = 0;
		int err = 0;
		socklen_t len = sizeof err;
		if (getsockopt(call->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
			err = errno;
		if (err == 0) {
			start_tls(call);
			return true;
		}
		call->connect_errno = err;
		close(call->fd);
		call->fd = -1;
		call->next_addr = call->next_addr->ai_next;
	}
	for (; call->next_addr; call->next_addr = call->next_addr->ai_next) {
		struct addrinfo *a = call->next_addr;
		int fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
		if (fd < 0) {
			call->connect_errno = errno;
			continue;
		}
		call->fd = fd;
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
			start_tls(call);
			return true;
		}
		if (errno == EINPROGRESS) {
			call->events = POLLOUT;
			return false;
		}
		call->connect_errno = errno;
		close(fd);
		call->fd = -1;
	}
	finish(call, HTTPS_ERR_CONNECT, "dial tcp %s: connect: %s", call->url.authority,
	       strerror(call->connect_errno ? call->connect_errno : EHOSTUNREACH));
	return true;
}

/* An SSL call that returned r <= 0: wait (true) for what it wants, or fail. */
static bool ssl_wait(struct https_call *call, int r)
{
	switch (SSL_get_error(call->ssl, r)) {
	case SSL_ERROR_WANT_READ:
		call->events = POLLIN;
		return true;
	case SSL_ERROR_WANT_WRITE:
		call->events = POLLOUT;
		return true;
	default:
		return false;
	}
}

static bool handshake_step(struct https_call *call)
{
	int r = SSL_do_handshake(call->ssl);
	if (r == 1) {
		call->state = ST_WRITE;
		return true;
	}
	if (ssl_wait(call, r))
		return false;
	long v = SSL_get_verify_result(call->ssl);
	if (v != X509_V_OK) {
		finish(call, HTTPS_ERR_VERIFY, "tls: failed to verify certificate: %s", X509_verify_cert_error_string(v));
	} else {
		const char *reason = ERR_reason_error_string(ERR_peek_last_error());
		finish(call, HTTPS_ERR_TLS, "tls: handshake failed: %s", reason ? reason : "connection closed");
	}
	return true;
}

static bool write_step(struct https_call *call)
{
	while (call->req_off < call->req_len) {
		size_t left = call->req_len - call->req_off;
		int r = SSL_write(call->ssl, call->req + call->req_off, (int)MIN(left, (size_t)INT32_MAX));
		if (r <= 0) {
			if (ssl_wait(call, r))
				return false;
			finish(call, HTTPS_ERR_IO, "write: %s", errno ? strerror(errno) : "connection closed");
			return true;
		}
		call->req_off += (size_t)r;
	}
	call->state = ST_READ;
	return true;
}

/* The stream ended (cleanly or not): the parser decides what that means. */
static void read_eof(struct https_call *call, const char *why)
{
	http_reply_eof(&call->reply);
	if (call->reply.state == HTTP_REPLY_DONE)
		finish(call, HTTPS_OK, "%s", "");
	else if (call->reply.err && why == NULL)
		finish(call, HTTPS_ERR_REPLY, "%s", call->reply.err);
	else
		finish(call, HTTPS_ERR_IO, "read: %s", why ? why : "connection closed");
}

static bool read_step(struct https_call *call)
{
	/* until the parser has what it needs or the socket is empty: SSL may hold
	 * decrypted bytes poll cannot see, so never stop while it could have more */
	for (;;) {
		int r = SSL_read(call->ssl, call->read_buf, sizeof call->read_buf);
		if (r > 0) {
			http_reply_feed(&call->reply, call->read_buf, (size_t)r);
			if (call->reply.state == HTTP_REPLY_DONE) {
				finish(call, HTTPS_OK, "%s", "");
				return true;
			}
			if (call->reply.state == HTTP_REPLY_ERROR) {
				finish(call, HTTPS_ERR_REPLY, "%s", call->reply.err);
				return true;
			}
			continue;
		}
		int e = SSL_get_error(call->ssl, r);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
			call->events = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
			return false;
		}
		if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && r == 0)) {
			/* close_notify, or a TCP close without one (many servers): end of stream */
			read_eof(call, NULL);
		} else if (e == SSL_ERROR_SYSCALL) {
			read_eof(call, strerror(errno ? errno : EIO));
		} else {
			const char *reason = ERR_reason_error_string(ERR_peek_last_error());
			read_eof(call, reason ? reason : "TLS error");
		}
		return true;
	}
}

/* ------------------------------------------------------------------ a call */

static size_t request_head_len(const struct https_request *req, char *cl, size_t cl_cap)
{
	snprintf(cl, cl_cap, "%zu", req->body.len);
	size_t n = strlen(req->method) + 1 + strlen(req->url->target) + sizeof " HTTP/1.1" CRLF - 1;
	n += sizeof "Host: " CRLF - 1 + strlen(req->url->authority);
	for (size_t i = 0; i < req->nheaders; i++)
		n += strlen(req->headers[i].name) + 2 + strlen(req->headers[i].value) + 2;
	n += sizeof "Content-Length: " CRLF - 1 + strlen(cl);
	n += sizeof "Connection: close" CRLF CRLF - 1;
	return n;
}

static char *put(char *p, const char *s)
{
	size_t n = strlen(s);
	memcpy(p, s, n);
	return p + n;
}

static void write_request(const struct https_request *req, const char *cl, uint8_t *out)
{
	char *p = (char *)out;
	p = put(p, req->method);
	p = put(p, " ");
	p = put(p, req->url->target);
	p = put(p, " HTTP/1.1" CRLF "Host: ");
	p = put(p, req->url->authority);
	p = put(p, CRLF);
	for (size_t i = 0; i < req->nheaders; i++) {
		/* a header value with a line break would smuggle a header or a request */
		ASSERT(strpbrk(req->headers[i].value, "\r\n") == NULL);
		p = put(p, req->headers[i].name);
		p = put(p, ": ");
		p = put(p, req->headers[i].value);
		p = put(p, CRLF);
	}
	p = put(p, "Content-Length: ");
	p = put(p, cl);
	p = put(p, CRLF "Connection: close" CRLF CRLF);
	if (req->body.len)
		memcpy(p, req->body.ptr, req->body.len);
}

/* Addresses: an IP literal without the resolver; a name on a lookup thread. */
static void start_resolve(struct https_call *call)
{
	char service[PORT_TEXT_BYTES];
	snprintf(service, sizeof service, "%u", call->url.port);
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_protocol = IPPROTO_TCP };
	if (call->url.host_is_ip) {
		hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
		int e = getaddrinfo(call->url.host, service, &hints, &call->addrs);
		if (e != 0) {
			finish(call, HTTPS_ERR_RESOLVE, "dial tcp: %s: %s", call->url.host, gai_strerror(e));
			return;
		}
		call->next_addr = call->addrs;
		call->state = ST_CONNECT;
		return;
	}
	struct dns_req *d = calloc(1, sizeof *d);
	if (d == NULL || (d->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
		free(d);
		finish(call, HTTPS_ERR_NOMEM, "no resources for a name lookup");
		return;
	}
	snprintf(d->name, sizeof d->name, "%s", call->url.host);
	snprintf(d->service, sizeof d->service, "%s", service);
	d->refs = 2;
	pthread_attr_t attr;
	pthread_t tid;
	bool started = pthread_attr_init(&attr) == 0;
	started = started && pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
		  pthread_create(&tid, &attr, dns_thread, d) == 0;
	pthread_attr_destroy(&attr);
	if (!started) {
		close(d->efd);
		free(d);
		finish(call, HTTPS_ERR_RESOLVE, "dial tcp: lookup %s: cannot start a resolver thread", call->url.host);
		return;
	}
	call->events = POLLIN;
	call->dns = d;
	call->state = ST_RESOLVE;
}

struct https_call *https_call_start(struct https_client *c, const struct https_request *req, uint64_t now_ms)
{
	ASSERT(req->nheaders <= HTTPS_HEADERS_MAX);
	char cl[24];
	size_t head = request_head_len(req, cl, sizeof cl);
	size_t req_len = head + req->body.len;
	struct https_call *call = malloc(sizeof *call + req_len + req->reply_body_max);
	if (call == NULL)
		return NULL;
	memset(call, 0, offsetof(struct https_call, reply));
	call->client = c;
	call->fd = -1;
	call->deadline_ms = now_ms + req->timeout_ms;
	call->url = *req->url;
	call->req = call->bytes;
	call->req_len = req_len;
	call->body_cap = req->reply_body_max;
	write_request(req, cl, call->req);
	http_reply_init(&call->reply, call->bytes + req_len, req->reply_body_max);
	start_resolve(call);
	/* go as far as the call can without waiting: it returns waiting on its fd, or
	 * already finished */
	https_call_step(call, 0, now_ms);
	return call;
}

int https_call_fd(const struct https_call *call)
{
	if (call->state == ST_DONE)
		return -1;
	return call->state == ST_RESOLVE ? call->dns->efd : call->fd;
}

short https_call_events(const struct https_call *call)
{
	return https_call_fd(call) < 0 ? 0 : call->events;
}

uint64_t https_call_deadline_ms(const struct https_call *call)
{
	return call->deadline_ms;
}

bool https_call_finished(const struct https_call *call)
{
	return call->state == ST_DONE;
}

bool https_call_step(struct https_call *call, short revents, uint64_t now_ms)
{
	for (int round = 0; round < STEP_ROUNDS_MAX && call->state != ST_DONE; round++) {
		if (now_ms >= call->deadline_ms) {
			finish(call, HTTPS_ERR_TIMEOUT, "Client.Timeout exceeded");
			break;
		}
		bool progressed = false;
		switch (call->state) {
		case ST_RESOLVE:
			progressed = resolve_step(call);
			break;
		case ST_CONNECT:
			progressed = connect_step(call, &revents);
			break;
		case ST_HANDSHAKE:
			progressed = handshake_step(call);
			break;
		case ST_WRITE:
			progressed = write_step(call);
			break;
		case ST_READ:
			progressed = read_step(call);
			break;
		case ST_DONE:
			break;
		}
		if (!progressed)
			return false;
	}
	ASSERT(call->state == ST_DONE);
	return true;
}

void https_call_cancel(struct https_call *call)
{
	if (call->state != ST_DONE)
		finish(call, HTTPS_ERR_CANCELLED, "context canceled");
}

const struct https_result *https_call_result(const struct https_call *call)
{
	ASSERT(call->state == ST_DONE);
	return &call->result;
}

void https_call_free(struct https_call *call)
{
	if (call == NULL)
		return;
	https_call_cancel(call);
	/* the request carried bearer tokens, assertions or device tokens; the body may be
	 * an access token */
	OPENSSL_cleanse(call->bytes, call->req_len + call->body_cap);
	free(call);
}

struct https_call *https_call_run(struct https_client *c, const struct https_request *req, int cancel_fd)
{
	struct https_call *call = https_call_start(c, req, monotonic_ms());
	/* ends by the call's deadline at the latest: every round waits at most until it */
	while (call != NULL && !https_call_finished(call)) {
		struct pollfd p[2] = {
			{ .fd = https_call_fd(call), .events = https_call_events(call) },
			{ .fd = cancel_fd, .events = POLLIN },
		};
		uint64_t now = monotonic_ms();
		uint64_t wait = call->deadline_ms > now ? call->deadline_ms - now : 0;
		if (poll(p, 2, (int)MIN(wait, (uint64_t)INT32_MAX)) < 0 && errno != EINTR)
			p[0].revents = 0;
		if (cancel_fd >= 0 && p[1].revents) {
			https_call_cancel(call);
			break;
		}
		https_call_step(call, p[0].revents, monotonic_ms());
	}
	return call;
}
