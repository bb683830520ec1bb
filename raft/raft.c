/*
 * raft.c - the Raft state machine: roles, elections, replication, commit,
 * ReadIndex, membership, leadership transfer, and the update/advance cycle.
 *
 * The design follows etcd raft (raft.go): every event either arrives as a
 * message (raft_step), a tick, or a local request, and is dispatched by term
 * first (step) and then by role (step_leader / step_candidate /
 * step_follower). Effects accumulate in the object - unstable log entries,
 * outgoing messages, read states - and leave through raft_get_update().
 *
 * Double buffering: messages and everything an update hands out are built in
 * outbox/arena number `cur`. raft_get_update() hands that side to the driver
 * and flips `cur`, so events fed while the driver still holds the update
 * (for example raft_apply_conf_change or raft_propose during apply) build
 * the next update without touching the one being processed. raft_advance()
 * releases the handed-out side.
 *
 * Key invariants:
 *   - the leader counts its own log for commitment only up to what the
 *     driver persisted (self match advances in raft_advance), Raft thesis
 *     10.2.1, so the driver may send a leader's messages while persisting;
 *   - commit advances by counting replicas only for entries of the leader's
 *     current term (Raft 5.4.2), unless built with
 *     RAFT_UNSAFE_COMMIT_OLD_TERM as a negative control;
 *   - at most one configuration change is uncommitted or unapplied at a time
 *     (pending_conf_index > applied blocks the next);
 *   - a node whose configuration does not list it as a voter never campaigns.
 *
 * Out of memory while sending a message drops the message (Raft tolerates
 * loss); out of memory while changing state is returned as RAFT_ENOMEM from
 * the public function with the state unchanged. One exception, raft_step():
 * what the message's header alone implies happens first and stays - a newer
 * term adopted (Raft 5.1, vote cleared, follower) and the sender of an APP,
 * HEARTBEAT or SNAP of the current term taken as leader - so RAFT_ENOMEM
 * leaves the node as if it had received the header but lost the rest. The
 * log, commit index, configuration and progress are unchanged, and feeding
 * the message again finishes it (tests/unit/raft/test_raft_oom.c checks
 * both on every allocation of a scenario).
 */
#include <stdlib.h>
#include <string.h>

#include "raft/raft_int.h"

/* Inflight window used when the configuration leaves max_inflight_msgs 0. */
#define RAFT__INFLIGHT_DEFAULT 256u
/* Largest inflight window accepted (memory per follower is 8 bytes a slot). */
#define RAFT__INFLIGHT_MAX 65536u
/* Entry data bytes per APP, whatever max_size_per_msg says, so that the
 * receiving decoder (RAFT_DECODE_BYTES_MAX) always accepts the message. */
#define RAFT__APP_BYTES_MAX (RAFT_DECODE_BYTES_MAX / 2u)
/* Messages waiting in one outbox; further ones are dropped as if lost. */
#define RAFT__OUTBOX_MAX (1u << 20)
/* Bytes of committed entries read at once when scanning for conf changes. */
#define RAFT__SCAN_BYTES (1u << 20)

_Static_assert(RAFT_ENTRY_BYTES_MAX < RAFT__APP_BYTES_MAX, "an entry must fit in one APP");
_Static_assert(RAFT_READ_CTX_MAX <= 255, "ctx_len is a uint8_t");

enum campaign_type { CAMPAIGN_PRE, CAMPAIGN_ELECTION, CAMPAIGN_TRANSFER };
enum vote_result { VOTE_PENDING, VOTE_WON, VOTE_LOST };

struct read_state_int {
    uint64_t index;
    uint8_t ctx_len;
    uint8_t ctx[RAFT_READ_CTX_MAX];
};

struct outbox {
    struct raft_msg *msgs;
    size_t n;
    size_t cap;
};

struct raft {
    uint64_t id;
    struct raft_storage *storage;
    unsigned election_tick;      /* ticks */
    unsigned heartbeat_tick;     /* ticks */
    uint64_t max_size_per_msg;   /* bytes */
    uint64_t max_committed_size; /* bytes per update, UINT64_MAX if unlimited */
    unsigned max_inflight;       /* APPs per follower */
    bool check_quorum;
    bool pre_vote;
    bool disable_forwarding;
    uint64_t prng;

    /* Persistent state (reported in the hard state). */
    uint64_t term;
    uint64_t vote;
    struct raft__log log;

    /* Volatile state. */
    uint8_t role; /* enum raft_role */
    uint64_t lead;
    unsigned election_elapsed;   /* ticks since the last reset */
    unsigned heartbeat_elapsed;  /* ticks, leader only */
    unsigned randomized_timeout; /* ticks in [election_tick, 2 * election_tick) */
    uint64_t transferee;         /* leadership transfer target, RAFT_NONE if none */
    uint64_t pending_conf_index; /* leader: index of the last conf change appended */
    /* Term of a TIMEOUT_NOW this follower could not act on yet because conf
     * changes were committed but unapplied; it campaigns once they are
     * applied (0: none). */
    uint64_t timeout_now_term;
    /* Leader: proposals were appended since the last broadcast. They go out
     * together when the update is collected, one APP per follower for a
     * whole batch of proposals rather than one per proposal. */
    bool bcast_pending;

    /* Configuration and per-member progress, sorted by id. */
    struct raft__progress prs[RAFT_MEMBERS_MAX];
    unsigned n_prs;
    struct raft_conf_state conf; /* the same members as prs, kept by tracker_set */

    /* ReadIndex: requests being confirmed, and those waiting for the
     * leader's first commit in its term. */
    struct raft__read_queue reads;
    struct raft__read_queue pend_reads;
    uint64_t read_seq; /* last sequence number handed out */
    struct read_state_int *rs;
    size_t n_rs;
    size_t cap_rs;

    /* Double-buffered output (see the file comment). */
    struct outbox box[2];
    struct raft__arena arena[2];
    unsigned cur;
    bool outstanding; /* an update was handed out and not yet advanced */

    /* What the last update reported, to detect changes. */
    struct raft_hard_state prev_hs;
    uint64_t prev_lead;
    uint8_t prev_role;
};

static void bcast_append(struct raft *r);
static void bcast_heartbeat(struct raft *r, uint64_t seq);
static bool maybe_commit(struct raft *r);
static void release_pending_reads(struct raft *r);

/* ------------------------------------------------------------------ */
/* Members                                                            */

static struct raft__progress *pr_get(struct raft *r, uint64_t id) {
    for (unsigned i = 0; i < r->n_prs; i++)
        if (r->prs[i].id == id) return &r->prs[i];
    return NULL;
}

static unsigned n_voters(const struct raft *r) {
    unsigned n = 0;
    for (unsigned i = 0; i < r->n_prs; i++)
        if (!r->prs[i].is_learner) n++;
    return n;
}

static bool is_voter(struct raft *r, uint64_t id) {
    struct raft__progress *pr = pr_get(r, id);
    return pr != NULL && !pr->is_learner;
}

/* May this node campaign? Only a voter without a snapshot to install. */
static bool promotable(struct raft *r) {
    return is_voter(r, r->id) && !r->log.u.has_snapshot;
}

static void conf_state_of(const struct raft *r, struct raft_conf_state *cs) {
    *cs = r->conf;
}

/* Rebuilds the cached configuration from prs (sorted ids, zeroed tail). */
static void conf_refresh(struct raft *r) {
    struct raft_conf_state *cs = &r->conf;
    memset(cs, 0, sizeof(*cs));
    for (unsigned i = 0; i < r->n_prs; i++) {
        if (r->prs[i].is_learner)
            cs->learners[cs->n_learners++] = r->prs[i].id;
        else
            cs->voters[cs->n_voters++] = r->prs[i].id;
    }
}

static int conf_validate(const struct raft_conf_state *cs) {
    if (cs->n_voters > RAFT_MEMBERS_MAX || cs->n_learners > RAFT_MEMBERS_MAX) return RAFT_EINVAL;
    if (cs->n_voters + cs->n_learners > RAFT_MEMBERS_MAX) return RAFT_EINVAL;
    uint64_t ids[2 * RAFT_MEMBERS_MAX];
    unsigned n = 0;
    for (uint32_t i = 0; i < cs->n_voters; i++) ids[n++] = cs->voters[i];
    for (uint32_t i = 0; i < cs->n_learners; i++) ids[n++] = cs->learners[i];
    for (unsigned i = 0; i < n; i++) {
        if (ids[i] == RAFT_NONE) return RAFT_EINVAL;
        for (unsigned j = i + 1; j < n; j++)
            if (ids[i] == ids[j]) return RAFT_EINVAL;
    }
    return 0;
}

/*
 * Replaces the progress set by the members of cs. With keep, members already
 * known keep their progress (a conf change); otherwise every member starts
 * afresh (a snapshot). Allocates first, so ENOMEM leaves r unchanged.
 */
