/*
 * ktls_phase.c - a TLS connection's records move into the kernel (kTLS) after its
 * handshake, when the kernel can take them (ADR 12, transport/ktls.h).
 *
 * The handshake runs in user space (transport/tls.h). A connection of a worker whose
 * kernel has kTLS (worker.ktls_available) is "undecided" until its keys are installed
 * or refused, and while undecided it receives one buffer at a time (no multishot): the
 * keys can only be installed when no receive is in flight and BoringSSL holds no part
 * of a record, or bytes the kernel will never see would be lost. So:
 *
 *   1. tls_input (conn.c) consumes everything received, the handshake completes, and
 *      the plaintext that came with it goes to the phases; then ktls_phase_try.
 *   2. Ciphertext of user space's still waiting or in flight (a TLS 1.2 server
 *      Finished, TLS 1.3 session tickets): ktls_wait_tx, no receive, the outbox's
 *      plaintext is held (send.c does not encrypt it); the send's completion tries
 *      again (ktls_phase_tx_done).
 *   3. A record begun in user space: receive exactly the rest of it (the receive's
 *      length is tls_conn_rx_record_remaining), decrypt it there, and try again.
 *   4. ktls_export, ktls_install: from then on the socket carries plaintext both ways,
 *      the BoringSSL state is freed, receives are multishot recvmsg with a control
 *      buffer (the record type), sends are plain sends (never send_zc).
 *   Refusals (unsupported cipher, the kernel refusing TCP_ULP or TLS_TX) leave the
 *   connection in user space, counted by reason; TLS_TX accepted and TLS_RX refused
 *   leaves it unusable (user space can no longer write), so it is closed and counted.
 *
 * A connection handed to another worker before its decision (ADR 9) is decided there:
 * the owner calls ktls_phase_try when it adopts it (handoff.c).
 *
 * After installation a record that is not application data: a TLS 1.3 KeyUpdate is
 * followed where the kernel can take new keys (6.14+: the next receive key, and with
 * update_requested our KeyUpdate and the next send key; the traffic secrets are kept
 * per connection outside its slot, in worker.ktls_sec), and ends the connection where
 * it cannot (TLS_ERR_KEY_UPDATE); the peer's close_notify is an EOF, any other alert
 * or handshake message an error.
 */
#include "engine/internal.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "transport/ktls.h"

static void count_path(struct worker *w, struct conn *c, enum tls_path path)
{
	c->ktls_undecided = false;
	c->ktls_wait_tx = false;
	if (!c->counted_tls_path) {
		c->counted_tls_path = true;
		STAT_INC(w->stats.tls_paths[path]);
	}
}

/* The decision is made: receive and send again as the path says. */
static void resume(struct worker *w, struct conn *c)
{
	conn_arm_recv(w, c);
	if (!outq_empty(&c->out) || (c->tls != NULL && tls_conn_out_pending(c->tls) > 0))
		send_mark_dirty(w, c);
}

static enum tls_path path_of_refusal(enum ktls_result r)
{
	switch (r) {
	case KTLS_NO_KERNEL_TLS:
		return TLS_PATH_USER_NO_KERNEL_TLS;
	case KTLS_UNSUPPORTED_VERSION:
	case KTLS_UNSUPPORTED_CIPHER:
		return TLS_PATH_USER_UNSUPPORTED;
	default:
		return TLS_PATH_USER_REFUSED;
	}
}

/* TLS 1.3: the traffic secrets stay (outside the slot) so a KeyUpdate can be followed.
 * Without them (out of memory, TLS 1.2) a KeyUpdate ends the connection. */
static void keep_secrets(struct worker *w, struct conn *c)
{
	if (w->ktls_sec == NULL)
		return;
	struct ktls_secrets s;
	if (!ktls_export_secrets(c->tls, &s))
		return;
	struct ktls_secrets *p = malloc(sizeof *p); /* once per connection, never per frame */
	if (p != NULL) {
		*p = s;
		w->ktls_sec[c->idx] = p;
	}
	ktls_secrets_wipe(&s);
}

void ktls_phase_release(struct worker *w, struct conn *c)
{
	if (w->ktls_sec == NULL || w->ktls_sec[c->idx] == NULL)
		return;
	ktls_secrets_wipe(w->ktls_sec[c->idx]);
	free(w->ktls_sec[c->idx]);
	w->ktls_sec[c->idx] = NULL;
}

