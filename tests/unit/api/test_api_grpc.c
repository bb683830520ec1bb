/*
 * test_api_grpc.c - gRPC framing, protobuf input checks, status trailers and
 * the method table of api/ (the layers below the sockets).
 *
 * The reader is checked against a reference model: random messages, framed
 * by hand, fed in random splits, must come out whole and in order. Limits
 * are checked at their edges (max, max + 1) and before any body byte
 * arrives, which is the point of checking the prefix first.
 */
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "tests/harness.h"

/* ---- test support --------------------------------------------------------- */

#define MSGS_MAX 64

struct sink {
    size_t n;
    size_t len[MSGS_MAX];
    uint8_t *data[MSGS_MAX];
    int stop_after; /* return 1 from the callback after this many, 0: never */
};

static int sink_cb(void *arg, const uint8_t *data, size_t len) {
    struct sink *s = arg;
    if (s->n < MSGS_MAX) {
        s->data[s->n] = malloc(len ? len : 1);
        memcpy(s->data[s->n], data, len);
        s->len[s->n] = len;
    }
    s->n++;
    if (s->stop_after && (int)s->n >= s->stop_after) return 1;
    return 0;
}

static void sink_free(struct sink *s) {
    for (size_t i = 0; i < s->n && i < MSGS_MAX; i++) free(s->data[i]);
    memset(s, 0, sizeof(*s));
}

static uint64_t rng_state;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Appends a framed message to buf at *off. */
static void frame(uint8_t *buf, size_t *off, uint8_t flag, const uint8_t *body, uint32_t len) {
    buf[*off] = flag;
    buf[*off + 1] = (uint8_t)(len >> 24);
    buf[*off + 2] = (uint8_t)(len >> 16);
    buf[*off + 3] = (uint8_t)(len >> 8);
    buf[*off + 4] = (uint8_t)len;
    if (len) memcpy(buf + *off + 5, body, len);
    *off += 5 + len;
}

/* ---- reader ---------------------------------------------------------------- */

TEST(reader_whole_message_in_one_chunk) {
    struct api__grpc_reader r;
    struct sink s = {0};
    uint8_t buf[64];
    size_t off = 0;
    frame(buf, &off, 0, (const uint8_t *)"hello", 5);
    api__grpc_reader_init(&r, 100);
    ASSERT_EQ(api__grpc_reader_feed(&r, buf, off, sink_cb, &s), 0);
    ASSERT_EQ(s.n, 1);
    ASSERT_EQ(s.len[0], 5);
    ASSERT_MEM_EQ(s.data[0], "hello", 5);
    ASSERT_EQ(api__grpc_reader_pending(&r), 0);
    /* Delivered straight from the input: nothing was buffered. */
    ASSERT_EQ(api__grpc_reader_buffered(&r), 0);
    api__grpc_reader_free(&r);
    sink_free(&s);
}

TEST(reader_byte_by_byte_with_empty_message) {
    struct api__grpc_reader r;
    struct sink s = {0};
    uint8_t buf[64];
    size_t off = 0;
    frame(buf, &off, 0, (const uint8_t *)"ab", 2);
    frame(buf, &off, 0, NULL, 0);
    frame(buf, &off, 0, (const uint8_t *)"xyz", 3);
    api__grpc_reader_init(&r, 100);
    for (size_t i = 0; i < off; i++) {
        ASSERT_EQ(api__grpc_reader_feed(&r, buf + i, 1, sink_cb, &s), 0);
        if (i == 3) ASSERT_EQ(api__grpc_reader_pending(&r), 4);
    }
    ASSERT_EQ(s.n, 3);
    ASSERT_EQ(s.len[0], 2);
    ASSERT_MEM_EQ(s.data[0], "ab", 2);
    ASSERT_EQ(s.len[1], 0);
    ASSERT_EQ(s.len[2], 3);
    ASSERT_MEM_EQ(s.data[2], "xyz", 3);
    ASSERT_EQ(api__grpc_reader_pending(&r), 0);
    api__grpc_reader_free(&r);
    sink_free(&s);
}

