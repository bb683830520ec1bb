/*
 * test_raft_core_smoke.c - a quick end-to-end check of raft/: three nodes
 * wired in-process over memstores, every message going through
 * raft_encode/raft_decode. Elect a leader, replicate proposals (some through
 * a follower), and check that every node applies the same entries in the
 * same order. The thorough per-rule tests live in the other files here.
 */
#include <stdlib.h>
#include <string.h>

#include "raft/raft.h"
#include "tests/harness.h"

#define NODES 3
#define QUEUE_MAX 100000
#define APPLIED_MAX 1024

struct wire {
    uint64_t to;
    size_t len;
    void *buf;
};

struct node {
    uint64_t id;
    struct raft_memstore *ms;
    struct raft *r;
    size_t n_applied; /* non-empty normal entries applied */
    char applied[APPLIED_MAX][32];
    uint64_t last_applied_index;
};

struct cluster {
    struct node n[NODES];
    struct wire *q;
    size_t nq;
};

static int node_start(struct node *nd, uint64_t id) {
    memset(nd, 0, sizeof(*nd));
    nd->id = id;
    nd->ms = raft_memstore_new();
    if (nd->ms == NULL) return -1;
    struct raft_conf_state cs = {.n_voters = NODES};
    for (int i = 0; i < NODES; i++) cs.voters[i] = (uint64_t)i + 1;
    if (raft_memstore_set_conf_state(nd->ms, &cs) != 0) return -1;
    struct raft_config cfg = {
        .id = id,
        .election_tick = 10,
        .heartbeat_tick = 1,
        .max_size_per_msg = 4096,
        .max_inflight_msgs = 64,
        .check_quorum = true,
        .pre_vote = true,
        .seed = harness_seed,
        .storage = raft_memstore_storage(nd->ms),
    };
    return raft_new(&cfg, &nd->r);
}

/* Runs one update of nd: persist, queue messages (encoded), apply, advance. */
static int node_process(struct cluster *c, struct node *nd) {
    if (!raft_has_update(nd->r)) return 0;
    struct raft_update u;
    int rc = raft_get_update(nd->r, &u);
    if (rc != 0) return rc;
    if (u.has_snapshot && (rc = raft_memstore_apply_snapshot(nd->ms, &u.snapshot)) != 0) return rc;
    if (u.n_entries > 0 && (rc = raft_memstore_append(nd->ms, u.entries, u.n_entries)) != 0)
        return rc;
    if (u.has_hard_state && (rc = raft_memstore_set_hard_state(nd->ms, &u.hard_state)) != 0)
        return rc;
    for (size_t i = 0; i < u.n_msgs; i++) {
        if (c->nq >= QUEUE_MAX) return -2;
        size_t cap = raft_encoded_size(&u.msgs[i]);
        struct wire *w = &c->q[c->nq];
        w->buf = malloc(cap);
        if (w->buf == NULL) return -3;
        rc = raft_encode(&u.msgs[i], w->buf, cap, &w->len);
        if (rc != 0) return rc;
        w->to = u.msgs[i].to;
        c->nq++;
    }
    for (size_t i = 0; i < u.n_committed; i++) {
        const struct raft_entry *e = &u.committed[i];
        if (e->index != nd->last_applied_index + 1) return -4; /* in order, no gaps */
        nd->last_applied_index = e->index;
        if (e->type != RAFT_ENTRY_NORMAL || e->data.len == 0) continue;
        if (nd->n_applied >= APPLIED_MAX || e->data.len >= 32) return -5;
        memcpy(nd->applied[nd->n_applied], e->data.base, e->data.len);
        nd->applied[nd->n_applied][e->data.len] = 0;
        nd->n_applied++;
    }
    raft_advance(nd->r, &u);
    return 1;
}

/* Processes updates and delivers messages until the cluster is quiet. */
static int cluster_settle(struct cluster *c) {
    for (int round = 0; round < 10000; round++) {
        int busy = 0;
        for (int i = 0; i < NODES; i++) {
            int rc = node_process(c, &c->n[i]);
            if (rc < 0) return rc;
            busy |= rc;
        }
        size_t nq = c->nq;
        struct wire *batch = malloc((nq ? nq : 1) * sizeof(*batch));
        if (batch == NULL) return -3;
        memcpy(batch, c->q, nq * sizeof(*batch));
        c->nq = 0;
        for (size_t i = 0; i < nq; i++) {
            struct raft_msg m;
            int rc = raft_decode(batch[i].buf, batch[i].len, &m);
            if (rc == 0) {
                (void)raft_step(c->n[batch[i].to - 1].r, &m);
                raft_msg_release(&m);
            }
            free(batch[i].buf);
            if (rc != 0) {
                for (size_t j = i + 1; j < nq; j++) free(batch[j].buf);
                free(batch);
                return rc;
            }
        }
        free(batch);
        if (!busy && nq == 0) return 0;
    }
    return -6;
}

