/*
 * backend_rocksdb.c - the storage table over RocksDB's C API.
 *
 * One database with the column families of store__cf_names, opened with
 * create_if_missing and create_missing_column_families. Write batches go
 * through the write-ahead log (never disabled), synced when asked, so a
 * synced write also makes every earlier write durable and recovery keeps a
 * prefix of the batches (point-in-time WAL recovery).
 *
 * This is the only file that sees RocksDB types or its char **errptr
 * convention; errors become STORE_EIO (STORE_ECORRUPT when RocksDB reports
 * corruption).
 */
#include <rocksdb/c.h>
#include <string.h>

#include "store/store_int.h"

const char *const store__cf_names[STORE__CF_COUNT] = {
    "default", "kv", "hist", "log", "lease", "leasekey", "raft",
};

/* Background threads RocksDB may use for flushes and compactions. */
#define ROCKS_BACKGROUND_JOBS 2
/* Bloom filter bits per key: point gets (latest version, raft entries,
 * leases) skip SST files that cannot hold the key. */
#define ROCKS_BLOOM_BITS_PER_KEY 10
/* RocksDB's own info LOG files kept in the data directory. */
#define ROCKS_INFO_LOGS_KEPT 5

struct rocks {
    struct store__backend base;
    rocksdb_t *db;
    rocksdb_options_t *opts;
    rocksdb_block_based_table_options_t *table;
    rocksdb_column_family_handle_t *cf[STORE__CF_COUNT];
    rocksdb_readoptions_t *ro;
    rocksdb_writeoptions_t *wo_sync;
    rocksdb_writeoptions_t *wo_nosync;
};

struct store__snap {
    const rocksdb_snapshot_t *snap;
    rocksdb_readoptions_t *ro;
};

struct store__iter {
    rocksdb_iterator_t *it;
    rocksdb_readoptions_t *ro;
};

struct store__batch {
    struct rocks *r;
    rocksdb_writebatch_t *wb;
};

static int rocks_err(char *err) {
    if (err == NULL) return 0;
    int rc = strstr(err, "Corruption") != NULL ? STORE_ECORRUPT : STORE_EIO;
    rocksdb_free(err);
    return rc;
}

static void rocks_close(struct store__backend *b) {
    struct rocks *r = (struct rocks *)b;
    if (r == NULL) return;
    for (int i = 0; i < STORE__CF_COUNT; i++)
        if (r->cf[i] != NULL) rocksdb_column_family_handle_destroy(r->cf[i]);
    if (r->db != NULL) rocksdb_close(r->db);
    if (r->opts != NULL) rocksdb_options_destroy(r->opts);
    if (r->table != NULL) rocksdb_block_based_options_destroy(r->table);
    if (r->ro != NULL) rocksdb_readoptions_destroy(r->ro);
    if (r->wo_sync != NULL) rocksdb_writeoptions_destroy(r->wo_sync);
    if (r->wo_nosync != NULL) rocksdb_writeoptions_destroy(r->wo_nosync);
    free(r);
}

static int rocks_get(struct store__backend *b, const struct store__snap *snap, int cf,
                     const void *k, size_t klen, struct store__buf *val) {
    struct rocks *r = (struct rocks *)b;
    STORE_ASSERT(cf >= 0 && cf < STORE__CF_COUNT);
    char *err = NULL;
    rocksdb_pinnableslice_t *ps =
        rocksdb_get_pinned_cf(r->db, snap ? snap->ro : r->ro, r->cf[cf], k, klen, &err);
    if (err != NULL) return rocks_err(err);
    if (ps == NULL) return 1;
    size_t vlen = 0;
    const char *v = rocksdb_pinnableslice_value(ps, &vlen);
    val->len = 0;
    int rc = store__buf_append(val, v, vlen);
    rocksdb_pinnableslice_destroy(ps);
    return rc;
}

static int rocks_snap_new(struct store__backend *b, struct store__snap **out) {
    struct rocks *r = (struct rocks *)b;
    struct store__snap *s = qfs_calloc(1, sizeof(*s));
    if (s == NULL) return STORE_ENOMEM;
    s->ro = rocksdb_readoptions_create();
    s->snap = rocksdb_create_snapshot(r->db);
    rocksdb_readoptions_set_snapshot(s->ro, s->snap);
    *out = s;
    return 0;
}

