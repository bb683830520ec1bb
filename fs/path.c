/*
 * path.c - the bijection between key components and file names.
 *
 * SPECIFICATION (also in fs/README.md; the tests in tests/unit/fs/ check it).
 *
 * Let P be the mount prefix (default "/"; a non-empty prefix that does not
 * end in '/' gets one appended; "" means the whole key space). A key K is
 * shown iff K starts with P. The rest R = K[len(P):] is split on every '/'
 * into components c1 / c2 / ... / cn (n >= 1; components may be empty:
 * "a//b" has the components "a", "", "b", and "a/" has "a", ""). The node
 * c1/.../cn is a directory if some key starts with P + c1/.../cn + "/",
 * otherwise it is a regular file whose content is K's value. Each component
 * c is shown as the file name enc(c):
 *
 *   1. c == ""         -> "%empty"
 *      c == "."        -> "%2E"
 *      c == ".."       -> "%2E%2E"
 *   2. otherwise c is cut into units, left to right: a well-formed UTF-8
 *      sequence (RFC 3629: no overlong forms, no surrogates, <= U+10FFFF) is
 *      one unit, any other byte is a unit of its own. A unit is written as
 *      itself, except that these are written as '%' followed by two
 *      UPPERCASE hex digits of the byte: the bytes 0x00-0x1F, 0x7F and '/'
 *      (0x2F, never in a component), every byte that is not part of a
 *      well-formed UTF-8 sequence, and a '%' (0x25) that is followed in c
 *      by an ASCII letter, digit or '~' (so "%", "50%" and "50% off" are
 *      written as they are, "50%off" as "50%25off", "%41" as "%2541").
 *   3. if the result of rule 2 is longer than FS_NAME_MAX (255) bytes, the
 *      name is instead: the longest run of whole units of rule 2's result
 *      that is at most 200 bytes, then "%~", then 32 lowercase hex digits:
 *      the first 16 bytes of SHA-256(c). (At most 234 bytes.)
 *
 * Reserved names, which rules 1-3 never produce for a component:
 *   "%value"   inside a directory D: the value of the key D itself, when D
 *              is also a key ("/a" beside "/a/b": "MNT/a" is a directory
 *              and "MNT/a/%value" the value of "/a"; ls lists it, cat reads
 *              it, find shows it). Creating "D/%value" puts the key D.
 *              At the mount root it is the key P without its final '/', if
 *              that is a non-empty key ("--mount-prefix /app":
 *              "MNT/%value" is the key "/app").
 *   any other name that is not exactly what the rules produce: a '%'
 *   followed by a letter, digit or '~' that is not an escape of two
 *   uppercase hex digits or of the form of rule 3 ("50%off", "%2e"), or an
 *   escape the rules would not write ("%41" for "A", "%25" at the end) is
 *   not canonical: lookup gives ENOENT, create/mkdir/rename-to give
 *   EINVAL. Names longer than 255 bytes give ENAMETOOLONG.
 *
 * Hence enc is injective, dec(enc(c)) == c for every byte string c, and
 * enc(dec(n)) == n for every name n that dec accepts; every key under P has
 * exactly one path and every canonical path names at most one key. A hashed
 * name (rule 3) is resolved by looking in its directory for the child whose
 * spelling it is (two long components colliding in their first 200 encoded
 * bytes and the 128-bit hash would make one of them unreachable).
 *
 * Directories: mkdir D puts the marker key P + c1/.../cn + "/" (the
 * component "" below D) with an empty value and metadata mode S_IFDIR|perm.
 * A marker (a key ending in '/' whose metadata says S_IFDIR) is not listed;
 * it gives the directory its mode/owner/mtime and keeps it when empty. A key
 * ending in '/' without that metadata (written through the etcd API) is an
 * ordinary file named "%empty".
 *
 * This file is pure computation: no I/O, no allocation, thread-safe.
 */
#include "fs/fs_int.h"

#include <errno.h>
#include <string.h>

static const char hex_upper[] = "0123456789ABCDEF";
static const char hex_lower[] = "0123456789abcdef";

/* Length of the well-formed UTF-8 sequence at s[0..n) (1..4), or 0. */
static size_t utf8_unit(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* bounds of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F; /* no UTF-16 surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F; /* <= U+10FFFF */
    } else {
        return 0;
    }
    if (n < len) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return len;
}

