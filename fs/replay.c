/*
 * replay.c - the replay thread: repeats changes that did not come from this
 * mount (another node's write, an etcd client, a lease expiry) as the same
 * filesystem operations on the mountpoint, so that the kernel itself emits
 * the inotify events a local writer would have caused.
 *
 * Input. The invalidation thread hands over each non-local change once it
 * dropped the kernel's caches for it. The changes of one revision (one
 * transaction; fs_change.more links them) are replayed together, in
 * revision order:
 *   - a transaction that deletes one file and puts another (what a rename
 *     of a file through a mount writes) is renameat(2): IN_MOVED_FROM and
 *     IN_MOVED_TO; one that empties a directory and creates another with
 *     the same keys below it is the rename of that directory;
 *   - otherwise, in this order: mkdir(2) for each directory that appears
 *     (a prefix that held no key before), the puts and deletes in the
 *     transaction's order (a new key: open O_CREAT, write, close =
 *     IN_CREATE, IN_OPEN, IN_MODIFY, IN_CLOSE_WRITE; a changed key: open,
 *     write, close; a deleted key: unlink = IN_DELETE), then
 *     rmdir(2) for each directory left without keys, deepest first.
 * A file written through a mount elsewhere is one put (fs/README.md, "one
 * put per value"), so every change is replayed once, as it came: never
 * merged with the next one, never twice. A put that changed only the
 * metadata (fs_change.meta_only: chmod, chown, touch) is replayed as
 * fchmodat(2) (IN_ATTRIB); an existing key put empty as ftruncate(2)
 * (IN_MODIFY, as `: > f` shows locally).
 *
 * Where. An operation is replayed only where the kernel holds the inode of
 * the parent directory (or of the file): an inotify watch pins the
 * directory it watches, and a path nobody looked up costs nothing. Inside
 * a directory that appeared in the same transaction nothing is replayed
 * unless the kernel held it before (as after a local mkdir -p, a recursive
 * watcher adds its watch only once it saw the IN_CREATE).
 *
 * How. The FUSE handlers recognise requests from this thread
 * (fs__is_replay) and answer them from the store without proposing: the
 * change is already applied. This thread's lookups see the overrides set
 * here (fs__replay_view), so that a created name looks absent (the kernel
 * then sends create or mkdir) and a deleted one present (unlink, rmdir and
 * rename find it). Replay opens use direct I/O, so no data enters the
 * page cache, and writes only count bytes.
 *
 * Limits. Whether a directory existed before a transaction is judged from
 * the current state, which may be ahead of the change being replayed. The
 * replay is done with this process's credentials: where the kernel denies
 * it (a node not run as root, a file it may not write), that event is
 * missing, nothing else. A key that is also a prefix (shown as "%value") and
 * keys outside the name spelling are not replayed.
 */
#define _GNU_SOURCE
#include "fs/fs_core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define FS__REPLAY_MORE_MS 1000    /* wait for the rest of a transaction */
#define FS__REPLAY_GROUP_MAX 4096u /* changes replayed as one transaction */
#define FS__REPLAY_PATH_MAX 4096u
#define FS__REPLAY_DIR_KEYS 64u /* keys of a directory read to classify it */

int fs__is_replay(struct fs *fs, fuse_req_t req) {
    int tid = atomic_load(&fs->replay_tid);
    return tid != 0 && fuse_req_ctx(req)->pid == (pid_t)tid;
}

int fs__replay_view(struct fs *fs, const struct child *c, int *is_dir) {
    int r = -1;
    pthread_mutex_lock(&fs->ov_lock);
    for (size_t i = 0; i < fs->n_ov && r < 0; i++) {
        const struct fs__override *o = &fs->ov[i];
        const char *k = o->is_dir ? c->dkey : c->fkey;
        size_t kl = o->is_dir ? c->dkl : c->fkl;
        if (k != NULL && kl == o->key_len && memcmp(k, o->key, kl) == 0) {
            r = o->present;
            *is_dir = o->is_dir;
        }
    }
    pthread_mutex_unlock(&fs->ov_lock);
    return r;
}

void fs__replay_push(struct fs *fs, struct queue_item *it) {
    it->next = NULL;
    pthread_mutex_lock(&fs->q_lock);
    if (fs->rp_len >= FS_REPLAY_QUEUE_MAX || fs->q_stop) {
        fs->rp_dropped++;
        pthread_mutex_unlock(&fs->q_lock);
        free(it);
        return;
    }
    if (fs->rp_tail)
        fs->rp_tail->next = it;
    else
        fs->rp_head = it;
    fs->rp_tail = it;
    fs->rp_len++;
    pthread_cond_signal(&fs->rp_cond);
    pthread_mutex_unlock(&fs->q_lock);
}

