/*
 * test_store_oom.c - out of memory everywhere in store/ over the in-memory
 * backend (raft/alloc.h).
 *
 * One scenario opens a store on a memdb and applies puts, a txn with
 * compares and both branches, prev_kv puts, a delete range, lease grant,
 * attach, checkpoint and revoke, and a compaction, reading after each
 * apply with store_range (sorted, limited, at an old revision),
 * store_events, the lease reads, store_hash and store_status. Every call's
 * outcome is folded into a digest, one per call.
 *
 * The scenario first runs without failure, counting its allocations (T),
 * then T more times failing allocation n in run n. A call that fails while
 * an allocation failed must return an error - never a wrong answer, and
 * never an apply that "succeeds" with a rejection (res->err) the other
 * replicas would not make - and, for an apply, leave the store unchanged
 * (same hash, revision, applied index and leases); the call is then
 * retried. Every call's digest must equal the failure-free run's.
 * LeakSanitizer checks that nothing leaked.
 */
#include "tests/unit/store/store_test.h"

#include "raft/alloc.h"

#define CALLS_MAX 256

struct run {
    struct store_memdb *memdb;
    struct store *s;
    uint64_t index;
    size_t n;                   /* calls made */
    uint64_t digest[CALLS_MAX]; /* per call */
    int errors;
    char err[256];
    unsigned enomem; /* calls that failed under injection */
};

