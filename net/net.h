/*
 * net.h - the peer transport: how cluster nodes exchange Raft messages and
 * snapshots over TCP.
 *
 * This is the only public header of net/. A struct net_transport lives on one
 * libuv loop (the node loop) and is used only from that loop's thread; every
 * callback below runs on that thread. File I/O for snapshots runs on libuv's
 * threadpool (uv_fs_* and uv_queue_work), which touches only the snapshot's
 * own buffers; no other state is shared with another thread.
 *
 * Connections follow etcd's stream model: each node dials every peer it was
 * given with net_transport_add_peer() and SENDS on that outbound connection
 * only; connections a node accepts are used only for RECEIVING (plus the
 * small replies of the handshake and snapshot acknowledgements). Two nodes
 * therefore hold two TCP connections, one per direction, and there is no
 * race over which of two simultaneous dials wins. A lost outbound connection
 * is redialled with exponential backoff and seeded jitter.
 *
 * Every connection opens with a handshake (HELLO, then HELLO_ACK or REJECT)
 * that compares the protocol version, the cluster token and the canonical
 * member list; a node refuses a peer whose token or member list differs and
 * both sides report it through on_handshake_error. The wire format is
 * documented at the top of net/frame.c.
 *
 * Delivery: messages sent to one peer arrive in the order they were sent, or
 * not at all (a connection that drops loses what it had queued; Raft
 * retransmits). net_send() never blocks and never queues without limit: when
 * the peer is not connected, or its queue is at the configured cap, it drops
 * the message and returns an error so the caller can report the peer
 * unreachable to Raft.
 *
 * TLS: a transport whose listen URL is https:// serves TLS (OpenSSL, over
 * memory BIOs, so libuv still owns the socket); a peer whose URL is
 * https:// is dialled over TLS. The handshake above then runs inside the
 * TLS session, and a TLS failure (an unverified certificate, a missing
 * client certificate, a peer speaking plain TCP) is reported through
 * on_handshake_error like any other refusal. See struct net_tls_options.
 *
 * Errors: functions return 0 or a negative code: a NET_ERRORS code below or
 * a negated errno / libuv error (libuv uses -errno on Unix). net_strerror()
 * describes both. The library never prints.
 */
#ifndef QUORUMFS_NET_H
#define QUORUMFS_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes, in the range reserved for net/ (-3000..-3099). */
#define NET_ERRORS(X)                                                                  \
    X(NET_ENOMEM, -3001, "out of memory")                                              \
    X(NET_EINVAL, -3002, "invalid argument")                                           \
    X(NET_EURL, -3003,                                                                 \
      "invalid URL (expected http[s]://IPv4:port, http[s]://[IPv6]:port or "             \
      "http[s]://host:port)")                                                           \
    X(NET_ETOOBIG, -3004, "frame exceeds the size limit")                              \
    X(NET_EVERSION, -3005, "unsupported protocol version")                             \
    X(NET_ETYPE, -3006, "unknown frame type")                                          \
    X(NET_EMALFORMED, -3007, "malformed frame")                                        \
    X(NET_EFILENAME, -3008, "unsafe snapshot file name")                               \
    X(NET_ENOPEER, -3009, "no such peer")                                              \
    X(NET_EEXIST, -3010, "peer already added")                                         \
    X(NET_EPEERDOWN, -3011, "peer is not connected")                                   \
    X(NET_EQUEUEFULL, -3012, "send queue to the peer is full")                         \
    X(NET_EBUSY, -3013, "a snapshot to this peer is already in progress")             \
    X(NET_ECLOSING, -3014, "transport is closing")                                     \
    X(NET_ECANCELED, -3015, "canceled")                                                \
    X(NET_ESNAPSOURCE, -3016,                                                          \
      "snapshot source is not a regular file or a directory of regular files")        \
    X(NET_ESNAPREJECTED, -3017, "peer did not accept the snapshot")                    \
    X(NET_ESNAPCORRUPT, -3018, "snapshot stream is inconsistent (size or checksum)")   \
    X(NET_ESNAPABORTED, -3019, "sender aborted the snapshot")                          \
    X(NET_ETIMEDOUT, -3020, "timed out")                                               \
    X(NET_ECONNLOST, -3021, "connection lost")                                         \
    X(NET_ELIMIT, -3022, "a configured limit was reached")                             \
    X(NET_EHANDSHAKE, -3023, "handshake rejected")                                     \
    X(NET_EPROTO, -3024, "protocol violation by the peer")                             \
    X(NET_ETLS, -3025, "TLS setup failed (certificate, key, CA or CRL file, or library)") \
    X(NET_ECIPHER, -3026, "unknown TLS cipher suite name")

