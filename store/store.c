/*
 * store.c - opening and closing a store, publishing state to readers, the
 * apply entry points, leases, status and checkpoints.
 *
 * Start-up reads the state record and three Raft records; it never scans
 * the key space. The writer's state (s->st) changes only after a commit
 * succeeded, and readers' state (s->pub) changes in the same critical
 * section as the commit (see store_int.h), so an I/O error leaves both
 * exactly as before the failed write.
 */
#include <string.h>

#include "store/store_int.h"

static const char STATE_KEY[] = "state";

void store_options_init(struct store_options *opt) {
    STORE_ASSERT(opt != NULL);
    memset(opt, 0, sizeof(*opt));
    opt->quota_bytes = STORE_QUOTA_BYTES_DEFAULT;
    opt->max_request_bytes = STORE_REQUEST_BYTES_DEFAULT;
    opt->max_txn_ops = STORE_TXN_OPS_DEFAULT;
}

static void set_err(char *err, size_t errlen, const char *what, int rc) {
    if (err != NULL && errlen > 0 && err[0] == '\0')
        snprintf(err, errlen, "%s: %s", what, store_strerror(rc));
}

int store__batch_put_state(struct store *s, struct store__batch *w, const struct store__state *st) {
    uint8_t buf[STORE__STATE_BYTES];
    store__state_encode(st, buf);
    return s->be->ops->batch_put(w, STORE__CF_DEFAULT, STATE_KEY, sizeof(STATE_KEY) - 1, buf,
                                 sizeof(buf));
}

int store__commit_state(struct store *s, struct store__batch *w, const struct store__state *st,
                        bool sync) {
    STORE_ASSERT(st->applied >= s->st.applied);
    STORE_ASSERT(st->rev >= s->st.rev);
    int rc = store__batch_put_state(s, w, st);
    if (rc != 0) return rc;
    pthread_mutex_lock(&s->pub_mu);
    rc = s->be->ops->batch_commit(s->be, w, sync);
    if (rc == 0) s->pub = *st;
    pthread_mutex_unlock(&s->pub_mu);
    if (rc == 0) s->st = *st;
    return rc;
}

int store_open(const struct store_options *opt, struct store **out, char *err, size_t errlen) {
    STORE_ASSERT(opt != NULL);
    STORE_ASSERT(out != NULL);
    if (err != NULL && errlen > 0) err[0] = '\0';
    if (opt->memdb == NULL && (opt->data_dir == NULL || opt->data_dir[0] == '\0')) {
        set_err(err, errlen, "store_open: no data_dir", STORE_EINVAL);
        return STORE_EINVAL;
    }
    struct store *s = qfs_calloc(1, sizeof(*s));
    if (s == NULL) return STORE_ENOMEM;
    s->quota_bytes = opt->quota_bytes ? opt->quota_bytes : STORE_QUOTA_BYTES_DEFAULT;
    s->max_request_bytes = opt->max_request_bytes ? opt->max_request_bytes
                                                  : STORE_REQUEST_BYTES_DEFAULT;
    if (s->max_request_bytes > STORE_REQUEST_BYTES_MAX)
        s->max_request_bytes = STORE_REQUEST_BYTES_MAX;
    s->max_txn_ops = opt->max_txn_ops ? opt->max_txn_ops : STORE_TXN_OPS_DEFAULT;
    int rc = pthread_mutex_init(&s->pub_mu, NULL) == 0 ? 0 : STORE_ENOMEM;
    if (rc != 0) {
        free(s);
        return rc;
    }
    if (opt->memdb != NULL)
        rc = store__backend_mem_open(opt->memdb, &s->be);
    else
        rc = store__backend_rocksdb_open(opt->data_dir, &s->be, err, errlen);
    if (rc != 0) {
        set_err(err, errlen, "store_open: backend", rc);
        goto err_mutex;
    }

    struct store__buf v = {0};
    rc = s->be->ops->get(s->be, NULL, STORE__CF_DEFAULT, STATE_KEY, sizeof(STATE_KEY) - 1, &v);
    if (rc == 0) {
        rc = store__state_decode(v.p, v.len, &s->st);
        store__buf_free(&v);
        if (rc != 0) {
            set_err(err, errlen, "store_open: state record", rc);
            goto err_backend;
        }
    } else if (rc == 1) {
        /* A new store: revision 1 and nothing applied, as a new etcd. */
        memset(&s->st, 0, sizeof(s->st));
        s->st.format = STORE__FORMAT;
        s->st.rev = 1;
        struct store__batch *w = NULL;
        rc = s->be->ops->batch_new(s->be, &w);
        if (rc == 0) rc = store__batch_put_state(s, w, &s->st);
        if (rc == 0) rc = s->be->ops->batch_commit(s->be, w, true);
        s->be->ops->batch_free(w);
        if (rc != 0) {
            set_err(err, errlen, "store_open: initialising", rc);
            goto err_backend;
        }
    } else {
        store__buf_free(&v);
        set_err(err, errlen, "store_open: reading state", rc);
        goto err_backend;
    }
    s->pub = s->st;
    if ((rc = store__raft_load(s)) != 0) {
        set_err(err, errlen, "store_open: raft records", rc);
        goto err_backend;
    }
    store__raft_init_storage(s);
    *out = s;
    return 0;

err_backend:
    s->be->ops->close(s->be);
err_mutex:
    pthread_mutex_destroy(&s->pub_mu);
    free(s);
    return rc;
}

