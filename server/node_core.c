/*
 * node_core.c - the driver core of a member (see node_core.h): turns Raft
 * updates into persisted state, messages, applied entries and answered
 * waiters. The libuv loop (node.c) and the simulation (tests/sim/
 * node_sim.c) both run this code; everything outside the store goes through
 * n->io.
 *
 * Invariants:
 * - Only the loop thread touches raft, the pending table and the store's
 *   write side. Other threads hand requests over through `q_head` (guarded
 *   by `mu`) and wake the loop with io.wake.
 * - A request is answered exactly once: when its entry is applied on this
 *   node, when its deadline passes (-ETIMEDOUT, the write may still commit
 *   later, exactly as an etcd client timeout), or at shutdown (-ECANCELED).
 *   Every proposal is either queued, in the pending table, or being
 *   answered; n_pending <= n_outstanding.
 * - Hard state and entries of an update are persisted before its messages
 *   are sent (Raft's Ready contract; a leader may send first, thesis
 *   10.2.1), and before the entries are applied.
 * - Entries are applied in index order, each in one store batch: after a
 *   successful apply the store's applied index covers the entry.
 */
#define _GNU_SOURCE /* pthread_rwlock_t under -std=c17 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "raft/raft.h"
#include "server/node.h"
#include "server/node_core.h"
#include "server/server.h"
#include "store/store.h"

_Noreturn void node__assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "quorumfs: assertion failed: %s (%s:%d)\n", expr, file, line);
    fflush(stderr);
    abort();
}

void node__logf(struct node *n, const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    n->io.log(n->io.ctx, line);
}

#define logf_(...) node__logf(n, __VA_ARGS__)

static uint64_t now_ms(struct node *n) {
    return n->io.now_ms(n->io.ctx);
}

static void node_stop(struct node *n) {
    n->io.stop(n->io.ctx);
}

static void peers_changed(struct node *n, const struct node_member *old, size_t n_old) {
    if (n->io.peers_changed) n->io.peers_changed(n->io.ctx, old, n_old);
}

/* Entries kept behind a log compaction so that a briefly lagging follower
 * catches up from the log rather than a snapshot (etcd keeps 5000). */
#define COMPACT_CATCHUP_ENTRIES_MAX 5000u

struct proposal {
    struct proposal *next; /* queue link, then bucket link */
    uint64_t id;
    void *data; /* encoded store request (owned) */
    size_t len;
    uint64_t deadline_ms; /* io.now_ms based */
    bool proposed;        /* handed to raft_propose successfully */
    enum node_origin origin;
    node_done_cb cb;
    void *arg;
};

/* A linearizable read waiting for its read index, then for apply. */
struct barrier {
    struct barrier *next;
    uint64_t id;    /* the ReadIndex context */
    uint64_t index; /* 0 until the leader answered */
    bool asked;     /* raft_read_index accepted it */
    uint64_t deadline_ms;
    node_barrier_cb cb;
    void *arg;
};

/* A membership change or leadership transfer waiting to take effect. */
struct waiter {
    uint64_t member_id;
    int type; /* RAFT_CC_* or NODE_MEMBER_UPDATE; unused for transfers */
    uint64_t deadline_ms;
    node_barrier_cb cb;
    void *arg;
};

/* First byte of a node-level entry that updates a member's attributes
 * (etcd's member "publish" and MemberUpdate). Store requests begin with
 * their version byte (STORE_REQUEST_VERSION), which this cannot be. */
#define MEMBER_UPDATE_ENTRY 0xFEu
_Static_assert(STORE_REQUEST_VERSION != MEMBER_UPDATE_ENTRY, "entry kinds must differ");

struct store *node__store_acquire(struct node *n) {
    pthread_rwlock_rdlock(&n->store_lock);
    return n->store;
}

void node__store_release(struct node *n) {
    pthread_rwlock_unlock(&n->store_lock);
}

int node__errno(int rc) {
    switch (rc) {
    case 0:
        return 0;
    case STORE_ETOOLARGE:
        return -EFBIG;
    case STORE_ENOSPACE:
        return -ENOSPC;
    case STORE_EKEYTOOLARGE:
        return -ENAMETOOLONG;
    case STORE_EKEYEMPTY:
        return -EINVAL;
    case STORE_ENOMEM:
        return -ENOMEM;
    case STORE_EKEYNOTFOUND:
        return -ENOENT;
    case STORE_ETOOMANYOPS:
        return -E2BIG;
    default:
        if (rc < 0 && rc > -1000) return rc; /* already an errno */
        return -EIO;
    }
}

/* ------------------------------------------------------------ pending */

static struct proposal **bucket(struct node *n, uint64_t id) {
    return &n->pending[id & (PENDING_BUCKETS - 1)];
}

static void pending_insert(struct node *n, struct proposal *p) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(p->next == NULL);
    NODE_ASSERT(p->id != 0);
    NODE_ASSERT(n->n_pending < PENDING_MAX);
    struct proposal **b = bucket(n, p->id);
    p->next = *b;
    *b = p;
    n->n_pending++;
}

static struct proposal *pending_take(struct node *n, uint64_t id) {
    for (struct proposal **pp = bucket(n, id); *pp; pp = &(*pp)->next) {
        if ((*pp)->id == id) {
            struct proposal *p = *pp;
            *pp = p->next;
            p->next = NULL;
            NODE_ASSERT(n->n_pending > 0);
            n->n_pending--;
            return p;
        }
    }
    return NULL;
}

static void proposal_finish(struct node *n, struct proposal *p, int err,
                            const struct store_result *res) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(p->next == NULL); /* out of the queue and the table */
    NODE_ASSERT(err != 0 || res != NULL);
    p->cb(p->arg, err, res);
    free(p->data);
    free(p);
    pthread_mutex_lock(&n->mu);
    NODE_ASSERT(n->n_outstanding > 0);
    n->n_outstanding--;
    NODE_ASSERT(n->n_pending <= n->n_outstanding);
    pthread_mutex_unlock(&n->mu);
}

bool node__is_learner(struct node *n) {
    return atomic_load(&n->learner);
}

/* Keeps n->learner in step with Raft's configuration: called once Raft
 * exists and after every update (conf changes apply, snapshots restore). */
static void role_refresh(struct node *n) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(n->raft != NULL);
    struct raft_status rs;
    raft_status(n->raft, &rs);
    bool learner = false;
    for (uint32_t i = 0; i < rs.conf.n_learners; i++)
        if (rs.conf.learners[i] == n->id) learner = true;
    atomic_store(&n->learner, learner);
}

