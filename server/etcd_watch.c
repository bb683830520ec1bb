/*
 * etcd_watch.c - the etcd Watch service: bidirectional streams, each with
 * any number of watchers on a key or a range.
 *
 * A watcher is either synced or unsynced (etcd's watchableStore terms):
 *  - synced: it has seen every revision up to the last one the apply hook
 *    fanned out (hub->last_rev), or starts in the future (min_rev). The
 *    apply hook sends it the matching events of each applied revision
 *    straight from the store's result.
 *  - unsynced: it needs revisions from min_rev on that it has not been sent
 *    (a start_revision in the past, or its client stopped reading). The sync
 *    pass reads them from the store's change log (store_events) in batches of
 *    whole revisions and sends them; once min_rev is past the store's
 *    revision the watcher is synced again. A start_revision below the
 *    compacted revision gets etcd's answer: compact_revision set and
 *    canceled.
 * A client that does not read (api_stream_send() says API_EQUEUEFULL)
 * blocks its stream: all its watchers become unsynced at the revision they
 * still need and nothing more is queued until the transport reports the
 * queue drained; they are then caught up from the store's history. Memory
 * per slow client is therefore bounded by the transport's queue limit plus
 * at most ETCD_WATCH_CTRL_QUEUE_MAX small control answers.
 *
 * Events of one watcher go out in revision order: the hook only serves
 * synced watchers, the sync pass only unsynced ones, and a watcher moves
 * from unsynced to synced only once the history holds nothing newer for it.
 * Control answers (created, canceled, progress) are ordered with events
 * because a stream with queued control answers is blocked.
 *
 * watch_id: per stream, from 0, skipping ids in use, or the id the client
 * chose (etcd 3.4's watchStream). Everything runs on the loop thread.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/etcd.h"

/* etcd's clientv3.InvalidWatchID. */
#define WATCH_ID_NONE (-1)
/* Bytes of keys and values one catch-up response carries before it stops at
 * a revision boundary, so a history of large values is sent in pieces. */
#define WATCH_BATCH_BYTES (4u * 1024u * 1024u)
/* Room etcd's fragmenting leaves for the message around the events. */
#define WATCH_FRAGMENT_OVERHEAD 512u

static unsigned progress_interval_ms = ETCD_WATCH_PROGRESS_INTERVAL_MS;

void etcd__watch_set_progress_interval(unsigned ms) {
    progress_interval_ms = ms ? ms : ETCD_WATCH_PROGRESS_INTERVAL_MS;
}

struct watcher {
    struct watcher *next;
    int64_t id;
    uint8_t *key; /* owned; never empty ("\0" is the smallest key) */
    size_t key_len;
    uint8_t *end; /* owned; NULL: the single key */
    size_t end_len;
    bool prev_kv, progress_notify, fragment;
    bool no_put, no_delete;
    bool synced;
    bool sent_since_tick; /* events sent since the last progress tick */
    int64_t min_rev;      /* first revision it still needs (see file comment) */
};

/* A control answer waiting for room in the stream's queue. */
struct ctrl {
    struct ctrl *next;
    int64_t watch_id;
    int64_t rev;
    int64_t compact_rev;
    bool created, canceled;
    char reason[96];
};

struct wstream {
    int kind; /* ETCD_STREAM_WATCH; first, see etcd.h */
    struct wstream *next, **pprev;
    struct etcd *e;
    struct api_stream *st;
    struct watcher *watchers;
    size_t n_watchers, n_unsynced;
    int64_t next_id;
    bool blocked;         /* the client's queue is full, or ctrl answers wait */
    bool progress_wanted; /* a progress request waits for every watcher to sync */
    bool progress_timer_on;
    struct ctrl *ctrl_head, *ctrl_tail;
    size_t n_ctrl;
    uv_timer_t progress_timer; /* its close callback frees the stream */
};

struct etcd_watch_hub {
    struct wstream *streams;
    uv_timer_t sync_timer;
    bool sync_armed;
    bool stopped;
    int64_t last_rev; /* the last revision fanned out by the apply hook */
};

/* --------------------------------------------------------------- helpers */

static int64_t max64(int64_t a, int64_t b) {
    return a > b ? a : b;
}

