/*
 * mount.h - `quorumfs mount`: a client mount of an etcd v3 cluster
 * (server/mount.c). Private to server/.
 */
#ifndef QUORUMFS_SERVER_MOUNT_H
#define QUORUMFS_SERVER_MOUNT_H

#include <stdio.h>

/* Runs `quorumfs mount` with argv[0] = "mount"; returns the exit code. */
int mount_main(int argc, char **argv);
void mount_usage(FILE *out);

#endif /* QUORUMFS_SERVER_MOUNT_H */
