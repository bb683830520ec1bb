/*
 * test_store_raftlog.c - the Raft log storage as raft.h documents it:
 * first/last index, term, entries with byte limits, suffix overwrite, hard
 * state, compaction, bootstrap, snapshot metadata and configuration as of
 * the applied index, the cluster blob; everything again after reopening.
 * Runs on the in-memory database and on RocksDB.
 */
#include "tests/unit/store/store_test.h"

#define BOTH(name)                                                                                 \
    static void name(bool rocks);                                                                  \
    TEST(name##_mem) {                                                                             \
        name(false);                                                                               \
    }                                                                                              \
    TEST(name##_rocks) {                                                                           \
        name(true);                                                                                \
    }                                                                                              \
    static void name(bool rocks)

static uint64_t first_i(struct raft_storage *rs) {
    uint64_t i = 0;
    if (rs->first_index(rs->data, &i) != 0) return UINT64_MAX;
    return i;
}

static uint64_t last_i(struct raft_storage *rs) {
    uint64_t i = 0;
    if (rs->last_index(rs->data, &i) != 0) return UINT64_MAX;
    return i;
}

static uint64_t term_of(struct raft_storage *rs, uint64_t i, int *rc) {
    uint64_t t = 0;
    *rc = rs->term(rs->data, i, &t);
    return t;
}

static void free_ents(struct raft_entry *e, size_t n) {
    for (size_t i = 0; i < n; i++) free((void *)e[i].data.base);
    free(e);
}

/* Entries lo..hi (inclusive) with term `term` and data "e<index>". */
static void make_ents(struct raft_entry *e, char (*data)[16], uint64_t lo, uint64_t hi,
                      uint64_t term) {
    for (uint64_t i = lo; i <= hi; i++) {
        struct raft_entry *x = &e[i - lo];
        memset(x, 0, sizeof(*x));
        x->index = i;
        x->term = term;
        x->type = (i % 5 == 0) ? RAFT_ENTRY_CONF_CHANGE : RAFT_ENTRY_NORMAL;
        snprintf(data[i - lo], 16, "e%llu", (unsigned long long)i);
        x->data.base = data[i - lo];
        x->data.len = strlen(data[i - lo]);
    }
}

BOTH(fresh_store) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, rocks, 0), 0);
    struct raft_storage *rs = store_raft_storage(t.s);
    ASSERT_U64_EQ(first_i(rs), 1);
    ASSERT_U64_EQ(last_i(rs), 0);
    int rc;
    ASSERT_U64_EQ(term_of(rs, 0, &rc), 0);
    ASSERT_EQ(rc, 0);
    ASSERT_EQ((term_of(rs, 1, &rc), rc), RAFT_EUNAVAILABLE);
    struct raft_hard_state hs;
    struct raft_conf_state cs;
    ASSERT_EQ(rs->initial_state(rs->data, &hs, &cs), 0);
    ASSERT_U64_EQ(hs.term, 0);
    ASSERT_EQ(cs.n_voters, 0);
    struct raft_entry *e;
    size_t n;
    ASSERT_EQ(rs->entries(rs->data, 1, 1, 100, &e, &n), 0);
    ASSERT_EQ(n, 0);
    ASSERT_EQ(rs->entries(rs->data, 1, 2, 100, &e, &n), RAFT_EUNAVAILABLE);

    /* Bootstrap a three-member configuration. */
    struct raft_conf_state boot = {0};
    boot.n_voters = 3;
    boot.voters[0] = 1;
    boot.voters[1] = 2;
    boot.voters[2] = 3;
    ASSERT_EQ(store_raft_bootstrap(t.s, &boot), 0);
    ASSERT_EQ(store_raft_bootstrap(t.s, &boot), STORE_EEXIST);
    ASSERT_EQ(t_store_reopen(&t), 0);
    rs = store_raft_storage(t.s);
    ASSERT_EQ(rs->initial_state(rs->data, &hs, &cs), 0);
    ASSERT_EQ(cs.n_voters, 3);
    ASSERT_U64_EQ(cs.voters[2], 3);
    struct raft_snapshot snap;
    ASSERT_EQ(rs->snapshot(rs->data, &snap), 0);
    ASSERT_U64_EQ(snap.meta.index, STORE_BOOTSTRAP_INDEX);
    ASSERT_U64_EQ(snap.meta.term, STORE_BOOTSTRAP_TERM);
    ASSERT_EQ(snap.meta.conf.n_voters, 3);
    /* The configuration is a snapshot the log starts after: a member that
     * joins with an empty log needs entry 1, which the leader no longer
     * has, so it gets a snapshot carrying the configuration. */
    ASSERT_U64_EQ(hs.term, STORE_BOOTSTRAP_TERM);
    ASSERT_U64_EQ(hs.vote, 0);
    ASSERT_U64_EQ(hs.commit, STORE_BOOTSTRAP_INDEX);
    ASSERT_U64_EQ(store_applied_index(t.s), STORE_BOOTSTRAP_INDEX);
    ASSERT_U64_EQ(first_i(rs), STORE_BOOTSTRAP_INDEX + 1);
    ASSERT_U64_EQ(last_i(rs), STORE_BOOTSTRAP_INDEX);
    ASSERT_U64_EQ(term_of(rs, STORE_BOOTSTRAP_INDEX, &rc), STORE_BOOTSTRAP_TERM);
    ASSERT_EQ(rc, 0);
    ASSERT_EQ((term_of(rs, 0, &rc), rc), RAFT_ECOMPACTED);
    ASSERT_EQ(rs->entries(rs->data, 1, 2, 100, &e, &n), RAFT_ECOMPACTED);
    /* The first leader's entry follows it. */
    struct raft_entry first[1];
    char fdata[1][16];
    make_ents(first, fdata, STORE_BOOTSTRAP_INDEX, STORE_BOOTSTRAP_INDEX, 1);
    ASSERT_EQ(store_raft_save(t.s, NULL, first, 1, true), STORE_EINVAL);
    make_ents(first, fdata, STORE_BOOTSTRAP_INDEX + 1, STORE_BOOTSTRAP_INDEX + 1, 2);
    ASSERT_EQ(store_raft_save(t.s, NULL, first, 1, true), 0);
    ASSERT_U64_EQ(last_i(rs), STORE_BOOTSTRAP_INDEX + 1);
    t_store_close(&t);
}

