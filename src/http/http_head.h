/*
 * http_head.h - reading HTTP/1.1 request heads off a connection's input buffer, the
 * rules shared by every listener (the public one in engine/http_phase.c and the
 * metrics responder): when a head is complete, what a broken one is answered with,
 * when the connection closes after a request, how pipelined bytes are kept, and the
 * read deadlines (reference §5.1).
 *
 * Contract: pure functions over a caller-owned buffer; no I/O, no allocation.
 */
#ifndef PYRELAY_HTTP_HEAD_H
#define PYRELAY_HTTP_HEAD_H

#include "core/common.h"
#include "http/http_parse.h"
#include "http/http_respond.h"

#define HTTP_HEADER_READ_TIMEOUT_MS 5000u /* reference §5.1: a head must arrive within this */
#define HTTP_IDLE_TIMEOUT_MS 120000u      /* keep-alive: between requests */
#define HTTP_KEEPALIVE_REQUESTS_MAX 1000u /* then the connection closes after its answer */

enum http_head_status {
	HTTP_HEAD_INCOMPLETE = 0, /* wait for more bytes */
	HTTP_HEAD_REQUEST,        /* *req is a complete head */
	HTTP_HEAD_REFUSED,        /* answer *refusal, then close */
};

/* The head at the front of buf[0..len), for a buffer that never holds more than
 * cap_bytes (<= HTTP_HEAD_BYTES_MAX): a full buffer without a complete head is 431. */
enum http_head_status http_head_parse(const uint8_t *buf, size_t len, size_t cap_bytes, struct http_request *req,
				      enum http_canned *refusal);

/* Does the connection close after answering req? requests: answered on it so far,
 * req included. */
bool http_head_closes(const struct http_request *req, uint32_t requests, bool stopping);

/* Drop the answered head (head_bytes) from buf[0..len), keeping the pipelined bytes
 * after it at the front. Returns the new length. */
uint32_t http_head_consume(uint8_t *buf, uint32_t len, uint32_t head_bytes);

/* The read deadline while `pending` bytes of the next head are buffered: the header
 * timeout once a head has begun, the idle timeout before. */
uint64_t http_head_deadline_ms(uint64_t now_ms, uint32_t pending);

/* The autocert Host gate (reference §1.3): is the request's Host header, after an
 * optional ":port" is stripped as Go's net.SplitHostPort does ("[v6]:port" -> v6, one
 * colon -> what precedes it, otherwise the whole value), ASCII case-insensitively equal
 * to domain? A request without Host (Go's r.Host "") never matches. Pure. */
bool http_host_matches(const struct http_request *req, const char *domain);

#endif
