/*
 * test_client.c - client/ against a real etcd 3.4 (/usr/bin/etcd).
 *
 * One shared plaintext etcd serves the KV, watch, lease, stream-end and
 * failover tests; the fault, TLS and auth tests start their own, because
 * they kill, stop or reconfigure it. Faults are real: a closed port, a
 * SIGSTOPped etcd (a host that stops answering without closing anything,
 * as behind an iptables DROP rule, found by the keepalive PINGs) and a
 * SIGKILLed one (the kernel resets the connection). Certificates come from
 * the openssl CLI, users from etcdctl. Every wait has a deadline; etcd
 * processes are killed by PID and their directories removed at exit, even
 * when a test fails (etcd_fixture.h).
 */
#include "tests/unit/client/etcd_fixture.h"

#include "tests/harness.h"

static uv_loop_t loop;
static struct etcd shared;
static bool shared_up;

static void loop_start(void) {
    uv_loop_init(&loop);
}

/* Closes the loop; fails (returns false) if a handle was left open. */
static bool loop_finish(void) {
    uv_run(&loop, UV_RUN_NOWAIT);
    return uv_loop_close(&loop) == 0;
}

static int shared_etcd(void) {
    if (shared_up) return 0;
    static const char *const extra[] = {"--experimental-watch-progress-notify-interval=300ms",
                                        NULL};
    if (etcd_start(&shared, false, extra) != 0) return -1;
    struct client_options o;
    client_options_init(&o);
    if (etcd_wait_ready(&loop, &shared, &o) != 0) return -1;
    shared_up = true;
    return 0;
}

static struct client *new_client(const char *const *eps, size_t n, struct client_options *o,
                                 struct fix_log *log) {
    o->endpoints = eps;
    o->n_endpoints = n;
    if (log != NULL) {
        o->log_cb = fix_log_cb;
        o->log_arg = log;
    }
    struct client *c = NULL;
    char err[256];
    int rc = client_new(&loop, o, &c, err, sizeof(err));
    if (rc != 0) fprintf(stderr, "  client_new: %s (%s)\n", client_strerror(rc), err);
    return c;
}

/* ---- streams ---------------------------------------------------------------------- */

#define SRES_MSGS_MAX 64

struct sres {
    struct client_stream *s;
    ProtobufCMessage *msgs[SRES_MSGS_MAX]; /* owned copies */
    int n;
    bool ended;
    int code;
    char msg[1100];
    bool close_in_msg_cb; /* client_stream_close from the first msg_cb */
};

static void s_msg_cb(void *arg, const ProtobufCMessage *m) {
    struct sres *r = arg;
    if (r->n < SRES_MSGS_MAX) r->msgs[r->n++] = fix_msg_copy(m);
    if (r->close_in_msg_cb && r->s != NULL) {
        client_stream_close(r->s);
        r->s = NULL;
    }
}

static void s_end_cb(void *arg, const struct client_status *st) {
    struct sres *r = arg;
    r->ended = true;
    r->code = st->code;
    snprintf(r->msg, sizeof(r->msg), "%s", st->message);
    r->s = NULL;
}

static const struct client_stream_cbs S_CBS = {s_msg_cb, s_end_cb};

static void sres_free(struct sres *r) {
    for (int i = 0; i < r->n; i++) protobuf_c_message_free_unpacked(r->msgs[i], NULL);
    r->n = 0;
}

static const Etcdserverpb__WatchResponse *wmsg(const struct sres *r, int i) {
    return (const Etcdserverpb__WatchResponse *)r->msgs[i];
}

static int watch_create(struct client_stream *s, const char *key, const char *end,
                        int64_t start_rev, bool prev_kv, bool progress) {
    Etcdserverpb__WatchCreateRequest cr = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    cr.key = fix_bin(key);
    cr.range_end = fix_bin(end);
    cr.start_revision = start_rev;
    cr.prev_kv = prev_kv;
    cr.progress_notify = progress;
    Etcdserverpb__WatchRequest wr = ETCDSERVERPB__WATCH_REQUEST__INIT;
    wr.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
    wr.create_request = &cr;
    return client_stream_send(s, &wr.base);
}

/* Index of the first message after `from` matching pred, or -1. */
static int find_msg(const struct sres *r, int from,
                    bool (*pred)(const Etcdserverpb__WatchResponse *)) {
    for (int i = from; i < r->n; i++)
        if (pred(wmsg(r, i))) return i;
    return -1;
}

static bool is_progress(const Etcdserverpb__WatchResponse *w) {
    return !w->created && !w->canceled && w->n_events == 0;
}
static bool is_compacted(const Etcdserverpb__WatchResponse *w) {
    return w->canceled && w->compact_revision > 0;
}

static int count_events(const struct sres *r) {
    int n = 0;
    for (int i = 0; i < r->n; i++) n += (int)wmsg(r, i)->n_events;
    return n;
}

/* The i-th event over all messages. */
static const Mvccpb__Event *nth_event(const struct sres *r, int k) {
    for (int i = 0; i < r->n; i++) {
        const Etcdserverpb__WatchResponse *w = wmsg(r, i);
        if (k < (int)w->n_events) return w->events[k];
        k -= (int)w->n_events;
    }
    return NULL;
}

static bool has_cancel(const struct sres *r, int from, int64_t watch_id) {
    for (int i = from; i < r->n; i++)
        if (wmsg(r, i)->canceled && wmsg(r, i)->watch_id == watch_id) return true;
    return false;
}

static int count_done(const struct ures *a, int n) {
    int k = 0;
    for (int i = 0; i < n; i++) k += a[i].done;
    return k;
}

static bool bin_eq(ProtobufCBinaryData b, const char *s) {
    return b.len == strlen(s) && memcmp(b.data, s, b.len) == 0;
}

/* ---- KV ---------------------------------------------------------------------------- */

