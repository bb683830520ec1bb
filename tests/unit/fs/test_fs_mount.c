/*
 * test_fs_mount.c - fs/ mounted for real over the in-memory backend
 * (memback.h), exercised through system calls: files, directories, the
 * path spelling, rename, O_EXCL, truncate, metadata, xattrs, size limits,
 * backend errors, inotify, kernel cache invalidation, large directories and
 * readdir under concurrent change.
 *
 * Every test mounts a fresh temporary directory and always unmounts it
 * (fs_stop, then umount2(MNT_DETACH) if fs_run does not return in time).
 * Needs /dev/fuse and permission to mount (root). Waits poll with deadlines.
 */
#define _GNU_SOURCE
#include "fs/fs.h"
#include "tests/harness.h"
#include "tests/unit/fs/memback.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#define MOUNT_WAIT_MS 10000
#define UNMOUNT_WAIT_MS 20000
#define EVENT_WAIT_MS 5000

struct mnt {
    char dir[64];
    struct memback *mb;
    struct fs *fs;
    pthread_t thr;
    atomic_int done;
    int rc;
};

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static void *run_main(void *arg) {
    struct mnt *m = arg;
    m->rc = fs_run(m->fs);
    atomic_store(&m->done, 1);
    return NULL;
}

static int is_mounted(const char *dir) {
    struct stat a, b;
    if (stat(dir, &a) != 0 || stat("/tmp", &b) != 0) return 0;
    return a.st_dev != b.st_dev;
}

static int mnt_down(struct mnt *m);

static int mnt_up(struct mnt *m, void (*tweak)(struct fs_options *)) {
    memset(m, 0, sizeof *m);
    snprintf(m->dir, sizeof m->dir, "/tmp/qfs-fs-XXXXXX");
    if (mkdtemp(m->dir) == NULL) return -errno;
    m->mb = mb_new();
    struct fs_options opt;
    fs_options_init(&opt);
    opt.mountpoint = m->dir;
    if (tweak) tweak(&opt);
    struct fs_backend be = mb_backend(m->mb);
    int rc = fs_new(&opt, &be, &m->fs);
    if (rc != 0) {
        mb_free(m->mb);
        rmdir(m->dir);
        return rc;
    }
    m->mb->fs = m->fs;
    if (pthread_create(&m->thr, NULL, run_main, m) != 0) {
        fs_free(m->fs);
        mb_free(m->mb);
        rmdir(m->dir);
        return -EAGAIN;
    }
    int64_t deadline = now_ms() + MOUNT_WAIT_MS;
    while (!is_mounted(m->dir)) {
        if (atomic_load(&m->done) || now_ms() > deadline) {
            fprintf(stderr, "  mount failed: %s\n", fs_errmsg(m->fs));
            mnt_down(m);
            return -EIO;
        }
        sleep_ms(5);
    }
    return 0;
}

static int mnt_down(struct mnt *m) {
    fs_stop(m->fs);
    int64_t deadline = now_ms() + UNMOUNT_WAIT_MS;
    while (!atomic_load(&m->done) && now_ms() < deadline) sleep_ms(5);
    if (!atomic_load(&m->done)) {
        umount2(m->dir, MNT_DETACH);
        deadline = now_ms() + UNMOUNT_WAIT_MS;
        while (!atomic_load(&m->done) && now_ms() < deadline) sleep_ms(5);
        if (!atomic_load(&m->done)) {
            fprintf(stderr, "  fs_run did not return; leaking it\n");
            return -ETIMEDOUT;
        }
        m->rc = m->rc ? m->rc : -ETIMEDOUT;
    }
    pthread_join(m->thr, NULL);
    m->mb->fs = NULL;
    fs_free(m->fs);
    mb_free(m->mb);
    if (is_mounted(m->dir)) umount2(m->dir, MNT_DETACH);
    rmdir(m->dir);
    return m->rc;
}

/* Runs body on a fresh mount and always unmounts. */
#define MOUNT_TEST(name, tweak)                                                                    \
    static void body_##name(struct mnt *m);                                                        \
    TEST(name) {                                                                                   \
        struct mnt mt;                                                                             \
        ASSERT_EQ(mnt_up(&mt, tweak), 0);                                                          \
        body_##name(&mt);                                                                          \
        ASSERT_EQ(mnt_down(&mt), 0);                                                               \
    }                                                                                              \
    static void body_##name(struct mnt *m)

/* m->dir + "/" + rel in one of a few rotating buffers. */
static const char *P(struct mnt *m, const char *rel) {
    static char bufs[8][1024];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", m->dir, rel);
    return b;
}

/* Writes data as the whole file; returns 0 or -errno (of open, write or close). */
static int write_file(const char *path, const char *data, size_t n) {
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd < 0) return -errno;
    if (n && write(fd, data, n) != (ssize_t)n) {
        int e = errno;
        close(fd);
        return -e;
    }
    if (close(fd) != 0) return -errno;
    return 0;
}

static int write_str(const char *path, const char *s) {
    return write_file(path, s, strlen(s));
}

/* Reads the file into buf (NUL-terminated); returns its length or -errno. */
static long read_file(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -errno;
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, size - 1 - n);
        if (r < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        if (r == 0) break;
        n += (size_t)r;
        if (n == size - 1) break;
    }
    buf[n] = '\0';
    close(fd);
    return (long)n;
}

/* The store's value of key k as a string, or NULL (caller frees). */
static char *kv_str(struct mnt *m, const char *k) {
    struct fs_kv kv;
    if (mb_lookup(m->mb, k, &kv) != 0) return NULL;
    char *s = mb_dup(kv.value, kv.value_len);
    fs_kv_clear(&kv);
    return s;
}

static int kv_has(struct mnt *m, const char *k) {
    struct fs_kv kv;
    int rc = mb_lookup(m->mb, k, &kv);
    fs_kv_clear(&kv);
    return rc == 0;
}

/* Names in a directory (not . and ..), sorted, joined by '|'. */
static int names_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}
static char *list_dir(const char *path) {
    DIR *d = opendir(path);
    if (d == NULL) return NULL;
    char *names[256];
    size_t n = 0, total = 1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 256) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        names[n] = strdup(e->d_name);
        total += strlen(e->d_name) + 1;
        n++;
    }
    closedir(d);
    qsort(names, n, sizeof *names, names_cmp);
    char *r = calloc(1, total);
    for (size_t i = 0; i < n; i++) {
        if (i) strcat(r, "|");
        strcat(r, names[i]);
        free(names[i]);
    }
    return r;
}

#define ASSERT_LIST(path, want)                                                                    \
    do {                                                                                           \
        char *got_ = list_dir(path);                                                               \
        int ok_ = got_ && strcmp(got_, want) == 0;                                                 \
        if (!ok_) fprintf(stderr, "  list %s: \"%s\"\n", path, got_ ? got_ : "(null)");            \
        free(got_);                                                                                \
        ASSERT(ok_);                                                                               \
    } while (0)

#define ASSERT_KV(m, key, want)                                                                    \
    do {                                                                                           \
        char *got_ = kv_str(m, key);                                                               \
        int ok_ = got_ && strcmp(got_, want) == 0;                                                 \
        if (!ok_) fprintf(stderr, "  key %s: \"%s\"\n", key, got_ ? got_ : "(absent)");            \
        free(got_);                                                                                \
        ASSERT(ok_);                                                                               \
    } while (0)

#define ASSERT_FILE(path, want)                                                                    \
    do {                                                                                           \
        char buf_[4096];                                                                           \
        long n_ = read_file(path, buf_, sizeof buf_);                                              \
        if (n_ < 0 || strcmp(buf_, want) != 0)                                                     \
            fprintf(stderr, "  file %s: %ld \"%s\"\n", path, n_, n_ < 0 ? "" : buf_);              \
        ASSERT(n_ >= 0 && strcmp(buf_, want) == 0);                                                \
    } while (0)

/* ------------------------------------------------------------------------ */

MOUNT_TEST(create_write_read_stat, NULL) {
    ASSERT_EQ(write_str(P(m, "hello"), "world\n"), 0);
    ASSERT_KV(m, "/hello", "world\n");
    ASSERT_FILE(P(m, "hello"), "world\n");
    struct stat st;
    ASSERT_EQ(stat(P(m, "hello"), &st), 0);
    ASSERT(S_ISREG(st.st_mode));
    ASSERT_EQ(st.st_size, 6);
    ASSERT_EQ(st.st_mode & 0777, 0644);
    struct fs_kv kv;
    ASSERT_EQ(mb_lookup(m->mb, "/hello", &kv), 0);
    ASSERT_EQ(kv.mode, S_IFREG | 0644);
    ASSERT_EQ(kv.uid, getuid());
    ASSERT_GT(kv.mtime_ns, 0);
    fs_kv_clear(&kv);
    /* shorter overwrite */
    ASSERT_EQ(write_str(P(m, "hello"), "hi"), 0);
    ASSERT_KV(m, "/hello", "hi");
    ASSERT_FILE(P(m, "hello"), "hi");
    /* O_APPEND */
    int fd = open(P(m, "hello"), O_WRONLY | O_APPEND);
    ASSERT(fd >= 0);
    ASSERT_EQ(write(fd, "!!", 2), 2);
    ASSERT_EQ(close(fd), 0);
    ASSERT_KV(m, "/hello", "hi!!");
    /* a write past the end leaves zeros; nothing is stored before close */
    fd = open(P(m, "hello"), O_RDWR);
    ASSERT(fd >= 0);
    ASSERT_EQ(pwrite(fd, "Z", 1, 6), 1);
    ASSERT_KV(m, "/hello", "hi!!");
    char b[16];
    ASSERT_EQ(pread(fd, b, sizeof b, 0), 7); /* the writer reads its own writes */
    ASSERT_MEM_EQ(b, "hi!!\0\0Z", 7);
    ASSERT_EQ(close(fd), 0);
    struct fs_kv v;
    ASSERT_EQ(mb_lookup(m->mb, "/hello", &v), 0);
    ASSERT_EQ(v.value_len, 7);
    ASSERT_MEM_EQ(v.value, "hi!!\0\0Z", 7);
    fs_kv_clear(&v);
    /* an empty file */
    ASSERT_EQ(write_str(P(m, "empty"), ""), 0);
    ASSERT_KV(m, "/empty", "");
    ASSERT_EQ(stat(P(m, "empty"), &st), 0);
    ASSERT_EQ(st.st_size, 0);
    struct statvfs sv;
    ASSERT_EQ(statvfs(m->dir, &sv), 0);
    ASSERT_EQ(sv.f_namemax, 255);
}

