/* Keyed hashing for tables whose keys come from peers (channel names,
 * msg_ids, user ids): SipHash-1-3 (Aumasson and Bernstein; the variant
 * CPython and Rust's HashMap use) under a random per-table key, so that a
 * client cannot choose keys that fall into one chain, as it can with an
 * unkeyed hash such as FNV-1a. */
#ifndef WSHUB_HASH_H
#define WSHUB_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* SipHash-1-3 of p[0..n) under key. */
uint64_t wsh_siphash13(const uint64_t key[2], const void *p, size_t n);

/* Fills p[0..n) from getrandom(2); without it (an old kernel, a seccomp
 * filter), from a splitmix64 of the clock and a counter: keys and epochs
 * then still differ, and are unguessable in practice. */
void wsh_random_bytes(void *p, size_t n);

/* A chained hash table of records its user owns and allocates: each record
 * embeds a wsh_hnode holding its hash (keyed, as above) and the chain
 * link, as the Linux kernel's hlist nodes are embedded. The table knows
 * nothing of keys: a lookup walks wsh_htab_chain(t, hash) comparing the
 * hash, then the record's own key. Not thread-safe: its user locks.
 *
 * The table doubles when it holds as many records as chains, so chains
 * stay short however many records there are. Zero-initialized is empty. */
struct wsh_hnode {
    struct wsh_hnode *next;
    uint64_t hash;
};

struct wsh_htab {
    struct wsh_hnode **b;
    size_t nb; /* chains, a power of two; 0 before the first reserve */
    size_t n;  /* records */
};

/* Room for one more record, so that the insert after it cannot fail. The
 * first table (first chains, a power of two) is required: false when it
 * cannot be allocated. A doubling that cannot be allocated keeps the table
 * (longer chains, still correct). */
bool wsh_htab_reserve(struct wsh_htab *t, size_t first);
/* Links n, whose hash is set, after a successful reserve. */
void wsh_htab_insert(struct wsh_htab *t, struct wsh_hnode *n);
/* Unlinks n, which is in t. */
void wsh_htab_remove(struct wsh_htab *t, struct wsh_hnode *n);

/* The first record of hash h's chain (follow ->next), or NULL. */
static inline struct wsh_hnode *wsh_htab_chain(const struct wsh_htab *t, uint64_t h)
{
    return t->nb ? t->b[h & (t->nb - 1)] : NULL;
}

/* Calls fn on every record; each one fn returns true for is unlinked. fn
 * may free the record it returns true for: the table reads its link
 * before the call and does not touch it after. Returns how many went. */
size_t wsh_htab_filter(struct wsh_htab *t, bool (*fn)(struct wsh_hnode *n, void *arg), void *arg);

/* After records went (a sweep): halves the chains while the table is
 * under a quarter full, down to `first`, so that a walk of a table a
 * burst once grew does not stay as long as the burst. A failed
 * allocation keeps the table. */
void wsh_htab_shrink(struct wsh_htab *t, size_t first);

/* Frees the chains (not the records) and empties t. */
void wsh_htab_free(struct wsh_htab *t);

#endif
