/*
 * fs.c - the fs object's life cycle, its inode table, the helpers that
 * walk the key space, and the threads fs owns while mounted:
 *
 *   workers (opt.threads_max): poll the FUSE device (non-blocking) and the
 *     stop eventfd, and hand each request to libfuse's decoder, which calls
 *     the handlers of ops.c;
 *   invalidation thread: turns fs_notify_change() into the kernel's
 *     notify_inval_inode/_entry. Those calls take kernel inode locks that a
 *     request in flight may hold until fs replies, so they run on this
 *     thread only: never in a FUSE handler, in done_cb or in the node loop.
 *   completion thread: continues the operations whose first transaction
 *     came back with a failed compare (re-read, re-submit), so that done_cb,
 *     which runs on the node loop, never calls back into the backend.
 *
 * fs_run mounts, starts the threads, joins the workers when they stop,
 * and on the way out waits for every submitted transaction to come back
 * (in_flight == 0) before it unmounts and destroys the session: a done_cb
 * that arrived later would reply through a freed session.
 */
#define _GNU_SOURCE
#include "fs/fs_core.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void fs__assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "%s:%d: assertion failed: %s\n", file, line, expr);
    abort();
}

const char *fs_strerror(int rc) {
    if (rc == 0) return "success";
#define FS__ERR_TEXT(name, value, text)                                                            \
    if (rc == (value)) return text;
    FS_ERRORS(FS__ERR_TEXT)
#undef FS__ERR_TEXT
    if (rc < 0 && rc > -4000) return strerror(-rc);
    return "unknown error";
}

void fs_kv_clear(struct fs_kv *kv) {
    if (kv == NULL) return;
    free(kv->key);
    free(kv->value);
    memset(kv, 0, sizeof *kv);
}

void fs_kv_array_free(struct fs_kv *kvs, size_t n) {
    if (kvs == NULL) return;
    for (size_t i = 0; i < n; i++) fs_kv_clear(&kvs[i]);
    free(kvs);
}

int64_t fs__now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void fs_options_init(struct fs_options *opt) {
    FS_ASSERT(opt != NULL);
    memset(opt, 0, sizeof *opt);
    opt->prefix = "/";
    opt->entry_timeout_ms = FS_TIMEOUT_MS_DEFAULT;
    opt->attr_timeout_ms = FS_TIMEOUT_MS_DEFAULT;
    opt->value_bytes_max = FS_VALUE_BYTES_MAX_DEFAULT;
    opt->txn_ops_max = FS_TXN_OPS_MAX_DEFAULT;
    opt->uid = (uint32_t)getuid();
    opt->gid = (uint32_t)getgid();
    opt->allow_other = geteuid() == 0;
    opt->file_mode = 0644;
    opt->dir_mode = 0755;
    opt->threads_max = FS_THREADS_MAX_DEFAULT;
    opt->default_permissions = 1;
    opt->fsname = "quorumfs";
    opt->replay = 1;
}

const char *fs_errmsg(const struct fs *fs) {
    return fs ? fs->errmsg : "";
}

/* ---- inode table ---- */

#define FS__BUCKETS_MIN 1024u

