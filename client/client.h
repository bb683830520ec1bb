/*
 * client.h - asynchronous etcd v3 gRPC client on a libuv loop.
 *
 * This is the only public header of client/. It speaks etcd's v3 gRPC API
 * (package etcdserverpb, messages generated from api/proto/) to etcd or to
 * quorumfs: unary calls (Range, Put, Txn, LeaseGrant, ...) and
 * bidirectional streams (Watch, LeaseKeepAlive). One HTTP/2 connection at a
 * time, to one endpoint of the list, carries every call and stream; when it
 * cannot be made or is lost, the client moves on to the next endpoint, and
 * after a full round of failures waits (exponential backoff with jitter)
 * before the next round.
 *
 *     struct client_options o;
 *     client_options_init(&o);
 *     o.endpoints = urls; o.n_endpoints = 3;
 *     client_new(loop, &o, &c, err, sizeof(err));
 *     Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
 *     ...
 *     client_unary(c, "/etcdserverpb.KV/Range", &req.base,
 *                  &etcdserverpb__range_response__descriptor, range_cb, arg);
 *
 * Threads: a client belongs to the thread that runs its uv_loop_t. Every
 * function here must be called on that thread, and every callback runs on
 * it. Nothing is locked. Callbacks never run inside the function that
 * caused them (client_unary, client_stream_*, client_close): they run from
 * the loop, so a callback may call any function of this header, including
 * client_close().
 *
 * Which calls may have taken effect: a unary call that fails reports
 * maybe_applied. Calls that never reached a socket (queued while no
 * connection was up, or still queued inside HTTP/2 when the connection
 * went) are retried on the next connection without the caller noticing, up
 * to their deadline. A call whose request was written and whose answer was
 * lost fails UNAVAILABLE (connection gone) or DEADLINE_EXCEEDED with
 * maybe_applied = true: it may or may not have been applied, and retrying
 * it is the caller's decision.
 *
 * Errors: functions return 0 or a negative code from CLIENT_ERRORS. The
 * outcome of a call is a gRPC status (struct client_status).
 */
#ifndef QUORUMFS_CLIENT_H
#define QUORUMFS_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "etcdserverpb/rpc.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes, in the range reserved for client/ (-1700..-1799). */
#define CLIENT_ERRORS(X)                                                                           \
    X(CLIENT_ENOMEM, -1701, "out of memory")                                                       \
    X(CLIENT_EINVAL, -1702, "invalid argument")                                                    \
    X(CLIENT_ETLS, -1703, "TLS setup failed (certificate, key or CA unreadable or invalid)")       \
    X(CLIENT_EURL, -1704, "malformed or unsupported endpoint URL")                                 \
    X(CLIENT_ECLOSED, -1705, "the client or the stream is closed")                                 \
    X(CLIENT_EQUEUEFULL, -1706, "too many calls, or the stream's send queue is full")              \
    X(CLIENT_ETOOBIG, -1707, "message exceeds a size limit")                                       \
    X(CLIENT_EMALFORMED, -1708, "malformed gRPC frame or protobuf message")

enum client_error {
#define CLIENT__ERR_ENUM(name, value, text) name = value,
    CLIENT_ERRORS(CLIENT__ERR_ENUM)
#undef CLIENT__ERR_ENUM
};

/* A static description of rc (a CLIENT_ERRORS code, a -errno/UV_ code, or 0). */
const char *client_strerror(int rc);

/* gRPC status codes (grpc/doc/statuscodes.md); the numbers are wire values. */
enum client_grpc_code {
    CLIENT_GRPC_OK = 0,
    CLIENT_GRPC_CANCELLED = 1,
    CLIENT_GRPC_UNKNOWN = 2,
    CLIENT_GRPC_INVALID_ARGUMENT = 3,
    CLIENT_GRPC_DEADLINE_EXCEEDED = 4,
    CLIENT_GRPC_NOT_FOUND = 5,
    CLIENT_GRPC_ALREADY_EXISTS = 6,
    CLIENT_GRPC_PERMISSION_DENIED = 7,
    CLIENT_GRPC_RESOURCE_EXHAUSTED = 8,
    CLIENT_GRPC_FAILED_PRECONDITION = 9,
    CLIENT_GRPC_ABORTED = 10,
    CLIENT_GRPC_OUT_OF_RANGE = 11,
    CLIENT_GRPC_UNIMPLEMENTED = 12,
    CLIENT_GRPC_INTERNAL = 13,
    CLIENT_GRPC_UNAVAILABLE = 14,
    CLIENT_GRPC_DATA_LOSS = 15,
    CLIENT_GRPC_UNAUTHENTICATED = 16,
};

/* The upper-case name of a gRPC code ("UNAVAILABLE"); "UNKNOWN" outside
 * 0..16. Static storage. */
const char *client_grpc_code_name(int code);