static uint64_t mix(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static uint64_t mix_i(uint64_t h, int64_t v) {
    return mix(h, &v, sizeof v);
}

static uint64_t mix_kv(uint64_t h, const struct store_kv *kv) {
    h = mix(h, kv->key.base, kv->key.len);
    h = mix(h, kv->value.base, kv->value.len);
    h = mix_i(h, kv->create_revision);
    h = mix_i(h, kv->mod_revision);
    h = mix_i(h, kv->version);
    return mix_i(h, kv->lease);
}

static void fail(struct run *r, const char *what) {
    if (r->errors++ == 0) snprintf(r->err, sizeof r->err, "call %zu: %.200s", r->n, what);
}

static void record(struct run *r, uint64_t d) {
    if (r->n == CALLS_MAX) abort();
    r->digest[r->n++] = d;
}

/* What an apply may not change when it fails. */
struct state {
    uint32_t hash;
    int64_t compact;
    struct store_status st;
    size_t n_leases;
};

static void state_of(struct run *r, struct state *out) {
    memset(out, 0, sizeof *out);
    bool armed = qfs_alloc_fault.armed;
    qfs_alloc_fault.armed = false; /* looking neither fails nor counts */
    if (store_hash(r->s, 0, &out->hash, &out->compact) != 0) abort();
    if (store_status(r->s, &out->st) != 0) abort();
    out->st.db_bytes = 0;
    struct store_lease *ls = NULL;
    if (store_lease_list(r->s, &ls, &out->n_leases) != 0) abort();
    free(ls);
    qfs_alloc_fault.armed = armed;
}

/* True if this call's allocation failed (and it must be retried). */
static bool injected(long failed_before) {
    return qfs_alloc_failed() != failed_before;
}

static void apply(struct run *r, const struct store_request *req) {
    void *buf;
    size_t len;
    if (store_request_encode_alloc(req, &buf, &len) != 0) {
        /* Encoding is the driver's; it may fail too: retry. */
        r->enomem++;
        if (store_request_encode_alloc(req, &buf, &len) != 0) abort();
    }
    for (;;) {
        struct state before, after;
        state_of(r, &before);
        long f = qfs_alloc_failed();
        struct store_result *res = NULL;
        int rc = store_apply(r->s, r->index + 1, buf, len, &res);
        if (rc != 0 && injected(f)) {
            r->enomem++;
            state_of(r, &after);
            if (memcmp(&before, &after, sizeof before) != 0)
                fail(r, "store_apply failed and changed the store");
            if (res != NULL) fail(r, "store_apply failed and returned a result");
            continue;
        }
        if (rc != 0) {
            fail(r, store_strerror(rc));
            break;
        }
        r->index++;
        uint64_t d = mix_i(1, res->err);
        d = mix_i(d, res->revision);
        d = mix_i(d, res->type);
        d = mix_i(d, res->lease_id);
        d = mix_i(d, res->txn.succeeded);
        d = mix_i(d, (int64_t)res->txn.n_results);
        for (size_t i = 0; i < res->txn.n_results; i++) {
            const struct store_op_result *o = &res->txn.results[i];
            d = mix_i(d, o->type);
            if (o->type == STORE_OP_RANGE)
                for (size_t k = 0; k < o->u.range.n_kvs; k++) d = mix_kv(d, &o->u.range.kvs[k]);
            if (o->type == STORE_OP_PUT && o->u.put.has_prev_kv) d = mix_kv(d, &o->u.put.prev_kv);
            if (o->type == STORE_OP_DELETE_RANGE) d = mix_i(d, o->u.delete_range.deleted);
        }
        d = mix_i(d, (int64_t)res->n_events);
        for (size_t i = 0; i < res->n_events; i++) {
            d = mix_i(d, res->events[i].type);
            d = mix_kv(d, &res->events[i].kv);
            if (res->events[i].has_prev_kv) d = mix_kv(d, &res->events[i].prev_kv);
        }
        store_result_free(res);
        record(r, d);
        break;
    }
    free(buf);
}

/* A read retried while it fails because of the injection. */
#define READ(r, call_rc, on_ok)                                                                    \
    do {                                                                                           \
        for (;;) {                                                                                 \
            long f_ = qfs_alloc_failed();                                                          \
            int rc_ = (call_rc);                                                                   \
            if (rc_ != 0 && injected(f_)) {                                                        \
                (r)->enomem++;                                                                     \
                continue;                                                                          \
            }                                                                                      \
            if (rc_ != 0) {                                                                        \
                fail(r, #call_rc);                                                                 \
                break;                                                                             \
            }                                                                                      \
            on_ok;                                                                                 \
            break;                                                                                 \
        }                                                                                          \
    } while (0)

static void reads(struct run *r, int64_t old_rev) {
    struct store_range_result rr;
    struct store_range_req q;
    memset(&q, 0, sizeof q);
    q.key = t_str("a");
    q.range_end = t_str("z");
    q.sort_order = STORE_SORT_DESCEND;
    q.sort_target = STORE_SORT_MOD;
    q.limit = 3;
    for (int pass = 0; pass < 2; pass++) {
        q.revision = pass == 0 ? 0 : old_rev;
        READ(r, store_range(r->s, &q, &rr), {
            uint64_t d = mix_i(2, rr.count);
            d = mix_i(d, rr.more);
            for (size_t i = 0; i < rr.n_kvs; i++) d = mix_kv(d, &rr.kvs[i]);
            store_range_result_release(&rr);
            record(r, d);
        });
    }
    struct store_event_batch eb;
    int64_t from = store_compact_revision(r->s) + 1;
    READ(r, store_events(r->s, from, "", 0, "\0", 1, 100, true, &eb), {
        uint64_t d = mix_i(3, eb.next_rev);
        for (size_t i = 0; i < eb.n_events; i++) {
            d = mix_i(d, eb.events[i].type);
            d = mix_kv(d, &eb.events[i].kv);
            if (eb.events[i].has_prev_kv) d = mix_kv(d, &eb.events[i].prev_kv);
        }
        store_event_batch_release(&eb);
        record(r, d);
    });
    struct store_lease *ls;
    size_t nl;
    READ(r, store_lease_list(r->s, &ls, &nl), {
        uint64_t d = mix_i(4, (int64_t)nl);
        for (size_t i = 0; i < nl; i++) d = mix_i(mix_i(d, ls[i].id), ls[i].remaining_ttl);
        free(ls);
        record(r, d);
    });
    struct store_key_list kl;
    int krc = 0;
    READ(r, (krc = store_lease_keys(r->s, 7, &kl)) == STORE_ELEASENOTFOUND ? 0 : krc, {
        uint64_t d = mix_i(5, krc);
        if (krc == 0) {
            for (size_t i = 0; i < kl.n_keys; i++) d = mix(d, kl.keys[i].base, kl.keys[i].len);
            store_key_list_release(&kl);
        }
        record(r, d);
    });
    uint32_t hash;
    int64_t crev;
    READ(r, store_hash(r->s, 0, &hash, &crev), record(r, mix_i(mix_i(6, hash), crev)));
}

static struct store_request put_req(struct store_op *op, const char *k, const char *v,
                                    int64_t lease) {
    *op = t_op_put(k, v);
    op->u.put.lease = lease;
    op->u.put.prev_kv = true;
    return t_txn(NULL, 0, op, 1, NULL, 0);
}

static void scenario(struct run *r) {
    for (;;) {
        r->memdb = store_memdb_new();
        if (r->memdb != NULL) break;
        r->enomem++;
    }
    struct store_options o;
    store_options_init(&o);
    o.memdb = r->memdb;
    char err[256];
    int rc;
    while ((rc = store_open(&o, &r->s, err, sizeof err)) != 0) {
        if (rc != STORE_ENOMEM) {
            fail(r, err);
            return;
        }
        r->enomem++;
    }
    struct store_op op;
    struct store_request req;
    char k[16], v[32];
    for (int i = 0; i < 12; i++) {
        snprintf(k, sizeof k, "k%02d", i % 7);
        snprintf(v, sizeof v, "value-%d", i);
        req = put_req(&op, k, v, 0);
        apply(r, &req);
    }
    int64_t old_rev = store_current_revision(r->s) - 4;
    reads(r, old_rev);

    /* A txn: compares on value and version, several ops per branch. */
    struct store_compare cmp[2];
    memset(cmp, 0, sizeof cmp);
    cmp[0].target = STORE_CMP_VALUE;
    cmp[0].result = STORE_CMP_EQUAL;
    cmp[0].key = t_str("k01");
    cmp[0].value = t_str("value-8");
    cmp[1].target = STORE_CMP_VERSION;
    cmp[1].result = STORE_CMP_GREATER;
    cmp[1].key = t_str("k02");
    cmp[1].number = 1;
    struct store_op succ[3] = {t_op_put("t1", "yes"), t_op_del("k03", "k05"), t_op_range("k", "l")};
    struct store_op other[2] = {t_op_put("t2", "no"), t_op_range("k00", NULL)};
    for (int i = 0; i < 2; i++) {
        if (i == 1) cmp[0].value = t_str("nope");
        req = t_txn(cmp, 2, succ, 3, other, 2);
        apply(r, &req);
    }
    reads(r, old_rev);

    /* Leases: grant, attach keys, checkpoint, revoke (deletes the keys). */
    memset(&req, 0, sizeof req);
    req.type = STORE_REQ_LEASE_GRANT;
    req.u.lease_grant.id = 7;
    req.u.lease_grant.ttl = 60;
    apply(r, &req);
    for (int i = 0; i < 3; i++) {
        snprintf(k, sizeof k, "leased%d", i);
        req = put_req(&op, k, "v", 7);
        apply(r, &req);
    }
    memset(&req, 0, sizeof req);
    req.type = STORE_REQ_LEASE_CHECKPOINT;
    req.u.lease_checkpoint.id = 7;
    req.u.lease_checkpoint.remaining_ttl = 30;
    apply(r, &req);
    reads(r, old_rev);
    memset(&req, 0, sizeof req);
    req.type = STORE_REQ_LEASE_REVOKE;
    req.u.lease_revoke.id = 7;
    apply(r, &req);
    reads(r, old_rev);

    /* Compaction, then more writes over the compacted history. */
    memset(&req, 0, sizeof req);
    req.type = STORE_REQ_COMPACT;
    req.u.compact.revision = old_rev + 2;
    apply(r, &req);
    for (int i = 0; i < 4; i++) {
        snprintf(v, sizeof v, "after-%d", i);
        req = put_req(&op, "k00", v, 0);
        apply(r, &req);
    }
    reads(r, old_rev + 2);
}

static void run_free(struct run *r) {
    if (r->s) store_close(r->s);
    if (r->memdb) store_memdb_free(r->memdb);
    r->s = NULL;
    r->memdb = NULL;
}

static struct run ref;

TEST(store_scenario_reference) {
    memset(&ref, 0, sizeof ref);
    qfs_alloc_fail_at(0);
    scenario(&ref);
    long total = qfs_alloc_count();
    qfs_alloc_fail_off();
    if (ref.errors) fprintf(stderr, "  %s\n", ref.err);
    ASSERT_EQ(ref.errors, 0);
    ASSERT_GT(ref.n, 40);
    run_free(&ref);
    printf("  %ld allocations, %zu calls in the scenario\n", total, ref.n);
}

TEST(store_every_allocation_fails_once) {
    static struct run r;
    memset(&r, 0, sizeof r);
    qfs_alloc_fail_at(0);
    scenario(&r);
    long total = qfs_alloc_count();
    run_free(&r);
    long only = getenv("OOM_ONLY") ? atol(getenv("OOM_ONLY")) : 0;
    unsigned reported = 0;
    for (long n = only ? only : 1; n <= (only ? only : total); n++) {
        memset(&r, 0, sizeof r);
        qfs_alloc_fail_at(n);
        scenario(&r);
        long failed = qfs_alloc_failed();
        qfs_alloc_fail_off();
        if (r.errors == 0 && r.n != ref.n) fail(&r, "a different number of calls");
        for (size_t i = 0; r.errors == 0 && i < r.n; i++)
            if (r.digest[i] != ref.digest[i]) {
                r.n = i;
                fail(&r, "an answer differs from the failure-free run");
            }
        if (r.errors) fprintf(stderr, "  allocation %ld of %ld: %s\n", n, total, r.err);
        run_free(&r);
        ASSERT_EQ(r.errors, 0);
        ASSERT_EQ(failed, 1);
        if (r.enomem) reported++;
    }
    printf("  %ld runs, %u with a failed call retried\n", total, reported);
}

/* The memdb commit used to assert when it ran out of memory halfway through
 * a batch. Now the batch is all or nothing: a txn writing several new keys
 * either applies whole or fails with the store unchanged. */
TEST(store_memdb_commit_is_all_or_nothing) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, false, 0), 0);
    ASSERT_EQ(t_put(&t, "base", "v"), 0);
    struct store_op ops[6] = {t_op_put("n1", "1"), t_op_put("n2", "2"),   t_op_put("n3", "3"),
                              t_op_put("n4", "4"), t_op_put("base", "w"), t_op_put("n5", "5")};
    struct store_request req = t_txn(NULL, 0, ops, 6, NULL, 0);
    void *buf;
    size_t len;
    ASSERT_EQ(store_request_encode_alloc(&req, &buf, &len), 0);
    int failures = 0;
    for (long n = 1;; n++) {
        uint32_t h0, h1;
        ASSERT_EQ(store_hash(t.s, 0, &h0, NULL), 0);
        int64_t rev0 = store_current_revision(t.s);
        struct store_result *res = NULL;
        qfs_alloc_fail_at(n);
        int rc = store_apply(t.s, t.index + 1, buf, len, &res);
        long failed = qfs_alloc_failed();
        qfs_alloc_fail_off();
        if (rc == 0) {
            ASSERT_EQ(failed, 0);
            ASSERT_EQ(res->err, 0);
            store_result_free(res);
            break;
        }
        failures++;
        ASSERT_EQ(failed, 1);
        ASSERT(res == NULL);
        ASSERT_EQ(store_hash(t.s, 0, &h1, NULL), 0);
        ASSERT_EQ(h0, h1);
        ASSERT_EQ(store_current_revision(t.s), rev0);
        char v[8];
        ASSERT_EQ(t_get(&t, "n1", 0, v, sizeof v, NULL), 1);
        ASSERT_EQ(t_get(&t, "n5", 0, v, sizeof v, NULL), 1);
    }
    free(buf);
    t.index++;
    char v[8];
    ASSERT_EQ(t_get(&t, "n5", 0, v, sizeof v, NULL), 0);
    ASSERT_STR_EQ(v, "5");
    ASSERT_GT(failures, 10);
    t_store_close(&t);
}

