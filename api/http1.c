/*
 * http1.c - HTTP/1.1 on the client port, as etcd 3.4 serves it beside gRPC:
 * GET /version, GET /health, GET /metrics and the JSON gateway (POST /v3/...
 * and its alias /v3beta/...), which converts the JSON body to the method's
 * protobuf request (json.c), hands it to the same struct api_backend entry
 * a gRPC call reaches, and converts the answer back: one JSON body for a
 * unary call; for a stream, chunked transfer encoding with one
 * {"result":...} object per line, as grpc-gateway writes them.
 *
 * One request is answered at a time. A request is read whole (head, then a
 * body of Content-Length bytes or chunked) before it is dispatched, so the
 * body limit bounds memory; pipelined requests wait in the input buffer,
 * which stops growing at API__H1_PIPELINE_BYTES (the socket is no longer
 * read) until the answer in progress is out. A client that does not read
 * its answers stops being read too (conn.c's write high-water mark), and a
 * stream over HTTP/1.1 gets API_EQUEUEFULL once the socket's unwritten
 * bytes reach the stream queue limit. Keep-alive follows HTTP/1.1 (and
 * "Connection: close"/HTTP/1.0); after an error that leaves the input
 * unparseable (bad head, oversized body) the connection is closed once the
 * answer is written.
 *
 * The parser (api__h1_parse_head, api__h1_chunked_feed) is pure and fuzzed
 * (tests/fuzz/fuzz_api_http.c). Everything else runs on the loop thread.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"

/* ---- request head parser ------------------------------------------------- */

