#include "metrics/metrics_server.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "control/acme.h"
#include "core/clock.h"
#include "core/log.h"
#include "engine/net.h"
#include "http/http_head.h"
#include "http/http_respond.h"

#define METRICS_RING_ENTRIES 64u
#define METRICS_LISTEN_BACKLOG 64
#define METRICS_HEAD_BYTES_MAX 256u
#define METRICS_PROC_STAT_BYTES_MAX 4096u

enum { OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_WAKE, OP_IGNORE };

/* The listener after a hand-over (stop_accepting). */
enum { SWEEP_NONE, SWEEP_AFTER_CANCEL, SWEEP_RUNNING, SWEEP_DONE };

enum mconn_state { MC_FREE = 0, MC_READING, MC_WRITING, MC_DEAD };

struct mconn {
	int fd;
	uint32_t gen;
	uint8_t state;
	bool recv_inflight;
	bool send_inflight;
	bool close_after; /* the response in flight is the last one */
	uint16_t requests;
	uint32_t req_len;
	uint64_t deadline_ms;
	char *resp; /* malloc'd while a response is being sent */
	size_t resp_len;
	size_t resp_off;
	uint8_t req[METRICS_REQUEST_BYTES_MAX];
};

struct metrics_server {
	struct io_uring ring;
	bool ring_ready;
	int listen_fd;
	bool accept_armed;
	uint64_t accept_retry_ms; /* after a failed accept: not before this */
	int wake_fd;
	uint64_t wake_value;
	bool stop_requested;       /* atomic: metrics_server_stop */
	bool accept_off_requested; /* atomic: metrics_server_stop_accepting */
	uint8_t sweep;             /* after a hand-over: SWEEP_* (stop_accepting) */
	bool stopping;
	uint64_t now_ms;
	const char *version;
	double start_time_seconds;
	uint64_t handler_errors[METRICS_ERR_COUNT];
	struct metrics_source workers[METRICS_WORKERS_MAX];
	const int64_t *tls_cert_not_after_s; /* NULL: TLS off */
	bool proxy_protocol;
	uint32_t nworkers;
	const uint64_t *push_wakes; /* FCM_OUTCOME_COUNT cells, or NULL: push off */
	const struct autocert_stats *acme; /* --domain mode, or NULL */
	metrics_challenge_lookup challenge; /* non-NULL: the HTTP-01 listener, no /metrics */
	void *challenge_ctx;
	char *body; /* METRICS_BODY_BYTES_MAX scratch for one exposition */
	struct mconn conns[METRICS_CONNECTIONS_MAX];
};

/* ------------------------------------------------------------------ /proc */

static bool count_open_fds(uint64_t *n)
{
	DIR *d = opendir("/proc/self/fd");
	if (d == NULL)
		return false;
	uint64_t count = 0;
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		if (e->d_name[0] != '.')
			count++;
	}
	closedir(d);
	*n = count > 0 ? count - 1 : 0; /* the directory's own descriptor */
	return true;
}

/* /proc/self/stat fields after the command name: utime(14) stime(15) vsize(23) rss(24). */
static bool read_proc_stat(struct metrics_process *p)
{
	char buf[METRICS_PROC_STAT_BYTES_MAX];
	int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	char *s = strrchr(buf, ')'); /* the command name may hold spaces and ')' */
	if (s == NULL)
		return false;
	unsigned long long utime = 0, stime = 0, vsize = 0;
	long long rss = 0;
	int got = sscanf(s + 1,
			 " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d %*u %llu %lld",
			 &utime, &stime, &vsize, &rss);
	long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
	if (got != 4 || ticks <= 0 || page <= 0 || rss < 0)
		return false;
	p->cpu_seconds = (double)(utime + stime) / (double)ticks;
	p->virtual_bytes = vsize;
	p->resident_bytes = (uint64_t)rss * (uint64_t)page;
	return true;
}

