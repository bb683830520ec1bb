/*
 * node_sim.c - deterministic simulation of whole quorumfs clusters running
 * the real node driver (server/node_core.c) over the in-memory,
 * fault-injecting store (store_memdb), a simulated network and a virtual
 * clock: what TigerBeetle's VOPR does with its replica code.
 *
 * Every node is a `struct node` exactly as server_run builds it, except
 * that its `struct node_io` is this file's: time is the event heap's
 * virtual time, messages are raft_encode()d bytes in the heap (lost,
 * duplicated, delayed, reordered, cut by partitions), a node's disk is a
 * store_memdb that outlives its crashes, and a snapshot stream carries a
 * store_memdb built by replaying the committed log through the core's own
 * apply (node__apply_entry), since the in-memory store cannot checkpoint.
 *
 * Faults: crashes between events; disk faults armed to fail the Nth next
 * write batch, so a node dies at any step of an update (its hard state,
 * its entries, any one apply, a member table write, a compaction, a
 * snapshot install) through the core's own error paths (n->fatal); a
 * failed synced write stands for an fsync error; on every crash the disk
 * keeps a random prefix of its unsynced batches (a torn tail of the WAL).
 * Membership changes (a spare joins as learner or voter by snapshot, is
 * promoted, removed; a founder is removed from 5-node clusters), leadership
 * transfers, and leader churn (a new leader's first writes fail).
 *
 * Checks, after every step and at the end:
 * - every node applies the same entry at each index (state machine safety)
 *   with the same store result (revision, events);
 * - at most one leader per term (election safety);
 * - a snapshot's replayed state hashes as its donor's store;
 * - a linearizable read (node__read_barrier, then the node's store) sees
 *   every put acknowledged before it was asked;
 * - after healing: a leader, a new put applied on every member, every
 *   acknowledged put present on every member, equal store hashes.
 *
 * A run is a pure function of its seed and options: node_sim --seed N
 * --runs 1 -v replays run N.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "raft/raft.h"
#include "server/node.h"
#include "server/node_core.h"
#include "server/server.h"
#include "store/store.h"
#include "tests/sim/sim.h"

#define NS_NODES_MAX 6
#define NS_KEYS 8
#define NS_HEARTBEAT_MS 100u
#define NS_ELECTION_MS 1000u
#define NS_REQUEST_TIMEOUT_MS 3000u
/* Virtual time a healed cluster gets to elect a leader and apply a put on
 * every member. */
#define NS_HEAL_MAX_US (120u * 1000u * 1000u)
/* Events a run may take in the healing phase before giving up. */
#define NS_HEAL_STEPS_MAX 400000u
#define NS_FAIL_MSG_MAX 2048
#define NS_TOKEN "sim-cluster"

enum ns_ev {
    NS_EV_TICK = 1,
    NS_EV_DELIVER,
    NS_EV_CLIENT,
    NS_EV_NEMESIS,
    NS_EV_RESTART,
    NS_EV_HEAL_NET,
    NS_EV_SNAP,
};

enum ns_fail {
    NS_OK = 0,
    NS_FAIL_SM_SAFETY,
    NS_FAIL_ELECTION_SAFETY,
    NS_FAIL_READ_SAFETY,
    NS_FAIL_DURABILITY, /* an acknowledged put is missing after healing */
    NS_FAIL_DRIVER,     /* the simulation itself could not go on */
    NS_FAIL_LIVENESS,
    NS_FAIL_KINDS_
};

static const char *const fail_names[NS_FAIL_KINDS_] = {
    "ok",         "state machine safety", "election safety", "read safety",
    "durability", "driver error",         "liveness"};

static bool fail_is_safety(int k) {
    return k != NS_OK && k != NS_FAIL_LIVENESS && k != NS_FAIL_DRIVER;
}

struct ns_world;

struct ns_node {
    struct ns_world *w;
    int idx;
    uint64_t id; /* server_member_id of its peer URL */
    char name[16];
    char url[64];
    struct server_config cfg;
    struct store_memdb *disk; /* survives crashes */
    struct node *core;        /* NULL while down */
    bool up;
    bool off;      /* removed from the cluster: stopped for good */
    bool stop_req; /* io.stop was called */
    bool woken;    /* io.wake was called */
    uint32_t inc;  /* incarnation, bumped per start */
    uint64_t tick_us;
    struct store_memdb *pending_snap; /* received, not installed */
    bool snap_busy[NS_NODES_MAX];     /* a stream to that node is on its way */
};

/* What is known about one log index. */
struct ns_index {
    bool has_entry, has_res;
    uint64_t entry_hash, res_hash;
    int entry_by, res_by;
    uint64_t term;
    uint8_t type;
    void *data; /* copy of the entry's bytes (snapshot replay) */
    size_t len;
};

struct ns_params {
    int n_nodes; /* founders: 3 or 5 */
    bool churn;
    uint32_t loss_ppm, dup_ppm;
    uint64_t delay_min_us, delay_max_us;
    uint64_t client_gap_us, nemesis_gap_us;
    uint32_t read_ppm;
    uint32_t w_crash, w_fault, w_partition, w_heal, w_member, w_transfer, w_weather, w_churn;
    uint64_t snapshot_count;
    struct node_tuning tuning;
    uint32_t churn_ppm;
};

struct ns_stats {
    uint64_t steps, msgs, dropped, crashes, faults_armed, fatal_stops, restarts;
    uint64_t puts, puts_acked, reads, reads_served, snaps_sent, snaps_installed;
    uint64_t conf_proposed, conf_applied, removed, transfers, partitions, applied;
    /* Where the failed writes struck (from the core's log lines). */
    uint64_t died_persist, died_apply, died_install, died_other;
};

struct ns_world {
    uint64_t seed;
    bool verbose;
    struct ns_params p;
    struct sim_rng rng;
    uint64_t now_us, seq;
    struct sim_heap heap;
    int n_univ;
    struct ns_node nodes[NS_NODES_MAX];
    bool cut[NS_NODES_MAX][NS_NODES_MAX];
    uint32_t loss_ppm, dup_ppm;
    bool healing;
    uint64_t churn_until_us;
    bool founder_removed, spare_removed;
    struct ns_index *idx; /* by log index */
    size_t idx_cap;
    uint64_t *term_leader; /* by term */
    size_t term_cap;
    int64_t acked_rev[NS_KEYS]; /* newest acknowledged put of each key */
    uint64_t acked_index;       /* highest raft index of an acknowledged put */
    uint64_t next_value;
    /* Healing. */
    uint64_t heal_start_us, heal_put_us;
    uint64_t heal_index; /* raft index of the acknowledged healing put */
    bool heal_put_inflight;
    int fail_kind;
    char fail_msg[NS_FAIL_MSG_MAX];
    struct ns_stats st;
};

static void ns_fail(struct ns_world *w, int kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void ns_fail(struct ns_world *w, int kind, const char *fmt, ...) {
    if (w->fail_kind) return;
    w->fail_kind = kind;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->fail_msg, sizeof w->fail_msg, fmt, ap);
    va_end(ap);
    if (w->verbose)
        printf("%9.3fms FAIL %s: %s\n", (double)w->now_us / 1000.0, fail_names[kind], w->fail_msg);
}

