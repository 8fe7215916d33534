/* Internal to src/http: what the request parser (http1.c) and the
 * response parser (response.c) read by. Not installed. */
#ifndef WSH_HTTP_INTERNAL_H
#define WSH_HTTP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* tchar (RFC 9110 5.6.2): what a field name or method is made of. */
bool wsh_http_tchar(char c);

/* What a field value may hold (RFC 9110 5.5): field-vchar, SP, HTAB and
 * obs-text; not the other controls, nor DEL. */
bool wsh_http_field_char(char c);

/* 1*DIGIT (RFC 9110 8.6) of p[0..n) as a number no larger than max: no
 * sign, no list ("5, 5"), no space. False for anything else. */
bool wsh_http_decimal(const char *p, size_t n, uint64_t max, uint64_t *out);

#endif
