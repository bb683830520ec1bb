/*
 * mount.c - `quorumfs mount [flags] MOUNTPOINT`: a client mount of any etcd
 * v3 cluster (quorumfs or etcd), not a member.
 *
 * The process keeps a local copy of the key space under --prefix (a
 * store_cache in RocksDB under --cache-dir), fed by a paginated Range at one
 * revision and then a Watch from the next revision. fs/ serves reads from
 * that copy and sends writes to the cluster as one Txn each; changes seen on
 * the watch are handed to fs_notify_change, so the replay thread repeats the
 * ones that did not come from this mount as filesystem operations and
 * inotify watchers on this host see them.
 *
 * Threads: the main thread runs a libuv loop that owns the client, the
 * watch, the copy's writer side and every pending write; fs_run serves the
 * kernel on threads of its own. FUSE workers touch only the copy's readers
 * (thread-safe) and the submit queue (guarded by m->mu), then wake the loop.
 *
 * Which changes are this mount's own: a Txn's answer gives the revision it
 * made, but the watch may deliver that revision's events before the answer
 * arrives. So a watch response received while some Txn sent earlier is
 * still unanswered waits in an ordered queue until every such Txn has been
 * answered; by then the revisions of this mount's writes are known, and
 * events at those revisions are passed on as local (not replayed).
 *
 * Read your writes: a write is answered to the kernel only once the copy has
 * caught up with the revision the cluster gave it (from the watch, or from a
 * progress notification requested for that purpose), so a `cat` right after
 * `echo > f` on this host shows the new value. If the copy has not caught up
 * within --command-timeout the write is answered anyway: it was applied.
 *
 * Resume: after a disconnect the watch restarts at the copy's revision + 1
 * on whatever endpoint the client reaches. If that revision was compacted,
 * the key space is loaded again, and the difference between the old copy and
 * the new state is passed on as created, modified and deleted changes, so
 * watchers miss nothing and see nothing twice. While no endpoint answers,
 * reads serve the last state seen, and writes fail at once with EROFS once
 * the disconnect is older than --dial-timeout.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "client/client.h"
#include "fs/fs.h"
#include "server/mount.h"
#include "store/store.h"

#define MOUNT_ENDPOINTS_MAX 16
#define MOUNT_PAGE_KEYS 1000    /* keys per Range page of a (re)load */
#define MOUNT_RETRY_MIN_MS 100u /* watch restart backoff */
#define MOUNT_RETRY_MAX_MS 1000u
#define MOUNT_EVQ_MAX 65536u    /* watch responses waiting to be classified */
#define MOUNT_MY_REVS_MAX 4096u /* revisions of this mount's writes not yet seen */
#define MOUNT_TICK_MS 100u

/* ------------------------------------------------------------ logging */

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ quorumfs mount: %s\n", tm.tm_year + 1900,
            tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
            line);
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------ flags */

struct mount_config {
    const char *endpoints[MOUNT_ENDPOINTS_MAX];
    size_t n_endpoints;
    char *endpoints_buf;
    const char *cacert, *cert, *key;
    char *user; /* --user NAME[:PASSWORD] (split here) */
    const char *password;
    uint32_t dial_timeout_ms;
    uint32_t command_timeout_ms;
    const char *prefix;
    char cache_dir[PATH_MAX];
    bool read_only, foreground, nonempty, debug;
    bool linearizable;            /* --mount-consistency=linearizable */
    uint32_t uid, gid;            /* --mount-uid, --mount-gid: owner of keys without metadata */
    uint32_t file_mode, dir_mode; /* --mount-file-mode, --mount-dir-mode (octal) */
    uint64_t max_request_bytes;
    const char *log_file;
    char mountpoint[PATH_MAX];
};

void mount_usage(FILE *out) {
    fputs("usage: quorumfs mount [flags] MOUNTPOINT\n"
          "\n"
          "Mounts the key space of an etcd v3 cluster (quorumfs or etcd) at MOUNTPOINT as a\n"
          "client, not a member. Keys are files, prefixes are directories, changes made\n"
          "anywhere are inotify events here. The last state seen is kept under --cache-dir\n"
          "and served read-only while no endpoint answers.\n"
          "\n"
          "flags (etcdctl's names):\n"
          "  --endpoints URL,...      cluster endpoints, tried in turn (default\n"
          "                           http://127.0.0.1:2379); https:// needs --cacert\n"
          "                           or the system's CAs\n"
          "  --cacert FILE            CA bundle that verifies the servers\n"
          "  --cert FILE, --key FILE  client certificate and key (client-cert auth)\n"
          "  --user NAME[:PASSWORD]   etcd user (auth); --password PASSWORD\n"
          "  --dial-timeout DURATION  per endpoint connection attempt (default 2s); also\n"
          "                           how long a disconnect lasts before writes fail fast\n"
          "  --command-timeout DURATION  per write (default 5s)\n"
          "\n"
          "quorumfs's own:\n"
          "  --prefix KEYPREFIX       the part of the key space shown (default /)\n"
          "  --cache-dir DIR          where the local copy is kept (default\n"
          "                           /var/cache/quorumfs/mount-<mountpoint path>)\n"
          "  --read-only              refuse every write with EROFS\n"
          "  --foreground             stay in the foreground (default: detach once mounted)\n"
          "  --log-file FILE          log here (default: stderr; /dev/null once detached)\n"
          "  --mount-nonempty         allow mounting over a non-empty directory\n"
          "  --mount-uid UID, --mount-gid GID\n"
          "                           owner of files and directories without stored metadata\n"
          "                           (keys written through the etcd API; default 0, root)\n"
          "  --mount-file-mode MODE, --mount-dir-mode MODE\n"
          "                           their permissions (default 0644 and 0755); other users\n"
          "                           read (allow_other), the kernel checks the modes\n"
          "  --mount-consistency local|linearizable\n"
          "                           linearizable: open(2) first asks the cluster for its\n"
          "                           revision and waits until the copy has it (default local)\n"
          "  --max-request-bytes N    largest value a file may hold (default 1048576; match\n"
          "                           the servers' --max-request-bytes)\n"
          "  --help                   this text\n"
          "\n"
          "Durations are Go-style: 500ms, 2s, 1m (a bare number is seconds).\n"
          "Errors of a write (close(2), fsync(2)): EROFS, EACCES, EFBIG, ENOSPC, EEXIST: not\n"
          "applied; ETIMEDOUT: sent, outcome unknown. getfattr -d -m user.quorumfs on the\n"
          "mountpoint shows the copy's revision and whether it is connected.\n",
          out);
}

static int parse_duration_ms(const char *s, uint32_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0) return -1;
    double mul;
    if (*end == '\0' || strcmp(end, "s") == 0)
        mul = 1000;
    else if (strcmp(end, "ms") == 0)
        mul = 1;
    else if (strcmp(end, "m") == 0)
        mul = 60000;
    else if (strcmp(end, "h") == 0)
        mul = 3600000;
    else
        return -1;
    double ms = v * mul;
    if (ms > 86400000.0) return -1;
    *out = (uint32_t)ms;
    return 0;
}

