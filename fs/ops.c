/*
 * ops.c - the FUSE low-level handlers.
 *
 * Every handler replies exactly once. Reads (lookup, getattr, readdir,
 * open, read, getxattr ...) call the backend's read functions and reply on
 * the worker thread. Mutations build one transaction, submit it and return
 * at once; fs__op_done (called by the backend on the node loop) replies.
 * A transaction whose compare failed because the store changed between our
 * read and its apply is retried by the completion thread at most
 * FS__RETRIES_MAX times (fs__op_again), never on the node loop.
 *
 * Errors: helpers return 0 or -errno; the handler turns that into one
 * fuse_reply_err(req, -rc).
 *
 * Replay: requests from the replay thread (replay.c; fs__is_replay) are
 * acknowledged from the store's current state without submitting, since
 * the change they repeat is already applied: lookup answers as the
 * thread's overrides say, create/mkdir/unlink/rmdir/rename/setattr only
 * update the inode table, and its open files (fh->replay, direct I/O)
 * drop what is written and put nothing.
 */
#define _GNU_SOURCE
#include "fs/fs_core.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif

#define UNKNOWN_INO 0xffffffffu /* readdir of a name the kernel never looked up */
#define STATFS_BLOCK 4096u
#define STATFS_BLOCKS_NO_QUOTA (UINT64_C(1) << 32) /* 16 TiB shown when unknown */

static struct fs *fs_of(fuse_req_t req) {
    return fuse_req_userdata(req);
}

static double secs(uint32_t ms) {
    return (double)ms / 1000.0;
}

/* ---- store reads ---- */

/* Metadata and value length of key (value not fetched). 0, -ENOENT, -errno. */
int fs__stat_key(struct fs *fs, const char *k, size_t kl, struct fs_kv *out) {
    memset(out, 0, sizeof *out);
    if (kl == 0) return -ENOENT; /* the store has no empty key */
    size_t hl;
    char *hi = fs__cat(k, kl, "", 1, NULL, 0, &hl);
    if (hi == NULL) return -ENOMEM;
    struct fs_kv *kvs = NULL;
    size_t n = 0;
    int more = 0;
    int rc = fs->be.range(fs->be.data, k, kl, hi, hl, 1, 1, &kvs, &n, &more);
    free(hi);
    if (rc < 0) return rc;
    if (n == 0 || kvs[0].key_len != kl || memcmp(kvs[0].key, k, kl) != 0) {
        fs_kv_array_free(kvs, n);
        return -ENOENT;
    }
    *out = kvs[0];
    memset(&kvs[0], 0, sizeof kvs[0]);
    fs_kv_array_free(kvs, n);
    return 0;
}

static int get_key(struct fs *fs, const char *k, size_t kl, struct fs_kv *out) {
    memset(out, 0, sizeof *out);
    if (kl == 0) return -ENOENT;
    return fs->be.get(fs->be.data, k, kl, out);
}

/* The key of directory prefix d's own value ("%value"), if it can exist. */
static int value_key_of(struct fs *fs, const char *d, size_t dl, size_t *vl) {
    (void)fs;
    if (dl < 2 || d[dl - 1] != '/') return 0;
    *vl = dl - 1;
    return 1;
}

static void timespec_of(int64_t ns, struct timespec *ts) {
    ts->tv_sec = (time_t)(ns / 1000000000);
    ts->tv_nsec = (long)(ns % 1000000000);
}

int fs__attr_of_kv(struct fs *fs, fuse_ino_t ino, int is_dir, const struct fs_kv *kv,
                   struct stat *st) {
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    int meta = kv != NULL && kv->mode != 0;
    if (is_dir) {
        st->st_mode = (meta && S_ISDIR(kv->mode)) ? kv->mode
                                                  : (S_IFDIR | (fs->opt.dir_mode & 07777));
        st->st_nlink = 2;
        meta = meta && S_ISDIR(kv->mode);
    } else {
        st->st_mode = S_IFREG | (meta ? (kv->mode & 07777) : (fs->opt.file_mode & 07777));
        if (meta && S_ISLNK(kv->mode)) st->st_mode = S_IFLNK | 0777;
        st->st_nlink = 1;
        st->st_size = kv ? (off_t)kv->value_len : 0;
        st->st_blocks = (st->st_size + 511) / 512;
    }
    st->st_uid = meta ? kv->uid : fs->opt.uid;
    st->st_gid = meta ? kv->gid : fs->opt.gid;
    st->st_blksize = STATFS_BLOCK;
    int64_t t = (kv && kv->mtime_ns) ? kv->mtime_ns : fs->start_ns;
    timespec_of(t, &st->st_mtim);
    st->st_atim = st->st_mtim;
    st->st_ctim = st->st_mtim;
    return 0;
}

/* Attributes of directory prefix d: 0, -ENOENT when no key lies under it. */
static int dir_attr(struct fs *fs, fuse_ino_t ino, const char *d, size_t dl, int is_root,
                    struct stat *st) {
    struct fs_kv kv;
    int rc = fs__stat_key(fs, d, dl, &kv);
    if (rc < 0 && rc != -ENOENT) return rc;
    int have = rc == 0;
    if (!is_root && !(have && S_ISDIR(kv.mode))) {
        int any = fs__any_prefix(fs, d, dl);
        if (any <= 0) {
            fs_kv_clear(&kv);
            return any < 0 ? any : -ENOENT;
        }
    }
    fs__attr_of_kv(fs, ino, 1, have ? &kv : NULL, st);
    fs_kv_clear(&kv);
    return 0;
}

/* ---- names ---- */

static int resolve_hashed(struct fs *fs, const char *d, size_t dl, const char *name, size_t nl,
                          char **raw, size_t *rl) {
    char prefix[FS_NAME_MAX + 1];
    size_t pl;
    if (!fs__name_hashed(name, nl, prefix, &pl)) return -EINVAL;
    char *after = malloc(pl ? pl : 1);
    if (after == NULL) return -ENOMEM;
    memcpy(after, prefix, pl);
    size_t afl = pl;
    int rc = -ENOENT;
    for (unsigned i = 0; i < FS__HASHED_SCAN_MAX; i++) {
        char *m;
        size_t ml;
        int is_dir;
        int r = fs__next_child(fs, d, dl, after, afl, &m, &ml, &is_dir);
        if (r <= 0) {
            rc = r < 0 ? r : -ENOENT;
            break;
        }
        free(after);
        after = m;
        afl = ml;
        if (ml < pl || memcmp(m, prefix, pl) != 0) break; /* past the candidates */
        char enc[FS_NAME_MAX + 1];
        size_t el = fs_name_encode(m, ml, enc, sizeof enc);
        if (el == nl && memcmp(enc, name, nl) == 0) {
            *raw = m;
            *rl = ml;
            return 0;
        }
    }
    free(after);
    return rc;
}

/* Resolves name in directory dir into c. Returns 0, -ENOTDIR, -ENAMETOOLONG,
 * -EINVAL (no key spells as name), -ENOENT (an unresolved long name) or
 * -errno. */
static int child_resolve(struct fs *fs, struct inode *dir, const char *name, struct child *c) {
    memset(c, 0, sizeof *c);
    if (!dir->is_dir) return -ENOTDIR;
    size_t nl = strlen(name);
    if (nl > FS_NAME_MAX) return -ENAMETOOLONG;
    c->d = fs__ino_key(fs, dir, &c->dl);
    if (c->d == NULL) return -ENOMEM;
    c->in_root = dir->is_root;
    int rc;
    if (fs__name_is_value(name, nl)) {
        size_t vl;
        if (!value_key_of(fs, c->d, c->dl, &vl)) {
            rc = -EINVAL;
            goto err;
        }
        c->is_value = 1;
        c->fkey = fs__cat(c->d, vl, NULL, 0, NULL, 0, &c->fkl);
        if (c->fkey == NULL) {
            rc = -ENOMEM;
            goto err;
        }
        return 0;
    }
    c->raw = malloc(nl ? nl : 1);
    if (c->raw == NULL) {
        rc = -ENOMEM;
        goto err;
    }
    long n = fs_name_decode(name, nl, c->raw, nl);
    if (n >= 0) {
        c->rl = (size_t)n;
    } else {
        free(c->raw);
        c->raw = NULL;
        rc = resolve_hashed(fs, c->d, c->dl, name, nl, &c->raw, &c->rl);
        if (rc < 0) goto err;
    }
    c->fkey = fs__cat(c->d, c->dl, c->raw, c->rl, NULL, 0, &c->fkl);
    c->dkey = fs__cat(c->d, c->dl, c->raw, c->rl, "/", 1, &c->dkl);
    if (c->fkey == NULL || c->dkey == NULL) {
        rc = -ENOMEM;
        goto err;
    }
    return 0;
err:
    fs__child_free(c);
    return rc;
}

/* What c names now: 2 a directory, 1 a file (kv filled), 0 nothing. */
static int child_kind(struct fs *fs, const struct child *c, struct fs_kv *kv) {
    memset(kv, 0, sizeof *kv);
    if (!c->is_value) {
        int rc = fs__any_prefix(fs, c->dkey, c->dkl);
        if (rc != 0) return rc < 0 ? rc : 2;
    }
    int rc = fs__stat_key(fs, c->fkey, c->fkl, kv);
    if (rc == -ENOENT) return 0;
    if (rc < 0) return rc;
    if (!c->is_value && c->rl == 0 && S_ISDIR(kv->mode)) { /* hidden marker */
        fs_kv_clear(kv);
        return 0;
    }
    return 1;
}

static void entry_of(struct fs *fs, struct fuse_entry_param *e, struct inode *in,
                     const struct stat *st) {
    memset(e, 0, sizeof *e);
    e->ino = fs__ino_num(fs, in);
    e->attr = *st;
    e->attr.st_ino = e->ino;
    e->attr_timeout = secs(fs->opt.attr_timeout_ms);
    e->entry_timeout = secs(fs->opt.entry_timeout_ms);
}

