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

/* Live sessions (protocol 2): the records and sockets of open WebSockets follow the
 * successor's READY in messages of at most this many bytes (below the unix socket's
 * default send buffer, ~208 KiB, so one record always fits) and
 * HANDOVER_FDS_PER_MESSAGE descriptors. */
#define HANDOVER_SESSION_MESSAGE_BYTES_MAX (160u * 1024u)
/* Sessions one hand-over carries at most (a bound on the successor's list). */
#define HANDOVER_SESSIONS_MAX (4u * 1024u * 1024u)
/* How long the predecessor's workers may take, after the quiesce, to stop reading the
 * sessions and write what they owe them; what is not ready by then is drained. */
#define HANDOVER_EXPORT_TIMEOUT_MS 2000
/* The successor waits this long beyond the quiesce and the export for the sessions. */
#define HANDOVER_SESSIONS_WAIT_MS (HANDOVER_QUIESCE_MS + HANDOVER_EXPORT_TIMEOUT_MS + HANDOVER_STEP_TIMEOUT_MS)

/* One live session in transit: its record (engine/session_record.h) and socket. */
struct handover_session {
	int fd;
	uint32_t len;
	uint8_t *record; /* malloc'd */
};
struct handover_sessions {
	struct handover_session *v;
	uint32_t n, cap;
};
/* Append (copying the record); false when out of memory or at HANDOVER_SESSIONS_MAX
 * (the fd is then still the caller's). */
bool handover_sessions_add(struct handover_sessions *s, int fd, const uint8_t *record, size_t len);
/* Free the records and close the descriptors still held (fd >= 0). */
void handover_sessions_free(struct handover_sessions *s);

/* The counts of the exchange: msg is exactly word, one space, and a decimal 1..max
 * without sign or leading zero. Pure (a parser over the peer's bytes). */
bool handover_parse_count(struct span msg, const char *word, uint32_t max, uint32_t *n);

/* Ask the relay serving path for its listeners and give them to net_adopt. Returns the
 * connection to it (for handover_finish), -1 when nobody serves path (start afresh),
 * or -2 with the reason in why. *count: listeners adopted. offer_sessions: speak
 * protocol 2 (false: 1, PYRYCODE_RELAY_HANDOVER_NO_SESSIONS=1, and the predecessor
 * drains its WebSockets 1001). *sessions: the predecessor will send its live sessions
 * after READY (both speak protocol 2). */
int handover_take(const char *path, bool offer_sessions, uint32_t *count, bool *sessions,
		  char why[HANDOVER_WHY_BYTES]);
/* Wait (bounded) until running(arg) holds, then tell the predecessor to stop
 * accepting. False (and the predecessor keeps serving) when running never held or the
 * predecessor is gone. Closes conn, unless it succeeded and keep_open (the sessions
 * follow: handover_receive_sessions). When the predecessor is our parent (SIGUSR2) and a
 * service manager listens, a thread says MAINPID=<us> once the predecessor has exited
 * (the unit needs NotifyAccess=all and ExitType=cgroup); n must outlive it. */
bool handover_finish(int conn, bool (*running)(void *arg), void *arg, const struct notifier *n, bool keep_open);
/* After handover_finish said READY on a protocol-2 exchange (handover_take's
 * *sessions): receive the predecessor's live sessions (bounded by
 * HANDOVER_SESSIONS_WAIT_MS) and give them to resume, which owns them then. Closes
 * conn. Returns the sessions received. */
uint32_t handover_receive_sessions(int conn, void (*resume)(void *arg, struct handover_sessions *s), void *arg);

struct handover_server;
/* Serve hand-overs at path (replacing whatever name is there). stop_accepting(arg) runs
 * on the server's thread once a successor is ready; HANDOVER_QUIESCE_MS later, if the
 * successor takes sessions, export(arg, out) collects the live ones (bounded by
 * HANDOVER_EXPORT_TIMEOUT_MS) and they are sent; then the server raises SIGTERM in
 * this process. NULL with why on failure. */
struct handover_server *handover_serve(const char *path, void (*stop_accepting)(void *arg),
				       void (*export)(void *arg, struct handover_sessions *out), void *arg,
				       char why[HANDOVER_WHY_BYTES]);
/* True once a successor took over (the drain that follows is not a stop of the service). */
bool handover_completed(const struct handover_server *s);
/* Stop the thread, close the socket (unlinking path unless a successor owns it). */
void handover_server_stop(struct handover_server *s);

/* SIGUSR2: start our successor (the binary at argv[0], or our own path) with our
 * arguments and environment. Logs the outcome. */
void handover_spawn(char *const argv[]);

#endif
