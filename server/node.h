/*
 * node.h - private to server/: the node loop shared by node.c (Raft driver,
 * apply, waiters) and the adapters that feed it (fsback.c for the mount).
 *
 * Threads: node_submit() may be called from any thread; everything else runs
 * on the node loop thread.
 */
#ifndef QUORUMFS_SERVER_NODE_H
#define QUORUMFS_SERVER_NODE_H

#include <stdbool.h>
#include <stdint.h>

#include "store/store.h"

struct node;

/* Called once per accepted submission, on the node loop thread, when the
 * request was applied on this node (err 0, res valid during the call) or
 * failed: a store error code, -ETIMEDOUT (no commit within the request
 * timeout), -ECANCELED (node stopping). */
typedef void (*node_done_cb)(void *arg, int err, const struct store_result *res);

enum node_origin {
    NODE_ORIGIN_MOUNT = 1, /* this node's filesystem mount */
    NODE_ORIGIN_CLIENT,    /* a gRPC client or the node itself */
};

/*
 * Proposes req (its id field is assigned here) through Raft. Any thread.
 * Returns 0 (cb will be called exactly once, on the loop thread) or a
 * negative code without calling cb: a store error from store_request_check
 * (too large, no space, ...), -ECANCELED when stopping, -ENOMEM.
 */
int node__submit(struct node *n, struct store_request *req, enum node_origin origin,
                 node_done_cb cb, void *arg);

/* The node's store, for readers on any thread: valid until
 * node__store_release (a received snapshot may replace it in between). */
struct store *node__store_acquire(struct node *n);
void node__store_release(struct node *n);

struct fs_backend;
/* Fills *be with the mount's view of n (server/fsback.c). */
void node__fs_backend(struct node *n, struct fs_backend *be);

/* Maps a store/raft error code to the errno a filesystem caller expects. */
int node__errno(int rc);

#endif /* QUORUMFS_SERVER_NODE_H */