/* ---- lookup, forget, getattr ---- */

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    struct fs *fs = fs_of(req);
    struct child c;
    struct fs_kv kv;
    int rc = child_resolve(fs, fs__ino(fs, parent), name, &c);
    if (rc < 0) {
        fuse_reply_err(req, rc == -EINVAL ? ENOENT : -rc);
        return;
    }
    int kind = -1;
    memset(&kv, 0, sizeof kv);
    if (fs__is_replay(fs, req)) {
        int is_dir = 0;
        int view = fs__replay_view(fs, &c, &is_dir);
        if (view == 0) { /* not there yet, as far as the replay is concerned */
            struct fuse_entry_param e;
            memset(&e, 0, sizeof e);
            fuse_reply_entry(req, &e);
            goto out;
        }
        if (view == 1) {
            kind = is_dir ? 2 : 1;
            if (!is_dir && fs__stat_key(fs, c.fkey, c.fkl, &kv) < 0) memset(&kv, 0, sizeof kv);
        }
    }
    if (kind < 0) kind = child_kind(fs, &c, &kv);
    if (kind == 0 && !fs__is_replay(fs, req) && fs__ino_pending(fs, c.fkey, c.fkl, &kv))
        kind = 1; /* created here, not put yet: an empty file */
    if (kind == 0 && fs__is_replay(fs, req) && !c.is_value &&
        fs__ino_peek(fs, 1, c.dkey, c.dkl) != 0)
        kind = 2; /* a directory the kernel holds, gone in the store since the
                     change being replayed: the replay's path still walks it */
    if (kind < 0) {
        fuse_reply_err(req, -kind);
        goto out;
    }
    if (kind == 0) { /* negative entry, cached; remote creates invalidate it */
        struct fuse_entry_param e;
        memset(&e, 0, sizeof e);
        /* not cached when the replay thread asked: the store may be past
         * the change it replays, and the next replay must ask again */
        e.entry_timeout = fs__is_replay(fs, req) ? 0 : secs(fs->opt.entry_timeout_ms);
        fuse_reply_entry(req, &e);
        goto out;
    }
    struct stat st;
    struct inode *in;
    if (kind == 2) {
        in = fs__ino_ref(fs, 1, c.dkey, c.dkl);
        if (in == NULL) {
            fuse_reply_err(req, ENOMEM);
            goto out;
        }
        rc = dir_attr(fs, fs__ino_num(fs, in), c.dkey, c.dkl, 0, &st);
        if (rc == -ENOENT && fs__is_replay(fs, req)) /* a removed directory */
            rc = fs__attr_of_kv(fs, fs__ino_num(fs, in), 1, NULL, &st);
        if (rc < 0) { /* vanished meanwhile */
            fs__ino_forget(fs, in, 1);
            fuse_reply_err(req, -rc);
            goto out;
        }
    } else {
        in = fs__ino_ref(fs, 0, c.fkey, c.fkl);
        if (in == NULL) {
            fuse_reply_err(req, ENOMEM);
            goto out;
        }
        fs__attr_of_kv(fs, fs__ino_num(fs, in), 0, &kv, &st);
    }
    struct fuse_entry_param e;
    entry_of(fs, &e, in, &st);
    if (fuse_reply_entry(req, &e) != 0) fs__ino_forget(fs, in, 1);
out:
    fs_kv_clear(&kv);
    fs__child_free(&c);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
    struct fs *fs = fs_of(req);
    fs__ino_forget(fs, fs__ino(fs, ino), nlookup);
    fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *f) {
    struct fs *fs = fs_of(req);
    for (size_t i = 0; i < count; i++) fs__ino_forget(fs, fs__ino(fs, f[i].ino), f[i].nlookup);
    fuse_reply_none(req);
}

static int file_attr(struct fs *fs, fuse_ino_t ino, struct inode *in, struct fh *fh,
                     struct stat *st) {
    size_t kl;
    char *k = fs__ino_key(fs, in, &kl);
    if (k == NULL) return -ENOMEM;
    struct fs_kv kv;
    int rc = fs__stat_key(fs, k, kl, &kv);
    if (rc == -ENOENT && fs__ino_pending(fs, k, kl, &kv)) rc = 0;
    free(k);
    if (rc == -ENOENT && fh != NULL) { /* deleted while open: what we hold */
        kv.mode = fh->mode;
        kv.uid = fh->uid;
        kv.gid = fh->gid;
        rc = 0;
    }
    if (rc < 0) return rc;
    if (fh != NULL) {
        /* fstat(2) on a handle: the size of the version it reads (or of
         * what it has written), not of whatever the key holds now. */
        pthread_mutex_lock(&fh->lock);
        kv.value_len = fh->len;
        if (fh->dirty) kv.mtime_ns = fh->write_ns;
        pthread_mutex_unlock(&fh->lock);
    }
    fs__attr_of_kv(fs, ino, 0, &kv, st);
    fs_kv_clear(&kv);
    return 0;
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    struct fs *fs = fs_of(req);
    struct inode *in = fs__ino(fs, ino);
    struct stat st;
    int rc;
    if (in->is_dir) {
        size_t dl;
        char *d = fs__ino_key(fs, in, &dl);
        rc = d ? dir_attr(fs, ino, d, dl, in->is_root, &st) : -ENOMEM;
        free(d);
    } else {
        struct fh *fh = fi ? (struct fh *)(uintptr_t)fi->fh : NULL;
        rc = file_attr(fs, ino, in, fh, &st);
    }
    if (rc == -ENOENT && fs__is_replay(fs, req)) {
        /* gone in the store since the change being replayed; the kernel
         * checks permissions on the way to it (default_permissions) */
        rc = fs__attr_of_kv(fs, ino, in->is_dir, NULL, &st);
    }
    if (rc < 0)
        fuse_reply_err(req, -rc);
    else
        fuse_reply_attr(req, &st, fs__is_replay(fs, req) ? 0 : secs(fs->opt.attr_timeout_ms));
}

/* ---- transactions ---- */

#define TXN_SMALL 4

struct txn_b {
    struct fs_cmp cmps[TXN_SMALL];
    struct fs_op ops[TXN_SMALL];
    size_t nc, no;
};

static struct fs_cmp *add_cmp(struct txn_b *t, enum fs_cmp_type type, const char *k, size_t kl) {
    FS_ASSERT(t->nc < TXN_SMALL);
    struct fs_cmp *c = &t->cmps[t->nc++];
    memset(c, 0, sizeof *c);
    c->type = type;
    c->key = k;
    c->key_len = kl;
    return c;
}

static struct fs_op *add_op(struct txn_b *t, enum fs_op_type type, const char *k, size_t kl) {
    FS_ASSERT(t->no < TXN_SMALL);
    struct fs_op *o = &t->ops[t->no++];
    memset(o, 0, sizeof *o);
    o->type = type;
    o->key = k;
    o->key_len = kl;
    return o;
}

static int submit_b(struct fs *fs, struct op *op, struct txn_b *t) {
    struct fs_txn txn = {t->cmps, t->nc, t->ops, t->no};
    return fs__submit(fs, op, &txn);
}

/* Range end of prefix p for a compare/op: malloc()ed, or "\0" (unbounded). */
static char *cmp_end(const char *p, size_t pl, size_t *el) {
    while (pl > 0 && (unsigned char)p[pl - 1] == 0xFF) pl--;
    if (pl == 0) return fs__cat("", 1, NULL, 0, NULL, 0, el);
    char *e = fs__cat(p, pl, NULL, 0, NULL, 0, el);
    if (e) e[pl - 1] = (char)((unsigned char)e[pl - 1] + 1);
    return e;
}

static struct op *op_new(struct fs *fs, fuse_req_t req, enum op_kind kind) {
    struct op *op = calloc(1, sizeof *op);
    if (op == NULL) return NULL;
    op->fs = fs;
    op->req = req;
    op->kind = kind;
    const struct fuse_ctx *ctx = fuse_req_ctx(req);
    op->uid = ctx->uid;
    op->gid = ctx->gid;
    return op;
}

/* Replies err and frees op (the one place a failed op ends). */
static void op_fail(struct op *op, int rc) {
    FS_ASSERT(rc < 0);
    fuse_reply_err(op->req, -rc);
    fs__op_finish(op);
}

/* A marker keeps directory c.d when the change removes its last key. */
static int maybe_marker(struct fs *fs, const struct child *c, struct txn_b *t, int64_t now) {
    if (c->in_root || c->is_value) return 0;
    int rc = fs__would_empty(fs, c->d, c->dl, c->raw, c->rl);
    if (rc <= 0) return rc;
    struct fs_op *o = add_op(t, FS_OP_PUT, c->d, c->dl);
    o->mode = S_IFDIR | (fs->opt.dir_mode & 07777);
    o->uid = fs->opt.uid;
    o->gid = fs->opt.gid;
    o->mtime_ns = now;
    return 0;
}

/* ---- fh ---- */

static struct fh *fh_new(struct fs *fs, struct inode *in) {
    struct fh *fh = calloc(1, sizeof *fh);
    if (fh == NULL) return NULL;
    pthread_mutex_init(&fh->lock, NULL);
    fh->ino = in;
    fs__handle_add(fs, &fh->h, 0);
    return fh;
}

static void fh_destroy(struct fh *fh) {
    pthread_mutex_destroy(&fh->lock);
    free(fh->buf);
    free(fh);
}

/* The handle's file stops being pending: its first put was applied
 * (stored), or it is given up (released unput, failed, or the put found
 * the key taken). A file given up while nothing else of this mount creates
 * it loses its name: its dentry is dropped. Any thread (no backend call). */
static void fh_unpend(struct fh *fh, int stored) {
    if (!fh->creating || fh->ino == NULL) return;
    fh->creating = 0;
    struct fs *fs = fh->h.fs;
    struct inode *in = fh->ino;
    pthread_mutex_lock(&fs->ino_lock);
    FS_ASSERT(in->pending > 0);
    in->pending--;
    int drop = !stored && in->pending == 0 && in->linked;
    size_t kl = in->key_len;
    char *k = drop ? malloc(kl ? kl : 1) : NULL;
    if (k != NULL) memcpy(k, in->key, kl);
    pthread_mutex_unlock(&fs->ino_lock);
    if (k != NULL) fs__drop_entry(fs, k, kl);
    free(k);
}

static void fh_free(struct fh *fh) {
    if (fh == NULL) return;
    fh_unpend(fh, 0);
    fs__handle_del(&fh->h);
    fh_destroy(fh);
}

/* The thread group of thread tid (the pid a FUSE request carries is the
 * calling thread's), or 0 when unknown (gone, another pid namespace). */
static pid_t tgid_of(pid_t tid) {
    if (tid <= 0) return 0;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    const char *t = strstr(buf, "\nTgid:");
    if (t == NULL) return 0;
    return (pid_t)strtol(t + 6, NULL, 10);
}

static pid_t req_tgid(fuse_req_t req) {
    return tgid_of(fuse_req_ctx(req)->pid);
}

/* Whether process tgid still has a descriptor open on FUSE inode ino (read
 * from /proc/<tgid>/fdinfo, whose "ino:" is the number we gave the
 * kernel). A flush comes after its descriptor left the table, so this
 * tells "one of several descriptors closed" (bash closes the one it opened
 * once it dup2-ed it to stdout) from "its last one". At most
 * FS__FD_SCAN_MAX descriptors are read; beyond that, and when /proc cannot
 * tell (the process is exiting: its table is gone), it answers 0. */
