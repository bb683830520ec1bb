/*
 * raft_int.h - private declarations shared by the files of raft/.
 *
 * Nothing outside raft/ includes this header. It holds the always-on
 * assertion macro, the per-update arena, the seeded PRNG, the log (stable
 * storage + unstable tail, after etcd raft's log.go and log_unstable.go), the
 * per-follower progress with its inflight window (tracker/progress.go,
 * tracker/inflights.go) and the ReadIndex queue (read_only.go).
 *
 * Invariants kept by the log (checked by assertions where cheap):
 *   first_index - 1 <= applied <= committed <= last_index
 *   unstable entries are contiguous and start at unstable.offset
 */
#ifndef QUORUMFS_RAFT_INT_H
#define QUORUMFS_RAFT_INT_H

#include "raft/raft.h"
#include "raft/alloc.h"

/* Always on, also in release builds: prints the expression and aborts. */
_Noreturn void raft__assert_fail(const char *expr, const char *file, int line);
#define ASSERT(expr) ((expr) ? (void)0 : raft__assert_fail(#expr, __FILE__, __LINE__))

#if defined(RAFT_UNSAFE_COMMIT_OLD_TERM) && RAFT_UNSAFE_COMMIT_OLD_TERM
#define RAFT__UNSAFE_COMMIT 1
#else
#define RAFT__UNSAFE_COMMIT 0
#endif

/* ---- arena: bump allocator for everything one update hands out ---- */

/* Size of an ordinary arena chunk; larger requests get a chunk of their own. */
#define RAFT__ARENA_CHUNK_BYTES (64u * 1024u)

struct raft__arena_chunk;
struct raft__arena {
    struct raft__arena_chunk *head; /* most recent chunk first */
};
/* 8-byte aligned memory valid until raft__arena_reset; NULL if out of memory. */
void *raft__arena_alloc(struct raft__arena *a, size_t n);
/* Frees every chunk but one ordinary-sized chunk kept for reuse. */
void raft__arena_reset(struct raft__arena *a);
void raft__arena_free(struct raft__arena *a);
/* Copies src[0..n) (structs and data) into the arena. */
int raft__arena_copy_entries(struct raft__arena *a, const struct raft_entry *src, size_t n,
                             struct raft_entry **out);
/* Copies len bytes; *out is NULL when len is 0. */
int raft__arena_copy_buf(struct raft__arena *a, const void *src, size_t len, struct raft_buf *out);

/* ---- PRNG (splitmix64) ---- */
uint64_t raft__prng_next(uint64_t *state);

/* ---- log ---- */

struct raft__unstable {
    bool has_snapshot;
    struct raft_snapshot snap; /* data owned (malloc) while has_snapshot */
    struct raft_entry *ents;   /* live entries are ents[start .. start + n) */
    size_t start;
    size_t n;
    size_t cap;      /* allocated slots in ents */
    uint64_t offset; /* log index of ents[start] */
};

struct raft__log {
    struct raft_storage *st; /* borrowed */
    struct raft__unstable u;
    uint64_t committed; /* highest index known committed */
    uint64_t applied;   /* highest index the driver applied */
};

int raft__log_init(struct raft__log *l, struct raft_storage *st);
void raft__log_close(struct raft__log *l);
uint64_t raft__log_first_index(const struct raft__log *l);
uint64_t raft__log_last_index(const struct raft__log *l);
/* Last index the driver persisted (below the unstable tail). */
uint64_t raft__log_stable_last_index(const struct raft__log *l);
/* 0, RAFT_ECOMPACTED, RAFT_EUNAVAILABLE or a storage error. */
int raft__log_term(const struct raft__log *l, uint64_t i, uint64_t *term);
uint64_t raft__log_term_or_zero(const struct raft__log *l, uint64_t i);
uint64_t raft__log_last_term(const struct raft__log *l);
bool raft__log_match_term(const struct raft__log *l, uint64_t i, uint64_t term);
bool raft__log_is_up_to_date(const struct raft__log *l, uint64_t lasti, uint64_t term);
/* Makes room for n more entries after the last one, so that appending up
 * to n entries without data (a leader's no-op) afterwards cannot fail. */
int raft__log_reserve(struct raft__log *l, size_t n);
/* Appends e[0..n) (data copied), truncating a conflicting suffix. */
int raft__log_append(struct raft__log *l, const struct raft_entry *e, size_t n);
/*
 * The follower side of AppendEntries: *ok tells whether (index, log_term)
 * matched; on a match the entries are merged and *lastnewi receives the last
 * index they cover. RAFT_EMALFORMED if the entries would overwrite a
 * committed entry.
 */
int raft__log_maybe_append(struct raft__log *l, uint64_t index, uint64_t log_term,
                           uint64_t committed, const struct raft_entry *e, size_t n,
                           uint64_t *lastnewi, bool *ok);