enum net_error {
#define NET__ERR_ENUM(name, value, text) name = value,
    NET_ERRORS(NET__ERR_ENUM)
#undef NET__ERR_ENUM
};

/*
 * Returns a static description of rc: a NET_ERRORS code, a negated errno or
 * libuv error, or "success" for 0. Never NULL.
 */
const char *net_strerror(int rc);

/* Limits. Each bounds something a peer or a caller could otherwise grow. */
#define NET_PROTOCOL_VERSION 1
#define NET_MEMBERS_MAX 128   /* members in the handshake's member list */
#define NET_PEERS_MAX 128     /* peers one transport dials */
#define NET_INBOUND_MAX 256   /* accepted connections alive at once */
#define NET_URL_MAX 256       /* bytes of one peer URL */
#define NET_TOKEN_MAX 256     /* bytes of the cluster token */
#define NET_REASON_MAX 1024   /* bytes of a reason string on the wire */
/* Bytes of one whole frame on the wire (length prefix included). */
#define NET_FRAME_BYTES_MIN (64u * 1024u)
#define NET_FRAME_BYTES_DEFAULT (64u * 1024u * 1024u + 64u * 1024u)
#define NET_FRAME_BYTES_LIMIT (256u * 1024u * 1024u)
/* Per-peer send queue defaults (frames handed to the socket, not yet written). */
#define NET_SEND_QUEUE_BYTES_DEFAULT (64u * 1024u * 1024u)
#define NET_SEND_QUEUE_FRAMES_DEFAULT 4096u
/* Reconnect backoff defaults: first delay and cap, before jitter. */
#define NET_BACKOFF_MIN_MS_DEFAULT 50u
#define NET_BACKOFF_MAX_MS_DEFAULT 2000u
/* Snapshots: files per snapshot, bytes of one relative file name, bytes per snapshot. */
#define NET_SNAP_FILES_MAX 65536u
#define NET_SNAP_NAME_MAX 1024u
#define NET_SNAP_BYTES_DEFAULT (64ull * 1024u * 1024u * 1024u)
/* Size of the buffer net_options.errmsg points to, if given. */
#define NET_ERRMSG_SIZE 256u
/* Bytes of an OpenSSL cipher list made by net_tls_cipher_list(). */
#define NET_CIPHER_LIST_MAX 1024u

struct net_transport;

/* One cluster member as the handshake compares it. Strings are borrowed. */
struct net_member {
    uint64_t id;     /* non-zero */
    const char *url; /* peer URL exactly as configured, e.g. "http://10.0.0.1:2380" */
};

/*
 * What the transport tells its owner. `data` is net_options.data. Every
 * pointer argument is borrowed and valid only during the call. Callbacks may
 * call any net_* function, including net_transport_close(). No callback runs
 * after net_transport_close() was called, except net_snapshot_cb and the
 * close callback.
 */
