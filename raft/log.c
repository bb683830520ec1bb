/*
 * log.c - the Raft log: entries the driver has persisted (read through
 * struct raft_storage) followed by an unstable tail held in memory until the
 * driver persists it (etcd raft's raftLog and unstable).
 *
 * Layout, in index order:
 *
 *   [storage first_index - 1 (dummy) .. storage entries ..][unstable entries]
 *
 * or, after a snapshot arrived and before the driver installed it,
 *
 *   [unstable snapshot (index s)][unstable entries from s + 1]
 *
 * The unstable part always wins for the indexes it covers: entries the
 * driver already wrote to storage stay in the unstable tail until
 * raft_advance() calls raft__log_stable_to(), and a conflicting append may
 * move the unstable offset below the storage's last index, in which case the
 * driver's next append overwrites that storage suffix.
 *
 * Unstable entries own their data (one malloc per non-empty entry). The live
 * window ents[start..start+n) moves forward as entries become stable; the
 * array is compacted when it must grow. Term lookups are O(1) in the tail and
 * one storage call below it.
 */
#include <stdlib.h>
#include <string.h>

#include "raft/raft_int.h"

static uint64_t storage_first_index(const struct raft__log *l) {
    uint64_t i = 0;
    int rc = l->st->first_index(l->st->data, &i);
    /* raft_new() checked the storage answers; it must keep answering. */
    ASSERT(rc == 0);
    return i;
}

static uint64_t storage_last_index(const struct raft__log *l) {
    uint64_t i = 0;
    int rc = l->st->last_index(l->st->data, &i);
    ASSERT(rc == 0);
    return i;
}

static void free_entry_data(struct raft_entry *e) {
    free((void *)e->data.base);
    e->data.base = NULL;
    e->data.len = 0;
}

int raft__log_init(struct raft__log *l, struct raft_storage *st) {
    ASSERT(l != NULL);
    ASSERT(st != NULL);
    memset(l, 0, sizeof(*l));
    l->st = st;
    uint64_t first = 0, last = 0;
    int rc = st->first_index(st->data, &first);
    if (rc != 0) return rc;
    rc = st->last_index(st->data, &last);
    if (rc != 0) return rc;
    if (first == 0 || last + 1 < first) return RAFT_ESTORAGE;
    l->u.offset = last + 1;
    l->committed = first - 1;
    l->applied = first - 1;
    return 0;
}

static void unstable_free_entries(struct raft__unstable *u) {
    for (size_t i = 0; i < u->n; i++) free_entry_data(&u->ents[u->start + i]);
    u->start = 0;
    u->n = 0;
}

void raft__log_close(struct raft__log *l) {
    ASSERT(l != NULL);
    unstable_free_entries(&l->u);
    free(l->u.ents);
    l->u.ents = NULL;
    l->u.cap = 0;
    if (l->u.has_snapshot) free((void *)l->u.snap.data.base);
    l->u.has_snapshot = false;
}

static bool unstable_maybe_last_index(const struct raft__unstable *u, uint64_t *i) {
    if (u->n > 0) {
        *i = u->offset + u->n - 1;
        return true;
    }
    if (u->has_snapshot) {
        *i = u->snap.meta.index;
        return true;
    }
    return false;
}

static bool unstable_maybe_term(const struct raft__unstable *u, uint64_t i, uint64_t *term) {
    if (i < u->offset) {
        if (u->has_snapshot && u->snap.meta.index == i) {
            *term = u->snap.meta.term;
            return true;
        }
        return false;
    }
    uint64_t last;
    if (!unstable_maybe_last_index(u, &last) || i > last) return false;
    *term = u->ents[u->start + (size_t)(i - u->offset)].term;
    return true;
}

uint64_t raft__log_first_index(const struct raft__log *l) {
    ASSERT(l != NULL);
    if (l->u.has_snapshot) return l->u.snap.meta.index + 1;
    return storage_first_index(l);
}