TEST(kv_put_range_txn_delete) {
    loop_start();
    ASSERT_EQ(shared_etcd(), 0);
    struct client_options o;
    client_options_init(&o);
    const char *eps[] = {shared.url};
    struct client *c = new_client(eps, 1, &o, NULL);
    ASSERT(c != NULL);

    struct ures r;
    int64_t last_rev = 0;
    for (int i = 1; i <= 5; i++) {
        char key[16], val[16];
        snprintf(key, sizeof(key), "k/%d", i);
        snprintf(val, sizeof(val), "v%d", i);
        ASSERT_EQ(fix_put(&loop, c, key, val, &r), 0);
        ASSERT(r.done);
        ASSERT_EQ(r.code, 0);
        const Etcdserverpb__PutResponse *pr = (const Etcdserverpb__PutResponse *)r.resp;
        ASSERT(pr->header != NULL);
        ASSERT_GT(pr->header->revision, last_rev);
        last_rev = pr->header->revision;
        ures_free(&r);
    }
    ASSERT(client_connected(c));
    ASSERT_STR_EQ(client_endpoint(c), shared.url);

    /* Range with limit 2, paginated: 2 + 2 + 1 keys, in order. */
    char next[16] = "k/";
    size_t next_len = 2;
    int seen = 0, pages = 0;
    for (;;) {
        Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
        rq.key = (ProtobufCBinaryData){next_len, (uint8_t *)next};
        rq.range_end = fix_bin("k0");
        rq.limit = 2;
        ASSERT_EQ(fix_call(&loop, c, "/etcdserverpb.KV/Range", &rq.base,
                           &etcdserverpb__range_response__descriptor, &r, 5000),
                  0);
        ASSERT(r.done);
        ASSERT_EQ(r.code, 0);
        const Etcdserverpb__RangeResponse *rr = (const Etcdserverpb__RangeResponse *)r.resp;
        ASSERT_EQ(rr->count, 5 - seen);
        ASSERT_LE(rr->n_kvs, 2);
        for (size_t i = 0; i < rr->n_kvs; i++) {
            char want[16];
            snprintf(want, sizeof(want), "k/%d", seen + 1);
            ASSERT(bin_eq(rr->kvs[i]->key, want));
            seen++;
        }
        pages++;
        bool more = rr->more;
        if (more) {
            /* Next page: just after the last key. */
            const Mvccpb__KeyValue *lastkv = rr->kvs[rr->n_kvs - 1];
            ASSERT_LT(lastkv->key.len + 1, sizeof(next));
            memcpy(next, lastkv->key.data, lastkv->key.len);
            next[lastkv->key.len] = '\0';
            next_len = lastkv->key.len + 1;
        }
        ures_free(&r);
        if (!more) break;
        ASSERT_LT(pages, 10);
    }
    ASSERT_EQ(seen, 5);
    ASSERT_EQ(pages, 3);

    /* Txn: create t/new only if it does not exist (create_revision == 0). */
    for (int round = 0; round < 2; round++) {
        Etcdserverpb__Compare cmp = ETCDSERVERPB__COMPARE__INIT;
        cmp.result = ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL;
        cmp.target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE;
        cmp.key = fix_bin("t/new");
        cmp.target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION;
        cmp.create_revision = 0;
        Etcdserverpb__Compare *cmps[] = {&cmp};
        Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
        put.key = fix_bin("t/new");
        put.value = fix_bin("first");
        Etcdserverpb__RequestOp op_put = ETCDSERVERPB__REQUEST_OP__INIT;
        op_put.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
        op_put.request_put = &put;
        Etcdserverpb__RangeRequest get = ETCDSERVERPB__RANGE_REQUEST__INIT;
        get.key = fix_bin("t/new");
        Etcdserverpb__RequestOp op_get = ETCDSERVERPB__REQUEST_OP__INIT;
        op_get.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE;
        op_get.request_range = &get;
        Etcdserverpb__RequestOp *succ[] = {&op_put}, *fail[] = {&op_get};
        Etcdserverpb__TxnRequest txn = ETCDSERVERPB__TXN_REQUEST__INIT;
        txn.n_compare = 1;
        txn.compare = cmps;
        txn.n_success = 1;
        txn.success = succ;
        txn.n_failure = 1;
        txn.failure = fail;
        ASSERT_EQ(fix_call(&loop, c, "/etcdserverpb.KV/Txn", &txn.base,
                           &etcdserverpb__txn_response__descriptor, &r, 5000),
                  0);
        ASSERT(r.done);
        ASSERT_EQ(r.code, 0);
        const Etcdserverpb__TxnResponse *tr = (const Etcdserverpb__TxnResponse *)r.resp;
        ASSERT_EQ(tr->succeeded, round == 0);
        ASSERT_EQ(tr->n_responses, 1);
        if (round == 1) {
            const Etcdserverpb__ResponseOp *op = tr->responses[0];
            ASSERT_EQ(op->response_case, ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE);
            ASSERT_EQ(op->response_range->n_kvs, 1);
            ASSERT(bin_eq(op->response_range->kvs[0]->value, "first"));
        }
        ures_free(&r);
    }

    /* DeleteRange with prev_kv returns what it deleted. */
    Etcdserverpb__DeleteRangeRequest del = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
    del.key = fix_bin("k/");
    del.range_end = fix_bin("k0");
    del.prev_kv = true;
    ASSERT_EQ(fix_call(&loop, c, "/etcdserverpb.KV/DeleteRange", &del.base,
                       &etcdserverpb__delete_range_response__descriptor, &r, 5000),
              0);
    ASSERT(r.done);
    ASSERT_EQ(r.code, 0);
    const Etcdserverpb__DeleteRangeResponse *dr = (const Etcdserverpb__DeleteRangeResponse *)r.resp;
    ASSERT_EQ(dr->deleted, 5);
    ASSERT_EQ(dr->n_prev_kvs, 5);
    ASSERT(bin_eq(dr->prev_kvs[2]->key, "k/3"));
    ASSERT(bin_eq(dr->prev_kvs[2]->value, "v3"));
    ures_free(&r);

    /* Values of 1 MiB: a 2 MiB answer crosses the 1 MiB stream window, so
     * it arrives only if window is given back as it is consumed. */
    size_t big_len = 1024 * 1024;
    char *big = malloc(big_len + 1);
    ASSERT(big != NULL);
    for (size_t i = 0; i < big_len; i++) big[i] = (char)('a' + i % 26);
    big[big_len] = '\0';
    for (int i = 0; i < 2; i++) {
        ASSERT_EQ(fix_put(&loop, c, i ? "big/2" : "big/1", big, &r), 0);
        ASSERT(r.done);
        ASSERT_EQ(r.code, 0);
        ures_free(&r);
    }
    Etcdserverpb__RangeRequest bq = ETCDSERVERPB__RANGE_REQUEST__INIT;
    bq.key = fix_bin("big/");
    bq.range_end = fix_bin("big0");
    ASSERT_EQ(fix_call(&loop, c, "/etcdserverpb.KV/Range", &bq.base,
                       &etcdserverpb__range_response__descriptor, &r, 10000),
              0);
    ASSERT(r.done);
    ASSERT_EQ(r.code, 0);
    const Etcdserverpb__RangeResponse *br = (const Etcdserverpb__RangeResponse *)r.resp;
    ASSERT_EQ(br->n_kvs, 2);
    ASSERT_EQ(br->kvs[1]->value.len, big_len);
    ASSERT_MEM_EQ(br->kvs[1]->value.data, big, big_len);
    ures_free(&r);
    free(big);

    /* Many calls at once share the connection. */
    struct ures many[200];
    memset(many, 0, sizeof(many));
    for (int i = 0; i < 200; i++) {
        Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
        char key[16];
        snprintf(key, sizeof(key), "m/%03d", i);
        put.key = fix_bin(key);
        put.value = fix_bin("x");
        ASSERT_EQ(client_unary(c, "/etcdserverpb.KV/Put", &put.base,
                               &etcdserverpb__put_response__descriptor, ures_cb, &many[i]),
                  0);
    }
    RUN_UNTIL(&loop, count_done(many, 200) == 200, 10000);
    ASSERT_EQ(count_done(many, 200), 200);
    for (int i = 0; i < 200; i++) {
        ASSERT_EQ(many[i].code, 0);
        ures_free(&many[i]);
    }

    ASSERT(fix_client_close(&loop, c));
    ASSERT(loop_finish());
}