static void default_cache_dir(const char *mountpoint, char *out, size_t n) {
    /* /a/b/mnt -> /var/cache/quorumfs/mount-a-b-mnt ('-' in names doubled). */
    size_t o = (size_t)snprintf(out, n, "/var/cache/quorumfs/mount");
    for (const char *p = mountpoint; *p && o + 3 < n; p++) {
        if (*p == '/') {
            if (p[1] != '\0') out[o++] = '-';
        } else if (*p == '-') {
            out[o++] = '-';
            out[o++] = '-';
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
}

/* Returns 0, 1 after --help, or -1 with a message in err. */
static int config_parse(struct mount_config *c, int argc, char **argv, char *err, size_t el) {
    memset(c, 0, sizeof *c);
    c->dial_timeout_ms = 2000;
    c->command_timeout_ms = 5000;
    c->prefix = "/";
    c->file_mode = 0644;
    c->dir_mode = 0755;
    const char *endpoints = "http://127.0.0.1:2379";
    const char *cache_dir = NULL, *mountpoint = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            mount_usage(stdout);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0) {
            if (mountpoint) {
                snprintf(err, el, "one MOUNTPOINT expected, got '%s' and '%s'", mountpoint, a);
                return -1;
            }
            mountpoint = a;
            continue;
        }
        char name[64];
        const char *val = NULL;
        const char *eq = strchr(a, '=');
        size_t nl = eq ? (size_t)(eq - a) : strlen(a);
        if (nl >= sizeof name) nl = sizeof name - 1;
        memcpy(name, a, nl);
        name[nl] = '\0';
        bool is_bool = strcmp(name, "--read-only") == 0 || strcmp(name, "--foreground") == 0 ||
                       strcmp(name, "--mount-nonempty") == 0 || strcmp(name, "--debug") == 0;
        if (eq)
            val = eq + 1;
        else if (!is_bool) {
            if (i + 1 >= argc) {
                snprintf(err, el, "flag %s needs a value", name);
                return -1;
            }
            val = argv[++i];
        }
        if (is_bool) {
            bool b = !val || strcmp(val, "true") == 0 || strcmp(val, "1") == 0;
            if (strcmp(name, "--read-only") == 0) c->read_only = b;
            if (strcmp(name, "--foreground") == 0) c->foreground = b;
            if (strcmp(name, "--mount-nonempty") == 0) c->nonempty = b;
            if (strcmp(name, "--debug") == 0) c->debug = b;
        } else if (strcmp(name, "--endpoints") == 0) {
            endpoints = val;
        } else if (strcmp(name, "--cacert") == 0) {
            c->cacert = val;
        } else if (strcmp(name, "--cert") == 0) {
            c->cert = val;
        } else if (strcmp(name, "--key") == 0) {
            c->key = val;
        } else if (strcmp(name, "--user") == 0) {
            free(c->user);
            c->user = strdup(val);
            if (!c->user) return -1;
            char *colon = strchr(c->user, ':');
            if (colon) {
                *colon = '\0';
                c->password = colon + 1;
            }
        } else if (strcmp(name, "--password") == 0) {
            c->password = val;
        } else if (strcmp(name, "--dial-timeout") == 0 || strcmp(name, "--command-timeout") == 0) {
            uint32_t ms;
            if (parse_duration_ms(val, &ms) != 0 || ms == 0) {
                snprintf(err, el, "%s: '%s' is not a duration (e.g. 500ms, 2s)", name, val);
                return -1;
            }
            if (name[2] == 'd')
                c->dial_timeout_ms = ms;
            else
                c->command_timeout_ms = ms;
        } else if (strcmp(name, "--mount-consistency") == 0) {
            if (strcmp(val, "linearizable") == 0)
                c->linearizable = true;
            else if (strcmp(val, "local") == 0)
                c->linearizable = false;
            else {
                snprintf(err, el, "--mount-consistency: 'local' or 'linearizable', not '%s'", val);
                return -1;
            }
        } else if (strcmp(name, "--mount-uid") == 0 || strcmp(name, "--mount-gid") == 0 ||
                   strcmp(name, "--mount-file-mode") == 0 ||
                   strcmp(name, "--mount-dir-mode") == 0) {
            bool mode = strstr(name, "mode") != NULL;
            char *end;
            errno = 0;
            unsigned long v = strtoul(val, &end, mode ? 8 : 10);
            if (errno || *end || !*val || (mode && v > 07777) || v > UINT32_MAX - 1) {
                snprintf(err, el, "%s: '%s' is not a%s", name, val,
                         mode ? "n octal mode (e.g. 0644)" : " number");
                return -1;
            }
            if (strcmp(name, "--mount-uid") == 0) c->uid = (uint32_t)v;
            if (strcmp(name, "--mount-gid") == 0) c->gid = (uint32_t)v;
            if (strcmp(name, "--mount-file-mode") == 0) c->file_mode = (uint32_t)v;
            if (strcmp(name, "--mount-dir-mode") == 0) c->dir_mode = (uint32_t)v;
        } else if (strcmp(name, "--max-request-bytes") == 0) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(val, &end, 10);
            if (errno || *end || v == 0) {
                snprintf(err, el, "--max-request-bytes: '%s' is not a positive number", val);
                return -1;
            }
            c->max_request_bytes = v;
        } else if (strcmp(name, "--prefix") == 0) {
            c->prefix = val;
        } else if (strcmp(name, "--cache-dir") == 0) {
            cache_dir = val;
        } else if (strcmp(name, "--log-file") == 0) {
            c->log_file = val;
        } else {
            snprintf(err, el, "unknown flag %s (see quorumfs mount --help)", name);
            return -1;
        }
    }
    if (!mountpoint) {
        snprintf(err, el, "MOUNTPOINT missing (see quorumfs mount --help)");
        return -1;
    }
    if (c->password && !c->user) {
        snprintf(err, el, "--password needs --user");
        return -1;
    }
    if (!realpath(mountpoint, c->mountpoint)) {
        /* A stale mount answers ENOTCONN: keep the path as given. */
        if (errno != ENOTCONN && errno != ECONNABORTED) {
            snprintf(err, el, "mountpoint %s: %s", mountpoint, strerror(errno));
            return -1;
        }
        snprintf(c->mountpoint, sizeof c->mountpoint, "%s", mountpoint);
    }
    if (cache_dir)
        snprintf(c->cache_dir, sizeof c->cache_dir, "%s", cache_dir);
    else
        default_cache_dir(c->mountpoint, c->cache_dir, sizeof c->cache_dir);
    c->endpoints_buf = strdup(endpoints);
    if (!c->endpoints_buf) return -1;
    char *save = NULL;
    for (char *t = strtok_r(c->endpoints_buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (!*t) continue;
        if (c->n_endpoints == MOUNT_ENDPOINTS_MAX) {
            snprintf(err, el, "--endpoints: at most %d", MOUNT_ENDPOINTS_MAX);
            return -1;
        }
        c->endpoints[c->n_endpoints++] = t;
    }
    if (c->n_endpoints == 0) {
        snprintf(err, el, "--endpoints: no endpoint given");
        return -1;
    }
    return 0;
}

static void config_free(struct mount_config *c) {
    free(c->endpoints_buf);
    free(c->user);
}

/* ------------------------------------------------------------ mountpoint */

static int mkdir_p(const char *path, mode_t mode) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, mode) != 0 && errno != EEXIST) return -errno;
        *p = '/';
    }
    if (mkdir(tmp, mode) != 0 && errno != EEXIST) return -errno;
    return 0;
}

/* Refuses a mountpoint that is already a live mount or (unless allowed) a
 * non-empty directory; detaches a stale mount left by a killed process. */
