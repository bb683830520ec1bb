/*
 * test_api_h2.c - the api/ server over real sockets, driven by a raw HTTP/2
 * client (h2client.h) against a scripted in-memory backend.
 *
 * Covers what etcdctl cannot provoke: every gRPC error the transport itself
 * produces (unknown method, NULL entry, malformed or compressed or oversize
 * messages, wrong content type, missing or extra messages), the named
 * limits (streams per connection, connections, receive size, stream queue),
 * HTTP/2 flow control toward a client that opens its window slowly,
 * cancellation and disconnection while the backend holds calls, and a
 * client that is not speaking HTTP/2 at all. The backend runs on the
 * server's loop thread; the test reads its counters through atomics or
 * srv_call().
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "tests/harness.h"
#include "tests/unit/api/h2client.h"
#include "tests/unit/api/server_thread.h"

#define WAIT_MS 10000
#define HELD_MAX 64

/* ---- scripted backend ------------------------------------------------------- */

struct fake {
    struct srv_thread *t;
    struct api_call *held[HELD_MAX]; /* member_list calls not answered yet */
    int n_held;
    size_t big_len; /* Range "big" returns a value this long */
    struct api_stream *snap;
    size_t snap_total, snap_sent;
    atomic_int watch_opened, watch_half_closed, watch_cancelled;
    atomic_int reply_ok, reply_closed;
    atomic_int queue_full, drained;
    atomic_int keepalive_requests;
};

static struct fake F;

static uint8_t pattern(size_t i) {
    return (uint8_t)((i * 7 + i / 251) % 251);
}

static void fk_range(void *ctx, struct api_call *call, const Etcdserverpb__RangeRequest *req) {
    struct fake *f = ctx;
    Etcdserverpb__RangeResponse resp = ETCDSERVERPB__RANGE_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    Mvccpb__KeyValue kv = MVCCPB__KEY_VALUE__INIT, *kvs[1] = {&kv};
    hdr.revision = 42;
    resp.header = &hdr;
    kv.key = req->key;
    uint8_t *big = NULL;
    if (req->key.len == 3 && memcmp(req->key.data, "big", 3) == 0) {
        big = malloc(f->big_len);
        for (size_t i = 0; i < f->big_len; i++) big[i] = pattern(i);
        kv.value.data = big;
        kv.value.len = f->big_len;
    } else {
        kv.value.data = (uint8_t *)"v";
        kv.value.len = 1;
    }
    resp.kvs = kvs;
    resp.n_kvs = 1;
    resp.count = 1;
    api_reply(call, &resp.base);
    free(big);
}

struct put_later {
    uv_timer_t timer;
    struct api_call *call;
};

static void put_closed(uv_handle_t *h) {
    free(h->data);
}

static void put_fire(uv_timer_t *timer) {
    struct put_later *p = timer->data;
    Etcdserverpb__PutResponse resp = ETCDSERVERPB__PUT_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    hdr.revision = 43;
    resp.header = &hdr;
    api_reply(p->call, &resp.base);
    uv_close((uv_handle_t *)&p->timer, put_closed);
}

/* Put answers from a timer, as the node answers after Raft. */
static void fk_put(void *ctx, struct api_call *call, const Etcdserverpb__PutRequest *req) {
    struct fake *f = ctx;
    (void)req;
    struct put_later *p = calloc(1, sizeof(*p));
    p->call = call;
    uv_timer_init(&f->t->loop, &p->timer);
    p->timer.data = p;
    uv_timer_start(&p->timer, put_fire, 1, 0);
}

static void fk_delete(void *ctx, struct api_call *call,
                      const Etcdserverpb__DeleteRangeRequest *req) {
    (void)ctx;
    (void)req;
    api_reply_error(call, API_GRPC_FAILED_PRECONDITION, "etcdserver: 100% sure\nnot here");
}

static void fk_member_list(void *ctx, struct api_call *call,
                           const Etcdserverpb__MemberListRequest *req) {
    struct fake *f = ctx;
    (void)req;
    if (f->n_held == HELD_MAX) {
        api_reply_error(call, API_GRPC_RESOURCE_EXHAUSTED, "test backend full");
        return;
    }
    f->held[f->n_held++] = call;
}

static void release_held(struct srv_thread *t, void *arg) {
    (void)t;
    struct fake *f = arg;
    for (int i = 0; i < f->n_held; i++) {
        Etcdserverpb__MemberListResponse resp = ETCDSERVERPB__MEMBER_LIST_RESPONSE__INIT;
        int rc = api_reply(f->held[i], &resp.base);
        if (rc == 0) atomic_fetch_add(&f->reply_ok, 1);
        if (rc == API_ECLOSED) atomic_fetch_add(&f->reply_closed, 1);
    }
    f->n_held = 0;
}

static void fk_watch_open(void *ctx, struct api_stream *s) {
    struct fake *f = ctx;
    (void)s;
    atomic_fetch_add(&f->watch_opened, 1);
}

static void fk_watch_request(void *ctx, struct api_stream *s,
                             const Etcdserverpb__WatchRequest *req) {
    (void)ctx;
    Etcdserverpb__WatchResponse resp = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    if (req->request_union_case == ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST) {
        resp.watch_id = req->create_request->watch_id ? req->create_request->watch_id : 7;
        resp.created = 1;
    } else if (req->request_union_case ==
               ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CANCEL_REQUEST) {
        resp.watch_id = req->cancel_request->watch_id;
        resp.canceled = 1;
    }
    api_stream_send(s, &resp.base);
}