static bool watcher_matches(const struct watcher *w, const struct store_event *ev) {
    if (ev->type == STORE_EVENT_PUT ? w->no_put : w->no_delete) return false;
    return etcd__key_in_range(ev->kv.key.base, ev->kv.key.len, w->key, w->key_len, w->end,
                              w->end_len);
}

static void schedule_sync(struct etcd *e, uint64_t delay_ms);

static void mark_unsynced(struct wstream *ws, struct watcher *w, int64_t min_rev) {
    w->min_rev = max64(w->min_rev, min_rev);
    if (w->synced) {
        w->synced = false;
        ws->n_unsynced++;
    }
}

/* The client stopped reading: every synced watcher has seen up to `upto`
 * and will be caught up from the history once the queue drains. */
static void block_stream(struct wstream *ws, int64_t upto) {
    ws->blocked = true;
    for (struct watcher *w = ws->watchers; w; w = w->next)
        if (w->synced) mark_unsynced(ws, w, upto + 1);
}

static void close_stream(struct wstream *ws, enum api_grpc_code code, const char *msg);

/* Sends one WatchResponse. Returns 0, API_EQUEUEFULL (nothing queued; the
 * caller blocks the stream) or API_ECLOSED (the stream is over: its end
 * entry will come, or it was closed here and ws->st is NULL). */
static int send_resp(struct wstream *ws, Etcdserverpb__WatchResponse *resp) {
    if (!ws->st) return API_ECLOSED;
    int rc = api_stream_send(ws->st, &resp->base);
    if (rc == 0 || rc == API_ECLOSED || rc == API_EQUEUEFULL) return rc;
    /* API_ETOOBIG or API_ENOMEM: the stream cannot carry on correctly. */
    close_stream(ws, API_GRPC_RESOURCE_EXHAUSTED, "etcdserver: watch response too large");
    return API_ECLOSED;
}

static int send_ctrl_now(struct wstream *ws, const struct ctrl *c) {
    Etcdserverpb__WatchResponse resp = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    etcd__header(ws->e, &hdr, c->rev);
    resp.header = &hdr;
    resp.watch_id = c->watch_id;
    resp.created = c->created;
    resp.canceled = c->canceled;
    resp.compact_revision = c->compact_rev;
    if (c->reason[0]) resp.cancel_reason = (char *)(uintptr_t)c->reason;
    return send_resp(ws, &resp);
}

/* Sends a control answer now, or queues it behind earlier ones (the stream
 * is then blocked). Returns false if the stream is closed now. */