static char lower(char c) {
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static bool ieq(const uint8_t *a, size_t n, const char *b) {
    if (strlen(b) != n) return false;
    for (size_t i = 0; i < n; i++)
        if (lower((char)a[i]) != b[i]) return false;
    return true;
}

static bool is_tchar(uint8_t c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int head_error(struct api__h1_req *r, int status) {
    r->error_status = status;
    return status == 431 ? API_ETOOBIG : API_EMALFORMED;
}

/* One line of p[*i..end): [start, stop) without its CRLF or LF. */
static void next_line(const uint8_t *p, size_t end, size_t *i, size_t *start, size_t *stop) {
    *start = *i;
    while (*i < end && p[*i] != '\n') (*i)++;
    *stop = *i;
    if (*stop > *start && p[*stop - 1] == '\r') (*stop)--;
    if (*i < end) (*i)++;
}

static enum api__h1_method method_of(const uint8_t *p, size_t n) {
    static const struct {
        const char *name;
        enum api__h1_method m;
    } names[] = {
        {"GET", API__H1_GET}, {"HEAD", API__H1_HEAD},     {"POST", API__H1_POST},
        {"PUT", API__H1_PUT}, {"DELETE", API__H1_DELETE}, {"OPTIONS", API__H1_OPTIONS},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strlen(names[i].name) == n && memcmp(names[i].name, p, n) == 0) return names[i].m;
    return API__H1_OTHER;
}

/* Trims optional whitespace around a header value. */
static void trim(const uint8_t *p, size_t *a, size_t *b) {
    while (*a < *b && (p[*a] == ' ' || p[*a] == '\t')) (*a)++;
    while (*b > *a && (p[*b - 1] == ' ' || p[*b - 1] == '\t')) (*b)--;
}

static int parse_request_line(const uint8_t *p, size_t a, size_t b, struct api__h1_req *r) {
    size_t sp1 = a;
    while (sp1 < b && p[sp1] != ' ') sp1++;
    if (sp1 == a || sp1 == b) return head_error(r, 400);
    for (size_t k = a; k < sp1; k++)
        if (!is_tchar(p[k])) return head_error(r, 400);
    r->method = method_of(p + a, sp1 - a);
    size_t t = sp1 + 1, sp2 = t;
    while (sp2 < b && p[sp2] != ' ') sp2++;
    if (sp2 == t || sp2 == b) return head_error(r, 400);
    for (size_t k = t; k < sp2; k++)
        if (p[k] <= 0x20 || p[k] == 0x7F) return head_error(r, 400);
    /* absolute-form "http://host/path": keep the path. */
    size_t path = t;
    if (p[t] != '/') {
        static const char *const schemes[] = {"http://", "https://"};
        bool abs = false;
        for (size_t k = 0; k < 2 && !abs; k++) {
            size_t sl = strlen(schemes[k]);
            if (sp2 - t > sl && ieq(p + t, sl, schemes[k])) {
                path = t + sl;
                while (path < sp2 && p[path] != '/') path++;
                abs = true;
            }
        }
        if (!abs && !(sp2 - t == 1 && p[t] == '*')) return head_error(r, 400);
    }
    r->target_off = path;
    r->target_len = sp2 - path;
    size_t q = path;
    while (q < sp2 && p[q] != '?' && p[q] != '#') q++;
    r->path_len = q - path;
    size_t v = sp2 + 1;
    if (b - v != 8 || memcmp(p + v, "HTTP/1.", 7) != 0) {
        if (b - v >= 5 && memcmp(p + v, "HTTP/", 5) == 0) return head_error(r, 505);
        return head_error(r, 400);
    }
    if (p[v + 7] != '0' && p[v + 7] != '1') return head_error(r, 505);
    r->minor = p[v + 7] - '0';
    r->keep_alive = r->minor == 1;
    return 0;
}

/* Applies one header field. */
static int parse_field(const uint8_t *p, size_t a, size_t b, struct api__h1_req *r) {
    if (p[a] == ' ' || p[a] == '\t') return head_error(r, 400); /* obsolete folding */
    size_t colon = a;
    while (colon < b && p[colon] != ':') colon++;
    if (colon == a || colon == b) return head_error(r, 400);
    for (size_t k = a; k < colon; k++)
        if (!is_tchar(p[k])) return head_error(r, 400);
    size_t va = colon + 1, vb = b;
    trim(p, &va, &vb);
    for (size_t k = va; k < vb; k++)
        if ((p[k] < 0x20 && p[k] != '\t') || p[k] == 0x7F) return head_error(r, 400);
    const uint8_t *name = p + a;
    size_t nlen = colon - a;
    if (ieq(name, nlen, "content-length")) {
        if (va == vb || vb - va > 15) return head_error(r, 400);
        uint64_t v = 0;
        for (size_t k = va; k < vb; k++) {
            if (p[k] < '0' || p[k] > '9') return head_error(r, 400);
            v = v * 10 + (uint64_t)(p[k] - '0');
        }
        if (r->has_length && r->content_length != v) return head_error(r, 400);
        r->has_length = true;
        r->content_length = v;
    } else if (ieq(name, nlen, "transfer-encoding")) {
        if (!ieq(p + va, vb - va, "chunked")) return head_error(r, 501);
        if (r->chunked) return head_error(r, 400);
        r->chunked = true;
    } else if (ieq(name, nlen, "connection")) {
        size_t k = va;
        while (k < vb) {
            size_t ta = k;
            while (k < vb && p[k] != ',') k++;
            size_t tb = k;
            trim(p, &ta, &tb);
            if (ieq(p + ta, tb - ta, "close")) r->keep_alive = false;
            if (ieq(p + ta, tb - ta, "keep-alive") && r->minor == 0) r->keep_alive = true;
            if (k < vb) k++;
        }
    } else if (ieq(name, nlen, "expect")) {
        if (ieq(p + va, vb - va, "100-continue")) r->expect_continue = true;
    }
    return 0;
}

int api__h1_parse_head(const uint8_t *p, size_t n, size_t *scanned, struct api__h1_req *r) {
    API__ASSERT(p != NULL || n == 0);
    API__ASSERT(scanned != NULL && r != NULL);
    /* Find the empty line; resume a little before where the last call
     * stopped, so a head that trickles in is scanned once. */
    size_t i = *scanned, end = 0;
    while (i < n) {
        if (p[i] == '\n') {
            if (i + 1 < n && p[i + 1] == '\n') {
                end = i + 2;
                break;
            }
            if (i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n') {
                end = i + 3;
                break;
            }
            if (i + 2 >= n) break; /* cannot tell yet */
        }
        i++;
    }
    if (end == 0) {
        *scanned = i;
        if (n > API__H1_HEAD_BYTES_MAX) return head_error(r, 431);
        return 0;
    }
    if (end > API__H1_HEAD_BYTES_MAX) return head_error(r, 431);
    memset(r, 0, sizeof(*r));
    size_t at = 0, a, b;
    next_line(p, end, &at, &a, &b);
    int rc = parse_request_line(p, a, b, r);
    if (rc != 0) return rc;
    unsigned fields = 0;
    for (;;) {
        next_line(p, end, &at, &a, &b);
        if (a == b) break;
        if (++fields > API__H1_HEADERS_MAX) return head_error(r, 431);
        rc = parse_field(p, a, b, r);
        if (rc != 0) return rc;
    }
    if (r->chunked && r->has_length) return head_error(r, 400);
    return (int)end;
}

/* ---- chunked bodies ------------------------------------------------------- */

enum {
    CK_SIZE = 0, /* hex digits of a chunk size */
    CK_EXT,      /* ";ext" up to the end of the size line */
    CK_DATA,     /* chunk bytes */
    CK_DATA_END, /* CRLF after the data */
    CK_TRAILER,  /* trailer lines up to an empty one */
    CK_DONE,
};

int api__h1_chunked_feed(struct api__h1_chunked *ck, const uint8_t *p, size_t n, size_t *used,
                         struct api__buf *body) {
    API__ASSERT(ck != NULL && used != NULL && body != NULL);
    size_t i = 0;
    int rc = 0;
    while (i < n && ck->state != CK_DONE) {
        uint8_t c = p[i];
        switch (ck->state) {
        case CK_SIZE:
        case CK_EXT:
            if (++ck->line > API__H1_CHUNK_LINE_MAX) goto err_malformed;
            i++;
            if (c == '\r') continue;
            if (c == '\n') {
                if (ck->digits == 0) goto err_malformed;
                ck->line = 0;
                ck->digits = 0;
                ck->state = ck->remaining == 0 ? CK_TRAILER : CK_DATA;
                continue;
            }
            if (ck->state == CK_EXT) continue;
            if (c == ';' || c == ' ' || c == '\t') {
                if (ck->digits == 0) goto err_malformed;
                ck->state = CK_EXT;
                continue;
            }
            int v = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
            if (v < 0 || ck->remaining > (UINT64_MAX >> 4)) goto err_malformed;
            ck->digits++;
            ck->remaining = ck->remaining << 4 | (uint64_t)v;
            if (ck->remaining > body->max) {
                rc = API_ETOOBIG;
                goto out;
            }
            continue;
        case CK_DATA: {
            size_t take = n - i;
            if (take > ck->remaining) take = (size_t)ck->remaining;
            rc = api__buf_add(body, p + i, take);
            if (rc != 0) goto out;
            i += take;
            ck->remaining -= take;
            if (ck->remaining == 0) ck->state = CK_DATA_END;
            continue;
        }
        case CK_DATA_END:
            i++;
            if (c == '\r' && ck->line == 0) {
                ck->line = 1;
                continue;
            }
            if (c != '\n') goto err_malformed;
            ck->line = 0;
            ck->state = CK_SIZE;
            continue;
        case CK_TRAILER:
            i++;
            if (++ck->line > API__H1_CHUNK_LINE_MAX) goto err_malformed;
            if (c == '\r') {
                ck->digits = 1; /* a CR: "\r\n" may still make the line empty */
                continue;
            }
            if (c != '\n') {
                ck->digits = 2; /* the line has content */
                continue;
            }
            /* An empty line ("\n" or "\r\n") ends the body. */
            if (ck->digits != 2) ck->state = CK_DONE;
            ck->line = 0;
            ck->digits = 0;
            continue;
        default:
            goto err_malformed;
        }
    }
out:
    *used = i;
    if (rc != 0) return rc;
    return ck->state == CK_DONE ? 1 : 0;

err_malformed:
    *used = i;
    return API_EMALFORMED;
}

/* ---- responses -------------------------------------------------------------- */

static const char *reason(int status) {
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Request Entity Too Large";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

int api__h1_status_from_grpc(int code) {
    /* grpc-gateway 1.9's HTTPStatusFromCode, which etcd 3.4 vendors. */
    static const int status[] = {200, 408, 500, 400, 504, 404, 409, 403, 429,
                                 412, 409, 400, 501, 500, 503, 500, 401};
    _Static_assert(sizeof(status) / sizeof(status[0]) == API_GRPC_UNAUTHENTICATED + 1,
                   "one status per gRPC code");
    if (code < 0 || code > API_GRPC_UNAUTHENTICATED) return 500;
    return status[code];
}

/* Writes a whole response. */
static void respond(struct api__conn *c, int status, const char *ctype, const void *body,
                    size_t len) {
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s\r\n", status,
                     reason(status), ctype, len, c->h1.close_after ? "Connection: close\r\n" : "");
    api__conn_write(c, head, (size_t)n);
    if (c->h1.req.method != API__H1_HEAD) api__conn_write(c, body, len);
}

static void respond_text(struct api__conn *c, int status, const char *text) {
    respond(c, status, "text/plain; charset=utf-8", text, strlen(text));
}

/* An error that leaves the rest of the input unusable: answer, then close. */
static void respond_fatal(struct api__conn *c, int status) {
    c->h1.close_after = true;
    char text[64];
    snprintf(text, sizeof(text), "%d %s\n", status, reason(status));
    respond_text(c, status, text);
}

/* grpc-gateway's error body: {"error":M,"message":M,"code":N}. */
static void respond_grpc_error(struct api__conn *c, int status, int code, const char *msg) {
    struct api__buf b;
    api__buf_init(&b, 16u * 1024u);
    size_t len = strlen(msg);
    api__buf_str(&b, "{\"error\":");
    api__json_string(&b, msg, len);
    api__buf_str(&b, ",\"message\":");
    api__json_string(&b, msg, len);
    api__buf_printf(&b, ",\"code\":%d}", code);
    if (b.failed == 0)
        respond(c, status, "application/json", b.p, b.len);
    else
        respond_text(c, 500, "out of memory\n");
    api__buf_free(&b);
}

/* ---- metrics ---------------------------------------------------------------- */

void api__metrics_handled(struct api_server *s, const struct api__method *m, int code) {
    if (code < 0 || code > API_GRPC_UNAUTHENTICATED) code = API_GRPC_UNKNOWN;
    API__ASSERT(m->id < API__METHODS_MAX);
    s->handled[m->id][code]++;
}

void api__metrics_started(struct api_server *s, const struct api__method *m) {
    API__ASSERT(m->id < API__METHODS_MAX);
    s->started[m->id]++;
}

int api_text_printf(struct api_text *out, const char *fmt, ...) {
    API__ASSERT(out != NULL);
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) return API_EINVAL;
    if ((size_t)n < sizeof(small)) return api__buf_add(&out->b, small, (size_t)n);
    int rc = api__buf_reserve(&out->b, (size_t)n + 1);
    if (rc != 0) return rc;
    va_start(ap, fmt);
    vsnprintf((char *)out->b.p + out->b.len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    out->b.len += (size_t)n;
    return 0;
}

/* grpc-go's names of the codes, as go-grpc-prometheus labels them. */
static const char *go_code_name(int code) {
    static const char *const names[] = {
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    };
    _Static_assert(sizeof(names) / sizeof(names[0]) == API_GRPC_UNAUTHENTICATED + 1,
                   "one name per code");
    return names[code];
}

static void method_labels(const struct api__method *m, char *out, size_t size) {
    const char *path = m->path + 1;
    const char *slash = strchr(path, '/');
    API__ASSERT(slash != NULL);
    static const char *const types[] = {"", "unary", "server_stream", "bidi_stream"};
    snprintf(out, size, "grpc_method=\"%s\",grpc_service=\"%.*s\",grpc_type=\"%s\"", slash + 1,
             (int)(slash - path), path, types[m->kind]);
}

static void metrics_grpc(struct api_server *s, struct api_text *t) {
    char labels[160];
    api_text_printf(t, "# HELP grpc_server_started_total Total number of RPCs started on the "
                       "server.\n# TYPE grpc_server_started_total counter\n");
    for (unsigned i = 0; i < api__method_count(); i++) {
        method_labels(api__method_at(i), labels, sizeof(labels));
        api_text_printf(t, "grpc_server_started_total{%s} %llu\n", labels,
                        (unsigned long long)s->started[i]);
    }
    api_text_printf(t, "# HELP grpc_server_handled_total Total number of RPCs completed on the "
                       "server, regardless of success or failure.\n"
                       "# TYPE grpc_server_handled_total counter\n");
    for (unsigned i = 0; i < api__method_count(); i++) {
        method_labels(api__method_at(i), labels, sizeof(labels));
        for (int code = 0; code <= API_GRPC_UNAUTHENTICATED; code++) {
            if (code != 0 && s->handled[i][code] == 0) continue;
            api_text_printf(t, "grpc_server_handled_total{grpc_code=\"%s\",%s} %llu\n",
                            go_code_name(code), labels, (unsigned long long)s->handled[i][code]);
        }
    }
}

static void serve_metrics(struct api__conn *c) {
    struct api_server *s = c->server;
    struct api_text t;
    api__buf_init(&t.b, 64u * 1024u * 1024u);
    if (s->be.metrics != NULL) s->be.metrics(s->be.ctx, &t);
    metrics_grpc(s, &t);
    if (t.b.failed == 0)
        respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", t.b.p, t.b.len);
    else
        respond_text(c, 500, "cannot produce metrics\n");
    api__buf_free(&t.b);
}

/* ---- calls ---------------------------------------------------------------- */

static struct api_call *call_new(struct api__conn *c, enum api__call_kind kind,
                                 const struct api__method *m) {
    /* A stream handle is a call (conn.c), so allocate the larger. */
    struct api_call *call = qfs_calloc(1, sizeof(struct api_stream));
    if (call == NULL) return NULL;
    call->kind = kind;
    call->m = m;
    api__conn_link_call(c, call);
    c->h1.active = call;
    return call;
}

/* The transport is done with the call: the next request may be answered. */
static void call_done(struct api_call *call) {
    struct api__conn *c = call->conn;
    call->finishing = true;
    if (c->h1.active == call) c->h1.active = NULL;
    api__conn_unlink_call(call);
    api__server_mark_dirty(c->server, c); /* the idle flush pumps the next */
}

int api_reply_health(struct api_call *call, bool healthy) {
    API__ASSERT(call != NULL);
    API__ASSERT(call->kind == API__CALL_HEALTH);
    API__ASSERT(call->backend);
    call->backend = false;
    int rc = API_ECLOSED;
    if (!api__call_gone(call) && !call->finishing) {
        struct api__conn *c = call->conn;
        /* etcd answers an unhealthy member with http.Error (a newline). */
        if (healthy)
            respond(c, 200, "text/plain; charset=utf-8", "{\"health\":\"true\"}", 17);
        else
            respond(c, 503, "text/plain; charset=utf-8", "{\"health\":\"false\"}\n", 19);
        call_done(call);
        rc = 0;
    }
    api__call_maybe_free(call);
    return rc;
}

static void serve_health(struct api__conn *c) {
    struct api_server *s = c->server;
    if (s->be.health == NULL) {
        respond(c, 200, "text/plain; charset=utf-8", "{\"health\":\"true\"}", 17);
        return;
    }
    struct api_call *call = call_new(c, API__CALL_HEALTH, NULL);
    if (call == NULL) {
        respond_text(c, 500, "out of memory\n");
        return;
    }
    call->backend = true;
    call->busy++;
    s->be.health(s->be.ctx, call);
    call->busy--;
    api__call_maybe_free(call);
}

/* Writes the response head of a stream once. */
static void stream_head(struct api_call *call, int status) {
    if (call->headers_sent) return;
    char head[160];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n%s\r\n",
                     status, reason(status),
                     call->conn->h1.close_after ? "Connection: close\r\n" : "");
    api__conn_write(call->conn, head, (size_t)n);
    call->headers_sent = true;
}

static void stream_chunk(struct api__conn *c, const uint8_t *p, size_t n) {
    char size[24];
    int k = snprintf(size, sizeof(size), "%zx\r\n", n);
    api__conn_write(c, size, (size_t)k);
    api__conn_write(c, p, n);
    api__conn_write(c, "\r\n", 2);
}

/* A JSON answer may be larger than the protobuf (base64, quoting). */
static size_t json_max(const struct api_server *s) {
    return s->max_send_bytes > SIZE_MAX / 4 ? SIZE_MAX / 2 : s->max_send_bytes * 2 + 4096;
}

int api__h1_stream_send(struct api_call *call, const ProtobufCMessage *msg) {
    struct api__conn *c = call->conn;
    struct api_server *s = c->server;
    if (c->write_bytes >= s->stream_queue_max) {
        call->drain_wanted = true;
        return API_EQUEUEFULL;
    }
    struct api__buf b;
    api__buf_init(&b, json_max(s));
    api__buf_str(&b, "{\"result\":");
    api__json_encode(&b, msg);
    api__buf_str(&b, "}\n");
    int rc = b.failed;
    if (rc == 0) {
        stream_head(call, 200);
        stream_chunk(c, b.p, b.len);
    }
    api__buf_free(&b);
    return rc;
}

/* Ends a stream: an error object (grpc-gateway's streamChunk) if the status
 * is not OK, then the last chunk. */
static void stream_end(struct api_call *call, int code, const char *message) {
    struct api__conn *c = call->conn;
    if (code != API_GRPC_OK) {
        int status = api__h1_status_from_grpc(code);
        stream_head(call, status);
        struct api__buf b;
        api__buf_init(&b, 16u * 1024u);
        const char *msg = message ? message : "";
        api__buf_printf(&b, "{\"error\":{\"grpc_code\":%d,\"http_code\":%d,\"message\":", code,
                        status);
        api__json_string(&b, msg, strlen(msg));
        api__buf_printf(&b, ",\"http_status\":\"%s\"}}", reason(status));
        if (b.failed == 0) stream_chunk(c, b.p, b.len);
        api__buf_free(&b);
    } else {
        stream_head(call, 200);
    }
    api__conn_write(c, "0\r\n\r\n", 5);
}

int api__h1_answer(struct api_call *call, const ProtobufCMessage *msg, int code,
                   const char *message) {
    API__ASSERT(call->kind == API__CALL_GATEWAY);
    if (api__call_gone(call) || call->finishing) return API_ECLOSED;
    struct api__conn *c = call->conn;
    struct api_server *s = c->server;
    int rc = 0;
    if (call->m->kind != API__UNARY) {
        api__metrics_handled(s, call->m, code);
        stream_end(call, code, message);
        call_done(call);
        return 0;
    }
    if (msg != NULL) {
        struct api__buf b;
        api__buf_init(&b, json_max(s));
        rc = api__json_encode(&b, msg);
        if (rc == 0) {
            api__metrics_handled(s, call->m, API_GRPC_OK);
            respond(c, 200, "application/json", b.p, b.len);
        }
        api__buf_free(&b);
        if (rc == 0) {
            call_done(call);
            return 0;
        }
        code = rc == API_ETOOBIG ? API_GRPC_RESOURCE_EXHAUSTED : API_GRPC_INTERNAL;
        message = rc == API_ETOOBIG ? "grpc: trying to send message larger than max"
                                    : "etcdserver: out of memory";
    }
    api__metrics_handled(s, call->m, code);
    respond_grpc_error(c, api__h1_status_from_grpc(code), code, message ? message : "");
    call_done(call);
    return rc;
}

/* ---- the gateway ------------------------------------------------------------ */

/* etcd 3.4's gateway paths (rpc.proto's google.api.http options) under
 * /v3/ and /v3beta/. Hash and HashKV share "maintenance/hash" there; the
 * gateway's mux serves Hash. Election and lock are not quorumfs services. */
static const struct {
    const char *gw;
    const char *grpc;
} routes[] = {
    {"kv/range", "/etcdserverpb.KV/Range"},
    {"kv/put", "/etcdserverpb.KV/Put"},
    {"kv/deleterange", "/etcdserverpb.KV/DeleteRange"},
    {"kv/txn", "/etcdserverpb.KV/Txn"},
    {"kv/compaction", "/etcdserverpb.KV/Compact"},
    {"watch", "/etcdserverpb.Watch/Watch"},
    {"lease/grant", "/etcdserverpb.Lease/LeaseGrant"},
    {"lease/revoke", "/etcdserverpb.Lease/LeaseRevoke"},
    {"kv/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke"},
    {"lease/keepalive", "/etcdserverpb.Lease/LeaseKeepAlive"},
    {"lease/timetolive", "/etcdserverpb.Lease/LeaseTimeToLive"},
    {"kv/lease/timetolive", "/etcdserverpb.Lease/LeaseTimeToLive"},
    {"lease/leases", "/etcdserverpb.Lease/LeaseLeases"},
    {"kv/lease/leases", "/etcdserverpb.Lease/LeaseLeases"},
    {"cluster/member/add", "/etcdserverpb.Cluster/MemberAdd"},
    {"cluster/member/remove", "/etcdserverpb.Cluster/MemberRemove"},
    {"cluster/member/update", "/etcdserverpb.Cluster/MemberUpdate"},
    {"cluster/member/list", "/etcdserverpb.Cluster/MemberList"},
    {"cluster/member/promote", "/etcdserverpb.Cluster/MemberPromote"},
    {"maintenance/alarm", "/etcdserverpb.Maintenance/Alarm"},
    {"maintenance/status", "/etcdserverpb.Maintenance/Status"},
    {"maintenance/defragment", "/etcdserverpb.Maintenance/Defragment"},
    {"maintenance/hash", "/etcdserverpb.Maintenance/Hash"},
    {"maintenance/snapshot", "/etcdserverpb.Maintenance/Snapshot"},
    {"maintenance/transfer-leadership", "/etcdserverpb.Maintenance/MoveLeader"},
};

static const struct api__method *route(const char *p, size_t n) {
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (strlen(routes[i].gw) == n && memcmp(routes[i].gw, p, n) == 0)
            return api__method_find(routes[i].grpc, strlen(routes[i].grpc));
    }
    return NULL;
}

