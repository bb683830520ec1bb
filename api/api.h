/*
 * api.h - etcd v3 gRPC API transport: gRPC over HTTP/2 on a libuv loop,
 * and on the same listeners HTTP/1.1 as etcd 3.4 serves it: GET /version,
 * /health and /metrics, and the JSON gateway (POST /v3/... and /v3beta/...),
 * whose requests are converted to the same protobuf messages and routed to
 * the same struct api_backend entries as gRPC calls; replies are converted
 * back to JSON by api/ (the backend cannot tell the two apart).
 *
 * This is the only public header of api/. It serves etcd's v3 gRPC API
 * (package etcdserverpb, see api/proto/) so that etcdctl and etcd client
 * libraries talk to quorumfs unchanged. api/ owns the sockets, TLS, HTTP/2
 * (nghttp2), gRPC framing and protobuf decoding; it knows nothing about the
 * store. Each routed RPC is handed, decoded, to one entry of a table of
 * functions (struct api_backend) that the node implements; the node answers
 * whenever it is ready, usually after Raft applied the request:
 *
 *     static void my_put(void *ctx, struct api_call *call,
 *                        const Etcdserverpb__PutRequest *req) {
 *         ... propose req; keep `call`; later, on the loop thread:
 *         api_reply(call, &resp.base);         // or api_reply_error(...)
 *     }
 *
 * Threads: everything here, including every api_backend callback and every
 * api_reply / api_stream_* call, runs on the thread of the uv_loop_t given to
 * api_server_new(). Nothing is locked.
 *
 * Life of a unary call: the backend entry receives `call` and `req`. It must
 * answer exactly once with api_reply() or api_reply_error(), even if the
 * client has gone away meanwhile (the answer is then dropped) and even after
 * api_server_close(): a call handed to the backend stays valid until it is
 * answered, independently of its connection and of the server. `req` is
 * owned by the call and stays valid until that answer. Answering inside the
 * entry itself is allowed.
 *
 * Life of a stream (Watch, LeaseKeepAlive: bidirectional; Snapshot: server
 * streaming): the stream handle is valid from the open entry until the
 * backend calls api_stream_close(), exactly once, whatever the client did.
 * Request messages passed to a stream's request entry are borrowed for the
 * duration of that entry only. The stream's end entry reports, at most once
 * each and in this order, API_STREAM_HALF_CLOSED (the client will send no
 * more requests; the backend may keep sending) and API_STREAM_CANCELLED (the
 * client or its connection is gone, or the transport ended the stream with
 * an error: nothing sent any more reaches it; the backend must now call
 * api_stream_close()). CANCELLED is not reported once the backend has called
 * api_stream_close().
 *
 * Responses: api_reply() and api_stream_send() encode the message before
 * they return; the caller keeps ownership of it (it may live on the stack).
 *
 * Errors: functions return 0 or a negative code: -errno from the system
 * (bind, listen) or one of API_ERRORS.
 */
#ifndef QUORUMFS_API_H
#define QUORUMFS_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "etcdserverpb/rpc.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes, in the range reserved for api/ (-1600..-1699). */
#define API_ERRORS(X)                                                                              \
    X(API_ENOMEM, -1601, "out of memory")                                                          \
    X(API_EINVAL, -1602, "invalid argument")                                                       \
    X(API_EURL, -1603, "malformed or unsupported listen URL")                                      \
    X(API_ETLS, -1604, "TLS setup failed (certificate, key or library)")                           \
    X(API_ECLOSED, -1605, "the client is gone or the call already ended")                          \
    X(API_EQUEUEFULL, -1606, "stream send queue is full (the client does not read)")               \
    X(API_ETOOBIG, -1607, "message exceeds a size limit")                                          \
    X(API_ECOMPRESSED, -1608, "compressed gRPC messages are not supported")                        \
    X(API_EMALFORMED, -1609, "malformed gRPC frame or protobuf message")

