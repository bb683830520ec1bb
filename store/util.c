/*
 * util.c - small pieces shared by store/: the result arena, the growable
 * buffer, fixed-width integer encodings, the state and version records, the
 * order-preserving key escaping of the history column family, and the error
 * texts.
 *
 * Every decoder here checks lengths before reading: records come from disk,
 * and a damaged record must turn into STORE_ECORRUPT, not a crash.
 */
#include <errno.h>
#include <string.h>

#include "store/store_int.h"

/* ---------------------------------------------------------------- errors */

const char *store_strerror(int rc) {
    switch (rc) {
    case 0:
        return "success";
#define STORE__ERR_CASE(name, value, text)                                                         \
    case value:                                                                                    \
        return text;
        STORE_ERRORS(STORE__ERR_CASE)
        /* raft's texts, spelled out here so that store_strerror does not
         * need raft's library at link time. */
        RAFT_ERRORS(STORE__ERR_CASE)
#undef STORE__ERR_CASE
    default:
        break;
    }
    if (rc < 0 && rc > -4096) return strerror(-rc);
    return "unknown error";
}

/* ---------------------------------------------------------------- arena */

/* Chunks hold small allocations; large ones get a chunk of their own. */
#define MEM_CHUNK_BYTES (16u * 1024u)

struct store__chunk {
    struct store__chunk *next;
    size_t used;
    size_t cap;
    _Alignas(16) unsigned char data[];
};

struct store_mem *store__mem_new(void) {
    return qfs_calloc(1, sizeof(struct store_mem));
}

void store__mem_free(struct store_mem *m) {
    if (m == NULL) return;
    struct store__chunk *c = m->head;
    while (c != NULL) {
        struct store__chunk *next = c->next;
        free(c);
        c = next;
    }
    free(m);
}

void *store__mem_alloc(struct store_mem *m, size_t n) {
    STORE_ASSERT(m != NULL);
    size_t need = (n + 15u) & ~(size_t)15u;
    if (need < n) return NULL;
    if (need == 0) need = 16;
    struct store__chunk *c = m->head;
    if (c == NULL || c->cap - c->used < need) {
        size_t cap = need > MEM_CHUNK_BYTES / 2 ? need : MEM_CHUNK_BYTES;
        if (cap > SIZE_MAX - sizeof(*c)) return NULL;
        struct store__chunk *nc = qfs_malloc(sizeof(*nc) + cap);
        if (nc == NULL) return NULL;
        nc->used = 0;
        nc->cap = cap;
        if (c != NULL && cap > MEM_CHUNK_BYTES / 2 && c->cap - c->used >= 64) {
            /* Keep the partly used chunk at the head for later small
             * allocations; the big one goes behind it. */
            nc->next = c->next;
            c->next = nc;
        } else {
            nc->next = c;
            m->head = nc;
        }
        c = nc;
    }
    void *p = c->data + c->used;
    c->used += need;
    STORE_ASSERT(c->used <= c->cap);
    memset(p, 0, n);
    return p;
}

void *store__mem_dup(struct store_mem *m, const void *p, size_t n) {
    void *q = store__mem_alloc(m, n);
    if (q != NULL && n > 0) memcpy(q, p, n);
    return q;
}

/* ---------------------------------------------------------------- buffers */

