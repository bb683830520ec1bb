/*
 * test_store_cache.c - the client mount's cache (store_cache_*) against a
 * reference model.
 *
 * The model is an array over a fixed set of candidate keys (chosen to sit
 * on the edges of the cache's slot-prefix encoding: 0x00, 0x01, 0x02 and
 * 0xff bytes), each absent or holding one kv, plus the revision. Seeded
 * random applies, gets, ranges with limits and keys_only, paging, reopens
 * and reloads drive the model and a cache in lockstep, on the in-memory
 * database and on RocksDB; every read is compared with the model field by
 * field, and a reload's diff callbacks with the model's diff, call for call.
 * Fault injection on the in-memory database fails the Nth write and drops
 * unsynced writes (power loss): the copy must then be exactly the state of
 * one earlier revision, never a mix. Reader threads check that each read
 * sees one revision while the writer applies. A failure prints the seed.
 */
#include "tests/unit/store/store_test.h"

#include <pthread.h>
#include <stdatomic.h>

#define NKEYS 16
#define VAL_MAX 24

static const char *const CAND[NKEYS] = {"a",        "a/b",      "a/c", "ab",   "b",    "b/x",
                                        "c",        "c/1",      "zz",  "\x01", "\x02", "\xff",
                                        "\xff\xff", "\x01\x01", "m",   "\x00"};
static const size_t CAND_LEN[NKEYS] = {1, 3, 3, 2, 1, 3, 1, 3, 2, 1, 1, 1, 2, 2, 1, 1};

/* CAND sorted in key order (set up by keys_init). */
static struct store_bytes KEYS[NKEYS];

static int cmpb(const void *a, size_t al, const void *b, size_t bl) {
    size_t n = al < bl ? al : bl;
    int c = n ? memcmp(a, b, n) : 0;
    if (c) return c;
    return al < bl ? -1 : al > bl;
}

static void keys_init(void) {
    for (int i = 0; i < NKEYS; i++) KEYS[i] = t_bytes(CAND[i], CAND_LEN[i]);
    for (int i = 1; i < NKEYS; i++)
        for (int j = i;
             j > 0 && cmpb(KEYS[j].base, KEYS[j].len, KEYS[j - 1].base, KEYS[j - 1].len) < 0; j--) {
            struct store_bytes t = KEYS[j];
            KEYS[j] = KEYS[j - 1];
            KEYS[j - 1] = t;
        }
}

/* ---------------------------------------------------------------- model */

struct mkv {
    bool live;
    int64_t create, mod, version, lease;
    uint32_t mode, uid, gid;
    int64_t mtime_ns;
    size_t vlen;
    char val[VAL_MAX];
};

/* Plain data: copied by value for the crash history. */
struct model {
    int64_t rev;
    struct mkv k[NKEYS];
};

static struct store_kv m_kv(const struct model *m, int i) {
    const struct mkv *v = &m->k[i];
    struct store_kv kv;
    memset(&kv, 0, sizeof(kv));
    kv.key = KEYS[i];
    kv.value = t_bytes(v->val, v->vlen);
    kv.create_revision = v->create;
    kv.mod_revision = v->mod;
    kv.version = v->version;
    kv.lease = v->lease;
    kv.mode = v->mode;
    kv.uid = v->uid;
    kv.gid = v->gid;
    kv.mtime_ns = v->mtime_ns;
    return kv;
}

static bool mkv_equal(const struct mkv *a, const struct mkv *b) {
    if (a->live != b->live) return false;
    if (!a->live) return true;
    return a->create == b->create && a->mod == b->mod && a->version == b->version &&
           a->lease == b->lease && a->mode == b->mode && a->uid == b->uid && a->gid == b->gid &&
           a->mtime_ns == b->mtime_ns && a->vlen == b->vlen && memcmp(a->val, b->val, a->vlen) == 0;
}

/* A random live kv with mod_revision `mod`. */
static void rand_mkv(uint64_t *rng, int64_t mod, struct mkv *v) {
    memset(v, 0, sizeof(*v));
    v->live = true;
    v->mod = mod;
    v->create = 1 + (int64_t)t_below(rng, (uint64_t)mod);
    v->version = 1 + (int64_t)t_below(rng, 5);
    v->lease = t_below(rng, 4) == 0 ? 1 + (int64_t)t_below(rng, 3) : 0;
    v->mode = t_below(rng, 2) ? 0100644 : 040755;
    v->uid = (uint32_t)t_below(rng, 3);
    v->gid = (uint32_t)t_below(rng, 3);
    v->mtime_ns = (int64_t)t_below(rng, 1000000);
    v->vlen = t_below(rng, 5) == 0 ? 0 : (size_t)t_below(rng, VAL_MAX);
    for (size_t j = 0; j < v->vlen; j++) v->val[j] = (char)t_below(rng, 4); /* with 0 bytes */
}

/* ---------------------------------------------------------------- checks */

