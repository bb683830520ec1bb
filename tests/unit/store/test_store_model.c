/*
 * test_store_model.c - the store against a reference model of etcd's MVCC.
 *
 * The model keeps every version of every key in memory (no indexes, no
 * cleverness: a read at revision R takes, per key, the newest version <= R)
 * and implements etcd's rules from its source: applyTxn (compares to path,
 * checkPut, checkRange, then the ops), checkTxnRequest and checkIntervals,
 * Range (fetch limit + 1 unless sorting or filtering, prune, sort, truncate),
 * lessor Revoke (delete the attached keys in key order, one revision).
 *
 * The same seeded random operations drive the model, a store on the
 * in-memory database and a store on RocksDB, in lockstep; every result is
 * compared with the model's, field by field, and the two stores' history
 * hashes and logical sizes are compared with each other. Stores are
 * reopened now and then. A failure prints the seed and the step.
 */
#include "tests/unit/store/store_test.h"

#define NKEYS 20
#define STEPS 2500
#define SEEDS 4
#define MAX_LEASES 6

/* ---------------------------------------------------------------- model */

struct mver {
    int64_t rev;
    bool tomb;
    struct store_kv kv; /* key and value point into model memory */
};

struct mkey {
    const uint8_t *k;
    size_t klen;
    struct mver *v; /* oldest first */
    size_t n, cap;
};

struct mlease {
    int64_t id, ttl, remaining;
};

struct model {
    struct mkey keys[NKEYS];
    int64_t rev, compact;
    struct mlease leases[MAX_LEASES * 2];
    size_t n_leases;
    struct store_event *ev; /* every change ever, in order */
    size_t n_ev, cap_ev;
    void **pool; /* model-lifetime allocations */
    size_t n_pool, cap_pool;
};

static void *m_keep(struct model *m, const void *p, size_t n) {
    void *q = malloc(n ? n : 1);
    if (q == NULL) abort();
    if (n) memcpy(q, p, n);
    if (m->n_pool == m->cap_pool) {
        m->cap_pool = m->cap_pool ? m->cap_pool * 2 : 1024;
        m->pool = realloc(m->pool, m->cap_pool * sizeof(*m->pool));
        if (m->pool == NULL) abort();
    }
    m->pool[m->n_pool++] = q;
    return q;
}

static const char *const CAND[NKEYS] = {"a",   "a/b", "a/c",  "a/c/d", "ab",       "b", "b/x",
                                        "b0",  "c",   "c/1",  "c/2",   "c/3",      "d", "e",
                                        "e/f", "zz",  "\x01", "\xff",  "\xff\xff", "m"};

static int cmpb(const void *a, size_t al, const void *b, size_t bl) {
    size_t n = al < bl ? al : bl;
    int c = n ? memcmp(a, b, n) : 0;
    if (c) return c;
    return al < bl ? -1 : al > bl;
}

static bool in_range(const void *k, size_t kl, struct store_bytes key, struct store_bytes end) {
    if (end.len == 0) return cmpb(k, kl, key.base, key.len) == 0;
    if (cmpb(k, kl, key.base, key.len) < 0) return false;
    if (end.len == 1 && ((const uint8_t *)end.base)[0] == 0) return true;
    return cmpb(k, kl, end.base, end.len) < 0;
}

static void m_init(struct model *m) {
    memset(m, 0, sizeof(*m));
    m->rev = 1;
    for (int i = 0; i < NKEYS; i++) {
        m->keys[i].k = (const uint8_t *)CAND[i];
        m->keys[i].klen = strlen(CAND[i]);
    }
    /* Key order, so that scans are in key order. */
    for (int i = 1; i < NKEYS; i++)
        for (int j = i; j > 0 && cmpb(m->keys[j].k, m->keys[j].klen, m->keys[j - 1].k,
                                      m->keys[j - 1].klen) < 0;
             j--) {
            struct mkey t = m->keys[j];
            m->keys[j] = m->keys[j - 1];
            m->keys[j - 1] = t;
        }
}

static void m_free(struct model *m) {
    for (int i = 0; i < NKEYS; i++) free(m->keys[i].v);
    for (size_t i = 0; i < m->n_pool; i++) free(m->pool[i]);
    free(m->pool);
    free(m->ev);
}

static int m_find(const struct model *m, const void *k, size_t kl) {
    for (int i = 0; i < NKEYS; i++)
        if (cmpb(m->keys[i].k, m->keys[i].klen, k, kl) == 0) return i;
    return -1;
}

/* Live version of key i at rev, or NULL. */
static const struct mver *m_at(const struct model *m, int i, int64_t rev) {
    const struct mkey *k = &m->keys[i];
    for (size_t j = k->n; j > 0; j--)
        if (k->v[j - 1].rev <= rev) return k->v[j - 1].tomb ? NULL : &k->v[j - 1];
    return NULL;
}

static struct mlease *m_lease(struct model *m, int64_t id) {
    for (size_t i = 0; i < m->n_leases; i++)
        if (m->leases[i].id == id) return &m->leases[i];
    return NULL;
}

static void m_push_ver(struct model *m, int i, const struct mver *v) {
    struct mkey *k = &m->keys[i];
    if (k->n == k->cap) {
        k->cap = k->cap ? k->cap * 2 : 8;
        k->v = realloc(k->v, k->cap * sizeof(*k->v));
        if (k->v == NULL) abort();
    }
    k->v[k->n++] = *v;
}

static void m_push_ev(struct model *m, const struct store_event *e) {
    if (m->n_ev == m->cap_ev) {
        m->cap_ev = m->cap_ev ? m->cap_ev * 2 : 256;
        m->ev = realloc(m->ev, m->cap_ev * sizeof(*m->ev));
        if (m->ev == NULL) abort();
    }
    m->ev[m->n_ev++] = *e;
}

