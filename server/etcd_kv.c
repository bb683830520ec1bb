/*
 * etcd_kv.c - the etcd KV service (Range, Put, DeleteRange, Txn, Compact)
 * and the conversions between etcd's protobuf messages and store requests
 * and results.
 *
 * Reads are served from the store on the loop thread: a serializable Range
 * at once, a linearizable one after node__read_barrier() (ReadIndex), as
 * etcd does. Every write, and every Txn (read-only ones included, which
 * keeps them linearizable without a second code path), is a store request
 * proposed with node__submit() and answered from the store's result once
 * this member applied it. The request's checks (empty key, sizes, txn op
 * counts, duplicate keys) happen in node__submit() through
 * store_request_check(), with etcd's error texts.
 *
 * Memory: a call's protobuf request stays valid until the call is answered,
 * so converted store requests borrow its bytes; the protobuf answer lives in
 * an arena and borrows the store result's bytes until api_reply() encoded it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/etcd.h"

/* --------------------------------------------------------------- ranges */

bool etcd__key_in_range(const void *k, size_t klen, const void *key, size_t key_len,
                        const void *end, size_t end_len) {
    size_t n = klen < key_len ? klen : key_len;
    int c = memcmp(k, key, n);
    if (end_len == 0) return c == 0 && klen == key_len;
    if (c < 0 || (c == 0 && klen < key_len)) return false;           /* k < key */
    if (end_len == 1 && ((const uint8_t *)end)[0] == 0) return true; /* every key >= key */
    n = klen < end_len ? klen : end_len;
    c = memcmp(k, end, n);
    return c < 0 || (c == 0 && klen < end_len); /* k < end */
}

/* --------------------------------------------------------------- pb -> store */

static struct store_bytes bytes_of(ProtobufCBinaryData b) {
    return (struct store_bytes){b.data, b.len};
}

void etcd__range_from_pb(const Etcdserverpb__RangeRequest *in, struct store_range_req *out) {
    memset(out, 0, sizeof *out);
    out->key = bytes_of(in->key);
    out->range_end = bytes_of(in->range_end);
    out->limit = in->limit < 0 ? 0 : in->limit;
    out->revision = in->revision;
    out->sort_order = (uint8_t)in->sort_order;
    out->sort_target = (uint8_t)in->sort_target;
    out->keys_only = in->keys_only;
    out->count_only = in->count_only;
    out->serializable = in->serializable;
    out->min_mod_revision = in->min_mod_revision;
    out->max_mod_revision = in->max_mod_revision;
    out->min_create_revision = in->min_create_revision;
    out->max_create_revision = in->max_create_revision;
}

void etcd__put_from_pb(const Etcdserverpb__PutRequest *in, int64_t mtime_ns,
                       struct store_put *out) {
    memset(out, 0, sizeof *out);
    out->key = bytes_of(in->key);
    out->value = bytes_of(in->value);
    out->lease = in->lease;
    out->prev_kv = in->prev_kv;
    out->ignore_value = in->ignore_value;
    out->ignore_lease = in->ignore_lease;
    /* mode 0: the mount shows the key with its default file mode and owner.
     * A mount's put (quorumfs mount) carries them in quorumfs's extension. */
    out->mtime_ns = mtime_ns;
    const Mvccpb__FileMeta *m = in->quorumfs_meta;
    if (m && m->mode != 0) {
        out->mode = m->mode;
        out->uid = m->uid;
        out->gid = m->gid;
        if (m->mtime_ns) out->mtime_ns = m->mtime_ns;
    }
}

void etcd__delete_from_pb(const Etcdserverpb__DeleteRangeRequest *in,
                          struct store_delete_range *out) {
    memset(out, 0, sizeof *out);
    out->key = bytes_of(in->key);
    out->range_end = bytes_of(in->range_end);
    out->prev_kv = in->prev_kv;
}

