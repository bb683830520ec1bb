/*
 * tls.c - OpenSSL for the client: one SSL_CTX per client, one SSL per
 * connection over memory BIOs (client.c moves the bytes between the BIOs
 * and the libuv socket, so OpenSSL never touches a file descriptor).
 *
 * What is checked, as grpc-go does: the server's chain against the given CA
 * file or the system's CAs, the URL's host against the certificate (DNS
 * name, or IP SAN for an IP literal), TLS 1.2 or later, ALPN "h2". The PEM
 * files are read once, by client__tls_ctx_new(), so a bad path is reported
 * by client_new() and not on every connection attempt.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "client/client_int.h"

/* The last OpenSSL error as text, or `fallback`; clears the queue. */
static void ssl_errstr(char *out, size_t outlen, const char *fallback) {
    unsigned long e = ERR_peek_last_error();
    if (e != 0) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof(buf));
        const char *reason = ERR_reason_error_string(e);
        snprintf(out, outlen, "%s", reason != NULL ? reason : buf);
    } else {
        snprintf(out, outlen, "%s", fallback);
    }
    ERR_clear_error();
}

/* Fails with a clear sentence when a file cannot be opened at all, before
 * OpenSSL turns it into a generic "system lib" error. */
static int check_readable(const char *what, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "cannot read %s file %s: %s", what, path, strerror(errno));
        return CLIENT_ETLS;
    }
    fclose(f);
    return 0;
}

int client__tls_ctx_new(const char *cacert, const char *cert, const char *key, SSL_CTX **out,
                        char *err, size_t errlen) {
    CLIENT__ASSERT(out != NULL);
    CLIENT__ASSERT((cert == NULL) == (key == NULL));
    char why[256];
    int rc = 0;
    *out = NULL;
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "cannot create a TLS context");
        return CLIENT_ENOMEM;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE);
    static const unsigned char alpn[] = {2, 'h', '2'};
    if (SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn)) != 0) {
        snprintf(err, errlen, "cannot set ALPN on the TLS context");
        rc = CLIENT_ENOMEM;
        goto err_ctx;
    }
    if (cacert != NULL) {
        rc = check_readable("CA", cacert, err, errlen);
        if (rc != 0) goto err_ctx;
        if (SSL_CTX_load_verify_locations(ctx, cacert, NULL) != 1) {
            ssl_errstr(why, sizeof(why), "no certificate found");
            snprintf(err, errlen, "invalid CA file %s: %s", cacert, why);
            rc = CLIENT_ETLS;
            goto err_ctx;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        ssl_errstr(why, sizeof(why), "unknown error");
        snprintf(err, errlen, "cannot load the system's CA certificates: %s", why);
        rc = CLIENT_ETLS;
        goto err_ctx;
    }
    if (cert != NULL) {
        rc = check_readable("certificate", cert, err, errlen);
        if (rc == 0) rc = check_readable("key", key, err, errlen);
        if (rc != 0) goto err_ctx;
        if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
            ssl_errstr(why, sizeof(why), "no certificate found");
            snprintf(err, errlen, "invalid certificate file %s: %s", cert, why);
            rc = CLIENT_ETLS;
            goto err_ctx;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
            ssl_errstr(why, sizeof(why), "no key found");
            snprintf(err, errlen, "invalid key file %s: %s", key, why);
            rc = CLIENT_ETLS;
            goto err_ctx;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            ssl_errstr(why, sizeof(why), "mismatch");
            snprintf(err, errlen, "key %s does not match certificate %s: %s", key, cert, why);
            rc = CLIENT_ETLS;
            goto err_ctx;
        }
    }
    *out = ctx;
    return 0;

err_ctx:
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}

int client__tls_new(SSL_CTX *ctx, const struct client__url *u, SSL **ssl, BIO **rbio, BIO **wbio) {
    CLIENT__ASSERT(ctx != NULL);
    CLIENT__ASSERT(u != NULL && u->tls);
    SSL *s = SSL_new(ctx);
    BIO *r = BIO_new(BIO_s_mem());
    BIO *w = BIO_new(BIO_s_mem());
    if (s == NULL || r == NULL || w == NULL) goto err_free;
    if (u->host_is_ip) {
        /* No SNI for IP literals (RFC 6066); the IP SAN is what counts. */
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), u->host) != 1) goto err_free;
    } else {
        if (SSL_set_tlsext_host_name(s, u->host) != 1) goto err_free;
        if (SSL_set1_host(s, u->host) != 1) goto err_free;
    }
    SSL_set_bio(s, r, w);
    SSL_set_connect_state(s);
    *ssl = s;
    *rbio = r;
    *wbio = w;
    return 0;

err_free:
    SSL_free(s);
    BIO_free(r);
    BIO_free(w);
    ERR_clear_error();
    return CLIENT_ENOMEM;
}

void client__tls_error(SSL *ssl, int ssl_err, char *out, size_t outlen) {
    long v = SSL_get_verify_result(ssl);
    if (v != X509_V_OK) {
        snprintf(out, outlen, "certificate verify failed: %s", X509_verify_cert_error_string(v));
        ERR_clear_error();
        return;
    }
    if (ssl_err == SSL_ERROR_ZERO_RETURN) {
        snprintf(out, outlen, "the server closed the TLS session");
        ERR_clear_error();
        return;
    }
    if (ssl_err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
        snprintf(out, outlen, "connection closed during TLS");
        ERR_clear_error();
        return;
    }
    ssl_errstr(out, outlen, "TLS error");
}
