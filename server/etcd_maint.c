/*
 * etcd_maint.c - the etcd Maintenance service: Status, Alarm, Defragment,
 * Hash, HashKV, Snapshot, MoveLeader; and the snapshot file format with its
 * restore (`quorumfs snapshot restore`).
 *
 * Alarms are kept in memory per member (etcd replicates them through Raft):
 * a put refused for lack of space raises NOSPACE on the member that took it,
 * and while any NOSPACE alarm is active that member refuses puts and lease
 * grants with "etcdserver: mvcc: database space exceeded" until the alarm is
 * disarmed, as etcd's capped applier does.
 *
 * Defragment is a no-op that answers success: RocksDB reclaims space by its
 * own background compaction; there is nothing to rewrite as bbolt needs.
 *
 * Hash and HashKV both answer store_hash(), a CRC-32C over every stored
 * version up to the revision (etcd's Hash covers its whole bbolt file, which
 * has no equivalent here); replicas that applied the same entries agree.
 *
 * Snapshot file format (version 1). The stream is a POSIX ustar archive,
 * which is a whole number of 512-byte blocks, followed by the SHA-256 of the
 * archive (32 bytes) as the last message, exactly like etcd's bbolt file +
 * checksum, so etcdctl's size check ((size - 32) % 512 == 0) accepts it:
 *   1. "QUORUMFS-SNAPSHOT": text lines "quorumfs-snapshot 1", "revision N",
 *      "compact_revision N", "index N", "term N" (the Raft index and term
 *      the checkpoint corresponds to);
 *   2. "db/NAME" for every file of a RocksDB checkpoint of the store
 *      (store_checkpoint(), consistent at one applied index);
 *   3. two zero blocks (end of archive).
 * `tar tf FILE` lists it after `head -c -32`. The archive is produced while
 * it is sent, in ETCD_SNAPSHOT_CHUNK_BYTES messages, pausing whenever the
 * client's queue is full (stream_drained resumes it) and after every
 * ETCD_SNAPSHOT_TURN_BYTES so other loop work runs in between.
 */
#define _GNU_SOURCE /* nftw's FTW_DEPTH / FTW_PHYS */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "raft/raft.h"
#include "server/etcd.h"
#include "server/server.h"

#define SNAP_MARKER_NAME "QUORUMFS-SNAPSHOT"
#define SNAP_FORMAT_VERSION 1
#define SNAP_DB_PREFIX "db/"
#define SNAP_SHA_BYTES 32u
#define TAR_BLOCK 512u
/* Files in one checkpoint directory (RocksDB keeps a few dozen). */
#define SNAP_FILES_MAX 100000u
/* Longest path this file builds under a data directory. */
#define SNAP_PATH_MAX 4096u
/* Read buffer of the restore. */
#define RESTORE_BUF_BYTES (64u * 1024u)

/* --------------------------------------------------------------- alarms */

static const char *alarm_name(int type) {
    switch (type) {
    case ETCDSERVERPB__ALARM_TYPE__NOSPACE:
        return "NOSPACE";
    case ETCDSERVERPB__ALARM_TYPE__CORRUPT:
        return "CORRUPT";
    default:
        return "NONE";
    }
}

void etcd__alarm(void *ctx, struct api_call *call, const Etcdserverpb__AlarmRequest *req) {
    struct etcd *e = ctx;
    Etcdserverpb__AlarmResponse resp = ETCDSERVERPB__ALARM_RESPONSE__INIT;
    Etcdserverpb__AlarmMember ms[ETCD_ALARMS_MAX];
    Etcdserverpb__AlarmMember *pms[ETCD_ALARMS_MAX];
    size_t n = 0;
    switch (req->action) {
    case ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__GET:
        for (size_t i = 0; i < e->n_alarms; i++) {
            if (req->alarm != ETCDSERVERPB__ALARM_TYPE__NONE &&
                (int)req->alarm != e->alarms[i].type)
                continue;
            etcdserverpb__alarm_member__init(&ms[n]);
            ms[n].memberid = e->alarms[i].member_id;
            ms[n].alarm = (Etcdserverpb__AlarmType)e->alarms[i].type;
            n++;
        }
        break;
    case ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__ACTIVATE: {
        if (req->alarm == ETCDSERVERPB__ALARM_TYPE__NONE) break;
        bool have = false;
        for (size_t i = 0; i < e->n_alarms; i++)
            if (e->alarms[i].member_id == req->memberid && e->alarms[i].type == (int)req->alarm)
                have = true;
        if (!have && e->n_alarms < ETCD_ALARMS_MAX)
            e->alarms[e->n_alarms++] =
                (struct etcd_alarm){.member_id = req->memberid, .type = (int)req->alarm};
        etcdserverpb__alarm_member__init(&ms[n]);
        ms[n].memberid = req->memberid;
        ms[n].alarm = req->alarm;
        n++;
        break;
    }
    case ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__DEACTIVATE:
        for (size_t i = 0; i < e->n_alarms; i++) {
            if (e->alarms[i].member_id != req->memberid || e->alarms[i].type != (int)req->alarm)
                continue;
            etcdserverpb__alarm_member__init(&ms[n]);
            ms[n].memberid = req->memberid;
            ms[n].alarm = req->alarm;
            n++;
            e->alarms[i] = e->alarms[--e->n_alarms];
            break;
        }
        break;
    default:
        api_reply_error(call, API_GRPC_INVALID_ARGUMENT, "etcdserver: unknown alarm action");
        return;
    }
    for (size_t i = 0; i < n; i++) pms[i] = &ms[i];
    /* etcd 3.4 answers Alarm from its apply path without a header (the
     * gateway shows "{}"). */
    resp.alarms = pms;
    resp.n_alarms = n;
    api_reply(call, &resp.base);
}

