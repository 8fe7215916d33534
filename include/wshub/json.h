/* wsh_json: jansson's parser, telling bad JSON from memory running out.
 *
 * jansson reports an allocation that fails inside its lexer as a syntax
 * error (json_error_code() says json_error_invalid_syntax, seen with
 * 2.14), so a caller cannot tell "this is not JSON" — answered with a
 * permanent refusal, a client told its valid command or token is bad —
 * from "try again"; worse, a failure in the middle of a string drops a
 * byte and parsing goes on. wsh_json_loadb() asks wsh_libmem whether an
 * allocation failed while jansson parsed. */
#ifndef WSHUB_JSON_H
#define WSHUB_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* json_loadb(buf, len, flags, err), or NULL with *oom true when any
 * allocation failed while it ran: then the text may well be valid, and
 * a value jansson returned anyway may have lost bytes. oom may be NULL
 * (a caller that asks wsh_libmem itself). */
json_t *wsh_json_loadb(const char *buf, size_t len, size_t flags, json_error_t *err, bool *oom);

#endif
