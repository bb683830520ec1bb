/*
 * server.c - listeners, listen-URL parsing, TLS context, server life cycle.
 *
 * A server is a set of TCP listeners (one per URL of listen_client_urls),
 * the open connections (conn.c) and one idle handle that flushes the
 * connections whose calls were answered during the current loop turn, so
 * replies produced together leave together and the loop never blocks with
 * output pending. The server is freed only when every libuv handle it owns
 * has run its close callback; calls still held by the backend do not keep
 * it alive (they are detached from their connection when it goes).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "api/api_int.h"

/* Pending connections the kernel queues per listener. */
#define LISTEN_BACKLOG 511

static void errmsgf(const struct api_options *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void errmsgf(const struct api_options *o, const char *fmt, ...) {
    if (o == NULL || o->errmsg == NULL) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->errmsg, API_ERRMSG_SIZE, fmt, ap);
    va_end(ap);
}

/* ---- listen URLs ------------------------------------------------------------ */

struct url {
    bool tls;
    struct sockaddr_storage addr;
};

/* Parses one "http[s]://HOST:PORT[/]" of length len. */
static int url_parse(const char *s, size_t len, struct url *u) {
    char host[64];
    size_t i;
    memset(u, 0, sizeof(*u));
    if (len >= 7 && memcmp(s, "http://", 7) == 0) {
        i = 7;
    } else if (len >= 8 && memcmp(s, "https://", 8) == 0) {
        i = 8;
        u->tls = true;
    } else {
        return API_EURL;
    }
    if (len > i && s[len - 1] == '/') len--;
    size_t host_start = i, host_end;
    bool v6 = false;
    if (i < len && s[i] == '[') {
        const char *close = memchr(s + i, ']', len - i);
        if (close == NULL) return API_EURL;
        host_start = i + 1;
        host_end = (size_t)(close - s);
        i = host_end + 1;
        v6 = true;
    } else {
        while (i < len && s[i] != ':') i++;
        host_end = i;
    }
    if (i >= len || s[i] != ':') return API_EURL;
    i++;
    if (i >= len || len - i > 5) return API_EURL;
    unsigned port = 0;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return API_EURL;
        port = port * 10 + (unsigned)(s[i] - '0');
    }
    if (port > 65535) return API_EURL;
    size_t hlen = host_end - host_start;
    if (hlen >= sizeof(host)) return API_EURL;
    memcpy(host, s + host_start, hlen);
    host[hlen] = '\0';
    if (v6) {
        if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&u->addr) != 0) return API_EURL;
        return 0;
    }
    if (hlen == 0) strcpy(host, "0.0.0.0");
    if (strcmp(host, "localhost") == 0) strcpy(host, "127.0.0.1");
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&u->addr) != 0) return API_EURL;
    return 0;
}

/* ---- TLS ---------------------------------------------------------------- */

/* "http/1.1" when the client offers it, else "h2": gRPC clients offer only
 * "h2", while curl, browsers and Python offer both and then get the routes
 * that exist over HTTP/1.1 here (the gateway, /health, /version, /metrics;
 * etcd serves them over HTTP/2 as well). A client offering neither gets no
 * ALPN answer and the first bytes decide (conn.c). */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
    (void)ssl;
    (void)arg;
    static const unsigned char h1[] = "\x08http/1.1";
    static const unsigned char h2[] = "\x02h2";
    unsigned char *sel = NULL;
    unsigned char sel_len = 0;
    if (SSL_select_next_proto(&sel, &sel_len, h1, sizeof(h1) - 1, in, inlen) !=
            OPENSSL_NPN_NEGOTIATED &&
        SSL_select_next_proto(&sel, &sel_len, h2, sizeof(h2) - 1, in, inlen) !=
            OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    *outlen = sel_len;
    return SSL_TLSEXT_ERR_OK;
}

/* Client certificates: required, verified against the CA file (or the
 * system's CAs) and, with a CRL file, not revoked. 0, or -1 with why. */
