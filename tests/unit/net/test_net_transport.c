/*
 * test_net_transport.c - transports talking to each other for real: two or
 * three of them in this process, on one libuv loop, over 127.0.0.1 (and
 * ::1) with ephemeral ports. Nothing sleeps: every wait runs the loop until
 * a condition holds or a deadline passes (WAIT_UNTIL), and every test closes
 * its transports and checks the loop is left with no handle open.
 */
#define _GNU_SOURCE /* nftw */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "net/frame.h"
#include "net/net.h"
#include "tests/harness.h"

#define IDS_MAX 8     /* member ids used here are 1..IDS_MAX-1 */
#define WAIT_MS 10000 /* generous: sanitizer builds on a busy 2-core box */

/* ---- waiting on the loop ---- */

static uv_loop_t loop;
static uv_timer_t deadline;
static bool deadline_expired;

static void on_deadline(uv_timer_t *h) {
    (void)h;
    deadline_expired = true;
}

static void deadline_start(uint64_t ms) {
    deadline_expired = false;
    uv_timer_start(&deadline, on_deadline, ms, 0);
}

/* Runs the loop until expr holds (evaluated once per loop turn) or ms pass. */
#define WAIT_UNTIL(expr, ms)                                                                       \
    do {                                                                                           \
        bool wait_ok_;                                                                             \
        deadline_start(ms);                                                                        \
        while (!(wait_ok_ = (expr)) && !deadline_expired) uv_run(&loop, UV_RUN_ONCE);              \
        uv_timer_stop(&deadline);                                                                  \
        if (!wait_ok_) HARNESS_FAIL_("WAIT_UNTIL(%s) not true within %d ms", #expr, ms);           \
    } while (0)

static void world_init(void) {
    memset(&loop, 0, sizeof(loop));
    uv_loop_init(&loop);
    uv_timer_init(&loop, &deadline);
}

static void walk_cb(uv_handle_t *h, void *arg) {
    (void)arg;
    if (h != (uv_handle_t *)&deadline && !uv_is_closing(h))
        fprintf(stderr, "  handle left open: type %d\n", (int)h->type);
}

/* Closes the loop; returns 0 if nothing was left behind. */
static int world_close(void) {
    uv_walk(&loop, walk_cb, NULL);
    uv_close((uv_handle_t *)&deadline, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    return uv_loop_close(&loop);
}

/* ---- a node: one transport and what it observed ---- */

struct node {
    uint64_t id;
    struct net_transport *t;
    int port;
    char url[64];
    bool closed;
    /* on_message: per sender, the next expected sequence number */
    uint64_t recv[IDS_MAX];
    uint64_t bad_msgs;
    /* on_peer_state */
    bool up[IDS_MAX];
    int ups, downs;
    /* on_handshake_error */
    int hs_errors;
    char hs_reason[NET_REASON_MAX + 1];
    uint64_t hs_peer;
    /* on_protocol_error */
    int proto_errors;
    int proto_rc;
    /* snapshots received */
    char snap_dir[PATH_MAX];
    int snaps_done, snaps_aborted, snap_abort_rc;
    char done_dir[PATH_MAX];
    char done_meta[64];
    int refuse_snapshots; /* on_snapshot_begin returns this */
};

/* Message seq from `from`: [seq u64][from u64][pattern...], length varies with seq. */
static size_t msg_len(uint64_t seq) {
    return 16 + (size_t)(seq * 37 % 3000);
}

static void msg_fill(uint8_t *buf, uint64_t seq, uint64_t from) {
    size_t len = msg_len(seq);
    memcpy(buf, &seq, 8);
    memcpy(buf + 8, &from, 8);
    for (size_t j = 16; j < len; j++) buf[j] = (uint8_t)(seq + j);
}

static int send_msg(struct node *n, uint64_t to, uint64_t seq) {
    uint8_t buf[4096];
    msg_fill(buf, seq, n->id);
    return net_send(n->t, to, buf, msg_len(seq));
}

static void on_message(void *data, uint64_t from, const void *buf, size_t len) {
    struct node *n = data;
    uint64_t seq, claimed;
    uint8_t want[4096];
    if (from >= IDS_MAX || len < 16) {
        n->bad_msgs++;
        return;
    }
    memcpy(&seq, buf, 8);
    memcpy(&claimed, (const uint8_t *)buf + 8, 8);
    msg_fill(want, seq, from);
    if (seq != n->recv[from] || claimed != from || len != msg_len(seq) ||
        memcmp(buf, want, len) != 0) {
        n->bad_msgs++;
        return;
    }
    n->recv[from]++;
}

static void on_peer_state(void *data, uint64_t id, bool up) {
    struct node *n = data;
    if (id < IDS_MAX) n->up[id] = up;
    if (up)
        n->ups++;
    else
        n->downs++;
}

static void on_handshake_error(void *data, uint64_t peer, const char *addr, const char *reason) {
    (void)addr;
    struct node *n = data;
    n->hs_errors++;
    n->hs_peer = peer;
    snprintf(n->hs_reason, sizeof(n->hs_reason), "%s", reason);
}

static void on_protocol_error(void *data, uint64_t peer, const char *addr, int rc) {
    (void)peer;
    (void)addr;
    struct node *n = data;
    n->proto_errors++;
    n->proto_rc = rc;
}

static int on_snapshot_begin(void *data, uint64_t from, const void *meta, size_t len) {
    (void)from;
    (void)meta;
    (void)len;
    return ((struct node *)data)->refuse_snapshots;
}

static void on_snapshot_done(void *data, uint64_t from, const void *meta, size_t len,
                             const char *dir) {
    (void)from;
    struct node *n = data;
    n->snaps_done++;
    snprintf(n->done_dir, sizeof(n->done_dir), "%s", dir);
    size_t k = len < sizeof(n->done_meta) - 1 ? len : sizeof(n->done_meta) - 1;
    memcpy(n->done_meta, meta, k);
    n->done_meta[k] = '\0';
}

static void on_snapshot_abort(void *data, uint64_t from, int rc) {
    (void)from;
    struct node *n = data;
    n->snaps_aborted++;
    n->snap_abort_rc = rc;
}

static void on_closed(void *data) {
    ((struct node *)data)->closed = true;
}

struct node_cfg {
    const char *token;
    const char *host; /* "127.0.0.1" (default) or "[::1]" */
    int port;         /* 0 = ephemeral */
    bool no_snapshot_dir;
    size_t send_queue_frames_max;
    size_t send_queue_bytes_max;
    bool https;                        /* listen and advertise https:// */
    const struct net_tls_options *tls; /* NULL: none */
};

static int node_start(struct node *n, uint64_t id, const struct node_cfg *cfg) {
    memset(n, 0, sizeof(*n));
    n->id = id;
    char listen[64];
    const char *host = cfg && cfg->host ? cfg->host : "127.0.0.1";
    const char *scheme = cfg && cfg->https ? "https" : "http";
    snprintf(listen, sizeof(listen), "%s://%s:%d", scheme, host, cfg ? cfg->port : 0);
    if (!(cfg && cfg->no_snapshot_dir)) {
        snprintf(n->snap_dir, sizeof(n->snap_dir), "/tmp/qfs-net-rx-XXXXXX");
        if (mkdtemp(n->snap_dir) == NULL) return -errno;
    }
    struct net_options o;
    memset(&o, 0, sizeof(o));
    o.id = id;
    o.listen_url = listen;
    o.cluster_token = cfg && cfg->token ? cfg->token : "test-cluster";
    o.snapshot_dir = n->snap_dir[0] ? n->snap_dir : NULL;
    o.seed = harness_seed + id;
    o.send_queue_frames_max = cfg ? cfg->send_queue_frames_max : 0;
    o.send_queue_bytes_max = cfg ? cfg->send_queue_bytes_max : 0;
    o.cb.on_message = on_message;
    o.cb.on_peer_state = on_peer_state;
    o.cb.on_handshake_error = on_handshake_error;
    o.cb.on_protocol_error = on_protocol_error;
    o.cb.on_snapshot_begin = on_snapshot_begin;
    o.cb.on_snapshot_done = on_snapshot_done;
    o.cb.on_snapshot_abort = on_snapshot_abort;
    o.data = n;
    if (cfg && cfg->tls) o.tls = *cfg->tls;
    int rc = net_transport_new(&loop, &o, &n->t);
    if (rc != 0) return rc;
    n->port = net_transport_port(n->t);
    snprintf(n->url, sizeof(n->url), "%s://%s:%d", scheme, host, n->port);
    return 0;
}

/* Sets the same member list (every node's real URL) on all nodes and meshes them. */
static int cluster_mesh(struct node **ns, size_t count) {
    struct net_member m[IDS_MAX];
    for (size_t i = 0; i < count; i++) m[i] = (struct net_member){ns[i]->id, ns[i]->url};
    for (size_t i = 0; i < count; i++) {
        int rc = net_transport_set_members(ns[i]->t, m, count);
        if (rc != 0) return rc;
        for (size_t j = 0; j < count; j++) {
            if (i == j) continue;
            rc = net_transport_add_peer(ns[i]->t, ns[j]->id, ns[j]->url);
            if (rc != 0) return rc;
        }
    }
    return 0;
}

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *f) {
    (void)st;
    (void)flag;
    (void)f;
    return remove(p);
}

static void rm_rf(const char *path) {
    if (path[0]) nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* Closes n's transport (if open) and waits for its close callback. */
static void node_stop(struct node *n) {
    if (n->t != NULL && !n->closed) {
        net_transport_close(n->t, on_closed);
        WAIT_UNTIL(n->closed, WAIT_MS);
    }
    n->t = NULL;
}

static void node_cleanup(struct node *n) {
    node_stop(n);
    rm_rf(n->snap_dir);
    n->snap_dir[0] = '\0';
}

static bool all_up(struct node **ns, size_t count) {
    for (size_t i = 0; i < count; i++)
        for (size_t j = 0; j < count; j++)
            if (i != j && !ns[i]->up[ns[j]->id]) return false;
    return true;
}

/* ---- tests ---- */

TEST(two_nodes_deliver_in_order) {
    world_init();
    static struct node a, b;
    struct node *ns[] = {&a, &b};
    ASSERT_EQ(node_start(&a, 1, NULL), 0);
    ASSERT_EQ(node_start(&b, 2, NULL), 0);
    ASSERT_NE(a.port, 0);
    ASSERT_NE(a.port, b.port);
    ASSERT_EQ(cluster_mesh(ns, 2), 0);
    WAIT_UNTIL(all_up(ns, 2), WAIT_MS);
    ASSERT_EQ(a.hs_errors + b.hs_errors, 0);

    const uint64_t count = 2000;
    for (uint64_t s = 0; s < count; s++) {
        ASSERT_EQ(send_msg(&a, 2, s), 0);
        ASSERT_EQ(send_msg(&b, 1, s), 0);
    }
    WAIT_UNTIL(b.recv[1] == count && a.recv[2] == count, WAIT_MS);
    ASSERT_EQ(a.bad_msgs + b.bad_msgs, 0);

    struct net_peer_info info;
    ASSERT_EQ(net_transport_peer_info(a.t, 2, &info), 0);
    ASSERT(info.up);
    ASSERT_EQ(info.sent_frames, count);
    ASSERT_EQ(info.dropped_frames, 0);
    WAIT_UNTIL(net_transport_peer_info(a.t, 2, &info) == 0 && info.queued_frames == 0, WAIT_MS);
    ASSERT_EQ(info.queued_bytes, 0);
    ASSERT_EQ(net_transport_peer_info(a.t, 9, &info), NET_ENOPEER);
    ASSERT_EQ(net_send(a.t, 9, "x", 1), NET_ENOPEER);
    ASSERT_EQ(net_send(a.t, 2, "x", 0), NET_EINVAL);

    node_cleanup(&a);
    node_cleanup(&b);
    ASSERT_EQ(world_close(), 0);
}

TEST(three_nodes_all_pairs) {
    world_init();
    static struct node n1, n2, n3;
    struct node *ns[] = {&n1, &n2, &n3};
    for (int i = 0; i < 3; i++) ASSERT_EQ(node_start(ns[i], (uint64_t)i + 1, NULL), 0);
    ASSERT_EQ(cluster_mesh(ns, 3), 0);
    WAIT_UNTIL(all_up(ns, 3), WAIT_MS);
    const uint64_t count = 500;
    for (uint64_t s = 0; s < count; s++)
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++)
                if (i != j) ASSERT_EQ(send_msg(ns[i], ns[j]->id, s), 0);
    WAIT_UNTIL(n1.recv[2] == count && n1.recv[3] == count && n2.recv[1] == count &&
                   n2.recv[3] == count && n3.recv[1] == count && n3.recv[2] == count,
               WAIT_MS);
    ASSERT_EQ(n1.bad_msgs + n2.bad_msgs + n3.bad_msgs, 0);
    for (int i = 0; i < 3; i++) node_cleanup(ns[i]);
    ASSERT_EQ(world_close(), 0);
}

TEST(ipv6_loopback) {
    world_init();
    static struct node a, b;
    struct node *ns[] = {&a, &b};
    struct node_cfg cfg = {.host = "[::1]"};
    ASSERT_EQ(node_start(&a, 1, &cfg), 0);
    ASSERT_EQ(node_start(&b, 2, &cfg), 0);
    ASSERT_EQ(cluster_mesh(ns, 2), 0);
    WAIT_UNTIL(all_up(ns, 2), WAIT_MS);
    for (uint64_t s = 0; s < 10; s++) ASSERT_EQ(send_msg(&a, 2, s), 0);
    WAIT_UNTIL(b.recv[1] == 10, WAIT_MS);
    node_cleanup(&a);
    node_cleanup(&b);
    ASSERT_EQ(world_close(), 0);
}

TEST(down_peer_drops_without_growing) {
    world_init();
    static struct node a, gone;
    /* A port nobody listens on: bind one, then close it. */
    ASSERT_EQ(node_start(&gone, 2, NULL), 0);
    char url[64];
    snprintf(url, sizeof(url), "%s", gone.url);
    node_cleanup(&gone);
    ASSERT_EQ(node_start(&a, 1, NULL), 0);
    ASSERT_EQ(net_transport_add_peer(a.t, 2, url), 0);
    ASSERT_EQ(net_transport_add_peer(a.t, 2, url), NET_EEXIST);
    ASSERT_EQ(net_transport_add_peer(a.t, 1, url), NET_EINVAL);
    ASSERT_EQ(net_transport_add_peer(a.t, 3, "ftp://127.0.0.1:1"), NET_EURL);

    for (uint64_t s = 0; s < 20000; s++) ASSERT_EQ(send_msg(&a, 2, s), NET_EPEERDOWN);
    struct net_peer_info info;
    ASSERT_EQ(net_transport_peer_info(a.t, 2, &info), 0);
    ASSERT(!info.up);
    ASSERT_EQ(info.queued_bytes, 0);
    ASSERT_EQ(info.queued_frames, 0);
    ASSERT_EQ(info.dropped_frames, 20000);
    /* It keeps redialling (50 ms, 100 ms, 200 ms ... with jitter). */
    WAIT_UNTIL(net_transport_peer_info(a.t, 2, &info) == 0 && info.dials >= 4, WAIT_MS);
    ASSERT_EQ(a.ups, 0);
    ASSERT_EQ(a.hs_errors, 0); /* connection refused is not a handshake error */
    node_cleanup(&a);
    ASSERT_EQ(world_close(), 0);
}

TEST(full_queue_refuses_then_drains) {
    world_init();
    static struct node a, b;
    struct node *ns[] = {&a, &b};
    struct node_cfg cfg = {.send_queue_frames_max = 8, .send_queue_bytes_max = 64 * 1024};
    ASSERT_EQ(node_start(&a, 1, &cfg), 0);
    ASSERT_EQ(node_start(&b, 2, NULL), 0);
    ASSERT_EQ(cluster_mesh(ns, 2), 0);
    WAIT_UNTIL(all_up(ns, 2), WAIT_MS);

    /* Without running the loop no write can complete: the cap is hit exactly. */
    uint64_t accepted = 0;
    for (uint64_t s = 0; s < 100; s++) {
        int rc = send_msg(&a, 2, s);
        if (rc == 0) {
            ASSERT_EQ(s, accepted); /* only a prefix is accepted ... */
            accepted++;
        } else {
            ASSERT_EQ(rc, NET_EQUEUEFULL); /* ... the rest refused */
        }
    }
    ASSERT_EQ(accepted, 8);
    struct net_peer_info info;
    ASSERT_EQ(net_transport_peer_info(a.t, 2, &info), 0);
    ASSERT_EQ(info.queued_frames, 8);
    ASSERT_EQ(info.dropped_frames, 92);
    WAIT_UNTIL(b.recv[1] == 8, WAIT_MS);
    WAIT_UNTIL(net_transport_peer_info(a.t, 2, &info) == 0 && info.queued_frames == 0, WAIT_MS);

    /* The byte cap: 60000 + 10000 bytes do not fit 64 KiB. */
    static uint8_t big[70000];
    ASSERT_EQ(net_send(a.t, 2, big, 60000), 0);
    ASSERT_EQ(net_send(a.t, 2, big, 10000), NET_EQUEUEFULL);
    ASSERT_EQ(net_send(a.t, 2, big, 70000), NET_ETOOBIG); /* can never fit */
    ASSERT_EQ(net_transport_peer_info(a.t, 2, &info), 0);
    ASSERT_LE(info.queued_bytes, 64 * 1024);
    node_cleanup(&a);
    node_cleanup(&b);
    ASSERT_EQ(world_close(), 0);
}

TEST(reconnects_after_peer_restart) {
    world_init();
    static struct node a, b;
    struct node *ns[] = {&a, &b};
    ASSERT_EQ(node_start(&a, 1, NULL), 0);
    ASSERT_EQ(node_start(&b, 2, NULL), 0);
    ASSERT_EQ(cluster_mesh(ns, 2), 0);
    WAIT_UNTIL(all_up(ns, 2), WAIT_MS);
    for (uint64_t s = 0; s < 10; s++) ASSERT_EQ(send_msg(&a, 2, s), 0);
    WAIT_UNTIL(b.recv[1] == 10, WAIT_MS);

    int port = b.port;
    node_cleanup(&b);
    WAIT_UNTIL(!a.up[2], WAIT_MS);
    ASSERT_EQ(a.downs, 1);
    ASSERT_EQ(send_msg(&a, 2, 10), NET_EPEERDOWN);

    /* Same id, same port, a fresh process as far as a can tell. */
    struct node_cfg cfg = {.port = port};
    ASSERT_EQ(node_start(&b, 2, &cfg), 0);
    ASSERT_EQ(b.port, port);
    struct net_member m[] = {{1, a.url}, {2, b.url}};
    ASSERT_EQ(net_transport_set_members(b.t, m, 2), 0);
    ASSERT_EQ(net_transport_add_peer(b.t, 1, a.url), 0);
    WAIT_UNTIL(a.up[2] && b.up[1], WAIT_MS);
    ASSERT_EQ(a.ups, 2);
    /* The new b expects sequence numbers from 0 again. */
    for (uint64_t s = 0; s < 100; s++) {
        ASSERT_EQ(send_msg(&a, 2, s), 0);
        ASSERT_EQ(send_msg(&b, 1, s), 0);
    }
    WAIT_UNTIL(b.recv[1] == 100 && a.recv[2] == 100, WAIT_MS);
    ASSERT_EQ(a.bad_msgs + b.bad_msgs, 0);
    node_cleanup(&a);
    node_cleanup(&b);
    ASSERT_EQ(world_close(), 0);
}

TEST(token_mismatch_is_refused_on_both_sides) {
    world_init();
    static struct node a, b;
    struct node *ns[] = {&a, &b};
    struct node_cfg ca = {.token = "alpha"}, cb = {.token = "beta"};
    ASSERT_EQ(node_start(&a, 1, &ca), 0);
    ASSERT_EQ(node_start(&b, 2, &cb), 0);
    ASSERT_EQ(cluster_mesh(ns, 2), 0);
    WAIT_UNTIL(a.hs_errors >= 2 && b.hs_errors >= 2, WAIT_MS);
    /* Each side words it from its own point of view. */
    ASSERT_STR_EQ(a.hs_reason, "cluster token mismatch: local alpha, remote beta");
    ASSERT_STR_EQ(b.hs_reason, "cluster token mismatch: local beta, remote alpha");
    ASSERT_EQ(a.hs_peer, 2);
    ASSERT_EQ(b.hs_peer, 1);
    ASSERT_EQ(a.ups + b.ups, 0);
    ASSERT_EQ(send_msg(&a, 2, 0), NET_EPEERDOWN);
    node_cleanup(&a);
    node_cleanup(&b);
    ASSERT_EQ(world_close(), 0);
}

TEST(member_list_mismatch_is_refused) {
    world_init();
    static struct node a, b;
    struct node *ns[] = {&a, &b};
    ASSERT_EQ(node_start(&a, 1, NULL), 0);
    ASSERT_EQ(node_start(&b, 2, NULL), 0);
    ASSERT_EQ(cluster_mesh(ns, 2), 0);
    /* b believes in a third member. */
    struct net_member m[] = {{1, a.url}, {2, b.url}, {3, "http://127.0.0.1:9"}};
    ASSERT_EQ(net_transport_set_members(b.t, m, 3), 0);
    WAIT_UNTIL(a.hs_errors >= 1 && b.hs_errors >= 1, WAIT_MS);
    ASSERT(strncmp(a.hs_reason, "member list mismatch: local [1=", 31) == 0);
    ASSERT(strstr(b.hs_reason, "3=http://127.0.0.1:9], remote [") != NULL);
    ASSERT_EQ(a.ups + b.ups, 0);
    /* Invalid lists are refused up front. */
    struct net_member dup[] = {{2, b.url}, {2, b.url}};
    ASSERT_EQ(net_transport_set_members(b.t, dup, 2), NET_EINVAL);
    struct net_member noself[] = {{1, a.url}};
    ASSERT_EQ(net_transport_set_members(b.t, noself, 1), NET_EINVAL);
    struct net_member badurl[] = {{2, "b:1"}};
    ASSERT_EQ(net_transport_set_members(b.t, badurl, 1), NET_EURL);
    node_cleanup(&a);
    node_cleanup(&b);
    ASSERT_EQ(world_close(), 0);
}

/* ---- a raw TCP client, to speak (bad) protocol at a transport ---- */

struct raw {
    uv_tcp_t tcp;
    uv_connect_t creq;
    int connect_status;
    bool connected, eof, closed;
    uint8_t in[65536];
    size_t in_len;
};

static void raw_on_connect(uv_connect_t *req, int status) {
    struct raw *r = req->data;
    r->connect_status = status;
    r->connected = true;
}

static void raw_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) {
    (void)s;
    struct raw *r = h->data;
    *b = uv_buf_init((char *)r->in + r->in_len, (unsigned)(sizeof(r->in) - r->in_len));
}

