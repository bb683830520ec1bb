/*
 * store.h - the MVCC key space, the Raft log storage and the leases of one
 * quorumfs node, on RocksDB. This is the only public header of store/.
 *
 * Data model: etcd v3's, exactly. The store holds a global revision that
 * starts at 1 on an empty store and grows by one per applied request that
 * changed at least one key (a read-only txn, a delete that deleted nothing, a
 * failed txn with an empty failure branch, a lease grant or a compaction do
 * not bump it). Every key carries create_revision, mod_revision, version (1
 * on creation, reset by a delete) and lease, plus the file metadata the
 * filesystem needs (mode, uid, gid, mtime_ns) that the etcd API does not show.
 * Old revisions stay readable until compacted.
 *
 * Threads: exactly one writer thread (the node loop) calls store_apply*,
 * store_raft_*, the raft_storage functions, store_checkpoint and
 * store_close. Any number of reader threads may concurrently call
 * store_range, store_get, store_events, store_lease_*, store_hash and the
 * revision getters: each read runs on a RocksDB snapshot taken together with
 * the revision published after the last apply, so a read sees exactly one
 * revision, never part of an apply.
 *
 * Durability: every applied Raft entry is one atomic RocksDB write batch that
 * also records the applied index (apply writes are not synced; a crash loses
 * a suffix of them and the driver re-applies from the Raft log, which
 * store_raft_save syncs). Applying an index <= the applied index is a no-op.
 *
 * Determinism: store_apply's outcome depends only on the store's state and
 * the request, plus quota_bytes, max_request_bytes and max_txn_ops, which
 * must therefore be equal on every member (as etcd's flags of the same names
 * should be). The driver should reject bad requests before proposing them
 * with store_request_check(), so that rejections at apply are rare.
 *
 * Errors: functions return 0 or a negative code: STORE_ERRORS below, or a
 * RAFT_ERRORS code from the raft_storage functions. store_strerror() names
 * both ranges.
 *
 * On-disk layout: see the "Layout" comment at the end of this file.
 */
#ifndef QUORUMFS_STORE_H
#define QUORUMFS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raft/raft.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes, in the range reserved for store/ (-2000..-2099). The texts of
 * the etcd-equivalent conditions are etcd's own, so that the gRPC layer can
 * pass them through. */
#define STORE_ERRORS(X)                                                                            \
    X(STORE_ENOMEM, -2001, "out of memory")                                                        \
    X(STORE_ECOMPACTED, -2002, "mvcc: required revision has been compacted")                       \
    X(STORE_EFUTUREREV, -2003, "mvcc: required revision is a future revision")                     \
    X(STORE_ENOSPACE, -2004, "mvcc: database space exceeded")                                      \
    X(STORE_ETOOLARGE, -2005, "etcdserver: request is too large")                                  \
    X(STORE_EKEYEMPTY, -2006, "etcdserver: key is not provided")                                   \
    X(STORE_ELEASENOTFOUND, -2007, "lease not found")                                              \
    X(STORE_ETOOMANYOPS, -2008, "etcdserver: too many operations in txn request")                  \
    X(STORE_EMALFORMED, -2009, "malformed request")                                                \
    X(STORE_EVERSION, -2010, "unsupported request encoding version")                               \
    X(STORE_ECORRUPT, -2011, "corrupted data in the store")                                        \
    X(STORE_EIO, -2012, "storage I/O error")                                                       \
    X(STORE_EINVAL, -2013, "invalid argument")                                                     \
    X(STORE_EKEYTOOLARGE, -2014, "key is too large")                                               \
    X(STORE_ELEASEEXISTS, -2015, "lease already exists")                                           \
    X(STORE_ELEASETTLTOOLARGE, -2016, "lease TTL is too large")                                    \
    X(STORE_EDUPLICATEKEY, -2017, "etcdserver: duplicate key given in txn request")                \
    X(STORE_EKEYNOTFOUND, -2018, "etcdserver: key not found")                                      \
    X(STORE_EVALUEPROVIDED, -2019, "etcdserver: value is provided")                                \
    X(STORE_ELEASEPROVIDED, -2020, "etcdserver: lease is provided")                                \
    X(STORE_ENOTSUP, -2021, "operation not supported by this backend")                             \
    X(STORE_EEXIST, -2022, "target already exists")                                                \
    X(STORE_EFAULT, -2023, "injected fault")

enum store_error {
#define STORE__ERR_ENUM(name, value, text) name = value,
    STORE_ERRORS(STORE__ERR_ENUM)
#undef STORE__ERR_ENUM
};

/* A static description of rc: a STORE_ERRORS or RAFT_ERRORS code, -errno,
 * or 0 ("success"). Never NULL. */
const char *store_strerror(int rc);

/* ---------------------------------------------------------------- limits */