static void check_kv(const struct store_kv *got, const struct model *m, int i, bool keys_only) {
    struct store_kv want = m_kv(m, i);
    ASSERT_EQ(got->key.len, want.key.len);
    ASSERT_MEM_EQ(got->key.base, want.key.base, want.key.len);
    ASSERT_EQ(got->value.len, want.value.len);
    if (keys_only) {
        ASSERT(got->value.base == NULL);
    } else {
        ASSERT(got->value.base != NULL);
        ASSERT_MEM_EQ(got->value.base, want.value.base, want.value.len);
    }
    ASSERT_EQ(got->create_revision, want.create_revision);
    ASSERT_EQ(got->mod_revision, want.mod_revision);
    ASSERT_EQ(got->version, want.version);
    ASSERT_EQ(got->lease, want.lease);
    ASSERT_EQ(got->mode, want.mode);
    ASSERT_EQ(got->uid, want.uid);
    ASSERT_EQ(got->gid, want.gid);
    ASSERT_EQ(got->mtime_ns, want.mtime_ns);
}

/* Index of the first key >= b (NKEYS if none). */
static int m_lower(const void *b, size_t bl) {
    int i = 0;
    while (i < NKEYS && cmpb(KEYS[i].base, KEYS[i].len, b, bl) < 0) i++;
    return i;
}

/* One range read compared with the model. end_len 0: unbounded. */
static void check_range(struct store_cache *c, const struct model *m, const void *start,
                        size_t start_len, const void *end, size_t end_len, size_t limit,
                        bool keys_only) {
    struct store_range_result r;
    int rc = store_cache_range(c, start, start_len, end, end_len, limit, keys_only, &r);
    ASSERT_EQ(rc, 0);
    bool bounded = end_len > 0 && !(end_len == 1 && ((const uint8_t *)end)[0] == 0);
    size_t n = 0;
    bool more = false;
    bool ok = r.revision == m->rev;
    for (int i = m_lower(start, start_len); i < NKEYS && ok; i++) {
        if (bounded && cmpb(KEYS[i].base, KEYS[i].len, end, end_len) >= 0) break;
        if (!m->k[i].live) continue;
        if (limit > 0 && n == limit) {
            more = true;
            break;
        }
        if (n >= r.n_kvs) {
            ok = false;
            break;
        }
        check_kv(&r.kvs[n], m, i, keys_only);
        if (harness_cur_failed) ok = false;
        n++;
    }
    int64_t count = r.count, rev = r.revision;
    size_t got_n = r.n_kvs;
    bool got_more = r.more;
    store_range_result_release(&r);
    ASSERT(ok);
    ASSERT_EQ(rev, m->rev);
    ASSERT_EQ(got_n, n);
    ASSERT_EQ(got_more, more);
    ASSERT_EQ(count, more ? -1 : (int64_t)n);
}

/* Pages through everything with page size `limit` and compares. */
static void check_pages(struct store_cache *c, const struct model *m, size_t limit) {
    uint8_t next[64];
    size_t next_len = 0;
    int i = 0;
    for (int pages = 0; pages <= NKEYS + 1; pages++) {
        struct store_range_result r;
        ASSERT_EQ(store_cache_range(c, next, next_len, NULL, 0, limit, false, &r), 0);
        bool ok = r.revision == m->rev && r.n_kvs <= limit;
        for (size_t j = 0; j < r.n_kvs && ok; j++) {
            while (i < NKEYS && !m->k[i].live) i++;
            if (i == NKEYS) {
                ok = false;
                break;
            }
            check_kv(&r.kvs[j], m, i, false);
            if (harness_cur_failed) ok = false;
            i++;
        }
        bool more = r.more;
        if (ok && r.n_kvs > 0) {
            const struct store_kv *last = &r.kvs[r.n_kvs - 1];
            ok = last->key.len + 1 <= sizeof(next);
            if (ok) {
                memcpy(next, last->key.base, last->key.len);
                next[last->key.len] = 0;
                next_len = last->key.len + 1;
            }
        }
        ok = ok && (more ? r.n_kvs == limit : true);
        store_range_result_release(&r);
        ASSERT(ok);
        if (!more) break;
    }
    while (i < NKEYS && !m->k[i].live) i++;
    ASSERT_EQ(i, NKEYS);
}

/* The whole copy equals the model: revision, every get, one full range. */
static void check_all(struct store_cache *c, const struct model *m) {
    ASSERT_EQ(store_cache_revision(c), m->rev);
    for (int i = 0; i < NKEYS; i++) {
        struct store_range_result r;
        ASSERT_EQ(store_cache_get(c, KEYS[i].base, KEYS[i].len, &r), 0);
        bool ok = r.revision == m->rev && r.n_kvs == (m->k[i].live ? 1u : 0u) &&
                  r.count == (int64_t)r.n_kvs;
        if (ok && r.n_kvs == 1) {
            check_kv(&r.kvs[0], m, i, false);
            ok = !harness_cur_failed;
        }
        store_range_result_release(&r);
        ASSERT(ok);
    }
    check_range(c, m, "", 0, NULL, 0, 0, false);
}

