/*
 * etcd.h - private to server/: the etcd v3 services of a node (KV, Watch,
 * Lease, Cluster, Maintenance) behind the gRPC transport of api/, so that
 * etcdctl 3.4 and etcd client libraries work against quorumfs unchanged.
 *
 * The services implement struct api_backend over the node loop (node.h):
 * writes become store requests proposed with node__submit() and are answered
 * once applied on this member; reads are served from the store, after a
 * ReadIndex barrier unless the client asked for a serializable read; watch
 * fan-out and lease bookkeeping ride on the node's apply and leader hooks.
 * Answers copy etcd 3.4's messages, error strings and gRPC codes, because
 * etcd clients turn the strings back into typed errors.
 *
 * Threads: everything here runs on the node loop thread (node__loop()),
 * except etcd__snapshot_restore*() and the pure conversion functions, which
 * any thread may call.
 *
 * Files: etcd_main.c (start/stop, hooks, headers, errors, the arena),
 * etcd_kv.c (KV and the protobuf <-> store conversions), etcd_watch.c,
 * etcd_lease.c, etcd_cluster.c, etcd_maint.c (Maintenance, snapshot format
 * and restore).
 */
#ifndef QUORUMFS_SERVER_ETCD_H
#define QUORUMFS_SERVER_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "api/api.h"
#include "mvccpb/kv.pb-c.h"
#include "server/node.h"
#include "store/store.h"

/* Programmer errors: stays on in release builds. */
#define ETCD_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) etcd__assert_fail(#cond, __FILE__, __LINE__);                                 \
    } while (0)
_Noreturn void etcd__assert_fail(const char *expr, const char *file, int line);

/* ------------------------------------------------------------------ entry */

/*
 * Creates the etcd v3 API server of node n on node__loop(n), listening on
 * node__config(n)->listen_client_urls (TLS from cert_file/key_file, request
 * size limit from max_request_bytes), and installs the node's apply and
 * leader hooks. *out on success. Returns 0 or a negative code from
 * api_server_new() (-EADDRINUSE, API_EURL, ...; api_strerror() names it) or
 * -ENOMEM. Loop thread.
 */
int etcd__start(struct node *n, struct api_server **out);

/*
 * Closes the server returned by etcd__start(): stops listening, ends every
 * stream, removes the hooks and stops the service timers. Unary calls still
 * waiting for the node are answered when their node callback arrives (with
 * "etcdserver: server stopped" at shutdown). Memory is released once the
 * server's handles are closed and every node callback has come back, so the
 * caller must keep running the loop (and let the node answer or cancel its
 * pending requests) after this call. Call it before closing every handle of
 * the loop with uv_walk(). Loop thread.
 */
void etcd__stop(struct api_server *s);

/*
 * `quorumfs snapshot restore FILE --data-dir DIR`: checks and unpacks a
 * snapshot written by the Snapshot RPC (format in etcd_maint.c) into a new
 * data directory DIR (its "db" subdirectory must not exist), dropping the
 * Raft log it carried. The restored store keeps its keys, revisions and
 * leases; its cluster configuration is the single default member (the
 * member `quorumfs --data-dir DIR` with no other flag would be), as etcd's
 * restore with default flags. Returns 0, or -1 with a sentence in err.
 * Any thread; does not need a running node.
 */
int etcd__snapshot_restore(const char *file, const char *data_dir, char *err, size_t errlen);

/*
 * As etcd__snapshot_restore(), but the data directory, the member and the
 * new cluster's configuration come from cfg (cfg->data_dir, cfg->members as
 * parsed from --initial-cluster, --name, --initial-cluster-token...), as
 * etcdctl snapshot restore takes --name/--initial-cluster. Every member
 * restored from the same file with the same flags gets the same state.
 */
struct server_config;
int etcd__snapshot_restore_config(const char *file, const struct server_config *cfg, char *err,
                                  size_t errlen);

/* ------------------------------------------------------------------ limits */

/* Watchers one Watch stream may hold (etcd has no limit; a client opening
 * more is broken or hostile). */
#define ETCD_WATCHERS_PER_STREAM_MAX 65536u
/* How often unsynced watchers are caught up from the store's history
 * (etcd's syncWatchersLoop period), and how many per pass (etcd's
 * maxWatchersPerSync). */