/* etcd's --quota-backend-bytes default. The quota is compared with the
 * store's logical size (bytes of keys, values and record headers of every
 * stored revision, a deterministic figure), not with the file sizes: a txn
 * that puts fails with STORE_ENOSPACE if the logical size after it would
 * exceed the quota, a lease grant once the size exceeds it; deletes,
 * revokes, compactions and reads always work, and compaction gives the
 * space back. */
#define STORE_QUOTA_BYTES_DEFAULT (2ull * 1024 * 1024 * 1024)
/* etcd's --max-request-bytes default (1.5 MiB), on the encoded request. */
#define STORE_REQUEST_BYTES_DEFAULT (1536u * 1024u)
/* Hard ceiling for max_request_bytes whatever the options say. */
#define STORE_REQUEST_BYTES_MAX (64u * 1024u * 1024u)
/* Longest key. etcd only bounds keys by the request size; a filesystem path
 * (PATH_MAX 4096) plus a mount prefix fits with room to spare. */
#define STORE_KEY_BYTES_MAX (32u * 1024u)
/* etcd's --max-txn-ops default: compares, success ops and failure ops are
 * each bounded by it, at every nesting level. */
#define STORE_TXN_OPS_DEFAULT 128u
/* Nesting depth of txns inside txns (etcd bounds it only by request size). */
#define STORE_TXN_DEPTH_MAX 16u
/* etcd's MaxLeaseTTL, seconds. */
#define STORE_LEASE_TTL_MAX 9000000000ll
/* Changes store_events() examines per call, matching or not. */
#define STORE_EVENTS_SCAN_MAX 65536u

/* ---------------------------------------------------------------- open */

struct store;
struct store_memdb; /* in-memory, fault-injecting database (tests), below */

struct store_options {
    const char *data_dir;       /* RocksDB directory, created if missing */
    uint64_t quota_bytes;       /* 0: STORE_QUOTA_BYTES_DEFAULT */
    uint64_t max_request_bytes; /* 0: STORE_REQUEST_BYTES_DEFAULT; capped at _MAX */
    uint32_t max_txn_ops;       /* 0: STORE_TXN_OPS_DEFAULT */
    /* Non-NULL: use this in-memory database instead of RocksDB (data_dir is
     * then ignored). Borrowed; must outlive the store. */
    struct store_memdb *memdb;
};

/* Fills *opt with the defaults (data_dir NULL, memdb NULL). */
void store_options_init(struct store_options *opt);

/*
 * Opens (creating if needed) the store described by *opt; *out on success.
 * Start-up reads a fixed number of records; it does not scan the key space.
 * On failure a description goes to err[0..errlen) (may be NULL) and *out is
 * untouched. opt is copied (data_dir too).
 */
int store_open(const struct store_options *opt, struct store **out, char *err, size_t errlen);
/* Closes and frees s (NULL is fine). No reader may still be inside s. */
void store_close(struct store *s);

/* ---------------------------------------------------------------- data */

/* A byte string. Borrowed or owned as each use documents. */
struct store_bytes {
    const void *base;
    size_t len;
};

/* One version of one key (etcd's mvccpb.KeyValue plus file metadata). */
struct store_kv {
    struct store_bytes key;
    struct store_bytes value;
    int64_t create_revision; /* revision that created this incarnation of the key */
    int64_t mod_revision;    /* revision of this version */
    int64_t version;         /* 1 at creation, +1 per put; 0 in a delete event */
    int64_t lease;           /* lease id, 0 = none */
    uint32_t mode;           /* file metadata, opaque to the store */
    uint32_t uid;
    uint32_t gid;
    int64_t mtime_ns; /* ns since the epoch */
};

enum store_event_type {
    STORE_EVENT_PUT = 0,    /* etcd mvccpb.Event_PUT */
    STORE_EVENT_DELETE = 1, /* etcd mvccpb.Event_DELETE */
};

/* A change. For a DELETE, kv has only key and mod_revision (the deleting
 * revision), as in etcd. prev_kv is the key's version at revision - 1 (what
 * etcd's watch reports), when asked for and still available (not
 * compacted). One revision may change a key twice: etcd lets a nested txn
 * put a key that a later op of the same txn deletes (or the reverse). */
struct store_event {
    uint8_t type; /* enum store_event_type */
    struct store_kv kv;
    bool has_prev_kv;
    struct store_kv prev_kv;
};

/* ---------------------------------------------------------------- requests */

/* etcd's Compare.CompareTarget and Compare.CompareResult, same numbers. */
enum store_compare_target {
    STORE_CMP_VERSION = 0,
    STORE_CMP_CREATE = 1,
    STORE_CMP_MOD = 2,
    STORE_CMP_VALUE = 3,
    STORE_CMP_LEASE = 4,
};
enum store_compare_result {
    STORE_CMP_EQUAL = 0,
    STORE_CMP_GREATER = 1,
    STORE_CMP_LESS = 2,
    STORE_CMP_NOT_EQUAL = 3,
};