/* ---------------------------------------------------------------- drivers */

/* A test cache: RocksDB in a temporary directory, or a memdb. */
struct tc {
    struct store_cache *c;
    struct store_memdb *mem;
    char *tmp, *dir;
};

static int tc_reopen(struct tc *t) {
    store_cache_close(t->c);
    t->c = NULL;
    char err[256];
    int rc = store_cache_open(t->dir, t->mem, &t->c, err, sizeof(err));
    if (rc != 0) fprintf(stderr, "store_cache_open: %s\n", err);
    return rc;
}

static int tc_open(struct tc *t, bool rocks) {
    memset(t, 0, sizeof(*t));
    if (rocks) {
        t->tmp = t_mkdtemp();
        t->dir = malloc(strlen(t->tmp) + 8);
        if (t->dir == NULL) abort();
        sprintf(t->dir, "%s/cache", t->tmp);
    } else {
        t->mem = store_memdb_new();
        if (t->mem == NULL) abort();
    }
    return tc_reopen(t);
}

static void tc_close(struct tc *t) {
    store_cache_close(t->c);
    t->c = NULL;
    store_memdb_free(t->mem);
    if (t->tmp) t_rmrf(t->tmp);
    free(t->tmp);
    free(t->dir);
    memset(t, 0, sizeof(*t));
}

/* A random apply: builds the changes, applies them to a copy of the model
 * (*next) and to the cache; returns the cache's code. */
static int rand_apply(uint64_t *rng, struct store_cache *c, const struct model *m,
                      struct model *next) {
    struct store_cache_change ch[6];
    struct mkv vals[6];
    size_t n = (size_t)t_below(rng, 7);
    *next = *m;
    next->rev = m->rev + (n == 0 ? (int64_t)t_below(rng, 2) : 1 + (int64_t)t_below(rng, 3));
    for (size_t j = 0; j < n; j++) {
        int i = (int)t_below(rng, NKEYS);
        memset(&ch[j], 0, sizeof(ch[j]));
        if (t_below(rng, 10) < 7) {
            rand_mkv(rng, next->rev, &vals[j]);
            next->k[i] = vals[j];
            ch[j].type = STORE_EVENT_PUT;
            ch[j].kv = m_kv(next, i);
        } else {
            next->k[i].live = false;
            ch[j].type = STORE_EVENT_DELETE;
            ch[j].kv.key = KEYS[i];
            ch[j].kv.mod_revision = next->rev;
        }
    }
    return store_cache_apply(c, ch, n, next->rev);
}

/* A random range compared with the model. */
static void rand_range(uint64_t *rng, struct store_cache *c, const struct model *m) {
    uint8_t sb[8], eb[8];
    size_t sl = 0, el = 0;
    uint64_t k = t_below(rng, 4);
    if (k == 1) {
        const struct store_bytes *b = &KEYS[t_below(rng, NKEYS)];
        memcpy(sb, b->base, b->len);
        sl = b->len;
    } else if (k >= 2) {
        sl = 1 + (size_t)t_below(rng, 2);
        for (size_t j = 0; j < sl; j++)
            sb[j] = (uint8_t) "\x00\x01\x02"
                              "ab\xff"[t_below(rng, 6)];
    }
    k = t_below(rng, 4);
    if (k == 1) {
        eb[0] = 0;
        el = 1;
    } else if (k >= 2) {
        const struct store_bytes *b = &KEYS[t_below(rng, NKEYS)];
        memcpy(eb, b->base, b->len);
        el = b->len;
    }
    check_range(c, m, sb, sl, el ? eb : NULL, el, (size_t)t_below(rng, 5), t_below(rng, 2) == 1);
}

/* ---------------------------------------------------------------- reload */

struct diff_call {
    enum store_cache_diff kind;
    int i; /* key index */
    struct mkv v;
};

struct diff_rec {
    struct diff_call calls[2 * NKEYS];
    size_t n;
    bool bad; /* an unknown key or too many calls */
};

static void diff_record_cb(void *arg, enum store_cache_diff kind, const struct store_kv *kv) {
    struct diff_rec *d = arg;
    int i = 0;
    while (i < NKEYS && cmpb(KEYS[i].base, KEYS[i].len, kv->key.base, kv->key.len) != 0) i++;
    if (i == NKEYS || d->n == 2 * NKEYS || kv->value.len > VAL_MAX) {
        d->bad = true;
        return;
    }
    struct diff_call *c = &d->calls[d->n++];
    memset(c, 0, sizeof(*c));
    c->kind = kind;
    c->i = i;
    c->v.live = true;
    c->v.create = kv->create_revision;
    c->v.mod = kv->mod_revision;
    c->v.version = kv->version;
    c->v.lease = kv->lease;
    c->v.mode = kv->mode;
    c->v.uid = kv->uid;
    c->v.gid = kv->gid;
    c->v.mtime_ns = kv->mtime_ns;
    c->v.vlen = kv->value.len;
    if (kv->value.len) memcpy(c->v.val, kv->value.base, kv->value.len);
}

