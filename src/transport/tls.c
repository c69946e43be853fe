/*
 * tls.c - TLS connections: BoringSSL over a span, no I/O (the server they share, its
 * context and callbacks: tls_server.c).
 *
 * BoringSSL talks to one BIO per connection whose read side is the span the current
 * tls_conn_input call was given and whose write side appends to the connection's
 * output buffer. BoringSSL reads records exactly (no read-ahead: a 5-byte header, then
 * the body it announces), so whatever it has not asked for stays in the caller's span
 * and the record boundary is known (tls_conn_rx_record_remaining), which the kernel
 * key handover needs (ktls.c). Contract in tls.h.
 */
#include "transport/tls_internal.h"

#include "core/stat.h"

#include <limits.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/mem.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define TLS_CONTENT_HANDSHAKE 0x16u

/* The output buffer: first allocation, and the hard ceiling. Writes stop at
 * TLS_OUT_BYTES_MAX; above it only BoringSSL's own messages may land (a handshake
 * flight, an alert, a ticket, a KeyUpdate), which this slack covers. */
#define OUT_BUF_MIN_BYTES 1024u
#define OUT_SLACK_BYTES (8u * 1024u)
#define OUT_HARD_BYTES_MAX (TLS_OUT_BYTES_MAX + TLS_CERT_CHAIN_BYTES_MAX + OUT_SLACK_BYTES)
_Static_assert(OUT_HARD_BYTES_MAX < UINT32_MAX / 2, "output offsets are 32-bit");

static const char *const error_names[TLS_ERR_COUNT] = {
	[TLS_ERR_NONE] = "none",
	[TLS_ERR_PLAINTEXT_HTTP] = "plaintext_http",
	[TLS_ERR_NOT_TLS] = "not_tls",
	[TLS_ERR_VERSION] = "no_shared_version",
	[TLS_ERR_CIPHER] = "no_shared_cipher",
	[TLS_ERR_ALPN] = "alpn",
	[TLS_ERR_SNI] = "sni",
	[TLS_ERR_PEER_ALERT] = "peer_alert",
	[TLS_ERR_RECORD_TOO_LARGE] = "record_too_large",
	[TLS_ERR_PROTOCOL] = "protocol",
	[TLS_ERR_TIMEOUT] = "timeout",
	[TLS_ERR_EOF] = "eof",
	[TLS_ERR_KEY_UPDATE] = "key_update",
	[TLS_ERR_INTERNAL] = "internal",
	[TLS_ERR_NO_CERT] = "no_certificate",
};

const char *tls_error_name(enum tls_error e)
{
	ASSERT((unsigned)e < TLS_ERR_COUNT);
	return error_names[e];
}

/* ------------------------------------------------------------------ first bytes */

enum tls_first_bytes tls_first_bytes_kind(const uint8_t *p, size_t n)
{
	/* net/http's tlsRecordHeaderLooksLikeHTTP: the reference answers these five. */
	static const char *const http[] = { "GET /", "HEAD ", "POST ", "PUT /", "OPTIO" };
	if (n == 0)
		return TLS_FIRST_NEED_MORE;
	if (p[0] == TLS_CONTENT_HANDSHAKE)
		return TLS_FIRST_TLS;
	size_t k = MIN(n, (size_t)TLS_RECORD_HEADER_BYTES);
	bool could_be_http = false;
	for (size_t i = 0; i < ARRAY_LEN(http); i++) {
		if (memcmp(p, http[i], k) == 0) {
			if (k == TLS_RECORD_HEADER_BYTES)
				return TLS_FIRST_HTTP;
			could_be_http = true;
		}
	}
	return could_be_http ? TLS_FIRST_NEED_MORE : TLS_FIRST_OTHER;
}

/* ------------------------------------------------------------------ failures */

static void conn_fail(struct tls_conn *c, enum tls_error why)
{
	ASSERT(why != TLS_ERR_NONE && why < TLS_ERR_COUNT);
	if (c->error != TLS_ERR_NONE)
		return;
	c->error = (uint8_t)why;
	if (c->established)
		STAT_INC(c->stats->failed_after_handshake[why]);
	else
		STAT_INC(c->stats->handshake_failed[why]);
}

/* Why BoringSSL failed, from the first error it queued. Callers clear the queue: it is
 * per thread, and a stale entry would be misread by the next connection. */
