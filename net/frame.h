/*
 * frame.h - private to net/: the peer wire format (encoder, decoder and the
 * receive buffer that feeds the decoder). The format itself is documented
 * at the top of frame.c.
 *
 * The decoder is a pure function over a byte buffer: it reads nothing but
 * [buf, buf + len), allocates nothing, and every pointer it fills in borrows
 * from buf. It checks every length against the input and the named limits
 * before it reads, so any byte string is either a frame, "need more bytes",
 * or an error code saying what is wrong.
 */
#ifndef QUORUMFS_NET_FRAME_H
#define QUORUMFS_NET_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/net.h"

/* Length prefix (4) + version (1) + type (1). */
#define NET__FRAME_HEADER_BYTES 6u
/*
 * Frames a connection accepts before its handshake completed, and every
 * frame an outbound connection reads (acks and rejections): small, so an
 * unauthenticated socket cannot make this node allocate frame_bytes_max.
 */
#define NET__HELLO_BYTES_MAX (64u * 1024u)

enum net__frame_type {
    NET__FRAME_HELLO = 1,
    NET__FRAME_HELLO_ACK = 2,
    NET__FRAME_REJECT = 3,
    NET__FRAME_RAFT = 4,
    NET__FRAME_SNAP_BEGIN = 5,
    NET__FRAME_SNAP_FILE = 6,
    NET__FRAME_SNAP_CHUNK = 7,
    NET__FRAME_SNAP_END = 8,
    NET__FRAME_SNAP_ABORT = 9,
    NET__FRAME_SNAP_ACK = 10,
    NET__FRAME_PING = 11,
    NET__FRAME_TYPE_MAX_ = 11
};

/* Payload bytes before the data of a SNAP_CHUNK (the snapshot id). */
#define NET__SNAP_CHUNK_PREFIX_BYTES 8u

struct net__wire_member {
    uint64_t id;
    const char *url; /* not NUL-terminated */
    size_t url_len;
};

/* The payload of HELLO and HELLO_ACK. */
struct net__hello {
    uint64_t from_id; /* the sender's member id */
    uint64_t to_id;   /* the id the sender believes the receiver has */
    const char *token;
    size_t token_len;
    size_t n_members;
    struct net__wire_member members[NET_MEMBERS_MAX]; /* ids strictly ascending */
};

/* A decoded (or to-be-encoded) frame. Which member is valid depends on type. */
struct net__frame {
    uint8_t version;
    uint8_t type; /* enum net__frame_type */
    union {
        struct net__hello hello; /* HELLO and HELLO_ACK */
        struct {                 /* REJECT */
            const char *reason;
            size_t reason_len;
        } reject;
        struct { /* RAFT */
            const void *data;
            size_t len;
        } raft;
        struct { /* SNAP_BEGIN */
            uint64_t snap_id;
            uint32_t n_files;
            uint64_t total_bytes;
            const void *meta;
            size_t meta_len;
        } snap_begin;
        struct { /* SNAP_FILE */
            uint64_t snap_id;
            uint64_t size; /* bytes of file content that SNAP_CHUNKs will carry */
            const char *name;
            size_t name_len;
        } snap_file;
        struct { /* SNAP_CHUNK */
            uint64_t snap_id;
            const void *data;
            size_t len;
        } snap_chunk;
        struct { /* SNAP_END */
            uint64_t snap_id;
            uint32_t crc32; /* of every chunk's data, in stream order */
        } snap_end;
        struct { /* SNAP_ABORT and SNAP_ACK */
            uint64_t snap_id;
            uint8_t status; /* SNAP_ACK only: 0 stored, 1 failed */
            const char *reason;
            size_t reason_len;
        } snap_ack;
    } u;
};