/* The model's diff old -> new, in key order. */
static void m_diff(const struct model *o, const struct model *n, struct diff_rec *d) {
    memset(d, 0, sizeof(*d));
    for (int i = 0; i < NKEYS; i++) {
        struct diff_call *c = &d->calls[d->n];
        if (o->k[i].live && !n->k[i].live)
            *c = (struct diff_call){STORE_CACHE_DELETED, i, o->k[i]};
        else if (!o->k[i].live && n->k[i].live)
            *c = (struct diff_call){STORE_CACHE_CREATED, i, n->k[i]};
        else if (!mkv_equal(&o->k[i], &n->k[i]))
            *c = (struct diff_call){STORE_CACHE_MODIFIED, i, n->k[i]};
        else
            continue;
        d->n++;
    }
}

/* A random new state at revision rev, related to the old one: keys kept,
 * changed in the value only, in everything, created and deleted. */
static void rand_state(uint64_t *rng, const struct model *o, int64_t rev, struct model *n) {
    memset(n, 0, sizeof(*n));
    n->rev = rev;
    for (int i = 0; i < NKEYS; i++) {
        uint64_t k = t_below(rng, 10);
        if (k < 3) continue; /* absent */
        if (o->k[i].live && o->k[i].mod <= rev && k < 6) {
            n->k[i] = o->k[i];
            if (k == 5) { /* same revisions, another value */
                n->k[i].vlen = (n->k[i].vlen + 1) % VAL_MAX;
                memset(n->k[i].val, 'x', n->k[i].vlen);
            }
            continue;
        }
        rand_mkv(rng, 1 + (int64_t)t_below(rng, (uint64_t)rev), &n->k[i]);
    }
}

/* Feeds n's live keys in random page sizes (empty pages too). */
static int feed(uint64_t *rng, struct store_cache_reload *r, const struct model *n) {
    struct store_kv page[NKEYS];
    int i = 0;
    while (i < NKEYS) {
        size_t want = (size_t)t_below(rng, 5), got = 0;
        while (i < NKEYS && got < want) {
            if (n->k[i].live) page[got++] = m_kv(n, i);
            i++;
        }
        int rc = store_cache_reload_page(r, page, got);
        if (rc != 0) return rc;
    }
    return store_cache_reload_page(r, NULL, 0);
}

/* ---------------------------------------------------------------- tests */

static void model_run(bool rocks, uint64_t seed, int steps) {
    uint64_t rng = seed;
    struct tc t;
    ASSERT_EQ(tc_open(&t, rocks), 0);
    struct model m, next;
    memset(&m, 0, sizeof(m));
    check_all(t.c, &m);
    for (int step = 0; step < steps && !harness_cur_failed; step++) {
        uint64_t k = t_below(&rng, 100);
        if (k < 45) {
            int rc = rand_apply(&rng, t.c, &m, &next);
            ASSERT_EQ(rc, 0);
            m = next;
        } else if (k < 50) {
            /* A lower revision, or the same one with changes: refused. */
            struct store_cache_change ch;
            memset(&ch, 0, sizeof(ch));
            ch.type = STORE_EVENT_DELETE;
            ch.kv.key = KEYS[0];
            if (m.rev > 0) ASSERT_EQ(store_cache_apply(t.c, NULL, 0, m.rev - 1), STORE_EINVAL);
            ASSERT_EQ(store_cache_apply(t.c, &ch, 1, m.rev), STORE_EINVAL);
            ASSERT_EQ(store_cache_apply(t.c, NULL, 0, m.rev), 0);
            ASSERT_EQ(store_cache_revision(t.c), m.rev);
        } else if (k < 80) {
            rand_range(&rng, t.c, &m);
        } else if (k < 88) {
            check_pages(t.c, &m, 1 + (size_t)t_below(&rng, 4));
        } else if (k < 92) {
            check_all(t.c, &m);
        } else if (k < 96) {
            ASSERT_EQ(tc_reopen(&t), 0);
            check_all(t.c, &m);
        } else {
            char name[16], blob[16];
            snprintf(name, sizeof(name), "n%d", (int)t_below(&rng, 3));
            snprintf(blob, sizeof(blob), "b%d", step);
            ASSERT_EQ(store_cache_meta_put(t.c, name, blob, strlen(blob)), 0);
            void *got;
            size_t len;
            ASSERT_EQ(store_cache_meta_get(t.c, name, &got, &len), 0);
            bool ok = len == strlen(blob) && memcmp(got, blob, len) == 0;
            free(got);
            ASSERT(ok);
        }
        if (harness_cur_failed)
            fprintf(stderr, "  seed %llu step %d\n", (unsigned long long)seed, step);
    }
    if (!harness_cur_failed) check_all(t.c, &m);
    tc_close(&t);
}