/*
 * Key ranges everywhere follow etcd: range_end empty = the single key `key`;
 * range_end "\0" (one zero byte) = every key >= key; otherwise [key,
 * range_end), empty if range_end <= key. Keys must not be empty.
 */
struct store_compare {
    uint8_t target; /* enum store_compare_target */
    uint8_t result; /* enum store_compare_result */
    struct store_bytes key;
    struct store_bytes range_end;
    int64_t number;           /* version / create / mod revision / lease */
    struct store_bytes value; /* STORE_CMP_VALUE */
};

struct store_put {
    struct store_bytes key;
    struct store_bytes value; /* must be empty with ignore_value */
    int64_t lease;            /* 0 = none; must be 0 with ignore_lease */
    bool prev_kv;             /* return the previous version */
    bool ignore_value;        /* keep the current value (key must exist) */
    bool ignore_lease;        /* keep the current lease (key must exist) */
    uint32_t mode, uid, gid;  /* file metadata stored with this version */
    int64_t mtime_ns;
};

struct store_delete_range {
    struct store_bytes key;
    struct store_bytes range_end;
    bool prev_kv; /* return the deleted versions */
};

/* etcd's RangeRequest.SortOrder and SortTarget, same numbers. */
enum store_sort_order { STORE_SORT_NONE = 0, STORE_SORT_ASCEND = 1, STORE_SORT_DESCEND = 2 };
enum store_sort_target {
    STORE_SORT_KEY = 0,
    STORE_SORT_VERSION = 1,
    STORE_SORT_CREATE = 2,
    STORE_SORT_MOD = 3,
    STORE_SORT_VALUE = 4,
};

struct store_range_req {
    struct store_bytes key;
    struct store_bytes range_end;
    int64_t limit;       /* 0 = no limit; `more` says whether keys were left out */
    int64_t revision;    /* 0 = current */
    uint8_t sort_order;  /* enum store_sort_order */
    uint8_t sort_target; /* enum store_sort_target; ties keep key order */
    bool keys_only;      /* values come back empty */
    bool count_only;     /* only count */
    bool serializable;   /* carried for the driver; the store ignores it */
    /* quorumfs extension: stop counting at limit + 1 (count is then -1), so
     * paging through a large prefix does not cost a full scan per page. */
    bool skip_count;
    int64_t min_mod_revision, max_mod_revision; /* 0 = no bound */
    int64_t min_create_revision, max_create_revision;
};

enum store_op_type {
    STORE_OP_RANGE = 0,
    STORE_OP_PUT = 1,
    STORE_OP_DELETE_RANGE = 2,
    STORE_OP_TXN = 3,
};

struct store_op;

/* A transaction: if every compare holds, success ops run in order, else
 * failure ops. All compares, nested ones included, are evaluated against the
 * state before the txn (etcd). A plain put or delete is a txn without
 * compares and one success op. */
struct store_txn {
    size_t n_compare;
    struct store_compare *compare;
    size_t n_success;
    struct store_op *success;
    size_t n_failure;
    struct store_op *failure;
};

struct store_op {
    uint8_t type; /* enum store_op_type */
    union {
        struct store_range_req range;
        struct store_put put;
        struct store_delete_range delete_range;
        struct store_txn txn;
    } u;
};

enum store_request_type {
    STORE_REQ_NOOP = 0,
    STORE_REQ_TXN = 1,
    STORE_REQ_COMPACT = 2,
    STORE_REQ_LEASE_GRANT = 3,
    STORE_REQ_LEASE_REVOKE = 4,
    STORE_REQ_LEASE_CHECKPOINT = 5,
};

struct store_request {
    uint8_t type; /* enum store_request_type */
    uint64_t id;  /* the driver's, echoed in the result to find the waiter */
    union {
        struct store_txn txn;
        struct {
            int64_t revision;
            bool physical; /* carried for the driver; compaction is always physical */
        } compact;
        struct {
            int64_t id;  /* > 0, chosen by the proposer */
            int64_t ttl; /* seconds, 0..STORE_LEASE_TTL_MAX */
        } lease_grant;
        struct {
            int64_t id;
        } lease_revoke;
        struct {
            int64_t id;
            int64_t remaining_ttl; /* seconds */
        } lease_checkpoint;
    } u;
};

/*
 * Binary request encoding (version STORE_REQUEST_VERSION, documented in
 * store/codec.c): a version byte, the type, the id, then the body with
 * little-endian fixed-width integers and u32 length-prefixed byte strings.
 */
#define STORE_REQUEST_VERSION 1