static int tracker_set(struct raft *r, const struct raft_conf_state *cs, bool keep) {
    ASSERT(conf_validate(cs) == 0);
    struct raft__progress np[RAFT_MEMBERS_MAX];
    bool taken[RAFT_MEMBERS_MAX] = {false};
    bool fresh_buf[RAFT_MEMBERS_MAX] = {false};
    unsigned n = 0;
    uint64_t last = raft__log_last_index(&r->log);

    for (uint32_t k = 0; k < cs->n_voters + cs->n_learners; k++) {
        bool learner = k >= cs->n_voters;
        uint64_t id = learner ? cs->learners[k - cs->n_voters] : cs->voters[k];
        /* Insertion keeps np sorted by id. */
        unsigned pos = n;
        while (pos > 0 && np[pos - 1].id > id) {
            np[pos] = np[pos - 1];
            fresh_buf[pos] = fresh_buf[pos - 1];
            pos--;
        }
        struct raft__progress *old = NULL;
        unsigned old_i = 0;
        for (unsigned i = 0; i < r->n_prs; i++) {
            if (r->prs[i].id == id) {
                old = &r->prs[i];
                old_i = i;
            }
        }
        struct raft__progress *p = &np[pos];
        if (old != NULL && keep) {
            *p = *old;
            taken[old_i] = true;
            fresh_buf[pos] = false;
        } else {
            memset(p, 0, sizeof(*p));
            p->id = id;
            p->next = last > 1 ? last : 1;
            p->recent_active = true;
            p->vote = -1;
            p->state = RAFT__PR_PROBE;
            p->ins.size = r->max_inflight;
            if (old != NULL) {
                p->ins.buf = old->ins.buf;
                taken[old_i] = true;
                fresh_buf[pos] = false;
            } else {
                p->ins.buf = qfs_malloc(sizeof(uint64_t) * r->max_inflight);
                fresh_buf[pos] = true;
                if (p->ins.buf == NULL) {
                    n++;
                    for (unsigned i = 0; i < n; i++)
                        if (fresh_buf[i]) free(np[i].ins.buf);
                    return RAFT_ENOMEM;
                }
            }
        }
        p->is_learner = learner;
        n++;
    }
    for (unsigned i = 0; i < r->n_prs; i++)
        if (!taken[i]) free(r->prs[i].ins.buf);
    memcpy(r->prs, np, n * sizeof(np[0]));
    r->n_prs = n;
    conf_refresh(r);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Messages                                                           */

static struct raft__arena *cur_arena(struct raft *r) {
    return &r->arena[r->cur];
}

static bool is_vote_type(uint8_t type) {
    return type == RAFT_MSG_VOTE || type == RAFT_MSG_VOTE_RESP || type == RAFT_MSG_PREVOTE ||
           type == RAFT_MSG_PREVOTE_RESP;
}

/*
 * Appends a zeroed message to the building outbox, NULL if out of memory
 * (the message is then lost, which Raft tolerates). Vote messages carry the
 * term the caller sets; forwarded proposals and reads carry term 0 ("local"
 * at the receiver, as etcd); everything else carries the current term.
 */
static struct raft_msg *msg_new(struct raft *r, uint8_t type, uint64_t to) {
    ASSERT(type < RAFT_MSG_TYPE_COUNT_);
    ASSERT(to != RAFT_NONE);
    struct outbox *b = &r->box[r->cur];
    if (b->n >= RAFT__OUTBOX_MAX) return NULL;
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        struct raft_msg *msgs = qfs_realloc(b->msgs, cap * sizeof(*msgs));
        if (msgs == NULL) return NULL;
        b->msgs = msgs;
        b->cap = cap;
    }
    struct raft_msg *m = &b->msgs[b->n++];
    memset(m, 0, sizeof(*m));
    m->type = type;
    m->from = r->id;
    m->to = to;
    if (!is_vote_type(type) && type != RAFT_MSG_PROP && type != RAFT_MSG_READ_INDEX)
        m->term = r->term;
    return m;
}

/* ------------------------------------------------------------------ */
/* Role changes                                                       */

static void reset_randomized_timeout(struct raft *r) {
    r->randomized_timeout =
        r->election_tick + (unsigned)(raft__prng_next(&r->prng) % r->election_tick);
}

static void reset_votes(struct raft *r) {
    for (unsigned i = 0; i < r->n_prs; i++) r->prs[i].vote = -1;
}

static void reset(struct raft *r, uint64_t term) {
    if (r->term != term) {
        r->term = term;
        r->vote = RAFT_NONE;
    }
    r->lead = RAFT_NONE;
    r->election_elapsed = 0;
    r->heartbeat_elapsed = 0;
    reset_randomized_timeout(r);
    r->transferee = RAFT_NONE;
    uint64_t last = raft__log_last_index(&r->log);
    uint64_t stable = raft__log_stable_last_index(&r->log);
    for (unsigned i = 0; i < r->n_prs; i++) {
        struct raft__progress *pr = &r->prs[i];
        pr->match = 0;
        pr->next = last + 1;
        pr->pending_snapshot = 0;
        pr->state = RAFT__PR_PROBE;
        pr->probe_sent = false;
        pr->recent_active = false;
        pr->vote = -1;
        raft__inflights_reset(&pr->ins);
        /* Only what the driver persisted counts for commitment. */
        if (pr->id == r->id) pr->match = stable < last ? stable : last;
    }
    r->pending_conf_index = 0;
    r->bcast_pending = false;
    raft__rq_clear(&r->reads);
    raft__rq_clear(&r->pend_reads);
}

static void become_follower(struct raft *r, uint64_t term, uint64_t lead) {
    reset(r, term);
    r->lead = lead;
    r->role = RAFT_FOLLOWER;
}

static void become_candidate(struct raft *r) {
    ASSERT(r->role != RAFT_LEADER);
    reset(r, r->term + 1);
    r->vote = r->id;
    r->role = RAFT_CANDIDATE;
}

static void become_pre_candidate(struct raft *r) {
    ASSERT(r->role != RAFT_LEADER);
    /* No term change and no vote: a pre-election disturbs nobody. */
    reset_votes(r);
    r->lead = RAFT_NONE;
    r->role = RAFT_PRE_CANDIDATE;
}

/*
 * Out of memory for the no-op returns RAFT_ENOMEM with r unchanged (still
 * a candidate with its votes), so the event that won the election can be
 * fed again. campaign() reserves the room beforehand where it cannot
 * report the error.
 */
static int become_leader(struct raft *r) {
    ASSERT(r->role != RAFT_FOLLOWER);
    ASSERT(r->role != RAFT_LEADER);
    int rc = raft__log_reserve(&r->log, 1);
    if (rc != 0) return rc;
    reset(r, r->term);
    r->lead = r->id;
    r->role = RAFT_LEADER;
    struct raft__progress *self = pr_get(r, r->id);
    if (self == NULL) {
        /* Removed from the configuration during the election. */
        become_follower(r, r->term, RAFT_NONE);
        return 0;
    }
    raft__pr_become_replicate(self);
    /* Conservatively treat anything uncommitted as a pending conf change. */
    uint64_t last = raft__log_last_index(&r->log);
    r->pending_conf_index = last;
    /* The no-op of the new term: committing it commits everything before. */
    struct raft_entry noop = {.term = r->term, .index = last + 1, .type = RAFT_ENTRY_NORMAL};
    rc = raft__log_append(&r->log, &noop, 1);
    ASSERT(rc == 0); /* no data, room reserved above */
    return 0;
}

static enum vote_result tally(struct raft *r) {
    unsigned voters = 0, granted = 0, rejected = 0;
    for (unsigned i = 0; i < r->n_prs; i++) {
        if (r->prs[i].is_learner) continue;
        voters++;
        if (r->prs[i].vote == 1)
            granted++;
        else if (r->prs[i].vote == 0)
            rejected++;
    }
    unsigned q = voters / 2 + 1;
    if (granted >= q) return VOTE_WON;
    if (voters - rejected < q) return VOTE_LOST;
    return VOTE_PENDING;
}

static enum vote_result poll(struct raft *r, uint64_t id, bool granted) {
    struct raft__progress *pr = pr_get(r, id);
    if (pr != NULL && !pr->is_learner && pr->vote < 0) pr->vote = granted ? 1 : 0;
    return tally(r);
}

/*
 * Returns 0 or RAFT_ENOMEM with r unchanged: the room for the no-op of a
 * single voter's immediate win is reserved before anything changes.
 */
static int campaign(struct raft *r, enum campaign_type t) {
    if (!promotable(r)) return 0;
    int rc = 0;
    if (n_voters(r) == 1) rc = raft__log_reserve(&r->log, 1);
    if (rc != 0) return rc;
    uint64_t term;
    uint8_t type;
    if (t == CAMPAIGN_PRE) {
        become_pre_candidate(r);
        type = RAFT_MSG_PREVOTE;
        term = r->term + 1; /* the term we would campaign in */
    } else {
        become_candidate(r);
        type = RAFT_MSG_VOTE;
        term = r->term;
    }
    if (poll(r, r->id, true) == VOTE_WON) {
        /* A single voter wins at once (room reserved: cannot fail). */
        rc = t == CAMPAIGN_PRE ? campaign(r, CAMPAIGN_ELECTION) : become_leader(r);
        ASSERT(rc == 0);
        return 0;
    }
    uint64_t li = raft__log_last_index(&r->log);
    uint64_t lt = raft__log_last_term(&r->log);
    for (unsigned i = 0; i < r->n_prs; i++) {
        const struct raft__progress *pr = &r->prs[i];
        if (pr->is_learner || pr->id == r->id) continue;
        struct raft_msg *m = msg_new(r, type, pr->id);
        if (m == NULL) continue;
        m->term = term;
        m->index = li;
        m->log_term = lt;
        if (t == CAMPAIGN_TRANSFER) {
            m->context.base = RAFT_TRANSFER_CONTEXT;
            m->context.len = sizeof(RAFT_TRANSFER_CONTEXT) - 1;
        }
    }
    return 0;
}

