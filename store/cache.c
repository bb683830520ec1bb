/*
 * cache.c - the client mount's local copy of a remote key space (see the
 * "client cache" section of store.h): the latest version of each remote
 * key, the remote revision the copy is complete up to, and named meta
 * blobs, over the same backend table as the store.
 *
 * Invariants: the kv column family holds two slots (one prefix byte each);
 * the "cache" record in the default column family names the active slot and
 * the revision, and every write that changes the active slot's content also
 * rewrites that record in the same batch, so content and revision always
 * belong together, also after a crash. The inactive slot is empty, or
 * holds a reload's staged pages (perhaps left over from a crash or a failed
 * commit: every reload clears it first). `st` is the writer's view of the
 * record, changed only after a successful commit; `pub` is the readers'
 * copy, changed under pub_mu in the same critical section as the commit, so
 * a reader taking a backend snapshot under pub_mu gets a snapshot and a
 * revision that belong together (as store.c does).
 *
 * Workload: a stream of small applies (one per watch response), rare
 * reloads of the whole key space (paged, so memory stays bounded by a page),
 * and many concurrent point reads and short key-ordered scans from the
 * filesystem threads.
 */
#include <string.h>

#include "store/store_int.h"

static const char STATE_KEY[] = "cache";
static const char META_PREFIX[] = "meta/";

#define CACHE_FORMAT 1u
/* format u32, active slot u32, revision u64; little-endian. */
#define CACHE_STATE_BYTES 16
_Static_assert(CACHE_STATE_BYTES == 4 + 4 + 8, "cache record size is part of the disk format");
/* The two slots' prefix bytes in the kv column family. */
#define CACHE_SLOTS 2u

struct cache_state {
    int64_t rev;   /* remote revision the copy is complete up to; 0 = never loaded */
    uint32_t slot; /* active slot, 0 or 1 */
};

struct store_cache {
    struct store__backend *be;

    /* Writer thread only. */
    struct cache_state st;
    struct store_cache_reload *reload; /* the open reload session, or NULL */
    struct store__buf kb, vb;          /* scratch key and record buffers */

    /* Published state for readers; protected by pub_mu. */
    pthread_mutex_t pub_mu;
    struct cache_state pub;
};

struct store_cache_reload {
    struct store_cache *c;
    int64_t rev;                 /* the revision the commit sets */
    uint32_t slot;               /* the staging (inactive) slot */
    struct store__batch *commit; /* meta blobs for the commit's batch */
    struct store__buf last;      /* last key staged (without slot byte) */
    bool any;                    /* a key was staged: `last` is valid */
    struct store__buf kb, vb;    /* scratch */
};

/* ---------------------------------------------------------------- records */

static void state_encode(const struct cache_state *st, uint8_t out[CACHE_STATE_BYTES]) {
    STORE_ASSERT(st->slot < CACHE_SLOTS);
    STORE_ASSERT(st->rev >= 0);
    store__put_u32le(out, CACHE_FORMAT);
    store__put_u32le(out + 4, st->slot);
    store__put_u64le(out + 8, (uint64_t)st->rev);
}

static int state_decode(const uint8_t *p, size_t len, struct cache_state *st) {
    if (len != CACHE_STATE_BYTES) return STORE_ECORRUPT;
    if (store__get_u32le(p) != CACHE_FORMAT) return STORE_EVERSION;
    st->slot = store__get_u32le(p + 4);
    st->rev = (int64_t)store__get_u64le(p + 8);
    if (st->slot >= CACHE_SLOTS || st->rev < 0) return STORE_ECORRUPT;
    return 0;
}

/* slot || key into b (replacing its contents). */
static int slot_key(struct store__buf *b, uint32_t slot, const void *key, size_t klen) {
    STORE_ASSERT(slot < CACHE_SLOTS);
    b->len = 0;
    int rc = store__buf_u8(b, (uint8_t)slot);
    if (rc == 0) rc = store__buf_append(b, key, klen);
    return rc;
}