void store_close(struct store *s) {
    if (s == NULL) return;
    s->be->ops->close(s->be);
    store__buf_free(&s->scratch);
    pthread_mutex_destroy(&s->pub_mu);
    free(s);
}

int store__view_open(struct store *s, struct store__view *v) {
    pthread_mutex_lock(&s->pub_mu);
    int rc = s->be->ops->snap_new(s->be, &v->snap);
    v->rev = s->pub.rev;
    v->compact_rev = s->pub.compact_rev;
    pthread_mutex_unlock(&s->pub_mu);
    return rc;
}

void store__view_close(struct store *s, struct store__view *v) {
    if (v->snap != NULL) s->be->ops->snap_free(s->be, v->snap);
    v->snap = NULL;
}

/* ---------------------------------------------------------------- apply */

int store_apply(struct store *s, uint64_t raft_index, const void *req, size_t len,
                struct store_result **res) {
    STORE_ASSERT(s != NULL);
    STORE_ASSERT(res != NULL);
    STORE_ASSERT(req != NULL || len == 0);
    *res = NULL;
    if (raft_index <= s->st.applied) return 0;
    /* A NULL request is a malformed one here; store_apply_noop is the way
     * to apply an empty entry. */
    return store__apply_request(s, raft_index, req ? req : "", len, res);
}

static int apply_meta_only(struct store *s, uint64_t raft_index, const struct raft_conf_state *cs) {
    if (raft_index <= s->st.applied) return 0;
    struct store__batch *w = NULL;
    int rc = s->be->ops->batch_new(s->be, &w);
    if (rc != 0) return rc;
    struct store__state st = s->st;
    st.applied = raft_index;
    if (cs != NULL) st.conf = *cs;
    rc = store__commit_state(s, w, &st, false);
    s->be->ops->batch_free(w);
    return rc;
}

int store_apply_noop(struct store *s, uint64_t raft_index) {
    STORE_ASSERT(s != NULL);
    return apply_meta_only(s, raft_index, NULL);
}

int store_apply_conf(struct store *s, uint64_t raft_index, const struct raft_conf_state *cs) {
    STORE_ASSERT(s != NULL);
    STORE_ASSERT(cs != NULL);
    if (cs->n_voters > RAFT_MEMBERS_MAX || cs->n_learners > RAFT_MEMBERS_MAX) return STORE_EINVAL;
    return apply_meta_only(s, raft_index, cs);
}

/* ---------------------------------------------------------------- cluster blob */

static const char CLUSTER_KEY[] = "cluster";

int store_apply_cluster(struct store *s, uint64_t raft_index, const struct raft_conf_state *cs,
                        const void *blob, size_t len) {
    STORE_ASSERT(s != NULL);
    STORE_ASSERT(blob != NULL || len == 0);
    if (cs != NULL && (cs->n_voters > RAFT_MEMBERS_MAX || cs->n_learners > RAFT_MEMBERS_MAX))
        return STORE_EINVAL;
    if (len > STORE_CLUSTER_BYTES_MAX) return STORE_ETOOLARGE;
    if (raft_index <= s->st.applied) return 0;
    struct store__batch *w = NULL;
    int rc = s->be->ops->batch_new(s->be, &w);
    if (rc != 0) return rc;
    rc = s->be->ops->batch_put(w, STORE__CF_DEFAULT, CLUSTER_KEY, sizeof(CLUSTER_KEY) - 1,
                               len ? blob : "", len);
    struct store__state st = s->st;
    st.applied = raft_index;
    if (cs != NULL) st.conf = *cs;
    if (rc == 0) rc = store__commit_state(s, w, &st, false);
    s->be->ops->batch_free(w);
    return rc;
}

