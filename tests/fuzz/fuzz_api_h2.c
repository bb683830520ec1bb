/*
 * fuzz_api_h2.c - libFuzzer harness for a whole api/ connection: nghttp2
 * server session, request header checks, gRPC reader, dispatch to a
 * backend, replies, stream ends, teardown.
 *
 * The input is a script. An nghttp2 client session turns most steps into
 * well-formed HTTP/2 (requests on any routed or unknown path, with gRPC
 * bodies framed or not, resets, pings, window updates, settings), so the
 * fuzzer reaches deep states quickly; one step injects raw bytes instead,
 * so malformed framing is covered too. The server's output is fed back to
 * the client, which keeps flow control moving. The backend answers unary
 * calls at once except MemberList, whose calls it holds and answers only
 * after the connection is gone (the detached-call path); streams echo and
 * close when told the client left. Leaks are failures (LeakSanitizer).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include "api/api_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HELD_MAX 64
#define STEPS_MAX 96

static struct api_call *held[HELD_MAX];
static int n_held;

static void fz_range(void *ctx, struct api_call *call, const Etcdserverpb__RangeRequest *req) {
    (void)ctx;
    Etcdserverpb__RangeResponse resp = ETCDSERVERPB__RANGE_RESPONSE__INIT;
    Mvccpb__KeyValue kv = MVCCPB__KEY_VALUE__INIT, *kvs[1] = {&kv};
    kv.key = req->key;
    kv.value = req->range_end;
    resp.kvs = kvs;
    resp.n_kvs = 1;
    api_reply(call, &resp.base);
}

static void fz_put(void *ctx, struct api_call *call, const Etcdserverpb__PutRequest *req) {
    (void)ctx;
    api_reply_error(call, (enum api_grpc_code)(1 + (uint64_t)req->lease % 16),
                    req->value.len ? "etcdserver: %\xff\n odd message" : NULL);
}

static void fz_delete(void *ctx, struct api_call *call,
                      const Etcdserverpb__DeleteRangeRequest *req) {
    (void)ctx;
    (void)req;
    Etcdserverpb__DeleteRangeResponse resp = ETCDSERVERPB__DELETE_RANGE_RESPONSE__INIT;
    api_reply(call, &resp.base);
}

static void fz_txn(void *ctx, struct api_call *call, const Etcdserverpb__TxnRequest *req) {
    (void)ctx;
    Etcdserverpb__TxnResponse resp = ETCDSERVERPB__TXN_RESPONSE__INIT;
    resp.succeeded = req->n_compare % 2;
    api_reply(call, &resp.base);
}

static void fz_member_list(void *ctx, struct api_call *call,
                           const Etcdserverpb__MemberListRequest *req) {
    (void)ctx;
    (void)req;
    if (n_held == HELD_MAX) {
        api_reply_error(call, API_GRPC_RESOURCE_EXHAUSTED, "full");
        return;
    }
    held[n_held++] = call;
}

static void fz_watch_open(void *ctx, struct api_stream *s) {
    (void)ctx;
    (void)s;
}

static void fz_watch_request(void *ctx, struct api_stream *s,
                             const Etcdserverpb__WatchRequest *req) {
    (void)ctx;
    Etcdserverpb__WatchResponse resp = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    resp.created = req->request_union_case ==
                   ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
    if (req->request_union_case == ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CANCEL_REQUEST &&
        req->cancel_request->watch_id == 99) {
        api_stream_close(s, API_GRPC_OK, NULL);
        return;
    }
    api_stream_send(s, &resp.base);
}

static void fz_watch_end(void *ctx, struct api_stream *s, enum api_stream_event ev) {
    (void)ctx;
    if (ev == API_STREAM_HALF_CLOSED) {
        Etcdserverpb__WatchResponse resp = ETCDSERVERPB__WATCH_RESPONSE__INIT;
        api_stream_send(s, &resp.base);
        return; /* keeps the stream until cancelled, like etcd */
    }
    api_stream_close(s, API_GRPC_CANCELLED, "gone");
}

static void fz_ka_open(void *ctx, struct api_stream *s) {
    (void)ctx;
    (void)s;
}