static void fk_watch_end(void *ctx, struct api_stream *s, enum api_stream_event ev) {
    struct fake *f = ctx;
    if (ev == API_STREAM_HALF_CLOSED) {
        atomic_fetch_add(&f->watch_half_closed, 1);
        api_stream_close(s, API_GRPC_OK, NULL);
    } else {
        atomic_fetch_add(&f->watch_cancelled, 1);
        api_stream_close(s, API_GRPC_CANCELLED, NULL);
    }
}

static void fk_ka_open(void *ctx, struct api_stream *s) {
    (void)ctx;
    (void)s;
}

static void fk_ka_request(void *ctx, struct api_stream *s,
                          const Etcdserverpb__LeaseKeepAliveRequest *req) {
    struct fake *f = ctx;
    atomic_fetch_add(&f->keepalive_requests, 1);
    Etcdserverpb__LeaseKeepAliveResponse resp = ETCDSERVERPB__LEASE_KEEP_ALIVE_RESPONSE__INIT;
    resp.id = req->id;
    resp.ttl = req->id * 10;
    api_stream_send(s, &resp.base);
}

static void fk_ka_end(void *ctx, struct api_stream *s, enum api_stream_event ev) {
    (void)ctx;
    api_stream_close(s, ev == API_STREAM_HALF_CLOSED ? API_GRPC_OK : API_GRPC_CANCELLED, NULL);
}

#define SNAP_CHUNK (64u * 1024u)

static void snap_pump(struct fake *f) {
    static uint8_t chunk[SNAP_CHUNK];
    struct api_stream *s = f->snap;
    while (f->snap_sent < f->snap_total) {
        size_t n = f->snap_total - f->snap_sent;
        if (n > SNAP_CHUNK) n = SNAP_CHUNK;
        for (size_t i = 0; i < n; i++) chunk[i] = pattern(f->snap_sent + i);
        Etcdserverpb__SnapshotResponse resp = ETCDSERVERPB__SNAPSHOT_RESPONSE__INIT;
        resp.remaining_bytes = f->snap_total - f->snap_sent - n;
        resp.blob.data = chunk;
        resp.blob.len = n;
        int rc = api_stream_send(s, &resp.base);
        if (rc == API_EQUEUEFULL) {
            atomic_fetch_add(&f->queue_full, 1);
            return; /* resumed by fk_drained */
        }
        if (rc != 0) {
            f->snap = NULL;
            api_stream_close(s, API_GRPC_INTERNAL, "send failed");
            return;
        }
        f->snap_sent += n;
    }
    f->snap = NULL;
    api_stream_close(s, API_GRPC_OK, NULL);
}

static void fk_snapshot(void *ctx, struct api_stream *s, const Etcdserverpb__SnapshotRequest *req) {
    struct fake *f = ctx;
    (void)req;
    f->snap = s;
    f->snap_sent = 0;
    snap_pump(f);
}

static void fk_snapshot_end(void *ctx, struct api_stream *s, enum api_stream_event ev) {
    struct fake *f = ctx;
    (void)ev;
    if (f->snap == s) f->snap = NULL;
    api_stream_close(s, API_GRPC_CANCELLED, NULL);
}

static void fk_drained(void *ctx, struct api_stream *s) {
    struct fake *f = ctx;
    atomic_fetch_add(&f->drained, 1);
    if (f->snap == s) snap_pump(f);
}

static struct api_backend fake_backend(void) {
    struct api_backend be = {
        .ctx = &F,
        .range = fk_range,
        .put = fk_put,
        .delete_range = fk_delete,
        .member_list = fk_member_list,
        .watch_open = fk_watch_open,
        .watch_request = fk_watch_request,
        .watch_end = fk_watch_end,
        .lease_keep_alive_open = fk_ka_open,
        .lease_keep_alive_request = fk_ka_request,
        .lease_keep_alive_end = fk_ka_end,
        .snapshot = fk_snapshot,
        .snapshot_end = fk_snapshot_end,
        .stream_drained = fk_drained,
    };
    return be;
}

/* Starts a server with opts (listen URL filled in) and the fake backend. */
static int start(struct srv_thread *t, struct api_options o) {
    memset(&F, 0, sizeof(F));
    F.t = t;
    o.listen_client_urls = "http://127.0.0.1:0";
    struct api_backend be = fake_backend();
    return srv_start(t, &o, &be);
}

static uint8_t *range_req(const char *key, size_t *len) {
    Etcdserverpb__RangeRequest r = ETCDSERVERPB__RANGE_REQUEST__INIT;
    r.key.data = (uint8_t *)key;
    r.key.len = strlen(key);
    return grpc_frame_msg(&r.base, len);
}

static void get_held(struct srv_thread *t, void *arg) {
    (void)t;
    *(int *)arg = F.n_held;
}

