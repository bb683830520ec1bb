/*
 * conn.c - one client connection: TLS, protocol detection, HTTP/2
 * (nghttp2), gRPC calls.
 *
 * A connection serves HTTP/2 or HTTP/1.1, decided once: under TLS by ALPN
 * ("h2" or "http/1.1"), otherwise by its first bytes (the HTTP/2 client
 * preface, with prior knowledge, or anything else: HTTP/1.1, which
 * http1.c serves). Until then at most API__H2_PREFACE_BYTES are held.
 *
 * Bytes flow  socket -> [TLS via memory BIOs] -> nghttp2_session_mem_recv()
 * -> callbacks below -> gRPC reader -> protobuf -> struct api_backend; and
 * back  api_reply()/api_stream_send() -> per-call queue of framed messages
 * -> nghttp2 data provider (deferred while the queue is empty, resumed when
 * the backend produces) -> nghttp2_session_mem_send() -> [TLS] -> uv_write.
 *
 * Ownership of a call (struct api_call) is shared by two holders, and the
 * call is freed when neither holds it and no backend entry for it is
 * running (`busy`):
 *   transport  from the request HEADERS until nghttp2 closes the stream or
 *              the connection goes (then the call is detached: conn = NULL);
 *   backend    from the dispatch to the backend until api_reply(),
 *              api_reply_error() or api_stream_close().
 * Teardown of a connection (detaching calls, telling the backend, freeing
 * nghttp2) happens only in the libuv close callback, never inside nghttp2
 * callbacks, so a backend that answers or even closes the server from
 * within an entry cannot pull memory from under the code that called it.
 *
 * Back-pressure: frames are pulled from nghttp2 only while less than
 * API__CONN_WRITE_HIGH_BYTES wait in libuv's write queue, and the socket is
 * not read while that much waits, so a client that does not read cannot
 * make the server buffer without bound. HTTP/2 flow control toward the
 * client is nghttp2's: DATA leaves only inside the client's windows, and a
 * stream's queue is bounded by api_options.stream_queue_bytes_max.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "api/api_int.h"

static void call_finish(struct api_call *call, int code, const char *message);
static void conn_read_start(struct api__conn *c);

/* ---- call state ------------------------------------------------------------ */

static struct api_stream *as_stream(struct api_call *call) {
    return (struct api_stream *)call;
}

static bool call_gone(const struct api_call *call) {
    return call->conn == NULL || call->conn->closing || !call->transport;
}

bool api__call_gone(const struct api_call *call) {
    return call_gone(call);
}

static void queue_free(struct api_call *call) {
    struct api__out_msg *m = call->q_head;
    while (m != NULL) {
        struct api__out_msg *next = m->next;
        free(m);
        m = next;
    }
    call->q_head = call->q_tail = NULL;
    call->q_bytes = 0;
}

static void peer_cn_release(struct api__peer_cn *p) {
    if (p == NULL) return;
    API__ASSERT(p->refs > 0);
    if (--p->refs == 0) free(p);
}

void api__call_maybe_free(struct api_call *call) {
    if (call->transport || call->backend || call->busy > 0) return;
    API__ASSERT(call->conn == NULL);
    peer_cn_release(call->peer_cn);
    queue_free(call);
    api__grpc_reader_free(&call->rd);
    if (call->req != NULL) protobuf_c_message_free_unpacked(call->req, NULL);
    free(call->path);
    free(call->message);
    free(call);
}

/* Tells the backend a stream is over, once. The caller keeps the call
 * alive across this (busy) and has made call_gone() true or the call
 * finishing, so the backend's api_stream_close() only releases its hold. */
static void call_tell_cancel(struct api_call *call, struct api_server *s) {
    if (call->m == NULL || call->m->kind == API__UNARY) return;
    if (!call->backend || call->cancel_told) return;
    call->cancel_told = true;
    call->busy++;
    api__dispatch_stream_end(&s->be, call->m, as_stream(call), API_STREAM_CANCELLED);
    call->busy--;
}

static void conn_recv_account(struct api__conn *c, size_t before, size_t after) {
    c->recv_buffered -= before;
    c->recv_buffered += after;
}

/* Removes the call from its connection (the HTTP/2 stream is gone). */
static void call_unlink(struct api_call *call) {
    struct api__conn *c = call->conn;
    API__ASSERT(c != NULL);
    if (call->prev != NULL)
        call->prev->next = call->next;
    else
        c->calls = call->next;
    if (call->next != NULL) call->next->prev = call->prev;
    call->prev = call->next = NULL;
    conn_recv_account(c, api__grpc_reader_buffered(&call->rd), 0);
    api__grpc_reader_free(&call->rd);
    if (call->drain_due) {
        call->drain_due = false;
        c->drain_due--;
    }
}

void api__conn_link_call(struct api__conn *c, struct api_call *call) {
    API__ASSERT(call->peer_cn == NULL);
    call->conn = c;
    call->transport = true;
    call->peer_cn = c->peer_cn;
    if (c->peer_cn != NULL) c->peer_cn->refs++;
    call->next = c->calls;
    if (c->calls != NULL) c->calls->prev = call;
    c->calls = call;
}

void api__conn_unlink_call(struct api_call *call) {
    call_unlink(call);
    call->transport = false;
    call->conn = NULL;
}

/* ---- output ------------------------------------------------------------------ */

static void conn_mark_dirty(struct api__conn *c) {
    if (c->dirty || c->closing) return;
    c->dirty = true;
    c->dirty_next = c->server->dirty;
    c->server->dirty = c;
    api__server_mark_dirty(c->server, c);
}

