/*
 * snapshot.c - streaming a snapshot (a RocksDB checkpoint directory) to a
 * peer, and receiving one into a fresh directory.
 *
 * Sending. net_send_snapshot() lists the source when called: names and
 * sizes only, with opendir/lstat on the loop thread. That is metadata of a
 * checkpoint (tens to a few thousand files, bounded by NET_SNAP_FILES_MAX),
 * cheap next to the contents. The contents are read with uv_fs_open/
 * uv_fs_read/uv_fs_close on libuv's threadpool, one NET__SNAP_CHUNK_BYTES
 * read at a time, straight into the SNAP_CHUNK frame that carries it, so the
 * loop never waits for a disk. At most NET__SNAP_WRITES_INFLIGHT snapshot
 * frames sit in the socket's queue: the next read starts only when one was
 * written, so a slow peer slows the reads instead of growing memory, and
 * Raft frames sent meanwhile interleave with the chunks on the same
 * connection instead of waiting for the whole snapshot. The stream is tied
 * to the connection it started on: if that connection drops, the snapshot
 * fails (Raft asks again). Success is the receiver's SNAP_ACK, sent once it
 * fsynced every file and directory.
 *
 * Receiving. Each snapshot gets a new directory made by mkdtemp() inside
 * the configured snapshot_dir; every file is created with O_EXCL and
 * O_NOFOLLOW under a name the decoder checked (relative, no ".."), so
 * nothing outside that directory can be touched. The blocking file work
 * (mkdtemp, mkdir, open, pwrite, fsync, close, removal) runs through
 * uv_queue_work on the threadpool; while one such step is pending the
 * connection stops reading (so the socket, not memory, buffers the rest of
 * the stream) and frames already buffered wait. The worker touches only
 * its struct snap_rx's worker fields, and only while rx->busy, which the
 * loop thread does not touch meanwhile. Anything inconsistent with the
 * announced counts and sizes, or a checksum mismatch, fails the snapshot
 * (SNAP_ACK with status 1) without dropping the connection; a failed or
 * abandoned snapshot's directory is removed.
 */
#define _GNU_SOURCE /* nftw */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "net/internal.h"

#define CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* ---- sending ---- */

struct file_ent {
    char *name; /* relative to the snapshot root */
    uint64_t size;
};

enum tx_state { TX_STREAMING, TX_WAIT_ACK, TX_DONE };

struct snap_tx {
    struct net_transport *t;
    struct peer *peer; /* NULL once done */
    struct conn *c;    /* the connection the stream runs on; NULL once done */
    uint64_t to_id;
    uint64_t snap_id;
    char *root; /* the source directory (for single, its parent path) */
    struct file_ent *files;
    size_t n_files;
    size_t cap_files;
    size_t next;        /* index of the file being sent */
    uint64_t total;     /* bytes of all files */
    size_t chunk_bytes; /* file bytes per SNAP_CHUNK */
    uv_fs_t req;
    bool req_busy;      /* an open or read is in flight on req */
    uv_file fd;         /* files[next], or -1 */
    uint64_t off;       /* bytes of files[next] read so far */
    struct wreq *chunk; /* the frame the pending read fills */
    size_t writes_inflight;
    uint32_t crc;
    enum tx_state state;
    uint64_t ack_deadline_ms;
    int status;
    bool has_reason;
    char reason[NET_REASON_MAX + 1];
    void *cb_data;
    net_snapshot_cb cb;
};

static void tx_pump(struct snap_tx *tx);

static void tx_free(struct snap_tx *tx) {
    for (size_t i = 0; i < tx->n_files; i++) free(tx->files[i].name);
    free(tx->files);
    free(tx->root);
    free(tx);
}

/* Calls the callback and frees tx once nothing refers to it any more. */
static void tx_maybe_free(struct snap_tx *tx) {
    if (tx->state != TX_DONE || tx->req_busy || tx->writes_inflight > 0) return;
    struct net_transport *t = tx->t;
    if (tx->fd >= 0) {
        uv_fs_t req;
        /* Closing a read-only descriptor does not wait for a disk. */
        (void)uv_fs_close(t->loop, &req, tx->fd, NULL);
        uv_fs_req_cleanup(&req);
        tx->fd = -1;
    }
    tx->cb(tx->cb_data, tx->to_id, tx->status, tx->has_reason ? tx->reason : NULL);
    tx_free(tx);
    net__unref(t);
}

static void send_abort(struct conn *c, uint64_t snap_id, const char *reason) {
    struct net__frame f = {.type = NET__FRAME_SNAP_ABORT};
    f.u.snap_ack.snap_id = snap_id;
    f.u.snap_ack.reason = reason;
    f.u.snap_ack.reason_len = strnlen(reason, NET_REASON_MAX);
    struct wreq *w;
    if (net__wreq_encode(&f, &w) != 0) return; /* the receiver times out on its own */
    if (net__conn_write(c, w) != 0) free(w);
}

