/*
 * sim_check.c - the invariant checker of the Raft simulation.
 *
 * The world calls these hooks at the moments the facts become observable:
 * when a node persists entries or a hard state, applies an entry, installs a
 * snapshot, and after every simulation step. Each hook checks incrementally,
 * so that "after every step" costs what changed, not the whole history:
 *
 * - Election safety: at most one leader per term, ever. term_leader[] keeps
 *   the first leader seen for each term.
 * - Log matching: two logs that hold an entry with the same index and term
 *   hold the same entry and the same prefix. Checked over all time and all
 *   nodes: every (index, term) ever persisted is recorded with the entry's
 *   hash and the term of index-1 in the log that carried it; any later
 *   persist of the same (index, term) must agree on both. By induction over
 *   the index this is exactly prefix equality.
 * - Leader completeness: an entry committed in term t is in the log of every
 *   leader of a term > t. For every committed index we keep an upper bound
 *   on its commit term; each new leader's durable log is checked against
 *   all of them, and each newly committed index against current leaders.
 * - State-machine safety: no two nodes apply different entries at one index,
 *   and their state machines (and snapshots) agree after every index.
 * - Durability: a node's persisted term never decreases, its vote never
 *   changes within a term, its commit index never decreases.
 * Read safety is checked where reads are served (sim_world.c).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "tests/sim/sim.h"

#define UNKNOWN_TERM UINT64_MAX

void sim_check_init(struct sim_check *c) {
    memset(c, 0, sizeof(*c));
}

void sim_check_free(struct sim_check *c) {
    free(c->com);
    free(c->term_leader);
    free(c->logmap);
    memset(c, 0, sizeof(*c));
}

static uint64_t entry_hash(const struct raft_entry *e) {
    uint64_t h = sim_hash(&e->type, 1, SIM_HASH_INIT);
    if (e->data.len) h = sim_hash(e->data.base, e->data.len, h);
    return h ^ (uint64_t)e->data.len;
}

static size_t logkey_slot(uint64_t index, uint64_t term, size_t cap) {
    uint64_t h = index * 0x9e3779b97f4a7c15ull ^ term * 0xc2b2ae3d27d4eb4full;
    h ^= h >> 29;
    return (size_t)(h & (cap - 1));
}

static struct sim_logkey *logmap_find(struct sim_check *c, uint64_t index, uint64_t term,
                                      bool insert) {
    if (insert && (c->logmap_n + 1) * 2 > c->logmap_cap) {
        size_t old_cap = c->logmap_cap;
        struct sim_logkey *old = c->logmap;
        c->logmap_cap = old_cap ? old_cap * 2 : 1024;
        c->logmap = sim_xcalloc(c->logmap_cap, sizeof(*c->logmap));
        for (size_t i = 0; i < old_cap; i++) {
            if (old[i].term == 0) continue;
            size_t s = logkey_slot(old[i].index, old[i].term, c->logmap_cap);
            while (c->logmap[s].term != 0) s = (s + 1) & (c->logmap_cap - 1);
            c->logmap[s] = old[i];
        }
        free(old);
    }
    if (c->logmap_cap == 0) return NULL;
    size_t s = logkey_slot(index, term, c->logmap_cap);
    while (c->logmap[s].term != 0) {
        if (c->logmap[s].index == index && c->logmap[s].term == term) return &c->logmap[s];
        s = (s + 1) & (c->logmap_cap - 1);
    }
    if (!insert) return NULL;
    c->logmap_n++;
    c->logmap[s].index = index;
    c->logmap[s].term = term;
    return &c->logmap[s];
}

void sim_check_appended(struct sim_world *w, const struct sim_node *n, const struct raft_entry *e,
                        size_t n_e, uint64_t prev_term) {
    struct sim_check *c = &w->chk;
    uint64_t pt = prev_term;
    for (size_t i = 0; i < n_e; i++) {
        if (i > 0 && e[i].index != e[i - 1].index + 1) {
            sim_fail(w, SIM_FAIL_CONTRACT,
                     "node %" PRIu64
                     " got entries to persist that are not contiguous: index %" PRIu64
                     " follows %" PRIu64,
                     n->id, e[i].index, e[i - 1].index);
            return;
        }
        if (e[i].term == 0 || e[i].index == 0) {
            sim_fail(w, SIM_FAIL_CONTRACT,
                     "node %" PRIu64 " got an entry with index %" PRIu64 " term %" PRIu64
                     " to persist",
                     n->id, e[i].index, e[i].term);
            return;
        }
        if (pt != UNKNOWN_TERM && e[i].term < pt) {
            sim_fail(w, SIM_FAIL_LOG_MATCHING,
                     "node %" PRIu64 " log terms decrease: entry %" PRIu64 " has term %" PRIu64
                     " after term %" PRIu64,
                     n->id, e[i].index, e[i].term, pt);
            return;
        }
        uint64_t h = entry_hash(&e[i]);
        struct sim_logkey *k = logmap_find(c, e[i].index, e[i].term, true);
        if (k->node == 0) {
            k->entry_hash = h;
            k->prev_term = pt;
            k->node = n->id;
        } else {
            if (k->entry_hash != h) {
                sim_fail(w, SIM_FAIL_LOG_MATCHING,
                         "entry (index %" PRIu64 ", term %" PRIu64 ") differs between node %" PRIu64
                         " and node %" PRIu64 " (two leaders of one term, or corruption)",
                         e[i].index, e[i].term, k->node, n->id);
                return;
            }
            if (pt != UNKNOWN_TERM && k->prev_term != UNKNOWN_TERM && k->prev_term != pt) {
                sim_fail(w, SIM_FAIL_LOG_MATCHING,
                         "entry (index %" PRIu64 ", term %" PRIu64 ") follows term %" PRIu64
                         " on node %" PRIu64 " but term %" PRIu64 " on node %" PRIu64
                         ": equal entries with different prefixes",
                         e[i].index, e[i].term, pt, n->id, k->prev_term, k->node);
                return;
            }
            if (k->prev_term == UNKNOWN_TERM) k->prev_term = pt;
        }
        pt = e[i].term;
    }
}

static struct sim_committed *com_at(struct sim_check *c, uint64_t index) {
    sim_reserve((void **)&c->com, &c->com_cap, (size_t)index + 1, sizeof(*c->com));
    return &c->com[index];
}

/*
 * Does leader n's durable log hold (index, term)? An index below the log's
 * first index is covered by the node's snapshot, which is checked against
 * the committed history when it is installed or created.
 */
