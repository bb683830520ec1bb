/*
 * fuzz_api_json.c - libFuzzer harness for the gateway's JSON codec: the
 * first byte picks a request type of the method table, the rest is decoded
 * as JSON into protobuf wire bytes (json.c), which must then pass the
 * same checks and unpacking as a gRPC request; the message is encoded back
 * to JSON, decoded again, and the two wire encodings must agree (a round
 * trip is stable). Also exercises Go-compatible base64 decoding.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int to_wire(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n,
                   struct api__buf *w) {
    char err[256];
    size_t used;
    api__buf_init(w, 1u << 20);
    return api__json_decode(d, p, n, &used, w, err, sizeof(err));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    {
        uint8_t *out = malloc(size / 4 * 3 + 4);
        size_t len;
        if (out != NULL) api__b64_decode(data + 1, size - 1, out, &len);
        free(out);
    }
    const struct api__method *m = api__method_at(data[0] % api__method_count());
    const ProtobufCMessageDescriptor *d = data[0] & 0x80 ? m->resp : m->req;
    struct api__buf w1, j, w2;
    if (to_wire(d, data + 1, size - 1, &w1) != 0) {
        api__buf_free(&w1);
        return 0;
    }
    static const uint8_t none[1];
    const uint8_t *p = w1.len ? w1.p : none;
    if (api__proto_check(d, p, w1.len, API__PROTO_DEPTH_MAX) != 0) abort();
    ProtobufCMessage *msg = api__proto_unpack(d, p, w1.len);
    if (msg == NULL) abort(); /* the decoder wrote what it claims to */
    api__buf_init(&j, 1u << 22);
    if (api__json_encode(&j, msg) == 0) {
        if (to_wire(d, j.p, j.len, &w2) != 0) abort();
        ProtobufCMessage *again = api__proto_unpack(d, w2.len ? w2.p : none, w2.len);
        if (again == NULL) abort();
        size_t a = protobuf_c_message_get_packed_size(msg);
        size_t b = protobuf_c_message_get_packed_size(again);
        if (a != b) abort();
        protobuf_c_message_free_unpacked(again, NULL);
        api__buf_free(&w2);
    }
    api__buf_free(&j);
    protobuf_c_message_free_unpacked(msg, NULL);
    api__buf_free(&w1);
    return 0;
}
