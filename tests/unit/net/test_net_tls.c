/*
 * test_net_tls.c - the parsing and file-making parts of peer TLS: etcd's
 * cipher-suite names mapped to OpenSSL's (unknown names refused with etcd's
 * sentence), and the self-signed certificates of --auto-tls (made once,
 * kept afterwards, naming the hosts given, loadable as a TLS context).
 * Sessions between transports are tested in test_net_transport.c.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "net/internal.h"
#include "tests/harness.h"

TEST(cipher_names_map_to_openssl) {
    char out[NET_CIPHER_LIST_MAX], err[NET_ERRMSG_SIZE];
    ASSERT_EQ(net_tls_cipher_list("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", out, sizeof(out), err,
                                  sizeof(err)),
              0);
    ASSERT_STR_EQ(out, "ECDHE-RSA-AES128-GCM-SHA256");
    ASSERT_EQ(net_tls_cipher_list("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,"
                                  "TLS_RSA_WITH_AES_128_CBC_SHA,"
                                  "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
                                  out, sizeof(out), err, sizeof(err)),
              0);
    ASSERT_STR_EQ(out, "ECDHE-ECDSA-AES256-GCM-SHA384:AES128-SHA:ECDHE-ECDSA-CHACHA20-POLY1305");
    ASSERT_EQ(net_tls_cipher_list("", out, sizeof(out), err, sizeof(err)), 0);
    ASSERT_STR_EQ(out, "");
}

TEST(unknown_cipher_names_are_refused_as_etcd_words_it) {
    char out[NET_CIPHER_LIST_MAX], err[NET_ERRMSG_SIZE];
    ASSERT_EQ(net_tls_cipher_list("TLS_FOO", out, sizeof(out), err, sizeof(err)), NET_ECIPHER);
    ASSERT_STR_EQ(err, "unexpected TLS cipher suite \"TLS_FOO\"");
    ASSERT_STR_EQ(out, "");
    ASSERT_EQ(net_tls_cipher_list("TLS_RSA_WITH_AES_128_CBC_SHA,ECDHE-RSA-AES128-GCM-SHA256", out,
                                  sizeof(out), err, sizeof(err)),
              NET_ECIPHER);
    ASSERT_STR_EQ(err, "unexpected TLS cipher suite \"ECDHE-RSA-AES128-GCM-SHA256\"");
    /* Names are case-sensitive, as Go's map lookup is. */
    ASSERT_EQ(net_tls_cipher_list("tls_rsa_with_aes_128_cbc_sha", out, sizeof(out), NULL, 0),
              NET_ECIPHER);
    /* Empty items. */
    ASSERT_EQ(net_tls_cipher_list("TLS_RSA_WITH_AES_128_CBC_SHA,", out, sizeof(out), err,
                                  sizeof(err)),
              NET_ECIPHER);
    ASSERT_EQ(net_tls_cipher_list(",TLS_RSA_WITH_AES_128_CBC_SHA", out, sizeof(out), err,
                                  sizeof(err)),
              NET_ECIPHER);
    ASSERT_STR_EQ(err, "unexpected TLS cipher suite \"\"");
    /* Too small an output buffer is a limit, not a truncated list. */
    char small[12];
    ASSERT_EQ(net_tls_cipher_list("TLS_RSA_WITH_AES_128_CBC_SHA,TLS_RSA_WITH_AES_256_CBC_SHA",
                                  small, sizeof(small), NULL, 0),
              NET_ELIMIT);
    ASSERT_STR_EQ(small, "");
}

TEST(every_mapped_cipher_list_is_accepted_by_openssl) {
    /* The usable (non-RC4, non-3DES) names, all at once. */
    char out[NET_CIPHER_LIST_MAX];
    ASSERT_EQ(net_tls_cipher_list("TLS_RSA_WITH_AES_128_CBC_SHA,TLS_RSA_WITH_AES_256_CBC_SHA,"
                                  "TLS_RSA_WITH_AES_128_CBC_SHA256,"
                                  "TLS_RSA_WITH_AES_128_GCM_SHA256,"
                                  "TLS_RSA_WITH_AES_256_GCM_SHA384,"
                                  "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,"
                                  "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,"
                                  "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,"
                                  "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,"
                                  "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256,"
                                  "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256,"
                                  "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,"
                                  "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,"
                                  "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,"
                                  "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,"
                                  "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305,"
                                  "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
                                  out, sizeof(out), NULL, 0),
              0);
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    ASSERT(ctx != NULL);
    ASSERT_EQ(SSL_CTX_set_cipher_list(ctx, out), 1);
    STACK_OF(SSL_CIPHER) *list = SSL_CTX_get_ciphers(ctx);
    /* 17 TLS 1.2 suites plus OpenSSL's TLS 1.3 ones: every name was known. */
    ASSERT(sk_SSL_CIPHER_num(list) >= 17);
    SSL_CTX_free(ctx);
}

static X509 *read_cert(const char *path) {
    FILE *f = fopen(path, "r");
    if (f == NULL) return NULL;
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    return x;
}