static int meta_key(struct store__buf *b, const char *name) {
    b->len = 0;
    int rc = store__buf_append(b, META_PREFIX, sizeof(META_PREFIX) - 1);
    if (rc == 0) rc = store__buf_append(b, name, strlen(name));
    return rc;
}

static int check_meta_name(const char *name) {
    STORE_ASSERT(name != NULL);
    size_t n = strlen(name);
    return n == 0 || n > STORE_CACHE_META_NAME_MAX ? STORE_EINVAL : 0;
}

static int check_key(const struct store_bytes *k) {
    STORE_ASSERT(k->base != NULL || k->len == 0);
    if (k->len == 0) return STORE_EKEYEMPTY;
    if (k->len > STORE_KEY_BYTES_MAX) return STORE_EKEYTOOLARGE;
    return 0;
}

/* A live remote kv as etcd reports it, at or below revision rev. */
static int check_kv(const struct store_kv *kv, int64_t rev) {
    int rc = check_key(&kv->key);
    if (rc != 0) return rc;
    STORE_ASSERT(kv->value.base != NULL || kv->value.len == 0);
    if (kv->value.len > STORE_CACHE_VALUE_BYTES_MAX) return STORE_ETOOLARGE;
    if (kv->mod_revision < 1 || kv->mod_revision > rev) return STORE_EINVAL;
    if (kv->create_revision < 1 || kv->create_revision > kv->mod_revision) return STORE_EINVAL;
    if (kv->version < 1) return STORE_EINVAL;
    return 0;
}

static int rec_encode(const struct store_kv *kv, struct store__buf *out) {
    struct store__rec r = {
        .flags = 0,
        .create_rev = kv->create_revision,
        .mod_rev = kv->mod_revision,
        .version = kv->version,
        .lease = kv->lease,
        .mode = kv->mode,
        .uid = kv->uid,
        .gid = kv->gid,
        .mtime_ns = kv->mtime_ns,
        .value = kv->value.base,
        .value_len = kv->value.len,
    };
    out->len = 0;
    return store__rec_encode(&r, out);
}

/* A kv borrowing key and the record's value. */
static int kv_from(const void *key, size_t klen, const void *val, size_t vlen,
                   struct store_kv *kv) {
    struct store__rec r;
    int rc = store__rec_decode(val, vlen, &r);
    if (rc != 0) return rc;
    if (r.flags != 0) return STORE_ECORRUPT;
    memset(kv, 0, sizeof(*kv));
    kv->key.base = key;
    kv->key.len = klen;
    kv->value.base = r.value;
    kv->value.len = r.value_len;
    kv->create_revision = r.create_rev;
    kv->mod_revision = r.mod_rev;
    kv->version = r.version;
    kv->lease = r.lease;
    kv->mode = r.mode;
    kv->uid = r.uid;
    kv->gid = r.gid;
    kv->mtime_ns = r.mtime_ns;
    return 0;
}

/* ---------------------------------------------------------------- commit */

/* Adds the cache record for st to w, commits w and publishes st. */
static int commit_state(struct store_cache *c, struct store__batch *w, const struct cache_state *st,
                        bool sync) {
    STORE_ASSERT(c != NULL && w != NULL);
    STORE_ASSERT(st->slot < CACHE_SLOTS);
    uint8_t buf[CACHE_STATE_BYTES];
    state_encode(st, buf);
    int rc = c->be->ops->batch_put(w, STORE__CF_DEFAULT, STATE_KEY, sizeof(STATE_KEY) - 1, buf,
                                   sizeof(buf));
    if (rc != 0) return rc;
    pthread_mutex_lock(&c->pub_mu);
    rc = c->be->ops->batch_commit(c->be, w, sync);
    if (rc == 0) c->pub = *st;
    pthread_mutex_unlock(&c->pub_mu);
    if (rc == 0) c->st = *st;
    return rc;
}