/* Decodes one request message of the body at p[0..n). Returns the message,
 * or NULL with *rc API__JSON_EOF (nothing left) or an error (err set). */
static ProtobufCMessage *decode(struct api_server *s, const ProtobufCMessageDescriptor *d,
                                const uint8_t *p, size_t n, size_t *used, int *rc, char *err,
                                size_t err_size) {
    struct api__buf wire;
    api__buf_init(&wire, s->max_recv_bytes);
    ProtobufCMessage *msg = NULL;
    *rc = api__json_decode(d, p, n, used, &wire, err, err_size);
    if (*rc == API_ETOOBIG)
        snprintf(err, err_size, "grpc: received message larger than max (%zu vs. %zu)", n,
                 s->max_recv_bytes);
    if (*rc == 0) {
        static const uint8_t none[1];
        const uint8_t *w = wire.len ? wire.p : none;
        int uerr = API_EMALFORMED;
        if (api__proto_check(d, w, wire.len, API__PROTO_DEPTH_MAX) != 0 ||
            (msg = api__proto_unpack_err(d, w, wire.len, &uerr)) == NULL) {
            *rc = uerr;
            if (uerr == API_ENOMEM)
                snprintf(err, err_size, "out of memory");
            else
                snprintf(err, err_size, "proto: cannot parse the converted %s", d->name);
        }
    }
    api__buf_free(&wire);
    return msg;
}