/* ---- range (etcd applierV3backend.Range) ---- */

static int sort_target;

static int kv_target_cmp(const struct store_kv *a, const struct store_kv *b) {
    switch (sort_target) {
    case STORE_SORT_KEY:
        return cmpb(a->key.base, a->key.len, b->key.base, b->key.len);
    case STORE_SORT_VERSION:
        return (a->version > b->version) - (a->version < b->version);
    case STORE_SORT_CREATE:
        return (a->create_revision > b->create_revision) -
               (a->create_revision < b->create_revision);
    case STORE_SORT_MOD:
        return (a->mod_revision > b->mod_revision) - (a->mod_revision < b->mod_revision);
    default:
        return cmpb(a->value.base, a->value.len, b->value.base, b->value.len);
    }
}

static int m_range(const struct model *m, const struct store_range_req *q, int64_t cur,
                   struct store_range_result *out) {
    memset(out, 0, sizeof(*out));
    int64_t rev = q->revision <= 0 ? cur : q->revision;
    if (rev > cur) return STORE_EFUTUREREV;
    if (rev < m->compact) return STORE_ECOMPACTED;
    struct store_kv *all = t_alloc(NKEYS * sizeof(*all));
    size_t n = 0;
    for (int i = 0; i < NKEYS; i++) {
        if (!in_range(m->keys[i].k, m->keys[i].klen, q->key, q->range_end)) continue;
        const struct mver *v = m_at(m, i, rev);
        if (v) all[n++] = v->kv;
    }
    out->revision = cur;
    out->count = (q->skip_count && !q->count_only) ? -1 : (int64_t)n;
    if (q->count_only) return 0;
    bool filt = q->min_mod_revision || q->max_mod_revision || q->min_create_revision ||
                q->max_create_revision;
    size_t fetched = n;
    if (q->sort_order == STORE_SORT_NONE && !filt && q->limit > 0 && (size_t)q->limit + 1 < n)
        fetched = (size_t)q->limit + 1;
    size_t k = 0;
    for (size_t i = 0; i < fetched; i++) {
        const struct store_kv *kv = &all[i];
        if (q->max_mod_revision && kv->mod_revision > q->max_mod_revision) continue;
        if (q->min_mod_revision && kv->mod_revision < q->min_mod_revision) continue;
        if (q->max_create_revision && kv->create_revision > q->max_create_revision) continue;
        if (q->min_create_revision && kv->create_revision < q->min_create_revision) continue;
        all[k++] = *kv;
    }
    int order = q->sort_order;
    if (q->sort_target != STORE_SORT_KEY && order == STORE_SORT_NONE)
        order = STORE_SORT_ASCEND;
    else if (q->sort_target == STORE_SORT_KEY && order == STORE_SORT_ASCEND)
        order = STORE_SORT_NONE;
    if (order != STORE_SORT_NONE) {
        /* Stable insertion sort: ties keep key order. */
        sort_target = q->sort_target;
        int sign = order == STORE_SORT_DESCEND ? -1 : 1;
        for (size_t i = 1; i < k; i++)
            for (size_t j = i; j > 0 && kv_target_cmp(&all[j], &all[j - 1]) * sign < 0; j--) {
                struct store_kv t = all[j];
                all[j] = all[j - 1];
                all[j - 1] = t;
            }
    }
    if (q->limit > 0 && k > (size_t)q->limit) {
        k = (size_t)q->limit;
        out->more = true;
    }
    if (q->keys_only)
        for (size_t i = 0; i < k; i++) all[i].value.len = 0;
    out->kvs = all;
    out->n_kvs = k;
    return 0;
}

/* ---- txn checks (etcd checkTxnRequest, checkIntervals) ---- */

static int m_check_txn(const struct store_txn *t, int64_t max_ops) {
    size_t opc = t->n_compare;
    if (opc < t->n_success) opc = t->n_success;
    if (opc < t->n_failure) opc = t->n_failure;
    if ((int64_t)opc > max_ops) return STORE_ETOOMANYOPS;
    for (size_t i = 0; i < t->n_compare; i++)
        if (t->compare[i].key.len == 0) return STORE_EKEYEMPTY;
    for (int b = 0; b < 2; b++) {
        const struct store_op *ops = b ? t->failure : t->success;
        size_t n = b ? t->n_failure : t->n_success;
        for (size_t i = 0; i < n; i++) {
            const struct store_op *op = &ops[i];
            int rc = 0;
            if (op->type == STORE_OP_RANGE && op->u.range.key.len == 0) rc = STORE_EKEYEMPTY;
            if (op->type == STORE_OP_PUT) {
                if (op->u.put.key.len == 0)
                    rc = STORE_EKEYEMPTY;
                else if (op->u.put.ignore_value && op->u.put.value.len)
                    rc = STORE_EVALUEPROVIDED;
                else if (op->u.put.ignore_lease && op->u.put.lease)
                    rc = STORE_ELEASEPROVIDED;
            }
            if (op->type == STORE_OP_DELETE_RANGE && op->u.delete_range.key.len == 0)
                rc = STORE_EKEYEMPTY;
            if (op->type == STORE_OP_TXN) rc = m_check_txn(&op->u.txn, max_ops - (int64_t)opc);
            if (rc) return rc;
        }
    }
    return 0;
}

#define SETMAX 256
struct kset {
    struct store_bytes k[SETMAX];
    size_t n;
};
struct dset {
    struct store_bytes b[SETMAX], e[SETMAX];
    size_t n;
};

static bool kset_has(const struct kset *s, struct store_bytes k) {
    for (size_t i = 0; i < s->n; i++)
        if (cmpb(s->k[i].base, s->k[i].len, k.base, k.len) == 0) return true;
    return false;
}