/* Bytes store_request_encode needs for req. */
size_t store_request_encoded_size(const struct store_request *req);
/* Encodes req into buf[0..cap); *len receives the size. STORE_ETOOLARGE if
 * cap is short, STORE_EINVAL for a txn deeper than STORE_TXN_DEPTH_MAX. */
int store_request_encode(const struct store_request *req, void *buf, size_t cap, size_t *len);
/* As store_request_encode into a malloc'ed *out (the caller frees it). */
int store_request_encode_alloc(const struct store_request *req, void **out, size_t *len);
/*
 * Decodes buf[0..len) into *req. Never reads outside buf; STORE_EMALFORMED or
 * STORE_EVERSION on bad input. Byte strings in *req borrow from buf, which
 * must outlive *req; the op and compare arrays are malloc'ed: release them
 * with store_request_release (also after a failed decode: it is safe).
 */
int store_request_decode(const void *buf, size_t len, struct store_request *req);
void store_request_release(struct store_request *req);

/*
 * The checks store_apply would make without looking at the data (sizes,
 * empty keys, op counts, duplicate keys in a txn, flags), plus the quota for
 * a request that writes. For the proposer: 0 or the error the request would
 * get. Any thread.
 */
int store_request_check(struct store *s, const void *req, size_t len);

/* ---------------------------------------------------------------- results */

/* The arena that owns a result's memory; private. */
struct store_mem;

struct store_range_result {
    /* The store's revision when the read ran (etcd's header revision), also
     * for a read at an older revision; inside a txn, the txn's revision. */
    int64_t revision;
    int64_t count; /* keys in the range at that revision (-1 with skip_count) */
    bool more;     /* keys were left out because of the limit */
    size_t n_kvs;
    struct store_kv *kvs;
    struct store_mem *mem_; /* owns kvs and their bytes */
};

struct store_txn_result;

struct store_op_result {
    uint8_t type; /* enum store_op_type */
    union {
        struct store_range_result range;
        struct {
            bool has_prev_kv;
            struct store_kv prev_kv;
        } put;
        struct {
            int64_t deleted;
            size_t n_prev_kvs;
            struct store_kv *prev_kvs; /* with prev_kv */
        } delete_range;
        struct store_txn_result *txn;
    } u;
};

struct store_txn_result {
    bool succeeded;
    size_t n_results;
    struct store_op_result *results; /* one per op of the branch taken */
};

/* The outcome of applying one request. All memory reachable from it is owned
 * by it and released by store_result_free. */
struct store_result {
    uint64_t raft_index;
    uint64_t request_id;
    uint8_t type; /* enum store_request_type; NOOP for a malformed request */
    /* 0, or why the request was rejected (then nothing changed, but the entry
     * is applied: the applied index moved). */
    int err;
    int64_t revision;            /* store revision after the apply (etcd's header revision) */
    struct store_txn_result txn; /* STORE_REQ_TXN */
    /* The lease a LEASE_GRANT, LEASE_REVOKE or LEASE_CHECKPOINT applied to
     * and its granted TTL (seconds); for a checkpoint also the remaining
     * TTL it recorded. All 0 when the request failed, and for a checkpoint
     * of an unknown lease (ignored, as etcd does). */
    int64_t lease_id, lease_ttl;
    int64_t lease_remaining_ttl; /* STORE_REQ_LEASE_CHECKPOINT */
    /* The changes this apply made, in order (kv and prev_kv always filled
     * where a previous version existed): for watch fan-out and cache
     * invalidation. */
    size_t n_events;
    struct store_event *events;
    struct store_mem *mem_;
};

void store_result_free(struct store_result *res);
/* Releases what a store_range/store_get result owns (the struct itself is the
 * caller's). Safe on a zeroed struct. */
void store_range_result_release(struct store_range_result *r);

/* ---------------------------------------------------------------- apply */

/*
 * Applies the committed Raft entry `raft_index` carrying the encoded request
 * req[0..len), in one write batch that also records raft_index as applied.
 * Writer thread only. raft_index must be > the applied index to do anything:
 * an index <= applied returns 0 with *res = NULL (crash replay).
 *
 * Returns 0 when the entry was applied: *res (free with store_result_free)
 * says what happened, with res->err != 0 for a request the store rejected
 * deterministically (malformed, compacted, no space, ...). Returns a
 * negative code when nothing was applied (STORE_EIO, STORE_ENOMEM,
 * STORE_ECORRUPT); the store's state is then unchanged and the driver may
 * retry or stop.
 */
int store_apply(struct store *s, uint64_t raft_index, const void *req, size_t len,
                struct store_result **res);
/* Applies an entry without a request (a leader's empty entry). */
int store_apply_noop(struct store *s, uint64_t raft_index);
/* Applies a conf change entry: records cs as the configuration as of
 * raft_index (returned by initial_state and snapshots). */
