/*
 * mvcc.c - etcd's MVCC semantics over the storage table: applying requests
 * (txn, compaction, leases), range reads at any uncompacted revision, the
 * change log, and the hash of the history.
 *
 * An apply builds one write batch: the key changes (kv, hist, log, leasekey
 * column families), the state record with the new applied index and
 * revision, and nothing else; it is committed at once, so a crash leaves the
 * store either before or after the entry. While a txn runs, its own writes
 * are kept in an overlay (pending versions by key) so that later ops of the
 * same txn read them, as etcd's write txn does; compares, and the put and
 * range checks, see the state before the txn, as in etcd's applier.
 *
 * Revisions: the txn writes at begin_rev + 1 and the store's revision moves
 * there only if something changed. Within a revision the changes are
 * numbered (sub) in the change log in the order they were made.
 *
 * Compaction at C walks the change log over (previous C, C] only: for each
 * change it deletes the version the change superseded, and it deletes the
 * tombstones themselves; the version of each key current at C survives, so
 * reads at C and later are unaffected. Cost: proportional to the changes in
 * that window, not to the key space.
 *
 * Workload: the writer thread applies one entry at a time; any thread reads
 * through a view (snapshot + revision).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* qsort_r */
#endif
#include <stdlib.h>
#include <string.h>

#include "store/store_int.h"

/* ---------------------------------------------------------------- keys */

static int log_key(struct store__buf *b, int64_t rev, uint32_t sub) {
    b->len = 0;
    int rc = store__buf_u64be(b, (uint64_t)rev);
    if (rc != 0) return rc;
    uint8_t t[4];
    store__put_u32be(t, sub);
    return store__buf_append(b, t, 4);
}

static int leasekey_key(struct store__buf *b, int64_t id, const void *key, size_t klen) {
    b->len = 0;
    int rc = store__buf_u64be(b, (uint64_t)id);
    if (rc != 0) return rc;
    return store__buf_append(b, key, klen);
}

/* Range end semantics (etcd): empty = one key, "\0" = no upper bound. */
static bool end_is_infinite(const void *end, size_t elen) {
    return elen == 1 && ((const uint8_t *)end)[0] == 0;
}

/* True if k is past the range [key, end) in key order (the scan can stop). */
static bool past_range(const void *k, size_t klen, const void *key, size_t key_len, const void *end,
                       size_t elen) {
    if (elen == 0) return store__bytes_cmp(k, klen, key, key_len) > 0;
    if (end_is_infinite(end, elen)) return false;
    return store__bytes_cmp(k, klen, end, elen) >= 0;
}

/* ---------------------------------------------------------------- overlay */

/* Pending kv-column-family state of the txn being applied. */
struct ov_ent {
    uint8_t *key;
    size_t klen;
    bool deleted;
    struct store__rec rec; /* rec.value points at val */
    uint8_t *val;
};

struct overlay {
    struct ov_ent *e; /* sorted by key */
    size_t n, cap;
};

