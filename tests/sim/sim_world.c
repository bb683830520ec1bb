/*
 * sim_world.c - the simulated cluster: Raft drivers, disks, network, faults,
 * clients and the final healing phase of one run.
 *
 * Each node is a struct raft over a raft_memstore, which plays the node's
 * disk: whatever the driver wrote to it survives a crash, everything else
 * (the raft object, the state machine in memory, reads waiting for apply)
 * is lost. The driver follows raft.h's update contract step by step and a
 * crash can strike between any two of its steps (struct sim_node.trap), so
 * "persisted but not yet advanced" and "leader sent but not yet persisted"
 * states are reached and recovered from.
 *
 * Messages travel raft_encode()d (so the wire codec is exercised by every
 * run) through one event heap ordered by virtual time; delays are random,
 * so messages reorder; the nemesis drops, duplicates, delays, partitions
 * (symmetric and one-way), crashes and restarts nodes, changes membership
 * and transfers leadership. At the end of a run the healing phase removes
 * every fault and checks that the cluster elects a leader and commits new
 * proposals on every member within bounded time.
 *
 * Workload: proposals "set key := unique value" (struct sim_kv records the
 * log index of each write so reads can be judged) and ReadIndex reads, each
 * sent to a random node or to the leader a client believes in.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "tests/sim/sim.h"

/* Bounds of the healing phase, in election timeouts (election_tick ticks). */
#define HEAL_LEADER_TIMEOUTS_MAX 40
#define HEAL_COMMIT_TIMEOUTS_MAX 40
/* A healing proposal not applied after this many election timeouts is
 * proposed again (the leader it went to may have lost leadership). */
#define HEAL_REPROPOSE_TIMEOUTS 3
/* Bytes of a state-machine image: magic, applied, then each key. */
#define IMAGE_MAGIC 0x51465353494d4731ull /* "QFSSIMG1" */
#define IMAGE_LEN (16u + SIM_KEYS * 16u)
/* A read's ctx: tag byte plus the 4-byte read id. */
#define READ_CTX_LEN 5u

enum heal_state { HEAL_OFF = 0, HEAL_WAIT_LEADER, HEAL_WAIT_COMMIT, HEAL_DONE };

static const char *msg_name(unsigned t) {
    static const char *const names[RAFT_MSG_TYPE_COUNT_] = {"PROP",           "APP",
                                                            "APP_RESP",       "VOTE",
                                                            "VOTE_RESP",      "PREVOTE",
                                                            "PREVOTE_RESP",   "HEARTBEAT",
                                                            "HEARTBEAT_RESP", "SNAP",
                                                            "READ_INDEX",     "READ_INDEX_RESP",
                                                            "TIMEOUT_NOW",    "TRANSFER_LEADER"};
    return t < RAFT_MSG_TYPE_COUNT_ ? names[t] : "?";
}

static const char *role_name(unsigned r) {
    static const char *const names[] = {"follower", "pre-candidate", "candidate", "leader"};
    return r < 4 ? names[r] : "?";
}

void sim_fail(struct sim_world *w, int kind, const char *fmt, ...) {
    if (w->fail_kind) return;
    w->fail_kind = kind;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->fail_msg, sizeof(w->fail_msg), fmt, ap);
    va_end(ap);
    TRACE(w, "FAIL %s: %s", sim_fail_name(kind), w->fail_msg);
}

void sim_trace(struct sim_world *w, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%9.3fms ", (double)w->now_us / 1000.0);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static struct sim_node *node_by_id(struct sim_world *w, uint64_t id) {
    if (id < 1 || id > (uint64_t)w->n_univ) return NULL;
    return &w->nodes[id - 1];
}

static void schedule(struct sim_world *w, uint64_t at_us, uint8_t type, int node, uint32_t arg,
                     struct sim_msg *msg) {
    struct sim_event e = {.time_us = at_us,
                          .seq = w->seq++,
                          .type = type,
                          .node = (uint8_t)node,
                          .arg = arg,
                          .msg = msg};
    sim_heap_push(&w->heap, &e);
}

/* A gap around `mean`: uniform in [mean/4, 7*mean/4], never zero. */
static uint64_t gap(struct sim_world *w, uint64_t mean) {
    uint64_t g = sim_rng_range(&w->rng, mean / 4, mean * 7 / 4);
    return g ? g : 1;
}

static uint64_t election_us(const struct sim_world *w) {
    return (uint64_t)w->p.election_tick * SIM_TICK_US;
}

static bool conf_has_voter(const struct raft_conf_state *cs, uint64_t id) {
    for (uint32_t i = 0; i < cs->n_voters && i < RAFT_MEMBERS_MAX; i++)
        if (cs->voters[i] == id) return true;
    return false;
}

static bool conf_has_learner(const struct raft_conf_state *cs, uint64_t id) {
    for (uint32_t i = 0; i < cs->n_learners && i < RAFT_MEMBERS_MAX; i++)
        if (cs->learners[i] == id) return true;
    return false;
}

/* ---- state machine images ---- */

static void image_encode(const struct sim_sm *sm, unsigned char *buf) {
    put64(buf, IMAGE_MAGIC);
    put64(buf + 8, sm->applied);
    for (int k = 0; k < SIM_KEYS; k++) {
        put64(buf + 16 + 16 * k, sm->kv[k].value);
        put64(buf + 24 + 16 * k, sm->kv[k].windex);
    }
}

static bool image_decode(const void *data, size_t len, struct sim_sm *sm) {
    const unsigned char *buf = data;
    if (len != IMAGE_LEN || get64(buf) != IMAGE_MAGIC) return false;
    memset(sm, 0, sizeof(*sm));
    sm->applied = get64(buf + 8);
    for (int k = 0; k < SIM_KEYS; k++) {
        sm->kv[k].value = get64(buf + 16 + 16 * k);
        sm->kv[k].windex = get64(buf + 24 + 16 * k);
    }
    return true;
}

static void encode_set(unsigned char *buf, uint8_t key, uint64_t value, uint64_t proposer) {
    buf[0] = 'S';
    buf[1] = key;
    put64(buf + 2, value);
    put64(buf + 10, proposer);
}

/* ---- node life cycle ---- */

static void process(struct sim_world *w, struct sim_node *n);

static void start_raft(struct sim_world *w, struct sim_node *n) {
    struct raft_config cfg = {
        .id = n->id,
        .election_tick = w->p.election_tick,
        .heartbeat_tick = w->p.heartbeat_tick,
        .applied = n->persisted.applied,
        .max_size_per_msg = w->p.max_size_per_msg,
        .max_inflight_msgs = w->p.max_inflight,
        .max_committed_size_per_update = w->p.max_committed_size,
        .check_quorum = w->p.check_quorum,
        .pre_vote = w->p.pre_vote,
        .disable_proposal_forwarding = w->p.no_forwarding,
        .seed = sim_rng_next(&w->rng),
        .storage = n->st,
    };
    /* The disk must agree with what the driver believes it wrote. */
    struct raft_hard_state hs;
    struct raft_conf_state cs;
    if (n->st->initial_state(n->st->data, &hs, &cs) != 0) {
        sim_fail(w, SIM_FAIL_DRIVER, "memstore initial_state of node %" PRIu64 " failed", n->id);
        return;
    }
    if (hs.term != n->hs.term || hs.vote != n->hs.vote || hs.commit != n->hs.commit) {
        sim_fail(w, SIM_FAIL_DRIVER,
                 "node %" PRIu64 " disk hard state (%" PRIu64 ",%" PRIu64 ",%" PRIu64
                 ") is not what was written (%" PRIu64 ",%" PRIu64 ",%" PRIu64 ")",
                 n->id, hs.term, hs.vote, hs.commit, n->hs.term, n->hs.vote, n->hs.commit);
        return;
    }
    int rc = raft_new(&cfg, &n->r);
    if (rc != 0) {
        sim_fail(w, SIM_FAIL_DRIVER, "raft_new for node %" PRIu64 ": %s", n->id, raft_strerror(rc));
        n->r = NULL;
        return;
    }
    n->up = true;
    n->powered_off = false;
    n->incarnation++;
    n->sm = n->persisted;
    n->n_waiting = 0;
    n->trap = SIM_TRAP_NONE;
    n->role = RAFT_FOLLOWER;
    n->leader_checked_term = 0;
    schedule(w, w->now_us + 1 + sim_rng_below(&w->rng, n->tick_us), SIM_EV_TICK,
             (int)(n - w->nodes), n->incarnation, NULL);
    process(w, n);
}

