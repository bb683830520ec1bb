/*
 * etcd_lease.c - the etcd Lease service: Grant, Revoke, KeepAlive,
 * TimeToLive, Leases, and lease expiry.
 *
 * Design (it differs from etcd on purpose):
 *  - A lease's existence, granted TTL and attached keys live in the store
 *    and change only through Raft (LEASE_GRANT, LEASE_REVOKE; revoking
 *    deletes the attached keys in one revision).
 *  - Deadlines live in memory on every member (struct etcd_lease_table):
 *    now + TTL when a grant is applied, now + remaining TTL when a member
 *    becomes leader (all leases are reloaded from the store, which extends
 *    them across a change of leader, as etcd's lessor Promote() does).
 *  - KeepAlive works on every member alike: the member proposes a
 *    LEASE_CHECKPOINT with remaining_ttl = the granted TTL through Raft;
 *    every member, on applying it (apply hook), moves the lease's deadline
 *    to now + TTL; the member that took the keepalive answers with the TTL
 *    once it applied the checkpoint. etcd instead forwards a keepalive to
 *    the leader over HTTP and renews only the leader's in-memory lessor.
 *    Going through Raft costs one replicated entry per renewal but needs no
 *    leader-forwarding path, keeps followers' TimeToLive answers current,
 *    and makes a renewal durable: a new leader that reloads the store sees
 *    the last renewal's TTL.
 *  - Only the leader expires leases: every ETCD_LEASE_TICK_MS it proposes a
 *    LEASE_REVOKE for each lease past its deadline (at most
 *    ETCD_LEASE_REVOKE_INFLIGHT_MAX at once).
 * TTLs are raised to etcd's minimum (etcd__lease_min_ttl()) before the
 * grant is proposed, so every member stores the same TTL.
 *
 * Everything runs on the loop thread.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "server/etcd.h"
#include "server/server.h"

/* Initial buckets of the deadline table (a power of two); it doubles when
 * it holds twice as many leases. */
#define LEASE_BUCKETS_INITIAL 256u
/* Lease id layout: the member's 16 low bits above a 47-bit counter. */
#define LEASE_COUNTER_BITS 47u
#define LEASE_COUNTER_MASK ((UINT64_C(1) << LEASE_COUNTER_BITS) - 1)

struct lease_ent {
    struct lease_ent *next;
    int64_t id;
    int64_t ttl;          /* granted TTL, seconds */
    uint64_t deadline_ms; /* uv_now() based */
    bool revoking;        /* an expiry revoke is in flight */
};

struct etcd_lease_table {
    struct lease_ent **buckets;
    size_t n_buckets; /* a power of two */
    size_t n;
    uv_timer_t timer;
    bool leading;
    bool stopped;
    unsigned revokes_inflight;
    uint64_t counter; /* last lease id counter used */
};

/* --------------------------------------------------------------- pure */

int64_t etcd__lease_min_ttl(unsigned heartbeat_ms, unsigned election_ms) {
    if (heartbeat_ms == 0) heartbeat_ms = 100;
    unsigned ticks = election_ms / heartbeat_ms;
    uint64_t ms = (uint64_t)(3 * ticks / 2) * heartbeat_ms;
    int64_t s = (int64_t)((ms + 999) / 1000);
    return s < 1 ? 1 : s;
}

int64_t etcd__lease_id(uint64_t member_id, uint64_t counter) {
    uint64_t id = ((member_id & 0xffffu) << LEASE_COUNTER_BITS) | (counter & LEASE_COUNTER_MASK);
    return id ? (int64_t)id : 1;
}

/* --------------------------------------------------------------- table */

static size_t slot(const struct etcd_lease_table *t, int64_t id) {
    return (size_t)(((uint64_t)id * UINT64_C(0x9E3779B97F4A7C15)) >> 32) & (t->n_buckets - 1);
}

static struct lease_ent *table_get(struct etcd_lease_table *t, int64_t id) {
    for (struct lease_ent *l = t->buckets[slot(t, id)]; l; l = l->next)
        if (l->id == id) return l;
    return NULL;
}

