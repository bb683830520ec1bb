/*
 * test_raft_features.c - the extensions to basic Raft that raft/ implements,
 * one rule per test: pre-vote and check-quorum (Raft thesis 9.6 and 6.2,
 * 4.2.3), leadership transfer (thesis 3.10), proposal forwarding, flow
 * control of appends (etcd raft's max_inflight_msgs and max_size_per_msg),
 * and fast log backtracking (thesis 5.3's optimization, etcd's reject hint).
 *
 * Tests run on raft_test_net.h: either one node driven by hand or a small
 * cluster on the in-memory network, which checks election safety and state
 * machine safety as it delivers.
 */
#include "tests/unit/raft/raft_test_net.h"

static struct raft_config cfg_with(bool pre_vote, bool check_quorum) {
    struct raft_config c;
    tnet_config_defaults(&c);
    c.pre_vote = pre_vote;
    c.check_quorum = check_quorum;
    return c;
}

/* Pre-vote: a pre-candidate asks with term+1 but does not touch its own term until it wins. */
TEST(test_prevote_keeps_term_until_prevote_wins) {
    struct raft_config c = cfg_with(true, false);
    struct raft_hard_state hs = {.term = 2, .vote = 0, .commit = 0};
    const uint64_t terms[] = {1, 2};
    struct tnet *net = tnet_solo(&c, 1, 3, &hs, terms, 2);
    unsigned t = 0;
    while (tst(net, 1).role == RAFT_FOLLOWER && t < 4 * c.election_tick) {
        tnet_tick(net, 1, 1);
        tnode_ready(net, 1);
        t++;
    }
    struct raft_status st = tst(net, 1);
    ASSERT_EQ(st.role, RAFT_PRE_CANDIDATE);
    ASSERT_U64_EQ(st.term, 2);
    ASSERT_U64_EQ(tsaved_hs(net, 1).term, 2);
    ASSERT_EQ(tnet_count(net, RAFT_MSG_VOTE, 1, 0), 0);
    const struct raft_msg *p = tnet_find(net, RAFT_MSG_PREVOTE, 1, 2);
    ASSERT(p != NULL);
    ASSERT_U64_EQ(p->term, 3);
    ASSERT_U64_EQ(p->index, 2);
    ASSERT_U64_EQ(p->log_term, 2);
    ASSERT(tnet_find(net, RAFT_MSG_PREVOTE, 1, 3) != NULL);
    tnet_clear(net);

    struct raft_msg g = tmsg(RAFT_MSG_PREVOTE_RESP, 2, 1, 3);
    tnet_step(net, &g);
    st = tst(net, 1);
    ASSERT_EQ(st.role, RAFT_CANDIDATE);
    ASSERT_U64_EQ(st.term, 3);
    ASSERT_U64_EQ(st.vote, 1);
    const struct raft_msg *v = tnet_find(net, RAFT_MSG_VOTE, 1, 2);
    ASSERT(v != NULL);
    ASSERT_U64_EQ(v->term, 3);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Pre-vote: a pre-candidate refused by a majority never raises its term. */
TEST(test_prevote_refused_leaves_term_unchanged) {
    struct raft_config c = cfg_with(true, false);
    struct raft_hard_state hs = {.term = 2, .vote = 0, .commit = 0};
    struct tnet *net = tnet_solo(&c, 1, 3, &hs, NULL, 0);
    for (int round = 0; round < 5; round++) {
        tnet_tick(net, 1, 2 * c.election_tick);
        tnode_ready(net, 1);
        ASSERT_NE(tst(net, 1).role, RAFT_CANDIDATE);
        ASSERT_NE(tst(net, 1).role, RAFT_LEADER);
        for (uint64_t from = 2; from <= 3; from++) {
            struct raft_msg m = tmsg(RAFT_MSG_PREVOTE_RESP, from, 1, 2);
            m.reject = true;
            tnet_step(net, &m);
        }
        ASSERT_NE(tst(net, 1).role, RAFT_CANDIDATE);
        ASSERT_U64_EQ(tst(net, 1).term, 2);
        ASSERT_U64_EQ(tsaved_hs(net, 1).term, 2);
        tnet_clear(net);
    }
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Pre-vote: answering a pre-vote changes neither the voter's term nor its vote. */
TEST(test_prevote_voter_keeps_term_and_vote) {
    struct raft_hard_state hs = {.term = 2, .vote = 0, .commit = 0};
    const uint64_t terms[] = {1};
    struct tnet *net = tnet_solo(NULL, 1, 3, &hs, terms, 1);
    struct raft_msg m = tmsg(RAFT_MSG_PREVOTE, 2, 1, 3);
    m.index = 1;
    m.log_term = 1;
    tnet_step(net, &m);
    const struct raft_msg *r = tnet_find(net, RAFT_MSG_PREVOTE_RESP, 1, 2);
    ASSERT(r != NULL);
    ASSERT(!r->reject);
    struct raft_status st = tst(net, 1);
    ASSERT_U64_EQ(st.term, 2);
    ASSERT_U64_EQ(st.vote, RAFT_NONE);
    ASSERT_U64_EQ(tsaved_hs(net, 1).term, 2);
    tnet_clear(net);

    /* A pre-candidate with a stale log is refused (§5.4.1 applies to pre-votes too). */
    m = tmsg(RAFT_MSG_PREVOTE, 3, 1, 3);
    m.index = 0;
    m.log_term = 0;
    tnet_step(net, &m);
    r = tnet_find(net, RAFT_MSG_PREVOTE_RESP, 1, 3);
    ASSERT(r != NULL);
    ASSERT(r->reject);
    ASSERT_U64_EQ(tst(net, 1).term, 2);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Pre-vote: a node cut off while the cluster moved on rejoins without deposing the leader. */
TEST(test_prevote_partitioned_node_does_not_disrupt_leader) {
    struct raft_config c = cfg_with(true, false);
    struct tnet *net = tnet_cluster(3, 0, &c);
    ASSERT(tnet_elect(net, 1));
    tnet_isolate(net, 3);
    ASSERT_EQ(tpropose(net, 1, "while-away"), 0);
    tnet_tick_all(net, 10 * c.election_tick);
    ASSERT_U64_EQ(tst(net, 3).term, 1);
    ASSERT_U64_EQ(tsaved_hs(net, 3).term, 1);
    ASSERT_U64_EQ(tnet_leader(net), 1);
    tnet_heal(net);
    tnet_tick_all(net, 3 * c.election_tick);
    ASSERT_U64_EQ(tnet_leader(net), 1);
    for (uint64_t id = 1; id <= 3; id++) {
        ASSERT_U64_EQ(tst(net, id).term, 1);
        ASSERT_U64_EQ(tst(net, id).leader, 1);
    }
    ASSERT(tapplied_has(net, 3, "while-away"));
    ASSERT_EQ(tnet_check(net), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/*
 * Pre-vote with check-quorum (thesis 9.6): even a node whose log is up to
 * date is refused while the others hear from their leader, so it rejoins
 * without an election.
 */
TEST(test_prevote_refused_while_leader_is_heard) {
    struct raft_config c = cfg_with(true, true);
    struct tnet *net = tnet_cluster(3, 0, &c);
    ASSERT(tnet_elect(net, 1));
    tnet_stabilize(net);
    tnet_isolate(net, 3);
    tnet_tick_all(net, 10 * c.election_tick);
    ASSERT_U64_EQ(tst(net, 3).term, 1);
    tnet_heal(net);
    tnet_tick_all(net, 3 * c.election_tick);
    ASSERT_U64_EQ(tnet_leader(net), 1);
    for (uint64_t id = 1; id <= 3; id++) ASSERT_U64_EQ(tst(net, id).term, 1);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Check-quorum: a leader that has not heard from a quorum for an election timeout steps down. */
TEST(test_check_quorum_leader_steps_down_without_quorum) {
    struct raft_config c = cfg_with(false, true);
    struct tnet *net = tnet_cluster(3, 0, &c);
    ASSERT(tnet_elect(net, 1));
    tnet_tick_all(net, 2);
    tnet_isolate(net, 1);
    for (unsigned t = 0; t < 2 * c.election_tick; t++) {
        tnet_tick(net, 1, 1);
        tnode_ready(net, 1);
        tnet_clear(net);
    }
    struct raft_status st = tst(net, 1);
    ASSERT_EQ(st.role, RAFT_FOLLOWER);
    ASSERT_U64_EQ(st.leader, RAFT_NONE);
    /* Stepping down does not need a new term. */
    ASSERT_U64_EQ(st.term, 1);
    ASSERT_EQ(tpropose(net, 1, "lost"), RAFT_ENOLEADER);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Check-quorum: a leader in touch with a quorum keeps its leadership indefinitely. */
TEST(test_check_quorum_leader_keeps_leadership_with_quorum) {
    struct raft_config c = cfg_with(false, true);
    struct tnet *net = tnet_cluster(5, 0, &c);
    ASSERT(tnet_elect(net, 1));
    /* Two of five are gone; 1, 2, 3 still make a quorum. */
    tnet_isolate(net, 4);
    tnet_isolate(net, 5);
    net->cut[4][5] = net->cut[5][4] = false;
    for (unsigned t = 0; t < 10 * c.election_tick; t++) {
        tnet_tick(net, 1, 1);
        tnet_tick(net, 2, 1);
        tnet_tick(net, 3, 1);
        tnet_stabilize(net);
        ASSERT_EQ(tst(net, 1).role, RAFT_LEADER);
    }
    ASSERT_U64_EQ(tst(net, 1).term, 1);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/*
 * Thesis 4.2.3 (etcd: with check-quorum): a server that heard from a leader
 * within the election timeout ignores vote requests, even of higher terms,
 * so a disconnected server cannot depose a healthy leader.
 */
TEST(test_check_quorum_vote_ignored_within_lease) {
    struct raft_config c = cfg_with(false, true);
    struct tnet *net = tnet_cluster(3, 0, &c);
    ASSERT(tnet_elect(net, 1));
    tnet_tick_all(net, 1);
    tnet_clear(net);
    struct raft_msg v = tmsg(RAFT_MSG_VOTE, 3, 2, 5);
    v.index = tst(net, 3).last_index;
    v.log_term = tterm(net, 3, v.index);
    ASSERT_EQ(raft_step(tr(net, 2), &v), 0);
    tnode_ready(net, 2);
    ASSERT_U64_EQ(tst(net, 2).term, 1);
    ASSERT_U64_EQ(tst(net, 2).leader, 1);
    const struct raft_msg *r = tnet_find(net, RAFT_MSG_VOTE_RESP, 2, 3);
    if (r) ASSERT(r->reject);
    tnet_clear(net);
    /* Without a leader for an election timeout, the same request is granted. */
    tnet_isolate(net, 1);
    tnet_tick(net, 2, c.election_tick);
    tnode_ready(net, 2);
    tnet_clear(net);
    raft_step(tr(net, 2), &v);
    tnode_ready(net, 2);
    ASSERT_U64_EQ(tst(net, 2).term, 5);
    r = tnet_find(net, RAFT_MSG_VOTE_RESP, 2, 3);
    ASSERT(r != NULL);
    ASSERT(!r->reject);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Leadership transfer: to a caught-up follower, TIMEOUT_NOW goes out at once and it wins. */
TEST(test_transfer_to_caught_up_follower) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    tnet_tick_all(net, 1);
    ASSERT_EQ(raft_transfer_leadership(tr(net, 1), 2), 0);
    tnode_ready(net, 1);
    const struct raft_msg *tn = tnet_find(net, RAFT_MSG_TIMEOUT_NOW, 1, 2);
    ASSERT(tn != NULL);
    ASSERT_U64_EQ(tn->term, 1);
    tnet_stabilize(net);
    ASSERT_EQ(tst(net, 2).role, RAFT_LEADER);
    ASSERT_U64_EQ(tst(net, 2).term, 2);
    ASSERT_EQ(tst(net, 1).role, RAFT_FOLLOWER);
    ASSERT_U64_EQ(tst(net, 1).leader, 2);
    ASSERT_U64_EQ(tst(net, 1).transferee, RAFT_NONE);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/*
 * Leadership transfer: a lagging target is first brought up to date, and
 * only then told TIMEOUT_NOW; meanwhile proposals are refused.
 */
TEST(test_transfer_to_lagging_follower_catches_up_first) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    tnet_isolate(net, 3);
    for (int i = 0; i < 5; i++) ASSERT_EQ(tpropose(net, 1, "behind"), 0);
    tnet_stabilize(net);
    tnet_heal(net);
    ASSERT_LT(tlast(net, 3), tlast(net, 1));
    ASSERT_EQ(raft_transfer_leadership(tr(net, 1), 3), 0);
    tnode_ready(net, 1);
    ASSERT_EQ(tnet_count(net, RAFT_MSG_TIMEOUT_NOW, 1, 3), 0);
    ASSERT_U64_EQ(tst(net, 1).transferee, 3);
    ASSERT_EQ(tpropose(net, 1, "during"), RAFT_EDROPPED);
    bool timeout_now_before_caught_up = false;
    unsigned t = 0;
    while (tst(net, 3).role != RAFT_LEADER && t < net->tmpl.election_tick - 1) {
        if (tnet_find(net, RAFT_MSG_TIMEOUT_NOW, 1, 3) && tlast(net, 3) < tlast(net, 1))
            timeout_now_before_caught_up = true;
        tnet_stabilize(net);
        if (tst(net, 3).role == RAFT_LEADER) break;
        for (uint64_t id = 1; id <= 3; id++) raft_tick(tr(net, id));
        t++;
    }
    ASSERT(!timeout_now_before_caught_up);
    ASSERT_EQ(tst(net, 3).role, RAFT_LEADER);
    ASSERT_U64_EQ(tst(net, 3).term, 2);
    tnet_tick_all(net, 1);
    ASSERT_EQ(tpropose(net, 3, "after"), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 1);
    for (uint64_t id = 1; id <= 3; id++) ASSERT(tapplied_has(net, id, "after"));
    ASSERT(!tapplied_has(net, 1, "during"));
    ASSERT_EQ(tnet_check(net), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Leadership transfer: proposals are dropped with RAFT_EDROPPED while it is in progress. */
TEST(test_transfer_drops_proposals) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    tnet_isolate(net, 3);
    ASSERT_EQ(raft_transfer_leadership(tr(net, 1), 3), 0);
    tnet_stabilize(net);
    ASSERT_U64_EQ(tst(net, 1).transferee, 3);
    uint64_t last = tst(net, 1).last_index;
    ASSERT_EQ(tpropose(net, 1, "x"), RAFT_EDROPPED);
    /* Forwarded proposals are dropped as well. */
    ASSERT_EQ(tpropose(net, 2, "y"), 0);
    tnet_stabilize(net);
    ASSERT_U64_EQ(tst(net, 1).last_index, last);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Leadership transfer: abandoned after an election timeout if the target never takes over. */
TEST(test_transfer_aborted_after_election_timeout) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    tnet_isolate(net, 3);
    ASSERT_EQ(raft_transfer_leadership(tr(net, 1), 3), 0);
    tnet_stabilize(net);
    ASSERT_U64_EQ(tst(net, 1).transferee, 3);
    for (unsigned t = 0; t < 2 * net->tmpl.election_tick; t++) {
        raft_tick(tr(net, 1));
        raft_tick(tr(net, 2));
        tnet_stabilize(net);
    }
    ASSERT_EQ(tst(net, 1).role, RAFT_LEADER);
    ASSERT_U64_EQ(tst(net, 1).transferee, RAFT_NONE);
    ASSERT_EQ(tpropose(net, 1, "resumed"), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 1);
    ASSERT(tapplied_has(net, 2, "resumed"));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Leadership transfer: a follower's request reaches the leader (TRANSFER_LEADER), which hands over.
 */
TEST(test_transfer_requested_by_follower) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    tnet_tick_all(net, 1);
    ASSERT_EQ(raft_transfer_leadership(tr(net, 3), 3), 0);
    tnode_ready(net, 3);
    ASSERT(tnet_find(net, RAFT_MSG_TRANSFER_LEADER, 3, 1) != NULL);
    tnet_stabilize(net);
    ASSERT_EQ(tst(net, 3).role, RAFT_LEADER);
    ASSERT_U64_EQ(tst(net, 1).leader, 3);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Leadership transfer: TIMEOUT_NOW's campaign skips pre-vote and overrides followers' leases. */
TEST(test_transfer_with_prevote_and_check_quorum) {
    struct raft_config c = cfg_with(true, true);
    struct tnet *net = tnet_cluster(3, 0, &c);
    ASSERT(tnet_elect(net, 1));
    tnet_tick_all(net, 1);
    ASSERT_EQ(raft_transfer_leadership(tr(net, 1), 2), 0);
    tnet_stabilize(net);
    ASSERT_EQ(tst(net, 2).role, RAFT_LEADER);
    ASSERT_U64_EQ(tst(net, 2).term, 2);
    ASSERT_U64_EQ(tst(net, 3).leader, 2);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Leadership transfer: only to a voter of the configuration; to itself it is a no-op. */
TEST(test_transfer_target_must_be_a_voter) {
    struct tnet *net = tnet_cluster(3, 1, NULL);
    ASSERT(tnet_elect(net, 1));
    ASSERT_EQ(raft_transfer_leadership(tr(net, 1), 7), RAFT_ENOTMEMBER);
    ASSERT_EQ(raft_transfer_leadership(tr(net, 1), 4), RAFT_ENOTMEMBER);
    ASSERT_EQ(raft_transfer_leadership(tr(net, 1), 1), 0);
    tnet_stabilize(net);
    ASSERT_EQ(tst(net, 1).role, RAFT_LEADER);
    ASSERT_U64_EQ(tst(net, 1).transferee, RAFT_NONE);
    ASSERT_EQ(tpropose(net, 1, "still-leading"), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Forwarding: a follower hands a proposal to the leader as a PROP message. */
TEST(test_forward_proposal_to_leader) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    ASSERT_EQ(tpropose(net, 2, "fwd"), 0);
    tnode_ready(net, 2);
    const struct raft_msg *p = tnet_find(net, RAFT_MSG_PROP, 2, 1);
    ASSERT(p != NULL);
    ASSERT_EQ(p->n_entries, 1);
    ASSERT_EQ(p->entries[0].data.len, 3);
    ASSERT_MEM_EQ(p->entries[0].data.base, "fwd", 3);
    tnet_stabilize(net);
    tnet_tick_all(net, 1);
    for (uint64_t id = 1; id <= 3; id++) ASSERT(tapplied_has(net, id, "fwd"));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Forwarding: with no leader known there is nobody to forward to. */
TEST(test_forward_without_leader_is_enoleader) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT_EQ(tpropose(net, 1, "x"), RAFT_ENOLEADER);
    raft_campaign(tr(net, 1));
    tnode_ready(net, 1);
    ASSERT_EQ(tst(net, 1).role, RAFT_CANDIDATE);
    ASSERT_EQ(tpropose(net, 1, "x"), RAFT_ENOLEADER);
    ASSERT_EQ(tpropose(net, 2, "x"), RAFT_ENOLEADER);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Forwarding disabled: a follower refuses proposals with RAFT_ENOTLEADER. */
TEST(test_forward_disabled_is_enotleader) {
    struct raft_config c;
    tnet_config_defaults(&c);
    c.disable_proposal_forwarding = true;
    struct tnet *net = tnet_cluster(3, 0, &c);
    ASSERT(tnet_elect(net, 1));
    ASSERT_EQ(tpropose(net, 2, "x"), RAFT_ENOTLEADER);
    tnode_ready(net, 2);
    ASSERT_EQ(tnet_count(net, RAFT_MSG_PROP, 2, 0), 0);
    ASSERT_EQ(tpropose(net, 1, "y"), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Counts appends with entries from 1 to 2 (flow control tests). */
static size_t apps_1_to_2;

static void count_apps_1_to_2(struct tnet *net, const struct raft_msg *m) {
    (void)net;
    if (m->type == RAFT_MSG_APP && m->from == 1 && m->to == 2 && m->n_entries > 0) apps_1_to_2++;
}

/* Flow control: at most max_inflight_msgs appends are unacknowledged per follower. */
TEST(test_flow_control_max_inflight_msgs) {
    struct raft_config c;
    tnet_config_defaults(&c);
    c.max_inflight_msgs = 2;
    struct tnet *net = tnet_cluster(3, 0, &c);
    ASSERT(tnet_elect(net, 1));
    tnet_stabilize(net);
    apps_1_to_2 = 0;
    net->on_send = count_apps_1_to_2;
    net->cut[2][1] = true; /* node 2's acknowledgements are lost */
    char buf[16];
    for (int i = 0; i < 8; i++) {
        snprintf(buf, sizeof buf, "p%d", i);
        ASSERT_EQ(tpropose(net, 1, buf), 0);
        tnet_stabilize(net);
    }
    ASSERT_LE(apps_1_to_2, 2);
    ASSERT_GE(apps_1_to_2, 1);
    /* Node 3 kept the entries committing. */
    ASSERT_U64_EQ(tst(net, 1).commit, 9);
    tnet_heal(net);
    for (unsigned t = 0; t < 5 * c.election_tick && !tlogs_equal(net, 1, 2); t++)
        tnet_tick_all(net, 1);
    ASSERT(tlogs_equal(net, 1, 2));
    ASSERT(tapplied_has(net, 2, "p7"));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Tracks unacknowledged appends to node 2 by their last index (flow control tests). */
static struct {
    uint64_t last[1024];
    size_t n, max_n, apps, max_bytes_seen, max_entries_seen;
    bool size_violated;
    uint64_t size_limit;
} flight;

static void flight_on_send(struct tnet *net, const struct raft_msg *m) {
    (void)net;
    if (m->type != RAFT_MSG_APP || m->n_entries == 0) return;
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < m->n_entries; i++) bytes += m->entries[i].data.len;
    if (m->n_entries > 1 && bytes > flight.size_limit) flight.size_violated = true;
    if (m->n_entries > flight.max_entries_seen) flight.max_entries_seen = m->n_entries;
    if (bytes > flight.max_bytes_seen) flight.max_bytes_seen = bytes;
    if (m->to != 2) return;
    flight.apps++;
    if (flight.n < 1024) flight.last[flight.n++] = m->entries[m->n_entries - 1].index;
    if (flight.n > flight.max_n) flight.max_n = flight.n;
}

static void flight_on_deliver(struct tnet *net, const struct raft_msg *m) {
    (void)net;
    if (m->type != RAFT_MSG_APP_RESP || m->from != 2) return;
    if (m->reject) {
        flight.n = 0;
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < flight.n; i++)
        if (flight.last[i] > m->index) flight.last[k++] = flight.last[i];
    flight.n = k;
}

/*
 * Flow control: an append carries at most max_size_per_msg bytes of entry
 * data (a single larger entry still goes alone), and while a follower
 * catches up at most max_inflight_msgs appends are in flight to it.
 */
TEST(test_flow_control_max_size_per_msg) {
    struct raft_config c;
    tnet_config_defaults(&c);
    c.max_size_per_msg = 100;
    c.max_inflight_msgs = 3;
    struct tnet *net = tnet_new(&c);
    struct raft_conf_state cs = tconf(3, 0);
    static char payload[40];
    memset(payload, 'v', sizeof payload);
    struct raft_entry e[60];
    for (size_t i = 0; i < 60; i++) {
        memset(&e[i], 0, sizeof e[i]);
        e[i].index = i + 1;
        e[i].term = 1;
        e[i].data.base = payload;
        e[i].data.len = i == 30 ? 0 : sizeof payload;
    }
    static char big[300];
    memset(big, 'B', sizeof big);
    e[45].data.base = big;
    e[45].data.len = sizeof big;
    struct raft_hard_state hs = {.term = 1, .vote = 0, .commit = 0};
    tnet_add(net, 1, &cs, &hs, e, 60);
    tnet_add(net, 2, &cs, NULL, NULL, 0);
    tnet_add(net, 3, &cs, NULL, NULL, 0);
    memset(&flight, 0, sizeof flight);
    flight.size_limit = c.max_size_per_msg;
    net->on_send = flight_on_send;
    net->on_deliver = flight_on_deliver;
    ASSERT(tnet_elect(net, 1));
    tnet_tick_all(net, 2);
    ASSERT(tlogs_equal(net, 1, 2));
    ASSERT(tlogs_equal(net, 1, 3));
    ASSERT_U64_EQ(net->nodes[2].applied, 61);
    ASSERT(!flight.size_violated);
    ASSERT_GE(flight.max_entries_seen, 2); /* entries were batched up to the limit */
    ASSERT_EQ(flight.max_bytes_seen, sizeof big);
    ASSERT_GE(flight.apps, 20);
    ASSERT_LE(flight.max_n, c.max_inflight_msgs);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Counts rejections from node 2 that reach the leader. */
static size_t rejects_from_2;

static void count_rejects_from_2(struct tnet *net, const struct raft_msg *m) {
    (void)net;
    if (m->type == RAFT_MSG_APP_RESP && m->from == 2 && m->reject) rejects_from_2++;
}

/* Builds a log of n entries whose terms come from runs {term, count}. */
static size_t runs_log(struct raft_entry *e, size_t cap, const uint64_t (*runs)[2], size_t n_runs) {
    size_t n = 0;
    for (size_t r = 0; r < n_runs; r++)
        for (uint64_t k = 0; k < runs[r][1] && n < cap; k++) {
            memset(&e[n], 0, sizeof e[n]);
            e[n].index = n + 1;
            e[n].term = runs[r][0];
            e[n].data.base = tnet_payload;
            e[n].data.len = sizeof tnet_payload - 1;
            n++;
        }
    return n;
}

/*
 * Fast backtracking: a follower whose long log diverges from the leader's
 * over several terms is repaired in a number of round trips bounded by the
 * terms involved, not by the number of divergent entries.
 */
TEST(test_fast_backtracking_divergent_follower_log) {
    struct tnet *net = tnet_new(NULL);
    struct raft_conf_state cs = tconf(3, 0);
    static struct raft_entry e[200];
    const uint64_t leader_runs[][2] = {{1, 10}, {5, 50}};
    const uint64_t follower_runs[][2] = {{1, 10}, {2, 30}, {3, 30}, {4, 30}};
    struct raft_hard_state hs = {.term = 5, .vote = 0, .commit = 10};
    size_t n = runs_log(e, 200, leader_runs, 2);
    tnet_add(net, 1, &cs, &hs, e, n);
    tnet_add(net, 3, &cs, &hs, e, n);
    hs.term = 4;
    n = runs_log(e, 200, follower_runs, 4);
    tnet_add(net, 2, &cs, &hs, e, n);
    rejects_from_2 = 0;
    net->on_deliver = count_rejects_from_2;
    ASSERT(tnet_elect(net, 1));
    tnet_tick_all(net, 2);
    ASSERT(tlogs_equal(net, 1, 2));
    ASSERT_U64_EQ(tlast(net, 2), 61);
    /* Naive decrement would take about 50 rejections here. */
    ASSERT_LE(rejects_from_2, 4);
    ASSERT_GE(rejects_from_2, 1);
    ASSERT_EQ(tnet_check(net), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Fast backtracking: a follower missing a long tail is found in one rejection. */
TEST(test_fast_backtracking_lagging_follower) {
    struct tnet *net = tnet_new(NULL);
    struct raft_conf_state cs = tconf(3, 0);
    static struct raft_entry e[120];
    const uint64_t leader_runs[][2] = {{1, 100}};
    const uint64_t follower_runs[][2] = {{1, 5}};
    struct raft_hard_state hs = {.term = 1, .vote = 0, .commit = 5};
    size_t n = runs_log(e, 120, leader_runs, 1);
    tnet_add(net, 1, &cs, &hs, e, n);
    tnet_add(net, 3, &cs, &hs, e, n);
    n = runs_log(e, 120, follower_runs, 1);
    tnet_add(net, 2, &cs, &hs, e, n);
    rejects_from_2 = 0;
    net->on_deliver = count_rejects_from_2;
    ASSERT(tnet_elect(net, 1));
    tnet_tick_all(net, 2);
    ASSERT(tlogs_equal(net, 1, 2));
    ASSERT_U64_EQ(tlast(net, 2), 101);
    ASSERT_LE(rejects_from_2, 1);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* An entry that no message could carry is refused up front, not copied. */
TEST(test_propose_oversized_entry_is_etoobig) {
    struct tnet *net = tnet_cluster(1, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    size_t n = (size_t)RAFT_DECODE_BYTES_MAX + 1;
    char *big = calloc(1, n);
    ASSERT(big != NULL);
    int rc = raft_propose(tr(net, 1), big, n);
    free(big);
    ASSERT_EQ(rc, RAFT_ETOOBIG);
    tnode_ready(net, 1);
    ASSERT_U64_EQ(tst(net, 1).last_index, 1);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Committed entries reach the driver in batches of at most max_committed_size_per_update bytes. */
TEST(test_committed_entries_paged_by_max_committed_size) {
    struct raft_config c;
    tnet_config_defaults(&c);
    c.max_committed_size_per_update = 100;
    struct tnet *net = tnet_cluster(1, 0, &c);
    ASSERT(tnet_elect(net, 1));
    char data[41];
    memset(data, 'd', 40);
    data[40] = 0;
    for (int i = 0; i < 10; i++) ASSERT_EQ(tpropose(net, 1, data), 0);
    size_t updates_with_commits = 0, max_n = 0;
    bool over = false;
    for (int k = 0; k < 100 && raft_has_update(tr(net, 1)); k++) {
        struct raft_update u;
        ASSERT_EQ(raft_get_update(tr(net, 1), &u), 0);
        uint64_t bytes = 0;
        for (size_t i = 0; i < u.n_committed; i++) bytes += u.committed[i].data.len;
        if (u.n_committed > 1 && bytes > c.max_committed_size_per_update) over = true;
        if (u.n_committed > 0) updates_with_commits++;
        if (u.n_committed > max_n) max_n = u.n_committed;
        tnode_finish_update(net, 1, &u);
    }
    ASSERT(!over);
    ASSERT_GE(updates_with_commits, 4);
    ASSERT_GE(max_n, 2);
    ASSERT_U64_EQ(net->nodes[1].applied, 11);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* An unreachable follower is probed again once reachable, and catches up. */
TEST(test_report_unreachable_then_recovers) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    tnet_isolate(net, 3);
    for (int i = 0; i < 3; i++) ASSERT_EQ(tpropose(net, 1, "u"), 0);
    tnet_stabilize(net);
    raft_report_unreachable(tr(net, 1), 3);
    tnet_heal(net);
    tnet_tick_all(net, 3);
    ASSERT(tlogs_equal(net, 1, 3));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