/* Commits one batch that deletes every key of slot (nothing else). */
static int clear_slot(struct store_cache *c, uint32_t slot) {
    STORE_ASSERT(slot < CACHE_SLOTS);
    STORE_ASSERT(slot != c->st.slot);
    const struct store__backend_ops *ops = c->be->ops;
    uint8_t lo = (uint8_t)slot, hi = (uint8_t)(slot + 1);
    struct store__batch *w = NULL;
    int rc = ops->batch_new(c->be, &w);
    if (rc != 0) return rc;
    rc = ops->batch_delete_range(w, STORE__CF_KV, &lo, 1, &hi, 1);
    if (rc == 0) rc = ops->batch_commit(c->be, w, false);
    ops->batch_free(w);
    return rc;
}

/* ---------------------------------------------------------------- open */

static void set_err(char *err, size_t errlen, const char *what, int rc) {
    if (err != NULL && errlen > 0 && err[0] == '\0')
        snprintf(err, errlen, "%s: %s", what, store_strerror(rc));
}

/* A new cache: refuses a directory with data in kv (not a cache), else
 * writes the record of an empty cache, synced, before anything else can be
 * written, so that kv never holds data without a record. */
static int init_new(struct store_cache *c) {
    const struct store__backend_ops *ops = c->be->ops;
    struct store__iter *it = NULL;
    int rc = ops->iter_new(c->be, NULL, STORE__CF_KV, &it);
    if (rc != 0) return rc;
    ops->iter_seek(it, "", 0);
    bool any = ops->iter_valid(it);
    rc = ops->iter_status(it);
    ops->iter_free(it);
    if (rc != 0) return rc;
    if (any) return STORE_ECORRUPT;
    struct store__batch *w = NULL;
    if ((rc = ops->batch_new(c->be, &w)) != 0) return rc;
    struct cache_state st = {0, 0};
    rc = commit_state(c, w, &st, true);
    ops->batch_free(w);
    return rc;
}

int store_cache_open(const char *dir, struct store_memdb *mem, struct store_cache **out, char *err,
                     size_t errlen) {
    STORE_ASSERT(out != NULL);
    STORE_ASSERT(mem != NULL || dir != NULL);
    if (err != NULL && errlen > 0) err[0] = '\0';
    if (mem == NULL && dir[0] == '\0') {
        set_err(err, errlen, "store_cache_open: empty dir", STORE_EINVAL);
        return STORE_EINVAL;
    }
    struct store_cache *c = qfs_calloc(1, sizeof(*c));
    if (c == NULL) return STORE_ENOMEM;
    int rc = pthread_mutex_init(&c->pub_mu, NULL) == 0 ? 0 : STORE_ENOMEM;
    if (rc != 0) goto err_free;
    if (mem != NULL)
        rc = store__backend_mem_open(mem, &c->be);
    else
        rc = store__backend_rocksdb_open(dir, &c->be, err, errlen);
    if (rc != 0) {
        set_err(err, errlen, "store_cache_open: backend", rc);
        goto err_mutex;
    }
    rc = c->be->ops->get(c->be, NULL, STORE__CF_DEFAULT, STATE_KEY, sizeof(STATE_KEY) - 1, &c->vb);
    if (rc == 0) {
        rc = state_decode(c->vb.p, c->vb.len, &c->st);
        if (rc != 0) {
            set_err(err, errlen, "store_cache_open: cache record", rc);
            goto err_backend;
        }
        c->pub = c->st;
    } else if (rc == 1) {
        rc = init_new(c);
        if (rc == STORE_ECORRUPT) {
            set_err(err, errlen, "store_cache_open: data without a cache record (not a cache)", rc);
            goto err_backend;
        }
        if (rc != 0) {
            set_err(err, errlen, "store_cache_open: initialising", rc);
            goto err_backend;
        }
    } else {
        set_err(err, errlen, "store_cache_open: reading the cache record", rc);
        goto err_backend;
    }
    *out = c;
    return 0;

err_backend:
    c->be->ops->close(c->be);
    store__buf_free(&c->vb);
err_mutex:
    pthread_mutex_destroy(&c->pub_mu);
err_free:
    free(c);
    return rc;
}

