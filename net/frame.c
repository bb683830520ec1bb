/*
 * frame.c - the peer wire format: encoder, decoder, receive buffer.
 *
 * Every frame is
 *
 *     offset  bytes   field
 *     0       4       len      big-endian u32: bytes after this field (>= 2)
 *     4       1       version  NET_PROTOCOL_VERSION (1)
 *     5       1       type     enum net__frame_type
 *     6       len-2   payload  per type, below
 *
 * and 4 + len never exceeds the receiver's frame_bytes_max (the whole frame
 * is bounded, prefix included; before the handshake completes the bound is
 * NET__HELLO_BYTES_MAX). All integers are big-endian. A "str16" is a u16
 * length followed by that many bytes, none of them NUL. Payloads, by type:
 *
 *     1  HELLO       u64 from_id, u64 to_id, str16 token (<= NET_TOKEN_MAX),
 *                    u16 n_members (<= NET_MEMBERS_MAX), then n_members times
 *                    { u64 id, str16 url (1..NET_URL_MAX) } with ids non-zero
 *                    and strictly ascending (the canonical member list).
 *                    from_id is the dialer, to_id the member it meant to dial.
 *     2  HELLO_ACK   same layout, sent back by the listener (from_id = the
 *                    listener, to_id = the dialer) so both sides compare.
 *     3  REJECT      str16 reason (<= NET_REASON_MAX), worded for the
 *                    receiver ("local" = the receiver); the sender closes.
 *     4  RAFT        the encoded Raft message: the rest of the payload, >= 1 byte.
 *     5  SNAP_BEGIN  u64 snap_id (non-zero), u32 n_files (<= NET_SNAP_FILES_MAX),
 *                    u64 total_bytes, then the opaque metadata (rest, may be empty).
 *     6  SNAP_FILE   u64 snap_id, u64 size, str16 name: a relative name that
 *                    net__snap_name_check() accepts (no "..", not absolute).
 *     7  SNAP_CHUNK  u64 snap_id, then file data (rest, >= 1 byte), appended
 *                    to the file of the last SNAP_FILE.
 *     8  SNAP_END    u64 snap_id, u32 crc32 of all chunk data in stream order.
 *     9  SNAP_ABORT  u64 snap_id, str16 reason. The sender gave up.
 *     10 SNAP_ACK    u64 snap_id, u8 status (0 stored and fsynced, 1 failed),
 *                    str16 reason. Receiver -> sender, on the connection the
 *                    snapshot arrived on; may come early (status 1) to stop a
 *                    stream the receiver will not store.
 *     11 PING        empty.
 *
 * A payload with bytes left over after its last field is malformed. The
 * decoder returns the first problem it finds as a NET_* code; the caller
 * drops that connection only.
 */
#include "net/frame.h"

#include <stdlib.h>
#include <string.h>

#include "net/internal.h"

_Static_assert(NET__FRAME_HEADER_BYTES == 4 + 1 + 1, "header layout");
_Static_assert(NET_FRAME_BYTES_LIMIT < UINT32_MAX, "len must fit a u32");
_Static_assert(NET_TOKEN_MAX <= UINT16_MAX && NET_URL_MAX <= UINT16_MAX &&
                   NET_REASON_MAX <= UINT16_MAX && NET_SNAP_NAME_MAX <= UINT16_MAX,
               "str16 limits");
_Static_assert(NET_MEMBERS_MAX <= UINT16_MAX, "n_members is a u16");
/* The largest HELLO must fit the pre-handshake frame limit. */
_Static_assert(NET__FRAME_HEADER_BYTES + 8 + 8 + 2 + NET_TOKEN_MAX + 2 +
                       NET_MEMBERS_MAX * (8 + 2 + NET_URL_MAX) <=
                   NET__HELLO_BYTES_MAX,
               "HELLO fits NET__HELLO_BYTES_MAX");