struct net_callbacks {
    /* Required. One Raft message (the bytes raft_encode produced) from a peer. */
    void (*on_message)(void *data, uint64_t from_id, const void *buf, size_t len);
    /*
     * Optional. The outbound connection to `id` completed its handshake (up)
     * or was lost (down). Only transitions are reported.
     */
    void (*on_peer_state)(void *data, uint64_t id, bool up);
    /*
     * Optional. A handshake failed: either this node refused a peer or a peer
     * refused this node. peer_id is the peer's id when known, else 0; addr
     * is "ip:port" of the remote end; reason is a sentence such as
     * "cluster token mismatch: local a, remote b", always written from this
     * node's point of view ("local" is this node). peer_id 0 means the other
     * end never identified itself as a member (a stray client, a port
     * scanner, an old binary): not evidence of a misconfigured cluster.
     */
    void (*on_handshake_error)(void *data, uint64_t peer_id, const char *addr,
                               const char *reason);
    /*
     * Optional. A connection that had completed its handshake was closed
     * because the peer violated the protocol (a bad frame, rc is the decoder's
     * code) — as opposed to a plain disconnect.
     */
    void (*on_protocol_error)(void *data, uint64_t peer_id, const char *addr, int rc);
    /*
     * Optional. A peer starts sending a snapshot; meta is the sender's opaque
     * metadata. Return 0 to accept, a negative code to refuse (the sender's
     * net_snapshot_cb gets NET_ESNAPREJECTED). Without this callback every
     * snapshot is accepted when snapshot_dir is set.
     */
    int (*on_snapshot_begin)(void *data, uint64_t from_id, const void *meta, size_t meta_len);
    /*
     * Optional (needed to receive snapshots). Every file of the snapshot was
     * written under `dir` (a new directory inside net_options.snapshot_dir),
     * fsynced, and the directory entries fsynced. The directory now belongs
     * to the callee (rename it into place or delete it).
     */
    void (*on_snapshot_done)(void *data, uint64_t from_id, const void *meta, size_t meta_len,
                             const char *dir);
    /*
     * Optional. An accepted incoming snapshot did not complete (rc says
     * why); its partial directory has been or is being removed.
     */
    void (*on_snapshot_abort)(void *data, uint64_t from_id, int rc);
};

/*
 * Peer TLS, as etcd's --peer-* flags set it. Every string is a path to a
 * PEM file, borrowed during net_transport_new() (the files are read then),
 * or NULL.
 */
struct net_tls_options {
    /* This node's certificate chain and key: served on an https listen URL
     * (required there) and presented as the client certificate when
     * dialling an https peer. */
    const char *cert_file;
    const char *key_file;
    /* CA certificates that verify the other end (a dialled peer's server
     * certificate; an accepted peer's client certificate). NULL: OpenSSL's
     * default verify paths. */
    const char *trusted_ca_file;
    /* Certificate revocation lists (PEM); a revoked certificate fails
     * verification. NULL: no revocation check. */
    const char *crl_file;
    /* Accepted connections must present a certificate that verifies;
     * without one the TLS handshake fails and is reported. */
    bool client_cert_auth;
    /* Dialled peers' server certificates are not verified (etcd's
     * --peer-auto-tls, whose certificates are self-signed). When false, a
     * dialled certificate must verify and name the URL's host (an IP SAN
     * for an IP literal, a DNS SAN otherwise), as Go's TLS client checks. */
    bool insecure_skip_verify;
    /* OpenSSL cipher list for TLS 1.2 (see net_tls_cipher_list()); NULL:
     * OpenSSL's default. TLS 1.3 suites are not affected, as in Go. */
    const char *cipher_list;
};

