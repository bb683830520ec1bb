/*
 * test_etcd_conv.c - the pure parts of the etcd services: key ranges,
 * protobuf <-> store conversions (txn inner headers included), the error
 * table, lease ids and minimum TTL, peer URL checks, the snapshot archive's
 * tar headers, and the arena.
 */
#include <errno.h>
#include <string.h>

#include "server/etcd.h"
#include "tests/harness.h"

static ProtobufCBinaryData pbs(const char *s) {
    return (ProtobufCBinaryData){strlen(s), (uint8_t *)(uintptr_t)s};
}

static bool in(const char *k, const char *key, const char *end, size_t end_len) {
    return etcd__key_in_range(k, strlen(k), key, strlen(key), end, end_len);
}

TEST(key_in_range_single_key) {
    ASSERT(in("a", "a", "", 0));
    ASSERT(!in("ab", "a", "", 0));
    ASSERT(!in("", "a", "", 0));
    ASSERT(!in("b", "a", "", 0));
}

TEST(key_in_range_half_open) {
    ASSERT(in("a", "a", "c", 1));
    ASSERT(in("b", "a", "c", 1));
    ASSERT(in("bzzz", "a", "c", 1));
    ASSERT(!in("c", "a", "c", 1));
    ASSERT(!in("0", "a", "c", 1));
    /* A prefix range as etcdctl --prefix builds it: "ab" .. "ac". */
    ASSERT(in("ab", "ab", "ac", 2));
    ASSERT(in("ab/x", "ab", "ac", 2));
    ASSERT(!in("a", "ab", "ac", 2));
    /* end <= key: empty. */
    ASSERT(!in("b", "b", "a", 1));
}

TEST(key_in_range_from_key) {
    static const char zero[1] = {0};
    ASSERT(in("a", "a", zero, 1));
    ASSERT(in("zzz", "a", zero, 1));
    ASSERT(!in("0", "a", zero, 1));
    /* "\0" .. "\0" is every key. */
    ASSERT(etcd__key_in_range("x", 1, zero, 1, zero, 1));
    ASSERT(etcd__key_in_range(zero, 1, zero, 1, zero, 1));
}

TEST(grpc_errors_are_etcds) {
    const char *m;
    ASSERT_EQ(etcd__grpc_error(STORE_ECOMPACTED, &m), API_GRPC_OUT_OF_RANGE);
    ASSERT_STR_EQ(m, "etcdserver: mvcc: required revision has been compacted");
    ASSERT_EQ(etcd__grpc_error(STORE_EFUTUREREV, &m), API_GRPC_OUT_OF_RANGE);
    ASSERT_STR_EQ(m, "etcdserver: mvcc: required revision is a future revision");
    ASSERT_EQ(etcd__grpc_error(STORE_ETOOLARGE, &m), API_GRPC_INVALID_ARGUMENT);
    ASSERT_STR_EQ(m, "etcdserver: request is too large");
    ASSERT_EQ(etcd__grpc_error(STORE_ENOSPACE, &m), API_GRPC_RESOURCE_EXHAUSTED);
    ASSERT_STR_EQ(m, "etcdserver: mvcc: database space exceeded");
    ASSERT_EQ(etcd__grpc_error(STORE_EKEYEMPTY, &m), API_GRPC_INVALID_ARGUMENT);
    ASSERT_STR_EQ(m, "etcdserver: key is not provided");
    ASSERT_EQ(etcd__grpc_error(STORE_ELEASENOTFOUND, &m), API_GRPC_NOT_FOUND);
    ASSERT_STR_EQ(m, "etcdserver: requested lease not found");
    ASSERT_EQ(etcd__grpc_error(STORE_ETOOMANYOPS, &m), API_GRPC_INVALID_ARGUMENT);
    ASSERT_STR_EQ(m, "etcdserver: too many operations in txn request");
    ASSERT_EQ(etcd__grpc_error(STORE_EDUPLICATEKEY, &m), API_GRPC_INVALID_ARGUMENT);
    ASSERT_STR_EQ(m, "etcdserver: duplicate key given in txn request");
    ASSERT_EQ(etcd__grpc_error(-ETIMEDOUT, &m), API_GRPC_UNAVAILABLE);
    ASSERT_STR_EQ(m, "etcdserver: request timed out");
    ASSERT_EQ(etcd__grpc_error(ETCD_ENOLEADER, &m), API_GRPC_UNAVAILABLE);
    ASSERT_STR_EQ(m, "etcdserver: no leader");
    ASSERT_EQ(etcd__grpc_error(ETCD_EMEMBERNOTFOUND, &m), API_GRPC_NOT_FOUND);
    ASSERT_STR_EQ(m, "etcdserver: member not found");
    ASSERT_EQ(etcd__grpc_error(ETCD_EPEERURLEXISTS, &m), API_GRPC_FAILED_PRECONDITION);
    ASSERT_STR_EQ(m, "etcdserver: Peer URLs already exists");
    ASSERT_EQ(etcd__grpc_error(ETCD_EUNHEALTHY, &m), API_GRPC_UNAVAILABLE);
    ASSERT_STR_EQ(m, "etcdserver: unhealthy cluster");
    ASSERT_EQ(etcd__grpc_error(ETCD_ELEARNERNOTREADY, &m), API_GRPC_FAILED_PRECONDITION);
    ASSERT_STR_EQ(m, "etcdserver: can only promote a learner member which is in sync with leader");
    ASSERT_EQ(etcd__grpc_error(STORE_ELEASETTLTOOLARGE, &m), API_GRPC_OUT_OF_RANGE);
    ASSERT_STR_EQ(m, "etcdserver: too large lease TTL");
    /* Anything else: UNKNOWN with a text, as etcd's togRPCError. */
    ASSERT_EQ(etcd__grpc_error(STORE_EIO, &m), API_GRPC_UNKNOWN);
    ASSERT(m != NULL && m[0] != '\0');
}

