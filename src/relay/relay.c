/* Temporary admission-only relay: replaced by the registry (issue 3). */
#include "engine/worker.h"

#include <stdlib.h>

#include "core/log.h"

struct relay_shard {
	int unused;
};

struct relay_shard *relay_shard_create(struct worker *w)
{
	return calloc(1, sizeof(struct relay_shard));
}

void relay_shard_destroy(struct relay_shard *s)
{
	free(s);
}

int relay_admit(struct worker *w, struct conn *c, enum http_route route, const struct http_request *req)
{
	if (w->ws_counted >= w->cfg->max_connections)
		return HTTP_CANNED_EMPTY_503;
	c->counted = true;
	w->ws_counted++;
	return -1;
}

void relay_rejected_headers(struct worker *w, struct conn *c, enum http_route route) {}
void relay_open(struct worker *w, struct conn *c, enum http_route route, const struct http_request *req) {}
void relay_message(struct worker *w, struct conn *c, uint8_t opcode, struct span data) {}
void relay_pong(struct worker *w, struct conn *c, struct span payload) {}
void relay_items_written(struct worker *w, struct conn *c, uint32_t n) {}
void relay_end(struct worker *w, struct conn *c) {}
void relay_timer(struct worker *w, struct tw_node *n) {}
void relay_shutdown(struct worker *w)
{
	for (uint32_t i = 0; i < w->conn_cap; i++) {
		struct conn *c = &w->conns[i];
		if (c->state == CONN_WS_OPEN)
			conn_ws_close(w, c, 1001, "shutting down");
	}
}
void relay_counts(struct worker *w, uint64_t *binaries, uint64_t *phones)
{
	*binaries = 0;
	*phones = 0;
}