TEST(cache_model_mem) {
    keys_init();
    for (uint64_t s = 0; s < 4 && !harness_cur_failed; s++)
        model_run(false, harness_seed + s, 1500);
}

TEST(cache_model_rocksdb) {
    keys_init();
    for (uint64_t s = 0; s < 2 && !harness_cur_failed; s++)
        model_run(true, harness_seed * 7 + s, 800);
}

TEST(cache_bad_input) {
    keys_init();
    struct tc t;
    ASSERT_EQ(tc_open(&t, false), 0);
    struct store_cache_change ch;
    memset(&ch, 0, sizeof(ch));
    ch.type = STORE_EVENT_PUT;
    ch.kv.key = t_str("k");
    ch.kv.value = t_str("v");
    ch.kv.create_revision = ch.kv.mod_revision = 5;
    ch.kv.version = 1;
    ASSERT_EQ(store_cache_apply(t.c, &ch, 1, 4), STORE_EINVAL); /* mod > revision */
    ch.kv.create_revision = 6;
    ASSERT_EQ(store_cache_apply(t.c, &ch, 1, 6), STORE_EINVAL); /* create > mod */
    ch.kv.create_revision = 5;
    ch.kv.version = 0;
    ASSERT_EQ(store_cache_apply(t.c, &ch, 1, 6), STORE_EINVAL);
    ch.kv.version = 1;
    ch.kv.key = t_bytes("", 0);
    ASSERT_EQ(store_cache_apply(t.c, &ch, 1, 6), STORE_EKEYEMPTY);
    ch.kv.key = t_str("k");
    ch.type = (enum store_event_type)7;
    ASSERT_EQ(store_cache_apply(t.c, &ch, 1, 6), STORE_EINVAL);
    ch.type = STORE_EVENT_PUT;
    ASSERT_EQ(store_cache_revision(t.c), 0);
    ASSERT_EQ(store_cache_apply(t.c, &ch, 1, 6), 0);
    ASSERT_EQ(store_cache_revision(t.c), 6);
    struct store_range_result r;
    ASSERT_EQ(store_cache_get(t.c, "", 0, &r), STORE_EKEYEMPTY);
    ASSERT_EQ(store_cache_get(t.c, "k", 1, &r), 0);
    ASSERT_EQ(r.n_kvs, 1);
    ASSERT_EQ(r.revision, 6);
    store_range_result_release(&r);
    void *blob;
    size_t len;
    ASSERT_EQ(store_cache_meta_get(t.c, "nope", &blob, &len), STORE_EKEYNOTFOUND);
    ASSERT_EQ(store_cache_meta_get(t.c, "", &blob, &len), STORE_EINVAL);
    ASSERT_EQ(store_cache_meta_put(t.c, "empty", NULL, 0), 0);
    ASSERT_EQ(store_cache_meta_get(t.c, "empty", &blob, &len), 0);
    ASSERT(blob != NULL);
    ASSERT_EQ(len, 0);
    free(blob);
    ASSERT_EQ(store_cache_meta_put(t.c, "big", "", STORE_CACHE_META_BYTES_MAX + 1),
              STORE_ETOOLARGE);
    /* Reload: pages out of order, or a kv newer than the reload. */
    struct store_cache_reload *rl;
    ASSERT_EQ(store_cache_reload_begin(t.c, 0, &rl), STORE_EINVAL);
    ASSERT_EQ(store_cache_reload_begin(t.c, 10, &rl), 0);
    struct store_kv kvs[2];
    memset(kvs, 0, sizeof(kvs));
    kvs[0].key = t_str("b");
    kvs[1].key = t_str("a");
    for (int i = 0; i < 2; i++) kvs[i].create_revision = kvs[i].mod_revision = kvs[i].version = 1;
    ASSERT_EQ(store_cache_reload_page(rl, kvs, 2), STORE_EINVAL);
    ASSERT_EQ(store_cache_reload_page(rl, kvs, 1), 0);
    ASSERT_EQ(store_cache_reload_page(rl, kvs, 1), STORE_EINVAL); /* "b" again */
    ASSERT_EQ(store_cache_reload_page(rl, &kvs[1], 1), STORE_EINVAL);
    kvs[1].key = t_str("c");
    kvs[1].mod_revision = 11;
    ASSERT_EQ(store_cache_reload_page(rl, &kvs[1], 1), STORE_EINVAL);
    store_cache_reload_abort(rl);
    ASSERT_EQ(store_cache_revision(t.c), 6);
    tc_close(&t);
}