static void conn_unmark_dirty(struct api__conn *c) {
    if (!c->dirty) return;
    struct api__conn **pp = &c->server->dirty;
    while (*pp != c) pp = &(*pp)->dirty_next;
    *pp = c->dirty_next;
    c->dirty = false;
    c->dirty_next = NULL;
}

static void on_write(uv_write_t *req, int status) {
    struct api__out_chunk *ch = (struct api__out_chunk *)req;
    struct api__conn *c = ch->conn;
    API__ASSERT(c->write_bytes >= ch->len);
    c->write_bytes -= ch->len;
    free(ch);
    if (c->closing) return;
    if (status < 0) {
        api__conn_close(c);
        return;
    }
    /* An HTTP/1.1 stream waits for the socket itself, not for a queue. */
    struct api_call *a = c->proto == API__PROTO_H1 ? c->h1.active : NULL;
    if (a != NULL && a->drain_wanted && c->write_bytes <= c->server->stream_queue_max / 2) {
        a->drain_wanted = false;
        if (!a->drain_due) {
            a->drain_due = true;
            c->drain_due++;
        }
    }
    /* Reading stopped while output piled up (on_read); flush resumes it. */
    api__conn_flush(c);
}

/* Hands the filled chunk to libuv. */
static int out_submit(struct api__conn *c) {
    struct api__out_chunk *ch = c->out;
    if (ch == NULL || ch->len == 0) return 0;
    c->out = NULL;
    if (c->detached) {
        free(ch);
        return 0;
    }
    uv_buf_t buf = uv_buf_init((char *)ch->data, (unsigned)ch->len);
    ch->conn = c;
    c->write_bytes += ch->len;
    int rc = uv_write(&ch->req, (uv_stream_t *)&c->tcp, &buf, 1, on_write);
    if (rc != 0) {
        c->write_bytes -= ch->len;
        free(ch);
        return rc;
    }
    return 0;
}

/* Detached connections keep their output, up to a bound, for the fuzzer. */
#define DETACHED_OUT_MAX (4u * 1024u * 1024u)

static int out_append_detached(struct api__conn *c, const uint8_t *p, size_t n) {
    if (n == 0) return 0; /* p may be NULL then (an empty body) */
    if (n > DETACHED_OUT_MAX - c->det_len) return 0;
    if (c->det_len + n > c->det_cap) {
        size_t cap = c->det_cap ? c->det_cap : 4096;
        while (cap < c->det_len + n) cap *= 2;
        uint8_t *q = qfs_realloc(c->det_out, cap);
        if (q == NULL) return API_ENOMEM;
        c->det_out = q;
        c->det_cap = cap;
    }
    memcpy(c->det_out + c->det_len, p, n);
    c->det_len += n;
    return 0;
}

/* Appends bytes destined for the socket. */
static int out_append(struct api__conn *c, const uint8_t *p, size_t n) {
    if (c->detached) return out_append_detached(c, p, n);
    while (n > 0) {
        if (c->out == NULL) {
            c->out = qfs_malloc(sizeof(*c->out));
            if (c->out == NULL) return API_ENOMEM;
            c->out->len = 0;
        }
        size_t room = sizeof(c->out->data) - c->out->len;
        size_t take = n < room ? n : room;
        memcpy(c->out->data + c->out->len, p, take);
        c->out->len += take;
        p += take;
        n -= take;
        if (c->out->len == sizeof(c->out->data)) {
            int rc = out_submit(c);
            if (rc != 0) return rc;
        }
    }
    return 0;
}

/* Moves TLS records produced by OpenSSL to the output. */
static int tls_drain(struct api__conn *c) {
    uint8_t buf[4096];
    for (;;) {
        int n = BIO_read(c->wbio, buf, (int)sizeof(buf));
        if (n <= 0) return 0;
        int rc = out_append(c, buf, (size_t)n);
        if (rc != 0) return rc;
    }
}

static int out_plain(struct api__conn *c, const uint8_t *p, size_t n);

int api__conn_write(struct api__conn *c, const void *p, size_t n) {
    if (c->closing) return API_ECLOSED;
    conn_mark_dirty(c);
    int rc = out_plain(c, p, n);
    /* Bytes lost in the middle of the output (out of memory): what would
     * follow is garbage to the client - a body without its head - so the
     * connection ends here, as api__conn_flush ends an HTTP/2 one. */
    if (rc != 0) api__conn_close(c);
    return rc;
}

static int out_plain(struct api__conn *c, const uint8_t *p, size_t n) {
    if (c->ssl == NULL) return out_append(c, p, n);
    while (n > 0) {
        int chunk = n > 65536 ? 65536 : (int)n;
        /* The write BIO is a memory BIO, so SSL_write cannot block. */
        int w = SSL_write(c->ssl, p, chunk);
        if (w <= 0) return API_ETLS;
        p += w;
        n -= (size_t)w;
        int rc = tls_drain(c);
        if (rc != 0) return rc;
    }
    return 0;
}

/* Runs stream_drained for calls whose queue drained. Outside nghttp2
 * callbacks, because the backend will queue more on the same stream. */
static void conn_tell_drained(struct api__conn *c) {
    while (c->drain_due > 0 && !c->closing) {
        struct api_call *call = c->calls;
        while (call != NULL && !call->drain_due) call = call->next;
        API__ASSERT(call != NULL);
        call->drain_due = false;
        c->drain_due--;
        if (call->backend && c->server->be.stream_drained != NULL) {
            call->busy++;
            c->server->be.stream_drained(c->server->be.ctx, as_stream(call));
            call->busy--;
            api__call_maybe_free(call);
        }
    }
}

