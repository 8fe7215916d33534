/* Log-bucketed histogram (HdrHistogram's idea at 4 significant bits):
 * constant memory, O(1) insert, percentiles within ~6%. */
#include "bench.h"

static unsigned bucket_of(uint64_t v)
{
    if (v < 16)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    return (msb - 3u) * 16u + (unsigned)((v >> (msb - 4u)) & 15u);
}

/* Lower bound of a bucket's range, plus half its width. */
static uint64_t bucket_mid(unsigned i)
{
    if (i < 16)
        return i;
    unsigned msb = i / 16u + 3u;
    uint64_t sub = i % 16u;
    uint64_t lo = (1ULL << msb) | (sub << (msb - 4u));
    return lo + (1ULL << (msb - 4u)) / 2u;
}

void hist_add(struct hist *h, uint64_t v)
{
    h->b[bucket_of(v)]++;
    h->count++;
    if (v > h->max)
        h->max = v;
}

uint64_t hist_pct(const struct hist *h, double pct)
{
    if (h->count == 0)
        return 0;
    uint64_t want = (uint64_t)((double)h->count * pct / 100.0);
    if (want >= h->count)
        want = h->count - 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen > want)
            return bucket_mid(i) < h->max ? bucket_mid(i) : h->max;
    }
    return h->max;
}
