/*
 * etcd_fixture.h - a real etcd 3.4 (/usr/bin/etcd) per test group, and loop
 * helpers for tests of client/ (header only; static functions).
 *
 * Each etcd runs on 127.0.0.1 with free ports and its own mkdtemp data
 * directory. The child gets PR_SET_PDEATHSIG SIGKILL, so it dies with the
 * test even if the test crashes; an atexit handler kills every etcd still
 * running (by PID) and removes every directory, so a failing assertion,
 * which returns from the test early, leaves nothing behind. Readiness is
 * polled (a Range through a client of our own, with a deadline), never
 * waited for with a fixed sleep. Every wait here has a deadline.
 */
#ifndef QFS_TESTS_CLIENT_ETCD_FIXTURE_H
#define QFS_TESTS_CLIENT_ETCD_FIXTURE_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "client/client.h"

#define FIX_ETCDS_MAX 16
#define FIX_ARGS_MAX 48
#define FIX_LOG_LINES_MAX 256

static inline uint64_t fix_mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- temporary directories ------------------------------------------------------ */

static char fix_dirs[FIX_ETCDS_MAX * 2][64];
static int fix_n_dirs;

static inline int fix_rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static inline void fix_rm_rf(const char *dir) {
    nftw(dir, fix_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A new empty directory under /tmp, removed at exit. NULL on failure. */
static inline const char *fix_tmpdir(void) {
    if (fix_n_dirs >= FIX_ETCDS_MAX * 2) return NULL;
    char *d = fix_dirs[fix_n_dirs];
    snprintf(d, 64, "/tmp/qfs-client-test-XXXXXX");
    if (mkdtemp(d) == NULL) return NULL;
    fix_n_dirs++;
    return d;
}

/* ---- etcd processes --------------------------------------------------------------- */

struct etcd {
    pid_t pid;       /* 0 when not running */
    const char *dir; /* data, certificates and etcd.log live here */
    int port, peer_port;
    bool tls;
    char url[64]; /* client URL */
};

static struct etcd *fix_etcds[FIX_ETCDS_MAX];
static int fix_n_etcds;
static bool fix_atexit_set;

static inline void etcd_kill(struct etcd *e) {
    if (e->pid <= 0) return;
    kill(e->pid, SIGKILL);
    waitpid(e->pid, NULL, 0);
    e->pid = 0;
}

static inline void fix_cleanup(void) {
    for (int i = 0; i < fix_n_etcds; i++) etcd_kill(fix_etcds[i]);
    for (int i = 0; i < fix_n_dirs; i++) fix_rm_rf(fix_dirs[i]);
    fix_n_dirs = 0;
}

/* Two distinct free TCP ports on 127.0.0.1 (bound at once, then released). */
static inline int fix_free_ports(int *a, int *b) {
    int fds[2] = {-1, -1}, ports[2] = {0, 0}, rc = -1;
    for (int i = 0; i < 2; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (fds[i] < 0) goto out;
        struct sockaddr_in sa = {.sin_family = AF_INET};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof(sa);
        if (bind(fds[i], (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
            getsockname(fds[i], (struct sockaddr *)&sa, &len) != 0)
            goto out;
        ports[i] = ntohs(sa.sin_port);
    }
    *a = ports[0];
    if (b != NULL) *b = ports[1];
    rc = 0;
out:
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0) close(fds[i]);
    return rc;
}

/* Starts etcd with `extra` arguments (NULL-terminated, may be NULL). tls:
 * https client URL (extra must carry --cert-file/--key-file). Returns 0 or
 * -1; readiness is the caller's (etcd_wait_ready). */
static inline int etcd_start(struct etcd *e, bool tls, const char *const *extra) {
    memset(e, 0, sizeof(*e));
    if (!fix_atexit_set) {
        atexit(fix_cleanup);
        fix_atexit_set = true;
    }
    if (fix_n_etcds >= FIX_ETCDS_MAX) return -1;
    e->dir = fix_tmpdir();
    if (e->dir == NULL || fix_free_ports(&e->port, &e->peer_port) != 0) return -1;
    e->tls = tls;
    snprintf(e->url, sizeof(e->url), "%s://127.0.0.1:%d", tls ? "https" : "http", e->port);
    char data[128], peer[64], cluster[96], logf[128];
    snprintf(data, sizeof(data), "%s/data", e->dir);
    snprintf(peer, sizeof(peer), "http://127.0.0.1:%d", e->peer_port);
    snprintf(cluster, sizeof(cluster), "t=%s", peer);
    snprintf(logf, sizeof(logf), "%s/etcd.log", e->dir);
    const char *argv[FIX_ARGS_MAX];
    int n = 0;
    argv[n++] = "/usr/bin/etcd";
    argv[n++] = "--name=t";
    argv[n++] = "--data-dir";
    argv[n++] = data;
    argv[n++] = "--listen-client-urls";
    argv[n++] = e->url;
    argv[n++] = "--advertise-client-urls";
    argv[n++] = e->url;
    argv[n++] = "--listen-peer-urls";
    argv[n++] = peer;
    argv[n++] = "--initial-advertise-peer-urls";
    argv[n++] = peer;
    argv[n++] = "--initial-cluster";
    argv[n++] = cluster;
    argv[n++] = "--logger=zap";
    argv[n++] = "--log-outputs=stderr";
    argv[n++] = "--heartbeat-interval=50";
    argv[n++] = "--election-timeout=300";
    /* PINGs from clients with an open stream are fine every 100 ms. */
    argv[n++] = "--grpc-keepalive-min-time=100ms";
    for (int i = 0; extra != NULL && extra[i] != NULL && n < FIX_ARGS_MAX - 1; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(logf, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    e->pid = pid;
    fix_etcds[fix_n_etcds++] = e;
    return 0;
}

/* Stops etcd with SIGSTOP and waits (deadline 3 s) until every thread of
 * it is stopped: a thread inside a system call (an fsync) stops only when
 * the call returns, and until then etcd may still answer. Returns 0 once
 * all are stopped. */
static inline int etcd_stop(struct etcd *e) {
    if (kill(e->pid, SIGSTOP) != 0) return -1;
    char dir[64];
    snprintf(dir, sizeof(dir), "/proc/%d/task", (int)e->pid);
    uint64_t end = fix_mono_ms() + 3000;
    while (fix_mono_ms() < end) {
        DIR *d = opendir(dir);
        if (d == NULL) return -1;
        bool all = true;
        int n = 0;
        struct dirent *de;
        while ((de = readdir(d)) != NULL && all) {
            if (de->d_name[0] == '.') continue;
            char path[352], buf[512];
            snprintf(path, sizeof(path), "%s/%s/stat", dir, de->d_name);
            FILE *f = fopen(path, "r");
            if (f == NULL) continue;
            size_t got = fread(buf, 1, sizeof(buf) - 1, f);
            fclose(f);
            buf[got] = '\0';
            /* "pid (comm) S ...": the state follows the last ')'. */
            const char *p = strrchr(buf, ')');
            if (p == NULL || p[1] != ' ' || (p[2] != 'T' && p[2] != 't')) all = false;
            n++;
        }
        closedir(d);
        if (all && n > 0) return 0;
        usleep(1000);
    }
    return -1;
}

/* Prints the tail of etcd's log (for a failing test). */
static inline void etcd_dump_log(const struct etcd *e) {
    char path[128], line[512];
    snprintf(path, sizeof(path), "%s/etcd.log", e->dir);
    FILE *f = fopen(path, "r");
    if (f == NULL) return;
    fprintf(stderr, "  --- %s (last lines) ---\n", path);
    long lines = 0;
    while (fgets(line, sizeof(line), f) != NULL) lines++;
    rewind(f);
    long skip = lines > 15 ? lines - 15 : 0;
    while (fgets(line, sizeof(line), f) != NULL)
        if (skip-- <= 0) fprintf(stderr, "  %s", line);
    fclose(f);
}

/* Runs a program (argv[0] a path) with a deadline, output to /dev/null
 * unless out is given (then stdout+stderr are captured there, cut). Returns
 * its exit status, or -1 (could not run, killed, timed out). */
static inline int fix_run(const char *const *argv, const char *const *envp, int timeout_ms,
                          char *out, size_t outlen) {
    int pfd[2];
    if (pipe(pfd) != 0) return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(pfd[1], 1);
        dup2(pfd[1], 2);
        close(pfd[0]);
        close(pfd[1]);
        if (envp != NULL)
            execve(argv[0], (char *const *)argv, (char *const *)envp);
        else
            execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    fcntl(pfd[0], F_SETFL, O_NONBLOCK);
    size_t got = 0;
    uint64_t end = fix_mono_ms() + (uint64_t)timeout_ms;
    int status = -1;
    for (;;) {
        char buf[1024];
        ssize_t r = read(pfd[0], buf, sizeof(buf));
        if (r > 0 && out != NULL) {
            size_t take = (size_t)r < outlen - 1 - got ? (size_t)r : outlen - 1 - got;
            memcpy(out + got, buf, take);
            got += take;
        }
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) break;
        if (fix_mono_ms() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            close(pfd[0]);
            return -1;
        }
        if (r <= 0) usleep(5000);
    }
    close(pfd[0]);
    if (out != NULL) out[got] = '\0';
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* ---- loop helpers ------------------------------------------------------------------ */

static void fix_wake_cb(uv_timer_t *t) {
    (void)t;
}

/* One loop turn that returns within ~10 ms even when nothing happens. */
static inline void fix_run_once(uv_loop_t *loop) {
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, fix_wake_cb, 10, 0);
    uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

/* Runs the loop until cond holds or ms pass. */
#define RUN_UNTIL(loop, cond, ms)                                                                  \
    do {                                                                                           \
        uint64_t fix_end_ = fix_mono_ms() + (uint64_t)(ms);                                        \
        while (!(cond) && fix_mono_ms() < fix_end_) fix_run_once(loop);                            \
    } while (0)

/* Runs the loop for ms milliseconds. */
static inline void fix_run_for(uv_loop_t *loop, int ms) {
    uint64_t end = fix_mono_ms() + (uint64_t)ms;
    while (fix_mono_ms() < end) fix_run_once(loop);
}

/* Log lines collected from a client's log_cb. */
struct fix_log {
    char lines[FIX_LOG_LINES_MAX][256];
    int n;
    bool echo; /* also print them */
};

static void fix_log_cb(void *arg, const char *line) {
    struct fix_log *l = arg;
    if (l->echo) fprintf(stderr, "    client: %s\n", line);
    if (l->n < FIX_LOG_LINES_MAX) snprintf(l->lines[l->n++], 256, "%s", line);
}

static inline bool fix_log_has(const struct fix_log *l, const char *needle) {
    for (int i = 0; i < l->n; i++)
        if (strstr(l->lines[i], needle) != NULL) return true;
    return false;
}

/* ---- unary calls run to completion ------------------------------------------------- */

struct ures {
    bool done;
    int code;
    char msg[1100];
    bool maybe_applied;
    ProtobufCMessage *resp; /* an owned copy; free with protobuf_c_message_free_unpacked */
    uint64_t done_ms;
};

static inline ProtobufCMessage *fix_msg_copy(const ProtobufCMessage *m) {
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (buf == NULL) return NULL;
    protobuf_c_message_pack(m, buf);
    ProtobufCMessage *copy = protobuf_c_message_unpack(m->descriptor, NULL, n, buf);
    free(buf);
    return copy;
}

static void ures_cb(void *arg, const struct client_status *st, const ProtobufCMessage *resp) {
    struct ures *r = arg;
    r->done = true;
    r->code = st->code;
    snprintf(r->msg, sizeof(r->msg), "%s", st->message);
    r->maybe_applied = st->maybe_applied;
    r->resp = resp != NULL ? fix_msg_copy(resp) : NULL;
    r->done_ms = fix_mono_ms();
}

static inline void ures_free(struct ures *r) {
    if (r->resp != NULL) protobuf_c_message_free_unpacked(r->resp, NULL);
    memset(r, 0, sizeof(*r));
}

/* Starts a call and runs the loop until it is answered (or timeout_ms).
 * Returns client_unary's code; r->done tells whether it was answered. */
static inline int fix_call(uv_loop_t *loop, struct client *c, const char *path,
                           const ProtobufCMessage *req, const ProtobufCMessageDescriptor *d,
                           struct ures *r, int timeout_ms) {
    memset(r, 0, sizeof(*r));
    int rc = client_unary(c, path, req, d, ures_cb, r);
    if (rc != 0) return rc;
    RUN_UNTIL(loop, r->done, timeout_ms);
    return 0;
}

static inline ProtobufCBinaryData fix_bin(const char *s) {
    ProtobufCBinaryData b = {strlen(s), (uint8_t *)s};
    return b;
}

static inline int fix_put(uv_loop_t *loop, struct client *c, const char *key, const char *val,
                          struct ures *r) {
    Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
    req.key = fix_bin(key);
    req.value = fix_bin(val);
    return fix_call(loop, c, "/etcdserverpb.KV/Put", &req.base,
                    &etcdserverpb__put_response__descriptor, r, 15000);
}

/* Closes the client and runs the loop until it is freed. */
static void fix_closed_cb(void *arg) {
    *(bool *)arg = true;
}

static inline bool fix_client_close(uv_loop_t *loop, struct client *c) {
    bool closed = false;
    client_close(c, fix_closed_cb, &closed);
    RUN_UNTIL(loop, closed, 5000);
    return closed;
}

/* Polls etcd with Range requests until one succeeds (deadline 20 s), with a
 * client built from `base` (endpoint replaced). Returns 0 when ready. */
static inline int etcd_wait_ready(uv_loop_t *loop, struct etcd *e,
                                  const struct client_options *base) {
    struct client_options o = *base;
    const char *eps[1] = {e->url};
    o.endpoints = eps;
    o.n_endpoints = 1;
    o.backoff_min_ms = 20;
    o.backoff_max_ms = 100;
    o.command_timeout_ms = 1000;
    struct client *c;
    char err[256];
    if (client_new(loop, &o, &c, err, sizeof(err)) != 0) {
        fprintf(stderr, "  etcd_wait_ready: client_new: %s\n", err);
        return -1;
    }
    uint64_t end = fix_mono_ms() + 20000;
    int ok = -1;
    while (fix_mono_ms() < end) {
        int status;
        if (waitpid(e->pid, &status, WNOHANG) == e->pid) {
            e->pid = 0;
            fprintf(stderr, "  etcd exited early\n");
            break;
        }
        Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
        req.key = fix_bin("ready-probe");
        struct ures r;
        fix_call(loop, c, "/etcdserverpb.KV/Range", &req.base,
                 &etcdserverpb__range_response__descriptor, &r, 3000);
        bool good = r.done && r.code == 0;
        ures_free(&r);
        if (good) {
            ok = 0;
            break;
        }
        fix_run_for(loop, 20);
    }
    fix_client_close(loop, c);
    if (ok != 0) etcd_dump_log(e);
    return ok;
}

#endif /* QFS_TESTS_CLIENT_ETCD_FIXTURE_H */
