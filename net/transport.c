/*
 * transport.c - listener, peers, connections, handshake and Raft sends.
 *
 * Everything here runs on the transport's loop thread. Connection model
 * (see net.h): a node dials each peer and sends on that outbound
 * connection; it receives on the connections it accepts. So a connection's
 * direction decides which frames it may carry, and there is never a second
 * connection to choose between.
 *
 * The life of a connection: CONNECTING (name lookup, TCP connect) ->
 * HANDSHAKE (the dialer sent HELLO; the listener waits for it) -> UP ->
 * CLOSING (uv_close issued; freed in the close callback). A connection that
 * fails in any state is closed, and if it was a peer's outbound connection
 * the peer is redialled after a backoff that doubles from backoff_min_ms to
 * backoff_max_ms, each delay drawn uniformly from [d/2, d] by a seeded
 * splitmix64 so that restarted nodes do not redial in lockstep. A handshake
 * must finish within NET__HANDSHAKE_TIMEOUT_MS; one periodic timer checks
 * all such deadlines instead of one timer per connection.
 *
 * Bounded memory: each outbound connection counts the Raft frames handed to
 * libuv and not yet written (q_bytes, q_frames); net_send() refuses rather
 * than exceed the caps. A receive buffer holds at most one frame plus one
 * read, and before the handshake at most NET__HELLO_BYTES_MAX, so an
 * unauthenticated socket costs little. Accepted connections are capped at
 * NET_INBOUND_MAX.
 *
 * TLS (https URLs) sits between the socket and the frames, over memory
 * BIOs: ciphertext read from the socket goes into the session's read BIO
 * and plaintext is pulled from it into the frame reader only when the
 * reader wants bytes, so a paused connection holds at most one socket read
 * of ciphertext plus one TLS record. Each frame written is encrypted at
 * once and its ciphertext handed to uv_write in a request that completes
 * the frame's own (queue accounting, snapshot pacing), so nothing else
 * changes for the code above. The TLS handshake comes first (within the
 * same handshake deadline); the dialer sends HELLO once it is done. A TLS
 * failure is reported like a refused HELLO, after the alert OpenSSL wrote
 * has been sent, so the other end learns why too.
 */
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "net/internal.h"

#define LISTEN_BACKLOG 128

struct gai_req {
    uv_getaddrinfo_t req;
    struct net_transport *t;
    struct peer *p; /* NULL once the peer is removed: drop the result */
};

/* ---- references, close ---- */

void net__ref(struct net_transport *t) {
    NET__ASSERT(t != NULL);
    t->refs++;
}

static void free_members(struct net__member *m, size_t n) {
    for (size_t i = 0; i < n; i++) free(m[i].url);
    free(m);
}

static void transport_free(struct net_transport *t) {
    free_members(t->members, t->n_members);
    free(t->token);
    free(t->snapshot_dir);
    SSL_CTX_free(t->tls_server);
    SSL_CTX_free(t->tls_client);
    free(t->tls_rbuf);
    free(t);
}

void net__unref(struct net_transport *t) {
    NET__ASSERT(t != NULL);
    NET__ASSERT(t->refs > 0);
    t->refs--;
    if (t->closing && t->refs == 0) {
        void (*cb)(void *) = t->close_cb;
        void *data = t->data;
        transport_free(t);
        if (cb != NULL) cb(data);
    }
}

static void on_transport_handle_closed(uv_handle_t *h) {
    net__unref(h->data);
}

/* ---- small helpers ---- */