/*
 * Ends the snapshot with status. tell_peer: this side gave up while the
 * peer still expects frames, so send SNAP_ABORT.
 */
static void tx_finish(struct snap_tx *tx, int status, bool tell_peer, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void tx_finish(struct snap_tx *tx, int status, bool tell_peer, const char *fmt, ...) {
    if (tx->state == TX_DONE) return;
    tx->state = TX_DONE;
    tx->status = status;
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(tx->reason, sizeof(tx->reason), fmt, ap);
        va_end(ap);
        tx->has_reason = true;
    }
    if (tx->peer != NULL) tx->peer->tx = NULL;
    tx->peer = NULL;
    if (tell_peer && tx->c != NULL && tx->c->state == NET__CONN_UP)
        send_abort(tx->c, tx->snap_id, tx->has_reason ? tx->reason : net_strerror(status));
    tx->c = NULL;
    if (tx->req_busy) (void)uv_cancel((uv_req_t *)&tx->req);
    tx_maybe_free(tx);
}

void net__snap_tx_fail(struct peer *p, int rc, const char *reason) {
    NET__ASSERT(p != NULL);
    NET__ASSERT(rc != 0);
    if (p->tx == NULL) return;
    if (reason != NULL)
        tx_finish(p->tx, rc, false, "%s", reason);
    else
        tx_finish(p->tx, rc, false, NULL);
}

void net__snap_tx_wrote(struct snap_tx *tx, int status) {
    (void)status; /* a failed write fails the connection, which fails tx */
    NET__ASSERT(tx->writes_inflight > 0);
    tx->writes_inflight--;
    if (tx->state == TX_STREAMING)
        tx_pump(tx);
    else
        tx_maybe_free(tx);
}

int net__snap_tx_ack(struct peer *p, const struct net__frame *f) {
    NET__ASSERT(p != NULL && f != NULL);
    struct snap_tx *tx = p->tx;
    /* An ack for a snapshot this side already gave up on: nothing to do. */
    if (tx == NULL || tx->snap_id != f->u.snap_ack.snap_id) return 0;
    if (f->u.snap_ack.status == 0) {
        if (tx->state != TX_WAIT_ACK) return NET_EPROTO; /* "stored" before SNAP_END */
        tx_finish(tx, 0, false, NULL);
        return 0;
    }
    char reason[NET_REASON_MAX + 1];
    net__sanitize(reason, sizeof(reason), f->u.snap_ack.reason, f->u.snap_ack.reason_len);
    tx_finish(tx, NET_ESNAPREJECTED, false, "%s", reason);
    return 0;
}

void net__snap_tick(struct net_transport *t, uint64_t now_ms) {
    NET__ASSERT(t != NULL);
    for (struct peer *p = t->peers; p != NULL; p = p->next) {
        struct snap_tx *tx = p->tx;
        if (tx != NULL && tx->state == TX_WAIT_ACK && now_ms >= tx->ack_deadline_ms)
            tx_finish(tx, NET_ETIMEDOUT, true, "no acknowledgement within %u ms",
                      NET__SNAP_ACK_TIMEOUT_MS);
    }
}

/* Sends a frame of the stream; on failure the snapshot fails. */
static bool tx_write(struct snap_tx *tx, struct wreq *w) {
    w->tx = tx;
    tx->writes_inflight++;
    int rc = net__conn_write(tx->c, w);
    if (rc == 0) return true;
    tx->writes_inflight--;
    free(w);
    tx_finish(tx, rc, false, "write: %s", net_strerror(rc));
    return false;
}

static char *tx_path(const struct snap_tx *tx, const char *name) {
    size_t n = strlen(tx->root) + 1 + strlen(name) + 1;
    char *path = malloc(n);
    if (path != NULL) snprintf(path, n, "%s/%s", tx->root, name);
    return path;
}

static void on_tx_open(uv_fs_t *req) {
    struct snap_tx *tx = CONTAINER_OF(req, struct snap_tx, req);
    ssize_t result = req->result;
    uv_fs_req_cleanup(req);
    tx->req_busy = false;
    if (tx->state == TX_DONE) {
        if (result >= 0) tx->fd = (uv_file)result; /* closed by tx_maybe_free */
        tx_maybe_free(tx);
        return;
    }
    const struct file_ent *fe = &tx->files[tx->next];
    if (result < 0) {
        tx_finish(tx, (int)result, true, "open %s: %s", fe->name, net_strerror((int)result));
        return;
    }
    tx->fd = (uv_file)result;
    tx->off = 0;
    struct net__frame f = {.type = NET__FRAME_SNAP_FILE};
    f.u.snap_file.snap_id = tx->snap_id;
    f.u.snap_file.size = fe->size;
    f.u.snap_file.name = fe->name;
    f.u.snap_file.name_len = strlen(fe->name);
    struct wreq *w;
    int rc = net__wreq_encode(&f, &w);
    if (rc != 0) {
        tx_finish(tx, rc, true, "encode SNAP_FILE: %s", net_strerror(rc));
        return;
    }
    if (tx_write(tx, w)) tx_pump(tx);
}

