/*
 * test_store_crash.c - crash safety.
 *
 * 1. Fault injection on the in-memory database: a node-like driver persists
 *    entries (synced, as Raft requires) and applies them, while the Nth
 *    write fails and power losses drop unsynced writes at random points.
 *    After every crash the store is reopened and the driver replays from
 *    its Raft log. Checked: every acknowledged (synced) entry survived; the
 *    state at the recovered applied index equals, hash for hash, the state a
 *    fault-free store had at that index (nothing half-applied); a failed
 *    write leaves the open store exactly as it was; the end state equals
 *    the fault-free one.
 *
 * 2. kill -9 on RocksDB: a child process (this binary re-executed with
 *    --crash-child) appends and applies entries, each a put of a new key,
 *    and reports every synced entry on a pipe; the parent kills it at a
 *    random moment, reopens the store and checks that the applied index
 *    and the revision agree, every entry up to the applied index is
 *    visible and none after it, no acknowledged entry is lost, and that
 *    replaying the log completes the state. Several rounds on one store.
 */
#include "tests/unit/store/store_test.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

/* ---------------------------------------------------------------- entries */

struct entry {
    void *data; /* encoded request; NULL = empty entry (apply_noop) */
    size_t len;
};

static const char *const KEYS[] = {"a", "b", "c", "d", "d/1", "d/2", "e", "f"};
#define NK (sizeof(KEYS) / sizeof(KEYS[0]))

static void gen_entry(uint64_t *rng, int64_t rev_hint, struct entry *e) {
    struct store_request r;
    memset(&r, 0, sizeof(r));
    r.id = t_rand(rng);
    uint64_t k = t_below(rng, 100);
    struct store_op ops[3];
    struct store_compare c;
    char val[32];
    snprintf(val, sizeof(val), "v%llu", (unsigned long long)t_below(rng, 1000));
    if (k < 5) {
        e->data = NULL;
        e->len = 0;
        return;
    } else if (k < 50) {
        ops[0] = t_op_put(KEYS[t_below(rng, NK)], val);
        ops[0].u.put.lease = t_below(rng, 4) == 0 ? 1 + (int64_t)t_below(rng, 3) : 0;
        r = t_txn(NULL, 0, ops, 1, NULL, 0);
    } else if (k < 65) {
        const char *a = KEYS[t_below(rng, NK)];
        ops[0] = t_op_del(a, t_below(rng, 2) ? NULL : KEYS[t_below(rng, NK)]);
        r = t_txn(NULL, 0, ops, 1, NULL, 0);
    } else if (k < 85) {
        memset(&c, 0, sizeof(c));
        c.target = STORE_CMP_VERSION;
        c.result = (uint8_t)t_below(rng, 4);
        c.key = t_str(KEYS[t_below(rng, NK)]);
        c.number = (int64_t)t_below(rng, 3);
        size_t a = t_below(rng, NK), b = (a + 1 + t_below(rng, NK - 1)) % NK;
        ops[0] = t_op_put(KEYS[a], val);
        ops[1] = t_op_put(KEYS[b], val);
        ops[2] = t_op_del(KEYS[t_below(rng, NK)], NULL);
        r = t_txn(&c, 1, ops, 2, &ops[2], 1);
    } else if (k < 90) {
        r.type = STORE_REQ_LEASE_GRANT;
        r.u.lease_grant.id = 1 + (int64_t)t_below(rng, 3);
        r.u.lease_grant.ttl = 10;
    } else if (k < 95) {
        r.type = STORE_REQ_LEASE_REVOKE;
        r.u.lease_revoke.id = 1 + (int64_t)t_below(rng, 3);
    } else {
        r.type = STORE_REQ_COMPACT;
        r.u.compact.revision = rev_hint > 3 ? rev_hint - (int64_t)t_below(rng, 3) : 1;
    }
    if (store_request_encode_alloc(&r, &e->data, &e->len) != 0) abort();
}

static int apply_entry(struct store *s, uint64_t index, const void *data, size_t len) {
    if (len == 0) return store_apply_noop(s, index);
    struct store_result *res = NULL;
    int rc = store_apply(s, index, data, len, &res);
    store_result_free(res);
    return rc;
}

/* ---------------------------------------------------------------- faults */

struct snapshot_rec {
    int64_t rev;
    int64_t compact;
    uint32_t hash;
    uint64_t logical;
    uint64_t n_leases;
};

