/*
 * bench_raft_throughput.c - proposals per second through raft/ alone.
 *
 * No I/O and no clock inside the measured loop but the one that times it:
 * each node is a struct raft over a raft_memstore, the "network" is a FIFO
 * of raft_encode()d messages delivered at once and in order, and the driver
 * follows raft.h's update contract (persist to the memstore, send, apply,
 * advance). The leader proposes 128-byte payloads in batches and the batch
 * is done when the leader has applied all of it (committed by a quorum).
 * The figures measure the library's own cost per proposal: log handling,
 * replication bookkeeping, the wire codec, memstore copies.
 *
 *   bench_raft_throughput [--proposals N] [--batch B]
 *
 * Prints one line per cluster size (1 and 3 nodes) and batch size. This is
 * not a test; it prints figures and exits 0 unless raft misbehaves.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "raft/raft.h"

#define NODES_MAX 3
#define PAYLOAD_BYTES 128
#define DEFAULT_PROPOSALS 200000u
/* Entries kept behind a snapshot when the log is compacted (bounds memory). */
#define COMPACT_EVERY 8192u
/* Bound on pumping rounds for one batch before declaring raft stuck. */
#define PUMP_ROUNDS_MAX 1000000u

struct qmsg {
    size_t len;
    unsigned char *buf;
};

struct bnode {
    uint64_t id;
    struct raft *r;
    struct raft_memstore *ms;
    uint64_t applied;
    uint64_t snap_index;
};

struct bcluster {
    int n;
    struct bnode nodes[NODES_MAX];
    struct qmsg *q; /* FIFO ring of messages in flight */
    size_t q_head, q_len, q_cap;
};

static void die(const char *what, int rc) {
    fprintf(stderr, "bench_raft_throughput: %s: %s\n", what, raft_strerror(rc));
    exit(1);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "bench_raft_throughput: out of memory\n");
        exit(1);
    }
    return p;
}

static void q_push(struct bcluster *c, const struct raft_msg *m) {
    if (c->q_len == c->q_cap) {
        size_t cap = c->q_cap ? c->q_cap * 2 : 1024;
        struct qmsg *q = xmalloc(cap * sizeof(*q));
        for (size_t i = 0; i < c->q_len; i++) q[i] = c->q[(c->q_head + i) % c->q_cap];
        free(c->q);
        c->q = q;
        c->q_cap = cap;
        c->q_head = 0;
    }
    size_t cap = raft_encoded_size(m);
    struct qmsg *slot = &c->q[(c->q_head + c->q_len) % c->q_cap];
    slot->buf = xmalloc(cap);
    int rc = raft_encode(m, slot->buf, cap, &slot->len);
    if (rc != 0) die("raft_encode", rc);
    c->q_len++;
}

static void process(struct bcluster *c, struct bnode *n) {
    while (raft_has_update(n->r)) {
        struct raft_update u;
        int rc = raft_get_update(n->r, &u);
        if (rc != 0) die("raft_get_update", rc);
        if (u.has_snapshot) {
            rc = raft_memstore_apply_snapshot(n->ms, &u.snapshot);
            if (rc != 0) die("apply_snapshot", rc);
            n->applied = n->snap_index = u.snapshot.meta.index;
        }
        if (u.n_entries) {
            rc = raft_memstore_append(n->ms, u.entries, u.n_entries);
            if (rc != 0) die("append", rc);
        }
        if (u.has_hard_state) {
            rc = raft_memstore_set_hard_state(n->ms, &u.hard_state);
            if (rc != 0) die("set_hard_state", rc);
        }
        for (size_t i = 0; i < u.n_msgs; i++) q_push(c, &u.msgs[i]);
        for (size_t i = 0; i < u.n_committed; i++) n->applied = u.committed[i].index;
        raft_advance(n->r, &u);
        if (n->applied >= n->snap_index + 2 * COMPACT_EVERY) {
            struct raft_status st;
            raft_status(n->r, &st);
            rc = raft_memstore_create_snapshot(n->ms, n->applied, &st.conf, "", 0);
            if (rc == 0) rc = raft_memstore_compact(n->ms, n->applied - COMPACT_EVERY);
            if (rc != 0) die("snapshot/compact", rc);
            n->snap_index = n->applied;
        }
    }
}

/* Delivers everything in flight and drains every update. */
static void pump(struct bcluster *c) {
    for (unsigned round = 0; round < PUMP_ROUNDS_MAX; round++) {
        for (int i = 0; i < c->n; i++) process(c, &c->nodes[i]);
        if (c->q_len == 0) return;
        struct qmsg m = c->q[c->q_head];
        c->q_head = (c->q_head + 1) % c->q_cap;
        c->q_len--;
        struct raft_msg rm;
        int rc = raft_decode(m.buf, m.len, &rm);
        if (rc != 0) die("raft_decode", rc);
        if (rm.to >= 1 && rm.to <= (uint64_t)c->n) {
            rc = raft_step(c->nodes[rm.to - 1].r, &rm);
            if (rc != 0) die("raft_step", rc);
        }
        raft_msg_release(&rm);
        free(m.buf);
    }
    fprintf(stderr, "bench_raft_throughput: cluster does not settle\n");
    exit(1);
}