MOUNT_TEST(spelling_of_odd_keys, NULL) {
    mb_puts(m->mb, "/dir/a", "A");
    mb_puts(m->mb, "/dir/b%c", "pct");
    mb_put(m->mb, "/dir/\xff", 6, "ff", 2, 0);
    mb_puts(m->mb, "/dir/.", "dot");
    mb_puts(m->mb, "/dir/..", "dotdot");
    mb_puts(m->mb, "/dir//x", "empty-component");
    mb_puts(m->mb, "/dir/t\tab", "tab");
    mb_puts(m->mb, "/dir/caf\xc3\xa9", "utf8");
    ASSERT_LIST(P(m, "dir"), "%2E|%2E%2E|%FF|%empty|a|b%25c|caf\xc3\xa9|t%09ab");
    ASSERT_FILE(P(m, "dir/%2E"), "dot");
    ASSERT_FILE(P(m, "dir/%2E%2E"), "dotdot");
    ASSERT_FILE(P(m, "dir/%FF"), "ff");
    ASSERT_FILE(P(m, "dir/b%25c"), "pct");
    ASSERT_FILE(P(m, "dir/%empty/x"), "empty-component");
    ASSERT_FILE(P(m, "dir/t%09ab"), "tab");
    struct stat st;
    ASSERT_EQ(stat(P(m, "dir/%empty"), &st), 0);
    ASSERT(S_ISDIR(st.st_mode));
    /* non-canonical spellings name nothing and cannot be created */
    ASSERT_EQ(stat(P(m, "dir/b%c"), &st), -1);
    ASSERT_EQ(errno, ENOENT);
    ASSERT_EQ(stat(P(m, "dir/%41"), &st), -1);
    ASSERT_EQ(errno, ENOENT);
    ASSERT_EQ(write_str(P(m, "dir/50%off"), "x"), -EINVAL);
    ASSERT_EQ(mkdir(P(m, "dir/%zz"), 0755), -1);
    ASSERT_EQ(errno, EINVAL);
    /* creating through the spelling stores the raw key */
    ASSERT_EQ(write_str(P(m, "dir/new%%0A"), "n"), 0);
    ASSERT_KV(m, "/dir/new%\n", "n");
    ASSERT_EQ(write_str(P(m, "dir/%2E%2E"), "changed"), 0);
    ASSERT_KV(m, "/dir/..", "changed");
}

MOUNT_TEST(long_names, NULL) {
    char key[400], name[300];
    strcpy(key, "/long/");
    memset(key + 6, 'q', 300);
    key[306] = '\0';
    mb_puts(m->mb, key, "long value");
    DIR *d = opendir(P(m, "long"));
    ASSERT(d != NULL);
    struct dirent *e;
    name[0] = '\0';
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] == 'q') snprintf(name, sizeof name, "%s", e->d_name);
    closedir(d);
    ASSERT_EQ(strlen(name), 234);
    ASSERT(strstr(name, "%~") != NULL);
    char rel[400];
    snprintf(rel, sizeof rel, "long/%s", name);
    ASSERT_FILE(P(m, rel), "long value");
    /* a wrong hash names nothing */
    rel[strlen(rel) - 1] = rel[strlen(rel) - 1] == '0' ? '1' : '0';
    struct stat st;
    ASSERT_EQ(stat(P(m, rel), &st), -1);
    /* a new name over NAME_MAX cannot be made */
    memset(name, 'w', 256);
    name[256] = '\0';
    snprintf(rel, sizeof rel, "long/%s", name);
    ASSERT_EQ(write_str(P(m, rel), "x"), -ENAMETOOLONG);
}

MOUNT_TEST(value_and_prefix, NULL) {
    mb_puts(m->mb, "/a", "top");
    mb_puts(m->mb, "/a/b", "child");
    struct stat st;
    ASSERT_EQ(stat(P(m, "a"), &st), 0);
    ASSERT(S_ISDIR(st.st_mode));
    ASSERT_LIST(P(m, "a"), "%value|b");
    ASSERT_FILE(P(m, "a/%value"), "top");
    ASSERT_FILE(P(m, "a/b"), "child");
    ASSERT_EQ(write_str(P(m, "a/%value"), "top2"), 0);
    ASSERT_KV(m, "/a", "top2");
    /* a directory gets a value by creating "%value" in it */
    ASSERT_EQ(mkdir(P(m, "d"), 0755), 0);
    ASSERT_EQ(write_str(P(m, "d/%value"), "dv"), 0);
    ASSERT_KV(m, "/d", "dv");
    ASSERT_LIST(P(m, "d"), "%value");
    ASSERT_EQ(rmdir(P(m, "d")), -1); /* the value is an entry of the directory */
    ASSERT_EQ(errno, ENOTEMPTY);
    ASSERT_EQ(unlink(P(m, "d/%value")), 0);
    ASSERT(!kv_has(m, "/d"));
    ASSERT_EQ(rmdir(P(m, "d")), 0);
    /* removing the value keeps the directory */
    ASSERT_EQ(unlink(P(m, "a/%value")), 0);
    ASSERT(!kv_has(m, "/a"));
    ASSERT_EQ(stat(P(m, "a/b"), &st), 0);
    ASSERT_LIST(P(m, "a"), "b");
    ASSERT_EQ(stat(P(m, "%value"), &st), -1); /* the root ("/" prefix) has no value */
    ASSERT_EQ(write_str(P(m, "%value"), "x"), -EINVAL);
    /* a bare '%' is an ordinary name, and so is "50% off" */
    ASSERT_EQ(write_str(P(m, "%"), "pct"), 0);
    ASSERT_KV(m, "/%", "pct");
    ASSERT_EQ(write_str(P(m, "a/50% off"), "half"), 0);
    ASSERT_KV(m, "/a/50% off", "half");
    ASSERT_LIST(P(m, "a"), "50% off|b");
    /* a file cannot hold names */
    ASSERT_EQ(write_str(P(m, "f"), "x"), 0);
    ASSERT_EQ(write_str(P(m, "f/g"), "y"), -ENOTDIR);
}

MOUNT_TEST(mkdir_rmdir, NULL) {
    ASSERT_EQ(mkdir(P(m, "e"), 0750), 0);
    struct fs_kv kv;
    ASSERT_EQ(mb_lookup(m->mb, "/e/", &kv), 0);
    ASSERT_EQ(kv.mode, S_IFDIR | 0750);
    ASSERT_EQ(kv.value_len, 0);
    fs_kv_clear(&kv);
    struct stat st;
    ASSERT_EQ(stat(P(m, "e"), &st), 0);
    ASSERT(S_ISDIR(st.st_mode));
    ASSERT_EQ(st.st_mode & 0777, 0750);
    ASSERT_LIST(P(m, "e"), ""); /* the marker is not listed */
    ASSERT_EQ(mkdir(P(m, "e"), 0755), -1);
    ASSERT_EQ(errno, EEXIST);
    ASSERT_EQ(mkdir(P(m, "e/sub"), 0755), 0);
    ASSERT_EQ(write_str(P(m, "e/sub/f"), "x"), 0);
    ASSERT_EQ(rmdir(P(m, "e")), -1);
    ASSERT_EQ(errno, ENOTEMPTY);
    ASSERT_EQ(rmdir(P(m, "e/sub")), -1);
    ASSERT_EQ(errno, ENOTEMPTY);
    ASSERT_EQ(unlink(P(m, "e/sub/f")), 0);
    ASSERT_EQ(stat(P(m, "e/sub"), &st), 0); /* still there: its marker */
    ASSERT_EQ(rmdir(P(m, "e/sub")), 0);
    ASSERT_EQ(rmdir(P(m, "e")), 0);
    ASSERT(!kv_has(m, "/e/"));
    ASSERT_EQ(mb_count(m->mb), 0);
    ASSERT_EQ(stat(P(m, "e"), &st), -1);
    ASSERT_EQ(errno, ENOENT);
    /* a directory that exists only through its keys stays when its last key
     * is unlinked through the mount, like a local directory */
    mb_puts(m->mb, "/imp/x", "1");
    ASSERT_EQ(unlink(P(m, "imp/x")), 0);
    ASSERT_EQ(stat(P(m, "imp"), &st), 0);
    ASSERT(S_ISDIR(st.st_mode));
    ASSERT(kv_has(m, "/imp/"));
    ASSERT_EQ(rmdir(P(m, "imp")), 0);
    ASSERT_EQ(mb_count(m->mb), 0);
    /* rmdir of a file, unlink of a directory */
    ASSERT_EQ(write_str(P(m, "plain"), "p"), 0);
    ASSERT_EQ(rmdir(P(m, "plain")), -1);
    ASSERT_EQ(errno, ENOTDIR);
    ASSERT_EQ(mkdir(P(m, "dd"), 0755), 0);
    ASSERT_EQ(unlink(P(m, "dd")), -1);
    ASSERT_EQ(errno, EISDIR);
}

