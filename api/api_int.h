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
#include "raft/alloc.h"

#define API__ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) api__assert_fail(#cond, __FILE__, __LINE__);                                  \
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
    size_t max_bytes; /* largest message accepted, bytes */
    uint8_t prefix[API__GRPC_PREFIX_BYTES];
    size_t prefix_len; /* prefix bytes received of the current message */
    size_t body_len;   /* declared size of the current message, bytes */
    uint8_t *buf;      /* body bytes received so far (when split) */
    size_t buf_len;    /* bytes in buf */
    size_t buf_cap;    /* allocated bytes of buf */
    bool failed;       /* a previous feed failed; further input is ignored */
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
int api__grpc_encode(const ProtobufCMessage *msg, size_t max_bytes, size_t headroom, uint8_t **out,
                     size_t *out_len);
/* Size the current message's prefix declares (0 before the prefix is in). */
uint32_t api__grpc_reader_declared(const struct api__grpc_reader *r);

/* Checks that `data` is well-formed protobuf wire format for `desc` nested
 * at most depth_max deep (fields of unknown number or of scalar type are
 * skipped, not descended into). Returns 0 or API_EMALFORMED. */
int api__proto_check(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
                     unsigned depth_max);

/* Unpacks a request after api__proto_check(); NULL on malformed input or
 * out of memory. Free with protobuf_c_message_free_unpacked(m, NULL). */
ProtobufCMessage *api__proto_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                                    size_t len);
/* The same, telling why it returned NULL: *err = API_EMALFORMED or
 * API_ENOMEM (a server error, not the client's). */
ProtobufCMessage *api__proto_unpack_err(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                                        size_t len, int *err);

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

/* Upper bound of the method table's size (asserted in methods.c). */
#define API__METHODS_MAX 40u

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
void api__dispatch_stream_request(const struct api_backend *be, const struct api__method *m,
                                  struct api_stream *s, const ProtobufCMessage *req);
void api__dispatch_stream_end(const struct api_backend *be, const struct api__method *m,
                              struct api_stream *s, enum api_stream_event ev);

/* ---- buffers and the JSON codec (json.c) -------------------------------- */

/* A growable byte buffer with a ceiling: appends past `max` bytes fail
 * with API_ETOOBIG, allocation failures with API_ENOMEM; the first failure
 * sticks (later appends are ignored), so a writer checks `failed` once. */