#define FS__FD_SCAN_MAX 4096u
static int other_fd_open(pid_t tgid, fuse_ino_t ino) {
    if (tgid <= 0) return 0;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fdinfo", (int)tgid);
    DIR *d = opendir(path);
    if (d == NULL) return 0;
    int found = 0;
    unsigned n = 0;
    struct dirent *e;
    while (!found && n < FS__FD_SCAN_MAX && (e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        n++;
        int fd = openat(dirfd(d), e->d_name, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        char buf[256];
        ssize_t r = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (r <= 0) continue;
        buf[r] = '\0';
        const char *t = strstr(buf, "\nino:");
        if (t == NULL) continue;
        found = strtoull(t + 5, NULL, 10) == (unsigned long long)ino;
    }
    closedir(d);
    return found;
}

static int fh_reserve(struct fh *fh, size_t n) {
    if (n <= fh->cap) return 0;
    size_t cap = fh->cap ? fh->cap : 4096;
    while (cap < n) cap *= 2;
    char *b = realloc(fh->buf, cap);
    if (b == NULL) return -ENOMEM;
    fh->buf = b;
    fh->cap = cap;
    return 0;
}

static int fh_resize(struct fh *fh, size_t n) {
    int rc = fh_reserve(fh, n);
    if (rc < 0) return rc;
    if (n > fh->len) memset(fh->buf + fh->len, 0, n - fh->len);
    fh->len = n;
    return 0;
}

/* ---- create, mknod, mkdir ---- */

static void create_start(struct op *op);
static void create_decide(struct op *op);
static void create_open_existing(struct op *op);
static void mkdir_done(struct op *op);
static void rename_done(struct op *op);

static void reply_created_in(struct op *op, struct inode *in, const struct fs_kv *kv, int64_t rev);

static void reply_created(struct op *op, const struct fs_kv *kv, int64_t rev) {
    struct fs *fs = op->fs;
    struct inode *in = fs__ino_ref(fs, 0, op->a.fkey, op->a.fkl);
    if (in == NULL) {
        fh_free(op->fh);
        op->fh = NULL;
        op_fail(op, -ENOMEM);
        return;
    }
    reply_created_in(op, in, kv, rev);
}

/* Replies to create/mknod with inode in (one lookup reference taken). */
static void reply_created_in(struct op *op, struct inode *in, const struct fs_kv *kv, int64_t rev) {
    struct fs *fs = op->fs;
    struct stat st;
    fs__attr_of_kv(fs, fs__ino_num(fs, in), 0, kv, &st);
    struct fuse_entry_param e;
    entry_of(fs, &e, in, &st);
    pthread_mutex_lock(&fs->ino_lock);
    in->cache_rev = rev;
    pthread_mutex_unlock(&fs->ino_lock);
    int r;
    if (op->kind == OP_CREATE) {
        op->fh->ino = in;
        op->fi.fh = (uint64_t)(uintptr_t)op->fh;
        op->fi.keep_cache = 0;
        op->fi.direct_io = 1; /* as open_body */
        r = fuse_reply_create(op->req, &e, &op->fi);
        if (r != 0) fh_free(op->fh);
    } else {
        r = fuse_reply_entry(op->req, &e);
    }
    if (r != 0) fs__ino_forget(fs, in, 1);
    op->fh = NULL;
    fs__op_finish(op);
}

/* create without O_EXCL found the key present: open what is there. */
static void create_open_existing(struct op *op) {
    struct fs *fs = op->fs;
    struct fs_kv kv;
    int rc = get_key(fs, op->a.fkey, op->a.fkl, &kv);
    if (rc == -ENOENT) { /* gone again: try to create once more */
        if (++op->retries > FS__RETRIES_MAX) {
            fh_free(op->fh);
            op_fail(op, -EIO);
            return;
        }
        create_decide(op);
        return;
    }
    if (rc < 0) {
        fh_free(op->fh);
        op_fail(op, rc);
        return;
    }
    struct fh *fh = op->fh;
    int acc = (int)op->flags & O_ACCMODE;
    if (acc != O_RDONLY && (op->flags & O_TRUNC)) {
        fh->dirty = FH_DIRTY_TRUNC;
        fh->write_ns = fs__now_ns();
        kv.value_len = 0;
    } else {
        free(fh->buf);
        fh->buf = kv.value;
        fh->len = fh->cap = kv.value_len;
        kv.value = NULL;
    }
    fh->mode = kv.mode;
    fh->uid = kv.uid;
    fh->gid = kv.gid;
    reply_created(op, &kv, kv.mod_revision);
    fs_kv_clear(&kv);
}

/* create(2) of a regular file. Nothing is put here: a name absent from
 * the store becomes a pending file of this mount (see put_handle), put
 * once, whole, when its opener closes it. An existing key is EEXIST with
 * O_EXCL, else opened; a pending file of this mount counts as existing. */
static void create_decide(struct op *op) {
    struct fs *fs = op->fs;
    int excl = (op->flags & O_EXCL) != 0;
    struct fs_kv kv;
    int kind = child_kind(fs, &op->a, &kv);
    fs_kv_clear(&kv);
    if (kind < 0 || kind == 2) {
        fh_free(op->fh);
        op_fail(op, kind < 0 ? kind : excl ? -EEXIST : -EISDIR);
        return;
    }
    if (kind == 1) {
        if (excl) {
            fh_free(op->fh);
            op_fail(op, -EEXIST);
            return;
        }
        create_open_existing(op);
        return;
    }
    struct inode *in = fs__ino_ref(fs, 0, op->a.fkey, op->a.fkl);
    if (in == NULL) {
        fh_free(op->fh);
        op_fail(op, -ENOMEM);
        return;
    }
    int64_t now = fs__now_ns();
    memset(&kv, 0, sizeof kv);
    pthread_mutex_lock(&fs->ino_lock);
    int pending = in->pending > 0;
    if (pending && excl) {
        pthread_mutex_unlock(&fs->ino_lock);
        fs__ino_forget(fs, in, 1);
        fh_free(op->fh);
        op_fail(op, -EEXIST);
        return;
    }
    if (!pending) {
        in->pending = 1;
        in->pexcl = excl;
        in->pmode = op->mode;
        in->puid = op->uid;
        in->pgid = op->gid;
        in->pmtime_ns = now;
        op->fh->creating = 1;
    }
    /* a second open of a pending file sees it empty and does not create */
    kv.mode = in->pmode;
    kv.uid = in->puid;
    kv.gid = in->pgid;
    kv.mtime_ns = in->pmtime_ns;
    pthread_mutex_unlock(&fs->ino_lock);
    op->fh->mode = kv.mode;
    op->fh->uid = kv.uid;
    op->fh->gid = kv.gid;
    op->fh->write_ns = now;
    reply_created_in(op, in, &kv, 0);
}

static void create_start(struct op *op) {
    struct fs *fs = op->fs;
    struct txn_b t = {0};
    add_cmp(&t, FS_CMP_ABSENT, op->a.fkey, op->a.fkl);
    struct fs_op *o = add_op(&t, FS_OP_PUT, op->a.fkey, op->a.fkl);
    o->value = op->value; /* a symlink's target; NULL for mknod */
    o->value_len = op->value_len;
    o->mode = op->mode;
    o->uid = op->uid;
    o->gid = op->gid;
    o->mtime_ns = op->mtime_ns = fs__now_ns();
    int rc = submit_b(fs, op, &t);
    if (rc < 0) {
        fh_free(op->fh);
        op_fail(op, rc);
    }
}

/* create (fi), mknod of a regular file, or symlink (link: its target,
 * stored as the value of a key whose metadata mode is S_IFLNK|0777). */
static void make_file(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi, const char *link) {
    struct fs *fs = fs_of(req);
    struct op *op = op_new(fs, req, fi ? OP_CREATE : OP_MKNOD);
    if (op == NULL) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    int rc = child_resolve(fs, fs__ino(fs, parent), name, &op->a);
    if (rc < 0) {
        op_fail(op, rc == -ENOENT ? -EINVAL : rc);
        return;
    }
    if (!op->a.is_value) {
        rc = fs__any_prefix(fs, op->a.dkey, op->a.dkl);
        if (rc != 0) {
            op_fail(op, rc < 0 ? rc : ((fi && (fi->flags & O_EXCL)) || !fi ? -EEXIST : -EISDIR));
            return;
        }
    }
    op->mode = link ? S_IFLNK | 0777 : S_IFREG | (mode & 07777);
    if (link) {
        op->value_len = strlen(link);
        op->value = fs__cat(link, op->value_len, NULL, 0, NULL, 0, &op->value_len);
        if (op->value == NULL) {
            op_fail(op, -ENOMEM);
            return;
        }
    }
    if (!fi && fs__is_replay(fs, req)) { /* the symlink is already there */
        struct fs_kv kv;
        if (fs__stat_key(fs, op->a.fkey, op->a.fkl, &kv) < 0) {
            memset(&kv, 0, sizeof kv);
            kv.mode = op->mode;
            kv.value_len = op->value_len;
        }
        reply_created(op, &kv, 0);
        fs_kv_clear(&kv);
        return;
    }
    if (fi && fs__is_replay(fs, req)) { /* the key is already there */
        op->fi = *fi;
        op->fi.direct_io = 1;
        op->fh = fh_new(fs, NULL);
        if (op->fh == NULL) {
            op_fail(op, -ENOMEM);
            return;
        }
        op->fh->replay = 1;
        struct fs_kv kv;
        if (fs__stat_key(fs, op->a.fkey, op->a.fkl, &kv) < 0) memset(&kv, 0, sizeof kv);
        reply_created(op, &kv, 0);
        fs_kv_clear(&kv);
        return;
    }
    if (fi) {
        op->fi = *fi;
        op->flags = (unsigned)fi->flags;
        op->fh = fh_new(fs, NULL);
        if (op->fh == NULL) {
            op_fail(op, -ENOMEM);
            return;
        }
        op->fh->append = (fi->flags & O_APPEND) != 0;
        op->fh->mode = op->mode;
        op->fh->uid = op->uid;
        op->fh->gid = op->gid;
        op->fh->opener = req_tgid(req);
        create_decide(op);
        return;
    }
    create_start(op); /* mknod(2): the key is put (empty) at once */
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi) {
    make_file(req, parent, name, mode, fi, NULL);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev) {
    (void)rdev;
    if (!S_ISREG(mode)) { /* keys hold bytes: no devices, fifos or sockets */
        fuse_reply_err(req, EPERM);
        return;
    }
    make_file(req, parent, name, mode, NULL, NULL);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
    struct fs *fs = fs_of(req);
    struct op *op = op_new(fs, req, OP_MKDIR);
    if (op == NULL) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    int rc = child_resolve(fs, fs__ino(fs, parent), name, &op->a);
    if (rc < 0 || op->a.is_value) {
        op_fail(op, rc == -ENOENT || rc == 0 ? -EINVAL : rc);
        return;
    }
    if (fs__is_replay(fs, req)) { /* the directory is already there */
        struct fs_kv kv;
        if (fs__stat_key(fs, op->a.dkey, op->a.dkl, &kv) < 0 || !S_ISDIR(kv.mode)) {
            fs_kv_clear(&kv);
            kv.mode = S_IFDIR | (fs->opt.dir_mode & 07777);
            kv.uid = fs->opt.uid;
            kv.gid = fs->opt.gid;
        }
        op->mode = kv.mode;
        op->uid = kv.uid;
        op->gid = kv.gid;
        op->mtime_ns = kv.mtime_ns;
        fs_kv_clear(&kv);
        mkdir_done(op);
        return;
    }
    size_t el;
    char *end = cmp_end(op->a.dkey, op->a.dkl, &el);
    if (end == NULL) {
        op_fail(op, -ENOMEM);
        return;
    }
    struct txn_b t = {0};
    add_cmp(&t, FS_CMP_ABSENT, op->a.fkey, op->a.fkl);
    struct fs_cmp *c = add_cmp(&t, FS_CMP_ABSENT, op->a.dkey, op->a.dkl);
    c->range_end = end;
    c->range_end_len = el;
    struct fs_op *o = add_op(&t, FS_OP_PUT, op->a.dkey, op->a.dkl);
    o->mode = op->mode = S_IFDIR | (mode & 07777);
    o->uid = op->uid;
    o->gid = op->gid;
    o->mtime_ns = op->mtime_ns = fs__now_ns();
    rc = submit_b(fs, op, &t);
    free(end);
    if (rc < 0) op_fail(op, rc);
}

static void mkdir_done(struct op *op) {
    struct fs *fs = op->fs;
    struct inode *in = fs__ino_ref(fs, 1, op->a.dkey, op->a.dkl);
    if (in == NULL) {
        op_fail(op, -ENOMEM);
        return;
    }
    struct fs_kv kv = {0};
    kv.mode = op->mode;
    kv.uid = op->uid;
    kv.gid = op->gid;
    kv.mtime_ns = op->mtime_ns;
    struct stat st;
    fs__attr_of_kv(fs, fs__ino_num(fs, in), 1, &kv, &st);
    struct fuse_entry_param e;
    entry_of(fs, &e, in, &st);
    if (fuse_reply_entry(op->req, &e) != 0) fs__ino_forget(fs, in, 1);
    fs__op_finish(op);
}

/* ---- unlink, rmdir ---- */

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) {
    struct fs *fs = fs_of(req);
    struct op *op = op_new(fs, req, OP_UNLINK);
    if (op == NULL) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    int rc = child_resolve(fs, fs__ino(fs, parent), name, &op->a);
    if (rc < 0) {
        op_fail(op, rc == -EINVAL ? -ENOENT : rc);
        return;
    }
    if (fs__is_replay(fs, req)) { /* the key is already gone */
        fs__ino_detach(fs, 0, op->a.fkey, op->a.fkl);
        fuse_reply_err(req, 0);
        fs__op_finish(op);
        return;
    }
    struct fs_kv kv;
    int kind = child_kind(fs, &op->a, &kv);
    fs_kv_clear(&kv);
    if (kind == 0 && fs__ino_pending(fs, op->a.fkey, op->a.fkl, &kv)) {
        /* a pending file: nothing in the store; its writer's data is dropped */
        fs__ino_detach(fs, 0, op->a.fkey, op->a.fkl);
        fuse_reply_err(req, 0);
        fs__op_finish(op);
        return;
    }
    if (kind <= 0 || kind == 2) {
        op_fail(op, kind < 0 ? kind : kind == 2 ? -EISDIR : -ENOENT);
        return;
    }
    struct txn_b t = {0};
    add_cmp(&t, FS_CMP_EXISTS, op->a.fkey, op->a.fkl);
    add_op(&t, FS_OP_DELETE, op->a.fkey, op->a.fkl);
    rc = maybe_marker(fs, &op->a, &t, fs__now_ns());
    if (rc == 0) rc = submit_b(fs, op, &t);
    if (rc < 0) op_fail(op, rc);
}

/* Whether directory prefix dkey (node key fkey) holds anything listable. */
static int dir_nonempty(struct fs *fs, const struct child *c) {
    size_t el, ll;
    char *end = cmp_end(c->dkey, c->dkl, &el);
    char *lo = fs__cat(c->dkey, c->dkl, "", 1, NULL, 0, &ll);
    int rc = -ENOMEM;
    if (end && lo) {
        int unbounded = el == 1 && end[0] == '\0';
        rc = fs__any(fs, lo, ll, unbounded ? NULL : end, unbounded ? 0 : el);
    }
    free(end);
    free(lo);
    if (rc != 0) return rc;
    struct fs_kv kv;
    rc = fs__stat_key(fs, c->dkey, c->dkl, &kv); /* a marker not written by mkdir */
    int visible = rc == 0 && !S_ISDIR(kv.mode);
    fs_kv_clear(&kv);
    if (rc < 0 && rc != -ENOENT) return rc;
    if (visible) return 1;
    rc = fs__stat_key(fs, c->fkey, c->fkl, &kv); /* the directory's own value */
    fs_kv_clear(&kv);
    if (rc == -ENOENT) return 0;
    return rc < 0 ? rc : 1;
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) {
    struct fs *fs = fs_of(req);
    struct op *op = op_new(fs, req, OP_RMDIR);
    if (op == NULL) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    int rc = child_resolve(fs, fs__ino(fs, parent), name, &op->a);
    if (rc < 0 || op->a.is_value) {
        op_fail(op, rc == 0 ? -ENOTDIR : rc == -EINVAL ? -ENOENT : rc);
        return;
    }
    if (fs__is_replay(fs, req)) { /* the directory is already gone */
        fs__ino_detach(fs, 1, op->a.dkey, op->a.dkl);
        fuse_reply_err(req, 0);
        fs__op_finish(op);
        return;
    }
    struct fs_kv kv;
    int kind = child_kind(fs, &op->a, &kv);
    fs_kv_clear(&kv);
    if (kind != 2) {
        op_fail(op, kind < 0 ? kind : kind == 1 ? -ENOTDIR : -ENOENT);
        return;
    }
    rc = dir_nonempty(fs, &op->a);
    if (rc != 0) {
        op_fail(op, rc < 0 ? rc : -ENOTEMPTY);
        return;
    }
    size_t el, ll;
    char *end = cmp_end(op->a.dkey, op->a.dkl, &el);
    char *lo = fs__cat(op->a.dkey, op->a.dkl, "", 1, NULL, 0, &ll);
    struct txn_b t = {0};
    rc = -ENOMEM;
    if (end && lo) {
        struct fs_cmp *c = add_cmp(&t, FS_CMP_ABSENT, lo, ll);
        c->range_end = end;
        c->range_end_len = el;
        add_cmp(&t, FS_CMP_ABSENT, op->a.fkey, op->a.fkl);
        add_op(&t, FS_OP_DELETE, op->a.dkey, op->a.dkl);
        rc = maybe_marker(fs, &op->a, &t, fs__now_ns());
        if (rc == 0) rc = submit_b(fs, op, &t);
    }
    free(end);
    free(lo);
    if (rc < 0) op_fail(op, rc);
}

/* ---- rename ---- */

static void rename_start(struct op *op);
static void rename_pending(struct op *op);

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags) {
    struct fs *fs = fs_of(req);
    if (flags & ~(unsigned)RENAME_NOREPLACE) { /* RENAME_EXCHANGE, WHITEOUT */
        fuse_reply_err(req, EINVAL);
        return;
    }
    struct op *op = op_new(fs, req, OP_RENAME);
    if (op == NULL) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    op->flags = flags;
    int rc = child_resolve(fs, fs__ino(fs, parent), name, &op->a);
    if (rc < 0) {
        op_fail(op, rc == -EINVAL ? -ENOENT : rc);
        return;
    }
    rc = child_resolve(fs, fs__ino(fs, newparent), newname, &op->b);
    if (rc < 0) {
        op_fail(op, rc == -ENOENT ? -EINVAL : rc);
        return;
    }
    if (fs__is_replay(fs, req)) { /* already moved in the store */
        int is_dir = 0;
        (void)fs__replay_view(fs, &op->a, &is_dir);
        op->is_dir = is_dir;
        rename_done(op);
        return;
    }
    rename_start(op);
}