static uint64_t rng_next(struct net_transport *t) {
    uint64_t z = (t->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A delay drawn uniformly from [d/2, d]. */
static uint64_t jitter(struct net_transport *t, uint32_t d) {
    uint64_t half = d / 2;
    return half + rng_next(t) % ((uint64_t)d - half + 1);
}

static struct peer *find_peer(const struct net_transport *t, uint64_t id) {
    for (struct peer *p = t->peers; p != NULL; p = p->next)
        if (p->id == id) return p;
    return NULL;
}

static int cmp_member(const void *a, const void *b) {
    const struct net__member *x = a, *y = b;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Validates and copies a member list, sorted by id. */
static int members_copy(const struct net_member *in, size_t n, uint64_t self_id,
                        struct net__member **out) {
    if (n > NET_MEMBERS_MAX || (n > 0 && in == NULL)) return NET_EINVAL;
    *out = NULL;
    if (n == 0) return 0;
    struct net__member *m = calloc(n, sizeof(*m));
    if (m == NULL) return NET_ENOMEM;
    int rc = 0;
    bool self_found = false;
    size_t done;
    for (done = 0; done < n; done++) {
        struct net__url u;
        if (in[done].id == 0 || in[done].url == NULL) {
            rc = NET_EINVAL;
            goto err_free;
        }
        rc = net__url_parse(in[done].url, &u);
        if (rc != 0) goto err_free;
        m[done].id = in[done].id;
        m[done].url_len = strlen(in[done].url);
        m[done].url = strdup(in[done].url);
        if (m[done].url == NULL) {
            rc = NET_ENOMEM;
            goto err_free;
        }
        if (in[done].id == self_id) self_found = true;
    }
    qsort(m, n, sizeof(*m), cmp_member);
    for (size_t i = 1; i < n; i++) {
        if (m[i].id == m[i - 1].id) {
            rc = NET_EINVAL;
            goto err_free;
        }
    }
    if (!self_found) {
        rc = NET_EINVAL;
        goto err_free;
    }
    *out = m;
    return 0;
err_free:
    free_members(m, done);
    /* done counts entries whose url may be set; the rest are zeroed. */
    return rc;
}

/* ---- writing ---- */

struct wreq *net__wreq_new(uint8_t type, size_t payload_len) {
    NET__ASSERT(payload_len + NET__FRAME_HEADER_BYTES <= NET_FRAME_BYTES_LIMIT);
    struct wreq *w = malloc(sizeof(*w) + NET__FRAME_HEADER_BYTES + payload_len);
    if (w == NULL) return NULL;
    w->c = NULL;
    w->tx = NULL;
    w->counted = false;
    w->close_after = false;
    w->len = NET__FRAME_HEADER_BYTES + payload_len;
    net__frame_put_header(w->data, type, payload_len);
    return w;
}

int net__wreq_encode(const struct net__frame *f, struct wreq **out) {
    NET__ASSERT(f != NULL && out != NULL);
    uint8_t *buf;
    size_t len;
    int rc = net__frame_encode(f, &buf, &len);
    if (rc != 0) return rc;
    NET__ASSERT(len >= NET__FRAME_HEADER_BYTES);
    struct wreq *w = net__wreq_new(f->type, len - NET__FRAME_HEADER_BYTES);
    if (w == NULL) {
        free(buf);
        return NET_ENOMEM;
    }
    memcpy(w->data, buf, len);
    free(buf);
    *out = w;
    return 0;
}

/* A frame's bytes (or its ciphertext) were written, or failed to be. */
static void wreq_done(struct wreq *w, int status) {
    struct conn *c = w->c;
    struct snap_tx *tx = w->tx;
    bool close_after = w->close_after;
    if (w->counted) {
        NET__ASSERT(c->q_frames > 0 && c->q_bytes >= w->len);
        c->q_bytes -= w->len;
        c->q_frames--;
    }
    free(w);
    /* Close first: a snapshot told about a failed write must not pump more. */
    if (status < 0 && status != UV_ECANCELED)
        net__conn_close(c, status);
    else if (close_after)
        net__conn_close(c, NET_EHANDSHAKE);
    if (tx != NULL) net__snap_tx_wrote(tx, status);
}

static void on_write(uv_write_t *req, int status) {
    wreq_done((struct wreq *)req, status);
}

/* Ciphertext on its way to the socket: a frame's (w), or TLS's own
 * (handshake messages, alerts, tickets) when w is NULL. */
struct tls_wreq {
    uv_write_t req;
    struct conn *c;
    struct wreq *w;   /* completed when this is written; NULL for TLS's own bytes */
    bool close_after; /* an alert: close once written */
    size_t cap;       /* bytes allocated in data */
    size_t len;       /* bytes used */
    uint8_t data[];
};

/* Record overhead TLS adds per 16 KiB of plaintext, with room to spare
 * (header, MAC or tag, CBC padding). */
#define TLS_RECORD_OVERHEAD_BYTES 512u
#define TLS_RECORD_BYTES 16384u
/* Room for records TLS may add on its own during a write (tickets). */
#define TLS_SLACK_BYTES 4096u

static void on_tls_write(uv_write_t *req, int status) {
    struct tls_wreq *tw = (struct tls_wreq *)req;
    struct conn *c = tw->c;
    struct wreq *w = tw->w;
    bool close_after = tw->close_after;
    free(tw);
    if (w != NULL) {
        wreq_done(w, status);
        return;
    }
    if (status < 0 && status != UV_ECANCELED)
        net__conn_close(c, status);
    else if (close_after)
        net__conn_close(c, NET_EHANDSHAKE);
}

static struct tls_wreq *tls_wreq_new(size_t cap) {
    struct tls_wreq *tw = malloc(sizeof(*tw) + cap);
    if (tw == NULL) return NULL;
    tw->c = NULL;
    tw->w = NULL;
    tw->close_after = false;
    tw->cap = cap;
    tw->len = 0;
    return tw;
}

/* Moves what OpenSSL wrote into the write BIO into tw and hands it to the
 * socket. On failure tw is freed, the ciphertext is lost and the
 * connection is marked broken (the TLS stream cannot go on). */
static int tls_submit(struct conn *c, struct tls_wreq *tw) {
    _Static_assert(offsetof(struct tls_wreq, req) == 0, "on_tls_write casts req");
    size_t pending = BIO_ctrl_pending(c->wbio);
    if (pending > tw->cap) {
        /* More than the estimate (TLS wrote records of its own meanwhile). */
        struct tls_wreq *bigger = realloc(tw, sizeof(*tw) + pending);
        if (bigger == NULL) {
            free(tw);
            c->broken = true;
            return NET_ENOMEM;
        }
        tw = bigger;
        tw->cap = pending;
    }
    if (pending > 0 && BIO_read(c->wbio, tw->data, (int)pending) != (int)pending) {
        free(tw);
        c->broken = true;
        return NET_EPROTO;
    }
    tw->len = pending;
    tw->c = c;
    uv_buf_t b = uv_buf_init((char *)tw->data, (unsigned int)tw->len);
    int rc = uv_write(&tw->req, (uv_stream_t *)&c->tcp, &b, 1, on_tls_write);
    if (rc != 0) {
        free(tw);
        c->broken = true;
    }
    return rc;
}

/* Sends TLS's own output (if any). close_after: close once it is written. */
static int tls_flush(struct conn *c, bool close_after) {
    size_t pending = BIO_ctrl_pending(c->wbio);
    if (pending == 0) return 0;
    struct tls_wreq *tw = tls_wreq_new(pending);
    if (tw == NULL) {
        c->broken = true;
        return NET_ENOMEM;
    }
    tw->close_after = close_after;
    return tls_submit(c, tw);
}

int net__conn_write(struct conn *c, struct wreq *w) {
    NET__ASSERT(c != NULL && w != NULL);
    NET__ASSERT(c->state != NET__CONN_CLOSING);
    _Static_assert(offsetof(struct wreq, req) == 0, "on_write casts req to wreq");
    w->c = c;
    if (c->ssl == NULL) {
        uv_buf_t b = uv_buf_init((char *)w->data, (unsigned int)w->len);
        return uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    }
    /* Frames are written only once the TLS handshake is done (see the top). */
    NET__ASSERT(c->tls_done);
    NET__ASSERT(w->len <= INT_MAX);
    if (c->broken) return NET_ECONNLOST;
    /* Room for the ciphertext is taken before encrypting, so that once
     * SSL_write has consumed the frame nothing can fail but the socket. */
    size_t records = w->len / TLS_RECORD_BYTES + 1;
    struct tls_wreq *tw = tls_wreq_new(BIO_ctrl_pending(c->wbio) + w->len +
                                       records * TLS_RECORD_OVERHEAD_BYTES + TLS_SLACK_BYTES);
    if (tw == NULL) return NET_ENOMEM;
    ERR_clear_error();
    int n = SSL_write(c->ssl, w->data, (int)w->len);
    if (n <= 0 || (size_t)n != w->len) {
        ERR_clear_error();
        free(tw);
        return NET_EPROTO;
    }
    tw->w = w;
    return tls_submit(c, tw);
}

/* ---- connections ---- */

static void on_conn_closed(uv_handle_t *h) {
    struct conn *c = h->data;
    struct net_transport *t = c->t;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        t->conns = c->next;
    if (c->next != NULL) c->next->prev = c->prev;
    net__reader_release(&c->rd);
    SSL_free(c->ssl); /* and its BIOs */
    free(c);
    net__unref(t);
}

static struct conn *conn_new(struct net_transport *t, enum net__conn_dir dir) {
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL) return NULL;
    if (uv_tcp_init(t->loop, &c->tcp) != 0) {
        free(c);
        return NULL;
    }
    c->t = t;
    c->dir = dir;
    c->tcp.data = c;
    c->connect_req.data = c;
    snprintf(c->addr, sizeof(c->addr), "?");
    /* Outbound connections only ever read acks and rejections. */
    net__reader_init(&c->rd, (dir == NET__CONN_IN ? t->frame_bytes_max : NET__HELLO_BYTES_MAX) +
                                 NET__READER_READ_BYTES);
    c->next = t->conns;
    if (t->conns != NULL) t->conns->prev = c;
    t->conns = c;
    if (dir == NET__CONN_IN) t->n_inbound++;
    net__ref(t);
    return c;
}

static void schedule_dial(struct peer *p);

void net__conn_close(struct conn *c, int rc) {
    NET__ASSERT(c != NULL);
    if (c->state == NET__CONN_CLOSING) return;
    struct net_transport *t = c->t;
    c->state = NET__CONN_CLOSING;
    c->reading = false;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    if (c->dir == NET__CONN_IN) {
        t->n_inbound--;
        net__snap_rx_detach(c, rc);
        return;
    }
    struct peer *p = c->peer;
    if (p == NULL) return;
    c->peer = NULL;
    p->out = NULL;
    net__snap_tx_fail(p, rc == 0 || rc == UV_EOF ? NET_ECONNLOST : rc, "connection lost");
    if (p->removed || t->closing) return;
    schedule_dial(p);
    if (p->up) {
        p->up = false;
        if (t->cb.on_peer_state != NULL) t->cb.on_peer_state(t->data, p->id, false);
    }
}

static void set_socket_options(struct conn *c) {
    /* Tuning only: a failure here leaves a working, if slower to notice, link. */
    (void)uv_tcp_nodelay(&c->tcp, 1);
    (void)uv_tcp_keepalive(&c->tcp, 1, NET__KEEPALIVE_DELAY_S);
#ifdef TCP_USER_TIMEOUT
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) {
        /* Without it, data a dead peer never acknowledges keeps the
         * connection "up" for the kernel's full retransmission time. */
        unsigned int ms = NET__TCP_USER_TIMEOUT_MS;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof(ms));
    }
#endif
}