static void raw_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
    (void)b;
    struct raw *r = s->data;
    if (n < 0)
        r->eof = true;
    else
        r->in_len += (size_t)n;
}

static void raw_on_write(uv_write_t *w, int status) {
    (void)status;
    free(w);
}

static void raw_on_close(uv_handle_t *h) {
    ((struct raw *)h->data)->closed = true;
}

static int raw_connect(struct raw *r, int port) {
    memset(r, 0, sizeof(*r));
    struct sockaddr_in sin;
    uv_ip4_addr("127.0.0.1", port, &sin);
    uv_tcp_init(&loop, &r->tcp);
    r->tcp.data = r;
    r->creq.data = r;
    return uv_tcp_connect(&r->creq, &r->tcp, (struct sockaddr *)&sin, raw_on_connect);
}

static void raw_send(struct raw *r, const void *buf, size_t len) {
    uv_write_t *w = malloc(sizeof(*w) + len);
    memcpy(w + 1, buf, len);
    uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)len);
    uv_write(w, (uv_stream_t *)&r->tcp, &b, 1, raw_on_write);
}

static void raw_send_hello(struct raw *r, uint64_t from, uint64_t to, struct node **ns, size_t n) {
    struct net__frame *f = calloc(1, sizeof(*f));
    f->type = NET__FRAME_HELLO;
    f->u.hello.from_id = from;
    f->u.hello.to_id = to;
    f->u.hello.token = "test-cluster";
    f->u.hello.token_len = strlen("test-cluster");
    f->u.hello.n_members = n;
    for (size_t i = 0; i < n; i++)
        f->u.hello.members[i] =
            (struct net__wire_member){ns[i]->id, ns[i]->url, strlen(ns[i]->url)};
    uint8_t *buf;
    size_t len;
    if (net__frame_encode(f, &buf, &len) == 0) {
        raw_send(r, buf, len);
        free(buf);
    }
    free(f);
}

