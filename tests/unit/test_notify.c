/*
 * test_notify.c - the sd_notify protocol against a fake service manager: a unix
 * datagram socket bound where $NOTIFY_SOCKET points (a path, then an abstract name),
 * read back datagram by datagram. Also which $NOTIFY_SOCKET / $WATCHDOG_* values turn
 * the notifier and the watchdog on, and the READY / WATCHDOG sequence of
 * notify_wait_signal.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/notify.h"

/* How long a test waits for a datagram that must be there already. */
#define RECV_TIMEOUT_MS 1000
/* A 20 ms watchdog: pings every 10 ms, so a test sees several in well under a second. */
#define TEST_WATCHDOG_USEC "20000"
#define PINGS_WANTED 4

struct manager {
	int fd;
	char name[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* what $NOTIFY_SOCKET holds */
	char dir[64];
};

static void manager_open(struct manager *m, bool abstract)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	socklen_t len;

	memset(m, 0, sizeof *m);
	m->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(m->fd >= 0);
	if (abstract) {
		snprintf(m->name, sizeof m->name, "@pyrelay-test-notify-%ld", (long)getpid());
		memcpy(a.sun_path, m->name, strlen(m->name));
		a.sun_path[0] = '\0';
		len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(m->name));
	} else {
		snprintf(m->dir, sizeof m->dir, "/tmp/pyrelay-notify-XXXXXX");
		assert_non_null(mkdtemp(m->dir));
		snprintf(m->name, sizeof m->name, "%s/notify", m->dir);
		memcpy(a.sun_path, m->name, strlen(m->name) + 1);
		len = (socklen_t)sizeof a;
	}
	assert_int_equal(bind(m->fd, (struct sockaddr *)&a, len), 0);
	struct timeval tv = { .tv_sec = RECV_TIMEOUT_MS / 1000, .tv_usec = RECV_TIMEOUT_MS % 1000 * 1000 };
	assert_int_equal(setsockopt(m->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
}

static void manager_close(struct manager *m)
{
	close(m->fd);
	if (m->dir[0]) {
		unlink(m->name);
		rmdir(m->dir);
	}
}

/* The next datagram, NUL-terminated; "" when none came within RECV_TIMEOUT_MS. */
static const char *manager_recv(struct manager *m, char *buf, size_t cap)
{
	ssize_t n = recv(m->fd, buf, cap - 1, 0);
	buf[n > 0 ? n : 0] = '\0';
	return buf;
}

static bool manager_empty(struct manager *m)
{
	char c;
	return recv(m->fd, &c, 1, MSG_DONTWAIT) < 0;
}

static void sends_to(bool abstract)
{
	struct manager m;
	struct notifier n;
	char buf[NOTIFY_MESSAGE_BYTES_MAX + 1];

	manager_open(&m, abstract);
	notify_init(&n, m.name, NULL, NULL, getpid());
	assert_true(notify_enabled(&n));
	assert_int_equal(n.watchdog_usec, 0);
	assert_true(notify_send(&n, "READY=1"));
	assert_true(notify_send(&n, "STOPPING=1\nSTATUS=draining"));
	assert_string_equal(manager_recv(&m, buf, sizeof buf), "READY=1");
	assert_string_equal(manager_recv(&m, buf, sizeof buf), "STOPPING=1\nSTATUS=draining");
	assert_true(manager_empty(&m));
	notify_close(&n);
	assert_false(notify_enabled(&n));
	manager_close(&m);
}

static void test_path_socket(void **state)
{
	(void)state;
	sends_to(false);
}

static void test_abstract_socket(void **state)
{
	(void)state;
	sends_to(true);
}

static void test_unusable_socket_turns_notification_off(void **state)
{
	(void)state;
	char too_long[sizeof(((struct sockaddr_un *)0)->sun_path) + 8];
	memset(too_long, 'a', sizeof too_long - 1);
	too_long[0] = '/';
	too_long[sizeof too_long - 1] = '\0';
	const char *bad[] = { NULL, "", "/", "@", "relative/notify", "vsock:2:1234", too_long };

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct notifier n;
		notify_init(&n, bad[i], "1000000", NULL, getpid());
		assert_false(notify_enabled(&n));
		assert_int_equal(n.watchdog_usec, 0);
		assert_true(notify_send(&n, "READY=1")); /* a no-op that succeeds */
		notify_close(&n);
	}
}

