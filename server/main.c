/*
 * main.c - the quorumfs command: parses flags and runs one node, or
 * mounts a cluster as a client (`quorumfs mount [flags] MOUNTPOINT`, see
 * mount.c), or restores a snapshot (`quorumfs snapshot restore FILE [flags]`, the
 * equivalent of `etcdctl snapshot restore` for quorumfs's snapshot format).
 */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "server/etcd.h"
#include "server/mount.h"
#include "server/server.h"

/* Signal dispositions, set before any thread or socket exists (threads
 * inherit them). Every socket write goes through libuv's uv_write, which
 * calls write(2)/writev(2) and cannot pass MSG_NOSIGNAL, so a peer or client
 * that closes its end mid-write would raise SIGPIPE and kill the process:
 * SIGPIPE is ignored and the write fails with EPIPE, which closes just that
 * connection. SIGXFSZ is ignored so a file size limit turns into EFBIG from
 * the write, reported as a storage error, instead of killing the member.
 * SIGUSR1 and SIGUSR2 are ignored, as etcd (a Go program) ignores them.
 * SIGINT, SIGTERM and SIGHUP stop the node cleanly (node.c). */
static void signals_init(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    const int ignored[] = {SIGPIPE, SIGXFSZ, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++)
        sigaction(ignored[i], &sa, NULL);
}

int main(int argc, char **argv) {
    signals_init();
    if (argc >= 2 && strcmp(argv[1], "mount") == 0) return mount_main(argc - 1, argv + 1);
    static struct server_config cfg; /* large: keep it off the stack */
    char err[512];
    const char *file = NULL;
    bool restore = argc >= 3 && strcmp(argv[1], "snapshot") == 0 && strcmp(argv[2], "restore") == 0;
    if (restore) {
        if (argc < 4) {
            fprintf(stderr, "usage: quorumfs snapshot restore FILE [--data-dir DIR] [flags]\n");
            return 2;
        }
        file = argv[3];
        argv[3] = argv[0];
        argc -= 3;
        argv += 3;
    }
    int rc = server_config_parse(&cfg, argc, argv, err, sizeof err);
    if (rc == 1) return 0;
    if (rc < 0) {
        fprintf(stderr, "quorumfs: %s\n", err);
        return 2;
    }
    if (restore) {
        if (etcd__snapshot_restore_config(file, &cfg, err, sizeof err) != 0) {
            fprintf(stderr, "quorumfs: snapshot restore: %s\n", err);
            return 1;
        }
        printf("restored snapshot into %s\n", cfg.data_dir);
        return 0;
    }
    return server_run(&cfg);
}