/*
 * Committed but unapplied conf changes block campaigning (etcd hup).
 * Returns 1 if there is one (or the storage cannot tell), 0 if not,
 * RAFT_ENOMEM if the scan ran out of memory.
 */
static int has_unapplied_conf_change(struct raft *r) {
    struct raft__log *l = &r->log;
    if (l->committed <= l->applied) return 0;
    uint64_t lo = l->applied + 1;
    uint64_t first = raft__log_first_index(l);
    if (lo < first) lo = first;
    bool found = false;
    struct raft__arena scratch = {0};
    while (lo <= l->committed && !found) {
        struct raft_entry *ents = NULL;
        size_t n = 0;
        int rc = raft__log_slice(l, &scratch, lo, l->committed + 1, RAFT__SCAN_BYTES, &ents, &n);
        if (rc == RAFT_ENOMEM) {
            raft__arena_free(&scratch);
            return rc;
        }
        if (rc != 0 || n == 0) {
            found = true; /* cannot tell: be conservative */
            break;
        }
        for (size_t i = 0; i < n; i++)
            if (ents[i].type == RAFT_ENTRY_CONF_CHANGE) found = true;
        lo = ents[n - 1].index + 1;
        raft__arena_reset(&scratch);
    }
    raft__arena_free(&scratch);
    return found ? 1 : 0;
}

/* Returns 0 (campaigning, or not allowed to) or RAFT_ENOMEM with r unchanged. */
static int hup(struct raft *r, enum campaign_type t) {
    if (r->role == RAFT_LEADER) return 0;
    if (!promotable(r)) return 0;
    int pending = has_unapplied_conf_change(r);
    if (pending != 0) return pending < 0 ? pending : 0;
    return campaign(r, t);
}

/* ------------------------------------------------------------------ */
/* Replication (leader)                                               */

static uint64_t app_bytes_limit(const struct raft *r) {
    return r->max_size_per_msg < RAFT__APP_BYTES_MAX ? r->max_size_per_msg : RAFT__APP_BYTES_MAX;
}

/* Sends a snapshot to pr if it is active; true if one went out. */
static bool send_snapshot(struct raft *r, struct raft__progress *pr) {
    if (!pr->recent_active) return false;
    struct raft_snapshot snap;
    if (raft__log_snapshot(&r->log, &snap) != 0) return false;
    if (snap.meta.index == 0) return false; /* nothing to send yet */
    struct raft_buf data;
    if (raft__arena_copy_buf(cur_arena(r), snap.data.base, snap.data.len, &data) != 0) return false;
    struct raft_msg *m = msg_new(r, RAFT_MSG_SNAP, pr->id);
    if (m == NULL) return false;
    m->has_snapshot = true;
    m->snapshot.meta = snap.meta;
    m->snapshot.data = data;
    raft__pr_become_snapshot(pr, snap.meta.index);
    return true;
}

/*
 * Sends pr the entries from pr->next (or, with send_if_empty, an empty APP
 * carrying the commit index); a snapshot if those entries are compacted.
 * Returns true if a message went out.
 */
static bool maybe_send_append(struct raft *r, struct raft__progress *pr, bool send_if_empty) {
    if (raft__pr_is_paused(pr)) return false;
    uint64_t last = raft__log_last_index(&r->log);
    ASSERT(pr->next >= 1);
    ASSERT(pr->next <= last + 1);
    uint64_t prev_term = 0;
    int rc = raft__log_term(&r->log, pr->next - 1, &prev_term);
    struct raft_entry *ents = NULL;
    size_t n = 0;
    if (rc == 0) {
        uint64_t hi = last + 1;
        if (hi - pr->next > RAFT_DECODE_ENTRIES_MAX) hi = pr->next + RAFT_DECODE_ENTRIES_MAX;
        rc = raft__log_slice(&r->log, cur_arena(r), pr->next, hi, app_bytes_limit(r), &ents, &n);
    }
    if (rc == RAFT_ECOMPACTED) return send_snapshot(r, pr);
    if (rc != 0) return false;
    if (n == 0 && !send_if_empty) return false;
    struct raft_msg *m = msg_new(r, RAFT_MSG_APP, pr->id);
    if (m == NULL) return false;
    m->index = pr->next - 1;
    m->log_term = prev_term;
    m->entries = ents;
    m->n_entries = (uint32_t)n;
    m->commit = r->log.committed;
    if (n > 0) {
        uint64_t sent = ents[n - 1].index;
        if (pr->state == RAFT__PR_REPLICATE) {
            /* Optimistic: the next APP continues where this one ends. */
            pr->next = sent + 1;
            raft__inflights_add(&pr->ins, sent);
        } else {
            ASSERT(pr->state == RAFT__PR_PROBE);
            pr->probe_sent = true;
        }
    }
    return true;
}

static void send_append(struct raft *r, struct raft__progress *pr) {
    maybe_send_append(r, pr, true);
}

static void bcast_append(struct raft *r) {
    r->bcast_pending = false;
    for (unsigned i = 0; i < r->n_prs; i++)
        if (r->prs[i].id != r->id) send_append(r, &r->prs[i]);
}

static void send_timeout_now(struct raft *r, uint64_t to) {
    (void)msg_new(r, RAFT_MSG_TIMEOUT_NOW, to);
}

/* Heartbeats carry the newest read request's sequence number, if any. */
static void bcast_heartbeat(struct raft *r, uint64_t seq) {
    if (seq == 0 && r->reads.n > 0) seq = raft__rq_at(&r->reads, r->reads.n - 1)->seq;
    struct raft_buf ctx = {NULL, 0};
    if (seq != 0) {
        uint8_t *p = raft__arena_alloc(cur_arena(r), 8);
        if (p != NULL) {
            for (int i = 0; i < 8; i++) p[i] = (uint8_t)(seq >> (8 * i));
            ctx.base = p;
            ctx.len = 8;
        }
    }
    for (unsigned i = 0; i < r->n_prs; i++) {
        const struct raft__progress *pr = &r->prs[i];
        if (pr->id == r->id) continue;
        struct raft_msg *m = msg_new(r, RAFT_MSG_HEARTBEAT, pr->id);
        if (m == NULL) continue;
        /* Never tell a follower to commit beyond what it is known to hold. */
        m->commit = pr->match < r->log.committed ? pr->match : r->log.committed;
        m->context = ctx;
    }
}

/* Advances the commit index from the voters' match indexes. */
static bool maybe_commit(struct raft *r) {
    uint64_t m[RAFT_MEMBERS_MAX];
    unsigned n = 0;
    for (unsigned i = 0; i < r->n_prs; i++) {
        if (r->prs[i].is_learner) continue;
        /* Insertion sort, descending. */
        uint64_t v = r->prs[i].match;
        unsigned j = n++;
        while (j > 0 && m[j - 1] < v) {
            m[j] = m[j - 1];
            j--;
        }
        m[j] = v;
    }
    if (n == 0) return false;
    uint64_t mci = m[n / 2]; /* held by a majority: n/2 + 1 voters */
    if (mci <= r->log.committed) return false;
#if RAFT__UNSAFE_COMMIT
    /* Negative control: counts replicas of entries from earlier terms too. */
    if (raft__log_term_or_zero(&r->log, mci) == 0) return false;
#else
    /* Raft 5.4.2: only entries of the current term commit by counting. */
    if (raft__log_term_or_zero(&r->log, mci) != r->term) return false;
#endif
    raft__log_commit_to(&r->log, mci);
    return true;
}

static bool quorum_active(struct raft *r) {
    unsigned voters = 0, active = 0;
    for (unsigned i = 0; i < r->n_prs; i++) {
        if (r->prs[i].is_learner) continue;
        voters++;
        if (r->prs[i].recent_active || r->prs[i].id == r->id) active++;
    }
    return active >= voters / 2 + 1;
}

/* ------------------------------------------------------------------ */
/* ReadIndex                                                          */

static void push_read_state(struct raft *r, uint64_t index, const void *ctx, size_t len) {
    ASSERT(len <= RAFT_READ_CTX_MAX);
    if (r->n_rs >= RAFT__READ_STATES_MAX) return; /* the requester times out */
    if (r->n_rs == r->cap_rs) {
        size_t cap = r->cap_rs ? r->cap_rs * 2 : 8;
        struct read_state_int *rs = qfs_realloc(r->rs, cap * sizeof(*rs));
        if (rs == NULL) return;
        r->rs = rs;
        r->cap_rs = cap;
    }
    struct read_state_int *s = &r->rs[r->n_rs++];
    s->index = index;
    s->ctx_len = (uint8_t)len;
    if (len > 0) memcpy(s->ctx, ctx, len);
}