/* A memdb iterator out of memory used to assert; now it ends with an error
 * status, and the read reports it. */
TEST(store_memdb_iterator_enomem_is_an_error) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, false, 0), 0);
    char k[8];
    for (int i = 0; i < 20; i++) {
        snprintf(k, sizeof k, "r%02d", i);
        ASSERT_EQ(t_put(&t, k, "value"), 0);
    }
    struct store_range_req q;
    memset(&q, 0, sizeof q);
    q.key = t_str("r");
    q.range_end = t_str("s");
    int errors = 0;
    for (long n = 1;; n++) {
        struct store_range_result rr;
        qfs_alloc_fail_at(n);
        int rc = store_range(t.s, &q, &rr);
        long failed = qfs_alloc_failed();
        qfs_alloc_fail_off();
        if (failed == 0) {
            ASSERT_EQ(rc, 0);
            ASSERT_EQ(rr.n_kvs, 20);
            store_range_result_release(&rr);
            break;
        }
        ASSERT_NE(rc, 0);
        errors++;
    }
    ASSERT_GT(errors, 20);
    t_store_close(&t);
}

/* Compaction stepped over an iterator error after a Next (the following
 * seek cleared it), leaving a superseded version behind: the hash then
 * differed from a replica's. Each failed compaction must now change
 * nothing, and the one that succeeds must equal a compaction that never
 * failed. */
