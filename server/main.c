/*
 * main.c - the quorumfs command: parses flags and runs one node, or
 * restores a snapshot (`quorumfs snapshot restore FILE [flags]`, the
 * equivalent of `etcdctl snapshot restore` for quorumfs's snapshot format).
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "server/etcd.h"
#include "server/server.h"

int main(int argc, char **argv) {
    static struct server_config cfg; /* large: keep it off the stack */
    char err[512];
    const char *file = NULL;
    bool restore = argc >= 3 && strcmp(argv[1], "snapshot") == 0 &&
                   strcmp(argv[2], "restore") == 0;
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
