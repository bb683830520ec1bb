/*
 * client.c - the etcd v3 gRPC client: one HTTP/2 connection at a time,
 * failover across endpoints, unary calls and bidirectional streams.
 *
 * Bytes flow  socket -> [TLS via memory BIOs] -> nghttp2_session_mem_recv()
 * -> nghttp2 callbacks -> gRPC reader -> protobuf-c -> the call's result or
 * its queue of decoded messages; and back  client_unary()/client_stream_send()
 * -> encoded request bytes -> nghttp2 data provider -> mem_send() -> [TLS]
 * -> uv_write.
 *
 * Invariants:
 *  - User callbacks run only from the dispatcher (the `kick` idle handle),
 *    never inside nghttp2 callbacks nor inside the public function that
 *    caused them. So nghttp2 never sees a session freed or a stream reset
 *    under its feet, and a callback may call anything, even client_close().
 *  - A connection is torn down (conn_fail) only outside nghttp2 callbacks;
 *    inside them a failure is noted (fail_pending) and acted on when
 *    mem_recv returns.
 *  - A call is in exactly one state: WAITING (on c->waiting, no HTTP/2
 *    stream), ACTIVE (on its connection's `active` list, nghttp2 stream
 *    user data points at it), DONE (outcome decided, detached, on the
 *    ready list or about to be freed). Unary calls sit on c->unary_dl from
 *    creation to DONE; all have the same timeout, so that list is ordered
 *    by deadline and one timer serves it. Streams sit on c->stream_dl while
 *    WAITING, for the same reason.
 *  - A call that never got a byte of its request onto a socket (unary: no
 *    DATA frame sent; stream: no HEADERS sent), or that the server refused
 *    (REFUSED_STREAM, or above a GOAWAY's last stream id), goes back to
 *    WAITING when its connection dies; everything else that was in flight
 *    fails UNAVAILABLE with maybe_applied.
 *  - Memory: a connection lives until its socket handle is closed and its
 *    getaddrinfo request has returned (refs); the client lives until its
 *    three handles are closed and no connection is left.
 * Workload: many small unary calls and a few long streams; a load
 * generator may have thousands in flight (bounded by CLIENT_CALLS_MAX).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>
#include <openssl/err.h>

#include "client/client_int.h"

/* Bytes handed to libuv and not yet written above which no more frames are
 * pulled from nghttp2 (back-pressure toward client_unary callers). */
#define WRITE_HIGH_BYTES (1024u * 1024u)
/* Bytes gathered into one uv_write. */
#define WRITE_CHUNK_BYTES (64u * 1024u)
/* Socket read size, and TLS plaintext chunk size. */
#define READ_BYTES (64u * 1024u)
#define TLS_PLAIN_BYTES (16u * 1024u)
/* HTTP/2 flow-control windows granted to the server. Received bytes are
 * given back as soon as they are decoded into messages; the decoded
 * messages of one loop turn are delivered before the next read. */
#define H2_STREAM_WINDOW_BYTES (1024u * 1024u)
#define H2_CONN_WINDOW_BYTES (16u * 1024u * 1024u)
/* Heap bytes one connection may hold in partly received messages, over all
 * its calls; a call that would exceed it fails RESOURCE_EXHAUSTED. */
#define CONN_RECV_BUFFER_BYTES_MAX (128u * 1024u * 1024u)
/* Response header bytes (RFC 7541 accounting) looked at per call. */
#define HEADER_LIST_BYTES_MAX (64u * 1024u)
/* Longest auth token kept. */
#define TOKEN_BYTES_MAX 4096u
/* REFUSED_STREAM answers a call accepts before it fails UNAVAILABLE. */
#define REFUSALS_MAX 5u
/* Longest keepalive interval reached by doubling after "too_many_pings". */
#define KEEPALIVE_MS_MAX (5u * 60u * 1000u)
#define ERR_BYTES 256u
#define LOG_LINE_BYTES 1024u

static const char USER_AGENT[] = "quorumfs-client/1 (nghttp2)";
static const char INVALID_TOKEN[] = "etcdserver: invalid auth token";
static const char AUTH_PATH[] = "/etcdserverpb.Auth/Authenticate";

/* ---- types ---------------------------------------------------------------------- */

/* One encoded stream request message waiting to be sent. */
struct out_msg {
    struct out_msg *next;
    size_t len; /* prefix + message bytes */
    size_t off; /* bytes already handed to nghttp2 */
    /* followed by the bytes (headroom of client__grpc_encode) */
};

/* One decoded stream response message waiting for the dispatcher. */
struct in_msg {
    struct in_msg *next;
    ProtobufCMessage *msg;
};

enum call_kind {
    CALL_UNARY = 1,
    CALL_STREAM = 2,
    CALL_AUTH = 3, /* the client's own Authenticate call */
};

enum call_state {
    CALL_WAITING = 1,
    CALL_ACTIVE = 2,
    CALL_DONE = 3,
};

struct conn;

struct call {
    struct client *c;
    enum call_kind kind;
    enum call_state state;
    char *path;
    const ProtobufCMessageDescriptor *resp_desc;
    struct client__link link; /* c->waiting or conn->active */
    struct client__link dl;   /* c->unary_dl or c->stream_dl */
    uint64_t deadline_ms;     /* loop time (uv_now) */
    struct call *ready_next;  /* c->ready list */
    bool in_ready;
    /* Request. Unary: one framed message kept whole until the call is done,
     * so it can be sent again on another connection. Stream: a queue. */
    uint8_t *req;
    size_t req_len, req_off;
    struct out_msg *q_head, *q_tail;
    size_t q_bytes;    /* stream bytes queued, not yet given to nghttp2 */
    bool sent;         /* request bytes were serialized for a socket */
    unsigned refusals; /* REFUSED_STREAM answers so far */
    struct conn *conn; /* while ACTIVE */
    int32_t stream_id; /* while ACTIVE */
    /* Response. */
    struct client__reader rd;
    size_t rd_accounted; /* bytes of rd counted in conn->recv_buffered */
    int http_status;     /* 0 until :status */
    bool have_grpc_status;
    int grpc_status;
    char *grpc_message; /* decoded, or NULL */
    size_t header_bytes;
    ProtobufCMessage *resp;           /* unary: the response message */
    struct in_msg *in_head, *in_tail; /* stream: undelivered messages */
    unsigned long n_received;         /* messages received */
    /* Outcome, once DONE. */
    int code;
    char *message; /* NULL stands for "" */
    bool maybe_applied;
    bool auth_retried;     /* already retried after "invalid auth token" */
    bool user_closed;      /* client_stream_close() was called */
    bool busy;             /* one of its callbacks is running */
    unsigned auth_conn_id; /* CALL_AUTH: the connection it authenticates */
    client_unary_cb unary_cb;
    struct client_stream_cbs cbs;
    void *arg;
};

/* The stream handle is its call; the distinct type keeps unary and stream
 * functions from being mixed up by callers. */
struct client_stream {
    struct call call;
};

enum conn_phase {
    PH_RESOLVE = 1,
    PH_CONNECT = 2,
    PH_TLS = 3,
    PH_H2 = 4, /* preface and SETTINGS sent, waiting for the server's */
    PH_READY = 5,
    PH_DEAD = 6,
};

enum auth_state {
    AUTH_OFF = 0,    /* no user configured */
    AUTH_NEEDED = 1, /* start Authenticate on the next pump */
    AUTH_RUNNING = 2,
    AUTH_DONE = 3,   /* token held */
    AUTH_FAILED = 4, /* the server said no; try again when a call waits */
};

struct sock {
    uv_tcp_t tcp;
    struct conn *conn;
};

struct wchunk {
    uv_write_t req;
    struct conn *conn;
    size_t len;
    uint8_t data[WRITE_CHUNK_BYTES];
};

struct conn {
    struct client *c;
    unsigned id; /* distinct per connection of a client */
    unsigned ep; /* index in c->eps */
    enum conn_phase phase;
    unsigned refs; /* current holder + getaddrinfo + open sockets */
    uv_getaddrinfo_t gai;
    bool gai_pending;
    struct addrinfo *ai;            /* resolved addresses */
    const struct addrinfo *ai_next; /* next address to try */
    char connect_err[64];           /* last connect error of this attempt */
    uv_connect_t creq;
    struct sock *sock; /* the socket in use, or NULL */
    SSL *ssl;          /* NULL for plaintext */
    BIO *rbio, *wbio;  /* owned by ssl */
    nghttp2_session *h2;
    bool settings_seen; /* the server's first SETTINGS arrived */
    bool fail_pending;  /* a failure noted inside a callback */
    char fail_reason[2 * ERR_BYTES];
    bool goaway;
    int32_t goaway_last_id;
    struct client__link active; /* ACTIVE calls */
    unsigned n_active;
    size_t write_bytes;   /* handed to uv_write, not yet written */
    struct wchunk *out;   /* chunk being filled */
    size_t recv_buffered; /* heap bytes of partial messages */
    uint64_t alive_ms;    /* last read or PING ACK, loop time */
    uint64_t ping_sent_ms;
    bool ping_outstanding;
    enum auth_state auth;
    char *token;
};

struct endpoint {
    char *url;
    struct client__url u;
};

