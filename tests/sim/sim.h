/*
 * sim.h - internal header of the deterministic Raft cluster simulation.
 *
 * The simulation runs whole clusters of raft/ state machines inside one
 * thread against a virtual clock. Everything that varies between runs (the
 * cluster's configuration, the network's behaviour, when nodes crash, what
 * clients ask) is drawn from ONE seeded PRNG per run, and nothing depends on
 * wall time or on pointer values, so a run is a pure function of its seed and
 * of the command-line options: `raft_sim --seed N --runs 1` replays run N.
 *
 * Files:
 *   sim_util.c   PRNG, event heap, hashing, growable arrays
 *   sim_check.c  the invariant checker (safety after every step, liveness)
 *   sim_world.c  nodes and their Raft drivers, the network, faults, clients
 *   sim_main.c   command line, the run loop, the summary
 *
 * Invariants kept by the world: a node's raft_memstore is its durable disk
 * and is written only by the driver, in the order raft.h prescribes; the
 * persisted state-machine image always has applied >= the memstore's
 * snapshot index and the memstore's conf state is the configuration as of
 * that applied index, so a restart from disk is always consistent.
 */
#ifndef QUORUMFS_TESTS_SIM_H
#define QUORUMFS_TESTS_SIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "raft/raft.h"

/* Nodes in one run: up to 5 initial members plus one spare that joins later. */
#define SIM_NODES_MAX 6
/* Keys of the replicated register file; small so reads and writes collide. */
#define SIM_KEYS 8
/* Virtual microseconds between two ticks of a node with a perfect clock. */
#define SIM_TICK_US 10000u
/* Bytes of one proposal payload (see sim_world.c, encode_set). */
#define SIM_SET_LEN 18u
/* Bound on reads waiting for apply on one node (clients give up beyond). */
#define SIM_WAITING_READS_MAX 256u
/* Bytes kept of the first failure's description. */
#define SIM_FAIL_MSG_MAX 2048

/* ---- utilities (sim_util.c) ---- */

struct sim_rng {
    uint64_t s[4]; /* xoshiro256** state */
};
void sim_rng_seed(struct sim_rng *rng, uint64_t seed);
uint64_t sim_rng_next(struct sim_rng *rng);
/* Uniform in [0, n); n > 0. */
uint64_t sim_rng_below(struct sim_rng *rng, uint64_t n);
/* Uniform in [lo, hi]. */
uint64_t sim_rng_range(struct sim_rng *rng, uint64_t lo, uint64_t hi);
/* True with probability ppm / 1,000,000. */
bool sim_rng_ppm(struct sim_rng *rng, uint32_t ppm);

uint64_t sim_hash(const void *data, size_t len, uint64_t h);
#define SIM_HASH_INIT 0xcbf29ce484222325ull

/* Allocation that aborts: the simulation is a test program, not a library. */
void *sim_xmalloc(size_t n);
void *sim_xcalloc(size_t n, size_t size);
void *sim_xrealloc(void *p, size_t n);
/* Grows *arr (elements of `size` bytes, capacity *cap) to hold at least n. */
void sim_reserve(void **arr, size_t *cap, size_t n, size_t size);

enum sim_event_type {
    SIM_EV_TICK = 0,      /* node ticks its Raft clock */
    SIM_EV_DELIVER = 1,   /* a message arrives (or is dropped at the door) */
    SIM_EV_CLIENT = 2,    /* a client proposes or reads */
    SIM_EV_NEMESIS = 3,   /* the fault injector acts */
    SIM_EV_RESTART = 4,   /* a crashed node boots from its disk */
    SIM_EV_HEAL_NET = 5,  /* a partition ends */
    SIM_EV_COMPACT = 6,   /* node checkpoints its state machine, maybe compacts */
    SIM_EV_SNAP_DONE = 7, /* the sender learns how a snapshot send ended */
};

struct sim_msg;

struct sim_event {
    uint64_t time_us;    /* virtual time it fires */
    uint64_t seq;        /* insertion order: breaks ties deterministically */
    uint8_t type;        /* enum sim_event_type */
    uint8_t node;        /* index into world->nodes, when relevant */
    uint32_t arg;        /* event-specific (incarnation, flag) */
    struct sim_msg *msg; /* SIM_EV_DELIVER: owned by the event */
};

