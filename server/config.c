/*
 * config.c - command-line flags, named and defaulted as etcd 3.4 names them,
 * plus quorumfs's own (--mount, --mount-prefix, --mount-consistency,
 * --request-timeout). With no flags at all a node is a single-member cluster
 * with its data in ./data and the key space mounted at ./mnt.
 *
 * Member ids are derived deterministically from the member's first peer URL
 * and the cluster token (FNV-1a), so every node computes the same ids from
 * the same --initial-cluster without talking to the others, and a member
 * added at run time (which etcd's MemberAdd names by its peer URLs only)
 * computes the id the cluster gave it.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server.h"

#define QUORUMFS_VERSION "0.1.0"

struct flag {
    const char *name;
    const char *arg; /* NULL for a boolean flag */
    const char *help;
};

static const struct flag flags[] = {
    {"name", "NAME", "human-readable name of this member (default \"default\")"},
    {"data-dir", "DIR", "path to the data directory (default \"./data\")"},
    {"listen-client-urls", "URLS", "URLs to listen on for client traffic: etcd v3 gRPC, and HTTP/1.1 for the JSON gateway, /health, /version, /metrics (default http://127.0.0.1:2379)"},
    {"listen-metrics-urls", "URLS", "more URLs serving only /metrics and /health over HTTP/1.1 (default none)"},
    {"advertise-client-urls", "URLS", "client URLs to advertise to the rest of the cluster (default: the listen URLs)"},
    {"listen-peer-urls", "URLS", "URLs to listen on for peer traffic (default http://127.0.0.1:2380)"},
    {"initial-advertise-peer-urls", "URLS", "this member's peer URLs to advertise (default: the listen peer URLs)"},
    {"initial-cluster", "NAME=URL,...", "initial cluster configuration for bootstrapping (default NAME=ADVERTISE-PEER-URL)"},
    {"initial-cluster-state", "new|existing", "initial cluster state (default new)"},
    {"initial-cluster-token", "TOKEN", "initial cluster token, to tell clusters apart (default \"quorumfs-cluster\")"},
    {"heartbeat-interval", "MS", "time of a heartbeat interval in milliseconds (default 100)"},
    {"election-timeout", "MS", "time of an election timeout in milliseconds (default 1000)"},
    {"snapshot-count", "N", "number of applied entries that trigger a snapshot and log compaction (default 100000)"},
    {"max-request-bytes", "BYTES", "maximum client request size in bytes (default 1572864)"},
    {"quota-backend-bytes", "BYTES", "raise an alarm and refuse writes when the backend exceeds this size (default 0 = 2 GiB)"},
    {"request-timeout", "MS", "how long a write waits for the cluster before failing (default 5000)"},
    {"mount", "DIR", "mount the key space at DIR (default \"./mnt\"; \"\" to not mount)"},
    {"mount-prefix", "KEYPREFIX", "key prefix shown as the mount's root (default \"/\")"},
    {"mount-consistency", "local|linearizable", "open(2) reads local applied state (default) or is a linearizable read point"},
    {"cert-file", "FILE", "TLS certificate for client connections"},
    {"key-file", "FILE", "TLS key for client connections"},
    {"help", NULL, "print this help and exit (also -h)"},
    {"version", NULL, "print the version and exit"},
};

void server_config_usage(FILE *out) {
    fprintf(out,
            "usage: quorumfs [flags]\n"
            "       quorumfs snapshot restore FILE --data-dir DIR\n\n"
            "A replicated, strongly consistent key-value store (etcd's data model and v3 API)\n"
            "whose key space is mounted as a filesystem.\n\nflags:\n");
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", flags[i].name, flags[i].arg ? " " : "",
                 flags[i].arg ? flags[i].arg : "");
        fprintf(out, "  %-36s %s\n", left, flags[i].help);
    }
}