int node__submit(struct node *n, struct store_request *req, enum node_origin origin,
                 node_done_cb cb, void *arg) {
    NODE_ASSERT(req != NULL);
    NODE_ASSERT(cb != NULL);
    /* A learner only replicates: it proposes nothing (etcd refuses client
     * writes on a learner), and the mount is read-only there. */
    if (node__is_learner(n)) return -EROFS;
    struct proposal *p = calloc(1, sizeof *p);
    if (!p) return -ENOMEM;
    pthread_mutex_lock(&n->mu);
    if (n->stopping) {
        pthread_mutex_unlock(&n->mu);
        free(p);
        return -ECANCELED;
    }
    if (n->n_outstanding >= PENDING_MAX) {
        pthread_mutex_unlock(&n->mu);
        free(p);
        return -EAGAIN;
    }
    /* Ids are unique per member: the member id's low bits above a 40-bit
     * counter, so a request applied from another node's proposal never
     * matches ours. The counter starts at the wall clock in microseconds
     * (server_run), not at 0: entries an earlier run of this member
     * proposed may still be applied after a restart, and must not answer
     * this run's requests that happen to reuse their ids. */
    uint64_t seq;
    do seq = ++n->next_id & REQUEST_SEQ_MASK;
    while (seq == 0);
    p->id = (n->id << 40) ^ seq;
    n->n_outstanding++;
    pthread_mutex_unlock(&n->mu);

    req->id = p->id;
    int rc = store_request_encode_alloc(req, &p->data, &p->len);
    if (rc == 0) {
        rc = store_request_check(node__store_acquire(n), p->data, p->len);
        node__store_release(n);
    }
    if (rc) {
        free(p->data);
        free(p);
        pthread_mutex_lock(&n->mu);
        n->n_outstanding--;
        pthread_mutex_unlock(&n->mu);
        return rc;
    }
    p->origin = origin;
    p->cb = cb;
    p->arg = arg;
    pthread_mutex_lock(&n->mu);
    if (n->q_tail)
        n->q_tail->next = p;
    else
        n->q_head = p;
    n->q_tail = p;
    pthread_mutex_unlock(&n->mu);
    n->io.wake(n->io.ctx);
    return 0;
}

/* ------------------------------------------------------------ members */

/*
 * Member descriptions travel in Raft entries (the context of a conf change,
 * and MEMBER_UPDATE_ENTRY entries) as text: "QM1\n" name "\n" peer URLs "\n"
 * client URLs "\n". The decoder checks every field against its buffer.
 */
static int member_encode(const struct node_member *m, char *buf, size_t cap, size_t *len) {
    int k = snprintf(buf, cap, "QM1\n%s\n%s\n%s\n", m->name, m->peer_urls, m->client_urls);
    if (k < 0 || (size_t)k >= cap) return -ENAMETOOLONG;
    *len = (size_t)k;
    return 0;
}

static int take_line(const char **p, const char *end, char *out, size_t cap) {
    const char *nl = memchr(*p, '\n', (size_t)(end - *p));
    if (!nl || (size_t)(nl - *p) >= cap) return -EINVAL;
    memcpy(out, *p, (size_t)(nl - *p));
    out[nl - *p] = '\0';
    if (memchr(out, '\0', (size_t)(nl - *p))) return -EINVAL;
    *p = nl + 1;
    return 0;
}

static int member_decode(const void *buf, size_t len, struct node_member *m) {
    const char *p = buf, *end = p + len;
    char magic[8];
    memset(m, 0, sizeof *m);
    if (take_line(&p, end, magic, sizeof magic) || strcmp(magic, "QM1") != 0) return -EINVAL;
    if (take_line(&p, end, m->name, sizeof m->name) ||
        take_line(&p, end, m->peer_urls, sizeof m->peer_urls) ||
        take_line(&p, end, m->client_urls, sizeof m->client_urls))
        return -EINVAL;
    return p == end ? 0 : -EINVAL;
}

static struct node_member *member_find(struct node *n, uint64_t id) {
    for (size_t i = 0; i < n->n_members; i++)
        if (n->members[i].id == id) return &n->members[i];
    return NULL;
}

/*
 * The member table and the cluster id live in the store (store_apply_cluster),
 * written in the batch of the entry that changed them, so they are always
 * those of the applied index and a checkpoint (snapshot) carries them. The
 * encoding: "QMT1", cluster id (u64), member count (u32), then per member its
 * id (u64) and name, peer URLs, client URLs (u16 length, bytes each); integers
 * little-endian.
 */
#define MEMBERS_MAGIC "QMT1"