static void read_respond(struct raft *r, uint64_t from, uint64_t index, const void *ctx,
                         size_t len) {
    if (from == r->id) {
        push_read_state(r, index, ctx, len);
        return;
    }
    struct raft_buf c;
    if (raft__arena_copy_buf(cur_arena(r), ctx, len, &c) != 0) return;
    struct raft_msg *m = msg_new(r, RAFT_MSG_READ_INDEX_RESP, from);
    if (m == NULL) return;
    m->index = index;
    m->context = c;
}

static bool committed_entry_in_current_term(struct raft *r) {
    return raft__log_term_or_zero(&r->log, r->log.committed) == r->term;
}

/* Queues a request for heartbeat confirmation; returns its seq or 0. */
static uint64_t read_enqueue(struct raft *r, uint64_t from, const void *ctx, size_t len) {
    struct raft__read_req *req = raft__rq_push(&r->reads);
    if (req == NULL) return 0;
    req->seq = ++r->read_seq;
    req->index = r->log.committed;
    req->from = from;
    req->ctx_len = (uint8_t)len;
    if (len > 0) memcpy(req->ctx, ctx, len);
    raft__rq_ack(req, r->id);
    return req->seq;
}

static int leader_read_index(struct raft *r, uint64_t from, const void *ctx, size_t len) {
    if (len > RAFT_READ_CTX_MAX) return RAFT_ETOOBIG;
    if (n_voters(r) == 1 && is_voter(r, r->id)) {
        /* Nobody else can lead: the commit index is current. */
        read_respond(r, from, r->log.committed, ctx, len);
        return 0;
    }
    if (!committed_entry_in_current_term(r)) {
        /* The commit index may lag the previous leader's; wait for the no-op. */
        if (r->pend_reads.n >= RAFT__READS_PENDING_MAX) return RAFT_EDROPPED;
        struct raft__read_req *req = raft__rq_push(&r->pend_reads);
        if (req == NULL) return RAFT_ENOMEM;
        req->from = from;
        req->ctx_len = (uint8_t)len;
        if (len > 0) memcpy(req->ctx, ctx, len);
        return 0;
    }
    if (r->reads.n >= RAFT__READS_PENDING_MAX) return RAFT_EDROPPED;
    uint64_t seq = read_enqueue(r, from, ctx, len);
    if (seq == 0) return RAFT_ENOMEM;
    bcast_heartbeat(r, seq);
    return 0;
}

static void release_pending_reads(struct raft *r) {
    if (r->pend_reads.n == 0 || !committed_entry_in_current_term(r)) return;
    uint64_t seq = 0;
    for (size_t i = 0; i < r->pend_reads.n; i++) {
        struct raft__read_req *p = raft__rq_at(&r->pend_reads, i);
        uint64_t s = read_enqueue(r, p->from, p->ctx, p->ctx_len);
        if (s != 0) seq = s;
    }
    raft__rq_clear(&r->pend_reads);
    if (seq != 0) bcast_heartbeat(r, seq);
}

static void read_ack(struct raft *r, uint64_t from, const struct raft_buf *ctx) {
    if (ctx->len != 8) return;
    const uint8_t *p = ctx->base;
    uint64_t seq = 0;
    for (int i = 0; i < 8; i++) seq |= (uint64_t)p[i] << (8 * i);
    struct raft__read_req *req = raft__rq_find(&r->reads, seq);
    if (req == NULL) return;
    raft__rq_ack(req, from);
    unsigned acks = 0;
    for (unsigned i = 0; i < req->n_acks; i++)
        if (is_voter(r, req->acks[i])) acks++;
    if (acks < n_voters(r) / 2 + 1) return;
    /* A quorum confirmed leadership after every request up to seq arrived. */
    size_t k = 0;
    while (k < r->reads.n) {
        struct raft__read_req *q = raft__rq_at(&r->reads, k);
        k++;
        read_respond(r, q->from, q->index, q->ctx, q->ctx_len);
        if (q->seq == seq) break;
    }
    raft__rq_pop_front(&r->reads, k);
}

/* The read context of a READ_INDEX message (etcd puts it in entries[0]). */
static struct raft_buf read_ctx_of(const struct raft_msg *m) {
    if (m->context.len == 0 && m->n_entries == 1) return m->entries[0].data;
    return m->context;
}

/* ------------------------------------------------------------------ */
/* Configuration changes                                              */

static int find_id(const uint64_t *ids, uint32_t n, uint64_t id) {
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] == id) return (int)i;
    return -1;
}

static void ids_remove(uint64_t *ids, uint32_t *n, int i) {
    memmove(&ids[i], &ids[i + 1], (*n - (uint32_t)i - 1) * sizeof(*ids));
    (*n)--;
}

static void ids_insert_sorted(uint64_t *ids, uint32_t *n, uint64_t id) {
    uint32_t pos = *n;
    while (pos > 0 && ids[pos - 1] > id) {
        ids[pos] = ids[pos - 1];
        pos--;
    }
    ids[pos] = id;
    (*n)++;
}

/*
 * Applies cc to cs. *changed tells whether cs changed. With strict (a
 * proposal being checked), changes that would be no-ops are refused too.
 */
static int conf_apply(struct raft_conf_state *cs, const struct raft_conf_change *cc, bool strict,
                      bool *changed) {
    *changed = false;
    uint64_t id = cc->node_id;
    if (id == RAFT_NONE) return RAFT_EINVAL;
    int vi = find_id(cs->voters, cs->n_voters, id);
    int li = find_id(cs->learners, cs->n_learners, id);
    bool full = cs->n_voters + cs->n_learners >= RAFT_MEMBERS_MAX;
    switch (cc->type) {
    case RAFT_CC_ADD_VOTER:
        if (vi >= 0) return strict ? RAFT_EINVAL : 0;
        if (li >= 0) {
            ids_remove(cs->learners, &cs->n_learners, li);
        } else if (full) {
            return RAFT_EINVAL;
        }
        ids_insert_sorted(cs->voters, &cs->n_voters, id);
        break;
    case RAFT_CC_ADD_LEARNER:
        if (vi >= 0) return RAFT_EINVAL; /* no demotion */
        if (li >= 0) return strict ? RAFT_EINVAL : 0;
        if (full) return RAFT_EINVAL;
        ids_insert_sorted(cs->learners, &cs->n_learners, id);
        break;
    case RAFT_CC_REMOVE:
        if (vi >= 0) {
            if (cs->n_voters == 1) return RAFT_EINVAL; /* never remove the last voter */
            ids_remove(cs->voters, &cs->n_voters, vi);
        } else if (li >= 0) {
            ids_remove(cs->learners, &cs->n_learners, li);
        } else {
            return strict ? RAFT_ENOTMEMBER : 0;
        }
        break;
    default:
        return RAFT_EINVAL;
    }
    *changed = true;
    return 0;
}

/*
 * The leader applied its own removal. Stepping down at once can wedge the
 * cluster: the remaining voters may not know the removal is committed (so
 * they still need this node's vote) while this node's log is longer than
 * theirs (so it refuses them) and, outside its configuration, it never
 * campaigns. Instead it keeps leading - accepting no proposals, replicating
 * and committing with the new configuration's quorum - and hands leadership
 * to its most up-to-date voter: once that voter's log matches ours it gets
 * TIMEOUT_NOW and this node becomes a follower. Until then the handover is
 * retried every election timeout (a successor's higher term also ends it).
 */
static void leader_hand_over(struct raft *r) {
    struct raft__progress *best = NULL;
    for (unsigned i = 0; i < r->n_prs; i++) {
        struct raft__progress *pr = &r->prs[i];
        if (pr->is_learner || pr->id == r->id) continue;
        if (best == NULL || pr->match > best->match) best = pr;
    }
    if (best == NULL) {
        become_follower(r, r->term, RAFT_NONE); /* cannot happen: a voter remains */
        return;
    }
    r->transferee = best->id;
    if (best->match == raft__log_last_index(&r->log)) {
        send_timeout_now(r, best->id);
        /* With a voter as up to date as we are, stepping down is safe: our
         * vote, if still needed, goes to it even if TIMEOUT_NOW is lost. */
        become_follower(r, r->term, RAFT_NONE);
    } else {
        send_append(r, best);
    }
}

/* ------------------------------------------------------------------ */
/* Proposals                                                          */

static int check_conf_proposal(struct raft *r, const struct raft_entry *e) {
    struct raft_conf_change cc;
    int rc = raft_conf_change_decode(e->data.base, e->data.len, &cc);
    if (rc != 0) return RAFT_EINVAL;
    struct raft_conf_state cs;
    conf_state_of(r, &cs);
    bool changed;
    return conf_apply(&cs, &cc, true, &changed);
}