/* Waits until the backend holds n member_list calls. */
static int wait_held(struct srv_thread *t, int n) {
    long long end = now_ms() + WAIT_MS;
    for (;;) {
        int held = 0;
        srv_call(t, get_held, &held);
        if (held == n) return 0;
        if (now_ms() > end) return -1;
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
}

/* Polls an atomic counter until it reaches want. */
static int wait_count(atomic_int *v, int want) {
    long long end = now_ms() + WAIT_MS;
    while (atomic_load(v) < want && now_ms() < end) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    return atomic_load(v) >= want ? 0 : -1;
}

/* One unary call on a fresh connection; fills st. */
static int unary(int port, struct h2c_stream *st, const char *path, const char *ct,
                 const uint8_t *body, size_t len, bool end) {
    struct h2c c;
    if (h2c_connect(&c, port, false, 0) != 0) return -1;
    h2c_open(&c, st, path, ct, body, len, end);
    int rc = h2c_wait_closed(&c, st, WAIT_MS);
    h2c_close(&c);
    return rc;
}

/* ---- tests ------------------------------------------------------------------ */

static void check_unary_roundtrip(int port) {
    size_t len;
    uint8_t *body = range_req("abc", &len);
    struct h2c_stream st;
    ASSERT_EQ(unary(port, &st, "/etcdserverpb.KV/Range", NULL, body, len, true), 0);
    free(body);
    ASSERT_EQ(st.http_status, 200);
    ASSERT_STR_EQ(st.content_type, "application/grpc");
    ASSERT_EQ(st.grpc_status, 0);
    ASSERT_EQ(st.close_code, NGHTTP2_NO_ERROR);
    size_t n;
    const uint8_t *m = grpc_nth_msg(st.data, st.len, 0, &n);
    ASSERT(m != NULL);
    ASSERT(grpc_nth_msg(st.data, st.len, 1, &n) == NULL || !"exactly one message");
    m = grpc_nth_msg(st.data, st.len, 0, &n);
    Etcdserverpb__RangeResponse *r = etcdserverpb__range_response__unpack(NULL, n, m);
    ASSERT(r != NULL);
    ASSERT_EQ(r->header->revision, 42);
    ASSERT_EQ(r->n_kvs, 1);
    ASSERT_EQ(r->kvs[0]->key.len, 3);
    ASSERT_MEM_EQ(r->kvs[0]->key.data, "abc", 3);
    etcdserverpb__range_response__free_unpacked(r, NULL);
    h2c_stream_free(&st);
}

TEST(unary_call_round_trip) {
    struct srv_thread t;
    ASSERT_EQ(start(&t, (struct api_options){0}), 0);
    check_unary_roundtrip(t.port);
    ASSERT_EQ(srv_stop(&t), 0);
}

static void check_async_and_errors(int port) {
    struct h2c_stream st;
    size_t len;
    /* Put is answered later, from a timer. */
    Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
    uint8_t *body = grpc_frame_msg(&put.base, &len);
    ASSERT_EQ(unary(port, &st, "/etcdserverpb.KV/Put", NULL, body, len, true), 0);
    free(body);
    ASSERT_EQ(st.grpc_status, 0);
    size_t n;
    const uint8_t *m = grpc_nth_msg(st.data, st.len, 0, &n);
    ASSERT(m != NULL);
    Etcdserverpb__PutResponse *pr = etcdserverpb__put_response__unpack(NULL, n, m);
    ASSERT(pr != NULL);
    ASSERT_EQ(pr->header->revision, 43);
    etcdserverpb__put_response__free_unpacked(pr, NULL);
    h2c_stream_free(&st);

    /* Backend error: status and percent-encoded message in trailers-only. */
    Etcdserverpb__DeleteRangeRequest del = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
    body = grpc_frame_msg(&del.base, &len);
    ASSERT_EQ(unary(port, &st, "/etcdserverpb.KV/DeleteRange", NULL, body, len, true), 0);
    free(body);
    ASSERT_EQ(st.http_status, 200);
    ASSERT_EQ(st.grpc_status, API_GRPC_FAILED_PRECONDITION);
    ASSERT_STR_EQ(st.grpc_message, "etcdserver: 100% sure\nnot here");
    ASSERT_EQ(st.len, 0);
    h2c_stream_free(&st);
}

TEST(async_reply_and_backend_error) {
    struct srv_thread t;
    ASSERT_EQ(start(&t, (struct api_options){0}), 0);
    check_async_and_errors(t.port);
    ASSERT_EQ(srv_stop(&t), 0);
}

static void check_unimplemented(int port) {
    struct h2c_stream st;
    ASSERT_EQ(unary(port, &st, "/grpc.health.v1.Health/Check", NULL, NULL, 0, true), 0);
    ASSERT_EQ(st.grpc_status, API_GRPC_UNIMPLEMENTED);
    ASSERT_STR_EQ(st.grpc_message, "unknown service grpc.health.v1.Health");
    h2c_stream_free(&st);
    ASSERT_EQ(unary(port, &st, "/etcdserverpb.Auth/AuthEnable", NULL, NULL, 0, true), 0);
    ASSERT_EQ(st.grpc_status, API_GRPC_UNIMPLEMENTED);
    ASSERT_STR_EQ(st.grpc_message, "unknown method AuthEnable for service etcdserverpb.Auth");
    h2c_stream_free(&st);
    /* Known method, NULL backend entry. */
    ASSERT_EQ(unary(port, &st, "/etcdserverpb.KV/Compact", NULL, NULL, 0, true), 0);
    ASSERT_EQ(st.grpc_status, API_GRPC_UNIMPLEMENTED);
    ASSERT_STR_EQ(st.grpc_message, "method etcdserverpb.KV/Compact is not implemented");
    h2c_stream_free(&st);
    ASSERT_EQ(unary(port, &st, "/etcdserverpb.Cluster/MemberAdd", NULL, NULL, 0, true), 0);
    ASSERT_EQ(st.grpc_status, API_GRPC_UNIMPLEMENTED);
    h2c_stream_free(&st);
}

TEST(unknown_and_unrouted_methods_are_unimplemented) {
    struct srv_thread t;
    ASSERT_EQ(start(&t, (struct api_options){0}), 0);
    check_unimplemented(t.port);
    ASSERT_EQ(srv_stop(&t), 0);
}

static void check_malformed(int port) {
    struct h2c_stream st;
    size_t len;
    uint8_t *good = range_req("k", &len);
    /* Wrong content type: HTTP 415. */
    ASSERT_EQ(unary(port, &st, "/etcdserverpb.KV/Range", "application/json", good, len, true), 0);
    ASSERT_EQ(st.http_status, 415);
    ASSERT_EQ(st.grpc_status, API_GRPC_INTERNAL);
    h2c_stream_free(&st);
    /* application/grpc+proto is gRPC. */
    ASSERT_EQ(unary(port, &st, "/etcdserverpb.KV/Range", "application/grpc+proto", good, len, true),
              0);
    ASSERT_EQ(st.grpc_status, 0);
    h2c_stream_free(&st);
    /* Bytes that are not a RangeRequest. */
    uint8_t junk[5 + 4] = {0, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff};
    ASSERT_EQ(unary(port, &st, "/etcdserverpb.KV/Range", NULL, junk, sizeof(junk), true), 0);
    ASSERT_EQ(st.grpc_status, API_GRPC_INTERNAL);
    ASSERT(strstr(st.grpc_message, "unmarshalling") != NULL);
    h2c_stream_free(&st);
    /* Compressed flag. */
    good[0] = 1;
    ASSERT_EQ(unary(port, &st, "/etcdserverpb.KV/Range", NULL, good, len, true), 0);
    ASSERT_EQ(st.grpc_status, API_GRPC_UNIMPLEMENTED);
    good[0] = 0;
    h2c_stream_free(&st);
    /* No message at all. */
    ASSERT_EQ(unary(port, &st, "/etcdserverpb.KV/Range", NULL, NULL, 0, true), 0);
    ASSERT_EQ(st.grpc_status, API_GRPC_INTERNAL);
    h2c_stream_free(&st);
    /* The stream ends inside a message. */
    ASSERT_EQ(unary(port, &st, "/etcdserverpb.KV/Range", NULL, good, len - 1, true), 0);
    ASSERT_EQ(st.grpc_status, API_GRPC_INTERNAL);
    ASSERT(strstr(st.grpc_message, "inside a message") != NULL);
    h2c_stream_free(&st);
    /* GET is not gRPC. */
    free(good);
}

TEST(malformed_requests_get_grpc_errors) {
    struct srv_thread t;
    ASSERT_EQ(start(&t, (struct api_options){0}), 0);
    check_malformed(t.port);
    /* The server still serves. */
    check_unary_roundtrip(t.port);
    ASSERT_EQ(srv_stop(&t), 0);
}

static void check_two_messages(struct srv_thread *t) {
    size_t len;
    Etcdserverpb__MemberListRequest req = ETCDSERVERPB__MEMBER_LIST_REQUEST__INIT;
    uint8_t *one = grpc_frame_msg(&req.base, &len);
    uint8_t two[16];
    memcpy(two, one, len);
    memcpy(two + len, one, len);
    struct h2c_stream st;
    ASSERT_EQ(unary(t->port, &st, "/etcdserverpb.Cluster/MemberList", NULL, two, 2 * len, true), 0);
    free(one);
    ASSERT_EQ(st.grpc_status, API_GRPC_INTERNAL);
    h2c_stream_free(&st);
    /* The backend still holds the first one; its answer goes nowhere. */
    srv_call(t, release_held, &F);
    ASSERT_EQ(atomic_load(&F.reply_closed), 1);
    ASSERT_EQ(atomic_load(&F.reply_ok), 0);
}

TEST(extra_message_on_unary_call_is_internal) {
    struct srv_thread t;
    ASSERT_EQ(start(&t, (struct api_options){0}), 0);
    check_two_messages(&t);
    ASSERT_EQ(srv_stop(&t), 0);
}

static void check_size_limit(int port, size_t limit) {
    Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
    size_t overhead;
    uint8_t *empty = grpc_frame_msg(&put.base, &overhead); /* 5 bytes */
    free(empty);
    /* A value whose encoding is exactly `limit`: key-less PutRequest with
     * field 2 (tag 1 byte, length varint 3 bytes for these sizes). */
    uint8_t *val = calloc(1, limit);
    put.value.data = val;
    put.value.len = limit - 4;
    size_t len;
    uint8_t *body = grpc_frame_msg(&put.base, &len);
    ASSERT_EQ(len, 5 + limit);
    struct h2c_stream st;
    ASSERT_EQ(unary(port, &st, "/etcdserverpb.KV/Put", NULL, body, len, true), 0);
    ASSERT_EQ(st.grpc_status, 0);
    h2c_stream_free(&st);
    free(body);
    put.value.len = limit - 3;
    body = grpc_frame_msg(&put.base, &len);
    ASSERT_EQ(len, 5 + limit + 1);
    ASSERT_EQ(unary(port, &st, "/etcdserverpb.KV/Put", NULL, body, len, true), 0);
    ASSERT_EQ(st.grpc_status, API_GRPC_RESOURCE_EXHAUSTED);
    ASSERT(strstr(st.grpc_message, "larger than max") != NULL);
    h2c_stream_free(&st);
    /* The prefix alone is enough to refuse: no body, no END_STREAM. */
    struct h2c c;
    ASSERT_EQ(h2c_connect(&c, port, false, 0), 0);
    h2c_open(&c, &st, "/etcdserverpb.KV/Put", NULL, body, 5, false);
    ASSERT_EQ(h2c_wait_closed(&c, &st, WAIT_MS), 0);
    ASSERT_EQ(st.grpc_status, API_GRPC_RESOURCE_EXHAUSTED);
    h2c_stream_free(&st);
    h2c_close(&c);
    free(body);
    free(val);
}

TEST(receive_limit_is_max_request_bytes_plus_overhead) {
    struct srv_thread t;
    struct api_options o = {.max_request_bytes = 1000};
    ASSERT_EQ(start(&t, o), 0);
    check_size_limit(t.port, 1000 + API_GRPC_OVERHEAD_BYTES);
    ASSERT_EQ(srv_stop(&t), 0);
}

static void check_stream_limit(struct srv_thread *t, int max) {
    struct h2c c;
    ASSERT_EQ(h2c_connect(&c, t->port, false, 0), 0);
    size_t len;
    Etcdserverpb__MemberListRequest req = ETCDSERVERPB__MEMBER_LIST_REQUEST__INIT;
    uint8_t *body = grpc_frame_msg(&req.base, &len);
    struct h2c_stream st[8];
    /* All in the first flight, before the server's SETTINGS is read. */
    for (int i = 0; i <= max; i++)
        h2c_open(&c, &st[i], "/etcdserverpb.Cluster/MemberList", NULL, body, len, true);
    free(body);
    ASSERT_EQ(h2c_wait_closed(&c, &st[max], WAIT_MS), 0);
    ASSERT_EQ(st[max].close_code, NGHTTP2_REFUSED_STREAM);
    ASSERT_EQ(wait_held(t, max), 0);
    for (int i = 0; i < max; i++) ASSERT(!st[i].closed);
    srv_call(t, release_held, &F);
    for (int i = 0; i < max; i++) {
        ASSERT_EQ(h2c_wait_closed(&c, &st[i], WAIT_MS), 0);
        ASSERT_EQ(st[i].grpc_status, 0);
    }
    ASSERT_EQ(atomic_load(&F.reply_ok), max);
    for (int i = 0; i <= max; i++) h2c_stream_free(&st[i]);
    h2c_close(&c);
}

TEST(streams_over_max_concurrent_streams_are_refused) {
    struct srv_thread t;
    struct api_options o = {.max_concurrent_streams = 4};
    ASSERT_EQ(start(&t, o), 0);
    check_stream_limit(&t, 4);
    ASSERT_EQ(srv_stop(&t), 0);
}

static void check_connection_limit(struct srv_thread *t) {
    struct h2c a, b, c;
    struct h2c_stream st;
    ASSERT_EQ(h2c_connect(&a, t->port, false, 0), 0);
    ASSERT_EQ(h2c_connect(&b, t->port, false, 0), 0);
    /* Both are served. */
    size_t len;
    uint8_t *body = range_req("x", &len);
    h2c_open(&a, &st, "/etcdserverpb.KV/Range", NULL, body, len, true);
    ASSERT_EQ(h2c_wait_closed(&a, &st, WAIT_MS), 0);
    ASSERT_EQ(st.grpc_status, 0);
    h2c_stream_free(&st);
    h2c_open(&b, &st, "/etcdserverpb.KV/Range", NULL, body, len, true);
    ASSERT_EQ(h2c_wait_closed(&b, &st, WAIT_MS), 0);
    h2c_stream_free(&st);
    ASSERT_EQ(srv_connections(t), 2);
    /* The third is accepted and closed at once. */
    ASSERT_EQ(h2c_connect(&c, t->port, false, 0), 0);
    h2c_open(&c, &st, "/etcdserverpb.KV/Range", NULL, body, len, true);
    long long end = now_ms() + WAIT_MS;
    while (!c.eof && now_ms() < end) h2c_pump(&c, 50);
    ASSERT(c.eof);
    ASSERT(!st.closed || st.grpc_status != 0);
    h2c_stream_free(&st);
    h2c_close(&c);
    /* Room again once one goes. */
    h2c_close(&a);
    end = now_ms() + WAIT_MS;
    while (srv_connections(t) != 1 && now_ms() < end) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    ASSERT_EQ(srv_connections(t), 1);
    ASSERT_EQ(h2c_connect(&c, t->port, false, 0), 0);
    h2c_open(&c, &st, "/etcdserverpb.KV/Range", NULL, body, len, true);
    ASSERT_EQ(h2c_wait_closed(&c, &st, WAIT_MS), 0);
    ASSERT_EQ(st.grpc_status, 0);
    h2c_stream_free(&st);
    h2c_close(&c);
    h2c_close(&b);
    free(body);
}

TEST(connections_over_max_connections_are_closed) {
    struct srv_thread t;
    struct api_options o = {.max_connections = 2};
    ASSERT_EQ(start(&t, o), 0);
    check_connection_limit(&t);
    ASSERT_EQ(srv_stop(&t), 0);
}

static uint8_t *watch_create(int64_t id, size_t *len) {
    Etcdserverpb__WatchRequest w = ETCDSERVERPB__WATCH_REQUEST__INIT;
    Etcdserverpb__WatchCreateRequest cr = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    cr.key.data = (uint8_t *)"k";
    cr.key.len = 1;
    cr.watch_id = id;
    w.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
    w.create_request = &cr;
    return grpc_frame_msg(&w.base, len);
}

static void check_watch(void) {
    struct srv_thread *t = F.t;
    struct h2c c;
    struct h2c_stream st;
    ASSERT_EQ(h2c_connect(&c, t->port, false, 0), 0);
    size_t len;
    uint8_t *body = watch_create(5, &len);
    h2c_open(&c, &st, "/etcdserverpb.Watch/Watch", NULL, body, len, false);
    free(body);
    /* The response to the create arrives while the stream stays open. */
    ASSERT_EQ(h2c_wait_data(&c, &st, 5, WAIT_MS), 0);
    size_t n;
    const uint8_t *m = NULL;
    long long end = now_ms() + WAIT_MS;
    while ((m = grpc_nth_msg(st.data, st.len, 0, &n)) == NULL && now_ms() < end) h2c_pump(&c, 50);
    ASSERT(m != NULL);
    Etcdserverpb__WatchResponse *wr = etcdserverpb__watch_response__unpack(NULL, n, m);
    ASSERT(wr != NULL);
    ASSERT_EQ(wr->watch_id, 5);
    ASSERT_EQ(wr->created, 1);
    etcdserverpb__watch_response__free_unpacked(wr, NULL);
    ASSERT(!st.closed);
    ASSERT_EQ(st.http_status, 200);
    /* A second request on the same stream. */
    body = watch_create(6, &len);
    h2c_send(&c, &st, body, len, false);
    free(body);
    end = now_ms() + WAIT_MS;
    while ((m = grpc_nth_msg(st.data, st.len, 1, &n)) == NULL && now_ms() < end) h2c_pump(&c, 50);
    ASSERT(m != NULL);
    /* Client cancels: the backend is told. */
    nghttp2_submit_rst_stream(c.s, NGHTTP2_FLAG_NONE, st.id, NGHTTP2_CANCEL);
    h2c_flush(&c);
    ASSERT_EQ(wait_count(&F.watch_cancelled, 1), 0);
    ASSERT_EQ(atomic_load(&F.watch_half_closed), 0);
    h2c_stream_free(&st);

    /* Half-close: the backend is told and ends the stream with OK. */
    body = watch_create(8, &len);
    h2c_open(&c, &st, "/etcdserverpb.Watch/Watch", NULL, body, len, false);
    free(body);
    ASSERT_EQ(h2c_wait_data(&c, &st, 5, WAIT_MS), 0);
    h2c_send(&c, &st, NULL, 0, true);
    ASSERT_EQ(h2c_wait_closed(&c, &st, WAIT_MS), 0);
    ASSERT_EQ(st.grpc_status, 0);
    ASSERT_EQ(atomic_load(&F.watch_half_closed), 1);
    ASSERT_EQ(atomic_load(&F.watch_cancelled), 1);
    h2c_stream_free(&st);

    /* Open, then drop the connection: the backend is told. */
    body = watch_create(9, &len);
    h2c_open(&c, &st, "/etcdserverpb.Watch/Watch", NULL, body, len, false);
    free(body);
    ASSERT_EQ(h2c_wait_data(&c, &st, 5, WAIT_MS), 0);
    h2c_stream_free(&st);
    h2c_close(&c);
    ASSERT_EQ(wait_count(&F.watch_cancelled, 2), 0);
    ASSERT_EQ(atomic_load(&F.watch_opened), 3);
}

TEST(watch_stream_requests_cancel_half_close_disconnect) {
    struct srv_thread t;
    ASSERT_EQ(start(&t, (struct api_options){0}), 0);
    check_watch();
    ASSERT_EQ(srv_stop(&t), 0);
}

static void check_keepalive(int port) {
    struct h2c c;
    struct h2c_stream st;
    ASSERT_EQ(h2c_connect(&c, port, false, 0), 0);
    h2c_open(&c, &st, "/etcdserverpb.Lease/LeaseKeepAlive", NULL, NULL, 0, false);
    for (int64_t id = 1; id <= 3; id++) {
        Etcdserverpb__LeaseKeepAliveRequest r = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
        r.id = id;
        size_t len;
        uint8_t *body = grpc_frame_msg(&r.base, &len);
        h2c_send(&c, &st, body, len, id == 3);
        free(body);
    }
    ASSERT_EQ(h2c_wait_closed(&c, &st, WAIT_MS), 0);
    ASSERT_EQ(st.grpc_status, 0);
    for (int i = 0; i < 3; i++) {
        size_t n;
        const uint8_t *m = grpc_nth_msg(st.data, st.len, i, &n);
        ASSERT(m != NULL);
        Etcdserverpb__LeaseKeepAliveResponse *r =
            etcdserverpb__lease_keep_alive_response__unpack(NULL, n, m);
        ASSERT(r != NULL);
        ASSERT_EQ(r->id, i + 1);
        ASSERT_EQ(r->ttl, (i + 1) * 10);
        etcdserverpb__lease_keep_alive_response__free_unpacked(r, NULL);
    }
    h2c_stream_free(&st);
    h2c_close(&c);
}

TEST(lease_keep_alive_bidirectional_stream) {
    struct srv_thread t;
    ASSERT_EQ(start(&t, (struct api_options){0}), 0);
    check_keepalive(t.port);
    ASSERT_EQ(atomic_load(&F.keepalive_requests), 3);
    ASSERT_EQ(srv_stop(&t), 0);
}

static void check_disconnect_pending(struct srv_thread *t) {
    struct h2c c;
    struct h2c_stream st[3];
    ASSERT_EQ(h2c_connect(&c, t->port, false, 0), 0);
    size_t len;
    Etcdserverpb__MemberListRequest req = ETCDSERVERPB__MEMBER_LIST_REQUEST__INIT;
    uint8_t *body = grpc_frame_msg(&req.base, &len);
    for (int i = 0; i < 3; i++)
        h2c_open(&c, &st[i], "/etcdserverpb.Cluster/MemberList", NULL, body, len, true);
    free(body);
    h2c_flush(&c);
    ASSERT_EQ(wait_held(t, 3), 0);
    /* One is cancelled by the client, then the connection drops. */
    nghttp2_submit_rst_stream(c.s, NGHTTP2_FLAG_NONE, st[0].id, NGHTTP2_CANCEL);
    h2c_flush(&c);
    for (int i = 0; i < 3; i++) h2c_stream_free(&st[i]);
    h2c_close(&c);
    long long end = now_ms() + WAIT_MS;
    while (srv_connections(t) != 0 && now_ms() < end) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    ASSERT_EQ(srv_connections(t), 0);
    /* The handles stay valid for the backend; answers are dropped. */
    srv_call(t, release_held, &F);
    ASSERT_EQ(atomic_load(&F.reply_closed), 3);
    ASSERT_EQ(atomic_load(&F.reply_ok), 0);
}

TEST(calls_held_by_backend_survive_disconnect) {
    struct srv_thread t;
    ASSERT_EQ(start(&t, (struct api_options){0}), 0);
    check_disconnect_pending(&t);
    ASSERT_EQ(srv_stop(&t), 0);
}

static void check_flow_control(struct srv_thread *t) {
    F.big_len = 3u << 20;
    struct h2c c;
    struct h2c_stream st;
    /* Manual windows: nothing is given back until the test says so. */
    ASSERT_EQ(h2c_connect(&c, t->port, true, 16384), 0);
    size_t len;
    uint8_t *body = range_req("big", &len);
    h2c_open(&c, &st, "/etcdserverpb.KV/Range", NULL, body, len, true);
    free(body);
    /* The server may send only what the windows allow: the stream window
     * (16 KiB) is the smaller one. */
    h2c_wait_data(&c, &st, 16384, WAIT_MS);
    for (int i = 0; i < 10; i++) h2c_pump(&c, 10);
    ASSERT_EQ(st.len, 16384);
    ASSERT(!st.closed);
    /* Open the window bit by bit; everything arrives, intact. */
    long long end = now_ms() + 4 * WAIT_MS;
    while (!st.closed && now_ms() < end) {
        if (st.consumed < st.len) h2c_consume(&c, &st, st.len - st.consumed);
        h2c_pump(&c, 20);
    }
    ASSERT(st.closed);
    ASSERT_EQ(st.grpc_status, 0);
    size_t n;
    const uint8_t *m = grpc_nth_msg(st.data, st.len, 0, &n);
    ASSERT(m != NULL);
    Etcdserverpb__RangeResponse *r = etcdserverpb__range_response__unpack(NULL, n, m);
    ASSERT(r != NULL);
    ASSERT_EQ(r->kvs[0]->value.len, F.big_len);
    int same = 1;
    for (size_t i = 0; i < F.big_len; i++) same &= r->kvs[0]->value.data[i] == pattern(i);
    etcdserverpb__range_response__free_unpacked(r, NULL);
    ASSERT(same);
    h2c_stream_free(&st);
    h2c_close(&c);
}

TEST(large_response_respects_client_flow_control) {
    struct srv_thread t;
    ASSERT_EQ(start(&t, (struct api_options){0}), 0);
    check_flow_control(&t);
    ASSERT_EQ(srv_stop(&t), 0);
}

static void check_snapshot(struct srv_thread *t) {
    F.snap_total = 8u << 20;
    struct h2c c;
    struct h2c_stream st;
    ASSERT_EQ(h2c_connect(&c, t->port, true, 65535), 0);
    Etcdserverpb__SnapshotRequest req = ETCDSERVERPB__SNAPSHOT_REQUEST__INIT;
    size_t len;
    uint8_t *body = grpc_frame_msg(&req.base, &len);
    h2c_open(&c, &st, "/etcdserverpb.Maintenance/Snapshot", NULL, body, len, true);
    free(body);
    /* A slow reader: the backend must hit the queue limit and resume. */
    ASSERT_EQ(h2c_flush(&c), 0);
    ASSERT_EQ(wait_count(&F.queue_full, 1), 0);
    long long end = now_ms() + 6 * WAIT_MS;
    while (!st.closed && now_ms() < end) {
        if (st.consumed < st.len) h2c_consume(&c, &st, st.len - st.consumed);
        h2c_pump(&c, 20);
    }
    ASSERT(st.closed);
    ASSERT_EQ(st.grpc_status, 0);
    ASSERT_GE(atomic_load(&F.drained), 1);
    /* Reassemble the blobs and compare with the pattern. */
    size_t off = 0, got = 0, n;
    int same = 1;
    for (int i = 0;; i++) {
        const uint8_t *m = grpc_nth_msg(st.data, st.len, i, &n);
        if (m == NULL) break;
        Etcdserverpb__SnapshotResponse *r = etcdserverpb__snapshot_response__unpack(NULL, n, m);
        ASSERT(r != NULL);
        for (size_t k = 0; k < r->blob.len; k++) same &= r->blob.data[k] == pattern(off + k);
        off += r->blob.len;
        got++;
        if (r->remaining_bytes != F.snap_total - off) same = 0;
        etcdserverpb__snapshot_response__free_unpacked(r, NULL);
    }
    ASSERT_EQ(off, F.snap_total);
    ASSERT_EQ(got, F.snap_total / SNAP_CHUNK);
    ASSERT(same);
    h2c_stream_free(&st);
    h2c_close(&c);
}

TEST(snapshot_stream_with_queue_limit_and_drain) {
    struct srv_thread t;
    struct api_options o = {.stream_queue_bytes_max = 256u * 1024u};
    ASSERT_EQ(start(&t, o), 0);
    check_snapshot(&t);
    ASSERT_EQ(srv_stop(&t), 0);
}

/* A client that does not speak HTTP/2 gets HTTP/1.1 (the same port serves
 * etcd's gateway): a 404 for an unknown path, then the close it asked for. */
static void check_http1_answered(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    const char *req = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    ASSERT_EQ(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
    long long end = now_ms() + WAIT_MS;
    int closed = 0;
    char got[512];
    size_t len = 0;
    while (!closed && now_ms() < end) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 100) <= 0) continue;
        ssize_t n = recv(fd, got + len, sizeof(got) - 1 - len, 0);
        if (n <= 0) closed = 1;
        if (n > 0) len += (size_t)n;
    }
    close(fd);
    got[len] = '\0';
    ASSERT(closed);
    ASSERT(strncmp(got, "HTTP/1.1 404 Not Found\r\n", 24) == 0);
}