TEST(strerror_names_our_codes_and_passes_others_on) {
    ASSERT_STR_EQ(etcd__strerror(ETCD_EWATCHDUPID),
                  "mvcc: duplicate watch ID provided on the WatchStream");
    ASSERT_STR_EQ(etcd__strerror(ETCD_EWATCHRANGE), "mvcc: watcher range is empty");
    ASSERT_STR_EQ(etcd__strerror(STORE_ECOMPACTED), store_strerror(STORE_ECOMPACTED));
    const char *m;
    ASSERT_EQ(etcd__grpc_error(ETCD_EWATCHRANGE, &m), API_GRPC_UNKNOWN);
    ASSERT_STR_EQ(m, "mvcc: watcher range is empty");
}

TEST(range_from_pb_copies_every_field) {
    Etcdserverpb__RangeRequest r = ETCDSERVERPB__RANGE_REQUEST__INIT;
    r.key = pbs("a");
    r.range_end = pbs("b");
    r.limit = 7;
    r.revision = 9;
    r.sort_order = ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__DESCEND;
    r.sort_target = ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__MOD;
    r.keys_only = 1;
    r.count_only = 1;
    r.serializable = 1;
    r.min_mod_revision = 1;
    r.max_mod_revision = 2;
    r.min_create_revision = 3;
    r.max_create_revision = 4;
    struct store_range_req q;
    etcd__range_from_pb(&r, &q);
    ASSERT_EQ(q.key.len, 1);
    ASSERT_MEM_EQ(q.key.base, "a", 1);
    ASSERT_MEM_EQ(q.range_end.base, "b", 1);
    ASSERT_EQ(q.limit, 7);
    ASSERT_EQ(q.revision, 9);
    ASSERT_EQ(q.sort_order, STORE_SORT_DESCEND);
    ASSERT_EQ(q.sort_target, STORE_SORT_MOD);
    ASSERT(q.keys_only && q.count_only && q.serializable);
    ASSERT(!q.skip_count);
    ASSERT_EQ(q.min_mod_revision, 1);
    ASSERT_EQ(q.max_mod_revision, 2);
    ASSERT_EQ(q.min_create_revision, 3);
    ASSERT_EQ(q.max_create_revision, 4);
    r.limit = -5; /* etcd treats a negative limit as none */
    etcd__range_from_pb(&r, &q);
    ASSERT_EQ(q.limit, 0);
}

/* A txn: compare value("k") = "v"; success: put k2, nested txn { put k3 },
 * range k; failure: delete k. */