static void put_le(unsigned char *p, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint64_t get_le(const unsigned char *p, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Bytes members_encode may need at most. */
#define MEMBERS_BLOB_MAX                                                                           \
    (4 + 8 + 4 + SERVER_MEMBERS_MAX * (8 + 6 + SERVER_NAME_MAX + 2 * SERVER_URL_MAX))

static size_t members_encode(const struct node *n, unsigned char *buf) {
    unsigned char *p = buf;
    memcpy(p, MEMBERS_MAGIC, 4);
    p += 4;
    put_le(p, n->cluster_id, 8);
    p += 8;
    put_le(p, n->n_members, 4);
    p += 4;
    for (size_t i = 0; i < n->n_members; i++) {
        const struct node_member *m = &n->members[i];
        put_le(p, m->id, 8);
        p += 8;
        const char *f[3] = {m->name, m->peer_urls, m->client_urls};
        for (int k = 0; k < 3; k++) {
            size_t l = strlen(f[k]);
            put_le(p, l, 2);
            memcpy(p + 2, f[k], l);
            p += 2 + l;
        }
    }
    return (size_t)(p - buf);
}

static int take_field(const unsigned char **p, const unsigned char *end, char *out, size_t cap) {
    if (end - *p < 2) return -EINVAL;
    size_t l = (size_t)get_le(*p, 2);
    *p += 2;
    if ((size_t)(end - *p) < l || l >= cap || memchr(*p, '\0', l)) return -EINVAL;
    memcpy(out, *p, l);
    out[l] = '\0';
    *p += l;
    return 0;
}

/* Decodes a stored table into *cluster_id, members[0..*n). */
static int members_decode(const void *buf, size_t len, uint64_t *cluster_id,
                          struct node_member *members, size_t *n) {
    const unsigned char *p = buf, *end = p + len;
    if (len < 16 || memcmp(p, MEMBERS_MAGIC, 4) != 0) return -EINVAL;
    *cluster_id = get_le(p + 4, 8);
    uint64_t count = get_le(p + 12, 4);
    p += 16;
    if (count > SERVER_MEMBERS_MAX) return -EINVAL;
    for (size_t i = 0; i < count; i++) {
        struct node_member *m = &members[i];
        memset(m, 0, sizeof *m);
        if (end - p < 8) return -EINVAL;
        m->id = get_le(p, 8);
        p += 8;
        if (take_field(&p, end, m->name, sizeof m->name) ||
            take_field(&p, end, m->peer_urls, sizeof m->peer_urls) ||
            take_field(&p, end, m->client_urls, sizeof m->client_urls))
            return -EINVAL;
    }
    if (p != end) return -EINVAL;
    *n = (size_t)count;
    return 0;
}

/* Applies entry `index` (a conf change when cs is not NULL, else an entry
 * without a store request) together with the member table as it is now. */
static int members_apply_store(struct node *n, uint64_t index, const struct raft_conf_state *cs) {
    static unsigned char buf[MEMBERS_BLOB_MAX]; /* loop thread only */
    size_t len = members_encode(n, buf);
    return store_apply_cluster(n->store, index, cs, buf, len);
}

/* The table as the store holds it. Returns 1 if the store holds none. */
static int members_read_store(struct node *n) {
    void *blob = NULL;
    size_t len = 0;
    int rc = store_cluster_get(n->store, &blob, &len);
    if (rc) {
        logf_("cannot read the member table: %s", store_strerror(rc));
        return rc;
    }
    if (!blob) return 1;
    uint64_t cid = 0;
    size_t count = 0;
    struct node_member *tab = calloc(SERVER_MEMBERS_MAX, sizeof *tab);
    rc = tab ? members_decode(blob, len, &cid, tab, &count) : -ENOMEM;
    free(blob);
    if (rc == 0) {
        memcpy(n->members, tab, count * sizeof *tab);
        n->n_members = count;
        n->cluster_id = cid;
    } else {
        logf_("the stored member table is unreadable: %s", strerror(-rc));
    }
    free(tab);
    return rc;
}

/* An earlier version kept the table in DATA/members: read it once. */
static bool members_load_legacy(struct node *n, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return false;
    n->n_members = 0;
    char line[1024];
    while (n->n_members < SERVER_MEMBERS_MAX && fgets(line, sizeof line, f)) {
        struct node_member m = {0};
        char name[SERVER_NAME_MAX], peer[SERVER_URL_MAX], client[SERVER_URL_MAX];
        if (sscanf(line, "%16" SCNx64 "\t%63[^\t]\t%255[^\t]\t%255[^\n]", &m.id, name, peer,
                   client) != 4)
            continue;
        snprintf(m.name, sizeof m.name, "%s", name);
        snprintf(m.peer_urls, sizeof m.peer_urls, "%s", peer);
        if (strcmp(client, "-") != 0) snprintf(m.client_urls, sizeof m.client_urls, "%s", client);
        n->members[n->n_members++] = m;
    }
    fclose(f);
    return n->n_members > 0;
}

static void published_refresh(struct node *n) {
    struct node_member *self = member_find(n, n->id);
    n->published = self && strcmp(self->client_urls, n->cfg->advertise_client_urls) == 0 &&
                   (!n->cfg->name[0] || strcmp(self->name, n->cfg->name) == 0);
}

/*
 * At start: the table and cluster id the store holds. A store without one
 * is a new member: a founder of a new cluster derives both from
 * --initial-cluster and stores them (every founder computes the same); a
 * member joining an existing cluster uses its --initial-cluster until the
 * leader's snapshot brings the cluster's table and id (etcd keeps the
 * founders' cluster id for every member).
 */
static int members_load(struct node *n) {
    const struct server_config *cfg = n->cfg;
    int rc = members_read_store(n);
    if (rc < 0) return rc;
    if (rc == 0) {
        published_refresh(n);
        return 0;
    }
    char path[1100];
    snprintf(path, sizeof path, "%s/members", cfg->data_dir);
    bool legacy = members_load_legacy(n, path);
    if (!legacy) {
        n->n_members = 0;
        for (size_t i = 0; i < cfg->n_members; i++) {
            struct node_member *m = &n->members[n->n_members++];
            memset(m, 0, sizeof *m);
            m->id = cfg->members[i].id;
            snprintf(m->name, sizeof m->name, "%s", cfg->members[i].name);
            snprintf(m->peer_urls, sizeof m->peer_urls, "%s", cfg->members[i].peer_url);
        }
    }
    /* The cluster id: a hash of the initial members' ids and the token. */
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < cfg->n_members; i++) {
        h ^= cfg->members[i].id;
        h *= 1099511628211ull;
    }
    for (const char *c = cfg->initial_cluster_token; *c; c++) {
        h ^= (unsigned char)*c;
        h *= 1099511628211ull;
    }
    n->cluster_id = h ? h : 1;
    published_refresh(n);
    /* A joiner has nothing to store yet: the snapshot brings it. */
    if (!legacy && (cfg->initial_cluster_existing || store_applied_index(n->store) == 0)) return 0;
    static unsigned char buf[MEMBERS_BLOB_MAX];
    size_t len = members_encode(n, buf);
    rc = store_cluster_put(n->store, buf, len);
    if (rc) {
        logf_("cannot store the member table: %s", store_strerror(rc));
        return rc;
    }
    if (legacy) unlink(path);
    return 0;
}

static void waiter_finish(struct waiter **wp, int err) {
    struct waiter *w = *wp;
    if (!w) return;
    *wp = NULL;
    w->cb(w->arg, err);
    free(w);
}

/* Applies conf change entry `index` (Raft's outcome crc, configuration cs
 * after it) to the member table and stores both in one batch. */
static int members_apply_conf(struct node *n, uint64_t index, const struct raft_conf_change *cc,
                              int crc, const struct raft_conf_state *cs) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(n->n_members <= SERVER_MEMBERS_MAX);
    NODE_ASSERT(cs != NULL);
    struct node_member old[SERVER_MEMBERS_MAX];
    size_t n_old = n->n_members;
    memcpy(old, n->members, n_old * sizeof *old);
    if (crc == 0) {
        struct node_member m;
        bool described = cc->context.len &&
                         member_decode(cc->context.base, cc->context.len, &m) == 0;
        if (cc->type == RAFT_CC_REMOVE) {
            for (size_t i = 0; i < n->n_members; i++) {
                if (n->members[i].id != cc->node_id) continue;
                n->members[i] = n->members[--n->n_members];
                break;
            }
        } else if (!member_find(n, cc->node_id) && n->n_members < SERVER_MEMBERS_MAX) {
            struct node_member *nm = &n->members[n->n_members++];
            memset(nm, 0, sizeof *nm);
            if (described) *nm = m;
            nm->id = cc->node_id;
        }
    }
    int rc = members_apply_store(n, index, cs);
    if (rc) {
        memcpy(n->members, old, n_old * sizeof *old);
        n->n_members = n_old;
        return rc;
    }
    if (crc == 0) peers_changed(n, old, n_old);
    struct waiter *w = n->conf_waiter;
    if (w && w->member_id == cc->node_id) waiter_finish(&n->conf_waiter, crc ? -EINVAL : 0);
    if (crc == 0 && cc->type == RAFT_CC_REMOVE && cc->node_id == n->id) {
        logf_("this member was removed from the cluster; stopping");
        node_stop(n); /* server_run unmounts, then refuses new work */
    }
    return 0;
}