enum conn_timer_mode {
    TIMER_IDLE = 0,
    TIMER_DIAL = 1,      /* dial timeout of c->conn */
    TIMER_NEXT = 2,      /* start the next attempt (0 ms, or backoff) */
    TIMER_KEEPALIVE = 3, /* periodic PING check of c->conn */
};

struct client {
    uv_loop_t *loop;
    uv_thread_t thread; /* the loop's thread, for assertions */
    /* Options with defaults applied; strings are the copies below. */
    uint32_t dial_timeout_ms, command_timeout_ms;
    uint32_t keepalive_ms, keepalive_timeout_ms; /* keepalive_ms may double */
    uint32_t backoff_min_ms, backoff_max_ms;
    char *user, *password;
    void (*log_cb)(void *arg, const char *line);
    void *log_arg;
    struct endpoint *eps;
    unsigned n_eps;
    SSL_CTX *tls; /* NULL when nothing uses TLS */
    /* Connection management. */
    struct conn *conn; /* the attempt or connection, or NULL */
    unsigned cur_ep;   /* endpoint of conn, or the last tried */
    unsigned next_ep;  /* endpoint of the next attempt */
    unsigned next_conn_id;
    unsigned round_failures;      /* failures since the last READY or backoff */
    unsigned backoff_exp;         /* backoffs since the last READY */
    uint64_t rng;                 /* xorshift state for jitter */
    char last_err[2 * ERR_BYTES]; /* "endpoint URL: reason" of the last failure */
    /* Handles. */
    uv_idle_t kick; /* runs the dispatcher and pump */
    bool kick_active;
    uv_timer_t deadline_timer;
    uv_timer_t conn_timer;
    enum conn_timer_mode timer_mode;
    unsigned handles_open;
    unsigned conns_alive; /* struct conn not yet freed */
    /* Calls. */
    struct client__link waiting;   /* WAITING calls, in order */
    struct client__link unary_dl;  /* unary and auth calls by deadline */
    struct client__link stream_dl; /* WAITING streams by deadline */
    struct call *ready_head, *ready_tail;
    unsigned n_calls; /* calls allocated */
    bool dispatching;
    /* Closing. */
    bool closing;
    bool finalizing;
    void (*close_cb)(void *arg);
    void *close_arg;
    /* Reads are handled to completion inside the read callback, so one
     * buffer of each kind serves every connection. */
    uint8_t read_buf[READ_BYTES];
    uint8_t plain_buf[TLS_PLAIN_BYTES];
};