void api__conn_flush(struct api__conn *c) {
    conn_unmark_dirty(c);
    if (c->closing || c->in_recv) return;
    int rc = 0;
    if (c->proto == API__PROTO_H1) {
        api__h1_pump(c);
        if (c->closing) return;
    }
    if (c->proto == API__PROTO_H2 && (c->ssl == NULL || c->tls_ready)) {
        while (c->write_bytes < API__CONN_WRITE_HIGH_BYTES) {
            const uint8_t *p;
            ssize_t n = nghttp2_session_mem_send(c->h2, &p);
            if (n < 0) {
                api__conn_close(c);
                return;
            }
            if (n == 0) break;
            rc = out_plain(c, p, (size_t)n);
            if (rc != 0) break;
        }
    }
    if (rc == 0 && c->ssl != NULL) rc = tls_drain(c);
    if (rc == 0) rc = out_submit(c);
    if (rc != 0) {
        api__conn_close(c);
        return;
    }
    conn_tell_drained(c);
    if (c->closing) return;
    if (c->proto == API__PROTO_H2 && !nghttp2_session_want_read(c->h2) &&
        !nghttp2_session_want_write(c->h2) && c->write_bytes == 0) {
        api__conn_close(c);
        return;
    }
    if (c->proto == API__PROTO_H1 && c->h1.close_after && c->h1.active == NULL &&
        c->write_bytes == 0) {
        api__conn_close(c);
        return;
    }
    if (!c->reading && c->write_bytes < API__CONN_WRITE_HIGH_BYTES / 2 &&
        !(c->proto == API__PROTO_H1 && api__h1_paused(c)))
        conn_read_start(c);
}

/* ---- responses ---------------------------------------------------------- */

static ssize_t data_read(nghttp2_session *h2, int32_t stream_id, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *user) {
    struct api__conn *c = user;
    struct api_call *call = source->ptr;
    size_t n = 0;
    while (n < length && call->q_head != NULL) {
        struct api__out_msg *m = call->q_head;
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
    API__ASSERT(call->q_bytes >= n);
    call->q_bytes -= n;
    if (call->drain_wanted && call->q_bytes <= c->server->stream_queue_max / 2) {
        call->drain_wanted = false;
        if (!call->drain_due) {
            call->drain_due = true;
            c->drain_due++;
        }
    }
    if (call->q_head == NULL) {
        if (call->finishing) {
            char status[4];
            nghttp2_nv nva[2];
            size_t nn = 0;
            size_t slen = api__grpc_status_format(call->code, status);
            nva[nn++] = (nghttp2_nv){(uint8_t *)"grpc-status", (uint8_t *)status, 11, slen,
                                     NGHTTP2_NV_FLAG_NONE};
            if (call->message != NULL)
                nva[nn++] = (nghttp2_nv){(uint8_t *)"grpc-message", (uint8_t *)call->message, 12,
                                         strlen(call->message), NGHTTP2_NV_FLAG_NONE};
            *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
            if (nghttp2_submit_trailer(h2, stream_id, nva, nn) != 0)
                return NGHTTP2_ERR_CALLBACK_FAILURE;
        } else if (n == 0) {
            return NGHTTP2_ERR_DEFERRED;
        }
    }
    return (ssize_t)n;
}

static int call_send_headers(struct api_call *call) {
    if (call->headers_sent) return 0;
    nghttp2_nv nva[] = {
        {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, NGHTTP2_NV_FLAG_NONE},
    };
    nghttp2_data_provider prov = {.source.ptr = call, .read_callback = data_read};
    if (nghttp2_submit_response(call->conn->h2, call->stream_id, nva, 2, &prov) != 0)
        return API_ENOMEM;
    call->headers_sent = true;
    return 0;
}

/* Queues an encoded message (from api__grpc_encode with out_msg headroom). */
static int call_enqueue(struct api_call *call, uint8_t *buf, size_t len) {
    struct api__out_msg *m = (struct api__out_msg *)buf;
    m->next = NULL;
    m->len = len;
    m->off = 0;
    int rc = call_send_headers(call);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    if (call->q_tail != NULL)
        call->q_tail->next = m;
    else
        call->q_head = m;
    call->q_tail = m;
    call->q_bytes += len;
    nghttp2_session_resume_data(call->conn->h2, call->stream_id);
    conn_mark_dirty(call->conn);
    return 0;
}

/*
 * Decides the call's status: trailers follow whatever is queued, or, when
 * nothing was sent yet, a single HEADERS frame carries everything
 * ("Trailers-Only"). Precondition: the client can still be reached.
 */
static void call_finish(struct api_call *call, int code, const char *message) {
    API__ASSERT(!call_gone(call));
    API__ASSERT(!call->finishing);
    struct api__conn *c = call->conn;
    call->finishing = true;
    call->code = code;
    if (call->m != NULL) api__metrics_handled(c->server, call->m, code);
    if (message != NULL && message[0] != '\0') {
        char enc[API__GRPC_MESSAGE_ENCODED_MAX];
        size_t n = api__grpc_percent_encode(message, strlen(message), enc);
        call->message = qfs_malloc(n + 1);
        /* Without memory the status still goes out, without its text. */
        if (call->message != NULL) memcpy(call->message, enc, n + 1);
    }
    if (call->headers_sent) {
        nghttp2_session_resume_data(c->h2, call->stream_id);
    } else {
        char status[4], http[4];
        size_t slen = api__grpc_status_format(code, status);
        int hs = call->http_status ? call->http_status : 200;
        size_t hlen = api__grpc_status_format(hs, http);
        nghttp2_nv nva[4] = {
            {(uint8_t *)":status", (uint8_t *)http, 7, hlen, NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16,
             NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)"grpc-status", (uint8_t *)status, 11, slen, NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)"grpc-message", (uint8_t *)call->message, 12,
             call->message ? strlen(call->message) : 0, NGHTTP2_NV_FLAG_NONE},
        };
        call->headers_sent = true;
        if (nghttp2_submit_response(c->h2, call->stream_id, nva, call->message ? 4 : 3, NULL) != 0)
            nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, call->stream_id,
                                      NGHTTP2_INTERNAL_ERROR);
    }
    conn_mark_dirty(c);
}

