/* Keyed hashing for tables whose keys come from peers (channel names,
 * msg_ids, user ids): SipHash-1-3 (Aumasson and Bernstein; the variant
 * CPython and Rust's HashMap use) under a random per-table key, so that a
 * client cannot choose keys that fall into one chain, as it can with an
 * unkeyed hash such as FNV-1a. */
#ifndef WSHUB_HASH_H
#define WSHUB_HASH_H

#include <stddef.h>
#include <stdint.h>

/* SipHash-1-3 of p[0..n) under key. */
uint64_t wsh_siphash13(const uint64_t key[2], const void *p, size_t n);

/* Fills p[0..n) from getrandom(2); without it (an old kernel, a seccomp
 * filter), from a splitmix64 of the clock and a counter: keys and epochs
 * then still differ, and are unguessable in practice. */
void wsh_random_bytes(void *p, size_t n);

#endif
