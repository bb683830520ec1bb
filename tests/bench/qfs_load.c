/*
 * qfs_load.c - a neutral etcd v3 load generator on client/, in the manner of
 * etcd's own `benchmark` tool: the same requests, byte for byte, against
 * etcd and against quorumfs, so that tests/bench/etcd_bench.sh can print
 * quorumfs/etcd ratios without a Python client in the measurement.
 *
 *   qfs_load WORKLOAD [flags]     WORKLOAD: put, range, txn-put, watch,
 *                                 lease-keepalive; qfs_load --help
 *
 * Layout: --conns client objects (one HTTP/2 connection each), spread over
 * --threads threads, each running its own libuv loop. --clients closed-loop
 * workers are spread round-robin over the connections: a worker sends one
 * request, waits for its answer, sends the next. A shared atomic counter
 * hands out request numbers, so --total bounds the whole run; --rate paces
 * the numbers (request i starts no earlier than i/rate s after the start);
 * --max-seconds bounds the time. Connections, leases and watchers are set
 * up before the clock starts: every thread reports ready, then the main
 * thread starts them all at once.
 *
 * Workloads: put (random keys of --key-size bytes out of --key-space-size),
 * range (one key, --consistency l or s), txn-put (a Txn whose success
 * branch is one put), lease-keepalive (a lease per worker, one keep-alive
 * at a time on the worker's own LeaseKeepAlive stream), watch (--streams
 * streams, each with --watchers watchers of one key; --clients workers make
 * --puts puts to it; each event's latency is from its put's send to the
 * arrival of the message that carries it). Every answer is checked (a put
 * has a revision, a range returns the value written, a keep-alive its
 * lease, an event its put) and a wrong one is counted, not timed.
 *
 * For tests/bench/mount_fanout.sh, --key-prefix puts keys under a prefix
 * and --sends logs each answered put as "KEY SENT_NS ANSWERED_NS"
 * (CLOCK_REALTIME), to be matched with events seen elsewhere.
 *
 * Output: figures for a human, then one line "RESULT key=value ..." for
 * scripts. Exit status 0, or 1 when the run failed (no successes, wrong
 * answers, more than 1% errors, events missing), 2 on bad flags or a
 * failed setup.
 *
 * Threads: a client, its workers and streams belong to one loop thread.
 * What threads share is in `struct shared` (atomics, and a mutex for the
 * table of error kinds). Endpoints are loopback only unless --any-host.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "client/client.h"

/* ---- limits ----------------------------------------------------------------
 */

#define LOAD_CONNS_MAX 4096u
#define LOAD_CLIENTS_MAX 100000u
#define LOAD_THREADS_MAX 64u
#define LOAD_TOTAL_MAX 100000000ull
/* Latency samples kept (8 bytes each); figures come from the first ones. */
#define LOAD_SAMPLES_MAX (32ull * 1024 * 1024)
#define LOAD_KEY_BYTES_MAX 4096u
#define LOAD_VAL_BYTES_MAX (1024u * 1024u)
#define LOAD_STREAMS_MAX 10000u
#define LOAD_WATCHERS_TOTAL_MAX 1000000ull
#define LOAD_PUTS_MAX 10000000ull
#define LOAD_SECONDS_MAX 3600.0
/* Distinct error kinds (code + message) remembered for the report. */
#define LOAD_ERROR_KINDS_MAX 8
#define LOAD_ERROR_TEXT_BYTES 160
/* Connecting, granting leases and creating watchers. */
#define LOAD_SETUP_DEADLINE_MS 30000u
/* How often a loop thread checks whether its part of the run is over. */
#define LOAD_TICK_MS 5u
/* A run with a larger share of failed requests fails. */
#define LOAD_ERROR_SHARE_MAX 0.01
/* Digits of the put number at the head of each watch value. */
#define LOAD_WATCH_INDEX_DIGITS 10u
#define LOAD_LEASE_TTL_S 600

#define RANGE_KEY "qfs-load/range"
#define WATCH_KEY "qfs-load/watch"
#define PING_KEY "qfs-load/ping"

enum workload { WL_PUT, WL_RANGE, WL_TXN_PUT, WL_WATCH, WL_LEASE_KEEPALIVE, WL_COUNT };
static const char *const WORKLOAD_NAMES[WL_COUNT] = {"put", "range", "txn-put", "watch",
                                                     "lease-keepalive"};

/* ---- options ---------------------------------------------------------------
 */

struct opts {
    enum workload wl;
    const char *endpoints;   /* comma-separated, as given */
    uint64_t conns;          /* client objects (connections) */
    uint64_t clients;        /* closed-loop workers */
    uint64_t threads;        /* loop threads; 0: min(conns, CPUs) */
    uint64_t total;          /* requests (not watch) */
    uint64_t key_size;       /* bytes */
    uint64_t val_size;       /* bytes */
    uint64_t key_space_size; /* distinct keys for put and txn-put */
    const char *key_prefix;  /* put and txn-put keys: this, then key_size digits */
    const char *sends;       /* put and txn-put: file of "KEY SENT_NS ANSWERED_NS" lines */
    const char *consistency; /* "l" or "s" */
    double rate;             /* requests/s, 0: unpaced */
    uint64_t streams;        /* watch streams */
    uint64_t watchers;       /* watchers per stream */
    uint64_t puts;           /* watch: puts made */
    double max_seconds;      /* bound of the timed part */
    uint64_t timeout_ms;     /* per request */
    uint64_t seed;
    bool sequential_keys;
    bool any_host;
    bool help;
};

enum opt_kind { OPT_U64, OPT_DOUBLE, OPT_STR, OPT_BOOL };

struct opt_def {
    const char *name;
    enum opt_kind kind;
    size_t offset;
    double min, max; /* for numbers */
    const char *help;
};

#define OPT(name, kind, field, min, max, help)                                                     \
    { name, kind, offsetof(struct opts, field), min, max, help }
