/*
 * test_client_grpc.c - client/'s pure code: the gRPC response decoder
 * (driven against a model of the frames it was given, split at every
 * position and at random, plus random and truncated garbage), the protobuf
 * nesting check, grpc-message decoding, grpc-timeout, HTTP status mapping
 * and endpoint URL parsing. No sockets, no etcd. Random tests print their
 * seed through the harness (--seed replays).
 */
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"
#include "tests/harness.h"

static uint64_t rng_state;

static uint64_t rnd(void) {
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return x;
}

static void rng_seed(uint64_t extra) {
    rng_state = harness_seed * 0x9e3779b97f4a7c15ull + extra + 1;
    if (rng_state == 0) rng_state = 1;
}

/* Collects delivered messages into one buffer, with their lengths. */
#define SINK_MSGS_MAX 4096

struct sink {
    uint8_t *buf;
    size_t len, cap;
    size_t lens[SINK_MSGS_MAX];
    int n;
    int stop_at; /* return 1 from the callback at this message (0: never) */
};

static int sink_cb(void *arg, const uint8_t *p, size_t len) {
    struct sink *s = arg;
    if (s->len + len > s->cap) {
        size_t cap = s->cap ? s->cap : 1024;
        while (cap < s->len + len) cap *= 2;
        s->buf = realloc(s->buf, cap);
        s->cap = cap;
    }
    if (len) memcpy(s->buf + s->len, p, len);
    s->len += len;
    if (s->n < SINK_MSGS_MAX) s->lens[s->n] = len;
    s->n++;
    return s->stop_at != 0 && s->n == s->stop_at ? 1 : 0;
}

static size_t frame(uint8_t *out, const uint8_t *body, size_t len) {
    out[0] = 0;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
    if (len) memcpy(out + 5, body, len);
    return 5 + len;
}

TEST(reader_every_split_point) {
    /* Three messages: empty, 1 byte, 300 bytes. */
    uint8_t body[300], wire[400];
    for (size_t i = 0; i < sizeof(body); i++) body[i] = (uint8_t)(i * 7);
    size_t n = 0;
    n += frame(wire + n, body, 0);
    n += frame(wire + n, body, 1);
    n += frame(wire + n, body, 300);
    for (size_t a = 0; a <= n; a++) {
        for (size_t b = a; b <= n; b += 13) {
            struct client__reader r;
            struct sink s = {0};
            client__reader_init(&r, 1000);
            ASSERT_EQ(client__reader_feed(&r, wire, a, sink_cb, &s), 0);
            ASSERT_EQ(client__reader_feed(&r, wire + a, b - a, sink_cb, &s), 0);
            ASSERT_EQ(client__reader_feed(&r, wire + b, n - b, sink_cb, &s), 0);
            ASSERT_EQ(s.n, 3);
            ASSERT_EQ(s.lens[0], 0);
            ASSERT_EQ(s.lens[1], 1);
            ASSERT_EQ(s.lens[2], 300);
            ASSERT_EQ(s.len, 301);
            ASSERT_MEM_EQ(s.buf + 1, body, 300);
            ASSERT_EQ(client__reader_pending(&r), 0);
            client__reader_free(&r);
            free(s.buf);
        }
    }
}