/* --------------------------------------------------------------- status */

void etcd__status_rpc(void *ctx, struct api_call *call, const Etcdserverpb__StatusRequest *req) {
    (void)req;
    struct etcd *e = ctx;
    etcd__status_invalidate(e);
    const struct node_status *st = etcd__status(e);
    Etcdserverpb__StatusResponse resp = ETCDSERVERPB__STATUS_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    struct store_status ss;
    uint64_t db = 0;
    struct store *s = node__store_acquire(e->node);
    int rc = store_status(s, &ss);
    if (rc == 0) rc = store_db_size(s, &db);
    node__store_release(e->node);
    if (rc) {
        etcd__reply_error(call, rc);
        return;
    }
    etcd__header(e, &hdr, ss.revision);
    resp.header = &hdr;
    resp.version = (char *)(uintptr_t)ETCD_STATUS_VERSION;
    resp.dbsize = (int64_t)db;
    resp.dbsizeinuse = (int64_t)ss.logical_bytes;
    resp.leader = st->leader;
    resp.raftindex = st->commit;
    resp.raftterm = st->term;
    resp.raftappliedindex = st->applied;
    resp.islearner = st->learner;
    char texts[1 + ETCD_ALARMS_MAX][96];
    char *errs[1 + ETCD_ALARMS_MAX];
    size_t n = 0;
    if (st->leader == 0) {
        snprintf(texts[n], sizeof texts[n], "%s", "etcdserver: no leader");
        errs[n] = texts[n];
        n++;
    }
    for (size_t i = 0; i < e->n_alarms; i++) {
        /* etcd prints the AlarmMember message in protobuf's compact text. */
        snprintf(texts[n], sizeof texts[n], "memberID:%" PRIu64 " alarm:%s ",
                 e->alarms[i].member_id, alarm_name(e->alarms[i].type));
        errs[n] = texts[n];
        n++;
    }
    resp.errors = errs;
    resp.n_errors = n;
    api_reply(call, &resp.base);
}

void etcd__defragment(void *ctx, struct api_call *call,
                      const Etcdserverpb__DefragmentRequest *req) {
    (void)ctx;
    (void)req;
    /* See the file comment; etcd's answer carries no header either. */
    Etcdserverpb__DefragmentResponse resp = ETCDSERVERPB__DEFRAGMENT_RESPONSE__INIT;
    api_reply(call, &resp.base);
}

void etcd__hash(void *ctx, struct api_call *call, const Etcdserverpb__HashRequest *req) {
    (void)req;
    struct etcd *e = ctx;
    uint32_t h = 0;
    int rc = store_hash(node__store_acquire(e->node), 0, &h, NULL);
    node__store_release(e->node);
    if (rc) {
        etcd__reply_error(call, rc);
        return;
    }
    Etcdserverpb__HashResponse resp = ETCDSERVERPB__HASH_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    etcd__header(e, &hdr, 0);
    resp.header = &hdr;
    resp.hash = h;
    api_reply(call, &resp.base);
}

void etcd__hash_kv(void *ctx, struct api_call *call, const Etcdserverpb__HashKVRequest *req) {
    struct etcd *e = ctx;
    uint32_t h = 0;
    int64_t compact = 0;
    int rc = store_hash(node__store_acquire(e->node), req->revision, &h, &compact);
    node__store_release(e->node);
    if (rc) {
        etcd__reply_error(call, rc);
        return;
    }
    Etcdserverpb__HashKVResponse resp = ETCDSERVERPB__HASH_KVRESPONSE__INIT;
    Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    etcd__header(e, &hdr, 0);
    resp.header = &hdr;
    resp.hash = h;
    resp.compact_revision = compact;
    api_reply(call, &resp.base);
}

/* --------------------------------------------------------------- move leader */

struct move_call {
    struct etcd *e;
    struct api_call *call;
};