void store__buf_free(struct store__buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

int store__buf_reserve(struct store__buf *b, size_t extra) {
    if (b->len + extra < b->len) return STORE_ENOMEM;
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra) {
        if (cap > SIZE_MAX / 2) return STORE_ENOMEM;
        cap *= 2;
    }
    uint8_t *p = qfs_realloc(b->p, cap);
    if (p == NULL) return STORE_ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

int store__buf_append(struct store__buf *b, const void *p, size_t n) {
    int rc = store__buf_reserve(b, n);
    if (rc != 0) return rc;
    if (n > 0) memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

int store__buf_u8(struct store__buf *b, uint8_t v) {
    return store__buf_append(b, &v, 1);
}

int store__buf_u32le(struct store__buf *b, uint32_t v) {
    uint8_t t[4];
    store__put_u32le(t, v);
    return store__buf_append(b, t, 4);
}

int store__buf_u64le(struct store__buf *b, uint64_t v) {
    uint8_t t[8];
    store__put_u64le(t, v);
    return store__buf_append(b, t, 8);
}

int store__buf_u64be(struct store__buf *b, uint64_t v) {
    uint8_t t[8];
    store__put_u64be(t, v);
    return store__buf_append(b, t, 8);
}

void store__put_u32le(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

void store__put_u64le(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

void store__put_u64be(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i));
}

void store__put_u32be(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (24 - 8 * i));
}

uint32_t store__get_u32le(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

uint64_t store__get_u64le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

uint64_t store__get_u64be(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

uint32_t store__get_u32be(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v = (v << 8) | p[i];
    return v;
}

/* ---------------------------------------------------------------- state */

void store__state_encode(const struct store__state *st, uint8_t out[STORE__STATE_BYTES]) {
    STORE_ASSERT(st->conf.n_voters <= RAFT_MEMBERS_MAX);
    STORE_ASSERT(st->conf.n_learners <= RAFT_MEMBERS_MAX);
    uint8_t *p = out;
    store__put_u32le(p, st->format);
    p += 4;
    store__put_u64le(p, st->applied);
    p += 8;
    store__put_u64le(p, (uint64_t)st->rev);
    p += 8;
    store__put_u64le(p, (uint64_t)st->compact_rev);
    p += 8;
    store__put_u64le(p, st->logical_bytes);
    p += 8;
    store__put_u64le(p, st->n_leases);
    p += 8;
    store__put_u32le(p, st->conf.n_voters);
    p += 4;
    store__put_u32le(p, st->conf.n_learners);
    p += 4;
    for (int i = 0; i < RAFT_MEMBERS_MAX; i++, p += 8) store__put_u64le(p, st->conf.voters[i]);
    for (int i = 0; i < RAFT_MEMBERS_MAX; i++, p += 8) store__put_u64le(p, st->conf.learners[i]);
    STORE_ASSERT(p == out + STORE__STATE_BYTES);
}

int store__state_decode(const void *data, size_t len, struct store__state *st) {
    if (len != STORE__STATE_BYTES) return STORE_ECORRUPT;
    const uint8_t *p = data;
    memset(st, 0, sizeof(*st));
    st->format = store__get_u32le(p);
    p += 4;
    if (st->format != STORE__FORMAT) return STORE_ECORRUPT;
    st->applied = store__get_u64le(p);
    p += 8;
    st->rev = (int64_t)store__get_u64le(p);
    p += 8;
    st->compact_rev = (int64_t)store__get_u64le(p);
    p += 8;
    st->logical_bytes = store__get_u64le(p);
    p += 8;
    st->n_leases = store__get_u64le(p);
    p += 8;
    st->conf.n_voters = store__get_u32le(p);
    p += 4;
    st->conf.n_learners = store__get_u32le(p);
    p += 4;
    if (st->conf.n_voters > RAFT_MEMBERS_MAX || st->conf.n_learners > RAFT_MEMBERS_MAX)
        return STORE_ECORRUPT;
    for (int i = 0; i < RAFT_MEMBERS_MAX; i++, p += 8) st->conf.voters[i] = store__get_u64le(p);
    for (int i = 0; i < RAFT_MEMBERS_MAX; i++, p += 8) st->conf.learners[i] = store__get_u64le(p);
    if (st->rev < 1 || st->compact_rev < 0 || st->compact_rev > st->rev) return STORE_ECORRUPT;
    return 0;
}

/* ---------------------------------------------------------------- records */

int store__rec_encode(const struct store__rec *r, struct store__buf *out) {
    int rc = store__buf_reserve(out, STORE__REC_HDR + r->value_len);
    if (rc != 0) return rc;
    uint8_t *p = out->p + out->len;
    p[0] = r->flags;
    store__put_u64le(p + 1, (uint64_t)r->create_rev);
    store__put_u64le(p + 9, (uint64_t)r->mod_rev);
    store__put_u64le(p + 17, (uint64_t)r->version);
    store__put_u64le(p + 25, (uint64_t)r->lease);
    store__put_u32le(p + 33, r->mode);
    store__put_u32le(p + 37, r->uid);
    store__put_u32le(p + 41, r->gid);
    store__put_u64le(p + 45, (uint64_t)r->mtime_ns);
    if (r->value_len > 0) memcpy(p + STORE__REC_HDR, r->value, r->value_len);
    out->len += STORE__REC_HDR + r->value_len;
    return 0;
}

int store__rec_decode(const void *data, size_t len, struct store__rec *r) {
    if (len < STORE__REC_HDR) return STORE_ECORRUPT;
    const uint8_t *p = data;
    r->flags = p[0];
    if ((r->flags & ~STORE__REC_TOMBSTONE) != 0) return STORE_ECORRUPT;
    r->create_rev = (int64_t)store__get_u64le(p + 1);
    r->mod_rev = (int64_t)store__get_u64le(p + 9);
    r->version = (int64_t)store__get_u64le(p + 17);
    r->lease = (int64_t)store__get_u64le(p + 25);
    r->mode = store__get_u32le(p + 33);
    r->uid = store__get_u32le(p + 37);
    r->gid = store__get_u32le(p + 41);
    r->mtime_ns = (int64_t)store__get_u64le(p + 45);
    r->value = p + STORE__REC_HDR;
    r->value_len = len - STORE__REC_HDR;
    if (r->mod_rev < 1) return STORE_ECORRUPT;
    return 0;
}

uint64_t store__hist_cost(size_t key_len, size_t value_len) {
    return (uint64_t)key_len + (uint64_t)value_len + STORE__HIST_OVERHEAD;
}

/* ---------------------------------------------------------------- escaping */

/*
 * esc(k): each 0x00 byte becomes 0x00 0xFF, and 0x00 0x01 ends the string.
 * For keys a < b, esc(a) < esc(b), and no esc() is a prefix of another, so
 * "esc(K) || anything" entries of one key sort together and before those of
 * every larger key.
 */
int store__esc_append(struct store__buf *b, const void *key, size_t len) {
    const uint8_t *k = key;
    int rc = store__buf_reserve(b, len + 2);
    if (rc != 0) return rc;
    for (size_t i = 0; i < len; i++) {
        if (k[i] == 0) {
            rc = store__buf_reserve(b, 2 + (len - i) + 2);
            if (rc != 0) return rc;
            b->p[b->len++] = 0;
            b->p[b->len++] = 0xFF;
        } else {
            b->p[b->len++] = k[i];
        }
    }
    b->p[b->len++] = 0;
    b->p[b->len++] = 1;
    return 0;
}

int store__hist_key(struct store__buf *b, const void *key, size_t len, int64_t rev, uint32_t sub) {
    b->len = 0;
    int rc = store__esc_append(b, key, len);
    if (rc == 0) rc = store__buf_reserve(b, STORE__HIST_SUFFIX);
    if (rc != 0) return rc;
    store__put_u64be(b->p + b->len, ~(uint64_t)rev);
    store__put_u32be(b->p + b->len + 8, ~sub);
    b->len += STORE__HIST_SUFFIX;
    return 0;
}

int store__hist_key_parse(const void *kp, size_t klen, struct store__buf *user, size_t *esc_len,
                          int64_t *rev, uint32_t *sub) {
    const uint8_t *k = kp;
    user->len = 0;
    if (klen < 2 + STORE__HIST_SUFFIX) return STORE_ECORRUPT;
    size_t n = klen - STORE__HIST_SUFFIX;
    int rc = store__buf_reserve(user, n);
    if (rc != 0) return rc;
    size_t i = 0;
    for (;;) {
        if (i >= n) return STORE_ECORRUPT;
        if (k[i] != 0) {
            user->p[user->len++] = k[i++];
            continue;
        }
        if (i + 1 >= n) return STORE_ECORRUPT;
        if (k[i + 1] == 0xFF) {
            user->p[user->len++] = 0;
            i += 2;
            continue;
        }
        if (k[i + 1] != 0x01) return STORE_ECORRUPT;
        i += 2;
        break;
    }
    if (i != n) return STORE_ECORRUPT;
    *esc_len = n;
    *rev = (int64_t)~store__get_u64be(k + n);
    if (sub != NULL) *sub = ~store__get_u32be(k + n + 8);
    return 0;
}

/* ---------------------------------------------------------------- ranges */

int store__bytes_cmp(const void *a, size_t alen, const void *b, size_t blen) {
    size_t n = alen < blen ? alen : blen;
    int c = n ? memcmp(a, b, n) : 0;
    if (c != 0) return c;
    return alen < blen ? -1 : (alen > blen ? 1 : 0);
}

bool store__in_range(const void *k, size_t klen, const void *key, size_t key_len, const void *end,
                     size_t end_len) {
    if (end_len == 0) return store__bytes_cmp(k, klen, key, key_len) == 0;
    if (store__bytes_cmp(k, klen, key, key_len) < 0) return false;
    if (end_len == 1 && ((const uint8_t *)end)[0] == 0) return true;
    return store__bytes_cmp(k, klen, end, end_len) < 0;
}
