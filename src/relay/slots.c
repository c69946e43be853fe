/*
 * slots.c - the registry shard's storage: per-connection cells, the server-id table
 * (keyed SipHash, chained, doubling), and each server-id's conn_id and wrap-prefix
 * templates, built once per server-id so a phone holds only its 8 hex digits.
 */
#include "relay/shard.h"

#include <openssl/siphash.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "envelope/envelope.h"

const struct relay_stats *relay_stats_of(const struct relay_shard *s)
{
	return &s->stats;
}

/* ------------------------------------------------------------------ slots */

static uint64_t id_hash(const struct relay_shard *s, struct span id)
{
	/* Keyed: server-ids are attacker-chosen, so chains must not be forceable. */
	return SIPHASH_24(s->hash_key, id.ptr, id.len);
}

struct relay_slot *slot_find(struct relay_shard *s, struct span id)
{
	uint64_t h = id_hash(s, id);
	for (struct relay_slot *sl = s->buckets[h & (s->nbuckets - 1)]; sl; sl = sl->hnext) {
		if (sl->hash == h && sl->id_len == id.len && memcmp(sl->bytes + PHONE_CID_PREFIX_LEN, id.ptr, id.len) == 0)
			return sl;
	}
	return NULL;
}

static void table_grow(struct relay_shard *s)
{
	uint32_t n = s->nbuckets * 2;
	struct relay_slot **nb = calloc(n, sizeof *nb);
	if (nb == NULL)
		return; /* keep the longer chains: correct, only slower */
	for (uint32_t i = 0; i < s->nbuckets; i++) {
		struct relay_slot *sl = s->buckets[i];
		while (sl) {
			struct relay_slot *next = sl->hnext;
			sl->hnext = nb[sl->hash & (n - 1)];
			nb[sl->hash & (n - 1)] = sl;
			sl = next;
		}
	}
	free(s->buckets);
	s->buckets = nb;
	s->nbuckets = n;
}

#define SLOT_BUILD_STACK_BYTES 1024u

static size_t cid_len_for(size_t id_len)
{
	return PHONE_CID_PREFIX_LEN + id_len + 1 + RELAY_CONN_HEX_LEN;
}

uint32_t slot_cid_len(const struct relay_slot *sl)
{
	return (uint32_t)cid_len_for(sl->id_len);
}

uint8_t *slot_wrap(struct relay_slot *sl)
{
	return sl->bytes + slot_cid_len(sl);
}

/* Where the phone's hex digits go in the wrap prefix. */
uint32_t slot_wrap_hex_off(const struct relay_slot *sl)
{
	return sl->wrap_len - (uint32_t)WRAP_TAIL_LEN - RELAY_CONN_HEX_LEN;
}

struct relay_slot *slot_create(struct relay_shard *s, struct span id)
{
	/* The phones' conn_id with placeholder hex, and its wrap prefix (escaping makes
	 * its length known only once written: build, then copy into the slot). */
	size_t cid_len = cid_len_for(id.len);
	size_t wrap_max = ENVELOPE_WRAP_PREFIX_LEN_MAX(cid_len);
	uint8_t stack[SLOT_BUILD_STACK_BYTES];
	uint8_t *tmp = cid_len + wrap_max <= sizeof stack ? stack : malloc(cid_len + wrap_max);
	if (tmp == NULL)
		return NULL;
	memcpy(tmp, PHONE_CID_PREFIX, PHONE_CID_PREFIX_LEN);
	memcpy(tmp + PHONE_CID_PREFIX_LEN, id.ptr, id.len);
	tmp[PHONE_CID_PREFIX_LEN + id.len] = '-';
	memset(tmp + PHONE_CID_PREFIX_LEN + id.len + 1, '0', RELAY_CONN_HEX_LEN);
	size_t wrap_len = envelope_write_wrap_prefix(tmp + cid_len, wrap_max, span_make(tmp, cid_len));
	ASSERT(wrap_len > WRAP_TAIL_LEN + RELAY_CONN_HEX_LEN);
	struct relay_slot *sl = calloc(1, sizeof *sl + cid_len + wrap_len);
	if (sl == NULL) {
		if (tmp != stack)
			free(tmp);
		return NULL;
	}
	sl->binary = sl->claimant = RELAY_NO_CONN;
	sl->hash = id_hash(s, id);
	sl->id_len = (uint32_t)id.len;
	sl->wrap_len = (uint32_t)wrap_len;
	memcpy(sl->bytes, tmp, cid_len + wrap_len);
	ASSERT(memcmp(slot_wrap(sl) + slot_wrap_hex_off(sl), "00000000", RELAY_CONN_HEX_LEN) == 0);
	if (tmp != stack)
		free(tmp);
	sl->grace.kind = TW_KIND_GRACE;
	sl->probe.kind = TW_KIND_PROBE;
	if (s->nslots >= s->nbuckets)
		table_grow(s);
	uint32_t b = (uint32_t)(sl->hash & (s->nbuckets - 1));
	sl->hnext = s->buckets[b];
	s->buckets[b] = sl;
	s->nslots++;
	return sl;
}

