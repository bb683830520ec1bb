/*
 * test_store_basic.c - etcd v3 semantics of the store, case by case:
 * revisions, versions, txns and compares, ranges, history and compaction,
 * leases, the change log, limits and quota, request validation, the request
 * codec, checkpoints, and readers running beside the writer. Each case runs
 * on the in-memory database and on RocksDB where both matter.
 */
#include "tests/unit/store/store_test.h"

#include <pthread.h>

#define BOTH(name)                                                                                 \
    static void name(bool rocks);                                                                  \
    TEST(name##_mem) {                                                                             \
        name(false);                                                                               \
    }                                                                                              \
    TEST(name##_rocks) {                                                                           \
        name(true);                                                                                \
    }                                                                                              \
    static void name(bool rocks)

/* ---------------------------------------------------------------- revisions */

BOTH(revisions_and_versions) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, rocks, 0), 0);
    ASSERT_EQ(store_current_revision(t.s), 1); /* etcd: an empty store is at 1 */
    ASSERT_EQ(store_compact_revision(t.s), 0);
    int64_t rev = 0;
    int err = -1;
    ASSERT_EQ(t_do(&t, t_op_put("foo", "bar"), &err, &rev), 0);
    ASSERT_EQ(err, 0);
    ASSERT_EQ(rev, 2); /* the first write makes it 2 */
    char buf[64];
    struct store_kv kv;
    ASSERT_EQ(t_get(&t, "foo", 0, buf, sizeof(buf), &kv), 0);
    ASSERT_STR_EQ(buf, "bar");
    ASSERT_EQ(kv.create_revision, 2);
    ASSERT_EQ(kv.mod_revision, 2);
    ASSERT_EQ(kv.version, 1);

    ASSERT_EQ(t_put(&t, "foo", "baz"), 0);
    ASSERT_EQ(t_get(&t, "foo", 0, buf, sizeof(buf), &kv), 0);
    ASSERT_STR_EQ(buf, "baz");
    ASSERT_EQ(kv.create_revision, 2);
    ASSERT_EQ(kv.mod_revision, 3);
    ASSERT_EQ(kv.version, 2);

    /* Old revisions stay readable. */
    ASSERT_EQ(t_get(&t, "foo", 2, buf, sizeof(buf), NULL), 0);
    ASSERT_STR_EQ(buf, "bar");
    ASSERT_EQ(t_get(&t, "foo", 1, buf, sizeof(buf), NULL), 1);

    /* Delete: revision 4, then a new incarnation restarts version. */
    ASSERT_EQ(t_do(&t, t_op_del("foo", NULL), &err, &rev), 0);
    ASSERT_EQ(rev, 4);
    ASSERT_EQ(t_get(&t, "foo", 0, buf, sizeof(buf), NULL), 1);
    ASSERT_EQ(t_get(&t, "foo", 3, buf, sizeof(buf), NULL), 0);
    ASSERT_STR_EQ(buf, "baz");
    ASSERT_EQ(t_put(&t, "foo", "again"), 0);
    ASSERT_EQ(t_get(&t, "foo", 0, buf, sizeof(buf), &kv), 0);
    ASSERT_EQ(kv.create_revision, 5);
    ASSERT_EQ(kv.version, 1);

    /* A delete that deletes nothing, and a read-only txn, keep the revision. */
    ASSERT_EQ(t_do(&t, t_op_del("nothing", NULL), &err, &rev), 0);
    ASSERT_EQ(err, 0);
    ASSERT_EQ(rev, 5);
    ASSERT_EQ(t_do(&t, t_op_range("foo", NULL), &err, &rev), 0);
    ASSERT_EQ(rev, 5);
    ASSERT_EQ(store_current_revision(t.s), 5);
    ASSERT_U64_EQ(store_applied_index(t.s), t.index);

    /* Future revision. */
    struct store_range_result r;
    ASSERT_EQ(store_get(t.s, "foo", 3, 6, &r), STORE_EFUTUREREV);

    /* Persistence. */
    ASSERT_EQ(t_store_reopen(&t), 0);
    ASSERT_EQ(store_current_revision(t.s), 5);
    ASSERT_EQ(t_get(&t, "foo", 2, buf, sizeof(buf), NULL), 0);
    ASSERT_STR_EQ(buf, "bar");
    t_store_close(&t);
}

BOTH(metadata_and_empty_values) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, rocks, 0), 0);
    struct store_op op = t_op_put("f", "");
    op.u.put.mode = 0100644;
    op.u.put.uid = 1000;
    op.u.put.gid = 100;
    op.u.put.mtime_ns = 1700000000123456789ll;
    int err;
    ASSERT_EQ(t_do(&t, op, &err, NULL), 0);
    ASSERT_EQ(err, 0);
    char buf[8];
    struct store_kv kv;
    ASSERT_EQ(t_get(&t, "f", 0, buf, sizeof(buf), &kv), 0);
    ASSERT_STR_EQ(buf, "");
    ASSERT_EQ(kv.mode, 0100644);
    ASSERT_EQ(kv.uid, 1000);
    ASSERT_EQ(kv.gid, 100);
    ASSERT_EQ(kv.mtime_ns, 1700000000123456789ll);
    /* Keys with NUL bytes and high bytes are ordinary keys. */
    struct store_op op2 = t_op_put("x", "v");
    static const char nk[] = {'a', 0, 'b'};
    op2.u.put.key = t_bytes(nk, 3);
    ASSERT_EQ(t_do(&t, op2, &err, NULL), 0);
    struct store_range_result r;
    ASSERT_EQ(store_get(t.s, nk, 3, 0, &r), 0);
    ASSERT_EQ(r.n_kvs, 1);
    ASSERT_EQ(r.kvs[0].key.len, 3);
    store_range_result_release(&r);
    ASSERT_EQ(store_get(t.s, nk, 1, 0, &r), 0); /* "a" is not "a\0b" */
    ASSERT_EQ(r.n_kvs, 0);
    store_range_result_release(&r);
    t_store_close(&t);
}

/* ---------------------------------------------------------------- txn */