void store_cache_close(struct store_cache *c) {
    if (c == NULL) return;
    STORE_ASSERT(c->reload == NULL);
    c->be->ops->close(c->be);
    store__buf_free(&c->kb);
    store__buf_free(&c->vb);
    pthread_mutex_destroy(&c->pub_mu);
    free(c);
}

/* ---------------------------------------------------------------- reads */

/* A consistent read view: a snapshot with the state it holds. */
struct cache_view {
    struct store__snap *snap;
    struct cache_state st;
};

static int view_open(struct store_cache *c, struct cache_view *v) {
    pthread_mutex_lock(&c->pub_mu);
    int rc = c->be->ops->snap_new(c->be, &v->snap);
    v->st = c->pub;
    pthread_mutex_unlock(&c->pub_mu);
    if (rc != 0) v->snap = NULL;
    return rc;
}

static void view_close(struct store_cache *c, struct cache_view *v) {
    if (v->snap != NULL) c->be->ops->snap_free(c->be, v->snap);
    v->snap = NULL;
}

int64_t store_cache_revision(struct store_cache *c) {
    STORE_ASSERT(c != NULL);
    pthread_mutex_lock(&c->pub_mu);
    int64_t r = c->pub.rev;
    pthread_mutex_unlock(&c->pub_mu);
    return r;
}

/* Copies kv into *dst with its key and, unless keys_only, its value in mem. */
static int copy_kv(struct store_mem *mem, const struct store_kv *kv, bool keys_only,
                   struct store_kv *dst) {
    *dst = *kv;
    dst->key.base = store__mem_dup(mem, kv->key.base, kv->key.len);
    if (dst->key.base == NULL) return STORE_ENOMEM;
    dst->value.base = NULL;
    if (keys_only) return 0;
    dst->value.base = store__mem_dup(mem, kv->value.base, kv->value.len);
    return dst->value.base == NULL ? STORE_ENOMEM : 0;
}

/* Appends a copy of kv to the kv array being built in arr. */
static int push_kv(struct store_mem *mem, struct store__buf *arr, const struct store_kv *kv,
                   bool keys_only) {
    struct store_kv cp;
    int rc = copy_kv(mem, kv, keys_only, &cp);
    return rc != 0 ? rc : store__buf_append(arr, &cp, sizeof(cp));
}

/* Moves the kv array built in arr into out's arena. */
static int finish_kvs(struct store__buf *arr, struct store_range_result *out) {
    STORE_ASSERT(arr->len % sizeof(struct store_kv) == 0);
    out->n_kvs = arr->len / sizeof(struct store_kv);
    out->kvs = NULL;
    if (out->n_kvs > 0) {
        out->kvs = store__mem_dup(out->mem_, arr->p, arr->len);
        if (out->kvs == NULL) return STORE_ENOMEM;
    }
    return 0;
}

int store_cache_get(struct store_cache *c, const void *key, size_t klen,
                    struct store_range_result *out) {
    STORE_ASSERT(c != NULL && out != NULL);
    STORE_ASSERT(key != NULL || klen == 0);
    memset(out, 0, sizeof(*out));
    if (klen == 0) return STORE_EKEYEMPTY;
    struct store__buf kb = {0}, vb = {0};
    struct cache_view v = {0};
    int rc = view_open(c, &v);
    if (rc != 0) return rc;
    out->revision = v.st.rev;
    if ((rc = slot_key(&kb, v.st.slot, key, klen)) != 0) goto out;
    rc = c->be->ops->get(c->be, v.snap, STORE__CF_KV, kb.p, kb.len, &vb);
    if (rc == 1) {
        rc = 0;
        goto out;
    }
    if (rc != 0) goto out;
    struct store_kv kv;
    if ((rc = kv_from(key, klen, vb.p, vb.len, &kv)) != 0) goto out;
    out->mem_ = store__mem_new();
    if (out->mem_ == NULL) {
        rc = STORE_ENOMEM;
        goto out;
    }
    out->kvs = store__mem_alloc(out->mem_, sizeof(*out->kvs));
    if (out->kvs == NULL) {
        rc = STORE_ENOMEM;
        goto out;
    }
    if ((rc = copy_kv(out->mem_, &kv, false, &out->kvs[0])) != 0) goto out;
    out->n_kvs = 1;
    out->count = 1;

out:
    view_close(c, &v);
    store__buf_free(&kb);
    store__buf_free(&vb);
    if (rc != 0) store_range_result_release(out);
    return rc;
}