enum api_error {
#define API__ERR_ENUM(name, value, text) name = value,
    API_ERRORS(API__ERR_ENUM)
#undef API__ERR_ENUM
};

/* Returns a static description of rc (an API_ERRORS code, -errno, or 0). */
const char *api_strerror(int rc);

/* gRPC status codes (grpc/doc/statuscodes.md); the numbers are wire values. */
enum api_grpc_code {
    API_GRPC_OK = 0,
    API_GRPC_CANCELLED = 1,
    API_GRPC_UNKNOWN = 2,
    API_GRPC_INVALID_ARGUMENT = 3,
    API_GRPC_DEADLINE_EXCEEDED = 4,
    API_GRPC_NOT_FOUND = 5,
    API_GRPC_ALREADY_EXISTS = 6,
    API_GRPC_PERMISSION_DENIED = 7,
    API_GRPC_RESOURCE_EXHAUSTED = 8,
    API_GRPC_FAILED_PRECONDITION = 9,
    API_GRPC_ABORTED = 10,
    API_GRPC_OUT_OF_RANGE = 11,
    API_GRPC_UNIMPLEMENTED = 12,
    API_GRPC_INTERNAL = 13,
    API_GRPC_UNAVAILABLE = 14,
    API_GRPC_DATA_LOSS = 15,
    API_GRPC_UNAUTHENTICATED = 16,
};

/* Returns the canonical upper-case name of a gRPC code ("UNIMPLEMENTED"),
 * or "UNKNOWN" for a number outside 0..16. Static storage. */
const char *api_grpc_code_name(int code);

/* Limits and their defaults (an option left 0 takes the default). */
/* etcd's --max-request-bytes default: 1.5 MiB. */
#define API_MAX_REQUEST_BYTES_DEFAULT (3u * 512u * 1024u)
/* etcd adds this much to --max-request-bytes for the gRPC receive limit. */
#define API_GRPC_OVERHEAD_BYTES (512u * 1024u)
/* Largest encoded response message; grpc-go's default send limit (MaxInt32). */
#define API_MAX_RESPONSE_BYTES_DEFAULT ((size_t)INT32_MAX)
/* HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS advertised per connection. */
#define API_MAX_CONCURRENT_STREAMS_DEFAULT 1000u
/* Client connections open at once; the next one is accepted and closed. */
#define API_MAX_CONNECTIONS_DEFAULT 1024u
/* Encoded bytes one stream may have waiting for the client to read. */
#define API_STREAM_QUEUE_BYTES_DEFAULT (16u * 1024u * 1024u)
/* Listen URLs accepted in one listen_client_urls string. */
#define API_LISTENERS_MAX 16u
/* What GET /version reports unless api_options says otherwise. */
#define API_ETCD_VERSION "3.4.23"
#define API_ETCD_CLUSTER_VERSION "3.4.0"
/* Size of the buffer api_options.errmsg points to, if given. */
#define API_ERRMSG_SIZE 256u

