/*
 * encoding.c - the wire format of struct raft_msg and of conf-change entry
 * payloads. Decoders face untrusted bytes from the network: every length is
 * checked against the remaining input and against the RAFT_DECODE_* limits
 * before anything is read or allocated, every enum and bool byte is
 * validated, trailing bytes are an error, and every error path releases what
 * it allocated.
 *
 * All integers are fixed-width little-endian; byte strings are a u32 length
 * followed by the bytes.
 *
 * Message (RAFT_WIRE_VERSION 1):
 *
 *   off  size  field
 *     0     1  version          = RAFT_WIRE_VERSION (else RAFT_EVERSION)
 *     1     1  type             < RAFT_MSG_TYPE_COUNT_
 *     2     1  reject           0 or 1
 *     3     1  has_snapshot     0 or 1
 *     4     8  from
 *    12     8  to
 *    20     8  term
 *    28     8  log_term
 *    36     8  index
 *    44     8  commit
 *    52     8  reject_hint
 *    60     4  n_entries        <= RAFT_DECODE_ENTRIES_MAX
 *    64        n_entries times:
 *                 8 term, 8 index, 1 type (0 normal, 1 conf change),
 *                 4 data_len, data_len bytes
 *              if has_snapshot:
 *                 8 index, 8 term, 4 n_voters, 4 n_learners (each, and their
 *                 sum, <= RAFT_MEMBERS_MAX), 8 * n_voters voter ids,
 *                 8 * n_learners learner ids, 4 data_len, data_len bytes
 *              4 context_len, context_len bytes
 *
 * The sum of entry data, snapshot data and context bytes is at most
 * RAFT_DECODE_BYTES_MAX; raft_encode refuses (RAFT_ETOOBIG) to produce a
 * message the decoder would refuse.
 *
 * Conf change (entry payload of RAFT_ENTRY_CONF_CHANGE):
 *
 *     0     1  version          = RAFT_WIRE_VERSION
 *     1     1  type             enum raft_conf_change_type (0..2)
 *     2     8  node_id
 *    10     4  context_len      <= RAFT_DECODE_BYTES_MAX
 *    14        context bytes
 */
#include <stdlib.h>
#include <string.h>

#include "raft/raft_int.h"

#define MSG_HEADER_BYTES 64u
#define ENTRY_HEADER_BYTES 21u /* term, index, type, data_len */
#define SNAP_HEADER_BYTES 24u  /* index, term, n_voters, n_learners */
#define LEN_BYTES 4u
#define CC_HEADER_BYTES 14u

_Static_assert(MSG_HEADER_BYTES == 4 * 1 + 7 * 8 + 4, "message header layout");
_Static_assert(ENTRY_HEADER_BYTES == 8 + 8 + 1 + 4, "entry header layout");
_Static_assert(SNAP_HEADER_BYTES == 8 + 8 + 4 + 4, "snapshot header layout");
_Static_assert(CC_HEADER_BYTES == 1 + 1 + 8 + 4, "conf change header layout");
_Static_assert(RAFT_DECODE_BYTES_MAX <= UINT32_MAX, "lengths are u32 on the wire");

/* ---- writer: the caller sized the buffer ---- */

struct writer {
    uint8_t *p;
};

static void put_u8(struct writer *w, uint8_t v) {
    *w->p++ = v;
}

static void put_u32(struct writer *w, uint32_t v) {
    for (int i = 0; i < 4; i++) *w->p++ = (uint8_t)(v >> (8 * i));
}

static void put_u64(struct writer *w, uint64_t v) {
    for (int i = 0; i < 8; i++) *w->p++ = (uint8_t)(v >> (8 * i));
}

static void put_bytes(struct writer *w, const struct raft_buf *b) {
    put_u32(w, (uint32_t)b->len);
    if (b->len > 0) {
        memcpy(w->p, b->base, b->len);
        w->p += b->len;
    }
}

/* ---- reader: every get checks the remaining input ---- */

struct reader {
    const uint8_t *p;
    size_t left;
};

static bool get_u8(struct reader *r, uint8_t *v) {
    if (r->left < 1) return false;
    *v = *r->p++;
    r->left--;
    return true;
}

static bool get_bool(struct reader *r, bool *v) {
    uint8_t b;
    if (!get_u8(r, &b) || b > 1) return false;
    *v = b == 1;
    return true;
}

static bool get_u32(struct reader *r, uint32_t *v) {
    if (r->left < 4) return false;
    uint32_t x = 0;
    for (int i = 0; i < 4; i++) x |= (uint32_t)r->p[i] << (8 * i);
    r->p += 4;
    r->left -= 4;
    *v = x;
    return true;
}

static bool get_u64(struct reader *r, uint64_t *v) {
    if (r->left < 8) return false;
    uint64_t x = 0;
    for (int i = 0; i < 8; i++) x |= (uint64_t)r->p[i] << (8 * i);
    r->p += 8;
    r->left -= 8;
    *v = x;
    return true;
}