/* Reference model: random messages in random splits come out unchanged. */
TEST(reader_random_splits_match_model) {
    rng_state = harness_seed * 2654435761u + 1;
    for (int round = 0; round < 200; round++) {
        size_t n_msgs = 1 + rnd() % 20;
        size_t lens[20];
        size_t total = 0;
        for (size_t i = 0; i < n_msgs; i++) {
            lens[i] = (rnd() % 4 == 0) ? 0 : rnd() % (rnd() % 2 ? 40 : 70000);
            total += 5 + lens[i];
        }
        uint8_t *wire = malloc(total);
        uint8_t *bodies = malloc(total);
        size_t off = 0, boff = 0;
        for (size_t i = 0; i < n_msgs; i++) {
            for (size_t k = 0; k < lens[i]; k++) bodies[boff + k] = (uint8_t)rnd();
            frame(wire, &off, 0, bodies + boff, (uint32_t)lens[i]);
            boff += lens[i];
        }
        struct api__grpc_reader r;
        struct sink s = {0};
        api__grpc_reader_init(&r, 70000);
        size_t pos = 0;
        int rc = 0;
        while (pos < total && rc == 0) {
            size_t chunk = 1 + rnd() % (rnd() % 3 == 0 ? 20000 : 16);
            if (chunk > total - pos) chunk = total - pos;
            rc = api__grpc_reader_feed(&r, wire + pos, chunk, sink_cb, &s);
            pos += chunk;
        }
        int ok = rc == 0 && s.n == n_msgs;
        boff = 0;
        for (size_t i = 0; ok && i < n_msgs; i++) {
            ok = s.len[i] == lens[i] && memcmp(s.data[i], bodies + boff, lens[i]) == 0;
            boff += lens[i];
        }
        api__grpc_reader_free(&r);
        sink_free(&s);
        free(wire);
        free(bodies);
        if (!ok) {
            ASSERT_EQ(rc, 0);
            ASSERT(!"messages differ from the model");
        }
    }
}

TEST(reader_rejects_oversize_from_prefix_alone) {
    struct api__grpc_reader r;
    struct sink s = {0};
    uint8_t prefix[5];
    api__grpc_prefix_write(prefix, 1001);
    api__grpc_reader_init(&r, 1000);
    ASSERT_EQ(api__grpc_reader_feed(&r, prefix, 5, sink_cb, &s), API_ETOOBIG);
    ASSERT_EQ(api__grpc_reader_declared(&r), 1001);
    ASSERT_EQ(api__grpc_reader_buffered(&r), 0);
    ASSERT_EQ(s.n, 0);
    /* After a failure, input is ignored. */
    uint8_t more[8] = {0};
    ASSERT_EQ(api__grpc_reader_feed(&r, more, sizeof(more), sink_cb, &s), 0);
    ASSERT_EQ(s.n, 0);
    api__grpc_reader_free(&r);
}

TEST(reader_accepts_exactly_max) {
    struct api__grpc_reader r;
    struct sink s = {0};
    size_t max = 3000;
    uint8_t *buf = calloc(1, max + 5);
    size_t off = 0;
    uint8_t *body = malloc(max);
    memset(body, 'q', max);
    frame(buf, &off, 0, body, (uint32_t)max);
    api__grpc_reader_init(&r, max);
    /* Split so the body must be assembled. */
    ASSERT_EQ(api__grpc_reader_feed(&r, buf, 100, sink_cb, &s), 0);
    ASSERT_EQ(api__grpc_reader_feed(&r, buf + 100, off - 100, sink_cb, &s), 0);
    ASSERT_EQ(s.n, 1);
    ASSERT_EQ(s.len[0], max);
    ASSERT_MEM_EQ(s.data[0], body, max);
    api__grpc_reader_free(&r);
    sink_free(&s);
    free(buf);
    free(body);
}