uint64_t raft__log_last_index(const struct raft__log *l) {
    ASSERT(l != NULL);
    uint64_t i;
    if (unstable_maybe_last_index(&l->u, &i)) return i;
    return storage_last_index(l);
}

uint64_t raft__log_stable_last_index(const struct raft__log *l) {
    ASSERT(l != NULL);
    if (l->u.has_snapshot) return 0;
    ASSERT(l->u.offset > 0);
    return l->u.offset - 1;
}

int raft__log_term(const struct raft__log *l, uint64_t i, uint64_t *term) {
    ASSERT(l != NULL);
    ASSERT(term != NULL);
    *term = 0;
    uint64_t dummy = raft__log_first_index(l) - 1;
    if (i < dummy) return RAFT_ECOMPACTED;
    if (i > raft__log_last_index(l)) return RAFT_EUNAVAILABLE;
    if (unstable_maybe_term(&l->u, i, term)) return 0;
    return l->st->term(l->st->data, i, term);
}

uint64_t raft__log_term_or_zero(const struct raft__log *l, uint64_t i) {
    uint64_t t = 0;
    if (raft__log_term(l, i, &t) != 0) return 0;
    return t;
}

uint64_t raft__log_last_term(const struct raft__log *l) {
    return raft__log_term_or_zero(l, raft__log_last_index(l));
}

bool raft__log_match_term(const struct raft__log *l, uint64_t i, uint64_t term) {
    uint64_t t = 0;
    if (raft__log_term(l, i, &t) != 0) return false;
    return t == term;
}

bool raft__log_is_up_to_date(const struct raft__log *l, uint64_t lasti, uint64_t term) {
    uint64_t last_term = raft__log_last_term(l);
    return term > last_term || (term == last_term && lasti >= raft__log_last_index(l));
}

/* Makes room for `extra` more live entries at the end of the window. */
static int unstable_reserve(struct raft__unstable *u, size_t extra) {
    if (u->start + u->n + extra <= u->cap) return 0;
    if (u->start > 0) {
        memmove(u->ents, u->ents + u->start, u->n * sizeof(*u->ents));
        u->start = 0;
        if (u->n + extra <= u->cap) return 0;
    }
    size_t cap = u->cap ? u->cap : 64;
    while (cap < u->n + extra) {
        if (cap > SIZE_MAX / 2 / sizeof(*u->ents)) return RAFT_ENOMEM;
        cap *= 2;
    }
    struct raft_entry *ents = qfs_realloc(u->ents, cap * sizeof(*ents));
    if (ents == NULL) return RAFT_ENOMEM;
    u->ents = ents;
    u->cap = cap;
    return 0;
}

int raft__log_reserve(struct raft__log *l, size_t n) {
    ASSERT(l != NULL);
    ASSERT(n > 0);
    return unstable_reserve(&l->u, n);
}

int raft__log_append(struct raft__log *l, const struct raft_entry *e, size_t n) {
    ASSERT(l != NULL);
    ASSERT(n == 0 || e != NULL);
    if (n == 0) return 0;
    struct raft__unstable *u = &l->u;
    uint64_t after = e[0].index;
    ASSERT(after > l->committed); /* never overwrite committed entries */

    /* Copy the data first so that a failure leaves the log untouched.
     * Entries without data (a leader's no-op) need no copy, so appending
     * them into reserved room (raft__log_reserve) cannot fail. */
    size_t with_data = 0;
    for (size_t i = 0; i < n; i++) {
        ASSERT(e[i].index == after + i);
        if (e[i].data.len > 0) with_data++;
    }
    void **copies = NULL;
    if (with_data > 0) {
        copies = qfs_calloc(n, sizeof(*copies));
        if (copies == NULL) return RAFT_ENOMEM;
    }
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

    /* Work out how many current entries survive, then reserve room. */
    size_t keep;
    if (after == u->offset + u->n) {
        keep = u->n;
    } else if (after <= u->offset) {
        keep = 0;
    } else {
        keep = (size_t)(after - u->offset);
    }
    int rc = unstable_reserve(u, keep + n > u->n ? keep + n - u->n : 0);
    if (rc != 0) {
        for (size_t j = 0; copies != NULL && j < n; j++) free(copies[j]);
        free(copies);
        return rc;
    }
    for (size_t i = keep; i < u->n; i++) free_entry_data(&u->ents[u->start + i]);
    if (after <= u->offset) {
        u->start = 0;
        u->offset = after;
    }
    u->n = keep;
    for (size_t i = 0; i < n; i++) {
        struct raft_entry *dst = &u->ents[u->start + u->n + i];
        *dst = e[i];
        dst->data.base = copies != NULL ? copies[i] : NULL;
    }
    u->n += n;
    free(copies);
    return 0;
}