static void report_handshake_error(struct conn *c, uint64_t peer_id, const char *reason) {
    struct net_transport *t = c->t;
    if (!t->closing && t->cb.on_handshake_error != NULL)
        t->cb.on_handshake_error(t->data, peer_id, c->addr, reason);
}

/*
 * Refuses the other end: reports `local` here and sends `remote` (worded
 * for the peer) in a REJECT, then closes once it is written.
 */
static void conn_reject(struct conn *c, uint64_t peer_id, const char *local, const char *remote) {
    report_handshake_error(c, peer_id, local);
    if (c->state == NET__CONN_CLOSING) return; /* the callback closed it */
    struct net__frame f = {.type = NET__FRAME_REJECT};
    f.u.reject.reason = remote;
    f.u.reject.reason_len = strnlen(remote, NET_REASON_MAX);
    struct wreq *w;
    int rc = net__wreq_encode(&f, &w);
    if (rc == 0) {
        w->close_after = true;
        rc = net__conn_write(c, w);
        if (rc != 0) free(w);
    }
    if (rc != 0) {
        net__conn_close(c, NET_EHANDSHAKE);
        return;
    }
    c->rejecting = true;
}

/* ---- handshake ---- */

static int send_hello(struct conn *c, uint8_t type, uint64_t to_id) {
    struct net_transport *t = c->t;
    struct net__frame *f = malloc(sizeof(*f)); /* ~3 KiB of member slots */
    if (f == NULL) return NET_ENOMEM;
    f->type = type;
    f->u.hello.from_id = t->id;
    f->u.hello.to_id = to_id;
    f->u.hello.token = t->token;
    f->u.hello.token_len = t->token_len;
    f->u.hello.n_members = t->n_members;
    for (size_t i = 0; i < t->n_members; i++) {
        f->u.hello.members[i].id = t->members[i].id;
        f->u.hello.members[i].url = t->members[i].url;
        f->u.hello.members[i].url_len = t->members[i].url_len;
    }
    struct wreq *w;
    int rc = net__wreq_encode(f, &w);
    free(f);
    if (rc != 0) return rc;
    rc = net__conn_write(c, w);
    if (rc != 0) free(w);
    return rc;
}

/* Appends "id=url,..." to buf at *pos, stopping (with "...") before cap. */
static void fmt_member(char *buf, size_t cap, size_t *pos, bool first, uint64_t id, const char *url,
                       size_t url_len) {
    char clean[NET_URL_MAX + 1];
    char item[NET_URL_MAX + 32];
    net__sanitize(clean, sizeof(clean), url, url_len);
    int n =
        snprintf(item, sizeof(item), "%s%llu=%s", first ? "" : ",", (unsigned long long)id, clean);
    if (n < 0) return;
    if (*pos + (size_t)n + 4 >= cap) {
        if (*pos + 4 < cap && (*pos < 3 || strcmp(buf + *pos - 3, "...") != 0)) {
            memcpy(buf + *pos, "...", 4);
            *pos += 3;
        }
        return;
    }
    memcpy(buf + *pos, item, (size_t)n + 1);
    *pos += (size_t)n;
}

#define LIST_TEXT_MAX 400 /* bytes of one member list inside a reason */

static void fmt_local_members(const struct net_transport *t, char *buf) {
    size_t pos = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < t->n_members; i++)
        fmt_member(buf, LIST_TEXT_MAX, &pos, i == 0, t->members[i].id, t->members[i].url,
                   t->members[i].url_len);
}

static void fmt_wire_members(const struct net__hello *h, char *buf) {
    size_t pos = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < h->n_members; i++)
        fmt_member(buf, LIST_TEXT_MAX, &pos, i == 0, h->members[i].id, h->members[i].url,
                   h->members[i].url_len);
}

static bool members_equal(const struct net_transport *t, const struct net__hello *h) {
    if (t->n_members != h->n_members) return false;
    for (size_t i = 0; i < h->n_members; i++) {
        if (t->members[i].id != h->members[i].id) return false;
        if (t->members[i].url_len != h->members[i].url_len) return false;
        if (memcmp(t->members[i].url, h->members[i].url, h->members[i].url_len) != 0) return false;
    }
    return true;
}

/*
 * Compares the other end's HELLO (or HELLO_ACK) with this node's view.
 * expect_from is the id this node dialled (0 on the listening side). On a
 * mismatch fills `local` (for this node) and `remote` (the same fact worded
 * for the peer, which reads "local" as itself), each NET_REASON_MAX + 1.
 */