static int check_mountpoint(const struct mount_config *c, char *err, size_t el) {
    struct stat st, pst;
    if (stat(c->mountpoint, &st) != 0) {
        if (errno == ENOTCONN || errno == ECONNABORTED) {
            if (umount2(c->mountpoint, MNT_DETACH) == 0) {
                logf_("detached a stale mount at %s", c->mountpoint);
                if (stat(c->mountpoint, &st) == 0) goto check;
            }
        }
        snprintf(err, el, "mountpoint %.900s: %s", c->mountpoint, strerror(errno));
        return -1;
    }
check:
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, el, "mountpoint %.900s is not a directory", c->mountpoint);
        return -1;
    }
    char parent[PATH_MAX + 4];
    snprintf(parent, sizeof parent, "%s/..", c->mountpoint);
    if (strcmp(c->mountpoint, "/") == 0 || stat(parent, &pst) != 0 || pst.st_dev != st.st_dev ||
        pst.st_ino == st.st_ino) {
        snprintf(err, el, "%.400s is already a mount point; unmount it first (umount %.400s)",
                 c->mountpoint, c->mountpoint);
        return -1;
    }
    if (!c->nonempty) {
        int n = 0;
        DIR *d = opendir(c->mountpoint);
        for (struct dirent *e; d && (e = readdir(d)) != NULL;)
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) n++;
        if (d) closedir(d);
        if (n > 0) {
            snprintf(err, el,
                     "mountpoint %.900s is not empty (its files would be hidden); "
                     "use --mount-nonempty to mount over them",
                     c->mountpoint);
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ state */

/* A write handed over by a FUSE worker: the fs_txn deep-copied into one
 * allocation (the strings follow the struct), leases resolved. */
struct sub {
    struct sub *next;
    fs_txn_done_cb done_cb;
    void *arg;
    struct fs_cmp *cmps;
    size_t n_cmps;
    struct fs_op *ops;
    size_t n_ops;
    /* Loop thread only, once sent: */
    struct mnt *m;
    uint64_t seq;
    int err;
    struct fs_txn_result res;
    uint64_t deadline_ms;
    struct sub *wait_next; /* on m->waiting: answered, copy not caught up */
};

/* A linearizable read point asked by fs (read_barrier). */
struct barrier {
    struct barrier *next;
    void (*cb)(void *arg, int err);
    void *arg;
    struct mnt *m;
    int64_t rev;          /* the cluster's revision when asked */
    uint64_t deadline_ms; /* loop: waiting for the copy */
};

/* A watch response that arrived while earlier writes were unanswered. */
struct evq_item {
    struct evq_item *next;
    uint64_t seq_hi; /* writes sent before it arrived: all <= seq_hi */
    size_t len;
    uint8_t bytes[]; /* the packed WatchResponse */
};

struct mnt {
    struct mount_config *cfg;
    uv_loop_t loop;
    struct client *cl;
    struct store_cache *cache;
    struct fs *fs;
    pthread_t fs_thread;
    bool fs_started;
    int fs_rc;
    int ready_fd; /* detaching parent waits on it; -1 if none */

    pthread_mutex_t mu; /* guards subq_*, barq and stopping */
    struct sub *subq_head, *subq_tail;
    struct barrier *barq; /* asked, not yet sent (LIFO is fine) */
    bool stopping;
    _Atomic int online;                /* the watch is established */
    _Atomic uint64_t offline_since_ms; /* 0 while online or never online */

    uv_async_t wake; /* submits queued, fs_run returned, mounted */
    _Atomic int fs_exited;
    _Atomic int mounted;
    uv_timer_t tick;
    uv_timer_t retry;
    uv_timer_t fs_timer; /* starts fs after --dial-timeout even if not in sync */
    uv_signal_t sig[3];
    bool closing;

    /* Loop thread only. */
    char *prefix; /* key prefix mirrored (the fs prefix, '/'-terminated) */
    size_t prefix_len;
    char *pend; /* its range_end */
    size_t pend_len;
    struct client_stream *ws;
    bool ws_created;
    bool need_reload;
    bool loading;
    struct store_cache_reload *reload;
    int64_t reload_rev;
    uint8_t *next_key;
    size_t next_key_len;
    uint32_t retry_ms;
    uint64_t seq_next;           /* sequence of the next write sent */
    struct sub *inflight;        /* sent, unanswered (linked by next) */
    struct sub *waiting;         /* answered, waiting for the copy (wait_next) */
    struct barrier *bar_waiting; /* answered, waiting for the copy */
    bool serializable;           /* load with serializable ranges (a learner) */
    bool ever_connected;         /* some endpoint answered since the start */
    size_t tls_failures;         /* TLS handshakes refused before that */
    char tls_fatal[512];         /* set: startup fails with this line */
    struct evq_item *evq_head, *evq_tail;
    size_t evq_len;
    int64_t my_revs[MOUNT_MY_REVS_MAX];
    size_t n_my_revs;
    bool progress_asked;
    uint64_t cluster_id;
};

static struct mnt *g_mnt; /* for the fs backend's connected() and signals */

/* ------------------------------------------------------------ fs backend (any thread) */

static int cache_errno(int rc) {
    switch (rc) {
    case 0:
        return 0;
    case STORE_ENOMEM:
        return -ENOMEM;
    case STORE_EKEYNOTFOUND:
        return -ENOENT;
    default:
        return -EIO;
    }
}

static int copy_kv(const struct store_kv *src, struct fs_kv *dst, bool with_value) {
    memset(dst, 0, sizeof *dst);
    dst->key = malloc(src->key.len ? src->key.len : 1);
    if (!dst->key) return -ENOMEM;
    memcpy(dst->key, src->key.base, src->key.len);
    dst->key_len = src->key.len;
    dst->value_len = src->value.len;
    if (with_value && src->value.len) {
        dst->value = malloc(src->value.len);
        if (!dst->value) {
            fs_kv_clear(dst);
            return -ENOMEM;
        }
        memcpy(dst->value, src->value.base, src->value.len);
    }
    dst->create_revision = src->create_revision;
    dst->mod_revision = src->mod_revision;
    dst->version = src->version;
    dst->lease = src->lease;
    if (src->mode != 0) { /* quorumfs's extension: written through a mount */
        dst->mode = src->mode;
        dst->uid = src->uid;
        dst->gid = src->gid;
        dst->mtime_ns = src->mtime_ns;
        return 0;
    }
    /* etcd keeps no file metadata: mode 0, and fs shows its defaults. The
     * one exception is a directory marker ("<dir>/", empty, as mkdir writes
     * it), which fs recognises by its mode. */
    if (src->key.len > 0 && ((const char *)src->key.base)[src->key.len - 1] == '/' &&
        src->value.len == 0)
        dst->mode = S_IFDIR | 0755;
    return 0;
}

static int be_get(void *data, const char *key, size_t key_len, struct fs_kv *out) {
    struct mnt *m = data;
    struct store_range_result r = {0};
    int rc = store_cache_get(m->cache, key, key_len, &r);
    if (rc) return cache_errno(rc);
    if (r.n_kvs == 0) {
        store_range_result_release(&r);
        return -ENOENT;
    }
    rc = copy_kv(&r.kvs[0], out, true);
    store_range_result_release(&r);
    return rc;
}

static int be_range(void *data, const char *start, size_t start_len, const char *end,
                    size_t end_len, size_t limit, int keys_only, struct fs_kv **out, size_t *n_out,
                    int *more) {
    struct mnt *m = data;
    *out = NULL;
    *n_out = 0;
    *more = 0;
    static const char zero[1] = {0};
    if (!end) {
        end = zero;
        end_len = 1;
    }
    struct store_range_result r = {0};
    int rc = store_cache_range(m->cache, start, start_len, end, end_len, limit, keys_only != 0, &r);
    if (rc) return cache_errno(rc);
    if (r.n_kvs) {
        struct fs_kv *kvs = calloc(r.n_kvs, sizeof *kvs);
        if (!kvs) {
            store_range_result_release(&r);
            return -ENOMEM;
        }
        for (size_t i = 0; i < r.n_kvs; i++) {
            rc = copy_kv(&r.kvs[i], &kvs[i], !keys_only);
            if (rc) {
                fs_kv_array_free(kvs, i);
                store_range_result_release(&r);
                return rc;
            }
        }
        *out = kvs;
        *n_out = r.n_kvs;
    }
    *more = r.more;
    store_range_result_release(&r);
    return 0;
}

static int be_revision(void *data, int64_t *out) {
    struct mnt *m = data;
    *out = store_cache_revision(m->cache);
    return 0;
}

static void wake_loop(struct mnt *m);

static int be_read_barrier(void *data, void (*cb)(void *arg, int err), void *arg) {
    struct mnt *m = data;
    struct barrier *b = calloc(1, sizeof *b);
    if (!b) return -ENOMEM;
    b->cb = cb;
    b->arg = arg;
    b->m = m;
    pthread_mutex_lock(&m->mu);
    b->next = m->barq;
    m->barq = b;
    pthread_mutex_unlock(&m->mu);
    wake_loop(m);
    return 0;
}

static int be_connected(void *data) {
    struct mnt *m = data;
    return atomic_load(&m->online);
}

/* True if an op after ops[i] puts the key ops[i] names: etcd refuses a txn
 * naming one key twice, and a delete followed by a put is the put. */
static bool later_put(const struct fs_txn *txn, size_t i) {
    const struct fs_op *d = &txn->ops[i];
    for (size_t j = i + 1; j < txn->n_ops; j++) {
        const struct fs_op *p = &txn->ops[j];
        if (p->type == FS_OP_PUT && p->key_len == d->key_len &&
            memcmp(p->key, d->key, d->key_len) == 0)
            return true;
    }
    return false;
}

static char *copy_bytes(char **pool, const char *p, size_t n) {
    char *d = *pool;
    if (n) memcpy(d, p, n);
    *pool += n;
    return d;
}

static void wake_loop(struct mnt *m) {
    uv_async_send(&m->wake);
}

static int be_submit(void *data, const struct fs_txn *txn, fs_txn_done_cb done_cb, void *arg) {
    struct mnt *m = data;
    if (m->cfg->read_only) return -EROFS;
    size_t bytes = sizeof(struct sub) + txn->n_cmps * sizeof(struct fs_cmp) +
                   txn->n_ops * sizeof(struct fs_op);
    for (size_t i = 0; i < txn->n_cmps; i++)
        bytes += txn->cmps[i].key_len + (txn->cmps[i].range_end ? txn->cmps[i].range_end_len : 0);
    for (size_t i = 0; i < txn->n_ops; i++)
        bytes += txn->ops[i].key_len + (txn->ops[i].range_end ? txn->ops[i].range_end_len : 0) +
                 txn->ops[i].value_len;
    struct sub *s = calloc(1, bytes);
    if (!s) return -ENOMEM;
    s->done_cb = done_cb;
    s->arg = arg;
    s->cmps = (struct fs_cmp *)(s + 1);
    s->ops = (struct fs_op *)(s->cmps + txn->n_cmps);
    char *pool = (char *)(s->ops + txn->n_ops);
    for (size_t i = 0; i < txn->n_cmps; i++) {
        const struct fs_cmp *f = &txn->cmps[i];
        struct fs_cmp *d = &s->cmps[s->n_cmps++];
        *d = *f;
        d->key = copy_bytes(&pool, f->key, f->key_len);
        if (f->range_end) d->range_end = copy_bytes(&pool, f->range_end, f->range_end_len);
    }
    for (size_t i = 0; i < txn->n_ops; i++) {
        const struct fs_op *f = &txn->ops[i];
        if (f->type == FS_OP_DELETE && later_put(txn, i)) continue;
        struct fs_op *d = &s->ops[s->n_ops++];
        *d = *f;
        d->key = copy_bytes(&pool, f->key, f->key_len);
        if (f->range_end) d->range_end = copy_bytes(&pool, f->range_end, f->range_end_len);
        if (f->type == FS_OP_PUT) {
            d->value = copy_bytes(&pool, f->value, f->value_len);
            if (f->lease == FS_LEASE_KEEP) {
                /* etcd's ignore_lease fails on an absent key: resolve the
                 * key's lease from the copy instead. */
                struct store_range_result r = {0};
                d->lease = 0;
                if (store_cache_get(m->cache, f->key, f->key_len, &r) == 0 && r.n_kvs == 1)
                    d->lease = r.kvs[0].lease;
                store_range_result_release(&r);
            }
        }
    }
    pthread_mutex_lock(&m->mu);
    if (m->subq_tail)
        m->subq_tail->next = s;
    else
        m->subq_head = s;
    m->subq_tail = s;
    pthread_mutex_unlock(&m->mu);
    wake_loop(m);
    return 0;
}

/* ------------------------------------------------------------ key ranges */

/* etcd's prefix range end: the prefix with its last byte below 0xff
 * incremented and what follows dropped; "\0" (no bound) for an empty or
 * all-0xff prefix. Returns a malloc()ed buffer. */
static char *prefix_range_end(const char *p, size_t n, size_t *out_len) {
    char *e = malloc(n ? n : 1);
    if (!e) return NULL;
    memcpy(e, p, n);
    for (size_t i = n; i > 0; i--) {
        if ((unsigned char)e[i - 1] != 0xff) {
            e[i - 1]++;
            *out_len = i;
            return e;
        }
    }
    e[0] = '\0';
    *out_len = 1;
    return e;
}

/* ------------------------------------------------------------ writes (loop) */

static int grpc_to_errno(const struct client_status *st) {
    const char *msg = st->message ? st->message : "";
    if (st->code != 0 && strstr(msg, "not supported for learner")) return -EROFS;
    switch (st->code) {
    case 0:
        return 0;
    case 1:  /* CANCELLED */
    case 4:  /* DEADLINE_EXCEEDED */
    case 14: /* UNAVAILABLE */
        return st->maybe_applied ? -ETIMEDOUT : -EROFS;
    case 7:  /* PERMISSION_DENIED */
    case 16: /* UNAUTHENTICATED */
        return -EACCES;
    case 8: /* RESOURCE_EXHAUSTED: quota, or a message too large */
        if (strstr(msg, "space exceeded")) return -ENOSPC;
        return -EFBIG;
    case 3: /* INVALID_ARGUMENT */
        if (strstr(msg, "too large") || strstr(msg, "too many operations")) return -EFBIG;
        return -EINVAL;
    case 5: /* NOT_FOUND (lease) */
        return -ENOENT;
    default:
        return st->maybe_applied ? -ETIMEDOUT : -EIO;
    }
}

static void sub_finish(struct sub *s) {
    s->done_cb(s->arg, s->err, s->err ? NULL : &s->res);
    free(s);
}

static void inflight_remove(struct mnt *m, struct sub *s) {
    for (struct sub **pp = &m->inflight; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            s->next = NULL;
            return;
        }
    }
}