static void move_done(void *arg, int err) {
    struct move_call *mc = arg;
    struct etcd *e = mc->e;
    if (err == -ENOENT)
        err = ETCD_EBADTRANSFEREE;
    else if (err == -EPERM)
        err = ETCD_ENOTLEADER;
    else if (err == -ETIMEDOUT)
        err = ETCD_ETRANSFERTIMEOUT;
    if (err) {
        etcd__reply_error(mc->call, err);
    } else {
        /* etcd answers an empty message, without a header. */
        Etcdserverpb__MoveLeaderResponse resp = ETCDSERVERPB__MOVE_LEADER_RESPONSE__INIT;
        api_reply(mc->call, &resp.base);
    }
    free(mc);
    etcd__unref(e);
}

void etcd__move_leader(void *ctx, struct api_call *call,
                       const Etcdserverpb__MoveLeaderRequest *req) {
    struct etcd *e = ctx;
    etcd__status_invalidate(e);
    const struct node_status *st = etcd__status(e);
    if (st->leader == 0 || st->leader != st->id) {
        etcd__reply_error(call, ETCD_ENOTLEADER);
        return;
    }
    bool ok = false;
    for (size_t i = 0; i < st->n_members; i++)
        if (st->members[i].id == req->targetid && !st->members[i].learner) ok = true;
    if (!ok) {
        etcd__reply_error(call, ETCD_EBADTRANSFEREE);
        return;
    }
    if (e->stopping) {
        etcd__reply_error(call, ETCD_ESTOPPED);
        return;
    }
    struct move_call *mc = malloc(sizeof *mc);
    if (!mc) {
        etcd__reply_error(call, -ENOMEM);
        return;
    }
    *mc = (struct move_call){e, call};
    etcd__ref(e); /* before: the node may answer within the call */
    int rc = node__transfer_leader(e->node, req->targetid, move_done, mc);
    if (rc) {
        free(mc);
        etcd__unref(e);
        if (rc == -ENOENT)
            rc = ETCD_EBADTRANSFEREE;
        else if (rc == -EPERM)
            rc = ETCD_ENOTLEADER;
        else if (rc == -EBUSY || rc == -EAGAIN)
            rc = ETCD_EUNHEALTHY;
        etcd__reply_error(call, rc);
    }
}

/* --------------------------------------------------------------- tar */

static void put_octal(uint8_t *field, size_t width, uint64_t v) {
    /* width - 1 digits and a NUL, zero-padded. */
    field[width - 1] = 0;
    for (size_t i = width - 1; i-- > 0;) {
        field[i] = (uint8_t)('0' + (v & 7));
        v >>= 3;
    }
}

int etcd__tar_header(uint8_t hdr[512], const char *name, uint64_t size, uint32_t mode) {
    size_t nl = strlen(name);
    if (nl == 0 || nl > 100) return -1;
    memset(hdr, 0, TAR_BLOCK);
    memcpy(hdr, name, nl);
    put_octal(hdr + 100, 8, mode & 07777);
    put_octal(hdr + 108, 8, 0); /* uid */
    put_octal(hdr + 116, 8, 0); /* gid */
    if (size < (UINT64_C(1) << 33)) {
        put_octal(hdr + 124, 12, size);
    } else {
        /* GNU base-256 for files of 8 GiB and more. */
        hdr[124] = 0x80;
        for (int i = 11; i >= 1; i--) {
            hdr[124 + i] = (uint8_t)(size & 0xff);
            size >>= 8;
        }
    }
    put_octal(hdr + 136, 12, 0); /* mtime: fixed, so equal stores give equal files */
    hdr[156] = '0';
    memcpy(hdr + 257, "ustar", 6);
    memcpy(hdr + 263, "00", 2);
    memset(hdr + 148, ' ', 8);
    unsigned sum = 0;
    for (unsigned i = 0; i < TAR_BLOCK; i++) sum += hdr[i];
    put_octal(hdr + 148, 7, sum);
    hdr[155] = ' ';
    return 0;
}

static int get_octal(const uint8_t *f, size_t width, uint64_t *out) {
    uint64_t v = 0;
    size_t i = 0;
    while (i < width && f[i] == ' ') i++;
    bool any = false;
    for (; i < width && f[i] >= '0' && f[i] <= '7'; i++) {
        if (v >> 60) return -1;
        v = (v << 3) | (uint64_t)(f[i] - '0');
        any = true;
    }
    for (; i < width; i++)
        if (f[i] != 0 && f[i] != ' ') return -1;
    if (!any) return -1;
    *out = v;
    return 0;
}

int etcd__tar_parse(const uint8_t hdr[512], char name[101], uint64_t *size, char *type) {
    bool zero = true;
    for (unsigned i = 0; i < TAR_BLOCK && zero; i++) zero = hdr[i] == 0;
    if (zero) return 1;
    unsigned sum = 0;
    for (unsigned i = 0; i < TAR_BLOCK; i++) sum += (i >= 148 && i < 156) ? ' ' : hdr[i];
    uint64_t want;
    if (get_octal(hdr + 148, 8, &want) != 0 || want != sum) return -1;
    memcpy(name, hdr, 100);
    name[100] = '\0';
    if (hdr[124] & 0x80) {
        uint64_t v = 0;
        for (int i = 1; i < 12; i++) {
            if (v >> 55) return -1;
            v = (v << 8) | hdr[124 + i];
        }
        *size = v;
    } else if (get_octal(hdr + 124, 12, size) != 0) {
        return -1;
    }
    *type = hdr[156] ? (char)hdr[156] : '0';
    return 0;
}