BOTH(append_overwrite_and_limits) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, rocks, 0), 0);
    struct raft_storage *rs = store_raft_storage(t.s);
    struct raft_entry e[10];
    char data[10][16];
    make_ents(e, data, 1, 10, 1);
    struct raft_hard_state hs = {1, 1, 0};
    ASSERT_EQ(store_raft_save(t.s, &hs, e, 10, true), 0);
    ASSERT_U64_EQ(first_i(rs), 1);
    ASSERT_U64_EQ(last_i(rs), 10);

    struct raft_entry *out;
    size_t n;
    ASSERT_EQ(rs->entries(rs->data, 1, 11, UINT64_MAX, &out, &n), 0);
    ASSERT_EQ(n, 10);
    for (size_t i = 0; i < n; i++) {
        ASSERT_U64_EQ(out[i].index, i + 1);
        ASSERT_U64_EQ(out[i].term, 1);
        ASSERT_EQ(out[i].type, e[i].type);
        ASSERT_EQ(out[i].data.len, e[i].data.len);
        ASSERT_MEM_EQ(out[i].data.base, e[i].data.base, e[i].data.len);
    }
    free_ents(out, n);
    /* Byte limit: "e1".."e9" are 2 bytes; 5 bytes fit two entries. */
    ASSERT_EQ(rs->entries(rs->data, 1, 11, 5, &out, &n), 0);
    ASSERT_EQ(n, 2);
    free_ents(out, n);
    /* At least one entry, whatever the limit. */
    ASSERT_EQ(rs->entries(rs->data, 3, 11, 0, &out, &n), 0);
    ASSERT_EQ(n, 1);
    ASSERT_U64_EQ(out[0].index, 3);
    free_ents(out, n);
    ASSERT_EQ(rs->entries(rs->data, 0, 3, 100, &out, &n), RAFT_ECOMPACTED);
    ASSERT_EQ(rs->entries(rs->data, 5, 12, 100, &out, &n), RAFT_EUNAVAILABLE);

    /* A new leader overwrites 6.. with a shorter suffix in term 2. */
    struct raft_entry e2[2];
    char d2[2][16];
    make_ents(e2, d2, 6, 7, 2);
    ASSERT_EQ(store_raft_save(t.s, NULL, e2, 2, true), 0);
    ASSERT_U64_EQ(last_i(rs), 7);
    int rc;
    ASSERT_U64_EQ(term_of(rs, 5, &rc), 1);
    ASSERT_U64_EQ(term_of(rs, 6, &rc), 2);
    ASSERT_U64_EQ(term_of(rs, 7, &rc), 2);
    ASSERT_EQ((term_of(rs, 8, &rc), rc), RAFT_EUNAVAILABLE);
    ASSERT_EQ(rs->entries(rs->data, 1, 11, UINT64_MAX, &out, &n), RAFT_EUNAVAILABLE);
    /* Appending where it does not connect is refused. */
    make_ents(e2, d2, 9, 10, 2);
    ASSERT_EQ(store_raft_save(t.s, NULL, e2, 2, true), STORE_EINVAL);
    make_ents(e2, d2, 8, 9, 3);
    ASSERT_EQ(store_raft_save(t.s, NULL, e2, 2, false), 0);
    ASSERT_U64_EQ(last_i(rs), 9);

    /* Hard state alone. */
    hs.term = 3;
    hs.vote = 2;
    hs.commit = 7;
    ASSERT_EQ(store_raft_save(t.s, &hs, NULL, 0, true), 0);

    ASSERT_EQ(t_store_reopen(&t), 0);
    rs = store_raft_storage(t.s);
    ASSERT_U64_EQ(last_i(rs), 9);
    ASSERT_U64_EQ(term_of(rs, 8, &rc), 3);
    struct raft_hard_state hs2;
    struct raft_conf_state cs;
    ASSERT_EQ(rs->initial_state(rs->data, &hs2, &cs), 0);
    ASSERT_U64_EQ(hs2.term, 3);
    ASSERT_U64_EQ(hs2.vote, 2);
    ASSERT_U64_EQ(hs2.commit, 7);
    ASSERT_EQ(rs->entries(rs->data, 6, 10, UINT64_MAX, &out, &n), 0);
    ASSERT_EQ(n, 4);
    ASSERT_MEM_EQ(out[3].data.base, "e9", 2);
    free_ents(out, n);
    t_store_close(&t);
}