static uint64_t inflight_min_seq(const struct mnt *m) {
    uint64_t min = UINT64_MAX;
    for (const struct sub *s = m->inflight; s; s = s->next)
        if (s->seq < min) min = s->seq;
    return min;
}

static void watch_send_progress(struct mnt *m);
static void evq_drain(struct mnt *m);

/* Answers every waiting write whose revision the copy reached (or all). */
static void waiting_fire(struct mnt *m, bool all) {
    int64_t rev = store_cache_revision(m->cache);
    uint64_t now = now_ms();
    struct sub **pp = &m->waiting;
    while (*pp) {
        struct sub *s = *pp;
        if (all || s->res.revision <= rev || now >= s->deadline_ms) {
            *pp = s->wait_next;
            sub_finish(s);
        } else {
            pp = &s->wait_next;
        }
    }
    struct barrier **bp = &m->bar_waiting;
    while (*bp) {
        struct barrier *b = *bp;
        if (all || b->rev <= rev || now >= b->deadline_ms) {
            *bp = b->next;
            /* Past the deadline the copy did not catch up: no read point. */
            b->cb(b->arg, all && m->closing ? -ECANCELED : b->rev <= rev ? 0 : -ETIMEDOUT);
            free(b);
        } else {
            bp = &b->next;
        }
    }
}

static void my_revs_add(struct mnt *m, int64_t rev) {
    if (m->n_my_revs == MOUNT_MY_REVS_MAX) { /* forget the oldest */
        memmove(m->my_revs, m->my_revs + 1, (MOUNT_MY_REVS_MAX - 1) * sizeof m->my_revs[0]);
        m->n_my_revs--;
    }
    m->my_revs[m->n_my_revs++] = rev;
}

static bool my_revs_has(const struct mnt *m, int64_t rev) {
    for (size_t i = 0; i < m->n_my_revs; i++)
        if (m->my_revs[i] == rev) return true;
    return false;
}

static void my_revs_prune(struct mnt *m) {
    int64_t rev = store_cache_revision(m->cache);
    size_t o = 0;
    for (size_t i = 0; i < m->n_my_revs; i++)
        if (m->my_revs[i] > rev) m->my_revs[o++] = m->my_revs[i];
    m->n_my_revs = o;
}

static void txn_cb(void *arg, const struct client_status *st, const ProtobufCMessage *resp) {
    struct sub *s = arg;
    struct mnt *m = s->m;
    inflight_remove(m, s);
    s->err = grpc_to_errno(st);
    if (s->err) {
        if (s->err == -ETIMEDOUT || s->err == -EIO)
            logf_("write may or may not have been applied: %s (code %d)",
                  st->message && *st->message ? st->message : "connection lost", st->code);
        sub_finish(s);
    } else {
        const Etcdserverpb__TxnResponse *r = (const Etcdserverpb__TxnResponse *)resp;
        s->res.succeeded = r->succeeded;
        s->res.revision = r->header ? r->header->revision : 0;
        if (r->succeeded && s->res.revision > store_cache_revision(m->cache))
            my_revs_add(m, s->res.revision);
        if (s->res.revision <= store_cache_revision(m->cache)) {
            sub_finish(s);
        } else {
            s->deadline_ms = now_ms() + m->cfg->command_timeout_ms;
            s->wait_next = m->waiting;
            m->waiting = s;
            watch_send_progress(m);
        }
    }
    evq_drain(m);
}

static void send_sub(struct mnt *m, struct sub *s) {
    size_t nc = s->n_cmps, no = s->n_ops;
    Etcdserverpb__Compare *cmps = calloc(nc ? nc : 1, sizeof *cmps);
    Etcdserverpb__Compare **cmpp = calloc(nc ? nc : 1, sizeof *cmpp);
    Etcdserverpb__RequestOp *ops = calloc(no ? no : 1, sizeof *ops);
    Etcdserverpb__RequestOp **opp = calloc(no ? no : 1, sizeof *opp);
    Etcdserverpb__PutRequest *puts = calloc(no ? no : 1, sizeof *puts);
    Etcdserverpb__DeleteRangeRequest *dels = calloc(no ? no : 1, sizeof *dels);
    Mvccpb__FileMeta *metas = calloc(no ? no : 1, sizeof *metas);
    int rc = -ENOMEM;
    if (!cmps || !cmpp || !ops || !opp || !puts || !dels || !metas) goto out;
    for (size_t i = 0; i < nc; i++) {
        const struct fs_cmp *f = &s->cmps[i];
        Etcdserverpb__Compare *c = &cmps[i];
        etcdserverpb__compare__init(c);
        c->key = (ProtobufCBinaryData){f->key_len, (uint8_t *)f->key};
        if (f->range_end)
            c->range_end = (ProtobufCBinaryData){f->range_end_len, (uint8_t *)f->range_end};
        switch (f->type) {
        case FS_CMP_EXISTS:
        case FS_CMP_ABSENT:
            c->target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE;
            c->result = f->type == FS_CMP_EXISTS ? ETCDSERVERPB__COMPARE__COMPARE_RESULT__GREATER
                                                 : ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL;
            c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION;
            c->create_revision = 0;
            break;
        case FS_CMP_MOD_EQ:
        case FS_CMP_MOD_LE:
            c->target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD;
            c->result = f->type == FS_CMP_MOD_EQ ? ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL
                                                 : ETCDSERVERPB__COMPARE__COMPARE_RESULT__LESS;
            c->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION;
            c->mod_revision = f->type == FS_CMP_MOD_EQ ? f->revision : f->revision + 1;
            break;
        default:
            rc = -EINVAL;
            goto out;
        }
        cmpp[i] = c;
    }
    for (size_t i = 0; i < no; i++) {
        const struct fs_op *f = &s->ops[i];
        Etcdserverpb__RequestOp *o = &ops[i];
        etcdserverpb__request_op__init(o);
        if (f->type == FS_OP_PUT) {
            Etcdserverpb__PutRequest *p = &puts[i];
            etcdserverpb__put_request__init(p);
            p->key = (ProtobufCBinaryData){f->key_len, (uint8_t *)f->key};
            p->value = (ProtobufCBinaryData){f->value_len, (uint8_t *)f->value};
            p->lease = f->lease;
            if (f->mode != 0) { /* kept by quorumfs servers, skipped by etcd */
                mvccpb__file_meta__init(&metas[i]);
                metas[i].mode = f->mode;
                metas[i].uid = f->uid;
                metas[i].gid = f->gid;
                metas[i].mtime_ns = f->mtime_ns;
                p->quorumfs_meta = &metas[i];
            }
            o->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
            o->request_put = p;
        } else {
            Etcdserverpb__DeleteRangeRequest *d = &dels[i];
            etcdserverpb__delete_range_request__init(d);
            d->key = (ProtobufCBinaryData){f->key_len, (uint8_t *)f->key};
            if (f->type == FS_OP_DELETE_RANGE)
                d->range_end = (ProtobufCBinaryData){f->range_end_len, (uint8_t *)f->range_end};
            o->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE;
            o->request_delete_range = d;
        }
        opp[i] = o;
    }
    Etcdserverpb__TxnRequest req = ETCDSERVERPB__TXN_REQUEST__INIT;
    req.n_compare = nc;
    req.compare = cmpp;
    req.n_success = no;
    req.success = opp;
    s->m = m;
    s->seq = m->seq_next++;
    rc = client_unary(m->cl, "/etcdserverpb.KV/Txn", &req.base,
                      &etcdserverpb__txn_response__descriptor, txn_cb, s);
    if (rc == 0) {
        s->next = m->inflight;
        m->inflight = s;
    } else {
        logf_("cannot send a write: %s", client_strerror(rc));
        rc = -EIO;
    }
out:
    free(cmps);
    free(cmpp);
    free(ops);
    free(opp);
    free(puts);
    free(dels);
    free(metas);
    if (rc) {
        s->err = rc;
        sub_finish(s);
    }
}