struct net_options {
    uint64_t id;              /* this node's member id, non-zero */
    const char *listen_url;   /* "http[s]://127.0.0.1:2380", "http://[::1]:2380" or
                                 "http://localhost:2380" (bound to 127.0.0.1); port 0
                                 binds an ephemeral port */
    const char *cluster_token; /* compared byte for byte in the handshake; NULL = "" */
    /*
     * The initial cluster, compared in the handshake as a list sorted by id
     * (ids and URLs byte for byte). Copied. Must contain `id` unless empty;
     * an empty list is compared like any other (it matches only an empty
     * list). See net_transport_set_members().
     */
    const struct net_member *members;
    size_t n_members;
    /*
     * An existing directory in which incoming snapshots are written, one new
     * subdirectory per snapshot. NULL refuses incoming snapshots. Copied.
     */
    const char *snapshot_dir;
    size_t frame_bytes_max;       /* 0 = NET_FRAME_BYTES_DEFAULT; MIN..LIMIT */
    size_t send_queue_bytes_max;  /* per peer; 0 = NET_SEND_QUEUE_BYTES_DEFAULT */
    size_t send_queue_frames_max; /* per peer; 0 = NET_SEND_QUEUE_FRAMES_DEFAULT */
    uint64_t snapshot_bytes_max;  /* per incoming snapshot; 0 = NET_SNAP_BYTES_DEFAULT */
    uint32_t backoff_min_ms;      /* 0 = NET_BACKOFF_MIN_MS_DEFAULT */
    uint32_t backoff_max_ms;      /* 0 = NET_BACKOFF_MAX_MS_DEFAULT */
    uint64_t seed;                /* backoff jitter PRNG seed; 0 derives one from id */
    struct net_callbacks cb;
    void *data; /* passed to every callback */
    struct net_tls_options tls; /* used by https listen and peer URLs */
    /* Optional: a buffer of NET_ERRMSG_SIZE bytes that receives a sentence
     * saying why net_transport_new() failed (for example which TLS file). */
    char *errmsg;
};

/*
 * Creates a transport on `loop` and starts listening on opt->listen_url.
 * Everything in *opt is copied; opt may be freed on return. No peer is
 * dialled until net_transport_add_peer(). On failure *out is untouched and a
 * handle may still be closing: run the loop once to release it.
 */
int net_transport_new(uv_loop_t *loop, const struct net_options *opt,
                      struct net_transport **out);

/* The TCP port the transport listens on (the real one when bound to port 0). */
int net_transport_port(const struct net_transport *t);

/*
 * Replaces the member list that future handshakes send and compare (for
 * example once the ports of an ephemeral test cluster are known, or after a
 * membership change). Connections already established are not affected.
 * Copied; same rules as net_options.members.
 */
int net_transport_set_members(struct net_transport *t, const struct net_member *members,
                              size_t n_members);

/*
 * Starts dialling peer `id` at `url` ("http[s]://host:port"; a host name is
 * resolved through uv_getaddrinfo at every dial). Copied. NET_EEXIST if the
 * id is known, NET_ELIMIT beyond NET_PEERS_MAX, NET_EURL for a bad URL.
 */
int net_transport_add_peer(struct net_transport *t, uint64_t id, const char *url);

/*
 * Stops dialling `id`, drops its queue, closes both its outbound and any
 * inbound connection, and fails a snapshot in flight to it (NET_ECANCELED).
 */
int net_transport_remove_peer(struct net_transport *t, uint64_t id);

/*
 * Queues one message (copied) to peer `to_id`. Returns 0 once it is handed
 * to the socket, NET_EPEERDOWN if the peer's outbound connection is not up,
 * NET_EQUEUEFULL if the peer's queue is at its byte or frame cap,
 * NET_ETOOBIG if the frame would exceed frame_bytes_max or could never fit
 * send_queue_bytes_max, NET_EINVAL for an empty message, NET_ENOPEER,
 * NET_ENOMEM. On any error the message was dropped and nothing was kept.
 */
int net_send(struct net_transport *t, uint64_t to_id, const void *buf, size_t len);

/* A snapshot send finished. status 0: the peer stored and fsynced every file. */
typedef void (*net_snapshot_cb)(void *cb_data, uint64_t to_id, int status, const char *reason);

