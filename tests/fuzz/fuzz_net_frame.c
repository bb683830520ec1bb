/*
 * fuzz_net_frame.c - libFuzzer harness for the peer frame decoder.
 *
 * The input is a byte stream as a socket would deliver it. It is decoded
 * twice: once from one contiguous buffer, once through the connection's
 * receive buffer (struct net__reader) in pieces whose sizes come from a PRNG
 * seeded by the input, so the split points vary. Both must yield the same
 * frames and end the same way (the same error, or "need more"). Every
 * decoded frame must re-encode to exactly the bytes it came from (the
 * encoding is canonical, and the encoder and decoder agree on validity).
 * The first input byte picks the frame limit, so both the pre-handshake and
 * a post-handshake bound are exercised. Any disagreement aborts.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/frame.h"
#include "net/internal.h"

#define FRAMES_MAX 4096 /* frames compared per input */

struct seen {
    uint8_t type;
    size_t len;
    uint64_t hash;
};

static uint64_t fnv(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void check_reencode(const struct net__frame *f, const uint8_t *src, size_t len) {
    uint8_t *buf;
    size_t n;
    int rc = net__frame_encode(f, &buf, &n);
    if (rc != 0 || n != len || memcmp(buf, src, len) != 0) {
        fprintf(stderr, "re-encode mismatch: rc %d type %u len %zu vs %zu\n", rc, f->type, n, len);
        abort();
    }
    if (net__frame_encoded_size(f) != len) abort();
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    size_t limit = (data[0] & 1) ? NET__HELLO_BYTES_MAX : NET_FRAME_BYTES_MIN + 1024;
    const uint8_t *in = data + 1;
    size_t len = size - 1;

    static struct seen whole[FRAMES_MAX];
    static struct net__frame f; /* ~3 KiB: keep it off the stack */
    size_t n_whole = 0, pos = 0;
    int whole_rc = 0;
    while (n_whole < FRAMES_MAX) {
        size_t used;
        whole_rc = net__frame_decode(in + pos, len - pos, limit, &f, &used);
        if (whole_rc != 0 || used == 0) break;
        if (used > len - pos || used < NET__FRAME_HEADER_BYTES || used > limit) abort();
        check_reencode(&f, in + pos, used);
        whole[n_whole++] = (struct seen){f.type, used, fnv(in + pos, used)};
        pos += used;
    }
    if (n_whole == FRAMES_MAX) return 0;

    /* Second pass: pieces of 1..64 (mostly small) or up to 4 KiB bytes. */
    /* One reader kept across inputs (emptied each time): a fresh 64 KiB
     * buffer per input would spend the run in mmap/munmap under ASan. */
    static struct net__reader r;
    if (r.cap_max != limit + NET__READER_READ_BYTES) {
        net__reader_release(&r);
        net__reader_init(&r, limit + NET__READER_READ_BYTES);
    }
    r.head = r.tail = 0;
    uint64_t x = fnv(data, size) | 1;
    size_t fed = 0, n_split = 0;
    int split_rc = 0;
    bool stop = false;
    while (!stop) {
        /* Drain every complete frame before feeding more. */
        for (;;) {
            bool have;
            split_rc = net__reader_next(&r, limit, &f, &have);
            if (split_rc != 0) {
                stop = true;
                break;
            }
            if (!have) break;
            if (n_split >= n_whole) abort(); /* more frames than the whole pass */
            /* The frame's bytes are the ones just consumed. */
            const uint8_t *src = r.buf + r.head - whole[n_split].len;
            if (f.type != whole[n_split].type ||
                fnv(src, whole[n_split].len) != whole[n_split].hash)
                abort();
            check_reencode(&f, src, whole[n_split].len);
            n_split++;
        }
        if (stop || fed == len) break;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t piece = (x & 3) ? 1 + (size_t)((x >> 8) % 64) : 1 + (size_t)((x >> 8) % 4096);
        if (piece > len - fed) piece = len - fed;
        uint8_t *p;
        size_t room;
        if (net__reader_space(&r, &p, &room) != 0) abort(); /* the limit keeps room */
        if (piece > room) piece = room;
        memcpy(p, in + fed, piece);
        net__reader_commit(&r, piece);
        fed += piece;
    }
    if (n_split != n_whole || split_rc != whole_rc) {
        fprintf(stderr, "split/whole mismatch: %zu vs %zu frames, rc %d vs %d\n", n_split, n_whole,
                split_rc, whole_rc);
        abort();
    }

    /* The file name check on raw bytes must never read past len. */
    size_t nl = len < NET_SNAP_NAME_MAX + 8 ? len : NET_SNAP_NAME_MAX + 8;
    if (nl > 0) {
        char *name = malloc(nl);
        if (name == NULL) return 0;
        memcpy(name, in, nl);
        (void)net__snap_name_check(name, nl);
        free(name);
    }
    return 0;
}