static void fz_ka_request(void *ctx, struct api_stream *s,
                          const Etcdserverpb__LeaseKeepAliveRequest *req) {
    (void)ctx;
    Etcdserverpb__LeaseKeepAliveResponse resp = ETCDSERVERPB__LEASE_KEEP_ALIVE_RESPONSE__INIT;
    resp.id = req->id;
    api_stream_send(s, &resp.base);
}

static void fz_ka_end(void *ctx, struct api_stream *s, enum api_stream_event ev) {
    (void)ctx;
    api_stream_close(s, ev == API_STREAM_HALF_CLOSED ? API_GRPC_OK : API_GRPC_CANCELLED, NULL);
}

static void fz_snapshot(void *ctx, struct api_stream *s, const Etcdserverpb__SnapshotRequest *req) {
    (void)ctx;
    (void)req;
    static uint8_t blob[40000];
    for (int i = 0; i < 3; i++) {
        Etcdserverpb__SnapshotResponse resp = ETCDSERVERPB__SNAPSHOT_RESPONSE__INIT;
        resp.blob.data = blob;
        resp.blob.len = sizeof(blob);
        resp.remaining_bytes = (uint64_t)(2 - i) * sizeof(blob);
        if (api_stream_send(s, &resp.base) != 0) break;
    }
    api_stream_close(s, API_GRPC_OK, NULL);
}

static void fz_snapshot_end(void *ctx, struct api_stream *s, enum api_stream_event ev) {
    (void)ctx;
    (void)s;
    (void)ev;
    abort(); /* fz_snapshot always closes before returning */
}

static const struct api_backend backend = {
    .range = fz_range,
    .put = fz_put,
    .delete_range = fz_delete,
    .txn = fz_txn,
    .member_list = fz_member_list,
    .watch_open = fz_watch_open,
    .watch_request = fz_watch_request,
    .watch_end = fz_watch_end,
    .lease_keep_alive_open = fz_ka_open,
    .lease_keep_alive_request = fz_ka_request,
    .lease_keep_alive_end = fz_ka_end,
    .snapshot = fz_snapshot,
    .snapshot_end = fz_snapshot_end,
};

/* ---- script reader ---------------------------------------------------------- */

struct script {
    const uint8_t *p;
    size_t left;
};

static uint8_t next(struct script *s) {
    if (s->left == 0) return 0;
    s->left--;
    return *s->p++;
}

static const uint8_t *take(struct script *s, size_t *n) {
    if (*n > s->left) *n = s->left;
    const uint8_t *p = s->p;
    s->p += *n;
    s->left -= *n;
    return p;
}

/* Request bodies live until the client has sent them. */
struct body {
    uint8_t *p;
    size_t len, off;
};

