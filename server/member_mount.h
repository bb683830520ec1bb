/*
 * member_mount.h - a member's --mount as a `quorumfs mount` process of its
 * own (server/member_mount.c). Private to server/.
 */
#ifndef QUORUMFS_SERVER_MEMBER_MOUNT_H
#define QUORUMFS_SERVER_MEMBER_MOUNT_H

#include <uv.h>

#include "server/server.h"

struct member_mount;

/* Adopts the mount process an earlier run of this member left serving
 * cfg->mount, or starts one pointed at this member's client URL. log gets
 * one line per event. Returns 0 or a negative errno. Loop thread. */
int member_mount_start(uv_loop_t *loop, const struct server_config *cfg,
                       void (*log)(const char *line), struct member_mount **out);

/* Clean stop: asks the mount process to unmount and waits for it, running
 * loop meanwhile (its last writes are answered by this member); SIGKILL and
 * a lazy unmount after a deadline. Frees mm. NULL-safe. Loop thread. */
void member_mount_stop(struct member_mount *mm, uv_loop_t *loop);

#endif /* QUORUMFS_SERVER_MEMBER_MOUNT_H */