/* ---- watch --------------------------------------------------------------------------- */

TEST(watch_events_progress_compaction_cancel) {
    loop_start();
    ASSERT_EQ(shared_etcd(), 0);
    struct client_options o;
    client_options_init(&o);
    const char *eps[] = {shared.url};
    struct client *c = new_client(eps, 1, &o, NULL);
    ASSERT(c != NULL);

    struct sres w = {0};
    ASSERT_EQ(client_stream_open(c, "/etcdserverpb.Watch/Watch",
                                 &etcdserverpb__watch_response__descriptor, &S_CBS, &w, &w.s),
              0);
    ASSERT_EQ(watch_create(w.s, "w/", "w0", 0, true, true), 0);
    RUN_UNTIL(&loop, w.n >= 1 || w.ended, 5000);
    ASSERT_GE(w.n, 1);
    ASSERT(wmsg(&w, 0)->created);
    int64_t watch_id = wmsg(&w, 0)->watch_id;

    struct ures r;
    ASSERT_EQ(fix_put(&loop, c, "w/a", "1", &r), 0);
    ASSERT_EQ(r.code, 0);
    ures_free(&r);
    ASSERT_EQ(fix_put(&loop, c, "w/a", "2", &r), 0);
    ASSERT_EQ(r.code, 0);
    int64_t rev = ((const Etcdserverpb__PutResponse *)r.resp)->header->revision;
    ures_free(&r);
    RUN_UNTIL(&loop, count_events(&w) >= 2, 5000);
    ASSERT_EQ(count_events(&w), 2);
    const Mvccpb__Event *e1 = nth_event(&w, 0), *e2 = nth_event(&w, 1);
    ASSERT_EQ(e1->type, MVCCPB__EVENT__EVENT_TYPE__PUT);
    ASSERT(bin_eq(e1->kv->key, "w/a"));
    ASSERT(bin_eq(e1->kv->value, "1"));
    ASSERT(e1->prev_kv == NULL);
    ASSERT(bin_eq(e2->kv->value, "2"));
    ASSERT(e2->prev_kv != NULL);
    ASSERT(bin_eq(e2->prev_kv->value, "1"));
    ASSERT_EQ(e2->kv->mod_revision, rev);

    /* progress_notify: etcd runs with a 300 ms interval. */
    RUN_UNTIL(&loop, find_msg(&w, 1, is_progress) >= 0, 5000);
    ASSERT_GE(find_msg(&w, 1, is_progress), 0);

    /* Compact, then a watch from revision 1 is canceled with compact_revision. */
    Etcdserverpb__CompactionRequest cq = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
    cq.revision = rev;
    ASSERT_EQ(fix_call(&loop, c, "/etcdserverpb.KV/Compact", &cq.base,
                       &etcdserverpb__compaction_response__descriptor, &r, 5000),
              0);
    ASSERT(r.done);
    ASSERT_EQ(r.code, 0);
    ures_free(&r);
    int from = w.n;
    ASSERT_EQ(watch_create(w.s, "w/", "w0", 1, false, false), 0);
    RUN_UNTIL(&loop, find_msg(&w, from, is_compacted) >= 0 || w.ended, 5000);
    int k = find_msg(&w, from, is_compacted);
    ASSERT_GE(k, 0);
    ASSERT_EQ(wmsg(&w, k)->compact_revision, rev);
    ASSERT(!w.ended);

    /* A Range at the compacted revision: etcd's error text, OUT_OF_RANGE. */
    Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
    rq.key = fix_bin("w/a");
    rq.revision = 1;
    ASSERT_EQ(fix_call(&loop, c, "/etcdserverpb.KV/Range", &rq.base,
                       &etcdserverpb__range_response__descriptor, &r, 5000),
              0);
    ASSERT(r.done);
    ASSERT_EQ(r.code, CLIENT_GRPC_OUT_OF_RANGE);
    ASSERT_STR_EQ(r.msg, "etcdserver: mvcc: required revision has been compacted");
    ASSERT(!r.maybe_applied);
    ures_free(&r);

    /* Cancel the first watch: the server answers canceled; the stream stays. */
    from = w.n;
    Etcdserverpb__WatchCancelRequest cancel = ETCDSERVERPB__WATCH_CANCEL_REQUEST__INIT;
    cancel.watch_id = watch_id;
    Etcdserverpb__WatchRequest wr = ETCDSERVERPB__WATCH_REQUEST__INIT;
    wr.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CANCEL_REQUEST;
    wr.cancel_request = &cancel;
    ASSERT_EQ(client_stream_send(w.s, &wr.base), 0);
    RUN_UNTIL(&loop, has_cancel(&w, from, watch_id), 5000);
    ASSERT(has_cancel(&w, from, watch_id));
    ASSERT(!w.ended);

    client_stream_close(w.s);
    w.s = NULL;
    fix_run_for(&loop, 30);
    ASSERT(!w.ended); /* no callback after client_stream_close */
    sres_free(&w);
    ASSERT(fix_client_close(&loop, c));
    ASSERT(loop_finish());
}

