/*
 * fs.h - the key space as a filesystem (FUSE low-level API, libfuse 3.14).
 *
 * This is the only public header of fs/. It does not include libfuse, so the
 * node (server/) can use it without FUSE_USE_VERSION. fs/ reads and writes
 * the store only through a struct fs_backend that the node implements:
 *
 *     struct fs_options opt;
 *     fs_options_init(&opt);
 *     opt.mountpoint = "/mnt/q";
 *     struct fs_backend be = { .data = node, .get = ..., .range = ...,
 *                              .revision = ..., .submit = ... };
 *     struct fs *fs;
 *     rc = fs_new(&opt, &be, &fs);
 *     thread A:  rc = fs_run(fs);          mounts, serves, returns on unmount
 *     node loop: fs_notify_change(fs, &c); after every applied change
 *     any:       fs_stop(fs);              e.g. from a SIGINT handler
 *     after fs_run returned: fs_free(fs);
 *
 * Threads. fs_run() serves the kernel with a pool of opt.threads_max worker
 * threads (libfuse's request decoding, our own loop so fs_stop can end it
 * at any time); the workers
 * call the backend's read functions directly (they must be thread-safe) and
 * hand mutations to submit(), which must not block on consensus. The
 * backend calls done_cb later, on a thread of its own (the node loop), once
 * the transaction was applied on this node; fs then answers the kernel. fs
 * owns two more threads while it runs: an invalidation thread that turns
 * fs_notify_change() calls into fuse_lowlevel_notify_inval_* (those calls
 * may block on kernel inode locks held by requests in flight, so they are
 * never made from a FUSE handler, from done_cb or from the node loop), and a
 * completion thread for the few operations that need a second round after
 * their first transaction (create without O_EXCL of a file that appeared
 * meanwhile, a rename whose source changed under it). done_cb itself never
 * calls back into the backend.
 *
 * Mapping. Keys under opt.prefix are shown as paths; fs/README.md and the
 * comment at the top of fs/path.c give the full, bijective spelling.
 * Directories are key prefixes; mkdir writes a marker key "<dir>/" (empty
 * value, metadata mode S_IFDIR|perms, uid, gid, mtime) so an empty
 * directory persists; such a marker is not listed. The value of a key that
 * is also a prefix ("/a" beside "/a/b") is the file named "%value" inside the
 * directory ("MNT/a/%value"); an empty key component is spelled "%empty".
 * A symlink is a key with metadata mode S_IFLNK|0777 and its target as value.
 *
 * Files: what is written through one open file description is put once,
 * whole, by the opener's last close, an fsync or the release (never by a
 * child's close); a created file is put only then (O_EXCL as an "absent"
 * compare at that put). fs/README.md, "One put per value", has the rules.
 *
 * Errors: functions return 0, a negative errno, or a negative code from
 * FS_ERRORS. Memory: every borrowed pointer is valid only for the duration
 * of the call unless a comment says otherwise.
 */
#ifndef QUORUMFS_FS_H
#define QUORUMFS_FS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes, in the range reserved for fs/ (-4000..-4099). Everything else
 * an fs_* function returns is a negative errno. */
#define FS_ERRORS(X)                                                                               \
    X(FS_EMOUNT, -4001, "cannot mount the filesystem (see fs_errmsg)")                             \
    X(FS_ESTATE, -4002, "call not allowed in the current state of the fs object")                  \
    X(FS_EOPTION, -4003, "invalid option (see fs_errmsg)")

enum fs_error {
#define FS__ERR_ENUM(name, value, text) name = value,
    FS_ERRORS(FS__ERR_ENUM)
#undef FS__ERR_ENUM
};

/* Returns a static description of rc: an FS_ERRORS code, a negative errno, or
 * 0 ("success"). */
const char *fs_strerror(int rc);

/* ------------------------------------------------------------------------ */
/* Backend: what fs/ needs from the store and the node.                      */

/* FS_LEASE_KEEP as fs_op.lease: keep whatever lease the key has now (etcd's
 * PutRequest.ignore_lease); a key that did not exist gets no lease. */
#define FS_LEASE_KEEP INT64_C(-1)

/* One key-value pair with its etcd revisions and the file metadata stored
 * beside the value. Returned by fs_backend.get/range: key and value are
 * separate malloc()ed buffers owned by the caller (free with fs_kv_clear or
 * fs_kv_array_free). value is NULL when the value was not fetched
 * (keys_only) and may be NULL when value_len is 0. */
struct fs_kv {
    char *key;
    size_t key_len;
    char *value;
    size_t value_len;
    int64_t create_revision;
    int64_t mod_revision;
    int64_t version;
    int64_t lease;    /* lease ID, 0 = none */
    uint32_t mode;    /* full st_mode (S_IFREG|0644, S_IFDIR|0755 ...); 0 = the key
                         carries no metadata (written through the etcd API) */
    uint32_t uid;     /* valid when mode != 0 */
    uint32_t gid;     /* valid when mode != 0 */
    int64_t mtime_ns; /* ns since the Unix epoch; 0 = unknown */
};