static int rename_file(struct op *op, int dst_kind) {
    struct fs *fs = op->fs;
    struct child *s = &op->a, *d = &op->b;
    if (dst_kind == 2) return -EISDIR;
    if (dst_kind == 1 && (op->flags & RENAME_NOREPLACE)) return -EEXIST;
    if (s->fkl == d->fkl && memcmp(s->fkey, d->fkey, s->fkl) == 0) return 1; /* itself */
    struct fs_kv kv;
    int rc = get_key(fs, s->fkey, s->fkl, &kv);
    if (rc < 0) return rc;
    struct txn_b t = {0};
    size_t el = 0;
    char *end = NULL;
    add_cmp(&t, FS_CMP_MOD_EQ, s->fkey, s->fkl)->revision = kv.mod_revision;
    if (!d->is_value) { /* the destination must not have become a directory */
        end = cmp_end(d->dkey, d->dkl, &el);
        if (end == NULL) {
            fs_kv_clear(&kv);
            return -ENOMEM;
        }
        struct fs_cmp *c = add_cmp(&t, FS_CMP_ABSENT, d->dkey, d->dkl);
        c->range_end = end;
        c->range_end_len = el;
    }
    if (op->flags & RENAME_NOREPLACE) add_cmp(&t, FS_CMP_ABSENT, d->fkey, d->fkl);
    struct fs_op *o = add_op(&t, FS_OP_PUT, d->fkey, d->fkl);
    o->value = kv.value;
    o->value_len = kv.value_len;
    o->lease = kv.lease;
    o->mode = kv.mode;
    o->uid = kv.uid;
    o->gid = kv.gid;
    o->mtime_ns = kv.mtime_ns;
    add_op(&t, FS_OP_DELETE, s->fkey, s->fkl);
    rc = 0;
    if (s->dl != d->dl || memcmp(s->d, d->d, s->dl) != 0)
        rc = maybe_marker(fs, s, &t, fs__now_ns());
    if (rc == 0) rc = submit_b(fs, op, &t);
    free(end);
    fs_kv_clear(&kv);
    return rc;
}

