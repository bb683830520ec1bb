/*
 * test_raft_memstore.c - the struct raft_storage contract (raft.h) as the
 * in-memory raft_memstore implements it. raft/ trusts these answers when it
 * reads its log, and every other raft test runs on this storage, so its
 * bounds (RAFT_ECOMPACTED, RAFT_EUNAVAILABLE), its size limit (at least one
 * entry), suffix overwrites, compaction and snapshots are pinned down here.
 */
#include "tests/unit/raft/raft_test_net.h"

static struct raft_memstore *store_with(const uint64_t *terms, size_t n) {
    struct raft_memstore *ms = raft_memstore_new();
    if (ms == NULL) abort();
    struct raft_entry e[32];
    if (n > 32) abort();
    tlog(e, terms, n);
    if (n && raft_memstore_append(ms, e, n) != 0) abort();
    return ms;
}

static void free_entries(struct raft_entry *e, size_t n) {
    for (size_t i = 0; i < n; i++) free((void *)e[i].data.base);
    free(e);
}

/* An empty store: first index 1, last index 0, term(0) = 0, no entries to read. */
TEST(test_memstore_empty) {
    struct raft_memstore *ms = store_with(NULL, 0);
    struct raft_storage *s = raft_memstore_storage(ms);
    uint64_t first = 0, last = 99, t = 99;
    ASSERT_EQ(s->first_index(s->data, &first), 0);
    ASSERT_EQ(s->last_index(s->data, &last), 0);
    ASSERT_EQ(s->term(s->data, 0, &t), 0);
    int rc_hi = s->term(s->data, 1, &t);
    struct raft_entry *e = NULL;
    size_t n = 7;
    int rc_ents = s->entries(s->data, 1, 2, UINT64_MAX, &e, &n);
    raft_memstore_free(ms);
    ASSERT_U64_EQ(first, 1);
    ASSERT_U64_EQ(last, 0);
    ASSERT_U64_EQ(t, 0);
    ASSERT_EQ(rc_hi, RAFT_EUNAVAILABLE);
    ASSERT_EQ(rc_ents, RAFT_EUNAVAILABLE);
}

/* entries(lo, hi) returns [lo, hi) with terms and owned copies of the data. */
TEST(test_memstore_entries_range) {
    const uint64_t terms[] = {1, 1, 2, 3, 3};
    struct raft_memstore *ms = store_with(terms, 5);
    struct raft_storage *s = raft_memstore_storage(ms);
    struct raft_entry *e = NULL;
    size_t n = 0;
    int rc = s->entries(s->data, 2, 5, UINT64_MAX, &e, &n);
    bool ok = rc == 0 && n == 3 && e[0].index == 2 && e[1].index == 3 && e[2].index == 4 &&
              e[0].term == 1 && e[1].term == 2 && e[2].term == 3 &&
              e[0].data.len == sizeof tnet_payload - 1 &&
              memcmp(e[0].data.base, tnet_payload, e[0].data.len) == 0 &&
              e[0].data.base != (const void *)tnet_payload;
    if (rc == 0) free_entries(e, n);
    uint64_t t = 0;
    int rc_t = s->term(s->data, 4, &t);
    raft_memstore_free(ms);
    ASSERT_EQ(rc, 0);
    ASSERT(ok);
    ASSERT_EQ(rc_t, 0);
    ASSERT_U64_EQ(t, 3);
}

/* Reading past the last entry is RAFT_EUNAVAILABLE; below the first is RAFT_ECOMPACTED. */
TEST(test_memstore_bounds) {
    const uint64_t terms[] = {1, 1, 1, 1, 1, 1};
    struct raft_memstore *ms = store_with(terms, 6);
    struct raft_storage *s = raft_memstore_storage(ms);
    struct raft_conf_state cs = tconf(1, 0);
    ASSERT_EQ(raft_memstore_create_snapshot(ms, 3, &cs, "x", 1), 0);
    ASSERT_EQ(raft_memstore_compact(ms, 3), 0);
    struct raft_entry *e = NULL;
    size_t n = 0;
    uint64_t first = 0, last = 0, t = 0;
    s->first_index(s->data, &first);
    s->last_index(s->data, &last);
    int rc_low = s->entries(s->data, 3, 5, UINT64_MAX, &e, &n);
    int rc_high = s->entries(s->data, 4, 8, UINT64_MAX, &e, &n);
    int rc_t_snap = s->term(s->data, 3, &t);
    int rc_t_low = s->term(s->data, 2, &t);
    int rc_ok = s->entries(s->data, 4, 7, UINT64_MAX, &e, &n);
    size_t got = n;
    if (rc_ok == 0) free_entries(e, n);
    raft_memstore_free(ms);
    ASSERT_U64_EQ(first, 4);
    ASSERT_U64_EQ(last, 6);
    ASSERT_EQ(rc_low, RAFT_ECOMPACTED);
    ASSERT_EQ(rc_high, RAFT_EUNAVAILABLE);
    ASSERT_EQ(rc_t_snap, 0);
    ASSERT_EQ(rc_t_low, RAFT_ECOMPACTED);
    ASSERT_EQ(rc_ok, 0);
    ASSERT_EQ(got, 3);
}

