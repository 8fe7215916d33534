/* wsh_json: jansson's parser, telling bad JSON from memory running out
 * (include/wshub/json.h). */
#include "wshub/json.h"

#include "wshub/libmem.h"

json_t *wsh_json_loadb(const char *buf, size_t len, size_t flags, json_error_t *err, bool *oom)
{
    unsigned long before = wsh_libmem_failures();
    json_t *j = json_loadb(buf, len, flags, err);
    /* A value despite a failure is not to be trusted: jansson's lexer
     * drops a byte it has no room to save and goes on (lex_save ignores
     * the error), so a string comes out a character short, still valid
     * JSON. Seen as payloads stored one byte short, and acknowledged. */
    bool failed = wsh_libmem_failures() != before;
    if (oom != NULL)
        *oom = failed;
    if (failed) {
        json_decref(j);
        return NULL;
    }
    return j;
}
