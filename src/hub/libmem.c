/* wsh_libmem: counting allocators for jansson and OpenSSL
 * (include/wshub/libmem.h). */
#include "wshub/libmem.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <stdlib.h>

static _Thread_local unsigned long failures;

static void *counting_malloc(size_t n)
{
    void *p = malloc(n);
    if (p == NULL)
        failures++;
    return p;
}

static void *ssl_malloc(size_t n, const char *file, int line)
{
    (void)file;
    (void)line;
    return counting_malloc(n);
}

static void *ssl_realloc(void *p, size_t n, const char *file, int line)
{
    (void)file;
    (void)line;
    void *q = realloc(p, n);
    if (q == NULL && n != 0)
        failures++;
    return q;
}

static void ssl_free(void *p, const char *file, int line)
{
    (void)file;
    (void)line;
    free(p);
}

/* Before main(), so before any thread: json_set_alloc_funcs() swaps two
 * global pointers jansson reads unlocked. A value made before the swap
 * is freed alike, both being malloc and free underneath. */
__attribute__((constructor)) static void wsh_libmem_install(void)
{
    json_set_alloc_funcs(counting_malloc, free);
    (void)CRYPTO_set_mem_functions(ssl_malloc, ssl_realloc, ssl_free);
}

unsigned long wsh_libmem_failures(void)
{
    return failures;
}
