/*
 * test_api_oom.c - out of memory everywhere in api/ (raft/alloc.h): the
 * HTTP/1.1 gateway (JSON decode and encode), gRPC over HTTP/2 (nghttp2's
 * own allocations included), protobuf unpacking and framing.
 *
 * Each scenario runs on a detached server and connection (no socket, no
 * loop): HTTP/1.1 requests are fed as bytes; HTTP/2 requests come from an
 * nghttp2 client session in memory (libc allocations, not counted). It
 * first runs without failure, counting the allocations of api/ (T), then T
 * more times failing allocation n in run n. Nothing may crash or leak
 * (LeakSanitizer), and a failure may only show as a failure: each answer
 * is the failure-free run's, or an error (HTTP 5xx, gRPC INTERNAL or
 * RESOURCE_EXHAUSTED, a stream or connection closed) - never another
 * successful answer.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include "api/api_int.h"
#include "raft/alloc.h"
#include "tests/harness.h"

/* ---- backend: answers at once ---- */

static void be_range(void *ctx, struct api_call *call, const Etcdserverpb__RangeRequest *req) {
    (void)ctx;
    Etcdserverpb__RangeResponse resp = ETCDSERVERPB__RANGE_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    Mvccpb__KeyValue kv = MVCCPB__KEY_VALUE__INIT, *kvs[1] = {&kv};
    h.revision = 42;
    h.cluster_id = 7;
    resp.header = &h;
    kv.key = req->key;
    kv.value.data = (uint8_t *)"the-value";
    kv.value.len = 9;
    kv.mod_revision = 3;
    resp.kvs = kvs;
    resp.n_kvs = 1;
    resp.count = 1;
    api_reply(call, &resp.base);
}

static void be_put(void *ctx, struct api_call *call, const Etcdserverpb__PutRequest *req) {
    (void)ctx;
    if (req->lease != 0) {
        api_reply_error(call, API_GRPC_NOT_FOUND, "etcdserver: requested lease not found");
        return;
    }
    Etcdserverpb__PutResponse resp = ETCDSERVERPB__PUT_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    h.revision = 43;
    resp.header = &h;
    api_reply(call, &resp.base);
}

static void be_txn(void *ctx, struct api_call *call, const Etcdserverpb__TxnRequest *req) {
    (void)ctx;
    Etcdserverpb__TxnResponse resp = ETCDSERVERPB__TXN_RESPONSE__INIT;
    resp.succeeded = req->n_compare > 0;
    api_reply(call, &resp.base);
}

/* The watch stream's send failed (the scenarios open one at a time): the
 * backend then ends it with INTERNAL, as a node must not end a stream that
 * lost a response with OK. */
static bool watch_send_failed;

static void be_watch_open(void *ctx, struct api_stream *s) {
    (void)ctx;
    (void)s;
    watch_send_failed = false;
}

static void be_watch_request(void *ctx, struct api_stream *s,
                             const Etcdserverpb__WatchRequest *req) {
    (void)ctx;
    Etcdserverpb__WatchResponse resp = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    resp.created = req->request_union_case ==
                   ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
    resp.watch_id = 5;
    if (api_stream_send(s, &resp.base) != 0) watch_send_failed = true;
}

static void be_watch_end(void *ctx, struct api_stream *s, enum api_stream_event ev) {
    (void)ctx;
    if (ev == API_STREAM_HALF_CLOSED && watch_send_failed)
        api_stream_close(s, API_GRPC_INTERNAL, "out of memory");
    else
        api_stream_close(s, ev == API_STREAM_HALF_CLOSED ? API_GRPC_OK : API_GRPC_CANCELLED, NULL);
}

static void be_health(void *ctx, struct api_call *call) {
    (void)ctx;
    api_reply_health(call, true);
}

static const struct api_backend backend = {
    .range = be_range,
    .put = be_put,
    .txn = be_txn,
    .watch_open = be_watch_open,
    .watch_request = be_watch_request,
    .watch_end = be_watch_end,
    .health = be_health,
};