static uint64_t fnv1a(uint64_t h, const char *s) {
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

static int copy_str(char *dst, size_t cap, const char *src, const char *flag, char *err,
                    size_t errlen) {
    size_t n = strlen(src);
    if (n >= cap) {
        snprintf(err, errlen, "--%s: value too long (%zu bytes, at most %zu)", flag, n, cap - 1);
        return -1;
    }
    memcpy(dst, src, n + 1);
    return 0;
}

static int parse_u64(const char *s, uint64_t *out, const char *flag, char *err, size_t errlen) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end != '\0' || s[0] == '-') {
        snprintf(err, errlen, "--%s: invalid number \"%s\"", flag, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_ms(const char *s, unsigned *out, const char *flag, char *err, size_t errlen) {
    uint64_t v;
    if (parse_u64(s, &v, flag, err, errlen)) return -1;
    if (v == 0 || v > 3600000) {
        snprintf(err, errlen, "--%s: %s ms is out of range (1..3600000)", flag, s);
        return -1;
    }
    *out = (unsigned)v;
    return 0;
}

/* Parses "n1=http://a:2380,n2=http://b:2380" into cfg->members. */
static int parse_cluster(struct server_config *cfg, const char *spec, char *err, size_t errlen) {
    char buf[4096];
    if (copy_str(buf, sizeof buf, spec, "initial-cluster", err, errlen)) return -1;
    cfg->n_members = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq || eq == tok || eq[1] == '\0') {
            snprintf(err, errlen, "--initial-cluster: \"%s\" is not NAME=URL", tok);
            return -1;
        }
        if (cfg->n_members == SERVER_MEMBERS_MAX) {
            snprintf(err, errlen, "--initial-cluster: more than %d members", SERVER_MEMBERS_MAX);
            return -1;
        }
        *eq = '\0';
        struct server_member *m = &cfg->members[cfg->n_members];
        if (copy_str(m->name, sizeof m->name, tok, "initial-cluster", err, errlen) ||
            copy_str(m->peer_url, sizeof m->peer_url, eq + 1, "initial-cluster", err, errlen))
            return -1;
        for (size_t i = 0; i < cfg->n_members; i++) {
            if (strcmp(cfg->members[i].name, m->name) == 0) {
                snprintf(err, errlen, "--initial-cluster: duplicate member name \"%s\"", m->name);
                return -1;
            }
        }
        cfg->n_members++;
    }
    if (cfg->n_members == 0) {
        snprintf(err, errlen, "--initial-cluster: no members");
        return -1;
    }
    return 0;
}

uint64_t server_member_id(const char *peer_url, const char *token) {
    uint64_t h = 14695981039346656037ull;
    h = fnv1a(h, peer_url);
    h = fnv1a(h, "\n");
    h = fnv1a(h, token);
    return h ? h : 1; /* 0 is Raft's "none" */
}

static void assign_ids(struct server_config *cfg) {
    for (size_t i = 0; i < cfg->n_members; i++)
        cfg->members[i].id = server_member_id(cfg->members[i].peer_url, cfg->initial_cluster_token);
}