/* The transport ends a call with an error of its own (bad input, limits):
 * the client gets the status, a stream's backend is told it is over. */
static void call_fail(struct api_call *call, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void call_fail(struct api_call *call, int code, const char *fmt, ...) {
    if (call_gone(call) || call->finishing) return;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    call_finish(call, code, msg);
    call_tell_cancel(call, call->conn->server);
}

/* ---- public reply functions ------------------------------------------------ */

/* Replies come from the loop thread only; a reply from another thread would
 * race with everything here, so catch it where it happens. */
static void assert_loop_thread(const struct api_call *call) {
    if (call->conn == NULL) return;
    uv_thread_t self = uv_thread_self();
    API__ASSERT(uv_thread_equal(&self, &call->conn->server->thread));
}

static int call_answer(struct api_call *call, const ProtobufCMessage *msg, int code,
                       const char *message) {
    int rc = 0;
    if (call_gone(call) || call->finishing) return API_ECLOSED;
    if (msg != NULL) {
        uint8_t *buf;
        size_t len;
        rc = api__grpc_encode(msg, call->conn->server->max_send_bytes, sizeof(struct api__out_msg),
                              &buf, &len);
        if (rc == 0) rc = call_enqueue(call, buf, len);
        if (rc == API_ETOOBIG) {
            char why[128];
            snprintf(why, sizeof(why), "grpc: trying to send message larger than max (%zu vs. %zu)",
                     protobuf_c_message_get_packed_size(msg), call->conn->server->max_send_bytes);
            call_finish(call, API_GRPC_RESOURCE_EXHAUSTED, why);
            return rc;
        }
        if (rc != 0) {
            call_finish(call, API_GRPC_INTERNAL, "etcdserver: out of memory");
            return rc;
        }
    }
    call_finish(call, code, message);
    return 0;
}

int api_reply(struct api_call *call, const ProtobufCMessage *resp) {
    API__ASSERT(call != NULL && resp != NULL);
    API__ASSERT(call->backend);
    API__ASSERT(call->m->kind == API__UNARY);
    API__ASSERT(resp->descriptor == call->m->resp);
    assert_loop_thread(call);
    call->backend = false;
    int rc = call->kind == API__CALL_GRPC ? call_answer(call, resp, API_GRPC_OK, NULL)
                                          : api__h1_answer(call, resp, API_GRPC_OK, NULL);
    api__call_maybe_free(call);
    return rc;
}

int api_reply_error(struct api_call *call, enum api_grpc_code code, const char *message) {
    API__ASSERT(call != NULL);
    API__ASSERT(call->backend);
    API__ASSERT(call->m->kind == API__UNARY);
    API__ASSERT(code != API_GRPC_OK);
    API__ASSERT((int)code > 0 && (int)code <= API_GRPC_UNAUTHENTICATED);
    assert_loop_thread(call);
    call->backend = false;
    int rc = call->kind == API__CALL_GRPC ? call_answer(call, NULL, (int)code, message)
                                          : api__h1_answer(call, NULL, (int)code, message);
    api__call_maybe_free(call);
    return rc;
}

bool api_call_alive(const struct api_call *call) {
    API__ASSERT(call != NULL);
    return !call_gone(call) && !call->finishing;
}

const char *api_call_peer_cn(const struct api_call *call) {
    API__ASSERT(call != NULL);
    return call->peer_cn != NULL ? call->peer_cn->cn : NULL;
}

const char *api_stream_peer_cn(const struct api_stream *stream) {
    API__ASSERT(stream != NULL);
    return api_call_peer_cn(&stream->c);
}

int api_stream_send(struct api_stream *stream, const ProtobufCMessage *msg) {
    API__ASSERT(stream != NULL && msg != NULL);
    struct api_call *call = &stream->c;
    API__ASSERT(call->backend);
    API__ASSERT(call->m->kind != API__UNARY);
    API__ASSERT(msg->descriptor == call->m->resp);
    assert_loop_thread(call);
    if (call_gone(call) || call->finishing) return API_ECLOSED;
    if (call->kind != API__CALL_GRPC) return api__h1_stream_send(call, msg);
    struct api_server *s = call->conn->server;
    if (call->q_bytes >= s->stream_queue_max) {
        call->drain_wanted = true;
        return API_EQUEUEFULL;
    }
    uint8_t *buf;
    size_t len;
    int rc = api__grpc_encode(msg, s->max_send_bytes, sizeof(struct api__out_msg), &buf, &len);
    if (rc != 0) return rc;
    return call_enqueue(call, buf, len);
}

int api_stream_close(struct api_stream *stream, enum api_grpc_code code, const char *message) {
    API__ASSERT(stream != NULL);
    struct api_call *call = &stream->c;
    API__ASSERT(call->backend);
    API__ASSERT(call->m->kind != API__UNARY);
    API__ASSERT((int)code >= 0 && (int)code <= API_GRPC_UNAUTHENTICATED);
    assert_loop_thread(call);
    call->backend = false;
    int rc = call->kind == API__CALL_GRPC ? call_answer(call, NULL, (int)code, message)
                                          : api__h1_answer(call, NULL, (int)code, message);
    api__call_maybe_free(call);
    return rc;
}

void api_stream_set_data(struct api_stream *stream, void *data) {
    API__ASSERT(stream != NULL);
    stream->c.user = data;
}

void *api_stream_data(const struct api_stream *stream) {
    API__ASSERT(stream != NULL);
    return stream->c.user;
}

size_t api_stream_queued_bytes(const struct api_stream *stream) {
    API__ASSERT(stream != NULL);
    return stream->c.q_bytes;
}

/* ---- requests -------------------------------------------------------------- */

static int on_message(void *arg, const uint8_t *data, size_t len) {
    struct api_call *call = arg;
    struct api__conn *c = call->conn;
    const struct api__method *m = call->m;
    const struct api_backend *be = &c->server->be;
    if (m->kind != API__BIDI_STREAM && call->dispatched) {
        call_fail(call, API_GRPC_INTERNAL,
                  "grpc: more than one request message for a non-client-streaming call");
        return 1;
    }
    if (m->kind == API__BIDI_STREAM && !call->backend) return 0; /* backend closed it */
    int err;
    ProtobufCMessage *msg = api__proto_unpack_err(m->req, data, len, &err);
    if (msg == NULL && err == API_ENOMEM) {
        call_fail(call, API_GRPC_RESOURCE_EXHAUSTED, "grpc: out of memory unmarshalling %s",
                  m->req->name);
        return 1;
    }
    if (msg == NULL) {
        call_fail(call, API_GRPC_INTERNAL, "grpc: error unmarshalling request: malformed %s",
                  m->req->name);
        return 1;
    }
    call->busy++;
    switch (m->kind) {
    case API__UNARY:
        call->dispatched = true;
        call->backend = true;
        call->req = msg;
        api__dispatch_unary(be, m, call, msg);
        break;
    case API__SERVER_STREAM:
        call->dispatched = true;
        call->backend = true;
        api__dispatch_stream_open(be, m, as_stream(call), msg);
        protobuf_c_message_free_unpacked(msg, NULL);
        break;
    case API__BIDI_STREAM:
        api__dispatch_stream_request(be, m, as_stream(call), msg);
        protobuf_c_message_free_unpacked(msg, NULL);
        break;
    }
    call->busy--;
    /* The call is still held by the transport, so not freed here. */
    return c->closing ? 1 : 0;
}

/* Checks the request headers and starts the call. */
static void call_start(struct api_call *call) {
    struct api__conn *c = call->conn;
    struct api_server *s = c->server;
    char msg[320];
    if (call->header_bytes > API__HEADER_LIST_BYTES_MAX) {
        call_fail(call, API_GRPC_RESOURCE_EXHAUSTED, "header list larger than %u bytes",
                  API__HEADER_LIST_BYTES_MAX);
        return;
    }
    if (!call->is_post) {
        call->http_status = 405;
        call_fail(call, API_GRPC_INTERNAL, "gRPC requires method POST");
        return;
    }
    if (!call->grpc_content_type) {
        call->http_status = 415;
        call_fail(call, API_GRPC_INTERNAL, "invalid gRPC request content-type");
        return;
    }
    if (call->m == NULL) {
        api__method_unknown_message(call->path ? call->path : "", call->path_len, msg, sizeof(msg));
        call_fail(call, API_GRPC_UNIMPLEMENTED, "%s", msg);
        return;
    }
    free(call->path);
    call->path = NULL;
    if (!api__method_routed(&s->be, call->m)) {
        call_fail(call, API_GRPC_UNIMPLEMENTED, "method %s is not implemented", call->m->path + 1);
        return;
    }
    api__grpc_reader_init(&call->rd, s->max_recv_bytes);
    api__metrics_started(s, call->m);
    if (call->m->kind == API__BIDI_STREAM) {
        call->backend = true;
        call->busy++;
        api__dispatch_stream_open(&s->be, call->m, as_stream(call), NULL);
        call->busy--;
    }
}

/* The client sent END_STREAM. */
static void call_half_closed(struct api_call *call) {
    if (call_gone(call) || call->finishing || call->m == NULL) return;
    if (api__grpc_reader_pending(&call->rd) > 0) {
        call_fail(call, API_GRPC_INTERNAL, "grpc: request stream ended inside a message");
        return;
    }
    if (call->m->kind != API__BIDI_STREAM) {
        if (!call->dispatched)
            call_fail(call, API_GRPC_INTERNAL, "grpc: the client sent no request message");
        return;
    }
    if (call->backend && !call->half_close_told) {
        call->half_close_told = true;
        call->busy++;
        api__dispatch_stream_end(&call->conn->server->be, call->m, as_stream(call),
                                 API_STREAM_HALF_CLOSED);
        call->busy--;
    }
}

/* ---- nghttp2 callbacks ------------------------------------------------------ */

static struct api_call *stream_call(nghttp2_session *h2, int32_t stream_id) {
    return nghttp2_session_get_stream_user_data(h2, stream_id);
}

static int on_begin_headers(nghttp2_session *h2, const nghttp2_frame *frame, void *user) {
    struct api__conn *c = user;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    if (c->closing) return NGHTTP2_ERR_CALLBACK_FAILURE;
    struct api_stream *st = qfs_calloc(1, sizeof(*st));
    if (st == NULL) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    struct api_call *call = &st->c;
    call->stream_id = frame->hd.stream_id;
    api__conn_link_call(c, call);
    nghttp2_session_set_stream_user_data(h2, frame->hd.stream_id, call);
    return 0;
}

static bool eq(const uint8_t *a, size_t alen, const char *b) {
    size_t blen = strlen(b);
    return alen == blen && memcmp(a, b, blen) == 0;
}

static int on_header(nghttp2_session *h2, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user) {
    (void)flags;
    (void)user;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    struct api_call *call = stream_call(h2, frame->hd.stream_id);
    if (call == NULL) return 0;
    /* RFC 7541 section 4.1 size accounting: 32 bytes overhead per field. */
    call->header_bytes += namelen + valuelen + 32;
    if (call->header_bytes > API__HEADER_LIST_BYTES_MAX) return 0;
    if (eq(name, namelen, ":path")) {
        call->m = api__method_find((const char *)value, valuelen);
        if (call->m == NULL && call->path == NULL) {
            call->path = qfs_malloc(valuelen + 1);
            if (call->path != NULL) {
                memcpy(call->path, value, valuelen);
                call->path[valuelen] = '\0';
                call->path_len = valuelen;
            }
        }
    } else if (eq(name, namelen, ":method")) {
        call->is_post = eq(value, valuelen, "POST");
    } else if (eq(name, namelen, "content-type")) {
        /* "application/grpc", optionally followed by "+proto" or ";...". */
        static const char ct[] = "application/grpc";
        size_t n = sizeof(ct) - 1;
        call->grpc_content_type = valuelen >= n && memcmp(value, ct, n) == 0 &&
                                  (valuelen == n || value[n] == '+' || value[n] == ';');
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *frame, void *user) {
    struct api__conn *c = user;
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
    struct api_call *call = stream_call(h2, frame->hd.stream_id);
    if (call == NULL) return 0;
    call->busy++;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST)
        call_start(call);
    if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) && !c->closing) call_half_closed(call);
    call->busy--;
    return c->closing ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