static size_t ov_lower(const struct overlay *ov, const void *k, size_t klen) {
    size_t lo = 0, hi = ov->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (store__bytes_cmp(ov->e[mid].key, ov->e[mid].klen, k, klen) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static const struct ov_ent *ov_find(const struct overlay *ov, const void *k, size_t klen) {
    if (ov == NULL) return NULL;
    size_t i = ov_lower(ov, k, klen);
    if (i < ov->n && store__bytes_cmp(ov->e[i].key, ov->e[i].klen, k, klen) == 0) return &ov->e[i];
    return NULL;
}

static int ov_set(struct overlay *ov, const void *k, size_t klen, bool deleted,
                  const struct store__rec *rec) {
    size_t i = ov_lower(ov, k, klen);
    struct ov_ent *e;
    if (i < ov->n && store__bytes_cmp(ov->e[i].key, ov->e[i].klen, k, klen) == 0) {
        e = &ov->e[i];
        free(e->val);
        e->val = NULL;
    } else {
        if (ov->n == ov->cap) {
            size_t cap = ov->cap ? ov->cap * 2 : 16;
            struct ov_ent *p = qfs_realloc(ov->e, cap * sizeof(*p));
            if (p == NULL) return STORE_ENOMEM;
            ov->e = p;
            ov->cap = cap;
        }
        uint8_t *kc = qfs_malloc(klen ? klen : 1);
        if (kc == NULL) return STORE_ENOMEM;
        if (klen) memcpy(kc, k, klen);
        memmove(ov->e + i + 1, ov->e + i, (ov->n - i) * sizeof(*ov->e));
        ov->n++;
        e = &ov->e[i];
        memset(e, 0, sizeof(*e));
        e->key = kc;
        e->klen = klen;
    }
    e->deleted = deleted;
    memset(&e->rec, 0, sizeof(e->rec));
    if (!deleted) {
        e->rec = *rec;
        e->val = qfs_malloc(rec->value_len ? rec->value_len : 1);
        if (e->val == NULL) {
            /* Leave a consistent entry: a deletion marker is never read
             * because the apply fails and is discarded. */
            e->deleted = true;
            return STORE_ENOMEM;
        }
        if (rec->value_len) memcpy(e->val, rec->value, rec->value_len);
        e->rec.value = e->val;
    }
    return 0;
}

static void ov_free(struct overlay *ov) {
    for (size_t i = 0; i < ov->n; i++) {
        free(ov->e[i].key);
        free(ov->e[i].val);
    }
    free(ov->e);
    memset(ov, 0, sizeof(*ov));
}

/* ---------------------------------------------------------------- scans */

/* Called per live version in key order: 0 continue, 1 stop, < 0 error. */
typedef int (*scan_cb)(void *ctx, const void *key, size_t klen, const struct store__rec *rec);

/* Latest versions in [key, end) from the kv column family, merged with the
 * overlay (which wins) when ov is not NULL. */
static int scan_latest(struct store *s, const struct store__snap *snap, const struct overlay *ov,
                       const void *key, size_t klen, const void *end, size_t elen, scan_cb cb,
                       void *ctx) {
    const struct store__backend_ops *ops = s->be->ops;
    struct store__rec rec;
    int rc;
    if (elen == 0) {
        const struct ov_ent *oe = ov_find(ov, key, klen);
        if (oe != NULL) {
            if (oe->deleted) return 0;
            rc = cb(ctx, key, klen, &oe->rec);
            return rc < 0 ? rc : 0;
        }
        struct store__buf v = {0};
        rc = ops->get(s->be, snap, STORE__CF_KV, key, klen, &v);
        if (rc == 0) {
            rc = store__rec_decode(v.p, v.len, &rec);
            if (rc == 0) rc = cb(ctx, key, klen, &rec);
            if (rc > 0) rc = 0;
        } else if (rc == 1) {
            rc = 0;
        }
        store__buf_free(&v);
        return rc;
    }
    struct store__iter *it = NULL;
    rc = ops->iter_new(s->be, snap, STORE__CF_KV, &it);
    if (rc != 0) return rc;
    ops->iter_seek(it, key, klen);
    size_t oi = ov ? ov_lower(ov, key, klen) : 0;
    size_t on = ov ? ov->n : 0;
    for (;;) {
        const void *dk = NULL;
        size_t dkl = 0;
        bool dvalid = ops->iter_valid(it);
        if (dvalid) {
            dk = ops->iter_key(it, &dkl);
            if (past_range(dk, dkl, key, klen, end, elen)) dvalid = false;
        }
        bool ovalid = oi < on && !past_range(ov->e[oi].key, ov->e[oi].klen, key, klen, end, elen);
        if (!dvalid && !ovalid) break;
        int c = !dvalid ? 1
                        : (!ovalid ? -1 : store__bytes_cmp(dk, dkl, ov->e[oi].key, ov->e[oi].klen));
        if (c < 0) {
            size_t vl;
            const void *vp = ops->iter_value(it, &vl);
            rc = store__rec_decode(vp, vl, &rec);
            if (rc == 0) rc = cb(ctx, dk, dkl, &rec);
            if (rc != 0) break;
            ops->iter_next(it);
            continue;
        }
        const struct ov_ent *oe = &ov->e[oi++];
        if (c == 0) ops->iter_next(it);
        if (oe->deleted) continue;
        rc = cb(ctx, oe->key, oe->klen, &oe->rec);
        if (rc != 0) break;
    }
    if (rc >= 0) {
        int st = ops->iter_status(it);
        if (st != 0) rc = st;
    }
    ops->iter_free(it);
    return rc < 0 ? rc : 0;
}

/* Versions at revision rev of the keys in [key, end), from hist: one or two
 * seeks per key. */
static int scan_hist(struct store *s, const struct store__snap *snap, int64_t rev, const void *key,
                     size_t klen, const void *end, size_t elen, scan_cb cb, void *ctx) {
    const struct store__backend_ops *ops = s->be->ops;
    struct store__buf seek = {0}, user = {0}, esc = {0};
    struct store__iter *it = NULL;
    struct store__rec rec;
    int rc = ops->iter_new(s->be, snap, STORE__CF_HIST, &it);
    if (rc != 0) return rc;
    rc = store__esc_append(&seek, key, klen);
    if (rc != 0) goto out;
    ops->iter_seek(it, seek.p, seek.len);
    while (ops->iter_valid(it)) {
        size_t hkl, esc_len;
        int64_t r;
        const void *hk = ops->iter_key(it, &hkl);
        rc = store__hist_key_parse(hk, hkl, &user, &esc_len, &r, NULL);
        if (rc != 0) break;
        if (past_range(user.p, user.len, key, klen, end, elen)) break;
        esc.len = 0;
        if ((rc = store__buf_append(&esc, hk, esc_len)) != 0) break;
        if (r > rev) {
            /* Newest version is too new: jump to the newest at or below rev. */
            seek.len = 0;
            if ((rc = store__buf_append(&seek, esc.p, esc.len)) != 0) break;
            if ((rc = store__buf_u64be(&seek, ~(uint64_t)rev)) != 0) break;
            /* ~sub is all zeros or all ones here: byte order is moot. */
            if ((rc = store__buf_u32le(&seek, ~STORE__SUB_NEWEST)) != 0) break;
            ops->iter_seek(it, seek.p, seek.len);
            if (!ops->iter_valid(it)) break;
            hk = ops->iter_key(it, &hkl);
            if (hkl != esc.len + STORE__HIST_SUFFIX || memcmp(hk, esc.p, esc.len) != 0)
                continue; /* no version at rev: this is the next key's newest */
        }
        size_t vl;
        const void *vp = ops->iter_value(it, &vl);
        if ((rc = store__rec_decode(vp, vl, &rec)) != 0) break;
        if (!(rec.flags & STORE__REC_TOMBSTONE)) {
            rc = cb(ctx, user.p, user.len, &rec);
            if (rc != 0) break;
        }
        if (elen == 0) break;
        /* Skip the key's older versions: revision 0 never exists, so ~0 is
         * past them all. */
        seek.len = 0;
        if ((rc = store__buf_append(&seek, esc.p, esc.len)) != 0) break;
        if ((rc = store__buf_u64be(&seek, UINT64_MAX)) != 0) break;
        if ((rc = store__buf_u32le(&seek, UINT32_MAX)) != 0) break;
        ops->iter_seek(it, seek.p, seek.len);
    }
    if (rc >= 0) {
        int st = ops->iter_status(it);
        if (st != 0) rc = st;
    }
out:
    ops->iter_free(it);
    store__buf_free(&seek);
    store__buf_free(&user);
    store__buf_free(&esc);
    return rc < 0 ? rc : 0;
}

/* ---------------------------------------------------------------- kvs */

static int kv_from_rec(struct store_mem *mem, const void *key, size_t klen,
                       const struct store__rec *rec, bool with_value, struct store_kv *kv) {
    memset(kv, 0, sizeof(*kv));
    kv->key.base = store__mem_dup(mem, key, klen);
    kv->key.len = klen;
    if (kv->key.base == NULL) return STORE_ENOMEM;
    size_t vl = with_value ? rec->value_len : 0;
    kv->value.base = store__mem_dup(mem, rec->value, vl);
    kv->value.len = vl;
    if (kv->value.base == NULL) return STORE_ENOMEM;
    kv->create_revision = rec->create_rev;
    kv->mod_revision = rec->mod_rev;
    kv->version = rec->version;
    kv->lease = rec->lease;
    kv->mode = rec->mode;
    kv->uid = rec->uid;
    kv->gid = rec->gid;
    kv->mtime_ns = rec->mtime_ns;
    return 0;
}

struct kvvec {
    struct store_kv *v; /* malloc'ed; bytes in the arena */
    size_t n, cap;
};

static int kvvec_push(struct kvvec *vec, const struct store_kv *kv) {
    if (vec->n == vec->cap) {
        size_t cap = vec->cap ? vec->cap * 2 : 16;
        struct store_kv *p = qfs_realloc(vec->v, cap * sizeof(*p));
        if (p == NULL) return STORE_ENOMEM;
        vec->v = p;
        vec->cap = cap;
    }
    vec->v[vec->n++] = *kv;
    return 0;
}

/* Moves vec's array into the arena. */
static int kvvec_finish(struct kvvec *vec, struct store_mem *mem, struct store_kv **out,
                        size_t *n) {
    *out = NULL;
    *n = vec->n;
    if (vec->n > 0) {
        *out = store__mem_dup(mem, vec->v, vec->n * sizeof(*vec->v));
        if (*out == NULL) return STORE_ENOMEM;
    }
    free(vec->v);
    memset(vec, 0, sizeof(*vec));
    return 0;
}

/* ---------------------------------------------------------------- range */

struct range_ctx {
    const struct store_range_req *req;
    struct store_mem *mem;
    struct kvvec kvs;
    int64_t total;
    int64_t fetch_limit; /* 0 = all */
};

static int range_cb(void *vctx, const void *key, size_t klen, const struct store__rec *rec) {
    struct range_ctx *c = vctx;
    c->total++;
    if (c->req->count_only) return 0;
    if (c->fetch_limit == 0 || (int64_t)c->kvs.n < c->fetch_limit) {
        struct store_kv kv;
        int rc = kv_from_rec(c->mem, key, klen, rec, true, &kv);
        if (rc == 0) rc = kvvec_push(&c->kvs, &kv);
        if (rc != 0) return rc;
    }
    if (c->req->skip_count && c->fetch_limit > 0 && (int64_t)c->kvs.n >= c->fetch_limit) return 1;
    return 0;
}

struct sort_spec {
    uint8_t target;
    int sign; /* 1 ascending, -1 descending */
};

static int kv_cmp_target(const struct store_kv *a, const struct store_kv *b, uint8_t target) {
    switch (target) {
    case STORE_SORT_KEY:
        return store__bytes_cmp(a->key.base, a->key.len, b->key.base, b->key.len);
    case STORE_SORT_VERSION:
        return (a->version > b->version) - (a->version < b->version);
    case STORE_SORT_CREATE:
        return (a->create_revision > b->create_revision) -
               (a->create_revision < b->create_revision);
    case STORE_SORT_MOD:
        return (a->mod_revision > b->mod_revision) - (a->mod_revision < b->mod_revision);
    case STORE_SORT_VALUE:
        return store__bytes_cmp(a->value.base, a->value.len, b->value.base, b->value.len);
    default:
        return 0;
    }
}

/* Sort by target in the given direction; ties keep key order (keys are
 * unique, so the order is total and the same on every replica). */
static int kv_sort_cmp(const void *pa, const void *pb, void *arg) {
    const struct store_kv *a = pa, *b = pb;
    const struct sort_spec *spec = arg;
    int c = kv_cmp_target(a, b, spec->target) * spec->sign;
    if (c != 0) return c;
    return store__bytes_cmp(a->key.base, a->key.len, b->key.base, b->key.len);
}

static void kvs_sort(struct store_kv *kvs, size_t n, uint8_t target, int sign) {
    struct sort_spec spec = {target, sign};
    qsort_r(kvs, n, sizeof(*kvs), kv_sort_cmp, &spec);
}

static bool kv_filtered_out(const struct store_range_req *q, const struct store_kv *kv) {
    if (q->max_mod_revision != 0 && kv->mod_revision > q->max_mod_revision) return true;
    if (q->min_mod_revision != 0 && kv->mod_revision < q->min_mod_revision) return true;
    if (q->max_create_revision != 0 && kv->create_revision > q->max_create_revision) return true;
    if (q->min_create_revision != 0 && kv->create_revision < q->min_create_revision) return true;
    return false;
}

/*
 * etcd's applierV3backend.Range on a source: latest (kv + optional overlay)
 * or hist at rev. Fetches limit + 1 keys unless sorting or filtering needs
 * all of them, filters, sorts, truncates to limit (setting more), blanks
 * values for keys_only. count is every key in the range at the revision.
 */
static int range_run(struct store *s, const struct store__snap *snap, const struct overlay *ov,
                     bool latest, int64_t rev, const struct store_range_req *q, int64_t header_rev,
                     struct store_mem *mem, struct store_range_result *out) {
    STORE_ASSERT(q->key.len > 0);
    bool filters = q->min_mod_revision != 0 || q->max_mod_revision != 0 ||
                   q->min_create_revision != 0 || q->max_create_revision != 0;
    struct range_ctx c = {q, mem, {0}, 0, 0};
    if (q->sort_order == STORE_SORT_NONE && !filters && q->limit > 0) c.fetch_limit = q->limit + 1;
    int rc;
    if (latest)
        rc = scan_latest(s, snap, ov, q->key.base, q->key.len, q->range_end.base, q->range_end.len,
                         range_cb, &c);
    else
        rc = scan_hist(s, snap, rev, q->key.base, q->key.len, q->range_end.base, q->range_end.len,
                       range_cb, &c);
    if (rc != 0) {
        free(c.kvs.v);
        return rc;
    }
    size_t n = 0;
    for (size_t i = 0; i < c.kvs.n; i++)
        if (!kv_filtered_out(q, &c.kvs.v[i])) c.kvs.v[n++] = c.kvs.v[i];
    c.kvs.n = n;

    uint8_t order = q->sort_order;
    if (q->sort_target != STORE_SORT_KEY && order == STORE_SORT_NONE)
        order = STORE_SORT_ASCEND;
    else if (q->sort_target == STORE_SORT_KEY && order == STORE_SORT_ASCEND)
        order = STORE_SORT_NONE;
    if (order != STORE_SORT_NONE && c.kvs.n > 1)
        kvs_sort(c.kvs.v, c.kvs.n, q->sort_target, order == STORE_SORT_DESCEND ? -1 : 1);

    out->more = false;
    if (q->limit > 0 && (int64_t)c.kvs.n > q->limit) {
        c.kvs.n = (size_t)q->limit;
        out->more = true;
    }
    if (q->keys_only)
        for (size_t i = 0; i < c.kvs.n; i++) c.kvs.v[i].value.len = 0;
    out->revision = header_rev;
    out->count = (q->skip_count && !q->count_only) ? -1 : c.total;
    return kvvec_finish(&c.kvs, mem, &out->kvs, &out->n_kvs);
}

/* ---------------------------------------------------------------- apply */

struct boolvec {
    bool *v;
    size_t n, cap;
};

static int boolvec_push(struct boolvec *b, bool x) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        bool *p = qfs_realloc(b->v, cap * sizeof(*p));
        if (p == NULL) return STORE_ENOMEM;
        b->v = p;
        b->cap = cap;
    }
    b->v[b->n++] = x;
    return 0;
}