static int record(struct store *s, struct snapshot_rec *r) {
    struct store_status st;
    int rc = store_status(s, &st);
    if (rc == 0) rc = store_hash(s, 0, &r->hash, NULL);
    r->rev = st.revision;
    r->compact = st.compact_revision;
    r->logical = st.logical_bytes;
    r->n_leases = st.n_leases;
    return rc;
}

static bool same(const struct snapshot_rec *a, const struct snapshot_rec *b) {
    return a->rev == b->rev && a->compact == b->compact && a->hash == b->hash &&
           a->logical == b->logical && a->n_leases == b->n_leases;
}

#define N_ENTRIES 600

static bool fault_run(uint64_t seed) {
    uint64_t rng = seed * 0x9E3779B97F4A7C15ull + 7;
    struct entry *E = calloc(N_ENTRIES + 1, sizeof(*E));
    struct snapshot_rec *want = calloc(N_ENTRIES + 1, sizeof(*want));
    bool ok = false;
    struct t_store ref, sut;
    memset(&sut, 0, sizeof(sut));
    /* The fault-free reference, recording the state after each index. */
    if (t_store_open(&ref, false, 0) != 0) goto out;
    if (record(ref.s, &want[0]) != 0) goto out;
    for (uint64_t i = 1; i <= N_ENTRIES; i++) {
        gen_entry(&rng, store_current_revision(ref.s), &E[i]);
        if (apply_entry(ref.s, i, E[i].data, E[i].len) != 0) goto out;
        if (record(ref.s, &want[i]) != 0) goto out;
    }

    if (t_store_open(&sut, false, 0) != 0) goto out;
    uint64_t acked = 0, crashes = 0, failures = 0;
    int guard = 0;
    while (store_applied_index(sut.s) < N_ENTRIES) {
        if (++guard > 100000) {
            fprintf(stderr, "  no progress\n");
            goto out;
        }
        struct raft_storage *rs = store_raft_storage(sut.s);
        uint64_t applied = store_applied_index(sut.s), last;
        rs->last_index(rs->data, &last);
        if (t_below(&rng, 40) == 0) store_memdb_fail_write(sut.memdb, 1 + t_below(&rng, 8));
        int rc = 0;
        uint64_t i = applied + 1;
        if (last < i) {
            /* Persist a group of entries in one synced write. */
            size_t n = 1 + t_below(&rng, 4);
            if (i + n - 1 > N_ENTRIES) n = N_ENTRIES - i + 1;
            struct raft_entry re[4];
            for (size_t j = 0; j < n; j++) {
                memset(&re[j], 0, sizeof(re[j]));
                re[j].index = i + j;
                re[j].term = 1;
                re[j].data.base = E[i + j].data;
                re[j].data.len = E[i + j].len;
            }
            struct raft_hard_state hs = {1, 1, i + n - 1};
            rc = store_raft_save(sut.s, &hs, re, n, true);
            if (rc == 0) acked = i + n - 1;
            uint64_t last_now;
            rs->last_index(rs->data, &last_now);
            if (rc != 0 && last_now != last) {
                fprintf(stderr, "  log moved after a failed save\n");
                goto out;
            }
        }
        if (rc == 0) {
            /* Apply from the log, as a restarted node does. */
            struct raft_entry *got;
            size_t n;
            rc = rs->entries(rs->data, i, i + 1, UINT64_MAX, &got, &n);
            if (rc != 0 || n != 1 || got[0].data.len != E[i].len ||
                (E[i].len && memcmp(got[0].data.base, E[i].data, E[i].len) != 0)) {
                fprintf(stderr, "  log entry %llu differs (rc %d)\n", (unsigned long long)i, rc);
                goto out;
            }
            int64_t rev_before = store_current_revision(sut.s);
            rc = apply_entry(sut.s, i, got[0].data.base, got[0].data.len);
            free((void *)got[0].data.base);
            free(got);
            if (rc != 0) {
                /* A failed apply leaves the open store as it was. */
                failures++;
                struct snapshot_rec now;
                if (store_applied_index(sut.s) != applied ||
                    store_current_revision(sut.s) != rev_before || record(sut.s, &now) != 0 ||
                    !same(&now, &want[applied])) {
                    fprintf(stderr, "  state moved after a failed apply at %llu\n",
                            (unsigned long long)i);
                    goto out;
                }
                if (t_below(&rng, 2)) continue; /* retry in place */
            }
        } else {
            failures++;
        }
        if (rc != 0 || t_below(&rng, 25) == 0) {
            /* Power loss: keep a random prefix of the unsynced writes. */
            crashes++;
            store_close(sut.s);
            sut.s = NULL;
            uint64_t uns = store_memdb_unsynced(sut.memdb);
            store_memdb_crash(sut.memdb, t_below(&rng, uns + 1));
            store_memdb_fail_write(sut.memdb, 0);
            if (t_store_reopen(&sut) != 0) goto out;
            rs = store_raft_storage(sut.s);
            rs->last_index(rs->data, &last);
            uint64_t a = store_applied_index(sut.s);
            struct snapshot_rec now;
            if (last < acked || a > last || record(sut.s, &now) != 0 || !same(&now, &want[a])) {
                fprintf(stderr,
                        "  after crash: last %llu acked %llu applied %llu rev %lld want %lld\n",
                        (unsigned long long)last, (unsigned long long)acked, (unsigned long long)a,
                        (long long)now.rev, (long long)want[a].rev);
                goto out;
            }
            if (a > 50 && t_below(&rng, 3) == 0 && store_raft_compact(sut.s, a - 20) != 0) goto out;
        }
    }
    struct snapshot_rec fin;
    if (record(sut.s, &fin) != 0 || !same(&fin, &want[N_ENTRIES])) {
        fprintf(stderr, "  final state differs\n");
        goto out;
    }
    if (crashes < 5 || failures < 3) {
        fprintf(stderr, "  too few faults (%llu crashes, %llu failures)\n",
                (unsigned long long)crashes, (unsigned long long)failures);
        goto out;
    }
    ok = true;
out:
    if (!ok) fprintf(stderr, "  fault run failed: --seed %llu\n", (unsigned long long)seed);
    t_store_close(&sut);
    t_store_close(&ref);
    for (int i = 0; i <= N_ENTRIES; i++) free(E[i].data);
    free(E);
    free(want);
    t_free_all();
    return ok;
}

