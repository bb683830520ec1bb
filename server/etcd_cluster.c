/*
 * etcd_cluster.c - the etcd Cluster service: MemberList, MemberAdd (voter
 * or learner), MemberRemove, MemberUpdate, MemberPromote, over the node's
 * membership changes (node__member_change) and status (node__status).
 *
 * The checks etcd makes before proposing a change (peer URLs well formed
 * and not in use, member known, promotion of a learner only) are made here
 * against the member list this member knows, so that the common mistakes get
 * etcd's errors at once; the node still refuses what it cannot apply.
 * Everything runs on the loop thread.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "raft/raft.h"
#include "server/etcd.h"
#include "server/server.h"

/* URLs in one member's peer or client URL list. */
#define URLS_MAX 16u

/* --------------------------------------------------------------- urls */

/* etcd's types.NewURLs: scheme http, https, unix or unixs; HOST:PORT with a
 * port; no path, query or fragment. */
static bool url_valid(const char *u) {
    const char *rest;
    if (strncmp(u, "http://", 7) == 0)
        rest = u + 7;
    else if (strncmp(u, "https://", 8) == 0)
        rest = u + 8;
    else if (strncmp(u, "unix://", 7) == 0)
        rest = u + 7;
    else if (strncmp(u, "unixs://", 8) == 0)
        rest = u + 8;
    else
        return false;
    if (!*rest || strpbrk(rest, "/?#, ")) return false;
    const char *colon;
    if (rest[0] == '[') {
        const char *rb = strchr(rest, ']');
        if (!rb || rb[1] != ':') return false;
        colon = rb + 1;
    } else {
        colon = strrchr(rest, ':');
        if (!colon || colon == rest || memchr(rest, ':', (size_t)(colon - rest))) return false;
    }
    const char *port = colon + 1;
    if (!*port) return false;
    for (const char *p = port; *p; p++)
        if (*p < '0' || *p > '9') return false;
    return true;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int etcd__join_urls(char *const *urls, size_t n, char *buf, size_t cap) {
    if (n == 0 || n > URLS_MAX || cap == 0) return ETCD_EMEMBERBADURLS;
    const char *sorted[URLS_MAX];
    for (size_t i = 0; i < n; i++) {
        if (!urls[i] || !url_valid(urls[i])) return ETCD_EMEMBERBADURLS;
        sorted[i] = urls[i];
    }
    /* etcd keeps peer URLs sorted. */
    qsort(sorted, n, sizeof sorted[0], cmp_str);
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(sorted[i]);
        if (len + l + 2 > cap) return ETCD_EMEMBERBADURLS;
        if (i) buf[len++] = ',';
        memcpy(buf + len, sorted[i], l);
        len += l;
    }
    buf[len] = '\0';
    return 0;
}

/* Whether comma-separated list `have` shares a URL with `want`. */
static bool urls_overlap(const char *have, const char *want) {
    const char *w = want;
    while (*w) {
        size_t wl = strcspn(w, ",");
        const char *h = have;
        while (*h) {
            size_t hl = strcspn(h, ",");
            if (hl == wl && memcmp(h, w, wl) == 0) return true;
            h += hl;
            if (*h == ',') h++;
        }
        w += wl;
        if (*w == ',') w++;
    }
    return false;
}

/* Splits a comma-separated list into arena strings. */
static int split_urls(struct etcd_arena *a, const char *list, char ***out, size_t *n_out) {
    size_t n = 0;
    char **v = etcd__alloc(a, URLS_MAX * sizeof *v);
    if (!v) return -ENOMEM;
    const char *p = list;
    while (*p && n < URLS_MAX) {
        size_t l = strcspn(p, ",");
        if (l) {
            char *s = etcd__alloc(a, l + 1);
            if (!s) return -ENOMEM;
            memcpy(s, p, l);
            v[n++] = s;
        }
        p += l;
        if (*p == ',') p++;
    }
    *out = v;
    *n_out = n;
    return 0;
}

static Etcdserverpb__Member *member_to_pb(struct etcd_arena *a, const struct node_member *m) {
    Etcdserverpb__Member *pm = etcd__alloc(a, sizeof *pm);
    if (!pm) return NULL;
    etcdserverpb__member__init(pm);
    pm->id = m->id;
    pm->name = etcd__memdup(a, m->name, strlen(m->name) + 1);
    if (!pm->name) return NULL;
    if (split_urls(a, m->peer_urls, &pm->peerurls, &pm->n_peerurls)) return NULL;
    if (split_urls(a, m->client_urls, &pm->clienturls, &pm->n_clienturls)) return NULL;
    pm->islearner = m->learner;
    return pm;
}

