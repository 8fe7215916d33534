/* wsh_expset: a set of byte strings that expire, for revocation lists.
 *
 * An entry stays until its time passes; it is never pushed out early to
 * make room, since that would un-revoke something. When the set holds its
 * maximum of live entries, an add first forgets the expired ones, and
 * fails with WSH_ENOSPC if none had expired. Lookups are O(1): open
 * addressing with linear probing and backward-shift deletion (no
 * tombstones), in a table that grows with the entries, to twice the
 * maximum. Keys are hashed with FNV-1a: they reach the set after a token's
 * signature verified or from the HTTP API, so a peer cannot choose them
 * to flood one probe chain.
 *
 * Not thread-safe: the owner locks. Times are in ms on any one clock. */
#ifndef WSHUB_EXPSET_H
#define WSHUB_EXPSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wshub/status.h"

struct wsh_expset;

/* A set that holds at most max live entries (max >= 1). NULL on ENOMEM. */
struct wsh_expset *wsh_expset_new(size_t max);
void wsh_expset_free(struct wsh_expset *s);
/* Changes the maximum; entries beyond a lowered one stay until they
 * expire, and adds fail until the set is under it again. */
void wsh_expset_set_max(struct wsh_expset *s, size_t max);

/* Adds key[0..len) until until_ms, or extends an entry that is there
 * (never shortens it). WSH_OK, WSH_ENOSPC (max live entries), WSH_ENOMEM,
 * or WSH_EINVAL for an empty key. */
WSH_NODISCARD int wsh_expset_add(struct wsh_expset *s, const void *key, size_t len,
                                 int64_t until_ms, int64_t now_ms);
/* True when key is in the set and its entry has not expired. */
bool wsh_expset_has(const struct wsh_expset *s, const void *key, size_t len, int64_t now_ms);
/* Removes key. Returns true when it was there (expired or not). */
bool wsh_expset_remove(struct wsh_expset *s, const void *key, size_t len);
/* Forgets the expired entries. O(1) while none can have expired (before
 * wsh_expset_soonest), else a scan of the table. */
void wsh_expset_purge(struct wsh_expset *s, int64_t now_ms);
/* A time before which no entry expires: the earliest expiry as of the
 * last purge or add (INT64_MAX for an empty set). A removal or an
 * extension may leave it earlier than the true earliest. */
int64_t wsh_expset_soonest(const struct wsh_expset *s);
/* Entries held, expired ones not yet forgotten included. */
size_t wsh_expset_count(const struct wsh_expset *s);

/* 64-bit FNV-1a of p[0..n), continuing from h (WSH_FNV1A_BASIS to start). */
#define WSH_FNV1A_BASIS 0xcbf29ce484222325u
uint64_t wsh_fnv1a(uint64_t h, const void *p, size_t n);

#endif