_Static_assert(NET__HELLO_BYTES_MAX <= NET_FRAME_BYTES_MIN, "hello limit <= frame limit");

/* A read cursor over the payload; every take checks the remaining length. */
struct cursor {
    const uint8_t *p;
    size_t left;
};

static bool take(struct cursor *c, size_t n, const uint8_t **out) {
    if (c->left < n) return false;
    *out = c->p;
    c->p += n;
    c->left -= n;
    return true;
}

static bool take_u8(struct cursor *c, uint8_t *v) {
    const uint8_t *p;
    if (!take(c, 1, &p)) return false;
    *v = p[0];
    return true;
}

static bool take_u16(struct cursor *c, uint16_t *v) {
    const uint8_t *p;
    if (!take(c, 2, &p)) return false;
    *v = net__get_u16(p);
    return true;
}

static bool take_u32(struct cursor *c, uint32_t *v) {
    const uint8_t *p;
    if (!take(c, 4, &p)) return false;
    *v = net__get_u32(p);
    return true;
}

static bool take_u64(struct cursor *c, uint64_t *v) {
    const uint8_t *p;
    if (!take(c, 8, &p)) return false;
    *v = net__get_u64(p);
    return true;
}

/* A str16 of at most max bytes with no NUL byte. */
static bool take_str16(struct cursor *c, size_t max, const char **s, size_t *len) {
    uint16_t n;
    const uint8_t *p;
    if (!take_u16(c, &n) || n > max || !take(c, n, &p)) return false;
    if (n > 0 && memchr(p, 0, n) != NULL) return false;
    *s = (const char *)p;
    *len = n;
    return true;
}

static void take_rest(struct cursor *c, const void **data, size_t *len) {
    *data = c->p;
    *len = c->left;
    c->p += c->left;
    c->left = 0;
}

int net__snap_name_check(const char *name, size_t len) {
    if (name == NULL || len == 0 || len > NET_SNAP_NAME_MAX) return NET_EFILENAME;
    if (name[0] == '/') return NET_EFILENAME;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len) {
            unsigned char ch = (unsigned char)name[i];
            /* NUL and control bytes: never in a checkpoint, and unsafe in logs. */
            if (ch < 0x20 || ch == 0x7f) return NET_EFILENAME;
            if (ch != '/') continue;
        }
        size_t n = i - start; /* component [start, i) */
        if (n == 0) return NET_EFILENAME;
        if (n == 1 && name[start] == '.') return NET_EFILENAME;
        if (n == 2 && name[start] == '.' && name[start + 1] == '.') return NET_EFILENAME;
        start = i + 1;
    }
    return 0;
}

static int decode_hello(struct cursor *c, struct net__frame *f) {
    uint16_t n;
    if (!take_u64(c, &f->u.hello.from_id) || !take_u64(c, &f->u.hello.to_id)) return NET_EMALFORMED;
    if (f->u.hello.from_id == 0 || f->u.hello.to_id == 0) return NET_EMALFORMED;
    if (!take_str16(c, NET_TOKEN_MAX, &f->u.hello.token, &f->u.hello.token_len))
        return NET_EMALFORMED;
    if (!take_u16(c, &n) || n > NET_MEMBERS_MAX) return NET_EMALFORMED;
    f->u.hello.n_members = n;
    for (size_t i = 0; i < n; i++) {
        struct net__wire_member *m = &f->u.hello.members[i];
        if (!take_u64(c, &m->id) || m->id == 0) return NET_EMALFORMED;
        if (i > 0 && m->id <= f->u.hello.members[i - 1].id) return NET_EMALFORMED;
        if (!take_str16(c, NET_URL_MAX, &m->url, &m->url_len) || m->url_len == 0)
            return NET_EMALFORMED;
    }
    return 0;
}

