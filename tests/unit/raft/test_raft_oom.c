/*
 * test_raft_oom.c - out of memory everywhere in raft/ (raft/alloc.h).
 *
 * One scripted scenario drives a 3-node cluster through raft_new, an
 * election, appends, a follower cut off while the leader compacts its log
 * (so it catches up by snapshot), a ReadIndex, a leadership transfer and a
 * re-election after the leader is isolated. The driver here is a careful one:
 * it persists through raft_memstore, retries a call that returned
 * RAFT_ENOMEM, and delivers messages in FIFO order.
 *
 * The scenario first runs without failure, counting its allocations (T) and
 * recording each node's final status and applied entries. Then it runs T
 * more times, failing allocation n in run n. For every public call that
 * returns RAFT_ENOMEM, the node's observable state (raft_status, the leader's
 * progress, raft_has_update) must equal what it was before the call; the
 * call is retried (with memory) and the scenario goes on. A failure raft
 * absorbs (a dropped message, raft.c's documented choice) is allowed, and a
 * settling phase of heartbeats lets the cluster recover from it. At the end
 * every node must have applied exactly the entries of the failure-free run,
 * in the same order, with the same commit index; LeakSanitizer checks that
 * nothing leaked.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "raft/alloc.h"
#include "raft/raft.h"
#include "tests/harness.h"

#define N_NODES 3
#define QUEUE_MAX 4096
#define APPLIED_MAX 256
#define ROUNDS_MAX 2000

struct qmsg {
    struct raft_msg m; /* deep copy, libc memory (not counted) */
};

struct node {
    struct raft *r;
    struct raft_memstore *ms;
    struct raft_conf_state conf;
    uint64_t applied;                   /* last applied index */
    size_t n_applied;                   /* data entries applied */
    uint64_t applied_hash[APPLIED_MAX]; /* FNV-1a of each data entry, in order */
    size_t n_reads;                     /* read states served */
};

struct cluster {
    struct node n[N_NODES + 1];
    struct raft_msg q[QUEUE_MAX];
    size_t q_len;
    bool cut[N_NODES + 1]; /* drop everything to and from this node */
    int errors;            /* inconsistencies found */
    char err[256];
    unsigned enomem; /* calls that returned RAFT_ENOMEM */
};

/* What a driver can see of a node. */
struct observed {
    struct raft_status st;
    bool has_update;
    uint64_t match[N_NODES + 1];
    int match_rc[N_NODES + 1];
};

static void fail(struct cluster *c, const char *what, uint64_t id) {
    if (c->errors++ == 0)
        snprintf(c->err, sizeof c->err, "node %llu: %s", (unsigned long long)id, what);
}