/* etcd's adt intervals take range_end literally: [key, "\0") is empty. */
static bool dset_hit(const struct dset *d, struct store_bytes k) {
    for (size_t i = 0; i < d->n; i++) {
        if (d->e[i].len == 0) {
            if (cmpb(k.base, k.len, d->b[i].base, d->b[i].len) == 0) return true;
        } else if (cmpb(k.base, k.len, d->b[i].base, d->b[i].len) >= 0 &&
                   cmpb(k.base, k.len, d->e[i].base, d->e[i].len) < 0) {
            return true;
        }
    }
    return false;
}

static int m_intervals(const struct store_op *ops, size_t n, struct kset *puts, struct dset *dels) {
    for (size_t i = 0; i < n; i++)
        if (ops[i].type == STORE_OP_DELETE_RANGE) {
            dels->b[dels->n] = ops[i].u.delete_range.key;
            dels->e[dels->n++] = ops[i].u.delete_range.range_end;
        }
    for (size_t i = 0; i < n; i++) {
        if (ops[i].type != STORE_OP_TXN) continue;
        struct kset *pt = t_alloc(sizeof(*pt)), *pe = t_alloc(sizeof(*pe));
        struct dset *dt = t_alloc(sizeof(*dt)), *de = t_alloc(sizeof(*de));
        int rc = m_intervals(ops[i].u.txn.success, ops[i].u.txn.n_success, pt, dt);
        if (!rc) rc = m_intervals(ops[i].u.txn.failure, ops[i].u.txn.n_failure, pe, de);
        if (rc) return rc;
        for (size_t j = 0; j < pt->n; j++) {
            if (kset_has(puts, pt->k[j]) || dset_hit(dels, pt->k[j])) return STORE_EDUPLICATEKEY;
            puts->k[puts->n++] = pt->k[j];
        }
        for (size_t j = 0; j < pe->n; j++) {
            if ((kset_has(puts, pe->k[j]) && !kset_has(pt, pe->k[j])) || dset_hit(dels, pe->k[j]))
                return STORE_EDUPLICATEKEY;
            if (!kset_has(puts, pe->k[j])) puts->k[puts->n++] = pe->k[j];
        }
        for (size_t j = 0; j < dt->n; j++) {
            dels->b[dels->n] = dt->b[j];
            dels->e[dels->n++] = dt->e[j];
        }
        for (size_t j = 0; j < de->n; j++) {
            dels->b[dels->n] = de->b[j];
            dels->e[dels->n++] = de->e[j];
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (ops[i].type != STORE_OP_PUT) continue;
        struct store_bytes k = ops[i].u.put.key;
        if (kset_has(puts, k) || dset_hit(dels, k)) return STORE_EDUPLICATEKEY;
        puts->k[puts->n++] = k;
    }
    return 0;
}

/* ---- txn apply (etcd applierV3backend.Txn) ---- */

struct mtx {
    struct model *m;
    int64_t begin;
    bool changed;
    struct store_event *ev; /* this apply's events */
    size_t n_ev;
    bool path[256];
    size_t n_path;
};

static bool m_cmp_kv(const struct store_compare *c, const struct store_kv *kv) {
    int r;
    switch (c->target) {
    case STORE_CMP_VALUE:
        r = cmpb(kv->value.base, kv->value.len, c->value.base, c->value.len);
        break;
    case STORE_CMP_CREATE:
        r = (kv->create_revision > c->number) - (kv->create_revision < c->number);
        break;
    case STORE_CMP_MOD:
        r = (kv->mod_revision > c->number) - (kv->mod_revision < c->number);
        break;
    case STORE_CMP_VERSION:
        r = (kv->version > c->number) - (kv->version < c->number);
        break;
    default:
        r = (kv->lease > c->number) - (kv->lease < c->number);
    }
    switch (c->result) {
    case STORE_CMP_EQUAL:
        return r == 0;
    case STORE_CMP_NOT_EQUAL:
        return r != 0;
    case STORE_CMP_GREATER:
        return r > 0;
    default:
        return r < 0;
    }
}

static bool m_compare(const struct model *m, const struct store_compare *c) {
    bool any = false;
    for (int i = 0; i < NKEYS; i++) {
        if (!in_range(m->keys[i].k, m->keys[i].klen, c->key, c->range_end)) continue;
        const struct mver *v = m_at(m, i, m->rev);
        if (!v) continue;
        any = true;
        if (!m_cmp_kv(c, &v->kv)) return false;
    }
    if (any) return true;
    if (c->target == STORE_CMP_VALUE) return false;
    struct store_kv zero = {0};
    zero.value.base = "";
    return m_cmp_kv(c, &zero);
}

static void m_path(struct mtx *x, const struct store_txn *t) {
    bool ok = true;
    for (size_t i = 0; i < t->n_compare && ok; i++) ok = m_compare(x->m, &t->compare[i]);
    x->path[x->n_path++] = ok;
    const struct store_op *ops = ok ? t->success : t->failure;
    size_t n = ok ? t->n_success : t->n_failure;
    for (size_t i = 0; i < n; i++)
        if (ops[i].type == STORE_OP_TXN) m_path(x, &ops[i].u.txn);
}

static int m_check_path(struct mtx *x, const struct store_txn *t, size_t *pi, bool puts) {
    bool ok = x->path[(*pi)++];
    const struct store_op *ops = ok ? t->success : t->failure;
    size_t n = ok ? t->n_success : t->n_failure;
    for (size_t i = 0; i < n; i++) {
        const struct store_op *op = &ops[i];
        int rc = 0;
        if (op->type == STORE_OP_TXN) {
            rc = m_check_path(x, &op->u.txn, pi, puts);
        } else if (puts && op->type == STORE_OP_PUT) {
            if (op->u.put.ignore_value || op->u.put.ignore_lease) {
                int k = m_find(x->m, op->u.put.key.base, op->u.put.key.len);
                if (k < 0 || !m_at(x->m, k, x->m->rev)) rc = STORE_EKEYNOTFOUND;
            }
            if (!rc && op->u.put.lease && !m_lease(x->m, op->u.put.lease))
                rc = STORE_ELEASENOTFOUND;
        } else if (!puts && op->type == STORE_OP_RANGE) {
            int64_t r = op->u.range.revision;
            if (r > 0 && r > x->begin) rc = STORE_EFUTUREREV;
            if (r > 0 && r < x->m->compact) rc = STORE_ECOMPACTED;
        }
        if (rc) return rc;
    }
    return 0;
}

static void m_add_event(struct mtx *x, const struct store_event *e) {
    x->ev[x->n_ev++] = *e;
    m_push_ev(x->m, e);
}

static void m_delete_key(struct mtx *x, int i, struct store_kv *prev_out) {
    struct model *m = x->m;
    const struct mver *cur = m_at(m, i, x->begin + 1);
    /* The op reports what it deleted; the event's prev_kv is the version at
     * revision - 1 (etcd's watch), which differs when a nested txn put the
     * key earlier in this same revision. */
    const struct mver *before = m_at(m, i, x->begin);
    if (prev_out) *prev_out = cur->kv;
    struct mver v = {0};
    v.rev = x->begin + 1;
    v.tomb = true;
    struct store_event e = {0};
    e.type = STORE_EVENT_DELETE;
    e.kv.key = cur->kv.key;
    e.kv.mod_revision = v.rev;
    e.has_prev_kv = before != NULL;
    if (before) e.prev_kv = before->kv;
    m_push_ver(m, i, &v);
    x->changed = true;
    m_add_event(x, &e);
}

static void m_exec(struct mtx *x, const struct store_txn *t, size_t *pi,
                   struct store_txn_result *res) {
    struct model *m = x->m;
    bool ok = x->path[(*pi)++];
    const struct store_op *ops = ok ? t->success : t->failure;
    size_t n = ok ? t->n_success : t->n_failure;
    res->succeeded = ok;
    res->n_results = n;
    res->results = t_alloc((n ? n : 1) * sizeof(*res->results));
    for (size_t i = 0; i < n; i++) {
        const struct store_op *op = &ops[i];
        struct store_op_result *r = &res->results[i];
        r->type = op->type;
        if (op->type == STORE_OP_RANGE) {
            int rc = m_range(m, &op->u.range, x->changed ? x->begin + 1 : x->begin, &r->u.range);
            if (rc) abort(); /* pre-checked */
        } else if (op->type == STORE_OP_PUT) {
            const struct store_put *p = &op->u.put;
            int k = m_find(m, p->key.base, p->key.len);
            if (k < 0) abort(); /* the generator only puts candidate keys */
            const struct mver *prev = m_at(m, k, x->begin + 1);
            struct mver v = {0};
            v.rev = x->begin + 1;
            v.kv.key.base = m->keys[k].k;
            v.kv.key.len = m->keys[k].klen;
            v.kv.create_revision = prev ? prev->kv.create_revision : v.rev;
            v.kv.mod_revision = v.rev;
            v.kv.version = prev ? prev->kv.version + 1 : 1;
            v.kv.lease = (p->ignore_lease && prev) ? prev->kv.lease : p->lease;
            v.kv.value = (p->ignore_value && prev) ? prev->kv.value : p->value;
            v.kv.value.base = m_keep(m, v.kv.value.base, v.kv.value.len);
            v.kv.mode = p->mode;
            v.kv.uid = p->uid;
            v.kv.gid = p->gid;
            v.kv.mtime_ns = p->mtime_ns;
            struct store_event e = {0};
            e.type = STORE_EVENT_PUT;
            e.kv = v.kv;
            const struct mver *before = m_at(m, k, x->begin); /* etcd: rev - 1 */
            if (before) {
                e.has_prev_kv = true;
                e.prev_kv = before->kv;
            }
            r->u.put.has_prev_kv = p->prev_kv && prev;
            if (r->u.put.has_prev_kv) r->u.put.prev_kv = prev->kv;
            m_push_ver(m, k, &v);
            x->changed = true;
            m_add_event(x, &e);
        } else if (op->type == STORE_OP_DELETE_RANGE) {
            const struct store_delete_range *d = &op->u.delete_range;
            struct store_kv *prevs = t_alloc(NKEYS * sizeof(*prevs));
            size_t nd = 0;
            for (int k = 0; k < NKEYS; k++) {
                if (!in_range(m->keys[k].k, m->keys[k].klen, d->key, d->range_end)) continue;
                if (!m_at(m, k, x->begin + 1)) continue;
                m_delete_key(x, k, &prevs[nd++]);
            }
            r->u.delete_range.deleted = (int64_t)nd;
            if (d->prev_kv) {
                r->u.delete_range.prev_kvs = prevs;
                r->u.delete_range.n_prev_kvs = nd;
            }
        } else {
            r->u.txn = t_alloc(sizeof(*r->u.txn));
            m_exec(x, &op->u.txn, pi, r->u.txn);
        }
    }
}

/* The model's store_apply: fills *res (t_alloc'ed parts). */
static void m_apply(struct model *m, const struct store_request *q, struct store_result *res,
                    struct store_event *evbuf) {
    memset(res, 0, sizeof(*res));
    res->type = q->type;
    res->request_id = q->id;
    struct mtx x = {0};
    x.m = m;
    x.begin = m->rev;
    x.ev = evbuf;
    int err = 0;
    switch (q->type) {
    case STORE_REQ_TXN: {
        err = m_check_txn(&q->u.txn, STORE_TXN_OPS_DEFAULT);
        for (int b = 0; b < 2 && !err; b++) {
            struct kset *p = t_alloc(sizeof(*p));
            struct dset *d = t_alloc(sizeof(*d));
            err = b ? m_intervals(q->u.txn.failure, q->u.txn.n_failure, p, d)
                    : m_intervals(q->u.txn.success, q->u.txn.n_success, p, d);
        }
        if (err) break;
        m_path(&x, &q->u.txn);
        size_t pi = 0;
        err = m_check_path(&x, &q->u.txn, &pi, true);
        pi = 0;
        if (!err) err = m_check_path(&x, &q->u.txn, &pi, false);
        if (err) break;
        pi = 0;
        m_exec(&x, &q->u.txn, &pi, &res->txn);
        break;
    }
    case STORE_REQ_COMPACT:
        if (q->u.compact.revision <= m->compact)
            err = STORE_ECOMPACTED;
        else if (q->u.compact.revision > m->rev)
            err = STORE_EFUTUREREV;
        else
            m->compact = q->u.compact.revision;
        break;
    case STORE_REQ_LEASE_GRANT:
        if (q->u.lease_grant.id <= 0 || q->u.lease_grant.ttl < 0)
            err = STORE_EINVAL;
        else if (q->u.lease_grant.ttl > STORE_LEASE_TTL_MAX)
            err = STORE_ELEASETTLTOOLARGE;
        else if (m_lease(m, q->u.lease_grant.id))
            err = STORE_ELEASEEXISTS;
        else {
            m->leases[m->n_leases++] =
                (struct mlease){q->u.lease_grant.id, q->u.lease_grant.ttl, q->u.lease_grant.ttl};
            res->lease_id = q->u.lease_grant.id;
            res->lease_ttl = q->u.lease_grant.ttl;
        }
        break;
    case STORE_REQ_LEASE_REVOKE: {
        struct mlease *l = m_lease(m, q->u.lease_revoke.id);
        if (!l) {
            err = STORE_ELEASENOTFOUND;
            break;
        }
        for (int k = 0; k < NKEYS; k++) {
            const struct mver *v = m_at(m, k, m->rev + 1);
            if (v && v->kv.lease == l->id) m_delete_key(&x, k, NULL);
        }
        res->lease_id = l->id;
        res->lease_ttl = l->ttl;
        *l = m->leases[--m->n_leases];
        break;
    }
    case STORE_REQ_LEASE_CHECKPOINT: {
        struct mlease *l = m_lease(m, q->u.lease_checkpoint.id);
        if (l) {
            l->remaining = q->u.lease_checkpoint.remaining_ttl;
            res->lease_id = l->id;
            res->lease_ttl = l->ttl;
            res->lease_remaining_ttl = l->remaining;
        }
        break;
    }
    default:
        break;
    }
    if (err) {
        /* Nothing happened (the txn checks run before any write). */
        memset(&res->txn, 0, sizeof(res->txn));
        res->err = err;
        x.n_ev = 0;
    }
    if (x.changed) m->rev = x.begin + 1;
    res->revision = m->rev;
    res->events = evbuf;
    res->n_events = x.n_ev;
}

/* ---------------------------------------------------------------- compare */

static char where_[256];

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "  mismatch %s: %s (line %d)\n", where_, #cond, __LINE__);             \
            return false;                                                                          \
        }                                                                                          \
    } while (0)