static int client_verify_setup(SSL_CTX *ctx, const struct api_options *o, char *why,
                               size_t why_size) {
    if (o->trusted_ca_file != NULL) {
        if (SSL_CTX_load_verify_locations(ctx, o->trusted_ca_file, NULL) != 1) {
            snprintf(why, why_size, "cannot load CA certificates %s", o->trusted_ca_file);
            return -1;
        }
        /* The CA names a client may pick its certificate by. */
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->trusted_ca_file);
        if (names != NULL) SSL_CTX_set_client_CA_list(ctx, names);
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        snprintf(why, why_size, "cannot load the system's CA certificates");
        return -1;
    }
    if (o->client_crl_file != NULL) {
        X509_STORE *store = SSL_CTX_get_cert_store(ctx);
        X509_LOOKUP *lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
        if (lookup == NULL ||
            X509_load_crl_file(lookup, o->client_crl_file, X509_FILETYPE_PEM) <= 0) {
            snprintf(why, why_size, "cannot load certificate revocation list %s",
                     o->client_crl_file);
            return -1;
        }
        X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    return 0;
}

static int tls_ctx_new(const struct api_options *o, SSL_CTX **out) {
    char why[160] = "";
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) goto err_ssl;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (o->cipher_list != NULL && o->cipher_list[0] != '\0' &&
        SSL_CTX_set_cipher_list(ctx, o->cipher_list) != 1) {
        snprintf(why, sizeof(why), "no cipher of \"%.60s\" is available", o->cipher_list);
        goto err_ctx;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, o->cert_file) != 1) {
        snprintf(why, sizeof(why), "cannot load certificate %s", o->cert_file);
        goto err_ctx;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, o->key_file, SSL_FILETYPE_PEM) != 1) {
        snprintf(why, sizeof(why), "cannot load private key %s", o->key_file);
        goto err_ctx;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(why, sizeof(why), "private key does not match the certificate");
        goto err_ctx;
    }
    if (o->client_cert_auth && client_verify_setup(ctx, o, why, sizeof(why)) != 0) goto err_ctx;
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    *out = ctx;
    return 0;

err_ctx:
    SSL_CTX_free(ctx);
err_ssl : {
    char ossl[120];
    ERR_error_string_n(ERR_peek_last_error(), ossl, sizeof(ossl));
    ERR_clear_error();
    errmsgf(o, "TLS: %s (%s)", why[0] ? why : "cannot create context", ossl);
    return API_ETLS;
}
}

/* ---- life cycle ------------------------------------------------------------ */

static void maybe_free(struct api_server *s) {
    if (!s->closing || s->handles_open > 0 || s->n_conns > 0) return;
    void (*cb)(void *) = s->close_cb;
    void *data = s->close_data;
    SSL_CTX_free(s->tls);
    free(s);
    if (cb != NULL) cb(data);
}

static void handle_closed(uv_handle_t *h) {
    struct api_server *s = h->data;
    API__ASSERT(s->handles_open > 0);
    s->handles_open--;
    maybe_free(s);
}

static void on_connection(uv_stream_t *stream, int status) {
    struct api__listener *l = stream->data;
    if (status < 0 || l->server->closing) return;
    api__conn_accept(l);
}

static void flush_dirty(uv_idle_t *idle) {
    struct api_server *s = idle->data;
    while (s->dirty != NULL) api__conn_flush(s->dirty);
    uv_idle_stop(&s->flush_idle);
}

void api__server_mark_dirty(struct api_server *s, struct api__conn *c) {
    (void)c;
    if (s->loop != NULL && s->idle_open && !uv_is_active((uv_handle_t *)&s->flush_idle))
        uv_idle_start(&s->flush_idle, flush_dirty);
}

void api__server_conn_gone(struct api_server *s) {
    API__ASSERT(s->n_conns > 0);
    s->n_conns--;
    maybe_free(s);
}

