/*
 * node.c - the quorumfs node loop: one libuv loop on one thread that runs
 * the driver core (node_core.c) over RocksDB and the peer transport. Raft
 * ticks every --heartbeat-interval; peer messages, client calls and mount
 * submissions mark the node dirty, and one uv_check pass per loop iteration
 * processes every pending Raft update (group commit).
 *
 * This file is the plumbing only: the libuv handles, the data directory,
 * RocksDB checkpoints streamed to and received from peers, and the process
 * life cycle. What happens to a Raft update is the core's, so the
 * simulation (tests/sim/node_sim.c) runs the same code.
 *
 * Invariants:
 * - Everything here runs on the loop thread; node__submit and
 *   node__read_barrier_async (any thread) reach it through `wake`.
 * - A received checkpoint directory (pending_snap_dir) belongs to this file
 *   until the core installs it (io install_snapshot) or another replaces it.
 */
#define _GNU_SOURCE /* pthread_timedjoin_np */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "net/net.h"
#include "raft/raft.h"
#include "server/etcd.h"
#include "server/member_mount.h"
#include "server/node.h"
#include "server/node_core.h"
#include "server/server.h"
#include "store/store.h"

/* The core and the libuv state around it. */
struct node_uv {
    struct node n; /* first: node__loop finds the rest from it */
    uv_loop_t loop;
    uv_timer_t tick_timer;
    uv_async_t wake;
    uv_check_t check; /* runs node__process once per loop iteration */
    uv_signal_t sig_int, sig_term, sig_hup;
    /* Peers (NULL before start_net and after close). */
    struct net_transport *net;
    char *pending_snap_dir;  /* received checkpoint not yet installed */
    uint64_t snap_seq;       /* names outgoing checkpoint directories */
    uint64_t rejected_by[SERVER_MEMBERS_MAX]; /* peers that refused our handshake */
    size_t n_rejected_by;
    /* The etcd v3 API server. */
    struct api_server *api;
    /* The --mount process (server/member_mount.c); NULL without --mount. */
    struct member_mount *mm;
};