/* A length-prefixed byte string borrowed from the input; *budget is the
 * payload allowance left. */
static bool get_bytes(struct reader *r, struct raft_buf *b, uint64_t *budget) {
    uint32_t len;
    if (!get_u32(r, &len)) return false;
    if (len > r->left || len > *budget) return false;
    *budget -= len;
    b->base = len > 0 ? r->p : NULL;
    b->len = len;
    r->p += len;
    r->left -= len;
    return true;
}

/* ---- messages ---- */

/* Bytes of payload (entry data, snapshot data, context); saturates. */
static uint64_t payload_bytes(const struct raft_msg *m) {
    uint64_t n = m->context.len;
    if (m->has_snapshot) n += m->snapshot.data.len;
    for (uint32_t i = 0; i < m->n_entries; i++) {
        n += m->entries[i].data.len;
        if (n > UINT64_MAX / 2) return UINT64_MAX;
    }
    return n;
}

size_t raft_encoded_size(const struct raft_msg *m) {
    ASSERT(m != NULL);
    ASSERT(m->n_entries == 0 || m->entries != NULL);
    uint64_t n = MSG_HEADER_BYTES + (uint64_t)m->n_entries * ENTRY_HEADER_BYTES + LEN_BYTES;
    if (m->has_snapshot) {
        n += SNAP_HEADER_BYTES + LEN_BYTES;
        n += 8ull * ((uint64_t)m->snapshot.meta.conf.n_voters + m->snapshot.meta.conf.n_learners);
    }
    uint64_t p = payload_bytes(m);
    if (p > SIZE_MAX - n) return SIZE_MAX;
    return (size_t)(n + p);
}

int raft_encode(const struct raft_msg *m, void *buf, size_t cap, size_t *len) {
    ASSERT(m != NULL);
    ASSERT(len != NULL);
    *len = 0;
    if (m->type >= RAFT_MSG_TYPE_COUNT_) return RAFT_EINVAL;
    if (m->n_entries > RAFT_DECODE_ENTRIES_MAX) return RAFT_ETOOBIG;
    if (m->n_entries > 0 && m->entries == NULL) return RAFT_EINVAL;
    if (payload_bytes(m) > RAFT_DECODE_BYTES_MAX) return RAFT_ETOOBIG;
    const struct raft_conf_state *cs = &m->snapshot.meta.conf;
    if (m->has_snapshot && (cs->n_voters > RAFT_MEMBERS_MAX || cs->n_learners > RAFT_MEMBERS_MAX ||
                            cs->n_voters + cs->n_learners > RAFT_MEMBERS_MAX))
        return RAFT_EINVAL;
    for (uint32_t i = 0; i < m->n_entries; i++)
        if (m->entries[i].type > RAFT_ENTRY_CONF_CHANGE) return RAFT_EINVAL;
    size_t need = raft_encoded_size(m);
    if (buf == NULL || cap < need) return RAFT_ETOOBIG;

    struct writer w = {buf};
    put_u8(&w, RAFT_WIRE_VERSION);
    put_u8(&w, m->type);
    put_u8(&w, m->reject ? 1 : 0);
    put_u8(&w, m->has_snapshot ? 1 : 0);
    put_u64(&w, m->from);
    put_u64(&w, m->to);
    put_u64(&w, m->term);
    put_u64(&w, m->log_term);
    put_u64(&w, m->index);
    put_u64(&w, m->commit);
    put_u64(&w, m->reject_hint);
    put_u32(&w, m->n_entries);
    for (uint32_t i = 0; i < m->n_entries; i++) {
        const struct raft_entry *e = &m->entries[i];
        put_u64(&w, e->term);
        put_u64(&w, e->index);
        put_u8(&w, e->type);
        put_bytes(&w, &e->data);
    }
    if (m->has_snapshot) {
        put_u64(&w, m->snapshot.meta.index);
        put_u64(&w, m->snapshot.meta.term);
        put_u32(&w, cs->n_voters);
        put_u32(&w, cs->n_learners);
        for (uint32_t i = 0; i < cs->n_voters; i++) put_u64(&w, cs->voters[i]);
        for (uint32_t i = 0; i < cs->n_learners; i++) put_u64(&w, cs->learners[i]);
        put_bytes(&w, &m->snapshot.data);
    }
    put_bytes(&w, &m->context);
    *len = (size_t)(w.p - (uint8_t *)buf);
    ASSERT(*len == need);
    return 0;
}