TEST(self_cert_is_made_once_and_names_its_hosts) {
    char base[] = "/tmp/qfs-net-selfcert-XXXXXX";
    ASSERT(mkdtemp(base) != NULL);
    char dir[128], cert[160], key[160], err[NET_ERRMSG_SIZE] = "";
    snprintf(dir, sizeof(dir), "%s/data/fixtures/client", base);
    snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
    snprintf(key, sizeof(key), "%s/key.pem", dir);
    ASSERT_EQ(net_tls_self_cert(dir, "https://127.0.0.1:2379,localhost,::1,http://:2379", err,
                                sizeof(err)),
              0);
    struct stat st;
    ASSERT_EQ(stat(key, &st), 0);
    ASSERT_EQ(st.st_mode & 0777, 0600);
    ASSERT_EQ(stat(dir, &st), 0);
    ASSERT_EQ(st.st_mode & 0777, 0700);

    X509 *x = read_cert(cert);
    ASSERT(x != NULL);
    char name[128];
    X509_NAME_oneline(X509_get_subject_name(x), name, sizeof(name));
    ASSERT_STR_EQ(name, "/O=etcd");
    ASSERT_EQ(X509_check_ip_asc(x, "127.0.0.1", 0), 1);
    ASSERT_EQ(X509_check_ip_asc(x, "::1", 0), 1);
    ASSERT_EQ(X509_check_host(x, "localhost", 0, 0, NULL), 1);
    ASSERT_EQ(X509_check_ip_asc(x, "127.0.0.2", 0), 0);
    ASSERT(X509_get_extended_key_usage(x) & XKU_SSL_SERVER);
    ASSERT(X509_get_extended_key_usage(x) & XKU_SSL_CLIENT);
    /* About a year. */
    int days = 0, secs = 0;
    ASSERT_EQ(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x), X509_get0_notAfter(x)), 1);
    ASSERT_EQ(days, 365);
    /* Usable as a server context. */
    struct net_tls_options o = {.cert_file = cert, .key_file = key};
    SSL_CTX *ctx = NULL;
    ASSERT_EQ(net__tls_ctx_new(&o, true, &ctx, err), 0);
    SSL_CTX_free(ctx);

    /* A second start keeps the same certificate. */
    ASSERT_EQ(net_tls_self_cert(dir, "10.0.0.1", err, sizeof(err)), 0);
    X509 *y = read_cert(cert);
    ASSERT(y != NULL);
    ASSERT_EQ(X509_cmp(x, y), 0);
    X509_free(x);
    X509_free(y);

    /* No hosts: a certificate without names, still valid. */
    char dir2[160];
    snprintf(dir2, sizeof(dir2), "%s/peer", base);
    ASSERT_EQ(net_tls_self_cert(dir2, NULL, err, sizeof(err)), 0);

    /* An unwritable place is an error with a sentence. */
    ASSERT(net_tls_self_cert("/proc/qfs-no/such", "127.0.0.1", err, sizeof(err)) < 0);
    ASSERT(strstr(err, "cannot create /proc/qfs-no") != NULL);

    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", base);
    ASSERT_EQ(system(cmd), 0);
}

TEST(bad_tls_files_are_refused_with_a_sentence) {
    char err[NET_ERRMSG_SIZE] = "";
    SSL_CTX *ctx = NULL;
    struct net_tls_options o = {.cert_file = "/nonexistent/cert.pem",
                                .key_file = "/nonexistent/key.pem"};
    ASSERT_EQ(net__tls_ctx_new(&o, true, &ctx, err), NET_ETLS);
    ASSERT(strstr(err, "cannot load certificate /nonexistent/cert.pem") != NULL);
    struct net_tls_options half = {.cert_file = "/nonexistent/cert.pem"};
    ASSERT_EQ(net__tls_ctx_new(&half, false, &ctx, err), NET_ETLS);
    struct net_tls_options server_without_cert = {0};
    ASSERT_EQ(net__tls_ctx_new(&server_without_cert, true, &ctx, err), NET_ETLS);
    ASSERT(strstr(err, "needs a certificate") != NULL);
    struct net_tls_options ca = {.trusted_ca_file = "/nonexistent/ca.pem"};
    ASSERT_EQ(net__tls_ctx_new(&ca, false, &ctx, err), NET_ETLS);
    ASSERT(strstr(err, "/nonexistent/ca.pem") != NULL);
    struct net_tls_options crl = {.crl_file = "/nonexistent/ca.crl"};
    ASSERT_EQ(net__tls_ctx_new(&crl, false, &ctx, err), NET_ETLS);
    struct net_tls_options rc4 = {.cipher_list = "RC4-SHA"};
    ASSERT_EQ(net__tls_ctx_new(&rc4, false, &ctx, err), NET_ETLS);
    ASSERT(strstr(err, "no cipher of \"RC4-SHA\" is available") != NULL);
    /* Nothing at all: a client context with the system's CAs. */
    struct net_tls_options none = {0};
    ASSERT_EQ(net__tls_ctx_new(&none, false, &ctx, err), 0);
    SSL_CTX_free(ctx);
}

int main(int argc, char **argv) { return harness_main(argc, argv); }
