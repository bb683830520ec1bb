/*
 * json.c - protobuf messages <-> JSON as etcd 3.4's grpc-gateway marshals
 * them (golang/protobuf jsonpb with OrigName: true, EmitDefaults: false),
 * driven by protobuf-c descriptors, so every etcd message is covered by one
 * encoder and one decoder.
 *
 * Encoding walks the C struct: fields in descriptor order (etcd's .proto
 * files declare fields in number order, as jsonpb emits them), proto3
 * defaults omitted, a set oneof member always shown, 64-bit integers as
 * decimal strings, bytes as standard base64, enums by name, strings escaped
 * as Go's encoding/json escapes them (<, >, & as \u00XX; invalid UTF-8 as
 * U+FFFD).
 *
 * Decoding does not build the C struct: it writes protobuf wire format,
 * which the caller unpacks with the same checked code as a gRPC request.
 * A first pass checks the JSON syntax of one value and finds its end (Go's
 * json.Decoder does the same before unmarshalling, so syntax errors win
 * over type errors); a second pass converts it. Error texts copy Go's, as
 * clients see them in the gateway's 400 body. Every recursion is bounded by
 * API__PROTO_DEPTH_MAX; no input makes memory grow faster than the input.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"

/* ---- growable buffer ------------------------------------------------------ */

void api__buf_init(struct api__buf *b, size_t max) {
    API__ASSERT(b != NULL);
    memset(b, 0, sizeof(*b));
    b->max = max;
}