/* Frees kv->key and kv->value (not kv) and zeroes *kv. NULL-safe. */
void fs_kv_clear(struct fs_kv *kv);
/* Clears the n elements of kvs, then frees the array. NULL-safe. */
void fs_kv_array_free(struct fs_kv *kvs, size_t n);

/* A transaction: if every compare holds, apply every op in order, as one
 * atomic change at one new revision (etcd Txn with an empty failure branch).
 * A key compare names one key (range_end == NULL); a range compare covers
 * every key k with key <= k < range_end (memcmp order; a range_end of
 * exactly one 0x00 byte means "no upper bound", as in etcd). */
enum fs_cmp_type {
    FS_CMP_EXISTS = 1, /* key exists / some key in the range exists */
    FS_CMP_ABSENT,     /* key does not exist / no key in the range exists */
    FS_CMP_MOD_EQ,     /* key's mod_revision == revision (absent key: 0); key only */
    FS_CMP_MOD_LE,     /* every key in range (or the key) has mod_revision <=
                          revision; true when there is none */
};

struct fs_cmp {
    enum fs_cmp_type type;
    const char *key;
    size_t key_len;
    const char *range_end; /* NULL: a key compare */
    size_t range_end_len;
    int64_t revision; /* FS_CMP_MOD_* */
};

enum fs_op_type {
    FS_OP_PUT = 1,      /* key = value, with metadata and lease */
    FS_OP_DELETE,       /* key (no-op when absent) */
    FS_OP_DELETE_RANGE, /* every key in [key, range_end) (range_end as in fs_cmp) */
};

struct fs_op {
    enum fs_op_type type;
    const char *key;
    size_t key_len;
    const char *range_end; /* FS_OP_DELETE_RANGE */
    size_t range_end_len;
    const char *value; /* FS_OP_PUT; may be NULL when value_len == 0 */
    size_t value_len;
    int64_t lease; /* FS_OP_PUT: lease ID, 0 = none, or FS_LEASE_KEEP */
    uint32_t mode; /* FS_OP_PUT: metadata stored with the value (fs_kv) */
    uint32_t uid;
    uint32_t gid;
    int64_t mtime_ns;
};

struct fs_txn {
    const struct fs_cmp *cmps;
    size_t n_cmps;
    const struct fs_op *ops;
    size_t n_ops;
};

struct fs_txn_result {
    int succeeded;    /* 1: every compare held and the ops were applied;
                         0: some compare failed and nothing changed */
    int64_t revision; /* store revision after the txn (current one if it failed) */
};

/* Called exactly once per accepted submit(), on a backend thread, never
 * from inside submit(). err is 0 or a negative errno: -EIO or -ETIMEDOUT
 * (no quorum in time), -EFBIG (request too large), -ENOSPC (quota alarm),
 * -ENAMETOOLONG (key too long), -ECANCELED (node shutting down), ...; res is
 * valid when err == 0, and only during the call. done_cb does not block and
 * does not call back into the backend. */
typedef void (*fs_txn_done_cb)(void *arg, int err, const struct fs_txn_result *res);

/* Implemented by the node. Every function may be called concurrently from
 * any FUSE worker thread. Reads return the node's applied state (each call a
 * consistent snapshot on its own; separate calls may see different
 * revisions). Reads return 0 or a negative errno. */
struct fs_backend {
    void *data; /* passed as first argument to every function below */

    /* Latest version of one key: 0 and *out filled (caller frees with
     * fs_kv_clear), or -ENOENT. */
    int (*get)(void *data, const char *key, size_t key_len, struct fs_kv *out);

    /* Keys in [start, end) in memcmp order (end == NULL: no upper bound),
     * at most limit of them (limit > 0). *out is a malloc()ed array of *n_out
     * elements (NULL when 0; caller frees with fs_kv_array_free); *more is
     * set to 1 when further keys exist in the range. With keys_only != 0
     * every field but value is filled: value is NULL, value_len is still the
     * value's length. */
    int (*range)(void *data, const char *start, size_t start_len, const char *end, size_t end_len,
                 size_t limit, int keys_only, struct fs_kv **out, size_t *n_out, int *more);

    /* The store's current revision (the latest applied on this node). */
    int (*revision)(void *data, int64_t *out);

    /* Starts txn asynchronously. Returns 0 when accepted (done_cb will be
     * called exactly once) or a negative errno (done_cb will not be
     * called). txn and everything it points to is borrowed for the duration
     * of this call only: the backend copies or encodes what it keeps. Must
     * not wait for consensus. */
    int (*submit)(void *data, const struct fs_txn *txn, fs_txn_done_cb done_cb, void *arg);