static void check_leader_has(struct sim_world *w, const struct sim_node *n, uint64_t index,
                             const struct sim_committed *cm) {
    uint64_t first = 0, last = 0, t = 0;
    if (n->st->first_index(n->st->data, &first) != 0 ||
        n->st->last_index(n->st->data, &last) != 0) {
        sim_fail(w, SIM_FAIL_DRIVER, "memstore of node %" PRIu64 " failed", n->id);
        return;
    }
    if (index < first) return;
    if (index > last) {
        sim_fail(w, SIM_FAIL_LEADER_COMPLETENESS,
                 "node %" PRIu64 " is leader of term %" PRIu64 " but its log ends at %" PRIu64
                 " without entry %" PRIu64 " (term %" PRIu64 ") committed in term <= %" PRIu64
                 " (reported by node %" PRIu64 ")",
                 n->id, n->term, last, index, cm->term, cm->commit_term, cm->node);
        return;
    }
    if (n->st->term(n->st->data, index, &t) != 0) {
        sim_fail(w, SIM_FAIL_DRIVER, "memstore term(%" PRIu64 ") of node %" PRIu64 " failed", index,
                 n->id);
        return;
    }
    if (t != cm->term) {
        sim_fail(w, SIM_FAIL_LEADER_COMPLETENESS,
                 "node %" PRIu64 " is leader of term %" PRIu64 " but holds term %" PRIu64
                 " at index %" PRIu64 " where term %" PRIu64 " was committed in term <= %" PRIu64
                 " (reported by node %" PRIu64 ")",
                 n->id, n->term, t, index, cm->term, cm->commit_term, cm->node);
    }
}

