/*
 * memstore.c - struct raft_storage in memory (etcd raft's MemoryStorage),
 * for unit tests, the simulation and benchmarks.
 *
 * ents[0] is a dummy entry standing for the snapshot (or the empty log's
 * index 0): it holds the index and term of the last compacted entry, so that
 * term(first_index - 1) answers without a snapshot lookup. Real entries
 * follow contiguously: ents[i].index == ents[0].index + i. Entry data and the
 * snapshot image are owned copies. Term lookups are O(1); appends are
 * amortised O(1) plus the truncated suffix; compaction moves the survivors.
 */
#include <stdlib.h>
#include <string.h>

#include "raft/raft_int.h"

struct raft_memstore {
    struct raft_storage storage; /* the interface handed out; data == this */
    struct raft_hard_state hs;
    struct raft_conf_state cs;
    struct raft_snapshot snap; /* data owned */
    struct raft_entry *ents;   /* ents[0] is the dummy; data owned */
    size_t n;                  /* entries in ents, dummy included (>= 1) */
    size_t cap;
};

static struct raft_memstore *ms_of(void *data) {
    ASSERT(data != NULL);
    return data;
}

static uint64_t ms_offset(const struct raft_memstore *ms) {
    return ms->ents[0].index;
}

static uint64_t ms_last(const struct raft_memstore *ms) {
    return ms->ents[0].index + ms->n - 1;
}

static int ms_initial_state(void *data, struct raft_hard_state *hs, struct raft_conf_state *cs) {
    struct raft_memstore *ms = ms_of(data);
    ASSERT(hs != NULL);
    ASSERT(cs != NULL);
    *hs = ms->hs;
    *cs = ms->cs;
    return 0;
}

static int ms_entries(void *data, uint64_t lo, uint64_t hi, uint64_t max_bytes,
                      struct raft_entry **out, size_t *n_out) {
    struct raft_memstore *ms = ms_of(data);
    ASSERT(out != NULL);
    ASSERT(n_out != NULL);
    *out = NULL;
    *n_out = 0;
    uint64_t off = ms_offset(ms);
    if (lo <= off) return RAFT_ECOMPACTED;
    if (hi > ms_last(ms) + 1) return RAFT_EUNAVAILABLE;
    if (lo >= hi) return 0;
    /* Count what fits first: at least one entry, then while within max_bytes. */
    size_t count = 0;
    uint64_t bytes = 0;
    for (uint64_t i = lo; i < hi; i++) {
        uint64_t len = ms->ents[i - off].data.len;
        if (count > 0 && bytes + len > max_bytes) break;
        bytes += len;
        count++;
    }
    struct raft_entry *ents = qfs_calloc(count, sizeof(*ents));
    if (ents == NULL) return RAFT_ENOMEM;
    for (size_t k = 0; k < count; k++) {
        const struct raft_entry *src = &ms->ents[lo - off + k];
        ents[k] = *src;
        ents[k].data.base = NULL;
        if (src->data.len > 0) {
            void *p = qfs_malloc(src->data.len);
            if (p == NULL) {
                for (size_t j = 0; j < k; j++) free((void *)ents[j].data.base);
                free(ents);
                return RAFT_ENOMEM;
            }
            memcpy(p, src->data.base, src->data.len);
            ents[k].data.base = p;
        }
    }
    *out = ents;
    *n_out = count;
    return 0;
}

static int ms_term(void *data, uint64_t i, uint64_t *term) {
    struct raft_memstore *ms = ms_of(data);
    ASSERT(term != NULL);
    *term = 0;
    uint64_t off = ms_offset(ms);
    if (i < off) return RAFT_ECOMPACTED;
    if (i > ms_last(ms)) return RAFT_EUNAVAILABLE;
    *term = ms->ents[i - off].term;
    return 0;
}

static int ms_first_index(void *data, uint64_t *index) {
    struct raft_memstore *ms = ms_of(data);
    ASSERT(index != NULL);
    *index = ms_offset(ms) + 1;
    return 0;
}

static int ms_last_index(void *data, uint64_t *index) {
    struct raft_memstore *ms = ms_of(data);
    ASSERT(index != NULL);
    *index = ms_last(ms);
    return 0;
}

static int ms_snapshot(void *data, struct raft_snapshot *snap) {
    struct raft_memstore *ms = ms_of(data);
    ASSERT(snap != NULL);
    *snap = ms->snap;
    return 0;
}

struct raft_memstore *raft_memstore_new(void) {
    struct raft_memstore *ms = qfs_calloc(1, sizeof(*ms));
    if (ms == NULL) return NULL;
    ms->cap = 64;
    ms->ents = qfs_calloc(ms->cap, sizeof(*ms->ents));
    if (ms->ents == NULL) {
        free(ms);
        return NULL;
    }
    ms->n = 1; /* the dummy at index 0, term 0 */
    ms->storage.data = ms;
    ms->storage.initial_state = ms_initial_state;
    ms->storage.entries = ms_entries;
    ms->storage.term = ms_term;
    ms->storage.first_index = ms_first_index;
    ms->storage.last_index = ms_last_index;
    ms->storage.snapshot = ms_snapshot;
    return ms;
}

static void free_range(struct raft_memstore *ms, size_t from, size_t to) {
    for (size_t i = from; i < to; i++) {
        free((void *)ms->ents[i].data.base);
        ms->ents[i].data.base = NULL;
        ms->ents[i].data.len = 0;
    }
}

void raft_memstore_free(struct raft_memstore *ms) {
    if (ms == NULL) return;
    free_range(ms, 0, ms->n);
    free(ms->ents);
    free((void *)ms->snap.data.base);
    free(ms);
}

struct raft_storage *raft_memstore_storage(struct raft_memstore *ms) {
    ASSERT(ms != NULL);
    return &ms->storage;
}