TEST(reader_buffer_grows_with_bytes_received_not_bytes_claimed) {
    struct api__grpc_reader r;
    struct sink s = {0};
    uint8_t buf[5 + 10];
    api__grpc_prefix_write(buf, 1u << 20);
    memset(buf + 5, 0, 10);
    api__grpc_reader_init(&r, 2u << 20);
    ASSERT_EQ(api__grpc_reader_feed(&r, buf, sizeof(buf), sink_cb, &s), 0);
    ASSERT_EQ(s.n, 0);
    ASSERT_EQ(api__grpc_reader_pending(&r), 15);
    ASSERT_LE(api__grpc_reader_buffered(&r), 4096);
    api__grpc_reader_free(&r);
}

TEST(reader_rejects_compressed_and_unknown_flags) {
    struct api__grpc_reader r;
    struct sink s = {0};
    uint8_t buf[16];
    size_t off = 0;
    frame(buf, &off, 1, (const uint8_t *)"zz", 2);
    api__grpc_reader_init(&r, 100);
    ASSERT_EQ(api__grpc_reader_feed(&r, buf, off, sink_cb, &s), API_ECOMPRESSED);
    api__grpc_reader_free(&r);
    off = 0;
    frame(buf, &off, 2, (const uint8_t *)"zz", 2);
    api__grpc_reader_init(&r, 100);
    ASSERT_EQ(api__grpc_reader_feed(&r, buf, off, sink_cb, &s), API_EMALFORMED);
    api__grpc_reader_free(&r);
    ASSERT_EQ(s.n, 0);
}

TEST(reader_callback_stop_is_returned) {
    struct api__grpc_reader r;
    struct sink s = {.stop_after = 1};
    uint8_t buf[32];
    size_t off = 0;
    frame(buf, &off, 0, (const uint8_t *)"a", 1);
    frame(buf, &off, 0, (const uint8_t *)"b", 1);
    api__grpc_reader_init(&r, 100);
    ASSERT_EQ(api__grpc_reader_feed(&r, buf, off, sink_cb, &s), 1);
    ASSERT_EQ(s.n, 1);
    api__grpc_reader_free(&r);
    sink_free(&s);
}

/* ---- encoding ------------------------------------------------------------- */

TEST(encode_frames_and_round_trips_a_put_request) {
    Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
    put.key.data = (uint8_t *)"foo";
    put.key.len = 3;
    put.value.data = (uint8_t *)"bar";
    put.value.len = 3;
    put.lease = 7;
    put.prev_kv = 1;
    uint8_t *buf;
    size_t len;
    ASSERT_EQ(api__grpc_encode(&put.base, 1000, 16, &buf, &len), 0);
    size_t n = protobuf_c_message_get_packed_size(&put.base);
    ASSERT_EQ(len, 5 + n);
    const uint8_t *f = buf + 16;
    ASSERT_EQ(f[0], 0);
    ASSERT_EQ(((size_t)f[1] << 24 | (size_t)f[2] << 16 | (size_t)f[3] << 8 | f[4]), n);
    ProtobufCMessage *m = api__proto_unpack(&etcdserverpb__put_request__descriptor, f + 5, n);
    ASSERT(m != NULL);
    Etcdserverpb__PutRequest *got = (Etcdserverpb__PutRequest *)m;
    ASSERT_EQ(got->key.len, 3);
    ASSERT_MEM_EQ(got->key.data, "foo", 3);
    ASSERT_MEM_EQ(got->value.data, "bar", 3);
    ASSERT_EQ(got->lease, 7);
    ASSERT_EQ(got->prev_kv, 1);
    protobuf_c_message_free_unpacked(m, NULL);
    free(buf);
}

TEST(encode_refuses_over_limit) {
    Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
    uint8_t big[100];
    memset(big, 1, sizeof(big));
    put.value.data = big;
    put.value.len = sizeof(big);
    uint8_t *buf = NULL;
    size_t len = 0;
    size_t n = protobuf_c_message_get_packed_size(&put.base);
    ASSERT_EQ(api__grpc_encode(&put.base, n - 1, 0, &buf, &len), API_ETOOBIG);
    ASSERT(buf == NULL);
    ASSERT_EQ(api__grpc_encode(&put.base, n, 0, &buf, &len), 0);
    free(buf);
}