static bool bytes_eq(struct store_bytes a, struct store_bytes b) {
    return a.len == b.len && (a.len == 0 || memcmp(a.base, b.base, a.len) == 0);
}

static bool kv_eq(const struct store_kv *a, const struct store_kv *b) {
    CHECK(bytes_eq(a->key, b->key));
    CHECK(a->value.len == b->value.len);
    CHECK(bytes_eq(a->value, b->value));
    CHECK(a->create_revision == b->create_revision);
    CHECK(a->mod_revision == b->mod_revision);
    CHECK(a->version == b->version);
    CHECK(a->lease == b->lease);
    CHECK(a->mode == b->mode && a->uid == b->uid && a->gid == b->gid);
    CHECK(a->mtime_ns == b->mtime_ns);
    return true;
}

static bool range_eq(const struct store_range_result *a, const struct store_range_result *b) {
    CHECK(a->revision == b->revision);
    CHECK(a->count == b->count);
    CHECK(a->more == b->more);
    CHECK(a->n_kvs == b->n_kvs);
    for (size_t i = 0; i < a->n_kvs; i++)
        if (!kv_eq(&a->kvs[i], &b->kvs[i])) return false;
    return true;
}

static bool event_eq(const struct store_event *a, const struct store_event *b) {
    CHECK(a->type == b->type);
    if (!kv_eq(&a->kv, &b->kv)) return false;
    CHECK(a->has_prev_kv == b->has_prev_kv);
    if (a->has_prev_kv && !kv_eq(&a->prev_kv, &b->prev_kv)) return false;
    return true;
}