/* ---- HTTP/1.1 ---- */

#define OUT_MAX (1u << 16)

static const char *h1_requests[] = {
    "GET /version HTTP/1.1\r\nHost: a\r\n\r\n",
    "POST /v3/kv/range HTTP/1.1\r\nContent-Length: 19\r\n\r\n{\"key\":\"Zm9vYmFy\"}\n",
    "POST /v3/kv/put HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    "1d\r\n{\"key\":\"YQ==\",\"value\":\"Yg==\"}\r\n0\r\n\r\n",
    "POST /v3/kv/put HTTP/1.1\r\nContent-Length: 41\r\n\r\n"
    "{\"key\":\"YQ==\",\"value\":\"Yg==\",\"lease\":\"9\"}",
    "POST /v3/kv/txn HTTP/1.1\r\nContent-Length: 78\r\n\r\n"
    "{\"compare\":[{\"key\":\"YQ==\",\"target\":\"VALUE\",\"value\":\"Yg==\"}],\"success\":[]}    "
    " ",
    "GET /health HTTP/1.1\r\n\r\n",
    "GET /metrics HTTP/1.1\r\n\r\n",
};
#define H1_N (sizeof h1_requests / sizeof h1_requests[0])

struct h1_out {
    char text[H1_N][OUT_MAX];
    bool closed[H1_N];
};

/* Feeds each request on one keep-alive connection; records each answer. */
static void h1_scenario(struct h1_out *out) {
    memset(out, 0, sizeof *out);
    struct api_options o = {.max_request_bytes = 0};
    struct api_server *s = NULL;
    while (api__server_new_detached(&o, &backend, &s) != 0)
        ;
    struct api__conn *c;
    while ((c = api__conn_new_detached(s)) == NULL)
        ;
    bool closed = false;
    for (size_t i = 0; i < H1_N; i++) {
        if (closed) {
            out->closed[i] = true;
            continue;
        }
        int rc = api__conn_feed(c, (const uint8_t *)h1_requests[i], strlen(h1_requests[i]));
        const uint8_t *p;
        size_t len = api__conn_output(c, &p);
        if (len >= OUT_MAX) len = OUT_MAX - 1;
        if (len > 0) memcpy(out->text[i], p, len);
        out->text[i][len] = '\0';
        if (rc != 0) closed = true;
    }
    api__conn_free_detached(c);
    api__server_free_detached(s);
}

/* The metrics text counts calls, which a failed call changes: compare only
 * its status line. */
static bool h1_same(size_t i, const char *a, const char *b) {
    if (strcmp(h1_requests[i], "GET /metrics HTTP/1.1\r\n\r\n") == 0) return strncmp(a, b, 13) == 0;
    return strcmp(a, b) == 0;
}

static struct h1_out h1_ref, h1_run;

TEST(api_http1_every_allocation_fails_once) {
    qfs_alloc_fail_at(0);
    h1_scenario(&h1_ref);
    long total = qfs_alloc_count();
    qfs_alloc_fail_off();
    for (size_t i = 0; i < H1_N; i++) {
        if (h1_ref.closed[i])
            fprintf(stderr, "  request %zu: closed after %s\n", i, h1_ref.text[i - 1]);
        ASSERT(!h1_ref.closed[i]);
        ASSERT(strncmp(h1_ref.text[i], "HTTP/1.1 ", 9) == 0);
    }
    ASSERT(strstr(h1_ref.text[1], "dGhlLXZhbHVl") != NULL); /* "the-value" */
    ASSERT_GT(total, 20);
    unsigned errors = 0;
    for (long n = 1; n <= total; n++) {
        qfs_alloc_fail_at(n);
        h1_scenario(&h1_run);
        long failed = qfs_alloc_failed();
        qfs_alloc_fail_off();
        ASSERT_EQ(failed, 1);
        for (size_t i = 0; i < H1_N; i++) {
            const char *got = h1_run.text[i];
            if (h1_run.closed[i] || h1_same(i, got, h1_ref.text[i])) continue;
            errors++;
            /* Anything else must be a server error, or the connection
             * closing (an empty or partial answer). */
            /* RESOURCE_EXHAUSTED "out of memory" (429) is a truthful
             * failure of a gateway call, as it is over gRPC. */
            bool server_error =
                strncmp(got, "HTTP/1.1 5", 10) == 0 ||
                (strncmp(got, "HTTP/1.1 429", 12) == 0 && strstr(got, "out of memory") != NULL);
            bool cut = got[0] == '\0';
            if (!server_error && !cut) {
                fprintf(stderr, "  allocation %ld of %ld, request %zu:\n%s\n  want:\n%s\n", n,
                        total, i, got, h1_ref.text[i]);
                ASSERT(server_error || cut);
            }
        }
    }
    printf("  %ld allocations, %u answers turned into errors\n", total, errors);
}

/*
 * The four wrong answers the loop above found, each checked on its own
 * over every allocation of one request: out of memory buffering input was a
 * 413 (the request can never be served), /version a 200 with an empty body,
 * a lost response head left its body as the next bytes on the connection,
 * and an unpack out of memory was the client's "cannot parse" 400.
 */
TEST(api_http1_out_of_memory_answers_tell_the_truth) {
    static const char *reqs[] = {
        "GET /version HTTP/1.1\r\n\r\n",
        "POST /v3/kv/range HTTP/1.1\r\nContent-Length: 19\r\n\r\n{\"key\":\"Zm9vYmFy\"}\n",
    };
    for (size_t r = 0; r < 2; r++) {
        for (long n = 1;; n++) {
            struct api_options o = {.max_request_bytes = 0};
            struct api_server *s = NULL;
            ASSERT_EQ(api__server_new_detached(&o, &backend, &s), 0);
            struct api__conn *c = api__conn_new_detached(s);
            ASSERT(c != NULL);
            qfs_alloc_fail_at(n);
            api__conn_feed(c, (const uint8_t *)reqs[r], strlen(reqs[r]));
            long failed = qfs_alloc_failed();
            qfs_alloc_fail_off();
            const uint8_t *p;
            size_t len = api__conn_output(c, &p);
            char out[4096] = "";
            if (len > 0) memcpy(out, p, len < sizeof out - 1 ? len : sizeof out - 1);
            api__conn_free_detached(c);
            api__server_free_detached(s);
            if (failed == 0) break;
            ASSERT(out[0] == '\0' || strncmp(out, "HTTP/1.1 ", 9) == 0); /* no headless body */
            ASSERT(strstr(out, " 413 ") == NULL);
            ASSERT(strstr(out, "cannot parse") == NULL);
            ASSERT(strstr(out, " 400 ") == NULL);
            ASSERT(strstr(out, "Content-Length: 0\r\n") == NULL);
        }
    }
}

/* ---- HTTP/2 ---- */

#define H2_STREAMS 4

struct h2_stream {
    int32_t id;
    int grpc_status; /* -1 until seen */
    uint8_t data[4096];
    size_t len;
    bool closed;
};

struct h2_out {
    struct h2_stream st[H2_STREAMS];
    bool conn_closed;
};

static struct h2_stream *h2_find(struct h2_out *o, int32_t id) {
    for (int i = 0; i < H2_STREAMS; i++)
        if (o->st[i].id == id) return &o->st[i];
    return NULL;
}

static int cl_on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *user) {
    (void)s;
    (void)flags;
    struct h2_stream *st = h2_find(user, f->hd.stream_id);
    if (st != NULL && namelen == 11 && memcmp(name, "grpc-status", 11) == 0) {
        char buf[8] = {0};
        memcpy(buf, value, valuelen < 7 ? valuelen : 7);
        st->grpc_status = atoi(buf);
    }
    return 0;
}

