/*
 * codec.c - the binary encoding of store requests (the payload of a Raft
 * entry), version STORE_REQUEST_VERSION.
 *
 * Integers are little-endian and fixed width; byte strings are a u32 length
 * then the bytes. A request is
 *
 *     u8 version, u8 type, u64 id, then by type:
 *       NOOP              nothing
 *       TXN               txn
 *       COMPACT           i64 revision, u8 flags (1 = physical)
 *       LEASE_GRANT       i64 id, i64 ttl
 *       LEASE_REVOKE      i64 id
 *       LEASE_CHECKPOINT  i64 id, i64 remaining_ttl
 *
 *     txn      = u32 n, compare * n, u32 n, op * n (success), u32 n, op * n (failure)
 *     compare  = u8 target, u8 result, bytes key, bytes range_end, i64 number,
 *                bytes value
 *     op       = u8 type, then
 *       RANGE         bytes key, bytes range_end, i64 limit, i64 revision,
 *                     u8 sort_order, u8 sort_target, u8 flags (1 keys_only,
 *                     2 count_only, 4 serializable, 8 skip_count),
 *                     i64 min_mod, i64 max_mod, i64 min_create, i64 max_create
 *       PUT           bytes key, bytes value, i64 lease, u8 flags (1 prev_kv,
 *                     2 ignore_value, 4 ignore_lease), u32 mode, u32 uid,
 *                     u32 gid, i64 mtime_ns
 *       DELETE_RANGE  bytes key, bytes range_end, u8 flags (1 prev_kv)
 *       TXN           txn (nesting at most STORE_TXN_DEPTH_MAX deep)
 *
 * The input must be consumed exactly. The decoder checks every length and
 * count against the bytes left before allocating, every enum and flag byte
 * against the values defined here, and the nesting depth; it is fuzzed by
 * tests/fuzz/fuzz_store_request.c.
 */
#include <string.h>

#include "store/store_int.h"

/* Smallest encodings, used to reject counts the input cannot hold. */
#define COMPARE_MIN_BYTES (2u + 4u + 4u + 8u + 4u)
#define OP_MIN_BYTES (1u + 4u + 4u + 1u)

#define RANGE_FLAG_KEYS_ONLY 1u
#define RANGE_FLAG_COUNT_ONLY 2u
#define RANGE_FLAG_SERIALIZABLE 4u
#define RANGE_FLAG_SKIP_COUNT 8u
#define PUT_FLAG_PREV_KV 1u
#define PUT_FLAG_IGNORE_VALUE 2u
#define PUT_FLAG_IGNORE_LEASE 4u

/* ---------------------------------------------------------------- size */

static size_t bytes_size(struct store_bytes b) {
    return 4 + b.len;
}

static size_t txn_size(const struct store_txn *t);

static size_t op_size(const struct store_op *op) {
    switch (op->type) {
    case STORE_OP_RANGE:
        return 1 + bytes_size(op->u.range.key) + bytes_size(op->u.range.range_end) + 8 + 8 + 3 +
               4 * 8;
    case STORE_OP_PUT:
        return 1 + bytes_size(op->u.put.key) + bytes_size(op->u.put.value) + 8 + 1 + 12 + 8;
    case STORE_OP_DELETE_RANGE:
        return 1 + bytes_size(op->u.delete_range.key) + bytes_size(op->u.delete_range.range_end) +
               1;
    case STORE_OP_TXN:
        return 1 + txn_size(&op->u.txn);
    default:
        STORE_ASSERT(!"unknown op type");
        return 0;
    }
}

static size_t txn_size(const struct store_txn *t) {
    size_t n = 12;
    for (size_t i = 0; i < t->n_compare; i++) {
        const struct store_compare *c = &t->compare[i];
        n += 2 + bytes_size(c->key) + bytes_size(c->range_end) + 8 + bytes_size(c->value);
    }
    for (size_t i = 0; i < t->n_success; i++) n += op_size(&t->success[i]);
    for (size_t i = 0; i < t->n_failure; i++) n += op_size(&t->failure[i]);
    return n;
}