/* A committed index became known (or its commit-term bound fell): every
 * current leader of a term >= the bound must hold it. */
static void check_leaders_for(struct sim_world *w, uint64_t index) {
    const struct sim_committed *cm = &w->chk.com[index];
    for (int i = 0; i < w->n_univ && !w->fail_kind; i++) {
        const struct sim_node *n = &w->nodes[i];
        if (!n->up || n->role != RAFT_LEADER || n->term < cm->commit_term) continue;
        check_leader_has(w, n, index, cm);
    }
}

static void note_committed(struct sim_world *w, const struct sim_node *n, uint64_t index,
                           uint64_t term, uint64_t commit_term) {
    struct sim_check *c = &w->chk;
    struct sim_committed *cm = com_at(c, index);
    if (cm->term == 0) {
        cm->term = term;
        cm->commit_term = commit_term;
        cm->node = n->id;
        if (index > c->com_max) c->com_max = index;
        check_leaders_for(w, index);
        return;
    }
    if (cm->term != term) {
        sim_fail(w, SIM_FAIL_SM_SAFETY,
                 "index %" PRIu64 " committed with term %" PRIu64 " on node %" PRIu64
                 " but with term %" PRIu64 " on node %" PRIu64,
                 index, cm->term, cm->node, term, n->id);
        return;
    }
    if (commit_term < cm->commit_term) {
        cm->commit_term = commit_term;
        check_leaders_for(w, index);
    }
}

void sim_check_committed(struct sim_world *w, const struct sim_node *n, uint64_t index,
                         uint64_t term) {
    note_committed(w, n, index, term, n->hs.term);
}

void sim_check_applied(struct sim_world *w, const struct sim_node *n, const struct raft_entry *e,
                       uint64_t state_hash) {
    struct sim_check *c = &w->chk;
    /* The node applies only what it knows committed, so its current term
     * bounds the commit term (its commit index came from a leader of a term
     * <= its own, or from its own disk, written at a term <= its own). */
    struct raft_status st;
    raft_status(n->r, &st);
    note_committed(w, n, e->index, e->term, st.term);
    if (w->fail_kind) return;
    struct sim_committed *cm = &c->com[e->index];
    uint64_t h = entry_hash(e);
    if (!cm->applied) {
        cm->applied = true;
        cm->entry_hash = h;
        cm->state_hash = state_hash;
        cm->applied_by = n->id;
        return;
    }
    if (cm->entry_hash != h) {
        sim_fail(w, SIM_FAIL_SM_SAFETY,
                 "node %" PRIu64 " applied a different entry at index %" PRIu64 " (term %" PRIu64
                 ") than node %" PRIu64,
                 n->id, e->index, e->term, cm->applied_by);
        return;
    }
    if (cm->state_hash != state_hash) {
        sim_fail(w, SIM_FAIL_SM_SAFETY,
                 "state machine of node %" PRIu64 " after index %" PRIu64
                 " differs from node %" PRIu64 "'s",
                 n->id, e->index, cm->applied_by);
    }
}