BOTH(txn_compares) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, rocks, 0), 0);
    /* Create-if-absent: version == 0. */
    struct store_compare c = {0};
    c.target = STORE_CMP_VERSION;
    c.result = STORE_CMP_EQUAL;
    c.key = t_str("lock");
    c.number = 0;
    struct store_op succ = t_op_put("lock", "me");
    struct store_op fail = t_op_range("lock", NULL);
    struct store_request r = t_txn(&c, 1, &succ, 1, &fail, 1);
    struct store_result *res = NULL;
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, 0);
    ASSERT(res->txn.succeeded);
    ASSERT_EQ(res->txn.n_results, 1);
    ASSERT_EQ(res->txn.results[0].type, STORE_OP_PUT);
    ASSERT_EQ(res->revision, 2);
    ASSERT_EQ(res->n_events, 1);
    ASSERT_EQ(res->events[0].type, STORE_EVENT_PUT);
    ASSERT(!res->events[0].has_prev_kv);
    store_result_free(res);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT(!res->txn.succeeded);
    ASSERT_EQ(res->txn.results[0].type, STORE_OP_RANGE);
    ASSERT_EQ(res->txn.results[0].u.range.n_kvs, 1);
    ASSERT_EQ(res->revision, 2);
    ASSERT_EQ(res->n_events, 0);
    store_result_free(res);

    /* VALUE compare on a missing key is always false; others see zeros. */
    c.target = STORE_CMP_VALUE;
    c.result = STORE_CMP_NOT_EQUAL;
    c.key = t_str("missing");
    c.value = t_str("x");
    r = t_txn(&c, 1, NULL, 0, NULL, 0);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT(!res->txn.succeeded);
    store_result_free(res);
    c.target = STORE_CMP_MOD;
    c.result = STORE_CMP_LESS;
    c.number = 1;
    r = t_txn(&c, 1, NULL, 0, NULL, 0);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT(res->txn.succeeded); /* 0 < 1 */
    store_result_free(res);

    /* Compare over a range: every key must satisfy it. */
    ASSERT_EQ(t_put(&t, "r/a", "1"), 0);
    ASSERT_EQ(t_put(&t, "r/b", "1"), 0);
    c.target = STORE_CMP_VALUE;
    c.result = STORE_CMP_EQUAL;
    c.key = t_str("r/");
    c.range_end = t_str("r0");
    c.value = t_str("1");
    r = t_txn(&c, 1, NULL, 0, NULL, 0);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT(res->txn.succeeded);
    store_result_free(res);
    ASSERT_EQ(t_put(&t, "r/c", "2"), 0);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT(!res->txn.succeeded);
    store_result_free(res);

    /* Ops in a txn see the txn's earlier writes; one revision for all. */
    int64_t before = store_current_revision(t.s);
    struct store_op ops[4] = {t_op_put("t/1", "a"), t_op_put("t/2", "b"), t_op_range("t/", "t0"),
                              t_op_del("r/a", NULL)};
    ops[2].u.range.revision = 0;
    r = t_txn(NULL, 0, ops, 4, NULL, 0);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, 0);
    ASSERT_EQ(res->revision, before + 1);
    ASSERT_EQ(res->txn.results[2].u.range.n_kvs, 2);
    ASSERT_EQ(res->txn.results[2].u.range.revision, before + 1);
    ASSERT_EQ(res->txn.results[3].u.delete_range.deleted, 1);
    ASSERT_EQ(res->n_events, 3);
    store_result_free(res);

    /* A range at a revision the txn has not reached yet is rejected before
     * anything runs (etcd checkRange). */
    ops[0] = t_op_put("t/3", "c");
    ops[1] = t_op_range("t/", "t0");
    ops[1].u.range.revision = before + 2;
    r = t_txn(NULL, 0, ops, 2, NULL, 0);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, STORE_EFUTUREREV);
    ASSERT_EQ(res->revision, before + 1);
    store_result_free(res);
    ASSERT_EQ(t_get(&t, "t/3", 0, (char[8]){0}, 8, NULL), 1);
    t_store_close(&t);
}

BOTH(txn_nested) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, rocks, 0), 0);
    ASSERT_EQ(t_put(&t, "a", "1"), 0);
    /* Outer: a == "1" -> [put a=2, txn{ a == "1" ? put b : put c }].
     * The inner compare sees the state before the txn: a is still "1". */
    struct store_compare c = {0};
    c.target = STORE_CMP_VALUE;
    c.result = STORE_CMP_EQUAL;
    c.key = t_str("a");
    c.value = t_str("1");
    struct store_op in_s = t_op_put("b", "x"), in_f = t_op_put("c", "x");
    struct store_op outer[2] = {t_op_put("a", "2"), {0}};
    outer[1].type = STORE_OP_TXN;
    outer[1].u.txn.compare = &c;
    outer[1].u.txn.n_compare = 1;
    outer[1].u.txn.success = &in_s;
    outer[1].u.txn.n_success = 1;
    outer[1].u.txn.failure = &in_f;
    outer[1].u.txn.n_failure = 1;
    struct store_request r = t_txn(&c, 1, outer, 2, NULL, 0);
    struct store_result *res;
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, 0);
    ASSERT(res->txn.succeeded);
    ASSERT_EQ(res->txn.results[1].type, STORE_OP_TXN);
    ASSERT(res->txn.results[1].u.txn->succeeded);
    ASSERT_EQ(res->revision, 3);
    store_result_free(res);
    char buf[8];
    ASSERT_EQ(t_get(&t, "b", 0, buf, sizeof(buf), NULL), 0);
    ASSERT_EQ(t_get(&t, "c", 0, buf, sizeof(buf), NULL), 1);

    /* The same key put in both branches of a nested txn is fine; put in
     * the outer level and in a branch is a duplicate. */
    in_s = t_op_put("d", "1");
    in_f = t_op_put("d", "2");
    r = t_txn(NULL, 0, &outer[1], 1, NULL, 0);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, 0);
    store_result_free(res);
    outer[0] = t_op_put("d", "3");
    r = t_txn(NULL, 0, outer, 2, NULL, 0);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, STORE_EDUPLICATEKEY);
    store_result_free(res);

    /* etcd's checkIntervals does not check a nested txn's puts against a
     * later sibling's deletes: the key changes twice in one revision. */
    struct store_op put_x = t_op_put("x", "1"), del_x = t_op_del("x", NULL);
    struct store_op sib[2] = {{0}, {0}};
    sib[0].type = sib[1].type = STORE_OP_TXN;
    sib[0].u.txn.success = &put_x;
    sib[0].u.txn.n_success = 1;
    sib[1].u.txn.success = &del_x;
    sib[1].u.txn.n_success = 1;
    ASSERT_EQ(t_put(&t, "x", "0"), 0);
    int64_t rv = store_current_revision(t.s) + 1;
    r = t_txn(NULL, 0, sib, 2, NULL, 0);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, 0);
    ASSERT_EQ(res->revision, rv);
    ASSERT_EQ(res->n_events, 2);
    /* Both events' prev_kv is the version at rv - 1, as etcd's watch. */
    ASSERT_MEM_EQ(res->events[0].prev_kv.value.base, "0", 1);
    ASSERT_MEM_EQ(res->events[1].prev_kv.value.base, "0", 1);
    ASSERT_EQ(res->events[0].kv.version, 2);
    store_result_free(res);
    ASSERT_EQ(t_get(&t, "x", 0, buf, sizeof(buf), NULL), 1);
    ASSERT_EQ(t_get(&t, "x", rv - 1, buf, sizeof(buf), NULL), 0);
    struct store_event_batch eb;
    ASSERT_EQ(store_events(t.s, rv, "x", 1, NULL, 0, 10, true, &eb), 0);
    ASSERT_EQ(eb.n_events, 2);
    ASSERT_EQ(eb.events[0].type, STORE_EVENT_PUT);
    ASSERT_MEM_EQ(eb.events[0].kv.value.base, "1", 1);
    ASSERT_EQ(eb.events[1].type, STORE_EVENT_DELETE);
    store_event_batch_release(&eb);
    /* Compacted at exactly that revision, the superseded put is gone. */
    struct store_request cq = {0};
    cq.type = STORE_REQ_COMPACT;
    cq.u.compact.revision = rv;
    ASSERT_EQ(t_apply(&t, &cq, &res), 0);
    ASSERT_EQ(res->err, 0);
    store_result_free(res);
    ASSERT_EQ(store_events(t.s, rv, "x", 1, NULL, 0, 10, true, &eb), 0);
    ASSERT_EQ(eb.n_events, 1);
    ASSERT_EQ(eb.events[0].type, STORE_EVENT_DELETE);
    ASSERT(!eb.events[0].has_prev_kv);
    store_event_batch_release(&eb);
    ASSERT_EQ(t_put(&t, "x", "2"), 0);
    struct store_kv kv;
    ASSERT_EQ(t_get(&t, "x", 0, buf, sizeof(buf), &kv), 0);
    ASSERT_EQ(kv.version, 1);
    ASSERT_EQ(kv.create_revision, rv + 1);
    t_store_close(&t);
}

