/*
 * alloc.h - the allocation wrappers of raft/, store/ and api/, with the
 * test hook that fails the Nth allocation (header only).
 *
 * Every heap allocation these three modules make goes through qfs_malloc,
 * qfs_calloc or qfs_realloc (and the allocators they hand to protobuf-c and
 * nghttp2). Each wrapper is the libc call behind one branch on a
 * thread-local flag that is 0 unless a test armed it, so production pays a
 * load and a predicted branch. Memory from them is ordinary malloc memory,
 * released with free(); the wrappers change no ownership rule.
 *
 * A test counts the allocations of a scenario, then replays it failing
 * allocation 1, 2, ... N in turn (SQLite's and canonical/raft's technique):
 *
 *     qfs_alloc_fail_at(0);  scenario();  long total = qfs_alloc_count();
 *     for (long n = 1; n <= total; n++) {
 *         qfs_alloc_fail_at(n);  scenario_checking_consistency();
 *     }
 *     qfs_alloc_fail_off();
 *
 * Only the Nth allocation fails (one shot), so a retry after the error runs
 * with memory again. The state is per thread: allocations of other threads
 * are neither counted nor failed, which keeps the count of a scenario
 * deterministic.
 *
 * Why here: raft/ is the module every other one builds on and depends on
 * nothing but libc; the header is self-contained, so store/ and api/ include
 * it without linking raft/. The hook is one weak definition per translation
 * unit that the linker merges into one object per thread, so no .c file
 * owns it and none of the three libraries needs the others.
 */
#ifndef QUORUMFS_RAFT_ALLOC_H
#define QUORUMFS_RAFT_ALLOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* The fault-injection state of one thread. Tests use the functions below. */
struct qfs_alloc_fault {
    bool armed;   /* counting (and maybe failing); false in production */
    long seen;    /* allocations since qfs_alloc_fail_at() */
    long fail_at; /* the value of `seen` whose allocation fails; 0: none */
    long failed;  /* allocations failed since qfs_alloc_fail_at() */
};

__attribute__((weak)) _Thread_local struct qfs_alloc_fault qfs_alloc_fault;

/* Starts counting this thread's allocations from 0; allocation n (1-based)
 * will fail, or none when n is 0. */
static inline void qfs_alloc_fail_at(long n) {
    qfs_alloc_fault.seen = 0;
    qfs_alloc_fault.failed = 0;
    qfs_alloc_fault.fail_at = n;
    qfs_alloc_fault.armed = true;
}

/* Stops counting and failing. */
static inline void qfs_alloc_fail_off(void) {
    qfs_alloc_fault.armed = false;
    qfs_alloc_fault.fail_at = 0;
}

/* Allocations counted, and failed, since qfs_alloc_fail_at(). */
static inline long qfs_alloc_count(void) {
    return qfs_alloc_fault.seen;
}
static inline long qfs_alloc_failed(void) {
    return qfs_alloc_fault.failed;
}

/* The hook: true if the allocation being made must fail. */
static inline bool qfs_alloc_fails(void) {
    if (__builtin_expect(!qfs_alloc_fault.armed, 1)) return false;
    qfs_alloc_fault.seen++;
    if (qfs_alloc_fault.seen != qfs_alloc_fault.fail_at) return false;
    qfs_alloc_fault.failed++;
    return true;
}

static inline void *qfs_malloc(size_t n) {
    return qfs_alloc_fails() ? NULL : malloc(n);
}

static inline void *qfs_calloc(size_t n, size_t size) {
    return qfs_alloc_fails() ? NULL : calloc(n, size);
}

/* On failure p is left allocated and unchanged, as with realloc(). */
static inline void *qfs_realloc(void *p, size_t n) {
    return qfs_alloc_fails() ? NULL : realloc(p, n);
}

/* Fallible callers must check NULL, as with strdup(). */
static inline char *qfs_strndup(const char *s, size_t n) {
    char *p = qfs_malloc(n + 1);
    if (p == NULL) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

#endif /* QUORUMFS_RAFT_ALLOC_H */
