/*
 * test_raft_snapshot.c - log compaction and snapshots (Raft paper section 7):
 * a compacted log keeps replicating, a follower behind the compacted prefix
 * receives a SNAP message and installs it through the update, stale or
 * redundant snapshots are ignored without losing log entries, the leader
 * holds back appends while a snapshot is in flight and resends it after
 * raft_report_snapshot(..., false).
 *
 * Snapshots are made the way a driver makes them: raft_memstore_create_
 * snapshot at the applied index, then raft_memstore_compact.
 */
#include "tests/unit/raft/raft_test_net.h"

static const char image[] = "image-21";

/* Node 1's first SNAP message, captured by on_send. */
static struct raft_msg first_snap;
static bool have_first_snap;

static void capture_snap(struct tnet *net, const struct raft_msg *m) {
    (void)net;
    if (m->type == RAFT_MSG_SNAP && !have_first_snap) {
        tmsg_clone(&first_snap, m);
        have_first_snap = true;
    }
}

static void release_first_snap(void) {
    if (have_first_snap) tmsg_free(&first_snap);
    have_first_snap = false;
}

/* Snapshots node id's state at its applied index and compacts its log up to there. */
static int compact(struct tnet *net, uint64_t id, const char *img) {
    struct tnode *nd = &net->nodes[id];
    int rc = raft_memstore_create_snapshot(nd->ms, nd->applied, &nd->conf, img, strlen(img));
    if (rc == 0) rc = raft_memstore_compact(nd->ms, nd->applied);
    return rc;
}

/*
 * 3 nodes; node 3 is cut off while 20 entries commit (index 21 with the
 * no-op), then the leader compacts everything it applied and the cut heals.
 */
static struct tnet *behind(bool auto_report) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    net->report_snapshots = auto_report;
    if (!tnet_elect(net, 1)) return net;
    tnet_isolate(net, 3);
    char buf[16];
    for (int i = 0; i < 20; i++) {
        snprintf(buf, sizeof buf, "s%d", i);
        tpropose(net, 1, buf);
    }
    tnet_stabilize(net);
    tnet_tick(net, 1, 1);
    tnet_tick(net, 2, 1);
    tnet_stabilize(net);
    if (compact(net, 1, image) != 0) tnet_fail(net, "compacting node 1");
    tnet_heal(net);
    return net;
}

