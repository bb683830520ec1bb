/*
 * test_net_frame.c - the peer wire format: every frame type round-trips,
 * streams decode identically however they are split (down to one byte at a
 * time), every truncation is "need more" and never an error or a read past
 * the end, and hostile input (oversize, bad version or type, malformed
 * payloads, evil snapshot file names) is refused with the right code.
 */
#include <stdlib.h>
#include <string.h>

#include "net/frame.h"
#include "net/internal.h"
#include "tests/harness.h"

#define SAMPLES_MAX 16

static uint8_t meta_bytes[100];
static uint8_t chunk_bytes[3000];
static uint8_t raft_bytes[777];

struct sample {
    uint8_t *buf;
    size_t len;
};

/* One frame of every type, with non-trivial field values. */
static size_t make_frames(struct net__frame *fs) {
    for (size_t i = 0; i < sizeof(meta_bytes); i++) meta_bytes[i] = (uint8_t)(i * 7);
    for (size_t i = 0; i < sizeof(chunk_bytes); i++) chunk_bytes[i] = (uint8_t)(i * 13 + 1);
    for (size_t i = 0; i < sizeof(raft_bytes); i++) raft_bytes[i] = (uint8_t)(255 - i);
    size_t n = 0;
    memset(fs, 0, SAMPLES_MAX * sizeof(*fs));

    fs[n].type = NET__FRAME_HELLO;
    fs[n].u.hello.from_id = 1;
    fs[n].u.hello.to_id = 0x0102030405060708ull;
    fs[n].u.hello.token = "tok-en";
    fs[n].u.hello.token_len = 6;
    fs[n].u.hello.n_members = 3;
    fs[n].u.hello.members[0] = (struct net__wire_member){1, "http://127.0.0.1:1", 18};
    fs[n].u.hello.members[1] = (struct net__wire_member){2, "http://[::1]:2", 14};
    fs[n].u.hello.members[2] = (struct net__wire_member){~0ull, "http://h:3", 10};
    n++;
    fs[n] = fs[n - 1];
    fs[n].type = NET__FRAME_HELLO_ACK;
    fs[n].u.hello.token_len = 0; /* an empty token is allowed */
    fs[n].u.hello.n_members = 0;
    n++;
    fs[n].type = NET__FRAME_REJECT;
    fs[n].u.reject.reason = "cluster token mismatch: local a, remote b";
    fs[n].u.reject.reason_len = strlen(fs[n].u.reject.reason);
    n++;
    fs[n].type = NET__FRAME_RAFT;
    fs[n].u.raft.data = raft_bytes;
    fs[n].u.raft.len = sizeof(raft_bytes);
    n++;
    fs[n].type = NET__FRAME_SNAP_BEGIN;
    fs[n].u.snap_begin.snap_id = 42;
    fs[n].u.snap_begin.n_files = 3;
    fs[n].u.snap_begin.total_bytes = 1ull << 40;
    fs[n].u.snap_begin.meta = meta_bytes;
    fs[n].u.snap_begin.meta_len = sizeof(meta_bytes);
    n++;
    fs[n].type = NET__FRAME_SNAP_FILE;
    fs[n].u.snap_file.snap_id = 42;
    fs[n].u.snap_file.size = 123456789;
    fs[n].u.snap_file.name = "sub/000012.sst";
    fs[n].u.snap_file.name_len = strlen("sub/000012.sst");
    n++;
    fs[n].type = NET__FRAME_SNAP_CHUNK;
    fs[n].u.snap_chunk.snap_id = 42;
    fs[n].u.snap_chunk.data = chunk_bytes;
    fs[n].u.snap_chunk.len = sizeof(chunk_bytes);
    n++;
    fs[n].type = NET__FRAME_SNAP_END;
    fs[n].u.snap_end.snap_id = 42;
    fs[n].u.snap_end.crc32 = 0xdeadbeef;
    n++;
    fs[n].type = NET__FRAME_SNAP_ABORT;
    fs[n].u.snap_ack.snap_id = 42;
    fs[n].u.snap_ack.reason = "disk full";
    fs[n].u.snap_ack.reason_len = 9;
    n++;
    fs[n].type = NET__FRAME_SNAP_ACK;
    fs[n].u.snap_ack.snap_id = 42;
    fs[n].u.snap_ack.status = 1;
    fs[n].u.snap_ack.reason = "no";
    fs[n].u.snap_ack.reason_len = 2;
    n++;
    fs[n].type = NET__FRAME_PING;
    n++;
    return n;
}

