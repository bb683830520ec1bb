/*
 * fuzz_client_grpc.c - libFuzzer harness for client/'s response decoder:
 * the gRPC length-prefix reader, the protobuf nesting check and protobuf-c
 * unpacking of the response types the client reads, plus grpc-message
 * percent-decoding and endpoint URL parsing. This is the path every byte a
 * server sends in a DATA frame or a trailer takes before a callback sees it.
 *
 * Input layout: byte 0 picks the response type, byte 1 the chunk size the
 * input is fed in and the receive limit, the rest is the DATA payload (and,
 * as text, a grpc-message value and an endpoint URL). Properties checked
 * beyond "no crash, no leak": the reader never delivers more bytes than it
 * was given nor buffers more than the limit; a decoded message re-encodes
 * to bytes that decode again; percent-decoding never grows its input and
 * always terminates its output; a parsed URL's fields are terminated and
 * its port is in 1..65535.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const ProtobufCMessageDescriptor *const descs[] = {
    &etcdserverpb__range_response__descriptor,
    &etcdserverpb__put_response__descriptor,
    &etcdserverpb__delete_range_response__descriptor,
    &etcdserverpb__txn_response__descriptor,
    &etcdserverpb__compaction_response__descriptor,
    &etcdserverpb__watch_response__descriptor,
    &etcdserverpb__lease_grant_response__descriptor,
    &etcdserverpb__lease_keep_alive_response__descriptor,
    &etcdserverpb__authenticate_response__descriptor,
    &etcdserverpb__member_list_response__descriptor,
    &etcdserverpb__status_response__descriptor,
};

struct ctx {
    const ProtobufCMessageDescriptor *d;
    size_t delivered;
};

static int on_msg(void *arg, const uint8_t *p, size_t len) {
    struct ctx *c = arg;
    c->delivered += len;
    ProtobufCMessage *m = client__proto_unpack(c->d, p, len);
    if (m == NULL) return 0;
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *again = malloc(n ? n : 1);
    if (again != NULL) {
        if (protobuf_c_message_pack(m, again) != n) abort();
        ProtobufCMessage *m2 = client__proto_unpack(c->d, again, n);
        if (m2 == NULL) abort();
        protobuf_c_message_free_unpacked(m2, NULL);
        free(again);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    struct ctx c = {.d = descs[data[0] % (sizeof(descs) / sizeof(descs[0]))]};
    size_t chunk = 1 + (size_t)(data[1] & 0x3f) * 37;
    size_t max = (data[1] & 0x40) ? 64 : CLIENT_RECV_MSG_BYTES_MAX;
    data += 2;
    size -= 2;

    struct client__reader r;
    client__reader_init(&r, max);
    for (size_t off = 0; off < size;) {
        size_t take = size - off < chunk ? size - off : chunk;
        int rc = client__reader_feed(&r, data + off, take, on_msg, &c);
        if (rc != 0 && rc != CLIENT_ETOOBIG && rc != CLIENT_EMALFORMED && rc != CLIENT_ENOMEM)
            abort();
        if (client__reader_buffered(&r) > max) abort();
        off += take;
    }
    if (c.delivered > size) abort();
    client__reader_free(&r);

    char *out = malloc(size + 1);
    if (out != NULL) {
        size_t n = client__percent_decode((const char *)data, size, out, size + 1);
        if (n > size || out[n] != '\0') abort();
        free(out);
    }

    char *url = malloc(size + 1);
    if (url != NULL) {
        memcpy(url, data, size);
        url[size] = '\0';
        struct client__url u;
        if (client__url_parse(url, &u) == 0) {
            if (memchr(u.host, '\0', sizeof(u.host)) == NULL) abort();
            if (memchr(u.authority, '\0', sizeof(u.authority)) == NULL) abort();
            long port = strtol(u.port, NULL, 10);
            if (port < 1 || port > 65535) abort();
        }
        free(url);
    }
    return 0;
}