static void conn_fail(struct conn *cn, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void conn_flush(struct conn *cn);
static void conn_start(struct client *c);
static void kick(struct client *c);
static void deadline_rearm(struct client *c);

/* ---- small helpers ---------------------------------------------------------------- */

static void log_line(struct client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void log_line(struct client *c, const char *fmt, ...) {
    if (c->log_cb == NULL) return;
    char line[LOG_LINE_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    c->log_cb(c->log_arg, line);
}

static char *str_dup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p != NULL) memcpy(p, s, n);
    return p;
}

static uint64_t rng_next(struct client *c) {
    uint64_t x = c->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c->rng = x;
    return x;
}

static uint64_t now_ms(const struct client *c) {
    return uv_now(c->loop);
}

static const char *phase_name(enum conn_phase ph) {
    switch (ph) {
    case PH_RESOLVE:
        return "resolving the host";
    case PH_CONNECT:
        return "TCP connect";
    case PH_TLS:
        return "TLS handshake";
    case PH_H2:
        return "waiting for the server's HTTP/2 SETTINGS";
    case PH_READY:
        return "connected";
    case PH_DEAD:
        return "closed";
    }
    return "?";
}

static struct call *dl_call(struct client__link *l) {
    return CLIENT__CONTAINER(l, struct call, dl);
}

static struct call *link_call(struct client__link *l) {
    return CLIENT__CONTAINER(l, struct call, link);
}

/* ---- call life ------------------------------------------------------------------- */

static void call_free(struct call *call) {
    struct client *c = call->c;
    CLIENT__ASSERT(call->conn == NULL);
    CLIENT__ASSERT(!call->in_ready);
    CLIENT__ASSERT(!client__linked(&call->link) && !client__linked(&call->dl));
    free(call->path);
    free(call->req);
    for (struct out_msg *m = call->q_head; m != NULL;) {
        struct out_msg *next = m->next;
        free(m);
        m = next;
    }
    for (struct in_msg *m = call->in_head; m != NULL;) {
        struct in_msg *next = m->next;
        protobuf_c_message_free_unpacked(m->msg, NULL);
        free(m);
        m = next;
    }
    client__reader_free(&call->rd);
    if (call->resp != NULL) protobuf_c_message_free_unpacked(call->resp, NULL);
    free(call->grpc_message);
    free(call->message);
    CLIENT__ASSERT(c->n_calls > 0);
    c->n_calls--;
    free(call);
}

static struct call *call_new(struct client *c, enum call_kind kind, const char *path,
                             const ProtobufCMessageDescriptor *resp_desc) {
    struct call *call = calloc(1, sizeof(struct client_stream));
    if (call == NULL) return NULL;
    call->path = str_dup(path);
    if (call->path == NULL) {
        free(call);
        return NULL;
    }
    call->c = c;
    call->kind = kind;
    call->resp_desc = resp_desc;
    client__link_init(&call->link);
    client__link_init(&call->dl);
    client__reader_init(&call->rd, CLIENT_RECV_MSG_BYTES_MAX);
    c->n_calls++;
    return call;
}

static void ready_push(struct call *call) {
    struct client *c = call->c;
    if (call->in_ready) return;
    call->in_ready = true;
    call->ready_next = NULL;
    if (c->ready_tail != NULL)
        c->ready_tail->ready_next = call;
    else
        c->ready_head = call;
    c->ready_tail = call;
    kick(c);
}

static struct call *ready_pop(struct client *c) {
    struct call *call = c->ready_head;
    if (call == NULL) return NULL;
    c->ready_head = call->ready_next;
    if (c->ready_head == NULL) c->ready_tail = NULL;
    call->ready_next = NULL;
    call->in_ready = false;
    return call;
}

/* Takes an ACTIVE call off its connection. rst: tell the server to stop
 * (RST_STREAM CANCEL) because the stream is still open there. */
static void call_detach(struct call *call, bool rst) {
    struct conn *cn = call->conn;
    CLIENT__ASSERT(call->state == CALL_ACTIVE);
    CLIENT__ASSERT(cn != NULL);
    client__link_remove(&call->link);
    CLIENT__ASSERT(cn->n_active > 0);
    cn->n_active--;
    if (cn->h2 != NULL && call->stream_id > 0) {
        nghttp2_session_set_stream_user_data(cn->h2, call->stream_id, NULL);
        if (rst) {
            nghttp2_submit_rst_stream(cn->h2, NGHTTP2_FLAG_NONE, call->stream_id, NGHTTP2_CANCEL);
            kick(call->c);
        }
    }
    CLIENT__ASSERT(cn->recv_buffered >= call->rd_accounted);
    cn->recv_buffered -= call->rd_accounted;
    call->rd_accounted = 0;
    call->conn = NULL;
    call->stream_id = 0;
}

/* Decides the call's outcome and hands it to the dispatcher. */
static void call_finish(struct call *call, int code, const char *message, bool maybe_applied,
                        bool rst) {
    if (call->state == CALL_DONE) return;
    if (call->state == CALL_WAITING) client__link_remove(&call->link);
    if (call->state == CALL_ACTIVE) call_detach(call, rst);
    client__link_remove(&call->dl);
    call->state = CALL_DONE;
    call->code = code;
    call->maybe_applied = code == 0 || maybe_applied;
    /* Without memory the outcome still goes out, without its text. */
    call->message = message != NULL && message[0] != '\0' ? str_dup(message) : NULL;
    ready_push(call);
}

static void call_finishf(struct call *call, int code, bool maybe_applied, bool rst, const char *fmt,
                         ...) __attribute__((format(printf, 5, 6)));

static void call_finishf(struct call *call, int code, bool maybe_applied, bool rst, const char *fmt,
                         ...) {
    char msg[ERR_BYTES * 4];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    call_finish(call, code, msg, maybe_applied, rst);
}

/* Adds a stream to the list of streams waiting for a connection. */
static void stream_wait_start(struct call *call) {
    struct client *c = call->c;
    CLIENT__ASSERT(call->kind == CALL_STREAM);
    call->deadline_ms = now_ms(c) + c->dial_timeout_ms;
    client__link_push(&c->stream_dl, &call->dl);
}

/* Moves an ACTIVE call whose request never reached the server back to the
 * front of the waiting list, ready for the next connection. */
static void call_requeue(struct call *call) {
    struct client *c = call->c;
    CLIENT__ASSERT(call->kind != CALL_AUTH);
    call_detach(call, false);
    client__reader_free(&call->rd);
    client__reader_init(&call->rd, CLIENT_RECV_MSG_BYTES_MAX);
    call->http_status = 0;
    call->have_grpc_status = false;
    call->grpc_status = 0;
    free(call->grpc_message);
    call->grpc_message = NULL;
    call->header_bytes = 0;
    if (call->resp != NULL) protobuf_c_message_free_unpacked(call->resp, NULL);
    call->resp = NULL;
    call->req_off = 0;
    call->sent = false;
    call->state = CALL_WAITING;
    client__link_insert_before(c->waiting.next, &call->link);
    if (call->kind == CALL_STREAM) stream_wait_start(call);
    deadline_rearm(c);
    kick(c);
}

/* ---- dispatcher --------------------------------------------------------------------- */

static void auth_done(struct client *c, struct call *call);

static void deliver(struct call *call) {
    struct client_status st = {
        .code = call->code,
        .message = call->message != NULL ? call->message : "",
        .maybe_applied = call->maybe_applied,
    };
    call->busy = true;
    if (call->kind == CALL_UNARY)
        call->unary_cb(call->arg, &st, call->code == 0 ? call->resp : NULL);
    else
        call->cbs.end_cb(call->arg, &st);
    call->busy = false;
}

/* Runs the callbacks of every call on the ready list. Callbacks may start
 * calls, send, close streams or close the client; the loop picks up
 * whatever they add. */
static void dispatch(struct client *c) {
    if (c->dispatching) return;
    c->dispatching = true;
    struct call *call;
    while ((call = ready_pop(c)) != NULL) {
        switch (call->kind) {
        case CALL_STREAM:
            while (call->in_head != NULL && !call->user_closed) {
                struct in_msg *m = call->in_head;
                call->in_head = m->next;
                if (call->in_head == NULL) call->in_tail = NULL;
                if (call->cbs.msg_cb != NULL) {
                    call->busy = true;
                    call->cbs.msg_cb(call->arg, m->msg);
                    call->busy = false;
                }
                protobuf_c_message_free_unpacked(m->msg, NULL);
                free(m);
            }
            if (call->user_closed) {
                call_free(call);
            } else if (call->state == CALL_DONE) {
                deliver(call);
                call_free(call);
            }
            break;
        case CALL_UNARY:
            CLIENT__ASSERT(call->state == CALL_DONE);
            deliver(call);
            call_free(call);
            break;
        case CALL_AUTH:
            CLIENT__ASSERT(call->state == CALL_DONE);
            auth_done(c, call);
            call_free(call);
            break;
        }
    }
    c->dispatching = false;
}

/* ---- output -------------------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status) {
    struct wchunk *ch = CLIENT__CONTAINER(req, struct wchunk, req);
    struct conn *cn = ch->conn;
    CLIENT__ASSERT(cn->write_bytes >= ch->len);
    cn->write_bytes -= ch->len;
    free(ch);
    if (cn->phase == PH_DEAD) return;
    if (status < 0) {
        conn_fail(cn, "write failed: %s", uv_strerror(status));
        return;
    }
    conn_flush(cn);
}

/* Hands the chunk being filled to libuv. */
static int out_submit(struct conn *cn) {
    struct wchunk *ch = cn->out;
    if (ch == NULL || ch->len == 0) return 0;
    cn->out = NULL;
    uv_buf_t buf = uv_buf_init((char *)ch->data, (unsigned)ch->len);
    ch->conn = cn;
    cn->write_bytes += ch->len;
    int rc = uv_write(&ch->req, (uv_stream_t *)&cn->sock->tcp, &buf, 1, on_write);
    if (rc != 0) {
        cn->write_bytes -= ch->len;
        free(ch);
        return rc;
    }
    return 0;
}

/* Appends bytes destined for the socket. */
static int out_append(struct conn *cn, const uint8_t *p, size_t n) {
    while (n > 0) {
        if (cn->out == NULL) {
            cn->out = malloc(sizeof(*cn->out));
            if (cn->out == NULL) return CLIENT_ENOMEM;
            cn->out->len = 0;
        }
        size_t room = sizeof(cn->out->data) - cn->out->len;
        size_t take = n < room ? n : room;
        memcpy(cn->out->data + cn->out->len, p, take);
        cn->out->len += take;
        p += take;
        n -= take;
        if (cn->out->len == sizeof(cn->out->data)) {
            int rc = out_submit(cn);
            if (rc != 0) return rc;
        }
    }
    return 0;
}

/* Moves TLS records produced by OpenSSL to the output. */
static int tls_drain(struct conn *cn) {
    uint8_t buf[4096];
    for (;;) {
        int n = BIO_read(cn->wbio, buf, (int)sizeof(buf));
        if (n <= 0) return 0;
        int rc = out_append(cn, buf, (size_t)n);
        if (rc != 0) return rc;
    }
}

static int out_plain(struct conn *cn, const uint8_t *p, size_t n) {
    if (cn->ssl == NULL) return out_append(cn, p, n);
    while (n > 0) {
        int chunk = n > 65536 ? 65536 : (int)n;
        /* The write BIO is a memory BIO: SSL_write does not block. */
        int w = SSL_write(cn->ssl, p, chunk);
        if (w <= 0) return CLIENT_ETLS;
        p += w;
        n -= (size_t)w;
        int rc = tls_drain(cn);
        if (rc != 0) return rc;
    }
    return 0;
}

/* Writes out what TLS and nghttp2 have to send, up to WRITE_HIGH_BYTES
 * waiting in libuv (on_write calls it again). May fail the connection. */
static void conn_flush(struct conn *cn) {
    if (cn->phase == PH_DEAD || cn->phase < PH_TLS || cn->sock == NULL) return;
    int rc = 0;
    if (cn->h2 != NULL) {
        while (cn->write_bytes < WRITE_HIGH_BYTES) {
            const uint8_t *p;
            ssize_t n = nghttp2_session_mem_send(cn->h2, &p);
            if (n < 0) {
                conn_fail(cn, "HTTP/2 error: %s", nghttp2_strerror((int)n));
                return;
            }
            if (n == 0) break;
            rc = out_plain(cn, p, (size_t)n);
            if (rc != 0) break;
        }
    }
    if (rc == 0 && cn->ssl != NULL) rc = tls_drain(cn);
    if (rc == 0) rc = out_submit(cn);
    if (rc != 0) {
        conn_fail(cn, "write failed: %s", client_strerror(rc));
        return;
    }
    if (cn->h2 != NULL && cn->phase == PH_READY && !nghttp2_session_want_read(cn->h2) &&
        !nghttp2_session_want_write(cn->h2) && cn->write_bytes == 0)
        conn_fail(cn, "the server ended the HTTP/2 session");
}

/* ---- request submission ----------------------------------------------------------------- */

static ssize_t data_read(nghttp2_session *h2, int32_t stream_id, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *user) {
    (void)source;
    (void)user;
    /* The stream's user data, not source->ptr: a detached call may be gone. */
    struct call *call = nghttp2_session_get_stream_user_data(h2, stream_id);
    if (call == NULL) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (call->kind != CALL_STREAM) {
        size_t n = call->req_len - call->req_off;
        if (n > length) n = length;
        memcpy(buf, call->req + call->req_off, n);
        call->req_off += n;
        if (call->req_off == call->req_len) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        return (ssize_t)n;
    }
    size_t n = 0;
    while (n < length && call->q_head != NULL) {
        struct out_msg *m = call->q_head;
        size_t take = m->len - m->off;
        if (take > length - n) take = length - n;
        memcpy(buf + n, (uint8_t *)(m + 1) + m->off, take);
        m->off += take;
        n += take;
        if (m->off == m->len) {
            call->q_head = m->next;
            if (call->q_head == NULL) call->q_tail = NULL;
            free(m);
        }
    }
    CLIENT__ASSERT(call->q_bytes >= n);
    call->q_bytes -= n;
    if (n == 0) return NGHTTP2_ERR_DEFERRED;
    return (ssize_t)n;
}

#define NV(name, value, value_len)                                                                 \
    ((nghttp2_nv){(uint8_t *)(name), (uint8_t *)(value), sizeof(name) - 1, (value_len),            \
                  NGHTTP2_NV_FLAG_NONE})

/* Opens the call's HTTP/2 stream on cn. Returns 0 or an nghttp2 error. */
static int conn_submit(struct conn *cn, struct call *call) {
    struct client *c = cn->c;
    const struct endpoint *ep = &c->eps[cn->ep];
    CLIENT__ASSERT(call->state == CALL_WAITING);
    CLIENT__ASSERT(cn->phase == PH_READY);
    const char *scheme = ep->u.tls ? "https" : "http";
    char timeout[16];
    nghttp2_nv nva[9];
    size_t n = 0;
    nva[n++] = NV(":method", "POST", 4);
    nva[n++] = NV(":scheme", scheme, strlen(scheme));
    nva[n++] = NV(":path", call->path, strlen(call->path));
    nva[n++] = NV(":authority", ep->u.authority, strlen(ep->u.authority));
    nva[n++] = NV("content-type", "application/grpc", 16);
    nva[n++] = NV("te", "trailers", 8);
    nva[n++] = NV("user-agent", USER_AGENT, sizeof(USER_AGENT) - 1);
    if (call->kind != CALL_STREAM) {
        uint64_t now = now_ms(c);
        client__grpc_timeout_format(call->deadline_ms > now ? call->deadline_ms - now : 1, timeout);
        nva[n++] = NV("grpc-timeout", timeout, strlen(timeout));
    }
    if (call->kind != CALL_AUTH && cn->token != NULL)
        nva[n++] = NV("token", cn->token, strlen(cn->token));
    nghttp2_data_provider prov = {.source.ptr = call, .read_callback = data_read};
    int32_t id = nghttp2_submit_request(cn->h2, NULL, nva, n, &prov, call);
    if (id < 0) return id;
    client__link_remove(&call->link);
    if (call->kind == CALL_STREAM) client__link_remove(&call->dl);
    call->state = CALL_ACTIVE;
    call->conn = cn;
    call->stream_id = id;
    client__link_push(&cn->active, &call->link);
    cn->n_active++;
    return 0;
}

static void auth_start(struct conn *cn) {
    struct client *c = cn->c;
    CLIENT__ASSERT(c->user != NULL);
    CLIENT__ASSERT(cn->phase == PH_READY);
    Etcdserverpb__AuthenticateRequest req = ETCDSERVERPB__AUTHENTICATE_REQUEST__INIT;
    req.name = c->user;
    req.password = c->password;
    struct call *call =
        call_new(c, CALL_AUTH, AUTH_PATH, &etcdserverpb__authenticate_response__descriptor);
    if (call == NULL) goto err_fail;
    if (client__grpc_encode(&req.base, 0, &call->req, &call->req_len) != 0) goto err_call;
    call->auth_conn_id = cn->id;
    call->deadline_ms = now_ms(c) + c->command_timeout_ms;
    call->state = CALL_WAITING;
    client__link_push(&c->unary_dl, &call->dl);
    cn->auth = AUTH_RUNNING;
    deadline_rearm(c);
    /* Submitted at once, ahead of the calls that wait for its token; a
     * failure reaches auth_done() like any answer. */
    int rc = conn_submit(cn, call);
    if (rc != 0)
        call_finishf(call, CLIENT_GRPC_INTERNAL, false, false, "cannot submit: %s",
                     nghttp2_strerror(rc));
    return;

err_call:
    client__link_remove(&call->dl);
    call_free(call);
err_fail:
    cn->auth = AUTH_FAILED;
    conn_fail(cn, "out of memory for the Authenticate call");
}

/* Fails every waiting call with the outcome of a failed Authenticate. */
static void fail_waiting(struct client *c, int code, const char *message) {
    while (!client__link_empty(&c->waiting)) {
        struct call *call = link_call(c->waiting.next);
        call_finish(call, code, message, false, false);
    }
}

static void auth_done(struct client *c, struct call *call) {
    struct conn *cn = c->conn;
    /* An answer for a connection that is gone: its successor authenticates
     * by itself. */
    if (c->closing || cn == NULL || cn->id != call->auth_conn_id || cn->phase != PH_READY) return;
    CLIENT__ASSERT(cn->auth == AUTH_RUNNING);
    if (call->code == 0) {
        const Etcdserverpb__AuthenticateResponse *r =
            (const Etcdserverpb__AuthenticateResponse *)call->resp;
        const char *token = r->token != NULL ? r->token : "";
        if (strlen(token) > TOKEN_BYTES_MAX) {
            cn->auth = AUTH_FAILED;
            fail_waiting(c, CLIENT_GRPC_INTERNAL, "client: auth token too long");
            return;
        }
        free(cn->token);
        cn->token = str_dup(token);
        if (cn->token == NULL) {
            conn_fail(cn, "out of memory for the auth token");
            return;
        }
        cn->auth = AUTH_DONE;
        kick(c);
        return;
    }
    cn->auth = AUTH_FAILED;
    log_line(c, "endpoint %s: authentication as %s failed: %s", c->eps[cn->ep].url, c->user,
             call->message != NULL ? call->message : client_grpc_code_name(call->code));
    fail_waiting(c, call->code, call->message);
}

/* Starts authentication when due and moves waiting calls onto the
 * connection once it can take them. */
static void pump(struct client *c) {
    struct conn *cn = c->conn;
    if (c->closing || cn == NULL || cn->phase != PH_READY || cn->goaway) return;
    if (cn->auth == AUTH_NEEDED || (cn->auth == AUTH_FAILED && !client__link_empty(&c->waiting))) {
        auth_start(cn);
        return;
    }
    if (cn->auth != AUTH_OFF && cn->auth != AUTH_DONE) return;
    while (!client__link_empty(&c->waiting) && cn->phase == PH_READY) {
        struct call *call = link_call(c->waiting.next);
        int rc = conn_submit(cn, call);
        if (rc == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE) {
            /* 2^30 streams used up: a fresh connection starts over. */
            conn_fail(cn, "HTTP/2 stream ids exhausted");
            return;
        }
        if (rc != 0) {
            call_finishf(call, CLIENT_GRPC_INTERNAL, false, false, "cannot submit: %s",
                         nghttp2_strerror(rc));
        }
    }
}

/* ---- response handling (nghttp2 callbacks) -------------------------------------------- */

static struct call *stream_call(nghttp2_session *h2, int32_t stream_id) {
    return nghttp2_session_get_stream_user_data(h2, stream_id);
}

static bool eq(const uint8_t *a, size_t alen, const char *b) {
    size_t blen = strlen(b);
    return alen == blen && memcmp(a, b, blen) == 0;
}

/* A decimal of at most 3 digits, or -1. */
static int parse_code(const uint8_t *v, size_t len) {
    if (len == 0 || len > 3) return -1;
    int x = 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9') return -1;
        x = x * 10 + (v[i] - '0');
    }
    return x;
}

