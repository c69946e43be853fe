/*
 * fuzz_notify.c - libFuzzer target for the environment values core/notify.c reads:
 * $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID (the service manager's, but any
 * operator or wrapper script can set them).
 *
 * Input: byte 0 bits 0-2: which of the three variables are unset (NULL); bytes 1-4:
 * our pid (little endian, as a pid_t); the rest: the three values, separated by NUL
 * bytes (missing ones are empty).
 *
 * Oracles, against the rule in notify.h read directly:
 * - notification is on exactly when the socket value starts with '/' or '@' and is 2
 *   to sizeof(sun_path) - 1 bytes long; then the address is AF_UNIX with the path
 *   copied byte for byte (a leading '@' becoming the NUL of an abstract name) and the
 *   length covering the path, plus its NUL for a filesystem path; off, the notifier is
 *   all zero with fd -1, and a send "succeeds" without doing anything;
 * - the watchdog interval is set exactly when notification is on, WATCHDOG_USEC is a
 *   positive decimal (digits only) that fits in 64 bits, and WATCHDOG_PID is unset or
 *   the same kind of decimal equal to our pid.
 * Nothing is ever sent to a socket that is on: the fuzzer may name a real one.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/notify.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_HEAD_BYTES 5
#define FZ_VARS 3

static char *fz_cstr(const uint8_t *p, size_t n)
{
	char *s = malloc(n + 1);
	if (!s)
		abort();
	memcpy(s, p, n);
	s[n] = '\0';
	return s;
}

/* Digits only, at least one, no overflow: the value, else false. */
static bool ref_decimal(const char *s, unsigned __int128 *v)
{
	if (s == NULL || *s == '\0')
		return false;
	unsigned __int128 x = 0;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		x = x * 10 + (unsigned)(*s - '0');
		if (x > UINT64_MAX)
			return false;
	}
	*v = x;
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < FZ_HEAD_BYTES)
		return 0;
	uint8_t unset = data[0];
	pid_t self = (pid_t)((uint32_t)data[1] | (uint32_t)data[2] << 8 | (uint32_t)data[3] << 16 |
			     (uint32_t)data[4] << 24);
	const uint8_t *p = data + FZ_HEAD_BYTES;
	size_t n = size - FZ_HEAD_BYTES;

	char *val[FZ_VARS];
	size_t start = 0;
	for (size_t v = 0; v < FZ_VARS; v++) {
		const uint8_t *nul = start < n ? memchr(p + start, '\0', n - start) : NULL;
		size_t end = nul ? (size_t)(nul - p) : n;
		val[v] = fz_cstr(p + start, start < n ? end - start : 0);
		start = end + 1;
	}
	const char *sock = (unset & 1) ? NULL : val[0];
	const char *usec = (unset & 2) ? NULL : val[1];
	const char *pid = (unset & 4) ? NULL : val[2];

	struct notifier nt;
	memset(&nt, 0xA5, sizeof nt);
	notify_init(&nt, sock, usec, pid, self);

	size_t sun_max = sizeof nt.addr.sun_path - 1;
	size_t len = sock ? strlen(sock) : 0;
	bool want_on = sock && (sock[0] == '/' || sock[0] == '@') && len >= 2 && len <= sun_max;
	if (!want_on) {
		ASSERT(!notify_enabled(&nt) && nt.fd == -1);
		ASSERT(nt.addr_len == 0 && nt.watchdog_usec == 0);
		ASSERT(notify_send(&nt, "READY=1"));
	} else if (notify_enabled(&nt)) { /* socket(2) itself may fail: then it is off */
		ASSERT(nt.addr.sun_family == AF_UNIX);
		if (sock[0] == '@') {
			ASSERT(nt.addr.sun_path[0] == '\0' && memcmp(nt.addr.sun_path + 1, sock + 1, len - 1) == 0);
			ASSERT(nt.addr_len == offsetof(struct sockaddr_un, sun_path) + len);
		} else {
			ASSERT(memcmp(nt.addr.sun_path, sock, len + 1) == 0);
			ASSERT(nt.addr_len == offsetof(struct sockaddr_un, sun_path) + len + 1);
		}
		unsigned __int128 u = 0, w = 0;
		bool want_dog = ref_decimal(usec, &u) && u > 0 &&
				(pid == NULL || (ref_decimal(pid, &w) && w == (unsigned __int128)(uint64_t)self));
		ASSERT(nt.watchdog_usec == (want_dog ? (uint64_t)u : 0));
	} else {
		ASSERT(nt.watchdog_usec == 0);
	}
	notify_close(&nt);
	ASSERT(nt.fd == -1);
	for (size_t v = 0; v < FZ_VARS; v++)
		free(val[v]);
	return 0;
}
