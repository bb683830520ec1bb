/*
 * raftlog.c - the Raft log, hard state and snapshot metadata in the "raft"
 * column family, and the struct raft_storage raft/ reads them through.
 *
 * Keys: 'e' || index (8, big-endian) -> term (8), type (1), data;
 * 'h' -> term, vote, commit; 's' -> index and term the log starts after
 * (the last compacted or snapshotted entry); 'l' -> the last index. Every
 * change to them is one write batch, so the cached copies in struct store
 * (hs, log_start_*, last_index) always match what a restart would load.
 *
 * Invariants: entries exist for every index in (log_start_index,
 * last_index]; store_raft_compact never passes the applied index, so a
 * restarted node can always replay what it had not applied, and the term of
 * the applied index (for snapshot metadata) is always known.
 */
#include <string.h>

#include "store/store_int.h"

#define RAFT_KEY_ENTRY 'e'
#define RAFT_KEY_HARD 'h'
#define RAFT_KEY_START 's'
#define RAFT_KEY_LAST 'l'
/* Entry header: term (8) and type (1). */
#define ENTRY_HDR 9

static void entry_key(uint8_t k[9], uint64_t index) {
    k[0] = RAFT_KEY_ENTRY;
    store__put_u64be(k + 1, index);
}

/* RAFT_ERRORS code for a store error, for the raft_storage functions. */
static int to_raft_err(int rc) {
    if (rc == 0) return 0;
    if (rc == STORE_ENOMEM) return RAFT_ENOMEM;
    return RAFT_ESTORAGE;
}

static int get_u64s(struct store *s, uint8_t key, uint64_t *v, size_t n, bool *found) {
    struct store__buf b = {0};
    uint8_t k = key;
    int rc = s->be->ops->get(s->be, NULL, STORE__CF_RAFT, &k, 1, &b);
    *found = rc == 0;
    if (rc == 0) {
        if (b.len != 8 * n)
            rc = STORE_ECORRUPT;
        else
            for (size_t i = 0; i < n; i++) v[i] = store__get_u64le(b.p + 8 * i);
    } else if (rc == 1) {
        rc = 0;
    }
    store__buf_free(&b);
    return rc;
}

int store__raft_load(struct store *s) {
    bool found;
    uint64_t hs[3] = {0, 0, 0}, start[2] = {0, 0}, last = 0;
    int rc = get_u64s(s, RAFT_KEY_HARD, hs, 3, &found);
    if (rc == 0) rc = get_u64s(s, RAFT_KEY_START, start, 2, &found);
    if (rc == 0) rc = get_u64s(s, RAFT_KEY_LAST, &last, 1, &found);
    if (rc != 0) return rc;
    if (!found) last = start[0];
    if (last < start[0]) return STORE_ECORRUPT;
    s->hs.term = hs[0];
    s->hs.vote = hs[1];
    s->hs.commit = hs[2];
    s->log_start_index = start[0];
    s->log_start_term = start[1];
    s->last_index = last;
    return 0;
}

static int put_u64s(struct store *s, struct store__batch *w, uint8_t key, const uint64_t *v,
                    size_t n) {
    uint8_t buf[24];
    STORE_ASSERT(n <= 3);
    for (size_t i = 0; i < n; i++) store__put_u64le(buf + 8 * i, v[i]);
    return s->be->ops->batch_put(w, STORE__CF_RAFT, &key, 1, buf, 8 * n);
}

static int put_hard_state(struct store *s, struct store__batch *w,
                          const struct raft_hard_state *hs) {
    uint64_t v[3] = {hs->term, hs->vote, hs->commit};
    return put_u64s(s, w, RAFT_KEY_HARD, v, 3);
}

/* Term of entry i, which must be in (log_start_index, last_index]. */
static int entry_term(struct store *s, uint64_t i, uint64_t *term) {
    uint8_t k[9];
    entry_key(k, i);
    int rc = s->be->ops->get(s->be, NULL, STORE__CF_RAFT, k, 9, &s->scratch);
    if (rc == 1) return STORE_ECORRUPT; /* a hole in the log */
    if (rc != 0) return rc;
    if (s->scratch.len < ENTRY_HDR) return STORE_ECORRUPT;
    *term = store__get_u64le(s->scratch.p);
    return 0;
}