static void on_tx_read(uv_fs_t *req) {
    struct snap_tx *tx = CONTAINER_OF(req, struct snap_tx, req);
    ssize_t result = req->result;
    uv_fs_req_cleanup(req);
    tx->req_busy = false;
    struct wreq *w = tx->chunk;
    tx->chunk = NULL;
    if (tx->state == TX_DONE) {
        free(w);
        tx_maybe_free(tx);
        return;
    }
    const struct file_ent *fe = &tx->files[tx->next];
    if (result <= 0) {
        free(w);
        if (result < 0)
            tx_finish(tx, (int)result, true, "read %s: %s", fe->name, net_strerror((int)result));
        else
            tx_finish(tx, NET_ESNAPSOURCE, true, "%s shrank while being sent", fe->name);
        return;
    }
    size_t n = (size_t)result;
    uint8_t *data = w->data + NET__FRAME_HEADER_BYTES + NET__SNAP_CHUNK_PREFIX_BYTES;
    /* A short read: the frame carries what was read. */
    net__frame_put_header(w->data, NET__FRAME_SNAP_CHUNK, NET__SNAP_CHUNK_PREFIX_BYTES + n);
    w->len = NET__FRAME_HEADER_BYTES + NET__SNAP_CHUNK_PREFIX_BYTES + n;
    tx->crc = net__crc32(tx->crc, data, n);
    tx->off += n;
    if (tx_write(tx, w)) tx_pump(tx);
}

static void tx_send_end(struct snap_tx *tx) {
    struct net__frame f = {.type = NET__FRAME_SNAP_END};
    f.u.snap_end.snap_id = tx->snap_id;
    f.u.snap_end.crc32 = tx->crc;
    struct wreq *w;
    int rc = net__wreq_encode(&f, &w);
    if (rc != 0) {
        tx_finish(tx, rc, true, "encode SNAP_END: %s", net_strerror(rc));
        return;
    }
    if (!tx_write(tx, w)) return;
    tx->state = TX_WAIT_ACK;
    tx->ack_deadline_ms = uv_now(tx->t->loop) + NET__SNAP_ACK_TIMEOUT_MS;
}

/* Starts the next open or read, unless one is pending or the socket queue is full. */
static void tx_pump(struct snap_tx *tx) {
    uv_loop_t *loop = tx->t->loop;
    for (;;) {
        if (tx->state != TX_STREAMING || tx->req_busy) return;
        if (tx->writes_inflight >= NET__SNAP_WRITES_INFLIGHT) return;
        if (tx->fd < 0) {
            if (tx->next == tx->n_files) {
                tx_send_end(tx);
                return;
            }
            char *path = tx_path(tx, tx->files[tx->next].name);
            if (path == NULL) {
                tx_finish(tx, NET_ENOMEM, true, NULL);
                return;
            }
            int rc = uv_fs_open(loop, &tx->req, path, O_RDONLY | O_CLOEXEC, 0, on_tx_open);
            free(path);
            if (rc != 0) {
                tx_finish(tx, rc, true, "open %s: %s", tx->files[tx->next].name, net_strerror(rc));
                return;
            }
            tx->req_busy = true;
            return;
        }
        const struct file_ent *fe = &tx->files[tx->next];
        if (tx->off == fe->size) {
            uv_fs_t req;
            (void)uv_fs_close(loop, &req, tx->fd, NULL);
            uv_fs_req_cleanup(&req);
            tx->fd = -1;
            tx->next++;
            continue;
        }
        uint64_t left = fe->size - tx->off;
        size_t n = left < tx->chunk_bytes ? (size_t)left : tx->chunk_bytes;
        struct wreq *w = net__wreq_new(NET__FRAME_SNAP_CHUNK, NET__SNAP_CHUNK_PREFIX_BYTES + n);
        if (w == NULL) {
            tx_finish(tx, NET_ENOMEM, true, NULL);
            return;
        }
        net__put_u64(w->data + NET__FRAME_HEADER_BYTES, tx->snap_id);
        uv_buf_t b =
            uv_buf_init((char *)w->data + NET__FRAME_HEADER_BYTES + NET__SNAP_CHUNK_PREFIX_BYTES,
                        (unsigned int)n);
        int rc = uv_fs_read(loop, &tx->req, tx->fd, &b, 1, (int64_t)tx->off, on_tx_read);
        if (rc != 0) {
            free(w);
            tx_finish(tx, rc, true, "read %s: %s", fe->name, net_strerror(rc));
            return;
        }
        tx->chunk = w;
        tx->req_busy = true;
        return;
    }
}

