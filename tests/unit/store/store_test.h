/*
 * store_test.h - helpers shared by the store/ unit tests (header only):
 * temporary directories, opening stores on RocksDB or on an in-memory
 * database, building and applying requests with consecutive Raft indexes,
 * a per-test bump allocator for request trees, and a seeded PRNG.
 *
 * Every helper returns 0 or a negative code, or aborts on a broken test
 * environment (mkdtemp failing), never hides a store error.
 */
#ifndef QUORUMFS_TESTS_STORE_TEST_H
#define QUORUMFS_TESTS_STORE_TEST_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store/store.h"
#include "tests/harness.h"

/* ---------------------------------------------------------------- prng */

static inline uint64_t t_rand(uint64_t *st) {
    /* xorshift64* */
    uint64_t x = *st ? *st : 0x9E3779B97F4A7C15ull;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *st = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static inline uint64_t t_below(uint64_t *st, uint64_t n) {
    return n ? t_rand(st) % n : 0;
}

/* ---------------------------------------------------------------- arena */

/* Allocations for one test step; t_free_all releases them. */
struct t_blk {
    struct t_blk *next;
    _Alignas(16) unsigned char data[];
};
static struct t_blk *t_blocks;

static inline void *t_alloc(size_t n) {
    struct t_blk *b = calloc(1, sizeof(*b) + (n ? n : 1));
    if (b == NULL) abort();
    b->next = t_blocks;
    t_blocks = b;
    return b->data;
}

static inline void *t_dup(const void *p, size_t n) {
    void *q = t_alloc(n);
    if (n) memcpy(q, p, n);
    return q;
}

static inline void t_free_all(void) {
    while (t_blocks) {
        struct t_blk *n = t_blocks->next;
        free(t_blocks);
        t_blocks = n;
    }
}

static inline struct store_bytes t_bytes(const void *p, size_t n) {
    struct store_bytes b = {p, n};
    return b;
}

static inline struct store_bytes t_str(const char *s) {
    return t_bytes(s, strlen(s));
}

/* ---------------------------------------------------------------- dirs */

static inline int t_rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static inline void t_rmrf(const char *dir) {
    nftw(dir, t_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh directory under TMPDIR (or /tmp); the caller frees the string. */
static inline char *t_mkdtemp(void) {
    const char *base = getenv("TMPDIR");
    char *p = malloc(4096);
    if (p == NULL) abort();
    snprintf(p, 4096, "%s/qfs-store-test-XXXXXX", base ? base : "/tmp");
    if (mkdtemp(p) == NULL) abort();
    return p;
}

/* ---------------------------------------------------------------- stores */

/* A store under test: RocksDB in dir, or memdb. */
struct t_store {
    struct store *s;
    struct store_memdb *memdb; /* NULL: RocksDB */
    char *dir;                 /* RocksDB: data dir (the temp dir + "/db") */
    char *tmp;                 /* temp dir to remove */
    uint64_t index;            /* last raft index handed to store_apply */
    uint64_t quota_bytes;
};

static inline int t_store_reopen(struct t_store *t) {
    if (t->s) store_close(t->s);
    t->s = NULL;
    struct store_options o;
    store_options_init(&o);
    o.data_dir = t->dir;
    o.memdb = t->memdb;
    if (t->quota_bytes) o.quota_bytes = t->quota_bytes;
    char err[256];
    int rc = store_open(&o, &t->s, err, sizeof(err));
    if (rc != 0) fprintf(stderr, "store_open: %s\n", err);
    if (rc == 0) t->index = store_applied_index(t->s);
    return rc;
}

static inline int t_store_open(struct t_store *t, bool rocks, uint64_t quota_bytes) {
    memset(t, 0, sizeof(*t));
    t->quota_bytes = quota_bytes;
    if (rocks) {
        t->tmp = t_mkdtemp();
        t->dir = malloc(strlen(t->tmp) + 8);
        if (t->dir == NULL) abort();
        sprintf(t->dir, "%s/db", t->tmp);
    } else {
        t->memdb = store_memdb_new();
        if (t->memdb == NULL) abort();
    }
    return t_store_reopen(t);
}

static inline void t_store_close(struct t_store *t) {
    if (t->s) store_close(t->s);
    t->s = NULL;
    if (t->memdb) store_memdb_free(t->memdb);
    t->memdb = NULL;
    if (t->tmp) t_rmrf(t->tmp);
    free(t->tmp);
    free(t->dir);
    t->tmp = t->dir = NULL;
}

/* Encodes and applies req at the next index. *res owned by the caller. */
static inline int t_apply(struct t_store *t, const struct store_request *req,
                          struct store_result **res) {
    void *buf;
    size_t len;
    int rc = store_request_encode_alloc(req, &buf, &len);
    if (rc != 0) return rc;
    rc = store_apply(t->s, t->index + 1, buf, len, res);
    free(buf);
    if (rc == 0) t->index++;
    return rc;
}

/* ---------------------------------------------------------------- builders */

static inline struct store_op t_op_put(const char *k, const char *v) {
    struct store_op op;
    memset(&op, 0, sizeof(op));
    op.type = STORE_OP_PUT;
    op.u.put.key = t_str(k);
    op.u.put.value = t_str(v);
    return op;
}

static inline struct store_op t_op_del(const char *k, const char *end) {
    struct store_op op;
    memset(&op, 0, sizeof(op));
    op.type = STORE_OP_DELETE_RANGE;
    op.u.delete_range.key = t_str(k);
    op.u.delete_range.range_end = end ? t_str(end) : t_bytes(NULL, 0);
    return op;
}

static inline struct store_op t_op_range(const char *k, const char *end) {
    struct store_op op;
    memset(&op, 0, sizeof(op));
    op.type = STORE_OP_RANGE;
    op.u.range.key = t_str(k);
    op.u.range.range_end = end ? t_str(end) : t_bytes(NULL, 0);
    return op;
}

/* A txn request from arrays (borrowed). */
static inline struct store_request t_txn(struct store_compare *cmp, size_t n_cmp,
                                         struct store_op *succ, size_t n_succ,
                                         struct store_op *fail, size_t n_fail) {
    struct store_request r;
    memset(&r, 0, sizeof(r));
    r.type = STORE_REQ_TXN;
    r.u.txn.compare = cmp;
    r.u.txn.n_compare = n_cmp;
    r.u.txn.success = succ;
    r.u.txn.n_success = n_succ;
    r.u.txn.failure = fail;
    r.u.txn.n_failure = n_fail;
    return r;
}

/* Applies one op as a txn without compares; returns the store_apply code,
 * and the request error in *req_err. */
static inline int t_do(struct t_store *t, struct store_op op, int *req_err, int64_t *rev) {
    struct store_request r = t_txn(NULL, 0, &op, 1, NULL, 0);
    struct store_result *res = NULL;
    int rc = t_apply(t, &r, &res);
    if (rc == 0) {
        if (req_err) *req_err = res->err;
        if (rev) *rev = res->revision;
    }
    store_result_free(res);
    return rc;
}

static inline int t_put(struct t_store *t, const char *k, const char *v) {
    int err = 0;
    int rc = t_do(t, t_op_put(k, v), &err, NULL);
    return rc ? rc : err;
}

static inline int t_del(struct t_store *t, const char *k, const char *end) {
    int err = 0;
    int rc = t_do(t, t_op_del(k, end), &err, NULL);
    return rc ? rc : err;
}

/* Value of k at rev into buf (NUL-terminated); 1 if absent. */
static inline int t_get(struct t_store *t, const char *k, int64_t rev, char *buf, size_t cap,
                        struct store_kv *kv_out) {
    struct store_range_result r;
    int rc = store_get(t->s, k, strlen(k), rev, &r);
    if (rc != 0) return rc;
    if (r.n_kvs == 0) {
        store_range_result_release(&r);
        return 1;
    }
    size_t n = r.kvs[0].value.len < cap - 1 ? r.kvs[0].value.len : cap - 1;
    memcpy(buf, r.kvs[0].value.base, n);
    buf[n] = 0;
    if (kv_out) {
        *kv_out = r.kvs[0];
        kv_out->key.base = kv_out->value.base = NULL;
    }
    store_range_result_release(&r);
    return 0;
}

#endif /* QUORUMFS_TESTS_STORE_TEST_H */
