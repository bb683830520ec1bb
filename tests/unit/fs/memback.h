/*
 * memback.h - a thread-safe in-memory struct fs_backend for the fs tests
 * (header only; static functions).
 *
 * Keys live in one array sorted by memcmp order, guarded by one mutex.
 * submit() copies the transaction into a queue; an apply thread (standing
 * in for the node loop) evaluates compares and applies ops at a new
 * revision, calls fs_notify_change for every changed key (local = 1), then
 * done_cb, like the node would. mb_put/mb_del change the store directly,
 * as a remote node or an etcd client would, and notify with local = 0.
 * Fault injection: mb->fail_err fails the next fail_count submits with that
 * errno (reported through done_cb); value_max makes larger puts fail
 * -EFBIG, as a node's request size limit would.
 */
#ifndef QUORUMFS_TESTS_FS_MEMBACK_H
#define QUORUMFS_TESTS_FS_MEMBACK_H

#include "fs/fs.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct mb_entry {
    char *key;
    size_t kl;
    char *val;
    size_t vl;
    int64_t create, mod, version, lease;
    uint32_t mode, uid, gid;
    int64_t mtime;
};

struct mb_job {
    struct mb_job *next;
    struct fs_cmp *cmps;
    size_t nc;
    struct fs_op *ops;
    size_t no;
    fs_txn_done_cb cb;
    void *arg;
    int remote;                             /* notified as a change from elsewhere (local = 0) */
    void (*barrier_cb)(void *arg, int err); /* a read barrier, not a txn */
};

struct memback {
    pthread_mutex_t lock;
    struct mb_entry *e; /* sorted; lock */
    size_t n, cap;
    int64_t rev;
    pthread_t thr;
    pthread_cond_t cond;
    struct mb_job *head, *tail; /* lock */
    int stop;
    struct fs *fs;            /* notified of changes once set */
    int fail_err, fail_count; /* lock */
    size_t value_max;         /* 0: no limit */
    atomic_long submits, applied, barriers;
};

static inline char *mb_dup(const void *p, size_t n) {
    char *r = malloc(n + 1);
    if (r == NULL) abort();
    if (n) memcpy(r, p, n);
    r[n] = '\0';
    return r;
}

static inline int mb_cmp_key(const char *a, size_t al, const char *b, size_t bl) {
    int c = memcmp(a, b, al < bl ? al : bl);
    if (c) return c;
    return al < bl ? -1 : al > bl;
}

