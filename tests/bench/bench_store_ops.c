/*
 * bench_store_ops.c - store throughput on RocksDB: applied puts per second
 * (one entry per put, unsynced apply writes as in a node), Raft log appends
 * per second (synced, one entry per write, then 64 per write as group
 * commit does), and ranges per second (single-key gets, and 100-key prefix
 * pages). Prints figures only.
 *
 *     bench_store_ops [n_ops] [data_dir]
 */
#define _GNU_SOURCE /* nftw */
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store/store.h"

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int encode_put(uint64_t i, uint64_t id, void **buf, size_t *len) {
    char key[32], val[256];
    snprintf(key, sizeof(key), "/bench/%08llu", (unsigned long long)(i % 100000));
    memset(val, 'v', sizeof(val));
    struct store_op op;
    memset(&op, 0, sizeof(op));
    op.type = STORE_OP_PUT;
    op.u.put.key.base = key;
    op.u.put.key.len = strlen(key);
    op.u.put.value.base = val;
    op.u.put.value.len = sizeof(val);
    struct store_request r;
    memset(&r, 0, sizeof(r));
    r.type = STORE_REQ_TXN;
    r.id = id;
    r.u.txn.success = &op;
    r.u.txn.n_success = 1;
    return store_request_encode_alloc(&r, buf, len);
}

int main(int argc, char **argv) {
    uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 20000;
    char dir[256];
    if (argc > 2)
        snprintf(dir, sizeof(dir), "%s", argv[2]);
    else
        snprintf(dir, sizeof(dir), "/tmp/qfs-bench-store-%d", (int)getpid());
    struct store_options o;
    store_options_init(&o);
    o.data_dir = dir;
    struct store *s;
    char err[256];
    int rc = store_open(&o, &s, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "store_open: %s\n", err);
        return 1;
    }
    uint64_t base = store_applied_index(s);

    /* Applied puts. */
    double t0 = now_s();
    for (uint64_t i = 1; i <= n; i++) {
        void *buf;
        size_t len;
        struct store_result *res;
        if (encode_put(i, i, &buf, &len) != 0 || store_apply(s, base + i, buf, len, &res) != 0) {
            fprintf(stderr, "apply failed\n");
            return 1;
        }
        store_result_free(res);
        free(buf);
    }
    double t1 = now_s();
    printf("puts (apply, unsynced):        %10.0f /s  (%llu ops)\n", (double)n / (t1 - t0),
           (unsigned long long)n);

    /* Raft log appends, synced: one per write, then 64 per write. */
    struct raft_storage *rs = store_raft_storage(s);
    uint64_t last;
    rs->last_index(rs->data, &last);
    uint64_t n_sync = n / 20 > 0 ? n / 20 : 1;
    char data[256];
    memset(data, 'd', sizeof(data));
    t0 = now_s();
    for (uint64_t i = 0; i < n_sync; i++) {
        struct raft_entry e = {1, last + 1 + i, RAFT_ENTRY_NORMAL, {data, sizeof(data)}};
        if (store_raft_save(s, NULL, &e, 1, true) != 0) return 1;
    }
    t1 = now_s();
    printf("raft appends (1/fsync):        %10.0f /s  (%llu ops)\n", (double)n_sync / (t1 - t0),
           (unsigned long long)n_sync);
    last += n_sync;
    struct raft_entry batch[64];
    t0 = now_s();
    for (uint64_t i = 0; i < n_sync; i++) {
        for (int j = 0; j < 64; j++) {
            batch[j].term = 1;
            batch[j].index = last + 1 + i * 64 + (uint64_t)j;
            batch[j].type = RAFT_ENTRY_NORMAL;
            batch[j].data.base = data;
            batch[j].data.len = sizeof(data);
        }
        if (store_raft_save(s, NULL, batch, 64, true) != 0) return 1;
    }
    t1 = now_s();
    printf("raft appends (64/fsync):       %10.0f /s  (%llu ops)\n",
           (double)(n_sync * 64) / (t1 - t0), (unsigned long long)(n_sync * 64));

    /* Gets. */
    t0 = now_s();
    for (uint64_t i = 1; i <= n; i++) {
        char key[32];
        snprintf(key, sizeof(key), "/bench/%08llu", (unsigned long long)((i * 7) % n % 100000));
        struct store_range_result r;
        if (store_get(s, key, strlen(key), 0, &r) != 0) return 1;
        store_range_result_release(&r);
    }
    t1 = now_s();
    printf("ranges (single key):           %10.0f /s\n", (double)n / (t1 - t0));

    /* Prefix pages of 100 keys. */
    uint64_t pages = n / 100 > 0 ? n / 100 : 1;
    t0 = now_s();
    for (uint64_t i = 0; i < pages; i++) {
        char key[32];
        snprintf(key, sizeof(key), "/bench/%08llu", (unsigned long long)((i * 100) % n));
        struct store_range_req q;
        memset(&q, 0, sizeof(q));
        q.key.base = key;
        q.key.len = strlen(key);
        q.range_end.base = "/bench0";
        q.range_end.len = 7;
        q.limit = 100;
        q.skip_count = true;
        struct store_range_result r;
        if (store_range(s, &q, &r) != 0) return 1;
        store_range_result_release(&r);
    }
    t1 = now_s();
    printf("ranges (100-key pages):        %10.0f /s\n", (double)pages / (t1 - t0));

    /* Reads at an old revision (one or two seeks per key). */
    int64_t old = store_current_revision(s) - (int64_t)n / 2;
    t0 = now_s();
    for (uint64_t i = 1; i <= n; i++) {
        char key[32];
        snprintf(key, sizeof(key), "/bench/%08llu", (unsigned long long)((i * 7) % n % 100000));
        struct store_range_result r;
        if (store_get(s, key, strlen(key), old, &r) != 0) return 1;
        store_range_result_release(&r);
    }
    t1 = now_s();
    printf("ranges (single key, old rev):  %10.0f /s\n", (double)n / (t1 - t0));

    uint64_t bytes = 0;
    store_db_size(s, &bytes);
    printf("db size:                       %10.1f MiB\n", (double)bytes / (1024.0 * 1024.0));
    store_close(s);
    if (argc <= 2 && nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return 0;
}
