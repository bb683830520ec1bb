/*
 * store_int.h - private to store/: the storage backend vtable, the store
 * object, encodings of keys and records, and the small utilities (arena,
 * growable buffer) the rest of the module shares.
 *
 * The MVCC code talks only to struct store__backend_ops: a RocksDB
 * implementation (backend_rocksdb.c) and an in-memory one with fault
 * injection (backend_mem.c). RocksDB types never appear outside
 * backend_rocksdb.c.
 *
 * Invariants of struct store: `st` is the writer thread's view of the
 * durable state record and is changed only after a successful commit; `pub`
 * is the copy readers see, updated under pub_mu in the same critical section
 * as the commit, so a reader that takes a backend snapshot under pub_mu gets
 * a snapshot and a revision that belong together.
 */
#ifndef QUORUMFS_STORE_INT_H
#define QUORUMFS_STORE_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "raft/alloc.h"
#include "store/store.h"

/* Assertions stay on in release builds. */
#define STORE_ASSERT(cond)                                                                         \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "store: assertion failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* ---------------------------------------------------------------- arena */

/* Bump allocator that owns a result's memory; freed all at once. */
struct store_mem {
    struct store__chunk *head;
};
struct store_mem *store__mem_new(void);
void store__mem_free(struct store_mem *m);
/* 16-byte aligned, zeroed; NULL if out of memory. */
void *store__mem_alloc(struct store_mem *m, size_t n);
/* Copy of p[0..n) (n may be 0: returns a valid non-NULL pointer). */
void *store__mem_dup(struct store_mem *m, const void *p, size_t n);

/* ---------------------------------------------------------------- buffers */

/* Growable byte buffer (malloc'ed). */
struct store__buf {
    uint8_t *p;
    size_t len;
    size_t cap;
};
void store__buf_free(struct store__buf *b);
int store__buf_reserve(struct store__buf *b, size_t extra);
int store__buf_append(struct store__buf *b, const void *p, size_t n);
int store__buf_u8(struct store__buf *b, uint8_t v);
int store__buf_u32le(struct store__buf *b, uint32_t v);
int store__buf_u64le(struct store__buf *b, uint64_t v);
int store__buf_u64be(struct store__buf *b, uint64_t v);

void store__put_u32le(uint8_t *p, uint32_t v);
void store__put_u64le(uint8_t *p, uint64_t v);
void store__put_u64be(uint8_t *p, uint64_t v);
void store__put_u32be(uint8_t *p, uint32_t v);
uint32_t store__get_u32le(const uint8_t *p);
uint64_t store__get_u64le(const uint8_t *p);
uint64_t store__get_u64be(const uint8_t *p);
uint32_t store__get_u32be(const uint8_t *p);

/* ---------------------------------------------------------------- backend */

enum store__cf {
    STORE__CF_DEFAULT = 0,
    STORE__CF_KV = 1,
    STORE__CF_HIST = 2,
    STORE__CF_LOG = 3,
    STORE__CF_LEASE = 4,
    STORE__CF_LEASEKEY = 5,
    STORE__CF_RAFT = 6,
    STORE__CF_COUNT = 7
};
extern const char *const store__cf_names[STORE__CF_COUNT];

struct store__backend;
struct store__snap;
struct store__iter;
struct store__batch;

/*
 * The storage table. Reads take an optional snapshot (NULL: latest).
 * get returns 0 and fills *val (replacing its contents), 1 if absent, or a
 * negative code. Iterators are forward only and see a fixed state (the
 * snapshot's, or the latest at creation). Batches are applied atomically by
 * commit; nothing is visible before. All functions are thread-safe except
 * that one iterator or batch is used by one thread at a time.
 */
struct store__backend_ops {
    void (*close)(struct store__backend *b);
    int (*get)(struct store__backend *b, const struct store__snap *snap, int cf, const void *k,
               size_t klen, struct store__buf *val);
    int (*snap_new)(struct store__backend *b, struct store__snap **out);
    void (*snap_free)(struct store__backend *b, struct store__snap *snap);
    int (*iter_new)(struct store__backend *b, const struct store__snap *snap, int cf,
                    struct store__iter **out);
    void (*iter_free)(struct store__iter *it);
    void (*iter_seek)(struct store__iter *it, const void *k, size_t klen);
    bool (*iter_valid)(struct store__iter *it);
    void (*iter_next)(struct store__iter *it);
    const void *(*iter_key)(struct store__iter *it, size_t *len);
    const void *(*iter_value)(struct store__iter *it, size_t *len);
    int (*iter_status)(struct store__iter *it);
    int (*batch_new)(struct store__backend *b, struct store__batch **out);
    int (*batch_put)(struct store__batch *w, int cf, const void *k, size_t klen, const void *v,
                     size_t vlen);
    int (*batch_delete)(struct store__batch *w, int cf, const void *k, size_t klen);
    /* Deletes [begin, end). */
    int (*batch_delete_range)(struct store__batch *w, int cf, const void *begin, size_t blen,
                              const void *end, size_t elen);
    size_t (*batch_count)(struct store__batch *w);
    int (*batch_commit)(struct store__backend *b, struct store__batch *w, bool sync);
    void (*batch_free)(struct store__batch *w);
    int (*checkpoint)(struct store__backend *b, const char *dir);
    int (*size)(struct store__backend *b, uint64_t *bytes);
};