TEST(bad_frames_close_only_their_connection) {
    world_init();
    static struct node a, b;
    struct node *ns[] = {&a, &b};
    ASSERT_EQ(node_start(&a, 1, NULL), 0);
    ASSERT_EQ(node_start(&b, 2, NULL), 0);
    ASSERT_EQ(cluster_mesh(ns, 2), 0);
    WAIT_UNTIL(all_up(ns, 2), WAIT_MS);

    /* 1. Something that is not our protocol at all (an HTTP request). */
    static struct raw r;
    ASSERT_EQ(raw_connect(&r, b.port), 0);
    WAIT_UNTIL(r.connected, WAIT_MS);
    ASSERT_EQ(r.connect_status, 0);
    uv_read_start((uv_stream_t *)&r.tcp, raw_alloc, raw_on_read);
    const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    raw_send(&r, http, strlen(http));
    WAIT_UNTIL(r.eof, WAIT_MS);
    ASSERT_EQ(b.hs_errors, 1);
    ASSERT(strstr(b.hs_reason, "bad handshake") != NULL);
    /* It was told why, in a REJECT frame. */
    struct net__frame *f = calloc(1, sizeof(*f));
    ASSERT(f != NULL);
    size_t used;
    ASSERT_EQ(net__frame_decode(r.in, r.in_len, NET__HELLO_BYTES_MAX, f, &used), 0);
    ASSERT_EQ(f->type, NET__FRAME_REJECT);
    uv_close((uv_handle_t *)&r.tcp, raw_on_close);
    WAIT_UNTIL(r.closed, WAIT_MS);

    /* 2. A proper handshake as member 1, then a frame type it may not send. */
    ASSERT_EQ(raw_connect(&r, b.port), 0);
    WAIT_UNTIL(r.connected, WAIT_MS);
    uv_read_start((uv_stream_t *)&r.tcp, raw_alloc, raw_on_read);
    raw_send_hello(&r, 1, 2, ns, 2);
    WAIT_UNTIL(r.in_len > 0, WAIT_MS);
    ASSERT_EQ(net__frame_decode(r.in, r.in_len, NET__HELLO_BYTES_MAX, f, &used), 0);
    ASSERT_EQ(f->type, NET__FRAME_HELLO_ACK);
    ASSERT_EQ(f->u.hello.from_id, 2);
    /* A frame of an unknown type (0xEE) after a good handshake. */
    uint8_t bad[6];
    net__frame_put_header(bad, NET__FRAME_RAFT, 0);
    bad[5] = 0xee;
    raw_send(&r, bad, sizeof(bad));
    WAIT_UNTIL(r.eof, WAIT_MS);
    ASSERT_EQ(b.proto_errors, 1);
    ASSERT_EQ(b.proto_rc, NET_ETYPE);
    uv_close((uv_handle_t *)&r.tcp, raw_on_close);
    WAIT_UNTIL(r.closed, WAIT_MS);
    free(f);

    /* The raw client took over member 1's inbound slot on b (a member
     * that dials again replaces its old connection), so a's real stream
     * was closed; a's outbound redials and messages flow again. */
    WAIT_UNTIL(a.downs == 1, WAIT_MS);
    WAIT_UNTIL(a.up[2], WAIT_MS);
    for (uint64_t s = 0; s < 50; s++) ASSERT_EQ(send_msg(&a, 2, s), 0);
    for (uint64_t s = 0; s < 50; s++) ASSERT_EQ(send_msg(&b, 1, s), 0);
    WAIT_UNTIL(b.recv[1] == 50 && a.recv[2] == 50, WAIT_MS);
    ASSERT_EQ(a.bad_msgs + b.bad_msgs, 0);
    node_cleanup(&a);
    node_cleanup(&b);
    ASSERT_EQ(world_close(), 0);
}