void metrics_read_process(struct metrics_process *p, uint64_t *gathering_errors)
{
	p->fds_ok = count_open_fds(&p->open_fds);
	struct rlimit rl;
	if (p->fds_ok && getrlimit(RLIMIT_NOFILE, &rl) == 0)
		p->max_fds = rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_cur;
	else
		p->fds_ok = false;
	p->rss_ok = read_proc_stat(p);
	if (!p->fds_ok || !p->rss_ok)
		(*gathering_errors)++;
}

/* ------------------------------------------------------------------ set-up */

struct metrics_server *metrics_server_create(const char *addr, const struct metrics_source *workers,
					     uint32_t nworkers, const char *version, double start_time_seconds,
					     char why[URING_WHY_BYTES])
{
	if (nworkers > METRICS_WORKERS_MAX) {
		snprintf(why, URING_WHY_BYTES, "metrics: at most %u workers", METRICS_WORKERS_MAX);
		return NULL;
	}
	struct metrics_server *m = calloc(1, sizeof *m);
	if (m == NULL || (m->body = malloc(METRICS_BODY_BYTES_MAX)) == NULL) {
		snprintf(why, URING_WHY_BYTES, "metrics: out of memory");
		free(m);
		return NULL;
	}
	m->listen_fd = m->wake_fd = -1;
	m->version = version;
	m->start_time_seconds = start_time_seconds;
	if (nworkers > 0)
		memcpy(m->workers, workers, nworkers * sizeof *workers);
	m->nworkers = nworkers;
	for (uint32_t i = 0; i < METRICS_CONNECTIONS_MAX; i++)
		m->conns[i].fd = -1;
	m->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (m->wake_fd < 0) {
		snprintf(why, URING_WHY_BYTES, "metrics: eventfd: %s", strerror(errno));
		metrics_server_destroy(m);
		return NULL;
	}
	m->listen_fd = net_listen(addr, METRICS_LISTEN_BACKLOG, false, why);
	if (m->listen_fd < 0) {
		metrics_server_destroy(m);
		return NULL;
	}
	return m;
}

void metrics_server_set_tls(struct metrics_server *m, const int64_t *cert_not_after_s)
{
	m->tls_cert_not_after_s = cert_not_after_s;
}

void metrics_server_set_proxy_protocol(struct metrics_server *m)
{
	m->proxy_protocol = true;
}

void metrics_server_destroy(struct metrics_server *m)
{
	if (m == NULL)
		return;
	if (m->listen_fd >= 0)
		close(m->listen_fd);
	if (m->wake_fd >= 0)
		close(m->wake_fd);
	for (uint32_t i = 0; i < METRICS_CONNECTIONS_MAX; i++) {
		if (m->conns[i].fd >= 0)
			close(m->conns[i].fd);
		free(m->conns[i].resp);
	}
	free(m->body);
	free(m);
}

void metrics_server_stop(struct metrics_server *m)
{
	__atomic_store_n(&m->stop_requested, true, __ATOMIC_RELEASE);
	uint64_t one = 1;
	ssize_t n = write(m->wake_fd, &one, sizeof one);
	(void)n; /* a full counter still wakes the reader */
}

/* ------------------------------------------------------------------ ring ops */

static struct io_uring_sqe *get_sqe(struct metrics_server *m)
{
	return uring_get_sqe(&m->ring);
}

static void arm_accept(struct metrics_server *m)
{
	if (m->accept_armed || m->stopping || m->sweep != SWEEP_NONE || m->listen_fd < 0 ||
	    m->now_ms < m->accept_retry_ms)
		return;
	struct io_uring_sqe *sqe = get_sqe(m);
	io_uring_prep_accept(sqe, m->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, UD(OP_ACCEPT, 0, 0));
	m->accept_armed = true;
}

/* A successor serves the listener (engine/handover.h): stop accepting, keep serving
 * the connections we have until the drain. Our accept waits on the listener as an
 * exclusive waiter; one cancelled while a connection arrives can end without taking
 * it, and the successor is not woken for it (ADR 0018). So once the cancelled accept
 * has ended, one more accept takes what is queued and is cancelled at once (queued
 * behind the successor's, it is not the one woken); then the descriptor closes. */