MOUNT_TEST(rename_files_and_dirs, NULL) {
    ASSERT_EQ(write_str(P(m, "a"), "1"), 0);
    ASSERT_EQ(write_str(P(m, "b"), "2"), 0);
    ASSERT_EQ(rename(P(m, "a"), P(m, "b")), 0);
    ASSERT_KV(m, "/b", "1");
    ASSERT(!kv_has(m, "/a"));
    ASSERT_FILE(P(m, "b"), "1");
    struct stat st;
    ASSERT_EQ(stat(P(m, "a"), &st), -1);
    /* RENAME_NOREPLACE: compare "absent" on the destination */
    ASSERT_EQ(write_str(P(m, "c"), "3"), 0);
    ASSERT_EQ(syscall(SYS_renameat2, AT_FDCWD, P(m, "c"), AT_FDCWD, P(m, "b"), RENAME_NOREPLACE),
              -1);
    ASSERT_EQ(errno, EEXIST);
    ASSERT_EQ(syscall(SYS_renameat2, AT_FDCWD, P(m, "c"), AT_FDCWD, P(m, "c2"), RENAME_NOREPLACE),
              0);
    ASSERT_KV(m, "/c2", "3");
    /* an open file follows its rename */
    int fd = open(P(m, "c2"), O_RDWR);
    ASSERT(fd >= 0);
    ASSERT_EQ(rename(P(m, "c2"), P(m, "c3")), 0);
    ASSERT_EQ(write(fd, "X", 1), 1);
    ASSERT_EQ(fstat(fd, &st), 0);
    ASSERT_EQ(close(fd), 0);
    ASSERT_KV(m, "/c3", "X");
    ASSERT(!kv_has(m, "/c2"));
    /* a directory moves with its whole subtree, its marker and its value */
    ASSERT_EQ(mkdir(P(m, "src"), 0700), 0);
    ASSERT_EQ(write_str(P(m, "src/x"), "sx"), 0);
    ASSERT_EQ(mkdir(P(m, "src/y"), 0755), 0);
    ASSERT_EQ(write_str(P(m, "src/y/z"), "syz"), 0);
    mb_puts(m->mb, "/src", "srcval");
    ASSERT_EQ(mkdir(P(m, "other"), 0755), 0);
    ASSERT_EQ(rename(P(m, "src"), P(m, "other/dst")), 0);
    ASSERT_KV(m, "/other/dst/x", "sx");
    ASSERT_KV(m, "/other/dst/y/z", "syz");
    ASSERT_KV(m, "/other/dst", "srcval");
    ASSERT(kv_has(m, "/other/dst/"));
    ASSERT(!kv_has(m, "/src"));
    ASSERT(!kv_has(m, "/src/x"));
    ASSERT(!kv_has(m, "/src/"));
    ASSERT_FILE(P(m, "other/dst/y/z"), "syz");
    ASSERT_EQ(stat(P(m, "other/dst"), &st), 0);
    ASSERT_EQ(st.st_mode & 0777, 0700);
    ASSERT_EQ(stat(P(m, "src"), &st), -1);
    /* onto a non-empty directory, into itself, file onto directory */
    ASSERT_EQ(mkdir(P(m, "full"), 0755), 0);
    ASSERT_EQ(write_str(P(m, "full/f"), "f"), 0);
    ASSERT_EQ(rename(P(m, "other/dst"), P(m, "full")), -1);
    ASSERT_EQ(errno, ENOTEMPTY);
    ASSERT_EQ(rename(P(m, "other/dst"), P(m, "other/dst/y/in")), -1);
    ASSERT_EQ(errno, EINVAL);
    ASSERT_EQ(rename(P(m, "b"), P(m, "full")), -1);
    ASSERT_EQ(errno, EISDIR);
    /* onto an empty directory */
    ASSERT_EQ(mkdir(P(m, "emptyd"), 0755), 0);
    ASSERT_EQ(rename(P(m, "other/dst"), P(m, "emptyd")), 0);
    ASSERT_KV(m, "/emptyd/y/z", "syz");
    ASSERT_LIST(P(m, "emptyd"), "%value|x|y");
    ASSERT_LIST(P(m, "other"), ""); /* kept by a marker */
}

MOUNT_TEST(exclusive_create, NULL) {
    int fd = open(P(m, "x"), O_CREAT | O_EXCL | O_WRONLY, 0600);
    ASSERT(fd >= 0);
    ASSERT_EQ(close(fd), 0);
    ASSERT_KV(m, "/x", "");
    fd = open(P(m, "x"), O_CREAT | O_EXCL | O_WRONLY, 0600);
    ASSERT_EQ(fd, -1);
    ASSERT_EQ(errno, EEXIST);
    /* appeared elsewhere after the kernel cached "absent" */
    struct stat st;
    ASSERT_EQ(stat(P(m, "late"), &st), -1);
    mb_puts(m->mb, "/late", "remote");
    int64_t deadline = now_ms() + EVENT_WAIT_MS;
    for (;;) { /* wait for the invalidation of the negative entry */
        fd = open(P(m, "late"), O_CREAT | O_EXCL | O_WRONLY, 0600);
        if (fd < 0 || now_ms() > deadline) break;
        close(fd);
        mb_puts(m->mb, "/late", "remote");
        sleep_ms(10);
    }
    ASSERT_EQ(fd, -1);
    ASSERT_EQ(errno, EEXIST);
    /* without O_EXCL an existing key is opened, not replaced */
    fd = open(P(m, "late"), O_CREAT | O_RDONLY, 0600);
    ASSERT(fd >= 0);
    char b[16] = {0};
    ASSERT_EQ(read(fd, b, sizeof b), 6);
    ASSERT_STR_EQ(b, "remote");
    close(fd);
}

MOUNT_TEST(unlink_and_truncate, NULL) {
    ASSERT_EQ(write_str(P(m, "u"), "data"), 0);
    ASSERT_EQ(unlink(P(m, "u")), 0);
    ASSERT(!kv_has(m, "/u"));
    ASSERT_EQ(unlink(P(m, "u")), -1);
    ASSERT_EQ(errno, ENOENT);
    ASSERT_EQ(write_str(P(m, "t"), "0123456789"), 0);
    ASSERT_EQ(truncate(P(m, "t"), 4), 0);
    ASSERT_KV(m, "/t", "0123");
    ASSERT_EQ(truncate(P(m, "t"), 6), 0);
    struct fs_kv kv;
    ASSERT_EQ(mb_lookup(m->mb, "/t", &kv), 0);
    ASSERT_EQ(kv.value_len, 6);
    ASSERT_MEM_EQ(kv.value, "0123\0\0", 6);
    fs_kv_clear(&kv);
    int fd = open(P(m, "t"), O_RDWR);
    ASSERT(fd >= 0);
    ASSERT_EQ(ftruncate(fd, 2), 0);
    struct stat st;
    ASSERT_EQ(fstat(fd, &st), 0);
    ASSERT_EQ(st.st_size, 2);
    ASSERT_EQ(close(fd), 0);
    ASSERT_KV(m, "/t", "01");
    /* O_TRUNC: one put at close */
    long before = atomic_load(&m->mb->submits);
    fd = open(P(m, "t"), O_WRONLY | O_TRUNC);
    ASSERT(fd >= 0);
    ASSERT_KV(m, "/t", "01");
    ASSERT_EQ(write(fd, "new", 3), 3);
    ASSERT_EQ(close(fd), 0);
    ASSERT_KV(m, "/t", "new");
    ASSERT_EQ(atomic_load(&m->mb->submits) - before, 1);
    /* an open file unlinked through the mount does not come back at close */
    fd = open(P(m, "t"), O_WRONLY);
    ASSERT(fd >= 0);
    ASSERT_EQ(unlink(P(m, "t")), 0);
    ASSERT_EQ(write(fd, "zombie", 6), 6);
    ASSERT_EQ(close(fd), 0);
    ASSERT(!kv_has(m, "/t"));
}

MOUNT_TEST(metadata_persisted, NULL) {
    ASSERT_EQ(write_str(P(m, "f"), "x"), 0);
    ASSERT_EQ(chmod(P(m, "f"), 0600), 0);
    struct fs_kv kv;
    ASSERT_EQ(mb_lookup(m->mb, "/f", &kv), 0);
    ASSERT_EQ(kv.mode, S_IFREG | 0600);
    ASSERT_EQ(kv.value_len, 1);
    fs_kv_clear(&kv);
    ASSERT_EQ(chown(P(m, "f"), 1234, 5678), 0);
    struct stat st;
    ASSERT_EQ(stat(P(m, "f"), &st), 0);
    ASSERT_EQ(st.st_mode & 07777, 0600);
    ASSERT_EQ(st.st_uid, 1234);
    ASSERT_EQ(st.st_gid, 5678);
    /* cp -p: write, then fchmod and futimens, then close: both survive */
    int fd = open(P(m, "f"), O_WRONLY | O_TRUNC);
    ASSERT(fd >= 0);
    ASSERT_EQ(write(fd, "content", 7), 7);
    ASSERT_EQ(fchmod(fd, 0640), 0);
    struct timespec ts[2] = {{1000000000, 5}, {1000000000, 5}};
    ASSERT_EQ(futimens(fd, ts), 0);
    ASSERT_EQ(close(fd), 0);
    ASSERT_EQ(mb_lookup(m->mb, "/f", &kv), 0);
    ASSERT_EQ(kv.mode, S_IFREG | 0640);
    ASSERT_EQ(kv.mtime_ns, INT64_C(1000000000000000005));
    ASSERT_EQ(kv.value_len, 7);
    fs_kv_clear(&kv);
    ASSERT_EQ(stat(P(m, "f"), &st), 0);
    ASSERT_EQ(st.st_mtim.tv_sec, 1000000000);
    /* keys written without metadata show the defaults */
    mb_puts(m->mb, "/plain", "p");
    ASSERT_EQ(stat(P(m, "plain"), &st), 0);
    ASSERT_EQ(st.st_mode, S_IFREG | 0644);
    /* directories keep theirs in the marker */
    mb_puts(m->mb, "/impl/x", "1");
    ASSERT_EQ(chmod(P(m, "impl"), 0711), 0);
    ASSERT_EQ(mb_lookup(m->mb, "/impl/", &kv), 0);
    ASSERT_EQ(kv.mode, S_IFDIR | 0711);
    fs_kv_clear(&kv);
    ASSERT_EQ(stat(P(m, "impl"), &st), 0);
    ASSERT_EQ(st.st_mode, S_IFDIR | 0711);
    ASSERT_LIST(P(m, "impl"), "x");
}