#define ETCD_WATCH_SYNC_INTERVAL_MS 100u
#define ETCD_WATCH_SYNC_WATCHERS_MAX 512u
/* Events read from the history per watcher and response while catching up
 * (etcd sends at most 1000 revisions per response to an unsynced watcher). */
#define ETCD_WATCH_BATCH_EVENTS 1000u
/* etcd's progressReportInterval for progress_notify watchers. */
#define ETCD_WATCH_PROGRESS_INTERVAL_MS (10u * 60u * 1000u)
/* Control responses (created, canceled, progress) a stream may have waiting
 * while its client does not read; past it the stream is ended. */
#define ETCD_WATCH_CTRL_QUEUE_MAX 1024u
/* Lease expiry check period on the leader (etcd checks every 500 ms). */
#define ETCD_LEASE_TICK_MS 500u
/* Expiry revocations in flight at once (etcd: 1000 revocations per second). */
#define ETCD_LEASE_REVOKE_INFLIGHT_MAX 500u
/* Renewals one LeaseKeepAlive stream may have in flight. */
#define ETCD_KEEPALIVE_INFLIGHT_MAX 1024u
/* Attempts at a fresh lease id when a chosen one already exists. */
#define ETCD_LEASE_ID_ATTEMPTS_MAX 8u
/* Snapshot chunk (etcd's snapshotSendBufferSize) and how much one loop turn
 * reads from disk before yielding to other work. */
#define ETCD_SNAPSHOT_CHUNK_BYTES (32u * 1024u)
#define ETCD_SNAPSHOT_TURN_BYTES (1024u * 1024u)
/* Snapshot streams at once per node (each holds a store checkpoint). */
#define ETCD_SNAPSHOTS_MAX 4u
/* Members in one cluster answer (node.h's bound). */
#define ETCD_MEMBERS_MAX SERVER_MEMBERS_MAX

/* The version Status reports: etcd's API version first (clients parse
 * major.minor), quorumfs as semver build metadata. */
#define ETCD_STATUS_VERSION "3.4.23+quorumfs"

/* ------------------------------------------------------------------ state */

/* A bump allocator for one answer's protobuf tree: every message of a
 * response lives here and is released at once after api_reply() encoded it.
 * Out of memory makes etcd__alloc() return NULL. */
struct etcd_arena_chunk;
struct etcd_arena {
    struct etcd_arena_chunk *head;
};
void *etcd__alloc(struct etcd_arena *a, size_t n); /* zeroed */
void *etcd__memdup(struct etcd_arena *a, const void *p, size_t n);
void etcd__arena_free(struct etcd_arena *a);

struct etcd_watch_hub;
struct etcd_lease_table;

/* Every per-stream struct starts with this tag, so stream_drained and the
 * stream's data pointer say which service owns a stream. */
enum etcd_stream_kind {
    ETCD_STREAM_WATCH = 1,
    ETCD_STREAM_KEEPALIVE = 2,
    ETCD_STREAM_SNAPSHOT = 3,
};
struct etcd_snapshot;

/* An alarm raised on a member (etcd's AlarmMember), kept in memory. */
struct etcd_alarm {
    uint64_t member_id;
    int type; /* Etcdserverpb__AlarmType */
};
#define ETCD_ALARMS_MAX (2u * ETCD_MEMBERS_MAX)

/* The services of one node. Loop thread only. */
struct etcd {
    struct node *node;
    uv_loop_t *loop;
    const struct server_config *cfg;
    struct api_server *api;
    /* Pending node callbacks, open streams, unclosed handles, plus one for
     * the server until its close_cb: freed when it drops to zero. */
    unsigned refs;
    bool stopping;
    size_t max_request_bytes; /* --max-request-bytes, or the default */

    /* node__status() copy, refreshed at most once per loop millisecond:
     * headers need the term, Status and Cluster need the rest. */
    struct node_status st;
    uint64_t st_ms;
    bool st_valid;

    struct etcd_watch_hub *watch;
    struct etcd_lease_table *leases;
    struct etcd_snapshot *snapshots; /* list of running Snapshot streams */
    unsigned n_snapshots;
    uint64_t snapshot_seq; /* names checkpoint directories */

    size_t n_alarms;
    struct etcd_alarm alarms[ETCD_ALARMS_MAX];