static int decode_payload(struct cursor *c, struct net__frame *f) {
    switch (f->type) {
    case NET__FRAME_HELLO:
    case NET__FRAME_HELLO_ACK:
        return decode_hello(c, f);
    case NET__FRAME_REJECT:
        if (!take_str16(c, NET_REASON_MAX, &f->u.reject.reason, &f->u.reject.reason_len))
            return NET_EMALFORMED;
        return 0;
    case NET__FRAME_RAFT:
        take_rest(c, &f->u.raft.data, &f->u.raft.len);
        return f->u.raft.len > 0 ? 0 : NET_EMALFORMED;
    case NET__FRAME_SNAP_BEGIN:
        if (!take_u64(c, &f->u.snap_begin.snap_id) || f->u.snap_begin.snap_id == 0)
            return NET_EMALFORMED;
        if (!take_u32(c, &f->u.snap_begin.n_files) || f->u.snap_begin.n_files > NET_SNAP_FILES_MAX)
            return NET_EMALFORMED;
        if (!take_u64(c, &f->u.snap_begin.total_bytes)) return NET_EMALFORMED;
        take_rest(c, &f->u.snap_begin.meta, &f->u.snap_begin.meta_len);
        return 0;
    case NET__FRAME_SNAP_FILE: {
        uint16_t n;
        const uint8_t *p;
        if (!take_u64(c, &f->u.snap_file.snap_id) || f->u.snap_file.snap_id == 0)
            return NET_EMALFORMED;
        if (!take_u64(c, &f->u.snap_file.size)) return NET_EMALFORMED;
        /* Not take_str16: a bad name is its own error, NET_EFILENAME. */
        if (!take_u16(c, &n) || !take(c, n, &p)) return NET_EMALFORMED;
        f->u.snap_file.name = (const char *)p;
        f->u.snap_file.name_len = n;
        return net__snap_name_check(f->u.snap_file.name, n);
    }
    case NET__FRAME_SNAP_CHUNK:
        if (!take_u64(c, &f->u.snap_chunk.snap_id) || f->u.snap_chunk.snap_id == 0)
            return NET_EMALFORMED;
        take_rest(c, &f->u.snap_chunk.data, &f->u.snap_chunk.len);
        return f->u.snap_chunk.len > 0 ? 0 : NET_EMALFORMED;
    case NET__FRAME_SNAP_END:
        if (!take_u64(c, &f->u.snap_end.snap_id) || f->u.snap_end.snap_id == 0)
            return NET_EMALFORMED;
        if (!take_u32(c, &f->u.snap_end.crc32)) return NET_EMALFORMED;
        return 0;
    case NET__FRAME_SNAP_ABORT:
    case NET__FRAME_SNAP_ACK:
        if (!take_u64(c, &f->u.snap_ack.snap_id) || f->u.snap_ack.snap_id == 0)
            return NET_EMALFORMED;
        f->u.snap_ack.status = 0;
        if (f->type == NET__FRAME_SNAP_ACK &&
            (!take_u8(c, &f->u.snap_ack.status) || f->u.snap_ack.status > 1))
            return NET_EMALFORMED;
        if (!take_str16(c, NET_REASON_MAX, &f->u.snap_ack.reason, &f->u.snap_ack.reason_len))
            return NET_EMALFORMED;
        return 0;
    case NET__FRAME_PING:
        return 0;
    default:
        return NET_ETYPE;
    }
}

