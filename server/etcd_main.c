/*
 * etcd_main.c - start and stop of the etcd v3 services, the table of
 * api_backend entries, the node hooks they ride on, response headers, the
 * mapping of our error codes to etcd's gRPC statuses, and the arena that
 * holds one answer's protobuf tree.
 *
 * Life of struct etcd: created by etcd__start(), marked stopping by
 * etcd__stop(), freed when its reference count drops to zero: one reference
 * for the api server (released by its close_cb), one per open libuv handle
 * of the services (released by the handle's close callback), one per node
 * callback still to come (submissions, barriers, membership changes). A
 * callback that arrives after the stop still finds the struct and answers
 * its call. Everything runs on the node loop thread.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "net/net.h"
#include "server/etcd.h"
#include "server/server.h"

_Noreturn void etcd__assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "quorumfs: assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}

/* --------------------------------------------------------------- arena */

/* Smallest chunk the arena asks malloc for. */
#define ARENA_CHUNK_BYTES 4096u
#define ARENA_ALIGN 16u

struct etcd_arena_chunk {
    struct etcd_arena_chunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

void *etcd__alloc(struct etcd_arena *a, size_t n) {
    n = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (n == 0) n = ARENA_ALIGN;
    struct etcd_arena_chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > ARENA_CHUNK_BYTES ? n : ARENA_CHUNK_BYTES;
        c = malloc(sizeof *c + cap);
        if (!c) return NULL;
        c->used = 0;
        c->cap = cap;
        c->next = a->head;
        a->head = c;
    }
    void *p = c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

void *etcd__memdup(struct etcd_arena *a, const void *p, size_t n) {
    void *q = etcd__alloc(a, n);
    if (q && n) memcpy(q, p, n);
    return q;
}

void etcd__arena_free(struct etcd_arena *a) {
    while (a->head) {
        struct etcd_arena_chunk *c = a->head;
        a->head = c->next;
        free(c);
    }
}

/* --------------------------------------------------------------- errors */

struct grpc_err {
    int rc;
    enum api_grpc_code code;
    const char *msg;
};

static const struct grpc_err grpc_errs[] = {
    {STORE_ECOMPACTED, API_GRPC_OUT_OF_RANGE,
     "etcdserver: mvcc: required revision has been compacted"},
    {STORE_EFUTUREREV, API_GRPC_OUT_OF_RANGE,
     "etcdserver: mvcc: required revision is a future revision"},
    {STORE_ENOSPACE, API_GRPC_RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"},
    {STORE_ETOOLARGE, API_GRPC_INVALID_ARGUMENT, "etcdserver: request is too large"},
    /* etcd bounds keys only by the request size. */
    {STORE_EKEYTOOLARGE, API_GRPC_INVALID_ARGUMENT, "etcdserver: request is too large"},
    {STORE_EKEYEMPTY, API_GRPC_INVALID_ARGUMENT, "etcdserver: key is not provided"},
    {STORE_ELEASENOTFOUND, API_GRPC_NOT_FOUND, "etcdserver: requested lease not found"},
    {STORE_ETOOMANYOPS, API_GRPC_INVALID_ARGUMENT,
     "etcdserver: too many operations in txn request"},
    {STORE_EDUPLICATEKEY, API_GRPC_INVALID_ARGUMENT,
     "etcdserver: duplicate key given in txn request"},
    {STORE_EKEYNOTFOUND, API_GRPC_INVALID_ARGUMENT, "etcdserver: key not found"},
    {STORE_EVALUEPROVIDED, API_GRPC_INVALID_ARGUMENT, "etcdserver: value is provided"},
    {STORE_ELEASEPROVIDED, API_GRPC_INVALID_ARGUMENT, "etcdserver: lease is provided"},
    {STORE_ELEASEEXISTS, API_GRPC_FAILED_PRECONDITION, "etcdserver: lease already exists"},
    {STORE_ELEASETTLTOOLARGE, API_GRPC_OUT_OF_RANGE, "etcdserver: too large lease TTL"},
    {STORE_ENOMEM, API_GRPC_RESOURCE_EXHAUSTED, "etcdserver: out of memory"},
    {-ENOMEM, API_GRPC_RESOURCE_EXHAUSTED, "etcdserver: out of memory"},
    {-ETIMEDOUT, API_GRPC_UNAVAILABLE, "etcdserver: request timed out"},
    {-ECANCELED, API_GRPC_UNAVAILABLE, "etcdserver: server stopped"},
    {-EAGAIN, API_GRPC_RESOURCE_EXHAUSTED, "etcdserver: too many requests"},
    {RAFT_ENOLEADER, API_GRPC_UNAVAILABLE, "etcdserver: no leader"},
    {ETCD_ENOLEADER, API_GRPC_UNAVAILABLE, "etcdserver: no leader"},
    {ETCD_ENOTLEADER, API_GRPC_FAILED_PRECONDITION, "etcdserver: not leader"},
    {ETCD_EMEMBERNOTFOUND, API_GRPC_NOT_FOUND, "etcdserver: member not found"},
    {ETCD_EPEERURLEXISTS, API_GRPC_FAILED_PRECONDITION, "etcdserver: Peer URLs already exists"},
    {ETCD_EMEMBERBADURLS, API_GRPC_INVALID_ARGUMENT, "etcdserver: given member URLs are invalid"},
    {ETCD_EMEMBERNOTLEARNER, API_GRPC_FAILED_PRECONDITION,
     "etcdserver: can only promote a learner member"},
    {ETCD_ELEARNERNOTREADY, API_GRPC_FAILED_PRECONDITION,
     "etcdserver: can only promote a learner member which is in sync with leader"},
    {ETCD_EUNHEALTHY, API_GRPC_UNAVAILABLE, "etcdserver: unhealthy cluster"},
    {ETCD_EBADTRANSFEREE, API_GRPC_FAILED_PRECONDITION, "etcdserver: bad leader transferee"},
    {ETCD_ELEARNERRPC, API_GRPC_UNAVAILABLE, "etcdserver: rpc not supported for learner"},
    {ETCD_ETOOMANYREQUESTS, API_GRPC_RESOURCE_EXHAUSTED, "etcdserver: too many requests"},
    {ETCD_ESTOPPED, API_GRPC_UNAVAILABLE, "etcdserver: server stopped"},
    /* Not in etcd's toGRPCErrorMap: its clients see UNKNOWN. */
    {ETCD_ETRANSFERTIMEOUT, API_GRPC_UNKNOWN,
     "etcdserver: request timed out, leader transfer took too long"},
};

const char *etcd__strerror(int rc) {
    switch (rc) {
#define ETCD__ERR_TEXT(name, value, text)                                                          \
    case name: return text;
        ETCD_ERRORS(ETCD__ERR_TEXT)
#undef ETCD__ERR_TEXT
    default: return store_strerror(rc);
    }
}

enum api_grpc_code etcd__grpc_error(int rc, const char **message) {
    for (size_t i = 0; i < sizeof grpc_errs / sizeof grpc_errs[0]; i++) {
        if (grpc_errs[i].rc == rc) {
            *message = grpc_errs[i].msg;
            return grpc_errs[i].code;
        }
    }
    /* etcd answers errors it has no mapping for with UNKNOWN and the text. */
    *message = etcd__strerror(rc);
    return API_GRPC_UNKNOWN;
}

void etcd__reply_error(struct api_call *call, int rc) {
    const char *msg;
    enum api_grpc_code code = etcd__grpc_error(rc, &msg);
    api_reply_error(call, code, msg);
}

/* --------------------------------------------------------------- state */

void etcd__ref(struct etcd *e) { e->refs++; }

static void etcd_free(struct etcd *e) {
    etcd__watch_free(e);
    etcd__lease_free(e);
    free(e);
}

void etcd__unref(struct etcd *e) {
    ETCD_ASSERT(e->refs > 0);
    if (--e->refs == 0) etcd_free(e);
}

const struct node_status *etcd__status(struct etcd *e) {
    uint64_t now = uv_now(e->loop);
    if (!e->st_valid || e->st_ms != now) {
        node__status(e->node, &e->st);
        e->st_ms = now;
        e->st_valid = true;
        if (e->st.leader != 0 && e->st.leader != e->leader_seen) {
            if (e->leader_seen != 0 || e->leader_changes == 0) e->leader_changes++;
            e->leader_seen = e->st.leader;
        }
    }
    return &e->st;
}

void etcd__status_invalidate(struct etcd *e) { e->st_valid = false; }

int64_t etcd__current_revision(struct etcd *e) {
    int64_t rev = store_current_revision(node__store_acquire(e->node));
    node__store_release(e->node);
    return rev;
}

void etcd__header(struct etcd *e, Etcdserverpb__ResponseHeader *h, int64_t rev) {
    const struct node_status *st = etcd__status(e);
    h->cluster_id = st->cluster_id;
    h->member_id = st->id;
    h->raft_term = st->term;
    h->revision = rev ? rev : etcd__current_revision(e);
}

/* --------------------------------------------------------------- alarms */

void etcd__alarm_nospace(struct etcd *e) {
    uint64_t id = etcd__status(e)->id;
    for (size_t i = 0; i < e->n_alarms; i++)
        if (e->alarms[i].member_id == id && e->alarms[i].type == ETCDSERVERPB__ALARM_TYPE__NOSPACE)
            return;
    if (e->n_alarms == ETCD_ALARMS_MAX) return;
    e->alarms[e->n_alarms++] =
        (struct etcd_alarm){.member_id = id, .type = ETCDSERVERPB__ALARM_TYPE__NOSPACE};
}

bool etcd__alarm_blocks_puts(const struct etcd *e) {
    /* etcd's applierV3Capped: any NOSPACE alarm refuses puts and grants. */
    for (size_t i = 0; i < e->n_alarms; i++)
        if (e->alarms[i].type == ETCDSERVERPB__ALARM_TYPE__NOSPACE) return true;
    return false;
}

/* --------------------------------------------------------------- submit */

struct submit {
    struct etcd *e;
    node_done_cb cb;
    void *arg;
};

static void submit_done(void *arg, int err, const struct store_result *res) {
    struct submit *s = arg;
    struct etcd *e = s->e;
    /* The node may report a rejected request through err, res or both. */
    int rc = err ? err : (res ? res->err : 0);
    if (rc == STORE_ENOSPACE) etcd__alarm_nospace(e);
    ETCD_ASSERT(e->proposals_pending > 0);
    e->proposals_pending--;
    if (res == NULL && err != 0) e->proposals_failed++;
    s->cb(s->arg, err, res);
    free(s);
    etcd__unref(e);
}

static bool request_puts(const struct store_request *req) {
    if (req->type == STORE_REQ_LEASE_GRANT) return true;
    return req->type == STORE_REQ_TXN && etcd__txn_writes(&req->u.txn, false);
}

int etcd__submit(struct etcd *e, struct store_request *req, node_done_cb cb, void *arg) {
    if (e->stopping) return ETCD_ESTOPPED;
    if (etcd__alarm_blocks_puts(e) && request_puts(req)) return STORE_ENOSPACE;
    struct submit *s = malloc(sizeof *s);
    if (!s) return -ENOMEM;
    *s = (struct submit){e, cb, arg};
    etcd__ref(e); /* before: a callback may come within the call */
    e->proposals_pending++;
    int rc = node__submit(e->node, req, NODE_ORIGIN_CLIENT, submit_done, s);
    if (rc) {
        e->proposals_pending--;
        free(s);
        if (rc == STORE_ENOSPACE) etcd__alarm_nospace(e);
        etcd__unref(e);
        return rc;
    }
    return 0;
}

/* --------------------------------------------------------------- hooks */

static void apply_hook(void *ctx, const struct store_result *res) {
    struct etcd *e = ctx;
    etcd__lease_on_apply(e, res);
    etcd__watch_on_apply(e, res);
}

static void leader_hook(void *ctx, bool leading) {
    struct etcd *e = ctx;
    etcd__status_invalidate(e);
    etcd__lease_on_leader(e, leading);
}

static void stream_drained(void *ctx, struct api_stream *stream) {
    struct etcd *e = ctx;
    const int *kind = api_stream_data(stream);
    if (!kind) return;
    if (*kind == ETCD_STREAM_WATCH)
        etcd__watch_drained(e, stream);
    else if (*kind == ETCD_STREAM_SNAPSHOT)
        etcd__snapshot_drained(e, stream);
    /* Keepalive answers are small and never wait for room. */
}

/* --------------------------------------------------------------- registry */

/* etcd__stop() receives the api server; this finds its services. A process
 * runs one node, tests a few: a list is enough. */
struct reg {
    struct reg *next;
    struct api_server *api;
    struct etcd *e;
};
static struct reg *registry;

static int reg_add(struct api_server *api, struct etcd *e) {
    struct reg *r = malloc(sizeof *r);
    if (!r) return -ENOMEM;
    *r = (struct reg){registry, api, e};
    registry = r;
    return 0;
}

static struct etcd *reg_take(struct api_server *api) {
    for (struct reg **rp = &registry; *rp; rp = &(*rp)->next) {
        if ((*rp)->api == api) {
            struct reg *r = *rp;
            struct etcd *e = r->e;
            *rp = r->next;
            free(r);
            return e;
        }
    }
    return NULL;
}

/* --------------------------------------------------------------- start/stop */

/*
 * etcd 3.4's gRPC interceptors (v3rpc/interceptor.go): a member that is a
 * learner serves only Status and serializable Range; every other unary RPC
 * and every stream (Watch, LeaseKeepAlive, and in 3.4.23 Snapshot too, as
 * a real etcd learner answers it) gets UNAVAILABLE "etcdserver: rpc not
 * supported for learner". The KV entries and LeaseGrant/LeaseRevoke check
 * it themselves; the rest are guarded here.
 */
#define LEARNER_GUARD(entry, type)                                                     \
    static void learner_##entry(void *ctx, struct api_call *call, const type *req) {   \
        if (etcd__status(ctx)->learner) {                                              \
            etcd__reply_error(call, ETCD_ELEARNERRPC);                                 \
            return;                                                                    \
        }                                                                              \
        etcd__##entry(ctx, call, req);                                                 \
    }
LEARNER_GUARD(lease_time_to_live, Etcdserverpb__LeaseTimeToLiveRequest)
LEARNER_GUARD(lease_leases, Etcdserverpb__LeaseLeasesRequest)
LEARNER_GUARD(member_add, Etcdserverpb__MemberAddRequest)
LEARNER_GUARD(member_remove, Etcdserverpb__MemberRemoveRequest)
LEARNER_GUARD(member_update, Etcdserverpb__MemberUpdateRequest)
LEARNER_GUARD(member_list, Etcdserverpb__MemberListRequest)
LEARNER_GUARD(member_promote, Etcdserverpb__MemberPromoteRequest)
LEARNER_GUARD(alarm, Etcdserverpb__AlarmRequest)
LEARNER_GUARD(defragment, Etcdserverpb__DefragmentRequest)
LEARNER_GUARD(hash, Etcdserverpb__HashRequest)
LEARNER_GUARD(hash_kv, Etcdserverpb__HashKVRequest)
LEARNER_GUARD(move_leader, Etcdserverpb__MoveLeaderRequest)
#undef LEARNER_GUARD

#define LEARNER_STREAM_GUARD(entry)                                                    \
    static void learner_##entry(void *ctx, struct api_stream *stream) {                \
        if (etcd__status(ctx)->learner) {                                              \
            api_stream_close(stream, API_GRPC_UNAVAILABLE,                             \
                             "etcdserver: rpc not supported for learner");             \
            return;                                                                    \
        }                                                                              \
        etcd__##entry(ctx, stream);                                                    \
    }
