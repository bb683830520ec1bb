/*
 * test_etcd_services.c - the etcd services end to end through the real
 * gRPC transport and the real store, driven by etcdctl, over a stand-in for
 * the node loop: a single member that applies every submitted request on
 * the next loop turn (no Raft), records it in the store's Raft log as the
 * node does, and calls the apply and leader hooks as node.c does. This
 * exercises server/etcd_*.c without the peer layer; the product is tested
 * end to end by tests/bats/30_etcd*.bats.
 *
 * The stand-in defines every node__ function the services call, so the
 * linker never pulls server/node.c into this executable.
 *
 * Skipped (and passing) when etcdctl is not installed. Servers bind
 * 127.0.0.1 on an ephemeral port; data lives in a fresh /tmp directory
 * removed at the end of each test.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "server/etcd.h"
#include "server/server.h"
#include "tests/harness.h"

#define FAKE_MEMBER_ID UINT64_C(0x8e9e05c52164694d)
#define FAKE_CLUSTER_ID UINT64_C(0x10fa1fb4b5d02f90)
/* Bound on one etcdctl run (the `timeout` command enforces it). */
#define ETCDCTL_TIMEOUT_S 30

/* ------------------------------------------------------------ the stand-in */

struct pending {
    struct pending *next;
    void *data; /* NULL: a read barrier */
    size_t len;
    node_done_cb done;
    node_barrier_cb barrier;
    void *arg;
};

struct node {
    uv_loop_t loop;
    struct server_config cfg;
    struct store *store;
    uint64_t index;
    uint64_t next_id;
    struct pending *head, *tail;
    uv_timer_t apply_timer;
    uv_async_t stop;
    node_apply_hook apply_hook;
    node_leader_hook leader_hook;
    void *hook_ctx;
    struct api_server *api;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu; /* port and cv: handing the port to the test thread */
    pthread_cond_t cv;
    int port; /* 0 until the services started, -1 if they did not */
};

static void enqueue(struct node *n, struct pending *p);

int node__submit(struct node *n, struct store_request *req, enum node_origin origin,
                 node_done_cb cb, void *arg) {
    (void)origin;
    req->id = ++n->next_id;
    struct pending *p = calloc(1, sizeof *p);
    if (!p) return -ENOMEM;
    int rc = store_request_encode_alloc(req, &p->data, &p->len);
    if (rc == 0) rc = store_request_check(n->store, p->data, p->len);
    if (rc) {
        free(p->data);
        free(p);
        return rc;
    }
    p->done = cb;
    p->arg = arg;
    enqueue(n, p);
    return 0;
}

int node__read_barrier(struct node *n, node_barrier_cb cb, void *arg) {
    struct pending *p = calloc(1, sizeof *p);
    if (!p) return -ENOMEM;
    p->barrier = cb;
    p->arg = arg;
    enqueue(n, p);
    return 0;
}

struct store *node__store_acquire(struct node *n) {
    return n->store;
}
void node__store_release(struct node *n) {
    (void)n;
}
uv_loop_t *node__loop(struct node *n) {
    return &n->loop;
}
const struct server_config *node__config(struct node *n) {
    return &n->cfg;
}
int node__errno(int rc) {
    return rc;
}

void node__set_restore_hook(struct node *n, node_restore_hook restore, void *ctx) {
    (void)n; /* the stand-in installs no snapshots */
    (void)restore;
    (void)ctx;
}
void node__set_hooks(struct node *n, node_apply_hook apply, node_leader_hook leader, void *ctx) {
    n->apply_hook = apply;
    n->leader_hook = leader;
    n->hook_ctx = ctx;
}

void node__status(struct node *n, struct node_status *st) {
    memset(st, 0, sizeof *st);
    st->id = FAKE_MEMBER_ID;
    st->leader = FAKE_MEMBER_ID;
    st->term = 2;
    st->commit = st->applied = n->index;
    st->cluster_id = FAKE_CLUSTER_ID;
    st->n_members = 1;
    st->members[0].id = FAKE_MEMBER_ID;
    snprintf(st->members[0].name, sizeof st->members[0].name, "default");
    snprintf(st->members[0].peer_urls, sizeof st->members[0].peer_urls, "http://127.0.0.1:2380");
    snprintf(st->members[0].client_urls, sizeof st->members[0].client_urls, "%.200s",
             n->cfg.listen_client_urls);
}