struct apply {
    struct store *s;
    struct store__batch *w;
    struct overlay ov;
    struct store__state st; /* working copy; committed with the batch */
    int64_t begin_rev;
    bool changed;
    bool any_put;
    uint32_t sub;
    struct store_mem *mem; /* the result's arena */
    struct store_event *events;
    size_t n_events, cap_events;
    struct store__buf kb, rb, tmp;
};

static int64_t apply_cur_rev(const struct apply *a) {
    return a->changed ? a->begin_rev + 1 : a->begin_rev;
}

static int push_event(struct apply *a, const struct store_event *ev) {
    if (a->n_events == a->cap_events) {
        size_t cap = a->cap_events ? a->cap_events * 2 : 8;
        struct store_event *p = qfs_realloc(a->events, cap * sizeof(*p));
        if (p == NULL) return STORE_ENOMEM;
        a->events = p;
        a->cap_events = cap;
    }
    a->events[a->n_events++] = *ev;
    return 0;
}

/* The key's current version (overlay, else the kv column family), copied
 * into the arena as *kv; *found false if the key does not exist. */
static int cur_get(struct apply *a, const void *key, size_t klen, bool *found,
                   struct store_kv *kv) {
    *found = false;
    const struct ov_ent *oe = ov_find(&a->ov, key, klen);
    if (oe != NULL) {
        if (oe->deleted) return 0;
        *found = true;
        return kv_from_rec(a->mem, key, klen, &oe->rec, true, kv);
    }
    int rc = a->s->be->ops->get(a->s->be, NULL, STORE__CF_KV, key, klen, &a->tmp);
    if (rc == 1) return 0;
    if (rc != 0) return rc;
    struct store__rec rec;
    if ((rc = store__rec_decode(a->tmp.p, a->tmp.len, &rec)) != 0) return rc;
    *found = true;
    return kv_from_rec(a->mem, key, klen, &rec, true, kv);
}

/*
 * etcd's prev_kv for a change is the key's version at revision - 1, i.e.
 * before the txn. When the txn already changed the key (a nested txn may put
 * a key that a later sibling deletes, or delete one a later op puts), that
 * differs from the current version `cur`: read the committed one.
 */
static int event_prev(struct apply *a, const void *key, size_t klen, bool cur_found,
                      const struct store_kv *cur, struct store_event *ev) {
    if (ov_find(&a->ov, key, klen) == NULL) {
        ev->has_prev_kv = cur_found;
        if (cur_found) ev->prev_kv = *cur;
        return 0;
    }
    int rc = a->s->be->ops->get(a->s->be, NULL, STORE__CF_KV, key, klen, &a->tmp);
    if (rc < 0) return rc;
    ev->has_prev_kv = rc == 0;
    if (rc != 0) return 0;
    struct store__rec rec;
    if ((rc = store__rec_decode(a->tmp.p, a->tmp.len, &rec)) != 0) return rc;
    return kv_from_rec(a->mem, key, klen, &rec, true, &ev->prev_kv);
}

/* Writes the hist and log entries of a change at the txn's revision. */
static int write_change(struct apply *a, uint8_t type, const void *key, size_t klen) {
    const struct store__backend_ops *ops = a->s->be->ops;
    int64_t rev = a->begin_rev + 1;
    int rc = store__hist_key(&a->kb, key, klen, rev, a->sub);
    if (rc == 0) rc = ops->batch_put(a->w, STORE__CF_HIST, a->kb.p, a->kb.len, a->rb.p, a->rb.len);
    if (rc == 0) rc = log_key(&a->kb, rev, a->sub);
    if (rc != 0) return rc;
    a->tmp.len = 0;
    if ((rc = store__buf_u8(&a->tmp, type)) != 0) return rc;
    if ((rc = store__buf_append(&a->tmp, key, klen)) != 0) return rc;
    rc = ops->batch_put(a->w, STORE__CF_LOG, a->kb.p, a->kb.len, a->tmp.p, a->tmp.len);
    if (rc != 0) return rc;
    a->sub++;
    a->changed = true;
    return 0;
}

static int lease_detach(struct apply *a, int64_t lease, const void *key, size_t klen) {
    int rc = leasekey_key(&a->kb, lease, key, klen);
    if (rc != 0) return rc;
    return a->s->be->ops->batch_delete(a->w, STORE__CF_LEASEKEY, a->kb.p, a->kb.len);
}

static int lease_attach(struct apply *a, int64_t lease, const void *key, size_t klen) {
    int rc = leasekey_key(&a->kb, lease, key, klen);
    if (rc != 0) return rc;
    return a->s->be->ops->batch_put(a->w, STORE__CF_LEASEKEY, a->kb.p, a->kb.len, "", 0);
}

static int do_put(struct apply *a, const struct store_put *p, struct store_op_result *r) {
    const struct store__backend_ops *ops = a->s->be->ops;
    const void *key = p->key.base;
    size_t klen = p->key.len;
    bool found;
    struct store_kv prev;
    int rc = cur_get(a, key, klen, &found, &prev);
    if (rc != 0) return rc;
    int64_t rev = a->begin_rev + 1;
    struct store__rec rec = {0};
    rec.create_rev = found ? prev.create_revision : rev;
    rec.mod_rev = rev;
    rec.version = found ? prev.version + 1 : 1;
    rec.lease = (p->ignore_lease && found) ? prev.lease : p->lease;
    rec.value = (p->ignore_value && found) ? prev.value.base : p->value.base;
    rec.value_len = (p->ignore_value && found) ? prev.value.len : p->value.len;
    rec.mode = p->mode;
    rec.uid = p->uid;
    rec.gid = p->gid;
    rec.mtime_ns = p->mtime_ns;

    a->rb.len = 0;
    if ((rc = store__rec_encode(&rec, &a->rb)) != 0) return rc;
    if ((rc = ops->batch_put(a->w, STORE__CF_KV, key, klen, a->rb.p, a->rb.len)) != 0) return rc;
    if ((rc = write_change(a, STORE_EVENT_PUT, key, klen)) != 0) return rc;
    if (found && prev.lease != 0 && prev.lease != rec.lease)
        if ((rc = lease_detach(a, prev.lease, key, klen)) != 0) return rc;
    if (rec.lease != 0 && (!found || prev.lease != rec.lease))
        if ((rc = lease_attach(a, rec.lease, key, klen)) != 0) return rc;
    struct store_event ev = {0};
    ev.type = STORE_EVENT_PUT;
    if ((rc = kv_from_rec(a->mem, key, klen, &rec, true, &ev.kv)) != 0) return rc;
    if ((rc = event_prev(a, key, klen, found, &prev, &ev)) != 0) return rc;
    if ((rc = ov_set(&a->ov, key, klen, false, &rec)) != 0) return rc;
    a->st.logical_bytes += store__hist_cost(klen, rec.value_len);
    a->any_put = true;
    if ((rc = push_event(a, &ev)) != 0) return rc;

    if (r != NULL) {
        r->type = STORE_OP_PUT;
        r->u.put.has_prev_kv = p->prev_kv && found;
        if (r->u.put.has_prev_kv) r->u.put.prev_kv = prev;
    }
    return 0;
}

