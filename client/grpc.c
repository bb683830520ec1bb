/*
 * grpc.c - gRPC response framing, protobuf input checks, grpc-message
 * decoding and endpoint URL parsing for the client.
 *
 * Everything a server sends passes through here before protobuf-c sees it,
 * so every length is checked before it is trusted: the declared message
 * size against CLIENT_RECV_MSG_BYTES_MAX before a byte is buffered, and the
 * protobuf nesting depth before protobuf-c's recursive unpacker runs. The
 * code does no I/O and keeps no state between calls.
 *
 * Wire format (gRPC over HTTP/2): each message is
 *     compressed-flag (1 byte) | length (4 bytes, big endian) | bytes
 * The client never offers compression (no grpc-accept-encoding), so a set
 * flag is a malformed answer.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"

void client__assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "client: assertion failed: %s (%s:%d)\n", expr, file, line);
    fflush(stderr);
    abort();
}

const char *client_strerror(int rc) {
    switch (rc) {
    case 0:
        return "success";
#define CLIENT__ERR_CASE(name, value, text)                                                        \
    case value:                                                                                    \
        return text;
        CLIENT_ERRORS(CLIENT__ERR_CASE)
#undef CLIENT__ERR_CASE
    default:
        break;
    }
    if (rc < 0 && rc > -4096) return uv_strerror(rc);
    return "unknown error";
}

const char *client_grpc_code_name(int code) {
    static const char *const names[] = {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    _Static_assert(sizeof(names) / sizeof(names[0]) == CLIENT_GRPC_UNAUTHENTICATED + 1,
                   "one name per gRPC code");
    if (code < 0 || code > CLIENT_GRPC_UNAUTHENTICATED) return "UNKNOWN";
    return names[code];
}

/* ---- reader ---------------------------------------------------------------------- */

void client__reader_init(struct client__reader *r, size_t max_bytes) {
    CLIENT__ASSERT(r != NULL);
    CLIENT__ASSERT(max_bytes <= UINT32_MAX);
    memset(r, 0, sizeof(*r));
    r->max_bytes = max_bytes;
}

void client__reader_free(struct client__reader *r) {
    CLIENT__ASSERT(r != NULL);
    free(r->buf);
    r->buf = NULL;
    r->buf_len = 0;
    r->buf_cap = 0;
}

size_t client__reader_pending(const struct client__reader *r) {
    return r->prefix_len + r->buf_len;
}

