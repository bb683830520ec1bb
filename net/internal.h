/*
 * internal.h - private to net/: the transport's objects and the functions
 * transport.c and snapshot.c call in each other.
 *
 * Ownership and lifetime, the invariants everything else relies on:
 * - Every object that holds a libuv handle or an in-flight request (a peer's
 *   backoff timer, a connection's socket, a name lookup, a snapshot being
 *   sent or received) holds one reference on the transport (t->refs). The
 *   transport is freed, and its close callback called, only from a libuv
 *   callback that drops the last reference after net_transport_close().
 * - Such objects are freed only from their own libuv callback (close, fs,
 *   work or write completion), never synchronously from an API call, so a
 *   pointer taken before calling out to a user callback stays valid until
 *   the current loop callback returns; the state fields (CONN_CLOSING,
 *   peer->removed, t->closing) say whether it may still be used.
 * - A connection's pending writes complete (with UV_ECANCELED if need be)
 *   before its close callback, so a write request may point at its
 *   connection.
 * - Threadpool work for a received snapshot touches only the fields of
 *   struct snap_rx marked "worker", and only while rx->busy.
 */
#ifndef QUORUMFS_NET_INTERNAL_H
#define QUORUMFS_NET_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "net/frame.h"
#include "net/net.h"

/* Programmer errors: stays on in release builds, prints and aborts. */
#define NET__ASSERT(cond) ((cond) ? (void)0 : net__assert_fail(#cond, __FILE__, __LINE__))
_Noreturn void net__assert_fail(const char *expr, const char *file, int line);

/* Timing. */
#define NET__TICK_MS 100u                /* period of deadline checks */
#define NET__HANDSHAKE_TIMEOUT_MS 5000u  /* connect + HELLO/ACK must finish within */
#define NET__KEEPALIVE_DELAY_S 5u        /* TCP keepalive idle time */
#define NET__TCP_USER_TIMEOUT_MS 30000u  /* unacknowledged data kills the connection */
#define NET__SNAP_ACK_TIMEOUT_MS 120000u /* SNAP_END sent -> SNAP_ACK must arrive */
/* Snapshot streaming: bytes per chunk read, chunks handed to the socket at once. */
#define NET__SNAP_CHUNK_BYTES (256u * 1024u)
#define NET__SNAP_WRITES_INFLIGHT 2u
#define NET__SNAP_DEPTH_MAX 16u  /* directory nesting walked by the sender */
#define NET__SNAP_DIRS_MAX 4096u /* directories one received snapshot may create */
#define NET__ADDR_MAX 64u        /* "[ipv6]:port" */
/* Ciphertext bytes read from a TLS socket at once (one shared buffer). */
#define NET__TLS_READ_BYTES (64u * 1024u)

/* A parsed "http[s]://host:port" URL. */
struct net__url {
    char host[NET_URL_MAX + 1]; /* without brackets */
    uint16_t port;
    bool tls;                     /* https:// */
    bool literal;                 /* host is an IP address; addr is valid */
    struct sockaddr_storage addr; /* host:port when literal */
};

/*
 * Accepts "http://IPv4:port", "http://[IPv6]:port" and "http://name:port"
 * (letters, digits, '-', '.'), optionally followed by one "/", and the same
 * with "https://". The scheme is case-insensitive. Returns 0 or NET_EURL.
 */
int net__url_parse(const char *url, struct net__url *u);

/* tls.c */
/*
 * A TLS context for accepted (server true) or dialled connections, set up
 * from o: TLS 1.2 at least, o's certificate and key (required for a
 * server), CA file or default paths, CRLs, cipher list, and peer
 * verification (client_cert_auth for a server, !insecure_skip_verify for a
 * client). Returns 0 or NET_ETLS with a sentence in errmsg (NET_ERRMSG_SIZE
 * bytes, may be NULL). *out is the caller's (SSL_CTX_free).
 */
int net__tls_ctx_new(const struct net_tls_options *o, bool server, SSL_CTX **out, char *errmsg);
/*
 * Why a TLS operation on ssl failed (ssl_error from SSL_get_error()), as a
 * sentence for a log: the certificate verification error and `subject`
 * (the refused certificate's, "" when unknown) when verification failed,
 * else OpenSSL's reason ("tlsv1 alert unknown ca", "wrong version
 * number"). Clears OpenSSL's error queue.
 */
void net__tls_reason(SSL *ssl, int ssl_error, const char *subject, char *buf, size_t cap);

/* "ip:port" or "[ip]:port" of a socket address, into buf (NET__ADDR_MAX). */
void net__addr_format(const struct sockaddr *sa, char *buf, size_t cap);

/* A member as the transport keeps it (owned copy). */
struct net__member {
    uint64_t id;
    char *url;
    size_t url_len;
};

enum net__conn_dir { NET__CONN_OUT, NET__CONN_IN };

enum net__conn_state {
    NET__CONN_CONNECTING, /* OUT: TCP connect (or name lookup) in progress */
    NET__CONN_HANDSHAKE,  /* OUT: HELLO sent; IN: waiting for HELLO */
    NET__CONN_UP,         /* handshake done */
    NET__CONN_CLOSING     /* uv_close issued; wait for the close callback */
};

struct net_transport;
struct peer;
struct snap_tx;
struct snap_rx;