static void crash(struct sim_world *w, struct sim_node *n, const char *why) {
    if (!n->up) return;
    TRACE(w, "n%" PRIu64 " CRASH (%s)", n->id, why);
    raft_free(n->r);
    n->r = NULL;
    n->up = false;
    n->n_waiting = 0;
    n->trap = SIM_TRAP_NONE;
    w->stats.crashes++;
    /* A hard state written without sync may not have reached the disk.
     * Only its commit index can differ from the synced one (must_sync is
     * checked); it cannot fall below what the state machine persisted. */
    if (n->hs_unsynced && sim_rng_ppm(&w->rng, w->p.unsynced_loss_ppm)) {
        struct raft_hard_state hs = n->hs;
        hs.commit = n->hs_synced.commit;
        if (hs.commit < n->persisted.applied) hs.commit = n->persisted.applied;
        if (hs.commit != n->hs.commit) {
            TRACE(w, "n%" PRIu64 " loses unsynced commit %" PRIu64 " -> %" PRIu64, n->id,
                  n->hs.commit, hs.commit);
            raft_memstore_set_hard_state(n->ms, &hs);
            n->hs = hs;
        }
    }
    n->hs_unsynced = false;
    /* Every crash in the fault phase ends with a reboot from the same disk;
     * the healing phase reboots (or powers off) nodes itself. */
    if (!w->healing) {
        uint64_t down = sim_rng_range(&w->rng, SIM_TICK_US, 6 * election_us(w));
        schedule(w, w->now_us + down, SIM_EV_RESTART, (int)(n - w->nodes), n->incarnation, NULL);
    }
}

static void restart(struct sim_world *w, struct sim_node *n) {
    if (n->up || w->fail_kind) return;
    TRACE(w, "n%" PRIu64 " RESTART from disk: applied %" PRIu64 " term %" PRIu64 " commit %" PRIu64,
          n->id, n->persisted.applied, n->hs.term, n->hs.commit);
    w->stats.restarts++;
    start_raft(w, n);
}

/* Persist the in-memory state machine; keep the disk's conf state in step
 * with the persisted applied index (raft.h: "as of the last applied index"). */
static void checkpoint(struct sim_world *w, struct sim_node *n) {
    n->persisted = n->sm;
    if (raft_memstore_set_conf_state(n->ms, &n->sm.conf) != 0)
        sim_fail(w, SIM_FAIL_DRIVER, "memstore set_conf_state failed");
}

static void compact(struct sim_world *w, struct sim_node *n) {
    checkpoint(w, n);
    struct raft_snapshot snap;
    if (n->st->snapshot(n->st->data, &snap) != 0) {
        sim_fail(w, SIM_FAIL_DRIVER, "memstore snapshot() failed on node %" PRIu64, n->id);
        return;
    }
    uint64_t applied = n->sm.applied;
    if (applied <= snap.meta.index) return;
    unsigned char img[IMAGE_LEN];
    image_encode(&n->sm, img);
    int rc = raft_memstore_create_snapshot(n->ms, applied, &n->sm.conf, img, sizeof(img));
    if (rc != 0) {
        sim_fail(w, SIM_FAIL_DRIVER, "node %" PRIu64 " create_snapshot at %" PRIu64 ": %s", n->id,
                 applied, raft_strerror(rc));
        return;
    }
    uint64_t keep = sim_rng_below(&w->rng, w->p.compact_keep_max + 1);
    uint64_t upto = applied > keep ? applied - keep : 0;
    uint64_t first = 0;
    n->st->first_index(n->st->data, &first);
    if (upto >= first) {
        rc = raft_memstore_compact(n->ms, upto);
        if (rc != 0) {
            sim_fail(w, SIM_FAIL_DRIVER, "node %" PRIu64 " compact to %" PRIu64 ": %s", n->id, upto,
                     raft_strerror(rc));
            return;
        }
    }
    w->stats.compactions++;
    TRACE(w, "n%" PRIu64 " snapshot at %" PRIu64 ", compacted to %" PRIu64, n->id, applied, upto);
}

/* ---- network ---- */

static uint64_t draw_delay(struct sim_world *w) {
    if (w->healing) return sim_rng_range(&w->rng, w->p.delay_min_us, w->p.delay_min_us * 4);
    if (sim_rng_ppm(&w->rng, w->p.long_delay_ppm))
        return sim_rng_range(&w->rng, w->p.delay_max_us, w->p.long_delay_max_us);
    return sim_rng_range(&w->rng, w->p.delay_min_us, w->p.delay_max_us);
}

static void send_one(struct sim_world *w, struct sim_node *n, const struct raft_msg *m) {
    if (m->from != n->id) {
        sim_fail(w, SIM_FAIL_CONTRACT, "node %" PRIu64 " sends a message from %" PRIu64, n->id,
                 m->from);
        return;
    }
    struct sim_node *to = node_by_id(w, m->to);
    if (!to || m->to == n->id) {
        sim_fail(w, SIM_FAIL_CONTRACT, "node %" PRIu64 " sends %s to unknown node %" PRIu64, n->id,
                 msg_name(m->type), m->to);
        return;
    }
    size_t cap = raft_encoded_size(m), len = 0;
    unsigned char *buf = sim_xmalloc(cap);
    int rc = raft_encode(m, buf, cap, &len);
    if (rc != 0) {
        free(buf);
        sim_fail(w, SIM_FAIL_DRIVER, "raft_encode of %s: %s", msg_name(m->type), raft_strerror(rc));
        return;
    }
    w->stats.msgs_sent++;
    if (m->type == RAFT_MSG_SNAP) w->stats.snaps_sent++;
    TRACE(w,
          "n%" PRIu64 " -> n%" PRIu64 " %s term %" PRIu64 " idx %" PRIu64 " logterm %" PRIu64
          " n %" PRIu32 " commit %" PRIu64 "%s",
          m->from, m->to, msg_name(m->type), m->term, m->index, m->log_term, m->n_entries,
          m->commit, m->reject ? " REJECT" : "");
    int copies = 1;
    if (!w->healing && sim_rng_ppm(&w->rng, w->loss_ppm)) copies = 0;
    if (!w->healing && sim_rng_ppm(&w->rng, w->dup_ppm)) copies++;
    if (copies == 0) {
        w->stats.msgs_dropped++;
        TRACE(w, "   (lost)");
        /* The sender's transport notices a snapshot that did not get through. */
        if (m->type == RAFT_MSG_SNAP) {
            struct sim_msg *note = sim_xcalloc(1, sizeof(*note));
            note->from = m->from;
            note->to = m->to;
            note->from_inc = n->incarnation;
            note->type = m->type;
            schedule(w, w->now_us + draw_delay(w), SIM_EV_SNAP_DONE, (int)(n - w->nodes), 0, note);
        }
        free(buf);
        return;
    }
    if (copies == 2) w->stats.msgs_duped++;
    for (int c = 0; c < copies; c++) {
        struct sim_msg *sm = sim_xmalloc(sizeof(*sm));
        sm->from = m->from;
        sm->to = m->to;
        sm->from_inc = n->incarnation;
        sm->type = m->type;
        sm->len = len;
        if (c == 0) {
            sm->buf = buf;
        } else {
            sm->buf = sim_xmalloc(len);
            memcpy(sm->buf, buf, len);
        }
        schedule(w, w->now_us + draw_delay(w), SIM_EV_DELIVER, (int)(to - w->nodes), 0, sm);
    }
}