TEST(fault_injection_replay) {
    for (uint64_t i = 0; i < 3; i++) ASSERT(fault_run(harness_seed + i));
}

/* ---------------------------------------------------------------- kill -9 */

/* Entry i of the kill test: put "k<i>" = value of length (i * 7919) % 3000. */
static size_t kill_value(uint64_t i, char *buf, size_t cap) {
    size_t n = (size_t)((i * 7919) % 3000);
    if (n > cap) n = cap;
    for (size_t j = 0; j < n; j++) buf[j] = (char)('a' + (i + j) % 26);
    return n;
}

static int kill_encode(uint64_t i, void **data, size_t *len) {
    char key[32], val[3000 + 1];
    snprintf(key, sizeof(key), "k%08llu", (unsigned long long)i);
    size_t n = kill_value(i, val, sizeof(val));
    val[n] = 0;
    struct store_op op = t_op_put(key, "");
    op.u.put.value = t_bytes(val, n);
    struct store_request r = t_txn(NULL, 0, &op, 1, NULL, 0);
    r.id = i;
    return store_request_encode_alloc(&r, data, len);
}

/* Replays (applied, last] from the log. */
static int replay(struct store *s) {
    struct raft_storage *rs = store_raft_storage(s);
    uint64_t last;
    rs->last_index(rs->data, &last);
    for (uint64_t i = store_applied_index(s) + 1; i <= last; i++) {
        struct raft_entry *e;
        size_t n;
        int rc = rs->entries(rs->data, i, i + 1, UINT64_MAX, &e, &n);
        if (rc != 0) return rc;
        rc = apply_entry(s, i, e[0].data.base, e[0].data.len);
        free((void *)e[0].data.base);
        free(e);
        if (rc != 0) return rc;
    }
    return 0;
}

static int child_main(const char *dir, int fd) {
    struct store_options o;
    store_options_init(&o);
    o.data_dir = dir;
    struct store *s;
    if (store_open(&o, &s, NULL, 0) != 0) return 2;
    if (replay(s) != 0) return 3;
    struct raft_storage *rs = store_raft_storage(s);
    for (;;) {
        uint64_t i;
        rs->last_index(rs->data, &i);
        i++;
        void *data;
        size_t len;
        if (kill_encode(i, &data, &len) != 0) return 4;
        struct raft_entry e = {0};
        e.index = i;
        e.term = 1;
        e.data.base = data;
        e.data.len = len;
        struct raft_hard_state hs = {1, 1, i};
        if (store_raft_save(s, &hs, &e, 1, true) != 0) return 5;
        if (write(fd, &i, sizeof(i)) != (ssize_t)sizeof(i)) return 6;
        if (apply_entry(s, i, data, len) != 0) return 7;
        free(data);
        if (i % 100 == 0 && store_raft_compact(s, i - 50) != 0) return 8;
    }
}