/* ---- protobuf input checks ----------------------------------------------- */

/* Writes a varint; returns its length. */
static size_t put_varint(uint8_t *p, uint64_t v) {
    size_t n = 0;
    do {
        uint8_t b = v & 0x7f;
        v >>= 7;
        p[n++] = b | (v ? 0x80 : 0);
    } while (v);
    return n;
}

/* Prepends a field header (tag, length) in front of buf[*pos..]. */
static void prepend_header(uint8_t *buf, size_t *pos, uint8_t tag, size_t len) {
    uint8_t tmp[11];
    size_t n = 0;
    tmp[n++] = tag;
    n += put_varint(tmp + n, len);
    *pos -= n;
    memcpy(buf + *pos, tmp, n);
}

/* A TxnRequest nesting `levels` Txns through success[0].request_txn. Each
 * level is two protobuf messages deep (TxnRequest -> RequestOp). Built
 * from the inside out, back to front, in linear time. */
static uint8_t *nested_txn(size_t levels, size_t *out_len) {
    size_t cap = 16 + levels * 24, pos = cap;
    uint8_t *buf = malloc(cap);
    for (size_t i = 0; i < levels; i++) {
        prepend_header(buf, &pos, 4 << 3 | 2, cap - pos); /* RequestOp.request_txn */
        prepend_header(buf, &pos, 2 << 3 | 2, cap - pos); /* TxnRequest.success */
    }
    *out_len = cap - pos;
    memmove(buf, buf + pos, *out_len);
    return buf;
}

TEST(proto_check_bounds_nesting) {
    const ProtobufCMessageDescriptor *d = &etcdserverpb__txn_request__descriptor;
    size_t len;
    uint8_t *ok = nested_txn(API__PROTO_DEPTH_MAX / 2, &len);
    ASSERT_EQ(api__proto_check(d, ok, len, API__PROTO_DEPTH_MAX), 0);
    ProtobufCMessage *m = api__proto_unpack(d, ok, len);
    ASSERT(m != NULL);
    protobuf_c_message_free_unpacked(m, NULL);
    free(ok);
    uint8_t *deep = nested_txn(API__PROTO_DEPTH_MAX / 2 + 1, &len);
    ASSERT_EQ(api__proto_check(d, deep, len, API__PROTO_DEPTH_MAX), API_EMALFORMED);
    ASSERT(api__proto_unpack(d, deep, len) == NULL);
    free(deep);
    /* Deep enough to overflow the stack of an unchecked recursive unpack. */
    uint8_t *abyss = nested_txn(200000, &len);
    ASSERT(api__proto_unpack(d, abyss, len) == NULL);
    free(abyss);
}

TEST(proto_check_rejects_malformed_wire) {
    const ProtobufCMessageDescriptor *d = &etcdserverpb__range_request__descriptor;
    static const uint8_t trunc_varint[] = {0x18, 0x80};   /* limit = unterminated */
    static const uint8_t long_len[] = {0x0a, 0x05, 'a'};  /* key claims 5 bytes */
    static const uint8_t group[] = {0x0b, 0x0c};          /* start group */
    static const uint8_t field0[] = {0x02, 0x00};         /* field number 0 */
    static const uint8_t fixed_short[] = {0x09, 1, 2, 3}; /* 64-bit, 3 bytes */
    static const uint8_t unknown_len[] = {0xfa, 0x01, 0x02, 'x', 'y', 0x18, 0x05};
    ASSERT_EQ(api__proto_check(d, trunc_varint, sizeof(trunc_varint), 10), API_EMALFORMED);
    ASSERT_EQ(api__proto_check(d, long_len, sizeof(long_len), 10), API_EMALFORMED);
    ASSERT_EQ(api__proto_check(d, group, sizeof(group), 10), API_EMALFORMED);
    ASSERT_EQ(api__proto_check(d, field0, sizeof(field0), 10), API_EMALFORMED);
    ASSERT_EQ(api__proto_check(d, fixed_short, sizeof(fixed_short), 10), API_EMALFORMED);
    /* Unknown field 31 is skipped; then limit = 5. */
    ASSERT_EQ(api__proto_check(d, unknown_len, sizeof(unknown_len), 10), 0);
    ProtobufCMessage *m = api__proto_unpack(d, unknown_len, sizeof(unknown_len));
    ASSERT(m != NULL);
    ASSERT_EQ(((Etcdserverpb__RangeRequest *)m)->limit, 5);
    protobuf_c_message_free_unpacked(m, NULL);
    /* The empty message is valid and decodes to defaults. */
    m = api__proto_unpack(d, NULL, 0);
    ASSERT(m != NULL);
    protobuf_c_message_free_unpacked(m, NULL);
}