static int members_to_pb(struct etcd_arena *a, const struct node_status *st,
                         Etcdserverpb__Member ***out, size_t *n_out) {
    Etcdserverpb__Member **v = etcd__alloc(a, (st->n_members ? st->n_members : 1) * sizeof *v);
    if (!v) return -ENOMEM;
    for (size_t i = 0; i < st->n_members; i++)
        if (!(v[i] = member_to_pb(a, &st->members[i]))) return -ENOMEM;
    *out = v;
    *n_out = st->n_members;
    return 0;
}

/* etcd's Cluster answers carry ids and term but no revision. */
static void cluster_header(struct etcd *e, Etcdserverpb__ResponseHeader *h) {
    const struct node_status *st = etcd__status(e);
    h->cluster_id = st->cluster_id;
    h->member_id = st->id;
    h->raft_term = st->term;
}

static const struct node_member *find_member(const struct node_status *st, uint64_t id) {
    for (size_t i = 0; i < st->n_members; i++)
        if (st->members[i].id == id) return &st->members[i];
    return NULL;
}

/* node__member_change's errors in etcd's words. */
static int change_error(struct etcd *e, int err) {
    switch (err) {
    case -EEXIST:
        return ETCD_EPEERURLEXISTS;
    case -ENOENT:
        return ETCD_EMEMBERNOTFOUND;
    case -EPERM:
        return ETCD_ELEARNERNOTREADY;
    case -EINVAL:
        return ETCD_EMEMBERNOTLEARNER;
    case -EBUSY:
        return ETCD_EUNHEALTHY;
    case -EAGAIN:
        /* Raft would not take the proposal: no leader, or not now. */
        etcd__status_invalidate(e);
        return etcd__status(e)->leader ? ETCD_EUNHEALTHY : ETCD_ENOLEADER;
    default:
        return err;
    }
}

/* --------------------------------------------------------------- calls */

enum change_kind { CHANGE_ADD, CHANGE_REMOVE, CHANGE_UPDATE, CHANGE_PROMOTE };

struct member_call {
    struct etcd *e;
    struct api_call *call;
    enum change_kind kind;
    struct node_member m;
};

static void change_done(void *arg, int err) {
    struct member_call *mc = arg;
    struct etcd *e = mc->e;
    struct etcd_arena a = {0};
    if (err) {
        etcd__reply_error(mc->call, change_error(e, err));
        goto out;
    }
    etcd__status_invalidate(e);
    const struct node_status *st = etcd__status(e);
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    cluster_header(e, &hdr);
    Etcdserverpb__Member **members = NULL;
    size_t n = 0;
    if (members_to_pb(&a, st, &members, &n)) {
        etcd__reply_error(mc->call, -ENOMEM);
        goto out;
    }
    switch (mc->kind) {
    case CHANGE_ADD: {
        Etcdserverpb__MemberAddResponse resp = ETCDSERVERPB__MEMBER_ADD_RESPONSE__INIT;
        resp.header = &hdr;
        /* etcd answers the new member with its id, peer URLs and learner
         * flag only (it has no name until it starts). */
        struct node_member nm = mc->m;
        nm.name[0] = '\0';
        nm.client_urls[0] = '\0';
        resp.member = member_to_pb(&a, &nm);
        if (!resp.member) {
            etcd__reply_error(mc->call, -ENOMEM);
            goto out;
        }
        resp.members = members;
        resp.n_members = n;
        api_reply(mc->call, &resp.base);
        break;
    }
    case CHANGE_REMOVE: {
        Etcdserverpb__MemberRemoveResponse resp = ETCDSERVERPB__MEMBER_REMOVE_RESPONSE__INIT;
        resp.header = &hdr;
        resp.members = members;
        resp.n_members = n;
        api_reply(mc->call, &resp.base);
        break;
    }
    case CHANGE_UPDATE: {
        Etcdserverpb__MemberUpdateResponse resp = ETCDSERVERPB__MEMBER_UPDATE_RESPONSE__INIT;
        resp.header = &hdr;
        resp.members = members;
        resp.n_members = n;
        api_reply(mc->call, &resp.base);
        break;
    }
    case CHANGE_PROMOTE: {
        Etcdserverpb__MemberPromoteResponse resp = ETCDSERVERPB__MEMBER_PROMOTE_RESPONSE__INIT;
        resp.header = &hdr;
        resp.members = members;
        resp.n_members = n;
        api_reply(mc->call, &resp.base);
        break;
    }
    }
out:
    etcd__arena_free(&a);
    free(mc);
    etcd__unref(e);
}