BOTH(txn_validation) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, rocks, 0), 0);
    struct store_result *res;
    int64_t rev0 = store_current_revision(t.s);
    /* Duplicate put; put inside a delete range; empty key. */
    struct store_op ops[3] = {t_op_put("k", "1"), t_op_put("k", "2"), {0}};
    struct store_request r = t_txn(NULL, 0, ops, 2, NULL, 0);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, STORE_EDUPLICATEKEY);
    store_result_free(res);
    ops[1] = t_op_del("a", "z");
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, STORE_EDUPLICATEKEY);
    store_result_free(res);
    /* etcd takes range_end literally here: [a, "\0") is an empty interval,
     * so a from-key delete does not conflict with a put; the key is put
     * and deleted in one revision, both changes logged. */
    ops[1] = t_op_del("a", "\0");
    ops[1].u.delete_range.range_end = t_bytes("", 1);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, 0);
    ASSERT_EQ(res->revision, rev0 + 1);
    ASSERT_EQ(res->n_events, 2);
    ASSERT_EQ(res->events[0].type, STORE_EVENT_PUT);
    ASSERT_EQ(res->events[1].type, STORE_EVENT_DELETE);
    ASSERT(!res->events[1].has_prev_kv); /* nothing at revision - 1 */
    ASSERT_EQ(res->txn.results[1].u.delete_range.deleted, 1);
    store_result_free(res);
    ASSERT_EQ(t_get(&t, "k", 0, (char[8]){0}, 8, NULL), 1);
    struct store_event_batch eb;
    ASSERT_EQ(store_events(t.s, rev0 + 1, "k", 1, NULL, 0, 10, true, &eb), 0);
    ASSERT_EQ(eb.n_events, 2);
    ASSERT_EQ(eb.events[0].kv.version, 1);
    store_event_batch_release(&eb);
    rev0++;
    /* Overlapping deletes are allowed. */
    ops[0] = t_op_del("a", "m");
    ops[1] = t_op_del("b", "z");
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, 0);
    store_result_free(res);
    ops[0] = t_op_put("", "x");
    r = t_txn(NULL, 0, ops, 1, NULL, 0);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, STORE_EKEYEMPTY);
    store_result_free(res);
    /* ignore_value with a value, ignore_lease with a lease, or on a
     * missing key. */
    ops[0] = t_op_put("k", "v");
    ops[0].u.put.ignore_value = true;
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, STORE_EVALUEPROVIDED);
    store_result_free(res);
    ops[0] = t_op_put("k", "");
    ops[0].u.put.ignore_lease = true;
    ops[0].u.put.lease = 5;
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, STORE_ELEASEPROVIDED);
    store_result_free(res);
    ops[0].u.put.lease = 0;
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, STORE_EKEYNOTFOUND);
    store_result_free(res);
    /* Too many ops (etcd --max-txn-ops 128). */
    struct store_op *many = t_alloc(129 * sizeof(*many));
    for (int i = 0; i < 129; i++) many[i] = t_op_range("k", NULL);
    r = t_txn(NULL, 0, many, 129, NULL, 0);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, STORE_ETOOMANYOPS);
    store_result_free(res);
    r = t_txn(NULL, 0, many, 128, NULL, 0);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, 0);
    store_result_free(res);
    t_free_all();
    /* Key too large. */
    char *big = malloc(STORE_KEY_BYTES_MAX + 2);
    memset(big, 'k', STORE_KEY_BYTES_MAX + 1);
    big[STORE_KEY_BYTES_MAX + 1] = 0;
    ops[0] = t_op_put(big, "v");
    r = t_txn(NULL, 0, ops, 1, NULL, 0);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, STORE_EKEYTOOLARGE);
    ASSERT_EQ(store_request_check(t.s, "", 0), STORE_EMALFORMED);
    store_result_free(res);
    free(big);
    /* Nothing above changed the key space, but every entry was applied. */
    ASSERT_EQ(store_current_revision(t.s), rev0);
    ASSERT_U64_EQ(store_applied_index(t.s), t.index);
    t_store_close(&t);
}

TEST(request_too_large_and_malformed) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, false, 0), 0);
    size_t n = STORE_REQUEST_BYTES_DEFAULT + 1;
    char *v = malloc(n + 1);
    memset(v, 'v', n);
    v[n] = 0;
    struct store_op op = t_op_put("k", v);
    struct store_request r = t_txn(NULL, 0, &op, 1, NULL, 0);
    void *buf;
    size_t len;
    ASSERT_EQ(store_request_encode_alloc(&r, &buf, &len), 0);
    ASSERT_EQ(store_request_check(t.s, buf, len), STORE_ETOOLARGE);
    struct store_result *res;
    ASSERT_EQ(store_apply(t.s, 1, buf, len, &res), 0);
    ASSERT_EQ(res->err, STORE_ETOOLARGE);
    store_result_free(res);
    free(buf);
    /* Just under the limit works. */
    op.u.put.value.len = STORE_REQUEST_BYTES_DEFAULT - 200;
    r = t_txn(NULL, 0, &op, 1, NULL, 0);
    ASSERT_EQ(store_request_encode_alloc(&r, &buf, &len), 0);
    ASSERT_EQ(store_request_check(t.s, buf, len), 0);
    ASSERT_EQ(store_apply(t.s, 2, buf, len, &res), 0);
    ASSERT_EQ(res->err, 0);
    store_result_free(res);
    free(buf);
    free(v);
    /* Garbage: rejected, index applied, nothing else. */
    static const unsigned char junk[] = {1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
    ASSERT_EQ(store_apply(t.s, 3, junk, sizeof(junk), &res), 0);
    ASSERT_EQ(res->err, STORE_EMALFORMED);
    store_result_free(res);
    static const unsigned char vers[] = {9, 0};
    ASSERT_EQ(store_apply(t.s, 4, vers, sizeof(vers), &res), 0);
    ASSERT_EQ(res->err, STORE_EVERSION);
    store_result_free(res);
    ASSERT_U64_EQ(store_applied_index(t.s), 4);
    ASSERT_EQ(store_current_revision(t.s), 2);
    /* Replaying an applied index does nothing. */
    ASSERT_EQ(store_apply(t.s, 2, junk, sizeof(junk), &res), 0);
    ASSERT(res == NULL);
    ASSERT_EQ(store_apply_noop(t.s, 5), 0);
    ASSERT_U64_EQ(store_applied_index(t.s), 5);
    t_store_close(&t);
}

