/*
 * grpc.c - gRPC message framing, protobuf input checks and status trailers.
 *
 * Everything a client sends passes through here before any protobuf code
 * sees it, so every length is checked before it is trusted: the declared
 * message size against the receive limit before a byte is buffered, and the
 * protobuf nesting depth before protobuf-c's recursive unpacker runs. The
 * code does no I/O and keeps no global state; it is unit tested and fuzzed
 * (tests/fuzz/fuzz_api_request.c) on its own.
 *
 * Wire format (gRPC over HTTP/2 spec): each message is
 *     compressed-flag (1 byte: 0 or 1) | length (4 bytes, big endian) | bytes
 * and a call ends with trailers grpc-status (decimal) and grpc-message
 * (percent-encoded UTF-8).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"

void api__assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "api: assertion failed: %s (%s:%d)\n", expr, file, line);
    fflush(stderr);
    abort();
}

const char *api_strerror(int rc) {
    switch (rc) {
    case 0:
        return "success";
#define API__ERR_CASE(name, value, text)                                                           \
    case value:                                                                                    \
        return text;
        API_ERRORS(API__ERR_CASE)
#undef API__ERR_CASE
    default:
        break;
    }
    if (rc < 0 && rc > -4096) return uv_strerror(rc);
    return "unknown error";
}

const char *api_grpc_code_name(int code) {
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
    _Static_assert(sizeof(names) / sizeof(names[0]) == API_GRPC_UNAUTHENTICATED + 1,
                   "one name per gRPC code");
    if (code < 0 || code > API_GRPC_UNAUTHENTICATED) return "UNKNOWN";
    return names[code];
}

/* ---- reader ---------------------------------------------------------------- */

void api__grpc_reader_init(struct api__grpc_reader *r, size_t max_bytes) {
    API__ASSERT(r != NULL);
    memset(r, 0, sizeof(*r));
    r->max_bytes = max_bytes;
}

void api__grpc_reader_free(struct api__grpc_reader *r) {
    API__ASSERT(r != NULL);
    free(r->buf);
    r->buf = NULL;
    r->buf_len = 0;
    r->buf_cap = 0;
}

size_t api__grpc_reader_pending(const struct api__grpc_reader *r) {
    return r->prefix_len + r->buf_len;
}

size_t api__grpc_reader_buffered(const struct api__grpc_reader *r) {
    return r->buf_cap;
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Validates a complete prefix; sets body_len. */
static int prefix_check(struct api__grpc_reader *r) {
    if (r->prefix[0] == 1) return API_ECOMPRESSED;
    if (r->prefix[0] != 0) return API_EMALFORMED;
    uint32_t n = be32(r->prefix + 1);
    if ((uint64_t)n > (uint64_t)r->max_bytes) return API_ETOOBIG;
    r->body_len = n;
    return 0;
}

/* Makes room for `more` bytes in buf, growing geometrically but never past
 * the declared body length. */
static int buf_reserve(struct api__grpc_reader *r, size_t more) {
    size_t need = r->buf_len + more;
    API__ASSERT(need <= r->body_len);
    if (need <= r->buf_cap) return 0;
    size_t cap = r->buf_cap ? r->buf_cap : 4096;
    while (cap < need) cap *= 2;
    if (cap > r->body_len) cap = r->body_len;
    uint8_t *p = qfs_realloc(r->buf, cap);
    if (p == NULL) return API_ENOMEM;
    r->buf = p;
    r->buf_cap = cap;
    return 0;
}

int api__grpc_reader_feed(struct api__grpc_reader *r, const uint8_t *data, size_t len,
                          api__grpc_msg_cb cb, void *arg) {
    API__ASSERT(r != NULL);
    API__ASSERT(cb != NULL);
    if (r->failed) return 0;
    int rc = 0;
    while (len > 0) {
        if (r->prefix_len < API__GRPC_PREFIX_BYTES) {
            size_t take = API__GRPC_PREFIX_BYTES - r->prefix_len;
            if (take > len) take = len;
            memcpy(r->prefix + r->prefix_len, data, take);
            r->prefix_len += take;
            data += take;
            len -= take;
            if (r->prefix_len < API__GRPC_PREFIX_BYTES) break;
            rc = prefix_check(r);
            if (rc != 0) goto err_fail;
        }
        size_t missing = r->body_len - r->buf_len;
        if (r->buf_len == 0 && len >= r->body_len) {
            /* Whole body in this chunk: no copy. */
            r->prefix_len = 0;
            rc = cb(arg, data, r->body_len);
            data += r->body_len;
            len -= r->body_len;
            if (rc != 0) goto err_fail;
            continue;
        }
        if (len == 0) break;
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
            /* Messages are usually of similar size; keep small buffers for
             * the next one, give large ones back. */
            if (r->buf_cap > 64u * 1024u) api__grpc_reader_free(r);
            if (rc != 0) goto err_fail;
        }
    }
    return 0;

err_fail:
    r->failed = true;
    api__grpc_reader_free(r);
    return rc;
}

