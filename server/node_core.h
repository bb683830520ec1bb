/*
 * node_core.h - private to server/: the driver core of a member, shared by
 * the libuv node loop (node.c) and the deterministic simulation
 * (tests/sim/node_sim.c).
 *
 * The core turns Raft updates into effects: it persists hard state and
 * entries to the store, sends messages, applies committed entries, answers
 * waiters, installs snapshots and keeps the member table. It does no I/O of
 * its own besides the store it is given: time, the peer network, snapshot
 * transfer and logging go through `struct node_io`, so the same code runs
 * over libuv and RocksDB in the product and over a virtual clock, a
 * simulated network and the in-memory fault-injecting store in tests.
 *
 * Threads: every function here runs on the node loop thread (the thread
 * that called node__core_start), except node__submit,
 * node__read_barrier_async, node__is_learner and node__store_acquire/
 * release (node.h), which any thread may call. NODE_ASSERT_LOOP checks it.
 */
#ifndef QUORUMFS_SERVER_NODE_CORE_H
#define QUORUMFS_SERVER_NODE_CORE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "raft/raft.h"
#include "server/node.h"
#include "server/server.h"
#include "store/store.h"

/* Programmer errors: on in every build type; prints expression, file and
 * line, then aborts. Split compound conditions into one assertion each. */
#define NODE_ASSERT(expr) ((expr) ? (void)0 : node__assert_fail(#expr, __FILE__, __LINE__))
_Noreturn void node__assert_fail(const char *expr, const char *file, int line);
/* The caller runs on the node loop thread. */
#define NODE_ASSERT_LOOP(n) NODE_ASSERT(pthread_equal(pthread_self(), (n)->loop_thread))

/* Buckets of the pending-request table (a power of two). */
#define PENDING_BUCKETS 4096u
_Static_assert((PENDING_BUCKETS & (PENDING_BUCKETS - 1)) == 0, "a power of two");
/* Most requests queued or in flight at once; more get -EAGAIN. */
#define PENDING_MAX 65536u
/* Request ids: the low 40 bits count, the bits above name the member. */
#define REQUEST_SEQ_MASK ((UINT64_C(1) << 40) - 1)

/*
 * What the core needs from its environment. Every function runs on the
 * loop thread except wake (any thread). Borrowed arguments are valid only
 * during the call.
 */
struct node_io {
    void *ctx;
    /* Monotonic milliseconds (libuv: uv_now; simulation: virtual time). */
    uint64_t (*now_ms)(void *ctx);
    /* A submission was queued from some thread: call node__drain soon,
     * then node__process. */
    void (*wake)(void *ctx);
    /* The node must stop (removed from the cluster, or n->fatal). */
    void (*stop)(void *ctx);
    /* One log line, without the trailing newline. */
    void (*log)(void *ctx, const char *line);
    /* Sends an encoded Raft message to member `to`. 0, or an error after
     * which the core reports `to` unreachable to Raft. */
    int (*send)(void *ctx, uint64_t to, const void *buf, size_t len);
    /* Streams a snapshot of n->store to m->to, with m (its snapshot
     * metadata rewritten to what the snapshot holds) as the stream's
     * metadata. Every outcome is reported with node__snapshot_report, now
     * or later, except when a send to m->to is already under way (its own
     * report will come). */
    void (*send_snapshot)(void *ctx, const struct raft_msg *m);
    /* Replaces *s (closes it) with the store received by the last
     * node__snapshot_received. 0 with *s open on it, or an error (then *s
     * may be NULL: the node stops). The received snapshot is consumed
     * either way. */
    int (*install_snapshot)(void *ctx, struct store **s);
    /* Optional: the swapped-in store was (ok) or was not initialised as
     * the snapshot's; the io may drop what it kept to undo the swap. */
    void (*install_done)(void *ctx, bool ok);
    /* The member table changed from old[0..n_old) to n->members: dial new
     * members, forget removed ones. NULL when there are no peers to dial. */
    void (*peers_changed)(void *ctx, const struct node_member *old, size_t n_old);
    /* Optional observer (tests): entry e was applied to the store. */
    void (*applied)(void *ctx, const struct raft_entry *e);
};

/* Raft flow-control settings; node__core_start with NULL uses these. */
struct node_tuning {
    uint64_t max_size_per_msg;
    unsigned max_inflight_msgs;
    uint64_t max_committed_size_per_update;
};
#define NODE_TUNING_DEFAULT                                                                        \
    {                                                                                              \
        .max_size_per_msg = 1024 * 1024, .max_inflight_msgs = 256,                                 \
        .max_committed_size_per_update = 64 * 1024 * 1024,                                         \
    }

struct proposal;
struct barrier;
struct barrier_req;
struct waiter;