TEST(http1_client_is_answered) {
    struct srv_thread t;
    ASSERT_EQ(start(&t, (struct api_options){0}), 0);
    check_http1_answered(t.port);
    check_unary_roundtrip(t.port);
    ASSERT_EQ(srv_stop(&t), 0);
}

static void check_close_with_open_stream(struct srv_thread *t, struct h2c *c,
                                         struct h2c_stream *st) {
    ASSERT_EQ(h2c_connect(c, t->port, false, 0), 0);
    size_t len;
    uint8_t *body = watch_create(1, &len);
    h2c_open(c, st, "/etcdserverpb.Watch/Watch", NULL, body, len, false);
    free(body);
    ASSERT_EQ(h2c_wait_data(c, st, 5, WAIT_MS), 0);
}

TEST(server_close_cancels_open_streams) {
    struct srv_thread t;
    ASSERT_EQ(start(&t, (struct api_options){0}), 0);
    struct h2c c;
    struct h2c_stream st;
    check_close_with_open_stream(&t, &c, &st);
    ASSERT_EQ(srv_stop(&t), 0);
    ASSERT_EQ(atomic_load(&F.watch_cancelled), 1);
    h2c_stream_free(&st);
    h2c_close(&c);
}

static void check_response_limit(int port) {
    F.big_len = 1000;
    size_t len;
    uint8_t *body = range_req("big", &len);
    struct h2c_stream st;
    ASSERT_EQ(unary(port, &st, "/etcdserverpb.KV/Range", NULL, body, len, true), 0);
    ASSERT_EQ(st.grpc_status, API_GRPC_RESOURCE_EXHAUSTED);
    ASSERT(strstr(st.grpc_message, "trying to send message larger than max") != NULL);
    ASSERT_EQ(st.len, 0);
    h2c_stream_free(&st);
    free(body);
    /* Small answers still pass. */
    body = range_req("small", &len);
    ASSERT_EQ(unary(port, &st, "/etcdserverpb.KV/Range", NULL, body, len, true), 0);
    ASSERT_EQ(st.grpc_status, 0);
    h2c_stream_free(&st);
    free(body);
}