static void stop_accepting(struct metrics_server *m)
{
	if (m->sweep != SWEEP_NONE || m->listen_fd < 0)
		return;
	if (!m->accept_armed) {
		m->sweep = SWEEP_DONE;
		close(m->listen_fd);
		m->listen_fd = -1;
		return;
	}
	m->sweep = SWEEP_AFTER_CANCEL;
	struct io_uring_sqe *sqe = get_sqe(m);
	io_uring_prep_cancel64(sqe, UD(OP_ACCEPT, 0, 0), 0);
	io_uring_sqe_set_data64(sqe, UD(OP_IGNORE, 0, 0));
}

/* The accept ended while stopping to accept (see stop_accepting). */
static void sweep_listener(struct metrics_server *m)
{
	if (m->listen_fd < 0)
		return;
	if (m->sweep == SWEEP_AFTER_CANCEL && !m->stopping) {
		m->sweep = SWEEP_RUNNING;
		uring_prep_accept_sweep(&m->ring, m->listen_fd, UD(OP_ACCEPT, 0, 0), UD(OP_IGNORE, 0, 0), false);
		m->accept_armed = true;
		return;
	}
	m->sweep = SWEEP_DONE;
	close(m->listen_fd);
	m->listen_fd = -1;
}

void metrics_server_stop_accepting(struct metrics_server *m)
{
	__atomic_store_n(&m->accept_off_requested, true, __ATOMIC_RELEASE);
	uint64_t one = 1;
	ssize_t n = write(m->wake_fd, &one, sizeof one);
	(void)n; /* a full counter still wakes the reader */
}

static void arm_wake(struct metrics_server *m)
{
	struct io_uring_sqe *sqe = get_sqe(m);
	io_uring_prep_read(sqe, m->wake_fd, &m->wake_value, sizeof m->wake_value, 0);
	io_uring_sqe_set_data64(sqe, UD(OP_WAKE, 0, 0));
}

static void arm_recv(struct metrics_server *m, struct mconn *c, uint32_t idx)
{
	ASSERT(!c->recv_inflight && c->req_len < sizeof c->req);
	struct io_uring_sqe *sqe = get_sqe(m);
	io_uring_prep_recv(sqe, c->fd, c->req + c->req_len, sizeof c->req - c->req_len, 0);
	io_uring_sqe_set_data64(sqe, UD(OP_RECV, idx, c->gen));
	c->recv_inflight = true;
}

static void arm_send(struct metrics_server *m, struct mconn *c, uint32_t idx)
{
	ASSERT(!c->send_inflight && c->resp_off < c->resp_len);
	struct io_uring_sqe *sqe = get_sqe(m);
	io_uring_prep_send(sqe, c->fd, c->resp + c->resp_off, c->resp_len - c->resp_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, UD(OP_SEND, idx, c->gen));
	c->send_inflight = true;
}

/* Stop using c: the fd is closed once no operation on it is in flight. */
static void conn_kill(struct mconn *c)
{
	if (c->state == MC_FREE)
		return;
	if (c->state != MC_DEAD) {
		c->state = MC_DEAD;
		shutdown(c->fd, SHUT_RDWR); /* completes in-flight recv/send */
	}
	if (c->recv_inflight || c->send_inflight)
		return;
	close(c->fd);
	free(c->resp);
	*c = (struct mconn){ .fd = -1, .gen = c->gen + 1, .state = MC_FREE };
}

/* ------------------------------------------------------------------ HTTP */

static bool set_response(struct mconn *c, const char *head, size_t head_len, const char *body, size_t body_len)
{
	ASSERT(c->resp == NULL);
	c->resp = malloc(head_len + body_len);
	if (c->resp == NULL)
		return false;
	memcpy(c->resp, head, head_len);
	if (body_len)
		memcpy(c->resp + head_len, body, body_len);
	c->resp_len = head_len + body_len;
	c->resp_off = 0;
	return true;
}