/* ---- lease -------------------------------------------------------------------------------- */

TEST(lease_grant_keepalive) {
    loop_start();
    ASSERT_EQ(shared_etcd(), 0);
    struct client_options o;
    client_options_init(&o);
    const char *eps[] = {shared.url};
    struct client *c = new_client(eps, 1, &o, NULL);
    ASSERT(c != NULL);

    struct ures r;
    Etcdserverpb__LeaseGrantRequest g = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
    g.ttl = 10;
    ASSERT_EQ(fix_call(&loop, c, "/etcdserverpb.Lease/LeaseGrant", &g.base,
                       &etcdserverpb__lease_grant_response__descriptor, &r, 5000),
              0);
    ASSERT(r.done);
    ASSERT_EQ(r.code, 0);
    int64_t id = ((const Etcdserverpb__LeaseGrantResponse *)r.resp)->id;
    ASSERT_NE(id, 0);
    ASSERT_EQ(((const Etcdserverpb__LeaseGrantResponse *)r.resp)->ttl, 10);
    ures_free(&r);

    struct sres k = {0};
    ASSERT_EQ(client_stream_open(c, "/etcdserverpb.Lease/LeaseKeepAlive",
                                 &etcdserverpb__lease_keep_alive_response__descriptor, &S_CBS, &k,
                                 &k.s),
              0);
    Etcdserverpb__LeaseKeepAliveRequest ka = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
    ka.id = id;
    for (int i = 1; i <= 3; i++) {
        ASSERT_EQ(client_stream_send(k.s, &ka.base), 0);
        RUN_UNTIL(&loop, k.n >= i || k.ended, 5000);
        ASSERT_EQ(k.n, i);
        const Etcdserverpb__LeaseKeepAliveResponse *kr =
            (const Etcdserverpb__LeaseKeepAliveResponse *)k.msgs[i - 1];
        ASSERT_EQ(kr->id, id);
        ASSERT_EQ(kr->ttl, 10);
    }
    /* A key attached to the lease. */
    Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
    put.key = fix_bin("lease/key");
    put.value = fix_bin("v");
    put.lease = id;
    ASSERT_EQ(fix_call(&loop, c, "/etcdserverpb.KV/Put", &put.base,
                       &etcdserverpb__put_response__descriptor, &r, 5000),
              0);
    ASSERT_EQ(r.code, 0);
    ures_free(&r);
    client_stream_close(k.s);
    sres_free(&k);
    ASSERT(fix_client_close(&loop, c));
    ASSERT(loop_finish());
}

/* ---- streams the server ends ------------------------------------------------------------- */

TEST(server_ends_streams) {
    loop_start();
    ASSERT_EQ(shared_etcd(), 0);
    struct client_options o;
    client_options_init(&o);
    const char *eps[] = {shared.url};
    struct client *c = new_client(eps, 1, &o, NULL);
    ASSERT(c != NULL);

    /* A unary method opened as a stream: one answer, then the server ends
     * it (trailers while our side is still open). */
    struct sres a = {0};
    ASSERT_EQ(client_stream_open(c, "/etcdserverpb.KV/Range",
                                 &etcdserverpb__range_response__descriptor, &S_CBS, &a, &a.s),
              0);
    Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
    rq.key = fix_bin("nothing");
    ASSERT_EQ(client_stream_send(a.s, &rq.base), 0);
    RUN_UNTIL(&loop, a.ended, 5000);
    ASSERT(a.ended);
    ASSERT_EQ(a.code, 0);
    ASSERT_EQ(a.n, 1);
    sres_free(&a);

    /* An unknown method: UNIMPLEMENTED, as a stream and as a unary call. */
    struct sres b = {0};
    ASSERT_EQ(client_stream_open(c, "/etcdserverpb.KV/NoSuchMethod",
                                 &etcdserverpb__range_response__descriptor, &S_CBS, &b, &b.s),
              0);
    RUN_UNTIL(&loop, b.ended, 5000);
    ASSERT(b.ended);
    ASSERT_EQ(b.code, CLIENT_GRPC_UNIMPLEMENTED);
    struct ures r;
    ASSERT_EQ(fix_call(&loop, c, "/etcdserverpb.KV/NoSuchMethod", &rq.base,
                       &etcdserverpb__range_response__descriptor, &r, 5000),
              0);
    ASSERT(r.done);
    ASSERT_EQ(r.code, CLIENT_GRPC_UNIMPLEMENTED);
    ASSERT(!r.maybe_applied);
    ures_free(&r);

    /* client_stream_close from inside msg_cb, with more events coming. */
    struct sres d = {0};
    d.close_in_msg_cb = true;
    ASSERT_EQ(client_stream_open(c, "/etcdserverpb.Watch/Watch",
                                 &etcdserverpb__watch_response__descriptor, &S_CBS, &d, &d.s),
              0);
    ASSERT_EQ(watch_create(d.s, "x/", "x0", 0, false, false), 0);
    RUN_UNTIL(&loop, d.n >= 1, 5000);
    ASSERT_EQ(d.n, 1);
    ASSERT(d.s == NULL);
    ASSERT_EQ(fix_put(&loop, c, "x/1", "1", &r), 0);
    ASSERT_EQ(r.code, 0);
    ures_free(&r);
    fix_run_for(&loop, 30);
    ASSERT_EQ(d.n, 1);
    ASSERT(!d.ended);
    sres_free(&d);

    /* A stream ended by client_close: end_cb CANCELLED. */
    struct sres e = {0};
    ASSERT_EQ(client_stream_open(c, "/etcdserverpb.Watch/Watch",
                                 &etcdserverpb__watch_response__descriptor, &S_CBS, &e, &e.s),
              0);
    ASSERT_EQ(watch_create(e.s, "y/", "y0", 0, false, false), 0);
    RUN_UNTIL(&loop, e.n >= 1, 5000);
    ASSERT_EQ(e.n, 1);
    ASSERT(fix_client_close(&loop, c));
    ASSERT(e.ended);
    ASSERT_EQ(e.code, CLIENT_GRPC_CANCELLED);
    sres_free(&e);
    ASSERT(loop_finish());
}

