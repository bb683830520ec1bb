/*
 * config.c - command-line flags, named and defaulted as etcd 3.4 names them,
 * plus quorumfs's own (--mount, --mount-prefix, --mount-consistency,
 * --request-timeout). With no flags at all a node is a single-member cluster
 * with its data in ./data and the key space mounted at ./mnt.
 *
 * One table, flags[], describes every flag: its name, the field of struct
 * server_config it sets and how, its default and its help line. The parser,
 * the defaults and --help all read that table, so a flag is added in one
 * place. Checks that involve more than one flag (election timeout against
 * heartbeat, the derived advertise URLs and cluster) run after every flag is
 * read, in server_config_parse().
 *
 * Member ids are derived deterministically from the member's first peer URL
 * and the cluster token (FNV-1a), so every node computes the same ids from
 * the same --initial-cluster without talking to the others, and a member
 * added at run time (which etcd's MemberAdd names by its peer URLs only)
 * computes the id the cluster gave it.
 */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/net.h"
#include "server/server.h"

#define QUORUMFS_VERSION "0.1.0"

/* How a flag's value is stored. */
enum flag_kind {
    FLAG_STRING,   /* copied into a char array of struct server_config */
    FLAG_UNSIGNED, /* a decimal number in [min, max] into an unsigned field */
    FLAG_U64,      /* a decimal number in [min, max] into a uint64_t field */
    FLAG_CHOICE,   /* a bool field: false for choices[0], true for choices[1] */
    FLAG_BOOL,     /* a bool field: true when given, or --flag=true|false as Go parses it */
    FLAG_CLUSTER,  /* --initial-cluster: kept aside, parsed once every flag is read */
    FLAG_HELP,     /* prints the usage; server_config_parse() returns 1 */
    FLAG_VERSION,  /* prints the version; server_config_parse() returns 1 */
};

struct flag {
    const char *name; /* without the leading "--" */
    const char *arg;  /* the value's placeholder in --help; NULL: the flag takes no value */
    enum flag_kind kind;
    size_t offset;          /* of the field in struct server_config (string, numbers, choice) */
    size_t size;            /* of that field in bytes; a string's capacity with its NUL */
    uint64_t min, max;      /* FLAG_UNSIGNED, FLAG_U64: accepted range, inclusive */
    const char *choices[2]; /* FLAG_CHOICE: the values meaning false and true */
    const char *def;        /* the default, as typed on the command line; NULL: none */
    const char *help;       /* one line; the default is appended to it */
};

/* Field descriptors. _Generic refuses to compile a flag whose field has the
 * wrong type for its kind. */
#define CFG_FIELD(f) ((struct server_config *)0)->f
#define STRING(f)                                                                 \
    .kind = FLAG_STRING, .offset = offsetof(struct server_config, f),            \
    .size = _Generic(CFG_FIELD(f), char *: sizeof CFG_FIELD(f))
#define UNSIGNED(f, lo, hi)                                                       \
    .kind = FLAG_UNSIGNED, .offset = offsetof(struct server_config, f),          \
    .size = _Generic(CFG_FIELD(f), unsigned: sizeof(unsigned)), .min = (lo), .max = (hi)
#define U64(f, lo, hi)                                                            \
    .kind = FLAG_U64, .offset = offsetof(struct server_config, f),               \
    .size = _Generic(CFG_FIELD(f), uint64_t: sizeof(uint64_t)), .min = (lo), .max = (hi)
#define BOOL(f)                                                                   \
    .kind = FLAG_BOOL, .offset = offsetof(struct server_config, f),              \
    .size = _Generic(CFG_FIELD(f), bool: sizeof(bool))
#define CHOICE(f, off, on)                                                        \
    .kind = FLAG_CHOICE, .offset = offsetof(struct server_config, f),            \
    .size = _Generic(CFG_FIELD(f), bool: sizeof(bool)), .choices = {(off), (on)}