struct api_options {
    /* etcd's --listen-client-urls: comma-separated http://HOST:PORT or
     * https://HOST:PORT; HOST is an IPv4 literal, a bracketed IPv6 literal,
     * "localhost" or empty (all interfaces). PORT 0 binds an ephemeral port
     * (see api_server_port()). Required; borrowed during api_server_new(). */
    const char *listen_client_urls;
    /* PEM certificate chain and private key (etcd's --cert-file and
     * --key-file). Both set: https:// listeners serve TLS with ALPN "h2" or "http/1.1";
     * http:// listeners stay plaintext (h2c with prior knowledge). An
     * https:// URL without them is API_EURL. Borrowed during
     * api_server_new(). */
    const char *cert_file;
    const char *key_file;
    /* Client certificates on https:// listeners. client_cert_auth: every
     * client must present a certificate that verifies against
     * trusted_ca_file (NULL: the system's CAs), or the TLS handshake fails;
     * the verified certificate's subject CN is then available to the
     * backend (api_call_peer_cn()). client_crl_file (PEM, may be NULL): a
     * revoked certificate fails. (etcd also turns client_cert_auth on when
     * only --trusted-ca-file is given; that rule is the caller's.)
     * Borrowed during api_server_new(). */
    bool client_cert_auth;
    const char *trusted_ca_file;
    const char *client_crl_file;
    /* OpenSSL cipher list for TLS 1.2 (etcd's --cipher-suites, mapped by
     * the caller); NULL or "": OpenSSL's default. TLS 1.3 is unaffected. */
    const char *cipher_list;
    /* etcd's --max-request-bytes. A request message larger than this plus
     * API_GRPC_OVERHEAD_BYTES gets RESOURCE_EXHAUSTED. 0: default. */
    size_t max_request_bytes;
    /* Largest encoded response; larger answers become RESOURCE_EXHAUSTED. */
    size_t max_response_bytes;
    /* Streams per connection (HTTP/2 setting; nghttp2 refuses streams over
     * it with REFUSED_STREAM). 0: default. */
    uint32_t max_concurrent_streams;
    /* Connections open at once; more are accepted and closed at once. */
    uint32_t max_connections;
    /* Per-stream send queue limit; see api_stream_send(). 0: default. */
    size_t stream_queue_bytes_max;
    /* etcd's --listen-metrics-urls: more listeners (same syntax) serving
     * only GET /metrics and /health over HTTP/1.1. NULL or "": none. */
    const char *listen_metrics_urls;
    /* GET /version's "etcdserver" and "etcdcluster" (NULL: the defaults
     * above). Copied, at most 31 bytes each. */
    const char *version_server;
    const char *version_cluster;
    /* Optional: a buffer of API_ERRMSG_SIZE bytes that receives a sentence
     * saying why api_server_new() failed. */
    char *errmsg;
};

struct api_server; /* opaque */
struct api_call;   /* one unary RPC in the hands of the backend */
struct api_stream; /* one streaming RPC in the hands of the backend */
struct api_text;   /* text being produced for GET /metrics */

enum api_stream_event {
    API_STREAM_HALF_CLOSED = 1, /* the client sends no more requests */
    API_STREAM_CANCELLED = 2,   /* the stream is over for the client */
};

/*
 * The service interface, one entry per routed etcd RPC. An entry left NULL
 * answers UNIMPLEMENTED, like a method etcd does not have. For a stream kind
 * the open (or Snapshot) entry decides: when it is non-NULL, its request and
 * end entries must be non-NULL too (asserted by api_server_new()).
 * `ctx` is passed back to every entry unchanged.
 */
struct api_backend {
    void *ctx;

    /* etcdserverpb.KV */
    void (*range)(void *ctx, struct api_call *call, const Etcdserverpb__RangeRequest *req);
    void (*put)(void *ctx, struct api_call *call, const Etcdserverpb__PutRequest *req);
    void (*delete_range)(void *ctx, struct api_call *call,
                         const Etcdserverpb__DeleteRangeRequest *req);
    void (*txn)(void *ctx, struct api_call *call, const Etcdserverpb__TxnRequest *req);
    void (*compact)(void *ctx, struct api_call *call, const Etcdserverpb__CompactionRequest *req);

    /* etcdserverpb.Watch/Watch (bidirectional stream of WatchResponse). */
    void (*watch_open)(void *ctx, struct api_stream *stream);
    void (*watch_request)(void *ctx, struct api_stream *stream,
                          const Etcdserverpb__WatchRequest *req);
    void (*watch_end)(void *ctx, struct api_stream *stream, enum api_stream_event ev);