    /* Optional (may be NULL): bytes the store uses and its quota (0 = none),
     * shown by statfs(2). */
    int (*usage)(void *data, uint64_t *bytes_used, uint64_t *bytes_quota);

    /* Optional (needed for fs_options.linearizable_open): a linearizable
     * read point (etcd's ReadIndex). Returns 0 when accepted, then calls
     * cb(arg, 0) on a backend thread once this node applied everything
     * committed when it was asked, or cb(arg, -errno) (-ETIMEDOUT,
     * -ECANCELED); or returns a negative errno and never calls cb. Callable
     * from any thread; must not wait. */
    int (*read_barrier)(void *data, void (*cb)(void *arg, int err), void *arg);

    /* Optional (may be NULL): 1 while the backend is in touch with the
     * cluster and its state is current, 0 while it serves a possibly stale
     * copy (a client mount with no endpoint answering). Shown as the mount
     * root's extended attribute user.quorumfs.connected. Any thread. */
    int (*connected)(void *data);
};

/* ------------------------------------------------------------------------ */
/* The filesystem object.                                                    */

/* Limits and defaults. */
#define FS_VALUE_BYTES_MAX_DEFAULT                                                                 \
    (1024u * 1024u) /* etcd's 1.5 MiB request cap, less
                                                       room for the key */
#define FS_TXN_OPS_MAX_DEFAULT                                                                     \
    1024u                           /* a directory rename moving more keys than
                                        this fails with EXDEV (mv then copies) */
#define FS_TIMEOUT_MS_DEFAULT 1000u /* kernel entry and attribute cache */
#define FS_THREADS_MAX_DEFAULT 8u   /* FUSE worker threads */
#define FS_PREFIX_BYTES_MAX 4096u   /* longest mount prefix */

struct fs_options {
    const char *mountpoint;    /* required; an existing directory */
    const char *prefix;        /* key prefix shown at the mount root; default "/".
                                A non-empty prefix not ending in '/' gets one
                                appended ("/app" shows keys "/app/..."). "" shows
                                the whole key space. */
    size_t prefix_len;         /* 0: strlen(prefix) (prefixes may hold any byte) */
    uint32_t entry_timeout_ms; /* kernel dentry cache */
    uint32_t attr_timeout_ms;  /* kernel attribute cache */
    size_t value_bytes_max;    /* a write that makes a file larger fails EFBIG */
    uint32_t txn_ops_max;      /* most ops fs puts in one transaction */
    uint32_t uid, gid;         /* owner of keys without metadata and of
                                directories without marker (default: the
                                caller's real uid/gid, root for a node run as
                                root); files created through the mount belong
                                to their creator */
    uint32_t file_mode;        /* permissions of keys without metadata (0644) */
    uint32_t dir_mode;         /* permissions of directories without marker (0755) */
    uint32_t threads_max;      /* FUSE worker threads */
    int allow_other;           /* -o allow_other: other users may enter, as the
                                modes allow; default 1 when run as root (as
                                another user it needs user_allow_other in
                                /etc/fuse.conf), else 0 */
    int default_permissions;   /* -o default_permissions (the kernel checks
                                modes: others read 0644 files, only the owner
                                writes); default 1 */
    int debug;                 /* libfuse debug output on stderr */
    const char *fsname;        /* shown in /proc/mounts; default "quorumfs" */
    int replay;                /* replay non-local changes through the mountpoint
                                so the kernel emits inotify events; default 1 */
    int linearizable_open;     /* open(2) of a file waits for be.read_barrier, so
                                it reads every write committed before it on
                                any node; default 0 (the local applied state) */
    /* Optional: called once by fs_run, on its thread, when the mount is up
     * and served (before that, a stat of the mountpoint still shows the
     * directory below it). Must not call back into fs. */
    void (*mounted_cb)(void *arg);
    void *mounted_arg;
    int mount_nonempty; /* mount over a directory that holds files (hidden
                                while mounted); default 0: fs_run refuses */
};

/* Fills opt with the defaults above (mountpoint NULL). */
void fs_options_init(struct fs_options *opt);

struct fs;

/* Validates opt and creates an fs object (nothing is mounted yet). opt and
 * be are copied (strings too). Returns 0, FS_EOPTION or -ENOMEM. */
int fs_new(const struct fs_options *opt, const struct fs_backend *be, struct fs **out);

