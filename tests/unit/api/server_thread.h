/*
 * server_thread.h - runs an api_server on its own libuv loop in a thread,
 * for tests that drive it from the test thread as a client would.
 *
 * srv_start() returns once the server listens (port known); srv_call()
 * runs a function on the loop thread and waits for it, which is how tests
 * look at or poke backend state without locks; srv_stop() closes the
 * server, lets the loop finish, joins and checks the loop had no handle
 * left open. Header-only, static inline functions: included by one test file each.
 */
#ifndef QFS_TESTS_API_SERVER_THREAD_H
#define QFS_TESTS_API_SERVER_THREAD_H

#include <stdbool.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "api/api.h"

struct srv_thread {
    uv_loop_t loop;
    uv_thread_t tid;
    uv_async_t wake;
    uv_mutex_t mu;
    uv_cond_t cv;
    struct api_options opts;
    struct api_backend be;
    struct api_server *server;
    int rc; /* api_server_new() result */
    int port;
    bool ready;
    bool server_closed;
    int loop_close_rc;
    /* One pending cross-thread call. */
    void (*fn)(struct srv_thread *t, void *arg);
    void *arg;
    bool fn_done;
    /* Run on the loop thread before closing (closing backend handles). */
    void (*before_close)(struct srv_thread *t);
    char errmsg[API_ERRMSG_SIZE];
};

static inline void srv__on_wake(uv_async_t *a) {
    struct srv_thread *t = a->data;
    uv_mutex_lock(&t->mu);
    void (*fn)(struct srv_thread *, void *) = t->fn;
    void *arg = t->arg;
    uv_mutex_unlock(&t->mu);
    if (fn == NULL) return;
    fn(t, arg);
    uv_mutex_lock(&t->mu);
    t->fn = NULL;
    t->fn_done = true;
    uv_cond_broadcast(&t->cv);
    uv_mutex_unlock(&t->mu);
}

static inline void srv__main(void *arg) {
    struct srv_thread *t = arg;
    int rc = uv_loop_init(&t->loop);
    if (rc == 0) {
        uv_async_init(&t->loop, &t->wake, srv__on_wake);
        t->wake.data = t;
        t->opts.errmsg = t->errmsg;
        rc = api_server_new(&t->loop, &t->opts, &t->be, &t->server);
    }
    uv_mutex_lock(&t->mu);
    t->rc = rc;
    t->port = rc == 0 ? api_server_port(t->server, 0) : -1;
    t->ready = true;
    uv_cond_broadcast(&t->cv);
    uv_mutex_unlock(&t->mu);
    if (rc != 0 && t->wake.data == NULL) return;
    if (rc != 0) uv_close((uv_handle_t *)&t->wake, NULL);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    t->loop_close_rc = uv_loop_close(&t->loop);
}

/* Starts the server thread; returns api_server_new()'s result. */
static inline int srv_start(struct srv_thread *t, const struct api_options *o,
                            const struct api_backend *be) {
    memset(t, 0, sizeof(*t));
    t->opts = *o;
    t->be = *be;
    uv_mutex_init(&t->mu);
    uv_cond_init(&t->cv);
    if (uv_thread_create(&t->tid, srv__main, t) != 0) return -1;
    uv_mutex_lock(&t->mu);
    while (!t->ready) uv_cond_wait(&t->cv, &t->mu);
    uv_mutex_unlock(&t->mu);
    if (t->rc != 0) {
        uv_thread_join(&t->tid);
        uv_mutex_destroy(&t->mu);
        uv_cond_destroy(&t->cv);
    }
    return t->rc;
}

/* Runs fn(t, arg) on the loop thread and waits until it returned. */
static inline void srv_call(struct srv_thread *t, void (*fn)(struct srv_thread *, void *),
                            void *arg) {
    uv_mutex_lock(&t->mu);
    t->fn = fn;
    t->arg = arg;
    t->fn_done = false;
    uv_mutex_unlock(&t->mu);
    uv_async_send(&t->wake);
    uv_mutex_lock(&t->mu);
    while (!t->fn_done) uv_cond_wait(&t->cv, &t->mu);
    uv_mutex_unlock(&t->mu);
}

static inline void srv__closed(void *data) {
    struct srv_thread *t = data;
    t->server_closed = true;
}

static inline void srv__stop_fn(struct srv_thread *t, void *arg) {
    (void)arg;
    if (t->before_close) t->before_close(t);
    api_server_close(t->server, srv__closed, t);
    uv_close((uv_handle_t *)&t->wake, NULL);
}

static inline void srv__count_fn(struct srv_thread *t, void *arg) {
    *(unsigned *)arg = api_server_connections(t->server);
}

/* Connections the server has open right now. */
static inline unsigned srv_connections(struct srv_thread *t) {
    unsigned n = 0;
    srv_call(t, srv__count_fn, &n);
    return n;
}

/* Closes the server and joins; returns 0 if the loop closed cleanly and the
 * server's close callback ran. */
static inline int srv_stop(struct srv_thread *t) {
    srv_call(t, srv__stop_fn, NULL);
    uv_thread_join(&t->tid);
    uv_mutex_destroy(&t->mu);
    uv_cond_destroy(&t->cv);
    if (!t->server_closed) return -1;
    return t->loop_close_rc;
}

/* Milliseconds on a monotonic clock. */
static inline long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif /* QFS_TESTS_API_SERVER_THREAD_H */
