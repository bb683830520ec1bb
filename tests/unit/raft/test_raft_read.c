/*
 * test_raft_read.c - linearizable reads through raft_read_index (Raft paper
 * section 8, thesis 6.4): the leader answers only after an entry of its own
 * term committed and after a quorum acknowledged a heartbeat sent for the
 * read; followers forward the request; a single voter answers at once;
 * without a leader the call fails with RAFT_ENOLEADER.
 *
 * Heartbeat acknowledgements are built by echoing whatever context the
 * leader put in its heartbeat, so the tests do not depend on how raft/ tags
 * its read rounds.
 */
#include "tests/unit/raft/raft_test_net.h"

static int read_index(struct tnet *net, uint64_t id, const char *ctx) {
    return raft_read_index(tr(net, id), ctx, strlen(ctx));
}

static bool has_read(struct tnet *net, uint64_t id, const char *ctx, uint64_t *index) {
    struct tnode *nd = &net->nodes[id];
    for (size_t i = 0; i < nd->n_reads; i++) {
        if (nd->reads[i].len == strlen(ctx) &&
            memcmp(nd->reads[i].ctx, ctx, nd->reads[i].len) == 0) {
            if (index) *index = nd->reads[i].index;
            return true;
        }
    }
    return false;
}

/* The last heartbeat the leader sent to `to`, after ticking it to one if none is queued. */
static const struct raft_msg *heartbeat_to(struct tnet *net, uint64_t leader, uint64_t to) {
    const struct raft_msg *hb = tnet_find_last(net, RAFT_MSG_HEARTBEAT, leader, to);
    for (unsigned t = 0; hb == NULL && t < net->tmpl.heartbeat_tick; t++) {
        tnet_tick(net, leader, 1);
        tnode_ready(net, leader);
        hb = tnet_find_last(net, RAFT_MSG_HEARTBEAT, leader, to);
    }
    return hb;
}

/* Acknowledges the last heartbeat from leader to `from`, echoing its context. */
static void ack_heartbeat(struct tnet *net, uint64_t leader, uint64_t from) {
    const struct raft_msg *hb = heartbeat_to(net, leader, from);
    if (hb == NULL) {
        tnet_fail(net, "no heartbeat from %llu to %llu", (unsigned long long)leader,
                  (unsigned long long)from);
        return;
    }
    struct raft_msg r = tmsg(RAFT_MSG_HEARTBEAT_RESP, from, leader, hb->term);
    unsigned char ctx[256];
    size_t len = hb->context.len < sizeof ctx ? hb->context.len : sizeof ctx;
    if (len) memcpy(ctx, hb->context.base, len);
    r.context.base = ctx;
    r.context.len = len;
    tnet_step(net, &r);
}

/*
 * §8: a new leader does not know the commit index until an entry of its
 * term commits, so it answers no read before that.
 */
