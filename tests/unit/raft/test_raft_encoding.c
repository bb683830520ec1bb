/*
 * test_raft_encoding.c - the wire encoding of raft messages and of conf-change
 * payloads (raft_encode/raft_decode, raft_conf_change_encode/_decode).
 *
 * The decoders face bytes from the network, so besides round trips of every
 * message type with entries, snapshot and context, the tests feed them every
 * truncation of a valid encoding (RAFT_EMALFORMED, never a crash or an
 * over-read: each input sits in a heap block of exactly its size, so the
 * sanitizer build catches one byte too far), a wrong version byte
 * (RAFT_EVERSION), absurd counts and lengths at the offsets documented in
 * raft/encoding.c, and systematic overwrites of every field.
 */
#include "tests/unit/raft/raft_test_net.h"

/* Offsets of the wire layout documented in raft/encoding.c. */
#define OFF_VERSION 0
#define OFF_TYPE 1
#define OFF_REJECT 2
#define OFF_HAS_SNAPSHOT 3
#define OFF_N_ENTRIES 60
#define OFF_FIRST_ENTRY 64
#define ENTRY_HEADER 21 /* term, index, type, data_len */
#define MSG_HEADER 64

static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static bool buf_eq(const struct raft_buf *a, const struct raft_buf *b) {
    return a->len == b->len && (a->len == 0 || memcmp(a->base, b->base, a->len) == 0);
}

static bool conf_eq(const struct raft_conf_state *a, const struct raft_conf_state *b) {
    if (a->n_voters != b->n_voters || a->n_learners != b->n_learners) return false;
    for (uint32_t i = 0; i < a->n_voters; i++)
        if (a->voters[i] != b->voters[i]) return false;
    for (uint32_t i = 0; i < a->n_learners; i++)
        if (a->learners[i] != b->learners[i]) return false;
    return true;
}