static void ns_trace(struct ns_world *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void ns_trace(struct ns_world *w, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%9.3fms ", (double)w->now_us / 1000.0);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}
#define NTRACE(w, ...)                                                                             \
    do {                                                                                           \
        if ((w)->verbose) ns_trace((w), __VA_ARGS__);                                              \
    } while (0)

static void schedule(struct ns_world *w, uint64_t at_us, uint8_t type, int node, uint32_t arg,
                     struct sim_msg *msg) {
    struct sim_event e = {.time_us = at_us,
                          .seq = w->seq++,
                          .type = type,
                          .node = (uint8_t)node,
                          .arg = arg,
                          .msg = msg};
    sim_heap_push(&w->heap, &e);
}

static uint64_t gap(struct ns_world *w, uint64_t mean) {
    uint64_t g = sim_rng_range(&w->rng, mean / 4, mean * 7 / 4);
    return g ? g : 1;
}

static struct ns_node *node_by_id(struct ns_world *w, uint64_t id) {
    for (int i = 0; i < w->n_univ; i++)
        if (w->nodes[i].id == id) return &w->nodes[i];
    return NULL;
}

static struct ns_index *index_at(struct ns_world *w, uint64_t i) {
    sim_reserve((void **)&w->idx, &w->idx_cap, (size_t)i + 1, sizeof *w->idx);
    return &w->idx[i];
}

/* ------------------------------------------------------------ checks */

static uint64_t hash_u64(uint64_t v, uint64_t h) {
    return sim_hash(&v, sizeof v, h);
}

/* io.applied: the same entry at every index on every node. */
static void on_applied(void *ctx, const struct raft_entry *e) {
    struct ns_node *nd = ctx;
    struct ns_world *w = nd->w;
    w->st.applied++;
    uint64_t h = hash_u64(e->term, hash_u64(e->type, SIM_HASH_INIT));
    h = sim_hash(e->data.base, e->data.len, h);
    struct ns_index *x = index_at(w, e->index);
    if (!x->has_entry) {
        x->has_entry = true;
        x->entry_hash = h;
        x->entry_by = nd->idx;
        x->term = e->term;
        x->type = e->type;
        x->len = e->data.len;
        x->data = sim_xmalloc(e->data.len ? e->data.len : 1);
        if (e->data.len) memcpy(x->data, e->data.base, e->data.len);
        return;
    }
    if (x->entry_hash != h)
        ns_fail(w, NS_FAIL_SM_SAFETY,
                "n%d applied (index %" PRIu64 ", term %" PRIu64 ") but n%d applied (index %" PRIu64
                ", term %" PRIu64 ") with other contents",
                nd->idx + 1, e->index, e->term, x->entry_by + 1, e->index, x->term);
}

/* Apply hook: the same store result at every index on every node. */
static void on_apply_result(void *ctx, const struct store_result *res) {
    struct ns_node *nd = ctx;
    struct ns_world *w = nd->w;
    uint64_t h =
        hash_u64((uint64_t)res->revision, hash_u64((uint64_t)(int64_t)res->err, SIM_HASH_INIT));
    h = hash_u64(res->type, hash_u64(res->n_events, h));
    for (size_t i = 0; i < res->n_events; i++) {
        const struct store_event *ev = &res->events[i];
        h = hash_u64(ev->type, h);
        h = sim_hash(ev->kv.key.base, ev->kv.key.len, h);
        h = sim_hash(ev->kv.value.base, ev->kv.value.len, h);
        h = hash_u64((uint64_t)ev->kv.mod_revision, hash_u64((uint64_t)ev->kv.version, h));
    }
    struct ns_index *x = index_at(w, res->raft_index);
    if (!x->has_res) {
        x->has_res = true;
        x->res_hash = h;
        x->res_by = nd->idx;
    } else if (x->res_hash != h) {
        ns_fail(w, NS_FAIL_SM_SAFETY,
                "n%d's store result of index %" PRIu64 " (revision %" PRId64 ") differs from n%d's",
                nd->idx + 1, res->raft_index, res->revision, x->res_by + 1);
    }
    /* Leader churn: a leader may die as it commits. */
    if (!w->healing && w->now_us < w->churn_until_us && nd->core && nd->core->leader == nd->id &&
        sim_rng_ppm(&w->rng, w->p.churn_ppm / 4)) {
        store_memdb_fail_write(nd->disk, sim_rng_range(&w->rng, 1, 3));
        w->st.faults_armed++;
    }
}

static void on_leader(void *ctx, bool leading) {
    struct ns_node *nd = ctx;
    struct ns_world *w = nd->w;
    NTRACE(w, "n%d %s leadership", nd->idx + 1, leading ? "gains" : "loses");
    /* Leader churn: a new leader's first writes fail, after it sent. */
    if (leading && !w->healing && w->now_us < w->churn_until_us &&
        sim_rng_ppm(&w->rng, w->p.churn_ppm)) {
        store_memdb_fail_write(nd->disk, sim_rng_range(&w->rng, 1, 3));
        w->st.faults_armed++;
    }
}

static void check_roles(struct ns_world *w) {
    for (int i = 0; i < w->n_univ && !w->fail_kind; i++) {
        struct ns_node *nd = &w->nodes[i];
        if (!nd->up) continue;
        struct raft_status rs;
        raft_status(nd->core->raft, &rs);
        if (rs.role != RAFT_LEADER) continue;
        sim_reserve((void **)&w->term_leader, &w->term_cap, (size_t)rs.term + 1,
                    sizeof *w->term_leader);
        uint64_t *tl = &w->term_leader[rs.term];
        if (*tl == 0) {
            *tl = nd->id;
        } else if (*tl != nd->id) {
            struct ns_node *o = node_by_id(w, *tl);
            ns_fail(w, NS_FAIL_ELECTION_SAFETY, "n%d and n%d both lead term %" PRIu64,
                    o ? o->idx + 1 : -1, nd->idx + 1, rs.term);
        }
    }
}

/* ------------------------------------------------------------ io table */

static uint64_t io_now_ms(void *ctx) {
    return ((struct ns_node *)ctx)->w->now_us / 1000u;
}
static void io_wake(void *ctx) {
    ((struct ns_node *)ctx)->woken = true;
}
static void io_stop(void *ctx) {
    ((struct ns_node *)ctx)->stop_req = true;
}
static void io_log(void *ctx, const char *line) {
    struct ns_node *nd = ctx;
    if (strstr(line, "injected fault")) {
        if (strstr(line, "persisting the Raft log"))
            nd->w->st.died_persist++;
        else if (strstr(line, "applying entry"))
            nd->w->st.died_apply++;
        else if (strstr(line, "snapshot"))
            nd->w->st.died_install++;
        else
            nd->w->st.died_other++;
    }
    NTRACE(nd->w, "n%d: %s", nd->idx + 1, line);
}

static uint64_t draw_delay(struct ns_world *w) {
    return sim_rng_range(&w->rng, w->p.delay_min_us, w->p.delay_max_us);
}

static int io_send(void *ctx, uint64_t to, const void *buf, size_t len) {
    struct ns_node *nd = ctx;
    struct ns_world *w = nd->w;
    struct ns_node *dst = node_by_id(w, to);
    if (!dst) return -1;
    w->st.msgs++;
    int copies = 1;
    if (!w->healing && sim_rng_ppm(&w->rng, w->loss_ppm)) copies = 0;
    if (!w->healing && sim_rng_ppm(&w->rng, w->dup_ppm)) copies++;
    for (int c = 0; c < copies; c++) {
        struct sim_msg *m = sim_xcalloc(1, sizeof *m);
        m->from = nd->id;
        m->to = to;
        m->from_inc = nd->inc;
        m->len = len;
        m->buf = sim_xmalloc(len ? len : 1);
        memcpy(m->buf, buf, len);
        schedule(w, w->now_us + draw_delay(w), NS_EV_DELIVER, dst->idx, 0, m);
    }
    if (copies == 0) w->st.dropped++;
    return 0;
}

static int open_store_on(struct store_memdb *m, struct store **out) {
    struct store_options opt;
    store_options_init(&opt);
    opt.memdb = m;
    return store_open(&opt, out, NULL, 0);
}

static void replay_nop(void *ctx) {
    (void)ctx;
}
static void replay_log(void *ctx, const char *line) {
    (void)ctx;
    (void)line;
}
static int replay_send(void *ctx, uint64_t to, const void *buf, size_t len) {
    (void)ctx;
    (void)to;
    (void)buf;
    (void)len;
    return 0;
}
static void replay_send_snapshot(void *ctx, const struct raft_msg *m) {
    (void)ctx;
    (void)m;
}
static int replay_install(void *ctx, struct store **s) {
    (void)ctx;
    (void)s;
    return -1;
}

/*
 * A checkpoint of donor's store: a new founder's disk with the committed
 * log 2..applied saved and replayed through node__apply_entry. Its meta
 * and its store hash must equal the donor's. NULL (and a failure, unless
 * an entry is unknown) when it cannot be built.
 */
static struct store_memdb *checkpoint(struct ns_world *w, struct ns_node *donor,
                                      struct raft_snapshot_meta *meta) {
    struct store *ds = donor->core->store;
    uint64_t applied = store_applied_index(ds);
    struct raft_snapshot dsnap;
    struct raft_storage *drs = store_raft_storage(ds);
    if (drs->snapshot(drs->data, &dsnap) != 0) return NULL;
    for (uint64_t i = STORE_BOOTSTRAP_INDEX + 1; i <= applied; i++)
        if (i >= w->idx_cap || !w->idx[i].has_entry) return NULL;
    struct store_memdb *m = store_memdb_new();
    struct node *t = sim_xcalloc(1, sizeof *t);
    const struct node_io io = {.ctx = w,
                               .now_ms = io_now_ms,
                               .wake = replay_nop,
                               .stop = replay_nop,
                               .log = replay_log,
                               .send = replay_send,
                               .send_snapshot = replay_send_snapshot,
                               .install_snapshot = replay_install};
    /* now_ms reads ctx as a node: give it founder 1 (only its world is used). */
    struct node_io io2 = io;
    io2.ctx = &w->nodes[0];
    bool ok = m && node__core_init(t, &w->nodes[0].cfg, &io2, 1) == 0;
    bool inited = ok;
    if (ok) ok = open_store_on(m, &t->store) == 0;
    if (ok) ok = node__core_start(t, 1, NULL) == 0;
    size_t n_e = applied > STORE_BOOTSTRAP_INDEX ? (size_t)(applied - STORE_BOOTSTRAP_INDEX) : 0;
    struct raft_entry *es = sim_xcalloc(n_e ? n_e : 1, sizeof *es);
    for (size_t k = 0; k < n_e; k++) {
        const struct ns_index *x = &w->idx[STORE_BOOTSTRAP_INDEX + 1 + k];
        es[k] = (struct raft_entry){.index = STORE_BOOTSTRAP_INDEX + 1 + k,
                                    .term = x->term,
                                    .type = x->type,
                                    .data = {x->data, x->len}};
    }
    if (ok && n_e) ok = store_raft_save(t->store, NULL, es, n_e, false) == 0;
    for (size_t k = 0; ok && k < n_e; k++) ok = node__apply_entry(t, &es[k]) == 0;
    free(es);
    struct raft_snapshot snap;
    if (ok) {
        struct raft_storage *rs = store_raft_storage(t->store);
        ok = rs->snapshot(rs->data, &snap) == 0;
    }
    if (ok) {
        /* A RocksDB checkpoint carries the donor's hard state (its log ends
         * at the applied index here, so the commit index does too). */
        struct raft_hard_state hs;
        struct raft_conf_state cs;
        ok = drs->initial_state(drs->data, &hs, &cs) == 0;
        if (hs.commit > snap.meta.index) hs.commit = snap.meta.index;
        if (ok) ok = store_raft_save(t->store, &hs, NULL, 0, true) == 0; /* all durable */
    }
    if (ok) {
        uint32_t h1 = 0, h2 = 0;
        int64_t c1 = 0, c2 = 0;
        if (snap.meta.index != dsnap.meta.index || snap.meta.term != dsnap.meta.term)
            ns_fail(w, NS_FAIL_SM_SAFETY,
                    "the replayed log of n%d ends at (%" PRIu64 ", %" PRIu64
                    ") but its store is at (%" PRIu64 ", %" PRIu64 ")",
                    donor->idx + 1, snap.meta.index, snap.meta.term, dsnap.meta.index,
                    dsnap.meta.term);
        else if (store_hash(t->store, 0, &h1, &c1) == 0 && store_hash(ds, 0, &h2, &c2) == 0 &&
                 (h1 != h2 || c1 != c2))
            ns_fail(w, NS_FAIL_SM_SAFETY,
                    "n%d's store at applied %" PRIu64 " differs from the replay of the "
                    "committed log (hash %08x vs %08x)",
                    donor->idx + 1, applied, h2, h1);
        *meta = snap.meta;
    }
    if (inited) {
        node__core_cancel(t);
        store_close(t->store);
        t->store = NULL;
        node__core_fini(t);
    } else {
        store_close(t->store);
    }
    free(t);
    if (!ok || w->fail_kind) {
        store_memdb_free(m);
        return NULL;
    }
    return m;
}

static void io_send_snapshot(void *ctx, const struct raft_msg *m) {
    struct ns_node *nd = ctx;
    struct ns_world *w = nd->w;
    struct ns_node *dst = node_by_id(w, m->to);
    if (!dst) {
        node__snapshot_report(nd->core, m->to, false);
        return;
    }
    if (nd->snap_busy[dst->idx]) return; /* its report will come */
    struct raft_msg copy = *m;
    struct store_memdb *snap = checkpoint(w, nd, &copy.snapshot.meta);
    if (!snap) {
        node__snapshot_report(nd->core, m->to, false);
        return;
    }
    copy.snapshot.data = (struct raft_buf){NULL, 0};
    size_t cap = raft_encoded_size(&copy), len = 0;
    void *buf = sim_xmalloc(cap);
    if (raft_encode(&copy, buf, cap, &len) != 0) {
        free(buf);
        store_memdb_free(snap);
        ns_fail(w, NS_FAIL_DRIVER, "raft_encode of a SNAP failed");
        return;
    }
    struct sim_msg *sm = sim_xcalloc(1, sizeof *sm);
    sm->from = nd->id;
    sm->to = m->to;
    sm->from_inc = nd->inc;
    sm->type = RAFT_MSG_SNAP;
    sm->buf = buf;
    sm->len = len;
    sm->snap = snap;
    nd->snap_busy[dst->idx] = true;
    w->st.snaps_sent++;
    NTRACE(w, "n%d streams a snapshot at %" PRIu64 " to n%d", nd->idx + 1, copy.snapshot.meta.index,
           dst->idx + 1);
    schedule(w, w->now_us + draw_delay(w) * 4, NS_EV_SNAP, dst->idx, 0, sm);
}

static int io_install_snapshot(void *ctx, struct store **s) {
    struct ns_node *nd = ctx;
    if (!nd->pending_snap) return -1;
    store_close(*s);
    *s = NULL;
    store_memdb_free(nd->disk);
    nd->disk = nd->pending_snap; /* atomic, as a rename */
    nd->pending_snap = NULL;
    nd->w->st.snaps_installed++;
    return open_store_on(nd->disk, s) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------ node life */

static void crash(struct ns_world *w, struct ns_node *nd, const char *why, bool restart);

/* Runs what the libuv loop would run after a callback: drain, process. */
static void settle(struct ns_world *w, struct ns_node *nd) {
    for (int rounds = 0; nd->up && rounds < 64; rounds++) {
        if (nd->woken) {
            nd->woken = false;
            node__drain(nd->core);
            nd->core->dirty = true;
        }
        if (!nd->core->dirty || nd->stop_req) break;
        node__process(nd->core);
    }
    if (!nd->up || !nd->stop_req) return;
    if (nd->core->fatal) {
        w->st.fatal_stops++;
        crash(w, nd, "fatal (a write failed)", true);
    } else {
        w->st.removed++;
        crash(w, nd, "removed from the cluster", false);
        nd->off = true;
    }
}

static void start_node(struct ns_world *w, struct ns_node *nd) {
    if (nd->up || nd->off) return;
    nd->core = sim_xcalloc(1, sizeof *nd->core);
    nd->stop_req = false;
    nd->woken = false;
    nd->inc++;
    memset(nd->snap_busy, 0, sizeof nd->snap_busy);
    const struct node_io io = {
        .ctx = nd,
        .now_ms = io_now_ms,
        .wake = io_wake,
        .stop = io_stop,
        .log = io_log,
        .send = io_send,
        .send_snapshot = io_send_snapshot,
        .install_snapshot = io_install_snapshot,
        .applied = on_applied,
    };
    if (node__core_init(nd->core, &nd->cfg, &io, (uint64_t)nd->inc << 24) != 0) {
        ns_fail(w, NS_FAIL_DRIVER, "node__core_init failed");
        free(nd->core);
        nd->core = NULL;
        return;
    }
    int rc = open_store_on(nd->disk, &nd->core->store);
    if (rc == 0) rc = node__core_start(nd->core, sim_rng_next(&w->rng), &w->p.tuning);
    nd->up = true;
    if (rc != 0) { /* a disk fault at start: down again */
        w->st.fatal_stops++;
        crash(w, nd, "start failed", true);
        return;
    }
    node__set_hooks(nd->core, on_apply_result, on_leader, nd);
    NTRACE(w, "n%d starts (incarnation %" PRIu32 ", applied %" PRIu64 ")", nd->idx + 1, nd->inc,
           store_applied_index(nd->core->store));
    schedule(w, w->now_us + 1 + sim_rng_below(&w->rng, nd->tick_us), NS_EV_TICK, nd->idx, nd->inc,
             NULL);
    nd->core->dirty = true;
    settle(w, nd);
}

static void crash(struct ns_world *w, struct ns_node *nd, const char *why, bool restart) {
    if (!nd->up) return;
    NTRACE(w, "n%d CRASH (%s)", nd->idx + 1, why);
    w->st.crashes++;
    struct node *c = nd->core;
    nd->up = false; /* callbacks below see the node down */
    node__core_cancel(c);
    store_close(c->store);
    c->store = NULL;
    node__core_fini(c);
    free(c);
    nd->core = NULL;
    store_memdb_free(nd->pending_snap);
    nd->pending_snap = NULL;
    /* Power loss: a prefix of the unsynced batches survives. */
    store_memdb_fail_write(nd->disk, 0);
    uint64_t unsynced = store_memdb_unsynced(nd->disk);
    store_memdb_crash(nd->disk, sim_rng_below(&w->rng, unsynced + 1));
    if (restart && !w->healing)
        schedule(w, w->now_us + sim_rng_range(&w->rng, 10000, 4 * NS_ELECTION_MS * 1000u),
                 NS_EV_RESTART, nd->idx, nd->inc, NULL);
}

/* ------------------------------------------------------------ clients */

struct ns_req {
    struct ns_world *w;
    int node;
    uint8_t key;
    int64_t min_rev;
    bool heal;
};

static struct ns_node *random_up(struct ns_world *w) {
    int up[NS_NODES_MAX], n = 0;
    for (int i = 0; i < w->n_univ; i++)
        if (w->nodes[i].up) up[n++] = i;
    return n ? &w->nodes[up[sim_rng_below(&w->rng, (uint64_t)n)]] : NULL;
}

static struct ns_node *leader_node(struct ns_world *w) {
    struct ns_node *best = NULL;
    uint64_t best_term = 0;
    for (int i = 0; i < w->n_univ; i++) {
        struct ns_node *nd = &w->nodes[i];
        if (!nd->up) continue;
        struct raft_status rs;
        raft_status(nd->core->raft, &rs);
        if (rs.role == RAFT_LEADER && rs.term >= best_term) {
            best = nd;
            best_term = rs.term;
        }
    }
    return best;
}

static void put_done(void *arg, int err, const struct store_result *res) {
    struct ns_req *r = arg;
    struct ns_world *w = r->w;
    if (err == 0 && res) {
        w->st.puts_acked++;
        if (res->revision > w->acked_rev[r->key]) w->acked_rev[r->key] = res->revision;
        if (res->raft_index > w->acked_index) w->acked_index = res->raft_index;
        if (r->heal) {
            w->heal_index = res->raft_index;
            w->heal_put_inflight = false;
        }
        NTRACE(w, "n%d put k%u acknowledged at index %" PRIu64 " revision %" PRId64, r->node + 1,
               r->key, res->raft_index, res->revision);
    } else if (r->heal) {
        NTRACE(w, "healing put failed: %d", err);
        w->heal_put_inflight = false;
    }
    free(r);
}

static void submit_put(struct ns_world *w, struct ns_node *nd, uint8_t key, bool heal) {
    char k[8], v[32];
    snprintf(k, sizeof k, "k%u", key);
    int vl = snprintf(v, sizeof v, "v%" PRIu64, ++w->next_value);
    struct store_op op;
    memset(&op, 0, sizeof op);
    op.type = STORE_OP_PUT;
    op.u.put.key = (struct store_bytes){k, strlen(k)};
    op.u.put.value = (struct store_bytes){v, (size_t)vl};
    struct store_request req;
    memset(&req, 0, sizeof req);
    req.type = STORE_REQ_TXN;
    req.u.txn.success = &op;
    req.u.txn.n_success = 1;
    struct ns_req *r = sim_xcalloc(1, sizeof *r);
    *r = (struct ns_req){.w = w, .node = nd->idx, .key = key, .heal = heal};
    w->st.puts++;
    int rc = node__submit(nd->core, &req, NODE_ORIGIN_CLIENT, put_done, r);
    if (heal) NTRACE(w, "n%d healing put k%u: %d", nd->idx + 1, key, rc);
    if (rc != 0) {
        free(r);
        return;
    }
    if (heal) w->heal_put_inflight = true;
    settle(w, nd);
}

static void read_done(void *arg, int err) {
    struct ns_req *r = arg;
    struct ns_world *w = r->w;
    struct ns_node *nd = &w->nodes[r->node];
    if (err == 0 && nd->up) {
        char k[8];
        snprintf(k, sizeof k, "k%u", r->key);
        struct store_range_result out;
        memset(&out, 0, sizeof out);
        int rc = store_get(nd->core->store, k, strlen(k), 0, &out);
        if (rc == 0) {
            int64_t mod = out.n_kvs ? out.kvs[0].mod_revision : 0;
            w->st.reads_served++;
            if (mod < r->min_rev)
                ns_fail(w, NS_FAIL_READ_SAFETY,
                        "a linearizable read of k%u on n%d returned revision %" PRId64
                        " but the put at revision %" PRId64
                        " was acknowledged before the read was asked",
                        r->key, nd->idx + 1, mod, r->min_rev);
        }
        store_range_result_release(&out);
    }
    free(r);
}

static void client(struct ns_world *w) {
    struct ns_node *nd = NULL;
    if (sim_rng_ppm(&w->rng, 500000)) nd = leader_node(w);
    if (!nd) nd = random_up(w);
    if (nd) {
        uint8_t key = (uint8_t)sim_rng_below(&w->rng, NS_KEYS);
        if (sim_rng_ppm(&w->rng, w->p.read_ppm)) {
            struct ns_req *r = sim_xcalloc(1, sizeof *r);
            *r = (struct ns_req){.w = w, .node = nd->idx, .key = key, .min_rev = w->acked_rev[key]};
            w->st.reads++;
            if (node__read_barrier(nd->core, read_done, r) != 0)
                free(r);
            else
                settle(w, nd);
        } else {
            submit_put(w, nd, key, false);
        }
    }
    schedule(w, w->now_us + gap(w, w->p.client_gap_us), NS_EV_CLIENT, 0, 0, NULL);
}

/* ------------------------------------------------------------ nemesis */

static void change_done(void *arg, int err) {
    struct ns_req *r = arg;
    if (err == 0) r->w->st.conf_applied++;
    free(r);
}

static bool conf_has(const struct raft_conf_state *cs, uint64_t id, bool *learner) {
    for (uint32_t i = 0; i < cs->n_voters; i++)
        if (cs->voters[i] == id) {
            *learner = false;
            return true;
        }
    for (uint32_t i = 0; i < cs->n_learners; i++)
        if (cs->learners[i] == id) {
            *learner = true;
            return true;
        }
    return false;
}

static void member_change(struct ns_world *w) {
    struct ns_node *l = leader_node(w);
    if (!l) return;
    struct raft_status rs;
    raft_status(l->core->raft, &rs);
    struct node_member m;
    memset(&m, 0, sizeof m);
    int type = -2;
    bool learner = false;
    if (w->n_univ > w->p.n_nodes && !w->spare_removed) {
        struct ns_node *sp = &w->nodes[w->p.n_nodes];
        if (!conf_has(&rs.conf, sp->id, &learner)) {
            type = sim_rng_ppm(&w->rng, 600000) ? RAFT_CC_ADD_LEARNER : RAFT_CC_ADD_VOTER;
            snprintf(m.name, sizeof m.name, "%s", sp->name);
            snprintf(m.peer_urls, sizeof m.peer_urls, "%s", sp->url);
        } else if (learner && sim_rng_ppm(&w->rng, 700000)) {
            type = RAFT_CC_ADD_VOTER;
            m.id = sp->id;
        } else if (sim_rng_ppm(&w->rng, 300000)) {
            type = RAFT_CC_REMOVE;
            m.id = sp->id;
        }
    }
    if (type == -2 && w->p.n_nodes == 5 && !w->founder_removed && rs.conf.n_voters >= 5) {
        struct ns_node *v = &w->nodes[sim_rng_below(&w->rng, (uint64_t)w->p.n_nodes)];
        type = RAFT_CC_REMOVE;
        m.id = v->id;
    }
    if (type == -2) return;
    struct ns_req *r = sim_xcalloc(1, sizeof *r);
    r->w = w;
    int rc = node__member_change(l->core, type, &m, change_done, r);
    NTRACE(w, "n%d proposes membership change %d of %016" PRIx64 ": %d", l->idx + 1, type, m.id,
           rc);
    if (rc != 0) {
        free(r);
        return;
    }
    w->st.conf_proposed++;
    if (type == RAFT_CC_REMOVE) {
        /* Never re-added: a removed member's id stays retired. */
        struct ns_node *v = node_by_id(w, m.id);
        if (v && v->idx >= w->p.n_nodes)
            w->spare_removed = true;
        else
            w->founder_removed = true;
    }
    settle(w, l);
}

static void transfer_done(void *arg, int err) {
    (void)err;
    free(arg);
}

static void nemesis(struct ns_world *w) {
    const struct ns_params *p = &w->p;
    uint32_t weights[] = {p->w_crash,  p->w_fault,    p->w_partition, p->w_heal,
                          p->w_member, p->w_transfer, p->w_weather,   p->w_churn};
    size_t n_w = sizeof weights / sizeof weights[0];
    uint32_t total = 0;
    for (size_t i = 0; i < n_w; i++) total += weights[i];
    uint64_t r = sim_rng_below(&w->rng, total);
    size_t a = 0;
    while (a + 1 < n_w && r >= weights[a]) r -= weights[a++];
    switch (a) {
    case 0: {
        struct ns_node *nd = sim_rng_ppm(&w->rng, 400000) ? leader_node(w) : NULL;
        if (!nd) nd = random_up(w);
        if (nd) crash(w, nd, "nemesis", true);
        break;
    }
    case 1: { /* the Nth write from now fails: a crash at some step of an update */
        struct ns_node *nd = sim_rng_ppm(&w->rng, 500000) ? leader_node(w) : NULL;
        if (!nd) nd = random_up(w);
        if (nd) {
            uint64_t k = sim_rng_range(&w->rng, 1, 6);
            store_memdb_fail_write(nd->disk, k);
            w->st.faults_armed++;
            NTRACE(w, "n%d: write %" PRIu64 " from now will fail", nd->idx + 1, k);
        }
        break;
    }
    case 2: {
        memset(w->cut, 0, sizeof w->cut);
        int v = (int)sim_rng_below(&w->rng, (uint64_t)w->n_univ);
        int kind = (int)sim_rng_below(&w->rng, 3);
        for (int j = 0; j < w->n_univ; j++) {
            if (j == v) continue;
            if (kind != 2) w->cut[v][j] = true; /* mute or isolate */
            if (kind != 0) w->cut[j][v] = true; /* deafen or isolate */
        }
        w->st.partitions++;
        NTRACE(w, "PARTITION around n%d (%d)", v + 1, kind);
        schedule(w, w->now_us + gap(w, 4 * NS_ELECTION_MS * 1000u), NS_EV_HEAL_NET, 0,
                 (uint32_t)w->st.partitions, NULL);
        break;
    }
    case 3:
        memset(w->cut, 0, sizeof w->cut);
        break;
    case 4:
        member_change(w);
        break;
    case 5: {
        struct ns_node *l = leader_node(w);
        if (!l) break;
        struct raft_status rs;
        raft_status(l->core->raft, &rs);
        if (rs.conf.n_voters == 0) break;
        uint64_t to = rs.conf.voters[sim_rng_below(&w->rng, rs.conf.n_voters)];
        void *arg = sim_xcalloc(1, 1);
        if (node__transfer_leader(l->core, to, transfer_done, arg) != 0)
            free(arg);
        else
            w->st.transfers++;
        settle(w, l);
        break;
    }
    case 6: {
        static const uint32_t loss[] = {0, 0, 20000, 100000};
        w->loss_ppm = loss[sim_rng_below(&w->rng, 4)];
        w->dup_ppm = loss[sim_rng_below(&w->rng, 3)];
        break;
    }
    default:
        w->churn_until_us = w->now_us + gap(w, 6 * NS_ELECTION_MS * 1000u);
        NTRACE(w, "leader churn until %.3fms", (double)w->churn_until_us / 1000.0);
        break;
    }
    schedule(w, w->now_us + gap(w, p->nemesis_gap_us), NS_EV_NEMESIS, 0, 0, NULL);
}

/* ------------------------------------------------------------ delivery */

static void deliver(struct ns_world *w, struct sim_msg *m) {
    struct ns_node *to = node_by_id(w, m->to);
    struct ns_node *from = node_by_id(w, m->from);
    if (!to || !from) return;
    if (!to->up || w->cut[from->idx][to->idx]) {
        w->st.dropped++;
        return;
    }
    node__recv_message(to->core, m->from, m->buf, m->len);
    settle(w, to);
}

static void snap_report(struct ns_world *w, struct sim_msg *m, bool ok) {
    struct ns_node *from = node_by_id(w, m->from);
    struct ns_node *to = node_by_id(w, m->to);
    if (!from || !to || !from->up || from->inc != m->from_inc) return;
    from->snap_busy[to->idx] = false;
    node__snapshot_report(from->core, m->to, ok);
    settle(w, from);
}

static void deliver_snap(struct ns_world *w, struct sim_msg *m) {
    struct ns_node *to = node_by_id(w, m->to);
    struct ns_node *from = node_by_id(w, m->from);
    bool lost = !w->healing && sim_rng_ppm(&w->rng, w->loss_ppm);
    if (!to->up || w->cut[from->idx][to->idx] || lost) {
        store_memdb_free(m->snap);
        m->snap = NULL;
        snap_report(w, m, false);
        return;
    }
    struct raft_msg rm;
    if (raft_decode(m->buf, m->len, &rm) != 0) {
        ns_fail(w, NS_FAIL_DRIVER, "raft_decode of a SNAP failed");
        return;
    }
    store_memdb_free(to->pending_snap);
    to->pending_snap = m->snap;
    /* The disk fails while the snapshot is installed (its first write). */
    if (!w->healing && sim_rng_ppm(&w->rng, 100000)) {
        store_memdb_fail_write(m->snap, 1);
        w->st.faults_armed++;
    }
    m->snap = NULL;
    node__snapshot_received(to->core, m->from, &rm);
    raft_msg_release(&rm);
    settle(w, to);
    snap_report(w, m, true);
}

/* ------------------------------------------------------------ healing */

static bool is_member(const struct raft_conf_state *cs, uint64_t id) {
    bool learner;
    return conf_has(cs, id, &learner);
}

/* Returns true when the run is over. */
static bool heal_eval(struct ns_world *w) {
    if (w->fail_kind) return true;
    if (w->now_us - w->heal_start_us > NS_HEAL_MAX_US) {
        char lag[512];
        size_t off = 0;
        lag[0] = 0;
        for (int i = 0; i < w->n_univ && off < sizeof lag - 80; i++) {
            const struct ns_node *nd = &w->nodes[i];
            struct raft_status rs;
            memset(&rs, 0, sizeof rs);
            if (nd->up) raft_status(nd->core->raft, &rs);
            off += (size_t)snprintf(lag + off, sizeof lag - off,
                                    " n%d%s term %" PRIu64 " role %u commit %" PRIu64
                                    " applied %" PRIu64 ";",
                                    i + 1,
                                    nd->off  ? "(off)"
                                    : nd->up ? ""
                                             : "(down)",
                                    rs.term, (unsigned)rs.role, rs.commit,
                                    nd->up ? store_applied_index(nd->core->store) : 0);
        }
        ns_fail(w, NS_FAIL_LIVENESS,
                "the healed cluster did not apply a new put everywhere "
                "within %u s:%s",
                NS_HEAL_MAX_US / 1000000u, lag);
        return true;
    }
    struct ns_node *l = leader_node(w);
    if (!l) return false;
    struct raft_status ls;
    raft_status(l->core->raft, &ls);
    /* Members run. A removed member stops itself once it applies its
     * removal; one that never learns it stays up, outside the cluster. */
    for (int i = 0; i < w->n_univ; i++) {
        struct ns_node *nd = &w->nodes[i];
        if (is_member(&ls.conf, nd->id) && !nd->up && !nd->off) start_node(w, nd);
    }
    if (w->fail_kind || !l->up) return w->fail_kind != 0;
    if (!w->heal_index) {
        if (!w->heal_put_inflight ||
            w->now_us - w->heal_put_us > 3 * NS_REQUEST_TIMEOUT_MS * 1000u) {
            w->heal_put_us = w->now_us;
            submit_put(w, l, 0, true);
        }
        return w->fail_kind != 0;
    }
    for (int i = 0; i < w->n_univ; i++) {
        struct ns_node *nd = &w->nodes[i];
        if (!is_member(&ls.conf, nd->id)) continue;
        uint64_t a = nd->up ? store_applied_index(nd->core->store) : 0;
        if (a < w->heal_index || a < w->acked_index) return false;
    }
    /* Every member has applied the healing put: check what they hold. */
    uint32_t h0 = 0;
    uint64_t a0 = 0;
    int first = -1;
    for (int i = 0; i < w->n_univ && !w->fail_kind; i++) {
        struct ns_node *nd = &w->nodes[i];
        if (!nd->up || !is_member(&ls.conf, nd->id)) continue;
        for (uint8_t k = 0; k < NS_KEYS && !w->fail_kind; k++) {
            char key[8];
            snprintf(key, sizeof key, "k%u", k);
            struct store_range_result out;
            memset(&out, 0, sizeof out);
            if (store_get(nd->core->store, key, strlen(key), 0, &out) == 0) {
                int64_t mod = out.n_kvs ? out.kvs[0].mod_revision : 0;
                if (mod < w->acked_rev[k])
                    ns_fail(w, NS_FAIL_DURABILITY,
                            "n%d holds k%u at revision %" PRId64 " (store revision %" PRId64
                            ", applied %" PRIu64 ") but a put at revision %" PRId64
                            " was acknowledged",
                            i + 1, k, mod, out.revision, store_applied_index(nd->core->store),
                            w->acked_rev[k]);
            }
            store_range_result_release(&out);
        }
        uint32_t h = 0;
        uint64_t a = store_applied_index(nd->core->store);
        if (store_hash(nd->core->store, 0, &h, NULL) != 0) continue;
        if (first < 0) {
            first = i;
            h0 = h;
            a0 = a;
        } else if (a == a0 && h != h0) {
            ns_fail(w, NS_FAIL_SM_SAFETY,
                    "n%d and n%d applied %" PRIu64 " entries but their stores differ", first + 1,
                    i + 1, a);
        }
    }
    return true;
}

/* ------------------------------------------------------------ one run */

static void draw_params(struct ns_world *w, int profile, int nodes) {
    struct ns_params *p = &w->p;
    struct sim_rng *g = &w->rng;
    memset(p, 0, sizeof *p);
    p->n_nodes = nodes ? nodes : (w->seed % 2 ? 5 : 3);
    p->churn = profile == 2 || (profile == 0 && sim_rng_ppm(g, 250000));
    static const uint32_t loss[] = {0, 10000, 50000};
    p->loss_ppm = loss[sim_rng_below(g, 3)];
    p->dup_ppm = loss[sim_rng_below(g, 3)];
    p->delay_min_us = sim_rng_range(g, 200, 2000);
    p->delay_max_us = p->delay_min_us + sim_rng_range(g, 1000, 30000);
    p->client_gap_us = sim_rng_range(g, 5, 60) * 1000u;
    p->nemesis_gap_us = sim_rng_range(g, 200, 1500) * 1000u;
    p->read_ppm = (uint32_t)sim_rng_range(g, 200000, 500000);
    p->w_crash = (uint32_t)sim_rng_range(g, 0, 4);
    p->w_fault = (uint32_t)sim_rng_range(g, 1, 4);
    p->w_partition = (uint32_t)sim_rng_range(g, 0, 3);
    p->w_heal = (uint32_t)sim_rng_range(g, 1, 3);
    p->w_member = (uint32_t)sim_rng_range(g, 1, 3);
    p->w_transfer = (uint32_t)sim_rng_range(g, 0, 2);
    p->w_weather = (uint32_t)sim_rng_range(g, 0, 2);
    p->w_churn = (uint32_t)sim_rng_range(g, 0, 2);
    p->churn_ppm = 600000;
    static const uint64_t counts[] = {4, 10, 30, 100};
    p->snapshot_count = counts[sim_rng_below(g, 4)];
    static const uint64_t sizes[] = {1, 512, 1024 * 1024};
    static const unsigned inflight[] = {1, 4, 256};
    p->tuning = (struct node_tuning)NODE_TUNING_DEFAULT;
    p->tuning.max_size_per_msg = sizes[sim_rng_below(g, 3)];
    p->tuning.max_inflight_msgs = inflight[sim_rng_below(g, 3)];
    if (p->churn) {
        /* Figure 8 of the Raft paper: leaders die young and entries travel
         * one per message (see tests/sim/sim_world.c, draw_params). */
        p->w_churn = 8;
        p->tuning.max_size_per_msg = 1;
        p->churn_ppm = 800000;
    }
}

static void node_config(struct ns_world *w, struct ns_node *nd) {
    struct server_config *c = &nd->cfg;
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", nd->name);
    snprintf(c->data_dir, sizeof c->data_dir, "/nonexistent/quorumfs-node-sim");
    snprintf(c->advertise_client_urls, sizeof c->advertise_client_urls, "sim://%s:2379", nd->name);
    snprintf(c->initial_cluster_token, sizeof c->initial_cluster_token, "%s", NS_TOKEN);
    bool spare = nd->idx >= w->p.n_nodes;
    c->initial_cluster_existing = spare;
    int n_m = spare ? nd->idx + 1 : w->p.n_nodes;
    for (int i = 0; i < n_m; i++) {
        struct server_member *m = &c->members[c->n_members++];
        snprintf(m->name, sizeof m->name, "%s", w->nodes[i].name);
        snprintf(m->peer_url, sizeof m->peer_url, "%s", w->nodes[i].url);
        m->id = w->nodes[i].id;
    }
    c->heartbeat_interval_ms = NS_HEARTBEAT_MS;
    c->election_timeout_ms = NS_ELECTION_MS;
    c->snapshot_count = w->p.snapshot_count;
    c->request_timeout_ms = NS_REQUEST_TIMEOUT_MS;
}

static void dispatch(struct ns_world *w, struct sim_event *e) {
    struct ns_node *nd = &w->nodes[e->node];
    switch (e->type) {
    case NS_EV_TICK:
        if (!nd->up || nd->inc != e->arg) break;
        node__tick(nd->core);
        settle(w, nd);
        if (nd->up && nd->inc == e->arg)
            schedule(w, w->now_us + nd->tick_us, NS_EV_TICK, e->node, nd->inc, NULL);
        break;
    case NS_EV_DELIVER:
        deliver(w, e->msg);
        break;
    case NS_EV_SNAP:
        deliver_snap(w, e->msg);
        break;
    case NS_EV_CLIENT:
        if (!w->healing) client(w);
        break;
    case NS_EV_NEMESIS:
        if (!w->healing) nemesis(w);
        break;
    case NS_EV_RESTART:
        if (!w->healing && !nd->up && nd->inc == e->arg) {
            w->st.restarts++;
            start_node(w, nd);
        }
        break;
    case NS_EV_HEAL_NET:
        if (e->arg == (uint32_t)w->st.partitions) memset(w->cut, 0, sizeof w->cut);
        break;
    default:
        break;
    }
}

static void free_msg(struct sim_msg *m) {
    if (!m) return;
    store_memdb_free(m->snap);
    free(m->buf);
    free(m);
}

struct ns_opts {
    uint64_t steps;
    int nodes;
    int profile; /* 0 mixed, 1 random, 2 churn */
    bool verbose;
};

static int ns_run(uint64_t seed, const struct ns_opts *o, struct ns_stats *st, char *msg,
                  size_t cap) {
    struct ns_world *w = sim_xcalloc(1, sizeof *w);
    w->seed = seed;
    w->verbose = o->verbose;
    sim_rng_seed(&w->rng, seed);
    draw_params(w, o->profile, o->nodes);
    bool spare = sim_rng_ppm(&w->rng, 700000);
    w->n_univ = w->p.n_nodes + (spare ? 1 : 0);
    w->loss_ppm = w->p.loss_ppm;
    w->dup_ppm = w->p.dup_ppm;
    for (int i = 0; i < w->n_univ; i++) {
        struct ns_node *nd = &w->nodes[i];
        nd->w = w;
        nd->idx = i;
        snprintf(nd->name, sizeof nd->name, "n%d", i + 1);
        snprintf(nd->url, sizeof nd->url, "sim://n%d:2380", i + 1);
        nd->id = server_member_id(nd->url, NS_TOKEN);
        nd->tick_us = sim_rng_range(&w->rng, NS_HEARTBEAT_MS * 900u, NS_HEARTBEAT_MS * 1100u);
        nd->disk = store_memdb_new();
        if (!nd->disk) abort();
    }
    for (int i = 0; i < w->n_univ; i++) node_config(w, &w->nodes[i]);
    NTRACE(w,
           "seed %" PRIu64 ": %d nodes%s, %s, snapshot every %" PRIu64 ", msg bytes %" PRIu64
           ", inflight %u",
           seed, w->p.n_nodes, spare ? " + spare" : "", w->p.churn ? "churn" : "random",
           w->p.snapshot_count, w->p.tuning.max_size_per_msg, w->p.tuning.max_inflight_msgs);
    for (int i = 0; i < w->n_univ && !w->fail_kind; i++) start_node(w, &w->nodes[i]);
    schedule(w, gap(w, w->p.client_gap_us), NS_EV_CLIENT, 0, 0, NULL);
    schedule(w, gap(w, w->p.nemesis_gap_us), NS_EV_NEMESIS, 0, 0, NULL);
    struct sim_event e;
    while (!w->fail_kind && w->st.steps < o->steps && sim_heap_pop(&w->heap, &e)) {
        w->now_us = e.time_us;
        w->st.steps++;
        dispatch(w, &e);
        free_msg(e.msg);
        if (!w->fail_kind) check_roles(w);
    }
    if (!w->fail_kind) {
        NTRACE(w, "HEALING");
        w->healing = true;
        w->heal_start_us = w->now_us;
        memset(w->cut, 0, sizeof w->cut);
        w->churn_until_us = 0;
        for (int i = 0; i < w->n_univ; i++) {
            store_memdb_fail_write(w->nodes[i].disk, 0);
            if (!w->nodes[i].up) start_node(w, &w->nodes[i]);
        }
    }
    uint64_t heal_steps = 0;
    while (!heal_eval(w) && heal_steps++ < NS_HEAL_STEPS_MAX && sim_heap_pop(&w->heap, &e)) {
        w->now_us = e.time_us;
        w->st.steps++;
        dispatch(w, &e);
        free_msg(e.msg);
        if (!w->fail_kind) check_roles(w);
    }
    if (!w->fail_kind && heal_steps >= NS_HEAL_STEPS_MAX)
        ns_fail(w, NS_FAIL_LIVENESS, "healing took more than %u events", NS_HEAL_STEPS_MAX);
    int kind = w->fail_kind;
    snprintf(msg, cap, "%s", w->fail_msg);
    *st = w->st;
    /* Tear down: cancel waiters first, then free everything. */
    for (int i = 0; i < w->n_univ; i++) {
        struct ns_node *nd = &w->nodes[i];
        if (nd->up) {
            w->healing = true; /* no restarts scheduled */
            crash(w, nd, "end of run", false);
        }
    }
    while (sim_heap_pop(&w->heap, &e)) free_msg(e.msg);
    for (int i = 0; i < w->n_univ; i++) {
        store_memdb_free(w->nodes[i].disk);
        store_memdb_free(w->nodes[i].pending_snap);
    }
    for (size_t i = 0; i < w->idx_cap; i++) free(w->idx[i].data);
    free(w->idx);
    free(w->term_leader);
    sim_heap_free(&w->heap);
    free(w);
    return kind;
}

/* ------------------------------------------------------------ main */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage(void) {
    fprintf(stderr, "usage: node_sim [--seed N] [--runs R] [--steps S] [--nodes 3|5]\n"
                    "                [--profile mixed|random|churn] [--expect-violation] [-v]\n"
                    "  runs the real node driver (server/node_core.c) in simulated clusters;\n"
                    "  run i uses seed N+i; -v traces every event (with --runs 1)\n");
}

int main(int argc, char **argv) {
    uint64_t seed = 1, runs = 100;
    struct ns_opts o = {.steps = 3000, .nodes = 0, .profile = 0, .verbose = false};
    bool expect = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char *end = NULL;
        if (!strcmp(a, "--seed") && i + 1 < argc) {
            seed = strtoull(argv[++i], &end, 0);
        } else if (!strcmp(a, "--runs") && i + 1 < argc) {
            runs = strtoull(argv[++i], &end, 0);
        } else if (!strcmp(a, "--steps") && i + 1 < argc) {
            o.steps = strtoull(argv[++i], &end, 0);
        } else if (!strcmp(a, "--nodes") && i + 1 < argc) {
            o.nodes = atoi(argv[++i]);
            if (o.nodes != 3 && o.nodes != 5) {
                usage();
                return 2;
            }
        } else if (!strcmp(a, "--profile") && i + 1 < argc) {
            const char *pv = argv[++i];
            o.profile = !strcmp(pv, "churn") ? 2 : !strcmp(pv, "random") ? 1 : 0;
            if (o.profile == 0 && strcmp(pv, "mixed") != 0) {
                usage();
                return 2;
            }
        } else if (!strcmp(a, "--expect-violation")) {
            expect = true;
        } else if (!strcmp(a, "-v")) {
            o.verbose = true;
        } else {
            usage();
            return 2;
        }
        if (end && *end) {
            usage();
            return 2;
        }
    }
    static const char *const profiles[] = {"mixed", "random", "churn"};
    uint64_t passed = 0, failed = 0, safety = 0, by_kind[NS_FAIL_KINDS_] = {0};
    struct ns_stats tot;
    memset(&tot, 0, sizeof tot);
    double t0 = now_s();
    for (uint64_t i = 0; i < runs; i++) {
        uint64_t s = seed + i;
        struct ns_stats st;
        char msg[NS_FAIL_MSG_MAX];
        int kind = ns_run(s, &o, &st, msg, sizeof msg);
        uint64_t *a = (uint64_t *)&tot, *b = (uint64_t *)&st;
        for (size_t k = 0; k < sizeof tot / sizeof(uint64_t); k++) a[k] += b[k];
        if (kind == NS_OK) {
            passed++;
            continue;
        }
        failed++;
        by_kind[kind]++;
        if (fail_is_safety(kind)) safety++;
        if (failed <= 20) {
            printf("FAIL seed %" PRIu64 ": %s: %s\n", s, fail_names[kind], msg);
            printf("  replay: node_sim --seed %" PRIu64 " --runs 1 --steps %" PRIu64 "%s%s%s -v\n",
                   s, o.steps, o.nodes ? (o.nodes == 3 ? " --nodes 3" : " --nodes 5") : "",
                   o.profile ? " --profile " : "", o.profile ? profiles[o.profile] : "");
        }
        fflush(stdout);
    }
    double secs = now_s() - t0;
    printf("node_sim: seeds %" PRIu64 "..%" PRIu64 ", %" PRIu64 " steps each, %s profile, "
           "%.1fs (%.1fms/run)\n",
           seed, seed + runs - 1, o.steps, profiles[o.profile], secs,
           runs ? secs * 1000.0 / (double)runs : 0.0);
    printf("  events %" PRIu64 ", messages %" PRIu64 " (dropped %" PRIu64 "), crashes %" PRIu64
           " (%" PRIu64 " by a failed write, of %" PRIu64 " armed), restarts %" PRIu64
           ", partitions %" PRIu64 "\n",
           tot.steps, tot.msgs, tot.dropped, tot.crashes, tot.fatal_stops, tot.faults_armed,
           tot.restarts, tot.partitions);
    printf("  entries applied %" PRIu64 ", puts %" PRIu64 " (acknowledged %" PRIu64
           "), reads %" PRIu64 " (served %" PRIu64 "), snapshots sent %" PRIu64
           " (installed %" PRIu64 "), membership changes %" PRIu64 " (applied %" PRIu64
           ", members removed %" PRIu64 "), transfers %" PRIu64 "\n",
           tot.applied, tot.puts, tot.puts_acked, tot.reads, tot.reads_served, tot.snaps_sent,
           tot.snaps_installed, tot.conf_proposed, tot.conf_applied, tot.removed, tot.transfers);
    printf("  failed writes struck: persisting entries/hard state %" PRIu64 ", applying %" PRIu64
           ", installing a snapshot %" PRIu64
           ", elsewhere (member table, compaction, start) %" PRIu64 "\n",
           tot.died_persist, tot.died_apply, tot.died_install, tot.died_other);
    if (failed) {
        printf("  failures:");
        for (int k = 1; k < NS_FAIL_KINDS_; k++)
            if (by_kind[k]) printf(" %s %" PRIu64 ";", fail_names[k], by_kind[k]);
        printf("\n");
    }
    if (expect)
        printf("  expecting a safety violation: %s (%" PRIu64 " runs broke safety)\n",
               safety ? "found" : "NOT FOUND", safety);
    printf("%" PRIu64 " passed, %" PRIu64 " failed\n", passed, failed);
    if (expect) return safety ? 0 : 1;
    return failed ? 1 : 0;
}
