/*
 * net.h - listening sockets (control plane, start-up only).
 *
 * net_listen takes Go's net.Listen address forms: "host:port", "[v6]:port" and
 * ":port" (every interface, IPv6 dual stack preferred, as Go does). reuseport lets
 * several workers each hold a listener on one port; a listener that must be unique
 * (the metrics one) passes false, so a second relay on the same port fails to bind
 * instead of silently sharing it. Returns the fd, or -1 with the cause in why.
 */
#ifndef PYRELAY_NET_H
#define PYRELAY_NET_H

#include "core/common.h"
#include "engine/uring.h"

int net_listen(const char *addr, int backlog, bool reuseport, char why[URING_WHY_BYTES]);

#endif