static struct net__frame frames[SAMPLES_MAX];
static struct sample samples[SAMPLES_MAX];
static size_t n_samples;

/* Encodes the sample frames once; returns 0 on success. */
static int setup(void) {
    if (n_samples > 0) return 0;
    size_t n = make_frames(frames);
    for (size_t i = 0; i < n; i++) {
        int rc = net__frame_encode(&frames[i], &samples[i].buf, &samples[i].len);
        if (rc != 0) return rc;
        if (samples[i].len != net__frame_encoded_size(&frames[i])) return -1;
    }
    n_samples = n;
    return 0;
}

/* Re-encodes a decoded frame; equal bytes mean equal fields. */
static int reencode_equals(const struct net__frame *f, const uint8_t *want, size_t want_len) {
    uint8_t *buf;
    size_t len;
    int rc = net__frame_encode(f, &buf, &len);
    if (rc != 0) return 0;
    int eq = len == want_len && memcmp(buf, want, len) == 0;
    free(buf);
    return eq;
}

TEST(roundtrip_every_type) {
    ASSERT_EQ(setup(), 0);
    ASSERT_EQ(n_samples, NET__FRAME_TYPE_MAX_);
    for (size_t i = 0; i < n_samples; i++) {
        struct net__frame f;
        size_t used = 0;
        ASSERT_EQ(net__frame_decode(samples[i].buf, samples[i].len, NET_FRAME_BYTES_LIMIT, &f,
                                    &used),
                  0);
        ASSERT_EQ(used, samples[i].len);
        ASSERT_EQ(f.type, frames[i].type);
        ASSERT_EQ(f.version, NET_PROTOCOL_VERSION);
        ASSERT(reencode_equals(&f, samples[i].buf, samples[i].len));
    }
    /* Spot checks of decoded fields, beyond byte equality. */
    struct net__frame f;
    size_t used;
    ASSERT_EQ(net__frame_decode(samples[0].buf, samples[0].len, NET_FRAME_BYTES_LIMIT, &f, &used),
              0);
    ASSERT_U64_EQ(f.u.hello.to_id, 0x0102030405060708ull);
    ASSERT_EQ(f.u.hello.n_members, 3);
    ASSERT_U64_EQ(f.u.hello.members[2].id, ~0ull);
    ASSERT_EQ(f.u.hello.members[1].url_len, 14);
    ASSERT_MEM_EQ(f.u.hello.members[1].url, "http://[::1]:2", 14);
    ASSERT_EQ(net__frame_decode(samples[6].buf, samples[6].len, NET_FRAME_BYTES_LIMIT, &f, &used),
              0);
    ASSERT_EQ(f.u.snap_chunk.len, sizeof(chunk_bytes));
    ASSERT_MEM_EQ(f.u.snap_chunk.data, chunk_bytes, sizeof(chunk_bytes));
    /* The header is big-endian length of version + type + payload. */
    ASSERT_EQ(net__get_u32(samples[10].buf), 2);
    ASSERT_EQ(samples[10].len, NET__FRAME_HEADER_BYTES);
}

TEST(every_truncation_needs_more) {
    ASSERT_EQ(setup(), 0);
    for (size_t i = 0; i < n_samples; i++) {
        for (size_t k = 0; k < samples[i].len; k++) {
            /* A private copy of exactly k bytes, so ASan sees any overread. */
            uint8_t *cut = malloc(k ? k : 1);
            ASSERT(cut != NULL);
            memcpy(cut, samples[i].buf, k);
            struct net__frame f;
            size_t used = 99;
            int rc = net__frame_decode(cut, k, NET_FRAME_BYTES_LIMIT, &f, &used);
            free(cut);
            ASSERT_EQ(rc, 0);
            ASSERT_EQ(used, 0);
        }
    }
}