int store_raft_save(struct store *s, const struct raft_hard_state *hs, const struct raft_entry *e,
                    size_t n, bool sync) {
    STORE_ASSERT(s != NULL);
    STORE_ASSERT(n == 0 || e != NULL);
    if (n > 0) {
        if (e[0].index <= s->log_start_index || e[0].index > s->last_index + 1) return STORE_EINVAL;
        for (size_t i = 1; i < n; i++)
            if (e[i].index != e[i - 1].index + 1) return STORE_EINVAL;
    }
    const struct store__backend_ops *ops = s->be->ops;
    struct store__batch *w = NULL;
    struct store__buf v = {0};
    int rc = ops->batch_new(s->be, &w);
    if (rc != 0) return rc;
    uint64_t new_last = s->last_index;
    for (size_t i = 0; i < n && rc == 0; i++) {
        uint8_t k[9];
        entry_key(k, e[i].index);
        v.len = 0;
        rc = store__buf_u64le(&v, e[i].term);
        if (rc == 0) rc = store__buf_u8(&v, e[i].type);
        if (rc == 0) rc = store__buf_append(&v, e[i].data.base, e[i].data.len);
        if (rc == 0) rc = ops->batch_put(w, STORE__CF_RAFT, k, 9, v.p, v.len);
    }
    if (n > 0 && rc == 0) {
        new_last = e[n - 1].index;
        if (new_last < s->last_index) {
            /* The conflicting suffix beyond the new entries goes too. */
            uint8_t b[9], en[9];
            entry_key(b, new_last + 1);
            entry_key(en, s->last_index + 1);
            rc = ops->batch_delete_range(w, STORE__CF_RAFT, b, 9, en, 9);
        }
        if (rc == 0) rc = put_u64s(s, w, RAFT_KEY_LAST, &new_last, 1);
    }
    if (hs != NULL && rc == 0) rc = put_hard_state(s, w, hs);
    if (rc == 0 && ops->batch_count(w) > 0) rc = ops->batch_commit(s->be, w, sync);
    ops->batch_free(w);
    store__buf_free(&v);
    if (rc != 0) return rc;
    s->last_index = new_last;
    if (hs != NULL) s->hs = *hs;
    return 0;
}

int store_raft_compact(struct store *s, uint64_t index) {
    STORE_ASSERT(s != NULL);
    if (index <= s->log_start_index) return 0;
    if (index > s->st.applied || index > s->last_index) return STORE_EINVAL;
    uint64_t term;
    int rc = entry_term(s, index, &term);
    if (rc != 0) return rc;
    const struct store__backend_ops *ops = s->be->ops;
    struct store__batch *w = NULL;
    if ((rc = ops->batch_new(s->be, &w)) != 0) return rc;
    uint8_t b[9], e[9];
    entry_key(b, s->log_start_index + 1);
    entry_key(e, index + 1);
    rc = ops->batch_delete_range(w, STORE__CF_RAFT, b, 9, e, 9);
    uint64_t start[2] = {index, term};
    if (rc == 0) rc = put_u64s(s, w, RAFT_KEY_START, start, 2);
    if (rc == 0) rc = ops->batch_commit(s->be, w, true);
    ops->batch_free(w);
    if (rc != 0) return rc;
    s->log_start_index = index;
    s->log_start_term = term;
    return 0;
}