int raft_decode(const void *buf, size_t len, struct raft_msg *m) {
    ASSERT(m != NULL);
    ASSERT(buf != NULL || len == 0);
    memset(m, 0, sizeof(*m));
    struct reader r = {buf, len};
    uint64_t budget = RAFT_DECODE_BYTES_MAX;
    int rc = RAFT_EMALFORMED;
    uint8_t version, type;
    if (!get_u8(&r, &version)) return RAFT_EMALFORMED;
    if (version != RAFT_WIRE_VERSION) return RAFT_EVERSION;
    if (!get_u8(&r, &type) || type >= RAFT_MSG_TYPE_COUNT_) return RAFT_EMALFORMED;
    m->type = type;
    if (!get_bool(&r, &m->reject) || !get_bool(&r, &m->has_snapshot)) return RAFT_EMALFORMED;
    if (!get_u64(&r, &m->from) || !get_u64(&r, &m->to) || !get_u64(&r, &m->term) ||
        !get_u64(&r, &m->log_term) || !get_u64(&r, &m->index) || !get_u64(&r, &m->commit) ||
        !get_u64(&r, &m->reject_hint))
        return RAFT_EMALFORMED;
    uint32_t n;
    if (!get_u32(&r, &n) || n > RAFT_DECODE_ENTRIES_MAX) return RAFT_EMALFORMED;
    /* Every entry takes at least its header: refuse before allocating. */
    if ((uint64_t)n * ENTRY_HEADER_BYTES > r.left) return RAFT_EMALFORMED;
    if (n > 0) {
        m->entries = qfs_calloc(n, sizeof(*m->entries));
        if (m->entries == NULL) return RAFT_ENOMEM;
        m->n_entries = n;
        for (uint32_t i = 0; i < n; i++) {
            struct raft_entry *e = &m->entries[i];
            uint8_t et;
            if (!get_u64(&r, &e->term) || !get_u64(&r, &e->index) || !get_u8(&r, &et) ||
                et > RAFT_ENTRY_CONF_CHANGE || !get_bytes(&r, &e->data, &budget))
                goto err_entries;
            e->type = et;
        }
    }
    if (m->has_snapshot) {
        struct raft_snapshot_meta *meta = &m->snapshot.meta;
        struct raft_conf_state *cs = &meta->conf;
        uint32_t nv, nl;
        if (!get_u64(&r, &meta->index) || !get_u64(&r, &meta->term) || !get_u32(&r, &nv) ||
            !get_u32(&r, &nl))
            goto err_entries;
        if (nv > RAFT_MEMBERS_MAX || nl > RAFT_MEMBERS_MAX || nv + nl > RAFT_MEMBERS_MAX)
            goto err_entries;
        cs->n_voters = nv;
        cs->n_learners = nl;
        for (uint32_t i = 0; i < nv; i++)
            if (!get_u64(&r, &cs->voters[i])) goto err_entries;
        for (uint32_t i = 0; i < nl; i++)
            if (!get_u64(&r, &cs->learners[i])) goto err_entries;
        if (!get_bytes(&r, &m->snapshot.data, &budget)) goto err_entries;
    }
    if (!get_bytes(&r, &m->context, &budget)) goto err_entries;
    if (r.left != 0) goto err_entries; /* trailing bytes */
    return 0;

err_entries:
    free(m->entries);
    memset(m, 0, sizeof(*m));
    return rc;
}

void raft_msg_release(struct raft_msg *m) {
    if (m == NULL) return;
    free(m->entries);
    m->entries = NULL;
    m->n_entries = 0;
}

/* ---- conf changes ---- */

int raft_conf_change_encode(const struct raft_conf_change *cc, void **out, size_t *out_len) {
    ASSERT(cc != NULL);
    ASSERT(out != NULL);
    ASSERT(out_len != NULL);
    *out = NULL;
    *out_len = 0;
    if (cc->type > RAFT_CC_ADD_LEARNER) return RAFT_EINVAL;
    if (cc->context.len > RAFT_DECODE_BYTES_MAX) return RAFT_ETOOBIG;
    if (cc->context.len > 0 && cc->context.base == NULL) return RAFT_EINVAL;
    size_t n = CC_HEADER_BYTES + cc->context.len;
    uint8_t *buf = qfs_malloc(n);
    if (buf == NULL) return RAFT_ENOMEM;
    struct writer w = {buf};
    put_u8(&w, RAFT_WIRE_VERSION);
    put_u8(&w, cc->type);
    put_u64(&w, cc->node_id);
    put_bytes(&w, &cc->context);
    ASSERT((size_t)(w.p - buf) == n);
    *out = buf;
    *out_len = n;
    return 0;
}

int raft_conf_change_decode(const void *data, size_t len, struct raft_conf_change *cc) {
    ASSERT(cc != NULL);
    ASSERT(data != NULL || len == 0);
    memset(cc, 0, sizeof(*cc));
    struct reader r = {data, len};
    uint64_t budget = RAFT_DECODE_BYTES_MAX;
    uint8_t version, type;
    if (!get_u8(&r, &version)) return RAFT_EMALFORMED;
    if (version != RAFT_WIRE_VERSION) return RAFT_EVERSION;
    if (!get_u8(&r, &type) || type > RAFT_CC_ADD_LEARNER) return RAFT_EMALFORMED;
    if (!get_u64(&r, &cc->node_id)) return RAFT_EMALFORMED;
    if (!get_bytes(&r, &cc->context, &budget) || r.left != 0) {
        memset(cc, 0, sizeof(*cc));
        return RAFT_EMALFORMED;
    }
    cc->type = type;
    return 0;
}
