/*
 * tls.c - peer TLS setup as etcd's flags describe it: contexts for accepted
 * and dialled connections, etcd's cipher-suite names mapped to OpenSSL's,
 * the self-signed certificates of --auto-tls / --peer-auto-tls, and the
 * sentence that says why a handshake failed.
 *
 * The TLS sessions themselves live in transport.c, over memory BIOs. This
 * file holds no state: a context is built once per transport and is
 * immutable afterwards. Everything here may block on file I/O (certificate,
 * key, CA and CRL files), so it runs before the loop serves traffic.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "net/internal.h"

/* Validity of a self-signed certificate, as etcd's SelfCert (one year). */
#define SELF_CERT_DAYS 365
/* Hosts one self-signed certificate names. */
#define SELF_CERT_HOSTS_MAX 32u

static void errmsgf(char *errmsg, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void errmsgf(char *errmsg, size_t cap, const char *fmt, ...) {
    if (errmsg == NULL || cap == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, cap, fmt, ap);
    va_end(ap);
}

/* OpenSSL's reason for the last error, then the queue cleared. */
static const char *ossl_reason(char *buf, size_t cap) {
    unsigned long e = ERR_peek_last_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    snprintf(buf, cap, "%s", r != NULL ? r : "no details from OpenSSL");
    ERR_clear_error();
    return buf;
}

/* ---- contexts ------------------------------------------------------------ */

int net__tls_ctx_new(const struct net_tls_options *o, bool server, SSL_CTX **out,
                     char *errmsg) {
    NET__ASSERT(o != NULL);
    NET__ASSERT(out != NULL);
    char why[NET_ERRMSG_SIZE];
    char ossl[128];
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (ctx == NULL) {
        snprintf(why, sizeof(why), "cannot create a TLS context");
        goto err;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (o->cipher_list != NULL && o->cipher_list[0] != '\0' &&
        SSL_CTX_set_cipher_list(ctx, o->cipher_list) != 1) {
        snprintf(why, sizeof(why), "no cipher of \"%.100s\" is available", o->cipher_list);
        goto err_ctx;
    }
    if ((o->cert_file == NULL) != (o->key_file == NULL)) {
        snprintf(why, sizeof(why), "a peer certificate and its key must be given together");
        goto err_ctx;
    }
    if (server && o->cert_file == NULL) {
        snprintf(why, sizeof(why), "an https peer URL needs a certificate and key");
        goto err_ctx;
    }
    if (o->cert_file != NULL) {
        if (SSL_CTX_use_certificate_chain_file(ctx, o->cert_file) != 1) {
            snprintf(why, sizeof(why), "cannot load certificate %.150s", o->cert_file);
            goto err_ctx;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, o->key_file, SSL_FILETYPE_PEM) != 1) {
            snprintf(why, sizeof(why), "cannot load private key %.150s", o->key_file);
            goto err_ctx;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            snprintf(why, sizeof(why), "private key %.150s does not match the certificate",
                     o->key_file);
            goto err_ctx;
        }
    }
    if (o->trusted_ca_file != NULL) {
        if (SSL_CTX_load_verify_locations(ctx, o->trusted_ca_file, NULL) != 1) {
            snprintf(why, sizeof(why), "cannot load CA certificates %.150s", o->trusted_ca_file);
            goto err_ctx;
        }
        if (server) {
            /* The CA names a client may pick its certificate by. */
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->trusted_ca_file);
            if (names != NULL) SSL_CTX_set_client_CA_list(ctx, names);
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        snprintf(why, sizeof(why), "cannot load the system's CA certificates");
        goto err_ctx;
    }
    if (o->crl_file != NULL) {
        X509_STORE *store = SSL_CTX_get_cert_store(ctx);
        X509_LOOKUP *lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
        if (lookup == NULL || X509_load_crl_file(lookup, o->crl_file, X509_FILETYPE_PEM) <= 0) {
            snprintf(why, sizeof(why), "cannot load certificate revocation list %.150s",
                     o->crl_file);
            goto err_ctx;
        }
        X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
    }
    if (server)
        SSL_CTX_set_verify(ctx,
                           o->client_cert_auth ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                                               : SSL_VERIFY_NONE,
                           NULL);
    else
        SSL_CTX_set_verify(ctx, o->insecure_skip_verify ? SSL_VERIFY_NONE : SSL_VERIFY_PEER,
                           NULL);
    ERR_clear_error();
    *out = ctx;
    return 0;

err_ctx:
    SSL_CTX_free(ctx);
err:
    errmsgf(errmsg, NET_ERRMSG_SIZE, "peer TLS: %s (%s)", why, ossl_reason(ossl, sizeof(ossl)));
    return NET_ETLS;
}

void net__tls_reason(SSL *ssl, int ssl_error, const char *subject, char *buf, size_t cap) {
    NET__ASSERT(ssl != NULL && subject != NULL);
    NET__ASSERT(buf != NULL && cap > 0);
    unsigned long e = ERR_peek_last_error();
    long v = SSL_get_verify_result(ssl);
    if (e != 0 && ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED && v != X509_V_OK) {
        snprintf(buf, cap, "certificate verify failed: %s%s%s", X509_verify_cert_error_string(v),
                 subject[0] != '\0' ? ", certificate subject " : "", subject);
    } else if (e != 0) {
        const char *r = ERR_reason_error_string(e);
        snprintf(buf, cap, "%s", r != NULL ? r : "TLS error");
    } else if (ssl_error == SSL_ERROR_SYSCALL || ssl_error == SSL_ERROR_ZERO_RETURN) {
        snprintf(buf, cap, "connection closed during the TLS handshake");
    } else {
        snprintf(buf, cap, "TLS error %d", ssl_error);
    }
    ERR_clear_error();
}

/* ---- etcd's cipher suite names ------------------------------------------ */

/* Go's crypto/tls names as etcd 3.4 accepts them (pkg/tlsutil), and the
 * OpenSSL name of the same suite. RC4 suites map to names OpenSSL 3 no
 * longer offers: accepted as etcd accepts them, then unusable. */
static const struct {
    const char *go;
    const char *openssl;
} cipher_suites[] = {
    {"TLS_RSA_WITH_RC4_128_SHA", "RC4-SHA"},
    {"TLS_RSA_WITH_3DES_EDE_CBC_SHA", "DES-CBC3-SHA"},
    {"TLS_RSA_WITH_AES_128_CBC_SHA", "AES128-SHA"},
    {"TLS_RSA_WITH_AES_256_CBC_SHA", "AES256-SHA"},
    {"TLS_RSA_WITH_AES_128_CBC_SHA256", "AES128-SHA256"},
    {"TLS_RSA_WITH_AES_128_GCM_SHA256", "AES128-GCM-SHA256"},
    {"TLS_RSA_WITH_AES_256_GCM_SHA384", "AES256-GCM-SHA384"},
    {"TLS_ECDHE_ECDSA_WITH_RC4_128_SHA", "ECDHE-ECDSA-RC4-SHA"},
    {"TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", "ECDHE-ECDSA-AES128-SHA"},
    {"TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", "ECDHE-ECDSA-AES256-SHA"},
    {"TLS_ECDHE_RSA_WITH_RC4_128_SHA", "ECDHE-RSA-RC4-SHA"},
    {"TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", "ECDHE-RSA-DES-CBC3-SHA"},
    {"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "ECDHE-RSA-AES128-SHA"},
    {"TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", "ECDHE-RSA-AES256-SHA"},
    {"TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", "ECDHE-ECDSA-AES128-SHA256"},
    {"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", "ECDHE-RSA-AES128-SHA256"},
    {"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256"},
    {"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"},
    {"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384"},
    {"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384"},
    {"TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"},
    {"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305", "ECDHE-ECDSA-CHACHA20-POLY1305"},
};

int net_tls_cipher_list(const char *etcd_names, char *out, size_t out_size, char *errmsg,
                        size_t errmsg_size) {
    NET__ASSERT(etcd_names != NULL);
    NET__ASSERT(out != NULL && out_size > 0);
    size_t pos = 0;
    out[0] = '\0';
    const char *p = etcd_names;
    while (*p != '\0') {
        const char *e = p;
        while (*e != '\0' && *e != ',') e++;
        size_t len = (size_t)(e - p);
        /* etcd splits on ",": an empty item is an unknown name, as in etcd. */
        const char *found = NULL;
        for (size_t i = 0; i < sizeof(cipher_suites) / sizeof(cipher_suites[0]); i++) {
            if (strlen(cipher_suites[i].go) == len && memcmp(cipher_suites[i].go, p, len) == 0)
                found = cipher_suites[i].openssl;
        }
        if (found == NULL) {
            errmsgf(errmsg, errmsg_size, "unexpected TLS cipher suite \"%.*s\"",
                    (int)(len > 100 ? 100 : len), p);
            out[0] = '\0';
            return NET_ECIPHER;
        }
        size_t need = strlen(found) + (pos > 0 ? 1 : 0);
        if (pos + need + 1 > out_size) {
            errmsgf(errmsg, errmsg_size, "too many cipher suites");
            out[0] = '\0';
            return NET_ELIMIT;
        }
        if (pos > 0) out[pos++] = ':';
        memcpy(out + pos, found, strlen(found) + 1);
        pos += strlen(found);
        p = *e == ',' ? e + 1 : e;
        if (*e == ',' && *p == '\0') {
            errmsgf(errmsg, errmsg_size, "unexpected TLS cipher suite \"\"");
            out[0] = '\0';
            return NET_ECIPHER;
        }
    }
    return 0;
}

/* ---- self-signed certificates ------------------------------------------- */

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Adds one extension given in OpenSSL's configuration syntax. */
static int add_ext(X509 *cert, int nid, const char *value) {
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, cert, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (ext == NULL) return -1;
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1 ? 0 : -1;
}

/* "IP:1.2.3.4,DNS:name,..." for the hosts list (hosts or URLs); 0 or -1
 * when it does not fit. */
static int san_value(const char *hosts, char *buf, size_t cap) {
    size_t pos = 0, n = 0;
    buf[0] = '\0';
    const char *p = hosts;
    while (p != NULL && *p != '\0') {
        const char *e = p;
        while (*e != '\0' && *e != ',') e++;
        size_t len = (size_t)(e - p);
        char host[NET_URL_MAX + 1] = "";
        if (len > 0 && len <= NET_URL_MAX) {
            memcpy(host, p, len);
            host[len] = '\0';
        }
        if (strstr(host, "://") != NULL) {
            /* A URL names its host; one that does not parse (an empty
             * host: all interfaces) names none. */
            struct net__url u;
            if (net__url_parse(host, &u) == 0)
                snprintf(host, sizeof(host), "%s", u.host);
            else
                host[0] = '\0';
        }
        if (host[0] != '\0') {
            unsigned char bin[16];
            bool ip = inet_pton(AF_INET, host, bin) == 1 || inet_pton(AF_INET6, host, bin) == 1;
            int w = snprintf(buf + pos, cap - pos, "%s%s:%s", pos > 0 ? "," : "",
                             ip ? "IP" : "DNS", host);
            if (w < 0 || (size_t)w >= cap - pos || ++n > SELF_CERT_HOSTS_MAX) return -1;
            pos += (size_t)w;
        }
        p = *e == ',' ? e + 1 : e;
    }
    return 0;
}

/* Writes data to path through a temporary file renamed into place. */
static int write_pem(const char *path, mode_t mode, X509 *cert, EVP_PKEY *key) {
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) return -ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0) return -errno;
    FILE *f = fdopen(fd, "w");
    if (f == NULL) {
        int rc = -errno;
        close(fd);
        unlink(tmp);
        return rc;
    }
    int ok = cert != NULL ? PEM_write_X509(f, cert)
                          : PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    int rc = ok == 1 ? 0 : NET_ETLS;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) rc = rc != 0 ? rc : -errno;
    if (fclose(f) != 0 && rc == 0) rc = -errno;
    if (rc == 0 && rename(tmp, path) != 0) rc = -errno;
    if (rc != 0) unlink(tmp);
    return rc;
}