static bool txn_eq(const struct store_txn_result *a, const struct store_txn_result *b) {
    CHECK(a->succeeded == b->succeeded);
    CHECK(a->n_results == b->n_results);
    for (size_t i = 0; i < a->n_results; i++) {
        const struct store_op_result *x = &a->results[i], *y = &b->results[i];
        CHECK(x->type == y->type);
        switch (x->type) {
        case STORE_OP_RANGE:
            if (!range_eq(&x->u.range, &y->u.range)) return false;
            break;
        case STORE_OP_PUT:
            CHECK(x->u.put.has_prev_kv == y->u.put.has_prev_kv);
            if (x->u.put.has_prev_kv && !kv_eq(&x->u.put.prev_kv, &y->u.put.prev_kv)) return false;
            break;
        case STORE_OP_DELETE_RANGE:
            CHECK(x->u.delete_range.deleted == y->u.delete_range.deleted);
            CHECK(x->u.delete_range.n_prev_kvs == y->u.delete_range.n_prev_kvs);
            for (size_t j = 0; j < x->u.delete_range.n_prev_kvs; j++)
                if (!kv_eq(&x->u.delete_range.prev_kvs[j], &y->u.delete_range.prev_kvs[j]))
                    return false;
            break;
        default:
            if (!txn_eq(x->u.txn, y->u.txn)) return false;
        }
    }
    return true;
}