/* Durations in milliseconds: at least 1 ms, at most an hour. */
#define MS_MAX 3600000u
_Static_assert(MS_MAX <= UINT_MAX, "FLAG_UNSIGNED ranges fit an unsigned");
/* Largest --max-request-bytes: the API's frame and message limits assume it. */
#define REQUEST_BYTES_MAX (64u * 1024 * 1024)

static const struct flag flags[] = {
    {.name = "name", .arg = "NAME", STRING(name), .def = "default",
     .help = "human-readable name of this member"},
    {.name = "data-dir", .arg = "DIR", STRING(data_dir), .def = "./data",
     .help = "path to the data directory"},
    {.name = "listen-client-urls", .arg = "URLS", STRING(listen_client_urls),
     .def = "http://127.0.0.1:2379",
     .help = "URLs to listen on for client traffic: etcd v3 gRPC, and HTTP/1.1 for the JSON "
             "gateway, /health, /version, /metrics"},
    {.name = "listen-metrics-urls", .arg = "URLS", STRING(listen_metrics_urls),
     .help = "more URLs serving only /metrics and /health over HTTP/1.1 (default none)"},
    {.name = "advertise-client-urls", .arg = "URLS", STRING(advertise_client_urls),
     .help = "client URLs to advertise to the rest of the cluster (default: the listen URLs)"},
    {.name = "listen-peer-urls", .arg = "URLS", STRING(listen_peer_urls),
     .def = "http://127.0.0.1:2380", .help = "URLs to listen on for peer traffic"},
    {.name = "initial-advertise-peer-urls", .arg = "URLS", STRING(initial_advertise_peer_urls),
     .help = "this member's peer URLs to advertise (default: the listen peer URLs)"},
    {.name = "initial-cluster", .arg = "NAME=URL,...", .kind = FLAG_CLUSTER,
     .help = "initial cluster configuration for bootstrapping (default NAME=ADVERTISE-PEER-URL)"},
    {.name = "initial-cluster-state", .arg = "new|existing",
     CHOICE(initial_cluster_existing, "new", "existing"), .def = "new",
     .help = "initial cluster state"},
    {.name = "initial-cluster-token", .arg = "TOKEN", STRING(initial_cluster_token),
     .def = "quorumfs-cluster", .help = "initial cluster token, to tell clusters apart"},
    {.name = "heartbeat-interval", .arg = "MS", UNSIGNED(heartbeat_interval_ms, 1, MS_MAX),
     .def = "100", .help = "time of a heartbeat interval in milliseconds"},
    {.name = "election-timeout", .arg = "MS", UNSIGNED(election_timeout_ms, 1, MS_MAX),
     .def = "1000", .help = "time of an election timeout in milliseconds"},
    {.name = "snapshot-count", .arg = "N", U64(snapshot_count, 0, UINT64_MAX), .def = "100000",
     .help = "number of applied entries that trigger a snapshot and log compaction"},
    {.name = "max-request-bytes", .arg = "BYTES", U64(max_request_bytes, 1, REQUEST_BYTES_MAX),
     .def = "1572864", .help = "maximum client request size in bytes"},
    {.name = "quota-backend-bytes", .arg = "BYTES", U64(quota_backend_bytes, 0, UINT64_MAX),
     .def = "0",
     .help = "raise an alarm and refuse writes when the backend exceeds this size; 0 means 2 GiB"},
    {.name = "request-timeout", .arg = "MS", UNSIGNED(request_timeout_ms, 1, MS_MAX),
     .def = "5000", .help = "how long a write waits for the cluster before failing"},
    {.name = "mount", .arg = "DIR", STRING(mount), .def = "./mnt",
     .help = "mount the key space at DIR; \"\" does not mount"},
    {.name = "mount-prefix", .arg = "KEYPREFIX", STRING(mount_prefix), .def = "/",
     .help = "key prefix shown as the mount's root"},
    {.name = "mount-uid", .arg = "UID", STRING(mount_uid), .def = "0",
     .help = "owner of mounted files and directories without stored metadata (keys written "
             "through the etcd API)"},
    {.name = "mount-gid", .arg = "GID", STRING(mount_gid), .def = "0",
     .help = "their group"},
    {.name = "mount-file-mode", .arg = "MODE", STRING(mount_file_mode), .def = "0644",
     .help = "their file permissions (octal); other users read, the kernel checks modes"},
    {.name = "mount-dir-mode", .arg = "MODE", STRING(mount_dir_mode), .def = "0755",
     .help = "their directory permissions (octal)"},
    {.name = "mount-nonempty", BOOL(mount_nonempty),
     .help = "allow mounting over a directory that holds files (they are hidden meanwhile)"},
    {.name = "mount-consistency", .arg = "local|linearizable",
     CHOICE(mount_linearizable, "local", "linearizable"), .def = "local",
     .help = "open(2) reads local applied state, or is a linearizable read point"},
    {.name = "cert-file", .arg = "FILE", STRING(cert_file),
     .help = "TLS certificate for client connections"},
    {.name = "key-file", .arg = "FILE", STRING(key_file), .help = "TLS key for client connections"},
    {.name = "client-cert-auth", BOOL(client_cert_auth),
     .help = "clients must present a certificate signed by --trusted-ca-file; its CN is the user"},
    {.name = "trusted-ca-file", .arg = "FILE", STRING(trusted_ca_file),
     .help = "CA certificates that verify client certificates (implies --client-cert-auth)"},
    {.name = "client-crl-file", .arg = "FILE", STRING(client_crl_file),
     .help = "certificate revocation list (PEM): revoked client certificates are refused"},
    {.name = "auto-tls", BOOL(auto_tls),
     .help = "https client URLs without --cert-file use a self-signed certificate made in "
             "DATA-DIR/fixtures/client"},
    {.name = "cipher-suites", .arg = "NAMES", STRING(cipher_suites),
     .help = "comma-separated TLS 1.2 cipher suites (Go's names, as etcd), client and peer "
             "(default: OpenSSL's)"},
    {.name = "peer-cert-file", .arg = "FILE", STRING(peer_cert_file),
     .help = "TLS certificate for peer connections (served and presented)"},
    {.name = "peer-key-file", .arg = "FILE", STRING(peer_key_file),
     .help = "TLS key for peer connections"},
    {.name = "peer-trusted-ca-file", .arg = "FILE", STRING(peer_trusted_ca_file),
     .help = "CA certificates that verify peers (implies --peer-client-cert-auth)"},
    {.name = "peer-crl-file", .arg = "FILE", STRING(peer_crl_file),
     .help = "certificate revocation list (PEM): revoked peer certificates are refused"},
    {.name = "peer-client-cert-auth", BOOL(peer_client_cert_auth),
     .help = "peers must present a certificate signed by --peer-trusted-ca-file"},
    {.name = "peer-auto-tls", BOOL(peer_auto_tls),
     .help = "https peer URLs without --peer-cert-file use a self-signed certificate made in "
             "DATA-DIR/fixtures/peer (peers' certificates are then not verified)"},
    {.name = "help", .kind = FLAG_HELP, .help = "print this help and exit (also -h)"},
    {.name = "version", .kind = FLAG_VERSION, .help = "print the version and exit"},
};