/* ---- failover and faults ----------------------------------------------------------------- */

TEST(failover_first_endpoint_closed) {
    loop_start();
    ASSERT_EQ(shared_etcd(), 0);
    int closed_port;
    ASSERT_EQ(fix_free_ports(&closed_port, NULL), 0);
    char closed[64];
    snprintf(closed, sizeof(closed), "http://127.0.0.1:%d", closed_port);
    const char *eps[] = {closed, shared.url};
    struct client_options o;
    client_options_init(&o);
    static struct fix_log log;
    memset(&log, 0, sizeof(log));
    struct client *c = new_client(eps, 2, &o, &log);
    ASSERT(c != NULL);
    struct ures r;
    ASSERT_EQ(fix_put(&loop, c, "failover", "ok", &r), 0);
    ASSERT(r.done);
    ASSERT_EQ(r.code, 0);
    ures_free(&r);
    ASSERT_STR_EQ(client_endpoint(c), shared.url);
    char want[256];
    snprintf(want, sizeof(want), "endpoint %s: connection refused; trying %s", closed, shared.url);
    ASSERT(fix_log_has(&log, want));
    ASSERT(fix_client_close(&loop, c));
    ASSERT(loop_finish());
}

TEST(close_with_pending_calls) {
    loop_start();
    int closed_port;
    ASSERT_EQ(fix_free_ports(&closed_port, NULL), 0);
    char closed[64];
    snprintf(closed, sizeof(closed), "127.0.0.1:%d", closed_port);
    const char *eps[] = {closed};
    struct client_options o;
    client_options_init(&o);
    struct client *c = new_client(eps, 1, &o, NULL);
    ASSERT(c != NULL);
    Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
    struct ures r = {0};
    ASSERT_EQ(client_unary(c, "/etcdserverpb.KV/Range", &rq.base,
                           &etcdserverpb__range_response__descriptor, ures_cb, &r),
              0);
    struct sres s = {0};
    ASSERT_EQ(client_stream_open(c, "/etcdserverpb.Watch/Watch",
                                 &etcdserverpb__watch_response__descriptor, &S_CBS, &s, &s.s),
              0);
    ASSERT_EQ(watch_create(s.s, "a", "", 0, false, false), 0);
    /* The stream's send queue is bounded. */
    size_t key_len = 512 * 1024;
    char *key = calloc(1, key_len + 1);
    ASSERT(key != NULL);
    memset(key, 'k', key_len);
    int sent = 0, rc;
    while ((rc = watch_create(s.s, key, "", 0, false, false)) == 0 && sent < 100) sent++;
    free(key);
    ASSERT_EQ(rc, CLIENT_EQUEUEFULL);
    ASSERT_EQ(sent, CLIENT_STREAM_QUEUE_BYTES_MAX / key_len);
    fix_run_for(&loop, 20);
    ASSERT(!r.done);
    ASSERT(fix_client_close(&loop, c));
    ASSERT(r.done);
    ASSERT_EQ(r.code, CLIENT_GRPC_CANCELLED);
    ASSERT(!r.maybe_applied);
    ASSERT(s.ended);
    ASSERT_EQ(s.code, CLIENT_GRPC_CANCELLED);
    ures_free(&r);
    ASSERT(loop_finish());
}

TEST(kill_etcd_midstream) {
    loop_start();
    static struct etcd b;
    ASSERT_EQ(etcd_start(&b, false, NULL), 0);
    struct client_options o;
    client_options_init(&o);
    ASSERT_EQ(etcd_wait_ready(&loop, &b, &o), 0);
    o.keepalive_ms = 200;
    o.keepalive_timeout_ms = 600;
    o.dial_timeout_ms = 500;
    o.command_timeout_ms = 1500;
    o.backoff_min_ms = 50;
    o.backoff_max_ms = 200;
    static struct fix_log log;
    memset(&log, 0, sizeof(log));
    log.echo = getenv("QFS_TEST_ECHO") != NULL;
    const char *eps[] = {b.url};
    struct client *c = new_client(eps, 1, &o, &log);
    ASSERT(c != NULL);

    /* 1. etcd stops answering (SIGSTOP: the socket stays open, as behind a
     * firewall that drops packets): the PINGs go unanswered and the stream
     * ends UNAVAILABLE within keepalive + timeout. */
    struct sres w = {0};
    ASSERT_EQ(client_stream_open(c, "/etcdserverpb.Watch/Watch",
                                 &etcdserverpb__watch_response__descriptor, &S_CBS, &w, &w.s),
              0);
    ASSERT_EQ(watch_create(w.s, "f/", "f0", 0, false, false), 0);
    RUN_UNTIL(&loop, w.n >= 1, 5000);
    ASSERT_EQ(w.n, 1);
    ASSERT_EQ(etcd_stop(&b), 0);
    uint64_t t0 = fix_mono_ms();
    RUN_UNTIL(&loop, w.ended, 4000);
    ASSERT(w.ended);
    ASSERT_EQ(w.code, CLIENT_GRPC_UNAVAILABLE);
    ASSERT_LT(fix_mono_ms() - t0, 2500);
    ASSERT(fix_log_has(&log, "no PING ACK within 600 ms"));
    sres_free(&w);
    memset(&w, 0, sizeof(w));
    kill(b.pid, SIGCONT);
    RUN_UNTIL(&loop, client_connected(c), 5000);
    ASSERT(client_connected(c));

    /* 2. etcd killed with a call in flight and a stream open: the call
     * fails UNAVAILABLE with maybe_applied, the stream ends UNAVAILABLE. */
    ASSERT_EQ(client_stream_open(c, "/etcdserverpb.Watch/Watch",
                                 &etcdserverpb__watch_response__descriptor, &S_CBS, &w, &w.s),
              0);
    ASSERT_EQ(watch_create(w.s, "f/", "f0", 0, false, false), 0);
    RUN_UNTIL(&loop, w.n >= 1, 5000);
    ASSERT_EQ(w.n, 1);
    ASSERT_EQ(etcd_stop(&b), 0);
    struct ures r = {0};
    Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
    put.key = fix_bin("f/inflight");
    put.value = fix_bin("?");
    ASSERT_EQ(client_unary(c, "/etcdserverpb.KV/Put", &put.base,
                           &etcdserverpb__put_response__descriptor, ures_cb, &r),
              0);
    fix_run_for(&loop, 50); /* the request reaches the stopped server's socket */
    if (r.done) fprintf(stderr, "  early answer: %d %s\n", r.code, r.msg);
    ASSERT(!r.done);
    etcd_kill(&b);
    RUN_UNTIL(&loop, r.done && w.ended, 3000);
    ASSERT(r.done);
    ASSERT_EQ(r.code, CLIENT_GRPC_UNAVAILABLE);
    ASSERT(r.maybe_applied);
    ASSERT(w.ended);
    ASSERT_EQ(w.code, CLIENT_GRPC_UNAVAILABLE);
    ures_free(&r);
    sres_free(&w);

    /* 3. Nothing to connect to: a new call waits, then fails with
     * DEADLINE_EXCEEDED, not applied, within command_timeout. */
    uint64_t t1 = fix_mono_ms();
    ASSERT_EQ(fix_put(&loop, c, "f/none", "x", &r), 0);
    ASSERT(r.done);
    ASSERT_EQ(r.code, CLIENT_GRPC_DEADLINE_EXCEEDED);
    ASSERT(!r.maybe_applied);
    ASSERT_LT(r.done_ms - t1, 1500 + 300);
    ASSERT_GE(r.done_ms - t1, 1400);
    ASSERT(strstr(r.msg, "connection refused") != NULL);
    ures_free(&r);
    ASSERT(fix_log_has(&log, "connection refused; next try in"));
    /* A stream opened now ends UNAVAILABLE after the dial timeout. */
    ASSERT_EQ(client_stream_open(c, "/etcdserverpb.Watch/Watch",
                                 &etcdserverpb__watch_response__descriptor, &S_CBS, &w, &w.s),
              0);
    RUN_UNTIL(&loop, w.ended, 3000);
    ASSERT(w.ended);
    ASSERT_EQ(w.code, CLIENT_GRPC_UNAVAILABLE);
    ASSERT(!client_connected(c));
    ASSERT(fix_client_close(&loop, c));
    ASSERT(loop_finish());
}

