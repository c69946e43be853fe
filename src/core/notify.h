/*
 * notify.h - the service manager's readiness protocol (sd_notify(3)), without
 * libsystemd: one datagram of "KEY=VALUE\n" lines to the unix socket named by
 * $NOTIFY_SOCKET. systemd's Type=notify units use it to learn when the relay serves
 * (READY=1), when it drains (STOPPING=1) and that it is alive (WATCHDOG=1 with
 * WatchdogSec=).
 *
 * Contract:
 * - $NOTIFY_SOCKET is a path ("/run/systemd/notify") or an abstract name ("@name",
 *   the '@' standing for the leading NUL). Anything else (unset, empty, relative,
 *   "vsock:...", too long for sun_path) disables notification: every send is then a
 *   no-op that reports success, so a relay started by hand behaves as before.
 * - The watchdog is on when $WATCHDOG_USEC is a positive decimal and $WATCHDOG_PID is
 *   unset or our own pid (systemd sets it so that children do not ping for us).
 * - Sends never block (MSG_DONTWAIT) and never raise SIGPIPE; a failed send is
 *   reported to the caller, which logs nothing per ping: a manager that stopped
 *   listening restarts us through the watchdog anyway.
 * - notify_wait_signal runs on the control thread only (it uses sigtimedwait on a set
 *   the caller blocked in every thread).
 */
#ifndef PYRELAY_NOTIFY_H
#define PYRELAY_NOTIFY_H

#include <signal.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include "core/common.h"

/* The longest message this module sends ("STATUS=..." included). */
#define NOTIFY_MESSAGE_BYTES_MAX 256

struct notifier {
	int fd;                   /* -1: notification off */
	struct sockaddr_un addr;
	socklen_t addr_len;
	uint64_t watchdog_usec;   /* 0: no watchdog */
};

/* From the three variables' values (each may be NULL) and our pid. Never fails: an
 * unusable $NOTIFY_SOCKET leaves the notifier off. Opens one socket when on. */
void notify_init(struct notifier *n, const char *notify_socket, const char *watchdog_usec,
		 const char *watchdog_pid, pid_t self);
/* The same from the process environment. */
void notify_init_from_env(struct notifier *n);
bool notify_enabled(const struct notifier *n);

/* Send state ("READY=1", "STOPPING=1\nSTATUS=draining", ...). True when sent or
 * when notification is off; false when the datagram could not be sent. */
bool notify_send(const struct notifier *n, const char *state);

/* Wait for one of sigs (blocked by the caller) and return it. Until then: poll
 * ready(arg) every NOTIFY_READY_POLL_MS and send READY=1 the first time it holds; once
 * ready, send WATCHDOG=1 every half watchdog interval while alive(arg) holds (a false
 * alive withholds the ping, so the manager's watchdog fires). Without a notifier or a
 * watchdog it simply waits for the signal. */
#define NOTIFY_READY_POLL_MS 10
int notify_wait_signal(const struct notifier *n, const sigset_t *sigs, bool (*ready)(void *arg),
		       bool (*alive)(void *arg), void *arg);

void notify_close(struct notifier *n);

#endif