/* Feeds `stream` through a reader in pieces; checks it yields the samples in order. */
static void feed_and_check(const uint8_t *stream, size_t len, size_t reps, uint64_t seed,
                           size_t max_piece) {
    struct net__reader r;
    net__reader_init(&r, NET_FRAME_BYTES_MIN + NET__READER_READ_BYTES);
    size_t pos = 0, got = 0;
    uint64_t x = seed | 1;
    while (pos < len) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t piece = max_piece == 1 ? 1 : 1 + (size_t)(x % max_piece);
        if (piece > len - pos) piece = len - pos;
        uint8_t *p;
        size_t room;
        ASSERT_EQ(net__reader_space(&r, &p, &room), 0);
        if (piece > room) piece = room;
        memcpy(p, stream + pos, piece);
        net__reader_commit(&r, piece);
        pos += piece;
        for (;;) {
            struct net__frame f;
            bool have;
            ASSERT_EQ(net__reader_next(&r, NET_FRAME_BYTES_MIN, &f, &have), 0);
            if (!have) break;
            size_t want = got % n_samples;
            ASSERT(got < reps * n_samples);
            ASSERT(reencode_equals(&f, samples[want].buf, samples[want].len));
            got++;
        }
    }
    ASSERT_EQ(got, reps * n_samples);
    ASSERT_EQ(r.head, r.tail);
    net__reader_release(&r);
}

static uint8_t *make_stream(size_t reps, size_t *len) {
    size_t total = 0;
    for (size_t i = 0; i < n_samples; i++) total += samples[i].len;
    uint8_t *s = malloc(total * reps);
    if (s == NULL) return NULL;
    size_t pos = 0;
    for (size_t r = 0; r < reps; r++)
        for (size_t i = 0; i < n_samples; i++) {
            memcpy(s + pos, samples[i].buf, samples[i].len);
            pos += samples[i].len;
        }
    *len = pos;
    return s;
}

TEST(stream_byte_by_byte) {
    ASSERT_EQ(setup(), 0);
    size_t len;
    uint8_t *s = make_stream(3, &len);
    ASSERT(s != NULL);
    feed_and_check(s, len, 3, 1, 1);
    free(s);
}

TEST(stream_random_splits) {
    ASSERT_EQ(setup(), 0);
    size_t len;
    uint8_t *s = make_stream(20, &len);
    ASSERT(s != NULL);
    for (uint64_t k = 0; k < 50; k++) feed_and_check(s, len, 20, harness_seed + k, 1 + k * 997);
    /* Everything at once: many frames per read. */
    feed_and_check(s, len, 20, harness_seed, len);
    free(s);
}

/* Frame with a valid header (len = 2 + plen) and the given payload. */
static uint8_t *raw_frame(uint8_t type, const uint8_t *payload, size_t plen, size_t *len) {
    uint8_t *b = malloc(NET__FRAME_HEADER_BYTES + plen + 1);
    if (b == NULL) return NULL;
    net__frame_put_header(b, type, plen);
    if (plen) memcpy(b + NET__FRAME_HEADER_BYTES, payload, plen);
    *len = NET__FRAME_HEADER_BYTES + plen;
    return b;
}