static int on_header(nghttp2_session *h2, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user) {
    (void)flags;
    (void)user;
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    struct call *call = stream_call(h2, frame->hd.stream_id);
    if (call == NULL) return 0;
    /* RFC 7541 section 4.1 size accounting: 32 bytes overhead per field. */
    call->header_bytes += namelen + valuelen + 32;
    if (call->header_bytes > HEADER_LIST_BYTES_MAX) return 0;
    if (eq(name, namelen, ":status")) {
        call->http_status = parse_code(value, valuelen);
    } else if (eq(name, namelen, "grpc-status")) {
        int code = parse_code(value, valuelen);
        call->have_grpc_status = true;
        call->grpc_status = code < 0 ? CLIENT_GRPC_UNKNOWN : code;
    } else if (eq(name, namelen, "grpc-message") && call->grpc_message == NULL) {
        size_t cap = valuelen < CLIENT_STATUS_MESSAGE_BYTES_MAX ? valuelen
                                                                : CLIENT_STATUS_MESSAGE_BYTES_MAX;
        call->grpc_message = malloc(cap + 1);
        if (call->grpc_message != NULL)
            client__percent_decode((const char *)value, valuelen, call->grpc_message, cap + 1);
    }
    return 0;
}

static int on_message(void *arg, const uint8_t *data, size_t len) {
    struct call *call = arg;
    ProtobufCMessage *msg = client__proto_unpack(call->resp_desc, data, len);
    if (msg == NULL) {
        call_finishf(call, CLIENT_GRPC_INTERNAL, call->sent, true,
                     "grpc: failed to unmarshal the received message as %s", call->resp_desc->name);
        return 1;
    }
    call->n_received++;
    if (call->kind != CALL_STREAM) {
        if (call->resp != NULL) {
            protobuf_c_message_free_unpacked(msg, NULL);
            call_finish(call, CLIENT_GRPC_INTERNAL,
                        "grpc: server sent more than one response message for a unary call",
                        call->sent, true);
            return 1;
        }
        call->resp = msg;
        return 0;
    }
    struct in_msg *m = malloc(sizeof(*m));
    if (m == NULL) {
        protobuf_c_message_free_unpacked(msg, NULL);
        call_finish(call, CLIENT_GRPC_RESOURCE_EXHAUSTED, "client: out of memory", call->sent,
                    true);
        return 1;
    }
    m->msg = msg;
    m->next = NULL;
    if (call->in_tail != NULL)
        call->in_tail->next = m;
    else
        call->in_head = m;
    call->in_tail = m;
    ready_push(call);
    return 0;
}

static int on_data_chunk(nghttp2_session *h2, uint8_t flags, int32_t stream_id, const uint8_t *data,
                         size_t len, void *user) {
    (void)flags;
    struct conn *cn = user;
    /* Window goes back at once, for the connection even when the call is
     * gone: the bytes are decoded (or dropped) right here. */
    nghttp2_session_consume(h2, stream_id, len);
    struct call *call = stream_call(h2, stream_id);
    if (call == NULL || call->state != CALL_ACTIVE) return 0;
    if (cn->recv_buffered >= CONN_RECV_BUFFER_BYTES_MAX) {
        call_finishf(call, CLIENT_GRPC_RESOURCE_EXHAUSTED, call->sent, true,
                     "client: connection holds more than %u bytes of partial messages",
                     CONN_RECV_BUFFER_BYTES_MAX);
        return 0;
    }
    int rc = client__reader_feed(&call->rd, data, len, on_message, call);
    if (call->conn == cn) {
        size_t now_buffered = client__reader_buffered(&call->rd);
        cn->recv_buffered = cn->recv_buffered - call->rd_accounted + now_buffered;
        call->rd_accounted = now_buffered;
    }
    switch (rc) {
    case 0:
    case 1: /* on_message finished the call */
        break;
    case CLIENT_ETOOBIG:
        call_finishf(call, CLIENT_GRPC_RESOURCE_EXHAUSTED, call->sent, true,
                     "grpc: received message larger than max (%u vs. %u)",
                     (unsigned)client__reader_declared(&call->rd), CLIENT_RECV_MSG_BYTES_MAX);
        break;
    case CLIENT_EMALFORMED:
        call_finish(call, CLIENT_GRPC_INTERNAL, "grpc: received a compressed or malformed message",
                    call->sent, true);
        break;
    default:
        call_finish(call, CLIENT_GRPC_RESOURCE_EXHAUSTED, "client: out of memory", call->sent,
                    true);
        break;
    }
    return 0;
}