MOUNT_TEST(xattrs, NULL) {
    ASSERT_EQ(write_str(P(m, "f"), "1"), 0);
    ASSERT_EQ(write_str(P(m, "f"), "22"), 0);
    struct fs_kv kv;
    ASSERT_EQ(mb_lookup(m->mb, "/f", &kv), 0);
    char want[32], got[64];
    ssize_t n = getxattr(P(m, "f"), "user.quorumfs.mod_revision", got, sizeof got);
    ASSERT_GT(n, 0);
    got[n] = '\0';
    snprintf(want, sizeof want, "%lld", (long long)kv.mod_revision);
    ASSERT_STR_EQ(got, want);
    n = getxattr(P(m, "f"), "user.quorumfs.create_revision", got, sizeof got);
    ASSERT_GT(n, 0);
    got[n] = '\0';
    snprintf(want, sizeof want, "%lld", (long long)kv.create_revision);
    ASSERT_STR_EQ(got, want);
    fs_kv_clear(&kv);
    /* one put per close, none at create: 2 versions */
    n = getxattr(P(m, "f"), "user.quorumfs.version", got, sizeof got);
    ASSERT_EQ(n, 1);
    ASSERT_EQ(got[0], '2');
    n = getxattr(P(m, "f"), "user.quorumfs.lease", got, sizeof got);
    ASSERT_EQ(n, 1);
    ASSERT_EQ(got[0], '0');
    ASSERT_EQ(getxattr(P(m, "f"), "user.other", got, sizeof got), -1);
    ASSERT_EQ(errno, ENODATA);
    ASSERT_EQ(getxattr(P(m, "f"), "user.quorumfs.version", got, 0), 1); /* size query */
    char list[512];
    n = listxattr(P(m, "f"), list, sizeof list);
    ASSERT_GT(n, 0);
    int seen = 0;
    for (char *p = list; p < list + n; p += strlen(p) + 1)
        seen += strncmp(p, "user.quorumfs.", 14) == 0;
    ASSERT_EQ(seen, 4);
    int64_t rev;
    mb_revision(m->mb, &rev);
    n = getxattr(m->dir, "user.quorumfs.revision", got, sizeof got);
    ASSERT_GT(n, 0);
    got[n] = '\0';
    snprintf(want, sizeof want, "%lld", (long long)rev);
    ASSERT_STR_EQ(got, want);
    ASSERT_EQ(setxattr(P(m, "f"), "user.x", "v", 1, 0), -1);
    ASSERT_EQ(errno, ENOTSUP);
    ASSERT_EQ(removexattr(P(m, "f"), "user.quorumfs.lease"), -1);
    ASSERT_EQ(errno, ENOTSUP);
}

static void small_values(struct fs_options *o) {
    o->value_bytes_max = 1000;
}

MOUNT_TEST(value_limits, small_values) {
    char big[2000];
    memset(big, 'b', sizeof big);
    /* the mount's own limit: write(2) fails EFBIG, close(2) reports it too,
     * and nothing of the handle is put: the created file never existed */
    int fd = open(P(m, "big"), O_CREAT | O_WRONLY | O_TRUNC, 0644);
    ASSERT(fd >= 0);
    ASSERT_EQ(write(fd, big, 1000), 1000);
    ASSERT_EQ(write(fd, big, 1), -1);
    ASSERT_EQ(errno, EFBIG);
    ASSERT_EQ(close(fd), -1);
    ASSERT_EQ(errno, EFBIG);
    struct fs_kv kv;
    ASSERT_EQ(mb_lookup(m->mb, "/big", &kv), -ENOENT);
    struct stat st;
    int64_t deadline = now_ms() + EVENT_WAIT_MS; /* its name goes too (release is async) */
    while (stat(P(m, "big"), &st) == 0 && now_ms() < deadline) sleep_ms(5);
    ASSERT_EQ(stat(P(m, "big"), &st), -1);
    ASSERT_EQ(errno, ENOENT);
    ASSERT_EQ(m->mb->applied, 0);
    /* the node's limit: close(2) fails EFBIG, the old value stays */
    pthread_mutex_lock(&m->mb->lock);
    m->mb->value_max = 100;
    pthread_mutex_unlock(&m->mb->lock);
    ASSERT_EQ(write_str(P(m, "small"), "ok"), 0);
    ASSERT_EQ(write_file(P(m, "small"), big, 500), -EFBIG);
    ASSERT_KV(m, "/small", "ok");
}

MOUNT_TEST(backend_errors, NULL) {
    ASSERT_EQ(write_str(P(m, "e"), "v1"), 0);
    pthread_mutex_lock(&m->mb->lock);
    m->mb->fail_err = -EIO;
    m->mb->fail_count = 1;
    pthread_mutex_unlock(&m->mb->lock);
    ASSERT_EQ(write_str(P(m, "e"), "v2"), -EIO);
    ASSERT_KV(m, "/e", "v1");
    int fd = open(P(m, "e"), O_WRONLY | O_TRUNC);
    ASSERT(fd >= 0);
    ASSERT_EQ(write(fd, "v3", 2), 2);
    pthread_mutex_lock(&m->mb->lock);
    m->mb->fail_err = -ETIMEDOUT;
    m->mb->fail_count = 1;
    pthread_mutex_unlock(&m->mb->lock);
    ASSERT_EQ(fsync(fd), -1);
    ASSERT_EQ(errno, ETIMEDOUT);
    ASSERT_EQ(write(fd, "v4", 2), 2);
    ASSERT_EQ(fsync(fd), 0);
    ASSERT_EQ(close(fd), 0);
    ASSERT_KV(m, "/e", "v3v4");
    pthread_mutex_lock(&m->mb->lock);
    m->mb->fail_err = -ENOSPC;
    m->mb->fail_count = 1;
    pthread_mutex_unlock(&m->mb->lock);
    ASSERT_EQ(mkdir(P(m, "nospace"), 0755), -1);
    ASSERT_EQ(errno, ENOSPC);
}