/* First index in e[] whose term differs from ours (or which we lack); 0 if none. */
static uint64_t find_conflict(const struct raft__log *l, const struct raft_entry *e, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (!raft__log_match_term(l, e[i].index, e[i].term)) return e[i].index;
    }
    return 0;
}

int raft__log_maybe_append(struct raft__log *l, uint64_t index, uint64_t log_term,
                           uint64_t committed, const struct raft_entry *e, size_t n,
                           uint64_t *lastnewi, bool *ok) {
    ASSERT(l != NULL);
    ASSERT(lastnewi != NULL);
    ASSERT(ok != NULL);
    *ok = false;
    *lastnewi = 0;
    if (!raft__log_match_term(l, index, log_term)) return 0;
    uint64_t last_new = index + n;
    uint64_t ci = find_conflict(l, e, n);
    if (ci != 0) {
        /* Overwriting a committed entry means Raft's safety was broken
         * elsewhere; refuse rather than diverge further. */
        if (ci <= l->committed) return RAFT_EMALFORMED;
        size_t from = (size_t)(ci - (index + 1));
        int rc = raft__log_append(l, e + from, n - from);
        if (rc != 0) return rc;
    }
    raft__log_commit_to(l, committed < last_new ? committed : last_new);
    *lastnewi = last_new;
    *ok = true;
    return 0;
}

uint64_t raft__log_find_conflict_by_term(const struct raft__log *l, uint64_t index, uint64_t term,
                                         uint64_t *found_term) {
    ASSERT(l != NULL);
    ASSERT(found_term != NULL);
    uint64_t last = raft__log_last_index(l);
    if (index > last) index = last;
    for (; index > 0; index--) {
        uint64_t t = 0;
        if (raft__log_term(l, index, &t) != 0) {
            *found_term = 0;
            return index;
        }
        if (t <= term) {
            *found_term = t;
            return index;
        }
    }
    *found_term = 0;
    return 0;
}

void raft__log_commit_to(struct raft__log *l, uint64_t i) {
    ASSERT(l != NULL);
    if (i <= l->committed) return;
    ASSERT(i <= raft__log_last_index(l));
    l->committed = i;
}

void raft__log_applied_to(struct raft__log *l, uint64_t i) {
    ASSERT(l != NULL);
    if (i == 0 || i <= l->applied) return;
    ASSERT(i <= l->committed);
    l->applied = i;
}