TEST(test_8_read_index_waits_for_entry_of_leader_term) {
    struct tnet *net = tnet_solo(NULL, 1, 3, NULL, NULL, 0);
    ASSERT(tnet_win(net, 1));
    tnet_clear(net);
    ASSERT_EQ(read_index(net, 1, "r1"), 0);
    tnode_ready(net, 1);
    ASSERT_EQ(net->nodes[1].n_reads, 0);
    /* Even a heartbeat quorum does not help while the no-op is uncommitted. */
    const struct raft_msg *hb = heartbeat_to(net, 1, 2);
    if (hb) {
        ack_heartbeat(net, 1, 2);
        ack_heartbeat(net, 1, 3);
    }
    ASSERT_EQ(net->nodes[1].n_reads, 0);
    tnet_clear(net);
    struct raft_msg a = tack(2, 1, 1, 1);
    tnet_step(net, &a);
    ASSERT_U64_EQ(tst(net, 1).commit, 1);
    /* The acknowledgement of an append sent before the read does not confirm it. */
    ASSERT_EQ(net->nodes[1].n_reads, 0);
    ack_heartbeat(net, 1, 2);
    uint64_t idx = 0;
    ASSERT(has_read(net, 1, "r1", &idx));
    ASSERT_U64_EQ(idx, 1);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §8: the leader answers a read only once a quorum acknowledged a heartbeat sent after it. */
TEST(test_8_read_index_needs_heartbeat_quorum) {
    struct tnet *net = tnet_solo(NULL, 1, 5, NULL, NULL, 0);
    ASSERT(tnet_win(net, 1));
    struct raft_msg a = tack(2, 1, 1, 1);
    tnet_step(net, &a);
    a = tack(3, 1, 1, 1);
    tnet_step(net, &a);
    ASSERT_U64_EQ(tst(net, 1).commit, 1);
    tnet_clear(net);
    ASSERT_EQ(read_index(net, 1, "q"), 0);
    tnode_ready(net, 1);
    ASSERT_EQ(net->nodes[1].n_reads, 0);
    /* A response with a context the leader never sent confirms nothing. */
    struct raft_msg bogus = tmsg(RAFT_MSG_HEARTBEAT_RESP, 4, 1, 1);
    bogus.context.base = "not-a-read-context";
    bogus.context.len = strlen("not-a-read-context");
    tnet_step(net, &bogus);
    ack_heartbeat(net, 1, 2);
    ASSERT_EQ(net->nodes[1].n_reads, 0);
    /* The same follower twice is still one acknowledgement. */
    ack_heartbeat(net, 1, 2);
    ASSERT_EQ(net->nodes[1].n_reads, 0);
    ack_heartbeat(net, 1, 3);
    uint64_t idx = 0;
    ASSERT(has_read(net, 1, "q", &idx));
    ASSERT_U64_EQ(idx, 1);
    ASSERT_EQ(net->nodes[1].n_reads, 1);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §8: the read index is the leader's commit index when the read arrived. */
TEST(test_8_read_index_is_commit_index_at_request) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    for (int i = 0; i < 4; i++) ASSERT_EQ(tpropose(net, 1, "w"), 0);
    tnet_stabilize(net);
    uint64_t commit = tst(net, 1).commit;
    ASSERT_U64_EQ(commit, 5);
    ASSERT_EQ(read_index(net, 1, "at5"), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 1);
    uint64_t idx = 0;
    ASSERT(has_read(net, 1, "at5", &idx));
    ASSERT_U64_EQ(idx, commit);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §8: a follower forwards the read to the leader and gets back the index to wait for. */
TEST(test_8_read_index_forwarded_from_follower) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    ASSERT_EQ(tpropose(net, 1, "w"), 0);
    tnet_stabilize(net);
    uint64_t commit = tst(net, 1).commit;
    ASSERT_EQ(read_index(net, 2, "fw"), 0);
    tnode_ready(net, 2);
    const struct raft_msg *m = tnet_find(net, RAFT_MSG_READ_INDEX, 2, 1);
    ASSERT(m != NULL);
    tnet_stabilize(net);
    for (unsigned t = 0; t < 3 && !has_read(net, 2, "fw", NULL); t++) tnet_tick_all(net, 1);
    uint64_t idx = 0;
    ASSERT(has_read(net, 2, "fw", &idx));
    ASSERT_U64_EQ(idx, commit);
    ASSERT(!has_read(net, 1, "fw", NULL));
    ASSERT_EQ(net->nodes[3].n_reads, 0);
    /* The follower can serve it once it has applied that far. */
    for (unsigned t = 0; t < 3 && net->nodes[2].applied < idx; t++) tnet_tick_all(net, 1);
    ASSERT_GE(net->nodes[2].applied, idx);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §8: a read forwarded to a leader that has not yet committed in its term waits, then is answered.
 */
TEST(test_8_forwarded_read_waits_for_leader_term_commit) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    net->drop_type[RAFT_MSG_APP_RESP] = true; /* the leader's no-op cannot commit */
    ASSERT(tnet_elect(net, 1));
    ASSERT_U64_EQ(tst(net, 1).commit, 0);
    ASSERT_EQ(read_index(net, 2, "early"), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 2);
    ASSERT_EQ(net->nodes[2].n_reads, 0);
    net->drop_type[RAFT_MSG_APP_RESP] = false;
    for (unsigned t = 0; t < 5 && !has_read(net, 2, "early", NULL); t++) tnet_tick_all(net, 1);
    uint64_t idx = 0;
    ASSERT(has_read(net, 2, "early", &idx));
    ASSERT_GE(idx, 1);
    ASSERT_LE(idx, tst(net, 1).commit);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §8: a single voter is its own quorum and answers a read in its very next update. */
TEST(test_8_read_index_single_node_answers_at_once) {
    struct tnet *net = tnet_cluster(1, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    ASSERT_U64_EQ(tst(net, 1).commit, 1);
    size_t heartbeats = net->n_sent[RAFT_MSG_HEARTBEAT];
    ASSERT_EQ(read_index(net, 1, "solo"), 0);
    tnode_ready(net, 1);
    uint64_t idx = 0;
    ASSERT(has_read(net, 1, "solo", &idx));
    ASSERT_U64_EQ(idx, 1);
    ASSERT_EQ(net->n_sent[RAFT_MSG_HEARTBEAT], heartbeats);
    /* The context may be as long as RAFT_READ_CTX_MAX. */
    char ctx[RAFT_READ_CTX_MAX + 1];
    memset(ctx, 'c', RAFT_READ_CTX_MAX);
    ctx[RAFT_READ_CTX_MAX] = 0;
    ASSERT_EQ(read_index(net, 1, ctx), 0);
    tnode_ready(net, 1);
    ASSERT(has_read(net, 1, ctx, NULL));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* No leader known: nobody can confirm the read. */
TEST(test_8_read_index_without_leader_is_enoleader) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT_EQ(read_index(net, 1, "x"), RAFT_ENOLEADER);
    raft_campaign(tr(net, 2));
    tnode_ready(net, 2);
    ASSERT_EQ(tst(net, 2).role, RAFT_CANDIDATE);
    ASSERT_EQ(read_index(net, 2, "x"), RAFT_ENOLEADER);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* A context longer than RAFT_READ_CTX_MAX is refused up front. */
TEST(test_8_read_index_context_limit) {
    struct tnet *net = tnet_cluster(1, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    char ctx[RAFT_READ_CTX_MAX + 2];
    memset(ctx, 'c', sizeof ctx - 1);
    ctx[sizeof ctx - 1] = 0;
    int rc = read_index(net, 1, ctx);
    ASSERT(rc == RAFT_EINVAL || rc == RAFT_ETOOBIG);
    tnode_ready(net, 1);
    ASSERT_EQ(net->nodes[1].n_reads, 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Several reads before one heartbeat round are all answered, each with its own context. */
TEST(test_8_read_index_batched_reads_all_answered) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    tnet_tick_all(net, 1);
    ASSERT_EQ(read_index(net, 1, "a"), 0);
    ASSERT_EQ(read_index(net, 1, "b"), 0);
    ASSERT_EQ(read_index(net, 2, "c"), 0);
    ASSERT_EQ(read_index(net, 1, "d"), 0);
    tnet_stabilize(net);
    for (unsigned t = 0; t < 3 && net->nodes[1].n_reads < 3; t++) tnet_tick_all(net, 1);
    uint64_t ia = 0, ib = 0, id = 0, ic = 0;
    ASSERT(has_read(net, 1, "a", &ia));
    ASSERT(has_read(net, 1, "b", &ib));
    ASSERT(has_read(net, 1, "d", &id));
    ASSERT(has_read(net, 2, "c", &ic));
    ASSERT_LE(ia, ib);
    ASSERT_LE(ib, id);
    ASSERT_EQ(net->nodes[1].n_reads, 3);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §8: a leader cut off from the majority cannot confirm its leadership, so it answers no read. */
TEST(test_8_partitioned_leader_answers_no_read) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    tnet_tick_all(net, 1);
    tnet_isolate(net, 1);
    ASSERT_EQ(read_index(net, 1, "stale"), 0);
    /* Keep going past the majority's election (split votes may take a few rounds). */
    uint64_t l = 0;
    for (unsigned t = 0; t < 30 * net->tmpl.election_tick; t++) {
        tnet_tick_all(net, 1);
        ASSERT_EQ(net->nodes[1].n_reads, 0);
        l = tnet_leader(net);
        if (t >= 3 * net->tmpl.election_tick && (l == 2 || l == 3)) break;
    }
    /* Meanwhile the majority elected a new leader that answers reads. */
    ASSERT(l == 2 || l == 3);
    ASSERT_EQ(read_index(net, l, "fresh"), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 2);
    ASSERT(has_read(net, l, "fresh", NULL));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