int store_cache_range(struct store_cache *c, const void *start, size_t start_len, const void *end,
                      size_t end_len, size_t limit, bool keys_only,
                      struct store_range_result *out) {
    STORE_ASSERT(c != NULL && out != NULL);
    STORE_ASSERT(start != NULL || start_len == 0);
    STORE_ASSERT(end != NULL || end_len == 0);
    memset(out, 0, sizeof(*out));
    const struct store__backend_ops *ops = c->be->ops;
    bool bounded = end_len > 0 && !(end_len == 1 && ((const uint8_t *)end)[0] == 0);
    struct store__buf kb = {0}, arr = {0};
    struct store__iter *it = NULL;
    struct cache_view v = {0};
    out->mem_ = store__mem_new();
    if (out->mem_ == NULL) return STORE_ENOMEM;
    int rc = view_open(c, &v);
    if (rc != 0) goto out;
    out->revision = v.st.rev;
    if ((rc = slot_key(&kb, v.st.slot, start, start_len)) != 0) goto out;
    if ((rc = ops->iter_new(c->be, v.snap, STORE__CF_KV, &it)) != 0) goto out;
    size_t n = 0;
    for (ops->iter_seek(it, kb.p, kb.len); ops->iter_valid(it); ops->iter_next(it)) {
        size_t kl, vl;
        const uint8_t *k = ops->iter_key(it, &kl);
        if (kl < 1 || k[0] != v.st.slot) break;
        if (bounded && store__bytes_cmp(k + 1, kl - 1, end, end_len) >= 0) break;
        if (limit > 0 && n == limit) {
            out->more = true;
            break;
        }
        const void *val = ops->iter_value(it, &vl);
        struct store_kv kv;
        if ((rc = kv_from(k + 1, kl - 1, val, vl, &kv)) != 0) goto out;
        if ((rc = push_kv(out->mem_, &arr, &kv, keys_only)) != 0) goto out;
        n++;
    }
    if ((rc = ops->iter_status(it)) != 0) goto out;
    if ((rc = finish_kvs(&arr, out)) != 0) goto out;
    STORE_ASSERT(out->n_kvs == n);
    out->count = out->more ? -1 : (int64_t)n;

out:
    if (it != NULL) ops->iter_free(it);
    view_close(c, &v);
    store__buf_free(&kb);
    store__buf_free(&arr);
    if (rc != 0) store_range_result_release(out);
    return rc;
}

int store_cache_meta_get(struct store_cache *c, const char *name, void **blob, size_t *len) {
    STORE_ASSERT(c != NULL);
    STORE_ASSERT(blob != NULL && len != NULL);
    *blob = NULL;
    *len = 0;
    int rc = check_meta_name(name);
    if (rc != 0) return rc;
    struct store__buf kb = {0}, vb = {0};
    if ((rc = meta_key(&kb, name)) != 0) goto out;
    rc = c->be->ops->get(c->be, NULL, STORE__CF_DEFAULT, kb.p, kb.len, &vb);
    if (rc == 1) rc = STORE_EKEYNOTFOUND;
    if (rc != 0) goto out;
    *blob = qfs_malloc(vb.len ? vb.len : 1);
    if (*blob == NULL) {
        rc = STORE_ENOMEM;
        goto out;
    }
    if (vb.len > 0) memcpy(*blob, vb.p, vb.len);
    *len = vb.len;

out:
    store__buf_free(&kb);
    store__buf_free(&vb);
    return rc;
}