/*
 * Decodes the frame at the start of buf[0..len). frame_bytes_max bounds the
 * whole frame (prefix included) and must be >= NET__FRAME_HEADER_BYTES.
 * Returns a negative code (NET_ETOOBIG, NET_EVERSION, NET_ETYPE,
 * NET_EMALFORMED, NET_EFILENAME) for a bad frame — detected as soon as the
 * offending header byte is present; 0 with *used = 0 when buf holds only a
 * prefix of a valid frame; 0 with *used = the frame's size and *f filled in,
 * borrowing from buf.
 */
int net__frame_decode(const void *buf, size_t len, size_t frame_bytes_max, struct net__frame *f,
                      size_t *used);

/* Bytes net__frame_encode() will produce for f, or 0 if f is not encodable. */
size_t net__frame_encoded_size(const struct net__frame *f);

/*
 * Encodes f (f->version is ignored: NET_PROTOCOL_VERSION is written) into a
 * malloc'ed buffer the caller frees. Validates f with the decoder's rules,
 * so what this node sends, it would accept: NET_EINVAL, NET_EFILENAME,
 * NET_ETOOBIG (over NET_FRAME_BYTES_LIMIT), NET_ENOMEM.
 */
int net__frame_encode(const struct net__frame *f, uint8_t **out, size_t *out_len);

/* Writes the 6 header bytes of a frame carrying payload_len payload bytes. */
void net__frame_put_header(uint8_t *dst, uint8_t type, size_t payload_len);

/*
 * A relative snapshot file name is safe when: 1..NET_SNAP_NAME_MAX bytes; no
 * NUL or other control byte; not absolute; no empty, "." or ".." component
 * (so no "a//b", no trailing "/"). Returns 0 or NET_EFILENAME.
 */
int net__snap_name_check(const char *name, size_t len);

/* Big-endian helpers (the wire is big-endian). */
static inline void net__put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void net__put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline void net__put_u64(uint8_t *p, uint64_t v) {
    net__put_u32(p, (uint32_t)(v >> 32));
    net__put_u32(p + 4, (uint32_t)v);
}
static inline uint16_t net__get_u16(const uint8_t *p) {
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}
static inline uint32_t net__get_u32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t net__get_u64(const uint8_t *p) {
    return (uint64_t)net__get_u32(p) << 32 | net__get_u32(p + 4);
}

/* CRC-32 (IEEE 802.3, as zlib's crc32): start with crc = 0. */
uint32_t net__crc32(uint32_t crc, const void *buf, size_t len);

/*
 * The receive buffer of one connection: bytes read from the socket land in
 * [head, tail); whole frames are decoded from the front. Memory: at most
 * cap_max bytes, which must exceed the largest frame the connection accepts
 * plus NET__READER_READ_BYTES, so a partial frame always has room to
 * complete. A frame returned by net__reader_next() borrows the buffer until
 * the next call of any net__reader_* function on r.
 */
#define NET__READER_READ_BYTES (64u * 1024u)  /* room offered to each socket read */
#define NET__READER_KEEP_BYTES (256u * 1024u) /* an idle buffer above this is freed */

struct net__reader {
    uint8_t *buf;
    size_t cap;     /* bytes allocated */
    size_t head;    /* first unconsumed byte */
    size_t tail;    /* one past the last byte read */
    size_t cap_max; /* bytes */
};

void net__reader_init(struct net__reader *r, size_t cap_max);
/* Offers at least min(NET__READER_READ_BYTES, room left) free bytes at *p. */
int net__reader_space(struct net__reader *r, uint8_t **p, size_t *n);
void net__reader_commit(struct net__reader *r, size_t n);
/*
 * Decodes the next frame: 0 with *have = true and *f filled; 0 with *have =
 * false when more bytes are needed; a decoder error (the connection must be
 * dropped, the reader is left as it was).
 */
int net__reader_next(struct net__reader *r, size_t frame_bytes_max, struct net__frame *f,
                     bool *have);
void net__reader_release(struct net__reader *r);

#endif /* QUORUMFS_NET_FRAME_H */
