/*
 * methods.c - the routed etcd v3 methods and their typed dispatch.
 *
 * One X-macro row per method gives its HTTP/2 :path, kind, request and
 * response types and the struct api_backend entry that serves it. From it
 * come the lookup table and the switch statements that call the backend
 * through correctly typed function pointers (calling through a pointer of
 * another type would be undefined behaviour). Any :path not in the table is
 * answered UNIMPLEMENTED by conn.c, with grpc-go's wording.
 */
#include <stdio.h>
#include <string.h>

#include "api/api_int.h"

/* X(ID, path, entry, request type, request descriptor, response descriptor) */
#define API__UNARY_METHODS(X)                                                                      \
    X(RANGE, "/etcdserverpb.KV/Range", range, Etcdserverpb__RangeRequest,                          \
      etcdserverpb__range_request__descriptor, etcdserverpb__range_response__descriptor)           \
    X(PUT, "/etcdserverpb.KV/Put", put, Etcdserverpb__PutRequest,                                  \
      etcdserverpb__put_request__descriptor, etcdserverpb__put_response__descriptor)               \
    X(DELETE_RANGE, "/etcdserverpb.KV/DeleteRange", delete_range,                                  \
      Etcdserverpb__DeleteRangeRequest, etcdserverpb__delete_range_request__descriptor,            \
      etcdserverpb__delete_range_response__descriptor)                                             \
    X(TXN, "/etcdserverpb.KV/Txn", txn, Etcdserverpb__TxnRequest,                                  \
      etcdserverpb__txn_request__descriptor, etcdserverpb__txn_response__descriptor)               \
    X(COMPACT, "/etcdserverpb.KV/Compact", compact, Etcdserverpb__CompactionRequest,               \
      etcdserverpb__compaction_request__descriptor, etcdserverpb__compaction_response__descriptor) \
    X(LEASE_GRANT, "/etcdserverpb.Lease/LeaseGrant", lease_grant, Etcdserverpb__LeaseGrantRequest, \
      etcdserverpb__lease_grant_request__descriptor,                                               \
      etcdserverpb__lease_grant_response__descriptor)                                              \
    X(LEASE_REVOKE, "/etcdserverpb.Lease/LeaseRevoke", lease_revoke,                               \
      Etcdserverpb__LeaseRevokeRequest, etcdserverpb__lease_revoke_request__descriptor,            \
      etcdserverpb__lease_revoke_response__descriptor)                                             \
    X(LEASE_TIME_TO_LIVE, "/etcdserverpb.Lease/LeaseTimeToLive", lease_time_to_live,               \
      Etcdserverpb__LeaseTimeToLiveRequest, etcdserverpb__lease_time_to_live_request__descriptor,  \
      etcdserverpb__lease_time_to_live_response__descriptor)                                       \
    X(LEASE_LEASES, "/etcdserverpb.Lease/LeaseLeases", lease_leases,                               \
      Etcdserverpb__LeaseLeasesRequest, etcdserverpb__lease_leases_request__descriptor,            \
      etcdserverpb__lease_leases_response__descriptor)                                             \
    X(MEMBER_ADD, "/etcdserverpb.Cluster/MemberAdd", member_add, Etcdserverpb__MemberAddRequest,   \
      etcdserverpb__member_add_request__descriptor, etcdserverpb__member_add_response__descriptor) \
    X(MEMBER_REMOVE, "/etcdserverpb.Cluster/MemberRemove", member_remove,                          \
      Etcdserverpb__MemberRemoveRequest, etcdserverpb__member_remove_request__descriptor,          \
      etcdserverpb__member_remove_response__descriptor)                                            \
    X(MEMBER_UPDATE, "/etcdserverpb.Cluster/MemberUpdate", member_update,                          \
      Etcdserverpb__MemberUpdateRequest, etcdserverpb__member_update_request__descriptor,          \
      etcdserverpb__member_update_response__descriptor)                                            \
    X(MEMBER_LIST, "/etcdserverpb.Cluster/MemberList", member_list,                                \
      Etcdserverpb__MemberListRequest, etcdserverpb__member_list_request__descriptor,              \
      etcdserverpb__member_list_response__descriptor)                                              \
    X(MEMBER_PROMOTE, "/etcdserverpb.Cluster/MemberPromote", member_promote,                       \
      Etcdserverpb__MemberPromoteRequest, etcdserverpb__member_promote_request__descriptor,        \
      etcdserverpb__member_promote_response__descriptor)                                           \
    X(ALARM, "/etcdserverpb.Maintenance/Alarm", alarm, Etcdserverpb__AlarmRequest,                 \
      etcdserverpb__alarm_request__descriptor, etcdserverpb__alarm_response__descriptor)           \
    X(STATUS, "/etcdserverpb.Maintenance/Status", status, Etcdserverpb__StatusRequest,             \
      etcdserverpb__status_request__descriptor, etcdserverpb__status_response__descriptor)         \
    X(DEFRAGMENT, "/etcdserverpb.Maintenance/Defragment", defragment,                              \
      Etcdserverpb__DefragmentRequest, etcdserverpb__defragment_request__descriptor,               \
      etcdserverpb__defragment_response__descriptor)                                               \
    X(HASH, "/etcdserverpb.Maintenance/Hash", hash, Etcdserverpb__HashRequest,                     \
      etcdserverpb__hash_request__descriptor, etcdserverpb__hash_response__descriptor)             \
    X(HASH_KV, "/etcdserverpb.Maintenance/HashKV", hash_kv, Etcdserverpb__HashKVRequest,           \
      etcdserverpb__hash_kvrequest__descriptor, etcdserverpb__hash_kvresponse__descriptor)         \
    X(MOVE_LEADER, "/etcdserverpb.Maintenance/MoveLeader", move_leader,                            \
      Etcdserverpb__MoveLeaderRequest, etcdserverpb__move_leader_request__descriptor,              \
      etcdserverpb__move_leader_response__descriptor)