/* Applies member-update entry e (MEMBER_UPDATE_ENTRY) and stores the table
 * in the same batch. */
static int members_apply_update(struct node *n, const struct raft_entry *e) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(e->data.len > 0);
    const unsigned char *d = e->data.base;
    struct node_member m;
    struct node_member *cur = NULL;
    uint64_t id = 0;
    if (e->data.len >= 9) {
        id = get_le(d + 1, 8);
        cur = member_find(n, id);
        if (cur && member_decode(d + 9, e->data.len - 9, &m) != 0) cur = NULL;
    }
    if (!cur) return store_apply_noop(n->store, e->index);
    struct node_member old[SERVER_MEMBERS_MAX];
    memcpy(old, n->members, n->n_members * sizeof *old);
    struct node_member saved = *cur;
    if (m.peer_urls[0]) snprintf(cur->peer_urls, sizeof cur->peer_urls, "%s", m.peer_urls);
    if (m.client_urls[0]) snprintf(cur->client_urls, sizeof cur->client_urls, "%s", m.client_urls);
    if (m.name[0]) snprintf(cur->name, sizeof cur->name, "%s", m.name);
    int rc = members_apply_store(n, e->index, NULL);
    if (rc) {
        *cur = saved;
        return rc;
    }
    if (strcmp(saved.peer_urls, cur->peer_urls) != 0) peers_changed(n, old, n->n_members);
    published_refresh(n);
    struct waiter *w = n->conf_waiter;
    if (w && w->type == NODE_MEMBER_UPDATE && w->member_id == id) waiter_finish(&n->conf_waiter, 0);
    return 0;
}

/* A snapshot replaced the store: take the member table and cluster id it
 * carries (a member that joined by snapshot learns the cluster's here). */
static void members_reload(struct node *n) {
    struct node_member old[SERVER_MEMBERS_MAX];
    size_t n_old = n->n_members;
    memcpy(old, n->members, n_old * sizeof *old);
    if (members_read_store(n) != 0) return; /* none: keep ours */
    published_refresh(n);
    peers_changed(n, old, n_old);
}

static int propose_member_update(struct node *n, const struct node_member *m) {
    unsigned char buf[1 + 8 + 16 + SERVER_NAME_MAX + 2 * SERVER_URL_MAX];
    size_t len;
    buf[0] = MEMBER_UPDATE_ENTRY;
    for (int i = 0; i < 8; i++) buf[1 + i] = (unsigned char)(m->id >> (8 * i));
    int rc = member_encode(m, (char *)buf + 9, sizeof buf - 9, &len);
    if (rc) return rc;
    rc = raft_propose(n->raft, buf, 9 + len);
    return rc ? -EAGAIN : 0;
}

/* etcd members publish their client URLs once they serve: so do we. */
static void maybe_publish(struct node *n) {
    NODE_ASSERT_LOOP(n);
    if (n->published || n->leader == RAFT_NONE) return;
    uint64_t now = now_ms(n);
    if (now < n->publish_retry_ms) return;
    n->publish_retry_ms = now + n->cfg->election_timeout_ms;
    struct node_member *self = member_find(n, n->id);
    if (!self) return;
    struct node_member m = *self;
    size_t len = strlen(n->cfg->advertise_client_urls);
    if (len >= sizeof m.client_urls) {
        logf_("--advertise-client-urls is too long to publish (%zu bytes)", len);
        n->published = true;
        return;
    }
    memcpy(m.client_urls, n->cfg->advertise_client_urls, len + 1);
    /* etcd publishes its name with its client URLs: a member added with
     * MemberAdd has none in the table (nor in the snapshot it joined by). */
    snprintf(m.name, sizeof m.name, "%s", n->cfg->name);
    propose_member_update(n, &m); /* retried on later ticks until applied */
}

const struct server_config *node__config(struct node *n) {
    return n->cfg;
}

void node__set_restore_hook(struct node *n, node_restore_hook restore, void *ctx) {
    n->restore_hook = restore;
    n->restore_ctx = ctx;
}

void node__set_hooks(struct node *n, node_apply_hook apply, node_leader_hook leader, void *ctx) {
    NODE_ASSERT_LOOP(n);
    n->apply_hook = apply;
    n->leader_hook = leader;
    n->hook_ctx = ctx;
}

void node__status(struct node *n, struct node_status *st) {
    NODE_ASSERT_LOOP(n);
    struct raft_status rs;
    raft_status(n->raft, &rs);
    memset(st, 0, sizeof *st);
    st->id = n->id;
    st->leader = rs.leader;
    st->term = rs.term;
    st->commit = rs.commit;
    st->applied = store_applied_index(n->store);
    st->cluster_id = n->cluster_id;
    st->learner = node__is_learner(n);
    st->n_members = n->n_members;
    for (size_t i = 0; i < n->n_members; i++) {
        st->members[i] = n->members[i];
        st->members[i].learner = false;
        for (uint32_t k = 0; k < rs.conf.n_learners; k++)
            if (rs.conf.learners[k] == n->members[i].id) st->members[i].learner = true;
    }
}