static void compare_from_pb(const Etcdserverpb__Compare *in, struct store_compare *out) {
    memset(out, 0, sizeof *out);
    out->target = (uint8_t)in->target;
    out->result = (uint8_t)in->result;
    out->key = bytes_of(in->key);
    out->range_end = bytes_of(in->range_end);
    /* The oneof holds the operand; one of another kind than the target
     * compares as zero, as etcd's getters return for an unset oneof. */
    switch (in->target) {
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__VERSION:
        if (in->target_union_case == ETCDSERVERPB__COMPARE__TARGET_UNION_VERSION)
            out->number = in->version;
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE:
        if (in->target_union_case == ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION)
            out->number = in->create_revision;
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD:
        if (in->target_union_case == ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION)
            out->number = in->mod_revision;
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__VALUE:
        if (in->target_union_case == ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE)
            out->value = bytes_of(in->value);
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__LEASE:
        if (in->target_union_case == ETCDSERVERPB__COMPARE__TARGET_UNION_LEASE)
            out->number = in->lease;
        break;
    default:
        break;
    }
}

static int txn_from_pb(struct etcd_arena *a, const Etcdserverpb__TxnRequest *in, int64_t mtime_ns,
                       unsigned depth, struct store_txn *out);

static int ops_from_pb(struct etcd_arena *a, Etcdserverpb__RequestOp *const *in, size_t n,
                       int64_t mtime_ns, unsigned depth, struct store_op **out) {
    *out = NULL;
    if (n == 0) return 0;
    struct store_op *ops = etcd__alloc(a, n * sizeof *ops);
    if (!ops) return STORE_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const Etcdserverpb__RequestOp *op = in[i];
        int rc = 0;
        switch (op->request_case) {
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE:
            ops[i].type = STORE_OP_RANGE;
            etcd__range_from_pb(op->request_range, &ops[i].u.range);
            break;
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT:
            ops[i].type = STORE_OP_PUT;
            etcd__put_from_pb(op->request_put, mtime_ns, &ops[i].u.put);
            break;
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE:
            ops[i].type = STORE_OP_DELETE_RANGE;
            etcd__delete_from_pb(op->request_delete_range, &ops[i].u.delete_range);
            break;
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN:
            ops[i].type = STORE_OP_TXN;
            rc = txn_from_pb(a, op->request_txn, mtime_ns, depth + 1, &ops[i].u.txn);
            break;
        default:
            /* etcd's checkRequestOp: "empty op / nil entry". */
            rc = STORE_EKEYNOTFOUND;
            break;
        }
        if (rc) return rc;
    }
    *out = ops;
    return 0;
}

static int txn_from_pb(struct etcd_arena *a, const Etcdserverpb__TxnRequest *in, int64_t mtime_ns,
                       unsigned depth, struct store_txn *out) {
    memset(out, 0, sizeof *out);
    if (depth > STORE_TXN_DEPTH_MAX) return STORE_ETOOMANYOPS;
    if (in->n_compare) {
        out->compare = etcd__alloc(a, in->n_compare * sizeof *out->compare);
        if (!out->compare) return STORE_ENOMEM;
        for (size_t i = 0; i < in->n_compare; i++)
            compare_from_pb(in->compare[i], &out->compare[i]);
        out->n_compare = in->n_compare;
    }
    int rc = ops_from_pb(a, in->success, in->n_success, mtime_ns, depth, &out->success);
    if (rc) return rc;
    out->n_success = in->n_success;
    rc = ops_from_pb(a, in->failure, in->n_failure, mtime_ns, depth, &out->failure);
    if (rc) return rc;
    out->n_failure = in->n_failure;
    return 0;
}

int etcd__txn_from_pb(struct etcd_arena *a, const Etcdserverpb__TxnRequest *in, int64_t mtime_ns,
                      struct store_txn *out) {
    return txn_from_pb(a, in, mtime_ns, 1, out);
}

static bool ops_write(const struct store_op *ops, size_t n, bool with_delete) {
    for (size_t i = 0; i < n; i++) {
        if (ops[i].type == STORE_OP_PUT) return true;
        if (with_delete && ops[i].type == STORE_OP_DELETE_RANGE) return true;
        if (ops[i].type == STORE_OP_TXN && etcd__txn_writes(&ops[i].u.txn, with_delete))
            return true;
    }
    return false;
}

bool etcd__txn_writes(const struct store_txn *t, bool with_delete) {
    return ops_write(t->success, t->n_success, with_delete) ||
           ops_write(t->failure, t->n_failure, with_delete);
}

/* --------------------------------------------------------------- store -> pb */

static ProtobufCBinaryData pb_bytes(struct store_bytes b) {
    /* protobuf-c's field is not const; the encoder only reads it. */
    return (ProtobufCBinaryData){b.len, (uint8_t *)(uintptr_t)b.base};
}

