/* The ranking behind --max-client-memory, sans I/O (worker.c runs it).
 *
 * Each owner (a worker) keeps its k largest holders in a min-heap while it
 * walks its connections, then sorts them; all owners' sorted lists are
 * merged into one order (bytes, then owner, then rank), and the prefix of
 * that order that covers the excess is evicted, each owner its own part.
 * The order is total, so owners that merge the same lists pick disjoint
 * parts of one prefix: nobody evicts a second connection for an excess
 * that another owner's eviction already covers. */
#include <stdlib.h>

#include "net.h"

static bool holder_before(const struct wsh_holder *x, const struct wsh_holder *y)
{
    if (x->bytes != y->bytes)
        return x->bytes > y->bytes;
    if (x->owner != y->owner)
        return x->owner < y->owner;
    return x->rank < y->rank;
}

static int holder_cmp(const void *a, const void *b)
{
    const struct wsh_holder *x = a, *y = b;
    return holder_before(x, y) ? -1 : holder_before(y, x) ? 1 : 0;
}

void wsh_evict_offer(struct wsh_holder *heap, size_t *n, size_t k, struct wsh_holder h)
{
    size_t i;
    if (*n < k) {
        /* Sift up from the new leaf: the root stays the smallest. */
        for (i = (*n)++; i > 0 && heap[(i - 1) / 2].bytes > h.bytes; i = (i - 1) / 2)
            heap[i] = heap[(i - 1) / 2];
        heap[i] = h;
        return;
    }
    if (k == 0 || h.bytes <= heap[0].bytes)
        return;
    /* Replace the smallest and sift the newcomer down. */
    for (i = 0;;) {
        size_t l = 2 * i + 1, m = i;
        uint64_t least = h.bytes;
        if (l < *n && heap[l].bytes < least)
            least = heap[m = l].bytes;
        if (l + 1 < *n && heap[l + 1].bytes < least)
            m = l + 1;
        if (m == i)
            break;
        heap[i] = heap[m];
        i = m;
    }
    heap[i] = h;
}

void wsh_evict_sort(struct wsh_holder *v, size_t n)
{
    /* Owner and rank are equal within one list: order by bytes, then give
     * each its rank so the merged order breaks ties the same everywhere. */
    for (size_t i = 0; i < n; i++)
        v[i].rank = 0;
    qsort(v, n, sizeof(*v), holder_cmp);
    for (size_t i = 0; i < n; i++)
        v[i].rank = (uint32_t)i;
}

size_t wsh_evict_pick(struct wsh_holder *all, size_t n, uint64_t excess, uint32_t owner,
                      uint32_t *ranks)
{
    qsort(all, n, sizeof(*all), holder_cmp);
    uint64_t covered = 0;
    size_t picked = 0;
    for (size_t i = 0; i < n && covered < excess; i++) {
        covered += all[i].bytes;
        if (all[i].owner == owner)
            ranks[picked++] = all[i].rank;
    }
    return picked;
}