/* Field-by-field equality; prints the first difference. */
static bool msg_eq(const struct raft_msg *a, const struct raft_msg *b) {
#define FIELD(f)                                                                                   \
    if (a->f != b->f) {                                                                            \
        fprintf(stderr, "  field %s differs\n", #f);                                               \
        return false;                                                                              \
    }
    FIELD(type)
    FIELD(from)
    FIELD(to)
    FIELD(term)
    FIELD(log_term)
    FIELD(index)
    FIELD(commit)
    FIELD(reject)
    FIELD(reject_hint)
    FIELD(n_entries)
    FIELD(has_snapshot)
    for (uint32_t i = 0; i < a->n_entries; i++) {
        FIELD(entries[i].term)
        FIELD(entries[i].index)
        FIELD(entries[i].type)
        if (!buf_eq(&a->entries[i].data, &b->entries[i].data)) {
            fprintf(stderr, "  entry %u data differs\n", i);
            return false;
        }
    }
    if (a->has_snapshot) {
        FIELD(snapshot.meta.index)
        FIELD(snapshot.meta.term)
        if (!conf_eq(&a->snapshot.meta.conf, &b->snapshot.meta.conf)) {
            fprintf(stderr, "  snapshot conf differs\n");
            return false;
        }
        if (!buf_eq(&a->snapshot.data, &b->snapshot.data)) {
            fprintf(stderr, "  snapshot data differs\n");
            return false;
        }
    }
    if (!buf_eq(&a->context, &b->context)) {
        fprintf(stderr, "  context differs\n");
        return false;
    }
#undef FIELD
    return true;
}

static const char data_a[] = "entry data";
static const char data_b[] = "\x00\x01\x02 conf change payload";
static const char snap_data[] = "snapshot image bytes";
static const char ctx_data[] = "read-ctx";

static struct raft_entry full_entries[3];

/* A message of the given type with every field set, entries, a snapshot and a context. */
static struct raft_msg full_msg(uint8_t type) {
    struct raft_msg m =
        tmsg(type, 0x0102030405060708ull + type, 0x1112131415161718ull, 0x2122232425262728ull);
    m.log_term = 0x3132333435363738ull;
    m.index = 0x4142434445464748ull;
    m.commit = 0x5152535455565758ull;
    m.reject = true;
    m.reject_hint = 0x6162636465666768ull;
    memset(full_entries, 0, sizeof full_entries);
    full_entries[0].term = 7;
    full_entries[0].index = 100;
    full_entries[0].type = RAFT_ENTRY_NORMAL;
    full_entries[0].data.base = data_a;
    full_entries[0].data.len = sizeof data_a - 1;
    full_entries[1].term = 7;
    full_entries[1].index = 101;
    full_entries[1].type = RAFT_ENTRY_CONF_CHANGE;
    full_entries[1].data.base = data_b;
    full_entries[1].data.len = sizeof data_b - 1;
    full_entries[2].term = 8;
    full_entries[2].index = 102; /* empty no-op */
    m.n_entries = 3;
    m.entries = full_entries;
    m.has_snapshot = true;
    m.snapshot.meta.index = 99;
    m.snapshot.meta.term = 6;
    m.snapshot.meta.conf = tconf(3, 2);
    m.snapshot.data.base = snap_data;
    m.snapshot.data.len = sizeof snap_data - 1;
    m.context.base = ctx_data;
    m.context.len = sizeof ctx_data - 1;
    return m;
}

/* Encodes m into a malloc'ed block of exactly the encoded size. */
static unsigned char *encode(const struct raft_msg *m, size_t *len) {
    size_t need = raft_encoded_size(m);
    unsigned char *buf = malloc(need ? need : 1);
    if (buf == NULL) abort();
    if (raft_encode(m, buf, need, len) != 0 || *len != need) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* Decodes a copy of buf[0..len) held in a block of exactly len bytes. */
static int decode_exact(const unsigned char *buf, size_t len, unsigned char **copy,
                        struct raft_msg *out) {
    *copy = malloc(len ? len : 1);
    if (*copy == NULL) abort();
    if (len) memcpy(*copy, buf, len);
    return raft_decode(len ? *copy : NULL, len, out);
}

/* Whether every borrowed pointer of a decoded message lies within [buf, buf+len). */
static bool borrows_within(const struct raft_msg *m, const unsigned char *buf, size_t len) {
    const unsigned char *end = buf + len;
#define WITHIN(b)                                                                                  \
    ((b).len == 0 ||                                                                               \
     ((const unsigned char *)(b).base >= buf && (const unsigned char *)(b).base + (b).len <= end))
    for (uint32_t i = 0; i < m->n_entries; i++)
        if (!WITHIN(m->entries[i].data)) return false;
    if (m->has_snapshot && !WITHIN(m->snapshot.data)) return false;
    if (!WITHIN(m->context)) return false;
#undef WITHIN
    return true;
}

/* Every message type survives a round trip with entries, snapshot and context. */
TEST(test_enc_roundtrip_every_message_type) {
    for (uint8_t type = 0; type < RAFT_MSG_TYPE_COUNT_; type++) {
        struct raft_msg m = full_msg(type);
        size_t len = 0;
        unsigned char *buf = encode(&m, &len);
        ASSERT(buf != NULL);
        ASSERT_EQ(buf[OFF_VERSION], RAFT_WIRE_VERSION);
        struct raft_msg d;
        int rc = raft_decode(buf, len, &d);
        if (rc != 0) free(buf);
        ASSERT_EQ(rc, 0);
        bool eq = msg_eq(&m, &d);
        bool within = borrows_within(&d, buf, len);
        raft_msg_release(&d);
        free(buf);
        if (!eq) fprintf(stderr, "  type %u\n", type);
        ASSERT(eq);
        ASSERT(within);
    }
}

/* Minimal and extreme values: no entries, no snapshot, all-ones integers, a full configuration. */
TEST(test_enc_roundtrip_edge_values) {
    struct raft_msg cases[4];
    cases[0] = tmsg(RAFT_MSG_HEARTBEAT, 0, 0, 0);
    cases[1] = tmsg(RAFT_MSG_APP_RESP, UINT64_MAX, UINT64_MAX, UINT64_MAX);
    cases[1].log_term = cases[1].index = cases[1].commit = cases[1].reject_hint = UINT64_MAX;
    cases[2] = tmsg(RAFT_MSG_SNAP, 1, 2, 3);
    cases[2].has_snapshot = true;
    cases[2].snapshot.meta.index = UINT64_MAX;
    cases[2].snapshot.meta.term = UINT64_MAX;
    cases[2].snapshot.meta.conf = tconf(RAFT_MEMBERS_MAX, 0);
    cases[3] = tmsg(RAFT_MSG_SNAP, 1, 2, 3);
    cases[3].has_snapshot = true;
    cases[3].snapshot.meta.conf = tconf(RAFT_MEMBERS_MAX / 2, RAFT_MEMBERS_MAX / 2);
    for (size_t c = 0; c < 4; c++) {
        size_t len = 0;
        unsigned char *buf = encode(&cases[c], &len);
        ASSERT(buf != NULL);
        ASSERT_EQ(len, raft_encoded_size(&cases[c]));
        struct raft_msg d;
        int rc = raft_decode(buf, len, &d);
        bool eq = rc == 0 && msg_eq(&cases[c], &d);
        if (rc == 0) raft_msg_release(&d);
        free(buf);
        if (!eq) fprintf(stderr, "  case %zu rc %d\n", c, rc);
        ASSERT(eq);
    }
    /* The smallest message is the fixed header plus an empty context. */
    ASSERT_EQ(raft_encoded_size(&cases[0]), MSG_HEADER + 4);
}

/* raft_encode needs a buffer of raft_encoded_size bytes; anything shorter is RAFT_ETOOBIG. */
TEST(test_enc_short_buffer_is_etoobig) {
    struct raft_msg m = full_msg(RAFT_MSG_APP);
    size_t need = raft_encoded_size(&m);
    unsigned char *buf = malloc(need);
    ASSERT(buf != NULL);
    size_t len = 123;
    int rc1 = raft_encode(&m, buf, need - 1, &len);
    int rc2 = raft_encode(&m, buf, 0, &len);
    int rc3 = raft_encode(&m, buf, need, &len);
    free(buf);
    ASSERT_EQ(rc1, RAFT_ETOOBIG);
    ASSERT_EQ(rc2, RAFT_ETOOBIG);
    ASSERT_EQ(rc3, 0);
    ASSERT_EQ(len, need);
}

/* Every proper prefix of a valid encoding is RAFT_EMALFORMED, without reading past it. */
TEST(test_enc_every_truncation_rejected) {
    uint8_t types[] = {RAFT_MSG_APP, RAFT_MSG_SNAP, RAFT_MSG_HEARTBEAT};
    for (size_t t = 0; t < sizeof types; t++) {
        struct raft_msg m = full_msg(types[t]);
        if (types[t] == RAFT_MSG_HEARTBEAT) {
            m.n_entries = 0;
            m.has_snapshot = false;
        }
        size_t len = 0;
        unsigned char *buf = encode(&m, &len);
        ASSERT(buf != NULL);
        size_t bad = 0;
        for (size_t cut = 0; cut < len; cut++) {
            unsigned char *copy;
            struct raft_msg d;
            int rc = decode_exact(buf, cut, &copy, &d);
            if (rc == 0) raft_msg_release(&d);
            if (rc != RAFT_EMALFORMED) {
                if (bad++ == 0) fprintf(stderr, "  prefix %zu of %zu: rc %d\n", cut, len, rc);
            }
            free(copy);
        }
        free(buf);
        ASSERT_EQ(bad, 0);
    }
}

/* Trailing bytes after a complete message are an error (raft/encoding.c). */
TEST(test_enc_trailing_bytes_rejected) {
    struct raft_msg m = full_msg(RAFT_MSG_APP);
    size_t len = 0;
    unsigned char *buf = encode(&m, &len);
    ASSERT(buf != NULL);
    unsigned char *longer = calloc(1, len + 1);
    ASSERT(longer != NULL);
    memcpy(longer, buf, len);
    struct raft_msg d;
    int rc = raft_decode(longer, len + 1, &d);
    if (rc == 0) raft_msg_release(&d);
    free(longer);
    free(buf);
    ASSERT_EQ(rc, RAFT_EMALFORMED);
}

/* A version byte other than RAFT_WIRE_VERSION is RAFT_EVERSION, for messages and conf changes. */
TEST(test_enc_wrong_version_rejected) {
    struct raft_msg m = full_msg(RAFT_MSG_VOTE);
    size_t len = 0;
    unsigned char *buf = encode(&m, &len);
    ASSERT(buf != NULL);
    const unsigned char versions[] = {0, RAFT_WIRE_VERSION + 1, 0x7f, 0xff};
    int rcs[4];
    for (size_t i = 0; i < sizeof versions; i++) {
        buf[OFF_VERSION] = versions[i];
        struct raft_msg d;
        rcs[i] = raft_decode(buf, len, &d);
        if (rcs[i] == 0) raft_msg_release(&d);
    }
    free(buf);
    for (size_t i = 0; i < sizeof versions; i++) ASSERT_EQ(rcs[i], RAFT_EVERSION);

    struct raft_conf_change cc = {.type = RAFT_CC_ADD_VOTER, .node_id = 9};
    void *p = NULL;
    size_t n = 0;
    ASSERT_EQ(raft_conf_change_encode(&cc, &p, &n), 0);
    ((unsigned char *)p)[0] = RAFT_WIRE_VERSION + 1;
    struct raft_conf_change got;
    int rc = raft_conf_change_decode(p, n, &got);
    free(p);
    ASSERT_EQ(rc, RAFT_EVERSION);
}

/* Decodes buf after patching it; returns the result and releases whatever was decoded. */
static int decode_patched(const unsigned char *buf, size_t len, size_t off, const void *patch,
                          size_t patch_len) {
    unsigned char *copy = malloc(len);
    if (copy == NULL) abort();
    memcpy(copy, buf, len);
    memcpy(copy + off, patch, patch_len);
    struct raft_msg d;
    int rc = raft_decode(copy, len, &d);
    if (rc == 0) raft_msg_release(&d);
    free(copy);
    return rc;
}

/* Counts, lengths and enum bytes beyond what the input or the limits allow are rejected. */
TEST(test_enc_absurd_counts_and_lengths_rejected) {
    struct raft_msg m = full_msg(RAFT_MSG_SNAP);
    size_t len = 0;
    unsigned char *buf = encode(&m, &len);
    ASSERT(buf != NULL);
    unsigned char v4[4];
    size_t snap_off = OFF_FIRST_ENTRY;
    for (uint32_t i = 0; i < m.n_entries; i++) snap_off += ENTRY_HEADER + m.entries[i].data.len;
    size_t voters_off = snap_off + 16, learners_off = snap_off + 20;
    size_t snap_data_len_off = snap_off + 24 + 8 * (3 + 2);
    size_t ctx_len_off = len - 4 - m.context.len;
    struct {
        const char *what;
        size_t off;
        uint32_t value;
        size_t width;
    } cases[] = {
        {"n_entries all ones", OFF_N_ENTRIES, UINT32_MAX, 4},
        {"n_entries over the limit", OFF_N_ENTRIES, RAFT_DECODE_ENTRIES_MAX + 1, 4},
        {"n_entries one more than present", OFF_N_ENTRIES, 4, 4},
        {"n_entries at the limit", OFF_N_ENTRIES, RAFT_DECODE_ENTRIES_MAX, 4},
        {"entry data_len all ones", OFF_FIRST_ENTRY + 17, UINT32_MAX, 4},
        {"entry data_len past the end", OFF_FIRST_ENTRY + 17, (uint32_t)len, 4},
        {"entry data_len over the byte limit", OFF_FIRST_ENTRY + 17, RAFT_DECODE_BYTES_MAX + 1, 4},
        {"n_voters over RAFT_MEMBERS_MAX", voters_off, RAFT_MEMBERS_MAX + 1, 4},
        {"n_voters all ones", voters_off, UINT32_MAX, 4},
        {"n_learners all ones", learners_off, UINT32_MAX, 4},
        {"voters+learners over RAFT_MEMBERS_MAX", learners_off, RAFT_MEMBERS_MAX, 4},
        {"snapshot data_len all ones", snap_data_len_off, UINT32_MAX, 4},
        {"context_len all ones", ctx_len_off, UINT32_MAX, 4},
        {"context_len one past the end", ctx_len_off, (uint32_t)m.context.len + 1, 4},
        {"message type out of range", OFF_TYPE, RAFT_MSG_TYPE_COUNT_, 1},
        {"message type 0xff", OFF_TYPE, 0xff, 1},
        {"reject byte 2", OFF_REJECT, 2, 1},
        {"has_snapshot byte 2", OFF_HAS_SNAPSHOT, 2, 1},
        {"entry type 2", OFF_FIRST_ENTRY + 16, 2, 1},
    };
    size_t bad = 0;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        put32(v4, cases[c].value);
        int rc = decode_patched(buf, len, cases[c].off, v4, cases[c].width);
        if (rc != RAFT_EMALFORMED) {
            fprintf(stderr, "  %s: rc %d\n", cases[c].what, rc);
            bad++;
        }
    }
    /* has_snapshot 0 leaves the snapshot bytes trailing: malformed as well. */
    unsigned char zero = 0;
    if (decode_patched(buf, len, OFF_HAS_SNAPSHOT, &zero, 1) != RAFT_EMALFORMED) bad++;
    free(buf);
    ASSERT_EQ(bad, 0);
}

/*
 * Byte sums above RAFT_DECODE_BYTES_MAX are refused on both sides: the
 * encoder does not produce them and the decoder rejects a buffer that holds
 * them, each entry alone being within bounds.
 */
TEST(test_enc_total_bytes_limit) {
    size_t half = RAFT_DECODE_BYTES_MAX / 2 + 1;
    char *big = calloc(1, half);
    ASSERT(big != NULL);
    struct raft_entry e[2];
    memset(e, 0, sizeof e);
    e[0].data.base = big;
    e[0].data.len = half;
    e[1].data.base = big;
    e[1].data.len = half;
    struct raft_msg m = tmsg(RAFT_MSG_APP, 1, 2, 3);
    m.n_entries = 2;
    m.entries = e;
    size_t len = 0;
    int enc_rc = raft_encode(&m, NULL, 0, &len);
    /* Hand-build the same message: header, two entries, empty context. */
    size_t total = MSG_HEADER + 2 * (ENTRY_HEADER + half) + 4;
    unsigned char *buf = calloc(1, total);
    if (buf == NULL) free(big);
    ASSERT(buf != NULL);
    buf[OFF_VERSION] = RAFT_WIRE_VERSION;
    buf[OFF_TYPE] = RAFT_MSG_APP;
    put32(buf + OFF_N_ENTRIES, 2);
    put32(buf + OFF_FIRST_ENTRY + 17, (uint32_t)half);
    put32(buf + OFF_FIRST_ENTRY + ENTRY_HEADER + half + 17, (uint32_t)half);
    struct raft_msg d;
    int dec_rc = raft_decode(buf, total, &d);
    if (dec_rc == 0) raft_msg_release(&d);
    /* The same layout with small entries decodes, so the refusal is the byte limit. */
    put32(buf + OFF_FIRST_ENTRY + 17, 0);
    put32(buf + OFF_FIRST_ENTRY + ENTRY_HEADER + 17, 0);
    size_t small_total = MSG_HEADER + 2 * ENTRY_HEADER + 4;
    memset(buf + MSG_HEADER + 2 * ENTRY_HEADER, 0, 4);
    int small_rc = raft_decode(buf, small_total, &d);
    if (small_rc == 0) raft_msg_release(&d);
    free(buf);
    free(big);
    ASSERT_EQ(enc_rc, RAFT_ETOOBIG);
    ASSERT_EQ(dec_rc, RAFT_EMALFORMED);
    ASSERT_EQ(small_rc, 0);
}

/*
 * Overwriting any 1, 4 or 8 bytes of a valid encoding with all-ones or
 * zeros, and flipping any single bit, never crashes; whatever still decodes
 * borrows only from the input and stays within the limits.
 */
TEST(test_enc_overwrites_never_crash) {
    struct raft_msg m = full_msg(RAFT_MSG_SNAP);
    size_t len = 0;
    unsigned char *buf = encode(&m, &len);
    ASSERT(buf != NULL);
    size_t rejected = 0, bad = 0;
    const size_t widths[] = {1, 4, 8};
    for (int fill = 0; fill < 3; fill++) {
        for (size_t w = 0; w < 3; w++) {
            for (size_t off = 0; off + widths[w] <= len; off++) {
                unsigned char *copy = malloc(len);
                if (copy == NULL) abort();
                memcpy(copy, buf, len);
                if (fill < 2)
                    memset(copy + off, fill == 0 ? 0xff : 0x00, widths[w]);
                else
                    copy[off] ^= (unsigned char)(1u << (off % 8));
                struct raft_msg d;
                int rc = raft_decode(copy, len, &d);
                if (rc == 0) {
                    if (d.n_entries > RAFT_DECODE_ENTRIES_MAX || !borrows_within(&d, copy, len) ||
                        (d.has_snapshot &&
                         d.snapshot.meta.conf.n_voters + d.snapshot.meta.conf.n_learners >
                             RAFT_MEMBERS_MAX) ||
                        d.type >= RAFT_MSG_TYPE_COUNT_)
                        bad++;
                    raft_msg_release(&d);
                } else if (rc == RAFT_EMALFORMED || rc == RAFT_EVERSION) {
                    rejected++;
                } else {
                    bad++;
                }
                free(copy);
            }
        }
    }
    free(buf);
    ASSERT_EQ(bad, 0);
    ASSERT_GT(rejected, 0);
}

/* Decoded entry data, snapshot data and context point into the input buffer (no copies). */
TEST(test_enc_decoded_data_borrows_from_input) {
    struct raft_msg m = full_msg(RAFT_MSG_APP);
    size_t len = 0;
    unsigned char *buf = encode(&m, &len);
    ASSERT(buf != NULL);
    struct raft_msg d;
    int rc = raft_decode(buf, len, &d);
    bool within = rc == 0 && borrows_within(&d, buf, len);
    bool nonempty = rc == 0 && d.entries[0].data.len > 0 && d.context.len > 0;
    if (rc == 0) raft_msg_release(&d);
    free(buf);
    ASSERT_EQ(rc, 0);
    ASSERT(within);
    ASSERT(nonempty);
}

/* raft_encode refuses what it cannot represent rather than writing garbage. */
TEST(test_enc_encode_rejects_invalid_messages) {
    struct raft_msg m = full_msg(RAFT_MSG_APP);
    unsigned char buf[1024];
    size_t len;
    m.type = RAFT_MSG_TYPE_COUNT_;
    ASSERT_NE(raft_encode(&m, buf, sizeof buf, &len), 0);
    m = full_msg(RAFT_MSG_SNAP);
    m.snapshot.meta.conf.n_voters = RAFT_MEMBERS_MAX + 1;
    ASSERT_NE(raft_encode(&m, buf, sizeof buf, &len), 0);
    m = full_msg(RAFT_MSG_APP);
    full_entries[0].type = 7;
    ASSERT_NE(raft_encode(&m, buf, sizeof buf, &len), 0);
}

/* Conf changes of every type, with and without context, survive a round trip. */
TEST(test_enc_conf_change_roundtrip) {
    const char *ctxs[] = {"", "http://127.0.0.1:2380,http://127.0.0.2:2380"};
    for (uint8_t type = RAFT_CC_ADD_VOTER; type <= RAFT_CC_ADD_LEARNER; type++) {
        for (size_t c = 0; c < 2; c++) {
            struct raft_conf_change cc;
            memset(&cc, 0, sizeof cc);
            cc.type = type;
            cc.node_id = 0xdeadbeef00000000ull + type;
            cc.context.base = ctxs[c];
            cc.context.len = strlen(ctxs[c]);
            void *p = NULL;
            size_t n = 0;
            ASSERT_EQ(raft_conf_change_encode(&cc, &p, &n), 0);
            struct raft_conf_change got;
            int rc = raft_conf_change_decode(p, n, &got);
            bool eq = rc == 0 && got.type == cc.type && got.node_id == cc.node_id &&
                      buf_eq(&got.context, &cc.context);
            free(p);
            ASSERT_EQ(rc, 0);
            ASSERT(eq);
        }
    }
}

/* Every truncation, trailing bytes, a bad type and an absurd length are RAFT_EMALFORMED. */
TEST(test_enc_conf_change_malformed_rejected) {
    struct raft_conf_change cc;
    memset(&cc, 0, sizeof cc);
    cc.type = RAFT_CC_REMOVE;
    cc.node_id = 42;
    cc.context.base = "ctx";
    cc.context.len = 3;
    void *p = NULL;
    size_t n = 0;
    ASSERT_EQ(raft_conf_change_encode(&cc, &p, &n), 0);
    size_t bad = 0;
    for (size_t cut = 0; cut < n; cut++) {
        unsigned char *copy = malloc(cut ? cut : 1);
        if (copy == NULL) abort();
        memcpy(copy, p, cut);
        struct raft_conf_change got;
        if (raft_conf_change_decode(cut ? copy : NULL, cut, &got) != RAFT_EMALFORMED) bad++;
        free(copy);
    }
    unsigned char *longer = calloc(1, n + 1);
    if (longer == NULL) abort();
    memcpy(longer, p, n);
    struct raft_conf_change got;
    if (raft_conf_change_decode(longer, n + 1, &got) != RAFT_EMALFORMED) bad++;
    longer[1] = RAFT_CC_ADD_LEARNER + 1; /* type */
    if (raft_conf_change_decode(longer, n, &got) != RAFT_EMALFORMED) bad++;
    memcpy(longer, p, n);
    put32(longer + 10, UINT32_MAX); /* context_len */
    if (raft_conf_change_decode(longer, n, &got) != RAFT_EMALFORMED) bad++;
    free(longer);
    free(p);
    ASSERT_EQ(bad, 0);
}

/* Every error code has its own description; unknown codes still get a string. */
TEST(test_enc_strerror_covers_every_code) {
    const int codes[] = {
#define CODE(name, value, text) name,
        RAFT_ERRORS(CODE)
#undef CODE
    };
    const char *texts[] = {
#define TEXT(name, value, text) text,
        RAFT_ERRORS(TEXT)
#undef TEXT
    };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        ASSERT_STR_EQ(raft_strerror(codes[i]), texts[i]);
    ASSERT(raft_strerror(0) != NULL);
    ASSERT(raft_strerror(-1099) != NULL);
    ASSERT(raft_strerror(12345) != NULL);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