/* Reads inotify events until every wanted (mask, name) pair was seen. */
static int wait_events(int ifd, const uint32_t *masks, const char *const *names, int n) {
    int seen[16] = {0}, left = n;
    char buf[4096] __attribute__((aligned(8)));
    int64_t deadline = now_ms() + EVENT_WAIT_MS;
    while (left > 0 && now_ms() < deadline) {
        struct pollfd p = {ifd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t r = read(ifd, buf, sizeof buf);
        for (char *q = buf; r > 0 && q < buf + r;) {
            struct inotify_event *ev = (struct inotify_event *)q;
            for (int i = 0; i < n; i++)
                if (!seen[i] && (ev->mask & masks[i]) == masks[i] && ev->len &&
                    strcmp(ev->name, names[i]) == 0) {
                    seen[i] = 1;
                    left--;
                }
            q += sizeof *ev + ev->len;
        }
    }
    for (int i = 0; i < n; i++)
        if (!seen[i]) fprintf(stderr, "  no event %#x for %s\n", masks[i], names[i]);
    return left;
}

MOUNT_TEST(inotify_local_ops, NULL) {
    int ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    ASSERT(ifd >= 0);
    int wd = inotify_add_watch(ifd, m->dir, IN_ALL_EVENTS);
    ASSERT(wd >= 0);
    ASSERT_EQ(write_str(P(m, "n1"), "x"), 0);
    ASSERT_EQ(rename(P(m, "n1"), P(m, "n2")), 0);
    ASSERT_EQ(mkdir(P(m, "sub"), 0755), 0);
    ASSERT_EQ(unlink(P(m, "n2")), 0);
    ASSERT_EQ(rmdir(P(m, "sub")), 0);
    const uint32_t masks[] = {IN_CREATE,     IN_MODIFY,           IN_CLOSE_WRITE,
                              IN_MOVED_FROM, IN_MOVED_TO,         IN_CREATE | IN_ISDIR,
                              IN_DELETE,     IN_DELETE | IN_ISDIR};
    const char *const names[] = {"n1", "n1", "n1", "n1", "n2", "sub", "n2", "sub"};
    int missing = wait_events(ifd, masks, names, 8);
    close(ifd);
    ASSERT_EQ(missing, 0);
}

static void long_cache(struct fs_options *o) {
    o->entry_timeout_ms = 60000;
    o->attr_timeout_ms = 60000;
}

/* Polls until path reads as want, or the deadline passes. */
static int eventually_reads(const char *path, const char *want) {
    char buf[256];
    int64_t deadline = now_ms() + EVENT_WAIT_MS;
    do {
        long n = read_file(path, buf, sizeof buf);
        if (n >= 0 && strcmp(buf, want) == 0) return 1;
        sleep_ms(10);
    } while (now_ms() < deadline);
    return 0;
}

static int eventually_stat(const char *path, int want_exists) {
    struct stat st;
    int64_t deadline = now_ms() + EVENT_WAIT_MS;
    do {
        if ((stat(path, &st) == 0) == want_exists) return 1;
        sleep_ms(10);
    } while (now_ms() < deadline);
    return 0;
}

MOUNT_TEST(remote_changes_invalidate, long_cache) {
    /* caches last 60 s: only invalidation can make these pass */
    mb_puts(m->mb, "/r", "v1");
    ASSERT_FILE(P(m, "r"), "v1");
    struct stat st;
    ASSERT_EQ(stat(P(m, "r"), &st), 0);
    ASSERT_EQ(st.st_size, 2);
    mb_puts(m->mb, "/r", "v2-longer");
    ASSERT(eventually_reads(P(m, "r"), "v2-longer"));
    ASSERT_EQ(stat(P(m, "r"), &st), 0);
    ASSERT_EQ(st.st_size, 9);
    ASSERT_EQ(stat(P(m, "nr"), &st), -1); /* cached as absent */
    mb_puts(m->mb, "/nr", "new");
    ASSERT(eventually_stat(P(m, "nr"), 1));
    mb_del(m->mb, "/nr");
    ASSERT(eventually_stat(P(m, "nr"), 0));
    /* a file that becomes a directory */
    mb_puts(m->mb, "/fd", "file");
    ASSERT_EQ(stat(P(m, "fd"), &st), 0);
    ASSERT(S_ISREG(st.st_mode));
    mb_puts(m->mb, "/fd/inner", "in");
    ASSERT(eventually_reads(P(m, "fd/inner"), "in"));
    ASSERT(eventually_reads(P(m, "fd/%value"), "file"));
    /* deep implicit directories appear and vanish */
    mb_puts(m->mb, "/deep/er/key", "k");
    ASSERT(eventually_reads(P(m, "deep/er/key"), "k"));
    mb_del(m->mb, "/deep/er/key");
    ASSERT(eventually_stat(P(m, "deep"), 0));
}

/* keys[i] = prefix + "k%06zu" or "s%06zu" (letter) */
static void fill_names(char **keys, size_t n, const char *prefix, char letter) {
    for (size_t i = 0; i < n; i++) {
        keys[i] = malloc(64);
        snprintf(keys[i], 64, "%s%c%06zu", prefix, letter, i);
    }
}

/* Lists path with getdents64 in chunks of bufsize bytes, counting how often
 * each "k%06d" name appears in seen[] (size n); returns entries or -errno. */
static long count_entries(const char *path, int *seen, size_t n, size_t bufsize,
                          void (*between)(void *), void *arg) {
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -errno;
    char *buf = malloc(bufsize);
    long total = 0;
    for (int call = 0;; call++) {
        long r = syscall(SYS_getdents64, fd, buf, bufsize);
        if (r < 0) {
            total = -errno;
            break;
        }
        if (r == 0) break;
        for (long off = 0; off < r;) {
            struct {
                uint64_t ino;
                int64_t off;
                unsigned short reclen;
                unsigned char type;
                char name[];
            } *d = (void *)(buf + off);
            if (strcmp(d->name, ".") && strcmp(d->name, "..")) {
                total++;
                unsigned long idx;
                if (strlen(d->name) == 7 && sscanf(d->name, "k%06lu", &idx) == 1 && idx < n)
                    seen[idx]++;
            }
            off += d->reclen;
        }
        if (between && call == 2) between(arg);
    }
    free(buf);
    close(fd);
    return total;
}

MOUNT_TEST(ten_thousand_files_through_syscalls, NULL) {
    enum { N = 10000 };
    ASSERT_EQ(mkdir(P(m, "many"), 0755), 0);
    char rel[64];
    for (int i = 0; i < N; i++) {
        snprintf(rel, sizeof rel, "many/k%06d", i);
        int fd = open(P(m, rel), O_CREAT | O_WRONLY | O_EXCL, 0644);
        ASSERT(fd >= 0);
        ASSERT_EQ(close(fd), 0);
    }
    ASSERT_EQ(mb_count(m->mb), N + 1);
    int *seen = calloc(N, sizeof *seen);
    long total = count_entries(P(m, "many"), seen, N, 32768, NULL, NULL);
    int once = 0;
    for (int i = 0; i < N; i++) once += seen[i] == 1;
    free(seen);
    ASSERT_EQ(total, N);
    ASSERT_EQ(once, N);
}

MOUNT_TEST(hundred_thousand_keys_listing, NULL) {
    enum { N = 100000 };
    char **keys = malloc(N * sizeof *keys);
    fill_names(keys, N, "/big/", 'k');
    mb_bulk(m->mb, keys, N, "v");
    for (size_t i = 0; i < N; i++) free(keys[i]);
    free(keys);
    /* subtrees below some children must be skipped, not scanned */
    char *sub[2000];
    fill_names(sub, 2000, "/big/k000005/", 's');
    mb_bulk(m->mb, sub, 2000, "s");
    for (size_t i = 0; i < 2000; i++) free(sub[i]);
    int *seen = calloc(N, sizeof *seen);
    int64_t t0 = now_ms();
    long total = count_entries(P(m, "big"), seen, N, 65536, NULL, NULL);
    int64_t ms = now_ms() - t0;
    int once = 0;
    for (int i = 0; i < N; i++) once += seen[i] == 1;
    free(seen);
    fprintf(stderr, "  listed %ld entries in %lld ms\n", total, (long long)ms);
    ASSERT_EQ(total, N);
    ASSERT_EQ(once, N);
    ASSERT_LT(ms, 120000);
}

struct churn {
    struct mnt *m;
};

static void churn(void *arg) {
    struct churn *c = arg;
    /* delete entries not listed yet, add some before and after the cursor */
    mb_del(c->m->mb, "/ch/k000450");
    mb_del(c->m->mb, "/ch/k000451");
    mb_puts(c->m->mb, "/ch/k000000a", "new-before");
    mb_puts(c->m->mb, "/ch/k000460a", "new-after");
    mb_puts(c->m->mb, "/ch/k000001", "rewritten");
}

MOUNT_TEST(readdir_survives_concurrent_change, NULL) {
    enum { N = 500 };
    char **keys = malloc(N * sizeof *keys);
    fill_names(keys, N, "/ch/", 'k');
    mb_bulk(m->mb, keys, N, "v");
    for (size_t i = 0; i < N; i++) free(keys[i]);
    free(keys);
    int seen[N] = {0};
    struct churn c = {m};
    /* small buffers: many FUSE readdir calls, and the kernel re-asks from
     * offsets in the middle of earlier replies */
    long total = count_entries(P(m, "ch"), seen, N, 700, churn, &c);
    ASSERT_GE(total, N - 2);
    for (int i = 0; i < N; i++) {
        if (i == 450 || i == 451) {
            ASSERT_LE(seen[i], 1);
            continue;
        }
        if (seen[i] != 1) fprintf(stderr, "  k%06d seen %d times\n", i, seen[i]);
        ASSERT_EQ(seen[i], 1);
    }
}

static void app_prefix(struct fs_options *o) {
    o->prefix = "/app";
}

MOUNT_TEST(mount_prefix_shows_subtree, app_prefix) {
    mb_puts(m->mb, "/app", "root value");
    mb_puts(m->mb, "/app/cfg", "c");
    mb_puts(m->mb, "/other", "hidden");
    ASSERT_LIST(m->dir, "%value|cfg");
    ASSERT_FILE(P(m, "%value"), "root value");
    ASSERT_FILE(P(m, "cfg"), "c");
    ASSERT_EQ(write_str(P(m, "n"), "v"), 0);
    ASSERT_KV(m, "/app/n", "v");
}

/* When a mount is detached while a file in it is still open, fs_run cannot
 * let libfuse unmount it again (that fails and prints), and libfuse then
 * keeps its copy of the mountpoint string (19 bytes, once per such stop). */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) {
    return "leak:fuse_session_mount\n";
}

static struct fs *signal_fs;
static void on_sigusr1(int sig) {
    (void)sig;
    fs_stop(signal_fs); /* async-signal-safe */
}

/* Ctrl-C style: fs_stop from a signal handler while a file is held open
 * unmounts and makes fs_run return; the open descriptor then fails. */
TEST(stop_from_signal_handler_with_open_file) {
    struct mnt mt;
    ASSERT_EQ(mnt_up(&mt, NULL), 0);
    int fd = open(P(&mt, "held"), O_CREAT | O_RDWR, 0644);
    int dfd = open(mt.dir, O_RDONLY | O_DIRECTORY);
    signal_fs = mt.fs;
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigusr1;
    sigaction(SIGUSR1, &sa, &old);
    raise(SIGUSR1);
    int64_t deadline = now_ms() + UNMOUNT_WAIT_MS;
    while (!atomic_load(&mt.done) && now_ms() < deadline) sleep_ms(5);
    int returned = atomic_load(&mt.done);
    int still_mounted = is_mounted(mt.dir);
    char c;
    ssize_t r = fd >= 0 ? read(fd, &c, 1) : 0;
    if (fd >= 0) close(fd);
    if (dfd >= 0) close(dfd);
    sigaction(SIGUSR1, &old, NULL);
    ASSERT_EQ(mnt_down(&mt), 0);
    ASSERT(fd >= 0);
    ASSERT(returned);
    ASSERT(!still_mounted);
    ASSERT_EQ(r, -1);
}

int main(int argc, char **argv) {
    if (access("/dev/fuse", R_OK | W_OK) != 0) {
        printf("SKIP: /dev/fuse not usable\n0 passed, 0 failed\n");
        return 0;
    }
    return harness_main(argc, argv);
}

/* ---- replay of remote changes as inotify events ---- */

/* Appends "MASK name" lines (inotifywait's spelling) for the events read
 * from ifd, from the first one until none arrived for quiet_ms (or until
 * EVENT_WAIT_MS passed), with
 * every name in from[] written as the name at the same index of to[]. */
static void collect_events(int ifd, int quiet_ms, const char *const *from, const char *const *to,
                           int nmap, char *out, size_t size) {
    static const struct {
        uint32_t bit;
        const char *name;
    } bits[] = {{IN_ACCESS, "ACCESS"},
                {IN_MODIFY, "MODIFY"},
                {IN_ATTRIB, "ATTRIB"},
                {IN_CLOSE_WRITE, "CLOSE_WRITE"},
                {IN_CLOSE_NOWRITE, "CLOSE_NOWRITE"},
                {IN_OPEN, "OPEN"},
                {IN_MOVED_FROM, "MOVED_FROM"},
                {IN_MOVED_TO, "MOVED_TO"},
                {IN_CREATE, "CREATE"},
                {IN_DELETE, "DELETE"},
                {IN_DELETE_SELF, "DELETE_SELF"},
                {IN_MOVE_SELF, "MOVE_SELF"},
                {IN_UNMOUNT, "UNMOUNT"},
                {IN_IGNORED, "IGNORED"},
                {IN_ISDIR, "ISDIR"}};
    size_t o = 0;
    out[0] = '\0';
    char buf[4096] __attribute__((aligned(8)));
    int64_t deadline = now_ms() + EVENT_WAIT_MS, last = now_ms();
    while (now_ms() < deadline && (o == 0 || now_ms() - last < quiet_ms)) {
        struct pollfd p = {ifd, POLLIN, 0};
        if (poll(&p, 1, 20) <= 0) continue;
        ssize_t r = read(ifd, buf, sizeof buf);
        for (char *q = buf; r > 0 && q < buf + r;) {
            struct inotify_event *ev = (struct inotify_event *)q;
            const char *name = ev->len ? ev->name : "";
            for (int i = 0; i < nmap; i++)
                if (strcmp(name, from[i]) == 0) name = to[i];
            int first = 1;
            for (size_t b = 0; b < sizeof bits / sizeof bits[0]; b++)
                if (ev->mask & bits[b].bit) {
                    o +=
                        (size_t)snprintf(out + o, size - o, "%s%s", first ? "" : ",", bits[b].name);
                    first = 0;
                }
            o += (size_t)snprintf(out + o, size - o, " %s\n", name);
            if (o >= size) o = size - 1;
            /* The kernel merges an event identical to the unread one before
             * it, so whether a repeat shows depends on when the reader
             * reads: drop repeats. */
            char *prev = out + o - 1;
            while (prev > out && prev[-1] != '\n') prev--;
            size_t ll = (size_t)(out + o - prev);
            if (prev - out >= (ptrdiff_t)ll && memcmp(prev - ll, prev, ll) == 0) {
                o -= ll;
                out[o] = '\0';
            }
            q += sizeof *ev + ev->len;
        }
        last = now_ms();
    }
}

