/*
 * uring.h - io_uring set-up: kernel feature probe, ring creation with the best flags
 * the kernel accepts, and provided-buffer rings (liburing 2.3 lacks
 * io_uring_setup_buf_ring, so we write it here against the kernel ABI).
 *
 * Contract: called at start-up only (control plane), except uring_get_sqe. Errors come back as a message
 * naming the cause and the fix; the caller logs it and exits 1.
 */
#ifndef PYRELAY_URING_H
#define PYRELAY_URING_H

#include <liburing.h>

#include "core/common.h"

/* Newer than liburing 2.3's headers (kernel 6.12). */
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)
#endif

struct uring_features {
	bool defer_taskrun;   /* IORING_SETUP_SINGLE_ISSUER|DEFER_TASKRUN (6.1) */
	bool coop_taskrun;    /* fallback (5.19) */
	bool ext_arg;         /* wait with timeout without an SQE (5.11) */
	bool send_zc;         /* IORING_OP_SEND_ZC (6.0) and IORING_OP_SENDMSG_ZC (6.1) */
	bool msg_ring;        /* IORING_OP_MSG_RING (5.18) */
	bool recv_multishot;  /* needs provided buffer rings (6.0) */
	bool accept_multishot;
	bool buf_ring;
	bool min_wait;        /* io_uring_getevents_arg.min_wait_usec: wait a while for a batch (6.12) */
};

#define URING_WHY_BYTES 256

/* An SQE from `ring`; when the submission queue is full, what it holds is submitted
 * first (bounded: the submit empties the queue), so this never fails. The one hot-path
 * helper here: every ring of the relay and of its tools takes SQEs this way. */
static inline struct io_uring_sqe *uring_get_sqe(struct io_uring *ring)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	if (sqe == NULL) {
		(void)io_uring_submit(ring);
		sqe = io_uring_get_sqe(ring);
	}
	ASSERT(sqe != NULL);
	return sqe;
}

/* user_data of every SQE: operation (8 bits), slot generation (24 bits), slot index
 * (32 bits). A completion for a slot that was freed and reused carries an old
 * generation, so it can never be mistaken for the new occupant's. */
#define UD(op, idx, gen) (((uint64_t)(op) << 56) | ((uint64_t)((gen) & 0xffffffu) << 32) | (uint64_t)(idx))
#define UD_OP(ud) ((unsigned)((ud) >> 56))
#define UD_GEN(ud) ((uint32_t)(((ud) >> 32) & 0xffffffu))
#define UD_IDX(ud) ((uint32_t)(ud))

/* After a hand-over (ADR 0018): an accept on the listener fd (multishot, or one) that
 * takes what is queued at once, and a cancel of it (user_data ud) right behind it in
 * the same submission, its completion tagged ignore_ud. What the accept takes
 * completes under ud as any accept; its last completion ends the sweep. */
void uring_prep_accept_sweep(struct io_uring *ring, int fd, uint64_t ud, uint64_t ignore_ud, bool multishot);

/* Probe what the running kernel offers. Returns false when io_uring cannot serve the
 * relay at all (absent, disabled by sysctl or seccomp, kernel too old), with the cause
 * and the fix in why. */
bool uring_probe(struct uring_features *f, char why[URING_WHY_BYTES]);

/* Create a ring with `entries` SQEs (CQ twice as big), single issuer and deferred task
 * running when available, else cooperative task running. Registers the ring fd.
 * Returns 1 when the ring fd is registered, 0 when it is not, < 0 on failure. */
int uring_setup(struct io_uring *ring, unsigned entries, const struct uring_features *f,
		char why[URING_WHY_BYTES]);

/*
 * Submit what is queued and wait, like io_uring_submit_and_wait_timeout(ring, 1, ts),
 * but batching wake-ups (f->min_wait): the kernel waits up to min_wait_usec for
 * batch_nr completions and, after that, returns as soon as there is one. ts (NULL: no
 * bound) bounds the whole wait. registered: uring_setup returned 1. Returns what
 * io_uring_enter returns (submitted SQEs) or -errno (-ETIME when ts passed).
 */
int uring_submit_and_wait_batch(struct io_uring *ring, bool registered, const struct __kernel_timespec *ts,
				unsigned batch_nr, uint32_t min_wait_usec);

/* mmap a provided-buffer ring of `entries` (power of two) and register it as buffer
 * group `bgid`. Returns NULL with why filled on failure. */
struct io_uring_buf_ring *uring_setup_buf_ring(struct io_uring *ring, unsigned entries,
					       unsigned short bgid, char why[URING_WHY_BYTES]);
void uring_free_buf_ring(struct io_uring *ring, struct io_uring_buf_ring *br, unsigned entries,
			 unsigned short bgid);

#endif
