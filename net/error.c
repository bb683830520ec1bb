/*
 * error.c - error descriptions and the assertion hook of net/.
 *
 * Codes of net/ live in -3000..-3099 (NET_ERRORS in net.h); anything else
 * negative is a negated errno or libuv error, which libuv names.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/internal.h"

const char *net_strerror(int rc) {
    switch (rc) {
    case 0:
        return "success";
#define NET__ERR_CASE(name, value, text)                                                           \
    case value:                                                                                    \
        return text;
        NET_ERRORS(NET__ERR_CASE)
#undef NET__ERR_CASE
    default:
        break;
    }
    if (rc > -3100 && rc <= -3000) return "unknown net error";
    /* libuv's codes are negated errno values on Unix; strerror() names them
     * without uv_strerror()'s allocation for codes libuv does not know. */
    if (rc < 0 && rc > -4096) return strerror(-rc);
    if (rc < 0) return uv_strerror(rc);
    return "unknown error";
}

_Noreturn void net__assert_fail(const char *expr, const char *file, int line) {
    /* The one place net/ prints: a broken invariant, right before abort. */
    fprintf(stderr, "%s:%d: assertion failed: %s\n", file, line, expr);
    abort();
}

void net__sanitize(char *buf, size_t cap, const char *s, size_t len) {
    NET__ASSERT(buf != NULL && cap > 0);
    size_t n = len < cap - 1 ? len : cap - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        buf[i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    buf[n] = '\0';
}
