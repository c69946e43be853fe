/*
 * upgraded.c - struct upgraded (engine/engine.h): an accepted upgrade as one
 * self-contained allocation. Depends on nothing else of the engine, so it can be
 * built, moved to another worker and read anywhere.
 */
#include "engine/engine.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "transport/ktls.h"
#include "transport/tls.h"

static struct span header_or_empty(const struct http_request *req, const char *name)
{
	struct span v;
	return http_header_get(req, name, &v) ? v : span_make("", 0);
}

struct upgraded *upgraded_new(const struct http_request *req, struct span early_a, struct span early_b)
{
	return upgraded_of(header_or_empty(req, "X-Pyrycode-Server"), header_or_empty(req, "X-Pyrycode-Version"),
			   header_or_empty(req, "X-Pyrycode-Device-Name"), early_a, early_b);
}

struct upgraded *upgraded_of(struct span id, struct span version, struct span device, struct span early_a,
			     struct span early_b)
{
	size_t n = id.len + version.len + device.len + early_a.len + early_b.len;
	struct upgraded *u = malloc(sizeof *u + n);
	if (u == NULL)
		return NULL;
	*u = (struct upgraded){
		.fd = -1,
		.server_id_len = (uint32_t)id.len,
		.version_len = (uint32_t)version.len,
		.device_len = (uint32_t)device.len,
		.early_len = (uint32_t)(early_a.len + early_b.len),
	};
	uint8_t *p = u->bytes;
	const struct span pieces[] = { id, version, device, early_a, early_b };
	for (size_t i = 0; i < ARRAY_LEN(pieces); i++) {
		if (pieces[i].len)
			memcpy(p, pieces[i].ptr, pieces[i].len);
		p += pieces[i].len;
	}
	return u;
}

static size_t upgraded_bytes(const struct upgraded *u)
{
	/* bytes[] may begin before sizeof *u ends (tail padding): count from it */
	return offsetof(struct upgraded, bytes) + u->server_id_len + u->version_len + u->device_len + u->early_len;
}

bool upgraded_append(struct upgraded **u, struct span more)
{
	if (more.len == 0)
		return true;
	if (more.len > UPGRADED_EARLY_BYTES_MAX - MIN((*u)->early_len, UPGRADED_EARLY_BYTES_MAX))
		return false;
	size_t have = upgraded_bytes(*u);
	struct upgraded *n = realloc(*u, have + more.len);
	if (n == NULL)
		return false;
	memcpy((uint8_t *)n + have, more.ptr, more.len); /* the early bytes are last */
	n->early_len += (uint32_t)more.len;
	*u = n;
	return true;
}

void upgraded_free(struct upgraded *u)
{
	if (u != NULL)
		tls_conn_free(u->tls);
	if (u->ktls_sec) {
		ktls_secrets_wipe(u->ktls_sec);
		free(u->ktls_sec);
	}
	free(u);
}

struct span upgraded_server_id(const struct upgraded *u)
{
	return span_make(u->bytes, u->server_id_len);
}

struct span upgraded_version(const struct upgraded *u)
{
	return span_make(u->bytes + u->server_id_len, u->version_len);
}

struct span upgraded_device(const struct upgraded *u)
{
	return span_make(u->bytes + u->server_id_len + u->version_len, u->device_len);
}

struct span upgraded_early(const struct upgraded *u)
{
	return span_make(u->bytes + u->server_id_len + u->version_len + u->device_len, u->early_len);
}

