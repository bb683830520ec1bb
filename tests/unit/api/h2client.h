/*
 * h2client.h - a small blocking HTTP/2 + gRPC client for tests of api/.
 *
 * Built on nghttp2's client session over a plain TCP socket, so tests can
 * send what real gRPC clients send and also what they never would:
 * malformed frames, wrong content types, compressed flags, more streams
 * than allowed, windows that open only when the test says so. Every wait
 * has a deadline. Header-only; static inline functions.
 */
#ifndef QFS_TESTS_API_H2CLIENT_H
#define QFS_TESTS_API_H2CLIENT_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

#include "api/api_int.h"
#include "tests/unit/api/server_thread.h"

#define H2C_STREAMS_MAX 64

struct h2c_stream {
    int32_t id;
    int http_status;
    char content_type[64];
    int grpc_status; /* -1 until seen */
    char grpc_message[API__GRPC_MESSAGE_ENCODED_MAX];
    uint8_t *data; /* response DATA bytes (gRPC frames) */
    size_t len, cap;
    size_t consumed; /* bytes given back to flow control */
    bool closed;
    uint32_t close_code; /* error code of the stream's end */
    /* Request body, sent by a data provider. */
    uint8_t *body;
    size_t body_len, body_off, body_cap;
    bool body_end; /* END_STREAM after the body */
};

struct h2c {
    int fd;
    nghttp2_session *s;
    struct h2c_stream *streams[H2C_STREAMS_MAX];
    int n_streams;
    bool eof; /* the server closed the socket */
    bool goaway;
    bool manual_window; /* the test gives window back itself */
};

static inline struct h2c_stream *h2c__find(struct h2c *c, int32_t id) {
    for (int i = 0; i < c->n_streams; i++)
        if (c->streams[i]->id == id) return c->streams[i];
    return NULL;
}

static inline ssize_t h2c__body_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                                     uint32_t *flags, nghttp2_data_source *src, void *user) {
    (void)s;
    (void)id;
    (void)user;
    struct h2c_stream *st = src->ptr;
    size_t n = st->body_len - st->body_off;
    if (n > length) n = length;
    if (n) memcpy(buf, st->body + st->body_off, n);
    st->body_off += n;
    if (st->body_off == st->body_len) {
        if (st->body_end)
            *flags |= NGHTTP2_DATA_FLAG_EOF;
        else if (n == 0)
            return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

static inline int h2c__on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                                 size_t nl, const uint8_t *value, size_t vl, uint8_t flags,
                                 void *user) {
    (void)s;
    (void)flags;
    struct h2c_stream *st = h2c__find(user, f->hd.stream_id);
    if (st == NULL) return 0;
    char v[API__GRPC_MESSAGE_ENCODED_MAX];
    size_t n = vl < sizeof(v) - 1 ? vl : sizeof(v) - 1;
    memcpy(v, value, n);
    v[n] = '\0';
    if (nl == 7 && memcmp(name, ":status", 7) == 0) st->http_status = atoi(v);
    if (nl == 12 && memcmp(name, "content-type", 12) == 0 && n < sizeof(st->content_type))
        memcpy(st->content_type, v, n + 1);
    if (nl == 11 && memcmp(name, "grpc-status", 11) == 0) st->grpc_status = atoi(v);
    if (nl == 12 && memcmp(name, "grpc-message", 12) == 0)
        api__grpc_percent_decode(v, n, st->grpc_message);
    return 0;
}

static inline int h2c__on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                               size_t len, void *user) {
    (void)s;
    (void)flags;
    struct h2c_stream *st = h2c__find(user, id);
    if (st == NULL) return 0;
    if (st->len + len > st->cap) {
        size_t cap = st->cap ? st->cap : 4096;
        while (cap < st->len + len) cap *= 2;
        st->data = realloc(st->data, cap);
        st->cap = cap;
    }
    memcpy(st->data + st->len, data, len);
    st->len += len;
    return 0;
}

static inline int h2c__on_close(nghttp2_session *s, int32_t id, uint32_t code, void *user) {
    (void)s;
    struct h2c_stream *st = h2c__find(user, id);
    if (st == NULL) return 0;
    st->closed = true;
    st->close_code = code;
    return 0;
}

static inline int h2c__on_frame(nghttp2_session *s, const nghttp2_frame *f, void *user) {
    (void)s;
    struct h2c *c = user;
    if (f->hd.type == NGHTTP2_GOAWAY) c->goaway = true;
    return 0;
}

/* Connects to 127.0.0.1:port. initial_window 0: nghttp2's default. */
static inline int h2c_connect(struct h2c *c, int port, bool manual_window,
                              uint32_t initial_window) {
    memset(c, 0, sizeof(*c));
    c->manual_window = manual_window;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(c->fd);
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    nghttp2_session_callbacks *cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_on_header_callback(cbs, h2c__on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, h2c__on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, h2c__on_close);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, h2c__on_frame);
    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, manual_window ? 1 : 0);
    nghttp2_session_client_new2(&c->s, cbs, c, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_settings_entry iv[1] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, initial_window}};
    nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, iv, initial_window ? 1 : 0);
    return 0;
}