/* ---- snapshots ---- */

struct snap_result {
    bool done;
    int status;
    char reason[NET_REASON_MAX + 1];
};

static void on_snap_sent(void *data, uint64_t to, int status, const char *reason) {
    (void)to;
    struct snap_result *r = data;
    r->done = true;
    r->status = status;
    snprintf(r->reason, sizeof(r->reason), "%s", reason ? reason : "");
}

struct src_file {
    const char *name;
    size_t size;
};

static const struct src_file src_files[] = {
    {"CURRENT", 16},     {"MANIFEST-000001", 1000},       {"000010.sst", 3 * 1024 * 1024 + 17},
    {"empty", 0},        {"sub/nested.log", 256 * 1024}, /* exactly one chunk */
    {"sub/deeper/x", 1}, {"000011.sst", 1024 * 1024 - 1},
};
#define N_SRC (sizeof(src_files) / sizeof(src_files[0]))

static uint8_t file_byte(size_t file, size_t off) {
    uint64_t x = (off + 1) * 0x9e3779b97f4a7c15ull ^ (file + 7) * 0xbf58476d1ce4e5b9ull;
    return (uint8_t)(x >> 29);
}

static int write_file(const char *path, size_t file, size_t size) {
    FILE *fp = fopen(path, "wb");
    if (fp == NULL) return -errno;
    for (size_t i = 0; i < size; i++) fputc(file_byte(file, i), fp);
    return fclose(fp) == 0 ? 0 : -errno;
}

static int make_source(char *dir) {
    snprintf(dir, PATH_MAX, "/tmp/qfs-net-tx-XXXXXX");
    if (mkdtemp(dir) == NULL) return -errno;
    char path[2 * PATH_MAX];
    snprintf(path, sizeof(path), "%s/sub", dir);
    if (mkdir(path, 0755) != 0) return -errno;
    snprintf(path, sizeof(path), "%s/sub/deeper", dir);
    if (mkdir(path, 0755) != 0) return -errno;
    for (size_t i = 0; i < N_SRC; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, src_files[i].name);
        int rc = write_file(path, i, src_files[i].size);
        if (rc != 0) return rc;
    }
    return 0;
}

/* 0 if dir/name holds exactly the bytes of source file `file`. */
static int check_file(const char *dir, const char *name, size_t file) {
    char path[2 * PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) return -1;
    size_t i = 0;
    int ch, rc = 0;
    while ((ch = fgetc(fp)) != EOF) {
        if (i >= src_files[file].size || (uint8_t)ch != file_byte(file, i)) {
            rc = -2;
            break;
        }
        i++;
    }
    fclose(fp);
    if (rc == 0 && i != src_files[file].size) rc = -3;
    return rc;
}

static size_t count_files(const char *dir) {
    DIR *d = opendir(dir);
    if (d == NULL) return 0;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) n++;
    closedir(d);
    return n;
}