    /* For GET /metrics (etcd's names). */
    uint64_t leader_seen;       /* last leader observed by etcd__status() */
    uint64_t leader_changes;    /* etcd_server_leader_changes_seen_total */
    uint64_t proposals_pending; /* client submissions awaiting their callback */
    uint64_t proposals_failed;  /* submissions not applied (timeout, refused) */
    uint64_t health_success;    /* GET /health answered true */
    uint64_t health_failures;   /* ... false */
};

void etcd__ref(struct etcd *e);
void etcd__unref(struct etcd *e);

/* The member's view of Raft and the cluster (cached, see above). */
const struct node_status *etcd__status(struct etcd *e);
void etcd__status_invalidate(struct etcd *e);

/* Fills h: cluster and member ids, term and revision (rev 0: the store's
 * current revision, as etcd's header.fill()). */
void etcd__header(struct etcd *e, Etcdserverpb__ResponseHeader *h, int64_t rev);

/* The store's current revision (acquire, read, release). */
int64_t etcd__current_revision(struct etcd *e);

/* GET /health (etcd's checkHealth): false with an alarm raised, without a
 * leader, or when a linearizable read barrier fails. */
void etcd__health(void *ctx, struct api_call *call);
/* GET /metrics: etcd's metric families for what the node knows. */
void etcd__metrics(void *ctx, struct api_text *out);

/* ------------------------------------------------------------------ errors */

/*
 * Maps a code from the node, the store or Raft to etcd's gRPC status code
 * and message (rpctypes/error.go): for example STORE_ECOMPACTED ->
 * OUT_OF_RANGE "etcdserver: mvcc: required revision has been compacted",
 * -ETIMEDOUT -> UNAVAILABLE "etcdserver: request timed out". The message is
 * static. Pure.
 */
enum api_grpc_code etcd__grpc_error(int rc, const char **message);
/* api_reply_error() with etcd__grpc_error(rc). */
void etcd__reply_error(struct api_call *call, int rc);
/* Errors of our own that have an etcd wording but no store code. */
#define ETCD_ERRORS(X)                                                                             \
    X(ETCD_ENOLEADER, -1701, "etcdserver: no leader")                                              \
    X(ETCD_ENOTLEADER, -1702, "etcdserver: not leader")                                            \
    X(ETCD_EMEMBERNOTFOUND, -1703, "etcdserver: member not found")                                 \
    X(ETCD_EPEERURLEXISTS, -1704, "etcdserver: Peer URLs already exists")                          \
    X(ETCD_EMEMBERBADURLS, -1705, "etcdserver: given member URLs are invalid")                     \
    X(ETCD_EMEMBERNOTLEARNER, -1706, "etcdserver: can only promote a learner member")              \
    X(ETCD_ELEARNERNOTREADY, -1707,                                                                \
      "etcdserver: can only promote a learner member which is in sync with leader")                \
    X(ETCD_EUNHEALTHY, -1708, "etcdserver: unhealthy cluster")                                     \
    X(ETCD_EBADTRANSFEREE, -1709, "etcdserver: bad leader transferee")                             \
    X(ETCD_ELEARNERRPC, -1710, "etcdserver: rpc not supported for learner")                        \
    X(ETCD_ETOOMANYREQUESTS, -1711, "etcdserver: too many requests")                               \
    X(ETCD_ESTOPPED, -1712, "etcdserver: server stopped")                                          \
    X(ETCD_ETRANSFERTIMEOUT, -1713,                                                                \
      "etcdserver: request timed out, leader transfer took too long")                              \
    X(ETCD_EWATCHDUPID, -1714, "mvcc: duplicate watch ID provided on the WatchStream")             \
    X(ETCD_EWATCHRANGE, -1715, "mvcc: watcher range is empty")

enum etcd_error {
#define ETCD__ERR_ENUM(name, value, text) name = value,
    ETCD_ERRORS(ETCD__ERR_ENUM)
#undef ETCD__ERR_ENUM
};

/* A static description of rc: an ETCD_ERRORS code (etcd's own wording), or
 * whatever store_strerror() says of any other code. Never NULL. */
const char *etcd__strerror(int rc);

/* ------------------------------------------------------------------ conversions
 * Pure functions between etcd's protobuf messages and store requests and
 * results. Byte strings of the produced store structs borrow from the
 * protobuf input; arrays come from the arena. Protobuf output lives in the
 * arena and borrows bytes from the store result, which must outlive it. */

/* Key ranges as etcd defines them: end empty = the single key `key`; end
 * "\0" = every key >= key; otherwise [key, end). Pure. */
