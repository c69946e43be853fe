/*
 * rawfwd - the raw ceiling: an io_uring byte forwarder with the relay's traffic shape.
 *
 * Phones and binaries connect and say hello; phone messages go whole to their
 * server-id's binary and the binary's messages go whole to the phone they name. The
 * protocol is in tools/loadgen/rawproto.h; `loadgen --raw` drives it. There is no
 * WebSocket, masking, JSON or envelope work: the forwarder reads only the 8-byte
 * message headers, so the benchmark can state the relay's throughput as a fraction of
 * what the kernel's socket path allows with the same hops and the same batching.
 *
 * Like the relay: one ring, multishot accept, one send in flight per connection (what
 * is queued meanwhile goes out in the next send, one per connection per loop
 * iteration), bounded buffers. Receives are single-shot into the connection's own
 * buffer and re-armed only while it has room, and a message whose destination buffer
 * is full waits in the source's buffer: the source stops being read until the
 * destination's send completes, so TCP pushes back (the relay does the same for
 * binaries above 4 MiB queued).
 *
 * Memory: per connection slot (indexed by fd) a receive buffer and two send halves,
 * mapped with MAP_NORESERVE on first use and reused by the next connection on that
 * fd; only touched pages cost memory.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../loadgen/rawproto.h"
#include "core/common.h"
#include "engine/uring.h"

#define RF_LISTEN_BACKLOG 4096
#define RF_IN_BYTES (RAW_HEADER_BYTES + RAW_MESSAGE_BYTES_MAX + 64u * 1024u)
#define RF_OUT_HALF_BYTES (4u * 1024u * 1024u + RAW_HEADER_BYTES + RAW_MESSAGE_BYTES_MAX)
#define RF_RING_ENTRIES 4096u
#define RF_CQE_BATCH 1024u
#define RF_CQE_BATCHES_PER_ITERATION_MAX 64u
#define RF_WAIT_NS_MAX (200ull * 1000 * 1000)
#define RF_ACCEPT_RETRY_NS (10ull * 1000 * 1000)
#define RF_FD_RESERVE 16u /* descriptors kept for the listener, ring and stdio */
#define RF_EXIT_USAGE 2

enum { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3 };
enum rf_kind { K_FREE, K_NEW, K_BINARY, K_PHONE };

struct rconn {
	int fd;
	uint32_t gen;          /* bumped on close: stale completions are ignored */
	uint8_t kind;          /* enum rf_kind */
	bool recv_armed;
	bool send_inflight;
	bool dirty;
	bool blocked;          /* a message waits for room at `blocked_on` */
	int32_t blocked_on;
	int32_t wait_next;     /* next source blocked on the same destination */
	int32_t waiters;       /* head: sources blocked on this destination */
	uint32_t server;       /* slot in the server table */
	uint32_t phone_index;
	uint8_t *in;
	uint32_t in_len;
	uint8_t *half[2];
	uint8_t fill_idx;
	uint32_t fill_len;
	const uint8_t *wire;
	uint32_t wire_len;
	uint32_t wire_off;
};

enum { SLOT_EMPTY = 0, SLOT_USED, SLOT_TOMB };

struct server {
	uint8_t state;
	uint16_t id_len;
	int32_t binary_fd;
	uint32_t phones;                           /* live phones */
	int32_t phone_fd[RAW_PHONES_PER_SERVER_MAX]; /* -1: free index */
	uint8_t id[RAW_SERVER_ID_BYTES_MAX];
};

static struct {
	struct io_uring ring;
	int listen_fd;
	struct rconn *conns; /* indexed by fd */
	uint32_t conns_cap;
	struct server *servers;
	uint32_t servers_cap; /* power of two */
	int32_t *dirty;
	uint32_t dirty_n;
	bool accept_armed;
	uint64_t accept_retry_at_ns;
	uint64_t now_ns;
	/* counters */
	uint64_t accepted, closed, refused_hellos, p2b, b2p, dropped_unknown_phone, bytes;
} R;

static volatile sig_atomic_t stop_requested;

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "rawfwd: ");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static uint64_t clock_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t ud(const struct rconn *c, int op)
{
	return (uint64_t)(uint32_t)c->fd | (uint64_t)(c->gen & 0x0FFFFFFFu) << 32 | (uint64_t)op << 60;
}

static struct io_uring_sqe *get_sqe(void)
{
	return uring_get_sqe(&R.ring);
}