void api__buf_free(struct api__buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

int api__buf_reserve(struct api__buf *b, size_t n) {
    if (b->failed) return b->failed;
    if (n > b->max || b->len > b->max - n) {
        b->failed = API_ETOOBIG;
        return b->failed;
    }
    if (b->len + n <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n) cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
    uint8_t *p = qfs_realloc(b->p, cap);
    if (p == NULL) {
        b->failed = API_ENOMEM;
        return b->failed;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

int api__buf_add(struct api__buf *b, const void *p, size_t n) {
    int rc = api__buf_reserve(b, n);
    if (rc != 0) return rc;
    if (n > 0) memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

int api__buf_str(struct api__buf *b, const char *s) {
    return api__buf_add(b, s, strlen(s));
}

int api__buf_printf(struct api__buf *b, const char *fmt, ...) {
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) return API_EINVAL;
    if ((size_t)n < sizeof(small)) return api__buf_add(b, small, (size_t)n);
    int rc = api__buf_reserve(b, (size_t)n + 1);
    if (rc != 0) return rc;
    va_start(ap, fmt);
    vsnprintf((char *)b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

/* ---- base64 (Go's encoding/base64 StdEncoding) ------------------------------- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_encode(struct api__buf *b, const uint8_t *p, size_t n) {
    int rc = api__buf_reserve(b, (n + 2) / 3 * 4);
    if (rc != 0) return rc;
    char *o = (char *)b->p + b->len;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = b64_alphabet[v >> 18 & 63];
        *o++ = b64_alphabet[v >> 12 & 63];
        *o++ = b64_alphabet[v >> 6 & 63];
        *o++ = b64_alphabet[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        *o++ = b64_alphabet[v >> 18 & 63];
        *o++ = b64_alphabet[v >> 12 & 63];
        *o++ = i + 1 < n ? b64_alphabet[v >> 6 & 63] : '=';
        *o++ = '=';
    }
    b->len = (size_t)((uint8_t *)o - b->p);
    return 0;
}

static int b64_value(uint8_t c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/*
 * Decodes standard padded base64 as Go's StdEncoding.Decode does, '\r' and
 * '\n' skipped anywhere. Writes at most (n / 4 + 1) * 3 bytes to out and
 * sets *out_len; returns -1 or the offset Go's CorruptInputError reports.
 */
long api__b64_decode(const uint8_t *s, size_t n, uint8_t *out, size_t *out_len) {
    size_t si = 0, o = 0;
    for (;;) {
        int dbuf[4] = {0, 0, 0, 0};
        size_t dlen = 4;
        bool end = false;
        for (size_t j = 0; j < 4; j++) {
            if (si == n) {
                if (j == 0) {
                    *out_len = o;
                    return -1;
                }
                return (long)(si - j); /* padding is required */
            }
            uint8_t in = s[si++];
            int v = b64_value(in);
            if (v >= 0) {
                dbuf[j] = v;
                continue;
            }
            if (in == '\n' || in == '\r') {
                j--;
                continue;
            }
            if (in != '=') return (long)(si - 1);
            if (j < 2) return (long)(si - 1);
            if (j == 2) {
                while (si < n && (s[si] == '\n' || s[si] == '\r')) si++;
                if (si == n) return (long)n;
                if (s[si] != '=') return (long)(si - 1);
                si++;
            }
            while (si < n && (s[si] == '\n' || s[si] == '\r')) si++;
            if (si < n) return (long)si; /* trailing garbage */
            dlen = j;
            end = true;
            break;
        }
        uint32_t val = (uint32_t)dbuf[0] << 18 | (uint32_t)dbuf[1] << 12 | (uint32_t)dbuf[2] << 6 |
                       (uint32_t)dbuf[3];
        if (dlen >= 2) out[o++] = (uint8_t)(val >> 16);
        if (dlen >= 3) out[o++] = (uint8_t)(val >> 8);
        if (dlen == 4) out[o++] = (uint8_t)val;
        if (end) {
            *out_len = o;
            return -1;
        }
    }
}

/* ---- encoder ---------------------------------------------------------------- */

/* Decodes one UTF-8 sequence at p[0..n); returns its length, or 0 when it
 * is not valid UTF-8 (Go then writes U+FFFD for one byte). */
static size_t utf8_len(const uint8_t *p, size_t n, uint32_t *cp) {
    uint8_t c = p[0];
    size_t len;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if ((c & 0xE0) == 0xC0) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        v = v << 6 | (p[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

int api__json_string(struct api__buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    const uint8_t *p = (const uint8_t *)s;
    api__buf_add(b, "\"", 1);
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t l = utf8_len(p + i, n - i, &cp);
        if (l == 0) {
            api__buf_str(b, "\\ufffd");
            i++;
            continue;
        }
        if (cp == '"' || cp == '\\') {
            char e[2] = {'\\', (char)cp};
            api__buf_add(b, e, 2);
        } else if (cp == '\n') {
            api__buf_str(b, "\\n");
        } else if (cp == '\r') {
            api__buf_str(b, "\\r");
        } else if (cp == '\t') {
            api__buf_str(b, "\\t");
        } else if (cp < 0x20 || cp == '<' || cp == '>' || cp == '&') {
            char e[6] = {'\\', 'u', '0', '0', hex[cp >> 4], hex[cp & 15]};
            api__buf_add(b, e, 6);
        } else if (cp == 0x2028 || cp == 0x2029) {
            api__buf_str(b, cp == 0x2028 ? "\\u2028" : "\\u2029");
        } else {
            api__buf_add(b, p + i, l);
        }
        i += l;
    }
    return api__buf_add(b, "\"", 1);
}

static const void *member(const ProtobufCMessage *m, unsigned offset) {
    return (const uint8_t *)m + offset;
}

/* Writes one value of field f stored at p. */
static int encode_value(struct api__buf *b, const ProtobufCFieldDescriptor *f, const void *p,
                        unsigned depth) {
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return api__buf_printf(b, "%" PRId32, *(const int32_t *)p);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return api__buf_printf(b, "%" PRIu32, *(const uint32_t *)p);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return api__buf_printf(b, "\"%" PRId64 "\"", *(const int64_t *)p);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return api__buf_printf(b, "\"%" PRIu64 "\"", *(const uint64_t *)p);
    case PROTOBUF_C_TYPE_FLOAT:
        return api__buf_printf(b, "%.9g", (double)*(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        return api__buf_printf(b, "%.17g", *(const double *)p);
    case PROTOBUF_C_TYPE_BOOL:
        return api__buf_str(b, *(const protobuf_c_boolean *)p ? "true" : "false");
    case PROTOBUF_C_TYPE_ENUM: {
        int v = *(const int *)p;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        if (ev == NULL) return api__buf_printf(b, "%d", v);
        return api__buf_printf(b, "\"%s\"", ev->name);
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        return api__json_string(b, s ? s : "", s ? strlen(s) : 0);
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *d = p;
        api__buf_add(b, "\"", 1);
        b64_encode(b, d->data, d->len);
        return api__buf_add(b, "\"", 1);
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)p;
        if (depth >= API__PROTO_DEPTH_MAX) return API_ETOOBIG;
        return api__json_encode_depth(b, sub, depth + 1);
    }
    }
    return API_EINVAL;
}

static size_t value_size(const ProtobufCFieldDescriptor *f) {
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
        return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_ENUM:
        return sizeof(int);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    }
    return 0;
}

/* Whether a proto3 field without presence holds its default (omitted). */
static bool is_default(const ProtobufCFieldDescriptor *f, const void *p) {
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        return s == NULL || s[0] == '\0';
    }
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)p)->len == 0;
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(ProtobufCMessage *const *)p == NULL;
    default: {
        static const uint8_t zero[8];
        size_t n = value_size(f);
        return memcmp(p, zero, n) == 0;
    }
    }
}

int api__json_encode_depth(struct api__buf *b, const ProtobufCMessage *m, unsigned depth) {
    API__ASSERT(b != NULL && m != NULL);
    const ProtobufCMessageDescriptor *d = m->descriptor;
    bool first = true;
    api__buf_add(b, "{", 1);
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const void *p = member(m, f->offset);
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)member(m, f->quantifier_offset);
            if (n == 0) continue;
            api__buf_printf(b, "%s\"%s\":[", first ? "" : ",", f->name);
            const uint8_t *arr = *(const uint8_t *const *)p;
            size_t sz = value_size(f);
            for (size_t k = 0; k < n; k++) {
                if (k > 0) api__buf_add(b, ",", 1);
                int rc = encode_value(b, f, arr + k * sz, depth);
                if (rc != 0) return rc;
            }
            api__buf_add(b, "]", 1);
            first = false;
            continue;
        }
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            if (*(const uint32_t *)member(m, f->quantifier_offset) != f->id) continue;
        } else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset != 0) {
            if (!*(const protobuf_c_boolean *)member(m, f->quantifier_offset)) continue;
        } else if (is_default(f, p)) {
            continue;
        }
        api__buf_printf(b, "%s\"%s\":", first ? "" : ",", f->name);
        int rc = encode_value(b, f, p, depth);
        if (rc != 0) return rc;
        first = false;
    }
    return api__buf_add(b, "}", 1);
}

