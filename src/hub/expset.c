/* wsh_expset: expiring string set (include/wshub/expset.h). */
#include "wshub/expset.h"

#include <stdlib.h>
#include <string.h>

struct slot {
    char *key; /* NULL: empty slot */
    size_t len;
    uint64_t hash;
    int64_t until_ms;
};

struct wsh_expset {
    struct slot *slots; /* cap slots, a power of two */
    size_t cap;
    size_t n;
    size_t max;
    /* No entry expires before this: the earliest until_ms at the last
     * purge, lowered by adds since (INT64_MAX when none). Entries removed
     * or extended since leave it a bound, not the minimum, which is all
     * a purge needs to skip its scan. */
    int64_t soonest;
};

#define MIN_CAP 16u

uint64_t wsh_fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3u;
    }
    return h;
}

struct wsh_expset *wsh_expset_new(size_t max)
{
    struct wsh_expset *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->slots = calloc(MIN_CAP, sizeof(*s->slots));
    if (s->slots == NULL) {
        free(s);
        return NULL;
    }
    s->cap = MIN_CAP;
    s->soonest = INT64_MAX;
    wsh_expset_set_max(s, max);
    return s;
}

void wsh_expset_free(struct wsh_expset *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->cap; i++)
        free(s->slots[i].key);
    free(s->slots);
    free(s);
}

void wsh_expset_set_max(struct wsh_expset *s, size_t max)
{
    /* The table holds at most twice max slots, and must stay addressable. */
    size_t most = SIZE_MAX / sizeof(struct slot) / 4;
    s->max = max == 0 ? 1 : max > most ? most : max;
}

size_t wsh_expset_count(const struct wsh_expset *s)
{
    return s->n;
}

/* The slot of key, or the empty slot where it would go. The table always
 * has an empty slot: it is at most half full. */
static size_t find(const struct wsh_expset *s, const void *key, size_t len, uint64_t h)
{
    size_t mask = s->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        const struct slot *e = &s->slots[i];
        if (e->key == NULL || (e->hash == h && e->len == len && memcmp(e->key, key, len) == 0))
            return i;
    }
}

/* Backward-shift deletion keeps every probe chain unbroken. */
static void remove_at(struct wsh_expset *s, size_t i)
{
    size_t mask = s->cap - 1;
    free(s->slots[i].key);
    s->slots[i].key = NULL;
    s->n--;
    for (size_t j = (i + 1) & mask; s->slots[j].key != NULL; j = (j + 1) & mask) {
        size_t home = s->slots[j].hash & mask;
        /* Move j into the hole at i unless its home lies cyclically in (i, j]. */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            s->slots[i] = s->slots[j];
            s->slots[j].key = NULL;
            i = j;
        }
    }
}

void wsh_expset_purge(struct wsh_expset *s, int64_t now_ms)
{
    if (now_ms < s->soonest)
        return;
    int64_t soonest = INT64_MAX;
    for (size_t i = 0; i < s->cap;) {
        /* After a removal a later entry may have moved into slot i. (One
         * moved back across the end was seen before: it counts twice in
         * soonest, which is harmless.) */
        if (s->slots[i].key == NULL) {
            i++;
        } else if (s->slots[i].until_ms <= now_ms) {
            remove_at(s, i);
        } else {
            if (s->slots[i].until_ms < soonest)
                soonest = s->slots[i].until_ms;
            i++;
        }
    }
    s->soonest = soonest;
}

int64_t wsh_expset_soonest(const struct wsh_expset *s)
{
    return s->soonest;
}

/* Doubles the table, re-placing every entry. */
static int grow(struct wsh_expset *s)
{
    size_t cap = s->cap * 2;
    struct slot *slots = calloc(cap, sizeof(*slots));
    if (slots == NULL)
        return WSH_ENOMEM;
    for (size_t i = 0; i < s->cap; i++) {
        if (s->slots[i].key == NULL)
            continue;
        size_t j = s->slots[i].hash & (cap - 1);
        while (slots[j].key != NULL)
            j = (j + 1) & (cap - 1);
        slots[j] = s->slots[i];
    }
    free(s->slots);
    s->slots = slots;
    s->cap = cap;
    return WSH_OK;
}

int wsh_expset_add(struct wsh_expset *s, const void *key, size_t len, int64_t until_ms,
                   int64_t now_ms)
{
    if (len == 0)
        return WSH_EINVAL;
    uint64_t h = wsh_fnv1a(WSH_FNV1A_BASIS, key, len);
    size_t i = find(s, key, len, h);
    if (s->slots[i].key != NULL) {
        if (until_ms > s->slots[i].until_ms)
            s->slots[i].until_ms = until_ms;
        return WSH_OK;
    }
    if (s->n >= s->max) {
        wsh_expset_purge(s, now_ms);
        if (s->n >= s->max)
            return WSH_ENOSPC;
    }
    char *copy = malloc(len);
    if (copy == NULL)
        return WSH_ENOMEM;
    if ((s->n + 1) * 2 > s->cap && grow(s) != WSH_OK) {
        free(copy);
        return WSH_ENOMEM;
    }
    memcpy(copy, key, len);
    i = find(s, key, len, h); /* the purge or the growth moved it */
    s->slots[i] = (struct slot){ .key = copy, .len = len, .hash = h, .until_ms = until_ms };
    s->n++;
    if (until_ms < s->soonest)
        s->soonest = until_ms;
    return WSH_OK;
}

bool wsh_expset_has(const struct wsh_expset *s, const void *key, size_t len, int64_t now_ms)
{
    if (len == 0)
        return false;
    size_t i = find(s, key, len, wsh_fnv1a(WSH_FNV1A_BASIS, key, len));
    return s->slots[i].key != NULL && s->slots[i].until_ms > now_ms;
}

bool wsh_expset_remove(struct wsh_expset *s, const void *key, size_t len)
{
    if (len == 0)
        return false;
    size_t i = find(s, key, len, wsh_fnv1a(WSH_FNV1A_BASIS, key, len));
    if (s->slots[i].key == NULL)
        return false;
    remove_at(s, i);
    return true;
}
