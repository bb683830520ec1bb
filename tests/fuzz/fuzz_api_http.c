/*
 * fuzz_api_http.c - libFuzzer harness for HTTP/1.1 on the client port: the
 * pure request-head parser and chunked-body decoder on the raw input, then
 * the same input fed to a detached connection in pieces whose sizes come
 * from the input's first byte (so heads, bodies and pipelined requests are
 * split at every place), with a backend that answers Range at once, holds
 * Put until the next piece, and answers /health. Routing, the JSON gateway,
 * keep-alive, 100-continue, limits and teardown with a held call are all
 * reached. Leaks are failures (LeakSanitizer).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct api_call *held;

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
    (void)req;
    if (held != NULL) api_reply_error(held, API_GRPC_UNAVAILABLE, "etcdserver: busy");
    held = call;
}

static void fz_health(void *ctx, struct api_call *call) {
    (void)ctx;
    api_reply_health(call, true);
}

static void fz_metrics(void *ctx, struct api_text *out) {
    (void)ctx;
    api_text_printf(out, "# TYPE x gauge\nx 1\n");
}

static const struct api_backend backend = {
    .range = fz_range,
    .put = fz_put,
    .health = fz_health,
    .metrics = fz_metrics,
};

static void release_held(void) {
    if (held == NULL) return;
    Etcdserverpb__PutResponse resp = ETCDSERVERPB__PUT_RESPONSE__INIT;
    struct api_call *c = held;
    held = NULL;
    api_reply(c, &resp.base);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* The parser and the dechunker alone, on the whole input. */
    struct api__h1_req r;
    size_t scanned = 0;
    memset(&r, 0, sizeof(r));
    int head = api__h1_parse_head(data, size, &scanned, &r);
    if (head > 0) {
        struct api__h1_chunked ck = {0};
        struct api__buf body;
        api__buf_init(&body, 1u << 16);
        size_t used = 0;
        api__h1_chunked_feed(&ck, data + head, size - (size_t)head, &used, &body);
        api__buf_free(&body);
    }
    if (size == 0) return 0;

    struct api_options o = {.max_request_bytes = 4096};
    struct api_server *s;
    if (api__server_new_detached(&o, &backend, &s) != 0) return 0;
    struct api__conn *c = api__conn_new_detached(s);
    if (c == NULL) {
        api__server_free_detached(s);
        return 0;
    }
    size_t piece = (size_t)data[0] % 64 + 1;
    size_t off = 1;
    while (off < size) {
        size_t n = size - off < piece ? size - off : piece;
        if (api__conn_feed(c, data + off, n) != 0) break;
        off += n;
        const uint8_t *out;
        api__conn_output(c, &out);
        if (data[off - 1] & 1) {
            release_held();
            api__conn_flush(c);
        }
    }
    api__conn_free_detached(c);
    release_held(); /* after the connection went: a detached call */
    api__server_free_detached(s);
    return 0;
}