int net_tls_self_cert(const char *dir, const char *hosts, char *errmsg, size_t errmsg_size) {
    NET__ASSERT(dir != NULL);
    char cert_path[PATH_MAX], key_path[PATH_MAX], san[4096], ossl[128];
    if (snprintf(cert_path, sizeof(cert_path), "%s/cert.pem", dir) >= (int)sizeof(cert_path) ||
        snprintf(key_path, sizeof(key_path), "%s/key.pem", dir) >= (int)sizeof(key_path))
        return -ENAMETOOLONG;
    if (file_exists(cert_path) && file_exists(key_path)) return 0;
    /* mkdir -p: etcd's fixtures/client lives in a data dir that may be new. */
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s", dir);
    for (char *s = path + 1;; s++) {
        bool end = *s == '\0';
        if (*s != '/' && !end) continue;
        *s = '\0';
        if (mkdir(path, 0700) != 0 && errno != EEXIST) {
            int rc = -errno;
            errmsgf(errmsg, errmsg_size, "cannot create %.150s: %s", path, strerror(errno));
            return rc;
        }
        if (end) break;
        *s = '/';
    }
    if (san_value(hosts, san, sizeof(san)) != 0) {
        errmsgf(errmsg, errmsg_size, "auto TLS: too many hosts for one certificate");
        return NET_ETLS;
    }
    ERR_clear_error();
    int rc = NET_ETLS;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *cert = X509_new();
    X509_NAME *name = X509_NAME_new();
    BIGNUM *serial = BN_new();
    if (key == NULL || cert == NULL || name == NULL || serial == NULL) goto out;
    /* A random 128-bit serial, as Go's SelfCert draws one. */
    if (BN_rand(serial, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
        BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(cert)) == NULL)
        goto out;
    if (X509_set_version(cert, X509_VERSION_3) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(cert), 0) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(cert), 60L * 60 * 24 * SELF_CERT_DAYS) == NULL ||
        X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"etcd", -1, -1,
                                   0) != 1 ||
        X509_set_subject_name(cert, name) != 1 || X509_set_issuer_name(cert, name) != 1 ||
        X509_set_pubkey(cert, key) != 1)
        goto out;
    if (add_ext(cert, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
        add_ext(cert, NID_key_usage, "critical,digitalSignature,keyEncipherment") != 0 ||
        add_ext(cert, NID_ext_key_usage, "serverAuth,clientAuth") != 0 ||
        (san[0] != '\0' && add_ext(cert, NID_subject_alt_name, san) != 0))
        goto out;
    if (X509_sign(cert, key, EVP_sha256()) == 0) goto out;
    rc = write_pem(key_path, 0600, NULL, key);
    if (rc == 0) rc = write_pem(cert_path, 0644, cert, NULL);
    if (rc != 0 && rc != NET_ETLS) {
        errmsgf(errmsg, errmsg_size, "auto TLS: cannot write %.150s: %s", dir, strerror(-rc));
        goto done;
    }
out:
    if (rc == NET_ETLS)
        errmsgf(errmsg, errmsg_size, "auto TLS: cannot make a certificate (%s)",
                ossl_reason(ossl, sizeof(ossl)));
done:
    BN_free(serial);
    X509_NAME_free(name);
    X509_free(cert);
    EVP_PKEY_free(key);
    return rc;
}