/* ---- the queue (q_lock held) ---- */

static struct queue_item *pop_locked(struct fs *fs) {
    struct queue_item *it = fs->rp_head;
    fs->rp_head = it->next;
    if (fs->rp_head == NULL) fs->rp_tail = NULL;
    fs->rp_len--;
    it->next = NULL;
    return it;
}

/* Waits until an item is queued, fs stops or ms pass (ms < 0: no limit).
 * Returns 1 when an item is there. */
static int wait_locked(struct fs *fs, int ms) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    if (ms >= 0) {
        dl.tv_sec += ms / 1000;
        dl.tv_nsec += (long)(ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
    }
    while (fs->rp_head == NULL && !fs->q_stop) {
        if (ms < 0)
            pthread_cond_wait(&fs->rp_cond, &fs->q_lock);
        else if (pthread_cond_timedwait(&fs->rp_cond, &fs->q_lock, &dl) == ETIMEDOUT)
            break;
    }
    return fs->rp_head != NULL && !fs->q_stop;
}

/* ---- the replay context ---- */

struct rdir { /* a directory prefix that one transaction touches */
    char *key;
    size_t kl; /* ends in '/' */
    int created, removed, held_before;
    int made; /* created, and mkdir was replayed */
};

struct rp {
    struct fs *fs;
    int root;    /* O_PATH descriptor of the mount root */
    char *zeros; /* what replay writes (the handler drops it) */
    size_t zeros_len;
    struct queue_item *g[FS__REPLAY_GROUP_MAX]; /* one transaction's changes */
    size_t n;
    struct rdir *dirs;
    size_t nd;
    struct fs__override *ov; /* the operation's own, then the directories' */
    size_t ov_cap;
    char path[FS__REPLAY_PATH_MAX], path2[FS__REPLAY_PATH_MAX];
};

static int is_marker(const struct queue_item *it) {
    return it->key_len > 0 && it->key[it->key_len - 1] == '/';
}

static int has_prefix(const char *k, size_t kl, const char *p, size_t pl) {
    return kl >= pl && memcmp(k, p, pl) == 0;
}

/* Publishes the operation's n overrides (r->ov[0..n)), then every
 * directory the transaction touched that existed at its revision as
 * present: the store may already be past it, and the replay's path walks
 * must still find them. The first match wins. */
static void ov_set(struct rp *r, size_t n) {
    size_t m = n;
    for (size_t j = 0; j < r->nd && m < r->ov_cap; j++) {
        const struct rdir *d = &r->dirs[j];
        if (d->created && !d->made) continue;
        r->ov[m++] = (struct fs__override){1, 1, d->key, d->kl};
    }
    pthread_mutex_lock(&r->fs->ov_lock);
    r->fs->ov = r->ov;
    r->fs->n_ov = m;
    pthread_mutex_unlock(&r->fs->ov_lock);
}

/* Room for two operation overrides and one per directory. */
static int ov_reserve(struct rp *r) {
    size_t want = r->nd + 2;
    if (want <= r->ov_cap) return 0;
    struct fs__override *o = realloc(r->ov, want * sizeof *o);
    if (o == NULL) return -ENOMEM;
    r->ov = o;
    r->ov_cap = want;
    return 0;
}

static void ov_clear(struct rp *r) {
    pthread_mutex_lock(&r->fs->ov_lock);
    r->fs->n_ov = 0;
    pthread_mutex_unlock(&r->fs->ov_lock);
}

static void ov_fill(struct rp *r, size_t i, int is_dir, int present, const char *k, size_t kl) {
    r->ov[i] = (struct fs__override){is_dir, present, (char *)k, kl};
}

/* The mount-relative path of file key k (as_dir 0) or of directory prefix
 * k (as_dir 1, ending in '/') into out. Returns 0, or -EINVAL for what is
 * not replayed (the root, a key shown as "%value", a name only a directory scan
 * resolves), -ENAMETOOLONG. */
