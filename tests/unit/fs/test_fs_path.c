/*
 * test_fs_path.c - the path <-> key spelling of fs/path.c: every rule of the
 * specification, all 256 one-byte names, reserved and non-canonical names,
 * long names, and seeded random round trips (enc then dec is the identity;
 * dec accepts only what enc produces).
 */
#include "fs/fs_int.h"
#include "tests/harness.h"

#include <errno.h>

static uint64_t rng_state;
static uint64_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* enc(raw) then dec must give raw back, and the name must obey NAME_MAX,
 * hold no '/' or NUL, and not be "." or "..". Returns 0 when all hold. */
static int roundtrip(const char *raw, size_t rl, char *name_out) {
    char name[FS_NAME_MAX + 1];
    size_t nl = fs_name_encode(raw, rl, name, sizeof name);
    if (nl == 0 || nl > FS_NAME_MAX || strlen(name) != nl) return 1;
    if (memchr(name, '/', nl)) return 2;
    if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) return 3;
    if (name_out) memcpy(name_out, name, nl + 1);
    char back[FS_NAME_MAX + 1];
    long n = fs_name_decode(name, nl, back, sizeof back);
    if (strstr(name, "%~") != NULL) return n == -EINVAL ? 0 : 4;   /* hashed: lookup only */
    if (memchr(raw, '/', rl) != NULL) return n == -EINVAL ? 0 : 6; /* never a component */
    if (n < 0 || (size_t)n != rl || memcmp(back, raw, rl) != 0) return 5;
    return 0;
}

TEST(every_single_byte) {
    for (int b = 0; b < 256; b++) {
        char raw = (char)b, name[FS_NAME_MAX + 1];
        if (b == '.') continue; /* "." is special, below */
        ASSERT_EQ(roundtrip(&raw, 1, name), 0);
        int escaped = b < 0x20 || b == 0x7F || b == '/' || b >= 0x80; /* a lone '%' is not */
        if (escaped) {
            char want[4];
            snprintf(want, sizeof want, "%%%02X", b);
            ASSERT_STR_EQ(name, want);
        } else {
            ASSERT_EQ(strlen(name), 1);
            ASSERT_EQ((unsigned char)name[0], b);
        }
    }
}

TEST(every_byte_pair) {
    for (int a = 0; a < 256; a++)
        for (int b = 0; b < 256; b++) {
            char raw[2] = {(char)a, (char)b};
            ASSERT_EQ(roundtrip(raw, 2, NULL), 0);
        }
}

TEST(special_names) {
    char name[FS_NAME_MAX + 1], raw[8];
    ASSERT_EQ(fs_name_encode("", 0, name, sizeof name), 6);
    ASSERT_STR_EQ(name, "%empty");
    fs_name_encode(".", 1, name, sizeof name);
    ASSERT_STR_EQ(name, "%2E");
    fs_name_encode("..", 2, name, sizeof name);
    ASSERT_STR_EQ(name, "%2E%2E");
    fs_name_encode("...", 3, name, sizeof name);
    ASSERT_STR_EQ(name, "...");
    fs_name_encode(".x", 2, name, sizeof name);
    ASSERT_STR_EQ(name, ".x");
    fs_name_encode("a%b", 3, name, sizeof name);
    ASSERT_STR_EQ(name, "a%25b");
    /* a '%' not followed by a letter, digit or '~' is written as itself */
    const char *same[] = {"%", "50%", "50% off", "%%", "%-x", "%.conf", "%\xC3\xA9"};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        size_t l = strlen(same[i]);
        ASSERT_EQ(fs_name_encode(same[i], l, name, sizeof name), l);
        ASSERT_STR_EQ(name, same[i]);
        ASSERT_EQ(roundtrip(same[i], l, NULL), 0);
    }
    fs_name_encode("%value", 6, name, sizeof name); /* never the reserved name */
    ASSERT_STR_EQ(name, "%25value");
    fs_name_encode("%~", 2, name, sizeof name);
    ASSERT_STR_EQ(name, "%25~");
    fs_name_encode("%empty", 6, name, sizeof name);
    ASSERT_STR_EQ(name, "%25empty");
    ASSERT_EQ(fs_name_decode("%empty", 6, raw, sizeof raw), 0);
    ASSERT_EQ(fs_name_decode("%2E", 3, raw, sizeof raw), 1);
    ASSERT_EQ(raw[0], '.');
    ASSERT_EQ(fs_name_decode("%2E%2E", 6, raw, sizeof raw), 2);
    ASSERT_EQ(roundtrip("", 0, NULL), 0);
    ASSERT_EQ(roundtrip(".", 1, NULL), 0);
    ASSERT_EQ(roundtrip("..", 2, NULL), 0);
}

