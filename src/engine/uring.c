#include "engine/uring.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

/* struct utsname.release on Linux: 64 characters and a NUL. */
#define KERNEL_RELEASE_BYTES 65u

static void kernel_release(char *out, size_t cap)
{
	struct utsname u;
	if (uname(&u) == 0)
		snprintf(out, cap, "%s", u.release);
	else
		snprintf(out, cap, "unknown");
}

bool uring_probe(struct uring_features *f, char why[URING_WHY_BYTES])
{
	char rel[KERNEL_RELEASE_BYTES];
	kernel_release(rel, sizeof rel);
	memset(f, 0, sizeof *f);

	struct io_uring ring;
	int rc = io_uring_queue_init(8, &ring, 0);
	if (rc < 0) {
		switch (-rc) {
		case ENOSYS:
			snprintf(why, URING_WHY_BYTES,
				 "io_uring is not available in kernel %s (fix: run on Linux >= 6.1 built with CONFIG_IO_URING)", rel);
			break;
		case EPERM:
			snprintf(why, URING_WHY_BYTES,
				 "io_uring is disabled for this process (fix: sysctl kernel.io_uring_disabled=0, or allow io_uring_setup in the seccomp profile / container runtime)");
			break;
		case ENOMEM:
			snprintf(why, URING_WHY_BYTES,
				 "io_uring_setup: out of locked memory (fix: raise RLIMIT_MEMLOCK, e.g. LimitMEMLOCK=infinity in the systemd unit)");
			break;
		default:
			snprintf(why, URING_WHY_BYTES, "io_uring_setup failed: %s (kernel %s)", strerror(-rc), rel);
		}
		return false;
	}
	f->ext_arg = (ring.features & IORING_FEAT_EXT_ARG) != 0;
	f->min_wait = f->ext_arg && (ring.features & IORING_FEAT_MIN_TIMEOUT) != 0;
	struct io_uring_probe *probe = io_uring_get_probe_ring(&ring);
	bool ops_ok = false;
	if (probe != NULL) {
		ops_ok = io_uring_opcode_supported(probe, IORING_OP_ACCEPT) &&
			 io_uring_opcode_supported(probe, IORING_OP_RECV) &&
			 io_uring_opcode_supported(probe, IORING_OP_SEND) &&
			 io_uring_opcode_supported(probe, IORING_OP_SENDMSG) &&
			 io_uring_opcode_supported(probe, IORING_OP_ASYNC_CANCEL) &&
			 io_uring_opcode_supported(probe, IORING_OP_READ);
		f->send_zc = io_uring_opcode_supported(probe, IORING_OP_SEND_ZC) &&
			     io_uring_opcode_supported(probe, IORING_OP_SENDMSG_ZC);
		f->msg_ring = io_uring_opcode_supported(probe, IORING_OP_MSG_RING);
		io_uring_free_probe(probe);
	}
	/* Buffer rings (5.19) are the marker for multishot accept (5.19) and multishot
	 * recv (6.0): probe the registration itself rather than trusting version numbers. */
	char tmp[URING_WHY_BYTES];
	struct io_uring_buf_ring *br = uring_setup_buf_ring(&ring, 2, 0, tmp);
	if (br != NULL) {
		f->buf_ring = true;
		uring_free_buf_ring(&ring, br, 2, 0);
	}
	f->accept_multishot = f->buf_ring;
	f->recv_multishot = f->buf_ring && f->send_zc; /* both arrived in 6.0 */
	io_uring_queue_exit(&ring);

	struct io_uring_params p = { .flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN };
	if (io_uring_queue_init_params(8, &ring, &p) == 0) {
		f->defer_taskrun = true;
		io_uring_queue_exit(&ring);
	} else {
		p = (struct io_uring_params){ .flags = IORING_SETUP_COOP_TASKRUN };
		if (io_uring_queue_init_params(8, &ring, &p) == 0) {
			f->coop_taskrun = true;
			io_uring_queue_exit(&ring);
		}
	}

	if (!ops_ok || !f->ext_arg || !f->recv_multishot || !f->accept_multishot) {
		snprintf(why, URING_WHY_BYTES,
			 "kernel %s lacks io_uring features the relay needs (multishot accept/recv with provided buffer rings, wait with timeout) (fix: run on Linux >= 6.1)",
			 rel);
		return false;
	}
	return true;
}

