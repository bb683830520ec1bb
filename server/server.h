/*
 * server.h - the quorumfs node as main() sees it: its configuration
 * (etcd-style flags, parsed from one table in config.c), member ids, and
 * server_run(), which runs a node until it is told to stop.
 *
 * The node itself - the loop that drives Raft, persists to the store and
 * applies entries, its threads and the struct node they share - is private to
 * server/ (server/node.h). The functions here keep no state: any thread may
 * call them, and server_run() blocks its caller for the node's whole life.
 */
#ifndef QUORUMFS_SERVER_H
#define QUORUMFS_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define SERVER_MEMBERS_MAX 16
#define SERVER_URL_MAX 256
#define SERVER_NAME_MAX 64

struct server_member {
    char name[SERVER_NAME_MAX];
    char peer_url[SERVER_URL_MAX];
    uint64_t id; /* server_member_id(peer_url, cluster token); not from the name */
};

struct server_config {
    char name[SERVER_NAME_MAX];          /* --name */
    char data_dir[1024];                 /* --data-dir */
    char listen_client_urls[1024];       /* --listen-client-urls */
    char listen_metrics_urls[1024];      /* --listen-metrics-urls ("" = none) */
    char advertise_client_urls[1024];    /* --advertise-client-urls */
    char listen_peer_urls[1024];         /* --listen-peer-urls */
    char initial_advertise_peer_urls[1024]; /* --initial-advertise-peer-urls */
    char initial_cluster_token[256];     /* --initial-cluster-token */
    bool initial_cluster_existing;       /* --initial-cluster-state existing */
    size_t n_members;                    /* parsed --initial-cluster */
    struct server_member members[SERVER_MEMBERS_MAX];
    unsigned heartbeat_interval_ms;      /* --heartbeat-interval */
    unsigned election_timeout_ms;        /* --election-timeout */
    uint64_t snapshot_count;             /* --snapshot-count */
    uint64_t max_request_bytes;          /* --max-request-bytes */
    uint64_t quota_backend_bytes;        /* --quota-backend-bytes (0 = default) */
    unsigned request_timeout_ms;         /* --request-timeout: bound on a write without quorum */
    char mount[1024];                    /* --mount ("" = do not mount) */
    char mount_prefix[1024];             /* --mount-prefix */
    bool mount_linearizable;             /* --mount-consistency=linearizable */
    char mount_uid[16], mount_gid[16];   /* --mount-uid, --mount-gid (decimal) */
    char mount_file_mode[16], mount_dir_mode[16]; /* --mount-file-mode/--mount-dir-mode */
    bool mount_nonempty;                 /* --mount-nonempty */
    char cert_file[1024];                /* --cert-file */
    char key_file[1024];                 /* --key-file */
    bool client_cert_auth;               /* --client-cert-auth */
    char trusted_ca_file[1024];          /* --trusted-ca-file */
    char client_crl_file[1024];          /* --client-crl-file */
    bool auto_tls;                       /* --auto-tls */
    char cipher_suites[1024];            /* --cipher-suites (etcd's names) */
    char cipher_list[1024];              /* the same as an OpenSSL cipher list ("" = default) */
    char peer_cert_file[1024];           /* --peer-cert-file */
    char peer_key_file[1024];            /* --peer-key-file */
    char peer_trusted_ca_file[1024];     /* --peer-trusted-ca-file */
    char peer_crl_file[1024];            /* --peer-crl-file */
    bool peer_client_cert_auth;          /* --peer-client-cert-auth */
    bool peer_auto_tls;                  /* --peer-auto-tls */
};

/*
 * Fills cfg from argv (etcd flag names, "--flag value" or "--flag=value"; -h
 * is --help); argv[0] is skipped. Flags not given take their defaults, and
 * n_members/members come from --initial-cluster or, without it, from this
 * member alone. Returns 0, 1 if --help/--version was printed to stdout (exit
 * 0), or -1 with a message in err (at most errlen bytes, NUL-terminated).
 * cfg keeps no pointer into argv.
 */
int server_config_parse(struct server_config *cfg, int argc, char **argv, char *err,
                        size_t errlen);
void server_config_usage(FILE *out);

/* The member id of the member whose first peer URL is peer_url in the cluster
 * named token (--initial-cluster-token): FNV-1a of both, never 0. Every node
 * computes the same ids without talking to the others. */
uint64_t server_member_id(const char *peer_url, const char *token);

/* Runs a node until SIGINT, SIGTERM or SIGHUP; returns the process exit code. */
int server_run(const struct server_config *cfg);

#endif /* QUORUMFS_SERVER_H */