static uint64_t fnv(const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static void *dup_bytes(const void *p, size_t n) {
    if (n == 0) return NULL;
    void *q = malloc(n);
    if (q == NULL) abort();
    memcpy(q, p, n);
    return q;
}

static void observe(struct cluster *c, uint64_t id, struct observed *o) {
    memset(o, 0, sizeof *o);
    raft_status(c->n[id].r, &o->st);
    o->has_update = raft_has_update(c->n[id].r);
    for (uint64_t j = 1; j <= N_NODES; j++)
        o->match_rc[j] = raft_progress_match(c->n[id].r, j, &o->match[j]);
}

/* After a call that returned rc: on RAFT_ENOMEM the state must be unchanged. */
static bool check_enomem(struct cluster *c, uint64_t id, int rc, const struct observed *before,
                         const char *call) {
    if (rc != RAFT_ENOMEM) return false;
    c->enomem++;
    struct observed after;
    observe(c, id, &after);
    if (memcmp(before, &after, sizeof after) != 0) {
        char buf[128];
        snprintf(buf, sizeof buf, "%s returned RAFT_ENOMEM and changed the state", call);
        fail(c, buf, id);
    }
    return true;
}

/*
 * raft_step's RAFT_ENOMEM may leave what the header implies (raft.h): the
 * message's term adopted, its sender as leader, the role follower. Nothing
 * else changes.
 */
static bool check_step_enomem(struct cluster *c, uint64_t id, int rc, const struct observed *before,
                              const struct raft_msg *m) {
    if (rc != RAFT_ENOMEM) return false;
    struct observed after;
    observe(c, id, &after);
    bool header_only = after.st.term == m->term && after.st.term >= before->st.term &&
                       (after.st.leader == m->from || after.st.leader == RAFT_NONE) &&
                       after.st.role == RAFT_FOLLOWER;
    if (!header_only) return check_enomem(c, id, rc, before, "raft_step");
    c->enomem++;
    const struct raft_status *a = &after.st, *b = &before->st;
    if (a->commit != b->commit || a->applied != b->applied || a->last_index != b->last_index ||
        memcmp(&a->conf, &b->conf, sizeof a->conf) != 0)
        fail(c, "raft_step returned RAFT_ENOMEM and changed log, commit or conf", id);
    return true;
}

static void enqueue(struct cluster *c, const struct raft_msg *m) {
    if (c->cut[m->from] || c->cut[m->to]) return;
    if (c->q_len == QUEUE_MAX) abort();
    struct raft_msg *d = &c->q[c->q_len++];
    *d = *m;
    d->entries = NULL;
    if (m->n_entries > 0) {
        d->entries = calloc(m->n_entries, sizeof *d->entries);
        if (d->entries == NULL) abort();
        for (uint32_t i = 0; i < m->n_entries; i++) {
            d->entries[i] = m->entries[i];
            d->entries[i].data.base = dup_bytes(m->entries[i].data.base, m->entries[i].data.len);
        }
    }
    d->snapshot.data.base = m->has_snapshot ? dup_bytes(m->snapshot.data.base, m->snapshot.data.len)
                                            : NULL;
    d->context.base = dup_bytes(m->context.base, m->context.len);
}

static void msg_free(struct raft_msg *m) {
    for (uint32_t i = 0; i < m->n_entries; i++) free((void *)m->entries[i].data.base);
    free(m->entries);
    free((void *)m->snapshot.data.base);
    free((void *)m->context.base);
}

/* Persisting never gives up: memstore calls are retried after ENOMEM. */
#define RETRY(call)                                                                                \
    do {                                                                                           \
        int rc_;                                                                                   \
        while ((rc_ = (call)) == RAFT_ENOMEM) c->enomem++;                                         \
        if (rc_ != 0) fail(c, #call, id);                                                          \
    } while (0)

/* Carries out node id's update, as raft.h's driver loop does. */
static void ready(struct cluster *c, uint64_t id) {
    struct node *nd = &c->n[id];
    for (int guard = 0; guard < 100 && raft_has_update(nd->r); guard++) {
        struct raft_update u;
        struct observed before;
        observe(c, id, &before);
        int rc = raft_get_update(nd->r, &u);
        if (check_enomem(c, id, rc, &before, "raft_get_update")) continue;
        if (rc != 0) {
            fail(c, "raft_get_update failed", id);
            return;
        }
        if (u.has_snapshot) {
            int src = raft_memstore_apply_snapshot(nd->ms, &u.snapshot);
            while (src == RAFT_ENOMEM) src = raft_memstore_apply_snapshot(nd->ms, &u.snapshot);
            if (src != 0 && src != RAFT_ESNAPOUTOFDATE) fail(c, "apply_snapshot", id);
            nd->conf = u.snapshot.meta.conf;
            nd->applied = u.snapshot.meta.index;
            /* The image is the applied-hash list of the sender. */
            size_t n = u.snapshot.data.len / sizeof(uint64_t);
            if (n > APPLIED_MAX) n = APPLIED_MAX;
            if (n > 0) memcpy(nd->applied_hash, u.snapshot.data.base, n * sizeof(uint64_t));
            nd->n_applied = n;
        }
        RETRY(raft_memstore_append(nd->ms, u.entries, u.n_entries));
        if (u.has_hard_state) RETRY(raft_memstore_set_hard_state(nd->ms, &u.hard_state));
        for (size_t i = 0; i < u.n_msgs; i++) enqueue(c, &u.msgs[i]);
        for (size_t i = 0; i < u.n_committed; i++) {
            const struct raft_entry *e = &u.committed[i];
            if (e->index <= nd->applied) continue;
            nd->applied = e->index;
            if (e->type == RAFT_ENTRY_CONF_CHANGE) {
                struct raft_conf_change cc;
                if (raft_conf_change_decode(e->data.base, e->data.len, &cc) != 0)
                    fail(c, "conf change decode", id);
                struct observed b2;
                observe(c, id, &b2);
                int crc;
                while (check_enomem(c, id, crc = raft_apply_conf_change(nd->r, &cc, &nd->conf), &b2,
                                    "raft_apply_conf_change"))
                    ;
                if (crc != 0) fail(c, "raft_apply_conf_change", id);
                RETRY(raft_memstore_set_conf_state(nd->ms, &nd->conf));
            } else if (e->data.len > 0) {
                if (nd->n_applied == APPLIED_MAX) abort();
                nd->applied_hash[nd->n_applied++] = fnv(e->data.base, e->data.len);
            }
        }
        nd->n_reads += u.n_read_states;
        raft_advance(nd->r, &u);
    }
}

/* Delivers queued messages and carries out updates until nothing moves. */
static void settle(struct cluster *c) {
    for (int round = 0; round < ROUNDS_MAX; round++) {
        for (uint64_t id = 1; id <= N_NODES; id++) ready(c, id);
        if (c->q_len == 0) return;
        size_t n = c->q_len;
        static struct raft_msg batch[QUEUE_MAX];
        memcpy(batch, c->q, n * sizeof *batch);
        c->q_len = 0;
        for (size_t i = 0; i < n; i++) {
            struct raft_msg *m = &batch[i];
            uint64_t id = m->to;
            if (!c->cut[m->from] && !c->cut[id] && id >= 1 && id <= N_NODES) {
                struct observed before;
                observe(c, id, &before);
                int rc;
                while (check_step_enomem(c, id, rc = raft_step(c->n[id].r, m), &before, m))
                    observe(c, id, &before);
                if (m->type == RAFT_MSG_SNAP) raft_report_snapshot(c->n[m->from].r, id, true);
            }
            msg_free(m);
        }
    }
    fail(c, "no quiescence", 0);
}

static void tick_all(struct cluster *c, int ticks) {
    for (int t = 0; t < ticks; t++) {
        for (uint64_t id = 1; id <= N_NODES; id++)
            if (!c->cut[id]) raft_tick(c->n[id].r);
        settle(c);
    }
}

static uint64_t leader_of(struct cluster *c) {
    for (uint64_t id = 1; id <= N_NODES; id++) {
        struct raft_status st;
        raft_status(c->n[id].r, &st);
        if (st.role == RAFT_LEADER && !c->cut[id]) return id;
    }
    return 0;
}

static void propose(struct cluster *c, uint64_t id, const char *data) {
    struct observed before;
    observe(c, id, &before);
    int rc;
    while (check_enomem(c, id, rc = raft_propose(c->n[id].r, data, strlen(data)), &before,
                        "raft_propose"))
        ;
    if (rc != 0) fail(c, raft_strerror(rc), id);
}

#define CALL(id, what, expr)                                                                       \
    do {                                                                                           \
        struct observed before_;                                                                   \
        observe(c, id, &before_);                                                                  \
        int rc_;                                                                                   \
        while (check_enomem(c, id, rc_ = (expr), &before_, what))                                  \
            ;                                                                                      \
        if (rc_ != 0) fail(c, what, id);                                                           \
    } while (0)

/* Snapshot of node id's applied state (its applied hashes), then compaction. */
static void compact(struct cluster *c, uint64_t id) {
    struct node *nd = &c->n[id];
    RETRY(raft_memstore_create_snapshot(nd->ms, nd->applied, &nd->conf, nd->applied_hash,
                                        nd->n_applied * sizeof(uint64_t)));
    RETRY(raft_memstore_compact(nd->ms, nd->applied));
}

static void cluster_free(struct cluster *c) {
    for (size_t i = 0; i < c->q_len; i++) msg_free(&c->q[i]);
    c->q_len = 0;
    for (uint64_t id = 1; id <= N_NODES; id++) {
        if (c->n[id].r) raft_free(c->n[id].r);
        if (c->n[id].ms) raft_memstore_free(c->n[id].ms);
    }
}

static void scenario(struct cluster *c) {
    struct raft_conf_state cs;
    memset(&cs, 0, sizeof cs);
    cs.n_voters = N_NODES;
    for (uint32_t i = 0; i < N_NODES; i++) cs.voters[i] = i + 1;
    for (uint64_t id = 1; id <= N_NODES; id++) {
        struct node *nd = &c->n[id];
        while ((nd->ms = raft_memstore_new()) == NULL) c->enomem++;
        RETRY(raft_memstore_set_conf_state(nd->ms, &cs));
        nd->conf = cs;
        struct raft_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.id = id;
        cfg.election_tick = 10;
        cfg.heartbeat_tick = 1;
        cfg.max_size_per_msg = 64; /* several APPs per catch-up */
        cfg.max_inflight_msgs = 4;
        cfg.pre_vote = true;
        cfg.check_quorum = true;
        cfg.seed = 42 + id;
        cfg.storage = raft_memstore_storage(nd->ms);
        int rc;
        while ((rc = raft_new(&cfg, &nd->r)) == RAFT_ENOMEM) c->enomem++;
        if (rc != 0) fail(c, "raft_new", id);
    }
    if (c->errors) return;

    /* An election, then appends. */
    CALL(1, "raft_campaign", raft_campaign(c->n[1].r));
    settle(c);
    char buf[32];
    for (int i = 0; i < 8; i++) {
        snprintf(buf, sizeof buf, "first-%d", i);
        propose(c, 1, buf);
    }
    settle(c);
    /* A ReadIndex on the leader and one forwarded by a follower. */
    CALL(1, "raft_read_index", raft_read_index(c->n[1].r, "r1", 2));
    CALL(2, "raft_read_index", raft_read_index(c->n[2].r, "r2", 2));
    tick_all(c, 2);

    /* Node 3 misses entries the leader then compacts: it gets a snapshot. */
    c->cut[3] = true;
    for (int i = 0; i < 8; i++) {
        snprintf(buf, sizeof buf, "second-%d", i);
        propose(c, 1, buf);
    }
    settle(c);
    compact(c, 1);
    c->cut[3] = false;
    tick_all(c, 3);
    /* Proposals forwarded by a follower. */
    for (int i = 0; i < 4; i++) {
        snprintf(buf, sizeof buf, "fwd-%d", i);
        propose(c, 3, buf);
    }
    settle(c);

    /* A leadership transfer to node 2. */
    CALL(1, "raft_transfer_leadership", raft_transfer_leadership(c->n[1].r, 2));
    tick_all(c, 3);
    uint64_t lead = leader_of(c);
    if (lead == 0) {
        fail(c, "no leader after transfer", 0);
        return;
    }
    for (int i = 0; i < 4; i++) {
        snprintf(buf, sizeof buf, "third-%d", i);
        propose(c, lead, buf);
    }
    settle(c);

    /* The leader is isolated: the others elect one of them by timeout. */
    c->cut[lead] = true;
    tick_all(c, 40);
    c->cut[lead] = false;
    tick_all(c, 5);
    lead = leader_of(c);
    if (lead == 0) {
        fail(c, "no leader after isolation", 0);
        return;
    }
    for (int i = 0; i < 4; i++) {
        snprintf(buf, sizeof buf, "fourth-%d", i);
        propose(c, lead, buf);
    }
    settle(c);
    /* Settling: heartbeats repair what dropped messages left behind. */
    tick_all(c, 12);
}

/* The failure-free run's outcome. */
static struct {
    struct raft_status st[N_NODES + 1];
    size_t n_applied[N_NODES + 1];
    uint64_t hash[N_NODES + 1][APPLIED_MAX];
} ref;

static int compare(struct cluster *c, char *why, size_t why_size) {
    for (uint64_t id = 1; id <= N_NODES; id++) {
        struct raft_status st;
        raft_status(c->n[id].r, &st);
        if (st.commit != ref.st[id].commit || st.last_index != ref.st[id].last_index) {
            snprintf(why, why_size, "node %llu: commit %llu last %llu, want %llu %llu",
                     (unsigned long long)id, (unsigned long long)st.commit,
                     (unsigned long long)st.last_index, (unsigned long long)ref.st[id].commit,
                     (unsigned long long)ref.st[id].last_index);
            return -1;
        }
        if (c->n[id].n_applied != ref.n_applied[id] ||
            memcmp(c->n[id].applied_hash, ref.hash[id], ref.n_applied[id] * sizeof(uint64_t)) !=
                0) {
            snprintf(why, why_size, "node %llu: applied %zu entries, want %zu (or other data)",
                     (unsigned long long)id, c->n[id].n_applied, ref.n_applied[id]);
            return -1;
        }
    }
    return 0;
}

TEST(raft_scenario_reference) {
    static struct cluster c;
    memset(&c, 0, sizeof c);
    qfs_alloc_fail_at(0);
    scenario(&c);
    long total = qfs_alloc_count();
    qfs_alloc_fail_off();
    if (c.errors) fprintf(stderr, "  %s\n", c.err);
    ASSERT_EQ(c.errors, 0);
    ASSERT_GT(total, 100);
    uint64_t lead = leader_of(&c);
    ASSERT_NE(lead, 0);
    for (uint64_t id = 1; id <= N_NODES; id++) {
        raft_status(c.n[id].r, &ref.st[id]);
        ref.n_applied[id] = c.n[id].n_applied;
        memcpy(ref.hash[id], c.n[id].applied_hash, sizeof ref.hash[id]);
        ASSERT_EQ(c.n[id].n_applied, 28);
    }
    ASSERT_GE(c.n[1].n_reads, 1);
    cluster_free(&c);
    printf("  %ld allocations in the scenario\n", total);
}

TEST(raft_every_allocation_fails_once) {
    static struct cluster c;
    memset(&c, 0, sizeof c);
    qfs_alloc_fail_at(0);
    scenario(&c);
    long total = qfs_alloc_count();
    cluster_free(&c);
    unsigned reported = 0, absorbed = 0;
    /* OOM_ONLY=n replays run n alone (to debug it). */
    long only = getenv("OOM_ONLY") ? atol(getenv("OOM_ONLY")) : 0;
    for (long n = only ? only : 1; n <= (only ? only : total); n++) {
        memset(&c, 0, sizeof c);
        qfs_alloc_fail_at(n);
        scenario(&c);
        long failed = qfs_alloc_failed();
        qfs_alloc_fail_off();
        char why[256] = "";
        int crc = c.errors ? 0 : compare(&c, why, sizeof why);
        if (c.errors || crc != 0) {
            fprintf(stderr, "  allocation %ld of %ld: %s\n", n, total, c.errors ? c.err : why);
            cluster_free(&c);
            ASSERT_EQ(c.errors, 0);
            ASSERT_EQ(crc, 0);
        }
        ASSERT_EQ(failed, 1);
        if (c.enomem > 0)
            reported++;
        else
            absorbed++;
        cluster_free(&c);
    }
    printf("  %ld runs: %u with a RAFT_ENOMEM returned (raft or memstore), %u absorbed\n", total,
           reported, absorbed);
}

/* A node over a fresh memstore holding voters 1..n_voters. */
static struct raft *lone_node(struct raft_memstore **ms, uint32_t n_voters) {
    *ms = raft_memstore_new();
    if (*ms == NULL) abort();
    struct raft_conf_state cs;
    memset(&cs, 0, sizeof cs);
    for (uint32_t i = 0; i < n_voters; i++) cs.voters[cs.n_voters++] = i + 1;
    if (raft_memstore_set_conf_state(*ms, &cs) != 0) abort();
    struct raft_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.id = 1;
    cfg.election_tick = 10;
    cfg.heartbeat_tick = 1;
    cfg.max_size_per_msg = 1024;
    cfg.seed = 7;
    cfg.storage = raft_memstore_storage(*ms);
    struct raft *r = NULL;
    if (raft_new(&cfg, &r) != 0) abort();
    return r;
}

/* A single voter's campaign wins at once; out of memory for the leader's
 * no-op used to leave it a follower of a new term with raft_campaign()
 * returning 0. Now the call fails and changes nothing. */
TEST(raft_campaign_single_voter_enomem_changes_nothing) {
    struct raft_memstore *ms;
    struct raft *r = lone_node(&ms, 1);
    struct raft_status before, after;
    memset(&before, 0, sizeof before);
    memset(&after, 0, sizeof after);
    raft_status(r, &before);
    qfs_alloc_fail_at(1);
    int rc = raft_campaign(r);
    long failed = qfs_alloc_failed();
    qfs_alloc_fail_off();
    raft_status(r, &after);
    ASSERT_EQ(failed, 1);
    ASSERT_EQ(rc, RAFT_ENOMEM);
    ASSERT_EQ(memcmp(&before, &after, sizeof before), 0);
    ASSERT_EQ(raft_campaign(r), 0);
    raft_status(r, &after);
    ASSERT_EQ(after.role, RAFT_LEADER);
    ASSERT_U64_EQ(after.term, before.term + 1);
    ASSERT_U64_EQ(after.last_index, before.last_index + 1); /* the no-op */
    raft_free(r);
    raft_memstore_free(ms);
}

/* The vote that wins an election, fed while out of memory, used to make
 * the candidate step down silently (no leader for the whole term). Now
 * raft_step() returns RAFT_ENOMEM, the candidate stays a candidate, and
 * the same vote fed again makes it leader. */
TEST(raft_winning_vote_enomem_is_retried) {
    struct raft_memstore *ms;
    struct raft *r = lone_node(&ms, 3);
    ASSERT_EQ(raft_campaign(r), 0);
    struct raft_status before, after;
    memset(&before, 0, sizeof before);
    memset(&after, 0, sizeof after);
    raft_status(r, &before);
    ASSERT_EQ(before.role, RAFT_CANDIDATE);
    struct raft_msg vote;
    memset(&vote, 0, sizeof vote);
    vote.type = RAFT_MSG_VOTE_RESP;
    vote.from = 2;
    vote.to = 1;
    vote.term = before.term;
    qfs_alloc_fail_at(1);
    int rc = raft_step(r, &vote);
    long failed = qfs_alloc_failed();
    qfs_alloc_fail_off();
    raft_status(r, &after);
    ASSERT_EQ(failed, 1);
    ASSERT_EQ(rc, RAFT_ENOMEM);
    ASSERT_EQ(memcmp(&before, &after, sizeof before), 0);
    ASSERT_EQ(raft_step(r, &vote), 0);
    raft_status(r, &after);
    ASSERT_EQ(after.role, RAFT_LEADER);
    ASSERT_U64_EQ(after.term, before.term);
    raft_free(r);
    raft_memstore_free(ms);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