TEST(snapshot_directory_arrives_byte_identical) {
    world_init();
    static struct node a, b;
    struct node *ns[] = {&a, &b};
    char src[PATH_MAX];
    ASSERT_EQ(make_source(src), 0);
    ASSERT_EQ(node_start(&a, 1, NULL), 0);
    ASSERT_EQ(node_start(&b, 2, NULL), 0);
    ASSERT_EQ(cluster_mesh(ns, 2), 0);
    WAIT_UNTIL(all_up(ns, 2), WAIT_MS);

    static struct snap_result res;
    memset(&res, 0, sizeof(res));
    ASSERT_EQ(net_send_snapshot(a.t, 2, "meta-123", 8, src, &res, on_snap_sent), 0);
    ASSERT(!res.done); /* never called from inside net_send_snapshot */
    ASSERT_EQ(net_send_snapshot(a.t, 2, "x", 1, src, &res, on_snap_sent), NET_EBUSY);
    struct net_peer_info info;
    ASSERT_EQ(net_transport_peer_info(a.t, 2, &info), 0);
    ASSERT(info.snapshot_in_flight);
    /* Raft traffic keeps flowing while the snapshot streams. */
    for (uint64_t s = 0; s < 200; s++) ASSERT_EQ(send_msg(&a, 2, s), 0);
    WAIT_UNTIL(res.done, WAIT_MS * 3);
    ASSERT_EQ(res.status, 0);
    ASSERT_EQ(b.snaps_done, 1);
    ASSERT_EQ(b.snaps_aborted, 0);
    ASSERT_STR_EQ(b.done_meta, "meta-123");
    WAIT_UNTIL(b.recv[1] == 200, WAIT_MS);

    /* Every file, byte for byte, and nothing else. */
    ASSERT(strncmp(b.done_dir, b.snap_dir, strlen(b.snap_dir)) == 0);
    for (size_t i = 0; i < N_SRC; i++) ASSERT_EQ(check_file(b.done_dir, src_files[i].name, i), 0);
    ASSERT_EQ(count_files(b.done_dir), 6); /* 5 top-level files + sub */
    char sub[2 * PATH_MAX];
    snprintf(sub, sizeof(sub), "%s/sub", b.done_dir);
    ASSERT_EQ(count_files(sub), 2);
    ASSERT_EQ(count_files(b.snap_dir), 1);

    /* A single file is sent under its base name. */
    memset(&res, 0, sizeof(res));
    char one[2 * PATH_MAX];
    snprintf(one, sizeof(one), "%s/000010.sst", src);
    ASSERT_EQ(net_send_snapshot(a.t, 2, "single", 6, one, &res, on_snap_sent), 0);
    WAIT_UNTIL(res.done, WAIT_MS * 3);
    ASSERT_EQ(res.status, 0);
    ASSERT_EQ(b.snaps_done, 2);
    ASSERT_EQ(check_file(b.done_dir, "000010.sst", 2), 0);
    ASSERT_EQ(count_files(b.done_dir), 1);
    ASSERT_EQ(count_files(b.snap_dir), 2);

    /* Sources that cannot be sent fail up front. */
    ASSERT_EQ(net_send_snapshot(a.t, 2, NULL, 0, "/nonexistent/x", &res, on_snap_sent), -ENOENT);
    char link[2 * PATH_MAX];
    snprintf(link, sizeof(link), "%s/link", src);
    ASSERT_EQ(symlink("CURRENT", link), 0);
    ASSERT_EQ(net_send_snapshot(a.t, 2, NULL, 0, src, &res, on_snap_sent), NET_ESNAPSOURCE);
    ASSERT_EQ(net_send_snapshot(a.t, 3, NULL, 0, src, &res, on_snap_sent), NET_ENOPEER);

    node_cleanup(&a);
    node_cleanup(&b);
    rm_rf(src);
    ASSERT_EQ(world_close(), 0);
}

TEST(snapshot_refusals_and_cancellation) {
    world_init();
    static struct node a, b;
    struct node *ns[] = {&a, &b};
    char src[PATH_MAX];
    ASSERT_EQ(make_source(src), 0);
    struct node_cfg nodir = {.no_snapshot_dir = true};
    ASSERT_EQ(node_start(&a, 1, NULL), 0);
    ASSERT_EQ(node_start(&b, 2, &nodir), 0);
    ASSERT_EQ(cluster_mesh(ns, 2), 0);
    WAIT_UNTIL(all_up(ns, 2), WAIT_MS);

    /* b has no snapshot directory: refused, with the reason. */
    static struct snap_result res;
    memset(&res, 0, sizeof(res));
    ASSERT_EQ(net_send_snapshot(a.t, 2, "m", 1, src, &res, on_snap_sent), 0);
    WAIT_UNTIL(res.done, WAIT_MS);
    ASSERT_EQ(res.status, NET_ESNAPREJECTED);
    ASSERT(strstr(res.reason, "no snapshot directory") != NULL);

    /* a refuses through on_snapshot_begin. */
    a.refuse_snapshots = NET_ELIMIT;
    memset(&res, 0, sizeof(res));
    ASSERT_EQ(net_send_snapshot(b.t, 1, "m", 1, src, &res, on_snap_sent), 0);
    WAIT_UNTIL(res.done, WAIT_MS);
    ASSERT_EQ(res.status, NET_ESNAPREJECTED);
    ASSERT(strstr(res.reason, "refused by the receiver") != NULL);
    ASSERT_EQ(count_files(a.snap_dir), 0);

    /* The links still work after the refusals (they were not protocol errors). */
    for (uint64_t s = 0; s < 20; s++) ASSERT_EQ(send_msg(&b, 1, s), 0);
    WAIT_UNTIL(a.recv[2] == 20, WAIT_MS);
    ASSERT_EQ(a.proto_errors + b.proto_errors, 0);

    /* The sender goes away mid-stream: its callback reports the cancellation,
     * the receiver aborts and removes the partial directory. */
    a.refuse_snapshots = 0;
    memset(&res, 0, sizeof(res));
    ASSERT_EQ(net_send_snapshot(b.t, 1, "m", 1, src, &res, on_snap_sent), 0);
    WAIT_UNTIL(count_files(a.snap_dir) == 1, WAIT_MS); /* the receiver started */
    node_stop(&b);
    ASSERT(res.done);
    ASSERT_EQ(res.status, NET_ECANCELED);
    WAIT_UNTIL(a.snaps_aborted == 1, WAIT_MS);
    ASSERT_EQ(a.snaps_done, 0);
    WAIT_UNTIL(count_files(a.snap_dir) == 0, WAIT_MS);
    WAIT_UNTIL(!a.up[2], WAIT_MS);
    ASSERT_EQ(net_send_snapshot(a.t, 2, "m", 1, src, &res, on_snap_sent), NET_EPEERDOWN);

    /* A removed peer cancels its snapshot too, and is gone. */
    ASSERT_EQ(net_transport_remove_peer(a.t, 2), 0);
    ASSERT_EQ(net_transport_remove_peer(a.t, 2), NET_ENOPEER);
    ASSERT_EQ(net_send(a.t, 2, "x", 1), NET_ENOPEER);
    node_cleanup(&a);
    node_cleanup(&b);
    rm_rf(src);
    ASSERT_EQ(world_close(), 0);
}

static void raw_send_frame(struct raw *r, const struct net__frame *f) {
    uint8_t *buf;
    size_t len;
    if (net__frame_encode(f, &buf, &len) != 0) abort();
    raw_send(r, buf, len);
    free(buf);
}

/* Decodes the next frame the raw client received, at *off; true if one. */
static bool raw_next(struct raw *r, size_t *off, struct net__frame *f) {
    size_t used;
    if (net__frame_decode(r->in + *off, r->in_len - *off, NET__HELLO_BYTES_MAX, f, &used) != 0)
        return false;
    *off += used;
    return used > 0;
}

static void raw_snap_begin(struct raw *r, uint64_t id, uint32_t files, uint64_t total) {
    struct net__frame f = {.type = NET__FRAME_SNAP_BEGIN};
    f.u.snap_begin.snap_id = id;
    f.u.snap_begin.n_files = files;
    f.u.snap_begin.total_bytes = total;
    raw_send_frame(r, &f);
}

static void raw_snap_file(struct raw *r, uint64_t id, const char *name, uint64_t size) {
    struct net__frame f = {.type = NET__FRAME_SNAP_FILE};
    f.u.snap_file.snap_id = id;
    f.u.snap_file.name = name;
    f.u.snap_file.name_len = strlen(name);
    f.u.snap_file.size = size;
    raw_send_frame(r, &f);
}

static void raw_snap_chunk(struct raw *r, uint64_t id, const char *data) {
    struct net__frame f = {.type = NET__FRAME_SNAP_CHUNK};
    f.u.snap_chunk.snap_id = id;
    f.u.snap_chunk.data = data;
    f.u.snap_chunk.len = strlen(data);
    raw_send_frame(r, &f);
}

static void raw_snap_end(struct raw *r, uint64_t id, uint32_t crc) {
    struct net__frame f = {.type = NET__FRAME_SNAP_END};
    f.u.snap_end.snap_id = id;
    f.u.snap_end.crc32 = crc;
    raw_send_frame(r, &f);
}

static void raw_raft(struct raw *r, uint64_t seq) {
    uint8_t buf[4096];
    msg_fill(buf, seq, 1);
    struct net__frame f = {.type = NET__FRAME_RAFT};
    f.u.raft.data = buf;
    f.u.raft.len = msg_len(seq);
    raw_send_frame(r, &f);
}

/* Frames the raw client decodes (~3 KiB, so not on the stack). */
static struct net__frame *ack_frame;