int raft_memstore_set_conf_state(struct raft_memstore *ms, const struct raft_conf_state *cs) {
    ASSERT(ms != NULL);
    ASSERT(cs != NULL);
    if (cs->n_voters > RAFT_MEMBERS_MAX || cs->n_learners > RAFT_MEMBERS_MAX ||
        cs->n_voters + cs->n_learners > RAFT_MEMBERS_MAX)
        return RAFT_EINVAL;
    ms->cs = *cs;
    return 0;
}

int raft_memstore_set_hard_state(struct raft_memstore *ms, const struct raft_hard_state *hs) {
    ASSERT(ms != NULL);
    ASSERT(hs != NULL);
    ms->hs = *hs;
    return 0;
}

static int reserve(struct raft_memstore *ms, size_t n) {
    if (n <= ms->cap) return 0;
    size_t cap = ms->cap;
    while (cap < n) {
        if (cap > SIZE_MAX / 2 / sizeof(*ms->ents)) return RAFT_ENOMEM;
        cap *= 2;
    }
    struct raft_entry *ents = qfs_realloc(ms->ents, cap * sizeof(*ents));
    if (ents == NULL) return RAFT_ENOMEM;
    ms->ents = ents;
    ms->cap = cap;
    return 0;
}

int raft_memstore_append(struct raft_memstore *ms, const struct raft_entry *e, size_t n) {
    ASSERT(ms != NULL);
    ASSERT(n == 0 || e != NULL);
    if (n == 0) return 0;
    uint64_t first = ms_offset(ms) + 1;
    uint64_t last = e[0].index + n - 1;
    for (size_t i = 1; i < n; i++)
        if (e[i].index != e[0].index + i) return RAFT_EINVAL;
    if (last < first) return 0; /* everything is compacted already */
    /* Skip what the log compacted meanwhile. */
    if (first > e[0].index) {
        size_t skip = (size_t)(first - e[0].index);
        e += skip;
        n -= skip;
    }
    if (e[0].index > ms_last(ms) + 1) return RAFT_EINVAL; /* would leave a gap */
    size_t at = (size_t)(e[0].index - ms_offset(ms));
    int rc = reserve(ms, at + n);
    if (rc != 0) return rc;
    /* Copy the data before dropping the suffix so a failure changes nothing. */
    void **copies = qfs_calloc(n, sizeof(*copies));
    if (copies == NULL) return RAFT_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (e[i].data.len == 0) continue;
        copies[i] = qfs_malloc(e[i].data.len);
        if (copies[i] == NULL) {
            for (size_t j = 0; j < i; j++) free(copies[j]);
            free(copies);
            return RAFT_ENOMEM;
        }
        memcpy(copies[i], e[i].data.base, e[i].data.len);
    }
    free_range(ms, at, ms->n);
    for (size_t i = 0; i < n; i++) {
        ms->ents[at + i] = e[i];
        ms->ents[at + i].data.base = copies[i];
    }
    ms->n = at + n;
    free(copies);
    return 0;
}

int raft_memstore_apply_snapshot(struct raft_memstore *ms, const struct raft_snapshot *snap) {
    ASSERT(ms != NULL);
    ASSERT(snap != NULL);
    if (snap->meta.index <= ms->snap.meta.index) return RAFT_ESNAPOUTOFDATE;
    void *copy = NULL;
    if (snap->data.len > 0) {
        copy = qfs_malloc(snap->data.len);
        if (copy == NULL) return RAFT_ENOMEM;
        memcpy(copy, snap->data.base, snap->data.len);
    }
    free((void *)ms->snap.data.base);
    ms->snap = *snap;
    ms->snap.data.base = copy;
    free_range(ms, 0, ms->n);
    ms->n = 1;
    ms->ents[0].index = snap->meta.index;
    ms->ents[0].term = snap->meta.term;
    ms->ents[0].type = RAFT_ENTRY_NORMAL;
    ms->cs = snap->meta.conf;
    if (ms->hs.commit < snap->meta.index) ms->hs.commit = snap->meta.index;
    return 0;
}

int raft_memstore_create_snapshot(struct raft_memstore *ms, uint64_t index,
                                  const struct raft_conf_state *cs, const void *data, size_t len) {
    ASSERT(ms != NULL);
    ASSERT(len == 0 || data != NULL);
    if (index <= ms->snap.meta.index) return RAFT_ESNAPOUTOFDATE;
    if (index > ms_last(ms) || index < ms_offset(ms)) return RAFT_EINVAL;
    void *copy = NULL;
    if (len > 0) {
        copy = qfs_malloc(len);
        if (copy == NULL) return RAFT_ENOMEM;
        memcpy(copy, data, len);
    }
    free((void *)ms->snap.data.base);
    ms->snap.meta.index = index;
    ms->snap.meta.term = ms->ents[index - ms_offset(ms)].term;
    if (cs != NULL)
        ms->snap.meta.conf = *cs;
    else
        ms->snap.meta.conf = ms->cs;
    ms->snap.data.base = copy;
    ms->snap.data.len = len;
    return 0;
}

int raft_memstore_compact(struct raft_memstore *ms, uint64_t index) {
    ASSERT(ms != NULL);
    uint64_t off = ms_offset(ms);
    if (index <= off) return RAFT_ECOMPACTED;
    if (index > ms_last(ms)) return RAFT_EINVAL;
    size_t k = (size_t)(index - off); /* entries dropped, the old dummy included */
    free_range(ms, 0, k);
    /* The entry at index becomes the dummy: keep its index and term only. */
    free_range(ms, k, k + 1);
    memmove(ms->ents, ms->ents + k, (ms->n - k) * sizeof(*ms->ents));
    ms->n -= k;
    return 0;
}