static void rocks_snap_free(struct store__backend *b, struct store__snap *s) {
    struct rocks *r = (struct rocks *)b;
    if (s == NULL) return;
    rocksdb_readoptions_destroy(s->ro);
    rocksdb_release_snapshot(r->db, s->snap);
    free(s);
}

static int rocks_iter_new(struct store__backend *b, const struct store__snap *snap, int cf,
                          struct store__iter **out) {
    struct rocks *r = (struct rocks *)b;
    STORE_ASSERT(cf >= 0 && cf < STORE__CF_COUNT);
    struct store__iter *it = qfs_calloc(1, sizeof(*it));
    if (it == NULL) return STORE_ENOMEM;
    /* The iterator keeps its own read options, alive as long as it is. */
    it->ro = rocksdb_readoptions_create();
    if (snap != NULL) rocksdb_readoptions_set_snapshot(it->ro, snap->snap);
    it->it = rocksdb_create_iterator_cf(r->db, it->ro, r->cf[cf]);
    *out = it;
    return 0;
}

static void rocks_iter_free(struct store__iter *it) {
    if (it == NULL) return;
    rocksdb_iter_destroy(it->it);
    rocksdb_readoptions_destroy(it->ro);
    free(it);
}

static void rocks_iter_seek(struct store__iter *it, const void *k, size_t klen) {
    rocksdb_iter_seek(it->it, k, klen);
}

static bool rocks_iter_valid(struct store__iter *it) {
    return rocksdb_iter_valid(it->it) != 0;
}

static void rocks_iter_next(struct store__iter *it) {
    rocksdb_iter_next(it->it);
}

static const void *rocks_iter_key(struct store__iter *it, size_t *len) {
    return rocksdb_iter_key(it->it, len);
}

static const void *rocks_iter_value(struct store__iter *it, size_t *len) {
    return rocksdb_iter_value(it->it, len);
}

static int rocks_iter_status(struct store__iter *it) {
    char *err = NULL;
    rocksdb_iter_get_error(it->it, &err);
    return rocks_err(err);
}

static int rocks_batch_new(struct store__backend *b, struct store__batch **out) {
    struct store__batch *w = qfs_calloc(1, sizeof(*w));
    if (w == NULL) return STORE_ENOMEM;
    w->r = (struct rocks *)b;
    w->wb = rocksdb_writebatch_create();
    *out = w;
    return 0;
}

static int rocks_batch_put(struct store__batch *w, int cf, const void *k, size_t klen,
                           const void *v, size_t vlen) {
    STORE_ASSERT(cf >= 0 && cf < STORE__CF_COUNT);
    rocksdb_writebatch_put_cf(w->wb, w->r->cf[cf], k, klen, v, vlen);
    return 0;
}

static int rocks_batch_delete(struct store__batch *w, int cf, const void *k, size_t klen) {
    STORE_ASSERT(cf >= 0 && cf < STORE__CF_COUNT);
    rocksdb_writebatch_delete_cf(w->wb, w->r->cf[cf], k, klen);
    return 0;
}

static int rocks_batch_delete_range(struct store__batch *w, int cf, const void *bk, size_t blen,
                                    const void *ek, size_t elen) {
    STORE_ASSERT(cf >= 0 && cf < STORE__CF_COUNT);
    rocksdb_writebatch_delete_range_cf(w->wb, w->r->cf[cf], bk, blen, ek, elen);
    return 0;
}

static size_t rocks_batch_count(struct store__batch *w) {
    return (size_t)rocksdb_writebatch_count(w->wb);
}

static int rocks_batch_commit(struct store__backend *b, struct store__batch *w, bool sync) {
    struct rocks *r = (struct rocks *)b;
    char *err = NULL;
    rocksdb_write(r->db, sync ? r->wo_sync : r->wo_nosync, w->wb, &err);
    return rocks_err(err);
}

static void rocks_batch_free(struct store__batch *w) {
    if (w == NULL) return;
    rocksdb_writebatch_destroy(w->wb);
    free(w);
}