TEST(truncated_and_padded_payloads) {
    ASSERT_EQ(setup(), 0);
    for (size_t i = 0; i < n_samples; i++) {
        uint8_t type = frames[i].type;
        const uint8_t *payload = samples[i].buf + NET__FRAME_HEADER_BYTES;
        size_t plen = samples[i].len - NET__FRAME_HEADER_BYTES;
        /* Types whose last field is "the rest": a shorter payload may be valid. */
        bool rest = type == NET__FRAME_RAFT || type == NET__FRAME_SNAP_BEGIN ||
                    type == NET__FRAME_SNAP_CHUNK;
        for (size_t k = 0; k < plen; k++) {
            size_t len;
            uint8_t *b = raw_frame(type, payload, k, &len);
            ASSERT(b != NULL);
            struct net__frame f;
            size_t used;
            int rc = net__frame_decode(b, len, NET_FRAME_BYTES_LIMIT, &f, &used);
            if (rc == 0) {
                /* Only a shorter "rest" is acceptable, and it must be consistent. */
                ASSERT(rest);
                ASSERT_EQ(used, len);
                ASSERT(reencode_equals(&f, b, len));
            } else {
                ASSERT_EQ(rc, NET_EMALFORMED);
            }
            free(b);
        }
        if (!rest) {
            /* One trailing byte after the last field. */
            uint8_t *padded = malloc(plen + 1);
            ASSERT(padded != NULL);
            memcpy(padded, payload, plen);
            padded[plen] = 0;
            size_t len;
            uint8_t *b = raw_frame(type, padded, plen + 1, &len);
            free(padded);
            ASSERT(b != NULL);
            struct net__frame f;
            size_t used;
            ASSERT_EQ(net__frame_decode(b, len, NET_FRAME_BYTES_LIMIT, &f, &used), NET_EMALFORMED);
            free(b);
        }
    }
}

TEST(oversize_bad_version_bad_type) {
    uint8_t b[16] = {0};
    struct net__frame f;
    size_t used;
    /* Refused as soon as the length is readable, before any body arrives. */
    net__put_u32(b, NET_FRAME_BYTES_MIN - 3); /* 4 + len = limit + 1 */
    ASSERT_EQ(net__frame_decode(b, 4, NET_FRAME_BYTES_MIN, &f, &used), NET_ETOOBIG);
    net__put_u32(b, 0xffffffffu);
    ASSERT_EQ(net__frame_decode(b, 4, NET_FRAME_BYTES_LIMIT, &f, &used), NET_ETOOBIG);
    /* Exactly at the limit is fine (needs more bytes). */
    net__put_u32(b, NET_FRAME_BYTES_MIN - 4);
    b[4] = NET_PROTOCOL_VERSION;
    b[5] = NET__FRAME_RAFT;
    ASSERT_EQ(net__frame_decode(b, 6, NET_FRAME_BYTES_MIN, &f, &used), 0);
    ASSERT_EQ(used, 0);
    /* len below version + type. */
    net__put_u32(b, 1);
    ASSERT_EQ(net__frame_decode(b, 4, NET_FRAME_BYTES_MIN, &f, &used), NET_EMALFORMED);
    net__put_u32(b, 0);
    ASSERT_EQ(net__frame_decode(b, 4, NET_FRAME_BYTES_MIN, &f, &used), NET_EMALFORMED);
    /* Version: checked at the fifth byte. */
    net__put_u32(b, 2);
    b[4] = 0;
    ASSERT_EQ(net__frame_decode(b, 5, NET_FRAME_BYTES_MIN, &f, &used), NET_EVERSION);
    b[4] = NET_PROTOCOL_VERSION + 1;
    ASSERT_EQ(net__frame_decode(b, 6, NET_FRAME_BYTES_MIN, &f, &used), NET_EVERSION);
    /* Type: checked at the sixth byte. */
    b[4] = NET_PROTOCOL_VERSION;
    b[5] = 0;
    ASSERT_EQ(net__frame_decode(b, 6, NET_FRAME_BYTES_MIN, &f, &used), NET_ETYPE);
    b[5] = NET__FRAME_TYPE_MAX_ + 1;
    ASSERT_EQ(net__frame_decode(b, 6, NET_FRAME_BYTES_MIN, &f, &used), NET_ETYPE);
    b[5] = 0xff;
    ASSERT_EQ(net__frame_decode(b, 6, NET_FRAME_BYTES_MIN, &f, &used), NET_ETYPE);
    /* PING with its empty payload is complete at 6 bytes. */
    b[5] = NET__FRAME_PING;
    ASSERT_EQ(net__frame_decode(b, 6, NET_FRAME_BYTES_MIN, &f, &used), 0);
    ASSERT_EQ(used, 6);
    /* Empty RAFT / SNAP_CHUNK data is malformed. */
    b[5] = NET__FRAME_RAFT;
    ASSERT_EQ(net__frame_decode(b, 6, NET_FRAME_BYTES_MIN, &f, &used), NET_EMALFORMED);
}