struct ktls_secrets *ktls_phase_take_secrets(struct worker *w, struct conn *c)
{
	if (w->ktls_sec == NULL)
		return NULL;
	struct ktls_secrets *s = w->ktls_sec[c->idx];
	w->ktls_sec[c->idx] = NULL;
	return s;
}

void ktls_phase_adopt_secrets(struct worker *w, struct conn *c, struct ktls_secrets *s)
{
	if (s == NULL)
		return;
	if (w->ktls_sec == NULL || !c->ktls) {
		ktls_secrets_wipe(s);
		free(s);
		return;
	}
	ktls_phase_release(w, c);
	w->ktls_sec[c->idx] = s;
}

bool ktls_phase_key_expired(struct worker *w, struct conn *c)
{
	(void)w;
	bool expected = c->ktls_rekeyed;
	c->ktls_rekeyed = false; /* once per KeyUpdate: a kernel that keeps refusing is an error */
	return expected;
}

/* A peer's KeyUpdate on a kTLS connection: the kernel's next receive key, and when the
 * peer asks, our own KeyUpdate and next send key. False when any step is refused (a
 * kernel before 6.14 refuses the second TLS_RX with EBUSY). */
static bool follow_key_update(struct worker *w, struct conn *c, const uint8_t *p, size_t n)
{
	int request = ktls_key_update_request(p, n);
	struct ktls_secrets *s = w->ktls_sec ? w->ktls_sec[c->idx] : NULL;
	int err = 0;
	if (request < 0 || s == NULL || ktls_rekey(c->fd, s, false, &err) != KTLS_OK)
		return false;
	c->ktls_rekeyed = true;
	if (request == 1 && (!ktls_send_key_update(c->fd) || ktls_rekey(c->fd, s, true, &err) != KTLS_OK))
		return false;
	STAT_INC(w->stats.tls_key_updates);
	return true;
}

void ktls_phase_try(struct worker *w, struct conn *c)
{
	if (!c->ktls_undecided || c->tls == NULL)
		return;
	if (c->state == CONN_HANDOFF)
		return; /* the owner decides (handoff.c) */
	if (c->state >= CONN_DRAINING || !tls_conn_established(c->tls)) {
		count_path(w, c, TLS_PATH_USER_ENDED); /* ending: not worth the kernel's state */
		return;
	}
	if (c->send_inflight || tls_conn_out_pending(c->tls) > 0) {
		c->ktls_wait_tx = true; /* step 2 */
		send_mark_dirty(w, c);
		return;
	}
	struct ktls_keys k;
	enum ktls_result r = ktls_export(c->tls, &k);
	switch (r) {
	case KTLS_OK:
		break;
	case KTLS_TX_PENDING:
		c->ktls_wait_tx = true;
		send_mark_dirty(w, c);
		return;
	case KTLS_RX_PARTIAL_RECORD:
		c->ktls_wait_tx = false; /* step 3: conn_arm_recv asks for the record's rest */
		conn_arm_recv(w, c);
		return;
	default:
		count_path(w, c, path_of_refusal(r));
		resume(w, c);
		return;
	}
	int err = 0;
	r = ktls_install(c->fd, &k, &err);
	ktls_keys_wipe(&k);
	switch (r) {
	case KTLS_OK:
		keep_secrets(w, c);
		tls_conn_free(c->tls);
		c->tls = NULL;
		c->ktls = true;
		c->tls_closing = false;
		count_path(w, c, TLS_PATH_KTLS);
		resume(w, c);
		return;
	case KTLS_RX_REFUSED:
		/* The kernel encrypts what we send now; user space cannot write, the kernel
		 * cannot read: nothing can carry this connection on. */
		tls_conn_free(c->tls);
		c->tls = NULL;
		c->ktls = true;
		count_path(w, c, TLS_PATH_CLOSED_RX_REFUSED);
		conn_note_end(c, CONN_END_IO_ERROR);
		conn_kill(w, c);
		return;
	default:
		count_path(w, c, path_of_refusal(r));
		resume(w, c);
		return;
	}
}