/* X(ID, path, kind, open entry, request entry, end entry, request type,
 *   request descriptor, response descriptor). For the server stream the
 * open entry takes the one request. */
#define API__STREAM_METHODS(X)                                                                     \
    X(WATCH, "/etcdserverpb.Watch/Watch", API__BIDI_STREAM, watch_open, watch_request, watch_end,  \
      Etcdserverpb__WatchRequest, etcdserverpb__watch_request__descriptor,                         \
      etcdserverpb__watch_response__descriptor)                                                    \
    X(LEASE_KEEP_ALIVE, "/etcdserverpb.Lease/LeaseKeepAlive", API__BIDI_STREAM,                    \
      lease_keep_alive_open, lease_keep_alive_request, lease_keep_alive_end,                       \
      Etcdserverpb__LeaseKeepAliveRequest, etcdserverpb__lease_keep_alive_request__descriptor,     \
      etcdserverpb__lease_keep_alive_response__descriptor)                                         \
    X(SNAPSHOT, "/etcdserverpb.Maintenance/Snapshot", API__SERVER_STREAM, snapshot, snapshot,      \
      snapshot_end, Etcdserverpb__SnapshotRequest, etcdserverpb__snapshot_request__descriptor,     \
      etcdserverpb__snapshot_response__descriptor)

enum method_id {
#define U_ID(id, path, entry, type, reqd, respd) M_##id,
#define S_ID(id, path, kind, open, req, end, type, reqd, respd) M_##id,
    API__UNARY_METHODS(U_ID) API__STREAM_METHODS(S_ID) M_COUNT
#undef U_ID
#undef S_ID
};

_Static_assert(M_COUNT <= API__METHODS_MAX, "API__METHODS_MAX covers the table");