int store_apply_conf(struct store *s, uint64_t raft_index, const struct raft_conf_state *cs);

/*
 * The cluster blob: bytes the driver keeps with the store's state (the
 * member table and cluster id), opaque to the store. It lives in the
 * default column family, so a checkpoint carries it, and
 * store_apply_cluster writes it in the same batch as the applied index:
 * after a crash it is the blob as of the applied index. Writer thread.
 *
 * store_apply_cluster applies entry raft_index (a conf change when cs is
 * not NULL, as store_apply_conf; otherwise as store_apply_noop) and stores
 * blob with it. An index <= applied does nothing (crash replay).
 * store_cluster_put stores blob without applying anything (synced): for
 * a blob that follows from the state as it is (a new cluster's initial
 * members). store_cluster_get: *blob malloc'ed (free()), NULL with *len 0
 * when none was ever stored. STORE_ETOOLARGE beyond STORE_CLUSTER_BYTES_MAX.
 */
#define STORE_CLUSTER_BYTES_MAX (1u << 20)
int store_apply_cluster(struct store *s, uint64_t raft_index, const struct raft_conf_state *cs,
                        const void *blob, size_t len);
int store_cluster_put(struct store *s, const void *blob, size_t len);
int store_cluster_get(struct store *s, void **blob, size_t *len);

/* ---------------------------------------------------------------- reads */

/*
 * A range read, any thread, at req->revision (0 = current). Errors:
 * STORE_EKEYEMPTY, STORE_ECOMPACTED, STORE_EFUTUREREV, STORE_EIO, ENOMEM.
 * *out is filled on success; release with store_range_result_release.
 */
int store_range(struct store *s, const struct store_range_req *req, struct store_range_result *out);
/* One key at revision rev (0 = current): out->n_kvs is 0 or 1. */
int store_get(struct store *s, const void *key, size_t key_len, int64_t rev,
              struct store_range_result *out);

struct store_event_batch {
    size_t n_events;
    struct store_event *events; /* revision order */
    /* Pass as from_rev next time; the history is exhausted when it exceeds
     * store_current_revision(). */
    int64_t next_rev;
    struct store_mem *mem_;
};

/*
 * The change log: events on keys in [key, range_end) (etcd semantics; key
 * empty with range_end "\0" = all keys) with revisions >= from_rev, in
 * revision and change order. Whole revisions only: it stops at the first
 * revision boundary once it holds max_events events or has examined
 * STORE_EVENTS_SCAN_MAX changes (so a batch may exceed max_events by the
 * rest of one revision, and may be empty with next_rev advanced).
 * STORE_ECOMPACTED if from_rev < store_compact_revision(). At exactly the
 * compact revision, a put that the same revision superseded is gone (as in
 * etcd); its delete is still reported. Any thread.
 * Release with store_event_batch_release.
 */
int store_events(struct store *s, int64_t from_rev, const void *key, size_t key_len,
                 const void *range_end, size_t range_end_len, size_t max_events, bool prev_kv,
                 struct store_event_batch *out);
void store_event_batch_release(struct store_event_batch *b);

/* Published values; any thread. */
int64_t store_current_revision(struct store *s);
int64_t store_compact_revision(struct store *s); /* 0 = never compacted */
uint64_t store_applied_index(struct store *s);

struct store_status {
    int64_t revision;
    int64_t compact_revision;
    uint64_t applied_index;
    uint64_t logical_bytes; /* what quota_bytes is compared with */
    uint64_t quota_bytes;
    uint64_t db_bytes; /* files and memtables, as RocksDB estimates them */
    uint64_t n_leases;
};
int store_status(struct store *s, struct store_status *st);
/* On-disk size estimate (etcd's dbSize). */
int store_db_size(struct store *s, uint64_t *bytes);

/*
 * etcd's HashKV: a CRC-32C over every stored version with revision <= rev
 * (0 = current), in key order, so replicas that applied the same entries
 * agree. *compact_rev (may be NULL) receives the compact revision it saw.
 */
int store_hash(struct store *s, int64_t rev, uint32_t *hash, int64_t *compact_rev);

/* ---------------------------------------------------------------- leases */

struct store_lease {
    int64_t id;
    int64_t ttl;           /* granted TTL, seconds */
    int64_t remaining_ttl; /* from the last LEASE_CHECKPOINT, else = ttl */
};

/* Every lease; *out malloc'ed (free()), may be NULL when *n is 0. Any thread. */
int store_lease_list(struct store *s, struct store_lease **out, size_t *n);
/* One lease; STORE_ELEASENOTFOUND. */
int store_lease_get(struct store *s, int64_t id, struct store_lease *out);