struct store__backend {
    const struct store__backend_ops *ops;
};

int store__backend_rocksdb_open(const char *dir, struct store__backend **out, char *err,
                                size_t errlen);
int store__backend_mem_open(struct store_memdb *m, struct store__backend **out);

/* ---------------------------------------------------------------- records */

/* The durable state record ("state" in the default column family). */
#define STORE__FORMAT 1
struct store__state {
    uint32_t format;
    uint64_t applied;       /* last applied raft index */
    int64_t rev;            /* current revision (1 on an empty store) */
    int64_t compact_rev;    /* 0 = never compacted */
    uint64_t logical_bytes; /* sum of store__hist_cost over stored hist entries */
    uint64_t n_leases;
    struct raft_conf_state conf; /* as of applied */
};
/* format u32, applied, rev, compact, bytes, n_leases u64, then conf. */
#define STORE__CONF_BYTES (8 + 16 * RAFT_MEMBERS_MAX)
#define STORE__STATE_BYTES (4 + 5 * 8 + STORE__CONF_BYTES)
_Static_assert(RAFT_MEMBERS_MAX == 16, "state record layout assumes 16 members max");
_Static_assert(STORE__STATE_BYTES == 308, "state record size is part of the disk format");
void store__state_encode(const struct store__state *st, uint8_t out[STORE__STATE_BYTES]);
int store__state_decode(const void *p, size_t len, struct store__state *st);

/* A key's version record (kv and hist column families). */
#define STORE__REC_TOMBSTONE 0x01u
#define STORE__REC_HDR 53
_Static_assert(STORE__REC_HDR == 1 + 4 * 8 + 3 * 4 + 8, "record header layout");
struct store__rec {
    uint8_t flags;
    int64_t create_rev, mod_rev, version, lease;
    uint32_t mode, uid, gid;
    int64_t mtime_ns;
    const void *value; /* borrowed from the decoded bytes */
    size_t value_len;
};
int store__rec_encode(const struct store__rec *r, struct store__buf *out);
int store__rec_decode(const void *p, size_t len, struct store__rec *r);
/* Bytes one hist entry counts for the quota. */
#define STORE__HIST_OVERHEAD 64u
uint64_t store__hist_cost(size_t key_len, size_t value_len);

/* esc(key): order-preserving, prefix-free escaping for hist keys. */
int store__esc_append(struct store__buf *b, const void *key, size_t len);
/* Bytes after esc(key) in a hist key: ~revision (8), ~sub (4). */
#define STORE__HIST_SUFFIX 12
/* Sub number that sorts first among a revision's entries of a key: a seek
 * to (K, rev, STORE__SUB_NEWEST) lands on K's newest entry at or below rev. */
#define STORE__SUB_NEWEST UINT32_MAX
/* Builds esc(key) || ~rev || ~sub into b (replacing its contents). */
int store__hist_key(struct store__buf *b, const void *key, size_t len, int64_t rev, uint32_t sub);
/* Splits a hist key into the escaped part (length *esc_len), the user key
 * (unescaped into *user, replacing its contents), the revision and the sub
 * number (sub may be NULL). */
int store__hist_key_parse(const void *k, size_t klen, struct store__buf *user, size_t *esc_len,
                          int64_t *rev, uint32_t *sub);

/* ---------------------------------------------------------------- store */

struct store {
    struct store__backend *be;
    uint64_t quota_bytes;
    uint64_t max_request_bytes;
    uint32_t max_txn_ops;

    /* Writer thread only. */
    struct store__state st;
    struct raft_storage rs;
    struct raft_hard_state hs;
    uint64_t log_start_index; /* the log holds entries after this index */
    uint64_t log_start_term;
    uint64_t last_index; /* = log_start_index when the log is empty */
    struct store__buf scratch;

    /* Published state for readers; protected by pub_mu. */
    pthread_mutex_t pub_mu;
    struct store__state pub;
};

/* Commits w, then publishes `st` as the new state (under pub_mu). */
int store__commit_state(struct store *s, struct store__batch *w, const struct store__state *st,
                        bool sync);
/* Adds the state record for st to w. */
int store__batch_put_state(struct store *s, struct store__batch *w, const struct store__state *st);

/* A consistent read view: a snapshot with the revision it holds. */
struct store__view {
    struct store__snap *snap;
    int64_t rev;
    int64_t compact_rev;
};
int store__view_open(struct store *s, struct store__view *v);
void store__view_close(struct store *s, struct store__view *v);

/* raftlog.c */
int store__raft_load(struct store *s);
void store__raft_init_storage(struct store *s);

/* mvcc.c */
int store__apply_request(struct store *s, uint64_t index, const void *req, size_t len,
                         struct store_result **res);
int store__check_request(struct store *s, const struct store_request *req, size_t len);
int store__range_view(struct store *s, const struct store__view *v,
                      const struct store_range_req *req, struct store_range_result *out);

/* codec.c: key range helpers. */
/* True if key k is inside etcd range [key, range_end). */
bool store__in_range(const void *k, size_t klen, const void *key, size_t key_len, const void *end,
                     size_t end_len);
int store__bytes_cmp(const void *a, size_t alen, const void *b, size_t blen);

#endif /* QUORUMFS_STORE_INT_H */
