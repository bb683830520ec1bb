/*
 * raft_test_net.h - a small in-memory cluster for the raft/ unit tests.
 *
 * Each node is a struct raft over a raft_memstore. tnode_ready() carries out
 * the update contract of raft.h exactly as a driver must: it installs the
 * snapshot, appends the entries and saves the hard state in the memstore,
 * queues (deep copies of) the messages, applies the committed entries (conf
 * changes through raft_apply_conf_change) and records the read states, then
 * calls raft_advance(). Messages wait in one FIFO queue until a test delivers
 * them, drops them, or inspects them; links can be cut per direction, message
 * types dropped, and a filter can drop any message it likes.
 *
 * Tests that drive one node by hand create only that node: messages to the
 * other ids stay in the queue where the test looks at them (tnet_find) and the
 * test answers with hand-built messages (tmsg + tnet_step).
 *
 * While it runs, the network checks what must hold whatever the test does:
 * at most one leader per term (election safety), committed entries come in
 * index order and are already in the node's storage with the same term, and
 * (tnet_check) logs match and all nodes applied the same entry at every index
 * both applied (log matching, state machine safety). The first violation is
 * kept in net->err and makes net->rc non-zero; ASSERT_NET_OK reports it.
 *
 * Everything is static inline so that each test file (one executable each)
 * takes what it uses. Nets still alive when the program exits (a test that
 * failed half-way) are freed by a destructor so sanitizer runs stay quiet.
 */
#ifndef QUORUMFS_TESTS_RAFT_TEST_NET_H
#define QUORUMFS_TESTS_RAFT_TEST_NET_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "raft/raft.h"
#include "tests/harness.h"

/* Node ids run 1..TNET_NODES_MAX. */
#define TNET_NODES_MAX 8
/* Applied entries are recorded for indexes below this bound. */
#define TNET_APPLIED_MAX 8192
/* Read states recorded per node; more is a test design error. */
#define TNET_READS_MAX 64
/* Delivery rounds before tnet_stabilize() declares a livelock. */
#define TNET_ROUNDS_MAX 20000
/* Updates in a row from one node before tnode_ready() declares a livelock. */
#define TNET_UPDATES_MAX 10000
/* Terms tracked by the election-safety check. */
#define TNET_TERMS_MAX 4096
/* Nets alive at once (each test uses one or a few). */
#define TNET_LIVE_MAX 64
/* Bytes of snapshot image a node keeps. */
#define TNET_SNAP_MAX 256

struct tapplied {
    bool present;
    uint8_t type;
    uint64_t term;
    uint64_t len;  /* bytes of data */
    uint64_t hash; /* FNV-1a of data */
};

struct tread {
    uint64_t index;
    size_t len;
    unsigned char ctx[RAFT_READ_CTX_MAX];
};

struct tnode {
    bool exists; /* a raft object was created for this id */
    bool up;     /* false while crashed */
    struct raft *r;
    struct raft_memstore *ms;
    struct raft_config cfg;
    uint64_t applied;            /* index of the last applied entry or snapshot */
    uint64_t n_applied_entries;  /* entries applied one by one */
    struct tapplied *log;        /* [TNET_APPLIED_MAX], by index */
    struct raft_conf_state conf; /* as of applied */
    size_t n_reads;
    struct tread reads[TNET_READS_MAX];
    size_t n_snaps; /* snapshots installed */
    size_t snap_len;
    unsigned char snap[TNET_SNAP_MAX];
};

struct tnet;
typedef bool (*tnet_filter_fn)(struct tnet *net, const struct raft_msg *m);
typedef void (*tnet_observe_fn)(struct tnet *net, const struct raft_msg *m);