struct store_key_list {
    size_t n_keys;
    struct store_bytes *keys; /* key order */
    struct store_mem *mem_;
};
/* Keys attached to lease id (STORE_ELEASENOTFOUND). Release with
 * store_key_list_release. */
int store_lease_keys(struct store *s, int64_t id, struct store_key_list *out);
void store_key_list_release(struct store_key_list *l);

/* ---------------------------------------------------------------- raft log */

/*
 * The raft_storage over this store; valid as long as s. Writer thread only.
 * initial_state: the saved hard state and the configuration as of the
 * applied index. snapshot(): meta = (applied index, its term, configuration
 * as of applied), data empty (the driver streams a store_checkpoint).
 */
struct raft_storage *store_raft_storage(struct store *s);

/*
 * Persists one Raft update in ONE write batch: hs (may be NULL) and entries
 * e[0..n) (copied), which replace any existing entries from e[0].index on.
 * Synced if `sync` (use the update's must_sync). e[0].index must be in
 * [first_index, last_index + 1]; indexes must be consecutive.
 */
int store_raft_save(struct store *s, const struct raft_hard_state *hs, const struct raft_entry *e,
                    size_t n, bool sync);
/* Discards entries up to and including index, which must be <= the applied
 * index; first_index becomes index + 1. Synced. */
int store_raft_compact(struct store *s, uint64_t index);
/* A fresh cluster: records cs as the configuration of a store with an
 * empty log, as a snapshot at index STORE_BOOTSTRAP_INDEX and term
 * STORE_BOOTSTRAP_TERM (applied, committed; hard state term 1, no vote;
 * the log starts after it). Every member of a new cluster bootstraps the
 * same, so their logs agree; a member added later starts empty and gets
 * the configuration with a snapshot from the leader. STORE_EEXIST if the
 * store has a log, hard state or applied entries. */
#define STORE_BOOTSTRAP_INDEX 1u
#define STORE_BOOTSTRAP_TERM 1u
int store_raft_bootstrap(struct store *s, const struct raft_conf_state *cs);
/*
 * After the driver opened a store restored from a leader's checkpoint:
 * drops the log copied with it, starts the log after meta->index (term
 * meta->term), records meta->conf and the node's own hard state hs (a
 * follower keeps its own term and vote). STORE_EINVAL if the checkpoint's
 * applied index is not meta->index.
 */
int store_raft_install_snapshot(struct store *s, const struct raft_snapshot_meta *meta,
                                const struct raft_hard_state *hs);

/* ---------------------------------------------------------------- snapshots */

/*
 * Writes a consistent RocksDB checkpoint of the whole store into dir (which
 * must not exist) and, if meta is not NULL, the Raft snapshot metadata it
 * corresponds to. Writer thread. store_open on dir (or a copy) opens it.
 * STORE_ENOTSUP on the in-memory backend.
 */
int store_checkpoint(struct store *s, const char *dir, struct raft_snapshot_meta *meta);

/* ---------------------------------------------------------------- test db */

/*
 * An in-memory database that outlives the stores opened on it, with fault
 * injection, for tests (any module's): open a store with
 * opt.memdb = m, close it, "crash", open again.
 */
struct store_memdb *store_memdb_new(void); /* NULL if out of memory */
void store_memdb_free(struct store_memdb *m);
/* The n-th write batch committed from now (1 = the next one) fails with
 * STORE_EFAULT and writes nothing; 0 cancels. One shot. */
void store_memdb_fail_write(struct store_memdb *m, uint64_t n);
/* Simulates power loss: of the write batches committed since the last synced
 * one, keeps the first `keep` (a prefix, as a write-ahead log would) and
 * drops the rest. Call with no store open on m. */
void store_memdb_crash(struct store_memdb *m, uint64_t keep);
/* Write batches committed since the last synced one. */
uint64_t store_memdb_unsynced(struct store_memdb *m);
/* Write batches committed so far (all of them, synced or not). */
uint64_t store_memdb_writes(struct store_memdb *m);

/* ---------------------------------------------------------------- client cache */

/*
 * The local copy a client mount keeps of a remote etcd/quorumfs key space
 * (filled by a Range, then kept up to date by a Watch). Not an MVCC store:
 * it holds the latest version of each remote key exactly as the remote
 * reported it, the remote revision the copy is complete up to, and a few
 * named opaque meta blobs (cluster id, mirrored prefix, ...).
 *
 * Threads: one writer thread calls store_cache_apply, store_cache_meta_put,
 * the store_cache_reload_* functions and store_cache_close. Any number of
 * reader threads may call store_cache_revision, store_cache_get,
 * store_cache_range and store_cache_meta_get concurrently with it; each
 * get or range sees the copy as of exactly one revision (a snapshot taken
 * together with the revision), never part of an apply or a reload.
 *
 * Durability: every apply and every reload commit is one atomic write
 * batch that also records the new revision. They are not synced: a crash
 * may lose a suffix of them, and the copy then is exactly the copy as of
 * an earlier revision, from which the client resumes its watch (revision
 * + 1). store_cache_meta_put is synced.
 *
 * Layout (its own RocksDB directory, or its own in-memory database):
 *   default  "cache" -> format (u32), active slot (u32), revision (u64)
 *            "meta/" name -> blob
 *   kv       slot (1 byte) || remote key -> record (as the store's kv
 *            records). Two slots: readers and applies use the active one;
 *            a reload stages the remote's state in the other one and its
 *            commit switches slots and drops the old one in one small
 *            batch, so neither a reload's pages nor its commit need memory
 *            in proportion to the key space.
 */