static int rename_dir(struct op *op, int dst_kind) {
    struct fs *fs = op->fs;
    struct child *s = &op->a, *d = &op->b;
    if (d->is_value || dst_kind == 1) return -ENOTDIR;
    if (s->dkl == d->dkl && memcmp(s->dkey, d->dkey, s->dkl) == 0) return 1;
    if (d->dkl > s->dkl && memcmp(d->dkey, s->dkey, s->dkl) == 0) return -EINVAL;
    if (dst_kind == 2) {
        if (op->flags & RENAME_NOREPLACE) return -EEXIST;
        int ne = dir_nonempty(fs, d);
        if (ne != 0) return ne < 0 ? ne : -ENOTEMPTY;
    }
    size_t max_keys = fs->opt.txn_ops_max - 4;
    int64_t rev = 0;
    int rc = fs->be.revision(fs->be.data, &rev);
    if (rc < 0) return rc;
    size_t sel, del, dlo_l;
    char *send = cmp_end(s->dkey, s->dkl, &sel);
    char *dend = cmp_end(d->dkey, d->dkl, &del);
    char *dlo = fs__cat(d->dkey, d->dkl, "", 1, NULL, 0, &dlo_l);
    struct fs_kv *kvs = NULL, vkv;
    size_t n = 0;
    int more = 0, have_v = 0;
    struct fs_cmp *cmps = NULL;
    struct fs_op *ops = NULL;
    char **keys = NULL;
    memset(&vkv, 0, sizeof vkv);
    rc = -ENOMEM;
    if (!send || !dend || !dlo) goto out;
    int unb = sel == 1 && send[0] == '\0';
    rc = fs->be.range(fs->be.data, s->dkey, s->dkl, unb ? NULL : send, unb ? 0 : sel, max_keys, 0,
                      &kvs, &n, &more);
    if (rc < 0) goto out;
    if (more) {
        rc = -EXDEV; /* too large for one transaction: mv copies instead */
        goto out;
    }
    rc = get_key(fs, s->fkey, s->fkl, &vkv);
    if (rc < 0 && rc != -ENOENT) goto out;
    have_v = rc == 0;
    size_t ncap = n + 8;
    cmps = calloc(ncap, sizeof *cmps);
    ops = calloc(ncap, sizeof *ops);
    keys = calloc(n ? n : 1, sizeof *keys);
    rc = -ENOMEM;
    if (!cmps || !ops || !keys) goto out;
    size_t nc = 0, no = 0;
    /* the source: nothing added or changed below it since rev, nothing that
     * we copy deleted, its own value unchanged */
    cmps[nc] = (struct fs_cmp){FS_CMP_MOD_LE, s->dkey, s->dkl, send, sel, rev};
    nc++;
    for (size_t i = 0; i < n; i++) {
        cmps[nc] = (struct fs_cmp){FS_CMP_MOD_EQ, kvs[i].key, kvs[i].key_len,
                                   NULL,          0,          kvs[i].mod_revision};
        nc++;
    }
    cmps[nc] =
        (struct fs_cmp){FS_CMP_MOD_EQ, s->fkey, s->fkl, NULL, 0, have_v ? vkv.mod_revision : 0};
    nc++;
    /* the destination: still empty but for its marker, and no value */
    if (op->flags & RENAME_NOREPLACE)
        cmps[nc] = (struct fs_cmp){FS_CMP_ABSENT, d->dkey, d->dkl, dend, del, 0};
    else
        cmps[nc] = (struct fs_cmp){FS_CMP_ABSENT, dlo, dlo_l, dend, del, 0};
    nc++;
    cmps[nc] = (struct fs_cmp){FS_CMP_ABSENT, d->fkey, d->fkl, NULL, 0, 0};
    nc++;
    ops[no] = (struct fs_op){.type = FS_OP_DELETE, .key = d->dkey, .key_len = d->dkl};
    no++;
    for (size_t i = 0; i < n; i++) {
        size_t kl;
        keys[i] =
            fs__cat(d->dkey, d->dkl, kvs[i].key + s->dkl, kvs[i].key_len - s->dkl, NULL, 0, &kl);
        if (keys[i] == NULL) goto out;
        ops[no] = (struct fs_op){.type = FS_OP_PUT,
                                 .key = keys[i],
                                 .key_len = kl,
                                 .value = kvs[i].value,
                                 .value_len = kvs[i].value_len,
                                 .lease = kvs[i].lease,
                                 .mode = kvs[i].mode,
                                 .uid = kvs[i].uid,
                                 .gid = kvs[i].gid,
                                 .mtime_ns = kvs[i].mtime_ns};
        no++;
    }
    ops[no] = (struct fs_op){.type = FS_OP_DELETE_RANGE,
                             .key = s->dkey,
                             .key_len = s->dkl,
                             .range_end = send,
                             .range_end_len = sel};
    no++;
    if (have_v) {
        ops[no] = (struct fs_op){.type = FS_OP_PUT,
                                 .key = d->fkey,
                                 .key_len = d->fkl,
                                 .value = vkv.value,
                                 .value_len = vkv.value_len,
                                 .lease = vkv.lease,
                                 .mode = vkv.mode,
                                 .uid = vkv.uid,
                                 .gid = vkv.gid,
                                 .mtime_ns = vkv.mtime_ns};
        no++;
        ops[no] = (struct fs_op){.type = FS_OP_DELETE, .key = s->fkey, .key_len = s->fkl};
        no++;
    }
    if (s->dl != d->dl || memcmp(s->d, d->d, s->dl) != 0) {
        struct txn_b t = {0};
        rc = maybe_marker(fs, s, &t, fs__now_ns());
        if (rc < 0) goto out;
        if (t.no) ops[no++] = t.ops[0];
    }
    FS_ASSERT(nc <= ncap && no <= ncap);
    if (no > fs->opt.txn_ops_max) {
        rc = -EXDEV;
        goto out;
    }
    struct fs_txn txn = {cmps, nc, ops, no};
    rc = fs__submit(fs, op, &txn);
out:
    if (keys)
        for (size_t i = 0; i < n; i++) free(keys[i]);
    free(keys);
    free(cmps);
    free(ops);
    fs_kv_array_free(kvs, n);
    fs_kv_clear(&vkv);
    free(send);
    free(dend);
    free(dlo);
    return rc;
}

static void rename_start(struct op *op) {
    struct fs *fs = op->fs;
    struct fs_kv kv;
    int src = op->a.is_value ? 0 : fs__any_prefix(fs, op->a.dkey, op->a.dkl);
    int rc = src;
    if (src == 0) {
        int k = child_kind(fs, &op->a, &kv);
        fs_kv_clear(&kv);
        if (k == 0 && fs__ino_pending(fs, op->a.fkey, op->a.fkl, &kv)) {
            rename_pending(op);
            return;
        }
        rc = k < 0 ? k : k == 0 ? -ENOENT : 0;
    }
    if (rc < 0) {
        op_fail(op, rc);
        return;
    }
    op->is_dir = src > 0;
    int dst = child_kind(fs, &op->b, &kv);
    fs_kv_clear(&kv);
    if (dst < 0) {
        op_fail(op, dst);
        return;
    }
    rc = op->is_dir ? rename_dir(op, dst) : rename_file(op, dst);
    if (rc == 1) { /* renamed onto itself */
        fuse_reply_err(op->req, 0);
        fs__op_finish(op);
    } else if (rc < 0) {
        op_fail(op, rc);
    }
}

/* The source is a pending file: nothing is in the store yet, so the
 * rename only moves the name; the writer's put goes to the destination
 * (one put of the final name). A destination key stays visible with its
 * old value until that put replaces it. */
static void rename_pending(struct op *op) {
    struct fs *fs = op->fs;
    struct fs_kv kv;
    int dst = child_kind(fs, &op->b, &kv);
    fs_kv_clear(&kv);
    int rc = dst < 0 ? dst : 0;
    if (rc == 0 && dst == 2) rc = -EISDIR;
    if (rc == 0 && (op->flags & RENAME_NOREPLACE) &&
        (dst == 1 || fs__ino_pending(fs, op->b.fkey, op->b.fkl, &kv)))
        rc = -EEXIST;
    if (rc < 0) {
        op_fail(op, rc);
        return;
    }
    if (op->a.fkl == op->b.fkl && memcmp(op->a.fkey, op->b.fkey, op->a.fkl) == 0) {
        fuse_reply_err(op->req, 0);
        fs__op_finish(op);
        return;
    }
    fs__ino_rekey(fs, 0, op->a.fkey, op->a.fkl, op->b.fkey, op->b.fkl);
    /* the put replaces whatever the destination holds */
    fs__ino_pending_unexcl(fs, op->b.fkey, op->b.fkl);
    fuse_reply_err(op->req, 0);
    fs__op_finish(op);
}

static void rename_done(struct op *op) {
    struct fs *fs = op->fs;
    if (op->is_dir)
        fs__ino_rekey(fs, 1, op->a.dkey, op->a.dkl, op->b.dkey, op->b.dkl);
    else
        fs__ino_rekey(fs, 0, op->a.fkey, op->a.fkl, op->b.fkey, op->b.fkl);
    fuse_reply_err(op->req, 0);
    fs__op_finish(op);
}

/* ---- setattr ---- */

static void setattr_start(struct op *op);
static void setattr_done(struct op *op);

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi) {
    struct fs *fs = fs_of(req);
    struct inode *in = fs__ino(fs, ino);
    struct fh *fh = (fi && !in->is_dir) ? (struct fh *)(uintptr_t)fi->fh : NULL;
    int meta_bits = FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID |
                    FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW;
    if (fs__is_replay(fs, req)) to_set = 0; /* the store holds the result */
    if (in->is_dir && (to_set & FUSE_SET_ATTR_SIZE)) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    if (!in->is_dir && fh != NULL && (to_set & FUSE_SET_ATTR_SIZE)) {
        /* ftruncate on an open file: part of the handle's pending value */
        int rc = 0;
        pthread_mutex_lock(&fh->lock);
        if ((size_t)attr->st_size > fs->opt.value_bytes_max || attr->st_size < 0)
            rc = -EFBIG;
        else
            rc = fh_resize(fh, (size_t)attr->st_size);
        if (rc == 0) {
            fh->dirty = 1;
            fh->write_ns = fs__now_ns();
        }
        pthread_mutex_unlock(&fh->lock);
        if (rc < 0) {
            fuse_reply_err(req, -rc);
            return;
        }
        to_set &= ~FUSE_SET_ATTR_SIZE;
    }
    struct fs_kv pk;
    if (!in->is_dir && (to_set & (meta_bits | FUSE_SET_ATTR_SIZE)) &&
        fs__ino_pending_set(fs, in, attr, to_set, &pk)) {
        /* a pending file: its metadata goes with its first put (a size
         * change by path, without the writer's handle, is not applied) */
        struct stat st;
        if (fh != NULL) {
            pthread_mutex_lock(&fh->lock);
            pk.value_len = fh->len;
            pthread_mutex_unlock(&fh->lock);
        }
        fs__attr_of_kv(fs, ino, 0, &pk, &st);
        fuse_reply_attr(req, &st, secs(fs->opt.attr_timeout_ms));
        return;
    }
    if (!(to_set & (meta_bits | FUSE_SET_ATTR_SIZE))) { /* nothing for the store */
        struct stat st;
        int rc;
        if (in->is_dir) {
            size_t dl;
            char *d = fs__ino_key(fs, in, &dl);
            rc = d ? dir_attr(fs, ino, d, dl, in->is_root, &st) : -ENOMEM;
            free(d);
        } else {
            rc = file_attr(fs, ino, in, fh, &st);
        }
        if (rc < 0)
            fuse_reply_err(req, -rc);
        else
            fuse_reply_attr(req, &st, secs(fs->opt.attr_timeout_ms));
        return;
    }
    struct op *op = op_new(fs, req, OP_SETATTR);
    if (op == NULL) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    op->ino = in;
    op->attr = *attr;
    op->to_set = to_set;
    op->fh = fh;
    op->a.fkey = fs__ino_key(fs, in, &op->a.fkl);
    if (op->a.fkey == NULL) {
        op_fail(op, -ENOMEM);
        return;
    }
    setattr_start(op);
}

