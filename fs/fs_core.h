/*
 * fs_core.h - the fs object, its inode table, open handles and pending
 * operations; shared by fs.c (life cycle, threads, inode table, store
 * helpers) and ops.c (the FUSE handlers). Private to fs/.
 *
 * Inodes. An inode is a node of the key tree seen either as a directory
 * (key = its prefix, ending in '/', or the mount prefix for the root) or as
 * a regular file (key = the key itself). The table maps (is_dir, key) to
 * the inode; fuse_ino_t is the inode's address (the root is FUSE_ROOT_ID),
 * as in libfuse's passthrough_ll.c. The kernel's lookup count is the
 * inode's life: +1 per entry reply, -n per forget; an inode is freed only
 * when the count drops to zero. Unlink, rmdir and rename-over detach the
 * victim from the table (later lookups of that key make a new inode) and
 * rename re-keys the moved inodes, so the kernel's inode keeps naming the
 * same data after a rename, as on a local filesystem.
 *
 * Locks: fs->ino_lock guards the table and every inode's mutable fields;
 * fh->lock guards one open file's buffer; dh->lock one open directory's
 * cursor. No lock is held across a backend call except fh->lock (a file's
 * reads and writes are serialised anyway); ino_lock is never taken while
 * waiting for anything.
 */
#ifndef QUORUMFS_FS_CORE_H
#define QUORUMFS_FS_CORE_H

#include "fs/fs_int.h"

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/types.h>

/* Bounds on work that outside input can grow. */
#define FS__RETRIES_MAX 8u                            /* re-reads after a failed compare */
#define FS__HASHED_SCAN_MAX 4096u                     /* children examined to resolve a long name */
#define FS__DIR_NAMES_BYTES_MAX (16u * 1024u * 1024u) /* readdir cursor memory */
#define FS__PREFIX_CANDIDATES_MAX 4096u               /* see next_child() in fs.c */
#define FS__DETACH_WAIT_MS 2000                       /* for the kernel to end a detached mount */

struct inode {
    struct inode *hnext;               /* hash chain; ino_lock */
    struct inode *all_prev, *all_next; /* every live inode but the root; ino_lock */
    uint64_t hash;                     /* of (is_dir, key); ino_lock */
    char *key;                         /* ino_lock (changes on rename) */
    size_t key_len;
    int is_dir;          /* immutable */
    int is_root;         /* immutable */
    int linked;          /* in the table; ino_lock */
    uint64_t nlookup;    /* kernel lookup count; ino_lock */
    int64_t cache_rev;   /* mod_revision of the content the kernel's page cache
                          was last filled from (keep_cache); ino_lock */
    int64_t meta_set_ns; /* wall clock of the last explicit mtime set through
                            this mount; ino_lock */
    /* A file created through this mount whose first put has not happened
     * yet exists only here (see "pending files" in ops.c): pending counts
     * the creating handles not yet put; the metadata it will be put with
     * (chmod/chown/utimens before the first put change these). ino_lock. */
    uint32_t pending;
    int pexcl; /* created with O_EXCL: the first put compares "absent" */
    uint32_t pmode, puid, pgid;
    int64_t pmtime_ns; /* 0: the time of the last write */
};

/* Every open file and directory is on fs->handles, so that handles whose
 * release the kernel never sent (it drops them when the mount goes away)
 * are freed when fs_run returns. */
struct hnode {
    struct hnode *prev, *next; /* fs->h_lock */
    struct fs *fs;
    int is_dir;
};

/* An open regular file. The buffer is the value as of open (or empty after
 * O_TRUNC) with this handle's writes applied; it is put at flush/fsync/
 * release when dirty, so no reader ever sees a partial value. */