TEST(reader_refuses_oversize_and_frees_memory) {
    struct net__reader r;
    net__reader_init(&r, NET_FRAME_BYTES_MIN + NET__READER_READ_BYTES);
    uint8_t *p;
    size_t room;
    ASSERT_EQ(net__reader_space(&r, &p, &room), 0);
    ASSERT_GE(room, NET__READER_READ_BYTES);
    net__put_u32(p, NET_FRAME_BYTES_MIN); /* one byte over the limit */
    net__reader_commit(&r, 4);
    struct net__frame f;
    bool have;
    ASSERT_EQ(net__reader_next(&r, NET_FRAME_BYTES_MIN, &f, &have), NET_ETOOBIG);
    ASSERT(!have);
    net__reader_release(&r);

    /* A frame bigger than NET__READER_KEEP_BYTES: the buffer grows, then is freed. */
    const size_t big = 1024 * 1024;
    uint8_t *payload = malloc(big);
    ASSERT(payload != NULL);
    memset(payload, 0x5a, big);
    size_t len;
    uint8_t *frame = raw_frame(NET__FRAME_RAFT, payload, big, &len);
    free(payload);
    ASSERT(frame != NULL);
    net__reader_init(&r, 2 * big + NET__READER_READ_BYTES);
    size_t pos = 0;
    bool done = false;
    while (!done) {
        ASSERT_EQ(net__reader_space(&r, &p, &room), 0);
        ASSERT_LE(r.cap, 2 * big + NET__READER_READ_BYTES);
        size_t n = room < len - pos ? room : len - pos;
        memcpy(p, frame + pos, n);
        net__reader_commit(&r, n);
        pos += n;
        ASSERT_EQ(net__reader_next(&r, 2 * big, &f, &have), 0);
        if (have) {
            ASSERT_EQ(f.u.raft.len, big);
            ASSERT_EQ(((const uint8_t *)f.u.raft.data)[big - 1], 0x5a);
            done = true;
        }
    }
    ASSERT_EQ(pos, len);
    ASSERT_EQ(net__reader_next(&r, 2 * big, &f, &have), 0);
    ASSERT(!have);
    ASSERT_EQ(r.cap, 0); /* released while idle */
    free(frame);
    net__reader_release(&r);
}

static int decode_file_name(const char *name, size_t name_len) {
    uint8_t payload[8 + 8 + 2 + 2048];
    memset(payload, 0, sizeof(payload));
    net__put_u64(payload, 7);
    net__put_u64(payload + 8, 1);
    net__put_u16(payload + 16, (uint16_t)name_len);
    memcpy(payload + 18, name, name_len);
    size_t len;
    uint8_t *b = raw_frame(NET__FRAME_SNAP_FILE, payload, 18 + name_len, &len);
    if (b == NULL) return -1;
    struct net__frame f;
    size_t used;
    int rc = net__frame_decode(b, len, NET_FRAME_BYTES_LIMIT, &f, &used);
    free(b);
    return rc;
}

TEST(evil_snapshot_file_names) {
    static const char *evil[] = {
        "..",    "../x", "a/../b", "a/..", "/etc/passwd", "/",         ".",       "./a",
        "a/./b", "a//b", "a/",     "",     "x\ny",        "tab\there", "del\x7f",
    };
    for (size_t i = 0; i < sizeof(evil) / sizeof(evil[0]); i++) {
        ASSERT_EQ(decode_file_name(evil[i], strlen(evil[i])), NET_EFILENAME);
        ASSERT_EQ(net__snap_name_check(evil[i], strlen(evil[i])), NET_EFILENAME);
        /* The encoder refuses to produce what the decoder refuses. */
        struct net__frame f = {.type = NET__FRAME_SNAP_FILE};
        f.u.snap_file.snap_id = 1;
        f.u.snap_file.name = evil[i];
        f.u.snap_file.name_len = strlen(evil[i]);
        uint8_t *buf;
        size_t len;
        ASSERT_EQ(net__frame_encode(&f, &buf, &len), NET_EFILENAME);
    }
    /* An embedded NUL. */
    ASSERT_EQ(decode_file_name("a\0b", 3), NET_EFILENAME);
    /* Too long. */
    char longname[NET_SNAP_NAME_MAX + 2];
    memset(longname, 'a', sizeof(longname));
    ASSERT_EQ(decode_file_name(longname, NET_SNAP_NAME_MAX + 1), NET_EFILENAME);
    ASSERT_EQ(decode_file_name(longname, NET_SNAP_NAME_MAX), 0);

    static const char *fine[] = {
        "CURRENT", "000012.sst", "sub/dir/file", "..a", "a..", "...", ".hidden", "a.b/c..d",
    };
    for (size_t i = 0; i < sizeof(fine) / sizeof(fine[0]); i++)
        ASSERT_EQ(decode_file_name(fine[i], strlen(fine[i])), 0);
}