static const struct api__method methods[M_COUNT] = {
#define U_ROW(id, path, entry, type, reqd, respd) {path, API__UNARY, &reqd, &respd, M_##id},
#define S_ROW(id, path, kind, open, req, end, type, reqd, respd)                                   \
    {path, kind, &reqd, &respd, M_##id},
    API__UNARY_METHODS(U_ROW) API__STREAM_METHODS(S_ROW)
#undef U_ROW
#undef S_ROW
};

/* Services etcd registers, for telling "unknown method" from "unknown
 * service" the way grpc-go does. */
static const char *const services[] = {
    "etcdserverpb.KV",      "etcdserverpb.Watch",       "etcdserverpb.Lease",
    "etcdserverpb.Cluster", "etcdserverpb.Maintenance", "etcdserverpb.Auth",
};

unsigned api__method_count(void) {
    return M_COUNT;
}

const struct api__method *api__method_at(unsigned i) {
    API__ASSERT(i < M_COUNT);
    return &methods[i];
}

const struct api__method *api__method_find(const char *path, size_t len) {
    for (unsigned i = 0; i < M_COUNT; i++) {
        if (strlen(methods[i].path) == len && memcmp(methods[i].path, path, len) == 0)
            return &methods[i];
    }
    return NULL;
}

void api__method_unknown_message(const char *path, size_t len, char *out, size_t out_size) {
    API__ASSERT(out != NULL && out_size > 0);
    /* Keep the quoted path short; it is the client's input. */
    int plen = len > 200 ? 200 : (int)len;
    const char *slash = len > 1 ? memchr(path + 1, '/', len - 1) : NULL;
    if (len == 0 || path[0] != '/' || slash == NULL) {
        snprintf(out, out_size, "malformed method name: \"%.*s\"", plen, path);
        return;
    }
    size_t svc_len = (size_t)(slash - path - 1);
    for (size_t i = 0; i < sizeof(services) / sizeof(services[0]); i++) {
        if (strlen(services[i]) == svc_len && memcmp(services[i], path + 1, svc_len) == 0) {
            size_t mlen = len - svc_len - 2;
            snprintf(out, out_size, "unknown method %.*s for service %s",
                     (int)(mlen > 100 ? 100 : mlen), slash + 1, services[i]);
            return;
        }
    }
    snprintf(out, out_size, "unknown service %.*s", (int)(svc_len > 100 ? 100 : svc_len), path + 1);
}

bool api__method_routed(const struct api_backend *be, const struct api__method *m) {
    API__ASSERT(be != NULL && m != NULL);
    switch ((enum method_id)m->id) {
#define U_CASE(id, path, entry, type, reqd, respd)                                                 \
    case M_##id:                                                                                   \
        return be->entry != NULL;
#define S_CASE(id, path, kind, open, req, end, type, reqd, respd)                                  \
    case M_##id:                                                                                   \
        return be->open != NULL;
        API__UNARY_METHODS(U_CASE)
        API__STREAM_METHODS(S_CASE)
#undef U_CASE
#undef S_CASE
    case M_COUNT:
        break;
    }
    API__ASSERT(!"method id out of range");
    return false;
}

void api__backend_check(const struct api_backend *be) {
    API__ASSERT(be != NULL);
    /* A stream kind is routed by its open entry; the others must then be
     * set, or requests and cancellations would have nowhere to go. */
#define S_CHECK(id, path, kind, open, req, end, type, reqd, respd)                                 \
    if (be->open != NULL) {                                                                        \
        API__ASSERT(be->req != NULL);                                                              \
        API__ASSERT(be->end != NULL);                                                              \
    }
    API__STREAM_METHODS(S_CHECK)
#undef S_CHECK
}

void api__dispatch_unary(const struct api_backend *be, const struct api__method *m,
                         struct api_call *call, const ProtobufCMessage *req) {
    API__ASSERT(m->kind == API__UNARY);
    API__ASSERT(req->descriptor == m->req);
    switch ((enum method_id)m->id) {
#define U_CALL(id, path, entry, type, reqd, respd)                                                 \
    case M_##id:                                                                                   \
        be->entry(be->ctx, call, (const type *)req);                                               \
        return;
        API__UNARY_METHODS(U_CALL)
#undef U_CALL
    default:
        break;
    }
    API__ASSERT(!"not a unary method");
}

void api__dispatch_stream_open(const struct api_backend *be, const struct api__method *m,
                               struct api_stream *s, const ProtobufCMessage *req) {
    switch ((enum method_id)m->id) {
    case M_WATCH:
        API__ASSERT(req == NULL);
        be->watch_open(be->ctx, s);
        return;
    case M_LEASE_KEEP_ALIVE:
        API__ASSERT(req == NULL);
        be->lease_keep_alive_open(be->ctx, s);
        return;
    case M_SNAPSHOT:
        API__ASSERT(req != NULL && req->descriptor == m->req);
        be->snapshot(be->ctx, s, (const Etcdserverpb__SnapshotRequest *)req);
        return;
    default:
        break;
    }
    API__ASSERT(!"not a stream method");
}

void api__dispatch_stream_request(const struct api_backend *be, const struct api__method *m,
                                  struct api_stream *s, const ProtobufCMessage *req) {
    API__ASSERT(req->descriptor == m->req);
    switch ((enum method_id)m->id) {
    case M_WATCH:
        be->watch_request(be->ctx, s, (const Etcdserverpb__WatchRequest *)req);
        return;
    case M_LEASE_KEEP_ALIVE:
        be->lease_keep_alive_request(be->ctx, s, (const Etcdserverpb__LeaseKeepAliveRequest *)req);
        return;
    default:
        break;
    }
    API__ASSERT(!"not a bidirectional stream method");
}

void api__dispatch_stream_end(const struct api_backend *be, const struct api__method *m,
                              struct api_stream *s, enum api_stream_event ev) {
    switch ((enum method_id)m->id) {
#define S_END(id, path, kind, open, req, end, type, reqd, respd)                                   \
    case M_##id:                                                                                   \
        be->end(be->ctx, s, ev);                                                                   \
        return;
        API__STREAM_METHODS(S_END)
#undef S_END
    default:
        break;
    }
    API__ASSERT(!"not a stream method");
}