static int add_file(struct snap_tx *tx, const char *name, uint64_t size) {
    if (net__snap_name_check(name, strlen(name)) != 0) return NET_EFILENAME;
    if (tx->n_files >= NET_SNAP_FILES_MAX) return NET_ELIMIT;
    if (tx->n_files == tx->cap_files) {
        size_t cap = tx->cap_files ? tx->cap_files * 2 : 16;
        struct file_ent *f = realloc(tx->files, cap * sizeof(*f));
        if (f == NULL) return NET_ENOMEM;
        tx->files = f;
        tx->cap_files = cap;
    }
    tx->files[tx->n_files].name = strdup(name);
    if (tx->files[tx->n_files].name == NULL) return NET_ENOMEM;
    tx->files[tx->n_files].size = size;
    tx->n_files++;
    tx->total += size;
    return 0;
}

/* Lists regular files under tx->root/rel (rel "" = the root), depth first. */
static int walk(struct snap_tx *tx, const char *rel, unsigned depth) {
    if (depth > NET__SNAP_DEPTH_MAX) return NET_ELIMIT;
    char *dir_path = tx_path(tx, rel);
    if (dir_path == NULL) return NET_ENOMEM;
    DIR *d = opendir(dir_path);
    free(dir_path);
    if (d == NULL) return -errno;
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (errno = 0, e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char child[NET_SNAP_NAME_MAX + 2];
        int n = snprintf(child, sizeof(child), "%s%s%s", rel, rel[0] ? "/" : "", e->d_name);
        if (n < 0 || (size_t)n > NET_SNAP_NAME_MAX) {
            rc = NET_EFILENAME;
            break;
        }
        char *path = tx_path(tx, child);
        if (path == NULL) {
            rc = NET_ENOMEM;
            break;
        }
        struct stat st;
        if (lstat(path, &st) != 0)
            rc = -errno;
        else if (S_ISDIR(st.st_mode))
            rc = walk(tx, child, depth + 1);
        else if (S_ISREG(st.st_mode))
            rc = add_file(tx, child, (uint64_t)st.st_size);
        else
            rc = NET_ESNAPSOURCE; /* symlinks, devices: a checkpoint has none */
        free(path);
    }
    if (rc == 0 && errno != 0) rc = -errno;
    closedir(d);
    return rc;
}

static int cmp_file(const void *a, const void *b) {
    return strcmp(((const struct file_ent *)a)->name, ((const struct file_ent *)b)->name);
}

/* Fills tx->root and tx->files from path (a directory or one regular file). */
static int list_source(struct snap_tx *tx, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return -errno;
    if (S_ISDIR(st.st_mode)) {
        tx->root = strdup(path);
        if (tx->root == NULL) return NET_ENOMEM;
        int rc = walk(tx, "", 0);
        if (rc != 0) return rc;
        /* Sorted: the receiver sees the same order whatever readdir returns. */
        if (tx->n_files > 1) qsort(tx->files, tx->n_files, sizeof(tx->files[0]), cmp_file);
        return 0;
    }
    if (!S_ISREG(st.st_mode)) return NET_ESNAPSOURCE;
    const char *slash = strrchr(path, '/');
    const char *base = slash != NULL ? slash + 1 : path;
    size_t dir_len = slash == NULL ? 1 : (slash == path ? 1 : (size_t)(slash - path));
    tx->root = malloc(dir_len + 1);
    if (tx->root == NULL) return NET_ENOMEM;
    if (slash == NULL)
        memcpy(tx->root, ".", 2);
    else {
        memcpy(tx->root, slash == path ? "/" : path, dir_len);
        tx->root[dir_len] = '\0';
    }
    return add_file(tx, base, (uint64_t)st.st_size);
}