struct store_cache;
struct store_cache_reload;

/* Longest meta name (bytes, without the NUL) and largest meta blob. */
#define STORE_CACHE_META_NAME_MAX 128u
#define STORE_CACHE_META_BYTES_MAX (1u << 20)
/* Largest value the cache accepts (etcd bounds values by its request size). */
#define STORE_CACHE_VALUE_BYTES_MAX STORE_REQUEST_BYTES_MAX

/*
 * Opens the cache in dir (a RocksDB directory, created if missing), or in
 * mem when mem is not NULL (borrowed; must outlive the cache; dir is then
 * ignored). *out on success; on failure a description goes to
 * err[0..errlen) (err may be NULL) and *out is untouched. A directory
 * whose kv column family holds data but no cache record (not a cache) is
 * refused with STORE_ECORRUPT. Start-up reads two records.
 */
int store_cache_open(const char *dir, struct store_memdb *mem, struct store_cache **out, char *err,
                     size_t errlen);
/* Closes and frees c (NULL is fine). Writer thread; no reader may still be
 * inside c and no reload may be open. */
void store_cache_close(struct store_cache *c);

/* The remote revision the copy is complete up to; 0 = never loaded. Any
 * thread. */
int64_t store_cache_revision(struct store_cache *c);

/*
 * One key (STORE_EKEYEMPTY if klen is 0): out->n_kvs is 0 or 1,
 * out->revision the cache revision the read saw, out->count = n_kvs.
 * Any thread. *out is filled on success (and zeroed on failure); release
 * it with store_range_result_release. Its memory does not depend on c.
 */
int store_cache_get(struct store_cache *c, const void *key, size_t klen,
                    struct store_range_result *out);
/*
 * Keys in [start, end) in key order. start may be empty (from the first
 * key); end_len 0 (end may be NULL) or end = "\0" (one zero byte) means no
 * upper bound. limit 0 = no limit (the whole range is copied: the caller
 * bounds it); with a limit, at most limit kvs and out->more says whether
 * keys of the range were left out; the next page starts at the last key
 * followed by a zero byte. keys_only: values are not copied (value.base
 * NULL) but value.len is still the value's length. out->count is n_kvs,
 * or -1 when more is set (not counted). out->revision is the cache
 * revision the read saw. Any thread; release with
 * store_range_result_release.
 */
int store_cache_range(struct store_cache *c, const void *start, size_t start_len, const void *end,
                      size_t end_len, size_t limit, bool keys_only, struct store_range_result *out);

/* Meta blob `name` (NUL-terminated, 1..STORE_CACHE_META_NAME_MAX bytes):
 * *blob malloc'ed (the caller frees it; non-NULL also for an empty blob),
 * STORE_EKEYNOTFOUND if never stored. Any thread; reads the latest
 * committed state. */
int store_cache_meta_get(struct store_cache *c, const char *name, void **blob, size_t *len);
/* Stores blob[0..len) (copied) as meta `name`, synced. Writer thread.
 * STORE_EINVAL for a bad name, STORE_ETOOLARGE beyond
 * STORE_CACHE_META_BYTES_MAX. */
int store_cache_meta_put(struct store_cache *c, const char *name, const void *blob, size_t len);

/* One change from the remote's watch. PUT: the full kv as the remote
 * reported it (non-empty key, 1 <= create_revision <= mod_revision <=
 * the apply's revision, version >= 1). DELETE: kv.key (mod_revision, the
 * deleting revision, is not needed and not checked). */
struct store_cache_change {
    enum store_event_type type;
    struct store_kv kv;
};

/*
 * Applies ch[0..n) in order (a later change of the same key wins) and sets
 * the revision to `revision`, atomically. Writer thread, not while a
 * reload is open. A non-empty batch needs revision > the current one (the
 * client applies whole revisions: a resumed watch starts after it); an
 * empty one revision >= current (a progress notification). Otherwise, or
 * for a malformed change, STORE_EINVAL (STORE_EKEYEMPTY,
 * STORE_EKEYTOOLARGE, STORE_ETOOLARGE for keys and values) and nothing
 * changes. ch and its bytes are borrowed for the call only. On a write
 * error (STORE_EIO, STORE_EFAULT) the copy is exactly as before.
 */