static void barrier_cb(void *arg, const struct client_status *st, const ProtobufCMessage *resp) {
    struct barrier *b = arg;
    struct mnt *m = b->m;
    if (st->code != 0) {
        b->cb(b->arg, -ETIMEDOUT);
        free(b);
        return;
    }
    const Etcdserverpb__RangeResponse *r = (const Etcdserverpb__RangeResponse *)resp;
    b->rev = r->header ? r->header->revision : 0;
    b->deadline_ms = now_ms() + m->cfg->command_timeout_ms;
    b->next = m->bar_waiting;
    m->bar_waiting = b;
    waiting_fire(m, false);
    if (m->bar_waiting) watch_send_progress(m);
}

/* A linearizable Range of one key gives the cluster's revision at a read
 * index; the read point is passed once the copy has that revision. */
static void send_barrier(struct mnt *m, struct barrier *b) {
    Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
    req.key = (ProtobufCBinaryData){m->prefix_len, (uint8_t *)m->prefix};
    req.keys_only = true;
    req.limit = 1;
    int rc = client_unary(m->cl, "/etcdserverpb.KV/Range", &req.base,
                          &etcdserverpb__range_response__descriptor, barrier_cb, b);
    if (rc) {
        b->cb(b->arg, -ETIMEDOUT);
        free(b);
    }
}

static void drain_subq(struct mnt *m) {
    pthread_mutex_lock(&m->mu);
    struct sub *s = m->subq_head;
    m->subq_head = m->subq_tail = NULL;
    struct barrier *b = m->barq;
    m->barq = NULL;
    pthread_mutex_unlock(&m->mu);
    while (b) {
        struct barrier *next = b->next;
        if (m->closing) {
            b->cb(b->arg, -ECANCELED);
            free(b);
        } else {
            send_barrier(m, b);
        }
        b = next;
    }
    uint64_t off = atomic_load(&m->offline_since_ms);
    bool offline = !atomic_load(&m->online) && !client_connected(m->cl) && off != 0 &&
                   now_ms() - off >= m->cfg->dial_timeout_ms;
    while (s) {
        struct sub *next = s->next;
        s->next = NULL;
        if (m->closing) {
            s->err = -ECANCELED;
            sub_finish(s);
        } else if (offline) {
            /* Never sent: surely not applied. */
            s->err = -EROFS;
            sub_finish(s);
        } else {
            send_sub(m, s);
        }
        s = next;
    }
}

/* ------------------------------------------------------------ watch (loop) */

static void start_sync(struct mnt *m);
static void start_fs(struct mnt *m);

static void set_offline(struct mnt *m) {
    if (atomic_exchange(&m->online, 0)) atomic_store(&m->offline_since_ms, now_ms());
    if (atomic_load(&m->offline_since_ms) == 0) atomic_store(&m->offline_since_ms, now_ms());
}

static void retry_cb(uv_timer_t *t) {
    struct mnt *m = t->data;
    if (!m->closing) start_sync(m);
}

static void schedule_retry(struct mnt *m) {
    if (m->closing) return;
    if (m->retry_ms == 0) m->retry_ms = MOUNT_RETRY_MIN_MS;
    uv_timer_start(&m->retry, retry_cb, m->retry_ms, 0);
    m->retry_ms = m->retry_ms * 2 > MOUNT_RETRY_MAX_MS ? MOUNT_RETRY_MAX_MS : m->retry_ms * 2;
}

static void kv_from_pb(const Mvccpb__KeyValue *p, struct store_kv *kv) {
    memset(kv, 0, sizeof *kv);
    kv->key = (struct store_bytes){p->key.data, p->key.len};
    kv->value = (struct store_bytes){p->value.data, p->value.len};
    kv->create_revision = p->create_revision;
    kv->mod_revision = p->mod_revision;
    kv->version = p->version;
    kv->lease = p->lease;
    if (p->quorumfs_meta) { /* a quorumfs server: the file metadata */
        kv->mode = p->quorumfs_meta->mode;
        kv->uid = p->quorumfs_meta->uid;
        kv->gid = p->quorumfs_meta->gid;
        kv->mtime_ns = p->quorumfs_meta->mtime_ns;
    }
}

static void notify(struct mnt *m, enum fs_change_type type, const void *key, size_t kl, int64_t rev,
                   bool created, bool local, bool more, bool meta_only) {
    struct fs_change c = {.type = type,
                          .meta_only = meta_only,
                          .key = key,
                          .key_len = kl,
                          .revision = rev,
                          .created = created,
                          .local = local,
                          .more = more};
    fs_notify_change(m->fs, &c);
}

/* Applies one watch response to the copy and tells fs. */
static void process_watch_response(struct mnt *m, const Etcdserverpb__WatchResponse *r) {
    int64_t cur = store_cache_revision(m->cache);
    if (r->n_events == 0) {
        /* A progress notification: every event up to its revision was sent. */
        int64_t rev = r->header ? r->header->revision : 0;
        if (rev > cur) store_cache_apply(m->cache, NULL, 0, rev);
        m->progress_asked = false;
        waiting_fire(m, false);
        my_revs_prune(m);
        return;
    }
    struct store_cache_change *ch = calloc(r->n_events, sizeof *ch);
    if (!ch) {
        logf_("out of memory applying a watch response; reloading");
        m->need_reload = true;
        return;
    }
    int64_t last = cur;
    size_t n = 0;
    bool *meta_only = calloc(r->n_events, sizeof *meta_only);
    if (!meta_only) {
        free(ch);
        logf_("out of memory applying a watch response; reloading");
        m->need_reload = true;
        return;
    }
    for (size_t i = 0; i < r->n_events; i++) {
        const Mvccpb__Event *e = r->events[i];
        if (!e->kv || e->kv->mod_revision <= cur) continue; /* seen already */
        /* A put that kept the value (chmod, touch through a mount): replayed
         * as an attribute change, not a write. */
        meta_only[n] = e->type != MVCCPB__EVENT__EVENT_TYPE__DELETE && e->prev_kv &&
                       e->kv->version > 1 && e->prev_kv->value.len == e->kv->value.len &&
                       (e->kv->value.len == 0 ||
                        memcmp(e->prev_kv->value.data, e->kv->value.data, e->kv->value.len) == 0);
        ch[n].type = e->type == MVCCPB__EVENT__EVENT_TYPE__DELETE ? STORE_EVENT_DELETE
                                                                  : STORE_EVENT_PUT;
        kv_from_pb(e->kv, &ch[n].kv);
        if (e->kv->mod_revision > last) last = e->kv->mod_revision;
        n++;
    }
    int rc = n ? store_cache_apply(m->cache, ch, n, last) : 0;
    if (rc) {
        logf_("cannot update the local copy: %s; reloading", store_strerror(rc));
        free(ch);
        free(meta_only);
        m->need_reload = true;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const struct store_kv *kv = &ch[i].kv;
        bool more = i + 1 < n && ch[i + 1].kv.mod_revision == kv->mod_revision;
        notify(m, ch[i].type == STORE_EVENT_DELETE ? FS_CHANGE_DELETE : FS_CHANGE_PUT, kv->key.base,
               kv->key.len, kv->mod_revision, ch[i].type == STORE_EVENT_PUT && kv->version == 1,
               my_revs_has(m, kv->mod_revision), more, meta_only[i]);
    }
    free(ch);
    free(meta_only);
    waiting_fire(m, false);
    my_revs_prune(m);
}