    /* etcdserverpb.Lease */
    void (*lease_grant)(void *ctx, struct api_call *call,
                        const Etcdserverpb__LeaseGrantRequest *req);
    void (*lease_revoke)(void *ctx, struct api_call *call,
                         const Etcdserverpb__LeaseRevokeRequest *req);
    /* LeaseKeepAlive: bidirectional stream of LeaseKeepAliveResponse. */
    void (*lease_keep_alive_open)(void *ctx, struct api_stream *stream);
    void (*lease_keep_alive_request)(void *ctx, struct api_stream *stream,
                                     const Etcdserverpb__LeaseKeepAliveRequest *req);
    void (*lease_keep_alive_end)(void *ctx, struct api_stream *stream, enum api_stream_event ev);
    void (*lease_time_to_live)(void *ctx, struct api_call *call,
                               const Etcdserverpb__LeaseTimeToLiveRequest *req);
    void (*lease_leases)(void *ctx, struct api_call *call,
                         const Etcdserverpb__LeaseLeasesRequest *req);

    /* etcdserverpb.Cluster */
    void (*member_add)(void *ctx, struct api_call *call, const Etcdserverpb__MemberAddRequest *req);
    void (*member_remove)(void *ctx, struct api_call *call,
                          const Etcdserverpb__MemberRemoveRequest *req);
    void (*member_update)(void *ctx, struct api_call *call,
                          const Etcdserverpb__MemberUpdateRequest *req);
    void (*member_list)(void *ctx, struct api_call *call,
                        const Etcdserverpb__MemberListRequest *req);
    void (*member_promote)(void *ctx, struct api_call *call,
                           const Etcdserverpb__MemberPromoteRequest *req);

    /* etcdserverpb.Maintenance */
    void (*alarm)(void *ctx, struct api_call *call, const Etcdserverpb__AlarmRequest *req);
    void (*status)(void *ctx, struct api_call *call, const Etcdserverpb__StatusRequest *req);
    void (*defragment)(void *ctx, struct api_call *call,
                       const Etcdserverpb__DefragmentRequest *req);
    void (*hash)(void *ctx, struct api_call *call, const Etcdserverpb__HashRequest *req);
    void (*hash_kv)(void *ctx, struct api_call *call, const Etcdserverpb__HashKVRequest *req);
    /* Snapshot: server stream of SnapshotResponse; `req` is borrowed for the
     * duration of this entry. */
    void (*snapshot)(void *ctx, struct api_stream *stream,
                     const Etcdserverpb__SnapshotRequest *req);
    void (*snapshot_end)(void *ctx, struct api_stream *stream, enum api_stream_event ev);
    void (*move_leader)(void *ctx, struct api_call *call,
                        const Etcdserverpb__MoveLeaderRequest *req);

    /* Optional: GET /health. Answer exactly once with api_reply_health()
     * (the call follows the rules of a unary call). NULL: always healthy. */
    void (*health)(void *ctx, struct api_call *call);
    /* Optional: GET /metrics. Appends Prometheus text-format families with
     * api_text_printf() before returning; api/ adds its own (grpc_server_*)
     * after them. */
    void (*metrics)(void *ctx, struct api_text *out);

    /* Optional, any stream kind: called once when a stream whose
     * api_stream_send() returned API_EQUEUEFULL has drained to half the
     * queue limit, so a producer (Snapshot) can resume where it stopped. */
    void (*stream_drained)(void *ctx, struct api_stream *stream);
};

/*
 * Creates a server on `loop`, binds and listens on every URL of
 * opts->listen_client_urls before returning. `opts` and the strings it
 * points to are borrowed for the duration of the call; `backend` is copied
 * (backend->ctx stays the caller's). On success *out owns the server until
 * api_server_close(). Returns 0, API_EINVAL, API_EURL, API_ETLS, API_ENOMEM
 * or -errno from bind/listen (for example -EADDRINUSE). On failure *out is
 * NULL; listeners already opened are being closed and their memory is
 * released by the loop's next turn (run the loop before uv_loop_close()).
 */
int api_server_new(uv_loop_t *loop, const struct api_options *opts,
                   const struct api_backend *backend, struct api_server **out);