/* max_bytes limits the batch but always returns at least one entry. */
TEST(test_memstore_entries_size_limit) {
    const uint64_t terms[] = {1, 1, 1, 1, 1};
    struct raft_memstore *ms = store_with(terms, 5);
    struct raft_storage *s = raft_memstore_storage(ms);
    size_t per = sizeof tnet_payload - 1;
    struct raft_entry *e = NULL;
    size_t n1 = 0, n2 = 0, n3 = 0;
    int rc1 = s->entries(s->data, 1, 6, 1, &e, &n1);
    if (rc1 == 0) free_entries(e, n1);
    int rc2 = s->entries(s->data, 1, 6, 2 * per, &e, &n2);
    if (rc2 == 0) free_entries(e, n2);
    int rc3 = s->entries(s->data, 1, 6, 0, &e, &n3);
    if (rc3 == 0) free_entries(e, n3);
    raft_memstore_free(ms);
    ASSERT_EQ(rc1, 0);
    ASSERT_EQ(n1, 1);
    ASSERT_EQ(rc2, 0);
    ASSERT_GE(n2, 2);
    ASSERT_LE(n2, 3);
    ASSERT_EQ(rc3, 0);
    ASSERT_EQ(n3, 1);
}

/* Appending from an index inside the log replaces the suffix from there. */
TEST(test_memstore_append_overwrites_suffix) {
    const uint64_t terms[] = {1, 1, 1, 1, 1};
    struct raft_memstore *ms = store_with(terms, 5);
    struct raft_storage *s = raft_memstore_storage(ms);
    struct raft_entry e = {.index = 3, .term = 2};
    int rc = raft_memstore_append(ms, &e, 1);
    uint64_t last = 0, t3 = 0, t2 = 0;
    s->last_index(s->data, &last);
    s->term(s->data, 3, &t3);
    s->term(s->data, 2, &t2);
    /* A gap is refused. */
    struct raft_entry gap = {.index = 9, .term = 2};
    int rc_gap = raft_memstore_append(ms, &gap, 1);
    raft_memstore_free(ms);
    ASSERT_EQ(rc, 0);
    ASSERT_U64_EQ(last, 3);
    ASSERT_U64_EQ(t3, 2);
    ASSERT_U64_EQ(t2, 1);
    ASSERT_NE(rc_gap, 0);
}

/* Hard state and configuration come back from initial_state; snapshots replace the log. */
TEST(test_memstore_state_and_snapshots) {
    const uint64_t terms[] = {1, 1, 2};
    struct raft_memstore *ms = store_with(terms, 3);
    struct raft_storage *s = raft_memstore_storage(ms);
    struct raft_hard_state hs = {.term = 2, .vote = 3, .commit = 2};
    struct raft_conf_state cs = tconf(3, 1);
    ASSERT_EQ(raft_memstore_set_hard_state(ms, &hs), 0);
    ASSERT_EQ(raft_memstore_set_conf_state(ms, &cs), 0);
    struct raft_hard_state hs2;
    struct raft_conf_state cs2;
    ASSERT_EQ(s->initial_state(s->data, &hs2, &cs2), 0);
    ASSERT_U64_EQ(hs2.term, 2);
    ASSERT_U64_EQ(hs2.vote, 3);
    ASSERT_U64_EQ(hs2.commit, 2);
    ASSERT_EQ(cs2.n_voters, 3);
    ASSERT_EQ(cs2.n_learners, 1);

    struct raft_snapshot snap;
    memset(&snap, 0, sizeof snap);
    snap.meta.index = 10;
    snap.meta.term = 4;
    snap.meta.conf = tconf(5, 0);
    snap.data.base = "image";
    snap.data.len = 5;
    ASSERT_EQ(raft_memstore_apply_snapshot(ms, &snap), 0);
    uint64_t first = 0, last = 0, t = 0;
    s->first_index(s->data, &first);
    s->last_index(s->data, &last);
    ASSERT_EQ(s->term(s->data, 10, &t), 0);
    ASSERT_U64_EQ(first, 11);
    ASSERT_U64_EQ(last, 10);
    ASSERT_U64_EQ(t, 4);
    struct raft_snapshot got;
    ASSERT_EQ(s->snapshot(s->data, &got), 0);
    ASSERT_U64_EQ(got.meta.index, 10);
    ASSERT_U64_EQ(got.meta.term, 4);
    ASSERT_EQ(got.meta.conf.n_voters, 5);
    ASSERT_EQ(got.data.len, 5);
    ASSERT_MEM_EQ(got.data.base, "image", 5);
    /* An older snapshot is refused. */
    snap.meta.index = 9;
    ASSERT_EQ(raft_memstore_apply_snapshot(ms, &snap), RAFT_ESNAPOUTOFDATE);
    /* Entries continue after the snapshot. */
    struct raft_entry e = {.index = 11, .term = 4};
    ASSERT_EQ(raft_memstore_append(ms, &e, 1), 0);
    s->last_index(s->data, &last);
    ASSERT_U64_EQ(last, 11);
    raft_memstore_free(ms);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