static int on_frame_send(nghttp2_session *h2, const nghttp2_frame *frame, void *user) {
    (void)user;
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
    struct call *call = stream_call(h2, frame->hd.stream_id);
    if (call == NULL) return 0;
    /* A stream exists for the server once its HEADERS left; a unary call
     * can be applied only once its request message did. */
    if (call->kind == CALL_STREAM || frame->hd.type == NGHTTP2_DATA) call->sent = true;
    return 0;
}

static int grpc_code_from_rst(uint32_t error_code) {
    switch (error_code) {
    case NGHTTP2_CANCEL:
        return CLIENT_GRPC_CANCELLED;
    case NGHTTP2_REFUSED_STREAM:
        return CLIENT_GRPC_UNAVAILABLE;
    case NGHTTP2_ENHANCE_YOUR_CALM:
        return CLIENT_GRPC_RESOURCE_EXHAUSTED;
    case NGHTTP2_INADEQUATE_SECURITY:
        return CLIENT_GRPC_PERMISSION_DENIED;
    default:
        return CLIENT_GRPC_INTERNAL;
    }
}

static int on_stream_close(nghttp2_session *h2, int32_t stream_id, uint32_t error_code,
                           void *user) {
    (void)user;
    struct call *call = stream_call(h2, stream_id);
    if (call == NULL || call->state != CALL_ACTIVE) return 0;
    struct client *c = call->c;
    if (call->have_grpc_status) {
        const char *msg = call->grpc_message != NULL ? call->grpc_message : "";
        int code = call->grpc_status;
        if (code != 0 && c->user != NULL && call->kind != CALL_AUTH && !call->auth_retried &&
            call->n_received == 0 && strcmp(msg, INVALID_TOKEN) == 0) {
            /* The token expired (or the member restarted): authenticate
             * again and repeat the call, which the server refused. */
            struct conn *cn = call->conn;
            if (cn->auth == AUTH_DONE)
                log_line(c, "endpoint %s: auth token rejected (%s); authenticating again",
                         c->eps[cn->ep].url, msg);
            call->auth_retried = true;
            call_requeue(call); /* frees msg */
            if (cn->auth == AUTH_DONE) {
                free(cn->token);
                cn->token = NULL;
                cn->auth = AUTH_NEEDED;
            }
            return 0;
        }
        if (code == 0 && call->kind != CALL_STREAM && call->resp == NULL) {
            call_finish(call, CLIENT_GRPC_INTERNAL, "grpc: server sent no response message", true,
                        false);
            return 0;
        }
        call_finish(call, code, msg, false, false);
        return 0;
    }
    if (error_code == NGHTTP2_REFUSED_STREAM && call->http_status == 0 && call->kind != CALL_AUTH &&
        call->refusals < REFUSALS_MAX) {
        /* Not processed by the server (RFC 7540 section 8.1.4). */
        call->refusals++;
        call_requeue(call);
        return 0;
    }
    if (call->http_status > 0 && call->http_status != 200) {
        call_finishf(call, client__grpc_code_from_http(call->http_status), false, false,
                     "unexpected HTTP status code received from server: %d", call->http_status);
        return 0;
    }
    if (error_code != NGHTTP2_NO_ERROR) {
        call_finishf(call, grpc_code_from_rst(error_code), call->sent, false,
                     "stream terminated by RST_STREAM with error code: %u", error_code);
        return 0;
    }
    call_finish(call, CLIENT_GRPC_INTERNAL, "server closed the stream without sending trailers",
                call->sent, false);
    return 0;
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *frame, void *user) {
    struct conn *cn = user;
    struct client *c = cn->c;
    switch (frame->hd.type) {
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK)) cn->settings_seen = true;
        break;
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA:
        /* The server ended its side while ours is open (a stream it
         * finished): close ours too, so that on_stream_close reports the
         * outcome. grpc-go servers reset such streams themselves. */
        if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
            stream_call(h2, frame->hd.stream_id) != NULL &&
            nghttp2_session_get_stream_local_close(h2, frame->hd.stream_id) == 0)
            nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
        break;
    case NGHTTP2_PING:
        if (frame->hd.flags & NGHTTP2_FLAG_ACK) {
            cn->ping_outstanding = false;
            cn->alive_ms = now_ms(c);
        }
        break;
    case NGHTTP2_GOAWAY: {
        const nghttp2_goaway *g = &frame->goaway;
        char debug[64];
        size_t dl = g->opaque_data_len < sizeof(debug) - 1 ? g->opaque_data_len : sizeof(debug) - 1;
        for (size_t i = 0; i < dl; i++) {
            uint8_t ch = g->opaque_data[i];
            debug[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
        }
        debug[dl] = '\0';
        cn->goaway = true;
        cn->goaway_last_id = g->last_stream_id;
        if (g->error_code == NGHTTP2_ENHANCE_YOUR_CALM && strcmp(debug, "too_many_pings") == 0 &&
            c->keepalive_ms < KEEPALIVE_MS_MAX) {
            c->keepalive_ms = c->keepalive_ms * 2 < KEEPALIVE_MS_MAX ? c->keepalive_ms * 2
                                                                     : KEEPALIVE_MS_MAX;
            log_line(c, "endpoint %s: server says too_many_pings; PING interval now %u ms",
                     c->eps[cn->ep].url, c->keepalive_ms);
        }
        if (!cn->fail_pending) {
            cn->fail_pending = true;
            snprintf(cn->fail_reason, sizeof(cn->fail_reason), "server sent GOAWAY (%s%s%s)",
                     nghttp2_http2_strerror(g->error_code), dl ? ": " : "", debug);
        }
        break;
    }
    default:
        break;
    }
    return 0;
}

static nghttp2_session_callbacks *callbacks_new(void) {
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0) return NULL;
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    return cbs;
}

/* ---- connection life -------------------------------------------------------------------- */

static void maybe_free_client(struct client *c);

static void conn_unref(struct conn *cn) {
    CLIENT__ASSERT(cn->refs > 0);
    if (--cn->refs > 0) return;
    CLIENT__ASSERT(cn->phase == PH_DEAD);
    CLIENT__ASSERT(cn->write_bytes == 0);
    struct client *c = cn->c;
    free(cn);
    CLIENT__ASSERT(c->conns_alive > 0);
    c->conns_alive--;
    maybe_free_client(c);
}

static void on_sock_closed(uv_handle_t *h) {
    struct sock *s = h->data;
    struct conn *cn = s->conn;
    free(s);
    conn_unref(cn);
}

static void sock_close(struct conn *cn) {
    struct sock *s = cn->sock;
    if (s == NULL) return;
    cn->sock = NULL;
    uv_close((uv_handle_t *)&s->tcp, on_sock_closed);
}

static void conn_timer_start(struct client *c, enum conn_timer_mode mode, uint64_t timeout,
                             uint64_t repeat);

static uint64_t backoff_next(struct client *c) {
    uint64_t d = c->backoff_min_ms;
    for (unsigned i = 0; i < c->backoff_exp && d < c->backoff_max_ms; i++) d *= 2;
    if (d > c->backoff_max_ms) d = c->backoff_max_ms;
    if (c->backoff_exp < 32) c->backoff_exp++;
    /* +-20% jitter, so clients that lost the same server do not return in step. */
    uint64_t pct = 80 + rng_next(c) % 41;
    d = d * pct / 100;
    return d > 0 ? d : 1;
}

/* Tears the connection down, settles its calls and schedules the next
 * attempt. Never called inside nghttp2 callbacks. */