Mvccpb__KeyValue *etcd__kv_to_pb(struct etcd_arena *a, const struct store_kv *kv, bool keys_only) {
    Mvccpb__KeyValue *out = etcd__alloc(a, sizeof *out);
    if (!out) return NULL;
    mvccpb__key_value__init(out);
    out->key = pb_bytes(kv->key);
    if (!keys_only) out->value = pb_bytes(kv->value);
    out->create_revision = kv->create_revision;
    out->mod_revision = kv->mod_revision;
    out->version = kv->version;
    out->lease = kv->lease;
    if (kv->mode != 0) { /* written through a mount: quorumfs's extension */
        Mvccpb__FileMeta *m = etcd__alloc(a, sizeof *m);
        if (!m) return NULL;
        mvccpb__file_meta__init(m);
        m->mode = kv->mode;
        m->uid = kv->uid;
        m->gid = kv->gid;
        m->mtime_ns = kv->mtime_ns;
        out->quorumfs_meta = m;
    }
    return out;
}

static Mvccpb__KeyValue **kvs_to_pb(struct etcd_arena *a, const struct store_kv *kvs, size_t n,
                                    bool keys_only) {
    Mvccpb__KeyValue **out = etcd__alloc(a, (n ? n : 1) * sizeof *out);
    if (!out) return NULL;
    for (size_t i = 0; i < n; i++)
        if (!(out[i] = etcd__kv_to_pb(a, &kvs[i], keys_only))) return NULL;
    return out;
}

int etcd__range_to_pb(struct etcd_arena *a, const struct store_range_result *r, bool keys_only,
                      Etcdserverpb__RangeResponse *out) {
    out->more = r->more;
    out->count = r->count;
    if (r->n_kvs) {
        out->kvs = kvs_to_pb(a, r->kvs, r->n_kvs, keys_only);
        if (!out->kvs) return STORE_ENOMEM;
        out->n_kvs = r->n_kvs;
    }
    return 0;
}

Mvccpb__Event *etcd__event_to_pb(struct etcd_arena *a, const struct store_event *ev,
                                 bool with_prev) {
    Mvccpb__Event *out = etcd__alloc(a, sizeof *out);
    if (!out) return NULL;
    mvccpb__event__init(out);
    out->type = ev->type == STORE_EVENT_DELETE ? MVCCPB__EVENT__EVENT_TYPE__DELETE
                                               : MVCCPB__EVENT__EVENT_TYPE__PUT;
    if (!(out->kv = etcd__kv_to_pb(a, &ev->kv, false))) return NULL;
    if (with_prev && ev->has_prev_kv && !(out->prev_kv = etcd__kv_to_pb(a, &ev->prev_kv, false)))
        return NULL;
    return out;
}

/* Whether the branch a txn took changed a key (etcd's len(txn.Changes())). */
static bool txn_result_changed(const struct store_txn_result *r) {
    for (size_t i = 0; i < r->n_results; i++) {
        const struct store_op_result *o = &r->results[i];
        if (o->type == STORE_OP_PUT) return true;
        if (o->type == STORE_OP_DELETE_RANGE && o->u.delete_range.deleted > 0) return true;
        if (o->type == STORE_OP_TXN && o->u.txn && txn_result_changed(o->u.txn)) return true;
    }
    return false;
}

static Etcdserverpb__ResponseHeader *inner_header(struct etcd_arena *a, int64_t rev) {
    Etcdserverpb__ResponseHeader *h = etcd__alloc(a, sizeof *h);
    if (!h) return NULL;
    etcdserverpb__response_header__init(h);
    h->revision = rev;
    return h;
}

/* One level of a txn's answer. `begin` is the revision before the txn and
 * *changed says whether an earlier op changed a key: etcd's inner headers
 * show the revision each op ran at (begin + 1 once something changed; a
 * nested txn's own header stays empty). */