bool etcd__key_in_range(const void *k, size_t klen, const void *key, size_t key_len,
                        const void *end, size_t end_len);

void etcd__range_from_pb(const Etcdserverpb__RangeRequest *in, struct store_range_req *out);
void etcd__put_from_pb(const Etcdserverpb__PutRequest *in, int64_t mtime_ns, struct store_put *out);
void etcd__delete_from_pb(const Etcdserverpb__DeleteRangeRequest *in,
                          struct store_delete_range *out);
/* Converts a TxnRequest, nested ones included. Nesting deeper than
 * STORE_TXN_DEPTH_MAX is STORE_ETOOMANYOPS (the store could not encode it);
 * an op with no request set is STORE_EKEYNOTFOUND, as etcd answers
 * "etcdserver: key not found". Returns 0, STORE_ENOMEM or one of those. */
int etcd__txn_from_pb(struct etcd_arena *a, const Etcdserverpb__TxnRequest *in, int64_t mtime_ns,
                      struct store_txn *out);
/* True if the txn (or a nested one) has a put; with_delete: or a delete. */
bool etcd__txn_writes(const struct store_txn *t, bool with_delete);

Mvccpb__KeyValue *etcd__kv_to_pb(struct etcd_arena *a, const struct store_kv *kv, bool keys_only);
/* Fills out (already initialised) from r: kvs, more, count. */
int etcd__range_to_pb(struct etcd_arena *a, const struct store_range_result *r, bool keys_only,
                      Etcdserverpb__RangeResponse *out);
/*
 * Fills out (already initialised) from the result of txn t applied at store
 * revision `rev` (the revision after the apply): succeeded, and one
 * ResponseOp per op of the branch taken, with etcd's inner headers (only a
 * revision: the one each op ran at). keys_only of nested ranges is honoured.
 */
int etcd__txn_to_pb(struct etcd_arena *a, const struct store_txn *t,
                    const struct store_txn_result *r, int64_t rev, Etcdserverpb__TxnResponse *out);
/* One event as mvccpb.Event; with_prev: attach prev_kv when the store has it. */
Mvccpb__Event *etcd__event_to_pb(struct etcd_arena *a, const struct store_event *ev,
                                 bool with_prev);

/* ------------------------------------------------------------------ services */

/* KV (etcd_kv.c). */
void etcd__kv_range(void *ctx, struct api_call *call, const Etcdserverpb__RangeRequest *req);
void etcd__kv_put(void *ctx, struct api_call *call, const Etcdserverpb__PutRequest *req);
void etcd__kv_delete_range(void *ctx, struct api_call *call,
                           const Etcdserverpb__DeleteRangeRequest *req);
void etcd__kv_txn(void *ctx, struct api_call *call, const Etcdserverpb__TxnRequest *req);
void etcd__kv_compact(void *ctx, struct api_call *call, const Etcdserverpb__CompactionRequest *req);
/* Submits req for a client; answers `call` with rc if the node refused it at
 * once (returns rc). A STORE_ENOSPACE raises the NOSPACE alarm. */
int etcd__submit(struct etcd *e, struct store_request *req, node_done_cb cb, void *arg);
/* Raises the NOSPACE alarm for this member (etcd does when a put exceeds the
 * quota) and tells whether an alarm blocks writes with puts. */
void etcd__alarm_nospace(struct etcd *e);
bool etcd__alarm_blocks_puts(const struct etcd *e);

/* Watch (etcd_watch.c). */
int etcd__watch_init(struct etcd *e);
void etcd__watch_stop(struct etcd *e); /* ends streams, closes timers */
void etcd__watch_free(struct etcd *e);
void etcd__watch_on_apply(struct etcd *e, const struct store_result *res);
void etcd__watch_open(void *ctx, struct api_stream *stream);
void etcd__watch_request(void *ctx, struct api_stream *stream,
                         const Etcdserverpb__WatchRequest *req);
void etcd__watch_end(void *ctx, struct api_stream *stream, enum api_stream_event ev);
void etcd__watch_drained(struct etcd *e, struct api_stream *stream);
/* Test knob: the progress_notify period (0 restores the default). */
void etcd__watch_set_progress_interval(unsigned ms);