/* Checks the store at dir after a kill; *acked: highest reported entry. */
static bool kill_check(const char *dir, uint64_t acked, uint64_t *applied_out) {
    struct store_options o;
    store_options_init(&o);
    o.data_dir = dir;
    struct store *s;
    char err[256];
    if (store_open(&o, &s, err, sizeof(err)) != 0) {
        fprintf(stderr, "  reopen after kill: %s\n", err);
        return false;
    }
    bool ok = false;
    struct raft_storage *rs = store_raft_storage(s);
    uint64_t last, a = store_applied_index(s);
    rs->last_index(rs->data, &last);
    struct store_range_req q = {0};
    q.key = t_str("k");
    q.range_end = t_str("l");
    q.count_only = true;
    struct store_range_result r;
    char key[32], want[3000];
    if (last < acked || a > last) {
        fprintf(stderr, "  lost entries: last %llu acked %llu applied %llu\n",
                (unsigned long long)last, (unsigned long long)acked, (unsigned long long)a);
        goto out;
    }
    /* Applied index and revision agree; exactly entries 1..a are visible. */
    if (store_current_revision(s) != (int64_t)a + 1) goto bad;
    if (store_range(s, &q, &r) != 0) goto bad;
    int64_t count = r.count;
    store_range_result_release(&r);
    if (count != (int64_t)a) goto bad;
    if (a > 0) {
        snprintf(key, sizeof(key), "k%08llu", (unsigned long long)a);
        if (store_get(s, key, strlen(key), 0, &r) != 0) goto bad;
        size_t n = kill_value(a, want, sizeof(want));
        bool good = r.n_kvs == 1 && r.kvs[0].value.len == n &&
                    memcmp(r.kvs[0].value.base, want, n) == 0 &&
                    r.kvs[0].mod_revision == (int64_t)a + 1;
        store_range_result_release(&r);
        if (!good) goto bad;
    }
    /* Replay completes the state. */
    if (replay(s) != 0 || store_current_revision(s) != (int64_t)last + 1) goto bad;
    if (store_range(s, &q, &r) != 0) goto bad;
    count = r.count;
    store_range_result_release(&r);
    if (count != (int64_t)last) goto bad;
    *applied_out = last;
    ok = true;
    goto out;
bad:
    fprintf(stderr, "  inconsistent store after kill: applied %llu rev %lld last %llu\n",
            (unsigned long long)a, (long long)store_current_revision(s), (unsigned long long)last);
out:
    store_close(s);
    return ok;
}

static char self_path[4096];

TEST(kill9_rocksdb) {
    char *tmp = t_mkdtemp();
    char dir[4200];
    snprintf(dir, sizeof(dir), "%s/db", tmp);
    uint64_t rng = harness_seed ^ 0x5DEECE66Dull;
    uint64_t applied = 0;
    for (int round = 0; round < 4; round++) {
        int p[2];
        ASSERT_EQ(pipe(p), 0);
        pid_t pid = fork();
        ASSERT(pid >= 0);
        if (pid == 0) {
            close(p[0]);
            char fdarg[16];
            snprintf(fdarg, sizeof(fdarg), "%d", p[1]);
            execl(self_path, self_path, "--crash-child", dir, fdarg, (char *)NULL);
            _exit(127);
        }
        close(p[1]);
        /* Let the child run a random number of entries past where it starts,
         * then kill it, at whatever it is doing. */
        uint64_t target = applied + 20 + t_below(&rng, 300), acked = 0;
        bool child_ok = true;
        while (acked < target) {
            struct pollfd pf = {p[0], POLLIN, 0};
            int pr = poll(&pf, 1, 60000);
            uint64_t v;
            if (pr <= 0 || read(p[0], &v, sizeof(v)) != (ssize_t)sizeof(v)) {
                child_ok = false;
                break;
            }
            acked = v;
        }
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        /* Entries the child reported before dying count as acknowledged. */
        for (;;) {
            uint64_t v;
            if (read(p[0], &v, sizeof(v)) != (ssize_t)sizeof(v)) break;
            acked = v;
        }
        close(p[0]);
        if (!child_ok)
            fprintf(stderr, "  child stopped early: status %d\n",
                    WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        ASSERT(child_ok);
        ASSERT(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        ASSERT(kill_check(dir, acked, &applied));
        ASSERT_GE(applied, acked);
    }
    t_rmrf(tmp);
    free(tmp);
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "--crash-child") == 0)
        return child_main(argv[2], atoi(argv[3]));
    ssize_t n = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
    if (n <= 0) return 1;
    self_path[n] = 0;
    return harness_main(argc, argv);
}