/* The TCP port listener `index` (order of listen_client_urls) is bound to,
 * or API_EINVAL when there is no such listener. */
int api_server_port(const struct api_server *server, unsigned index);

/* Connections open right now (including ones being closed). */
unsigned api_server_connections(const struct api_server *server);

/*
 * Stops listening and closes every connection. Open streams get their end
 * entry with API_STREAM_CANCELLED (during this call or on a later loop
 * turn). Unary calls the backend holds stay valid until answered. Once every
 * libuv handle of the server is closed the server is freed and close_cb (if
 * not NULL) runs with `data`. Call once.
 */
void api_server_close(struct api_server *server, void (*close_cb)(void *data), void *data);

/*
 * Answers a unary call with `resp`, whose descriptor must be the method's
 * response type (asserted). The call is finished and freed whatever the
 * return value: 0 (queued for the client), API_ECLOSED (the client is gone;
 * dropped), API_ETOOBIG (over max_response_bytes; the client gets
 * RESOURCE_EXHAUSTED instead) or API_ENOMEM (the client gets INTERNAL if
 * possible).
 */
int api_reply(struct api_call *call, const ProtobufCMessage *resp);

/*
 * Answers a unary call with a gRPC error: `code` (not API_GRPC_OK) and a
 * message such as "etcdserver: request timed out" that etcd clients map to
 * their typed errors; NULL means empty. Long messages are truncated. The
 * call is finished and freed. Returns 0 or API_ECLOSED.
 */
int api_reply_error(struct api_call *call, enum api_grpc_code code, const char *message);

/*
 * Answers a /health call: 200 {"health":"true"} or 503 {"health":"false"}
 * as etcd 3.4 does. The call is finished and freed. Returns 0 or
 * API_ECLOSED.
 */
int api_reply_health(struct api_call *call, bool healthy);

/* Appends formatted text to a /metrics answer. Returns 0, API_ETOOBIG or
 * API_ENOMEM (the answer is then a 500). */
int api_text_printf(struct api_text *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* True while the client still waits for the answer to `call`. */
bool api_call_alive(const struct api_call *call);

/*
 * The subject common name of the client certificate the TLS handshake of
 * the call's connection verified (client_cert_auth), or NULL when there was
 * none (plaintext, no client_cert_auth, no CN, or a CN with a NUL byte).
 * This is who etcd takes the caller to be when auth is on and no token is
 * given. The string is UTF-8, NUL-terminated, and valid until the call is
 * answered (a stream's: until api_stream_close()), even after the client
 * went away.
 */
const char *api_call_peer_cn(const struct api_call *call);
const char *api_stream_peer_cn(const struct api_stream *stream);

/*
 * Queues one response message on a stream. Returns 0; API_ECLOSED (the
 * stream is over for the client; nothing queued); API_EQUEUEFULL (the client
 * is not reading and the queue holds stream_queue_bytes_max or more; nothing
 * queued; backend.stream_drained will be called once it has room again);
 * API_ETOOBIG; API_ENOMEM. The stream stays the backend's in every case.
 */
int api_stream_send(struct api_stream *stream, const ProtobufCMessage *msg);

/*
 * Ends a stream: queued messages are still delivered, then the status
 * `code` and `message` (NULL: empty) are sent as trailers. The handle is
 * freed (possibly later, by the transport) and must not be used again.
 * Returns 0 or API_ECLOSED (the client was already gone).
 */
int api_stream_close(struct api_stream *stream, enum api_grpc_code code, const char *message);

/* A pointer the backend keeps with the stream; NULL until set. */
void api_stream_set_data(struct api_stream *stream, void *data);
void *api_stream_data(const struct api_stream *stream);

/* Encoded bytes waiting in the stream's send queue. */
size_t api_stream_queued_bytes(const struct api_stream *stream);

#ifdef __cplusplus
}
#endif

#endif /* QUORUMFS_API_H */
