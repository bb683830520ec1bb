/*
 * member_mount.c - a member's --mount as a process of its own: `quorumfs
 * mount` (server/mount.c) pointed at this member's client URL.
 *
 * Why a process: a crash, kill -9 or upgrade of the member must not end the
 * mount on its host. The mount process keeps serving its local copy while
 * the member is down (read-only) and resumes its watch when the member is
 * back, so inotify watchers started before the crash keep their watches and
 * see what changed meanwhile.
 *
 * Life cycle: member_mount_start() adopts a mount process left by an earlier
 * run of this member (its pid is in DATA_DIR/mount.pid, it is alive, it is a
 * `quorumfs mount` of this mountpoint, and the mountpoint is mounted), or
 * starts one. member_mount_stop() is for a clean stop of the member
 * (SIGINT, SIGTERM, SIGHUP, removal from the cluster): it asks the mount
 * process to unmount (SIGTERM), keeps the member's loop running so that the
 * mount's last writes are answered, and waits for it to exit. The process is
 * in the member's process group, so Ctrl-C on a terminal reaches both.
 *
 * Threads: the member's loop thread only.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "server/member_mount.h"

#define MEMBER_MOUNT_STOP_MS 15000u /* a clean unmount before SIGKILL */

struct member_mount {
    uv_process_t proc; /* valid when spawned */
    bool spawned;
    bool exited;
    pid_t pid;
    char pidfile[PATH_MAX];
    char mountpoint[PATH_MAX];
    void (*log)(const char *line);
};