static int leader_propose(struct raft *r, const struct raft_entry *src, size_t n) {
    if (n == 0) return RAFT_EINVAL;
    if (pr_get(r, r->id) == NULL) return RAFT_EDROPPED; /* removed, stepping down */
    if (r->transferee != RAFT_NONE) return RAFT_EDROPPED;
    bool conf = false;
    for (size_t i = 0; i < n; i++) {
        if (src[i].data.len > RAFT_ENTRY_BYTES_MAX) return RAFT_ETOOBIG;
        if (src[i].type > RAFT_ENTRY_CONF_CHANGE) return RAFT_EINVAL;
        if (src[i].type != RAFT_ENTRY_CONF_CHANGE) continue;
        if (conf || r->pending_conf_index > r->log.applied) return RAFT_ECONFPENDING;
        int rc = check_conf_proposal(r, &src[i]);
        if (rc != 0) return rc;
        conf = true;
    }
    struct raft_entry stack[8];
    struct raft_entry *ents = n <= 8 ? stack : qfs_malloc(n * sizeof(*ents));
    if (ents == NULL) return RAFT_ENOMEM;
    uint64_t last = raft__log_last_index(&r->log);
    uint64_t conf_index = 0;
    for (size_t i = 0; i < n; i++) {
        ents[i] = src[i];
        ents[i].term = r->term;
        ents[i].index = last + 1 + i;
        if (ents[i].data.len == 0) ents[i].data.base = NULL;
        if (ents[i].type == RAFT_ENTRY_CONF_CHANGE) conf_index = ents[i].index;
    }
    int rc = raft__log_append(&r->log, ents, n);
    if (ents != stack) free(ents);
    if (rc != 0) return rc;
    if (conf_index != 0) r->pending_conf_index = conf_index;
    r->bcast_pending = true;
    return 0;
}

static int forward_proposal(struct raft *r, const struct raft_entry *src, size_t n) {
    if (r->lead == RAFT_NONE) return RAFT_ENOLEADER;
    if (r->disable_forwarding) return RAFT_ENOTLEADER;
    for (size_t i = 0; i < n; i++)
        if (src[i].data.len > RAFT_ENTRY_BYTES_MAX) return RAFT_ETOOBIG;
    struct raft_entry *ents = NULL;
    int rc = raft__arena_copy_entries(cur_arena(r), src, n, &ents);
    if (rc != 0) return rc;
    struct raft_msg *m = msg_new(r, RAFT_MSG_PROP, r->lead);
    if (m == NULL) return RAFT_ENOMEM;
    m->entries = ents;
    m->n_entries = (uint32_t)n;
    return 0;
}

static int propose_entries(struct raft *r, const struct raft_entry *e, size_t n) {
    switch (r->role) {
    case RAFT_LEADER:
        return leader_propose(r, e, n);
    case RAFT_FOLLOWER:
        return forward_proposal(r, e, n);
    default:
        return RAFT_ENOLEADER;
    }
}

/* ------------------------------------------------------------------ */
/* Leadership transfer                                                */