void ktls_phase_tx_done(struct worker *w, struct conn *c)
{
	if (c->ktls_wait_tx && !c->send_inflight && c->tls != NULL && tls_conn_out_pending(c->tls) == 0) {
		c->ktls_wait_tx = false;
		ktls_phase_try(w, c);
	}
}

void ktls_phase_arm_recv(struct worker *w, struct conn *c, struct io_uring_sqe *sqe)
{
	if (c->ktls) {
		io_uring_prep_recvmsg_multishot(sqe, c->fd, &w->ktls_msg, 0);
		return;
	}
	ASSERT(c->ktls_undecided && !c->ktls_wait_tx);
	/* One receive; once established, no further than the end of the record begun
	 * (0: no record begun, but then the decision is not waiting for input: read
	 * what comes, it is consumed in user space before the next try). */
	size_t len = tls_conn_established(c->tls) ? tls_conn_rx_record_remaining(c->tls) : 0;
	io_uring_prep_recv(sqe, c->fd, NULL, (unsigned)MIN(len, (size_t)RECV_BUFFER_BYTES), 0);
}

/* A record that is not application data: a KeyUpdate the kernel can follow, or the
 * connection's end. */
static void control_record(struct worker *w, struct conn *c, uint8_t type, const uint8_t *p, size_t n)
{
	if (type == KTLS_RECORD_HANDSHAKE && follow_key_update(w, c, p, n))
		return;
	if (type == KTLS_RECORD_ALERT && n >= 2 && p[1] == KTLS_ALERT_CLOSE_NOTIFY) {
		conn_note_end(c, CONN_END_EOF); /* the peer's close_notify: as an EOF */
	} else {
		enum tls_error why = type == KTLS_RECORD_ALERT ? TLS_ERR_PEER_ALERT
				     : type == KTLS_RECORD_HANDSHAKE ? TLS_ERR_KEY_UPDATE
								       : TLS_ERR_PROTOCOL;
		STAT_INC(w->stats.tls.failed_after_handshake[why]);
		conn_note_end(c, CONN_END_IO_ERROR);
		if (why == TLS_ERR_KEY_UPDATE)
			(void)ktls_send_alert(c->fd, KTLS_ALERT_LEVEL_WARNING, KTLS_ALERT_CLOSE_NOTIFY);
	}
	conn_kill(w, c);
}

void ktls_phase_input(struct worker *w, struct conn *c, uint8_t *buf, size_t n)
{
	ASSERT(n <= INT_MAX);
	struct io_uring_recvmsg_out *o = io_uring_recvmsg_validate(buf, (int)n, &w->ktls_msg);
	if (o == NULL || (o->flags & MSG_CTRUNC)) {
		STAT_INC(w->stats.tls.failed_after_handshake[TLS_ERR_INTERNAL]);
		conn_note_end(c, CONN_END_IO_ERROR);
		conn_kill(w, c);
		return;
	}
	const uint8_t *control = (const uint8_t *)io_uring_recvmsg_cmsg_firsthdr(o, &w->ktls_msg);
	uint8_t type = control ? ktls_record_type(control, o->controllen) : KTLS_RECORD_APPLICATION_DATA;
	uint8_t *payload = io_uring_recvmsg_payload(o, &w->ktls_msg);
	size_t len = io_uring_recvmsg_payload_length(o, (int)n, &w->ktls_msg);
	if (type != KTLS_RECORD_APPLICATION_DATA) {
		control_record(w, c, type, payload, len);
		return;
	}
	if (len == 0) {
		/* recvmsg output with no payload: the peer closed TCP (EOF) */
		conn_note_end(c, CONN_END_EOF);
		conn_kill(w, c);
		return;
	}
	conn_input(w, c, payload, len);
}

void conn_shut_wr(struct worker *w, struct conn *c)
{
	(void)w;
	if (c->wr_shut)
		return;
	/* Our close_notify, as user-space TLS sends it before the FIN. Without blocking:
	 * a peer that does not read gets the FIN alone. */
	if (c->ktls)
		(void)ktls_send_alert(c->fd, KTLS_ALERT_LEVEL_WARNING, KTLS_ALERT_CLOSE_NOTIFY);
	shutdown(c->fd, SHUT_WR);
	c->wr_shut = true;
}
