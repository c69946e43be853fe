/*
 * handover.c - the listener hand-over between a relay and its successor (handover.h).
 *
 * The exchange, on one SOCK_SEQPACKET connection to PATH:
 *   successor -> "PYRELAY-HANDOVER 2" (or 1: it takes no sessions)
 *   relay     -> "LISTENERS n" then messages of at most HANDOVER_FDS_PER_MESSAGE
 *                descriptors (SCM_RIGHTS) each, "FDS k", until n have been sent
 *   successor -> "READY" once every worker of its own runs on them
 * Protocol 2 goes on, after the relay's quiesce and its workers' export:
 *   relay     -> "SESSIONS n" (n may be 0), then messages each holding k records
 *                (engine/session_record.h) back to back and their k sockets, in the
 *                records' order, until n have been sent
 * A relay of protocol 1 only closes the connection at "PYRELAY-HANDOVER 2": the
 * successor then asks again with 1 (an upgrade from an older relay drains as before).
 * Anything else, a peer of another uid, or a step that times out ends the exchange;
 * the relay keeps serving (after READY: the sessions not sent are drained).
 */
#include "engine/handover.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "engine/net.h"
#include "engine/session_record.h"

#define HANDOVER_HELLO "PYRELAY-HANDOVER 1"
#define HANDOVER_HELLO_SESSIONS "PYRELAY-HANDOVER 2"
#define HANDOVER_TEXT_BYTES 64
#define HANDOVER_READY_POLL_MS 10
#define HANDOVER_BACKLOG 4

extern char **environ;

static bool path_fits(const char *path, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof *sa);
	sa->sun_family = AF_UNIX;
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof sa->sun_path)
		return false;
	memcpy(sa->sun_path, path, n);
	return true;
}

/* Wait until fd is readable, at most ms; false on timeout or error. */
static bool wait_readable(int fd, int stop_fd, int ms)
{
	struct pollfd p[2] = { { .fd = fd, .events = POLLIN }, { .fd = stop_fd, .events = POLLIN } };
	int n;
	do
		n = poll(p, stop_fd >= 0 ? 2 : 1, ms);
	while (n < 0 && errno == EINTR);
	return n > 0 && (p[0].revents & (POLLIN | POLLHUP)) && !(stop_fd >= 0 && p[1].revents);
}

/* One message of at most size - 1 bytes (NUL-terminated into buf) and any
 * descriptors it carries (appended to fds, at most cap in all). -1 on error or EOF. */