struct api__buf {
    uint8_t *p;
    size_t len, cap; /* bytes used, allocated */
    size_t max;      /* ceiling, bytes */
    int failed;      /* 0 or the first error */
};
void api__buf_init(struct api__buf *b, size_t max);
void api__buf_free(struct api__buf *b);
int api__buf_reserve(struct api__buf *b, size_t n);
int api__buf_add(struct api__buf *b, const void *p, size_t n);
int api__buf_str(struct api__buf *b, const char *s);
int api__buf_printf(struct api__buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The backend's view of a buffer (api_text_printf). */
struct api_text {
    struct api__buf b;
};

/* Decoding found only whitespace: no value (not an error for a body). */
#define API__JSON_EOF 1

/* Appends `m` as JSON the way etcd's gateway marshals it (see json.c).
 * Returns 0 or the buffer's error (API_ETOOBIG also for nesting deeper
 * than API__PROTO_DEPTH_MAX). */
int api__json_encode(struct api__buf *b, const ProtobufCMessage *m);
int api__json_encode_depth(struct api__buf *b, const ProtobufCMessage *m, unsigned depth);
/* Appends s[0..n) as a JSON string literal, escaped as Go escapes it. */
int api__json_string(struct api__buf *b, const char *s, size_t n);
/*
 * Converts the first JSON value of p[0..n) into protobuf wire bytes of type
 * `d` appended to `wire`; *consumed is where the value (and the whitespace
 * before it) ends. Returns 0; API__JSON_EOF (only whitespace); or
 * API_EMALFORMED, API_ETOOBIG, API_ENOMEM with Go's wording of the problem
 * in err (NUL-terminated, cut to err_size).
 */
int api__json_decode(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n,
                     size_t *consumed, struct api__buf *wire, char *err, size_t err_size);
/* Go's StdEncoding.Decode: -1 and *out_len on success, else the offset of
 * the corrupt input. out needs n / 4 * 3 + 3 bytes. */
long api__b64_decode(const uint8_t *s, size_t n, uint8_t *out, size_t *out_len);

/* ---- HTTP/1.1 (http1.c) ------------------------------------------------- */

/* Request line and headers, bytes. */
#define API__H1_HEAD_BYTES_MAX (64u * 1024u)
/* Header fields per request. */
#define API__H1_HEADERS_MAX 128u
/* Input kept while a response is in progress (pipelined requests); past
 * it the socket is not read until the response is out. */
#define API__H1_PIPELINE_BYTES (64u * 1024u)
/* Chunk-size and trailer lines of a chunked body, bytes each. */
#define API__H1_CHUNK_LINE_MAX 4096u

enum api__h1_method {
    API__H1_OTHER = 0,
    API__H1_GET,
    API__H1_HEAD,
    API__H1_POST,
    API__H1_PUT,
    API__H1_DELETE,
    API__H1_OPTIONS,
};

/* A parsed request head. Offsets point into the parsed bytes. */
struct api__h1_req {
    enum api__h1_method method;
    size_t target_off, target_len; /* request-target as sent */
    size_t path_len;               /* its path: up to '?' */
    int minor;                     /* HTTP/1.minor */
    bool keep_alive;
    bool chunked; /* Transfer-Encoding: chunked */
    bool has_length;
    uint64_t content_length; /* bytes, when has_length */
    bool expect_continue;
    int error_status; /* after a parse error: 400, 431, 501, 505 */
};

/*
 * Parses a request head at p[0..n) (pure). Returns the head's length in
 * bytes (> 0) once its empty line is in; 0 while incomplete (`scanned`
 * keeps the search position across calls: start it at 0); or
 * API_EMALFORMED / API_ETOOBIG with r->error_status set.
 */
int api__h1_parse_head(const uint8_t *p, size_t n, size_t *scanned, struct api__h1_req *r);

/* Incremental decoder of a chunked body. */
struct api__h1_chunked {
    int state;
    uint64_t remaining; /* bytes left in the current chunk */
    size_t line;        /* bytes of the current size or trailer line */
    unsigned digits;    /* hex digits of the size line; in a trailer line:
                         * 1 after a CR, 2 once it has other content */
};
/* Consumes p[0..n) (sets *used), appending data to body (whose max is the
 * body limit). Returns 1 at the end of the body, 0 for more, API_ETOOBIG
 * or API_EMALFORMED. */
int api__h1_chunked_feed(struct api__h1_chunked *ck, const uint8_t *p, size_t n, size_t *used,
                         struct api__buf *body);

/* The HTTP/1.1 state of a connection. */
struct api__h1 {
    struct api__buf in; /* received bytes not yet consumed */
    size_t scanned;     /* api__h1_parse_head's search position */
    size_t head_len;    /* 0 until the current head parsed */
    struct api__h1_req req;
    struct api__h1_chunked ck;
    struct api__buf body;    /* a chunked body, decoded */
    size_t body_in;          /* input bytes the chunked body consumed */
    bool continue_sent;      /* "100 Continue" written for this request */
    struct api_call *active; /* the request being answered, or NULL */
    bool close_after;        /* close once the current response is out */
    bool processing;         /* inside api__h1_pump */
};

struct api__conn;
/* Bytes received on an HTTP/1.1 connection. Returns 0 or -1 (closing). */
int api__h1_recv(struct api__conn *c, const uint8_t *p, size_t n);
/* Answers complete requests while none is in progress. */
void api__h1_pump(struct api__conn *c);
/* True while the socket should not be read (pipelined input piles up). */
bool api__h1_paused(const struct api__conn *c);
void api__h1_free(struct api__conn *c);
/* Answer paths of api_reply()/api_reply_error()/api_stream_*() for
 * gateway calls. */
int api__h1_answer(struct api_call *call, const ProtobufCMessage *msg, int code,
                   const char *message);
int api__h1_stream_send(struct api_call *call, const ProtobufCMessage *msg);
/* The HTTP status etcd's gateway (grpc-gateway 1.9) uses for a gRPC code. */
int api__h1_status_from_grpc(int code);

/* ---- metrics (http1.c) --------------------------------------------------- */

/* Counts a finished call of method `m` with gRPC status `code`. */
void api__metrics_handled(struct api_server *s, const struct api__method *m, int code);
void api__metrics_started(struct api_server *s, const struct api__method *m);

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

/* "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": an HTTP/2 client with prior knowledge. */
#define API__H2_PREFACE_BYTES 24u

enum api__proto {
    API__PROTO_UNKNOWN = 0, /* too few bytes yet */
    API__PROTO_H2 = 1,
    API__PROTO_H1 = 2,
};

/* One encoded response message waiting in a call's queue. */
struct api__out_msg {
    struct api__out_msg *next;
    size_t len; /* prefix + message bytes */
    size_t off; /* bytes already handed to nghttp2 */
    /* followed by the bytes (headroom of api__grpc_encode) */
};

/* What a call answers: a gRPC call (HTTP/2), a JSON gateway request or a
 * /health check (HTTP/1.1). */
enum api__call_kind {
    API__CALL_GRPC = 0,
    API__CALL_GATEWAY = 1,
    API__CALL_HEALTH = 2,
};

/* The verified client certificate's CN, shared by a connection and its
 * calls (which may outlive it); freed with the last reference. */
struct api__peer_cn {
    unsigned refs; /* the connection's and each call's */
    char cn[];     /* UTF-8, NUL-terminated */
};

struct api_call {
    struct api__conn *conn;       /* NULL once detached from its connection */
    struct api__peer_cn *peer_cn; /* a reference, or NULL: see api_call_peer_cn() */
    enum api__call_kind kind;
    const struct api__method *m; /* NULL until :path matched */
    int32_t stream_id;
    bool transport;       /* the HTTP/2 stream is open */
    bool backend;         /* the backend holds the call */
    unsigned busy;        /* backend entries running for this call */
    bool dispatched;      /* the request message was delivered */
    bool headers_sent;    /* response HEADERS submitted */
    bool finishing;       /* status decided; trailers follow the queue */
    bool half_close_told; /* API_STREAM_HALF_CLOSED reported */
    bool cancel_told;     /* API_STREAM_CANCELLED reported */
    bool drain_wanted;    /* api_stream_send() said API_EQUEUEFULL */
    bool drain_due;       /* queue drained: tell the backend */
    /* Request header facts, valid until the headers are complete. */
    bool is_post;
    bool grpc_content_type;
    size_t header_bytes;
    char *path; /* copy of :path while unmatched */
    size_t path_len;
    /* Status for the trailers, once finishing. */
    int code;
    char *message; /* percent-encoded grpc-message or NULL */
    int http_status;
    /* Outgoing messages. */
    struct api__out_msg *q_head, *q_tail;
    size_t q_bytes;
    /* Incoming messages. */
    struct api__grpc_reader rd;
    ProtobufCMessage *req;        /* unary: owned until answered */
    void *user;                   /* api_stream_set_data() */
    struct api_call *prev, *next; /* the connection's calls */
};

/* A stream handle is a call; the distinct type keeps unary and streaming
 * functions from being mixed up by the backend. */
struct api_stream {
    struct api_call c;
};

/* One uv_write: a chunk of output. */
struct api__out_chunk {
    uv_write_t req;
    struct api__conn *conn;
    size_t len;
    uint8_t data[API__CONN_WRITE_CHUNK_BYTES];
};

struct api__conn {
    struct api_server *server;
    uv_tcp_t tcp;
    bool detached;                        /* no socket (fuzzing): output is dropped */
    bool metrics_only;                    /* a --listen-metrics-urls listener's */
    enum api__proto proto;                /* decided by the first bytes or ALPN */
    uint8_t sniff[API__H2_PREFACE_BYTES]; /* first bytes while undecided */
    size_t sniff_len;
    struct api__h1 h1;            /* proto == API__PROTO_H1 */
    nghttp2_session *h2;          /* NULL until HTTP/2 is chosen */
    SSL *ssl;                     /* NULL for plaintext */
    BIO *rbio, *wbio;             /* owned by ssl */
    bool tls_ready;               /* handshake done */
    struct api__peer_cn *peer_cn; /* set once the handshake verified a client CN */
    bool closing;
    bool reading; /* uv_read_start active */
    bool in_recv; /* inside nghttp2_session_mem_recv */
    bool dirty;   /* on server->dirty */
    struct api__conn *dirty_next;
    struct api__conn *prev, *next; /* server->conns (while not closing) */
    struct api_call *calls;        /* calls whose HTTP/2 stream is open */
    size_t write_bytes;            /* handed to uv_write, not yet written */
    size_t recv_buffered;          /* heap bytes in the calls' readers */
    uint8_t *det_out;              /* detached: output kept for the test */
    size_t det_len, det_cap;
    unsigned drain_due;         /* calls with drain_due set */
    struct api__out_chunk *out; /* chunk being filled */
};

struct api__listener {
    uv_tcp_t tcp;
    struct api_server *server;
    bool tls;          /* https:// */
    bool metrics_only; /* --listen-metrics-urls: /metrics and /health only */
    int port;          /* bound port */
    bool open;         /* handle initialised and not yet closed */
};

struct api_server {
    uv_loop_t *loop;
    struct api_backend be;
    uv_thread_t thread;    /* the loop's thread, for assertions */
    size_t max_recv_bytes; /* request message limit, bytes */
    size_t max_send_bytes; /* response message limit, bytes */
    uint32_t max_streams;  /* per connection */
    uint32_t max_conns;
    size_t stream_queue_max; /* per-stream send queue limit, bytes */
    SSL_CTX *tls;            /* NULL without cert/key */
    struct api__listener listeners[API_LISTENERS_MAX];
    unsigned n_listeners;
    struct api__conn *conns; /* doubly linked list of open connections */
    unsigned n_conns;
    struct api__conn *dirty; /* connections with output to flush */
    uv_idle_t flush_idle;    /* flushes `dirty` before the loop blocks */
    bool idle_open;
    bool closing;
    unsigned handles_open; /* libuv handles not yet closed */
    void (*close_cb)(void *data);
    void *close_data;
    /* Reads are handled to completion inside the read callback, so one
     * buffer of each kind serves every connection. */
    uint8_t read_buf[API__READ_BYTES];
    /* Calls finished, per method and gRPC code (grpc_server_handled_total),
     * and started, per method. */
    uint64_t handled[API__METHODS_MAX][API_GRPC_UNAUTHENTICATED + 1];
    uint64_t started[API__METHODS_MAX];
    const char *version_server; /* /version, static or the options' */
    const char *version_cluster;
    char version_buf[2][32];
    uint8_t plain_buf[API__TLS_PLAIN_BYTES];
};

/* Accepts a connection from listener `l` (conn.c). */
void api__conn_accept(struct api__listener *l);
/* Starts closing a connection; freed from its libuv close callback. */
void api__conn_close(struct api__conn *c);
/* Appends plaintext output (through TLS when the connection has it). */
int api__conn_write(struct api__conn *c, const void *p, size_t n);
/* Frees a call no holder keeps. */
void api__call_maybe_free(struct api_call *call);
/* Whether the client can no longer be reached for this call. */
bool api__call_gone(const struct api_call *call);
/* Links a new call into its connection's list. */
void api__conn_link_call(struct api__conn *c, struct api_call *call);
/* The transport is done with an HTTP/1.1 call: unlinks it. */
void api__conn_unlink_call(struct api_call *call);
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