size_t client__reader_buffered(const struct client__reader *r) {
    return r->buf_cap;
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

uint32_t client__reader_declared(const struct client__reader *r) {
    return r->prefix_len == CLIENT__GRPC_PREFIX_BYTES ? be32(r->prefix + 1) : 0;
}

/* Validates a complete prefix and sets body_len. */
static int prefix_check(struct client__reader *r) {
    if (r->prefix[0] != 0) return CLIENT_EMALFORMED;
    uint32_t n = be32(r->prefix + 1);
    if ((uint64_t)n > (uint64_t)r->max_bytes) return CLIENT_ETOOBIG;
    r->body_len = n;
    return 0;
}

/* Makes room for `more` body bytes, growing geometrically but never past
 * the declared body length. */
static int buf_reserve(struct client__reader *r, size_t more) {
    size_t need = r->buf_len + more;
    CLIENT__ASSERT(need <= r->body_len);
    if (need <= r->buf_cap) return 0;
    size_t cap = r->buf_cap ? r->buf_cap : 4096;
    while (cap < need) cap *= 2;
    if (cap > r->body_len) cap = r->body_len;
    uint8_t *p = realloc(r->buf, cap);
    if (p == NULL) return CLIENT_ENOMEM;
    r->buf = p;
    r->buf_cap = cap;
    return 0;
}

int client__reader_feed(struct client__reader *r, const uint8_t *data, size_t len,
                        client__msg_cb cb, void *arg) {
    CLIENT__ASSERT(r != NULL);
    CLIENT__ASSERT(cb != NULL);
    CLIENT__ASSERT(len == 0 || data != NULL);
    if (r->failed) return 0;
    int rc = 0;
    while (len > 0) {
        if (r->prefix_len < CLIENT__GRPC_PREFIX_BYTES) {
            size_t take = CLIENT__GRPC_PREFIX_BYTES - r->prefix_len;
            if (take > len) take = len;
            memcpy(r->prefix + r->prefix_len, data, take);
            r->prefix_len += take;
            data += take;
            len -= take;
            if (r->prefix_len < CLIENT__GRPC_PREFIX_BYTES) break;
            rc = prefix_check(r);
            if (rc != 0) goto err_fail;
        }
        if (r->buf_len == 0 && len >= r->body_len) {
            /* The whole body lies in this chunk: deliver without a copy. */
            r->prefix_len = 0;
            rc = cb(arg, data, r->body_len);
            data += r->body_len;
            len -= r->body_len;
            if (rc != 0) goto err_fail;
            continue;
        }
        if (len == 0) break;
        size_t missing = r->body_len - r->buf_len;
        size_t take = missing < len ? missing : len;
        rc = buf_reserve(r, take);
        if (rc != 0) goto err_fail;
        memcpy(r->buf + r->buf_len, data, take);
        r->buf_len += take;
        data += take;
        len -= take;
        if (r->buf_len == r->body_len) {
            r->prefix_len = 0;
            r->buf_len = 0;
            rc = cb(arg, r->buf, r->body_len);
            /* Keep a small buffer for the next message; give large ones back. */
            if (r->buf_cap > 64u * 1024u) client__reader_free(r);
            if (rc != 0) goto err_fail;
        }
    }
    return 0;

err_fail:
    r->failed = true;
    client__reader_free(r);
    return rc;
}

int client__grpc_encode(const ProtobufCMessage *msg, size_t headroom, uint8_t **out,
                        size_t *out_len) {
    CLIENT__ASSERT(msg != NULL);
    CLIENT__ASSERT(out != NULL && out_len != NULL);
    size_t n = protobuf_c_message_get_packed_size(msg);
    if (n > CLIENT_SEND_MSG_BYTES_MAX) return CLIENT_ETOOBIG;
    uint8_t *buf = malloc(headroom + CLIENT__GRPC_PREFIX_BYTES + n);
    if (buf == NULL) return CLIENT_ENOMEM;
    uint8_t *p = buf + headroom;
    p[0] = 0;
    p[1] = (uint8_t)(n >> 24);
    p[2] = (uint8_t)(n >> 16);
    p[3] = (uint8_t)(n >> 8);
    p[4] = (uint8_t)n;
    size_t packed = protobuf_c_message_pack(msg, p + CLIENT__GRPC_PREFIX_BYTES);
    CLIENT__ASSERT(packed == n);
    *out = buf;
    *out_len = CLIENT__GRPC_PREFIX_BYTES + n;
    return 0;
}

/* ---- protobuf nesting check ------------------------------------------------------- */

/* Reads a base-128 varint of at most 10 bytes. */
static int varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    uint64_t x = 0;
    for (unsigned shift = 0; shift < 70; shift += 7) {
        if (*p >= end) return CLIENT_EMALFORMED;
        uint8_t b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if ((b & 0x80) == 0) {
            *v = x;
            return 0;
        }
    }
    return CLIENT_EMALFORMED;
}

static int check(const ProtobufCMessageDescriptor *desc, const uint8_t *p, const uint8_t *end,
                 unsigned depth_left) {
    while (p < end) {
        uint64_t tag, n;
        if (varint(&p, end, &tag) != 0) return CLIENT_EMALFORMED;
        uint64_t field = tag >> 3;
        if (field == 0 || field > 536870911u) return CLIENT_EMALFORMED;
        switch (tag & 7) {
        case 0: /* varint */
            if (varint(&p, end, &n) != 0) return CLIENT_EMALFORMED;
            break;
        case 1: /* 64-bit */
            if (end - p < 8) return CLIENT_EMALFORMED;
            p += 8;
            break;
        case 5: /* 32-bit */
            if (end - p < 4) return CLIENT_EMALFORMED;
            p += 4;
            break;
        case 2: { /* length-delimited */
            if (varint(&p, end, &n) != 0) return CLIENT_EMALFORMED;
            if (n > (uint64_t)(end - p)) return CLIENT_EMALFORMED;
            const ProtobufCFieldDescriptor *f =
                protobuf_c_message_descriptor_get_field(desc, (unsigned)field);
            if (f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE) {
                if (depth_left == 0) return CLIENT_EMALFORMED;
                int rc = check(f->descriptor, p, p + n, depth_left - 1);
                if (rc != 0) return rc;
            }
            p += n;
            break;
        }
        default: /* groups (3, 4) are not proto3; 6 and 7 do not exist */
            return CLIENT_EMALFORMED;
        }
    }
    return 0;
}