static void table_grow(struct etcd_lease_table *t) {
    size_t nb = t->n_buckets * 2;
    struct lease_ent **b = calloc(nb, sizeof *b);
    if (!b) return; /* keep the longer chains */
    struct lease_ent **old = t->buckets;
    size_t on = t->n_buckets;
    t->buckets = b;
    t->n_buckets = nb;
    for (size_t i = 0; i < on; i++) {
        while (old[i]) {
            struct lease_ent *l = old[i];
            old[i] = l->next;
            size_t k = slot(t, l->id);
            l->next = b[k];
            b[k] = l;
        }
    }
    free(old);
}

/* Sets (adding if needed) lease id's TTL and deadline. Out of memory leaves
 * the lease without a deadline here; the next leader reload restores it. */
static void table_set(struct etcd_lease_table *t, int64_t id, int64_t ttl, uint64_t deadline_ms) {
    struct lease_ent *l = table_get(t, id);
    if (!l) {
        if (t->n >= 2 * t->n_buckets) table_grow(t);
        l = calloc(1, sizeof *l);
        if (!l) return;
        l->id = id;
        size_t k = slot(t, id);
        l->next = t->buckets[k];
        t->buckets[k] = l;
        t->n++;
    }
    l->ttl = ttl;
    l->deadline_ms = deadline_ms;
}

static void table_del(struct etcd_lease_table *t, int64_t id) {
    for (struct lease_ent **pp = &t->buckets[slot(t, id)]; *pp; pp = &(*pp)->next) {
        if ((*pp)->id == id) {
            struct lease_ent *l = *pp;
            *pp = l->next;
            free(l);
            t->n--;
            return;
        }
    }
}

static void table_clear(struct etcd_lease_table *t) {
    for (size_t i = 0; i < t->n_buckets; i++) {
        while (t->buckets[i]) {
            struct lease_ent *l = t->buckets[i];
            t->buckets[i] = l->next;
            free(l);
        }
    }
    t->n = 0;
}

static uint64_t deadline_after(struct etcd *e, int64_t secs) {
    if (secs < 0) secs = 0;
    return uv_now(e->loop) + (uint64_t)secs * 1000u;
}

/* Loads every lease of the store with a deadline of now + remaining TTL. */
static void table_reload(struct etcd *e) {
    struct etcd_lease_table *t = e->leases;
    struct store_lease *ls = NULL;
    size_t n = 0;
    int rc = store_lease_list(node__store_acquire(e->node), &ls, &n);
    node__store_release(e->node);
    if (rc) return; /* keep what we have; the next leader change retries */
    table_clear(t);
    for (size_t i = 0; i < n; i++)
        table_set(t, ls[i].id, ls[i].ttl, deadline_after(e, ls[i].remaining_ttl));
    free(ls);
}

/* --------------------------------------------------------------- apply */

void etcd__lease_on_apply(struct etcd *e, const struct store_result *res) {
    struct etcd_lease_table *t = e->leases;
    if (!t || res->err) return;
    switch (res->type) {
    case STORE_REQ_LEASE_GRANT:
        table_set(t, res->lease_id, res->lease_ttl, deadline_after(e, res->lease_ttl));
        break;
    case STORE_REQ_LEASE_REVOKE:
        table_del(t, res->lease_id);
        break;
    case STORE_REQ_LEASE_CHECKPOINT:
        /* lease_id is 0 for a checkpoint of an unknown lease (ignored). */
        if (res->lease_id != 0)
            table_set(t, res->lease_id, res->lease_ttl,
                      deadline_after(e, res->lease_remaining_ttl));
        break;
    default:
        break;
    }
}

/* --------------------------------------------------------------- expiry */

struct expiry {
    struct etcd *e;
    int64_t id;
};

static void expiry_done(void *arg, int err, const struct store_result *res) {
    struct expiry *x = arg;
    struct etcd_lease_table *t = x->e->leases;
    t->revokes_inflight--;
    int rc = err ? err : res->err;
    struct lease_ent *l = table_get(t, x->id);
    if (l) {
        if (rc == STORE_ELEASENOTFOUND)
            table_del(t, x->id);
        else
            l->revoking = false; /* failed (timeout): tried again next tick */
    }
    free(x);
}