static ssize_t recv_bytes(int conn, void *buf, size_t size, int *fds, uint32_t *nfds, uint32_t cap)
{
	char *text = buf;
	union {
		char buf[CMSG_SPACE(HANDOVER_FDS_PER_MESSAGE * sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = text, .iov_len = size - 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf };
	ssize_t n;
	do
		n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		return -1;
	text[n] = '\0';
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		const unsigned char *data = CMSG_DATA(c);
		for (size_t i = 0; i < k; i++) {
			int fd;
			memcpy(&fd, data + i * sizeof fd, sizeof fd);
			if (fds != NULL && *nfds < cap)
				fds[(*nfds)++] = fd;
			else
				close(fd); /* more than announced: not ours to keep */
		}
	}
	if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
		return -1;
	return n;
}

static ssize_t recv_message(int conn, char text[HANDOVER_TEXT_BYTES], int *fds, uint32_t *nfds, uint32_t cap)
{
	return recv_bytes(conn, text, HANDOVER_TEXT_BYTES, fds, nfds, cap);
}

static bool send_bytes(int conn, const void *bytes, size_t len, const int *fds, uint32_t nfds);

static bool send_text(int conn, const char *text, const int *fds, uint32_t nfds)
{
	return send_bytes(conn, text, strlen(text), fds, nfds);
}

static bool send_bytes(int conn, const void *bytes, size_t len, const int *fds, uint32_t nfds)
{
	union {
		char buf[CMSG_SPACE(HANDOVER_FDS_PER_MESSAGE * sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = (void *)bytes, .iov_len = len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds > 0) {
		ASSERT(nfds <= HANDOVER_FDS_PER_MESSAGE);
		memset(ctl.buf, 0, sizeof ctl.buf);
		msg.msg_control = ctl.buf;
		msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
	}
	ssize_t n;
	do
		n = sendmsg(conn, &msg, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	return n == (ssize_t)iov.iov_len;
}

bool handover_parse_count(struct span msg, const char *word, uint32_t max, uint32_t *n)
{
	size_t w = strlen(word);
	if (msg.len < w + 2 || memcmp(msg.ptr, word, w) != 0 || msg.ptr[w] != ' ')
		return false;
	const uint8_t *d = (const uint8_t *)msg.ptr + w + 1;
	size_t len = msg.len - w - 1;
	if (d[0] == '0' || len > 10)
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < len; i++) {
		if (d[i] < '0' || d[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(d[i] - '0');
	}
	if (v == 0 || v > max)
		return false;
	*n = (uint32_t)v;
	return true;
}

bool handover_sessions_add(struct handover_sessions *s, int fd, const uint8_t *record, size_t len)
{
	if (s->n == s->cap) {
		if (s->cap >= HANDOVER_SESSIONS_MAX)
			return false;
		uint32_t cap = s->cap ? s->cap * 2 : 64;
		struct handover_session *v = realloc(s->v, (size_t)cap * sizeof *v);
		if (v == NULL)
			return false;
		s->v = v;
		s->cap = cap;
	}
	uint8_t *copy = malloc(len);
	if (copy == NULL)
		return false;
	memcpy(copy, record, len);
	s->v[s->n++] = (struct handover_session){ .fd = fd, .len = (uint32_t)len, .record = copy };
	return true;
}

void handover_sessions_free(struct handover_sessions *s)
{
	for (uint32_t i = 0; i < s->n; i++) {
		if (s->v[i].fd >= 0)
			close(s->v[i].fd);
		free(s->v[i].record);
	}
	free(s->v);
	*s = (struct handover_sessions){ 0 };
}

/* ------------------------------------------------------------------ successor */

static int take_once(const char *path, uint32_t *count, bool sessions, bool *refused, char why[HANDOVER_WHY_BYTES]);

int handover_take(const char *path, bool offer_sessions, uint32_t *count, bool *sessions,
		  char why[HANDOVER_WHY_BYTES])
{
	bool refused = false;
	*sessions = offer_sessions;
	int rc = take_once(path, count, *sessions, &refused, why);
	if (rc == -2 && refused && *sessions) {
		/* A predecessor of protocol 1 hung up at our hello: ask as it expects. */
		*sessions = false;
		rc = take_once(path, count, false, &refused, why);
	}
	return rc;
}

static int take_once(const char *path, uint32_t *count, bool sessions, bool *refused, char why[HANDOVER_WHY_BYTES])
{
	*count = 0;
	*refused = false;
	struct sockaddr_un sa;
	if (!path_fits(path, &sa)) {
		snprintf(why, HANDOVER_WHY_BYTES, "handover socket path too long for a unix socket");
		return -2;
	}
	int conn = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (conn < 0) {
		snprintf(why, HANDOVER_WHY_BYTES, "socket: %s", strerror(errno));
		return -2;
	}
	if (connect(conn, (struct sockaddr *)&sa, sizeof sa) != 0) {
		int e = errno;
		close(conn);
		if (e == ENOENT || e == ECONNREFUSED)
			return -1; /* nobody there (a stale name is replaced when we serve it) */
		snprintf(why, HANDOVER_WHY_BYTES, "connect %s: %s", path, strerror(e));
		return -2;
	}
	static int fds[NET_LISTENERS_MAX];
	uint32_t nfds = 0, want = 0;
	char text[HANDOVER_TEXT_BYTES];
	const char *fail = NULL;
	ssize_t len = -1;
	if (!send_text(conn, sessions ? HANDOVER_HELLO_SESSIONS : HANDOVER_HELLO, NULL, 0))
		fail = "the relay serving it closed the connection";
	else if (!wait_readable(conn, -1, HANDOVER_STEP_TIMEOUT_MS))
		fail = "no answer from the relay serving it";
	else if ((len = recv_message(conn, text, NULL, NULL, 0)) < 0)
		fail = "no answer from the relay serving it", *refused = true;
	else if (!handover_parse_count(span_make(text, (size_t)len), "LISTENERS", NET_LISTENERS_MAX, &want))
		fail = "the relay serving it speaks another hand-over protocol";
	while (fail == NULL && nfds < want) {
		uint32_t before = nfds, k = 0;
		if (!wait_readable(conn, -1, HANDOVER_STEP_TIMEOUT_MS) ||
		    (len = recv_message(conn, text, fds, &nfds, want)) < 0 ||
		    !handover_parse_count(span_make(text, (size_t)len), "FDS", HANDOVER_FDS_PER_MESSAGE, &k) ||
		    nfds - before != k)
			fail = "the listeners did not arrive";
	}
	if (fail != NULL) {
		for (uint32_t i = 0; i < nfds; i++)
			close(fds[i]);
		close(conn);
		snprintf(why, HANDOVER_WHY_BYTES, "%s", fail);
		return -2;
	}
	for (uint32_t i = 0; i < nfds; i++)
		if (!net_adopt(fds[i]))
			close(fds[i]);
	*count = nfds;
	return conn;
}

/* The successor a predecessor spawned (SIGUSR2) tells the service manager it is the
 * main process only once the predecessor has exited and the kernel has given us to
 * the manager (our parent changes): systemd then watches us as its own child. Told
 * while the predecessor lives, it would treat us as "not our child" and, on the next
 * stop, SIGKILL us right after SIGTERM instead of waiting for the drain. In between,
 * the unit's ExitType=cgroup keeps the service up while the predecessor drains. */
struct follower {
	pid_t predecessor;
	const struct notifier *n;
};

static void *follow_thread(void *arg)
{
	struct follower *f = arg;
	for (uint32_t waited = 0; waited < HANDOVER_FOLLOW_MS; waited += HANDOVER_READY_POLL_MS) {
		if (getppid() != f->predecessor) {
			char msg[48];
			snprintf(msg, sizeof msg, "MAINPID=%ld", (long)getpid());
			notify_send(f->n, msg);
			free(f);
			return NULL;
		}
		struct timespec ts = { 0, HANDOVER_READY_POLL_MS * 1000000L };
		nanosleep(&ts, NULL);
	}
	LOG_WARN("handover aborted", KV_STR("err", "the old relay did not exit; the service manager still names it"),
		 KV_STR("fix", "read the old relay's log"));
	free(f);
	return NULL;
}

bool handover_finish(int conn, bool (*running)(void *arg), void *arg, const struct notifier *n, bool keep_open)
{
	uint64_t deadline = monotonic_ms() + HANDOVER_READY_TIMEOUT_MS;
	while (!running(arg) && monotonic_ms() < deadline) {
		struct timespec ts = { 0, HANDOVER_READY_POLL_MS * 1000000L };
		nanosleep(&ts, NULL);
	}
	struct ucred cred;
	socklen_t len = sizeof cred;
	bool spawned = getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.pid == getppid();
	bool ok = running(arg) && send_text(conn, "READY", NULL, 0);
	if (!ok || !keep_open)
		close(conn);
	if (ok && spawned && notify_enabled(n)) {
		struct follower *f = malloc(sizeof *f);
		pthread_t tid;
		pthread_attr_t attr;
		if (f != NULL && pthread_attr_init(&attr) == 0) {
			*f = (struct follower){ .predecessor = cred.pid, .n = n };
			pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
			if (pthread_create(&tid, &attr, follow_thread, f) == 0)
				f = NULL;
			pthread_attr_destroy(&attr);
		}
		free(f);
	}
	return ok;
}

uint32_t handover_receive_sessions(int conn, void (*resume)(void *arg, struct handover_sessions *s), void *arg)
{
	static uint8_t buf[HANDOVER_SESSION_MESSAGE_BYTES_MAX + 1];
	static int fds[HANDOVER_FDS_PER_MESSAGE];
	struct handover_sessions got = { 0 };
	char text[HANDOVER_TEXT_BYTES];
	uint32_t want = 0;
	ssize_t len;
	const char *fail = NULL;
	if (!wait_readable(conn, -1, HANDOVER_SESSIONS_WAIT_MS) || (len = recv_message(conn, text, NULL, NULL, 0)) < 0)
		fail = "the old relay sent no sessions";
	else if (strcmp(text, "SESSIONS 0") != 0 &&
		 !handover_parse_count(span_make(text, (size_t)len), "SESSIONS", HANDOVER_SESSIONS_MAX, &want))
		fail = "the old relay sent something else than its sessions";
	while (fail == NULL && got.n < want) {
		uint32_t nfds = 0;
		if (!wait_readable(conn, -1, HANDOVER_STEP_TIMEOUT_MS) ||
		    (len = recv_bytes(conn, buf, sizeof buf, fds, &nfds, HANDOVER_FDS_PER_MESSAGE)) < 0) {
			fail = "the sessions did not arrive";
			for (uint32_t i = 0; i < nfds; i++)
				close(fds[i]);
			break;
		}
		/* Each record goes with the descriptor at its position; a message whose
		 * records and descriptors disagree ends the exchange. */
		size_t off = 0;
		uint32_t k = 0;
		while (off < (size_t)len && fail == NULL) {
			struct session_record r;
			size_t used = 0;
			if (session_record_parse(span_make(buf + off, (size_t)len - off), &r, &used) != SESSION_RECORD_OK ||
			    k >= nfds || got.n >= want)
				fail = "a session record was malformed";
			else if (!handover_sessions_add(&got, fds[k], buf + off, used))
				fail = "out of memory for the sessions";
			else
				k++, off += used;
		}
		if (fail == NULL && k != nfds)
			fail = "a session record was malformed";
		for (uint32_t i = k; i < nfds; i++)
			close(fds[i]);
	}
	close(conn);
	if (fail != NULL) {
		/* The ones received are still moved; the rest the old relay drains or loses. */
		LOG_WARN("handover aborted", KV_STR("err", fail), KV_STR("fix", "read the old relay's log"));
	}
	uint32_t n = got.n;
	if (n > 0)
		resume(arg, &got); /* owns them now */
	else
		handover_sessions_free(&got);
	return n;
}

/* ------------------------------------------------------------------ predecessor */

struct handover_server {
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int listen_fd;
	int stop_fd;
	pthread_t tid;
	void (*stop_accepting)(void *arg);
	void (*export)(void *arg, struct handover_sessions *out);
	void *arg;
	bool completed; /* atomic */
	bool sessions;  /* the successor takes live sessions (protocol 2) */
};

/* Send every listener we hold; false when the successor went away. */
static bool send_listeners(int conn)
{
	static int fds[NET_LISTENERS_MAX];
	static bool reuseport[NET_LISTENERS_MAX];
	uint32_t n = net_listeners(fds, reuseport, NET_LISTENERS_MAX);
	char text[HANDOVER_TEXT_BYTES];
	snprintf(text, sizeof text, "LISTENERS %u", n);
	if (n == 0 || !send_text(conn, text, NULL, 0))
		return false;
	/* From here the successor holds them: closing ours must never shutdown() them. */
	net_set_handed_over();
	for (uint32_t off = 0; off < n; off += HANDOVER_FDS_PER_MESSAGE) {
		uint32_t k = n - off < HANDOVER_FDS_PER_MESSAGE ? n - off : HANDOVER_FDS_PER_MESSAGE;
		snprintf(text, sizeof text, "FDS %u", k);
		if (!send_text(conn, text, fds + off, k))
			return false;
	}
	return true;
}

static bool peer_is_us(int conn)
{
	struct ucred cred;
	socklen_t len = sizeof cred;
	return getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && (cred.uid == geteuid() || cred.uid == 0);
}

/* One successor's exchange; true when it is ready and serving. */
static bool serve_one(struct handover_server *s, int conn)
{
	char text[HANDOVER_TEXT_BYTES];
	if (!peer_is_us(conn)) {
		LOG_WARN("handover refused", KV_STR("err", "the peer runs as another user"),
			 KV_STR("fix", "start the new relay as the user this one runs as"));
		return false;
	}
	if (!wait_readable(conn, s->stop_fd, HANDOVER_STEP_TIMEOUT_MS) || recv_message(conn, text, NULL, NULL, 0) < 0)
		return false;
	if (strcmp(text, HANDOVER_HELLO_SESSIONS) == 0 && s->export != NULL)
		s->sessions = true;
	else if (strcmp(text, HANDOVER_HELLO) == 0)
		s->sessions = false;
	else
		return false;
	if (!send_listeners(conn)) {
		LOG_WARN("handover aborted", KV_STR("err", "the new relay went away while the listeners were sent"));
		return false;
	}
	LOG_INFO("listeners sent to the new relay; waiting for it to serve");
	if (!wait_readable(conn, s->stop_fd, HANDOVER_READY_TIMEOUT_MS) || recv_message(conn, text, NULL, NULL, 0) < 0 ||
	    strcmp(text, "READY") != 0) {
		LOG_WARN("handover aborted", KV_STR("err", "the new relay did not start serving"),
			 KV_STR("fix", "read the new relay's log; this relay keeps serving"));
		return false;
	}
	return true;
}

/* Send the live sessions our workers exported, then close our copies of their sockets.
 * A failure part-way leaves the rest to close here: those clients see the connection
 * end without a close frame and reconnect. */
static void send_sessions(int conn, struct handover_sessions *ss)
{
	static uint8_t buf[HANDOVER_SESSION_MESSAGE_BYTES_MAX];
	static int fds[HANDOVER_FDS_PER_MESSAGE];
	char text[HANDOVER_TEXT_BYTES];
	snprintf(text, sizeof text, "SESSIONS %u", ss->n);
	bool ok = send_text(conn, text, NULL, 0);
	for (uint32_t i = 0; ok && i < ss->n;) {
		size_t len = 0;
		uint32_t k = 0;
		while (i + k < ss->n && k < HANDOVER_FDS_PER_MESSAGE &&
		       len + ss->v[i + k].len <= sizeof buf) {
			memcpy(buf + len, ss->v[i + k].record, ss->v[i + k].len);
			len += ss->v[i + k].len;
			fds[k] = ss->v[i + k].fd;
			k++;
		}
		ASSERT(k > 0); /* a record always fits a message (SESSION_RECORD_BYTES_MAX) */
		ok = send_bytes(conn, buf, len, fds, k);
		i += k;
	}
	if (ok)
		LOG_INFO("sessions handed over", KV_UINT("sessions", ss->n));
	else
		LOG_WARN("handover aborted", KV_STR("err", "the new relay went away while the sessions were sent"),
			 KV_STR("fix", "read the new relay's log; those clients reconnect"));
	handover_sessions_free(ss);
}

static void *server_thread(void *arg)
{
	struct handover_server *s = arg;
	int conn = -1;
	for (;;) {
		if (!wait_readable(s->listen_fd, s->stop_fd, -1))
			return NULL; /* stopped */
		conn = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (conn < 0)
			continue;
		if (serve_one(s, conn))
			break;
		close(conn);
	}
	/* The path names the successor's socket now (it replaced the name): ours goes. */
	__atomic_store_n(&s->completed, true, __ATOMIC_RELEASE);
	LOG_INFO("listeners handed over; draining");
	s->stop_accepting(s->arg);
	/* Connections accepted just before: their requests are still arriving. */
	struct timespec ts = { HANDOVER_QUIESCE_MS / 1000, (HANDOVER_QUIESCE_MS % 1000) * 1000000L };
	struct pollfd p = { .fd = s->stop_fd, .events = POLLIN };
	(void)poll(&p, 1, (int)(ts.tv_sec * 1000 + ts.tv_nsec / 1000000));
	if (s->sessions && !(p.revents & POLLIN)) {
		/* The upgrades in progress are done: the open WebSockets move (the others
		 * drain on the SIGTERM below, as on protocol 1). */
		struct handover_sessions ss = { 0 };
		s->export(s->arg, &ss);
		send_sessions(conn, &ss);
	}
	close(conn);
	kill(getpid(), SIGTERM);
	return NULL;
}

struct handover_server *handover_serve(const char *path, void (*stop_accepting)(void *arg),
				       void (*export)(void *arg, struct handover_sessions *out), void *arg,
				       char why[HANDOVER_WHY_BYTES])
{
	struct sockaddr_un sa, tmp;
	char tmp_path[sizeof sa.sun_path + 32];
	snprintf(tmp_path, sizeof tmp_path, "%s.%ld", path, (long)getpid());
	if (!path_fits(path, &sa) || !path_fits(tmp_path, &tmp)) {
		snprintf(why, HANDOVER_WHY_BYTES, "handover socket path too long for a unix socket");
		return NULL;
	}
	struct handover_server *s = calloc(1, sizeof *s);
	if (s == NULL) {
		snprintf(why, HANDOVER_WHY_BYTES, "out of memory");
		return NULL;
	}
	snprintf(s->path, sizeof s->path, "%s", path);
	s->stop_accepting = stop_accepting;
	s->export = export;
	s->arg = arg;
	s->stop_fd = eventfd(0, EFD_CLOEXEC);
	s->listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s->stop_fd < 0 || s->listen_fd < 0)
		goto fail_errno;
	/* Bound under a name of our own, made 0600, then renamed over path in one step:
	 * a successor's name replaces ours, never a window without one. */
	unlink(tmp_path);
	if (bind(s->listen_fd, (struct sockaddr *)&tmp, sizeof tmp) != 0 || chmod(tmp_path, 0600) != 0 ||
	    listen(s->listen_fd, HANDOVER_BACKLOG) != 0 || rename(tmp_path, path) != 0) {
		unlink(tmp_path);
		goto fail_errno;
	}
	if (pthread_create(&s->tid, NULL, server_thread, s) != 0) {
		unlink(path);
		snprintf(why, HANDOVER_WHY_BYTES, "cannot start the hand-over thread");
		goto fail;
	}
	return s;
fail_errno:
	snprintf(why, HANDOVER_WHY_BYTES, "handover socket %s: %s", path, strerror(errno));
fail:
	if (s->listen_fd >= 0)
		close(s->listen_fd);
	if (s->stop_fd >= 0)
		close(s->stop_fd);
	free(s);
	return NULL;
}

bool handover_completed(const struct handover_server *s)
{
	return s != NULL && __atomic_load_n(&s->completed, __ATOMIC_ACQUIRE);
}

void handover_server_stop(struct handover_server *s)
{
	if (s == NULL)
		return;
	uint64_t one = 1;
	(void)!write(s->stop_fd, &one, sizeof one);
	pthread_join(s->tid, NULL);
	if (!handover_completed(s)) {
		/* Still ours unless a successor renamed its own over it: compare inodes. */
		struct stat by_path, ours;
		if (stat(s->path, &by_path) == 0 && fstat(s->listen_fd, &ours) == 0 && by_path.st_ino == ours.st_ino)
			unlink(s->path);
	}
	close(s->listen_fd);
	close(s->stop_fd);
	free(s);
}

/* ------------------------------------------------------------------ SIGUSR2 */

void handover_spawn(char *const argv[])
{
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	} /* successors that failed earlier */
	char self[PATH_MAX];
	const char *path = argv[0];
	if (path[0] != '/') {
		/* The binary now at our path: /proc/self/exe names ours, " (deleted)" once
		 * an upgrade replaced it. */
		ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
		if (n <= 0) {
			LOG_ERROR("upgrade failed", KV_STR("err", "cannot find our own binary"),
				  KV_STR("fix", "start the relay with an absolute path"));
			return;
		}
		self[n] = '\0';
		char *del = strstr(self, " (deleted)");
		if (del != NULL && del[10] == '\0')
			*del = '\0';
		path = self;
	}
	/* The successor's watchdog is its own: it may not inherit our WATCHDOG_PID. */
	static char *envp[4096];
	size_t k = 0;
	for (char **e = environ; *e != NULL && k + 1 < sizeof envp / sizeof envp[0]; e++)
		if (strncmp(*e, "WATCHDOG_PID=", 13) != 0)
			envp[k++] = *e;
	envp[k] = NULL;
	posix_spawnattr_t attr;
	sigset_t none;
	sigemptyset(&none);
	posix_spawnattr_init(&attr);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
	pid_t pid;
	int rc = posix_spawn(&pid, path, NULL, &attr, argv, envp);
	posix_spawnattr_destroy(&attr);
	if (rc != 0) {
		LOG_ERROR("upgrade failed", KV_STR("err", strerror(rc)), KV_STR("path", path),
			  KV_STR("fix", "check that the binary at that path exists and is executable"));
		return;
	}
	LOG_INFO("upgrade: started the new relay", KV_STR("path", path), KV_INT("pid", pid));
}