static int options_apply(struct api_server *s, const struct api_options *o) {
    size_t req = o->max_request_bytes ? o->max_request_bytes : API_MAX_REQUEST_BYTES_DEFAULT;
    if (req > SIZE_MAX - API_GRPC_OVERHEAD_BYTES || req + API_GRPC_OVERHEAD_BYTES > UINT32_MAX) {
        errmsgf(o, "max_request_bytes %zu is too large", req);
        return API_EINVAL;
    }
    s->max_recv_bytes = req + API_GRPC_OVERHEAD_BYTES;
    s->max_send_bytes = o->max_response_bytes ? o->max_response_bytes
                                              : API_MAX_RESPONSE_BYTES_DEFAULT;
    s->max_streams = o->max_concurrent_streams ? o->max_concurrent_streams
                                               : API_MAX_CONCURRENT_STREAMS_DEFAULT;
    s->max_conns = o->max_connections ? o->max_connections : API_MAX_CONNECTIONS_DEFAULT;
    s->stream_queue_max = o->stream_queue_bytes_max ? o->stream_queue_bytes_max
                                                    : API_STREAM_QUEUE_BYTES_DEFAULT;
    snprintf(s->version_buf[0], sizeof(s->version_buf[0]), "%s",
             o->version_server ? o->version_server : API_ETCD_VERSION);
    snprintf(s->version_buf[1], sizeof(s->version_buf[1]), "%s",
             o->version_cluster ? o->version_cluster : API_ETCD_CLUSTER_VERSION);
    s->version_server = s->version_buf[0];
    s->version_cluster = s->version_buf[1];
    if ((o->cert_file == NULL) != (o->key_file == NULL)) {
        errmsgf(o, "cert_file and key_file must be given together");
        return API_EINVAL;
    }
    return 0;
}

static int listen_all(struct api_server *s, const struct api_options *o, const char *urls,
                      bool metrics_only) {
    const char *p = urls;
    while (*p != '\0') {
        while (*p == ' ' || *p == ',') p++;
        if (*p == '\0') break;
        const char *e = p;
        while (*e != '\0' && *e != ',' && *e != ' ') e++;
        struct url u;
        int rc = url_parse(p, (size_t)(e - p), &u);
        if (rc != 0) {
            errmsgf(o, "cannot parse listen URL \"%.*s\"", (int)(e - p > 100 ? 100 : e - p), p);
            return rc;
        }
        if (u.tls && s->tls == NULL) {
            errmsgf(o, "https listen URL \"%.*s\" needs cert_file and key_file",
                    (int)(e - p > 100 ? 100 : e - p), p);
            return API_EURL;
        }
        if (s->n_listeners == API_LISTENERS_MAX) {
            errmsgf(o, "more than %u listen URLs", API_LISTENERS_MAX);
            return API_EURL;
        }
        struct api__listener *l = &s->listeners[s->n_listeners];
        rc = uv_tcp_init(s->loop, &l->tcp);
        if (rc != 0) return rc;
        s->n_listeners++;
        s->handles_open++;
        l->open = true;
        l->server = s;
        l->tls = u.tls;
        l->metrics_only = metrics_only;
        l->tcp.data = l;
        rc = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&u.addr, 0);
        const char *step = "bind";
        if (rc == 0) {
            rc = uv_listen((uv_stream_t *)&l->tcp, LISTEN_BACKLOG, on_connection);
            /* libuv reports bind's errors from uv_listen. */
            if (rc != UV_EADDRINUSE && rc != UV_EADDRNOTAVAIL && rc != UV_EACCES) step = "listen";
        }
        if (rc != 0) {
            /* Go's wording, which etcd prints: "...: bind: address already in use". */
            errmsgf(o, "cannot listen on %.*s: %s: %s", (int)(e - p > 100 ? 100 : e - p), p, step,
                    uv_strerror(rc));
            return rc;
        }
        struct sockaddr_storage ss;
        int sslen = (int)sizeof(ss);
        rc = uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&ss, &sslen);
        if (rc != 0) return rc;
        l->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
        p = e;
    }
    if (s->n_listeners == 0 && !metrics_only) {
        errmsgf(o, "no listen URL given");
        return API_EURL;
    }
    return 0;
}