#define FH_DIRTY_DATA 1
#define FH_DIRTY_TRUNC 2
struct fh {
    struct hnode h; /* first */
    pthread_mutex_t lock;
    struct inode *ino;
    char *buf;
    size_t len, cap;
    int dirty;               /* 0 clean; FH_DIRTY_DATA written; FH_DIRTY_TRUNC only
                           truncated by open(O_TRUNC) (both put as in
                           put_handle in ops.c) */
    int failed;              /* a write failed (EFBIG): nothing of this handle is
                           put, and flush reports the error */
    int replay;              /* opened by the replay thread: writes are dropped,
                           nothing is ever put */
    int append;              /* O_APPEND */
    int64_t write_ns;        /* wall clock of the last write/truncate */
    uint32_t mode, uid, gid; /* metadata when opened (used if the key vanished) */
    int creating;            /* created by this handle, not in the store before its
                           first put (counted in ino->pending until then) */
    int put_once;            /* a put of this handle was applied */
    int have_last;           /* last_sha/last_len describe the last applied put */
    size_t last_len;
    unsigned char last_sha[32];
    pid_t opener; /* thread group that opened it (0: unknown); only its
                           close (flush) puts, see put_handle */
};

/* An open directory: the raw names of the children emitted so far, in
 * order; entry i has offset FS__DIR_OFF_FIRST + base + i. Seeking to an
 * offset resumes by name (after the previous entry's name), so changes made
 * while a listing is in progress neither skip nor repeat entries that exist
 * throughout. */
#define FS__DIR_OFF_DOT 1
#define FS__DIR_OFF_DOTDOT 2
#define FS__DIR_OFF_VALUE 3
#define FS__DIR_OFF_FIRST 4
struct dh {
    struct hnode h; /* first */
    pthread_mutex_t lock;
    struct inode *ino;
    char **names;
    size_t *lens;
    size_t n, cap;
    uint64_t base; /* entries dropped from the front (memory bound) */
    size_t bytes;  /* sum of lens */
    int at_end;
};

enum op_kind {
    OP_CREATE = 1,
    OP_MKNOD,
    OP_MKDIR,
    OP_UNLINK,
    OP_RMDIR,
    OP_RENAME,
    OP_SETATTR,
    OP_FLUSH,
    OP_FSYNC,
    OP_RELEASE,
    OP_OPEN, /* linearizable_open: waits for the read barrier */
};

/* A name resolved in a directory: what it denotes in the key space. */
struct child {
    char *d; /* the directory's prefix */
    size_t dl;
    char *raw; /* the key component; NULL for "%value" */
    size_t rl;
    char *fkey; /* the key of the file this name would be */
    size_t fkl;
    char *dkey; /* the prefix of the directory it would be; NULL for "%value" */
    size_t dkl;
    int is_value; /* the name was "%value" (the directory's own value) */
    int in_root;  /* the directory is the mount root */
};

/* A mutation in flight: built by a handler, completed by done_cb or, when a
 * second round is needed, by the completion thread. */
struct op {
    struct op *next; /* completion queue */
    struct fs *fs;
    fuse_req_t req;
    enum op_kind kind;
    int counted; /* counted in fs->in_flight (fs__submit) */
    int err;     /* done_cb's err */
    struct fs_txn_result res;
    unsigned retries;
    struct child a, b; /* target (rename: source), rename destination */
    int is_dir;        /* rename: the source is a directory */
    unsigned flags;    /* rename flags; create: open flags */
    uint32_t mode, uid, gid;
    struct fuse_file_info fi;
    struct fh *fh;
    struct inode *ino; /* setattr */
    struct stat attr;  /* setattr: requested values */
    int to_set;
    char *value; /* setattr: the value put */
    size_t value_len;
    int64_t mtime_ns; /* the metadata put */
    size_t put_len;   /* flush/fsync/release: the bytes put (length, SHA-256) */
    unsigned char put_sha[32];
    int put_first; /* the first put of a creating handle */
};

struct queue_item {
    struct queue_item *next;
    enum fs_change_type type;
    int reset;     /* fs_notify_reset: every held inode, no key */
    int drop;      /* a pending file abandoned unput: drop its dentry (never replayed) */
    int meta_only; /* fs_change.meta_only */
    int created, local, more;
    int64_t revision;
    size_t key_len;
    char key[];
};

struct fs {
    struct fs_options opt; /* strings point into the copies below */
    char *mountpoint, *fsname;
    char *prefix; /* normalized: "" or ending in '/' */
    size_t prefix_len;
    struct fs_backend be;
    int64_t start_ns;
    char errmsg[512];
    int inited; /* locks and conditions initialised */

