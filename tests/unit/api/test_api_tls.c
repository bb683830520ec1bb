/*
 * test_api_tls.c - client TLS on the client port: client-certificate auth
 * (no certificate, another CA's, a revoked one: refused; a valid one:
 * accepted, and its CN reaches the backend through api_call_peer_cn()),
 * no CN where no certificate was verified, and the cipher list.
 *
 * Certificates are made with the openssl command in a temporary
 * directory; curl is the client (the JSON gateway over HTTP/1.1), and the
 * backend answers a Range with the caller's CN as a value, so what the
 * backend saw comes back in the answer.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/api.h"
#include "tests/harness.h"
#include "tests/unit/api/server_thread.h"

static char dir[64];

static int fixtures(void) {
    snprintf(dir, sizeof(dir), "/tmp/qfs-api-ctls-XXXXXX");
    if (mkdtemp(dir) == NULL) return -errno;
    char cmd[4096];
    snprintf(cmd, sizeof(cmd),
             "( set -e; cd %s\n"
             "ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-days 2 -subj /CN=$1 -keyout $1.key -out $1.pem "
             "-addext basicConstraints=critical,CA:TRUE "
             "-addext keyUsage=critical,keyCertSign,cRLSign; }\n"
             "leaf() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-subj \"$3\" -keyout $2.key -out $2.csr\n"
             "printf 'extendedKeyUsage=serverAuth,clientAuth\\nsubjectAltName=IP:127.0.0.1\\n' "
             ">$2.ext\n"
             "openssl x509 -req -in $2.csr -CA $1.pem -CAkey $1.key -CAcreateserial -days 2 "
             "-extfile $2.ext -out $2.pem; }\n"
             "ca ca; ca other\n"
             "leaf ca server /CN=server; leaf ca alice /CN=alice; leaf ca bob /CN=bob\n"
             "leaf ca nocn /O=nobody; leaf other mallory /CN=mallory\n"
             ": >index.txt; echo 1000 >crlnumber\n"
             "printf '[ca]\\ndefault_ca=c\\n[c]\\ndatabase=index.txt\\ncrlnumber=crlnumber\\n"
             "default_md=sha256\\ndefault_crl_days=2\\n' >ca.cnf\n"
             "openssl ca -config ca.cnf -keyfile ca.key -cert ca.pem -revoke bob.pem\n"
             "openssl ca -config ca.cnf -keyfile ca.key -cert ca.pem -gencrl -out ca.crl\n"
             ") >/dev/null 2>&1",
             dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void cleanup(void) {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "  could not remove %s\n", dir);
}

/* Range answers one kv: "cn" = the caller's CN, or "(none)". */
static void cn_range(void *ctx, struct api_call *call, const Etcdserverpb__RangeRequest *req) {
    (void)ctx;
    (void)req;
    const char *cn = api_call_peer_cn(call);
    if (cn == NULL) cn = "(none)";
    Mvccpb__KeyValue kv = MVCCPB__KEY_VALUE__INIT;
    kv.key.data = (uint8_t *)"cn";
    kv.key.len = 2;
    kv.value.data = (uint8_t *)cn;
    kv.value.len = strlen(cn);
    Mvccpb__KeyValue *kvs[] = {&kv};
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    Etcdserverpb__RangeResponse resp = ETCDSERVERPB__RANGE_RESPONSE__INIT;
    resp.header = &h;
    resp.kvs = kvs;
    resp.n_kvs = 1;
    resp.count = 1;
    api_reply(call, &resp.base);
}