static bool result_eq(const struct store_result *a, const struct store_result *b) {
    CHECK(a->err == b->err);
    CHECK(a->type == b->type);
    CHECK(a->request_id == b->request_id);
    CHECK(a->revision == b->revision);
    CHECK(a->lease_id == b->lease_id && a->lease_ttl == b->lease_ttl);
    CHECK(a->lease_remaining_ttl == b->lease_remaining_ttl);
    if (!txn_eq(&a->txn, &b->txn)) return false;
    CHECK(a->n_events == b->n_events);
    for (size_t i = 0; i < a->n_events; i++)
        if (!event_eq(&a->events[i], &b->events[i])) return false;
    return true;
}

/* ---------------------------------------------------------------- generator */

struct gen {
    uint64_t rng;
    const struct model *m;
};

static struct store_bytes g_key(struct gen *g) {
    return t_str(CAND[t_below(&g->rng, NKEYS)]);
}

static struct store_bytes g_value(struct gen *g) {
    size_t n = t_below(&g->rng, 5);
    char *v = t_alloc(n + 1);
    for (size_t i = 0; i < n; i++) v[i] = "ab\0z"[t_below(&g->rng, 4)];
    return t_bytes(v, n);
}

/* A key range: one key, a prefix, from a key, or between two keys. */
static void g_range(struct gen *g, struct store_bytes *key, struct store_bytes *end) {
    *key = g_key(g);
    switch (t_below(&g->rng, 5)) {
    case 0:
        *end = t_bytes(NULL, 0);
        break;
    case 1: { /* prefix */
        uint8_t *e = t_dup(key->base, key->len);
        e[key->len - 1]++;
        *end = t_bytes(e, key->len);
        if (e[key->len - 1] == 0) *end = t_bytes("", 1); /* 0xff prefix: from-key */
        break;
    }
    case 2:
        *end = t_bytes("", 1);
        break;
    default:
        *end = g_key(g); /* may be <= key: empty */
    }
}

static int64_t g_rev(struct gen *g) {
    int64_t lo = g->m->compact > 1 ? g->m->compact - 1 : 0;
    return lo + (int64_t)t_below(&g->rng, (uint64_t)(g->m->rev + 2 - lo));
}

static int64_t g_lease(struct gen *g) {
    uint64_t r = t_below(&g->rng, 10);
    if (r < 7) return 0;
    return 1 + (int64_t)t_below(&g->rng, MAX_LEASES);
}

static void g_range_req(struct gen *g, struct store_range_req *q) {
    memset(q, 0, sizeof(*q));
    g_range(g, &q->key, &q->range_end);
    q->limit = t_below(&g->rng, 3) ? 0 : (int64_t)t_below(&g->rng, 4);
    q->revision = t_below(&g->rng, 2) ? 0 : g_rev(g);
    if (t_below(&g->rng, 3) == 0) {
        q->sort_order = (uint8_t)t_below(&g->rng, 3);
        q->sort_target = (uint8_t)t_below(&g->rng, 5);
    }
    q->keys_only = t_below(&g->rng, 8) == 0;
    q->count_only = t_below(&g->rng, 10) == 0;
    q->skip_count = t_below(&g->rng, 10) == 0;
    if (t_below(&g->rng, 10) == 0) q->min_mod_revision = g_rev(g);
    if (t_below(&g->rng, 10) == 0) q->max_mod_revision = g_rev(g);
    if (t_below(&g->rng, 10) == 0) q->min_create_revision = g_rev(g);
    if (t_below(&g->rng, 10) == 0) q->max_create_revision = g_rev(g);
}

static void g_txn(struct gen *g, struct store_txn *t, int depth);

static void g_op(struct gen *g, struct store_op *op, int depth) {
    memset(op, 0, sizeof(*op));
    uint64_t k = t_below(&g->rng, depth < 2 ? 10 : 9);
    if (k < 4) {
        op->type = STORE_OP_PUT;
        struct store_put *p = &op->u.put;
        p->key = g_key(g);
        p->value = g_value(g);
        p->lease = g_lease(g);
        p->prev_kv = t_below(&g->rng, 2);
        if (t_below(&g->rng, 12) == 0) {
            p->ignore_value = true;
            if (t_below(&g->rng, 4)) p->value.len = 0;
        }
        if (t_below(&g->rng, 12) == 0) {
            p->ignore_lease = true;
            if (t_below(&g->rng, 4)) p->lease = 0;
        }
        p->mode = (uint32_t)t_below(&g->rng, 4);
        p->uid = (uint32_t)t_below(&g->rng, 3);
        p->gid = (uint32_t)t_below(&g->rng, 3);
        p->mtime_ns = (int64_t)t_below(&g->rng, 1000) - 500;
    } else if (k < 6) {
        op->type = STORE_OP_DELETE_RANGE;
        g_range(g, &op->u.delete_range.key, &op->u.delete_range.range_end);
        op->u.delete_range.prev_kv = t_below(&g->rng, 2);
    } else if (k < 9) {
        op->type = STORE_OP_RANGE;
        g_range_req(g, &op->u.range);
    } else {
        op->type = STORE_OP_TXN;
        g_txn(g, &op->u.txn, depth + 1);
    }
}