LEARNER_STREAM_GUARD(watch_open)
LEARNER_STREAM_GUARD(lease_keep_alive_open)
#undef LEARNER_STREAM_GUARD

static void learner_snapshot(void *ctx, struct api_stream *stream,
                             const Etcdserverpb__SnapshotRequest *req) {
    if (etcd__status(ctx)->learner) {
        api_stream_close(stream, API_GRPC_UNAVAILABLE, "etcdserver: rpc not supported for learner");
        return;
    }
    etcd__snapshot(ctx, stream, req);
}

static const struct api_backend backend_template = {
    .range = etcd__kv_range,
    .put = etcd__kv_put,
    .delete_range = etcd__kv_delete_range,
    .txn = etcd__kv_txn,
    .compact = etcd__kv_compact,
    .watch_open = learner_watch_open,
    .watch_request = etcd__watch_request,
    .watch_end = etcd__watch_end,
    .lease_grant = etcd__lease_grant,
    .lease_revoke = etcd__lease_revoke,
    .lease_keep_alive_open = learner_lease_keep_alive_open,
    .lease_keep_alive_request = etcd__lease_keep_alive_request,
    .lease_keep_alive_end = etcd__lease_keep_alive_end,
    .lease_time_to_live = learner_lease_time_to_live,
    .lease_leases = learner_lease_leases,
    .member_add = learner_member_add,
    .member_remove = learner_member_remove,
    .member_update = learner_member_update,
    .member_list = learner_member_list,
    .member_promote = learner_member_promote,
    .alarm = learner_alarm,
    .status = etcd__status_rpc,
    .defragment = learner_defragment,
    .hash = learner_hash,
    .hash_kv = learner_hash_kv,
    .snapshot = learner_snapshot,
    .snapshot_end = etcd__snapshot_end,
    .move_leader = learner_move_leader,
    .health = etcd__health,
    .metrics = etcd__metrics,
    .stream_drained = stream_drained,
};