struct txn_fixture {
    Etcdserverpb__Compare cmp;
    Etcdserverpb__Compare *cmps[1];
    Etcdserverpb__PutRequest put, put3;
    Etcdserverpb__RangeRequest range;
    Etcdserverpb__DeleteRangeRequest del;
    Etcdserverpb__TxnRequest inner, txn;
    Etcdserverpb__RequestOp op_put, op_inner, op_range, op_put3, op_del;
    Etcdserverpb__RequestOp *succ[3], *inner_succ[1], *fail[1];
};

static void txn_fixture_init(struct txn_fixture *f) {
    memset(f, 0, sizeof *f);
    etcdserverpb__compare__init(&f->cmp);
    f->cmp.target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__VALUE;
    f->cmp.result = ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL;
    f->cmp.key = pbs("k");
    f->cmp.target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE;
    f->cmp.value = pbs("v");
    f->cmps[0] = &f->cmp;
    etcdserverpb__put_request__init(&f->put);
    f->put.key = pbs("k2");
    f->put.value = pbs("x");
    f->put.prev_kv = 1;
    etcdserverpb__put_request__init(&f->put3);
    f->put3.key = pbs("k3");
    etcdserverpb__range_request__init(&f->range);
    f->range.key = pbs("k");
    f->range.keys_only = 1;
    etcdserverpb__delete_range_request__init(&f->del);
    f->del.key = pbs("k");
    etcdserverpb__request_op__init(&f->op_put);
    f->op_put.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
    f->op_put.request_put = &f->put;
    etcdserverpb__request_op__init(&f->op_put3);
    f->op_put3.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
    f->op_put3.request_put = &f->put3;
    etcdserverpb__txn_request__init(&f->inner);
    f->inner_succ[0] = &f->op_put3;
    f->inner.success = f->inner_succ;
    f->inner.n_success = 1;
    etcdserverpb__request_op__init(&f->op_inner);
    f->op_inner.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN;
    f->op_inner.request_txn = &f->inner;
    etcdserverpb__request_op__init(&f->op_range);
    f->op_range.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE;
    f->op_range.request_range = &f->range;
    etcdserverpb__request_op__init(&f->op_del);
    f->op_del.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE;
    f->op_del.request_delete_range = &f->del;
    etcdserverpb__txn_request__init(&f->txn);
    f->txn.compare = f->cmps;
    f->txn.n_compare = 1;
    f->succ[0] = &f->op_range;
    f->succ[1] = &f->op_put;
    f->succ[2] = &f->op_inner;
    f->txn.success = f->succ;
    f->txn.n_success = 3;
    f->fail[0] = &f->op_del;
    f->txn.failure = f->fail;
    f->txn.n_failure = 1;
}

TEST(txn_from_pb_converts_nested_txns) {
    struct txn_fixture f;
    txn_fixture_init(&f);
    struct etcd_arena a = {0};
    struct store_txn t;
    ASSERT_EQ(etcd__txn_from_pb(&a, &f.txn, 42, &t), 0);
    ASSERT_EQ(t.n_compare, 1);
    ASSERT_EQ(t.compare[0].target, STORE_CMP_VALUE);
    ASSERT_EQ(t.compare[0].value.len, 1);
    ASSERT_MEM_EQ(t.compare[0].value.base, "v", 1);
    ASSERT_EQ(t.n_success, 3);
    ASSERT_EQ(t.success[0].type, STORE_OP_RANGE);
    ASSERT(t.success[0].u.range.keys_only);
    ASSERT_EQ(t.success[1].type, STORE_OP_PUT);
    ASSERT(t.success[1].u.put.prev_kv);
    ASSERT_EQ(t.success[1].u.put.mtime_ns, 42);
    ASSERT_EQ(t.success[2].type, STORE_OP_TXN);
    ASSERT_EQ(t.success[2].u.txn.n_success, 1);
    ASSERT_EQ(t.success[2].u.txn.success[0].type, STORE_OP_PUT);
    ASSERT_EQ(t.n_failure, 1);
    ASSERT_EQ(t.failure[0].type, STORE_OP_DELETE_RANGE);
    ASSERT(etcd__txn_writes(&t, false));
    /* The encoder accepts what the conversion made. */
    struct store_request req = {.type = STORE_REQ_TXN, .u.txn = t};
    void *buf = NULL;
    size_t len = 0;
    ASSERT_EQ(store_request_encode_alloc(&req, &buf, &len), 0);
    struct store_request back;
    ASSERT_EQ(store_request_decode(buf, len, &back), 0);
    ASSERT_EQ(back.u.txn.n_success, 3);
    store_request_release(&back);
    free(buf);
    etcd__arena_free(&a);
}