/* Encodes a HELLO, lets `mutate` damage its payload, decodes. */
static int hello_with(void (*mutate)(uint8_t *payload, size_t plen)) {
    if (setup() != 0) return -1;
    size_t plen = samples[0].len - NET__FRAME_HEADER_BYTES;
    uint8_t *b = malloc(samples[0].len);
    if (b == NULL) return -1;
    memcpy(b, samples[0].buf, samples[0].len);
    mutate(b + NET__FRAME_HEADER_BYTES, plen);
    struct net__frame f;
    size_t used;
    int rc = net__frame_decode(b, samples[0].len, NET_FRAME_BYTES_LIMIT, &f, &used);
    free(b);
    return rc;
}

/* Payload layout of sample 0: from(8) to(8) toklen(2) "tok-en"(6) n(2) then members. */
#define M0 (8 + 8 + 2 + 6 + 2)
static void zero_from(uint8_t *p, size_t n) {
    (void)n;
    net__put_u64(p, 0);
}
static void zero_to(uint8_t *p, size_t n) {
    (void)n;
    net__put_u64(p + 8, 0);
}
static void nul_token(uint8_t *p, size_t n) {
    (void)n;
    p[18 + 2] = 0;
}
static void long_token(uint8_t *p, size_t n) {
    (void)n;
    net__put_u16(p + 16, NET_TOKEN_MAX + 1);
}
static void many_members(uint8_t *p, size_t n) {
    (void)n;
    net__put_u16(p + 24, NET_MEMBERS_MAX + 1);
}
static void zero_member(uint8_t *p, size_t n) {
    (void)n;
    net__put_u64(p + M0, 0);
}
static void unsorted(uint8_t *p, size_t n) {
    (void)n;
    net__put_u64(p + M0, 5);
}
static void dup_member(uint8_t *p, size_t n) {
    (void)n;
    net__put_u64(p + M0 + 8 + 2 + 18, 1); /* second id := first id */
}
static void empty_url(uint8_t *p, size_t n) {
    (void)n;
    net__put_u16(p + M0 + 8, 0);
}

TEST(hello_rules) {
    ASSERT_EQ(hello_with(zero_from), NET_EMALFORMED);
    ASSERT_EQ(hello_with(zero_to), NET_EMALFORMED);
    ASSERT_EQ(hello_with(nul_token), NET_EMALFORMED);
    ASSERT_EQ(hello_with(long_token), NET_EMALFORMED);
    ASSERT_EQ(hello_with(many_members), NET_EMALFORMED);
    ASSERT_EQ(hello_with(zero_member), NET_EMALFORMED);
    ASSERT_EQ(hello_with(unsorted), NET_EMALFORMED);
    ASSERT_EQ(hello_with(dup_member), NET_EMALFORMED);
    ASSERT_NE(hello_with(empty_url), 0);

    /* The encoder refuses an unsorted list. */
    struct net__frame f;
    memset(&f, 0, sizeof(f));
    f.type = NET__FRAME_HELLO;
    f.u.hello.from_id = 1;
    f.u.hello.to_id = 2;
    f.u.hello.n_members = 2;
    f.u.hello.members[0] = (struct net__wire_member){2, "http://a:1", 10};
    f.u.hello.members[1] = (struct net__wire_member){1, "http://b:1", 10};
    uint8_t *buf;
    size_t len;
    ASSERT_EQ(net__frame_encode(&f, &buf, &len), NET_EINVAL);

    /* The largest HELLO fits the pre-handshake limit. */
    static char urls[NET_MEMBERS_MAX][NET_URL_MAX];
    static char token[NET_TOKEN_MAX];
    memset(token, 't', sizeof(token));
    f.u.hello.token = token;
    f.u.hello.token_len = NET_TOKEN_MAX;
    f.u.hello.n_members = NET_MEMBERS_MAX;
    for (size_t i = 0; i < NET_MEMBERS_MAX; i++) {
        memset(urls[i], 'u', NET_URL_MAX);
        f.u.hello.members[i] = (struct net__wire_member){i + 1, urls[i], NET_URL_MAX};
    }
    ASSERT_EQ(net__frame_encode(&f, &buf, &len), 0);
    ASSERT_LE(len, NET__HELLO_BYTES_MAX);
    size_t used;
    struct net__frame g;
    ASSERT_EQ(net__frame_decode(buf, len, NET__HELLO_BYTES_MAX, &g, &used), 0);
    ASSERT_EQ(used, len);
    ASSERT_EQ(g.u.hello.n_members, NET_MEMBERS_MAX);
    free(buf);
}