static bool respond_canned(struct mconn *c, enum http_canned which, bool head_only)
{
	char buf[HTTP_RESPONSE_BYTES_MAX];
	unsigned flags = (c->close_after ? HTTP_RESP_CLOSE : 0u) | (head_only ? HTTP_RESP_HEAD : 0u);
	size_t n = http_write_canned(buf, sizeof buf, which, flags);
	return set_response(c, buf, n, NULL, 0);
}

static bool respond_metrics(struct metrics_server *m, struct mconn *c, bool head_only)
{
	struct metrics_process proc = { .start_time_seconds = m->start_time_seconds };
	metrics_read_process(&proc, &m->handler_errors[METRICS_ERR_GATHERING]);
	struct prom_out o;
	prom_out_init(&o, m->body, METRICS_BODY_BYTES_MAX);
	struct metrics_input in = {
		.workers = m->workers,
		.nworkers = m->nworkers,
		.version = m->version,
		.process = &proc,
		.handler_errors = m->handler_errors,
		.tls_cert_not_after_s = m->tls_cert_not_after_s,
		.proxy_protocol = m->proxy_protocol,
		.push_wakes = m->push_wakes,
		.acme = m->acme,
	};
	metrics_render(&o, &in);
	char head[METRICS_HEAD_BYTES_MAX];
	if (o.overflow) {
		/* The reference's handler answers an encoding error with a 500. */
		m->handler_errors[METRICS_ERR_ENCODING]++;
		static const char msg[] = "An error has occurred while serving metrics.\n";
		c->close_after = true;
		int n = snprintf(head, sizeof head,
				 "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
				 "Connection: close\r\nContent-Length: %zu\r\n\r\n",
				 sizeof msg - 1);
		return set_response(c, head, (size_t)n, msg, head_only ? 0 : sizeof msg - 1);
	}
	int n = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Type: " PROM_CONTENT_TYPE "\r\n%sContent-Length: %zu\r\n\r\n",
			 c->close_after ? "Connection: close\r\n" : "", o.len);
	ASSERT(n > 0 && (size_t)n < sizeof head);
	return set_response(c, head, (size_t)n, m->body, head_only ? 0 : o.len);
}

#define CHALLENGE_PREFIX "/.well-known/acme-challenge/"

/* The HTTP-01 listener: the key authorization of a published token, else 404. */
static bool respond_challenge(struct metrics_server *m, struct mconn *c, struct span path, bool head_only)
{
	static const size_t plen = sizeof CHALLENGE_PREFIX - 1;
	char body[ACME_KEY_AUTH_BYTES];
	if (path.len <= plen || memcmp(path.ptr, CHALLENGE_PREFIX, plen) != 0 ||
	    !m->challenge(m->challenge_ctx, span_make(path.ptr + plen, path.len - plen), body, sizeof body))
		return respond_canned(c, HTTP_CANNED_NOT_FOUND, head_only);
	size_t n = strlen(body);
	char head[METRICS_HEAD_BYTES_MAX];
	int hn = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n%sContent-Length: %zu\r\n\r\n",
			  c->close_after ? "Connection: close\r\n" : "", n);
	ASSERT(hn > 0 && (size_t)hn < sizeof head);
	return set_response(c, head, (size_t)hn, body, head_only ? 0 : n);
}