static const struct opt_def OPT_DEFS[] = {
    OPT("endpoints", OPT_STR, endpoints, 0, 0,
        "host:port[,...] or http://host:port (127.0.0.1:2379)"),
    OPT("conns", OPT_U64, conns, 1, LOAD_CONNS_MAX, "connections, one client object each (1)"),
    OPT("clients", OPT_U64, clients, 1, LOAD_CLIENTS_MAX, "concurrent closed-loop workers (1)"),
    OPT("threads", OPT_U64, threads, 0, LOAD_THREADS_MAX, "loop threads (0: min(conns, CPUs))"),
    OPT("total", OPT_U64, total, 1, (double)LOAD_TOTAL_MAX, "requests in all (10000)"),
    OPT("key-size", OPT_U64, key_size, 1, LOAD_KEY_BYTES_MAX, "bytes of a put key (8)"),
    OPT("val-size", OPT_U64, val_size, 1, LOAD_VAL_BYTES_MAX, "bytes of a value (8)"),
    OPT("key-space-size", OPT_U64, key_space_size, 1, 1e15, "distinct put keys (1)"),
    OPT("key-prefix", OPT_STR, key_prefix, 0, 0, "put keys: this, then --key-size digits (\"\")"),
    OPT("sends", OPT_STR, sends, 0, 0,
        "put: log \"KEY SENT ANSWERED\" (CLOCK_REALTIME ns) per answer"),
    OPT("consistency", OPT_STR, consistency, 0, 0, "range: l (linearizable) or s (serializable)"),
    OPT("rate", OPT_DOUBLE, rate, 0, 1e9, "requests/s over all workers (0: as fast as answered)"),
    OPT("sequential-keys", OPT_BOOL, sequential_keys, 0, 0, "put keys in order, not at random"),
    OPT("streams", OPT_U64, streams, 1, LOAD_STREAMS_MAX, "watch: streams (10)"),
    OPT("watchers", OPT_U64, watchers, 1, (double)LOAD_WATCHERS_TOTAL_MAX,
        "watch: watchers per stream (100)"),
    OPT("puts", OPT_U64, puts, 1, (double)LOAD_PUTS_MAX, "watch: puts to the watched key (1000)"),
    OPT("max-seconds", OPT_DOUBLE, max_seconds, 0.001, LOAD_SECONDS_MAX,
        "bound of the timed run (60)"),
    OPT("timeout-ms", OPT_U64, timeout_ms, 1, 600000, "per request (5000)"),
    OPT("seed", OPT_U64, seed, 0, 1.8e19, "random keys (1)"),
    OPT("any-host", OPT_BOOL, any_host, 0, 0, "allow endpoints that are not loopback"),
    OPT("help", OPT_BOOL, help, 0, 0, "this text"),
};
#undef OPT
#define N_OPT_DEFS (sizeof(OPT_DEFS) / sizeof(OPT_DEFS[0]))

static void usage(FILE *f) {
    fprintf(f, "usage: qfs_load put|range|txn-put|watch|lease-keepalive [--flag "
               "value]...\n");
    for (size_t i = 0; i < N_OPT_DEFS; i++)
        fprintf(f, "  --%-16s %s\n", OPT_DEFS[i].name, OPT_DEFS[i].help);
}

static int parse_args(int argc, char **argv, struct opts *o) {
    *o = (struct opts){.endpoints = "127.0.0.1:2379",
                       .conns = 1,
                       .clients = 1,
                       .total = 10000,
                       .key_size = 8,
                       .val_size = 8,
                       .key_space_size = 1,
                       .consistency = "l",
                       .key_prefix = "",
                       .streams = 10,
                       .watchers = 100,
                       .puts = 1000,
                       .max_seconds = 60,
                       .timeout_ms = 5000,
                       .seed = 1,
                       .wl = WL_COUNT};
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (strncmp(arg, "--", 2) != 0) {
            bool known = false;
            for (int w = 0; w < WL_COUNT && o->wl == WL_COUNT; w++)
                if (strcmp(arg, WORKLOAD_NAMES[w]) == 0) {
                    o->wl = (enum workload)w;
                    known = true;
                }
            if (!known) {
                fprintf(stderr, "qfs_load: unexpected argument %s\n", arg);
                return -1;
            }
            continue;
        }
        const char *name = arg + 2, *val = strchr(name, '=');
        size_t name_len = val ? (size_t)(val - name) : strlen(name);
        const struct opt_def *d = NULL;
        for (size_t i = 0; i < N_OPT_DEFS; i++)
            if (strlen(OPT_DEFS[i].name) == name_len &&
                memcmp(OPT_DEFS[i].name, name, name_len) == 0)
                d = &OPT_DEFS[i];
        if (d == NULL) {
            fprintf(stderr, "qfs_load: unknown flag %s\n", arg);
            return -1;
        }
        char *field = (char *)o + d->offset;
        if (d->kind == OPT_BOOL) {
            if (val) {
                fprintf(stderr, "qfs_load: --%s takes no value\n", d->name);
                return -1;
            }
            *(bool *)field = true;
            continue;
        }
        if (val) {
            val++;
        } else if (a + 1 < argc) {
            val = argv[++a];
        } else {
            fprintf(stderr, "qfs_load: --%s needs a value\n", d->name);
            return -1;
        }
        if (d->kind == OPT_STR) {
            *(const char **)field = val;
            continue;
        }
        char *end;
        errno = 0;
        double v = strtod(val, &end);
        if (errno || end == val || *end || v < d->min || v > d->max ||
            (d->kind == OPT_U64 && v != (double)(uint64_t)v)) {
            fprintf(stderr, "qfs_load: --%s %s: want a%s number in %g..%g\n", d->name, val,
                    d->kind == OPT_U64 ? "n integer" : "", d->min, d->max);
            return -1;
        }
        if (d->kind == OPT_U64)
            *(uint64_t *)field = (uint64_t)v;
        else
            *(double *)field = v;
    }
    if (o->help) return 0;
    if (o->wl == WL_COUNT) {
        fprintf(stderr, "qfs_load: which workload?\n");
        return -1;
    }
    if (strcmp(o->consistency, "l") != 0 && strcmp(o->consistency, "s") != 0) {
        fprintf(stderr, "qfs_load: --consistency: l or s\n");
        return -1;
    }
    if (o->streams * o->watchers > LOAD_WATCHERS_TOTAL_MAX) {
        fprintf(stderr, "qfs_load: --streams x --watchers above %llu\n", LOAD_WATCHERS_TOTAL_MAX);
        return -1;
    }
    if (strlen(o->key_prefix) > LOAD_KEY_BYTES_MAX) {
        fprintf(stderr, "qfs_load: --key-prefix longer than %u bytes\n", LOAD_KEY_BYTES_MAX);
        return -1;
    }
    if (o->wl == WL_WATCH && o->val_size < LOAD_WATCH_INDEX_DIGITS)
        o->val_size = LOAD_WATCH_INDEX_DIGITS;
    uint64_t keys = 1;
    for (uint64_t k = 0; k < o->key_size && keys < o->key_space_size; k++) keys *= 10;
    if (keys < o->key_space_size) {
        fprintf(stderr,
                "qfs_load: --key-space-size %" PRIu64 " needs more than --key-size %" PRIu64
                " digits\n",
                o->key_space_size, o->key_size);
        return -1;
    }
    return 0;
}