static void setattr_start(struct op *op) {
    struct fs *fs = op->fs;
    struct inode *in = op->ino;
    const char *k = op->a.fkey; /* a file key, or a directory prefix = its marker */
    size_t kl = op->a.fkl;
    struct fs_kv kv;
    int rc = get_key(fs, k, kl, &kv);
    if (rc < 0 && rc != -ENOENT) {
        op_fail(op, rc);
        return;
    }
    int have = rc == 0;
    if (in->is_dir) {
        if (kl == 0)
            rc = -EPERM; /* whole-key-space root: no key for a marker */
        else if (have && !S_ISDIR(kv.mode))
            rc = -EPERM; /* a visible "%empty" file */
        else if (!have && !in->is_root)
            rc = fs__any_prefix(fs, k, kl) > 0 ? 0 : -ENOENT;
        else
            rc = 0;
    } else if (!have) {
        rc = -ENOENT;
    }
    if (rc < 0) {
        fs_kv_clear(&kv);
        op_fail(op, rc);
        return;
    }
    int to_set = op->to_set;
    uint32_t mode = (have && kv.mode) ? kv.mode
                                      : (in->is_dir ? S_IFDIR | (fs->opt.dir_mode & 07777)
                                                    : S_IFREG | (fs->opt.file_mode & 07777));
    if (in->is_dir && !S_ISDIR(mode)) mode = S_IFDIR | (fs->opt.dir_mode & 07777);
    if (!in->is_dir) mode = (S_ISLNK(mode) ? S_IFLNK : S_IFREG) | (mode & 07777);
    uint32_t uid = (have && kv.mode) ? kv.uid : fs->opt.uid;
    uint32_t gid = (have && kv.mode) ? kv.gid : fs->opt.gid;
    int64_t mtime = (have && kv.mtime_ns) ? kv.mtime_ns : fs->start_ns;
    if (to_set & FUSE_SET_ATTR_MODE) mode = (mode & S_IFMT) | (op->attr.st_mode & 07777);
    if (to_set & FUSE_SET_ATTR_UID) uid = op->attr.st_uid;
    if (to_set & FUSE_SET_ATTR_GID) gid = op->attr.st_gid;
    if (to_set & FUSE_SET_ATTR_MTIME_NOW)
        mtime = fs__now_ns();
    else if (to_set & FUSE_SET_ATTR_MTIME)
        mtime = (int64_t)op->attr.st_mtim.tv_sec * 1000000000 + op->attr.st_mtim.tv_nsec;
    else if (to_set & FUSE_SET_ATTR_SIZE)
        mtime = fs__now_ns();
    free(op->value);
    op->value = have ? kv.value : NULL;
    op->value_len = have ? kv.value_len : 0;
    kv.value = NULL;
    if (to_set & FUSE_SET_ATTR_SIZE) {
        if (op->attr.st_size < 0 || (size_t)op->attr.st_size > fs->opt.value_bytes_max) {
            fs_kv_clear(&kv);
            op_fail(op, -EFBIG);
            return;
        }
        size_t ns = (size_t)op->attr.st_size;
        char *v = realloc(op->value, ns ? ns : 1);
        if (v == NULL) {
            fs_kv_clear(&kv);
            op_fail(op, -ENOMEM);
            return;
        }
        if (ns > op->value_len) memset(v + op->value_len, 0, ns - op->value_len);
        op->value = v;
        op->value_len = ns;
    }
    op->mode = mode;
    op->uid = uid;
    op->gid = gid;
    op->mtime_ns = mtime;
    if (have && kv.mode == mode && kv.uid == uid && kv.gid == gid && kv.mtime_ns == mtime &&
        !(to_set & FUSE_SET_ATTR_SIZE)) {
        /* changes nothing (vim and install chmod to the mode the file has):
         * no put, no revision, no event */
        fs_kv_clear(&kv);
        op->to_set &= ~(FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW);
        setattr_done(op);
        return;
    }
    struct txn_b t = {0};
    add_cmp(&t, FS_CMP_MOD_EQ, k, kl)->revision = have ? kv.mod_revision : 0;
    struct fs_op *o = add_op(&t, FS_OP_PUT, k, kl);
    o->value = op->value;
    o->value_len = op->value_len;
    o->lease = FS_LEASE_KEEP;
    o->mode = mode;
    o->uid = uid;
    o->gid = gid;
    o->mtime_ns = mtime;
    fs_kv_clear(&kv);
    rc = submit_b(fs, op, &t);
    if (rc < 0) op_fail(op, rc);
}

static void setattr_done(struct op *op) {
    struct fs *fs = op->fs;
    if (op->to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)) {
        pthread_mutex_lock(&fs->ino_lock);
        op->ino->meta_set_ns = fs__now_ns();
        pthread_mutex_unlock(&fs->ino_lock);
    }
    struct fs_kv kv = {0};
    kv.mode = op->mode;
    kv.uid = op->uid;
    kv.gid = op->gid;
    kv.mtime_ns = op->mtime_ns;
    kv.value_len = op->value_len;
    if (op->fh != NULL && !op->ino->is_dir) {
        pthread_mutex_lock(&op->fh->lock);
        if (op->fh->dirty) kv.value_len = op->fh->len;
        pthread_mutex_unlock(&op->fh->lock);
    }
    struct stat st;
    fs__attr_of_kv(fs, fs__ino_num(fs, op->ino), op->ino->is_dir, &kv, &st);
    fuse_reply_attr(op->req, &st, secs(fs->opt.attr_timeout_ms));
    fs__op_finish(op);
}

/* ---- open files ---- */

static void open_body(fuse_req_t req, struct inode *in, struct fuse_file_info *fi);

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    struct fs *fs = fs_of(req);
    struct inode *in = fs__ino(fs, ino);
    if (in->is_dir) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    if (fs->opt.linearizable_open && !fs__is_replay(fs, req)) {
        /* a read point: the completion thread opens once the barrier is
         * passed (fs__op_again), no worker waits for it */
        struct op *op = op_new(fs, req, OP_OPEN);
        if (op == NULL) {
            fuse_reply_err(req, ENOMEM);
            return;
        }
        op->ino = in;
        op->fi = *fi;
        int rc = fs__barrier(fs, op);
        if (rc < 0) op_fail(op, rc);
        return;
    }
    open_body(req, in, fi);
}

/* Opens the file of inode in from the store's current state and replies. */
static void open_body(fuse_req_t req, struct inode *in, struct fuse_file_info *fi) {
    struct fs *fs = fs_of(req);
    size_t kl;
    char *k = fs__ino_key(fs, in, &kl);
    if (k == NULL) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    struct fs_kv kv;
    int rc = get_key(fs, k, kl, &kv);
    if (rc == -ENOENT && fs__ino_pending(fs, k, kl, &kv)) rc = 0; /* empty until put */
    free(k);
    if (rc < 0) {
        fuse_reply_err(req, -rc);
        return;
    }
    struct fh *fh = fh_new(fs, in);
    if (fh == NULL) {
        fs_kv_clear(&kv);
        fuse_reply_err(req, ENOMEM);
        return;
    }
    int acc = fi->flags & O_ACCMODE;
    int trunc = acc != O_RDONLY && (fi->flags & O_TRUNC);
    if (trunc) {
        fh->dirty = FH_DIRTY_TRUNC;
        fh->write_ns = fs__now_ns();
    } else {
        fh->buf = kv.value;
        fh->len = fh->cap = kv.value_len;
        kv.value = NULL;
    }
    fh->append = (fi->flags & O_APPEND) != 0;
    fh->opener = req_tgid(req);
    if (fs__is_replay(fs, req)) {
        fh->replay = 1;
        fh->dirty = 0;
        fi->direct_io = 1;
        trunc = 1; /* the page cache is dropped at the next open */
    }
    fh->mode = kv.mode ? kv.mode : S_IFREG | fs->opt.file_mode;
    fh->uid = kv.mode ? kv.uid : fs->opt.uid;
    fh->gid = kv.mode ? kv.gid : fs->opt.gid;
    /* Whole reads: every read(2) of this open file is served from the
     * version fh holds, never from the page cache, whose size the kernel
     * may have taken from another version's attributes (a read cut to the
     * old length, or old bytes past the new end). Private mmap and exec
     * still work; shared writable mmap does not (ENODEV). fstat(2) is not
     * tied to the handle: the kernel sends GETATTR for it without the file
     * handle (fuse_getattr), so it shows the key's current size. */
    (void)trunc;
    fi->direct_io = 1;
    fs_kv_clear(&kv);
    fi->fh = (uint64_t)(uintptr_t)fh;
    fi->keep_cache = 0;
    if (fuse_reply_open(req, fi) != 0) fh_free(fh);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi) {
    (void)ino;
    struct fh *fh = (struct fh *)(uintptr_t)fi->fh;
    pthread_mutex_lock(&fh->lock);
    if (off < 0 || (size_t)off >= fh->len)
        fuse_reply_buf(req, NULL, 0);
    else
        fuse_reply_buf(req, fh->buf + off,
                       fh->len - (size_t)off < size ? fh->len - (size_t)off : size);
    pthread_mutex_unlock(&fh->lock);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi) {
    (void)ino;
    struct fs *fs = fs_of(req);
    struct fh *fh = (struct fh *)(uintptr_t)fi->fh;
    int rc = 0;
    if (fh->replay) { /* counted, not kept */
        fuse_reply_write(req, size);
        return;
    }
    pthread_mutex_lock(&fh->lock);
    size_t pos = fh->append ? fh->len : (size_t)off;
    if (off < 0 || pos > fs->opt.value_bytes_max || size > fs->opt.value_bytes_max - pos) {
        rc = -EFBIG;
        /* The value can no longer be what the writer meant: put nothing. */
        fh->failed = EFBIG;
        fh->dirty = 0;
    } else if (fh->failed) {
        rc = -fh->failed;
    } else {
        size_t end = pos + size;
        if (end > fh->len) rc = fh_resize(fh, end);
        if (rc == 0) {
            memcpy(fh->buf + pos, buf, size);
            fh->dirty = 1;
            fh->write_ns = fs__now_ns();
        }
    }
    pthread_mutex_unlock(&fh->lock);
    if (rc < 0)
        fuse_reply_err(req, -rc);
    else
        fuse_reply_write(req, size);
}

/*
 * When a handle is put. The value written through one open file
 * description is put once, whole, when its writer is done:
 *   - flush (every close(2) of a descriptor of it): only on the opener's
 *     last close: the closing process is the one that opened it (its
 *     thread group, read from /proc, since the pid of a request is the
 *     calling thread's) and it holds no other descriptor of the file
 *     (other_fd_open). A child that inherited the descriptor and exits
 *     puts nothing; neither does the descriptor bash closes right after
 *     dup2-ing it to stdout. close(2) reports the put's error.
 *   - fsync: whenever anything is unput, and reports the error.
 *   - release (the last close of the description, sent by the kernel
 *     without waiting for the answer): whatever is still unput, so nothing
 *     written is lost when the opener closed before a child wrote; its
 *     error reaches no one.
 * "Unput" is: data written or a truncation since the last put, or a file
 * created by this handle and not put yet (an empty new file is put too).
 * A put whose bytes equal the last applied put of the handle is not sent
 * (fsync then close is one put). The first put of a file created with
 * O_EXCL compares "key absent" (EEXIST if someone else created it).
 * Returns 1 when submitted (op completes the reply), 0 when there was
 * nothing to put, or -errno.
 */