/* Parse and answer the request at the start of c->req, if it is complete. */
static void serve(struct metrics_server *m, struct mconn *c, uint32_t idx)
{
	struct http_request req;
	enum http_canned refusal;
	enum http_head_status st = http_head_parse(c->req, c->req_len, sizeof c->req, &req, &refusal);
	if (st == HTTP_HEAD_INCOMPLETE) {
		uint64_t head_deadline_ms = http_head_deadline_ms(m->now_ms, c->req_len);
		if (c->req_len > 0 && c->deadline_ms > head_deadline_ms)
			c->deadline_ms = head_deadline_ms; /* a head began */
		arm_recv(m, c, idx);
		return;
	}
	bool ok;
	if (st == HTTP_HEAD_REFUSED) {
		c->close_after = true;
		ok = respond_canned(c, refusal, false);
		c->req_len = 0;
	} else {
		c->close_after = http_head_closes(&req, ++c->requests, m->stopping);
		bool head_only = http_request_is_head(&req); /* every answer: headers only */
		if (m->challenge != NULL)
			ok = respond_challenge(m, c, req.path, head_only);
		else if (span_eq_cstr(req.path, "/metrics"))
			ok = respond_metrics(m, c, head_only);
		else
			ok = respond_canned(c, HTTP_CANNED_NOT_FOUND, head_only);
		/* Keep pipelined bytes for the next round (none when a body makes us close). */
		c->req_len = c->close_after ? 0 : http_head_consume(c->req, c->req_len, req.head_bytes);
	}
	if (!ok) {
		m->handler_errors[METRICS_ERR_ENCODING]++;
		conn_kill(c);
		return;
	}
	c->state = MC_WRITING;
	c->deadline_ms = m->now_ms + METRICS_WRITE_TIMEOUT_MS;
	arm_send(m, c, idx);
}

/* ------------------------------------------------------------------ completions */

static void on_accept(struct metrics_server *m, int fd)
{
	m->accept_armed = false;
	if (m->sweep == SWEEP_AFTER_CANCEL || m->sweep == SWEEP_RUNNING)
		sweep_listener(m);
	if (fd < 0) {
		/* EMFILE and friends repeat at once: retry on a later tick, never spin. */
		m->accept_retry_ms = m->now_ms + METRICS_TICK_MS;
		return;
	}
	if (m->stopping) {
		close(fd);
		return;
	}
	for (uint32_t i = 0; i < METRICS_CONNECTIONS_MAX; i++) {
		struct mconn *c = &m->conns[i];
		if (c->state != MC_FREE)
			continue;
		*c = (struct mconn){ .fd = fd, .gen = c->gen, .state = MC_READING,
				     .deadline_ms = m->now_ms + HTTP_HEADER_READ_TIMEOUT_MS };
		arm_recv(m, c, i);
		return;
	}
	close(fd); /* every slot busy: a scraper never needs more */
}

static void on_recv(struct metrics_server *m, struct mconn *c, uint32_t idx, int res)
{
	c->recv_inflight = false;
	if (c->state != MC_READING || res <= 0) {
		conn_kill(c);
		return;
	}
	c->req_len += (uint32_t)res;
	serve(m, c, idx);
}

static void on_send(struct metrics_server *m, struct mconn *c, uint32_t idx, int res)
{
	c->send_inflight = false;
	if (c->state != MC_WRITING || res <= 0) {
		if (res < 0 && c->state == MC_WRITING)
			m->handler_errors[METRICS_ERR_ENCODING]++;
		conn_kill(c);
		return;
	}
	c->resp_off += (size_t)res;
	if (c->resp_off < c->resp_len) {
		arm_send(m, c, idx);
		return;
	}
	free(c->resp);
	c->resp = NULL;
	c->resp_len = c->resp_off = 0;
	if (c->close_after) {
		conn_kill(c);
		return;
	}
	c->state = MC_READING;
	c->deadline_ms = http_head_deadline_ms(m->now_ms, c->req_len);
	serve(m, c, idx);
}

static void handle_cqe(struct metrics_server *m, const struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	unsigned op = UD_OP(ud);
	if (op == OP_ACCEPT) {
		on_accept(m, cqe->res);
		return;
	}
	if (op == OP_WAKE) {
		if (__atomic_load_n(&m->stop_requested, __ATOMIC_ACQUIRE)) {
			m->stopping = true;
			return;
		}
		if (__atomic_load_n(&m->accept_off_requested, __ATOMIC_ACQUIRE))
			stop_accepting(m);
		arm_wake(m);
		return;
	}
	if (op != OP_RECV && op != OP_SEND)
		return;
	uint32_t idx = UD_IDX(ud);
	ASSERT(idx < METRICS_CONNECTIONS_MAX);
	struct mconn *c = &m->conns[idx];
	ASSERT(c->state != MC_FREE && UD_GEN(ud) == (c->gen & 0xffffffu));
	if (op == OP_RECV)
		on_recv(m, c, idx, cqe->res);
	else
		on_send(m, c, idx, cqe->res);
}