/* ---- limits ----------------------------------------------------------------- */

/* Largest response message accepted; a larger one fails its call (or ends
 * its stream) with RESOURCE_EXHAUSTED before it is buffered. */
#define CLIENT_RECV_MSG_BYTES_MAX (64u * 1024u * 1024u)
/* Largest request message; client_unary/client_stream_send return
 * CLIENT_ETOOBIG above it. (etcd itself refuses requests over its
 * --max-request-bytes, 1.5 MiB by default, with its own error.) */
#define CLIENT_SEND_MSG_BYTES_MAX (64u * 1024u * 1024u)
/* Encoded bytes a stream may have waiting to be sent; client_stream_send
 * returns CLIENT_EQUEUEFULL once they reach it. */
#define CLIENT_STREAM_QUEUE_BYTES_MAX (8u * 1024u * 1024u)
/* Calls and streams alive at once (waiting, in flight or being delivered);
 * client_unary / client_stream_open return CLIENT_EQUEUEFULL past it. */
#define CLIENT_CALLS_MAX 65536u
/* Entries of client_options.endpoints. */
#define CLIENT_ENDPOINTS_MAX 64u
/* grpc-message bytes kept (after percent-decoding); longer ones are cut. */
#define CLIENT_STATUS_MESSAGE_BYTES_MAX 1024u

/* ---- options ------------------------------------------------------------------ */

struct client_options {
    /* "http://HOST:PORT", "https://HOST:PORT" or "HOST:PORT" (plaintext).
     * HOST: a name, an IPv4 literal or a bracketed IPv6 literal; PORT
     * defaults to 2379. Tried in order, round robin. Copied by client_new. */
    const char *const *endpoints;
    size_t n_endpoints;
    /* PEM files; NULL = none. cacert: the CAs that sign the servers'
     * certificates (https with cacert NULL: the system's default CAs).
     * cert and key: a client certificate, both or neither. Read by
     * client_new. */
    const char *cacert;
    const char *cert;
    const char *key;
    /* Per endpoint try: TCP connect + TLS handshake + the server's HTTP/2
     * SETTINGS, milliseconds. 0: 2000. Also how long client_stream_open
     * waits for a connection. */
    uint32_t dial_timeout_ms;
    /* Per unary call, from client_unary() to its answer, including waiting
     * for a connection, milliseconds. 0: 5000. Sent as grpc-timeout. */
    uint32_t command_timeout_ms;
    /* HTTP/2 PING every keepalive_ms while calls or streams are open on the
     * connection and nothing was read for that long; no PING ACK within
     * keepalive_timeout_ms declares the connection dead (a host cut off
     * without a FIN or RST is noticed this way) and failover starts.
     * 0: 2000 and 3000. UINT32_MAX as keepalive_ms: no PINGs. Note that
     * etcd, by default, answers PINGs more frequent than 5 s
     * (--grpc-keepalive-min-time) on a connection whose streams send
     * nothing with GOAWAY "too_many_pings"; the client then doubles its
     * interval for the rest of its life and logs it. */
    uint32_t keepalive_ms;
    uint32_t keepalive_timeout_ms;
    /* Wait before the next round after every endpoint failed, doubling
     * from min to max, with +-20% jitter, milliseconds. 0: 100 and 3000. */
    uint32_t backoff_min_ms;
    uint32_t backoff_max_ms;
    /* etcd authentication, both or neither: after each connection is up the
     * client calls /etcdserverpb.Auth/Authenticate and sends the token as
     * the "token" header of every call; a call answered "etcdserver:
     * invalid auth token" is retried once after authenticating again. If
     * authentication itself fails, the calls waiting for it fail with the
     * server's status (for example INVALID_ARGUMENT "etcdserver:
     * authentication failed, invalid user ID or password"). Copied. */
    const char *user;
    const char *password;
    /* Optional: receives one line per connection event, without a trailing
     * newline, such as "endpoint http://127.0.0.1:2379: connection refused;
     * next try in 400 ms". `line` is valid during the call only. */
    void (*log_cb)(void *arg, const char *line);
    void *log_arg;
};

/* Fills *o with zeros, which stand for the defaults above. */
void client_options_init(struct client_options *o);

/* ---- client ------------------------------------------------------------------- */

struct client; /* opaque */

/*
 * Validates `o`, parses the endpoint URLs and loads the TLS material, then
 * starts connecting in the background (the first attempt starts before
 * this returns; nothing is called back before it returns). `o` and its
 * strings are borrowed for the duration of the call. On success *out is
 * the client, owned by the caller until client_close(). Returns 0,
 * CLIENT_EINVAL (no endpoints, too many, user without password, cert
 * without key), CLIENT_EURL, CLIENT_ETLS (a PEM file unreadable or invalid,
 * a key that does not match its certificate) or CLIENT_ENOMEM; then *out is
 * NULL and, if err is not NULL, err[0..errlen) holds a sentence that names
 * the culprit.
 */