static void conn_fail(struct conn *cn, const char *fmt, ...) {
    struct client *c = cn->c;
    if (cn->phase == PH_DEAD) return;
    char reason[ERR_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    const char *url = c->eps[cn->ep].url;
    cn->phase = PH_DEAD;
    snprintf(c->last_err, sizeof(c->last_err), "endpoint %s: %s", url, reason);
    /* Calls: back to waiting (never reached the server) or failed. From the
     * tail, inserting at the head of c->waiting, keeps their order. */
    while (!client__link_empty(&cn->active)) {
        struct call *call = link_call(cn->active.prev);
        bool refused = cn->goaway && call->stream_id > cn->goaway_last_id;
        if (c->closing) {
            call_finish(call, CLIENT_GRPC_CANCELLED, "client closed", call->sent, false);
        } else if (call->kind != CALL_AUTH && (!call->sent || refused)) {
            call_requeue(call);
        } else {
            call_finishf(call, CLIENT_GRPC_UNAVAILABLE, true, false, "connection to %s lost: %s",
                         url, reason);
        }
    }
    if (cn->h2 != NULL) nghttp2_session_del(cn->h2);
    cn->h2 = NULL;
    SSL_free(cn->ssl);
    cn->ssl = NULL;
    free(cn->out);
    cn->out = NULL;
    free(cn->token);
    cn->token = NULL;
    if (cn->ai != NULL) uv_freeaddrinfo(cn->ai);
    cn->ai = NULL;
    if (cn->gai_pending) uv_cancel((uv_req_t *)&cn->gai);
    sock_close(cn);
    if (c->conn == cn) c->conn = NULL;
    if (!c->closing) {
        c->round_failures++;
        unsigned next = (cn->ep + 1) % c->n_eps;
        c->next_ep = next;
        if (c->round_failures >= c->n_eps) {
            c->round_failures = 0;
            uint64_t d = backoff_next(c);
            log_line(c, "endpoint %s: %s; next try in %llu ms", url, reason, (unsigned long long)d);
            conn_timer_start(c, TIMER_NEXT, d, 0);
        } else {
            log_line(c, "endpoint %s: %s; trying %s", url, reason, c->eps[next].url);
            conn_timer_start(c, TIMER_NEXT, 0, 0);
        }
    }
    conn_unref(cn);
}

static void keepalive_arm(struct client *c) {
    if (c->keepalive_ms == UINT32_MAX) {
        uv_timer_stop(&c->conn_timer);
        c->timer_mode = TIMER_IDLE;
        return;
    }
    uint64_t period =
        (c->keepalive_ms < c->keepalive_timeout_ms ? c->keepalive_ms : c->keepalive_timeout_ms) / 4;
    if (period < 10) period = 10;
    if (period > 1000) period = 1000;
    conn_timer_start(c, TIMER_KEEPALIVE, period, period);
}

static void conn_ready(struct conn *cn) {
    struct client *c = cn->c;
    CLIENT__ASSERT(cn->phase == PH_H2);
    cn->phase = PH_READY;
    cn->alive_ms = now_ms(c);
    c->round_failures = 0;
    c->backoff_exp = 0;
    log_line(c, "endpoint %s: connected", c->eps[cn->ep].url);
    cn->auth = c->user != NULL ? AUTH_NEEDED : AUTH_OFF;
    keepalive_arm(c);
    kick(c);
}

static void keepalive_check(struct conn *cn) {
    struct client *c = cn->c;
    uint64_t now = now_ms(c);
    if (cn->ping_outstanding) {
        if (now - cn->ping_sent_ms >= c->keepalive_timeout_ms)
            conn_fail(cn, "no PING ACK within %u ms", c->keepalive_timeout_ms);
        return;
    }
    /* etcd answers PINGs on a connection without streams with GOAWAY
     * (grpc-go's PermitWithoutStream), so only busy connections ping. */
    if (cn->n_active == 0 || now - cn->alive_ms < c->keepalive_ms) return;
    if (nghttp2_submit_ping(cn->h2, NGHTTP2_FLAG_NONE, NULL) != 0) return;
    cn->ping_outstanding = true;
    cn->ping_sent_ms = now;
    conn_flush(cn);
}

/* Creates the nghttp2 session and sends the preface and our SETTINGS. */
static void h2_start(struct conn *cn) {
    nghttp2_session_callbacks *cbs = callbacks_new();
    nghttp2_option *opt = NULL;
    int rc = cbs != NULL ? nghttp2_option_new(&opt) : NGHTTP2_ERR_NOMEM;
    if (rc == 0) {
        /* Windows are given back by on_data_chunk, as data is decoded. */
        nghttp2_option_set_no_auto_window_update(opt, 1);
        rc = nghttp2_session_client_new2(&cn->h2, cbs, cn, opt);
    }
    nghttp2_option_del(opt);
    if (cbs != NULL) nghttp2_session_callbacks_del(cbs);
    if (rc != 0) {
        conn_fail(cn, "cannot create the HTTP/2 session: %s", nghttp2_strerror(rc));
        return;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW_BYTES},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, HEADER_LIST_BYTES_MAX},
    };
    rc = nghttp2_submit_settings(cn->h2, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
    if (rc == 0)
        rc = nghttp2_session_set_local_window_size(cn->h2, NGHTTP2_FLAG_NONE, 0,
                                                   H2_CONN_WINDOW_BYTES);
    if (rc != 0) {
        conn_fail(cn, "cannot start HTTP/2: %s", nghttp2_strerror(rc));
        return;
    }
    cn->phase = PH_H2;
    conn_flush(cn);
}

/* One step of the TLS handshake; on success starts HTTP/2. */
static void tls_step(struct conn *cn) {
    ERR_clear_error();
    int r = SSL_do_handshake(cn->ssl);
    if (r == 1) {
        const unsigned char *proto = NULL;
        unsigned plen = 0;
        SSL_get0_alpn_selected(cn->ssl, &proto, &plen);
        if (plen > 0 && !(plen == 2 && memcmp(proto, "h2", 2) == 0)) {
            conn_fail(cn, "TLS: the server chose ALPN protocol \"%.*s\", not h2", (int)plen,
                      (const char *)proto);
            return;
        }
        h2_start(cn);
        return;
    }
    int e = SSL_get_error(cn->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        conn_flush(cn);
        return;
    }
    char why[ERR_BYTES];
    client__tls_error(cn->ssl, e, why, sizeof(why));
    conn_fail(cn, "TLS handshake failed: %s", why);
}

static void h2_recv(struct conn *cn, const uint8_t *p, size_t n) {
    ssize_t rv = nghttp2_session_mem_recv(cn->h2, p, n);
    if (rv < 0) conn_fail(cn, "HTTP/2 error: %s", nghttp2_strerror((int)rv));
}