BOTH(compaction_and_snapshot) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, rocks, 0), 0);
    struct raft_storage *rs = store_raft_storage(t.s);
    struct raft_entry e[10];
    char data[10][16];
    make_ents(e, data, 1, 10, 1);
    e[6].term = e[7].term = e[8].term = e[9].term = 2;
    ASSERT_EQ(store_raft_save(t.s, NULL, e, 10, true), 0);
    /* Apply 1..6: a put, noops and a conf change at 5. */
    ASSERT_EQ(t_put(&t, "k", "v"), 0);
    for (uint64_t i = 2; i <= 6; i++) {
        if (i == 5) {
            struct raft_conf_state cs = {0};
            cs.n_voters = 1;
            cs.voters[0] = 7;
            cs.n_learners = 1;
            cs.learners[0] = 8;
            ASSERT_EQ(store_apply_conf(t.s, i, &cs), 0);
        } else {
            ASSERT_EQ(store_apply_noop(t.s, i), 0);
        }
    }
    ASSERT_U64_EQ(store_applied_index(t.s), 6);
    ASSERT_EQ(store_raft_compact(t.s, 7), STORE_EINVAL); /* beyond applied */
    ASSERT_EQ(store_raft_compact(t.s, 4), 0);
    ASSERT_EQ(store_raft_compact(t.s, 2), 0); /* already compacted: no-op */
    ASSERT_U64_EQ(first_i(rs), 5);
    ASSERT_U64_EQ(last_i(rs), 10);
    int rc;
    ASSERT_U64_EQ(term_of(rs, 4, &rc), 1);
    ASSERT_EQ(rc, 0);
    ASSERT_EQ((term_of(rs, 3, &rc), rc), RAFT_ECOMPACTED);
    struct raft_entry *out;
    size_t n;
    ASSERT_EQ(rs->entries(rs->data, 4, 6, 100, &out, &n), RAFT_ECOMPACTED);
    ASSERT_EQ(rs->entries(rs->data, 5, 11, UINT64_MAX, &out, &n), 0);
    ASSERT_EQ(n, 6);
    free_ents(out, n);

    struct raft_snapshot snap;
    ASSERT_EQ(rs->snapshot(rs->data, &snap), 0);
    ASSERT_U64_EQ(snap.meta.index, 6);
    ASSERT_U64_EQ(snap.meta.term, 1);
    ASSERT_EQ(snap.meta.conf.n_voters, 1);
    ASSERT_U64_EQ(snap.meta.conf.voters[0], 7);
    ASSERT_U64_EQ(snap.meta.conf.learners[0], 8);

    ASSERT_EQ(store_apply_noop(t.s, 7), 0);
    ASSERT_EQ(store_raft_compact(t.s, 7), 0);
    ASSERT_EQ(t_store_reopen(&t), 0);
    rs = store_raft_storage(t.s);
    ASSERT_U64_EQ(first_i(rs), 8);
    ASSERT_U64_EQ(term_of(rs, 7, &rc), 2);
    ASSERT_EQ(rs->snapshot(rs->data, &snap), 0);
    ASSERT_U64_EQ(snap.meta.index, 7);
    ASSERT_U64_EQ(snap.meta.term, 2);
    struct raft_hard_state hs;
    struct raft_conf_state cs;
    ASSERT_EQ(rs->initial_state(rs->data, &hs, &cs), 0);
    ASSERT_EQ(cs.n_learners, 1);
    /* Appending below the log start is refused. */
    make_ents(e, data, 7, 7, 2);
    ASSERT_EQ(store_raft_save(t.s, NULL, e, 1, true), STORE_EINVAL);
    make_ents(e, data, 8, 8, 3);
    ASSERT_EQ(store_raft_save(t.s, NULL, e, 1, true), 0);
    ASSERT_U64_EQ(last_i(rs), 8);
    t_store_close(&t);
}