size_t store_request_encoded_size(const struct store_request *req) {
    STORE_ASSERT(req != NULL);
    size_t n = 1 + 1 + 8;
    switch (req->type) {
    case STORE_REQ_NOOP:
        return n;
    case STORE_REQ_TXN:
        return n + txn_size(&req->u.txn);
    case STORE_REQ_COMPACT:
        return n + 9;
    case STORE_REQ_LEASE_GRANT:
        return n + 16;
    case STORE_REQ_LEASE_REVOKE:
        return n + 8;
    case STORE_REQ_LEASE_CHECKPOINT:
        return n + 16;
    default:
        STORE_ASSERT(!"unknown request type");
        return 0;
    }
}

/* ---------------------------------------------------------------- encode */

struct writer {
    uint8_t *p;
    size_t len;
    size_t cap;
};

static void w_u8(struct writer *w, uint8_t v) {
    STORE_ASSERT(w->len + 1 <= w->cap);
    w->p[w->len++] = v;
}

static void w_u32(struct writer *w, uint32_t v) {
    STORE_ASSERT(w->len + 4 <= w->cap);
    store__put_u32le(w->p + w->len, v);
    w->len += 4;
}

static void w_u64(struct writer *w, uint64_t v) {
    STORE_ASSERT(w->len + 8 <= w->cap);
    store__put_u64le(w->p + w->len, v);
    w->len += 8;
}

static void w_bytes(struct writer *w, struct store_bytes b) {
    STORE_ASSERT(b.len <= UINT32_MAX);
    w_u32(w, (uint32_t)b.len);
    STORE_ASSERT(w->len + b.len <= w->cap);
    if (b.len > 0) memcpy(w->p + w->len, b.base, b.len);
    w->len += b.len;
}

static int w_txn(struct writer *w, const struct store_txn *t, unsigned depth);

static int w_op(struct writer *w, const struct store_op *op, unsigned depth) {
    w_u8(w, op->type);
    switch (op->type) {
    case STORE_OP_RANGE: {
        const struct store_range_req *r = &op->u.range;
        w_bytes(w, r->key);
        w_bytes(w, r->range_end);
        w_u64(w, (uint64_t)r->limit);
        w_u64(w, (uint64_t)r->revision);
        w_u8(w, r->sort_order);
        w_u8(w, r->sort_target);
        w_u8(w, (uint8_t)((r->keys_only ? RANGE_FLAG_KEYS_ONLY : 0) |
                          (r->count_only ? RANGE_FLAG_COUNT_ONLY : 0) |
                          (r->serializable ? RANGE_FLAG_SERIALIZABLE : 0) |
                          (r->skip_count ? RANGE_FLAG_SKIP_COUNT : 0)));
        w_u64(w, (uint64_t)r->min_mod_revision);
        w_u64(w, (uint64_t)r->max_mod_revision);
        w_u64(w, (uint64_t)r->min_create_revision);
        w_u64(w, (uint64_t)r->max_create_revision);
        return 0;
    }
    case STORE_OP_PUT: {
        const struct store_put *p = &op->u.put;
        w_bytes(w, p->key);
        w_bytes(w, p->value);
        w_u64(w, (uint64_t)p->lease);
        w_u8(w, (uint8_t)((p->prev_kv ? PUT_FLAG_PREV_KV : 0) |
                          (p->ignore_value ? PUT_FLAG_IGNORE_VALUE : 0) |
                          (p->ignore_lease ? PUT_FLAG_IGNORE_LEASE : 0)));
        w_u32(w, p->mode);
        w_u32(w, p->uid);
        w_u32(w, p->gid);
        w_u64(w, (uint64_t)p->mtime_ns);
        return 0;
    }
    case STORE_OP_DELETE_RANGE:
        w_bytes(w, op->u.delete_range.key);
        w_bytes(w, op->u.delete_range.range_end);
        w_u8(w, op->u.delete_range.prev_kv ? 1 : 0);
        return 0;
    case STORE_OP_TXN:
        return w_txn(w, &op->u.txn, depth + 1);
    default:
        STORE_ASSERT(!"unknown op type");
        return STORE_EINVAL;
    }
}

