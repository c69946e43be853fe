/*
 * proxy_phase.c - the PROXY protocol v2 phase (reference §1.4): with
 * --https-proxy-protocol every connection accepted on the TLS listener must begin with
 * a PROXY v2 header (http/proxy_v2.h) before its TLS ClientHello. The header's source
 * becomes the connection's peer address (c->remote: the rate limiter's key, the per-IP
 * cap, `remote` in logs, and what a handoff carries); the bytes after it go to TLS.
 *
 * The header is read on the ring like any other input (the accept never waits), within
 * PROXY_HEADER_TIMEOUT_MS of the accept. A connection whose bytes cannot be an accepted
 * header is refused at the first byte that says so; refused, late or abandoned, it is
 * closed with zero bytes written (no TLS alert, no HTTP answer: nothing was queued,
 * and the TLS state does not exist until the header is accepted). Counted by reason in
 * worker_stats.proxy_rejects, never logged (reference §9: failures before a request
 * are not logged, so they cannot flood the log).
 *
 * On a worker whose kernel has kTLS the phase receives one buffer at a time
 * (conn_arm_recv), as the TLS connection it becomes must (ktls_phase.c): a multishot
 * receive still armed when the keys move to the kernel would read past them.
 *
 * A header split over receives is kept in the connection's head buffer (c->http_buf,
 * unused until the HTTP phase), taking only the bytes the header still needs, so the
 * buffer never holds a byte that belongs to TLS. It is at most PROXY_V2_HEADER_BYTES_MAX.
 */
#include "engine/internal.h"

#include <string.h>
#include <sys/socket.h>

#include "http/proxy_v2.h"

/* The header's source as the socket would have reported it: an IPv4-mapped IPv6
 * source is a.b.c.d, as Go prints it (and as read_peer does for the socket). */
static struct peer_addr peer_of(const struct proxy_v2_result *r)
{
	struct peer_addr a = { .port = r->src_port };
	static const uint8_t v4_mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF };
	if (r->src_family == PROXY_V2_INET) {
		a.family = AF_INET;
		memcpy(a.bytes, r->src_addr, 4);
	} else if (memcmp(r->src_addr, v4_mapped, sizeof v4_mapped) == 0) {
		a.family = AF_INET;
		memcpy(a.bytes, r->src_addr + 12, 4);
	} else {
		a.family = AF_INET6;
		memcpy(a.bytes, r->src_addr, 16);
	}
	return a;
}

/* Closed unserved: nothing was queued, so nothing is written. */
static void refuse(struct worker *w, struct conn *c, unsigned why)
{
	ASSERT(why > 0 && why < PROXY_REJECT_COUNT);
	ASSERT(outq_empty(&c->out) && c->tls == NULL);
	STAT_INC(w->stats.proxy_rejects[why]);
	c->proxy_pending = false;
	conn_kill(w, c);
}

/* Keep n more header bytes in the head buffer. */
static bool keep(struct worker *w, struct conn *c, const uint8_t *p, size_t n, size_t header_bytes)
{
	ASSERT(c->http_len + n <= header_bytes && header_bytes <= PROXY_V2_HEADER_BYTES_MAX);
	if (c->http_len + n > c->http_cap &&
	    !conn_pool_regrow(w, &c->http_buf, &c->http_cap, c->http_len, header_bytes))
		return false;
	memcpy(c->http_buf + c->http_len, p, n);
	c->http_len += (uint32_t)n;
	return true;
}

bool proxy_phase_input(struct worker *w, struct conn *c, uint8_t **pp, size_t *np)
{
	ASSERT(c->proxy_pending);
	if (c->state != CONN_HTTP)
		return false; /* draining (shutdown): input is discarded */
	uint8_t *p = *pp;
	size_t n = *np;
	struct proxy_v2_result r;
	if (c->http_len == 0) {
		/* the usual case: the whole header in one receive, read where it lies */
		r = proxy_v2_parse(p, n);
		if (r.status == PROXY_V2_OK) {
			p += r.header_bytes;
			n -= r.header_bytes;
		}
	} else {
		r.status = PROXY_V2_NEED_MORE;
	}
	/* A header begun in an earlier receive, or begun in this one and not finished:
	 * bounded, each pass keeps at least one byte (NEED_MORE asks for more than the
	 * buffer holds) and the header is at most PROXY_V2_HEADER_BYTES_MAX. */
	while (r.status == PROXY_V2_NEED_MORE) {
		r = proxy_v2_parse(c->http_buf, c->http_len);
		if (r.status != PROXY_V2_NEED_MORE || n == 0)
			break;
		size_t take = MIN(n, r.header_bytes - c->http_len);
		if (!keep(w, c, p, take, r.header_bytes)) {
			conn_note_end(c, CONN_END_NO_MEMORY);
			c->proxy_pending = false;
			conn_kill(w, c);
			return false;
		}
		p += take;
		n -= take;
	}
	if (r.status == PROXY_V2_INVALID) {
		refuse(w, c, r.reason); /* enum proxy_reject shares the parser's values */
		return false;
	}
	if (r.status == PROXY_V2_NEED_MORE)
		return false; /* wait for the rest, until the deadline set at accept */

	/* Accepted: the client is the header's source; TLS begins with the next byte,
	 * within what is left of the accept's deadline (as Go's handshake timeout, which
	 * starts before its first read, the one that reads the header). */
	c->remote = peer_of(&r);
	c->proxy_pending = false;
	conn_put_http_buf(w, c);
	if (!conn_tls_begin(w, c)) {
		conn_note_end(c, CONN_END_NO_MEMORY);
		conn_kill(w, c);
		return false;
	}
	*pp = p;
	*np = n;
	return n > 0;
}

void proxy_phase_abandoned(struct worker *w, struct conn *c)
{
	ASSERT(c->proxy_pending);
	c->proxy_pending = false;
	if (c->state != CONN_HTTP)
		return; /* drained by a shutdown: not the client's doing */
	if (c->end_cause == CONN_END_READ_TIMEOUT)
		STAT_INC(w->stats.proxy_rejects[PROXY_REJECT_TIMEOUT]);
	else if (c->end_cause == CONN_END_EOF || c->end_cause == CONN_END_IO_ERROR)
		STAT_INC(w->stats.proxy_rejects[PROXY_REJECT_EOF]);
}
