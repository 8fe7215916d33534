/* wsh_json: jansson with a counting allocator (include/wshub/json.h). */
#include "wshub/json.h"

#include <stdlib.h>

static _Thread_local unsigned long failures;

static void *counting_malloc(size_t n)
{
    void *p = malloc(n);
    if (p == NULL)
        failures++;
    return p;
}

/* Before main(), so before any thread: json_set_alloc_funcs() swaps two
 * global pointers jansson reads unlocked. Both allocators are malloc and
 * free underneath, so a value made before the swap is freed alike. */
__attribute__((constructor)) static void wsh_json_install(void)
{
    json_set_alloc_funcs(counting_malloc, free);
}

unsigned long wsh_json_failures(void)
{
    return failures;
}

json_t *wsh_json_loadb(const char *buf, size_t len, size_t flags, json_error_t *err, bool *oom)
{
    unsigned long before = failures;
    json_t *j = json_loadb(buf, len, flags, err);
    /* A value despite a failure is not to be trusted: jansson's lexer
     * drops a byte it has no room to save and goes on (lex_save ignores
     * the error), so a string comes out a character short, still valid
     * JSON. Seen as payloads stored one byte short, and acknowledged. */
    *oom = failures != before;
    if (*oom) {
        json_decref(j);
        return NULL;
    }
    return j;
}