static void server_closed(void *data) { etcd__unref(data); }

/* Stops everything but the api server; shared by etcd__stop() and a failed
 * start. */
static void stop_services(struct etcd *e) {
    e->stopping = true;
    node__set_hooks(e->node, NULL, NULL, NULL);
    etcd__snapshot_stop_all(e);
    etcd__watch_stop(e);
    etcd__lease_stop(e);
}

int etcd__start(struct node *n, struct api_server **out) {
    struct etcd *e = calloc(1, sizeof *e);
    if (!e) return -ENOMEM;
    e->node = n;
    e->loop = node__loop(n);
    e->cfg = node__config(n);
    e->refs = 1; /* the api server, released by server_closed() */
    e->max_request_bytes =
        e->cfg->max_request_bytes ? e->cfg->max_request_bytes : API_MAX_REQUEST_BYTES_DEFAULT;
    etcd__snapshot_cleanup(e->cfg->data_dir);
    int rc = etcd__watch_init(e);
    if (rc == 0) rc = etcd__lease_init(e);
    if (rc) goto err_services;

    struct api_backend be = backend_template;
    be.ctx = e;
    char why[API_ERRMSG_SIZE] = "";
    struct api_options opt = {
        .listen_client_urls = e->cfg->listen_client_urls,
        .listen_metrics_urls = e->cfg->listen_metrics_urls,
        .errmsg = why,
        .cert_file = e->cfg->cert_file[0] ? e->cfg->cert_file : NULL,
        .key_file = e->cfg->key_file[0] ? e->cfg->key_file : NULL,
        .max_request_bytes = e->max_request_bytes,
        /* etcd: a trusted CA file alone also requires client certificates. */
        .client_cert_auth = e->cfg->client_cert_auth || e->cfg->trusted_ca_file[0],
        .trusted_ca_file = e->cfg->trusted_ca_file[0] ? e->cfg->trusted_ca_file : NULL,
        .client_crl_file = e->cfg->client_crl_file[0] ? e->cfg->client_crl_file : NULL,
        .cipher_list = e->cfg->cipher_list[0] ? e->cfg->cipher_list : NULL,
    };
    /* etcd's --auto-tls: a self-signed certificate in DATA-DIR/fixtures/client. */
    char auto_dir[1100], auto_cert[1200], auto_key[1200];
    if (opt.cert_file == NULL && e->cfg->auto_tls) {
        snprintf(auto_dir, sizeof auto_dir, "%s/fixtures/client", e->cfg->data_dir);
        rc = net_tls_self_cert(auto_dir, e->cfg->listen_client_urls, why, sizeof why);
        if (rc) {
            fprintf(stderr, "quorumfs: %s\n", why);
            goto err_services;
        }
        snprintf(auto_cert, sizeof auto_cert, "%s/cert.pem", auto_dir);
        snprintf(auto_key, sizeof auto_key, "%s/key.pem", auto_dir);
        opt.cert_file = auto_cert;
        opt.key_file = auto_key;
    }
    rc = api_server_new(e->loop, &opt, &be, &e->api);
    if (rc) {
        /* The reason, in the words etcd uses ("bind: address already in
         * use"); the caller says which URLs it could not serve. */
        fprintf(stderr, "quorumfs: %s\n", why[0] ? why : api_strerror(rc));
        goto err_services;
    }
    rc = reg_add(e->api, e);
    if (rc) {
        stop_services(e);
        api_server_close(e->api, server_closed, e);
        return rc;
    }
    node__set_hooks(n, apply_hook, leader_hook, e);
    /* The hook reports changes of leadership; this member may lead already. */
    const struct node_status *st = etcd__status(e);
    if (st->leader != 0 && st->leader == st->id) etcd__lease_on_leader(e, true);
    *out = e->api;
    return 0;

err_services:
    stop_services(e);
    etcd__unref(e); /* freed once the timers' close callbacks ran */
    return rc;
}

