/*
 * test_raft_membership.c - cluster membership changes (Raft paper section 6,
 * thesis chapter 4, single-server changes): adding and removing voters,
 * learners that receive the log but never vote nor count for a quorum,
 * promotion of a learner, one pending change at a time, and a leader that
 * removes itself stepping down once the change is applied.
 *
 * A node joining a running cluster is bootstrapped with the cluster's current
 * configuration (which does not list it yet), as a driver starting a member
 * of an existing cluster does; it learns of its own admission from the log.
 */
#include "tests/unit/raft/raft_test_net.h"

static int propose_cc(struct tnet *net, uint64_t on, uint8_t type, uint64_t node) {
    struct raft_conf_change cc;
    memset(&cc, 0, sizeof cc);
    cc.type = type;
    cc.node_id = node;
    return raft_propose_conf_change(tr(net, on), &cc);
}

static int apply_cc(struct tnet *net, uint64_t on, uint8_t type, uint64_t node,
                    struct raft_conf_state *cs) {
    struct raft_conf_change cc;
    memset(&cc, 0, sizeof cc);
    cc.type = type;
    cc.node_id = node;
    return raft_apply_conf_change(tr(net, on), &cc, cs);
}

/* Proposes on the leader, then reports whether it committed within a few heartbeats. */
static bool commits(struct tnet *net, uint64_t leader, const char *data) {
    uint64_t before = tst(net, leader).commit;
    if (tpropose(net, leader, data) != 0) return false;
    tnet_stabilize(net);
    tnet_tick_all(net, 3);
    return tst(net, leader).commit > before && tapplied_has(net, leader, data);
}

