/*
 * client_int.h - declarations shared by the files of client/ (private).
 *
 *   grpc.c    pure code over byte buffers: the gRPC response decoder
 *             (5-byte length prefix), the protobuf nesting check, grpc-message
 *             percent-decoding, endpoint URL parsing, error names. No I/O;
 *             unit tested and fuzzed (tests/fuzz/fuzz_client_grpc.c) alone.
 *   tls.c     the OpenSSL client context and per-connection TLS objects.
 *   client.c  connections (libuv TCP, TLS over memory BIOs, the nghttp2
 *             client session), failover, calls, streams, authentication.
 * Everything runs on the client's loop thread.
 */
#ifndef QUORUMFS_CLIENT_INT_H
#define QUORUMFS_CLIENT_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "client/client.h"

#define CLIENT__ASSERT(cond)                                                                       \
    do {                                                                                           \
        if (!(cond)) client__assert_fail(#cond, __FILE__, __LINE__);                               \
    } while (0)
_Noreturn void client__assert_fail(const char *expr, const char *file, int line);

/* ---- intrusive circular doubly linked list ---------------------------------- */

/* A node is linked iff next != itself; a removed node points to itself, so
 * removing twice is harmless. */
struct client__link {
    struct client__link *prev, *next;
};

#define CLIENT__CONTAINER(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))

static inline void client__link_init(struct client__link *l) {
    l->prev = l->next = l;
}
static inline bool client__link_empty(const struct client__link *head) {
    return head->next == head;
}
static inline bool client__linked(const struct client__link *l) {
    return l->next != l;
}
static inline void client__link_insert_before(struct client__link *at, struct client__link *n) {
    n->next = at;
    n->prev = at->prev;
    at->prev->next = n;
    at->prev = n;
}
/* Tail of the list `head`. */
static inline void client__link_push(struct client__link *head, struct client__link *n) {
    client__link_insert_before(head, n);
}
static inline void client__link_remove(struct client__link *n) {
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

/* ---- gRPC framing (grpc.c) ---------------------------------------------------- */

/* Length-prefixed message: 1 byte compressed flag, 4 bytes big-endian size. */
#define CLIENT__GRPC_PREFIX_BYTES 5u
/* Protobuf nesting accepted in a response. protobuf-c unpacks recursively,
 * so a server sending deeper input could exhaust the stack; 100 is the C++
 * protobuf default recursion limit, far above etcd's deepest message. */
#define CLIENT__PROTO_DEPTH_MAX 100u

/*
 * Incremental decoder of gRPC length-prefixed messages arriving in HTTP/2
 * DATA chunks of any size. A message is delivered once complete: straight
 * from the input when it lies in one chunk, otherwise from a buffer that
 * grows with the bytes actually received, never with the size the prefix
 * claims. The declared size is checked against max_bytes before anything
 * is buffered.
 */
struct client__reader {
    size_t max_bytes; /* largest message accepted, bytes */
    uint8_t prefix[CLIENT__GRPC_PREFIX_BYTES];
    size_t prefix_len; /* prefix bytes received of the current message */
    size_t body_len;   /* declared size of the current message, bytes */
    uint8_t *buf;      /* body bytes received so far, when split */
    size_t buf_len;    /* bytes in buf */
    size_t buf_cap;    /* allocated bytes of buf */
    bool failed;       /* an earlier feed failed; input is ignored */
};

/* Called per complete message; data is valid during the call only. A
 * non-zero return stops the feed and is returned by it. */
typedef int (*client__msg_cb)(void *arg, const uint8_t *data, size_t len);

void client__reader_init(struct client__reader *r, size_t max_bytes);
void client__reader_free(struct client__reader *r);
/* Consumes len bytes. Returns 0, the callback's non-zero value,
 * CLIENT_ETOOBIG (declared size over max_bytes), CLIENT_EMALFORMED (flag
 * byte not 0: compressed or garbage) or CLIENT_ENOMEM; after an error the
 * reader ignores further input. */
int client__reader_feed(struct client__reader *r, const uint8_t *data, size_t len,
                        client__msg_cb cb, void *arg);
/* Bytes of an incomplete message held (0 between messages). */
size_t client__reader_pending(const struct client__reader *r);
/* Heap bytes the reader holds. */
size_t client__reader_buffered(const struct client__reader *r);
/* Size the current message's prefix declares (0 before the prefix is in). */
uint32_t client__reader_declared(const struct client__reader *r);

/* Encodes msg as one framed gRPC message into a new malloc()ed buffer the
 * caller frees: `headroom` bytes for the caller, then prefix and message;
 * *out_len counts prefix and message. Returns 0, CLIENT_ETOOBIG (over
 * CLIENT_SEND_MSG_BYTES_MAX) or CLIENT_ENOMEM. */
int client__grpc_encode(const ProtobufCMessage *msg, size_t headroom, uint8_t **out,
                        size_t *out_len);

/* Checks that data is well-formed protobuf wire format for desc, nested at
 * most depth_max deep. Returns 0 or CLIENT_EMALFORMED. */
int client__proto_check(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
                        unsigned depth_max);
/* client__proto_check, then protobuf-c's unpack; NULL when malformed or out
 * of memory. Free with protobuf_c_message_free_unpacked(m, NULL). */
ProtobufCMessage *client__proto_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                                       size_t len);

/* Decodes a grpc-message value (gRPC spec: %XX escapes; a '%' not followed
 * by two hex digits stays as is), keeping at most out_size - 1 bytes and
 * NUL-terminating. Returns the decoded length. out_size > 0. */
size_t client__percent_decode(const char *in, size_t in_len, char *out, size_t out_size);

/* Formats a grpc-timeout value for timeout_ms ("5000m", or in seconds
 * "4295S" when it needs more than 8 digits) into out[16]. */
void client__grpc_timeout_format(uint64_t timeout_ms, char out[16]);

/* The gRPC status for an HTTP status without grpc-status (gRPC spec,
 * "HTTP to gRPC status code mapping"). */
int client__grpc_code_from_http(int http_status);

/* ---- endpoint URLs (grpc.c) ----------------------------------------------------- */

#define CLIENT__HOST_BYTES_MAX 254u

struct client__url {
    bool tls;                                    /* https:// */
    bool host_is_ip;                             /* IPv4 or IPv6 literal */
    char host[CLIENT__HOST_BYTES_MAX];           /* without brackets */
    char port[6];                                /* decimal, 1..65535 */
    char authority[CLIENT__HOST_BYTES_MAX + 10]; /* host:port, IPv6 bracketed */
};

/* Parses "http://H:P", "https://H:P" or "H:P" (optional trailing '/').
 * Returns 0 or CLIENT_EURL. */
int client__url_parse(const char *s, struct client__url *u);

/* ---- TLS (tls.c) ---------------------------------------------------------------- */

/* A client SSL_CTX: TLS 1.2 or later, ALPN "h2", peer verification against
 * cacert (NULL: the system's default CAs), client certificate cert/key if
 * given. Returns 0 or CLIENT_ETLS / CLIENT_ENOMEM with a sentence in err. */
int client__tls_ctx_new(const char *cacert, const char *cert, const char *key, SSL_CTX **out,
                        char *err, size_t errlen);
/* An SSL in connect state over two new memory BIOs (owned by the SSL),
 * with SNI (names only) and hostname or IP verification for u->host. */
int client__tls_new(SSL_CTX *ctx, const struct client__url *u, SSL **ssl, BIO **rbio, BIO **wbio);
/* Why the handshake or a read on ssl failed, as a phrase ("certificate
 * verify failed: unable to get local issuer certificate"); clears
 * OpenSSL's error queue. */
void client__tls_error(SSL *ssl, int ssl_err, char *out, size_t outlen);

#endif /* QUORUMFS_CLIENT_INT_H */