struct conn {
    struct net_transport *t;
    struct conn *prev, *next; /* t->conns; unlinked in the close callback */
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    enum net__conn_dir dir;
    enum net__conn_state state;
    struct peer *peer;        /* OUT: the peer dialled; NULL once detached */
    uint64_t remote_id;       /* member id of the other end once known, else 0 */
    char addr[NET__ADDR_MAX]; /* remote "ip:port" */
    struct net__reader rd;
    bool reading;          /* uv_read_start is in effect */
    bool paused;           /* IN: a snapshot file operation is pending; frames wait */
    bool rejecting;        /* a REJECT is being written; close once it is */
    uint64_t deadline_ms;  /* uv_now() by which the handshake must finish; 0 = none */
    size_t q_bytes;        /* OUT: Raft frame bytes handed to uv_write, not yet written */
    size_t q_frames;       /* OUT: the same, in frames */
    SSL *ssl;              /* NULL: plain TCP; else the TLS session (owns its BIOs) */
    BIO *rbio, *wbio;      /* ciphertext in (from the socket) and out (to it) */
    bool tls_done;         /* the TLS handshake finished; frames may flow */
    bool broken;           /* TLS output was lost: the tick closes it */
    char tls_subject[128]; /* subject of the certificate that failed verification */
    struct snap_rx *rx;    /* IN: the snapshot being received, if any */
    uint64_t skip_snap_id; /* IN: frames of this snapshot are ignored (refused/failed) */
};

struct peer {
    struct net_transport *t;
    struct peer *next; /* t->peers */
    uint64_t id;
    char *url;
    struct net__url u;
    uv_timer_t timer;    /* backoff before the next dial */
    uint32_t backoff_ms; /* delay before jitter of the next redial */
    struct conn *out;    /* the outbound connection, any state; NULL between dials */
    struct gai_req *gai; /* name lookup in flight */
    struct snap_tx *tx;  /* snapshot being sent; NULL when none */
    bool up;             /* last state reported through on_peer_state */
    bool removed;        /* remove_peer or close: timer closing, do not redial */
    uint64_t sent_frames;
    uint64_t dropped_frames;
    uint64_t dials;
};

struct net_transport {
    uv_loop_t *loop;
    uint64_t id;
    char *token;
    size_t token_len;
    struct net__member *members; /* sorted by id, ids unique */
    size_t n_members;
    char *snapshot_dir;          /* NULL: incoming snapshots refused */
    size_t frame_bytes_max;      /* whole frame, prefix included */
    size_t send_queue_bytes_max; /* per outbound connection */
    size_t send_queue_frames_max;
    uint64_t snapshot_bytes_max; /* per incoming snapshot */
    uint32_t backoff_min_ms, backoff_max_ms;
    uint64_t rng; /* splitmix64 state for jitter */
    struct net_callbacks cb;
    void *data;
    SSL_CTX *tls_server;  /* https listen URL: accepted connections; else NULL */
    SSL_CTX *tls_client;  /* dialling https peers */
    bool tls_verify_host; /* dialled certificates must name the URL's host */
    uint8_t *tls_rbuf;    /* NET__TLS_READ_BYTES; reads are handled at once */
    uv_tcp_t listener;
    uv_timer_t tick;
    int port;
    /* The listen address with port 0, used as the source of outbound
     * connections when it is a specific address (see connect_peer). */
    struct sockaddr_storage source;
    bool has_source;
    struct peer *peers;
    size_t n_peers;
    struct conn *conns;  /* all connections, both directions, until closed */
    size_t n_inbound;    /* IN connections not yet closing */
    bool accept_pending; /* a connection could not be accepted (no memory): retry */
    uint64_t next_snap_id;
    size_t refs; /* see the top of this file */
    bool closing;
    void (*close_cb)(void *data);
};

/* A frame on its way to the socket. */
struct wreq {
    uv_write_t req;
    struct conn *c;
    struct snap_tx *tx; /* a snapshot frame: tell the sender when written */
    bool counted;       /* counts in c->q_bytes/q_frames (a Raft frame) */
    bool close_after;   /* close the connection once written (REJECT) */
    size_t len;         /* bytes in data */
    uint8_t data[];
};

/* transport.c, for snapshot.c */
void net__ref(struct net_transport *t);
void net__unref(struct net_transport *t);
/* A frame of payload_len bytes, header written; NULL when out of memory. */
struct wreq *net__wreq_new(uint8_t type, size_t payload_len);
/* Encodes f into a new wreq: 0 or NET_ENOMEM / encoder error. */
int net__wreq_encode(const struct net__frame *f, struct wreq **out);
/* Hands w to the socket; on error w is still the caller's. */
int net__conn_write(struct conn *c, struct wreq *w);
void net__conn_close(struct conn *c, int rc);
/* A paused connection may go on: process buffered frames, read again. */
void net__conn_resume(struct conn *c);
/* Copies s into buf (cap bytes, NUL-terminated), control bytes as '?'. */
void net__sanitize(char *buf, size_t cap, const char *s, size_t len);

/* snapshot.c, for transport.c */
/* A SNAP_BEGIN/FILE/CHUNK/END/ABORT frame on an UP inbound connection. */
int net__snap_rx_frame(struct conn *c, const struct net__frame *f);
/* The inbound connection closes: abandon the snapshot it carried. */
void net__snap_rx_detach(struct conn *c, int rc);
/* A SNAP_ACK on p's outbound connection. 0 or NET_EPROTO. */
int net__snap_tx_ack(struct peer *p, const struct net__frame *f);
/* p's outbound connection is gone or p is removed: fail its snapshot. */
void net__snap_tx_fail(struct peer *p, int rc, const char *reason);
/* A snapshot frame finished writing (status from libuv). */
void net__snap_tx_wrote(struct snap_tx *tx, int status);
/* Deadline checks, every NET__TICK_MS. */
void net__snap_tick(struct net_transport *t, uint64_t now_ms);

#endif /* QUORUMFS_NET_INTERNAL_H */