static void g_txn(struct gen *g, struct store_txn *t, int depth) {
    memset(t, 0, sizeof(*t));
    t->n_compare = t_below(&g->rng, 3);
    t->compare = t_alloc((t->n_compare + 1) * sizeof(*t->compare));
    for (size_t i = 0; i < t->n_compare; i++) {
        struct store_compare *c = &t->compare[i];
        c->target = (uint8_t)t_below(&g->rng, 5);
        c->result = (uint8_t)t_below(&g->rng, 4);
        if (t_below(&g->rng, 4) == 0)
            g_range(g, &c->key, &c->range_end);
        else
            c->key = g_key(g);
        c->number = c->target == STORE_CMP_LEASE     ? g_lease(g)
                    : c->target == STORE_CMP_VERSION ? (int64_t)t_below(&g->rng, 4)
                                                     : g_rev(g);
        c->value = g_value(g);
    }
    t->n_success = t_below(&g->rng, 4);
    t->n_failure = t_below(&g->rng, 3);
    t->success = t_alloc((t->n_success + 1) * sizeof(*t->success));
    t->failure = t_alloc((t->n_failure + 1) * sizeof(*t->failure));
    for (size_t i = 0; i < t->n_success; i++) g_op(g, &t->success[i], depth);
    for (size_t i = 0; i < t->n_failure; i++) g_op(g, &t->failure[i], depth);
}

/* ---------------------------------------------------------------- driver */

struct run {
    struct model m;
    struct t_store st[2]; /* memdb, RocksDB */
    struct gen g;
    uint64_t seed;
    int step;
};

static bool apply_all(struct run *r, const struct store_request *q) {
    struct store_event *evbuf = t_alloc(sizeof(struct store_event) * 512);
    struct store_result mres;
    m_apply(&r->m, q, &mres, evbuf);
    for (int i = 0; i < 2; i++) {
        struct store_result *res = NULL;
        int rc = t_apply(&r->st[i], q, &res);
        snprintf(where_, sizeof(where_), "seed %llu step %d store %d apply type %d",
                 (unsigned long long)r->seed, r->step, i, q->type);
        CHECK(rc == 0);
        CHECK(res != NULL);
        bool ok = result_eq(res, &mres);
        store_result_free(res);
        if (!ok) return false;
        CHECK(store_current_revision(r->st[i].s) == r->m.rev);
        CHECK(store_compact_revision(r->st[i].s) == r->m.compact);
    }
    return true;
}

static bool check_range(struct run *r) {
    struct store_range_req q;
    g_range_req(&r->g, &q);
    struct store_range_result want;
    int mrc = m_range(&r->m, &q, r->m.rev, &want);
    for (int i = 0; i < 2; i++) {
        struct store_range_result got;
        int rc = store_range(r->st[i].s, &q, &got);
        snprintf(where_, sizeof(where_), "seed %llu step %d store %d range",
                 (unsigned long long)r->seed, r->step, i);
        bool ok = rc == mrc && (rc != 0 || range_eq(&got, &want));
        if (rc != mrc) fprintf(stderr, "  %s: rc %d want %d\n", where_, rc, mrc);
        store_range_result_release(&got);
        if (!ok) return false;
    }
    return true;
}

static bool check_events(struct run *r) {
    int64_t lo = r->m.compact > 1 ? r->m.compact : 1;
    int64_t from = lo + (int64_t)t_below(&r->g.rng, (uint64_t)(r->m.rev + 1 - lo) + 1);
    bool all = t_below(&r->g.rng, 2);
    struct store_bytes key = {0}, end = t_bytes("", 1);
    if (!all) g_range(&r->g, &key, &end);
    bool prev = t_below(&r->g.rng, 2);
    /* The model's expectation. */
    size_t nw = 0;
    struct store_event *want = t_alloc((r->m.n_ev + 1) * sizeof(*want));
    for (size_t i = 0; i < r->m.n_ev; i++) {
        const struct store_event *e = &r->m.ev[i];
        if (e->kv.mod_revision < from) continue;
        if (!all && !in_range(e->kv.key.base, e->kv.key.len, key, end)) continue;
        if (e->type == STORE_EVENT_PUT && e->kv.mod_revision == r->m.compact) {
            /* A put its own revision superseded is compacted away with it. */
            bool superseded = false;
            for (size_t j = i + 1;
                 j < r->m.n_ev && r->m.ev[j].kv.mod_revision == e->kv.mod_revision; j++)
                if (bytes_eq(r->m.ev[j].kv.key, e->kv.key)) superseded = true;
            if (superseded) continue;
        }
        want[nw] = *e;
        int k = m_find(&r->m, e->kv.key.base, e->kv.key.len);
        const struct mver *pv = m_at(&r->m, k, e->kv.mod_revision - 1);
        /* Compaction at C drops what the changes at C superseded. */
        want[nw].has_prev_kv = prev && pv && e->kv.mod_revision > r->m.compact;
        if (want[nw].has_prev_kv) want[nw].prev_kv = pv->kv;
        nw++;
    }
    for (int i = 0; i < 2; i++) {
        snprintf(where_, sizeof(where_), "seed %llu step %d store %d events from %lld",
                 (unsigned long long)r->seed, r->step, i, (long long)from);
        size_t got_n = 0;
        int64_t next = from;
        while (next <= r->m.rev) {
            struct store_event_batch b;
            int rc = store_events(r->st[i].s, next, key.base, key.len, end.base, end.len,
                                  1 + t_below(&r->g.rng, 8), prev, &b);
            if (rc != 0) fprintf(stderr, "  store_events: %s\n", store_strerror(rc));
            CHECK(rc == 0);
            CHECK(b.next_rev > next);
            for (size_t j = 0; j < b.n_events; j++) {
                CHECK(got_n < nw);
                bool ok = event_eq(&b.events[j], &want[got_n++]);
                if (!ok) {
                    store_event_batch_release(&b);
                    return false;
                }
            }
            next = b.next_rev;
            store_event_batch_release(&b);
        }
        CHECK(got_n == nw);
    }
    return true;
}