TEST(snapshot_receiver_checks_the_stream) {
    world_init();
    static struct node b;
    static struct node fake; /* member 1: only its URL and id exist */
    ASSERT_EQ(node_start(&b, 2, NULL), 0);
    fake.id = 1;
    snprintf(fake.url, sizeof(fake.url), "http://127.0.0.1:9");
    struct node *ns[] = {&fake, &b};
    struct net_member m[] = {{1, fake.url}, {2, b.url}};
    ASSERT_EQ(net_transport_set_members(b.t, m, 2), 0);

    static struct raw r;
    ASSERT_EQ(raw_connect(&r, b.port), 0);
    WAIT_UNTIL(r.connected, WAIT_MS);
    uv_read_start((uv_stream_t *)&r.tcp, raw_alloc, raw_on_read);
    raw_send_hello(&r, 1, 2, ns, 2);
    ack_frame = calloc(1, sizeof(*ack_frame));
    ASSERT(ack_frame != NULL);
    size_t off = 0;
    WAIT_UNTIL(raw_next(&r, &off, ack_frame), WAIT_MS);
    ASSERT_EQ(ack_frame->type, NET__FRAME_HELLO_ACK);

    /* 1. More data than the file announced: refused, directory removed. */
    raw_snap_begin(&r, 1, 1, 5);
    raw_snap_file(&r, 1, "f", 5);
    raw_snap_chunk(&r, 1, "0123456789");
    raw_snap_end(&r, 1, 0); /* ignored: that snapshot is over */
    WAIT_UNTIL(raw_next(&r, &off, ack_frame), WAIT_MS);
    ASSERT_EQ(ack_frame->type, NET__FRAME_SNAP_ACK);
    ASSERT_EQ(ack_frame->u.snap_ack.snap_id, 1);
    ASSERT_EQ(ack_frame->u.snap_ack.status, 1);
    ASSERT(memmem(ack_frame->u.snap_ack.reason, ack_frame->u.snap_ack.reason_len,
                  "beyond the announced file size", 30) != NULL);
    WAIT_UNTIL(b.snaps_aborted == 1 && count_files(b.snap_dir) == 0, WAIT_MS);
    ASSERT_EQ(b.snap_abort_rc, NET_ESNAPCORRUPT);

    /* 2. A wrong checksum. */
    raw_snap_begin(&r, 2, 1, 3);
    raw_snap_file(&r, 2, "f", 3);
    raw_snap_chunk(&r, 2, "abc");
    raw_snap_end(&r, 2, net__crc32(0, "abd", 3));
    WAIT_UNTIL(raw_next(&r, &off, ack_frame), WAIT_MS);
    ASSERT_EQ(ack_frame->u.snap_ack.snap_id, 2);
    ASSERT_EQ(ack_frame->u.snap_ack.status, 1);
    ASSERT(memmem(ack_frame->u.snap_ack.reason, ack_frame->u.snap_ack.reason_len,
                  "checksum mismatch", 17) != NULL);
    WAIT_UNTIL(b.snaps_aborted == 2 && count_files(b.snap_dir) == 0, WAIT_MS);

    /* 3. Fewer files than announced. */
    raw_snap_begin(&r, 3, 2, 3);
    raw_snap_file(&r, 3, "f", 3);
    raw_snap_chunk(&r, 3, "abc");
    raw_snap_end(&r, 3, net__crc32(0, "abc", 3));
    WAIT_UNTIL(raw_next(&r, &off, ack_frame), WAIT_MS);
    ASSERT_EQ(ack_frame->u.snap_ack.snap_id, 3);
    ASSERT_EQ(ack_frame->u.snap_ack.status, 1);
    WAIT_UNTIL(b.snaps_aborted == 3 && count_files(b.snap_dir) == 0, WAIT_MS);

    /* 4. The same name twice. */
    raw_snap_begin(&r, 4, 2, 2);
    raw_snap_file(&r, 4, "d/f", 1);
    raw_snap_chunk(&r, 4, "x");
    raw_snap_file(&r, 4, "d/f", 1);
    WAIT_UNTIL(raw_next(&r, &off, ack_frame), WAIT_MS);
    ASSERT_EQ(ack_frame->u.snap_ack.snap_id, 4);
    ASSERT_EQ(ack_frame->u.snap_ack.status, 1);
    ASSERT(memmem(ack_frame->u.snap_ack.reason, ack_frame->u.snap_ack.reason_len,
                  "create d/f: File exists", 23) != NULL);
    WAIT_UNTIL(b.snaps_aborted == 4 && count_files(b.snap_dir) == 0, WAIT_MS);

    /* 5. A good one, interleaved with Raft frames, still works on this link. */
    raw_raft(&r, 0);
    raw_snap_begin(&r, 5, 2, 6);
    raw_snap_file(&r, 5, "a", 3);
    raw_raft(&r, 1);
    raw_snap_chunk(&r, 5, "ab");
    raw_snap_chunk(&r, 5, "c");
    raw_snap_file(&r, 5, "sub/b", 3);
    raw_snap_chunk(&r, 5, "def");
    raw_snap_end(&r, 5, net__crc32(0, "abcdef", 6));
    raw_raft(&r, 2);
    WAIT_UNTIL(raw_next(&r, &off, ack_frame), WAIT_MS);
    ASSERT_EQ(ack_frame->u.snap_ack.snap_id, 5);
    ASSERT_EQ(ack_frame->u.snap_ack.status, 0);
    ASSERT_EQ(b.snaps_done, 1);
    WAIT_UNTIL(b.recv[1] == 3, WAIT_MS);
    ASSERT_EQ(b.proto_errors, 0);

    /* 6. An evil file name is a protocol error: the connection goes, and
     * so does the partial directory. */
    raw_snap_begin(&r, 6, 1, 1);
    uint8_t evil[8 + 8 + 2 + 4];
    net__put_u64(evil, 6);
    net__put_u64(evil + 8, 1);
    net__put_u16(evil + 16, 4);
    memcpy(evil + 18, "../x", 4);
    uint8_t hdr[NET__FRAME_HEADER_BYTES];
    net__frame_put_header(hdr, NET__FRAME_SNAP_FILE, sizeof(evil));
    raw_send(&r, hdr, sizeof(hdr));
    raw_send(&r, evil, sizeof(evil));
    WAIT_UNTIL(r.eof, WAIT_MS);
    ASSERT_EQ(b.proto_errors, 1);
    ASSERT_EQ(b.proto_rc, NET_EFILENAME);
    WAIT_UNTIL(b.snaps_aborted == 5, WAIT_MS);
    WAIT_UNTIL(count_files(b.snap_dir) == 1, WAIT_MS); /* only the good one is left */
    uv_close((uv_handle_t *)&r.tcp, raw_on_close);
    WAIT_UNTIL(r.closed, WAIT_MS);
    free(ack_frame);
    node_cleanup(&b);
    ASSERT_EQ(world_close(), 0);
}

TEST(snapshot_local_failures_are_reported) {
    world_init();
    static struct node a, b;
    struct node *ns[] = {&a, &b};
    char src[PATH_MAX];
    ASSERT_EQ(make_source(src), 0);
    ASSERT_EQ(node_start(&a, 1, NULL), 0);
    ASSERT_EQ(node_start(&b, 2, NULL), 0);
    ASSERT_EQ(cluster_mesh(ns, 2), 0);
    WAIT_UNTIL(all_up(ns, 2), WAIT_MS);

    /* A source file shrinks after it was listed: the sender aborts and
     * the receiver throws its partial copy away. */
    static struct snap_result res;
    memset(&res, 0, sizeof(res));
    ASSERT_EQ(net_send_snapshot(a.t, 2, "m", 1, src, &res, on_snap_sent), 0);
    char path[2 * PATH_MAX];
    snprintf(path, sizeof(path), "%s/000010.sst", src);
    ASSERT_EQ(truncate(path, 1000), 0);
    WAIT_UNTIL(res.done, WAIT_MS);
    ASSERT_EQ(res.status, NET_ESNAPSOURCE);
    ASSERT(strstr(res.reason, "000010.sst shrank") != NULL);
    WAIT_UNTIL(b.snaps_aborted == 1, WAIT_MS);
    ASSERT_EQ(b.snap_abort_rc, NET_ESNAPABORTED);
    WAIT_UNTIL(count_files(b.snap_dir) == 0, WAIT_MS);

    /* The receiver cannot write (its snapshot directory vanished). */
    ASSERT_EQ(rmdir(b.snap_dir), 0);
    memset(&res, 0, sizeof(res));
    snprintf(path, sizeof(path), "%s/CURRENT", src);
    ASSERT_EQ(net_send_snapshot(a.t, 2, "m", 1, path, &res, on_snap_sent), 0);
    WAIT_UNTIL(res.done, WAIT_MS);
    ASSERT_EQ(res.status, NET_ESNAPREJECTED);
    ASSERT(strstr(res.reason, "No such file or directory") != NULL);
    ASSERT_EQ(b.snaps_done, 0);

    /* Links survived both. */
    for (uint64_t s = 0; s < 20; s++) ASSERT_EQ(send_msg(&a, 2, s), 0);
    WAIT_UNTIL(b.recv[1] == 20, WAIT_MS);
    node_cleanup(&a);
    node_cleanup(&b);
    rm_rf(src);
    ASSERT_EQ(world_close(), 0);
}