    _Atomic(struct fuse_session *) se;
    atomic_int state; /* FS__NEW, FS__RUNNING, FS__DONE */
    atomic_int stop_requested;
    atomic_int detached; /* fs_stop unmounted it */
    atomic_int stopping; /* fs_stop calls in progress */
    int stop_fd;         /* eventfd that wakes the workers to stop */
    atomic_int loop_err; /* a worker's fatal error (-errno), 0 if none */
    atomic_int fusermount_pid;
    char fusermount_path[64];

    pthread_mutex_t ino_lock;
    struct inode **buckets; /* ino_lock */
    size_t nbuckets, count;
    struct inode root;

    struct inode all_inodes; /* sentinel of the all_* list; ino_lock */

    pthread_mutex_t h_lock;
    struct hnode handles; /* sentinel; h_lock */

    pthread_mutex_t flight_lock;
    pthread_cond_t flight_cond;
    size_t in_flight; /* submitted ops whose reply is not sent; flight_lock */

    pthread_mutex_t q_lock; /* both queues below */
    pthread_cond_t q_cond;
    struct queue_item *inval_head, *inval_tail; /* q_lock */
    size_t inval_len;                           /* q_lock */
    struct op *work_head, *work_tail;           /* q_lock */
    int q_stop;                                 /* q_lock */
    uint64_t inval_dropped;                     /* q_lock */
    pthread_t inval_thread, work_thread;
    pthread_cond_t work_cond;

    /* The replay thread (replay.c). Requests whose ctx->pid is replay_tid
     * are acknowledged without proposing (fs__is_replay). */
    atomic_int replay_tid; /* 0 = none */
    pthread_t replay_thread;
    atomic_int replay_started; /* the inval thread reads it while fs_run sets/clears it */
    pthread_cond_t rp_cond;    /* with q_lock */
    struct queue_item *rp_head, *rp_tail; /* q_lock */
    size_t rp_len;                        /* q_lock */
    uint64_t rp_dropped;                  /* q_lock */
    _Atomic int64_t notified_rev;         /* highest revision fs_notify_change saw */
    atomic_int replay_busy;               /* inside a batch of syscalls on the mount: the
                               workers keep serving until it is 0 */
    pthread_mutex_t ov_lock;              /* the lookup overrides below */
    const struct fs__override *ov;        /* what lookups from the replay thread see
                                      (the replay thread's array) */
    size_t n_ov;
};

/* While the replay thread repeats an operation, its lookups must see the
 * key space as it was just before the change: a created name as absent, a
 * deleted one as present. Set and cleared by replay.c around each call. */
struct fs__override {
    int is_dir;
    int present;
    char *key; /* a file key, or a directory prefix (ending in '/') */
    size_t key_len;
};

enum { FS__NEW = 0, FS__RUNNING, FS__DONE };

extern const struct fuse_lowlevel_ops fs__ops;

/* fs.c: time, inode table, store helpers, ops in flight. */
int64_t fs__now_ns(void);
struct inode *fs__ino(struct fs *fs, fuse_ino_t ino);
fuse_ino_t fs__ino_num(struct fs *fs, struct inode *in);
/* Finds or makes the inode for (is_dir, key) and adds one kernel lookup. */
struct inode *fs__ino_ref(struct fs *fs, int is_dir, const char *key, size_t key_len);
/* The inode for (is_dir, key) if the table has it (no reference taken). */
fuse_ino_t fs__ino_peek(struct fs *fs, int is_dir, const char *key, size_t key_len);
void fs__ino_forget(struct fs *fs, struct inode *in, uint64_t n);
void fs__ino_detach(struct fs *fs, int is_dir, const char *key, size_t key_len);
/* After a rename from src to dst: moves every inode at or below src. */
void fs__ino_rekey(struct fs *fs, int is_dir, const char *src, size_t src_len, const char *dst,
                   size_t dst_len);
/* Whether file key k is a pending file of this mount (a created file not
 * put yet); if so fills kv's metadata (no key, no value, size 0). */