TEST(txn_from_pb_rejects_empty_op_and_deep_nesting) {
    struct etcd_arena a = {0};
    Etcdserverpb__RequestOp empty = ETCDSERVERPB__REQUEST_OP__INIT;
    Etcdserverpb__RequestOp *ops[1] = {&empty};
    Etcdserverpb__TxnRequest t = ETCDSERVERPB__TXN_REQUEST__INIT;
    t.success = ops;
    t.n_success = 1;
    struct store_txn out;
    ASSERT_EQ(etcd__txn_from_pb(&a, &t, 0, &out), STORE_EKEYNOTFOUND);

    Etcdserverpb__TxnRequest levels[STORE_TXN_DEPTH_MAX + 2];
    Etcdserverpb__RequestOp lops[STORE_TXN_DEPTH_MAX + 2];
    Etcdserverpb__RequestOp *lp[STORE_TXN_DEPTH_MAX + 2];
    for (int i = 0; i < (int)STORE_TXN_DEPTH_MAX + 2; i++) {
        etcdserverpb__txn_request__init(&levels[i]);
        etcdserverpb__request_op__init(&lops[i]);
    }
    for (int i = 0; i + 1 < (int)STORE_TXN_DEPTH_MAX + 2; i++) {
        lops[i].request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN;
        lops[i].request_txn = &levels[i + 1];
        lp[i] = &lops[i];
        levels[i].success = &lp[i];
        levels[i].n_success = 1;
    }
    ASSERT_EQ(etcd__txn_from_pb(&a, &levels[0], 0, &out), STORE_ETOOMANYOPS);
    /* Exactly the deepest nesting the store encodes is accepted. */
    ASSERT_EQ(etcd__txn_from_pb(&a, &levels[2], 0, &out), 0);
    etcd__arena_free(&a);
}

TEST(txn_to_pb_inner_headers_follow_etcd) {
    struct txn_fixture f;
    txn_fixture_init(&f);
    struct etcd_arena a = {0};
    struct store_txn t;
    ASSERT_EQ(etcd__txn_from_pb(&a, &f.txn, 0, &t), 0);
    /* A result as the store gives it, applied at revision 11 (begin 10). */
    struct store_kv kv = {
        .key = {"k", 1}, .value = {"v", 1}, .create_revision = 3, .mod_revision = 4, .version = 2};
    struct store_op_result inner_ops[1] = {{.type = STORE_OP_PUT}};
    struct store_txn_result inner = {.succeeded = true, .n_results = 1, .results = inner_ops};
    struct store_op_result ops[3];
    memset(ops, 0, sizeof ops);
    ops[0].type = STORE_OP_RANGE;
    ops[0].u.range.count = 1;
    ops[0].u.range.n_kvs = 1;
    ops[0].u.range.kvs = &kv;
    ops[1].type = STORE_OP_PUT;
    ops[1].u.put.has_prev_kv = true;
    ops[1].u.put.prev_kv = kv;
    ops[2].type = STORE_OP_TXN;
    ops[2].u.txn = &inner;
    struct store_txn_result r = {.succeeded = true, .n_results = 3, .results = ops};
    Etcdserverpb__TxnResponse resp = ETCDSERVERPB__TXN_RESPONSE__INIT;
    ASSERT_EQ(etcd__txn_to_pb(&a, &t, &r, 11, &resp), 0);
    ASSERT(resp.succeeded);
    ASSERT_EQ(resp.n_responses, 3);
    /* The range ran before any change: begin revision; keys_only honoured. */
    Etcdserverpb__RangeResponse *rr = resp.responses[0]->response_range;
    ASSERT_EQ(resp.responses[0]->response_case, ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE);
    ASSERT_EQ(rr->header->revision, 10);
    ASSERT_EQ(rr->n_kvs, 1);
    ASSERT_EQ(rr->kvs[0]->value.len, 0);
    ASSERT_EQ(rr->kvs[0]->mod_revision, 4);
    /* The put runs at begin + 1 and carries prev_kv. */
    Etcdserverpb__PutResponse *pr = resp.responses[1]->response_put;
    ASSERT_EQ(pr->header->revision, 11);
    ASSERT(pr->prev_kv != NULL);
    ASSERT_EQ(pr->prev_kv->version, 2);
    /* A nested txn's own header stays empty; its put is at begin + 1. */
    Etcdserverpb__TxnResponse *tr = resp.responses[2]->response_txn;
    ASSERT(tr->header != NULL);
    ASSERT_EQ(tr->header->revision, 0);
    ASSERT_EQ(tr->n_responses, 1);
    ASSERT_EQ(tr->responses[0]->response_put->header->revision, 11);
    /* The whole answer encodes and decodes. */
    size_t n = etcdserverpb__txn_response__get_packed_size(&resp);
    uint8_t *buf = malloc(n);
    ASSERT(buf != NULL);
    etcdserverpb__txn_response__pack(&resp, buf);
    Etcdserverpb__TxnResponse *back = etcdserverpb__txn_response__unpack(NULL, n, buf);
    ASSERT(back != NULL);
    ASSERT_EQ(back->n_responses, 3);
    etcdserverpb__txn_response__free_unpacked(back, NULL);
    free(buf);
    etcd__arena_free(&a);
}