static void cluster_free(struct cluster *c) {
    for (int i = 0; i < NODES; i++) {
        raft_free(c->n[i].r);
        raft_memstore_free(c->n[i].ms);
    }
    for (size_t i = 0; i < c->nq; i++) free(c->q[i].buf);
    free(c->q);
}

static struct raft_status status_of(struct node *nd) {
    struct raft_status st;
    raft_status(nd->r, &st);
    return st;
}

TEST(three_nodes_elect_replicate_apply) {
    struct cluster c;
    memset(&c, 0, sizeof(c));
    c.q = calloc(QUEUE_MAX, sizeof(*c.q));
    ASSERT(c.q != NULL);
    for (int i = 0; i < NODES; i++) ASSERT_EQ(node_start(&c.n[i], (uint64_t)i + 1), 0);

    ASSERT_EQ(raft_campaign(c.n[0].r), 0);
    ASSERT_EQ(cluster_settle(&c), 0);
    ASSERT_EQ(status_of(&c.n[0]).role, RAFT_LEADER);
    for (int i = 0; i < NODES; i++) ASSERT_U64_EQ(status_of(&c.n[i]).leader, 1);

    /* 100 proposals: most at the leader, every fifth through follower 2. */
    for (int p = 0; p < 100; p++) {
        char buf[32];
        int len = snprintf(buf, sizeof(buf), "put-%03d", p);
        struct node *via = p % 5 == 0 ? &c.n[1] : &c.n[0];
        ASSERT_EQ(raft_propose(via->r, buf, (size_t)len), 0);
        if (p % 7 == 0) ASSERT_EQ(cluster_settle(&c), 0);
    }
    ASSERT_EQ(cluster_settle(&c), 0);
    /* A few heartbeat rounds spread the final commit index. */
    for (int t = 0; t < 3; t++) {
        for (int i = 0; i < NODES; i++) raft_tick(c.n[i].r);
        ASSERT_EQ(cluster_settle(&c), 0);
    }

    for (int i = 0; i < NODES; i++) {
        ASSERT_EQ(c.n[i].n_applied, 100);
        ASSERT_U64_EQ(c.n[i].last_applied_index, status_of(&c.n[0]).commit);
        for (size_t k = 0; k < 100; k++) ASSERT_STR_EQ(c.n[i].applied[k], c.n[0].applied[k]);
    }
    cluster_free(&c);
}

TEST(single_voter_commits_alone) {
    struct raft_memstore *ms = raft_memstore_new();
    ASSERT(ms != NULL);
    struct raft_conf_state cs = {.n_voters = 1, .voters = {7}};
    ASSERT_EQ(raft_memstore_set_conf_state(ms, &cs), 0);
    struct raft_config cfg = {.id = 7,
                              .election_tick = 10,
                              .heartbeat_tick = 1,
                              .max_size_per_msg = 1 << 20,
                              .seed = harness_seed,
                              .storage = raft_memstore_storage(ms)};
    struct raft *r = NULL;
    ASSERT_EQ(raft_new(&cfg, &r), 0);
    ASSERT_EQ(raft_campaign(r), 0);
    ASSERT_EQ(raft_propose(r, "x", 1), 0);
    ASSERT_EQ(raft_read_index(r, "rd", 2), 0);
    int applied_x = 0, reads = 0;
    for (int i = 0; i < 10 && raft_has_update(r); i++) {
        struct raft_update u;
        ASSERT_EQ(raft_get_update(r, &u), 0);
        ASSERT_EQ(u.n_msgs, 0);
        ASSERT_EQ(raft_memstore_append(ms, u.entries, u.n_entries), 0);
        for (size_t k = 0; k < u.n_committed; k++)
            if (u.committed[k].data.len == 1) applied_x++;
        reads += (int)u.n_read_states;
        raft_advance(r, &u);
    }
    ASSERT_EQ(applied_x, 1);
    ASSERT_EQ(reads, 1);
    raft_free(r);
    raft_memstore_free(ms);
}