/* ---------------------------------------------------------------- writes */

/* Adds the meta blob to w. */
static int batch_meta(struct store_cache *c, struct store__batch *w, struct store__buf *kb,
                      const char *name, const void *blob, size_t len) {
    STORE_ASSERT(blob != NULL || len == 0);
    int rc = check_meta_name(name);
    if (rc != 0) return rc;
    if (len > STORE_CACHE_META_BYTES_MAX) return STORE_ETOOLARGE;
    if ((rc = meta_key(kb, name)) != 0) return rc;
    return c->be->ops->batch_put(w, STORE__CF_DEFAULT, kb->p, kb->len, blob ? blob : "", len);
}

int store_cache_meta_put(struct store_cache *c, const char *name, const void *blob, size_t len) {
    STORE_ASSERT(c != NULL);
    STORE_ASSERT(name != NULL);
    const struct store__backend_ops *ops = c->be->ops;
    struct store__batch *w = NULL;
    int rc = ops->batch_new(c->be, &w);
    if (rc != 0) return rc;
    rc = batch_meta(c, w, &c->kb, name, blob, len);
    if (rc == 0) rc = ops->batch_commit(c->be, w, true);
    ops->batch_free(w);
    return rc;
}

int store_cache_apply(struct store_cache *c, const struct store_cache_change *ch, size_t n,
                      int64_t revision) {
    STORE_ASSERT(c != NULL);
    STORE_ASSERT(ch != NULL || n == 0);
    STORE_ASSERT(c->reload == NULL);
    if (revision < c->st.rev || (n > 0 && revision == c->st.rev)) return STORE_EINVAL;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (ch[i].type == STORE_EVENT_PUT)
            rc = check_kv(&ch[i].kv, revision);
        else if (ch[i].type == STORE_EVENT_DELETE)
            rc = check_key(&ch[i].kv.key);
        else
            rc = STORE_EINVAL;
    }
    if (rc != 0) return rc;
    if (revision == c->st.rev) return 0; /* an empty batch at the same revision */

    const struct store__backend_ops *ops = c->be->ops;
    struct store__batch *w = NULL;
    if ((rc = ops->batch_new(c->be, &w)) != 0) return rc;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const struct store_kv *kv = &ch[i].kv;
        rc = slot_key(&c->kb, c->st.slot, kv->key.base, kv->key.len);
        if (rc != 0) break;
        if (ch[i].type == STORE_EVENT_PUT) {
            rc = rec_encode(kv, &c->vb);
            if (rc == 0)
                rc = ops->batch_put(w, STORE__CF_KV, c->kb.p, c->kb.len, c->vb.p, c->vb.len);
        } else {
            rc = ops->batch_delete(w, STORE__CF_KV, c->kb.p, c->kb.len);
        }
    }
    struct cache_state st = {revision, c->st.slot};
    if (rc == 0) rc = commit_state(c, w, &st, false);
    ops->batch_free(w);
    return rc;
}

/* ---------------------------------------------------------------- reload */

int store_cache_reload_begin(struct store_cache *c, int64_t revision,
                             struct store_cache_reload **out) {
    STORE_ASSERT(c != NULL && out != NULL);
    STORE_ASSERT(c->reload == NULL);
    if (revision < 1) return STORE_EINVAL;
    struct store_cache_reload *r = qfs_calloc(1, sizeof(*r));
    if (r == NULL) return STORE_ENOMEM;
    r->c = c;
    r->rev = revision;
    r->slot = c->st.slot ^ 1u;
    /* Leftovers of a reload that crashed or failed to commit. */
    int rc = clear_slot(c, r->slot);
    if (rc == 0) rc = c->be->ops->batch_new(c->be, &r->commit);
    if (rc != 0) {
        free(r);
        return rc;
    }
    c->reload = r;
    *out = r;
    return 0;
}