/* Proposes the change; answers the call on refusal. */
static void start_change(struct etcd *e, struct api_call *call, enum change_kind kind, int type,
                         const struct node_member *m) {
    if (e->stopping) {
        etcd__reply_error(call, ETCD_ESTOPPED);
        return;
    }
    struct member_call *mc = calloc(1, sizeof *mc);
    if (!mc) {
        etcd__reply_error(call, -ENOMEM);
        return;
    }
    mc->e = e;
    mc->call = call;
    mc->kind = kind;
    mc->m = *m;
    /* node__member_change writes an added member's id back into mc->m. */
    etcd__ref(e); /* before: the node may answer within the call */
    int rc = node__member_change(e->node, type, &mc->m, change_done, mc);
    if (rc) {
        free(mc);
        etcd__reply_error(call, change_error(e, rc));
        etcd__unref(e);
    }
}

void etcd__member_add(void *ctx, struct api_call *call, const Etcdserverpb__MemberAddRequest *req) {
    struct etcd *e = ctx;
    struct node_member m;
    memset(&m, 0, sizeof m);
    int rc = etcd__join_urls(req->peerurls, req->n_peerurls, m.peer_urls, sizeof m.peer_urls);
    if (rc) {
        etcd__reply_error(call, rc);
        return;
    }
    etcd__status_invalidate(e);
    const struct node_status *st = etcd__status(e);
    for (size_t i = 0; i < st->n_members; i++) {
        if (urls_overlap(st->members[i].peer_urls, m.peer_urls)) {
            etcd__reply_error(call, ETCD_EPEERURLEXISTS);
            return;
        }
    }
    m.learner = req->islearner;
    start_change(e, call, CHANGE_ADD, req->islearner ? RAFT_CC_ADD_LEARNER : RAFT_CC_ADD_VOTER, &m);
}

void etcd__member_remove(void *ctx, struct api_call *call,
                         const Etcdserverpb__MemberRemoveRequest *req) {
    struct etcd *e = ctx;
    etcd__status_invalidate(e);
    const struct node_member *cur = find_member(etcd__status(e), req->id);
    if (!cur) {
        etcd__reply_error(call, ETCD_EMEMBERNOTFOUND);
        return;
    }
    struct node_member m = *cur;
    start_change(e, call, CHANGE_REMOVE, RAFT_CC_REMOVE, &m);
}

void etcd__member_update(void *ctx, struct api_call *call,
                         const Etcdserverpb__MemberUpdateRequest *req) {
    struct etcd *e = ctx;
    etcd__status_invalidate(e);
    const struct node_status *st = etcd__status(e);
    const struct node_member *cur = find_member(st, req->id);
    if (!cur) {
        etcd__reply_error(call, ETCD_EMEMBERNOTFOUND);
        return;
    }
    struct node_member m = *cur;
    int rc = etcd__join_urls(req->peerurls, req->n_peerurls, m.peer_urls, sizeof m.peer_urls);
    if (rc) {
        etcd__reply_error(call, rc);
        return;
    }
    for (size_t i = 0; i < st->n_members; i++) {
        if (st->members[i].id != req->id && urls_overlap(st->members[i].peer_urls, m.peer_urls)) {
            etcd__reply_error(call, ETCD_EPEERURLEXISTS);
            return;
        }
    }
    start_change(e, call, CHANGE_UPDATE, NODE_MEMBER_UPDATE, &m);
}

void etcd__member_promote(void *ctx, struct api_call *call,
                          const Etcdserverpb__MemberPromoteRequest *req) {
    struct etcd *e = ctx;
    etcd__status_invalidate(e);
    const struct node_member *cur = find_member(etcd__status(e), req->id);
    if (!cur) {
        etcd__reply_error(call, ETCD_EMEMBERNOTFOUND);
        return;
    }
    if (!cur->learner) {
        etcd__reply_error(call, ETCD_EMEMBERNOTLEARNER);
        return;
    }
    struct node_member m = *cur;
    m.learner = false;
    start_change(e, call, CHANGE_PROMOTE, RAFT_CC_ADD_VOTER, &m);
}

void etcd__member_list(void *ctx, struct api_call *call,
                       const Etcdserverpb__MemberListRequest *req) {
    (void)req;
    struct etcd *e = ctx;
    struct etcd_arena a = {0};
    etcd__status_invalidate(e);
    const struct node_status *st = etcd__status(e);
    Etcdserverpb__MemberListResponse resp = ETCDSERVERPB__MEMBER_LIST_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    cluster_header(e, &hdr);
    resp.header = &hdr;
    if (members_to_pb(&a, st, &resp.members, &resp.n_members))
        etcd__reply_error(call, -ENOMEM);
    else
        api_reply(call, &resp.base);
    etcd__arena_free(&a);
}