static void reload_run(bool rocks, uint64_t seed, int rounds) {
    uint64_t rng = seed;
    struct tc t;
    ASSERT_EQ(tc_open(&t, rocks), 0);
    struct model m, next, n;
    memset(&m, 0, sizeof(m));
    struct diff_rec got, want;
    for (int round = 0; round < rounds && !harness_cur_failed; round++) {
        /* Some applies on top of whatever slot is active. */
        for (int j = (int)t_below(&rng, 6); j > 0; j--) {
            ASSERT_EQ(rand_apply(&rng, t.c, &m, &next), 0);
            m = next;
        }
        int64_t rev = m.rev + 1 + (int64_t)t_below(&rng, 20);
        if (t_below(&rng, 8) == 0 && m.rev > 2) rev = 1 + (int64_t)t_below(&rng, (uint64_t)m.rev);
        rand_state(&rng, &m, rev, &n);
        struct store_cache_reload *r;
        ASSERT_EQ(store_cache_reload_begin(t.c, rev, &r), 0);
        ASSERT_EQ(feed(&rng, r, &n), 0);
        char blob[32];
        snprintf(blob, sizeof(blob), "cluster-%d", round);
        ASSERT_EQ(store_cache_reload_meta_put(r, "cluster", blob, strlen(blob)), 0);
        /* Readers see the old copy until the commit. */
        check_all(t.c, &m);
        if (t_below(&rng, 4) == 0) {
            store_cache_reload_abort(r);
            check_all(t.c, &m);
        } else {
            memset(&got, 0, sizeof(got));
            ASSERT_EQ(store_cache_reload_commit(r, diff_record_cb, &got), 0);
            m_diff(&m, &n, &want);
            ASSERT(!got.bad);
            ASSERT_EQ(got.n, want.n);
            for (size_t j = 0; j < want.n; j++) {
                ASSERT_EQ(got.calls[j].kind, want.calls[j].kind);
                ASSERT_EQ(got.calls[j].i, want.calls[j].i);
                ASSERT(mkv_equal(&got.calls[j].v, &want.calls[j].v));
            }
            m = n;
            check_all(t.c, &m);
            void *b;
            size_t len;
            ASSERT_EQ(store_cache_meta_get(t.c, "cluster", &b, &len), 0);
            bool ok = len == strlen(blob) && memcmp(b, blob, len) == 0;
            free(b);
            ASSERT(ok);
        }
        if (t_below(&rng, 3) == 0) {
            ASSERT_EQ(tc_reopen(&t), 0);
            check_all(t.c, &m);
        }
        if (harness_cur_failed)
            fprintf(stderr, "  seed %llu round %d\n", (unsigned long long)seed, round);
    }
    tc_close(&t);
}

TEST(cache_reload_diff_mem) {
    keys_init();
    for (uint64_t s = 0; s < 4 && !harness_cur_failed; s++)
        reload_run(false, harness_seed + 100 + s, 150);
}

TEST(cache_reload_diff_rocksdb) {
    keys_init();
    reload_run(true, harness_seed + 200, 80);
}

TEST(cache_reload_no_callback) {
    keys_init();
    struct tc t;
    ASSERT_EQ(tc_open(&t, false), 0);
    uint64_t rng = harness_seed + 300;
    struct model m, n;
    memset(&m, 0, sizeof(m));
    rand_state(&rng, &m, 5, &n);
    struct store_cache_reload *r;
    ASSERT_EQ(store_cache_reload_begin(t.c, 5, &r), 0);
    ASSERT_EQ(feed(&rng, r, &n), 0);
    ASSERT_EQ(store_cache_reload_commit(r, NULL, NULL), 0);
    check_all(t.c, &n);
    tc_close(&t);
}

TEST(cache_persistence_rocksdb) {
    keys_init();
    uint64_t rng = harness_seed + 400;
    struct tc t;
    ASSERT_EQ(tc_open(&t, true), 0);
    struct model m, next, n;
    memset(&m, 0, sizeof(m));
    for (int j = 0; j < 20; j++) {
        ASSERT_EQ(rand_apply(&rng, t.c, &m, &next), 0);
        m = next;
    }
    ASSERT_EQ(store_cache_meta_put(t.c, "prefix", "/mnt/", 5), 0);
    ASSERT_EQ(tc_reopen(&t), 0);
    check_all(t.c, &m);
    /* After a reload the other slot is active; it must persist too. */
    rand_state(&rng, &m, m.rev + 3, &n);
    struct store_cache_reload *r;
    ASSERT_EQ(store_cache_reload_begin(t.c, n.rev, &r), 0);
    ASSERT_EQ(feed(&rng, r, &n), 0);
    ASSERT_EQ(store_cache_reload_commit(r, NULL, NULL), 0);
    m = n;
    ASSERT_EQ(rand_apply(&rng, t.c, &m, &next), 0);
    m = next;
    ASSERT_EQ(tc_reopen(&t), 0);
    check_all(t.c, &m);
    void *b;
    size_t len;
    ASSERT_EQ(store_cache_meta_get(t.c, "prefix", &b, &len), 0);
    bool ok = len == 5 && memcmp(b, "/mnt/", 5) == 0;
    free(b);
    ASSERT(ok);
    tc_close(&t);
}