struct sim_heap {
    struct sim_event *ev;
    size_t n, cap;
};
void sim_heap_push(struct sim_heap *h, const struct sim_event *e);
bool sim_heap_pop(struct sim_heap *h, struct sim_event *out);
void sim_heap_free(struct sim_heap *h);

/* ---- the replicated state machine ---- */

struct sim_kv {
    uint64_t value;  /* unique value written (0 = never written) */
    uint64_t windex; /* log index of the write */
};

struct sim_sm {
    uint64_t applied; /* last log index reflected here */
    struct sim_kv kv[SIM_KEYS];
    struct raft_conf_state conf; /* configuration as of `applied` */
};

/* Hash of a state-machine image (configuration normalised to sorted order). */
uint64_t sim_sm_hash(const struct sim_sm *sm);

/* ---- network ---- */

struct sim_msg {
    uint64_t from, to;  /* node ids */
    uint32_t from_inc;  /* sender's incarnation (for snapshot reports) */
    uint8_t type;       /* enum raft_msg_type, for tracing and reports */
    size_t len;         /* bytes in buf */
    void *snap;         /* node_sim: the snapshot a SNAP stream carries */
    unsigned char *buf; /* raft_encode()d message, owned */
};

/* ---- nodes ---- */

enum sim_crash_point {
    SIM_CRASH_NONE = 0,
    SIM_CRASH_BEFORE_PERSIST = 1, /* leader sent, nothing persisted yet */
    SIM_CRASH_AFTER_PERSIST = 2,  /* persisted, nothing sent */
    SIM_CRASH_AFTER_SEND = 3,     /* persisted and sent, nothing applied */
    SIM_CRASH_MID_APPLY = 4,      /* some committed entries applied */
    SIM_CRASH_BEFORE_ADVANCE = 5, /* all done but raft_advance() */
    SIM_CRASH_POINTS_ = 6
};

enum sim_trap {
    SIM_TRAP_NONE = 0,
    SIM_TRAP_NEXT_UPDATE = 1, /* crash inside the next update */
    SIM_TRAP_ON_LEADER = 2,   /* crash inside the first update as a new leader */
    SIM_TRAP_ON_COMMIT = 3,   /* crash inside the next leader update that commits */
};

struct sim_node {
    uint64_t id;              /* raft id, 1..n */
    bool up;                  /* running (false: crashed or powered off) */
    bool powered_off;         /* removed member stopped for good (healing phase) */
    uint32_t incarnation;     /* bumped on every restart */
    struct raft *r;           /* NULL while down */
    struct raft_memstore *ms; /* the durable disk: log, hard state, snapshot, conf */
    struct raft_storage *st;
    struct sim_sm sm;          /* volatile state machine (lost on crash) */
    struct sim_sm persisted;   /* state-machine image on disk */
    struct raft_hard_state hs; /* mirror of the hard state on disk */
    /* A hard state written without sync may be lost by a crash: what the
     * disk held before it (valid while hs_unsynced). */
    bool hs_unsynced;
    struct raft_hard_state hs_synced;
    uint64_t tick_us;   /* this node's tick period (clock skew) */
    uint8_t trap;       /* enum sim_trap, armed by the nemesis */
    uint8_t trap_point; /* enum sim_crash_point chosen for the trap */
    /* Observation for the checker, refreshed after every event. */
    uint8_t role;
    uint64_t term;
    uint64_t leader;
    uint64_t leader_checked_term; /* term whose leader log was fully checked */
    uint64_t commit_seen;         /* entries up to here were reported to the checker */
    /* Reads whose read_state arrived but applied < read index (volatile). */
    uint32_t waiting[SIM_WAITING_READS_MAX];
    uint64_t waiting_index[SIM_WAITING_READS_MAX];
    size_t n_waiting;
};

/* ---- per-run configuration, drawn from the run's seed ---- */