#define FLAGS_COUNT (sizeof flags / sizeof flags[0])

void server_config_usage(FILE *out) {
    fprintf(out,
            "usage: quorumfs [flags]\n"
            "       quorumfs snapshot restore FILE --data-dir DIR\n"
            "       quorumfs mount [flags] MOUNTPOINT (see quorumfs mount --help)\n\n"
            "A replicated, strongly consistent key-value store (etcd's data model and v3 API)\n"
            "whose key space is mounted as a filesystem.\n\nflags (--flag VALUE or --flag=VALUE):\n");
    for (size_t i = 0; i < FLAGS_COUNT; i++) {
        const struct flag *f = &flags[i];
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", f->name, f->arg ? " " : "",
                 f->arg ? f->arg : "");
        fprintf(out, "  %-38s %s", left, f->help);
        if (f->def && f->kind == FLAG_STRING)
            fprintf(out, " (default \"%s\")", f->def);
        else if (f->def)
            fprintf(out, " (default %s)", f->def);
        fputc('\n', out);
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

/* Stores val into the field of cfg that f describes. FLAG_CLUSTER, FLAG_HELP
 * and FLAG_VERSION are the caller's. Returns 0, or -1 with a message in err. */
static int flag_set(struct server_config *cfg, const struct flag *f, const char *val, char *err,
                    size_t errlen) {
    char *field = (char *)cfg + f->offset;
    uint64_t v;
    switch (f->kind) {
    case FLAG_STRING:
        return copy_str(field, f->size, val, f->name, err, errlen);
    case FLAG_UNSIGNED:
    case FLAG_U64:
        if (parse_u64(val, &v, f->name, err, errlen)) return -1;
        if (v < f->min || v > f->max) {
            snprintf(err, errlen, "--%s: %s is out of range (%llu..%llu)", f->name, val,
                     (unsigned long long)f->min, (unsigned long long)f->max);
            return -1;
        }
        if (f->kind == FLAG_UNSIGNED) {
            unsigned u = (unsigned)v;
            memcpy(field, &u, sizeof u);
        } else {
            memcpy(field, &v, sizeof v);
        }
        return 0;
    case FLAG_CHOICE:
        for (int i = 0; i < 2; i++) {
            if (strcmp(val, f->choices[i]) == 0) {
                bool b = i == 1;
                memcpy(field, &b, sizeof b);
                return 0;
            }
        }
        snprintf(err, errlen, "--%s: \"%s\" is not %s or %s", f->name, val, f->choices[0],
                 f->choices[1]);
        return -1;
    case FLAG_BOOL: {
        /* Go's strconv.ParseBool, which etcd's flags use. */
        static const char *const yes[] = {"1", "t", "T", "true", "TRUE", "True"};
        static const char *const no[] = {"0", "f", "F", "false", "FALSE", "False"};
        for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
            bool b = strcmp(val, yes[i]) == 0;
            if (!b && strcmp(val, no[i]) != 0) continue;
            memcpy(field, &b, sizeof b);
            return 0;
        }
        snprintf(err, errlen, "invalid boolean value \"%s\" for -%s", val, f->name);
        return -1;
    }
    case FLAG_CLUSTER:
    case FLAG_HELP:
    case FLAG_VERSION:
        break;
    }
    snprintf(err, errlen, "--%s: not a stored flag", f->name);
    return -1;
}