int net__frame_decode(const void *buf, size_t len, size_t frame_bytes_max, struct net__frame *f,
                      size_t *used) {
    NET__ASSERT(buf != NULL || len == 0);
    NET__ASSERT(frame_bytes_max >= NET__FRAME_HEADER_BYTES);
    NET__ASSERT(f != NULL && used != NULL);
    const uint8_t *b = buf;
    *used = 0;
    /* Each header check runs as soon as its byte is present, so a bad
     * stream is refused without waiting for (or buffering) its body. */
    if (len < 4) return 0;
    uint32_t flen = net__get_u32(b);
    if (flen < 2) return NET_EMALFORMED;
    if ((uint64_t)flen + 4 > frame_bytes_max) return NET_ETOOBIG;
    if (len < 5) return 0;
    if (b[4] != NET_PROTOCOL_VERSION) return NET_EVERSION;
    if (len < 6) return 0;
    if (b[5] == 0 || b[5] > NET__FRAME_TYPE_MAX_) return NET_ETYPE;
    if (len - 4 < flen) return 0;

    f->version = b[4];
    f->type = b[5];
    struct cursor c = {.p = b + NET__FRAME_HEADER_BYTES, .left = flen - 2};
    int rc = decode_payload(&c, f);
    if (rc != 0) return rc;
    if (c.left != 0) return NET_EMALFORMED; /* trailing bytes */
    *used = (size_t)flen + 4;
    return 0;
}

/* ---- encoder ---- */

static bool str_ok(const char *s, size_t n, size_t max) {
    if (n > max) return false;
    return n == 0 || (s != NULL && memchr(s, 0, n) == NULL);
}

/* Payload size of f, or 0 with *rc set when f breaks a decoder rule. */
static size_t payload_size(const struct net__frame *f, int *rc) {
    *rc = NET_EINVAL;
    switch (f->type) {
    case NET__FRAME_HELLO:
    case NET__FRAME_HELLO_ACK: {
        const struct net__hello *h = &f->u.hello;
        if (h->from_id == 0 || h->to_id == 0) return 0;
        if (!str_ok(h->token, h->token_len, NET_TOKEN_MAX)) return 0;
        if (h->n_members > NET_MEMBERS_MAX) return 0;
        size_t n = 8 + 8 + 2 + h->token_len + 2;
        for (size_t i = 0; i < h->n_members; i++) {
            const struct net__wire_member *m = &h->members[i];
            if (m->id == 0 || (i > 0 && m->id <= h->members[i - 1].id)) return 0;
            if (m->url_len == 0 || !str_ok(m->url, m->url_len, NET_URL_MAX)) return 0;
            n += 8 + 2 + m->url_len;
        }
        *rc = 0;
        return n;
    }
    case NET__FRAME_REJECT:
        if (!str_ok(f->u.reject.reason, f->u.reject.reason_len, NET_REASON_MAX)) return 0;
        *rc = 0;
        return 2 + f->u.reject.reason_len;
    case NET__FRAME_RAFT:
        if (f->u.raft.len == 0 || f->u.raft.data == NULL) return 0;
        *rc = 0;
        return f->u.raft.len;
    case NET__FRAME_SNAP_BEGIN:
        if (f->u.snap_begin.snap_id == 0 || f->u.snap_begin.n_files > NET_SNAP_FILES_MAX) return 0;
        if (f->u.snap_begin.meta_len > 0 && f->u.snap_begin.meta == NULL) return 0;
        *rc = 0;
        return 8 + 4 + 8 + f->u.snap_begin.meta_len;
    case NET__FRAME_SNAP_FILE:
        if (f->u.snap_file.snap_id == 0) return 0;
        if (net__snap_name_check(f->u.snap_file.name, f->u.snap_file.name_len) != 0) {
            *rc = NET_EFILENAME;
            return 0;
        }
        *rc = 0;
        return 8 + 8 + 2 + f->u.snap_file.name_len;
    case NET__FRAME_SNAP_CHUNK:
        if (f->u.snap_chunk.snap_id == 0 || f->u.snap_chunk.len == 0 ||
            f->u.snap_chunk.data == NULL)
            return 0;
        *rc = 0;
        return 8 + f->u.snap_chunk.len;
    case NET__FRAME_SNAP_END:
        if (f->u.snap_end.snap_id == 0) return 0;
        *rc = 0;
        return 8 + 4;
    case NET__FRAME_SNAP_ABORT:
    case NET__FRAME_SNAP_ACK:
        if (f->u.snap_ack.snap_id == 0) return 0;
        if (f->type == NET__FRAME_SNAP_ACK && f->u.snap_ack.status > 1) return 0;
        if (!str_ok(f->u.snap_ack.reason, f->u.snap_ack.reason_len, NET_REASON_MAX)) return 0;
        *rc = 0;
        return 8 + (f->type == NET__FRAME_SNAP_ACK ? 1 : 0) + 2 + f->u.snap_ack.reason_len;
    case NET__FRAME_PING:
        *rc = 0;
        return 0;
    default:
        return 0;
    }
}