/* Deletes one existing key whose current version is prev. */
static int do_delete_one(struct apply *a, const struct store_kv *prev) {
    const struct store__backend_ops *ops = a->s->be->ops;
    const void *key = prev->key.base;
    size_t klen = prev->key.len;
    int64_t rev = a->begin_rev + 1;
    struct store_event ev = {0};
    ev.type = STORE_EVENT_DELETE;
    ev.kv.key = prev->key;
    ev.kv.value.base = prev->key.base; /* any valid pointer; len 0 */
    ev.kv.mod_revision = rev;
    int rc = event_prev(a, key, klen, true, prev, &ev);
    if (rc != 0) return rc;
    struct store__rec tomb = {0};
    tomb.flags = STORE__REC_TOMBSTONE;
    tomb.mod_rev = rev;
    tomb.value = "";
    a->rb.len = 0;
    rc = store__rec_encode(&tomb, &a->rb);
    if (rc == 0) rc = ops->batch_delete(a->w, STORE__CF_KV, key, klen);
    if (rc == 0) rc = write_change(a, STORE_EVENT_DELETE, key, klen);
    if (rc == 0 && prev->lease != 0) rc = lease_detach(a, prev->lease, key, klen);
    if (rc == 0) rc = ov_set(&a->ov, key, klen, true, NULL);
    if (rc != 0) return rc;
    a->st.logical_bytes += store__hist_cost(klen, 0);
    return push_event(a, &ev);
}

struct collect_ctx {
    struct store_mem *mem;
    struct kvvec kvs;
};

static int collect_cb(void *vctx, const void *key, size_t klen, const struct store__rec *rec) {
    struct collect_ctx *c = vctx;
    struct store_kv kv;
    int rc = kv_from_rec(c->mem, key, klen, rec, true, &kv);
    if (rc == 0) rc = kvvec_push(&c->kvs, &kv);
    return rc;
}

static int do_delete_range(struct apply *a, const struct store_delete_range *d,
                           struct store_op_result *r) {
    struct collect_ctx c = {a->mem, {0}};
    int rc = scan_latest(a->s, NULL, &a->ov, d->key.base, d->key.len, d->range_end.base,
                         d->range_end.len, collect_cb, &c);
    for (size_t i = 0; rc == 0 && i < c.kvs.n; i++) rc = do_delete_one(a, &c.kvs.v[i]);
    if (rc != 0) {
        free(c.kvs.v);
        return rc;
    }
    r->type = STORE_OP_DELETE_RANGE;
    r->u.delete_range.deleted = (int64_t)c.kvs.n;
    if (!d->prev_kv) c.kvs.n = 0;
    return kvvec_finish(&c.kvs, a->mem, &r->u.delete_range.prev_kvs, &r->u.delete_range.n_prev_kvs);
}

static int do_range(struct apply *a, const struct store_range_req *q, struct store_op_result *r) {
    int64_t cur = apply_cur_rev(a);
    int64_t rev = q->revision <= 0 ? cur : q->revision;
    if (rev > cur) return STORE_EFUTUREREV;
    if (rev < a->st.compact_rev) return STORE_ECOMPACTED;
    r->type = STORE_OP_RANGE;
    if (rev == cur) return range_run(a->s, NULL, &a->ov, true, rev, q, cur, a->mem, &r->u.range);
    if (rev == a->begin_rev)
        return range_run(a->s, NULL, NULL, true, rev, q, cur, a->mem, &r->u.range);
    return range_run(a->s, NULL, NULL, false, rev, q, cur, a->mem, &r->u.range);
}

/* ---- compares (etcd applyCompare / compareKV) ---- */

struct cmp_ctx {
    const struct store_compare *c;
    bool ok;
    bool any;
};

static int cmp_i64(int64_t a, int64_t b) {
    return (a > b) - (a < b);
}

static bool compare_kv(const struct store_compare *c, const struct store__rec *rec) {
    int r = 0;
    switch (c->target) {
    case STORE_CMP_VALUE:
        r = store__bytes_cmp(rec->value, rec->value_len, c->value.base, c->value.len);
        break;
    case STORE_CMP_CREATE:
        r = cmp_i64(rec->create_rev, c->number);
        break;
    case STORE_CMP_MOD:
        r = cmp_i64(rec->mod_rev, c->number);
        break;
    case STORE_CMP_VERSION:
        r = cmp_i64(rec->version, c->number);
        break;
    case STORE_CMP_LEASE:
        r = cmp_i64(rec->lease, c->number);
        break;
    default:
        STORE_ASSERT(!"bad compare target");
    }
    switch (c->result) {
    case STORE_CMP_EQUAL:
        return r == 0;
    case STORE_CMP_NOT_EQUAL:
        return r != 0;
    case STORE_CMP_GREATER:
        return r > 0;
    case STORE_CMP_LESS:
        return r < 0;
    default:
        return true;
    }
}

static int cmp_cb(void *vctx, const void *key, size_t klen, const struct store__rec *rec) {
    (void)key;
    (void)klen;
    struct cmp_ctx *c = vctx;
    c->any = true;
    if (!compare_kv(c->c, rec)) {
        c->ok = false;
        return 1;
    }
    return 0;
}

static int apply_compare(struct apply *a, const struct store_compare *c, bool *ok) {
    struct cmp_ctx ctx = {c, true, false};
    /* A range_end on a key-less compare is meaningless; etcd ranges from an
     * empty key too, which finds nothing. */
    if (c->key.len == 0) {
        ctx.ok = true;
    } else {
        int rc = scan_latest(a->s, NULL, NULL, c->key.base, c->key.len, c->range_end.base,
                             c->range_end.len, cmp_cb, &ctx);
        if (rc != 0) return rc;
    }
    if (!ctx.any) {
        if (c->target == STORE_CMP_VALUE) {
            *ok = false;
            return 0;
        }
        struct store__rec zero = {0};
        zero.value = "";
        *ok = compare_kv(c, &zero);
        return 0;
    }
    *ok = ctx.ok;
    return 0;
}

static int compare_to_path(struct apply *a, const struct store_txn *t, struct boolvec *path) {
    bool ok = true;
    for (size_t i = 0; i < t->n_compare && ok; i++) {
        int rc = apply_compare(a, &t->compare[i], &ok);
        if (rc != 0) return rc;
    }
    int rc = boolvec_push(path, ok);
    if (rc != 0) return rc;
    const struct store_op *ops = ok ? t->success : t->failure;
    size_t n = ok ? t->n_success : t->n_failure;
    for (size_t i = 0; i < n; i++)
        if (ops[i].type == STORE_OP_TXN && (rc = compare_to_path(a, &ops[i].u.txn, path)) != 0)
            return rc;
    return 0;
}

static bool lease_exists(struct apply *a, int64_t id, int *err) {
    uint8_t k[8];
    store__put_u64be(k, (uint64_t)id);
    int rc = a->s->be->ops->get(a->s->be, NULL, STORE__CF_LEASE, k, 8, &a->tmp);
    if (rc < 0) *err = rc;
    return rc == 0;
}

enum { CHECK_PUT, CHECK_RANGE };

/* etcd checkRequests: walks the taken path with checkPut or checkRange,
 * against the state before the txn. */
static int check_path(struct apply *a, const struct store_txn *t, const struct boolvec *path,
                      size_t *pi, int which) {
    STORE_ASSERT(*pi < path->n);
    bool ok = path->v[(*pi)++];
    const struct store_op *ops = ok ? t->success : t->failure;
    size_t n = ok ? t->n_success : t->n_failure;
    for (size_t i = 0; i < n; i++) {
        const struct store_op *op = &ops[i];
        int rc = 0;
        if (op->type == STORE_OP_TXN) {
            rc = check_path(a, &op->u.txn, path, pi, which);
        } else if (which == CHECK_PUT && op->type == STORE_OP_PUT) {
            const struct store_put *p = &op->u.put;
            if (p->ignore_value || p->ignore_lease) {
                const struct ov_ent *oe = ov_find(&a->ov, p->key.base, p->key.len);
                STORE_ASSERT(oe == NULL); /* checks run before any write */
                int g = a->s->be->ops->get(a->s->be, NULL, STORE__CF_KV, p->key.base, p->key.len,
                                           &a->tmp);
                if (g < 0) return g;
                if (g == 1) return STORE_EKEYNOTFOUND;
            }
            if (p->lease != 0) {
                int err = 0;
                bool ex = lease_exists(a, p->lease, &err);
                if (err != 0) return err;
                if (!ex) return STORE_ELEASENOTFOUND;
            }
        } else if (which == CHECK_RANGE && op->type == STORE_OP_RANGE) {
            int64_t rev = op->u.range.revision;
            if (rev > 0 && rev > a->begin_rev) return STORE_EFUTUREREV;
            if (rev > 0 && rev < a->st.compact_rev) return STORE_ECOMPACTED;
        }
        if (rc != 0) return rc;
    }
    return 0;
}