static void *map_bytes(size_t n)
{
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

/* ---- server-id table: open addressing, linear probing, tombstones ---- */

static uint64_t hash_id(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

/* The slot holding id, or (insert) the first reusable slot; UINT32_MAX if none. */
static uint32_t server_find(const uint8_t *id, size_t n, bool insert)
{
	uint32_t mask = R.servers_cap - 1, reuse = UINT32_MAX;
	uint32_t i = (uint32_t)hash_id(id, n) & mask;
	for (uint32_t probes = 0; probes < R.servers_cap; probes++, i = (i + 1) & mask) {
		struct server *s = &R.servers[i];
		if (s->state == SLOT_EMPTY)
			return insert ? (reuse != UINT32_MAX ? reuse : i) : UINT32_MAX;
		if (s->state == SLOT_TOMB) {
			if (reuse == UINT32_MAX)
				reuse = i;
			continue;
		}
		if (s->id_len == n && memcmp(s->id, id, n) == 0)
			return i;
	}
	return insert ? reuse : UINT32_MAX;
}

/* ---- connections ---- */

static void mark_dirty(struct rconn *c)
{
	if (c->dirty)
		return;
	c->dirty = true;
	R.dirty[R.dirty_n++] = c->fd;
}

static void arm_recv(struct rconn *c)
{
	if (c->recv_armed || c->blocked || c->kind == K_FREE || c->in_len >= RF_IN_BYTES)
		return;
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_recv(sqe, c->fd, c->in + c->in_len, RF_IN_BYTES - c->in_len, 0);
	io_uring_sqe_set_data64(sqe, ud(c, OP_RECV));
	c->recv_armed = true;
}

static void submit_send(struct rconn *c)
{
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_send(sqe, c->fd, c->wire + c->wire_off, c->wire_len - c->wire_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, ud(c, OP_SEND));
	c->send_inflight = true;
}

static void flush(struct rconn *c)
{
	if (c->send_inflight || c->fill_len == 0 || c->kind == K_FREE)
		return;
	c->wire = c->half[c->fill_idx];
	c->wire_len = c->fill_len;
	c->wire_off = 0;
	c->fill_idx ^= 1;
	c->fill_len = 0;
	submit_send(c);
}

static void unblock(struct rconn *src)
{
	/* remove src from its destination's waiter list */
	struct rconn *d = &R.conns[src->blocked_on];
	int32_t *pp = &d->waiters;
	for (uint32_t guard = 0; *pp != -1 && guard < R.conns_cap; guard++) {
		if (*pp == src->fd) {
			*pp = src->wait_next;
			break;
		}
		pp = &R.conns[*pp].wait_next;
	}
	src->blocked = false;
	src->blocked_on = -1;
	src->wait_next = -1;
}

static void process(struct rconn *c);
static void conn_close(struct rconn *c, const char *why);

/* Let every source waiting for room at d try again. */
static void wake_waiters(struct rconn *d)
{
	int32_t w = d->waiters;
	d->waiters = -1;
	for (uint32_t guard = 0; w != -1 && guard < R.conns_cap; guard++) {
		struct rconn *s = &R.conns[w];
		w = s->wait_next;
		s->blocked = false;
		s->blocked_on = -1;
		s->wait_next = -1;
		if (s->kind != K_FREE) {
			process(s);
			arm_recv(s);
		}
	}
}

static void conn_close(struct rconn *c, const char *why)
{
	if (c->kind == K_FREE)
		return;
	if (why)
		logf_("closing fd %d: %s", c->fd, why);
	uint8_t kind = c->kind;
	c->kind = K_FREE;
	c->gen++;
	R.closed++;
	if (c->blocked)
		unblock(c);
	(void)shutdown(c->fd, SHUT_RDWR);
	(void)close(c->fd);
	/* unregister first, so the waiters woken below find no destination and drop */
	if (kind == K_BINARY) {
		struct server *s = &R.servers[c->server];
		s->state = SLOT_TOMB;
		s->binary_fd = -1;
		wake_waiters(c);
		for (uint32_t i = 0; i < RAW_PHONES_PER_SERVER_MAX; i++) {
			int32_t pfd = s->phone_fd[i];
			if (pfd >= 0) {
				s->phone_fd[i] = -1;
				conn_close(&R.conns[pfd], NULL);
			}
		}
		s->phones = 0;
	} else {
		if (kind == K_PHONE) {
			struct server *s = &R.servers[c->server];
			if (s->state == SLOT_USED && s->phone_fd[c->phone_index] == c->fd) {
				s->phone_fd[c->phone_index] = -1;
				s->phones--;
			}
		}
		wake_waiters(c);
	}
}

/* Put an ack ([0][index]) in c's send buffer. */
static void ack(struct rconn *c, uint32_t index)
{
	raw_header_encode(c->half[c->fill_idx] + c->fill_len, 0, index);
	c->fill_len += RAW_HEADER_BYTES;
	mark_dirty(c);
}

/* 1: hello handled; 0: need more bytes; -1: connection closed */
static int hello(struct rconn *c)
{
	uint8_t *nl = memchr(c->in, '\n', MIN(c->in_len, RAW_HELLO_BYTES_MAX));
	if (nl == NULL) {
		if (c->in_len >= RAW_HELLO_BYTES_MAX) {
			R.refused_hellos++;
			conn_close(c, "hello too long");
			return -1;
		}
		return 0;
	}
	size_t id_len = (size_t)(nl - c->in) - 1;
	const uint8_t *id = c->in + 1;
	if (nl - c->in < 2 || (c->in[0] != 'B' && c->in[0] != 'P') ||
	    memchr(c->in + 1, 0, (size_t)(nl - c->in) - 1) != NULL) {
		R.refused_hellos++;
		conn_close(c, "malformed hello");
		return -1;
	}
	if (c->in[0] == 'B') {
		uint32_t slot = server_find(id, id_len, true);
		if (slot == UINT32_MAX || R.servers[slot].state == SLOT_USED) {
			R.refused_hellos++;
			conn_close(c, slot == UINT32_MAX ? "server table full" : "server-id already claimed");
			return -1;
		}
		struct server *s = &R.servers[slot];
		s->state = SLOT_USED;
		s->id_len = (uint16_t)id_len;
		memcpy(s->id, id, id_len);
		s->binary_fd = c->fd;
		s->phones = 0;
		for (uint32_t i = 0; i < RAW_PHONES_PER_SERVER_MAX; i++)
			s->phone_fd[i] = -1;
		c->kind = K_BINARY;
		c->server = slot;
		ack(c, 0);
	} else {
		uint32_t slot = server_find(id, id_len, false);
		if (slot == UINT32_MAX) {
			R.refused_hellos++;
			conn_close(c, NULL); /* no binary for that server-id: the relay's 4404 */
			return -1;
		}
		struct server *s = &R.servers[slot];
		uint32_t idx = 0;
		while (idx < RAW_PHONES_PER_SERVER_MAX && s->phone_fd[idx] >= 0)
			idx++;
		if (idx == RAW_PHONES_PER_SERVER_MAX) {
			R.refused_hellos++;
			conn_close(c, "too many phones for the server-id");
			return -1;
		}
		s->phone_fd[idx] = c->fd;
		s->phones++;
		c->kind = K_PHONE;
		c->server = slot;
		c->phone_index = idx;
		ack(c, idx);
	}
	size_t used = (size_t)(nl - c->in) + 1;
	memmove(c->in, c->in + used, c->in_len - used);
	c->in_len -= (uint32_t)used;
	return 1;
}

/* Forward every complete message in c->in whose destination has room. */
static void process(struct rconn *c)
{
	if (c->kind == K_NEW && hello(c) <= 0)
		return;
	size_t off = 0;
	while (c->kind != K_FREE && !c->blocked && c->in_len - off >= RAW_HEADER_BYTES) {
		uint8_t *h = c->in + off;
		uint32_t len = raw_get_u32(h);
		if (len > RAW_MESSAGE_BYTES_MAX) {
			conn_close(c, "message over RAW_MESSAGE_BYTES_MAX");
			return;
		}
		size_t whole = RAW_HEADER_BYTES + len;
		if (c->in_len - off < whole)
			break;
		struct server *s = &R.servers[c->server];
		int32_t dfd;
		if (c->kind == K_PHONE) {
			dfd = s->binary_fd;
			raw_put_u32(h + 4, c->phone_index);
		} else {
			uint32_t idx = raw_get_u32(h + 4);
			dfd = idx < RAW_PHONES_PER_SERVER_MAX ? s->phone_fd[idx] : -1;
		}
		if (dfd < 0) {
			R.dropped_unknown_phone++;
			off += whole;
			continue;
		}
		struct rconn *d = &R.conns[dfd];
		if (RF_OUT_HALF_BYTES - d->fill_len < whole) {
			/* wait for d's send to complete; stop reading c meanwhile */
			c->blocked = true;
			c->blocked_on = dfd;
			c->wait_next = d->waiters;
			d->waiters = c->fd;
			break;
		}
		memcpy(d->half[d->fill_idx] + d->fill_len, h, whole);
		d->fill_len += (uint32_t)whole;
		mark_dirty(d);
		if (c->kind == K_PHONE)
			R.p2b++;
		else
			R.b2p++;
		R.bytes += whole;
		off += whole;
	}
	if (c->kind == K_FREE)
		return;
	if (off) {
		memmove(c->in, c->in + off, c->in_len - off);
		c->in_len -= (uint32_t)off;
	}
}

static bool conn_open(int fd)
{
	if ((uint32_t)fd >= R.conns_cap) {
		close(fd);
		return false;
	}
	struct rconn *c = &R.conns[fd];
	if (c->in == NULL) {
		c->in = map_bytes(RF_IN_BYTES);
		c->half[0] = map_bytes(RF_OUT_HALF_BYTES);
		c->half[1] = map_bytes(RF_OUT_HALF_BYTES);
		if (!c->in || !c->half[0] || !c->half[1]) {
			logf_("out of address space for fd %d; refusing it", fd);
			close(fd);
			return false;
		}
	}
	int one = 1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	c->fd = fd;
	c->kind = K_NEW;
	/* `dirty` stays: if set, this fd is still on the flush list from its last user */
	c->recv_armed = c->send_inflight = c->blocked = false;
	c->blocked_on = c->wait_next = c->waiters = -1;
	c->in_len = c->fill_len = 0;
	c->fill_idx = 0;
	R.accepted++;
	arm_recv(c);
	return true;
}

static void arm_accept(void)
{
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_multishot_accept(sqe, R.listen_fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, (uint64_t)OP_ACCEPT << 60);
	R.accept_armed = true;
}

static void on_cqe(uint64_t data, int res, uint32_t flags)
{
	int op = (int)(data >> 60);
	if (op == OP_ACCEPT) {
		if (!(flags & IORING_CQE_F_MORE))
			R.accept_armed = false;
		if (res >= 0) {
			conn_open(res);
		} else if (res != -ECANCELED) {
			logf_("accept: %s", strerror(-res));
			R.accept_retry_at_ns = R.now_ns + RF_ACCEPT_RETRY_NS;
		}
		return;
	}
	int fd = (int)(uint32_t)data;
	uint32_t gen = (uint32_t)(data >> 32) & 0x0FFFFFFFu;
	ASSERT((uint32_t)fd < R.conns_cap);
	struct rconn *c = &R.conns[fd];
	if (c->kind == K_FREE || (c->gen & 0x0FFFFFFFu) != gen)
		return; /* a completion for an earlier connection on this fd */
	if (op == OP_RECV) {
		c->recv_armed = false;
		if (res <= 0) {
			conn_close(c, res < 0 && res != -ECONNRESET ? strerror(-res) : NULL);
			return;
		}
		c->in_len += (uint32_t)res;
		process(c);
		arm_recv(c);
	} else if (op == OP_SEND) {
		c->send_inflight = false;
		if (res < 0) {
			conn_close(c, res != -EPIPE && res != -ECONNRESET ? strerror(-res) : NULL);
			return;
		}
		c->wire_off += (uint32_t)res;
		if (c->wire_off < c->wire_len) {
			submit_send(c);
			return;
		}
		flush(c);         /* what queued up during the send, in one send */
		wake_waiters(c);  /* the fill half is free again */
	}
}

static void flush_dirty(void)
{
	uint32_t n = R.dirty_n;
	for (uint32_t i = 0; i < n; i++) {
		struct rconn *c = &R.conns[R.dirty[i]];
		c->dirty = false;
		flush(c);
	}
	R.dirty_n = 0;
}

struct cqe_copy {
	uint64_t data;
	int32_t res;
	uint32_t flags;
};

static void reap(void)
{
	static struct cqe_copy batch[RF_CQE_BATCH];
	for (uint32_t round = 0; round < RF_CQE_BATCHES_PER_ITERATION_MAX; round++) {
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;
		io_uring_for_each_cqe(&R.ring, head, cqe)
		{
			batch[n].data = cqe->user_data;
			batch[n].res = cqe->res;
			batch[n].flags = cqe->flags;
			if (++n == RF_CQE_BATCH)
				break;
		}
		if (n == 0)
			return;
		io_uring_cq_advance(&R.ring, n);
		for (unsigned i = 0; i < n; i++)
			on_cqe(batch[i].data, batch[i].res, batch[i].flags);
		if (n < RF_CQE_BATCH)
			return;
	}
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: rawfwd [--listen HOST:PORT]\n"
		"\n"
		"The raw ceiling for relay benchmarks: forwards length-prefixed messages between\n"
		"phones and their server-id's binary over io_uring, with the relay's hop count\n"
		"and send batching but no WebSocket or envelope work. Drive it with\n"
		"`loadgen --raw --url tcp://HOST:PORT`. Protocol: tools/loadgen/rawproto.h.\n"
		"SIGINT/SIGTERM stop it and print its counters.\n"
		"\n"
		"  --listen HOST:PORT  address to listen on (default 127.0.0.1:18090)\n"
		"  -h, --help          this text\n");
}

static int listen_on(const char *addr)
{
	char host[256];
	const char *colon = strrchr(addr, ':');
	if (colon == NULL || colon == addr || (size_t)(colon - addr) >= sizeof host || colon[1] == '\0') {
		logf_("--listen wants HOST:PORT, got \"%s\"", addr);
		exit(RF_EXIT_USAGE);
	}
	memcpy(host, addr, (size_t)(colon - addr));
	host[colon - addr] = '\0';
	char *h = host;
	if (h[0] == '[' && h[strlen(h) - 1] == ']') {
		h[strlen(h) - 1] = '\0';
		h++;
	}
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *res = NULL;
	int rc = getaddrinfo(h, colon + 1, &hints, &res);
	if (rc != 0) {
		logf_("cannot resolve %s: %s", addr, gai_strerror(rc));
		exit(RF_EXIT_USAGE);
	}
	int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, RF_LISTEN_BACKLOG) < 0) {
		logf_("cannot listen on %s: %s", addr, strerror(errno));
		exit(1);
	}
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	freeaddrinfo(res);
	return fd;
}

