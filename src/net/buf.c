/* Ref-counted shared buffers: one encoded frame, many queues
 * (DESIGN.md 2). The count is atomic because a frame published on one
 * worker is queued on connections of the others. */
#include <stdlib.h>

#include "net.h"

struct wsh_buf *wsh_buf_new(size_t cap)
{
    if (cap > UINT32_MAX - sizeof(struct wsh_buf))
        return NULL;
    struct wsh_buf *b = malloc(sizeof(*b) + cap);
    if (b == NULL)
        return NULL;
    atomic_init(&b->refs, 1);
    b->cap = (uint32_t)cap;
    b->start = 0;
    b->end = 0;
    return b;
}

struct wsh_buf *wsh_buf_grow(struct wsh_buf *b, size_t cap)
{
    if (cap <= b->cap)
        return b;
    if (cap > UINT32_MAX - sizeof(struct wsh_buf))
        return NULL;
    struct wsh_buf *nb = realloc(b, sizeof(*b) + cap);
    if (nb == NULL)
        return NULL;
    nb->cap = (uint32_t)cap;
    return nb;
}

void wsh_buf_unref(struct wsh_buf *b)
{
    if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
        free(b);
}