static uint64_t key_hash(int is_dir, const char *k, size_t n) {
    uint64_t h = 1469598103934665603ull ^ (uint64_t)is_dir;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)k[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static struct inode **bucket_of(struct fs *fs, uint64_t h) {
    return &fs->buckets[h & (fs->nbuckets - 1)];
}

static struct inode *table_find(struct fs *fs, int is_dir, const char *k, size_t n, uint64_t h) {
    if (is_dir && n == fs->root.key_len && memcmp(k, fs->root.key, n) == 0)
        return &fs->root; /* the root lives outside the table */
    for (struct inode *in = *bucket_of(fs, h); in; in = in->hnext)
        if (in->hash == h && in->is_dir == is_dir && in->key_len == n && memcmp(in->key, k, n) == 0)
            return in;
    return NULL;
}

static void table_insert(struct fs *fs, struct inode *in) {
    if (fs->count + 1 > fs->nbuckets) {
        size_t nb = fs->nbuckets * 2;
        struct inode **b = calloc(nb, sizeof *b);
        if (b != NULL) { /* otherwise keep the longer chains */
            for (size_t i = 0; i < fs->nbuckets; i++) {
                struct inode *x = fs->buckets[i];
                while (x) {
                    struct inode *nx = x->hnext;
                    x->hnext = b[x->hash & (nb - 1)];
                    b[x->hash & (nb - 1)] = x;
                    x = nx;
                }
            }
            free(fs->buckets);
            fs->buckets = b;
            fs->nbuckets = nb;
        }
    }
    struct inode **b = bucket_of(fs, in->hash);
    in->hnext = *b;
    *b = in;
    in->linked = 1;
    fs->count++;
}

static void table_remove(struct fs *fs, struct inode *in) {
    FS_ASSERT(in->linked);
    for (struct inode **p = bucket_of(fs, in->hash); *p; p = &(*p)->hnext) {
        if (*p == in) {
            *p = in->hnext;
            in->hnext = NULL;
            in->linked = 0;
            fs->count--;
            return;
        }
    }
    FS_ASSERT(!"inode missing from its bucket");
}

struct inode *fs__ino(struct fs *fs, fuse_ino_t ino) {
    if (ino == FUSE_ROOT_ID) return &fs->root;
    return (struct inode *)(uintptr_t)ino;
}

fuse_ino_t fs__ino_num(struct fs *fs, struct inode *in) {
    if (in == &fs->root) return FUSE_ROOT_ID;
    return (fuse_ino_t)(uintptr_t)in;
}

struct inode *fs__ino_ref(struct fs *fs, int is_dir, const char *key, size_t key_len) {
    uint64_t h = key_hash(is_dir, key, key_len);
    pthread_mutex_lock(&fs->ino_lock);
    struct inode *in = table_find(fs, is_dir, key, key_len, h);
    if (in == NULL) {
        in = calloc(1, sizeof *in);
        char *k = malloc(key_len ? key_len : 1);
        if (in == NULL || k == NULL) {
            free(in);
            free(k);
            pthread_mutex_unlock(&fs->ino_lock);
            return NULL;
        }
        memcpy(k, key, key_len);
        in->key = k;
        in->key_len = key_len;
        in->is_dir = is_dir;
        in->hash = h;
        table_insert(fs, in);
        in->all_next = fs->all_inodes.all_next;
        in->all_prev = &fs->all_inodes;
        in->all_next->all_prev = in;
        fs->all_inodes.all_next = in;
    }
    in->nlookup++;
    pthread_mutex_unlock(&fs->ino_lock);
    return in;
}

fuse_ino_t fs__ino_peek(struct fs *fs, int is_dir, const char *key, size_t key_len) {
    uint64_t h = key_hash(is_dir, key, key_len);
    pthread_mutex_lock(&fs->ino_lock);
    struct inode *in = table_find(fs, is_dir, key, key_len, h);
    fuse_ino_t r = in ? fs__ino_num(fs, in) : 0;
    pthread_mutex_unlock(&fs->ino_lock);
    return r;
}

void fs__ino_forget(struct fs *fs, struct inode *in, uint64_t n) {
    if (in == &fs->root) return;
    pthread_mutex_lock(&fs->ino_lock);
    FS_ASSERT(in->nlookup >= n);
    in->nlookup -= n;
    if (in->nlookup == 0) {
        if (in->linked) table_remove(fs, in);
        in->all_prev->all_next = in->all_next;
        in->all_next->all_prev = in->all_prev;
        free(in->key);
        free(in);
    }
    pthread_mutex_unlock(&fs->ino_lock);
}

void fs__ino_detach(struct fs *fs, int is_dir, const char *key, size_t key_len) {
    uint64_t h = key_hash(is_dir, key, key_len);
    pthread_mutex_lock(&fs->ino_lock);
    struct inode *in = table_find(fs, is_dir, key, key_len, h);
    if (in != NULL && in != &fs->root && in->linked) table_remove(fs, in);
    pthread_mutex_unlock(&fs->ino_lock);
}

/* Gives in the key dst + in->key[cut..] and re-links it, detaching whatever
 * inode had that key. Called with ino_lock held. */
static void rekey_one(struct fs *fs, struct inode *in, size_t cut, const char *dst,
                      size_t dst_len) {
    size_t nl = dst_len + in->key_len - cut;
    char *k = malloc(nl ? nl : 1);
    if (k == NULL) { /* leave it detached: later lookups make a new inode */
        table_remove(fs, in);
        return;
    }
    memcpy(k, dst, dst_len);
    memcpy(k + dst_len, in->key + cut, in->key_len - cut);
    table_remove(fs, in);
    uint64_t h = key_hash(in->is_dir, k, nl);
    struct inode *old = table_find(fs, in->is_dir, k, nl, h);
    if (old != NULL && old != &fs->root) table_remove(fs, old);
    free(in->key);
    in->key = k;
    in->key_len = nl;
    in->hash = h;
    table_insert(fs, in);
}

void fs__ino_rekey(struct fs *fs, int is_dir, const char *src, size_t src_len, const char *dst,
                   size_t dst_len) {
    pthread_mutex_lock(&fs->ino_lock);
    if (!is_dir) {
        uint64_t h = key_hash(0, dst, dst_len);
        struct inode *old = table_find(fs, 0, dst, dst_len, h);
        if (old != NULL && old->linked) table_remove(fs, old);
        h = key_hash(0, src, src_len);
        struct inode *in = table_find(fs, 0, src, src_len, h);
        if (in != NULL) rekey_one(fs, in, src_len, dst, dst_len);
        pthread_mutex_unlock(&fs->ino_lock);
        return;
    }
    /* src and dst are directory prefixes ending in '/'. Collect first: re-
     * keying while walking the buckets could visit an inode twice. */
    size_t n = 0, cap = 16;
    struct inode **v = malloc(cap * sizeof *v);
    for (size_t b = 0; v != NULL && b < fs->nbuckets; b++) {
        for (struct inode *in = fs->buckets[b]; in; in = in->hnext) {
            int under = in->key_len >= src_len && memcmp(in->key, src, src_len) == 0;
            /* the directory's own value ("%value") is the file key without '/' */
            int value = !in->is_dir && in->key_len == src_len - 1 &&
                        memcmp(in->key, src, src_len - 1) == 0;
            if (!under && !value) continue;
            if (n == cap) {
                struct inode **nv = realloc(v, 2 * cap * sizeof *v);
                if (nv == NULL) break;
                v = nv;
                cap *= 2;
            }
            v[n++] = in;
        }
    }
    /* Inodes left at the destination belong to what the rename replaced. */
    for (size_t b = 0; b < fs->nbuckets; b++) {
        struct inode *in = fs->buckets[b];
        while (in) {
            struct inode *nx = in->hnext;
            int under = in->key_len >= dst_len && memcmp(in->key, dst, dst_len) == 0;
            int value = !in->is_dir && in->key_len == dst_len - 1 &&
                        memcmp(in->key, dst, dst_len - 1) == 0;
            int moving = 0;
            for (size_t i = 0; i < n && (under || value); i++) moving |= v[i] == in;
            if ((under || value) && !moving && in != &fs->root) table_remove(fs, in);
            in = nx;
        }
    }
    for (size_t i = 0; i < n; i++) {
        struct inode *in = v[i];
        if (!in->linked) continue;
        if (in->key_len == src_len - 1 && !in->is_dir)
            rekey_one(fs, in, src_len - 1, dst, dst_len - 1);
        else
            rekey_one(fs, in, src_len, dst, dst_len);
    }
    if (v == NULL) { /* no memory to re-key: detach everything below src */
        for (size_t b = 0; b < fs->nbuckets; b++) {
            struct inode *in = fs->buckets[b];
            while (in) {
                struct inode *nx = in->hnext;
                if (in->key_len >= src_len - 1 && memcmp(in->key, src, src_len - 1) == 0 &&
                    in != &fs->root)
                    table_remove(fs, in);
                in = nx;
            }
        }
    }
    free(v);
    pthread_mutex_unlock(&fs->ino_lock);
}

int fs__ino_pending(struct fs *fs, const char *k, size_t kl, struct fs_kv *kv) {
    uint64_t h = key_hash(0, k, kl);
    memset(kv, 0, sizeof *kv);
    pthread_mutex_lock(&fs->ino_lock);
    struct inode *in = table_find(fs, 0, k, kl, h);
    int p = in != NULL && in->pending > 0;
    if (p) {
        kv->mode = in->pmode;
        kv->uid = in->puid;
        kv->gid = in->pgid;
        kv->mtime_ns = in->pmtime_ns;
    }
    pthread_mutex_unlock(&fs->ino_lock);
    return p;
}

void fs__ino_pending_unexcl(struct fs *fs, const char *k, size_t kl) {
    uint64_t h = key_hash(0, k, kl);
    pthread_mutex_lock(&fs->ino_lock);
    struct inode *in = table_find(fs, 0, k, kl, h);
    if (in != NULL) in->pexcl = 0;
    pthread_mutex_unlock(&fs->ino_lock);
}

int fs__ino_pending_set(struct fs *fs, struct inode *in, const struct stat *attr, int to_set,
                        struct fs_kv *kv) {
    memset(kv, 0, sizeof *kv);
    pthread_mutex_lock(&fs->ino_lock);
    int p = in->pending > 0;
    if (p) {
        if (to_set & FUSE_SET_ATTR_MODE) in->pmode = (in->pmode & S_IFMT) | (attr->st_mode & 07777);
        if (to_set & FUSE_SET_ATTR_UID) in->puid = attr->st_uid;
        if (to_set & FUSE_SET_ATTR_GID) in->pgid = attr->st_gid;
        if (to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)) {
            in->pmtime_ns =
                (to_set & FUSE_SET_ATTR_MTIME_NOW)
                    ? fs__now_ns()
                    : (int64_t)attr->st_mtim.tv_sec * 1000000000 + attr->st_mtim.tv_nsec;
            in->meta_set_ns = fs__now_ns();
        }
        kv->mode = in->pmode;
        kv->uid = in->puid;
        kv->gid = in->pgid;
        kv->mtime_ns = in->pmtime_ns;
    }
    pthread_mutex_unlock(&fs->ino_lock);
    return p;
}