static void logm(struct member_mount *mm, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void logm(struct member_mount *mm, const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    mm->log(line);
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* True if dir is a mount point (its device differs from its parent's). */
static bool is_mounted(const char *dir) {
    struct stat st, pst;
    char parent[PATH_MAX + 4];
    snprintf(parent, sizeof parent, "%s/..", dir);
    return stat(dir, &st) == 0 && stat(parent, &pst) == 0 &&
           (st.st_dev != pst.st_dev || st.st_ino == pst.st_ino);
}

/* True if pid runs `quorumfs mount ... MOUNTPOINT` (its command line). */
static bool is_mount_process(pid_t pid, const char *mountpoint) {
    char path[64], buf[8192];
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return false;
    buf[n] = '\0';
    bool saw_mount = false, saw_mp = false;
    for (char *p = buf; p < buf + n; p += strlen(p) + 1) {
        if (strcmp(p, "mount") == 0) saw_mount = true;
        if (strcmp(p, mountpoint) == 0) saw_mp = true;
    }
    return saw_mount && saw_mp;
}

static void on_exit_cb(uv_process_t *p, int64_t status, int signo) {
    struct member_mount *mm = p->data;
    mm->exited = true;
    if (signo)
        logm(mm, "mount process %d ended by signal %d", (int)mm->pid, signo);
    else if (status)
        logm(mm, "mount process %d exited with status %d", (int)mm->pid, (int)status);
    uv_close((uv_handle_t *)p, NULL);
}

/* The URL the mount process uses: the first plain-http client URL if any,
 * else the first one; a wildcard host becomes the loopback address. */
static void pick_endpoint(const char *urls, char *out, size_t n, bool *tls) {
    char first[512] = "", plain[512] = "";
    const char *p = urls;
    while (*p) {
        while (*p == ',' || *p == ' ') p++;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ') e++;
        if (e > p) {
            char u[512];
            snprintf(u, sizeof u, "%.*s", (int)(e - p), p);
            if (!first[0]) snprintf(first, sizeof first, "%s", u);
            if (!plain[0] && strncmp(u, "http://", 7) == 0) snprintf(plain, sizeof plain, "%s", u);
        }
        p = e;
    }
    const char *u = plain[0] ? plain : first;
    *tls = strncmp(u, "https://", 8) == 0;
    const char *host = strstr(u, "://");
    host = host ? host + 3 : u;
    size_t scheme = (size_t)(host - u);
    if (strncmp(host, "0.0.0.0:", 8) == 0)
        snprintf(out, n, "%.*s127.0.0.1%s", (int)scheme, u, host + 7);
    else if (strncmp(host, "[::]:", 5) == 0)
        snprintf(out, n, "%.*s[::1]%s", (int)scheme, u, host + 4);
    else
        snprintf(out, n, "%s", u);
}

int member_mount_start(uv_loop_t *loop, const struct server_config *cfg,
                       void (*log)(const char *line), struct member_mount **out) {
    struct member_mount *mm = calloc(1, sizeof *mm);
    if (!mm) return -ENOMEM;
    mm->log = log;
    snprintf(mm->pidfile, sizeof mm->pidfile, "%s/mount.pid", cfg->data_dir);
    if (!realpath(cfg->mount, mm->mountpoint)) {
        if (errno == ENOENT && mkdir(cfg->mount, 0755) == 0 &&
            realpath(cfg->mount, mm->mountpoint)) {
            /* created */
        } else {
            /* A disconnected mount (ENOTCONN): the mount process detaches it. */
            snprintf(mm->mountpoint, sizeof mm->mountpoint, "%s", cfg->mount);
        }
    }

    /* A mount process of an earlier run of this member still serving? */
    FILE *f = fopen(mm->pidfile, "r");
    if (f) {
        int pid = 0;
        if (fscanf(f, "%d", &pid) == 1 && pid > 0 && kill(pid, 0) == 0 &&
            is_mount_process(pid, mm->mountpoint)) {
            if (is_mounted(mm->mountpoint)) {
                fclose(f);
                mm->pid = pid;
                logm(mm, "the mount at %s (process %d) outlived the previous run: kept",
                     mm->mountpoint, pid);
                *out = mm;
                return 0;
            }
            /* Its mount was detached (umount -l): it would hold the local
             * copy's lock until it noticed. End it. */
            kill(pid, SIGKILL);
            uint64_t deadline = now_ms() + 5000;
            while (kill(pid, 0) == 0 && now_ms() < deadline) {
                struct timespec ts = {0, 10 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
            logm(mm, "ended mount process %d, whose mount at %s was detached", pid, mm->mountpoint);
        }
        fclose(f);
    }

    char url[600], exe[PATH_MAX], cache[PATH_MAX + 16], timeout[32], maxreq[32];
    bool tls;
    pick_endpoint(cfg->listen_client_urls, url, sizeof url, &tls);
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (el <= 0) {
        free(mm);
        return -errno;
    }
    exe[el] = '\0';
    snprintf(cache, sizeof cache, "%s/mount-cache", cfg->data_dir);
    snprintf(timeout, sizeof timeout, "%ums",
             cfg->request_timeout_ms ? cfg->request_timeout_ms : 5000u);
    snprintf(maxreq, sizeof maxreq, "%" PRIu64,
             cfg->max_request_bytes ? cfg->max_request_bytes : (uint64_t)1024 * 1024);
    char *args[40];
    int a = 0;
    args[a++] = exe;
    args[a++] = "mount";
    args[a++] = "--foreground";
    args[a++] = "--endpoints";
    args[a++] = url;
    args[a++] = "--prefix";
    args[a++] = (char *)cfg->mount_prefix;
    args[a++] = "--cache-dir";
    args[a++] = cache;
    args[a++] = "--dial-timeout";
    args[a++] = "1s";
    args[a++] = "--command-timeout";
    args[a++] = timeout;
    args[a++] = "--max-request-bytes";
    args[a++] = maxreq;
    args[a++] = "--mount-consistency";
    args[a++] = cfg->mount_linearizable ? "linearizable" : "local";
    args[a++] = "--mount-uid";
    args[a++] = (char *)cfg->mount_uid;
    args[a++] = "--mount-gid";
    args[a++] = (char *)cfg->mount_gid;
    args[a++] = "--mount-file-mode";
    args[a++] = (char *)cfg->mount_file_mode;
    args[a++] = "--mount-dir-mode";
    args[a++] = (char *)cfg->mount_dir_mode;
    if (cfg->mount_nonempty) args[a++] = "--mount-nonempty";
    if (tls && cfg->cert_file[0]) {
        /* The member's certificate verifies itself when self-signed; one a
         * CA issued is verified by --trusted-ca-file when given. With client
         * certificate auth the mount presents the member's own certificate.
         * (Simplest of all: give the member a plain http URL on loopback.) */
        args[a++] = "--cacert";
        args[a++] = (char *)(cfg->trusted_ca_file[0] ? cfg->trusted_ca_file : cfg->cert_file);
        if (cfg->client_cert_auth || cfg->trusted_ca_file[0]) {
            args[a++] = "--cert";
            args[a++] = (char *)cfg->cert_file;
            args[a++] = "--key";
            args[a++] = (char *)cfg->key_file;
        }
    }
    args[a++] = mm->mountpoint;
    args[a] = NULL;

    uv_stdio_container_t stdio[3] = {
        {.flags = UV_INHERIT_FD, .data.fd = 0},
        {.flags = UV_INHERIT_FD, .data.fd = 1},
        {.flags = UV_INHERIT_FD, .data.fd = 2},
    };
    uv_process_options_t po = {
        .exit_cb = on_exit_cb,
        .file = exe,
        .args = args,
        .stdio_count = 3,
        .stdio = stdio,
    };
    mm->proc.data = mm;
    int rc = uv_spawn(loop, &mm->proc, &po);
    if (rc) {
        logm(mm, "cannot start the mount process: %s", uv_strerror(rc));
        free(mm);
        return rc;
    }
    mm->spawned = true;
    mm->pid = mm->proc.pid;
    f = fopen(mm->pidfile, "w");
    if (f) {
        fprintf(f, "%d\n", (int)mm->pid);
        fclose(f);
    }
    logm(mm, "mount process %d serves %s from %s", (int)mm->pid, mm->mountpoint, url);
    *out = mm;
    return 0;
}

static bool gone(struct member_mount *mm) {
    if (mm->spawned) return mm->exited;
    return kill(mm->pid, 0) != 0 && errno == ESRCH;
}

void member_mount_stop(struct member_mount *mm, uv_loop_t *loop) {
    if (!mm) return;
    if (!gone(mm)) {
        kill(mm->pid, SIGTERM);
        uint64_t deadline = now_ms() + MEMBER_MOUNT_STOP_MS;
        /* The mount's last writes need this member's loop to be answered. */
        while (!gone(mm) && now_ms() < deadline) {
            uv_run(loop, UV_RUN_NOWAIT);
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        if (!gone(mm)) {
            logm(mm, "mount process %d did not unmount in time: killed", (int)mm->pid);
            kill(mm->pid, SIGKILL);
            umount2(mm->mountpoint, MNT_DETACH);
            uint64_t reap = now_ms() + 2000;
            while (mm->spawned && !mm->exited && now_ms() < reap) uv_run(loop, UV_RUN_NOWAIT);
        }
    }
    unlink(mm->pidfile);
    if (mm->spawned && !uv_is_closing((uv_handle_t *)&mm->proc))
        uv_close((uv_handle_t *)&mm->proc, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    free(mm);
}