size_t net__frame_encoded_size(const struct net__frame *f) {
    NET__ASSERT(f != NULL);
    int rc;
    size_t n = payload_size(f, &rc);
    if (rc != 0) return 0;
    return NET__FRAME_HEADER_BYTES + n;
}

void net__frame_put_header(uint8_t *dst, uint8_t type, size_t payload_len) {
    NET__ASSERT(dst != NULL);
    NET__ASSERT(payload_len + NET__FRAME_HEADER_BYTES <= NET_FRAME_BYTES_LIMIT);
    net__put_u32(dst, (uint32_t)(payload_len + 2));
    dst[4] = NET_PROTOCOL_VERSION;
    dst[5] = type;
}

/* A write cursor; the size was computed first, so it never overruns. */
struct writer {
    uint8_t *p;
};

static void w_bytes(struct writer *w, const void *s, size_t n) {
    if (n > 0) memcpy(w->p, s, n);
    w->p += n;
}
static void w_u8(struct writer *w, uint8_t v) {
    *w->p++ = v;
}
static void w_u16(struct writer *w, uint16_t v) {
    net__put_u16(w->p, v);
    w->p += 2;
}
static void w_u32(struct writer *w, uint32_t v) {
    net__put_u32(w->p, v);
    w->p += 4;
}
static void w_u64(struct writer *w, uint64_t v) {
    net__put_u64(w->p, v);
    w->p += 8;
}
static void w_str16(struct writer *w, const char *s, size_t n) {
    w_u16(w, (uint16_t)n);
    w_bytes(w, s, n);
}

int net__frame_encode(const struct net__frame *f, uint8_t **out, size_t *out_len) {
    NET__ASSERT(f != NULL);
    NET__ASSERT(out != NULL && out_len != NULL);
    int rc;
    size_t plen = payload_size(f, &rc);
    if (rc != 0) return rc;
    if (plen > NET_FRAME_BYTES_LIMIT - NET__FRAME_HEADER_BYTES) return NET_ETOOBIG;
    size_t total = NET__FRAME_HEADER_BYTES + plen;
    uint8_t *buf = malloc(total);
    if (buf == NULL) return NET_ENOMEM;
    net__frame_put_header(buf, f->type, plen);
    struct writer w = {.p = buf + NET__FRAME_HEADER_BYTES};
    switch (f->type) {
    case NET__FRAME_HELLO:
    case NET__FRAME_HELLO_ACK:
        w_u64(&w, f->u.hello.from_id);
        w_u64(&w, f->u.hello.to_id);
        w_str16(&w, f->u.hello.token, f->u.hello.token_len);
        w_u16(&w, (uint16_t)f->u.hello.n_members);
        for (size_t i = 0; i < f->u.hello.n_members; i++) {
            w_u64(&w, f->u.hello.members[i].id);
            w_str16(&w, f->u.hello.members[i].url, f->u.hello.members[i].url_len);
        }
        break;
    case NET__FRAME_REJECT:
        w_str16(&w, f->u.reject.reason, f->u.reject.reason_len);
        break;
    case NET__FRAME_RAFT:
        w_bytes(&w, f->u.raft.data, f->u.raft.len);
        break;
    case NET__FRAME_SNAP_BEGIN:
        w_u64(&w, f->u.snap_begin.snap_id);
        w_u32(&w, f->u.snap_begin.n_files);
        w_u64(&w, f->u.snap_begin.total_bytes);
        w_bytes(&w, f->u.snap_begin.meta, f->u.snap_begin.meta_len);
        break;
    case NET__FRAME_SNAP_FILE:
        w_u64(&w, f->u.snap_file.snap_id);
        w_u64(&w, f->u.snap_file.size);
        w_str16(&w, f->u.snap_file.name, f->u.snap_file.name_len);
        break;
    case NET__FRAME_SNAP_CHUNK:
        w_u64(&w, f->u.snap_chunk.snap_id);
        w_bytes(&w, f->u.snap_chunk.data, f->u.snap_chunk.len);
        break;
    case NET__FRAME_SNAP_END:
        w_u64(&w, f->u.snap_end.snap_id);
        w_u32(&w, f->u.snap_end.crc32);
        break;
    case NET__FRAME_SNAP_ABORT:
    case NET__FRAME_SNAP_ACK:
        w_u64(&w, f->u.snap_ack.snap_id);
        if (f->type == NET__FRAME_SNAP_ACK) w_u8(&w, f->u.snap_ack.status);
        w_str16(&w, f->u.snap_ack.reason, f->u.snap_ack.reason_len);
        break;
    case NET__FRAME_PING:
        break;
    default:
        NET__ASSERT(!"payload_size accepted an unknown type");
    }
    NET__ASSERT(w.p == buf + total);
    *out = buf;
    *out_len = total;
    return 0;
}