#define REPLAY_QUIET_MS 400

/* A remote transaction of up to four ops. */
static void remote_ops(struct mnt *m, const struct fs_op *ops, size_t n) {
    struct fs_txn t = {NULL, 0, ops, n};
    mb_remote_txn(m->mb, &t);
}

static struct fs_op put_op(const char *k, const char *v, uint32_t mode) {
    struct fs_op o = {FS_OP_PUT, k, strlen(k), NULL, 0, v, strlen(v), 0, mode, 0, 0, 0};
    return o;
}

static struct fs_op del_op(const char *k) {
    struct fs_op o = {FS_OP_DELETE, k, strlen(k), NULL, 0, NULL, 0, 0, 0, 0, 0, 0};
    return o;
}

/* Each remote change gives the watcher of the mount the same events as the
 * same operation made through the mount itself. */
MOUNT_TEST(replay_events_match_local, NULL) {
    int ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    ASSERT(ifd >= 0);
    ASSERT(inotify_add_watch(ifd, m->dir, IN_ALL_EVENTS) >= 0);
    static const char *const rem[] = {"rem", "rem2", "rdir", "rdir2"};
    static const char *const loc[] = {"loc", "loc2", "ldir", "ldir2"};
    char want[2048], got[2048];
    const uint32_t F = S_IFREG | 0644, D = S_IFDIR | 0755;

    /* a new file: through a mount elsewhere it is one put, whole */
    ASSERT_EQ(write_str(P(m, "loc"), "hello"), 0);
    collect_events(ifd, REPLAY_QUIET_MS, NULL, NULL, 0, want, sizeof want);
    ASSERT(strstr(want, "CREATE loc\n") != NULL);
    mb_put(m->mb, "/rem", 4, "hello", 5, F);
    collect_events(ifd, REPLAY_QUIET_MS, rem, loc, 4, got, sizeof got);
    ASSERT_STR_EQ(got, want);
    ASSERT(eventually_reads(P(m, "rem"), "hello"));
    collect_events(ifd, REPLAY_QUIET_MS, NULL, NULL, 0, got, sizeof got); /* the read's */

    /* a rewrite */
    ASSERT_EQ(write_str(P(m, "loc"), "again"), 0);
    collect_events(ifd, REPLAY_QUIET_MS, NULL, NULL, 0, want, sizeof want);
    mb_put(m->mb, "/rem", 4, "again", 5, F);
    collect_events(ifd, REPLAY_QUIET_MS, rem, loc, 4, got, sizeof got);
    ASSERT_STR_EQ(got, want);

    /* emptied, then a change of mode only (the value kept: meta_only) */
    ASSERT_EQ(write_str(P(m, "loc"), ""), 0);
    collect_events(ifd, REPLAY_QUIET_MS, NULL, NULL, 0, want, sizeof want);
    mb_put(m->mb, "/rem", 4, "", 0, F);
    collect_events(ifd, REPLAY_QUIET_MS, rem, loc, 4, got, sizeof got);
    ASSERT_STR_EQ(got, want);
    ASSERT_EQ(chmod(P(m, "loc"), 0600), 0);
    collect_events(ifd, REPLAY_QUIET_MS, NULL, NULL, 0, want, sizeof want);
    ASSERT_STR_EQ(want, "ATTRIB loc\n");
    struct fs_op ch[] = {put_op("/rem", "", S_IFREG | 0600)};
    remote_ops(m, ch, 1);
    collect_events(ifd, REPLAY_QUIET_MS, rem, loc, 4, got, sizeof got);
    ASSERT_STR_EQ(got, want);
    ASSERT_EQ(write_str(P(m, "loc"), "again"), 0);
    mb_put(m->mb, "/rem", 4, "again", 5, F);
    ASSERT(eventually_reads(P(m, "rem"), "again"));
    collect_events(ifd, REPLAY_QUIET_MS, NULL, NULL, 0, got, sizeof got);

    /* a rename: the put of the new key and the delete of the old at one revision */
    ASSERT_EQ(rename(P(m, "loc"), P(m, "loc2")), 0);
    collect_events(ifd, REPLAY_QUIET_MS, NULL, NULL, 0, want, sizeof want);
    ASSERT(strstr(want, "MOVED_FROM loc\nMOVED_TO loc2\n") != NULL);
    struct fs_op mv[] = {put_op("/rem2", "again", F), del_op("/rem")};
    remote_ops(m, mv, 2);
    collect_events(ifd, REPLAY_QUIET_MS, rem, loc, 4, got, sizeof got);
    ASSERT_STR_EQ(got, want);

    /* mkdir, a file inside, the directory renamed */
    ASSERT_EQ(mkdir(P(m, "ldir"), 0755), 0);
    collect_events(ifd, REPLAY_QUIET_MS, NULL, NULL, 0, want, sizeof want);
    ASSERT_STR_EQ(want, "CREATE,ISDIR ldir\n");
    struct fs_op md[] = {put_op("/rdir/", "", D)};
    remote_ops(m, md, 1);
    collect_events(ifd, REPLAY_QUIET_MS, rem, loc, 4, got, sizeof got);
    ASSERT_STR_EQ(got, want);
    ASSERT_EQ(write_str(P(m, "ldir/f"), "in"), 0);
    mb_puts(m->mb, "/rdir/f", "in");
    ASSERT(eventually_reads(P(m, "rdir/f"), "in"));
    collect_events(ifd, REPLAY_QUIET_MS, NULL, NULL, 0, want, sizeof want);
    ASSERT_EQ(rename(P(m, "ldir"), P(m, "ldir2")), 0);
    collect_events(ifd, REPLAY_QUIET_MS, NULL, NULL, 0, want, sizeof want);
    ASSERT(strstr(want, "MOVED_FROM,ISDIR ldir\nMOVED_TO,ISDIR ldir2\n") != NULL);
    struct fs_op rd[] = {put_op("/rdir2/", "", D), put_op("/rdir2/f", "in", F), del_op("/rdir/"),
                         del_op("/rdir/f")};
    remote_ops(m, rd, 4);
    collect_events(ifd, REPLAY_QUIET_MS, rem, loc, 4, got, sizeof got);
    ASSERT_STR_EQ(got, want);
    ASSERT(eventually_reads(P(m, "rdir2/f"), "in"));
    collect_events(ifd, REPLAY_QUIET_MS, NULL, NULL, 0, got, sizeof got); /* the read's */

    /* unlink; the last file of a directory goes, a marker keeps it; rmdir */
    ASSERT_EQ(unlink(P(m, "loc2")), 0);
    collect_events(ifd, REPLAY_QUIET_MS, NULL, NULL, 0, want, sizeof want);
    ASSERT_STR_EQ(want, "DELETE loc2\n");
    mb_del(m->mb, "/rem2");
    collect_events(ifd, REPLAY_QUIET_MS, rem, loc, 4, got, sizeof got);
    ASSERT_STR_EQ(got, want);
    ASSERT_EQ(unlink(P(m, "ldir2/f")), 0);
    ASSERT_EQ(rmdir(P(m, "ldir2")), 0);
    collect_events(ifd, REPLAY_QUIET_MS, NULL, NULL, 0, want, sizeof want);
    ASSERT_STR_EQ(want, "DELETE,ISDIR ldir2\n");
    struct fs_op rf[] = {del_op("/rdir2/f"), put_op("/rdir2/", "", D)};
    remote_ops(m, rf, 2);
    mb_del(m->mb, "/rdir2/");
    collect_events(ifd, REPLAY_QUIET_MS, rem, loc, 4, got, sizeof got);
    ASSERT_STR_EQ(got, want);
    ASSERT(eventually_stat(P(m, "rdir2"), 0));
    close(ifd);
}

/* Keys written with no directory markers (as etcd clients write them):
 * the directory that appears and vanishes is replayed, a watched
 * directory sees its files, and a change below a directory nobody looked
 * up is not replayed into it. */
MOUNT_TEST(replay_implicit_directories, NULL) {
    int ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    ASSERT(ifd >= 0);
    ASSERT(inotify_add_watch(ifd, m->dir, IN_ALL_EVENTS) >= 0);
    char got[2048];
    mb_puts(m->mb, "/app/x", "1");
    collect_events(ifd, REPLAY_QUIET_MS, NULL, NULL, 0, got, sizeof got);
    ASSERT_STR_EQ(got, "CREATE,ISDIR app\n");
    int wd = inotify_add_watch(ifd, P(m, "app"), IN_ALL_EVENTS);
    ASSERT(wd >= 0);
    mb_puts(m->mb, "/app/y", "22");
    collect_events(ifd, REPLAY_QUIET_MS, NULL, NULL, 0, got, sizeof got);
    ASSERT_STR_EQ(got, "CREATE y\nOPEN y\nMODIFY y\nCLOSE_WRITE y\n");
    mb_del(m->mb, "/app/x");
    mb_del(m->mb, "/app/y");
    const uint32_t masks[] = {IN_DELETE, IN_DELETE, IN_DELETE | IN_ISDIR};
    const char *const names[] = {"x", "y", "app"};
    ASSERT_EQ(wait_events(ifd, masks, names, 3), 0);
    close(ifd);
}

static void lin_open(struct fs_options *o) {
    o->linearizable_open = 1;
}

/* linearizable_open: every open(2) of a file passes a read barrier first;
 * a barrier that fails (no quorum in time) fails the open. */