static bool check_stores_agree(struct run *r) {
    uint32_t h[2];
    struct store_status st[2];
    snprintf(where_, sizeof(where_), "seed %llu step %d hash", (unsigned long long)r->seed,
             r->step);
    for (int i = 0; i < 2; i++) {
        CHECK(store_hash(r->st[i].s, 0, &h[i], NULL) == 0);
        CHECK(store_status(r->st[i].s, &st[i]) == 0);
    }
    CHECK(h[0] == h[1]);
    CHECK(st[0].logical_bytes == st[1].logical_bytes);
    CHECK(st[0].n_leases == st[1].n_leases);
    CHECK(st[0].n_leases == r->m.n_leases);
    /* Leases and their keys. */
    for (int i = 0; i < 2; i++) {
        struct store_lease *ls;
        size_t n;
        CHECK(store_lease_list(r->st[i].s, &ls, &n) == 0);
        CHECK(n == r->m.n_leases);
        for (size_t j = 0; j < n; j++) {
            struct mlease *ml = m_lease(&r->m, ls[j].id);
            CHECK(ml != NULL);
            CHECK(ml->ttl == ls[j].ttl && ml->remaining == ls[j].remaining_ttl);
            struct store_key_list kl;
            CHECK(store_lease_keys(r->st[i].s, ls[j].id, &kl) == 0);
            size_t want = 0;
            for (int k = 0; k < NKEYS; k++) {
                const struct mver *v = m_at(&r->m, k, r->m.rev);
                if (v && v->kv.lease == ls[j].id) want++;
            }
            size_t got = kl.n_keys;
            store_key_list_release(&kl);
            CHECK(got == want);
        }
        free(ls);
    }
    return true;
}

static bool run_seed(uint64_t seed) {
    struct run r;
    memset(&r, 0, sizeof(r));
    r.seed = seed;
    r.g.rng = seed * 2654435761u + 1;
    r.g.m = &r.m;
    m_init(&r.m);
    bool ok = t_store_open(&r.st[0], false, 0) == 0 && t_store_open(&r.st[1], true, 0) == 0;
    for (r.step = 0; ok && r.step < STEPS; r.step++) {
        uint64_t k = t_below(&r.g.rng, 100);
        struct store_request q;
        memset(&q, 0, sizeof(q));
        q.id = t_rand(&r.g.rng);
        if (k < 30) {
            struct store_op *op = t_alloc(sizeof(*op));
            g_op(&r.g, op, 2);
            q.type = STORE_REQ_TXN;
            q.u.txn.success = op;
            q.u.txn.n_success = 1;
            ok = apply_all(&r, &q);
        } else if (k < 55) {
            q.type = STORE_REQ_TXN;
            g_txn(&r.g, &q.u.txn, 1);
            ok = apply_all(&r, &q);
        } else if (k < 75) {
            ok = check_range(&r);
        } else if (k < 78) {
            q.type = STORE_REQ_COMPACT;
            q.u.compact.revision = g_rev(&r.g);
            ok = apply_all(&r, &q);
        } else if (k < 84) {
            q.type = STORE_REQ_LEASE_GRANT;
            q.u.lease_grant.id = (int64_t)t_below(&r.g.rng, MAX_LEASES + 1);
            q.u.lease_grant.ttl = (int64_t)t_below(&r.g.rng, 100);
            ok = apply_all(&r, &q);
        } else if (k < 88) {
            q.type = STORE_REQ_LEASE_REVOKE;
            q.u.lease_revoke.id = 1 + (int64_t)t_below(&r.g.rng, MAX_LEASES);
            ok = apply_all(&r, &q);
        } else if (k < 89) {
            q.type = STORE_REQ_LEASE_CHECKPOINT;
            q.u.lease_checkpoint.id = 1 + (int64_t)t_below(&r.g.rng, MAX_LEASES);
            q.u.lease_checkpoint.remaining_ttl = (int64_t)t_below(&r.g.rng, 100);
            ok = apply_all(&r, &q);
        } else if (k < 90) {
            q.type = STORE_REQ_NOOP;
            ok = apply_all(&r, &q);
        } else if (k < 95) {
            ok = check_events(&r);
        } else if (k < 99 || t_below(&r.g.rng, 3) != 0) {
            ok = check_stores_agree(&r);
        } else {
            /* Reopening RocksDB flushes and syncs: slow on small disks, so
             * about once in 300 steps. */
            ok = t_store_reopen(&r.st[0]) == 0 && t_store_reopen(&r.st[1]) == 0;
        }
        t_free_all();
    }
    if (ok) ok = check_stores_agree(&r);
    if (!ok)
        fprintf(stderr, "  model test failed: --seed %llu (step %d)\n", (unsigned long long)seed,
                r.step);
    t_free_all();
    t_store_close(&r.st[0]);
    t_store_close(&r.st[1]);
    m_free(&r.m);
    return ok;
}

TEST(model_random_ops) {
    for (uint64_t i = 0; i < SEEDS; i++) ASSERT(run_seed(harness_seed + i));
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
