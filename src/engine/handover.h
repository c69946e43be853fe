/*
 * handover.h - zero-downtime restart: the listening sockets move from a running relay
 * to its successor over a unix socket (SCM_RIGHTS), ADR 0018.
 *
 * A relay started with --handover-socket PATH first asks whoever serves PATH for its
 * listeners (handover_take). Nobody there: it binds as usual. Someone there: it adopts
 * every listener it is sent (engine/net.h matches them to its own addresses), starts its
 * workers on them, and once they all run tells the predecessor (handover_finish). The
 * predecessor then stops accepting (its workers' descriptors close, never shutdown:
 * the sockets and their accept queues are the successor's now), serves what it had
 * accepted for HANDOVER_QUIESCE_MS, and drains as on SIGTERM. The successor serves PATH
 * in turn (handover_serve). No socket ever leaves LISTEN, so no dial is refused and no
 * queued connection is reset.
 *
 * SIGUSR2 (handover_spawn) starts the successor from the binary now at our own path
 * with our arguments: the in-place upgrade, also under systemd (MAINPID moves to it
 * once the predecessor has exited).
 *
 * Contract:
 * - Control thread only, except the server's own thread. Peers must have our uid (or
 *   be root): checked with SO_PEERCRED. PATH is created 0600.
 * - Bounded: every wait has a timeout (HANDOVER_*_MS); a successor that fails before
 *   it says ready leaves the predecessor serving as before.
 */
#ifndef PYRELAY_HANDOVER_H
#define PYRELAY_HANDOVER_H

#include "core/common.h"
#include "core/notify.h"

#define HANDOVER_WHY_BYTES 160
/* How long the successor may take from receiving the listeners to saying ready. */
#define HANDOVER_READY_TIMEOUT_MS 30000
/* Each request/response step of the exchange. */
#define HANDOVER_STEP_TIMEOUT_MS 5000
/* After the successor is ready, the predecessor keeps serving the connections it had
 * accepted (their requests still arriving) this long before it drains. */
#define HANDOVER_QUIESCE_MS 2000
/* How long a spawned successor waits for its predecessor to exit before it names
 * itself the service's main process (handover_finish). */
#define HANDOVER_FOLLOW_MS 60000
/* File descriptors per message (the kernel's SCM_MAX_FD is 253). */
#define HANDOVER_FDS_PER_MESSAGE 240u

/* The counts of the exchange: msg is exactly word, one space, and a decimal 1..max
 * without sign or leading zero. Pure (a parser over the peer's bytes). */
bool handover_parse_count(struct span msg, const char *word, uint32_t max, uint32_t *n);

/* Ask the relay serving path for its listeners and give them to net_adopt. Returns the
 * connection to it (for handover_finish), -1 when nobody serves path (start afresh),
 * or -2 with the reason in why. *count: listeners adopted. */
int handover_take(const char *path, uint32_t *count, char why[HANDOVER_WHY_BYTES]);
/* Wait (bounded) until running(arg) holds, then tell the predecessor to stop
 * accepting. False (and the predecessor keeps serving) when running never held or the
 * predecessor is gone. Closes conn. When the predecessor is our parent (SIGUSR2) and a
 * service manager listens, a thread says MAINPID=<us> once the predecessor has exited
 * (the unit needs NotifyAccess=all and ExitType=cgroup); n must outlive it. */
bool handover_finish(int conn, bool (*running)(void *arg), void *arg, const struct notifier *n);

struct handover_server;
/* Serve hand-overs at path (replacing whatever name is there). stop_accepting(arg) runs
 * on the server's thread once a successor is ready; HANDOVER_QUIESCE_MS later the
 * server raises SIGTERM in this process. NULL with why on failure. */
struct handover_server *handover_serve(const char *path, void (*stop_accepting)(void *arg), void *arg,
				       char why[HANDOVER_WHY_BYTES]);
/* True once a successor took over (the drain that follows is not a stop of the service). */
bool handover_completed(const struct handover_server *s);
/* Stop the thread, close the socket (unlinking path unless a successor owns it). */
void handover_server_stop(struct handover_server *s);

/* SIGUSR2: start our successor (the binary at argv[0], or our own path) with our
 * arguments and environment. Logs the outcome. */
void handover_spawn(char *const argv[]);

#endif