static int w_txn(struct writer *w, const struct store_txn *t, unsigned depth) {
    if (depth > STORE_TXN_DEPTH_MAX) return STORE_EINVAL;
    STORE_ASSERT(t->n_compare <= UINT32_MAX && t->n_success <= UINT32_MAX);
    STORE_ASSERT(t->n_failure <= UINT32_MAX);
    w_u32(w, (uint32_t)t->n_compare);
    for (size_t i = 0; i < t->n_compare; i++) {
        const struct store_compare *c = &t->compare[i];
        w_u8(w, c->target);
        w_u8(w, c->result);
        w_bytes(w, c->key);
        w_bytes(w, c->range_end);
        w_u64(w, (uint64_t)c->number);
        w_bytes(w, c->value);
    }
    int rc;
    w_u32(w, (uint32_t)t->n_success);
    for (size_t i = 0; i < t->n_success; i++)
        if ((rc = w_op(w, &t->success[i], depth)) != 0) return rc;
    w_u32(w, (uint32_t)t->n_failure);
    for (size_t i = 0; i < t->n_failure; i++)
        if ((rc = w_op(w, &t->failure[i], depth)) != 0) return rc;
    return 0;
}

int store_request_encode(const struct store_request *req, void *buf, size_t cap, size_t *len) {
    STORE_ASSERT(req != NULL);
    STORE_ASSERT(len != NULL);
    size_t need = store_request_encoded_size(req);
    if (need > cap) return STORE_ETOOLARGE;
    struct writer w = {buf, 0, cap};
    w_u8(&w, STORE_REQUEST_VERSION);
    w_u8(&w, req->type);
    w_u64(&w, req->id);
    int rc = 0;
    switch (req->type) {
    case STORE_REQ_NOOP:
        break;
    case STORE_REQ_TXN:
        rc = w_txn(&w, &req->u.txn, 1);
        break;
    case STORE_REQ_COMPACT:
        w_u64(&w, (uint64_t)req->u.compact.revision);
        w_u8(&w, req->u.compact.physical ? 1 : 0);
        break;
    case STORE_REQ_LEASE_GRANT:
        w_u64(&w, (uint64_t)req->u.lease_grant.id);
        w_u64(&w, (uint64_t)req->u.lease_grant.ttl);
        break;
    case STORE_REQ_LEASE_REVOKE:
        w_u64(&w, (uint64_t)req->u.lease_revoke.id);
        break;
    case STORE_REQ_LEASE_CHECKPOINT:
        w_u64(&w, (uint64_t)req->u.lease_checkpoint.id);
        w_u64(&w, (uint64_t)req->u.lease_checkpoint.remaining_ttl);
        break;
    default:
        STORE_ASSERT(!"unknown request type");
    }
    if (rc != 0) return rc;
    STORE_ASSERT(w.len == need);
    *len = w.len;
    return 0;
}

int store_request_encode_alloc(const struct store_request *req, void **out, size_t *len) {
    STORE_ASSERT(out != NULL);
    size_t need = store_request_encoded_size(req);
    void *buf = qfs_malloc(need);
    if (buf == NULL) return STORE_ENOMEM;
    int rc = store_request_encode(req, buf, need, len);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    *out = buf;
    return 0;
}

/* ---------------------------------------------------------------- decode */

struct reader {
    const uint8_t *p;
    size_t len;
    size_t off;
    bool bad;
};

static size_t r_left(const struct reader *r) {
    return r->len - r->off;
}

static uint8_t r_u8(struct reader *r) {
    if (r->bad || r_left(r) < 1) {
        r->bad = true;
        return 0;
    }
    return r->p[r->off++];
}

static uint32_t r_u32(struct reader *r) {
    if (r->bad || r_left(r) < 4) {
        r->bad = true;
        return 0;
    }
    uint32_t v = store__get_u32le(r->p + r->off);
    r->off += 4;
    return v;
}

static uint64_t r_u64(struct reader *r) {
    if (r->bad || r_left(r) < 8) {
        r->bad = true;
        return 0;
    }
    uint64_t v = store__get_u64le(r->p + r->off);
    r->off += 8;
    return v;
}