static int rel_path(struct fs *fs, const char *k, size_t kl, int as_dir, char *out, size_t size) {
    size_t pl = fs->prefix_len;
    if (!has_prefix(k, kl, fs->prefix, pl)) return -EINVAL;
    size_t end = as_dir ? kl - 1 : kl;
    if (end <= pl && as_dir) return -EINVAL; /* the root */
    if (!as_dir) {
        size_t dl;
        char *d = fs__cat(k, kl, "/", 1, NULL, 0, &dl);
        if (d == NULL) return -ENOMEM;
        int sub = fs__any_prefix(fs, d, dl);
        free(d);
        if (sub != 0) return -EINVAL; /* shown as "%value" inside its own directory */
    }
    size_t o = 0, pos = pl;
    for (;;) {
        const char *slash = memchr(k + pos, '/', end - pos);
        size_t cl = slash ? (size_t)(slash - (k + pos)) : end - pos;
        char name[FS_NAME_MAX + 1];
        size_t nl = fs_name_encode(k + pos, cl, name, sizeof name);
        char raw[FS_NAME_MAX + 1];
        if (fs_name_decode(name, nl, raw, sizeof raw) < 0) return -EINVAL; /* hashed */
        if (o + nl + 2 > size) return -ENAMETOOLONG;
        if (o) out[o++] = '/';
        memcpy(out + o, name, nl);
        o += nl;
        if (slash == NULL) break;
        pos += cl + 1;
    }
    out[o] = '\0';
    return 0;
}

/* Length of the parent directory prefix of file key k or directory prefix
 * k (ending in '/'). */
static size_t parent_len(const char *k, size_t kl, int as_dir) {
    size_t e = as_dir ? kl - 1 : kl;
    while (e > 0 && k[e - 1] != '/') e--;
    return e;
}

static struct rdir *find_dir(struct rp *r, const char *d, size_t dl) {
    for (size_t i = 0; i < r->nd; i++)
        if (r->dirs[i].kl == dl && memcmp(r->dirs[i].key, d, dl) == 0) return &r->dirs[i];
    return NULL;
}

/* Whether the kernel held directory d before this transaction. */
static int held(struct rp *r, const char *d, size_t dl) {
    struct fs *fs = r->fs;
    if (dl == fs->prefix_len) return 1; /* the root */
    struct rdir *rd = find_dir(r, d, dl);
    if (rd != NULL && (rd->created || rd->removed)) return rd->held_before;
    return fs__ino_peek(fs, 1, d, dl) != 0;
}

static int dir_order(const void *a, const void *b) {
    const struct rdir *x = a, *y = b;
    size_t n = x->kl < y->kl ? x->kl : y->kl;
    int c = memcmp(x->key, y->key, n);
    if (c) return c;
    return x->kl < y->kl ? -1 : x->kl > y->kl;
}

static int add_dir(struct rp *r, size_t *cap, const char *k, size_t dl) {
    if (find_dir(r, k, dl)) return 0;
    if (r->nd == *cap) {
        size_t nc = *cap ? 2 * *cap : 16;
        struct rdir *nd = realloc(r->dirs, nc * sizeof *nd);
        if (nd == NULL) return -ENOMEM;
        r->dirs = nd;
        *cap = nc;
    }
    char *c = malloc(dl);
    if (c == NULL) return -ENOMEM;
    memcpy(c, k, dl);
    r->dirs[r->nd++] = (struct rdir){c, dl, 0, 0, 0, 0};
    return 0;
}

/* Whether a delete below directory d is queued (on either queue): the
 * store is already past it, so a key it deleted existed at the revision
 * being replayed although the store no longer has it. */
#define FS__REPLAY_SCAN_MAX 4096u
static int delete_queued(struct fs *fs, const char *d, size_t dl) {
    int found = 0;
    unsigned seen = 0;
    pthread_mutex_lock(&fs->q_lock);
    const struct queue_item *lists[2] = {fs->rp_head, fs->inval_head};
    for (int l = 0; l < 2 && !found; l++)
        for (const struct queue_item *it = lists[l]; it && !found && seen < FS__REPLAY_SCAN_MAX;
             it = it->next, seen++)
            found = it->type == FS_CHANGE_DELETE && has_prefix(it->key, it->key_len, d, dl);
    pthread_mutex_unlock(&fs->q_lock);
    return found;
}