TEST(graceful_stop_goaway) {
    loop_start();
    static struct etcd g;
    ASSERT_EQ(etcd_start(&g, false, NULL), 0);
    struct client_options o;
    client_options_init(&o);
    ASSERT_EQ(etcd_wait_ready(&loop, &g, &o), 0);
    o.backoff_min_ms = 50;
    static struct fix_log log;
    memset(&log, 0, sizeof(log));
    log.echo = getenv("QFS_TEST_ECHO") != NULL;
    const char *eps[] = {g.url};
    struct client *c = new_client(eps, 1, &o, &log);
    ASSERT(c != NULL);
    struct sres w = {0};
    ASSERT_EQ(client_stream_open(c, "/etcdserverpb.Watch/Watch",
                                 &etcdserverpb__watch_response__descriptor, &S_CBS, &w, &w.s),
              0);
    ASSERT_EQ(watch_create(w.s, "g/", "g0", 0, false, false), 0);
    RUN_UNTIL(&loop, w.n >= 1, 5000);
    ASSERT_EQ(w.n, 1);
    /* SIGTERM: etcd stops gracefully (GOAWAY, then the connection closes). */
    ASSERT_EQ(kill(g.pid, SIGTERM), 0);
    RUN_UNTIL(&loop, w.ended, 5000);
    ASSERT(w.ended);
    ASSERT_EQ(w.code, CLIENT_GRPC_UNAVAILABLE);
    sres_free(&w);
    RUN_UNTIL(&loop, !client_connected(c), 5000);
    ASSERT(!client_connected(c));
    ASSERT(fix_client_close(&loop, c));
    etcd_kill(&g);
    ASSERT(loop_finish());
}

/* ---- TLS ------------------------------------------------------------------------------ */

static char tls_dir[64];

static int openssl(const char *const *args) {
    const char *argv[32];
    int n = 0;
    argv[n++] = "/usr/bin/openssl";
    for (int i = 0; args[i] != NULL && n < 31; i++) argv[n++] = args[i];
    argv[n] = NULL;
    char out[2048];
    int rc = fix_run(argv, NULL, 20000, out, sizeof(out));
    if (rc != 0) fprintf(stderr, "  openssl %s failed: %s\n", args[0], out);
    return rc;
}

static void tls_path(char *out, size_t n, const char *name) {
    snprintf(out, n, "%s/%s", tls_dir, name);
}

/* A CA, a second unrelated CA, a server certificate for IP 127.0.0.1 and a
 * client certificate, all EC P-256. */