static int cl_on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                      size_t len, void *user) {
    (void)s;
    (void)flags;
    struct h2_stream *st = h2_find(user, id);
    if (st != NULL && st->len + len <= sizeof st->data) {
        memcpy(st->data + st->len, data, len);
        st->len += len;
    }
    return 0;
}

static int cl_on_close(nghttp2_session *s, int32_t id, uint32_t code, void *user) {
    (void)s;
    (void)code;
    struct h2_stream *st = h2_find(user, id);
    if (st != NULL) st->closed = true;
    return 0;
}

struct body {
    const uint8_t *p;
    size_t len, off;
};

static ssize_t cl_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                       nghttp2_data_source *src, void *user) {
    (void)s;
    (void)id;
    (void)user;
    struct body *b = src->ptr;
    size_t n = b->len - b->off < length ? b->len - b->off : length;
    memcpy(buf, b->p + b->off, n);
    b->off += n;
    if (b->off == b->len) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static uint8_t *frame(const ProtobufCMessage *m, size_t *len) {
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *p = malloc(n + 5);
    if (p == NULL) abort();
    p[0] = 0;
    p[1] = (uint8_t)(n >> 24);
    p[2] = (uint8_t)(n >> 16);
    p[3] = (uint8_t)(n >> 8);
    p[4] = (uint8_t)n;
    protobuf_c_message_pack(m, p + 5);
    *len = n + 5;
    return p;
}

/* Moves bytes both ways until neither side has more to say. */
static void h2_pump(nghttp2_session *cl, struct api__conn *c, struct h2_out *o) {
    for (int round = 0; round < 64; round++) {
        bool moved = false;
        const uint8_t *p;
        ssize_t n;
        while ((n = nghttp2_session_mem_send(cl, &p)) > 0) {
            moved = true;
            if (!o->conn_closed && api__conn_feed(c, p, (size_t)n) != 0) o->conn_closed = true;
        }
        size_t len = api__conn_output(c, &p);
        if (len > 0) {
            moved = true;
            if (nghttp2_session_mem_recv(cl, p, len) < 0) o->conn_closed = true;
        }
        if (!moved) return;
    }
}

static void h2_scenario(struct h2_out *o) {
    memset(o, 0, sizeof *o);
    for (int i = 0; i < H2_STREAMS; i++) o->st[i].grpc_status = -1;
    struct api_options opts = {.max_request_bytes = 0};
    struct api_server *s = NULL;
    while (api__server_new_detached(&opts, &backend, &s) != 0)
        ;
    struct api__conn *c;
    while ((c = api__conn_new_detached(s)) == NULL)
        ;
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0) abort();
    nghttp2_session_callbacks_set_on_header_callback(cbs, cl_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, cl_on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, cl_on_close);
    nghttp2_session *cl;
    if (nghttp2_session_client_new(&cl, cbs, o) != 0) abort();
    nghttp2_session_callbacks_del(cbs);
    nghttp2_submit_settings(cl, NGHTTP2_FLAG_NONE, NULL, 0);
    /* The client preface first: the server picks HTTP/2 from it. */
    h2_pump(cl, c, o);

    Etcdserverpb__RangeRequest range = ETCDSERVERPB__RANGE_REQUEST__INIT;
    range.key.data = (uint8_t *)"foo";
    range.key.len = 3;
    Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
    put.key.data = (uint8_t *)"k";
    put.key.len = 1;
    put.lease = 9;
    Etcdserverpb__Compare cmp = ETCDSERVERPB__COMPARE__INIT, *cmps[1] = {&cmp};
    cmp.key.data = (uint8_t *)"k";
    cmp.key.len = 1;
    Etcdserverpb__RequestOp rop = ETCDSERVERPB__REQUEST_OP__INIT, *rops[1] = {&rop};
    rop.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE;
    rop.request_range = &range;
    Etcdserverpb__TxnRequest txn = ETCDSERVERPB__TXN_REQUEST__INIT;
    txn.compare = cmps;
    txn.n_compare = 1;
    txn.success = rops;
    txn.n_success = 1;
    Etcdserverpb__WatchCreateRequest wc = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    wc.key.data = (uint8_t *)"w";
    wc.key.len = 1;
    Etcdserverpb__WatchRequest watch = ETCDSERVERPB__WATCH_REQUEST__INIT;
    watch.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
    watch.create_request = &wc;

    const char *paths[H2_STREAMS] = {"/etcdserverpb.KV/Range", "/etcdserverpb.KV/Put",
                                     "/etcdserverpb.KV/Txn", "/etcdserverpb.Watch/Watch"};
    const ProtobufCMessage *msgs[H2_STREAMS] = {&range.base, &put.base, &txn.base, &watch.base};
    struct body bodies[H2_STREAMS];
    for (int i = 0; i < H2_STREAMS; i++) {
        size_t len;
        uint8_t *p = frame(msgs[i], &len);
        bodies[i] = (struct body){p, len, 0};
        nghttp2_nv nva[] = {
            {(uint8_t *)":method", (uint8_t *)"POST", 7, 4, 0},
            {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0},
            {(uint8_t *)":path", (uint8_t *)paths[i], 5, strlen(paths[i]), 0},
            {(uint8_t *)":authority", (uint8_t *)"localhost", 10, 9, 0},
            {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, 0},
            {(uint8_t *)"te", (uint8_t *)"trailers", 2, 8, 0},
        };
        nghttp2_data_provider dp = {.source.ptr = &bodies[i], .read_callback = cl_read};
        o->st[i].id = nghttp2_submit_request(cl, NULL, nva, sizeof nva / sizeof nva[0], &dp, NULL);
        h2_pump(cl, c, o);
    }
    nghttp2_session_del(cl);
    for (int i = 0; i < H2_STREAMS; i++) free((void *)bodies[i].p);
    api__conn_free_detached(c);
    api__server_free_detached(s);
}