int node__member_change(struct node *n, int type, struct node_member *m, node_barrier_cb cb,
                        void *arg) {
    (void)n, (void)type, (void)m, (void)cb, (void)arg;
    return -EBUSY; /* a one-member stand-in does not change */
}

int node__transfer_leader(struct node *n, uint64_t to, node_barrier_cb cb, void *arg) {
    (void)n;
    if (to != FAKE_MEMBER_ID) return -ENOENT;
    cb(arg, 0);
    return 0;
}

/* Applies one encoded request as node.c does: log it, apply it, hook, answer. */
static int apply_one(struct node *n, const void *data, size_t len, node_done_cb cb, void *arg) {
    n->index++;
    struct raft_entry e = {.term = 2,
                           .index = n->index,
                           .type = RAFT_ENTRY_NORMAL,
                           .data = {data, len}};
    int rc = store_raft_save(n->store, NULL, &e, 1, false);
    struct store_result *res = NULL;
    if (rc == 0) rc = store_apply(n->store, n->index, data, len, &res);
    if (rc) return rc;
    if (n->apply_hook) n->apply_hook(n->hook_ctx, res);
    if (cb) cb(arg, res->err, res);
    store_result_free(res);
    return 0;
}

static void apply_cb(uv_timer_t *t) {
    struct node *n = t->data;
    struct pending *p = n->head;
    n->head = n->tail = NULL;
    while (p) {
        struct pending *next = p->next;
        if (p->data) {
            int rc = apply_one(n, p->data, p->len, p->done, p->arg);
            if (rc) p->done(p->arg, rc, NULL);
            free(p->data);
        } else {
            p->barrier(p->arg, 0);
        }
        free(p);
        p = next;
    }
}

static void enqueue(struct node *n, struct pending *p) {
    if (n->tail)
        n->tail->next = p;
    else
        n->head = p;
    n->tail = p;
    uv_timer_start(&n->apply_timer, apply_cb, 0, 0);
}

static void stop_cb(uv_async_t *a) {
    struct node *n = a->data;
    etcd__stop(n->api);
    n->api = NULL;
    uv_close((uv_handle_t *)&n->stop, NULL);
    /* Pending work still gets answered before the timer goes. */
    apply_cb(&n->apply_timer);
    uv_close((uv_handle_t *)&n->apply_timer, NULL);
}

/* The loop thread: the services start on it (the transport checks that
 * every call comes from the thread that created the server). */