static void cluster_init(struct bcluster *c, int n) {
    memset(c, 0, sizeof(*c));
    c->n = n;
    struct raft_conf_state cs;
    memset(&cs, 0, sizeof(cs));
    for (int i = 0; i < n; i++) cs.voters[cs.n_voters++] = (uint64_t)i + 1;
    for (int i = 0; i < n; i++) {
        struct bnode *b = &c->nodes[i];
        b->id = (uint64_t)i + 1;
        b->ms = raft_memstore_new();
        if (!b->ms) die("raft_memstore_new", RAFT_ENOMEM);
        int rc = raft_memstore_set_conf_state(b->ms, &cs);
        if (rc != 0) die("set_conf_state", rc);
        struct raft_config cfg = {
            .id = b->id,
            .election_tick = 10,
            .heartbeat_tick = 1,
            .max_size_per_msg = 1u << 20,
            .max_inflight_msgs = 256,
            .seed = b->id,
            .storage = raft_memstore_storage(b->ms),
        };
        rc = raft_new(&cfg, &b->r);
        if (rc != 0) die("raft_new", rc);
    }
    int rc = raft_campaign(c->nodes[0].r);
    if (rc != 0) die("raft_campaign", rc);
    pump(c);
    struct raft_status st;
    raft_status(c->nodes[0].r, &st);
    if (st.role != RAFT_LEADER) {
        fprintf(stderr, "bench_raft_throughput: node 1 did not become leader\n");
        exit(1);
    }
}

static void cluster_free(struct bcluster *c) {
    for (int i = 0; i < c->n; i++) {
        raft_free(c->nodes[i].r);
        raft_memstore_free(c->nodes[i].ms);
    }
    for (size_t i = 0; i < c->q_len; i++) free(c->q[(c->q_head + i) % c->q_cap].buf);
    free(c->q);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void bench(int n, unsigned proposals, unsigned batch) {
    struct bcluster c;
    cluster_init(&c, n);
    struct bnode *leader = &c.nodes[0];
    unsigned char payload[PAYLOAD_BYTES];
    memset(payload, 'x', sizeof(payload));
    uint64_t target = leader->applied;
    double t0 = now_s();
    for (unsigned done = 0; done < proposals; done += batch) {
        unsigned b = proposals - done < batch ? proposals - done : batch;
        for (unsigned i = 0; i < b; i++) {
            memcpy(payload, &done, sizeof(done));
            int rc = raft_propose(leader->r, payload, sizeof(payload));
            if (rc != 0) die("raft_propose", rc);
        }
        target += b;
        pump(&c);
        if (leader->applied < target) {
            fprintf(stderr,
                    "bench_raft_throughput: batch not committed (%" PRIu64 " < %" PRIu64 ")\n",
                    leader->applied, target);
            exit(1);
        }
    }
    double secs = now_s() - t0;
    printf("raft %d node%s, batch %4u, %u x %u-byte proposals: %10.0f proposals/s, %7.0f "
           "ns/proposal\n",
           n, n == 1 ? " " : "s", batch, proposals, PAYLOAD_BYTES, (double)proposals / secs,
           secs * 1e9 / (double)proposals);
    fflush(stdout);
    cluster_free(&c);
}

int main(int argc, char **argv) {
    unsigned proposals = DEFAULT_PROPOSALS, batch = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--proposals")) {
            proposals = (unsigned)strtoul(argv[i + 1], NULL, 10);
        } else if (!strcmp(argv[i], "--batch")) {
            batch = (unsigned)strtoul(argv[i + 1], NULL, 10);
        } else {
            fprintf(stderr, "usage: bench_raft_throughput [--proposals N] [--batch B]\n");
            return 2;
        }
    }
    if (proposals == 0) proposals = 1;
    static const unsigned batches[] = {1, 16, 128, 1024};
    for (int n = 1; n <= 3; n += 2) {
        if (batch) {
            bench(n, proposals, batch);
            continue;
        }
        for (size_t i = 0; i < sizeof(batches) / sizeof(batches[0]); i++) {
            /* Batch 1 costs a round trip per proposal: fewer of them. */
            unsigned p = batches[i] == 1 ? proposals / 10 + 1 : proposals;
            bench(n, p, batches[i]);
        }
    }
    return 0;
}