/* The first https URL of a comma-separated list, into url; false if none. */
static bool first_https(const char *urls, char *url, size_t cap) {
    for (const char *p = urls; *p != '\0';) {
        size_t n = strcspn(p, ",");
        if (n >= 8 && strncmp(p, "https://", 8) == 0) {
            snprintf(url, cap, "%.*s", (int)n, p);
            return true;
        }
        p += n;
        if (*p == ',') p++;
    }
    return false;
}

/* etcd's TLS rules that involve several flags; the cipher suites mapped. */
static int tls_check(struct server_config *cfg, char *err, size_t errlen) {
    char url[SERVER_URL_MAX];
    if (net_tls_cipher_list(cfg->cipher_suites, cfg->cipher_list, sizeof cfg->cipher_list, err,
                            errlen) != 0)
        return -1;
    if ((cfg->cert_file[0] == '\0') != (cfg->key_file[0] == '\0')) {
        snprintf(err, errlen, "--cert-file and --key-file must be given together");
        return -1;
    }
    if ((cfg->peer_cert_file[0] == '\0') != (cfg->peer_key_file[0] == '\0')) {
        snprintf(err, errlen, "--peer-cert-file and --peer-key-file must be given together");
        return -1;
    }
    if (cfg->cert_file[0] == '\0' && !cfg->auto_tls &&
        first_https(cfg->listen_client_urls, url, sizeof url)) {
        snprintf(err, errlen,
                 "TLS key/cert (--cert-file, --key-file) must be provided for client url %s "
                 "with HTTPS scheme",
                 url);
        return -1;
    }
    if (cfg->peer_cert_file[0] == '\0' && !cfg->peer_auto_tls &&
        first_https(cfg->listen_peer_urls, url, sizeof url)) {
        snprintf(err, errlen,
                 "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer "
                 "url %s with HTTPS scheme",
                 url);
        return -1;
    }
    return 0;
}