char *fs__ino_key(struct fs *fs, struct inode *in, size_t *len) {
    pthread_mutex_lock(&fs->ino_lock);
    char *k = malloc(in->key_len + 1);
    if (k != NULL) {
        memcpy(k, in->key, in->key_len);
        k[in->key_len] = '\0';
        *len = in->key_len;
    }
    pthread_mutex_unlock(&fs->ino_lock);
    return k;
}

/* ---- key-space helpers ---- */

char *fs__cat(const char *a, size_t al, const char *b, size_t bl, const char *c, size_t cl,
              size_t *out_len) {
    char *r = malloc(al + bl + cl + 1);
    if (r == NULL) return NULL;
    if (al) memcpy(r, a, al);
    if (bl) memcpy(r + al, b, bl);
    if (cl) memcpy(r + al + bl, c, cl);
    r[al + bl + cl] = '\0';
    *out_len = al + bl + cl;
    return r;
}

int fs__any(struct fs *fs, const char *lo, size_t lol, const char *hi, size_t hil) {
    struct fs_kv *kvs = NULL;
    size_t n = 0;
    int more = 0;
    int rc = fs->be.range(fs->be.data, lo, lol, hi, hil, 1, 1, &kvs, &n, &more);
    if (rc < 0) return rc;
    fs_kv_array_free(kvs, n);
    return n > 0;
}

/* The smallest string greater than every string with prefix p: p without
 * its trailing 0xFF bytes, last byte + 1. Returns 0 (and *end NULL) when
 * there is none (p empty or all 0xFF). end is malloc()ed. */
int fs__prefix_end(const char *p, size_t pl, char **end, size_t *el) {
    while (pl > 0 && (unsigned char)p[pl - 1] == 0xFF) pl--;
    *end = NULL;
    *el = 0;
    if (pl == 0) return 0;
    char *e = malloc(pl);
    if (e == NULL) return -ENOMEM;
    memcpy(e, p, pl);
    e[pl - 1] = (char)((unsigned char)e[pl - 1] + 1);
    *end = e;
    *el = pl;
    return 0;
}

int fs__any_prefix(struct fs *fs, const char *p, size_t pl) {
    char *e;
    size_t el;
    int rc = fs__prefix_end(p, pl, &e, &el);
    if (rc < 0) return rc;
    rc = fs__any(fs, p, pl, e, el);
    free(e);
    return rc;
}

/* Whether the node d + name has a subtree (some key d + name + "/..."). */
static int has_subtree(struct fs *fs, const char *d, size_t dl, const char *name, size_t nl) {
    size_t ll, hl;
    char *lo = fs__cat(d, dl, name, nl, "/", 1, &ll);
    char *hi = fs__cat(d, dl, name, nl, "0", 1, &hl);
    int rc = (lo && hi) ? fs__any(fs, lo, ll, hi, hl) : -ENOMEM;
    free(lo);
    free(hi);
    return rc;
}

static int name_cmp(const char *a, size_t al, const char *b, size_t bl) {
    int c = memcmp(a, b, al < bl ? al : bl);
    if (c != 0) return c;
    return al < bl ? -1 : al > bl;
}

/*
 * Children of d in name (memcmp) order, one seek or a few per child, never
 * a scan of a child's subtree. A child m's keys are d+m and d+m+"/..."; the
 * first key at or after d+after+"\0" names a candidate m0, but a shorter
 * name m (a proper prefix of m0 with m0[len(m)] < '/') that has only
 * subtree keys sorts before m0 while its keys sort after d+m0 ("a" with key
 * "a/x" versus "a!"), so those prefixes are checked first.
 */