static void evq_process_one(struct mnt *m, const uint8_t *bytes, size_t len) {
    Etcdserverpb__WatchResponse *r = etcdserverpb__watch_response__unpack(NULL, len, bytes);
    if (!r) {
        logf_("cannot decode a queued watch response; reloading");
        m->need_reload = true;
        return;
    }
    process_watch_response(m, r);
    etcdserverpb__watch_response__free_unpacked(r, NULL);
}

/* Processes queued responses whose writes have all been answered (or all,
 * when the watch ended: what arrived is still true). */
static void evq_drain_all(struct mnt *m, bool all) {
    uint64_t min = inflight_min_seq(m);
    while (m->evq_head && (all || m->evq_head->seq_hi < min)) {
        struct evq_item *it = m->evq_head;
        m->evq_head = it->next;
        if (!m->evq_head) m->evq_tail = NULL;
        m->evq_len--;
        if (!m->need_reload) evq_process_one(m, it->bytes, it->len);
        free(it);
    }
}

static void evq_drain(struct mnt *m) {
    evq_drain_all(m, false);
}

static void watch_restart(struct mnt *m, bool backoff) {
    if (m->ws) {
        client_stream_close(m->ws);
        m->ws = NULL;
    }
    m->ws_created = false;
    m->progress_asked = false;
    evq_drain_all(m, true);
    set_offline(m);
    if (backoff)
        schedule_retry(m);
    else
        start_sync(m);
}

static void watch_msg_cb(void *arg, const ProtobufCMessage *msg) {
    struct mnt *m = arg;
    const Etcdserverpb__WatchResponse *r = (const Etcdserverpb__WatchResponse *)msg;
    if (r->header && r->header->cluster_id) m->cluster_id = r->header->cluster_id;
    if (r->created && !r->canceled) {
        m->ws_created = true;
        m->retry_ms = 0;
        atomic_store(&m->online, 1);
        atomic_store(&m->offline_since_ms, 0);
        start_fs(m);
        logf_("watching %s from revision %" PRId64 " on %s", m->prefix,
              store_cache_revision(m->cache) + 1, client_endpoint(m->cl));
        return;
    }
    if (r->canceled) {
        if (r->compact_revision > 0) {
            logf_("revision %" PRId64 " was compacted (compact revision %" PRId64
                  "); loading the key space again",
                  store_cache_revision(m->cache) + 1, r->compact_revision);
            m->need_reload = true;
            watch_restart(m, false);
        } else {
            logf_("watch canceled by the server: %s",
                  r->cancel_reason && *r->cancel_reason ? r->cancel_reason : "(no reason)");
            watch_restart(m, true);
        }
        return;
    }
    if (m->inflight || m->evq_head) {
        /* Hold it until the writes sent before it are answered. */
        if (m->evq_len >= MOUNT_EVQ_MAX) {
            logf_("too many watch responses waiting; loading the key space again");
            m->need_reload = true;
            watch_restart(m, false);
            return;
        }
        size_t len = protobuf_c_message_get_packed_size(msg);
        struct evq_item *it = malloc(sizeof *it + len);
        if (!it) {
            m->need_reload = true;
            watch_restart(m, false);
            return;
        }
        it->next = NULL;
        it->len = protobuf_c_message_pack(msg, it->bytes);
        it->seq_hi = m->seq_next ? m->seq_next - 1 : 0;
        if (m->evq_tail)
            m->evq_tail->next = it;
        else
            m->evq_head = it;
        m->evq_tail = it;
        m->evq_len++;
        evq_drain(m);
        return;
    }
    process_watch_response(m, r);
    if (m->need_reload) watch_restart(m, false);
}

static void watch_end_cb(void *arg, const struct client_status *st) {
    struct mnt *m = arg;
    m->ws = NULL; /* freed by the client */
    if (m->closing) return;
    logf_("watch ended: %s (code %d); resuming from revision %" PRId64,
          st->message && *st->message ? st->message : "connection lost", st->code,
          store_cache_revision(m->cache) + 1);
    watch_restart(m, true);
}

static void watch_send_progress(struct mnt *m) {
    if (!m->ws || !m->ws_created || m->progress_asked) return;
    Etcdserverpb__WatchProgressRequest pr = ETCDSERVERPB__WATCH_PROGRESS_REQUEST__INIT;
    Etcdserverpb__WatchRequest wr = ETCDSERVERPB__WATCH_REQUEST__INIT;
    wr.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_PROGRESS_REQUEST;
    wr.progress_request = &pr;
    if (client_stream_send(m->ws, &wr.base) == 0) m->progress_asked = true;
}

static void start_watch(struct mnt *m) {
    static const struct client_stream_cbs cbs = {watch_msg_cb, watch_end_cb};
    int rc = client_stream_open(m->cl, "/etcdserverpb.Watch/Watch",
                                &etcdserverpb__watch_response__descriptor, &cbs, m, &m->ws);
    if (rc) {
        logf_("cannot open a watch: %s", client_strerror(rc));
        m->ws = NULL;
        schedule_retry(m);
        return;
    }
    Etcdserverpb__WatchCreateRequest cr = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    cr.key = (ProtobufCBinaryData){m->prefix_len, (uint8_t *)m->prefix};
    cr.range_end = (ProtobufCBinaryData){m->pend_len, (uint8_t *)m->pend};
    cr.start_revision = store_cache_revision(m->cache) + 1;
    cr.progress_notify = true;
    cr.prev_kv = true;
    Etcdserverpb__WatchRequest wr = ETCDSERVERPB__WATCH_REQUEST__INIT;
    wr.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
    wr.create_request = &cr;
    rc = client_stream_send(m->ws, &wr.base);
    if (rc) {
        logf_("cannot send the watch request: %s", client_strerror(rc));
        client_stream_close(m->ws);
        m->ws = NULL;
        schedule_retry(m);
    }
}

/* ---- (re)load: a paginated Range at one revision */

struct diff_list {
    struct diff_item *head, **tail;
};
struct diff_item {
    struct diff_item *next;
    enum store_cache_diff kind;
    int64_t rev;
    size_t kl;
    char key[];
};

static void diff_cb(void *arg, enum store_cache_diff kind, const struct store_kv *kv) {
    struct diff_list *l = arg;
    struct diff_item *d = malloc(sizeof *d + kv->key.len);
    if (!d) return; /* the event is lost, the copy is right */
    d->next = NULL;
    d->kind = kind;
    d->rev = kv->mod_revision;
    d->kl = kv->key.len;
    memcpy(d->key, kv->key.base, kv->key.len);
    *l->tail = d;
    l->tail = &d->next;
}

static void send_page(struct mnt *m);

static void load_fail(struct mnt *m, const char *why) {
    logf_("loading the key space failed: %s; retrying", why);
    if (m->reload) store_cache_reload_abort(m->reload);
    m->reload = NULL;
    m->loading = false;
    set_offline(m);
    schedule_retry(m);
}