static int leader_transfer(struct raft *r, uint64_t target) {
    struct raft__progress *pr = pr_get(r, target);
    if (pr == NULL || pr->is_learner) return RAFT_ENOTMEMBER;
    if (r->transferee != RAFT_NONE) {
        if (r->transferee == target) return 0; /* already under way */
        r->transferee = RAFT_NONE;
    }
    if (target == r->id) return 0;
    /* The transfer must finish within one election timeout. */
    r->election_elapsed = 0;
    r->transferee = target;
    if (pr->match == raft__log_last_index(&r->log))
        send_timeout_now(r, target);
    else
        send_append(r, pr);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Message handling                                                   */

static void send_app_resp(struct raft *r, uint64_t to, uint64_t index) {
    struct raft_msg *m = msg_new(r, RAFT_MSG_APP_RESP, to);
    if (m != NULL) m->index = index;
}

static int validate_entries(const struct raft_msg *m) {
    uint64_t prev_term = m->log_term;
    for (uint32_t i = 0; i < m->n_entries; i++) {
        const struct raft_entry *e = &m->entries[i];
        if (e->index != m->index + 1 + i) return RAFT_EMALFORMED;
        if (e->term < prev_term || e->term > m->term) return RAFT_EMALFORMED;
        if (e->type > RAFT_ENTRY_CONF_CHANGE) return RAFT_EMALFORMED;
        if (e->data.len > 0 && e->data.base == NULL) return RAFT_EMALFORMED;
        prev_term = e->term;
    }
    return 0;
}

static int handle_append(struct raft *r, const struct raft_msg *m) {
    int rc = validate_entries(m);
    if (rc != 0) return rc;
    uint64_t lastnewi = 0;
    bool ok = false;
    uint64_t committed = r->log.committed;
    if (m->index < committed) {
        /* Our entries up to the commit index are in every later leader's
         * log (leader completeness): skip them, merge the rest, so that a
         * duplicate or late APP still acknowledges all it carries. */
        uint64_t msg_last = m->index + m->n_entries;
        if (msg_last > committed) {
            size_t k = (size_t)(committed - m->index);
            rc = raft__log_maybe_append(&r->log, committed, m->entries[k - 1].term, m->commit,
                                        m->entries + k, m->n_entries - k, &lastnewi, &ok);
            if (rc != 0) return rc;
        }
        send_app_resp(r, m->from, ok ? lastnewi : committed);
        return 0;
    }
    rc = raft__log_maybe_append(&r->log, m->index, m->log_term, m->commit, m->entries, m->n_entries,
                                &lastnewi, &ok);
    if (rc != 0) return rc;
    if (ok) {
        send_app_resp(r, m->from, lastnewi);
        return 0;
    }
    /* Reject with a hint: the last index whose term is <= the leader's term
     * at m->index lets the leader skip a whole conflicting term at once. */
    uint64_t last = raft__log_last_index(&r->log);
    uint64_t hint = m->index < last ? m->index : last;
    uint64_t hint_term = 0;
    hint = raft__log_find_conflict_by_term(&r->log, hint, m->log_term, &hint_term);
    struct raft_msg *resp = msg_new(r, RAFT_MSG_APP_RESP, m->from);
    if (resp == NULL) return 0;
    resp->index = m->index;
    resp->reject = true;
    resp->reject_hint = hint;
    resp->log_term = hint_term;
    return 0;
}

static void handle_heartbeat(struct raft *r, const struct raft_msg *m) {
    uint64_t last = raft__log_last_index(&r->log);
    raft__log_commit_to(&r->log, m->commit < last ? m->commit : last);
    struct raft_buf ctx;
    if (raft__arena_copy_buf(cur_arena(r), m->context.base, m->context.len, &ctx) != 0) return;
    struct raft_msg *resp = msg_new(r, RAFT_MSG_HEARTBEAT_RESP, m->from);
    if (resp != NULL) resp->context = ctx;
}

/* Installs snapshot s if it is news; returns 1 if installed, 0 if not. */
static int restore(struct raft *r, const struct raft_snapshot *s) {
    if (s->meta.index <= r->log.committed) return 0;
    if (r->role != RAFT_FOLLOWER) {
        /* Cannot happen through step (callers become followers first). */
        become_follower(r, r->term + 1, RAFT_NONE);
        return 0;
    }
    if (raft__log_match_term(&r->log, s->meta.index, s->meta.term)) {
        /* We hold the entries already: just fast-forward the commit. */
        raft__log_commit_to(&r->log, s->meta.index);
        return 0;
    }
    /* Allocate everything first: a failure leaves the node as it was. */
    void *data = NULL;
    if (s->data.len > 0) {
        data = qfs_malloc(s->data.len);
        if (data == NULL) return RAFT_ENOMEM;
        memcpy(data, s->data.base, s->data.len);
    }
    int rc = tracker_set(r, &s->meta.conf, false);
    if (rc != 0) {
        free(data);
        return rc;
    }
    raft__log_restore(&r->log, s, data);
    for (unsigned i = 0; i < r->n_prs; i++) {
        r->prs[i].next = s->meta.index + 1;
        r->prs[i].match = 0;
    }
    return 1;
}

static int handle_snapshot(struct raft *r, const struct raft_msg *m) {
    if (!m->has_snapshot) return RAFT_EMALFORMED;
    if (conf_validate(&m->snapshot.meta.conf) != 0) return RAFT_EMALFORMED;
    if (m->snapshot.data.len > 0 && m->snapshot.data.base == NULL) return RAFT_EMALFORMED;
    if (m->snapshot.meta.index == 0 || m->snapshot.meta.term == 0) return RAFT_EMALFORMED;
    if (m->snapshot.meta.term > m->term) return RAFT_EMALFORMED; /* from the future */
    int rc = restore(r, &m->snapshot);
    if (rc < 0) return rc;
    send_app_resp(r, m->from, rc == 1 ? raft__log_last_index(&r->log) : r->log.committed);
    return 0;
}

static void leader_handle_app_resp(struct raft *r, struct raft__progress *pr,
                                   const struct raft_msg *m) {
    pr->recent_active = true;
    uint64_t last = raft__log_last_index(&r->log);
    if (m->reject) {
        uint64_t next_probe = m->reject_hint;
        if (m->log_term > 0) {
            uint64_t t;
            next_probe = raft__log_find_conflict_by_term(&r->log, m->reject_hint, m->log_term, &t);
        }
        if (raft__pr_maybe_decr_to(pr, m->index, next_probe)) {
            if (pr->state == RAFT__PR_REPLICATE) raft__pr_become_probe(pr);
            if (pr->next > last + 1) pr->next = last + 1;
            send_append(r, pr);
        }
        return;
    }
    if (m->index > last) return; /* acknowledges entries we never sent */
    bool old_paused = raft__pr_is_paused(pr);
    if (!raft__pr_maybe_update(pr, m->index)) return;
    if (pr->state == RAFT__PR_PROBE) {
        raft__pr_become_replicate(pr);
    } else if (pr->state == RAFT__PR_SNAPSHOT) {
        /* The follower can continue from the log now. */
        if (pr->match + 1 >= raft__log_first_index(&r->log)) {
            raft__pr_become_probe(pr);
            raft__pr_become_replicate(pr);
        }
    } else {
        raft__inflights_free_le(&pr->ins, m->index);
    }
    if (maybe_commit(r)) {
        release_pending_reads(r);
        bcast_append(r);
    } else if (old_paused) {
        send_append(r, pr);
    }
    /* Fill the window: pipelining. */
    while (maybe_send_append(r, pr, false)) {
    }
    if (pr->id == r->transferee && pr->match == raft__log_last_index(&r->log)) {
        if (is_voter(r, r->id))
            send_timeout_now(r, pr->id);
        else
            leader_hand_over(r); /* removed: hand over and step down */
    }
}

static void leader_handle_heartbeat_resp(struct raft *r, struct raft__progress *pr,
                                         const struct raft_msg *m) {
    pr->recent_active = true;
    pr->probe_sent = false;
    /* A full window with a responsive follower: free one slot so a lost APP
     * cannot stall it forever. */
    if (pr->state == RAFT__PR_REPLICATE && raft__inflights_full(&pr->ins))
        raft__inflights_free_first_one(&pr->ins);
    if (pr->match < raft__log_last_index(&r->log)) send_append(r, pr);
    if (m->context.len > 0) read_ack(r, m->from, &m->context);
}

static int step_leader(struct raft *r, const struct raft_msg *m) {
    switch (m->type) {
    case RAFT_MSG_PROP:
        return leader_propose(r, m->entries, m->n_entries);
    case RAFT_MSG_READ_INDEX: {
        struct raft_buf ctx = read_ctx_of(m);
        return leader_read_index(r, m->from, ctx.base, ctx.len);
    }
    case RAFT_MSG_TRANSFER_LEADER:
        /* The target is in index; etcd-style messages name it in from. */
        return leader_transfer(r, m->index != RAFT_NONE ? m->index : m->from);
    default:
        break;
    }
    struct raft__progress *pr = pr_get(r, m->from);
    if (pr == NULL) return 0; /* not (or no longer) a member */
    switch (m->type) {
    case RAFT_MSG_APP_RESP:
        leader_handle_app_resp(r, pr, m);
        break;
    case RAFT_MSG_HEARTBEAT_RESP:
        leader_handle_heartbeat_resp(r, pr, m);
        break;
    default:
        break;
    }
    return 0;
}

static int step_candidate(struct raft *r, const struct raft_msg *m) {
    uint8_t resp_type = r->role == RAFT_PRE_CANDIDATE ? RAFT_MSG_PREVOTE_RESP : RAFT_MSG_VOTE_RESP;
    switch (m->type) {
    case RAFT_MSG_PROP:
        return RAFT_ENOLEADER;
    case RAFT_MSG_APP:
        become_follower(r, m->term, m->from);
        return handle_append(r, m);
    case RAFT_MSG_HEARTBEAT:
        become_follower(r, m->term, m->from);
        handle_heartbeat(r, m);
        return 0;
    case RAFT_MSG_SNAP:
        become_follower(r, m->term, m->from);
        return handle_snapshot(r, m);
    default:
        break;
    }
    if (m->type != resp_type) return 0;
    switch (poll(r, m->from, !m->reject)) {
    case VOTE_WON: {
        /* On RAFT_ENOMEM nothing changed but the recorded vote; feeding
         * the response again tallies the same win. */
        int rc;
        if (r->role == RAFT_PRE_CANDIDATE) {
            rc = campaign(r, CAMPAIGN_ELECTION);
        } else {
            rc = become_leader(r);
            if (rc == 0 && r->role == RAFT_LEADER) bcast_append(r);
        }
        if (rc != 0) return rc;
        break;
    }
    case VOTE_LOST:
        become_follower(r, r->term, RAFT_NONE);
        break;
    case VOTE_PENDING:
        break;
    }
    return 0;
}

static int step_follower(struct raft *r, const struct raft_msg *m) {
    switch (m->type) {
    case RAFT_MSG_PROP:
        return forward_proposal(r, m->entries, m->n_entries);
    case RAFT_MSG_APP:
        r->election_elapsed = 0;
        r->lead = m->from;
        return handle_append(r, m);
    case RAFT_MSG_HEARTBEAT:
        r->election_elapsed = 0;
        r->lead = m->from;
        handle_heartbeat(r, m);
        return 0;
    case RAFT_MSG_SNAP:
        r->election_elapsed = 0;
        r->lead = m->from;
        return handle_snapshot(r, m);
    case RAFT_MSG_TRANSFER_LEADER: {
        if (r->lead == RAFT_NONE) return RAFT_ENOLEADER;
        struct raft_msg *fw = msg_new(r, RAFT_MSG_TRANSFER_LEADER, r->lead);
        if (fw == NULL) return RAFT_ENOMEM;
        fw->index = m->index != RAFT_NONE ? m->index : m->from;
        return 0;
    }
    case RAFT_MSG_TIMEOUT_NOW: {
        /* Leadership transfer: campaign now, past any lease - or as soon as
         * the committed conf changes are applied. */
        int pending = promotable(r) ? has_unapplied_conf_change(r) : 0;
        if (pending < 0) return pending;
        if (pending) {
            r->timeout_now_term = r->term;
            return 0;
        }
        return hup(r, CAMPAIGN_TRANSFER);
    }
    case RAFT_MSG_READ_INDEX:
        /* Meant for a leader we no longer are (or never were). Forwarding it
         * under our id would route the answer to us, not to the requester:
         * drop it; the requester retries. */
        return 0;
    case RAFT_MSG_READ_INDEX_RESP: {
        struct raft_buf ctx = read_ctx_of(m);
        if (ctx.len > RAFT_READ_CTX_MAX) return RAFT_EMALFORMED;
        push_read_state(r, m->index, ctx.base, ctx.len);
        return 0;
    }
    default:
        return 0;
    }
}

static void handle_vote_request(struct raft *r, const struct raft_msg *m) {
    uint8_t resp_type = m->type == RAFT_MSG_VOTE ? RAFT_MSG_VOTE_RESP : RAFT_MSG_PREVOTE_RESP;
    bool can_vote = r->vote == m->from || (r->vote == RAFT_NONE && r->lead == RAFT_NONE) ||
                    (m->type == RAFT_MSG_PREVOTE && m->term > r->term);
    struct raft_msg *resp = msg_new(r, resp_type, m->from);
    if (resp == NULL) return;
    if (can_vote && raft__log_is_up_to_date(&r->log, m->index, m->log_term)) {
        /* A pre-vote answers with the term it was asked about. */
        resp->term = m->term;
        if (m->type == RAFT_MSG_VOTE) {
            r->election_elapsed = 0;
            r->vote = m->from;
        }
    } else {
        resp->term = r->term;
        resp->reject = true;
    }
}

static bool is_transfer_context(const struct raft_buf *c) {
    size_t n = sizeof(RAFT_TRANSFER_CONTEXT) - 1;
    return c->len == n && memcmp(c->base, RAFT_TRANSFER_CONTEXT, n) == 0;
}

static int step(struct raft *r, const struct raft_msg *m) {
    if (m->term == 0) {
        /* A "local" message: forwarded proposals and reads carry no term. */
    } else if (m->term > r->term) {
        if (m->type == RAFT_MSG_VOTE || m->type == RAFT_MSG_PREVOTE) {
            bool force = is_transfer_context(&m->context);
            /* Leader lease: a node that heard from a leader within the
             * election timeout ignores candidates, so that a partitioned or
             * removed node cannot depose a working leader. Without
             * check_quorum the lease still holds against candidates outside
             * our configuration (a removed node that missed its removal);
             * it lapses once the leader is silent, so liveness is kept. */
            bool lease = r->check_quorum || pr_get(r, m->from) == NULL;
            bool in_lease = lease && r->lead != RAFT_NONE && r->election_elapsed < r->election_tick;
            if (!force && in_lease) return 0;
        }
        if (m->type == RAFT_MSG_PREVOTE) {
            /* Never change term in response to a pre-vote. */
        } else if (m->type == RAFT_MSG_PREVOTE_RESP && !m->reject) {
            /* Granted pre-votes carry the future term; the term changes
             * only once a quorum granted them. */
        } else if (m->type == RAFT_MSG_APP || m->type == RAFT_MSG_HEARTBEAT ||
                   m->type == RAFT_MSG_SNAP) {
            become_follower(r, m->term, m->from);
        } else {
            become_follower(r, m->term, RAFT_NONE);
        }
    } else if (m->term < r->term) {
        if (m->type == RAFT_MSG_HEARTBEAT || m->type == RAFT_MSG_APP) {
            /* Tell a stale leader about the newer term so that it steps down
             * (Raft 5.1). etcd stays silent here unless check_quorum or
             * pre_vote is on, counting on our votes to spread the term; but a
             * node outside its own configuration never campaigns, and would
             * then ignore a live leader forever. */
            (void)msg_new(r, RAFT_MSG_APP_RESP, m->from);
        } else if (m->type == RAFT_MSG_PREVOTE || m->type == RAFT_MSG_VOTE) {
            /* A stale candidate learns the newer term from the rejection
             * (Raft 5.1); silence could leave it campaigning at its old term
             * forever when we cannot campaign ourselves. */
            struct raft_msg *resp =
                msg_new(r, m->type == RAFT_MSG_VOTE ? RAFT_MSG_VOTE_RESP : RAFT_MSG_PREVOTE_RESP,
                        m->from);
            if (resp != NULL) {
                resp->term = r->term;
                resp->reject = true;
            }
        }
        return 0;
    }

    if (m->type == RAFT_MSG_VOTE || m->type == RAFT_MSG_PREVOTE) {
        handle_vote_request(r, m);
        return 0;
    }
    switch (r->role) {
    case RAFT_LEADER:
        return step_leader(r, m);
    case RAFT_CANDIDATE:
    case RAFT_PRE_CANDIDATE:
        return step_candidate(r, m);
    default:
        return step_follower(r, m);
    }
}

/* ------------------------------------------------------------------ */
/* Public API                                                         */

int raft_new(const struct raft_config *cfg, struct raft **out) {
    if (cfg == NULL || out == NULL) return RAFT_EINVAL;
    *out = NULL;
    const struct raft_storage *st = cfg->storage;
    if (cfg->id == RAFT_NONE || st == NULL) return RAFT_EINVAL;
    if (st->initial_state == NULL || st->entries == NULL || st->term == NULL ||
        st->first_index == NULL || st->last_index == NULL || st->snapshot == NULL)
        return RAFT_EINVAL;
    if (cfg->heartbeat_tick == 0 || cfg->election_tick <= cfg->heartbeat_tick) return RAFT_EINVAL;
    if (cfg->max_inflight_msgs > RAFT__INFLIGHT_MAX) return RAFT_EINVAL;

    struct raft *r = qfs_calloc(1, sizeof(*r));
    if (r == NULL) return RAFT_ENOMEM;
    r->id = cfg->id;
    r->storage = cfg->storage;
    r->election_tick = cfg->election_tick;
    r->heartbeat_tick = cfg->heartbeat_tick;
    r->max_size_per_msg = cfg->max_size_per_msg;
    r->max_committed_size = cfg->max_committed_size_per_update ? cfg->max_committed_size_per_update
                                                               : UINT64_MAX;
    r->max_inflight = cfg->max_inflight_msgs ? cfg->max_inflight_msgs : RAFT__INFLIGHT_DEFAULT;
    r->check_quorum = cfg->check_quorum;
    r->pre_vote = cfg->pre_vote;
    r->disable_forwarding = cfg->disable_proposal_forwarding;
    /* Mix the id in so that nodes given the same seed still diverge. */
    r->prng = cfg->seed ^ (cfg->id * 0xD1B54A32D192ED03ull);

    struct raft_hard_state hs;
    struct raft_conf_state cs;
    memset(&hs, 0, sizeof(hs));
    memset(&cs, 0, sizeof(cs));
    int rc = cfg->storage->initial_state(cfg->storage->data, &hs, &cs);
    if (rc != 0) goto err_free;
    rc = conf_validate(&cs);
    if (rc != 0) goto err_free;
    rc = raft__log_init(&r->log, cfg->storage);
    if (rc != 0) goto err_free;
    uint64_t last = raft__log_last_index(&r->log);
    if (hs.commit > last) {
        rc = RAFT_ESTORAGE;
        goto err_log;
    }
    if (hs.commit > r->log.committed) r->log.committed = hs.commit;
    if (cfg->applied > r->log.committed) {
        rc = RAFT_EINVAL;
        goto err_log;
    }
    if (cfg->applied > r->log.applied) r->log.applied = cfg->applied;
    rc = tracker_set(r, &cs, false);
    if (rc != 0) goto err_log;
    r->term = hs.term;
    r->vote = hs.vote;
    become_follower(r, r->term, RAFT_NONE);
    r->prev_hs.term = r->term;
    r->prev_hs.vote = r->vote;
    r->prev_hs.commit = r->log.committed;
    r->prev_role = RAFT_FOLLOWER;
    r->prev_lead = RAFT_NONE;
    *out = r;
    return 0;

err_log:
    raft__log_close(&r->log);
err_free:
    free(r);
    return rc;
}

void raft_free(struct raft *r) {
    if (r == NULL) return;
    for (unsigned i = 0; i < r->n_prs; i++) free(r->prs[i].ins.buf);
    raft__log_close(&r->log);
    raft__rq_free(&r->reads);
    raft__rq_free(&r->pend_reads);
    free(r->rs);
    for (int i = 0; i < 2; i++) {
        free(r->box[i].msgs);
        raft__arena_free(&r->arena[i]);
    }
    free(r);
}

static void tick_election(struct raft *r) {
    r->election_elapsed++;
    if (promotable(r) && r->election_elapsed >= r->randomized_timeout) {
        r->election_elapsed = 0;
        /* Out of memory: no campaign this time; the next timeout retries. */
        (void)hup(r, r->pre_vote ? CAMPAIGN_PRE : CAMPAIGN_ELECTION);
    }
}

static void tick_heartbeat(struct raft *r) {
    r->heartbeat_elapsed++;
    r->election_elapsed++;
    if (r->election_elapsed >= r->election_tick) {
        r->election_elapsed = 0;
        /* A transfer that did not finish within an election timeout aborts. */
        r->transferee = RAFT_NONE;
        if (!is_voter(r, r->id)) {
            /* Removed: retry the handover rather than step down and risk
             * wedging the remaining voters (see leader_hand_over). */
            leader_hand_over(r);
        } else if (r->check_quorum) {
            struct raft__progress *self = pr_get(r, r->id);
            if (self != NULL) self->recent_active = true;
            if (!quorum_active(r)) {
                become_follower(r, r->term, RAFT_NONE);
                return;
            }
            for (unsigned i = 0; i < r->n_prs; i++)
                if (r->prs[i].id != r->id) r->prs[i].recent_active = false;
        }
    }
    if (r->heartbeat_elapsed >= r->heartbeat_tick) {
        r->heartbeat_elapsed = 0;
        bcast_heartbeat(r, 0);
    }
}

void raft_tick(struct raft *r) {
    ASSERT(r != NULL);
    if (r->role == RAFT_LEADER)
        tick_heartbeat(r);
    else
        tick_election(r);
}

int raft_step(struct raft *r, const struct raft_msg *m) {
    ASSERT(r != NULL);
    ASSERT(m != NULL);
    if (m->type >= RAFT_MSG_TYPE_COUNT_) return RAFT_EINVAL;
    if (m->from == RAFT_NONE || m->from == r->id) return RAFT_EINVAL;
    if (m->n_entries > 0 && m->entries == NULL) return RAFT_EINVAL;
    if (m->context.len > 0 && m->context.base == NULL) return RAFT_EINVAL;
    if (m->n_entries > RAFT_DECODE_ENTRIES_MAX) return RAFT_EMALFORMED;
    return step(r, m);
}

int raft_propose(struct raft *r, const void *data, size_t len) {
    ASSERT(r != NULL);
    ASSERT(len == 0 || data != NULL);
    if (len > RAFT_ENTRY_BYTES_MAX) return RAFT_ETOOBIG;
    struct raft_entry e = {.type = RAFT_ENTRY_NORMAL, .data = {len ? data : NULL, len}};
    return propose_entries(r, &e, 1);
}

int raft_propose_conf_change(struct raft *r, const struct raft_conf_change *cc) {
    ASSERT(r != NULL);
    ASSERT(cc != NULL);
    if (r->role == RAFT_LEADER && r->pending_conf_index > r->log.applied) return RAFT_ECONFPENDING;
    void *buf = NULL;
    size_t len = 0;
    int rc = raft_conf_change_encode(cc, &buf, &len);
    if (rc != 0) return rc;
    struct raft_entry e = {.type = RAFT_ENTRY_CONF_CHANGE, .data = {buf, len}};
    rc = propose_entries(r, &e, 1);
    free(buf);
    return rc;
}

int raft_apply_conf_change(struct raft *r, const struct raft_conf_change *cc,
                           struct raft_conf_state *cs) {
    ASSERT(r != NULL);
    ASSERT(cc != NULL);
    ASSERT(cs != NULL);
    struct raft_conf_state next;
    conf_state_of(r, &next);
    bool changed = false;
    int rc;
    if (next.n_voters == 0) {
        /* A live configuration always has a voter. With none, this node
         * never learned the base configuration the change applies to (it was
         * started empty and replays a log whose bootstrap configuration is
         * not in it): building one from nothing, such as a lone voter
         * {itself}, could elect it alone. Wait for a snapshot instead. */
        rc = RAFT_ENOTMEMBER;
    } else {
        rc = conf_apply(&next, cc, false, &changed);
    }
    if (rc == 0 && changed) rc = tracker_set(r, &next, true);
    conf_state_of(r, cs);
    if (rc != 0 || !changed) return rc;

    if (r->role == RAFT_LEADER) {
        if (!is_voter(r, r->id)) {
            r->election_elapsed = 0;
            leader_hand_over(r);
            return 0;
        }
        /* Fewer voters may mean a lower quorum; new members need the log. */
        if (maybe_commit(r)) {
            release_pending_reads(r);
            bcast_append(r);
        } else {
            for (unsigned i = 0; i < r->n_prs; i++)
                if (r->prs[i].id != r->id) maybe_send_append(r, &r->prs[i], false);
        }
        if (r->transferee != RAFT_NONE && !is_voter(r, r->transferee)) r->transferee = RAFT_NONE;
    }
    return 0;
}

int raft_read_index(struct raft *r, const void *ctx, size_t ctx_len) {
    ASSERT(r != NULL);
    ASSERT(ctx_len == 0 || ctx != NULL);
    if (ctx_len > RAFT_READ_CTX_MAX) return RAFT_ETOOBIG;
    switch (r->role) {
    case RAFT_LEADER:
        return leader_read_index(r, r->id, ctx, ctx_len);
    case RAFT_FOLLOWER: {
        if (r->lead == RAFT_NONE) return RAFT_ENOLEADER;
        struct raft_buf c;
        int rc = raft__arena_copy_buf(cur_arena(r), ctx, ctx_len, &c);
        if (rc != 0) return rc;
        struct raft_msg *m = msg_new(r, RAFT_MSG_READ_INDEX, r->lead);
        if (m == NULL) return RAFT_ENOMEM;
        m->context = c;
        return 0;
    }
    default:
        return RAFT_ENOLEADER;
    }
}

int raft_transfer_leadership(struct raft *r, uint64_t to) {
    ASSERT(r != NULL);
    if (to == RAFT_NONE) return RAFT_EINVAL;
    switch (r->role) {
    case RAFT_LEADER:
        return leader_transfer(r, to);
    case RAFT_FOLLOWER: {
        if (r->lead == RAFT_NONE) return RAFT_ENOLEADER;
        struct raft_msg *m = msg_new(r, RAFT_MSG_TRANSFER_LEADER, r->lead);
        if (m == NULL) return RAFT_ENOMEM;
        m->index = to;
        return 0;
    }
    default:
        return RAFT_ENOLEADER;
    }
}

int raft_campaign(struct raft *r) {
    ASSERT(r != NULL);
    if (!is_voter(r, r->id)) return RAFT_ENOTMEMBER;
    if (r->role == RAFT_LEADER) return 0;
    return hup(r, r->pre_vote ? CAMPAIGN_PRE : CAMPAIGN_ELECTION);
}

void raft_report_snapshot(struct raft *r, uint64_t to, bool ok) {
    ASSERT(r != NULL);
    if (r->role != RAFT_LEADER) return;
    struct raft__progress *pr = pr_get(r, to);
    if (pr == NULL || pr->state != RAFT__PR_SNAPSHOT) return;
    if (!ok) pr->pending_snapshot = 0;
    raft__pr_become_probe(pr);
    /* Wait for a heartbeat response before probing again. */
    pr->probe_sent = true;
}

void raft_report_unreachable(struct raft *r, uint64_t to) {
    ASSERT(r != NULL);
    if (r->role != RAFT_LEADER) return;
    struct raft__progress *pr = pr_get(r, to);
    if (pr != NULL && pr->state == RAFT__PR_REPLICATE) raft__pr_become_probe(pr);
}

bool raft_has_update(const struct raft *r) {
    ASSERT(r != NULL);
    if (r->outstanding) return false;
    if (r->lead != r->prev_lead || r->role != r->prev_role) return true;
    if (r->term != r->prev_hs.term || r->vote != r->prev_hs.vote ||
        r->log.committed != r->prev_hs.commit)
        return true;
    if (r->log.u.has_snapshot || r->log.u.n > 0) return true;
    if (r->box[r->cur].n > 0 || r->n_rs > 0 || r->bcast_pending) return true;
    return raft__log_has_next_committed(&r->log);
}

int raft_get_update(struct raft *r, struct raft_update *u) {
    ASSERT(r != NULL);
    ASSERT(u != NULL);
    ASSERT(!r->outstanding); /* raft_advance() the previous update first */
    if (r->bcast_pending && r->role == RAFT_LEADER) bcast_append(r);
    memset(u, 0, sizeof(*u));
    struct raft__arena *a = cur_arena(r);
    struct raft__log *l = &r->log;

    u->leader = r->lead;
    u->role = r->role;
    u->soft_state_changed = r->lead != r->prev_lead || r->role != r->prev_role;
    struct raft_hard_state hs = {.term = r->term, .vote = r->vote, .commit = l->committed};
    u->has_hard_state = hs.term != r->prev_hs.term || hs.vote != r->prev_hs.vote ||
                        hs.commit != r->prev_hs.commit;
    if (u->has_hard_state) u->hard_state = hs;

    int rc;
    if (l->u.has_snapshot) {
        u->has_snapshot = true;
        u->snapshot.meta = l->u.snap.meta;
        rc = raft__arena_copy_buf(a, l->u.snap.data.base, l->u.snap.data.len, &u->snapshot.data);
        if (rc != 0) return rc;
    }
    rc = raft__arena_copy_entries(a, l->u.ents + l->u.start, l->u.n, &u->entries);
    if (rc != 0) return rc;
    u->n_entries = l->u.n;
    u->must_sync = u->n_entries > 0 || u->has_snapshot || hs.term != r->prev_hs.term ||
                   hs.vote != r->prev_hs.vote;

    if (raft__log_has_next_committed(l)) {
        uint64_t first = raft__log_first_index(l);
        uint64_t lo = l->applied + 1 > first ? l->applied + 1 : first;
        uint64_t hi = l->committed + 1;
        if (hi - lo > RAFT_DECODE_ENTRIES_MAX) hi = lo + RAFT_DECODE_ENTRIES_MAX;
        rc = raft__log_slice(l, a, lo, hi, r->max_committed_size, &u->committed, &u->n_committed);
        if (rc != 0) return rc;
    }

    if (r->n_rs > 0) {
        struct raft_read_state *rs = raft__arena_alloc(a, r->n_rs * sizeof(*rs));
        if (rs == NULL) return RAFT_ENOMEM;
        for (size_t i = 0; i < r->n_rs; i++) {
            rs[i].index = r->rs[i].index;
            rc = raft__arena_copy_buf(a, r->rs[i].ctx, r->rs[i].ctx_len, &rs[i].context);
            if (rc != 0) return rc;
        }
        u->read_states = rs;
        u->n_read_states = r->n_rs;
    }

    /* Nothing below fails: hand the building side over. */
    u->msgs = r->box[r->cur].msgs;
    u->n_msgs = r->box[r->cur].n;
    r->n_rs = 0;
    r->prev_hs = hs;
    r->prev_lead = r->lead;
    r->prev_role = r->role;
    r->outstanding = true;
    r->cur ^= 1;
    return 0;
}

void raft_advance(struct raft *r, const struct raft_update *u) {
    ASSERT(r != NULL);
    ASSERT(u != NULL);
    ASSERT(r->outstanding);
    unsigned out = r->cur ^ 1;
    struct raft__log *l = &r->log;

    if (u->has_snapshot) {
        raft__log_stable_snap_to(l, u->snapshot.meta.index);
        /* The driver replaced its state machine with the snapshot. */
        if (u->snapshot.meta.index > l->applied && u->snapshot.meta.index <= l->committed)
            l->applied = u->snapshot.meta.index;
    }
    if (u->n_entries > 0) {
        const struct raft_entry *e = &u->entries[u->n_entries - 1];
        bool stable = raft__log_stable_to(l, e->index, e->term);
        if (stable && r->role == RAFT_LEADER) {
            /* The leader's own vote for its entries counts only now. */
            struct raft__progress *self = pr_get(r, r->id);
            if (self != NULL && raft__pr_maybe_update(self, e->index) && maybe_commit(r)) {
                release_pending_reads(r);
                bcast_append(r);
            }
        }
    }
    if (u->n_committed > 0) raft__log_applied_to(l, u->committed[u->n_committed - 1].index);
    if (r->timeout_now_term != 0) {
        if (r->timeout_now_term != r->term || r->role != RAFT_FOLLOWER) {
            r->timeout_now_term = 0; /* overtaken by events */
        } else if (has_unapplied_conf_change(r) == 0) {
            /* Out of memory in the scan keeps the request for the next
             * advance; in the campaign it loses the transfer, which the
             * leader aborts after an election timeout. */
            r->timeout_now_term = 0;
            (void)hup(r, CAMPAIGN_TRANSFER);
        }
    }

    r->box[out].n = 0;
    raft__arena_reset(&r->arena[out]);
    r->outstanding = false;
}

void raft_status(const struct raft *r, struct raft_status *st) {
    ASSERT(r != NULL);
    ASSERT(st != NULL);
    /* Called after every event by simulations: fill fields, no memset. */
    st->id = r->id;
    st->term = r->term;
    st->vote = r->vote;
    st->commit = r->log.committed;
    st->applied = r->log.applied;
    st->leader = r->lead;
    st->role = r->role;
    st->last_index = raft__log_last_index(&r->log);
    st->transferee = r->transferee;
    st->conf = r->conf;
}

int raft_progress_match(const struct raft *r, uint64_t id, uint64_t *match) {
    ASSERT(r != NULL);
    ASSERT(match != NULL);
    if (r->role != RAFT_LEADER) return RAFT_ENOTLEADER;
    for (unsigned i = 0; i < r->n_prs; i++) {
        if (r->prs[i].id == id) {
            *match = r->prs[i].match;
            return 0;
        }
    }
    return RAFT_ENOTMEMBER;
}
