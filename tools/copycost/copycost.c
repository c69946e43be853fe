/*
 * copycost - what a forwarded payload's copy into the outbox costs, and what the two
 * ways of getting rid of it would save (issue #17, ADR 19). Two measurements, each as
 * a ratio of CPU time between two variants run alternately in one process, so the
 * noise of a shared machine hits both alike:
 *
 *   json: json_valid, then memcpy into a rotating set of outbox-sized buffers (the
 *         two-pass path), against json_valid_copy into the same buffers (one pass);
 *   send: memcpy of a wrapped frame (50 B + payload + 1 B) into one buffer and send(),
 *         against sendmsg() of three iovecs pointing at the parts (what sending from
 *         the receive buffer would do), over loopback TCP with a reader on another CPU.
 *
 * Usage: copycost [--size BYTES] [--rounds N]   (defaults 4096 and 15; bounded: each
 * round is a fixed number of operations). Prints one line per round and the medians.
 * Run it on an otherwise idle pair of CPUs: build/gcc/copycost.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "envelope/json.h"

#define SIZE_DEFAULT_BYTES 4096u
#define SIZE_MAX_BYTES (1u << 20)
#define ROUNDS_DEFAULT 15u
#define ROUNDS_MAX 1000u
#define JSON_OPS_PER_ROUND 200000u
#define SEND_OPS_PER_ROUND 50000u
#define OUTBOX_BUFFERS 64u /* rotated through, as an outbox's segments are */
#define WRAP_HEAD_BYTES 50u
#define DRAIN_BUF_BYTES (1u << 20)

static double thread_cpu_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double median(double *v, unsigned n)
{
	qsort(v, n, sizeof v[0], cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	(void)sched_setaffinity(0, sizeof set, &set); /* best effort: one CPU still measures */
}

/* ---- json: two passes against one ---- */

/* {"type":"frame","payload":"<base64>"} of exactly n bytes (n >= 64). */
static void make_doc(uint8_t *doc, size_t n)
{
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	static const char head[] = "{\"type\":\"frame\",\"payload\":\"";
	size_t h = sizeof head - 1;
	memcpy(doc, head, h);
	for (size_t i = h; i < n - 2; i++)
		doc[i] = (uint8_t)b64[i % 64];
	doc[n - 2] = '"';
	doc[n - 1] = '}';
}

static void json_round(const uint8_t *doc, size_t n, uint8_t *outbox, double *two, double *one)
{
	struct span in = span_make(doc, n);
	size_t stride = n + 64;
	double t0 = thread_cpu_s();
	for (unsigned k = 0; k < JSON_OPS_PER_ROUND; k++) {
		uint8_t *dst = outbox + (k % OUTBOX_BUFFERS) * stride;
		if (!json_valid(in))
			abort();
		memcpy(dst, doc, n);
		__asm__ volatile("" ::"r"(dst) : "memory");
	}
	double t1 = thread_cpu_s();
	for (unsigned k = 0; k < JSON_OPS_PER_ROUND; k++) {
		uint8_t *dst = outbox + (k % OUTBOX_BUFFERS) * stride;
		if (!json_valid_copy(in, dst))
			abort();
		__asm__ volatile("" ::"r"(dst) : "memory");
	}
	double t2 = thread_cpu_s();
	*two = (t1 - t0) / JSON_OPS_PER_ROUND * 1e9;
	*one = (t2 - t1) / JSON_OPS_PER_ROUND * 1e9;
}

/* ---- send: copy and send, against sendmsg over the parts ---- */

static void *drain(void *arg)
{
	int fd = *(int *)arg;
	pin(1);
	uint8_t *buf = malloc(DRAIN_BUF_BYTES);
	if (buf == NULL)
		return NULL;
	while (read(fd, buf, DRAIN_BUF_BYTES) > 0)
		;
	free(buf);
	return NULL;
}

static int loopback_pair(int *rd)
{
	int l = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof a;
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) ||
	    getsockname(l, (struct sockaddr *)&a, &al))
		return -1;
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a))
		return -1;
	*rd = accept(l, NULL, NULL);
	close(l);
	int one = 1;
	(void)setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	return *rd < 0 ? -1 : c;
}

static void send_all(int fd, const struct msghdr *m, size_t len)
{
	ssize_t r = sendmsg(fd, m, 0);
	if (r != (ssize_t)len) {
		fprintf(stderr, "copycost: sendmsg: %s\n", r < 0 ? strerror(errno) : "short write");
		exit(1);
	}
}