static uint64_t tar_padded(uint64_t n) {
    return (n + TAR_BLOCK - 1) / TAR_BLOCK * TAR_BLOCK;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Removes a directory tree; errors are ignored (best effort cleanup). */
static void rm_tree(const char *dir) {
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* --------------------------------------------------------------- snapshot */

struct snap_file {
    char name[101]; /* the name in the archive */
    uint64_t size;
};

enum snap_phase { PH_HEADER, PH_DATA, PH_PAD, PH_END, PH_SHA, PH_DONE };

struct etcd_snapshot {
    int kind; /* ETCD_STREAM_SNAPSHOT; first, see etcd.h */
    struct etcd_snapshot *next;
    struct etcd *e;
    struct api_stream *st;   /* NULL once closed */
    char dir[SNAP_PATH_MAX]; /* the checkpoint, removed at the end */
    char marker[256];        /* the QUORUMFS-SNAPSHOT member's text */
    size_t marker_len;
    struct snap_file *files; /* files[0] is the marker */
    size_t n_files;
    size_t cur; /* file being archived */
    enum snap_phase ph;
    uint64_t off; /* bytes of the current piece produced */
    int fd;       /* the current file, -1 if none */
    uint64_t total, sent;
    EVP_MD_CTX *sha;
    uint8_t chunk[ETCD_SNAPSHOT_CHUNK_BYTES];
    size_t chunk_len; /* bytes produced but not yet accepted by the stream */
    bool waiting;     /* for stream_drained */
    uv_timer_t turn;  /* next production turn; its close callback frees */
};

static void snap_closed_cb(uv_handle_t *h) {
    struct etcd_snapshot *sn = h->data;
    struct etcd *e = sn->e;
    free(sn);
    etcd__unref(e);
}

static void snap_finish(struct etcd_snapshot *sn, enum api_grpc_code code, const char *msg) {
    struct etcd *e = sn->e;
    if (sn->st) {
        api_stream_set_data(sn->st, NULL);
        api_stream_close(sn->st, code, msg);
        sn->st = NULL;
    }
    for (struct etcd_snapshot **pp = &e->snapshots; *pp; pp = &(*pp)->next) {
        if (*pp == sn) {
            *pp = sn->next;
            e->n_snapshots--;
            break;
        }
    }
    if (sn->fd >= 0) close(sn->fd);
    sn->fd = -1;
    if (sn->dir[0]) rm_tree(sn->dir);
    free(sn->files);
    sn->files = NULL;
    if (sn->sha) EVP_MD_CTX_free(sn->sha);
    sn->sha = NULL;
    uv_close((uv_handle_t *)&sn->turn, snap_closed_cb);
}

/* Produces up to cap bytes of the archive into buf. Returns the count (0 at
 * the end of the archive) or -1 on a read error. */
static ssize_t snap_produce(struct etcd_snapshot *sn, uint8_t *buf, size_t cap) {
    size_t n = 0;
    while (n < cap && sn->ph != PH_SHA) {
        size_t room = cap - n;
        if (sn->ph == PH_HEADER) {
            if (sn->cur == sn->n_files) {
                sn->ph = PH_END;
                sn->off = 0;
                continue;
            }
            uint8_t hdr[TAR_BLOCK];
            const struct snap_file *f = &sn->files[sn->cur];
            if (etcd__tar_header(hdr, f->name, f->size, 0600) != 0) return -1;
            size_t k = TAR_BLOCK - sn->off < room ? TAR_BLOCK - sn->off : room;
            memcpy(buf + n, hdr + sn->off, k);
            n += k;
            sn->off += k;
            if (sn->off == TAR_BLOCK) {
                sn->ph = PH_DATA;
                sn->off = 0;
                if (sn->cur > 0) {
                    char path[SNAP_PATH_MAX + 110];
                    snprintf(path, sizeof path, "%s/%s", sn->dir, f->name + strlen(SNAP_DB_PREFIX));
                    sn->fd = open(path, O_RDONLY | O_CLOEXEC);
                    if (sn->fd < 0) return -1;
                }
            }
        } else if (sn->ph == PH_DATA) {
            const struct snap_file *f = &sn->files[sn->cur];
            uint64_t left = f->size - sn->off;
            size_t k = left < room ? (size_t)left : room;
            if (k > 0) {
                if (sn->cur == 0) {
                    memcpy(buf + n, sn->marker + sn->off, k);
                } else {
                    ssize_t r = pread(sn->fd, buf + n, k, (off_t)sn->off);
                    if (r <= 0) return -1; /* error, or the file shrank */
                    k = (size_t)r;
                }
                n += k;
                sn->off += k;
            }
            if (sn->off == f->size) {
                if (sn->fd >= 0) close(sn->fd);
                sn->fd = -1;
                sn->ph = PH_PAD;
                sn->off = tar_padded(f->size) - f->size; /* bytes of padding left */
            }
        } else if (sn->ph == PH_PAD) {
            size_t k = sn->off < room ? (size_t)sn->off : room;
            memset(buf + n, 0, k);
            n += k;
            sn->off -= k;
            if (sn->off == 0) {
                sn->cur++;
                sn->ph = PH_HEADER;
            }
        } else if (sn->ph == PH_END) {
            size_t left = 2 * TAR_BLOCK - sn->off;
            size_t k = left < room ? left : room;
            memset(buf + n, 0, k);
            n += k;
            sn->off += k;
            if (sn->off == 2 * TAR_BLOCK) sn->ph = PH_SHA;
        } else {
            break;
        }
    }
    return (ssize_t)n;
}

static void snap_pump(struct etcd_snapshot *sn);

static void turn_cb(uv_timer_t *t) {
    snap_pump(t->data);
}

static void snap_pump(struct etcd_snapshot *sn) {
    if (!sn->st || sn->waiting) return;
    size_t budget = ETCD_SNAPSHOT_TURN_BYTES;
    while (budget > 0) {
        Etcdserverpb__SnapshotResponse resp = ETCDSERVERPB__SNAPSHOT_RESPONSE__INIT;
        bool last = false;
        if (sn->chunk_len == 0) {
            if (sn->ph == PH_DONE) {
                snap_finish(sn, API_GRPC_OK, NULL);
                return;
            }
            if (sn->ph == PH_SHA) {
                unsigned int len = 0;
                if (EVP_DigestFinal_ex(sn->sha, sn->chunk, &len) != 1 || len != SNAP_SHA_BYTES) {
                    snap_finish(sn, API_GRPC_INTERNAL, "etcdserver: snapshot checksum failed");
                    return;
                }
                sn->chunk_len = len;
                last = true;
            } else {
                ssize_t k = snap_produce(sn, sn->chunk, sizeof sn->chunk);
                if (k < 0) {
                    snap_finish(sn, API_GRPC_INTERNAL, "etcdserver: reading the snapshot failed");
                    return;
                }
                sn->chunk_len = (size_t)k;
                if (k == 0) continue; /* reached the checksum */
            }
        } else {
            last = sn->ph == PH_SHA;
        }
        resp.blob = (ProtobufCBinaryData){sn->chunk_len, sn->chunk};
        resp.remaining_bytes = last ? 0 : sn->total - (sn->sent + sn->chunk_len);
        int rc = api_stream_send(sn->st, &resp.base);
        if (rc == API_EQUEUEFULL) {
            sn->waiting = true;
            return;
        }
        if (rc) {
            snap_finish(sn, API_GRPC_UNAVAILABLE, NULL);
            return;
        }
        if (last) {
            sn->ph = PH_DONE;
        } else {
            if (EVP_DigestUpdate(sn->sha, sn->chunk, sn->chunk_len) != 1) {
                snap_finish(sn, API_GRPC_INTERNAL, "etcdserver: snapshot checksum failed");
                return;
            }
            sn->sent += sn->chunk_len;
        }
        budget -= sn->chunk_len < budget ? sn->chunk_len : budget;
        sn->chunk_len = 0;
    }
    uv_timer_start(&sn->turn, turn_cb, 0, 0);
}

static int cmp_file(const void *a, const void *b) {
    return strcmp(((const struct snap_file *)a)->name, ((const struct snap_file *)b)->name);
}

/* Lists the checkpoint's files into sn->files (after the marker). */
static int snap_list(struct etcd_snapshot *sn) {
    DIR *d = opendir(sn->dir);
    if (!d) return -errno;
    size_t cap = 64;
    sn->files = calloc(cap, sizeof *sn->files);
    if (!sn->files) {
        closedir(d);
        return -ENOMEM;
    }
    sn->n_files = 1; /* the marker, filled by the caller */
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        char path[SNAP_PATH_MAX + 300];
        snprintf(path, sizeof path, "%s/%s", sn->dir, de->d_name);
        struct stat stt;
        if (stat(path, &stt) != 0) {
            rc = -errno;
            break;
        }
        if (!S_ISREG(stt.st_mode) || strlen(de->d_name) + strlen(SNAP_DB_PREFIX) > 100 ||
            sn->n_files >= SNAP_FILES_MAX) {
            rc = -ENOTSUP;
            break;
        }
        if (sn->n_files == cap) {
            struct snap_file *nf = realloc(sn->files, 2 * cap * sizeof *nf);
            if (!nf) {
                rc = -ENOMEM;
                break;
            }
            sn->files = nf;
            cap *= 2;
        }
        struct snap_file *f = &sn->files[sn->n_files++];
        int nl = snprintf(f->name, sizeof f->name, "%s%s", SNAP_DB_PREFIX, de->d_name);
        if (nl < 0 || (size_t)nl >= sizeof f->name) {
            rc = -ENAMETOOLONG;
            break;
        }
        f->size = (uint64_t)stt.st_size;
    }
    closedir(d);
    if (rc == 0) qsort(sn->files + 1, sn->n_files - 1, sizeof *sn->files, cmp_file);
    return rc;
}

void etcd__snapshot(void *ctx, struct api_stream *stream,
                    const Etcdserverpb__SnapshotRequest *req) {
    (void)req;
    struct etcd *e = ctx;
    if (e->stopping) {
        api_stream_close(stream, API_GRPC_UNAVAILABLE, "etcdserver: server stopped");
        return;
    }
    if (e->n_snapshots >= ETCD_SNAPSHOTS_MAX) {
        api_stream_close(stream, API_GRPC_RESOURCE_EXHAUSTED, "etcdserver: too many requests");
        return;
    }
    struct etcd_snapshot *sn = calloc(1, sizeof *sn);
    if (!sn) {
        api_stream_close(stream, API_GRPC_RESOURCE_EXHAUSTED, "etcdserver: out of memory");
        return;
    }
    sn->kind = ETCD_STREAM_SNAPSHOT;
    sn->e = e;
    sn->st = stream;
    sn->fd = -1;
    uv_timer_init(e->loop, &sn->turn);
    sn->turn.data = sn;
    etcd__ref(e);
    sn->next = e->snapshots;
    e->snapshots = sn;
    e->n_snapshots++;
    api_stream_set_data(stream, sn);

    snprintf(sn->dir, sizeof sn->dir, "%s/snap-client-%" PRIu64, e->cfg->data_dir,
             ++e->snapshot_seq);
    rm_tree(sn->dir);
    struct raft_snapshot_meta meta;
    struct store *s = node__store_acquire(e->node);
    int64_t rev = store_current_revision(s);
    int64_t crev = store_compact_revision(s);
    int rc = store_checkpoint(s, sn->dir, &meta);
    node__store_release(e->node);
    if (rc) {
        sn->dir[0] = '\0';
        snap_finish(sn, API_GRPC_UNAVAILABLE, store_strerror(rc));
        return;
    }
    if (snap_list(sn) != 0) {
        snap_finish(sn, API_GRPC_INTERNAL, "etcdserver: listing the snapshot failed");
        return;
    }
    int ml = snprintf(sn->marker, sizeof sn->marker,
                      "quorumfs-snapshot %d\nrevision %" PRId64 "\ncompact_revision %" PRId64
                      "\nindex %" PRIu64 "\nterm %" PRIu64 "\n",
                      SNAP_FORMAT_VERSION, rev, crev, meta.index, meta.term);
    sn->marker_len = (size_t)ml;
    snprintf(sn->files[0].name, sizeof sn->files[0].name, "%s", SNAP_MARKER_NAME);
    sn->files[0].size = sn->marker_len;
    sn->total = 2 * TAR_BLOCK;
    for (size_t i = 0; i < sn->n_files; i++) sn->total += TAR_BLOCK + tar_padded(sn->files[i].size);
    sn->sha = EVP_MD_CTX_new();
    if (!sn->sha || EVP_DigestInit_ex(sn->sha, EVP_sha256(), NULL) != 1) {
        snap_finish(sn, API_GRPC_INTERNAL, "etcdserver: snapshot checksum failed");
        return;
    }
    snap_pump(sn);
}

void etcd__snapshot_end(void *ctx, struct api_stream *stream, enum api_stream_event ev) {
    (void)ctx;
    struct etcd_snapshot *sn = api_stream_data(stream);
    if (!sn) return;
    if (ev == API_STREAM_CANCELLED) snap_finish(sn, API_GRPC_CANCELLED, NULL);
}

void etcd__snapshot_drained(struct etcd *e, struct api_stream *stream) {
    (void)e;
    struct etcd_snapshot *sn = api_stream_data(stream);
    if (!sn) return;
    sn->waiting = false;
    snap_pump(sn);
}

void etcd__snapshot_cleanup(const char *data_dir) {
    DIR *d = opendir(data_dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, "snap-client-", 12) != 0) continue;
        char path[SNAP_PATH_MAX + 300];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", data_dir, de->d_name) < sizeof path)
            rm_tree(path);
    }
    closedir(d);
}