TEST(encode_decode_round_trip) {
    struct raft_entry ents[2] = {
        {.term = 3, .index = 11, .type = RAFT_ENTRY_NORMAL, .data = {"hello", 5}},
        {.term = 3, .index = 12, .type = RAFT_ENTRY_CONF_CHANGE, .data = {NULL, 0}},
    };
    struct raft_msg m = {.type = RAFT_MSG_SNAP,
                         .from = 1,
                         .to = 2,
                         .term = 3,
                         .log_term = 2,
                         .index = 10,
                         .commit = 9,
                         .reject = true,
                         .reject_hint = 4,
                         .n_entries = 2,
                         .entries = ents,
                         .has_snapshot = true,
                         .context = {"ctx", 3}};
    m.snapshot.meta.index = 8;
    m.snapshot.meta.term = 2;
    m.snapshot.meta.conf.n_voters = 2;
    m.snapshot.meta.conf.voters[0] = 1;
    m.snapshot.meta.conf.voters[1] = 2;
    m.snapshot.meta.conf.n_learners = 1;
    m.snapshot.meta.conf.learners[0] = 5;
    m.snapshot.data.base = "image";
    m.snapshot.data.len = 5;

    size_t cap = raft_encoded_size(&m), len = 0;
    unsigned char *buf = malloc(cap);
    ASSERT(buf != NULL);
    ASSERT_EQ(raft_encode(&m, buf, cap - 1, &len), RAFT_ETOOBIG);
    ASSERT_EQ(raft_encode(&m, buf, cap, &len), 0);
    ASSERT_EQ(len, cap);
    ASSERT_EQ(buf[0], RAFT_WIRE_VERSION);

    struct raft_msg d;
    ASSERT_EQ(raft_decode(buf, len, &d), 0);
    ASSERT_EQ(d.type, RAFT_MSG_SNAP);
    ASSERT_U64_EQ(d.from, 1);
    ASSERT_U64_EQ(d.to, 2);
    ASSERT_U64_EQ(d.term, 3);
    ASSERT_U64_EQ(d.log_term, 2);
    ASSERT_U64_EQ(d.index, 10);
    ASSERT_U64_EQ(d.commit, 9);
    ASSERT(d.reject);
    ASSERT_U64_EQ(d.reject_hint, 4);
    ASSERT_EQ(d.n_entries, 2);
    ASSERT_U64_EQ(d.entries[0].index, 11);
    ASSERT_EQ(d.entries[0].data.len, 5);
    ASSERT_MEM_EQ(d.entries[0].data.base, "hello", 5);
    ASSERT_EQ(d.entries[1].type, RAFT_ENTRY_CONF_CHANGE);
    ASSERT_EQ(d.entries[1].data.len, 0);
    ASSERT(d.has_snapshot);
    ASSERT_U64_EQ(d.snapshot.meta.index, 8);
    ASSERT_EQ(d.snapshot.meta.conf.n_voters, 2);
    ASSERT_U64_EQ(d.snapshot.meta.conf.learners[0], 5);
    ASSERT_MEM_EQ(d.snapshot.data.base, "image", 5);
    ASSERT_MEM_EQ(d.context.base, "ctx", 3);
    raft_msg_release(&d);

    /* Every truncation is refused; so are a bad version and a bad bool. */
    for (size_t cut = 0; cut < len; cut++) {
        ASSERT_NE(raft_decode(buf, cut, &d), 0);
        ASSERT(d.entries == NULL);
    }
    buf[0] = RAFT_WIRE_VERSION + 1;
    ASSERT_EQ(raft_decode(buf, len, &d), RAFT_EVERSION);
    buf[0] = RAFT_WIRE_VERSION;
    buf[2] = 2;
    ASSERT_EQ(raft_decode(buf, len, &d), RAFT_EMALFORMED);
    free(buf);

    struct raft_conf_change cc = {.type = RAFT_CC_ADD_LEARNER,
                                  .node_id = 9,
                                  .context = {"http://n9", 9}};
    void *ccbuf = NULL;
    size_t cclen = 0;
    ASSERT_EQ(raft_conf_change_encode(&cc, &ccbuf, &cclen), 0);
    struct raft_conf_change cd;
    ASSERT_EQ(raft_conf_change_decode(ccbuf, cclen, &cd), 0);
    ASSERT_EQ(cd.type, RAFT_CC_ADD_LEARNER);
    ASSERT_U64_EQ(cd.node_id, 9);
    ASSERT_MEM_EQ(cd.context.base, "http://n9", 9);
    ASSERT_EQ(raft_conf_change_decode(ccbuf, cclen - 1, &cd), RAFT_EMALFORMED);
    free(ccbuf);

    ASSERT_STR_EQ(raft_strerror(RAFT_ENOLEADER), "no leader is known; retry later");
    ASSERT_STR_EQ(raft_strerror(0), "success");
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