int store_cache_reload_page(struct store_cache_reload *r, const struct store_kv *kvs, size_t n) {
    STORE_ASSERT(r != NULL && r->c->reload == r);
    STORE_ASSERT(kvs != NULL || n == 0);
    struct store_cache *c = r->c;
    const struct store__backend_ops *ops = c->be->ops;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        rc = check_kv(&kvs[i], r->rev);
        if (rc != 0) break;
        const struct store_bytes *prev = i > 0 ? &kvs[i - 1].key : NULL;
        int cmp =
            prev != NULL ? store__bytes_cmp(prev->base, prev->len, kvs[i].key.base, kvs[i].key.len)
            : r->any     ? store__bytes_cmp(r->last.p, r->last.len, kvs[i].key.base, kvs[i].key.len)
                         : -1;
        if (cmp >= 0) rc = STORE_EINVAL;
    }
    if (rc != 0 || n == 0) return rc;

    /* Room for the page's last key first: once the page is staged,
     * remembering it cannot fail. */
    const struct store_bytes *lk = &kvs[n - 1].key;
    if ((rc = store__buf_reserve(&r->last, lk->len)) != 0) return rc;
    struct store__batch *w = NULL;
    if ((rc = ops->batch_new(c->be, &w)) != 0) return rc;
    for (size_t i = 0; i < n && rc == 0; i++) {
        rc = slot_key(&r->kb, r->slot, kvs[i].key.base, kvs[i].key.len);
        if (rc == 0) rc = rec_encode(&kvs[i], &r->vb);
        if (rc == 0) rc = ops->batch_put(w, STORE__CF_KV, r->kb.p, r->kb.len, r->vb.p, r->vb.len);
    }
    if (rc == 0) rc = ops->batch_commit(c->be, w, false);
    ops->batch_free(w);
    if (rc != 0) return rc;
    STORE_ASSERT(r->last.cap >= lk->len);
    r->last.len = 0;
    rc = store__buf_append(&r->last, lk->base, lk->len);
    STORE_ASSERT(rc == 0);
    r->any = true;
    return 0;
}

int store_cache_reload_meta_put(struct store_cache_reload *r, const char *name, const void *blob,
                                size_t len) {
    STORE_ASSERT(r != NULL && r->c->reload == r);
    STORE_ASSERT(name != NULL);
    return batch_meta(r->c, r->commit, &r->kb, name, blob, len);
}

static void reload_free(struct store_cache_reload *r) {
    r->c->reload = NULL;
    r->c->be->ops->batch_free(r->commit);
    store__buf_free(&r->last);
    store__buf_free(&r->kb);
    store__buf_free(&r->vb);
    free(r);
}

/* One side of the diff walk: an iterator over one slot. */
struct side {
    struct store__iter *it;
    uint32_t slot;
    bool valid;
    const uint8_t *k; /* user key (after the slot byte); valid while positioned */
    size_t kl;
    const void *v; /* record */
    size_t vl;
};

static void side_settle(const struct store__backend_ops *ops, struct side *s) {
    s->valid = false;
    if (!ops->iter_valid(s->it)) return;
    size_t kl;
    const uint8_t *k = ops->iter_key(s->it, &kl);
    if (kl < 1 || k[0] != s->slot) return;
    s->k = k + 1;
    s->kl = kl - 1;
    s->v = ops->iter_value(s->it, &s->vl);
    s->valid = true;
}

static void side_next(const struct store__backend_ops *ops, struct side *s) {
    ops->iter_next(s->it);
    side_settle(ops, s);
}