int api__json_encode(struct api__buf *b, const ProtobufCMessage *m) {
    return api__json_encode_depth(b, m, 0);
}

/* ---- decoder: syntax pass --------------------------------------------------- */

struct jerr {
    char *msg;
    size_t size;
};

static int fail(struct jerr *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct jerr *e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, e->size, fmt, ap);
    va_end(ap);
    return API_EMALFORMED;
}

/* Go's quoteChar: the offending byte as a quoted Go rune literal. */
static void quote_char(uint8_t c, char out[12]) {
    if (c == '\'')
        snprintf(out, 12, "'\\''");
    else if (c == '"')
        snprintf(out, 12, "'\"'");
    else if (c >= 0x20 && c < 0x7F)
        snprintf(out, 12, "'%c'", c);
    else if (c == '\n')
        snprintf(out, 12, "'\\n'");
    else if (c == '\r')
        snprintf(out, 12, "'\\r'");
    else if (c == '\t')
        snprintf(out, 12, "'\\t'");
    else if (c < 0x80)
        snprintf(out, 12, "'\\x%02x'", c);
    else
        snprintf(out, 12, "'\\ufffd'");
}

struct scan {
    const uint8_t *p;
    size_t n, i;
    struct jerr *e;
};

static bool is_ws(uint8_t c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void skip_ws(struct scan *s) {
    while (s->i < s->n && is_ws(s->p[s->i])) s->i++;
}

static int bad_char(struct scan *s, const char *context) {
    if (s->i >= s->n) return fail(s->e, "unexpected EOF");
    char q[12];
    quote_char(s->p[s->i], q);
    return fail(s->e, "invalid character %s %s", q, context);
}

static int scan_string(struct scan *s) {
    API__ASSERT(s->p[s->i] == '"');
    s->i++;
    while (s->i < s->n) {
        uint8_t c = s->p[s->i];
        if (c == '"') {
            s->i++;
            return 0;
        }
        if (c < 0x20) return bad_char(s, "in string literal");
        if (c == '\\') {
            s->i++;
            if (s->i >= s->n) break;
            c = s->p[s->i];
            if (c == 'u') {
                for (int k = 0; k < 4; k++) {
                    s->i++;
                    if (s->i >= s->n) return fail(s->e, "unexpected EOF");
                    uint8_t h = s->p[s->i];
                    if (!((h >= '0' && h <= '9') || (h >= 'a' && h <= 'f') ||
                          (h >= 'A' && h <= 'F')))
                        return bad_char(s, "in \\u hexadecimal character escape");
                }
            } else if (!strchr("\"\\/bfnrt", c) || c == '\0') {
                return bad_char(s, "in string escape code");
            }
        }
        s->i++;
    }
    return fail(s->e, "unexpected EOF");
}

static int scan_digits(struct scan *s) {
    if (s->i >= s->n) return fail(s->e, "unexpected EOF");
    if (s->p[s->i] < '0' || s->p[s->i] > '9') return bad_char(s, "in numeric literal");
    while (s->i < s->n && s->p[s->i] >= '0' && s->p[s->i] <= '9') s->i++;
    return 0;
}

/* A number ends at the first byte that cannot continue it; a value at the
 * end of the input is complete only if something follows, which Go's
 * decoder demands too ("unexpected EOF" for a bare number at the end is
 * not Go's behaviour for a top-level number, which is accepted). */
static int scan_number(struct scan *s) {
    if (s->p[s->i] == '-') {
        s->i++;
        if (s->i >= s->n) return fail(s->e, "unexpected EOF");
        if (s->p[s->i] < '0' || s->p[s->i] > '9') return bad_char(s, "in numeric literal");
    }
    if (s->p[s->i] == '0')
        s->i++;
    else if (scan_digits(s) != 0)
        return API_EMALFORMED;
    if (s->i < s->n && s->p[s->i] == '.') {
        s->i++;
        if (scan_digits(s) != 0) return API_EMALFORMED;
    }
    if (s->i < s->n && (s->p[s->i] == 'e' || s->p[s->i] == 'E')) {
        s->i++;
        if (s->i < s->n && (s->p[s->i] == '+' || s->p[s->i] == '-')) s->i++;
        if (scan_digits(s) != 0) return API_EMALFORMED;
    }
    return 0;
}

static int scan_literal(struct scan *s, const char *lit) {
    size_t n = strlen(lit);
    for (size_t k = 0; k < n; k++, s->i++) {
        if (s->i >= s->n) return fail(s->e, "unexpected EOF");
        if (s->p[s->i] != (uint8_t)lit[k]) {
            char ctx[48];
            snprintf(ctx, sizeof(ctx), "in literal %s (expecting '%c')", lit, lit[k]);
            return bad_char(s, ctx);
        }
    }
    return 0;
}

static int scan_value(struct scan *s, unsigned depth) {
    skip_ws(s);
    if (s->i >= s->n) return fail(s->e, "unexpected EOF");
    if (depth > API__PROTO_DEPTH_MAX) return fail(s->e, "exceeded max depth");
    uint8_t c = s->p[s->i];
    switch (c) {
    case '{':
        s->i++;
        skip_ws(s);
        if (s->i < s->n && s->p[s->i] == '}') {
            s->i++;
            return 0;
        }
        for (;;) {
            skip_ws(s);
            if (s->i >= s->n) return fail(s->e, "unexpected EOF");
            if (s->p[s->i] != '"') return bad_char(s, "looking for beginning of object key string");
            if (scan_string(s) != 0) return API_EMALFORMED;
            skip_ws(s);
            if (s->i >= s->n) return fail(s->e, "unexpected EOF");
            if (s->p[s->i] != ':') return bad_char(s, "after object key");
            s->i++;
            if (scan_value(s, depth + 1) != 0) return API_EMALFORMED;
            skip_ws(s);
            if (s->i >= s->n) return fail(s->e, "unexpected EOF");
            if (s->p[s->i] == ',') {
                s->i++;
                continue;
            }
            if (s->p[s->i] == '}') {
                s->i++;
                return 0;
            }
            return bad_char(s, "after object key:value pair");
        }
    case '[':
        s->i++;
        skip_ws(s);
        if (s->i < s->n && s->p[s->i] == ']') {
            s->i++;
            return 0;
        }
        for (;;) {
            if (scan_value(s, depth + 1) != 0) return API_EMALFORMED;
            skip_ws(s);
            if (s->i >= s->n) return fail(s->e, "unexpected EOF");
            if (s->p[s->i] == ',') {
                s->i++;
                continue;
            }
            if (s->p[s->i] == ']') {
                s->i++;
                return 0;
            }
            return bad_char(s, "after array element");
        }
    case '"':
        return scan_string(s);
    case 't':
        return scan_literal(s, "true");
    case 'f':
        return scan_literal(s, "false");
    case 'n':
        return scan_literal(s, "null");
    default:
        if (c == '-' || (c >= '0' && c <= '9')) return scan_number(s);
        return bad_char(s, "looking for beginning of value");
    }
}

/* ---- decoder: conversion pass ---------------------------------------------- */

/* A JSON value already checked by scan_value: p[0..n). */
struct jval {
    const uint8_t *p;
    size_t n;
};

static void wire_varint(struct api__buf *w, uint64_t v) {
    uint8_t t[10];
    size_t n = 0;
    do {
        t[n++] = (uint8_t)((v & 0x7F) | (v > 0x7F ? 0x80 : 0));
        v >>= 7;
    } while (v != 0);
    api__buf_add(w, t, n);
}

static void wire_tag(struct api__buf *w, uint32_t id, unsigned wt) {
    wire_varint(w, (uint64_t)id << 3 | wt);
}

static void wire_fixed(struct api__buf *w, uint64_t v, size_t n) {
    uint8_t t[8];
    for (size_t k = 0; k < n; k++) t[k] = (uint8_t)(v >> (8 * k));
    api__buf_add(w, t, n);
}

/* Go's name of a field's element type, as json errors print it. */
static void go_type(const ProtobufCFieldDescriptor *f, char *out, size_t size) {
    const char *pkg = NULL, *name = NULL;
    const char *base;
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        base = "int32";
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        base = "uint32";
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        base = "int64";
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        base = "uint64";
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        base = "float32";
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        base = "float64";
        break;
    case PROTOBUF_C_TYPE_BOOL:
        base = "bool";
        break;
    case PROTOBUF_C_TYPE_STRING:
        base = "string";
        break;
    case PROTOBUF_C_TYPE_BYTES:
        base = "[]uint8";
        break;
    case PROTOBUF_C_TYPE_ENUM:
        pkg = ((const ProtobufCEnumDescriptor *)f->descriptor)->package_name;
        name = ((const ProtobufCEnumDescriptor *)f->descriptor)->name;
        base = "";
        break;
    case PROTOBUF_C_TYPE_MESSAGE:
    default:
        pkg = ((const ProtobufCMessageDescriptor *)f->descriptor)->package_name;
        name = ((const ProtobufCMessageDescriptor *)f->descriptor)->name;
        base = "*";
        break;
    }
    const char *rep = f->label == PROTOBUF_C_LABEL_REPEATED ? "[]" : "";
    if (name == NULL) {
        snprintf(out, size, "%s%s", rep, base);
        return;
    }
    /* "etcdserverpb.RangeRequest.SortOrder" -> "etcdserverpb.RangeRequest_SortOrder" */
    size_t plen = pkg ? strlen(pkg) : 0;
    const char *rest = name;
    if (plen > 0 && strncmp(name, pkg, plen) == 0 && name[plen] == '.') rest = name + plen + 1;
    int n = snprintf(out, size, "%s%s%s%s", rep, base, pkg ? pkg : "", plen ? "." : "");
    for (size_t k = 0; rest[k] != '\0' && n >= 0 && (size_t)n + 1 < size; k++)
        out[n++] = rest[k] == '.' ? '_' : rest[k];
    if (n >= 0 && (size_t)n < size) out[n] = '\0';
}