MOUNT_TEST(linearizable_open_waits_for_barrier, lin_open) {
    mb_puts(m->mb, "/k", "v1");
    long before = atomic_load(&m->mb->barriers);
    ASSERT_FILE(P(m, "k"), "v1");
    ASSERT(atomic_load(&m->mb->barriers) > before);
    ASSERT_EQ(write_str(P(m, "k"), "v2"), 0);
    ASSERT_KV(m, "/k", "v2");
    pthread_mutex_lock(&m->mb->lock);
    m->mb->fail_err = -ETIMEDOUT;
    m->mb->fail_count = 1;
    pthread_mutex_unlock(&m->mb->lock);
    ASSERT_EQ(open(P(m, "k"), O_RDONLY), -1);
    ASSERT_EQ(errno, ETIMEDOUT);
    ASSERT_FILE(P(m, "k"), "v2");
    /* stat is not a read point: no barrier */
    before = atomic_load(&m->mb->barriers);
    struct stat st;
    ASSERT_EQ(stat(P(m, "k"), &st), 0);
    ASSERT_EQ(atomic_load(&m->mb->barriers), before);
}

/* fs_notify_reset (a snapshot replaced the store): cached data, attributes
 * and entries of every held inode are dropped, though no change was told. */
MOUNT_TEST(reset_drops_every_cache, long_cache) {
    struct fs *fs = m->mb->fs;
    m->mb->fs = NULL; /* changes the mount is not told about (nor replays) */
    mb_puts(m->mb, "/a", "one");
    mb_puts(m->mb, "/d/b", "two");
    struct stat st;
    ASSERT_EQ(stat(P(m, "a"), &st), 0);
    ASSERT_EQ(stat(P(m, "d/b"), &st), 0);
    mb_puts(m->mb, "/a", "one-changed");
    mb_puts(m->mb, "/d/b", "2");
    mb_del(m->mb, "/d/b");
    mb_puts(m->mb, "/d/c", "three");
    m->mb->fs = fs;
    ASSERT_EQ(stat(P(m, "a"), &st), 0); /* attributes cached for 60 s */
    ASSERT_EQ(st.st_size, 3);
    ASSERT_EQ(fs_notify_reset(fs), 0);
    int64_t deadline = now_ms() + EVENT_WAIT_MS;
    while ((stat(P(m, "a"), &st) != 0 || st.st_size != 11) && now_ms() < deadline) sleep_ms(10);
    ASSERT_EQ(st.st_size, 11);
    ASSERT(eventually_stat(P(m, "d/b"), 0));
    ASSERT_FILE(P(m, "a"), "one-changed");
    ASSERT_FILE(P(m, "d/c"), "three");
}

/* Whole reads: while another writer changes a key between values of
 * different lengths, every open-read-close sees exactly one of the values.
 * Long attribute timeouts make a stale cached size as likely as it gets. */
static const char *const torn_values[] = {"a", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "cccccccccccc",
                                          "dddddddddddddddddddddddddddddddddddddddd"};

struct torn_writer {
    struct memback *mb;
    atomic_int stop;
};

static void *torn_writer_main(void *arg) {
    struct torn_writer *w = arg;
    for (unsigned i = 0; !atomic_load(&w->stop); i++) {
        mb_puts(w->mb, "/t", torn_values[i % 4]);
        if (i % 16 == 0) sleep_ms(1);
    }
    return NULL;
}

MOUNT_TEST(reads_are_never_torn, long_cache) {
    mb_puts(m->mb, "/t", torn_values[0]);
    struct torn_writer w = {m->mb, 0};
    pthread_t thr;
    ASSERT_EQ(pthread_create(&thr, NULL, torn_writer_main, &w), 0);
    int bad = 0, reads = 0;
    char first_bad[256] = "";
    int64_t deadline = now_ms() + 3000;
    while (now_ms() < deadline && reads < 20000) {
        int fd = open(P(m, "t"), O_RDONLY);
        if (fd < 0) continue;
        char buf[128];
        size_t n = 0;
        ssize_t r;
        while ((r = read(fd, buf + n, 7)) > 0) n += (size_t)r; /* several reads */
        close(fd);
        buf[n] = '\0';
        int ok = 0;
        for (int i = 0; i < 4; i++) ok |= strcmp(buf, torn_values[i]) == 0;
        if (!ok) {
            if (!bad) snprintf(first_bad, sizeof first_bad, "'%.64s'", buf);
            bad++;
        }
        reads++;
    }
    atomic_store(&w.stop, 1);
    pthread_join(thr, NULL);
    if (bad) fprintf(stderr, "  %d of %d reads torn, first %s\n", bad, reads, first_bad);
    ASSERT_EQ(bad, 0);
    ASSERT_EQ(reads > 100, 1);
}

/* ---- one put per value ---- */

/* Waits until the backend applied want transactions in all (release is
 * sent by the kernel without waiting: its put may land after close(2)). */
static long applied_after(struct mnt *m, long want) {
    int64_t deadline = now_ms() + EVENT_WAIT_MS;
    while (atomic_load(&m->mb->applied) < want && now_ms() < deadline) sleep_ms(2);
    sleep_ms(50); /* and no more than that */
    return atomic_load(&m->mb->applied);
}

