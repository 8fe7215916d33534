/* Token buckets for admission (LIMITS.md: 503 + Retry-After over the
 * admission rate), with promised retry slots so that a refused crowd does
 * not come back as one wave. Tokens are kept as a double: whole-number
 * thousandths lose the fraction of every refill that is called often. */
#include "net.h"

void wsh_rate_init(struct wsh_rate *r, double per_s, uint32_t burst, uint64_t now_ms)
{
    r->per_ms = per_s / 1000.0;
    r->cap = burst;
    r->tokens = burst;
    r->last_ms = now_ms;
    r->next_slot = (double)now_ms;
}

static void refill(struct wsh_rate *r, uint64_t now_ms)
{
    if (now_ms <= r->last_ms)
        return; /* a clock read before the last one, by another thread */
    r->tokens += (double)(now_ms - r->last_ms) * r->per_ms;
    if (r->tokens > r->cap)
        r->tokens = r->cap;
    r->last_ms = now_ms;
}

bool wsh_rate_take(struct wsh_rate *r, uint64_t now_ms)
{
    refill(r, now_ms);
    /* The epsilon absorbs rounding in the sum of many small refills. */
    if (r->tokens < 1.0 - 1e-9)
        return false;
    r->tokens = r->tokens > 1.0 ? r->tokens - 1.0 : 0.0;
    return true;
}

bool wsh_rate_full(struct wsh_rate *r, uint64_t now_ms)
{
    refill(r, now_ms);
    return r->tokens >= r->cap;
}

uint64_t wsh_rate_promise(struct wsh_rate *r, uint64_t now_ms, uint64_t horizon_ms)
{
    refill(r, now_ms);
    double base = (double)r->last_ms; /* now, or a later clock already seen */
    double need = r->tokens < 1.0 ? 1.0 - r->tokens : 0.0;
    double first = base + need / r->per_ms; /* when the next token comes */
    double slot = first > r->next_slot ? first : r->next_slot;
    double wait = slot - base;
    if (wait > (double)horizon_ms)
        return 0;
    /* Slots lie one token's worth of time apart, kept to a fraction of a
     * millisecond: over 1,000/s several callers share one. */
    r->next_slot = slot + 1.0 / r->per_ms;
    uint64_t ms = (uint64_t)(wait + 0.999);
    return ms > 0 ? ms : 1;
}