static int exec_txn(struct apply *a, const struct store_txn *t, const struct boolvec *path,
                    size_t *pi, struct store_txn_result *res) {
    bool ok = path->v[(*pi)++];
    const struct store_op *ops = ok ? t->success : t->failure;
    size_t n = ok ? t->n_success : t->n_failure;
    res->succeeded = ok;
    res->n_results = n;
    res->results = n ? store__mem_alloc(a->mem, n * sizeof(*res->results)) : NULL;
    if (n && res->results == NULL) return STORE_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const struct store_op *op = &ops[i];
        struct store_op_result *r = &res->results[i];
        int rc;
        switch (op->type) {
        case STORE_OP_RANGE:
            rc = do_range(a, &op->u.range, r);
            break;
        case STORE_OP_PUT:
            rc = do_put(a, &op->u.put, r);
            break;
        case STORE_OP_DELETE_RANGE:
            rc = do_delete_range(a, &op->u.delete_range, r);
            break;
        case STORE_OP_TXN:
            r->type = STORE_OP_TXN;
            r->u.txn = store__mem_alloc(a->mem, sizeof(*r->u.txn));
            rc = r->u.txn ? exec_txn(a, &op->u.txn, path, pi, r->u.txn) : STORE_ENOMEM;
            break;
        default:
            rc = STORE_EMALFORMED;
        }
        if (rc != 0) return rc;
    }
    return 0;
}

/* ---- static checks (etcd checkTxnRequest + checkIntervals + sizes) ---- */

struct keyset {
    struct store_bytes *k; /* sorted */
    size_t n, cap;
};

struct ivals {
    struct store_bytes *b, *e; /* [b, e) with etcd end semantics; e.len 0 = point */
    size_t n, cap;
};

static size_t keyset_lower(const struct keyset *s, struct store_bytes k) {
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (store__bytes_cmp(s->k[mid].base, s->k[mid].len, k.base, k.len) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static bool keyset_has(const struct keyset *s, struct store_bytes k) {
    size_t i = keyset_lower(s, k);
    return i < s->n && store__bytes_cmp(s->k[i].base, s->k[i].len, k.base, k.len) == 0;
}

static int keyset_add(struct keyset *s, struct store_bytes k) {
    size_t i = keyset_lower(s, k);
    if (i < s->n && store__bytes_cmp(s->k[i].base, s->k[i].len, k.base, k.len) == 0) return 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        struct store_bytes *p = qfs_realloc(s->k, cap * sizeof(*p));
        if (p == NULL) return STORE_ENOMEM;
        s->k = p;
        s->cap = cap;
    }
    memmove(s->k + i + 1, s->k + i, (s->n - i) * sizeof(*s->k));
    s->k[i] = k;
    s->n++;
    return 0;
}

static int ivals_add(struct ivals *v, struct store_bytes b, struct store_bytes e) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 16;
        struct store_bytes *pb = qfs_realloc(v->b, cap * sizeof(*pb));
        if (pb == NULL) return STORE_ENOMEM;
        v->b = pb;
        struct store_bytes *pe = qfs_realloc(v->e, cap * sizeof(*pe));
        if (pe == NULL) return STORE_ENOMEM;
        v->e = pe;
        v->cap = cap;
    }
    v->b[v->n] = b;
    v->e[v->n] = e;
    v->n++;
    return 0;
}

/*
 * etcd builds these intervals from the raw range_end, without turning "\0"
 * into "no upper bound" (adt.NewStringAffineInterval(key, "\x00") is empty),
 * so a from-key delete never conflicts with a put. The same here, literally;
 * the store supports a key changing twice in one revision (sub numbers).
 */
static bool ivals_hit(const struct ivals *v, struct store_bytes k) {
    for (size_t i = 0; i < v->n; i++) {
        if (v->e[i].len == 0) {
            if (store__bytes_cmp(k.base, k.len, v->b[i].base, v->b[i].len) == 0) return true;
        } else if (store__bytes_cmp(k.base, k.len, v->b[i].base, v->b[i].len) >= 0 &&
                   store__bytes_cmp(k.base, k.len, v->e[i].base, v->e[i].len) < 0) {
            return true;
        }
    }
    return false;
}

static void keyset_free(struct keyset *s) {
    free(s->k);
    memset(s, 0, sizeof(*s));
}

static void ivals_free(struct ivals *v) {
    free(v->b);
    free(v->e);
    memset(v, 0, sizeof(*v));
}

/* etcd checkIntervals: no key is put twice, nor put and deleted, by ops that
 * can both run (a key put in both branches of a nested txn is fine). */
static int check_intervals(const struct store_op *ops, size_t n, struct keyset *puts,
                           struct ivals *dels) {
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        if (ops[i].type == STORE_OP_DELETE_RANGE)
            rc = ivals_add(dels, ops[i].u.delete_range.key, ops[i].u.delete_range.range_end);
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (ops[i].type != STORE_OP_TXN) continue;
        const struct store_txn *t = &ops[i].u.txn;
        struct keyset pt = {0}, pe = {0};
        struct ivals dt = {0}, de = {0};
        rc = check_intervals(t->success, t->n_success, &pt, &dt);
        if (rc == 0) rc = check_intervals(t->failure, t->n_failure, &pe, &de);
        for (size_t j = 0; rc == 0 && j < pt.n; j++) {
            if (keyset_has(puts, pt.k[j]) || ivals_hit(dels, pt.k[j]))
                rc = STORE_EDUPLICATEKEY;
            else
                rc = keyset_add(puts, pt.k[j]);
        }
        for (size_t j = 0; rc == 0 && j < pe.n; j++) {
            if ((keyset_has(puts, pe.k[j]) && !keyset_has(&pt, pe.k[j])) ||
                ivals_hit(dels, pe.k[j]))
                rc = STORE_EDUPLICATEKEY;
            else
                rc = keyset_add(puts, pe.k[j]);
        }
        for (size_t j = 0; rc == 0 && j < dt.n; j++) rc = ivals_add(dels, dt.b[j], dt.e[j]);
        for (size_t j = 0; rc == 0 && j < de.n; j++) rc = ivals_add(dels, de.b[j], de.e[j]);
        keyset_free(&pt);
        keyset_free(&pe);
        ivals_free(&dt);
        ivals_free(&de);
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (ops[i].type != STORE_OP_PUT) continue;
        struct store_bytes k = ops[i].u.put.key;
        if (keyset_has(puts, k) || ivals_hit(dels, k))
            rc = STORE_EDUPLICATEKEY;
        else
            rc = keyset_add(puts, k);
    }
    return rc;
}

static int check_txn_static(const struct store_txn *t, int64_t max_ops, unsigned depth);

static int check_key(struct store_bytes k) {
    if (k.len == 0) return STORE_EKEYEMPTY;
    if (k.len > STORE_KEY_BYTES_MAX) return STORE_EKEYTOOLARGE;
    return 0;
}

static int check_op_static(const struct store_op *op, int64_t max_ops, unsigned depth) {
    int rc;
    switch (op->type) {
    case STORE_OP_RANGE:
        if ((rc = check_key(op->u.range.key)) != 0) return rc;
        if (op->u.range.range_end.len > STORE_KEY_BYTES_MAX) return STORE_EKEYTOOLARGE;
        return 0;
    case STORE_OP_PUT:
        if ((rc = check_key(op->u.put.key)) != 0) return rc;
        if (op->u.put.ignore_value && op->u.put.value.len != 0) return STORE_EVALUEPROVIDED;
        if (op->u.put.ignore_lease && op->u.put.lease != 0) return STORE_ELEASEPROVIDED;
        return 0;
    case STORE_OP_DELETE_RANGE:
        if ((rc = check_key(op->u.delete_range.key)) != 0) return rc;
        if (op->u.delete_range.range_end.len > STORE_KEY_BYTES_MAX) return STORE_EKEYTOOLARGE;
        return 0;
    case STORE_OP_TXN:
        return check_txn_static(&op->u.txn, max_ops, depth + 1);
    default:
        return STORE_EMALFORMED;
    }
}

static int check_txn_static(const struct store_txn *t, int64_t max_ops, unsigned depth) {
    if (depth > STORE_TXN_DEPTH_MAX) return STORE_EMALFORMED;
    size_t opc = t->n_compare;
    if (opc < t->n_success) opc = t->n_success;
    if (opc < t->n_failure) opc = t->n_failure;
    if ((int64_t)opc > max_ops) return STORE_ETOOMANYOPS;
    for (size_t i = 0; i < t->n_compare; i++) {
        int rc = check_key(t->compare[i].key);
        if (rc != 0) return rc;
        if (t->compare[i].range_end.len > STORE_KEY_BYTES_MAX) return STORE_EKEYTOOLARGE;
    }
    for (size_t i = 0; i < t->n_success; i++) {
        int rc = check_op_static(&t->success[i], max_ops - (int64_t)opc, depth);
        if (rc != 0) return rc;
    }
    for (size_t i = 0; i < t->n_failure; i++) {
        int rc = check_op_static(&t->failure[i], max_ops - (int64_t)opc, depth);
        if (rc != 0) return rc;
    }
    return 0;
}