static void test_watchdog_variables(void **state)
{
	(void)state;
	struct manager m;
	char self[32], other[32];
	snprintf(self, sizeof self, "%ld", (long)getpid());
	snprintf(other, sizeof other, "%ld", (long)getpid() + 1);
	const struct {
		const char *usec, *pid;
		uint64_t want;
	} cases[] = {
		{ "20000000", NULL, 20000000 },
		{ "20000000", self, 20000000 },
		{ "20000000", other, 0 }, /* meant for another process (our parent's child) */
		{ "20000000", "x", 0 },
		{ "0", NULL, 0 },
		{ "", NULL, 0 },
		{ "-5", NULL, 0 },
		{ "12abc", NULL, 0 },
		{ "99999999999999999999999", NULL, 0 }, /* over 64 bits */
		{ NULL, NULL, 0 },
	};

	manager_open(&m, true);
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct notifier n;
		notify_init(&n, m.name, cases[i].usec, cases[i].pid, getpid());
		assert_true(notify_enabled(&n));
		assert_int_equal(n.watchdog_usec, cases[i].want);
		notify_close(&n);
	}
	manager_close(&m);
}

/* Callbacks for notify_wait_signal: ready from the third poll on; alive as told; the
 * signal is raised (pending, since it is blocked) after enough alive calls. */
struct wait_state {
	int ready_calls;
	int alive_calls;
	bool alive;
	int stop_after_alive_calls;
};

static bool cb_ready(void *arg)
{
	struct wait_state *s = arg;
	return ++s->ready_calls >= 3;
}

static bool cb_alive(void *arg)
{
	struct wait_state *s = arg;
	if (++s->alive_calls >= s->stop_after_alive_calls)
		kill(getpid(), SIGUSR1);
	return s->alive;
}

static void wait_sequence(bool alive)
{
	struct manager m;
	struct notifier n;
	char buf[NOTIFY_MESSAGE_BYTES_MAX + 1];
	sigset_t sigs;
	struct wait_state s = { .alive = alive, .stop_after_alive_calls = PINGS_WANTED };

	sigemptyset(&sigs);
	sigaddset(&sigs, SIGUSR1);
	assert_int_equal(sigprocmask(SIG_BLOCK, &sigs, NULL), 0);
	manager_open(&m, false);
	notify_init(&n, m.name, TEST_WATCHDOG_USEC, NULL, getpid());
	assert_int_equal(n.watchdog_usec, 20000);

	assert_int_equal(notify_wait_signal(&n, &sigs, cb_ready, cb_alive, &s), SIGUSR1);
	assert_int_equal(s.ready_calls, 3); /* not asked again once ready */
	assert_int_equal(s.alive_calls, PINGS_WANTED);
	assert_string_equal(manager_recv(&m, buf, sizeof buf), "READY=1");
	for (int i = 0; alive && i < PINGS_WANTED; i++)
		assert_string_equal(manager_recv(&m, buf, sizeof buf), "WATCHDOG=1");
	assert_true(manager_empty(&m)); /* a relay that is not alive withholds every ping */

	notify_close(&n);
	manager_close(&m);
	assert_int_equal(sigprocmask(SIG_UNBLOCK, &sigs, NULL), 0);
}

static void test_wait_sends_ready_then_watchdog_pings(void **state)
{
	(void)state;
	wait_sequence(true);
}

static void test_wait_withholds_pings_when_not_alive(void **state)
{
	(void)state;
	wait_sequence(false);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_path_socket),
		cmocka_unit_test(test_abstract_socket),
		cmocka_unit_test(test_unusable_socket_turns_notification_off),
		cmocka_unit_test(test_watchdog_variables),
		cmocka_unit_test(test_wait_sends_ready_then_watchdog_pings),
		cmocka_unit_test(test_wait_withholds_pings_when_not_alive),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