static int txn_level_to_pb(struct etcd_arena *a, const struct store_txn *t,
                           const struct store_txn_result *r, int64_t begin, bool *changed,
                           Etcdserverpb__TxnResponse *out) {
    const struct store_op *ops = r->succeeded ? t->success : t->failure;
    size_t n_ops = r->succeeded ? t->n_success : t->n_failure;
    out->succeeded = r->succeeded;
    if (r->n_results == 0) return 0;
    if (r->n_results != n_ops) return STORE_ECORRUPT; /* result does not fit the request */
    out->responses = etcd__alloc(a, r->n_results * sizeof *out->responses);
    if (!out->responses) return STORE_ENOMEM;
    out->n_responses = r->n_results;
    for (size_t i = 0; i < r->n_results; i++) {
        const struct store_op_result *o = &r->results[i];
        Etcdserverpb__ResponseOp *ro = etcd__alloc(a, sizeof *ro);
        if (!ro) return STORE_ENOMEM;
        etcdserverpb__response_op__init(ro);
        out->responses[i] = ro;
        if (o->type != ops[i].type) return STORE_ECORRUPT;
        switch (o->type) {
        case STORE_OP_RANGE: {
            Etcdserverpb__RangeResponse *rr = etcd__alloc(a, sizeof *rr);
            if (!rr) return STORE_ENOMEM;
            etcdserverpb__range_response__init(rr);
            if (!(rr->header = inner_header(a, *changed ? begin + 1 : begin))) return STORE_ENOMEM;
            int rc = etcd__range_to_pb(a, &o->u.range, ops[i].u.range.keys_only, rr);
            if (rc) return rc;
            ro->response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE;
            ro->response_range = rr;
            break;
        }
        case STORE_OP_PUT: {
            Etcdserverpb__PutResponse *pr = etcd__alloc(a, sizeof *pr);
            if (!pr) return STORE_ENOMEM;
            etcdserverpb__put_response__init(pr);
            *changed = true;
            if (!(pr->header = inner_header(a, begin + 1))) return STORE_ENOMEM;
            if (o->u.put.has_prev_kv &&
                !(pr->prev_kv = etcd__kv_to_pb(a, &o->u.put.prev_kv, false)))
                return STORE_ENOMEM;
            ro->response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_PUT;
            ro->response_put = pr;
            break;
        }
        case STORE_OP_DELETE_RANGE: {
            Etcdserverpb__DeleteRangeResponse *dr = etcd__alloc(a, sizeof *dr);
            if (!dr) return STORE_ENOMEM;
            etcdserverpb__delete_range_response__init(dr);
            if (o->u.delete_range.deleted > 0) *changed = true;
            if (!(dr->header = inner_header(a, *changed ? begin + 1 : begin))) return STORE_ENOMEM;
            dr->deleted = o->u.delete_range.deleted;
            if (o->u.delete_range.n_prev_kvs) {
                dr->prev_kvs =
                    kvs_to_pb(a, o->u.delete_range.prev_kvs, o->u.delete_range.n_prev_kvs, false);
                if (!dr->prev_kvs) return STORE_ENOMEM;
                dr->n_prev_kvs = o->u.delete_range.n_prev_kvs;
            }
            ro->response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_DELETE_RANGE;
            ro->response_delete_range = dr;
            break;
        }
        case STORE_OP_TXN: {
            Etcdserverpb__TxnResponse *tr = etcd__alloc(a, sizeof *tr);
            if (!tr) return STORE_ENOMEM;
            etcdserverpb__txn_response__init(tr);
            if (!(tr->header = inner_header(a, 0))) return STORE_ENOMEM;
            if (o->u.txn) {
                int rc = txn_level_to_pb(a, &ops[i].u.txn, o->u.txn, begin, changed, tr);
                if (rc) return rc;
            }
            ro->response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_TXN;
            ro->response_txn = tr;
            break;
        }
        default:
            return STORE_ECORRUPT;
        }
    }
    return 0;
}

int etcd__txn_to_pb(struct etcd_arena *a, const struct store_txn *t,
                    const struct store_txn_result *r, int64_t rev, Etcdserverpb__TxnResponse *out) {
    bool changed = false;
    int64_t begin = txn_result_changed(r) ? rev - 1 : rev;
    return txn_level_to_pb(a, t, r, begin, &changed, out);
}

/* --------------------------------------------------------------- calls */

/* One KV call waiting for the node. */
struct kv_call {
    struct etcd *e;
    struct api_call *call;
    struct etcd_arena arena; /* the converted request, then the answer */
    const void *req;         /* the protobuf request (valid until answered) */
    struct store_txn txn;    /* Txn: the converted request */
};

static struct kv_call *kv_call_new(struct etcd *e, struct api_call *call, const void *req) {
    struct kv_call *k = calloc(1, sizeof *k);
    if (!k) return NULL;
    k->e = e;
    k->call = call;
    k->req = req;
    return k;
}