TEST(utf8_kept_invalid_escaped) {
    char name[FS_NAME_MAX + 1];
    fs_name_encode("h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80", 15, name, sizeof name);
    ASSERT_STR_EQ(name, "h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80");
    /* overlong '/', a surrogate, > U+10FFFF, a lone continuation, truncated */
    fs_name_encode("\xC0\xAF", 2, name, sizeof name);
    ASSERT_STR_EQ(name, "%C0%AF");
    fs_name_encode("\xED\xA0\x80", 3, name, sizeof name);
    ASSERT_STR_EQ(name, "%ED%A0%80");
    fs_name_encode("\xF4\x90\x80\x80", 4, name, sizeof name);
    ASSERT_STR_EQ(name, "%F4%90%80%80");
    fs_name_encode("a\x80", 2, name, sizeof name);
    ASSERT_STR_EQ(name, "a%80");
    fs_name_encode("\xE2\x82", 2, name, sizeof name);
    ASSERT_STR_EQ(name, "%E2%82");
    fs_name_encode("tab\there\n", 9, name, sizeof name);
    ASSERT_STR_EQ(name, "tab%09here%0A");
}

TEST(non_canonical_rejected) {
    char raw[300];
    const char *bad[] = {
        "%value",                     /* reserved: the directory's own value */
        "50%off",                     /* '%' then a letter, not two hex digits */
        "%25",                        /* a lone '%' needs no escape */
        "a%25.b",                     /* nor one before '.' */
        "%2e",                        /* lowercase hex */
        "%41",                        /* 'A' needs no escape */
        "%2F",                        /* '/' cannot be inside a component */
        "a%2",       ".",       "..", /* spelled %2E, %2E%2E */
        "%E2%82%AC",                  /* a valid UTF-8 sequence is written as itself */
        "\xC3",                       /* a raw invalid byte must be escaped */
        "%EMPTY",    "%empty2",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        long n = fs_name_decode(bad[i], strlen(bad[i]), raw, sizeof raw);
        if (n != -EINVAL) fprintf(stderr, "  accepted: \"%s\"\n", bad[i]);
        ASSERT_EQ(n, -EINVAL);
    }
    ASSERT(fs__name_is_value("%value", 6));
    ASSERT(!fs__name_is_value("%", 1));
    ASSERT(!fs__name_is_value("%25value", 8));
}

