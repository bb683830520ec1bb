/*
 * raft.h - Raft consensus as a pure, deterministic state machine.
 *
 * This is the only public header of raft/. The library does no I/O, reads no
 * clock, starts no thread and calls no rand(): time arrives as raft_tick(),
 * randomness from a PRNG seeded by raft_config.seed, and every effect leaves
 * as a struct raft_update that the driver carries out:
 *
 *     while (running) {
 *         feed events: raft_tick / raft_step / raft_propose / raft_read_index ...
 *         if (raft_has_update(r)) {
 *             raft_get_update(r, &u);
 *             persist u.snapshot, u.entries, u.hard_state (synced if u.must_sync)
 *             send u.msgs  (see "ordering" below)
 *             apply u.committed (conf changes through raft_apply_conf_change)
 *             serve u.read_states once applied >= read_state.index
 *             raft_advance(r, &u);
 *         }
 *     }
 *
 * Ordering (etcd raft's Ready/Advance contract): the driver persists the
 * hard state, entries and snapshot of an update before it sends the messages
 * of that same update. One exception, Raft thesis 10.2.1: when u.role is
 * RAFT_LEADER the driver may send the messages while it persists, because the
 * leader counts its own log for commitment only after raft_advance().
 *
 * The log below the unstable tail lives in a struct raft_storage the driver
 * implements (raft_memstore below is the in-memory one used by tests; the
 * RocksDB one lives in store/). After persisting u.entries the driver appends
 * them to that storage before raft_advance().
 *
 * Errors: functions return 0 or a negative code from RAFT_ERRORS.
 * Memory: everything reachable from a struct raft_update is owned by the
 * raft object and valid until raft_advance(). raft_step() copies what it keeps.
 */
#ifndef QUORUMFS_RAFT_H
#define QUORUMFS_RAFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes, in the range reserved for raft/ (-1000..-1099). */
#define RAFT_ERRORS(X)                                                                             \
    X(RAFT_ENOMEM, -1001, "out of memory")                                                         \
    X(RAFT_ENOLEADER, -1002, "no leader is known; retry later")                                    \
    X(RAFT_EDROPPED, -1003, "proposal dropped (leadership transfer in progress); retry")           \
    X(RAFT_EMALFORMED, -1004, "malformed message")                                                 \
    X(RAFT_EVERSION, -1005, "unsupported message encoding version")                                \
    X(RAFT_ECOMPACTED, -1006, "requested index has been compacted")                                \
    X(RAFT_EUNAVAILABLE, -1007, "requested entries are not available")                             \
    X(RAFT_ECONFPENDING, -1008, "a configuration change is already pending")                       \
    X(RAFT_ENOTLEADER, -1009, "this node is not the leader")                                       \
    X(RAFT_EINVAL, -1010, "invalid argument")                                                      \
    X(RAFT_ETOOBIG, -1011, "message or entry exceeds a size limit")                                \
    X(RAFT_ESNAPOUTOFDATE, -1012, "snapshot is older than the current state")                      \
    X(RAFT_ENOTMEMBER, -1013, "node is not a member of the configuration")                         \
    X(RAFT_ESTORAGE, -1014, "storage failure")

enum raft_error {
#define RAFT__ERR_ENUM(name, value, text) name = value,
    RAFT_ERRORS(RAFT__ERR_ENUM)
#undef RAFT__ERR_ENUM
};

/* Returns a static description of rc (a RAFT_ERRORS code, or "success"). */
const char *raft_strerror(int rc);

/* Limits. RAFT_MEMBERS_MAX bounds voters + learners of one configuration. */
#define RAFT_MEMBERS_MAX 16
/* Upper bounds the decoder accepts, whatever the sender claims. */
#define RAFT_DECODE_ENTRIES_MAX 65536
#define RAFT_DECODE_BYTES_MAX (64u * 1024u * 1024u)

/*
 * Largest data of one proposed entry (raft_propose: RAFT_ETOOBIG beyond it),
 * so that an entry always fits in a message the decoder accepts.
 */
#define RAFT_ENTRY_BYTES_MAX (RAFT_DECODE_BYTES_MAX / 4u)

/*
 * Context of the VOTE messages of a leadership-transfer campaign: voters
 * grant such votes even while they still hear from a leader (lease).
 */
#define RAFT_TRANSFER_CONTEXT "transfer"

/* Node id 0 means "none" (no leader, no vote). */
#define RAFT_NONE 0u