static const char *kind_name(uint8_t c) {
    switch (c) {
    case '{':
        return "object";
    case '[':
        return "array";
    case '"':
        return "string";
    case 't':
    case 'f':
        return "bool";
    default:
        return "number";
    }
}

static int type_error(struct jerr *e, const ProtobufCFieldDescriptor *f, struct jval v,
                      bool element) {
    char t[160];
    go_type(f, t, sizeof(t));
    const char *tn = element && t[0] == '[' ? t + 2 : t;
    return fail(e, "json: cannot unmarshal %s into Go value of type %s", kind_name(v.p[0]), tn);
}

/* Unquotes a checked JSON string into out (a buffer of at least v.n bytes):
 * escapes resolved, surrogate pairs joined, bad ones and invalid UTF-8
 * replaced by U+FFFD (3 bytes, never longer than what it replaces... except
 * a lone invalid byte, hence the caller's 3x buffer). */
static size_t unquote(struct jval v, uint8_t *out) {
    size_t o = 0;
    size_t i = 1, end = v.n - 1;
    while (i < end) {
        uint8_t c = v.p[i];
        if (c != '\\') {
            uint32_t cp;
            size_t l = utf8_len(v.p + i, end - i, &cp);
            if (l == 0) {
                memcpy(out + o, "\xEF\xBF\xBD", 3);
                o += 3;
                i++;
            } else {
                memcpy(out + o, v.p + i, l);
                o += l;
                i += l;
            }
            continue;
        }
        c = v.p[i + 1];
        i += 2;
        uint32_t cp;
        switch (c) {
        case 'b':
            out[o++] = '\b';
            continue;
        case 'f':
            out[o++] = '\f';
            continue;
        case 'n':
            out[o++] = '\n';
            continue;
        case 'r':
            out[o++] = '\r';
            continue;
        case 't':
            out[o++] = '\t';
            continue;
        case 'u': {
            cp = (uint32_t)strtoul((char[]){(char)v.p[i], (char)v.p[i + 1], (char)v.p[i + 2],
                                            (char)v.p[i + 3], 0},
                                   NULL, 16);
            i += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && i + 6 <= end && v.p[i] == '\\' &&
                v.p[i + 1] == 'u') {
                uint32_t lo = (uint32_t)strtoul((char[]){(char)v.p[i + 2], (char)v.p[i + 3],
                                                         (char)v.p[i + 4], (char)v.p[i + 5], 0},
                                                NULL, 16);
                if (lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
            }
            if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD;
            if (cp < 0x80) {
                out[o++] = (uint8_t)cp;
            } else if (cp < 0x800) {
                out[o++] = (uint8_t)(0xC0 | cp >> 6);
                out[o++] = (uint8_t)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                out[o++] = (uint8_t)(0xE0 | cp >> 12);
                out[o++] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
                out[o++] = (uint8_t)(0x80 | (cp & 0x3F));
            } else {
                out[o++] = (uint8_t)(0xF0 | cp >> 18);
                out[o++] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
                out[o++] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
                out[o++] = (uint8_t)(0x80 | (cp & 0x3F));
            }
            continue;
        }
        default:
            out[o++] = c;
            continue; /* " \ / */
        }
    }
    return o;
}