int fs__next_child(struct fs *fs, const char *d, size_t dl, const char *after, size_t afl,
                   char **name, size_t *nl, int *is_dir) {
    char *end = NULL, *start = NULL, *cur = NULL;
    size_t endl, startl, curl = 0;
    int have_after = after != NULL;
    struct fs_kv *kvs = NULL;
    size_t n = 0;
    int rc = fs__prefix_end(d, dl, &end, &endl);
    if (rc < 0) return rc;
    if (have_after) {
        cur = malloc(afl ? afl : 1);
        if (cur == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        memcpy(cur, after, afl);
        curl = afl;
        start = fs__cat(d, dl, cur, curl, "", 1, &startl); /* d+after+"\0" */
    } else {
        start = fs__cat(d, dl, NULL, 0, NULL, 0, &startl);
    }
    for (unsigned guard = 0;; guard++) {
        if (start == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        int more = 0;
        fs_kv_array_free(kvs, n);
        kvs = NULL;
        n = 0;
        rc = fs->be.range(fs->be.data, start, startl, end, endl, 1, 1, &kvs, &n, &more);
        if (rc < 0) goto out;
        if (n == 0) {
            rc = 0;
            goto out;
        }
        const char *k = kvs[0].key + dl;
        size_t kl = kvs[0].key_len - dl;
        FS_ASSERT(kvs[0].key_len >= dl);
        const char *slash = memchr(k, '/', kl);
        size_t m0l = slash ? (size_t)(slash - k) : kl;
        if (have_after && name_cmp(k, m0l, cur, curl) <= 0) {
            /* A key of a child already emitted: it can only be in that
             * child's subtree (its own key sorts before d+after), which
             * sorts after siblings such as m0+"." ("" before ".", yet
             * d+"/x" after d+"."). Jump past the subtree. */
            free(start);
            start = fs__cat(d, dl, k, m0l, "0", 1, &startl);
            continue;
        }
        /* shorter names that have only subtree keys (see above) */
        unsigned checked = 0;
        for (size_t L = 0; L < m0l && checked < FS__PREFIX_CANDIDATES_MAX; L++) {
            if ((unsigned char)k[L] >= '/') continue;
            if (have_after && name_cmp(k, L, cur, curl) <= 0) continue;
            checked++;
            rc = has_subtree(fs, d, dl, k, L);
            if (rc < 0) goto out;
            if (rc) {
                *name = malloc(L ? L : 1);
                if (*name == NULL) {
                    rc = -ENOMEM;
                    goto out;
                }
                memcpy(*name, k, L);
                *nl = L;
                *is_dir = 1;
                rc = 1;
                goto out;
            }
        }
        int dir = slash != NULL;
        if (!dir) {
            rc = has_subtree(fs, d, dl, k, m0l);
            if (rc < 0) goto out;
            dir = rc;
        }
        if (!dir && m0l == 0 && S_ISDIR(kvs[0].mode)) {
            /* the hidden marker: continue after the empty name */
            free(cur);
            cur = malloc(1);
            curl = 0;
            have_after = 1;
            free(start);
            start = fs__cat(d, dl, "", 1, NULL, 0, &startl);
            if (cur == NULL) {
                rc = -ENOMEM;
                goto out;
            }
            continue;
        }
        *name = malloc(m0l ? m0l : 1);
        if (*name == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        memcpy(*name, k, m0l);
        *nl = m0l;
        *is_dir = dir;
        rc = 1;
        goto out;
    }
out:
    fs_kv_array_free(kvs, n);
    free(end);
    free(start);
    free(cur);
    return rc;
}

int fs__would_empty(struct fs *fs, const char *d, size_t dl, const char *raw, size_t rl) {
    /* Keys of d other than the child raw's own key and subtree lie in
     * [d, d+raw), [d+raw+"\0", d+raw+"/") and [d+raw+"0", end(d)). */
    size_t al, bl, cl, el;
    char *a = fs__cat(d, dl, raw, rl, NULL, 0, &al);
    char *b = fs__cat(d, dl, raw, rl, "", 1, &bl);
    char *c = fs__cat(d, dl, raw, rl, "/", 1, &cl);
    size_t zl;
    char *z = fs__cat(d, dl, raw, rl, "0", 1, &zl);
    char *e = NULL;
    int rc = -ENOMEM;
    if (!a || !b || !c || !z) goto out;
    rc = fs__prefix_end(d, dl, &e, &el);
    if (rc < 0) goto out;
    rc = fs__any(fs, d, dl, a, al);
    if (rc != 0) goto done;
    rc = fs__any(fs, b, bl, c, cl);
    if (rc != 0) goto done;
    rc = fs__any(fs, z, zl, e, el);
done:
    if (rc >= 0) rc = !rc;
out:
    free(a);
    free(b);
    free(c);
    free(z);
    free(e);
    return rc;
}

/* ---- operations in flight ---- */

int fs__submit(struct fs *fs, struct op *op, const struct fs_txn *txn) {
    if (!op->counted) { /* counted until fs__op_finish, across retries */
        pthread_mutex_lock(&fs->flight_lock);
        fs->in_flight++;
        pthread_mutex_unlock(&fs->flight_lock);
        op->counted = 1;
    }
    return fs->be.submit(fs->be.data, txn, fs__op_done, op);
}

static void barrier_done(void *arg, int err) {
    fs__op_done(arg, err, NULL);
}

int fs__barrier(struct fs *fs, struct op *op) {
    if (!op->counted) {
        pthread_mutex_lock(&fs->flight_lock);
        fs->in_flight++;
        pthread_mutex_unlock(&fs->flight_lock);
        op->counted = 1;
    }
    return fs->be.read_barrier(fs->be.data, barrier_done, op);
}

void fs__handle_add(struct fs *fs, struct hnode *h, int is_dir) {
    h->fs = fs;
    h->is_dir = is_dir;
    pthread_mutex_lock(&fs->h_lock);
    h->next = fs->handles.next;
    h->prev = &fs->handles;
    h->next->prev = h;
    fs->handles.next = h;
    pthread_mutex_unlock(&fs->h_lock);
}

void fs__handle_del(struct hnode *h) {
    struct fs *fs = h->fs;
    pthread_mutex_lock(&fs->h_lock);
    h->prev->next = h->next;
    h->next->prev = h->prev;
    pthread_mutex_unlock(&fs->h_lock);
}

void fs__child_free(struct child *c) {
    free(c->d);
    free(c->raw);
    free(c->fkey);
    free(c->dkey);
    memset(c, 0, sizeof *c);
}

void fs__op_finish(struct op *op) {
    struct fs *fs = op->fs;
    int counted = op->counted;
    fs__child_free(&op->a);
    fs__child_free(&op->b);
    free(op->value);
    free(op);
    if (!counted) return;
    pthread_mutex_lock(&fs->flight_lock);
    FS_ASSERT(fs->in_flight > 0);
    fs->in_flight--;
    pthread_cond_broadcast(&fs->flight_cond);
    pthread_mutex_unlock(&fs->flight_lock);
}

void fs__work_push(struct fs *fs, struct op *op) {
    op->next = NULL;
    pthread_mutex_lock(&fs->q_lock);
    if (fs->work_tail)
        fs->work_tail->next = op;
    else
        fs->work_head = op;
    fs->work_tail = op;
    pthread_cond_signal(&fs->work_cond);
    pthread_mutex_unlock(&fs->q_lock);
}

static void *work_main(void *arg) {
    struct fs *fs = arg;
    pthread_mutex_lock(&fs->q_lock);
    for (;;) {
        while (fs->work_head == NULL && !fs->q_stop) pthread_cond_wait(&fs->work_cond, &fs->q_lock);
        if (fs->work_head == NULL) break; /* stopping and drained */
        struct op *op = fs->work_head;
        fs->work_head = op->next;
        if (fs->work_head == NULL) fs->work_tail = NULL;
        pthread_mutex_unlock(&fs->q_lock);
        fs__op_again(op);
        pthread_mutex_lock(&fs->q_lock);
    }
    pthread_mutex_unlock(&fs->q_lock);
    return NULL;
}

/* ---- invalidation ---- */

static void inval_push(struct fs *fs, struct queue_item *it) {
    pthread_mutex_lock(&fs->q_lock);
    if (fs->inval_len >= FS_INVAL_QUEUE_MAX || fs->q_stop) {
        fs->inval_dropped++;
        pthread_mutex_unlock(&fs->q_lock);
        free(it);
        return;
    }
    if (fs->inval_tail)
        fs->inval_tail->next = it;
    else
        fs->inval_head = it;
    fs->inval_tail = it;
    fs->inval_len++;
    pthread_cond_signal(&fs->q_cond);
    pthread_mutex_unlock(&fs->q_lock);
}

int fs_notify_reset(struct fs *fs) {
    FS_ASSERT(fs != NULL);
    if (atomic_load(&fs->state) != FS__RUNNING) return 0;
    struct queue_item *it = calloc(1, sizeof *it + 1);
    if (it == NULL) return -ENOMEM;
    it->reset = 1;
    it->local = 1; /* nothing to replay */
    inval_push(fs, it);
    return 0;
}

int fs_notify_change(struct fs *fs, const struct fs_change *c) {
    FS_ASSERT(fs != NULL);
    FS_ASSERT(c != NULL);
    FS_ASSERT(c->key != NULL || c->key_len == 0);
    if (atomic_load(&fs->state) != FS__RUNNING) return 0;
    if (!c->more && c->revision > atomic_load(&fs->notified_rev))
        atomic_store(&fs->notified_rev, c->revision); /* only the node loop writes */
    if (c->key_len < fs->prefix_len || memcmp(c->key, fs->prefix, fs->prefix_len) != 0) {
        /* Outside the mount, except the root's own value key (prefix less
         * its '/'), which shows as "MNT/%". */
        if (!(fs->prefix_len > 1 && c->key_len == fs->prefix_len - 1 &&
              memcmp(c->key, fs->prefix, c->key_len) == 0))
            return 0;
    }
    struct queue_item *it = malloc(sizeof *it + c->key_len + 1);
    if (it == NULL) return -ENOMEM;
    it->next = NULL;
    it->type = c->type;
    it->created = c->created;
    it->local = c->local;
    it->more = c->more;
    it->revision = c->revision;
    it->reset = 0;
    it->drop = 0;
    it->meta_only = c->type == FS_CHANGE_PUT && !c->created && c->meta_only;
    it->key_len = c->key_len;
    if (c->key_len) memcpy(it->key, c->key, c->key_len);
    it->key[c->key_len] = '\0';
    inval_push(fs, it);
    return 0;
}

void fs__drop_entry(struct fs *fs, const char *key, size_t key_len) {
    if (atomic_load(&fs->state) != FS__RUNNING) return;
    struct queue_item *it = calloc(1, sizeof *it + key_len + 1);
    if (it == NULL) return; /* the dentry then expires by entry_timeout_ms */
    it->type = FS_CHANGE_DELETE;
    it->local = 1; /* nothing to replay: the store never had it */
    it->drop = 1;
    it->key_len = key_len;
    memcpy(it->key, key, key_len);
    inval_push(fs, it);
}

/* Invalidates the dentry spelled for component raw in directory d, if the
 * kernel may hold d (its inode is in the table). */
static void inval_name(struct fs *fs, struct fuse_session *se, const char *d, size_t dl,
                       const char *raw, size_t rl, int value) {
    fuse_ino_t parent = fs__ino_peek(fs, 1, d, dl);
    if (parent == 0) return;
    char name[FS_NAME_MAX + 1];
    size_t nl;
    if (value) {
        memcpy(name, FS__NAME_VALUE, sizeof FS__NAME_VALUE);
        nl = sizeof FS__NAME_VALUE - 1;
    } else {
        nl = fs_name_encode(raw, rl, name, sizeof name);
    }
    fuse_lowlevel_notify_inval_entry(se, parent, name, nl);
}

static void inval_key(struct fs *fs, struct fuse_session *se, const struct queue_item *it) {
    const char *k = it->key;
    size_t kl = it->key_len;
    fuse_ino_t ino = fs__ino_peek(fs, 0, k, kl);
    if (ino) fuse_lowlevel_notify_inval_inode(se, ino, 0, 0);
    if (kl > 0 && k[kl - 1] == '/') { /* a marker: the directory's attributes */
        ino = fs__ino_peek(fs, 1, k, kl);
        if (ino) fuse_lowlevel_notify_inval_inode(se, ino, 0, 0);
    }
    /* Existence changes (a key appears or disappears) can change what every
     * ancestor is (an implicit directory appears or vanishes, a file becomes
     * a directory), so each level's dentry is dropped. Changes made through
     * this mount were already reflected by the kernel itself. */
    if ((it->local && !it->drop) || !(it->type == FS_CHANGE_DELETE || it->created)) return;
    if (kl < fs->prefix_len) { /* the root's own value key */
        inval_name(fs, se, fs->prefix, fs->prefix_len, NULL, 0, 1);
        return;
    }
    size_t pos = fs->prefix_len;
    for (;;) {
        const char *slash = memchr(k + pos, '/', kl - pos);
        size_t cl = slash ? (size_t)(slash - (k + pos)) : kl - pos;
        inval_name(fs, se, k, pos, k + pos, cl, 0);
        if (slash == NULL) break;
        pos += cl + 1;
    }
    /* the key may also be shown as "%value" inside its own directory */
    size_t dl;
    char *d = fs__cat(k, kl, "/", 1, NULL, 0, &dl);
    if (d != NULL) inval_name(fs, se, d, dl, NULL, 0, 1);
    free(d);
}

/* fs_notify_reset: every inode the kernel holds, its data, attributes and
 * the entry that names it. Keys are copied first (ino_lock is not held
 * across kernel calls), then looked up again. */
struct held_key {
    struct held_key *next;
    int is_dir;
    size_t key_len;
    char key[];
};

static void inval_all(struct fs *fs, struct fuse_session *se) {
    struct held_key *list = NULL;
    pthread_mutex_lock(&fs->ino_lock);
    for (struct inode *in = fs->all_inodes.all_next; in != &fs->all_inodes; in = in->all_next) {
        if (!in->linked) continue;
        struct held_key *it = malloc(sizeof *it + in->key_len + 1);
        if (it == NULL) break;
        it->is_dir = in->is_dir;
        it->key_len = in->key_len;
        memcpy(it->key, in->key, in->key_len);
        it->key[in->key_len] = '\0';
        it->next = list;
        list = it;
    }
    pthread_mutex_unlock(&fs->ino_lock);
    fuse_lowlevel_notify_inval_inode(se, FUSE_ROOT_ID, 0, 0);
    while (list) {
        struct held_key *it = list;
        list = it->next;
        int is_dir = it->is_dir;
        fuse_ino_t ino = fs__ino_peek(fs, is_dir, it->key, it->key_len);
        if (ino) fuse_lowlevel_notify_inval_inode(se, ino, 0, 0);
        /* the entry naming it: its last component in its parent */
        size_t end = is_dir ? it->key_len - 1 : it->key_len, p = end;
        while (p > 0 && it->key[p - 1] != '/') p--;
        if (p >= fs->prefix_len) inval_name(fs, se, it->key, p, it->key + p, end - p, 0);
        free(it);
    }
}

static void *inval_main(void *arg) {
    struct fs *fs = arg;
    struct fuse_session *se = atomic_load(&fs->se);
    pthread_mutex_lock(&fs->q_lock);
    for (;;) {
        while (fs->inval_head == NULL && !fs->q_stop) pthread_cond_wait(&fs->q_cond, &fs->q_lock);
        if (fs->inval_head == NULL) break;
        struct queue_item *it = fs->inval_head;
        fs->inval_head = it->next;
        if (fs->inval_head == NULL) fs->inval_tail = NULL;
        fs->inval_len--;
        pthread_mutex_unlock(&fs->q_lock);
        if (it->reset)
            inval_all(fs, se);
        else
            inval_key(fs, se, it);
        if (!it->local && fs->replay_started)
            fs__replay_push(fs, it); /* after its invalidation */
        else
            free(it);
        pthread_mutex_lock(&fs->q_lock);
    }
    pthread_mutex_unlock(&fs->q_lock);
    return NULL;
}

/* ---- life cycle ---- */

static char *dup_str(const char *s) {
    if (s == NULL) return NULL;
    size_t n = strlen(s);
    char *r = malloc(n + 1);
    if (r) memcpy(r, s, n + 1);
    return r;
}

int fs_new(const struct fs_options *opt, const struct fs_backend *be, struct fs **out) {
    FS_ASSERT(opt != NULL);
    FS_ASSERT(be != NULL);
    FS_ASSERT(out != NULL);
    *out = NULL;
    if (be->get == NULL || be->range == NULL || be->revision == NULL || be->submit == NULL)
        return FS_EOPTION;
    if (opt->mountpoint == NULL || opt->mountpoint[0] == '\0') return FS_EOPTION;
    const char *p = opt->prefix ? opt->prefix : "/";
    size_t pl = opt->prefix_len ? opt->prefix_len : strlen(p);
    if (pl > FS_PREFIX_BYTES_MAX) return FS_EOPTION;
    if (opt->value_bytes_max == 0 || opt->txn_ops_max < 4 || opt->threads_max == 0)
        return FS_EOPTION;
    if (opt->linearizable_open && be->read_barrier == NULL) return FS_EOPTION;
    struct fs *fs = calloc(1, sizeof *fs);
    if (fs == NULL) return -ENOMEM;
    fs->opt = *opt;
    fs->be = *be;
    fs->mountpoint = dup_str(opt->mountpoint);
    fs->fsname = dup_str(opt->fsname ? opt->fsname : "quorumfs");
    int slash = pl > 0 && p[pl - 1] != '/';
    fs->prefix = fs__cat(p, pl, "/", (size_t)slash, NULL, 0, &fs->prefix_len);
    fs->nbuckets = FS__BUCKETS_MIN;
    fs->buckets = calloc(fs->nbuckets, sizeof *fs->buckets);
    if (!fs->mountpoint || !fs->fsname || !fs->prefix || !fs->buckets) {
        fs_free(fs);
        return -ENOMEM;
    }
    fs->opt.mountpoint = fs->mountpoint;
    fs->opt.fsname = fs->fsname;
    fs->opt.prefix = fs->prefix;
    fs->opt.prefix_len = fs->prefix_len;
    fs->root.key = fs->prefix;
    fs->root.key_len = fs->prefix_len;
    fs->root.is_dir = 1;
    fs->root.is_root = 1;
    fs->root.nlookup = 1;
    fs->all_inodes.all_next = fs->all_inodes.all_prev = &fs->all_inodes;
    fs->handles.next = fs->handles.prev = &fs->handles;
    pthread_mutex_init(&fs->h_lock, NULL);
    fs->root.linked = 1;
    fs->start_ns = fs__now_ns();
    fs->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fs->stop_fd < 0) {
        int e = -errno;
        fs_free(fs);
        return e;
    }
    fs->inited = 1;
    pthread_mutex_init(&fs->ino_lock, NULL);
    pthread_mutex_init(&fs->flight_lock, NULL);
    pthread_cond_init(&fs->flight_cond, NULL);
    pthread_mutex_init(&fs->q_lock, NULL);
    pthread_cond_init(&fs->q_cond, NULL);
    pthread_cond_init(&fs->work_cond, NULL);
    pthread_cond_init(&fs->rp_cond, NULL);
    pthread_mutex_init(&fs->ov_lock, NULL);
    const char *fm[] = {"/usr/bin/fusermount3", "/bin/fusermount3", "/usr/local/bin/fusermount3"};
    for (size_t i = 0; i < sizeof fm / sizeof fm[0]; i++) {
        if (access(fm[i], X_OK) == 0) {
            snprintf(fs->fusermount_path, sizeof fs->fusermount_path, "%s", fm[i]);
            break;
        }
    }
    *out = fs;
    return 0;
}

void fs_free(struct fs *fs) {
    if (fs == NULL) return;
    FS_ASSERT(atomic_load(&fs->state) != FS__RUNNING);
    if (fs->all_inodes.all_next != NULL) {
        struct inode *in = fs->all_inodes.all_next;
        while (in != &fs->all_inodes) {
            struct inode *nx = in->all_next;
            free(in->key);
            free(in);
            in = nx;
        }
    }
    free(fs->buckets);
    while (fs->inval_head) {
        struct queue_item *it = fs->inval_head;
        fs->inval_head = it->next;
        free(it);
    }
    while (fs->rp_head) {
        struct queue_item *it = fs->rp_head;
        fs->rp_head = it->next;
        free(it);
    }
    if (fs->inited) {
        pthread_mutex_destroy(&fs->ino_lock);
        pthread_mutex_destroy(&fs->h_lock);
        pthread_mutex_destroy(&fs->flight_lock);
        pthread_cond_destroy(&fs->flight_cond);
        pthread_mutex_destroy(&fs->q_lock);
        pthread_cond_destroy(&fs->q_cond);
        pthread_cond_destroy(&fs->work_cond);
        pthread_cond_destroy(&fs->rp_cond);
        pthread_mutex_destroy(&fs->ov_lock);
    }
    if (fs->inited) close(fs->stop_fd);
    free(fs->mountpoint);
    free(fs->fsname);
    free(fs->prefix);
    free(fs);
}

static void stop_threads(struct fs *fs, int started_inval, int started_work) {
    pthread_mutex_lock(&fs->q_lock);
    fs->q_stop = 1;
    pthread_cond_broadcast(&fs->q_cond);
    pthread_cond_broadcast(&fs->work_cond);
    pthread_cond_broadcast(&fs->rp_cond);
    pthread_mutex_unlock(&fs->q_lock);
    if (fs->replay_started) {
        pthread_join(fs->replay_thread, NULL);
        fs->replay_started = 0;
    }
    if (started_inval) pthread_join(fs->inval_thread, NULL);
    if (started_work) pthread_join(fs->work_thread, NULL);
}

static void stop_locked(struct fs *fs);

static void wake_workers(struct fs *fs) {
    uint64_t one = 1;
    ssize_t w = write(fs->stop_fd, &one, sizeof one); /* async-signal-safe */
    (void)w; /* a full counter (EAGAIN) is already a wake-up */
}

static void *worker_main(void *arg) {
    struct fs *fs = arg;
    struct fuse_session *se = atomic_load(&fs->se);
    struct fuse_buf buf;
    memset(&buf, 0, sizeof buf);
    struct pollfd p[2] = {{fuse_session_fd(se), POLLIN, 0}, {fs->stop_fd, POLLIN, 0}};
    while (!fuse_session_exited(se) && !atomic_load(&fs->stop_requested)) {
        int r = poll(p, 2, -1);
        if (r < 0) {
            if (errno == EINTR) continue;
            atomic_store(&fs->loop_err, -errno);
            break;
        }
        if (p[1].revents) break;
        if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL)) break; /* unmounted */
        if (!(p[0].revents & POLLIN)) continue;
        int res = fuse_session_receive_buf(se, &buf);
        if (res == -EINTR || res == -EAGAIN) continue; /* another worker took it */
        if (res <= 0) { /* 0: the kernel ended the connection (unmounted) */
            if (res < 0) atomic_store(&fs->loop_err, res);
            break;
        }
        fuse_session_process_buf(se, &buf);
    }
    /* A replay call in progress waits for our answer: serve until it is
     * done (the replay thread starts no new one once stop_requested). */
    while (atomic_load(&fs->replay_busy)) {
        struct pollfd q = {fuse_session_fd(se), POLLIN, 0};
        if (poll(&q, 1, 10) <= 0 || !(q.revents & POLLIN)) {
            if (q.revents & (POLLERR | POLLHUP | POLLNVAL)) break;
            continue;
        }
        int res = fuse_session_receive_buf(se, &buf);
        if (res == 0 || (res < 0 && res != -EINTR && res != -EAGAIN)) break;
        if (res > 0) fuse_session_process_buf(se, &buf);
    }
    free(buf.mem);
    atomic_store(&fs->stop_requested, 1);
    wake_workers(fs);
    return NULL;
}