static void range_cb(void *arg, const struct client_status *st, const ProtobufCMessage *resp) {
    struct mnt *m = arg;
    if (m->closing) {
        if (m->reload) store_cache_reload_abort(m->reload);
        m->reload = NULL;
        m->loading = false;
        return;
    }
    if (st->code != 0) {
        if (!m->serializable && st->message && strstr(st->message, "learner")) {
            /* A learner serves serializable reads only: load from its copy. */
            logf_("the endpoint is a learner: loading with serializable reads");
            m->serializable = true;
            if (m->reload) store_cache_reload_abort(m->reload);
            m->reload = NULL;
            m->next_key_len = 0;
            send_page(m);
            return;
        }
        load_fail(m, st->message && *st->message ? st->message : "connection lost");
        return;
    }
    const Etcdserverpb__RangeResponse *r = (const Etcdserverpb__RangeResponse *)resp;
    if (r->header && r->header->cluster_id) m->cluster_id = r->header->cluster_id;
    int rc;
    if (!m->reload) {
        m->reload_rev = r->header ? r->header->revision : 0;
        rc = store_cache_reload_begin(m->cache, m->reload_rev, &m->reload);
        if (rc) {
            m->reload = NULL;
            load_fail(m, store_strerror(rc));
            return;
        }
    }
    struct store_kv *kvs = calloc(r->n_kvs ? r->n_kvs : 1, sizeof *kvs);
    if (!kvs) {
        load_fail(m, "out of memory");
        return;
    }
    for (size_t i = 0; i < r->n_kvs; i++) kv_from_pb(r->kvs[i], &kvs[i]);
    rc = store_cache_reload_page(m->reload, kvs, r->n_kvs);
    free(kvs);
    if (rc) {
        load_fail(m, store_strerror(rc));
        return;
    }
    if (r->more && r->n_kvs > 0) {
        const ProtobufCBinaryData *last = &r->kvs[r->n_kvs - 1]->key;
        uint8_t *nk = realloc(m->next_key, last->len + 1);
        if (!nk) {
            load_fail(m, "out of memory");
            return;
        }
        memcpy(nk, last->data, last->len);
        nk[last->len] = 0; /* the smallest key after it */
        m->next_key = nk;
        m->next_key_len = last->len + 1;
        send_page(m);
        return;
    }
    /* Complete: switch the copy over and tell fs what differs. */
    bool first = store_cache_revision(m->cache) == 0;
    struct diff_list dl = {NULL, &dl.head};
    rc = store_cache_reload_meta_put(m->reload, "prefix", m->prefix, m->prefix_len);
    if (rc == 0 && m->cluster_id)
        rc = store_cache_reload_meta_put(m->reload, "cluster_id", &m->cluster_id,
                                         sizeof m->cluster_id);
    if (rc) {
        load_fail(m, store_strerror(rc));
        return;
    }
    rc = store_cache_reload_commit(m->reload, diff_cb, &dl);
    m->reload = NULL;
    m->loading = false;
    if (rc) {
        for (struct diff_item *d = dl.head, *nx; d; d = nx) {
            nx = d->next;
            free(d);
        }
        load_fail(m, store_strerror(rc));
        return;
    }
    m->need_reload = false;
    size_t changes = 0;
    for (struct diff_item *d = dl.head, *nx; d; d = nx) {
        nx = d->next;
        notify(m, d->kind == STORE_CACHE_DELETED ? FS_CHANGE_DELETE : FS_CHANGE_PUT, d->key, d->kl,
               d->kind == STORE_CACHE_DELETED ? m->reload_rev : d->rev,
               d->kind == STORE_CACHE_CREATED, false, false, false);
        changes++;
        free(d);
    }
    logf_("loaded the key space under %s at revision %" PRId64 "%s (%zu changes)", m->prefix,
          m->reload_rev, first ? "" : " again", changes);
    waiting_fire(m, false);
    start_fs(m);
    start_watch(m);
}

static void send_page(struct mnt *m) {
    Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
    if (m->next_key_len)
        req.key = (ProtobufCBinaryData){m->next_key_len, m->next_key};
    else
        req.key = (ProtobufCBinaryData){m->prefix_len, (uint8_t *)m->prefix};
    req.range_end = (ProtobufCBinaryData){m->pend_len, (uint8_t *)m->pend};
    req.limit = MOUNT_PAGE_KEYS;
    req.revision = m->reload ? m->reload_rev : 0;
    req.serializable = m->serializable;
    int rc = client_unary(m->cl, "/etcdserverpb.KV/Range", &req.base,
                          &etcdserverpb__range_response__descriptor, range_cb, m);
    if (rc) load_fail(m, client_strerror(rc));
}

static void start_load(struct mnt *m) {
    m->loading = true;
    m->next_key_len = 0;
    m->reload = NULL;
    send_page(m);
}

static void start_sync(struct mnt *m) {
    if (m->closing || m->loading || m->ws) return;
    if (m->need_reload || store_cache_revision(m->cache) == 0)
        start_load(m);
    else
        start_watch(m);
}

/* ------------------------------------------------------------ lifecycle */

static void *fs_thread_main(void *arg);
static void report_ready(struct mnt *m, const char *msg);
static void begin_close(struct mnt *m);

/* Mounts once the copy is in sync with the cluster, or after --dial-timeout
 * without it (then serving the copy as it is, possibly empty), so a fresh
 * mount never shows an empty directory for a moment. */
static void start_fs(struct mnt *m) {
    if (m->fs_started || m->closing) return;
    uv_timer_stop(&m->fs_timer);
    m->fs_started = true;
    if (pthread_create(&m->fs_thread, NULL, fs_thread_main, m) != 0) {
        m->fs_started = false;
        logf_("cannot start the mount thread");
        report_ready(m, "cannot start the mount thread");
        begin_close(m);
    }
}

static void fs_timer_cb(uv_timer_t *t) {
    struct mnt *m = t->data;
    logf_("no endpoint answered within --dial-timeout: serving the local copy at revision "
          "%" PRId64 " read-only until one does",
          store_cache_revision(m->cache));
    start_fs(m);
}

static void *fs_thread_main(void *arg) {
    struct mnt *m = arg;
    m->fs_rc = fs_run(m->fs);
    atomic_store(&m->fs_exited, 1);
    wake_loop(m);
    return NULL;
}

static void mounted_cb(void *arg) {
    struct mnt *m = arg;
    atomic_store(&m->mounted, 1);
    wake_loop(m);
}

static void report_ready(struct mnt *m, const char *msg) {
    if (m->ready_fd < 0) return;
    /* "" = mounted; anything else is the error the parent prints. */
    size_t n = strlen(msg) + 1;
    if (write(m->ready_fd, msg, n) < 0) { /* the parent is gone: nothing to tell */
    }
    close(m->ready_fd);
    m->ready_fd = -1;
}

static void client_closed_cb(void *arg) {
    struct mnt *m = arg;
    m->cl = NULL;
}

static void close_walk_cb(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void begin_close(struct mnt *m) {
    if (m->closing) return;
    m->closing = true;
    if (m->ws) {
        client_stream_close(m->ws);
        m->ws = NULL;
    }
    evq_drain_all(m, true);
    waiting_fire(m, true);
    /* The loop ends once the client and these handles are closed. */
    uv_close((uv_handle_t *)&m->retry, NULL);
    uv_close((uv_handle_t *)&m->tick, NULL);
    uv_close((uv_handle_t *)&m->fs_timer, NULL);
    uv_close((uv_handle_t *)&m->wake, NULL);
    for (int i = 0; i < 3; i++) uv_close((uv_handle_t *)&m->sig[i], NULL);
    if (m->cl) client_close(m->cl, client_closed_cb, m);
}

static void wake_cb(uv_async_t *h) {
    struct mnt *m = h->data;
    if (atomic_exchange(&m->mounted, 0)) {
        logf_("mounted %s (endpoints %s%s)", m->cfg->mountpoint, m->cfg->endpoints[0],
              m->cfg->n_endpoints > 1 ? ",..." : "");
        report_ready(m, "");
    }
    if (m->tls_fatal[0] && !m->closing && !m->ever_connected) {
        char msg[700];
        snprintf(msg, sizeof msg, "no endpoint accepted the TLS connection: %s", m->tls_fatal);
        logf_("%s", msg);
        if (!m->fs_started) {
            report_ready(m, msg);
            begin_close(m);
            return;
        }
    }
    drain_subq(m);
    if (atomic_load(&m->fs_exited)) {
        if (m->fs_rc) {
            char msg[1024];
            snprintf(msg, sizeof msg, "cannot mount %.400s: %s (%.300s)", m->cfg->mountpoint,
                     fs_strerror(m->fs_rc), fs_errmsg(m->fs));
            logf_("%s", msg);
            report_ready(m, msg);
        } else {
            logf_("unmounted %s", m->cfg->mountpoint);
        }
        begin_close(m);
    }
}

static void tick_cb(uv_timer_t *t) {
    struct mnt *m = t->data;
    waiting_fire(m, false);
}

static void signal_cb(uv_signal_t *s, int signum) {
    struct mnt *m = s->data;
    logf_("received %s, unmounting", signum == SIGINT    ? "SIGINT"
                                     : signum == SIGTERM ? "SIGTERM"
                                                         : "SIGHUP");
    pthread_mutex_lock(&m->mu);
    m->stopping = true;
    pthread_mutex_unlock(&m->mu);
    if (m->fs_started)
        fs_stop(m->fs);
    else
        begin_close(m);
}

/* Every endpoint refused our TLS before any connection worked: a wrong
 * --cacert/--cert/--key, not an outage. Startup fails with that line. */
static void client_log_cb(void *arg, const char *line) {
    struct mnt *m = arg;
    logf_("%s", line);
    if (!m->ever_connected && strstr(line, "TLS handshake failed") &&
        ++m->tls_failures >= m->cfg->n_endpoints && !m->tls_fatal[0]) {
        snprintf(m->tls_fatal, sizeof m->tls_fatal, "%s", line);
        wake_loop(m); /* not from inside the client: wake_cb ends the mount */
    }
    if (strstr(line, ": connected")) m->ever_connected = true;
}

/* Forks; the parent waits for the child to mount (or fail) and exits with
 * its verdict. Returns in the child only, with *ready_fd to report on. */
static int detach(const struct mount_config *c, int *ready_fd) {
    int p[2];
    if (pipe(p) != 0) return -errno;
    pid_t pid = fork();
    if (pid < 0) return -errno;
    if (pid > 0) {
        close(p[1]);
        char msg[1024];
        size_t n = 0;
        while (n < sizeof msg - 1) {
            ssize_t r = read(p[0], msg + n, sizeof msg - 1 - n);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            n += (size_t)r;
            if (memchr(msg, '\0', n)) break;
        }
        msg[n] = '\0';
        if (n > 0 && msg[0] == '\0') _exit(0);
        fprintf(stderr, "quorumfs mount: %s\n",
                n ? msg : "the mount process exited before mounting (see its log)");
        _exit(1);
    }
    close(p[0]);
    setsid();
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        if (!c->log_file) dup2(null, 2);
        if (null > 2) close(null);
    }
    *ready_fd = p[1];
    return 0;
}