int server_config_parse(struct server_config *cfg, int argc, char **argv, char *err,
                        size_t errlen) {
    memset(cfg, 0, sizeof *cfg);
    strcpy(cfg->name, "default");
    strcpy(cfg->data_dir, "./data");
    strcpy(cfg->listen_client_urls, "http://127.0.0.1:2379");
    strcpy(cfg->listen_peer_urls, "http://127.0.0.1:2380");
    strcpy(cfg->initial_cluster_token, "quorumfs-cluster");
    strcpy(cfg->mount, "./mnt");
    strcpy(cfg->mount_prefix, "/");
    cfg->heartbeat_interval_ms = 100;
    cfg->election_timeout_ms = 1000;
    cfg->snapshot_count = 100000;
    cfg->max_request_bytes = 1572864;
    cfg->request_timeout_ms = 5000;
    const char *cluster = NULL;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0) a = "--help";
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument \"%s\" (see --help)", a);
            return -1;
        }
        a += 2;
        const char *val = NULL;
        char name[64];
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        if (nlen >= sizeof name) {
            snprintf(err, errlen, "unknown flag \"%s\" (see --help)", argv[i]);
            return -1;
        }
        memcpy(name, a, nlen);
        name[nlen] = '\0';
        const struct flag *f = NULL;
        for (size_t k = 0; k < sizeof flags / sizeof flags[0]; k++)
            if (strcmp(flags[k].name, name) == 0) f = &flags[k];
        if (!f) {
            snprintf(err, errlen, "unknown flag \"--%s\" (see --help)", name);
            return -1;
        }
        if (f->arg) {
            if (eq) {
                val = eq + 1;
            } else if (i + 1 < argc) {
                val = argv[++i];
            } else {
                snprintf(err, errlen, "flag --%s needs a value (%s)", name, f->arg);
                return -1;
            }
        }
        int rc = 0;
        if (!strcmp(name, "help")) {
            server_config_usage(stdout);
            return 1;
        } else if (!strcmp(name, "version")) {
            printf("quorumfs version %s\n", QUORUMFS_VERSION);
            return 1;
        } else if (!strcmp(name, "name")) {
            rc = copy_str(cfg->name, sizeof cfg->name, val, name, err, errlen);
        } else if (!strcmp(name, "data-dir")) {
            rc = copy_str(cfg->data_dir, sizeof cfg->data_dir, val, name, err, errlen);
        } else if (!strcmp(name, "listen-client-urls")) {
            rc = copy_str(cfg->listen_client_urls, sizeof cfg->listen_client_urls, val, name, err, errlen);
        } else if (!strcmp(name, "listen-metrics-urls")) {
            rc = copy_str(cfg->listen_metrics_urls, sizeof cfg->listen_metrics_urls, val, name, err, errlen);
        } else if (!strcmp(name, "advertise-client-urls")) {
            rc = copy_str(cfg->advertise_client_urls, sizeof cfg->advertise_client_urls, val, name, err, errlen);
        } else if (!strcmp(name, "listen-peer-urls")) {
            rc = copy_str(cfg->listen_peer_urls, sizeof cfg->listen_peer_urls, val, name, err, errlen);
        } else if (!strcmp(name, "initial-advertise-peer-urls")) {
            rc = copy_str(cfg->initial_advertise_peer_urls, sizeof cfg->initial_advertise_peer_urls, val, name, err, errlen);
        } else if (!strcmp(name, "initial-cluster")) {
            cluster = val;
        } else if (!strcmp(name, "initial-cluster-state")) {
            if (!strcmp(val, "new")) {
                cfg->initial_cluster_existing = false;
            } else if (!strcmp(val, "existing")) {
                cfg->initial_cluster_existing = true;
            } else {
                snprintf(err, errlen, "--initial-cluster-state: \"%s\" is not new or existing", val);
                rc = -1;
            }
        } else if (!strcmp(name, "initial-cluster-token")) {
            rc = copy_str(cfg->initial_cluster_token, sizeof cfg->initial_cluster_token, val, name, err, errlen);
        } else if (!strcmp(name, "heartbeat-interval")) {
            rc = parse_ms(val, &cfg->heartbeat_interval_ms, name, err, errlen);
        } else if (!strcmp(name, "election-timeout")) {
            rc = parse_ms(val, &cfg->election_timeout_ms, name, err, errlen);
        } else if (!strcmp(name, "request-timeout")) {
            rc = parse_ms(val, &cfg->request_timeout_ms, name, err, errlen);
        } else if (!strcmp(name, "snapshot-count")) {
            rc = parse_u64(val, &cfg->snapshot_count, name, err, errlen);
        } else if (!strcmp(name, "max-request-bytes")) {
            rc = parse_u64(val, &cfg->max_request_bytes, name, err, errlen);
        } else if (!strcmp(name, "quota-backend-bytes")) {
            rc = parse_u64(val, &cfg->quota_backend_bytes, name, err, errlen);
        } else if (!strcmp(name, "mount")) {
            rc = copy_str(cfg->mount, sizeof cfg->mount, val, name, err, errlen);
        } else if (!strcmp(name, "mount-prefix")) {
            rc = copy_str(cfg->mount_prefix, sizeof cfg->mount_prefix, val, name, err, errlen);
        } else if (!strcmp(name, "mount-consistency")) {
            if (!strcmp(val, "local")) {
                cfg->mount_linearizable = false;
            } else if (!strcmp(val, "linearizable")) {
                cfg->mount_linearizable = true;
            } else {
                snprintf(err, errlen, "--mount-consistency: \"%s\" is not local or linearizable", val);
                rc = -1;
            }
        } else if (!strcmp(name, "cert-file")) {
            rc = copy_str(cfg->cert_file, sizeof cfg->cert_file, val, name, err, errlen);
        } else if (!strcmp(name, "key-file")) {
            rc = copy_str(cfg->key_file, sizeof cfg->key_file, val, name, err, errlen);
        }
        if (rc) return -1;
    }

    if (cfg->heartbeat_interval_ms * 2 > cfg->election_timeout_ms) {
        snprintf(err, errlen,
                 "--election-timeout (%u ms) must be at least twice --heartbeat-interval (%u ms)",
                 cfg->election_timeout_ms, cfg->heartbeat_interval_ms);
        return -1;
    }
    if (cfg->max_request_bytes == 0 || cfg->max_request_bytes > 64u * 1024 * 1024) {
        snprintf(err, errlen, "--max-request-bytes: must be 1..67108864");
        return -1;
    }
    if (cfg->mount_prefix[0] != '/') {
        snprintf(err, errlen, "--mount-prefix: \"%s\" must start with '/'", cfg->mount_prefix);
        return -1;
    }
    if (cfg->initial_advertise_peer_urls[0] == '\0')
        strcpy(cfg->initial_advertise_peer_urls, cfg->listen_peer_urls);
    if (cfg->advertise_client_urls[0] == '\0')
        strcpy(cfg->advertise_client_urls, cfg->listen_client_urls);
    if (cluster) {
        if (parse_cluster(cfg, cluster, err, errlen)) return -1;
    } else {
        char spec[SERVER_NAME_MAX + SERVER_URL_MAX + 2];
        char first_url[SERVER_URL_MAX];
        size_t n = strcspn(cfg->initial_advertise_peer_urls, ",");
        if (n >= sizeof first_url) n = sizeof first_url - 1;
        memcpy(first_url, cfg->initial_advertise_peer_urls, n);
        first_url[n] = '\0';
        snprintf(spec, sizeof spec, "%s=%s", cfg->name, first_url);
        if (parse_cluster(cfg, spec, err, errlen)) return -1;
    }
    bool self_listed = false;
    for (size_t i = 0; i < cfg->n_members; i++)
        if (strcmp(cfg->members[i].name, cfg->name) == 0) self_listed = true;
    if (!self_listed) {
        snprintf(err, errlen,
                 "--initial-cluster does not list this member's name \"%s\" (set --name)", cfg->name);
        return -1;
    }
    assign_ids(cfg);
    return 0;
}