static bool check_hello(const struct net_transport *t, const struct net__hello *h,
                        uint64_t expect_from, char *local, char *remote) {
    const size_t cap = NET_REASON_MAX + 1;
    unsigned long long self = t->id, from = h->from_id, to = h->to_id;
    if (expect_from != 0 && h->from_id != expect_from) {
        snprintf(local, cap,
                 "member id mismatch: dialled member %llu but it answered as member %llu",
                 (unsigned long long)expect_from, from);
        snprintf(remote, cap,
                 "member id mismatch: member %llu dialled this address as member %llu, "
                 "but this node is member %llu",
                 self, (unsigned long long)expect_from, from);
        return false;
    }
    if (h->to_id != t->id) {
        snprintf(local, cap,
                 "member id mismatch: member %llu dialled this address as member %llu, "
                 "but this node is member %llu",
                 from, to, self);
        snprintf(remote, cap,
                 "member id mismatch: dialled member %llu but it answered as member %llu", to,
                 self);
        return false;
    }
    if (h->from_id == t->id) {
        snprintf(local, cap, "duplicate member id: the peer also uses this node's id %llu", self);
        snprintf(remote, cap, "duplicate member id: the peer also uses this node's id %llu", self);
        return false;
    }
    if (h->token_len != t->token_len || memcmp(h->token, t->token, t->token_len) != 0) {
        char theirs[NET_TOKEN_MAX + 1], ours[NET_TOKEN_MAX + 1];
        net__sanitize(theirs, sizeof(theirs), h->token, h->token_len);
        net__sanitize(ours, sizeof(ours), t->token, t->token_len);
        snprintf(local, cap, "cluster token mismatch: local %s, remote %s", ours, theirs);
        snprintf(remote, cap, "cluster token mismatch: local %s, remote %s", theirs, ours);
        return false;
    }
    if (!members_equal(t, h)) {
        char theirs[LIST_TEXT_MAX], ours[LIST_TEXT_MAX];
        fmt_wire_members(h, theirs);
        fmt_local_members(t, ours);
        snprintf(local, cap, "member list mismatch: local [%s], remote [%s]", ours, theirs);
        snprintf(remote, cap, "member list mismatch: local [%s], remote [%s]", theirs, ours);
        return false;
    }
    return true;
}

static void inbound_hello(struct conn *c, const struct net__hello *h) {
    struct net_transport *t = c->t;
    char local[NET_REASON_MAX + 1], remote[NET_REASON_MAX + 1];
    if (!check_hello(t, h, 0, local, remote)) {
        conn_reject(c, h->from_id, local, remote);
        return;
    }
    int rc = send_hello(c, NET__FRAME_HELLO_ACK, h->from_id);
    if (rc != 0) {
        net__conn_close(c, rc);
        return;
    }
    c->remote_id = h->from_id;
    c->state = NET__CONN_UP;
    c->deadline_ms = 0;
    /* A member that dials again has lost its previous connection (it
     * restarted, or the link broke without this side noticing yet). */
    for (struct conn *o = t->conns; o != NULL; o = o->next) {
        if (o != c && o->dir == NET__CONN_IN && o->state == NET__CONN_UP &&
            o->remote_id == h->from_id)
            net__conn_close(o, NET_ECONNLOST);
    }
}

static void outbound_ack(struct conn *c, const struct net__hello *h) {
    struct net_transport *t = c->t;
    struct peer *p = c->peer;
    NET__ASSERT(p != NULL);
    char local[NET_REASON_MAX + 1], remote[NET_REASON_MAX + 1];
    if (!check_hello(t, h, p->id, local, remote)) {
        p->backoff_ms = t->backoff_max_ms;
        conn_reject(c, p->id, local, remote);
        return;
    }
    c->state = NET__CONN_UP;
    c->deadline_ms = 0;
    p->backoff_ms = t->backoff_min_ms;
    if (!p->up) {
        p->up = true;
        if (t->cb.on_peer_state != NULL) t->cb.on_peer_state(t->data, p->id, true);
    }
}

static void outbound_reject(struct conn *c, const struct net__frame *f) {
    struct net_transport *t = c->t;
    struct peer *p = c->peer;
    NET__ASSERT(p != NULL);
    char reason[NET_REASON_MAX + 1];
    net__sanitize(reason, sizeof(reason), f->u.reject.reason, f->u.reject.reason_len);
    /* A refusal is a configuration problem: retry, but slowly. */
    p->backoff_ms = t->backoff_max_ms;
    report_handshake_error(c, p->id, reason);
    net__conn_close(c, NET_EHANDSHAKE);
}

/* ---- TLS sessions ---- */

/* Keeps the subject of the certificate that failed verification, for the
 * report; OpenSSL does not keep a refused certificate. */
static int tls_verify_cb(int ok, X509_STORE_CTX *x) {
    if (ok) return ok;
    SSL *ssl = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct conn *c = ssl != NULL ? SSL_get_app_data(ssl) : NULL;
    X509 *cert = X509_STORE_CTX_get0_cert(x);
    if (c != NULL && cert != NULL && c->tls_subject[0] == '\0')
        X509_NAME_oneline(X509_get_subject_name(cert), c->tls_subject, sizeof(c->tls_subject));
    return ok;
}

/* Creates c's TLS session: the dialer's (verifying the URL's host unless
 * told not to) or the listener's. 0 or NET_ENOMEM. */
static int tls_start(struct conn *c) {
    struct net_transport *t = c->t;
    bool out = c->dir == NET__CONN_OUT;
    NET__ASSERT(c->ssl == NULL);
    NET__ASSERT(out ? t->tls_client != NULL : t->tls_server != NULL);
    c->ssl = SSL_new(out ? t->tls_client : t->tls_server);
    BIO *rbio = BIO_new(BIO_s_mem());
    BIO *wbio = BIO_new(BIO_s_mem());
    if (c->ssl == NULL || rbio == NULL || wbio == NULL) {
        BIO_free(rbio);
        BIO_free(wbio);
        SSL_free(c->ssl);
        c->ssl = NULL;
        ERR_clear_error();
        return NET_ENOMEM;
    }
    SSL_set_bio(c->ssl, rbio, wbio);
    c->rbio = rbio;
    c->wbio = wbio;
    SSL_set_app_data(c->ssl, c);
    SSL_set_verify(c->ssl, SSL_get_verify_mode(c->ssl), tls_verify_cb);
    if (!out) {
        SSL_set_accept_state(c->ssl);
        return 0;
    }
    SSL_set_connect_state(c->ssl);
    const struct net__url *u = &c->peer->u;
    int ok = 1;
    if (!u->literal) ok = SSL_set_tlsext_host_name(c->ssl, u->host);
    if (ok == 1 && t->tls_verify_host)
        ok = u->literal ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), u->host)
                        : SSL_set1_host(c->ssl, u->host);
    ERR_clear_error();
    return ok == 1 ? 0 : NET_ENOMEM;
}

/*
 * The TLS session failed (ssl_error from SSL_get_error()) before the
 * connection was up: report why, unless the other end merely went away,
 * send the alert OpenSSL wrote, and close once it is out.
 */
