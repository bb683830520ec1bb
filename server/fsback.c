/*
 * fsback.c - the mount's view of the node: implements fs/'s struct
 * fs_backend over the store (reads, any FUSE worker thread, each a consistent
 * snapshot of the applied state) and the node loop (writes, as etcd
 * transactions proposed through Raft and answered once applied here).
 *
 * fs/ speaks in fs_txn compares; they map onto etcd compares as etcd
 * evaluates them over ranges (a range with no keys compares as zeros):
 *   EXISTS  -> create_revision > 0      ABSENT -> create_revision = 0
 *   MOD_EQ  -> mod_revision = R         MOD_LE -> mod_revision < R + 1
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "fs/fs.h"
#include "server/node.h"
#include "store/store.h"

/* etcd's "every key from here on" range_end. */
static const char range_all[1] = {0};

static int copy_kv(const struct store_kv *src, struct fs_kv *dst, int with_value) {
    memset(dst, 0, sizeof *dst);
    dst->key = malloc(src->key.len ? src->key.len : 1);
    if (!dst->key) return -ENOMEM;
    memcpy(dst->key, src->key.base, src->key.len);
    dst->key_len = src->key.len;
    dst->value_len = src->value.len; /* the size, even without the bytes */
    if (with_value && src->value.len) {
        dst->value = malloc(src->value.len);
        if (!dst->value) {
            fs_kv_clear(dst);
            return -ENOMEM;
        }
        memcpy(dst->value, src->value.base, src->value.len);
    }
    dst->create_revision = src->create_revision;
    dst->mod_revision = src->mod_revision;
    dst->version = src->version;
    dst->lease = src->lease;
    dst->mode = src->mode;
    dst->uid = src->uid;
    dst->gid = src->gid;
    dst->mtime_ns = src->mtime_ns;
    return 0;
}

static int be_get(void *data, const char *key, size_t key_len, struct fs_kv *out) {
    struct node *n = data;
    struct store_range_result r = {0};
    int rc = store_get(node__store_acquire(n), key, key_len, 0, &r);
    node__store_release(n);
    if (rc) return node__errno(rc);
    if (r.n_kvs == 0) {
        store_range_result_release(&r);
        return -ENOENT;
    }
    rc = copy_kv(&r.kvs[0], out, 1);
    store_range_result_release(&r);
    return rc;
}

static int be_range(void *data, const char *start, size_t start_len, const char *end,
                    size_t end_len, size_t limit, int keys_only, struct fs_kv **out,
                    size_t *n_out, int *more) {
    struct node *n = data;
    *out = NULL;
    *n_out = 0;
    *more = 0;
    if (start_len == 0) {
        /* etcd keys are never empty: the smallest key is "\0". */
        start = range_all;
        start_len = 1;
    }
    struct store_range_req req = {
        .key = {start, start_len},
        .range_end = end ? (struct store_bytes){end, end_len}
                         : (struct store_bytes){range_all, 1},
        .limit = (int64_t)limit,
        /* fs needs value sizes even for keys_only: the store's keys_only
         * drops them (etcd semantics), so values are read and not copied. */
        .skip_count = true,
    };
    struct store_range_result r = {0};
    int rc = store_range(node__store_acquire(n), &req, &r);
    node__store_release(n);
    if (rc) return node__errno(rc);
    if (r.n_kvs) {
        struct fs_kv *kvs = calloc(r.n_kvs, sizeof *kvs);
        if (!kvs) {
            store_range_result_release(&r);
            return -ENOMEM;
        }
        for (size_t i = 0; i < r.n_kvs; i++) {
            rc = copy_kv(&r.kvs[i], &kvs[i], !keys_only);
            if (rc) {
                fs_kv_array_free(kvs, i);
                store_range_result_release(&r);
                return rc;
            }
        }
        *out = kvs;
        *n_out = r.n_kvs;
    }
    *more = r.more;
    store_range_result_release(&r);
    return 0;
}

static int be_revision(void *data, int64_t *out) {
    struct node *n = data;
    *out = store_current_revision(node__store_acquire(n));
    node__store_release(n);
    return 0;
}

static int be_usage(void *data, uint64_t *used, uint64_t *quota) {
    struct node *n = data;
    struct store_status st;
    int rc = store_status(node__store_acquire(n), &st);
    node__store_release(n);
    if (rc) return node__errno(rc);
    *used = st.logical_bytes;
    *quota = st.quota_bytes;
    return 0;
}

struct submit_ctx {
    fs_txn_done_cb done_cb;
    void *arg;
};

static void submit_done(void *arg, int err, const struct store_result *res) {
    struct submit_ctx *c = arg;
    struct fs_txn_result r = {0};
    if (err == 0 && res->err) err = res->err;
    if (err == 0) {
        r.succeeded = res->txn.succeeded;
        r.revision = res->revision;
    }
    c->done_cb(c->arg, err ? node__errno(err) : 0, err ? NULL : &r);
    free(c);
}