static int byte_escaped(unsigned char c) {
    return c < 0x20 || c == 0x7F || c == '/';
}

/* Whether c after a '%' would make it read as an escape, a reserved name
 * or a hash marker: an ASCII letter or digit, or '~'. */
static int pct_introduces(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '~';
}

/* The next unit of raw at *pos: its raw length (*raw_len) and its encoded
 * length (returned: 1..4 literal bytes or 3 for an escape). A '%' is
 * escaped only where the byte after it (in raw) is an ASCII letter, digit
 * or '~' (rule 2). */
static size_t next_unit(const unsigned char *raw, size_t n, size_t pos, size_t *raw_len) {
    unsigned char c = raw[pos];
    if (c < 0x80) {
        *raw_len = 1;
        if (c == '%') return pos + 1 < n && pct_introduces(raw[pos + 1]) ? 3 : 1;
        return byte_escaped(c) ? 3 : 1;
    }
    size_t l = utf8_unit(raw + pos, n - pos);
    if (l == 0) {
        *raw_len = 1;
        return 3;
    }
    *raw_len = l;
    return l;
}

/* Writes the unit at raw[pos] (enc_len from next_unit) into out. */
static void put_unit(const unsigned char *raw, size_t pos, size_t raw_len, size_t enc_len,
                     char *out) {
    if (enc_len == 3 && raw_len == 1) {
        out[0] = '%';
        out[1] = hex_upper[raw[pos] >> 4];
        out[2] = hex_upper[raw[pos] & 15];
    } else {
        memcpy(out, raw + pos, raw_len);
    }
}

/* Length of rule 2's spelling of raw. */
static size_t plain_len(const unsigned char *raw, size_t n) {
    size_t total = 0, pos = 0;
    while (pos < n) {
        size_t rl;
        total += next_unit(raw, n, pos, &rl);
        pos += rl;
    }
    return total;
}

size_t fs_name_encode(const char *raw_c, size_t raw_len, char *out, size_t out_size) {
    FS_ASSERT(out != NULL);
    FS_ASSERT(out_size >= FS_NAME_MAX + 1);
    FS_ASSERT(raw_c != NULL || raw_len == 0);
    const unsigned char *raw = (const unsigned char *)raw_c;
    static const char *const special[] = {FS__NAME_EMPTY, "%2E", "%2E%2E"};
    int which = -1;
    if (raw_len == 0)
        which = 0;
    else if (raw_len == 1 && raw[0] == '.')
        which = 1;
    else if (raw_len == 2 && raw[0] == '.' && raw[1] == '.')
        which = 2;
    if (which >= 0) {
        size_t l = strlen(special[which]);
        memcpy(out, special[which], l + 1);
        return l;
    }
    size_t full = plain_len(raw, raw_len);
    size_t limit = full <= FS_NAME_MAX ? full : FS__HASH_PREFIX_MAX;
    size_t o = 0, pos = 0;
    while (pos < raw_len) {
        size_t rl, el = next_unit(raw, raw_len, pos, &rl);
        if (o + el > limit) break;
        put_unit(raw, pos, rl, el, out + o);
        o += el;
        pos += rl;
    }
    if (full > FS_NAME_MAX) {
        unsigned char digest[32];
        fs__sha256(raw, raw_len, digest);
        out[o++] = '%';
        out[o++] = '~';
        for (size_t i = 0; i < FS__HASH_BYTES; i++) {
            out[o++] = hex_lower[digest[i] >> 4];
            out[o++] = hex_lower[digest[i] & 15];
        }
    }
    FS_ASSERT(o >= 1 && o <= FS_NAME_MAX);
    out[o] = '\0';
    return o;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes name by rule 2's syntax only (escapes and literal bytes) into out;
 * returns the raw length or -EINVAL for a malformed escape. out_size must
 * be >= name_len. */
static long decode_syntax(const char *name, size_t name_len, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < name_len;) {
        if (name[i] == '%') {
            int h = i + 2 < name_len ? hexval(name[i + 1]) : -1;
            int l = i + 2 < name_len ? hexval(name[i + 2]) : -1;
            if (h >= 0 && l >= 0) {
                out[o++] = (char)(h * 16 + l);
                i += 3;
            } else if (i + 1 < name_len && pct_introduces((unsigned char)name[i + 1])) {
                return -EINVAL; /* "%2e", "%G1", "50%off": never written so */
            } else {
                out[o++] = name[i++]; /* a '%' of its own: "%", "50% off" */
            }
        } else {
            out[o++] = name[i++];
        }
    }
    return (long)o;
}

