/*
 * fs_int.h - internals of fs/ shared by its files and its unit tests, with
 * no dependency on libfuse: assertions, the name-spelling helpers of
 * path.c and SHA-256. Private to fs/ (and tests/unit/fs/, tests/fuzz/).
 */
#ifndef QUORUMFS_FS_INT_H
#define QUORUMFS_FS_INT_H

#include "fs/fs.h"

#include <stddef.h>
#include <stdint.h>

/* Stays on in release builds: prints the expression, file and line. */
#define FS_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) fs__assert_fail(#cond, __FILE__, __LINE__);                                   \
    } while (0)

_Noreturn void fs__assert_fail(const char *expr, const char *file, int line);

/* Spelling of the empty key component (path.c rule 1). */
#define FS__NAME_EMPTY "%empty"
/* Reserved name of a directory's own value (the key that is also the
 * directory's prefix, less its '/'). */
#define FS__NAME_VALUE "%value"
/* Rule 3: longest encoded prefix kept in a hashed long name, hash bytes. */
#define FS__HASH_PREFIX_MAX 200u
#define FS__HASH_BYTES 16u

/* Whether name is the reserved "%value" (the directory's own value). */
int fs__name_is_value(const char *name, size_t name_len);

/* Whether name has the form of a hashed long name (rule 3). If so, writes
 * the raw bytes its visible part decodes to (prefix_out needs name_len
 * bytes) and their length, and returns 1; else returns 0. Whether some key
 * component really spells as name is for the caller to check by encoding
 * candidates. */
int fs__name_hashed(const char *name, size_t name_len, char *prefix_out, size_t *prefix_len);

/* SHA-256 of data[0..len). */
void fs__sha256(const void *data, size_t len, unsigned char out[32]);

#endif /* QUORUMFS_FS_INT_H */
