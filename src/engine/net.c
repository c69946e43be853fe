#include "engine/net.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/addr.h"

int net_listen(const char *addr, int backlog, bool reuseport, char why[URING_WHY_BYTES])
{
	/* The same parser as the boot checks, so what config_check accepted is exactly
	 * what is bound here; with IP literals only, no resolver is involved. */
	struct listen_addr a;
	enum addr_error e = addr_parse_listen(addr, true, &a);
	if (e != ADDR_OK) {
		snprintf(why, URING_WHY_BYTES, "listen address %s: %s", addr, addr_error_text(e));
		return -1;
	}
	/* An empty host is every interface: the IPv6 wildcard with IPV6_V6ONLY off, so
	 * one socket serves both families (dual stack), as Go does. */
	bool wildcard = a.host[0] == '\0';
	union {
		struct sockaddr sa;
		struct sockaddr_in v4;
		struct sockaddr_in6 v6;
	} sa;
	socklen_t sa_len;
	memset(&sa, 0, sizeof sa);
	if (a.is_ipv6 || wildcard) {
		sa.v6.sin6_family = AF_INET6;
		sa.v6.sin6_port = htons(a.port);
		memcpy(&sa.v6.sin6_addr, a.ip, sizeof sa.v6.sin6_addr); /* all zero: in6addr_any */
		sa_len = sizeof sa.v6;
	} else {
		sa.v4.sin_family = AF_INET;
		sa.v4.sin_port = htons(a.port);
		memcpy(&sa.v4.sin_addr, a.ip, sizeof sa.v4.sin_addr);
		sa_len = sizeof sa.v4;
	}
	int fd = socket(sa.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
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
	return fd;
}
