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
 *
 * Listener hand-over (engine/handover.h, ADR 0018): sockets received from the previous
 * relay are given to net_adopt before anything binds; net_listen then returns an
 * adopted socket bound to exactly that address (and with the same SO_REUSEPORT
 * setting) instead of binding a new one, so the kernel's accept queue and the port
 * stay the same. net_take_adopted hands out adopted sockets left over (the previous
 * relay had more workers), net_close_adopted closes what nobody took. Every listener
 * this process holds is recorded (net_listeners) so it can be handed on in turn.
 * After net_set_handed_over, listeners are shared with the successor: whoever closes
 * one must not shutdown() it (that would stop the successor's listener too).
 */
#ifndef PYRELAY_NET_H
#define PYRELAY_NET_H

#include "core/common.h"
#include "engine/uring.h"

/* Listeners one process holds: a public one per worker (and as many as a predecessor
 * with more workers had) and the metrics one. */
#define NET_LISTENERS_MAX 512u

int net_listen(const char *addr, int backlog, bool reuseport, char why[URING_WHY_BYTES]);

/* Control thread, before the first net_listen. False when the table is full. */
bool net_adopt(int fd);
/* An adopted listener bound to addr (reuseport ones only) that net_listen left over,
 * or -1. Recorded like a bound one. */
int net_take_adopted(const char *addr);
/* Close the adopted sockets nobody took; returns how many. */
uint32_t net_close_adopted(void);

/* The listeners this process holds, in the order they were bound or adopted (worker
 * 0's first); reuseport[i] says which are public (SO_REUSEPORT) ones. */
uint32_t net_listeners(int *fds, bool *reuseport, uint32_t cap);
/* The listeners now belong to a successor too (thread-safe flag). */
void net_set_handed_over(void);
bool net_handed_over(void);

#endif