void etcd__snapshot_stop_all(struct etcd *e) {
    while (e->snapshots)
        snap_finish(e->snapshots, API_GRPC_UNAVAILABLE, "etcdserver: server stopped");
}

/* --------------------------------------------------------------- restore */

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int read_full(int fd, void *buf, size_t n) {
    uint8_t *p = buf;
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Checks the trailing SHA-256 over the archive of `size` bytes. */
static int check_sha(int fd, uint64_t size, char *err, size_t errlen) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(ctx);
        return fail(err, errlen, "cannot compute SHA-256");
    }
    uint8_t *buf = malloc(RESTORE_BUF_BYTES);
    uint64_t left = size;
    int rc = buf ? 0 : -1;
    if (lseek(fd, 0, SEEK_SET) != 0) rc = -1;
    while (rc == 0 && left) {
        size_t k = left < RESTORE_BUF_BYTES ? (size_t)left : RESTORE_BUF_BYTES;
        if (read_full(fd, buf, k) != 0 || EVP_DigestUpdate(ctx, buf, k) != 1) rc = -1;
        left -= k;
    }
    free(buf);
    uint8_t got[SNAP_SHA_BYTES], want[SNAP_SHA_BYTES];
    unsigned len = 0;
    if (rc == 0 && (EVP_DigestFinal_ex(ctx, got, &len) != 1 || len != SNAP_SHA_BYTES)) rc = -1;
    EVP_MD_CTX_free(ctx);
    if (rc != 0) return fail(err, errlen, "cannot read the snapshot file");
    if (read_full(fd, want, sizeof want) != 0) return fail(err, errlen, "cannot read the checksum");
    if (memcmp(got, want, sizeof got) != 0)
        return fail(err, errlen, "snapshot checksum mismatch: the file is damaged or incomplete");
    return 0;
}