static void expiry_tick(uv_timer_t *h) {
    struct etcd *e = h->data;
    struct etcd_lease_table *t = e->leases;
    if (!t->leading || t->stopped || e->stopping) return;
    uint64_t now = uv_now(e->loop);
    for (size_t i = 0; i < t->n_buckets; i++) {
        for (struct lease_ent *l = t->buckets[i]; l; l = l->next) {
            if (t->revokes_inflight >= ETCD_LEASE_REVOKE_INFLIGHT_MAX) return;
            if (l->revoking || l->deadline_ms > now) continue;
            struct expiry *x = malloc(sizeof *x);
            if (!x) return;
            *x = (struct expiry){e, l->id};
            struct store_request req = {.type = STORE_REQ_LEASE_REVOKE};
            req.u.lease_revoke.id = l->id;
            if (etcd__submit(e, &req, expiry_done, x) != 0) {
                free(x);
                return;
            }
            l->revoking = true;
            t->revokes_inflight++;
        }
    }
}

void etcd__lease_on_leader(struct etcd *e, bool leading) {
    struct etcd_lease_table *t = e->leases;
    if (!t || t->stopped) return;
    if (leading && !t->leading) table_reload(e);
    t->leading = leading;
}

/* --------------------------------------------------------------- life */

static void timer_closed(uv_handle_t *h) {
    etcd__unref(h->data);
}

int etcd__lease_init(struct etcd *e) {
    struct etcd_lease_table *t = calloc(1, sizeof *t);
    if (!t) return -ENOMEM;
    t->buckets = calloc(LEASE_BUCKETS_INITIAL, sizeof *t->buckets);
    if (!t->buckets) {
        free(t);
        return -ENOMEM;
    }
    t->n_buckets = LEASE_BUCKETS_INITIAL;
    e->leases = t;
    table_reload(e);
    /* Continue this member's id sequence after the ids it handed out
     * before a restart, so chosen ids stay unique and deterministic. */
    uint64_t prefix = etcd__status(e)->id & 0xffffu;
    for (size_t i = 0; i < t->n_buckets; i++)
        for (struct lease_ent *l = t->buckets[i]; l; l = l->next)
            if (((uint64_t)l->id >> LEASE_COUNTER_BITS) == prefix &&
                ((uint64_t)l->id & LEASE_COUNTER_MASK) > t->counter)
                t->counter = (uint64_t)l->id & LEASE_COUNTER_MASK;
    uv_timer_init(e->loop, &t->timer);
    t->timer.data = e;
    etcd__ref(e);
    uv_timer_start(&t->timer, expiry_tick, ETCD_LEASE_TICK_MS, ETCD_LEASE_TICK_MS);
    return 0;
}

void etcd__lease_stop(struct etcd *e) {
    struct etcd_lease_table *t = e->leases;
    if (!t || t->stopped) return;
    t->stopped = true;
    t->leading = false;
    uv_close((uv_handle_t *)&t->timer, timer_closed);
}

void etcd__lease_free(struct etcd *e) {
    struct etcd_lease_table *t = e->leases;
    if (!t) return;
    table_clear(t);
    free(t->buckets);
    free(t);
    e->leases = NULL;
}

/* --------------------------------------------------------------- unary */

struct lease_call {
    struct etcd *e;
    struct api_call *call;
    int64_t id, ttl;
    bool chosen; /* the id was picked here: pick another if taken */
    unsigned attempts;
};

static int64_t next_id(struct etcd *e) {
    return etcd__lease_id(etcd__status(e)->id, ++e->leases->counter);
}

static int grant_submit(struct lease_call *lc);