static enum tls_error classify(const struct tls_conn *c, uint32_t e)
{
	if (c->refusal != TLS_ERR_NONE)
		return (enum tls_error)c->refusal;
	if (e == 0)
		return TLS_ERR_INTERNAL; /* our BIO refused a write: output over its bound */
	if (ERR_GET_LIB(e) != ERR_LIB_SSL)
		return ERR_GET_LIB(e) == ERR_LIB_CIPHER || ERR_GET_LIB(e) == ERR_LIB_EC ? TLS_ERR_PROTOCOL
											  : TLS_ERR_INTERNAL;
	int r = ERR_GET_REASON(e);
	switch (r) {
	case SSL_R_UNSUPPORTED_PROTOCOL:
	case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
		return TLS_ERR_VERSION;
	case SSL_R_NO_SHARED_CIPHER:
	case SSL_R_NO_SHARED_GROUP:
	case SSL_R_NO_COMMON_SIGNATURE_ALGORITHMS:
		return TLS_ERR_CIPHER;
	case SSL_R_ENCRYPTED_LENGTH_TOO_LONG:
	case SSL_R_DATA_LENGTH_TOO_LONG:
	case SSL_R_RECORD_TOO_LARGE:
	case SSL_R_EXCESSIVE_MESSAGE_SIZE:
	case SSL_R_TLSV1_ALERT_RECORD_OVERFLOW:
		return TLS_ERR_RECORD_TOO_LARGE;
	case SSL_R_HTTP_REQUEST:
		return TLS_ERR_PLAINTEXT_HTTP;
	default:
		break;
	}
	/* BoringSSL reports a received alert as SSL_AD_REASON_OFFSET + its code. */
	if (r >= SSL_AD_REASON_OFFSET && r < SSL_AD_REASON_OFFSET + 256)
		return TLS_ERR_PEER_ALERT;
	return TLS_ERR_PROTOCOL;
}

/* Record a failed BoringSSL call (rc from it) and clear the thread's error queue. */
static void fail_from_ssl(struct tls_conn *c, int rc)
{
	int kind = SSL_get_error(c->ssl, rc);
	uint32_t e = kind == SSL_ERROR_SSL ? ERR_peek_error() : 0;
	conn_fail(c, classify(c, e));
	ERR_clear_error();
}

/* ------------------------------------------------------------------ the BIO */

static struct tls_conn *conn_of_bio(BIO *b)
{
	return BIO_get_data(b);
}

struct tls_conn *tls_conn_of_ssl(const SSL *ssl)
{
	return conn_of_bio(SSL_get_rbio(ssl));
}

/* Follow the record framing over bytes BoringSSL consumed (headers are in clear in
 * every TLS version), so the boundary is known without asking BoringSSL. */
static void track_records(struct tls_conn *c, const uint8_t *p, size_t n)
{
	while (n > 0) {
		if (c->rec_body_left > 0) {
			size_t t = MIN(n, (size_t)c->rec_body_left);
			c->rec_body_left -= (uint32_t)t;
			p += t;
			n -= t;
			continue;
		}
		size_t t = MIN(n, (size_t)(TLS_RECORD_HEADER_BYTES - c->rec_hdr_have));
		memcpy(c->rec_hdr + c->rec_hdr_have, p, t);
		c->rec_hdr_have += (uint8_t)t;
		p += t;
		n -= t;
		if (c->rec_hdr_have == TLS_RECORD_HEADER_BYTES) {
			c->rec_body_left = (uint32_t)c->rec_hdr[3] << 8 | c->rec_hdr[4];
			c->rec_hdr_have = 0;
		}
	}
}

static int bio_read(BIO *b, char *buf, int len)
{
	struct tls_conn *c = conn_of_bio(b);
	BIO_clear_retry_flags(b);
	size_t avail = c->in_len - c->in_off;
	if (avail == 0 || len <= 0) {
		BIO_set_retry_read(b);
		return -1;
	}
	size_t n = MIN(avail, (size_t)len);
	memcpy(buf, c->in + c->in_off, n);
	c->in_off += n;
	track_records(c, (const uint8_t *)buf, n);
	return (int)n;
}