TEST(bad_options_are_refused) {
    world_init();
    struct net_transport *t = NULL;
    struct net_options o;
    memset(&o, 0, sizeof(o));
    o.cb.on_message = on_message;
    o.listen_url = "http://127.0.0.1:0";
    ASSERT_EQ(net_transport_new(&loop, &o, &t), NET_EINVAL); /* id 0 */
    o.id = 1;
    o.listen_url = "http://example.invalid:0"; /* listen needs an IP or localhost */
    ASSERT_EQ(net_transport_new(&loop, &o, &t), NET_EURL);
    o.listen_url = "https://127.0.0.1:0"; /* TLS needs a certificate */
    ASSERT_EQ(net_transport_new(&loop, &o, &t), NET_ETLS);
    o.listen_url = "http://127.0.0.1:0";
    o.frame_bytes_max = 100;
    ASSERT_EQ(net_transport_new(&loop, &o, &t), NET_EINVAL);
    o.frame_bytes_max = 0;
    struct net_member m[] = {{2, "http://127.0.0.1:1"}};
    o.members = m;
    o.n_members = 1; /* does not contain id 1 */
    ASSERT_EQ(net_transport_new(&loop, &o, &t), NET_EINVAL);
    o.members = NULL;
    o.n_members = 0;
    /* A port in use: the error comes back and nothing leaks (run the loop once). */
    static struct node a;
    ASSERT_EQ(node_start(&a, 5, NULL), 0);
    char used[64];
    snprintf(used, sizeof(used), "http://127.0.0.1:%d", a.port);
    o.listen_url = used;
    ASSERT_EQ(net_transport_new(&loop, &o, &t), UV_EADDRINUSE);
    ASSERT(t == NULL);
    node_cleanup(&a);
    ASSERT_EQ(world_close(), 0);
}

/* ---- TLS ---- */

/* Certificates made by the openssl command in a temporary directory: CA
 * "ca" signs a, b (IP SAN 127.0.0.1) and revoked (listed in ca.crl); CA
 * "other" signs mallory. */
static char tls_dir[256];

static int tls_fixtures(void) {
    if (tls_dir[0] != '\0') return 0;
    snprintf(tls_dir, sizeof(tls_dir), "/tmp/qfs-net-tls-XXXXXX");
    if (mkdtemp(tls_dir) == NULL) return -errno;
    char cmd[8192];
    snprintf(cmd, sizeof(cmd),
             "set -e; cd %s\n"
             "ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-days 2 -subj /CN=$1 -keyout $1.key -out $1.pem "
             "-addext basicConstraints=critical,CA:TRUE "
             "-addext keyUsage=critical,keyCertSign,cRLSign; }\n"
             "leaf() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-subj /CN=$2 -keyout $2.key -out $2.csr\n"
             "printf 'extendedKeyUsage=serverAuth,clientAuth\\nsubjectAltName=IP:127.0.0.1\\n' "
             ">$2.ext\n"
             "openssl x509 -req -in $2.csr -CA $1.pem -CAkey $1.key -CAcreateserial -days 2 "
             "-extfile $2.ext -out $2.pem; }\n"
             "ca ca; ca other; leaf ca a; leaf ca b; leaf ca revoked; leaf other mallory\n"
             ": >index.txt; echo 1000 >crlnumber\n"
             "printf '[ca]\\ndefault_ca=c\\n[c]\\ndatabase=index.txt\\ncrlnumber=crlnumber\\n"
             "default_md=sha256\\ndefault_crl_days=2\\n' >ca.cnf\n"
             "openssl ca -config ca.cnf -keyfile ca.key -cert ca.pem -revoke revoked.pem\n"
             "openssl ca -config ca.cnf -keyfile ca.key -cert ca.pem -gencrl -out ca.crl\n",
             tls_dir);
    char full[8400];
    snprintf(full, sizeof(full), "( %s ) >/dev/null 2>&1", cmd);
    return system(full) == 0 ? 0 : -1;
}

struct tls_files {
    char cert[512], key[512], ca[512], crl[512];
    struct net_tls_options o;
};

/* Options presenting NAME's certificate, trusting `ca` (NULL: no CA file). */
static void tls_opts(struct tls_files *f, const char *name, const char *ca, bool client_auth) {
    memset(f, 0, sizeof(*f));
    snprintf(f->cert, sizeof(f->cert), "%s/%s.pem", tls_dir, name);
    snprintf(f->key, sizeof(f->key), "%s/%s.key", tls_dir, name);
    f->o.cert_file = f->cert;
    f->o.key_file = f->key;
    if (ca != NULL) {
        snprintf(f->ca, sizeof(f->ca), "%s/%s.pem", tls_dir, ca);
        f->o.trusted_ca_file = f->ca;
    }
    f->o.client_cert_auth = client_auth;
}

TEST(tls_peers_deliver_messages_and_snapshots) {
    ASSERT_EQ(tls_fixtures(), 0);
    world_init();
    static struct node a, b;
    struct node *ns[] = {&a, &b};
    struct tls_files fa, fb;
    tls_opts(&fa, "a", "ca", true);
    tls_opts(&fb, "b", "ca", true);
    struct node_cfg ca = {.https = true, .tls = &fa.o}, cb = {.https = true, .tls = &fb.o};
    ASSERT_EQ(node_start(&a, 1, &ca), 0);
    ASSERT_EQ(node_start(&b, 2, &cb), 0);
    ASSERT(strncmp(a.url, "https://", 8) == 0);
    ASSERT_EQ(cluster_mesh(ns, 2), 0);
    WAIT_UNTIL(all_up(ns, 2), WAIT_MS);
    ASSERT_EQ(a.hs_errors + b.hs_errors, 0);
    /* Enough to span many TLS records, in both directions. */
    const uint64_t count = 3000;
    for (uint64_t s = 0; s < count; s++) {
        ASSERT_EQ(send_msg(&a, 2, s), 0);
        ASSERT_EQ(send_msg(&b, 1, s), 0);
    }
    WAIT_UNTIL(b.recv[1] == count && a.recv[2] == count, WAIT_MS);
    ASSERT_EQ(a.bad_msgs + b.bad_msgs, 0);
    /* A big frame (several MiB) arrives whole. */
    size_t big = 5u * 1024u * 1024u;
    uint8_t *buf = malloc(big);
    ASSERT(buf != NULL);
    for (size_t i = 0; i < big; i++) buf[i] = (uint8_t)(i * 7);
    ASSERT_EQ(net_send(a.t, 2, buf, big), 0);
    free(buf);
    struct net_peer_info info;
    WAIT_UNTIL(net_transport_peer_info(a.t, 2, &info) == 0 && info.queued_frames == 0, WAIT_MS);
    ASSERT_EQ(info.queued_bytes, 0);
    /* It is not one of send_msg's: the checker counts it as the one bad message. */
    WAIT_UNTIL(b.bad_msgs == 1, WAIT_MS);

    /* A snapshot directory over TLS, with Raft traffic beside it. */
    char src[PATH_MAX];
    ASSERT_EQ(make_source(src), 0);
    static struct snap_result res;
    memset(&res, 0, sizeof(res));
    ASSERT_EQ(net_send_snapshot(a.t, 2, "meta", 4, src, &res, on_snap_sent), 0);
    for (uint64_t s = 0; s < 200; s++) ASSERT_EQ(send_msg(&a, 2, count + s), 0);
    WAIT_UNTIL(res.done, WAIT_MS * 3);
    ASSERT_EQ(res.status, 0);
    ASSERT_EQ(b.snaps_done, 1);
    ASSERT_STR_EQ(b.done_meta, "meta");
    WAIT_UNTIL(b.recv[1] == count + 200, WAIT_MS);
    for (size_t i = 0; i < N_SRC; i++) ASSERT_EQ(check_file(b.done_dir, src_files[i].name, i), 0);
    rm_rf(src);
    rm_rf(b.done_dir);
    node_cleanup(&a);
    node_cleanup(&b);
    ASSERT_EQ(world_close(), 0);
}