struct sim_params {
    bool churn;  /* drawn as a churn-profile run (see draw_params) */
    int n_nodes; /* initial voters: 3 or 5 */
    bool spare;  /* one more node, outside the cluster, may join */
    unsigned election_tick, heartbeat_tick;
    bool pre_vote, check_quorum, no_forwarding;
    uint64_t max_size_per_msg;
    unsigned max_inflight;
    uint64_t max_committed_size;
    uint32_t loss_ppm, dup_ppm, long_delay_ppm; /* per message */
    uint64_t delay_min_us, delay_max_us, long_delay_max_us;
    uint64_t client_gap_us;     /* mean gap between client requests */
    uint32_t read_ppm;          /* share of client requests that are reads */
    uint32_t leader_client_ppm; /* share of requests sent to the known leader */
    uint64_t nemesis_gap_us;    /* mean gap between fault actions */
    uint32_t w_crash, w_trap, w_partition, w_heal, w_member, w_transfer, w_weather, w_restart_all,
        w_churn;                /* nemesis action weights */
    uint64_t compact_gap_us;    /* mean gap between a node's checkpoints */
    uint64_t compact_keep_max;  /* entries kept behind a snapshot */
    uint32_t unsynced_loss_ppm; /* chance a crash loses an unsynced hard state */
    uint32_t churn_leader_ppm;  /* leader churn: chance a new leader dies at once */
    uint32_t churn_commit_ppm;  /* leader churn: chance a leader dies as it commits */
};

/* ---- invariant checker state (sim_check.c) ---- */

/*
 * What is known about one log index once some node has committed it: from a
 * persisted hard state (commit >= index, term read from that node's log) or
 * from an apply. commit_term is an upper bound on the term in which the
 * entry was committed: the term of the node that reported it (a node learns
 * a commit index only from a leader of a term <= its own).
 */
struct sim_committed {
    uint64_t term; /* 0 = not known to be committed */
    uint64_t commit_term;
    uint64_t node;       /* who reported it first (for messages) */
    bool applied;        /* entry_hash and state_hash are set */
    uint64_t entry_hash; /* hash of type + data */
    uint64_t state_hash; /* state machine right after applying it */
    uint64_t applied_by; /* who applied it first */
};

struct sim_logkey {
    uint64_t index, term; /* term 0 = empty slot */
    uint64_t entry_hash;
    uint64_t prev_term; /* term of index - 1 in the log that carried it */
    uint64_t node;      /* first node seen holding it */
};

struct sim_proposal {
    uint8_t key;
    uint64_t proposer;    /* node id the client asked */
    uint64_t proposed_us; /* when */
    uint64_t acked_index; /* 0 until applied on its proposer */
    uint64_t first_index; /* 0 until applied anywhere */
};

struct sim_read {
    uint64_t node; /* node id the client asked */
    uint8_t key;
    uint64_t requested_us;
    uint64_t min_windex;  /* newest acknowledged write of key at request time */
    uint64_t min_applied; /* newest acknowledged write of any key at request time */
    bool served;
};

struct sim_check {
    struct sim_committed *com; /* indexed by log index */
    size_t com_cap;
    uint64_t com_max;      /* highest index known committed */
    uint64_t *term_leader; /* leader id of each term seen */
    size_t term_leader_cap;
    struct sim_logkey *logmap; /* open addressing on (index, term) */
    size_t logmap_cap, logmap_n;
    uint64_t ack_windex[SIM_KEYS]; /* newest write of each key acknowledged */
    uint64_t ack_max;              /* newest acknowledged write, any key */
};

enum sim_fail_kind {
    SIM_OK = 0,
    SIM_FAIL_ELECTION_SAFETY,
    SIM_FAIL_LOG_MATCHING,
    SIM_FAIL_LEADER_COMPLETENESS,
    SIM_FAIL_SM_SAFETY,
    SIM_FAIL_READ_SAFETY,
    SIM_FAIL_DURABILITY, /* term/vote/commit went backwards, vote changed in a term */
    SIM_FAIL_CONTRACT,   /* an update broke raft.h's contract (order, gaps, must_sync) */
    SIM_FAIL_DRIVER,     /* raft or memstore returned an unexpected error */
    SIM_FAIL_LIVENESS,
    SIM_FAIL_KINDS_
};
const char *sim_fail_name(int kind);
/* Safety kinds count for --expect-violation; liveness and driver errors do not. */
bool sim_fail_is_safety(int kind);

/* ---- the world ---- */

struct sim_stats {
    uint64_t steps, msgs_sent, msgs_dropped, msgs_duped, crashes, restarts;
    uint64_t elections, proposals, proposals_applied, reads, reads_served;
    uint64_t snaps_sent, snaps_installed, compactions, conf_changes_applied;
    uint64_t transfers, partitions, traps_fired, conf_proposed;
    uint64_t old_term_commits; /* a leader advanced commit to an earlier term's entry */
    uint64_t heal_ticks_leader, heal_ticks_commit; /* this run (max over runs in totals) */
};