int net_send_snapshot(struct net_transport *t, uint64_t to_id, const void *meta, size_t meta_len,
                      const char *path, void *cb_data, net_snapshot_cb done_cb) {
    NET__ASSERT(t != NULL && path != NULL && done_cb != NULL);
    NET__ASSERT(meta != NULL || meta_len == 0);
    if (t->closing) return NET_ECLOSING;
    struct peer *p = NULL;
    for (p = t->peers; p != NULL && p->id != to_id; p = p->next) continue;
    if (p == NULL) return NET_ENOPEER;
    if (p->tx != NULL) return NET_EBUSY;
    struct conn *c = p->out;
    if (c == NULL || c->state != NET__CONN_UP) return NET_EPEERDOWN;
    const size_t begin_fixed = 8 + 4 + 8;
    if (meta_len > t->frame_bytes_max - NET__FRAME_HEADER_BYTES - begin_fixed) return NET_ETOOBIG;

    struct snap_tx *tx = calloc(1, sizeof(*tx));
    if (tx == NULL) return NET_ENOMEM;
    tx->t = t;
    tx->fd = -1;
    tx->to_id = to_id;
    tx->cb = done_cb;
    tx->cb_data = cb_data;
    size_t room = t->frame_bytes_max - NET__FRAME_HEADER_BYTES - NET__SNAP_CHUNK_PREFIX_BYTES;
    tx->chunk_bytes = room < NET__SNAP_CHUNK_BYTES ? room : NET__SNAP_CHUNK_BYTES;
    int rc = list_source(tx, path);
    if (rc != 0) goto err_free;

    struct wreq *w = net__wreq_new(NET__FRAME_SNAP_BEGIN, begin_fixed + meta_len);
    if (w == NULL) {
        rc = NET_ENOMEM;
        goto err_free;
    }
    tx->snap_id = ++t->next_snap_id;
    uint8_t *q = w->data + NET__FRAME_HEADER_BYTES;
    net__put_u64(q, tx->snap_id);
    net__put_u32(q + 8, (uint32_t)tx->n_files);
    net__put_u64(q + 12, tx->total);
    if (meta_len > 0) memcpy(q + begin_fixed, meta, meta_len);
    w->tx = tx;
    rc = net__conn_write(c, w);
    if (rc != 0) {
        free(w);
        goto err_free;
    }
    /* From here on done_cb reports the outcome; the BEGIN write in flight
     * keeps it from running before this call returns. */
    tx->writes_inflight = 1;
    tx->peer = p;
    tx->c = c;
    tx->state = TX_STREAMING;
    p->tx = tx;
    net__ref(t);
    tx_pump(tx);
    return 0;

err_free:
    tx_free(tx);
    return rc;
}

/* ---- receiving ---- */

enum rx_op { RX_START, RX_FILE, RX_WRITE, RX_END, RX_ABORT };

struct snap_rx {
    struct net_transport *t;
    struct conn *c; /* NULL once detached (failed or finished) */
    uint64_t from_id;
    uint64_t snap_id;
    uint8_t *meta;
    size_t meta_len;
    uint32_t n_files; /* announced */
    uint32_t files_seen;
    uint64_t total_declared;
    uint64_t total_recv;
    uint64_t cur_size; /* announced size of the current file */
    uint64_t cur_off;  /* bytes of it received */
    uint32_t crc_expected;
    bool failed; /* abandoned: the directory is being removed */
    bool busy;   /* work queued; the worker fields below are its */
    uv_work_t work;
    /* worker fields */
    enum rx_op op;
    char *parent;  /* copy of snapshot_dir */
    char *dir;     /* the new snapshot directory, once made */
    char *name;    /* RX_FILE: relative name */
    uint8_t *data; /* RX_WRITE */
    size_t data_len;
    int fd;
    uint64_t write_off;
    uint32_t crc;
    char **dirs; /* directories created, for the final fsync */
    size_t n_dirs;
    int err; /* errno of the failed step, 0 if none */
    char what[NET_SNAP_NAME_MAX + 64];
};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    (void)remove(path); /* best effort: keep removing the rest */
    return 0;
}

static int fsync_dir(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return errno;
    int err = fsync(fd) != 0 ? errno : 0;
    close(fd);
    return err;
}

static int rx_add_dir(struct snap_rx *rx, const char *path) {
    if (rx->n_dirs >= NET__SNAP_DIRS_MAX) return EMLINK;
    char **d = realloc(rx->dirs, (rx->n_dirs + 1) * sizeof(*d));
    if (d == NULL) return ENOMEM;
    rx->dirs = d;
    rx->dirs[rx->n_dirs] = strdup(path);
    if (rx->dirs[rx->n_dirs] == NULL) return ENOMEM;
    rx->n_dirs++;
    return 0;
}

/* fsync and close the current file. */
static int rx_close_file(struct snap_rx *rx) {
    if (rx->fd < 0) return 0;
    int err = fsync(rx->fd) != 0 ? errno : 0;
    if (close(rx->fd) != 0 && err == 0) err = errno;
    rx->fd = -1;
    return err;
}