static int on_data_chunk(nghttp2_session *h2, uint8_t flags, int32_t stream_id, const uint8_t *data,
                         size_t len, void *user) {
    (void)flags;
    struct api__conn *c = user;
    struct api_call *call = stream_call(h2, stream_id);
    if (call == NULL || call->m == NULL || call->finishing || call_gone(call)) return 0;
    size_t before = api__grpc_reader_buffered(&call->rd);
    if (c->recv_buffered >= API__CONN_RECV_BUFFER_BYTES_MAX) {
        call_fail(call, API_GRPC_RESOURCE_EXHAUSTED,
                  "grpc: connection holds more than %u bytes of partial requests",
                  API__CONN_RECV_BUFFER_BYTES_MAX);
        return c->closing ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
    }
    call->busy++;
    int rc = api__grpc_reader_feed(&call->rd, data, len, on_message, call);
    conn_recv_account(c, before, api__grpc_reader_buffered(&call->rd));
    switch (rc) {
    case 0:
    case 1: /* on_message ended the call or the connection closes */
        break;
    case API_ETOOBIG:
        call_fail(call, API_GRPC_RESOURCE_EXHAUSTED,
                  "grpc: received message larger than max (%u vs. %zu)",
                  api__grpc_reader_declared(&call->rd), c->server->max_recv_bytes);
        break;
    case API_ECOMPRESSED:
        call_fail(call, API_GRPC_UNIMPLEMENTED,
                  "grpc: compressed messages are not supported (send grpc-encoding identity)");
        break;
    case API_EMALFORMED:
        call_fail(call, API_GRPC_INTERNAL, "grpc: received unexpected payload format");
        break;
    default:
        call_fail(call, API_GRPC_RESOURCE_EXHAUSTED, "grpc: out of memory for request");
        break;
    }
    call->busy--;
    return c->closing ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

static int on_frame_send(nghttp2_session *h2, const nghttp2_frame *frame, void *user) {
    (void)user;
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    /* Our side ended before the client's: tell it to stop sending (gRPC
     * servers reset with NO_ERROR after the trailers). */
    if (nghttp2_session_get_stream_remote_close(h2, frame->hd.stream_id) == 0)
        nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
    return 0;
}

static int on_stream_close(nghttp2_session *h2, int32_t stream_id, uint32_t error_code,
                           void *user) {
    (void)error_code;
    (void)user;
    struct api_call *call = stream_call(h2, stream_id);
    if (call == NULL) return 0;
    nghttp2_session_set_stream_user_data(h2, stream_id, NULL);
    struct api__conn *c = call->conn;
    call_unlink(call);
    call->transport = false;
    call->busy++;
    call_tell_cancel(call, c->server);
    call->conn = NULL;
    call->busy--;
    api__call_maybe_free(call);
    return c->closing ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

static nghttp2_session_callbacks *callbacks_new(void) {
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0) return NULL;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    return cbs;
}

/* ---- connection life cycle ------------------------------------------------ */

static void *h2_malloc(size_t size, void *ud) {
    (void)ud;
    return qfs_malloc(size);
}

static void h2_free(void *p, void *ud) {
    (void)ud;
    free(p);
}

static void *h2_calloc(size_t n, size_t size, void *ud) {
    (void)ud;
    return qfs_calloc(n, size);
}

static void *h2_realloc(void *p, size_t size, void *ud) {
    (void)ud;
    return qfs_realloc(p, size);
}

/* The session allocates through qfs_malloc, so that the allocation tests
 * fail nghttp2's allocations too. */
static nghttp2_mem h2_mem = {NULL, h2_malloc, h2_free, h2_calloc, h2_realloc};

/* HTTP/2 was chosen: the session, and our SETTINGS as the server preface. */
static int conn_start_h2(struct api__conn *c) {
    struct api_server *s = c->server;
    API__ASSERT(c->proto == API__PROTO_UNKNOWN);
    API__ASSERT(c->h2 == NULL);
    c->proto = API__PROTO_H2;
    nghttp2_session_callbacks *cbs = callbacks_new();
    if (cbs == NULL) return API_ENOMEM;
    /* etcdctl sends ":authority: passthrough:///http://HOST:PORT", which
     * nghttp2's HTTP messaging checks reject; gRPC framing, method and
     * content-type are checked here instead. */
    nghttp2_option *opt = NULL;
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cbs);
        return API_ENOMEM;
    }
    nghttp2_option_set_no_http_messaging(opt, 1);
    int rc = nghttp2_session_server_new3(&c->h2, cbs, c, opt, &h2_mem);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    if (rc != 0) return API_ENOMEM;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, s->max_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, API__H2_STREAM_WINDOW_BYTES},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, API__HEADER_LIST_BYTES_MAX},
    };
    if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) != 0 ||
        nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0,
                                              API__H2_CONN_WINDOW_BYTES) != 0)
        return API_ENOMEM;
    return 0;
}