static int check_request_static(struct store *s, const struct store_request *req, size_t len) {
    if (len > s->max_request_bytes) return STORE_ETOOLARGE;
    switch (req->type) {
    case STORE_REQ_TXN: {
        int rc = check_txn_static(&req->u.txn, s->max_txn_ops, 1);
        if (rc != 0) return rc;
        for (int branch = 0; branch < 2; branch++) {
            struct keyset puts = {0};
            struct ivals dels = {0};
            rc = branch == 0
                     ? check_intervals(req->u.txn.success, req->u.txn.n_success, &puts, &dels)
                     : check_intervals(req->u.txn.failure, req->u.txn.n_failure, &puts, &dels);
            keyset_free(&puts);
            ivals_free(&dels);
            if (rc != 0) return rc;
        }
        return 0;
    }
    case STORE_REQ_LEASE_GRANT:
        if (req->u.lease_grant.id <= 0 || req->u.lease_grant.ttl < 0) return STORE_EINVAL;
        if (req->u.lease_grant.ttl > STORE_LEASE_TTL_MAX) return STORE_ELEASETTLTOOLARGE;
        return 0;
    default:
        return 0;
    }
}

static uint64_t txn_put_cost(const struct store_txn *t) {
    uint64_t n = 0;
    const struct store_op *branches[2] = {t->success, t->failure};
    size_t counts[2] = {t->n_success, t->n_failure};
    for (int b = 0; b < 2; b++) {
        for (size_t i = 0; i < counts[b]; i++) {
            const struct store_op *op = &branches[b][i];
            if (op->type == STORE_OP_PUT)
                n += store__hist_cost(op->u.put.key.len, op->u.put.value.len);
            else if (op->type == STORE_OP_TXN)
                n += txn_put_cost(&op->u.txn);
        }
    }
    return n;
}

static bool txn_has_put(const struct store_txn *t) {
    for (size_t i = 0; i < t->n_success; i++)
        if (t->success[i].type == STORE_OP_PUT ||
            (t->success[i].type == STORE_OP_TXN && txn_has_put(&t->success[i].u.txn)))
            return true;
    for (size_t i = 0; i < t->n_failure; i++)
        if (t->failure[i].type == STORE_OP_PUT ||
            (t->failure[i].type == STORE_OP_TXN && txn_has_put(&t->failure[i].u.txn)))
            return true;
    return false;
}

int store__check_request(struct store *s, const struct store_request *req, size_t len) {
    int rc = check_request_static(s, req, len);
    if (rc != 0) return rc;
    pthread_mutex_lock(&s->pub_mu);
    uint64_t used = s->pub.logical_bytes;
    pthread_mutex_unlock(&s->pub_mu);
    if (req->type == STORE_REQ_TXN && txn_has_put(&req->u.txn) &&
        used + txn_put_cost(&req->u.txn) > s->quota_bytes)
        return STORE_ENOSPACE;
    if (req->type == STORE_REQ_LEASE_GRANT && used > s->quota_bytes) return STORE_ENOSPACE;
    return 0;
}

/* ---- request kinds ---- */

static int apply_txn(struct apply *a, const struct store_txn *t, struct store_result *res) {
    struct boolvec path = {0};
    size_t pi;
    int rc = compare_to_path(a, t, &path);
    if (rc != 0) goto out;
    pi = 0;
    rc = check_path(a, t, &path, &pi, CHECK_PUT);
    if (rc == 0) {
        pi = 0;
        rc = check_path(a, t, &path, &pi, CHECK_RANGE);
    }
    if (rc == 0) {
        pi = 0;
        rc = exec_txn(a, t, &path, &pi, &res->txn);
        STORE_ASSERT(rc != 0 || pi == path.n);
    }
    if (rc == 0 && a->any_put && a->st.logical_bytes > a->s->quota_bytes) rc = STORE_ENOSPACE;
out:
    free(path.v);
    return rc;
}

static int apply_lease_grant(struct apply *a, int64_t id, int64_t ttl, struct store_result *res) {
    if (a->st.logical_bytes > a->s->quota_bytes) return STORE_ENOSPACE;
    int err = 0;
    if (lease_exists(a, id, &err)) return STORE_ELEASEEXISTS;
    if (err != 0) return err;
    uint8_t k[8], v[16];
    store__put_u64be(k, (uint64_t)id);
    store__put_u64le(v, (uint64_t)ttl);
    store__put_u64le(v + 8, (uint64_t)ttl);
    int rc = a->s->be->ops->batch_put(a->w, STORE__CF_LEASE, k, 8, v, 16);
    if (rc != 0) return rc;
    a->st.n_leases++;
    res->lease_id = id;
    res->lease_ttl = ttl;
    return 0;
}

static int apply_lease_checkpoint(struct apply *a, int64_t id, int64_t remaining,
                                  struct store_result *res) {
    uint8_t k[8];
    store__put_u64be(k, (uint64_t)id);
    int rc = a->s->be->ops->get(a->s->be, NULL, STORE__CF_LEASE, k, 8, &a->tmp);
    if (rc == 1) return 0; /* etcd ignores checkpoints of unknown leases */
    if (rc != 0) return rc;
    if (a->tmp.len != 16) return STORE_ECORRUPT;
    store__put_u64le(a->tmp.p + 8, (uint64_t)remaining);
    rc = a->s->be->ops->batch_put(a->w, STORE__CF_LEASE, k, 8, a->tmp.p, 16);
    if (rc != 0) return rc;
    res->lease_id = id;
    res->lease_ttl = (int64_t)store__get_u64le(a->tmp.p);
    res->lease_remaining_ttl = remaining;
    return 0;
}

static int apply_lease_revoke(struct apply *a, int64_t id, struct store_result *res) {
    const struct store__backend_ops *ops = a->s->be->ops;
    int err = 0;
    if (!lease_exists(a, id, &err)) return err != 0 ? err : STORE_ELEASENOTFOUND;
    if (a->tmp.len != 16) return STORE_ECORRUPT;
    int64_t ttl = (int64_t)store__get_u64le(a->tmp.p);
    uint8_t k[8];
    store__put_u64be(k, (uint64_t)id);
    struct store__iter *it = NULL;
    struct kvvec keys = {0};
    int rc = ops->iter_new(a->s->be, NULL, STORE__CF_LEASEKEY, &it);
    if (rc != 0) return rc;
    for (ops->iter_seek(it, k, 8); ops->iter_valid(it); ops->iter_next(it)) {
        size_t kl;
        const uint8_t *lk = ops->iter_key(it, &kl);
        if (kl < 8 || memcmp(lk, k, 8) != 0) break;
        bool found;
        struct store_kv cur;
        rc = cur_get(a, lk + 8, kl - 8, &found, &cur);
        if (rc != 0) break;
        /* Every attachment has its key with this lease; anything else is a
         * damaged store. */
        if (!found || cur.lease != id) {
            rc = STORE_ECORRUPT;
            break;
        }
        if ((rc = kvvec_push(&keys, &cur)) != 0) break;
    }
    if (rc == 0) rc = ops->iter_status(it);
    ops->iter_free(it);
    for (size_t i = 0; rc == 0 && i < keys.n; i++) rc = do_delete_one(a, &keys.v[i]);
    free(keys.v);
    if (rc != 0) return rc;
    rc = ops->batch_delete(a->w, STORE__CF_LEASE, k, 8);
    if (rc != 0) return rc;
    STORE_ASSERT(a->st.n_leases > 0);
    a->st.n_leases--;
    res->lease_id = id;
    res->lease_ttl = ttl;
    return 0;
}