int node__member_change(struct node *n, int type, struct node_member *m, node_barrier_cb cb,
                        void *arg) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(m != NULL);
    NODE_ASSERT(cb != NULL);
    if (n->conf_waiter) return -EBUSY;
    struct node_member *cur = m->id ? member_find(n, m->id) : NULL;
    if (type == RAFT_CC_REMOVE || type == NODE_MEMBER_UPDATE) {
        if (!cur) return -ENOENT;
    } else if (type == RAFT_CC_ADD_VOTER && cur) {
        /* A promotion: the member must be a learner. */
        struct node_status st;
        node__status(n, &st);
        bool learner = false;
        for (size_t i = 0; i < st.n_members; i++)
            if (st.members[i].id == m->id) learner = st.members[i].learner;
        if (!learner) return -EINVAL;
        /* etcd promotes only a learner within 10% of the leader's log. */
        uint64_t match = 0;
        struct raft_status rs;
        raft_status(n->raft, &rs);
        if (raft_progress_match(n->raft, m->id, &match) != 0 ||
            (double)match < 0.9 * (double)rs.last_index)
            return -EPERM;
    } else {
        for (size_t i = 0; i < n->n_members; i++)
            if (strcmp(n->members[i].peer_urls, m->peer_urls) == 0) return -EEXIST;
        if (n->n_members >= SERVER_MEMBERS_MAX) return -ENOSPC;
        /* The id the new member computes for itself from its first peer
         * URL and the cluster token. */
        char url[SERVER_URL_MAX];
        size_t ul = strcspn(m->peer_urls, ",");
        memcpy(url, m->peer_urls, ul);
        url[ul] = '\0';
        m->id = server_member_id(url, n->cfg->initial_cluster_token);
        if (member_find(n, m->id)) return -EEXIST;
    }
    struct waiter *w = calloc(1, sizeof *w);
    if (!w) return -ENOMEM;
    w->member_id = m->id;
    w->type = type;
    w->deadline_ms = now_ms(n) + n->cfg->request_timeout_ms;
    w->cb = cb;
    w->arg = arg;
    int rc;
    if (type == NODE_MEMBER_UPDATE) {
        struct node_member upd = *cur;
        snprintf(upd.peer_urls, sizeof upd.peer_urls, "%s", m->peer_urls);
        rc = propose_member_update(n, &upd);
    } else {
        char ctx[16 + SERVER_NAME_MAX + 2 * SERVER_URL_MAX];
        size_t ctx_len = 0;
        rc = member_encode(cur && type != RAFT_CC_REMOVE ? cur : m, ctx, sizeof ctx, &ctx_len);
        if (rc == 0) {
            struct raft_conf_change cc = {.type = (uint8_t)type,
                                          .node_id = m->id,
                                          .context = {ctx, ctx_len}};
            rc = raft_propose_conf_change(n->raft, &cc);
            if (rc == RAFT_ECONFPENDING)
                rc = -EBUSY;
            else if (rc)
                rc = -EAGAIN;
        }
    }
    if (rc) {
        free(w);
        return rc;
    }
    n->conf_waiter = w;
    n->dirty = true;
    return 0;
}

int node__transfer_leader(struct node *n, uint64_t to, node_barrier_cb cb, void *arg) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(cb != NULL);
    if (!member_find(n, to)) return -ENOENT;
    if (n->move_waiter) return -EBUSY;
    if (n->leader != n->id) return -EPERM;
    if (to == n->id) {
        cb(arg, 0);
        return 0;
    }
    int rc = raft_transfer_leadership(n->raft, to);
    if (rc) return rc == RAFT_ENOLEADER ? -EAGAIN : -EINVAL;
    struct waiter *w = calloc(1, sizeof *w);
    if (!w) return -ENOMEM;
    w->member_id = to;
    w->deadline_ms = now_ms(n) + n->cfg->request_timeout_ms;
    w->cb = cb;
    w->arg = arg;
    n->move_waiter = w;
    n->dirty = true;
    return 0;
}

/* ------------------------------------------------------------ read barriers */

static void barrier_ask(struct node *n, struct barrier *b) {
    if (b->asked) return;
    unsigned char ctx[8];
    for (int i = 0; i < 8; i++) ctx[i] = (unsigned char)(b->id >> (8 * i));
    if (raft_read_index(n->raft, ctx, sizeof ctx) == 0) b->asked = true;
}

int node__read_barrier(struct node *n, node_barrier_cb cb, void *arg) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(cb != NULL);
    struct barrier *b = calloc(1, sizeof *b);
    if (!b) return -ENOMEM;
    b->id = ++n->next_barrier;
    NODE_ASSERT(b->id != 0);
    b->deadline_ms = now_ms(n) + n->cfg->request_timeout_ms;
    b->cb = cb;
    b->arg = arg;
    struct barrier **pp = &n->barriers;
    while (*pp) pp = &(*pp)->next;
    *pp = b;
    barrier_ask(n, b);
    n->dirty = true;
    return 0;
}

static void barriers_read_states(struct node *n, const struct raft_update *u) {
    for (size_t i = 0; i < u->n_read_states; i++) {
        const struct raft_read_state *rs = &u->read_states[i];
        if (rs->context.len != 8) continue;
        uint64_t id = 0;
        for (int k = 0; k < 8; k++)
            id |= (uint64_t)((const unsigned char *)rs->context.base)[k] << (8 * k);
        for (struct barrier *b = n->barriers; b; b = b->next)
            if (b->id == id) b->index = rs->index ? rs->index : 1;
    }
}

/* Answers barriers whose index is applied; with now != 0, also times out
 * and retries the rest. */
static void barriers_sweep(struct node *n, uint64_t now, int cancel_err) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(cancel_err <= 0);
    uint64_t applied = store_applied_index(n->store);
    struct barrier **pp = &n->barriers;
    while (*pp) {
        struct barrier *b = *pp;
        int err = 1;
        if (cancel_err)
            err = cancel_err;
        else if (b->index && applied >= b->index)
            err = 0;
        else if (now && now >= b->deadline_ms)
            err = -ETIMEDOUT;
        if (err <= 0) {
            *pp = b->next;
            b->cb(b->arg, err);
            free(b);
            continue;
        }
        if (now) barrier_ask(n, b);
        pp = &b->next;
    }
}

static void waiters_sweep(struct node *n, uint64_t now, int cancel_err) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(cancel_err <= 0);
    if (n->move_waiter) {
        if (cancel_err)
            waiter_finish(&n->move_waiter, cancel_err);
        else if (n->leader == n->move_waiter->member_id)
            waiter_finish(&n->move_waiter, 0);
        else if (now && now >= n->move_waiter->deadline_ms)
            waiter_finish(&n->move_waiter, -ETIMEDOUT);
    }
    if (n->conf_waiter) {
        if (cancel_err)
            waiter_finish(&n->conf_waiter, cancel_err);
        else if (now && now >= n->conf_waiter->deadline_ms)
            waiter_finish(&n->conf_waiter, -ETIMEDOUT);
    }
}