void etcd__stop(struct api_server *s) {
    struct etcd *e = reg_take(s);
    if (!e) return;
    stop_services(e);
    api_server_close(e->api, server_closed, e);
}

/* --------------------------------------------------------------- health */

struct health {
    struct etcd *e;
    struct api_call *call;
};

static void health_answer(struct etcd *e, struct api_call *call, bool ok) {
    if (ok)
        e->health_success++;
    else
        e->health_failures++;
    api_reply_health(call, ok);
}

static void health_barrier_done(void *arg, int err) {
    struct health *h = arg;
    struct etcd *e = h->e;
    health_answer(e, h->call, err == 0);
    free(h);
    etcd__unref(e);
}

void etcd__health(void *ctx, struct api_call *call) {
    struct etcd *e = ctx;
    ETCD_ASSERT(call != NULL);
    etcd__status_invalidate(e);
    /* etcd 3.4: any alarm, then no leader, then a failed QGET. */
    if (e->stopping || e->n_alarms > 0 || etcd__status(e)->leader == 0) {
        health_answer(e, call, false);
        return;
    }
    struct health *h = malloc(sizeof *h);
    if (!h) {
        health_answer(e, call, false);
        return;
    }
    *h = (struct health){e, call};
    etcd__ref(e);
    if (node__read_barrier(e->node, health_barrier_done, h) != 0) {
        free(h);
        etcd__unref(e);
        health_answer(e, call, false);
    }
}