static struct store_bytes r_bytes(struct reader *r) {
    struct store_bytes b = {NULL, 0};
    uint32_t n = r_u32(r);
    if (r->bad || r_left(r) < n) {
        r->bad = true;
        return b;
    }
    b.base = n ? r->p + r->off : NULL;
    b.len = n;
    r->off += n;
    return b;
}

static int r_txn(struct reader *r, struct store_txn *t, unsigned depth);

static int r_op(struct reader *r, struct store_op *op, unsigned depth) {
    op->type = r_u8(r);
    switch (op->type) {
    case STORE_OP_RANGE: {
        struct store_range_req *q = &op->u.range;
        q->key = r_bytes(r);
        q->range_end = r_bytes(r);
        q->limit = (int64_t)r_u64(r);
        q->revision = (int64_t)r_u64(r);
        q->sort_order = r_u8(r);
        q->sort_target = r_u8(r);
        uint8_t f = r_u8(r);
        q->min_mod_revision = (int64_t)r_u64(r);
        q->max_mod_revision = (int64_t)r_u64(r);
        q->min_create_revision = (int64_t)r_u64(r);
        q->max_create_revision = (int64_t)r_u64(r);
        if (r->bad) return STORE_EMALFORMED;
        if (q->sort_order > STORE_SORT_DESCEND || q->sort_target > STORE_SORT_VALUE)
            return STORE_EMALFORMED;
        if (f & ~(RANGE_FLAG_KEYS_ONLY | RANGE_FLAG_COUNT_ONLY | RANGE_FLAG_SERIALIZABLE |
                  RANGE_FLAG_SKIP_COUNT))
            return STORE_EMALFORMED;
        q->keys_only = f & RANGE_FLAG_KEYS_ONLY;
        q->count_only = f & RANGE_FLAG_COUNT_ONLY;
        q->serializable = f & RANGE_FLAG_SERIALIZABLE;
        q->skip_count = f & RANGE_FLAG_SKIP_COUNT;
        return 0;
    }
    case STORE_OP_PUT: {
        struct store_put *p = &op->u.put;
        p->key = r_bytes(r);
        p->value = r_bytes(r);
        p->lease = (int64_t)r_u64(r);
        uint8_t f = r_u8(r);
        p->mode = r_u32(r);
        p->uid = r_u32(r);
        p->gid = r_u32(r);
        p->mtime_ns = (int64_t)r_u64(r);
        if (r->bad) return STORE_EMALFORMED;
        if (f & ~(PUT_FLAG_PREV_KV | PUT_FLAG_IGNORE_VALUE | PUT_FLAG_IGNORE_LEASE))
            return STORE_EMALFORMED;
        p->prev_kv = f & PUT_FLAG_PREV_KV;
        p->ignore_value = f & PUT_FLAG_IGNORE_VALUE;
        p->ignore_lease = f & PUT_FLAG_IGNORE_LEASE;
        return 0;
    }
    case STORE_OP_DELETE_RANGE: {
        struct store_delete_range *d = &op->u.delete_range;
        d->key = r_bytes(r);
        d->range_end = r_bytes(r);
        uint8_t f = r_u8(r);
        if (r->bad || f > 1) return STORE_EMALFORMED;
        d->prev_kv = f;
        return 0;
    }
    case STORE_OP_TXN:
        return r_txn(r, &op->u.txn, depth + 1);
    default:
        return STORE_EMALFORMED;
    }
}

static int r_ops(struct reader *r, struct store_op **ops, size_t *n_ops, unsigned depth) {
    uint32_t n = r_u32(r);
    if (r->bad || n > r_left(r) / OP_MIN_BYTES) return STORE_EMALFORMED;
    if (n == 0) return 0;
    *ops = qfs_calloc(n, sizeof(**ops));
    if (*ops == NULL) return STORE_ENOMEM;
    *n_ops = n;
    for (uint32_t i = 0; i < n; i++) {
        int rc = r_op(r, &(*ops)[i], depth);
        if (rc != 0) {
            /* Ops after i are zeroed; a partly decoded TXN op is released
             * like a whole one. Mark the rest harmless. */
            for (uint32_t j = i + 1; j < n; j++) (*ops)[j].type = STORE_OP_RANGE;
            if ((*ops)[i].type > STORE_OP_TXN) (*ops)[i].type = STORE_OP_RANGE;
            return rc;
        }
    }
    return 0;
}