int raft__log_slice(const struct raft__log *l, struct raft__arena *a, uint64_t lo, uint64_t hi,
                    uint64_t max_bytes, struct raft_entry **out, size_t *n) {
    ASSERT(l != NULL);
    ASSERT(a != NULL);
    ASSERT(out != NULL);
    ASSERT(n != NULL);
    *out = NULL;
    *n = 0;
    if (lo > hi) return RAFT_EINVAL;
    if (lo < raft__log_first_index(l)) return RAFT_ECOMPACTED;
    if (hi > raft__log_last_index(l) + 1) return RAFT_EUNAVAILABLE;
    if (lo == hi) return 0;
    if (hi - lo > SIZE_MAX / sizeof(struct raft_entry)) return RAFT_ENOMEM;

    const struct raft__unstable *u = &l->u;
    struct raft_entry *ents = raft__arena_alloc(a, (size_t)(hi - lo) * sizeof(*ents));
    if (ents == NULL) return RAFT_ENOMEM;
    size_t count = 0;
    uint64_t bytes = 0;

    if (lo < u->offset) {
        uint64_t shi = hi < u->offset ? hi : u->offset;
        struct raft_entry *got = NULL;
        size_t n_got = 0;
        int rc = l->st->entries(l->st->data, lo, shi, max_bytes, &got, &n_got);
        if (rc != 0) return rc;
        if (n_got > shi - lo) n_got = (size_t)(shi - lo); /* defensive */
        for (size_t i = 0; i < n_got && rc == 0; i++) {
            ents[count] = got[i];
            rc = raft__arena_copy_buf(a, got[i].data.base, got[i].data.len, &ents[count].data);
            bytes += got[i].data.len;
            count++;
        }
        for (size_t i = 0; i < n_got; i++) free((void *)got[i].data.base);
        free(got);
        if (rc != 0) return rc;
        if (n_got == 0) return RAFT_ESTORAGE;
        if (n_got < shi - lo) goto done; /* storage stopped at the size limit */
    }
    for (uint64_t i = lo > u->offset ? lo : u->offset; i < hi; i++) {
        const struct raft_entry *e = &u->ents[u->start + (size_t)(i - u->offset)];
        if (count > 0 && bytes + e->data.len > max_bytes) break;
        ents[count] = *e;
        int rc = raft__arena_copy_buf(a, e->data.base, e->data.len, &ents[count].data);
        if (rc != 0) return rc;
        bytes += e->data.len;
        count++;
    }
done:
    *out = ents;
    *n = count;
    return 0;
}

bool raft__log_has_next_committed(const struct raft__log *l) {
    ASSERT(l != NULL);
    uint64_t first = raft__log_first_index(l);
    uint64_t off = l->applied + 1 > first ? l->applied + 1 : first;
    return l->committed + 1 > off;
}

bool raft__log_stable_to(struct raft__log *l, uint64_t i, uint64_t term) {
    ASSERT(l != NULL);
    struct raft__unstable *u = &l->u;
    uint64_t t;
    if (!unstable_maybe_term(u, i, &t) || t != term || i < u->offset) return false;
    size_t k = (size_t)(i + 1 - u->offset);
    ASSERT(k <= u->n);
    for (size_t j = 0; j < k; j++) free_entry_data(&u->ents[u->start + j]);
    u->start += k;
    u->n -= k;
    u->offset = i + 1;
    if (u->n == 0) u->start = 0;
    return true;
}

void raft__log_stable_snap_to(struct raft__log *l, uint64_t i) {
    ASSERT(l != NULL);
    struct raft__unstable *u = &l->u;
    if (u->has_snapshot && u->snap.meta.index == i) {
        free((void *)u->snap.data.base);
        memset(&u->snap, 0, sizeof(u->snap));
        u->has_snapshot = false;
    }
}

void raft__log_restore(struct raft__log *l, const struct raft_snapshot *s, void *data) {
    ASSERT(l != NULL);
    ASSERT(s != NULL);
    ASSERT(s->data.len == 0 || data != NULL);
    struct raft__unstable *u = &l->u;
    unstable_free_entries(u);
    if (u->has_snapshot) free((void *)u->snap.data.base);
    u->snap = *s;
    u->snap.data.base = s->data.len > 0 ? data : NULL;
    u->has_snapshot = true;
    u->offset = s->meta.index + 1;
    l->committed = s->meta.index;
}

int raft__log_snapshot(const struct raft__log *l, struct raft_snapshot *s) {
    ASSERT(l != NULL);
    ASSERT(s != NULL);
    if (l->u.has_snapshot) {
        *s = l->u.snap;
        return 0;
    }
    memset(s, 0, sizeof(*s));
    return l->st->snapshot(l->st->data, s);
}