static void send_round(int fd, const uint8_t *payload, size_t n, uint8_t *seg, double *copy, double *iov3)
{
	static const uint8_t head[WRAP_HEAD_BYTES] = { 'h' };
	static const uint8_t tail[1] = { '}' };
	size_t len = WRAP_HEAD_BYTES + n + 1;
	double t0 = thread_cpu_s();
	for (unsigned k = 0; k < SEND_OPS_PER_ROUND; k++) {
		memcpy(seg, head, WRAP_HEAD_BYTES);
		memcpy(seg + WRAP_HEAD_BYTES, payload, n);
		memcpy(seg + WRAP_HEAD_BYTES + n, tail, 1);
		struct iovec v = { seg, len };
		struct msghdr m = { .msg_iov = &v, .msg_iovlen = 1 };
		send_all(fd, &m, len);
	}
	double t1 = thread_cpu_s();
	for (unsigned k = 0; k < SEND_OPS_PER_ROUND; k++) {
		memcpy(seg, head, WRAP_HEAD_BYTES); /* the header part is still built */
		struct iovec v[3] = { { seg, WRAP_HEAD_BYTES }, { (void *)payload, n }, { (void *)tail, 1 } };
		struct msghdr m = { .msg_iov = v, .msg_iovlen = 3 };
		send_all(fd, &m, len);
	}
	double t2 = thread_cpu_s();
	*copy = (t1 - t0) / SEND_OPS_PER_ROUND * 1e9;
	*iov3 = (t2 - t1) / SEND_OPS_PER_ROUND * 1e9;
}

static unsigned long arg_num(const char *flag, const char *v, unsigned long lo, unsigned long hi)
{
	char *end;
	errno = 0;
	unsigned long x = v ? strtoul(v, &end, 10) : 0;
	if (v == NULL || errno || *end || x < lo || x > hi) {
		fprintf(stderr, "copycost: %s wants a number from %lu to %lu\n", flag, lo, hi);
		exit(2);
	}
	return x;
}

int main(int argc, char **argv)
{
	size_t size = SIZE_DEFAULT_BYTES;
	unsigned rounds = ROUNDS_DEFAULT;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--size") == 0)
			size = arg_num("--size", i + 1 < argc ? argv[++i] : NULL, 64, SIZE_MAX_BYTES);
		else if (strcmp(argv[i], "--rounds") == 0)
			rounds = (unsigned)arg_num("--rounds", i + 1 < argc ? argv[++i] : NULL, 1, ROUNDS_MAX);
		else {
			fprintf(stderr, "usage: copycost [--size BYTES] [--rounds N]\n");
			return strcmp(argv[i], "--help") == 0 ? 0 : 2;
		}
	}
	pin(0);
	uint8_t *doc = malloc(size), *outbox = malloc(OUTBOX_BUFFERS * (size + 64)),
		*seg = malloc(WRAP_HEAD_BYTES + size + 1);
	double *jr = calloc(rounds, sizeof *jr), *sr = calloc(rounds, sizeof *sr);
	if (!doc || !outbox || !seg || !jr || !sr) {
		fprintf(stderr, "copycost: out of memory\n");
		return 1;
	}
	make_doc(doc, size);
	int rd, fd = loopback_pair(&rd);
	if (fd < 0) {
		fprintf(stderr, "copycost: loopback socket pair: %s\n", strerror(errno));
		return 1;
	}
	pthread_t t;
	if (pthread_create(&t, NULL, drain, &rd) != 0) {
		fprintf(stderr, "copycost: cannot start the reader\n");
		return 1;
	}
	printf("copycost: %zu-byte JSON payload, %u rounds; ns per operation, thread CPU time\n", size, rounds);
	for (unsigned r = 0; r < rounds; r++) {
		double two, one, copy, iov3;
		json_round(doc, size, outbox, &two, &one);
		send_round(fd, doc, size, seg, &copy, &iov3);
		jr[r] = two / one;
		sr[r] = iov3 / copy;
		printf("round %2u  json: valid+memcpy %7.1f  valid_copy %7.1f  (%.2fx)   send: copy+send %7.0f  "
		       "sendmsg(3 iov) %7.0f  (%.3f)\n",
		       r + 1, two, one, jr[r], copy, iov3, sr[r]);
	}
	shutdown(fd, SHUT_WR);
	pthread_join(t, NULL);
	printf("median: json_valid_copy is %.2fx faster than json_valid + memcpy; sendmsg of 3 iovecs costs %.3fx "
	       "copy + send\n",
	       median(jr, rounds), median(sr, rounds));
	close(fd);
	close(rd);
	free(doc);
	free(outbox);
	free(seg);
	free(jr);
	free(sr);
	return 0;
}