static int conn_init(struct api__conn *c, struct api_server *s, bool tls, bool metrics_only) {
    c->server = s;
    c->metrics_only = metrics_only;
    /* A metrics listener serves HTTP/1.1 only, as etcd's does in effect. */
    if (metrics_only) c->proto = API__PROTO_H1;
    if (tls) {
        API__ASSERT(s->tls != NULL);
        c->ssl = SSL_new(s->tls);
        c->rbio = BIO_new(BIO_s_mem());
        c->wbio = BIO_new(BIO_s_mem());
        if (c->ssl == NULL || c->rbio == NULL || c->wbio == NULL) {
            BIO_free(c->rbio);
            BIO_free(c->wbio);
            c->rbio = c->wbio = NULL;
            return API_ETLS;
        }
        SSL_set_bio(c->ssl, c->rbio, c->wbio);
        SSL_set_accept_state(c->ssl);
    }
    c->next = s->conns;
    if (s->conns != NULL) s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    return 0;
}

/* Detaches every call, tells stream backends, frees the connection. */
static void conn_teardown(struct api__conn *c) {
    API__ASSERT(c->closing);
    struct api_call *dead = c->calls;
    c->calls = NULL;
    for (struct api_call *call = dead; call != NULL; call = call->next) {
        if (c->h2 != NULL) nghttp2_session_set_stream_user_data(c->h2, call->stream_id, NULL);
        api__grpc_reader_free(&call->rd);
        call->transport = false;
        call->busy++; /* keep it until it was told */
    }
    nghttp2_session_del(c->h2);
    c->h2 = NULL;
    while (dead != NULL) {
        struct api_call *call = dead;
        dead = call->next;
        call->next = call->prev = NULL;
        call_tell_cancel(call, c->server);
        call->conn = NULL;
        call->busy--;
        api__call_maybe_free(call);
    }
    SSL_free(c->ssl);
    peer_cn_release(c->peer_cn);
    free(c->out);
    free(c->det_out);
    api__h1_free(c);
    struct api_server *s = c->server;
    free(c);
    api__server_conn_gone(s);
}