static void send_all(struct sim_world *w, struct sim_node *n, const struct raft_update *u) {
    for (size_t i = 0; i < u->n_msgs && !w->fail_kind; i++) send_one(w, n, &u->msgs[i]);
}

/* The sender learns the fate of a snapshot it sent (ok or not). */
static void snap_report(struct sim_world *w, const struct sim_msg *m, bool ok) {
    struct sim_node *from = node_by_id(w, m->from);
    if (!from || !from->up || from->incarnation != m->from_inc) return;
    raft_report_snapshot(from->r, m->to, ok);
    TRACE(w, "n%" PRIu64 " learns snapshot to n%" PRIu64 " %s", m->from, m->to,
          ok ? "arrived" : "failed");
    process(w, from);
}

static void deliver(struct sim_world *w, struct sim_msg *m) {
    struct sim_node *to = node_by_id(w, m->to);
    struct sim_node *from = node_by_id(w, m->from);
    bool cut = w->cut[from - w->nodes][to - w->nodes];
    if (!to->up || cut) {
        w->stats.msgs_dropped++;
        TRACE(w, "n%" PRIu64 " -> n%" PRIu64 " %s dropped (%s)", m->from, m->to, msg_name(m->type),
              cut ? "partition" : "node down");
        if (m->type == RAFT_MSG_SNAP) snap_report(w, m, false);
        /* A transport that cannot connect says so, sometimes. */
        if (from->up && from->incarnation == m->from_inc && sim_rng_ppm(&w->rng, 300000)) {
            raft_report_unreachable(from->r, m->to);
            process(w, from);
        }
        return;
    }
    struct raft_msg rm;
    int rc = raft_decode(m->buf, m->len, &rm);
    if (rc != 0) {
        sim_fail(w, SIM_FAIL_DRIVER, "raft_decode of an encoded %s: %s", msg_name(m->type),
                 raft_strerror(rc));
        return;
    }
    TRACE(w, "n%" PRIu64 " <- n%" PRIu64 " %s term %" PRIu64 " idx %" PRIu64, m->to, m->from,
          msg_name(m->type), rm.term, rm.index);
    rc = raft_step(to->r, &rm);
    raft_msg_release(&rm);
    if (rc == RAFT_ENOMEM || rc == RAFT_ESTORAGE) {
        sim_fail(w, SIM_FAIL_DRIVER, "raft_step(%s) on node %" PRIu64 ": %s", msg_name(m->type),
                 to->id, raft_strerror(rc));
        return;
    }
    if (rc != 0) TRACE(w, "   step: %s", raft_strerror(rc));
    process(w, to);
    if (m->type == RAFT_MSG_SNAP && !w->fail_kind) snap_report(w, m, true);
}

/* ---- the driver: one update, by the contract of raft.h ---- */

static void serve_read(struct sim_world *w, struct sim_node *n, uint32_t id, uint64_t index) {
    struct sim_read *rd = &w->reads[id];
    if (rd->served) return;
    rd->served = true;
    const struct sim_kv *kv = &n->sm.kv[rd->key];
    w->stats.reads_served++;
    TRACE(w,
          "n%" PRIu64 " serves read %" PRIu32 " key %u = %" PRIu64 " (written at %" PRIu64
          ", applied %" PRIu64 ", read index %" PRIu64 ")",
          n->id, id, rd->key, kv->value, kv->windex, n->sm.applied, index);
    if (kv->windex < rd->min_windex) {
        sim_fail(w, SIM_FAIL_READ_SAFETY,
                 "read %" PRIu32 " of key %u on node %" PRIu64 " (requested at %.3fms) returned "
                 "the write at index %" PRIu64 " but the write at index %" PRIu64
                 " was acknowledged before the read was requested (read index %" PRIu64
                 ", applied %" PRIu64 ")",
                 id, rd->key, n->id, (double)rd->requested_us / 1000.0, kv->windex, rd->min_windex,
                 index, n->sm.applied);
        return;
    }
    if (n->sm.applied < rd->min_applied) {
        sim_fail(w, SIM_FAIL_READ_SAFETY,
                 "read %" PRIu32 " on node %" PRIu64
                 " (requested at %.3fms) served at applied %" PRIu64 " (read index %" PRIu64
                 ") but the write at index %" PRIu64
                 " was acknowledged before the read was requested",
                 id, n->id, (double)rd->requested_us / 1000.0, n->sm.applied, index,
                 rd->min_applied);
    }
}

static void serve_waiting(struct sim_world *w, struct sim_node *n) {
    size_t keep = 0;
    for (size_t i = 0; i < n->n_waiting && !w->fail_kind; i++) {
        if (n->waiting_index[i] <= n->sm.applied) {
            serve_read(w, n, n->waiting[i], n->waiting_index[i]);
        } else {
            n->waiting[keep] = n->waiting[i];
            n->waiting_index[keep] = n->waiting_index[i];
            keep++;
        }
    }
    n->n_waiting = keep;
}

static void read_states(struct sim_world *w, struct sim_node *n, const struct raft_update *u) {
    for (size_t i = 0; i < u->n_read_states && !w->fail_kind; i++) {
        const struct raft_read_state *rs = &u->read_states[i];
        const unsigned char *ctx = rs->context.base;
        uint32_t id = 0;
        if (rs->context.len == READ_CTX_LEN && ctx[0] == 'R')
            id = (uint32_t)ctx[1] | (uint32_t)ctx[2] << 8 | (uint32_t)ctx[3] << 16 |
                 (uint32_t)ctx[4] << 24;
        if (id == 0 || id >= w->next_read) {
            sim_fail(w, SIM_FAIL_CONTRACT,
                     "node %" PRIu64 " got a read_state with a context nobody asked for", n->id);
            return;
        }
        if (w->reads[id].node != n->id) {
            sim_fail(w, SIM_FAIL_CONTRACT,
                     "node %" PRIu64 " got the read_state of read %" PRIu32
                     " asked on node %" PRIu64,
                     n->id, id, w->reads[id].node);
            return;
        }
        if (w->reads[id].served) continue;
        if (rs->index <= n->sm.applied) {
            serve_read(w, n, id, rs->index);
        } else if (n->n_waiting < SIM_WAITING_READS_MAX) {
            n->waiting[n->n_waiting] = id;
            n->waiting_index[n->n_waiting] = rs->index;
            n->n_waiting++;
        }
    }
}