/* Whether name is "db/FILE" with FILE a plain file name. */
static bool db_member(const char *name) {
    size_t pl = strlen(SNAP_DB_PREFIX);
    if (strncmp(name, SNAP_DB_PREFIX, pl) != 0) return false;
    const char *f = name + pl;
    return *f && !strchr(f, '/') && strcmp(f, ".") != 0 && strcmp(f, "..") != 0;
}

/* Unpacks the archive (fd at 0, `size` bytes) into dir; reads the marker's
 * term into *term. */
static int unpack_into(int fd, uint64_t size, const char *dir, uint64_t *term, uint8_t *buf,
                       char *err, size_t errlen);

static int unpack(int fd, uint64_t size, const char *dir, uint64_t *term, char *err,
                  size_t errlen) {
    uint8_t *buf = malloc(RESTORE_BUF_BYTES);
    if (!buf) return fail(err, errlen, "out of memory");
    int rc = unpack_into(fd, size, dir, term, buf, err, errlen);
    free(buf);
    return rc;
}

static int unpack_into(int fd, uint64_t size, const char *dir, uint64_t *term, uint8_t *buf,
                       char *err, size_t errlen) {
    bool marker = false;
    uint64_t pos = 0;
    if (lseek(fd, 0, SEEK_SET) != 0) return fail(err, errlen, "cannot read the snapshot file");
    for (;;) {
        uint8_t hdr[TAR_BLOCK];
        if (pos + TAR_BLOCK > size || read_full(fd, hdr, sizeof hdr) != 0)
            return fail(err, errlen, "snapshot archive is truncated");
        pos += TAR_BLOCK;
        char name[101], type;
        uint64_t fsize;
        int r = etcd__tar_parse(hdr, name, &fsize, &type);
        if (r == 1) break;
        if (r < 0 || type != '0') return fail(err, errlen, "snapshot archive has a bad header");
        if (tar_padded(fsize) > size - pos)
            return fail(err, errlen, "snapshot archive is truncated");
        if (!marker) {
            if (strcmp(name, SNAP_MARKER_NAME) != 0 || fsize >= 1024)
                return fail(err, errlen, "not a quorumfs snapshot (no %s first)", SNAP_MARKER_NAME);
            char text[1024];
            if (read_full(fd, text, (size_t)tar_padded(fsize)) != 0)
                return fail(err, errlen, "snapshot archive is truncated");
            text[fsize] = '\0';
            int version = 0;
            if (sscanf(text, "quorumfs-snapshot %d", &version) != 1 ||
                version != SNAP_FORMAT_VERSION)
                return fail(err, errlen, "unsupported snapshot format (want version %d)",
                            SNAP_FORMAT_VERSION);
            const char *t = strstr(text, "\nterm ");
            *term = t ? strtoull(t + 6, NULL, 10) : 0;
            pos += tar_padded(fsize);
            marker = true;
            continue;
        }
        if (!db_member(name))
            return fail(err, errlen, "unexpected member \"%s\" in snapshot", name);
        char path[SNAP_PATH_MAX + 128];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name + strlen(SNAP_DB_PREFIX)) >=
            sizeof path)
            return fail(err, errlen, "data directory path is too long");
        int out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (out < 0) return fail(err, errlen, "cannot create %s: %s", path, strerror(errno));
        uint64_t left = tar_padded(fsize), data = fsize;
        int rc = 0;
        while (rc == 0 && left) {
            size_t k = left < RESTORE_BUF_BYTES ? (size_t)left : RESTORE_BUF_BYTES;
            if (read_full(fd, buf, k) != 0) rc = -1;
            size_t w = data < k ? (size_t)data : k;
            if (rc == 0 && w && write_full(out, buf, w) != 0) rc = -2;
            data -= w;
            left -= k;
        }
        if (rc == 0 && fsync(out) != 0) rc = -2;
        close(out);
        if (rc == -1) return fail(err, errlen, "snapshot archive is truncated");
        if (rc) return fail(err, errlen, "cannot write %s: %s", path, strerror(errno));
        pos += tar_padded(fsize);
    }
    if (!marker) return fail(err, errlen, "not a quorumfs snapshot (empty archive)");
    return 0;
}