/* ---- CRC-32 ---- */

static const uint32_t crc_table[256] = {
    0x00000000u, 0x77073096u, 0xee0e612cu, 0x990951bau, 0x076dc419u, 0x706af48fu, 0xe963a535u,
    0x9e6495a3u, 0x0edb8832u, 0x79dcb8a4u, 0xe0d5e91eu, 0x97d2d988u, 0x09b64c2bu, 0x7eb17cbdu,
    0xe7b82d07u, 0x90bf1d91u, 0x1db71064u, 0x6ab020f2u, 0xf3b97148u, 0x84be41deu, 0x1adad47du,
    0x6ddde4ebu, 0xf4d4b551u, 0x83d385c7u, 0x136c9856u, 0x646ba8c0u, 0xfd62f97au, 0x8a65c9ecu,
    0x14015c4fu, 0x63066cd9u, 0xfa0f3d63u, 0x8d080df5u, 0x3b6e20c8u, 0x4c69105eu, 0xd56041e4u,
    0xa2677172u, 0x3c03e4d1u, 0x4b04d447u, 0xd20d85fdu, 0xa50ab56bu, 0x35b5a8fau, 0x42b2986cu,
    0xdbbbc9d6u, 0xacbcf940u, 0x32d86ce3u, 0x45df5c75u, 0xdcd60dcfu, 0xabd13d59u, 0x26d930acu,
    0x51de003au, 0xc8d75180u, 0xbfd06116u, 0x21b4f4b5u, 0x56b3c423u, 0xcfba9599u, 0xb8bda50fu,
    0x2802b89eu, 0x5f058808u, 0xc60cd9b2u, 0xb10be924u, 0x2f6f7c87u, 0x58684c11u, 0xc1611dabu,
    0xb6662d3du, 0x76dc4190u, 0x01db7106u, 0x98d220bcu, 0xefd5102au, 0x71b18589u, 0x06b6b51fu,
    0x9fbfe4a5u, 0xe8b8d433u, 0x7807c9a2u, 0x0f00f934u, 0x9609a88eu, 0xe10e9818u, 0x7f6a0dbbu,
    0x086d3d2du, 0x91646c97u, 0xe6635c01u, 0x6b6b51f4u, 0x1c6c6162u, 0x856530d8u, 0xf262004eu,
    0x6c0695edu, 0x1b01a57bu, 0x8208f4c1u, 0xf50fc457u, 0x65b0d9c6u, 0x12b7e950u, 0x8bbeb8eau,
    0xfcb9887cu, 0x62dd1ddfu, 0x15da2d49u, 0x8cd37cf3u, 0xfbd44c65u, 0x4db26158u, 0x3ab551ceu,
    0xa3bc0074u, 0xd4bb30e2u, 0x4adfa541u, 0x3dd895d7u, 0xa4d1c46du, 0xd3d6f4fbu, 0x4369e96au,
    0x346ed9fcu, 0xad678846u, 0xda60b8d0u, 0x44042d73u, 0x33031de5u, 0xaa0a4c5fu, 0xdd0d7cc9u,
    0x5005713cu, 0x270241aau, 0xbe0b1010u, 0xc90c2086u, 0x5768b525u, 0x206f85b3u, 0xb966d409u,
    0xce61e49fu, 0x5edef90eu, 0x29d9c998u, 0xb0d09822u, 0xc7d7a8b4u, 0x59b33d17u, 0x2eb40d81u,
    0xb7bd5c3bu, 0xc0ba6cadu, 0xedb88320u, 0x9abfb3b6u, 0x03b6e20cu, 0x74b1d29au, 0xead54739u,
    0x9dd277afu, 0x04db2615u, 0x73dc1683u, 0xe3630b12u, 0x94643b84u, 0x0d6d6a3eu, 0x7a6a5aa8u,
    0xe40ecf0bu, 0x9309ff9du, 0x0a00ae27u, 0x7d079eb1u, 0xf00f9344u, 0x8708a3d2u, 0x1e01f268u,
    0x6906c2feu, 0xf762575du, 0x806567cbu, 0x196c3671u, 0x6e6b06e7u, 0xfed41b76u, 0x89d32be0u,
    0x10da7a5au, 0x67dd4accu, 0xf9b9df6fu, 0x8ebeeff9u, 0x17b7be43u, 0x60b08ed5u, 0xd6d6a3e8u,
    0xa1d1937eu, 0x38d8c2c4u, 0x4fdff252u, 0xd1bb67f1u, 0xa6bc5767u, 0x3fb506ddu, 0x48b2364bu,
    0xd80d2bdau, 0xaf0a1b4cu, 0x36034af6u, 0x41047a60u, 0xdf60efc3u, 0xa867df55u, 0x316e8eefu,
    0x4669be79u, 0xcb61b38cu, 0xbc66831au, 0x256fd2a0u, 0x5268e236u, 0xcc0c7795u, 0xbb0b4703u,
    0x220216b9u, 0x5505262fu, 0xc5ba3bbeu, 0xb2bd0b28u, 0x2bb45a92u, 0x5cb36a04u, 0xc2d7ffa7u,
    0xb5d0cf31u, 0x2cd99e8bu, 0x5bdeae1du, 0x9b64c2b0u, 0xec63f226u, 0x756aa39cu, 0x026d930au,
    0x9c0906a9u, 0xeb0e363fu, 0x72076785u, 0x05005713u, 0x95bf4a82u, 0xe2b87a14u, 0x7bb12baeu,
    0x0cb61b38u, 0x92d28e9bu, 0xe5d5be0du, 0x7cdcefb7u, 0x0bdbdf21u, 0x86d3d2d4u, 0xf1d4e242u,
    0x68ddb3f8u, 0x1fda836eu, 0x81be16cdu, 0xf6b9265bu, 0x6fb077e1u, 0x18b74777u, 0x88085ae6u,
    0xff0f6a70u, 0x66063bcau, 0x11010b5cu, 0x8f659effu, 0xf862ae69u, 0x616bffd3u, 0x166ccf45u,
    0xa00ae278u, 0xd70dd2eeu, 0x4e048354u, 0x3903b3c2u, 0xa7672661u, 0xd06016f7u, 0x4969474du,
    0x3e6e77dbu, 0xaed16a4au, 0xd9d65adcu, 0x40df0b66u, 0x37d83bf0u, 0xa9bcae53u, 0xdebb9ec5u,
    0x47b2cf7fu, 0x30b5ffe9u, 0xbdbdf21cu, 0xcabac28au, 0x53b39330u, 0x24b4a3a6u, 0xbad03605u,
    0xcdd70693u, 0x54de5729u, 0x23d967bfu, 0xb3667a2eu, 0xc4614ab8u, 0x5d681b02u, 0x2a6f2b94u,
    0xb40bbe37u, 0xc30c8ea1u, 0x5a05df1bu, 0x2d02ef8du,
};