struct raft_buf {
    const void *base; /* borrowed or owned as each use documents */
    size_t len;       /* bytes */
};

enum raft_entry_type {
    RAFT_ENTRY_NORMAL = 0,      /* data is the driver's; empty data is a leader's no-op */
    RAFT_ENTRY_CONF_CHANGE = 1, /* data is an encoded struct raft_conf_change */
};

struct raft_entry {
    uint64_t term;
    uint64_t index;
    uint8_t type; /* enum raft_entry_type */
    struct raft_buf data;
};

struct raft_hard_state {
    uint64_t term;
    uint64_t vote; /* RAFT_NONE if no vote this term */
    uint64_t commit;
};

/* A configuration: voters count for quorum, learners only receive the log. */
struct raft_conf_state {
    uint32_t n_voters;
    uint32_t n_learners;
    uint64_t voters[RAFT_MEMBERS_MAX];
    uint64_t learners[RAFT_MEMBERS_MAX];
};

enum raft_conf_change_type {
    RAFT_CC_ADD_VOTER = 0,   /* add a voter, or promote an existing learner */
    RAFT_CC_REMOVE = 1,      /* remove a voter or learner */
    RAFT_CC_ADD_LEARNER = 2, /* add a learner (a voter cannot be demoted) */
};

struct raft_conf_change {
    uint8_t type; /* enum raft_conf_change_type */
    uint64_t node_id;
    struct raft_buf context; /* opaque to raft (e.g. the member's peer URLs) */
};

/* Encode cc as an entry payload. *out is malloc'ed; the caller frees it. */
int raft_conf_change_encode(const struct raft_conf_change *cc, void **out, size_t *out_len);
/* Decode an entry payload; cc->context borrows from data. */
int raft_conf_change_decode(const void *data, size_t len, struct raft_conf_change *cc);

struct raft_snapshot_meta {
    uint64_t index; /* last index covered by the snapshot */
    uint64_t term;  /* term of that entry */
    struct raft_conf_state conf;
};

struct raft_snapshot {
    struct raft_snapshot_meta meta;
    struct raft_buf data; /* the driver's state-machine image or a descriptor of it */
};

enum raft_msg_type {
    RAFT_MSG_PROP = 0, /* follower forwards a proposal to the leader */
    RAFT_MSG_APP = 1,  /* append entries */
    RAFT_MSG_APP_RESP = 2,
    RAFT_MSG_VOTE = 3,
    RAFT_MSG_VOTE_RESP = 4,
    RAFT_MSG_PREVOTE = 5,
    RAFT_MSG_PREVOTE_RESP = 6,
    RAFT_MSG_HEARTBEAT = 7,
    RAFT_MSG_HEARTBEAT_RESP = 8,
    RAFT_MSG_SNAP = 9,        /* install snapshot */
    RAFT_MSG_READ_INDEX = 10, /* follower forwards a read_index request */
    RAFT_MSG_READ_INDEX_RESP = 11,
    RAFT_MSG_TIMEOUT_NOW = 12,     /* leadership transfer: campaign now */
    RAFT_MSG_TRANSFER_LEADER = 13, /* follower asks the leader to transfer to
                                      `index` (etcd style: `from` if index is 0) */
    RAFT_MSG_TYPE_COUNT_ = 14
};

/*
 * One message between nodes. Field use follows etcd raft's raftpb.Message:
 * index/log_term name the entry preceding `entries` (APP) or the index being
 * acknowledged (APP_RESP); reject + reject_hint carry the follower's hint for
 * fast backtracking (hint = the follower's last index or the first index of
 * the conflicting term); context carries read_index contexts and the
 * "transfer" campaign marker.
 */
struct raft_msg {
    uint8_t type; /* enum raft_msg_type */
    uint64_t from;
    uint64_t to;
    uint64_t term;
    uint64_t log_term;
    uint64_t index;
    uint64_t commit;
    bool reject;
    uint64_t reject_hint;
    uint32_t n_entries;
    struct raft_entry *entries;
    bool has_snapshot;
    struct raft_snapshot snapshot;
    struct raft_buf context;
};

/*
 * Wire encoding of a message (documented in raft/encoding.c):
 * version byte, then fixed little-endian fields, then length-prefixed
 * entries, snapshot and context. raft_decode() checks every length against
 * the input and the RAFT_DECODE_* limits and returns RAFT_EMALFORMED or
 * RAFT_EVERSION, never reading out of bounds.
 */