static void grant_done(void *arg, int err, const struct store_result *res) {
    struct lease_call *lc = arg;
    int rc = err ? err : res->err;
    if (rc == STORE_ELEASEEXISTS && lc->chosen && ++lc->attempts < ETCD_LEASE_ID_ATTEMPTS_MAX) {
        lc->id = next_id(lc->e);
        if (grant_submit(lc) == 0) return;
    }
    if (rc) {
        etcd__reply_error(lc->call, rc);
    } else {
        Etcdserverpb__LeaseGrantResponse resp = ETCDSERVERPB__LEASE_GRANT_RESPONSE__INIT;
        Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
        etcd__header(lc->e, &hdr, 0);
        resp.header = &hdr;
        resp.id = res->lease_id;
        resp.ttl = res->lease_ttl;
        api_reply(lc->call, &resp.base);
    }
    free(lc);
}

/* Proposes lc's grant; on refusal answers the call and frees lc. */
static int grant_submit(struct lease_call *lc) {
    struct store_request req = {.type = STORE_REQ_LEASE_GRANT};
    req.u.lease_grant.id = lc->id;
    req.u.lease_grant.ttl = lc->ttl;
    int rc = etcd__submit(lc->e, &req, grant_done, lc);
    if (rc) {
        etcd__reply_error(lc->call, rc);
        free(lc);
    }
    return rc;
}

void etcd__lease_grant(void *ctx, struct api_call *call,
                       const Etcdserverpb__LeaseGrantRequest *req) {
    struct etcd *e = ctx;
    if (etcd__status(e)->learner) {
        etcd__reply_error(call, ETCD_ELEARNERRPC);
        return;
    }
    if (req->ttl > STORE_LEASE_TTL_MAX) {
        etcd__reply_error(call, STORE_ELEASETTLTOOLARGE);
        return;
    }
    struct lease_call *lc = calloc(1, sizeof *lc);
    if (!lc) {
        etcd__reply_error(call, -ENOMEM);
        return;
    }
    lc->e = e;
    lc->call = call;
    int64_t min = etcd__lease_min_ttl(e->cfg->heartbeat_interval_ms, e->cfg->election_timeout_ms);
    lc->ttl = req->ttl < min ? min : req->ttl;
    lc->id = req->id;
    if (lc->id == 0) {
        lc->chosen = true;
        lc->id = next_id(e);
    }
    grant_submit(lc);
}

static void revoke_done(void *arg, int err, const struct store_result *res) {
    struct lease_call *lc = arg;
    int rc = err ? err : res->err;
    if (rc) {
        etcd__reply_error(lc->call, rc);
    } else {
        Etcdserverpb__LeaseRevokeResponse resp = ETCDSERVERPB__LEASE_REVOKE_RESPONSE__INIT;
        Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
        etcd__header(lc->e, &hdr, res->revision);
        resp.header = &hdr;
        api_reply(lc->call, &resp.base);
    }
    free(lc);
}

void etcd__lease_revoke(void *ctx, struct api_call *call,
                        const Etcdserverpb__LeaseRevokeRequest *req) {
    struct etcd *e = ctx;
    if (etcd__status(e)->learner) {
        etcd__reply_error(call, ETCD_ELEARNERRPC);
        return;
    }
    struct lease_call *lc = calloc(1, sizeof *lc);
    if (!lc) {
        etcd__reply_error(call, -ENOMEM);
        return;
    }
    lc->e = e;
    lc->call = call;
    lc->id = req->id;
    struct store_request r = {.type = STORE_REQ_LEASE_REVOKE};
    r.u.lease_revoke.id = req->id;
    int rc = etcd__submit(e, &r, revoke_done, lc);
    if (rc) {
        etcd__reply_error(call, rc);
        free(lc);
    }
}

