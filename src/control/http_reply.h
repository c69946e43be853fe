/*
 * http_reply.h - an incremental parser for one HTTP/1.x response, as the outbound
 * client (https_client.h) reads it: bytes in, in pieces of any size; the status and
 * at most `body_cap` bytes of the body out.
 *
 * The rules are Go's net/http client's where they matter to a caller that reads a
 * bounded prefix of the body and ignores read errors after the head (the Go relay's
 * io.ReadAll(io.LimitReader(resp.Body, 4096)) with the error dropped):
 * - Status line "HTTP/1.0 NNN ..." or "HTTP/1.1 NNN ...", NNN three digits, 100..999.
 *   Header lines end in CRLF or a bare LF; a line starting with space or tab
 *   (obsolete folding), a line without ':' or with an empty or non-token name is
 *   malformed.
 * - 1xx responses other than 101 are skipped (at most HTTP_REPLY_1XX_MAX of them, as
 *   Go); the next head is the response. 101, 204 and 304 have no body.
 * - Framing: Transfer-Encoding must be exactly "chunked" when present (anything else
 *   is malformed, as Go's "unsupported transfer encoding") and then Content-Length is
 *   ignored; otherwise Content-Length (decimal digits; repeated values must agree);
 *   otherwise the body runs until the peer closes.
 * - The head (status line, header lines, the blank line, and any skipped 1xx heads) is
 *   at most HTTP_REPLY_HEAD_BYTES_MAX bytes; more is an error. (Go allows 1 MB; FCM's
 *   and Google OAuth's heads are about 1 KiB.)
 * - After the head nothing is an error: the body ends when its framing says so, when
 *   `body_cap` bytes were kept (the caller reads no more), when the peer closes early,
 *   or at a malformed chunk (Go's reader returns the bytes so far and an error the
 *   caller drops). Trailers after the last chunk are read and ignored (bounded by the
 *   head limit).
 * Contract: pure (no I/O, no allocation, no globals); the body buffer is the caller's.
 * Errors are fixed texts that never contain reply bytes.
 */
#ifndef PYRELAY_HTTP_REPLY_H
#define PYRELAY_HTTP_REPLY_H

#include "core/common.h"

#define HTTP_REPLY_HEAD_BYTES_MAX (16u * 1024u)
#define HTTP_REPLY_1XX_MAX 5u
/* A chunk-size line ("1f4;ext=v"); Go allows 4 KiB. */
#define HTTP_REPLY_CHUNK_LINE_BYTES_MAX 4096u

/* Response headers kept for ACME (RFC 8555 §6.5, §7.3, §7.4, §8.2): the value of the
 * last occurrence of each in the final head, when it fits (with its NUL) and holds only
 * printable ASCII; otherwise "" (a value that does not fit is never cut: a cut URL or
 * nonce would be wrong, an empty one is absent). */
#define HTTP_REPLY_LOCATION_BYTES 2048u /* = URL_TARGET_BYTES: what the client can call */
#define HTTP_REPLY_NONCE_BYTES 256u     /* base64url nonces are ~ 22-64 bytes */
#define HTTP_REPLY_RETRY_AFTER_BYTES 64u /* delta-seconds or an HTTP-date */

enum http_reply_state {
	HTTP_REPLY_HEAD = 0, /* reading the status line and headers */
	HTTP_REPLY_BODY,     /* reading the body */
	HTTP_REPLY_DONE,     /* status and body (prefix) final: stop reading */
	HTTP_REPLY_ERROR,    /* the head was malformed, too large, or cut short: see err */
};

enum http_reply_framing { HTTP_REPLY_NO_BODY, HTTP_REPLY_LENGTH, HTTP_REPLY_CHUNKED, HTTP_REPLY_UNTIL_CLOSE };

enum http_reply_chunk { CHUNK_SIZE, CHUNK_DATA, CHUNK_DATA_END, CHUNK_TRAILER };

struct http_reply {
	/* results */
	enum http_reply_state state;
	int status;        /* set once the final head is complete */
	const char *err;   /* HTTP_REPLY_ERROR: why (fixed text) */
	uint8_t *body;     /* the caller's buffer */
	size_t body_cap;
	size_t body_len;   /* bytes kept, <= body_cap */
	bool body_capped;  /* stopped because body_cap bytes were kept */
	bool body_cut;     /* the body ended early (peer closed, malformed chunk) */
	char location[HTTP_REPLY_LOCATION_BYTES];       /* "Location", or "" */
	char replay_nonce[HTTP_REPLY_NONCE_BYTES];      /* "Replay-Nonce", or "" */
	char retry_after[HTTP_REPLY_RETRY_AFTER_BYTES]; /* "Retry-After", or "" */

	/* parser state */
	enum http_reply_framing framing;
	enum http_reply_chunk chunk;
	uint64_t remaining;  /* LENGTH: body bytes left; CHUNKED data: chunk bytes left */
	uint64_t content_length;
	bool have_length;
	bool chunked;
	bool status_seen;    /* the current head's status line was read */
	uint32_t informational; /* 1xx heads skipped */
	size_t head_bytes;   /* of every head so far, and trailers */
	size_t line_len;
	uint8_t line[HTTP_REPLY_HEAD_BYTES_MAX];
};

/* Start a parse keeping at most body_cap body bytes in body (body_cap may be 0). */
void http_reply_init(struct http_reply *r, uint8_t *body, size_t body_cap);

/* Consume bytes from p[0..n). Returns how many were used: all of them unless the
 * state became DONE or ERROR, after which nothing more is used. */
size_t http_reply_feed(struct http_reply *r, const uint8_t *p, size_t n);

/* The peer closed the stream: ends a body read until close (DONE), cuts short a
 * framed one (DONE, body_cut), and is an error while the head is incomplete. */
void http_reply_eof(struct http_reply *r);

#endif