#define RAFT_WIRE_VERSION 1
size_t raft_encoded_size(const struct raft_msg *m);
/* Encodes into buf[0..cap); *len receives the size. RAFT_ETOOBIG if cap is short. */
int raft_encode(const struct raft_msg *m, void *buf, size_t cap, size_t *len);
/*
 * Decodes buf into *m. The entry array is malloc'ed (release with
 * raft_msg_release); entry data, snapshot data and context borrow from buf,
 * which must outlive *m.
 */
int raft_decode(const void *buf, size_t len, struct raft_msg *m);
void raft_msg_release(struct raft_msg *m);

/*
 * The log storage the driver implements. raft reads it; the driver writes it
 * (append after persisting an update's entries, apply snapshots, compact).
 * Every function returns 0 or a RAFT_ERRORS code.
 */
struct raft_storage {
    void *data;
    /* Hard state and the configuration as of the last applied index. */
    int (*initial_state)(void *data, struct raft_hard_state *hs, struct raft_conf_state *cs);
    /*
     * Entries [lo, hi), stopping early once max_bytes of data is exceeded (at
     * least one entry is returned if any is requested). *out is a malloc'ed
     * array and each entry's data.base is malloc'ed (may be NULL when len 0);
     * raft frees them with free(). RAFT_ECOMPACTED if lo <= first_index - 1,
     * RAFT_EUNAVAILABLE if hi > last_index + 1.
     */
    int (*entries)(void *data, uint64_t lo, uint64_t hi, uint64_t max_bytes,
                   struct raft_entry **out, size_t *n_out);
    /* Term of entry i; valid for first_index - 1 <= i <= last_index. */
    int (*term)(void *data, uint64_t i, uint64_t *term);
    /* Index of the first entry still available (snapshot index + 1). */
    int (*first_index)(void *data, uint64_t *index);
    /* Index of the last entry (the snapshot index if the log is empty). */
    int (*last_index)(void *data, uint64_t *index);
    /* The most recent snapshot; snap->data borrowed until the next call. */
    int (*snapshot)(void *data, struct raft_snapshot *snap);
};

/* In-memory storage, for tests and the simulation. */
struct raft_memstore;
struct raft_memstore *raft_memstore_new(void); /* NULL if out of memory */
void raft_memstore_free(struct raft_memstore *ms);
/* The storage interface over ms; valid as long as ms. */
struct raft_storage *raft_memstore_storage(struct raft_memstore *ms);
/* Bootstrap: set the configuration reported by initial_state. */
int raft_memstore_set_conf_state(struct raft_memstore *ms, const struct raft_conf_state *cs);
int raft_memstore_set_hard_state(struct raft_memstore *ms, const struct raft_hard_state *hs);
/* Appends (copying) entries; entries[0].index may overwrite a suffix. */
int raft_memstore_append(struct raft_memstore *ms, const struct raft_entry *e, size_t n);
/* Replaces the log with a snapshot (copied). */
int raft_memstore_apply_snapshot(struct raft_memstore *ms, const struct raft_snapshot *snap);
/* Records a snapshot at applied index `index` with the given image (copied). */
int raft_memstore_create_snapshot(struct raft_memstore *ms, uint64_t index,
                                  const struct raft_conf_state *cs, const void *data, size_t len);
/* Discards entries up to and including index (must be <= the snapshot's index or applied). */
int raft_memstore_compact(struct raft_memstore *ms, uint64_t index);

enum raft_role {
    RAFT_FOLLOWER = 0,
    RAFT_PRE_CANDIDATE = 1,
    RAFT_CANDIDATE = 2,
    RAFT_LEADER = 3,
};

struct raft_config {
    uint64_t id;                /* this node, != RAFT_NONE */
    unsigned election_tick;     /* ticks; timeouts drawn from [election_tick, 2*election_tick) */
    unsigned heartbeat_tick;    /* ticks between leader heartbeats; < election_tick */
    uint64_t applied;           /* last index the driver applied before (re)starting */
    uint64_t max_size_per_msg;  /* bytes of entry data per APP message (>=1 entry always) */
    unsigned max_inflight_msgs; /* APP messages in flight per follower while replicating
                                     (0 = 256; at most 65536) */
    uint64_t max_committed_size_per_update; /* bytes of committed entries per update; 0 = no limit */
    bool check_quorum; /* leader steps down without a quorum's contact in an election timeout */
    bool pre_vote;     /* pre-vote phase before incrementing the term */
    bool disable_proposal_forwarding; /* followers reject proposals with RAFT_ENOTLEADER */
    uint64_t seed;                    /* seed of the election-timeout PRNG */
    struct raft_storage *storage;     /* borrowed; must outlive the raft object */
};