static void on_conn_closed(uv_handle_t *h) {
    conn_teardown(h->data);
}

void api__conn_close(struct api__conn *c) {
    if (c->closing) return;
    c->closing = true;
    conn_unmark_dirty(c);
    struct api_server *s = c->server;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next != NULL) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    if (c->detached) return;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static int conn_recv_plain(struct api__conn *c, const uint8_t *p, size_t n);

/* Decides the protocol from the first bytes: the HTTP/2 client preface
 * (prior knowledge) or anything else, HTTP/1.1. The bytes held meanwhile
 * are then fed to the chosen protocol, followed by the rest of p. */
static int conn_sniff(struct api__conn *c, const uint8_t *p, size_t n) {
    static const char preface[] = NGHTTP2_CLIENT_MAGIC;
    _Static_assert(sizeof(preface) - 1 == API__H2_PREFACE_BYTES, "preface length");
    size_t take = API__H2_PREFACE_BYTES - c->sniff_len;
    if (take > n) take = n;
    memcpy(c->sniff + c->sniff_len, p, take);
    c->sniff_len += take;
    bool prefix = memcmp(c->sniff, preface, c->sniff_len) == 0;
    if (prefix && c->sniff_len < API__H2_PREFACE_BYTES) return 0;
    if (prefix) {
        if (conn_start_h2(c) != 0) {
            api__conn_close(c);
            return -1;
        }
    } else {
        c->proto = API__PROTO_H1;
    }
    if (conn_recv_plain(c, c->sniff, c->sniff_len) != 0) return -1;
    if (n > take) return conn_recv_plain(c, p + take, n - take);
    return 0;
}

/* Feeds plaintext to the connection's protocol. */
static int conn_recv_plain(struct api__conn *c, const uint8_t *p, size_t n) {
    if (c->proto == API__PROTO_UNKNOWN) return conn_sniff(c, p, n);
    if (c->proto == API__PROTO_H1) return api__h1_recv(c, p, n);
    c->in_recv = true;
    ssize_t rv = nghttp2_session_mem_recv(c->h2, p, n);
    c->in_recv = false;
    if (c->closing) return -1;
    if (rv < 0) {
        api__conn_close(c);
        return -1;
    }
    return 0;
}

/* Keeps the CN of the client certificate the handshake verified. A
 * certificate is verified only under client_cert_auth; without one, or
 * without a usable CN, the connection has none. 0, or -1 out of memory. */
static int conn_take_peer_cn(struct api__conn *c) {
    X509 *cert = SSL_get0_peer_certificate(c->ssl);
    if (cert == NULL || SSL_get_verify_result(c->ssl) != X509_V_OK ||
        (SSL_get_verify_mode(c->ssl) & SSL_VERIFY_PEER) == 0)
        return 0;
    X509_NAME *subject = X509_get_subject_name(cert);
    /* The last CN, as Go's pkix.Name keeps it. */
    int last = -1;
    for (int i = -1; (i = X509_NAME_get_index_by_NID(subject, NID_commonName, i)) >= 0;) last = i;
    if (last < 0) return 0;
    ASN1_STRING *data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, last));
    unsigned char *utf8 = NULL;
    int len = ASN1_STRING_to_UTF8(&utf8, data);
    if (len < 0) {
        ERR_clear_error();
        return 0;
    }
    int rc = 0;
    if (memchr(utf8, '\0', (size_t)len) == NULL) {
        struct api__peer_cn *p = qfs_malloc(sizeof(*p) + (size_t)len + 1);
        if (p == NULL) {
            rc = -1;
        } else {
            p->refs = 1;
            memcpy(p->cn, utf8, (size_t)len);
            p->cn[len] = '\0';
            c->peer_cn = p;
        }
    }
    OPENSSL_free(utf8);
    return rc;
}