/* ------------------------------------------------------------ raft driver */

static void try_propose(struct node *n, struct proposal *p) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(p->data != NULL);
    if (p->proposed) return;
    int rc = raft_propose(n->raft, p->data, p->len);
    if (rc == 0) {
        p->proposed = true;
    } else if (rc != RAFT_ENOLEADER && rc != RAFT_EDROPPED) {
        /* Not retryable: answer now. */
        struct proposal *q = pending_take(n, p->id);
        if (q) proposal_finish(n, q, -EIO, NULL);
    }
    /* No leader yet (election under way): retried on every tick until the
     * deadline. */
}

int node__apply_entry(struct node *n, const struct raft_entry *e) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(e->index > 0);
    int rc;
    if (e->type == RAFT_ENTRY_CONF_CHANGE) {
        struct raft_conf_change cc;
        struct raft_conf_state cs;
        rc = raft_conf_change_decode(e->data.base, e->data.len, &cc);
        if (rc) {
            logf_("entry %" PRIu64 ": undecodable configuration change: %s", e->index,
                  raft_strerror(rc));
            return store_apply_noop(n->store, e->index);
        }
        int crc = raft_apply_conf_change(n->raft, &cc, &cs);
        if (crc) {
            /* Refused (e.g. removing an unknown member): the entry is applied
             * and the configuration stays as it was. */
            struct raft_status st;
            raft_status(n->raft, &st);
            cs = st.conf;
        }
        return members_apply_conf(n, e->index, &cc, crc, &cs);
    }
    if (e->data.len == 0) return store_apply_noop(n->store, e->index);
    if (((const unsigned char *)e->data.base)[0] == MEMBER_UPDATE_ENTRY)
        return members_apply_update(n, e);

    struct store_result *res = NULL;
    rc = store_apply(n->store, e->index, e->data.base, e->data.len, &res);
    if (rc) return rc;
    if (!res) return 0; /* already applied before a restart */
    struct proposal *p = res->request_id ? pending_take(n, res->request_id) : NULL;
    if (n->apply_hook) n->apply_hook(n->hook_ctx, res);
    if (p) proposal_finish(n, p, res->err, res);
    store_result_free(res);
    return 0;
}

static void maybe_compact(struct node *n) {
    NODE_ASSERT_LOOP(n);
    uint64_t applied = store_applied_index(n->store);
    uint64_t every = n->cfg->snapshot_count ? n->cfg->snapshot_count : 1;
    if (applied < n->last_compact_index + every) return;
    uint64_t keep = every / 2 < COMPACT_CATCHUP_ENTRIES_MAX ? every / 2
                                                            : COMPACT_CATCHUP_ENTRIES_MAX;
    if (applied <= keep) return;
    int rc = store_raft_compact(n->store, applied - keep);
    if (rc) {
        logf_("log compaction at %" PRIu64 " failed: %s", applied - keep, store_strerror(rc));
        return;
    }
    n->last_compact_index = applied;
}

void node__snapshot_report(struct node *n, uint64_t to, bool ok) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(to != RAFT_NONE);
    if (n->raft) {
        raft_report_snapshot(n->raft, to, ok);
        n->dirty = true;
    }
}

static void send_messages(struct node *n, const struct raft_update *u) {
    for (size_t i = 0; i < u->n_msgs; i++) {
        const struct raft_msg *m = &u->msgs[i];
        NODE_ASSERT(m->from == n->id);
        NODE_ASSERT(m->to != n->id);
        if (m->type == RAFT_MSG_SNAP) {
            n->io.send_snapshot(n->io.ctx, m);
            continue;
        }
        size_t cap = raft_encoded_size(m), len;
        void *buf = malloc(cap);
        int rc = buf ? raft_encode(m, buf, cap, &len) : RAFT_ENOMEM;
        if (rc == 0) rc = n->io.send(n->io.ctx, m->to, buf, len);
        free(buf);
        if (rc) raft_report_unreachable(n->raft, m->to);
    }
}

void node__recv_message(struct node *n, uint64_t from_id, const void *buf, size_t len) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(buf != NULL);
    struct raft_msg m;
    int rc = raft_decode(buf, len, &m);
    if (rc) {
        logf_("dropping a malformed message from %016" PRIx64 ": %s", from_id, raft_strerror(rc));
        return;
    }
    if (m.from != from_id) {
        logf_("dropping a message from %016" PRIx64 " that claims to be from %016" PRIx64, from_id,
              m.from);
    } else {
        if (m.type == RAFT_MSG_APP || m.type == RAFT_MSG_HEARTBEAT) n->ever_joined = true;
        raft_step(n->raft, &m);
        n->dirty = true;
    }
    raft_msg_release(&m);
}

void node__snapshot_received(struct node *n, uint64_t from_id, const struct raft_msg *m) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(m->type == RAFT_MSG_SNAP);
    NODE_ASSERT(m->has_snapshot);
    n->snap_pending = true;
    n->pending_snap_index = m->snapshot.meta.index;
    logf_("received snapshot at index %" PRIu64 " from %016" PRIx64, m->snapshot.meta.index,
          from_id);
    raft_step(n->raft, m);
    n->dirty = true;
}

/* Raft accepted a snapshot: swap the received checkpoint in as the store. */
static int install_snapshot(struct node *n, const struct raft_update *u) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(u->has_snapshot);
    const struct raft_snapshot_meta *meta = &u->snapshot.meta;
    if (!n->snap_pending || n->pending_snap_index != meta->index) {
        logf_("Raft installs a snapshot at %" PRIu64 " that was not received", meta->index);
        return -1;
    }
    struct raft_hard_state hs;
    if (u->has_hard_state) {
        hs = u->hard_state;
    } else {
        struct raft_status st;
        raft_status(n->raft, &st);
        hs = (struct raft_hard_state){st.term, st.vote, st.commit};
    }
    if (hs.commit < meta->index) hs.commit = meta->index;
    pthread_rwlock_wrlock(&n->store_lock);
    int rc = n->io.install_snapshot(n->io.ctx, &n->store);
    if (rc == 0) {
        NODE_ASSERT(n->store != NULL);
        rc = store_raft_install_snapshot(n->store, meta, &hs);
        if (rc) logf_("installing the snapshot failed: %s", store_strerror(rc));
    }
    pthread_rwlock_unlock(&n->store_lock);
    n->snap_pending = false;
    if (n->io.install_done) n->io.install_done(n->io.ctx, rc == 0);
    if (rc == 0) {
        NODE_ASSERT(store_applied_index(n->store) == meta->index);
        n->last_compact_index = meta->index;
        logf_("installed snapshot at index %" PRIu64, meta->index);
        members_reload(n);
        if (n->restore_hook) n->restore_hook(n->restore_ctx);
    }
    return rc;
}