static void expire(struct metrics_server *m)
{
	for (uint32_t i = 0; i < METRICS_CONNECTIONS_MAX; i++) {
		struct mconn *c = &m->conns[i];
		if (c->state == MC_READING || c->state == MC_WRITING) {
			if (m->now_ms >= c->deadline_ms || (m->stopping && c->state == MC_READING))
				conn_kill(c);
		} else if (c->state == MC_DEAD) {
			conn_kill(c); /* closes once its operations completed */
		}
	}
}

static bool any_conn(const struct metrics_server *m)
{
	for (uint32_t i = 0; i < METRICS_CONNECTIONS_MAX; i++)
		if (m->conns[i].state != MC_FREE)
			return true;
	return false;
}

void metrics_server_set_acme(struct metrics_server *m, const struct autocert_stats *acme)
{
	m->acme = acme;
}

struct metrics_server *metrics_server_create_challenge(const char *addr, metrics_challenge_lookup lookup, void *ctx,
						       char why[URING_WHY_BYTES])
{
	struct metrics_server *m = metrics_server_create(addr, NULL, 0, "", 0, why);
	if (m != NULL) {
		m->challenge = lookup;
		m->challenge_ctx = ctx;
	}
	return m;
}

void metrics_server_set_push(struct metrics_server *m, const uint64_t *push_wakes)
{
	m->push_wakes = push_wakes;
}

bool metrics_server_run(struct metrics_server *m, char why[URING_WHY_BYTES])
{
	int rc = io_uring_queue_init(METRICS_RING_ENTRIES, &m->ring, 0);
	if (rc < 0) {
		snprintf(why, URING_WHY_BYTES, "metrics: io_uring_queue_init: %s", strerror(-rc));
		return false;
	}
	m->ring_ready = true;
	m->now_ms = monotonic_ms();
	arm_wake(m);
	uint64_t stop_deadline_ms = 0;
	bool ok = true;
	for (;;) {
		arm_accept(m);
		if (m->stopping) {
			if (stop_deadline_ms == 0) {
				stop_deadline_ms = m->now_ms + METRICS_STOP_DRAIN_MS;
				/* Listeners close at once on drain (reference §7.6); one handed
				 * over is the successor's too: cancel our accept, close our fd. */
				if (net_handed_over()) {
					if (m->accept_armed) {
						struct io_uring_sqe *sqe = get_sqe(m);
						io_uring_prep_cancel64(sqe, UD(OP_ACCEPT, 0, 0), 0);
						io_uring_sqe_set_data64(sqe, UD(OP_IGNORE, 0, 0));
					}
					if (m->listen_fd >= 0)
						close(m->listen_fd);
					m->listen_fd = -1;
				} else {
					shutdown(m->listen_fd, SHUT_RDWR);
				}
				for (uint32_t i = 0; i < METRICS_CONNECTIONS_MAX; i++)
					if (m->conns[i].state == MC_READING)
						conn_kill(&m->conns[i]);
			}
			if ((!any_conn(m) && !m->accept_armed) || m->now_ms >= stop_deadline_ms)
				break;
		}
		struct __kernel_timespec ts = { .tv_sec = 0, .tv_nsec = METRICS_TICK_MS * 1000000ll };
		struct io_uring_cqe *cqe = NULL;
		rc = io_uring_submit_and_wait_timeout(&m->ring, &cqe, 1, &ts, NULL);
		if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN) {
			snprintf(why, URING_WHY_BYTES, "metrics: io_uring_enter: %s", strerror(-rc));
			ok = false;
			break;
		}
		m->now_ms = monotonic_ms();
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&m->ring, head, cqe)
		{
			handle_cqe(m, cqe);
			seen++;
		}
		io_uring_cq_advance(&m->ring, seen);
		expire(m);
	}
	io_uring_queue_exit(&m->ring); /* cancels what is still in flight */
	m->ring_ready = false;
	return ok;
}