struct sim_world {
    uint64_t seed;
    bool verbose;
    struct sim_params p;
    struct sim_rng rng;
    uint64_t now_us;
    uint64_t seq;
    struct sim_heap heap;
    int n_univ; /* nodes that exist: n_nodes + spare */
    struct sim_node nodes[SIM_NODES_MAX];
    bool cut[SIM_NODES_MAX][SIM_NODES_MAX]; /* cut[from][to]: drop from -> to */
    bool partitioned;
    bool healing;               /* final phase: no faults */
    uint32_t loss_ppm, dup_ppm; /* current network weather */
    uint64_t churn_until_us;    /* leader churn lasts until then */
    struct sim_proposal *props; /* indexed by value (1..) */
    size_t props_cap;
    uint64_t next_value;
    struct sim_read *reads; /* indexed by read id (1..) */
    size_t reads_cap;
    uint32_t next_read;
    struct sim_check chk;
    /* Healing phase (see heal_eval in sim_world.c). */
    int heal_state;
    uint64_t heal_start_us, heal_leader_us, heal_propose_us;
#define SIM_HEAL_PROPS 3
    uint64_t heal_values[SIM_HEAL_PROPS];
    int fail_kind; /* enum sim_fail_kind of the first failure */
    char fail_msg[SIM_FAIL_MSG_MAX];
    struct sim_stats stats;
};

/* Records the first failure of the run (later ones are ignored). */
void sim_fail(struct sim_world *w, int kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Trace line, printed only with -v (use TRACE: no formatting cost otherwise). */
void sim_trace(struct sim_world *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define TRACE(w, ...)                                                                              \
    do {                                                                                           \
        if ((w)->verbose) sim_trace((w), __VA_ARGS__);                                             \
    } while (0)

enum sim_profile {
    SIM_PROFILE_MIXED = 0,  /* each run draws: churn (1 in 4) or random */
    SIM_PROFILE_RANDOM = 1, /* every fault weight and setting drawn at random */
    SIM_PROFILE_CHURN = 2,  /* leaders die young; one entry per message */
};

/* Options of one run beyond the seed. */
struct sim_run_opts {
    uint64_t steps; /* events in the fault phase */
    int nodes;      /* 0: 3 or 5 by seed */
    int profile;    /* enum sim_profile */
    bool verbose;
};

/* Runs one seeded simulation; returns its enum sim_fail_kind (SIM_OK = pass). */
int sim_run(uint64_t seed, const struct sim_run_opts *o, struct sim_stats *stats_out, char *msg,
            size_t msg_cap);

/* ---- checker hooks (sim_check.c) ---- */

void sim_check_init(struct sim_check *c);
void sim_check_free(struct sim_check *c);
/* Entries e[0..n) were persisted by node; prev_term is the term at e[0].index-1
 * (UINT64_MAX if unknown). */
void sim_check_appended(struct sim_world *w, const struct sim_node *n, const struct raft_entry *e,
                        size_t n_e, uint64_t prev_term);
/* node persisted a hard state whose commit covers index, holding term there. */
void sim_check_committed(struct sim_world *w, const struct sim_node *n, uint64_t index,
                         uint64_t term);
/* node applied e, leaving its state machine with hash state_hash. */
void sim_check_applied(struct sim_world *w, const struct sim_node *n, const struct raft_entry *e,
                       uint64_t state_hash);
/* node installed a snapshot at (index, term) whose image hashes to state_hash. */
void sim_check_snapshot(struct sim_world *w, const struct sim_node *n, uint64_t index,
                        uint64_t term, uint64_t state_hash);
/* node is about to persist hard state hs (after restart: hs is what the disk had). */
void sim_check_hard_state(struct sim_world *w, const struct sim_node *n,
                          const struct raft_hard_state *hs);
/* Refreshes n's observed role; if it leads: election safety, and leader
 * completeness the first time it is seen leading a term. */
void sim_check_role(struct sim_world *w, struct sim_node *n);
/* After every step: sim_check_role for every running node. */
void sim_check_roles(struct sim_world *w);
/* A write of value with key was applied on its proposer at log index. */
void sim_check_ack(struct sim_world *w, uint8_t key, uint64_t index);

#endif /* QUORUMFS_TESTS_SIM_H */