static void *loop_main(void *arg) {
    struct node *n = arg;
    int rc = etcd__start(n, &n->api);
    pthread_mutex_lock(&n->mu);
    n->port = rc == 0 ? api_server_port(n->api, 0) : -1;
    pthread_cond_signal(&n->cv);
    pthread_mutex_unlock(&n->mu);
    if (rc != 0) {
        uv_close((uv_handle_t *)&n->stop, NULL);
        uv_close((uv_handle_t *)&n->apply_timer, NULL);
    }
    uv_run(&n->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* ------------------------------------------------------------ fixture */

static char etcdctl_path[512];

static bool have_etcdctl(void) {
    if (etcdctl_path[0]) return true;
    FILE *f = popen("command -v etcdctl 2>/dev/null", "r");
    if (!f) return false;
    if (!fgets(etcdctl_path, sizeof etcdctl_path, f)) etcdctl_path[0] = '\0';
    pclose(f);
    etcdctl_path[strcspn(etcdctl_path, "\n")] = '\0';
    if (!etcdctl_path[0]) printf("  (etcdctl not installed: skipped)\n");
    return etcdctl_path[0] != '\0';
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

struct fixture {
    struct node *n;
    char dir[256];
    int port;
};

/* Opens a store in a fresh directory with `prefill` keys "p/NNNNN" already
 * written (one revision each), and starts the services on an ephemeral port. */
static int fixture_start(struct fixture *f, int prefill) {
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/qfs-etcd-test-XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    struct node *n = calloc(1, sizeof *n);
    if (!n) return -1;
    f->n = n;
    char *argv[] = {"quorumfs",           "--data-dir", f->dir, "--listen-client-urls",
                    "http://127.0.0.1:0", NULL};
    char err[256];
    if (server_config_parse(&n->cfg, 5, argv, err, sizeof err) != 0) return -1;
    char db[300];
    snprintf(db, sizeof db, "%s/db", f->dir);
    struct store_options opt;
    store_options_init(&opt);
    opt.data_dir = db;
    if (store_open(&opt, &n->store, err, sizeof err) != 0) return -1;
    struct raft_conf_state cs = {.n_voters = 1, .voters = {FAKE_MEMBER_ID}};
    if (store_raft_bootstrap(n->store, &cs) != 0) return -1;
    n->index = store_applied_index(n->store); /* the log starts after the bootstrap */
    for (int i = 0; i < prefill; i++) {
        char key[32], val[32];
        snprintf(key, sizeof key, "p/%05d", i);
        snprintf(val, sizeof val, "v%d", i);
        struct store_op op = {.type = STORE_OP_PUT};
        op.u.put.key = (struct store_bytes){key, strlen(key)};
        op.u.put.value = (struct store_bytes){val, strlen(val)};
        struct store_request req = {.type = STORE_REQ_TXN, .id = 0};
        req.u.txn.n_success = 1;
        req.u.txn.success = &op;
        void *buf;
        size_t len;
        if (store_request_encode_alloc(&req, &buf, &len) != 0) return -1;
        int rc = apply_one(n, buf, len, NULL, NULL);
        free(buf);
        if (rc) return -1;
    }
    if (uv_loop_init(&n->loop) != 0) return -1;
    uv_timer_init(&n->loop, &n->apply_timer);
    n->apply_timer.data = n;
    uv_async_init(&n->loop, &n->stop, stop_cb);
    n->stop.data = n;
    pthread_mutex_init(&n->mu, NULL);
    pthread_cond_init(&n->cv, NULL);
    if (pthread_create(&n->thread, NULL, loop_main, n) != 0) return -1;
    n->thread_started = true;
    pthread_mutex_lock(&n->mu);
    while (n->port == 0) pthread_cond_wait(&n->cv, &n->mu);
    f->port = n->port;
    pthread_mutex_unlock(&n->mu);
    return f->port > 0 ? 0 : -1;
}

static void fixture_stop(struct fixture *f) {
    struct node *n = f->n;
    if (n) {
        if (n->thread_started) {
            if (n->port > 0) uv_async_send(&n->stop);
            pthread_join(n->thread, NULL);
            uv_loop_close(&n->loop);
            pthread_cond_destroy(&n->cv);
            pthread_mutex_destroy(&n->mu);
        }
        store_close(n->store);
        free(n);
    }
    if (f->dir[0]) nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Runs etcdctl with the given arguments (a shell fragment) against the
 * fixture; returns its output (stdout and stderr; free it) and its exit
 * status in *status. */
static char *ctl(const struct fixture *f, int *status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static char *ctl(const struct fixture *f, int *status, const char *fmt, ...) {
    char args[4096], cmd[5000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "ETCDCTL_API=3 timeout %d %s --endpoints=http://127.0.0.1:%d %s 2>&1",
             ETCDCTL_TIMEOUT_S, etcdctl_path, f->port, args);
    FILE *p = popen(cmd, "r");
    if (!p) return NULL;
    size_t cap = 4096, len = 0;
    char *out = malloc(cap);
    for (;;) {
        if (len + 1024 > cap) {
            char *o2 = realloc(out, cap *= 2);
            if (!o2) break;
            out = o2;
        }
        size_t k = fread(out + len, 1, cap - len - 1, p);
        if (k == 0) break;
        len += k;
    }
    out[len] = '\0';
    int st = pclose(p);
    if (status) *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return out;
}

static char *read_file(const char *path) {
    FILE *fp = fopen(path, "r");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = malloc((size_t)(n > 0 ? n : 0) + 1);
    size_t k = buf ? fread(buf, 1, (size_t)(n > 0 ? n : 0), fp) : 0;
    if (buf) buf[k] = '\0';
    fclose(fp);
    return buf;
}

static size_t count_lines(const char *s) {
    size_t n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

#define START(f, prefill)                                                                          \
    do {                                                                                           \
        if (fixture_start((f), (prefill)) != 0) {                                                  \
            fixture_stop(f);                                                                       \
            ASSERT(!"fixture did not start");                                                      \
        }                                                                                          \
    } while (0)

#define SKIP_WITHOUT_ETCDCTL()                                                                     \
    do {                                                                                           \
        if (!have_etcdctl()) return;                                                               \
    } while (0)

/* ------------------------------------------------------------ tests */

TEST(kv_put_get_txn_delete) {
    SKIP_WITHOUT_ETCDCTL();
    struct fixture f;
    int st;
    char *out = NULL;
    START(&f, 0);
    out = ctl(&f, &st, "put foo bar");
    if (!out || st != 0 || strcmp(out, "OK\n") != 0) goto fail;
    free(out);
    out = ctl(&f, &st, "get foo");
    if (!out || strcmp(out, "foo\nbar\n") != 0) goto fail;
    free(out);
    out = ctl(&f, &st, "put foo baz --prev-kv");
    if (!out || strcmp(out, "OK\nfoo\nbar\n") != 0) goto fail;
    free(out);
    char txn_in[300];
    snprintf(txn_in, sizeof txn_in, "%s/txn.in", f.dir);
    FILE *fp = fopen(txn_in, "w");
    if (fp) {
        fputs("value(\"foo\") = \"baz\"\n\nput foo qux\n\nget foo\n\n", fp);
        fclose(fp);
    }
    out = ctl(&f, &st, "txn <%s", txn_in);
    if (!out || strcmp(out, "SUCCESS\n\nOK\n") != 0) goto fail;
    free(out);
    out = ctl(&f, &st, "get foo -w json");
    if (!out || !strstr(out, "\"revision\":4") || !strstr(out, "\"version\":3")) goto fail;
    free(out);
    out = ctl(&f, &st, "del foo");
    if (!out || strcmp(out, "1\n") != 0) goto fail;
    free(out);
    out = ctl(&f, &st, "get foo --rev=99");
    if (!out || st == 0 || !strstr(out, "etcdserver: mvcc: required revision is a future revision"))
        goto fail;
    free(out);
    out = ctl(&f, &st, "put k v --lease=1234");
    if (!out || st == 0 || !strstr(out, "etcdserver: requested lease not found")) goto fail;
    free(out);
    fixture_stop(&f);
    return;
fail:
    printf("  output: %s\n", out ? out : "(none)");
    free(out);
    fixture_stop(&f);
    ASSERT(!"unexpected etcdctl output");
}

TEST(watch_replays_history_in_batches) {
    SKIP_WITHOUT_ETCDCTL();
    struct fixture f;
    int st;
    /* More history than one catch-up batch (ETCD_WATCH_BATCH_EVENTS). */
    const int n_keys = 2500;
    START(&f, n_keys);
    /* etcdctl watch never exits by itself: it runs in the background
     * while the output file is polled (with a deadline) for every event. */
    char file[300];
    snprintf(file, sizeof file, "%s/watch.out", f.dir);
    char *out = ctl(&f, &st, "watch --rev=1 --prefix p/ >%s 2>&1 & echo $!", file);
    long pid = out ? strtol(out, NULL, 10) : 0;
    free(out);
    out = NULL;
    time_t deadline = time(NULL) + 20;
    size_t want = (size_t)n_keys * 3;
    while (pid > 0 && time(NULL) < deadline) {
        free(out);
        out = read_file(file);
        if (out && count_lines(out) >= want) break;
        usleep(50 * 1000);
    }
    if (pid > 0) kill((pid_t)pid, SIGTERM);
    bool ok = out && count_lines(out) == want && strstr(out, "PUT\np/00000\nv0\n") &&
              strstr(out, "PUT\np/02499\nv2499\n");
    if (!ok) printf("  got %zu lines: %.300s\n", out ? count_lines(out) : 0, out ? out : "");
    free(out);
    fixture_stop(&f);
    ASSERT(ok);
}

TEST(watch_compacted_revision_is_canceled) {
    SKIP_WITHOUT_ETCDCTL();
    struct fixture f;
    int st;
    START(&f, 5);
    char *out = ctl(&f, &st, "compaction 4");
    bool ok = out && strstr(out, "compacted revision 4");
    free(out);
    out = ctl(&f, &st, "watch --rev=2 p/00001");
    ok = ok && out &&
         strstr(out, "watch was canceled (etcdserver: mvcc: required revision has been compacted)");
    if (!ok) printf("  output: %s\n", out ? out : "(none)");
    free(out);
    fixture_stop(&f);
    ASSERT(ok);
}

TEST(lease_expiry_deletes_attached_keys) {
    SKIP_WITHOUT_ETCDCTL();
    struct fixture f;
    int st;
    START(&f, 0);
    char *out = ctl(&f, &st, "lease grant 1");
    char id[32] = "";
    /* etcd raises a 1 s TTL to its minimum (2 s with default timing). */
    bool ok = out && sscanf(out, "lease %31s granted with TTL(2s)", id) == 1;
    free(out);
    out = ok ? ctl(&f, &st, "put --lease=%s lk v", id) : NULL;
    ok = ok && out && strcmp(out, "OK\n") == 0;
    free(out);
    out = ok ? ctl(&f, &st, "lease keep-alive --once %s", id) : NULL;
    ok = ok && out && strstr(out, "keepalived with TTL(2)");
    free(out);
    out = ok ? ctl(&f, &st, "lease timetolive --keys %s", id) : NULL;
    ok = ok && out && strstr(out, "attached keys([lk])");
    free(out);
    /* Gone within a few seconds: poll with a deadline. */
    bool gone = false;
    time_t deadline = time(NULL) + 10;
    while (ok && !gone && time(NULL) < deadline) {
        out = ctl(&f, &st, "get lk --print-value-only");
        gone = out && st == 0 && out[0] == '\0';
        free(out);
    }
    out = ok ? ctl(&f, &st, "lease timetolive %s", id) : NULL;
    bool expired = out && strstr(out, "already expired");
    free(out);
    fixture_stop(&f);
    ASSERT(ok);
    ASSERT(gone);
    ASSERT(expired);
}

TEST(snapshot_save_and_restore) {
    SKIP_WITHOUT_ETCDCTL();
    struct fixture f;
    int st;
    START(&f, 300);
    char file[300], restored[300];
    snprintf(file, sizeof file, "%s/snap.db", f.dir);
    snprintf(restored, sizeof restored, "%s/restored", f.dir);
    char *out = ctl(&f, &st, "snapshot save %s", file);
    bool ok = out && st == 0 && strstr(out, "Snapshot saved at");
    if (!ok) printf("  output: %s\n", out ? out : "(none)");
    free(out);
    /* Restore into a new data directory and read a key back. */
    char err[256] = "";
    int rc = ok ? etcd__snapshot_restore(file, restored, err, sizeof err) : -1;
    if (rc) printf("  restore: %s\n", err);
    struct store *s = NULL;
    struct store_range_result r = {0};
    if (rc == 0) {
        char db[320];
        snprintf(db, sizeof db, "%s/db", restored);
        struct store_options opt;
        store_options_init(&opt);
        opt.data_dir = db;
        rc = store_open(&opt, &s, err, sizeof err);
    }
    if (rc == 0) rc = store_get(s, "p/00299", 7, 0, &r);
    bool found = rc == 0 && r.n_kvs == 1 && r.kvs[0].value.len == 4 &&
                 memcmp(r.kvs[0].value.base, "v299", 4) == 0;
    int64_t rev = s ? store_current_revision(s) : 0;
    store_range_result_release(&r);
    store_close(s);
    /* A damaged file is refused. */
    FILE *fp = fopen(file, "r+");
    if (fp) {
        fseek(fp, 600, SEEK_SET);
        fputc('X', fp);
        fclose(fp);
    }
    char again[320];
    snprintf(again, sizeof again, "%s/again", f.dir);
    int bad = etcd__snapshot_restore(file, again, err, sizeof err);
    fixture_stop(&f);
    ASSERT(ok);
    ASSERT_EQ(rc, 0);
    ASSERT(found);
    ASSERT_EQ(rev, 301);
    ASSERT_EQ(bad, -1);
}

TEST(maintenance_and_cluster) {
    SKIP_WITHOUT_ETCDCTL();
    struct fixture f;
    int st;
    START(&f, 3);
    char *out = ctl(&f, &st, "member list");
    bool ok = out && strstr(out, "8e9e05c52164694d, started, default, http://127.0.0.1:2380");
    if (!ok) printf("  member list: %s\n", out ? out : "(none)");
    free(out);
    out = ctl(&f, &st, "alarm list");
    ok = ok && out && out[0] == '\0';
    free(out);
    out = ctl(&f, &st, "lock mylock echo locked");
    ok = ok && out && strcmp(out, "locked\n") == 0;
    if (!ok) printf("  lock: %s\n", out ? out : "(none)");
    free(out);
    out = ctl(&f, &st, "member remove 1234");
    ok = ok && out && strstr(out, "etcdserver: member not found");
    free(out);
    fixture_stop(&f);
    ASSERT(ok);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