/* Waits until n reported a handshake error containing `what`. */
static bool hs_saw(const struct node *n, const char *what) {
    return n->hs_errors > 0 && strstr(n->hs_reason, what) != NULL;
}

TEST(tls_peer_from_another_ca_is_refused_and_reported) {
    ASSERT_EQ(tls_fixtures(), 0);
    world_init();
    static struct node a, m;
    struct node *ns[] = {&a, &m};
    struct tls_files fa, fm;
    tls_opts(&fa, "a", "ca", true);
    tls_opts(&fm, "mallory", "other", true);
    fm.o.insecure_skip_verify = true; /* mallory trusts anyone: a refuses it anyway */
    struct node_cfg ca = {.https = true, .tls = &fa.o}, cm = {.https = true, .tls = &fm.o};
    ASSERT_EQ(node_start(&a, 1, &ca), 0);
    ASSERT_EQ(node_start(&m, 2, &cm), 0);
    ASSERT_EQ(cluster_mesh(ns, 2), 0);
    WAIT_UNTIL(hs_saw(&a, "certificate verify failed") && m.hs_errors > 0, WAIT_MS);
    ASSERT(strstr(a.hs_reason, "TLS handshake failed: ") == a.hs_reason);
    ASSERT(strstr(a.hs_reason, "certificate subject /CN=mallory") != NULL);
    ASSERT_EQ(a.ups + m.ups, 0);
    ASSERT_EQ(send_msg(&m, 1, 0), NET_EPEERDOWN);
    node_cleanup(&a);
    node_cleanup(&m);
    ASSERT_EQ(world_close(), 0);
}

TEST(tls_refuses_missing_revoked_and_plain_peers) {
    ASSERT_EQ(tls_fixtures(), 0);
    world_init();
    static struct node a, r, p;
    struct tls_files fa, fr;
    tls_opts(&fa, "a", "ca", true);
    snprintf(fa.crl, sizeof(fa.crl), "%s/ca.crl", tls_dir);
    fa.o.crl_file = fa.crl;
    tls_opts(&fr, "revoked", "ca", false);
    struct node_cfg ca = {.https = true, .tls = &fa.o}, cr = {.https = true, .tls = &fr.o};
    ASSERT_EQ(node_start(&a, 1, &ca), 0);
    ASSERT_EQ(node_start(&r, 2, &cr), 0);
    struct node *ns[] = {&a, &r};
    ASSERT_EQ(cluster_mesh(ns, 2), 0);
    WAIT_UNTIL(hs_saw(&a, "certificate revoked"), WAIT_MS);
    ASSERT_EQ(a.ups + r.ups, 0);
    node_cleanup(&r);
    a.hs_errors = 0;

    /* A plain TCP peer at the TLS port: refused, and said so. */
    ASSERT_EQ(node_start(&p, 3, NULL), 0);
    char aurl[128];
    snprintf(aurl, sizeof(aurl), "%s", a.url);
    struct net_member m[] = {{1, aurl}, {3, p.url}};
    ASSERT_EQ(net_transport_set_members(p.t, m, 2), 0);
    char plain[128];
    snprintf(plain, sizeof(plain), "http://%.100s", a.url + strlen("https://"));
    ASSERT_EQ(net_transport_add_peer(p.t, 1, plain), 0);
    /* The TLS side says why; the plain side sees its connection closed. */
    WAIT_UNTIL(a.hs_errors > 0, WAIT_MS);
    ASSERT_STR_EQ(a.hs_reason, "TLS handshake failed: wrong version number");
    ASSERT_EQ(a.hs_peer, 0);
    ASSERT_EQ(p.ups, 0);
    node_cleanup(&p);

    /* A TLS peer without a certificate. */
    static struct node n;
    struct net_tls_options none = {.insecure_skip_verify = true};
    struct node_cfg cn = {.tls = &none};
    a.hs_errors = 0;
    ASSERT_EQ(node_start(&n, 4, &cn), 0);
    struct net_member m2[] = {{1, aurl}, {4, n.url}};
    ASSERT_EQ(net_transport_set_members(n.t, m2, 2), 0);
    ASSERT_EQ(net_transport_add_peer(n.t, 1, aurl), 0);
    WAIT_UNTIL(n.hs_errors > 0 && a.hs_errors > 0, WAIT_MS);
    ASSERT_STR_EQ(a.hs_reason, "TLS handshake failed: peer did not return a certificate");
    /* TLS 1.3: the dialer learns it from the alert after its own handshake. */
    ASSERT_STR_EQ(n.hs_reason, "TLS handshake failed: tlsv13 alert certificate required");
    ASSERT_EQ(n.hs_peer, 1);
    ASSERT_EQ(n.ups, 0);
    node_cleanup(&n);
    node_cleanup(&a);
    ASSERT_EQ(world_close(), 0);
}

TEST(tls_self_signed_peers_with_skip_verify) {
    ASSERT_EQ(tls_fixtures(), 0);
    world_init();
    char d1[300], d2[300];
    snprintf(d1, sizeof(d1), "%s/auto1", tls_dir);
    snprintf(d2, sizeof(d2), "%s/auto2", tls_dir);
    char err[NET_ERRMSG_SIZE] = "";
    ASSERT_EQ(net_tls_self_cert(d1, "127.0.0.1,localhost", err, sizeof(err)), 0);
    ASSERT_EQ(net_tls_self_cert(d2, "127.0.0.1", err, sizeof(err)), 0);
    static struct tls_files f1, f2;
    memset(&f1, 0, sizeof(f1));
    memset(&f2, 0, sizeof(f2));
    snprintf(f1.cert, sizeof(f1.cert), "%s/cert.pem", d1);
    snprintf(f1.key, sizeof(f1.key), "%s/key.pem", d1);
    snprintf(f2.cert, sizeof(f2.cert), "%s/cert.pem", d2);
    snprintf(f2.key, sizeof(f2.key), "%s/key.pem", d2);
    f1.o = (struct net_tls_options){.cert_file = f1.cert,
                                    .key_file = f1.key,
                                    .insecure_skip_verify = true};
    f2.o = (struct net_tls_options){.cert_file = f2.cert,
                                    .key_file = f2.key,
                                    .insecure_skip_verify = true};
    static struct node a, b;
    struct node *ns[] = {&a, &b};
    struct node_cfg ca = {.https = true, .tls = &f1.o}, cb = {.https = true, .tls = &f2.o};
    ASSERT_EQ(node_start(&a, 1, &ca), 0);
    ASSERT_EQ(node_start(&b, 2, &cb), 0);
    ASSERT_EQ(cluster_mesh(ns, 2), 0);
    WAIT_UNTIL(all_up(ns, 2), WAIT_MS);
    ASSERT_EQ(send_msg(&a, 2, 0), 0);
    WAIT_UNTIL(b.recv[1] == 1, WAIT_MS);
    node_cleanup(&a);
    node_cleanup(&b);

    /* Verifying a self-signed certificate fails: the dialer says so. */
    f1.o.insecure_skip_verify = false;
    ASSERT_EQ(node_start(&a, 1, &ca), 0);
    ASSERT_EQ(node_start(&b, 2, &cb), 0);
    ASSERT_EQ(cluster_mesh(ns, 2), 0);
    WAIT_UNTIL(hs_saw(&a, "self-signed certificate"), WAIT_MS);
    ASSERT_EQ(a.hs_peer, 2);
    node_cleanup(&a);
    node_cleanup(&b);
    ASSERT_EQ(world_close(), 0);
}

TEST(localhost_listen_binds_loopback) {
    world_init();
    static struct node a, b;
    struct node *ns[] = {&a, &b};
    struct node_cfg c = {.host = "localhost"};
    ASSERT_EQ(node_start(&a, 1, &c), 0);
    ASSERT_EQ(node_start(&b, 2, &c), 0);
    ASSERT(strncmp(a.url, "http://localhost:", 17) == 0);
    /* Peer URLs with a name are resolved at every dial. */
    ASSERT_EQ(cluster_mesh(ns, 2), 0);
    WAIT_UNTIL(all_up(ns, 2), WAIT_MS);
    node_cleanup(&a);
    node_cleanup(&b);
    ASSERT_EQ(world_close(), 0);
}

TEST(tls_cleanup_fixtures) {
    if (tls_dir[0] != '\0') rm_rf(tls_dir);
    tls_dir[0] = '\0';
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