static int rocks_checkpoint(struct store__backend *b, const char *dir) {
    struct rocks *r = (struct rocks *)b;
    char *err = NULL;
    rocksdb_checkpoint_t *cp = rocksdb_checkpoint_object_create(r->db, &err);
    if (err != NULL) return rocks_err(err);
    /* log_size_for_flush 0: flush memtables so the checkpoint needs no WAL
     * replay beyond what it copies. */
    rocksdb_checkpoint_create(cp, dir, 0, &err);
    rocksdb_checkpoint_object_destroy(cp);
    return rocks_err(err);
}

static uint64_t rocks_prop(struct rocks *r, int cf, const char *name) {
    char *v = rocksdb_property_value_cf(r->db, r->cf[cf], name);
    if (v == NULL) return 0;
    uint64_t n = strtoull(v, NULL, 10);
    rocksdb_free(v);
    return n;
}

static int rocks_size(struct store__backend *b, uint64_t *bytes) {
    struct rocks *r = (struct rocks *)b;
    uint64_t n = 0;
    for (int i = 0; i < STORE__CF_COUNT; i++) {
        n += rocks_prop(r, i, "rocksdb.total-sst-files-size");
        n += rocks_prop(r, i, "rocksdb.cur-size-all-mem-tables");
    }
    *bytes = n;
    return 0;
}

static const struct store__backend_ops rocks_ops = {
    .close = rocks_close,
    .get = rocks_get,
    .snap_new = rocks_snap_new,
    .snap_free = rocks_snap_free,
    .iter_new = rocks_iter_new,
    .iter_free = rocks_iter_free,
    .iter_seek = rocks_iter_seek,
    .iter_valid = rocks_iter_valid,
    .iter_next = rocks_iter_next,
    .iter_key = rocks_iter_key,
    .iter_value = rocks_iter_value,
    .iter_status = rocks_iter_status,
    .batch_new = rocks_batch_new,
    .batch_put = rocks_batch_put,
    .batch_delete = rocks_batch_delete,
    .batch_delete_range = rocks_batch_delete_range,
    .batch_count = rocks_batch_count,
    .batch_commit = rocks_batch_commit,
    .batch_free = rocks_batch_free,
    .checkpoint = rocks_checkpoint,
    .size = rocks_size,
};

int store__backend_rocksdb_open(const char *dir, struct store__backend **out, char *errbuf,
                                size_t errlen) {
    STORE_ASSERT(dir != NULL);
    STORE_ASSERT(out != NULL);
    struct rocks *r = qfs_calloc(1, sizeof(*r));
    if (r == NULL) return STORE_ENOMEM;
    r->base.ops = &rocks_ops;
    r->opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(r->opts, 1);
    rocksdb_options_set_create_missing_column_families(r->opts, 1);
    rocksdb_options_set_max_background_jobs(r->opts, ROCKS_BACKGROUND_JOBS);
    rocksdb_options_set_wal_recovery_mode(r->opts, rocksdb_point_in_time_recovery);
    rocksdb_options_set_keep_log_file_num(r->opts, ROCKS_INFO_LOGS_KEPT);
    r->table = rocksdb_block_based_options_create();
    rocksdb_block_based_options_set_filter_policy(r->table, rocksdb_filterpolicy_create_bloom(
                                                                ROCKS_BLOOM_BITS_PER_KEY));
    rocksdb_options_set_block_based_table_factory(r->opts, r->table);
    r->ro = rocksdb_readoptions_create();
    r->wo_sync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(r->wo_sync, 1);
    r->wo_nosync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(r->wo_nosync, 0);

    const rocksdb_options_t *cf_opts[STORE__CF_COUNT];
    for (int i = 0; i < STORE__CF_COUNT; i++) cf_opts[i] = r->opts;
    char *err = NULL;
    r->db = rocksdb_open_column_families(r->opts, dir, STORE__CF_COUNT, store__cf_names, cf_opts,
                                         r->cf, &err);
    if (err != NULL) {
        if (errbuf != NULL && errlen > 0) snprintf(errbuf, errlen, "rocksdb: %s", err);
        int rc = rocks_err(err);
        r->db = NULL;
        memset(r->cf, 0, sizeof(r->cf));
        rocks_close(&r->base);
        return rc;
    }
    *out = &r->base;
    return 0;
}