/* The unquoted bytes of a string value, in a malloc()ed buffer. */
static uint8_t *string_dup(struct jval v, size_t *len) {
    uint8_t *out = qfs_malloc(v.n * 3 + 1);
    if (out == NULL) return NULL;
    *len = unquote(v, out);
    out[*len] = '\0';
    return out;
}

static bool key_is(struct jval k, const char *name) {
    size_t n = strlen(name);
    if (k.n != n + 2) return false;
    /* Keys with escapes never match a field name (names are plain ASCII);
     * jsonpb compares unquoted keys, so check the rare escaped spelling. */
    if (memchr(k.p, '\\', k.n) == NULL) return memcmp(k.p + 1, name, n) == 0;
    return false;
}

static bool key_is_escaped(struct jval k, const char *name) {
    if (memchr(k.p, '\\', k.n) == NULL) return false;
    size_t len;
    uint8_t *u = string_dup(k, &len);
    bool eq = u != NULL && len == strlen(name) && memcmp(u, name, len) == 0;
    free(u);
    return eq;
}

/* jsonpb's JSONName: lowerCamelCase of the proto name. */
static void camel(const char *name, char *out, size_t size) {
    size_t o = 0;
    bool up = false;
    for (size_t k = 0; name[k] != '\0' && o + 1 < size; k++) {
        if (name[k] == '_') {
            up = true;
            continue;
        }
        char c = name[k];
        if (up && c >= 'a' && c <= 'z') c = (char)(c - 'a' + 'A');
        up = false;
        out[o++] = c;
    }
    out[o] = '\0';
}