/* Releases what api_server_new() set up; handles close asynchronously and
 * the memory goes with the last of them. */
static void close_handles(struct api_server *s) {
    for (unsigned i = 0; i < s->n_listeners; i++) {
        struct api__listener *l = &s->listeners[i];
        if (l->open) {
            l->open = false;
            l->tcp.data = s;
            uv_close((uv_handle_t *)&l->tcp, handle_closed);
        }
    }
    if (s->idle_open) {
        s->idle_open = false;
        uv_idle_stop(&s->flush_idle);
        uv_close((uv_handle_t *)&s->flush_idle, handle_closed);
    }
}

int api_server_new(uv_loop_t *loop, const struct api_options *opts,
                   const struct api_backend *backend, struct api_server **out) {
    API__ASSERT(loop != NULL && opts != NULL && backend != NULL && out != NULL);
    *out = NULL;
    if (opts->listen_client_urls == NULL) {
        errmsgf(opts, "listen_client_urls is required");
        return API_EINVAL;
    }
    api__backend_check(backend);
    struct api_server *s = qfs_calloc(1, sizeof(*s));
    if (s == NULL) return API_ENOMEM;
    s->loop = loop;
    s->be = *backend;
    s->thread = uv_thread_self();
    int rc = options_apply(s, opts);
    if (rc != 0) goto err_free;
    if (opts->cert_file != NULL) {
        rc = tls_ctx_new(opts, &s->tls);
        if (rc != 0) goto err_free;
    }
    rc = uv_idle_init(loop, &s->flush_idle);
    if (rc != 0) goto err_free;
    s->flush_idle.data = s;
    s->idle_open = true;
    s->handles_open++;
    rc = listen_all(s, opts, opts->listen_client_urls, false);
    if (rc == 0 && opts->listen_metrics_urls != NULL && opts->listen_metrics_urls[0] != '\0')
        rc = listen_all(s, opts, opts->listen_metrics_urls, true);
    if (rc != 0) goto err_close;
    *out = s;
    return 0;

err_close:
    s->closing = true;
    close_handles(s);
    return rc;
err_free:
    SSL_CTX_free(s->tls);
    free(s);
    return rc;
}

int api_server_port(const struct api_server *s, unsigned index) {
    API__ASSERT(s != NULL);
    if (index >= s->n_listeners) return API_EINVAL;
    return s->listeners[index].port;
}

unsigned api_server_connections(const struct api_server *s) {
    API__ASSERT(s != NULL);
    return s->n_conns;
}

void api_server_close(struct api_server *s, void (*close_cb)(void *data), void *data) {
    API__ASSERT(s != NULL);
    API__ASSERT(!s->closing);
    API__ASSERT(s->loop != NULL);
    uv_thread_t self = uv_thread_self();
    API__ASSERT(uv_thread_equal(&self, &s->thread));
    s->closing = true;
    s->close_cb = close_cb;
    s->close_data = data;
    /* Closing a connection may run backend end entries, which may answer
     * other calls: flush nothing more, just close. */
    while (s->conns != NULL) api__conn_close(s->conns);
    close_handles(s);
    maybe_free(s);
}

/* ---- detached server (fuzzing) ------------------------------------------- */

int api__server_new_detached(const struct api_options *opts, const struct api_backend *be,
                             struct api_server **out) {
    api__backend_check(be);
    struct api_server *s = qfs_calloc(1, sizeof(*s));
    if (s == NULL) return API_ENOMEM;
    s->be = *be;
    s->thread = uv_thread_self();
    int rc = options_apply(s, opts);
    if (rc != 0) {
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void api__server_free_detached(struct api_server *s) {
    API__ASSERT(s->loop == NULL);
    API__ASSERT(s->n_conns == 0);
    free(s);
}