static bool send_ctrl(struct wstream *ws, const struct ctrl *c) {
    if (!ws->st) return false;
    if (!ws->blocked) {
        int rc = send_ctrl_now(ws, c);
        if (rc != API_EQUEUEFULL) return ws->st != NULL;
        block_stream(ws, ws->e->watch->last_rev);
    }
    if (ws->n_ctrl >= ETCD_WATCH_CTRL_QUEUE_MAX) {
        close_stream(ws, API_GRPC_RESOURCE_EXHAUSTED, "etcdserver: too many requests");
        return false;
    }
    struct ctrl *q = malloc(sizeof *q);
    if (!q) {
        close_stream(ws, API_GRPC_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
        return false;
    }
    *q = *c;
    q->next = NULL;
    if (ws->ctrl_tail)
        ws->ctrl_tail->next = q;
    else
        ws->ctrl_head = q;
    ws->ctrl_tail = q;
    ws->n_ctrl++;
    return true;
}

/* Sends the events of one watcher as one response, or as etcd's fragments
 * when the watcher asked for them and the response is too large. */
static int send_events(struct wstream *ws, struct watcher *w, int64_t rev, Mvccpb__Event **evs,
                       size_t n) {
    Etcdserverpb__WatchResponse resp = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    etcd__header(ws->e, &hdr, rev);
    resp.header = &hdr;
    resp.watch_id = w->id;
    resp.events = evs;
    resp.n_events = n;
    size_t limit = ws->e->max_request_bytes + API_GRPC_OVERHEAD_BYTES;
    if (!w->fragment || n < 2 || etcdserverpb__watch_response__get_packed_size(&resp) < limit) {
        int rc = send_resp(ws, &resp);
        if (rc == 0) w->sent_since_tick = true;
        return rc;
    }
    /* etcd's sendFragments: greedy pieces under the limit, each with at
     * least one event, all but the last flagged as fragments. */
    size_t i = 0;
    while (i < n) {
        size_t j = i, bytes = WATCH_FRAGMENT_OVERHEAD;
        while (j < n) {
            size_t ev = mvccpb__event__get_packed_size(evs[j]) + 8;
            if (j > i && bytes + ev >= limit) break;
            bytes += ev;
            j++;
        }
        resp.events = evs + i;
        resp.n_events = j - i;
        resp.fragment = j < n;
        int rc = send_resp(ws, &resp);
        /* A refusal part-way means the watcher replays from min_rev: the
         * client may see the first pieces again, which fragmenting clients
         * tolerate by discarding the unfinished response. */
        if (rc) return rc;
        i = j;
    }
    w->sent_since_tick = true;
    return 0;
}

/* --------------------------------------------------------------- watchers */

static void watcher_free(struct watcher *w) {
    free(w->key);
    free(w->end);
    free(w);
}

static struct watcher *watcher_find(struct wstream *ws, int64_t id, struct watcher ***pp_out) {
    for (struct watcher **pp = &ws->watchers; *pp; pp = &(*pp)->next) {
        if ((*pp)->id == id) {
            if (pp_out) *pp_out = pp;
            return *pp;
        }
    }
    return NULL;
}

static void watcher_remove(struct wstream *ws, struct watcher **pp) {
    struct watcher *w = *pp;
    *pp = w->next;
    if (!w->synced) ws->n_unsynced--;
    ws->n_watchers--;
    watcher_free(w);
}

/* --------------------------------------------------------------- sync pass */

enum sync_outcome { SYNC_PROGRESS, SYNC_BLOCKED, SYNC_REMOVED, SYNC_RETRY };

static enum sync_outcome sync_watcher(struct wstream *ws, struct watcher **pp) {
    struct etcd *e = ws->e;
    struct watcher *w = *pp;
    struct store *s = node__store_acquire(e->node);
    int64_t cur = store_current_revision(s);
    if (w->min_rev > cur) {
        node__store_release(e->node);
        w->synced = true;
        ws->n_unsynced--;
        return SYNC_PROGRESS;
    }
    struct store_event_batch b;
    int rc = store_events(s, w->min_rev, w->key, w->key_len, w->end, w->end_len,
                          ETCD_WATCH_BATCH_EVENTS, w->prev_kv, &b);
    int64_t compact = store_compact_revision(s);
    node__store_release(e->node);
    if (rc == STORE_ECOMPACTED) {
        /* etcd: a response with compact_revision set, canceled, no reason. */
        struct ctrl c = {.watch_id = w->id, .rev = cur, .compact_rev = compact, .canceled = true};
        rc = send_ctrl_now(ws, &c);
        if (rc == API_EQUEUEFULL) block_stream(ws, e->watch->last_rev);
        /* Full or closed: stop serving this stream (it may be gone). */
        if (rc) return SYNC_BLOCKED;
        watcher_remove(ws, pp);
        return SYNC_REMOVED;
    }
    if (rc) return SYNC_RETRY; /* storage trouble: try again next pass */

    struct etcd_arena a = {0};
    Mvccpb__Event **evs = b.n_events ? etcd__alloc(&a, b.n_events * sizeof *evs) : NULL;
    size_t n = 0, bytes = 0;
    int64_t next = b.next_rev;
    enum sync_outcome out = SYNC_PROGRESS;
    if (b.n_events && !evs) {
        out = SYNC_RETRY;
        goto done;
    }
    for (size_t i = 0; i < b.n_events; i++) {
        const struct store_event *ev = &b.events[i];
        /* Stop at a revision boundary once the response is big enough. */
        if (bytes >= WATCH_BATCH_BYTES && i > 0 &&
            ev->kv.mod_revision != b.events[i - 1].kv.mod_revision) {
            next = ev->kv.mod_revision;
            break;
        }
        if (ev->kv.mod_revision < w->min_rev || !watcher_matches(w, ev)) continue;
        if (!(evs[n] = etcd__event_to_pb(&a, ev, w->prev_kv))) {
            out = SYNC_RETRY;
            goto done;
        }
        bytes += ev->kv.key.len + ev->kv.value.len + ev->prev_kv.value.len;
        n++;
    }
    if (n) {
        rc = send_events(ws, w, cur, evs, n);
        if (rc) {
            if (rc == API_EQUEUEFULL) block_stream(ws, e->watch->last_rev);
            out = SYNC_BLOCKED;
            goto done;
        }
    }
    w->min_rev = next;
    if (w->min_rev > cur) {
        w->synced = true;
        ws->n_unsynced--;
    }
done:
    etcd__arena_free(&a);
    store_event_batch_release(&b);
    return out;
}

static void send_progress_if_synced(struct wstream *ws) {
    if (!ws->st || !ws->progress_wanted || ws->blocked || ws->n_unsynced) return;
    ws->progress_wanted = false;
    struct ctrl c = {.watch_id = WATCH_ID_NONE, .rev = 0};
    send_ctrl(ws, &c);
}

static void sync_cb(uv_timer_t *t) {
    struct etcd *e = t->data;
    struct etcd_watch_hub *hub = e->watch;
    hub->sync_armed = false;
    if (hub->stopped) return;
    unsigned budget = ETCD_WATCH_SYNC_WATCHERS_MAX;
    bool progressed = false, pending = false;
    struct wstream *ws = hub->streams;
    while (ws) {
        struct wstream *next_ws = ws->next; /* ws may be closed below */
        if (!ws->blocked && ws->n_unsynced) {
            struct watcher **pp = &ws->watchers;
            while (*pp && !ws->blocked) {
                if ((*pp)->synced) {
                    pp = &(*pp)->next;
                    continue;
                }
                if (budget == 0) break;
                budget--;
                enum sync_outcome o = sync_watcher(ws, pp);
                if (o == SYNC_REMOVED) {
                    progressed = true;
                    continue; /* *pp is now the next watcher */
                }
                if (o == SYNC_BLOCKED) break;
                if (o == SYNC_PROGRESS) progressed = true;
                pp = &(*pp)->next;
            }
            if (ws->n_unsynced && !ws->blocked) pending = true;
        }
        send_progress_if_synced(ws);
        ws = next_ws;
    }
    /* More to do: continue at once if the last pass got somewhere (other
     * loop work still runs in between), else at the regular period. */
    if (pending) schedule_sync(e, progressed ? 0 : ETCD_WATCH_SYNC_INTERVAL_MS);
}

static void schedule_sync(struct etcd *e, uint64_t delay_ms) {
    struct etcd_watch_hub *hub = e->watch;
    if (hub->stopped) return;
    if (hub->sync_armed) {
        if (delay_ms > 0) return;
        uv_timer_stop(&hub->sync_timer);
    }
    hub->sync_armed = true;
    uv_timer_start(&hub->sync_timer, sync_cb, delay_ms, 0);
}

/* --------------------------------------------------------------- apply hook */

void etcd__watch_on_apply(struct etcd *e, const struct store_result *res) {
    struct etcd_watch_hub *hub = e->watch;
    if (!hub || hub->stopped) return;
    int64_t rev = res->revision;
    if (rev > hub->last_rev + (res->n_events ? 1 : 0)) {
        /* Revisions were applied without this hook (a snapshot replaced the
         * store): every synced watcher catches up from the history. */
        for (struct wstream *ws = hub->streams; ws; ws = ws->next)
            for (struct watcher *w = ws->watchers; w; w = w->next)
                if (w->synced) mark_unsynced(ws, w, hub->last_rev + 1);
        hub->last_rev = res->n_events ? rev - 1 : rev;
        schedule_sync(e, 0);
    }
    if (res->n_events == 0) {
        if (rev > hub->last_rev) hub->last_rev = rev;
        return;
    }
    hub->last_rev = rev;
    if (!hub->streams) return;

    size_t n_ev = res->n_events;
    struct etcd_arena a = {0};
    Mvccpb__Event **plain = etcd__alloc(&a, n_ev * sizeof *plain);
    Mvccpb__Event **withprev = etcd__alloc(&a, n_ev * sizeof *withprev);
    Mvccpb__Event **scratch = etcd__alloc(&a, n_ev * sizeof *scratch);
    bool oom = !plain || !withprev || !scratch;
    struct wstream *ws = hub->streams;
    while (ws) {
        struct wstream *next_ws = ws->next;
        if (ws->blocked) {
            ws = next_ws;
            continue;
        }
        for (struct watcher *w = ws->watchers; w; w = w->next) {
            if (!w->synced || rev < w->min_rev) continue;
            size_t n = 0;
            for (size_t i = 0; !oom && i < n_ev; i++) {
                const struct store_event *ev = &res->events[i];
                if (!watcher_matches(w, ev)) continue;
                Mvccpb__Event **cache = w->prev_kv ? withprev : plain;
                if (!cache[i] && !(cache[i] = etcd__event_to_pb(&a, ev, w->prev_kv))) {
                    oom = true;
                    break;
                }
                scratch[n++] = cache[i];
            }
            if (oom) {
                /* Out of memory: the watcher catches up from the history. */
                mark_unsynced(ws, w, rev);
                schedule_sync(e, ETCD_WATCH_SYNC_INTERVAL_MS);
                oom = !plain || !withprev || !scratch;
                continue;
            }
            if (n == 0) continue;
            int rc = send_events(ws, w, rev, scratch, n);
            if (rc == API_EQUEUEFULL) {
                /* Watchers before w got rev; w and those after it did not. */
                bool reached = false;
                for (struct watcher *x = ws->watchers; x; x = x->next) {
                    if (x == w) reached = true;
                    if (x->synced) mark_unsynced(ws, x, reached ? rev : rev + 1);
                }
                ws->blocked = true;
                break;
            }
            if (rc == API_ECLOSED) break; /* the stream may be freed */
        }
        ws = next_ws;
    }
    etcd__arena_free(&a);
}

/* --------------------------------------------------------------- requests */

static void progress_cb(uv_timer_t *t) {
    struct wstream *ws = t->data;
    for (struct watcher *w = ws->watchers; w; w = w->next) {
        if (!w->progress_notify) continue;
        /* etcd's RequestProgress: only synced watchers, and not right after
         * events were sent. */
        if (!w->sent_since_tick && w->synced && !ws->blocked) {
            struct ctrl c = {.watch_id = w->id};
            if (!send_ctrl(ws, &c)) return; /* the stream was closed */
        }
        w->sent_since_tick = false;
    }
}

static void start_progress_timer(struct wstream *ws) {
    if (ws->progress_timer_on) return;
    ws->progress_timer_on = true;
    /* etcd adds up to a tenth of jitter so that watchers created together
     * do not report together. */
    uint64_t jitter = progress_interval_ms / 10 ? (uint64_t)rand() % (progress_interval_ms / 10)
                                                : 0;
    uint64_t every = progress_interval_ms + jitter;
    uv_timer_start(&ws->progress_timer, progress_cb, every, every);
}

static void create_watch(struct wstream *ws, const Etcdserverpb__WatchCreateRequest *cr) {
    struct etcd *e = ws->e;
    int64_t cur = etcd__current_revision(e);
    struct ctrl c = {.watch_id = WATCH_ID_NONE, .rev = cur, .created = true};
    static const uint8_t zero = 0;
    const uint8_t *key = cr->key.len ? cr->key.data : &zero;
    size_t key_len = cr->key.len ? cr->key.len : 1;
    const uint8_t *end = cr->range_end.data;
    size_t end_len = cr->range_end.len;
    bool from_key = end_len == 1 && end[0] == 0;
    if (end_len && !from_key) {
        size_t m = key_len < end_len ? key_len : end_len;
        int cmp = memcmp(key, end, m);
        if (cmp > 0 || (cmp == 0 && key_len >= end_len)) {
            c.canceled = true;
            snprintf(c.reason, sizeof c.reason, "%s", etcd__strerror(ETCD_EWATCHRANGE));
            send_ctrl(ws, &c);
            return;
        }
    }
    int64_t id = cr->watch_id;
    if (id != 0 && watcher_find(ws, id, NULL)) {
        c.canceled = true;
        snprintf(c.reason, sizeof c.reason, "%s", etcd__strerror(ETCD_EWATCHDUPID));
        send_ctrl(ws, &c);
        return;
    }
    if (ws->n_watchers >= ETCD_WATCHERS_PER_STREAM_MAX) {
        c.canceled = true;
        snprintf(c.reason, sizeof c.reason, "%s", "etcdserver: too many watchers on the stream");
        send_ctrl(ws, &c);
        return;
    }
    if (id == 0) {
        while (watcher_find(ws, ws->next_id, NULL)) ws->next_id++;
        id = ws->next_id++;
    }
    struct watcher *w = calloc(1, sizeof *w);
    if (!w) goto err_mem;
    w->key = malloc(key_len);
    if (!w->key) goto err_w;
    memcpy(w->key, key, key_len);
    w->key_len = key_len;
    if (end_len) {
        w->end = malloc(end_len);
        if (!w->end) goto err_w;
        memcpy(w->end, end, end_len);
        w->end_len = end_len;
    }
    w->id = id;
    w->prev_kv = cr->prev_kv;
    w->progress_notify = cr->progress_notify;
    w->fragment = cr->fragment;
    for (size_t i = 0; i < cr->n_filters; i++) {
        if (cr->filters[i] == ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NOPUT)
            w->no_put = true;
        else if (cr->filters[i] == ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NODELETE)
            w->no_delete = true;
    }
    int64_t start = cr->start_revision;
    if (start == 0 || start > cur) {
        w->synced = true;
        w->min_rev = start == 0 ? cur + 1 : start;
    } else {
        w->min_rev = start;
        ws->n_unsynced++;
    }
    /* Newest last, so a stream's watchers are served in creation order. */
    struct watcher **pp = &ws->watchers;
    while (*pp) pp = &(*pp)->next;
    *pp = w;
    ws->n_watchers++;
    c.watch_id = id;
    if (!send_ctrl(ws, &c)) return; /* the stream was closed */
    if (w->progress_notify) start_progress_timer(ws);
    if (!w->synced && !ws->blocked) schedule_sync(e, 0);
    return;

err_w:
    watcher_free(w);
err_mem:
    c.canceled = true;
    snprintf(c.reason, sizeof c.reason, "%s", "etcdserver: out of memory");
    send_ctrl(ws, &c);
}

static void cancel_watch(struct wstream *ws, int64_t id) {
    struct watcher **pp;
    /* etcd answers nothing for an unknown id. */
    if (!watcher_find(ws, id, &pp)) return;
    watcher_remove(ws, pp);
    struct ctrl c = {.watch_id = id, .rev = 0, .canceled = true};
    send_ctrl(ws, &c);
}

void etcd__watch_request(void *ctx, struct api_stream *stream,
                         const Etcdserverpb__WatchRequest *req) {
    (void)ctx;
    struct wstream *ws = api_stream_data(stream);
    if (!ws) return;
    switch (req->request_union_case) {
    case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST:
        if (req->create_request) create_watch(ws, req->create_request);
        break;
    case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CANCEL_REQUEST:
        if (req->cancel_request) cancel_watch(ws, req->cancel_request->watch_id);
        break;
    case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_PROGRESS_REQUEST:
        /* etcd 3.4 answers at once with watch_id -1; this waits until every
         * watcher of the stream is synced, so that the revision it reports
         * is one every watcher has really reached. */
        ws->progress_wanted = true;
        send_progress_if_synced(ws);
        if (ws->progress_wanted) schedule_sync(ws->e, 0);
        break;
    default:
        break; /* etcd ignores what it does not know */
    }
}

/* --------------------------------------------------------------- streams */

static void stream_closed_cb(uv_handle_t *h) {
    struct wstream *ws = h->data;
    struct etcd *e = ws->e;
    free(ws);
    etcd__unref(e);
}

static void close_stream(struct wstream *ws, enum api_grpc_code code, const char *msg) {
    if (!ws->st) return; /* already closed */
    api_stream_set_data(ws->st, NULL);
    api_stream_close(ws->st, code, msg);
    ws->st = NULL;
    *ws->pprev = ws->next;
    if (ws->next) ws->next->pprev = ws->pprev;
    while (ws->watchers) watcher_remove(ws, &ws->watchers);
    while (ws->ctrl_head) {
        struct ctrl *c = ws->ctrl_head;
        ws->ctrl_head = c->next;
        free(c);
    }
    ws->ctrl_tail = NULL;
    uv_close((uv_handle_t *)&ws->progress_timer, stream_closed_cb);
}

void etcd__watch_open(void *ctx, struct api_stream *stream) {
    struct etcd *e = ctx;
    struct etcd_watch_hub *hub = e->watch;
    if (e->stopping || hub->stopped) {
        api_stream_close(stream, API_GRPC_UNAVAILABLE, "etcdserver: server stopped");
        return;
    }
    struct wstream *ws = calloc(1, sizeof *ws);
    if (!ws) {
        api_stream_close(stream, API_GRPC_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
        return;
    }
    ws->kind = ETCD_STREAM_WATCH;
    ws->e = e;
    ws->st = stream;
    uv_timer_init(e->loop, &ws->progress_timer);
    ws->progress_timer.data = ws;
    etcd__ref(e);
    ws->next = hub->streams;
    if (ws->next) ws->next->pprev = &ws->next;
    ws->pprev = &hub->streams;
    hub->streams = ws;
    api_stream_set_data(stream, ws);
}

void etcd__watch_end(void *ctx, struct api_stream *stream, enum api_stream_event ev) {
    (void)ctx;
    struct wstream *ws = api_stream_data(stream);
    if (!ws) return;
    /* A half-closed stream keeps delivering, as etcd's does. */
    if (ev == API_STREAM_CANCELLED) close_stream(ws, API_GRPC_CANCELLED, NULL);
}

void etcd__watch_drained(struct etcd *e, struct api_stream *stream) {
    struct wstream *ws = api_stream_data(stream);
    if (!ws) return;
    while (ws->st && ws->ctrl_head) {
        struct ctrl *c = ws->ctrl_head;
        int rc = send_ctrl_now(ws, c);
        if (rc == API_EQUEUEFULL) return; /* called again once there is room */
        if (rc == API_ECLOSED) return;    /* the stream may be gone */
        ws->ctrl_head = c->next;
        if (!ws->ctrl_head) ws->ctrl_tail = NULL;
        ws->n_ctrl--;
        free(c);
    }
    if (!ws->st) return;
    ws->blocked = false;
    if (ws->n_unsynced || ws->progress_wanted) schedule_sync(e, 0);
}

/* --------------------------------------------------------------- life */

static void hub_timer_closed(uv_handle_t *h) {
    etcd__unref(h->data);
}

/* A snapshot replaced the store: every synced watcher catches up from the
 * new store's history (or is canceled with compact_revision if it no longer
 * has the revisions it needs), as etcd's watchableStore does on restore. */
static void restore_cb(void *ctx) {
    struct etcd *e = ctx;
    struct etcd_watch_hub *hub = e->watch;
    if (!hub || hub->stopped) return;
    for (struct wstream *ws = hub->streams; ws; ws = ws->next)
        for (struct watcher *w = ws->watchers; w; w = w->next)
            if (w->synced) mark_unsynced(ws, w, hub->last_rev + 1);
    hub->last_rev = etcd__current_revision(e);
    schedule_sync(e, 0);
}

int etcd__watch_init(struct etcd *e) {
    struct etcd_watch_hub *hub = calloc(1, sizeof *hub);
    if (!hub) return -ENOMEM;
    e->watch = hub;
    hub->last_rev = etcd__current_revision(e);
    uv_timer_init(e->loop, &hub->sync_timer);
    hub->sync_timer.data = e;
    etcd__ref(e);
    node__set_restore_hook(e->node, restore_cb, e);
    return 0;
}

void etcd__watch_stop(struct etcd *e) {
    struct etcd_watch_hub *hub = e->watch;
    if (!hub || hub->stopped) return;
    hub->stopped = true;
    while (hub->streams)
        close_stream(hub->streams, API_GRPC_UNAVAILABLE, "etcdserver: server stopped");
    uv_close((uv_handle_t *)&hub->sync_timer, hub_timer_closed);
}

void etcd__watch_free(struct etcd *e) {
    free(e->watch);
    e->watch = NULL;
}
