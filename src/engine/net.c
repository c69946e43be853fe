#include "engine/net.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int net_listen(const char *addr, int backlog, bool reuseport, char why[URING_WHY_BYTES])
{
	/* Go's net.Listen semantics: "host:port", "[v6]:port", ":port" (all interfaces). */
	char host[256];
	const char *colon = strrchr(addr, ':');
	if (colon == NULL) {
		snprintf(why, URING_WHY_BYTES, "listen address %s has no port", addr);
		return -1;
	}
	size_t hlen = (size_t)(colon - addr);
	if (hlen >= sizeof host) {
		snprintf(why, URING_WHY_BYTES, "listen address host too long");
		return -1;
	}
	memcpy(host, addr, hlen);
	host[hlen] = '\0';
	if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
		memmove(host, host + 1, hlen - 2);
		host[hlen - 2] = '\0';
	}
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE, .ai_family = AF_UNSPEC };
	struct addrinfo *res = NULL;
	int gai = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &res);
	if (gai != 0) {
		snprintf(why, URING_WHY_BYTES, "resolve listen address %s: %s", addr, gai_strerror(gai));
		return -1;
	}
	/* With an empty host prefer the IPv6 wildcard (dual stack), like Go. */
	struct addrinfo *pick = res;
	if (!host[0]) {
		for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
			if (ai->ai_family == AF_INET6) {
				pick = ai;
				break;
			}
		}
	}
	int fd = socket(pick->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(why, URING_WHY_BYTES, "socket: %s", strerror(errno));
		freeaddrinfo(res);
		return -1;
	}
	int one = 1, zero = 0;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (reuseport)
		setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
	if (pick->ai_family == AF_INET6 && !host[0])
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
	if (bind(fd, pick->ai_addr, pick->ai_addrlen) < 0 || listen(fd, backlog) < 0) {
		snprintf(why, URING_WHY_BYTES, "listen tcp %s: %s", addr, strerror(errno));
		close(fd);
		freeaddrinfo(res);
		return -1;
	}
	freeaddrinfo(res);
	return fd;
}
