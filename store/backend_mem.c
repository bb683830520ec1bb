/*
 * backend_mem.c - an in-memory storage table with fault injection, for
 * tests: the same MVCC code runs over it as over RocksDB.
 *
 * Each column family is a sorted array of keys; each key holds its versions
 * (commit sequence number, value or deletion), oldest first. A snapshot is a
 * sequence number; a read at sequence S sees, per key, the newest version
 * with seq <= S. Commits are numbered; a synced commit makes every commit up
 * to it durable. store_memdb_crash() drops the versions of commits after the
 * durable point (keeping a prefix of them, as a write-ahead log recovers),
 * which is what a power loss does to RocksDB's unsynced writes.
 *
 * Versions no reader can see any more (older than the newest version at or
 * below both the durable point and the oldest live snapshot or iterator)
 * are pruned now and then so long tests stay small. One mutex guards
 * everything; iterators copy the current entry out, and re-find their place
 * by key, so concurrent commits cannot invalidate them.
 */
#include <string.h>

#include "store/store_int.h"

/* Full pruning pass every this many commits. */
#define MEM_PRUNE_EVERY 64u

struct mver {
    uint64_t seq;
    bool deleted;
    uint8_t *val;
    size_t len;
};

struct ment {
    uint8_t *key;
    size_t klen;
    struct mver *v; /* oldest first */
    size_t nv, capv;
};

struct mcf {
    struct ment *e; /* sorted by key */
    size_t n, cap;
};

struct store_memdb {
    pthread_mutex_t mu;
    struct mcf cf[STORE__CF_COUNT];
    uint64_t seq;         /* last commit; protected by mu */
    uint64_t durable_seq; /* last synced commit */
    uint64_t writes;      /* commits so far */
    uint64_t fail_in;     /* fail the fail_in-th next commit; 0 = off */
    uint64_t *live;       /* sequence numbers of live snapshots and iterators */
    size_t n_live, cap_live;
    unsigned open_stores;
};

struct memb {
    struct store__backend base;
    struct store_memdb *m;
};

struct store__snap {
    uint64_t seq;
};

struct store__iter {
    struct store_memdb *m;
    int cf;
    uint64_t seq;
    bool valid;
    int status; /* 0, or STORE_ENOMEM once a position could not be copied */
    struct store__buf key;
    struct store__buf val;
};

enum { OP_PUT, OP_DEL, OP_DELRANGE };

struct mop {
    int type;
    int cf;
    uint8_t *k;
    size_t klen;
    uint8_t *v; /* value, or the end key of a range */
    size_t vlen;
};

struct store__batch {
    struct mop *ops;
    size_t n, cap;
};

/* ---------------------------------------------------------------- helpers */

static int cmpk(const uint8_t *a, size_t al, const uint8_t *b, size_t bl) {
    return store__bytes_cmp(a, al, b, bl);
}