static const struct flag *flag_find(const char *name) {
    for (size_t k = 0; k < FLAGS_COUNT; k++)
        if (strcmp(flags[k].name, name) == 0) return &flags[k];
    return NULL;
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
    for (size_t k = 0; k < FLAGS_COUNT; k++) {
        if (flags[k].def && flag_set(cfg, &flags[k], flags[k].def, err, errlen)) return -1;
    }
    const char *cluster = NULL;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0) a = "--help";
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument \"%s\" (see --help)", a);
            return -1;
        }
        a += 2;
        char name[64];
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        if (nlen >= sizeof name) {
            snprintf(err, errlen, "unknown flag \"%s\" (see --help)", argv[i]);
            return -1;
        }
        memcpy(name, a, nlen);
        name[nlen] = '\0';
        const struct flag *f = flag_find(name);
        if (!f) {
            snprintf(err, errlen, "unknown flag \"--%s\" (see --help)", name);
            return -1;
        }
        const char *val = NULL;
        if (f->kind == FLAG_BOOL) {
            /* As Go's flag package: a bare bool flag is true; a value needs "=". */
            val = eq ? eq + 1 : "true";
        } else if (f->arg) {
            if (eq) {
                val = eq + 1;
            } else if (i + 1 < argc) {
                val = argv[++i];
            } else {
                snprintf(err, errlen, "flag --%s needs a value (%s)", name, f->arg);
                return -1;
            }
        }
        switch (f->kind) {
        case FLAG_HELP:
            server_config_usage(stdout);
            return 1;
        case FLAG_VERSION:
            printf("quorumfs version %s\n", QUORUMFS_VERSION);
            return 1;
        case FLAG_CLUSTER:
            cluster = val;
            break;
        default:
            if (flag_set(cfg, f, val, err, errlen)) return -1;
            break;
        }
    }

    if (cfg->heartbeat_interval_ms * 2 > cfg->election_timeout_ms) {
        snprintf(err, errlen,
                 "--election-timeout (%u ms) must be at least twice --heartbeat-interval (%u ms)",
                 cfg->election_timeout_ms, cfg->heartbeat_interval_ms);
        return -1;
    }
    const char *const mount_nums[4][2] = {{"mount-uid", cfg->mount_uid},
                                          {"mount-gid", cfg->mount_gid},
                                          {"mount-file-mode", cfg->mount_file_mode},
                                          {"mount-dir-mode", cfg->mount_dir_mode}};
    for (int i = 0; i < 4; i++) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(mount_nums[i][1], &end, i < 2 ? 10 : 8);
        if (errno || *end || !mount_nums[i][1][0] || v > (i < 2 ? 4294967294ul : 07777ul)) {
            snprintf(err, errlen, "--%s: \"%s\" is not %s", mount_nums[i][0], mount_nums[i][1],
                     i < 2 ? "a number" : "an octal mode such as 0644");
            return -1;
        }
    }
    if (cfg->mount_prefix[0] != '/') {
        snprintf(err, errlen, "--mount-prefix: \"%s\" must start with '/'", cfg->mount_prefix);
        return -1;
    }
    if (tls_check(cfg, err, errlen)) return -1;
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
