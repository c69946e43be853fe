/*
 * migrate.h - live WebSocket sessions from a relay to its successor (ADR 0018, "Live
 * WebSocket sessions across the upgrade"); the hand-over itself is engine/handover.h.
 *
 * Predecessor (after the quiesce, on the hand-over thread): migrate_export asks every
 * worker to stop reading its movable sessions and collects, bounded by
 * HANDOVER_EXPORT_TIMEOUT_MS, one record (engine/session_record.h) and socket per
 * session the workers gave up.
 * Successor (main thread, once the sessions arrived): migrate_resume gives each to the
 * worker that owns its server-id through the cross-worker handoff (struct upgraded,
 * IORING_OP_MSG_RING from a small ring of its own), binaries first, so the phones find
 * their binary registered.
 */
#ifndef PYRELAY_MIGRATE_H
#define PYRELAY_MIGRATE_H

#include "engine/group.h"
#include "engine/handover.h"

struct worker;

/* Slack beyond a worker's own export deadline before the collection closes: a worker
 * that reports later drains its sessions instead. */
#define MIGRATE_COLLECT_SLACK_MS 500
/* The successor waits at most this long for its workers to register the binaries
 * before it sends the phones. */
#define MIGRATE_BINARIES_WAIT_MS 2000
/* Ring entries of the successor's sending ring (one message at a time). */
#define MIGRATE_RING_ENTRIES 8u

void migrate_export(struct worker *const *workers, uint32_t n, struct handover_sessions *out);
/* A worker hands its exported sessions over (fds and records move into the
 * collection); false when the collection closed already (the caller drains them). */
bool migrate_collect_open(void);
void migrate_collect(struct handover_sessions *mine);
/* Takes s (frees it). Returns the sessions handed to a worker. */
uint32_t migrate_resume(struct worker_group *g, struct handover_sessions *s);

#endif