/* First index with key >= k (strict: > k). */
static size_t lower_bound(const struct mcf *c, const void *k, size_t klen, bool strict) {
    size_t lo = 0, hi = c->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = cmpk(c->e[mid].key, c->e[mid].klen, k, klen);
        if (r < 0 || (strict && r == 0))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The version visible at seq, or NULL (absent or deleted). */
static const struct mver *visible(const struct ment *e, uint64_t seq) {
    for (size_t i = e->nv; i > 0; i--) {
        const struct mver *v = &e->v[i - 1];
        if (v->seq <= seq) return v->deleted ? NULL : v;
    }
    return NULL;
}

/* Registers a reader at seq; STORE_ENOMEM leaves m unchanged. */
static int live_add(struct store_memdb *m, uint64_t seq) {
    if (m->n_live == m->cap_live) {
        size_t cap = m->cap_live ? m->cap_live * 2 : 16;
        uint64_t *p = qfs_realloc(m->live, cap * sizeof(*p));
        if (p == NULL) return STORE_ENOMEM;
        m->live = p;
        m->cap_live = cap;
    }
    m->live[m->n_live++] = seq;
    return 0;
}

static void live_del(struct store_memdb *m, uint64_t seq) {
    for (size_t i = 0; i < m->n_live; i++) {
        if (m->live[i] == seq) {
            m->live[i] = m->live[--m->n_live];
            return;
        }
    }
    STORE_ASSERT(!"unknown snapshot");
}

static void ent_free(struct ment *e) {
    for (size_t i = 0; i < e->nv; i++) free(e->v[i].val);
    free(e->v);
    free(e->key);
}

/* Drops versions nobody can read: every version older than the newest one
 * with seq <= floor; and a key whose only version is such a deletion. */
static void prune(struct store_memdb *m) {
    uint64_t floor = m->durable_seq;
    for (size_t i = 0; i < m->n_live; i++)
        if (m->live[i] < floor) floor = m->live[i];
    for (int c = 0; c < STORE__CF_COUNT; c++) {
        struct mcf *cf = &m->cf[c];
        size_t out = 0;
        for (size_t i = 0; i < cf->n; i++) {
            struct ment *e = &cf->e[i];
            size_t keep_from = 0;
            for (size_t j = 0; j < e->nv; j++)
                if (e->v[j].seq <= floor) keep_from = j;
            for (size_t j = 0; j < keep_from; j++) free(e->v[j].val);
            if (keep_from > 0) {
                memmove(e->v, e->v + keep_from, (e->nv - keep_from) * sizeof(*e->v));
                e->nv -= keep_from;
            }
            if (e->nv == 0 || (e->nv == 1 && e->v[0].deleted && e->v[0].seq <= floor)) {
                ent_free(e);
                continue;
            }
            cf->e[out++] = *e;
        }
        cf->n = out;
    }
}

static int ent_add_version(struct ment *e, uint64_t seq, bool deleted, const void *val,
                           size_t len) {
    uint8_t *copy = NULL;
    if (!deleted) {
        copy = qfs_malloc(len ? len : 1);
        if (copy == NULL) return STORE_ENOMEM;
        if (len) memcpy(copy, val, len);
    }
    if (e->nv > 0 && e->v[e->nv - 1].seq == seq) {
        /* Same key twice in one batch: the later write wins. */
        struct mver *v = &e->v[e->nv - 1];
        free(v->val);
        v->deleted = deleted;
        v->val = copy;
        v->len = deleted ? 0 : len;
        return 0;
    }
    if (e->nv == e->capv) {
        size_t cap = e->capv ? e->capv * 2 : 2;
        struct mver *p = qfs_realloc(e->v, cap * sizeof(*p));
        if (p == NULL) {
            free(copy);
            return STORE_ENOMEM;
        }
        e->v = p;
        e->capv = cap;
    }
    e->v[e->nv++] = (struct mver){seq, deleted, copy, deleted ? 0 : len};
    return 0;
}

static int cf_write(struct mcf *c, uint64_t seq, const void *k, size_t klen, bool deleted,
                    const void *val, size_t len) {
    size_t i = lower_bound(c, k, klen, false);
    if (i == c->n || cmpk(c->e[i].key, c->e[i].klen, k, klen) != 0) {
        if (deleted) return 0; /* nothing to delete */
        if (c->n == c->cap) {
            size_t cap = c->cap ? c->cap * 2 : 16;
            struct ment *p = qfs_realloc(c->e, cap * sizeof(*p));
            if (p == NULL) return STORE_ENOMEM;
            c->e = p;
            c->cap = cap;
        }
        uint8_t *kc = qfs_malloc(klen ? klen : 1);
        if (kc == NULL) return STORE_ENOMEM;
        if (klen) memcpy(kc, k, klen);
        memmove(c->e + i + 1, c->e + i, (c->n - i) * sizeof(*c->e));
        c->e[i] = (struct ment){kc, klen, NULL, 0, 0};
        c->n++;
    }
    return ent_add_version(&c->e[i], seq, deleted, val, len);
}

/* ---------------------------------------------------------------- memdb */

struct store_memdb *store_memdb_new(void) {
    struct store_memdb *m = qfs_calloc(1, sizeof(*m));
    if (m == NULL) return NULL;
    if (pthread_mutex_init(&m->mu, NULL) != 0) {
        free(m);
        return NULL;
    }
    return m;
}

void store_memdb_free(struct store_memdb *m) {
    if (m == NULL) return;
    STORE_ASSERT(m->open_stores == 0);
    for (int c = 0; c < STORE__CF_COUNT; c++) {
        for (size_t i = 0; i < m->cf[c].n; i++) ent_free(&m->cf[c].e[i]);
        free(m->cf[c].e);
    }
    free(m->live);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void store_memdb_fail_write(struct store_memdb *m, uint64_t n) {
    pthread_mutex_lock(&m->mu);
    m->fail_in = n;
    pthread_mutex_unlock(&m->mu);
}

void store_memdb_crash(struct store_memdb *m, uint64_t keep) {
    pthread_mutex_lock(&m->mu);
    STORE_ASSERT(m->open_stores == 0);
    STORE_ASSERT(m->n_live == 0);
    uint64_t unsynced = m->seq - m->durable_seq;
    uint64_t cutoff = m->durable_seq + (keep < unsynced ? keep : unsynced);
    for (int c = 0; c < STORE__CF_COUNT; c++) {
        struct mcf *cf = &m->cf[c];
        size_t out = 0;
        for (size_t i = 0; i < cf->n; i++) {
            struct ment *e = &cf->e[i];
            while (e->nv > 0 && e->v[e->nv - 1].seq > cutoff) {
                free(e->v[e->nv - 1].val);
                e->nv--;
            }
            if (e->nv == 0) {
                ent_free(e);
                continue;
            }
            cf->e[out++] = *e;
        }
        cf->n = out;
    }
    m->seq = cutoff;
    m->durable_seq = cutoff;
    pthread_mutex_unlock(&m->mu);
}

uint64_t store_memdb_unsynced(struct store_memdb *m) {
    pthread_mutex_lock(&m->mu);
    uint64_t n = m->seq - m->durable_seq;
    pthread_mutex_unlock(&m->mu);
    return n;
}

uint64_t store_memdb_writes(struct store_memdb *m) {
    pthread_mutex_lock(&m->mu);
    uint64_t n = m->writes;
    pthread_mutex_unlock(&m->mu);
    return n;
}

/* ---------------------------------------------------------------- table */

static void mem_close(struct store__backend *b) {
    struct memb *mb = (struct memb *)b;
    if (mb == NULL) return;
    pthread_mutex_lock(&mb->m->mu);
    STORE_ASSERT(mb->m->open_stores > 0);
    mb->m->open_stores--;
    pthread_mutex_unlock(&mb->m->mu);
    free(mb);
}

static int mem_get(struct store__backend *b, const struct store__snap *snap, int cf, const void *k,
                   size_t klen, struct store__buf *val) {
    struct store_memdb *m = ((struct memb *)b)->m;
    STORE_ASSERT(cf >= 0 && cf < STORE__CF_COUNT);
    pthread_mutex_lock(&m->mu);
    uint64_t seq = snap ? snap->seq : m->seq;
    const struct mcf *c = &m->cf[cf];
    size_t i = lower_bound(c, k, klen, false);
    int rc = 1;
    if (i < c->n && cmpk(c->e[i].key, c->e[i].klen, k, klen) == 0) {
        const struct mver *v = visible(&c->e[i], seq);
        if (v != NULL) {
            val->len = 0;
            rc = store__buf_append(val, v->val, v->len);
        }
    }
    pthread_mutex_unlock(&m->mu);
    return rc;
}

static int mem_snap_new(struct store__backend *b, struct store__snap **out) {
    struct store_memdb *m = ((struct memb *)b)->m;
    struct store__snap *s = qfs_malloc(sizeof(*s));
    if (s == NULL) return STORE_ENOMEM;
    pthread_mutex_lock(&m->mu);
    s->seq = m->seq;
    int rc = live_add(m, s->seq);
    pthread_mutex_unlock(&m->mu);
    if (rc != 0) {
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

static void mem_snap_free(struct store__backend *b, struct store__snap *s) {
    struct store_memdb *m = ((struct memb *)b)->m;
    if (s == NULL) return;
    pthread_mutex_lock(&m->mu);
    live_del(m, s->seq);
    pthread_mutex_unlock(&m->mu);
    free(s);
}

static int mem_iter_new(struct store__backend *b, const struct store__snap *snap, int cf,
                        struct store__iter **out) {
    struct store_memdb *m = ((struct memb *)b)->m;
    STORE_ASSERT(cf >= 0 && cf < STORE__CF_COUNT);
    struct store__iter *it = qfs_calloc(1, sizeof(*it));
    if (it == NULL) return STORE_ENOMEM;
    it->m = m;
    it->cf = cf;
    pthread_mutex_lock(&m->mu);
    it->seq = snap ? snap->seq : m->seq;
    int rc = live_add(m, it->seq);
    pthread_mutex_unlock(&m->mu);
    if (rc != 0) {
        free(it);
        return rc;
    }
    *out = it;
    return 0;
}

static void mem_iter_free(struct store__iter *it) {
    if (it == NULL) return;
    pthread_mutex_lock(&it->m->mu);
    live_del(it->m, it->seq);
    pthread_mutex_unlock(&it->m->mu);
    store__buf_free(&it->key);
    store__buf_free(&it->val);
    free(it);
}

/* Positions on the first visible key at or after (strict: after) k. Called
 * with the mutex held. */
static void iter_settle(struct store__iter *it, const void *k, size_t klen, bool strict) {
    const struct mcf *c = &it->m->cf[it->cf];
    size_t i = lower_bound(c, k, klen, strict);
    it->valid = false;
    for (; i < c->n; i++) {
        const struct mver *v = visible(&c->e[i], it->seq);
        if (v == NULL) continue;
        it->key.len = 0;
        it->val.len = 0;
        /* Out of memory ends the iteration with an error status, as an
         * I/O error ends a RocksDB iterator. */
        if (store__buf_append(&it->key, c->e[i].key, c->e[i].klen) != 0 ||
            store__buf_append(&it->val, v->val, v->len) != 0) {
            it->status = STORE_ENOMEM;
            return;
        }
        it->valid = true;
        return;
    }
}

static void mem_iter_seek(struct store__iter *it, const void *k, size_t klen) {
    it->status = 0; /* a seek starts afresh, as in RocksDB */
    pthread_mutex_lock(&it->m->mu);
    iter_settle(it, k, klen, false);
    pthread_mutex_unlock(&it->m->mu);
}

static bool mem_iter_valid(struct store__iter *it) {
    return it->valid;
}

static void mem_iter_next(struct store__iter *it) {
    STORE_ASSERT(it->valid);
    pthread_mutex_lock(&it->m->mu);
    struct store__buf cur = it->key;
    it->key = (struct store__buf){0};
    iter_settle(it, cur.p, cur.len, true);
    pthread_mutex_unlock(&it->m->mu);
    store__buf_free(&cur);
}

static const void *mem_iter_key(struct store__iter *it, size_t *len) {
    STORE_ASSERT(it->valid);
    *len = it->key.len;
    return it->key.p ? (const void *)it->key.p : (const void *)"";
}

static const void *mem_iter_value(struct store__iter *it, size_t *len) {
    STORE_ASSERT(it->valid);
    *len = it->val.len;
    return it->val.p ? (const void *)it->val.p : (const void *)"";
}

static int mem_iter_status(struct store__iter *it) {
    return it->status;
}

static int mem_batch_new(struct store__backend *b, struct store__batch **out) {
    (void)b;
    struct store__batch *w = qfs_calloc(1, sizeof(*w));
    if (w == NULL) return STORE_ENOMEM;
    *out = w;
    return 0;
}

static int batch_add(struct store__batch *w, int type, int cf, const void *k, size_t klen,
                     const void *v, size_t vlen) {
    STORE_ASSERT(cf >= 0 && cf < STORE__CF_COUNT);
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 16;
        struct mop *p = qfs_realloc(w->ops, cap * sizeof(*p));
        if (p == NULL) return STORE_ENOMEM;
        w->ops = p;
        w->cap = cap;
    }
    struct mop op = {type, cf, qfs_malloc(klen ? klen : 1), klen, NULL, vlen};
    if (op.k == NULL) return STORE_ENOMEM;
    if (klen) memcpy(op.k, k, klen);
    if (type != OP_DEL) {
        op.v = qfs_malloc(vlen ? vlen : 1);
        if (op.v == NULL) {
            free(op.k);
            return STORE_ENOMEM;
        }
        if (vlen) memcpy(op.v, v, vlen);
    }
    w->ops[w->n++] = op;
    return 0;
}

static int mem_batch_put(struct store__batch *w, int cf, const void *k, size_t klen, const void *v,
                         size_t vlen) {
    return batch_add(w, OP_PUT, cf, k, klen, v, vlen);
}

static int mem_batch_delete(struct store__batch *w, int cf, const void *k, size_t klen) {
    return batch_add(w, OP_DEL, cf, k, klen, NULL, 0);
}

static int mem_batch_delete_range(struct store__batch *w, int cf, const void *bk, size_t blen,
                                  const void *ek, size_t elen) {
    return batch_add(w, OP_DELRANGE, cf, bk, blen, ek, elen);
}

static size_t mem_batch_count(struct store__batch *w) {
    return w->n;
}

/* Removes every version written at seq, and the keys left without any. */
static void rollback(struct store_memdb *m, uint64_t seq) {
    STORE_ASSERT(seq > m->seq);
    for (int c = 0; c < STORE__CF_COUNT; c++) {
        struct mcf *cf = &m->cf[c];
        size_t out = 0;
        for (size_t i = 0; i < cf->n; i++) {
            struct ment *e = &cf->e[i];
            while (e->nv > 0 && e->v[e->nv - 1].seq == seq) free(e->v[--e->nv].val);
            if (e->nv == 0) {
                ent_free(e);
                continue;
            }
            cf->e[out++] = *e;
        }
        cf->n = out;
    }
}

static int mem_batch_commit(struct store__backend *b, struct store__batch *w, bool sync) {
    struct store_memdb *m = ((struct memb *)b)->m;
    int rc = 0;
    pthread_mutex_lock(&m->mu);
    if (m->fail_in > 0 && --m->fail_in == 0) {
        pthread_mutex_unlock(&m->mu);
        return STORE_EFAULT;
    }
    uint64_t seq = m->seq + 1;
    for (size_t i = 0; i < w->n && rc == 0; i++) {
        struct mop *op = &w->ops[i];
        struct mcf *c = &m->cf[op->cf];
        if (op->type == OP_PUT) {
            rc = cf_write(c, seq, op->k, op->klen, false, op->v, op->vlen);
        } else if (op->type == OP_DEL) {
            rc = cf_write(c, seq, op->k, op->klen, true, NULL, 0);
        } else {
            size_t j = lower_bound(c, op->k, op->klen, false);
            for (; j < c->n && cmpk(c->e[j].key, c->e[j].klen, op->v, op->vlen) < 0; j++)
                if (visible(&c->e[j], seq) != NULL)
                    rc = ent_add_version(&c->e[j], seq, true, NULL, 0);
        }
    }
    if (rc != 0) {
        /* Out of memory halfway: undo, so that the commit is all or nothing
         * as RocksDB's. Readers never saw seq (m->seq still precedes it). */
        rollback(m, seq);
        pthread_mutex_unlock(&m->mu);
        return rc;
    }
    m->seq = seq;
    m->writes++;
    if (sync) m->durable_seq = seq;
    if (m->writes % MEM_PRUNE_EVERY == 0) prune(m);
    pthread_mutex_unlock(&m->mu);
    return 0;
}

static void mem_batch_free(struct store__batch *w) {
    if (w == NULL) return;
    for (size_t i = 0; i < w->n; i++) {
        free(w->ops[i].k);
        free(w->ops[i].v);
    }
    free(w->ops);
    free(w);
}

static int mem_checkpoint(struct store__backend *b, const char *dir) {
    (void)b;
    (void)dir;
    return STORE_ENOTSUP;
}

static int mem_size(struct store__backend *b, uint64_t *bytes) {
    struct store_memdb *m = ((struct memb *)b)->m;
    uint64_t n = 0;
    pthread_mutex_lock(&m->mu);
    for (int c = 0; c < STORE__CF_COUNT; c++) {
        for (size_t i = 0; i < m->cf[c].n; i++) {
            const struct mver *v = visible(&m->cf[c].e[i], m->seq);
            if (v != NULL) n += m->cf[c].e[i].klen + v->len;
        }
    }
    pthread_mutex_unlock(&m->mu);
    *bytes = n;
    return 0;
}

static const struct store__backend_ops mem_ops = {
    .close = mem_close,
    .get = mem_get,
    .snap_new = mem_snap_new,
    .snap_free = mem_snap_free,
    .iter_new = mem_iter_new,
    .iter_free = mem_iter_free,
    .iter_seek = mem_iter_seek,
    .iter_valid = mem_iter_valid,
    .iter_next = mem_iter_next,
    .iter_key = mem_iter_key,
    .iter_value = mem_iter_value,
    .iter_status = mem_iter_status,
    .batch_new = mem_batch_new,
    .batch_put = mem_batch_put,
    .batch_delete = mem_batch_delete,
    .batch_delete_range = mem_batch_delete_range,
    .batch_count = mem_batch_count,
    .batch_commit = mem_batch_commit,
    .batch_free = mem_batch_free,
    .checkpoint = mem_checkpoint,
    .size = mem_size,
};

int store__backend_mem_open(struct store_memdb *m, struct store__backend **out) {
    STORE_ASSERT(m != NULL);
    STORE_ASSERT(out != NULL);
    struct memb *mb = qfs_calloc(1, sizeof(*mb));
    if (mb == NULL) return STORE_ENOMEM;
    mb->base.ops = &mem_ops;
    mb->m = m;
    pthread_mutex_lock(&m->mu);
    m->open_stores++;
    pthread_mutex_unlock(&m->mu);
    *out = &mb->base;
    return 0;
}