static int code_of(int rc) {
    return rc == API_ETOOBIG  ? API_GRPC_RESOURCE_EXHAUSTED
           : rc == API_ENOMEM ? API_GRPC_RESOURCE_EXHAUSTED
                              : API_GRPC_INVALID_ARGUMENT;
}

/* Bidirectional stream: every JSON object of the body is one request, as
 * grpc-gateway decodes them; the stream is then half-closed. A body whose
 * first object does not decode is refused (code Unknown, HTTP 500, as the
 * gateway answers); a later bad object ends the requests there. */
static void gateway_bidi(struct api__conn *c, const struct api__method *m, const uint8_t *body,
                         size_t len) {
    struct api_server *s = c->server;
    char err[256];
    ProtobufCMessage **reqs = NULL;
    size_t n = 0, cap = 0, off = 0;
    for (;;) {
        size_t used = 0;
        int rc;
        ProtobufCMessage *msg =
            decode(s, m->req, body + off, len - off, &used, &rc, err, sizeof(err));
        if (msg == NULL) {
            if (rc != API__JSON_EOF && n == 0) {
                respond_grpc_error(c, 500, API_GRPC_UNKNOWN, err);
                return;
            }
            break;
        }
        off += used;
        if (n == cap) {
            cap = cap ? cap * 2 : 4;
            ProtobufCMessage **q = qfs_realloc(reqs, cap * sizeof(*q));
            if (q == NULL) {
                protobuf_c_message_free_unpacked(msg, NULL);
                break;
            }
            reqs = q;
        }
        reqs[n++] = msg;
    }
    struct api_call *call = call_new(c, API__CALL_GATEWAY, m);
    if (call != NULL) {
        api__metrics_started(s, m);
        call->backend = true;
        call->busy++;
        api__dispatch_stream_open(&s->be, m, (struct api_stream *)call, NULL);
        for (size_t i = 0; i < n && call->backend && !api__call_gone(call); i++)
            api__dispatch_stream_request(&s->be, m, (struct api_stream *)call, reqs[i]);
        if (call->backend && !api__call_gone(call) && !call->finishing) {
            call->half_close_told = true;
            api__dispatch_stream_end(&s->be, m, (struct api_stream *)call, API_STREAM_HALF_CLOSED);
        }
        call->busy--;
        api__call_maybe_free(call);
    } else {
        respond_text(c, 500, "out of memory\n");
    }
    for (size_t i = 0; i < n; i++) protobuf_c_message_free_unpacked(reqs[i], NULL);
    free(reqs);
}