struct tnet {
    struct raft_config tmpl; /* config of every node; id, storage, seed set per node */
    struct tnode nodes[TNET_NODES_MAX + 1]; /* by id; [0] unused */
    struct raft_msg *q; /* FIFO of messages sent and not yet delivered: [q_head, q_len) */
    size_t q_head, q_len, q_cap;
    bool cut[TNET_NODES_MAX + 1][TNET_NODES_MAX + 1]; /* cut[from][to]: drop */
    bool drop_type[RAFT_MSG_TYPE_COUNT_];
    bool report_snapshots; /* report each delivered SNAP to its sender as done */
    bool allow_cc_errors;  /* a refused raft_apply_conf_change is counted, not a violation */
    size_t n_cc_errors;
    tnet_filter_fn filter;      /* returns true to drop a message at delivery */
    tnet_observe_fn on_send;    /* sees every message a node emits */
    tnet_observe_fn on_deliver; /* sees every message just before it is stepped */
    void *arg;                  /* for the callbacks */
    size_t n_sent[RAFT_MSG_TYPE_COUNT_];
    size_t n_delivered[RAFT_MSG_TYPE_COUNT_];
    int last_step_rc; /* raft_step's result for the last delivered message */
    uint64_t leader_of_term[TNET_TERMS_MAX];
    int rc;        /* 0, or -1 after the first violation */
    char err[512]; /* that violation */
};

static struct tnet *tnet_live[TNET_LIVE_MAX];

