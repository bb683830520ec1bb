/*
 * progress.c - the leader's view of each follower (etcd raft's
 * tracker/progress.go and tracker/inflights.go) and the queue of pending
 * ReadIndex requests (read_only.go).
 *
 * A follower's progress is in one of three states:
 *   probe      the leader does not know where the follower's log matches;
 *              it sends one APP and waits (probe_sent) for the answer or a
 *              heartbeat response before sending the next one;
 *   replicate  the logs match up to `match`; APPs are pipelined, `next`
 *              advances optimistically as they are sent, and the inflight
 *              ring bounds how many are unacknowledged;
 *   snapshot   a snapshot is on its way; nothing else is sent until the
 *              follower acknowledges it or the driver reports its fate.
 * Invariant: match < next.
 *
 * The read queue is a FIFO ordered by a leader-local sequence number; a
 * heartbeat carries the newest sequence number and a quorum of responses to
 * it confirms every request up to it (etcd's ReadOnlySafe).
 */
#include <stdlib.h>
#include <string.h>

#include "raft/raft_int.h"

bool raft__inflights_full(const struct raft__inflights *in) {
    ASSERT(in != NULL);
    return in->count == in->size;
}

void raft__inflights_add(struct raft__inflights *in, uint64_t index) {
    ASSERT(in != NULL);
    ASSERT(in->count < in->size);
    unsigned slot = in->start + in->count;
    if (slot >= in->size) slot -= in->size;
    in->buf[slot] = index;
    in->count++;
}

void raft__inflights_free_le(struct raft__inflights *in, uint64_t to) {
    ASSERT(in != NULL);
    if (in->count == 0 || to < in->buf[in->start]) return;
    unsigned idx = in->start;
    unsigned i = 0;
    while (i < in->count && to >= in->buf[idx]) {
        i++;
        idx++;
        if (idx >= in->size) idx = 0;
    }
    in->count -= i;
    in->start = in->count == 0 ? 0 : idx;
}

void raft__inflights_free_first_one(struct raft__inflights *in) {
    ASSERT(in != NULL);
    if (in->count > 0) raft__inflights_free_le(in, in->buf[in->start]);
}

void raft__inflights_reset(struct raft__inflights *in) {
    ASSERT(in != NULL);
    in->start = 0;
    in->count = 0;
}

static void pr_reset_state(struct raft__progress *pr, uint8_t state) {
    pr->probe_sent = false;
    pr->pending_snapshot = 0;
    pr->state = state;
    raft__inflights_reset(&pr->ins);
}

void raft__pr_become_probe(struct raft__progress *pr) {
    ASSERT(pr != NULL);
    if (pr->state == RAFT__PR_SNAPSHOT) {
        uint64_t pending = pr->pending_snapshot;
        pr_reset_state(pr, RAFT__PR_PROBE);
        pr->next = pr->match + 1 > pending + 1 ? pr->match + 1 : pending + 1;
    } else {
        pr_reset_state(pr, RAFT__PR_PROBE);
        pr->next = pr->match + 1;
    }
}

void raft__pr_become_replicate(struct raft__progress *pr) {
    ASSERT(pr != NULL);
    pr_reset_state(pr, RAFT__PR_REPLICATE);
    pr->next = pr->match + 1;
}

void raft__pr_become_snapshot(struct raft__progress *pr, uint64_t snap_index) {
    ASSERT(pr != NULL);
    pr_reset_state(pr, RAFT__PR_SNAPSHOT);
    pr->pending_snapshot = snap_index;
}

bool raft__pr_maybe_update(struct raft__progress *pr, uint64_t n) {
    ASSERT(pr != NULL);
    bool updated = false;
    if (pr->match < n) {
        pr->match = n;
        updated = true;
        pr->probe_sent = false;
    }
    if (pr->next < n + 1) pr->next = n + 1;
    return updated;
}

bool raft__pr_maybe_decr_to(struct raft__progress *pr, uint64_t rejected, uint64_t match_hint) {
    ASSERT(pr != NULL);
    if (pr->state == RAFT__PR_REPLICATE) {
        /* A rejection at or below match is stale (reordered or duplicated). */
        if (rejected <= pr->match) return false;
        pr->next = pr->match + 1;
        return true;
    }
    /* In probe state only the answer to the outstanding probe counts. */
    if (pr->next - 1 != rejected) return false;
    uint64_t next = rejected < match_hint + 1 ? rejected : match_hint + 1;
    if (next < pr->match + 1) next = pr->match + 1;
    pr->next = next;
    pr->probe_sent = false;
    return true;
}

bool raft__pr_is_paused(const struct raft__progress *pr) {
    ASSERT(pr != NULL);
    switch (pr->state) {
    case RAFT__PR_PROBE:
        return pr->probe_sent;
    case RAFT__PR_REPLICATE:
        return raft__inflights_full(&pr->ins);
    case RAFT__PR_SNAPSHOT:
        return true;
    default:
        ASSERT(!"bad progress state");
        return true;
    }
}

struct raft__read_req *raft__rq_push(struct raft__read_queue *rq) {
    ASSERT(rq != NULL);
    if (rq->n >= RAFT__READS_PENDING_MAX) return NULL;
    if (rq->head + rq->n == rq->cap) {
        if (rq->head > 0) {
            memmove(rq->q, rq->q + rq->head, rq->n * sizeof(*rq->q));
            rq->head = 0;
        } else {
            size_t cap = rq->cap ? rq->cap * 2 : 16;
            if (cap > RAFT__READS_PENDING_MAX) cap = RAFT__READS_PENDING_MAX;
            struct raft__read_req *q = qfs_realloc(rq->q, cap * sizeof(*q));
            if (q == NULL) return NULL;
            rq->q = q;
            rq->cap = cap;
        }
    }
    struct raft__read_req *req = &rq->q[rq->head + rq->n];
    memset(req, 0, sizeof(*req));
    rq->n++;
    return req;
}

struct raft__read_req *raft__rq_at(struct raft__read_queue *rq, size_t i) {
    ASSERT(rq != NULL);
    ASSERT(i < rq->n);
    return &rq->q[rq->head + i];
}

struct raft__read_req *raft__rq_find(struct raft__read_queue *rq, uint64_t seq) {
    ASSERT(rq != NULL);
    /* Sequence numbers increase along the queue: binary search. */
    size_t lo = 0, hi = rq->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint64_t s = rq->q[rq->head + mid].seq;
        if (s == seq) return &rq->q[rq->head + mid];
        if (s < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

void raft__rq_pop_front(struct raft__read_queue *rq, size_t k) {
    ASSERT(rq != NULL);
    ASSERT(k <= rq->n);
    rq->head += k;
    rq->n -= k;
    if (rq->n == 0) rq->head = 0;
}

void raft__rq_clear(struct raft__read_queue *rq) {
    ASSERT(rq != NULL);
    rq->head = 0;
    rq->n = 0;
}

void raft__rq_free(struct raft__read_queue *rq) {
    ASSERT(rq != NULL);
    free(rq->q);
    memset(rq, 0, sizeof(*rq));
}

bool raft__rq_ack(struct raft__read_req *req, uint64_t id) {
    ASSERT(req != NULL);
    ASSERT(id != RAFT_NONE);
    for (unsigned i = 0; i < req->n_acks; i++)
        if (req->acks[i] == id) return false;
    if (req->n_acks >= RAFT_MEMBERS_MAX) return false;
    req->acks[req->n_acks++] = id;
    return true;
}