/* Which directories this transaction makes appear or vanish. */
static int classify_dirs(struct rp *r) {
    struct fs *fs = r->fs;
    size_t cap = 0;
    for (size_t i = 0; i < r->n; i++) {
        const struct queue_item *it = r->g[i];
        for (size_t p = fs->prefix_len; p < it->key_len; p++)
            if (it->key[p] == '/' && add_dir(r, &cap, it->key, p + 1) < 0) return -ENOMEM;
    }
    for (size_t j = 0; j < r->nd; j++) {
        struct rdir *d = &r->dirs[j];
        int del_under = 0, put_under = 0;
        for (size_t i = 0; i < r->n; i++) {
            const struct queue_item *it = r->g[i];
            if (!has_prefix(it->key, it->key_len, d->key, d->kl)) continue;
            if (it->type == FS_CHANGE_DELETE) {
                del_under = 1;
            } else {
                put_under = 1;
            }
        }
        /* The store may be past this revision (rev). A key below d now
         * whose create_revision is below rev existed before the
         * transaction; one at or below rev exists after it (it has existed
         * ever since); later ones are another transaction's. */
        int64_t rev = r->g[0]->revision;
        char *e;
        size_t el;
        if (fs__prefix_end(d->key, d->kl, &e, &el) < 0) return -ENOMEM;
        struct fs_kv *kvs = NULL;
        size_t n = 0;
        int more = 0;
        int rc = fs->be.range(fs->be.data, d->key, d->kl, e, el, FS__REPLAY_DIR_KEYS, 1, &kvs, &n,
                              &more);
        free(e);
        if (rc < 0) return rc;
        int older = 0, at_rev = 0;
        for (size_t a = 0; a < n; a++) {
            older |= kvs[a].create_revision < rev;
            at_rev |= kvs[a].create_revision <= rev;
        }
        if (more && !at_rev) older = at_rev = 1; /* not seen: leave d alone */
        int any_now = n > 0;
        fs_kv_array_free(kvs, n);
        int before = del_under || older;
        d->created = !before && put_under && any_now;
        d->removed = del_under && !put_under && !at_rev && !delete_queued(fs, d->key, d->kl);
        d->held_before = fs__ino_peek(fs, 1, d->key, d->kl) != 0;
    }
    if (r->nd > 1) qsort(r->dirs, r->nd, sizeof *r->dirs, dir_order);
    return 0;
}

/* ---- the operations ---- */

static int write_len(struct rp *r, int fd, size_t len) {
    if (len == 0) return 0;
    if (len > r->zeros_len) {
        char *z = calloc(1, len);
        if (z == NULL) return -ENOMEM;
        free(r->zeros);
        r->zeros = z;
        r->zeros_len = len;
    }
    ssize_t w = write(fd, r->zeros, len);
    return w < 0 ? -errno : 0;
}

static void replay_mkdir(struct rp *r, struct rdir *d) {
    if (rel_path(r->fs, d->key, d->kl, 1, r->path, sizeof r->path) < 0) return;
    ov_fill(r, 0, 1, 0, d->key, d->kl);
    ov_set(r, 1);
    (void)mkdirat(r->root, r->path, r->fs->opt.dir_mode & 07777);
    ov_clear(r);
    d->made = 1;
}

static void replay_rmdir(struct rp *r, const struct rdir *d) {
    if (rel_path(r->fs, d->key, d->kl, 1, r->path, sizeof r->path) < 0) return;
    ov_fill(r, 0, 1, 1, d->key, d->kl);
    ov_set(r, 1);
    (void)unlinkat(r->root, r->path, AT_REMOVEDIR);
    ov_clear(r);
}

/* A put that kept the value: the metadata changed (IN_ATTRIB). */
static void replay_attr(struct rp *r, const char *k, size_t kl, uint32_t mode) {
    if (rel_path(r->fs, k, kl, 0, r->path, sizeof r->path) < 0) return;
    ov_set(r, 0);
    (void)fchmodat(r->root, r->path, mode ? (mode & 07777) : (r->fs->opt.file_mode & 07777), 0);
    ov_clear(r);
}

/* A symlink created elsewhere: symlinkat with its target (IN_CREATE). */
static void replay_symlink(struct rp *r, const char *k, size_t kl) {
    if (rel_path(r->fs, k, kl, 0, r->path, sizeof r->path) < 0) return;
    struct fs_kv kv;
    if (r->fs->be.get(r->fs->be.data, k, kl, &kv) < 0) return;
    size_t tl;
    char *t = fs__cat(kv.value ? kv.value : "", kv.value_len, NULL, 0, NULL, 0, &tl);
    fs_kv_clear(&kv);
    if (t == NULL) return;
    ov_fill(r, 0, 0, 0, k, kl); /* the name looks absent: the kernel sends SYMLINK */
    ov_set(r, 1);
    (void)symlinkat(t, r->root, r->path);
    ov_clear(r);
    free(t);
}