TEST(reader_limits_and_errors) {
    struct client__reader r;
    struct sink s = {0};
    /* Declared size over the limit: refused from the prefix alone. */
    uint8_t big[5] = {0, 0, 0, 0x10, 0x01}; /* 4097 */
    client__reader_init(&r, 4096);
    ASSERT_EQ(client__reader_feed(&r, big, 5, sink_cb, &s), CLIENT_ETOOBIG);
    ASSERT_EQ(client__reader_declared(&r), 4097);
    ASSERT_EQ(client__reader_buffered(&r), 0);
    /* After a failure, input is ignored. */
    uint8_t ok[6];
    frame(ok, (const uint8_t *)"x", 1);
    ASSERT_EQ(client__reader_feed(&r, ok, 6, sink_cb, &s), 0);
    ASSERT_EQ(s.n, 0);
    client__reader_free(&r);

    /* 4 GiB - 1 declared with the largest limit: still refused, nothing held. */
    uint8_t huge[5] = {0, 0xff, 0xff, 0xff, 0xff};
    client__reader_init(&r, CLIENT_RECV_MSG_BYTES_MAX);
    ASSERT_EQ(client__reader_feed(&r, huge, 5, sink_cb, &s), CLIENT_ETOOBIG);
    ASSERT_EQ(client__reader_buffered(&r), 0);
    client__reader_free(&r);

    /* Compressed flag, or any other flag value. */
    for (int flag = 1; flag < 256; flag += 50) {
        uint8_t comp[6] = {(uint8_t)flag, 0, 0, 0, 1, 'x'};
        client__reader_init(&r, 4096);
        ASSERT_EQ(client__reader_feed(&r, comp, 6, sink_cb, &s), CLIENT_EMALFORMED);
        client__reader_free(&r);
    }

    /* A partial message is held with what arrived, not what it claims. */
    uint8_t part[5 + 10] = {0, 0, 0, 0x0f, 0xa0}; /* claims 4000 */
    client__reader_init(&r, 4096);
    ASSERT_EQ(client__reader_feed(&r, part, sizeof(part), sink_cb, &s), 0);
    ASSERT_EQ(client__reader_pending(&r), 15);
    ASSERT_LE(client__reader_buffered(&r), 4096);
    client__reader_free(&r);

    /* The callback's non-zero return stops the feed and is returned. */
    uint8_t two[12];
    size_t n = frame(two, (const uint8_t *)"a", 1);
    n += frame(two + n, (const uint8_t *)"b", 1);
    struct sink stop = {.stop_at = 1};
    client__reader_init(&r, 4096);
    ASSERT_EQ(client__reader_feed(&r, two, n, sink_cb, &stop), 1);
    ASSERT_EQ(stop.n, 1);
    client__reader_free(&r);
    free(stop.buf);
    free(s.buf);
}

/* Model check: random frames fed in random chunks come out intact. */
TEST(reader_random_chunks_model) {
    rng_seed(1);
    for (int round = 0; round < 200; round++) {
        size_t cap = 64 * 1024;
        uint8_t *wire = malloc(cap);
        uint8_t *bodies = malloc(cap);
        size_t lens[64];
        int nmsg = 1 + (int)(rnd() % 40);
        size_t n = 0, blen = 0;
        for (int i = 0; i < nmsg; i++) {
            size_t len = rnd() % 4 == 0 ? 0 : rnd() % (rnd() % 8 == 0 ? 3000 : 40);
            if (n + 5 + len > cap) {
                nmsg = i;
                break;
            }
            for (size_t k = 0; k < len; k++) bodies[blen + k] = (uint8_t)rnd();
            n += frame(wire + n, bodies + blen, len);
            blen += len;
            lens[i] = len;
        }
        struct client__reader r;
        struct sink s = {0};
        client__reader_init(&r, 3000);
        size_t off = 0;
        while (off < n) {
            size_t take = 1 + rnd() % (rnd() % 2 ? 7 : 5000);
            if (take > n - off) take = n - off;
            ASSERT_EQ(client__reader_feed(&r, wire + off, take, sink_cb, &s), 0);
            ASSERT_LE(client__reader_buffered(&r), 3000);
            off += take;
        }
        ASSERT_EQ(s.n, nmsg);
        ASSERT_EQ(s.len, blen);
        for (int i = 0; i < nmsg; i++) ASSERT_EQ(s.lens[i], lens[i]);
        if (blen) ASSERT_MEM_EQ(s.buf, bodies, blen);
        client__reader_free(&r);
        free(s.buf);
        free(wire);
        free(bodies);
    }
}

/* Whatever the input, delivered message bodies unpack or are refused,
 * and nothing crashes or leaks (ASan/UBSan build). */