int store_cache_apply(struct store_cache *c, const struct store_cache_change *ch, size_t n,
                      int64_t revision);

/*
 * A full reload (first load, or the remote compacted past our revision):
 *
 *   begin(revision >= 1); page(...) * N; [meta_put(...)]; commit or abort
 *
 * Pages carry the remote's complete state at `revision`, in strictly
 * increasing key order across all pages (else STORE_EINVAL for that page,
 * which is then not staged; the session stays open). Each page is
 * written to the inactive slot as it arrives (one unsynced batch per
 * page), so memory is bounded by one page. Readers see the old copy until
 * commit. store_cache_reload_meta_put stages a meta blob that the commit
 * writes in its batch (e.g. a new cluster id with the new content).
 *
 * store_cache_reload_commit switches to the new state and sets the revision
 * in one small batch, then, if diff_cb is not NULL, walks the old and the
 * new state side by side and calls diff_cb once per key that was created,
 * deleted or modified (its stored record differs: mod_revision, value or
 * any other field), in key order, with the new kv (the old one for
 * DELETED). The kv and its bytes are valid during the call only. The
 * callbacks run after the commit, on the writer thread: readers already
 * see the new state. diff_cb may read the cache but must not call its
 * writer functions (the session is still open while it runs). Returns 0, or the error of the commit (nothing
 * changed, no callback), or an I/O error of the walk (the copy was
 * replaced, store_cache_revision says so, but not every difference was
 * reported). Frees r in every case. store_cache_reload_abort discards r
 * and what it staged; the copy stays as it was.
 *
 * Writer thread; one session at a time; no store_cache_apply while a
 * session is open (store_cache_meta_put is fine). The revision may be
 * lower than the current one (a different remote). Errors of
 * store_cache_reload_begin: STORE_EINVAL, STORE_ENOMEM, write errors.
 */
int store_cache_reload_begin(struct store_cache *c, int64_t revision,
                             struct store_cache_reload **out);
/* kvs[0..n) borrowed for the call; each checked as a PUT change of an
 * apply at the reload's revision. n may be 0. */
int store_cache_reload_page(struct store_cache_reload *r, const struct store_kv *kvs, size_t n);
int store_cache_reload_meta_put(struct store_cache_reload *r, const char *name, const void *blob,
                                size_t len);

enum store_cache_diff {
    STORE_CACHE_CREATED = 1,
    STORE_CACHE_MODIFIED = 2,
    STORE_CACHE_DELETED = 3,
};

int store_cache_reload_commit(struct store_cache_reload *r,
                              void (*diff_cb)(void *arg, enum store_cache_diff kind,
                                              const struct store_kv *kv),
                              void *arg);
void store_cache_reload_abort(struct store_cache_reload *r);

/*
 * Layout (one RocksDB database, column families; integers big-endian in
 * keys so that byte order is numeric order, little-endian in values):
 *
 *   default   "state" -> format version, applied index, current revision,
 *                        compact revision, logical bytes, change sequence,
 *                        configuration as of the applied index. Rewritten
 *                        by every apply, in the same batch.
 *             "cluster" -> the driver's cluster blob (store_apply_cluster).
 *   kv        user key -> record of the latest live version. One seek per
 *             get; a prefix range is one iterator pass. Deleted keys are
 *             absent.
 *   hist      esc(user key) || ~revision (8) || ~sub (4) -> record,
 *             tombstones included. esc() maps 0x00 to 0x00 0xFF and ends
 *             with 0x00 0x01, so hist keys sort by user key, then newest
 *             first: the version of K at revision R is the first entry at or
 *             after esc(K) || ~R || 0x00000000, one seek. sub numbers the
 *             changes within a revision (etcd's sub-revision).
 *   log       revision (8) || sub (4) -> event type, user key. The
 *             revision-ordered change log: watch replay and compaction walk
 *             only the revisions they need. Compaction at C removes the
 *             entries below C and, for each change in (previous C, C], the
 *             version it superseded and the change itself if a deletion.
 *   lease     lease id (8) -> granted TTL, remaining TTL.
 *   leasekey  lease id (8) || user key -> empty. Keys attached to a lease.
 *   raft      'e' || index (8) -> term, type, data     (log entries)
 *             'h' -> hard state; 's' -> (index, term) the log starts after
 *
 * A record: flags (1: tombstone), create_revision, mod_revision, version,
 * lease (i64 each), mode, uid, gid (u32 each), mtime_ns (i64), then the value.
 */

#ifdef __cplusplus
}
#endif
#endif /* QUORUMFS_STORE_H */