int store_raft_bootstrap(struct store *s, const struct raft_conf_state *cs) {
    STORE_ASSERT(s != NULL && cs != NULL);
    if (cs->n_voters > RAFT_MEMBERS_MAX || cs->n_learners > RAFT_MEMBERS_MAX) return STORE_EINVAL;
    if (s->last_index != 0 || s->log_start_index != 0 || s->hs.term != 0 || s->st.applied != 0 ||
        s->st.conf.n_voters != 0)
        return STORE_EEXIST;
    /* The configuration is a snapshot at index STORE_BOOTSTRAP_INDEX, term
     * STORE_BOOTSTRAP_TERM, applied and committed: the log starts after it.
     * A member that joins later (--initial-cluster-state existing) starts
     * empty; the leader cannot send it the entries from index 1 on (they
     * are "compacted"), so it sends a snapshot, which carries the
     * configuration the joiner's Raft needs to apply later changes (etcd
     * gets the same from its bootstrap ConfChange entries at term 1). */
    const struct store__backend_ops *ops = s->be->ops;
    struct store__batch *w = NULL;
    int rc = ops->batch_new(s->be, &w);
    if (rc != 0) return rc;
    uint64_t start[2] = {STORE_BOOTSTRAP_INDEX, STORE_BOOTSTRAP_TERM};
    uint64_t last = STORE_BOOTSTRAP_INDEX;
    struct raft_hard_state hs = {.term = STORE_BOOTSTRAP_TERM,
                                 .vote = 0,
                                 .commit = STORE_BOOTSTRAP_INDEX};
    rc = put_u64s(s, w, RAFT_KEY_START, start, 2);
    if (rc == 0) rc = put_u64s(s, w, RAFT_KEY_LAST, &last, 1);
    if (rc == 0) rc = put_hard_state(s, w, &hs);
    struct store__state st = s->st;
    st.conf = *cs;
    st.applied = STORE_BOOTSTRAP_INDEX;
    if (rc == 0) rc = store__commit_state(s, w, &st, true);
    ops->batch_free(w);
    if (rc != 0) return rc;
    s->log_start_index = STORE_BOOTSTRAP_INDEX;
    s->log_start_term = STORE_BOOTSTRAP_TERM;
    s->last_index = STORE_BOOTSTRAP_INDEX;
    s->hs = hs;
    return 0;
}

int store_raft_install_snapshot(struct store *s, const struct raft_snapshot_meta *meta,
                                const struct raft_hard_state *hs) {
    STORE_ASSERT(s != NULL && meta != NULL && hs != NULL);
    if (s->st.applied != meta->index) return STORE_EINVAL;
    if (meta->conf.n_voters > RAFT_MEMBERS_MAX || meta->conf.n_learners > RAFT_MEMBERS_MAX)
        return STORE_EINVAL;
    const struct store__backend_ops *ops = s->be->ops;
    struct store__batch *w = NULL;
    int rc = ops->batch_new(s->be, &w);
    if (rc != 0) return rc;
    /* Every entry: ['e', 'f'). */
    uint8_t b[1] = {RAFT_KEY_ENTRY}, e[1] = {RAFT_KEY_ENTRY + 1};
    rc = ops->batch_delete_range(w, STORE__CF_RAFT, b, 1, e, 1);
    uint64_t start[2] = {meta->index, meta->term};
    struct raft_hard_state h = *hs;
    if (h.commit < meta->index) h.commit = meta->index;
    if (rc == 0) rc = put_u64s(s, w, RAFT_KEY_START, start, 2);
    if (rc == 0) rc = put_u64s(s, w, RAFT_KEY_LAST, &meta->index, 1);
    if (rc == 0) rc = put_hard_state(s, w, &h);
    struct store__state st = s->st;
    st.conf = meta->conf;
    if (rc == 0) rc = store__commit_state(s, w, &st, true);
    ops->batch_free(w);
    if (rc != 0) return rc;
    s->log_start_index = meta->index;
    s->log_start_term = meta->term;
    s->last_index = meta->index;
    s->hs = h;
    return 0;
}

/* ---------------------------------------------------------------- storage */

static int rs_initial_state(void *data, struct raft_hard_state *hs, struct raft_conf_state *cs) {
    struct store *s = data;
    *hs = s->hs;
    *cs = s->st.conf;
    return 0;
}

