/*
 * fuzz_api_request.c - libFuzzer harness for api/'s request decoder: the
 * gRPC length-prefix reader, the protobuf nesting check and protobuf-c
 * unpacking of every routed request type, plus the grpc-message
 * percent-encoding. This is the path every byte a client sends in a DATA
 * frame takes before the backend sees it.
 *
 * Input layout: byte 0 picks the method (request type), byte 1 the chunk
 * size the input is fed in and the receive limit, the rest is the DATA
 * payload. Properties checked beyond "no crash, no leak": a decoded
 * message's encoding decodes and re-encodes to the same bytes, the reader
 * never delivers more than it was given nor buffers more than the limit,
 * and percent-encoding is printable and reversible.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct ctx {
    const struct api__method *m;
    size_t delivered; /* message bytes delivered so far */
};

static int on_msg(void *arg, const uint8_t *p, size_t len) {
    struct ctx *c = arg;
    c->delivered += len;
    ProtobufCMessage *msg = api__proto_unpack(c->m->req, p, len);
    if (msg == NULL) return 0;
    /* What the backend would see is stable: its encoding decodes again to
     * a message with the very same encoding. */
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *a = malloc(n ? n : 1);
    if (a != NULL && protobuf_c_message_pack(msg, a) != n) abort();
    if (a != NULL) {
        ProtobufCMessage *again = api__proto_unpack(c->m->req, a, n);
        if (again == NULL) abort();
        size_t n2 = protobuf_c_message_get_packed_size(again);
        uint8_t *b = malloc(n2 ? n2 : 1);
        if (b != NULL) {
            if (protobuf_c_message_pack(again, b) != n2) abort();
            if (n2 != n || memcmp(a, b, n) != 0) abort();
            free(b);
        }
        protobuf_c_message_free_unpacked(again, NULL);
        free(a);
    }
    protobuf_c_message_free_unpacked(msg, NULL);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    struct ctx c = {.m = api__method_at(data[0] % api__method_count())};
    size_t chunk = 1 + (data[1] & 0x3f) * 37;
    size_t max = (data[1] & 0x40) ? 64 : (1u << 20);
    data += 2;
    size_t len = size - 2;

    struct api__grpc_reader r;
    api__grpc_reader_init(&r, max);
    size_t fed = 0;
    int rc = 0;
    while (fed < len && rc == 0) {
        size_t n = len - fed < chunk ? len - fed : chunk;
        rc = api__grpc_reader_feed(&r, data + fed, n, on_msg, &c);
        fed += n;
        if (api__grpc_reader_buffered(&r) > max) abort();
    }
    if (c.delivered > len) abort();
    api__grpc_reader_free(&r);

    /* The nesting check alone, at a shallow limit, on the raw payload. */
    (void)api__proto_check(c.m->req, data, len, 3);

    /* grpc-message encoding: printable output; decoding gives the input
     * back when nothing was cut. */
    char enc[API__GRPC_MESSAGE_ENCODED_MAX];
    char dec[API__GRPC_MESSAGE_ENCODED_MAX];
    size_t e = api__grpc_percent_encode((const char *)data, len, enc);
    for (size_t i = 0; i < e; i++)
        if (enc[i] < 0x20 || enc[i] > 0x7e) abort();
    size_t d = api__grpc_percent_decode(enc, e, dec);
    if (len <= API__GRPC_MESSAGE_BYTES_MAX - 4 && (d != len || memcmp(dec, data, len) != 0))
        abort();
    return 0;
}
