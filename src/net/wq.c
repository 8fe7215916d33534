/* Per-connection write queues of shared buffers, flushed with one sendmsg
 * per loop turn (Redis handleClientsWithPendingWrites). The ring exists
 * only while something is queued. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "net.h"

#define WQ_MIN_CAP 8u
#define WQ_MAX_IOV 64

int wsh_wq_push(struct wsh_wq **qp, struct wsh_buf *b)
{
    struct wsh_wq *q = *qp;
    if (q == NULL || q->count == q->cap) {
        uint32_t ncap = q ? q->cap * 2 : WQ_MIN_CAP;
        struct wsh_wq *nq = malloc(sizeof(*nq) + ncap * sizeof(nq->e[0]));
        if (nq == NULL) {
            wsh_buf_unref(b);
            return WSH_ENOMEM;
        }
        nq->head = 0;
        nq->count = 0;
        nq->cap = ncap;
        nq->repl = 0;
        nq->bytes = 0;
        nq->since_progress = 0;
        nq->since_over = 0;
        if (q != NULL) {
            for (uint32_t i = 0; i < q->count; i++)
                nq->e[i] = q->e[(q->head + i) % q->cap];
            nq->count = q->count;
            nq->bytes = q->bytes;
            nq->since_progress = q->since_progress;
            nq->since_over = q->since_over;
            free(q);
        }
        q = nq;
        *qp = q;
    }
    struct wsh_wq_entry *e = &q->e[(q->head + q->count) % q->cap];
    e->b = b;
    e->off = 0;
    e->begun = false;
    q->count++;
    q->bytes += wsh_buf_len(b);
    q->repl = 0;
    return WSH_OK;
}

int wsh_wq_push_rest(struct wsh_wq **qp, struct wsh_buf *b)
{
    int rc = wsh_wq_push(qp, b);
    if (rc == WSH_OK)
        (*qp)->e[((*qp)->head + (*qp)->count - 1) % (*qp)->cap].begun = true;
    return rc;
}

void wsh_wq_clear(struct wsh_wq **qp)
{
    struct wsh_wq *q = *qp;
    if (q == NULL)
        return;
    for (uint32_t i = 0; i < q->count; i++)
        wsh_buf_unref(q->e[(q->head + i) % q->cap].b);
    free(q);
    *qp = NULL;
}

void wsh_wq_drop_unstarted(struct wsh_wq **qp, size_t pinned)
{
    struct wsh_wq *q = *qp;
    if (q == NULL)
        return;
    /* A head already begun is pinned too: its rest keeps the stream whole. */
    if (pinned == 0 && q->count > 0 && (q->e[q->head].off > 0 || q->e[q->head].begun))
        pinned = 1;
    uint32_t keep = 0;
    size_t kept = 0;
    while (keep < q->count && kept < pinned) {
        const struct wsh_wq_entry *e = &q->e[(q->head + keep) % q->cap];
        kept += wsh_buf_len(e->b) - e->off;
        keep++;
    }
    for (uint32_t i = keep; i < q->count; i++) {
        struct wsh_wq_entry *e = &q->e[(q->head + i) % q->cap];
        q->bytes -= wsh_buf_len(e->b) - e->off;
        wsh_buf_unref(e->b);
    }
    q->count = keep;
    q->repl = 0;
    if (keep == 0)
        wsh_wq_clear(qp);
}

int wsh_wq_flush(struct wsh_wq **qp, int fd)
{
    struct wsh_wq *q = *qp;
    if (q == NULL)
        return WSH_OK;
    struct iovec iov[WQ_MAX_IOV];
    int n = 0;
    for (uint32_t i = 0; i < q->count && n < WQ_MAX_IOV; i++) {
        struct wsh_wq_entry *e = &q->e[(q->head + i) % q->cap];
        iov[n].iov_base = e->b->data + e->b->start + e->off;
        iov[n].iov_len = wsh_buf_len(e->b) - e->off;
        n++;
    }
    ssize_t w = wsh_sock_sendv(fd, iov, n);
    if (w < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return WSH_EAGAIN;
        return -errno;
    }
    wsh_wq_consume(qp, (size_t)w);
    return *qp == NULL ? WSH_OK : WSH_EAGAIN;
}