/* Whether enc(raw) (rules 1-2 only, without the length rule) equals name. */
static int spelled_as(const unsigned char *raw, size_t n, const char *name, size_t name_len) {
    size_t p = 0, pos = 0;
    while (pos < n) {
        size_t rl, el = next_unit(raw, n, pos, &rl);
        char unit[4];
        if (p + el > name_len) return 0;
        put_unit(raw, pos, rl, el, unit);
        if (memcmp(unit, name + p, el) != 0) return 0;
        p += el;
        pos += rl;
    }
    return p == name_len;
}

long fs_name_decode(const char *name, size_t name_len, char *out, size_t out_size) {
    FS_ASSERT(name != NULL || name_len == 0);
    FS_ASSERT(out != NULL || out_size == 0);
    if (name_len == 0 || name_len > FS_NAME_MAX) return -EINVAL;
    if (name_len == strlen(FS__NAME_EMPTY) && memcmp(name, FS__NAME_EMPTY, name_len) == 0) return 0;
    if (out_size < name_len) return -EINVAL;
    if (name_len == 3 && memcmp(name, "%2E", 3) == 0) {
        out[0] = '.';
        return 1;
    }
    if (name_len == 6 && memcmp(name, "%2E%2E", 6) == 0) {
        out[0] = out[1] = '.';
        return 2;
    }
    long n = decode_syntax(name, name_len, out);
    if (n < 0) return n;
    const unsigned char *raw = (const unsigned char *)out;
    if ((n == 1 && raw[0] == '.') || (n == 2 && raw[0] == '.' && raw[1] == '.'))
        return -EINVAL; /* "." and ".." are spelled %2E and %2E%2E */
    if (memchr(out, '/', (size_t)n) != NULL) return -EINVAL;
    if (!spelled_as(raw, (size_t)n, name, name_len)) return -EINVAL;
    return n;
}

int fs__name_hashed(const char *name, size_t name_len, char *prefix_out, size_t *prefix_len) {
    FS_ASSERT(name != NULL);
    FS_ASSERT(prefix_out != NULL);
    const size_t tail = 2 + 2 * FS__HASH_BYTES;
    if (name_len < tail || name_len > FS__HASH_PREFIX_MAX + tail) return 0;
    size_t cut = name_len - tail;
    if (name[cut] != '%' || name[cut + 1] != '~') return 0;
    for (size_t i = cut + 2; i < name_len; i++)
        if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f'))) return 0;
    long n = decode_syntax(name, cut, prefix_out);
    if (n < 0) return 0;
    const unsigned char *p = (const unsigned char *)prefix_out;
    /* A '%' ending the visible part was escaped or not by the byte after it,
     * which the name does not show: either spelling is canonical there. */
    int ok = spelled_as(p, (size_t)n, name, cut) ||
             (n > 0 && p[n - 1] == '%' && cut >= 3 && memcmp(name + cut - 3, "%25", 3) == 0 &&
              spelled_as(p, (size_t)n - 1, name, cut - 3));
    if (!ok) return 0;
    *prefix_len = (size_t)n;
    return 1;
}

int fs__name_is_value(const char *name, size_t name_len) {
    return name_len == sizeof FS__NAME_VALUE - 1 && memcmp(name, FS__NAME_VALUE, name_len) == 0;
}

/* ---- SHA-256 (FIPS 180-4), used only for rule 3's long-name spelling ---- */

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t ror(uint32_t x, unsigned n) {
    return (x >> n) | (x << (32 - n));
}

static void sha_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 =
            hh + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[i] + w[i];
        uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
}

void fs__sha256(const void *data, size_t len, unsigned char out[32]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    const unsigned char *p = data;
    size_t left = len;
    while (left >= 64) {
        sha_block(h, p);
        p += 64;
        left -= 64;
    }
    unsigned char buf[128];
    memset(buf, 0, sizeof buf);
    if (left) memcpy(buf, p, left);
    buf[left] = 0x80;
    size_t total = left + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) buf[total - 1 - i] = (unsigned char)(bits >> (8 * i));
    sha_block(h, buf);
    if (total == 128) sha_block(h, buf + 64);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(h[i] >> 8);
        out[4 * i + 3] = (unsigned char)h[i];
    }
}