static int r_txn(struct reader *r, struct store_txn *t, unsigned depth) {
    if (depth > STORE_TXN_DEPTH_MAX) return STORE_EMALFORMED;
    uint32_t n = r_u32(r);
    if (r->bad || n > r_left(r) / COMPARE_MIN_BYTES) return STORE_EMALFORMED;
    if (n > 0) {
        t->compare = qfs_calloc(n, sizeof(*t->compare));
        if (t->compare == NULL) return STORE_ENOMEM;
        t->n_compare = n;
    }
    for (uint32_t i = 0; i < n; i++) {
        struct store_compare *c = &t->compare[i];
        c->target = r_u8(r);
        c->result = r_u8(r);
        c->key = r_bytes(r);
        c->range_end = r_bytes(r);
        c->number = (int64_t)r_u64(r);
        c->value = r_bytes(r);
        if (r->bad) return STORE_EMALFORMED;
        if (c->target > STORE_CMP_LEASE || c->result > STORE_CMP_NOT_EQUAL) return STORE_EMALFORMED;
    }
    int rc = r_ops(r, &t->success, &t->n_success, depth);
    if (rc != 0) return rc;
    return r_ops(r, &t->failure, &t->n_failure, depth);
}

int store_request_decode(const void *buf, size_t len, struct store_request *req) {
    STORE_ASSERT(req != NULL);
    STORE_ASSERT(buf != NULL || len == 0);
    memset(req, 0, sizeof(*req));
    struct reader r = {buf, len, 0, false};
    uint8_t version = r_u8(&r);
    if (r.bad) return STORE_EMALFORMED;
    if (version != STORE_REQUEST_VERSION) return STORE_EVERSION;
    uint8_t type = r_u8(&r);
    req->id = r_u64(&r);
    if (r.bad) return STORE_EMALFORMED;
    int rc = 0;
    switch (type) {
    case STORE_REQ_NOOP:
        break;
    case STORE_REQ_TXN:
        req->type = STORE_REQ_TXN;
        rc = r_txn(&r, &req->u.txn, 1);
        break;
    case STORE_REQ_COMPACT: {
        req->u.compact.revision = (int64_t)r_u64(&r);
        uint8_t f = r_u8(&r);
        if (f > 1) rc = STORE_EMALFORMED;
        req->u.compact.physical = f;
        break;
    }
    case STORE_REQ_LEASE_GRANT:
        req->u.lease_grant.id = (int64_t)r_u64(&r);
        req->u.lease_grant.ttl = (int64_t)r_u64(&r);
        break;
    case STORE_REQ_LEASE_REVOKE:
        req->u.lease_revoke.id = (int64_t)r_u64(&r);
        break;
    case STORE_REQ_LEASE_CHECKPOINT:
        req->u.lease_checkpoint.id = (int64_t)r_u64(&r);
        req->u.lease_checkpoint.remaining_ttl = (int64_t)r_u64(&r);
        break;
    default:
        rc = STORE_EMALFORMED;
    }
    req->type = type <= STORE_REQ_LEASE_CHECKPOINT ? type : STORE_REQ_NOOP;
    if (rc == 0 && (r.bad || r.off != r.len)) rc = STORE_EMALFORMED;
    return rc;
}

static void txn_release(struct store_txn *t);

static void ops_release(struct store_op *ops, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (ops[i].type == STORE_OP_TXN) txn_release(&ops[i].u.txn);
    free(ops);
}

static void txn_release(struct store_txn *t) {
    free(t->compare);
    ops_release(t->success, t->n_success);
    ops_release(t->failure, t->n_failure);
    memset(t, 0, sizeof(*t));
}

void store_request_release(struct store_request *req) {
    if (req == NULL) return;
    if (req->type == STORE_REQ_TXN) txn_release(&req->u.txn);
    memset(req, 0, sizeof(*req));
}
