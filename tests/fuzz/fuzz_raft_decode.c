/*
 * fuzz_raft_decode.c - libFuzzer harness for the decoders of raft/ that face
 * bytes from the network or the log: raft_decode (peer messages) and
 * raft_conf_change_decode (conf-change entry payloads).
 *
 * Every input goes through both. A decoder must return 0, RAFT_EMALFORMED or
 * RAFT_EVERSION (RAFT_ENOMEM is tolerated), never crash or read outside the
 * input (ASan watches). Whatever decodes must respect the RAFT_DECODE_* and
 * RAFT_MEMBERS_MAX limits, borrow only from the input, re-encode, and decode
 * again to the same fields. A broken property aborts, which libFuzzer
 * reports as a crash with the input that caused it.
 *
 * Seeds: with QFS_FUZZ_WRITE_SEEDS=<dir> in the environment the harness
 * writes a few valid encodings (every message type, with and without
 * entries, snapshot and context; every conf-change type) into <dir> and
 * exits; tests/fuzz/run.sh does this before fuzzing.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "raft/raft.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_raft_decode: check failed: %s (line %d)\n", #cond, __LINE__);    \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static bool buf_eq(const struct raft_buf *a, const struct raft_buf *b) {
    return a->len == b->len && (a->len == 0 || memcmp(a->base, b->base, a->len) == 0);
}

static bool within(const struct raft_buf *b, const uint8_t *lo, size_t len) {
    if (b->len == 0) return true;
    const uint8_t *p = b->base;
    return p >= lo && p + b->len <= lo + len && b->len <= len;
}

static bool conf_eq(const struct raft_conf_state *a, const struct raft_conf_state *b) {
    if (a->n_voters != b->n_voters || a->n_learners != b->n_learners) return false;
    for (uint32_t i = 0; i < a->n_voters; i++)
        if (a->voters[i] != b->voters[i]) return false;
    for (uint32_t i = 0; i < a->n_learners; i++)
        if (a->learners[i] != b->learners[i]) return false;
    return true;
}

static bool msg_eq(const struct raft_msg *a, const struct raft_msg *b) {
    if (a->type != b->type || a->from != b->from || a->to != b->to || a->term != b->term ||
        a->log_term != b->log_term || a->index != b->index || a->commit != b->commit ||
        a->reject != b->reject || a->reject_hint != b->reject_hint ||
        a->n_entries != b->n_entries || a->has_snapshot != b->has_snapshot)
        return false;
    for (uint32_t i = 0; i < a->n_entries; i++) {
        const struct raft_entry *x = &a->entries[i], *y = &b->entries[i];
        if (x->term != y->term || x->index != y->index || x->type != y->type ||
            !buf_eq(&x->data, &y->data))
            return false;
    }
    if (a->has_snapshot && (a->snapshot.meta.index != b->snapshot.meta.index ||
                            a->snapshot.meta.term != b->snapshot.meta.term ||
                            !conf_eq(&a->snapshot.meta.conf, &b->snapshot.meta.conf) ||
                            !buf_eq(&a->snapshot.data, &b->snapshot.data)))
        return false;
    return buf_eq(&a->context, &b->context);
}

static void fuzz_msg(const uint8_t *data, size_t size) {
    struct raft_msg m;
    int rc = raft_decode(data, size, &m);
    if (rc != 0) {
        CHECK(rc == RAFT_EMALFORMED || rc == RAFT_EVERSION || rc == RAFT_ENOMEM);
        return;
    }
    CHECK(m.type < RAFT_MSG_TYPE_COUNT_);
    CHECK(m.n_entries <= RAFT_DECODE_ENTRIES_MAX);
    CHECK(m.n_entries == 0 || m.entries != NULL);
    uint64_t payload = m.context.len;
    for (uint32_t i = 0; i < m.n_entries; i++) {
        CHECK(within(&m.entries[i].data, data, size));
        CHECK(m.entries[i].type <= RAFT_ENTRY_CONF_CHANGE);
        payload += m.entries[i].data.len;
    }
    CHECK(within(&m.context, data, size));
    if (m.has_snapshot) {
        const struct raft_conf_state *cs = &m.snapshot.meta.conf;
        CHECK(cs->n_voters <= RAFT_MEMBERS_MAX);
        CHECK(cs->n_learners <= RAFT_MEMBERS_MAX);
        CHECK(cs->n_voters + cs->n_learners <= RAFT_MEMBERS_MAX);
        CHECK(within(&m.snapshot.data, data, size));
        payload += m.snapshot.data.len;
    }
    CHECK(payload <= RAFT_DECODE_BYTES_MAX);

    size_t need = raft_encoded_size(&m);
    CHECK(need > 0 && need != SIZE_MAX);
    uint8_t *buf = malloc(need);
    CHECK(buf != NULL);
    size_t len = 0;
    CHECK(raft_encode(&m, buf, need, &len) == 0);
    CHECK(len == need);
    struct raft_msg again;
    CHECK(raft_decode(buf, len, &again) == 0);
    CHECK(msg_eq(&m, &again));
    raft_msg_release(&again);
    raft_msg_release(&m);
    free(buf);
}

static void fuzz_conf_change(const uint8_t *data, size_t size) {
    struct raft_conf_change cc;
    int rc = raft_conf_change_decode(data, size, &cc);
    if (rc != 0) {
        CHECK(rc == RAFT_EMALFORMED || rc == RAFT_EVERSION);
        return;
    }
    CHECK(cc.type <= RAFT_CC_ADD_LEARNER);
    CHECK(within(&cc.context, data, size));
    void *buf = NULL;
    size_t len = 0;
    CHECK(raft_conf_change_encode(&cc, &buf, &len) == 0);
    struct raft_conf_change again;
    CHECK(raft_conf_change_decode(buf, len, &again) == 0);
    CHECK(again.type == cc.type);
    CHECK(again.node_id == cc.node_id);
    CHECK(buf_eq(&again.context, &cc.context));
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_msg(data, size);
    fuzz_conf_change(data, size);
    return 0;
}

/* ---- seed corpus ---- */

