/*
 * util.c - small pieces shared by raft/: the assertion handler, the error
 * table, the splitmix64 PRNG and the per-update arena.
 *
 * The arena exists so that everything one struct raft_update hands out
 * (copied entries, message payloads, snapshot data, read contexts) lives in a
 * few large chunks released in one go by raft_advance(), instead of one
 * malloc per entry per message. Chunks never move, so pointers stay valid
 * until the reset. Workload: a few kilobytes to a few megabytes per update.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "raft/raft_int.h"

void raft__assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "raft: assertion failed: %s (%s:%d)\n", expr, file, line);
    fflush(stderr);
    abort();
}

const char *raft_strerror(int rc) {
    switch (rc) {
    case 0:
        return "success";
#define RAFT__ERR_CASE(name, value, text)                                                          \
    case value:                                                                                    \
        return text;
        RAFT_ERRORS(RAFT__ERR_CASE)
#undef RAFT__ERR_CASE
    default:
        return "unknown raft error";
    }
}

uint64_t raft__prng_next(uint64_t *state) {
    ASSERT(state != NULL);
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

struct raft__arena_chunk {
    struct raft__arena_chunk *next;
    size_t size; /* usable bytes in data */
    size_t used; /* bytes handed out */
    _Alignas(8) unsigned char data[];
};

void *raft__arena_alloc(struct raft__arena *a, size_t n) {
    ASSERT(a != NULL);
    ASSERT(n > 0);
    if (n > SIZE_MAX - 8) return NULL;
    n = (n + 7u) & ~(size_t)7u;
    struct raft__arena_chunk *c = a->head;
    if (c == NULL || c->size - c->used < n) {
        size_t size = n > RAFT__ARENA_CHUNK_BYTES ? n : RAFT__ARENA_CHUNK_BYTES;
        if (size > SIZE_MAX - sizeof(*c)) return NULL;
        c = qfs_malloc(sizeof(*c) + size);
        if (c == NULL) return NULL;
        c->size = size;
        c->used = 0;
        c->next = a->head;
        a->head = c;
    }
    void *p = c->data + c->used;
    c->used += n;
    return p;
}

void raft__arena_reset(struct raft__arena *a) {
    ASSERT(a != NULL);
    struct raft__arena_chunk *keep = NULL;
    struct raft__arena_chunk *c = a->head;
    while (c != NULL) {
        struct raft__arena_chunk *next = c->next;
        if (keep == NULL && c->size == RAFT__ARENA_CHUNK_BYTES) {
            keep = c;
            keep->used = 0;
            keep->next = NULL;
        } else {
            free(c);
        }
        c = next;
    }
    a->head = keep;
}

void raft__arena_free(struct raft__arena *a) {
    ASSERT(a != NULL);
    struct raft__arena_chunk *c = a->head;
    while (c != NULL) {
        struct raft__arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
}

int raft__arena_copy_buf(struct raft__arena *a, const void *src, size_t len, struct raft_buf *out) {
    ASSERT(out != NULL);
    ASSERT(len == 0 || src != NULL);
    out->base = NULL;
    out->len = 0;
    if (len == 0) return 0;
    void *p = raft__arena_alloc(a, len);
    if (p == NULL) return RAFT_ENOMEM;
    memcpy(p, src, len);
    out->base = p;
    out->len = len;
    return 0;
}

int raft__arena_copy_entries(struct raft__arena *a, const struct raft_entry *src, size_t n,
                             struct raft_entry **out) {
    ASSERT(out != NULL);
    ASSERT(n == 0 || src != NULL);
    *out = NULL;
    if (n == 0) return 0;
    if (n > SIZE_MAX / sizeof(struct raft_entry)) return RAFT_ENOMEM;
    struct raft_entry *ents = raft__arena_alloc(a, n * sizeof(*ents));
    if (ents == NULL) return RAFT_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        ents[i] = src[i];
        int rc = raft__arena_copy_buf(a, src[i].data.base, src[i].data.len, &ents[i].data);
        if (rc != 0) return rc;
    }
    *out = ents;
    return 0;
}