/* Detaches a stale mount at dir (root: umount2; else fusermount3 -u -z). */
static void detach_stale(struct fs *fs, const char *dir) {
    if (umount2(dir, MNT_DETACH) == 0 || errno != EPERM || fs->fusermount_path[0] == '\0') return;
    pid_t pid = fork();
    if (pid == 0) {
        char *const argv[] = {fs->fusermount_path, "-u", "-z", "--", (char *)dir, NULL};
        execv(fs->fusermount_path, argv);
        _exit(127);
    }
    if (pid > 0) waitpid(pid, NULL, 0);
}

/* The mountpoint checks of fs_run: 0 or FS_EMOUNT with fs->errmsg set. */
static int check_mountpoint(struct fs *fs) {
    const char *dir = fs->mountpoint;
    struct stat st, pst;
    if (stat(dir, &st) != 0 && (errno == ENOTCONN || errno == ECONNABORTED)) {
        detach_stale(fs, dir); /* left by a killed process: reuse the directory */
        if (stat(dir, &st) != 0 && (errno == ENOTCONN || errno == ECONNABORTED)) {
            snprintf(fs->errmsg, sizeof fs->errmsg,
                     "mountpoint %.180s: a stale mount that cannot be detached "
                     "(fusermount3 -u -z %.30s)",
                     dir, dir);
            return FS_EMOUNT;
        }
    }
    if (stat(dir, &st) != 0) {
        snprintf(fs->errmsg, sizeof fs->errmsg, "mountpoint %.200s: %s", dir, strerror(errno));
        return FS_EMOUNT;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(fs->errmsg, sizeof fs->errmsg, "mountpoint %.200s is not a directory", dir);
        return FS_EMOUNT;
    }
    size_t dl = strlen(dir);
    char *parent = fs__cat(dir, dl, "/..", 3, NULL, 0, &dl);
    if (parent == NULL) return -ENOMEM;
    int pr = stat(parent, &pst);
    free(parent);
    if (pr != 0 || pst.st_dev != st.st_dev || pst.st_ino == st.st_ino) {
        snprintf(fs->errmsg, sizeof fs->errmsg,
                 "mountpoint %.100s is already a mount point (a live quorumfs or another "
                 "filesystem); unmount it first: umount %.60s",
                 dir, dir);
        return FS_EMOUNT;
    }
    if (!fs->opt.mount_nonempty) {
        DIR *d = opendir(dir);
        int n = 0;
        for (struct dirent *e; d != NULL && n == 0 && (e = readdir(d)) != NULL;)
            n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
        if (d != NULL) closedir(d);
        if (n > 0) {
            snprintf(fs->errmsg, sizeof fs->errmsg,
                     "mountpoint %.120s is not empty (its files would be hidden); "
                     "allow it with mount_nonempty (--mount-nonempty)",
                     dir);
            return FS_EMOUNT;
        }
    }
    return 0;
}