static int make_certs(void) {
    if (tls_dir[0] != '\0') return 0;
    const char *d = fix_tmpdir();
    if (d == NULL) return -1;
    snprintf(tls_dir, sizeof(tls_dir), "%s", d);
    char p[12][128];
    const char *names[] = {"ca.key",     "ca.pem",     "other.key",  "other.pem",
                           "server.key", "server.csr", "server.pem", "server.ext",
                           "client.key", "client.csr", "client.pem", "client.ext"};
    for (int i = 0; i < 12; i++) tls_path(p[i], sizeof(p[i]), names[i]);
    FILE *f = fopen(p[7], "w");
    if (f == NULL) return -1;
    fprintf(f, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n");
    fclose(f);
    f = fopen(p[11], "w");
    if (f == NULL) return -1;
    fprintf(f, "extendedKeyUsage=clientAuth\n");
    fclose(f);
    for (int k = 0; k < 2; k++) {
        const char *ca[] = {"req",
                            "-x509",
                            "-newkey",
                            "ec",
                            "-pkeyopt",
                            "ec_paramgen_curve:prime256v1",
                            "-nodes",
                            "-keyout",
                            p[2 * k],
                            "-out",
                            p[2 * k + 1],
                            "-days",
                            "2",
                            "-subj",
                            k == 0 ? "/CN=qfs test CA" : "/CN=qfs other CA",
                            "-addext",
                            "basicConstraints=critical,CA:TRUE",
                            "-addext",
                            "keyUsage=critical,keyCertSign,cRLSign",
                            NULL};
        if (openssl(ca) != 0) return -1;
    }
    for (int k = 0; k < 2; k++) {
        int key = 4 + 4 * k, csr = key + 1, pem = key + 2, ext = key + 3;
        const char *req[] = {"req",
                             "-newkey",
                             "ec",
                             "-pkeyopt",
                             "ec_paramgen_curve:prime256v1",
                             "-nodes",
                             "-keyout",
                             p[key],
                             "-out",
                             p[csr],
                             "-subj",
                             k == 0 ? "/CN=127.0.0.1" : "/CN=root",
                             NULL};
        if (openssl(req) != 0) return -1;
        const char *sign[] = {
            "x509", "-req", "-in",   p[csr], "-CA",      p[1],   "-CAkey", p[0], "-CAcreateserial",
            "-out", p[pem], "-days", "2",    "-extfile", p[ext], NULL};
        if (openssl(sign) != 0) return -1;
    }
    return 0;
}

TEST(tls_server_cert) {
    loop_start();
    ASSERT_EQ(make_certs(), 0);
    char ca[128], other[128], cert[128], key[128];
    tls_path(ca, sizeof(ca), "ca.pem");
    tls_path(other, sizeof(other), "other.pem");
    tls_path(cert, sizeof(cert), "server.pem");
    tls_path(key, sizeof(key), "server.key");
    static struct etcd t;
    const char *extra[] = {"--cert-file", cert, "--key-file", key, NULL};
    ASSERT_EQ(etcd_start(&t, true, extra), 0);
    struct client_options o;
    client_options_init(&o);
    o.cacert = ca;
    ASSERT_EQ(etcd_wait_ready(&loop, &t, &o), 0);

    /* The right CA: works. */
    const char *eps[] = {t.url};
    struct client *c = new_client(eps, 1, &o, NULL);
    ASSERT(c != NULL);
    struct ures r;
    ASSERT_EQ(fix_put(&loop, c, "tls", "yes", &r), 0);
    ASSERT(r.done);
    ASSERT_EQ(r.code, 0);
    ures_free(&r);
    ASSERT(fix_client_close(&loop, c));

    /* A wrong CA: the handshake fails with a clear line; the call fails,
     * not applied, within its timeout. */
    static struct fix_log log;
    memset(&log, 0, sizeof(log));
    o.cacert = other;
    o.command_timeout_ms = 1000;
    o.dial_timeout_ms = 500;
    c = new_client(eps, 1, &o, &log);
    ASSERT(c != NULL);
    uint64_t t0 = fix_mono_ms();
    ASSERT_EQ(fix_put(&loop, c, "tls", "no", &r), 0);
    ASSERT(r.done);
    ASSERT_EQ(r.code, CLIENT_GRPC_DEADLINE_EXCEEDED);
    ASSERT(!r.maybe_applied);
    ASSERT_LT(r.done_ms - t0, 1000 + 300);
    ASSERT(strstr(r.msg, "certificate verify failed") != NULL);
    ures_free(&r);
    char want[256];
    snprintf(want, sizeof(want),
             "endpoint %s: TLS handshake failed: certificate verify failed: unable to get local "
             "issuer certificate; next try in",
             t.url);
    ASSERT(fix_log_has(&log, want));
    ASSERT(fix_client_close(&loop, c));

    /* The right CA but a host name the certificate does not carry. */
    memset(&log, 0, sizeof(log));
    o.cacert = ca;
    char by_name[64];
    snprintf(by_name, sizeof(by_name), "https://localhost:%d", t.port);
    const char *eps2[] = {by_name};
    c = new_client(eps2, 1, &o, &log);
    ASSERT(c != NULL);
    ASSERT_EQ(fix_put(&loop, c, "tls", "no", &r), 0);
    ASSERT(r.done);
    ASSERT_NE(r.code, 0);
    ures_free(&r);
    ASSERT(fix_log_has(&log, "certificate verify failed: hostname mismatch"));
    ASSERT(fix_client_close(&loop, c));

    /* Plain http to the TLS port fails too, without hanging. */
    char plain[64];
    snprintf(plain, sizeof(plain), "http://127.0.0.1:%d", t.port);
    const char *eps3[] = {plain};
    c = new_client(eps3, 1, &o, NULL);
    ASSERT(c != NULL);
    ASSERT_EQ(fix_put(&loop, c, "tls", "no", &r), 0);
    ASSERT(r.done);
    ASSERT_NE(r.code, 0);
    ASSERT(!r.maybe_applied);
    ures_free(&r);
    ASSERT(fix_client_close(&loop, c));
    etcd_kill(&t);
    ASSERT(loop_finish());
}

TEST(tls_client_cert) {
    loop_start();
    ASSERT_EQ(make_certs(), 0);
    char ca[128], cert[128], key[128], ccert[128], ckey[128];
    tls_path(ca, sizeof(ca), "ca.pem");
    tls_path(cert, sizeof(cert), "server.pem");
    tls_path(key, sizeof(key), "server.key");
    tls_path(ccert, sizeof(ccert), "client.pem");
    tls_path(ckey, sizeof(ckey), "client.key");
    static struct etcd t;
    const char *extra[] = {"--cert-file",       cert, "--key-file",         key,
                           "--trusted-ca-file", ca,   "--client-cert-auth", NULL};
    ASSERT_EQ(etcd_start(&t, true, extra), 0);
    struct client_options o;
    client_options_init(&o);
    o.cacert = ca;
    o.cert = ccert;
    o.key = ckey;
    ASSERT_EQ(etcd_wait_ready(&loop, &t, &o), 0);
    const char *eps[] = {t.url};
    struct client *c = new_client(eps, 1, &o, NULL);
    ASSERT(c != NULL);
    struct ures r;
    ASSERT_EQ(fix_put(&loop, c, "mtls", "yes", &r), 0);
    ASSERT(r.done);
    ASSERT_EQ(r.code, 0);
    ures_free(&r);
    ASSERT(fix_client_close(&loop, c));

    /* Without a client certificate the server refuses the connection. */
    static struct fix_log log;
    memset(&log, 0, sizeof(log));
    o.cert = o.key = NULL;
    o.command_timeout_ms = 1000;
    o.dial_timeout_ms = 500;
    c = new_client(eps, 1, &o, &log);
    ASSERT(c != NULL);
    ASSERT_EQ(fix_put(&loop, c, "mtls", "no", &r), 0);
    ASSERT(r.done);
    ASSERT_NE(r.code, 0);
    ASSERT(!r.maybe_applied);
    ures_free(&r);
    ASSERT(fix_log_has(&log, "TLS"));
    ASSERT(fix_client_close(&loop, c));
    etcd_kill(&t);
    ASSERT(loop_finish());
}

/* ---- auth ---------------------------------------------------------------------------- */

static int etcdctl(const char *url, const char *const *args, char *out, size_t outlen) {
    const char *argv[16];
    int n = 0;
    argv[n++] = "/usr/bin/etcdctl";
    argv[n++] = "--endpoints";
    argv[n++] = url;
    for (int i = 0; args[i] != NULL && n < 15; i++) argv[n++] = args[i];
    argv[n] = NULL;
    const char *envp[] = {"ETCDCTL_API=3", "PATH=/usr/bin:/bin", NULL};
    return fix_run(argv, envp, 15000, out, outlen);
}

TEST(auth_user_password) {
    loop_start();
    static struct etcd e;
    static const char *const extra[] = {"--auth-token-ttl=1", NULL};
    ASSERT_EQ(etcd_start(&e, false, extra), 0);
    struct client_options o;
    client_options_init(&o);
    ASSERT_EQ(etcd_wait_ready(&loop, &e, &o), 0);
    char out[1024];
    const char *add[] = {"user", "add", "root:pw", "--interactive=false", NULL};
    int rc = etcdctl(e.url, add, out, sizeof(out));
    if (rc != 0) fprintf(stderr, "  etcdctl user add: %s\n", out);
    ASSERT_EQ(rc, 0);
    const char *enable[] = {"auth", "enable", NULL};
    rc = etcdctl(e.url, enable, out, sizeof(out));
    if (rc != 0) fprintf(stderr, "  etcdctl auth enable: %s\n", out);
    ASSERT_EQ(rc, 0);

    static struct fix_log log;
    memset(&log, 0, sizeof(log));
    const char *eps[] = {e.url};
    o.user = "root";
    o.password = "pw";
    struct client *c = new_client(eps, 1, &o, &log);
    ASSERT(c != NULL);
    struct ures r;
    ASSERT_EQ(fix_put(&loop, c, "auth", "yes", &r), 0);
    ASSERT(r.done);
    ASSERT_EQ(r.code, 0);
    ures_free(&r);
    ASSERT(client_connected(c));
    /* The simple token expires after 1 s unused; the next call is answered
     * "invalid auth token", the client authenticates again and repeats it. */
    fix_run_for(&loop, 2500);
    ASSERT_EQ(fix_put(&loop, c, "auth", "again", &r), 0);
    ASSERT(r.done);
    ASSERT_EQ(r.code, 0);
    ures_free(&r);
    ASSERT(fix_log_has(&log, "auth token rejected"));
    ASSERT(fix_client_close(&loop, c));

    /* A wrong password: etcd's own words, nothing applied. */
    memset(&log, 0, sizeof(log));
    o.password = "wrong";
    c = new_client(eps, 1, &o, &log);
    ASSERT(c != NULL);
    ASSERT_EQ(fix_put(&loop, c, "auth", "no", &r), 0);
    ASSERT(r.done);
    ASSERT_EQ(r.code, CLIENT_GRPC_INVALID_ARGUMENT);
    ASSERT_STR_EQ(r.msg, "etcdserver: authentication failed, invalid user ID or password");
    ASSERT(!r.maybe_applied);
    ures_free(&r);
    ASSERT(fix_log_has(&log, "authentication as root failed"));
    ASSERT(!client_connected(c));
    ASSERT(fix_client_close(&loop, c));

    /* No user at all: etcd refuses the call itself. */
    o.user = o.password = NULL;
    c = new_client(eps, 1, &o, NULL);
    ASSERT(c != NULL);
    ASSERT_EQ(fix_put(&loop, c, "auth", "no", &r), 0);
    ASSERT(r.done);
    ASSERT_NE(r.code, 0);
    ASSERT(!r.maybe_applied);
    ures_free(&r);
    ASSERT(fix_client_close(&loop, c));
    etcd_kill(&e);
    ASSERT(loop_finish());
}

/* ---- options -------------------------------------------------------------------------- */

TEST(client_new_validation) {
    loop_start();
    struct client_options o;
    struct client *c = (struct client *)1;
    char err[256];
    client_options_init(&o);
    ASSERT_EQ(client_new(&loop, &o, &c, err, sizeof(err)), CLIENT_EINVAL);
    ASSERT(c == NULL);
    const char *bad[] = {"unix:///tmp/x"};
    o.endpoints = bad;
    o.n_endpoints = 1;
    ASSERT_EQ(client_new(&loop, &o, &c, err, sizeof(err)), CLIENT_EURL);
    ASSERT(strstr(err, "unix:///tmp/x") != NULL);
    const char *good[] = {"127.0.0.1:1"};
    o.endpoints = good;
    o.cert = "/nonexistent/client.pem";
    ASSERT_EQ(client_new(&loop, &o, &c, err, sizeof(err)), CLIENT_EINVAL); /* no key */
    o.key = "/nonexistent/client.key";
    ASSERT_EQ(client_new(&loop, &o, &c, err, sizeof(err)), CLIENT_ETLS);
    ASSERT(strstr(err, "cannot read certificate file /nonexistent/client.pem") != NULL);
    o.cert = o.key = NULL;
    o.cacert = "/nonexistent/ca.pem";
    ASSERT_EQ(client_new(&loop, &o, &c, err, sizeof(err)), CLIENT_ETLS);
    ASSERT(strstr(err, "cannot read CA file /nonexistent/ca.pem") != NULL);
    o.cacert = "/etc/hostname"; /* readable, not PEM */
    if (access(o.cacert, R_OK) == 0) {
        ASSERT_EQ(client_new(&loop, &o, &c, err, sizeof(err)), CLIENT_ETLS);
        ASSERT(strstr(err, "invalid CA file") != NULL);
    }
    o.cacert = NULL;
    o.user = "root";
    ASSERT_EQ(client_new(&loop, &o, &c, err, sizeof(err)), CLIENT_EINVAL);
    ASSERT(loop_finish());
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    return harness_main(argc, argv);
}