static int persist(struct node *n, const struct raft_update *u) {
    NODE_ASSERT_LOOP(n);
    /* Entries of one update are consecutive (store_raft_save's contract). */
    for (size_t i = 1; i < u->n_entries; i++)
        NODE_ASSERT(u->entries[i].index == u->entries[i - 1].index + 1);
    if (u->has_snapshot && install_snapshot(n, u)) return -1;
    if (u->has_hard_state || u->n_entries) {
        int rc = store_raft_save(n->store, u->has_hard_state ? &u->hard_state : NULL, u->entries,
                                 u->n_entries, u->must_sync);
        if (rc) {
            logf_("persisting the Raft log failed: %s", store_strerror(rc));
            return -1;
        }
    }
    return 0;
}

void node__process(struct node *n) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(n->raft != NULL);
    n->dirty = false;
    while (!n->fatal && raft_has_update(n->raft)) {
        struct raft_update u;
        int rc = raft_get_update(n->raft, &u);
        if (rc) {
            logf_("raft: %s", raft_strerror(rc));
            n->fatal = true;
            break;
        }
        if (u.leader != n->leader) {
            if (u.leader != RAFT_NONE)
                logf_("leader is %016" PRIx64 "%s", u.leader,
                      u.leader == n->id ? " (this member)" : "");
            else
                logf_("no leader");
            bool was = n->leader == n->id, is = u.leader == n->id;
            n->leader = u.leader;
            if (u.leader != RAFT_NONE) n->ever_joined = true;
            if (was != is && n->leader_hook) n->leader_hook(n->hook_ctx, is);
        }
        /* A leader sends while it persists (Raft thesis 10.2.1: it counts
         * its own log only once persisted); everyone else persists first. */
        if (u.role == RAFT_LEADER) {
            send_messages(n, &u);
            if (persist(n, &u)) {
                n->fatal = true;
                break;
            }
        } else {
            if (persist(n, &u)) {
                n->fatal = true;
                break;
            }
            send_messages(n, &u);
        }
        for (size_t i = 0; i < u.n_committed; i++) {
            const struct raft_entry *e = &u.committed[i];
            /* Raft hands committed entries over in order, without gaps. */
            if (i > 0) NODE_ASSERT(e->index == u.committed[i - 1].index + 1);
            NODE_ASSERT(e->index <= store_applied_index(n->store) + 1);
            rc = node__apply_entry(n, e);
            if (rc) {
                logf_("applying entry %" PRIu64 " failed: %s", e->index, store_strerror(rc));
                n->fatal = true;
                break;
            }
            NODE_ASSERT(store_applied_index(n->store) >= e->index);
            if (n->io.applied) n->io.applied(n->io.ctx, e);
        }
        if (n->fatal) break;
        barriers_read_states(n, &u);
        raft_advance(n->raft, &u);
        role_refresh(n);
        maybe_compact(n);
    }
    barriers_sweep(n, 0, 0);
    waiters_sweep(n, 0, 0);
    if (n->fatal) node_stop(n);
}

/* A read barrier asked from another thread, waiting for the loop. */
struct barrier_req {
    struct barrier_req *next;
    node_barrier_cb cb;
    void *arg;
};

int node__read_barrier_async(struct node *n, node_barrier_cb cb, void *arg) {
    struct barrier_req *b = calloc(1, sizeof *b);
    if (!b) return -ENOMEM;
    b->cb = cb;
    b->arg = arg;
    pthread_mutex_lock(&n->mu);
    if (n->stopping) {
        pthread_mutex_unlock(&n->mu);
        free(b);
        return -ECANCELED;
    }
    if (n->bq_tail)
        n->bq_tail->next = b;
    else
        n->bq_head = b;
    n->bq_tail = b;
    pthread_mutex_unlock(&n->mu);
    n->io.wake(n->io.ctx);
    return 0;
}

void node__drain(struct node *n) {
    NODE_ASSERT_LOOP(n);
    pthread_mutex_lock(&n->mu);
    struct proposal *p = n->q_head;
    n->q_head = n->q_tail = NULL;
    struct barrier_req *b = n->bq_head;
    n->bq_head = n->bq_tail = NULL;
    pthread_mutex_unlock(&n->mu);
    while (b) {
        struct barrier_req *next = b->next;
        int rc = node__read_barrier(n, b->cb, b->arg);
        if (rc) b->cb(b->arg, rc);
        free(b);
        b = next;
    }
    uint64_t deadline = now_ms(n) + n->cfg->request_timeout_ms;
    while (p) {
        struct proposal *next = p->next;
        p->next = NULL;
        p->deadline_ms = deadline;
        pending_insert(n, p);
        try_propose(n, p);
        p = next;
    }
}

void node__tick(struct node *n) {
    NODE_ASSERT_LOOP(n);
    NODE_ASSERT(n->raft != NULL);
    raft_tick(n->raft);
    uint64_t now = now_ms(n);
    for (unsigned b = 0; b < PENDING_BUCKETS; b++) {
        struct proposal **pp = &n->pending[b];
        while (*pp) {
            struct proposal *p = *pp;
            NODE_ASSERT((p->id & (PENDING_BUCKETS - 1)) == b);
            if (now >= p->deadline_ms) {
                *pp = p->next;
                p->next = NULL;
                NODE_ASSERT(n->n_pending > 0);
                n->n_pending--;
                proposal_finish(n, p, -ETIMEDOUT, NULL);
                continue;
            }
            try_propose(n, p);
            if (*pp == p) pp = &p->next;
        }
    }
    barriers_sweep(n, now, 0);
    waiters_sweep(n, now, 0);
    maybe_publish(n);
    n->dirty = true;
}

void node__core_cancel(struct node *n) {
    NODE_ASSERT_LOOP(n);
    pthread_mutex_lock(&n->mu);
    n->stopping = true;
    pthread_mutex_unlock(&n->mu);
    barriers_sweep(n, 0, -ECANCELED);
    waiters_sweep(n, 0, -ECANCELED);
    node__drain(n);
    for (unsigned b = 0; b < PENDING_BUCKETS; b++) {
        while (n->pending[b]) {
            struct proposal *p = n->pending[b];
            n->pending[b] = p->next;
            p->next = NULL;
            NODE_ASSERT(n->n_pending > 0);
            n->n_pending--;
            proposal_finish(n, p, -ECANCELED, NULL);
        }
    }
    NODE_ASSERT(n->n_pending == 0);
    NODE_ASSERT(n->barriers == NULL);
    NODE_ASSERT(n->conf_waiter == NULL);
    NODE_ASSERT(n->move_waiter == NULL);
}