TEST(cache_refuses_store_dir) {
    struct t_store ts;
    ASSERT_EQ(t_store_open(&ts, true, 0), 0);
    ASSERT_EQ(t_put(&ts, "k", "v"), 0);
    store_close(ts.s);
    ts.s = NULL;
    struct store_cache *c = NULL;
    char err[256];
    ASSERT_EQ(store_cache_open(ts.dir, NULL, &c, err, sizeof(err)), STORE_ECORRUPT);
    ASSERT(strstr(err, "not a cache") != NULL);
    t_store_close(&ts);
}

/* ---------------------------------------------------------------- crashes */

/* States the copy may be in after a power loss: every state committed since
 * the last synced write, oldest first (revisions strictly increase). */
struct history {
    struct model s[512];
    size_t n;
};

static void hist_reset(struct history *h, const struct model *m) {
    h->s[0] = *m;
    h->n = 1;
}

static void hist_push(struct history *h, const struct model *m) {
    if (h->n == sizeof(h->s) / sizeof(h->s[0])) abort(); /* the test syncs well before */
    h->s[h->n++] = *m;
}

static void crash_run(uint64_t seed, int steps) {
    uint64_t rng = seed;
    struct tc t;
    ASSERT_EQ(tc_open(&t, false), 0);
    static struct history h;
    struct model m, next, n;
    memset(&m, 0, sizeof(m));
    hist_reset(&h, &m);
    int crashes = 0, faults = 0;
    for (int step = 0; step < steps && !harness_cur_failed; step++) {
        if (h.n > 400) {
            ASSERT_EQ(store_cache_meta_put(t.c, "sync", "x", 1), 0);
            hist_reset(&h, &m);
        }
        uint64_t k = t_below(&rng, 100);
        if (k < 55) {
            bool fail = t_below(&rng, 5) == 0;
            if (fail) store_memdb_fail_write(t.mem, 1);
            int rc = rand_apply(&rng, t.c, &m, &next);
            if (fail && next.rev > m.rev) {
                /* Only a real write can fail; an empty batch at the same
                 * revision writes nothing. */
                ASSERT_EQ(rc, STORE_EFAULT);
                faults++;
                check_all(t.c, &m);
            } else {
                store_memdb_fail_write(t.mem, 0);
                ASSERT_EQ(rc, 0);
                if (next.rev > m.rev) hist_push(&h, &next);
                m = next;
            }
        } else if (k < 70) {
            /* A reload, perhaps with its Nth write failing. */
            rand_state(&rng, &m, m.rev + 1 + (int64_t)t_below(&rng, 5), &n);
            uint64_t fail_at = t_below(&rng, 3) == 0 ? 1 + t_below(&rng, 8) : 0;
            store_memdb_fail_write(t.mem, fail_at);
            struct store_cache_reload *r = NULL;
            struct diff_rec got;
            memset(&got, 0, sizeof(got));
            int rc = store_cache_reload_begin(t.c, n.rev, &r);
            if (rc == 0) {
                rc = feed(&rng, r, &n);
                if (rc == 0)
                    rc = store_cache_reload_commit(r, diff_record_cb, &got);
                else
                    store_cache_reload_abort(r);
            }
            store_memdb_fail_write(t.mem, 0);
            if (rc == 0) {
                hist_push(&h, &n);
                m = n;
            } else {
                ASSERT_EQ(rc, STORE_EFAULT);
                ASSERT_EQ(got.n, 0); /* no callback for a failed commit */
                faults++;
            }
            check_all(t.c, &m);
        } else if (k < 80) {
            /* Power loss: keep a random prefix of the unsynced writes. */
            store_cache_close(t.c);
            t.c = NULL;
            uint64_t un = store_memdb_unsynced(t.mem);
            store_memdb_crash(t.mem, t_below(&rng, un + 1));
            ASSERT_EQ(tc_reopen(&t), 0);
            int64_t rev = store_cache_revision(t.c);
            size_t i = 0;
            while (i < h.n && h.s[i].rev != rev) i++;
            ASSERT(i < h.n);
            m = h.s[i];
            h.n = i + 1;
            check_all(t.c, &m);
            crashes++;
        } else if (k < 85) {
            ASSERT_EQ(store_cache_meta_put(t.c, "sync", "x", 1), 0); /* synced */
            hist_reset(&h, &m);
        } else {
            rand_range(&rng, t.c, &m);
        }
        if (harness_cur_failed)
            fprintf(stderr, "  seed %llu step %d\n", (unsigned long long)seed, step);
    }
    ASSERT_GT(crashes, 0);
    ASSERT_GT(faults, 0);
    tc_close(&t);
}

TEST(cache_crash_mem) {
    keys_init();
    for (uint64_t s = 0; s < 6 && !harness_cur_failed; s++) crash_run(harness_seed + 500 + s, 600);
}

/* ---------------------------------------------------------------- readers */

#define CONC_KEYS 8
#define CONC_READERS 3

