/*
 * notify.c - sd_notify(3) in a few lines (see notify.h): no libsystemd, so the relay
 * links nothing new and the protocol is the one systemd documents: one datagram, lines
 * of KEY=VALUE, to $NOTIFY_SOCKET.
 */
#include "core/notify.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define USEC_PER_MS 1000ull
#define NSEC_PER_USEC 1000ull
#define USEC_PER_SEC 1000000ull
/* Ping at half the interval, as sd_watchdog_enabled(3) advises: one late or lost
 * datagram does not kill a healthy relay. */
#define WATCHDOG_PING_DIVISOR 2u

/* A positive decimal that fits in 64 bits; anything else is "not set". */
static bool parse_u64(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (s == NULL || *s == '\0')
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		unsigned d = (unsigned)(*s - '0');
		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

void notify_init(struct notifier *n, const char *notify_socket, const char *watchdog_usec,
		 const char *watchdog_pid, pid_t self)
{
	memset(n, 0, sizeof *n);
	n->fd = -1;
	if (notify_socket == NULL || (notify_socket[0] != '/' && notify_socket[0] != '@'))
		return;
	size_t len = strlen(notify_socket);
	if (len < 2 || len > sizeof n->addr.sun_path - 1)
		return;
	n->addr.sun_family = AF_UNIX;
	memcpy(n->addr.sun_path, notify_socket, len);
	if (notify_socket[0] == '@') {
		/* Abstract: the name is exactly len bytes starting with NUL, no terminator. */
		n->addr.sun_path[0] = '\0';
		n->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
	} else {
		n->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
	}
	n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (n->fd < 0)
		return;

	uint64_t usec, pid;
	if (parse_u64(watchdog_usec, &usec) && usec > 0 &&
	    (watchdog_pid == NULL || (parse_u64(watchdog_pid, &pid) && pid == (uint64_t)self)))
		n->watchdog_usec = usec;
}

void notify_init_from_env(struct notifier *n)
{
	notify_init(n, getenv("NOTIFY_SOCKET"), getenv("WATCHDOG_USEC"), getenv("WATCHDOG_PID"), getpid());
}

bool notify_enabled(const struct notifier *n)
{
	return n->fd >= 0;
}

bool notify_send(const struct notifier *n, const char *state)
{
	if (n->fd < 0)
		return true;
	size_t len = strlen(state);
	ASSERT(len > 0 && len <= NOTIFY_MESSAGE_BYTES_MAX);
	for (;;) {
		ssize_t w = sendto(n->fd, state, len, MSG_DONTWAIT | MSG_NOSIGNAL,
				   (const struct sockaddr *)&n->addr, n->addr_len);
		if (w >= 0)
			return (size_t)w == len;
		if (errno != EINTR)
			return false;
	}
}

static uint64_t monotonic_usec(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * USEC_PER_SEC + (uint64_t)ts.tv_nsec / NSEC_PER_USEC;
}

int notify_wait_signal(const struct notifier *n, const sigset_t *sigs, bool (*ready)(void *arg),
		       bool (*alive)(void *arg), void *arg)
{
	bool is_ready = false;
	uint64_t ping_every = n->watchdog_usec / WATCHDOG_PING_DIVISOR;
	uint64_t next_ping = 0;

	for (;;) {
		uint64_t now = monotonic_usec();
		if (!is_ready && ready(arg)) {
			is_ready = true;
			notify_send(n, "READY=1");
			next_ping = now; /* the first ping at once: it also says "alive" */
		}
		if (is_ready && ping_every > 0 && now >= next_ping) {
			if (alive(arg))
				notify_send(n, "WATCHDOG=1");
			next_ping = now + ping_every;
		}

		struct timespec ts, *tsp = NULL;
		uint64_t wait_usec = 0;
		bool bounded = true;
		if (!is_ready)
			wait_usec = NOTIFY_READY_POLL_MS * USEC_PER_MS;
		else if (ping_every > 0)
			wait_usec = next_ping - now;
		else
			bounded = false;
		if (bounded) {
			ts.tv_sec = (time_t)(wait_usec / USEC_PER_SEC);
			ts.tv_nsec = (long)(wait_usec % USEC_PER_SEC * NSEC_PER_USEC);
			tsp = &ts;
		}
		int sig = sigtimedwait(sigs, NULL, tsp);
		if (sig > 0)
			return sig;
		/* EAGAIN: the timeout passed; EINTR: a signal outside the set. Loop. */
	}
}

void notify_close(struct notifier *n)
{
	if (n->fd >= 0)
		close(n->fd);
	n->fd = -1;
}
