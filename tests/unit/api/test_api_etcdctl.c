/*
 * test_api_etcdctl.c - the real etcdctl (Debian etcd-client 3.4) against
 * the api/ server with a small in-memory backend.
 *
 * The backend is a sorted array of keys with etcd's revision fields, Range /
 * Put / DeleteRange / a Txn subset, a Watch stream that reports this
 * backend's own puts and deletes, LeaseGrant and MemberList. Writes are
 * answered from a timer, one loop turn later, the way the node answers
 * after Raft, so the deferred reply path is what etcdctl sees. The expected
 * outputs were taken from etcdctl against etcd 3.4 itself.
 *
 * etcdctl runs as a child process under `timeout -s KILL`, with its own
 * deadline here as well. Each child leads its own process group, and it is
 * the group that gets killed (by the child's PID) when the test ends,
 * whatever happened (atexit as the last resort): SIGKILL to `timeout` alone
 * would leave etcdctl running, since `timeout` cannot pass SIGKILL on.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api/api.h"
#include "tests/harness.h"
#include "tests/unit/api/server_thread.h"

#define WAIT_MS 20000
#define KEYS_MAX 1024
#define WATCHERS_MAX 64

/* ---- in-memory backend (runs on the server's loop thread) -------------------- */

struct kv {
    uint8_t *key, *val;
    size_t klen, vlen;
    int64_t create, mod, version, lease;
};

struct watcher {
    struct api_stream *stream;
    int64_t id;
    uint8_t key[256], end[256];
    size_t klen, elen;
};

struct mem {
    struct srv_thread *t;
    struct kv kvs[KEYS_MAX];
    int n;
    int64_t rev;
    struct watcher w[WATCHERS_MAX];
    int n_w;
    int64_t next_watch_id;
    atomic_int watchers;     /* created so far, read by the test thread */
    atomic_int pending_puts; /* puts waiting for their timer */
};

static struct mem M;

static int cmp_bytes(const uint8_t *a, size_t al, const uint8_t *b, size_t bl) {
    int c = memcmp(a, b, al < bl ? al : bl);
    if (c != 0) return c;
    return al < bl ? -1 : al > bl;
}

/* etcd's range rule: no end = one key; end "\0" = from key on; else [key, end). */
static bool in_range(const uint8_t *k, size_t kl, const uint8_t *key, size_t keyl,
                     const uint8_t *end, size_t endl) {
    if (endl == 0) return cmp_bytes(k, kl, key, keyl) == 0;
    bool from_start = keyl == 1 && key[0] == 0;
    if (!from_start && cmp_bytes(k, kl, key, keyl) < 0) return false;
    if (endl == 1 && end[0] == 0) return true;
    return cmp_bytes(k, kl, end, endl) < 0;
}