/* Returns false if the node crashed (trap) before finishing. */
static bool apply_committed(struct sim_world *w, struct sim_node *n, const struct raft_update *u,
                            bool crash_mid) {
    size_t crash_at = crash_mid && u->n_committed ? (size_t)sim_rng_below(&w->rng, u->n_committed)
                                                  : SIZE_MAX;
    for (size_t i = 0; i < u->n_committed; i++) {
        if (i == crash_at) {
            crash(w, n, "trap: mid apply");
            return false;
        }
        const struct raft_entry *e = &u->committed[i];
        if (e->index != n->sm.applied + 1) {
            sim_fail(w, SIM_FAIL_CONTRACT,
                     "node %" PRIu64 " is told to apply index %" PRIu64 " after applying %" PRIu64,
                     n->id, e->index, n->sm.applied);
            return false;
        }
        if (e->index > n->hs.commit) {
            sim_fail(w, SIM_FAIL_CONTRACT,
                     "node %" PRIu64 " is told to apply index %" PRIu64
                     " above its persisted commit %" PRIu64,
                     n->id, e->index, n->hs.commit);
            return false;
        }
        uint64_t t = 0;
        if (n->st->term(n->st->data, e->index, &t) != 0 || t != e->term) {
            sim_fail(w, SIM_FAIL_CONTRACT,
                     "node %" PRIu64 " applies (index %" PRIu64 ", term %" PRIu64
                     ") which is not in its durable log (term there: %" PRIu64 ")",
                     n->id, e->index, e->term, t);
            return false;
        }
        if (e->type == RAFT_ENTRY_CONF_CHANGE) {
            /* The driver syncs the hard state before it applies a
             * configuration change. Configurations take effect when applied
             * (etcd's way), so a node that applied its removal and then lost
             * the commit index that covered it would restart in the old
             * configuration and could assemble an old-configuration quorum
             * with nodes that missed their own removal (etcd-io/etcd#7625).
             * must_sync does not ask for this sync; the driver must. */
            n->hs_unsynced = false;
            struct raft_conf_change cc;
            int rc = raft_conf_change_decode(e->data.base, e->data.len, &cc);
            if (rc != 0) {
                sim_fail(w, SIM_FAIL_SM_SAFETY, "conf change at index %" PRIu64 " undecodable",
                         e->index);
                return false;
            }
            struct raft_conf_state cs;
            rc = raft_apply_conf_change(n->r, &cc, &cs);
            if (rc != 0) {
                struct raft_status st;
                raft_status(n->r, &st);
                cs = st.conf;
            }
            n->sm.conf = cs;
            w->stats.conf_changes_applied++;
            TRACE(w,
                  "n%" PRIu64 " applies conf change %u node %" PRIu64 " at %" PRIu64
                  " -> %u voters %u learners (%s)",
                  n->id, cc.type, cc.node_id, e->index, cs.n_voters, cs.n_learners,
                  rc ? raft_strerror(rc) : "ok");
        } else if (e->type == RAFT_ENTRY_NORMAL && e->data.len > 0) {
            const unsigned char *d = e->data.base;
            if (e->data.len != SIM_SET_LEN || d[0] != 'S' || d[1] >= SIM_KEYS) {
                sim_fail(w, SIM_FAIL_SM_SAFETY, "garbage entry at index %" PRIu64, e->index);
                return false;
            }
            uint64_t value = get64(d + 2), proposer = get64(d + 10);
            n->sm.kv[d[1]].value = value;
            n->sm.kv[d[1]].windex = e->index;
            if (value < w->next_value) {
                struct sim_proposal *pr = &w->props[value];
                if (!pr->first_index) {
                    pr->first_index = e->index;
                    w->stats.proposals_applied++;
                }
                if (proposer == n->id) {
                    if (!pr->acked_index) pr->acked_index = e->index;
                    sim_check_ack(w, d[1], e->index);
                }
            }
        } else if (e->type != RAFT_ENTRY_NORMAL) {
            sim_fail(w, SIM_FAIL_SM_SAFETY, "entry of unknown type %u at index %" PRIu64, e->type,
                     e->index);
            return false;
        }
        n->sm.applied = e->index;
        sim_check_applied(w, n, e, sim_sm_hash(&n->sm));
        if (w->fail_kind) return false;
    }
    return true;
}

static bool persist(struct sim_world *w, struct sim_node *n, const struct raft_update *u) {
    if (u->has_snapshot) {
        const struct raft_snapshot *s = &u->snapshot;
        struct sim_sm img;
        if (s->meta.index <= n->sm.applied) {
            sim_fail(w, SIM_FAIL_CONTRACT,
                     "node %" PRIu64 " is told to install a snapshot at %" PRIu64
                     " below its applied index %" PRIu64,
                     n->id, s->meta.index, n->sm.applied);
            return false;
        }
        if (!image_decode(s->data.base, s->data.len, &img) || img.applied != s->meta.index) {
            sim_fail(w, SIM_FAIL_SM_SAFETY,
                     "node %" PRIu64 " got a snapshot at %" PRIu64 " with a bad image", n->id,
                     s->meta.index);
            return false;
        }
        img.conf = s->meta.conf;
        int rc = raft_memstore_apply_snapshot(n->ms, s);
        if (rc == 0) rc = raft_memstore_set_conf_state(n->ms, &s->meta.conf);
        if (rc != 0) {
            sim_fail(w, SIM_FAIL_DRIVER, "node %" PRIu64 " apply_snapshot: %s", n->id,
                     raft_strerror(rc));
            return false;
        }
        /* The memstore raises its commit to the snapshot (memstore.c). */
        if (n->hs.commit < s->meta.index) n->hs.commit = s->meta.index;
        n->sm = img;
        n->persisted = img;
        if (s->meta.index > n->commit_seen) n->commit_seen = s->meta.index;
        w->stats.snaps_installed++;
        TRACE(w, "n%" PRIu64 " installs snapshot at %" PRIu64 " term %" PRIu64, n->id,
              s->meta.index, s->meta.term);
        sim_check_snapshot(w, n, s->meta.index, s->meta.term, sim_sm_hash(&img));
        if (w->fail_kind) return false;
    }
    if (u->n_entries > 0) {
        uint64_t first = u->entries[0].index, prev = UINT64_MAX, t;
        if (first >= 1 && n->st->term(n->st->data, first - 1, &t) == 0) prev = t;
        sim_check_appended(w, n, u->entries, u->n_entries, prev);
        if (w->fail_kind) return false;
        int rc = raft_memstore_append(n->ms, u->entries, u->n_entries);
        if (rc != 0) {
            sim_fail(w, SIM_FAIL_DRIVER, "node %" PRIu64 " append at %" PRIu64 ": %s", n->id, first,
                     raft_strerror(rc));
            return false;
        }
        TRACE(w, "n%" PRIu64 " persists entries %" PRIu64 "..%" PRIu64 " (last term %" PRIu64 ")",
              n->id, first, u->entries[u->n_entries - 1].index, u->entries[u->n_entries - 1].term);
    }
    if (u->has_hard_state) {
        const struct raft_hard_state *hs = &u->hard_state;
        sim_check_hard_state(w, n, hs);
        if (w->fail_kind) return false;
        int rc = raft_memstore_set_hard_state(n->ms, hs);
        if (rc != 0) {
            sim_fail(w, SIM_FAIL_DRIVER, "set_hard_state: %s", raft_strerror(rc));
            return false;
        }
        if (u->must_sync) {
            n->hs_unsynced = false;
        } else if (!n->hs_unsynced) {
            n->hs_unsynced = true;
            n->hs_synced = n->hs;
        }
        if (u->role == RAFT_LEADER && hs->commit > n->hs.commit) {
            uint64_t t = 0;
            n->st->term(n->st->data, hs->commit, &t);
            if (t != hs->term) w->stats.old_term_commits++;
        }
        n->hs = *hs;
        /* Everything up to the commit index in this node's log is committed. */
        uint64_t first = 0;
        n->st->first_index(n->st->data, &first);
        uint64_t from = n->commit_seen + 1 > first ? n->commit_seen + 1 : first;
        for (uint64_t i = from; i <= hs->commit && !w->fail_kind; i++) {
            uint64_t t = 0;
            if (n->st->term(n->st->data, i, &t) != 0) {
                sim_fail(w, SIM_FAIL_CONTRACT,
                         "node %" PRIu64 " persists commit %" PRIu64
                         " but its log has no entry %" PRIu64,
                         n->id, hs->commit, i);
                return false;
            }
            sim_check_committed(w, n, i, t);
        }
        if (hs->commit > n->commit_seen) n->commit_seen = hs->commit;
        if (w->fail_kind) return false;
    }
    return true;
}

/*
 * Leader churn: for a few election timeouts, leaders die young, at the two
 * moments where a leader's death leaves the most interesting logs behind
 * (the figure-8 history of the Raft paper): right after winning an
 * election (its no-op persisted but maybe not sent) and right after
 * advancing its commit index (the commit persisted, the next APP maybe not
 * sent). Real nodes die at such moments too; here they do it often.
 */
static void churn(struct sim_world *w) {
    w->churn_until_us = w->now_us + gap(w, 6 * election_us(w));
    TRACE(w, "leader churn until %.3fms", (double)w->churn_until_us / 1000.0);
}

static uint8_t churn_point(struct sim_world *w, struct sim_node *n, const struct raft_update *u) {
    static const uint8_t points[] = {SIM_CRASH_AFTER_PERSIST, SIM_CRASH_AFTER_PERSIST,
                                     SIM_CRASH_BEFORE_PERSIST, SIM_CRASH_AFTER_SEND,
                                     SIM_CRASH_BEFORE_ADVANCE};
    if (w->now_us >= w->churn_until_us || u->role != RAFT_LEADER) return SIM_CRASH_NONE;
    bool fire = false;
    if (n->role != RAFT_LEADER) fire = sim_rng_ppm(&w->rng, w->p.churn_leader_ppm);
    if (!fire && u->n_committed > 0) fire = sim_rng_ppm(&w->rng, w->p.churn_commit_ppm);
    if (!fire) return SIM_CRASH_NONE;
    w->stats.traps_fired++;
    return points[sim_rng_below(&w->rng, sizeof(points))];
}