static struct node_uv *uvn(struct node *n) {
    return (struct node_uv *)((char *)n - offsetof(struct node_uv, n));
}

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("quorumfs: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

uv_loop_t *node__loop(struct node *n) { return &uvn(n)->loop; }

/* ------------------------------------------------------------ io table */

static uint64_t io_now_ms(void *ctx) { return uv_now(&((struct node_uv *)ctx)->loop); }
static void io_wake(void *ctx) { uv_async_send(&((struct node_uv *)ctx)->wake); }
static void io_stop(void *ctx) { uv_stop(&((struct node_uv *)ctx)->loop); }
static void io_log(void *ctx, const char *line) {
    (void)ctx;
    logf_("%s", line);
}

static int io_send(void *ctx, uint64_t to, const void *buf, size_t len) {
    struct node_uv *u = ctx;
    if (!u->net) return 0; /* closing: nothing goes out any more */
    return net_send(u->net, to, buf, len);
}

/* ------------------------------------------------------------ peers */

static void first_url(const char *urls, char out[SERVER_URL_MAX]) {
    size_t ul = strcspn(urls, ",");
    if (ul >= SERVER_URL_MAX) ul = SERVER_URL_MAX - 1;
    memcpy(out, urls, ul);
    out[ul] = '\0';
}

static const struct node_member *member_find(const struct node *n, uint64_t id) {
    for (size_t i = 0; i < n->n_members; i++)
        if (n->members[i].id == id) return &n->members[i];
    return NULL;
}

/* The handshake compares member lists: keep the transport's in step with
 * the member table (id and first peer URL of each member). A member no
 * longer in the table (removed) keeps the list it has: it is stopping. */
static void net_set_members(struct node_uv *u) {
    struct node *n = &u->n;
    if (!u->net || !member_find(n, n->id)) return;
    struct net_member nm[SERVER_MEMBERS_MAX];
    char urls[SERVER_MEMBERS_MAX][SERVER_URL_MAX];
    for (size_t i = 0; i < n->n_members; i++) {
        first_url(n->members[i].peer_urls, urls[i]);
        nm[i] = (struct net_member){n->members[i].id, urls[i]};
    }
    int rc = net_transport_set_members(u->net, nm, n->n_members);
    if (rc) logf_("cannot update the peer member list: %s", net_strerror(rc));
}

/* The table changed from old[0..n_old): dial the members that appeared (or
 * moved), forget those that went, and update the handshake's list. */
static void io_peers_changed(void *ctx, const struct node_member *old, size_t n_old) {
    struct node_uv *u = ctx;
    struct node *n = &u->n;
    if (!u->net) return;
    char a[SERVER_URL_MAX], b[SERVER_URL_MAX];
    for (size_t i = 0; i < n_old; i++) {
        if (old[i].id == n->id) continue;
        const struct node_member *now = member_find(n, old[i].id);
        first_url(old[i].peer_urls, a);
        if (now) first_url(now->peer_urls, b);
        if (!now || strcmp(a, b) != 0) net_transport_remove_peer(u->net, old[i].id);
    }
    for (size_t i = 0; i < n->n_members; i++) {
        const struct node_member *m = &n->members[i];
        if (m->id == n->id) continue;
        const struct node_member *was = NULL;
        for (size_t k = 0; k < n_old; k++)
            if (old[k].id == m->id) was = &old[k];
        first_url(m->peer_urls, b);
        if (was) first_url(was->peer_urls, a);
        if (was && strcmp(a, b) == 0) continue;
        int rc = b[0] ? net_transport_add_peer(u->net, m->id, b) : NET_EINVAL;
        if (rc) logf_("peer %016" PRIx64 " (%s): %s", m->id, b, net_strerror(rc));
    }
    net_set_members(u);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Removes a directory tree (a checkpoint); errors are ignored. */
static void rm_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

struct snap_send {
    struct node_uv *u;
    char dir[1200];
};

static void snap_sent_cb(void *cb_data, uint64_t to_id, int status, const char *reason) {
    struct snap_send *ss = cb_data;
    struct node_uv *u = ss->u;
    if (status)
        logf_("snapshot to %016" PRIx64 " failed: %s%s%s", to_id, net_strerror(status),
              reason ? ": " : "", reason ? reason : "");
    else
        logf_("snapshot to %016" PRIx64 " delivered", to_id);
    rm_tree(ss->dir);
    free(ss);
    node__snapshot_report(&u->n, to_id, status == 0);
}

/* A follower is behind the compacted log: stream it a checkpoint of the
 * store, with the SNAP message (rewritten to the checkpoint's own metadata)
 * as the stream's metadata. */
static void io_send_snapshot(void *ctx, const struct raft_msg *m) {
    struct node_uv *u = ctx;
    struct node *n = &u->n;
    if (!u->net) return; /* closing */
    struct snap_send *ss = calloc(1, sizeof *ss);
    if (!ss) goto err;
    ss->u = u;
    snprintf(ss->dir, sizeof ss->dir, "%s/snap-out-%016" PRIx64 "-%" PRIu64, n->cfg->data_dir,
             m->to, ++u->snap_seq);
    rm_tree(ss->dir);
    struct raft_msg copy = *m;
    int rc = store_checkpoint(n->store, ss->dir, &copy.snapshot.meta);
    if (rc) {
        logf_("checkpoint for %016" PRIx64 " failed: %s", m->to, store_strerror(rc));
        goto err_dir;
    }
    copy.snapshot.data = (struct raft_buf){NULL, 0};
    size_t cap = raft_encoded_size(&copy), len;
    void *meta = malloc(cap);
    if (!meta || raft_encode(&copy, meta, cap, &len) != 0) {
        free(meta);
        goto err_dir;
    }
    rc = net_send_snapshot(u->net, m->to, meta, len, ss->dir, ss, snap_sent_cb);
    free(meta);
    if (rc == NET_EBUSY) { /* one is on its way; its report will come */
        rm_tree(ss->dir);
        free(ss);
        return;
    }
    if (rc) goto err_dir;
    logf_("sending snapshot at index %" PRIu64 " to %016" PRIx64, copy.snapshot.meta.index, m->to);
    return;
err_dir:
    rm_tree(ss->dir);
    free(ss);
err:
    node__snapshot_report(n, m->to, false);
}

static void on_peer_message(void *data, uint64_t from_id, const void *buf, size_t len) {
    struct node_uv *u = data;
    node__recv_message(&u->n, from_id, buf, len);
}

static void on_handshake_error(void *data, uint64_t peer_id, const char *addr,
                               const char *reason) {
    struct node_uv *u = data;
    struct node *n = &u->n;
    logf_("peer %016" PRIx64 " at %s: %s", peer_id, addr, reason);
    if (n->ever_joined || peer_id == 0) return;
    for (size_t i = 0; i < u->n_rejected_by; i++)
        if (u->rejected_by[i] == peer_id) return;
    if (u->n_rejected_by < SERVER_MEMBERS_MAX) u->rejected_by[u->n_rejected_by++] = peer_id;
    /* Every other member refuses us: we are the odd one out. */
    if (u->n_rejected_by + 1 >= n->cfg->n_members) {
        logf_("refusing to join: every peer rejected this member's cluster configuration "
              "(check --initial-cluster and --initial-cluster-token)");
        n->fatal = true;
        uv_stop(&u->loop);
    }
}

static void on_snapshot_done(void *data, uint64_t from_id, const void *meta, size_t meta_len,
                             const char *dir) {
    struct node_uv *u = data;
    struct node *n = &u->n;
    struct raft_msg m;
    int rc = raft_decode(meta, meta_len, &m);
    if (rc || m.type != RAFT_MSG_SNAP || !m.has_snapshot) {
        logf_("dropping a snapshot from %016" PRIx64 " with bad metadata", from_id);
        if (rc == 0) raft_msg_release(&m);
        rm_tree(dir);
        return;
    }
    if (u->pending_snap_dir) {
        rm_tree(u->pending_snap_dir);
        free(u->pending_snap_dir);
    }
    u->pending_snap_dir = strdup(dir);
    node__snapshot_received(n, from_id, &m);
    raft_msg_release(&m);
}

static int open_store_at(struct node_uv *u, struct store **out);

/* Swaps the received checkpoint in as the store: DATA/db moves aside to
 * DATA/db.old (removed once the core initialised the new one). */
static int io_install_snapshot(void *ctx, struct store **s) {
    struct node_uv *u = ctx;
    const struct server_config *cfg = u->n.cfg;
    char db[1100], old[1100];
    snprintf(db, sizeof db, "%s/db", cfg->data_dir);
    snprintf(old, sizeof old, "%s/db.old", cfg->data_dir);
    int rc = -1;
    if (!u->pending_snap_dir) {
        logf_("the received snapshot is gone");
        return -1;
    }
    rm_tree(old);
    store_close(*s);
    *s = NULL;
    if (rename(db, old) != 0 || rename(u->pending_snap_dir, db) != 0)
        logf_("cannot move the snapshot into place: %s", strerror(errno));
    else if (open_store_at(u, s) == 0)
        rc = 0;
    free(u->pending_snap_dir);
    u->pending_snap_dir = NULL;
    return rc;
}

static void io_install_done(void *ctx, bool ok) {
    struct node_uv *u = ctx;
    if (!ok) return;
    char old[1100];
    snprintf(old, sizeof old, "%s/db.old", u->n.cfg->data_dir);
    rm_tree(old);
}

/* ------------------------------------------------------------ loop */

static void check_cb(uv_check_t *h) {
    struct node_uv *u = h->data;
    if (u->n.dirty) node__process(&u->n);
}

static void wake_cb(uv_async_t *h) {
    struct node_uv *u = h->data;
    node__drain(&u->n);
    u->n.dirty = true; /* processed once per loop iteration: group commit */
}

static void tick_cb(uv_timer_t *t) {
    struct node_uv *u = t->data;
    node__tick(&u->n);
}

/* ------------------------------------------------------------ mount */

static void log_line(const char *line) { logf_("%s", line); }

/* ------------------------------------------------------------ lifecycle */

static void signal_cb(uv_signal_t *s, int signum) {
    struct node_uv *u = s->data;
    logf_("received %s, stopping", signum == SIGINT    ? "SIGINT"
                                   : signum == SIGTERM ? "SIGTERM"
                                                       : "SIGHUP");
    uv_stop(&u->loop); /* server_run unmounts, then refuses new work */
}

static void close_walk_cb(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static int open_store_at(struct node_uv *u, struct store **out) {
    const struct server_config *cfg = u->n.cfg;
    char path[1100];
    snprintf(path, sizeof path, "%s/db", cfg->data_dir);
    struct store_options opt;
    store_options_init(&opt);
    opt.data_dir = path;
    opt.quota_bytes = cfg->quota_backend_bytes;
    opt.max_request_bytes = cfg->max_request_bytes;
    char err[512] = "";
    int rc = store_open(&opt, out, err, sizeof err);
    if (rc) {
        logf_("cannot open the store in %s: %s (%s)", path, store_strerror(rc), err);
        return -1;
    }
    return 0;
}

static int open_store(struct node_uv *u) {
    const struct server_config *cfg = u->n.cfg;
    if (mkdir(cfg->data_dir, 0700) != 0 && errno != EEXIST) {
        logf_("cannot create data directory %s: %s", cfg->data_dir, strerror(errno));
        return -1;
    }
    return open_store_at(u, &u->n.store);
}

/* etcd's peer TLS flags as net/ options. --peer-trusted-ca-file implies
 * --peer-client-cert-auth, as in etcd; --peer-auto-tls makes a self-signed
 * certificate in DATA-DIR/fixtures/peer (when no --peer-cert-file) and then
 * does not verify the peers' ones. The buffers hold the auto-TLS paths. */
static int peer_tls_options(const struct server_config *cfg, struct net_tls_options *o,
                            char *dir, char *cert, char *key, char *why) {
    const char *ca = cfg->peer_trusted_ca_file;
    o->trusted_ca_file = ca[0] ? ca : NULL;
    o->crl_file = cfg->peer_crl_file[0] ? cfg->peer_crl_file : NULL;
    o->client_cert_auth = cfg->peer_client_cert_auth || ca[0];
    o->cipher_list = cfg->cipher_list[0] ? cfg->cipher_list : NULL;
    if (cfg->peer_cert_file[0]) {
        o->cert_file = cfg->peer_cert_file;
        o->key_file = cfg->peer_key_file;
        return 0;
    }
    if (!cfg->peer_auto_tls) return 0;
    snprintf(dir, 1100, "%s/fixtures/peer", cfg->data_dir);
    if (net_tls_self_cert(dir, cfg->listen_peer_urls, why, NET_ERRMSG_SIZE) != 0) return -1;
    snprintf(cert, 1200, "%s/cert.pem", dir);
    snprintf(key, 1200, "%s/key.pem", dir);
    o->cert_file = cert;
    o->key_file = key;
    o->insecure_skip_verify = true;
    return 0;
}

/* The peer transport: listens on the first --listen-peer-urls URL and dials
 * every other member of --initial-cluster. */
static int start_net(struct node_uv *u) {
    struct node *n = &u->n;
    const struct server_config *cfg = n->cfg;
    char url[SERVER_URL_MAX];
    size_t ulen = strcspn(cfg->listen_peer_urls, ",");
    if (ulen >= sizeof url) ulen = sizeof url - 1;
    memcpy(url, cfg->listen_peer_urls, ulen);
    url[ulen] = '\0';
    char snapdir[1100];
    snprintf(snapdir, sizeof snapdir, "%s/snap-in", cfg->data_dir);
    rm_tree(snapdir);
    if (mkdir(snapdir, 0700) != 0) {
        logf_("cannot create %s: %s", snapdir, strerror(errno));
        return -1;
    }
    struct net_options opt = {
        .id = n->id,
        .listen_url = url,
        .cluster_token = cfg->initial_cluster_token,
        .snapshot_dir = snapdir,
        .cb = {
            .on_message = on_peer_message,
            .on_handshake_error = on_handshake_error,
            .on_snapshot_done = on_snapshot_done,
        },
        .data = u,
    };
    char why[NET_ERRMSG_SIZE] = "", auto_dir[1100], auto_cert[1200], auto_key[1200];
    opt.errmsg = why;
    if (peer_tls_options(cfg, &opt.tls, auto_dir, auto_cert, auto_key, why) != 0) {
        logf_("%s", why);
        return -1;
    }
    int rc = net_transport_new(&u->loop, &opt, &u->net);
    if (rc) {
        logf_("cannot listen for peers on %s: %s", url, why[0] ? why : net_strerror(rc));
        return -1;
    }
    net_set_members(u);
    for (size_t i = 0; i < n->n_members; i++) {
        const struct node_member *m = &n->members[i];
        if (m->id == n->id) continue;
        char purl[SERVER_URL_MAX];
        size_t pl = strcspn(m->peer_urls, ",");
        memcpy(purl, m->peer_urls, pl);
        purl[pl] = '\0';
        rc = net_transport_add_peer(u->net, m->id, purl);
        if (rc) {
            logf_("peer %s (%s): %s", m->name, purl, net_strerror(rc));
            return -1;
        }
    }
    return 0;
}

int server_run(const struct server_config *cfg) {
    struct node_uv *u = calloc(1, sizeof *u);
    if (!u) return 1;
    struct node *n = &u->n;
    int exit_code = 1;
    const struct node_io io = {
        .ctx = u,
        .now_ms = io_now_ms,
        .wake = io_wake,
        .stop = io_stop,
        .log = io_log,
        .send = io_send,
        .send_snapshot = io_send_snapshot,
        .install_snapshot = io_install_snapshot,
        .install_done = io_install_done,
        .peers_changed = io_peers_changed,
    };
    /* Request ids start at the wall clock in microseconds: distinct from
     * every id an earlier run used (node__submit). */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t next_id = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
    if (node__core_init(n, cfg, &io, next_id) != 0) {
        free(u);
        return 1;
    }
    if (uv_loop_init(&u->loop) != 0) goto err_free;

    if (open_store(u)) goto err_loop;
    if (node__core_start(n, n->id ^ (uint64_t)uv_hrtime(), NULL)) goto err_store;
    uv_check_init(&u->loop, &u->check);
    u->check.data = u;
    uv_check_start(&u->check, check_cb);
    if (start_net(u)) goto err_handles;
    if (etcd__start(n, &u->api)) {
        logf_("cannot serve clients on %s", cfg->listen_client_urls);
        goto err_handles;
    }

    uv_timer_init(&u->loop, &u->tick_timer);
    u->tick_timer.data = u;
    uv_async_init(&u->loop, &u->wake, wake_cb);
    u->wake.data = u;
    uv_signal_init(&u->loop, &u->sig_int);
    u->sig_int.data = u;
    uv_signal_init(&u->loop, &u->sig_term);
    u->sig_term.data = u;
    uv_signal_start(&u->sig_int, signal_cb, SIGINT);
    uv_signal_start(&u->sig_term, signal_cb, SIGTERM);
    uv_signal_init(&u->loop, &u->sig_hup);
    u->sig_hup.data = u;
    uv_signal_start(&u->sig_hup, signal_cb, SIGHUP);
    uv_timer_start(&u->tick_timer, tick_cb, cfg->heartbeat_interval_ms,
                   cfg->heartbeat_interval_ms);
    node__process(n);

    if (cfg->mount[0] && member_mount_start(&u->loop, cfg, log_line, &u->mm) != 0)
        goto err_handles;
    logf_("member %s (%016" PRIx64 ") started; data in %s%s%s", cfg->name, n->id, cfg->data_dir,
          cfg->mount[0] ? ", key space mounted at " : "", cfg->mount);

    uv_run(&u->loop, UV_RUN_DEFAULT);
    exit_code = n->fatal ? 1 : 0;

err_handles:
    /* The mount unmounts first: its last writes are still answered. */
    member_mount_stop(u->mm, &u->loop);
    u->mm = NULL;
    node__core_cancel(n);
    if (u->api) {
        etcd__stop(u->api);
        u->api = NULL;
        uv_run(&u->loop, UV_RUN_NOWAIT);
    }
    if (u->net) {
        net_transport_close(u->net, NULL);
        u->net = NULL;
        uv_run(&u->loop, UV_RUN_NOWAIT);
    }
    uv_walk(&u->loop, close_walk_cb, NULL);
    uv_run(&u->loop, UV_RUN_DEFAULT);
    if (u->pending_snap_dir) {
        rm_tree(u->pending_snap_dir);
        free(u->pending_snap_dir);
    }
err_store:
    store_close(n->store);
    n->store = NULL;
err_loop:
    uv_loop_close(&u->loop);
err_free:
    node__core_fini(n);
    free(u);
    if (exit_code == 0) logf_("stopped");
    return exit_code;
}