static int find(const uint8_t *key, size_t len, bool *found) {
    int lo = 0, hi = M.n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        int c = cmp_bytes(M.kvs[mid].key, M.kvs[mid].klen, key, len);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

static void to_pb(const struct kv *k, Mvccpb__KeyValue *out) {
    mvccpb__key_value__init(out);
    out->key.data = k->key;
    out->key.len = k->klen;
    out->value.data = k->val;
    out->value.len = k->vlen;
    out->create_revision = k->create;
    out->mod_revision = k->mod;
    out->version = k->version;
    out->lease = k->lease;
}

static void header(Etcdserverpb__ResponseHeader *h) {
    etcdserverpb__response_header__init(h);
    h->cluster_id = 0x5eed;
    h->member_id = 0x1234abcd;
    h->revision = M.rev;
    h->raft_term = 2;
}

/* Tells matching watchers about one change. */
static void notify(const struct kv *k, int type) {
    for (int i = 0; i < M.n_w; i++) {
        struct watcher *w = &M.w[i];
        if (!in_range(k->key, k->klen, w->key, w->klen, w->end, w->elen)) continue;
        Etcdserverpb__WatchResponse resp = ETCDSERVERPB__WATCH_RESPONSE__INIT;
        Etcdserverpb__ResponseHeader h;
        Mvccpb__Event ev = MVCCPB__EVENT__INIT, *evs[1] = {&ev};
        Mvccpb__KeyValue pkv;
        header(&h);
        to_pb(k, &pkv);
        ev.type = type;
        ev.kv = &pkv;
        resp.header = &h;
        resp.watch_id = w->id;
        resp.events = evs;
        resp.n_events = 1;
        api_stream_send(w->stream, &resp.base);
    }
}

static void do_put(const ProtobufCBinaryData *key, const ProtobufCBinaryData *val, int64_t lease,
                   int64_t rev, Mvccpb__KeyValue *prev, bool *had_prev) {
    bool found;
    int i = find(key->data, key->len, &found);
    *had_prev = found;
    if (found) {
        if (prev) to_pb(&M.kvs[i], prev);
        if (!prev) free(M.kvs[i].val);
    } else {
        if (M.n == KEYS_MAX) return;
        memmove(&M.kvs[i + 1], &M.kvs[i], (size_t)(M.n - i) * sizeof(M.kvs[0]));
        M.n++;
        struct kv *k = &M.kvs[i];
        memset(k, 0, sizeof(*k));
        k->key = malloc(key->len ? key->len : 1);
        memcpy(k->key, key->data, key->len);
        k->klen = key->len;
        k->create = rev;
    }
    struct kv *k = &M.kvs[i];
    if (found && prev) {
        /* prev points at the old value; keep it alive for the response. */
    }
    k->val = malloc(val->len ? val->len : 1);
    if (val->len) memcpy(k->val, val->data, val->len);
    k->vlen = val->len;
    k->mod = rev;
    k->version++;
    k->lease = lease;
    notify(k, MVCCPB__EVENT__EVENT_TYPE__PUT);
}

/* Deletes [key, end); returns how many. */
static int64_t do_delete(const ProtobufCBinaryData *key, const ProtobufCBinaryData *end,
                         int64_t rev) {
    int64_t deleted = 0;
    for (int i = 0; i < M.n;) {
        struct kv *k = &M.kvs[i];
        if (!in_range(k->key, k->klen, key->data, key->len, end->data, end->len)) {
            i++;
            continue;
        }
        k->mod = rev;
        k->vlen = 0;
        notify(k, MVCCPB__EVENT__EVENT_TYPE__DELETE);
        free(k->key);
        free(k->val);
        memmove(&M.kvs[i], &M.kvs[i + 1], (size_t)(M.n - i - 1) * sizeof(M.kvs[0]));
        M.n--;
        deleted++;
    }
    return deleted;
}

/* Fills a RangeResponse; kv array is malloc()ed into *kvs_out / *pbs_out. */
static void do_range(const Etcdserverpb__RangeRequest *req, Etcdserverpb__RangeResponse *resp,
                     Mvccpb__KeyValue **pbs_out, Mvccpb__KeyValue ***kvs_out) {
    etcdserverpb__range_response__init(resp);
    Mvccpb__KeyValue *pbs = calloc((size_t)M.n + 1, sizeof(*pbs));
    Mvccpb__KeyValue **kvs = calloc((size_t)M.n + 1, sizeof(*kvs));
    size_t n = 0;
    int64_t count = 0;
    for (int i = 0; i < M.n; i++) {
        struct kv *k = &M.kvs[i];
        if (!in_range(k->key, k->klen, req->key.data, req->key.len, req->range_end.data,
                      req->range_end.len))
            continue;
        count++;
        if (req->count_only || (req->limit > 0 && (int64_t)n >= req->limit)) continue;
        to_pb(k, &pbs[n]);
        if (req->keys_only) pbs[n].value.len = 0;
        kvs[n] = &pbs[n];
        n++;
    }
    resp->kvs = kvs;
    resp->n_kvs = n;
    resp->count = count;
    resp->more = (int64_t)n < count && !req->count_only;
    *pbs_out = pbs;
    *kvs_out = kvs;
}

static void mem_range(void *ctx, struct api_call *call, const Etcdserverpb__RangeRequest *req) {
    (void)ctx;
    Etcdserverpb__RangeResponse resp;
    Etcdserverpb__ResponseHeader h;
    Mvccpb__KeyValue *pbs, **kvs;
    do_range(req, &resp, &pbs, &kvs);
    header(&h);
    resp.header = &h;
    api_reply(call, &resp.base);
    free(pbs);
    free(kvs);
}

/* A write waits one timer tick, as it would wait for Raft. The request is
 * owned by the call until the reply, so it is read at apply time. */
struct later {
    uv_timer_t timer;
    struct api_call *call;
    const ProtobufCMessage *req;
};

static void later_closed(uv_handle_t *h) {
    free(h->data);
}

static void apply_put(struct api_call *call, const Etcdserverpb__PutRequest *req) {
    Etcdserverpb__PutResponse resp = ETCDSERVERPB__PUT_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    Mvccpb__KeyValue prev;
    bool had_prev;
    M.rev++;
    uint8_t *old_val = NULL;
    bool found;
    int i = find(req->key.data, req->key.len, &found);
    if (found) old_val = M.kvs[i].val;
    do_put(&req->key, &req->value, req->lease, M.rev, &prev, &had_prev);
    header(&h);
    resp.header = &h;
    if (req->prev_kv && had_prev) resp.prev_kv = &prev;
    api_reply(call, &resp.base);
    free(old_val);
}

static void apply_delete(struct api_call *call, const Etcdserverpb__DeleteRangeRequest *req) {
    Etcdserverpb__DeleteRangeResponse resp = ETCDSERVERPB__DELETE_RANGE_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    int64_t n = do_delete(&req->key, &req->range_end, M.rev + 1);
    if (n > 0) M.rev++;
    header(&h);
    resp.header = &h;
    resp.deleted = n;
    api_reply(call, &resp.base);
}

static void later_fire(uv_timer_t *timer) {
    struct later *l = timer->data;
    if (l->req->descriptor == &etcdserverpb__put_request__descriptor)
        apply_put(l->call, (const Etcdserverpb__PutRequest *)l->req);
    else
        apply_delete(l->call, (const Etcdserverpb__DeleteRangeRequest *)l->req);
    atomic_fetch_sub(&M.pending_puts, 1);
    uv_close((uv_handle_t *)&l->timer, later_closed);
}

static void defer(struct api_call *call, const ProtobufCMessage *req) {
    struct later *l = calloc(1, sizeof(*l));
    l->call = call;
    l->req = req;
    uv_timer_init(&M.t->loop, &l->timer);
    l->timer.data = l;
    atomic_fetch_add(&M.pending_puts, 1);
    uv_timer_start(&l->timer, later_fire, 1, 0);
}

static void mem_put(void *ctx, struct api_call *call, const Etcdserverpb__PutRequest *req) {
    (void)ctx;
    defer(call, &req->base);
}

static void mem_delete(void *ctx, struct api_call *call,
                       const Etcdserverpb__DeleteRangeRequest *req) {
    (void)ctx;
    defer(call, &req->base);
}

/* Compare on one key (range_end ignored: "lite"). */
static bool compare(const Etcdserverpb__Compare *c) {
    bool found;
    int i = find(c->key.data, c->key.len, &found);
    const struct kv *k = found ? &M.kvs[i] : NULL;
    int r;
    switch (c->target) {
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__VALUE:
        if (k == NULL) return false;
        r = cmp_bytes(k->val, k->vlen, c->value.data, c->value.len);
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__VERSION:
        r = (k ? k->version : 0) < c->version ? -1 : (k ? k->version : 0) > c->version;
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE:
        r = (k ? k->create : 0) < c->create_revision ? -1
                                                     : (k ? k->create : 0) > c->create_revision;
        break;
    case ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD:
        r = (k ? k->mod : 0) < c->mod_revision ? -1 : (k ? k->mod : 0) > c->mod_revision;
        break;
    default:
        r = (k ? k->lease : 0) < c->lease ? -1 : (k ? k->lease : 0) > c->lease;
        break;
    }
    switch (c->result) {
    case ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL:
        return r == 0;
    case ETCDSERVERPB__COMPARE__COMPARE_RESULT__GREATER:
        return r > 0;
    case ETCDSERVERPB__COMPARE__COMPARE_RESULT__LESS:
        return r < 0;
    default:
        return r != 0;
    }
}

/* Txn subset: compares on single keys; Range, Put, DeleteRange operations
 * (no nested Txn), all at one new revision if anything is written. */
static void mem_txn(void *ctx, struct api_call *call, const Etcdserverpb__TxnRequest *req) {
    (void)ctx;
    bool ok = true;
    for (size_t i = 0; i < req->n_compare; i++) ok = ok && compare(req->compare[i]);
    Etcdserverpb__RequestOp **ops = ok ? req->success : req->failure;
    size_t n_ops = ok ? req->n_success : req->n_failure;
    Etcdserverpb__TxnResponse resp = ETCDSERVERPB__TXN_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    Etcdserverpb__ResponseOp *rops = calloc(n_ops + 1, sizeof(*rops));
    Etcdserverpb__ResponseOp **rop_ptrs = calloc(n_ops + 1, sizeof(*rop_ptrs));
    /* Per-op response bodies, freed after the reply. */
    void **owned = calloc(4 * n_ops + 1, sizeof(void *));
    size_t n_owned = 0;
    uint8_t **old_vals = calloc(n_ops + 1, sizeof(*old_vals));
    int64_t rev = M.rev + 1;
    bool wrote = false;
    for (size_t i = 0; i < n_ops; i++) {
        etcdserverpb__response_op__init(&rops[i]);
        rop_ptrs[i] = &rops[i];
        const Etcdserverpb__RequestOp *op = ops[i];
        if (op->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT) {
            const Etcdserverpb__PutRequest *p = op->request_put;
            Etcdserverpb__PutResponse *pr = calloc(1, sizeof(*pr));
            etcdserverpb__put_response__init(pr);
            bool found, had;
            int k = find(p->key.data, p->key.len, &found);
            if (found) old_vals[i] = M.kvs[k].val;
            Mvccpb__KeyValue prev;
            do_put(&p->key, &p->value, p->lease, rev, &prev, &had);
            wrote = true;
            rops[i].response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_PUT;
            rops[i].response_put = pr;
            owned[n_owned++] = pr;
        } else if (op->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE) {
            const Etcdserverpb__DeleteRangeRequest *d = op->request_delete_range;
            Etcdserverpb__DeleteRangeResponse *dr = calloc(1, sizeof(*dr));
            etcdserverpb__delete_range_response__init(dr);
            dr->deleted = do_delete(&d->key, &d->range_end, rev);
            wrote = wrote || dr->deleted > 0;
            rops[i].response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_DELETE_RANGE;
            rops[i].response_delete_range = dr;
            owned[n_owned++] = dr;
        } else if (op->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE) {
            Etcdserverpb__RangeResponse *rr = calloc(1, sizeof(*rr));
            Mvccpb__KeyValue *pbs, **kvs;
            do_range(op->request_range, rr, &pbs, &kvs);
            rops[i].response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE;
            rops[i].response_range = rr;
            owned[n_owned++] = rr;
            owned[n_owned++] = pbs;
            owned[n_owned++] = kvs;
        }
    }
    if (wrote) M.rev = rev;
    header(&h);
    resp.header = &h;
    resp.succeeded = ok;
    resp.responses = rop_ptrs;
    resp.n_responses = n_ops;
    api_reply(call, &resp.base);
    for (size_t i = 0; i < n_owned; i++) free(owned[i]);
    for (size_t i = 0; i < n_ops; i++) free(old_vals[i]);
    free(old_vals);
    free(owned);
    free(rops);
    free(rop_ptrs);
}

static void mem_watch_open(void *ctx, struct api_stream *s) {
    (void)ctx;
    (void)s;
}

static void watch_created(struct api_stream *s, int64_t id, bool created, const char *why) {
    Etcdserverpb__WatchResponse resp = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    header(&h);
    resp.header = &h;
    resp.watch_id = id;
    resp.created = created;
    resp.canceled = !created;
    resp.cancel_reason = (char *)(why ? why : "");
    api_stream_send(s, &resp.base);
}

static void mem_watch_request(void *ctx, struct api_stream *s,
                              const Etcdserverpb__WatchRequest *req) {
    (void)ctx;
    if (req->request_union_case == ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST) {
        const Etcdserverpb__WatchCreateRequest *c = req->create_request;
        int64_t id = c->watch_id ? c->watch_id : M.next_watch_id++;
        if (M.n_w == WATCHERS_MAX || c->key.len > 256 || c->range_end.len > 256) {
            watch_created(s, id, false, "test backend: watcher limit");
            return;
        }
        struct watcher *w = &M.w[M.n_w++];
        w->stream = s;
        w->id = id;
        memcpy(w->key, c->key.data, c->key.len);
        w->klen = c->key.len;
        if (c->range_end.len) memcpy(w->end, c->range_end.data, c->range_end.len);
        w->elen = c->range_end.len;
        watch_created(s, id, true, NULL);
        atomic_fetch_add(&M.watchers, 1);
    } else if (req->request_union_case ==
               ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CANCEL_REQUEST) {
        for (int i = 0; i < M.n_w; i++) {
            if (M.w[i].stream == s && M.w[i].id == req->cancel_request->watch_id) {
                M.w[i] = M.w[--M.n_w];
                watch_created(s, req->cancel_request->watch_id, false, NULL);
                break;
            }
        }
    }
}

static void drop_watchers(struct api_stream *s) {
    for (int i = 0; i < M.n_w;) {
        if (M.w[i].stream == s)
            M.w[i] = M.w[--M.n_w];
        else
            i++;
    }
}

static void mem_watch_end(void *ctx, struct api_stream *s, enum api_stream_event ev) {
    (void)ctx;
    /* Like etcd, a half-closed watch stream keeps sending events. */
    if (ev == API_STREAM_HALF_CLOSED) return;
    drop_watchers(s);
    api_stream_close(s, API_GRPC_CANCELLED, NULL);
}

static void mem_lease_grant(void *ctx, struct api_call *call,
                            const Etcdserverpb__LeaseGrantRequest *req) {
    (void)ctx;
    Etcdserverpb__LeaseGrantResponse resp = ETCDSERVERPB__LEASE_GRANT_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    header(&h);
    resp.header = &h;
    resp.id = 0x7a11bad0c0ffee01;
    resp.ttl = req->ttl;
    api_reply(call, &resp.base);
}

static void mem_member_list(void *ctx, struct api_call *call,
                            const Etcdserverpb__MemberListRequest *req) {
    (void)ctx;
    (void)req;
    char client[64];
    snprintf(client, sizeof(client), "http://127.0.0.1:%d", M.t->port);
    char *peers[1] = {"http://127.0.0.1:2380"}, *clients[1] = {client};
    Etcdserverpb__Member m = ETCDSERVERPB__MEMBER__INIT, *ms[1] = {&m};
    m.id = 0x1234abcd;
    m.name = "qfs0";
    m.peerurls = peers;
    m.n_peerurls = 1;
    m.clienturls = clients;
    m.n_clienturls = 1;
    Etcdserverpb__MemberListResponse resp = ETCDSERVERPB__MEMBER_LIST_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    header(&h);
    resp.header = &h;
    resp.members = ms;
    resp.n_members = 1;
    api_reply(call, &resp.base);
}

static void mem_free_all(struct srv_thread *t) {
    (void)t;
    for (int i = 0; i < M.n; i++) {
        free(M.kvs[i].key);
        free(M.kvs[i].val);
    }
    M.n = 0;
}

static int start_mem(struct srv_thread *t, const char *urls, const char *cert, const char *key) {
    memset(&M, 0, sizeof(M));
    M.t = t;
    M.rev = 1;
    struct api_backend be = {
        .ctx = &M,
        .range = mem_range,
        .put = mem_put,
        .delete_range = mem_delete,
        .txn = mem_txn,
        .watch_open = mem_watch_open,
        .watch_request = mem_watch_request,
        .watch_end = mem_watch_end,
        .lease_grant = mem_lease_grant,
        .member_list = mem_member_list,
    };
    struct api_options o = {.listen_client_urls = urls, .cert_file = cert, .key_file = key};
    int rc = srv_start(t, &o, &be);
    t->before_close = mem_free_all;
    return rc;
}

/* ---- child processes --------------------------------------------------------- */

#define CHILDREN_MAX 16
static pid_t children[CHILDREN_MAX];

/* Kills the process group a child leads (the child and its descendants). */
static void kill_group(pid_t pid) {
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
}

static void children_kill_all(void) {
    for (int i = 0; i < CHILDREN_MAX; i++) {
        if (children[i] > 0) {
            kill_group(children[i]);
            waitpid(children[i], NULL, 0);
            children[i] = 0;
        }
    }
}

static void child_add(pid_t pid) {
    for (int i = 0; i < CHILDREN_MAX; i++) {
        if (children[i] == 0) {
            children[i] = pid;
            return;
        }
    }
}

static void child_reap(pid_t pid) {
    for (int i = 0; i < CHILDREN_MAX; i++)
        if (children[i] == pid) children[i] = 0;
}

struct proc {
    pid_t pid;
    int in_fd, out_fd, err_fd;
    char out[1 << 16], err[1 << 16];
    size_t out_len, err_len;
    int status;
};

/* Starts `timeout -s KILL 60 etcdctl --endpoints=URL ARGS...` (NULL-ended). */
static int spawn_etcdctl(struct proc *p, const char *endpoint, const char *cacert,
                         const char *const *args) {
    memset(p, 0, sizeof(*p));
    int in[2], out[2], err[2];
    if (pipe(in) || pipe(out) || pipe(err)) return -1;
    const char *argv[40];
    int n = 0;
    char ep[128], ca[512];
    snprintf(ep, sizeof(ep), "--endpoints=%s", endpoint);
    argv[n++] = "timeout";
    argv[n++] = "-s";
    argv[n++] = "KILL";
    argv[n++] = "60";
    argv[n++] = "etcdctl";
    argv[n++] = ep;
    argv[n++] = "--dial-timeout=10s";
    argv[n++] = "--command-timeout=15s";
    if (cacert) {
        snprintf(ca, sizeof(ca), "--cacert=%s", cacert);
        argv[n++] = ca;
    }
    for (int i = 0; args[i] && n < 38; i++) argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        setpgid(0, 0);
        dup2(in[0], 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        close(in[1]);
        close(out[0]);
        close(err[0]);
        setenv("ETCDCTL_API", "3", 1);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    setpgid(pid, pid); /* also here, so a kill right after fork finds the group */
    child_add(pid);
    close(in[0]);
    close(out[1]);
    close(err[1]);
    p->pid = pid;
    p->in_fd = in[1];
    p->out_fd = out[0];
    p->err_fd = err[0];
    fcntl(p->out_fd, F_SETFL, O_NONBLOCK);
    fcntl(p->err_fd, F_SETFL, O_NONBLOCK);
    return 0;
}

/* Reads one pipe; keeps what fits in buf (NUL-terminated), drops the rest. */
static void pipe_read(int *fd, char *buf, size_t cap, size_t *len) {
    char tmp[65536];
    ssize_t r = read(*fd, tmp, sizeof(tmp));
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
        close(*fd);
        *fd = -1;
        return;
    }
    if (r < 0) return;
    size_t keep = (size_t)r;
    if (keep > cap - 1 - *len) keep = cap - 1 - *len;
    memcpy(buf + *len, tmp, keep);
    *len += keep;
    buf[*len] = '\0';
}

/* Reads what the child printed so far, waiting up to timeout_ms. */
static void proc_read(struct proc *p, int timeout_ms) {
    struct pollfd pf[2] = {{.fd = p->out_fd, .events = POLLIN},
                           {.fd = p->err_fd, .events = POLLIN}};
    if (poll(pf, 2, timeout_ms) <= 0) return;
    if (p->out_fd >= 0 && (pf[0].revents & (POLLIN | POLLHUP | POLLERR)))
        pipe_read(&p->out_fd, p->out, sizeof(p->out), &p->out_len);
    if (p->err_fd >= 0 && (pf[1].revents & (POLLIN | POLLHUP | POLLERR)))
        pipe_read(&p->err_fd, p->err, sizeof(p->err), &p->err_len);
}

static void proc_finish(struct proc *p) {
    if (p->in_fd >= 0) close(p->in_fd);
    if (p->out_fd >= 0) close(p->out_fd);
    if (p->err_fd >= 0) close(p->err_fd);
    p->in_fd = p->out_fd = p->err_fd = -1;
}

/* Kills the child (if still running) and collects it. */
static void proc_kill(struct proc *p) {
    kill_group(p->pid);
    waitpid(p->pid, &p->status, 0);
    child_reap(p->pid);
    proc_finish(p);
}

/* Runs etcdctl to completion with `input` on stdin; returns its exit code,
 * or -1 on deadline (the child is killed). */
static int etcdctl_cacert(struct proc *p, const char *endpoint, const char *cacert,
                          const char *input, size_t input_len, const char *const *args) {
    if (spawn_etcdctl(p, endpoint, cacert, args) != 0) return -1;
    if (input && input_len) {
        size_t off = 0;
        while (off < input_len) {
            ssize_t w = write(p->in_fd, input + off, input_len - off);
            if (w <= 0) break;
            off += (size_t)w;
        }
    }
    close(p->in_fd);
    p->in_fd = -1;
    long long end = now_ms() + WAIT_MS;
    while ((p->out_fd >= 0 || p->err_fd >= 0) && now_ms() < end) proc_read(p, 100);
    if (p->out_fd >= 0 || p->err_fd >= 0) {
        proc_kill(p);
        return -1;
    }
    waitpid(p->pid, &p->status, 0);
    child_reap(p->pid);
    proc_finish(p);
    return WIFEXITED(p->status) ? WEXITSTATUS(p->status) : -1;
}

static char endpoint[64];

static int etcdctl(struct proc *p, const char *input, const char *const *args) {
    return etcdctl_cacert(p, endpoint, NULL, input, input ? strlen(input) : 0, args);
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* Asserts an etcdctl run succeeded and printed exactly `want`. */
#define EXPECT_OUT(p, rc, want)                                                                    \
    do {                                                                                           \
        if ((rc) != 0) printf("  etcdctl stderr: %s\n", (p)->err);                                 \
        ASSERT_EQ((rc), 0);                                                                        \
        ASSERT_STR_EQ((p)->out, (want));                                                           \
    } while (0)

/* ---- tests --------------------------------------------------------------------- */

static struct proc P; /* large buffers: not on the stack */

static void kv_body(void) {
    int rc = etcdctl(&P, NULL, ARGS("put", "foo", "bar"));
    EXPECT_OUT(&P, rc, "OK\n");
    rc = etcdctl(&P, NULL, ARGS("get", "foo"));
    EXPECT_OUT(&P, rc, "foo\nbar\n");
    rc = etcdctl(&P, NULL, ARGS("get", "foo", "--print-value-only"));
    EXPECT_OUT(&P, rc, "bar\n");
    rc = etcdctl(&P, NULL, ARGS("put", "foo/a", "1"));
    EXPECT_OUT(&P, rc, "OK\n");
    rc = etcdctl(&P, NULL, ARGS("put", "foo/b", "2"));
    EXPECT_OUT(&P, rc, "OK\n");
    rc = etcdctl(&P, NULL, ARGS("put", "fop", "x"));
    EXPECT_OUT(&P, rc, "OK\n");
    rc = etcdctl(&P, NULL, ARGS("get", "--prefix", "foo/"));
    EXPECT_OUT(&P, rc, "foo/a\n1\nfoo/b\n2\n");
    rc = etcdctl(&P, NULL, ARGS("get", "--prefix", "foo/", "--keys-only", "-w", "fields"));
    ASSERT_EQ(rc, 0);
    ASSERT(strstr(P.out, "\"Count\" : 2") != NULL);
    /* Overwrite: version 2, create revision kept. */
    rc = etcdctl(&P, NULL, ARGS("put", "foo", "baz"));
    EXPECT_OUT(&P, rc, "OK\n");
    rc = etcdctl(&P, NULL, ARGS("get", "foo", "-w", "fields"));
    ASSERT_EQ(rc, 0);
    ASSERT(strstr(P.out, "\"Version\" : 2") != NULL);
    ASSERT(strstr(P.out, "\"CreateRevision\" : 2") != NULL);
    ASSERT(strstr(P.out, "\"ModRevision\" : 6") != NULL);
    ASSERT(strstr(P.out, "\"Value\" : \"baz\"") != NULL);
    rc = etcdctl(&P, NULL, ARGS("del", "foo"));
    EXPECT_OUT(&P, rc, "1\n");
    rc = etcdctl(&P, NULL, ARGS("get", "foo"));
    EXPECT_OUT(&P, rc, "");
    rc = etcdctl(&P, NULL, ARGS("del", "--prefix", "foo/"));
    EXPECT_OUT(&P, rc, "2\n");
    /* "fop" is past the prefix "foo" (range end "fop"), not past "f". */
    rc = etcdctl(&P, NULL, ARGS("get", "--prefix", "foo"));
    EXPECT_OUT(&P, rc, "");
    rc = etcdctl(&P, NULL, ARGS("get", "--from-key", "f"));
    EXPECT_OUT(&P, rc, "fop\nx\n");
}

TEST(etcdctl_put_get_del_prefix) {
    struct srv_thread t;
    ASSERT_EQ(start_mem(&t, "http://127.0.0.1:0", NULL, NULL), 0);
    snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%d", t.port);
    kv_body();
    children_kill_all();
    ASSERT_EQ(srv_stop(&t), 0);
}

static void txn_body(void) {
    int rc = etcdctl(&P, NULL, ARGS("put", "foo", "bar"));
    EXPECT_OUT(&P, rc, "OK\n");
    rc = etcdctl(&P, "value(\"foo\") = \"bar\"\n\nput foo baz\n\nput foo nope\n\n", ARGS("txn"));
    EXPECT_OUT(&P, rc, "SUCCESS\n\nOK\n");
    rc = etcdctl(&P, NULL, ARGS("get", "foo", "--print-value-only"));
    EXPECT_OUT(&P, rc, "baz\n");
    rc = etcdctl(&P, "value(\"foo\") = \"bar\"\n\nput foo again\n\nput foo nope\n\n", ARGS("txn"));
    EXPECT_OUT(&P, rc, "FAILURE\n\nOK\n");
    rc = etcdctl(&P, NULL, ARGS("get", "foo", "--print-value-only"));
    EXPECT_OUT(&P, rc, "nope\n");
    /* Create-if-absent, the way the mount does O_EXCL. */
    rc = etcdctl(&P, "version(\"new\") = \"0\"\n\nput new 1\n\nget new\n\n", ARGS("txn"));
    EXPECT_OUT(&P, rc, "SUCCESS\n\nOK\n");
    rc = etcdctl(&P, "version(\"new\") = \"0\"\n\nput new 2\n\nget new\n\n", ARGS("txn"));
    EXPECT_OUT(&P, rc, "FAILURE\n\nnew\n1\n");
}

TEST(etcdctl_txn) {
    struct srv_thread t;
    ASSERT_EQ(start_mem(&t, "http://127.0.0.1:0", NULL, NULL), 0);
    snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%d", t.port);
    txn_body();
    children_kill_all();
    ASSERT_EQ(srv_stop(&t), 0);
}

static struct proc W;

static bool watch_wait_for(const char *want) {
    long long end = now_ms() + WAIT_MS;
    while (strstr(W.out, want) == NULL && now_ms() < end && W.out_fd >= 0) proc_read(&W, 100);
    return strstr(W.out, want) != NULL;
}

static void watch_body(void) {
    ASSERT_EQ(spawn_etcdctl(&W, endpoint, NULL, ARGS("watch", "--prefix", "app/")), 0);
    /* Wait until the watch is registered, then write. */
    long long end = now_ms() + WAIT_MS;
    while (atomic_load(&M.watchers) < 1 && now_ms() < end) proc_read(&W, 20);
    ASSERT_EQ(atomic_load(&M.watchers), 1);
    int rc = etcdctl(&P, NULL, ARGS("put", "app/x", "hello"));
    EXPECT_OUT(&P, rc, "OK\n");
    rc = etcdctl(&P, NULL, ARGS("put", "other", "nothing"));
    EXPECT_OUT(&P, rc, "OK\n");
    rc = etcdctl(&P, NULL, ARGS("del", "app/x"));
    EXPECT_OUT(&P, rc, "1\n");
    ASSERT(watch_wait_for("PUT\napp/x\nhello\nDELETE\napp/x\n\n"));
    ASSERT_STR_EQ(W.out, "PUT\napp/x\nhello\nDELETE\napp/x\n\n");
    if (W.err_len) printf("  watch stderr: %s\n", W.err);
}

TEST(etcdctl_watch_sees_puts_and_deletes) {
    struct srv_thread t;
    ASSERT_EQ(start_mem(&t, "http://127.0.0.1:0", NULL, NULL), 0);
    snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%d", t.port);
    watch_body();
    if (W.pid > 0) proc_kill(&W);
    children_kill_all();
    ASSERT_EQ(srv_stop(&t), 0);
}

static void misc_body(int port) {
    /* No backend entry: etcdctl reports gRPC UNIMPLEMENTED. */
    int rc = etcdctl(&P, NULL, ARGS("compaction", "1"));
    ASSERT_NE(rc, 0);
    ASSERT(strstr(P.err, "code = Unimplemented") != NULL);
    ASSERT(strstr(P.err, "etcdserverpb.KV/Compact is not implemented") != NULL);
    rc = etcdctl(&P, NULL, ARGS("lease", "grant", "60"));
    EXPECT_OUT(&P, rc, "lease 7a11bad0c0ffee01 granted with TTL(60s)\n");
    char want[160];
    snprintf(want, sizeof(want),
             "1234abcd, started, qfs0, http://127.0.0.1:2380, http://127.0.0.1:%d, false\n", port);
    rc = etcdctl(&P, NULL, ARGS("member", "list"));
    EXPECT_OUT(&P, rc, want);
    /* A value near etcd's default request limit (1.5 MiB) through stdin. */
    size_t n = 1400u * 1024u;
    char *big = malloc(n + 1);
    for (size_t i = 0; i < n; i++) big[i] = (char)('a' + i % 26);
    big[n] = '\0';
    rc = etcdctl_cacert(&P, endpoint, NULL, big, n, ARGS("put", "big"));
    EXPECT_OUT(&P, rc, "OK\n");
    rc = etcdctl(&P, NULL, ARGS("get", "big", "--print-value-only"));
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(P.out_len, sizeof(P.out) - 1); /* buffer full: the value is longer */
    ASSERT_MEM_EQ(P.out, big, P.out_len);
    rc = etcdctl(&P, NULL, ARGS("get", "big", "--keys-only", "-w", "fields"));
    ASSERT_EQ(rc, 0);
    ASSERT(strstr(P.out, "\"Count\" : 1") != NULL);
    ASSERT(strstr(P.out, "\"Key\" : \"big\"") != NULL);
    free(big);
}

TEST(etcdctl_unimplemented_lease_member_large_value) {
    struct srv_thread t;
    ASSERT_EQ(start_mem(&t, "http://127.0.0.1:0", NULL, NULL), 0);
    snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%d", t.port);
    misc_body(t.port);
    children_kill_all();
    ASSERT_EQ(srv_stop(&t), 0);
}

/* ---- TLS --------------------------------------------------------------------- */

static char tls_dir[64];

static int make_cert(void) {
    snprintf(tls_dir, sizeof(tls_dir), "/tmp/qfs-api-tls-XXXXXX");
    if (mkdtemp(tls_dir) == NULL) return -1;
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout %s/key.pem -out %s/cert.pem -days 2 -subj /CN=127.0.0.1 "
             "-addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1",
             tls_dir, tls_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void remove_cert(void) {
    char p[128];
    snprintf(p, sizeof(p), "%s/key.pem", tls_dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/cert.pem", tls_dir);
    unlink(p);
    rmdir(tls_dir);
}

static void tls_body(const char *cert, int tls_port, int plain_port) {
    char ep[64];
    snprintf(ep, sizeof(ep), "https://127.0.0.1:%d", tls_port);
    int rc = etcdctl_cacert(&P, ep, cert, NULL, 0, ARGS("put", "secure", "yes"));
    EXPECT_OUT(&P, rc, "OK\n");
    rc = etcdctl_cacert(&P, ep, cert, NULL, 0, ARGS("get", "secure"));
    EXPECT_OUT(&P, rc, "secure\nyes\n");
    /* The plaintext listener of the same server sees the same data. */
    snprintf(ep, sizeof(ep), "http://127.0.0.1:%d", plain_port);
    rc = etcdctl_cacert(&P, ep, NULL, NULL, 0, ARGS("get", "secure", "--print-value-only"));
    EXPECT_OUT(&P, rc, "yes\n");
    /* A client that does not trust the certificate fails the handshake. */
    snprintf(ep, sizeof(ep), "https://127.0.0.1:%d", tls_port);
    rc = etcdctl_cacert(&P, ep, NULL, NULL, 0,
                        ARGS("--dial-timeout=2s", "--command-timeout=3s", "get", "secure"));
    ASSERT_NE(rc, 0);
}

static void get_port1(struct srv_thread *t, void *arg) {
    *(int *)arg = api_server_port(t->server, 1);
}

TEST(etcdctl_over_tls_with_alpn_h2) {
    ASSERT_EQ(make_cert(), 0);
    char cert[128], key[128];
    snprintf(cert, sizeof(cert), "%s/cert.pem", tls_dir);
    snprintf(key, sizeof(key), "%s/key.pem", tls_dir);
    struct srv_thread t;
    int rc = start_mem(&t, "https://127.0.0.1:0,http://127.0.0.1:0", cert, key);
    if (rc != 0) {
        printf("  %s: %s\n", api_strerror(rc), t.errmsg);
        remove_cert();
        ASSERT_EQ(rc, 0);
    }
    int plain = 0;
    srv_call(&t, get_port1, &plain);
    tls_body(cert, t.port, plain);
    children_kill_all();
    remove_cert();
    ASSERT_EQ(srv_stop(&t), 0);
}

/* ---- grpc C-core (python3-grpcio): a second, independent client stack ---- */

/* Raw protobuf bytes, built by hand so no generated Python code is needed.
 * Prints OK when every check passed. */
static const char grpcio_script[] =
    "import sys, grpc, queue\n"
    "ch = grpc.insecure_channel(sys.argv[1])\n"
    "ident = lambda b: b\n"
    "def unary(path):\n"
    "    return ch.unary_unary(path, request_serializer=ident, response_deserializer=ident)\n"
    "put = unary('/etcdserverpb.KV/Put')\n"
    "rng = unary('/etcdserverpb.KV/Range')\n"
    "put(b'\\x0a\\x03foo\\x12\\x03bar', timeout=10)\n"
    "r = rng(b'\\x0a\\x03foo', timeout=10)\n"
    "assert b'\\x2a\\x03bar' in r, r\n"
    "for path, code in (('/etcdserverpb.Auth/AuthEnable', grpc.StatusCode.UNIMPLEMENTED),\n"
    "                   ('/etcdserverpb.KV/Compact', grpc.StatusCode.UNIMPLEMENTED),\n"
    "                   ('/etcdserverpb.KV/Range', grpc.StatusCode.INTERNAL)):\n"
    "    try:\n"
    "        unary(path)(b'\\xff\\xff' if code == grpc.StatusCode.INTERNAL else b'', timeout=10)\n"
    "        raise SystemExit('no error from ' + path)\n"
    "    except grpc.RpcError as e:\n"
    "        assert e.code() == code, (path, e.code(), e.details())\n"
    "big = b'\\x0a\\x03big\\x12\\x80\\x80\\xc0\\x01' + bytes(3 << 20)\n"
    "try:\n"
    "    put(big, timeout=10)\n"
    "    raise SystemExit('3 MiB request accepted')\n"
    "except grpc.RpcError as e:\n"
    "    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (e.code(), e.details())\n"
    "reqs = queue.Queue()\n"
    "reqs.put(b'\\x0a\\x05\\x0a\\x03foo')\n"
    "watch = ch.stream_stream('/etcdserverpb.Watch/Watch', request_serializer=ident,\n"
    "                         response_deserializer=ident)\n"
    "it = watch(iter(reqs.get, None), timeout=20)\n"
    "first = next(it)\n"
    "assert b'\\x18\\x01' in first, first\n"
    "put(b'\\x0a\\x03foo\\x12\\x04bar2', timeout=10)\n"
    "ev = next(it)\n"
    "assert b'bar2' in ev, ev\n"
    "it.cancel()\n"
    "reqs.put(None)\n"
    "print('OK')\n";

TEST(grpcio_client_interop) {
    if (system("/usr/bin/python3 -c 'import grpc' >/dev/null 2>&1") != 0) {
        printf("  skipped: /usr/bin/python3 has no grpc module (python3-grpcio)\n");
        return;
    }
    struct srv_thread t;
    ASSERT_EQ(start_mem(&t, "http://127.0.0.1:0", NULL, NULL), 0);
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", t.port);
    int in[2], out[2];
    ASSERT_EQ(pipe(in), 0);
    ASSERT_EQ(pipe(out), 0);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        setpgid(0, 0);
        dup2(in[0], 0);
        dup2(out[1], 1);
        dup2(out[1], 2);
        close(in[1]);
        close(out[0]);
        execl("/usr/bin/timeout", "timeout", "-s", "KILL", "60", "/usr/bin/python3", "-", target,
              (char *)NULL);
        _exit(127);
    }
    setpgid(pid, pid);
    child_add(pid);
    close(in[0]);
    close(out[1]);
    ssize_t w = write(in[1], grpcio_script, sizeof(grpcio_script) - 1);
    close(in[1]);
    memset(&P, 0, sizeof(P));
    P.pid = pid;
    P.in_fd = -1;
    P.out_fd = out[0];
    P.err_fd = -1;
    long long end = now_ms() + WAIT_MS;
    while (P.out_fd >= 0 && now_ms() < end) {
        struct pollfd pf = {.fd = P.out_fd, .events = POLLIN};
        if (poll(&pf, 1, 100) > 0) pipe_read(&P.out_fd, P.out, sizeof(P.out), &P.out_len);
    }
    proc_kill(&P);
    children_kill_all();
    ASSERT_EQ(srv_stop(&t), 0);
    ASSERT_EQ(w, (ssize_t)sizeof(grpcio_script) - 1);
    if (strcmp(P.out, "OK\n") != 0) printf("  python: %s\n", P.out);
    ASSERT_STR_EQ(P.out, "OK\n");
}

int main(int argc, char **argv) {
    atexit(children_kill_all);
    signal(SIGPIPE, SIG_IGN);
    return harness_main(argc, argv);
}