TEST(long_names_hashed) {
    char raw[1000], name[FS_NAME_MAX + 1], name2[FS_NAME_MAX + 1];
    memset(raw, 'x', sizeof raw);
    /* exactly 255 encoded bytes: plain */
    ASSERT_EQ(fs_name_encode(raw, 255, name, sizeof name), 255);
    ASSERT_EQ(roundtrip(raw, 255, NULL), 0);
    /* 256: hashed, 200 visible bytes + "%~" + 32 hex */
    size_t nl = fs_name_encode(raw, 256, name, sizeof name);
    ASSERT_EQ(nl, 234);
    ASSERT_MEM_EQ(name + 200, "%~", 2);
    ASSERT_EQ(fs_name_decode(name, nl, raw + 500, 300), -EINVAL);
    /* different long names differ; same name is stable */
    raw[255] = 'y';
    size_t nl2 = fs_name_encode(raw, 256, name2, sizeof name2);
    ASSERT_EQ(nl2, 234);
    ASSERT(memcmp(name, name2, nl) != 0);
    /* the visible part resolves to the raw prefix */
    char prefix[FS_NAME_MAX + 1];
    size_t pl = 0;
    ASSERT_EQ(fs__name_hashed(name, nl, prefix, &pl), 1);
    ASSERT_EQ(pl, 200);
    ASSERT_MEM_EQ(prefix, raw, 200);
    /* escapes are never cut in half: 100 "%a" encode to 400 bytes */
    char pct[200];
    for (size_t i = 0; i < sizeof pct; i += 2) {
        pct[i] = '%';
        pct[i + 1] = 'a';
    }
    nl = fs_name_encode(pct, sizeof pct, name, sizeof name);
    ASSERT_EQ(nl, 200 + 34); /* 50 whole "%25a" */
    ASSERT_EQ(fs__name_hashed(name, nl, prefix, &pl), 1);
    ASSERT_EQ(pl, 100);
    /* a '%' ending the visible part, escaped for the byte after it */
    char pe[300];
    memset(pe, 'p', sizeof pe);
    pe[197] = '%';
    nl = fs_name_encode(pe, sizeof pe, name, sizeof name);
    ASSERT_EQ(nl, 200 + 34); /* 197 'p' and "%25" */
    ASSERT_EQ(fs__name_hashed(name, nl, prefix, &pl), 1);
    ASSERT_EQ(pl, 198);
    pe[198] = ' ';
    nl = fs_name_encode(pe, sizeof pe, name, sizeof name);
    ASSERT_EQ(nl, 200 + 34); /* 197 'p', '%', ' ', 'p' */
    ASSERT_EQ(fs__name_hashed(name, nl, prefix, &pl), 1);
    ASSERT_EQ(pl, 200);
    ASSERT_EQ(fs__name_hashed("abc", 3, prefix, &pl), 0);
    ASSERT_EQ(fs__name_hashed("%~0123456789abcdef0123456789abcdeF", 34, prefix, &pl), 0);
    ASSERT_EQ(fs__name_hashed("%~0123456789abcdef0123456789abcdef", 34, prefix, &pl), 1);
    ASSERT_EQ(pl, 0);
    /* a name longer than NAME_MAX is never accepted */
    memset(raw, 'a', 300);
    ASSERT_EQ(fs_name_decode(raw, 256, prefix, sizeof prefix), -EINVAL);
}

TEST(sha256_vectors) {
    unsigned char d[32];
    fs__sha256("abc", 3, d);
    ASSERT_EQ(d[0], 0xba);
    ASSERT_EQ(d[1], 0x78);
    ASSERT_EQ(d[31], 0xad);
    fs__sha256("", 0, d);
    ASSERT_EQ(d[0], 0xe3);
    ASSERT_EQ(d[31], 0x55);
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    fs__sha256(m, strlen(m), d); /* 56 bytes: padding spills into a second block */
    ASSERT_EQ(d[0], 0x24);
    ASSERT_EQ(d[1], 0x8d);
    ASSERT_EQ(d[31], 0xc1);
}

TEST(random_roundtrips) {
    rng_state = harness_seed * 2654435761u + 1;
    char raw[600];
    for (int iter = 0; iter < 200000; iter++) {
        size_t rl = rng() % (iter % 10 == 0 ? 400 : 12);
        int alphabet = (int)(rng() % 4);
        for (size_t i = 0; i < rl; i++) {
            uint64_t r = rng();
            switch (alphabet) {
            case 0:
                raw[i] = (char)r;
                break; /* any byte */
            case 1:
                raw[i] = "ab.%/\xC3\xA9\x80"[r % 8];
                break; /* tricky bytes */
            case 2:
                raw[i] = (char)(0x20 + r % 0x5F);
                break; /* printable */
            default:
                raw[i] = "\xE2\x82\xAC\xF0\x9F\x98\x80."[r % 8];
                break;
            }
        }
        int rc = roundtrip(raw, rl, NULL);
        if (rc != 0) fprintf(stderr, "  iter %d len %zu rc %d\n", iter, rl, rc);
        ASSERT_EQ(rc, 0);
    }
}

TEST(random_names_decoded_are_canonical) {
    /* dec(n) succeeds only if enc(dec(n)) == n */
    rng_state = harness_seed * 11400714819323198485ull + 7;
    char name[40], raw[40], back[FS_NAME_MAX + 1];
    int accepted = 0;
    for (int iter = 0; iter < 300000; iter++) {
        size_t nl = 1 + rng() % 10;
        for (size_t i = 0; i < nl; i++) name[i] = "%2E0Aa.F/\xC3\xA9z"[rng() % 12];
        long n = fs_name_decode(name, nl, raw, sizeof raw);
        if (n < 0) continue;
        accepted++;
        size_t bl = fs_name_encode(raw, (size_t)n, back, sizeof back);
        ASSERT_EQ(bl, nl);
        ASSERT_MEM_EQ(back, name, nl);
    }
    ASSERT_GT(accepted, 1000);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
