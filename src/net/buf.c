/* Ref-counted shared buffers: one encoded frame, many queues
 * (DESIGN.md 2). The count is atomic because a frame published on one
 * worker is queued on connections of the others.
 *
 * Every buffer's bytes are counted while it lives, once however many
 * queues share it, for --max-client-memory. The last reference may be
 * dropped on another thread than the one that allocated, so each thread
 * keeps its own counter (it may go negative) and the total is their sum:
 * no shared cache line is written on the hot path. A thread's counter is
 * registered on its first use and never freed; its bytes may still be
 * freed by others. */
#include <stdlib.h>

#include "net.h"

struct live {
    _Atomic int64_t bytes; /* written only by its thread */
    struct live *next;
};

static _Atomic(struct live *) lives;
static _Atomic int64_t live_orphan; /* threads whose counter could not be allocated */
static _Thread_local struct live *my_live;

static void live_add(int64_t n)
{
    struct live *l = my_live;
    if (l == NULL) {
        l = calloc(1, sizeof(*l));
        if (l == NULL) {
            atomic_fetch_add_explicit(&live_orphan, n, memory_order_relaxed);
            return;
        }
        l->next = atomic_load_explicit(&lives, memory_order_relaxed);
        while (!atomic_compare_exchange_weak_explicit(&lives, &l->next, l, memory_order_release,
                                                      memory_order_relaxed))
            ;
        my_live = l;
    }
    atomic_store_explicit(&l->bytes, atomic_load_explicit(&l->bytes, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

void wsh_buf_live_charge(int64_t n)
{
    live_add(n);
}

size_t wsh_buf_live_bytes(void)
{
    int64_t sum = atomic_load_explicit(&live_orphan, memory_order_relaxed);
    for (struct live *l = atomic_load_explicit(&lives, memory_order_acquire); l; l = l->next)
        sum += atomic_load_explicit(&l->bytes, memory_order_relaxed);
    return sum > 0 ? (size_t)sum : 0; /* a racing read may see a free before its alloc */
}

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
    live_add((int64_t)(sizeof(*b) + cap));
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
    live_add((int64_t)cap - (int64_t)nb->cap);
    nb->cap = (uint32_t)cap;
    return nb;
}

void wsh_buf_unref(struct wsh_buf *b)
{
    if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1) {
        live_add(-(int64_t)(sizeof(*b) + b->cap));
        free(b);
    }
}