int uring_setup(struct io_uring *ring, unsigned entries, const struct uring_features *f,
		char why[URING_WHY_BYTES])
{
	struct io_uring_params p = { .flags = IORING_SETUP_CQSIZE, .cq_entries = entries * 4 };
	if (f->defer_taskrun)
		p.flags |= IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
	else if (f->coop_taskrun)
		p.flags |= IORING_SETUP_COOP_TASKRUN;
	int rc = io_uring_queue_init_params(entries, ring, &p);
	if (rc < 0) {
		snprintf(why, URING_WHY_BYTES, "io_uring_queue_init(%u entries): %s%s", entries, strerror(-rc),
			 rc == -ENOMEM ? " (fix: the user's locked-memory limit is spent by its rings: raise "
					 "RLIMIT_MEMLOCK, e.g. LimitMEMLOCK=infinity in the systemd unit, or use fewer --workers)"
				       : "");
		return rc;
	}
	/* Saves an fget/fput per io_uring_enter; failure only costs that. */
	return io_uring_register_ring_fd(ring) == 1 ? 1 : 0;
}

/* Newer than liburing 2.3's headers: the kernel 6.12 layout of the wait argument. */
struct uring_getevents_arg {
	uint64_t sigmask;
	uint32_t sigmask_sz;
	uint32_t min_wait_usec; /* "pad" before 6.12 */
	uint64_t ts;
};

/* What liburing's submit does before entering (its flush is private in 2.3): publish
 * the SQEs prepared since the last flush. Returns how many the kernel has not consumed. */
static unsigned flush_sq(struct io_uring *ring)
{
	struct io_uring_sq *sq = &ring->sq;
	unsigned tail = sq->sqe_tail;
	if (sq->sqe_head != tail) {
		sq->sqe_head = tail;
		__atomic_store_n(sq->ktail, tail, __ATOMIC_RELEASE);
	}
	return tail - __atomic_load_n(sq->khead, __ATOMIC_ACQUIRE);
}

int uring_submit_and_wait_batch(struct io_uring *ring, bool registered, const struct __kernel_timespec *ts,
				unsigned batch_nr, uint32_t min_wait_usec)
{
	struct uring_getevents_arg arg = {
		.sigmask_sz = _NSIG / 8,
		.min_wait_usec = min_wait_usec,
		.ts = (uint64_t)(uintptr_t)ts,
	};
	unsigned flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG;
	if (registered)
		flags |= IORING_ENTER_REGISTERED_RING;
	int fd = registered ? ring->enter_ring_fd : ring->ring_fd;
	long rc = syscall(__NR_io_uring_enter, fd, flush_sq(ring), batch_nr, flags, &arg, sizeof arg);
	return rc < 0 ? -errno : (int)rc;
}

static size_t buf_ring_bytes(unsigned entries)
{
	return (size_t)entries * sizeof(struct io_uring_buf);
}

struct io_uring_buf_ring *uring_setup_buf_ring(struct io_uring *ring, unsigned entries,
					       unsigned short bgid, char why[URING_WHY_BYTES])
{
	ASSERT(entries > 0 && (entries & (entries - 1)) == 0);
	void *mem = mmap(NULL, buf_ring_bytes(entries), PROT_READ | PROT_WRITE,
			 MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (mem == MAP_FAILED) {
		snprintf(why, URING_WHY_BYTES, "mmap buffer ring: %s", strerror(errno));
		return NULL;
	}
	struct io_uring_buf_ring *br = mem;
	io_uring_buf_ring_init(br);
	struct io_uring_buf_reg reg = {
		.ring_addr = (unsigned long)(uintptr_t)br,
		.ring_entries = entries,
		.bgid = bgid,
	};
	int rc = io_uring_register_buf_ring(ring, &reg, 0);
	if (rc < 0) {
		snprintf(why, URING_WHY_BYTES, "io_uring_register_buf_ring: %s%s", strerror(-rc),
			 rc == -ENOMEM ? " (fix: raise RLIMIT_MEMLOCK, e.g. LimitMEMLOCK=infinity, or use fewer --workers)"
				       : "");
		munmap(mem, buf_ring_bytes(entries));
		return NULL;
	}
	return br;
}

void uring_free_buf_ring(struct io_uring *ring, struct io_uring_buf_ring *br, unsigned entries,
			 unsigned short bgid)
{
	(void)io_uring_unregister_buf_ring(ring, bgid);
	munmap(br, buf_ring_bytes(entries));
}

void uring_prep_accept_sweep(struct io_uring *ring, int fd, uint64_t ud, uint64_t ignore_ud, bool multishot)
{
	struct io_uring_sqe *sqe = uring_get_sqe(ring);
	if (multishot)
		io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
	else
		io_uring_prep_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, ud);
	/* Issued after the accept (a full queue submits the accept first): by then the
	 * accept has tried at once and, finding nothing, waits; the cancel ends it. */
	sqe = uring_get_sqe(ring);
	io_uring_prep_cancel64(sqe, ud, 0);
	io_uring_sqe_set_data64(sqe, ignore_ud);
}
