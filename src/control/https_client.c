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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

struct dns_req {
	struct gaicb cb;
	struct addrinfo hints;
	char name[URL_HOST_BYTES];
	char service[PORT_TEXT_BYTES];
	struct dns_req *next; /* in the client's orphan list */
};

struct https_client {
	SSL_CTX *ctx;
	/* resolver requests whose call ended before glibc finished them: they must stay
	 * allocated until it does */
	struct dns_req *orphans;
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

static void dns_free(struct dns_req *d)
{
	if (d->cb.ar_result)
		freeaddrinfo(d->cb.ar_result);
	free(d);
}

/* Free the orphans glibc is done with. */
static void reap_orphans(struct https_client *c)
{
	struct dns_req **pp = &c->orphans;
	while (*pp) {
		struct dns_req *d = *pp;
		if (gai_error(&d->cb) == EAI_INPROGRESS) {
			pp = &d->next;
			continue;
		}
		*pp = d->next;
		dns_free(d);
	}
}

void https_client_destroy(struct https_client *c)
{
	if (c == NULL)
		return;
	uint64_t until = monotonic_ms() + HTTPS_DNS_ORPHAN_WAIT_MS;
	reap_orphans(c);
	while (c->orphans && monotonic_ms() < until) {
		struct timespec slice = { .tv_nsec = (long)HTTPS_DNS_POLL_MS * 1000000L };
		const struct gaicb *list[1] = { &c->orphans->cb };
		gai_suspend(list, 1, &slice);
		reap_orphans(c);
	}
	/* a resolver still stuck past the wait keeps its request: freeing it under glibc
	 * would be worse than the leak at exit */
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
		/* still resolving: cancel, or leave the request to glibc until it is done */
		struct dns_req *d = call->dns;
		call->dns = NULL;
		if (gai_cancel(&d->cb) == EAI_NOTCANCELED) {
			d->next = call->client->orphans;
			call->client->orphans = d;
		} else {
			dns_free(d);
		}
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
	int e = gai_error(&d->cb);
	if (e == EAI_INPROGRESS)
		return false;
	if (e != 0) {
		finish(call, HTTPS_ERR_RESOLVE, "dial tcp: lookup %s: %s", call->url.host, gai_strerror(e));
		return true;
	}
	call->addrs = d->cb.ar_result;
	d->cb.ar_result = NULL;
	call->dns = NULL;
	dns_free(d);
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

/* Addresses: an IP literal without the resolver; a name through getaddrinfo_a. */
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
	if (d == NULL) {
		finish(call, HTTPS_ERR_NOMEM, "out of memory for a name lookup");
		return;
	}
	snprintf(d->name, sizeof d->name, "%s", call->url.host);
	snprintf(d->service, sizeof d->service, "%s", service);
	d->hints = hints;
	d->hints.ai_flags = AI_ADDRCONFIG | AI_NUMERICSERV;
	d->cb = (struct gaicb){ .ar_name = d->name, .ar_service = d->service, .ar_request = &d->hints };
	struct gaicb *list[1] = { &d->cb };
	int e = getaddrinfo_a(GAI_NOWAIT, list, 1, NULL);
	if (e != 0) {
		free(d);
		finish(call, HTTPS_ERR_RESOLVE, "dial tcp: lookup %s: %s", call->url.host, gai_strerror(e));
		return;
	}
	call->dns = d;
	call->state = ST_RESOLVE;
}

struct https_call *https_call_start(struct https_client *c, const struct https_request *req, uint64_t now_ms)
{
	ASSERT(req->nheaders <= HTTPS_HEADERS_MAX);
	reap_orphans(c);
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
	return call;
}

int https_call_fd(const struct https_call *call)
{
	return call->state == ST_RESOLVE || call->state == ST_DONE ? -1 : call->fd;
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
		if (p[0].fd < 0)
			wait = MIN(wait, (uint64_t)HTTPS_DNS_POLL_MS);
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