/* Decides whether an armed trap fires in this update, and where. */
static uint8_t trap_point(struct sim_world *w, struct sim_node *n, const struct raft_update *u) {
    bool fire = false;
    switch (n->trap) {
    case SIM_TRAP_NEXT_UPDATE:
        fire = true;
        break;
    case SIM_TRAP_ON_LEADER:
        fire = u->role == RAFT_LEADER && n->role != RAFT_LEADER;
        break;
    case SIM_TRAP_ON_COMMIT:
        fire = u->role == RAFT_LEADER && u->n_committed > 0;
        break;
    default:
        break;
    }
    if (!fire) return churn_point(w, n, u);
    n->trap = SIM_TRAP_NONE;
    w->stats.traps_fired++;
    return n->trap_point;
}

static void process(struct sim_world *w, struct sim_node *n) {
    while (n->up && !w->fail_kind && raft_has_update(n->r)) {
        struct raft_update u;
        int rc = raft_get_update(n->r, &u);
        if (rc != 0) {
            sim_fail(w, SIM_FAIL_DRIVER, "raft_get_update on node %" PRIu64 ": %s", n->id,
                     raft_strerror(rc));
            return;
        }
        if (u.soft_state_changed)
            TRACE(w, "n%" PRIu64 " is %s, leader %" PRIu64, n->id, role_name(u.role), u.leader);
        if (!u.must_sync) {
            bool vote_changed = u.has_hard_state && (u.hard_state.term != n->hs.term ||
                                                     u.hard_state.vote != n->hs.vote);
            if (u.n_entries > 0 || vote_changed) {
                sim_fail(w, SIM_FAIL_CONTRACT,
                         "node %" PRIu64 " update has %zu entries%s but must_sync is false", n->id,
                         u.n_entries, vote_changed ? " and a new term/vote" : "");
                return;
            }
        }
        /* A new leader is checked before anything can kill it: the log it
         * won with is on disk already (its update only appends after it). */
        if (u.role == RAFT_LEADER && n->role != RAFT_LEADER) {
            uint8_t observed = n->role;
            sim_check_role(w, n);
            n->role = observed; /* trap_point still sees the transition */
            if (w->fail_kind) return;
        }
        uint8_t point = trap_point(w, n, &u);
        /* Raft thesis 10.2.1: a leader may send while it persists. */
        bool early = u.role == RAFT_LEADER && sim_rng_ppm(&w->rng, 500000);
        if (early) send_all(w, n, &u);
        if (point == SIM_CRASH_BEFORE_PERSIST) {
            crash(w, n, early ? "trap: leader sent, did not persist" : "trap: before persist");
            return;
        }
        if (w->fail_kind || !persist(w, n, &u)) return;
        if (point == SIM_CRASH_AFTER_PERSIST) {
            crash(w, n, "trap: persisted, did not send");
            return;
        }
        if (!early) send_all(w, n, &u);
        if (w->fail_kind) return;
        if (point == SIM_CRASH_AFTER_SEND) {
            crash(w, n, "trap: sent, did not apply");
            return;
        }
        if (!apply_committed(w, n, &u, point == SIM_CRASH_MID_APPLY)) return;
        read_states(w, n, &u);
        if (w->fail_kind) return;
        if (point == SIM_CRASH_BEFORE_ADVANCE) {
            crash(w, n, "trap: before advance");
            return;
        }
        raft_advance(n->r, &u);
        serve_waiting(w, n);
    }
}

/* ---- clients ---- */

static struct sim_node *known_leader(struct sim_world *w) {
    struct sim_node *best = NULL;
    for (int i = 0; i < w->n_univ; i++) {
        struct sim_node *n = &w->nodes[i];
        if (n->up && n->role == RAFT_LEADER && (!best || n->term > best->term)) best = n;
    }
    return best;
}

static struct sim_node *random_up(struct sim_world *w) {
    int up[SIM_NODES_MAX], n_up = 0;
    for (int i = 0; i < w->n_univ; i++)
        if (w->nodes[i].up) up[n_up++] = i;
    if (n_up == 0) return NULL;
    return &w->nodes[up[sim_rng_below(&w->rng, (uint64_t)n_up)]];
}

static uint64_t propose_value(struct sim_world *w, struct sim_node *n, uint8_t key,
                              uint64_t value) {
    if (value == 0) {
        value = w->next_value++;
        sim_reserve((void **)&w->props, &w->props_cap, (size_t)w->next_value, sizeof(*w->props));
        w->props[value].key = key;
        w->props[value].proposer = n->id;
        w->props[value].proposed_us = w->now_us;
    }
    unsigned char data[SIM_SET_LEN];
    encode_set(data, key, value, w->props[value].proposer);
    int rc = raft_propose(n->r, data, sizeof(data));
    TRACE(w, "n%" PRIu64 " propose key %u := %" PRIu64 ": %s", n->id, key, value,
          rc ? raft_strerror(rc) : "ok");
    if (rc == 0) w->stats.proposals++;
    process(w, n);
    return value;
}

static void client(struct sim_world *w) {
    struct sim_node *n = NULL;
    if (sim_rng_ppm(&w->rng, w->p.leader_client_ppm)) n = known_leader(w);
    if (!n) n = random_up(w);
    if (n) {
        uint8_t key = (uint8_t)sim_rng_below(&w->rng, SIM_KEYS);
        if (sim_rng_ppm(&w->rng, w->p.read_ppm)) {
            uint32_t id = w->next_read++;
            sim_reserve((void **)&w->reads, &w->reads_cap, (size_t)w->next_read, sizeof(*w->reads));
            struct sim_read *rd = &w->reads[id];
            rd->node = n->id;
            rd->key = key;
            rd->requested_us = w->now_us;
            rd->min_windex = w->chk.ack_windex[key];
            rd->min_applied = w->chk.ack_max;
            unsigned char ctx[READ_CTX_LEN] = {'R', (unsigned char)id, (unsigned char)(id >> 8),
                                               (unsigned char)(id >> 16),
                                               (unsigned char)(id >> 24)};
            int rc = raft_read_index(n->r, ctx, sizeof(ctx));
            TRACE(w,
                  "n%" PRIu64 " read %" PRIu32 " key %u (acked: key %" PRIu64 ", any %" PRIu64
                  "): %s",
                  n->id, id, key, rd->min_windex, rd->min_applied, rc ? raft_strerror(rc) : "ok");
            if (rc != 0) rd->served = true; /* the client gives up */
            w->stats.reads++;
            process(w, n);
        } else {
            propose_value(w, n, key, 0);
        }
    }
    if (!w->healing) schedule(w, w->now_us + gap(w, w->p.client_gap_us), SIM_EV_CLIENT, 0, 0, NULL);
}

/* ---- the nemesis ---- */

static struct sim_node *pick_victim(struct sim_world *w, uint32_t leader_ppm) {
    struct sim_node *n = NULL;
    if (sim_rng_ppm(&w->rng, leader_ppm)) n = known_leader(w);
    return n ? n : random_up(w);
}

static void heal_net(struct sim_world *w) {
    memset(w->cut, 0, sizeof(w->cut));
    if (w->partitioned) TRACE(w, "network healed");
    w->partitioned = false;
}