void api__grpc_prefix_write(uint8_t out[API__GRPC_PREFIX_BYTES], uint32_t len) {
    out[0] = 0;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
}

int api__grpc_encode(const ProtobufCMessage *msg, size_t max_bytes, size_t headroom, uint8_t **out,
                     size_t *out_len) {
    API__ASSERT(msg != NULL);
    API__ASSERT(out != NULL && out_len != NULL);
    size_t n = protobuf_c_message_get_packed_size(msg);
    if (n > max_bytes || n > UINT32_MAX) return API_ETOOBIG;
    if (headroom > SIZE_MAX - API__GRPC_PREFIX_BYTES - n) return API_ETOOBIG;
    uint8_t *buf = qfs_malloc(headroom + API__GRPC_PREFIX_BYTES + n);
    if (buf == NULL) return API_ENOMEM;
    api__grpc_prefix_write(buf + headroom, (uint32_t)n);
    size_t packed = protobuf_c_message_pack(msg, buf + headroom + API__GRPC_PREFIX_BYTES);
    API__ASSERT(packed == n);
    *out = buf;
    *out_len = API__GRPC_PREFIX_BYTES + n;
    return 0;
}

uint32_t api__grpc_reader_declared(const struct api__grpc_reader *r) {
    return r->prefix_len == API__GRPC_PREFIX_BYTES ? be32(r->prefix + 1) : 0;
}

/* ---- protobuf nesting check ------------------------------------------------ */

/* Reads a base-128 varint of at most 10 bytes. */
static int varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    uint64_t x = 0;
    for (unsigned shift = 0; shift < 70; shift += 7) {
        if (*p >= end) return API_EMALFORMED;
        uint8_t b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if ((b & 0x80) == 0) {
            *v = x;
            return 0;
        }
    }
    return API_EMALFORMED;
}

static int check(const ProtobufCMessageDescriptor *desc, const uint8_t *p, const uint8_t *end,
                 unsigned depth_left) {
    while (p < end) {
        uint64_t tag, n;
        if (varint(&p, end, &tag) != 0) return API_EMALFORMED;
        uint64_t field = tag >> 3;
        if (field == 0 || field > 536870911u) return API_EMALFORMED;
        switch (tag & 7) {
        case 0: /* varint */
            if (varint(&p, end, &n) != 0) return API_EMALFORMED;
            break;
        case 1: /* 64-bit */
            if (end - p < 8) return API_EMALFORMED;
            p += 8;
            break;
        case 5: /* 32-bit */
            if (end - p < 4) return API_EMALFORMED;
            p += 4;
            break;
        case 2: { /* length-delimited */
            if (varint(&p, end, &n) != 0) return API_EMALFORMED;
            if (n > (uint64_t)(end - p)) return API_EMALFORMED;
            const ProtobufCFieldDescriptor *f =
                protobuf_c_message_descriptor_get_field(desc, (unsigned)field);
            if (f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE) {
                if (depth_left == 0) return API_EMALFORMED;
                int rc = check(f->descriptor, p, p + n, depth_left - 1);
                if (rc != 0) return rc;
            }
            p += n;
            break;
        }
        default: /* groups (3, 4) are not proto3; 6 and 7 do not exist */
            return API_EMALFORMED;
        }
    }
    return 0;
}

