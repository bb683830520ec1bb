/*
 * sim_util.c - the simulation's small tools: the PRNG every random choice
 * comes from, the event heap that orders virtual time, a hash, and
 * allocation that aborts.
 *
 * Determinism: the heap orders by (time, insertion sequence), never by
 * address, so equal times resolve the same way in every replay.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/sim/sim.h"

static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void sim_rng_seed(struct sim_rng *rng, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&x);
}

uint64_t sim_rng_next(struct sim_rng *rng) {
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t sim_rng_below(struct sim_rng *rng, uint64_t n) {
    if (n <= 1) return 0;
    /* Rejection sampling keeps the draw exactly uniform. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do {
        x = sim_rng_next(rng);
    } while (x >= limit);
    return x % n;
}

uint64_t sim_rng_range(struct sim_rng *rng, uint64_t lo, uint64_t hi) {
    if (hi <= lo) return lo;
    return lo + sim_rng_below(rng, hi - lo + 1);
}

bool sim_rng_ppm(struct sim_rng *rng, uint32_t ppm) {
    if (ppm == 0) return false;
    return sim_rng_below(rng, 1000000) < ppm;
}

uint64_t sim_hash(const void *data, size_t len, uint64_t h) {
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static void oom(size_t n) {
    fprintf(stderr, "raft_sim: out of memory (%zu bytes)\n", n);
    abort();
}

void *sim_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) oom(n);
    return p;
}

void *sim_xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) oom(n * size);
    return p;
}

void *sim_xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) oom(n);
    return q;
}

void sim_reserve(void **arr, size_t *cap, size_t n, size_t size) {
    if (n <= *cap) return;
    size_t c = *cap ? *cap : 64;
    while (c < n) c *= 2;
    *arr = sim_xrealloc(*arr, c * size);
    /* Zero the new tail: callers index these arrays sparsely. */
    memset((char *)*arr + *cap * size, 0, (c - *cap) * size);
    *cap = c;
}

static bool ev_less(const struct sim_event *a, const struct sim_event *b) {
    if (a->time_us != b->time_us) return a->time_us < b->time_us;
    return a->seq < b->seq;
}

void sim_heap_push(struct sim_heap *h, const struct sim_event *e) {
    if (h->n == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 256;
        h->ev = sim_xrealloc(h->ev, h->cap * sizeof(*h->ev));
    }
    size_t i = h->n++;
    h->ev[i] = *e;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!ev_less(&h->ev[i], &h->ev[parent])) break;
        struct sim_event tmp = h->ev[i];
        h->ev[i] = h->ev[parent];
        h->ev[parent] = tmp;
        i = parent;
    }
}

bool sim_heap_pop(struct sim_heap *h, struct sim_event *out) {
    if (h->n == 0) return false;
    *out = h->ev[0];
    h->ev[0] = h->ev[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && ev_less(&h->ev[l], &h->ev[m])) m = l;
        if (r < h->n && ev_less(&h->ev[r], &h->ev[m])) m = r;
        if (m == i) break;
        struct sim_event tmp = h->ev[i];
        h->ev[i] = h->ev[m];
        h->ev[m] = tmp;
        i = m;
    }
    return true;
}

void sim_heap_free(struct sim_heap *h) {
    for (size_t i = 0; i < h->n; i++) {
        if (h->ev[i].msg) {
            free(h->ev[i].msg->buf);
            free(h->ev[i].msg);
        }
    }
    free(h->ev);
    h->ev = NULL;
    h->n = h->cap = 0;
}

static void sort_ids(uint64_t *a, uint32_t n) {
    for (uint32_t i = 1; i < n; i++) {
        uint64_t x = a[i];
        uint32_t j = i;
        while (j > 0 && a[j - 1] > x) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = x;
    }
}

uint64_t sim_sm_hash(const struct sim_sm *sm) {
    uint64_t v[RAFT_MEMBERS_MAX], l[RAFT_MEMBERS_MAX];
    uint32_t nv = sm->conf.n_voters < RAFT_MEMBERS_MAX ? sm->conf.n_voters : RAFT_MEMBERS_MAX;
    uint32_t nl = sm->conf.n_learners < RAFT_MEMBERS_MAX ? sm->conf.n_learners : RAFT_MEMBERS_MAX;
    memcpy(v, sm->conf.voters, nv * sizeof(v[0]));
    memcpy(l, sm->conf.learners, nl * sizeof(l[0]));
    sort_ids(v, nv);
    sort_ids(l, nl);
    uint64_t h = SIM_HASH_INIT;
    h = sim_hash(&sm->applied, sizeof(sm->applied), h);
    for (int k = 0; k < SIM_KEYS; k++) {
        h = sim_hash(&sm->kv[k].value, sizeof(uint64_t), h);
        h = sim_hash(&sm->kv[k].windex, sizeof(uint64_t), h);
    }
    h = sim_hash(&nv, sizeof(nv), h);
    h = sim_hash(v, nv * sizeof(v[0]), h);
    h = sim_hash(&nl, sizeof(nl), h);
    h = sim_hash(l, nl * sizeof(l[0]), h);
    return h;
}