struct node {
    const struct server_config *cfg; /* borrowed; outlives the node */
    struct node_io io;               /* copied at init */
    pthread_t loop_thread;           /* set by node__core_start */

    /* The store. Readers on other threads hold store_lock shared; the loop
     * holds it exclusively only while it swaps in a received snapshot. */
    pthread_rwlock_t store_lock;
    struct store *store; /* written by the loop thread under store_lock */
    struct raft *raft;   /* loop thread */
    uint64_t id;         /* this member; constant after init */

    /* Raft's view of the log: forwards to the current store's storage, so a
     * store swapped in from a snapshot is what Raft reads next. */
    struct raft_storage storage;

    /* Loop thread: the driver's state. */
    bool dirty;                  /* raft may have an update: call node__process */
    bool snap_pending;           /* a received snapshot awaits Raft's verdict */
    uint64_t pending_snap_index; /* its index, valid with snap_pending */
    bool ever_joined;            /* heard from a leader at least once */

    /* Submissions from other threads; protected by mu. */
    pthread_mutex_t mu;
    struct proposal *q_head, *q_tail;      /* mu */
    struct barrier_req *bq_head, *bq_tail; /* node__read_barrier_async; mu */
    bool stopping;                         /* mu: no new submissions */
    size_t n_outstanding;                  /* mu: queued + pending */
    uint64_t next_id;                      /* mu; see node__submit */

    /* Loop thread only. */
    struct proposal *pending[PENDING_BUCKETS];
    size_t n_pending; /* proposals in `pending`; <= n_outstanding */
    uint64_t last_compact_index;
    uint64_t leader;
    bool fatal; /* an apply or persist failed: stop */
    /* Raft's configuration lists this member as a learner. Written by the
     * loop thread (role_refresh), read by node__submit on any thread. */
    atomic_bool learner;

    /* Membership as etcd shows it (names, URLs); loop thread. Raft's
     * configuration decides who votes; this table only describes members. */
    size_t n_members;
    struct node_member members[SERVER_MEMBERS_MAX];
    uint64_t cluster_id;
    bool published;            /* our client URLs were replicated */
    uint64_t publish_retry_ms; /* now_ms before which we do not propose again */

    /* Loop-thread waiters of the etcd services. */
    struct barrier *barriers; /* read barriers, oldest first */
    uint64_t next_barrier;
    struct waiter *conf_waiter; /* the one pending membership change */
    struct waiter *move_waiter; /* the one pending leadership transfer */
    node_apply_hook apply_hook;
    node_leader_hook leader_hook;
    void *hook_ctx;
    node_restore_hook restore_hook;
    void *restore_ctx;
};

/* Initialises n (zeroed by the caller) for cfg; n->store is set by the
 * caller before node__core_start. next_id seeds request ids: it must differ
 * from every id an earlier run of this member used (see node__submit). */
int node__core_init(struct node *n, const struct server_config *cfg, const struct node_io *io,
                    uint64_t next_id);
/* On the loop thread, with n->store open: records a new cluster's initial
 * configuration, loads the member table, starts Raft (seeded with
 * raft_seed; tuning NULL = NODE_TUNING_DEFAULT). 0 or -1 (logged). */
int node__core_start(struct node *n, uint64_t raft_seed, const struct node_tuning *tuning);
/* Refuses new submissions and answers every waiter with -ECANCELED. */
void node__core_cancel(struct node *n);
/* Frees Raft and the locks (not the store, not n). After node__core_cancel. */
void node__core_fini(struct node *n);

/* Processes every pending Raft update (group commit). Stops the node
 * (io.stop) when fatal. */
void node__process(struct node *n);
/* One heartbeat interval passed: ticks Raft, expires and retries waiters. */
void node__tick(struct node *n);
/* Takes what other threads queued (after io.wake). */
void node__drain(struct node *n);
/* An encoded Raft message arrived from member from_id. */
void node__recv_message(struct node *n, uint64_t from_id, const void *buf, size_t len);
/* A snapshot stream finished; m is its SNAP metadata (borrowed). The io
 * keeps the received data until install_snapshot. */
void node__snapshot_received(struct node *n, uint64_t from_id, const struct raft_msg *m);
/* How a snapshot send to `to` ended. */
void node__snapshot_report(struct node *n, uint64_t to, bool ok);
/* Applies committed entry e to the store exactly as node__process does
 * (conf changes through Raft, member updates, store requests, waiters).
 * 0 or a store error (nothing applied). The simulation builds snapshots
 * by replaying the committed log through it. */
int node__apply_entry(struct node *n, const struct raft_entry *e);
/* Logs through io.log ("quorumfs: " is the io's to add). */
void node__logf(struct node *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif /* QUORUMFS_SERVER_NODE_CORE_H */