int api__proto_check(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
                     unsigned depth_max) {
    API__ASSERT(desc != NULL);
    API__ASSERT(desc->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC);
    if (len == 0) return 0;
    API__ASSERT(data != NULL);
    return check(desc, data, data + len, depth_max);
}

static void *proto_alloc(void *data, size_t size) {
    void *p = qfs_malloc(size);
    if (p == NULL) *(bool *)data = true;
    return p;
}

static void proto_free(void *data, void *p) {
    (void)data;
    free(p);
}

ProtobufCMessage *api__proto_unpack_err(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                                        size_t len, int *err) {
    static const uint8_t empty[1];
    API__ASSERT(err != NULL);
    *err = API_EMALFORMED;
    if (api__proto_check(desc, data, len, API__PROTO_DEPTH_MAX) != 0) return NULL;
    /* protobuf-c allocates through qfs_malloc, so that the allocation tests
     * reach unpacking too, and says only NULL: the flag tells out of memory
     * from malformed input. Its free is free(), which lets the messages be
     * released with protobuf_c_message_free_unpacked(m, NULL). */
    bool out_of_memory = false;
    ProtobufCAllocator a = {proto_alloc, proto_free, &out_of_memory};
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, &a, len, len ? data : empty);
    if (m == NULL && out_of_memory) *err = API_ENOMEM;
    return m;
}

ProtobufCMessage *api__proto_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                                    size_t len) {
    int err;
    return api__proto_unpack_err(desc, data, len, &err);
}

/* ---- trailers ---------------------------------------------------------------- */

/* Length of the UTF-8 sequence a lead byte starts (1 for anything else, so
 * invalid input is still cut somewhere). */
static size_t utf8_len(uint8_t b) {
    if (b >= 0xf0 && b <= 0xf7) return 4;
    if (b >= 0xe0) return b <= 0xef ? 3 : 1;
    if (b >= 0xc0) return 2;
    return 1;
}

size_t api__grpc_percent_encode(const char *in, size_t in_len, char *out) {
    static const char hex[] = "0123456789ABCDEF";
    API__ASSERT(out != NULL);
    const uint8_t *s = (const uint8_t *)in;
    size_t i = 0, o = 0;
    while (i < in_len) {
        size_t seq = utf8_len(s[i]);
        if (i + seq > API__GRPC_MESSAGE_BYTES_MAX) break;
        if (i + seq > in_len) seq = in_len - i;
        for (size_t k = 0; k < seq; k++, i++) {
            uint8_t c = s[i];
            if (c >= 0x20 && c <= 0x7e && c != '%') {
                out[o++] = (char)c;
            } else {
                out[o++] = '%';
                out[o++] = hex[c >> 4];
                out[o++] = hex[c & 15];
            }
        }
    }
    API__ASSERT(o < API__GRPC_MESSAGE_ENCODED_MAX);
    out[o] = '\0';
    return o;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

size_t api__grpc_percent_decode(const char *in, size_t in_len, char *out) {
    API__ASSERT(out != NULL);
    size_t o = 0;
    for (size_t i = 0; i < in_len; i++) {
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

size_t api__grpc_status_format(int code, char out[4]) {
    API__ASSERT(code >= 0 && code <= 999);
    int n = snprintf(out, 4, "%d", code);
    API__ASSERT(n > 0 && n < 4);
    return (size_t)n;
}