static int start(struct srv_thread *t, struct api_options *o) {
    static char cert[128], key[128];
    snprintf(cert, sizeof(cert), "%s/server.pem", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    o->listen_client_urls = "https://127.0.0.1:0";
    o->cert_file = cert;
    o->key_file = key;
    struct api_backend be = {.range = cn_range};
    int rc = srv_start(t, o, &be);
    if (rc != 0) printf("  %s: %s\n", api_strerror(rc), t->errmsg);
    return rc;
}

/* Runs curl against the server as `who` (NULL: no client certificate);
 * returns curl's exit status and its output in out. */
static int curl_as(int port, const char *who, const char *extra, char *out, size_t cap) {
    char cmd[2048], cert[256] = "";
    if (who != NULL)
        snprintf(cert, sizeof(cert), "--cert %s/%s.pem --key %s/%s.key", dir, who, dir, who);
    snprintf(cmd, sizeof(cmd),
             "timeout -s KILL 20 curl -sS --max-time 10 --cacert %s/ca.pem %s %s "
             "-XPOST https://127.0.0.1:%d/v3/kv/range -d '{\"key\":\"Y24=\"}' 2>&1",
             dir, cert, extra ? extra : "", port);
    FILE *p = popen(cmd, "r");
    if (p == NULL) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST(client_cert_auth_admits_only_verified_unrevoked_certificates) {
    ASSERT_EQ(fixtures(), 0);
    char ca[128], crl[128];
    snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
    snprintf(crl, sizeof(crl), "%s/ca.crl", dir);
    struct api_options o = {.client_cert_auth = true,
                            .trusted_ca_file = ca,
                            .client_crl_file = crl};
    struct srv_thread t;
    ASSERT_EQ(start(&t, &o), 0);
    static char out[8192];
    /* alice: admitted, and the backend sees her CN ("alice" is YWxpY2U=). */
    ASSERT_EQ(curl_as(t.port, "alice", NULL, out, sizeof(out)), 0);
    ASSERT(strstr(out, "\"value\":\"YWxpY2U=\"") != NULL);
    /* A verified certificate without a CN: admitted, no CN ("(none)"). */
    ASSERT_EQ(curl_as(t.port, "nocn", NULL, out, sizeof(out)), 0);
    ASSERT(strstr(out, "\"value\":\"KG5vbmUp\"") != NULL);
    /* No certificate, another CA's, a revoked one: the handshake fails. */
    ASSERT_NE(curl_as(t.port, NULL, NULL, out, sizeof(out)), 0);
    ASSERT_NE(curl_as(t.port, "mallory", NULL, out, sizeof(out)), 0);
    ASSERT_NE(curl_as(t.port, "bob", NULL, out, sizeof(out)), 0);
    ASSERT_EQ(srv_stop(&t), 0);
}

TEST(without_client_cert_auth_there_is_no_cn) {
    struct api_options o = {0};
    struct srv_thread t;
    ASSERT_EQ(start(&t, &o), 0);
    static char out[8192];
    /* The server asks for no certificate, so none is verified. */
    ASSERT_EQ(curl_as(t.port, "alice", NULL, out, sizeof(out)), 0);
    ASSERT(strstr(out, "\"value\":\"KG5vbmUp\"") != NULL);
    ASSERT_EQ(curl_as(t.port, NULL, NULL, out, sizeof(out)), 0);
    ASSERT_EQ(srv_stop(&t), 0);
}

TEST(cipher_list_limits_tls12_suites) {
    struct api_options o = {.cipher_list = "ECDHE-ECDSA-AES128-GCM-SHA256"};
    struct srv_thread t;
    ASSERT_EQ(start(&t, &o), 0);
    static char out[8192];
    ASSERT_EQ(curl_as(t.port, NULL, "--tls-max 1.2 --ciphers ECDHE-ECDSA-AES128-GCM-SHA256", out,
                      sizeof(out)),
              0);
    ASSERT_NE(curl_as(t.port, NULL, "--tls-max 1.2 --ciphers ECDHE-ECDSA-AES256-GCM-SHA384", out,
                      sizeof(out)),
              0);
    /* TLS 1.3 is not limited, as in etcd (Go). */
    ASSERT_EQ(curl_as(t.port, NULL, "--tlsv1.3", out, sizeof(out)), 0);
    ASSERT_EQ(srv_stop(&t), 0);
}

TEST(bad_client_tls_files_are_refused) {
    struct api_options o = {.client_cert_auth = true, .trusted_ca_file = "/nonexistent/ca.pem"};
    struct srv_thread t;
    ASSERT_EQ(start(&t, &o), API_ETLS);
    ASSERT(strstr(t.errmsg, "/nonexistent/ca.pem") != NULL);
    char ca[128];
    snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
    struct api_options c = {.client_cert_auth = true,
                            .trusted_ca_file = ca,
                            .client_crl_file = "/nonexistent/ca.crl"};
    ASSERT_EQ(start(&t, &c), API_ETLS);
    ASSERT(strstr(t.errmsg, "/nonexistent/ca.crl") != NULL);
    struct api_options rc4 = {.cipher_list = "RC4-SHA"};
    ASSERT_EQ(start(&t, &rc4), API_ETLS);
    cleanup();
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