static int conn_recv_tls(struct api__conn *c, const uint8_t *p, size_t n) {
    struct api_server *s = c->server;
    if (BIO_write(c->rbio, p, (int)n) != (int)n) goto err_close;
    if (!c->tls_ready) {
        int r = SSL_do_handshake(c->ssl);
        if (r != 1) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
            /* Send the alert OpenSSL produced, then close. */
            tls_drain(c);
            out_submit(c);
            goto err_close;
        }
        c->tls_ready = true;
        if (conn_take_peer_cn(c) != 0) goto err_close;
        const unsigned char *alpn = NULL;
        unsigned alpn_len = 0;
        SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
        if (c->proto == API__PROTO_UNKNOWN && alpn_len == 2 && memcmp(alpn, "h2", 2) == 0) {
            if (conn_start_h2(c) != 0) goto err_close;
        } else if (c->proto == API__PROTO_UNKNOWN && alpn_len == 8 &&
                   memcmp(alpn, "http/1.1", 8) == 0) {
            c->proto = API__PROTO_H1;
        }
        /* No ALPN: the first bytes decide, as on a plaintext listener. */
    }
    for (;;) {
        int r = SSL_read(c->ssl, s->plain_buf, (int)sizeof(s->plain_buf));
        if (r > 0) {
            if (conn_recv_plain(c, s->plain_buf, (size_t)r) != 0) return -1;
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
        goto err_close;
    }

err_close:
    ERR_clear_error();
    api__conn_close(c);
    return -1;
}

static int conn_recv(struct api__conn *c, const uint8_t *p, size_t n) {
    if (c->ssl != NULL) return conn_recv_tls(c, p, n);
    return conn_recv_plain(c, p, n);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    struct api__conn *c = h->data;
    *buf = uv_buf_init((char *)c->server->read_buf, sizeof(c->server->read_buf));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    struct api__conn *c = stream->data;
    if (c->closing) return;
    if (nread < 0) {
        api__conn_close(c);
        return;
    }
    if (nread == 0) return;
    if (conn_recv(c, (const uint8_t *)buf->base, (size_t)nread) != 0) return;
    api__conn_flush(c);
    if (c->closing) return;
    /* The client reads slower than it asks, or pipelines requests faster
     * than they are answered: stop reading until libuv has written what is
     * queued (on_write resumes) or the answer is out (flush resumes). */
    bool paused = c->proto == API__PROTO_H1 && api__h1_paused(c);
    if ((c->write_bytes >= API__CONN_WRITE_HIGH_BYTES || paused) && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

static void conn_read_start(struct api__conn *c) {
    if (c->detached || c->reading || c->closing) return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        api__conn_close(c);
        return;
    }
    c->reading = true;
}

static void on_refused_closed(uv_handle_t *h) {
    free(h);
}

static void on_unlinked_closed(uv_handle_t *h) {
    free(h->data);
}

void api__conn_accept(struct api__listener *l) {
    struct api_server *s = l->server;
    if (s->n_conns >= s->max_conns) {
        /* Over the limit: accept to take it off the backlog, then close. */
        uv_tcp_t *t = qfs_malloc(sizeof(*t));
        if (t == NULL) return;
        if (uv_tcp_init(s->loop, t) != 0) {
            free(t);
            return;
        }
        uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)t);
        uv_close((uv_handle_t *)t, on_refused_closed);
        return;
    }
    struct api__conn *c = qfs_calloc(1, sizeof(*c));
    if (c == NULL) return;
    if (uv_tcp_init(s->loop, &c->tcp) != 0) {
        free(c);
        return;
    }
    c->tcp.data = c;
    c->server = s;
    if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&c->tcp) != 0 ||
        conn_init(c, s, l->tls, l->metrics_only) != 0) {
        /* conn_init() links the connection only when it succeeds. */
        nghttp2_session_del(c->h2);
        SSL_free(c->ssl);
        uv_close((uv_handle_t *)&c->tcp, on_unlinked_closed);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    conn_read_start(c);
    api__conn_flush(c);
}

/* ---- detached connections (fuzzing) ---------------------------------------- */

struct api__conn *api__conn_new_detached(struct api_server *s) {
    struct api__conn *c = qfs_calloc(1, sizeof(*c));
    if (c == NULL) return NULL;
    c->detached = true;
    if (conn_init(c, s, false, false) != 0) {
        nghttp2_session_del(c->h2);
        free(c);
        return NULL;
    }
    return c;
}

int api__conn_feed(struct api__conn *c, const uint8_t *data, size_t len) {
    API__ASSERT(c->detached);
    if (c->closing) return -1;
    if (conn_recv(c, data, len) != 0) return -1;
    api__conn_flush(c);
    return c->closing ? -1 : 0;
}

size_t api__conn_output(struct api__conn *c, const uint8_t **p) {
    API__ASSERT(c->detached);
    *p = c->det_out;
    size_t n = c->det_len;
    c->det_len = 0;
    return n;
}

void api__conn_free_detached(struct api__conn *c) {
    API__ASSERT(c->detached);
    api__conn_close(c);
    conn_teardown(c);
}