MOUNT_TEST(new_file_is_one_put_as_bash_writes_it, NULL) {
    long base = atomic_load(&m->mb->applied);
    /* bash: open, dup2 to stdout, close the original, write, restore */
    int fd = open(P(m, "new"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT(fd >= 0);
    int saved = dup(1);
    ASSERT(saved >= 0);
    ASSERT_EQ(dup2(fd, 1), 1);
    ASSERT_EQ(close(fd), 0); /* another descriptor is open: nothing put */
    ASSERT_EQ(atomic_load(&m->mb->applied), base);
    ASSERT_EQ(kv_has(m, "/new"), 0);
    struct stat st; /* meanwhile the file exists here, empty */
    ASSERT_EQ(stat(P(m, "new"), &st), 0);
    ASSERT_EQ(st.st_size, 0);
    ASSERT_FILE(P(m, "new"), "");
    ASSERT_EQ(write(1, "v\n", 2), 2);
    ASSERT_EQ(dup2(saved, 1), 1); /* the opener's last close: the put */
    close(saved);
    ASSERT_KV(m, "/new", "v\n");
    ASSERT_EQ(applied_after(m, base + 1), base + 1);
    struct fs_kv kv;
    ASSERT_EQ(mb_lookup(m->mb, "/new", &kv), 0);
    ASSERT_EQ(kv.version, 1);
    fs_kv_clear(&kv);
    /* an empty new file is one put of "" at close */
    ASSERT_EQ(write_str(P(m, "empty"), ""), 0);
    ASSERT_KV(m, "/empty", "");
    ASSERT_EQ(applied_after(m, base + 2), base + 2);
}

MOUNT_TEST(child_with_inherited_descriptor_puts_nothing, NULL) {
    long base = atomic_load(&m->mb->applied);
    int fd = open(P(m, "gen.conf"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT(fd >= 0);
    ASSERT_EQ(write(fd, "[main]\n", 7), 7);
    for (int i = 0; i < 2; i++) { /* as { echo; hostname; ... } > f */
        pid_t pid = fork();
        ASSERT(pid >= 0);
        if (pid == 0) {
            ssize_t w = write(fd, "host\n", 5);
            _exit(w == 5 ? 0 : 1); /* its close of fd: a flush, not the opener's */
        }
        int status = 0;
        ASSERT_EQ(waitpid(pid, &status, 0), pid);
        ASSERT_EQ(WEXITSTATUS(status), 0);
    }
    ASSERT_EQ(applied_after(m, base), base);
    ASSERT_EQ(kv_has(m, "/gen.conf"), 0);
    ASSERT_EQ(write(fd, "b=2\n", 4), 4);
    ASSERT_EQ(close(fd), 0);
    ASSERT_KV(m, "/gen.conf", "[main]\nhost\nhost\nb=2\n");
    ASSERT_EQ(applied_after(m, base + 1), base + 1);
    /* the opener closes first, a child writes on: release puts the rest */
    fd = open(P(m, "late"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT(fd >= 0);
    int pipefd[2];
    ASSERT_EQ(pipe(pipefd), 0);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        char c;
        close(pipefd[1]);
        ssize_t r = read(pipefd[0], &c, 1); /* until the parent closed */
        ssize_t w = write(fd, "child", 5);
        _exit(r == 1 && w == 5 ? 0 : 1);
    }
    close(pipefd[0]);
    ASSERT_EQ(close(fd), 0); /* the opener's close: nothing written yet */
    ASSERT_EQ(write(pipefd[1], "x", 1), 1);
    close(pipefd[1]);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_EQ(WEXITSTATUS(status), 0);
    /* the opener's close put the empty new file; release puts the rest */
    int64_t deadline = now_ms() + EVENT_WAIT_MS;
    char *v = NULL;
    while ((v == NULL || strcmp(v, "child") != 0) && now_ms() < deadline) {
        free(v);
        sleep_ms(2);
        v = kv_str(m, "/late");
    }
    free(v);
    ASSERT_KV(m, "/late", "child");
}

MOUNT_TEST(fsync_then_close_is_one_put, NULL) {
    long base = atomic_load(&m->mb->applied);
    int fd = open(P(m, "d"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT(fd >= 0);
    ASSERT_EQ(write(fd, "data", 4), 4);
    ASSERT_EQ(fsync(fd), 0); /* dd conv=fsync */
    ASSERT_KV(m, "/d", "data");
    ASSERT_EQ(fsync(fd), 0);
    ASSERT_EQ(close(fd), 0);
    ASSERT_EQ(applied_after(m, base + 1), base + 1);
    /* rewriting the same bytes after an fsync is a change: put again */
    fd = open(P(m, "d"), O_WRONLY);
    ASSERT(fd >= 0);
    ASSERT_EQ(write(fd, "DATA", 4), 4);
    ASSERT_EQ(fsync(fd), 0);
    ASSERT_EQ(pwrite(fd, "DATA", 4, 0), 4); /* the same bytes again: not sent */
    ASSERT_EQ(close(fd), 0);
    ASSERT_KV(m, "/d", "DATA");
    ASSERT_EQ(applied_after(m, base + 2), base + 2);
}

MOUNT_TEST(exclusive_create_is_checked_at_the_put, NULL) {
    int fd = open(P(m, "x"), O_CREAT | O_EXCL | O_WRONLY, 0600);
    ASSERT(fd >= 0);
    /* a second O_EXCL create on this host fails at once */
    ASSERT_EQ(open(P(m, "x"), O_CREAT | O_EXCL | O_WRONLY, 0600), -1);
    ASSERT_EQ(errno, EEXIST);
    mb_puts(m->mb, "/x", "theirs"); /* created elsewhere meanwhile */
    ASSERT_EQ(write(fd, "mine", 4), 4);
    ASSERT_EQ(close(fd), -1);
    ASSERT_EQ(errno, EEXIST);
    ASSERT_KV(m, "/x", "theirs");
    /* a failed write leaves nothing behind, even for a new file */
    pthread_mutex_lock(&m->mb->lock);
    m->mb->fail_err = -ENOSPC;
    m->mb->fail_count = 1;
    pthread_mutex_unlock(&m->mb->lock);
    ASSERT_EQ(write_str(P(m, "full"), "v"), -ENOSPC);
    ASSERT_EQ(kv_has(m, "/full"), 0);
    struct stat st;
    int64_t deadline = now_ms() + EVENT_WAIT_MS;
    while (stat(P(m, "full"), &st) == 0 && now_ms() < deadline) sleep_ms(5);
    ASSERT_EQ(stat(P(m, "full"), &st), -1);
    sleep_ms(100); /* the release of the failed handle puts nothing either */
    ASSERT_EQ(kv_has(m, "/full"), 0);
}

MOUNT_TEST(pending_file_renamed_unlinked_chmoded, NULL) {
    long base = atomic_load(&m->mb->applied);
    ASSERT_EQ(write_str(P(m, "conf"), "old"), 0);
    /* a temporary file renamed over the target before its close: one put
     * of the final name */
    int fd = open(P(m, ".conf.tmp"), O_CREAT | O_EXCL | O_WRONLY, 0600);
    ASSERT(fd >= 0);
    ASSERT_EQ(write(fd, "new", 3), 3);
    ASSERT_EQ(fchmod(fd, 0640), 0);
    ASSERT_EQ(rename(P(m, ".conf.tmp"), P(m, "conf")), 0);
    ASSERT_KV(m, "/conf", "old"); /* whole values: the old one until the put */
    ASSERT_EQ(close(fd), 0);
    ASSERT_KV(m, "/conf", "new");
    ASSERT_EQ(kv_has(m, "/.conf.tmp"), 0);
    struct fs_kv kv;
    ASSERT_EQ(mb_lookup(m->mb, "/conf", &kv), 0);
    ASSERT_EQ(kv.mode, S_IFREG | 0640);
    fs_kv_clear(&kv);
    ASSERT_EQ(applied_after(m, base + 2), base + 2);
    /* unlinked before its close: nothing put */
    fd = open(P(m, "gone"), O_CREAT | O_WRONLY, 0644);
    ASSERT(fd >= 0);
    ASSERT_EQ(write(fd, "x", 1), 1);
    ASSERT_EQ(unlink(P(m, "gone")), 0);
    ASSERT_EQ(close(fd), 0);
    ASSERT_EQ(applied_after(m, base + 2), base + 2);
    ASSERT_EQ(kv_has(m, "/gone"), 0);
}

/* ---- mountpoint safety and permissions ---- */

/* fs_run over dir with these options: its return code and message. */
static int run_over(const char *dir, int nonempty, char *msg, size_t msz) {
    struct memback *mb = mb_new();
    struct fs_options opt;
    fs_options_init(&opt);
    opt.mountpoint = dir;
    opt.mount_nonempty = nonempty;
    struct fs_backend be = mb_backend(mb);
    struct fs *fs;
    int rc = fs_new(&opt, &be, &fs);
    if (rc == 0) {
        fs_stop(fs); /* if it mounts, return right away */
        rc = fs_run(fs);
        snprintf(msg, msz, "%s", fs_errmsg(fs));
        fs_free(fs);
    }
    mb_free(mb);
    return rc;
}

MOUNT_TEST(refuses_live_mount_and_nonempty_directory, NULL) {
    char msg[512];
    ASSERT_EQ(write_str(P(m, "k"), "v"), 0);
    ASSERT_EQ(run_over(m->dir, 0, msg, sizeof msg), FS_EMOUNT);
    ASSERT(strstr(msg, "already a mount point") != NULL);
    ASSERT_EQ(run_over(m->dir, 1, msg, sizeof msg), FS_EMOUNT); /* nonempty or not */
    ASSERT_FILE(P(m, "k"), "v");                                /* the first mount still serves */
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/qfs-ne-XXXXXX");
    ASSERT(mkdtemp(dir) != NULL);
    char f[96];
    snprintf(f, sizeof f, "%s/file", dir);
    ASSERT_EQ(write_str(f, "x"), 0);
    ASSERT_EQ(run_over(dir, 0, msg, sizeof msg), FS_EMOUNT);
    ASSERT(strstr(msg, "not empty") != NULL);
    int rc = run_over(dir, 1, msg, sizeof msg); /* allowed: mounts, then stops */
    if (is_mounted(dir)) umount2(dir, MNT_DETACH);
    unlink(f);
    rmdir(dir);
    ASSERT_EQ(rc, 0);
}

MOUNT_TEST(other_users_read_only_the_owner_writes, NULL) {
    ASSERT_EQ(write_str(P(m, "conf"), "v"), 0);
    ASSERT_EQ(mkdir(P(m, "d"), 0755), 0);
    mb_puts(m->mb, "/etcd-key", "e"); /* no metadata: opt's owner and modes */
    ASSERT(eventually_reads(P(m, "etcd-key"), "e"));
    struct stat st;
    ASSERT_EQ(stat(P(m, "etcd-key"), &st), 0);
    ASSERT_EQ(st.st_mode, S_IFREG | 0644);
    ASSERT_EQ(st.st_uid, 0);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) { /* as nobody */
        if (setgid(65534) != 0 || setuid(65534) != 0) _exit(10);
        char b[8];
        int fd = open(P(m, "conf"), O_RDONLY);
        if (fd < 0 || read(fd, b, sizeof b) != 1) _exit(11);
        close(fd);
        if (open(P(m, "conf"), O_WRONLY) != -1 || errno != EACCES) _exit(12);
        if (open(P(m, "d/new"), O_WRONLY | O_CREAT, 0644) != -1 || errno != EACCES) _exit(13);
        if (open(P(m, "etcd-key"), O_RDONLY) < 0) _exit(14);
        _exit(0);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_EQ(WIFEXITED(status) ? WEXITSTATUS(status) : 99, 0);
}

/* ---- symlinks ---- */

MOUNT_TEST(symlinks_are_stored, NULL) {
    ASSERT_EQ(write_str(P(m, "target"), "t"), 0);
    ASSERT_EQ(symlink("target", P(m, "ln")), 0);
    struct fs_kv kv;
    ASSERT_EQ(mb_lookup(m->mb, "/ln", &kv), 0);
    ASSERT_EQ(kv.mode, S_IFLNK | 0777);
    ASSERT_EQ(kv.value_len, 6);
    ASSERT_MEM_EQ(kv.value, "target", 6);
    fs_kv_clear(&kv);
    char b[64];
    ASSERT_EQ(readlink(P(m, "ln"), b, sizeof b), 6);
    struct stat st;
    ASSERT_EQ(lstat(P(m, "ln"), &st), 0);
    ASSERT(S_ISLNK(st.st_mode));
    ASSERT_EQ(st.st_size, 6);
    ASSERT_FILE(P(m, "ln"), "t"); /* followed by the kernel */
    ASSERT_EQ(symlink("x", P(m, "ln")), -1);
    ASSERT_EQ(errno, EEXIST);
    ASSERT_EQ(lchown(P(m, "ln"), 1, 1), 0); /* keeps being a link */
    ASSERT_EQ(lstat(P(m, "ln"), &st), 0);
    ASSERT(S_ISLNK(st.st_mode));
    ASSERT_EQ(st.st_uid, 1);
    ASSERT_EQ(rename(P(m, "ln"), P(m, "ln2")), 0);
    ASSERT_EQ(readlink(P(m, "ln2"), b, sizeof b), 6);
    /* one made elsewhere is replayed as a symlink */
    int ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    ASSERT(ifd >= 0);
    ASSERT(inotify_add_watch(ifd, m->dir, IN_CREATE) >= 0);
    mb_put(m->mb, "/rl", 3, "../etc", 6, S_IFLNK | 0777);
    uint32_t mask = IN_CREATE;
    const char *name = "rl";
    ASSERT_EQ(wait_events(ifd, &mask, &name, 1), 0);
    close(ifd);
    ASSERT_EQ(readlink(P(m, "rl"), b, sizeof b), 6);
    ASSERT_MEM_EQ(b, "../etc", 6);
    ASSERT_EQ(unlink(P(m, "rl")), 0);
    ASSERT_EQ(kv_has(m, "/rl"), 0);
}

MOUNT_TEST(cp_a_of_a_real_tree, NULL) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "set -e; t=$(mktemp -d); mkdir -p $t/src/sub; echo a >$t/src/a; "
             "printf 'b\\nc' >$t/src/sub/b; ln -s a $t/src/lnk; ln -s sub $t/src/dlnk; "
             "chmod 600 $t/src/sub/b; cp -a $t/src %s/copy; "
             "diff -r --no-dereference $t/src %s/copy; "
             "[ \"$(stat -c %%a %s/copy/sub/b)\" = 600 ]; "
             "[ \"$(readlink %s/copy/lnk)\" = a ]; rm -rf $t",
             m->dir, m->dir, m->dir, m->dir);
    ASSERT_EQ(system(cmd), 0);
    ASSERT_KV(m, "/copy/a", "a\n");
    ASSERT_KV(m, "/copy/sub/b", "b\nc");
}