int fs_run(struct fs *fs) {
    FS_ASSERT(fs != NULL);
    int expected = FS__NEW;
    if (!atomic_compare_exchange_strong(&fs->state, &expected, FS__RUNNING)) return FS_ESTATE;
    int rc = 0, started_inval = 0, started_work = 0;
    char opts[512];
    rc = check_mountpoint(fs);
    if (rc < 0) {
        atomic_store(&fs->state, FS__DONE);
        return rc;
    }
    snprintf(opts, sizeof opts, "fsname=%s,subtype=quorumfs%s%s", fs->fsname,
             fs->opt.default_permissions ? ",default_permissions" : "",
             fs->opt.allow_other ? ",allow_other" : "");
    char *argv[] = {"quorumfs", "-o", opts, fs->opt.debug ? "-d" : NULL, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(fs->opt.debug ? 4 : 3, argv);
    struct fuse_session *se = fuse_session_new(&args, &fs__ops, sizeof fs__ops, fs);
    fuse_opt_free_args(&args);
    pthread_t *workers = NULL;
    unsigned n_workers = 0;
    if (se == NULL) {
        snprintf(fs->errmsg, sizeof fs->errmsg, "fuse_session_new failed");
        rc = FS_EMOUNT;
        goto err_state;
    }
    if (fuse_session_mount(se, fs->mountpoint) != 0) {
        snprintf(fs->errmsg, sizeof fs->errmsg, "cannot mount %s", fs->mountpoint);
        rc = FS_EMOUNT;
        goto err_session;
    }
    atomic_store(&fs->se, se);
    /* The replay thread first: the invalidation thread hands it every
     * non-local change, and drops those that arrive while it is not
     * running. */
    if (fs->opt.replay) {
        if (pthread_create(&fs->replay_thread, NULL, fs__replay_main, fs) != 0) {
            rc = -EAGAIN;
            goto err_threads;
        }
        fs->replay_started = 1;
    }
    if (pthread_create(&fs->inval_thread, NULL, inval_main, fs) != 0) {
        rc = -EAGAIN;
        goto err_threads;
    }
    started_inval = 1;
    if (pthread_create(&fs->work_thread, NULL, work_main, fs) != 0) {
        rc = -EAGAIN;
        goto err_threads;
    }
    started_work = 1;
    /* Our own worker pool rather than fuse_session_loop_mt: libfuse's loop
     * notices fuse_session_exit only after a request arrives (and then
     * drops it unanswered), so fs_stop could not end it while the mount is
     * idle but busy. Workers poll the device (non-blocking) and stop_fd. */
    int fl = fcntl(fuse_session_fd(se), F_GETFL);
    if (fl < 0 || fcntl(fuse_session_fd(se), F_SETFL, fl | O_NONBLOCK) < 0) {
        rc = -errno;
        goto err_threads;
    }
    workers = calloc(fs->opt.threads_max, sizeof *workers);
    if (workers == NULL) {
        rc = -ENOMEM;
        goto err_threads;
    }
    for (; n_workers < fs->opt.threads_max; n_workers++)
        if (pthread_create(&workers[n_workers], NULL, worker_main, fs) != 0) break;
    if (n_workers == 0) rc = -EAGAIN;
    if (rc == 0 && fs->opt.mounted_cb) fs->opt.mounted_cb(fs->opt.mounted_arg);
    for (unsigned i = 0; i < n_workers; i++) pthread_join(workers[i], NULL);
    free(workers);
    fuse_session_exit(se);
    if (rc == 0 && atomic_load(&fs->loop_err) < 0) rc = atomic_load(&fs->loop_err);
err_threads:
    /* Every submitted transaction must come back before the session goes. */
    pthread_mutex_lock(&fs->flight_lock);
    while (fs->in_flight > 0) pthread_cond_wait(&fs->flight_cond, &fs->flight_lock);
    pthread_mutex_unlock(&fs->flight_lock);
    stop_threads(fs, started_inval, started_work);
    atomic_store(&fs->se, NULL);
    while (atomic_load(&fs->stopping) > 0) { /* an fs_stop still unmounting */
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    while (fs->handles.next != &fs->handles) { /* releases the kernel dropped */
        struct hnode *h = fs->handles.next;
        fs__handle_del(h);
        fs__handle_destroy(h);
    }
    /* After fs_stop detached the mount the kernel ends the connection once
     * nothing in it is in use; libfuse's unmount then only closes the
     * device. If it is still alive (a file held open), closing the device
     * in fuse_session_destroy ends it, and unmounting again would fail. */
    int gone = !atomic_load(&fs->detached);
    for (int i = 0; !gone && i < FS__DETACH_WAIT_MS; i++) {
        struct pollfd p = {fuse_session_fd(se), 0, 0};
        if (poll(&p, 1, 0) == 1 && (p.revents & POLLERR)) {
            gone = 1;
        } else {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    if (gone) fuse_session_unmount(se);
    {
        int pid = atomic_exchange(&fs->fusermount_pid, 0);
        if (pid > 0) waitpid(pid, NULL, 0);
    }
err_session:
    fuse_session_destroy(se);
err_state:
    atomic_store(&fs->state, FS__DONE);
    return rc;
}

void fs_stop(struct fs *fs) {
    if (fs == NULL) return;
    atomic_fetch_add(&fs->stopping, 1); /* fs_run waits for us before it unmounts */
    stop_locked(fs);
    atomic_fetch_sub(&fs->stopping, 1);
}

static void stop_locked(struct fs *fs) {
    atomic_store(&fs->stop_requested, 1);
    struct fuse_session *se = atomic_load(&fs->se);
    if (se == NULL) return;
    /* No fuse_session_exit here: libfuse drops (unanswered) a request it
     * reads after it, and the workers may still serve the replay thread's
     * last call (worker_main); they stop on stop_requested. */
    wake_workers(fs);
    if (umount2(fs->mountpoint, MNT_DETACH) == 0) {
        atomic_store(&fs->detached, 1);
        return;
    }
    if (errno != EPERM) return;
    /* Not root: ask fusermount3 (fork and execve are async-signal-safe). */
    if (fs->fusermount_path[0] == '\0') return;
    pid_t pid = fork();
    if (pid == 0) {
        char *const argv[] = {fs->fusermount_path, "-u", "-z", "--", fs->mountpoint, NULL};
        char *const envp[] = {NULL};
        execve(fs->fusermount_path, argv, envp);
        _exit(127);
    }
    if (pid > 0) atomic_store(&fs->fusermount_pid, (int)pid);
}
