/*
 * node.c - the quorumfs node loop: one libuv loop on one thread that ticks
 * Raft, turns submitted requests into proposals, persists every Raft update
 * in one synced RocksDB write (group commit), applies committed entries to
 * the store in order, answers the waiter of each applied request and tells
 * the mount which keys changed so it can drop the kernel's caches.
 *
 * Invariants:
 * - Only the loop thread touches raft, the pending table and the store's
 *   write side. Other threads hand requests over through `queue` (guarded by
 *   `mu`) and wake the loop with `wake`.
 * - A request is answered exactly once: when its entry is applied on this
 *   node, when its deadline passes (-ETIMEDOUT, the write may still commit
 *   later, exactly as an etcd client timeout), or at shutdown (-ECANCELED).
 * - Hard state and entries of an update are persisted before its messages
 *   are sent (Raft's Ready contract), and before the entries are applied.
 */
#define _GNU_SOURCE /* pthread_timedjoin_np */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "net/net.h"
#include "raft/raft.h"
#include "server/etcd.h"
#include "server/member_mount.h"
#include "server/node.h"
#include "server/server.h"
#include "store/store.h"

/* Buckets of the pending-request table (a power of two). */
#define PENDING_BUCKETS 4096u
/* Most requests queued or in flight at once; more get -EAGAIN. */
#define PENDING_MAX 65536u
/* Entries kept behind a log compaction so that a briefly lagging follower
 * catches up from the log rather than a snapshot (etcd keeps 5000). */
#define COMPACT_CATCHUP_ENTRIES_MAX 5000u
/* Request ids: the low 40 bits count, the bits above name the member. */
#define REQUEST_SEQ_MASK ((UINT64_C(1) << 40) - 1)

struct proposal {
    struct proposal *next;  /* queue link, then bucket link */
    uint64_t id;
    void *data;             /* encoded store request (owned) */
    size_t len;
    uint64_t deadline_ms;   /* uv_now() based */
    bool proposed;          /* handed to raft_propose successfully */
    enum node_origin origin;
    node_done_cb cb;
    void *arg;
};

/* A linearizable read waiting for its read index, then for apply. */
struct barrier {
    struct barrier *next;
    uint64_t id;          /* the ReadIndex context */
    uint64_t index;       /* 0 until the leader answered */
    bool asked;           /* raft_read_index accepted it */
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

struct node {
    const struct server_config *cfg;
    uv_loop_t loop;
    uv_timer_t tick_timer;
    uv_async_t wake;
    uv_signal_t sig_int, sig_term, sig_hup;

    /* The store. Readers on other threads hold store_lock shared; the loop
     * holds it exclusively only while it swaps in a received snapshot. */
    pthread_rwlock_t store_lock;
    struct store *store;
    struct raft *raft;
    uint64_t id;

    /* Raft's view of the log: forwards to the current store's storage, so a
     * store swapped in from a snapshot is what Raft reads next. */
    struct raft_storage storage;

    /* Peers (NULL for a single-member cluster with no peer listener). */
    struct net_transport *net;
    uv_check_t check;        /* runs process() once per loop iteration */
    bool dirty;              /* raft may have an update */
    char *pending_snap_dir;  /* received checkpoint not yet installed */
    uint64_t pending_snap_index;
    uint64_t snap_seq;       /* names outgoing checkpoint directories */
    bool ever_joined;        /* heard from a leader at least once */
    uint64_t rejected_by[SERVER_MEMBERS_MAX]; /* peers that refused our handshake */
    size_t n_rejected_by;

    /* Submissions from other threads; protected by mu. */
    pthread_mutex_t mu;
    struct proposal *q_head, *q_tail;
    struct barrier_req *bq_head, *bq_tail; /* node__read_barrier_async; mu */
    bool stopping; /* protected by mu: no new submissions */
    size_t n_outstanding; /* protected by mu: queued + pending */

    /* Loop thread only. */
    struct proposal *pending[PENDING_BUCKETS];
    uint64_t next_id;  /* protected by mu; see node__submit */
    uint64_t last_compact_index;
    uint64_t leader;
    bool fatal;        /* an apply or persist failed: stop */
    /* Raft's configuration lists this member as a learner. Written by the
     * loop thread (role_refresh), read by node__submit on any thread. */
    atomic_bool learner;