void slot_maybe_free(struct relay_shard *s, struct relay_slot *sl)
{
	if (sl->binary != RELAY_NO_CONN || sl->claimant != RELAY_NO_CONN || sl->gracing || sl->nphones ||
	    tw_node_scheduled(&sl->grace) || tw_node_scheduled(&sl->probe))
		return;
	ASSERT(sl->claimant_version == NULL);
	struct relay_slot **pp = &s->buckets[sl->hash & (s->nbuckets - 1)];
	while (*pp != sl)
		pp = &(*pp)->hnext;
	*pp = sl->hnext;
	s->nslots--;
	free(sl);
}

struct conn_ref slot_phone(const struct relay_shard *s, const struct relay_slot *sl, uint8_t i)
{
	ASSERT(i < sl->nphones);
	return ref_at(s, sl->phones[i]);
}

struct span slot_id(const struct relay_slot *sl)
{
	return span_make(sl->bytes + PHONE_CID_PREFIX_LEN, sl->id_len);
}

/* The phone's conn_id, written into its slot's conn_id template: valid until the next
 * phone_conn_id of a phone of the same server-id (single-threaded shard; every caller
 * uses it at once). */
struct span phone_conn_id(const struct relay_conn *rc)
{
	struct relay_slot *sl = rc->slot;
	uint32_t n = slot_cid_len(sl);
	memcpy(sl->bytes + n - RELAY_CONN_HEX_LEN, rc->hex, RELAY_CONN_HEX_LEN);
	return span_make(sl->bytes, n);
}

struct span binary_conn_id(const struct relay_conn *rc, char *buf, size_t cap)
{
	struct span id = slot_id(rc->slot);
	int n = snprintf(buf, cap, "server-%.*s-%.8s", (int)MIN(id.len, (size_t)BINARY_CONN_ID_SERVER_ID_LOGGED_MAX),
			 (const char *)id.ptr, rc->hex);
	return span_make(buf, (size_t)MIN((size_t)n, cap - 1));
}

/* ------------------------------------------------------------------ set-up */

void *shard_create(struct worker *w, const struct config *cfg, void *shared)
{
	struct relay_shard *s = calloc_aligned(sizeof *s); /* stats: own cache lines */
	if (s == NULL)
		return NULL;
	s->w = w;
	s->cfg = cfg;
	s->shared = shared;
	s->id = worker_id(w);
	s->nbuckets = RELAY_BUCKETS_INITIAL;
	s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
	/* calloc: cells of slots never used stay unbacked by RAM */
	s->rc = calloc(worker_conn_cap(w), sizeof *s->rc);
	if (s->buckets == NULL || s->rc == NULL ||
	    getrandom(s->hash_key, sizeof s->hash_key, 0) != (ssize_t)sizeof s->hash_key) {
		free(s->buckets);
		free(s->rc);
		free(s);
		return NULL;
	}
	relay_shared_register(s->shared, s->id, s);
	s->sweep.kind = TW_KIND_SWEEP;
	worker_schedule(w, &s->sweep, worker_now_ms(w) + RATELIMIT_SWEEP_INTERVAL_MS);
	return s;
}

void shard_destroy(void *app)
{
	struct relay_shard *s = app;
	for (uint32_t i = 0; i < s->nbuckets; i++) {
		struct relay_slot *sl = s->buckets[i];
		while (sl) {
			struct relay_slot *next = sl->hnext;
			free(sl->claimant_version);
			free(sl);
			sl = next;
		}
	}
	free(s->buckets);
	free(s->rc);
	free(s);
}