TEST(txn_to_pb_read_only_and_failed_branch) {
    struct txn_fixture f;
    txn_fixture_init(&f);
    struct etcd_arena a = {0};
    struct store_txn t;
    ASSERT_EQ(etcd__txn_from_pb(&a, &f.txn, 0, &t), 0);
    /* The failure branch deleted nothing: everything at the revision. */
    struct store_op_result ops[1];
    memset(ops, 0, sizeof ops);
    ops[0].type = STORE_OP_DELETE_RANGE;
    struct store_txn_result r = {.succeeded = false, .n_results = 1, .results = ops};
    Etcdserverpb__TxnResponse resp = ETCDSERVERPB__TXN_RESPONSE__INIT;
    ASSERT_EQ(etcd__txn_to_pb(&a, &t, &r, 7, &resp), 0);
    ASSERT(!resp.succeeded);
    ASSERT_EQ(resp.responses[0]->response_delete_range->header->revision, 7);
    ASSERT_EQ(resp.responses[0]->response_delete_range->deleted, 0);
    /* A result that does not fit the request is refused, not trusted. */
    r.succeeded = true;
    resp = (Etcdserverpb__TxnResponse)ETCDSERVERPB__TXN_RESPONSE__INIT;
    ASSERT_EQ(etcd__txn_to_pb(&a, &t, &r, 7, &resp), STORE_ECORRUPT);
    etcd__arena_free(&a);
}

TEST(event_to_pb_prev_kv_only_when_asked) {
    struct etcd_arena a = {0};
    struct store_event ev = {.type = STORE_EVENT_DELETE,
                             .kv = {.key = {"k", 1}, .mod_revision = 5},
                             .has_prev_kv = true,
                             .prev_kv = {.key = {"k", 1},
                                         .value = {"old", 3},
                                         .mod_revision = 4,
                                         .create_revision = 4,
                                         .version = 1}};
    Mvccpb__Event *p = etcd__event_to_pb(&a, &ev, false);
    ASSERT(p != NULL);
    ASSERT_EQ(p->type, MVCCPB__EVENT__EVENT_TYPE__DELETE);
    ASSERT(p->prev_kv == NULL);
    ASSERT_EQ(p->kv->mod_revision, 5);
    p = etcd__event_to_pb(&a, &ev, true);
    ASSERT(p->prev_kv != NULL);
    ASSERT_EQ(p->prev_kv->value.len, 3);
    etcd__arena_free(&a);
}

TEST(range_to_pb_keys_only_and_more) {
    struct etcd_arena a = {0};
    struct store_kv kvs[2] = {{.key = {"a", 1}, .value = {"1", 1}, .version = 1},
                              {.key = {"b", 1}, .value = {"2", 1}, .version = 3}};
    struct store_range_result r = {.revision = 9, .count = 5, .more = true, .n_kvs = 2, .kvs = kvs};
    Etcdserverpb__RangeResponse resp = ETCDSERVERPB__RANGE_RESPONSE__INIT;
    ASSERT_EQ(etcd__range_to_pb(&a, &r, true, &resp), 0);
    ASSERT(resp.more);
    ASSERT_EQ(resp.count, 5);
    ASSERT_EQ(resp.n_kvs, 2);
    ASSERT_EQ(resp.kvs[1]->version, 3);
    ASSERT_EQ(resp.kvs[1]->value.len, 0);
    ASSERT_MEM_EQ(resp.kvs[1]->key.data, "b", 1);
    etcd__arena_free(&a);
}