/* --------------------------------------------------------------- metrics */

/* One family with one unlabelled sample. */
static void metric(struct api_text *out, const char *name, const char *type, const char *help,
                   uint64_t value) {
    api_text_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name, help, name, type, name,
                    (unsigned long long)value);
}

void etcd__metrics(void *ctx, struct api_text *out) {
    struct etcd *e = ctx;
    ETCD_ASSERT(out != NULL);
    etcd__status_invalidate(e);
    const struct node_status *st = etcd__status(e);
    uint64_t db = 0;
    int64_t keys = 0;
    struct store *s = node__store_acquire(e->node);
    if (store_db_size(s, &db) != 0) db = 0;
    /* A count over the whole key space (etcd keeps this gauge in memory). */
    struct store_range_req q = {.key = {(const uint8_t *)"\0", 1},
                                .range_end = {(const uint8_t *)"\0", 1},
                                .count_only = true};
    struct store_range_result r;
    if (store_range(s, &q, &r) == 0) {
        keys = r.count;
        store_range_result_release(&r);
    }
    node__store_release(e->node);

    api_text_printf(out,
                    "# HELP etcd_cluster_version Which version is running. 1 for "
                    "'cluster_version' label with current cluster version\n"
                    "# TYPE etcd_cluster_version gauge\n"
                    "etcd_cluster_version{cluster_version=\"3.4\"} 1\n");
    metric(out, "etcd_debugging_mvcc_keys_total", "gauge", "Total number of keys.",
           (uint64_t)(keys > 0 ? keys : 0));
    metric(out, "etcd_mvcc_db_total_size_in_bytes", "gauge",
           "Total size of the underlying database physically allocated in bytes.", db);
    metric(out, "etcd_server_has_leader", "gauge",
           "Whether or not a leader exists. 1 is existence, 0 is not.", st->leader != 0);
    metric(out, "etcd_server_health_failures", "counter", "The total number of failed health checks",
           e->health_failures);
    metric(out, "etcd_server_health_success", "counter",
           "The total number of successful health checks", e->health_success);
    metric(out, "etcd_server_is_leader", "gauge",
           "Whether or not this member is a leader. 1 if is, 0 otherwise.",
           st->leader != 0 && st->leader == st->id);
    metric(out, "etcd_server_is_learner", "gauge",
           "Whether or not this member is a learner. 1 if is, 0 otherwise.", st->learner);
    metric(out, "etcd_server_leader_changes_seen_total", "counter",
           "The number of leader changes seen.", e->leader_changes);
    metric(out, "etcd_server_proposals_applied_total", "gauge",
           "The total number of consensus proposals applied.", st->applied);
    metric(out, "etcd_server_proposals_committed_total", "gauge",
           "The total number of consensus proposals committed.", st->commit);
    metric(out, "etcd_server_proposals_failed_total", "counter",
           "The total number of failed proposals seen.", e->proposals_failed);
    metric(out, "etcd_server_proposals_pending", "gauge",
           "The current number of pending proposals to commit.", e->proposals_pending);
    api_text_printf(out,
                    "# HELP etcd_server_version Which version is running. 1 for 'server_version' "
                    "label with current version.\n"
                    "# TYPE etcd_server_version gauge\n"
                    "etcd_server_version{server_version=\"%s\"} 1\n",
                    API_ETCD_VERSION);
    metric(out, "quorumfs_client_connections", "gauge",
           "Client connections (gRPC and HTTP/1.1) open on this member.",
           e->api ? api_server_connections(e->api) : 0);
}
