/*
 * net.h - listening sockets (control plane, start-up only).
 *
 * net_listen takes the listener address forms of core/addr.h, parsed by the same
 * addr_parse_listen the boot checks use: "IP:PORT", "[IPv6]:PORT" and ":PORT" (every
 * interface: the IPv6 wildcard with IPV6_V6ONLY off, so both families, as Go does).
 * Hosts are IP literals; names are refused, never resolved (config_check has refused
 * them before anything binds). reuseport lets several workers each hold a listener on
 * one port; a listener that must be unique (the metrics one) passes false, so a second
 * relay on the same port fails to bind instead of silently sharing it. Returns the fd,
 * or -1 with the cause in why.
 */
#ifndef PYRELAY_NET_H
#define PYRELAY_NET_H

#include "core/common.h"
#include "engine/uring.h"

int net_listen(const char *addr, int backlog, bool reuseport, char why[URING_WHY_BYTES]);

#endif