int client__proto_check(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
                        unsigned depth_max) {
    CLIENT__ASSERT(desc != NULL);
    CLIENT__ASSERT(desc->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC);
    if (len == 0) return 0;
    CLIENT__ASSERT(data != NULL);
    return check(desc, data, data + len, depth_max);
}

ProtobufCMessage *client__proto_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                                       size_t len) {
    static const uint8_t empty[1];
    if (client__proto_check(desc, data, len, CLIENT__PROTO_DEPTH_MAX) != 0) return NULL;
    return protobuf_c_message_unpack(desc, NULL, len, len ? data : empty);
}

/* ---- status helpers ---------------------------------------------------------------- */

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

size_t client__percent_decode(const char *in, size_t in_len, char *out, size_t out_size) {
    CLIENT__ASSERT(out != NULL);
    CLIENT__ASSERT(out_size > 0);
    size_t o = 0;
    for (size_t i = 0; i < in_len && o + 1 < out_size; i++) {
        if (in[i] == '%' && i + 2 < in_len) {
            int hi = hexval(in[i + 1]), lo = hexval(in[i + 2]);
            if (hi >= 0 && lo >= 0) {
                out[o++] = (char)(hi << 4 | lo);
                i += 2;
                continue;
            }
        }
        out[o++] = in[i];
    }
    out[o] = '\0';
    return o;
}

void client__grpc_timeout_format(uint64_t timeout_ms, char out[16]) {
    /* The value has at most 8 digits (gRPC HTTP/2 spec). */
    if (timeout_ms <= 99999999u)
        snprintf(out, 16, "%um", (unsigned)timeout_ms);
    else
        snprintf(out, 16, "%uS",
                 (unsigned)(timeout_ms / 1000u > 99999999u ? 99999999u : timeout_ms / 1000u));
}

int client__grpc_code_from_http(int http_status) {
    switch (http_status) {
    case 400:
        return CLIENT_GRPC_INTERNAL;
    case 401:
        return CLIENT_GRPC_UNAUTHENTICATED;
    case 403:
        return CLIENT_GRPC_PERMISSION_DENIED;
    case 404:
        return CLIENT_GRPC_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
        return CLIENT_GRPC_UNAVAILABLE;
    default:
        return CLIENT_GRPC_UNKNOWN;
    }
}

/* ---- URLs ------------------------------------------------------------------------ */

static bool name_char(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '-' || ch == '_';
}

int client__url_parse(const char *s, struct client__url *u) {
    CLIENT__ASSERT(u != NULL);
    memset(u, 0, sizeof(*u));
    if (s == NULL) return CLIENT_EURL;
    const char *p = s;
    if (strncmp(p, "https://", 8) == 0) {
        u->tls = true;
        p += 8;
    } else if (strncmp(p, "http://", 7) == 0) {
        p += 7;
    } else if (strstr(p, "://") != NULL) {
        return CLIENT_EURL; /* unix://, grpc://, ... */
    }
    const char *host, *host_end;
    bool bracketed = false;
    if (*p == '[') {
        host = p + 1;
        host_end = strchr(host, ']');
        if (host_end == NULL) return CLIENT_EURL;
        p = host_end + 1;
        bracketed = true;
    } else {
        host = p;
        while (*p != '\0' && *p != ':' && *p != '/') {
            if (!name_char(*p)) return CLIENT_EURL;
            p++;
        }
        host_end = p;
    }
    size_t hlen = (size_t)(host_end - host);
    if (hlen == 0 || hlen >= sizeof(u->host)) return CLIENT_EURL;
    memcpy(u->host, host, hlen);
    u->host[hlen] = '\0';
    unsigned long port = 2379;
    if (*p == ':') {
        p++;
        if (*p < '0' || *p > '9') return CLIENT_EURL;
        port = 0;
        while (*p >= '0' && *p <= '9') {
            port = port * 10 + (unsigned long)(*p - '0');
            if (port > 65535) return CLIENT_EURL;
            p++;
        }
        if (port == 0) return CLIENT_EURL;
    }
    if (*p == '/') p++;
    if (*p != '\0') return CLIENT_EURL;
    uint8_t addr[16];
    if (bracketed) {
        if (inet_pton(AF_INET6, u->host, addr) != 1) return CLIENT_EURL;
        u->host_is_ip = true;
    } else {
        u->host_is_ip = inet_pton(AF_INET, u->host, addr) == 1;
    }
    snprintf(u->port, sizeof(u->port), "%lu", port);
    snprintf(u->authority, sizeof(u->authority), bracketed ? "[%s]:%s" : "%s:%s", u->host, u->port);
    return 0;
}