/* ---- shared state ----------------------------------------------------------
 */

struct error_kind {
    int code;
    char text[LOAD_ERROR_TEXT_BYTES];
    uint64_t count;
};

/* Everything the threads share. Atomics unless a lock is named. */
static struct shared {
    struct opts o;
    const char *eps[CLIENT_ENDPOINTS_MAX]; /* split endpoints; strings in eps_buf */
    char *eps_buf;
    size_t n_eps;
    char *value;       /* val_size bytes, read-only once threads run */
    size_t prefix_len; /* strlen(o.key_prefix) */
    FILE *sends;       /* --sends; protected by err_lock */
    bool serializable;

    _Atomic uint64_t issued; /* request numbers handed out */
    _Atomic uint64_t ok;     /* answers checked and timed */
    _Atomic uint64_t errors; /* calls failed */
    _Atomic uint64_t bad;    /* answers that were wrong */
    _Atomic uint64_t n_lat;  /* samples taken; lat[0..min(n_lat, lat_cap)) */
    uint64_t *lat_ns;        /* latency samples, ns; slot k written by its taker only */
    uint64_t lat_cap;
    _Atomic uint64_t last_ns; /* the latest completion (an answer, an event), monotonic ns */

    /* watch */
    _Atomic uint64_t *put_sent_ns; /* [puts]: when put i was sent */
    _Atomic uint64_t events;       /* events received and matched to a put */
    uint64_t events_expected;      /* streams x watchers x puts */
    _Atomic uint64_t puts_done_ns; /* when every put had its answer; 0 before */

    _Atomic unsigned ready; /* threads done with their setup */
    _Atomic bool setup_failed;
    _Atomic uint64_t start_ns; /* 0 until the run starts */
    _Atomic uint64_t deadline_ns;
    _Atomic bool stop; /* finish now (setup failed, or a signal of time) */

    uv_mutex_t err_lock;
    struct error_kind err_kinds[LOAD_ERROR_KINDS_MAX]; /* protected by err_lock */
    unsigned n_err_kinds;                              /* protected by err_lock */
    char setup_err[256];                               /* protected by err_lock */
} g;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void atomic_max(_Atomic uint64_t *a, uint64_t v) {
    uint64_t cur = atomic_load_explicit(a, memory_order_relaxed);
    while (cur < v && !atomic_compare_exchange_weak_explicit(a, &cur, v, memory_order_relaxed,
                                                             memory_order_relaxed)) {
    }
}

static void lat_record(uint64_t ns, uint64_t now) {
    uint64_t k = atomic_fetch_add_explicit(&g.n_lat, 1, memory_order_relaxed);
    if (k < g.lat_cap) g.lat_ns[k] = ns;
    atomic_max(&g.last_ns, now);
}

static void note_error(int code, const char *msg) {
    atomic_fetch_add_explicit(&g.errors, 1, memory_order_relaxed);
    uv_mutex_lock(&g.err_lock);
    unsigned i;
    for (i = 0; i < g.n_err_kinds; i++)
        if (g.err_kinds[i].code == code &&
            strncmp(g.err_kinds[i].text, msg, LOAD_ERROR_TEXT_BYTES - 1) == 0)
            break;
    if (i == g.n_err_kinds && i < LOAD_ERROR_KINDS_MAX) {
        g.err_kinds[i].code = code;
        snprintf(g.err_kinds[i].text, sizeof(g.err_kinds[i].text), "%s", msg);
        g.n_err_kinds++;
    }
    if (i < g.n_err_kinds) g.err_kinds[i].count++;
    uv_mutex_unlock(&g.err_lock);
}

static void setup_fail(const char *what, const struct client_status *st) {
    uv_mutex_lock(&g.err_lock);
    if (!g.setup_err[0])
        snprintf(g.setup_err, sizeof(g.setup_err), "%s: %s %s", what,
                 client_grpc_code_name(st->code), st->message);
    uv_mutex_unlock(&g.err_lock);
    atomic_store(&g.setup_failed, true);
}

/* ---- threads, connections, workers -----------------------------------------
 */

struct thr;

struct conn {
    struct thr *t;
    struct client *c;
    unsigned idx; /* global connection number */
};

/* A closed-loop worker: at most one request in flight (busy). */
struct worker {
    struct thr *t;
    struct conn *conn;
    unsigned idx;          /* global worker number */
    uint64_t rng;          /* xorshift64 state */
    uint64_t seq;          /* --sequential-keys: next key */
    uint64_t i;            /* number of the request in flight or paced */
    uint64_t sent_ns;      /* when it was sent */
    uint64_t sent_real_ns; /* the same, CLOCK_REALTIME (--sends) */
    bool busy;             /* a request in flight, or waiting for its pace timer */
    bool done;             /* nothing more to send */
    bool pace_init;
    uv_timer_t pace;          /* --rate */
    char *key;                /* prefix_len + key_size + 1 bytes: prefix, digits, NUL */
    char *val;                /* watch: val_size bytes, this worker's value */
    struct client_stream *ka; /* lease-keepalive stream */
    int64_t lease;
};

/* A watch stream with its watchers. */
struct wstream {
    struct thr *t;
    struct conn *conn;
    struct client_stream *s;
    uint64_t created; /* watchers the server confirmed */
    bool ready;
};

struct thr {
    unsigned idx;
    uv_loop_t loop;
    uv_thread_t tid;
    uv_async_t go; /* the main thread's start (or stop) signal */
    uv_timer_t tick;
    struct conn *conns;
    unsigned n_conns;
    struct worker *workers;
    unsigned n_workers;
    struct wstream *streams;
    unsigned n_streams;
    unsigned setup_pending; /* setup steps not yet answered */
    bool setup_reported;
    bool finishing; /* clients closing; callbacks are ignored */
};