static void tls_fail(struct conn *c, int ssl_error) {
    struct net_transport *t = c->t;
    bool quiet = ERR_peek_error() == 0 &&
                 (ssl_error == SSL_ERROR_SYSCALL || ssl_error == SSL_ERROR_ZERO_RETURN);
    char why[NET_REASON_MAX / 2];
    net__tls_reason(c->ssl, ssl_error, c->tls_subject, why, sizeof(why));
    if (!quiet) {
        char reason[NET_REASON_MAX];
        snprintf(reason, sizeof(reason), "TLS handshake failed: %s", why);
        /* A refusal is a configuration problem: retry, but slowly. */
        if (c->peer != NULL) c->peer->backoff_ms = t->backoff_max_ms;
        report_handshake_error(c, c->remote_id, reason);
    }
    if (c->state == NET__CONN_CLOSING) return; /* the callback closed it */
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
    c->rejecting = true;
    if (BIO_ctrl_pending(c->wbio) == 0 || tls_flush(c, true) != 0)
        net__conn_close(c, NET_EHANDSHAKE);
}

/* Advances the TLS handshake; once done, the dialer sends HELLO. Returns 0,
 * or -1 when the connection failed (and is closing). */
static int tls_handshake(struct conn *c) {
    NET__ASSERT(c->ssl != NULL && !c->tls_done);
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, r);
    if (e != SSL_ERROR_NONE && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        tls_fail(c, e);
        return -1;
    }
    int rc = tls_flush(c, false);
    if (rc == 0 && r == 1) {
        c->tls_done = true;
        if (c->dir == NET__CONN_OUT) {
            NET__ASSERT(c->peer != NULL);
            rc = send_hello(c, NET__FRAME_HELLO, c->peer->id);
        }
    }
    if (rc != 0) {
        net__conn_close(c, rc);
        return -1;
    }
    return 0;
}

/* Decrypts what the read BIO holds into the frame reader. Returns the bytes
 * added, 0 when none are ready, or -1 when the connection failed. */
static int tls_pull(struct conn *c) {
    if (c->ssl == NULL || !c->tls_done) return 0;
    uint8_t *p;
    size_t n;
    int rc = net__reader_space(&c->rd, &p, &n);
    if (rc != 0) {
        net__conn_close(c, rc);
        return -1;
    }
    if (n > INT_MAX) n = INT_MAX;
    ERR_clear_error();
    int r = SSL_read(c->ssl, p, (int)n);
    if (r > 0) {
        net__reader_commit(&c->rd, (size_t)r);
        return r;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        /* Reading may have produced records to send (a key update). */
        if (tls_flush(c, false) == 0) return 0;
        net__conn_close(c, NET_ECONNLOST);
        return -1;
    }
    if (c->state == NET__CONN_UP || e == SSL_ERROR_ZERO_RETURN) {
        ERR_clear_error();
        net__conn_close(c, NET_ECONNLOST);
        return -1;
    }
    /* Under TLS 1.3 a server refuses the client's certificate after the
     * client finished its handshake: the alert arrives here. */
    tls_fail(c, e);
    return -1;
}

/* ---- frames in ---- */

/* One decoded frame; a negative return is a protocol violation. */
static int handle_frame(struct conn *c, const struct net__frame *f) {
    struct net_transport *t = c->t;
    if (c->dir == NET__CONN_IN) {
        if (c->state == NET__CONN_HANDSHAKE) {
            if (f->type != NET__FRAME_HELLO) return NET_EPROTO;
            inbound_hello(c, &f->u.hello);
            return 0;
        }
        switch (f->type) {
        case NET__FRAME_RAFT:
            t->cb.on_message(t->data, c->remote_id, f->u.raft.data, f->u.raft.len);
            return 0;
        case NET__FRAME_SNAP_BEGIN:
        case NET__FRAME_SNAP_FILE:
        case NET__FRAME_SNAP_CHUNK:
        case NET__FRAME_SNAP_END:
        case NET__FRAME_SNAP_ABORT:
            return net__snap_rx_frame(c, f);
        case NET__FRAME_REJECT: {
            /* The dialer refused our HELLO_ACK. */
            char reason[NET_REASON_MAX + 1];
            net__sanitize(reason, sizeof(reason), f->u.reject.reason, f->u.reject.reason_len);
            report_handshake_error(c, c->remote_id, reason);
            net__conn_close(c, NET_EHANDSHAKE);
            return 0;
        }
        case NET__FRAME_PING:
            return 0;
        default:
            return NET_EPROTO;
        }
    }
    if (c->state == NET__CONN_HANDSHAKE) {
        if (f->type == NET__FRAME_HELLO_ACK) {
            outbound_ack(c, &f->u.hello);
            return 0;
        }
        if (f->type == NET__FRAME_REJECT) {
            outbound_reject(c, f);
            return 0;
        }
        return NET_EPROTO;
    }
    switch (f->type) {
    case NET__FRAME_SNAP_ACK:
        return c->peer != NULL ? net__snap_tx_ack(c->peer, f) : 0;
    case NET__FRAME_PING:
        return 0;
    default:
        return NET_EPROTO;
    }
}