static int rs_entries(void *data, uint64_t lo, uint64_t hi, uint64_t max_bytes,
                      struct raft_entry **out, size_t *n_out) {
    struct store *s = data;
    *out = NULL;
    *n_out = 0;
    if (lo <= s->log_start_index) return RAFT_ECOMPACTED;
    if (hi > s->last_index + 1) return RAFT_EUNAVAILABLE;
    if (lo >= hi) return 0;
    const struct store__backend_ops *ops = s->be->ops;
    uint64_t want = hi - lo;
    /* max_bytes usually stops the scan long before hi: grow as needed. */
    size_t cap = want < 64 ? (size_t)want : 64;
    struct raft_entry *ents = qfs_calloc(cap, sizeof(*ents));
    if (ents == NULL) return RAFT_ENOMEM;
    struct store__iter *it = NULL;
    int rc = ops->iter_new(s->be, NULL, STORE__CF_RAFT, &it);
    size_t n = 0;
    uint64_t bytes = 0;
    if (rc == 0) {
        uint8_t k[9];
        entry_key(k, lo);
        for (ops->iter_seek(it, k, 9); n < want; ops->iter_next(it)) {
            if (!ops->iter_valid(it)) {
                rc = STORE_ECORRUPT;
                break;
            }
            size_t kl, vl;
            const uint8_t *key = ops->iter_key(it, &kl);
            const uint8_t *val = ops->iter_value(it, &vl);
            if (kl != 9 || key[0] != RAFT_KEY_ENTRY || store__get_u64be(key + 1) != lo + n ||
                vl < ENTRY_HDR) {
                rc = STORE_ECORRUPT;
                break;
            }
            size_t dlen = vl - ENTRY_HDR;
            if (n > 0 && bytes + dlen > max_bytes) break;
            bytes += dlen;
            if (n == cap) {
                size_t nc = cap * 2 < want ? cap * 2 : (size_t)want;
                struct raft_entry *p = qfs_realloc(ents, nc * sizeof(*p));
                if (p == NULL) {
                    rc = STORE_ENOMEM;
                    break;
                }
                memset(p + cap, 0, (nc - cap) * sizeof(*p));
                ents = p;
                cap = nc;
            }
            struct raft_entry *e = &ents[n];
            e->index = lo + n;
            e->term = store__get_u64le(val);
            e->type = val[8];
            if (dlen > 0) {
                void *d = qfs_malloc(dlen);
                if (d == NULL) {
                    rc = STORE_ENOMEM;
                    break;
                }
                memcpy(d, val + ENTRY_HDR, dlen);
                e->data.base = d;
            }
            e->data.len = dlen;
            n++;
        }
        if (rc == 0) rc = ops->iter_status(it);
        ops->iter_free(it);
    }
    if (rc != 0) {
        for (size_t i = 0; i < n; i++) free((void *)ents[i].data.base);
        free(ents);
        return to_raft_err(rc);
    }
    *out = ents;
    *n_out = n;
    return 0;
}

static int rs_term(void *data, uint64_t i, uint64_t *term) {
    struct store *s = data;
    if (i == s->log_start_index) {
        *term = s->log_start_term;
        return 0;
    }
    if (i < s->log_start_index) return RAFT_ECOMPACTED;
    if (i > s->last_index) return RAFT_EUNAVAILABLE;
    return to_raft_err(entry_term(s, i, term));
}

static int rs_first_index(void *data, uint64_t *index) {
    struct store *s = data;
    *index = s->log_start_index + 1;
    return 0;
}

static int rs_last_index(void *data, uint64_t *index) {
    struct store *s = data;
    *index = s->last_index;
    return 0;
}

static int rs_snapshot(void *data, struct raft_snapshot *snap) {
    struct store *s = data;
    memset(snap, 0, sizeof(*snap));
    snap->meta.index = s->st.applied;
    snap->meta.conf = s->st.conf;
    if (s->st.applied == 0) return 0;
    return rs_term(data, s->st.applied, &snap->meta.term);
}

void store__raft_init_storage(struct store *s) {
    s->rs.data = s;
    s->rs.initial_state = rs_initial_state;
    s->rs.entries = rs_entries;
    s->rs.term = rs_term;
    s->rs.first_index = rs_first_index;
    s->rs.last_index = rs_last_index;
    s->rs.snapshot = rs_snapshot;
}

struct raft_storage *store_raft_storage(struct store *s) {
    STORE_ASSERT(s != NULL);
    return &s->rs;
}