/* ---- trailers --------------------------------------------------------------- */

TEST(percent_encoding_follows_grpc_spec) {
    char out[API__GRPC_MESSAGE_ENCODED_MAX];
    api__grpc_percent_encode("etcdserver: key not found", 25, out);
    ASSERT_STR_EQ(out, "etcdserver: key not found");
    api__grpc_percent_encode("50% done", 8, out);
    ASSERT_STR_EQ(out, "50%25 done");
    api__grpc_percent_encode("a\nb\tc", 5, out);
    ASSERT_STR_EQ(out, "a%0Ab%09c");
    api__grpc_percent_encode("caf\xc3\xa9 \x7f~", 8, out);
    ASSERT_STR_EQ(out, "caf%C3%A9 %7F~");
}

TEST(percent_encoding_truncates_on_utf8_boundary) {
    char in[API__GRPC_MESSAGE_BYTES_MAX + 8];
    char out[API__GRPC_MESSAGE_ENCODED_MAX];
    memset(in, 'x', sizeof(in));
    /* A 2-byte sequence straddling the cut must be dropped whole. */
    in[API__GRPC_MESSAGE_BYTES_MAX - 1] = (char)0xc3;
    in[API__GRPC_MESSAGE_BYTES_MAX] = (char)0xa9;
    size_t n = api__grpc_percent_encode(in, sizeof(in), out);
    ASSERT_EQ(n, API__GRPC_MESSAGE_BYTES_MAX - 1);
    ASSERT_EQ(strlen(out), n);
    /* Worst case: every byte escaped still fits. */
    memset(in, 0x01, sizeof(in));
    n = api__grpc_percent_encode(in, sizeof(in), out);
    ASSERT_EQ(n, 3 * API__GRPC_MESSAGE_BYTES_MAX);
}

TEST(percent_round_trip_random_bytes) {
    rng_state = harness_seed * 11400714819323198485u + 3;
    char in[300], enc[API__GRPC_MESSAGE_ENCODED_MAX], dec[API__GRPC_MESSAGE_ENCODED_MAX];
    for (int round = 0; round < 1000; round++) {
        size_t n = rnd() % sizeof(in);
        for (size_t i = 0; i < n; i++) in[i] = (char)(rnd() % 128); /* ASCII: no cut */
        size_t e = api__grpc_percent_encode(in, n, enc);
        for (size_t i = 0; i < e; i++) ASSERT(enc[i] >= 0x20 && enc[i] <= 0x7e);
        size_t d = api__grpc_percent_decode(enc, e, dec);
        ASSERT_EQ(d, n);
        ASSERT_MEM_EQ(dec, in, n);
    }
}

TEST(percent_decode_is_lenient) {
    char out[32];
    api__grpc_percent_decode("100%zz%4", 8, out);
    ASSERT_STR_EQ(out, "100%zz%4");
    api__grpc_percent_decode("%41%62", 6, out);
    ASSERT_STR_EQ(out, "Ab");
}

