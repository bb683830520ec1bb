/*
 * api_int.h - declarations shared by the files of api/ (private).
 *
 * Three layers, each testable alone:
 *   grpc.c     gRPC message framing (5-byte length prefix), protobuf nesting
 *              check, status trailers and their percent-encoding. Pure code
 *              over byte buffers: no I/O, no allocation it does not return.
 *   methods.c  the table of routed methods (path, kind, message types) and
 *              the typed dispatch to struct api_backend.
 *   server.c   listeners, URL parsing, TLS context, server life cycle.
 *   conn.c     one client connection: TLS over memory BIOs, the nghttp2
 *              session, calls and streams, the public reply functions.
 * Everything here runs on the server's loop thread.
 */
#ifndef QUORUMFS_API_INT_H
#define QUORUMFS_API_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include "api/api.h"

#define API__ASSERT(cond)                                                              \
    do {                                                                               \
        if (!(cond)) api__assert_fail(#cond, __FILE__, __LINE__);                      \
    } while (0)
_Noreturn void api__assert_fail(const char *expr, const char *file, int line);

/* ---- gRPC framing (grpc.c) ---------------------------------------------- */

/* Length-prefixed message: 1 byte compressed flag, 4 bytes big-endian size. */
#define API__GRPC_PREFIX_BYTES 5u
/* grpc-message values are cut to this many bytes before percent-encoding. */
#define API__GRPC_MESSAGE_BYTES_MAX 1024u
/* Room for a percent-encoded grpc-message (3 bytes per input byte) + NUL. */
#define API__GRPC_MESSAGE_ENCODED_MAX (3u * API__GRPC_MESSAGE_BYTES_MAX + 1u)
/* Protobuf nesting accepted in a request; protobuf-c unpacks recursively,
 * so deeper input (nested Txn) would exhaust the stack. Matches the C++
 * protobuf default recursion limit. */
#define API__PROTO_DEPTH_MAX 100u

/*
 * Incremental decoder of a stream of gRPC length-prefixed messages, as they
 * arrive in HTTP/2 DATA chunks of any size. A message is delivered once
 * complete, straight from the input when it lies in one chunk, otherwise
 * from a buffer that grows with the bytes actually received (never with the
 * size the prefix claims). The declared size is checked against max_bytes
 * before anything is buffered.
 */
struct api__grpc_reader {
    size_t max_bytes;    /* largest message accepted, bytes */
    uint8_t prefix[API__GRPC_PREFIX_BYTES];
    size_t prefix_len;   /* prefix bytes received of the current message */
    size_t body_len;     /* declared size of the current message, bytes */
    uint8_t *buf;        /* body bytes received so far (when split) */
    size_t buf_len;      /* bytes in buf */
    size_t buf_cap;      /* allocated bytes of buf */
    bool failed;         /* a previous feed failed; further input is ignored */
};

/* Called per complete message; data is valid during the call only.
 * A non-zero return stops the feed and is returned by it. */
typedef int (*api__grpc_msg_cb)(void *arg, const uint8_t *data, size_t len);

void api__grpc_reader_init(struct api__grpc_reader *r, size_t max_bytes);
void api__grpc_reader_free(struct api__grpc_reader *r);
/* Consumes `len` bytes. Returns 0, the callback's non-zero value, or
 * API_ETOOBIG, API_ECOMPRESSED, API_EMALFORMED (flag byte neither 0 nor 1),
 * API_ENOMEM; after an error the reader ignores further input. */
int api__grpc_reader_feed(struct api__grpc_reader *r, const uint8_t *data, size_t len,
                          api__grpc_msg_cb cb, void *arg);
/* Bytes of an incomplete message currently held (0 between messages). */
size_t api__grpc_reader_pending(const struct api__grpc_reader *r);
/* Heap bytes the reader holds. */
size_t api__grpc_reader_buffered(const struct api__grpc_reader *r);

/* Writes the 5-byte prefix of an uncompressed message of `len` bytes. */
void api__grpc_prefix_write(uint8_t out[API__GRPC_PREFIX_BYTES], uint32_t len);

/* Encodes `msg` as one framed gRPC message into a new malloc()ed buffer the
 * caller frees: `headroom` bytes for the caller, then prefix and message;
 * *out_len counts prefix and message. Returns 0, API_ETOOBIG (over
 * max_bytes or 2^32-1) or API_ENOMEM. */
int api__grpc_encode(const ProtobufCMessage *msg, size_t max_bytes, size_t headroom,
                     uint8_t **out, size_t *out_len);
/* Size the current message's prefix declares (0 before the prefix is in). */
uint32_t api__grpc_reader_declared(const struct api__grpc_reader *r);

/* Checks that `data` is well-formed protobuf wire format for `desc` nested
 * at most depth_max deep (fields of unknown number or of scalar type are
 * skipped, not descended into). Returns 0 or API_EMALFORMED. */
int api__proto_check(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                     size_t len, unsigned depth_max);

/* Unpacks a request after api__proto_check(); NULL on malformed input or
 * out of memory. Free with protobuf_c_message_free_unpacked(m, NULL). */
ProtobufCMessage *api__proto_unpack(const ProtobufCMessageDescriptor *desc,
                                    const uint8_t *data, size_t len);

/* Percent-encodes a grpc-message value (gRPC HTTP/2 protocol spec: bytes
 * outside 0x20..0x7E and '%' become %XX, upper-case hex). At most
 * API__GRPC_MESSAGE_BYTES_MAX input bytes are encoded, without splitting a
 * UTF-8 sequence. `out` has API__GRPC_MESSAGE_ENCODED_MAX bytes; returns
 * the encoded length (NUL-terminated). */
size_t api__grpc_percent_encode(const char *in, size_t in_len, char *out);
/* Decodes the above, leniently as the spec asks (a '%' not followed by two
 * hex digits stays as is). out has room for in_len + 1 bytes; returns the
 * decoded length (NUL-terminated). */
size_t api__grpc_percent_decode(const char *in, size_t in_len, char *out);

/* Formats the decimal grpc-status value into out (>= 4 bytes). */
size_t api__grpc_status_format(int code, char out[4]);

/* ---- method table (methods.c) ------------------------------------------ */

enum api__kind {
    API__UNARY = 1,
    API__SERVER_STREAM = 2,
    API__BIDI_STREAM = 3,
};

struct api__method {
    const char *path; /* "/etcdserverpb.KV/Range" */
    enum api__kind kind;
    const ProtobufCMessageDescriptor *req;
    const ProtobufCMessageDescriptor *resp;
    unsigned id; /* index in the table */
};

/* The method whose :path is path[0..len), or NULL. */
const struct api__method *api__method_find(const char *path, size_t len);
/* Writes the UNIMPLEMENTED message for an unknown path (grpc-go wording). */
void api__method_unknown_message(const char *path, size_t len, char *out, size_t out_size);
/* Whether the backend routes `m` (its entry or entries are non-NULL). */
bool api__method_routed(const struct api_backend *be, const struct api__method *m);
/* Asserts the stream entries of `be` are consistently set. */
void api__backend_check(const struct api_backend *be);
/* Number of methods in the table, and method i. */
unsigned api__method_count(void);
const struct api__method *api__method_at(unsigned i);

void api__dispatch_unary(const struct api_backend *be, const struct api__method *m,
                         struct api_call *call, const ProtobufCMessage *req);
/* Bidirectional streams: open; Snapshot (server stream): its first request. */
void api__dispatch_stream_open(const struct api_backend *be, const struct api__method *m,
                               struct api_stream *s, const ProtobufCMessage *req);
void api__dispatch_stream_request(const struct api_backend *be,
                                  const struct api__method *m, struct api_stream *s,
                                  const ProtobufCMessage *req);
void api__dispatch_stream_end(const struct api_backend *be, const struct api__method *m,
                              struct api_stream *s, enum api_stream_event ev);

/* ---- server and connections (server.c, conn.c) ------------------------- */

/* Bytes handed to libuv and not yet written above which a connection stops
 * reading and stops pulling frames from nghttp2 (back-pressure). */
#define API__CONN_WRITE_HIGH_BYTES (1024u * 1024u)
/* Bytes gathered into one uv_write. */
#define API__CONN_WRITE_CHUNK_BYTES (64u * 1024u)
/* Heap bytes a connection may hold in partly received request messages,
 * over all its streams; a stream that would exceed it gets
 * RESOURCE_EXHAUSTED. */
#define API__CONN_RECV_BUFFER_BYTES_MAX (64u * 1024u * 1024u)
/* Header bytes (names + values) accepted per request. */
#define API__HEADER_LIST_BYTES_MAX (64u * 1024u)
/* Socket read size, and TLS plaintext chunk size. */
#define API__READ_BYTES (64u * 1024u)
#define API__TLS_PLAIN_BYTES (16u * 1024u)
/* HTTP/2 flow-control windows we grant the client. */
#define API__H2_STREAM_WINDOW_BYTES (1024u * 1024u)
#define API__H2_CONN_WINDOW_BYTES (16u * 1024u * 1024u)

struct api__conn;

struct api__listener {
    uv_tcp_t tcp;
    struct api_server *server;
    bool tls;       /* https:// */
    int port;       /* bound port */
    bool open;      /* handle initialised and not yet closed */
};

struct api_server {
    uv_loop_t *loop;
    struct api_backend be;
    uv_thread_t thread;            /* the loop's thread, for assertions */
    size_t max_recv_bytes;         /* request message limit, bytes */
    size_t max_send_bytes;         /* response message limit, bytes */
    uint32_t max_streams;          /* per connection */
    uint32_t max_conns;
    size_t stream_queue_max;       /* per-stream send queue limit, bytes */
    SSL_CTX *tls;                  /* NULL without cert/key */
    struct api__listener listeners[API_LISTENERS_MAX];
    unsigned n_listeners;
    struct api__conn *conns;       /* doubly linked list of open connections */
    unsigned n_conns;
    struct api__conn *dirty;       /* connections with output to flush */
    uv_idle_t flush_idle;          /* flushes `dirty` before the loop blocks */
    bool idle_open;
    bool closing;
    unsigned handles_open;         /* libuv handles not yet closed */
    void (*close_cb)(void *data);
    void *close_data;
    /* Reads are handled to completion inside the read callback, so one
     * buffer of each kind serves every connection. */
    uint8_t read_buf[API__READ_BYTES];
    uint8_t plain_buf[API__TLS_PLAIN_BYTES];
};

/* Accepts a connection from listener `l` (conn.c). */
void api__conn_accept(struct api__listener *l);
/* Starts closing a connection; freed from its libuv close callback. */
void api__conn_close(struct api__conn *c);
/* Writes out what nghttp2 has to send (conn.c); used by the idle flush. */
void api__conn_flush(struct api__conn *c);
/* Called by conn.c when a connection is freed (server.c). */
void api__server_conn_gone(struct api_server *s);
/* Marks a connection as having output and arms the idle flush. */
void api__server_mark_dirty(struct api_server *s, struct api__conn *c);

/* A connection not attached to a socket, fed by a fuzzer; its output is
 * kept (up to 4 MiB) for api__conn_output(). NULL on out of memory. */
struct api__conn *api__conn_new_detached(struct api_server *s);
/* Feeds bytes as if read from the socket; returns 0 or -1 once the
 * connection decided to close. */
int api__conn_feed(struct api__conn *c, const uint8_t *data, size_t len);
/* The output produced since the last call; valid until the next feed. */
size_t api__conn_output(struct api__conn *c, const uint8_t **p);
/* Frees a detached connection (cancelling its calls). */
void api__conn_free_detached(struct api__conn *c);
/* A server with no listeners and no libuv handles, for fuzzing. */
int api__server_new_detached(const struct api_options *opts, const struct api_backend *be,
                             struct api_server **out);
void api__server_free_detached(struct api_server *s);

#endif /* QUORUMFS_API_INT_H */