/* ---------------------------------------------------------------- ranges */

static void fill_abc(struct t_store *t) {
    /* a=3 (3 versions), b=1, c=22, d=4 (2 versions) */
    t_put(t, "a", "1");
    t_put(t, "b", "1");
    t_put(t, "a", "2");
    t_put(t, "c", "22");
    t_put(t, "d", "4");
    t_put(t, "a", "3");
    t_put(t, "d", "4");
}

BOTH(ranges) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, rocks, 0), 0);
    fill_abc(&t);
    struct store_range_req q = {0};
    struct store_range_result r;
    q.key = t_str("a");
    q.range_end = t_str("e");
    ASSERT_EQ(store_range(t.s, &q, &r), 0);
    ASSERT_EQ(r.count, 4);
    ASSERT_EQ(r.n_kvs, 4);
    ASSERT(!r.more);
    ASSERT_EQ(r.revision, 8);
    store_range_result_release(&r);

    q.limit = 2;
    ASSERT_EQ(store_range(t.s, &q, &r), 0);
    ASSERT_EQ(r.count, 4);
    ASSERT_EQ(r.n_kvs, 2);
    ASSERT(r.more);
    ASSERT_MEM_EQ(r.kvs[1].key.base, "b", 1);
    store_range_result_release(&r);

    /* Sort by version descending, limit 2: a (3), d (2). */
    q.sort_order = STORE_SORT_DESCEND;
    q.sort_target = STORE_SORT_VERSION;
    ASSERT_EQ(store_range(t.s, &q, &r), 0);
    ASSERT_EQ(r.n_kvs, 2);
    ASSERT_MEM_EQ(r.kvs[0].key.base, "a", 1);
    ASSERT_MEM_EQ(r.kvs[1].key.base, "d", 1);
    ASSERT(r.more);
    store_range_result_release(&r);

    /* Key descending. */
    q.limit = 0;
    q.sort_target = STORE_SORT_KEY;
    ASSERT_EQ(store_range(t.s, &q, &r), 0);
    ASSERT_EQ(r.n_kvs, 4);
    ASSERT_MEM_EQ(r.kvs[0].key.base, "d", 1);
    store_range_result_release(&r);

    /* Filters: mod revision >= 6 -> d (8), a (7). */
    q.sort_order = STORE_SORT_NONE;
    q.min_mod_revision = 6;
    ASSERT_EQ(store_range(t.s, &q, &r), 0);
    ASSERT_EQ(r.n_kvs, 2);
    ASSERT_EQ(r.count, 4); /* etcd counts before filtering */
    store_range_result_release(&r);
    q.min_mod_revision = 0;

    /* count_only, keys_only. */
    q.count_only = true;
    ASSERT_EQ(store_range(t.s, &q, &r), 0);
    ASSERT_EQ(r.count, 4);
    ASSERT_EQ(r.n_kvs, 0);
    store_range_result_release(&r);
    q.count_only = false;
    q.keys_only = true;
    ASSERT_EQ(store_range(t.s, &q, &r), 0);
    ASSERT_EQ(r.n_kvs, 4);
    ASSERT_EQ(r.kvs[2].value.len, 0);
    store_range_result_release(&r);
    q.keys_only = false;

    /* "\0" = every key >= key; range_end <= key = nothing. */
    q.key = t_str("b");
    q.range_end = t_bytes("", 1);
    ASSERT_EQ(store_range(t.s, &q, &r), 0);
    ASSERT_EQ(r.n_kvs, 3);
    store_range_result_release(&r);
    q.range_end = t_str("a");
    ASSERT_EQ(store_range(t.s, &q, &r), 0);
    ASSERT_EQ(r.n_kvs, 0);
    ASSERT_EQ(r.count, 0);
    store_range_result_release(&r);

    /* An old revision: at 4, a=2, b=1. */
    q.key = t_str("a");
    q.range_end = t_bytes("", 1);
    q.revision = 4;
    ASSERT_EQ(store_range(t.s, &q, &r), 0);
    ASSERT_EQ(r.n_kvs, 2);
    ASSERT_MEM_EQ(r.kvs[0].value.base, "2", 1);
    ASSERT_EQ(r.kvs[0].version, 2);
    ASSERT_EQ(r.revision, 8); /* header revision is the current one */
    store_range_result_release(&r);

    /* skip_count paging. */
    q.revision = 0;
    q.limit = 1;
    q.skip_count = true;
    ASSERT_EQ(store_range(t.s, &q, &r), 0);
    ASSERT_EQ(r.n_kvs, 1);
    ASSERT(r.more);
    ASSERT_EQ(r.count, -1);
    store_range_result_release(&r);

    q.key = t_bytes(NULL, 0);
    ASSERT_EQ(store_range(t.s, &q, &r), STORE_EKEYEMPTY);
    t_store_close(&t);
}

/* ---------------------------------------------------------------- compaction */

