/*
 * fuzz_http_reply.c - libFuzzer target for what the outbound client reads from the
 * network: the HTTP response parser (control/http_reply.c) and, behind it, the readers
 * of the replies' bodies (control/fcm.c: FCM send replies, OAuth token replies).
 *
 * Input: byte 0 picks the target (value % 3) and, in its upper bits, a piece size; the
 * rest is the bytes read.
 *   0 a whole exchange: parse the rest as a response, fed in pieces, then EOF; classify
 *     the kept body with the parsed status as an FCM reply (as push.c does);
 *   1 an FCM reply body: bytes 1-2 are the status, the rest the body;
 *   2 an OAuth token reply body.
 *
 * Oracles:
 * - the parser never keeps more than its cap, never uses more bytes than given, uses
 *   nothing once finished, ends (DONE or ERROR) at EOF, has an err exactly on ERROR and
 *   a status of 100..999 when DONE; and the result does not depend on how the input
 *   was cut into pieces (whole vs. pieces of the chosen size);
 * - the classifier: sent exactly for 2xx; a message id only when sent, of 1..256 bytes
 *   of [A-Za-z0-9/:%_-]; an err exactly when not sent, starting "fcm send failed:
 *   status N" and holding only printable ASCII; unregistered only with UNREGISTERED in
 *   the err; the same answer twice (pure);
 * - the token reader: on success a non-empty token of printable ASCII without space;
 *   on failure an empty one and a lifetime of 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control/fcm.h"
#include "control/http_reply.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) \
	do { \
		if (!(x)) \
			__builtin_trap(); \
	} while (0)

#define FZ_TARGETS 3u
#define FZ_BODY_CAP FCM_REPLY_BYTES_MAX

static struct http_reply whole_r, piece_r; /* 16 KiB each */
static uint8_t whole_body[FZ_BODY_CAP], piece_body[FZ_BODY_CAP];

static void feed_all(struct http_reply *r, const uint8_t *p, size_t n, size_t piece)
{
	size_t off = 0;
	while (off < n) {
		size_t k = piece ? (n - off < piece ? n - off : piece) : n - off;
		bool live = r->state == HTTP_REPLY_HEAD || r->state == HTTP_REPLY_BODY;
		size_t used = http_reply_feed(r, p + off, k);
		CHECK(used <= k);
		CHECK(r->body_len <= r->body_cap);
		if (!live)
			CHECK(used == 0);
		if (used < k) {
			CHECK(r->state == HTTP_REPLY_DONE || r->state == HTTP_REPLY_ERROR);
			return;
		}
		off += k;
	}
}

static void check_classified(int status, struct span body)
{
	struct fcm_send_result a, b;
	fcm_classify_send_reply(status, body, &a);
	fcm_classify_send_reply(status, body, &b);
	CHECK(memcmp(&a, &b, sizeof a) == 0);
	bool ok2xx = status >= 200 && status <= 299;
	CHECK((a.outcome == FCM_OUTCOME_SENT) == ok2xx);
	CHECK(a.outcome == FCM_OUTCOME_SENT || a.outcome == FCM_OUTCOME_UNREGISTERED ||
	      a.outcome == FCM_OUTCOME_SEND_FAILED);
	size_t idn = strnlen(a.message_id, sizeof a.message_id);
	CHECK(idn < sizeof a.message_id);
	CHECK(ok2xx || idn == 0);
	for (size_t i = 0; i < idn; i++)
		CHECK(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/:%_-", a.message_id[i]));
	size_t en = strnlen(a.err, sizeof a.err);
	CHECK(en < sizeof a.err);
	CHECK(ok2xx == (en == 0));
	if (!ok2xx) {
		char head[48];
		snprintf(head, sizeof head, "fcm send failed: status %d", status);
		CHECK(strncmp(a.err, head, strlen(head)) == 0);
		for (size_t i = 0; i < en; i++)
			CHECK(a.err[i] >= 0x20 && a.err[i] < 0x7f);
		CHECK(a.outcome != FCM_OUTCOME_UNREGISTERED || strstr(a.err, "UNREGISTERED"));
	}
}

static void fuzz_exchange(const uint8_t *p, size_t n, size_t piece)
{
	http_reply_init(&whole_r, whole_body, FZ_BODY_CAP);
	http_reply_init(&piece_r, piece_body, FZ_BODY_CAP);
	feed_all(&whole_r, p, n, 0);
	feed_all(&piece_r, p, n, piece);
	http_reply_eof(&whole_r);
	http_reply_eof(&piece_r);
	CHECK(whole_r.state == HTTP_REPLY_DONE || whole_r.state == HTTP_REPLY_ERROR);
	CHECK(whole_r.state == piece_r.state);
	CHECK((whole_r.state == HTTP_REPLY_ERROR) == (whole_r.err != NULL));
	if (whole_r.state == HTTP_REPLY_ERROR) {
		CHECK(strcmp(whole_r.err, piece_r.err) == 0);
		return;
	}
	CHECK(whole_r.status >= 100 && whole_r.status <= 999);
	CHECK(whole_r.status == piece_r.status);
	CHECK(whole_r.body_len == piece_r.body_len);
	CHECK(memcmp(whole_body, piece_body, whole_r.body_len) == 0);
	check_classified(whole_r.status, span_make(whole_body, whole_r.body_len));
}

static void fuzz_token(const uint8_t *p, size_t n)
{
	static char tok[FCM_ACCESS_TOKEN_BYTES_MAX];
	int64_t exp = -1;
	bool ok = fcm_parse_token_reply(span_make(p, n), tok, sizeof tok, &exp);
	size_t tn = strnlen(tok, sizeof tok);
	CHECK(tn < sizeof tok);
	CHECK(ok == (tn > 0));
	for (size_t i = 0; i < tn; i++)
		CHECK(tok[i] > 0x20 && tok[i] < 0x7f);
	CHECK(ok || exp == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t sel = data[0];
	const uint8_t *p = data + 1;
	size_t n = size - 1;
	switch (sel % FZ_TARGETS) {
	case 0:
		fuzz_exchange(p, n, (size_t)(sel / FZ_TARGETS) + 1);
		break;
	case 1:
		if (n >= 2)
			check_classified(100 + (int)((p[0] << 8 | p[1]) % 900), span_make(p + 2, n - 2));
		break;
	default:
		fuzz_token(p, n);
		break;
	}
	return 0;
}