/* A put: create (created) or rewrite, writing len bytes. */
static void replay_put(struct rp *r, const char *k, size_t kl, int created, size_t len,
                       uint32_t mode) {
    if (rel_path(r->fs, k, kl, 0, r->path, sizeof r->path) < 0) return;
    if (created) ov_fill(r, 0, 0, 0, k, kl);
    ov_set(r, created ? 1 : 0);
    /* Never O_TRUNC: on a file the kernel knows (a reader may have looked
     * it up first) it would set the size to 0 until the write, and a reader
     * in between would read nothing. */
    int fd = openat(r->root, r->path, O_WRONLY | O_CLOEXEC | (created ? O_CREAT : 0),
                    mode ? (mode & 07777) : (r->fs->opt.file_mode & 07777));
    ov_clear(r);
    if (fd < 0) return;
    if (len == 0 && !created)
        (void)ftruncate(fd, 0); /* IN_MODIFY, as the writer's O_TRUNC */
    else
        (void)write_len(r, fd, len);
    close(fd);
}

static void replay_unlink(struct rp *r, const char *k, size_t kl) {
    if (rel_path(r->fs, k, kl, 0, r->path, sizeof r->path) < 0) return;
    ov_fill(r, 0, 0, 1, k, kl);
    ov_set(r, 1);
    (void)unlinkat(r->root, r->path, 0);
    ov_clear(r);
}

static void replay_rename(struct rp *r, int is_dir, const char *s, size_t sl, const char *d,
                          size_t dl, int dst_existed) {
    if (rel_path(r->fs, s, sl, is_dir, r->path, sizeof r->path) < 0) return;
    if (rel_path(r->fs, d, dl, is_dir, r->path2, sizeof r->path2) < 0) return;
    ov_fill(r, 0, is_dir, 1, s, sl);
    ov_fill(r, 1, is_dir, dst_existed, d, dl);
    ov_set(r, 2);
    (void)renameat(r->root, r->path, r->root, r->path2);
    ov_clear(r);
}

static int file_wanted(struct rp *r, const char *k, size_t kl) {
    return held(r, k, parent_len(k, kl, 0)) || fs__ino_peek(r->fs, 0, k, kl) != 0;
}

/* A file rename: one file deleted, one put, nothing else but markers. */
static int try_rename_file(struct rp *r) {
    const struct queue_item *del = NULL, *put = NULL;
    for (size_t i = 0; i < r->n; i++) {
        const struct queue_item *it = r->g[i];
        if (is_marker(it)) continue;
        if (it->type == FS_CHANGE_DELETE) {
            if (del) return 0;
            del = it;
        } else {
            if (put) return 0;
            put = it;
        }
    }
    if (del == NULL || put == NULL) return 0;
    for (size_t j = 0; j < r->nd; j++)
        if (r->dirs[j].created || r->dirs[j].removed) return 0;
    if (file_wanted(r, del->key, del->key_len) || file_wanted(r, put->key, put->key_len))
        replay_rename(r, 0, del->key, del->key_len, put->key, put->key_len, !put->created);
    return 1;
}

/* A directory rename: one directory (with what is below) removed, one
 * created, every file change below one of the two. */
static int try_rename_dir(struct rp *r) {
    const struct rdir *src = NULL, *dst = NULL;
    for (size_t j = 0; j < r->nd; j++) {
        const struct rdir *d = &r->dirs[j];
        if (!d->created && !d->removed) continue;
        struct rdir *p = find_dir(r, d->key, parent_len(d->key, d->kl, 1));
        if (p != NULL && (p->created || p->removed)) continue; /* not the top */
        if (d->removed) {
            if (src) return 0;
            src = d;
        } else {
            if (dst) return 0;
            dst = d;
        }
    }
    if (src == NULL || dst == NULL) return 0;
    size_t dels = 0, puts = 0;
    for (size_t i = 0; i < r->n; i++) {
        const struct queue_item *it = r->g[i];
        if (it->type == FS_CHANGE_DELETE) {
            if (!has_prefix(it->key, it->key_len, src->key, src->kl)) return 0;
            dels++;
        } else {
            if (!has_prefix(it->key, it->key_len, dst->key, dst->kl)) return 0;
            puts++;
        }
    }
    if (dels != puts) return 0;
    size_t sp = parent_len(src->key, src->kl, 1), dp = parent_len(dst->key, dst->kl, 1);
    if (held(r, src->key, sp) || held(r, dst->key, dp) || src->held_before)
        replay_rename(r, 1, src->key, src->kl, dst->key, dst->kl, 0);
    return 1;
}