static int write_file(const char *dir, const char *name, const void *p, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL) return -1;
    size_t w = fwrite(p, 1, n, f);
    int rc = fclose(f);
    return w == n && rc == 0 ? 0 : -1;
}

static int write_msg(const char *dir, const char *name, const struct raft_msg *m) {
    size_t need = raft_encoded_size(m), len = 0;
    uint8_t *buf = malloc(need);
    if (buf == NULL) return -1;
    int rc = raft_encode(m, buf, need, &len);
    if (rc == 0) rc = write_file(dir, name, buf, len);
    free(buf);
    return rc;
}

static int write_seeds(const char *dir) {
    static const char d1[] = "put /a/b = hello", d2[] = "";
    static const char snap[] = "checkpoint descriptor", ctx[] = "\x01\x00\x00\x00\x00\x00\x00\x00";
    struct raft_entry ents[3];
    memset(ents, 0, sizeof ents);
    ents[0] = (struct raft_entry){.term = 3, .index = 10, .type = RAFT_ENTRY_NORMAL};
    ents[0].data.base = d1;
    ents[0].data.len = sizeof d1 - 1;
    ents[1] = (struct raft_entry){.term = 3, .index = 11, .type = RAFT_ENTRY_NORMAL};
    ents[1].data.base = d2;
    struct raft_conf_change cc = {.type = RAFT_CC_ADD_VOTER, .node_id = 4};
    cc.context.base = "http://127.0.0.4:2380";
    cc.context.len = strlen("http://127.0.0.4:2380");
    void *ccbuf = NULL;
    size_t cclen = 0;
    if (raft_conf_change_encode(&cc, &ccbuf, &cclen) != 0) return -1;
    ents[2] = (struct raft_entry){.term = 4, .index = 12, .type = RAFT_ENTRY_CONF_CHANGE};
    ents[2].data.base = ccbuf;
    ents[2].data.len = cclen;
    int rc = write_file(dir, "cc-add-voter", ccbuf, cclen);

    for (uint8_t type = 0; rc == 0 && type < RAFT_MSG_TYPE_COUNT_; type++) {
        struct raft_msg m;
        memset(&m, 0, sizeof m);
        m.type = type;
        m.from = 1;
        m.to = 2;
        m.term = 4;
        m.log_term = 3;
        m.index = 9;
        m.commit = 8;
        m.reject = type == RAFT_MSG_APP_RESP || type == RAFT_MSG_VOTE_RESP;
        m.reject_hint = m.reject ? 7 : 0;
        if (type == RAFT_MSG_APP || type == RAFT_MSG_PROP) {
            m.n_entries = 3;
            m.entries = ents;
        }
        if (type == RAFT_MSG_SNAP) {
            m.has_snapshot = true;
            m.snapshot.meta.index = 100;
            m.snapshot.meta.term = 3;
            m.snapshot.meta.conf.n_voters = 3;
            m.snapshot.meta.conf.voters[0] = 1;
            m.snapshot.meta.conf.voters[1] = 2;
            m.snapshot.meta.conf.voters[2] = 3;
            m.snapshot.meta.conf.n_learners = 1;
            m.snapshot.meta.conf.learners[0] = 4;
            m.snapshot.data.base = snap;
            m.snapshot.data.len = sizeof snap - 1;
        }
        if (type == RAFT_MSG_HEARTBEAT || type == RAFT_MSG_HEARTBEAT_RESP ||
            type == RAFT_MSG_READ_INDEX || type == RAFT_MSG_READ_INDEX_RESP) {
            m.context.base = ctx;
            m.context.len = sizeof ctx - 1;
        }
        char name[32];
        snprintf(name, sizeof name, "msg-type-%02u", type);
        rc = write_msg(dir, name, &m);
    }
    for (uint8_t t = RAFT_CC_REMOVE; rc == 0 && t <= RAFT_CC_ADD_LEARNER; t++) {
        struct raft_conf_change c2 = {.type = t, .node_id = 5};
        void *b = NULL;
        size_t n = 0;
        rc = raft_conf_change_encode(&c2, &b, &n);
        char name[32];
        snprintf(name, sizeof name, "cc-type-%u", t);
        if (rc == 0) rc = write_file(dir, name, b, n);
        free(b);
    }
    free(ccbuf);
    return rc;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *dir = getenv("QFS_FUZZ_WRITE_SEEDS");
    if (dir != NULL && dir[0] != '\0') {
        int rc = write_seeds(dir);
        if (rc != 0) fprintf(stderr, "fuzz_raft_decode: could not write seeds to %s\n", dir);
        exit(rc == 0 ? 0 : 1);
    }
    return 0;
}