int mount_main(int argc, char **argv) {
    static struct mount_config cfg;
    static struct mnt mnt;
    struct mnt *m = &mnt;
    char err[1024];
    int rc = config_parse(&cfg, argc, argv, err, sizeof err);
    if (rc == 1) return 0;
    if (rc < 0) {
        fprintf(stderr, "quorumfs mount: %s\n", err);
        config_free(&cfg);
        return 2;
    }
    if (cfg.log_file) {
        int fd = open(cfg.log_file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0) {
            fprintf(stderr, "quorumfs mount: --log-file %s: %s\n", cfg.log_file, strerror(errno));
            config_free(&cfg);
            return 2;
        }
        dup2(fd, 2);
        close(fd);
    }
    if (check_mountpoint(&cfg, err, sizeof err) != 0) {
        fprintf(stderr, "quorumfs mount: %s\n", err);
        config_free(&cfg);
        return 1;
    }
    memset(m, 0, sizeof *m);
    m->cfg = &cfg;
    m->ready_fd = -1;
    g_mnt = m;

    /* The key prefix mirrored: fs's prefix rule ('/' appended unless empty). */
    size_t pl = strlen(cfg.prefix);
    m->prefix = malloc(pl + 2);
    if (!m->prefix) return 1;
    memcpy(m->prefix, cfg.prefix, pl);
    if (pl && cfg.prefix[pl - 1] != '/') m->prefix[pl++] = '/';
    m->prefix[pl] = '\0';
    m->prefix_len = pl;
    if (pl == 0) { /* the whole key space: from "\0" */
        m->prefix[0] = '\0';
        m->prefix_len = 1;
    }
    m->pend = pl ? prefix_range_end(m->prefix, m->prefix_len, &m->pend_len)
                 : prefix_range_end("", 0, &m->pend_len);
    if (!m->pend) return 1;

    int exit_code = 1;
    if (mkdir_p(cfg.cache_dir, 0700) != 0) {
        fprintf(stderr, "quorumfs mount: cannot create --cache-dir %s: %s\n", cfg.cache_dir,
                strerror(errno));
        goto out_cfg;
    }
    if (!cfg.foreground && detach(&cfg, &m->ready_fd) != 0) {
        fprintf(stderr, "quorumfs mount: cannot detach: %s\n", strerror(errno));
        goto out_cfg;
    }

    rc = store_cache_open(cfg.cache_dir, NULL, &m->cache, err, sizeof err);
    if (rc) {
        char msg[1200];
        snprintf(msg, sizeof msg, "cannot open the local copy in %.400s: %.600s", cfg.cache_dir,
                 err);
        logf_("%s", msg);
        report_ready(m, msg);
        goto out_cfg;
    }
    /* A copy of another prefix is no copy of this one. */
    void *blob = NULL;
    size_t blen = 0;
    if (store_cache_revision(m->cache) > 0) {
        if (store_cache_meta_get(m->cache, "prefix", &blob, &blen) != 0 || blen != m->prefix_len ||
            memcmp(blob, m->prefix, blen) != 0) {
            logf_("the local copy in %s holds another prefix; loading again", cfg.cache_dir);
            m->need_reload = true;
        }
        free(blob);
        blob = NULL;
        if (store_cache_meta_get(m->cache, "cluster_id", &blob, &blen) == 0 &&
            blen == sizeof m->cluster_id)
            memcpy(&m->cluster_id, blob, blen);
        free(blob);
        logf_("local copy at revision %" PRId64 " in %s", store_cache_revision(m->cache),
              cfg.cache_dir);
    }

    pthread_mutex_init(&m->mu, NULL);
    if (uv_loop_init(&m->loop) != 0) goto out_cache;
    struct client_options co;
    client_options_init(&co);
    co.endpoints = cfg.endpoints;
    co.n_endpoints = cfg.n_endpoints;
    co.cacert = cfg.cacert;
    co.cert = cfg.cert;
    co.key = cfg.key;
    co.user = cfg.user;
    co.password = cfg.password;
    co.dial_timeout_ms = cfg.dial_timeout_ms;
    co.command_timeout_ms = cfg.command_timeout_ms;
    co.log_cb = client_log_cb;
    co.log_arg = m;
    /* HTTP/2 PINGs find a host cut off mid-stream. etcd (grpc-go) answers
     * PINGs more frequent than its --grpc-keepalive-min-time (5 s) with
     * GOAWAY too_many_pings, so stay above it. */
    co.keepalive_ms = 6000;
    co.keepalive_timeout_ms = 3000;
    rc = client_new(&m->loop, &co, &m->cl, err, sizeof err);
    if (rc) {
        char msg[1200];
        snprintf(msg, sizeof msg, "%s", err);
        logf_("%s", msg);
        report_ready(m, msg);
        goto out_loop;
    }
    uv_async_init(&m->loop, &m->wake, wake_cb);
    m->wake.data = m;
    uv_timer_init(&m->loop, &m->tick);
    m->tick.data = m;
    uv_timer_start(&m->tick, tick_cb, MOUNT_TICK_MS, MOUNT_TICK_MS);
    uv_timer_init(&m->loop, &m->retry);
    m->retry.data = m;
    uv_timer_init(&m->loop, &m->fs_timer);
    m->fs_timer.data = m;
    const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++) {
        uv_signal_init(&m->loop, &m->sig[i]);
        m->sig[i].data = m;
        uv_signal_start(&m->sig[i], signal_cb, sigs[i]);
    }
    atomic_store(&m->offline_since_ms, now_ms());

    struct fs_options opt;
    fs_options_init(&opt);
    opt.mountpoint = cfg.mountpoint;
    opt.prefix = cfg.prefix;
    opt.allow_other = 1;
    opt.fsname = "quorumfs-client";
    opt.debug = cfg.debug;
    opt.mounted_cb = mounted_cb;
    opt.mounted_arg = m;
    opt.linearizable_open = cfg.linearizable;
    opt.mount_nonempty = cfg.nonempty;
    opt.uid = cfg.uid;
    opt.gid = cfg.gid;
    opt.file_mode = cfg.file_mode;
    opt.dir_mode = cfg.dir_mode;
    if (cfg.max_request_bytes) opt.value_bytes_max = cfg.max_request_bytes;
    struct fs_backend be = {.data = m,
                            .get = be_get,
                            .range = be_range,
                            .revision = be_revision,
                            .submit = be_submit,
                            .read_barrier = be_read_barrier,
                            .connected = be_connected};
    rc = fs_new(&opt, &be, &m->fs);
    if (rc) {
        snprintf(err, sizeof err, "cannot mount %.400s: %s (%.300s)", cfg.mountpoint,
                 fs_strerror(rc), m->fs ? fs_errmsg(m->fs) : "");
        logf_("%s", err);
        report_ready(m, err);
        begin_close(m);
        uv_walk(&m->loop, close_walk_cb, NULL);
        uv_run(&m->loop, UV_RUN_DEFAULT);
        goto out_loop;
    }
    uv_timer_start(&m->fs_timer, fs_timer_cb, cfg.dial_timeout_ms, 0);
    start_sync(m);
    uv_run(&m->loop, UV_RUN_DEFAULT); /* until the client closed after the unmount */
    if (m->fs_started) pthread_join(m->fs_thread, NULL);
    /* A stop asked before the mount was up is no failure. */
    exit_code = m->fs_started ? (m->fs_rc ? 1 : 0) : (m->stopping ? 0 : 1);
    uv_walk(&m->loop, close_walk_cb, NULL);
    uv_run(&m->loop, UV_RUN_DEFAULT);
    fs_free(m->fs);
out_loop:
    uv_loop_close(&m->loop);
out_cache:
    store_cache_close(m->cache);
    pthread_mutex_destroy(&m->mu);
out_cfg:
    if (m->reload) store_cache_reload_abort(m->reload);
    free(m->next_key);
    free(m->prefix);
    free(m->pend);
    config_free(&cfg);
    return exit_code;
}