static int apply_compact(struct apply *a, int64_t rev) {
    const struct store__backend_ops *ops = a->s->be->ops;
    if (rev <= a->st.compact_rev) return STORE_ECOMPACTED;
    if (rev > a->st.rev) return STORE_EFUTUREREV;
    int64_t prev_c = a->st.compact_rev;
    struct store__iter *lit = NULL, *hit = NULL;
    struct store__buf seek = {0};
    int rc = ops->iter_new(a->s->be, NULL, STORE__CF_LOG, &lit);
    if (rc == 0) rc = ops->iter_new(a->s->be, NULL, STORE__CF_HIST, &hit);
    if (rc == 0) rc = log_key(&seek, prev_c + 1, 0);
    if (rc != 0) goto out;
    for (ops->iter_seek(lit, seek.p, seek.len); ops->iter_valid(lit); ops->iter_next(lit)) {
        size_t kl, vl;
        const uint8_t *lk = ops->iter_key(lit, &kl);
        if (kl != 12) {
            rc = STORE_ECORRUPT;
            break;
        }
        int64_t r = (int64_t)store__get_u64be(lk);
        uint32_t sub = store__get_u32be(lk + 8);
        if (r > rev) break;
        const uint8_t *lv = ops->iter_value(lit, &vl);
        if (vl < 2 || lv[0] > STORE_EVENT_DELETE) {
            rc = STORE_ECORRUPT;
            break;
        }
        const uint8_t *key = lv + 1;
        size_t klen = vl - 1;
        /* The change's own entry, then the one after it in hist order: the
         * version it superseded (a tombstone there was removed by its own
         * change, now or at an earlier compaction). */
        if ((rc = store__hist_key(&seek, key, klen, r, sub)) != 0) break;
        size_t esc_len = seek.len - STORE__HIST_SUFFIX;
        ops->iter_seek(hit, seek.p, seek.len);
        size_t hkl, hvl;
        const uint8_t *hk = ops->iter_valid(hit) ? ops->iter_key(hit, &hkl) : NULL;
        if (hk == NULL || hkl != seek.len || memcmp(hk, seek.p, hkl) != 0) {
            rc = ops->iter_status(hit);
            if (rc == 0) rc = STORE_ECORRUPT; /* a logged change without its version */
            break;
        }
        ops->iter_next(hit);
        /* The next seek resets the iterator's status: an error here must
         * stop the compaction now, or the superseded version would stay. */
        if (!ops->iter_valid(hit) && (rc = ops->iter_status(hit)) != 0) break;
        if (ops->iter_valid(hit)) {
            hk = ops->iter_key(hit, &hkl);
            if (hkl == esc_len + STORE__HIST_SUFFIX && memcmp(hk, seek.p, esc_len) == 0) {
                const void *hv = ops->iter_value(hit, &hvl);
                struct store__rec rec;
                if ((rc = store__rec_decode(hv, hvl, &rec)) != 0) break;
                if (!(rec.flags & STORE__REC_TOMBSTONE)) {
                    if ((rc = ops->batch_delete(a->w, STORE__CF_HIST, hk, hkl)) != 0) break;
                    a->st.logical_bytes -= store__hist_cost(klen, rec.value_len);
                }
            }
        }
        if (lv[0] == STORE_EVENT_DELETE) {
            if ((rc = store__hist_key(&seek, key, klen, r, sub)) != 0) break;
            if ((rc = ops->batch_delete(a->w, STORE__CF_HIST, seek.p, seek.len)) != 0) break;
            a->st.logical_bytes -= store__hist_cost(klen, 0);
        }
    }
    if (rc == 0) rc = ops->iter_status(lit);
    if (rc == 0) rc = ops->iter_status(hit);
    if (rc != 0) goto out;
    {
        /* The change log keeps revision `rev` itself: a watch may start
         * there. */
        uint8_t b[12], e[12];
        store__put_u64be(b, (uint64_t)prev_c);
        store__put_u32be(b + 8, 0);
        store__put_u64be(e, (uint64_t)rev);
        store__put_u32be(e + 8, 0);
        rc = ops->batch_delete_range(a->w, STORE__CF_LOG, b, 12, e, 12);
    }
    if (rc == 0) a->st.compact_rev = rev;
out:
    ops->iter_free(hit);
    ops->iter_free(lit);
    store__buf_free(&seek);
    return rc;
}

static void apply_cleanup(struct apply *a) {
    if (a->w != NULL) a->s->be->ops->batch_free(a->w);
    a->w = NULL;
    ov_free(&a->ov);
    free(a->events);
    a->events = NULL;
    a->n_events = a->cap_events = 0;
    store__buf_free(&a->kb);
    store__buf_free(&a->rb);
    store__buf_free(&a->tmp);
}

/* Starts (or restarts after a rejection) the apply's batch from the state
 * before the request. */
static int apply_reset(struct apply *a) {
    if (a->w != NULL) a->s->be->ops->batch_free(a->w);
    a->w = NULL;
    ov_free(&a->ov);
    a->n_events = 0;
    a->st = a->s->st;
    a->changed = false;
    a->any_put = false;
    a->sub = 0;
    return a->s->be->ops->batch_new(a->s->be, &a->w);
}

/* Errors that are the request's fault (reported in the result) rather than
 * the store's (nothing applied). */
static bool is_request_error(int rc) {
    if (rc == STORE_ENOMEM || rc == STORE_EIO || rc == STORE_ECORRUPT || rc == STORE_EFAULT)
        return false;
    return rc <= -2000 && rc > -2100;
}

int store__apply_request(struct store *s, uint64_t index, const void *req, size_t len,
                         struct store_result **out) {
    STORE_ASSERT(out != NULL);
    STORE_ASSERT(index > s->st.applied);
    struct store_result *res = qfs_calloc(1, sizeof(*res));
    if (res == NULL) return STORE_ENOMEM;
    struct apply a = {0};
    a.s = s;
    a.mem = res->mem_ = store__mem_new();
    struct store_request r;
    int rc = res->mem_ ? 0 : STORE_ENOMEM;
    int req_err = 0;
    bool decoded = false;
    if (rc == 0) rc = apply_reset(&a);
    if (rc != 0) goto fail;
    a.begin_rev = s->st.rev;
    res->raft_index = index;

    if (req != NULL) {
        req_err = store_request_decode(req, len, &r);
        decoded = true;
        res->request_id = r.id;
        res->type = req_err == 0 ? r.type : STORE_REQ_NOOP;
        if (req_err == STORE_ENOMEM) {
            rc = req_err;
            goto fail;
        }
        if (req_err == 0) req_err = check_request_static(s, &r, len);
    }
    if (req != NULL && req_err == 0) {
        switch (r.type) {
        case STORE_REQ_NOOP:
            break;
        case STORE_REQ_TXN:
            req_err = apply_txn(&a, &r.u.txn, res);
            break;
        case STORE_REQ_COMPACT:
            req_err = apply_compact(&a, r.u.compact.revision);
            break;
        case STORE_REQ_LEASE_GRANT:
            req_err = apply_lease_grant(&a, r.u.lease_grant.id, r.u.lease_grant.ttl, res);
            break;
        case STORE_REQ_LEASE_REVOKE:
            req_err = apply_lease_revoke(&a, r.u.lease_revoke.id, res);
            break;
        case STORE_REQ_LEASE_CHECKPOINT:
            req_err = apply_lease_checkpoint(&a, r.u.lease_checkpoint.id,
                                             r.u.lease_checkpoint.remaining_ttl, res);
            break;
        default:
            req_err = STORE_EMALFORMED;
        }
    }
    if (req_err != 0 && !is_request_error(req_err)) {
        rc = req_err;
        goto fail;
    }
    if (req_err != 0) {
        /* Rejected: nothing of the request is written, only the index. */
        if ((rc = apply_reset(&a)) != 0) goto fail;
        memset(&res->txn, 0, sizeof(res->txn));
        res->lease_id = res->lease_ttl = res->lease_remaining_ttl = 0;
        res->err = req_err;
    }
    if (a.changed) a.st.rev = a.begin_rev + 1;
    a.st.applied = index;
    /* Everything the result needs is allocated before the commit: after it
     * the apply cannot fail any more. */
    res->n_events = a.n_events;
    if (a.n_events > 0) {
        res->events = store__mem_dup(a.mem, a.events, a.n_events * sizeof(*a.events));
        if (res->events == NULL) {
            rc = STORE_ENOMEM;
            goto fail;
        }
    }
    if ((rc = store__commit_state(s, a.w, &a.st, false)) != 0) goto fail;
    res->revision = a.st.rev;
    if (decoded) store_request_release(&r);
    apply_cleanup(&a);
    *out = res;
    return 0;
fail:
    if (decoded) store_request_release(&r);
    apply_cleanup(&a);
    store_result_free(res);
    return rc;
}

void store_result_free(struct store_result *res) {
    if (res == NULL) return;
    store__mem_free(res->mem_);
    free(res);
}

/* ---------------------------------------------------------------- reads */

int store__range_view(struct store *s, const struct store__view *v,
                      const struct store_range_req *req, struct store_range_result *out) {
    int64_t rev = req->revision <= 0 ? v->rev : req->revision;
    if (rev > v->rev) return STORE_EFUTUREREV;
    if (rev < v->compact_rev) return STORE_ECOMPACTED;
    return range_run(s, v->snap, NULL, rev == v->rev, rev, req, v->rev, out->mem_, out);
}