struct conc {
    struct store_cache *c;
    atomic_bool stop;
    atomic_int bad;
    atomic_long reads;
};

/* Revisions whose state is "no keys": multiples of 7 (deletes), and 0. */
static bool conc_empty_rev(int64_t rev) {
    return rev % 7 == 0;
}

static bool conc_check_kv(const struct store_kv *kv, int64_t rev) {
    char want[24];
    int n = snprintf(want, sizeof(want), "%lld", (long long)rev);
    return kv->mod_revision == rev && kv->value.len == (size_t)n &&
           memcmp(kv->value.base, want, (size_t)n) == 0;
}

static void *conc_reader(void *arg) {
    struct conc *x = arg;
    int64_t last = 0;
    uint64_t rng = (uint64_t)(uintptr_t)&last;
    while (!atomic_load(&x->stop)) {
        struct store_range_result r;
        bool ok = true;
        if (t_below(&rng, 2) == 0) {
            if (store_cache_range(x->c, "", 0, NULL, 0, 0, false, &r) != 0) {
                atomic_fetch_add(&x->bad, 1);
                continue;
            }
            size_t want = conc_empty_rev(r.revision) ? 0 : CONC_KEYS;
            ok = r.n_kvs == want;
            for (size_t i = 0; i < r.n_kvs && ok; i++) ok = conc_check_kv(&r.kvs[i], r.revision);
        } else {
            char key[8];
            snprintf(key, sizeof(key), "k%d", (int)t_below(&rng, CONC_KEYS));
            if (store_cache_get(x->c, key, strlen(key), &r) != 0) {
                atomic_fetch_add(&x->bad, 1);
                continue;
            }
            ok = r.n_kvs == (conc_empty_rev(r.revision) ? 0u : 1u);
            if (ok && r.n_kvs == 1) ok = conc_check_kv(&r.kvs[0], r.revision);
        }
        if (r.revision < last) ok = false;
        last = r.revision;
        store_range_result_release(&r);
        if (!ok) atomic_fetch_add(&x->bad, 1);
        atomic_fetch_add(&x->reads, 1);
    }
    return NULL;
}

/* Every state sets all keys to its revision (or deletes them all). */
static int conc_write(struct store_cache *c, int64_t rev, bool reload) {
    char keys[CONC_KEYS][8], val[24];
    snprintf(val, sizeof(val), "%lld", (long long)rev);
    struct store_cache_change ch[CONC_KEYS];
    struct store_kv kvs[CONC_KEYS];
    for (int i = 0; i < CONC_KEYS; i++) {
        snprintf(keys[i], sizeof(keys[i]), "k%d", i);
        memset(&ch[i], 0, sizeof(ch[i]));
        ch[i].type = conc_empty_rev(rev) ? STORE_EVENT_DELETE : STORE_EVENT_PUT;
        ch[i].kv.key = t_str(keys[i]);
        ch[i].kv.value = t_str(val);
        ch[i].kv.create_revision = ch[i].kv.mod_revision = rev;
        ch[i].kv.version = 1;
        kvs[i] = ch[i].kv;
    }
    if (!reload) return store_cache_apply(c, ch, CONC_KEYS, rev);
    struct store_cache_reload *r;
    int rc = store_cache_reload_begin(c, rev, &r);
    if (rc != 0) return rc;
    for (int i = 0; i < CONC_KEYS && rc == 0 && !conc_empty_rev(rev); i += 3)
        rc = store_cache_reload_page(r, &kvs[i], i + 3 <= CONC_KEYS ? 3 : CONC_KEYS - i);
    if (rc != 0) {
        store_cache_reload_abort(r);
        return rc;
    }
    return store_cache_reload_commit(r, NULL, NULL);
}

static void conc_run(bool rocks, int64_t revs) {
    struct tc t;
    ASSERT_EQ(tc_open(&t, rocks), 0);
    struct conc x = {.c = t.c};
    atomic_init(&x.stop, false);
    atomic_init(&x.bad, 0);
    atomic_init(&x.reads, 0);
    pthread_t th[CONC_READERS];
    for (int i = 0; i < CONC_READERS; i++)
        ASSERT_EQ(pthread_create(&th[i], NULL, conc_reader, &x), 0);
    int rc = 0;
    for (int64_t rev = 1; rev <= revs && rc == 0; rev++) rc = conc_write(t.c, rev, rev % 10 == 3);
    atomic_store(&x.stop, true);
    for (int i = 0; i < CONC_READERS; i++) pthread_join(th[i], NULL);
    int bad = atomic_load(&x.bad);
    long reads = atomic_load(&x.reads);
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(bad, 0);
    ASSERT_GT(reads, 0);
    ASSERT_EQ(store_cache_revision(t.c), revs);
    tc_close(&t);
}

TEST(cache_concurrent_readers_mem) {
    conc_run(false, 3000);
}

TEST(cache_concurrent_readers_rocksdb) {
    conc_run(true, 3000);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