static int put_handle(struct fs *fs, struct op *op, struct fh *fh) {
    pid_t closer = op->kind == OP_FLUSH ? req_tgid(op->req) : 0;
    pthread_mutex_lock(&fh->lock);
    if (fh->replay) {
        pthread_mutex_unlock(&fh->lock);
        return 0;
    }
    if (fh->failed) {
        int err = fh->failed;
        pthread_mutex_unlock(&fh->lock);
        return op->kind == OP_RELEASE ? 0 : -err;
    }
    int first = fh->creating && !fh->put_once;
    int want = fh->dirty || first;
    if (want && op->kind == OP_FLUSH) {
        int opener = fh->opener == 0 || closer == 0 || closer == fh->opener;
        want = opener && !other_fd_open(closer, fs__ino_num(fs, fh->ino));
    }
    if (!want) {
        pthread_mutex_unlock(&fh->lock);
        return 0;
    }
    unsigned char sha[32];
    fs__sha256(fh->buf, fh->len, sha);
    if (!first && fh->have_last && fh->last_len == fh->len &&
        memcmp(fh->last_sha, sha, sizeof sha) == 0) { /* already put */
        fh->dirty = 0;
        pthread_mutex_unlock(&fh->lock);
        return 0;
    }
    struct inode *in = fh->ino;
    size_t kl;
    char *k = fs__ino_key(fs, in, &kl);
    pthread_mutex_lock(&fs->ino_lock);
    int linked = in->linked;
    int64_t meta_set = in->meta_set_ns;
    int excl = in->pexcl;
    struct fs_kv pk = {0};
    pk.mode = in->pmode;
    pk.uid = in->puid;
    pk.gid = in->pgid;
    pk.mtime_ns = in->pmtime_ns;
    pthread_mutex_unlock(&fs->ino_lock);
    if (!linked) { /* unlinked (or replaced) through this mount: data has no name */
        fh->dirty = 0;
        pthread_mutex_unlock(&fh->lock);
        free(k);
        return 0;
    }
    if (k == NULL) {
        pthread_mutex_unlock(&fh->lock);
        return -ENOMEM;
    }
    /* Current metadata wins: a chmod/chown/utimens made while the file was
     * open must survive this put (cp -p sets them before close). */
    struct fs_kv kv;
    int rc = 0;
    if (first) {
        kv = pk;
    } else {
        rc = fs__stat_key(fs, k, kl, &kv);
    }
    int have = rc == 0 && kv.mode != 0;
    struct txn_b t = {0};
    if (first && excl) add_cmp(&t, FS_CMP_ABSENT, k, kl);
    struct fs_op *o = add_op(&t, FS_OP_PUT, k, kl);
    o->value = fh->buf;
    o->value_len = fh->len;
    o->lease = FS_LEASE_KEEP;
    o->mode = have ? S_IFREG | (kv.mode & 07777) : fh->mode;
    o->uid = have ? kv.uid : fh->uid;
    o->gid = have ? kv.gid : fh->gid;
    o->mtime_ns = (rc == 0 && meta_set > fh->write_ns && kv.mtime_ns) ? kv.mtime_ns : fh->write_ns;
    fs_kv_clear(&kv);
    fh->dirty = 0;
    op->fh = fh;
    op->put_first = first;
    op->put_len = fh->len;
    memcpy(op->put_sha, sha, sizeof sha);
    if (op->kind == OP_RELEASE) {
        /* Nothing else uses a released handle, and done_cb frees it, maybe
         * before submit returns: let go of it first. */
        pthread_mutex_unlock(&fh->lock);
        rc = submit_b(fs, op, &t);
    } else {
        /* Writers through other descriptors of this open file wait until
         * the backend copied the buffer. */
        rc = submit_b(fs, op, &t);
        if (rc < 0) fh->dirty = 1;
        pthread_mutex_unlock(&fh->lock);
    }
    free(k);
    return rc < 0 ? rc : 1;
}

static void flush_like(fuse_req_t req, struct fuse_file_info *fi, enum op_kind kind) {
    struct fs *fs = fs_of(req);
    struct fh *fh = (struct fh *)(uintptr_t)fi->fh;
    struct op *op = op_new(fs, req, kind);
    if (op == NULL) {
        if (kind == OP_RELEASE) fh_free(fh);
        fuse_reply_err(req, ENOMEM);
        return;
    }
    if (kind == OP_RELEASE) op->fh = fh;
    int rc = put_handle(fs, op, fh);
    if (rc == 1) return;
    if (kind == OP_RELEASE) fh_free(fh);
    fuse_reply_err(req, rc < 0 ? -rc : 0);
    fs__op_finish(op);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino;
    flush_like(req, fi, OP_FLUSH);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
    (void)ino;
    (void)datasync;
    flush_like(req, fi, OP_FSYNC);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino;
    flush_like(req, fi, OP_RELEASE);
}

/* ---- directories ---- */

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    struct fs *fs = fs_of(req);
    struct inode *in = fs__ino(fs, ino);
    if (!in->is_dir) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    struct dh *dh = calloc(1, sizeof *dh);
    if (dh == NULL) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    pthread_mutex_init(&dh->lock, NULL);
    dh->ino = in;
    fs__handle_add(fs, &dh->h, 1);
    fi->fh = (uint64_t)(uintptr_t)dh;
    if (fuse_reply_open(req, fi) != 0) {
        fs__handle_del(&dh->h);
        fs__handle_destroy(&dh->h);
    }
}

static void dh_truncate(struct dh *dh, size_t keep) {
    for (size_t i = keep; i < dh->n; i++) {
        dh->bytes -= dh->lens[i];
        free(dh->names[i]);
    }
    if (keep < dh->n) dh->n = keep;
}

static int dh_push(struct dh *dh, char *name, size_t nl) {
    if (dh->n == dh->cap) {
        size_t cap = dh->cap ? dh->cap * 2 : 64;
        char **nn = realloc(dh->names, cap * sizeof *nn);
        if (nn == NULL) return -ENOMEM;
        dh->names = nn;
        size_t *ln = realloc(dh->lens, cap * sizeof *ln);
        if (ln == NULL) return -ENOMEM;
        dh->lens = ln;
        dh->cap = cap;
    }
    dh->names[dh->n] = name;
    dh->lens[dh->n] = nl;
    dh->n++;
    dh->bytes += nl;
    if (dh->bytes > FS__DIR_NAMES_BYTES_MAX && dh->n > 2) {
        /* Forget the older half: seeking back there is then EINVAL. */
        size_t h = dh->n / 2;
        for (size_t i = 0; i < h; i++) {
            dh->bytes -= dh->lens[i];
            free(dh->names[i]);
        }
        memmove(dh->names, dh->names + h, (dh->n - h) * sizeof *dh->names);
        memmove(dh->lens, dh->lens + h, (dh->n - h) * sizeof *dh->lens);
        dh->n -= h;
        dh->base += h;
    }
    return 0;
}

static size_t add_entry(fuse_req_t req, char *buf, size_t room, const char *name, mode_t type,
                        fuse_ino_t ino, off_t next) {
    struct stat st;
    memset(&st, 0, sizeof st);
    st.st_ino = ino;
    st.st_mode = type;
    return fuse_add_direntry(req, buf, room, name, &st, next);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi) {
    struct fs *fs = fs_of(req);
    struct dh *dh = (struct dh *)(uintptr_t)fi->fh;
    struct inode *in = fs__ino(fs, ino);
    size_t dl;
    char *d = fs__ino_key(fs, in, &dl);
    char *buf = malloc(size ? size : 1);
    int rc = 0;
    size_t pos = 0;
    if (d == NULL || buf == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    pthread_mutex_lock(&dh->lock);
    const char *after = NULL;
    size_t afl = 0;
    if (off < FS__DIR_OFF_DOT) {
        size_t l = add_entry(req, buf + pos, size - pos, ".", S_IFDIR, ino, FS__DIR_OFF_DOT);
        if (l > size - pos) goto unlock;
        pos += l;
    }
    if (off < FS__DIR_OFF_DOTDOT) {
        size_t l =
            add_entry(req, buf + pos, size - pos, "..", S_IFDIR, UNKNOWN_INO, FS__DIR_OFF_DOTDOT);
        if (l > size - pos) goto unlock;
        pos += l;
    }
    if (off < FS__DIR_OFF_VALUE) {
        size_t vl;
        struct fs_kv kv;
        if (value_key_of(fs, d, dl, &vl) && fs__stat_key(fs, d, vl, &kv) == 0) {
            fs_kv_clear(&kv);
            fuse_ino_t vi = fs__ino_peek(fs, 0, d, vl);
            size_t l = add_entry(req, buf + pos, size - pos, FS__NAME_VALUE, 0,
                                 vi ? vi : UNKNOWN_INO, FS__DIR_OFF_VALUE);
            if (l > size - pos) goto unlock;
            pos += l;
        }
    }
    if (off < FS__DIR_OFF_FIRST) {
        dh_truncate(dh, 0);
        dh->base = 0;
        dh->at_end = 0;
    } else {
        uint64_t j = (uint64_t)off - FS__DIR_OFF_FIRST; /* index of the last entry seen */
        if (j < dh->base) {
            rc = -EINVAL;
            goto unlock;
        }
        size_t i = (size_t)(j - dh->base);
        if (i >= dh->n) i = dh->n ? dh->n - 1 : 0; /* an offset from a discarded future */
        if (dh->n) {
            dh_truncate(dh, i + 1);
            after = dh->names[i];
            afl = dh->lens[i];
        }
    }
    for (;;) {
        char *m;
        size_t ml;
        int is_dir;
        int r = fs__next_child(fs, d, dl, after, afl, &m, &ml, &is_dir);
        if (r < 0) {
            if (pos == 0) rc = r;
            break;
        }
        if (r == 0) break;
        char enc[FS_NAME_MAX + 1];
        fs_name_encode(m, ml, enc, sizeof enc);
        size_t ckl;
        char *ck = fs__cat(d, dl, m, ml, is_dir ? "/" : NULL, is_dir ? 1 : 0, &ckl);
        fuse_ino_t ci = ck ? fs__ino_peek(fs, is_dir, ck, ckl) : 0;
        free(ck);
        off_t next = (off_t)(FS__DIR_OFF_FIRST + dh->base + dh->n);
        /* a file's type is left unknown (DT_UNKNOWN): it may be a symlink,
         * which only its metadata tells; find and ls then stat it */
        size_t l = add_entry(req, buf + pos, size - pos, enc, is_dir ? S_IFDIR : 0,
                             ci ? ci : UNKNOWN_INO, next);
        if (l > size - pos) {
            free(m);
            break;
        }
        if (dh_push(dh, m, ml) < 0) {
            free(m);
            if (pos == 0) rc = -ENOMEM;
            break;
        }
        pos += l;
        after = dh->names[dh->n - 1];
        afl = dh->lens[dh->n - 1];
    }
unlock:
    pthread_mutex_unlock(&dh->lock);
out:
    if (rc < 0)
        fuse_reply_err(req, -rc);
    else
        fuse_reply_buf(req, buf, pos);
    free(buf);
    free(d);
}

void fs__handle_destroy(struct hnode *h) {
    if (!h->is_dir) {
        fh_destroy((struct fh *)h);
        return;
    }
    struct dh *dh = (struct dh *)h;
    dh_truncate(dh, 0);
    free(dh->names);
    free(dh->lens);
    pthread_mutex_destroy(&dh->lock);
    free(dh);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino;
    struct dh *dh = (struct dh *)(uintptr_t)fi->fh;
    fs__handle_del(&dh->h);
    fs__handle_destroy(&dh->h);
    fuse_reply_err(req, 0);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
    (void)ino;
    (void)datasync;
    (void)fi;
    fuse_reply_err(req, 0); /* every change is durable once acknowledged */
}

/* ---- statfs, xattrs, links ---- */

static void op_statfs(fuse_req_t req, fuse_ino_t ino) {
    (void)ino;
    struct fs *fs = fs_of(req);
    struct statvfs sv;
    memset(&sv, 0, sizeof sv);
    uint64_t used = 0, quota = 0;
    if (fs->be.usage) fs->be.usage(fs->be.data, &used, &quota);
    uint64_t blocks = quota ? quota / STATFS_BLOCK : STATFS_BLOCKS_NO_QUOTA;
    uint64_t ub = (used + STATFS_BLOCK - 1) / STATFS_BLOCK;
    sv.f_bsize = STATFS_BLOCK;
    sv.f_frsize = STATFS_BLOCK;
    sv.f_blocks = blocks;
    sv.f_bfree = ub < blocks ? blocks - ub : 0;
    sv.f_bavail = sv.f_bfree;
    sv.f_files = UINT32_MAX;
    sv.f_ffree = UINT32_MAX;
    sv.f_favail = UINT32_MAX;
    sv.f_namemax = FS_NAME_MAX;
    fuse_reply_statfs(req, &sv);
}

#define XATTR_PREFIX "user.quorumfs."
static const char *const file_xattrs[] = {XATTR_PREFIX "create_revision",
                                          XATTR_PREFIX "mod_revision", XATTR_PREFIX "version",
                                          XATTR_PREFIX "lease"};
static const char dir_xattr[] = XATTR_PREFIX "revision";
/* On the mount root only, when the backend tells (client mounts). */
static const char root_xattr_connected[] = XATTR_PREFIX "connected";

static void reply_xattr_value(fuse_req_t req, size_t size, const char *v, size_t vl) {
    if (size == 0)
        fuse_reply_xattr(req, vl);
    else if (size < vl)
        fuse_reply_err(req, ERANGE);
    else
        fuse_reply_buf(req, v, vl);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
    struct fs *fs = fs_of(req);
    struct inode *in = fs__ino(fs, ino);
    char v[32];
    int64_t x = 0;
    if (in->is_dir && ino == FUSE_ROOT_ID && fs->be.connected &&
        strcmp(name, root_xattr_connected) == 0) {
        x = fs->be.connected(fs->be.data) ? 1 : 0;
    } else if (in->is_dir) {
        if (strcmp(name, dir_xattr) != 0) {
            fuse_reply_err(req, ENODATA);
            return;
        }
        int rc = fs->be.revision(fs->be.data, &x);
        if (rc < 0) {
            fuse_reply_err(req, -rc);
            return;
        }
    } else {
        int which = -1;
        for (int i = 0; i < 4; i++)
            if (strcmp(name, file_xattrs[i]) == 0) which = i;
        if (which < 0) {
            fuse_reply_err(req, ENODATA);
            return;
        }
        size_t kl;
        char *k = fs__ino_key(fs, in, &kl);
        struct fs_kv kv;
        int rc = k ? fs__stat_key(fs, k, kl, &kv) : -ENOMEM;
        free(k);
        if (rc < 0) {
            fuse_reply_err(req, -rc);
            return;
        }
        int64_t f[4] = {kv.create_revision, kv.mod_revision, kv.version, kv.lease};
        x = f[which];
        fs_kv_clear(&kv);
    }
    int n = snprintf(v, sizeof v, "%lld", (long long)x);
    reply_xattr_value(req, size, v, (size_t)n);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
    struct fs *fs = fs_of(req);
    struct inode *in = fs__ino(fs, ino);
    char list[256];
    size_t n = 0;
    if (in->is_dir) {
        memcpy(list, dir_xattr, sizeof dir_xattr);
        n = sizeof dir_xattr;
        if (ino == FUSE_ROOT_ID && fs->be.connected) {
            memcpy(list + n, root_xattr_connected, sizeof root_xattr_connected);
            n += sizeof root_xattr_connected;
        }
    } else {
        for (int i = 0; i < 4; i++) {
            size_t l = strlen(file_xattrs[i]) + 1;
            memcpy(list + n, file_xattrs[i], l);
            n += l;
        }
    }
    reply_xattr_value(req, size, list, n);
}

/* Extended attributes are computed from the store; none can be set. ENOTSUP
 * (not EPERM) so that cp -a and rsync -X skip them quietly. */
static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                        size_t size, int flags) {
    (void)ino;
    (void)name;
    (void)value;
    (void)size;
    (void)flags;
    fuse_reply_err(req, ENOTSUP);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name) {
    (void)ino;
    (void)name;
    fuse_reply_err(req, ENOTSUP);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname) {
    (void)ino;
    (void)newparent;
    (void)newname;
    fuse_reply_err(req, EPERM); /* a key has one name */
}