BOTH(compaction) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, rocks, 0), 0);
    fill_abc(&t);                       /* revisions 2..8 */
    ASSERT_EQ(t_del(&t, "b", NULL), 0); /* 9 */
    ASSERT_EQ(t_put(&t, "e", "5"), 0);  /* 10 */
    uint32_t h_before;
    ASSERT_EQ(store_hash(t.s, 0, &h_before, NULL), 0);
    struct store_status st0;
    ASSERT_EQ(store_status(t.s, &st0), 0);

    struct store_request r = {0};
    r.type = STORE_REQ_COMPACT;
    r.u.compact.revision = 11;
    struct store_result *res;
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, STORE_EFUTUREREV);
    store_result_free(res);
    r.u.compact.revision = 9;
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, 0);
    ASSERT_EQ(res->revision, 10);
    store_result_free(res);
    ASSERT_EQ(store_compact_revision(t.s), 9);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, STORE_ECOMPACTED);
    store_result_free(res);

    /* Below: compacted. At 9 and later: intact. */
    struct store_range_result rr;
    ASSERT_EQ(store_get(t.s, "a", 1, 8, &rr), STORE_ECOMPACTED);
    struct store_range_req q = {0};
    q.key = t_str("a");
    q.range_end = t_bytes("", 1);
    q.revision = 9;
    ASSERT_EQ(store_range(t.s, &q, &rr), 0);
    ASSERT_EQ(rr.n_kvs, 3); /* a, c, d; b deleted at 9 */
    ASSERT_MEM_EQ(rr.kvs[0].value.base, "3", 1);
    ASSERT_EQ(rr.kvs[0].version, 3);
    ASSERT_EQ(rr.kvs[0].create_revision, 2);
    store_range_result_release(&rr);
    struct store_status st1;
    ASSERT_EQ(store_status(t.s, &st1), 0);
    ASSERT_LT(st1.logical_bytes, st0.logical_bytes);
    /* History below 9 is gone, so the hash over everything changed, but a
     * second store compacted the same way agrees (see the model test). */
    uint32_t h_after;
    ASSERT_EQ(store_hash(t.s, 0, &h_after, NULL), 0);
    ASSERT_NE(h_before, h_after);
    ASSERT_EQ(store_hash(t.s, 8, &h_after, NULL), STORE_ECOMPACTED);

    /* Change log: from 9 on only. */
    struct store_event_batch eb;
    ASSERT_EQ(store_events(t.s, 8, "", 0, "", 1, 100, false, &eb), STORE_ECOMPACTED);
    ASSERT_EQ(store_events(t.s, 9, "", 0, "", 1, 100, true, &eb), 0);
    ASSERT_EQ(eb.n_events, 2);
    ASSERT_EQ(eb.events[0].type, STORE_EVENT_DELETE);
    ASSERT_EQ(eb.events[0].kv.mod_revision, 9);
    ASSERT(!eb.events[0].has_prev_kv); /* compacted away */
    ASSERT_EQ(eb.events[1].kv.mod_revision, 10);
    ASSERT_EQ(eb.next_rev, 11);
    store_event_batch_release(&eb);

    /* More writes, compact again, reopen. */
    ASSERT_EQ(t_put(&t, "a", "4"), 0);  /* 11 */
    ASSERT_EQ(t_del(&t, "c", NULL), 0); /* 12 */
    r.u.compact.revision = 12;
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, 0);
    store_result_free(res);
    ASSERT_EQ(t_store_reopen(&t), 0);
    ASSERT_EQ(store_compact_revision(t.s), 12);
    q.revision = 0;
    ASSERT_EQ(store_range(t.s, &q, &rr), 0);
    ASSERT_EQ(rr.n_kvs, 3); /* a, d, e */
    store_range_result_release(&rr);
    ASSERT_EQ(store_get(t.s, "a", 1, 12, &rr), 0);
    ASSERT_MEM_EQ(rr.kvs[0].value.base, "4", 1);
    store_range_result_release(&rr);
    t_store_close(&t);
}

/* ---------------------------------------------------------------- leases */

static int lease_req(struct t_store *t, int type, int64_t id, int64_t ttl, int *err, int64_t *rev) {
    struct store_request r = {0};
    r.type = (uint8_t)type;
    if (type == STORE_REQ_LEASE_GRANT) {
        r.u.lease_grant.id = id;
        r.u.lease_grant.ttl = ttl;
    } else if (type == STORE_REQ_LEASE_REVOKE) {
        r.u.lease_revoke.id = id;
    } else {
        r.u.lease_checkpoint.id = id;
        r.u.lease_checkpoint.remaining_ttl = ttl;
    }
    struct store_result *res;
    int rc = t_apply(t, &r, &res);
    if (rc != 0) return rc;
    *err = res->err;
    if (rev) *rev = res->revision;
    store_result_free(res);
    return 0;
}

BOTH(leases) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, rocks, 0), 0);
    int err;
    int64_t rev;
    ASSERT_EQ(lease_req(&t, STORE_REQ_LEASE_GRANT, 7, 30, &err, &rev), 0);
    ASSERT_EQ(err, 0);
    ASSERT_EQ(rev, 1); /* granting does not bump the revision */
    ASSERT_EQ(lease_req(&t, STORE_REQ_LEASE_GRANT, 7, 30, &err, &rev), 0);
    ASSERT_EQ(err, STORE_ELEASEEXISTS);
    ASSERT_EQ(lease_req(&t, STORE_REQ_LEASE_GRANT, 8, STORE_LEASE_TTL_MAX + 1, &err, &rev), 0);
    ASSERT_EQ(err, STORE_ELEASETTLTOOLARGE);
    ASSERT_EQ(lease_req(&t, STORE_REQ_LEASE_GRANT, 9, 60, &err, &rev), 0);

    struct store_op p = t_op_put("l/1", "x");
    p.u.put.lease = 7;
    ASSERT_EQ(t_do(&t, p, &err, NULL), 0);
    ASSERT_EQ(err, 0);
    p.u.put.key = t_str("l/2");
    ASSERT_EQ(t_do(&t, p, &err, NULL), 0);
    p.u.put.key = t_str("l/3");
    p.u.put.lease = 9;
    ASSERT_EQ(t_do(&t, p, &err, NULL), 0);
    p.u.put.lease = 42;
    ASSERT_EQ(t_do(&t, p, &err, NULL), 0);
    ASSERT_EQ(err, STORE_ELEASENOTFOUND);
    /* Moving l/2 to lease 9 detaches it from 7; ignore_lease keeps it. */
    p.u.put.key = t_str("l/2");
    p.u.put.lease = 9;
    ASSERT_EQ(t_do(&t, p, &err, NULL), 0);
    p.u.put.lease = 0;
    p.u.put.ignore_lease = true;
    p.u.put.value = t_str("y");
    ASSERT_EQ(t_do(&t, p, &err, NULL), 0);
    ASSERT_EQ(err, 0);
    struct store_kv kv;
    char buf[8];
    ASSERT_EQ(t_get(&t, "l/2", 0, buf, sizeof(buf), &kv), 0);
    ASSERT_EQ(kv.lease, 9);
    ASSERT_STR_EQ(buf, "y");

    struct store_key_list kl;
    ASSERT_EQ(store_lease_keys(t.s, 7, &kl), 0);
    ASSERT_EQ(kl.n_keys, 1);
    ASSERT_MEM_EQ(kl.keys[0].base, "l/1", 3);
    store_key_list_release(&kl);
    ASSERT_EQ(store_lease_keys(t.s, 9, &kl), 0);
    ASSERT_EQ(kl.n_keys, 2);
    store_key_list_release(&kl);
    ASSERT_EQ(store_lease_keys(t.s, 8, &kl), STORE_ELEASENOTFOUND);

    ASSERT_EQ(lease_req(&t, STORE_REQ_LEASE_CHECKPOINT, 9, 12, &err, NULL), 0);
    struct store_lease l;
    ASSERT_EQ(store_lease_get(t.s, 9, &l), 0);
    ASSERT_EQ(l.ttl, 60);
    ASSERT_EQ(l.remaining_ttl, 12);

    ASSERT_EQ(t_store_reopen(&t), 0);
    struct store_lease *ls;
    size_t n;
    ASSERT_EQ(store_lease_list(t.s, &ls, &n), 0);
    ASSERT_EQ(n, 2);
    ASSERT_EQ(ls[0].id, 7);
    ASSERT_EQ(ls[1].id, 9);
    free(ls);

    /* Revoke deletes the attached keys in one revision. */
    int64_t before = store_current_revision(t.s);
    ASSERT_EQ(lease_req(&t, STORE_REQ_LEASE_REVOKE, 9, 0, &err, &rev), 0);
    ASSERT_EQ(err, 0);
    ASSERT_EQ(rev, before + 1);
    ASSERT_EQ(t_get(&t, "l/2", 0, buf, sizeof(buf), NULL), 1);
    ASSERT_EQ(t_get(&t, "l/3", 0, buf, sizeof(buf), NULL), 1);
    ASSERT_EQ(t_get(&t, "l/1", 0, buf, sizeof(buf), NULL), 0);
    ASSERT_EQ(store_lease_get(t.s, 9, &l), STORE_ELEASENOTFOUND);
    ASSERT_EQ(lease_req(&t, STORE_REQ_LEASE_REVOKE, 9, 0, &err, &rev), 0);
    ASSERT_EQ(err, STORE_ELEASENOTFOUND);
    /* Deleting a leased key detaches it; revoking then changes nothing. */
    ASSERT_EQ(t_del(&t, "l/1", NULL), 0);
    ASSERT_EQ(store_lease_keys(t.s, 7, &kl), 0);
    ASSERT_EQ(kl.n_keys, 0);
    store_key_list_release(&kl);
    before = store_current_revision(t.s);
    ASSERT_EQ(lease_req(&t, STORE_REQ_LEASE_REVOKE, 7, 0, &err, &rev), 0);
    ASSERT_EQ(err, 0);
    ASSERT_EQ(rev, before);
    struct store_status st;
    ASSERT_EQ(store_status(t.s, &st), 0);
    ASSERT_EQ(st.n_leases, 0);
    t_store_close(&t);
}