int client_new(uv_loop_t *loop, const struct client_options *o, struct client **out, char *err,
               size_t errlen);

/*
 * Ends the client: every unary call not yet answered gets its callback with
 * CANCELLED (maybe_applied as far as known), every stream its end_cb with
 * CANCELLED, from the loop after this returns. Then the connection and all
 * libuv handles are closed, the client is freed and close_cb(arg) (if not
 * NULL) runs. Call once; the client must not be used after this returns,
 * except that callbacks still delivered may call client functions, which
 * then fail with CLIENT_ECLOSED.
 */
void client_close(struct client *c, void (*close_cb)(void *arg), void *arg);

/* The outcome of a call or a stream. */
struct client_status {
    /* 0 OK, else a gRPC code (enum client_grpc_code): from the server, or
     * CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE, RESOURCE_EXHAUSTED,
     * INTERNAL decided here. */
    int code;
    /* The grpc-message, percent-decoded, such as "etcdserver: mvcc:
     * required revision has been compacted", or the client's own
     * explanation; "" if none. Valid during the callback only. */
    const char *message;
    /* False only when the request surely never reached a server: it was
     * never written to a socket, or the server answered with an error
     * status. True when it was sent and the answer was lost. */
    bool maybe_applied;
};

/* `resp` is non-NULL iff st->code is 0; it is of the resp_desc type and
 * borrowed for the duration of the callback. */
typedef void (*client_unary_cb)(void *arg, const struct client_status *st,
                                const ProtobufCMessage *resp);

/*
 * Starts a unary call: `path` such as "/etcdserverpb.KV/Range", `req` the
 * request (encoded before this returns; it stays the caller's), resp_desc
 * the descriptor of the response type. cb(arg, ...) is called exactly once,
 * never from inside client_unary. A call made while no connection is up
 * waits for one, within command_timeout_ms. Returns 0, or CLIENT_ECLOSED,
 * CLIENT_EINVAL, CLIENT_ETOOBIG, CLIENT_EQUEUEFULL, CLIENT_ENOMEM, and then
 * cb is never called.
 */
int client_unary(struct client *c, const char *path, const ProtobufCMessage *req,
                 const ProtobufCMessageDescriptor *resp_desc, client_unary_cb cb, void *arg);

struct client_stream; /* opaque */

struct client_stream_cbs {
    /* Each response message, in order; `msg` is of the resp_desc type and
     * borrowed for the duration of the callback. May be NULL. */
    void (*msg_cb)(void *arg, const ProtobufCMessage *msg);
    /* The end of the stream, exactly once unless client_stream_close()
     * came first: the server's status, UNAVAILABLE when the connection was
     * lost or none came up within dial_timeout_ms, CANCELLED after
     * client_close(). The handle is freed when end_cb returns. Required. */
    void (*end_cb)(void *arg, const struct client_status *st);
};

/*
 * Opens a bidirectional stream (Watch, LeaseKeepAlive). `cbs` is copied.
 * Opening while disconnected waits for a connection, for up to
 * dial_timeout_ms. If the connection dies the stream ends with UNAVAILABLE
 * and the caller reopens it (meanwhile the client reconnects, rotating
 * endpoints); a stream whose HTTP/2 HEADERS never left is moved to the
 * next connection instead. *out is the handle, valid until end_cb returns
 * or client_stream_close(). Returns 0, CLIENT_ECLOSED, CLIENT_EINVAL,
 * CLIENT_EQUEUEFULL or CLIENT_ENOMEM (then no callback).
 */
int client_stream_open(struct client *c, const char *path,
                       const ProtobufCMessageDescriptor *resp_desc,
                       const struct client_stream_cbs *cbs, void *arg, struct client_stream **out);

/* Queues one request message on the stream (encoded before this returns;
 * `msg` stays the caller's). Returns 0, CLIENT_ECLOSED (the stream has
 * ended; its end_cb is pending), CLIENT_EQUEUEFULL (CLIENT_STREAM_QUEUE_BYTES_MAX
 * are waiting; nothing queued), CLIENT_ETOOBIG or CLIENT_ENOMEM. */
int client_stream_send(struct client_stream *s, const ProtobufCMessage *msg);

/* Cancels the stream (RST_STREAM CANCEL if it is open on a connection) and
 * frees the handle; no callback of the stream runs after this, even one
 * already due. Allowed inside the stream's own msg_cb. */
void client_stream_close(struct client_stream *s);

/* True while a connection is up (and authenticated, if user is set). */
bool client_connected(const struct client *c);

/* URL of the endpoint of the current connection, or of the last one tried.
 * Valid until client_close(). */
const char *client_endpoint(const struct client *c);

#ifdef __cplusplus
}
#endif

#endif /* QUORUMFS_CLIENT_H */