/* Sends what nghttp2 has queued; returns -1 if the socket failed. */
static inline int h2c_flush(struct h2c *c) {
    for (;;) {
        const uint8_t *p;
        ssize_t n = nghttp2_session_mem_send(c->s, &p);
        if (n < 0) return -1;
        if (n == 0) return 0;
        while (n > 0) {
            ssize_t w = send(c->fd, p, (size_t)n, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR) continue;
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                struct pollfd pf = {.fd = c->fd, .events = POLLOUT};
                poll(&pf, 1, 1000);
                continue;
            }
            if (w <= 0) return -1;
            p += w;
            n -= w;
        }
    }
}

/* One round: flush, wait up to timeout_ms for input, feed it. */
static inline int h2c_pump(struct h2c *c, int timeout_ms) {
    if (h2c_flush(c) != 0) return -1;
    if (c->eof) return -1;
    struct pollfd pf = {.fd = c->fd, .events = POLLIN};
    int r = poll(&pf, 1, timeout_ms);
    if (r <= 0) return 0;
    uint8_t buf[65536];
    ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
    if (n <= 0) {
        c->eof = true;
        return -1;
    }
    if (nghttp2_session_mem_recv(c->s, buf, (size_t)n) < 0) return -1;
    return h2c_flush(c);
}

/* Opens a stream: POST path with content-type ct (NULL: application/grpc)
 * and `body` (copied); end: END_STREAM after it. Returns the stream id. */
static inline int32_t h2c_open(struct h2c *c, struct h2c_stream *st, const char *path,
                               const char *ct, const uint8_t *body, size_t len, bool end) {
    memset(st, 0, sizeof(*st));
    st->grpc_status = -1;
    st->body_cap = len ? len : 1;
    st->body = malloc(st->body_cap);
    if (len) memcpy(st->body, body, len);
    st->body_len = len;
    st->body_end = end;
    if (ct == NULL) ct = "application/grpc";
    nghttp2_nv nva[] = {
        {(uint8_t *)":method", (uint8_t *)"POST", 7, 4, 0},
        {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0},
        {(uint8_t *)":authority", (uint8_t *)"127.0.0.1", 10, 9, 0},
        {(uint8_t *)":path", (uint8_t *)path, 5, strlen(path), 0},
        {(uint8_t *)"content-type", (uint8_t *)ct, 12, strlen(ct), 0},
        {(uint8_t *)"te", (uint8_t *)"trailers", 2, 8, 0},
    };
    nghttp2_data_provider prov = {.source.ptr = st, .read_callback = h2c__body_read};
    st->id = nghttp2_submit_request(c->s, NULL, nva, 6, &prov, NULL);
    if (st->id > 0 && c->n_streams < H2C_STREAMS_MAX) c->streams[c->n_streams++] = st;
    return st->id;
}

/* Appends request bytes to an open stream (end: then END_STREAM). */
static inline void h2c_send(struct h2c *c, struct h2c_stream *st, const uint8_t *p, size_t n,
                            bool end) {
    if (st->body_len + n > st->body_cap) {
        while (st->body_cap < st->body_len + n) st->body_cap *= 2;
        st->body = realloc(st->body, st->body_cap);
    }
    if (n) memcpy(st->body + st->body_len, p, n);
    st->body_len += n;
    st->body_end = end;
    nghttp2_session_resume_data(c->s, st->id);
}

/* Gives `n` received bytes of st back to flow control (manual windows). */
static inline void h2c_consume(struct h2c *c, struct h2c_stream *st, size_t n) {
    nghttp2_session_consume(c->s, st->id, n);
    st->consumed += n;
}

/* Pumps until st is closed or the deadline passes; returns 0 if closed. */
static inline int h2c_wait_closed(struct h2c *c, struct h2c_stream *st, int timeout_ms) {
    long long end = now_ms() + timeout_ms;
    while (!st->closed && now_ms() < end) {
        if (h2c_pump(c, 50) != 0 && !st->closed) return -1;
    }
    return st->closed ? 0 : -1;
}

/* Pumps until st has received at least `len` DATA bytes. */
static inline int h2c_wait_data(struct h2c *c, struct h2c_stream *st, size_t len, int timeout_ms) {
    long long end = now_ms() + timeout_ms;
    while (st->len < len && now_ms() < end) {
        if (h2c_pump(c, 50) != 0) break;
    }
    return st->len >= len ? 0 : -1;
}

static inline void h2c_stream_free(struct h2c_stream *st) {
    free(st->data);
    free(st->body);
    st->data = st->body = NULL;
}

static inline void h2c_close(struct h2c *c) {
    if (c->s) nghttp2_session_del(c->s);
    c->s = NULL;
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

/* Frames protobuf message m as a gRPC message (flag 0). Caller frees. */
static inline uint8_t *grpc_frame_msg(const ProtobufCMessage *m, size_t *len) {
    uint8_t *buf;
    if (api__grpc_encode(m, SIZE_MAX, 0, &buf, len) != 0) return NULL;
    return buf;
}

/* The i-th gRPC message of a response body: returns its bytes and length,
 * or NULL when there are fewer messages or the framing is wrong. */
static inline const uint8_t *grpc_nth_msg(const uint8_t *p, size_t len, int i, size_t *out_len) {
    size_t off = 0;
    for (int k = 0;; k++) {
        if (len - off < 5 || p[off] != 0) return NULL;
        size_t n = (size_t)p[off + 1] << 24 | (size_t)p[off + 2] << 16 | (size_t)p[off + 3] << 8 |
                   p[off + 4];
        if (len - off - 5 < n) return NULL;
        if (k == i) {
            *out_len = n;
            return p + off + 5;
        }
        off += 5 + n;
    }
}

#endif /* QFS_TESTS_API_H2CLIENT_H */