static bool out_append(struct tls_conn *c, const uint8_t *p, size_t n)
{
	size_t pending = c->out_len - c->out_off;
	if (n > OUT_HARD_BYTES_MAX - pending)
		return false;
	if (c->out_len + n > c->out_cap && c->out_off > 0) {
		memmove(c->out, c->out + c->out_off, pending);
		c->out_len = (uint32_t)pending;
		c->out_off = 0;
	}
	if (c->out_len + n > c->out_cap) {
		size_t cap = MAX((size_t)c->out_cap, (size_t)OUT_BUF_MIN_BYTES);
		while (cap < c->out_len + n)
			cap *= 2;
		cap = MIN(cap, (size_t)OUT_HARD_BYTES_MAX);
		uint8_t *grown = realloc(c->out, cap);
		if (grown == NULL)
			return false;
		c->out = grown;
		c->out_cap = (uint32_t)cap;
	}
	memcpy(c->out + c->out_len, p, n);
	c->out_len += (uint32_t)n;
	return true;
}

static int bio_write(BIO *b, const char *buf, int len)
{
	BIO_clear_retry_flags(b);
	if (len <= 0)
		return 0;
	/* Never "retry": a refused write fails the connection (TLS_ERR_INTERNAL). */
	return out_append(conn_of_bio(b), (const uint8_t *)buf, (size_t)len) ? len : -1;
}

static long bio_ctrl(BIO *b, int cmd, long larg, void *parg)
{
	return cmd == BIO_CTRL_FLUSH ? 1 : 0; /* output is flushed by tls_conn_out_take */
}

static pthread_once_t bio_once = PTHREAD_ONCE_INIT;
static BIO_METHOD *bio_method; /* one per process, never freed */

static void bio_method_init(void)
{
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pyrelay-span");
	if (m == NULL || !BIO_meth_set_read(m, bio_read) || !BIO_meth_set_write(m, bio_write) ||
	    !BIO_meth_set_ctrl(m, bio_ctrl)) {
		BIO_meth_free(m);
		return;
	}
	bio_method = m;
}

bool tls_bio_ready(void)
{
	pthread_once(&bio_once, bio_method_init);
	return bio_method != NULL;
}

/* ------------------------------------------------------------------ connections */

struct tls_conn *tls_conn_new(struct tls_server *s, struct tls_stats *stats)
{
	struct tls_conn *c = calloc(1, sizeof *c);
	if (c == NULL)
		return NULL;
	c->srv = s;
	c->stats = stats;
	c->ssl = SSL_new(s->ctx);
	BIO *b = BIO_new(bio_method);
	if (c->ssl == NULL || b == NULL) {
		BIO_free(b);
		goto fail;
	}
	BIO_set_data(b, c);
	BIO_set_init(b, 1);
	SSL_set_bio(c->ssl, b, b); /* one BIO both ways: SSL takes its one reference */
	SSL_set_accept_state(c->ssl);
	/* Free the certificate references and other configuration once the handshake
	 * ends: an established connection never needs them again. */
	SSL_set_shed_handshake_config(c->ssl, 1);

	pthread_mutex_lock(&s->lock);
	c->cert = s->cert ? tls_cert_get(s->cert) : NULL;
	pthread_mutex_unlock(&s->lock);
	if (c->cert != NULL && !SSL_set_chain_and_key(c->ssl, c->cert->chain, c->cert->chain_len, c->cert->key, NULL))
		goto fail;
	return c;
fail:
	ERR_clear_error();
	tls_conn_free(c);
	return NULL;
}

void tls_conn_free(struct tls_conn *c)
{
	if (c == NULL)
		return;
	SSL_free(c->ssl);
	tls_cert_put(c->cert);
	free(c->out);
	free(c);
}

void tls_conn_set_stats(struct tls_conn *c, struct tls_stats *stats)
{
	c->stats = stats;
}

SSL *tls_conn_ssl(const struct tls_conn *c)
{
	return c->ssl;
}

bool tls_conn_rx_drained(const struct tls_conn *c)
{
	return c->drained;
}

void tls_conn_flush(struct tls_conn *c)
{
	if (!c->established || c->error != TLS_ERR_NONE || c->close_sent)
		return;
	/* A zero-byte write seals and emits what BoringSSL queued for "the next write"
	 * (TLS 1.3 tickets, a KeyUpdate answer) and nothing else. */
	int rc = SSL_write(c->ssl, NULL, 0);
	if (rc < 0)
		fail_from_ssl(c, rc);
	ERR_clear_error();
}