TEST(response_over_max_response_bytes_is_resource_exhausted) {
    struct srv_thread t;
    struct api_options o = {.max_response_bytes = 500};
    ASSERT_EQ(start(&t, o), 0);
    check_response_limit(t.port);
    ASSERT_EQ(srv_stop(&t), 0);
}

TEST(listen_url_errors) {
    struct srv_thread t;
    struct api_backend be = fake_backend();
    static const char *const bad[] = {
        "127.0.0.1:2379", "ftp://127.0.0.1:1",    "http://127.0.0.1",    "http://127.0.0.1:99999",
        "http://[::1:0",  "http://example.com:0", "https://127.0.0.1:0", "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct api_options o = {.listen_client_urls = bad[i]};
        int rc = srv_start(&t, &o, &be);
        if (rc != API_EURL) {
            printf("  url \"%s\": %s\n", bad[i], api_strerror(rc));
            if (rc == 0) srv_stop(&t);
            ASSERT_EQ(rc, API_EURL);
        }
        ASSERT(strlen(t.errmsg) > 0);
    }
    /* Two listeners; the second port is reported too. */
    struct api_options o = {.listen_client_urls = "http://127.0.0.1:0,http://localhost:0"};
    ASSERT_EQ(srv_start(&t, &o, &be), 0);
    ASSERT_GT(t.port, 0);
    ASSERT_EQ(srv_stop(&t), 0);
    /* A TLS listener needs a certificate that exists. */
    o = (struct api_options){.listen_client_urls = "https://127.0.0.1:0",
                             .cert_file = "/nonexistent/cert.pem",
                             .key_file = "/nonexistent/key.pem"};
    ASSERT_EQ(srv_start(&t, &o, &be), API_ETLS);
    ASSERT(strstr(t.errmsg, "cert") != NULL);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