/* True if an op after ops[i] puts the key ops[i] names. */
static bool later_put(const struct fs_txn *txn, size_t i) {
    const struct fs_op *d = &txn->ops[i];
    for (size_t j = i + 1; j < txn->n_ops; j++) {
        const struct fs_op *p = &txn->ops[j];
        if (p->type == FS_OP_PUT && p->key_len == d->key_len &&
            memcmp(p->key, d->key, d->key_len) == 0)
            return true;
    }
    return false;
}

static int be_submit(void *data, const struct fs_txn *txn, fs_txn_done_cb done_cb, void *arg) {
    struct node *n = data;
    int rc = 0;
    struct store_compare *cmps = calloc(txn->n_cmps ? txn->n_cmps : 1, sizeof *cmps);
    struct store_op *ops = calloc(txn->n_ops ? txn->n_ops : 1, sizeof *ops);
    struct submit_ctx *c = malloc(sizeof *c);
    if (!cmps || !ops || !c) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < txn->n_cmps; i++) {
        const struct fs_cmp *f = &txn->cmps[i];
        struct store_compare *s = &cmps[i];
        s->key = (struct store_bytes){f->key, f->key_len};
        if (f->range_end) s->range_end = (struct store_bytes){f->range_end, f->range_end_len};
        switch (f->type) {
        case FS_CMP_EXISTS:
            s->target = STORE_CMP_CREATE;
            s->result = STORE_CMP_GREATER;
            s->number = 0;
            break;
        case FS_CMP_ABSENT:
            s->target = STORE_CMP_CREATE;
            s->result = STORE_CMP_EQUAL;
            s->number = 0;
            break;
        case FS_CMP_MOD_EQ:
            s->target = STORE_CMP_MOD;
            s->result = STORE_CMP_EQUAL;
            s->number = f->revision;
            break;
        case FS_CMP_MOD_LE:
            s->target = STORE_CMP_MOD;
            s->result = STORE_CMP_LESS;
            s->number = f->revision + 1;
            break;
        default:
            rc = -EINVAL;
            goto out;
        }
    }
    size_t n_ops = 0;
    for (size_t i = 0; i < txn->n_ops; i++) {
        const struct fs_op *f = &txn->ops[i];
        /* etcd refuses a txn that deletes and puts one key ("duplicate key
         * given in txn request"); a delete followed by a put of the same
         * key is the put alone. */
        if (f->type == FS_OP_DELETE && later_put(txn, i)) continue;
        struct store_op *s = &ops[n_ops++];
        switch (f->type) {
        case FS_OP_PUT:
            s->type = STORE_OP_PUT;
            s->u.put.key = (struct store_bytes){f->key, f->key_len};
            s->u.put.value = (struct store_bytes){f->value, f->value_len};
            s->u.put.mode = f->mode;
            s->u.put.uid = f->uid;
            s->u.put.gid = f->gid;
            s->u.put.mtime_ns = f->mtime_ns;
            if (f->lease == FS_LEASE_KEEP) {
                /* Keep the key's lease. A key with no lease (or none at all)
                 * simply gets none; ignore_lease would fail on absent keys. */
                struct store_range_result r = {0};
                if (store_get(node__store_acquire(n), f->key, f->key_len, 0, &r) == 0 &&
                    r.n_kvs == 1)
                    s->u.put.lease = r.kvs[0].lease;
                node__store_release(n);
                store_range_result_release(&r);
            } else {
                s->u.put.lease = f->lease;
            }
            break;
        case FS_OP_DELETE:
            s->type = STORE_OP_DELETE_RANGE;
            s->u.delete_range.key = (struct store_bytes){f->key, f->key_len};
            break;
        case FS_OP_DELETE_RANGE:
            s->type = STORE_OP_DELETE_RANGE;
            s->u.delete_range.key = (struct store_bytes){f->key, f->key_len};
            s->u.delete_range.range_end = (struct store_bytes){f->range_end, f->range_end_len};
            break;
        default:
            rc = -EINVAL;
            goto out;
        }
    }
    struct store_request req = {.type = STORE_REQ_TXN};
    req.u.txn.n_compare = txn->n_cmps;
    req.u.txn.compare = cmps;
    req.u.txn.n_success = n_ops;
    req.u.txn.success = ops;
    c->done_cb = done_cb;
    c->arg = arg;
    rc = node__submit(n, &req, NODE_ORIGIN_MOUNT, submit_done, c);
    if (rc == 0) c = NULL; /* owned by the submission now */
    else rc = node__errno(rc);
out:
    free(cmps);
    free(ops);
    free(c);
    return rc;
}

static int be_read_barrier(void *data, void (*cb)(void *arg, int err), void *arg) {
    return node__read_barrier_async(data, cb, arg);
}

void node__fs_backend(struct node *n, struct fs_backend *be) {
    memset(be, 0, sizeof *be);
    be->data = n;
    be->get = be_get;
    be->range = be_range;
    be->revision = be_revision;
    be->submit = be_submit;
    be->usage = be_usage;
    be->read_barrier = be_read_barrier;
}