static void rx_work_file(struct snap_rx *rx) {
    int err = rx_close_file(rx);
    if (err != 0) {
        rx->err = err;
        snprintf(rx->what, sizeof(rx->what), "fsync a received file");
        return;
    }
    size_t n = strlen(rx->dir) + 1 + strlen(rx->name) + 1;
    char *path = malloc(n);
    if (path == NULL) {
        rx->err = ENOMEM;
        snprintf(rx->what, sizeof(rx->what), "%s", rx->name);
        return;
    }
    snprintf(path, n, "%s/%s", rx->dir, rx->name);
    /* Parent directories of "a/b/file", made in order; the name has no "..". */
    size_t base = strlen(rx->dir) + 1;
    for (char *s = path + base; (s = strchr(s, '/')) != NULL; s++) {
        *s = '\0';
        if (mkdir(path, 0755) == 0) {
            err = rx_add_dir(rx, path);
        } else if (errno != EEXIST) {
            err = errno;
        }
        *s = '/';
        if (err != 0) break;
    }
    if (err == 0) {
        rx->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (rx->fd < 0) err = errno;
    }
    if (err != 0) {
        rx->err = err;
        snprintf(rx->what, sizeof(rx->what), "create %s", rx->name);
    }
    rx->write_off = 0;
    free(path);
}

static void rx_work(uv_work_t *work) {
    struct snap_rx *rx = CONTAINER_OF(work, struct snap_rx, work);
    rx->err = 0;
    snprintf(rx->what, sizeof(rx->what), "snapshot file operation");
    switch (rx->op) {
    case RX_START: {
        size_t n = strlen(rx->parent) + 64;
        rx->dir = malloc(n);
        if (rx->dir == NULL) {
            rx->err = ENOMEM;
            break;
        }
        snprintf(rx->dir, n, "%s/snap-%llu-%llu-XXXXXX", rx->parent,
                 (unsigned long long)rx->from_id, (unsigned long long)rx->snap_id);
        if (mkdtemp(rx->dir) == NULL) {
            rx->err = errno;
            snprintf(rx->what, sizeof(rx->what), "create a directory in the snapshot directory");
            free(rx->dir);
            rx->dir = NULL;
            break;
        }
        rx->err = rx_add_dir(rx, rx->dir);
        break;
    }
    case RX_FILE:
        rx_work_file(rx);
        break;
    case RX_WRITE: {
        size_t done = 0;
        while (done < rx->data_len) {
            ssize_t w =
                pwrite(rx->fd, rx->data + done, rx->data_len - done, (off_t)(rx->write_off + done));
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                rx->err = w < 0 ? errno : EIO;
                snprintf(rx->what, sizeof(rx->what), "write a received file");
                break;
            }
            done += (size_t)w;
        }
        rx->write_off += done;
        rx->crc = net__crc32(rx->crc, rx->data, rx->data_len);
        break;
    }
    case RX_END: {
        int err = rx_close_file(rx);
        for (size_t i = 0; err == 0 && i < rx->n_dirs; i++) err = fsync_dir(rx->dirs[i]);
        /* The parent holds the new directory's entry. */
        if (err == 0) err = fsync_dir(rx->parent);
        if (err != 0) {
            rx->err = err;
            snprintf(rx->what, sizeof(rx->what), "fsync the snapshot");
        }
        break;
    }
    case RX_ABORT:
        if (rx->fd >= 0) close(rx->fd);
        rx->fd = -1;
        if (rx->dir != NULL) (void)nftw(rx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        break;
    }
}

static void rx_free(struct snap_rx *rx) {
    struct net_transport *t = rx->t;
    for (size_t i = 0; i < rx->n_dirs; i++) free(rx->dirs[i]);
    free(rx->dirs);
    free(rx->meta);
    free(rx->parent);
    free(rx->dir);
    free(rx->name);
    free(rx->data);
    free(rx);
    net__unref(t);
}

static void rx_after(uv_work_t *work, int status);

static void rx_run(struct snap_rx *rx, enum rx_op op) {
    NET__ASSERT(!rx->busy);
    rx->op = op;
    rx->busy = true;
    if (rx->c != NULL) rx->c->paused = true;
    int rc = uv_queue_work(rx->t->loop, &rx->work, rx_work, rx_after);
    NET__ASSERT(rc == 0); /* fails only for a NULL work callback */
}

static void send_ack(struct conn *c, uint64_t snap_id, bool ok, const char *reason) {
    if (c->state != NET__CONN_UP) return;
    struct net__frame f = {.type = NET__FRAME_SNAP_ACK};
    f.u.snap_ack.snap_id = snap_id;
    f.u.snap_ack.status = ok ? 0 : 1;
    f.u.snap_ack.reason = reason;
    f.u.snap_ack.reason_len = strnlen(reason, NET_REASON_MAX);
    struct wreq *w;
    if (net__wreq_encode(&f, &w) != 0) return; /* the sender times out */
    if (net__conn_write(c, w) != 0) free(w);
}