int store_cluster_put(struct store *s, const void *blob, size_t len) {
    STORE_ASSERT(s != NULL);
    STORE_ASSERT(blob != NULL || len == 0);
    if (len > STORE_CLUSTER_BYTES_MAX) return STORE_ETOOLARGE;
    struct store__batch *w = NULL;
    int rc = s->be->ops->batch_new(s->be, &w);
    if (rc != 0) return rc;
    rc = s->be->ops->batch_put(w, STORE__CF_DEFAULT, CLUSTER_KEY, sizeof(CLUSTER_KEY) - 1,
                               len ? blob : "", len);
    if (rc == 0) rc = s->be->ops->batch_commit(s->be, w, true);
    s->be->ops->batch_free(w);
    return rc;
}

int store_cluster_get(struct store *s, void **blob, size_t *len) {
    STORE_ASSERT(s != NULL && blob != NULL && len != NULL);
    *blob = NULL;
    *len = 0;
    struct store__buf v = {0};
    int rc =
        s->be->ops->get(s->be, NULL, STORE__CF_DEFAULT, CLUSTER_KEY, sizeof(CLUSTER_KEY) - 1, &v);
    if (rc == 1) {
        store__buf_free(&v);
        return 0;
    }
    if (rc != 0) {
        store__buf_free(&v);
        return rc;
    }
    /* Never NULL when present, even when empty. */
    *blob = qfs_malloc(v.len ? v.len : 1);
    if (*blob == NULL) {
        store__buf_free(&v);
        return STORE_ENOMEM;
    }
    if (v.len) memcpy(*blob, v.p, v.len);
    *len = v.len;
    store__buf_free(&v);
    return 0;
}

int store_request_check(struct store *s, const void *req, size_t len) {
    STORE_ASSERT(s != NULL);
    struct store_request r;
    if (len > s->max_request_bytes) return STORE_ETOOLARGE;
    int rc = store_request_decode(req, len, &r);
    if (rc == 0) rc = store__check_request(s, &r, len);
    store_request_release(&r);
    return rc;
}

/* ---------------------------------------------------------------- getters */

int64_t store_current_revision(struct store *s) {
    pthread_mutex_lock(&s->pub_mu);
    int64_t r = s->pub.rev;
    pthread_mutex_unlock(&s->pub_mu);
    return r;
}

int64_t store_compact_revision(struct store *s) {
    pthread_mutex_lock(&s->pub_mu);
    int64_t r = s->pub.compact_rev;
    pthread_mutex_unlock(&s->pub_mu);
    return r;
}

uint64_t store_applied_index(struct store *s) {
    pthread_mutex_lock(&s->pub_mu);
    uint64_t r = s->pub.applied;
    pthread_mutex_unlock(&s->pub_mu);
    return r;
}

int store_db_size(struct store *s, uint64_t *bytes) {
    STORE_ASSERT(s != NULL && bytes != NULL);
    return s->be->ops->size(s->be, bytes);
}

int store_status(struct store *s, struct store_status *st) {
    STORE_ASSERT(s != NULL && st != NULL);
    memset(st, 0, sizeof(*st));
    pthread_mutex_lock(&s->pub_mu);
    st->revision = s->pub.rev;
    st->compact_revision = s->pub.compact_rev;
    st->applied_index = s->pub.applied;
    st->logical_bytes = s->pub.logical_bytes;
    st->n_leases = s->pub.n_leases;
    pthread_mutex_unlock(&s->pub_mu);
    st->quota_bytes = s->quota_bytes;
    return store_db_size(s, &st->db_bytes);
}

/* ---------------------------------------------------------------- leases */

static int lease_decode(const uint8_t *k, size_t kl, const uint8_t *v, size_t vl,
                        struct store_lease *l) {
    if (kl != 8 || vl != 16) return STORE_ECORRUPT;
    l->id = (int64_t)store__get_u64be(k);
    l->ttl = (int64_t)store__get_u64le(v);
    l->remaining_ttl = (int64_t)store__get_u64le(v + 8);
    return 0;
}