static void partition(struct sim_world *w) {
    int nu = w->n_univ;
    memset(w->cut, 0, sizeof(w->cut));
    struct sim_node *v = pick_victim(w, 600000);
    int vi = v ? (int)(v - w->nodes) : (int)sim_rng_below(&w->rng, (uint64_t)nu);
    const char *what = "";
    switch (sim_rng_below(&w->rng, 5)) {
    case 0: /* isolate one node */
        for (int j = 0; j < nu; j++) w->cut[vi][j] = w->cut[j][vi] = j != vi;
        what = "isolate";
        break;
    case 1: { /* split in two random groups */
        bool side[SIM_NODES_MAX];
        for (int j = 0; j < nu; j++) side[j] = sim_rng_below(&w->rng, 2);
        side[vi] = !side[(vi + 1) % nu];
        for (int a = 0; a < nu; a++)
            for (int b = 0; b < nu; b++) w->cut[a][b] = side[a] != side[b];
        what = "split";
        break;
    }
    case 2: /* one-way: v cannot receive (it keeps sending) */
        for (int j = 0; j < nu; j++) w->cut[j][vi] = j != vi;
        what = "deafen";
        break;
    case 3: /* one-way: v cannot send (it keeps receiving) */
        for (int j = 0; j < nu; j++) w->cut[vi][j] = j != vi;
        what = "mute";
        break;
    default: /* random directed links */
        for (int a = 0; a < nu; a++)
            for (int b = 0; b < nu; b++) w->cut[a][b] = a != b && sim_rng_ppm(&w->rng, 350000);
        what = "random links";
        break;
    }
    w->partitioned = true;
    w->stats.partitions++;
    TRACE(w, "PARTITION %s around n%d", what, vi + 1);
    schedule(w, w->now_us + gap(w, 4 * election_us(w)), SIM_EV_HEAL_NET, 0,
             (uint32_t)w->stats.partitions, NULL);
}

static void member_change(struct sim_world *w) {
    struct sim_node *n = pick_victim(w, 800000);
    if (!n) return;
    struct raft_status st;
    raft_status(n->r, &st);
    const struct raft_conf_state *cs = &st.conf;
    unsigned min_voters = w->p.n_nodes >= 5 ? 3 : 2;
    struct raft_conf_change opts[3 * SIM_NODES_MAX];
    int n_opts = 0;
    for (int i = 0; i < w->n_univ; i++) {
        uint64_t id = w->nodes[i].id;
        bool voter = conf_has_voter(cs, id), learner = conf_has_learner(cs, id);
        struct raft_conf_change cc = {.node_id = id};
        if (!voter && !learner) {
            cc.type = RAFT_CC_ADD_LEARNER;
            opts[n_opts++] = cc;
            cc.type = RAFT_CC_ADD_VOTER;
            opts[n_opts++] = cc;
        } else if (learner) {
            cc.type = RAFT_CC_ADD_VOTER;
            opts[n_opts++] = cc;
            cc.type = RAFT_CC_REMOVE;
            opts[n_opts++] = cc;
        } else if (cs->n_voters > min_voters) {
            cc.type = RAFT_CC_REMOVE;
            opts[n_opts++] = cc;
        }
    }
    if (n_opts == 0) return;
    struct raft_conf_change cc = opts[sim_rng_below(&w->rng, (uint64_t)n_opts)];
    cc.context.base = "sim";
    cc.context.len = 3;
    int rc = raft_propose_conf_change(n->r, &cc);
    static const char *const names[] = {"add voter", "remove", "add learner"};
    TRACE(w, "n%" PRIu64 " proposes conf change: %s n%" PRIu64 ": %s", n->id, names[cc.type],
          cc.node_id, rc ? raft_strerror(rc) : "ok");
    if (rc == 0) w->stats.conf_proposed++;
    process(w, n);
}

static void transfer(struct sim_world *w) {
    struct sim_node *n = pick_victim(w, 700000);
    if (!n) return;
    struct raft_status st;
    raft_status(n->r, &st);
    if (st.conf.n_voters == 0) return;
    uint64_t to = st.conf.voters[sim_rng_below(&w->rng, st.conf.n_voters)];
    int rc = raft_transfer_leadership(n->r, to);
    TRACE(w, "n%" PRIu64 " transfers leadership to n%" PRIu64 ": %s", n->id, to,
          rc ? raft_strerror(rc) : "ok");
    w->stats.transfers++;
    process(w, n);
}

static void nemesis(struct sim_world *w) {
    if (w->healing) return;
    const struct sim_params *p = &w->p;
    uint32_t weights[] = {p->w_crash,    p->w_trap,    p->w_partition,   p->w_heal, p->w_member,
                          p->w_transfer, p->w_weather, p->w_restart_all, p->w_churn};
    uint32_t total = 0;
    for (size_t i = 0; i < sizeof(weights) / sizeof(weights[0]); i++) total += weights[i];
    uint64_t r = total ? sim_rng_below(&w->rng, total) : 0;
    size_t action = 0;
    while (action + 1 < sizeof(weights) / sizeof(weights[0]) && r >= weights[action]) {
        r -= weights[action];
        action++;
    }
    if (total == 0) action = SIZE_MAX;
    switch (action) {
    case 0: { /* crash between updates */
        struct sim_node *n = pick_victim(w, 500000);
        if (n) crash(w, n, "nemesis");
        break;
    }
    case 1: { /* crash inside an update */
        struct sim_node *n = random_up(w);
        if (n) {
            n->trap = (uint8_t)sim_rng_range(&w->rng, SIM_TRAP_NEXT_UPDATE, SIM_TRAP_ON_COMMIT);
            n->trap_point = (uint8_t)sim_rng_range(&w->rng, 1, SIM_CRASH_POINTS_ - 1);
            TRACE(w, "n%" PRIu64 " trap %u at point %u armed", n->id, n->trap, n->trap_point);
        }
        break;
    }
    case 2:
        partition(w);
        break;
    case 3:
        heal_net(w);
        break;
    case 4:
        member_change(w);
        break;
    case 5:
        transfer(w);
        break;
    case 6: { /* network weather */
        static const uint32_t loss[] = {0, 0, 20000, 100000, 300000};
        static const uint32_t dup[] = {0, 0, 20000, 100000};
        w->loss_ppm = sim_rng_ppm(&w->rng, 500000) ? p->loss_ppm : loss[sim_rng_below(&w->rng, 5)];
        w->dup_ppm = sim_rng_ppm(&w->rng, 500000) ? p->dup_ppm : dup[sim_rng_below(&w->rng, 4)];
        TRACE(w, "weather: loss %" PRIu32 " ppm, dup %" PRIu32 " ppm", w->loss_ppm, w->dup_ppm);
        break;
    }
    case 7:
        for (int i = 0; i < w->n_univ; i++) restart(w, &w->nodes[i]);
        break;
    case 8: /* leader churn: leaders die young (see churn) */
        churn(w);
        break;
    default:
        break;
    }
    schedule(w, w->now_us + gap(w, p->nemesis_gap_us), SIM_EV_NEMESIS, 0, 0, NULL);
}

/* ---- healing and liveness ---- */

/* The leader with the highest term that has committed an entry of its term. */
static struct sim_node *stable_leader(struct sim_world *w, struct raft_status *out) {
    struct sim_node *best = NULL;
    for (int i = 0; i < w->n_univ; i++) {
        struct sim_node *n = &w->nodes[i];
        if (!n->up || n->role != RAFT_LEADER) continue;
        struct raft_status st;
        raft_status(n->r, &st);
        uint64_t t = 0;
        if (st.commit == 0 || n->st->term(n->st->data, st.commit, &t) != 0 || t != st.term)
            continue;
        if (!best || st.term > out->term) {
            best = n;
            *out = st;
        }
    }
    return best;
}

static void heal_start(struct sim_world *w) {
    TRACE(w, "HEALING: no more faults");
    w->healing = true;
    w->loss_ppm = w->dup_ppm = 0;
    heal_net(w);
    w->churn_until_us = 0;
    w->heal_state = HEAL_WAIT_LEADER;
    w->heal_start_us = w->now_us;
    for (int i = 0; i < w->n_univ && !w->fail_kind; i++) {
        w->nodes[i].trap = SIM_TRAP_NONE;
        restart(w, &w->nodes[i]);
    }
}

/* Members (by the leader's configuration) run; others are powered off, as
 * a removed etcd member stops itself. */