int fs__ino_pending(struct fs *fs, const char *k, size_t kl, struct fs_kv *kv);
/* Clears pexcl of the pending file k (renamed over an existing key). */
void fs__ino_pending_unexcl(struct fs *fs, const char *k, size_t kl);
/* Applies chmod/chown/utimens (FUSE_SET_ATTR_* bits of to_set) to pending
 * inode in; returns 1 and its metadata in kv, or 0 if in is not pending. */
int fs__ino_pending_set(struct fs *fs, struct inode *in, const struct stat *attr, int to_set,
                        struct fs_kv *kv);
/* Copies the inode's key (caller frees). */
char *fs__ino_key(struct fs *fs, struct inode *in, size_t *len);

/* Concatenates up to three byte strings into a malloc()ed buffer. */
char *fs__cat(const char *a, size_t al, const char *b, size_t bl, const char *c, size_t cl,
              size_t *out_len);
/* Whether some key lies in [lo, hi) (hi NULL: unbounded). 1, 0 or -errno. */
int fs__any(struct fs *fs, const char *lo, size_t lol, const char *hi, size_t hil);
/* Whether some key starts with prefix. */
int fs__any_prefix(struct fs *fs, const char *p, size_t pl);

/* The smallest child name of directory prefix d that is > after (or the
 * first one when after == NULL), skipping the hidden marker. Returns 1 with
 * *name (malloc()ed raw bytes) and *is_dir set, 0 when there is none, or
 * -errno. */
int fs__next_child(struct fs *fs, const char *d, size_t dl, const char *after, size_t afl,
                   char **name, size_t *nl, int *is_dir);

/* Whether removing the child named raw from directory d (not the root)
 * leaves d without any key, so a marker must be put to keep it. */
int fs__would_empty(struct fs *fs, const char *d, size_t dl, const char *raw, size_t rl);

/* Submits txn for op (in_flight + 1); on failure returns -errno and the
 * caller replies. done_cb of op goes to fs__op_done. */
int fs__submit(struct fs *fs, struct op *op, const struct fs_txn *txn);
/* Asks the backend for a read barrier for op (in_flight + 1); its answer
 * goes to fs__op_done. 0 or -errno (the caller replies). */
int fs__barrier(struct fs *fs, struct op *op);
/* Queues op for the completion thread (fs__op_again in ops.c). */
void fs__work_push(struct fs *fs, struct op *op);
/* Called once an op's reply was sent: frees it, in_flight - 1. */
void fs__op_finish(struct op *op);
void fs__child_free(struct child *c);

void fs__handle_add(struct fs *fs, struct hnode *h, int is_dir);
void fs__handle_del(struct hnode *h);

/* The smallest string above every string with prefix p (malloc()ed; *e
 * NULL when there is none). 0 or -ENOMEM. */
int fs__prefix_end(const char *p, size_t pl, char **e, size_t *el);

/* Queues the invalidation of the dentry of a pending file given up with
 * nothing put (the kernel would keep showing the name). */
void fs__drop_entry(struct fs *fs, const char *key, size_t key_len);

/* ops.c: metadata and value length of key k (value not fetched): 0,
 * -ENOENT or -errno; *out to be cleared with fs_kv_clear. */
int fs__stat_key(struct fs *fs, const char *k, size_t kl, struct fs_kv *out);

/* replay.c */
void *fs__replay_main(void *arg);
/* Queues a non-local change (taken over) for the replay thread. */
void fs__replay_push(struct fs *fs, struct queue_item *it);
/* Whether req comes from the replay thread. */
int fs__is_replay(struct fs *fs, fuse_req_t req);
/* For a lookup from the replay thread: -1 no override for c, 0 absent,
 * 1 present (*is_dir set). */
struct child;
int fs__replay_view(struct fs *fs, const struct child *c, int *is_dir);

/* ops.c */
void fs__handle_destroy(struct hnode *h); /* frees an fh or dh */
void fs__op_done(void *arg, int err, const struct fs_txn_result *res);
void fs__op_again(struct op *op);
int fs__attr_of_kv(struct fs *fs, fuse_ino_t ino, int is_dir, const struct fs_kv *kv,
                   struct stat *st);

#endif /* QUORUMFS_FS_CORE_H */