int store_range(struct store *s, const struct store_range_req *req,
                struct store_range_result *out) {
    STORE_ASSERT(s != NULL);
    STORE_ASSERT(req != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    if (req->key.len == 0) return STORE_EKEYEMPTY;
    if (req->sort_order > STORE_SORT_DESCEND || req->sort_target > STORE_SORT_VALUE)
        return STORE_EINVAL;
    out->mem_ = store__mem_new();
    if (out->mem_ == NULL) return STORE_ENOMEM;
    struct store__view v;
    int rc = store__view_open(s, &v);
    if (rc == 0) {
        rc = store__range_view(s, &v, req, out);
        store__view_close(s, &v);
    }
    if (rc != 0) store_range_result_release(out);
    return rc;
}

int store_get(struct store *s, const void *key, size_t key_len, int64_t rev,
              struct store_range_result *out) {
    struct store_range_req q = {0};
    q.key.base = key;
    q.key.len = key_len;
    q.revision = rev;
    return store_range(s, &q, out);
}

void store_range_result_release(struct store_range_result *r) {
    if (r == NULL) return;
    store__mem_free(r->mem_);
    memset(r, 0, sizeof(*r));
}

/* ---------------------------------------------------------------- events */

/* The hist entry (key, rev, sub) exactly, or (exact false) the key's newest
 * entry at or below rev; *found false for none or a tombstone. */
static int hist_version(struct store *s, struct store__iter *it, struct store__buf *kb,
                        const void *key, size_t klen, int64_t rev, uint32_t sub, bool exact,
                        bool *found, struct store__rec *rec) {
    const struct store__backend_ops *ops = s->be->ops;
    *found = false;
    int rc = store__hist_key(kb, key, klen, rev, exact ? sub : STORE__SUB_NEWEST);
    if (rc != 0) return rc;
    size_t esc_len = kb->len - STORE__HIST_SUFFIX;
    ops->iter_seek(it, kb->p, kb->len);
    if (!ops->iter_valid(it)) return ops->iter_status(it);
    size_t hkl, hvl;
    const uint8_t *hk = ops->iter_key(it, &hkl);
    if (hkl != kb->len || memcmp(hk, kb->p, esc_len) != 0) return 0;
    if (exact && memcmp(hk, kb->p, hkl) != 0) return 0;
    const void *hv = ops->iter_value(it, &hvl);
    if ((rc = store__rec_decode(hv, hvl, rec)) != 0) return rc;
    *found = !(rec->flags & STORE__REC_TOMBSTONE);
    return 0;
}

int store_events(struct store *s, int64_t from_rev, const void *key, size_t key_len,
                 const void *range_end, size_t range_end_len, size_t max_events, bool prev_kv,
                 struct store_event_batch *out) {
    STORE_ASSERT(s != NULL && out != NULL);
    STORE_ASSERT(key != NULL || key_len == 0);
    memset(out, 0, sizeof(*out));
    const struct store__backend_ops *ops = s->be->ops;
    struct store__view v;
    struct store__iter *lit = NULL, *hit = NULL;
    struct store__buf kb = {0};
    struct store_event *evs = NULL;
    size_t n = 0, cap = 0;
    int rc = store__view_open(s, &v);
    if (rc != 0) return rc;
    if (from_rev < 1) from_rev = 1;
    if (from_rev < v.compact_rev) {
        rc = STORE_ECOMPACTED;
        goto out;
    }
    out->next_rev = from_rev;
    out->mem_ = store__mem_new();
    if (out->mem_ == NULL) {
        rc = STORE_ENOMEM;
        goto out;
    }
    if (from_rev > v.rev) goto out;
    if ((rc = ops->iter_new(s->be, v.snap, STORE__CF_LOG, &lit)) != 0) goto out;
    if ((rc = ops->iter_new(s->be, v.snap, STORE__CF_HIST, &hit)) != 0) goto out;
    if ((rc = log_key(&kb, from_rev, 0)) != 0) goto out;
    int64_t cur = 0;
    size_t scanned = 0;
    int64_t next = v.rev + 1;
    for (ops->iter_seek(lit, kb.p, kb.len); ops->iter_valid(lit); ops->iter_next(lit)) {
        size_t kl, vl;
        const uint8_t *lk = ops->iter_key(lit, &kl);
        if (kl != 12) {
            rc = STORE_ECORRUPT;
            break;
        }
        int64_t r = (int64_t)store__get_u64be(lk);
        if (r > v.rev) break;
        if (r != cur) {
            if ((n > 0 && n >= max_events) || scanned >= STORE_EVENTS_SCAN_MAX) {
                next = r;
                break;
            }
            cur = r;
        }
        scanned++;
        const uint8_t *lv = ops->iter_value(lit, &vl);
        if (vl < 2 || lv[0] > STORE_EVENT_DELETE) {
            rc = STORE_ECORRUPT;
            break;
        }
        const uint8_t *k = lv + 1;
        size_t klen = vl - 1;
        bool in;
        if (key_len == 0)
            in = range_end_len == 1 && ((const uint8_t *)range_end)[0] == 0;
        else
            in = store__in_range(k, klen, key, key_len, range_end, range_end_len);
        if (!in) continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            struct store_event *p = qfs_realloc(evs, nc * sizeof(*p));
            if (p == NULL) {
                rc = STORE_ENOMEM;
                break;
            }
            evs = p;
            cap = nc;
        }
        struct store_event *ev = &evs[n];
        memset(ev, 0, sizeof(*ev));
        ev->type = lv[0];
        struct store__rec rec;
        bool found;
        if (ev->type == STORE_EVENT_PUT) {
            rc =
                hist_version(s, hit, &kb, k, klen, r, store__get_u32be(lk + 8), true, &found, &rec);
            if (rc != 0) break;
            if (!found && r <= v.compact_rev) {
                /* A put the same revision superseded (a nested txn put the
                 * key, a later op deleted it), compacted at exactly this
                 * revision: its value is gone, as in etcd. */
                continue;
            }
            if (!found) {
                rc = STORE_ECORRUPT;
                break;
            }
            if ((rc = kv_from_rec(out->mem_, k, klen, &rec, true, &ev->kv)) != 0) break;
        } else {
            ev->kv.key.base = store__mem_dup(out->mem_, k, klen);
            ev->kv.key.len = klen;
            ev->kv.value.base = ev->kv.key.base;
            ev->kv.mod_revision = r;
            if (ev->kv.key.base == NULL) {
                rc = STORE_ENOMEM;
                break;
            }
        }
        if (prev_kv) {
            rc = hist_version(s, hit, &kb, k, klen, r - 1, 0, false, &found, &rec);
            if (rc != 0) break;
            if (found) {
                ev->has_prev_kv = true;
                if ((rc = kv_from_rec(out->mem_, k, klen, &rec, true, &ev->prev_kv)) != 0) break;
            }
        }
        n++;
    }
    if (rc == 0) rc = ops->iter_status(lit);
    if (rc != 0) goto out;
    out->next_rev = next;
    out->n_events = n;
    if (n > 0) {
        out->events = store__mem_dup(out->mem_, evs, n * sizeof(*evs));
        if (out->events == NULL) rc = STORE_ENOMEM;
    }
out:
    free(evs);
    store__buf_free(&kb);
    if (hit != NULL) ops->iter_free(hit);
    if (lit != NULL) ops->iter_free(lit);
    store__view_close(s, &v);
    if (rc != 0) store_event_batch_release(out);
    return rc;
}

void store_event_batch_release(struct store_event_batch *b) {
    if (b == NULL) return;
    store__mem_free(b->mem_);
    memset(b, 0, sizeof(*b));
}

/* ---------------------------------------------------------------- hash */

static uint32_t crc32c_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int j = 0; j < 8; j++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[i] = c;
    }
}

static uint32_t crc32c(uint32_t crc, const void *p, size_t n) {
    const uint8_t *b = p;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = crc32c_table[(crc ^ b[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

int store_hash(struct store *s, int64_t rev, uint32_t *hash, int64_t *compact_rev) {
    STORE_ASSERT(s != NULL && hash != NULL);
    pthread_once(&crc_once, crc_init);
    const struct store__backend_ops *ops = s->be->ops;
    struct store__view v;
    struct store__buf user = {0};
    int rc = store__view_open(s, &v);
    if (rc != 0) return rc;
    if (rev <= 0) rev = v.rev;
    if (rev > v.rev) {
        rc = STORE_EFUTUREREV;
        goto out;
    }
    if (rev < v.compact_rev) {
        rc = STORE_ECOMPACTED;
        goto out;
    }
    struct store__iter *it = NULL;
    if ((rc = ops->iter_new(s->be, v.snap, STORE__CF_HIST, &it)) != 0) goto out;
    uint32_t h = 0;
    for (ops->iter_seek(it, "", 0); ops->iter_valid(it); ops->iter_next(it)) {
        size_t kl, vl, esc_len;
        int64_t r;
        const void *k = ops->iter_key(it, &kl);
        if ((rc = store__hist_key_parse(k, kl, &user, &esc_len, &r, NULL)) != 0) break;
        if (r > rev) continue;
        const void *val = ops->iter_value(it, &vl);
        h = crc32c(h, k, kl);
        h = crc32c(h, val, vl);
    }
    if (rc == 0) rc = ops->iter_status(it);
    ops->iter_free(it);
    if (rc == 0) {
        *hash = h;
        if (compact_rev != NULL) *compact_rev = v.compact_rev;
    }
out:
    store__buf_free(&user);
    store__view_close(s, &v);
    return rc;
}
