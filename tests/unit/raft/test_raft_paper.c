/*
 * test_raft_paper.c - one test per rule of the Raft paper, sections 5.1-5.5
 * (Ongaro & Ousterhout, "In Search of an Understandable Consensus
 * Algorithm", extended version), in the spirit of etcd raft's
 * raft_paper_test.go.
 *
 * Most tests drive a single node by hand: only that node exists, the test
 * builds the messages its peers would send and looks at what it sends back
 * (raft_test_net.h keeps them in a queue). The others run small clusters on
 * the in-memory network, which also checks election safety, log matching and
 * state machine safety as it goes. Each test is named after its rule.
 */
#include "tests/unit/raft/raft_test_net.h"

/* A node alone in a cluster of n_voters (the others are answered by hand). */
static struct tnet *solo(uint64_t id, uint32_t n_voters, const struct raft_hard_state *hs,
                         const uint64_t *terms, size_t n) {
    return tnet_solo(NULL, id, n_voters, hs, terms, n);
}

/* §5.1: a server that sees a higher term adopts it and becomes a follower, whatever its role. */
TEST(test_5_1_higher_term_makes_follower) {
    for (int role = RAFT_FOLLOWER; role <= RAFT_LEADER; role++) {
        if (role == RAFT_PRE_CANDIDATE) continue;
        struct tnet *net = solo(1, 3, NULL, NULL, 0);
        if (role == RAFT_CANDIDATE) {
            ASSERT_EQ(raft_campaign(tr(net, 1)), 0);
            tnode_ready(net, 1);
        } else if (role == RAFT_LEADER) {
            ASSERT(tnet_win(net, 1));
        }
        ASSERT_EQ(tst(net, 1).role, role);
        tnet_clear(net);

        struct raft_msg m = tmsg(RAFT_MSG_APP, 2, 1, 5);
        m.commit = 0;
        tnet_step(net, &m);
        struct raft_status st = tst(net, 1);
        ASSERT_EQ(st.role, RAFT_FOLLOWER);
        ASSERT_U64_EQ(st.term, 5);
        ASSERT_U64_EQ(st.leader, 2);
        ASSERT_U64_EQ(st.vote, RAFT_NONE);
        ASSERT_U64_EQ(tsaved_hs(net, 1).term, 5);

        /* A higher-term vote request also moves the term, but names no leader. */
        m = tmsg(RAFT_MSG_VOTE, 3, 1, 7);
        m.index = 0;
        m.log_term = 0;
        tnet_step(net, &m);
        st = tst(net, 1);
        ASSERT_EQ(st.role, RAFT_FOLLOWER);
        ASSERT_U64_EQ(st.term, 7);
        ASSERT_U64_EQ(st.leader, RAFT_NONE);
        ASSERT_NET_OK(net);
        tnet_free(net);
    }
}