/* A frame could not be decoded or was not allowed here: drop this connection. */
static void conn_bad_frame(struct conn *c, int rc) {
    struct net_transport *t = c->t;
    if (c->state == NET__CONN_UP) {
        if (!t->closing && t->cb.on_protocol_error != NULL)
            t->cb.on_protocol_error(t->data, c->remote_id, c->addr, rc);
        net__conn_close(c, rc);
        return;
    }
    char local[NET_REASON_MAX + 1], remote[NET_REASON_MAX + 1];
    if (rc == NET_EVERSION) {
        unsigned theirs = c->rd.buf[c->rd.head + 4];
        snprintf(local, sizeof(local), "protocol version mismatch: local %u, remote %u",
                 (unsigned)NET_PROTOCOL_VERSION, theirs);
        snprintf(remote, sizeof(remote), "protocol version mismatch: local %u, remote %u", theirs,
                 (unsigned)NET_PROTOCOL_VERSION);
    } else {
        snprintf(local, sizeof(local), "bad handshake from the peer: %s", net_strerror(rc));
        snprintf(remote, sizeof(remote), "bad handshake: the peer says: %s", net_strerror(rc));
    }
    if (c->dir == NET__CONN_IN) {
        conn_reject(c, 0, local, remote);
    } else {
        report_handshake_error(c, c->remote_id, local);
        net__conn_close(c, rc);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    struct conn *c = h->data;
    if (c->ssl != NULL) {
        /* Ciphertext: moved into the read BIO before the next read. */
        *buf = uv_buf_init((char *)c->t->tls_rbuf, NET__TLS_READ_BYTES);
        return;
    }
    uint8_t *p;
    size_t n;
    if (net__reader_space(&c->rd, &p, &n) != 0) {
        /* libuv turns an empty buffer into UV_ENOBUFS for on_read. */
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    *buf = uv_buf_init((char *)p, (unsigned int)(n > UINT32_MAX ? UINT32_MAX : n));
}

static void conn_process(struct conn *c);

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    struct conn *c = s->data;
    if (c->state == NET__CONN_CLOSING || c->rejecting) return;
    if (nread < 0) {
        net__conn_close(c, nread == UV_EOF ? NET_ECONNLOST : (int)nread);
        return;
    }
    if (nread == 0) return;
    if (c->ssl == NULL) {
        net__reader_commit(&c->rd, (size_t)nread);
    } else {
        NET__ASSERT(buf->base == (char *)c->t->tls_rbuf);
        if (BIO_write(c->rbio, buf->base, (int)nread) != (int)nread) {
            ERR_clear_error();
            net__conn_close(c, NET_ENOMEM);
            return;
        }
        if (!c->tls_done && tls_handshake(c) != 0) return;
    }
    conn_process(c);
}

/* Decodes and handles buffered frames until none is complete or the connection pauses. */
static void conn_process(struct conn *c) {
    struct net_transport *t = c->t;
    struct net__frame *f = malloc(sizeof(*f));
    if (f == NULL) {
        net__conn_close(c, NET_ENOMEM);
        return;
    }
    while (c->state != NET__CONN_CLOSING && !c->paused && !c->rejecting && !t->closing) {
        /* Only an authenticated inbound connection may carry big frames. */
        size_t limit = c->dir == NET__CONN_IN && c->state == NET__CONN_UP ? t->frame_bytes_max
                                                                          : NET__HELLO_BYTES_MAX;
        bool have;
        int rc = net__reader_next(&c->rd, limit, f, &have);
        if (rc == 0 && !have) {
            if (tls_pull(c) > 0) continue; /* <0: failed and closing */
            break;
        }
        if (rc == 0) rc = handle_frame(c, f);
        if (rc != 0) {
            if (c->state != NET__CONN_CLOSING) conn_bad_frame(c, rc);
            break;
        }
    }
    free(f);
    if (c->state == NET__CONN_CLOSING || t->closing) return;
    bool want = !c->paused && !c->rejecting;
    if (want && !c->reading) {
        int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        if (rc != 0) {
            net__conn_close(c, rc);
            return;
        }
        c->reading = true;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

void net__conn_resume(struct conn *c) {
    NET__ASSERT(c != NULL);
    if (c->state == NET__CONN_CLOSING) return;
    c->paused = false;
    conn_process(c);
}

/* ---- dialling ---- */

static void on_connect(uv_connect_t *req, int status) {
    struct conn *c = req->data;
    if (c->state == NET__CONN_CLOSING) return;
    if (status < 0) {
        net__conn_close(c, status);
        return;
    }
    NET__ASSERT(c->peer != NULL);
    set_socket_options(c);
    c->state = NET__CONN_HANDSHAKE;
    if (c->peer->u.tls) {
        /* HELLO follows once the TLS handshake is done. */
        int rc = tls_start(c);
        if (rc != 0) {
            net__conn_close(c, rc);
            return;
        }
        if (tls_handshake(c) != 0) return;
    } else {
        int rc = send_hello(c, NET__FRAME_HELLO, c->peer->id);
        if (rc != 0) {
            net__conn_close(c, rc);
            return;
        }
    }
    conn_process(c); /* starts reading */
}

static bool is_loopback(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
    return false;
}

/* Outbound connections leave from the address the node listens on when that
 * is a specific address, so a peer (and a firewall) sees one address per
 * member: partitioning a member by address then cuts both directions. */
static void set_source(struct net_transport *t, const struct sockaddr *listen) {
    t->has_source = false;
    if (listen->sa_family == AF_INET) {
        struct sockaddr_in a = *(const struct sockaddr_in *)listen;
        if (a.sin_addr.s_addr == htonl(INADDR_ANY)) return;
        a.sin_port = 0;
        memcpy(&t->source, &a, sizeof a);
    } else if (listen->sa_family == AF_INET6) {
        struct sockaddr_in6 a = *(const struct sockaddr_in6 *)listen;
        if (IN6_IS_ADDR_UNSPECIFIED(&a.sin6_addr)) return;
        a.sin6_port = 0;
        memcpy(&t->source, &a, sizeof a);
    } else {
        return;
    }
    t->has_source = true;
}

static void connect_peer(struct peer *p, const struct sockaddr *sa) {
    struct net_transport *t = p->t;
    struct conn *c = conn_new(t, NET__CONN_OUT);
    if (c == NULL) {
        schedule_dial(p);
        return;
    }
    c->peer = p;
    c->remote_id = p->id;
    c->state = NET__CONN_CONNECTING;
    c->deadline_ms = uv_now(t->loop) + NET__HANDSHAKE_TIMEOUT_MS;
    net__addr_format(sa, c->addr, sizeof(c->addr));
    p->out = c;
    int rc = 0;
    const struct sockaddr *src = (const struct sockaddr *)&t->source;
    if (t->has_source && src->sa_family == sa->sa_family && is_loopback(src) == is_loopback(sa))
        rc = uv_tcp_bind(&c->tcp, src, 0);
    if (rc == 0) rc = uv_tcp_connect(&c->connect_req, &c->tcp, sa, on_connect);
    if (rc != 0) net__conn_close(c, rc);
}

static void on_getaddrinfo(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
    struct gai_req *g = req->data;
    struct net_transport *t = g->t;
    struct peer *p = g->p;
    if (p != NULL) {
        p->gai = NULL;
        if (status < 0 || res == NULL)
            schedule_dial(p);
        else
            connect_peer(p, res->ai_addr);
    }
    uv_freeaddrinfo(res);
    free(g);
    net__unref(t);
}

static void dial(struct peer *p) {
    struct net_transport *t = p->t;
    NET__ASSERT(p->out == NULL && p->gai == NULL);
    p->dials++;
    if (p->u.literal) {
        connect_peer(p, (const struct sockaddr *)&p->u.addr);
        return;
    }
    struct gai_req *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        schedule_dial(p);
        return;
    }
    g->t = t;
    g->p = p;
    g->req.data = g;
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)p->u.port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = uv_getaddrinfo(t->loop, &g->req, on_getaddrinfo, p->u.host, port, &hints);
    if (rc != 0) {
        free(g);
        schedule_dial(p);
        return;
    }
    net__ref(t);
    p->gai = g;
}

static void on_dial_timer(uv_timer_t *h) {
    struct peer *p = h->data;
    if (p->removed || p->t->closing || p->out != NULL || p->gai != NULL) return;
    dial(p);
}

static void schedule_dial(struct peer *p) {
    struct net_transport *t = p->t;
    uint64_t delay = jitter(t, p->backoff_ms);
    uint64_t next = (uint64_t)p->backoff_ms * 2;
    p->backoff_ms = (uint32_t)(next > t->backoff_max_ms ? t->backoff_max_ms : next);
    uv_timer_start(&p->timer, on_dial_timer, delay, 0);
}

/* ---- accepting ---- */

static void on_connection(uv_stream_t *server, int status) {
    struct net_transport *t = server->data;
    if (status < 0 || t->closing) return;
    struct conn *c = conn_new(t, NET__CONN_IN);
    if (c == NULL) {
        /* Out of memory. libuv stops watching the listener until this
         * connection is accepted, so the tick retries it. */
        t->accept_pending = true;
        return;
    }
    c->state = NET__CONN_HANDSHAKE;
    c->deadline_ms = uv_now(t->loop) + NET__HANDSHAKE_TIMEOUT_MS;
    int rc = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (rc != 0) {
        net__conn_close(c, rc);
        return;
    }
    if (t->n_inbound > NET_INBOUND_MAX) {
        net__conn_close(c, NET_ELIMIT);
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0)
        net__addr_format((struct sockaddr *)&ss, c->addr, sizeof(c->addr));
    set_socket_options(c);
    if (t->tls_server != NULL) {
        rc = tls_start(c);
        if (rc != 0) {
            net__conn_close(c, rc);
            return;
        }
    }
    conn_process(c); /* starts reading */
}

static void on_tick(uv_timer_t *h) {
    struct net_transport *t = h->data;
    uint64_t now = uv_now(t->loop);
    for (struct conn *c = t->conns; c != NULL && !t->closing; c = c->next) {
        if (c->broken && c->state != NET__CONN_CLOSING) {
            net__conn_close(c, NET_ECONNLOST);
            continue;
        }
        if (c->state == NET__CONN_CLOSING || c->deadline_ms == 0 || now < c->deadline_ms) continue;
        if (c->dir == NET__CONN_OUT && c->state == NET__CONN_HANDSHAKE) {
            /* TCP connected but no answer: probably not a quorumfs peer port. */
            char reason[128];
            snprintf(reason, sizeof(reason),
                     "no handshake reply within %u ms (is this a quorumfs peer port?)",
                     NET__HANDSHAKE_TIMEOUT_MS);
            report_handshake_error(c, c->remote_id, reason);
        }
        net__conn_close(c, NET_ETIMEDOUT);
    }
    if (t->closing) return;
    net__snap_tick(t, now);
    if (t->accept_pending) {
        t->accept_pending = false;
        on_connection((uv_stream_t *)&t->listener, 0);
    }
}

/* ---- public API ---- */

static void on_failed_listener_closed(uv_handle_t *h) {
    transport_free(h->data);
}

int net_transport_new(uv_loop_t *loop, const struct net_options *opt, struct net_transport **out) {
    NET__ASSERT(loop != NULL);
    NET__ASSERT(opt != NULL && out != NULL);
    if (opt->id == 0 || opt->cb.on_message == NULL) return NET_EINVAL;
    struct net__url lu;
    int rc = net__url_parse(opt->listen_url, &lu);
    if (rc != 0) return rc;
    if (!lu.literal && strcasecmp(lu.host, "localhost") == 0) {
        /* etcd binds "localhost" to the IPv4 loopback address. */
        struct sockaddr_in *sin = (struct sockaddr_in *)&lu.addr;
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sin->sin_port = htons(lu.port);
        lu.literal = true;
    }
    if (!lu.literal) return NET_EURL; /* bind to an address, as etcd requires */
    const char *token = opt->cluster_token != NULL ? opt->cluster_token : "";
    if (strlen(token) > NET_TOKEN_MAX) return NET_EINVAL;
    size_t frame_max = opt->frame_bytes_max ? opt->frame_bytes_max : NET_FRAME_BYTES_DEFAULT;
    if (frame_max < NET_FRAME_BYTES_MIN || frame_max > NET_FRAME_BYTES_LIMIT) return NET_EINVAL;
    uint32_t bmin = opt->backoff_min_ms ? opt->backoff_min_ms : NET_BACKOFF_MIN_MS_DEFAULT;
    uint32_t bmax = opt->backoff_max_ms ? opt->backoff_max_ms : NET_BACKOFF_MAX_MS_DEFAULT;
    if (bmin > bmax) return NET_EINVAL;

    struct net_transport *t = calloc(1, sizeof(*t));
    if (t == NULL) return NET_ENOMEM;
    t->loop = loop;
    t->id = opt->id;
    t->token_len = strlen(token);
    t->token = strdup(token);
    if (t->token == NULL) {
        rc = NET_ENOMEM;
        goto err_free;
    }
    rc = members_copy(opt->members, opt->n_members, opt->id, &t->members);
    if (rc != 0) goto err_free;
    t->n_members = opt->n_members;
    if (opt->snapshot_dir != NULL) {
        t->snapshot_dir = strdup(opt->snapshot_dir);
        if (t->snapshot_dir == NULL) {
            rc = NET_ENOMEM;
            goto err_free;
        }
    }
    t->frame_bytes_max = frame_max;
    t->send_queue_bytes_max = opt->send_queue_bytes_max ? opt->send_queue_bytes_max
                                                        : NET_SEND_QUEUE_BYTES_DEFAULT;
    t->send_queue_frames_max = opt->send_queue_frames_max ? opt->send_queue_frames_max
                                                          : NET_SEND_QUEUE_FRAMES_DEFAULT;
    t->snapshot_bytes_max = opt->snapshot_bytes_max ? opt->snapshot_bytes_max
                                                    : NET_SNAP_BYTES_DEFAULT;
    t->backoff_min_ms = bmin;
    t->backoff_max_ms = bmax;
    t->rng = opt->seed ? opt->seed : opt->id * 0x2545f4914f6cdd1dull;
    t->cb = opt->cb;
    t->data = opt->data;
    /* Peers may be https whatever this node listens on: a client context
     * always exists; a server context only for an https listen URL. */
    rc = net__tls_ctx_new(&opt->tls, false, &t->tls_client, opt->errmsg);
    if (rc == 0 && lu.tls) rc = net__tls_ctx_new(&opt->tls, true, &t->tls_server, opt->errmsg);
    if (rc != 0) goto err_free;
    t->tls_verify_host = !opt->tls.insecure_skip_verify;
    t->tls_rbuf = malloc(NET__TLS_READ_BYTES);
    if (t->tls_rbuf == NULL) {
        rc = NET_ENOMEM;
        goto err_free;
    }

    rc = uv_tcp_init(loop, &t->listener);
    if (rc != 0) goto err_free;
    t->listener.data = t;
    rc = uv_tcp_bind(&t->listener, (const struct sockaddr *)&lu.addr, 0);
    if (rc != 0) goto err_close;
    set_source(t, (const struct sockaddr *)&lu.addr);
    rc = uv_listen((uv_stream_t *)&t->listener, LISTEN_BACKLOG, on_connection);
    if (rc != 0) goto err_close;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    rc = uv_tcp_getsockname(&t->listener, (struct sockaddr *)&ss, &len);
    if (rc != 0) goto err_close;
    t->port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                       : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_timer_init(loop, &t->tick);
    t->tick.data = t;
    uv_timer_start(&t->tick, on_tick, NET__TICK_MS, NET__TICK_MS);
    t->refs = 2; /* listener + tick */
    *out = t;
    return 0;

err_close:
    /* The handle is registered with the loop: free t from its close callback. */
    uv_close((uv_handle_t *)&t->listener, on_failed_listener_closed);
    return rc;
err_free:
    transport_free(t);
    return rc;
}

int net_transport_port(const struct net_transport *t) {
    NET__ASSERT(t != NULL);
    return t->port;
}

int net_transport_set_members(struct net_transport *t, const struct net_member *members,
                              size_t n_members) {
    NET__ASSERT(t != NULL);
    if (t->closing) return NET_ECLOSING;
    struct net__member *m;
    int rc = members_copy(members, n_members, t->id, &m);
    if (rc != 0) return rc;
    free_members(t->members, t->n_members);
    t->members = m;
    t->n_members = n_members;
    return 0;
}

static void on_peer_closed(uv_handle_t *h) {
    struct peer *p = h->data;
    struct net_transport *t = p->t;
    free(p->url);
    free(p);
    net__unref(t);
}

int net_transport_add_peer(struct net_transport *t, uint64_t id, const char *url) {
    NET__ASSERT(t != NULL);
    if (t->closing) return NET_ECLOSING;
    if (id == 0 || id == t->id || url == NULL) return NET_EINVAL;
    if (find_peer(t, id) != NULL) return NET_EEXIST;
    if (t->n_peers >= NET_PEERS_MAX) return NET_ELIMIT;
    struct peer *p = calloc(1, sizeof(*p));
    if (p == NULL) return NET_ENOMEM;
    int rc = net__url_parse(url, &p->u);
    if (rc != 0) {
        free(p);
        return rc;
    }
    p->url = strdup(url);
    if (p->url == NULL) {
        free(p);
        return NET_ENOMEM;
    }
    p->t = t;
    p->id = id;
    p->backoff_ms = t->backoff_min_ms;
    uv_timer_init(t->loop, &p->timer);
    p->timer.data = p;
    p->next = t->peers;
    t->peers = p;
    t->n_peers++;
    net__ref(t);
    /* Dial from the loop, not from inside this call. */
    uv_timer_start(&p->timer, on_dial_timer, 0, 0);
    return 0;
}

/* Stops everything of p; the caller has unlinked it. Frees it asynchronously. */
static void peer_teardown(struct peer *p, int rc) {
    p->removed = true;
    p->up = false; /* a removed peer reports no state change */
    uv_timer_stop(&p->timer);
    if (p->gai != NULL) {
        p->gai->p = NULL;
        (void)uv_cancel((uv_req_t *)&p->gai->req);
        p->gai = NULL;
    }
    net__snap_tx_fail(p, rc, NULL);
    if (p->out != NULL) net__conn_close(p->out, rc);
    uv_close((uv_handle_t *)&p->timer, on_peer_closed);
}

int net_transport_remove_peer(struct net_transport *t, uint64_t id) {
    NET__ASSERT(t != NULL);
    if (t->closing) return NET_ECLOSING;
    struct peer **pp = &t->peers;
    while (*pp != NULL && (*pp)->id != id) pp = &(*pp)->next;
    struct peer *p = *pp;
    if (p == NULL) return NET_ENOPEER;
    *pp = p->next;
    t->n_peers--;
    peer_teardown(p, NET_ECANCELED);
    for (struct conn *c = t->conns; c != NULL; c = c->next)
        if (c->dir == NET__CONN_IN && c->remote_id == id) net__conn_close(c, NET_ECANCELED);
    return 0;
}

int net_send(struct net_transport *t, uint64_t to_id, const void *buf, size_t len) {
    NET__ASSERT(t != NULL);
    NET__ASSERT(buf != NULL || len == 0);
    if (t->closing) return NET_ECLOSING;
    struct peer *p = find_peer(t, to_id);
    if (p == NULL) return NET_ENOPEER;
    struct conn *c = p->out;
    size_t frame = NET__FRAME_HEADER_BYTES + len;
    int rc;
    if (len == 0) {
        rc = NET_EINVAL;
    } else if (frame > t->frame_bytes_max || frame > t->send_queue_bytes_max) {
        rc = NET_ETOOBIG;
    } else if (c == NULL || c->state != NET__CONN_UP) {
        rc = NET_EPEERDOWN;
    } else if (c->q_frames >= t->send_queue_frames_max ||
               c->q_bytes + frame > t->send_queue_bytes_max) {
        rc = NET_EQUEUEFULL;
    } else {
        struct wreq *w = net__wreq_new(NET__FRAME_RAFT, len);
        if (w == NULL) {
            rc = NET_ENOMEM;
        } else {
            memcpy(w->data + NET__FRAME_HEADER_BYTES, buf, len);
            w->counted = true;
            c->q_bytes += w->len;
            c->q_frames++;
            rc = net__conn_write(c, w);
            if (rc != 0) {
                c->q_bytes -= w->len;
                c->q_frames--;
                free(w);
            }
        }
    }
    if (rc != 0) {
        p->dropped_frames++;
        return rc;
    }
    p->sent_frames++;
    return 0;
}

int net_transport_peer_info(const struct net_transport *t, uint64_t id, struct net_peer_info *out) {
    NET__ASSERT(t != NULL && out != NULL);
    const struct peer *p = find_peer(t, id);
    if (p == NULL) return NET_ENOPEER;
    memset(out, 0, sizeof(*out));
    out->up = p->out != NULL && p->out->state == NET__CONN_UP;
    if (p->out != NULL) {
        out->queued_bytes = p->out->q_bytes;
        out->queued_frames = p->out->q_frames;
    }
    out->sent_frames = p->sent_frames;
    out->dropped_frames = p->dropped_frames;
    out->dials = p->dials;
    out->snapshot_in_flight = p->tx != NULL;
    return 0;
}

void net_transport_close(struct net_transport *t, void (*close_cb)(void *data)) {
    NET__ASSERT(t != NULL);
    NET__ASSERT(!t->closing);
    t->closing = true;
    t->close_cb = close_cb;
    while (t->peers != NULL) {
        struct peer *p = t->peers;
        t->peers = p->next;
        t->n_peers--;
        peer_teardown(p, NET_ECANCELED);
    }
    for (struct conn *c = t->conns; c != NULL; c = c->next) net__conn_close(c, NET_ECANCELED);
    uv_close((uv_handle_t *)&t->listener, on_transport_handle_closed);
    uv_close((uv_handle_t *)&t->tick, on_transport_handle_closed);
}