static void on_established(struct tls_conn *c)
{
	c->established = true;
	STAT_INC(c->stats->handshakes);
	if (SSL_session_reused(c->ssl))
		STAT_INC(c->stats->handshakes_resumed);
	if (SSL_version(c->ssl) == TLS1_3_VERSION)
		STAT_INC(c->stats->handshakes_tls13);
	else
		STAT_INC(c->stats->handshakes_tls12);
	tls_cert_put(c->cert);
	c->cert = NULL;
	/* Send the session tickets now, with the handshake's last flight, rather than
	 * at the first response: the write sequence then already counts them when
	 * the keys are handed to the kernel (ktls.c), and the client can resume even if
	 * the connection dies before we answer. */
	tls_conn_flush(c);
}

/* Decide on the first bytes; false when the connection failed or needs more. */
static bool check_first_bytes(struct tls_conn *c, const uint8_t *in, size_t in_len, size_t *in_used)
{
	if (c->first_have == 0 && in_len > 0 && in[0] == TLS_CONTENT_HANDSHAKE) {
		c->first_checked = true;
		return true;
	}
	/* Not a handshake record: whatever it is, the connection fails, so these bytes
	 * are kept only long enough to tell HTTP from the rest, never replayed. */
	size_t t = MIN(in_len, (size_t)(TLS_RECORD_HEADER_BYTES - c->first_have));
	memcpy(c->first + c->first_have, in, t);
	c->first_have += (uint8_t)t;
	*in_used = in_len;
	switch (tls_first_bytes_kind(c->first, c->first_have)) {
	case TLS_FIRST_NEED_MORE:
		ASSERT(t == in_len);
		return false;
	case TLS_FIRST_HTTP:
		conn_fail(c, TLS_ERR_PLAINTEXT_HTTP);
		return false;
	default:
		conn_fail(c, TLS_ERR_NOT_TLS);
		return false;
	}
}

enum tls_status tls_conn_input(struct tls_conn *c, const uint8_t *in, size_t in_len, size_t *in_used,
			       uint8_t *out, size_t out_cap, size_t *out_len)
{
	ASSERT(out_cap > 0);
	*in_used = 0;
	*out_len = 0;
	c->drained = false;
	if (c->error != TLS_ERR_NONE || c->peer_closed) {
		*in_used = in_len;
		return c->error != TLS_ERR_NONE ? TLS_FAILED : TLS_PEER_CLOSED;
	}
	if (!c->first_checked) {
		if (in_len == 0) {
			c->drained = true;
			return TLS_WANT_INPUT;
		}
		if (!check_first_bytes(c, in, in_len, in_used)) {
			c->drained = c->error == TLS_ERR_NONE;
			return c->error != TLS_ERR_NONE ? TLS_FAILED : TLS_WANT_INPUT;
		}
	}

	c->in = in;
	c->in_len = in_len;
	c->in_off = 0;
	enum tls_status st = TLS_AGAIN;
	if (!c->established) {
		int rc = SSL_do_handshake(c->ssl);
		int kind = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, rc);
		if (rc == 1) {
			on_established(c);
		} else if (kind == SSL_ERROR_WANT_READ) {
			ERR_clear_error();
			st = TLS_WANT_INPUT;
		} else if (kind == SSL_ERROR_WANT_X509_LOOKUP && c->in_off == c->in_len) {
			/* paused for the certificate (cert_select) with the hello consumed */
			ERR_clear_error();
			st = TLS_WAIT_CERT;
		} else if (kind == SSL_ERROR_WANT_X509_LOOKUP) {
			/* more than a hello while waiting: a client has no business sending it */
			ERR_clear_error();
			tls_conn_fail(c, TLS_ERR_PROTOCOL);
			st = TLS_FAILED;
		} else {
			fail_from_ssl(c, rc);
			st = TLS_FAILED;
		}
	}
	while (st == TLS_AGAIN && c->error == TLS_ERR_NONE && *out_len < out_cap) {
		int rc = SSL_read(c->ssl, out + *out_len, (int)MIN(out_cap - *out_len, (size_t)INT_MAX));
		if (rc > 0) {
			*out_len += (size_t)rc;
			continue;
		}
		int kind = SSL_get_error(c->ssl, rc);
		if (kind == SSL_ERROR_WANT_READ) {
			ERR_clear_error();
			st = TLS_WANT_INPUT;
		} else if (kind == SSL_ERROR_ZERO_RETURN) {
			ERR_clear_error();
			c->peer_closed = true;
			st = TLS_PEER_CLOSED;
		} else {
			fail_from_ssl(c, rc);
		}
	}
	if (c->error != TLS_ERR_NONE)
		st = TLS_FAILED;
	if (st == TLS_WANT_INPUT) {
		/* A memory BIO is never "would block": BoringSSL asked for more than there is. */
		ASSERT(c->in_off == c->in_len);
		c->drained = true;
	}
	if (st == TLS_FAILED || st == TLS_PEER_CLOSED)
		c->in_off = c->in_len; /* the rest of the input is discarded */
	*in_used = c->in_off;
	c->in = NULL;
	c->in_len = c->in_off = 0;
	if (st != TLS_FAILED)
		tls_conn_flush(c); /* a KeyUpdate we must answer, read just now */
	return st;
}