/* Lease (etcd_lease.c). */
int etcd__lease_init(struct etcd *e);
void etcd__lease_stop(struct etcd *e);
void etcd__lease_free(struct etcd *e);
void etcd__lease_on_apply(struct etcd *e, const struct store_result *res);
void etcd__lease_on_leader(struct etcd *e, bool leading);
void etcd__lease_grant(void *ctx, struct api_call *call,
                       const Etcdserverpb__LeaseGrantRequest *req);
void etcd__lease_revoke(void *ctx, struct api_call *call,
                        const Etcdserverpb__LeaseRevokeRequest *req);
void etcd__lease_keep_alive_open(void *ctx, struct api_stream *stream);
void etcd__lease_keep_alive_request(void *ctx, struct api_stream *stream,
                                    const Etcdserverpb__LeaseKeepAliveRequest *req);
void etcd__lease_keep_alive_end(void *ctx, struct api_stream *stream, enum api_stream_event ev);
void etcd__lease_time_to_live(void *ctx, struct api_call *call,
                              const Etcdserverpb__LeaseTimeToLiveRequest *req);
void etcd__lease_leases(void *ctx, struct api_call *call,
                        const Etcdserverpb__LeaseLeasesRequest *req);
/* etcd's minimum lease TTL for this node's timing, in seconds: (3 *
 * election_ticks / 2) heartbeats, rounded up (2 s with etcd's defaults). */
int64_t etcd__lease_min_ttl(unsigned heartbeat_ms, unsigned election_ms);
/* A lease id for this member: (member id's low 16 bits) << 47 | counter,
 * always positive and never 0. Pure. */
int64_t etcd__lease_id(uint64_t member_id, uint64_t counter);

/* Cluster (etcd_cluster.c). */
void etcd__member_add(void *ctx, struct api_call *call, const Etcdserverpb__MemberAddRequest *req);
void etcd__member_remove(void *ctx, struct api_call *call,
                         const Etcdserverpb__MemberRemoveRequest *req);
void etcd__member_update(void *ctx, struct api_call *call,
                         const Etcdserverpb__MemberUpdateRequest *req);
void etcd__member_list(void *ctx, struct api_call *call,
                       const Etcdserverpb__MemberListRequest *req);
void etcd__member_promote(void *ctx, struct api_call *call,
                          const Etcdserverpb__MemberPromoteRequest *req);
/* Checks a list of peer URLs as etcd's types.NewURLs does (scheme http or
 * https, HOST:PORT, no path) and joins them with commas into buf. Returns 0
 * or ETCD_EMEMBERBADURLS. Pure. */
int etcd__join_urls(char *const *urls, size_t n, char *buf, size_t cap);

/* Maintenance (etcd_maint.c). */
void etcd__alarm(void *ctx, struct api_call *call, const Etcdserverpb__AlarmRequest *req);
void etcd__status_rpc(void *ctx, struct api_call *call, const Etcdserverpb__StatusRequest *req);
void etcd__defragment(void *ctx, struct api_call *call, const Etcdserverpb__DefragmentRequest *req);
void etcd__hash(void *ctx, struct api_call *call, const Etcdserverpb__HashRequest *req);
void etcd__hash_kv(void *ctx, struct api_call *call, const Etcdserverpb__HashKVRequest *req);
void etcd__snapshot(void *ctx, struct api_stream *stream, const Etcdserverpb__SnapshotRequest *req);
void etcd__snapshot_end(void *ctx, struct api_stream *stream, enum api_stream_event ev);
void etcd__snapshot_drained(struct etcd *e, struct api_stream *stream);
void etcd__snapshot_stop_all(struct etcd *e);
/* Removes checkpoints of Snapshot streams a previous run left behind. */
void etcd__snapshot_cleanup(const char *data_dir);
void etcd__move_leader(void *ctx, struct api_call *call,
                       const Etcdserverpb__MoveLeaderRequest *req);

/* The snapshot file format's pieces, exposed for tests. A ustar header for
 * a regular file `name` of `size` bytes into hdr[512]; -1 if the name does
 * not fit. */
int etcd__tar_header(uint8_t hdr[512], const char *name, uint64_t size, uint32_t mode);
/* Parses a ustar header: 0 (name/size filled), 1 (end-of-archive block),
 * -1 (bad checksum or field). name needs 101 bytes. */
int etcd__tar_parse(const uint8_t hdr[512], char name[101], uint64_t *size, char *type);

#endif /* QUORUMFS_SERVER_ETCD_H */