int etcd__snapshot_restore_config(const char *file, const struct server_config *cfg, char *err,
                                  size_t errlen) {
    if (err && errlen) err[0] = '\0';
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail(err, errlen, "cannot open %s: %s", file, strerror(errno));
    struct stat stt;
    int rc = -1;
    char db[SNAP_PATH_MAX], tmp[SNAP_PATH_MAX + 16];
    uint64_t term = 0;
    if (fstat(fd, &stt) != 0) {
        fail(err, errlen, "cannot stat %s: %s", file, strerror(errno));
        goto out_fd;
    }
    uint64_t size = (uint64_t)stt.st_size;
    if (size < SNAP_SHA_BYTES + 3 * TAR_BLOCK || (size - SNAP_SHA_BYTES) % TAR_BLOCK != 0) {
        fail(err, errlen, "%s is not a snapshot (size %" PRIu64 " is not 512*n + 32)", file, size);
        goto out_fd;
    }
    size -= SNAP_SHA_BYTES;
    if (check_sha(fd, size, err, errlen) != 0) goto out_fd;
    if ((size_t)snprintf(db, sizeof db, "%s/db", cfg->data_dir) >= sizeof db) {
        fail(err, errlen, "data directory path is too long");
        goto out_fd;
    }
    snprintf(tmp, sizeof tmp, "%s.restoring", db);
    if (access(db, F_OK) == 0) {
        fail(err, errlen, "data-dir %s already holds a database (%s)", cfg->data_dir, db);
        goto out_fd;
    }
    if (mkdir(cfg->data_dir, 0700) != 0 && errno != EEXIST) {
        fail(err, errlen, "cannot create %s: %s", cfg->data_dir, strerror(errno));
        goto out_fd;
    }
    rm_tree(tmp);
    if (mkdir(tmp, 0700) != 0) {
        fail(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        goto out_fd;
    }
    if (unpack(fd, size, tmp, &term, err, errlen) != 0) goto out_tmp;

    /* A new cluster from the data: the copied Raft log is dropped and the
     * configuration becomes the members the flags describe. */
    struct store_options opt;
    store_options_init(&opt);
    opt.data_dir = tmp;
    opt.quota_bytes = cfg->quota_backend_bytes;
    opt.max_request_bytes = cfg->max_request_bytes;
    struct store *s = NULL;
    char serr[256] = "";
    int src = store_open(&opt, &s, serr, sizeof serr);
    if (src) {
        fail(err, errlen, "cannot open the restored store: %s (%s)", store_strerror(src), serr);
        goto out_tmp;
    }
    struct raft_snapshot_meta meta;
    memset(&meta, 0, sizeof meta);
    meta.index = store_applied_index(s);
    meta.term = term ? term : 1;
    for (size_t i = 0; i < cfg->n_members && i < RAFT_MEMBERS_MAX; i++)
        meta.conf.voters[meta.conf.n_voters++] = cfg->members[i].id;
    struct raft_hard_state hs = {.term = meta.term, .vote = 0, .commit = meta.index};
    src = store_raft_install_snapshot(s, &meta, &hs);
    store_close(s);
    if (src) {
        fail(err, errlen, "cannot reset the Raft state: %s", store_strerror(src));
        goto out_tmp;
    }
    if (rename(tmp, db) != 0) {
        fail(err, errlen, "cannot move %s to %s: %s", tmp, db, strerror(errno));
        goto out_tmp;
    }
    rc = 0;
    goto out_fd;
out_tmp:
    rm_tree(tmp);
out_fd:
    close(fd);
    return rc;
}

int etcd__snapshot_restore(const char *file, const char *data_dir, char *err, size_t errlen) {
    /* The member `quorumfs --data-dir DIR` alone would be. */
    struct server_config *cfg = malloc(sizeof *cfg); /* large: off the stack */
    if (!cfg) return fail(err, errlen, "out of memory");
    char *argv[] = {"quorumfs", "--data-dir", (char *)(uintptr_t)data_dir, NULL};
    char perr[256];
    int rc = server_config_parse(cfg, 3, argv, perr, sizeof perr) == 0
                 ? etcd__snapshot_restore_config(file, cfg, err, errlen)
                 : fail(err, errlen, "%s", perr);
    free(cfg);
    return rc;
}