/* ---------------------------------------------------------------- events */

/* Every lease request's result names its lease (and the TTLs), so the
 * lease service needs nothing but the result. */
static int lease_res(struct t_store *t, int type, int64_t id, int64_t ttl,
                     struct store_result **res) {
    struct store_request r = {0};
    r.type = (uint8_t)type;
    if (type == STORE_REQ_LEASE_GRANT) {
        r.u.lease_grant.id = id;
        r.u.lease_grant.ttl = ttl;
    } else if (type == STORE_REQ_LEASE_REVOKE) {
        r.u.lease_revoke.id = id;
    } else {
        r.u.lease_checkpoint.id = id;
        r.u.lease_checkpoint.remaining_ttl = ttl;
    }
    return t_apply(t, &r, res);
}

BOTH(lease_results_name_the_lease) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, rocks, 0), 0);
    struct store_result *res;
    ASSERT_EQ(lease_res(&t, STORE_REQ_LEASE_GRANT, 0x1234567890abcdefll, 30, &res), 0);
    ASSERT_EQ(res->err, 0);
    ASSERT_EQ(res->type, STORE_REQ_LEASE_GRANT);
    ASSERT_EQ(res->lease_id, 0x1234567890abcdefll);
    ASSERT_EQ(res->lease_ttl, 30);
    store_result_free(res);
    ASSERT_EQ(lease_res(&t, STORE_REQ_LEASE_GRANT, 77, 60, &res), 0);
    store_result_free(res);

    ASSERT_EQ(lease_res(&t, STORE_REQ_LEASE_CHECKPOINT, 77, 12, &res), 0);
    ASSERT_EQ(res->err, 0);
    ASSERT_EQ(res->type, STORE_REQ_LEASE_CHECKPOINT);
    ASSERT_EQ(res->lease_id, 77);
    ASSERT_EQ(res->lease_ttl, 60); /* the granted TTL, not the remaining one */
    ASSERT_EQ(res->lease_remaining_ttl, 12);
    store_result_free(res);
    /* A checkpoint of an unknown lease is ignored: no lease named. */
    ASSERT_EQ(lease_res(&t, STORE_REQ_LEASE_CHECKPOINT, 78, 5, &res), 0);
    ASSERT_EQ(res->err, 0);
    ASSERT_EQ(res->lease_id, 0);
    ASSERT_EQ(res->lease_ttl, 0);
    ASSERT_EQ(res->lease_remaining_ttl, 0);
    store_result_free(res);

    /* Revoking, with and without attached keys. */
    struct store_op p = t_op_put("lr/1", "x");
    p.u.put.lease = 77;
    int err;
    ASSERT_EQ(t_do(&t, p, &err, NULL), 0);
    ASSERT_EQ(err, 0);
    ASSERT_EQ(lease_res(&t, STORE_REQ_LEASE_REVOKE, 77, 0, &res), 0);
    ASSERT_EQ(res->err, 0);
    ASSERT_EQ(res->type, STORE_REQ_LEASE_REVOKE);
    ASSERT_EQ(res->lease_id, 77);
    ASSERT_EQ(res->lease_ttl, 60);
    ASSERT_EQ(res->n_events, 1);
    store_result_free(res);
    ASSERT_EQ(lease_res(&t, STORE_REQ_LEASE_REVOKE, 0x1234567890abcdefll, 0, &res), 0);
    ASSERT_EQ(res->err, 0);
    ASSERT_EQ(res->lease_id, 0x1234567890abcdefll);
    ASSERT_EQ(res->lease_ttl, 30);
    ASSERT_EQ(res->n_events, 0);
    store_result_free(res);
    /* A failed revoke names nothing. */
    ASSERT_EQ(lease_res(&t, STORE_REQ_LEASE_REVOKE, 77, 0, &res), 0);
    ASSERT_EQ(res->err, STORE_ELEASENOTFOUND);
    ASSERT_EQ(res->lease_id, 0);
    ASSERT_EQ(res->lease_ttl, 0);
    store_result_free(res);
    t_store_close(&t);
}

