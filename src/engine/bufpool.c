#include "engine/bufpool.h"
#include "core/stat.h"

#include <stdlib.h>

void bufpool_init(struct bufpool *p, uint64_t budget_bytes_max)
{
	*p = (struct bufpool){ .budget_bytes_max = budget_bytes_max };
}

static unsigned class_of(size_t bytes)
{
	unsigned shift = BUFPOOL_CLASS_MIN_SHIFT;
	while (((size_t)1 << shift) < bytes)
		shift++;
	return shift - BUFPOOL_CLASS_MIN_SHIFT;
}

uint32_t bufpool_class_bytes(size_t bytes)
{
	ASSERT(bytes <= BUFPOOL_CLASS_MAX_BYTES);
	return BUFPOOL_CLASS_MIN_BYTES << class_of(bytes ? bytes : 1);
}

static void release_one(struct bufpool *p, unsigned cls)
{
	struct bufpool_free *f = p->free[cls];
	ASSERT(f != NULL);
	p->free[cls] = f->next;
	p->free_count[cls]--;
	STAT_SUB(p->bytes_held, (uint64_t)BUFPOOL_CLASS_MIN_BYTES << cls);
	free(f);
}

/* Give cached buffers back to the system, largest classes first, until `need` more
 * bytes fit under the budget. Bounded by the number of cached buffers. */
static bool make_room(struct bufpool *p, uint64_t need)
{
	for (int cls = BUFPOOL_CLASSES - 1; cls >= 0; cls--) {
		while (p->bytes_held + need > p->budget_bytes_max && p->free[cls] != NULL)
			release_one(p, (unsigned)cls);
	}
	return p->bytes_held + need <= p->budget_bytes_max;
}

void *bufpool_get(struct bufpool *p, size_t bytes, uint32_t *cap_bytes)
{
	ASSERT(bytes <= BUFPOOL_CLASS_MAX_BYTES);
	unsigned cls = class_of(bytes ? bytes : 1);
	uint32_t size = BUFPOOL_CLASS_MIN_BYTES << cls;
	void *buf;
	if (p->free[cls] != NULL) {
		struct bufpool_free *f = p->free[cls];
		p->free[cls] = f->next;
		p->free_count[cls]--;
		buf = f;
	} else {
		if (p->bytes_held + size > p->budget_bytes_max && !make_room(p, size)) {
			STAT_INC(p->alloc_failures);
			return NULL;
		}
		buf = malloc(size);
		if (buf == NULL) {
			STAT_INC(p->alloc_failures);
			return NULL;
		}
		STAT_ADD(p->bytes_held, size);
		if (p->bytes_held > p->bytes_held_peak)
			p->bytes_held_peak = p->bytes_held;
	}
	STAT_ADD(p->bytes_in_use, size);
	*cap_bytes = size;
	return buf;
}

void bufpool_put(struct bufpool *p, void *buf, uint32_t cap_bytes)
{
	ASSERT(buf != NULL);
	unsigned cls = class_of(cap_bytes);
	ASSERT((BUFPOOL_CLASS_MIN_BYTES << cls) == cap_bytes);
	ASSERT(p->bytes_in_use >= cap_bytes);
	STAT_SUB(p->bytes_in_use, cap_bytes);
	struct bufpool_free *f = buf;
	f->next = p->free[cls];
	p->free[cls] = f;
	p->free_count[cls]++;
}

void bufpool_destroy(struct bufpool *p)
{
	ASSERT(p->bytes_in_use == 0);
	for (unsigned cls = 0; cls < BUFPOOL_CLASSES; cls++) {
		while (p->free[cls] != NULL)
			release_one(p, cls);
	}
}