struct raft_read_state {
    uint64_t index;          /* serve the read once applied >= index */
    struct raft_buf context; /* the ctx passed to raft_read_index */
};

struct raft_update {
    /* Soft state: who leads, what we are. Always filled. */
    uint64_t leader;
    uint8_t role; /* enum raft_role */
    bool soft_state_changed;

    /* Persist before sending msgs (leader: may send while persisting). */
    bool has_hard_state;
    struct raft_hard_state hard_state;
    bool has_snapshot;
    struct raft_snapshot snapshot; /* install: replaces state machine and log */
    size_t n_entries;
    struct raft_entry *entries; /* append; may overwrite from entries[0].index */
    bool must_sync;             /* true if the above must be fsynced before sending */

    size_t n_msgs;
    struct raft_msg *msgs;

    size_t n_committed;
    struct raft_entry *committed; /* apply in order */

    size_t n_read_states;
    struct raft_read_state *read_states;
};

struct raft;

/* Creates a node from cfg and cfg->storage's initial state. *out on success. */
int raft_new(const struct raft_config *cfg, struct raft **out);
void raft_free(struct raft *r);

/* One logical clock tick. */
void raft_tick(struct raft *r);
/*
 * Feeds a message received from a peer (copied as needed). RAFT_ENOMEM: the
 * node took in only what the header implies (a newer term, the sender as
 * leader); log, commit and configuration are unchanged. Feed the message
 * again, or drop it as if lost.
 */
int raft_step(struct raft *r, const struct raft_msg *m);
/*
 * Proposes data (copied) for the log. On a follower it is forwarded to the
 * leader. RAFT_ENOLEADER if no leader is known, RAFT_EDROPPED during a
 * leadership transfer, RAFT_ENOTLEADER with forwarding disabled.
 * 0 means "handed on", not "committed": the driver matches applied entries.
 */
int raft_propose(struct raft *r, const void *data, size_t len);
/* Proposes a configuration change (one pending at a time: RAFT_ECONFPENDING). */
int raft_propose_conf_change(struct raft *r, const struct raft_conf_change *cc);
/*
 * Applies a committed conf change (the driver calls this while applying the
 * entry) and writes the resulting configuration to *cs for persisting.
 */
int raft_apply_conf_change(struct raft *r, const struct raft_conf_change *cc,
                           struct raft_conf_state *cs);
/*
 * Linearizable read barrier: a raft_read_state with this ctx (copied, at
 * most 64 bytes) appears in a later update once the leader confirmed its
 * leadership with a quorum after committing an entry of its term.
 * Forwarded from followers; RAFT_ENOLEADER if none is known.
 */
int raft_read_index(struct raft *r, const void *ctx, size_t ctx_len);
#define RAFT_READ_CTX_MAX 64
/* Leadership transfer to `to` (caught up first, then TIMEOUT_NOW). */
int raft_transfer_leadership(struct raft *r, uint64_t to);
/* Starts an election now (tests; a driver with a single voter at boot). */
int raft_campaign(struct raft *r);
/* The driver reports a failed or finished snapshot send to `to`. */
void raft_report_snapshot(struct raft *r, uint64_t to, bool ok);
/* The driver reports that `to` could not be reached. */
void raft_report_unreachable(struct raft *r, uint64_t to);

bool raft_has_update(const struct raft *r);
/* Fills *u; its contents stay valid (owned by r) until raft_advance(). */
int raft_get_update(struct raft *r, struct raft_update *u);
/* The driver persisted, sent and applied all of u. */
void raft_advance(struct raft *r, const struct raft_update *u);

struct raft_status {
    uint64_t id;
    uint64_t term;
    uint64_t vote;
    uint64_t commit;
    uint64_t applied;
    uint64_t leader;
    uint8_t role; /* enum raft_role */
    uint64_t last_index;
    uint64_t transferee; /* RAFT_NONE unless a transfer is in progress */
    struct raft_conf_state conf;
};
void raft_status(const struct raft *r, struct raft_status *st);
/* On the leader: the highest index known replicated on member id.
 * RAFT_ENOTLEADER elsewhere, RAFT_ENOTMEMBER for an unknown id. */
int raft_progress_match(const struct raft *r, uint64_t id, uint64_t *match);

#ifdef __cplusplus
}
#endif
#endif /* QUORUMFS_RAFT_H */