static struct raft_storage *cur_storage(void *data) {
    struct node *n = data;
    return store_raft_storage(n->store);
}
static int fwd_initial_state(void *data, struct raft_hard_state *hs, struct raft_conf_state *cs) {
    struct raft_storage *s = cur_storage(data);
    return s->initial_state(s->data, hs, cs);
}
static int fwd_entries(void *data, uint64_t lo, uint64_t hi, uint64_t max_bytes,
                       struct raft_entry **out, size_t *n_out) {
    struct raft_storage *s = cur_storage(data);
    return s->entries(s->data, lo, hi, max_bytes, out, n_out);
}
static int fwd_term(void *data, uint64_t i, uint64_t *term) {
    struct raft_storage *s = cur_storage(data);
    return s->term(s->data, i, term);
}
static int fwd_first_index(void *data, uint64_t *index) {
    struct raft_storage *s = cur_storage(data);
    return s->first_index(s->data, index);
}
static int fwd_last_index(void *data, uint64_t *index) {
    struct raft_storage *s = cur_storage(data);
    return s->last_index(s->data, index);
}
static int fwd_snapshot(void *data, struct raft_snapshot *snap) {
    struct raft_storage *s = cur_storage(data);
    return s->snapshot(s->data, snap);
}

static int start_raft(struct node *n, uint64_t seed, const struct node_tuning *t) {
    n->storage = (struct raft_storage){
        .data = n,
        .initial_state = fwd_initial_state,
        .entries = fwd_entries,
        .term = fwd_term,
        .first_index = fwd_first_index,
        .last_index = fwd_last_index,
        .snapshot = fwd_snapshot,
    };
    const struct server_config *cfg = n->cfg;
    struct raft_config rc_cfg = {
        .id = n->id,
        .election_tick = cfg->election_timeout_ms / cfg->heartbeat_interval_ms,
        .heartbeat_tick = 1,
        .applied = store_applied_index(n->store),
        .max_size_per_msg = t->max_size_per_msg,
        .max_inflight_msgs = t->max_inflight_msgs,
        .max_committed_size_per_update = t->max_committed_size_per_update,
        .check_quorum = true,
        .pre_vote = true,
        .seed = seed,
        .storage = &n->storage,
    };
    n->last_compact_index = rc_cfg.applied;
    int rc = raft_new(&rc_cfg, &n->raft);
    if (rc) {
        logf_("cannot start Raft: %s", raft_strerror(rc));
        return -1;
    }
    role_refresh(n);
    /* A single voter need not wait an election timeout to lead. */
    struct raft_status st;
    raft_status(n->raft, &st);
    bool listed = false;
    for (uint32_t i = 0; i < st.conf.n_voters; i++) listed |= st.conf.voters[i] == n->id;
    for (uint32_t i = 0; i < st.conf.n_learners; i++) listed |= st.conf.learners[i] == n->id;
    if (!listed && st.conf.n_voters > 0)
        logf_("warning: this member (%016" PRIx64 ") is not in the stored cluster configuration; "
              "member ids derive from the first peer URL and the cluster token, so a changed "
              "--initial-advertise-peer-urls or --initial-cluster-token makes a new member",
              n->id);
    if (st.conf.n_voters == 1 && st.conf.voters[0] == n->id) raft_campaign(n->raft);
    return 0;
}

/* A new member of a new cluster records the initial configuration. */
static int bootstrap(struct node *n) {
    const struct server_config *cfg = n->cfg;
    struct raft_hard_state hs;
    struct raft_conf_state cs;
    struct raft_storage *rs = store_raft_storage(n->store);
    int rc = rs->initial_state(rs->data, &hs, &cs);
    if (rc) {
        logf_("cannot read the Raft state: %s", store_strerror(rc));
        return -1;
    }
    if (cs.n_voters == 0 && cs.n_learners == 0 && !cfg->initial_cluster_existing) {
        memset(&cs, 0, sizeof cs);
        for (size_t i = 0; i < cfg->n_members; i++) cs.voters[cs.n_voters++] = cfg->members[i].id;
        rc = store_raft_bootstrap(n->store, &cs);
        if (rc) {
            logf_("cannot bootstrap the cluster configuration: %s", store_strerror(rc));
            return -1;
        }
    }
    return 0;
}

int node__core_init(struct node *n, const struct server_config *cfg, const struct node_io *io,
                    uint64_t next_id) {
    NODE_ASSERT(cfg != NULL);
    NODE_ASSERT(io->now_ms != NULL);
    NODE_ASSERT(io->wake != NULL);
    NODE_ASSERT(io->stop != NULL);
    NODE_ASSERT(io->log != NULL);
    NODE_ASSERT(io->send != NULL);
    NODE_ASSERT(io->send_snapshot != NULL);
    NODE_ASSERT(io->install_snapshot != NULL);
    n->cfg = cfg;
    n->io = *io;
    for (size_t i = 0; i < cfg->n_members; i++)
        if (strcmp(cfg->members[i].name, cfg->name) == 0) n->id = cfg->members[i].id;
    n->next_id = next_id & REQUEST_SEQ_MASK;
    if (pthread_mutex_init(&n->mu, NULL) != 0) return -ENOMEM;
    if (pthread_rwlock_init(&n->store_lock, NULL) != 0) {
        pthread_mutex_destroy(&n->mu);
        return -ENOMEM;
    }
    return 0;
}

int node__core_start(struct node *n, uint64_t raft_seed, const struct node_tuning *tuning) {
    static const struct node_tuning defaults = NODE_TUNING_DEFAULT;
    NODE_ASSERT(n->store != NULL);
    NODE_ASSERT(n->raft == NULL);
    n->loop_thread = pthread_self();
    if (bootstrap(n)) return -1;
    if (members_load(n)) return -1;
    return start_raft(n, raft_seed, tuning ? tuning : &defaults);
}

void node__core_fini(struct node *n) {
    NODE_ASSERT(n->n_pending == 0);
    raft_free(n->raft);
    n->raft = NULL;
    pthread_rwlock_destroy(&n->store_lock);
    pthread_mutex_destroy(&n->mu);
}