/* Parses a JSON number literal (the whole of v, whitespace around allowed)
 * as Go's json.Unmarshal into an integer of the given kind does. */
static int parse_int(struct jval v, const ProtobufCFieldDescriptor *f, struct jerr *e,
                     uint64_t *out) {
    struct scan s = {v.p, v.n, 0, e};
    skip_ws(&s);
    if (s.i >= s.n) return fail(e, "unexpected end of JSON input");
    size_t start = s.i;
    uint8_t c = v.p[s.i];
    if (!(c == '-' || (c >= '0' && c <= '9'))) {
        if (c == '"' || c == '{' || c == '[' || c == 't' || c == 'f' || c == 'n') {
            /* A value of another kind inside the quotes ("\"1\""). */
            int rc = scan_value(&s, 0);
            if (rc != 0) return rc;
            skip_ws(&s);
            if (s.i < s.n) return bad_char(&s, "after top-level value");
            if (c == 'n') { /* null leaves the field unset */
                *out = 0;
                return 1;
            }
            return type_error(e, f, (struct jval){v.p + start, s.i - start}, false);
        }
        return bad_char(&s, "looking for beginning of value");
    }
    int rc = scan_number(&s);
    if (rc != 0) return rc;
    size_t end = s.i;
    skip_ws(&s);
    if (s.i < s.n) return bad_char(&s, "after top-level value");
    char num[64];
    size_t len = end - start;
    char t[64];
    go_type(f, t, sizeof(t));
    if (len >= sizeof(num)) goto err_range;
    memcpy(num, v.p + start, len);
    num[len] = '\0';
    if (strpbrk(num, ".eE") != NULL) goto err_range;
    errno = 0;
    char *endp;
    bool is_signed = strncmp(t, "int", 3) == 0;
    if (is_signed) {
        long long x = strtoll(num, &endp, 10);
        if (errno != 0) goto err_range;
        if (strcmp(t, "int32") == 0 && (x < INT32_MIN || x > INT32_MAX)) goto err_range;
        *out = (uint64_t)x;
    } else if (strncmp(t, "uint", 4) == 0) {
        if (num[0] == '-') goto err_range;
        unsigned long long x = strtoull(num, &endp, 10);
        if (errno != 0) goto err_range;
        if (strcmp(t, "uint32") == 0 && x > UINT32_MAX) goto err_range;
        *out = x;
    } else { /* an enum given as a number: Go's int32 */
        long long x = strtoll(num, &endp, 10);
        if (errno != 0 || x < INT32_MIN || x > INT32_MAX) goto err_range;
        *out = (uint64_t)x;
    }
    return 0;

err_range:
    return fail(e, "json: cannot unmarshal number %.*s into Go value of type %s",
                (int)(len > 64 ? 64 : len), v.p + start, t);
}

static int decode_message(const ProtobufCMessageDescriptor *d, struct jval obj, struct api__buf *w,
                          struct jerr *e, unsigned depth);