static int side_emit(const struct side *s, enum store_cache_diff kind,
                     void (*diff_cb)(void *, enum store_cache_diff, const struct store_kv *),
                     void *arg) {
    struct store_kv kv;
    int rc = kv_from(s->k, s->kl, s->v, s->vl, &kv);
    if (rc == 0) diff_cb(arg, kind, &kv);
    return rc;
}

/* Walks the old slot and the new one of snapshot snap side by side. */
static int diff_walk(struct store_cache *c, const struct store__snap *snap, uint32_t old_slot,
                     uint32_t new_slot,
                     void (*diff_cb)(void *, enum store_cache_diff, const struct store_kv *),
                     void *arg) {
    STORE_ASSERT(old_slot != new_slot);
    STORE_ASSERT(diff_cb != NULL);
    const struct store__backend_ops *ops = c->be->ops;
    struct side o = {.slot = old_slot}, n = {.slot = new_slot};
    int rc = ops->iter_new(c->be, snap, STORE__CF_KV, &o.it);
    if (rc != 0) return rc;
    if ((rc = ops->iter_new(c->be, snap, STORE__CF_KV, &n.it)) != 0) goto out;
    uint8_t ob = (uint8_t)old_slot, nb = (uint8_t)new_slot;
    ops->iter_seek(o.it, &ob, 1);
    side_settle(ops, &o);
    ops->iter_seek(n.it, &nb, 1);
    side_settle(ops, &n);
    while (rc == 0 && (o.valid || n.valid)) {
        int cmp = !o.valid ? 1 : !n.valid ? -1 : store__bytes_cmp(o.k, o.kl, n.k, n.kl);
        if (cmp < 0) {
            rc = side_emit(&o, STORE_CACHE_DELETED, diff_cb, arg);
            side_next(ops, &o);
        } else if (cmp > 0) {
            rc = side_emit(&n, STORE_CACHE_CREATED, diff_cb, arg);
            side_next(ops, &n);
        } else {
            /* Records are canonical encodings of every field. */
            if (o.vl != n.vl || memcmp(o.v, n.v, o.vl) != 0)
                rc = side_emit(&n, STORE_CACHE_MODIFIED, diff_cb, arg);
            side_next(ops, &o);
            side_next(ops, &n);
        }
    }
    if (rc == 0) rc = ops->iter_status(o.it);
    if (rc == 0) rc = ops->iter_status(n.it);

out:
    if (n.it != NULL) ops->iter_free(n.it);
    ops->iter_free(o.it);
    return rc;
}

int store_cache_reload_commit(struct store_cache_reload *r,
                              void (*diff_cb)(void *arg, enum store_cache_diff kind,
                                              const struct store_kv *kv),
                              void *arg) {
    STORE_ASSERT(r != NULL && r->c->reload == r);
    STORE_ASSERT(r->slot != r->c->st.slot);
    struct store_cache *c = r->c;
    const struct store__backend_ops *ops = c->be->ops;
    uint32_t old_slot = c->st.slot;
    uint8_t lo = (uint8_t)old_slot, hi = (uint8_t)(old_slot + 1);
    struct cache_state st = {r->rev, r->slot};
    struct store__snap *snap = NULL;
    int rc = 0;
    /* Taken before the switch: both slots complete, for the walk after it. */
    if (diff_cb != NULL) rc = ops->snap_new(c->be, &snap);
    if (rc == 0) rc = ops->batch_delete_range(r->commit, STORE__CF_KV, &lo, 1, &hi, 1);
    if (rc == 0) rc = commit_state(c, r->commit, &st, false);
    if (rc == 0 && diff_cb != NULL) rc = diff_walk(c, snap, old_slot, r->slot, diff_cb, arg);
    if (snap != NULL) ops->snap_free(c->be, snap);
    reload_free(r);
    return rc;
}

void store_cache_reload_abort(struct store_cache_reload *r) {
    if (r == NULL) return;
    STORE_ASSERT(r->c->reload == r);
    /* Best effort: the next reload clears the slot anyway. */
    (void)clear_slot(r->c, r->slot);
    reload_free(r);
}
