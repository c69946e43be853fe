#include "engine/net.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/addr.h"

union net_sa {
	struct sockaddr sa;
	struct sockaddr_in v4;
	struct sockaddr_in6 v6;
};

/* The socket address a listener on addr binds to. */
static bool sockaddr_of(const char *addr, union net_sa *sa, socklen_t *sa_len, bool *wildcard,
		       char why[URING_WHY_BYTES])
{
	/* The same parser as the boot checks, so what config_check accepted is exactly
	 * what is bound here; with IP literals only, no resolver is involved. */
	struct listen_addr a;
	enum addr_error e = addr_parse_listen(addr, true, &a);
	if (e != ADDR_OK) {
		snprintf(why, URING_WHY_BYTES, "listen address %s: %s", addr, addr_error_text(e));
		return false;
	}
	/* An empty host is every interface: the IPv6 wildcard with IPV6_V6ONLY off, so
	 * one socket serves both families (dual stack), as Go does. */
	memset(sa, 0, sizeof *sa);
	*wildcard = a.host[0] == '\0';
	if (a.is_ipv6 || *wildcard) {
		sa->v6.sin6_family = AF_INET6;
		sa->v6.sin6_port = htons(a.port);
		memcpy(&sa->v6.sin6_addr, a.ip, sizeof sa->v6.sin6_addr); /* all zero: in6addr_any */
		*sa_len = sizeof sa->v6;
	} else {
		sa->v4.sin_family = AF_INET;
		sa->v4.sin_port = htons(a.port);
		memcpy(&sa->v4.sin_addr, a.ip, sizeof sa->v4.sin_addr);
		*sa_len = sizeof sa->v4;
	}
	return true;
}

static int adopted_match(const void *sa, socklen_t sa_len, bool reuseport);
static void record(int fd, bool reuseport);

int net_listen(const char *addr, int backlog, bool reuseport, char why[URING_WHY_BYTES])
{
	union net_sa sa;
	socklen_t sa_len;
	bool wildcard;
	if (!sockaddr_of(addr, &sa, &sa_len, &wildcard, why))
		return -1;
	int fd = adopted_match(&sa, sa_len, reuseport);
	if (fd >= 0) {
		(void)listen(fd, backlog); /* already listening: only the backlog may change */
		record(fd, reuseport);
		return fd;
	}
	fd = socket(sa.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(why, URING_WHY_BYTES, "socket: %s", strerror(errno));
		return -1;
	}
	int one = 1, zero = 0;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (reuseport)
		setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
	if (wildcard)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
	if (bind(fd, &sa.sa, sa_len) < 0 || listen(fd, backlog) < 0) {
		snprintf(why, URING_WHY_BYTES, "listen tcp %s: %s", addr, strerror(errno));
		close(fd);
		return -1;
	}
	record(fd, reuseport);
	return fd;
}

/* ------------------------------------------------------------------ hand-over */

static struct {
	int adopted[NET_LISTENERS_MAX];
	uint32_t nadopted;
	int held[NET_LISTENERS_MAX];
	bool held_reuseport[NET_LISTENERS_MAX];
	uint32_t nheld;
	bool handed_over; /* atomic */
} net;

static void record(int fd, bool reuseport)
{
	if (net.nheld < NET_LISTENERS_MAX) {
		net.held[net.nheld] = fd;
		net.held_reuseport[net.nheld++] = reuseport;
	}
}

bool net_adopt(int fd)
{
	if (net.nadopted >= NET_LISTENERS_MAX)
		return false;
	net.adopted[net.nadopted++] = fd;
	return true;
}

static bool sockaddr_same(const struct sockaddr_storage *a, socklen_t alen, const void *b, socklen_t blen)
{
	if (alen != blen)
		return false;
	if (a->ss_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const void *)a, *y = b;
		return y->sin6_family == AF_INET6 && x->sin6_port == y->sin6_port &&
		       memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
	}
	const struct sockaddr_in *x = (const void *)a, *y = b;
	return y->sin_family == AF_INET && x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
}

/* The adopted listener bound to sa with this SO_REUSEPORT setting, taken out of the
 * table, or -1. */
static int adopted_match(const void *sa, socklen_t sa_len, bool reuseport)
{
	for (uint32_t i = 0; i < net.nadopted; i++) {
		struct sockaddr_storage got;
		socklen_t got_len = sizeof got;
		int rp = 0;
		socklen_t rp_len = sizeof rp;
		int fd = net.adopted[i];
		if (getsockname(fd, (struct sockaddr *)&got, &got_len) != 0 ||
		    getsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &rp, &rp_len) != 0)
			continue;
		if ((rp != 0) != reuseport || !sockaddr_same(&got, got_len, sa, sa_len))
			continue;
		net.adopted[i] = net.adopted[--net.nadopted];
		return fd;
	}
	return -1;
}

int net_take_adopted(const char *addr)
{
	union net_sa sa;
	socklen_t sa_len;
	char why[URING_WHY_BYTES];
	bool wildcard;
	if (!sockaddr_of(addr, &sa, &sa_len, &wildcard, why))
		return -1;
	int fd = adopted_match(&sa, sa_len, true);
	if (fd >= 0)
		record(fd, true);
	return fd;
}

uint32_t net_close_adopted(void)
{
	uint32_t n = net.nadopted;
	for (uint32_t i = 0; i < n; i++)
		close(net.adopted[i]); /* no shutdown: the predecessor may still serve it */
	net.nadopted = 0;
	return n;
}

uint32_t net_listeners(int *fds, bool *reuseport, uint32_t cap)
{
	uint32_t n = net.nheld < cap ? net.nheld : cap;
	memcpy(fds, net.held, n * sizeof *fds);
	memcpy(reuseport, net.held_reuseport, n * sizeof *reuseport);
	return n;
}

void net_set_handed_over(void)
{
	__atomic_store_n(&net.handed_over, true, __ATOMIC_RELEASE);
}

bool net_handed_over(void)
{
	return __atomic_load_n(&net.handed_over, __ATOMIC_ACQUIRE);
}
