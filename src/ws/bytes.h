/* Byte-run kernels of the protocol core (private to src/ws): the masking
 * XOR of RFC 6455 5.3 and the ASCII scan in front of UTF-8 validation.
 * They touch every payload byte, so on x86-64 short runs take SSE2 and
 * long ones an AVX2 or AVX-512 body chosen at run time; elsewhere a
 * portable 64-bit body does the same work. */
#ifndef WSH_WS_BYTES_H
#define WSH_WS_BYTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* dst[i] = src[i] ^ key8 byte (i % 8), for i < n, where key8 holds the
 * 4-byte mask twice, already rotated to the phase of src[0]. dst == src
 * (in place) or the two do not overlap. Returns true when every byte
 * written is ASCII (< 0x80): the server unmasks and pre-checks text in
 * one pass. */
bool wsh__bytes_xor(uint8_t *dst, const uint8_t *src, size_t n, uint64_t key8);

/* The 4-byte mask as the key8 above, for a run starting at key byte
 * (offset % 4). */
uint64_t wsh__bytes_key8(const uint8_t key[4], size_t offset);

/* Length of a prefix of p[0..n) that is all ASCII. It may stop short of
 * the first non-ASCII byte (it works in blocks); the caller goes on from
 * there byte by byte. */
size_t wsh__bytes_ascii_prefix(const uint8_t *p, size_t n);

#endif