/* Appends field f holding JSON value v (one element for repeated fields). */
static int decode_one(const ProtobufCFieldDescriptor *f, struct jval v, struct api__buf *w,
                      struct jerr *e, unsigned depth, bool element) {
    uint8_t c = v.p[0];
    if (c == 'n') { /* a null element: Go leaves the element's zero value */
        static const struct jval zero_msg = {(const uint8_t *)"{}", 2};
        static const struct jval zero_num = {(const uint8_t *)"0", 1};
        static const struct jval zero_str = {(const uint8_t *)"\"\"", 2};
        static const struct jval zero_bool = {(const uint8_t *)"false", 5};
        switch (f->type) {
        case PROTOBUF_C_TYPE_MESSAGE:
            v = zero_msg;
            break;
        case PROTOBUF_C_TYPE_STRING:
        case PROTOBUF_C_TYPE_BYTES:
            v = zero_str;
            break;
        case PROTOBUF_C_TYPE_BOOL:
            v = zero_bool;
            break;
        default:
            v = zero_num;
            break;
        }
        c = v.p[0];
    }
    switch (f->type) {
    case PROTOBUF_C_TYPE_MESSAGE: {
        if (c != '{') {
            return fail(e,
                        "json: cannot unmarshal %s into Go value of type "
                        "map[string]json.RawMessage",
                        kind_name(c));
        }
        struct api__buf sub;
        api__buf_init(&sub, w->max);
        int rc = decode_message(f->descriptor, v, &sub, e, depth + 1);
        if (rc == 0) {
            wire_tag(w, f->id, 2);
            wire_varint(w, sub.len);
            api__buf_add(w, sub.p, sub.len);
            rc = sub.failed;
        }
        api__buf_free(&sub);
        return rc;
    }
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES: {
        if (c != '"') return type_error(e, f, v, element);
        size_t len;
        uint8_t *s = string_dup(v, &len);
        if (s == NULL) return API_ENOMEM;
        if (f->type == PROTOBUF_C_TYPE_BYTES) {
            uint8_t *raw = qfs_malloc(len / 4 * 3 + 4);
            size_t rlen = 0;
            if (raw == NULL) {
                free(s);
                return API_ENOMEM;
            }
            long at = api__b64_decode(s, len, raw, &rlen);
            free(s);
            if (at >= 0) {
                free(raw);
                return fail(e, "illegal base64 data at input byte %ld", at);
            }
            s = raw;
            len = rlen;
        }
        wire_tag(w, f->id, 2);
        wire_varint(w, len);
        api__buf_add(w, s, len);
        free(s);
        return 0;
    }
    case PROTOBUF_C_TYPE_BOOL:
        if (c != 't' && c != 'f') return type_error(e, f, v, element);
        wire_tag(w, f->id, 0);
        wire_varint(w, c == 't');
        return 0;
    case PROTOBUF_C_TYPE_ENUM:
        if (c == '"') {
            const ProtobufCEnumDescriptor *ed = f->descriptor;
            size_t len;
            uint8_t *s = string_dup(v, &len);
            if (s == NULL) return API_ENOMEM;
            const ProtobufCEnumValue *ev =
                protobuf_c_enum_descriptor_get_value_by_name(ed, (char *)s);
            if (ev == NULL) {
                char t[160];
                go_type(f, t, sizeof(t));
                const char *tn = t[0] == '[' ? t + 2 : t;
                struct api__buf q;
                api__buf_init(&q, 256);
                api__buf_add(&q, v.p, v.n > 200 ? 200 : v.n);
                api__buf_add(&q, "", 1);
                int rc = q.failed ? API_EMALFORMED
                                  : fail(e, "unknown value %s for enum %s", (char *)q.p, tn);
                api__buf_free(&q);
                free(s);
                return rc;
            }
            free(s);
            wire_tag(w, f->id, 0);
            wire_varint(w, (uint64_t)(int64_t)ev->value);
            return 0;
        }
        __attribute__((fallthrough)); /* a number */
    default: {
        struct jval num = v;
        if (c == '"') { /* jsonpb strips the quotes of a quoted number */
            num.p++;
            num.n -= 2;
        } else if (c != '-' && (c < '0' || c > '9')) {
            return type_error(e, f, v, element);
        }
        uint64_t x;
        int rc = parse_int(num, f, e, &x);
        if (rc == 1) return 0;
        if (rc != 0) return rc;
        switch (f->type) {
        case PROTOBUF_C_TYPE_SINT32:
            wire_tag(w, f->id, 0);
            wire_varint(w, (uint32_t)(((int32_t)x << 1) ^ ((int32_t)x >> 31)));
            break;
        case PROTOBUF_C_TYPE_SINT64:
            wire_tag(w, f->id, 0);
            wire_varint(w, ((uint64_t)x << 1) ^ (uint64_t)((int64_t)x >> 63));
            break;
        case PROTOBUF_C_TYPE_SFIXED32:
        case PROTOBUF_C_TYPE_FIXED32:
        case PROTOBUF_C_TYPE_FLOAT:
            wire_tag(w, f->id, 5);
            wire_fixed(w, x, 4);
            break;
        case PROTOBUF_C_TYPE_SFIXED64:
        case PROTOBUF_C_TYPE_FIXED64:
        case PROTOBUF_C_TYPE_DOUBLE:
            wire_tag(w, f->id, 1);
            wire_fixed(w, x, 8);
            break;
        default:
            wire_tag(w, f->id, 0);
            wire_varint(w, f->type == PROTOBUF_C_TYPE_UINT32 ? (uint32_t)x : x);
            break;
        }
        return 0;
    }
    }
}

