/*
 * fuzz_store_request.c - libFuzzer harness for store_request_decode, the
 * decoder of Raft entry payloads (bytes from peers' logs).
 *
 * Properties: decoding never reads out of bounds or leaks (ASan); a
 * successful decode re-encodes to exactly the input bytes (the encoding is
 * canonical); and applying the decoded request to an in-memory store never
 * fails for a reason other than the request itself (so a bad entry can
 * never wedge a node's apply loop).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"

/* Fresh in-memory store after this many inputs, so memory stays bounded. */
#define FUZZ_STORE_INPUTS_MAX 5000

static struct store_memdb *memdb;
static struct store *st;
static uint64_t fuzz_index;
static unsigned inputs;

static void fuzz_store_reset(void) {
    store_close(st);
    store_memdb_free(memdb);
    memdb = store_memdb_new();
    if (memdb == NULL) abort();
    struct store_options o;
    store_options_init(&o);
    o.memdb = memdb;
    if (store_open(&o, &st, NULL, 0) != 0) abort();
    fuzz_index = 0;
    inputs = 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (st == NULL || ++inputs > FUZZ_STORE_INPUTS_MAX) fuzz_store_reset();
    struct store_request req;
    int rc = store_request_decode(data, size, &req);
    if (rc == 0) {
        size_t n = store_request_encoded_size(&req);
        if (n != size) abort();
        void *buf = malloc(n ? n : 1);
        size_t len = 0;
        if (buf == NULL || store_request_encode(&req, buf, n, &len) != 0) abort();
        if (len != size || memcmp(buf, data, size) != 0) abort();
        free(buf);
    }
    store_request_release(&req);

    struct store_result *res = NULL;
    rc = store_apply(st, ++fuzz_index, data, size, &res);
    if (rc != 0) abort(); /* only a storage failure may fail an apply */
    if (res == NULL) abort();
    store_result_free(res);
    return 0;
}
