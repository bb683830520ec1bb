/*
 * main.c - the quorumfs command: parses flags and runs one node.
 */
#include <stdio.h>
#include <string.h>

#include "server/server.h"

int main(int argc, char **argv) {
    static struct server_config cfg; /* large: keep it off the stack */
    char err[512];
    int rc = server_config_parse(&cfg, argc, argv, err, sizeof err);
    if (rc == 1) return 0;
    if (rc < 0) {
        fprintf(stderr, "quorumfs: %s\n", err);
        return 2;
    }
    return server_run(&cfg);
}