static void replay_files(struct rp *r) {
    for (size_t i = 0; i < r->n; i++) {
        const struct queue_item *it = r->g[i];
        if (is_marker(it)) continue;
        if (!file_wanted(r, it->key, it->key_len)) continue;
        if (it->type == FS_CHANGE_DELETE) {
            replay_unlink(r, it->key, it->key_len);
            continue;
        }
        /* A key gone again (or created anew) since is not replayed: the
         * kernel would be left with a name the store no longer has. */
        struct fs_kv kv;
        int rc = fs__stat_key(r->fs, it->key, it->key_len, &kv);
        int live = rc == 0 && (!it->created || kv.create_revision == it->revision);
        size_t len = kv.value_len;
        uint32_t mode = kv.mode;
        fs_kv_clear(&kv);
        if (live && S_ISLNK(mode)) {
            if (it->created) replay_symlink(r, it->key, it->key_len);
        } else if (live && it->meta_only)
            replay_attr(r, it->key, it->key_len, mode);
        else if (live)
            replay_put(r, it->key, it->key_len, it->created, len, mode);
    }
}

/* The store is read to see what a transaction changed, and the queues to
 * see what happened since: waits (briefly) until every revision the store
 * holds was queued, so that the two agree. */
static void wait_queued(struct fs *fs) {
    int64_t rev = 0;
    if (fs->be.revision(fs->be.data, &rev) < 0) return;
    for (int i = 0; i < 200 && atomic_load(&fs->notified_rev) < rev; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

static void replay_group(struct rp *r) {
    wait_queued(r->fs);
    if (classify_dirs(r) < 0 || ov_reserve(r) < 0) return;
    if (try_rename_file(r) || try_rename_dir(r)) return;
    for (size_t j = 0; j < r->nd; j++) { /* parents sort before children */
        struct rdir *d = &r->dirs[j];
        if (d->created && held(r, d->key, parent_len(d->key, d->kl, 1))) replay_mkdir(r, d);
    }
    replay_files(r);
    for (size_t j = r->nd; j-- > 0;) {
        const struct rdir *d = &r->dirs[j];
        if (d->removed && (held(r, d->key, parent_len(d->key, d->kl, 1)) || d->held_before))
            replay_rmdir(r, d);
    }
}

static void group_clear(struct rp *r) {
    for (size_t i = 0; i < r->n; i++) free(r->g[i]);
    r->n = 0;
    for (size_t j = 0; j < r->nd; j++) free(r->dirs[j].key);
    r->nd = 0;
}

/* Takes the next transaction's changes into r->g. Returns 0 when stopping. */
static int take_group(struct rp *r) {
    struct fs *fs = r->fs;
    pthread_mutex_lock(&fs->q_lock);
    if (!wait_locked(fs, -1)) {
        pthread_mutex_unlock(&fs->q_lock);
        return 0;
    }
    r->g[r->n++] = pop_locked(fs);
    while (r->g[r->n - 1]->more && r->n < FS__REPLAY_GROUP_MAX &&
           wait_locked(fs, FS__REPLAY_MORE_MS) && fs->rp_head->revision == r->g[0]->revision)
        r->g[r->n++] = pop_locked(fs);
    pthread_mutex_unlock(&fs->q_lock);
    return 1;
}

void *fs__replay_main(void *arg) {
    struct fs *fs = arg;
    struct rp r;
    memset(&r, 0, sizeof r);
    r.fs = fs;
    r.root = open(fs->mountpoint, O_PATH | O_DIRECTORY | O_CLOEXEC);
    atomic_store(&fs->replay_tid, (int)syscall(SYS_gettid));
    while (take_group(&r)) {
        atomic_store(&fs->replay_busy, 1);
        if (!atomic_load(&fs->stop_requested) && r.root >= 0) replay_group(&r);
        atomic_store(&fs->replay_busy, 0);
        group_clear(&r);
    }
    group_clear(&r);
    atomic_store(&fs->replay_tid, 0);
    if (r.root >= 0) close(r.root);
    free(r.dirs);
    free(r.ov);
    free(r.zeros);
    return NULL;
}