TEST(snap_ack_and_begin_rules) {
    uint8_t p[64] = {0};
    size_t len;
    struct net__frame f;
    size_t used;
    /* snap_id 0 is never valid. */
    uint8_t *b = raw_frame(NET__FRAME_SNAP_END, p, 12, &len);
    ASSERT(b != NULL);
    ASSERT_EQ(net__frame_decode(b, len, NET_FRAME_BYTES_LIMIT, &f, &used), NET_EMALFORMED);
    free(b);
    /* SNAP_ACK status must be 0 or 1. */
    net__put_u64(p, 9);
    p[8] = 2;
    b = raw_frame(NET__FRAME_SNAP_ACK, p, 8 + 1 + 2, &len);
    ASSERT(b != NULL);
    ASSERT_EQ(net__frame_decode(b, len, NET_FRAME_BYTES_LIMIT, &f, &used), NET_EMALFORMED);
    free(b);
    /* SNAP_BEGIN file count is bounded. */
    net__put_u32(p + 8, NET_SNAP_FILES_MAX + 1);
    b = raw_frame(NET__FRAME_SNAP_BEGIN, p, 8 + 4 + 8, &len);
    ASSERT(b != NULL);
    ASSERT_EQ(net__frame_decode(b, len, NET_FRAME_BYTES_LIMIT, &f, &used), NET_EMALFORMED);
    free(b);
    net__put_u32(p + 8, NET_SNAP_FILES_MAX);
    b = raw_frame(NET__FRAME_SNAP_BEGIN, p, 8 + 4 + 8, &len);
    ASSERT(b != NULL);
    ASSERT_EQ(net__frame_decode(b, len, NET_FRAME_BYTES_LIMIT, &f, &used), 0);
    ASSERT_EQ(f.u.snap_begin.meta_len, 0);
    free(b);
}

TEST(crc32_known_value) {
    ASSERT_U64_EQ(net__crc32(0, "123456789", 9), 0xcbf43926u);
    /* Incremental equals one-shot. */
    uint32_t c = net__crc32(0, "1234", 4);
    ASSERT_U64_EQ(net__crc32(c, "56789", 5), 0xcbf43926u);
    ASSERT_U64_EQ(net__crc32(0, NULL, 0), 0);
}

TEST(strerror_names_every_code) {
#define CHECK_CODE(name, value, text) ASSERT_STR_EQ(net_strerror(value), text);
    NET_ERRORS(CHECK_CODE)
#undef CHECK_CODE
    ASSERT_STR_EQ(net_strerror(0), "success");
    ASSERT(strstr(net_strerror(UV_ECONNREFUSED), "refused") != NULL);
    ASSERT_STR_EQ(net_strerror(-3099), "unknown net error");
}

int main(int argc, char **argv) {
    int rc = harness_main(argc, argv);
    for (size_t i = 0; i < n_samples; i++) free(samples[i].buf);
    return rc;
}