static void tls_recv(struct conn *cn, const uint8_t *p, size_t n) {
    struct client *c = cn->c;
    if (BIO_write(cn->rbio, p, (int)n) != (int)n) {
        conn_fail(cn, "TLS: out of memory");
        return;
    }
    if (cn->phase == PH_TLS) {
        tls_step(cn);
        if (cn->phase == PH_TLS || cn->phase == PH_DEAD) return;
    }
    for (;;) {
        ERR_clear_error();
        int r = SSL_read(cn->ssl, c->plain_buf, (int)sizeof(c->plain_buf));
        if (r > 0) {
            h2_recv(cn, c->plain_buf, (size_t)r);
            if (cn->phase == PH_DEAD) return;
            continue;
        }
        int e = SSL_get_error(cn->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
        char why[ERR_BYTES];
        client__tls_error(cn->ssl, e, why, sizeof(why));
        conn_fail(cn, "TLS: %s", why);
        return;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    struct sock *s = h->data;
    struct client *c = s->conn->c;
    *buf = uv_buf_init((char *)c->read_buf, sizeof(c->read_buf));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    struct sock *s = stream->data;
    struct conn *cn = s->conn;
    if (cn->phase == PH_DEAD || cn->sock != s) return;
    if (nread < 0) {
        conn_fail(cn, "%s",
                  nread == UV_EOF ? "connection closed by the server" : uv_strerror((int)nread));
        return;
    }
    if (nread == 0) return;
    cn->alive_ms = now_ms(cn->c);
    if (cn->ssl != NULL)
        tls_recv(cn, (const uint8_t *)buf->base, (size_t)nread);
    else if (cn->h2 != NULL)
        h2_recv(cn, (const uint8_t *)buf->base, (size_t)nread);
    if (cn->phase == PH_DEAD) return;
    if (cn->fail_pending) {
        conn_fail(cn, "%s", cn->fail_reason);
        return;
    }
    if (cn->phase == PH_H2 && cn->settings_seen) conn_ready(cn);
    conn_flush(cn);
}

static void try_next_addr(struct conn *cn);

static void on_connected(uv_connect_t *req, int status) {
    struct conn *cn = CLIENT__CONTAINER(req, struct conn, creq);
    struct client *c = cn->c;
    if (cn->phase != PH_CONNECT) return; /* cancelled: failed or closed meanwhile */
    if (status < 0) {
        snprintf(cn->connect_err, sizeof(cn->connect_err), "%s", uv_strerror(status));
        sock_close(cn);
        try_next_addr(cn);
        return;
    }
    uv_tcp_nodelay(&cn->sock->tcp, 1);
    int rc = uv_read_start((uv_stream_t *)&cn->sock->tcp, on_alloc, on_read);
    if (rc != 0) {
        conn_fail(cn, "cannot read: %s", uv_strerror(rc));
        return;
    }
    const struct endpoint *ep = &c->eps[cn->ep];
    if (!ep->u.tls) {
        h2_start(cn);
        return;
    }
    if (client__tls_new(c->tls, &ep->u, &cn->ssl, &cn->rbio, &cn->wbio) != 0) {
        conn_fail(cn, "TLS: out of memory");
        return;
    }
    cn->phase = PH_TLS;
    tls_step(cn);
}

/* Connects to the next resolved address, or fails the attempt. */
static void try_next_addr(struct conn *cn) {
    struct client *c = cn->c;
    while (cn->ai_next != NULL) {
        const struct addrinfo *ai = cn->ai_next;
        cn->ai_next = ai->ai_next;
        struct sock *s = malloc(sizeof(*s));
        if (s == NULL) break;
        if (uv_tcp_init(c->loop, &s->tcp) != 0) {
            free(s);
            break;
        }
        s->tcp.data = s;
        s->conn = cn;
        cn->refs++;
        cn->sock = s;
        cn->phase = PH_CONNECT;
        int rc = uv_tcp_connect(&cn->creq, &s->tcp, ai->ai_addr, on_connected);
        if (rc == 0) return;
        snprintf(cn->connect_err, sizeof(cn->connect_err), "%s", uv_strerror(rc));
        sock_close(cn);
    }
    conn_fail(cn, "%s", cn->connect_err[0] ? cn->connect_err : "no usable address");
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
    struct conn *cn = CLIENT__CONTAINER(req, struct conn, gai);
    cn->gai_pending = false;
    if (cn->phase != PH_RESOLVE) {
        if (res != NULL) uv_freeaddrinfo(res);
        conn_unref(cn);
        return;
    }
    if (status < 0) {
        conn_fail(cn, "cannot resolve %s: %s", cn->c->eps[cn->ep].u.host, uv_strerror(status));
    } else {
        cn->ai = res;
        cn->ai_next = res;
        try_next_addr(cn);
    }
    conn_unref(cn);
}

static void conn_start(struct client *c) {
    CLIENT__ASSERT(c->conn == NULL);
    CLIENT__ASSERT(!c->closing);
    struct conn *cn = calloc(1, sizeof(*cn));
    if (cn == NULL) {
        /* Try again later; calls wait or time out meanwhile. */
        snprintf(c->last_err, sizeof(c->last_err), "out of memory for a connection");
        conn_timer_start(c, TIMER_NEXT, backoff_next(c), 0);
        return;
    }
    cn->c = c;
    cn->id = ++c->next_conn_id;
    cn->ep = c->next_ep;
    cn->phase = PH_RESOLVE;
    cn->refs = 1;
    client__link_init(&cn->active);
    c->conns_alive++;
    c->conn = cn;
    c->cur_ep = cn->ep;
    conn_timer_start(c, TIMER_DIAL, c->dial_timeout_ms, 0);
    const struct client__url *u = &c->eps[cn->ep].u;
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (u->host_is_ip ? AI_NUMERICHOST : AI_ADDRCONFIG);
    int rc = uv_getaddrinfo(c->loop, &cn->gai, on_resolved, u->host, u->port, &hints);
    if (rc != 0) {
        /* Reported by the dial timer, from the loop. */
        cn->fail_pending = true;
        snprintf(cn->fail_reason, sizeof(cn->fail_reason), "cannot resolve %s: %s", u->host,
                 uv_strerror(rc));
        conn_timer_start(c, TIMER_DIAL, 0, 0);
        return;
    }
    cn->gai_pending = true;
    cn->refs++;
}

static void on_conn_timer(uv_timer_t *t) {
    struct client *c = t->data;
    struct conn *cn = c->conn;
    enum conn_timer_mode mode = c->timer_mode;
    if (c->closing) return;
    switch (mode) {
    case TIMER_DIAL:
        c->timer_mode = TIMER_IDLE;
        if (cn == NULL || cn->phase == PH_READY) return;
        if (cn->fail_pending)
            conn_fail(cn, "%s", cn->fail_reason);
        else
            conn_fail(cn, "dial timeout after %u ms (%s)", c->dial_timeout_ms,
                      phase_name(cn->phase));
        break;
    case TIMER_NEXT:
        c->timer_mode = TIMER_IDLE;
        if (cn == NULL) conn_start(c);
        break;
    case TIMER_KEEPALIVE:
        if (cn != NULL && cn->phase == PH_READY) keepalive_check(cn);
        break;
    case TIMER_IDLE:
        break;
    }
}

static void conn_timer_start(struct client *c, enum conn_timer_mode mode, uint64_t timeout,
                             uint64_t repeat) {
    c->timer_mode = mode;
    uv_timer_start(&c->conn_timer, on_conn_timer, timeout, repeat);
}

/* ---- deadlines ----------------------------------------------------------------------- */

static void call_expire(struct call *call) {
    struct client *c = call->c;
    if (call->kind == CALL_STREAM) {
        call_finishf(call, CLIENT_GRPC_UNAVAILABLE, false, false, "no connection within %u ms%s%s",
                     c->dial_timeout_ms, c->last_err[0] ? "; last error: " : "", c->last_err);
        return;
    }
    if (call->state == CALL_WAITING) {
        call_finishf(call, CLIENT_GRPC_DEADLINE_EXCEEDED, false, false,
                     "context deadline exceeded (waiting for a connection%s%s)",
                     c->last_err[0] ? "; last error: " : "", c->last_err);
        return;
    }
    call_finish(call, CLIENT_GRPC_DEADLINE_EXCEEDED, "context deadline exceeded", call->sent, true);
}

static void on_deadline(uv_timer_t *t) {
    struct client *c = t->data;
    uint64_t now = now_ms(c);
    while (!client__link_empty(&c->unary_dl) && dl_call(c->unary_dl.next)->deadline_ms <= now)
        call_expire(dl_call(c->unary_dl.next));
    while (!client__link_empty(&c->stream_dl) && dl_call(c->stream_dl.next)->deadline_ms <= now)
        call_expire(dl_call(c->stream_dl.next));
    deadline_rearm(c);
}

static void deadline_rearm(struct client *c) {
    if (c->finalizing) return;
    uint64_t next = UINT64_MAX;
    if (!client__link_empty(&c->unary_dl)) next = dl_call(c->unary_dl.next)->deadline_ms;
    if (!client__link_empty(&c->stream_dl)) {
        uint64_t d = dl_call(c->stream_dl.next)->deadline_ms;
        if (d < next) next = d;
    }
    if (next == UINT64_MAX) {
        uv_timer_stop(&c->deadline_timer);
        return;
    }
    uint64_t now = now_ms(c);
    uv_timer_start(&c->deadline_timer, on_deadline, next > now ? next - now : 0, 0);
}

/* ---- kick: dispatch, pump, flush ---------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h) {
    struct client *c = h->data;
    CLIENT__ASSERT(c->handles_open > 0);
    c->handles_open--;
    maybe_free_client(c);
}

static void finalize(struct client *c) {
    CLIENT__ASSERT(c->closing);
    if (c->finalizing) return;
    c->finalizing = true;
    uv_close((uv_handle_t *)&c->kick, on_handle_closed);
    uv_close((uv_handle_t *)&c->deadline_timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->conn_timer, on_handle_closed);
}

static void maybe_free_client(struct client *c) {
    if (!c->finalizing || c->handles_open > 0 || c->conns_alive > 0) return;
    CLIENT__ASSERT(c->n_calls == 0);
    void (*cb)(void *) = c->close_cb;
    void *arg = c->close_arg;
    for (unsigned i = 0; i < c->n_eps; i++) free(c->eps[i].url);
    free(c->eps);
    free(c->user);
    free(c->password);
    SSL_CTX_free(c->tls);
    free(c);
    if (cb != NULL) cb(arg);
}

static void on_kick(uv_idle_t *h) {
    struct client *c = h->data;
    dispatch(c);
    pump(c);
    if (c->conn != NULL) conn_flush(c->conn);
    if (c->ready_head == NULL) {
        uv_idle_stop(&c->kick);
        c->kick_active = false;
        if (c->closing) {
            finalize(c);
            return;
        }
    }
    deadline_rearm(c);
}

static void kick(struct client *c) {
    if (c->kick_active || c->finalizing) return;
    c->kick_active = true;
    uv_idle_start(&c->kick, on_kick);
}

/* ---- public functions ------------------------------------------------------------------- */

/* Everything runs on the loop's thread; a call from another thread would
 * race with everything here, so catch it where it happens. */
static void assert_loop_thread(const struct client *c) {
    uv_thread_t self = uv_thread_self();
    CLIENT__ASSERT(uv_thread_equal(&self, &c->thread));
}

void client_options_init(struct client_options *o) {
    CLIENT__ASSERT(o != NULL);
    memset(o, 0, sizeof(*o));
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (err == NULL || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void client_free_unstarted(struct client *c) {
    if (c->eps != NULL)
        for (unsigned i = 0; i < c->n_eps; i++) free(c->eps[i].url);
    free(c->eps);
    free(c->user);
    free(c->password);
    SSL_CTX_free(c->tls);
    free(c);
}

int client_new(uv_loop_t *loop, const struct client_options *o, struct client **out, char *err,
               size_t errlen) {
    CLIENT__ASSERT(loop != NULL);
    CLIENT__ASSERT(o != NULL && out != NULL);
    *out = NULL;
    if (err != NULL && errlen > 0) err[0] = '\0';
    if (o->n_endpoints == 0 || o->endpoints == NULL) {
        set_err(err, errlen, "no endpoints given");
        return CLIENT_EINVAL;
    }
    if (o->n_endpoints > CLIENT_ENDPOINTS_MAX) {
        set_err(err, errlen, "%zu endpoints given; at most %u are supported", o->n_endpoints,
                CLIENT_ENDPOINTS_MAX);
        return CLIENT_EINVAL;
    }
    if ((o->user == NULL) != (o->password == NULL)) {
        set_err(err, errlen, "user and password go together");
        return CLIENT_EINVAL;
    }
    if ((o->cert == NULL) != (o->key == NULL)) {
        set_err(err, errlen, "a client certificate needs its key and a key its certificate");
        return CLIENT_EINVAL;
    }
    struct client *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        set_err(err, errlen, "out of memory");
        return CLIENT_ENOMEM;
    }
    int rc = CLIENT_ENOMEM;
    c->loop = loop;
    c->thread = uv_thread_self();
    c->dial_timeout_ms = o->dial_timeout_ms ? o->dial_timeout_ms : 2000;
    c->command_timeout_ms = o->command_timeout_ms ? o->command_timeout_ms : 5000;
    c->keepalive_ms = o->keepalive_ms ? o->keepalive_ms : 2000;
    c->keepalive_timeout_ms = o->keepalive_timeout_ms ? o->keepalive_timeout_ms : 3000;
    c->backoff_min_ms = o->backoff_min_ms ? o->backoff_min_ms : 100;
    c->backoff_max_ms = o->backoff_max_ms ? o->backoff_max_ms : 3000;
    if (c->backoff_max_ms < c->backoff_min_ms) c->backoff_max_ms = c->backoff_min_ms;
    c->log_cb = o->log_cb;
    c->log_arg = o->log_arg;
    if (o->user != NULL) {
        c->user = str_dup(o->user);
        c->password = str_dup(o->password);
        if (c->user == NULL || c->password == NULL) goto err_free;
    }
    c->eps = calloc(o->n_endpoints, sizeof(*c->eps));
    if (c->eps == NULL) goto err_free;
    c->n_eps = (unsigned)o->n_endpoints;
    bool any_tls = false;
    for (unsigned i = 0; i < c->n_eps; i++) {
        const char *s = o->endpoints[i];
        if (s == NULL || client__url_parse(s, &c->eps[i].u) != 0) {
            set_err(err, errlen,
                    "endpoint %u (\"%s\"): malformed or unsupported URL; "
                    "use http://HOST:PORT, https://HOST:PORT or HOST:PORT",
                    i + 1, s != NULL ? s : "(null)");
            rc = CLIENT_EURL;
            goto err_free;
        }
        c->eps[i].url = str_dup(s);
        if (c->eps[i].url == NULL) goto err_free;
        any_tls = any_tls || c->eps[i].u.tls;
    }
    if (any_tls || o->cacert != NULL || o->cert != NULL) {
        char why[ERR_BYTES] = "";
        rc = client__tls_ctx_new(o->cacert, o->cert, o->key, &c->tls, why, sizeof(why));
        if (rc != 0) {
            set_err(err, errlen, "%s", why);
            goto err_free;
        }
    }
    client__link_init(&c->waiting);
    client__link_init(&c->unary_dl);
    client__link_init(&c->stream_dl);
    c->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)c ^ 0x9e3779b97f4a7c15ull;
    if (c->rng == 0) c->rng = 1;
    /* Cannot fail once the loop is initialised. */
    uv_idle_init(loop, &c->kick);
    uv_timer_init(loop, &c->deadline_timer);
    uv_timer_init(loop, &c->conn_timer);
    c->kick.data = c;
    c->deadline_timer.data = c;
    c->conn_timer.data = c;
    c->handles_open = 3;
    c->next_ep = 0;
    conn_start(c);
    *out = c;
    return 0;

err_free:
    if (rc == CLIENT_ENOMEM) set_err(err, errlen, "out of memory");
    client_free_unstarted(c);
    return rc;
}

void client_close(struct client *c, void (*close_cb)(void *arg), void *arg) {
    CLIENT__ASSERT(c != NULL);
    CLIENT__ASSERT(!c->closing);
    assert_loop_thread(c);
    c->closing = true;
    c->close_cb = close_cb;
    c->close_arg = arg;
    uv_timer_stop(&c->conn_timer);
    c->timer_mode = TIMER_IDLE;
    uv_timer_stop(&c->deadline_timer);
    while (!client__link_empty(&c->waiting)) {
        struct call *call = link_call(c->waiting.next);
        call_finish(call, CLIENT_GRPC_CANCELLED, "client closed", false, false);
    }
    if (c->conn != NULL) conn_fail(c->conn, "client closed");
    kick(c);
}

static int call_admit(struct client *c) {
    assert_loop_thread(c);
    if (c->closing) return CLIENT_ECLOSED;
    if (c->n_calls >= CLIENT_CALLS_MAX) return CLIENT_EQUEUEFULL;
    return 0;
}

int client_unary(struct client *c, const char *path, const ProtobufCMessage *req,
                 const ProtobufCMessageDescriptor *resp_desc, client_unary_cb cb, void *arg) {
    CLIENT__ASSERT(c != NULL);
    if (path == NULL || path[0] != '/' || req == NULL || resp_desc == NULL || cb == NULL)
        return CLIENT_EINVAL;
    CLIENT__ASSERT(resp_desc->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC);
    int rc = call_admit(c);
    if (rc != 0) return rc;
    struct call *call = call_new(c, CALL_UNARY, path, resp_desc);
    if (call == NULL) return CLIENT_ENOMEM;
    rc = client__grpc_encode(req, 0, &call->req, &call->req_len);
    if (rc != 0) {
        call_free(call);
        return rc;
    }
    call->unary_cb = cb;
    call->arg = arg;
    call->deadline_ms = now_ms(c) + c->command_timeout_ms;
    call->state = CALL_WAITING;
    client__link_push(&c->unary_dl, &call->dl);
    client__link_push(&c->waiting, &call->link);
    deadline_rearm(c);
    kick(c);
    return 0;
}

int client_stream_open(struct client *c, const char *path,
                       const ProtobufCMessageDescriptor *resp_desc,
                       const struct client_stream_cbs *cbs, void *arg, struct client_stream **out) {
    CLIENT__ASSERT(c != NULL);
    CLIENT__ASSERT(out != NULL);
    *out = NULL;
    if (path == NULL || path[0] != '/' || resp_desc == NULL || cbs == NULL || cbs->end_cb == NULL)
        return CLIENT_EINVAL;
    CLIENT__ASSERT(resp_desc->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC);
    int rc = call_admit(c);
    if (rc != 0) return rc;
    struct call *call = call_new(c, CALL_STREAM, path, resp_desc);
    if (call == NULL) return CLIENT_ENOMEM;
    call->cbs = *cbs;
    call->arg = arg;
    call->state = CALL_WAITING;
    client__link_push(&c->waiting, &call->link);
    stream_wait_start(call);
    deadline_rearm(c);
    kick(c);
    *out = (struct client_stream *)call;
    return 0;
}

int client_stream_send(struct client_stream *s, const ProtobufCMessage *msg) {
    CLIENT__ASSERT(s != NULL && msg != NULL);
    struct call *call = &s->call;
    CLIENT__ASSERT(call->kind == CALL_STREAM);
    CLIENT__ASSERT(!call->user_closed);
    struct client *c = call->c;
    assert_loop_thread(c);
    if (c->closing || call->state == CALL_DONE) return CLIENT_ECLOSED;
    if (call->q_bytes >= CLIENT_STREAM_QUEUE_BYTES_MAX) return CLIENT_EQUEUEFULL;
    uint8_t *buf;
    size_t len;
    int rc = client__grpc_encode(msg, sizeof(struct out_msg), &buf, &len);
    if (rc != 0) return rc;
    struct out_msg *m = (struct out_msg *)buf;
    m->next = NULL;
    m->len = len;
    m->off = 0;
    if (call->q_tail != NULL)
        call->q_tail->next = m;
    else
        call->q_head = m;
    call->q_tail = m;
    call->q_bytes += len;
    if (call->state == CALL_ACTIVE) {
        nghttp2_session_resume_data(call->conn->h2, call->stream_id);
        kick(c);
    }
    return 0;
}

void client_stream_close(struct client_stream *s) {
    CLIENT__ASSERT(s != NULL);
    struct call *call = &s->call;
    CLIENT__ASSERT(call->kind == CALL_STREAM);
    CLIENT__ASSERT(!call->user_closed);
    assert_loop_thread(call->c);
    call->user_closed = true;
    if (call->state == CALL_WAITING) client__link_remove(&call->link);
    if (call->state == CALL_ACTIVE) call_detach(call, true);
    client__link_remove(&call->dl);
    call->state = CALL_DONE;
    /* The dispatcher frees it when it holds it (queued or in a callback). */
    if (!call->in_ready && !call->busy) call_free(call);
}

bool client_connected(const struct client *c) {
    CLIENT__ASSERT(c != NULL);
    const struct conn *cn = c->conn;
    return cn != NULL && cn->phase == PH_READY && (cn->auth == AUTH_OFF || cn->auth == AUTH_DONE);
}

const char *client_endpoint(const struct client *c) {
    CLIENT__ASSERT(c != NULL);
    return c->eps[c->cur_ep].url;
}
