/*
 * node.h - private to server/: the node loop shared by node.c (Raft driver,
 * apply, waiters) and the etcd services that feed it (etcd_*.c). The mount
 * is a process of its own (member_mount.c), a client of the etcd API.
 *
 * Threads: node_submit() may be called from any thread; everything else runs
 * on the node loop thread.
 */
#ifndef QUORUMFS_SERVER_NODE_H
#define QUORUMFS_SERVER_NODE_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "server/server.h"
#include "store/store.h"

struct node;

/* Called once per accepted submission, on the node loop thread:
 * - the request was applied on this node: res is valid during the call and
 *   err is res->err (0, or the store error code the apply rejected it with;
 *   the entry is applied either way);
 * - or it was not applied here: res is NULL and err is -ETIMEDOUT (no commit
 *   within the request timeout; it may still commit later), -ECANCELED (node
 *   stopping) or -EIO (Raft refused the proposal). */
typedef void (*node_done_cb)(void *arg, int err, const struct store_result *res);

enum node_origin {
    NODE_ORIGIN_MOUNT = 1, /* this node's filesystem mount */
    NODE_ORIGIN_CLIENT,    /* a gRPC client or the node itself */
};

/*
 * Proposes req (its id field is assigned here) through Raft. Any thread.
 * Returns 0 (cb will be called exactly once, on the loop thread) or a
 * negative code without calling cb: a store error from store_request_check
 * (too large, no space, ...), -EROFS on a learner (it proposes nothing:
 * client writes and mount writes are refused), -ECANCELED when stopping,
 * -EAGAIN (too many requests in flight), -ENOMEM.
 */
int node__submit(struct node *n, struct store_request *req, enum node_origin origin,
                 node_done_cb cb, void *arg);

/* True while Raft's configuration lists this member as a learner (a member
 * added with MemberAdd --learner learns it from the snapshot the leader
 * sends it on joining; false again once promoted). Any thread. etcd serves
 * only Status and serializable Range on a learner ("etcdserver: rpc not
 * supported for learner"). */
bool node__is_learner(struct node *n);

/* The node's store, for readers on any thread: valid until
 * node__store_release (a received snapshot may replace it in between). */
struct store *node__store_acquire(struct node *n);
void node__store_release(struct node *n);

/* Maps a store/raft error code to the errno a filesystem caller expects. */
int node__errno(int rc);

/* ---------------------------------------------------------------------
 * Loop-thread services for the etcd API (server/etcd_*.c). Every function
 * below must be called on the node loop thread, and every callback runs
 * there.
 */

uv_loop_t *node__loop(struct node *n);
const struct server_config *node__config(struct node *n);

/* A cluster member as etcd's Member message shows it. */
struct node_member {
    uint64_t id;
    char name[SERVER_NAME_MAX];
    char peer_urls[SERVER_URL_MAX];   /* comma-separated */
    char client_urls[SERVER_URL_MAX]; /* comma-separated; "" until published */
    bool learner;
};

struct node_status {
    uint64_t id;     /* this member */
    uint64_t leader; /* 0 = none known */
    uint64_t term;
    uint64_t commit;  /* Raft commit index (etcd's raftIndex) */
    uint64_t applied; /* etcd's raftAppliedIndex */
    uint64_t cluster_id;
    bool learner; /* this member is a learner */
    size_t n_members;
    struct node_member members[SERVER_MEMBERS_MAX];
};
void node__status(struct node *n, struct node_status *st);

/* Linearizable read barrier (ReadIndex): cb(arg, 0) once this node has
 * applied everything the leader had committed when the barrier was asked
 * and the leader confirmed it still leads; cb(arg, -ETIMEDOUT) after the
 * request timeout; cb(arg, -ECANCELED) at shutdown. */
typedef void (*node_barrier_cb)(void *arg, int err);
int node__read_barrier(struct node *n, node_barrier_cb cb, void *arg);
/* The same from any thread (the mount's): queued for the node loop.
 * Returns 0 or -ENOMEM, -ECANCELED (stopping); cb runs on the loop. */
int node__read_barrier_async(struct node *n, node_barrier_cb cb, void *arg);

/*
 * Membership change (etcd MemberAdd/Remove/Promote/Update) through Raft:
 * type is RAFT_CC_ADD_VOTER (add, or promote a learner), RAFT_CC_ADD_LEARNER
 * or RAFT_CC_REMOVE; m describes the member (m->id 0 for an add: an id is
 * assigned and written back into *m before the call returns). For an update
 * (type -1) only the peer URLs change. cb(arg, 0) once the change was
 * applied on this node; cb(arg, err) on failure (-ETIMEDOUT, -EBUSY when
 * another change is pending, -ENOENT unknown member, -EEXIST duplicate peer
 * URL, -EPERM promoting a learner that is not caught up). m is copied.
 */
#define NODE_MEMBER_UPDATE (-1)
int node__member_change(struct node *n, int type, struct node_member *m, node_barrier_cb cb,
                        void *arg);

/* Leadership transfer to member `to` (etcd MoveLeader). cb(arg, 0) once
 * `to` leads, or an error (-ENOENT, -EPERM not leader, -ETIMEDOUT). */
int node__transfer_leader(struct node *n, uint64_t to, node_barrier_cb cb, void *arg);

/* Hooks. The apply hook runs after every applied request that changed or
 * read something (watch fan-out, lease bookkeeping), in index order, with
 * the result as the store produced it. The leader hook runs whenever this
 * member gains or loses leadership. One of each; NULL to unset. */
typedef void (*node_apply_hook)(void *ctx, const struct store_result *res);
typedef void (*node_leader_hook)(void *ctx, bool leading);
void node__set_hooks(struct node *n, node_apply_hook apply, node_leader_hook leader, void *ctx);
/* Called on the loop after a snapshot replaced the store: revisions were
 * applied without the apply hook (watchers catch up from the history). */
typedef void (*node_restore_hook)(void *ctx);
void node__set_restore_hook(struct node *n, node_restore_hook restore, void *ctx);

#endif /* QUORUMFS_SERVER_NODE_H */