/* Abandons rx: tells the sender (if ack), the owner, and removes the directory. */
static void rx_fail(struct snap_rx *rx, int rc, bool ack, const char *reason) {
    NET__ASSERT(!rx->failed);
    struct net_transport *t = rx->t;
    struct conn *c = rx->c;
    rx->failed = true;
    if (c != NULL) {
        c->rx = NULL;
        c->skip_snap_id = rx->snap_id;
        rx->c = NULL;
        if (ack) send_ack(c, rx->snap_id, false, reason != NULL ? reason : net_strerror(rc));
    }
    if (!rx->busy) rx_run(rx, RX_ABORT);
    if (!t->closing && t->cb.on_snapshot_abort != NULL)
        t->cb.on_snapshot_abort(t->data, rx->from_id, rc);
}

static void rx_succeed(struct snap_rx *rx) {
    struct net_transport *t = rx->t;
    struct conn *c = rx->c;
    NET__ASSERT(c != NULL);
    c->rx = NULL;
    rx->c = NULL;
    send_ack(c, rx->snap_id, true, "");
    if (!t->closing) t->cb.on_snapshot_done(t->data, rx->from_id, rx->meta, rx->meta_len, rx->dir);
    rx_free(rx);
}

static void rx_after(uv_work_t *work, int status) {
    struct snap_rx *rx = CONTAINER_OF(work, struct snap_rx, work);
    struct conn *c = rx->c;
    rx->busy = false;
    if (rx->op == RX_ABORT) {
        rx_free(rx);
        return;
    }
    free(rx->data);
    rx->data = NULL;
    free(rx->name);
    rx->name = NULL;
    if (rx->failed) {
        rx_run(rx, RX_ABORT);
        return;
    }
    if (status < 0 && rx->err == 0) {
        rx->err = -status; /* canceled before it ran */
        snprintf(rx->what, sizeof(rx->what), "snapshot file operation");
    }
    if (rx->err != 0) {
        char reason[sizeof(rx->what) + 128]; /* send_ack truncates to NET_REASON_MAX */
        snprintf(reason, sizeof(reason), "%s: %s", rx->what, strerror(rx->err));
        rx_fail(rx, -rx->err, true, reason);
    } else if (rx->op == RX_END) {
        if (rx->crc != rx->crc_expected)
            rx_fail(rx, NET_ESNAPCORRUPT, true, "snapshot checksum mismatch");
        else
            rx_succeed(rx);
    }
    if (c != NULL) net__conn_resume(c);
}

void net__snap_rx_detach(struct conn *c, int rc) {
    NET__ASSERT(c != NULL);
    if (c->rx == NULL) return;
    rx_fail(c->rx, rc == 0 ? NET_ECONNLOST : rc, false, NULL);
}