static void heal_power(struct sim_world *w, const struct raft_status *lst) {
    for (int i = 0; i < w->n_univ && !w->fail_kind; i++) {
        struct sim_node *n = &w->nodes[i];
        bool member = conf_has_voter(&lst->conf, n->id) || conf_has_learner(&lst->conf, n->id);
        if (member && !n->up) {
            restart(w, n);
        } else if (!member && n->up) {
            crash(w, n, "not a member: powered off");
            n->powered_off = true;
        }
    }
}

static void heal_propose(struct sim_world *w, struct sim_node *l) {
    for (int i = 0; i < SIM_HEAL_PROPS && l->up && !w->fail_kind; i++) {
        uint64_t v = w->heal_values[i];
        if (v && w->props[v].first_index) continue;
        w->heal_values[i] = propose_value(w, l, (uint8_t)(i % SIM_KEYS), v);
    }
    w->heal_propose_us = w->now_us;
}

/* One line on every node's state, for liveness failures. */
static void describe_nodes(struct sim_world *w, char *lag, size_t cap) {
    size_t off = 0;
    lag[0] = 0;
    for (int i = 0; i < w->n_univ && off < cap - 100; i++) {
        const struct sim_node *n = &w->nodes[i];
        struct raft_status st;
        memset(&st, 0, sizeof(st));
        if (n->up) raft_status(n->r, &st);
        uint64_t last = 0;
        n->st->last_index(n->st->data, &last);
        off += (size_t)snprintf(lag + off, cap - off,
                                " n%" PRIu64 "%s:%s/term %" PRIu64 "/last %" PRIu64
                                "/commit %" PRIu64 "/applied %" PRIu64 "/voters",
                                n->id, n->up ? "" : "(down)", role_name(n->role),
                                n->up ? st.term : n->hs.term, last,
                                n->up ? st.commit : n->hs.commit, n->sm.applied);
        for (uint32_t v = 0; v < n->sm.conf.n_voters && off < cap - 24; v++)
            off += (size_t)snprintf(lag + off, cap - off, "%s%" PRIu64, v ? "," : " ",
                                    n->sm.conf.voters[v]);
        for (uint32_t v = 0; v < n->sm.conf.n_learners && off < cap - 24; v++)
            off += (size_t)snprintf(lag + off, cap - off, "%s%" PRIu64, v ? "," : " learners ",
                                    n->sm.conf.learners[v]);
        off += (size_t)snprintf(lag + off, cap - off, ";");
    }
}

/* Returns true when the run is over (done or failed). */
static bool heal_eval(struct sim_world *w) {
    if (w->fail_kind) return true;
    struct raft_status lst;
    struct sim_node *l = stable_leader(w, &lst);
    uint64_t elapsed = w->now_us - w->heal_start_us;
    if (w->heal_state == HEAL_WAIT_LEADER) {
        if (!l) {
            if (elapsed > HEAL_LEADER_TIMEOUTS_MAX * election_us(w)) {
                char lag[1024];
                describe_nodes(w, lag, sizeof(lag));
                sim_fail(w, SIM_FAIL_LIVENESS,
                         "no leader %d election timeouts (%" PRIu64
                         " ticks) after the faults healed;%s",
                         HEAL_LEADER_TIMEOUTS_MAX, elapsed / SIM_TICK_US, lag);
            }
            return w->fail_kind != 0;
        }
        w->stats.heal_ticks_leader = elapsed / SIM_TICK_US;
        w->heal_leader_us = w->now_us;
        w->heal_state = HEAL_WAIT_COMMIT;
        TRACE(w, "HEALING: n%" PRIu64 " leads term %" PRIu64 " after %" PRIu64 " ticks", l->id,
              lst.term, elapsed / SIM_TICK_US);
        heal_power(w, &lst);
        if (l->up) heal_propose(w, l);
        return w->fail_kind != 0;
    }
    if (w->heal_state != HEAL_WAIT_COMMIT) return true;
    uint64_t since = w->now_us - w->heal_leader_us;
    uint64_t need = 0;
    bool done = l != NULL;
    for (int i = 0; i < SIM_HEAL_PROPS; i++) {
        uint64_t v = w->heal_values[i];
        uint64_t idx = v ? w->props[v].first_index : 0;
        if (!idx) done = false;
        if (idx > need) need = idx;
    }
    if (done) {
        heal_power(w, &lst);
        for (int i = 0; i < w->n_univ; i++) {
            const struct sim_node *n = &w->nodes[i];
            bool member = conf_has_voter(&lst.conf, n->id) || conf_has_learner(&lst.conf, n->id);
            if (member && (!n->up || n->sm.applied < need)) done = false;
        }
    }
    if (done) {
        w->heal_state = HEAL_DONE;
        w->stats.heal_ticks_commit = since / SIM_TICK_US;
        TRACE(w, "HEALING: done, proposals applied on all members after %" PRIu64 " ticks",
              since / SIM_TICK_US);
        return true;
    }
    if (since > HEAL_COMMIT_TIMEOUTS_MAX * election_us(w)) {
        char lag[1024];
        describe_nodes(w, lag, sizeof(lag));
        sim_fail(w, SIM_FAIL_LIVENESS,
                 "proposals made after healing not applied on all members within %d election "
                 "timeouts (%" PRIu64 " ticks); need index %" PRIu64 ";%s",
                 HEAL_COMMIT_TIMEOUTS_MAX, since / SIM_TICK_US, need, lag);
        return true;
    }
    if (l && w->now_us - w->heal_propose_us > HEAL_REPROPOSE_TIMEOUTS * election_us(w)) {
        heal_power(w, &lst);
        if (l->up) heal_propose(w, l);
    }
    return w->fail_kind != 0;
}

/* ---- one run ---- */

static void draw_params(struct sim_world *w, const struct sim_run_opts *o) {
    struct sim_params *p = &w->p;
    struct sim_rng *g = &w->rng;
    static const uint64_t sizes[] = {1, 1, 64, 512, 1u << 20};
    static const unsigned inflight[] = {1, 2, 4, 16, 256};
    static const uint64_t committed[] = {0, 0, 0, 1, 100};
    static const uint32_t loss[] = {0, 10000, 50000, 150000};
    static const uint32_t dup[] = {0, 10000, 50000};
    static const uint32_t long_delay[] = {0, 5000, 30000};
    static const uint64_t spread[] = {500, 3000, 15000};
    memset(p, 0, sizeof(*p));
    p->n_nodes = o->nodes ? o->nodes : (w->seed % 2 ? 5 : 3);
    p->spare = sim_rng_ppm(g, 300000);
    p->election_tick = (unsigned)sim_rng_range(g, 6, 12);
    p->heartbeat_tick = (unsigned)sim_rng_range(g, 1, 3);
    p->pre_vote = sim_rng_ppm(g, 500000);
    p->check_quorum = sim_rng_ppm(g, 500000);
    p->no_forwarding = sim_rng_ppm(g, 100000);
    p->max_size_per_msg = sizes[sim_rng_below(g, 5)];
    p->max_inflight = inflight[sim_rng_below(g, 5)];
    p->max_committed_size = committed[sim_rng_below(g, 5)];
    p->loss_ppm = loss[sim_rng_below(g, 4)];
    p->dup_ppm = dup[sim_rng_below(g, 3)];
    p->long_delay_ppm = long_delay[sim_rng_below(g, 3)];
    p->delay_min_us = sim_rng_range(g, 100, 1000);
    p->delay_max_us = p->delay_min_us + spread[sim_rng_below(g, 3)];
    p->long_delay_max_us = sim_rng_range(g, 2, 20) * SIM_TICK_US;
    p->client_gap_us = sim_rng_range(g, 2000, 15000);
    p->read_ppm = (uint32_t)sim_rng_range(g, 200000, 500000);
    p->leader_client_ppm = (uint32_t)sim_rng_range(g, 0, 800000);
    p->nemesis_gap_us = sim_rng_range(g, 3, 15) * SIM_TICK_US;
    p->w_crash = (uint32_t)sim_rng_range(g, 0, 4);
    p->w_trap = (uint32_t)sim_rng_range(g, 0, 4);
    p->w_partition = (uint32_t)sim_rng_range(g, 0, 4);
    p->w_heal = (uint32_t)sim_rng_range(g, 1, 3);
    p->w_member = (uint32_t)sim_rng_range(g, 0, 3);
    p->w_transfer = (uint32_t)sim_rng_range(g, 0, 3);
    p->w_weather = (uint32_t)sim_rng_range(g, 0, 2);
    p->w_restart_all = 1;
    p->w_churn = (uint32_t)sim_rng_range(g, 0, 3);
    p->churn_leader_ppm = (uint32_t)sim_rng_range(g, 200000, 700000);
    p->churn_commit_ppm = (uint32_t)sim_rng_range(g, 200000, 700000);
    /*
     * The churn profile: leaders die young, often, and entries travel one
     * per message, so that a new leader re-replicates entries of earlier
     * terms one by one and can die right after counting them committed.
     * That is the history (the Raft paper's figure 8) in which breaking
     * the 5.4.2 commit rule turns into lost committed entries.
     */
    bool churny = o->profile == SIM_PROFILE_CHURN ||
                  (o->profile == SIM_PROFILE_MIXED && sim_rng_ppm(g, 250000));
    if (churny) {
        p->churn = true;
        p->w_churn = 8;
        p->max_size_per_msg = 1;
        p->churn_leader_ppm = 800000;
        p->churn_commit_ppm = 800000;
    }
    p->compact_gap_us = sim_rng_range(g, 5, 40) * SIM_TICK_US;
    p->compact_keep_max = sim_rng_range(g, 0, 10);
    p->unsynced_loss_ppm = sim_rng_ppm(g, 500000) ? 500000 : 0;
}

