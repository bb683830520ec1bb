/*
 * test_api_http.c - HTTP/1.1 on the client port: the request-head parser,
 * chunked bodies, the protobuf <-> JSON codec (exact bytes of etcd's
 * gateway and Go's error texts), and whole connections driven without a
 * socket (detached): routing, keep-alive, pipelining behind a held answer,
 * limits (413, 431), a client that sends one byte at a time, and the
 * HTTP/2 preface still reaching nghttp2.
 */
#include <string.h>

#include "api/api_int.h"
#include "tests/harness.h"

/* ---- parser ------------------------------------------------------------------ */

static int parse(const char *s, struct api__h1_req *r) {
    size_t scanned = 0;
    memset(r, 0, sizeof(*r));
    return api__h1_parse_head((const uint8_t *)s, strlen(s), &scanned, r);
}

TEST(parse_request_heads) {
    struct api__h1_req r;
    const char *get = "GET /health?x=1 HTTP/1.1\r\nHost: a\r\n\r\nrest";
    ASSERT_EQ(parse(get, &r), (int)strlen(get) - 4);
    ASSERT_EQ(r.method, API__H1_GET);
    ASSERT_EQ(r.path_len, 7u);
    ASSERT(memcmp(get + r.target_off, "/health", 7) == 0);
    ASSERT(r.keep_alive);
    ASSERT_EQ(parse("POST /v3/kv/put HTTP/1.0\nContent-Length: 12\n\n", &r), 45);
    ASSERT(!r.keep_alive);
    ASSERT(r.has_length);
    ASSERT_EQ(r.content_length, 12u);
    ASSERT(parse("POST http://h:1/v3/kv/range HTTP/1.1\r\nConnection: keep-alive, close\r\n"
                 "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
                 &r) > 0);
    ASSERT(!r.keep_alive);
    ASSERT(r.chunked);
    ASSERT(r.expect_continue);
    ASSERT_EQ(r.path_len, 12u);
    /* Incomplete heads, then completed one byte at a time. */
    ASSERT_EQ(parse("GET / HTTP/1.1\r\nHost: a\r\n", &r), 0);
    const char *full = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    size_t scanned = 0;
    for (size_t n = 1; n < strlen(full); n++)
        ASSERT_EQ(api__h1_parse_head((const uint8_t *)full, n, &scanned, &r), 0);
    ASSERT_EQ(api__h1_parse_head((const uint8_t *)full, strlen(full), &scanned, &r),
              (int)strlen(full));
}