/* A symlink is a key whose metadata mode is S_IFLNK|0777 and whose value is
 * the target (cp -a, rsync -a and tar keep links as links). */
static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name) {
    make_file(req, parent, name, S_IFLNK | 0777, NULL, link);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino) {
    struct fs *fs = fs_of(req);
    struct inode *in = fs__ino(fs, ino);
    size_t kl;
    char *k = fs__ino_key(fs, in, &kl);
    struct fs_kv kv;
    int rc = k ? get_key(fs, k, kl, &kv) : -ENOMEM;
    free(k);
    if (rc == 0 && !S_ISLNK(kv.mode)) rc = -EINVAL;
    char *t = NULL;
    if (rc == 0) {
        size_t tl;
        t = fs__cat(kv.value ? kv.value : "", kv.value_len, NULL, 0, NULL, 0, &tl);
        if (t == NULL) rc = -ENOMEM;
    }
    if (rc == 0) fs_kv_clear(&kv);
    if (rc < 0)
        fuse_reply_err(req, -rc);
    else
        fuse_reply_readlink(req, t);
    free(t);
}

static void op_init(void *userdata, struct fuse_conn_info *conn) {
    (void)userdata;
    /* open(O_TRUNC) arrives as one open, so "echo v > f" is one put at close
     * rather than an empty put from a separate truncate first. */
    if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
    conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
    /* The workers read the device non-blocking with read(2) (fs.c). */
    conn->want &= ~(unsigned)(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
}

/* ---- completion ---- */

/* A handle's put was applied (or its "absent" compare failed: EEXIST, and
 * nothing more of the handle is put). */
static void put_done(struct op *op) {
    struct fh *fh = op->fh;
    int rc = op->put_first && !op->res.succeeded ? -EEXIST : 0;
    pthread_mutex_lock(&fh->lock);
    if (rc == 0) {
        fh->put_once = 1;
        fh->have_last = 1;
        fh->last_len = op->put_len;
        memcpy(fh->last_sha, op->put_sha, sizeof fh->last_sha);
    } else {
        fh->failed = -rc;
        fh->dirty = 0;
    }
    pthread_mutex_unlock(&fh->lock);
    if (op->put_first) fh_unpend(fh, rc == 0);
    if (op->kind == OP_RELEASE) fh_free(fh);
    fuse_reply_err(op->req, -rc);
    fs__op_finish(op);
}

void fs__op_done(void *arg, int err, const struct fs_txn_result *res) {
    struct op *op = arg;
    op->err = err;
    if (res) op->res = *res;
    if (err != 0) {
        if (op->kind == OP_RENAME && op->is_dir && err == -EFBIG) err = -EXDEV;
        if ((op->kind == OP_FLUSH || op->kind == OP_FSYNC) && op->fh && op->put_first) {
            /* a created file whose first put failed stays unput: nothing
             * later of this handle may put it behind the error's back */
            pthread_mutex_lock(&op->fh->lock);
            op->fh->failed = -err;
            pthread_mutex_unlock(&op->fh->lock);
        }
        if (op->kind == OP_RELEASE) fh_free(op->fh);
        if (op->kind == OP_CREATE) fh_free(op->fh);
        op_fail(op, err);
        return;
    }
    switch (op->kind) {
    case OP_CREATE:
    case OP_MKNOD:
        if (op->res.succeeded) {
            struct fs_kv kv = {0};
            kv.mode = op->mode;
            kv.uid = op->uid;
            kv.gid = op->gid;
            kv.mtime_ns = op->mtime_ns;
            kv.value_len = op->value_len;
            reply_created(op, &kv, op->res.revision);
        } else if (op->kind == OP_MKNOD || (op->flags & O_EXCL)) {
            fh_free(op->fh);
            op_fail(op, -EEXIST);
        } else {
            fs__work_push(op->fs, op);
        }
        return;
    case OP_MKDIR:
        if (op->res.succeeded)
            mkdir_done(op);
        else
            op_fail(op, -EEXIST);
        return;
    case OP_UNLINK:
        if (!op->res.succeeded) {
            op_fail(op, -ENOENT);
            return;
        }
        fs__ino_detach(op->fs, 0, op->a.fkey, op->a.fkl);
        fuse_reply_err(op->req, 0);
        fs__op_finish(op);
        return;
    case OP_RMDIR:
        if (!op->res.succeeded) {
            op_fail(op, -ENOTEMPTY);
            return;
        }
        fs__ino_detach(op->fs, 1, op->a.dkey, op->a.dkl);
        fuse_reply_err(op->req, 0);
        fs__op_finish(op);
        return;
    case OP_RENAME:
        if (op->res.succeeded)
            rename_done(op);
        else
            fs__work_push(op->fs, op);
        return;
    case OP_SETATTR:
        if (op->res.succeeded)
            setattr_done(op);
        else
            fs__work_push(op->fs, op);
        return;
    case OP_OPEN: /* the barrier is passed: read on the completion thread */
        fs__work_push(op->fs, op);
        return;
    case OP_FLUSH:
    case OP_FSYNC:
    case OP_RELEASE:
        put_done(op);
        return;
    }
    FS_ASSERT(!"unknown op kind");
}

void fs__op_again(struct op *op) {
    if (++op->retries > FS__RETRIES_MAX) {
        if (op->kind == OP_CREATE) fh_free(op->fh);
        op_fail(op, op->kind == OP_RENAME ? -EBUSY : -EIO);
        return;
    }
    switch (op->kind) {
    case OP_CREATE:
        create_open_existing(op);
        return;
    case OP_RENAME:
        rename_start(op);
        return;
    case OP_SETATTR:
        setattr_start(op);
        return;
    case OP_OPEN:
        open_body(op->req, op->ino, &op->fi);
        fs__op_finish(op);
        return;
    default:
        FS_ASSERT(!"op kind has no second round");
    }
}

const struct fuse_lowlevel_ops fs__ops = {
    .init = op_init,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .mknod = op_mknod,
    .mkdir = op_mkdir,
    .unlink = op_unlink,
    .rmdir = op_rmdir,
    .symlink = op_symlink,
    .readlink = op_readlink,
    .rename = op_rename,
    .link = op_link,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .flush = op_flush,
    .release = op_release,
    .fsync = op_fsync,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .releasedir = op_releasedir,
    .fsyncdir = op_fsyncdir,
    .statfs = op_statfs,
    .setxattr = op_setxattr,
    .getxattr = op_getxattr,
    .listxattr = op_listxattr,
    .removexattr = op_removexattr,
    .create = op_create,
};