TEST(status_codes_and_names) {
    char buf[4];
    ASSERT_EQ(api__grpc_status_format(0, buf), 1);
    ASSERT_STR_EQ(buf, "0");
    ASSERT_EQ(api__grpc_status_format(API_GRPC_UNIMPLEMENTED, buf), 2);
    ASSERT_STR_EQ(buf, "12");
    ASSERT_STR_EQ(api_grpc_code_name(API_GRPC_RESOURCE_EXHAUSTED), "RESOURCE_EXHAUSTED");
    ASSERT_STR_EQ(api_grpc_code_name(API_GRPC_UNAUTHENTICATED), "UNAUTHENTICATED");
    ASSERT_STR_EQ(api_grpc_code_name(99), "UNKNOWN");
    ASSERT_STR_EQ(api_strerror(API_EQUEUEFULL),
                  "stream send queue is full (the client does not read)");
    ASSERT_STR_EQ(api_strerror(0), "success");
    ASSERT(strlen(api_strerror(-98)) > 0); /* -EADDRINUSE */
}

/* ---- method table ------------------------------------------------------------ */

TEST(method_table_routes_every_etcd_rpc) {
    static const char *const paths[] = {
        "/etcdserverpb.KV/Range",
        "/etcdserverpb.KV/Put",
        "/etcdserverpb.KV/DeleteRange",
        "/etcdserverpb.KV/Txn",
        "/etcdserverpb.KV/Compact",
        "/etcdserverpb.Watch/Watch",
        "/etcdserverpb.Lease/LeaseGrant",
        "/etcdserverpb.Lease/LeaseRevoke",
        "/etcdserverpb.Lease/LeaseKeepAlive",
        "/etcdserverpb.Lease/LeaseTimeToLive",
        "/etcdserverpb.Lease/LeaseLeases",
        "/etcdserverpb.Cluster/MemberAdd",
        "/etcdserverpb.Cluster/MemberRemove",
        "/etcdserverpb.Cluster/MemberUpdate",
        "/etcdserverpb.Cluster/MemberList",
        "/etcdserverpb.Cluster/MemberPromote",
        "/etcdserverpb.Maintenance/Alarm",
        "/etcdserverpb.Maintenance/Status",
        "/etcdserverpb.Maintenance/Defragment",
        "/etcdserverpb.Maintenance/Hash",
        "/etcdserverpb.Maintenance/HashKV",
        "/etcdserverpb.Maintenance/Snapshot",
        "/etcdserverpb.Maintenance/MoveLeader",
    };
    size_t n = sizeof(paths) / sizeof(paths[0]);
    ASSERT_EQ(api__method_count(), n);
    for (size_t i = 0; i < n; i++) {
        const struct api__method *m = api__method_find(paths[i], strlen(paths[i]));
        ASSERT(m != NULL);
        ASSERT_STR_EQ(m->path, paths[i]);
        ASSERT(m->req != NULL && m->resp != NULL);
    }
    const struct api__method *w = api__method_find(paths[5], strlen(paths[5]));
    ASSERT_EQ(w->kind, API__BIDI_STREAM);
    const struct api__method *snap = api__method_find(paths[21], strlen(paths[21]));
    ASSERT_EQ(snap->kind, API__SERVER_STREAM);
    ASSERT_STR_EQ(snap->resp->name, "etcdserverpb.SnapshotResponse");
    /* A prefix of a path is not a path. */
    ASSERT(api__method_find("/etcdserverpb.KV/Ran", 20) == NULL);
    struct api_backend empty = {0};
    ASSERT(!api__method_routed(&empty, w));
}

TEST(unknown_method_messages_match_grpc_go) {
    char msg[256];
    const char *p = "/etcdserverpb.Auth/AuthEnable";
    api__method_unknown_message(p, strlen(p), msg, sizeof(msg));
    ASSERT_STR_EQ(msg, "unknown method AuthEnable for service etcdserverpb.Auth");
    p = "/grpc.health.v1.Health/Check";
    api__method_unknown_message(p, strlen(p), msg, sizeof(msg));
    ASSERT_STR_EQ(msg, "unknown service grpc.health.v1.Health");
    p = "nonsense";
    api__method_unknown_message(p, strlen(p), msg, sizeof(msg));
    ASSERT_STR_EQ(msg, "malformed method name: \"nonsense\"");
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