/* First index whose key >= k. */
static inline size_t mb_lower(struct memback *mb, const char *k, size_t kl) {
    size_t lo = 0, hi = mb->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (mb_cmp_key(mb->e[mid].key, mb->e[mid].kl, k, kl) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static inline int mb_find(struct memback *mb, const char *k, size_t kl, size_t *idx) {
    size_t i = mb_lower(mb, k, kl);
    *idx = i;
    return i < mb->n && mb->e[i].kl == kl && memcmp(mb->e[i].key, k, kl) == 0;
}

/* Whether k is below the range end (end "\0" of length 1, or NULL: no end). */
static inline int mb_below(const char *k, size_t kl, const char *end, size_t el) {
    if (end == NULL || (el == 1 && end[0] == '\0')) return 1;
    return mb_cmp_key(k, kl, end, el) < 0;
}

static inline void mb_copy_kv(const struct mb_entry *e, int keys_only, struct fs_kv *kv) {
    memset(kv, 0, sizeof *kv);
    kv->key = mb_dup(e->key, e->kl);
    kv->key_len = e->kl;
    kv->value = keys_only ? NULL : mb_dup(e->val, e->vl);
    kv->value_len = e->vl;
    kv->create_revision = e->create;
    kv->mod_revision = e->mod;
    kv->version = e->version;
    kv->lease = e->lease;
    kv->mode = e->mode;
    kv->uid = e->uid;
    kv->gid = e->gid;
    kv->mtime_ns = e->mtime;
}

static inline int mb_get(void *data, const char *key, size_t kl, struct fs_kv *out) {
    struct memback *mb = data;
    size_t i;
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&mb->lock);
    int found = mb_find(mb, key, kl, &i);
    if (found) mb_copy_kv(&mb->e[i], 0, out);
    pthread_mutex_unlock(&mb->lock);
    return found ? 0 : -ENOENT;
}

static inline int mb_range(void *data, const char *start, size_t sl, const char *end, size_t el,
                           size_t limit, int keys_only, struct fs_kv **out, size_t *n_out,
                           int *more) {
    struct memback *mb = data;
    *out = NULL;
    *n_out = 0;
    *more = 0;
    pthread_mutex_lock(&mb->lock);
    size_t i = mb_lower(mb, start, sl), n = 0;
    struct fs_kv *v = NULL;
    for (; i < mb->n && mb_below(mb->e[i].key, mb->e[i].kl, end, el); i++) {
        if (n == limit) {
            *more = 1;
            break;
        }
        if (v == NULL) v = calloc(limit < 64 ? limit : 64, sizeof *v);
        if (n >= 64 && (n & (n - 1)) == 0) v = realloc(v, 2 * n * sizeof *v);
        if (v == NULL) abort();
        mb_copy_kv(&mb->e[i], keys_only, &v[n++]);
    }
    pthread_mutex_unlock(&mb->lock);
    *out = v;
    *n_out = n;
    return 0;
}

static inline int mb_revision(void *data, int64_t *out) {
    struct memback *mb = data;
    pthread_mutex_lock(&mb->lock);
    *out = mb->rev;
    pthread_mutex_unlock(&mb->lock);
    return 0;
}

static inline int mb_usage(void *data, uint64_t *used, uint64_t *quota) {
    struct memback *mb = data;
    pthread_mutex_lock(&mb->lock);
    uint64_t u = 0;
    for (size_t i = 0; i < mb->n; i++) u += mb->e[i].kl + mb->e[i].vl;
    pthread_mutex_unlock(&mb->lock);
    *used = u;
    *quota = 1u << 30;
    return 0;
}

static inline void mb_insert_at(struct memback *mb, size_t i, struct mb_entry *e) {
    if (mb->n == mb->cap) {
        mb->cap = mb->cap ? 2 * mb->cap : 1024;
        mb->e = realloc(mb->e, mb->cap * sizeof *mb->e);
        if (mb->e == NULL) abort();
    }
    memmove(mb->e + i + 1, mb->e + i, (mb->n - i) * sizeof *mb->e);
    mb->e[i] = *e;
    mb->n++;
}

static inline void mb_remove_at(struct memback *mb, size_t i, size_t count) {
    for (size_t j = i; j < i + count; j++) {
        free(mb->e[j].key);
        free(mb->e[j].val);
    }
    if (count == 0) return;
    memmove(mb->e + i, mb->e + i + count, (mb->n - i - count) * sizeof *mb->e);
    mb->n -= count;
}

struct mb_change {
    char *key;
    size_t kl;
    enum fs_change_type type;
    int created;
    int meta_only; /* a put that kept the value bytes */
};

/* Applies a put at revision rev; lock held. */
static inline void mb_put_locked(struct memback *mb, const char *k, size_t kl, const char *v,
                                 size_t vl, int64_t lease, uint32_t mode, uint32_t uid,
                                 uint32_t gid, int64_t mtime, int *created) {
    size_t i;
    if (mb_find(mb, k, kl, &i)) {
        struct mb_entry *e = &mb->e[i];
        free(e->val);
        e->val = mb_dup(v, vl);
        e->vl = vl;
        e->mod = mb->rev;
        e->version++;
        if (lease != FS_LEASE_KEEP) e->lease = lease;
        e->mode = mode;
        e->uid = uid;
        e->gid = gid;
        e->mtime = mtime;
        *created = 0;
        return;
    }
    struct mb_entry e = {mb_dup(k, kl),
                         kl,
                         mb_dup(v, vl),
                         vl,
                         mb->rev,
                         mb->rev,
                         1,
                         lease == FS_LEASE_KEEP ? 0 : lease,
                         mode,
                         uid,
                         gid,
                         mtime};
    mb_insert_at(mb, i, &e);
    *created = 1;
}

static inline int mb_cmp_holds(struct memback *mb, const struct fs_cmp *c) {
    size_t i;
    if (c->range_end == NULL) {
        int found = mb_find(mb, c->key, c->key_len, &i);
        int64_t mod = found ? mb->e[i].mod : 0;
        switch (c->type) {
        case FS_CMP_EXISTS:
            return found;
        case FS_CMP_ABSENT:
            return !found;
        case FS_CMP_MOD_EQ:
            return mod == c->revision;
        case FS_CMP_MOD_LE:
            return mod <= c->revision;
        }
        return 0;
    }
    i = mb_lower(mb, c->key, c->key_len);
    int any = 0;
    for (; i < mb->n && mb_below(mb->e[i].key, mb->e[i].kl, c->range_end, c->range_end_len); i++) {
        any = 1;
        if (c->type == FS_CMP_MOD_LE && mb->e[i].mod > c->revision) return 0;
        if (c->type == FS_CMP_EXISTS || c->type == FS_CMP_ABSENT) break;
    }
    if (c->type == FS_CMP_EXISTS) return any;
    if (c->type == FS_CMP_ABSENT) return !any;
    return 1;
}

static inline void mb_notify(struct memback *mb, struct mb_change *ch, size_t n, int64_t rev,
                             int local) {
    for (size_t i = 0; i < n; i++) {
        if (mb->fs) {
            struct fs_change c = {.type = ch[i].type,
                                  .key = ch[i].key,
                                  .key_len = ch[i].kl,
                                  .revision = rev,
                                  .created = ch[i].created,
                                  .local = local,
                                  .more = i + 1 < n,
                                  .meta_only = ch[i].meta_only};
            fs_notify_change(mb->fs, &c);
        }
        free(ch[i].key);
    }
}

static inline void mb_apply(struct memback *mb, struct mb_job *j) {
    struct fs_txn_result res = {0, 0};
    struct mb_change *ch = NULL;
    size_t nch = 0, cap = 0;
    pthread_mutex_lock(&mb->lock);
    int ok = 1;
    for (size_t i = 0; i < j->nc && ok; i++) ok = mb_cmp_holds(mb, &j->cmps[i]);
    if (ok) {
        mb->rev++;
        for (size_t i = 0; i < j->no; i++) {
            const struct fs_op *o = &j->ops[i];
            size_t at, count = 0;
            if (nch + mb->n + 1 > cap) {
                cap = 2 * (nch + mb->n + 1);
                ch = realloc(ch, cap * sizeof *ch);
                if (ch == NULL) abort();
            }
            switch (o->type) {
            case FS_OP_PUT: {
                int created, same = 0;
                size_t at2;
                if (mb_find(mb, o->key, o->key_len, &at2))
                    same =
                        mb->e[at2].vl == o->value_len &&
                        (o->value_len == 0 || memcmp(mb->e[at2].val, o->value, o->value_len) == 0);
                mb_put_locked(mb, o->key, o->key_len, o->value, o->value_len, o->lease, o->mode,
                              o->uid, o->gid, o->mtime_ns, &created);
                ch[nch++] = (struct mb_change){mb_dup(o->key, o->key_len), o->key_len,
                                               FS_CHANGE_PUT, created, same && !created};
                break;
            }
            case FS_OP_DELETE:
                if (mb_find(mb, o->key, o->key_len, &at)) {
                    ch[nch++] = (struct mb_change){mb_dup(o->key, o->key_len), o->key_len,
                                                   FS_CHANGE_DELETE, 0, 0};
                    mb_remove_at(mb, at, 1);
                }
                break;
            case FS_OP_DELETE_RANGE:
                at = mb_lower(mb, o->key, o->key_len);
                while (at + count < mb->n && mb_below(mb->e[at + count].key, mb->e[at + count].kl,
                                                      o->range_end, o->range_end_len)) {
                    struct mb_entry *e = &mb->e[at + count];
                    ch[nch++] =
                        (struct mb_change){mb_dup(e->key, e->kl), e->kl, FS_CHANGE_DELETE, 0, 0};
                    count++;
                }
                mb_remove_at(mb, at, count);
                break;
            }
        }
    }
    res.succeeded = ok;
    res.revision = mb->rev;
    pthread_mutex_unlock(&mb->lock);
    mb_notify(mb, ch, nch, res.revision, !j->remote);
    free(ch);
    atomic_fetch_add(&mb->applied, 1);
    j->cb(j->arg, 0, &res);
}

static inline void mb_job_free(struct mb_job *j) {
    for (size_t i = 0; i < j->nc; i++) {
        free((char *)j->cmps[i].key);
        free((char *)j->cmps[i].range_end);
    }
    for (size_t i = 0; i < j->no; i++) {
        free((char *)j->ops[i].key);
        free((char *)j->ops[i].range_end);
        free((char *)j->ops[i].value);
    }
    free(j->cmps);
    free(j->ops);
    free(j);
}

static inline void *mb_main(void *arg) {
    struct memback *mb = arg;
    pthread_mutex_lock(&mb->lock);
    for (;;) {
        while (mb->head == NULL && !mb->stop) pthread_cond_wait(&mb->cond, &mb->lock);
        if (mb->head == NULL) break;
        struct mb_job *j = mb->head;
        mb->head = j->next;
        if (mb->head == NULL) mb->tail = NULL;
        int err = 0;
        if (mb->fail_count > 0) {
            mb->fail_count--;
            err = mb->fail_err;
        }
        for (size_t i = 0; i < j->no && !err; i++)
            if (mb->value_max && j->ops[i].type == FS_OP_PUT && j->ops[i].value_len > mb->value_max)
                err = -EFBIG;
        pthread_mutex_unlock(&mb->lock);
        if (j->barrier_cb) {
            atomic_fetch_add(&mb->barriers, 1);
            j->barrier_cb(j->arg, err);
            free(j);
            pthread_mutex_lock(&mb->lock);
            continue;
        }
        if (err)
            j->cb(j->arg, err, NULL);
        else
            mb_apply(mb, j);
        mb_job_free(j);
        pthread_mutex_lock(&mb->lock);
    }
    pthread_mutex_unlock(&mb->lock);
    return NULL;
}

static inline struct mb_job *mb_job_new(const struct fs_txn *txn) {
    struct mb_job *j = calloc(1, sizeof *j);
    if (j == NULL) return NULL;
    j->cmps = calloc(txn->n_cmps + 1, sizeof *j->cmps);
    j->ops = calloc(txn->n_ops + 1, sizeof *j->ops);
    j->nc = txn->n_cmps;
    j->no = txn->n_ops;
    for (size_t i = 0; i < txn->n_cmps; i++) {
        j->cmps[i] = txn->cmps[i];
        j->cmps[i].key = mb_dup(txn->cmps[i].key, txn->cmps[i].key_len);
        if (txn->cmps[i].range_end)
            j->cmps[i].range_end = mb_dup(txn->cmps[i].range_end, txn->cmps[i].range_end_len);
    }
    for (size_t i = 0; i < txn->n_ops; i++) {
        j->ops[i] = txn->ops[i];
        j->ops[i].key = mb_dup(txn->ops[i].key, txn->ops[i].key_len);
        if (txn->ops[i].range_end)
            j->ops[i].range_end = mb_dup(txn->ops[i].range_end, txn->ops[i].range_end_len);
        j->ops[i].value = mb_dup(txn->ops[i].value, txn->ops[i].value_len);
    }
    return j;
}

static inline int mb_submit(void *data, const struct fs_txn *txn, fs_txn_done_cb cb, void *arg) {
    struct memback *mb = data;
    struct mb_job *j = mb_job_new(txn);
    if (j == NULL) return -ENOMEM;
    j->cb = cb;
    j->arg = arg;
    atomic_fetch_add(&mb->submits, 1);
    pthread_mutex_lock(&mb->lock);
    if (mb->tail)
        mb->tail->next = j;
    else
        mb->head = j;
    mb->tail = j;
    pthread_cond_signal(&mb->cond);
    pthread_mutex_unlock(&mb->lock);
    return 0;
}

/* A read barrier: answered by the backend thread after every job queued
 * before it (with the injected error, if any). */
static inline int mb_read_barrier(void *data, void (*cb)(void *arg, int err), void *arg) {
    struct memback *mb = data;
    struct mb_job *j = calloc(1, sizeof *j);
    if (j == NULL) return -ENOMEM;
    j->barrier_cb = cb;
    j->arg = arg;
    pthread_mutex_lock(&mb->lock);
    if (mb->tail)
        mb->tail->next = j;
    else
        mb->head = j;
    mb->tail = j;
    pthread_cond_signal(&mb->cond);
    pthread_mutex_unlock(&mb->lock);
    return 0;
}

static inline struct memback *mb_new(void) {
    struct memback *mb = calloc(1, sizeof *mb);
    if (mb == NULL) abort();
    pthread_mutex_init(&mb->lock, NULL);
    pthread_cond_init(&mb->cond, NULL);
    mb->rev = 1;
    if (pthread_create(&mb->thr, NULL, mb_main, mb) != 0) abort();
    return mb;
}

static inline void mb_free(struct memback *mb) {
    pthread_mutex_lock(&mb->lock);
    mb->stop = 1;
    pthread_cond_signal(&mb->cond);
    pthread_mutex_unlock(&mb->lock);
    pthread_join(mb->thr, NULL);
    mb_remove_at(mb, 0, mb->n);
    free(mb->e);
    pthread_mutex_destroy(&mb->lock);
    pthread_cond_destroy(&mb->cond);
    free(mb);
}

static inline struct fs_backend mb_backend(struct memback *mb) {
    struct fs_backend be = {.data = mb,
                            .get = mb_get,
                            .range = mb_range,
                            .revision = mb_revision,
                            .submit = mb_submit,
                            .usage = mb_usage,
                            .read_barrier = mb_read_barrier};
    return be;
}

/* A change from elsewhere (another node, an etcd client): applied at once,
 * notified with local = 0 from the calling thread. mode 0 = no metadata. */
static inline void mb_put(struct memback *mb, const char *k, size_t kl, const char *v, size_t vl,
                          uint32_t mode) {
    int created;
    pthread_mutex_lock(&mb->lock);
    mb->rev++;
    int64_t rev = mb->rev;
    mb_put_locked(mb, k, kl, v, vl, 0, mode, 0, 0, 0, &created);
    pthread_mutex_unlock(&mb->lock);
    struct mb_change c = {mb_dup(k, kl), kl, FS_CHANGE_PUT, created, 0};
    mb_notify(mb, &c, 1, rev, 0);
}

static inline void mb_puts(struct memback *mb, const char *k, const char *v) {
    mb_put(mb, k, strlen(k), v, strlen(v), 0);
}

static inline int mb_del(struct memback *mb, const char *k) {
    size_t i, kl = strlen(k);
    pthread_mutex_lock(&mb->lock);
    int found = mb_find(mb, k, kl, &i);
    if (found) {
        mb->rev++;
        mb_remove_at(mb, i, 1);
    }
    int64_t rev = mb->rev;
    pthread_mutex_unlock(&mb->lock);
    if (found) {
        struct mb_change c = {mb_dup(k, kl), kl, FS_CHANGE_DELETE, 0, 0};
        mb_notify(mb, &c, 1, rev, 0);
    }
    return found;
}

/* Copies key k into *out (caller clears), or returns -ENOENT. */
static inline int mb_lookup(struct memback *mb, const char *k, struct fs_kv *out) {
    return mb_get(mb, k, strlen(k), out);
}

static inline size_t mb_count(struct memback *mb) {
    pthread_mutex_lock(&mb->lock);
    size_t n = mb->n;
    pthread_mutex_unlock(&mb->lock);
    return n;
}

static inline int mb_entry_order(const void *a, const void *b) {
    const struct mb_entry *x = a, *y = b;
    return mb_cmp_key(x->key, x->kl, y->key, y->kl);
}

/* Loads many keys at one revision without notifications (set-up only;
 * keys must not exist yet). */
static inline void mb_bulk(struct memback *mb, char **keys, size_t n, const char *v) {
    pthread_mutex_lock(&mb->lock);
    mb->rev++;
    if (mb->n + n > mb->cap) {
        mb->cap = mb->n + n;
        mb->e = realloc(mb->e, mb->cap * sizeof *mb->e);
        if (mb->e == NULL) abort();
    }
    for (size_t i = 0; i < n; i++) {
        size_t kl = strlen(keys[i]);
        mb->e[mb->n++] = (struct mb_entry){mb_dup(keys[i], kl),
                                           kl,
                                           mb_dup(v, strlen(v)),
                                           strlen(v),
                                           mb->rev,
                                           mb->rev,
                                           1,
                                           0,
                                           0,
                                           0,
                                           0,
                                           0};
    }
    qsort(mb->e, mb->n, sizeof *mb->e, mb_entry_order);
    pthread_mutex_unlock(&mb->lock);
}

static inline void mb_ignore_done(void *arg, int err, const struct fs_txn_result *res) {
    (void)arg;
    (void)err;
    (void)res;
}

/* A transaction from elsewhere: applied at once on the calling thread, its
 * changes notified with local = 0 (one revision, linked by more). */
static inline void mb_remote_txn(struct memback *mb, const struct fs_txn *txn) {
    struct mb_job *j = mb_job_new(txn);
    if (j == NULL) abort();
    j->cb = mb_ignore_done;
    j->remote = 1;
    mb_apply(mb, j);
    mb_job_free(j);
}

#endif /* QUORUMFS_TESTS_FS_MEMBACK_H */