bool tls_conn_waiting_cert(const struct tls_conn *c)
{
	return c->cert_wait && !c->established && c->error == TLS_ERR_NONE;
}

bool tls_conn_established(const struct tls_conn *c)
{
	return c->established && c->error == TLS_ERR_NONE;
}

struct tls_conn_info tls_conn_info(const struct tls_conn *c)
{
	struct tls_conn_info info = { 0 };
	if (!c->established)
		return info;
	info.version = (uint16_t)SSL_version(c->ssl);
	const SSL_CIPHER *cipher = SSL_get_current_cipher(c->ssl);
	info.cipher_id = cipher ? SSL_CIPHER_get_protocol_id(cipher) : 0;
	info.resumed = SSL_session_reused(c->ssl) == 1;
	const uint8_t *alpn = NULL;
	unsigned alpn_len = 0;
	SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
	info.alpn_http11 = alpn_len == sizeof ALPN_HTTP11 - 1 && memcmp(alpn, ALPN_HTTP11, alpn_len) == 0;
	return info;
}

size_t tls_conn_write(struct tls_conn *c, const struct iovec *iov, size_t iovcnt)
{
	if (c->error != TLS_ERR_NONE || c->close_sent)
		return 0;
	ASSERT(c->established);
	uint8_t stage[TLS_RECORD_PLAINTEXT_BYTES_MAX];
	size_t overhead = SSL_max_seal_overhead(c->ssl);
	size_t accepted = 0, i = 0, off = 0;
	for (;;) {
		size_t pending = c->out_len - c->out_off;
		if (pending + overhead >= TLS_OUT_BYTES_MAX)
			break;
		size_t room = MIN(TLS_OUT_BYTES_MAX - pending - overhead, sizeof stage);
		/* Gather small pieces into one record: a record per frame would cost a
		 * header, a tag and an AEAD call each. */
		size_t n = 0;
		while (n < room && i < iovcnt) {
			size_t t = MIN(room - n, iov[i].iov_len - off);
			if (t > 0)
				memcpy(stage + n, (const uint8_t *)iov[i].iov_base + off, t);
			n += t;
			off += t;
			if (off == iov[i].iov_len) {
				i++;
				off = 0;
			}
		}
		if (n == 0)
			break;
		int rc = SSL_write(c->ssl, stage, (int)n);
		if (rc != (int)n) {
			fail_from_ssl(c, rc);
			break;
		}
		accepted += n;
	}
	return accepted;
}

size_t tls_conn_out_pending(const struct tls_conn *c)
{
	return c->out_len - c->out_off;
}

size_t tls_conn_out_take(struct tls_conn *c, uint8_t *dst, size_t cap)
{
	size_t n = MIN(cap, (size_t)(c->out_len - c->out_off));
	if (n > 0)
		memcpy(dst, c->out + c->out_off, n);
	c->out_off += (uint32_t)n;
	if (c->out_off == c->out_len) {
		/* Drained: an idle connection keeps no output buffer. */
		free(c->out);
		c->out = NULL;
		c->out_off = c->out_len = c->out_cap = 0;
	}
	return n;
}

void tls_conn_close_notify(struct tls_conn *c)
{
	if (c->close_sent || c->error != TLS_ERR_NONE)
		return;
	c->close_sent = true;
	if (!c->established)
		return; /* nothing to protect yet: the owner just closes */
	SSL_shutdown(c->ssl); /* queues the alert; 0 means "the peer's is not here yet" */
	ERR_clear_error();
}

void tls_conn_fail(struct tls_conn *c, enum tls_error why)
{
	conn_fail(c, why);
}

enum tls_error tls_conn_error(const struct tls_conn *c)
{
	return (enum tls_error)c->error;
}

size_t tls_conn_rx_record_remaining(const struct tls_conn *c)
{
	if (c->rec_body_left > 0)
		return c->rec_body_left;
	return c->rec_hdr_have > 0 ? TLS_RECORD_HEADER_BYTES - c->rec_hdr_have : 0;
}