static void kv_call_free(struct kv_call *k) {
    etcd__arena_free(&k->arena);
    free(k);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* etcd serves only Status and serializable reads on a learner. */
static bool learner(struct etcd *e) {
    return etcd__status(e)->learner;
}

static void reply_or_error(struct api_call *call, int rc, const ProtobufCMessage *resp) {
    if (rc)
        etcd__reply_error(call, rc);
    else
        api_reply(call, resp);
}

/* ---- Range ---- */

static void range_now(struct etcd *e, struct api_call *call,
                      const Etcdserverpb__RangeRequest *req) {
    struct store_range_req q;
    struct store_range_result r = {0};
    struct etcd_arena a = {0};
    Etcdserverpb__RangeResponse resp = ETCDSERVERPB__RANGE_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    etcd__range_from_pb(req, &q);
    int rc = store_range(node__store_acquire(e->node), &q, &r);
    node__store_release(e->node);
    if (rc == 0) {
        etcd__header(e, &hdr, r.revision);
        resp.header = &hdr;
        rc = etcd__range_to_pb(&a, &r, req->keys_only, &resp);
    }
    reply_or_error(call, rc, &resp.base);
    etcd__arena_free(&a);
    store_range_result_release(&r);
}

static void range_barrier_done(void *arg, int err) {
    struct kv_call *k = arg;
    struct etcd *e = k->e;
    if (err)
        etcd__reply_error(k->call, err);
    else
        range_now(e, k->call, k->req);
    kv_call_free(k);
    etcd__unref(e);
}

void etcd__kv_range(void *ctx, struct api_call *call, const Etcdserverpb__RangeRequest *req) {
    struct etcd *e = ctx;
    if (req->key.len == 0) {
        etcd__reply_error(call, STORE_EKEYEMPTY);
        return;
    }
    if (req->serializable) {
        range_now(e, call, req);
        return;
    }
    if (learner(e)) {
        etcd__reply_error(call, ETCD_ELEARNERRPC);
        return;
    }
    if (e->stopping) {
        etcd__reply_error(call, ETCD_ESTOPPED);
        return;
    }
    struct kv_call *k = kv_call_new(e, call, req);
    if (!k) {
        etcd__reply_error(call, -ENOMEM);
        return;
    }
    etcd__ref(e); /* before: the node may answer within the call */
    int rc = node__read_barrier(e->node, range_barrier_done, k);
    if (rc) {
        kv_call_free(k);
        etcd__reply_error(call, rc);
        etcd__unref(e);
    }
}

/* ---- Put ---- */

static void put_done(void *arg, int err, const struct store_result *res) {
    struct kv_call *k = arg;
    int rc = err ? err : res->err;
    Etcdserverpb__PutResponse resp = ETCDSERVERPB__PUT_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    if (rc == 0) {
        etcd__header(k->e, &hdr, res->revision);
        resp.header = &hdr;
        if (res->txn.n_results == 1 && res->txn.results[0].type == STORE_OP_PUT &&
            res->txn.results[0].u.put.has_prev_kv) {
            resp.prev_kv = etcd__kv_to_pb(&k->arena, &res->txn.results[0].u.put.prev_kv, false);
            if (!resp.prev_kv) rc = STORE_ENOMEM;
        }
    }
    reply_or_error(k->call, rc, &resp.base);
    kv_call_free(k);
}

/* Submits a one-op txn for k; answers the call itself on refusal. */
static void submit_txn(struct kv_call *k, struct store_op *op, node_done_cb cb) {
    struct store_request r = {.type = STORE_REQ_TXN};
    r.u.txn.n_success = 1;
    r.u.txn.success = op;
    int rc = etcd__submit(k->e, &r, cb, k);
    if (rc) {
        etcd__reply_error(k->call, rc);
        kv_call_free(k);
    }
}

void etcd__kv_put(void *ctx, struct api_call *call, const Etcdserverpb__PutRequest *req) {
    struct etcd *e = ctx;
    if (learner(e)) {
        etcd__reply_error(call, ETCD_ELEARNERRPC);
        return;
    }
    struct kv_call *k = kv_call_new(e, call, req);
    if (!k) {
        etcd__reply_error(call, -ENOMEM);
        return;
    }
    struct store_op op = {.type = STORE_OP_PUT};
    etcd__put_from_pb(req, now_ns(), &op.u.put);
    submit_txn(k, &op, put_done);
}

/* ---- DeleteRange ---- */

static void delete_done(void *arg, int err, const struct store_result *res) {
    struct kv_call *k = arg;
    int rc = err ? err : res->err;
    Etcdserverpb__DeleteRangeResponse resp = ETCDSERVERPB__DELETE_RANGE_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    if (rc == 0) {
        etcd__header(k->e, &hdr, res->revision);
        resp.header = &hdr;
        if (res->txn.n_results == 1 && res->txn.results[0].type == STORE_OP_DELETE_RANGE) {
            const struct store_op_result *o = &res->txn.results[0];
            resp.deleted = o->u.delete_range.deleted;
            if (o->u.delete_range.n_prev_kvs) {
                resp.prev_kvs = kvs_to_pb(&k->arena, o->u.delete_range.prev_kvs,
                                          o->u.delete_range.n_prev_kvs, false);
                if (!resp.prev_kvs) rc = STORE_ENOMEM;
                resp.n_prev_kvs = o->u.delete_range.n_prev_kvs;
            }
        }
    }
    reply_or_error(k->call, rc, &resp.base);
    kv_call_free(k);
}

void etcd__kv_delete_range(void *ctx, struct api_call *call,
                           const Etcdserverpb__DeleteRangeRequest *req) {
    struct etcd *e = ctx;
    if (learner(e)) {
        etcd__reply_error(call, ETCD_ELEARNERRPC);
        return;
    }
    struct kv_call *k = kv_call_new(e, call, req);
    if (!k) {
        etcd__reply_error(call, -ENOMEM);
        return;
    }
    struct store_op op = {.type = STORE_OP_DELETE_RANGE};
    etcd__delete_from_pb(req, &op.u.delete_range);
    submit_txn(k, &op, delete_done);
}

/* ---- Txn ---- */

static void txn_done(void *arg, int err, const struct store_result *res) {
    struct kv_call *k = arg;
    int rc = err ? err : res->err;
    Etcdserverpb__TxnResponse resp = ETCDSERVERPB__TXN_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    if (rc == 0) {
        etcd__header(k->e, &hdr, res->revision);
        resp.header = &hdr;
        rc = etcd__txn_to_pb(&k->arena, &k->txn, &res->txn, res->revision, &resp);
    }
    reply_or_error(k->call, rc, &resp.base);
    kv_call_free(k);
}

void etcd__kv_txn(void *ctx, struct api_call *call, const Etcdserverpb__TxnRequest *req) {
    struct etcd *e = ctx;
    if (learner(e)) {
        etcd__reply_error(call, ETCD_ELEARNERRPC);
        return;
    }
    struct kv_call *k = kv_call_new(e, call, req);
    if (!k) {
        etcd__reply_error(call, -ENOMEM);
        return;
    }
    int rc = etcd__txn_from_pb(&k->arena, req, now_ns(), &k->txn);
    if (rc == 0) {
        struct store_request r = {.type = STORE_REQ_TXN, .u.txn = k->txn};
        rc = etcd__submit(e, &r, txn_done, k);
    }
    if (rc) {
        etcd__reply_error(call, rc);
        kv_call_free(k);
    }
}

/* ---- Compact ---- */

static void compact_done(void *arg, int err, const struct store_result *res) {
    struct kv_call *k = arg;
    int rc = err ? err : res->err;
    Etcdserverpb__CompactionResponse resp = ETCDSERVERPB__COMPACTION_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    if (rc == 0) {
        etcd__header(k->e, &hdr, res->revision);
        resp.header = &hdr;
    }
    reply_or_error(k->call, rc, &resp.base);
    kv_call_free(k);
}

void etcd__kv_compact(void *ctx, struct api_call *call,
                      const Etcdserverpb__CompactionRequest *req) {
    struct etcd *e = ctx;
    if (learner(e)) {
        etcd__reply_error(call, ETCD_ELEARNERRPC);
        return;
    }
    struct kv_call *k = kv_call_new(e, call, req);
    if (!k) {
        etcd__reply_error(call, -ENOMEM);
        return;
    }
    /* The store compacts physically in the apply itself, so `physical`
     * needs no extra wait. */
    struct store_request r = {.type = STORE_REQ_COMPACT};
    r.u.compact.revision = req->revision;
    r.u.compact.physical = req->physical;
    int rc = etcd__submit(e, &r, compact_done, k);
    if (rc) {
        etcd__reply_error(call, rc);
        kv_call_free(k);
    }
}