static ssize_t body_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *user) {
    (void)s;
    (void)id;
    (void)user;
    struct body *b = src->ptr;
    size_t n = b->len - b->off;
    if (n > length) n = length;
    if (n) memcpy(buf, b->p + b->off, n);
    b->off += n;
    if (b->off == b->len) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

#define BODIES_MAX 32

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct script sc = {data, size};
    struct api_options o = {.max_request_bytes = 1 + (size % 4096),
                            .max_concurrent_streams = 1 + (size % 8),
                            .stream_queue_bytes_max = 64 * 1024};
    struct api_server *srv;
    if (api__server_new_detached(&o, &backend, &srv) != 0) return 0;
    struct api__conn *conn = api__conn_new_detached(srv);
    if (conn == NULL) {
        api__server_free_detached(srv);
        return 0;
    }
    nghttp2_session_callbacks *cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session *cl;
    nghttp2_session_client_new(&cl, cbs, NULL);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_submit_settings(cl, NGHTTP2_FLAG_NONE, NULL, 0);
    struct body bodies[BODIES_MAX];
    int n_bodies = 0;
    int32_t ids[BODIES_MAX];
    int n_ids = 0;
    bool alive = true;

    for (int step = 0; step < STEPS_MAX && sc.left > 0 && alive; step++) {
        uint8_t op = next(&sc);
        switch (op % 7) {
        case 0:
        case 1: { /* a request */
            uint8_t sel = next(&sc), flags = next(&sc);
            size_t n = next(&sc) | (size_t)(flags & 0x0f) << 8;
            const uint8_t *payload = take(&sc, &n);
            char path[64];
            unsigned mc = api__method_count();
            if (sel % (mc + 2) < mc)
                snprintf(path, sizeof(path), "%s", api__method_at(sel % (mc + 2))->path);
            else
                snprintf(path, sizeof(path), sel & 1 ? "/etcdserverpb.Auth/UserAdd" : "x");
            const char *ct = (flags & 0x10) ? "application/json" : "application/grpc";
            if (n_bodies == BODIES_MAX) break;
            struct body *b = &bodies[n_bodies++];
            b->off = 0;
            b->p = malloc(n + 5);
            if (flags & 0x20) { /* frame it as one gRPC message */
                api__grpc_prefix_write(b->p, (uint32_t)n);
                if (n) memcpy(b->p + 5, payload, n);
                b->len = n + 5;
            } else {
                if (n) memcpy(b->p, payload, n);
                b->len = n;
            }
            nghttp2_nv nva[] = {
                {(uint8_t *)":method", (uint8_t *)((flags & 0x40) ? "GET" : "POST"), 7,
                 (flags & 0x40) ? 3 : 4, 0},
                {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0},
                {(uint8_t *)":authority", (uint8_t *)"a", 10, 1, 0},
                {(uint8_t *)":path", (uint8_t *)path, 5, strlen(path), 0},
                {(uint8_t *)"content-type", (uint8_t *)ct, 12, strlen(ct), 0},
            };
            nghttp2_data_provider prov = {.source.ptr = b, .read_callback = body_read};
            int32_t id =
                nghttp2_submit_request(cl, NULL, nva, 5, (flags & 0x80) ? NULL : &prov, NULL);
            if (id > 0 && n_ids < BODIES_MAX) ids[n_ids++] = id;
            break;
        }
        case 2: /* reset a stream */
            if (n_ids > 0)
                nghttp2_submit_rst_stream(cl, NGHTTP2_FLAG_NONE, ids[next(&sc) % n_ids],
                                          next(&sc) % 14);
            break;
        case 3: { /* raw bytes straight to the server */
            size_t n = next(&sc);
            const uint8_t *p = take(&sc, &n);
            if (api__conn_feed(conn, p, n) != 0) alive = false;
            break;
        }
        case 4: { /* ping, window update or settings */
            uint8_t k = next(&sc);
            if (k % 3 == 0) nghttp2_submit_ping(cl, NGHTTP2_FLAG_NONE, NULL);
            if (k % 3 == 1)
                nghttp2_submit_window_update(cl, NGHTTP2_FLAG_NONE,
                                             n_ids ? ids[next(&sc) % n_ids] : 0,
                                             1 + next(&sc) * 1024);
            if (k % 3 == 2) {
                nghttp2_settings_entry iv[1] = {
                    {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (uint32_t)next(&sc) * 512}};
                nghttp2_submit_settings(cl, NGHTTP2_FLAG_NONE, iv, 1);
            }
            break;
        }
        default:
            break;
        }
        /* Exchange: client -> server in chunks, server -> client. */
        for (int round = 0; round < 4 && alive; round++) {
            const uint8_t *p;
            ssize_t n;
            size_t chunk = 1 + (op >> 3) * 97;
            while (alive && (n = nghttp2_session_mem_send(cl, &p)) > 0) {
                for (size_t off = 0; off < (size_t)n && alive; off += chunk) {
                    size_t m = (size_t)n - off < chunk ? (size_t)n - off : chunk;
                    if (api__conn_feed(conn, p + off, m) != 0) alive = false;
                }
            }
            const uint8_t *out;
            size_t on = api__conn_output(conn, &out);
            if (on > 0 && nghttp2_session_mem_recv(cl, out, on) < 0) break;
        }
    }

    api__conn_free_detached(conn);
    /* Held calls outlive their connection; answers are dropped. */
    for (int i = 0; i < n_held; i++) {
        Etcdserverpb__MemberListResponse resp = ETCDSERVERPB__MEMBER_LIST_RESPONSE__INIT;
        if (api_reply(held[i], &resp.base) != API_ECLOSED) abort();
    }
    n_held = 0;
    api__server_free_detached(srv);
    nghttp2_session_del(cl);
    for (int i = 0; i < n_bodies; i++) free(bodies[i].p);
    return 0;
}