static struct h2_out h2_ref, h2_run;

TEST(api_h2_every_allocation_fails_once) {
    qfs_alloc_fail_at(0);
    h2_scenario(&h2_ref);
    long total = qfs_alloc_count();
    qfs_alloc_fail_off();
    ASSERT(!h2_ref.conn_closed);
    ASSERT_EQ(h2_ref.st[0].grpc_status, 0);
    ASSERT_EQ(h2_ref.st[1].grpc_status, API_GRPC_NOT_FOUND);
    ASSERT_EQ(h2_ref.st[2].grpc_status, 0);
    ASSERT_GT(h2_ref.st[0].len, 5);
    ASSERT_GT(h2_ref.st[3].len, 5); /* the watch's created response */
    ASSERT_GT(total, 20);
    unsigned errors = 0;
    for (long n = 1; n <= total; n++) {
        qfs_alloc_fail_at(n);
        h2_scenario(&h2_run);
        long failed = qfs_alloc_failed();
        qfs_alloc_fail_off();
        ASSERT_EQ(failed, 1);
        for (int i = 0; i < H2_STREAMS; i++) {
            const struct h2_stream *g = &h2_run.st[i], *w = &h2_ref.st[i];
            if (g->grpc_status == w->grpc_status && g->len == w->len &&
                memcmp(g->data, w->data, g->len) == 0)
                continue;
            errors++;
            /* Otherwise: an error status without a different answer, or
             * no status (stream reset, connection closed). */
            bool error_status = g->grpc_status == API_GRPC_INTERNAL ||
                                g->grpc_status == API_GRPC_RESOURCE_EXHAUSTED ||
                                g->grpc_status == API_GRPC_UNAVAILABLE || g->grpc_status == -1;
            bool prefix = g->len <= w->len && memcmp(g->data, w->data, g->len) == 0;
            if (!error_status || !prefix) {
                fprintf(stderr,
                        "  allocation %ld of %ld, stream %d: status %d (want %d), %zu bytes (want "
                        "%zu)\n",
                        n, total, i, g->grpc_status, w->grpc_status, g->len, w->len);
                ASSERT(error_status);
                ASSERT(prefix);
            }
        }
    }
    printf("  %ld allocations, %u answers turned into errors\n", total, errors);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