void etcd__lease_time_to_live(void *ctx, struct api_call *call,
                              const Etcdserverpb__LeaseTimeToLiveRequest *req) {
    struct etcd *e = ctx;
    Etcdserverpb__LeaseTimeToLiveResponse resp = ETCDSERVERPB__LEASE_TIME_TO_LIVE_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    struct store_key_list keys = {0};
    ProtobufCBinaryData *pk = NULL;
    struct store_lease l;
    struct store *s = node__store_acquire(e->node);
    int rc = store_lease_get(s, req->id, &l);
    if (rc == 0 && req->keys) rc = store_lease_keys(s, req->id, &keys);
    node__store_release(e->node);
    etcd__header(e, &hdr, 0);
    resp.header = &hdr;
    resp.id = req->id;
    if (rc == STORE_ELEASENOTFOUND) {
        /* etcd answers an unknown lease with TTL -1, not an error. */
        resp.ttl = -1;
        api_reply(call, &resp.base);
        return;
    }
    if (rc) {
        etcd__reply_error(call, rc);
        return;
    }
    const struct lease_ent *ent = table_get(e->leases, req->id);
    int64_t remaining = l.remaining_ttl;
    if (ent) {
        uint64_t now = uv_now(e->loop);
        remaining = ent->deadline_ms > now ? (int64_t)((ent->deadline_ms - now) / 1000) : 0;
    }
    resp.ttl = remaining;
    resp.grantedttl = l.ttl;
    if (keys.n_keys) {
        pk = calloc(keys.n_keys, sizeof *pk);
        if (!pk) {
            store_key_list_release(&keys);
            etcd__reply_error(call, -ENOMEM);
            return;
        }
        for (size_t i = 0; i < keys.n_keys; i++)
            pk[i] =
                (ProtobufCBinaryData){keys.keys[i].len, (uint8_t *)(uintptr_t)keys.keys[i].base};
        resp.keys = pk;
        resp.n_keys = keys.n_keys;
    }
    api_reply(call, &resp.base);
    free(pk);
    store_key_list_release(&keys);
}

void etcd__lease_leases(void *ctx, struct api_call *call,
                        const Etcdserverpb__LeaseLeasesRequest *req) {
    (void)req;
    struct etcd *e = ctx;
    struct store_lease *ls = NULL;
    size_t n = 0;
    int rc = store_lease_list(node__store_acquire(e->node), &ls, &n);
    node__store_release(e->node);
    if (rc) {
        etcd__reply_error(call, rc);
        return;
    }
    Etcdserverpb__LeaseLeasesResponse resp = ETCDSERVERPB__LEASE_LEASES_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    Etcdserverpb__LeaseStatus *st = n ? calloc(n, sizeof *st) : NULL;
    Etcdserverpb__LeaseStatus **pst = n ? calloc(n, sizeof *pst) : NULL;
    if (n && (!st || !pst)) {
        free(st);
        free(pst);
        free(ls);
        etcd__reply_error(call, -ENOMEM);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        etcdserverpb__lease_status__init(&st[i]);
        st[i].id = ls[i].id;
        pst[i] = &st[i];
    }
    etcd__header(e, &hdr, 0);
    resp.header = &hdr;
    resp.leases = pst;
    resp.n_leases = n;
    api_reply(call, &resp.base);
    free(pst);
    free(st);
    free(ls);
}

/* --------------------------------------------------------------- keepalive */

struct kastream {
    int kind; /* ETCD_STREAM_KEEPALIVE; first, see etcd.h */
    struct etcd *e;
    struct api_stream *st; /* NULL once closed */
    unsigned refs;         /* the stream itself + renewals in flight */
    unsigned inflight;
    bool half_closed; /* the client sends no more: end after the last answer */
};

struct renewal {
    struct kastream *ks;
    int64_t id;
    int64_t rev; /* header revision, taken before the renewal (etcd) */
};

static void ks_unref(struct kastream *ks) {
    if (--ks->refs) return;
    struct etcd *e = ks->e;
    free(ks);
    etcd__unref(e);
}

static void ks_close(struct kastream *ks, enum api_grpc_code code, const char *msg) {
    if (!ks->st) return;
    api_stream_set_data(ks->st, NULL);
    api_stream_close(ks->st, code, msg);
    ks->st = NULL;
    ks_unref(ks);
}

static void ka_send(struct kastream *ks, int64_t id, int64_t ttl, int64_t rev) {
    Etcdserverpb__LeaseKeepAliveResponse resp = ETCDSERVERPB__LEASE_KEEP_ALIVE_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    etcd__header(ks->e, &hdr, rev);
    resp.header = &hdr;
    resp.id = id;
    resp.ttl = ttl;
    /* A client that lets 16 MiB of keepalive answers pile up loses some:
     * it renews again within a third of the TTL anyway. */
    api_stream_send(ks->st, &resp.base);
}