static void world_init(struct sim_world *w, uint64_t seed, const struct sim_run_opts *o) {
    memset(w, 0, sizeof(*w));
    w->seed = seed;
    w->verbose = o->verbose;
    sim_rng_seed(&w->rng, seed);
    draw_params(w, o);
    sim_check_init(&w->chk);
    w->n_univ = w->p.n_nodes + (w->p.spare ? 1 : 0);
    w->loss_ppm = w->p.loss_ppm;
    w->dup_ppm = w->p.dup_ppm;
    w->next_value = 1;
    w->next_read = 1;
    struct raft_conf_state initial;
    memset(&initial, 0, sizeof(initial));
    for (int i = 0; i < w->p.n_nodes; i++) initial.voters[initial.n_voters++] = (uint64_t)i + 1;
    for (int i = 0; i < w->n_univ; i++) {
        struct sim_node *n = &w->nodes[i];
        n->id = (uint64_t)i + 1;
        n->ms = raft_memstore_new();
        if (!n->ms) {
            fprintf(stderr, "raft_sim: raft_memstore_new failed\n");
            abort();
        }
        n->st = raft_memstore_storage(n->ms);
        /* Clock skew: each node's tick period is within 10% of nominal. */
        n->tick_us = sim_rng_range(&w->rng, SIM_TICK_US * 9 / 10, SIM_TICK_US * 11 / 10);
        /* The spare is provisioned with the initial cluster too (it is not
         * in it): the bootstrap configuration is not in the log, so a node
         * that replays the log from index 1 must start from it. */
        n->persisted.conf = initial;
        if (raft_memstore_set_conf_state(n->ms, &n->persisted.conf) != 0)
            sim_fail(w, SIM_FAIL_DRIVER, "memstore set_conf_state failed");
    }
    TRACE(w,
          "seed %" PRIu64
          ": %s profile, %d nodes%s, election %u heartbeat %u, pre_vote %d check_quorum %d"
          " no_forwarding %d, msg bytes %" PRIu64 " inflight %u committed bytes %" PRIu64
          ", loss %" PRIu32 " dup %" PRIu32 " long %" PRIu32 " ppm, delay %" PRIu64 "..%" PRIu64
          "us",
          seed, w->p.churn ? "churn" : "random", w->p.n_nodes, w->p.spare ? " + spare" : "",
          w->p.election_tick, w->p.heartbeat_tick, w->p.pre_vote, w->p.check_quorum,
          w->p.no_forwarding, w->p.max_size_per_msg, w->p.max_inflight, w->p.max_committed_size,
          w->p.loss_ppm, w->p.dup_ppm, w->p.long_delay_ppm, w->p.delay_min_us, w->p.delay_max_us);
    for (int i = 0; i < w->n_univ && !w->fail_kind; i++) {
        start_raft(w, &w->nodes[i]);
        schedule(w, w->now_us + gap(w, w->p.compact_gap_us), SIM_EV_COMPACT, i, 0, NULL);
    }
    schedule(w, gap(w, w->p.client_gap_us), SIM_EV_CLIENT, 0, 0, NULL);
    schedule(w, gap(w, w->p.nemesis_gap_us), SIM_EV_NEMESIS, 0, 0, NULL);
}

static void world_free(struct sim_world *w) {
    for (int i = 0; i < w->n_univ; i++) {
        raft_free(w->nodes[i].r);
        raft_memstore_free(w->nodes[i].ms);
    }
    sim_heap_free(&w->heap);
    sim_check_free(&w->chk);
    free(w->props);
    free(w->reads);
}

static void dispatch(struct sim_world *w, struct sim_event *e) {
    struct sim_node *n = &w->nodes[e->node];
    switch (e->type) {
    case SIM_EV_TICK:
        if (!n->up || n->incarnation != e->arg) break; /* a dead incarnation's clock */
        raft_tick(n->r);
        process(w, n);
        schedule(w, w->now_us + n->tick_us, SIM_EV_TICK, e->node, n->incarnation, NULL);
        break;
    case SIM_EV_DELIVER:
        deliver(w, e->msg);
        free(e->msg->buf);
        free(e->msg);
        e->msg = NULL;
        break;
    case SIM_EV_CLIENT:
        if (!w->healing) client(w);
        break;
    case SIM_EV_NEMESIS:
        nemesis(w);
        break;
    case SIM_EV_RESTART:
        /* Only the restart scheduled by the latest crash counts. */
        if (!w->healing && !n->up && n->incarnation == e->arg) restart(w, n);
        break;
    case SIM_EV_HEAL_NET:
        if (e->arg == (uint32_t)w->stats.partitions) heal_net(w);
        break;
    case SIM_EV_COMPACT:
        if (n->up) compact(w, n);
        schedule(w, w->now_us + gap(w, w->p.compact_gap_us), SIM_EV_COMPACT, e->node, 0, NULL);
        break;
    case SIM_EV_SNAP_DONE:
        snap_report(w, e->msg, false);
        break;
    default:
        break;
    }
}

int sim_run(uint64_t seed, const struct sim_run_opts *o, struct sim_stats *stats_out, char *msg,
            size_t msg_cap) {
    struct sim_world *w = sim_xcalloc(1, sizeof(*w));
    world_init(w, seed, o);
    struct sim_event e;
    while (!w->fail_kind && w->stats.steps < o->steps && sim_heap_pop(&w->heap, &e)) {
        w->now_us = e.time_us;
        w->stats.steps++;
        dispatch(w, &e);
        if (e.msg) {
            free(e.msg->buf);
            free(e.msg);
        }
        if (!w->fail_kind) sim_check_roles(w);
    }
    if (!w->fail_kind) {
        heal_start(w);
        if (!w->fail_kind) sim_check_roles(w);
    }
    while (!heal_eval(w) && sim_heap_pop(&w->heap, &e)) {
        w->now_us = e.time_us;
        w->stats.steps++;
        dispatch(w, &e);
        if (e.msg) {
            free(e.msg->buf);
            free(e.msg);
        }
        if (!w->fail_kind) sim_check_roles(w);
    }
    int kind = w->fail_kind;
    if (msg && msg_cap) snprintf(msg, msg_cap, "%s", w->fail_msg);
    if (stats_out) *stats_out = w->stats;
    world_free(w);
    free(w);
    return kind;
}
