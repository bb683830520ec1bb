/*
 * fuzz_fs_path.c - libFuzzer harness for the path <-> key spelling
 * (fs/path.c). The input is used twice:
 *   - as a file name: if fs_name_decode accepts it, encoding the result
 *     must give the input back (only canonical names are accepted), and the
 *     raw component must not contain '/';
 *   - as a key component: fs_name_encode must give a valid name (1..255
 *     bytes, no '/' or NUL, not "." or "..", never the reserved "%value";
 *     printable ASCII without '%' kept as is) that decodes back to the input
 *     (or, for a hashed long name, is recognised as one whose visible part
 *     is a prefix of the input).
 */
#include "fs/fs_int.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *in = (const char *)data;
    char name[FS_NAME_MAX + 1];
    char *raw = malloc(size + 1);
    if (raw == NULL) return 0;

    long n = fs_name_decode(in, size, raw, size + 1);
    if (n >= 0) {
        if (memchr(raw, '/', (size_t)n) != NULL) abort();
        size_t nl = fs_name_encode(raw, (size_t)n, name, sizeof name);
        if (nl != size || memcmp(name, in, size) != 0) abort();
    }

    if (memchr(in, '/', size) == NULL) {
        size_t nl = fs_name_encode(in, size, name, sizeof name);
        if (nl == 0 || nl > FS_NAME_MAX || strlen(name) != nl) abort();
        if (memchr(name, '/', nl) != NULL) abort();
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) abort();
        if (fs__name_is_value(name, nl)) abort(); /* "%value" is reserved */
        /* a '%' is written as itself unless a letter, digit or '~' follows */
        if (nl == size && memcmp(name, in, size) != 0 && memchr(in, '%', size) == NULL &&
            size > 0 && !(size <= 2 && in[0] == '.')) {
            int plain = 1;
            for (size_t i = 0; i < size; i++)
                plain &= (unsigned char)in[i] >= 0x20 && (unsigned char)in[i] < 0x7F;
            if (plain) abort(); /* printable ASCII without '%' is kept as is */
        }
        char *back = malloc(nl + 1);
        if (back == NULL) abort();
        long m = fs_name_decode(name, nl, back, nl + 1);
        if (m >= 0) {
            if ((size_t)m != size || memcmp(back, in, size) != 0) abort();
        } else {
            size_t pl = 0;
            if (!fs__name_hashed(name, nl, back, &pl)) abort();
            if (pl > size || memcmp(back, in, pl) != 0) abort();
        }
        free(back);
    }
    free(raw);
    return 0;
}