/* The members of a checked object, in order: key and value spans. */
struct jmember {
    struct jval key, val;
};

/* Next element of a checked object or array; *i starts at 0 (the opening
 * bracket). False at the end. For arrays key is left empty. */
static bool next_item(struct jval c, size_t *i, bool object, struct jmember *m) {
    char nowhere[1];
    struct jerr quiet = {nowhere, sizeof(nowhere)};
    struct scan s = {c.p, c.n, *i == 0 ? 1 : *i, &quiet};
    skip_ws(&s);
    if (s.p[s.i] == ',') {
        s.i++;
        skip_ws(&s);
    }
    if (s.p[s.i] == '}' || s.p[s.i] == ']') return false;
    if (object) {
        size_t ks = s.i;
        scan_string(&s);
        m->key = (struct jval){c.p + ks, s.i - ks};
        skip_ws(&s);
        s.i++; /* ':' */
        skip_ws(&s);
    }
    size_t vs = s.i;
    scan_value(&s, 0);
    m->val = (struct jval){c.p + vs, s.i - vs};
    *i = s.i;
    return true;
}

/* The last member named `name` (Go's map keeps the last of duplicates). */
static bool find_member(const struct jmember *ms, size_t n, const char *name, struct jval *out) {
    for (size_t k = n; k-- > 0;) {
        if (key_is(ms[k].key, name) || key_is_escaped(ms[k].key, name)) {
            *out = ms[k].val;
            return true;
        }
    }
    return false;
}

static int decode_message(const ProtobufCMessageDescriptor *d, struct jval obj, struct api__buf *w,
                          struct jerr *e, unsigned depth) {
    if (depth > API__PROTO_DEPTH_MAX) return fail(e, "exceeded max depth");
    /* The members once, then a lookup per field in declaration order, the
     * order in which jsonpb converts (and reports the first error). */
    struct jmember *ms = NULL;
    size_t n = 0, cap = 0, i = 0;
    struct jmember m;
    int rc = 0;
    while (next_item(obj, &i, true, &m)) {
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            struct jmember *q = qfs_realloc(ms, cap * sizeof(*ms));
            if (q == NULL) {
                free(ms);
                return API_ENOMEM;
            }
            ms = q;
        }
        ms[n++] = m;
    }
    for (unsigned k = 0; k < d->n_fields && rc == 0; k++) {
        const ProtobufCFieldDescriptor *f = &d->fields[k];
        char cname[128];
        struct jval v;
        camel(f->name, cname, sizeof(cname));
        if (!find_member(ms, n, f->name, &v) && !find_member(ms, n, cname, &v)) continue;
        if (v.p[0] == 'n') continue; /* null: the field stays unset */
        if (f->label != PROTOBUF_C_LABEL_REPEATED) {
            rc = decode_one(f, v, w, e, depth, false);
            continue;
        }
        if (v.p[0] != '[') {
            rc = fail(e, "json: cannot unmarshal %s into Go value of type []json.RawMessage",
                      kind_name(v.p[0]));
            continue;
        }
        size_t j = 0;
        struct jmember el;
        while (rc == 0 && next_item(v, &j, false, &el))
            rc = decode_one(f, el.val, w, e, depth, true);
    }
    free(ms);
    return rc != 0 ? rc : w->failed;
}

int api__json_decode(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n,
                     size_t *consumed, struct api__buf *wire, char *err, size_t err_size) {
    API__ASSERT(d != NULL && wire != NULL && err != NULL && err_size > 0);
    struct jerr e = {err, err_size};
    struct scan s = {p, n, 0, &e};
    err[0] = '\0';
    skip_ws(&s);
    if (s.i >= s.n) {
        *consumed = s.i;
        return API__JSON_EOF;
    }
    size_t start = s.i;
    int rc = scan_value(&s, 0);
    if (rc != 0) return rc;
    *consumed = s.i;
    struct jval v = {p + start, s.i - start};
    if (v.p[0] == 'n') return 0; /* null: the empty message */
    if (v.p[0] != '{')
        return fail(&e,
                    "json: cannot unmarshal %s into Go value of type "
                    "map[string]json.RawMessage",
                    kind_name(v.p[0]));
    rc = decode_message(d, v, wire, &e, 0);
    if (rc == API_ETOOBIG) snprintf(err, err_size, "request is too large");
    if (rc == API_ENOMEM) snprintf(err, err_size, "out of memory");
    return rc;
}