BOTH(events) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, rocks, 0), 0);
    ASSERT_EQ(t_put(&t, "w/a", "1"), 0); /* 2 */
    ASSERT_EQ(t_put(&t, "x", "1"), 0);   /* 3 */
    ASSERT_EQ(t_put(&t, "w/a", "2"), 0); /* 4 */
    struct store_op ops[2] = {t_op_put("w/b", "1"), t_op_put("w/c", "1")};
    struct store_request r = t_txn(NULL, 0, ops, 2, NULL, 0);
    struct store_result *res;
    ASSERT_EQ(t_apply(&t, &r, &res), 0); /* 5: two events */
    store_result_free(res);
    ASSERT_EQ(t_del(&t, "w/", "w0"), 0); /* 6: three deletes */

    struct store_event_batch b;
    ASSERT_EQ(store_events(t.s, 1, "w/", 2, "w0", 2, 1000, true, &b), 0);
    ASSERT_EQ(b.n_events, 7);
    ASSERT_EQ(b.next_rev, 7);
    ASSERT_EQ(b.events[1].kv.mod_revision, 4);
    ASSERT(b.events[1].has_prev_kv);
    ASSERT_MEM_EQ(b.events[1].prev_kv.value.base, "1", 1);
    ASSERT_EQ(b.events[4].type, STORE_EVENT_DELETE);
    ASSERT_EQ(b.events[4].kv.mod_revision, 6);
    ASSERT(b.events[4].has_prev_kv);
    ASSERT_EQ(b.events[4].prev_kv.version, 2);
    store_event_batch_release(&b);

    /* Whole revisions: with max 2, revision 2 and 4 (x at 3 filtered). */
    ASSERT_EQ(store_events(t.s, 1, "w/", 2, "w0", 2, 2, false, &b), 0);
    ASSERT_EQ(b.n_events, 2);
    ASSERT_EQ(b.next_rev, 5);
    store_event_batch_release(&b);
    /* Revision 5 has 2 events: returned whole with max 1. */
    ASSERT_EQ(store_events(t.s, 5, "w/", 2, "w0", 2, 1, false, &b), 0);
    ASSERT_EQ(b.n_events, 2);
    ASSERT_EQ(b.next_rev, 6);
    store_event_batch_release(&b);
    /* One key; all keys; past the end. */
    ASSERT_EQ(store_events(t.s, 1, "x", 1, NULL, 0, 100, false, &b), 0);
    ASSERT_EQ(b.n_events, 1);
    store_event_batch_release(&b);
    ASSERT_EQ(store_events(t.s, 1, "", 0, "", 1, 100, false, &b), 0);
    ASSERT_EQ(b.n_events, 8);
    store_event_batch_release(&b);
    ASSERT_EQ(store_events(t.s, 7, "", 0, "", 1, 100, false, &b), 0);
    ASSERT_EQ(b.n_events, 0);
    ASSERT_EQ(b.next_rev, 7);
    store_event_batch_release(&b);
    t_store_close(&t);
}

/* ---------------------------------------------------------------- quota */

BOTH(quota) {
    struct t_store t;
    /* Room for a few dozen small puts. */
    ASSERT_EQ(t_store_open(&t, rocks, 4096), 0);
    char key[32];
    int i, err = 0;
    for (i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "q/%04d", i);
        err = t_put(&t, key, "0123456789012345678901234567890123456789");
        if (err != 0) break;
    }
    ASSERT_EQ(err, STORE_ENOSPACE);
    ASSERT_GT(i, 10);
    int64_t rev = store_current_revision(t.s);
    struct store_status st;
    ASSERT_EQ(store_status(t.s, &st), 0);
    ASSERT_LE(st.logical_bytes, 4096);
    /* The rejected put changed nothing; the proposer's check agrees. */
    struct store_op op = t_op_put("q/x", "y");
    struct store_request r = t_txn(NULL, 0, &op, 1, NULL, 0);
    void *buf;
    size_t len;
    ASSERT_EQ(store_request_encode_alloc(&r, &buf, &len), 0);
    ASSERT_EQ(store_request_check(t.s, buf, len), STORE_ENOSPACE);
    free(buf);
    /* Deletes and reads still work; lease grants do not once over. */
    ASSERT_EQ(t_del(&t, "q/0000", NULL), 0);
    ASSERT_EQ(store_current_revision(t.s), rev + 1);
    char v[64];
    ASSERT_EQ(t_get(&t, "q/0001", 0, v, sizeof(v), NULL), 0);
    /* Compaction frees history, and puts work again. */
    r.type = STORE_REQ_COMPACT;
    r.u.compact.revision = store_current_revision(t.s);
    struct store_result *res;
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, 0);
    store_result_free(res);
    for (int j = 1; j < 8; j++) {
        snprintf(key, sizeof(key), "q/%04d", j);
        ASSERT_EQ(t_del(&t, key, NULL), 0);
    }
    r.u.compact.revision = store_current_revision(t.s);
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    ASSERT_EQ(res->err, 0);
    store_result_free(res);
    ASSERT_EQ(t_put(&t, "q/new", "v"), 0);
    t_store_close(&t);
}

/* ---------------------------------------------------------------- codec */

TEST(codec_roundtrip_and_truncation) {
    struct store_compare c = {0};
    c.target = STORE_CMP_MOD;
    c.result = STORE_CMP_GREATER;
    c.key = t_str("k");
    c.range_end = t_str("l");
    c.number = -5;
    c.value = t_str("vv");
    struct store_op inner[2] = {t_op_put("p", "v"), t_op_range("a", "b")};
    inner[0].u.put.lease = 77;
    inner[0].u.put.prev_kv = true;
    inner[0].u.put.mode = 0755;
    inner[0].u.put.mtime_ns = -1;
    inner[1].u.range.limit = 10;
    inner[1].u.range.sort_order = STORE_SORT_DESCEND;
    inner[1].u.range.sort_target = STORE_SORT_VALUE;
    inner[1].u.range.keys_only = true;
    inner[1].u.range.max_create_revision = 99;
    struct store_op ops[2] = {t_op_del("d", "\0"), {0}};
    ops[1].type = STORE_OP_TXN;
    ops[1].u.txn.compare = &c;
    ops[1].u.txn.n_compare = 1;
    ops[1].u.txn.success = inner;
    ops[1].u.txn.n_success = 2;
    struct store_request r = t_txn(&c, 1, ops, 2, inner, 1);
    r.id = 0x1122334455667788ull;
    void *buf;
    size_t len;
    ASSERT_EQ(store_request_encode_alloc(&r, &buf, &len), 0);
    ASSERT_EQ(len, store_request_encoded_size(&r));
    struct store_request d;
    ASSERT_EQ(store_request_decode(buf, len, &d), 0);
    ASSERT_U64_EQ(d.id, r.id);
    ASSERT_EQ(d.u.txn.n_success, 2);
    ASSERT_EQ(d.u.txn.success[1].u.txn.success[0].u.put.lease, 77);
    ASSERT_EQ(d.u.txn.success[1].u.txn.success[1].u.range.max_create_revision, 99);
    void *buf2;
    size_t len2;
    ASSERT_EQ(store_request_encode_alloc(&d, &buf2, &len2), 0);
    ASSERT_EQ(len2, len);
    ASSERT_MEM_EQ(buf, buf2, len);
    store_request_release(&d);
    free(buf2);
    /* Every truncation and every single-byte corruption decodes cleanly
     * (an error or a request), never out of bounds (ASan checks). */
    for (size_t i = 0; i < len; i++) {
        int rc = store_request_decode(buf, i, &d);
        ASSERT_NE(rc, 0);
        store_request_release(&d);
    }
    unsigned char *m = malloc(len);
    for (size_t i = 0; i < len; i++) {
        memcpy(m, buf, len);
        m[i] ^= 0xA5;
        (void)store_request_decode(m, len, &d);
        store_request_release(&d);
    }
    free(m);
    free(buf);

    /* Depth limit. */
    struct store_op *deep = t_alloc(sizeof(*deep) * (STORE_TXN_DEPTH_MAX + 2));
    for (unsigned i = 0; i <= STORE_TXN_DEPTH_MAX; i++) {
        deep[i].type = STORE_OP_TXN;
        deep[i].u.txn.success = &deep[i + 1];
        deep[i].u.txn.n_success = 1;
    }
    deep[STORE_TXN_DEPTH_MAX + 1] = t_op_put("k", "v");
    r = t_txn(NULL, 0, deep, 1, NULL, 0);
    ASSERT_EQ(store_request_encode_alloc(&r, &buf, &len), STORE_EINVAL);
    r = t_txn(NULL, 0, &deep[2], 1, NULL, 0);
    ASSERT_EQ(store_request_encode_alloc(&r, &buf, &len), 0);
    ASSERT_EQ(store_request_decode(buf, len, &d), 0);
    store_request_release(&d);
    free(buf);
    t_free_all();
}