int store_lease_list(struct store *s, struct store_lease **out, size_t *n) {
    STORE_ASSERT(s != NULL && out != NULL && n != NULL);
    *out = NULL;
    *n = 0;
    const struct store__backend_ops *ops = s->be->ops;
    struct store__view v;
    int rc = store__view_open(s, &v);
    if (rc != 0) return rc;
    struct store__iter *it = NULL;
    struct store_lease *arr = NULL;
    size_t cnt = 0, cap = 0;
    if ((rc = ops->iter_new(s->be, v.snap, STORE__CF_LEASE, &it)) != 0) goto out;
    for (ops->iter_seek(it, "", 0); ops->iter_valid(it); ops->iter_next(it)) {
        if (cnt == cap) {
            size_t nc = cap ? cap * 2 : 16;
            struct store_lease *p = qfs_realloc(arr, nc * sizeof(*p));
            if (p == NULL) {
                rc = STORE_ENOMEM;
                break;
            }
            arr = p;
            cap = nc;
        }
        size_t kl, vl;
        const uint8_t *k = ops->iter_key(it, &kl);
        const uint8_t *val = ops->iter_value(it, &vl);
        if ((rc = lease_decode(k, kl, val, vl, &arr[cnt])) != 0) break;
        cnt++;
    }
    if (rc == 0) rc = ops->iter_status(it);
    ops->iter_free(it);
out:
    store__view_close(s, &v);
    if (rc != 0) {
        free(arr);
        return rc;
    }
    *out = arr;
    *n = cnt;
    return 0;
}

int store_lease_get(struct store *s, int64_t id, struct store_lease *out) {
    STORE_ASSERT(s != NULL && out != NULL);
    uint8_t k[8];
    store__put_u64be(k, (uint64_t)id);
    struct store__buf v = {0};
    int rc = s->be->ops->get(s->be, NULL, STORE__CF_LEASE, k, 8, &v);
    if (rc == 1) rc = STORE_ELEASENOTFOUND;
    if (rc == 0) rc = lease_decode(k, 8, v.p, v.len, out);
    store__buf_free(&v);
    return rc;
}

int store_lease_keys(struct store *s, int64_t id, struct store_key_list *out) {
    STORE_ASSERT(s != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    const struct store__backend_ops *ops = s->be->ops;
    struct store__view v;
    struct store__buf b = {0};
    struct store_bytes *keys = NULL;
    size_t n = 0, cap = 0;
    struct store__iter *it = NULL;
    int rc = store__view_open(s, &v);
    if (rc != 0) return rc;
    uint8_t k[8];
    store__put_u64be(k, (uint64_t)id);
    rc = ops->get(s->be, v.snap, STORE__CF_LEASE, k, 8, &b);
    if (rc == 1) rc = STORE_ELEASENOTFOUND;
    if (rc != 0) goto out;
    out->mem_ = store__mem_new();
    if (out->mem_ == NULL) {
        rc = STORE_ENOMEM;
        goto out;
    }
    if ((rc = ops->iter_new(s->be, v.snap, STORE__CF_LEASEKEY, &it)) != 0) goto out;
    for (ops->iter_seek(it, k, 8); ops->iter_valid(it); ops->iter_next(it)) {
        size_t kl;
        const uint8_t *lk = ops->iter_key(it, &kl);
        if (kl < 8 || memcmp(lk, k, 8) != 0) break;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            struct store_bytes *p = qfs_realloc(keys, nc * sizeof(*p));
            if (p == NULL) {
                rc = STORE_ENOMEM;
                break;
            }
            keys = p;
            cap = nc;
        }
        keys[n].base = store__mem_dup(out->mem_, lk + 8, kl - 8);
        keys[n].len = kl - 8;
        if (keys[n].base == NULL) {
            rc = STORE_ENOMEM;
            break;
        }
        n++;
    }
    if (rc == 0) rc = ops->iter_status(it);
    ops->iter_free(it);
    if (rc == 0 && n > 0) {
        out->keys = store__mem_dup(out->mem_, keys, n * sizeof(*keys));
        if (out->keys == NULL) rc = STORE_ENOMEM;
    }
    out->n_keys = n;
out:
    free(keys);
    store__buf_free(&b);
    store__view_close(s, &v);
    if (rc != 0) store_key_list_release(out);
    return rc;
}

void store_key_list_release(struct store_key_list *l) {
    if (l == NULL) return;
    store__mem_free(l->mem_);
    memset(l, 0, sizeof(*l));
}

/* ---------------------------------------------------------------- checkpoint */

int store_checkpoint(struct store *s, const char *dir, struct raft_snapshot_meta *meta) {
    STORE_ASSERT(s != NULL && dir != NULL);
    struct raft_snapshot snap;
    int rc = 0;
    if (meta != NULL) {
        /* Only the writer thread changes the store, and it is here: the
         * metadata and the checkpoint describe the same state. */
        rc = s->rs.snapshot(s, &snap);
        if (rc != 0) return rc;
    }
    rc = s->be->ops->checkpoint(s->be, dir);
    if (rc != 0) return rc;
    if (meta != NULL) *meta = snap.meta;
    return 0;
}