static bool blob_is(struct store *s, const char *want) {
    void *b = NULL;
    size_t n = 0;
    if (store_cluster_get(s, &b, &n) != 0) return false;
    bool ok = want ? b != NULL && n == strlen(want) && memcmp(b, want, n) == 0 : b == NULL;
    free(b);
    return ok;
}

/* The cluster blob: absent at first, stored by store_cluster_put without
 * applying, by store_apply_cluster in the batch of the applied entry (with
 * or without a configuration), ignored for an index already applied. */
BOTH(cluster_blob) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, rocks, 0), 0);
    ASSERT(blob_is(t.s, NULL));
    ASSERT_EQ(store_cluster_put(t.s, "boot", 4), 0);
    ASSERT(blob_is(t.s, "boot"));
    ASSERT_U64_EQ(store_applied_index(t.s), 0);
    ASSERT_EQ(store_apply_cluster(t.s, 1, NULL, "one", 3), 0);
    ASSERT_U64_EQ(store_applied_index(t.s), 1);
    struct raft_conf_state cs = {0};
    cs.n_voters = 2;
    cs.voters[0] = 5;
    cs.voters[1] = 6;
    ASSERT_EQ(store_apply_cluster(t.s, 2, &cs, "two", 3), 0);
    ASSERT_EQ(store_apply_cluster(t.s, 2, NULL, "old", 3), 0); /* replay: nothing */
    ASSERT(blob_is(t.s, "two"));
    ASSERT_EQ(store_apply_cluster(t.s, 3, NULL, NULL, 0), 0); /* empty, not absent */
    ASSERT(blob_is(t.s, ""));
    ASSERT_EQ(store_apply_cluster(t.s, 4, NULL, "four", 4), 0);
    ASSERT_EQ(t_store_reopen(&t), 0);
    ASSERT_U64_EQ(store_applied_index(t.s), 4);
    ASSERT(blob_is(t.s, "four"));
    struct raft_storage *rs = store_raft_storage(t.s);
    struct raft_hard_state hs;
    struct raft_conf_state got;
    ASSERT_EQ(rs->initial_state(rs->data, &hs, &got), 0);
    ASSERT_EQ(got.n_voters, 2);
    ASSERT_U64_EQ(got.voters[1], 6);
    t_store_close(&t);
}

/* A crash keeps the blob of the applied index: each apply is one batch. */
TEST(cluster_blob_crash) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, false, 0), 0);
    ASSERT_EQ(store_cluster_put(t.s, "boot", 4), 0); /* synced */
    char blob[16];
    for (uint64_t i = 1; i <= 6; i++) {
        snprintf(blob, sizeof blob, "b%llu", (unsigned long long)i);
        ASSERT_EQ(store_apply_cluster(t.s, i, NULL, blob, strlen(blob)), 0);
    }
    store_close(t.s);
    t.s = NULL;
    store_memdb_crash(t.memdb, 3);
    ASSERT_EQ(t_store_reopen(&t), 0);
    ASSERT_U64_EQ(store_applied_index(t.s), 3);
    ASSERT(blob_is(t.s, "b3"));
    /* A failed write changes neither. */
    store_memdb_fail_write(t.memdb, 1);
    ASSERT_EQ(store_apply_cluster(t.s, 4, NULL, "b4", 2), STORE_EFAULT);
    ASSERT_U64_EQ(store_applied_index(t.s), 3);
    ASSERT(blob_is(t.s, "b3"));
    t_store_close(&t);
}

/* A checkpoint (what a snapshot streams) carries the blob. */
TEST(cluster_blob_checkpoint) {
    struct t_store t;
    ASSERT_EQ(t_store_open(&t, true, 0), 0);
    ASSERT_EQ(store_apply_cluster(t.s, 1, NULL, "members", 7), 0);
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/ckpt", t.tmp);
    ASSERT_EQ(store_checkpoint(t.s, dir, NULL), 0);
    ASSERT_EQ(store_apply_cluster(t.s, 2, NULL, "later", 5), 0);
    struct store_options o;
    store_options_init(&o);
    o.data_dir = dir;
    struct store *c = NULL;
    char err[256];
    ASSERT_EQ(store_open(&o, &c, err, sizeof err), 0);
    ASSERT(blob_is(c, "members"));
    store_close(c);
    t_store_close(&t);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