/* §7: a follower behind the compacted log receives the leader's snapshot and installs it. */
TEST(test_7_follower_behind_compaction_gets_snapshot) {
    have_first_snap = false;
    struct tnet *net = behind(true);
    net->on_send = capture_snap;
    ASSERT_EQ(tst(net, 1).role, RAFT_LEADER);
    ASSERT_U64_EQ(net->nodes[1].applied, 21);
    ASSERT_U64_EQ(tstorage_first(&net->nodes[1]), 22);
    for (unsigned t = 0; t < 5 * net->tmpl.election_tick && net->nodes[3].n_snaps == 0; t++)
        tnet_tick_all(net, 1);
    ASSERT_EQ(net->nodes[3].n_snaps, 1);
    ASSERT(have_first_snap);
    ASSERT(first_snap.has_snapshot);
    ASSERT_U64_EQ(first_snap.from, 1);
    ASSERT_U64_EQ(first_snap.to, 3);
    ASSERT_U64_EQ(first_snap.term, 1);
    ASSERT_U64_EQ(first_snap.snapshot.meta.index, 21);
    ASSERT_U64_EQ(first_snap.snapshot.meta.term, 1);
    ASSERT_EQ(first_snap.snapshot.meta.conf.n_voters, 3);
    ASSERT_EQ(first_snap.snapshot.data.len, strlen(image));
    ASSERT_MEM_EQ(first_snap.snapshot.data.base, image, strlen(image));
    release_first_snap();
    ASSERT_EQ(net->nodes[3].snap_len, strlen(image));
    ASSERT_MEM_EQ(net->nodes[3].snap, image, strlen(image));
    ASSERT_U64_EQ(net->nodes[3].applied, 21);
    ASSERT_GE(tst(net, 3).commit, 21);
    ASSERT_U64_EQ(tst(net, 3).last_index, 21);
    /* Replication resumes after the snapshot. */
    ASSERT_EQ(tpropose(net, 1, "post"), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 2);
    ASSERT(tapplied_has(net, 3, "post"));
    ASSERT(tlogs_equal(net, 1, 3));
    ASSERT_EQ(tnet_check(net), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §7: with every log compacted, the cluster keeps committing and applying. */
TEST(test_7_compacted_logs_keep_replicating) {
    struct tnet *net = tnet_cluster(3, 0, NULL);
    ASSERT(tnet_elect(net, 1));
    for (int i = 0; i < 10; i++) ASSERT_EQ(tpropose(net, 1, "a"), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 2);
    for (uint64_t id = 1; id <= 3; id++) {
        ASSERT_U64_EQ(net->nodes[id].applied, 11);
        ASSERT_EQ(compact(net, id, "img"), 0);
    }
    char buf[16];
    for (int i = 0; i < 10; i++) {
        snprintf(buf, sizeof buf, "b%d", i);
        ASSERT_EQ(tpropose(net, 1, buf), 0);
    }
    tnet_stabilize(net);
    tnet_tick_all(net, 2);
    for (uint64_t id = 1; id <= 3; id++) {
        ASSERT_U64_EQ(net->nodes[id].applied, 21);
        ASSERT(tapplied_has(net, id, "b9"));
        ASSERT_EQ(net->nodes[id].n_snaps, 0); /* nobody needed a snapshot */
    }
    ASSERT_EQ(net->n_sent[RAFT_MSG_SNAP], 0);
    ASSERT(tlogs_equal(net, 1, 2));
    ASSERT(tlogs_equal(net, 1, 3));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

static struct raft_msg snap_msg(uint64_t from, uint64_t to, uint64_t term, uint64_t index,
                                uint64_t snap_term, const struct raft_conf_state *cs,
                                const char *data) {
    struct raft_msg m = tmsg(RAFT_MSG_SNAP, from, to, term);
    m.has_snapshot = true;
    m.snapshot.meta.index = index;
    m.snapshot.meta.term = snap_term;
    m.snapshot.meta.conf = *cs;
    m.snapshot.data.base = data;
    m.snapshot.data.len = strlen(data);
    return m;
}

/* §7: a follower installs a snapshot it lacks through the update, and acknowledges it. */
TEST(test_7_follower_installs_snapshot_via_update) {
    struct tnet *net = tnet_solo(NULL, 2, 3, NULL, NULL, 0);
    struct raft_conf_state cs = tconf(3, 0);
    struct raft_msg m = snap_msg(1, 2, 1, 10, 1, &cs, "img");
    ASSERT_EQ(raft_step(tr(net, 2), &m), 0);
    ASSERT(raft_has_update(tr(net, 2)));
    struct raft_update u;
    ASSERT_EQ(raft_get_update(tr(net, 2), &u), 0);
    ASSERT(u.has_snapshot);
    ASSERT_U64_EQ(u.snapshot.meta.index, 10);
    ASSERT_U64_EQ(u.snapshot.meta.term, 1);
    ASSERT_EQ(u.snapshot.meta.conf.n_voters, 3);
    ASSERT_EQ(u.snapshot.data.len, 3);
    ASSERT_MEM_EQ(u.snapshot.data.base, "img", 3);
    ASSERT(u.must_sync);
    if (u.has_hard_state) ASSERT_U64_EQ(u.hard_state.commit, 10);
    /* Nothing of the replaced log is applied entry by entry. */
    ASSERT_EQ(u.n_committed, 0);
    tnode_finish_update(net, 2, &u);
    tnode_ready(net, 2);
    struct raft_status st = tst(net, 2);
    ASSERT_U64_EQ(st.commit, 10);
    ASSERT_U64_EQ(st.last_index, 10);
    ASSERT_U64_EQ(st.leader, 1);
    ASSERT_U64_EQ(tstorage_first(&net->nodes[2]), 11);
    ASSERT_U64_EQ(net->nodes[2].applied, 10);
    const struct raft_msg *r = tnet_find(net, RAFT_MSG_APP_RESP, 2, 1);
    ASSERT(r != NULL);
    ASSERT(!r->reject);
    ASSERT_U64_EQ(r->index, 10);
    /* Appends continue right after the snapshot. */
    tnet_clear(net);
    struct raft_entry e = {.index = 11, .term = 1};
    struct raft_msg a = tmsg(RAFT_MSG_APP, 1, 2, 1);
    a.index = 10;
    a.log_term = 1;
    a.n_entries = 1;
    a.entries = &e;
    a.commit = 11;
    tnet_step(net, &a);
    ASSERT_U64_EQ(tst(net, 2).commit, 11);
    ASSERT_U64_EQ(net->nodes[2].applied, 11);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §7: a snapshot older than what the follower committed is ignored. */
TEST(test_7_stale_snapshot_is_ignored) {
    struct tnet *net = tnet_solo(NULL, 2, 3, NULL, NULL, 0);
    struct raft_conf_state cs = tconf(3, 0);
    struct raft_msg m = snap_msg(1, 2, 1, 10, 1, &cs, "new");
    tnet_step(net, &m);
    ASSERT_EQ(net->nodes[2].n_snaps, 1);
    tnet_clear(net);
    m = snap_msg(1, 2, 1, 5, 1, &cs, "old");
    ASSERT_EQ(raft_step(tr(net, 2), &m), 0);
    if (raft_has_update(tr(net, 2))) {
        struct raft_update u;
        ASSERT_EQ(raft_get_update(tr(net, 2), &u), 0);
        ASSERT(!u.has_snapshot);
        tnode_finish_update(net, 2, &u);
    }
    ASSERT_EQ(net->nodes[2].n_snaps, 1);
    ASSERT_U64_EQ(tst(net, 2).commit, 10);
    ASSERT_U64_EQ(tst(net, 2).last_index, 10);
    const struct raft_msg *r = tnet_find(net, RAFT_MSG_APP_RESP, 2, 1);
    ASSERT(r != NULL);
    ASSERT(!r->reject);
    ASSERT_U64_EQ(r->index, 10);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/*
 * §7: "If the follower has a log entry with the same index and term as the
 * snapshot's last included entry, retain the log entries following it."
 */
TEST(test_7_snapshot_keeps_matching_log_suffix) {
    const uint64_t terms[12] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    struct raft_hard_state hs = {.term = 1, .vote = 0, .commit = 0};
    struct tnet *net = tnet_solo(NULL, 2, 3, &hs, terms, 12);
    struct raft_conf_state cs = tconf(3, 0);
    struct raft_msg m = snap_msg(1, 2, 1, 10, 1, &cs, "img");
    tnet_step(net, &m);
    ASSERT_U64_EQ(tlast(net, 2), 12);
    ASSERT_U64_EQ(tterm(net, 2, 11), 1);
    ASSERT_U64_EQ(tterm(net, 2, 12), 1);
    ASSERT_U64_EQ(tst(net, 2).last_index, 12);
    ASSERT_GE(tst(net, 2).commit, 10);
    ASSERT_GE(net->nodes[2].applied, 10);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* §7: the snapshot carries the configuration as of its index, which the follower adopts. */
TEST(test_7_snapshot_carries_configuration) {
    struct tnet *net = tnet_solo(NULL, 2, 3, NULL, NULL, 0);
    struct raft_conf_state cs = tconf(4, 1);
    struct raft_msg m = snap_msg(1, 2, 1, 7, 1, &cs, "img");
    tnet_step(net, &m);
    struct raft_status st = tst(net, 2);
    ASSERT_EQ(st.conf.n_voters, 4);
    ASSERT_EQ(st.conf.n_learners, 1);
    ASSERT(tconf_has_voter(&st.conf, 4));
    ASSERT(tconf_has_learner(&st.conf, 5));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* Counts what node 1 sends node 3 (snapshot pause tests). */
static size_t apps_to_3, snaps_to_3;

static void count_to_3(struct tnet *net, const struct raft_msg *m) {
    (void)net;
    if (m->from != 1 || m->to != 3) return;
    if (m->type == RAFT_MSG_APP && m->n_entries > 0) apps_to_3++;
    if (m->type == RAFT_MSG_SNAP) snaps_to_3++;
}

/* Brings behind() to the point where a SNAP to node 3 was sent and lost. */
static struct tnet *snapshot_lost(void) {
    struct tnet *net = behind(false);
    net->drop_type[RAFT_MSG_SNAP] = true;
    apps_to_3 = snaps_to_3 = 0;
    net->on_send = count_to_3;
    for (unsigned t = 0; t < 5 * net->tmpl.election_tick && snaps_to_3 == 0; t++)
        tnet_tick_all(net, 1);
    return net;
}

/* While a snapshot is in flight to a follower, the leader sends it nothing more to append. */
TEST(test_7_leader_pauses_follower_while_snapshot_in_flight) {
    struct tnet *net = snapshot_lost();
    ASSERT_EQ(snaps_to_3, 1);
    apps_to_3 = 0;
    for (int i = 0; i < 3; i++) ASSERT_EQ(tpropose(net, 1, "meanwhile"), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 5);
    ASSERT_EQ(apps_to_3, 0);
    ASSERT_EQ(snaps_to_3, 1);
    ASSERT_EQ(net->nodes[3].n_snaps, 0);
    /* The others are unaffected. */
    ASSERT(tapplied_has(net, 2, "meanwhile"));
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* raft_report_snapshot(false): the leader sends the snapshot again; after success, appends resume.
 */
TEST(test_7_report_snapshot_failure_resends) {
    struct tnet *net = snapshot_lost();
    ASSERT_EQ(snaps_to_3, 1);
    raft_report_snapshot(tr(net, 1), 3, false);
    net->drop_type[RAFT_MSG_SNAP] = false;
    for (unsigned t = 0; t < 5 * net->tmpl.election_tick && net->nodes[3].n_snaps == 0; t++)
        tnet_tick_all(net, 1);
    ASSERT_EQ(snaps_to_3, 2);
    ASSERT_EQ(net->nodes[3].n_snaps, 1);
    raft_report_snapshot(tr(net, 1), 3, true);
    ASSERT_EQ(tpropose(net, 1, "resumed"), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 3);
    ASSERT(tapplied_has(net, 3, "resumed"));
    ASSERT(tlogs_equal(net, 1, 3));
    ASSERT_GE(apps_to_3, 1);
    ASSERT_EQ(tnet_check(net), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

/* A node restarted after installing a snapshot resumes from it, applying nothing twice. */
TEST(test_7_restart_after_snapshot) {
    struct tnet *net = behind(true);
    for (unsigned t = 0; t < 5 * net->tmpl.election_tick && net->nodes[3].n_snaps == 0; t++)
        tnet_tick_all(net, 1);
    ASSERT_EQ(net->nodes[3].n_snaps, 1);
    tnet_stabilize(net);
    uint64_t applied_entries = net->nodes[3].n_applied_entries;
    tnet_crash(net, 3);
    ASSERT_EQ(tnet_restart(net, 3), 0);
    tnode_ready(net, 3);
    struct raft_status st = tst(net, 3);
    ASSERT_GE(st.commit, 21);
    ASSERT_GE(st.last_index, 21);
    ASSERT_EQ(st.conf.n_voters, 3);
    ASSERT_U64_EQ(net->nodes[3].n_applied_entries, applied_entries);
    ASSERT_EQ(tpropose(net, 1, "after-restart"), 0);
    tnet_stabilize(net);
    tnet_tick_all(net, 3);
    ASSERT(tapplied_has(net, 3, "after-restart"));
    ASSERT_EQ(tnet_check(net), 0);
    ASSERT_NET_OK(net);
    tnet_free(net);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
