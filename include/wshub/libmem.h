/* wsh_libmem: the allocations of the libraries we call, counted when
 * they fail.
 *
 * jansson and OpenSSL answer an allocation that failed the way they
 * answer bad input: jansson's lexer calls it a syntax error (or drops the
 * byte and goes on), OpenSSL's signature verify returns 0 as for a wrong
 * signature. A caller that must not blame the client for our want of
 * memory compares this count before and after the call. The counting
 * allocators (malloc, realloc and free underneath) are installed before
 * main(), while no thread runs and before either library has allocated:
 * OpenSSL refuses them after its first allocation, and then its failures
 * are not counted. */
#ifndef WSHUB_LIBMEM_H
#define WSHUB_LIBMEM_H

/* Allocations by jansson or OpenSSL that failed on this thread so far. */
unsigned long wsh_libmem_failures(void);

#endif