static inline int tnet_fail(struct tnet *net, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline int tnet_fail(struct tnet *net, const char *fmt, ...) {
    if (net->rc == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(net->err, sizeof net->err, fmt, ap);
        va_end(ap);
        net->rc = -1;
    }
    return -1;
}

#define ASSERT_NET_OK(net)                                                                         \
    do {                                                                                           \
        if ((net)->rc != 0) fprintf(stderr, "  net: %s\n", (net)->err);                            \
        ASSERT_EQ((net)->rc, 0);                                                                   \
    } while (0)

static inline void *tdup(const void *p, size_t n) {
    if (n == 0 || p == NULL) return NULL;
    void *q = malloc(n);
    if (q == NULL) abort();
    memcpy(q, p, n);
    return q;
}

static inline uint64_t tfnv(const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Deep copy of a message: entries, their data, snapshot data and context. */
static inline void tmsg_clone(struct raft_msg *dst, const struct raft_msg *src) {
    *dst = *src;
    dst->entries = NULL;
    if (src->n_entries > 0) {
        dst->entries = calloc(src->n_entries, sizeof *dst->entries);
        if (dst->entries == NULL) abort();
        for (uint32_t i = 0; i < src->n_entries; i++) {
            dst->entries[i] = src->entries[i];
            dst->entries[i].data.base = tdup(src->entries[i].data.base, src->entries[i].data.len);
        }
    }
    dst->snapshot.data.base = NULL;
    if (src->has_snapshot)
        dst->snapshot.data.base = tdup(src->snapshot.data.base, src->snapshot.data.len);
    dst->context.base = tdup(src->context.base, src->context.len);
}

static inline void tmsg_free(struct raft_msg *m) {
    for (uint32_t i = 0; i < m->n_entries; i++) free((void *)m->entries[i].data.base);
    free(m->entries);
    free((void *)m->snapshot.data.base);
    free((void *)m->context.base);
    memset(m, 0, sizeof *m);
}

/* A message with the given header and everything else zero. */
static inline struct raft_msg tmsg(uint8_t type, uint64_t from, uint64_t to, uint64_t term) {
    struct raft_msg m;
    memset(&m, 0, sizeof m);
    m.type = type;
    m.from = from;
    m.to = to;
    m.term = term;
    return m;
}

/* Shared payload of preloaded entries (borrowed by raft_memstore_append, which copies). */
static const char tnet_payload[] = "preloaded";

/* Fills e[0..n) with entries 1..n of the given terms and a small payload. */
static inline void tlog(struct raft_entry *e, const uint64_t *terms, size_t n) {
    for (size_t i = 0; i < n; i++) {
        memset(&e[i], 0, sizeof e[i]);
        e[i].index = i + 1;
        e[i].term = terms[i];
        e[i].type = RAFT_ENTRY_NORMAL;
        e[i].data.base = tnet_payload;
        e[i].data.len = sizeof tnet_payload - 1;
    }
}

/* Configuration with voters 1..n_voters and learners n_voters+1..n_voters+n_learners. */
static inline struct raft_conf_state tconf(uint32_t n_voters, uint32_t n_learners) {
    struct raft_conf_state cs;
    memset(&cs, 0, sizeof cs);
    for (uint32_t i = 0; i < n_voters; i++) cs.voters[cs.n_voters++] = i + 1;
    for (uint32_t i = 0; i < n_learners; i++) cs.learners[cs.n_learners++] = n_voters + i + 1;
    return cs;
}

static inline bool tconf_has_voter(const struct raft_conf_state *cs, uint64_t id) {
    for (uint32_t i = 0; i < cs->n_voters; i++)
        if (cs->voters[i] == id) return true;
    return false;
}

static inline bool tconf_has_learner(const struct raft_conf_state *cs, uint64_t id) {
    for (uint32_t i = 0; i < cs->n_learners; i++)
        if (cs->learners[i] == id) return true;
    return false;
}

/* Defaults of the tests: small timeouts, no limits that get in the way. */
static inline void tnet_config_defaults(struct raft_config *c) {
    memset(c, 0, sizeof *c);
    c->election_tick = 10;
    c->heartbeat_tick = 1;
    c->max_size_per_msg = 1u << 20;
    c->max_inflight_msgs = 256;
    c->seed = harness_seed;
}

static inline struct tnet *tnet_new(const struct raft_config *tmpl) {
    struct tnet *net = calloc(1, sizeof *net);
    if (net == NULL) abort();
    if (tmpl)
        net->tmpl = *tmpl;
    else
        tnet_config_defaults(&net->tmpl);
    net->report_snapshots = true;
    for (size_t i = 0; i < TNET_LIVE_MAX; i++) {
        if (tnet_live[i] == NULL) {
            tnet_live[i] = net;
            return net;
        }
    }
    abort(); /* more nets alive than any test needs: they are not freed */
}

static inline void tnet_clear(struct tnet *net) {
    for (size_t i = net->q_head; i < net->q_len; i++) tmsg_free(&net->q[i]);
    net->q_head = net->q_len = 0;
}

static inline void tnode_destroy(struct tnode *n) {
    if (n->r) raft_free(n->r);
    n->r = NULL;
    if (n->ms) raft_memstore_free(n->ms);
    n->ms = NULL;
    free(n->log);
    n->log = NULL;
    n->exists = n->up = false;
}

static inline void tnet_free(struct tnet *net) {
    if (net == NULL) return;
    for (size_t i = 0; i < TNET_LIVE_MAX; i++)
        if (tnet_live[i] == net) tnet_live[i] = NULL;
    tnet_clear(net);
    free(net->q);
    for (int id = 1; id <= TNET_NODES_MAX; id++) tnode_destroy(&net->nodes[id]);
    free(net);
}

__attribute__((destructor)) static void tnet_free_leftovers(void) {
    for (size_t i = 0; i < TNET_LIVE_MAX; i++) tnet_free(tnet_live[i]);
}

static inline struct raft *tr(struct tnet *net, uint64_t id) {
    return net->nodes[id].r;
}

static inline struct raft_status tst(struct tnet *net, uint64_t id) {
    struct raft_status st;
    memset(&st, 0, sizeof st);
    if (net->nodes[id].r) raft_status(net->nodes[id].r, &st);
    return st;
}

/* Whether node id's current configuration (raft_status) lists `who` as voter / learner. */
static inline bool tis_voter(struct tnet *net, uint64_t id, uint64_t who) {
    struct raft_status st = tst(net, id);
    return tconf_has_voter(&st.conf, who);
}

static inline bool tis_learner(struct tnet *net, uint64_t id, uint64_t who) {
    struct raft_status st = tst(net, id);
    return tconf_has_learner(&st.conf, who);
}

/*
 * Creates node id over a fresh memstore holding cs, hs (may be NULL) and the
 * entries e[0..n). Returns raft_new's result.
 */
static inline int tnet_add(struct tnet *net, uint64_t id, const struct raft_conf_state *cs,
                           const struct raft_hard_state *hs, const struct raft_entry *e, size_t n) {
    if (id == 0 || id > TNET_NODES_MAX)
        return tnet_fail(net, "node id %llu out of range", (unsigned long long)id);
    struct tnode *nd = &net->nodes[id];
    tnode_destroy(nd);
    nd->ms = raft_memstore_new();
    if (nd->ms == NULL) abort();
    nd->log = calloc(TNET_APPLIED_MAX, sizeof *nd->log);
    if (nd->log == NULL) abort();
    int rc = raft_memstore_set_conf_state(nd->ms, cs);
    if (rc == 0 && hs) rc = raft_memstore_set_hard_state(nd->ms, hs);
    if (rc == 0 && n > 0) rc = raft_memstore_append(nd->ms, e, n);
    if (rc != 0)
        return tnet_fail(net, "node %llu: preloading memstore: %s", (unsigned long long)id,
                         raft_strerror(rc));
    nd->cfg = net->tmpl;
    nd->cfg.id = id;
    nd->cfg.storage = raft_memstore_storage(nd->ms);
    nd->cfg.seed = net->tmpl.seed * 6364136223846793005ull + id * 1442695040888963407ull;
    nd->cfg.applied = 0;
    nd->conf = *cs;
    nd->applied = 0;
    rc = raft_new(&nd->cfg, &nd->r);
    if (rc != 0) {
        nd->r = NULL;
        return tnet_fail(net, "node %llu: raft_new: %s", (unsigned long long)id, raft_strerror(rc));
    }
    nd->exists = nd->up = true;
    return 0;
}

/* A cluster of n_voters voters and n_learners learners, all created, empty logs. */
static inline struct tnet *tnet_cluster(uint32_t n_voters, uint32_t n_learners,
                                        const struct raft_config *tmpl) {
    struct tnet *net = tnet_new(tmpl);
    struct raft_conf_state cs = tconf(n_voters, n_learners);
    for (uint32_t id = 1; id <= n_voters + n_learners; id++) tnet_add(net, id, &cs, NULL, NULL, 0);
    return net;
}

static inline void tnet_enqueue(struct tnet *net, const struct raft_msg *m) {
    if (net->q_len == net->q_cap) {
        size_t cap = net->q_cap ? 2 * net->q_cap : 64;
        struct raft_msg *q = realloc(net->q, cap * sizeof *q);
        if (q == NULL) abort();
        net->q = q;
        net->q_cap = cap;
    }
    tmsg_clone(&net->q[net->q_len++], m);
}

static inline uint64_t tstorage_term(struct tnode *nd, uint64_t i, bool *ok) {
    struct raft_storage *s = raft_memstore_storage(nd->ms);
    uint64_t t = 0;
    int rc = s->term(s->data, i, &t);
    if (ok) *ok = rc == 0;
    return rc == 0 ? t : 0;
}

static inline uint64_t tstorage_last(struct tnode *nd) {
    struct raft_storage *s = raft_memstore_storage(nd->ms);
    uint64_t i = 0;
    s->last_index(s->data, &i);
    return i;
}

static inline uint64_t tstorage_first(struct tnode *nd) {
    struct raft_storage *s = raft_memstore_storage(nd->ms);
    uint64_t i = 0;
    s->first_index(s->data, &i);
    return i;
}

static inline uint64_t tlast(struct tnet *net, uint64_t id) {
    return tstorage_last(&net->nodes[id]);
}

/* Term of entry i in node id's storage; 0 if not available. */
static inline uint64_t tterm(struct tnet *net, uint64_t id, uint64_t i) {
    return tstorage_term(&net->nodes[id], i, NULL);
}

static inline struct raft_hard_state tsaved_hs(struct tnet *net, uint64_t id) {
    struct raft_storage *s = raft_memstore_storage(net->nodes[id].ms);
    struct raft_hard_state hs;
    struct raft_conf_state cs;
    memset(&hs, 0, sizeof hs);
    s->initial_state(s->data, &hs, &cs);
    return hs;
}

static inline void tnode_apply_entry(struct tnet *net, uint64_t id, const struct raft_entry *e) {
    struct tnode *nd = &net->nodes[id];
    if (e->index < TNET_APPLIED_MAX) {
        struct tapplied *a = &nd->log[e->index];
        a->present = true;
        a->type = e->type;
        a->term = e->term;
        a->len = e->data.len;
        a->hash = tfnv(e->data.base, e->data.len);
    }
    nd->n_applied_entries++;
    if (e->type == RAFT_ENTRY_CONF_CHANGE) {
        struct raft_conf_change cc;
        int rc = raft_conf_change_decode(e->data.base, e->data.len, &cc);
        if (rc != 0) {
            tnet_fail(net, "node %llu: committed conf change %llu does not decode: %s",
                      (unsigned long long)id, (unsigned long long)e->index, raft_strerror(rc));
            return;
        }
        struct raft_conf_state cs;
        memset(&cs, 0, sizeof cs);
        rc = raft_apply_conf_change(nd->r, &cc, &cs);
        if (rc != 0 && net->allow_cc_errors) {
            net->n_cc_errors++;
            return;
        }
        if (rc != 0) {
            tnet_fail(net, "node %llu: raft_apply_conf_change(%llu): %s", (unsigned long long)id,
                      (unsigned long long)e->index, raft_strerror(rc));
            return;
        }
        nd->conf = cs;
        raft_memstore_set_conf_state(nd->ms, &cs);
    }
}

/*
 * Carries out an update the test already fetched with raft_get_update():
 * persist, queue the messages, apply, record reads, raft_advance().
 */
static inline int tnode_finish_update(struct tnet *net, uint64_t id, struct raft_update *u) {
    struct tnode *nd = &net->nodes[id];
    int rc;
    struct raft_status st;
    raft_status(nd->r, &st);
    if (u->role == RAFT_LEADER && st.term < TNET_TERMS_MAX) {
        uint64_t *l = &net->leader_of_term[st.term];
        if (*l != 0 && *l != id)
            tnet_fail(net, "election safety: nodes %llu and %llu both lead term %llu",
                      (unsigned long long)*l, (unsigned long long)id, (unsigned long long)st.term);
        *l = id;
    }
    if (u->has_snapshot) {
        if (u->snapshot.meta.index <= nd->applied)
            tnet_fail(net, "node %llu: update installs snapshot %llu at or below applied %llu",
                      (unsigned long long)id, (unsigned long long)u->snapshot.meta.index,
                      (unsigned long long)nd->applied);
        rc = raft_memstore_apply_snapshot(nd->ms, &u->snapshot);
        if (rc != 0) return tnet_fail(net, "apply_snapshot: %s", raft_strerror(rc));
        nd->applied = u->snapshot.meta.index;
        nd->conf = u->snapshot.meta.conf;
        nd->n_snaps++;
        nd->snap_len = u->snapshot.data.len < TNET_SNAP_MAX ? u->snapshot.data.len : TNET_SNAP_MAX;
        if (nd->snap_len) memcpy(nd->snap, u->snapshot.data.base, nd->snap_len);
    }
    if (u->n_entries > 0) {
        for (size_t i = 1; i < u->n_entries; i++)
            if (u->entries[i].index != u->entries[i - 1].index + 1)
                tnet_fail(net, "node %llu: update entries not contiguous", (unsigned long long)id);
        rc = raft_memstore_append(nd->ms, u->entries, u->n_entries);
        if (rc != 0) return tnet_fail(net, "memstore_append: %s", raft_strerror(rc));
    }
    if (u->has_hard_state) {
        rc = raft_memstore_set_hard_state(nd->ms, &u->hard_state);
        if (rc != 0) return tnet_fail(net, "set_hard_state: %s", raft_strerror(rc));
    }
    for (size_t i = 0; i < u->n_msgs; i++) {
        const struct raft_msg *m = &u->msgs[i];
        if (m->from != id)
            tnet_fail(net, "node %llu sends a message from %llu", (unsigned long long)id,
                      (unsigned long long)m->from);
        if (m->type >= RAFT_MSG_TYPE_COUNT_ || m->to == 0 || m->to > TNET_NODES_MAX) {
            tnet_fail(net, "node %llu sends a bad message (type %u to %llu)",
                      (unsigned long long)id, m->type, (unsigned long long)m->to);
            continue;
        }
        net->n_sent[m->type]++;
        if (net->on_send) net->on_send(net, m);
        tnet_enqueue(net, m);
    }
    for (size_t i = 0; i < u->n_committed; i++) {
        const struct raft_entry *e = &u->committed[i];
        if (e->index != nd->applied + 1)
            tnet_fail(net, "node %llu: committed entry %llu after applied %llu",
                      (unsigned long long)id, (unsigned long long)e->index,
                      (unsigned long long)nd->applied);
        bool ok;
        uint64_t t = tstorage_term(nd, e->index, &ok);
        if (ok && t != e->term)
            tnet_fail(net, "node %llu: committed entry %llu has term %llu, storage says %llu",
                      (unsigned long long)id, (unsigned long long)e->index,
                      (unsigned long long)e->term, (unsigned long long)t);
        if (!ok && e->index > tstorage_last(nd))
            tnet_fail(net, "node %llu: entry %llu committed before it was persisted",
                      (unsigned long long)id, (unsigned long long)e->index);
        tnode_apply_entry(net, id, e);
        nd->applied = e->index;
    }
    for (size_t i = 0; i < u->n_read_states; i++) {
        if (nd->n_reads == TNET_READS_MAX) {
            tnet_fail(net, "node %llu: too many read states", (unsigned long long)id);
            break;
        }
        struct tread *rd = &nd->reads[nd->n_reads++];
        rd->index = u->read_states[i].index;
        rd->len = u->read_states[i].context.len;
        if (rd->len > RAFT_READ_CTX_MAX) {
            tnet_fail(net, "read state context of %zu bytes", rd->len);
            rd->len = RAFT_READ_CTX_MAX;
        }
        if (rd->len) memcpy(rd->ctx, u->read_states[i].context.base, rd->len);
    }
    raft_advance(nd->r, u);
    return net->rc;
}

/* Handles node id's updates until it has none. */
static inline int tnode_ready(struct tnet *net, uint64_t id) {
    struct tnode *nd = &net->nodes[id];
    for (int k = 0; nd->up && raft_has_update(nd->r); k++) {
        if (k == TNET_UPDATES_MAX)
            return tnet_fail(net, "node %llu: updates never stop", (unsigned long long)id);
        struct raft_update u;
        int rc = raft_get_update(nd->r, &u);
        if (rc != 0) return tnet_fail(net, "raft_get_update: %s", raft_strerror(rc));
        tnode_finish_update(net, id, &u);
    }
    return net->rc;
}

/*
 * A net holding only node id, over a configuration of n_voters voters and a
 * log of entries 1..n with the given terms; its first updates are handled.
 */
static inline struct tnet *tnet_solo(const struct raft_config *tmpl, uint64_t id, uint32_t n_voters,
                                     const struct raft_hard_state *hs, const uint64_t *terms,
                                     size_t n) {
    struct tnet *net = tnet_new(tmpl);
    struct raft_conf_state cs = tconf(n_voters, 0);
    struct raft_entry *e = n ? calloc(n, sizeof *e) : NULL;
    if (n && e == NULL) abort();
    tlog(e, terms, n);
    tnet_add(net, id, &cs, hs, e, n);
    free(e);
    if (net->nodes[id].up) tnode_ready(net, id);
    return net;
}

static inline void tnet_ready_all(struct tnet *net) {
    for (uint64_t id = 1; id <= TNET_NODES_MAX; id++)
        if (net->nodes[id].up) tnode_ready(net, id);
}

/* Steps m into its recipient (m->to) and handles the resulting updates. */
static inline int tnet_step(struct tnet *net, const struct raft_msg *m) {
    struct tnode *nd = &net->nodes[m->to];
    if (!nd->up)
        return tnet_fail(net, "stepping into node %llu, which is not up",
                         (unsigned long long)m->to);
    int rc = raft_step(nd->r, m);
    tnode_ready(net, m->to);
    return rc;
}

/* Delivers the oldest queued message (or drops it per the cuts and filter). */
static inline void tnet_deliver_next(struct tnet *net) {
    struct raft_msg m = net->q[net->q_head++];
    if (net->q_head == net->q_len) net->q_head = net->q_len = 0;
    struct tnode *to = &net->nodes[m.to];
    bool drop = !to->up || net->cut[m.from][m.to] || net->drop_type[m.type] ||
                (net->filter && net->filter(net, &m));
    if (!drop) {
        net->n_delivered[m.type]++;
        if (net->on_deliver) net->on_deliver(net, &m);
        net->last_step_rc = raft_step(to->r, &m);
    }
    if (m.type == RAFT_MSG_SNAP && net->report_snapshots && net->nodes[m.from].up)
        raft_report_snapshot(net->nodes[m.from].r, m.to, !drop);
    tmsg_free(&m);
}

/*
 * Handles updates and delivers messages until nothing is left to do.
 * Returns the number of delivery rounds, or -1 (net->rc) on a violation or
 * a livelock.
 */
static inline int tnet_stabilize(struct tnet *net) {
    for (int round = 0; round < TNET_ROUNDS_MAX; round++) {
        tnet_ready_all(net);
        if (net->rc) return net->rc;
        if (net->q_head == net->q_len) return round;
        size_t end = net->q_len;
        while (net->q_head < end && net->q_len > 0) tnet_deliver_next(net);
    }
    return tnet_fail(net, "network never quiesces");
}

/* Ticks node id k times without handling its updates. */
static inline void tnet_tick(struct tnet *net, uint64_t id, unsigned k) {
    for (unsigned i = 0; i < k; i++) raft_tick(net->nodes[id].r);
}

/* k rounds of: tick every up node once, then stabilize. */
static inline int tnet_tick_all(struct tnet *net, unsigned k) {
    for (unsigned i = 0; i < k; i++) {
        for (uint64_t id = 1; id <= TNET_NODES_MAX; id++)
            if (net->nodes[id].up) raft_tick(net->nodes[id].r);
        if (tnet_stabilize(net) < 0) return -1;
    }
    return 0;
}

/* The up node that leads the highest term, or 0. */
static inline uint64_t tnet_leader(struct tnet *net) {
    uint64_t best = 0, best_term = 0;
    for (uint64_t id = 1; id <= TNET_NODES_MAX; id++) {
        if (!net->nodes[id].up) continue;
        struct raft_status st = tst(net, id);
        if (st.role == RAFT_LEADER && (best == 0 || st.term > best_term)) {
            best = id;
            best_term = st.term;
        }
    }
    return best;
}

/* raft_campaign on id, then stabilize. Returns true if id leads afterwards. */
static inline bool tnet_elect(struct tnet *net, uint64_t id) {
    raft_campaign(net->nodes[id].r);
    tnet_stabilize(net);
    return tst(net, id).role == RAFT_LEADER;
}

/* Isolates id from every other node (both directions). */
static inline void tnet_isolate(struct tnet *net, uint64_t id) {
    for (int j = 0; j <= TNET_NODES_MAX; j++) {
        net->cut[id][j] = true;
        net->cut[j][id] = true;
    }
}

static inline void tnet_heal(struct tnet *net) {
    memset(net->cut, 0, sizeof net->cut);
}

static inline void tnet_crash(struct tnet *net, uint64_t id) {
    struct tnode *nd = &net->nodes[id];
    if (nd->r) raft_free(nd->r);
    nd->r = NULL;
    nd->up = false;
}

/* Restarts a crashed node from its memstore; the state machine survived up to applied. */
static inline int tnet_restart(struct tnet *net, uint64_t id) {
    struct tnode *nd = &net->nodes[id];
    nd->cfg.applied = nd->applied;
    int rc = raft_new(&nd->cfg, &nd->r);
    if (rc != 0) {
        nd->r = NULL;
        return tnet_fail(net, "restart %llu: %s", (unsigned long long)id, raft_strerror(rc));
    }
    nd->up = true;
    return 0;
}

static inline bool tmsg_match(const struct raft_msg *m, int type, uint64_t from, uint64_t to) {
    return (type < 0 || m->type == type) && (from == 0 || m->from == from) &&
           (to == 0 || m->to == to);
}

/* First queued message of that type (-1: any) from/to (0: any), or NULL. */
static inline const struct raft_msg *tnet_find(struct tnet *net, int type, uint64_t from,
                                               uint64_t to) {
    for (size_t i = net->q_head; i < net->q_len; i++)
        if (tmsg_match(&net->q[i], type, from, to)) return &net->q[i];
    return NULL;
}

/* Last queued message of that type from/to, or NULL. */
static inline const struct raft_msg *tnet_find_last(struct tnet *net, int type, uint64_t from,
                                                    uint64_t to) {
    for (size_t i = net->q_len; i > net->q_head; i--)
        if (tmsg_match(&net->q[i - 1], type, from, to)) return &net->q[i - 1];
    return NULL;
}

static inline size_t tnet_count(struct tnet *net, int type, uint64_t from, uint64_t to) {
    size_t n = 0;
    for (size_t i = net->q_head; i < net->q_len; i++)
        if (tmsg_match(&net->q[i], type, from, to)) n++;
    return n;
}

/*
 * Makes id (created alone; the other voters absent) win an election by
 * answering its (pre-)vote requests with grants from every other voter.
 * Afterwards the queue holds what the new leader sent.
 */
static inline bool tnet_win(struct tnet *net, uint64_t id) {
    struct raft *r = net->nodes[id].r;
    if (raft_campaign(r) != 0) return false;
    for (int round = 0; round < 4; round++) {
        tnode_ready(net, id);
        struct raft_status st = tst(net, id);
        if (st.role == RAFT_LEADER) return true;
        tnet_clear(net);
        bool pre = st.role == RAFT_PRE_CANDIDATE;
        for (uint32_t i = 0; i < st.conf.n_voters; i++) {
            uint64_t v = st.conf.voters[i];
            if (v == id) continue;
            struct raft_msg m = tmsg(pre ? RAFT_MSG_PREVOTE_RESP : RAFT_MSG_VOTE_RESP, v, id,
                                     pre ? st.term + 1 : st.term);
            raft_step(r, &m);
        }
    }
    tnode_ready(net, id);
    return tst(net, id).role == RAFT_LEADER;
}

/* An acknowledgement of index from follower `from` to leader `to`. */
static inline struct raft_msg tack(uint64_t from, uint64_t to, uint64_t term, uint64_t index) {
    struct raft_msg m = tmsg(RAFT_MSG_APP_RESP, from, to, term);
    m.index = index;
    return m;
}

/* Proposes a NUL-terminated string on id. */
static inline int tpropose(struct tnet *net, uint64_t id, const char *s) {
    return raft_propose(net->nodes[id].r, s, strlen(s));
}

/* True if node id applied a normal entry with data s. */
static inline bool tapplied_has(struct tnet *net, uint64_t id, const char *s) {
    struct tnode *nd = &net->nodes[id];
    uint64_t h = tfnv(s, strlen(s));
    for (uint64_t i = 1; i < TNET_APPLIED_MAX; i++) {
        const struct tapplied *a = &nd->log[i];
        if (a->present && a->type == RAFT_ENTRY_NORMAL && a->len == strlen(s) && a->hash == h)
            return true;
    }
    return false;
}

/* True if a and b hold the same log from the later first index through the same last. */
static inline bool tlogs_equal(struct tnet *net, uint64_t a, uint64_t b) {
    struct tnode *na = &net->nodes[a], *nb = &net->nodes[b];
    uint64_t la = tstorage_last(na), lb = tstorage_last(nb);
    if (la != lb) return false;
    uint64_t fa = tstorage_first(na), fb = tstorage_first(nb);
    uint64_t lo = fa > fb ? fa : fb;
    for (uint64_t i = lo; i <= la; i++) {
        bool oka, okb;
        uint64_t ta = tstorage_term(na, i, &oka), tb = tstorage_term(nb, i, &okb);
        if (!oka || !okb || ta != tb) return false;
    }
    return true;
}

/*
 * Log matching (two logs with an entry of the same index and term agree on
 * all entries before it, within what both still hold) and state machine
 * safety (no two nodes applied different entries at one index), over every
 * node created, crashed or not.
 */
static inline int tnet_check(struct tnet *net) {
    for (uint64_t a = 1; a <= TNET_NODES_MAX; a++) {
        for (uint64_t b = a + 1; b <= TNET_NODES_MAX; b++) {
            struct tnode *na = &net->nodes[a], *nb = &net->nodes[b];
            if (!na->exists || !nb->exists) continue;
            for (uint64_t i = 1; i < TNET_APPLIED_MAX; i++) {
                const struct tapplied *x = &na->log[i], *y = &nb->log[i];
                if (!x->present || !y->present) continue;
                if (x->term != y->term || x->hash != y->hash || x->len != y->len ||
                    x->type != y->type)
                    return tnet_fail(net,
                                     "state machine safety: nodes %llu and %llu applied "
                                     "different entries at %llu (terms %llu, %llu)",
                                     (unsigned long long)a, (unsigned long long)b,
                                     (unsigned long long)i, (unsigned long long)x->term,
                                     (unsigned long long)y->term);
            }
            uint64_t la = tstorage_last(na), lb = tstorage_last(nb);
            uint64_t hi = la < lb ? la : lb;
            uint64_t fa = tstorage_first(na), fb = tstorage_first(nb);
            uint64_t lo = fa > fb ? fa : fb;
            bool matched = false;
            for (uint64_t i = hi; i >= lo && i > 0; i--) {
                uint64_t ta = tstorage_term(na, i, NULL), tb = tstorage_term(nb, i, NULL);
                if (matched && ta != tb)
                    return tnet_fail(net,
                                     "log matching: nodes %llu and %llu agree above %llu "
                                     "but differ there",
                                     (unsigned long long)a, (unsigned long long)b,
                                     (unsigned long long)i);
                if (ta == tb) matched = true;
            }
        }
    }
    return net->rc;
}

#endif /* QUORUMFS_TESTS_RAFT_TEST_NET_H */