TEST(store_compaction_enomem_keeps_replicas_equal) {
    struct t_store t, ref_t;
    ASSERT_EQ(t_store_open(&t, false, 0), 0);
    ASSERT_EQ(t_store_open(&ref_t, false, 0), 0);
    char v[16];
    for (int i = 0; i < 12; i++) {
        snprintf(v, sizeof v, "v%d", i);
        ASSERT_EQ(t_put(&t, i % 2 ? "a" : "b", v), 0);
        ASSERT_EQ(t_put(&ref_t, i % 2 ? "a" : "b", v), 0);
    }
    ASSERT_EQ(t_del(&t, "b", NULL), 0);
    ASSERT_EQ(t_del(&ref_t, "b", NULL), 0);
    struct store_request req;
    memset(&req, 0, sizeof req);
    req.type = STORE_REQ_COMPACT;
    req.u.compact.revision = store_current_revision(t.s) - 1;
    struct store_result *res = NULL;
    ASSERT_EQ(t_apply(&ref_t, &req, &res), 0);
    store_result_free(res);
    uint32_t want;
    ASSERT_EQ(store_hash(ref_t.s, 0, &want, NULL), 0);
    void *buf;
    size_t len;
    ASSERT_EQ(store_request_encode_alloc(&req, &buf, &len), 0);
    uint32_t h0;
    ASSERT_EQ(store_hash(t.s, 0, &h0, NULL), 0);
    for (long n = 1;; n++) {
        res = NULL;
        qfs_alloc_fail_at(n);
        int rc = store_apply(t.s, t.index + 1, buf, len, &res);
        long failed = qfs_alloc_failed();
        qfs_alloc_fail_off();
        if (rc == 0) {
            ASSERT_EQ(res->err, 0);
            store_result_free(res);
            if (failed == 0) break;
            /* An allocation failed and the apply succeeded: it must not
             * have cost a correct result. */
            uint32_t h;
            ASSERT_EQ(store_hash(t.s, 0, &h, NULL), 0);
            ASSERT_EQ(h, want);
            break;
        }
        uint32_t h;
        ASSERT_EQ(store_hash(t.s, 0, &h, NULL), 0);
        ASSERT_EQ(h, h0);
    }
    free(buf);
    uint32_t got;
    ASSERT_EQ(store_hash(t.s, 0, &got, NULL), 0);
    ASSERT_EQ(got, want);
    t_store_close(&t);
    t_store_close(&ref_t);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