uint32_t net__crc32(uint32_t crc, const void *buf, size_t len) {
    NET__ASSERT(buf != NULL || len == 0);
    const uint8_t *p = buf;
    crc = ~crc;
    for (size_t i = 0; i < len; i++) crc = crc_table[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
    return ~crc;
}

/* ---- receive buffer ---- */

void net__reader_init(struct net__reader *r, size_t cap_max) {
    NET__ASSERT(r != NULL);
    NET__ASSERT(cap_max > NET__READER_READ_BYTES);
    memset(r, 0, sizeof(*r));
    r->cap_max = cap_max;
}

int net__reader_space(struct net__reader *r, uint8_t **p, size_t *n) {
    NET__ASSERT(r != NULL && p != NULL && n != NULL);
    NET__ASSERT(r->head <= r->tail && r->tail <= r->cap);
    if (r->head == r->tail) r->head = r->tail = 0;
    if (r->cap - r->tail < NET__READER_READ_BYTES && r->head > 0) {
        /* Move the partial frame to the front: at most one frame's bytes. */
        memmove(r->buf, r->buf + r->head, r->tail - r->head);
        r->tail -= r->head;
        r->head = 0;
    }
    if (r->cap - r->tail < NET__READER_READ_BYTES && r->cap < r->cap_max) {
        size_t want = r->tail + NET__READER_READ_BYTES;
        size_t ncap = r->cap * 2 > want ? r->cap * 2 : want;
        if (ncap > r->cap_max) ncap = r->cap_max;
        uint8_t *nb = realloc(r->buf, ncap);
        if (nb == NULL) return NET_ENOMEM;
        r->buf = nb;
        r->cap = ncap;
    }
    /* The decoder refuses frames above frame_bytes_max long before this. */
    if (r->cap == r->tail) return NET_ETOOBIG;
    *p = r->buf + r->tail;
    *n = r->cap - r->tail;
    return 0;
}

void net__reader_commit(struct net__reader *r, size_t n) {
    NET__ASSERT(r != NULL);
    NET__ASSERT(n <= r->cap - r->tail);
    r->tail += n;
}

int net__reader_next(struct net__reader *r, size_t frame_bytes_max, struct net__frame *f,
                     bool *have) {
    NET__ASSERT(r != NULL && f != NULL && have != NULL);
    NET__ASSERT(frame_bytes_max + NET__READER_READ_BYTES <= r->cap_max);
    size_t used;
    *have = false;
    if (r->buf == NULL) return 0; /* nothing read yet (and no pointer to offset) */
    int rc = net__frame_decode(r->buf + r->head, r->tail - r->head, frame_bytes_max, f, &used);
    if (rc != 0) return rc;
    if (used == 0) {
        /* Give back the memory of a large frame once the buffer is idle. */
        if (r->head == r->tail && r->cap > NET__READER_KEEP_BYTES) net__reader_release(r);
        return 0;
    }
    r->head += used;
    *have = true;
    return 0;
}

void net__reader_release(struct net__reader *r) {
    NET__ASSERT(r != NULL);
    free(r->buf);
    r->buf = NULL;
    r->cap = r->head = r->tail = 0;
}