/* §6: an added voter receives the log and from then on counts for the quorum. */
TEST(test_6_add_voter_joins_quorum) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    ASSERT(commits(net, 1, "before"));
    struct raft_conf_state cs = tconf(3, 0);
    ASSERT_EQ(tnet_add(net, 4, &cs, NULL, NULL, 0), 0);
    ASSERT_EQ(propose_cc(net, 1, RAFT_CC_ADD_VOTER, 4), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 3);
    for (uint64_t id = 1; id <= 4; id++) {
        struct raft_status st = tst(net, id);
        ASSERT_EQ(st.conf.n_voters, 4);
        ASSERT(tconf_has_voter(&st.conf, 4));
        ASSERT_EQ(net->nodes[id].conf.n_voters, 4);
    }
    ASSERT(tlogs_equal(net, 1, 4));
    ASSERT(tapplied_has(net, 4, "before"));
    /* Three of four is a quorum... */
    tnet_isolate(net, 4);
    ASSERT(commits(net, 1, "three-of-four"));
    /* ...two of four is not, though it was a majority of the old three. */
    tnet_isolate(net, 3);
    ASSERT(!commits(net, 1, "two-of-four"));
    ASSERT_EQ(tnet_check(net), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §6: a removed voter no longer counts: the remaining nodes form the quorum on their own. */
TEST(test_6_remove_voter_shrinks_quorum) {
    struct tnet *net = tnet_cluster(5, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    /*
     * A removed node is cut off once its removal is applied: it may never
     * learn of it, and its campaigns would only disrupt (thesis 4.2.3).
     */
    ASSERT_EQ(propose_cc(net, 1, RAFT_CC_REMOVE, 5), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 1);
    ASSERT(!tis_voter(net, 1, 5));
    tnet_isolate(net, 5);
    ASSERT_EQ(propose_cc(net, 1, RAFT_CC_REMOVE, 4), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 1);
    ASSERT(!tis_voter(net, 1, 4));
    tnet_isolate(net, 4);
    tnet_tick_all(net, 2);
    for (uint64_t id = 1; id <= 3; id++) {
        struct raft_status st = tst(net, id);
        ASSERT_EQ(st.conf.n_voters, 3);
        ASSERT(!tconf_has_voter(&st.conf, 4));
        ASSERT(!tconf_has_voter(&st.conf, 5));
    }
    /* Two of the remaining three commit; of the original five they would not. */
    tnet_isolate(net, 3);
    ASSERT(commits(net, 1, "two-of-three"));
    ASSERT(tapplied_has(net, 2, "two-of-three"));
    ASSERT_EQ(tnet_check(net), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Learners receive and apply the log but do not count towards the commit quorum. */
TEST(test_6_learner_gets_log_but_does_not_count_for_commit) {
    /* Voters 1, 2 and learners 3, 4: the leader plus both learners would be 3 of 4 members. */
    struct tnet *net = tnet_cluster(2, 2, NULL);
    ASSERT(tnet_elect(net, 1));
    ASSERT(commits(net, 1, "all"));
    for (uint64_t id = 3; id <= 4; id++) {
        ASSERT(tapplied_has(net, id, "all"));
        ASSERT(tlogs_equal(net, 1, id));
        ASSERT(tis_learner(net, id, id));
    }
    tnet_isolate(net, 2);
    ASSERT(!commits(net, 1, "learner-only"));
    /* The learners hold the entry; they simply do not make a majority. */
    ASSERT_U64_EQ(tlast(net, 3), tlast(net, 1));
    ASSERT_U64_EQ(tlast(net, 4), tlast(net, 1));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Learners never start an election, however long they hear nothing. */
TEST(test_6_learner_never_campaigns) {
    struct tnet *net = tnet_cluster(3, 1, NULL);
    tnet_isolate(net, 4);
    for (unsigned t = 0; t < 10 * net->tmpl.election_tick; t++) {
        tnet_tick(net, 4, 1);
        tnode_ready(net, 4);
        ASSERT_EQ(tst(net, 4).role, RAFT_FOLLOWER);
    }
    raft_campaign(tr(net, 4));
    tnode_ready(net, 4);
    ASSERT_EQ(tst(net, 4).role, RAFT_FOLLOWER);
    ASSERT_U64_EQ(tst(net, 4).term, 0);
    ASSERT_EQ(tnet_count(net, RAFT_MSG_VOTE, 4, 0), 0);
    ASSERT_EQ(tnet_count(net, RAFT_MSG_PREVOTE, 4, 0), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* A candidate neither asks learners for votes nor counts a learner's grant. */
TEST(test_6_learner_vote_not_counted) {
    struct tnet *net = tnet_new(NULL);
    struct raft_conf_state cs = tconf(3, 1);
    tnet_add(net, 1, &cs, NULL, NULL, 0);
    ASSERT_EQ(raft_campaign(tr(net, 1)), 0);
    tnode_ready(net, 1);
    ASSERT_EQ(tnet_count(net, RAFT_MSG_VOTE, 1, 4), 0);
    ASSERT_EQ(tnet_count(net, RAFT_MSG_VOTE, 1, 0), 2);
    struct raft_msg g = tmsg(RAFT_MSG_VOTE_RESP, 4, 1, 1);
    tnet_step(net, &g);
    ASSERT_EQ(tst(net, 1).role, RAFT_CANDIDATE);
    g.from = 2;
    tnet_step(net, &g);
    ASSERT_EQ(tst(net, 1).role, RAFT_LEADER);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Promoting a learner makes it a voter that counts for the quorum. */
TEST(test_6_promote_learner_to_voter) {
    struct tnet *net = tnet_cluster(2, 1, NULL);
    ASSERT(tnet_elect(net, 1));
    tnet_isolate(net, 2);
    ASSERT(!commits(net, 1, "as-learner")); /* 1 and learner 3: not a majority of {1,2} */
    tnet_heal(net);
    tnet_stabilize(net);
    tnet_tick_all(net, 3);
    ASSERT(tapplied_has(net, 3, "as-learner"));
    ASSERT_EQ(propose_cc(net, 1, RAFT_CC_ADD_VOTER, 3), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 3);
    for (uint64_t id = 1; id <= 3; id++) {
        struct raft_status st = tst(net, id);
        ASSERT_EQ(st.conf.n_voters, 3);
        ASSERT_EQ(st.conf.n_learners, 0);
        ASSERT(tconf_has_voter(&st.conf, 3));
    }
    tnet_isolate(net, 2);
    ASSERT(commits(net, 1, "as-voter")); /* 1 and 3: a majority of {1,2,3} */
    ASSERT_EQ(tnet_check(net), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Learners are added and removed like voters, without touching the voter set. */
TEST(test_6_add_and_remove_learner) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    struct raft_conf_state cs = tconf(3, 0);
    ASSERT_EQ(tnet_add(net, 4, &cs, NULL, NULL, 0), 0);
    ASSERT_EQ(propose_cc(net, 1, RAFT_CC_ADD_LEARNER, 4), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 3);
    for (uint64_t id = 1; id <= 4; id++) {
        struct raft_status st = tst(net, id);
        ASSERT_EQ(st.conf.n_voters, 3);
        ASSERT_EQ(st.conf.n_learners, 1);
        ASSERT(tconf_has_learner(&st.conf, 4));
    }
    ASSERT(tlogs_equal(net, 1, 4));
    ASSERT_EQ(propose_cc(net, 1, RAFT_CC_REMOVE, 4), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 3);
    for (uint64_t id = 1; id <= 3; id++) {
        struct raft_status st = tst(net, id);
        ASSERT_EQ(st.conf.n_voters, 3);
        ASSERT_EQ(st.conf.n_learners, 0);
    }
    /* The leader stops replicating to the removed learner. */
    uint64_t last4 = tlast(net, 4);
    ASSERT(commits(net, 1, "after-removal"));
    ASSERT_U64_EQ(tlast(net, 4), last4);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* A voter cannot be demoted to a learner: the configuration keeps it a voter. */
TEST(test_6_voter_cannot_be_demoted) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    net->allow_cc_errors = true;
    ASSERT(tnet_elect(net, 1));
    int rc = propose_cc(net, 1, RAFT_CC_ADD_LEARNER, 2);
    if (rc == 0) {
        tnet_stabilize(net);
        tnet_tick_all(net, 3);
    }
    for (uint64_t id = 1; id <= 3; id++) {
        struct raft_status st = tst(net, id);
        ASSERT(tconf_has_voter(&st.conf, 2));
        ASSERT(!tconf_has_learner(&st.conf, 2));
    }
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* One change at a time: a second proposal while one is pending is refused. */
TEST(test_6_one_pending_conf_change_at_a_time) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    tnet_tick_all(net, 1);
    ASSERT_EQ(propose_cc(net, 1, RAFT_CC_ADD_LEARNER, 4), 0);
    ASSERT_EQ(propose_cc(net, 1, RAFT_CC_ADD_LEARNER, 5), RAFT_ECONFPENDING);
    /* Still refused after it reached the log but before it was applied. */
    tnode_ready(net, 1);
    ASSERT_EQ(propose_cc(net, 1, RAFT_CC_ADD_LEARNER, 5), RAFT_ECONFPENDING);
    /* Ordinary proposals are unaffected. */
    ASSERT_EQ(tpropose(net, 1, "plain"), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 2);
    ASSERT(tis_learner(net, 1, 4));
    ASSERT(!tis_learner(net, 1, 5));
    /* Once applied, the next change is accepted. */
    ASSERT_EQ(propose_cc(net, 1, RAFT_CC_ADD_LEARNER, 5), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 2);
    ASSERT(tis_learner(net, 1, 5));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/*
 * §6 (thesis 4.2.2): a leader that removes itself keeps leading until the
 * change is applied, then steps down; the others elect a leader among
 * themselves and the removed node stays out.
 */
TEST(test_6_removed_leader_steps_down_after_apply) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    tnet_tick_all(net, 1);
    ASSERT_EQ(propose_cc(net, 1, RAFT_CC_REMOVE, 1), 0);
    tnode_ready(net, 1);
    ASSERT_EQ(tst(net, 1).role, RAFT_LEADER);
    uint64_t cc_index = tst(net, 1).last_index;
    tnet_stabilize(net);
    ASSERT_GE(net->nodes[1].applied, cc_index);
    ASSERT(!tis_voter(net, 1, 1));
    ASSERT_NE(tst(net, 1).role, RAFT_LEADER);
    unsigned t = 0;
    uint64_t l = 0;
    while (t < 30 * net->tmpl.election_tick) {
        tnet_tick_all(net, 1);
        t++;
        l = tnet_leader(net);
        if (l == 2 || l == 3) break;
    }
    ASSERT(l == 2 || l == 3);
    tnet_tick_all(net, 3 * net->tmpl.election_tick);
    ASSERT_NE(tst(net, 1).role, RAFT_LEADER);
    ASSERT(commits(net, tnet_leader(net), "new-era"));
    for (uint64_t id = 2; id <= 3; id++) {
        struct raft_status st = tst(net, id);
        ASSERT_EQ(st.conf.n_voters, 2);
        ASSERT(!tconf_has_voter(&st.conf, 1));
    }
    ASSERT_EQ(tnet_check(net), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/*
 * Thesis 4.2.3: a node removed while cut off never learns of its removal and
 * keeps campaigning with ever higher terms; the remaining members, hearing
 * from their leader, ignore it, so the cluster is not disrupted.
 */
TEST(test_6_removed_node_cannot_disrupt_cluster) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    tnet_tick_all(net, 1);
    tnet_isolate(net, 3);
    ASSERT_EQ(propose_cc(net, 1, RAFT_CC_REMOVE, 3), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 2);
    ASSERT(!tis_voter(net, 1, 3));
    ASSERT(tis_voter(net, 3, 3)); /* node 3 never heard */
    tnet_heal(net);
    for (unsigned t = 0; t < 10 * net->tmpl.election_tick; t++) {
        tnet_tick_all(net, 1);
        ASSERT_EQ(tst(net, 1).role, RAFT_LEADER);
    }
    ASSERT_GE(tst(net, 3).term, 2); /* it did campaign */
    ASSERT_U64_EQ(tst(net, 1).term, 1);
    ASSERT_U64_EQ(tst(net, 2).term, 1);
    ASSERT(commits(net, 1, "undisturbed"));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Stale messages from a removed node reach the leader harmlessly. */
TEST(test_6_messages_from_removed_node_are_ignored) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    ASSERT_EQ(propose_cc(net, 1, RAFT_CC_REMOVE, 3), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 2);
    ASSERT(!tis_voter(net, 1, 3));
    struct raft_status before = tst(net, 1);
    struct raft_msg m = tack(3, 1, before.term, before.last_index);
    tnet_step(net, &m);
    m = tmsg(RAFT_MSG_HEARTBEAT_RESP, 3, 1, before.term);
    tnet_step(net, &m);
    m = tmsg(RAFT_MSG_APP_RESP, 3, 1, before.term);
    m.reject = true;
    m.index = before.last_index;
    tnet_step(net, &m);
    m = tmsg(RAFT_MSG_PROP, 3, 1, 0);
    struct raft_entry e = {.type = RAFT_ENTRY_NORMAL};
    e.data.base = "from-removed";
    e.data.len = strlen("from-removed");
    m.n_entries = 1;
    m.entries = &e;
    tnet_step(net, &m);
    tnet_stabilize(net);
    struct raft_status after = tst(net, 1);
    ASSERT_EQ(after.role, RAFT_LEADER);
    ASSERT_U64_EQ(after.term, before.term);
    ASSERT_EQ(after.conf.n_voters, 2);
    ASSERT(commits(net, 1, "fine"));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* raft_apply_conf_change computes the new configuration and raft_status reports it. */
TEST(test_6_apply_conf_change_updates_configuration) {
    struct tnet *net = tnet_solo(NULL, 1, 3, NULL, NULL, 0);
    struct raft_conf_state cs;
    ASSERT_EQ(apply_cc(net, 1, RAFT_CC_ADD_VOTER, 4, &cs), 0);
    ASSERT_EQ(cs.n_voters, 4);
    ASSERT(tconf_has_voter(&cs, 4));
    ASSERT_EQ(apply_cc(net, 1, RAFT_CC_REMOVE, 2, &cs), 0);
    ASSERT_EQ(cs.n_voters, 3);
    ASSERT(!tconf_has_voter(&cs, 2));
    ASSERT_EQ(apply_cc(net, 1, RAFT_CC_ADD_LEARNER, 5, &cs), 0);
    ASSERT_EQ(cs.n_learners, 1);
    ASSERT(tconf_has_learner(&cs, 5));
    ASSERT_EQ(apply_cc(net, 1, RAFT_CC_ADD_VOTER, 5, &cs), 0);
    ASSERT(tconf_has_voter(&cs, 5));
    ASSERT(!tconf_has_learner(&cs, 5));
    ASSERT_EQ(cs.n_learners, 0);
    /* Adding an existing voter again changes nothing. */
    ASSERT_EQ(apply_cc(net, 1, RAFT_CC_ADD_VOTER, 3, &cs), 0);
    ASSERT_EQ(cs.n_voters, 4);
    struct raft_status st = tst(net, 1);
    ASSERT_EQ(st.conf.n_voters, 4);
    ASSERT(tconf_has_voter(&st.conf, 1));
    ASSERT(tconf_has_voter(&st.conf, 3));
    ASSERT(tconf_has_voter(&st.conf, 4));
    ASSERT(tconf_has_voter(&st.conf, 5));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* A configuration holds at most RAFT_MEMBERS_MAX members; one more is refused, not overflowed. */
TEST(test_6_members_max_is_enforced) {
    struct tnet *net = tnet_solo(NULL, 1, RAFT_MEMBERS_MAX, NULL, NULL, 0);
    struct raft_conf_state cs;
    memset(&cs, 0, sizeof cs);
    int rc = apply_cc(net, 1, RAFT_CC_ADD_VOTER, RAFT_MEMBERS_MAX + 1, &cs);
    ASSERT_NE(rc, 0);
    rc = apply_cc(net, 1, RAFT_CC_ADD_LEARNER, RAFT_MEMBERS_MAX + 1, &cs);
    ASSERT_NE(rc, 0);
    struct raft_status st = tst(net, 1);
    ASSERT_EQ(st.conf.n_voters, RAFT_MEMBERS_MAX);
    ASSERT_EQ(st.conf.n_learners, 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* A conf change proposed on a follower is forwarded to the leader like any proposal. */
TEST(test_6_conf_change_forwarded_from_follower) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    tnet_tick_all(net, 1);
    ASSERT_EQ(propose_cc(net, 2, RAFT_CC_ADD_LEARNER, 4), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 2);
    for (uint64_t id = 1; id <= 3; id++) ASSERT(tis_learner(net, id, 4));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* The context of a conf change travels with it to every node (e.g. the member's URLs). */
TEST(test_6_conf_change_context_reaches_every_node) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    tnet_tick_all(net, 1);
    struct raft_conf_change cc;
    memset(&cc, 0, sizeof cc);
    cc.type = RAFT_CC_ADD_LEARNER;
    cc.node_id = 6;
    cc.context.base = "http://127.0.0.6:2380";
    cc.context.len = strlen("http://127.0.0.6:2380");
    ASSERT_EQ(raft_propose_conf_change(tr(net, 1), &cc), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 2);
    /* Find the committed entry in node 3's storage and decode it. */
    struct raft_storage *s = net->nodes[3].cfg.storage;
    uint64_t last = tlast(net, 3);
    struct raft_entry *ents = NULL;
    size_t n = 0;
    ASSERT_EQ(s->entries(s->data, 1, last + 1, UINT64_MAX, &ents, &n), 0);
    bool found = false;
    for (size_t i = 0; i < n; i++) {
        if (ents[i].type != RAFT_ENTRY_CONF_CHANGE) continue;
        struct raft_conf_change got;
        if (raft_conf_change_decode(ents[i].data.base, ents[i].data.len, &got) == 0 &&
            got.node_id == 6 && got.type == RAFT_CC_ADD_LEARNER &&
            got.context.len == cc.context.len &&
            memcmp(got.context.base, cc.context.base, cc.context.len) == 0)
            found = true;
    }
    for (size_t i = 0; i < n; i++) free((void *)ents[i].data.base);
    free(ents);
    ASSERT(found);
    ASSERT(tis_learner(net, 3, 6));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