/* ---------------------------------------------------------------- checkpoint */

TEST(checkpoint_and_reopen) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, true, 0), 0);
    fill_abc(&t);
    ASSERT_EQ(store_apply_noop(t.s, t.index + 1), 0);
    t.index++;
    char *cp = malloc(strlen(t.tmp) + 8);
    sprintf(cp, "%s/cp", t.tmp);
    struct raft_snapshot_meta meta;
    uint64_t applied = store_applied_index(t.s);
    /* The raft log holds the applied entries, as in a running node. */
    struct raft_entry *ents = calloc(applied, sizeof(*ents));
    for (uint64_t i = 0; i < applied; i++) {
        ents[i].index = i + 1;
        ents[i].term = 1 + i / 4;
    }
    ASSERT_EQ(store_raft_save(t.s, NULL, ents, applied, true), 0);
    free(ents);
    ASSERT_EQ(store_checkpoint(t.s, cp, &meta), 0);
    ASSERT_U64_EQ(meta.index, applied);
    ASSERT_U64_EQ(meta.term, 1 + (applied - 1) / 4);
    ASSERT_EQ(store_checkpoint(t.s, cp, NULL), STORE_EIO); /* exists */
    ASSERT_EQ(t_put(&t, "after", "1"), 0);

    struct store_options o;
    store_options_init(&o);
    o.data_dir = cp;
    struct store *s2;
    ASSERT_EQ(store_open(&o, &s2, NULL, 0), 0);
    ASSERT_EQ(store_current_revision(s2), 8);
    ASSERT_U64_EQ(store_applied_index(s2), applied);
    uint32_t h1, h2;
    ASSERT_EQ(store_hash(s2, 0, &h2, NULL), 0);
    ASSERT_EQ(store_hash(t.s, 8, &h1, NULL), 0);
    ASSERT_EQ(h1, h2);
    /* A follower installing it keeps its own hard state. */
    struct raft_hard_state hs = {9, 3, 0};
    ASSERT_EQ(store_raft_install_snapshot(s2, &meta, &hs), 0);
    struct raft_storage *rs = store_raft_storage(s2);
    uint64_t fi, li, term;
    struct raft_conf_state cs;
    ASSERT_EQ(rs->first_index(rs->data, &fi), 0);
    ASSERT_EQ(rs->last_index(rs->data, &li), 0);
    ASSERT_U64_EQ(fi, applied + 1);
    ASSERT_U64_EQ(li, applied);
    ASSERT_EQ(rs->term(rs->data, applied, &term), 0);
    ASSERT_U64_EQ(term, meta.term);
    struct raft_hard_state hs2;
    ASSERT_EQ(rs->initial_state(rs->data, &hs2, &cs), 0);
    ASSERT_U64_EQ(hs2.term, 9);
    ASSERT_U64_EQ(hs2.vote, 3);
    ASSERT_U64_EQ(hs2.commit, applied);
    meta.index++;
    ASSERT_EQ(store_raft_install_snapshot(s2, &meta, &hs), STORE_EINVAL);
    store_close(s2);
    free(cp);
    t_store_close(&t);
}

/* ---------------------------------------------------------------- readers */

/* Ten accounts always sum to 1000; each txn moves units between two of
 * them. Readers must never see a partial txn. */
#define ACCOUNTS 10

struct reader_arg {
    struct store *s;
    volatile int stop;
    int bad;
    long reads;
};

static void *reader_main(void *p) {
    struct reader_arg *a = p;
    int64_t last_rev = 0;
    while (!a->stop) {
        struct store_range_req q = {0};
        q.key = t_str("acct/");
        q.range_end = t_str("acct0");
        struct store_range_result r;
        if (store_range(a->s, &q, &r) != 0) {
            a->bad++;
            break;
        }
        long sum = 0;
        for (size_t i = 0; i < r.n_kvs; i++) {
            char buf[32];
            size_t n = r.kvs[i].value.len < 31 ? r.kvs[i].value.len : 31;
            memcpy(buf, r.kvs[i].value.base, n);
            buf[n] = 0;
            sum += atol(buf);
        }
        if ((r.n_kvs != 0 && (r.n_kvs != ACCOUNTS || sum != 1000)) || r.revision < last_rev)
            a->bad++;
        last_rev = r.revision;
        store_range_result_release(&r);
        a->reads++;
    }
    return NULL;
}

BOTH(concurrent_readers) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, rocks, 0), 0);
    long bal[ACCOUNTS];
    struct store_op ops[ACCOUNTS];
    char keys[ACCOUNTS][16], vals[ACCOUNTS][16];
    for (int i = 0; i < ACCOUNTS; i++) {
        bal[i] = 100;
        snprintf(keys[i], 16, "acct/%d", i);
        snprintf(vals[i], 16, "%ld", bal[i]);
        ops[i] = t_op_put(keys[i], vals[i]);
    }
    struct store_request r = t_txn(NULL, 0, ops, ACCOUNTS, NULL, 0);
    struct store_result *res;
    ASSERT_EQ(t_apply(&t, &r, &res), 0);
    store_result_free(res);
    struct reader_arg arg = {t.s, 0, 0, 0};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, reader_main, &arg);
    uint64_t seed = harness_seed;
    for (int n = 0; n < 2000; n++) {
        int from = (int)t_below(&seed, ACCOUNTS), to = (int)t_below(&seed, ACCOUNTS);
        if (from == to) continue;
        long amt = (long)t_below(&seed, (uint64_t)bal[from] + 1);
        bal[from] -= amt;
        bal[to] += amt;
        snprintf(vals[0], 16, "%ld", bal[from]);
        snprintf(vals[1], 16, "%ld", bal[to]);
        struct store_op mv[2] = {t_op_put(keys[from], vals[0]), t_op_put(keys[to], vals[1])};
        r = t_txn(NULL, 0, mv, 2, NULL, 0);
        ASSERT_EQ(t_apply(&t, &r, &res), 0);
        ASSERT_EQ(res->err, 0);
        store_result_free(res);
        if (n % 500 == 499) {
            struct store_request c = {0};
            c.type = STORE_REQ_COMPACT;
            c.u.compact.revision = store_current_revision(t.s) - 10;
            ASSERT_EQ(t_apply(&t, &c, &res), 0);
            store_result_free(res);
        }
    }
    arg.stop = 1;
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    ASSERT_EQ(arg.bad, 0);
    ASSERT_GT(arg.reads, 0);
    t_store_close(&t);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