uint8_t *wsh_wq_tail_reserve(struct wsh_wq *q, size_t need)
{
    if (q == NULL || q->count == 0)
        return NULL;
    struct wsh_buf *b = q->e[(q->head + q->count - 1) % q->cap].b;
    /* refs == 1 means the queue holds the only reference: nobody else can
     * be reading the bytes we would add, and nobody can take a new
     * reference without holding one already. */
    if (atomic_load_explicit(&b->refs, memory_order_acquire) != 1)
        return NULL;
    if ((size_t)b->cap - b->end < need)
        return NULL;
    return b->data + b->end;
}

void wsh_wq_tail_commit(struct wsh_wq *q, size_t n)
{
    struct wsh_buf *b = q->e[(q->head + q->count - 1) % q->cap].b;
    b->end += (uint32_t)n;
    q->bytes += n;
    q->repl = 0;
}

void wsh_wq_tail_mark(struct wsh_wq *q, size_t n)
{
    q->repl = (uint32_t)n;
}

size_t wsh_wq_tail_replaceable(const struct wsh_wq *q)
{
    return q != NULL ? q->repl : 0;
}

void wsh_wq_tail_drop(struct wsh_wq *q, size_t n)
{
    /* The caller asked wsh_wq_tail_replaceable(): the n bytes are the end
     * of the tail buffer and none of them is written yet. */
    struct wsh_buf *b = q->e[(q->head + q->count - 1) % q->cap].b;
    b->end -= (uint32_t)n;
    q->bytes -= n;
    q->repl = 0;
}

size_t wsh_wq_gather(const struct wsh_wq *q, uint8_t *scratch, size_t max, const uint8_t **out)
{
    const struct wsh_wq_entry *e = &q->e[q->head];
    size_t first = wsh_buf_len(e->b) - e->off;
    if (first >= max || q->count == 1) {
        *out = e->b->data + e->b->start + e->off;
        return first < max ? first : max;
    }
    size_t n = 0;
    for (uint32_t i = 0; i < q->count && n < max; i++) {
        e = &q->e[(q->head + i) % q->cap];
        size_t rem = wsh_buf_len(e->b) - e->off;
        if (rem > max - n)
            rem = max - n;
        memcpy(scratch + n, e->b->data + e->b->start + e->off, rem);
        n += rem;
    }
    *out = scratch;
    return n;
}

void wsh_wq_consume(struct wsh_wq **qp, size_t n)
{
    struct wsh_wq *q = *qp;
    q->bytes -= n;
    /* The marked unit is the end of the queue: it is whole while at least
     * its length is unwritten. */
    if (q->bytes < q->repl)
        q->repl = 0;
    while (q->count > 0) {
        struct wsh_wq_entry *e = &q->e[q->head];
        size_t rem = wsh_buf_len(e->b) - e->off;
        if (n < rem) {
            e->off += (uint32_t)n;
            break;
        }
        n -= rem;
        wsh_buf_unref(e->b);
        q->head = (q->head + 1) % q->cap;
        q->count--;
    }
    if (q->count == 0) {
        free(q);
        *qp = NULL;
    }
}

void wsh_wq_note(struct wsh_wq *q, uint32_t now, size_t before, size_t soft)
{
    if (q->since_progress == 0 || q->bytes < before)
        q->since_progress = now;
    if (soft == 0 || q->bytes <= soft)
        q->since_over = 0;
    else if (q->since_over == 0)
        q->since_over = now;
}

uint32_t wsh_wq_stalled_ms(const struct wsh_wq *q, uint32_t now)
{
    return wsh_stamp_age(q->since_progress, now);
}

uint32_t wsh_wq_over_ms(const struct wsh_wq *q, uint32_t now)
{
    return wsh_stamp_age(q->since_over, now);
}