static void gateway(struct api__conn *c, const char *rest, size_t rlen, const uint8_t *body,
                    size_t len) {
    struct api_server *s = c->server;
    const struct api__method *m = route(rest, rlen);
    if (m == NULL) {
        respond_text(c, 404, "Not Found\n");
        return;
    }
    if (c->h1.req.method != API__H1_POST) {
        respond_text(c, 405, "Method Not Allowed\n");
        return;
    }
    if (!api__method_routed(&s->be, m)) {
        char msg[160];
        snprintf(msg, sizeof(msg), "unknown method %s", strrchr(m->path, '/') + 1);
        respond_grpc_error(c, 501, API_GRPC_UNIMPLEMENTED, msg);
        return;
    }
    if (m->kind == API__BIDI_STREAM) {
        gateway_bidi(c, m, body, len);
        return;
    }
    char err[256];
    size_t used;
    int rc;
    ProtobufCMessage *msg = decode(s, m->req, body, len, &used, &rc, err, sizeof(err));
    if (msg == NULL && rc == API__JSON_EOF) /* an empty body is the empty request */
        msg = decode(s, m->req, (const uint8_t *)"{}", 2, &used, &rc, err, sizeof(err));
    if (msg == NULL) {
        int code = code_of(rc);
        respond_grpc_error(c, api__h1_status_from_grpc(code), code, err);
        return;
    }
    struct api_call *call = call_new(c, API__CALL_GATEWAY, m);
    if (call == NULL) {
        protobuf_c_message_free_unpacked(msg, NULL);
        respond_text(c, 500, "out of memory\n");
        return;
    }
    api__metrics_started(s, m);
    call->backend = true;
    call->busy++;
    if (m->kind == API__UNARY) {
        call->req = msg; /* owned by the call until answered */
        api__dispatch_unary(&s->be, m, call, msg);
    } else {
        api__dispatch_stream_open(&s->be, m, (struct api_stream *)call, msg);
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    call->busy--;
    api__call_maybe_free(call);
}

/* ---- requests ------------------------------------------------------------- */

static bool path_is(const char *p, size_t n, const char *want) {
    return strlen(want) == n && memcmp(p, want, n) == 0;
}

static void serve_version(struct api__conn *c) {
    struct api_server *s = c->server;
    struct api__buf b;
    api__buf_init(&b, 256);
    api__buf_str(&b, "{\"etcdserver\":");
    api__json_string(&b, s->version_server, strlen(s->version_server));
    api__buf_str(&b, ",\"etcdcluster\":");
    api__json_string(&b, s->version_cluster, strlen(s->version_cluster));
    api__buf_str(&b, "}");
    if (b.failed == 0)
        respond(c, 200, "application/json", b.p, b.len);
    else
        respond_text(c, 500, "out of memory\n"); /* never a 200 with a cut body */
    api__buf_free(&b);
}

static void dispatch(struct api__conn *c, const uint8_t *body, size_t len) {
    struct api__h1 *h = &c->h1;
    const char *path = (const char *)h->in.p + h->req.target_off;
    size_t plen = h->req.path_len;
    bool get = h->req.method == API__H1_GET || h->req.method == API__H1_HEAD;
    if (path_is(path, plen, "/metrics")) {
        serve_metrics(c);
    } else if (path_is(path, plen, "/health")) {
        if (get)
            serve_health(c);
        else
            respond_text(c, 405, "Method Not Allowed\n");
    } else if (c->metrics_only) {
        respond_text(c, 404, "404 page not found\n");
    } else if (path_is(path, plen, "/version")) {
        if (get)
            serve_version(c);
        else
            respond_text(c, 405, "Method Not Allowed\n");
    } else if (plen > 4 && memcmp(path, "/v3/", 4) == 0) {
        gateway(c, path + 4, plen - 4, body, len);
    } else if (plen > 8 && memcmp(path, "/v3beta/", 8) == 0) {
        gateway(c, path + 8, plen - 8, body, len);
    } else {
        respond_text(c, 404, "404 page not found\n");
    }
}

static void consume(struct api__h1 *h, size_t n) {
    API__ASSERT(n <= h->in.len);
    memmove(h->in.p, h->in.p + n, h->in.len - n);
    h->in.len -= n;
}

static size_t body_max(const struct api_server *s) {
    /* What a request under the gRPC receive limit can take in JSON: its
     * bytes fields grow by a third in base64, plus room for the syntax. */
    return s->max_recv_bytes / 3 * 4 + 64u * 1024u;
}

static void maybe_continue(struct api__conn *c) {
    struct api__h1 *h = &c->h1;
    if (!h->req.expect_continue || h->continue_sent || h->req.minor == 0) return;
    h->continue_sent = true;
    api__conn_write(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
}

/* Answers the next request if it is complete. Returns 1 when one was
 * dispatched, 0 when more input is needed or the connection is ending. */
static int step(struct api__conn *c) {
    struct api__h1 *h = &c->h1;
    struct api_server *s = c->server;
    if (h->head_len == 0) {
        size_t k = 0; /* blank lines between requests are ignored */
        while (k < h->in.len && (h->in.p[k] == '\r' || h->in.p[k] == '\n')) k++;
        if (k > 0) consume(h, k);
        h->scanned = h->scanned > k ? h->scanned - k : 0;
        if (h->in.len == 0) return 0;
        int rc = api__h1_parse_head(h->in.p, h->in.len, &h->scanned, &h->req);
        if (rc == 0) return 0;
        if (rc < 0) {
            respond_fatal(c, h->req.error_status);
            return 0;
        }
        h->head_len = (size_t)rc;
        if (h->req.has_length && h->req.content_length > body_max(s)) {
            respond_fatal(c, 413);
            return 0;
        }
        memset(&h->ck, 0, sizeof(h->ck));
        api__buf_init(&h->body, body_max(s));
        h->body_in = 0;
        h->continue_sent = false;
    }
    const uint8_t *body;
    size_t len, total;
    if (h->req.chunked) {
        size_t used = 0;
        int rc = api__h1_chunked_feed(&h->ck, h->in.p + h->head_len, h->in.len - h->head_len, &used,
                                      &h->body);
        /* The decoded bytes are in h->body: drop the raw ones. */
        memmove(h->in.p + h->head_len, h->in.p + h->head_len + used,
                h->in.len - h->head_len - used);
        h->in.len -= used;
        if (rc < 0) {
            /* Out of memory is ours, not the client's: not a 4xx. */
            respond_fatal(c, rc == API_ETOOBIG ? 413 : rc == API_ENOMEM ? 500 : 400);
            return 0;
        }
        if (rc == 0) {
            maybe_continue(c);
            return 0;
        }
        body = h->body.p;
        len = h->body.len;
        total = h->head_len;
    } else {
        uint64_t cl = h->req.has_length ? h->req.content_length : 0;
        if (h->in.len - h->head_len < cl) {
            maybe_continue(c);
            return 0;
        }
        body = h->in.p + h->head_len;
        len = (size_t)cl;
        total = h->head_len + len;
    }
    if (!h->req.keep_alive) h->close_after = true;
    dispatch(c, body ? body : (const uint8_t *)"", len);
    consume(h, total);
    api__buf_free(&h->body);
    h->head_len = 0;
    h->scanned = 0;
    return 1;
}

void api__h1_pump(struct api__conn *c) {
    struct api__h1 *h = &c->h1;
    if (h->processing || c->closing || c->proto != API__PROTO_H1) return;
    h->processing = true;
    while (!c->closing && h->active == NULL && !h->close_after && step(c) == 1) {
    }
    h->processing = false;
}

int api__h1_recv(struct api__conn *c, const uint8_t *p, size_t n) {
    struct api__h1 *h = &c->h1;
    if (h->in.max == 0) {
        api__buf_init(&h->in, API__H1_HEAD_BYTES_MAX + body_max(c->server) + API__READ_BYTES);
    }
    if (h->close_after) return 0; /* nothing more is read once closing */
    int rc = api__buf_add(&h->in, p, n);
    if (rc != 0) {
        /* Only a client that ignores our pauses gets here (or a detached
         * connection fed too much at once) - or out of memory, which is a
         * server error: a 413 would tell the client its request can never
         * be served. */
        h->in.failed = 0;
        if (h->active == NULL) respond_fatal(c, rc == API_ENOMEM ? 500 : 413);
        h->close_after = true;
        return 0;
    }
    api__h1_pump(c);
    return c->closing ? -1 : 0;
}

bool api__h1_paused(const struct api__conn *c) {
    const struct api__h1 *h = &c->h1;
    return h->close_after || (h->active != NULL && h->in.len >= API__H1_PIPELINE_BYTES);
}

void api__h1_free(struct api__conn *c) {
    api__buf_free(&c->h1.in);
    api__buf_free(&c->h1.body);
}