static struct thr *threads;
static unsigned n_threads;

static ProtobufCBinaryData bin(const void *p, size_t n) {
    return (ProtobufCBinaryData){.len = n, .data = (uint8_t *)(uintptr_t)p};
}

static uint64_t xorshift64(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Writes key number n, zero-padded to key_size digits, into w->key. */
static uint64_t real_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Writes the prefix and key number n, zero-padded to key_size digits, into
 * w->key. */
static void make_key(struct worker *w, uint64_t n) {
    char digits[32];
    int len = snprintf(digits, sizeof(digits), "%" PRIu64, n);
    size_t ks = g.o.key_size;
    char *d = w->key + g.prefix_len;
    memset(d, '0', ks);
    size_t l = (size_t)len < ks ? (size_t)len : ks;
    memcpy(d + ks - l, digits + (size_t)len - l, l);
}

static size_t key_len(void) {
    return g.prefix_len + g.o.key_size;
}

static void setup_step_done(struct thr *t) {
    if (t->setup_pending > 0) t->setup_pending--;
    if (t->setup_pending == 0 && !t->setup_reported) {
        t->setup_reported = true;
        atomic_fetch_add(&g.ready, 1);
    }
}

static void finish(struct thr *t);
static void worker_next(struct worker *w);

/* ---- unary workloads --------------------------------------------------------
 */

static bool answer_ok(const struct worker *w, const ProtobufCMessage *resp) {
    switch (g.o.wl) {
    case WL_PUT:
    case WL_WATCH: {
        const Etcdserverpb__PutResponse *r = (const Etcdserverpb__PutResponse *)resp;
        return r->header && r->header->revision > 1;
    }
    case WL_RANGE: {
        const Etcdserverpb__RangeResponse *r = (const Etcdserverpb__RangeResponse *)resp;
        return r->n_kvs == 1 && r->kvs[0]->value.len == g.o.val_size &&
               memcmp(r->kvs[0]->value.data, g.value, g.o.val_size) == 0;
    }
    case WL_TXN_PUT: {
        const Etcdserverpb__TxnResponse *r = (const Etcdserverpb__TxnResponse *)resp;
        return r->succeeded && r->n_responses == 1 &&
               r->responses[0]->response_case == ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_PUT &&
               r->header && r->header->revision > 1;
    }
    case WL_LEASE_KEEPALIVE: {
        const Etcdserverpb__LeaseKeepAliveResponse *r =
            (const Etcdserverpb__LeaseKeepAliveResponse *)resp;
        return r->id == w->lease && r->ttl > 0;
    }
    case WL_COUNT:
        break;
    }
    return false;
}

static void worker_answered(struct worker *w, const struct client_status *st,
                            const ProtobufCMessage *resp) {
    w->busy = false;
    if (w->t->finishing) return;
    uint64_t now = now_ns();
    if (st && st->code != 0) {
        note_error(st->code, st->message);
    } else if (!answer_ok(w, resp)) {
        atomic_fetch_add_explicit(&g.bad, 1, memory_order_relaxed);
    } else {
        atomic_fetch_add_explicit(&g.ok, 1, memory_order_relaxed);
        /* Watch: the samples are the events' latencies, not the puts'. */
        if (g.o.wl == WL_WATCH)
            atomic_max(&g.last_ns, now);
        else
            lat_record(now - w->sent_ns, now);
        if (g.sends && (g.o.wl == WL_PUT || g.o.wl == WL_TXN_PUT)) {
            uint64_t real = real_ns();
            uv_mutex_lock(&g.err_lock);
            fprintf(g.sends, "%s %" PRIu64 " %" PRIu64 "\n", w->key, w->sent_real_ns, real);
            uv_mutex_unlock(&g.err_lock);
        }
    }
    worker_next(w);
}

static void unary_cb(void *arg, const struct client_status *st, const ProtobufCMessage *resp) {
    worker_answered(arg, st, resp);
}

static void worker_send(struct worker *w) {
    uint64_t i = w->i;
    int rc = 0;
    w->busy = true;
    w->sent_ns = now_ns();
    if (g.sends) w->sent_real_ns = real_ns();
    switch (g.o.wl) {
    case WL_PUT:
    case WL_WATCH: {
        Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
        if (g.o.wl == WL_WATCH) {
            char head[LOAD_WATCH_INDEX_DIGITS + 1];
            snprintf(head, sizeof(head), "%0*" PRIu64, (int)LOAD_WATCH_INDEX_DIGITS, i);
            memcpy(w->val, head, LOAD_WATCH_INDEX_DIGITS);
            req.key = bin(WATCH_KEY, strlen(WATCH_KEY));
            req.value = bin(w->val, g.o.val_size);
            atomic_store_explicit(&g.put_sent_ns[i], w->sent_ns, memory_order_release);
        } else {
            make_key(w, g.o.sequential_keys ? w->seq++ % g.o.key_space_size
                                            : xorshift64(&w->rng) % g.o.key_space_size);
            req.key = bin(w->key, key_len());
            req.value = bin(g.value, g.o.val_size);
        }
        rc = client_unary(w->conn->c, "/etcdserverpb.KV/Put", &req.base,
                          &etcdserverpb__put_response__descriptor, unary_cb, w);
        break;
    }
    case WL_RANGE: {
        Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
        req.key = bin(RANGE_KEY, strlen(RANGE_KEY));
        req.serializable = g.serializable;
        rc = client_unary(w->conn->c, "/etcdserverpb.KV/Range", &req.base,
                          &etcdserverpb__range_response__descriptor, unary_cb, w);
        break;
    }
    case WL_TXN_PUT: {
        make_key(w, g.o.sequential_keys ? w->seq++ % g.o.key_space_size
                                        : xorshift64(&w->rng) % g.o.key_space_size);
        Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
        put.key = bin(w->key, key_len());
        put.value = bin(g.value, g.o.val_size);
        Etcdserverpb__RequestOp op = ETCDSERVERPB__REQUEST_OP__INIT;
        op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
        op.request_put = &put;
        Etcdserverpb__RequestOp *ops[] = {&op};
        Etcdserverpb__TxnRequest req = ETCDSERVERPB__TXN_REQUEST__INIT;
        req.n_success = 1;
        req.success = ops;
        rc = client_unary(w->conn->c, "/etcdserverpb.KV/Txn", &req.base,
                          &etcdserverpb__txn_response__descriptor, unary_cb, w);
        break;
    }
    case WL_LEASE_KEEPALIVE: {
        Etcdserverpb__LeaseKeepAliveRequest req = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
        req.id = w->lease;
        rc = w->ka ? client_stream_send(w->ka, &req.base) : CLIENT_ECLOSED;
        break;
    }
    case WL_COUNT:
        break;
    }
    if (rc != 0) {
        /* Nothing was sent and no callback comes: count it, stop this worker. */
        w->busy = false;
        w->done = true;
        note_error(CLIENT_GRPC_INTERNAL, client_strerror(rc));
    }
}

static void pace_cb(uv_timer_t *h) {
    struct worker *w = h->data;
    if (w->t->finishing) {
        w->busy = false;
        return;
    }
    worker_send(w);
}

/* Takes the next request number and sends it, now or when --rate says. */
static void worker_next(struct worker *w) {
    if (w->done || w->t->finishing) return;
    uint64_t limit = g.o.wl == WL_WATCH ? g.o.puts : g.o.total;
    uint64_t now = now_ns();
    if (atomic_load(&g.stop) || now >= atomic_load(&g.deadline_ns)) {
        w->done = true;
        return;
    }
    uint64_t i = atomic_fetch_add(&g.issued, 1);
    if (i >= limit) {
        w->done = true;
        return;
    }
    w->i = i;
    if (g.o.rate > 0) {
        uint64_t at = atomic_load(&g.start_ns) + (uint64_t)((double)i * 1e9 / g.o.rate);
        if (at > now + 500000) {
            w->busy = true;
            uv_timer_start(&w->pace, pace_cb, (at - now + 999999) / 1000000, 0);
            return;
        }
    }
    worker_send(w);
}

/* ---- lease-keepalive --------------------------------------------------------
 */

static void ka_msg_cb(void *arg, const ProtobufCMessage *msg) {
    struct worker *w = arg;
    if (!w->busy) return; /* not an answer to ours */
    worker_answered(w, NULL, msg);
}

static void ka_end_cb(void *arg, const struct client_status *st) {
    struct worker *w = arg;
    w->ka = NULL;
    if (w->t->finishing) return;
    note_error(st->code ? st->code : CLIENT_GRPC_UNKNOWN, st->code ? st->message : "stream ended");
    w->busy = false;
    w->done = true;
}

static void grant_cb(void *arg, const struct client_status *st, const ProtobufCMessage *resp) {
    struct worker *w = arg;
    if (w->t->finishing) return;
    if (st->code != 0) {
        setup_fail("LeaseGrant", st);
        return;
    }
    w->lease = ((const Etcdserverpb__LeaseGrantResponse *)resp)->id;
    static const struct client_stream_cbs cbs = {ka_msg_cb, ka_end_cb};
    int rc = client_stream_open(w->conn->c, "/etcdserverpb.Lease/LeaseKeepAlive",
                                &etcdserverpb__lease_keep_alive_response__descriptor, &cbs, w,
                                &w->ka);
    if (rc != 0) {
        struct client_status s = {.code = CLIENT_GRPC_INTERNAL, .message = client_strerror(rc)};
        setup_fail("LeaseKeepAlive open", &s);
        return;
    }
    setup_step_done(w->t);
}

/* ---- watch ------------------------------------------------------------------
 */

static void watch_msg_cb(void *arg, const ProtobufCMessage *msg) {
    struct wstream *ws = arg;
    const Etcdserverpb__WatchResponse *r = (const Etcdserverpb__WatchResponse *)msg;
    if (ws->t->finishing) return;
    if (r->created) {
        if (++ws->created == g.o.watchers && !ws->ready) {
            ws->ready = true;
            setup_step_done(ws->t);
        }
    }
    if (r->canceled)
        note_error(CLIENT_GRPC_CANCELLED, r->cancel_reason ? r->cancel_reason : "watch canceled");
    if (r->n_events == 0) return;
    uint64_t now = now_ns(), matched = 0, bad = 0;
    for (size_t e = 0; e < r->n_events; e++) {
        const Mvccpb__Event *ev = r->events[e];
        const Mvccpb__KeyValue *kv = ev->kv;
        uint64_t i = 0;
        bool good = kv && ev->type == MVCCPB__EVENT__EVENT_TYPE__PUT &&
                    kv->value.len == g.o.val_size && kv->key.len == strlen(WATCH_KEY) &&
                    memcmp(kv->key.data, WATCH_KEY, kv->key.len) == 0;
        for (unsigned d = 0; good && d < LOAD_WATCH_INDEX_DIGITS; d++) {
            uint8_t c = kv->value.data[d];
            if (c < '0' || c > '9') good = false;
            i = i * 10 + (uint64_t)(c - '0');
        }
        uint64_t sent = good && i < g.o.puts
                            ? atomic_load_explicit(&g.put_sent_ns[i], memory_order_acquire)
                            : 0;
        if (sent == 0 || sent > now) {
            bad++;
            continue;
        }
        lat_record(now - sent, now);
        matched++;
    }
    if (bad) atomic_fetch_add_explicit(&g.bad, bad, memory_order_relaxed);
    if (matched) atomic_fetch_add_explicit(&g.events, matched, memory_order_relaxed);
}

static void watch_end_cb(void *arg, const struct client_status *st) {
    struct wstream *ws = arg;
    ws->s = NULL;
    if (ws->t->finishing) return;
    if (!ws->ready) {
        setup_fail("Watch", st);
        return;
    }
    note_error(st->code ? st->code : CLIENT_GRPC_UNKNOWN,
               st->code ? st->message : "watch stream ended");
}

static int watch_open(struct wstream *ws) {
    static const struct client_stream_cbs cbs = {watch_msg_cb, watch_end_cb};
    int rc = client_stream_open(ws->conn->c, "/etcdserverpb.Watch/Watch",
                                &etcdserverpb__watch_response__descriptor, &cbs, ws, &ws->s);
    for (uint64_t k = 0; rc == 0 && k < g.o.watchers; k++) {
        Etcdserverpb__WatchCreateRequest cr = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
        cr.key = bin(WATCH_KEY, strlen(WATCH_KEY));
        Etcdserverpb__WatchRequest wr = ETCDSERVERPB__WATCH_REQUEST__INIT;
        wr.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
        wr.create_request = &cr;
        rc = client_stream_send(ws->s, &wr.base);
    }
    return rc;
}

/* ---- setup, start, finish
 * ---------------------------------------------------- */

/* The first call on each connection: it is up (and, for range, the key is
 * there). */
static void ping_cb(void *arg, const struct client_status *st, const ProtobufCMessage *resp) {
    struct conn *c = arg;
    (void)resp;
    if (c->t->finishing) return;
    if (st->code != 0) {
        setup_fail(client_endpoint(c->c), st);
        return;
    }
    setup_step_done(c->t);
}

static int setup_start(struct thr *t) {
    int rc = 0;
    t->setup_pending = 1; /* this function's own step, done at the end */
    for (unsigned k = 0; rc == 0 && k < t->n_conns; k++) {
        struct conn *c = &t->conns[k];
        t->setup_pending++;
        if (g.o.wl == WL_RANGE) {
            Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
            req.key = bin(RANGE_KEY, strlen(RANGE_KEY));
            req.value = bin(g.value, g.o.val_size);
            rc = client_unary(c->c, "/etcdserverpb.KV/Put", &req.base,
                              &etcdserverpb__put_response__descriptor, ping_cb, c);
        } else {
            Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
            req.key = bin(PING_KEY, strlen(PING_KEY));
            req.serializable = true;
            req.count_only = true;
            rc = client_unary(c->c, "/etcdserverpb.KV/Range", &req.base,
                              &etcdserverpb__range_response__descriptor, ping_cb, c);
        }
    }
    if (g.o.wl == WL_LEASE_KEEPALIVE) {
        for (unsigned k = 0; rc == 0 && k < t->n_workers; k++) {
            struct worker *w = &t->workers[k];
            Etcdserverpb__LeaseGrantRequest req = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
            req.ttl = LOAD_LEASE_TTL_S;
            t->setup_pending++;
            rc = client_unary(w->conn->c, "/etcdserverpb.Lease/LeaseGrant", &req.base,
                              &etcdserverpb__lease_grant_response__descriptor, grant_cb, w);
        }
    }
    if (g.o.wl == WL_WATCH) {
        for (unsigned k = 0; rc == 0 && k < t->n_streams; k++) {
            t->setup_pending++;
            rc = watch_open(&t->streams[k]);
        }
    }
    if (rc == 0) setup_step_done(t);
    return rc;
}

static void client_closed_cb(void *arg) {
    (void)arg;
}

static void finish(struct thr *t) {
    if (t->finishing) return;
    t->finishing = true;
    uv_close((uv_handle_t *)&t->tick, NULL);
    uv_close((uv_handle_t *)&t->go, NULL);
    for (unsigned k = 0; k < t->n_workers; k++) {
        struct worker *w = &t->workers[k];
        if (w->pace_init) uv_close((uv_handle_t *)&w->pace, NULL);
        if (w->ka) client_stream_close(w->ka);
        w->ka = NULL;
    }
    for (unsigned k = 0; k < t->n_streams; k++) {
        if (t->streams[k].s) client_stream_close(t->streams[k].s);
        t->streams[k].s = NULL;
    }
    for (unsigned k = 0; k < t->n_conns; k++)
        if (t->conns[k].c) client_close(t->conns[k].c, client_closed_cb, NULL);
}

static void tick_cb(uv_timer_t *h) {
    struct thr *t = h->data;
    uint64_t now = now_ns(), deadline = atomic_load(&g.deadline_ns);
    /* Past the deadline, answers in flight get their own timeout, plus a second.
   */
    uint64_t hard = deadline + (g.o.timeout_ms + 1000) * 1000000ull;
    bool workers_done = true;
    for (unsigned k = 0; k < t->n_workers; k++)
        if (!t->workers[k].done || t->workers[k].busy) workers_done = false;
    bool over = workers_done;
    if (g.o.wl == WL_WATCH) {
        /* Events still missing a timeout after the last put answered are lost. */
        uint64_t answered = atomic_load(&g.ok) + atomic_load(&g.errors) + atomic_load(&g.bad);
        uint64_t zero = 0, puts_done = atomic_load(&g.puts_done_ns);
        if (answered >= g.o.puts && puts_done == 0 &&
            atomic_compare_exchange_strong(&g.puts_done_ns, &zero, now))
            puts_done = now;
        bool lost = puts_done && now >= puts_done + g.o.timeout_ms * 1000000ull;
        over = workers_done &&
               (atomic_load(&g.events) >= g.events_expected || lost || now >= deadline);
    }
    if (over || atomic_load(&g.stop) || now >= hard) finish(t);
}

static void go_cb(uv_async_t *h) {
    struct thr *t = h->data;
    if (t->finishing) return;
    if (atomic_load(&g.stop)) {
        finish(t);
        return;
    }
    uv_timer_start(&t->tick, tick_cb, LOAD_TICK_MS, LOAD_TICK_MS);
    for (unsigned k = 0; k < t->n_workers; k++) worker_next(&t->workers[k]);
}

/* Connection trouble goes to stderr; "connected", once per connection, does
 * not. */
static void client_log_cb(void *arg, const char *line) {
    (void)arg;
    size_t n = strlen(line);
    if (n >= 11 && strcmp(line + n - 11, ": connected") == 0) return;
    fprintf(stderr, "qfs_load: %s\n", line);
}

static void thread_main(void *arg) {
    struct thr *t = arg;
    char err[256];
    int rc = 0;
    for (unsigned k = 0; k < t->n_conns; k++) {
        struct conn *c = &t->conns[k];
        /* Each connection starts at its own endpoint, so they spread over members.
     */
        const char *eps[CLIENT_ENDPOINTS_MAX];
        for (size_t e = 0; e < g.n_eps; e++) eps[e] = g.eps[(c->idx + e) % g.n_eps];
        struct client_options co;
        client_options_init(&co);
        co.endpoints = eps;
        co.n_endpoints = g.n_eps;
        co.command_timeout_ms = (uint32_t)g.o.timeout_ms;
        co.log_cb = client_log_cb;
        rc = client_new(&t->loop, &co, &c->c, err, sizeof(err));
        if (rc != 0) {
            fprintf(stderr, "qfs_load: %s\n", err);
            break;
        }
    }
    if (rc == 0) rc = setup_start(t);
    if (rc != 0) {
        struct client_status s = {.code = CLIENT_GRPC_INTERNAL, .message = client_strerror(rc)};
        setup_fail("setup", &s);
        finish(t);
    }
    uv_run(&t->loop, UV_RUN_DEFAULT);
}

/* ---- main -------------------------------------------------------------------
 */

static bool loopback_host(const char *ep) {
    const char *h = ep;
    if (strncmp(h, "http://", 7) == 0)
        h += 7;
    else if (strncmp(h, "https://", 8) == 0)
        h += 8;
    if (h[0] == '[') return strncmp(h, "[::1]", 5) == 0;
    return strncmp(h, "127.", 4) == 0 || strncmp(h, "localhost", 9) == 0;
}

static int split_endpoints(void) {
    g.eps_buf = strdup(g.o.endpoints);
    if (g.eps_buf == NULL) return -ENOMEM;
    for (char *save = NULL, *e = strtok_r(g.eps_buf, ",", &save); e;
         e = strtok_r(NULL, ",", &save)) {
        if (g.n_eps == CLIENT_ENDPOINTS_MAX) {
            fprintf(stderr, "qfs_load: more than %u endpoints\n", CLIENT_ENDPOINTS_MAX);
            return -EINVAL;
        }
        if (!g.o.any_host && !loopback_host(e)) {
            fprintf(stderr, "qfs_load: %s is not a loopback address (--any-host allows it)\n", e);
            return -EINVAL;
        }
        g.eps[g.n_eps++] = e;
    }
    if (g.n_eps == 0) {
        fprintf(stderr, "qfs_load: no endpoints\n");
        return -EINVAL;
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest rank, in ms; 0 without samples. */
static double pct_ms(const uint64_t *v, uint64_t n, double p) {
    if (n == 0) return 0;
    uint64_t k = (uint64_t)(p / 100.0 * (double)n + 0.999999);
    if (k < 1) k = 1;
    if (k > n) k = n;
    return (double)v[k - 1] / 1e6;
}

/* Lays out threads, connections, workers and streams; initialises the loops. */
static int build(void) {
    const struct opts *o = &g.o;
    uint64_t n_workers = o->clients;
    uint64_t n_streams = o->wl == WL_WATCH ? o->streams : 0;
    threads = calloc(n_threads, sizeof(*threads));
    if (threads == NULL) return -ENOMEM;
    for (unsigned i = 0; i < n_threads; i++) {
        struct thr *t = &threads[i];
        t->idx = i;
        /* Connection c belongs to thread c % n_threads; worker j and stream s to
     * connection j % conns and s % conns. */
        t->n_conns = (unsigned)(o->conns / n_threads + (i < o->conns % n_threads));
        t->conns = calloc(t->n_conns ? t->n_conns : 1, sizeof(*t->conns));
        t->workers = calloc(n_workers, sizeof(*t->workers));
        t->streams = calloc(n_streams ? n_streams : 1, sizeof(*t->streams));
        if (!t->conns || !t->workers || !t->streams) return -ENOMEM;
        if (uv_loop_init(&t->loop) != 0) return -ENOMEM;
        uv_async_init(&t->loop, &t->go, go_cb);
        t->go.data = t;
        uv_timer_init(&t->loop, &t->tick);
        t->tick.data = t;
    }
    for (unsigned c = 0; c < o->conns; c++) {
        struct thr *t = &threads[c % n_threads];
        struct conn *cn = &t->conns[c / n_threads];
        cn->t = t;
        cn->idx = c;
    }
    for (uint64_t j = 0; j < n_workers; j++) {
        unsigned c = (unsigned)(j % o->conns);
        struct thr *t = &threads[c % n_threads];
        struct worker *w = &t->workers[t->n_workers++];
        w->t = t;
        w->conn = &t->conns[c / n_threads];
        w->idx = (unsigned)j;
        w->rng = (o->seed + 1) * 0x9E3779B97F4A7C15ull + j * 0xBF58476D1CE4E5B9ull;
        if (w->rng == 0) w->rng = 1;
        w->seq = j * (o->key_space_size / n_workers + 1);
        w->key = calloc(g.prefix_len + o->key_size + 1, 1);
        if (w->key) memcpy(w->key, o->key_prefix, g.prefix_len);
        w->val = malloc(o->val_size);
        if (!w->key || !w->val) return -ENOMEM;
        memcpy(w->val, g.value, o->val_size);
        if (o->rate > 0) {
            uv_timer_init(&t->loop, &w->pace);
            w->pace.data = w;
            w->pace_init = true;
        }
    }
    for (uint64_t s = 0; s < n_streams; s++) {
        unsigned c = (unsigned)(s % o->conns);
        struct thr *t = &threads[c % n_threads];
        struct wstream *ws = &t->streams[t->n_streams++];
        ws->t = t;
        ws->conn = &t->conns[c / n_threads];
    }
    return 0;
}

static void report(uint64_t start, uint64_t end_wall) {
    const struct opts *o = &g.o;
    uint64_t ok = atomic_load(&g.ok), errors = atomic_load(&g.errors), bad = atomic_load(&g.bad);
    uint64_t n = atomic_load(&g.n_lat);
    if (n > g.lat_cap) n = g.lat_cap;
    qsort(g.lat_ns, n, sizeof(uint64_t), cmp_u64);
    double sum = 0;
    for (uint64_t k = 0; k < n; k++) sum += (double)g.lat_ns[k];
    uint64_t last = atomic_load(&g.last_ns);
    if (last < start) last = end_wall;
    double secs = (double)(last - start) / 1e9;
    if (secs <= 0) secs = 1e-9;
    double p50 = pct_ms(g.lat_ns, n, 50), p90 = pct_ms(g.lat_ns, n, 90),
           p99 = pct_ms(g.lat_ns, n, 99), mx = n ? (double)g.lat_ns[n - 1] / 1e6 : 0,
           mean = n ? sum / (double)n / 1e6 : 0;
    const char *wl = WORKLOAD_NAMES[o->wl];
    char extra[64] = "";
    if (o->wl == WL_RANGE) snprintf(extra, sizeof(extra), ", consistency %s", o->consistency);
    printf("qfs_load %s%s: %" PRIu64 " clients over %" PRIu64 " connections, %u threads, "
           "%zu endpoints\n",
           wl, extra, o->clients, o->conns, n_threads, g.n_eps);
    uint64_t events = atomic_load(&g.events);
    double events_s = (double)events / secs;
    if (o->wl == WL_WATCH) {
        printf("  %" PRIu64 " streams x %" PRIu64 " watchers, %" PRIu64 " puts of %" PRIu64
               " bytes: %" PRIu64 " of %" PRIu64 " events in %.3f s\n",
               o->streams, o->watchers, o->puts, o->val_size, events, g.events_expected, secs);
        printf("  events/s      %.1f\n", events_s);
        printf("  delivery ms   p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  mean %.3f\n", p50, p90, p99,
               mx, mean);
    } else {
        printf("  %" PRIu64 " requests in %.3f s\n", ok, secs);
        printf("  requests/s    %.1f\n", (double)ok / secs);
        printf("  latency ms    p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  mean %.3f\n", p50, p90, p99,
               mx, mean);
    }
    printf("  errors %" PRIu64 ", wrong answers %" PRIu64 "\n", errors, bad);
    for (unsigned i = 0; i < g.n_err_kinds; i++)
        printf("    %" PRIu64 " x %s %s\n", g.err_kinds[i].count,
               client_grpc_code_name(g.err_kinds[i].code), g.err_kinds[i].text);
    printf("RESULT workload=%s consistency=%s conns=%" PRIu64 " clients=%" PRIu64 " threads=%u"
           " ok=%" PRIu64 " errors=%" PRIu64 " bad=%" PRIu64 " seconds=%.3f rps=%.1f"
           " p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f",
           wl, o->consistency, o->conns, o->clients, n_threads, ok, errors, bad, secs,
           o->wl == WL_WATCH ? events_s : (double)ok / secs, p50, p90, p99, mx);
    if (o->wl == WL_WATCH)
        printf(" streams=%" PRIu64 " watchers=%" PRIu64 " puts=%" PRIu64 " events=%" PRIu64
               " expected=%" PRIu64 " events_s=%.1f",
               o->streams, o->watchers, o->puts, events, g.events_expected, events_s);
    printf("\n");
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (parse_args(argc, argv, &g.o) != 0) {
        usage(stderr);
        return 2;
    }
    if (g.o.help) {
        usage(stdout);
        return 0;
    }
    const struct opts *o = &g.o;
    if (split_endpoints() != 0) return 2;
    g.serializable = strcmp(o->consistency, "s") == 0;
    g.prefix_len = strlen(o->key_prefix);
    if (o->sends) {
        g.sends = fopen(o->sends, "w");
        if (g.sends == NULL) {
            fprintf(stderr, "qfs_load: --sends %s: %s\n", o->sends, strerror(errno));
            return 2;
        }
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    n_threads = (unsigned)(o->threads ? o->threads : (uint64_t)(cpus > 0 ? cpus : 1));
    if (n_threads > o->conns) n_threads = (unsigned)o->conns;
    uv_mutex_init(&g.err_lock);

    g.value = malloc(o->val_size);
    if (g.value == NULL) goto err_nomem;
    for (uint64_t k = 0; k < o->val_size; k++) g.value[k] = (char)('a' + k % 26);
    uint64_t samples = o->wl == WL_WATCH ? o->streams * o->watchers * o->puts : o->total;
    g.events_expected = o->wl == WL_WATCH ? samples : 0;
    g.lat_cap = samples < LOAD_SAMPLES_MAX ? samples : LOAD_SAMPLES_MAX;
    g.lat_ns = malloc(g.lat_cap * sizeof(uint64_t));
    if (g.lat_ns == NULL) goto err_nomem;
    if (o->wl == WL_WATCH) {
        g.put_sent_ns = calloc(o->puts, sizeof(*g.put_sent_ns));
        if (g.put_sent_ns == NULL) goto err_nomem;
    }
    atomic_store(&g.deadline_ns, UINT64_MAX);
    if (build() != 0) goto err_nomem;

    for (unsigned i = 0; i < n_threads; i++)
        if (uv_thread_create(&threads[i].tid, thread_main, &threads[i]) != 0) {
            fprintf(stderr, "qfs_load: cannot start a thread\n");
            atomic_store(&g.stop, true);
            n_threads = i;
            break;
        }
    /* Wait for every thread's setup, then start them together. */
    uint64_t setup_end = now_ns() + LOAD_SETUP_DEADLINE_MS * 1000000ull;
    while (atomic_load(&g.ready) < n_threads && !atomic_load(&g.setup_failed) &&
           !atomic_load(&g.stop) && now_ns() < setup_end)
        usleep(1000);
    bool started = atomic_load(&g.ready) == n_threads && !atomic_load(&g.stop);
    if (!started) {
        uv_mutex_lock(&g.err_lock);
        fprintf(stderr, "qfs_load: setup failed: %s\n",
                g.setup_err[0] ? g.setup_err : "not ready within the setup deadline");
        uv_mutex_unlock(&g.err_lock);
        atomic_store(&g.stop, true);
    }
    uint64_t start = now_ns();
    atomic_store(&g.start_ns, start);
    atomic_store(&g.deadline_ns, start + (uint64_t)(o->max_seconds * 1e9));
    for (unsigned i = 0; i < n_threads; i++) uv_async_send(&threads[i].go);
    for (unsigned i = 0; i < n_threads; i++) uv_thread_join(&threads[i].tid);
    uint64_t end = now_ns();
    if (!started) return 2;
    report(start, end);

    uint64_t ok = atomic_load(&g.ok), errors = atomic_load(&g.errors);
    bool failed = ok == 0 || atomic_load(&g.bad) > 0 ||
                  (double)errors > LOAD_ERROR_SHARE_MAX * (double)(ok + errors) ||
                  (o->wl == WL_WATCH && atomic_load(&g.events) < g.events_expected);
    for (unsigned i = 0; i < n_threads; i++) uv_loop_close(&threads[i].loop);
    if (g.sends && fclose(g.sends) != 0) {
        fprintf(stderr, "qfs_load: --sends %s: %s\n", o->sends, strerror(errno));
        failed = true;
    }
    return failed ? 1 : 0;

err_nomem:
    fprintf(stderr, "qfs_load: out of memory\n");
    return 2;
}