    /* Membership as etcd shows it (names, URLs); loop thread. Raft's
     * configuration decides who votes; this table only describes members. */
    size_t n_members;
    struct node_member members[SERVER_MEMBERS_MAX];
    uint64_t cluster_id;
    bool published; /* our client URLs were replicated */
    uint64_t publish_retry_ms; /* uv_now() before which we do not propose again */

    /* Loop-thread waiters of the etcd services. */
    struct barrier *barriers;   /* read barriers, oldest first */
    uint64_t next_barrier;
    struct waiter *conf_waiter; /* the one pending membership change */
    struct waiter *move_waiter; /* the one pending leadership transfer */
    node_apply_hook apply_hook;
    node_leader_hook leader_hook;
    void *hook_ctx;
    node_restore_hook restore_hook;
    void *restore_ctx;

    /* The etcd v3 API server. */
    struct api_server *api;

    /* The --mount process (server/member_mount.c); NULL without --mount. */
    struct member_mount *mm;
};

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("quorumfs: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

struct store *node__store_acquire(struct node *n) {
    pthread_rwlock_rdlock(&n->store_lock);
    return n->store;
}

void node__store_release(struct node *n) { pthread_rwlock_unlock(&n->store_lock); }

int node__errno(int rc) {
    switch (rc) {
    case 0: return 0;
    case STORE_ETOOLARGE: return -EFBIG;
    case STORE_ENOSPACE: return -ENOSPC;
    case STORE_EKEYTOOLARGE: return -ENAMETOOLONG;
    case STORE_EKEYEMPTY: return -EINVAL;
    case STORE_ENOMEM: return -ENOMEM;
    case STORE_EKEYNOTFOUND: return -ENOENT;
    case STORE_ETOOMANYOPS: return -E2BIG;
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
    struct proposal **b = bucket(n, p->id);
    p->next = *b;
    *b = p;
}

static struct proposal *pending_take(struct node *n, uint64_t id) {
    for (struct proposal **pp = bucket(n, id); *pp; pp = &(*pp)->next) {
        if ((*pp)->id == id) {
            struct proposal *p = *pp;
            *pp = p->next;
            p->next = NULL;
            return p;
        }
    }
    return NULL;
}

static void proposal_finish(struct node *n, struct proposal *p, int err,
                            const struct store_result *res) {
    p->cb(p->arg, err, res);
    free(p->data);
    free(p);
    pthread_mutex_lock(&n->mu);
    n->n_outstanding--;
    pthread_mutex_unlock(&n->mu);
}

bool node__is_learner(struct node *n) { return atomic_load(&n->learner); }

/* Keeps n->learner in step with Raft's configuration: called once Raft
 * exists and after every update (conf changes apply, snapshots restore). */
static void role_refresh(struct node *n) {
    struct raft_status rs;
    raft_status(n->raft, &rs);
    bool learner = false;
    for (uint32_t i = 0; i < rs.conf.n_learners; i++)
        if (rs.conf.learners[i] == n->id) learner = true;
    atomic_store(&n->learner, learner);
}

int node__submit(struct node *n, struct store_request *req, enum node_origin origin,
                 node_done_cb cb, void *arg) {
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
    do
        seq = ++n->next_id & REQUEST_SEQ_MASK;
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
    uv_async_send(&n->wake);
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
#define MEMBERS_BLOB_MAX \
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
    if (!legacy && (cfg->initial_cluster_existing || store_applied_index(n->store) == 0))
        return 0;
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

static void first_url(const char *urls, char out[SERVER_URL_MAX]) {
    size_t ul = strcspn(urls, ",");
    if (ul >= SERVER_URL_MAX) ul = SERVER_URL_MAX - 1;
    memcpy(out, urls, ul);
    out[ul] = '\0';
}

/* The handshake compares member lists: keep the transport's in step with
 * the member table (id and first peer URL of each member). A member no
 * longer in the table (removed) keeps the list it has: it is stopping. */
static void net_set_members(struct node *n) {
    if (!n->net || !member_find(n, n->id)) return;
    struct net_member nm[SERVER_MEMBERS_MAX];
    char urls[SERVER_MEMBERS_MAX][SERVER_URL_MAX];
    for (size_t i = 0; i < n->n_members; i++) {
        first_url(n->members[i].peer_urls, urls[i]);
        nm[i] = (struct net_member){n->members[i].id, urls[i]};
    }
    int rc = net_transport_set_members(n->net, nm, n->n_members);
    if (rc) logf_("cannot update the peer member list: %s", net_strerror(rc));
}

/* The table changed from old[0..n_old): dial the members that appeared (or
 * moved), forget those that went, and update the handshake's list. */
static void net_sync_peers(struct node *n, const struct node_member *old, size_t n_old) {
    if (!n->net) return;
    char a[SERVER_URL_MAX], b[SERVER_URL_MAX];
    for (size_t i = 0; i < n_old; i++) {
        if (old[i].id == n->id) continue;
        const struct node_member *now = member_find(n, old[i].id);
        first_url(old[i].peer_urls, a);
        if (now) first_url(now->peer_urls, b);
        if (!now || strcmp(a, b) != 0) net_transport_remove_peer(n->net, old[i].id);
    }
    for (size_t i = 0; i < n->n_members; i++) {
        const struct node_member *m = &n->members[i];
        if (m->id == n->id) continue;
        const struct node_member *was = NULL;
        for (size_t k = 0; k < n_old; k++)
            if (old[k].id == m->id) was = &old[k];
        first_url(m->peer_urls, b);
        if (was) first_url(was->peer_urls, a);
        if (was && strcmp(a, b) == 0) continue;
        int rc = b[0] ? net_transport_add_peer(n->net, m->id, b) : NET_EINVAL;
        if (rc) logf_("peer %016" PRIx64 " (%s): %s", m->id, b, net_strerror(rc));
    }
    net_set_members(n);
}

/* Applies conf change entry `index` (Raft's outcome crc, configuration cs
 * after it) to the member table and stores both in one batch. */
static int members_apply_conf(struct node *n, uint64_t index, const struct raft_conf_change *cc,
                              int crc, const struct raft_conf_state *cs) {
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
    if (crc == 0) net_sync_peers(n, old, n_old);
    struct waiter *w = n->conf_waiter;
    if (w && w->member_id == cc->node_id) waiter_finish(&n->conf_waiter, crc ? -EINVAL : 0);
    if (crc == 0 && cc->type == RAFT_CC_REMOVE && cc->node_id == n->id) {
        logf_("this member was removed from the cluster; stopping");
        uv_stop(&n->loop); /* server_run unmounts, then refuses new work */
    }
    return 0;
}

/* Applies member-update entry e (MEMBER_UPDATE_ENTRY) and stores the table
 * in the same batch. */
static int members_apply_update(struct node *n, const struct raft_entry *e) {
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
    if (strcmp(saved.peer_urls, cur->peer_urls) != 0) net_sync_peers(n, old, n->n_members);
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
    net_sync_peers(n, old, n_old);
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
    if (n->published || n->leader == RAFT_NONE) return;
    uint64_t now = uv_now(&n->loop);
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

uv_loop_t *node__loop(struct node *n) { return &n->loop; }
const struct server_config *node__config(struct node *n) { return n->cfg; }

void node__set_restore_hook(struct node *n, node_restore_hook restore, void *ctx) {
    n->restore_hook = restore;
    n->restore_ctx = ctx;
}

void node__set_hooks(struct node *n, node_apply_hook apply, node_leader_hook leader, void *ctx) {
    n->apply_hook = apply;
    n->leader_hook = leader;
    n->hook_ctx = ctx;
}

void node__status(struct node *n, struct node_status *st) {
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
    w->deadline_ms = uv_now(&n->loop) + n->cfg->request_timeout_ms;
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
            struct raft_conf_change cc = {
                .type = (uint8_t)type, .node_id = m->id, .context = {ctx, ctx_len}};
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
    w->deadline_ms = uv_now(&n->loop) + n->cfg->request_timeout_ms;
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
    struct barrier *b = calloc(1, sizeof *b);
    if (!b) return -ENOMEM;
    b->id = ++n->next_barrier;
    b->deadline_ms = uv_now(&n->loop) + n->cfg->request_timeout_ms;
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
        for (int k = 0; k < 8; k++) id |= (uint64_t)((const unsigned char *)rs->context.base)[k] << (8 * k);
        for (struct barrier *b = n->barriers; b; b = b->next)
            if (b->id == id) b->index = rs->index ? rs->index : 1;
    }
}

/* Answers barriers whose index is applied; with now != 0, also times out
 * and retries the rest. */
static void barriers_sweep(struct node *n, uint64_t now, int cancel_err) {
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

static int apply_entry(struct node *n, const struct raft_entry *e) {
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

/* ------------------------------------------------------------ peers */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Removes a directory tree (a checkpoint); errors are ignored. */
static void rm_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

struct snap_send {
    struct node *n;
    char dir[1200];
};

static void snap_sent_cb(void *cb_data, uint64_t to_id, int status, const char *reason) {
    struct snap_send *ss = cb_data;
    struct node *n = ss->n;
    if (status)
        logf_("snapshot to %016" PRIx64 " failed: %s%s%s", to_id, net_strerror(status),
              reason ? ": " : "", reason ? reason : "");
    else
        logf_("snapshot to %016" PRIx64 " delivered", to_id);
    rm_tree(ss->dir);
    free(ss);
    if (n->raft) {
        raft_report_snapshot(n->raft, to_id, status == 0);
        n->dirty = true;
    }
}

/* A follower is behind the compacted log: stream it a checkpoint of the
 * store, with the SNAP message (rewritten to the checkpoint's own metadata)
 * as the stream's metadata. */
static void send_snapshot(struct node *n, const struct raft_msg *m) {
    struct snap_send *ss = calloc(1, sizeof *ss);
    if (!ss) goto err;
    ss->n = n;
    snprintf(ss->dir, sizeof ss->dir, "%s/snap-out-%016" PRIx64 "-%" PRIu64, n->cfg->data_dir,
             m->to, ++n->snap_seq);
    rm_tree(ss->dir);
    struct raft_msg copy = *m;
    int rc = store_checkpoint(n->store, ss->dir, &copy.snapshot.meta);
    if (rc) {
        logf_("checkpoint for %016" PRIx64 " failed: %s", m->to, store_strerror(rc));
        goto err_dir;
    }
    copy.snapshot.data = (struct raft_buf){NULL, 0};
    size_t cap = raft_encoded_size(&copy), len;
    void *meta = malloc(cap);
    if (!meta || raft_encode(&copy, meta, cap, &len) != 0) {
        free(meta);
        goto err_dir;
    }
    rc = net_send_snapshot(n->net, m->to, meta, len, ss->dir, ss, snap_sent_cb);
    free(meta);
    if (rc == NET_EBUSY) { /* one is on its way; its report will come */
        rm_tree(ss->dir);
        free(ss);
        return;
    }
    if (rc) goto err_dir;
    logf_("sending snapshot at index %" PRIu64 " to %016" PRIx64, copy.snapshot.meta.index, m->to);
    return;
err_dir:
    rm_tree(ss->dir);
    free(ss);
err:
    raft_report_snapshot(n->raft, m->to, false);
}

static void send_messages(struct node *n, const struct raft_update *u) {
    if (!n->net) return;
    for (size_t i = 0; i < u->n_msgs; i++) {
        const struct raft_msg *m = &u->msgs[i];
        if (m->type == RAFT_MSG_SNAP) {
            send_snapshot(n, m);
            continue;
        }
        size_t cap = raft_encoded_size(m), len;
        void *buf = malloc(cap);
        int rc = buf ? raft_encode(m, buf, cap, &len) : RAFT_ENOMEM;
        if (rc == 0) rc = net_send(n->net, m->to, buf, len);
        free(buf);
        if (rc) raft_report_unreachable(n->raft, m->to);
    }
}

static void on_peer_message(void *data, uint64_t from_id, const void *buf, size_t len) {
    struct node *n = data;
    struct raft_msg m;
    int rc = raft_decode(buf, len, &m);
    if (rc) {
        logf_("dropping a malformed message from %016" PRIx64 ": %s", from_id, raft_strerror(rc));
        return;
    }
    if (m.from != from_id) {
        logf_("dropping a message from %016" PRIx64 " that claims to be from %016" PRIx64,
              from_id, m.from);
    } else {
        if (m.type == RAFT_MSG_APP || m.type == RAFT_MSG_HEARTBEAT) n->ever_joined = true;
        raft_step(n->raft, &m);
        n->dirty = true;
    }
    raft_msg_release(&m);
}

static void on_handshake_error(void *data, uint64_t peer_id, const char *addr,
                               const char *reason) {
    struct node *n = data;
    logf_("peer %016" PRIx64 " at %s: %s", peer_id, addr, reason);
    if (n->ever_joined || peer_id == 0) return;
    for (size_t i = 0; i < n->n_rejected_by; i++)
        if (n->rejected_by[i] == peer_id) return;
    if (n->n_rejected_by < SERVER_MEMBERS_MAX) n->rejected_by[n->n_rejected_by++] = peer_id;
    /* Every other member refuses us: we are the odd one out. */
    if (n->n_rejected_by + 1 >= n->cfg->n_members) {
        logf_("refusing to join: every peer rejected this member's cluster configuration "
              "(check --initial-cluster and --initial-cluster-token)");
        n->fatal = true;
        uv_stop(&n->loop);
    }
}

static void on_snapshot_done(void *data, uint64_t from_id, const void *meta, size_t meta_len,
                             const char *dir) {
    struct node *n = data;
    struct raft_msg m;
    int rc = raft_decode(meta, meta_len, &m);
    if (rc || m.type != RAFT_MSG_SNAP || !m.has_snapshot) {
        logf_("dropping a snapshot from %016" PRIx64 " with bad metadata", from_id);
        if (rc == 0) raft_msg_release(&m);
        rm_tree(dir);
        return;
    }
    if (n->pending_snap_dir) {
        rm_tree(n->pending_snap_dir);
        free(n->pending_snap_dir);
    }
    n->pending_snap_dir = strdup(dir);
    n->pending_snap_index = m.snapshot.meta.index;
    logf_("received snapshot at index %" PRIu64 " from %016" PRIx64, m.snapshot.meta.index,
          from_id);
    raft_step(n->raft, &m);
    raft_msg_release(&m);
    n->dirty = true;
}

static int open_store_at(struct node *n, struct store **out);

/* Raft accepted a snapshot: swap the received checkpoint in as the store. */
static int install_snapshot(struct node *n, const struct raft_update *u) {
    const struct raft_snapshot_meta *meta = &u->snapshot.meta;
    if (!n->pending_snap_dir || n->pending_snap_index != meta->index) {
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
    char db[1100], old[1100];
    snprintf(db, sizeof db, "%s/db", n->cfg->data_dir);
    snprintf(old, sizeof old, "%s/db.old", n->cfg->data_dir);
    rm_tree(old);
    pthread_rwlock_wrlock(&n->store_lock);
    store_close(n->store);
    n->store = NULL;
    int rc = -1;
    if (rename(db, old) != 0 || rename(n->pending_snap_dir, db) != 0) {
        logf_("cannot move the snapshot into place: %s", strerror(errno));
    } else if (open_store_at(n, &n->store) == 0) {
        rc = store_raft_install_snapshot(n->store, meta, &hs);
        if (rc) logf_("installing the snapshot failed: %s", store_strerror(rc));
    }
    pthread_rwlock_unlock(&n->store_lock);
    free(n->pending_snap_dir);
    n->pending_snap_dir = NULL;
    if (rc == 0) {
        rm_tree(old);
        n->last_compact_index = meta->index;
        logf_("installed snapshot at index %" PRIu64, meta->index);
        members_reload(n);
        if (n->restore_hook) n->restore_hook(n->restore_ctx);
    }
    return rc;
}

static int persist(struct node *n, const struct raft_update *u) {
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

static void process(struct node *n) {
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
            rc = apply_entry(n, &u.committed[i]);
            if (rc) {
                logf_("applying entry %" PRIu64 " failed: %s", u.committed[i].index,
                      store_strerror(rc));
                n->fatal = true;
                break;
            }
        }
        if (n->fatal) break;
        barriers_read_states(n, &u);
        raft_advance(n->raft, &u);
        role_refresh(n);
        maybe_compact(n);
    }
    barriers_sweep(n, 0, 0);
    waiters_sweep(n, 0, 0);
    if (n->fatal) uv_stop(&n->loop);
}

static void check_cb(uv_check_t *h) {
    struct node *n = h->data;
    if (n->dirty) process(n);
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
    uv_async_send(&n->wake);
    return 0;
}

static void drain_queue(struct node *n) {
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
    uint64_t deadline = uv_now(&n->loop) + n->cfg->request_timeout_ms;
    while (p) {
        struct proposal *next = p->next;
        p->next = NULL;
        p->deadline_ms = deadline;
        pending_insert(n, p);
        try_propose(n, p);
        p = next;
    }
}

static void wake_cb(uv_async_t *h) {
    struct node *n = h->data;
    drain_queue(n);
    n->dirty = true; /* processed once per loop iteration: group commit */
}

static void tick_cb(uv_timer_t *t) {
    struct node *n = t->data;
    raft_tick(n->raft);
    uint64_t now = uv_now(&n->loop);
    for (unsigned b = 0; b < PENDING_BUCKETS; b++) {
        struct proposal **pp = &n->pending[b];
        while (*pp) {
            struct proposal *p = *pp;
            if (now >= p->deadline_ms) {
                *pp = p->next;
                p->next = NULL;
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

/* ------------------------------------------------------------ mount */

static void log_line(const char *line) { logf_("%s", line); }

/* ------------------------------------------------------------ lifecycle */

static void signal_cb(uv_signal_t *s, int signum) {
    struct node *n = s->data;
    logf_("received %s, stopping", signum == SIGINT    ? "SIGINT"
                                   : signum == SIGTERM ? "SIGTERM"
                                                       : "SIGHUP");
    uv_stop(&n->loop); /* server_run unmounts, then refuses new work */
}

static void cancel_all(struct node *n) {
    barriers_sweep(n, 0, -ECANCELED);
    waiters_sweep(n, 0, -ECANCELED);
    drain_queue(n);
    for (unsigned b = 0; b < PENDING_BUCKETS; b++) {
        while (n->pending[b]) {
            struct proposal *p = n->pending[b];
            n->pending[b] = p->next;
            proposal_finish(n, p, -ECANCELED, NULL);
        }
    }
}

static void close_walk_cb(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static int open_store_at(struct node *n, struct store **out) {
    const struct server_config *cfg = n->cfg;
    char path[1100];
    snprintf(path, sizeof path, "%s/db", cfg->data_dir);
    struct store_options opt;
    store_options_init(&opt);
    opt.data_dir = path;
    opt.quota_bytes = cfg->quota_backend_bytes;
    opt.max_request_bytes = cfg->max_request_bytes;
    char err[512] = "";
    int rc = store_open(&opt, out, err, sizeof err);
    if (rc) {
        logf_("cannot open the store in %s: %s (%s)", path, store_strerror(rc), err);
        return -1;
    }
    return 0;
}

static int open_store(struct node *n) {
    const struct server_config *cfg = n->cfg;
    if (mkdir(cfg->data_dir, 0700) != 0 && errno != EEXIST) {
        logf_("cannot create data directory %s: %s", cfg->data_dir, strerror(errno));
        return -1;
    }
    if (open_store_at(n, &n->store)) return -1;
    /* A new member of a new cluster records the initial configuration. */
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

/* The peer transport: listens on the first --listen-peer-urls URL and dials
 * every other member of --initial-cluster. */
static int start_net(struct node *n) {
    const struct server_config *cfg = n->cfg;
    char url[SERVER_URL_MAX];
    size_t ulen = strcspn(cfg->listen_peer_urls, ",");
    if (ulen >= sizeof url) ulen = sizeof url - 1;
    memcpy(url, cfg->listen_peer_urls, ulen);
    url[ulen] = '\0';
    char snapdir[1100];
    snprintf(snapdir, sizeof snapdir, "%s/snap-in", cfg->data_dir);
    rm_tree(snapdir);
    if (mkdir(snapdir, 0700) != 0) {
        logf_("cannot create %s: %s", snapdir, strerror(errno));
        return -1;
    }
    struct net_options opt = {
        .id = n->id,
        .listen_url = url,
        .cluster_token = cfg->initial_cluster_token,
        .snapshot_dir = snapdir,
        .cb = {
            .on_message = on_peer_message,
            .on_handshake_error = on_handshake_error,
            .on_snapshot_done = on_snapshot_done,
        },
        .data = n,
    };
    int rc = net_transport_new(&n->loop, &opt, &n->net);
    if (rc) {
        logf_("cannot listen for peers on %s: %s", url, net_strerror(rc));
        return -1;
    }
    net_set_members(n);
    for (size_t i = 0; i < n->n_members; i++) {
        const struct node_member *m = &n->members[i];
        if (m->id == n->id) continue;
        char purl[SERVER_URL_MAX];
        size_t pl = strcspn(m->peer_urls, ",");
        memcpy(purl, m->peer_urls, pl);
        purl[pl] = '\0';
        rc = net_transport_add_peer(n->net, m->id, purl);
        if (rc) {
            logf_("peer %s (%s): %s", m->name, purl, net_strerror(rc));
            return -1;
        }
    }
    return 0;
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

static int start_raft(struct node *n) {
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
        .max_size_per_msg = 1024 * 1024,
        .max_inflight_msgs = 256,
        .max_committed_size_per_update = 64 * 1024 * 1024,
        .check_quorum = true,
        .pre_vote = true,
        .seed = n->id ^ (uint64_t)uv_hrtime(),
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

int server_run(const struct server_config *cfg) {
    struct node *n = calloc(1, sizeof *n);
    if (!n) return 1;
    int exit_code = 1;
    n->cfg = cfg;
    for (size_t i = 0; i < cfg->n_members; i++)
        if (strcmp(cfg->members[i].name, cfg->name) == 0) n->id = cfg->members[i].id;
    pthread_mutex_init(&n->mu, NULL);
    pthread_rwlock_init(&n->store_lock, NULL);
    {
        /* Distinct from every id an earlier run used (node__submit). */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        n->next_id = ((uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u) &
                     REQUEST_SEQ_MASK;
    }
    if (uv_loop_init(&n->loop) != 0) goto err_free;

    if (open_store(n)) goto err_loop;
    if (members_load(n)) goto err_store;
    if (start_raft(n)) goto err_store;
    uv_check_init(&n->loop, &n->check);
    n->check.data = n;
    uv_check_start(&n->check, check_cb);
    if (start_net(n)) goto err_handles;
    if (etcd__start(n, &n->api)) {
        logf_("cannot serve clients on %s", cfg->listen_client_urls);
        goto err_handles;
    }

    uv_timer_init(&n->loop, &n->tick_timer);
    n->tick_timer.data = n;
    uv_async_init(&n->loop, &n->wake, wake_cb);
    n->wake.data = n;
    uv_signal_init(&n->loop, &n->sig_int);
    n->sig_int.data = n;
    uv_signal_init(&n->loop, &n->sig_term);
    n->sig_term.data = n;
    uv_signal_start(&n->sig_int, signal_cb, SIGINT);
    uv_signal_start(&n->sig_term, signal_cb, SIGTERM);
    uv_signal_init(&n->loop, &n->sig_hup);
    n->sig_hup.data = n;
    uv_signal_start(&n->sig_hup, signal_cb, SIGHUP);
    uv_timer_start(&n->tick_timer, tick_cb, cfg->heartbeat_interval_ms,
                   cfg->heartbeat_interval_ms);
    process(n);

    if (cfg->mount[0] && member_mount_start(&n->loop, cfg, log_line, &n->mm) != 0)
        goto err_handles;
    logf_("member %s (%016" PRIx64 ") started; data in %s%s%s", cfg->name, n->id, cfg->data_dir,
          cfg->mount[0] ? ", key space mounted at " : "", cfg->mount);

    uv_run(&n->loop, UV_RUN_DEFAULT);
    exit_code = n->fatal ? 1 : 0;

err_handles:
    /* The mount unmounts first: its last writes are still answered. */
    member_mount_stop(n->mm, &n->loop);
    n->mm = NULL;
    pthread_mutex_lock(&n->mu);
    n->stopping = true;
    pthread_mutex_unlock(&n->mu);
    cancel_all(n);
    if (n->api) {
        etcd__stop(n->api);
        n->api = NULL;
        uv_run(&n->loop, UV_RUN_NOWAIT);
    }
    if (n->net) {
        net_transport_close(n->net, NULL);
        n->net = NULL;
        uv_run(&n->loop, UV_RUN_NOWAIT);
    }
    uv_walk(&n->loop, close_walk_cb, NULL);
    uv_run(&n->loop, UV_RUN_DEFAULT);
    raft_free(n->raft);
    n->raft = NULL;
    if (n->pending_snap_dir) {
        rm_tree(n->pending_snap_dir);
        free(n->pending_snap_dir);
    }
err_store:
    store_close(n->store);
err_loop:
    uv_loop_close(&n->loop);
err_free:
    pthread_rwlock_destroy(&n->store_lock);
    pthread_mutex_destroy(&n->mu);
    free(n);
    if (exit_code == 0) logf_("stopped");
    return exit_code;
}