/* Largest index <= index whose term is <= term (etcd findConflictByTerm). */
uint64_t raft__log_find_conflict_by_term(const struct raft__log *l, uint64_t index, uint64_t term,
                                         uint64_t *found_term);
void raft__log_commit_to(struct raft__log *l, uint64_t i);
void raft__log_applied_to(struct raft__log *l, uint64_t i);
/*
 * Entries [lo, hi) copied into arena a, stopping once max_bytes of data
 * would be exceeded (at least one entry).
 */
int raft__log_slice(const struct raft__log *l, struct raft__arena *a, uint64_t lo, uint64_t hi,
                    uint64_t max_bytes, struct raft_entry **out, size_t *n);
bool raft__log_has_next_committed(const struct raft__log *l);
/* Marks entries up to (i, term) persisted; false if (i, term) no longer matches. */
bool raft__log_stable_to(struct raft__log *l, uint64_t i, uint64_t term);
void raft__log_stable_snap_to(struct raft__log *l, uint64_t i);
/* Replaces the log by snapshot s, taking ownership of data (s's image,
 * already copied by the caller; NULL when empty) so that it cannot fail. */
void raft__log_restore(struct raft__log *l, const struct raft_snapshot *s, void *data);
/* The unstable snapshot or the storage's; data borrowed. */
int raft__log_snapshot(const struct raft__log *l, struct raft_snapshot *s);

/* ---- inflights and progress ---- */

/* Ring buffer of the last index of each APP in flight to one follower. */
struct raft__inflights {
    uint64_t *buf; /* size slots, owned */
    unsigned size;
    unsigned start;
    unsigned count;
};

bool raft__inflights_full(const struct raft__inflights *in);
void raft__inflights_add(struct raft__inflights *in, uint64_t index);
void raft__inflights_free_le(struct raft__inflights *in, uint64_t to);
void raft__inflights_free_first_one(struct raft__inflights *in);
void raft__inflights_reset(struct raft__inflights *in);

enum raft__progress_state {
    RAFT__PR_PROBE = 0,     /* one APP at a time until the follower's log matches */
    RAFT__PR_REPLICATE = 1, /* pipelined APPs, bounded by the inflight window */
    RAFT__PR_SNAPSHOT = 2,  /* a snapshot is on its way; no APPs */
};

struct raft__progress {
    uint64_t id;
    uint64_t match;            /* highest index known replicated on the peer */
    uint64_t next;             /* next index to send */
    uint64_t pending_snapshot; /* snapshot index sent, in RAFT__PR_SNAPSHOT */
    uint8_t state;             /* enum raft__progress_state */
    bool probe_sent;           /* probe state: an APP is out, pause until answered */
    bool recent_active;        /* heard from within the current election timeout */
    bool is_learner;
    int8_t vote; /* -1 not yet, 0 rejected, 1 granted */
    struct raft__inflights ins;
};

void raft__pr_become_probe(struct raft__progress *pr);
void raft__pr_become_replicate(struct raft__progress *pr);
void raft__pr_become_snapshot(struct raft__progress *pr, uint64_t snap_index);
bool raft__pr_maybe_update(struct raft__progress *pr, uint64_t n);
bool raft__pr_maybe_decr_to(struct raft__progress *pr, uint64_t rejected, uint64_t match_hint);
bool raft__pr_is_paused(const struct raft__progress *pr);

/* ---- ReadIndex requests ---- */

/* Read requests the leader holds at once; more are refused or dropped. */
#define RAFT__READS_PENDING_MAX 4096u
/* Read states waiting to be handed out in an update. */
#define RAFT__READ_STATES_MAX 4096u

struct raft__read_req {
    uint64_t seq;   /* leader-local id carried in heartbeat contexts */
    uint64_t index; /* commit index when the request arrived */
    uint64_t from;  /* requesting node (the leader itself for local reads) */
    uint64_t acks[RAFT_MEMBERS_MAX];
    uint8_t n_acks;
    uint8_t ctx_len;
    uint8_t ctx[RAFT_READ_CTX_MAX];
};

/* FIFO of requests ordered by seq. */
struct raft__read_queue {
    struct raft__read_req *q; /* live entries q[head .. head + n) */
    size_t head;
    size_t n;
    size_t cap;
};

struct raft__read_req *raft__rq_push(struct raft__read_queue *rq);
struct raft__read_req *raft__rq_find(struct raft__read_queue *rq, uint64_t seq);
struct raft__read_req *raft__rq_at(struct raft__read_queue *rq, size_t i);
void raft__rq_pop_front(struct raft__read_queue *rq, size_t k);
void raft__rq_clear(struct raft__read_queue *rq);
void raft__rq_free(struct raft__read_queue *rq);
/* Records id's ack; returns false if it was already recorded. */
bool raft__rq_ack(struct raft__read_req *req, uint64_t id);

#endif /* QUORUMFS_RAFT_INT_H */