/* Mounts opt.mountpoint and serves requests on opt.threads_max worker
 * threads until the filesystem is unmounted (umount, fusermount -u) or
 * fs_stop is called. Before returning it waits until every submitted transaction's
 * done_cb arrived (the backend must keep answering, with an error if it is
 * shutting down), stops its own threads and unmounts. Call once per fs.
 * Before mounting it checks the mountpoint: a stale mount left by a killed
 * process (stat fails with ENOTCONN or ECONNABORTED) is detached and
 * reused; a live mount (another quorumfs, any filesystem) or, unless
 * opt.mount_nonempty, a directory holding files is refused with FS_EMOUNT
 * and a message saying so (fs_errmsg).
 * Returns 0, FS_EMOUNT (see fs_errmsg), FS_ESTATE or a negative errno. */
int fs_run(struct fs *fs);

/* Asks fs_run to return: wakes and stops the workers and detaches the
 * mount (umount2 MNT_DETACH; as non-root, fusermount3 -u -z). If a file in
 * the mount is still open, fs_run closes the connection after a short wait
 * and that file's descriptors then fail with ENOTCONN. Safe from any thread
 * and from a signal handler (atomic stores, write, umount2, fork, execve).
 * Before fs_run started it makes fs_run return right after mounting. */
void fs_stop(struct fs *fs);

/* Frees fs. Must not be called while fs_run is running. NULL-safe. */
void fs_free(struct fs *fs);

/* A static message about the last FS_EMOUNT/FS_EOPTION (valid until the next
 * fs_* call on fs from any thread). */
const char *fs_errmsg(const struct fs *fs);

/* One applied change to one key. */
enum fs_change_type {
    FS_CHANGE_PUT = 1,
    FS_CHANGE_DELETE,
};

struct fs_change {
    enum fs_change_type type;
    const char *key;
    size_t key_len;
    int64_t revision; /* the revision that made the change */
    int created;      /* FS_CHANGE_PUT: 1 if the key did not exist before */
    int local;        /* 1 if the change came from this fs object's submit();
                         the replay thread replays only non-local changes
                         through the mountpoint (inotify events) */
    int more;         /* 1 if another change of the same revision follows in
                         the next call: the replay thread sees one
                         transaction whole (a rename is a delete and a put
                         at one revision). 0 is always safe. */
    int meta_only;    /* FS_CHANGE_PUT of an existing key: 1 if the value bytes
                         did not change, only the metadata (chmod, chown,
                         touch): replayed as chmod/chown/utimensat (IN_ATTRIB)
                         instead of a write. 0 is always safe (replayed as a
                         write). */
};

/* Tells fs that a change was applied (any origin: this mount, a gRPC client,
 * another node, a lease expiry). Call after every applied change, in
 * revision order, from the node loop; a transaction that touched several
 * keys is several calls (each but the last with more = 1). Never blocks: it
 * queues the key (copied) for the invalidation thread, which drops the
 * kernel's cached attributes, data and directory entries for it, then hands
 * non-local changes to the replay thread (fs/replay.c), which repeats them
 * as filesystem operations on the mountpoint where the kernel holds the
 * inode or its parent, so that inotify watchers see them. If a queue is
 * full (FS_INVAL_QUEUE_MAX, FS_REPLAY_QUEUE_MAX) the change is dropped
 * there: caches then expire by their timeouts, and no event is replayed.
 * Returns 0 or -ENOMEM; a no-op (0) when fs_run is not running. */
#define FS_INVAL_QUEUE_MAX 65536u
#define FS_REPLAY_QUEUE_MAX 65536u
int fs_notify_change(struct fs *fs, const struct fs_change *change);

/* Tells fs that the whole key space may have changed at once (the node
 * installed a snapshot): the invalidation thread drops the kernel's cached
 * attributes, data and entries of every inode it holds; negative entries
 * expire by entry_timeout_ms. The changes the snapshot covered are not
 * replayed as inotify events. Same rules as fs_notify_change. */
int fs_notify_reset(struct fs *fs);

/* ------------------------------------------------------------------------ */
/* Path <-> key mapping (pure functions, exposed for tools and tests).       */

/* Longest name a path component may have (NAME_MAX). Longer encoded names
 * are shown in a hashed spelling (see fs/README.md). */
#define FS_NAME_MAX 255u

/* Encodes the key component raw[0..raw_len) as a file name into out
 * (NUL-terminated; out_size must be >= FS_NAME_MAX + 1). Returns the name
 * length (1..FS_NAME_MAX). Never fails. Total over all byte strings: a '/'
 * (which key components never hold) would be spelled %2F. */
size_t fs_name_encode(const char *raw, size_t raw_len, char *out, size_t out_size);

/* Decodes a file name produced by fs_name_encode. On success returns the
 * raw length (>= 0) and writes raw bytes to out (out_size >= name_len
 * suffices). Returns -EINVAL for a name no key component encodes to (a
 * non-canonical spelling, a reserved name such as "%value", or a hashed long
 * name, which only a directory lookup can resolve). */
long fs_name_decode(const char *name, size_t name_len, char *out, size_t out_size);

#ifdef __cplusplus
}
#endif

#endif /* QUORUMFS_FS_H */