void sim_check_snapshot(struct sim_world *w, const struct sim_node *n, uint64_t index,
                        uint64_t term, uint64_t state_hash) {
    struct sim_check *c = &w->chk;
    const struct sim_committed *cm = index < c->com_cap ? &c->com[index] : NULL;
    if (!cm || !cm->applied) {
        sim_fail(w, SIM_FAIL_SM_SAFETY,
                 "node %" PRIu64 " installed a snapshot at index %" PRIu64
                 " that no node has applied",
                 n->id, index);
        return;
    }
    if (cm->term != term) {
        sim_fail(w, SIM_FAIL_SM_SAFETY,
                 "node %" PRIu64 " installed a snapshot at index %" PRIu64 " term %" PRIu64
                 " but term %" PRIu64 " was applied there",
                 n->id, index, term, cm->term);
        return;
    }
    if (cm->state_hash != state_hash) {
        sim_fail(w, SIM_FAIL_SM_SAFETY,
                 "node %" PRIu64 " installed a snapshot at index %" PRIu64
                 " whose image differs from node %" PRIu64 "'s state there",
                 n->id, index, cm->applied_by);
    }
}

void sim_check_hard_state(struct sim_world *w, const struct sim_node *n,
                          const struct raft_hard_state *hs) {
    const struct raft_hard_state *old = &n->hs;
    if (hs->term < old->term) {
        sim_fail(w, SIM_FAIL_DURABILITY,
                 "node %" PRIu64 " persists term %" PRIu64 " after term %" PRIu64, n->id, hs->term,
                 old->term);
    } else if (hs->term == old->term && old->vote != RAFT_NONE && hs->vote != old->vote) {
        sim_fail(w, SIM_FAIL_DURABILITY,
                 "node %" PRIu64 " changes its vote in term %" PRIu64 " from %" PRIu64
                 " to %" PRIu64,
                 n->id, hs->term, old->vote, hs->vote);
    } else if (hs->commit < old->commit) {
        sim_fail(w, SIM_FAIL_DURABILITY,
                 "node %" PRIu64 " persists commit %" PRIu64 " after commit %" PRIu64, n->id,
                 hs->commit, old->commit);
    }
}

void sim_check_ack(struct sim_world *w, uint8_t key, uint64_t index) {
    struct sim_check *c = &w->chk;
    if (index > c->ack_windex[key]) c->ack_windex[key] = index;
    if (index > c->ack_max) c->ack_max = index;
}

static void check_new_leader(struct sim_world *w, struct sim_node *n) {
    struct sim_check *c = &w->chk;
    uint64_t first = 0;
    if (n->st->first_index(n->st->data, &first) != 0) {
        sim_fail(w, SIM_FAIL_DRIVER, "memstore of node %" PRIu64 " failed", n->id);
        return;
    }
    for (uint64_t i = first; i <= c->com_max && !w->fail_kind; i++) {
        const struct sim_committed *cm = &c->com[i];
        if (cm->term == 0 || cm->commit_term > n->term) continue;
        check_leader_has(w, n, i, cm);
    }
    n->leader_checked_term = n->term;
}

void sim_check_role(struct sim_world *w, struct sim_node *n) {
    struct sim_check *c = &w->chk;
    struct raft_status st;
    raft_status(n->r, &st);
    n->role = st.role;
    n->term = st.term;
    n->leader = st.leader;
    if (st.role != RAFT_LEADER) return;
    sim_reserve((void **)&c->term_leader, &c->term_leader_cap, (size_t)st.term + 1,
                sizeof(*c->term_leader));
    uint64_t *tl = &c->term_leader[st.term];
    if (*tl == RAFT_NONE) {
        *tl = n->id;
        w->stats.elections++;
        TRACE(w, "n%" PRIu64 " is leader of term %" PRIu64, n->id, st.term);
    } else if (*tl != n->id) {
        sim_fail(w, SIM_FAIL_ELECTION_SAFETY,
                 "nodes %" PRIu64 " and %" PRIu64 " are both leaders of term %" PRIu64, *tl, n->id,
                 st.term);
        return;
    }
    if (n->leader_checked_term != st.term) check_new_leader(w, n);
}

void sim_check_roles(struct sim_world *w) {
    for (int i = 0; i < w->n_univ && !w->fail_kind; i++)
        if (w->nodes[i].up) sim_check_role(w, &w->nodes[i]);
}