/* §5.1: a request with a stale term is rejected: no log change, no vote, no new leader. */
TEST(test_5_1_stale_term_request_rejected) {
    struct raft_hard_state hs = {.term = 5, .vote = 0, .commit = 0};
    struct tnet *net = solo(1, 3, &hs, NULL, 0);

    struct raft_entry e = {.term = 3, .index = 1, .type = RAFT_ENTRY_NORMAL};
    struct raft_msg m = tmsg(RAFT_MSG_APP, 2, 1, 3);
    m.n_entries = 1;
    m.entries = &e;
    m.commit = 1;
    tnet_step(net, &m);
    struct raft_status st = tst(net, 1);
    ASSERT_U64_EQ(st.term, 5);
    ASSERT_U64_EQ(st.leader, RAFT_NONE);
    ASSERT_U64_EQ(st.last_index, 0);
    ASSERT_U64_EQ(st.commit, 0);
    ASSERT_U64_EQ(tlast(net, 1), 0);
    /* If the stale leader hears back at all, it hears of the newer term. */
    const struct raft_msg *r = tnet_find(net, RAFT_MSG_APP_RESP, 1, 2);
    if (r) ASSERT_U64_EQ(r->term, 5);

    m = tmsg(RAFT_MSG_VOTE, 3, 1, 4);
    tnet_step(net, &m);
    st = tst(net, 1);
    ASSERT_U64_EQ(st.term, 5);
    ASSERT_U64_EQ(st.vote, RAFT_NONE);
    r = tnet_find(net, RAFT_MSG_VOTE_RESP, 1, 3);
    if (r) ASSERT(r->reject);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/*
 * §5.1/§5.2 (Figure 2, "persistent state ... updated on stable storage
 * before responding"): a campaign's new term and self-vote are in the
 * update that carries the vote requests, to be synced before they are sent.
 */
TEST(test_5_1_term_and_vote_persisted_before_requests) {
    struct tnet *net = solo(1, 3, NULL, NULL, 0);
    ASSERT_EQ(raft_campaign(tr(net, 1)), 0);
    ASSERT(raft_has_update(tr(net, 1)));
    struct raft_update u;
    ASSERT_EQ(raft_get_update(tr(net, 1), &u), 0);
    ASSERT(u.has_hard_state);
    ASSERT_U64_EQ(u.hard_state.term, 1);
    ASSERT_U64_EQ(u.hard_state.vote, 1);
    ASSERT(u.must_sync);
    ASSERT_EQ(u.role, RAFT_CANDIDATE);
    size_t votes = 0;
    for (size_t i = 0; i < u.n_msgs; i++) {
        if (u.msgs[i].type != RAFT_MSG_VOTE) continue;
        votes++;
        ASSERT_U64_EQ(u.msgs[i].term, 1);
        ASSERT(u.msgs[i].to == 2 || u.msgs[i].to == 3);
    }
    ASSERT_EQ(votes, 2);
    tnode_finish_update(net, 1, &u);
    ASSERT_U64_EQ(tsaved_hs(net, 1).vote, 1);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.2: a follower that hears nothing for an election timeout becomes a candidate. */
TEST(test_5_2_follower_campaigns_after_election_timeout) {
    struct tnet *net = solo(1, 3, NULL, NULL, 0);
    unsigned et = net->tmpl.election_tick, t = 0;
    while (tst(net, 1).role == RAFT_FOLLOWER && t < 4 * et) {
        tnet_tick(net, 1, 1);
        tnode_ready(net, 1);
        t++;
    }
    ASSERT_GE(t, et);
    ASSERT_LT(t, 2 * et);
    struct raft_status st = tst(net, 1);
    ASSERT_EQ(st.role, RAFT_CANDIDATE);
    ASSERT_U64_EQ(st.term, 1);
    ASSERT_U64_EQ(st.vote, 1);
    const struct raft_msg *v2 = tnet_find(net, RAFT_MSG_VOTE, 1, 2);
    const struct raft_msg *v3 = tnet_find(net, RAFT_MSG_VOTE, 1, 3);
    ASSERT(v2 != NULL);
    ASSERT(v3 != NULL);
    ASSERT_U64_EQ(v2->term, 1);
    ASSERT_U64_EQ(v3->term, 1);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.2: election timeouts are chosen randomly from a fixed interval, to split votes rarely. */
TEST(test_5_2_election_timeout_is_randomized) {
    bool seen[64] = {false};
    unsigned distinct = 0;
    for (uint64_t seed = 1; seed <= 24; seed++) {
        struct raft_config c;
        tnet_config_defaults(&c);
        c.seed = seed * 1000003u + harness_seed;
        struct tnet *net = tnet_new(&c);
        struct raft_conf_state cs = tconf(3, 0);
        tnet_add(net, 1, &cs, NULL, NULL, 0);
        unsigned t = 0;
        while (tst(net, 1).role == RAFT_FOLLOWER && t < 40) {
            raft_tick(tr(net, 1));
            t++;
        }
        ASSERT_GE(t, c.election_tick);
        ASSERT_LT(t, 2 * c.election_tick);
        if (!seen[t]) distinct++;
        seen[t] = true;
        tnet_free(net);
    }
    ASSERT_GE(distinct, 3);
}

/* §5.2: a candidate wins with votes from a majority, loses or waits otherwise. */
TEST(test_5_2_candidate_wins_with_majority_of_votes) {
    struct {
        uint32_t size;
        int votes[5]; /* for ids 2..: 1 grant, -1 reject, 0 no answer */
        int want;     /* RAFT_LEADER, RAFT_CANDIDATE, or -1: not leader (follower or candidate) */
    } cases[] = {
        {1, {0}, RAFT_LEADER},
        {3, {1, 1}, RAFT_LEADER},
        {3, {1, 0}, RAFT_LEADER},
        {5, {1, 1, 1, 1}, RAFT_LEADER},
        {5, {1, 1, 1, 0}, RAFT_LEADER},
        {5, {1, 1, 0, 0}, RAFT_LEADER},
        {3, {-1, -1}, -1},
        {5, {-1, -1, -1, -1}, -1},
        {5, {1, -1, -1, -1}, -1},
        {3, {0, 0}, RAFT_CANDIDATE},
        {5, {1, 0, 0, 0}, RAFT_CANDIDATE},
        {5, {-1, -1, 0, 0}, RAFT_CANDIDATE},
        {5, {0, 0, 0, 0}, RAFT_CANDIDATE},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct tnet *net = solo(1, cases[c].size, NULL, NULL, 0);
        ASSERT_EQ(raft_campaign(tr(net, 1)), 0);
        tnode_ready(net, 1);
        for (uint32_t k = 0; k + 1 < cases[c].size; k++) {
            if (cases[c].votes[k] == 0) continue;
            struct raft_msg m = tmsg(RAFT_MSG_VOTE_RESP, k + 2, 1, 1);
            m.reject = cases[c].votes[k] < 0;
            tnet_step(net, &m);
        }
        struct raft_status st = tst(net, 1);
        if (cases[c].want == -1) {
            if (st.role == RAFT_LEADER) fprintf(stderr, "  case %zu\n", c);
            ASSERT_NE(st.role, RAFT_LEADER);
        } else {
            if (st.role != cases[c].want) fprintf(stderr, "  case %zu\n", c);
            ASSERT_EQ(st.role, cases[c].want);
        }
        ASSERT_U64_EQ(st.term, 1);
        ASSERT_NET_OK(net);
        tnet_free(net);
    }
}

/* §5.2: each server votes for at most one candidate in a term, first come first served. */
TEST(test_5_2_vote_once_per_term) {
    struct {
        uint64_t prior_vote; /* vote already cast in term 1 */
        uint64_t candidate;
        bool want_reject;
    } cases[] = {
        {RAFT_NONE, 2, false}, {RAFT_NONE, 3, false}, {2, 2, false},
        {3, 3, false},         {2, 3, true},          {3, 2, true},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct raft_hard_state hs = {.term = 1, .vote = cases[c].prior_vote, .commit = 0};
        struct tnet *net = solo(1, 3, &hs, NULL, 0);
        struct raft_msg m = tmsg(RAFT_MSG_VOTE, cases[c].candidate, 1, 1);
        tnet_step(net, &m);
        const struct raft_msg *r = tnet_find(net, RAFT_MSG_VOTE_RESP, 1, cases[c].candidate);
        ASSERT(r != NULL);
        if (r->reject != cases[c].want_reject) fprintf(stderr, "  case %zu\n", c);
        ASSERT_EQ(r->reject, cases[c].want_reject);
        ASSERT_U64_EQ(r->term, 1);
        uint64_t want_vote = cases[c].prior_vote ? cases[c].prior_vote : cases[c].candidate;
        ASSERT_U64_EQ(tst(net, 1).vote, want_vote);
        /* The granted vote was persisted before the grant could be sent. */
        ASSERT_U64_EQ(tsaved_hs(net, 1).vote, want_vote);
        ASSERT_NET_OK(net);
        tnet_free(net);
    }
}

/* §5.2: a candidate voted for itself, so it refuses any other candidate of its term. */
TEST(test_5_2_candidate_refuses_other_candidates_of_its_term) {
    struct tnet *net = solo(1, 3, NULL, NULL, 0);
    ASSERT_EQ(raft_campaign(tr(net, 1)), 0);
    tnode_ready(net, 1);
    tnet_clear(net);
    struct raft_msg v = tmsg(RAFT_MSG_VOTE, 2, 1, 1);
    tnet_step(net, &v);
    const struct raft_msg *r = tnet_find(net, RAFT_MSG_VOTE_RESP, 1, 2);
    ASSERT(r != NULL);
    ASSERT(r->reject);
    ASSERT_EQ(tst(net, 1).role, RAFT_CANDIDATE);
    ASSERT_U64_EQ(tst(net, 1).vote, 1);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.1: votes granted in an earlier term are stale and do not count in a later election. */
TEST(test_5_1_stale_vote_responses_not_counted) {
    struct tnet *net = solo(1, 3, NULL, NULL, 0);
    ASSERT_EQ(raft_campaign(tr(net, 1)), 0);
    tnode_ready(net, 1);
    tnet_tick(net, 1, 2 * net->tmpl.election_tick);
    tnode_ready(net, 1);
    uint64_t term = tst(net, 1).term;
    ASSERT_GE(term, 2);
    for (uint64_t from = 2; from <= 3; from++) {
        struct raft_msg g = tmsg(RAFT_MSG_VOTE_RESP, from, 1, term - 1);
        tnet_step(net, &g);
    }
    ASSERT_EQ(tst(net, 1).role, RAFT_CANDIDATE);
    ASSERT_U64_EQ(tst(net, 1).term, term);
    struct raft_msg g = tmsg(RAFT_MSG_VOTE_RESP, 2, 1, term);
    tnet_step(net, &g);
    ASSERT_EQ(tst(net, 1).role, RAFT_LEADER);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/*
 * Figure 2 ("respond to RPCs only after updating stable storage"): a vote
 * grant and an append acknowledgement leave in the same update as the vote
 * and the entries they depend on, marked must_sync, so that the driver
 * persists them first.
 */
TEST(test_5_2_responses_travel_with_the_state_to_persist) {
    struct tnet *net = solo(1, 3, NULL, NULL, 0);
    struct raft_msg v = tmsg(RAFT_MSG_VOTE, 2, 1, 1);
    ASSERT_EQ(raft_step(tr(net, 1), &v), 0);
    struct raft_update u;
    ASSERT_EQ(raft_get_update(tr(net, 1), &u), 0);
    ASSERT(u.has_hard_state);
    ASSERT_U64_EQ(u.hard_state.vote, 2);
    ASSERT(u.must_sync);
    bool grant = false;
    for (size_t i = 0; i < u.n_msgs; i++)
        if (u.msgs[i].type == RAFT_MSG_VOTE_RESP && !u.msgs[i].reject) grant = true;
    ASSERT(grant);
    tnode_finish_update(net, 1, &u);
    tnet_clear(net);

    struct raft_entry e = {.index = 1, .term = 1};
    struct raft_msg a = tmsg(RAFT_MSG_APP, 2, 1, 1);
    a.n_entries = 1;
    a.entries = &e;
    ASSERT_EQ(raft_step(tr(net, 1), &a), 0);
    ASSERT_EQ(raft_get_update(tr(net, 1), &u), 0);
    ASSERT_EQ(u.n_entries, 1);
    ASSERT(u.must_sync);
    bool ack = false;
    for (size_t i = 0; i < u.n_msgs; i++)
        if (u.msgs[i].type == RAFT_MSG_APP_RESP && !u.msgs[i].reject && u.msgs[i].index == 1)
            ack = true;
    ASSERT(ack);
    tnode_finish_update(net, 1, &u);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.2: a candidate that hears from a leader of its own term returns to follower. */
TEST(test_5_2_candidate_steps_down_for_leader_of_same_term) {
    for (int kind = 0; kind < 2; kind++) {
        struct tnet *net = solo(1, 3, NULL, NULL, 0);
        ASSERT_EQ(raft_campaign(tr(net, 1)), 0);
        tnode_ready(net, 1);
        ASSERT_EQ(tst(net, 1).role, RAFT_CANDIDATE);
        struct raft_msg m = tmsg(kind == 0 ? RAFT_MSG_APP : RAFT_MSG_HEARTBEAT, 2, 1, 1);
        tnet_step(net, &m);
        struct raft_status st = tst(net, 1);
        ASSERT_EQ(st.role, RAFT_FOLLOWER);
        ASSERT_U64_EQ(st.term, 1);
        ASSERT_U64_EQ(st.leader, 2);
        ASSERT_NET_OK(net);
        tnet_free(net);
    }
}

/* §5.2: a candidate that neither wins nor loses starts a new election after a timeout. */
TEST(test_5_2_candidate_restarts_election_on_timeout) {
    struct tnet *net = solo(1, 3, NULL, NULL, 0);
    ASSERT_EQ(raft_campaign(tr(net, 1)), 0);
    tnode_ready(net, 1);
    ASSERT_U64_EQ(tst(net, 1).term, 1);
    tnet_clear(net);
    tnet_tick(net, 1, 2 * net->tmpl.election_tick);
    tnode_ready(net, 1);
    struct raft_status st = tst(net, 1);
    ASSERT_EQ(st.role, RAFT_CANDIDATE);
    ASSERT_GE(st.term, 2);
    const struct raft_msg *v = tnet_find_last(net, RAFT_MSG_VOTE, 1, 2);
    ASSERT(v != NULL);
    ASSERT_U64_EQ(v->term, st.term);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.2: the leader sends heartbeats to every follower each heartbeat interval. */
TEST(test_5_2_leader_sends_heartbeats) {
    struct raft_config c;
    tnet_config_defaults(&c);
    c.heartbeat_tick = 3;
    struct tnet *net = tnet_new(&c);
    struct raft_conf_state cs = tconf(3, 0);
    tnet_add(net, 1, &cs, NULL, NULL, 0);
    ASSERT(tnet_win(net, 1));
    tnet_clear(net);
    tnet_tick(net, 1, 2);
    tnode_ready(net, 1);
    ASSERT_EQ(tnet_count(net, RAFT_MSG_HEARTBEAT, 1, 0), 0);
    tnet_tick(net, 1, 1);
    tnode_ready(net, 1);
    const struct raft_msg *h2 = tnet_find(net, RAFT_MSG_HEARTBEAT, 1, 2);
    const struct raft_msg *h3 = tnet_find(net, RAFT_MSG_HEARTBEAT, 1, 3);
    ASSERT(h2 != NULL);
    ASSERT(h3 != NULL);
    ASSERT_U64_EQ(h2->term, 1);
    ASSERT_EQ(h2->n_entries, 0);
    /* A heartbeat never claims a commit index the follower may not hold. */
    ASSERT_U64_EQ(h2->commit, 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.2: a follower stays a follower as long as it hears from a leader. */
TEST(test_5_2_heartbeats_suppress_elections) {
    struct tnet *net = solo(2, 3, NULL, NULL, 0);
    unsigned et = net->tmpl.election_tick;
    for (unsigned t = 0; t < 10 * et; t++) {
        tnet_tick(net, 2, 1);
        if (t % (et / 2) == 0) {
            struct raft_msg hb = tmsg(RAFT_MSG_HEARTBEAT, 1, 2, 1);
            tnet_step(net, &hb);
        }
        tnode_ready(net, 2);
        ASSERT_EQ(tst(net, 2).role, RAFT_FOLLOWER);
    }
    ASSERT_U64_EQ(tst(net, 2).leader, 1);
    ASSERT(tnet_find(net, RAFT_MSG_HEARTBEAT_RESP, 2, 1) != NULL);
    /* Once the leader falls silent, the follower campaigns within one timeout. */
    for (unsigned t = 0; t < 2 * et && tst(net, 2).role == RAFT_FOLLOWER; t++) tnet_tick(net, 2, 1);
    tnode_ready(net, 2);
    ASSERT_EQ(tst(net, 2).role, RAFT_CANDIDATE);
    ASSERT_U64_EQ(tst(net, 2).term, 2);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.2: in a cluster, one campaign yields one leader that every node follows. */
TEST(test_5_2_leader_election_in_cluster) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    for (uint64_t id = 1; id <= 3; id++) {
        struct raft_status st = tst(net, id);
        ASSERT_U64_EQ(st.term, 1);
        ASSERT_U64_EQ(st.leader, 1);
        ASSERT_EQ(st.role, id == 1 ? RAFT_LEADER : RAFT_FOLLOWER);
    }
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.2: randomized timeouts let a cluster of ticking nodes elect one leader on its own. */
TEST(test_5_2_ticking_cluster_elects_one_leader) {
    struct tnet *net = tnet_cluster(5, 0, NULL);
    unsigned t = 0;
    while (tnet_leader(net) == 0 && t < 50 * net->tmpl.election_tick) {
        tnet_tick_all(net, 1);
        t++;
    }
    uint64_t l = tnet_leader(net);
    ASSERT_NE(l, 0);
    struct raft_status ls = tst(net, l);
    for (uint64_t id = 1; id <= 5; id++) {
        if (id == l) continue;
        ASSERT_NE(tst(net, id).role, RAFT_LEADER);
    }
    tnet_tick_all(net, net->tmpl.election_tick);
    ASSERT_U64_EQ(tnet_leader(net), l);
    ASSERT_U64_EQ(tst(net, l).term, ls.term);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.4 (and §8): a new leader appends a no-op entry of its own term. */
TEST(test_5_4_leader_appends_noop_on_election) {
    const uint64_t terms[] = {1, 1};
    struct raft_hard_state hs = {.term = 1, .vote = 0, .commit = 0};
    struct tnet *net = solo(1, 3, &hs, terms, 2);
    ASSERT(tnet_win(net, 1));
    struct raft_status st = tst(net, 1);
    ASSERT_U64_EQ(st.term, 2);
    ASSERT_U64_EQ(st.last_index, 3);
    ASSERT_U64_EQ(tterm(net, 1, 3), 2);
    struct raft_storage *s = net->nodes[1].cfg.storage;
    struct raft_entry *out = NULL;
    size_t n = 0;
    ASSERT_EQ(s->entries(s->data, 3, 4, UINT64_MAX, &out, &n), 0);
    ASSERT_EQ(n, 1);
    uint64_t term = out[0].term, len = out[0].data.len;
    uint8_t type = out[0].type;
    free((void *)out[0].data.base);
    free(out);
    ASSERT_U64_EQ(term, 2);
    ASSERT_EQ(type, RAFT_ENTRY_NORMAL);
    ASSERT_U64_EQ(len, 0);
    /* It goes out to the followers. */
    ASSERT(tnet_find(net, RAFT_MSG_APP, 1, 2) != NULL);
    ASSERT(tnet_find(net, RAFT_MSG_APP, 1, 3) != NULL);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.3: the leader appends a proposal to its log and sends it to the followers. */
TEST(test_5_3_leader_appends_and_replicates_proposal) {
    struct tnet *net = solo(1, 3, NULL, NULL, 0);
    ASSERT(tnet_win(net, 1));
    tnet_clear(net);
    struct raft_msg a2 = tack(2, 1, 1, 1), a3 = tack(3, 1, 1, 1);
    tnet_step(net, &a2);
    tnet_step(net, &a3);
    ASSERT_U64_EQ(tst(net, 1).commit, 1);
    tnet_clear(net);

    ASSERT_EQ(tpropose(net, 1, "foo"), 0);
    struct raft_update u;
    ASSERT(raft_has_update(tr(net, 1)));
    ASSERT_EQ(raft_get_update(tr(net, 1), &u), 0);
    ASSERT_EQ(u.n_entries, 1);
    ASSERT_U64_EQ(u.entries[0].index, 2);
    ASSERT_U64_EQ(u.entries[0].term, 1);
    ASSERT_EQ(u.entries[0].data.len, 3);
    ASSERT_MEM_EQ(u.entries[0].data.base, "foo", 3);
    tnode_finish_update(net, 1, &u);
    tnode_ready(net, 1);
    for (uint64_t to = 2; to <= 3; to++) {
        const struct raft_msg *m = tnet_find(net, RAFT_MSG_APP, 1, to);
        ASSERT(m != NULL);
        ASSERT_U64_EQ(m->term, 1);
        ASSERT_U64_EQ(m->index, 1);
        ASSERT_U64_EQ(m->log_term, 1);
        ASSERT_U64_EQ(m->commit, 1);
        ASSERT_EQ(m->n_entries, 1);
        ASSERT_U64_EQ(m->entries[0].index, 2);
        ASSERT_MEM_EQ(m->entries[0].data.base, "foo", 3);
    }
    /* Not committed until a majority holds it. */
    ASSERT_U64_EQ(tst(net, 1).commit, 1);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.3: an entry is committed once the leader has replicated it on a majority. */
TEST(test_5_3_leader_commits_once_majority_replicated) {
    struct tnet *net = solo(1, 5, NULL, NULL, 0);
    ASSERT(tnet_win(net, 1));
    struct raft_msg a = tack(2, 1, 1, 1);
    tnet_step(net, &a);
    ASSERT_U64_EQ(tst(net, 1).commit, 0);
    a = tack(3, 1, 1, 1);
    tnet_step(net, &a);
    ASSERT_U64_EQ(tst(net, 1).commit, 1);
    ASSERT_U64_EQ(net->nodes[1].applied, 1);
    ASSERT_U64_EQ(tsaved_hs(net, 1).commit, 1);

    ASSERT_EQ(tpropose(net, 1, "a"), 0);
    ASSERT_EQ(tpropose(net, 1, "b"), 0);
    tnode_ready(net, 1);
    ASSERT_U64_EQ(tst(net, 1).last_index, 3);
    a = tack(2, 1, 1, 3);
    tnet_step(net, &a);
    ASSERT_U64_EQ(tst(net, 1).commit, 1); /* 2 and 3 are on nodes 1 and 2 only */
    a = tack(4, 1, 1, 2);
    tnet_step(net, &a);
    ASSERT_U64_EQ(tst(net, 1).commit, 2); /* 2 is on 1, 2, 4 */
    ASSERT_U64_EQ(net->nodes[1].applied, 2);
    a = tack(5, 1, 1, 3);
    tnet_step(net, &a);
    ASSERT_U64_EQ(tst(net, 1).commit, 3); /* 3 is on 1, 2, 5 */
    ASSERT_U64_EQ(net->nodes[1].applied, 3);
    ASSERT(tapplied_has(net, 1, "a"));
    ASSERT(tapplied_has(net, 1, "b"));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/*
 * §5.3 with thesis 10.2.1: the leader's own copy of an entry counts towards
 * the majority only once persisted, i.e. after raft_advance() of the update
 * that carried it.
 */
TEST(test_5_3_leader_counts_itself_only_after_persisting) {
    struct tnet *net = solo(1, 3, NULL, NULL, 0);
    ASSERT(tnet_win(net, 1));
    struct raft_msg a = tack(2, 1, 1, 1);
    tnet_step(net, &a);
    ASSERT_U64_EQ(tst(net, 1).commit, 1);
    tnet_clear(net);
    ASSERT_EQ(tpropose(net, 1, "x"), 0);
    struct raft_update u;
    ASSERT_EQ(raft_get_update(tr(net, 1), &u), 0);
    ASSERT_EQ(u.n_entries, 1);
    ASSERT_U64_EQ(u.entries[0].index, 2);
    /* Follower 2 has it, the leader has not persisted it: 1 of 3. */
    a = tack(2, 1, 1, 2);
    ASSERT_EQ(raft_step(tr(net, 1), &a), 0);
    ASSERT_U64_EQ(tst(net, 1).commit, 1);
    tnode_finish_update(net, 1, &u);
    tnode_ready(net, 1);
    ASSERT_U64_EQ(tst(net, 1).commit, 2);
    ASSERT(tapplied_has(net, 1, "x"));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.3: a single voter commits its entry in the update after the one that persists it. */
TEST(test_5_3_single_node_commits_after_persisting) {
    struct tnet *net = tnet_cluster(1, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    ASSERT_U64_EQ(tst(net, 1).commit, 1);
    ASSERT_EQ(tpropose(net, 1, "solo"), 0);
    struct raft_update u;
    ASSERT_EQ(raft_get_update(tr(net, 1), &u), 0);
    ASSERT_EQ(u.n_entries, 1);
    ASSERT_EQ(u.n_committed, 0);
    ASSERT_U64_EQ(tst(net, 1).commit, 1);
    tnode_finish_update(net, 1, &u);
    ASSERT(raft_has_update(tr(net, 1)));
    ASSERT_EQ(raft_get_update(tr(net, 1), &u), 0);
    ASSERT_EQ(u.n_committed, 1);
    ASSERT_U64_EQ(u.committed[0].index, 2);
    ASSERT(u.has_hard_state);
    ASSERT_U64_EQ(u.hard_state.commit, 2);
    tnode_finish_update(net, 1, &u);
    ASSERT(tapplied_has(net, 1, "solo"));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.3: followers learn the commit index from the leader and apply in log order. */
TEST(test_5_3_followers_apply_committed_entries_in_order) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    char buf[32];
    for (int i = 0; i < 20; i++) {
        snprintf(buf, sizeof buf, "cmd-%d", i);
        ASSERT_EQ(tpropose(net, 1, buf), 0);
        if (i % 3 == 0) tnet_stabilize(net);
    }
    tnet_stabilize(net);
    tnet_tick_all(net, net->tmpl.heartbeat_tick);
    for (uint64_t id = 1; id <= 3; id++) {
        ASSERT_U64_EQ(tst(net, id).commit, 21);
        ASSERT_U64_EQ(net->nodes[id].applied, 21);
        ASSERT_U64_EQ(net->nodes[id].n_applied_entries, 21);
        for (int i = 0; i < 20; i++) {
            snprintf(buf, sizeof buf, "cmd-%d", i);
            const struct tapplied *a = &net->nodes[id].log[i + 2];
            ASSERT(a->present);
            ASSERT_U64_EQ(a->hash, tfnv(buf, strlen(buf)));
        }
    }
    ASSERT_EQ(tnet_check(net), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.3: a follower appends entries whose preceding entry matches (AppendEntries rules 3-4). */
TEST(test_5_3_follower_appends_after_matching_prev) {
    struct {
        uint64_t index, log_term; /* the preceding entry named by the leader */
        uint64_t ents[2];         /* terms of entries index+1.. (0 ends) */
        uint64_t want[3];         /* the log afterwards (0 ends) */
        uint64_t want_ack;
    } cases[] = {
        {2, 2, {3, 0}, {1, 2, 3}, 3},
        {1, 1, {3, 4}, {1, 3, 4}, 3},
        {0, 0, {1, 0}, {1, 2, 0}, 1},
        {0, 0, {3, 0}, {3, 0, 0}, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const uint64_t terms[] = {1, 2};
        struct raft_hard_state hs = {.term = 4, .vote = 0, .commit = 0};
        struct tnet *net = solo(1, 3, &hs, terms, 2);
        struct raft_entry e[2];
        memset(e, 0, sizeof e);
        uint32_t n = 0;
        for (; n < 2 && cases[c].ents[n]; n++) {
            e[n].index = cases[c].index + 1 + n;
            e[n].term = cases[c].ents[n];
        }
        struct raft_msg m = tmsg(RAFT_MSG_APP, 2, 1, 4);
        m.index = cases[c].index;
        m.log_term = cases[c].log_term;
        m.n_entries = n;
        m.entries = e;
        tnet_step(net, &m);
        size_t want_len = 0;
        while (want_len < 3 && cases[c].want[want_len]) want_len++;
        if (tlast(net, 1) != want_len) fprintf(stderr, "  case %zu\n", c);
        ASSERT_U64_EQ(tlast(net, 1), want_len);
        for (size_t i = 0; i < want_len; i++) ASSERT_U64_EQ(tterm(net, 1, i + 1), cases[c].want[i]);
        const struct raft_msg *r = tnet_find(net, RAFT_MSG_APP_RESP, 1, 2);
        ASSERT(r != NULL);
        ASSERT(!r->reject);
        ASSERT_U64_EQ(r->term, 4);
        ASSERT_U64_EQ(r->index, cases[c].want_ack);
        ASSERT_NET_OK(net);
        tnet_free(net);
    }
}

/* §5.3: a follower rejects entries whose preceding index/term it does not hold (rule 2). */
TEST(test_5_3_follower_rejects_mismatched_prev) {
    struct {
        uint64_t index, log_term;
    } cases[] = {{2, 3}, {3, 2}, {5, 1}, {1, 2}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const uint64_t terms[] = {1, 2};
        struct raft_hard_state hs = {.term = 4, .vote = 0, .commit = 0};
        struct tnet *net = solo(1, 3, &hs, terms, 2);
        struct raft_entry e = {.index = cases[c].index + 1, .term = 4};
        struct raft_msg m = tmsg(RAFT_MSG_APP, 2, 1, 4);
        m.index = cases[c].index;
        m.log_term = cases[c].log_term;
        m.n_entries = 1;
        m.entries = &e;
        m.commit = cases[c].index + 1;
        tnet_step(net, &m);
        const struct raft_msg *r = tnet_find(net, RAFT_MSG_APP_RESP, 1, 2);
        ASSERT(r != NULL);
        if (!r->reject) fprintf(stderr, "  case %zu\n", c);
        ASSERT(r->reject);
        ASSERT_U64_EQ(r->term, 4);
        /* The hint points into the follower's own log. */
        ASSERT_LE(r->reject_hint, 2);
        ASSERT_U64_EQ(tlast(net, 1), 2);
        ASSERT_U64_EQ(tterm(net, 1, 1), 1);
        ASSERT_U64_EQ(tterm(net, 1, 2), 2);
        ASSERT_U64_EQ(tst(net, 1).commit, 0);
        ASSERT_NET_OK(net);
        tnet_free(net);
    }
}

/* §5.3: a conflicting entry and all that follow it are deleted, then the new ones appended. */
TEST(test_5_3_follower_truncates_conflicting_suffix) {
    const uint64_t terms[] = {1, 1, 2, 2};
    struct raft_hard_state hs = {.term = 2, .vote = 0, .commit = 0};
    struct tnet *net = solo(1, 3, &hs, terms, 4);
    struct raft_entry e = {.index = 3, .term = 3};
    struct raft_msg m = tmsg(RAFT_MSG_APP, 2, 1, 3);
    m.index = 2;
    m.log_term = 1;
    m.n_entries = 1;
    m.entries = &e;
    ASSERT_EQ(raft_step(tr(net, 1), &m), 0);
    struct raft_update u;
    ASSERT_EQ(raft_get_update(tr(net, 1), &u), 0);
    ASSERT_EQ(u.n_entries, 1);
    ASSERT_U64_EQ(u.entries[0].index, 3);
    ASSERT_U64_EQ(u.entries[0].term, 3);
    tnode_finish_update(net, 1, &u);
    tnode_ready(net, 1);
    ASSERT_U64_EQ(tlast(net, 1), 3);
    ASSERT_U64_EQ(tst(net, 1).last_index, 3);
    ASSERT_U64_EQ(tterm(net, 1, 3), 3);
    const struct raft_msg *r = tnet_find(net, RAFT_MSG_APP_RESP, 1, 2);
    ASSERT(r != NULL);
    ASSERT(!r->reject);
    ASSERT_U64_EQ(r->index, 3);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.3: entries already present are not deleted by a late, shorter AppendEntries. */
TEST(test_5_3_follower_keeps_entries_on_stale_append) {
    const uint64_t terms[] = {1, 1, 1};
    struct raft_hard_state hs = {.term = 1, .vote = 0, .commit = 0};
    struct tnet *net = solo(1, 3, &hs, terms, 3);
    struct raft_entry e = {.index = 2, .term = 1};
    e.data.base = tnet_payload;
    e.data.len = sizeof tnet_payload - 1;
    struct raft_msg m = tmsg(RAFT_MSG_APP, 2, 1, 1);
    m.index = 1;
    m.log_term = 1;
    m.n_entries = 1;
    m.entries = &e;
    tnet_step(net, &m);
    ASSERT_U64_EQ(tlast(net, 1), 3);
    ASSERT_U64_EQ(tst(net, 1).last_index, 3);
    const struct raft_msg *r = tnet_find(net, RAFT_MSG_APP_RESP, 1, 2);
    ASSERT(r != NULL);
    ASSERT(!r->reject);
    ASSERT_GE(r->index, 2);
    ASSERT_LE(r->index, 3);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.3 (rule 5): commitIndex = min(leaderCommit, index of last new entry). */
TEST(test_5_3_follower_commit_bounded_by_last_new_entry) {
    const uint64_t terms[] = {1, 1, 1};
    struct raft_hard_state hs = {.term = 1, .vote = 0, .commit = 0};
    struct tnet *net = solo(1, 3, &hs, terms, 3);
    struct raft_entry e = {.index = 2, .term = 1};
    e.data.base = tnet_payload;
    e.data.len = sizeof tnet_payload - 1;
    struct raft_msg m = tmsg(RAFT_MSG_APP, 2, 1, 1);
    m.index = 1;
    m.log_term = 1;
    m.n_entries = 1;
    m.entries = &e;
    m.commit = 3;
    tnet_step(net, &m);
    ASSERT_U64_EQ(tst(net, 1).commit, 2);
    ASSERT_U64_EQ(net->nodes[1].applied, 2);
    ASSERT_U64_EQ(tsaved_hs(net, 1).commit, 2);
    /* The leader's commit index is taken when it does not outrun the matched log. */
    m.index = 2;
    m.n_entries = 0;
    m.entries = NULL;
    m.commit = 3;
    tnet_step(net, &m);
    ASSERT_U64_EQ(tst(net, 1).commit, 2);
    m.index = 3;
    tnet_step(net, &m);
    ASSERT_U64_EQ(tst(net, 1).commit, 3);
    ASSERT_U64_EQ(net->nodes[1].applied, 3);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Drops appends to node 2 (heartbeat commit test). */
static bool drop_apps_to_2(struct tnet *net, const struct raft_msg *m) {
    (void)net;
    return m->type == RAFT_MSG_APP && m->to == 2;
}

/*
 * §5.3: a follower only commits entries it holds in the leader's version;
 * heartbeats must not carry a commit index beyond what the leader knows the
 * follower matches, or a follower with a divergent tail would apply it.
 */
TEST(test_5_3_heartbeat_commit_never_exceeds_follower_match) {
    struct tnet *net = tnet_new(NULL);
    struct raft_conf_state cs = tconf(3, 0);
    struct raft_entry e[8];
    const uint64_t good[] = {1, 3, 3, 3}, stale[] = {1, 2, 2, 2, 2, 2};
    struct raft_hard_state hs = {.term = 3, .vote = 0, .commit = 1};
    tlog(e, good, 4);
    tnet_add(net, 1, &cs, &hs, e, 4);
    tnet_add(net, 3, &cs, &hs, e, 4);
    hs.term = 2;
    tlog(e, stale, 6);
    tnet_add(net, 2, &cs, &hs, e, 6);
    net->filter = drop_apps_to_2;
    ASSERT(tnet_elect(net, 1));
    tnet_tick_all(net, 5);
    ASSERT_U64_EQ(tst(net, 1).commit, 5);
    ASSERT_GT(net->n_delivered[RAFT_MSG_HEARTBEAT], 0);
    /* Node 2 still holds its stale tail and must not have committed any of it. */
    ASSERT_U64_EQ(tterm(net, 2, 2), 2);
    ASSERT_U64_EQ(tst(net, 2).commit, 1);
    ASSERT_U64_EQ(net->nodes[2].applied, 1);
    net->filter = NULL;
    tnet_tick_all(net, 3);
    ASSERT(tlogs_equal(net, 1, 2));
    ASSERT_U64_EQ(net->nodes[2].applied, 5);
    ASSERT_EQ(tnet_check(net), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.3: after a rejection the leader retries with an earlier preceding entry. */
TEST(test_5_3_leader_backs_up_after_rejection) {
    const uint64_t terms[] = {1, 1, 1};
    struct raft_hard_state hs = {.term = 1, .vote = 0, .commit = 0};
    struct tnet *net = solo(1, 3, &hs, terms, 3);
    ASSERT(tnet_win(net, 1));
    ASSERT_U64_EQ(tst(net, 1).last_index, 4);
    const struct raft_msg *first = tnet_find(net, RAFT_MSG_APP, 1, 2);
    ASSERT(first != NULL);
    uint64_t first_prev = first->index;
    ASSERT_GE(first_prev, 1);
    tnet_clear(net);
    /* Follower 2 holds only entry 1. */
    struct raft_msg rej = tmsg(RAFT_MSG_APP_RESP, 2, 1, 2);
    rej.reject = true;
    rej.index = first_prev;
    rej.reject_hint = 1;
    rej.log_term = 1;
    tnet_step(net, &rej);
    const struct raft_msg *next = tnet_find(net, RAFT_MSG_APP, 1, 2);
    ASSERT(next != NULL);
    ASSERT_LT(next->index, first_prev);
    ASSERT_LE(next->index, 1);
    ASSERT_GE(next->n_entries, 1);
    ASSERT_U64_EQ(next->entries[0].index, next->index + 1);
    ASSERT_U64_EQ(next->log_term, next->index ? 1 : 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/*
 * §5.3, Figure 7: whatever a follower's log looks like (missing entries,
 * extra uncommitted entries, both), the leader makes it identical to its own.
 */
TEST(test_5_3_leader_brings_follower_logs_in_line) {
    static const uint64_t leader[] = {1, 1, 1, 4, 4, 5, 5, 6, 6, 6};
    static const struct {
        size_t n;
        uint64_t terms[12];
    } followers[] = {
        {9, {1, 1, 1, 4, 4, 5, 5, 6, 6}},           /* (a) */
        {4, {1, 1, 1, 4}},                          /* (b) */
        {11, {1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6}},    /* (c) */
        {12, {1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7}}, /* (d) */
        {7, {1, 1, 1, 4, 4, 4, 4}},                 /* (e) */
        {11, {1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3}},    /* (f) */
    };
    for (size_t c = 0; c < sizeof followers / sizeof followers[0]; c++) {
        struct tnet *net = tnet_new(NULL);
        struct raft_conf_state cs = tconf(3, 0);
        struct raft_entry e[16];
        struct raft_hard_state hs = {.term = 7, .vote = 0, .commit = 0};
        tlog(e, leader, 10);
        tnet_add(net, 1, &cs, &hs, e, 10);
        tnet_add(net, 3, &cs, &hs, e, 10);
        tlog(e, followers[c].terms, followers[c].n);
        tnet_add(net, 2, &cs, &hs, e, followers[c].n);
        ASSERT(tnet_elect(net, 1));
        tnet_tick_all(net, net->tmpl.heartbeat_tick);
        if (!tlogs_equal(net, 1, 2)) fprintf(stderr, "  follower (%c)\n", (char)('a' + c));
        ASSERT(tlogs_equal(net, 1, 2));
        ASSERT_U64_EQ(tlast(net, 2), 11);
        ASSERT_U64_EQ(tst(net, 2).commit, 11);
        ASSERT_EQ(tnet_check(net), 0);
        ASSERT_NET_OK(net);
        tnet_free(net);
    }
}

/* §5.4.1: a voter denies its vote to a candidate whose log is less up-to-date. */
TEST(test_5_4_1_vote_denied_to_stale_log) {
    /* The voter's log is [1:t1, 2:t2]. */
    struct {
        uint64_t log_term, index;
    } cases[] = {{1, 1}, {1, 2}, {1, 3}, {2, 1}, {0, 0}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const uint64_t terms[] = {1, 2};
        struct raft_hard_state hs = {.term = 2, .vote = 0, .commit = 0};
        struct tnet *net = solo(1, 3, &hs, terms, 2);
        struct raft_msg m = tmsg(RAFT_MSG_VOTE, 2, 1, 3);
        m.log_term = cases[c].log_term;
        m.index = cases[c].index;
        tnet_step(net, &m);
        const struct raft_msg *r = tnet_find(net, RAFT_MSG_VOTE_RESP, 1, 2);
        ASSERT(r != NULL);
        if (!r->reject) fprintf(stderr, "  case %zu\n", c);
        ASSERT(r->reject);
        ASSERT_U64_EQ(r->term, 3);
        ASSERT_U64_EQ(tst(net, 1).vote, RAFT_NONE);
        ASSERT_U64_EQ(tst(net, 1).term, 3);
        ASSERT_NET_OK(net);
        tnet_free(net);
    }
}

/* §5.4.1: a voter grants its vote to a candidate whose log is at least as up-to-date. */
TEST(test_5_4_1_vote_granted_to_up_to_date_log) {
    /* The voter's log is [1:t1, 2:t2]. */
    struct {
        uint64_t log_term, index;
    } cases[] = {{2, 2}, {2, 3}, {3, 1}, {3, 2}, {3, 5}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const uint64_t terms[] = {1, 2};
        struct raft_hard_state hs = {.term = 2, .vote = 0, .commit = 0};
        struct tnet *net = solo(1, 3, &hs, terms, 2);
        struct raft_msg m = tmsg(RAFT_MSG_VOTE, 2, 1, 3);
        m.log_term = cases[c].log_term;
        m.index = cases[c].index;
        tnet_step(net, &m);
        const struct raft_msg *r = tnet_find(net, RAFT_MSG_VOTE_RESP, 1, 2);
        ASSERT(r != NULL);
        if (r->reject) fprintf(stderr, "  case %zu\n", c);
        ASSERT(!r->reject);
        ASSERT_U64_EQ(tst(net, 1).vote, 2);
        ASSERT_U64_EQ(tsaved_hs(net, 1).vote, 2);
        ASSERT_NET_OK(net);
        tnet_free(net);
    }
}

/* §5.4.1: a candidate with a stale log cannot win; one with all committed entries can. */
TEST(test_5_4_1_stale_candidate_cannot_win) {
    struct tnet *net = tnet_new(NULL);
    struct raft_conf_state cs = tconf(3, 0);
    struct raft_entry e[4];
    const uint64_t short_log[] = {1}, long_log[] = {1, 2};
    struct raft_hard_state hs = {.term = 2, .vote = 0, .commit = 1};
    tlog(e, short_log, 1);
    tnet_add(net, 1, &cs, &hs, e, 1);
    tlog(e, long_log, 2);
    hs.commit = 2;
    tnet_add(net, 2, &cs, &hs, e, 2);
    tnet_add(net, 3, &cs, &hs, e, 2);
    ASSERT(!tnet_elect(net, 1));
    ASSERT_NE(tst(net, 1).role, RAFT_LEADER);
    ASSERT(tnet_elect(net, 2));
    tnet_tick_all(net, net->tmpl.heartbeat_tick);
    /* Leader completeness: the committed entry 2:t2 survives everywhere. */
    for (uint64_t id = 1; id <= 3; id++) ASSERT_U64_EQ(tterm(net, id, 2), 2);
    ASSERT(tlogs_equal(net, 1, 2));
    ASSERT_EQ(tnet_check(net), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/*
 * §5.4.2: a leader never commits an entry of an earlier term by counting
 * replicas; it commits it only together with an entry of its own term.
 */
TEST(test_5_4_2_no_commit_of_old_term_by_count) {
    const uint64_t terms[] = {1, 2};
    struct raft_hard_state hs = {.term = 2, .vote = 0, .commit = 1};
    struct tnet *net = solo(1, 3, &hs, terms, 2);
    ASSERT_U64_EQ(net->nodes[1].applied, 1);
    ASSERT(tnet_win(net, 1));
    ASSERT_U64_EQ(tst(net, 1).term, 3);
    ASSERT_U64_EQ(tst(net, 1).last_index, 3);
    /* Entry 2 (term 2) is now on nodes 1 and 2: a majority, but of an old term. */
    struct raft_msg a = tack(2, 1, 3, 2);
    tnet_step(net, &a);
    ASSERT_U64_EQ(tst(net, 1).commit, 1);
    ASSERT_U64_EQ(net->nodes[1].applied, 1);
    a = tack(3, 1, 3, 2);
    tnet_step(net, &a);
    ASSERT_U64_EQ(tst(net, 1).commit, 1);
    /* The no-op of term 3 on a majority commits it and, with it, entry 2. */
    a = tack(2, 1, 3, 3);
    tnet_step(net, &a);
    ASSERT_U64_EQ(tst(net, 1).commit, 3);
    ASSERT_U64_EQ(net->nodes[1].applied, 3);
    ASSERT(net->nodes[1].log[2].present);
    ASSERT_U64_EQ(net->nodes[1].log[2].term, 2);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* The term whose entries figure8_filter holds back. */
static uint64_t figure8_blocked_term;

/*
 * Drops appends that carry entries of figure8_blocked_term and that the
 * recipient would accept; those it would reject pass, so that the leader
 * still learns where the follower's log ends and backs up.
 */
static bool figure8_filter(struct tnet *net, const struct raft_msg *m) {
    if (m->type != RAFT_MSG_APP) return false;
    bool blocked = false;
    for (uint32_t i = 0; i < m->n_entries; i++)
        if (m->entries[i].term == figure8_blocked_term) blocked = true;
    if (!blocked) return false;
    bool ok;
    uint64_t t = tstorage_term(&net->nodes[m->to], m->index, &ok);
    return ok && t == m->log_term;
}

/*
 * §5.4.2, Figure 8: S1 leads term 4 and spreads entry 2 of term 2 to a
 * majority before its own entry gets anywhere. Were entry 2 committed then,
 * S5 (holding 2:t3) could still win term 5 and overwrite it on every node.
 * The run checks S1 did not commit it, and that after S5 overwrites it no
 * two nodes ever applied different entries at index 2.
 */
TEST(test_5_4_2_figure8_old_term_entry_not_committed) {
    struct raft_config c;
    tnet_config_defaults(&c);
    c.max_size_per_msg = 1; /* one entry per append */
    struct tnet *net = tnet_new(&c);
    struct raft_conf_state cs = tconf(5, 0);
    struct raft_entry e[4];
    const uint64_t s12[] = {1, 2}, s34[] = {1}, s5[] = {1, 3};
    struct raft_hard_state hs = {.term = 3, .vote = 0, .commit = 1};
    tlog(e, s12, 2);
    tnet_add(net, 1, &cs, &hs, e, 2);
    hs.term = 2;
    tnet_add(net, 2, &cs, &hs, e, 2);
    hs.term = 1;
    tlog(e, s34, 1);
    tnet_add(net, 3, &cs, &hs, e, 1);
    tnet_add(net, 4, &cs, &hs, e, 1);
    hs.term = 3;
    tlog(e, s5, 2);
    tnet_add(net, 5, &cs, &hs, e, 2);
    net->cut[1][5] = net->cut[5][1] = true;
    net->filter = figure8_filter;
    figure8_blocked_term = 4;

    ASSERT(tnet_elect(net, 1));
    ASSERT_U64_EQ(tst(net, 1).term, 4);
    tnet_tick_all(net, 3 * c.heartbeat_tick);
    /* Entry 2 reached S3 and S4, so it sits on S1..S4, yet it is of term 2. */
    ASSERT_U64_EQ(tterm(net, 3, 2), 2);
    ASSERT_U64_EQ(tterm(net, 4, 2), 2);
    ASSERT_U64_EQ(tst(net, 1).commit, 1);
    ASSERT_U64_EQ(net->nodes[1].applied, 1);

    /* S1 crashes; S5 takes over and replaces entry 2 everywhere. */
    tnet_crash(net, 1);
    net->filter = NULL;
    for (int i = 0; i < 4 && tst(net, 5).role != RAFT_LEADER; i++) tnet_elect(net, 5);
    ASSERT_EQ(tst(net, 5).role, RAFT_LEADER);
    tnet_tick_all(net, 3 * c.heartbeat_tick);
    for (uint64_t id = 2; id <= 5; id++) {
        ASSERT_U64_EQ(tterm(net, id, 2), 3);
        ASSERT_GE(net->nodes[id].applied, 3);
    }
    ASSERT_EQ(tnet_check(net), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.4.2: once an entry of the leader's term commits, earlier entries commit with it everywhere. */
TEST(test_5_4_2_old_entries_commit_with_current_term_entry) {
    struct tnet *net = tnet_new(NULL);
    struct raft_conf_state cs = tconf(3, 0);
    struct raft_entry e[4];
    const uint64_t terms[] = {1, 1, 1};
    struct raft_hard_state hs = {.term = 1, .vote = 0, .commit = 1};
    tlog(e, terms, 3);
    tnet_add(net, 1, &cs, &hs, e, 3);
    tnet_add(net, 2, &cs, &hs, e, 1);
    tnet_add(net, 3, &cs, &hs, e, 1);
    ASSERT(tnet_elect(net, 1));
    tnet_tick_all(net, net->tmpl.heartbeat_tick);
    for (uint64_t id = 1; id <= 3; id++) {
        ASSERT_U64_EQ(tst(net, id).commit, 4);
        ASSERT_U64_EQ(net->nodes[id].applied, 4);
        ASSERT_U64_EQ(tterm(net, id, 3), 1);
        ASSERT_U64_EQ(tterm(net, id, 4), 2);
    }
    ASSERT_EQ(tnet_check(net), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.5 (and Figure 2): a restarted server recovers term, vote and log from stable storage. */
TEST(test_5_5_restart_recovers_persistent_state) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    ASSERT_EQ(tpropose(net, 1, "x"), 0);
    ASSERT_EQ(tpropose(net, 1, "y"), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, net->tmpl.heartbeat_tick);
    struct raft_status before = tst(net, 2);
    tnet_crash(net, 2);
    ASSERT_EQ(tnet_restart(net, 2), 0);
    tnode_ready(net, 2);
    struct raft_status after = tst(net, 2);
    ASSERT_U64_EQ(after.term, before.term);
    ASSERT_U64_EQ(after.vote, before.vote);
    ASSERT_U64_EQ(after.last_index, before.last_index);
    ASSERT_GE(after.commit, net->nodes[2].applied);
    ASSERT_EQ(after.role, RAFT_FOLLOWER);
    /* Nothing was applied twice on restart. */
    ASSERT_U64_EQ(net->nodes[2].n_applied_entries, 3);
    ASSERT_EQ(tpropose(net, 1, "z"), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, net->tmpl.heartbeat_tick);
    ASSERT(tapplied_has(net, 2, "z"));
    ASSERT(tlogs_equal(net, 1, 2));
    ASSERT_EQ(tnet_check(net), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.5: a crashed leader comes back as a follower of the new leader and catches up. */
TEST(test_5_5_crashed_leader_rejoins_as_follower) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    ASSERT_EQ(tpropose(net, 1, "old"), 0);
    tnet_stabilize(net);
    tnet_crash(net, 1);
    uint64_t l = 0;
    for (unsigned t = 0; t < 30 * net->tmpl.election_tick && l == 0; t++) {
        tnet_tick_all(net, 1);
        l = tnet_leader(net);
    }
    ASSERT(l == 2 || l == 3);
    ASSERT_EQ(tpropose(net, l, "new"), 0);
    tnet_stabilize(net);
    ASSERT_EQ(tnet_restart(net, 1), 0);
    ASSERT_EQ(tst(net, 1).role, RAFT_FOLLOWER);
    tnet_tick_all(net, 3);
    struct raft_status st = tst(net, 1);
    ASSERT_EQ(st.role, RAFT_FOLLOWER);
    ASSERT_U64_EQ(st.leader, l);
    ASSERT_U64_EQ(st.term, tst(net, l).term);
    ASSERT(tapplied_has(net, 1, "old"));
    ASSERT(tapplied_has(net, 1, "new"));
    ASSERT(tlogs_equal(net, 1, l));
    ASSERT_EQ(tnet_check(net), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §5.5: AppendEntries is idempotent: a duplicate changes nothing and is acknowledged again. */
TEST(test_5_5_duplicate_append_is_idempotent) {
    struct tnet *net = solo(1, 3, NULL, NULL, 0);
    struct raft_entry e[2];
    const uint64_t terms[] = {1, 1};
    tlog(e, terms, 2);
    struct raft_msg m = tmsg(RAFT_MSG_APP, 2, 1, 1);
    m.n_entries = 2;
    m.entries = e;
    m.commit = 1;
    for (int round = 0; round < 2; round++) {
        tnet_clear(net);
        tnet_step(net, &m);
        ASSERT_U64_EQ(tlast(net, 1), 2);
        ASSERT_U64_EQ(tst(net, 1).commit, 1);
        ASSERT_U64_EQ(net->nodes[1].n_applied_entries, 1);
        const struct raft_msg *r = tnet_find(net, RAFT_MSG_APP_RESP, 1, 2);
        ASSERT(r != NULL);
        ASSERT(!r->reject);
        ASSERT_U64_EQ(r->index, 2);
    }
    ASSERT_NET_OK(net);
    tnet_free(net);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