static void renewal_done(void *arg, int err, const struct store_result *res) {
    struct renewal *r = arg;
    struct kastream *ks = r->ks;
    ks->inflight--;
    if (ks->st) {
        int rc = err ? err : res->err;
        if (rc) {
            const char *msg;
            enum api_grpc_code code = etcd__grpc_error(rc, &msg);
            ks_close(ks, code, msg);
        } else {
            struct store_lease l;
            rc = store_lease_get(node__store_acquire(ks->e->node), r->id, &l);
            node__store_release(ks->e->node);
            /* Revoked meanwhile: etcd answers TTL 0 for a lease it does not
             * know. */
            ka_send(ks, r->id, rc == 0 ? l.ttl : 0, r->rev);
            /* etcd's loop returns (status OK) at the client's EOF. */
            if (ks->half_closed && ks->inflight == 0) ks_close(ks, API_GRPC_OK, NULL);
        }
    }
    free(r);
    ks_unref(ks);
}

void etcd__lease_keep_alive_open(void *ctx, struct api_stream *stream) {
    struct etcd *e = ctx;
    if (e->stopping) {
        api_stream_close(stream, API_GRPC_UNAVAILABLE, "etcdserver: server stopped");
        return;
    }
    struct kastream *ks = calloc(1, sizeof *ks);
    if (!ks) {
        api_stream_close(stream, API_GRPC_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
        return;
    }
    ks->kind = ETCD_STREAM_KEEPALIVE;
    ks->e = e;
    ks->st = stream;
    ks->refs = 1;
    etcd__ref(e);
    api_stream_set_data(stream, ks);
}

void etcd__lease_keep_alive_request(void *ctx, struct api_stream *stream,
                                    const Etcdserverpb__LeaseKeepAliveRequest *req) {
    struct etcd *e = ctx;
    struct kastream *ks = api_stream_data(stream);
    if (!ks || !ks->st) return;
    int64_t rev = etcd__current_revision(e);
    struct store_lease l;
    int rc = store_lease_get(node__store_acquire(e->node), req->id, &l);
    node__store_release(e->node);
    /* Expired and being revoked by this leader: etcd refuses to renew an
     * expired lease and answers as for an unknown one. */
    const struct lease_ent *ent = rc == 0 ? table_get(e->leases, req->id) : NULL;
    if (rc == STORE_ELEASENOTFOUND || (ent && ent->revoking)) {
        ka_send(ks, req->id, 0, rev);
        return;
    }
    if (rc == 0 && ks->inflight >= ETCD_KEEPALIVE_INFLIGHT_MAX) rc = ETCD_ETOOMANYREQUESTS;
    struct renewal *r = NULL;
    if (rc == 0) {
        r = malloc(sizeof *r);
        if (!r) rc = -ENOMEM;
    }
    if (rc == 0) {
        *r = (struct renewal){ks, req->id, rev};
        struct store_request cp = {.type = STORE_REQ_LEASE_CHECKPOINT};
        cp.u.lease_checkpoint.id = req->id;
        cp.u.lease_checkpoint.remaining_ttl = l.ttl;
        rc = etcd__submit(e, &cp, renewal_done, r);
        if (rc == 0) {
            ks->refs++;
            ks->inflight++;
            return;
        }
        free(r);
    }
    const char *msg;
    enum api_grpc_code code = etcd__grpc_error(rc, &msg);
    ks_close(ks, code, msg);
}

void etcd__lease_keep_alive_end(void *ctx, struct api_stream *stream, enum api_stream_event ev) {
    (void)ctx;
    struct kastream *ks = api_stream_data(stream);
    if (!ks) return;
    if (ev == API_STREAM_CANCELLED) {
        ks_close(ks, API_GRPC_CANCELLED, NULL);
        return;
    }
    /* Half-closed: renewals in flight are still answered, then the stream
     * ends with OK, as etcd's loop returns at EOF after its last answer. */
    ks->half_closed = true;
    if (ks->inflight == 0) ks_close(ks, API_GRPC_OK, NULL);
}