static void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *addr = "127.0.0.1:18090";
	opterr = 0;
	int o;
	while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		if (o == 'h') {
			usage(stdout);
			return 0;
		} else if (o == 'l') {
			addr = optarg;
		} else {
			logf_("unknown flag or missing value: %s (see --help)", argv[optind - 1]);
			return RF_EXIT_USAGE;
		}
	}
	if (optind < argc) {
		logf_("unexpected argument \"%s\" (see --help)", argv[optind]);
		return RF_EXIT_USAGE;
	}

	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
	(void)getrlimit(RLIMIT_NOFILE, &rl);
	R.conns_cap = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1u << 24) ? (1u << 24) : (uint32_t)rl.rlim_cur;
	R.servers_cap = 1024;
	while (R.servers_cap < 2 * R.conns_cap)
		R.servers_cap <<= 1;
	R.conns = calloc(R.conns_cap, sizeof *R.conns);
	R.dirty = calloc(R.conns_cap, sizeof *R.dirty);
	R.servers = map_bytes((size_t)R.servers_cap * sizeof *R.servers); /* zero: all SLOT_EMPTY */
	if (!R.conns || !R.dirty || !R.servers) {
		logf_("out of memory for %u connection slots", R.conns_cap);
		return 1;
	}

	struct uring_features f;
	char why[URING_WHY_BYTES];
	if (!uring_probe(&f, why) || uring_setup(&R.ring, RF_RING_ENTRIES, &f, why) < 0) {
		logf_("%s", why);
		return 1;
	}
	R.listen_fd = listen_on(addr);
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = { .sa_handler = on_signal };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	logf_("listening on %s (%u connection slots)", addr, R.conns_cap - RF_FD_RESERVE);

	while (!stop_requested) {
		R.now_ns = clock_ns();
		if (!R.accept_armed && R.now_ns >= R.accept_retry_at_ns)
			arm_accept();
		flush_dirty();
		struct __kernel_timespec ts = { .tv_sec = 0, .tv_nsec = (long long)RF_WAIT_NS_MAX };
		if (!R.accept_armed)
			ts.tv_nsec = (long long)RF_ACCEPT_RETRY_NS;
		struct io_uring_cqe *cqe;
		int rc = io_uring_submit_and_wait_timeout(&R.ring, &cqe, 1, &ts, NULL);
		if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
			logf_("io_uring_enter: %s", strerror(-rc));
			return 1;
		}
		R.now_ns = clock_ns();
		reap();
	}
	logf_("stopping: %llu connections accepted, %llu closed, %llu hellos refused, "
	      "%llu messages phone->binary, %llu binary->phone, %llu dropped (unknown phone), %.1f MB forwarded",
	      (unsigned long long)R.accepted, (unsigned long long)R.closed, (unsigned long long)R.refused_hellos,
	      (unsigned long long)R.p2b, (unsigned long long)R.b2p, (unsigned long long)R.dropped_unknown_phone,
	      (double)R.bytes / 1e6);
	return 0;
}