TEST(parse_errors) {
    struct api__h1_req r;
    ASSERT_EQ(parse("GET /\r\n\r\n", &r), API_EMALFORMED);
    ASSERT_EQ(r.error_status, 400);
    ASSERT_EQ(parse("GET / HTTP/2.0\r\n\r\n", &r), API_EMALFORMED);
    ASSERT_EQ(r.error_status, 505);
    ASSERT_EQ(parse("GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", &r), API_EMALFORMED);
    ASSERT_EQ(r.error_status, 501);
    ASSERT_EQ(parse("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", &r),
              API_EMALFORMED);
    ASSERT_EQ(parse("GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                    &r),
              API_EMALFORMED);
    ASSERT_EQ(parse("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", &r), API_EMALFORMED);
    ASSERT_EQ(parse("GET / HTTP/1.1\r\nBad Name: b\r\n\r\n", &r), API_EMALFORMED);
    ASSERT_EQ(parse("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", &r), API_EMALFORMED);
    ASSERT_EQ(parse("GET nopath HTTP/1.1\r\n\r\n", &r), API_EMALFORMED);
    /* A head that never ends is refused once over the limit. */
    size_t n = API__H1_HEAD_BYTES_MAX + 10;
    char *big = malloc(n + 1);
    memset(big, 'a', n);
    memcpy(big, "GET / HTTP/1.1\r\nX: ", 19);
    big[n] = '\0';
    ASSERT_EQ(parse(big, &r), API_ETOOBIG);
    ASSERT_EQ(r.error_status, 431);
    free(big);
}

static int dechunk(const char *in, size_t step, char *out, size_t out_size) {
    struct api__h1_chunked ck = {0};
    struct api__buf body;
    api__buf_init(&body, 64);
    size_t n = strlen(in), off = 0;
    int rc = 0;
    while (off < n && rc == 0) {
        size_t take = n - off < step ? n - off : step, used = 0;
        rc = api__h1_chunked_feed(&ck, (const uint8_t *)in + off, take, &used, &body);
        off += used;
    }
    snprintf(out, out_size, "%.*s", (int)body.len, body.p ? (char *)body.p : "");
    api__buf_free(&body);
    return rc;
}

TEST(chunked_bodies) {
    char out[128];
    const char *in = "4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n\r\n";
    for (size_t step = 1; step <= strlen(in); step++) {
        ASSERT_EQ(dechunk(in, step, out, sizeof(out)), 1);
        ASSERT_STR_EQ(out, "Wikipedia");
    }
    ASSERT_EQ(dechunk("0\n\n", 1, out, sizeof(out)), 1);
    ASSERT_EQ(dechunk("x\r\n", 1, out, sizeof(out)), API_EMALFORMED);
    ASSERT_EQ(dechunk("\r\n", 1, out, sizeof(out)), API_EMALFORMED);
    ASSERT_EQ(dechunk("2\r\nabX\r\n", 1, out, sizeof(out)), API_EMALFORMED);
    ASSERT_EQ(dechunk("41\r\n", 1, out, sizeof(out)), API_ETOOBIG); /* over 64 bytes */
    ASSERT_EQ(dechunk("ffffffffffffffffff\r\n", 1, out, sizeof(out)), API_ETOOBIG);
}

/* ---- JSON codec --------------------------------------------------------------- */

static char *encode(const ProtobufCMessage *m) {
    struct api__buf b;
    api__buf_init(&b, 1u << 20);
    if (api__json_encode(&b, m) != 0) {
        api__buf_free(&b);
        return strdup("ENCODE FAILED");
    }
    api__buf_add(&b, "", 1);
    return (char *)b.p;
}

TEST(json_encode_as_etcd_gateway) {
    Etcdserverpb__RangeResponse resp = ETCDSERVERPB__RANGE_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    Mvccpb__KeyValue kv = MVCCPB__KEY_VALUE__INIT, *kvs[1] = {&kv};
    h.cluster_id = 18446744073709551615ull;
    h.revision = 2;
    resp.header = &h;
    kv.key = (ProtobufCBinaryData){3, (uint8_t *)"foo"};
    kv.create_revision = 2;
    kv.mod_revision = 2;
    kv.version = 1;
    resp.kvs = kvs;
    resp.n_kvs = 1;
    resp.count = 1;
    char *s = encode(&resp.base);
    ASSERT_STR_EQ(s, "{\"header\":{\"cluster_id\":\"18446744073709551615\",\"revision\":\"2\"},"
                     "\"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":\"2\",\"mod_revision\":\"2\","
                     "\"version\":\"1\"}],\"count\":\"1\"}");
    free(s);
    /* A set oneof member shows even when empty; enums by name; uint32 as a
     * number; strings escaped as Go escapes them. */
    Etcdserverpb__TxnResponse txn = ETCDSERVERPB__TXN_RESPONSE__INIT;
    Etcdserverpb__ResponseOp op = ETCDSERVERPB__RESPONSE_OP__INIT, *ops[1] = {&op};
    Etcdserverpb__PutResponse put = ETCDSERVERPB__PUT_RESPONSE__INIT;
    op.response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_PUT;
    op.response_put = &put;
    txn.responses = ops;
    txn.n_responses = 1;
    s = encode(&txn.base);
    ASSERT_STR_EQ(s, "{\"responses\":[{\"response_put\":{}}]}");
    free(s);
    Etcdserverpb__AlarmMember am = ETCDSERVERPB__ALARM_MEMBER__INIT;
    am.alarm = ETCDSERVERPB__ALARM_TYPE__NOSPACE;
    s = encode(&am.base);
    ASSERT_STR_EQ(s, "{\"alarm\":\"NOSPACE\"}");
    free(s);
    Etcdserverpb__HashResponse hr = ETCDSERVERPB__HASH_RESPONSE__INIT;
    hr.hash = 4000000000u;
    s = encode(&hr.base);
    ASSERT_STR_EQ(s, "{\"hash\":4000000000}");
    free(s);
    Etcdserverpb__Member m = ETCDSERVERPB__MEMBER__INIT;
    m.name = (char *)"a<b>&\"\n\xff";
    s = encode(&m.base);
    ASSERT_STR_EQ(s, "{\"name\":\"a\\u003cb\\u003e\\u0026\\\"\\n\\ufffd\"}");
    free(s);
}

/* Decodes json as desc, re-encodes it; returns the JSON or the error. */
static char *roundtrip(const ProtobufCMessageDescriptor *d, const char *json) {
    struct api__buf w;
    api__buf_init(&w, 1u << 20);
    char err[256];
    size_t used;
    int rc = api__json_decode(d, (const uint8_t *)json, strlen(json), &used, &w, err, sizeof(err));
    if (rc != 0) {
        api__buf_free(&w);
        char *e = malloc(strlen(err) + 8);
        sprintf(e, "ERR %s", err);
        return e;
    }
    static const uint8_t none[1];
    ProtobufCMessage *m = NULL;
    if (api__proto_check(d, w.len ? w.p : none, w.len, API__PROTO_DEPTH_MAX) == 0)
        m = api__proto_unpack(d, w.len ? w.p : none, w.len);
    api__buf_free(&w);
    if (m == NULL) return strdup("UNPACK FAILED");
    char *s = encode(m);
    protobuf_c_message_free_unpacked(m, NULL);
    return s;
}

#define RT(desc, in, want)                                                                         \
    do {                                                                                           \
        char *got_ = roundtrip(&desc, in);                                                         \
        ASSERT_STR_EQ(got_, want);                                                                 \
        free(got_);                                                                                \
    } while (0)

TEST(json_decode_round_trips) {
    const ProtobufCMessageDescriptor *rr = &etcdserverpb__range_request__descriptor;
    RT(*rr, "{\"key\":\"Zm9v\",\"limit\":\"5\",\"revision\":7,\"keysOnly\":true,\"bogus\":[1,{}]}",
       "{\"key\":\"Zm9v\",\"limit\":\"5\",\"revision\":\"7\",\"keys_only\":true}");
    RT(*rr, "null", "{}");
    RT(*rr, "{\"key\":null,\"sort_order\":\"DESCEND\",\"sort_target\":2}",
       "{\"sort_order\":\"DESCEND\",\"sort_target\":\"CREATE\"}");
    RT(*rr, "{\"key\":\"YQ==\",\"key\":\"Yg==\"}", "{\"key\":\"Yg==\"}"); /* last wins */
    RT(*rr, "{\"limit\":\" -3 \"}", "{\"limit\":\"-3\"}");
    RT(etcdserverpb__txn_request__descriptor,
       "{\"compare\":[{\"key\":\"YQ==\",\"result\":\"EQUAL\",\"target\":\"VALUE\",\"value\":\"\"}],"
       "\"success\":[{\"requestPut\":{\"key\":\"YQ==\",\"value\":\"eA==\"}},"
       "{\"request_txn\":{\"success\":[{\"request_range\":{}}]}}]}",
       "{\"compare\":[{\"target\":\"VALUE\",\"key\":\"YQ==\",\"value\":\"\"}],"
       "\"success\":[{\"request_put\":{\"key\":\"YQ==\",\"value\":\"eA==\"}},"
       "{\"request_txn\":{\"success\":[{\"request_range\":{}}]}}]}");
    RT(etcdserverpb__member_add_request__descriptor,
       "{\"peerURLs\":[\"http://a\\u003c:1\",\"\\ud83d\\ude00\"],\"isLearner\":true}",
       "{\"peerURLs\":[\"http://a\\u003c:1\",\"\xf0\x9f\x98\x80\"],\"isLearner\":true}");
}

TEST(json_decode_errors_in_go_words) {
    const ProtobufCMessageDescriptor *rr = &etcdserverpb__range_request__descriptor;
    RT(*rr, "{\"key\":\"Zm9\"}", "ERR illegal base64 data at input byte 0");
    RT(*rr, "{\"key\":\"Zm9v==\"}", "ERR illegal base64 data at input byte 4");
    RT(*rr, "{\"key\":\"Zm-v\"}", "ERR illegal base64 data at input byte 2");
    RT(*rr, "{\"key\":", "ERR unexpected EOF");
    RT(*rr, "{\"key\":x}", "ERR invalid character 'x' looking for beginning of value");
    RT(*rr, "{\"key\" 1}", "ERR invalid character '1' after object key");
    RT(*rr, "{\"key\":1 2}", "ERR invalid character '2' after object key:value pair");
    RT(*rr, "{\"key\":tru}", "ERR invalid character '}' in literal true (expecting 'e')");
    RT(*rr, "{\"key\":1}", "ERR json: cannot unmarshal number into Go value of type []uint8");
    RT(*rr, "{\"limit\":\"abc\"}", "ERR invalid character 'a' looking for beginning of value");
    RT(*rr, "{\"limit\":1.5}", "ERR json: cannot unmarshal number 1.5 into Go value of type int64");
    RT(*rr, "{\"limit\":99999999999999999999}",
       "ERR json: cannot unmarshal number 99999999999999999999 into Go value of type int64");
    RT(*rr, "{\"keys_only\":\"true\"}",
       "ERR json: cannot unmarshal string into Go value of type bool");
    RT(*rr, "{\"sort_order\":\"NOPE\"}",
       "ERR unknown value \"NOPE\" for enum etcdserverpb.RangeRequest_SortOrder");
    RT(*rr, "[1]",
       "ERR json: cannot unmarshal array into Go value of type map[string]json.RawMessage");
    RT(etcdserverpb__txn_request__descriptor, "{\"compare\":{}}",
       "ERR json: cannot unmarshal object into Go value of type []json.RawMessage");
    /* Nesting past the bound is refused before any recursion into it. */
    size_t depth = API__PROTO_DEPTH_MAX + 5;
    char *deep = malloc(depth * 2 + 1);
    for (size_t i = 0; i < depth; i++) deep[i] = '[', deep[depth + i] = ']';
    deep[2 * depth] = '\0';
    RT(*rr, deep, "ERR exceeded max depth");
    free(deep);
}

/* ---- connections ---------------------------------------------------------------- */

static struct api_call *held;

static void be_range(void *ctx, struct api_call *call, const Etcdserverpb__RangeRequest *req) {
    (void)ctx;
    Etcdserverpb__RangeResponse resp = ETCDSERVERPB__RANGE_RESPONSE__INIT;
    resp.count = (int64_t)req->key.len;
    api_reply(call, &resp.base);
}

static void be_put(void *ctx, struct api_call *call, const Etcdserverpb__PutRequest *req) {
    (void)ctx;
    (void)req;
    held = call; /* answered by the test */
}

static void be_health(void *ctx, struct api_call *call) {
    (void)ctx;
    api_reply_health(call, false);
}

static const struct api_backend backend = {
    .range = be_range,
    .put = be_put,
    .health = be_health,
};

struct fixture {
    struct api_server *s;
    struct api__conn *c;
    char out[1u << 16];
};

static void fx_open(struct fixture *f, size_t max_request_bytes) {
    struct api_options o = {.max_request_bytes = max_request_bytes};
    ASSERT_EQ(api__server_new_detached(&o, &backend, &f->s), 0);
    f->c = api__conn_new_detached(f->s);
    ASSERT(f->c != NULL);
}

static void fx_close(struct fixture *f) {
    api__conn_free_detached(f->c);
    api__server_free_detached(f->s);
}

/* Feeds s; returns the feed's result and leaves the output in f->out. */
static int fx_feed(struct fixture *f, const char *s, size_t n) {
    int rc = api__conn_feed(f->c, (const uint8_t *)s, n);
    const uint8_t *p;
    size_t len = api__conn_output(f->c, &p);
    if (len >= sizeof(f->out)) len = sizeof(f->out) - 1;
    if (len > 0) memcpy(f->out, p, len);
    f->out[len] = '\0';
    return rc;
}

static int fx_send(struct fixture *f, const char *s) {
    return fx_feed(f, s, strlen(s));
}

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

TEST(conn_routes_and_keep_alive) {
    struct fixture f;
    fx_open(&f, 0);
    ASSERT_EQ(fx_send(&f, "GET /version HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
    ASSERT(strstr(f.out, "HTTP/1.1 200 OK\r\n") == f.out);
    ASSERT(strstr(f.out, "\r\n\r\n{\"etcdserver\":\"3.4.23\",\"etcdcluster\":\"3.4.0\"}") != NULL);
    ASSERT_EQ(fx_send(&f, "GET /health HTTP/1.1\r\n\r\n"), 0);
    ASSERT(strstr(f.out, "HTTP/1.1 503 ") == f.out);
    ASSERT(strstr(f.out, "{\"health\":\"false\"}\n") != NULL);
    ASSERT_EQ(fx_send(&f, "POST /v3/kv/range HTTP/1.1\r\nContent-Length: 14\r\n\r\n"
                          "{\"key\":\"YWI=\"}"),
              0);
    ASSERT(strstr(f.out, "\r\n\r\n{\"count\":\"2\"}") != NULL);
    ASSERT_EQ(fx_send(&f, "POST /v3beta/kv/range HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "3\r\n{\"k\r\nb\r\ney\":\"YWJj\"}\r\n0\r\n\r\n"),
              0);
    ASSERT(strstr(f.out, "{\"count\":\"3\"}") != NULL);
    ASSERT_EQ(fx_send(&f, "POST /v3/kv/range HTTP/1.1\r\nContent-Length: 8\r\n\r\n{\"key\":1"), 0);
    ASSERT(strstr(f.out, "HTTP/1.1 400 Bad Request") == f.out);
    ASSERT(
        strstr(f.out, "{\"error\":\"unexpected EOF\",\"message\":\"unexpected EOF\",\"code\":3}"));
    ASSERT_EQ(fx_send(&f, "GET /v3/kv/range HTTP/1.1\r\n\r\n"), 0);
    ASSERT(strstr(f.out, "HTTP/1.1 405 ") == f.out);
    ASSERT_EQ(fx_send(&f, "POST /v3/nothing HTTP/1.1\r\n\r\n"), 0);
    ASSERT(strstr(f.out, "HTTP/1.1 404 ") == f.out);
    /* Not routed by this backend: etcd's Unimplemented, 501. */
    ASSERT_EQ(fx_send(&f, "POST /v3/lease/grant HTTP/1.1\r\n\r\n"), 0);
    ASSERT(strstr(f.out, "HTTP/1.1 501 ") == f.out);
    ASSERT_EQ(fx_send(&f, "GET /metrics HTTP/1.1\r\n\r\n"), 0);
    ASSERT(strstr(f.out, "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\","
                         "grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 2") != NULL);
    /* Connection: close ends the connection after the answer. */
    ASSERT_EQ(fx_send(&f, "GET /version HTTP/1.1\r\nConnection: close\r\n\r\n"), -1);
    ASSERT(strstr(f.out, "Connection: close\r\n") != NULL);
    fx_close(&f);
}

TEST(conn_pipelining_waits_for_a_held_answer) {
    struct fixture f;
    fx_open(&f, 0);
    held = NULL;
    const char *two = "POST /v3/kv/put HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
                      "POST /v3/kv/range HTTP/1.1\r\nContent-Length: 14\r\n\r\n{\"key\":\"YWI=\"}";
    ASSERT_EQ(fx_send(&f, two), 0);
    ASSERT(held != NULL);
    ASSERT_STR_EQ(f.out, ""); /* nothing before the first answer */
    /* More pipelined input than the bound stops reading (paused). */
    char junk[API__H1_PIPELINE_BYTES];
    memset(junk, '\n', sizeof(junk));
    ASSERT_EQ(fx_feed(&f, junk, sizeof(junk)), 0);
    ASSERT(api__h1_paused(f.c));
    Etcdserverpb__PutResponse pr = ETCDSERVERPB__PUT_RESPONSE__INIT;
    ASSERT_EQ(api_reply(held, &pr.base), 0);
    api__conn_flush(f.c); /* what the loop's idle flush does */
    ASSERT_EQ(fx_send(&f, ""), 0);
    /* Both answers, in order: put's {} then range's count. */
    ASSERT_EQ(count(f.out, "HTTP/1.1 200 OK"), 2);
    ASSERT(strstr(f.out, "\r\n\r\n{}HTTP/1.1 200 OK") != NULL);
    ASSERT(strstr(f.out, "{\"count\":\"2\"}") != NULL);
    ASSERT(!api__h1_paused(f.c));
    fx_close(&f);
}

TEST(conn_pipelined_answers_in_order) {
    struct fixture f;
    fx_open(&f, 0);
    const char *req = "POST /v3/kv/range HTTP/1.1\r\nContent-Length: 14\r\n\r\n{\"key\":\"YWI=\"}";
    char three[512];
    snprintf(three, sizeof(three), "%s%s%s", req, req, req);
    ASSERT_EQ(fx_send(&f, three), 0);
    ASSERT_EQ(count(f.out, "HTTP/1.1 200 OK"), 3);
    fx_close(&f);
}

TEST(conn_slow_client_one_byte_at_a_time) {
    struct fixture f;
    fx_open(&f, 0);
    const char *req = "POST /v3/kv/range HTTP/1.1\r\nExpect: 100-continue\r\n"
                      "Content-Length: 14\r\n\r\n{\"key\":\"YWI=\"}";
    char all[4096] = "";
    for (size_t i = 0; i < strlen(req); i++) {
        ASSERT_EQ(fx_feed(&f, req + i, 1), 0);
        strncat(all, f.out, sizeof(all) - strlen(all) - 1);
    }
    ASSERT(strstr(all, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK") == all);
    ASSERT(strstr(all, "{\"count\":\"2\"}") != NULL);
    fx_close(&f);
}

TEST(conn_limits) {
    struct fixture f;
    /* A body larger than the request limit allows: 413 before it is read. */
    fx_open(&f, 1000);
    ASSERT_EQ(fx_send(&f, "POST /v3/kv/put HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n"), -1);
    ASSERT(strstr(f.out, "HTTP/1.1 413 ") == f.out);
    fx_close(&f);
    fx_open(&f, 1000);
    ASSERT_EQ(fx_send(&f, "POST /v3/kv/put HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "fffffff\r\n"),
              -1);
    ASSERT(strstr(f.out, "HTTP/1.1 413 ") == f.out);
    fx_close(&f);
    /* A head that never ends: 431. */
    fx_open(&f, 0);
    ASSERT_EQ(fx_send(&f, "GET / HTTP/1.1\r\n"), 0);
    char line[1024];
    memset(line, 'x', sizeof(line));
    int rc = 0;
    for (int i = 0; i < 80 && rc == 0; i++) rc = fx_feed(&f, line, sizeof(line));
    ASSERT_EQ(rc, -1);
    ASSERT(strstr(f.out, "HTTP/1.1 431 ") == f.out);
    fx_close(&f);
    /* Garbage: 400 and close. */
    fx_open(&f, 0);
    ASSERT_EQ(fx_send(&f, "\x01\x02\x03\r\n\r\n"), -1);
    ASSERT(strstr(f.out, "HTTP/1.1 400 ") == f.out);
    fx_close(&f);
}

TEST(conn_h2_preface_still_reaches_http2) {
    struct fixture f;
    fx_open(&f, 0);
    /* The preface, split, then an empty SETTINGS frame. */
    ASSERT_EQ(fx_send(&f, "PRI * HTTP/2.0\r\n"), 0);
    ASSERT_STR_EQ(f.out, "");
    ASSERT_EQ(fx_feed(&f, "\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0", 17), 0);
    ASSERT_EQ((uint8_t)f.out[3], 0x04); /* our SETTINGS */
    fx_close(&f);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