static void rx_refuse(struct conn *c, uint64_t snap_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void rx_refuse(struct conn *c, uint64_t snap_id, const char *fmt, ...) {
    char reason[NET_REASON_MAX + 1];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    c->skip_snap_id = snap_id;
    send_ack(c, snap_id, false, reason);
}

static int rx_begin(struct conn *c, const struct net__frame *f) {
    struct net_transport *t = c->t;
    uint64_t id = f->u.snap_begin.snap_id;
    if (c->rx != NULL) rx_fail(c->rx, NET_ESNAPABORTED, false, NULL); /* sender moved on */
    if (t->snapshot_dir == NULL || t->cb.on_snapshot_done == NULL) {
        rx_refuse(c, id, "this node accepts no snapshots (no snapshot directory configured)");
        return 0;
    }
    if (f->u.snap_begin.total_bytes > t->snapshot_bytes_max) {
        rx_refuse(c, id, "snapshot of %llu bytes exceeds this node's limit of %llu bytes",
                  (unsigned long long)f->u.snap_begin.total_bytes,
                  (unsigned long long)t->snapshot_bytes_max);
        return 0;
    }
    if (t->cb.on_snapshot_begin != NULL) {
        int rc = t->cb.on_snapshot_begin(t->data, c->remote_id, f->u.snap_begin.meta,
                                         f->u.snap_begin.meta_len);
        if (c->state == NET__CONN_CLOSING || t->closing) return 0;
        if (rc != 0) {
            rx_refuse(c, id, "refused by the receiver: %s", net_strerror(rc));
            return 0;
        }
    }
    struct snap_rx *rx = calloc(1, sizeof(*rx));
    if (rx == NULL) {
        rx_refuse(c, id, "out of memory");
        return 0;
    }
    rx->parent = strdup(t->snapshot_dir);
    rx->meta = malloc(f->u.snap_begin.meta_len + 1);
    if (rx->parent == NULL || rx->meta == NULL) {
        free(rx->parent);
        free(rx->meta);
        free(rx);
        rx_refuse(c, id, "out of memory");
        return 0;
    }
    if (f->u.snap_begin.meta_len > 0)
        memcpy(rx->meta, f->u.snap_begin.meta, f->u.snap_begin.meta_len);
    rx->meta_len = f->u.snap_begin.meta_len;
    rx->t = t;
    rx->c = c;
    rx->fd = -1;
    rx->from_id = c->remote_id;
    rx->snap_id = id;
    rx->n_files = f->u.snap_begin.n_files;
    rx->total_declared = f->u.snap_begin.total_bytes;
    c->rx = rx;
    net__ref(t);
    rx_run(rx, RX_START);
    return 0;
}

int net__snap_rx_frame(struct conn *c, const struct net__frame *f) {
    NET__ASSERT(c != NULL && f != NULL);
    NET__ASSERT(c->dir == NET__CONN_IN && c->state == NET__CONN_UP);
    if (f->type == NET__FRAME_SNAP_BEGIN) return rx_begin(c, f);
    uint64_t id;
    switch (f->type) {
    case NET__FRAME_SNAP_FILE:
        id = f->u.snap_file.snap_id;
        break;
    case NET__FRAME_SNAP_CHUNK:
        id = f->u.snap_chunk.snap_id;
        break;
    case NET__FRAME_SNAP_END:
        id = f->u.snap_end.snap_id;
        break;
    case NET__FRAME_SNAP_ABORT:
        id = f->u.snap_ack.snap_id;
        break;
    default:
        return NET_EPROTO;
    }
    struct snap_rx *rx = c->rx;
    if (rx == NULL || rx->snap_id != id) {
        /* The rest of a snapshot this side refused or failed: drop quietly. */
        if (id == c->skip_snap_id) return 0;
        return NET_EPROTO;
    }
    NET__ASSERT(!rx->busy); /* the connection is paused while it is */
    switch (f->type) {
    case NET__FRAME_SNAP_FILE:
        if (rx->files_seen == rx->n_files) {
            rx_fail(rx, NET_ESNAPCORRUPT, true, "more files than announced");
            return 0;
        }
        if (rx->cur_off != rx->cur_size) {
            rx_fail(rx, NET_ESNAPCORRUPT, true, "a file ended before its announced size");
            return 0;
        }
        if (f->u.snap_file.size > rx->total_declared - rx->total_recv) {
            rx_fail(rx, NET_ESNAPCORRUPT, true, "files larger than the announced total");
            return 0;
        }
        rx->name = malloc(f->u.snap_file.name_len + 1);
        if (rx->name == NULL) {
            rx_fail(rx, NET_ENOMEM, true, NULL);
            return 0;
        }
        memcpy(rx->name, f->u.snap_file.name, f->u.snap_file.name_len);
        rx->name[f->u.snap_file.name_len] = '\0';
        rx->files_seen++;
        rx->cur_size = f->u.snap_file.size;
        rx->cur_off = 0;
        rx_run(rx, RX_FILE);
        return 0;
    case NET__FRAME_SNAP_CHUNK:
        if (rx->files_seen == 0 || f->u.snap_chunk.len > rx->cur_size - rx->cur_off) {
            rx_fail(rx, NET_ESNAPCORRUPT, true, "data beyond the announced file size");
            return 0;
        }
        rx->data = malloc(f->u.snap_chunk.len);
        if (rx->data == NULL) {
            rx_fail(rx, NET_ENOMEM, true, NULL);
            return 0;
        }
        memcpy(rx->data, f->u.snap_chunk.data, f->u.snap_chunk.len);
        rx->data_len = f->u.snap_chunk.len;
        rx->cur_off += f->u.snap_chunk.len;
        rx->total_recv += f->u.snap_chunk.len;
        rx_run(rx, RX_WRITE);
        return 0;
    case NET__FRAME_SNAP_END:
        if (rx->files_seen != rx->n_files || rx->cur_off != rx->cur_size ||
            rx->total_recv != rx->total_declared) {
            rx_fail(rx, NET_ESNAPCORRUPT, true,
                    "snapshot ended before everything announced arrived");
            return 0;
        }
        rx->crc_expected = f->u.snap_end.crc32;
        rx_run(rx, RX_END);
        return 0;
    default: /* SNAP_ABORT: the sender knows why; the owner gets the code */
        rx_fail(rx, NET_ESNAPABORTED, false, NULL);
        return 0;
    }
}