TEST(lease_ids_and_min_ttl) {
    /* etcd's defaults: 100 ms heartbeat, 1000 ms election -> 15 ticks = 2 s. */
    ASSERT_EQ(etcd__lease_min_ttl(100, 1000), 2);
    ASSERT_EQ(etcd__lease_min_ttl(100, 2000), 3);
    ASSERT_EQ(etcd__lease_min_ttl(50, 100), 1);
    uint64_t member = UINT64_C(0xf2f983c9bb592236);
    int64_t a = etcd__lease_id(member, 1), b = etcd__lease_id(member, 2);
    ASSERT_GT(a, 0);
    ASSERT_NE(a, b);
    ASSERT_EQ(etcd__lease_id(member, 1), a);     /* deterministic */
    ASSERT_NE(etcd__lease_id(member ^ 1, 1), a); /* member-specific */
    ASSERT_GT(etcd__lease_id(UINT64_MAX, UINT64_MAX), 0);
    ASSERT_NE(etcd__lease_id(0, 0), 0);
}

TEST(join_urls_validates_and_sorts) {
    char buf[256];
    char *ok[] = {"https://10.0.0.2:2380", "http://10.0.0.1:2380"};
    ASSERT_EQ(etcd__join_urls(ok, 2, buf, sizeof buf), 0);
    ASSERT_STR_EQ(buf, "http://10.0.0.1:2380,https://10.0.0.2:2380");
    char *v6[] = {"http://[::1]:2380"};
    ASSERT_EQ(etcd__join_urls(v6, 1, buf, sizeof buf), 0);
    char *bad[][1] = {{"bad"},       {"http://host"},     {"http://host:"},
                      {"ftp://h:1"}, {"http://h:1/path"}, {"http://h:x"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ASSERT_EQ(etcd__join_urls(bad[i], 1, buf, sizeof buf), ETCD_EMEMBERBADURLS);
    ASSERT_EQ(etcd__join_urls(ok, 0, buf, sizeof buf), ETCD_EMEMBERBADURLS);
    ASSERT_EQ(etcd__join_urls(ok, 2, buf, 10), ETCD_EMEMBERBADURLS);
}

TEST(tar_header_round_trip) {
    uint8_t h[512];
    ASSERT_EQ(etcd__tar_header(h, "db/000012.sst", 123456, 0600), 0);
    ASSERT_MEM_EQ(h + 257, "ustar", 6);
    char name[101], type = 0;
    uint64_t size = 0;
    ASSERT_EQ(etcd__tar_parse(h, name, &size, &type), 0);
    ASSERT_STR_EQ(name, "db/000012.sst");
    ASSERT_U64_EQ(size, 123456);
    ASSERT_EQ(type, '0');
    /* Large files use base-256. */
    uint64_t big = UINT64_C(20) << 30;
    ASSERT_EQ(etcd__tar_header(h, "db/big", big, 0600), 0);
    ASSERT_EQ(etcd__tar_parse(h, name, &size, &type), 0);
    ASSERT_U64_EQ(size, big);
    /* A flipped byte breaks the checksum. */
    h[3] ^= 1;
    ASSERT_EQ(etcd__tar_parse(h, name, &size, &type), -1);
    memset(h, 0, sizeof h);
    ASSERT_EQ(etcd__tar_parse(h, name, &size, &type), 1);
    char longname[120];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    ASSERT_EQ(etcd__tar_header(h, longname, 1, 0600), -1);
}

TEST(arena_alignment_and_large_blocks) {
    struct etcd_arena a = {0};
    for (int i = 1; i < 100; i++) {
        uint8_t *p = etcd__alloc(&a, (size_t)i * 7);
        ASSERT(p != NULL);
        ASSERT_EQ((uintptr_t)p % 16, 0);
        for (int k = 0; k < i * 7; k++) ASSERT_EQ(p[k], 0);
        memset(p, 0xab, (size_t)i * 7);
    }
    uint8_t *big = etcd__alloc(&a, 1 << 20);
    ASSERT(big != NULL);
    big[(1 << 20) - 1] = 1;
    char *d = etcd__memdup(&a, "hello", 6);
    ASSERT_STR_EQ(d, "hello");
    etcd__arena_free(&a);
    ASSERT(a.head == NULL);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