/*
 * Streams a snapshot to peer `to_id`: the opaque `meta` (copied), then every
 * regular file of `path` (a directory, walked recursively, each file sent
 * under its relative name; or a single regular file, sent under its base
 * name). The directory is listed when this is called (names and sizes only);
 * contents are read in chunks by uv_fs_read on the threadpool while the loop
 * keeps serving Raft traffic, which shares the connection between chunks.
 * Files must not change while they are sent (a RocksDB checkpoint does not).
 *
 * Returns 0 and later calls done_cb exactly once (never from inside this
 * call, but possibly from inside net_transport_remove_peer() or
 * net_transport_close(), with NET_ECANCELED): status 0 once the peer
 * acknowledged that it fsynced everything,
 * otherwise an error (reason, when not NULL, is the peer's or the local
 * explanation). Returns an error and never calls done_cb if the snapshot
 * could not start: NET_EPEERDOWN, NET_EBUSY (one snapshot per peer at a
 * time), NET_ESNAPSOURCE, NET_EFILENAME, NET_ELIMIT, -errno.
 */
int net_send_snapshot(struct net_transport *t, uint64_t to_id, const void *meta,
                      size_t meta_len, const char *path, void *cb_data,
                      net_snapshot_cb done_cb);

/* A snapshot of one peer's state, for metrics and tests. */
struct net_peer_info {
    bool up;                /* outbound connection has completed its handshake */
    size_t queued_bytes;    /* Raft frames handed to the socket, not yet written */
    size_t queued_frames;
    uint64_t sent_frames;   /* Raft frames accepted by net_send (lifetime) */
    uint64_t dropped_frames; /* net_send calls that failed (lifetime) */
    uint64_t dials;         /* connection attempts (lifetime) */
    bool snapshot_in_flight;
};

int net_transport_peer_info(const struct net_transport *t, uint64_t id,
                            struct net_peer_info *out);

/*
 * Closes every connection and handle, cancels snapshots (their done_cb gets
 * NET_ECANCELED, incoming partial directories are removed) and frees the
 * transport once all of it is released; then calls close_cb(data) (may be
 * NULL). The loop must keep running until then. `t` must not be used after
 * this call.
 */
void net_transport_close(struct net_transport *t, void (*close_cb)(void *data));

/*
 * Maps etcd's --cipher-suites value (Go's names, comma-separated, such as
 * "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_RSA_WITH_AES_256_GCM_SHA384")
 * to an OpenSSL cipher list ("ECDHE-RSA-AES128-GCM-SHA256:AES256-GCM-SHA384")
 * in out (out_size bytes, NUL-terminated). An empty value gives "". Returns 0,
 * NET_ECIPHER for a name etcd does not know (errmsg, if not NULL, gets
 * etcd's sentence: unexpected TLS cipher suite "NAME"), NET_ELIMIT when out
 * is too small. Pure; any thread.
 */
int net_tls_cipher_list(const char *etcd_names, char *out, size_t out_size, char *errmsg,
                        size_t errmsg_size);

/*
 * etcd's auto TLS: makes sure dir/cert.pem and dir/key.pem exist, creating
 * dir (mode 0700, one level) and a self-signed certificate when either file
 * is missing (and the directories above it, as mkdir -p), as etcd's SelfCert does: organization "etcd", a P-256 key,
 * valid for one year, usable for server and client authentication, with a
 * subject alternative name per entry of `hosts` (comma-separated IP
 * literals, names, or URLs such as etcd's listen URLs, which name their
 * host; NULL or "" for none). Existing files are kept as they
 * are. Returns 0, NET_ETLS (errmsg, if not NULL, says why) or -errno.
 * Blocking file I/O: call before the loop runs.
 */
int net_tls_self_cert(const char *dir, const char *hosts, char *errmsg, size_t errmsg_size);

#ifdef __cplusplus
}
#endif

#endif /* QUORUMFS_NET_H */