static int unpack_cb(void *arg, const uint8_t *p, size_t len) {
    const ProtobufCMessageDescriptor *d = arg;
    ProtobufCMessage *m = client__proto_unpack(d, p, len);
    if (m != NULL) protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

TEST(reader_fuzz_garbage_and_truncation) {
    rng_seed(2);
    const ProtobufCMessageDescriptor *descs[] = {
        &etcdserverpb__watch_response__descriptor,
        &etcdserverpb__range_response__descriptor,
        &etcdserverpb__txn_response__descriptor,
        &etcdserverpb__lease_keep_alive_response__descriptor,
    };
    /* A valid WatchResponse to mutate. */
    Mvccpb__KeyValue kv = MVCCPB__KEY_VALUE__INIT;
    kv.key = (ProtobufCBinaryData){3, (uint8_t *)"k/1"};
    kv.value = (ProtobufCBinaryData){5, (uint8_t *)"value"};
    kv.mod_revision = 42;
    Mvccpb__Event ev = MVCCPB__EVENT__INIT;
    ev.kv = &kv;
    ev.prev_kv = &kv;
    Mvccpb__Event *evs[] = {&ev, &ev};
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    hdr.revision = 42;
    Etcdserverpb__WatchResponse w = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    w.header = &hdr;
    w.watch_id = 7;
    w.n_events = 2;
    w.events = evs;
    uint8_t *valid;
    size_t vlen;
    ASSERT_EQ(client__grpc_encode(&w.base, 0, &valid, &vlen), 0);
    for (int round = 0; round < 3000; round++) {
        uint8_t buf[512];
        size_t n;
        if (round % 2 == 0) {
            /* Mutated valid frames: flipped bytes, truncated, lengths changed. */
            n = vlen < sizeof(buf) ? vlen : sizeof(buf);
            memcpy(buf, valid, n);
            int flips = (int)(rnd() % 4);
            for (int f = 0; f < flips; f++) buf[rnd() % n] ^= (uint8_t)(1u << (rnd() % 8));
            if (rnd() % 3 == 0) n = rnd() % (n + 1);
            if (rnd() % 4 == 0 && n >= 5) buf[4] = (uint8_t)rnd();
            if (rnd() % 8 == 0 && n >= 5) buf[0] = 0;
        } else {
            n = rnd() % sizeof(buf);
            for (size_t k = 0; k < n; k++) buf[k] = (uint8_t)rnd();
            if (n > 0 && rnd() % 2) buf[0] = 0;
            if (n > 4 && rnd() % 2) buf[1] = buf[2] = 0;
        }
        struct client__reader r;
        client__reader_init(&r, rnd() % 2 ? 64 : CLIENT_RECV_MSG_BYTES_MAX);
        const ProtobufCMessageDescriptor *d = descs[rnd() % 4];
        size_t off = 0;
        while (off < n) {
            size_t take = 1 + rnd() % 64;
            if (take > n - off) take = n - off;
            int rc = client__reader_feed(&r, buf + off, take, unpack_cb, (void *)d);
            ASSERT(rc == 0 || rc == CLIENT_ETOOBIG || rc == CLIENT_EMALFORMED);
            off += take;
        }
        client__reader_free(&r);
        /* The body alone, too. */
        ProtobufCMessage *m = client__proto_unpack(d, buf, n);
        if (m != NULL) protobuf_c_message_free_unpacked(m, NULL);
    }
    /* The unmutated frame decodes to what was encoded. */
    ProtobufCMessage *m =
        client__proto_unpack(&etcdserverpb__watch_response__descriptor, valid + 5, vlen - 5);
    ASSERT(m != NULL);
    const Etcdserverpb__WatchResponse *back = (const Etcdserverpb__WatchResponse *)m;
    ASSERT_EQ(back->watch_id, 7);
    ASSERT_EQ(back->n_events, 2);
    ASSERT_EQ(back->events[1]->prev_kv->mod_revision, 42);
    protobuf_c_message_free_unpacked(m, NULL);
    free(valid);
}

/* TxnResponse -> ResponseOp -> TxnResponse -> ... nested `depth` deep. */
static size_t nested_txn(uint8_t *out, size_t cap, int depth) {
    /* Built inside out: each level wraps the previous bytes in
     * ResponseOp.response_txn (field 4) inside TxnResponse.responses
     * (field 3), both length-delimited. */
    size_t len = 0;
    uint8_t *tmp = malloc(cap);
    for (int i = 0; i < depth; i++) {
        for (int field = 4; field >= 3; field--) {
            uint8_t hdr[12];
            size_t h = 0;
            hdr[h++] = (uint8_t)(field << 3 | 2);
            size_t v = len;
            do {
                hdr[h++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
                v >>= 7;
            } while (v);
            if (h + len > cap) {
                free(tmp);
                return 0;
            }
            memcpy(tmp, hdr, h);
            memcpy(tmp + h, out, len);
            len += h;
            memcpy(out, tmp, len);
        }
    }
    free(tmp);
    return len;
}

TEST(proto_nesting_limit) {
    static uint8_t buf[8192];
    size_t n = nested_txn(buf, sizeof(buf), 40);
    ASSERT_GT(n, 0);
    ASSERT_EQ(client__proto_check(&etcdserverpb__txn_response__descriptor, buf, n, 100), 0);
    ProtobufCMessage *m = client__proto_unpack(&etcdserverpb__txn_response__descriptor, buf, n);
    ASSERT(m != NULL);
    protobuf_c_message_free_unpacked(m, NULL);
    n = nested_txn(buf, sizeof(buf), 60); /* 120 levels of messages */
    ASSERT_GT(n, 0);
    ASSERT_EQ(client__proto_check(&etcdserverpb__txn_response__descriptor, buf, n, 100),
              CLIENT_EMALFORMED);
    ASSERT(client__proto_unpack(&etcdserverpb__txn_response__descriptor, buf, n) == NULL);
    /* Truncated length-delimited field and an overlong varint. */
    uint8_t bad1[] = {0x0a, 0x05, 0x01};
    ASSERT_EQ(client__proto_check(&etcdserverpb__range_response__descriptor, bad1, 3, 100),
              CLIENT_EMALFORMED);
    uint8_t bad2[11];
    memset(bad2, 0xff, sizeof(bad2));
    ASSERT_EQ(client__proto_check(&etcdserverpb__range_response__descriptor, bad2, 11, 100),
              CLIENT_EMALFORMED);
}

TEST(percent_decode_and_status_helpers) {
    char out[64];
    const char *in = "etcdserver:%20mvcc%3A required %zz %4";
    ASSERT_EQ(client__percent_decode(in, strlen(in), out, sizeof(out)), 33);
    ASSERT_STR_EQ(out, "etcdserver: mvcc: required %zz %4");
    ASSERT_EQ(client__percent_decode("%E2%9C%93", 9, out, sizeof(out)), 3);
    ASSERT_STR_EQ(out, "\xe2\x9c\x93");
    /* Cut at the buffer, always terminated. */
    char small[4];
    ASSERT_EQ(client__percent_decode("abcdef", 6, small, sizeof(small)), 3);
    ASSERT_STR_EQ(small, "abc");
    char t[16];
    client__grpc_timeout_format(5000, t);
    ASSERT_STR_EQ(t, "5000m");
    client__grpc_timeout_format(99999999, t);
    ASSERT_STR_EQ(t, "99999999m");
    client__grpc_timeout_format(100000000, t);
    ASSERT_STR_EQ(t, "100000S");
    ASSERT_EQ(client__grpc_code_from_http(503), CLIENT_GRPC_UNAVAILABLE);
    ASSERT_EQ(client__grpc_code_from_http(404), CLIENT_GRPC_UNIMPLEMENTED);
    ASSERT_EQ(client__grpc_code_from_http(500), CLIENT_GRPC_UNKNOWN);
    ASSERT_STR_EQ(client_grpc_code_name(14), "UNAVAILABLE");
    ASSERT_STR_EQ(client_grpc_code_name(99), "UNKNOWN");
    ASSERT_STR_EQ(client_strerror(CLIENT_ETLS),
                  "TLS setup failed (certificate, key or CA unreadable or invalid)");
    ASSERT_STR_EQ(client_strerror(UV_ECONNREFUSED), "connection refused");
}

TEST(url_parse) {
    struct client__url u;
    ASSERT_EQ(client__url_parse("http://127.0.0.1:2379", &u), 0);
    ASSERT(!u.tls);
    ASSERT(u.host_is_ip);
    ASSERT_STR_EQ(u.host, "127.0.0.1");
    ASSERT_STR_EQ(u.port, "2379");
    ASSERT_STR_EQ(u.authority, "127.0.0.1:2379");
    ASSERT_EQ(client__url_parse("https://etcd-0.example.com:443/", &u), 0);
    ASSERT(u.tls);
    ASSERT(!u.host_is_ip);
    ASSERT_STR_EQ(u.host, "etcd-0.example.com");
    ASSERT_EQ(client__url_parse("https://[::1]:2379", &u), 0);
    ASSERT(u.host_is_ip);
    ASSERT_STR_EQ(u.host, "::1");
    ASSERT_STR_EQ(u.authority, "[::1]:2379");
    ASSERT_EQ(client__url_parse("localhost:12379", &u), 0);
    ASSERT(!u.tls);
    ASSERT_STR_EQ(u.port, "12379");
    ASSERT_EQ(client__url_parse("http://node1", &u), 0);
    ASSERT_STR_EQ(u.port, "2379");
    const char *bad[] = {"",
                         "http://",
                         "unix:///run/etcd.sock",
                         "http://h:0",
                         "http://h:65536",
                         "http://h:12a",
                         "http://h:1/path",
                         "http://[::1",
                         "http://[not-ip]:1",
                         "::1:2379",
                         "http://user@h:1",
                         "http://h h:1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (client__url_parse(bad[i], &u) != CLIENT_EURL)
            HARNESS_FAIL_("client__url_parse(\"%s\") accepted", bad[i]);
    }
    ASSERT_EQ(client__url_parse(NULL, &u), CLIENT_EURL);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
